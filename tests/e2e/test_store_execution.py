"""Changes after allocation and store execution over HTTP: an allocated order edited and sourced
again, a location rejecting its shipment so the order moves to another warehouse, and a pickup
readied at the store and collected. One stack for the module, its event sources on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, order_body, put_network, unsigned
from tests.e2e.conftest import workflow_stack
from tests.e2e.test_order_fulfillment import allocated_order, deliver, get_order, history, level, order_when, settle


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(scope="module")
def network(stack: EmbeddedStack) -> dict[str, str]:
    api = Api(stack.api_url, stack.admin_key)
    try:
        return put_network(api, store=True)
    finally:
        api.close()


def shipment_action(api: Api, order: dict[str, Any], action: str, **kwargs: Any):
    (shipment,) = order["shipments"]
    return api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", **kwargs)


def test_an_allocated_order_edited_is_sourced_again_and_moves_to_another_warehouse_when_it_rejects_the_shipment(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    west, east = network["west"], network["east"]
    sku = catalog.product("10.00")
    catalog.stock(sku, west, 10)
    order = allocated_order(stack, api, order_body((sku, 1)))
    assert level(api, sku, west)["reserved"] == 1
    # Only a pickup is made ready: this order ships.
    assert_error(shipment_action(api, order, "ready"), 409, "invalid_transition")
    assert unsigned(get_order(api, order["id"])) == unsigned(order)

    edited = api.request(
        "PATCH", f"/orders/{order['id']}", headers={"If-Match": str(order["version"])},
        json={"lines": [{"sku": sku, "quantity": 3}]},
    )  # fmt: skip

    assert edited.status_code == 200, edited.text
    body = edited.json()
    # The answer is the order once the replaced authorization was voided after the edit's write,
    # by when the workflow the edit started may have reserved its lines again (the local stack's
    # stream runs at once): `authorized` with nothing allocated, or already on its way back. The
    # edit's own move (allocated -> authorized) is the history's, below.
    assert body["lines"][0]["quantity"] == 3 and body["status"] in ("authorized", "allocated"), body
    assert body["payment"]["authorized"] == body["totals"]["grand_total"]
    settle(stack)
    again = order_when(api, order["id"], "allocated")
    assert [(a["location_id"], a["quantity"]) for a in again["allocations"]] == [(west, 3)]
    assert [s["location_id"] for s in again["shipments"]] == [west]
    assert level(api, sku, west) == {"on_hand": 10, "reserved": 3, "available": 7}
    edits = [e for e in history(api, order["id"]) if e["type"] == "edited"]
    assert [(e["from_status"], e["to_status"]) for e in edits] == [("allocated", "authorized")]

    stale = api.request(
        "PATCH", f"/orders/{order['id']}", headers={"If-Match": str(order["version"])},
        json={"shipping_method": "express"},
    )  # fmt: skip
    assert_error(stale, 409, "version_conflict")

    # The store rejects the shipment: the order moves to the other warehouse.
    catalog.stock(sku, east, 5)
    assert_error(shipment_action(api, again, "reject", json={}), 422, None, "reason")
    rejected = shipment_action(api, again, "reject", json={"reason": "damaged stock"})

    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "authorized"
    assert level(api, sku, west) == {"on_hand": 10, "reserved": 0, "available": 10}
    settle(stack)
    moved = order_when(api, order["id"], "allocated")
    assert [s["location_id"] for s in moved["shipments"]] == [east]
    assert level(api, sku, east) == {"on_hand": 5, "reserved": 3, "available": 2}
    (entry,) = [e for e in history(api, order["id"]) if e["type"] == "shipment_rejected"]
    assert (entry["detail"]["location_id"], entry["detail"]["reason"]) == (west, "damaged stock")
    # Rejected already: answered with the order, nothing changes.
    twice = shipment_action(api, again, "reject", json={"reason": "damaged stock"})
    assert twice.status_code == 200 and unsigned(twice.json()) == unsigned(get_order(api, order["id"]))


def test_a_pickup_is_readied_then_collected_and_paid_for_then(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    store = network["store"]
    sku = catalog.product("10.00")
    catalog.stock(sku, store, 4)
    order = allocated_order(stack, api, order_body((sku, 1), fulfillment={"type": "pickup", "location_id": store}))

    ready = shipment_action(api, order, "ready")

    assert ready.status_code == 200, ready.text
    (shipment,) = ready.json()["shipments"]
    assert shipment["status"] == "ready_for_pickup" and shipment["collect_by"] > shipment["ready_at"]
    assert ready.json()["payment"]["captured"]["amount"] == "0.00"
    assert_error(api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship"), 409, "invalid_transition")

    collected = deliver(api, order["id"], shipment["id"])

    assert collected.status_code == 200, collected.text
    done = collected.json()
    assert (done["status"], done["shipments"][0]["status"], done["payment"]["status"]) == (
        "delivered", "delivered", "captured",
    )  # fmt: skip
    assert done["payment"]["captured"] == done["totals"]["grand_total"]
    assert level(api, sku, store) == {"on_hand": 3, "reserved": 0, "available": 3}
