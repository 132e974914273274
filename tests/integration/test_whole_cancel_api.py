"""POST /orders/{id}/cancel of a whole order before anything shipped, in-process on moto: each line's
quantity drops to zero (cancelled_quantity grows by it), the totals are priced again (nothing left:
zero), the stock is released and the authorization voided; and the workflow's own cancels alike."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from core.errors import Backordered, PaymentDeclined
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated

_orders = itertools.count(1)
ZERO = {"amount": "0.00", "currency": "USD"}
NOTHING = {"subtotal": ZERO, "discount": ZERO, "shipping": ZERO, "tax": ZERO, "grand_total": ZERO}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/products/CAP", json=product_body("7.77")).status_code == 201
        assert started.put("/products/KITE", json=product_body("30.00", allow_backorder=True)).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 100}).status_code == 200
        assert started.put("/inventory/CAP/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


def placed(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    body = order_body(external_id=f"web-w{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines])
    answer = api.post("/orders", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def workflow():
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def allocated(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    return run_to_allocated(api, placed(api, *lines)["id"])


def cancel(api: InProcessApi, order_id: str, lines: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": "customer asked"}
    if lines is not None:
        body["lines"] = [{"line_id": line_id, "quantity": quantity} for line_id, quantity in lines]
    answer = api.post(f"/orders/{order_id}/cancel", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def reserved(api: InProcessApi, sku: str) -> int:
    return sum(level["reserved"] for level in api.get(f"/inventory/{sku}").json()["locations"])


def units(order: dict[str, Any]) -> list[tuple[int, int]]:
    return [(line["quantity"], line["cancelled_quantity"]) for line in order["lines"]]


def assert_cancelled_whole(api: InProcessApi, before: dict[str, Any], done: dict[str, Any]) -> None:
    """Every line at zero with its units counted cancelled, the totals at zero, and the history
    entry of the cancel keeping the grand total it had."""
    assert done["status"] == "cancelled"
    assert units(done) == [(0, line["quantity"]) for line in before["lines"]]
    for line, was in zip(done["lines"], before["lines"], strict=True):
        assert (line["discount"], line["tax"], line["total"]) == (ZERO, ZERO, ZERO)
        assert (line["sku"], line["unit_price"]) == (was["sku"], was["unit_price"])
    assert done["totals"] == NOTHING
    # Nothing is held for it and nothing of it ships: no allocation, every parcel cancelled.
    assert done["allocations"] == []
    assert all(shipment["status"] == "cancelled" for shipment in done["shipments"])
    history = api.get(f"/orders/{done['id']}/history").json()["items"]
    entry = next(h for h in history if h["type"] == "cancelled")
    assert entry["detail"]["grand_total"] == {"from": before["totals"]["grand_total"], "to": ZERO}
    assert entry["detail"]["lines"] == {line["line_id"]: line["quantity"] for line in before["lines"]}


def test_cancelling_an_allocated_order_takes_every_line_to_zero(api):
    order = allocated(api, ("MUG", 2), ("CAP", 3))

    done = cancel(api, order["id"])

    assert_cancelled_whole(api, order, done)
    assert done["payment"]["status"] == "voided"
    assert (reserved(api, "MUG"), reserved(api, "CAP")) == (0, 0)
    assert api.get(f"/orders/{order['id']}").json()["lines"] == done["lines"]


def test_a_cancelled_orders_parcel_is_no_work_for_its_warehouse(api):
    order = allocated(api, ("MUG", 1))
    (shipment,) = order["shipments"]
    assert shipment["label_url"]
    done = cancel(api, order["id"])

    shown = api.get(f"/orders/{order['id']}").json()
    assert ([s["status"] for s in shown["shipments"]], shown["allocations"]) == (["cancelled"], [])
    # Its carrier booking is cancelled: no label is offered to print and hand over with the parcel.
    assert [s["label_url"] for s in (*shown["shipments"], *done["shipments"])] == [None, None]
    for action in ("ship", "reject"):
        body = {"reason": "no staff"} if action == "reject" else {}
        answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", json=body)
        assert_error(answer, 409, "invalid_transition")
    assert api.get(f"/orders/{order['id']}").json()["version"] == done["version"]


def test_cancelling_every_unit_by_lines_cancels_the_order_the_same_way(api):
    order = allocated(api, ("MUG", 1), ("CAP", 2))

    done = cancel(api, order["id"], [("L1", 1), ("L2", 2)])

    assert_cancelled_whole(api, order, done)
    assert done["payment"]["status"] == "voided"


def test_cancelling_a_pending_order_takes_every_line_to_zero(api):
    order = placed(api, ("MUG", 4))

    assert_cancelled_whole(api, order, cancel(api, order["id"]))


def test_cancelling_a_held_order_takes_every_line_to_zero(api):
    order = allocated(api, ("CAP", 2))
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review"})
    assert held.status_code == 200, held.text

    done = cancel(api, order["id"], [("L1", 2)])

    assert_cancelled_whole(api, order, done)
    assert (done["hold"], done["payment"]["status"]) == (None, "voided")


def test_cancelling_a_backordered_order_takes_every_line_to_zero(api):
    order_id = placed(api, ("KITE", 2))["id"]
    steps = workflow()
    steps.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "backordered", order

    assert_cancelled_whole(api, order, cancel(api, order_id))


def test_the_workflows_out_of_stock_cancel_takes_every_line_to_zero(api):
    order_id = placed(api, ("MUG", 1), ("CAP", 1))["id"]
    workflow().authorize_payment(order_id, attempt=0)
    order = api.get(f"/orders/{order_id}").json()

    workflow().cancel_after_failure(order_id, "OutOfStock", '{"errorMessage": "no stock"}')

    done = api.get(f"/orders/{order_id}").json()
    assert_cancelled_whole(api, order, done)
    assert done["payment"]["status"] == "voided"


def test_a_declined_payment_is_no_cancel_its_lines_stay_as_ordered(api):
    body = order_body(external_id=f"web-w{next(_orders)}", lines=[{"sku": "MUG", "quantity": 2}],
                      payment={"method": "test", "token": "tok_decline"})  # fmt: skip
    order = api.post("/orders", json=body).json()
    with pytest.raises(PaymentDeclined):
        workflow().authorize_payment(order["id"], attempt=0)
    workflow().fail_payment(order["id"], "PaymentDeclined", '{"errorMessage": "declined"}')

    failed = api.get(f"/orders/{order['id']}").json()

    assert failed["status"] == "payment_failed"
    assert (units(failed), failed["totals"]) == ([(2, 0)], order["totals"])


def test_a_void_the_gateway_refused_is_one_refusal_in_the_history_after_the_cancels_clean_up(api):
    """A desk cancels an order whose authorization the gateway will not void (tok_void_decline): the
    cancel answers 200, the payment stays `authorized`, one `payment_void_failed` (refused) calls a
    person. Before: the execution the outbox starts for every cancel written outside the workflow
    (CancelRecorded) asked the gateway the same void again under the same key, which answered the
    same refusal, and wrote a second refusal in the workflow's name (VoidsNotMadeAlarm counted the
    one hold twice); the jeopardy scan's hold expiry did the same."""
    from core.workflow import CANCEL_RECORDED

    body = order_body(external_id=f"web-w{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}],
                      payment={"method": "test", "token": "tok_void_decline"})  # fmt: skip
    order = run_to_allocated(api, api.post("/orders", json=body).json()["id"])
    done = cancel(api, order["id"])

    workflow().cancel_after_failure(order["id"], CANCEL_RECORDED, "a cancel recorded outside the workflow")

    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    refusals = [(h["actor"], h["detail"]["kind"]) for h in history if h["type"] == "payment_void_failed"]
    assert refusals == [("key_admin", "refused")]
    after = api.get(f"/orders/{order['id']}").json()
    assert (done["payment"]["status"], after["payment"]["status"]) == ("authorized", "authorized")
    assert after["payment"]["authorized"] == order["payment"]["authorized"]  # nothing recorded as voided


