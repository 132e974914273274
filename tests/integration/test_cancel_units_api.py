"""POST /orders/{id}/cancel with lines and on a partly shipped order, in-process on moto: the order,
its stock in DynamoDB and its payment; and the DynamoDB adapter's reservation shrink."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.money import Money
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error, unsigned
from tests.integration.conftest import dying_at_the_ship_write
from tests.integration.in_process import InProcessApi, in_process_api_with_labels

_orders = itertools.count(1)


def stock_two_parcels(api: InProcessApi) -> None:
    """MUG (12.50) only at wh-west, CAP (7.77) only at wh-east: an order of both ships in two parcels."""
    for sku, price in (("MUG", "12.50"), ("CAP", "7.77")):
        assert api.put(f"/products/{sku}", json=product_body(price)).status_code == 201
    west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
    assert api.put("/locations/wh-east", json=location_body()).status_code == 201
    assert api.put("/locations/wh-west", json=west).status_code == 201
    assert api.put("/inventory/MUG/wh-west", json={"on_hand": 100}).status_code == 200
    assert api.put("/inventory/CAP/wh-east", json={"on_hand": 100}).status_code == 200


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        stock_two_parcels(started)
        # A store that offers pickup only: ship orders never source from it.
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        assert started.put("/inventory/MUG/store-sf", json={"on_hand": 10}).status_code == 200
        yield started


def authorized(api: InProcessApi, *lines: tuple[str, int], **overrides: Any) -> tuple[str, Any]:
    """Placed over HTTP and authorized by the workflow's own step: (its id, the workflow)."""
    from functions.bootstrap import Config, bootstrap

    body = order_body(
        external_id=f"web-c{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines], **overrides
    )
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    workflow = bootstrap(Config.from_env()).workflow
    order_id = placed.json()["id"]
    workflow.authorize_payment(order_id, attempt=0)
    return order_id, workflow


def allocated(api: InProcessApi, *lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    """Placed over HTTP and taken to `allocated` by the workflow's own steps."""
    order_id, workflow = authorized(api, *lines, **overrides)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def ship(api: InProcessApi, order: dict[str, Any], location_id: str) -> dict[str, Any]:
    shipment = next(s for s in order["shipments"] if s["location_id"] == location_id)
    answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
    assert answer.status_code == 200, answer.text
    return answer.json()


def stock(api: InProcessApi, sku: str, location_id: str) -> tuple[int, int, int]:
    level = next(loc for loc in api.get(f"/inventory/{sku}").json()["locations"] if loc["location_id"] == location_id)
    return level["on_hand"], level["reserved"], level["available"]


def cancel(api: InProcessApi, order_id: str, lines: list[tuple[str, int]] | None = None, **kwargs: Any):
    body: dict[str, Any] = {"reason": "customer asked"}
    if lines is not None:
        body["lines"] = [{"line_id": line_id, "quantity": quantity} for line_id, quantity in lines]
    return api.post(f"/orders/{order_id}/cancel", json=body, **kwargs)


def money(value: dict[str, str]) -> str:
    return value["amount"]


def test_a_line_cancel_shrinks_the_order_and_its_reservation(api):
    order = allocated(api, ("MUG", 4), ("CAP", 1))
    before = stock(api, "MUG", "wh-west")

    answer = cancel(api, order["id"], [("L1", 3)])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    mug = done["lines"][0]
    assert (mug["quantity"], mug["cancelled_quantity"], mug["shipped_quantity"]) == (1, 3, 0)
    assert money(mug["total"]) < money(order["lines"][0]["total"])
    west = next(s for s in done["shipments"] if s["location_id"] == "wh-west")
    assert west["lines"] == [{"line_id": "L1", "quantity": 1}]
    assert stock(api, "MUG", "wh-west") == (before[0], before[1] - 3, before[2] + 3)
    # Four writes: the cancel, the new label of the parcel it shrank (the old one showed 4 mugs),
    # the old label's booking cancelled with the carrier, and the release the cancel recorded as
    # owed (Order.stock_owed), done.
    assert done["status"] == "allocated" and done["version"] == order["version"] + 4
    assert [entry["type"] for entry in api.get(f"/orders/{order['id']}/history").json()["items"][-3:]] == [
        "units_cancelled", "shipment_relabelled", "carrier_booking_cancelled",
    ]  # fmt: skip


def test_a_line_cancel_before_the_order_is_sourced_is_200_and_only_what_is_left_is_authorized_and_reserved(api):
    # API.md: a cancel with `lines` cancels those quantities; on a pending order it answered 409.
    from functions.bootstrap import Config, bootstrap

    body = order_body(external_id=f"web-c{next(_orders)}", lines=[{"sku": "MUG", "quantity": 2}])
    placed = api.post("/orders", json=body).json()
    before = stock(api, "MUG", "wh-west")

    answer = cancel(api, placed["id"], [("L1", 1)])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["status"], done["lines"][0]["quantity"], done["lines"][0]["cancelled_quantity"]) == ("pending", 1, 1)
    assert money(done["totals"]["grand_total"]) < money(placed["totals"]["grand_total"])
    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(placed["id"], attempt=0)
    workflow.reserve_stock(placed["id"])
    workflow.create_shipments(placed["id"])
    sourced = api.get(f"/orders/{placed['id']}").json()
    assert (sourced["status"], sourced["payment"]["authorized"]) == ("allocated", done["totals"]["grand_total"])
    assert stock(api, "MUG", "wh-west") == (before[0], before[1] + 1, before[2] - 1)


