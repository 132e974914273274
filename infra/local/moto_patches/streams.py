"""The `streams` patch (its `changes` say what it does): moto's `shard_iterators` (~2 KB each) grew
by one per stream read, as every write wakes a poller to read. An iterator read again is what AWS
allows until it expires (an SDK retrying a lost answer, the runbook's `get-records` line run twice);
a consumer following the chain, as Lambda's pollers and ours do, keeps two: the last read, the next.
"""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# On the backend: each iterator read -> the NextShardIterator its last read handed out.
_HANDED_OUT = "_oms_handed_out"


def _replacements() -> Replacements:
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    original = DynamoDBStreamsBackend.__dict__["get_records"]

    def get_records(backend: Any, iterator_arn: str, limit: int) -> dict[str, Any]:
        answer = original(backend, iterator_arn, limit)  # KeyError, as moto's, for one it does not hold
        handed_out: dict[str, str] = backend.__dict__.setdefault(_HANDED_OUT, {})
        # Dropped: the one read before (its reader moved on), and the next an earlier read of this one handed out.
        for dropped in [handed_out.pop(iterator_arn, ""), *(arn for arn, n in handed_out.items() if n == iterator_arn)]:
            handed_out.pop(dropped, None)
            backend.shard_iterators.pop(dropped, None)
        handed_out[iterator_arn] = answer["NextShardIterator"]
        return answer

    return {(DynamoDBStreamsBackend, "get_records"): get_records}


PATCH = MotoPatch(
    "streams",
    applied_by=AppliedBy.STACK,
    changes="a DynamoDB Streams shard iterator is forgotten once the NextShardIterator its read "
    "handed out is read (moto keeps every one it hands out, and a stream poller takes one per read; "
    "on AWS one expires after 15 minutes); the last one read may be read again, as on AWS, and the next "
    "its earlier read handed out is then forgotten.",
    expects={"moto.dynamodbstreams.models.DynamoDBStreamsBackend.get_records": "(self, iterator_arn, limit)"},
    replacements=_replacements,
)
