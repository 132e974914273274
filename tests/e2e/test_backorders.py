"""Backorders over HTTP on the local stack, with the order workflow and the Inventory stream running:
orders short of a backorderable product wait `backordered`, listed by `GET
/orders?status=backordered`; units added with an adjustment allocate the oldest, a sourcing rules
change that frees units allocates the order waiting for them, and the units a cancelled order
releases allocate the next one; a purchase order's receipt, and a draft a reorder point made once
submitted, allocate the orders waiting for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, money, order_body, put_network, unique
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 30


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(autouse=True)
def only_granted_calls(stack: EmbeddedStack) -> Iterator[None]:
    """Every call each function makes in a test (the backorder function's, the scheduled scans') is
    one the template grants it, by table, index, key and action: moto lets through what AWS refuses."""
    from tests.template_iam import only_granted_calls as checked

    with checked(stack, expected=("BackorderFunction",)):
        yield


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    try:
        yield client
    finally:
        client.close()


def settled(api: Api, order_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        order = api.get(f"/orders/{order_id}").json()
        if order["status"] == status:
            return order
        assert time.monotonic() < deadline, f"{order_id} is {order['status']}, not {status}"
        time.sleep(0.1)


def units(order: dict[str, Any]) -> int:
    return sum(allocation["quantity"] for allocation in order["allocations"])


def test_backordered_orders_allocate_themselves_oldest_first_as_units_arrive_rules_free_them_or_a_cancel_releases(
    api: Api,
):
    """Orders short of a backorderable product wait `backordered`, holding what they could, and
    are listed; units added with an adjustment allocate the oldest; a sourcing rules change that
    frees units where they lie allocates the order waiting for them (nothing arrives: the change
    wakes it); the units a cancelled order releases allocate the next one."""
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("30.00", allow_backorder=True)
    far = catalog.location()
    assert api.put("/sourcing/rules", json={"prefer": "nearest", "excluded_locations": [far]}).ok
    try:
        catalog.stock(sku, network["west"], 1)
        catalog.stock(sku, far, 2)  # units where no order may take them
        channel = unique("pre")

        first = api.post("/orders", json=order_body((sku, 3), channel=channel)).json()["id"]
        first_waiting = settled(api, first, "backordered")
        second = api.post("/orders", json=order_body((sku, 2), channel=channel)).json()["id"]
        second_waiting = settled(api, second, "backordered")

        assert (units(first_waiting), units(second_waiting)) == (1, 0)
        assert first_waiting["shipments"] == [] and first_waiting["payment"]["status"] == "authorized"
        listed = api.get("/orders", params={"status": "backordered", "channel": channel}).json()["items"]
        assert [order["id"] for order in listed] == [second, first]  # newest first, as every list
        history = api.get(f"/orders/{first}/history").json()["items"]
        assert [e["to_status"] for e in history if e["to_status"]] == ["pending", "authorized", "backordered"]

        added = api.post(f"/inventory/{sku}/{network['east']}/adjustments", json={"delta": 2, "reason": "receipt"})
        assert added.status_code == 200, added.text

        allocated = settled(api, first, "allocated")
        assert units(allocated) == 3 and {s["location_id"] for s in allocated["shipments"]} == set(network.values())
        assert api.get(f"/orders/{second}").json()["status"] == "backordered"

        assert api.put("/sourcing/rules", json={"prefer": "nearest"}).ok  # nothing arrives: the change wakes it

        allocated = settled(api, second, "allocated")
        assert units(allocated) == 2 and [s["location_id"] for s in allocated["shipments"]] == [far]
        third = api.post("/orders", json=order_body((sku, 2), channel=channel)).json()["id"]
        assert units(settled(api, third, "backordered")) == 0

        cancelled = api.post(f"/orders/{first}/cancel", json={"reason": "customer_request"})
        assert cancelled.status_code == 200, cancelled.text

        allocated = settled(api, third, "allocated")
        assert units(allocated) == 2
        stock = api.get(f"/inventory/{sku}").json()
        assert (
            sum(loc["on_hand"] for loc in stock["locations"]),
            sum(loc["reserved"] for loc in stock["locations"]),
        ) == (5, 4)
        assert api.get("/orders", params={"status": "backordered", "channel": channel}).json()["items"] == []
    finally:
        api.put("/sourcing/rules", json={"prefer": "nearest"})


def stock_at(api: Api, sku: str, location_id: str) -> dict[str, Any]:
    return {loc["location_id"]: loc for loc in api.get(f"/inventory/{sku}").json()["locations"]}[location_id]


def every_vendor(api: Api) -> list[dict[str, Any]]:
    """GET /vendors a page of two at a time, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.get("/vendors", params=params)
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        if page.json()["next_cursor"] is None:
            return items
        params["cursor"] = page.json()["next_cursor"]


