"""This session's changes to the same mechanisms, taken together in-process on moto: a cancel of units
between ReserveStock and CreateShipments, a stock take, a hold and an edit landing on one order, and
after each journey what must hold of its stock item (never negative, reserved the sum of the
reservations it holds, on_hand what was counted less what left)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import boto3

from tests.e2e.client import order_body
from tests.integration.in_process import InProcessApi
from tests.integration.test_parcels_left_finished import Stock, api  # noqa: F401 (a fixture)


def workflow() -> Any:
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def item(stock: Stock) -> dict[str, Any]:
    """The stock item as stored: on_hand, reserved, available and the reservations map."""
    from functions.adapters.dynamodb import from_item

    client = boto3.client("dynamodb", region_name="us-east-1")
    key = {"sku": {"S": stock.sku}, "location_id": {"S": stock.location}}
    return from_item(client.get_item(TableName=os.environ["INVENTORY_TABLE"], Key=key, ConsistentRead=True)["Item"])


def holds(stock: Stock, on_hand: int, reservations: dict[str, int]) -> None:
    """The stock item's invariants, and what it must hold now."""
    stored = item(stock)
    held = {key: int(units) for key, units in (stored.get("reservations") or {}).items() if int(units)}
    assert int(stored["reserved"]) == sum(held.values()), stored
    assert int(stored["available"]) == int(stored["on_hand"]) - int(stored["reserved"]) >= 0, stored
    assert (int(stored["on_hand"]), held) == (on_hand, reservations), stored


def authorized(api: InProcessApi, stock: Stock, quantity: int) -> str:  # noqa: F811
    body = order_body((stock.sku, quantity), channel=f"web-{uuid.uuid4().hex[:8]}")
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    workflow().authorize_payment(placed.json()["id"], attempt=0)
    return placed.json()["id"]


def cancel_units(api: InProcessApi, order_id: str, units: int) -> dict[str, Any]:  # noqa: F811
    body = {"reason": "customer asked", "lines": [{"line_id": "L1", "quantity": units}]}
    answer = api.post(f"/orders/{order_id}/cancel", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_units_cancelled_while_booking_then_a_count_a_hold_and_a_release_ship_what_is_left_once(api):  # noqa: F811
    stock = Stock(api, on_hand=5)
    order_id = authorized(api, stock, 3)
    workflow().reserve_stock(order_id)
    key = f"{order_id}#L1"
    holds(stock, 5, {key: 3})

    cancel_units(api, order_id, 1)  # between ReserveStock and CreateShipments
    holds(stock, 5, {key: 2})
    counted = api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": 6})  # one more found
    assert counted.status_code == 200, counted.text
    holds(stock, 6, {key: 2})
    held = api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"})
    assert held.status_code == 200, held.text
    cancel_units(api, order_id, 1)  # held, its stock reserved, no parcel yet
    holds(stock, 6, {key: 1})
    released = api.post(f"/orders/{order_id}/release", json={})
    assert released.status_code == 200, released.text
    # Sent back to be sourced by the cancel while held: the release restarts its workflow.
    assert (released.json()["status"], released.json()["allocations"]) == ("authorized", [])
    workflow().reserve_stock(order_id)
    holds(stock, 6, {key: 1})
    workflow().create_shipments(order_id)

    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    (parcel,) = order["shipments"]
    assert parcel["lines"] == [{"line_id": "L1", "quantity": 1}]
    shipped = api.post(f"/orders/{order_id}/shipments/{parcel['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    holds(stock, 5, {})
    assert shipped.json()["payment"]["captured"] == shipped.json()["totals"]["grand_total"]
