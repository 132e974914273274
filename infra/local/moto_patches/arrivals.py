"""The `arrivals` patch (its `changes` say what it does), registered with the event source mappings
(infra/local/event_sources.py). moto still stores the record as it would; the wake only tells a
mapping to look."""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements


def _wake(source_arn: str, record: Any = None, visible_at: float = 0.0) -> None:
    """Wakes the mappings reading `source_arn`; given the stream record that arrived, only those whose
    filters let it through (EventSourceMapping.wants): another would read it only to leave it out.
    `visible_at`: when a delayed message becomes visible (epoch seconds)."""
    for mapping in PATCH.registrations():
        if mapping.source_arn == source_arn and (record is None or mapping.wants(record)):
            mapping.wake(visible_at)


def _replacements() -> Replacements:
    from moto.dynamodb.models.table import StreamShard
    from moto.sqs.models import Queue

    add_message, add_record = Queue.__dict__["add_message"], StreamShard.__dict__["add"]

    def queued(queue: Any, message: Any) -> None:
        add_message(queue, message)
        _wake(queue.queue_arn, visible_at=message.delayed_until / 1000)  # moto's epoch milliseconds

    def streamed(shard: Any, old: Any, new: Any) -> None:
        add_record(shard, old, new)
        record = shard.items[-1].to_json() if shard.items else None  # the one just added
        _wake(f"{shard.table.table_arn}/stream/{shard.table.latest_stream_label}", record)  # as moto's LatestStreamArn

    return {(Queue, "add_message"): queued, (StreamShard, "add"): streamed}


PATCH = MotoPatch(
    "arrivals",
    changes="a message added to an SQS queue (sent, or moved to its DLQ) or a record added to a DynamoDB "
    "stream also wakes the local mappings that read it, so an idle mapping sleeps instead of polling moto "
    "(each of them ten times a second, so an idle stack used a sixth of a core); a stream record wakes only "
    "the mappings whose FilterCriteria let it through (the others read it with their next batch and leave "
    "it out, as before); a delayed message tells them when its delay ends, so they look then instead of "
    "ten times a second meanwhile.",
    expects={
        "moto.sqs.models.Queue.add_message": "(self, message)",
        "moto.dynamodb.models.table.StreamShard.add": "(self, old, new)",
    },
    replacements=_replacements,
)
