"""After the workflow: ship, deliver, cancel and edit an order over HTTP, with the stock and the
payment they move, their idempotency, and who may do them.

One stack for the module with its event sources on (the workflow allocates the orders); the
edit tests pause the mappings so their order stays pending until they resume them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import (
    Api,
    Catalog,
    assert_error,
    order_body,
    put_network,
    stored_document,
    stored_history,
    unique,
    unsigned,
)
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 10
UNKNOWN_SHIPMENT = "shp_" + "a" * 24
UNKNOWN_ORDER = "ord_" + "a" * 24


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(scope="module")
def network(stack: EmbeddedStack) -> dict[str, str]:
    """Two shipping warehouses, set up before any order: one near the customers, one in Newark."""
    api = Api(stack.api_url, stack.admin_key)
    try:
        return put_network(api)
    finally:
        api.close()


@pytest.fixture(scope="module")
def other_channel(stack: EmbeddedStack) -> dict[str, Any]:
    """A storefront key bound to its own channel, with every scope it needs for its own orders."""
    api = Api(stack.api_url, stack.admin_key)
    try:
        channel = unique("shop")
        response = api.post(
            "/api-keys",
            json={
                "name": f"storefront {channel}",
                "scopes": ["orders:write", "orders:read", "fulfillment:write"],
                "channel": channel,
            },
        )
        assert response.status_code == 201, response.text
        return response.json()
    finally:
        api.close()


# --- Helpers --------------------------------------------------------------------------------------


def settle(stack: EmbeddedStack) -> None:
    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"


def get_order(api: Api, order_id: str, **kwargs: Any) -> dict[str, Any]:
    response = api.get(f"/orders/{order_id}", **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def order_when(api: Api, order_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        order = get_order(api, order_id)
        if order["status"] in statuses or time.monotonic() > deadline:
            assert order["status"] in statuses, f"{order_id} is {order['status']}, expected one of {statuses}"
            return order
        time.sleep(0.05)


def place(api: Api, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = api.post("/orders", json=body, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


def allocated_order(stack: EmbeddedStack, api: Api, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    order_id = place(api, body, **kwargs)["id"]
    settle(stack)
    return order_when(api, order_id, "allocated")


def history(api: Api, order_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def level(api: Api, sku: str, location_id: str) -> dict[str, int]:
    response = api.get(f"/inventory/{sku}")
    assert response.status_code == 200, response.text
    found = {x["location_id"]: x for x in response.json()["locations"]}
    return {key: found[location_id][key] for key in ("on_hand", "reserved", "available")}


def ship(api: Api, order_id: str, shipment_id: str, **kwargs: Any):
    return api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", **kwargs)


def deliver(api: Api, order_id: str, shipment_id: str, **kwargs: Any):
    return api.post(f"/orders/{order_id}/shipments/{shipment_id}/deliver", **kwargs)


def cancel(api: Api, order_id: str, reason: str = "customer changed their mind", **kwargs: Any):
    return api.post(f"/orders/{order_id}/cancel", json={"reason": reason}, **kwargs)


def dec(money: dict[str, str]) -> Decimal:
    return Decimal(money["amount"])


def allocated_split_order(stack: EmbeddedStack, api: Api, network: dict[str, str]) -> dict[str, Any]:
    """An allocated order with one shipment from each warehouse: 2 of `west_sku`, 3 of `east_sku`."""
    catalog = Catalog(api)
    west, east = network["west"], network["east"]
    west_sku, east_sku = catalog.product("19.99"), catalog.product("5.55")
    catalog.stock(west_sku, west, 10)
    catalog.stock(east_sku, east, 10)
    order = allocated_order(stack, api, order_body((west_sku, 2), (east_sku, 3)))
    assert len(order["shipments"]) == 2
    shipments = {s["location_id"]: s for s in order["shipments"]}
    return {"order": order, "west": shipments[west], "east": shipments[east], "skus": (west_sku, east_sku)}


@pytest.fixture
def split_order(stack: EmbeddedStack, api: Api, network: dict[str, str]) -> dict[str, Any]:
    """allocated_split_order(), this test's own: for the tests that ship, deliver, cancel or edit it."""
    return allocated_split_order(stack, api, network)


