"""Import queue consumer: captures each queued order through the same path as POST /orders."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from core.import_service import Outcome
from functions.adapters.imports import origin_from
from functions.bootstrap import WarmContainer

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
processor = BatchProcessor(event_type=EventType.SQS)
container = WarmContainer()

_METRICS = {Outcome.IMPORTED: "ImportedOrders", Outcome.DUPLICATE: "DuplicateOrders", Outcome.FAILED: "RejectedOrders"}


def import_order(record: SQSRecord) -> None:
    """Bad data is recorded on the import and the message succeeds; anything raised here is not
    the order's fault (a broken plugin, AWS errors) and fails only this record: SQS delivers it
    again, and after maxReceiveCount it waits in the dead-letter queue."""
    origin = origin_from(record.raw_event.get("messageAttributes") or {})
    try:
        # A plugin that failed to load fails the message before anything is captured: SQS delivers
        # it again once the deployment is fixed (or the plugin disabled).
        container().plugins.require_loaded()
        result = container().importer.import_order(record.body, origin, sender=record.attributes.sender_id or "")
    except Exception:
        # The body is never logged: it is customer data.
        logger.exception(
            "import message failed; SQS will deliver it again",
            extra={
                "message_id": record.message_id,
                "receive_count": record.attributes.approximate_receive_count,
                "import_id": origin.import_id if origin else None,
                "line": origin.line if origin else None,
            },
        )
        raise
    if result.outcome is None:
        return  # recorded by an earlier delivery of the same message
    metrics.add_metric(name=_METRICS[result.outcome], unit=MetricUnit.Count, value=1)
    if origin is None and result.error is not None:
        # Sent directly by another system: there is no import to record it on, so it is logged.
        logger.warning(
            "order from the import queue rejected",
            extra={
                "message_id": record.message_id,
                "external_id": result.error.external_id,
                "code": result.error.code,
                "reason": result.error.message,
            },
        )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=import_order, processor=processor, context=context)
