"""Every stream consumer takes its batch in order up to the first failed record (functions/stream_batches.py)."""

from __future__ import annotations

import importlib

import pytest
from aws_lambda_powertools.utilities.batch import process_partial_response

from functions.stream_batches import InOrderStreamProcessor
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


@pytest.mark.parametrize("consumer", ["functions.outbox.app", "functions.events.app", "functions.backorders.app"])
def test_every_stream_consumer_takes_its_batch_in_order(consumer, monkeypatch):
    # Imported in the functions' environment, as every other test imports them: a handler module's
    # Logger and Metrics take their service when first imported, and one imported here without it
    # printed its metrics without the `service` dimension for the rest of the worker's tests.
    for name, value in FUNCTION_ENV.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module(consumer)
    assert isinstance(module.processor, InOrderStreamProcessor)
