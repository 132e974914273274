"""The outbox starts the order workflow again for an order sent back to be sourced (an allocated or
backordered order edited, or its shipment rejected), once per version, and for nothing else."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import Template
from tests.integration.conftest import pass_through_workflow

ORDER_ID = "ord_" + "r" * 24


class Context:
    function_name = "OutboxFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:OutboxFunction"
    aws_request_id = "req-outbox"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def record(
    event: str, new: str, old: str | None, version: int = 7, sequence: str = "1", order_id: str = ORDER_ID
) -> dict[str, Any]:
    images: dict[str, Any] = {
        "NewImage": {"id": {"S": order_id}, "status": {"S": new}, "version": {"N": str(version)},
                     "channel": {"S": "web"}, "history": {"L": []}},
    }  # fmt: skip
    if old is not None:
        images["OldImage"] = {"id": {"S": order_id}, "status": {"S": old}, "version": {"N": str(version - 1)}}
    return {
        "eventID": sequence, "eventName": event, "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/test/stream/2026",
        "dynamodb": {"Keys": {"id": {"S": order_id}}, **images, "SequenceNumber": sequence, "SizeBytes": 1,
                     "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }  # fmt: skip


def outbox_filters() -> list[dict[str, Any]]:
    criteria = Template.load().functions()["OutboxFunction"]["Events"]["OrdersStream"]["Properties"]["FilterCriteria"]
    patterns = compile_filters(criteria, "OutboxFunction")
    assert patterns is not None
    return patterns


@pytest.mark.parametrize(
    ("event", "new", "old", "passes"),
    [
        ("INSERT", "pending", None, True),
        ("MODIFY", "authorized", "allocated", True),  # an edit or a reject sends it back to be sourced
        ("MODIFY", "authorized", "backordered", True),
        ("MODIFY", "authorized", "pending", False),  # the workflow's own step: its execution goes on
        ("MODIFY", "allocated", "authorized", False),
        ("MODIFY", "authorized", "authorized", False),
        ("REMOVE", "authorized", "allocated", False),
    ],
)
def test_the_stream_filter_passes_new_orders_and_orders_sent_back_to_be_sourced(event, new, old, passes):
    assert matches_filters(outbox_filters(), record(event, new, old)) is passes


@pytest.fixture
def machine(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    sfn, arn = pass_through_workflow(monkeypatch)
    from functions.outbox import app

    app.container.forget()
    yield sfn, arn
    app.container.forget()


def test_an_order_sent_back_is_started_again_under_its_version(machine):
    from functions.outbox.app import lambda_handler

    sfn, arn = machine
    batch = {"Records": [record("MODIFY", "authorized", "allocated", version=7, sequence="2")]}

    assert lambda_handler(batch, Context()) == {"batchItemFailures": []}

    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert execution["name"] == f"{ORDER_ID}-v7"
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert started["order_id"] == ORDER_ID
    assert "finish_cancel" not in started


def test_a_cancel_starts_an_execution_to_finish_its_clean_up_under_its_version(machine):
    from functions.outbox.app import lambda_handler

    sfn, arn = machine
    batch = {"Records": [record("MODIFY", "cancelled", "on_hold", version=9, sequence="3")]}

    assert lambda_handler(batch, Context()) == {"batchItemFailures": []}

    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert execution["name"] == f"{ORDER_ID}-cancel-v9"
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert (started["order_id"], started["finish_cancel"]) == (ORDER_ID, True)


class Left(Context):
    """An invocation with `millis` left at every ask."""

    def __init__(self, millis: int):
        self._millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self._millis


def test_records_there_is_no_time_left_for_are_left_to_the_next_batch_and_each_order_started_once(machine, caplog):
    """The outbox worked through its whole batch whatever time it had left: 25 starts throttled and
    retried (standard mode: up to 3 s of backoff each) ran past the function's 10 s Timeout, and the
    stream retried the batch whole, bisected, every order before the timeout started again. With
    less than RECORD_RESERVE_MILLIS left, no record after the first is started: the rest are
    reported failed unprocessed, and the stream's next batch, from the first of them, starts each."""
    from functions.outbox.app import RECORD_RESERVE_MILLIS, lambda_handler

    sfn, arn = machine
    orders = [f"ord_{n:024d}" for n in range(3)]
    batch = [record("INSERT", "pending", None, sequence=str(n + 1), order_id=o) for n, o in enumerate(orders)]

    answer = lambda_handler({"Records": batch}, Left(RECORD_RESERVE_MILLIS - 1))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "2"}, {"itemIdentifier": "3"}]}
    started = [e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]]
    assert started == [orders[0]]  # the first record always: a batch failed whole never gets past it
    [cut] = [r for r in caplog.records if r.getMessage().startswith("stream batch cut short")]
    assert (cut.records_done, cut.records_left) == (1, 2)
    assert lambda_handler({"Records": batch[1:]}, Left(RECORD_RESERVE_MILLIS)) == {"batchItemFailures": []}
    started = [e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]]
    assert sorted(started) == orders


def test_a_failed_start_holds_back_the_records_after_it_unstarted_whatever_time_is_left(machine, caplog, monkeypatch):
    """The time reserve never lets a record after a failed one start (the stream retries from the
    failed one, and its orders' later records must not act before it); a batch whose first record
    failed, out of time or not, is failed whole (bisected), and says nothing of being cut short."""
    from functions.outbox import app
    from functions.stream_batches import BatchFailed

    sfn, arn = machine
    orders = [f"ord_{n:024d}" for n in range(3)]
    batch = [record("INSERT", "pending", None, sequence=str(n + 1), order_id=o) for n, o in enumerate(orders)]
    start = app.container().workflow_starter.start
    asked: list[str] = []
    failing = orders[1]  # the second record's start fails, then (below) the first's

    def throttled(order_id: str, **started: Any) -> bool:
        asked.append(order_id)
        if order_id == failing:
            raise RuntimeError("ThrottlingException")
        return start(order_id, **started)

    monkeypatch.setattr(app.container().workflow_starter, "start", throttled)
    caplog.set_level(logging.INFO)

    assert app.lambda_handler({"Records": batch}, Left(60_000)) == {
        "batchItemFailures": [{"itemIdentifier": "2"}, {"itemIdentifier": "3"}]
    }
    assert asked == orders[:2]
    failing, asked[:] = orders[0], []
    for left in (60_000, app.RECORD_RESERVE_MILLIS - 1):
        with pytest.raises(BatchFailed, match="an earlier record of the batch failed"):
            app.lambda_handler({"Records": batch}, Left(left))
    assert asked == [orders[0], orders[0]]
    assert [e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]] == [orders[0]]
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]


def test_a_new_orders_execution_carries_its_channel_and_the_request_that_placed_it(machine):
    """The steps' log lines name the request that placed the order (its created entry's
    `request_id`) and its channel, from the execution's input: without them an operator cannot
    follow an order from its POST to its workflow."""
    from functions.adapters import order_codec
    from functions.outbox.app import lambda_handler

    sfn, arn = machine
    placed = record("INSERT", "pending", None, version=1, sequence="4")
    created = {"type": "created", "to_status": "pending", "actor": "key_web", "detail": {"request_id": "req-42"}}
    placed["dynamodb"]["NewImage"]["history"] = {"L": [{"B": order_codec.compress(json.dumps(created).encode())}]}

    assert lambda_handler({"Records": [placed]}, Context()) == {"batchItemFailures": []}

    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert started == {"order_id": ORDER_ID, "channel": "web", "correlation_id": "req-42"}
