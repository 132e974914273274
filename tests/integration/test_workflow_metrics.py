"""The workflow's CancelOrder handler counts each cancel once, by reason, as CloudWatch EMF."""

from __future__ import annotations

import io
import json

import pytest

from core.models import HistoryEntry
from core.status import OrderStatus
from tests.integration.test_handlers import Context
from tests.unit.conftest import a_stored_order

ORDER_ID = "ord_" + "d" * 24


@pytest.fixture
def pending_order(aws, monkeypatch: pytest.MonkeyPatch) -> str:
    from functions.adapters.dynamodb import DynamoOrders
    from functions.workflow.cancel_order import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    # While metrics are disabled (other tests, the local stack) powertools keeps the points it does
    # not print; start from none.
    metrics.clear_metrics()
    order = a_stored_order(("TSHIRT-BLK-M", 1), id=ORDER_ID, status=OrderStatus.PENDING)
    created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(order, created, payment_token="tok_approve")
    return order.id


@pytest.fixture
def step_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the workflow steps' logger writes (its handler keeps the stdout it was created with)."""
    from functions.workflow.step import logger

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    return stream


def cancelled_counts(output: str) -> list[tuple[str, list[float]]]:
    """(reason, values) of every OrdersCancelled the EMF lines on stdout carry."""
    counts = []
    for line in output.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        emf = json.loads(line)
        (directive,) = emf["_aws"]["CloudWatchMetrics"]
        if "OrdersCancelled" in {metric["Name"] for metric in directive["Metrics"]}:
            assert directive["Namespace"] == "OMS"
            (dimension_names,) = directive["Dimensions"]
            assert dimension_names == ["reason"]  # exactly what TechnicalCancellationsAlarm names
            counts.append((emf["reason"], emf["OrdersCancelled"]))
    return counts


def cancel_step(order_id: str, error: str) -> None:
    from functions.workflow.cancel_order import lambda_handler

    cause = json.dumps({"errorType": error, "errorMessage": "it broke"})
    lambda_handler({"order_id": order_id, "error": error, "cause": cause}, Context())


def logged_cancels(output: str) -> list[tuple[str, str]]:
    """(order_id, reason) of each "order cancelled by the workflow" line (what the runbook queries)."""
    lines = [json.loads(line) for line in output.splitlines()]
    return [
        (line["order_id"], line["reason"]) for line in lines if line["message"] == "order cancelled by the workflow"
    ]


def test_a_technical_failure_counts_one_workflow_error_cancel_and_a_repeat_counts_none(pending_order, capsys, step_log):
    cancel_step(pending_order, "Lambda.Unknown")

    assert cancelled_counts(capsys.readouterr().out) == [("workflow_error", [1.0])]
    assert logged_cancels(step_log.getvalue()) == [(pending_order, "workflow_error")]

    cancel_step(pending_order, "Lambda.Unknown")  # Step Functions retried the step, or Express ran twice

    assert cancelled_counts(capsys.readouterr().out) == []


def test_an_order_cancelled_for_lost_stock_counts_as_out_of_stock(pending_order, capsys):
    cancel_step(pending_order, "OutOfStock")

    assert cancelled_counts(capsys.readouterr().out) == [("out_of_stock", [1.0])]