def test_a_buyer_orders_from_a_vendor_a_receipt_allocates_the_order_waiting_and_a_cancel_gives_up_the_rest(api: Api):
    """The vendors, listed a page at a time; a purchase order read by id and listed by vendor and
    status; the order waiting for its sku says when units are expected, in the list too; a partial
    receipt allocates it; a cancel gives up the units not arrived, sent again answers as it is, and
    the PO takes no receipt after it."""
    network = put_network(api)
    sku = Catalog(api).product("30.00", allow_backorder=True)
    east = network["east"]
    vendors = [unique("vendor") for _ in range(3)]  # more than a page of two holds
    for vendor in vendors:
        assert api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 5}).status_code == 201
    replaced = api.put(f"/vendors/{vendor}", json={"name": "Acme Ltd", "email": "po@acme.example", "lead_time_days": 3})
    assert replaced.status_code == 200, replaced.text
    listed = {v["vendor_id"]: v for v in every_vendor(api)}
    assert [listed[v]["name"] for v in vendors] == ["Acme", "Acme", "Acme Ltd"] and listed[vendor] == replaced.json()
    channel = unique("po")
    waiting = api.post("/orders", json=order_body((sku, 2), channel=channel)).json()["id"]
    backordered = settled(api, waiting, "backordered")
    line_id = backordered["lines"][0]["line_id"]
    assert backordered["awaiting_stock"] == {
        "lines": [{"line_id": line_id, "sku": sku, "waiting_quantity": 2, "expected_at": None}]
    }

    lines = [{"sku": sku, "quantity": 3, "unit_cost": money("12.00")}]
    created = api.post("/purchase-orders", json={"vendor_id": vendor, "location_id": east, "lines": lines})
    assert created.status_code == 201, created.text
    po = created.json()
    assert po["status"] == "open"
    assert api.get(f"/purchase-orders/{po['id']}").json() == po
    assert api.get("/purchase-orders", params={"vendor_id": vendor}).json()["items"] == [po]
    assert api.get("/purchase-orders", params={"vendor_id": vendor, "status": "cancelled"}).json()["items"] == []
    stock = stock_at(api, sku, east)
    assert (stock["on_hand"], stock["incoming"], stock["next_expected_at"]) == (0, 3, po["expected_at"])
    # The order now says when it is expected, in the list too.
    expected = [{"line_id": line_id, "sku": sku, "waiting_quantity": 2, "expected_at": po["expected_at"]}]
    assert api.get(f"/orders/{waiting}").json()["awaiting_stock"] == {"lines": expected}
    listed = api.get("/orders", params={"status": "backordered", "channel": channel}).json()["items"]
    assert [(o["id"], o["awaiting_stock"]) for o in listed] == [(waiting, {"lines": expected})]

    received = api.post(f"/purchase-orders/{po['id']}/receive", json={"lines": [{"sku": sku, "quantity": 2}]},
                        headers={"Idempotency-Key": unique("receipt")})  # fmt: skip
    assert received.status_code == 200, received.text
    assert received.json()["status"] == "partially_received"

    allocated = settled(api, waiting, "allocated")
    assert units(allocated) == 2 and {s["location_id"] for s in allocated["shipments"]} == {east}
    assert allocated["awaiting_stock"] is None
    stock = stock_at(api, sku, east)
    assert (stock["on_hand"], stock["reserved"], stock["incoming"]) == (2, 2, 1)

    cancelled = api.post(f"/purchase-orders/{po['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert api.post(f"/purchase-orders/{po['id']}/cancel").json() == cancelled.json()  # sent again: as it is
    receipt = {"lines": [{"sku": sku, "quantity": 1}]}
    assert_error(api.post(f"/purchase-orders/{po['id']}/receive", json=receipt), 409, "invalid_transition")
    stock = stock_at(api, sku, east)
    assert (stock["on_hand"], stock["incoming"], stock["next_expected_at"]) == (2, 0, None)
    listed = api.get("/purchase-orders", params={"vendor_id": vendor, "status": "cancelled"}).json()["items"]
    assert listed == [cancelled.json()]


def drafts_of(api: Api, vendor: str) -> list[dict[str, Any]]:
    return api.get("/purchase-orders", params={"status": "draft", "vendor_id": vendor}).json()["items"]


def test_a_reorder_point_drafts_a_po_that_once_submitted_and_received_allocates_a_backorder_and_is_cleared(api: Api):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("30.00", allow_backorder=True)
    east = network["east"]
    catalog.stock(sku, east, 4)
    vendor = unique("vendor")
    assert api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 5}).status_code == 201
    point = {"reorder_point": 3, "reorder_quantity": 10, "vendor_id": vendor}
    assert api.put(f"/inventory/{sku}/{east}/reorder", json=point).status_code == 200

    first = api.post("/orders", json=order_body((sku, 2), channel=unique("rop"))).json()["id"]
    settled(api, first, "allocated")  # available 4 -> 2: below the point of 3
    deadline = time.monotonic() + SETTLE_SECONDS
    while not (drafts := drafts_of(api, vendor)):
        assert time.monotonic() < deadline, "no draft purchase order appeared"
        time.sleep(0.1)
    [draft] = drafts
    assert (draft["location_id"], draft["lines"]) == (
        east,
        [{"sku": sku, "quantity": 10, "received_quantity": 0, "unit_cost": None}],
    )
    waiting = api.post("/orders", json=order_body((sku, 5), channel=unique("rop"))).json()["id"]
    settled(api, waiting, "backordered")  # holds the 2 left and waits for 3

    assert_error(api.post(f"/purchase-orders/{draft['id']}/submit"), 422, "unpriced_lines")
    prices = {"lines": [{"sku": sku, "unit_cost": {"amount": "12.00", "currency": "USD"}}]}
    submitted = api.post(f"/purchase-orders/{draft['id']}/submit", json=prices)
    assert submitted.status_code == 200, submitted.text
    assert (submitted.json()["status"], submitted.json()["lines"][0]["quantity"]) == ("open", 10)
    stock = {loc["location_id"]: loc for loc in api.get(f"/inventory/{sku}").json()["locations"]}[east]
    assert (stock["incoming"], stock["reorder"]["reorder_point"]) == (10, 3)

    received = api.post(f"/purchase-orders/{draft['id']}/receive", json={"lines": [{"sku": sku, "quantity": 10}]})
    assert received.status_code == 200, received.text

    assert units(settled(api, waiting, "allocated")) == 5
    assert drafts_of(api, vendor) == []  # the fall to 0 was below the point already: no second crossing
    assert stock_at(api, sku, east)["reorder"] == {**point, "unit_cost": None}
    assert api.request("DELETE", f"/inventory/{sku}/{east}/reorder").status_code == 204
    assert stock_at(api, sku, east)["reorder"] is None
