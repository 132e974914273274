"""Import queue consumer: captures each queued order through the same path as POST /orders."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from core.import_service import OrderOrigin, Outcome
from core.log_text import escape_for_log
from functions.adapters.imports import origin_from
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.failure_logs import failure_logged
from functions.masked_logs import function_logger
from functions.stream_batches import RecordHeldBack, TimedBatchProcessor, batch_response

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
# A message is not started with less than this left of the function's 30 s Timeout: the rest are
# reported failed unprocessed, and SQS hands them out again after the visibility timeout (a timed-out
# batch came back whole, every order captured again and every message received once more towards the
# dead-letter queue). A message is the capture path, about 6 DynamoDB requests warm (measured on
# moto: 12 for two orders, catalog reads cached), and the pricing plugins' hooks. Throttled, a request
# tries 3 times with up to 3 s of backoff between (functions/adapters/aws_clients.py): 10 s covers
# three of a message's requests throttled through their retries, or a plugin's slow seconds, and
# then listing the messages held back at their last receive as parked (_park_held_back).
RECORD_RESERVE_MILLIS = 10_000

_METRICS = {Outcome.IMPORTED: "ImportedOrders", Outcome.DUPLICATE: "DuplicateOrders", Outcome.FAILED: "RejectedOrders"}


def import_order(record: SQSRecord) -> None:
    """Bad data is recorded on the import and the message succeeds; anything raised here is not
    the order's fault (a broken plugin, AWS errors) and fails only this record: SQS delivers it
    again, and after maxReceiveCount it waits in the dead-letter queue."""
    origin = origin_from(record.raw_event.get("messageAttributes") or {})
    # The same id the order's history names as its creator, and the outbox passes to its workflow.
    correlation_id = f"{origin.import_id}:{origin.line}" if origin else f"sqs:{record.attributes.sender_id or ''}"
    with logger.append_context_keys(correlation_id=correlation_id):
        _import_order(record, origin)


def _import_order(record: SQSRecord, origin: OrderOrigin | None) -> None:
    try:
        # A plugin that failed to load fails the message before anything is captured: SQS delivers
        # it again once the deployment is fixed (or the plugin disabled).
        container().plugins.require_loaded()
        result = container().importer.import_order(
            record.body, origin, sender=record.attributes.sender_id or "", message_id=record.message_id or ""
        )
    except Exception as error:
        receives = int(record.attributes.approximate_receive_count or 0)
        last = 0 < container().config.import_queue_max_receives <= receives
        # The body is never logged: it is customer data.
        failure_logged(
            logger,
            "import message failed; it goes to the import dead-letter queue"
            if last
            else "import message failed; SQS will deliver it again",
            error,
            message_id=record.message_id,
            receive_count=record.attributes.approximate_receive_count,
            import_id=origin.import_id if origin else None,
            line=origin.line if origin else None,
        )
        if last:
            _park(record, origin, error, receives)
        raise
    if result.outcome is None:
        return  # recorded by an earlier delivery of the same message
    metrics.add_metric(name=_METRICS[result.outcome], unit=MetricUnit.Count, value=1)
    if origin is None and result.outcome is Outcome.DUPLICATE:
        # Sent directly, as another message of an order already placed (its external_id reused for
        # other content is rejected, below): said here, where its sender can find it, not only in a metric.
        logger.info(
            "order from the import queue already placed",
            extra={"message_id": record.message_id, "order_id": result.order_id},
        )
    if origin is None and result.error is not None:
        # Sent directly by another system: there is no import to record it on, so it is logged.
        logger.warning(
            "order from the import queue rejected",
            extra={
                "message_id": record.message_id,
                # Both come from the message as sent: escaped, so they cannot forge a log line.
                "external_id": escape_for_log(result.error.external_id)
                if result.error.external_id is not None
                else None,
                "code": result.error.code,
                "reason": escape_for_log(result.error.message),
            },
        )


def _park(record: SQSRecord, origin: OrderOrigin | None, error: Exception, receives: int) -> None:
    """Its last delivery failed: its import lists the order as waiting in the dead-letter queue.
    A failure to say so is logged, never raised in place of the message's own."""
    try:
        container().importer.park(record.body, origin, record.attributes.sender_id or "", error, receives)
    except Exception:
        logger.exception(
            "import line not listed as parked in the dead-letter queue", extra={"message_id": record.message_id}
        )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # A processor per run (about 4 µs): it keeps the run's records and failures on itself, and the
    # local runtime runs this queue's batches side by side in one process (the mapping's
    # MaximumConcurrency), where a shared one answered for another run's records too.
    # Messages there is no time left for (RECORD_RESERVE_MILLIS) are reported failed unstarted.
    processor = TimedBatchProcessor(EventType.SQS, reserve_millis=RECORD_RESERVE_MILLIS)
    try:
        answer = batch_response(event=event, record_handler=import_order, processor=processor, context=context)
    finally:
        _park_held_back(processor.held_back)
    processor.say_if_cut_short(logger, event)
    return answer


def _park_held_back(records: list[dict[str, Any]]) -> None:
    """A message held back at its last receive goes to the dead-letter queue never tried: its import
    lists it there, as one whose last delivery failed (_park), for the same redrive."""
    if not records:
        return
    limit = container().config.import_queue_max_receives
    for raw in records:
        record = SQSRecord(raw)
        receives = int(record.attributes.approximate_receive_count or 0)
        if not 0 < limit <= receives:
            continue
        origin = origin_from(record.raw_event.get("messageAttributes") or {})
        held = RecordHeldBack("the invocation's time was nearly up at the message's last delivery")
        logger.warning(
            "import message not started at its last delivery, too little time left; it goes to the import"
            " dead-letter queue",
            extra={"message_id": record.message_id, "receive_count": receives,
                   "import_id": origin.import_id if origin else None, "line": origin.line if origin else None},
        )  # fmt: skip
        _park(record, origin, held, receives)
