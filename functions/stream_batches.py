"""How the stream and queue consumers take a batch: a stream's in order, up to its first failed
record; any batch failed whole with its card numbers masked in the error it ends in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BasePartialBatchProcessor,
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from core.card_numbers import mask_card_numbers


class InOrderStreamProcessor(BatchProcessor):
    """A stream batch processed in order up to its first failed record: Lambda retries the batch
    from that record, so a later one processed now would act before it (an order's events
    published out of order, its cancel's clean-up started before its own workflow) and again on
    the retry. The records after it are reported failed without being processed (as powertools'
    SqsFifoPartialProcessor does for a FIFO queue)."""

    def __init__(self) -> None:
        super().__init__(event_type=EventType.DynamoDBStreams)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self.fail_messages:
            return self.failure_handler(
                record=self._to_batch_type(record, event_type=self.event_type, model=self.model),
                exception=(RecordHeldBack, RecordHeldBack("an earlier record of the batch failed"), None),
            )
        return super()._process_record(record)


class RecordHeldBack(Exception):
    """A record not processed because an earlier one of its batch failed."""


class BatchFailed(BatchProcessingError):
    """Every record of a batch failed: powertools' error, whose message holds each record's
    traceback (its chained causes too, a plugin's words under the PluginError naming it), with the
    card numbers in it masked. The Lambda runtime reports and logs that message (errorMessage)."""

    def __str__(self) -> str:
        return mask_card_numbers(super().__str__())


def batch_response(
    *, event: dict[str, Any], record_handler: Callable[..., Any], processor: BasePartialBatchProcessor, context: Any
) -> dict[str, Any]:
    """powertools' process_partial_response (the records that failed, for Lambda to retry), a batch
    failed whole raised as BatchFailed."""
    try:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    except BatchProcessingError as failed:
        # Not chained: the original's message is the unmasked one.
        raise BatchFailed(failed.msg, failed.child_exceptions) from None
