"""The `sqs` patch: a receive costs what it costs on SQS, not more with the queue's depth; a send
and a delete still do, so the splitter's sends wait for the queue to drain below HIGH_WATER.

moto rebuilds every attribute and scans every message per count, on every SendMessage and for every
message a ReceiveMessage returns: with 600-byte messages, at 200 queued a send took 1.7 ms and a
receive of 10 took 92 ms; at 1,900 queued, 25 ms and 840 ms, so a bulk import slowed with its own
backlog. The replacements return the same values, and a receive no longer grows with the depth.
moto's SendMessage still builds every attribute of its queue per message (to read one), so three
counts, each a scan of the queue; and its DeleteMessage scans the queue twice per message:
measured on a bulk import (moto's CPU per call of ten), SendMessageBatch 1.5 ms and
DeleteMessageBatch 0.8 ms at about 300 queued, 3.8 ms and 1.8 ms at about 930. Hence the pacing:
the import's splitter keeps its queue about a thousand deep instead of a file deep, which bounds
both (on SQS, whose cost is flat, the product never waits). A queue nobody drains (its mapping
paused) is waited on once for STALL_SECONDS, then not until it has drained below HIGH_WATER.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements, lock

logger = logging.getLogger("infra.local.moto_patches.sqs")

HIGH_WATER = 1000  # visible messages a queue holds before a batch sender waits
STALL_SECONDS = 2.0  # how long a sender waits for a queue whose depth does not fall
_POLL_SECONDS = 0.02
_sleep = time.sleep  # between two looks at the depth (a test drains the queue here)
_stalled: set[str] = set()  # ARNs of queues found undrained: not waited on until they drain
_counting = threading.local()  # `now`: the instant a GetQueueAttributes answers its counts at


def _scan(queue: Any, keep: Callable[[Any, float], bool]) -> list[Any]:
    from moto.core.utils import unix_time_millis

    now = getattr(_counting, "now", None) or unix_time_millis()  # once per scan, not per message
    return [m for m in queue._messages if keep(m, now)]


def _visible(queue: Any) -> list[Any]:
    return _scan(queue, lambda m, now: now > m.visible_at and not now < m.delayed_until)


def _retained(backend: Any, queue_name: str, message: Any) -> bool:
    from moto.core.utils import unix_time

    retention_period = int(backend.get_queue(queue_name).message_retention_period)
    return retention_period + message.sent_timestamp / 1000 > unix_time()


def _wait_for_room(queue: Any) -> None:
    """Returns once the queue holds at most HIGH_WATER visible messages, or once its depth has not
    fallen for STALL_SECONDS. Waits without the moto lock, so the consumers can drain it."""
    depth = len(_visible(queue))
    if depth <= HIGH_WATER:
        _stalled.discard(queue.queue_arn)
        return
    if queue.queue_arn in _stalled:
        return
    lowest, since = depth, time.monotonic()
    with lock.released():
        while True:
            _sleep(_POLL_SECONDS)
            with lock.MOTO_LOCK:
                depth = len(_visible(queue))
            if depth <= HIGH_WATER:
                return
            if depth < lowest:
                lowest, since = depth, time.monotonic()
            elif time.monotonic() - since >= STALL_SECONDS:
                _stalled.add(queue.queue_arn)
                logger.warning("%s: %d messages and nobody draining them; sending without waiting", queue.name, depth)
                return


def _replacements() -> Replacements:
    from moto.sqs.models import Queue, SQSBackend

    send_message_batch = SQSBackend.__dict__["send_message_batch"]
    get_queue_attributes = SQSBackend.__dict__["get_queue_attributes"]

    def counted_at_one_instant(backend: Any, queue_name: str, attribute_names: list[str]) -> Any:
        # moto scans the queue once per count asked (three times each): a message whose delay or
        # visibility timeout ended between two scans was counted in neither (delayed, then visible),
        # and a mapping reading the counts took its queue for drained.
        from moto.core.utils import unix_time_millis

        _counting.now = unix_time_millis()
        try:
            return get_queue_attributes(backend, queue_name, attribute_names)
        finally:
            _counting.now = None

    def paced(backend: Any, queue_name: str, entries: Any) -> Any:
        _wait_for_room(backend.get_queue(queue_name))
        return send_message_batch(backend, queue_name, entries)

    _stalled.clear()
    return {
        (Queue, "messages"): property(_visible),
        (Queue, "approximate_number_of_messages"): property(lambda queue: len(_visible(queue))),
        (Queue, "approximate_number_of_messages_not_visible"): property(
            lambda queue: len(_scan(queue, lambda m, now: not now > m.visible_at))
        ),
        (Queue, "approximate_number_of_messages_delayed"): property(
            lambda queue: len(_scan(queue, lambda m, now: now < m.delayed_until))
        ),
        (SQSBackend, "is_message_valid_based_on_retention_period"): _retained,
        (SQSBackend, "send_message_batch"): paced,
        (SQSBackend, "get_queue_attributes"): counted_at_one_instant,
    }


PATCH = MotoPatch(
    "sqs",
    applied_by=AppliedBy.STACK,
    changes="SQS message counts read the clock once per GetQueueAttributes (moto reads it per count, "
    "so a message whose delay ends between two counts is in neither) and the retention check reads one "
    "attribute (moto rebuilds every attribute and reads the clock per message, so each send and receive "
    f"grows with the queue's depth), and SendMessageBatch waits while more than {HIGH_WATER:,} messages are "
    "visible (moto's DeleteMessage, and its SendMessage, which still builds every attribute of the queue "
    "per message, grow with the depth; on AWS nothing waits).",
    expects={
        "moto.sqs.models.Queue.messages": "property",
        "moto.sqs.models.Queue.approximate_number_of_messages": "property",
        "moto.sqs.models.Queue.approximate_number_of_messages_not_visible": "property",
        "moto.sqs.models.Queue.approximate_number_of_messages_delayed": "property",
        "moto.sqs.models.SQSBackend.is_message_valid_based_on_retention_period": "(self, queue_name, message)",
        "moto.sqs.models.SQSBackend.send_message_batch": "(self, queue_name, entries)",
        "moto.sqs.models.SQSBackend.get_queue_attributes": "(self, queue_name, attribute_names)",
    },
    replacements=_replacements,
)