def test_a_pickup_ready_at_its_store_loses_units_over_http(api):
    # Waiting ready_for_pickup is not shipped: its units are cancelled (it was 409 "have shipped").
    order = allocated(api, ("MUG", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
    (shipment,) = order["shipments"]
    ready = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ready")
    assert ready.status_code == 200, ready.text
    before = stock(api, "MUG", "store-sf")

    answer = cancel(api, order["id"], [("L1", 1)])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    (waiting,) = done["shipments"]
    assert (waiting["status"], waiting["lines"]) == ("ready_for_pickup", [{"line_id": "L1", "quantity": 2}])
    assert (done["status"], done["lines"][0]["quantity"], done["lines"][0]["cancelled_quantity"]) == ("allocated", 2, 1)
    assert stock(api, "MUG", "store-sf") == (before[0], before[1] - 1, before[2] + 1)
    assert money(done["payment"]["captured"]) == "0.00"
    assert done["payment"]["authorized"] == order["payment"]["authorized"]


def test_cancelling_the_rest_of_a_split_order_over_http(api):
    order = allocated(api, ("MUG", 1), ("CAP", 2))
    ship(api, order, "wh-west")
    cap_before = stock(api, "CAP", "wh-east")

    done = cancel(api, order["id"]).json()

    assert done["status"] == "shipped"
    assert [(line["quantity"], line["cancelled_quantity"]) for line in done["lines"]] == [(1, 0), (0, 2)]
    assert stock(api, "CAP", "wh-east") == (cap_before[0], cap_before[1] - 2, cap_before[2] + 2)
    payment = done["payment"]
    assert money(payment["captured"]) == money(done["totals"]["grand_total"])
    assert payment["refunded"]["amount"] == "0.00"
    history = [h["type"] for h in api.get(f"/orders/{order['id']}/history").json()["items"]]
    assert "units_cancelled" in history and history[-1] == "payment_voided"


def test_a_cancel_of_the_rest_after_everything_captured_went_back_shows_the_payment_refunded(api):
    # The first parcel (it carries the shipping) is captured, then all of it given back as an
    # appeasement while the second still waits; cancelling the second leaves the total at what
    # was captured, and every cent of it refunded: the payment is `refunded`, not "partially".
    order = allocated(api, ("MUG", 1), ("CAP", 1))
    shipped = ship(api, order, order["shipments"][0]["location_id"])
    captured = shipped["payment"]["captured"]
    appeased = api.post(f"/orders/{order['id']}/refunds", json={"amount": captured, "reason": "late"})
    assert appeased.status_code == 201 and appeased.json()["status"] == "succeeded", appeased.text

    done = cancel(api, order["id"]).json()

    assert done["status"] == "shipped"
    payment = done["payment"]
    assert money(payment["captured"]) == money(payment["refunded"]) == money(done["totals"]["grand_total"])
    assert payment["status"] == "refunded"
    assert api.get(f"/orders/{order['id']}").json()["payment"]["status"] == "refunded"


def test_shipped_units_are_409_bad_lines_422_and_a_key_replays_the_cancel(api):
    order = allocated(api, ("MUG", 2), ("CAP", 2))
    ship(api, order, "wh-west")

    assert_error(cancel(api, order["id"], [("L1", 1)]), 409, "invalid_transition")
    assert_error(cancel(api, order["id"], [("L7", 1)]), 422)
    assert_error(cancel(api, order["id"], [("L2", 1), ("L2", 1)]), 422)
    # Each refusal names the entry at fault, as the contract's error shape does.
    for lines, field in (
        ([("L2", 1), ("L7", 1)], "lines[1].line_id"),
        ([("L2", 3)], "lines[0].quantity"),
        ([("L2", 1), ("L2", 1)], "lines[1].line_id"),
    ):
        refused = assert_error(cancel(api, order["id"], lines), 422)
        assert [detail["field"] for detail in refused["details"]] == [field], lines
    assert_error(cancel(api, order["id"], [("L2", 0)]), 422)
    key = {"Idempotency-Key": f"cancel-{order['id']}"}
    first = cancel(api, order["id"], [("L2", 1)], headers=key)
    again = cancel(api, order["id"], [("L2", 1)], headers=key)
    assert first.status_code == again.status_code == 200
    # The replay is the same order; its label links are signed afresh at each answer.
    assert unsigned(again.json()) == unsigned(first.json())
    assert api.get(f"/orders/{order['id']}").json()["lines"][1]["quantity"] == 1


def test_lines_null_is_422_and_cancels_nothing_where_lines_left_out_cancels_the_order(api):
    order = allocated(api, ("MUG", 2), ("CAP", 1))

    refused = assert_error(api.post(f"/orders/{order['id']}/cancel", json={"reason": "x", "lines": None}), 422)

    assert [detail["field"] for detail in refused["details"]] == ["lines"]
    kept = api.get(f"/orders/{order['id']}").json()
    assert (kept["status"], kept["version"]) == ("allocated", order["version"])
    assert cancel(api, order["id"]).json()["status"] == "cancelled"


def test_the_dynamodb_adapter_shrinks_a_reservation_once(api):
    from functions.bootstrap import Config, bootstrap

    inventory = bootstrap(Config.from_env()).inventory_repository
    inventory.set_on_hand("CAP", "wh-south", 10, reason="count")
    inventory.reserve("CAP", "wh-south", "ord_x#L1", 5)

    inventory.shrink("CAP", "wh-south", "ord_x#L1", held=5, keep=2)
    inventory.shrink("CAP", "wh-south", "ord_x#L1", held=5, keep=1)  # not 5 any more: no change

    assert inventory.reservations({("CAP", "wh-south"): ["ord_x#L1"]}) == {("CAP", "wh-south", "ord_x#L1"): 2}
    (level,) = inventory.levels({"CAP"}, ["wh-south"])["CAP"]
    assert (level.on_hand, level.reserved, level.available) == (10, 2, 8)
    with pytest.raises(ValueError):
        inventory.shrink("CAP", "wh-south", "ord_x#L1", held=2, keep=2)


def test_an_address_change_after_a_line_was_cancelled_whole_is_200_and_keeps_the_cancelled_line(api):
    order = allocated(api, ("MUG", 1), ("CAP", 2))
    cancelled = cancel(api, order["id"], [("L2", 2)]).json()
    assert cancelled["status"] == "allocated"

    edited = api.request(
        "PATCH", f"/orders/{order['id']}", json={"shipping_method": "express"},
        headers={"If-Match": str(cancelled["version"])},
    )  # fmt: skip

    assert edited.status_code == 200, edited.text
    mug, cap = edited.json()["lines"]
    assert (mug["line_id"], mug["quantity"]) == ("L1", 1)
    assert (cap["line_id"], cap["quantity"], cap["cancelled_quantity"]) == ("L2", 0, 2)
    assert edited.json()["status"] == "authorized"


def test_a_ship_that_died_after_the_gateway_captured_is_refunded_by_the_cancel_over_http(api, monkeypatch):
    # The ship's process ends after the gateway captured and before the order recorded it (a Lambda
    # timeout): the capture request it wrote first keeps that capture on the order for the cancel.
    from functions.adapters.dynamodb import DynamoOrders

    order = allocated(api, ("MUG", 2))
    monkeypatch.setattr(DynamoOrders, "update", dying_at_the_ship_write(TimeoutError("Task timed out")))
    (shipment,) = order["shipments"]
    died = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
    monkeypatch.undo()
    assert died.status_code == 500
    assert api.get(f"/orders/{order['id']}").json()["shipments"][0]["status"] == "pending"

    answer = cancel(api, order["id"])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["status"], done["payment"]["status"], done["payment"]["captured"]["amount"]) == (
        "cancelled", "voided", "0.00",
    )  # fmt: skip
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [h["type"] for h in history][-5:] == [
        "allocated", "cancelled", "payment_capture_reversed", "payment_voided", "carrier_booking_cancelled",
    ]  # fmt: skip
    reversed_ = history[-3]["detail"]
    assert reversed_["shipment_id"] == shipment["id"] and reversed_["amount"] == order["totals"]["grand_total"]
    assert reversed_["capture_reference"] and reversed_["refund_reference"]


def test_a_settlement_capture_whose_cancel_died_is_recorded_by_the_cancel_repeated_over_http(api, monkeypatch):
    # The parcel that does not carry the shipping ships first; cancelling the other leaves a total
    # (its share and the shipping) above what was captured, so the cancel captures the rest. Its
    # process ends after the gateway captured and before the order recorded it: the request it
    # wrote first keeps that capture on the order, and the repeated cancel records it.
    from functions.adapters.dynamodb import DynamoOrders
    from functions.bootstrap import Config, bootstrap

    order = allocated(api, ("MUG", 1), ("CAP", 2))
    ship(api, order, order["shipments"][1]["location_id"])
    real = DynamoOrders.update

    def dies_recording_the_settlement(self, new, expected, entries, **conditions):
        if entries and entries[0].type == "payment_captured":
            raise TimeoutError("Task timed out")
        real(self, new, expected, entries, **conditions)

    monkeypatch.setattr(DynamoOrders, "update", dies_recording_the_settlement)
    died = cancel(api, order["id"])
    monkeypatch.undo()
    assert died.status_code == 500
    shown = api.get(f"/orders/{order['id']}").json()
    assert shown["status"] == "shipped" and "captures_requested" not in shown
    due = Decimal(money(shown["totals"]["grand_total"])) - Decimal(money(shown["payment"]["captured"]))
    assert due > 0
    stored = bootstrap(Config.from_env()).order_repository.get(order["id"], consistent=True)
    assert [(r.shipment_id, r.amount.amount) for r in stored.captures_requested] == [(None, due)]

    answer = cancel(api, order["id"])

    assert answer.status_code == 200, answer.text
    payment = answer.json()["payment"]
    assert (payment["status"], money(payment["captured"]), money(payment["authorized"])) == (
        "captured", money(shown["totals"]["grand_total"]), money(shown["totals"]["grand_total"]),
    )  # fmt: skip
    history = [h["type"] for h in api.get(f"/orders/{order['id']}/history").json()["items"]]
    assert history[-2:] == ["payment_captured", "payment_voided"] and history.count("payment_captured") == 1


def test_an_authorization_whose_edit_died_is_voided_by_the_cancel_over_http(api, monkeypatch):
    # The PATCH's process ends after the gateway authorized the grown total and before the order
    # recorded it (a Lambda timeout): the request it wrote first keeps that authorization (a hold on
    # the customer's card) on the order, and the cancel voids it with the order's own.
    from functions.adapters.dynamodb import DynamoOrders
    from functions.bootstrap import Config, bootstrap

    order = allocated(api, ("MUG", 1))
    real = DynamoOrders.update

    def dies_recording_the_edit(self, new, expected, entries, **conditions):
        if entries and entries[0].type == "edited":
            raise TimeoutError("Task timed out")
        real(self, new, expected, entries, **conditions)

    monkeypatch.setattr(DynamoOrders, "update", dies_recording_the_edit)
    died = api.request(
        "PATCH", f"/orders/{order['id']}", json={"lines": [{"sku": "MUG", "quantity": 3}]},
        headers={"If-Match": str(order["version"])},
    )  # fmt: skip
    monkeypatch.undo()
    assert died.status_code == 500
    shown = api.get(f"/orders/{order['id']}").json()
    assert shown["payment"] == order["payment"] and shown["lines"] == order["lines"]
    stored = bootstrap(Config.from_env()).order_repository.get(order["id"], consistent=True).stored_json()

    answer = cancel(api, order["id"])

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "voided")
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [h["type"] for h in history][-4:] == [
        "cancelled", "payment_voided", "payment_voided", "carrier_booking_cancelled",
    ]  # fmt: skip
    edits, own = history[-3]["detail"], history[-2]["detail"]
    assert edits["reason"] == "asked for by an edit that did not record it"
    assert edits["authorization"] != own["authorization"] and edits["reference"] and own["reference"]
    assert json.loads(stored)["authorization_requested"]["edit_of"] == order["version"]  # stored, never shown


