"""How the stream and queue consumers take a batch: only while the invocation has time left for one
more record (with a reserve); a stream's in order, up to its first failed record; any batch failed
whole with its card numbers masked in the error it ends in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BasePartialBatchProcessor,
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from core.card_numbers import mask_card_numbers
from core.deadline import Deadline


class TimedBatchProcessor(BatchProcessor):
    """A batch (a queue's or a stream's, `event_type`) whose records are started only while at least
    `reserve_millis` is left of the invocation (its context's get_remaining_time_in_millis, a
    core.deadline.Deadline): the records not started are reported failed unprocessed, so the queue
    or the stream hands them out again, instead of the invocation running into its Timeout mid-batch
    (a timed-out batch comes back whole: every record done before the timeout done again, a queue's
    messages each received once more towards its dead-letter queue, a stream's batch bisected).
    The first record is always started: a batch failed whole comes back whole, and would never get
    past it. `deadline` is the last batch's (None without a reserve or a context); its `reached` says
    it held records back, `held_back` which (their raw records)."""

    def __init__(self, event_type: EventType, reserve_millis: int | None = None) -> None:
        super().__init__(event_type=event_type)
        self._reserve_millis = reserve_millis
        self._context: Any = None
        self.deadline: Deadline | None = None
        self.held_back: list[dict[str, Any]] = []

    def __call__(self, records: list[dict], handler: Callable, lambda_context: Any = None) -> TimedBatchProcessor:
        # This batch's context, never one a batch before it was given (powertools keeps the last).
        self._context = lambda_context
        return super().__call__(records, handler, lambda_context)

    def _prepare(self) -> None:
        super()._prepare()
        self.deadline = None
        self.held_back = []
        if self._reserve_millis is not None and self._context is not None:
            self.deadline = Deadline(self._context.get_remaining_time_in_millis, self._reserve_millis)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self._out_of_time():
            self.held_back.append(record)
            return self._held_back(record, "the invocation's time is nearly up: left to the next batch")
        return super()._process_record(record)

    def _out_of_time(self) -> bool:
        """Whether too little is left to start this record, one after the first (once true, for every
        record after it: Deadline)."""
        if self.deadline is None:
            return False
        return bool(self.success_messages or self.fail_messages) and self.deadline()

    def _held_back(self, record: dict[str, Any], why: str) -> Any:
        return self.failure_handler(
            record=self._to_batch_type(record, event_type=self.event_type, model=self.model),
            exception=(RecordHeldBack, RecordHeldBack(why), None),
        )

    def say_if_cut_short(self, logger: Logger, event: dict[str, Any]) -> None:
        """The INFO line of a batch (`event`) that held records back for lack of time: how many it did
        and left to the next batch (`records_done`, `records_left`)."""
        if self.deadline is None or not self.deadline.reached:
            return
        source = "stream" if self.event_type is EventType.DynamoDBStreams else "queue"
        left = len(self.held_back)
        logger.info(
            f"{source} batch cut short: too little time left to start its next record,"
            f" left to the {source}'s next batch",
            extra={"records_left": left, "records_done": len(event.get("Records") or []) - left},
        )


class InOrderStreamProcessor(TimedBatchProcessor):
    """A stream batch processed in order up to its first failed record: Lambda retries the batch
    from that record, so a later one processed now would act before it (an order's events
    published out of order, its cancel's clean-up started before its own workflow) and again on
    the retry. The records after it are reported failed without being processed (as powertools'
    SqsFifoPartialProcessor does for a FIFO queue).
    With `reserve_millis`, the records there is no time left for are reported failed unprocessed
    too (TimedBatchProcessor), as after a failure, so the stream hands them out again from the
    first of them (no timeout, whose batch would be retried whole and bisected)."""

    def __init__(self, reserve_millis: int | None = None) -> None:
        super().__init__(EventType.DynamoDBStreams, reserve_millis)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self.fail_messages and not (self.deadline is not None and self.deadline.reached):
            return self._held_back(record, "an earlier record of the batch failed")
        return super()._process_record(record)


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
