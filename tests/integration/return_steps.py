"""A received return driven through the returns workflow's real step handler, in-process on moto:
the API's and the step's services on one account, the receipt's start recorded (the tests run the
steps themselves), a step that keeps failing until the compensation records the return stuck, and
the reconciler's returns pass as a later run finds it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.client import ADMIN
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi
from tests.integration.test_cancel_units_api import allocated, money, ship

RECEIPT = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}


class Started:
    """The returns workflow's start, recorded: the tests run its steps through the step handler."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        self.started.append(return_id)


@pytest.fixture
def services(api: InProcessApi) -> Iterator[Any]:
    """The API's and the return step's services, on one account, the receipt's start recorded."""
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap
    from functions.return_workflow import app as step_app

    built = bootstrap(Config.from_env(), return_workflow=Started())
    with container.override(built), step_app.container.override(bootstrap(Config.from_env())):
        yield built


AFTER_RECEIPT = ("receive", "restock", "record", "refund", "exchange")  # a restarted execution's steps


def step(name: str, return_id: str, **more: str) -> None:
    from functions.return_workflow import app as step_app

    step_app.lambda_handler({"step": name, "return_id": return_id, **more}, context("ReturnStepFunction"))


def stuck(return_id: str, name: str, error: type[Exception], execution: str = "ex-1", tries: int = 3) -> None:
    """Step `name` of one execution raising `error` on every try (its retries spent), then the
    execution's compensation recording the return stuck (`return_stuck` on the order's history)."""
    for _ in range(tries):
        with pytest.raises(error):
            step(name, return_id)
    step("stuck", return_id, error=error.__name__, cause=f"{name} kept failing", execution=execution)


def received(
    api: InProcessApi, exchange: list[dict[str, Any]] | None = None,
    steps: tuple[str, ...] = ("receive", "restock", "record"), key: Any = ADMIN, receiver: Any = ADMIN,
    **overrides: Any,
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """A delivered order of two MUGs (`overrides`: its body's overrides), one of them back at the
    warehouse (its return `received`, for an exchange of `exchange` when given), the return's
    `steps` done (by default those before its refund). `key` requests the return, `receiver` (a
    location's key: receiving takes `fulfillment:write`) receives it."""
    order = ship(api, allocated(api, ("MUG", 2), **overrides), "wh-west")
    for shipment in order["shipments"]:
        done = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/deliver", json={})
        assert done.status_code == 200, done.text
    body: dict[str, Any] = {
        "lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]
    }
    if exchange is not None:
        body["exchange"] = {"lines": exchange}
    made = api.post(f"/orders/{order['id']}/returns", json=body, key=key)
    assert made.status_code == 201, made.text
    return_id = made.json()["id"]
    assert api.post(f"/returns/{return_id}/receive", json=RECEIPT, key=receiver).status_code in (200, 202)
    for name in steps:
        step(name, return_id)
    return order, return_id


def refunds(api: InProcessApi, order_id: str) -> list[tuple[str, str]]:
    return [(r["status"], money(r["amount"])) for r in api.get(f"/orders/{order_id}/refunds").json()["items"]]


def later() -> Any:
    """The reconciler's services as a run 16 minutes on finds them (past ReconcileAfterMinutes),
    its starts of the returns workflow recorded (`return_workflow.started`)."""
    from core.models import utc_now
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env(), clock=lambda: utc_now() + timedelta(minutes=16), return_workflow=Started())


def started_again(reconciler: Any, return_id: str) -> None:
    """The reconciler's pass starts the stuck return's workflow (before: left to a person), sets it
    aside while that execution runs, and the execution runs every step after the receipt."""
    assert reconciler.return_reconciler.run() == [return_id]  # before: left to a person
    assert reconciler.return_reconciler.stuck_started == [return_id]
    assert reconciler.return_reconciler.run() == []  # set aside while the execution it started runs
    for name in AFTER_RECEIPT:  # the execution it started, the table back
        step(name, return_id)