def test_an_authorization_whose_step_died_before_recording_it_is_voided_by_the_cancel_over_http(api, monkeypatch):
    # The AuthorizePayment Lambda ends after the gateway approved and before the order recorded it
    # (a timeout): nothing on the order says an attempt was made. The cancel asks the payment plugin
    # what it authorized under the order's key and voids it.
    from core import payment_keys
    from core.errors import OrderClosed
    from functions.adapters.dynamodb import DynamoOrders
    from functions.workflow.authorize_payment import lambda_handler
    from tests.integration.test_handlers import Context

    placed = api.post(
        "/orders", json=order_body(external_id=f"web-c{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}])
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    real = DynamoOrders.update

    def dies_recording_the_authorization(self, new, expected, entries, **conditions):
        if entries and entries[0].type == "payment_authorized":
            raise TimeoutError("Task timed out")
        real(self, new, expected, entries, **conditions)

    monkeypatch.setattr(DynamoOrders, "update", dies_recording_the_authorization)
    with pytest.raises(TimeoutError):
        lambda_handler({"order_id": order_id, "attempt": 0}, Context())
    monkeypatch.undo()
    assert [h["type"] for h in api.get(f"/orders/{order_id}/history").json()["items"]] == ["created"]

    answer = cancel(api, order_id)

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "pending")
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [h["type"] for h in history] == ["created", "cancelled", "payment_voided"]
    voided = history[-1]["detail"]
    assert voided["authorization_key"] == payment_keys.authorize(order_id, 1)
    assert voided["authorization"].startswith("auth_") and voided["reference"].startswith("void_")
    # Its retry, which finds the order cancelled, and a cancel repeated change nothing more.
    with pytest.raises(OrderClosed):
        lambda_handler({"order_id": order_id, "attempt": 1}, Context())
    assert cancel(api, order_id).status_code == 200
    assert api.get(f"/orders/{order_id}/history").json()["items"] == history


def test_a_cancel_of_units_after_the_orders_promotion_ended_keeps_its_discount(api, tmp_path, monkeypatch):
    """The operator takes WELCOME10 out of the promotions file: the order placed with it (stored in
    DynamoDB with what the code granted) still cancels units at its terms; a new order is refused."""
    order = allocated(api, ("MUG", 4), promo_codes=["WELCOME10"])
    assert order["lines"][0]["discount"]["amount"] == "5.00"
    ended = tmp_path / "promotions.json"
    ended.write_text(json.dumps({"promotions": [{"code": "SAVE5", "kind": "fixed", "amounts": {"USD": "5.00"}}]}))
    monkeypatch.setenv("OMS_PLUGIN_PROMOTIONS_FILE", str(ended))

    answer = cancel(api, order["id"], [("L1", 2)])

    assert answer.status_code == 200, answer.text
    line = answer.json()["lines"][0]
    assert (line["quantity"], line["discount"]["amount"]) == (2, "2.50")  # 10% of 2 x 12.50
    body = order_body(
        external_id=f"web-c{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}], promo_codes=["WELCOME10"]
    )
    refused = api.post("/orders", json=body)
    assert_error(refused, 422, "unknown_promo_code", "promo_codes[0]")


def test_a_unit_cancel_retried_after_its_idempotency_record_was_lost_cancels_the_units_once(api):
    # The first attempt wrote the cancel and died before its idempotency record was saved: the
    # retry must not take the same number of units off again (the customer loses an item).
    import boto3

    order = allocated(api, ("MUG", 3))
    key = {"Idempotency-Key": f"cancel-lost-{order['id']}"}
    first = cancel(api, order["id"], [("L1", 1)], headers=key)
    assert first.status_code == 200, first.text
    held = stock(api, "MUG", "wh-west")
    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))

    again = cancel(api, order["id"], [("L1", 1)], headers=key)
    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))
    other = cancel(api, order["id"], [("L1", 2)], headers=key)

    assert again.status_code == 200, again.text
    assert_error(other, 409, "idempotency_key_reused")
    stored = api.get(f"/orders/{order['id']}").json()
    assert (stored["lines"][0]["quantity"], stored["lines"][0]["cancelled_quantity"]) == (2, 1)
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [entry["type"] for entry in history].count("units_cancelled") == 1
    assert stock(api, "MUG", "wh-west") == held


