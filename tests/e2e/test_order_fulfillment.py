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
    """allocated_split_order(), this journey's own."""
    return allocated_split_order(stack, api, network)


def patch(api: Api, order_id: str, body: dict[str, Any], version: Any = None, **kwargs: Any):
    headers = {} if version is None else {"If-Match": str(version)}
    return api.request("PATCH", f"/orders/{order_id}", headers=headers, json=body, **kwargs)


# --- Ship and deliver ---------------------------------------------------------------------------------


def test_an_order_in_two_parcels_ships_each_once_captures_what_was_authorized_and_is_delivered(
    api: Api, network: dict[str, str], split_order: dict[str, Any]
):
    """Refused what it cannot do yet at each step (and left as it was), then shipped parcel by
    parcel, each ship retried, then delivered parcel by parcel."""
    order = split_order["order"]
    order_id, west_id, east_id = order["id"], split_order["west"]["id"], split_order["east"]["id"]
    west_sku, east_sku = split_order["skus"]
    west, east = network["west"], network["east"]
    assert level(api, west_sku, west) == {"on_hand": 10, "reserved": 2, "available": 8}

    # Allocated: nothing shipped yet, so nothing to deliver; an edit needs If-Match; unknown ids are 404.
    assert_error(deliver(api, order_id, west_id), 409, "invalid_transition")
    assert_error(patch(api, order_id, {"shipping_method": "express"}), 428, "if_match_required", "If-Match")
    assert_error(ship(api, order_id, UNKNOWN_SHIPMENT), 404)
    assert_error(deliver(api, order_id, UNKNOWN_SHIPMENT), 404)
    assert_error(ship(api, UNKNOWN_ORDER, west_id), 404)
    assert_error(cancel(api, UNKNOWN_ORDER), 404)
    assert unsigned(get_order(api, order_id)) == unsigned(order)

    first = ship(api, order_id, west_id, json={"tracking_number": "1Z999AA10123456784"})

    assert first.status_code == 200, first.text
    partly = first.json()
    assert partly["status"] == "partially_shipped"
    assert partly["payment"]["status"] == "partially_captured"
    assert Decimal(0) < dec(partly["payment"]["captured"]) < dec(partly["payment"]["authorized"])
    shipped = next(s for s in partly["shipments"] if s["id"] == west_id)
    assert shipped["status"] == "shipped" and shipped["shipped_at"]
    assert shipped["tracking_number"] == "1Z999AA10123456784"
    assert level(api, west_sku, west) == {"on_hand": 8, "reserved": 0, "available": 8}
    assert level(api, east_sku, east) == {"on_hand": 10, "reserved": 3, "available": 7}  # not shipped yet
    assert unsigned(get_order(api, order_id)) == unsigned(partly)

    # The warehouse retries the ship: 200, the same order, captured once.
    twice = ship(api, order_id, west_id, json={"tracking_number": "1Z999AA10123456784"})
    corrected = ship(api, order_id, west_id, json={"tracking_number": "ANOTHER-NUMBER"})

    assert twice.status_code == 200, twice.text
    assert unsigned(twice.json()) == unsigned(partly)  # same version, same tracking number, captured once
    # Another number is another request: refused, naming the number recorded, not answered as if it took.
    assert corrected.status_code == 409, corrected.text
    error = corrected.json()["error"]
    assert error["code"] == "tracking_number_conflict"
    assert [(d["field"], d["tracking_number"]) for d in error["details"]] == [("tracking_number", "1Z999AA10123456784")]
    assert level(api, west_sku, west) == {"on_hand": 8, "reserved": 0, "available": 8}
    assert [e["type"] for e in history(api, order_id)].count("shipment_shipped") == 1

    # Units that shipped cannot be cancelled (without `lines` the unshipped rest would be:
    # tests/e2e/test_refunds_and_cancels.py), an order with a shipped parcel cannot be edited, and
    # a shipment of one order is unknown on another (tests/e2e: the channel key's journey).
    shipped_units = {"reason": "too late", "lines": [{"line_id": "L1", "quantity": 1}]}
    assert_error(api.post(f"/orders/{order_id}/cancel", json=shipped_units), 409, "invalid_transition")
    fewer = {"lines": [{"sku": partly["lines"][0]["sku"], "quantity": 1}]}
    assert_error(patch(api, order_id, fewer, version=partly["version"]), 409, "invalid_transition")
    assert level(api, east_sku, east)["reserved"] == 3  # the other shipment still holds its units
    assert unsigned(get_order(api, order_id)) == unsigned(partly)

    second = ship(api, order_id, east_id)  # no body: the carrier's number stays

    assert second.status_code == 200, second.text
    done = second.json()
    assert done["status"] == "shipped"
    assert done["payment"]["status"] == "captured"
    assert done["payment"]["captured"] == done["payment"]["authorized"] == order["payment"]["authorized"]
    assert dec(done["payment"]["refunded"]) == 0
    east_shipment = next(s for s in done["shipments"] if s["id"] == east_id)
    assert east_shipment["tracking_number"] == split_order["east"]["tracking_number"]
    assert level(api, east_sku, east) == {"on_hand": 7, "reserved": 0, "available": 7}
    entries = history(api, order_id)
    assert [(e["type"], e["from_status"], e["to_status"]) for e in entries[-2:]] == [
        ("shipment_shipped", "allocated", "partially_shipped"),
        ("shipment_shipped", "partially_shipped", "shipped"),
    ]
    assert all(e["actor"] == "key_admin" for e in entries[-2:])
    captured = sum(Decimal(e["detail"]["captured"]["amount"]) for e in entries[-2:])
    assert captured == dec(done["payment"]["authorized"])

    # Sent again naming the label's number: 200, the same order; that number is confirmed now, so
    # another one is refused, naming it.
    label_number = split_order["east"]["tracking_number"]
    twice = ship(api, order_id, east_id, json={"tracking_number": label_number})
    corrected = ship(api, order_id, east_id, json={"tracking_number": "ANOTHER-NUMBER"})

    assert twice.status_code == 200, twice.text
    assert unsigned(twice.json()) == unsigned(done)
    error = assert_error(corrected, 409, "tracking_number_conflict")
    assert [(d["field"], d["tracking_number"]) for d in error["details"]] == [("tracking_number", label_number)]
    assert unsigned(get_order(api, order_id)) == unsigned(done)
    assert level(api, east_sku, east) == {"on_hand": 7, "reserved": 0, "available": 7}
    assert [e["type"] for e in history(api, order_id)].count("shipment_shipped") == 2

    delivered_one = deliver(api, order_id, west_id)

    assert delivered_one.status_code == 200, delivered_one.text
    assert delivered_one.json()["status"] == "shipped"  # one of two delivered
    delivered = next(s for s in delivered_one.json()["shipments"] if s["id"] == west_id)
    assert delivered["status"] == "delivered" and delivered["delivered_at"]

    delivered_both = deliver(api, order_id, east_id)

    assert delivered_both.status_code == 200, delivered_both.text
    assert delivered_both.json()["status"] == "delivered"
    assert all(s["status"] == "delivered" for s in delivered_both.json()["shipments"])
    again = deliver(api, order_id, east_id)
    assert again.status_code == 200 and unsigned(again.json()) == unsigned(delivered_both.json())
    assert history(api, order_id)[-1]["to_status"] == "delivered"


