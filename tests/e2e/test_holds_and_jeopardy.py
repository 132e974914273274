"""Review holds and jeopardy end to end, on a stack whose review threshold is USD 500, whose
orders may stay allocated for one second, and whose jeopardy scan runs every second: a high-value
order waits on hold for review (its workflow ends at the hold: nothing is authorized or reserved)
and after a release goes on by itself (Orders stream → outbox → a new execution) to allocated; an
order left allocated appears in GET /orders?jeopardy=true and leaves it when it ships."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, order_body, put_network
from tests.e2e.conftest import PARAMETERS

SETTLE_SECONDS = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    os.environ["OMS_JEOPARDY_SCAN_SECONDS"] = "1"
    try:
        with running_stack(
            api_port=0, aws_port=0, seed=False, event_sources=True, retry_delay_scale=0.01,
            parameter_overrides={**PARAMETERS, "ReviewThreshold": "USD:500.00", "Sla": "allocated=1s"},
        ) as started:  # fmt: skip
            yield started
    finally:
        del os.environ["OMS_JEOPARDY_SCAN_SECONDS"]


@pytest.fixture(autouse=True)
def only_granted_calls(stack: EmbeddedStack) -> Iterator[None]:
    """Every call each function makes in a test (the backorder function's, the scheduled scans') is
    one the template grants it, by table, index, key and action: moto lets through what AWS refuses."""
    from tests.template_iam import only_granted_calls as checked

    with checked(
        stack, expected=("JeopardyScanFunction",), settle_seconds=2
    ):  # the scan runs every second: never idle for long
        yield


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    try:
        yield client
    finally:
        client.close()


def settle(stack: EmbeddedStack) -> None:
    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"


def order_when(api: Api, order_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        order = api.get(f"/orders/{order_id}").json()
        if order["status"] == status:
            return order
        assert time.monotonic() < deadline, f"order {order_id} is {order['status']}, not {status}"
        time.sleep(0.05)


def test_a_high_value_order_waits_for_review_and_goes_on_after_release(stack: EmbeddedStack, api: Api):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("300.00")
    catalog.stock(sku, network["west"], 5)
    small = api.post("/orders", json=order_body((sku, 1))).json()
    placed = api.post("/orders", json=order_body((sku, 2)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]

    assert placed.json()["status"] == "on_hold"
    assert placed.json()["hold"]["reason"] == "fraud_review"
    settle(stack)
    assert order_when(api, small["id"], "allocated")["hold"] is None  # under the threshold: no review
    waiting = api.get(f"/orders/{order_id}").json()
    assert (waiting["status"], waiting["payment"]["status"], waiting["allocations"]) == ("on_hold", "pending", [])
    created, held = api.get(f"/orders/{order_id}/history").json()["items"]
    assert (created["type"], created["to_status"]) == ("created", "pending")
    assert (held["type"], held["actor"], held["detail"]["reason"]) == ("on_hold", "review_rules", "fraud_review")

    released = api.post(f"/orders/{order_id}/release", json={"note": "customer verified by phone"})
    assert released.status_code == 200, released.text

    allocated = order_when(api, order_id, "allocated")
    settle(stack)
    assert allocated["hold"] is None and allocated["payment"]["status"] == "authorized"
    assert allocated["payment"]["authorized"] == allocated["totals"]["grand_total"]
    types = [entry["type"] for entry in api.get(f"/orders/{order_id}/history").json()["items"]]
    assert types.count("payment_authorized") == 1 and types.index("released") < types.index("payment_authorized")
    shipment = allocated["shipments"][0]["id"]
    shipped = api.post(f"/orders/{order_id}/shipments/{shipment}/ship")
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["payment"]["captured"] == allocated["totals"]["grand_total"]


def late_ids(api: Api) -> list[str]:
    response = api.get("/orders", params={"jeopardy": "true", "limit": 100})
    assert response.status_code == 200, response.text
    return [order["id"] for order in response.json()["items"]]


def test_an_order_left_allocated_past_its_deadline_is_in_the_jeopardy_list_until_it_ships(
    stack: EmbeddedStack, api: Api
):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("20.00")
    catalog.stock(sku, network["west"], 5)
    order_id = api.post("/orders", json=order_body((sku, 1))).json()["id"]
    order_when(api, order_id, "allocated")

    deadline = time.monotonic() + SETTLE_SECONDS
    while order_id not in late_ids(api):  # the scan runs every second here (every 5 minutes on AWS)
        assert time.monotonic() < deadline, "the order never appeared in the jeopardy list"
        time.sleep(0.2)

    late = api.get(f"/orders/{order_id}").json()
    assert late["status"] == "allocated"
    assert (late["jeopardy"]["status"], late["jeopardy"]["reason"]) == ("allocated", "allocated for longer than 1s")
    entry = api.get(f"/orders/{order_id}/history").json()["items"][-1]
    assert (entry["type"], entry["actor"]) == ("jeopardy", "jeopardy_scan")

    shipped = api.post(f"/orders/{order_id}/shipments/{late['shipments'][0]['id']}/ship")
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["jeopardy"] is None  # leaving the late status clears the mark
    assert order_id not in late_ids(api)