def forget_idempotency_records(client: Any) -> None:
    """As if no attempt had saved its idempotency record."""
    import os

    table = os.environ["IDEMPOTENCY_TABLE"]
    for item in client.scan(TableName=table)["Items"]:
        client.delete_item(TableName=table, Key={"id": item["id"]})


def test_a_cancel_of_every_unit_retried_after_its_idempotency_record_was_lost_answers_the_cancelled_order(api):
    # Naming every unit cancels the order; its retry found no units_cancelled entry and was 409
    # invalid_transition: the client, told the cancel failed, tells the customer it will ship.
    import boto3

    order = allocated(api, ("MUG", 3))
    key = {"Idempotency-Key": f"cancel-all-lost-{order['id']}"}
    first = cancel(api, order["id"], [("L1", 3)], headers=key)
    assert (first.status_code, first.json()["status"]) == (200, "cancelled"), first.text
    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))

    again = cancel(api, order["id"], [("L1", 3)], headers=key)
    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))
    other = cancel(api, order["id"], [("L1", 2)], headers=key)

    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["status"]) == (order["id"], "cancelled")
    assert again.json()["payment"]["status"] == "voided"
    assert_error(other, 409, "idempotency_key_reused")


def test_a_parcel_a_cancel_of_units_empties_stays_on_the_order_cancelled_and_is_no_work_for_its_warehouse(api):
    order = allocated(api, ("MUG", 1), ("CAP", 2))
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")
    cap_before = stock(api, "CAP", "wh-east")

    answer = cancel(api, order["id"], [("L2", 2)])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    # Kept, cancelled and without a label to print, as a whole cancel leaves its parcels: the warehouse
    # that reads the order sees what became of it, and its ship or reject is 409, not 404.
    kept = next(s for s in done["shipments"] if s["id"] == east["id"])
    assert (kept["status"], kept["label_url"]) == ("cancelled", None)
    assert unsigned(api.get(f"/orders/{order['id']}").json())["shipments"] == unsigned(done)["shipments"]
    assert [a["line_id"] for a in done["allocations"]] == ["L1"]
    assert stock(api, "CAP", "wh-east") == (cap_before[0], cap_before[1] - 2, cap_before[2] + 2)
    history = [h["type"] for h in api.get(f"/orders/{order['id']}/history").json()["items"]]
    assert history[-2:] == ["units_cancelled", "carrier_booking_cancelled"]
    for action, body in (("ship", {}), ("reject", {"reason": "no staff"}), ("deliver", {})):
        refused = api.post(f"/orders/{order['id']}/shipments/{east['id']}/{action}", json=body)
        assert_error(refused, 409, "invalid_transition")
    assert api.get(f"/orders/{order['id']}").json()["version"] == done["version"]

    # The parcel left ships and arrives: the cancelled one keeps the order from neither.
    shipped = ship(api, done, "wh-west")
    assert shipped["status"] == "shipped"
    assert money(shipped["payment"]["captured"]) == money(shipped["totals"]["grand_total"])
    west = next(s for s in shipped["shipments"] if s["location_id"] == "wh-west")
    delivered = api.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", json={})
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "delivered"


