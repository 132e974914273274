"""A plain return (no exchange) whose returns workflow stopped midway after the goods were received
and recorded it stuck (`return_stuck`): its Restock, RecordOnOrder or Refund step died at the same
write on every retry (a table throttled past its retries, the function timed out just after the
write). Through the real step handler, in-process on moto, the reconciler's returns pass starts its
workflow again, and every step skips what is done: the units back on hand once (the restock is keyed
by return and line), counted on the order once, refunded once under the refund's key, nothing
recorded as refunded that the gateway did not refund. A refund refused, failed or pending, or a
return stuck again and again, is not started again (left to a person, or to the pending-refund
pass)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from core.errors import TransientError
from functions.adapters.dynamodb import DynamoInventory, DynamoOrders, DynamoReturns
from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.return_steps import AFTER_RECEIPT, RECEIPT, later, received, refunds, started_again, step
from tests.integration.test_cancel_units_api import money, stock

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west, 100 on hand)
services = return_steps.services  # the API's and the return step's services

DIED = TransientError("the write was refused: the table stayed throttled past the retries")


def restock_write(after: bool) -> Callable[..., None]:
    real = DynamoInventory.restock

    def restock(self: DynamoInventory, sku: str, location_id: str, key: str, quantity: int, **more: Any) -> None:
        if after:
            real(self, sku, location_id, key, quantity, **more)
        raise DIED

    return restock


def orders_write(when: Callable[[Any, Any, Any], bool], after: bool) -> Callable[..., None]:
    real = DynamoOrders.update

    def update(self: DynamoOrders, order: Any, expected: Any, entries: Any, **conditions: Any) -> None:
        if not when(order, expected, entries):
            real(self, order, expected, entries, **conditions)
            return
        if after:
            real(self, order, expected, entries, **conditions)
        raise DIED

    return update


def returns_read() -> Callable[..., None]:
    def get(self: DynamoReturns, *args: Any, **kwargs: Any) -> None:
        raise DIED

    return get


def counted(new: Any, old: Any, entries: Any) -> bool:
    return any(entry.type == "return_received" for entry in entries)


def refund_begun(new: Any, old: Any, entries: Any) -> bool:
    return len(new.payment.refunds) > len(old.payment.refunds)


# Where the step dies: before its write on every try (a throttle; nothing written), or just after it
# on its first (the write made, the function timed out: States.Timeout), its retries then dying at
# their first read (the Returns table throttled), nothing after it written.
DIES_AT = {
    "before the restock": ("restock", lambda: (DynamoInventory, "restock", restock_write(after=False))),
    "after the restock": ("restock", lambda: (DynamoInventory, "restock", restock_write(after=True))),
    "before the order's count": ("record", lambda: (DynamoOrders, "update", orders_write(counted, after=False))),
    "after the order's count": ("record", lambda: (DynamoOrders, "update", orders_write(counted, after=True))),
    "before the refund's record": ("refund", lambda: (DynamoOrders, "update", orders_write(refund_begun, False))),
}


def stuck_at(
    monkeypatch: pytest.MonkeyPatch, return_id: str, name: str, dies: tuple[Any, str, Any], after: bool = False,
    execution: str = "ex-1",
) -> None:  # fmt: skip
    """Step `name` of one execution dying as `dies` (a patch) says on every try (`after`: on its
    first, its retries at their first read), then its compensation recording the return stuck."""
    for attempt in range(3):
        with monkeypatch.context() as patched:
            patched.setattr(*(dies if attempt == 0 or not after else (DynamoReturns, "get", returns_read())))
            with pytest.raises(TransientError):
                step(name, return_id)
    recorded = "States.Timeout" if after else "TransientError"
    step("stuck", return_id, error=recorded, cause=f"{name} kept failing", execution=execution)


def finished_once(api: InProcessApi, order: dict[str, Any], return_id: str, on_hand: int) -> None:
    """The return as one clean run of its workflow leaves it: its MUG back on hand once (`on_hand`
    before the order was placed), counted on the order once, refunded once (what the gateway gave,
    and only that)."""
    done = api.get(f"/returns/{return_id}").json()
    assert done["status"] == "refunded", done
    assert stock(api, "MUG", "wh-west")[0] == on_hand - 2 + 1  # two shipped, one back
    after = api.get(f"/orders/{order['id']}").json()
    assert [line["returned_quantity"] for line in after["lines"]] == [1]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"].get("return_id") for e in history if e["type"] == "return_received"] == [return_id]
    share = (Decimal(money(after["lines"][0]["total"])) / 2).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    assert Decimal(money(done["refund"])) == share  # the first of the line's two units
    assert refunds(api, order["id"]) == [("succeeded", money(done["refund"]))]
    assert money(after["payment"]["refunded"]) == money(done["refund"])


@pytest.mark.parametrize("dies_at", list(DIES_AT))
def test_a_plain_return_stuck_at_a_write_of_its_steps_is_started_again_by_the_reconciler_and_finished_once(
    api, services, monkeypatch, dies_at
):
    name, patch = DIES_AT[dies_at]
    on_hand = stock(api, "MUG", "wh-west")[0]
    order, return_id = received(api, steps=AFTER_RECEIPT[: AFTER_RECEIPT.index(name)])
    stuck_at(monkeypatch, return_id, name, patch(), after=dies_at.startswith("after"))
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    assert refunds(api, order["id"]) == []  # nothing asked of the gateway, nothing recorded as moved
    reconciler = later()

    started_again(reconciler, return_id)

    finished_once(api, order, return_id, on_hand)
    assert reconciler.return_reconciler.run() == []  # refunded: nothing left to start
    assert reconciler.return_workflow.started == [return_id]


def test_a_plain_return_stuck_again_after_its_restarts_is_left_to_a_person_and_receiving_it_again_resumes_it(
    api, services, monkeypatch
):
    on_hand = stock(api, "MUG", "wh-west")[0]
    order, return_id = received(api, steps=("receive",))
    reconciler = later()
    dies = (DynamoInventory, "restock", restock_write(after=False))  # until a person fixes it
    stuck_at(monkeypatch, return_id, "restock", dies, execution="ex-1")
    for run in (2, 3):
        assert reconciler.return_reconciler.run() == [return_id]
        step("receive", return_id)
        stuck_at(monkeypatch, return_id, "restock", dies, execution=f"ex-{run}")

    assert reconciler.return_reconciler.run() == []  # stuck three times: the person the alarm called
    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_workflow.started == [return_id, return_id]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"]["execution"] for e in history if e["type"] == "return_stuck"] == ["ex-1", "ex-2", "ex-3"]
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    assert refunds(api, order["id"]) == []

    assert api.post(f"/returns/{return_id}/receive", json=RECEIPT).status_code in (200, 202)  # the person resumes it
    for each in AFTER_RECEIPT:
        step(each, return_id)

    finished_once(api, order, return_id, on_hand)


def test_a_plain_return_whose_refund_the_gateway_refused_is_still_left_to_a_person(api, services):
    order, return_id = received(api, payment={"method": "test", "token": "tok_refund_decline"})
    for _ in range(3):
        with pytest.raises(Exception, match="refund"):
            step("refund", return_id)
    step("stuck", return_id, error="RefundNotDone", cause="the gateway refused the refund", execution="ex-1")
    asked = refunds(api, order["id"])
    assert asked and all(status == "failed" for status, _ in asked)
    reconciler = later()

    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.run() == []

    assert reconciler.return_workflow.started == [] and reconciler.return_reconciler.stuck_started == []
    assert refunds(api, order["id"]) == asked  # nothing asked again
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
