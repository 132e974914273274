"""An exchange whose returns workflow stopped midway, after the goods were received, and recorded
it stuck (`return_stuck`): its Exchange step died at the same write on every retry (a table
refusing it, the function killed), between deciding the replacement, putting it, recording it on
the original, linking it to the return, refunding the rest of the credit and marking the return.
Through the real step handler, in-process on moto, the reconciler's returns pass then finishes it
(it starts its workflow again, or, its refund made since, marks it refunded as the step would):
one replacement order (its id derived from the return), the rest of the credit refunded once,
nothing recorded as refunded that the gateway did not refund. Only a refund the gateway refused,
or an exchange stuck again and again, is left to a person."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from core.errors import PaymentPluginFailed, TransientError
from core.returns import RefundNotDone
from functions.adapters.dynamodb import DynamoOrders, DynamoReturns
from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.return_steps import AFTER_RECEIPT, RECEIPT, later, received, refunds, started_again, step, stuck
from tests.integration.test_cancel_units_api import money
from tests.integration.test_return_refund_plugin_failures import failing

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west, CAP 7.77 in the east)
services = return_steps.services  # the API's and the return step's services

CAP = [{"sku": "CAP", "quantity": 1}]  # a MUG (12.50) exchanged for a CAP (7.77): the rest refunded
DIED = TransientError("the write was refused: the table stayed throttled past the retries")


def returns_write(when: Callable[[Any, Any], bool]) -> Callable[..., None]:
    real = DynamoReturns.update

    def update(self: DynamoReturns, item: Any, expected: Any) -> None:
        if when(item, expected):
            raise DIED
        real(self, item, expected)

    return update


def orders_write(when: Callable[[Any, Any, Any], bool]) -> Callable[..., None]:
    real = DynamoOrders.update

    def update(self: DynamoOrders, order: Any, expected: Any, entries: Any, **conditions: Any) -> None:
        if when(order, expected, entries):
            raise DIED
        real(self, order, expected, entries, **conditions)

    return update


def replacement_put() -> Callable[..., None]:
    real = DynamoOrders.add

    def add(self: DynamoOrders, order: Any, *args: Any, **kwargs: Any) -> None:
        if order.exchange_of is not None:
            raise DIED
        real(self, order, *args, **kwargs)

    return add


def decided(new: Any, old: Any) -> bool:
    return new.exchange_placing and not old.exchange_placing


def recorded_on_the_original(new: Any, old: Any, entries: Any) -> bool:
    return any(entry.type == "exchange_placed" for entry in entries)


def linked(new: Any, old: Any) -> bool:
    return bool(new.exchange_order_id and not old.exchange_order_id)


def refund_begun(new: Any, old: Any, entries: Any) -> bool:
    return len(new.payment.refunds) > len(old.payment.refunds)


def marked(new: Any, old: Any) -> bool:
    return new.status.value == "refunded" and old.status.value != "refunded"


# Where the Exchange step dies, every try: at the write named, nothing after it written.
DIES_AT = {
    "the decision to place the replacement": (DynamoReturns, "update", returns_write(decided)),
    "the replacement's put": (DynamoOrders, "add", replacement_put()),
    "the original recording the replacement": (DynamoOrders, "update", orders_write(recorded_on_the_original)),
    "the return's link to its replacement": (DynamoReturns, "update", returns_write(linked)),
    "the rest of the credit's pending refund": (DynamoOrders, "update", orders_write(refund_begun)),
}


def finished_once(api: InProcessApi, order: dict[str, Any], return_id: str) -> None:
    """The exchange as one clean run of its workflow leaves it: one replacement, named once in the
    original's history, the rest of its credit refunded once, the return `refunded` showing it."""
    done = api.get(f"/returns/{return_id}").json()
    assert done["status"] == "refunded" and done["exchange_order_id"], done
    replacement = api.get(f"/orders/{done['exchange_order_id']}").json()
    assert replacement["exchange_of"] == return_id
    placed = [
        o["id"] for o in api.get("/orders", params={"limit": 100}).json()["items"]
        if o.get("external_id", "").startswith(order["external_id"] + "-x")
    ]  # fmt: skip
    assert placed == [replacement["id"]]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    named = [e["detail"]["exchange_order_id"] for e in history if e["type"] == "exchange_placed"]
    assert named == [replacement["id"]]
    rest = Decimal(money(replacement["exchange_credit"])) - Decimal(money(replacement["totals"]["grand_total"]))
    assert rest > 0
    assert refunds(api, order["id"]) == [("succeeded", str(rest))]
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == str(rest)
    assert money(done["refund"]) == str(rest)


