"""Write routes sent twice at once, or raced by another write on the same order, in-process on moto
(moto serialized, each request atomic as on AWS): one effect, one winner, the contract's answer
for the other, and the invariants kept (captured - refunded, reserved <= on_hand, no unit shipped
or returned twice). The races other modules already run are not repeated here."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, unique
from tests.integration.conftest import at_once
from tests.integration.in_process import (
    Answer,
    InProcessApi,
    in_process_api_with_labels,
    returns_run_inline,
    run_to_allocated,
)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started, returns_run_inline():
        yield started


def an_allocated_order(api: InProcessApi, quantity: int = 1, on_hand: int = 5) -> tuple[dict[str, Any], str, str]:
    """A placed order of one new product, run to `allocated`: the order, its sku and its warehouse."""
    catalog = Catalog(api)
    warehouse = catalog.location()
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, warehouse, on_hand)
    body = order_body((sku, quantity), channel=f"web-{uuid.uuid4().hex[:8]}")
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    return run_to_allocated(api, placed.json()["id"]), sku, warehouse


def shipped(api: InProcessApi, order: dict[str, Any], *, deliver: bool = True) -> dict[str, Any]:
    for shipment in order["shipments"]:
        for action in ("ship", "deliver") if deliver else ("ship",):
            done = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", json={})
            assert done.status_code == 200, done.text
    return api.get(f"/orders/{order['id']}").json()


def stock(api: InProcessApi, sku: str, location_id: str) -> dict[str, Any]:
    return next(loc for loc in api.get(f"/inventory/{sku}").json()["locations"] if loc["location_id"] == location_id)


def history_types(api: InProcessApi, order_id: str) -> Counter[str]:
    return Counter(entry["type"] for entry in api.get(f"/orders/{order_id}/history").json()["items"])


def amount(money: dict[str, str]) -> Decimal:
    return Decimal(money["amount"])


def assert_payment_holds(order: dict[str, Any]) -> None:
    payment = order["payment"]
    assert amount(payment["refunded"]) <= amount(payment["captured"]) <= amount(payment["authorized"]), payment


def statuses(answers: list[Answer]) -> list[int]:
    assert all(answer.status_code < 500 for answer in answers), [a.text for a in answers]
    return sorted(answer.status_code for answer in answers)


def test_two_appeasements_at_once_past_what_was_captured_refund_only_one(api: InProcessApi):
    order = shipped(api, an_allocated_order(api)[0])
    captured = amount(order["payment"]["captured"])
    share = str((captured * Decimal("0.6")).quantize(Decimal("0.01")))
    body = {"amount": {"amount": share, "currency": "USD"}, "reason": "late delivery"}

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/refunds", json=body)] * 2)

    assert statuses(answers) == [201, 422], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 422), 422, "refund_exceeds_captured")
    after = api.get(f"/orders/{order['id']}").json()
    assert after["payment"]["refunded"]["amount"] == share
    assert_payment_holds(after)
    refunds = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert [(r["amount"]["amount"], r["status"]) for r in refunds] == [(share, "succeeded")]


def test_two_returns_of_the_last_unit_at_once_make_one_return(api: InProcessApi):
    order = shipped(api, an_allocated_order(api)[0])
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/returns", json=body)] * 2)

    assert statuses(answers) == [201, 422], [a.text for a in answers]
    returns = api.get(f"/orders/{order['id']}/returns").json()["items"]
    assert [r["id"] for r in returns] == [next(a for a in answers if a.status_code == 201).json()["id"]]
    assert history_types(api, order["id"])["return_requested"] == 1


def test_a_return_received_twice_at_once_restocks_and_refunds_its_unit_once(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    order = shipped(api, order)
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}
    created = api.post(f"/orders/{order['id']}/returns", json=body)
    assert created.status_code == 201, created.text
    before = stock(api, sku, warehouse)["on_hand"]
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    answers = at_once(*[lambda: api.post(f"/returns/{created.json()['id']}/receive", json=receipt)] * 2)

    assert set(statuses(answers)) <= {200, 202, 409}, [a.text for a in answers]
    assert stock(api, sku, warehouse)["on_hand"] == before + 1
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["lines"][0]["returned_quantity"]) == ("returned", 1)
    refunds = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert [r["status"] for r in refunds] == ["succeeded"]
    assert after["payment"]["refunded"] == refunds[0]["amount"]
    assert_payment_holds(after)
    assert history_types(api, order["id"])["return_received"] == 1


def test_a_hold_and_a_ship_at_once_either_hold_the_order_unshipped_or_ship_it_unheld(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    shipment = order["shipments"][0]["id"]

    hold, ship = at_once(
        lambda: api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review"}),
        lambda: api.post(f"/orders/{order['id']}/shipments/{shipment}/ship", json={}),
    )

    assert statuses([hold, ship]) == [200, 409], (hold.text, ship.text)
    after = api.get(f"/orders/{order['id']}").json()
    assert_payment_holds(after)
    level = stock(api, sku, warehouse)
    if hold.status_code == 200:
        assert (after["status"], after["shipments"][0]["status"]) == ("on_hold", "pending")
        assert amount(after["payment"]["captured"]) == 0
        assert (level["on_hand"], level["reserved"]) == (5, 1)
    else:
        assert (after["status"], after["hold"], after["shipments"][0]["status"]) == ("shipped", None, "shipped")
        assert after["payment"]["captured"] == after["totals"]["grand_total"]
        assert (level["on_hand"], level["reserved"]) == (4, 0)


def test_two_holds_at_once_without_a_key_hold_the_order_once(api: InProcessApi):
    order = an_allocated_order(api)[0]

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review"})] * 2)

    assert statuses(answers) == [200, 409], [a.text for a in answers]
    assert api.get(f"/orders/{order['id']}").json()["status"] == "on_hold"
    assert history_types(api, order["id"])["on_hold"] == 1


def test_an_edit_and_a_cancel_at_once_leave_one_of_them_and_nothing_held_for_a_cancelled_order(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api, quantity=1)
    edit = {"lines": [{"sku": sku, "quantity": 2}]}

    patched, cancelled = at_once(
        lambda: api.request("PATCH", f"/orders/{order['id']}", json=edit, headers={"If-Match": str(order["version"])}),
        lambda: api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer_request"}),
    )

    assert cancelled.status_code == 200, cancelled.text
    assert patched.status_code in (200, 409), patched.text
    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "cancelled"
    assert after["payment"]["status"] == "voided"
    assert amount(after["payment"]["captured"]) == 0
    assert stock(api, sku, warehouse)["reserved"] == 0


def test_an_edit_up_and_a_ship_at_once_either_ship_the_order_as_it_was_or_edit_it_unshipped(api: InProcessApi):
    # API.md: an edit answers 200 until the first shipment ships, then 409; an edit that grows the
    # total is authorized again first. Whichever lands first, the other is refused, the stock and
    # the payment are the winner's, and no authorization is left holding on the card beside the
    # order's own (the edit's, if the ship won after the gateway made it, is voided).
    from plugins import test_payments

    order, sku, warehouse = an_allocated_order(api, quantity=1)
    shipment = order["shipments"][0]["id"]
    edit = {"lines": [{"sku": sku, "quantity": 2}]}

    patched, ship = at_once(
        lambda: api.request("PATCH", f"/orders/{order['id']}", json=edit, headers={"If-Match": str(order["version"])}),
        lambda: api.post(f"/orders/{order['id']}/shipments/{shipment}/ship", json={}),
    )

    assert statuses([patched, ship]) == [200, 409], (patched.text, ship.text)
    after = api.get(f"/orders/{order['id']}").json()
    assert_payment_holds(after)
    level = stock(api, sku, warehouse)
    if patched.status_code == 200:
        assert (after["status"], after["shipments"], after["lines"][0]["quantity"]) == ("authorized", [], 2)
        assert after["payment"]["authorized"] == after["totals"]["grand_total"]
        assert amount(after["payment"]["captured"]) == 0
        assert (level["on_hand"], level["reserved"]) == (5, 1)  # its unit, kept for its workflow
    else:
        assert (after["status"], after["lines"][0]["quantity"]) == ("shipped", 1)
        assert after["payment"]["captured"] == after["totals"]["grand_total"] == order["totals"]["grand_total"]
        assert (level["on_hand"], level["reserved"]) == (4, 0)
        assert history_types(api, order["id"])["edited"] == 0
    held = [reference for key, reference in test_payments._authorized.items()
            if key.startswith(f"{order['id']}:") and not test_payments._held[reference].voided]  # fmt: skip
    assert held == [after["payment"]["authorization"]]


def test_two_deliveries_of_one_parcel_at_once_deliver_it_once(api: InProcessApi):
    order = shipped(api, an_allocated_order(api)[0], deliver=False)
    shipment = order["shipments"][0]["id"]

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/shipments/{shipment}/deliver", json={})] * 2)

    assert statuses(answers) == [200, 200], [a.text for a in answers]
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["shipments"][0]["status"]) == ("delivered", "delivered")
    assert history_types(api, order["id"])["shipment_delivered"] == 1


def test_a_stock_take_and_an_order_at_once_never_reserve_more_than_on_hand(api: InProcessApi):
    catalog = Catalog(api)
    warehouse = catalog.location()
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, warehouse, 2)
    placed = api.post("/orders", json=order_body((sku, 2), channel=f"web-{uuid.uuid4().hex[:8]}"))
    assert placed.status_code == 201, placed.text
    from core.errors import OutOfStock, TransientError
    from functions.bootstrap import Config, bootstrap

    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(placed.json()["id"], attempt=0)
    outcome: list[Any] = []

    def reserve() -> Answer:
        # The step as the state machine runs it: a TransientError (the count moved the stock under
        # its write) is retried (ReserveStock's Retry on States.ALL).
        for _ in range(6):
            try:
                outcome[:] = [steps.reserve_stock(placed.json()["id"])]
                break
            except TransientError:
                continue
            except Exception as error:
                outcome[:] = [error]
                break
        return Answer(200, {}, b"{}")

    counted, _ = at_once(lambda: api.put(f"/inventory/{sku}/{warehouse}", json={"on_hand": 1}), reserve)

    level = stock(api, sku, warehouse)
    assert 0 <= level["reserved"] <= level["on_hand"], level
    if counted.status_code == 200:  # the count came first: the step raises OutOfStock for the workflow
        assert len(outcome) == 1 and isinstance(outcome[0], OutOfStock), outcome
        assert (level["on_hand"], level["reserved"]) == (1, 0)
    else:  # the reservation came first: units an order not yet allocated holds are not counted away
        assert_error(counted, 409, "insufficient_stock", "on_hand")
        assert outcome == [None] and (level["on_hand"], level["reserved"]) == (2, 2), (outcome, level)


def test_two_collects_of_a_ready_pickup_at_once_capture_its_share_and_take_its_unit_once(api: InProcessApi):
    catalog = Catalog(api)
    store = catalog.location(name="Store", type="store", ships=False, pickup=True)
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, store, 5)
    body = order_body(
        (sku, 1), channel=f"web-{uuid.uuid4().hex[:8]}", fulfillment={"type": "pickup", "location_id": store}
    )
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    parcel = f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}"

    readied = at_once(*[lambda: api.post(f"{parcel}/ready", json={})] * 2)
    collected = at_once(*[lambda: api.post(f"{parcel}/deliver", json={})] * 2)

    assert statuses(readied) == statuses(collected) == [200, 200], [a.text for a in readied + collected]
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["payment"]["captured"]) == ("delivered", after["totals"]["grand_total"])
    assert_payment_holds(after)
    assert (stock(api, sku, store)["on_hand"], stock(api, sku, store)["reserved"]) == (4, 0)
    added = history_types(api, order["id"])
    assert (added["shipment_ready_for_pickup"], added["shipment_delivered"]) == (1, 1)


def test_two_rejects_of_an_allocated_orders_parcel_at_once_release_its_units_once(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    parcel = f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}"

    answers = at_once(*[lambda: api.post(f"{parcel}/reject", json={"reason": "damaged stock"})] * 2)

    assert statuses(answers) == [200, 200], [a.text for a in answers]
    assert (stock(api, sku, warehouse)["on_hand"], stock(api, sku, warehouse)["reserved"]) == (5, 0)
    assert history_types(api, order["id"])["shipment_rejected"] == 1


def test_two_releases_at_once_without_a_key_release_the_order_once(api: InProcessApi):
    order = an_allocated_order(api)[0]
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "other"})
    assert held.status_code == 200, held.text

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/release", json={})] * 2)

    assert statuses(answers) == [200, 409], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 409), 409, "invalid_transition")
    assert api.get(f"/orders/{order['id']}").json()["status"] == "allocated"
    assert history_types(api, order["id"])["released"] == 1


def test_two_approvals_of_a_requested_return_at_once_authorize_it_once(api: InProcessApi):
    from tests.integration.test_payment_plugin_failures_api import registered
    from tests.integration.test_return_approvals_api import NeedsApproval

    order = shipped(api, an_allocated_order(api)[0])
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}
    with registered(NeedsApproval()):
        made = api.post(f"/orders/{order['id']}/returns", json=body)
        assert made.status_code == 201 and made.json()["status"] == "requested", made.text

        answers = at_once(*[lambda: api.post(f"/returns/{made.json()['id']}/approve", json={})] * 2)

    assert statuses(answers) == [200, 409], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 409), 409, "invalid_transition")
    assert api.get(f"/returns/{made.json()['id']}").json()["status"] == "authorized"
    assert history_types(api, order["id"])["return_authorized"] == 1


def test_one_order_sent_twice_at_once_under_its_external_id_is_placed_once(api: InProcessApi):
    catalog = Catalog(api)
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, catalog.location(), 5)
    body = order_body((sku, 1), channel=f"web-{uuid.uuid4().hex[:8]}")

    answers = at_once(*[lambda: api.post("/orders", json=body)] * 2)

    assert statuses(answers) == [201, 409], [a.text for a in answers]
    placed = next(a for a in answers if a.status_code == 201).json()
    assert_error(next(a for a in answers if a.status_code == 409), 409, "duplicate_order")
    assert [o["id"] for o in api.orders_of(body["customer"]["id"])] == [placed["id"]]


def test_one_product_put_twice_at_once_is_created_once_and_replaced_once(api: InProcessApi):
    sku = f"SKU-{uuid.uuid4().hex[:8].upper()}"
    body = {"name": "Mug", "price": {"amount": "4.00", "currency": "USD"}}

    answers = at_once(*[lambda: api.put(f"/products/{sku}", json=body)] * 2)

    assert statuses(answers) == [200, 201], [a.text for a in answers]
    assert api.get(f"/products/{sku}").json()["price"] == body["price"]


def test_one_order_sent_twice_at_once_under_its_idempotency_key_is_placed_once(api: InProcessApi):
    catalog = Catalog(api)
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, catalog.location(), 5)
    body = order_body((sku, 1), channel=f"web-{uuid.uuid4().hex[:8]}")
    del body["external_id"]  # the key alone makes the retry the same request
    headers = {"Idempotency-Key": unique("checkout")}

    answers = at_once(*[lambda: api.post("/orders", json=body, headers=headers)] * 2)

    # The twin either waited for the first answer or was told the first is still running (409).
    assert statuses(answers) in ([201, 201], [201, 409]), [a.text for a in answers]
    placed = [a.json()["id"] for a in answers if a.status_code == 201]
    assert len(set(placed)) == 1
    if 409 in statuses(answers):
        assert_error(next(a for a in answers if a.status_code == 409), 409, "request_in_progress")
    assert [o["id"] for o in api.orders_of(body["customer"]["id"])] == placed[:1]


def test_two_edits_at_once_under_one_version_apply_one_and_refuse_the_other_as_stale(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    version = str(order["version"])

    answers = at_once(
        *[
            lambda quantity=quantity: api.request(
                "PATCH", f"/orders/{order['id']}", json={"lines": [{"sku": sku, "quantity": quantity}]},
                headers={"If-Match": version},
            )
            for quantity in (2, 3)
        ]
    )  # fmt: skip

    assert statuses(answers) == [200, 409], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 409), 409, "version_conflict", "If-Match")
    won = next(a for a in answers if a.status_code == 200).json()
    after = api.get(f"/orders/{order['id']}").json()
    assert after["lines"][0]["quantity"] == won["lines"][0]["quantity"]
    assert after["payment"]["authorized"] == after["totals"]["grand_total"]
    assert history_types(api, order["id"])["edited"] == 1
    level = stock(api, sku, warehouse)
    assert 0 <= level["reserved"] <= level["on_hand"], level


def test_a_reject_and_a_ship_of_one_parcel_at_once_either_ship_it_or_give_its_units_back(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    parcel = f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}"

    rejected, ship = at_once(
        lambda: api.post(f"{parcel}/reject", json={"reason": "damaged stock"}),
        lambda: api.post(f"{parcel}/ship", json={}),
    )

    assert statuses([rejected, ship]) == [200, 409], (rejected.text, ship.text)
    assert_error(next(a for a in (rejected, ship) if a.status_code == 409), 409, "invalid_transition")
    after = api.get(f"/orders/{order['id']}").json()
    assert_payment_holds(after)
    level = stock(api, sku, warehouse)
    if ship.status_code == 200:
        assert after["status"] == "shipped" and after["payment"]["captured"] == after["totals"]["grand_total"]
        assert (level["on_hand"], level["reserved"]) == (4, 0)
    else:  # sent back to be sourced: nothing captured, nothing left stock
        assert (after["status"], after["shipments"]) == ("authorized", [])
        assert amount(after["payment"]["captured"]) == 0
        assert (level["on_hand"], level["reserved"]) == (5, 0)


def test_a_short_stock_take_and_a_ship_of_the_parcel_it_counts_at_once_never_take_stock_below_zero(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api, quantity=2, on_hand=2)
    parcel = f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}"

    counted, ship = at_once(
        lambda: api.put(f"/inventory/{sku}/{warehouse}", json={"on_hand": 1}),
        lambda: api.post(f"{parcel}/ship", json={}),
    )

    assert counted.status_code == 200, counted.text
    after = api.get(f"/orders/{order['id']}").json()
    assert_payment_holds(after)
    level = stock(api, sku, warehouse)
    # The count is what is on the shelf when it lands: 1, whichever came first.
    assert (level["on_hand"], level["reserved"]) == (1, 0), level
    if ship.status_code == 200:  # shipped first; the count came after the two units left
        assert after["status"] == "shipped" and after["payment"]["captured"] == after["totals"]["grand_total"]
    else:  # counted first: the parcel it cannot fill is withdrawn and the order sent back to be sourced
        assert_error(ship, 409, "invalid_transition")
        assert (after["status"], after["shipments"], amount(after["payment"]["captured"])) == ("authorized", [], 0)


def test_a_hold_and_a_cancel_at_once_leave_the_order_cancelled_with_nothing_held(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)

    held, cancelled = at_once(
        lambda: api.post(f"/orders/{order['id']}/hold", json={"reason": "customer_request"}),
        lambda: api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer_request"}),
    )

    # A held order may still be cancelled; a cancelled one is not held (409).
    assert cancelled.status_code == 200, cancelled.text
    assert held.status_code in (200, 409), held.text
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["payment"]["status"], after["hold"]) == ("cancelled", "voided", None)
    assert (stock(api, sku, warehouse)["on_hand"], stock(api, sku, warehouse)["reserved"]) == (5, 0)


def test_two_cancels_of_every_unit_at_once_cancel_them_once_and_the_other_is_409(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api, quantity=2)
    body = {"reason": "changed my mind", "lines": [{"line_id": "L1", "quantity": 2}]}

    answers = at_once(*[lambda: api.post(f"/orders/{order['id']}/cancel", json=body)] * 2)

    assert statuses(answers) == [200, 409], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 409), 409, "invalid_transition")
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["payment"]["status"]) == ("cancelled", "voided")
    assert (after["lines"][0]["quantity"], after["lines"][0]["cancelled_quantity"]) == (0, 2)
    assert (stock(api, sku, warehouse)["on_hand"], stock(api, sku, warehouse)["reserved"]) == (5, 0)


def test_a_release_and_a_cancel_of_a_held_order_at_once_leave_it_cancelled_and_unheld(api: InProcessApi):
    order, sku, warehouse = an_allocated_order(api)
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "other"})
    assert held.status_code == 200, held.text

    released, cancelled = at_once(
        lambda: api.post(f"/orders/{order['id']}/release", json={}),
        lambda: api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer_request"}),
    )

    assert cancelled.status_code == 200, cancelled.text
    if released.status_code != 200:  # the cancel came first: a cancelled order is not on hold
        assert_error(released, 409, "invalid_transition")
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["hold"], after["payment"]["status"]) == ("cancelled", None, "voided")
    assert (stock(api, sku, warehouse)["on_hand"], stock(api, sku, warehouse)["reserved"]) == (5, 0)
