"""The `streams` patch: a DynamoDB Streams shard iterator is forgotten once GetRecords has read it.

moto 5.2's DynamoDBStreamsBackend keeps every shard iterator it ever hands out in `shard_iterators`
(each ~2 KB) and never expires one; a stream poller takes the NextShardIterator of every answer,
ten a second per stream when idle. On AWS an iterator expires 15 minutes after it is issued; here
the one read is dropped as its successor is handed out, so reading the same iterator twice fails
(a consumer that moves on to NextShardIterator, as Lambda's pollers and ours do, sees no difference).
"""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements


def _replacements() -> Replacements:
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    original = DynamoDBStreamsBackend.__dict__["get_records"]

    def get_records(backend: Any, iterator_arn: str, limit: int) -> dict[str, Any]:
        answer = original(backend, iterator_arn, limit)
        backend.shard_iterators.pop(iterator_arn, None)
        return answer

    return {(DynamoDBStreamsBackend, "get_records"): get_records}


PATCH = MotoPatch(
    "streams",
    changes="a DynamoDB Streams shard iterator is forgotten once GetRecords has read it (moto kept "
    "every one it handed out, and a stream poller takes ten a second; on AWS one expires after 15 "
    "minutes).",
    expects={"moto.dynamodbstreams.models.DynamoDBStreamsBackend.get_records": "(self, iterator_arn, limit)"},
    replacements=_replacements,
)