def test_a_carriers_webhook_delivers_the_parcel_it_scanned_and_a_warehouse_batch_confirms_the_rest(
    api: Api, network: dict[str, str], split_order: dict[str, Any]
):
    """POST /carriers/{carrier}/tracking, then POST /shipments/confirmations on the running stack:
    each batch item as its single route, in order, the ones already done answered as done (a fresh
    deliver in a batch: tests/integration/test_shipment_confirmations.py)."""
    from plugins.flat_rate_carrier import tracking_number

    order_id = split_order["order"]["id"]
    west, east = split_order["west"]["id"], split_order["east"]["id"]
    west_sku, east_sku = split_order["skus"]
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

    items = [
        {"order_id": order_id, "shipment_id": west, "action": "ship"},
        {"order_id": order_id, "shipment_id": east, "action": "ship", "tracking_number": "1ZWMS0001"},
        {"order_id": order_id, "shipment_id": west, "action": "deliver"},
        {"order_id": order_id, "shipment_id": east, "action": "deliver"},
    ]

    confirmed = api.post("/shipments/confirmations", json={"items": items})

    assert confirmed.status_code == 200, confirmed.text
    results = confirmed.json()["items"]
    # The parcel the carrier delivered is answered as it is; the other's ship confirms its hand-over
    # and records the delivery the carrier scanned (README: the tracking webhook's `not_shipped`).
    assert [(r["shipment_id"], r["status"], r["error"]) for r in results] == [
        (west, "delivered", None), (east, "delivered", None), (west, "delivered", None), (east, "delivered", None),
    ]  # fmt: skip
    assert len({r["version"] for r in results[1:]}) == 1  # the deliveries asked again change nothing
    order = get_order(api, order_id)
    assert order["status"] == "delivered" and order["version"] == results[-1]["version"]
    assert next(s for s in order["shipments"] if s["id"] == east)["tracking_number"] == "1ZWMS0001"
    assert order["payment"]["captured"] == order["totals"]["grand_total"]
    assert level(api, west_sku, network["west"]) == {"on_hand": 8, "reserved": 0, "available": 8}
    assert level(api, east_sku, network["east"]) == {"on_hand": 7, "reserved": 0, "available": 7}


