"""Every stream consumer takes its batch in order up to the first failed record, and every batch
consumer with a reserve starts a record only while that much time is left (functions/stream_batches.py)."""

from __future__ import annotations

import importlib

import pytest
from aws_lambda_powertools.utilities.batch import EventType, process_partial_response

from functions.stream_batches import InOrderStreamProcessor, TimedBatchProcessor
from tests.integration.conftest import FUNCTION_ENV


def stream_record(sequence: str) -> dict:
    return {
        "eventID": sequence, "eventName": "MODIFY", "eventSource": "aws:dynamodb",
        "dynamodb": {"SequenceNumber": sequence, "Keys": {"id": {"S": f"ord_{sequence}"}}},
    }  # fmt: skip


def test_the_records_after_a_failed_one_are_failed_unprocessed_and_those_before_it_kept():
    seen: list[str] = []

    def handler(record) -> None:
        seen.append(record.dynamodb.sequence_number)
        if record.dynamodb.sequence_number == "102":
            raise RuntimeError("the workflow could not be started")

    event = {"Records": [stream_record(s) for s in ("101", "102", "103", "104")]}
    answer = process_partial_response(event=event, record_handler=handler, processor=InOrderStreamProcessor())

    assert seen == ["101", "102"]  # 103 and 104 wait for 102's retry
    assert answer == {"batchItemFailures": [{"itemIdentifier": s} for s in ("102", "103", "104")]}


class Remaining:
    """A Lambda context whose invocation has `millis` left at each ask, then the next of them."""

    def __init__(self, *millis: int):
        self._millis = iter(millis)

    def get_remaining_time_in_millis(self) -> int:
        return next(self._millis)


def test_a_record_is_started_only_with_the_reserve_left_and_always_the_first():
    seen: list[str] = []
    event = {"Records": [stream_record(s) for s in ("101", "102", "103", "104")]}

    def handler(record) -> None:
        seen.append(record.dynamodb.sequence_number)

    # 3 s left before the second record, 1 s before the third: it and the fourth wait unstarted.
    processor = InOrderStreamProcessor(reserve_millis=2_000)
    answer = process_partial_response(
        event=event, record_handler=handler, processor=processor, context=Remaining(3_000, 1_000)
    )
    assert seen == ["101", "102"]
    assert answer == {"batchItemFailures": [{"itemIdentifier": s} for s in ("103", "104")]}
    assert processor.deadline is not None and processor.deadline.reached

    # Too little left from the start: the first record all the same (a batch failed whole is
    # bisected, and could never get past it), then none; the next batch's deadline is its own.
    seen.clear()
    answer = process_partial_response(event=event, record_handler=handler, processor=processor, context=Remaining(0))
    assert seen == ["101"]
    assert answer == {"batchItemFailures": [{"itemIdentifier": s} for s in ("102", "103", "104")]}
    seen.clear()
    answer = process_partial_response(
        event=event, record_handler=handler, processor=processor, context=Remaining(*[9_000] * 3)
    )
    assert seen == ["101", "102", "103", "104"] and answer == {"batchItemFailures": []}
    assert processor.deadline is not None and not processor.deadline.reached


@pytest.mark.parametrize("consumer", ["functions.outbox.app", "functions.events.app", "functions.backorders.app"])
def test_every_stream_consumer_takes_its_batch_in_order(consumer, monkeypatch):
    # Imported in the functions' environment, as every other test imports them: a handler module's
    # Logger and Metrics take their service when first imported, and one imported here without it
    # printed its metrics without the `service` dimension for the rest of the worker's tests.
    for name, value in FUNCTION_ENV.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module(consumer)
    assert isinstance(module.processor, InOrderStreamProcessor)


def sqs_record(message_id: str) -> dict:
    return {"messageId": message_id, "body": "{}", "eventSource": "aws:sqs", "attributes": {}}


def test_a_queue_batch_starts_a_message_only_with_the_reserve_left_whether_the_one_before_failed_or_not():
    seen: list[str] = []
    event = {"Records": [sqs_record(m) for m in ("m1", "m2", "m3", "m4")]}

    def handler(record) -> None:
        seen.append(record.message_id)
        if record.message_id == "m1":
            raise RuntimeError("DynamoDB refused")

    # The first failed: a queue's batch goes on (its messages are not in order), while time is left.
    processor = TimedBatchProcessor(EventType.SQS, reserve_millis=2_000)
    answer = process_partial_response(
        event=event, record_handler=handler, processor=processor, context=Remaining(3_000, 1_000)
    )
    assert seen == ["m1", "m2"]
    assert answer == {"batchItemFailures": [{"itemIdentifier": m} for m in ("m1", "m3", "m4")]}
    assert [r["messageId"] for r in processor.held_back] == ["m3", "m4"]


def test_a_stream_batch_out_of_time_holds_back_every_record_after_as_left_for_time():
    event = {"Records": [stream_record(s) for s in ("101", "102", "103", "104")]}
    processor = InOrderStreamProcessor(reserve_millis=2_000)

    def handler(record) -> None:
        assert record.dynamodb.sequence_number == "101"

    answer = process_partial_response(
        event=event, record_handler=handler, processor=processor, context=Remaining(1_000)
    )

    assert answer == {"batchItemFailures": [{"itemIdentifier": s} for s in ("102", "103", "104")]}
    assert [r["dynamodb"]["SequenceNumber"] for r in processor.held_back] == ["102", "103", "104"]


def batch_consumers() -> dict[str, tuple[str, int, list[dict]]]:
    """Every function a queue or a stream hands batches to: (its handler module, its Timeout in
    seconds, the Properties of each such event source), from template.yaml."""
    from infra.local.template import Template

    consumers = {}
    for name, function in Template.load().functions().items():
        sources = [e["Properties"] for e in (function.get("Events") or {}).values() if e["Type"] in ("SQS", "DynamoDB")]
        if sources:
            consumers[name] = (function["Handler"].rsplit(".", 1)[0], int(function["Timeout"]), sources)
    return consumers


@pytest.mark.parametrize("function", sorted(batch_consumers()))
def test_every_batch_consumer_reports_partial_failures_and_keeps_a_time_reserve_if_it_takes_more_than_one(
    function, monkeypatch
):
    # A record the reserve holds back is reported failed, which only ReportBatchItemFailures lets
    # through (without it, a batch answered so counts as all done). A batch of one needs no reserve:
    # its first record is always started.
    for name, value in FUNCTION_ENV.items():
        monkeypatch.setenv(name, value)
    handler, timeout, sources = batch_consumers()[function]
    defaults = {"SQS": 10, "DynamoDB": 100}  # AWS's BatchSize when the template names none
    assert all(source.get("FunctionResponseTypes") == ["ReportBatchItemFailures"] for source in sources)
    if all(source.get("BatchSize", defaults["SQS" if "Queue" in source else "DynamoDB"]) == 1 for source in sources):
        return
    reserve = importlib.import_module(handler).RECORD_RESERVE_MILLIS
    assert 0 < reserve <= timeout * 1000 // 2  # half the Timeout at least left to start records in
