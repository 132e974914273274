"""Access-log queue consumer: stores each read of an order the API queued."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import TypeAdapter

from core.access_log import OrderRead
from functions.bootstrap import WarmContainer
from functions.masked_logs import function_logger
from functions.stream_batches import batch_response

logger = function_logger()
processor = BatchProcessor(event_type=EventType.SQS)
container = WarmContainer()
_READS = TypeAdapter(list[OrderRead])


def store_read(record: SQSRecord) -> None:
    """One read, or a list's reads (a JSON array: SqsReadRecorder.record_all). A failure fails this
    message only: SQS hands it out again (each read is stored under its own key, so storing it
    twice stores it once), then to the dead-letter queue."""
    body = record.body
    reads = _READS.validate_json(body) if body.lstrip().startswith("[") else [OrderRead.model_validate_json(body)]
    container().access_log_store.add_all(reads)


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return batch_response(event=event, record_handler=store_read, processor=processor, context=context)
