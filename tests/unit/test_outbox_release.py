"""A release from a hold starts the order workflow again through the outbox, and nothing else does:
the template's stream filter and the handler agree on which records those are."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

import functions.outbox.app as outbox
from core.errors import TransientError
from core.status import OrderStatus, can_transition
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import load_template
from tests.integration.import_support import context

ROOT = Path(__file__).resolve().parents[2]


ORDER_ID = "ord_" + "a" * 24
FILTERS = compile_filters(
    load_template(ROOT / "template.yaml")["Resources"]["OutboxFunction"]["Properties"]["Events"]["OrdersStream"][
        "Properties"
    ]["FilterCriteria"],
    "OutboxFunction",
)


def record(event_name: str, old_status: str | None, new_status: str, version: int = 4) -> dict[str, Any]:
    def image(status: str, v: int) -> dict[str, Any]:
        return {"id": {"S": ORDER_ID}, "status": {"S": status}, "version": {"N": str(v)}, "channel": {"S": "web"}}

    dynamodb: dict[str, Any] = {"Keys": {"id": {"S": ORDER_ID}}, "NewImage": image(new_status, version)}
    if old_status is not None:
        dynamodb["OldImage"] = image(old_status, version - 1)
    return {"eventID": "1", "eventName": event_name, "eventSource": "aws:dynamodb", "dynamodb": dynamodb}


class Starter:
    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []
        self.finishing: list[str] = []  # the starts that only finish a recorded cancel

    def start(
        self, order_id: str, channel: str = "", correlation_id: str = "", rerun: str | None = None,
        finish_cancel: bool = False,
    ) -> bool:  # fmt: skip
        self.started.append((order_id, rerun))
        if finish_cancel:
            self.finishing.append(order_id)
        return True


@pytest.fixture
def starter(monkeypatch: pytest.MonkeyPatch) -> Starter:
    fake = Starter()
    monkeypatch.setattr(outbox, "container", lambda: SimpleNamespace(workflow_starter=fake))
    return fake


@pytest.mark.parametrize("resumed", ["pending", "authorized", "backordered"])
def test_a_release_to_a_status_the_workflow_moves_on_from_starts_a_new_execution(starter, resumed):
    raw = record("MODIFY", "on_hold", resumed, version=4)
    assert matches_filters(FILTERS, raw)

    outbox.start_workflow(DynamoDBRecord(raw))

    assert starter.started == [(ORDER_ID, "release-v4")]
    assert starter.finishing == []


def test_a_new_order_starts_its_first_execution(starter):
    raw = record("INSERT", None, "pending", version=1)
    assert matches_filters(FILTERS, raw)
    outbox.start_workflow(DynamoDBRecord(raw))
    assert starter.started == [(ORDER_ID, None)]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("on_hold", "allocated"),  # released with only its shipments left: API calls, no workflow
        ("payment_failed", "cancelled"),  # not a transition: nothing to finish
        ("pending", "on_hold"),
        ("pending", "authorized"),  # the workflow's own progress
        ("allocated", "shipped"),
    ],
)
def test_any_other_change_starts_nothing(starter, old, new):
    raw = record("MODIFY", old, new)
    assert not matches_filters(FILTERS, raw)
    outbox.start_workflow(DynamoDBRecord(raw))  # a record the filter let through by mistake
    assert starter.started == []


@pytest.mark.parametrize("old", ["pending", "authorized", "allocated", "on_hold", "backordered"])
def test_a_cancel_starts_an_execution_that_finishes_its_clean_up(starter, old):
    """Every status a cancel can come from (the transition table's), and nothing else: the
    template's filter and the handler agree, and the start is named by the cancel's version."""
    assert old in {s.value for s in OrderStatus if can_transition(s, OrderStatus.CANCELLED)}
    raw = record("MODIFY", old, "cancelled", version=6)
    assert matches_filters(FILTERS, raw)

    outbox.start_workflow(DynamoDBRecord(raw))

    assert starter.started == [(ORDER_ID, "cancel-v6")]
    assert starter.finishing == [ORDER_ID]


def test_the_filter_lets_through_a_cancel_from_every_status_that_can_be_cancelled():
    cancellable = {s.value for s in OrderStatus if can_transition(s, OrderStatus.CANCELLED)}
    assert {
        old for old in (s.value for s in OrderStatus) if matches_filters(FILTERS, record("MODIFY", old, "cancelled"))
    } == cancellable


class RefusingStarter(Starter):
    """Step Functions refuses every start of a cancel's clean-up (throttled, say)."""

    def start(self, order_id: str, *args: Any, finish_cancel: bool = False, **kwargs: Any) -> bool:
        if finish_cancel:
            raise TransientError("the order workflow could not be started: ThrottlingException")
        return super().start(order_id, *args, finish_cancel=finish_cancel, **kwargs)


def test_a_record_whose_start_fails_is_logged_with_the_order_and_what_it_was_to_start(
    monkeypatch: pytest.MonkeyPatch,
):
    """A failed record's stream batch reaches the failure queue as shard and sequence numbers, which
    name no order, and the stream keeps its records for 24 hours. No line named the order, nor that
    its start was a cancel's clean-up (its stock and authorization still held), so past those hours
    nothing could find it: the runbook's `GET /orders?status=pending` finds only new orders."""
    refusing = RefusingStarter()
    monkeypatch.setattr(outbox, "container", lambda: SimpleNamespace(workflow_starter=refusing))
    written = io.StringIO()  # powertools' handler keeps the stdout it was created with
    for handler in logging.getLogger(outbox.logger.name).handlers:
        monkeypatch.setattr(handler, "stream", written)
    placed, cancelled = record("INSERT", None, "pending", version=1), record("MODIFY", "allocated", "cancelled", 6)
    placed["dynamodb"]["SequenceNumber"], cancelled["dynamodb"]["SequenceNumber"] = "100", "101"

    answer = outbox.lambda_handler({"Records": [placed, cancelled]}, context("OutboxFunction"))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    assert refusing.started == [(ORDER_ID, None)]
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    (failed,) = [line for line in lines if line["message"] == "order workflow not started: the stream retries it"]
    assert failed["level"] == "WARNING"
    assert (failed["order_id"], failed["rerun"], failed["finish_cancel"]) == (ORDER_ID, "cancel-v6", True)
    assert failed["error"] == "TransientError" and "ThrottlingException" in failed["reason"]


@pytest.mark.parametrize("sent_back_from", ["allocated", "backordered"])
def test_an_order_sent_back_to_be_sourced_starts_a_new_execution_under_its_version(starter, sent_back_from):
    """An edit or a location's reject sends an allocated or a backordered order back to
    `authorized`: with no execution started it waits there, unsourced, until the reconciler's
    restart a quarter of an hour later."""
    raw = record("MODIFY", sent_back_from, "authorized", version=5)
    assert matches_filters(FILTERS, raw)

    outbox.start_workflow(DynamoDBRecord(raw))

    assert starter.started == [(ORDER_ID, "v5")]
    assert starter.finishing == []


def test_the_dashboards_started_workflows_count_each_start_once_and_no_start_refused_as_a_duplicate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The outbox's `OrderWorkflowsStarted` (the dashboard's graph) counts the executions Step
    Functions took: a redelivered record whose start is refused by its name started nothing."""
    from tests.integration.test_reconciler import emitted

    class RefusesARepeat(Starter):
        def start(self, order_id: str, *args: Any, **kwargs: Any) -> bool:
            repeat = (order_id, kwargs.get("rerun")) in self.started
            super().start(order_id, *args, **kwargs)
            return not repeat  # a repeat: ExecutionAlreadyExists

    refusing = RefusesARepeat()
    monkeypatch.setattr(outbox, "container", lambda: SimpleNamespace(workflow_starter=refusing))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    outbox.metrics.clear_metrics()
    placed, redelivered = record("INSERT", None, "pending", version=1), record("INSERT", None, "pending", version=1)
    released = record("MODIFY", "on_hold", "pending", version=3)
    for sequence, each in enumerate((placed, redelivered, released), start=100):
        each["dynamodb"]["SequenceNumber"] = str(sequence)
    capsys.readouterr()

    answer = outbox.lambda_handler({"Records": [placed, redelivered, released]}, context("OutboxFunction"))

    assert answer == {"batchItemFailures": []} and len(refusing.started) == 3
    assert emitted(capsys.readouterr().out) == {"OrderWorkflowsStarted": 2}


def test_a_record_started_with_the_reserve_left_still_has_time_for_a_throttled_starts_retries():
    """A record is one StartExecution, which botocore tries MAX_ATTEMPTS times, waiting up to 1 s,
    then 2 s, between: started with less left than that, a throttled start outlives the function's
    Timeout, and the stream retries the batch whole, its orders started again."""
    from functions.adapters.aws_clients import MAX_ATTEMPTS

    timeout = load_template(ROOT / "template.yaml")["Globals"]["Function"]["Timeout"]
    outbox_timeout = load_template(ROOT / "template.yaml")["Resources"]["OutboxFunction"]["Properties"].get(
        "Timeout", timeout
    )
    backoff_millis = sum(1_000 * 2**retry for retry in range(MAX_ATTEMPTS - 1))
    assert backoff_millis < outbox.RECORD_RESERVE_MILLIS < outbox_timeout * 1_000
