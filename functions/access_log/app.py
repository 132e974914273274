"""Access-log queue consumer: stores each read of an order the API queued."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import TypeAdapter

from core.access_log import OrderRead
from functions.bootstrap import WarmContainer
from functions.masked_logs import function_logger
from functions.stream_batches import TimedBatchProcessor, batch_response

logger = function_logger()
# A message is not started with less than this left of the function's 10 s Timeout: the rest are
# reported failed unprocessed, and SQS hands them out again after the visibility timeout (a timed-out
# batch came back whole, every message stored again and received once more towards the DLQ's 5). A
# message is at most a page of 100 reads, 4 BatchWriteItem: at a table at its limit each asks its
# unprocessed writes again after 0.75 s of backoffs (functions/adapters/access_log.py), ~3 s.
RECORD_RESERVE_MILLIS = 4_000
processor = TimedBatchProcessor(EventType.SQS, reserve_millis=RECORD_RESERVE_MILLIS)
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
    answer = batch_response(event=event, record_handler=store_read, processor=processor, context=context)
    processor.say_if_cut_short(logger, event)
    return answer