class CheapFromThree:
    """Mugs cost 2.00 each from three units on."""

    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product, quantity: int, currency: str) -> Money | None:
        return Money.of("2.00", currency) if product.sku == "MUG" and quantity >= 3 else None


@pytest.fixture
def cheap_from_three(api: InProcessApi) -> Iterator[None]:
    """CheapFromThree registered on the API's plugins for one test; the warm containers dropped
    after, so no function keeps a price it quoted under it."""
    from functions.api.dependencies import container
    from functions.bootstrap import forget_warm_containers

    plugin = CheapFromThree()
    container().plugins.register(plugin)
    yield
    container().plugins.unregister(plugin)
    forget_warm_containers()


def test_a_cancel_of_units_that_would_raise_the_total_keeps_the_price_the_units_left_were_sold_at(
    api, cheap_from_three
):  # fmt: skip
    """Three mugs at 2.00 authorized for 11.44: priced again, the two left would cost 31.81, which
    the authorization could never capture (409 before). They keep the 2.00 they were sold at: one
    unit's reservation goes, and the parcel ships capturing the new, lower total."""
    order = allocated(api, ("MUG", 3))
    assert money(order["totals"]["grand_total"]) == "11.44"
    on_hand, reserved, _ = stock(api, "MUG", "wh-west")

    answer = cancel(api, order["id"], [("L1", 1)])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    mugs = done["lines"][0]
    assert (mugs["quantity"], money(mugs["unit_price"])) == (2, "2.00")
    assert Decimal(money(done["totals"]["grand_total"])) < Decimal("11.44")
    assert stock(api, "MUG", "wh-west")[:2] == (on_hand, reserved - 1)
    shipped = ship(api, done, "wh-west")
    assert (shipped["status"], shipped["payment"]["status"]) == ("shipped", "captured")
    assert shipped["payment"]["captured"] == done["totals"]["grand_total"]