@pytest.fixture(scope="module")
def refused_split_order(stack: EmbeddedStack, api: Api, network: dict[str, str]) -> dict[str, Any]:
    """allocated_split_order(), shared by the tests of a request that must be refused and change
    nothing: each of them asserts the order is still the one allocated, so one order (one run of
    the workflow) serves them all."""
    return allocated_split_order(stack, api, network)


@pytest.fixture(scope="module")
def refused_shipped_order(stack: EmbeddedStack, api: Api, network: dict[str, str]) -> dict[str, Any]:
    """allocated_split_order() with its west shipment shipped ("order": the order as the ship
    answered it), shared as refused_split_order is: by the tests of a request that must be refused
    and change nothing, each of which asserts the order is still the one the ship left."""
    split = allocated_split_order(stack, api, network)
    shipped = ship(api, split["order"]["id"], split["west"]["id"])
    assert shipped.status_code == 200, shipped.text
    return {**split, "order": shipped.json()}


# --- Ship and deliver ---------------------------------------------------------------------------------


def test_shipping_each_shipment_moves_stock_and_captures_exactly_what_was_authorized(
    api: Api, network: dict[str, str], split_order: dict[str, Any]
):
    order = split_order["order"]
    west_sku, east_sku = split_order["skus"]
    west, east = network["west"], network["east"]
    assert level(api, west_sku, west) == {"on_hand": 10, "reserved": 2, "available": 8}

    first = ship(api, order["id"], split_order["west"]["id"], json={"tracking_number": "1Z999AA10123456784"})

    assert first.status_code == 200, first.text
    partly = first.json()
    assert partly["status"] == "partially_shipped"
    assert partly["payment"]["status"] == "partially_captured"
    assert Decimal(0) < dec(partly["payment"]["captured"]) < dec(partly["payment"]["authorized"])
    shipped = next(s for s in partly["shipments"] if s["id"] == split_order["west"]["id"])
    assert shipped["status"] == "shipped" and shipped["shipped_at"]
    assert shipped["tracking_number"] == "1Z999AA10123456784"
    assert level(api, west_sku, west) == {"on_hand": 8, "reserved": 0, "available": 8}
    assert level(api, east_sku, east) == {"on_hand": 10, "reserved": 3, "available": 7}  # not shipped yet
    assert unsigned(get_order(api, order["id"])) == unsigned(partly)

    second = ship(api, order["id"], split_order["east"]["id"])  # no body: the carrier's number stays

    assert second.status_code == 200, second.text
    done = second.json()
    assert done["status"] == "shipped"
    assert done["payment"]["status"] == "captured"
    assert done["payment"]["captured"] == done["payment"]["authorized"] == order["payment"]["authorized"]
    assert dec(done["payment"]["refunded"]) == 0
    east_shipment = next(s for s in done["shipments"] if s["id"] == split_order["east"]["id"])
    assert east_shipment["tracking_number"] == split_order["east"]["tracking_number"]
    assert level(api, east_sku, east) == {"on_hand": 7, "reserved": 0, "available": 7}
    entries = history(api, order["id"])
    assert [(e["type"], e["from_status"], e["to_status"]) for e in entries[-2:]] == [
        ("shipment_shipped", "allocated", "partially_shipped"),
        ("shipment_shipped", "partially_shipped", "shipped"),
    ]
    assert all(e["actor"] == "key_admin" for e in entries[-2:])
    captured = sum(Decimal(e["detail"]["captured"]["amount"]) for e in entries[-2:])
    assert captured == dec(done["payment"]["authorized"])


