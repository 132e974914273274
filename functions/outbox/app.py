"""Orders stream consumer (the outbox): starts the order workflow for each new order, and again
for an order sent back to be sourced (an edit or a reject of an allocated or backordered order)."""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from functions.bootstrap import WarmContainer

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
container = WarmContainer()


def start_workflow(record: DynamoDBRecord) -> None:
    # The template's filter passes INSERTs (a new order item is a new order) and the MODIFYs that
    # send an order back to `authorized` from `allocated` or `backordered`: its steps skip what is
    # done and source it again. That execution is named by the version that sent it back, so a
    # redelivered record is the same start and another edit or reject a new one.
    order_id = record.dynamodb.keys["id"]
    image = record.dynamodb.new_image or {}
    channel, correlation_id = _trace(image)
    rerun = None if record.event_name == DynamoDBRecordEventName.INSERT else f"v{int(image['version'])}"
    with logger.append_context_keys(order_id=order_id, channel=channel or None, correlation_id=correlation_id or None):
        started = container().workflow_starter.start(
            order_id, channel=channel, correlation_id=correlation_id, rerun=rerun
        )
        logger.info("order workflow", extra={"started": started, "rerun": rerun})
    if started:
        metrics.add_metric(name="OrderWorkflowsStarted", unit=MetricUnit.Count, value=1)


def _trace(image: dict[str, Any]) -> tuple[str, str]:
    """The order's channel, and what placed it: the API request id its created entry recorded,
    else that entry's actor (an import's id and line, or the queue's sender)."""
    channel = str(image.get("channel") or "")
    history = image.get("history") or []
    try:
        created = json.loads(history[0]) if history else {}
    except (TypeError, ValueError):
        created = {}
    correlation_id = (created.get("detail") or {}).get("request_id") or created.get("actor") or ""
    return channel, str(correlation_id)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # A record that fails is reported alone (partial batch response); the stream retries it
    # (bisecting the batch), then hands it to the on-failure queue: nothing is lost.
    return process_partial_response(event=event, record_handler=start_workflow, processor=processor, context=context)