def test_a_refused_settlement_capture_is_asked_again_as_its_runbook_says_over_http(api, monkeypatch):
    # SettlementCapturesNotMadeAlarm's runbook: a person asks again by reporting a shipped parcel
    # delivered again. The cancel's capture of what the shipped parcel's capture fell short of the
    # new total is refused (the answer is 200 all the same); the delivery sent later answers 200,
    # renews the spent authorization for that amount alone and captures it.
    import plugins.test_payments as gateway

    order = allocated(api, ("MUG", 1), ("CAP", 2))
    ship(api, order, order["shipments"][1]["location_id"])
    declines = gateway._declines
    monkeypatch.setattr(gateway, "_declines", lambda authorization, operation: operation == "capture")
    answer = cancel(api, order["id"])
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    due = Decimal(money(shown["totals"]["grand_total"])) - Decimal(money(shown["payment"]["captured"]))
    items = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [(h["type"], h["detail"].get("amount")) for h in items[-1:]] == [
        ("capture_not_made", {"amount": str(due), "currency": "USD"})
    ]
    assert "shipment_id" not in items[-1]["detail"] and due > 0
    monkeypatch.setattr(gateway, "_declines", declines)  # the customer's bank answers again
    shipped = next(s for s in shown["shipments"] if s["status"] == "shipped")

    again = api.post(f"/orders/{order['id']}/shipments/{shipped['id']}/deliver", json={})

    assert again.status_code == 200, again.text
    payment = again.json()["payment"]
    assert (payment["status"], money(payment["captured"]), money(payment["authorized"])) == (
        "captured", money(shown["totals"]["grand_total"]), money(shown["totals"]["grand_total"]),
    )  # fmt: skip
    after = api.get(f"/orders/{order['id']}/history").json()["items"]
    renewed = [h for h in after if h["type"] == "payment_authorized" and h["detail"].get("replaces")]
    assert [h["detail"]["amount"] for h in renewed] == [{"amount": str(due), "currency": "USD"}]
    assert after[-1]["type"] == "payment_captured"


