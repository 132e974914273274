"""Sourcing rules and what-if over HTTP on the local stack with the order workflow running: a rules
change decides the next allocation and its version is in the order's history; a planner compares
two rule sets on 100 orders with one simulate call each, and nothing is reserved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, order_body, put_network
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 10
SAN_FRANCISCO = {"latitude": 37.79, "longitude": -122.40}


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


def allocated(api: Api, order_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        order = api.get(f"/orders/{order_id}").json()
        if order["status"] == "allocated" or time.monotonic() > deadline:
            assert order["status"] == "allocated", order["status"]
            return order
        time.sleep(0.05)


def test_rules_decide_the_next_allocation_and_a_simulation_compares_two_rule_sets(
    stack: EmbeddedStack, api: Api, catalog: Catalog
):
    network = put_network(api)
    west, east = network["west"], network["east"]
    tee, mug = catalog.product("10.00"), catalog.product("8.00")
    catalog.stock(tee, west, 500)
    catalog.stock(tee, east, 500)
    catalog.stock(mug, east, 500)

    # 100 orders for a planner: nearest per line ships T-shirts from the west, mugs from the east
    bodies = [order_body((tee, 1), (mug, 1)) for _ in range(100)]
    for body in bodies:
        body["shipping_address"].update(SAN_FRANCISCO)
    nearest = api.post("/sourcing/simulate", json={"orders": bodies})
    fewest = api.post("/sourcing/simulate", json={"orders": bodies, "rules": {"prefer": "fewest_shipments"}})

    assert nearest.status_code == 200 and fewest.status_code == 200, (nearest.text, fewest.text)
    n, f = nearest.json()["summary"], fewest.json()["summary"]
    assert (n["orders"], n["shipments"], n["unfillable_units"]) == (100, 200, 0)
    assert (f["orders"], f["shipments"], f["unfillable_units"]) == (100, 100, 0)
    assert n["mean_distance_km"] < f["mean_distance_km"]
    assert all(level["reserved"] == 0 for level in api.get(f"/inventory/{tee}").json()["locations"])

    # the planner adopts fewest_shipments: the next order ships whole from the east, and says why
    adopted = api.put("/sourcing/rules", json={"prefer": "fewest_shipments"})
    assert adopted.status_code == 200, adopted.text
    placed = api.post("/orders", json=bodies[0])
    assert placed.status_code == 201, placed.text
    order = allocated(api, placed.json()["id"])

    assert {s["location_id"] for s in order["shipments"]} == {east}
    entries = api.get(f"/orders/{order['id']}/history").json()["items"]
    [reserved] = [e for e in entries if e["type"] == "stock_reserved"]
    assert reserved["detail"]["sourcing_rules_version"] == adopted.json()["version"]


def test_the_rules_in_force_and_every_version_before_them_are_read_back(stack: EmbeddedStack, api: Api):
    """GET /sourcing/rules and its history, a page at a time; an editor's stale If-Match is 409.
    It leaves `prefer: nearest` in force, as the defaults have it."""
    current = api.get("/sourcing/rules")
    assert current.status_code == 200, current.text
    first = api.put("/sourcing/rules", json={"prefer": "nearest", "max_shipments": 2},
                    headers={"If-Match": str(current.json()["version"])})  # fmt: skip
    assert first.status_code == 200, first.text
    second = api.put("/sourcing/rules", json={"prefer": "nearest"}, headers={"If-Match": str(first.json()["version"])})
    assert second.status_code == 200, second.text
    assert second.json()["version"] == first.json()["version"] + 1
    assert api.get("/sourcing/rules").json() == second.json()

    stale = api.put(
        "/sourcing/rules", json={"prefer": "fewest_shipments"}, headers={"If-Match": str(first.json()["version"])}
    )
    assert_error(stale, 409, "version_conflict", "If-Match")
    assert api.get("/sourcing/rules").json() == second.json()

    newest = api.get("/sourcing/rules/history", params={"limit": 1}).json()
    assert newest["items"] == [second.json()] and newest["next_cursor"] is not None
    before = api.get("/sourcing/rules/history", params={"limit": 1, "cursor": newest["next_cursor"]}).json()
    assert before["items"] == [first.json()]