@pytest.mark.parametrize("dies_at", list(DIES_AT))
def test_an_exchange_stuck_at_a_write_between_is_started_again_by_the_reconciler_and_finished_once(
    api, services, monkeypatch, dies_at
):
    order, return_id = received(api, exchange=CAP)
    step("refund", return_id)  # an exchange's refund is its Exchange step's
    with monkeypatch.context() as patched:
        patched.setattr(*DIES_AT[dies_at])
        stuck(return_id, "exchange", TransientError)
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    assert all(status != "succeeded" for status, _ in refunds(api, order["id"]))
    reconciler = later()

    started_again(reconciler, return_id)

    finished_once(api, order, return_id)
    assert reconciler.return_reconciler.run() == []  # refunded: nothing left to start


def test_an_exchange_stuck_after_its_refund_before_its_mark_is_marked_refunded_without_a_start(
    api, services, monkeypatch
):
    order, return_id = received(api, exchange=CAP)
    step("refund", return_id)
    with monkeypatch.context() as patched:
        patched.setattr(DynamoReturns, "update", returns_write(marked))
        stuck(return_id, "exchange", TransientError)
    [(status, _)] = refunds(api, order["id"])
    assert status == "succeeded"
    before = api.get(f"/orders/{order['id']}/history").json()["items"]
    reconciler = later()

    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.marked_refunded == [return_id]  # before: left to a person
    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.marked_refunded == []

    finished_once(api, order, return_id)
    assert reconciler.return_workflow.started == []
    assert api.get(f"/orders/{order['id']}/history").json()["items"] == before  # the mark: the return's alone


def test_an_exchange_stuck_on_its_rest_refund_plugin_is_marked_refunded_once_the_pending_pass_made_it(api, services):
    order, return_id = received(api, exchange=CAP)
    step("refund", return_id)
    with failing(services, garbage=False):
        stuck(return_id, "exchange", PaymentPluginFailed)
        [(status, _)] = refunds(api, order["id"])
        assert status == "pending"
        reconciler = later()
        assert reconciler.return_reconciler.run() == []  # its refund pending: the pending-refund pass's
        assert reconciler.return_reconciler.marked_refunded == []
    [finished] = services.refunds.finish_pending(order["id"], "reconciler", unshown=True)  # the pass, plugin fixed
    assert finished.status == "succeeded"

    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.marked_refunded == [return_id]  # before: left to a person

    finished_once(api, order, return_id)
    assert reconciler.return_workflow.started == []


def test_an_exchange_whose_rest_refund_the_gateway_refused_is_left_to_a_person(api, services):
    # The gateway declines every refund of the order's payment: the Exchange step's retries ask
    # under new keys, the compensation records it stuck; the reconciler asks nothing again.
    order, return_id = received(api, exchange=CAP, payment={"method": "test", "token": "tok_refund_decline"})
    step("refund", return_id)
    stuck(return_id, "exchange", RefundNotDone)
    asked = refunds(api, order["id"])
    assert asked and all(status == "failed" for status, _ in asked)
    reconciler = later()

    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.run() == []

    assert reconciler.return_reconciler.marked_refunded == []
    assert reconciler.return_workflow.started == []
    assert refunds(api, order["id"]) == asked
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"


def test_an_exchange_stuck_again_after_its_restarts_is_left_to_a_person_and_receiving_it_again_resumes_it(
    api, services, monkeypatch
):
    order, return_id = received(api, exchange=CAP)
    step("refund", return_id)
    reconciler = later()
    with monkeypatch.context() as patched:
        patched.setattr(*DIES_AT["the original recording the replacement"])  # for good, until a person fixes it
        stuck(return_id, "exchange", TransientError, execution="ex-1")
        for run in (2, 3):
            assert reconciler.return_reconciler.run() == [return_id]
            for name in AFTER_RECEIPT[:-1]:
                step(name, return_id)
            stuck(return_id, "exchange", TransientError, execution=f"ex-{run}")

        assert reconciler.return_reconciler.run() == []  # stuck three times: the person the alarm called
        assert reconciler.return_reconciler.run() == []
    assert reconciler.return_workflow.started == [return_id, return_id]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"]["execution"] for e in history if e["type"] == "return_stuck"] == ["ex-1", "ex-2", "ex-3"]
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"

    assert api.post(f"/returns/{return_id}/receive", json=RECEIPT).status_code in (200, 202)  # the person resumes it
    for name in AFTER_RECEIPT:
        step(name, return_id)

    finished_once(api, order, return_id)