class VoidCrashes:
    """A payment plugin whose void raises: its own bug, no gateway's answer."""

    @hookimpl(tryfirst=True)
    def oms_payment_void(self) -> None:
        raise ValueError("the plugin's own bug")


@pytest.mark.parametrize("lines", [None, [("L1", 1), ("L2", 2)]], ids=["whole", "every-unit"])
def test_a_cancel_whose_payment_plugin_crashes_in_the_void_answers_the_cancelled_order_over_http(api, lines):
    # The cancel is written before the void: a 500 would tell the client nothing happened.
    from functions.api.dependencies import container

    order = allocated(api, ("MUG", 1), ("CAP", 2))
    plugin = VoidCrashes()
    container().plugins.register(plugin)
    try:
        answer = cancel(api, order["id"], lines)
    finally:
        container().plugins.unregister(plugin)

    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert (shown["status"], shown["payment"]["status"]) == ("cancelled", "authorized")
    items = api.get(f"/orders/{order['id']}/history").json()["items"]
    [failed] = [h for h in items if h["type"] == "payment_void_failed"]
    assert (failed["detail"]["kind"], failed["detail"]["authorization"]) == (
        "plugin_error",
        order["payment"]["authorization"],
    )
    assert "failed in oms_payment_void: ValueError" in failed["detail"]["message"]
    again = cancel(api, order["id"], lines if lines is None else None)  # the plugin works again: voided
    assert (again.status_code, again.json()["payment"]["status"]) == (200, "voided"), again.text