def test_a_label_link_is_signed_at_each_read_never_stored_and_a_ship_with_an_empty_body_keeps_its_number(
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

    response = ship(api, order["id"], shipment["id"], json={})

    assert response.status_code == 200, response.text
    shipped = response.json()
    assert shipped["status"] == "shipped" and shipped["payment"]["status"] == "captured"
    assert shipped["payment"]["captured"] == shipped["totals"]["grand_total"]
    assert shipped["shipments"][0]["tracking_number"] == shipment["tracking_number"]


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


# --- Cancel ------------------------------------------------------------------------------------------


def test_an_order_hidden_from_another_channels_key_is_cancelled_once_releasing_its_stock_and_voiding_its_payment(
    api: Api, network: dict[str, str], split_order: dict[str, Any], other_channel: dict[str, Any]
):
    order = split_order["order"]
    west_sku, east_sku = split_order["skus"]
    order_id, shipment_id = order["id"], split_order["west"]["id"]
    assert order["channel"] != other_channel["channel"]
    key = other_channel["key"]

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

    response = cancel(api, order_id, reason="customer asked")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["payment"]["status"] == "voided"
    assert dec(cancelled["payment"]["captured"]) == 0
    # The cancel, the void the gateway approved, then each parcel's booking cancelled with the carrier.
    assert cancelled["version"] == order["version"] + 4
    assert level(api, west_sku, network["west"]) == {"on_hand": 10, "reserved": 0, "available": 10}
    assert level(api, east_sku, network["east"]) == {"on_hand": 10, "reserved": 0, "available": 10}
    entry, voided, *bookings = history(api, order_id)[-4:]
    assert (entry["type"], entry["from_status"], entry["to_status"]) == ("cancelled", "allocated", "cancelled")
    assert voided["type"] == "payment_voided"
    assert [booking["type"] for booking in bookings] == ["carrier_booking_cancelled"] * 2
    assert entry["actor"] == "key_admin"
    assert entry["detail"]["reason"] == "customer asked"

    # Cancelled again (a retry, another reason): 200, the same order, one cancel in its history.
    twice = cancel(api, order_id, reason="asked again")

    assert twice.status_code == 200, twice.text
    assert unsigned(twice.json()) == unsigned(cancelled)
    assert [e["type"] for e in history(api, order_id)].count("cancelled") == 1
    # A cancelled order cannot ship.
    assert_error(ship(api, order_id, shipment_id), 409, "invalid_transition")
    assert level(api, west_sku, network["west"])["on_hand"] == 10


def test_a_channel_key_ships_and_cancels_its_own_orders_and_one_orders_shipment_is_unknown_on_another(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str], other_channel: dict[str, Any]
):
    sku = catalog.product("6.00")
    catalog.stock(sku, network["west"], 5)
    key = other_channel["key"]
    channel = other_channel["channel"]
    first = allocated_order(stack, api, order_body((sku, 1), channel=channel), key=key)
    second = allocated_order(stack, api, order_body((sku, 1), channel=channel), key=key)
    [first_shipment], [second_shipment] = first["shipments"], second["shipments"]

    assert_error(ship(api, first["id"], second_shipment["id"]), 404)
    assert_error(deliver(api, second["id"], first_shipment["id"]), 404)
    assert unsigned(get_order(api, first["id"])) == unsigned(first)
    assert unsigned(get_order(api, second["id"])) == unsigned(second)

    shipped = ship(api, first["id"], first_shipment["id"], key=key)
    cancelled = cancel(api, second["id"], key=key)

    assert shipped.status_code == 200 and shipped.json()["status"] == "shipped", shipped.text
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert history(api, second["id"])[-1]["actor"] == other_channel["id"]


