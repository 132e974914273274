"""Thirty customers race for five units: exactly five orders are allocated, never one unit more.

The five units are split 3 + 2 across two warehouses. Each order is placed from its own thread
with its own HTTP session; an order either passes the capture check and then wins or loses the
reservation in the workflow (cancelled, out_of_stock, authorization voided), or is refused at
capture (409 insufficient_stock) once the winners have reserved everything. While the race runs a
watcher reads the sku's inventory again and again: it must never be oversold.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, order_body, put_network, unique
from tests.e2e.conftest import workflow_stack

ORDERS = 30
UNITS = {"west": 3, "east": 2}
SETTLED = ("allocated", "cancelled", "payment_failed")  # where an order leaves the workflow


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(scope="module")
def scene(stack: EmbeddedStack) -> dict[str, Any]:
    api = Api(stack.api_url, stack.admin_key)
    try:
        locations = put_network(api)
        sku = f"RACE-{unique('sku').upper()}"
        response = api.put(
            f"/products/{sku}", json={"name": "Last few", "price": {"amount": "49.00", "currency": "USD"}}
        )
        assert response.status_code == 201, response.text
        for name, units in UNITS.items():
            response = api.put(f"/inventory/{sku}/{locations[name]}", json={"on_hand": units})
            assert response.status_code == 200, response.text
        return {"sku": sku, "locations": locations, "channel": unique("race")}
    finally:
        api.close()


def until_settled(stack: EmbeddedStack, channel: str, order_ids: list[str], timeout: float = 120) -> bool:
    """True once no execution is running and every order placed has left the workflow. The orders
    are read only while no execution runs, and in one listing of the race's channel rather than
    one read per order (30 reads every tenth of a second took the CPU the workflows needed)."""
    api = Api(stack.api_url, stack.admin_key)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not stack.running_executions():
                statuses = {order["id"]: order["status"] for order in api.list_all({"channel": channel})}
                if all(statuses.get(order_id) in SETTLED for order_id in order_ids):
                    return True
            time.sleep(0.1)
        return False
    finally:
        api.close()


def test_thirty_orders_for_five_units_allocate_exactly_five(stack: EmbeddedStack, scene: dict[str, Any]):
    sku, channel = scene["sku"], scene["channel"]
    start = threading.Barrier(ORDERS)
    racing = threading.Event()
    racing.set()
    observed: list[dict[str, Any]] = []

    def watch() -> None:
        watcher = Api(stack.api_url, stack.admin_key)
        try:
            while racing.is_set():
                response = watcher.get(f"/inventory/{sku}")
                assert response.status_code == 200, response.text
                observed.append(response.json())
                time.sleep(0.01)
        finally:
            watcher.close()

    def buy(index: int) -> tuple[int, dict[str, Any]]:
        client = Api(stack.api_url, stack.admin_key)  # its own session and connection
        try:
            body = order_body((sku, 1), channel=channel, external_id=f"race-{index:02d}")
            start.wait(timeout=30)
            response = client.post("/orders", json=body)
            return response.status_code, response.json()
        finally:
            client.close()

    watcher = threading.Thread(target=watch, name="inventory-watcher", daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=ORDERS) as pool:
            answers = list(pool.map(buy, range(ORDERS)))
        placed = [body["id"] for status, body in answers if status == 201]
        # The watcher's reads are invocations too, so wait_until_idle() would never see the
        # stack quiet while it runs: watch until every order has left the workflow instead.
        assert until_settled(stack, channel, placed), "the workflows did not settle"
    finally:
        racing.clear()
        watcher.join(timeout=10)
    assert stack.wait_until_idle(20), "the stack did not settle"

    api = Api(stack.api_url, stack.admin_key)
    try:
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {201, 409}, answers
        refused = [body for status, body in answers if status == 409]
        for body in refused:
            assert body["error"]["code"] == "insufficient_stock", body
        orders = [api.get(f"/orders/{body['id']}").json() for status, body in answers if status == 201]
        by_status = Counter(order["status"] for order in orders)
        allocated = [order for order in orders if order["status"] == "allocated"]
        cancelled = [order for order in orders if order["status"] == "cancelled"]

        assert len(allocated) == sum(UNITS.values()), by_status
        assert len(allocated) + len(cancelled) + len(refused) == ORDERS, (by_status, statuses)
        # Every order placed is accounted for by the API's own listing of the channel.
        listed = api.list_all({"channel": channel})
        assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in orders)

        for order in cancelled:
            assert order["payment"]["status"] == "voided", order["payment"]
            assert order["allocations"] == [] and order["shipments"] == []
            *_, last, voided = api.get(f"/orders/{order['id']}/history").json()["items"]
            assert (last["type"], last["actor"], last["detail"]["reason"]) == ("cancelled", "workflow", "out_of_stock")
            assert voided["type"] == "payment_voided"
        for order in allocated:
            assert order["payment"]["status"] == "authorized"
            [shipment] = order["shipments"]
            assert shipment["status"] == "pending"

        allocations = [a for order in allocated for a in order["allocations"]]
        assert sum(a["quantity"] for a in allocations) == sum(UNITS.values())
        per_location = Counter()
        for allocation in allocations:
            per_location[allocation["location_id"]] += allocation["quantity"]
        assert per_location == {scene["locations"][name]: units for name, units in UNITS.items()}

        inventory = api.get(f"/inventory/{sku}").json()
        assert inventory["available"] == 0
        assert sum(level["reserved"] for level in inventory["locations"]) == sum(UNITS.values())
        for level in inventory["locations"]:
            assert level["reserved"] == level["on_hand"] and level["available"] == 0, inventory
    finally:
        api.close()

    # Never oversold, not even for a moment.
    assert observed, "the watcher saw nothing"
    for seen in observed:
        assert seen["available"] >= 0, seen
        assert seen["available"] == sum(level["available"] for level in seen["locations"]), seen
        for level in seen["locations"]:
            assert 0 <= level["reserved"] <= level["on_hand"], seen
            assert level["available"] == level["on_hand"] - level["reserved"], seen
