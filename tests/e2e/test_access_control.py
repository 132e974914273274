"""Access control over real HTTP, as a journey: a storefront's key from issue to revocation. Each
rule is checked request by request, for every route, in tests/integration/test_access_control.py
(the same gateway and handlers, in-process): a request without a valid key (401), a key without the
scope (403), a card number in a body (422) are refused there, and nothing is stored.

The module's stack runs with the longest authorizer cache: a revocation shows on the very next
request all the same.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, assert_error, order_body, unique

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    # The longest authorizer cache: revocation must not wait for it (DELETE /api-keys flushes it).
    overrides = {"AuthorizerCacheSeconds": 300, "ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}
    with running_stack(api_port=0, aws_port=0, seed=False, parameter_overrides=overrides) as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: Api) -> str:
    (created,) = Catalog(api).stocked("19.99", on_hand=1000)
    return created


def issue(api: Api, *scopes: str, channel: str | None = None) -> dict:
    body = {"name": unique("key"), "scopes": list(scopes), **({"channel": channel} if channel else {})}
    response = api.post("/api-keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_storefront_key_places_and_reads_its_channels_orders_not_another_channels_and_once_revoked_is_401(
    api: Api, stack: EmbeddedStack, sku: str
):
    assert {a.cache_seconds for a in stack.gateway.authorizers.values()} == {300}
    channel, other = f"web-{uuid.uuid4().hex[:12]}", f"web-{uuid.uuid4().hex[:12]}"
    storefront = issue(api, "orders:write", "orders:read", channel=channel)
    assert re.fullmatch(r"oms_[A-Za-z0-9_-]{22,}", storefront["key"])

    placed = api.post("/orders", json=order_body((sku, 1), channel=channel), key=storefront["key"])
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    read = api.get(f"/orders/{order_id}", key=storefront["key"])
    history = api.get(f"/orders/{order_id}/history", key=storefront["key"])
    listed = api.get("/orders", key=storefront["key"], params={"limit": 100})

    assert read.status_code == 200 and read.json()["channel"] == channel
    assert history.json()["items"][0]["actor"] == storefront["id"]
    assert {order["channel"] for order in listed.json()["items"]} == {channel}
    keys = api.get("/api-keys", params={"limit": 100}).text
    assert storefront["key"] not in keys  # listed without its secret

    # Another channel's order, placed by the admin: unknown to the storefront, there for the admin.
    theirs = api.post("/orders", json=order_body((sku, 1), channel=other))
    assert theirs.status_code == 201, theirs.text
    assert_error(api.get(f"/orders/{theirs.json()['id']}", key=storefront["key"]), 404, "not_found")
    assert api.get(f"/orders/{theirs.json()['id']}").status_code == 200

    # The storefront's allow is in the authorizer's cache now; revoked, it is 401 on the next request.
    assert api.request("DELETE", f"/api-keys/{storefront['id']}").status_code == 204

    assert_error(api.get(f"/orders/{order_id}", key=storefront["key"]), 401, "unauthorized")