# --- Edit -----------------------------------------------------------------------------------------------


@pytest.fixture
def paused(stack: EmbeddedStack) -> Iterator[EmbeddedStack]:
    """The outbox holds its records: orders placed meanwhile stay pending."""
    settle(stack)
    stack.pause_mappings()
    try:
        yield stack
    finally:
        stack.resume_mappings()


def test_a_pending_order_edited_is_priced_again_and_allocated_as_edited_and_one_cancelled_is_never_authorized(
    paused: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    """Before the workflow runs: a stale If-Match and an edit beyond the stock are refused and
    change nothing; an edit of the lines takes; another order is cancelled. Then the workflow
    authorizes and reserves the edited order's new lines, and leaves the cancelled one alone."""
    west = network["west"]
    kept, added = catalog.product("12.34"), catalog.product("3.33")
    catalog.stock(kept, west, 10)
    catalog.stock(added, west, 10)
    body = order_body((kept, 1), promo_codes=[])
    order = place(api, body)

    stale = patch(api, order["id"], {"shipping_method": "express"}, version=order["version"] + 1)
    older = patch(api, order["id"], {"shipping_method": "express"}, version=f'"{order["version"] - 1}"')
    beyond = patch(api, order["id"], {"lines": [{"sku": kept, "quantity": 11}]}, version=order["version"])

    assert_error(stale, 409, "version_conflict")
    assert_error(older, 409, "version_conflict")
    assert_error(beyond, 409, "insufficient_stock")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)

    new_lines = [{"sku": kept, "quantity": 3}, {"sku": added, "quantity": 2}]
    # What the server charges for those lines: the same body placed fresh, under another external
    # id, and cancelled while it is pending.
    reference = place(api, {**body, "external_id": unique("ext"), "lines": new_lines})
    withdrawn = cancel(api, reference["id"], reason="duplicate")
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "cancelled"

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
    # Only the edited order holds stock: the cancelled one reserved nothing.
    assert level(api, kept, west) == {"on_hand": 10, "reserved": 3, "available": 7}
    assert level(api, added, west) == {"on_hand": 10, "reserved": 2, "available": 8}

    # The workflow found the cancelled order closed and left it alone: never authorized.
    after = get_order(api, reference["id"])
    assert after == withdrawn.json()
    assert dec(after["payment"]["authorized"]) == 0 and after["payment"]["status"] != "authorized"
    assert after["allocations"] == [] and after["shipments"] == []
    assert [e["type"] for e in history(api, reference["id"])] == ["created", "cancelled"]
