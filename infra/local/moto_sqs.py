"""Makes moto's SQS cost what SQS costs: a send or a receive independent of the queue's depth.

moto 5.2 answers a queue's message counts by scanning every message and reading the clock for
each one (three scans for one attribute: `queue.attributes` is rebuilt per name asked), and it
asks for them on every SendMessage (ContentBasedDeduplication) and for every message a
ReceiveMessage returns (MessageRetentionPeriod). Measured with 600-byte messages: at 200 queued
messages a send took 1.7 ms and a receive of 10 took 92 ms; at 1,900 queued, 25 ms and 840 ms.
A bulk import that queues thousands of orders ahead of the worker then slows down with its own
backlog. These replacements return the same values: the clock is read once per scan, and the
retention check reads the queue's retention period instead of rebuilding every attribute.

install() / uninstall() are counted (infra.local.patches).
"""

from __future__ import annotations

from typing import Any

from infra.local.patches import CountedPatch, Replacements


def _visible(queue: Any) -> list[Any]:
    from moto.core.utils import unix_time_millis

    now = unix_time_millis()
    return [m for m in queue._messages if now > m.visible_at and not now < m.delayed_until]


def _not_visible(queue: Any) -> int:
    from moto.core.utils import unix_time_millis

    now = unix_time_millis()
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed(queue: Any) -> int:
    from moto.core.utils import unix_time_millis

    now = unix_time_millis()
    return sum(1 for m in queue._messages if now < m.delayed_until)


def _retained(backend: Any, queue_name: str, message: Any) -> bool:
    from moto.core.utils import unix_time

    retention_period = int(backend.get_queue(queue_name).message_retention_period)
    return retention_period + message.sent_timestamp / 1000 > unix_time()


def _replacements() -> Replacements:
    from moto.sqs.models import Queue, SQSBackend

    return {
        (Queue, "messages"): property(_visible),
        (Queue, "approximate_number_of_messages"): property(lambda queue: len(_visible(queue))),
        (Queue, "approximate_number_of_messages_not_visible"): property(_not_visible),
        (Queue, "approximate_number_of_messages_delayed"): property(_delayed),
        (SQSBackend, "is_message_valid_based_on_retention_period"): _retained,
    }


_patch = CountedPatch(_replacements)
install, uninstall, is_installed = _patch.install, _patch.uninstall, _patch.is_installed
