"""Orders stream consumer (the outbox): starts the order workflow for each new order."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from functions.bootstrap import WarmContainer

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
container = WarmContainer()


def start_workflow(record: DynamoDBRecord) -> None:
    # The template's filter passes only INSERTs; a new order item is a new order.
    order_id = record.dynamodb.keys["id"]
    started = container().workflow_starter.start(order_id)
    logger.info("order workflow", extra={"order_id": order_id, "started": started})
    if started:
        metrics.add_metric(name="OrderWorkflowsStarted", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # A record that fails is reported alone (partial batch response); the stream retries it
    # (bisecting the batch), then hands it to the on-failure queue: nothing is lost.
    return process_partial_response(event=event, record_handler=start_workflow, processor=processor, context=context)
