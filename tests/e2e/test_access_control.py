"""Access control over real HTTP, as journeys: a storefront's key from issue to audit, and the ways
a request is turned away. Each rule is checked request by request, for every route, in
tests/integration/test_access_control.py (the same gateway and handlers, in-process).

The module's stack runs with the authorizer cache off, so a revocation shows on the very next
request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, assert_error, order_body, unique

pytestmark = pytest.mark.e2e

CARD = "4111111111111111"


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


def test_a_storefront_key_places_and_reads_its_channels_orders_and_the_history_names_it(api: Api, sku: str):
    channel = f"web-{uuid.uuid4().hex[:12]}"
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


UNKNOWN_KEY = "Bearer oms_" + uuid.uuid4().hex


@pytest.mark.parametrize(
    "authorization", [None, UNKNOWN_KEY, "Basic YWRtaW46YWRtaW4="], ids=["none", "unknown", "basic"]
)
def test_a_request_without_a_valid_key_is_401(api: Api, authorization: str | None):
    headers = {"Authorization": authorization} if authorization else {}

    response = api.get("/orders", key=None, headers=headers)

    assert_error(response, 401, "unauthorized")


def test_a_revoked_key_is_401_on_the_very_next_request_though_the_gateway_cached_it(api: Api, stack: EmbeddedStack):
    assert {a.cache_seconds for a in stack.gateway.authorizers.values()} == {300}
    issued = issue(api, "orders:read")
    assert api.get("/orders", key=issued["key"]).status_code == 200  # its authorizer answer is cached now

    assert api.request("DELETE", f"/api-keys/{issued['id']}").status_code == 204

    assert_error(api.get("/orders", key=issued["key"]), 401, "unauthorized")


def test_a_read_only_key_cannot_place_an_order_and_nothing_is_stored(api: Api, sku: str):
    reader = issue(api, "orders:read")
    body = order_body((sku, 1))

    assert_error(api.post("/orders", json=body, key=reader["key"]), 403, "forbidden")
    assert api.orders_of(body["customer"]["id"]) == []


def test_another_channels_order_is_404_to_a_channel_bound_key(api: Api, sku: str):
    mine, theirs = f"web-{uuid.uuid4().hex[:12]}", f"web-{uuid.uuid4().hex[:12]}"
    storefront = issue(api, "orders:read", channel=mine)
    placed = api.post("/orders", json=order_body((sku, 1), channel=theirs))
    assert placed.status_code == 201, placed.text

    assert_error(api.get(f"/orders/{placed.json()['id']}", key=storefront["key"]), 404, "not_found")
    assert api.get(f"/orders/{placed.json()['id']}").status_code == 200  # the admin sees it


def test_a_card_number_in_an_order_is_refused_and_never_echoed(api: Api, sku: str):
    body = order_body((sku, 1), payment={"method": "test", "token": CARD})

    response = api.post("/orders", json=body)

    assert_error(response, 422, "card_data_rejected", "payment.token")
    assert CARD not in response.text
    assert api.orders_of(body["customer"]["id"]) == []