@pytest.mark.parametrize(
    ("lines", "field"),
    [([("L1", 3)], "lines[0].quantity"), ([("L1", 2), ("L7", 1)], "lines[1].line_id")],
)
def test_a_cancel_naming_more_than_the_order_has_is_422_and_cancels_nothing(api, lines, field):
    order = allocated(api, ("MUG", 2))
    held = reserved(api, "MUG")

    answer = api.post(f"/orders/{order['id']}/cancel", json={
        "reason": "customer asked", "lines": [{"line_id": line_id, "quantity": units} for line_id, units in lines],
    })  # fmt: skip

    refused = assert_error(answer, 422)
    assert [detail["field"] for detail in refused["details"]] == [field]
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], units(after), reserved(api, "MUG")) == ("allocated", [(2, 0)], held)


def test_a_cancel_of_everything_not_shipped_that_a_parcels_ship_overtakes_cancels_the_rest(api, monkeypatch):
    """The customer cancels while the first of two parcels is being shipped, the ship landing just
    after the cancel read the order: the order is partly shipped by the cancel's write. The cancel
    of what is not shipped is what the contract does then, not a 409 the client must repeat."""
    from core.cancellation import Cancellation

    west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
    assert api.put("/locations/wh-west", json=west).status_code in (200, 201)
    assert api.put("/products/HAT", json=product_body("9.00")).status_code in (200, 201)
    assert api.put("/inventory/HAT/wh-west", json={"on_hand": 10}).status_code == 200
    order = allocated(api, ("MUG", 1), ("HAT", 1))
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")
    whole = Cancellation.cancel

    def overtaken(self: Cancellation, order_id: str, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(Cancellation, "cancel", whole)
        shipped = api.post(f"/orders/{order_id}/shipments/{east['id']}/ship", json={})
        assert shipped.status_code == 200, shipped.text
        return whole(self, order_id, *args, **kwargs)

    monkeypatch.setattr(Cancellation, "cancel", overtaken)

    done = cancel(api, order["id"])

    assert done["status"] == "shipped"
    assert {line["sku"]: (line["quantity"], line["cancelled_quantity"], line["shipped_quantity"])
            for line in done["lines"]} == {"MUG": (1, 0, 1), "HAT": (0, 1, 0)}  # fmt: skip
    assert done["payment"]["captured"] == done["totals"]["grand_total"]
    assert reserved(api, "HAT") == 0