def test_a_label_link_is_signed_at_each_read_and_never_stored(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("8.00")
    catalog.stock(sku, network["west"], 3)
    order = allocated_order(stack, api, order_body((sku, 1)))
    [shipment] = order["shipments"]
    time.sleep(1.1)  # SigV4 signs to the second: the next read is signed at a later one

    again = get_order(api, order["id"])["shipments"][0]["label_url"]

    links = [shipment["label_url"], again]
    queries = [parse_qs(urlsplit(link).query) for link in links]
    assert queries[0]["X-Amz-Signature"] != queries[1]["X-Amz-Signature"]
    assert all(q["X-Amz-Expires"] == ["900"] for q in queries)
    assert urlsplit(links[0]).path == urlsplit(links[1]).path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for link in links:
        with opener.open(link, timeout=10) as response:
            assert response.status == 200 and response.read().startswith(b"%PDF-")
    item = stack.client("dynamodb").get_item(
        TableName=stack.table_names["OrdersTable"], Key={"id": {"S": order["id"]}}
    )["Item"]
    doc = stored_document(item)
    assert [s["label_url"] for s in doc["shipments"]] == [f"labels/{order['id']}/{shipment['id']}.pdf"]
    rest = {name: value for name, value in item.items() if name not in ("doc", "history")}
    stored = json.dumps(doc) + json.dumps(stored_history(item)) + json.dumps(rest)
    assert "http" not in stored and "Signature" not in stored and "X-Amz" not in stored


def test_a_shipment_sent_with_an_empty_body_keeps_its_tracking_number(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("8.00")
    catalog.stock(sku, network["west"], 3)
    order = allocated_order(stack, api, order_body((sku, 1)))
    [shipment] = order["shipments"]

    response = ship(api, order["id"], shipment["id"], json={})

    assert response.status_code == 200, response.text
    shipped = response.json()
    assert shipped["status"] == "shipped" and shipped["payment"]["status"] == "captured"
    assert shipped["payment"]["captured"] == shipped["totals"]["grand_total"]
    assert shipped["shipments"][0]["tracking_number"] == shipment["tracking_number"]


def test_shipping_twice_answers_200_and_changes_nothing(api: Api, network: dict[str, str], split_order: dict[str, Any]):
    order, shipment = split_order["order"], split_order["west"]
    west_sku = split_order["skus"][0]
    once = ship(api, order["id"], shipment["id"])
    assert once.status_code == 200, once.text
    stock = level(api, west_sku, network["west"])

    twice = ship(api, order["id"], shipment["id"], json={"tracking_number": shipment["tracking_number"]})
    corrected = ship(api, order["id"], shipment["id"], json={"tracking_number": "ANOTHER-NUMBER"})

    assert twice.status_code == 200, twice.text
    assert unsigned(twice.json()) == unsigned(once.json())  # same version, same tracking number, captured once
    # Another number is another request: refused, naming the number recorded, not answered as if it took.
    assert corrected.status_code == 409, corrected.text
    error = corrected.json()["error"]
    assert error["code"] == "tracking_number_conflict"
    assert [(d["field"], d["tracking_number"]) for d in error["details"]] == [
        ("tracking_number", shipment["tracking_number"])
    ]
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(once.json())
    assert level(api, west_sku, network["west"]) == stock
    assert [e["type"] for e in history(api, order["id"])].count("shipment_shipped") == 1


def test_a_capture_the_gateway_refuses_answers_502_and_the_shipment_stays_pending(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("8.00")
    catalog.stock(sku, network["west"], 3)
    body = order_body((sku, 1), payment={"method": "test", "token": "tok_capture_decline"})
    order = allocated_order(stack, api, body)
    [shipment] = order["shipments"]

    response = ship(api, order["id"], shipment["id"])

    error = assert_error(response, 502, "payment_gateway_error")
    assert "refused the capture" in error["message"] and "tok_capture_decline" in error["message"]
    after = get_order(api, order["id"])
    # Not shipped, nothing captured: the capture's request and its refusal are two new versions.
    changed = {"version": order["version"] + 2, "updated_at": after["updated_at"]}
    assert unsigned(after) == unsigned({**order, **changed})
    assert after["shipments"][0]["status"] == "pending"
    assert after["payment"]["status"] == "authorized" and dec(after["payment"]["captured"]) == 0
    assert level(api, sku, network["west"]) == {"on_hand": 3, "reserved": 1, "available": 2}
    failed, not_made = history(api, order["id"])[-2:]
    assert (failed["type"], failed["to_status"]) == ("payment_capture_failed", None)
    assert (failed["detail"]["kind"], failed["detail"]["shipment_id"]) == ("refused", shipment["id"])
    assert (not_made["type"], not_made["detail"]["shipment_id"]) == ("capture_not_made", shipment["id"])
    # The order can still be cancelled: the stock goes back and the authorization is voided.
    cancelled = cancel(api, order["id"])
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["status"] == "voided"


def test_delivering_every_shipment_delivers_the_order(api: Api, split_order: dict[str, Any]):
    order_id = split_order["order"]["id"]
    west_id, east_id = split_order["west"]["id"], split_order["east"]["id"]
    for shipment_id in (west_id, east_id):
        assert ship(api, order_id, shipment_id).status_code == 200

    first = deliver(api, order_id, west_id)

    assert first.status_code == 200, first.text
    assert first.json()["status"] == "shipped"  # one of two delivered
    delivered = next(s for s in first.json()["shipments"] if s["id"] == west_id)
    assert delivered["status"] == "delivered" and delivered["delivered_at"]

    second = deliver(api, order_id, east_id)

    assert second.status_code == 200, second.text
    assert second.json()["status"] == "delivered"
    assert all(s["status"] == "delivered" for s in second.json()["shipments"])
    again = deliver(api, order_id, east_id)
    assert again.status_code == 200 and unsigned(again.json()) == unsigned(second.json())
    assert history(api, order_id)[-1]["to_status"] == "delivered"


def test_a_warehouse_system_confirms_both_shipments_in_one_batch(
    api: Api, network: dict[str, str], split_order: dict[str, Any]
):
    """POST /shipments/confirmations on the running stack: each item as its single route, in order."""
    order_id, west_id, east_id = split_order["order"]["id"], split_order["west"]["id"], split_order["east"]["id"]
    west_sku, _ = split_order["skus"]
    items = [
        {"order_id": order_id, "shipment_id": west_id, "action": "ship", "tracking_number": "1ZWMS0001"},
        {"order_id": order_id, "shipment_id": east_id, "action": "ship"},
        {"order_id": order_id, "shipment_id": west_id, "action": "deliver"},
        {"order_id": order_id, "shipment_id": east_id, "action": "deliver"},
    ]

    response = api.post("/shipments/confirmations", json={"items": items})

    assert response.status_code == 200, response.text
    results = response.json()["items"]
    assert [(r["shipment_id"], r["status"], r["error"]) for r in results] == [
        (west_id, "shipped", None), (east_id, "shipped", None), (west_id, "delivered", None),
        (east_id, "delivered", None),
    ]  # fmt: skip
    order = get_order(api, order_id)
    assert order["status"] == "delivered" and order["version"] == results[-1]["version"]
    assert order["payment"]["captured"] == order["totals"]["grand_total"]
    assert level(api, west_sku, network["west"]) == {"on_hand": 8, "reserved": 0, "available": 8}


def test_a_carriers_tracking_webhook_delivers_the_shipments_it_names(api: Api, split_order: dict[str, Any]):
    from plugins.flat_rate_carrier import tracking_number

    order_id = split_order["order"]["id"]
    west, east = split_order["west"]["id"], split_order["east"]["id"]
    assert ship(api, order_id, west).status_code == 200

    def scan(shipment_id: str, status: str) -> dict[str, str]:
        # What the flat-rate carrier's webhook carries: the label's reference and tracking number.
        reference = f"{order_id}/{shipment_id}"
        return {"reference": reference, "tracking_number": tracking_number(shipment_id), "status": status,
                "at": "2026-11-23T09:30:00Z", "description": "Left with the concierge"}  # fmt: skip

    body = {"events": [scan(west, "in_transit"), scan(west, "delivered"), scan(east, "delivered")]}
    response = api.post("/carriers/oms-flat-rate/tracking", json=body)

    assert response.status_code == 200, response.text
    assert [u["outcome"] for u in response.json()["updates"]] == ["not_recorded", "delivered", "not_shipped"]
    order = get_order(api, order_id)
    assert {s["id"]: s["status"] for s in order["shipments"]} == {west: "delivered", east: "pending"}
    again = api.post("/carriers/oms-flat-rate/tracking", json=body)
    assert again.json() == response.json()
    assert unsigned(get_order(api, order_id)) == unsigned(order)


def test_delivering_a_pending_shipment_is_409(api: Api, refused_split_order: dict[str, Any]):
    order = refused_split_order["order"]

    response = deliver(api, order["id"], refused_split_order["west"]["id"])

    assert_error(response, 409, "invalid_transition")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)


def test_an_unknown_shipment_or_order_is_404(
    api: Api, refused_split_order: dict[str, Any], refused_shipped_order: dict[str, Any]
):
    order, other = refused_split_order["order"], refused_shipped_order["order"]

    assert_error(ship(api, order["id"], UNKNOWN_SHIPMENT), 404)
    assert_error(deliver(api, order["id"], UNKNOWN_SHIPMENT), 404)
    assert_error(ship(api, UNKNOWN_ORDER, refused_split_order["west"]["id"]), 404)
    assert_error(cancel(api, UNKNOWN_ORDER), 404)
    # A shipment of one order is unknown on another.
    assert_error(ship(api, other["id"], refused_split_order["west"]["id"]), 404)
    assert_error(deliver(api, other["id"], refused_split_order["east"]["id"]), 404)
    assert unsigned(get_order(api, order["id"])) == unsigned(order)
    assert unsigned(get_order(api, other["id"])) == unsigned(other)


# --- Cancel ------------------------------------------------------------------------------------------


def test_cancelling_before_shipping_releases_the_stock_and_voids_the_payment(
    api: Api, network: dict[str, str], split_order: dict[str, Any]
):
    order = split_order["order"]
    west_sku, east_sku = split_order["skus"]

    response = cancel(api, order["id"], reason="customer asked")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["payment"]["status"] == "voided"
    assert dec(cancelled["payment"]["captured"]) == 0
    # The cancel, the void the gateway approved, then each parcel's booking cancelled with the carrier.
    assert cancelled["version"] == order["version"] + 4
    assert level(api, west_sku, network["west"]) == {"on_hand": 10, "reserved": 0, "available": 10}
    assert level(api, east_sku, network["east"]) == {"on_hand": 10, "reserved": 0, "available": 10}
    entry, voided, *bookings = history(api, order["id"])[-4:]
    assert (entry["type"], entry["from_status"], entry["to_status"]) == ("cancelled", "allocated", "cancelled")
    assert voided["type"] == "payment_voided"
    assert [booking["type"] for booking in bookings] == ["carrier_booking_cancelled"] * 2
    assert entry["actor"] == "key_admin"
    assert entry["detail"]["reason"] == "customer asked"
    # A cancelled order cannot ship.
    assert_error(ship(api, order["id"], split_order["west"]["id"]), 409, "invalid_transition")
    assert level(api, west_sku, network["west"])["on_hand"] == 10


def test_cancelling_twice_answers_200_both_times(api: Api, split_order: dict[str, Any]):
    order_id = split_order["order"]["id"]

    first = cancel(api, order_id)
    second = cancel(api, order_id, reason="asked again")

    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert unsigned(second.json()) == unsigned(first.json())
    assert [e["type"] for e in history(api, order_id)].count("cancelled") == 1


def test_cancelling_units_that_shipped_is_409(api: Api, network: dict[str, str], refused_shipped_order: dict[str, Any]):
    order_id, shipped = refused_shipped_order["order"]["id"], refused_shipped_order["order"]
    east_sku = refused_shipped_order["skus"][1]

    # (Without `lines` the unshipped rest would be cancelled: tests/e2e/test_refunds_and_cancels.py.)
    response = api.post(f"/orders/{order_id}/cancel",
                        json={"reason": "too late", "lines": [{"line_id": "L1", "quantity": 1}]})  # fmt: skip

    assert_error(response, 409, "invalid_transition")
    assert unsigned(get_order(api, order_id)) == unsigned(shipped)
    assert level(api, east_sku, network["east"])["reserved"] == 3  # the other shipment still holds its units


# --- Another channel's key ---------------------------------------------------------------------------------


def test_another_channels_key_cannot_see_or_change_an_order(
    api: Api, other_channel: dict[str, Any], refused_split_order: dict[str, Any]
):
    order = refused_split_order["order"]
    assert order["channel"] != other_channel["channel"]
    key = other_channel["key"]
    order_id, shipment_id = order["id"], refused_split_order["west"]["id"]

    for response in (
        ship(api, order_id, shipment_id, key=key),
        deliver(api, order_id, shipment_id, key=key),
        cancel(api, order_id, key=key),
        api.get(f"/orders/{order_id}/history", key=key),
        api.get(f"/orders/{order_id}", key=key),
        api.request("PATCH", f"/orders/{order_id}", key=key, headers={"If-Match": str(order["version"])},
                    json={"shipping_method": "express"}),
    ):  # fmt: skip
        assert_error(response, 404)
    assert unsigned(get_order(api, order_id)) == unsigned(order)


def test_a_channel_key_ships_and_cancels_its_own_orders(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str], other_channel: dict[str, Any]
):
    sku = catalog.product("6.00")
    catalog.stock(sku, network["west"], 5)
    key = other_channel["key"]
    channel = other_channel["channel"]
    first = allocated_order(stack, api, order_body((sku, 1), channel=channel), key=key)
    second = allocated_order(stack, api, order_body((sku, 1), channel=channel), key=key)

    shipped = ship(api, first["id"], first["shipments"][0]["id"], key=key)
    cancelled = cancel(api, second["id"], key=key)

    assert shipped.status_code == 200 and shipped.json()["status"] == "shipped", shipped.text
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert history(api, second["id"])[-1]["actor"] == other_channel["id"]


# --- Edit -----------------------------------------------------------------------------------------------


def patch(api: Api, order_id: str, body: dict[str, Any], version: Any = None, **kwargs: Any):
    headers = {} if version is None else {"If-Match": str(version)}
    return api.request("PATCH", f"/orders/{order_id}", headers=headers, json=body, **kwargs)


def test_an_edit_without_if_match_is_428(api: Api, refused_split_order: dict[str, Any]):
    order = refused_split_order["order"]

    assert_error(patch(api, order["id"], {"shipping_method": "express"}), 428, "if_match_required", "If-Match")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)


