"""Webhook delivery queue consumer: one message is one attempt to POST one event to one subscriber."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from core.status import DeliveryStatus
from core.webhooks import DeliveryMessage
from functions.bootstrap import WarmContainer
from functions.masked_logs import function_logger
from functions.stream_batches import batch_response

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()


def deliver(record: SQSRecord) -> None:
    """A subscriber's answer, whatever it is, is recorded and the message succeeds; what raises
    here is ours (AWS errors) and the queue delivers the message again, then dead-letters it."""
    message = DeliveryMessage.from_json(record.body)
    with logger.append_context_keys(webhook_id=message.webhook_id, delivery_id=message.delivery_id):
        outcome = container().delivery_worker.handle(message, record.message_id)
        # The attempt the message was sent to make, counted as GET .../deliveries counts attempts (its
        # `attempts` is those made before it); `outcome` says whether it made one.
        logger.info("webhook delivery", extra={"outcome": outcome, "attempt": message.attempts + 1})
    # A delivery ended by a deleted webhook is no subscriber's loss, nor a manual resend of a
    # delivered one ("resent", "resend_failed": the subscriber had it): neither is counted as
    # failed (what WebhookDeliveriesFailedAlarm watches) or delivered.
    if outcome == DeliveryStatus.FAILED:
        metrics.add_metric(name="WebhookDeliveriesFailed", unit=MetricUnit.Count, value=1)
    elif outcome == DeliveryStatus.DELIVERED:
        metrics.add_metric(name="WebhookDeliveriesDelivered", unit=MetricUnit.Count, value=1)
    elif outcome == "retrying":
        metrics.add_metric(name="WebhookAttemptsFailed", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # A processor per run (about 4 µs): it keeps the run's records and failures on itself, and the
    # local runtime runs this queue's batches side by side in one process (the mapping's
    # MaximumConcurrency), where a shared one answered for another run's records too. No time
    # reserve (the other batch consumers' RECORD_RESERVE_MILLIS): its mapping hands it one message
    # at a time (BatchSize 1), and a batch's first record is always started.
    processor = BatchProcessor(event_type=EventType.SQS)
    return batch_response(event=event, record_handler=deliver, processor=processor, context=context)