def test_units_of_an_order_parked_between_reserving_and_booking_its_parcels_are_cancelled(api):
    """The workflow reserved the stock, then could not book the parcels (the carrier down past its
    retries) and parked the order for a person: it is held from `authorized` with its allocations
    and no shipment. A cancel of units is the customer's to make as on any held order (it was 409
    invalid_transition): the order stays held, what its lines no longer want is given back at once,
    and its release sources it again for what is left."""
    order_id, workflow = authorized(api, ("MUG", 3))
    workflow.reserve_stock(order_id)
    before = stock(api, "MUG", "wh-west")
    assert workflow.park_after_failure(order_id, "CarrierUnavailable", "the carrier is down")

    answer = cancel(api, order_id, [("L1", 2)])

    assert answer.status_code == 200, answer.text
    order = answer.json()
    assert (order["status"], order["hold"]["reason"], order["allocations"]) == ("on_hold", "other", [])
    assert [(line["quantity"], line["cancelled_quantity"]) for line in order["lines"]] == [(1, 2)]
    assert stock(api, "MUG", "wh-west")[1] == before[1] - 2
    released = api.post(f"/orders/{order_id}/release", json={})
    assert (released.status_code, released.json()["status"]) == (200, "authorized"), released.text
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    sourced = api.get(f"/orders/{order_id}").json()
    assert (sourced["status"], [s["lines"] for s in sourced["shipments"]]) == (
        "allocated",
        [[{"line_id": "L1", "quantity": 1}]],
    )
    assert stock(api, "MUG", "wh-west")[1] == before[1] - 2


def test_every_unit_of_an_order_parked_between_reserving_and_booking_cancelled_cancels_it(api):
    order_id, workflow = authorized(api, ("MUG", 2))
    before = stock(api, "MUG", "wh-west")
    workflow.reserve_stock(order_id)
    assert workflow.park_after_failure(order_id, "CarrierUnavailable", "the carrier is down")

    answer = cancel(api, order_id, [("L1", 2)])

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "voided")
    assert stock(api, "MUG", "wh-west") == before


def test_a_cancel_naming_a_version_changed_since_is_409_and_cancels_nothing(api):
    # A CS agent cancels the order they see; meanwhile someone held and released it. The cancel went
    # through (If-Match ignored): they cancelled what they never saw. Now neither the whole order nor
    # units of it are cancelled from the version they saw: nothing written, stock and payment as they were.
    order = allocated(api, ("MUG", 2))
    path = f"/orders/{order['id']}"
    assert api.post(f"{path}/hold", json={"reason": "other"}).status_code == 200
    moved = api.post(f"{path}/release", json={}).json()
    history = api.get(f"{path}/history").json()["items"]
    before = stock(api, "MUG", "wh-west")
    seen = {"If-Match": str(order["version"])}

    whole = cancel(api, order["id"], headers=seen)
    units = cancel(api, order["id"], [("L1", 1)], headers=seen)

    error = assert_error(whole, 409, "version_conflict", "If-Match")
    assert error["details"] == [{"field": "If-Match", "message": f"current version is {moved['version']}"}]
    assert_error(units, 409, "version_conflict", "If-Match")
    assert unsigned(api.get(path).json()) == unsigned(moved)
    assert api.get(path).json()["payment"]["status"] == "authorized"
    assert api.get(f"{path}/history").json()["items"] == history
    assert stock(api, "MUG", "wh-west") == before
    done = cancel(api, order["id"], headers={"If-Match": f'"{moved["version"]}"'})
    assert (done.status_code, done.json()["status"]) == (200, "cancelled"), done.text
    # Cancelled already, by a version the caller never saw: as any stale precondition, 409.
    assert_error(cancel(api, order["id"], headers={"If-Match": str(moved["version"])}), 409, "version_conflict")


def test_a_keyed_cancel_retried_with_the_if_match_it_was_read_at_answers_the_cancel_it_made(api):
    # The cancel moved the order's version: its retry (the same If-Match, the same key) is the same
    # request, answered as the first, even after the idempotency record was lost (the key in the entry).
    import boto3

    order = allocated(api, ("MUG", 1))
    headers = {"Idempotency-Key": f"cancel-seen-{order['id']}", "If-Match": str(order["version"])}
    first = cancel(api, order["id"], headers=headers)
    assert (first.status_code, first.json()["status"]) == (200, "cancelled"), first.text

    again = cancel(api, order["id"], headers=headers)
    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))
    lost = cancel(api, order["id"], headers=headers)

    assert again.status_code == 200 and again.json() == first.json(), again.text
    assert lost.status_code == 200, lost.text
    assert (lost.json()["status"], lost.json()["payment"]["status"]) == ("cancelled", "voided")
    types = [entry["type"] for entry in api.get(f"/orders/{order['id']}/history").json()["items"]]
    assert types.count("cancelled") == 1, types