def test_an_edit_once_a_shipment_shipped_is_409(api: Api, refused_shipped_order: dict[str, Any]):
    shipped = refused_shipped_order["order"]
    sku = shipped["lines"][0]["sku"]

    response = patch(api, shipped["id"], {"lines": [{"sku": sku, "quantity": 1}]}, version=shipped["version"])

    assert_error(response, 409, "invalid_transition")
    assert unsigned(get_order(api, shipped["id"])) == unsigned(shipped)


@pytest.fixture
def paused(stack: EmbeddedStack) -> Iterator[EmbeddedStack]:
    """The outbox holds its records: orders placed meanwhile stay pending."""
    settle(stack)
    stack.pause_mappings()
    try:
        yield stack
    finally:
        stack.resume_mappings()


def test_a_stale_if_match_is_409_version_conflict(
    paused: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 5)
    order = place(api, order_body((sku, 1)))

    response = patch(api, order["id"], {"shipping_method": "express"}, version=order["version"] + 1)
    older = patch(api, order["id"], {"shipping_method": "express"}, version=f'"{order["version"] - 1}"')

    assert_error(response, 409, "version_conflict")
    assert_error(older, 409, "version_conflict")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)


def test_editing_a_pending_orders_lines_prices_it_again_and_the_workflow_uses_the_new_lines(
    paused: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    west = network["west"]
    kept, added = catalog.product("12.34"), catalog.product("3.33")
    catalog.stock(kept, west, 10)
    catalog.stock(added, west, 10)
    body = order_body((kept, 1), promo_codes=[])
    order = place(api, body)
    new_lines = [{"sku": kept, "quantity": 3}, {"sku": added, "quantity": 2}]
    # What the server charges for those lines: the same body placed fresh, under another external id.
    reference = place(api, {**body, "external_id": unique("ext"), "lines": new_lines})
    cancelled = cancel(api, reference["id"])
    assert cancelled.status_code == 200, cancelled.text

    response = patch(api, order["id"], {"lines": new_lines}, version=order["version"])

    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["status"] == "pending"
    assert edited["version"] == order["version"] + 1
    assert edited["totals"] == reference["totals"]
    assert edited["totals"] != order["totals"]
    assert [
        (x["sku"], x["quantity"], x["unit_price"], x["discount"], x["tax"], x["total"]) for x in edited["lines"]
    ] == [(x["sku"], x["quantity"], x["unit_price"], x["discount"], x["tax"], x["total"]) for x in reference["lines"]]
    assert unsigned(get_order(api, order["id"])) == unsigned(edited)
    entry = history(api, order["id"])[-1]
    assert (entry["type"], entry["actor"]) == ("edited", "key_admin")
    assert entry["detail"]["changed"] == ["lines"]

    # The workflow, run now, authorizes the new total and reserves the new lines.
    paused.resume_mappings()
    settle(paused)
    allocated = order_when(api, order["id"], "allocated")

    assert allocated["payment"]["authorized"] == edited["totals"]["grand_total"]
    line_of = {x["sku"]: x["line_id"] for x in allocated["lines"]}
    assert sorted((a["line_id"], a["quantity"]) for a in allocated["allocations"]) == sorted(
        [(line_of[kept], 3), (line_of[added], 2)]
    )
    assert sorted((x["line_id"], x["quantity"]) for x in allocated["shipments"][0]["lines"]) == sorted(
        [(line_of[kept], 3), (line_of[added], 2)]
    )
    assert level(api, kept, west)["reserved"] == 3
    assert level(api, added, west)["reserved"] == 2


def test_an_edit_asking_for_more_than_the_stock_is_409_and_changes_nothing(
    paused: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 2)
    catalog.stock(sku, network["east"], 1)
    order = place(api, order_body((sku, 1)))

    response = patch(api, order["id"], {"lines": [{"sku": sku, "quantity": 4}]}, version=order["version"])

    assert_error(response, 409, "insufficient_stock")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)


def test_a_pending_order_cancelled_before_the_workflow_runs_is_never_authorized(
    paused: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 2)
    order = place(api, order_body((sku, 2)))

    response = cancel(api, order["id"], reason="duplicate")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    paused.resume_mappings()
    settle(paused)
    after = get_order(api, order["id"])
    assert after == response.json()  # the workflow found it closed and left it alone
    assert dec(after["payment"]["authorized"]) == 0 and after["payment"]["status"] != "authorized"
    assert after["allocations"] == [] and after["shipments"] == []
    assert level(api, sku, network["west"]) == {"on_hand": 2, "reserved": 0, "available": 2}
    assert [e["type"] for e in history(api, order["id"])] == ["created", "cancelled"]
