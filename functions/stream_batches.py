"""How the stream consumers take a batch: in order, up to its first failed record."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType


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
