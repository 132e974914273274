"""How the stream and queue consumers take a batch: a stream's in order, up to its first failed
record (or, with a reserve, the first it has no time left for); any batch failed whole with its
card numbers masked in the error it ends in."""

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
from core.deadline import Deadline


class InOrderStreamProcessor(BatchProcessor):
    """A stream batch processed in order up to its first failed record: Lambda retries the batch
    from that record, so a later one processed now would act before it (an order's events
    published out of order, its cancel's clean-up started before its own workflow) and again on
    the retry. The records after it are reported failed without being processed (as powertools'
    SqsFifoPartialProcessor does for a FIFO queue).
    With `reserve_millis`, a record is started only while at least that much is left of the
    invocation (its context's get_remaining_time_in_millis, a core.deadline.Deadline): the records
    not started are reported failed unprocessed, as after a failure, so the stream hands them out
    again from the first of them (no timeout, whose batch would be retried whole and bisected, its
    records' events published again). The first record is always started: a batch reported failed
    whole is bisected too, and would never get past the record either. `deadline` is the last
    batch's (None without a reserve or a context); its `reached` says it held records back."""

    def __init__(self, reserve_millis: int | None = None) -> None:
        super().__init__(event_type=EventType.DynamoDBStreams)
        self._reserve_millis = reserve_millis
        self._context: Any = None
        self.deadline: Deadline | None = None

    def __call__(self, records: list[dict], handler: Callable, lambda_context: Any = None) -> InOrderStreamProcessor:
        # This batch's context, never one a batch before it was given (powertools keeps the last).
        self._context = lambda_context
        return super().__call__(records, handler, lambda_context)

    def _prepare(self) -> None:
        super()._prepare()
        self.deadline = None
        if self._reserve_millis is not None and self._context is not None:
            self.deadline = Deadline(self._context.get_remaining_time_in_millis, self._reserve_millis)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self.fail_messages:
            return self._held_back(record, "an earlier record of the batch failed")
        if self.success_messages and self.deadline is not None and self.deadline():
            return self._held_back(record, "the invocation's time is nearly up: left to the stream's next batch")
        return super()._process_record(record)

    def _held_back(self, record: dict[str, Any], why: str) -> Any:
        return self.failure_handler(
            record=self._to_batch_type(record, event_type=self.event_type, model=self.model),
            exception=(RecordHeldBack, RecordHeldBack(why), None),
        )


class RecordHeldBack(Exception):
    """A record not processed because an earlier one of its batch failed, or the invocation had
    too little time left to start it."""


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
