"""Customers and reports over HTTP: orders placed and allocated reach today's top products and the
customer's totals within seconds; channel keys see their channel only (issue 14 items 4 and 5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, order_body, put_network, unique
from tests.e2e.conftest import workflow_stack

WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


def eventually(read: Any, done: Any) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.2)


def test_allocated_orders_reach_todays_top_products_and_the_customer(stack: EmbeddedStack, api: Api):
    network = put_network(api)
    catalog = Catalog(api)
    cheap, dear = catalog.product("4.00"), catalog.product("25.00")
    for sku in (cheap, dear):
        catalog.stock(sku, network["west"], 10)
    channel, customer_id, email = unique("shop"), unique("cus"), f"{unique('ada')}@example.com"
    customer = {"id": customer_id, "email": email, "name": "Ada Lovelace"}
    ids = []
    for lines in (((cheap, 3), (dear, 1)), ((cheap, 2),)):
        placed = api.post("/orders", json=order_body(*lines, channel=channel, customer=customer))
        assert placed.status_code == 201, placed.text
        ids.append(placed.json()["id"])
    today = datetime.now(UTC).date().isoformat()
    params = {"currency": "USD", "from": today, "to": today, "channel": channel}

    def top_products() -> list[dict[str, Any]]:
        response = api.get("/reports/top-products", params=params)
        assert response.status_code == 200, response.text
        return response.json()["items"]

    top = eventually(top_products, lambda items: sum(item["units"] for item in items) == 6)
    assert top == [
        {"sku": dear, "units": 1, "revenue": {"amount": "25.00", "currency": "USD"}},
        {"sku": cheap, "units": 5, "revenue": {"amount": "20.00", "currency": "USD"}},
    ]
    regions = api.get("/reports/top-regions", params={**params, "limit": 1}).json()["items"]
    assert len(regions) == 1 and regions[0]["orders"] == 2
    buyers = api.get("/reports/top-customers", params=params).json()["items"]
    assert [(b["customer_id"], b["orders"], b["revenue"]["amount"]) for b in buyers] == [(customer_id, 2, "45.00")]
    assert_error(api.get("/reports/top-products", params={"from": today}), 422)

    found = api.get(f"/customers/{customer_id}")
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["id"], body["email"], body["orders_count"], body["payment_failures"]) == (customer_id, email, 2, 0)
    assert body["totals"][0]["currency"] == "USD" and body["totals"][0]["refunded"]["amount"] == "0.00"
    assert body["first_order_at"] <= body["last_order_at"]
    by_email = api.get("/customers", params={"email": email.upper()})
    assert [c["id"] for c in by_email.json()["items"]] == [customer_id]

    # A key of another channel: the customer has no order there, so it is unknown to that key.
    other = api.post("/api-keys", json={"name": unique("k"), "scopes": ["orders:read", "reports:read"],
                                        "channel": unique("other")}).json()["key"]  # fmt: skip
    assert_error(api.get(f"/customers/{customer_id}", key=other), 404)
    assert api.get("/customers", params={"email": email}, key=other).json()["items"] == []
    assert_error(api.get("/reports/top-products", params=params, key=other), 403)
    own = api.post("/api-keys", json={"name": unique("k"), "scopes": ["orders:read"], "channel": channel}).json()["key"]
    assert api.get(f"/customers/{customer_id}", key=own).json()["orders_count"] == 2
    assert_error(api.get("/reports/top-products", params=params, key=own), 403)  # no reports:read
