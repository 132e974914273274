"""The `arrivals` patch (its `changes` say what it does), registered with the event source mappings
(infra/local/event_sources.py). moto still stores the record, and sets a message's visibility, as it
would; the wake only tells a mapping to look, or when to."""

from __future__ import annotations

import threading
import time
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

_receiving = threading.local()  # `queue`: the moto queue whose messages this thread receives or changes now


def _wake(source_arn: str, record: Any = None) -> None:
    """Wakes the mappings reading `source_arn`; given the stream record that arrived (a stream's
    mappings: DynamoDBStreamMapping), only those whose filters let it through (its wants()): another
    would read it only to leave it out."""
    for mapping in PATCH.registrations():
        if mapping.source_arn == source_arn and (record is None or mapping.wants(record)):
            mapping.wake()


def _visible_again(queue_arn: str, message_id: str, visible_at: float) -> None:
    """Tells the mappings reading the queue when a message delayed or in flight becomes visible."""
    for mapping in PATCH.registrations():
        if mapping.source_arn == queue_arn:
            mapping.visible_again(message_id, visible_at)


def _replacements() -> Replacements:
    from moto.dynamodb.models.table import StreamShard
    from moto.sqs.models import Message, Queue, SQSBackend

    add_message, add_record = Queue.__dict__["add_message"], StreamShard.__dict__["add"]
    change_visibility = Message.__dict__["change_visibility"]
    receive_message = SQSBackend.__dict__["receive_message"]
    change_message_visibility = SQSBackend.__dict__["change_message_visibility"]

    def on_queue(original: Any) -> Any:
        # ReceiveMessage and ChangeMessageVisibility(Batch) set a message's deadline through
        # Message.change_visibility, which does not know its queue: the backend's call says it.
        def call(backend: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
            previous, _receiving.queue = getattr(_receiving, "queue", None), backend.get_queue(queue_name)
            try:
                return original(backend, queue_name, *args, **kwargs)
            finally:
                _receiving.queue = previous

        return call

    def changed(message: Any, visibility_timeout: int) -> None:
        change_visibility(message, visibility_timeout)
        if (queue := getattr(_receiving, "queue", None)) is not None:
            _visible_again(queue.queue_arn, message.id, message.visible_at / 1000)  # moto's epoch milliseconds

    def queued(queue: Any, message: Any) -> None:
        add_message(queue, message)
        if (visible_at := message.delayed_until / 1000) > time.time():  # moto's epoch milliseconds
            _visible_again(queue.queue_arn, message.id, visible_at)
        _wake(queue.queue_arn)

    def streamed(shard: Any, old: Any, new: Any) -> None:
        add_record(shard, old, new)
        record = shard.items[-1].to_json() if shard.items else None  # the one just added
        _wake(f"{shard.table.table_arn}/stream/{shard.table.latest_stream_label}", record)  # as moto's LatestStreamArn

    return {
        (Queue, "add_message"): queued,
        (StreamShard, "add"): streamed,
        (Message, "change_visibility"): changed,
        (SQSBackend, "receive_message"): on_queue(receive_message),
        (SQSBackend, "change_message_visibility"): on_queue(change_message_visibility),
    }


PATCH = MotoPatch(
    "arrivals",
    applied_by=AppliedBy.STACK_REGISTRY,
    changes="a message added to an SQS queue (sent, or moved to its DLQ) or a record added to a DynamoDB "
    "stream also wakes the local mappings that read it, so an idle mapping sleeps instead of polling moto "
    "(each of them ten times a second: a sixth of a core for an idle stack); a stream record wakes only "
    "the mappings whose FilterCriteria let it through (the others read it with their next batch, which "
    "leaves it out); a delayed message tells them when its delay ends, and a received message (or one "
    "whose visibility ChangeMessageVisibility changes) when its visibility timeout ends, so they look then "
    "instead of ten times a second meanwhile (a failed message waits out its queue's 61 to 180 s).",
    expects={
        "moto.sqs.models.Queue.add_message": "(self, message)",
        "moto.dynamodb.models.table.StreamShard.add": "(self, old, new)",
        "moto.sqs.models.Message.change_visibility": "(self, visibility_timeout)",
        "moto.sqs.models.SQSBackend.receive_message": "(self, queue_name, count, wait_seconds_timeout, "
        "visibility_timeout, message_attribute_names=None)",
        "moto.sqs.models.SQSBackend.change_message_visibility": "(self, queue_name, receipt_handle, "
        "visibility_timeout)",
    },
    replacements=_replacements,
)
