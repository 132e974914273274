"""A received return whose Restock step died before its stock write (the table throttled through
every try), then the shelf counted by a stock take, then the restock finished (the step's Retry, or
the reconciler's returns pass starting the workflow again), through the real step handler,
in-process on moto. The returned units are on the shelf from their receipt: a count recorded since
counted them, so the finish records the restock without adding them again (on_hand as counted, not
the count plus the units); a count recorded before the receipt did not, so the finish adds them."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import TransientError
from functions.adapters.dynamodb import DynamoInventory
from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.return_steps import AFTER_RECEIPT, later, started_again, step
from tests.integration.test_cancel_units_api import allocated, ship, stock
from tests.integration.test_return_stuck_plain_returns import restock_write, stuck_at

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west)
services = return_steps.services  # the API's and the return step's services

RETURNED = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 2, "condition": "resellable"}]}


def counted(api: InProcessApi, on_hand: int) -> None:
    """A stock take of the MUGs on the west warehouse's shelf."""
    answer = api.put("/inventory/MUG/wh-west", json={"on_hand": on_hand})
    assert answer.status_code == 200, answer.text


def received_with_its_restock_dead(api: InProcessApi, monkeypatch: pytest.MonkeyPatch, finish: str) -> tuple[Any, str]:
    """A delivered order of two MUGs, the shelf counted at 3, then both MUGs back at the warehouse
    (their return received), and the return's Restock step dying before its stock write: once (its
    Retry to come) or on every try, the return recorded stuck (the reconciler's pass to come)."""
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    for shipment in order["shipments"]:
        assert api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/deliver", json={}).status_code == 200
    asked = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "too big", "reason_code": "size_or_fit"}]}
    made = api.post(f"/orders/{order['id']}/returns", json=asked)
    assert made.status_code == 201, made.text
    return_id = made.json()["id"]
    counted(api, 3)  # before the parcel arrived: without its units
    assert api.post(f"/returns/{return_id}/receive", json=RETURNED).status_code in (200, 202)
    step("receive", return_id)
    dies = (DynamoInventory, "restock", restock_write(after=False))
    if finish == "the step's retry":
        with monkeypatch.context() as patched:
            patched.setattr(*dies)
            with pytest.raises(TransientError):
                step("restock", return_id)
    else:
        stuck_at(monkeypatch, return_id, "restock", dies)
    assert stock(api, "MUG", "wh-west")[0] == 3  # nothing restocked yet
    return order, return_id


def finished(return_id: str, finish: str) -> None:
    if finish == "the step's retry":
        for name in AFTER_RECEIPT[AFTER_RECEIPT.index("restock") :]:
            step(name, return_id)
    else:
        started_again(later(), return_id)


def restocked_on_the_order(api: InProcessApi, order: dict[str, Any]) -> list[Any]:
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    return [e["detail"]["restocked"] for e in history if e["type"] == "return_received"]


FINISHES = ["the step's retry", "the reconciler's pass"]


@pytest.mark.parametrize("finish", FINISHES)
def test_a_restock_finished_after_a_stock_take_counted_the_returned_units_leaves_on_hand_as_counted(
    api, services, monkeypatch, finish
):
    order, return_id = received_with_its_restock_dead(api, monkeypatch, finish)
    counted(api, 5)  # the 3 and the 2 returned units, on the shelf since their receipt

    finished(return_id, finish)

    assert stock(api, "MUG", "wh-west") == (5, 0, 5)  # not 7: the count had the returned units
    assert api.get(f"/returns/{return_id}").json()["status"] == "refunded"
    assert restocked_on_the_order(api, order) == [[{"line_id": "L1", "quantity": 2}]]  # on hand, by the count
    step("restock", return_id)  # run again: nothing more moves
    assert stock(api, "MUG", "wh-west") == (5, 0, 5)


@pytest.mark.parametrize("finish", FINISHES)
def test_a_restock_finished_after_a_stock_take_recorded_before_the_receipt_adds_the_returned_units(
    api, services, monkeypatch, finish
):
    order, return_id = received_with_its_restock_dead(api, monkeypatch, finish)  # counted at 3 before the receipt

    finished(return_id, finish)

    assert stock(api, "MUG", "wh-west") == (5, 0, 5)
    assert api.get(f"/returns/{return_id}").json()["status"] == "refunded"
    assert restocked_on_the_order(api, order) == [[{"line_id": "L1", "quantity": 2}]]
    step("restock", return_id)
    assert stock(api, "MUG", "wh-west") == (5, 0, 5)
