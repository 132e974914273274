"""The queue consumers whose mappings run batches side by side (the template's
ScalingConfig.MaximumConcurrency; the local runtime runs them in threads over one imported module)
keep each invocation's batch to itself: powertools' BatchProcessor holds a run's records, successes
and failures on the instance, so one instance shared by two runs at once answers for both."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import pytest

from infra.local.lambdas import LocalFunction
from tests.integration.conftest import FUNCTION_ENV


def sqs_record(message_id: str, body: str) -> dict[str, Any]:
    return {
        "messageId": message_id, "receiptHandle": f"r-{message_id}", "body": body, "attributes": {},
        "messageAttributes": {}, "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("consumer", "record_handler"),
    [("functions.webhook_delivery.app", "deliver"), ("functions.import_worker.app", "import_order")],
)
def test_a_batch_run_beside_another_answers_for_its_own_records(consumer, record_handler, monkeypatch):
    # Imported in the functions' environment, as every other test imports them (test_stream_batches.py).
    for name, value in FUNCTION_ENV.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module(consumer)
    inside, go = threading.Event(), threading.Event()

    def held_or_failing(record: Any) -> None:
        if record.body == "held":
            inside.set()
            assert go.wait(10)  # answered once the other run has ended
            return
        raise ConnectionError("the other run's record failed")

    monkeypatch.setattr(module, record_handler, held_or_failing)
    function = LocalFunction("oms-local-Consumer", module.lambda_handler)
    answers: dict[str, Any] = {}

    def held_run() -> None:
        try:
            answers["held"] = module.lambda_handler({"Records": [sqs_record("m1", "held")]}, function.new_context())
        except Exception as error:  # what the runtime would report instead of the answer
            answers["held"] = error

    first = threading.Thread(target=held_run)
    first.start()
    try:
        assert inside.wait(10)
        with pytest.raises(Exception, match="All records failed processing") as failed:  # its one record failed
            module.lambda_handler({"Records": [sqs_record("m2", "fails")]}, function.new_context())
        assert type(failed.value).__name__ == "BatchFailed"
    finally:
        go.set()
        first.join(10)

    # Its record succeeded: nothing of it to retry, not the other run's failure.
    assert answers["held"] == {"batchItemFailures": []}
