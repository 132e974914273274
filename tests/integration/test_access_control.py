"""Access control, request by request: API keys, scopes, channel isolation, server-owned fields
and card data, through the in-process gateway (the local gateway's routing, the real authorizer and
API handlers, on moto). tests/e2e/test_access_control.py walks the same rules as HTTP journeys.

The module's account runs with the authorizer cache off, so a revocation shows on the very next
request; one test asks for the longest cache (300 s) instead (an indirect parameter of `api`, so
pytest ends this module's account before starting that one: two moto mocks never overlap).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from core.access import Scope
from infra.local.template import Template
from tests.e2e.client import Catalog, assert_error, location_body, money, order_body, set_path, unique, unsigned
from tests.integration.in_process import (
    Answer,
    InProcessApi,
    allocated,
    in_process_api_with_labels,
    returns_run_inline,
)
from tests.integration.test_catalog_inventory import every_location

CACHE_OFF = {"AuthorizerCacheSeconds": 0}
LONG_CACHE = {"AuthorizerCacheSeconds": 300}  # the longest the template allows

PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs")}
UNKNOWN_ORDER = "ord_" + "a" * 24
CARD = "4111111111111111"
ALL_SCOPES = [scope.value for scope in Scope]  # every scope there is, as API.md lists them


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest) -> Iterator[InProcessApi]:
    # With a labels bucket: the location-bound keys' parcels are booked by the order workflow's steps.
    with in_process_api_with_labels(**getattr(request, "param", CACHE_OFF)) as started:
        yield started


# --- Keys -------------------------------------------------------------------------------------


def issue(
    api: InProcessApi, *scopes: str, channel: str | None = None, name: str | None = None,
    location_ids: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"name": name or unique("key"), "scopes": list(scopes)}
    if channel is not None:
        body["channel"] = channel
    if location_ids is not None:
        body["location_ids"] = location_ids
    response = api.post("/api-keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def all_keys(api: InProcessApi) -> tuple[list[dict[str, Any]], str]:
    """Every key the admin can list (following cursors), and the raw text of every page."""
    items: list[dict[str, Any]] = []
    texts: list[str] = []
    cursor = None
    for _ in range(100):
        response = api.get("/api-keys", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        texts.append(response.text)
        items.extend(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items, "".join(texts)
    raise AssertionError("GET /api-keys never ended")


@pytest.fixture
def catalog(api: InProcessApi) -> Catalog:
    """Products, locations and stock of this test only."""
    return Catalog(api)


@pytest.fixture(scope="module")
def reader(api: InProcessApi) -> dict[str, Any]:
    """A read-only key: orders:read and nothing else."""
    return issue(api, "orders:read")


@pytest.fixture(scope="module")
def channel_a() -> str:
    return f"web-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def storefront(api: InProcessApi, channel_a: str) -> dict[str, Any]:
    """A storefront's key: places and reads orders of channel A only."""
    return issue(api, "orders:write", "orders:read", channel=channel_a)


@pytest.fixture(scope="module")
def revoked(api: InProcessApi) -> dict[str, Any]:
    key = issue(api, "orders:read", "orders:write", "catalog:write", "inventory:write")
    assert api.request("DELETE", f"/api-keys/{key['id']}").status_code == 204
    return key


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    """A product with 1000 units at a shipping warehouse, for the orders of this module."""
    (created,) = Catalog(api).stocked("19.99", on_hand=1000)
    return created


# --- 1. Issuing, listing and revoking keys ------------------------------------------------------


def test_an_admin_issues_a_key_whose_random_secret_is_shown_once(api: InProcessApi):
    first = api.post("/api-keys", json={"name": "Web storefront", "scopes": ["orders:write", "orders:read"]})
    second = api.post("/api-keys", json={"name": "Web storefront", "scopes": ["orders:write", "orders:read"]})

    assert first.status_code == 201, first.text
    issued = first.json()
    assert {"id", "name", "scopes", "channel", "key"} <= set(issued)
    assert issued["id"].startswith("key_")
    assert issued["name"] == "Web storefront"
    assert sorted(issued["scopes"]) == ["orders:read", "orders:write"]
    assert issued["channel"] is None
    assert issued["location_ids"] is None
    # At least 128 random bits: 22 url-safe base64 characters after the prefix.
    assert re.fullmatch(r"oms_[A-Za-z0-9_-]{22,}", issued["key"]), issued["key"]
    assert second.status_code == 201, second.text
    assert second.json()["key"] != issued["key"]
    assert second.json()["id"] != issued["id"]
    assert api.get("/orders", key=issued["key"]).status_code == 200


def test_a_key_bound_to_a_channel_says_so(api: InProcessApi, channel_a: str):
    issued = issue(api, "orders:write", channel=channel_a)

    assert issued["channel"] == channel_a
    assert issued["scopes"] == ["orders:write"]


def test_listing_keys_never_shows_a_secret_or_its_hash(api: InProcessApi):
    issued = issue(api, "orders:read")

    items, text = all_keys(api)

    listed = [item for item in items if item["id"] == issued["id"]]
    assert len(listed) == 1
    assert listed[0]["name"] == issued["name"]
    assert listed[0]["scopes"] == issued["scopes"]
    for item in items:
        assert not {"key", "secret", "hash", "secret_hash"} & set(item), item
    assert issued["key"] not in text
    assert hashlib.sha256(issued["key"].encode()).hexdigest() not in text
    assert api.admin_key not in text


def test_a_revoked_key_is_401_on_the_very_next_request(api: InProcessApi):
    issued = issue(api, "orders:read")
    assert api.get("/orders", key=issued["key"]).status_code == 200

    revoked_now = api.request("DELETE", f"/api-keys/{issued['id']}")

    assert revoked_now.status_code == 204, revoked_now.text
    assert revoked_now.content == b""
    assert_error(api.get("/orders", key=issued["key"]), 401, "unauthorized")
    listed = next(item for item in all_keys(api)[0] if item["id"] == issued["id"])
    assert listed["revoked_at"] is not None


def test_a_key_revoked_while_its_issue_is_being_stored_is_409_and_never_works(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # GET /api-keys lists a key once its record is stored, a moment before its secret's lookup is:
    # another admin revoking it in that moment left the lookup written after it unrevoked, for good.
    from functions.api.dependencies import container

    keys = container().api_keys._keys
    put_item, revoked = keys._client.put_item, {}

    def then_revoked(**request: Any) -> Any:
        answer = put_item(**request)
        if request["Item"]["pk"]["S"] == "APIKEYS" and not revoked:
            key_id = request["Item"]["sk"]["S"]
            revoked[key_id] = api.request("DELETE", f"/api-keys/{key_id}")
        return answer

    monkeypatch.setattr(keys._client, "put_item", then_revoked)
    refused = api.post("/api-keys", json={"name": unique("key"), "scopes": ["orders:read"]})
    monkeypatch.undo()

    ((key_id, deleted),) = revoked.items()
    assert deleted.status_code == 204, deleted.text
    assert_error(refused, 409, "api_key_replaced")  # no secret: it would never have worked
    listed = next(item for item in all_keys(api)[0] if item["id"] == key_id)
    assert listed["revoked_at"] is not None


def test_a_key_says_which_key_issued_it_and_which_revoked_it(api: InProcessApi, caplog: pytest.LogCaptureFixture):
    """An admin key can mint more admin keys and revoke any other: who did it is on the key (as a
    webhook's `created_by` is), and logged, since API Gateway's access log names the route, not the key."""
    caplog.set_level(logging.INFO)
    deputy = issue(api, "admin")
    minted = api.post("/api-keys", json={"name": "minted", "scopes": ["orders:read"]}, key=deputy["key"])
    assert minted.status_code == 201, minted.text
    minted_id = minted.json()["id"]

    assert api.request("DELETE", f"/api-keys/{minted_id}", key=deputy["key"]).status_code == 204
    assert api.request("DELETE", f"/api-keys/{minted_id}").status_code == 204  # again, by another: the first stays

    assert (deputy["created_by"], deputy["revoked_by"]) == ("key_admin", None)
    assert (minted.json()["created_by"], minted.json()["revoked_by"]) == (deputy["id"], None)
    listed = {item["id"]: item for item in all_keys(api)[0]}
    assert (listed[minted_id]["created_by"], listed[minted_id]["revoked_by"]) == (deputy["id"], deputy["id"])
    assert (listed[deputy["id"]]["created_by"], listed[deputy["id"]]["revoked_by"]) == ("key_admin", None)
    issued = [(r.api_key_id, r.key_id) for r in caplog.records if r.getMessage() == "api key issued"]
    revoked = [
        (r.api_key_id, r.key_id, getattr(r, "revoked_by", None))
        for r in caplog.records
        if r.getMessage() == "api key revoked"
    ]
    assert (deputy["id"], "key_admin") in issued and (minted_id, deputy["id"]) in issued
    # The second DELETE's line names who sent it, and the key that did cut it off: a search of the
    # log for who revoked a key finds the one the key records, not every admin who asked again.
    assert revoked == [(minted_id, deputy["id"], deputy["id"]), (minted_id, "key_admin", deputy["id"])]
    assert minted.json()["key"] not in caplog.text and deputy["key"] not in caplog.text


def test_revoking_an_unknown_key_is_404(api: InProcessApi):
    response = api.request("DELETE", "/api-keys/key_doesnotexist0000")

    assert_error(response, 404, "not_found")


def test_the_bootstrap_admin_key_cannot_be_revoked_through_the_api(api: InProcessApi):
    response = api.request("DELETE", "/api-keys/key_admin")

    assert_error(response, 409)
    assert api.get("/orders").status_code == 200, "the admin key must keep working"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api-keys", {"name": "sneaky", "scopes": ["admin"]}),
        ("GET", "/api-keys", None),
        ("DELETE", "/api-keys/key_admin", None),
    ],
)
def test_a_key_without_the_admin_scope_cannot_manage_keys(api: InProcessApi, method: str, path: str, body: dict | None):
    almost_everything = issue(api, *[s for s in ALL_SCOPES if s != "admin"])

    response = api.request(method, path, key=almost_everything["key"], json=body)

    assert_error(response, 403, "forbidden")
    assert not any(item["name"] == "sneaky" for item in all_keys(api)[0])


def test_a_non_admin_key_cannot_revoke_another_key(api: InProcessApi, reader: dict[str, Any]):
    victim = issue(api, "orders:read")

    response = api.request("DELETE", f"/api-keys/{victim['id']}", key=reader["key"])

    assert_error(response, 403, "forbidden")
    assert api.get("/orders", key=victim["key"]).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["orders:delete"]}, "scopes[0]"),
        ({"name": "x", "scopes": ["orders:read", "orders:read"]}, "scopes"),
        ({"name": "x", "scopes": ["admin"], "channel": "web"}, None),
        ({"name": "", "scopes": ["orders:read"]}, "name"),
        ({"scopes": ["orders:read"]}, "name"),
        ({"name": "x", "scopes": ["admin"], "location_ids": ["wh-east"]}, "location_ids"),
        ({"name": "x", "scopes": ["fulfillment:write"], "location_ids": []}, "location_ids"),
        ({"name": "x", "scopes": ["fulfillment:write"], "location_ids": ["wh-east", "wh-east"]}, "location_ids"),
    ],
    ids=[
        "empty-scopes",
        "unknown-scope",
        "repeated-scope",
        "admin-bound-to-a-channel",
        "blank-name",
        "no-name",
        "admin-bound-to-a-location",
        "no-locations",
        "repeated-location",
    ],
)
def test_an_invalid_new_key_is_422_and_issues_nothing(api: InProcessApi, body: dict, field: str | None):
    before = {item["id"] for item in all_keys(api)[0]}

    response = api.post("/api-keys", json=body)

    assert_error(response, 422, "validation_error", *([field] if field else []))
    assert {item["id"] for item in all_keys(api)[0]} == before


# --- 2. Every endpoint but the public three needs a valid key ---------------------------------------

PATH_VALUES = {
    "sku": "SKU-1",
    "location_id": "loc-1",
    "order_id": UNKNOWN_ORDER,
    "key_id": "key_admin",
    "shipment_id": "shp_" + "a" * 24,
    "return_id": "rma_" + "a" * 24,
    "import_id": "imp_" + "a" * 24,
}


def concrete(path: str) -> str:
    """The template path with plausible values for its parameters (routes added later get a generic one)."""
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), f"{m.group(1)}-1"), path)


PROTECTED = [
    (route.method, route.path)
    for route in Template.load().api_routes()
    if (route.method, route.path) not in PUBLIC_ROUTES
]


def test_the_public_routes_are_the_only_ones_without_the_authorizer():
    open_routes = {(r.method, r.path) for r in Template.load().api_routes() if r.authorizer is None}

    assert open_routes == PUBLIC_ROUTES
    assert len(PROTECTED) >= 14


@pytest.mark.parametrize("credential", ["none", "unknown", "malformed", "revoked", "basic"])
@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_every_protected_endpoint_is_401_without_a_valid_key(
    api: InProcessApi, revoked: dict[str, Any], method: str, path: str, credential: str
):
    headers = {
        "none": {},
        "unknown": {"Authorization": "Bearer oms_" + uuid.uuid4().hex + uuid.uuid4().hex[:8]},
        "malformed": {"Authorization": "Bearer x"},
        "revoked": {"Authorization": f"Bearer {revoked['key']}"},
        "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }[credential]
    body = {} if method in ("POST", "PUT", "PATCH") else None

    response = api.request(method, concrete(path), key=None, headers=headers, json=body)

    assert_error(response, 401, "unauthorized")


def test_the_admin_key_survives_the_anonymous_delete_attempts(api: InProcessApi):
    assert api.get("/api-keys").status_code == 200


# --- 3. Scopes: 403 for what a key may not do, before its body is even looked at ---------------------


def test_a_read_only_key_cannot_place_an_order(api: InProcessApi, reader: dict[str, Any], sku: str):
    body = order_body((sku, 1))

    response = api.post("/orders", json=body, key=reader["key"])

    assert_error(response, 403, "forbidden")
    assert api.orders_of(body["customer"]["id"]) == []


def test_a_read_only_key_cannot_create_a_product(api: InProcessApi, reader: dict[str, Any]):
    new_sku = unique("SKU").upper()

    response = api.put(f"/products/{new_sku}", json={"name": "Mug", "price": money("1.00")}, key=reader["key"])

    assert_error(response, 403, "forbidden")
    assert_error(api.get(f"/products/{new_sku}"), 404, "not_found")


def test_a_read_only_key_cannot_create_a_location(api: InProcessApi, reader: dict[str, Any]):
    location_id = unique("loc")

    response = api.put(f"/locations/{location_id}", json=location_body(), key=reader["key"])

    assert_error(response, 403, "forbidden")
    assert location_id not in {loc["location_id"] for loc in every_location(api)}


def test_a_read_only_key_cannot_count_or_adjust_stock(api: InProcessApi, catalog: Catalog, reader: dict[str, Any]):
    warehouse = catalog.location()
    (stocked,) = [catalog.product("5.00")]
    catalog.stock(stocked, warehouse, 10)

    counted = api.put(f"/inventory/{stocked}/{warehouse}", json={"on_hand": 0}, key=reader["key"])
    adjusted = api.post(
        f"/inventory/{stocked}/{warehouse}/adjustments", json={"delta": -5, "reason": "damage"}, key=reader["key"]
    )

    assert_error(counted, 403, "forbidden")
    assert_error(adjusted, 403, "forbidden")
    assert api.get(f"/inventory/{stocked}").json()["available"] == 10


def test_a_read_only_key_still_reads_orders_and_any_key_reads_the_catalog(
    api: InProcessApi, reader: dict[str, Any], sku: str
):
    assert api.get("/orders", key=reader["key"]).status_code == 200
    assert api.get(f"/products/{sku}", key=reader["key"]).status_code == 200
    assert api.get(f"/inventory/{sku}", key=reader["key"]).status_code == 200
    assert api.get("/locations", key=reader["key"]).status_code == 200


def test_a_storefront_key_cannot_change_a_price(api: InProcessApi, storefront: dict[str, Any], sku: str):
    before = api.get(f"/products/{sku}").json()

    response = api.put(f"/products/{sku}", json={"name": before["name"], "price": money("0.01")}, key=storefront["key"])

    assert_error(response, 403, "forbidden")
    after = api.get(f"/products/{sku}").json()
    assert after["price"] == money("19.99")
    assert after == before


def test_a_catalog_key_cannot_read_orders(api: InProcessApi, sku: str):
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    merchandiser = issue(api, "catalog:write")

    assert_error(api.get("/orders", key=merchandiser["key"]), 403, "forbidden")
    assert_error(api.get(f"/orders/{placed.json()['id']}", key=merchandiser["key"]), 403, "forbidden")
    assert_error(api.get(f"/orders/{placed.json()['id']}/history", key=merchandiser["key"]), 403, "forbidden")


INVALID_BODIES = {
    "malformed-json": "{not json",
    "empty-object": "{}",
    "server-owned-field": '{"id": "x", "status": "shipped"}',
    "card-number": '{"payment": {"token": "4111111111111111"}}',
    "wrong-type": "[1, 2, 3]",
}


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
@pytest.mark.parametrize(
    ("who", "method", "path"),
    [
        ("reader", "POST", "/orders"),
        ("reader", "PUT", "/products/SKU-ANY"),
        ("reader", "PUT", "/inventory/SKU-ANY/loc-any"),
        ("storefront", "PUT", "/products/SKU-ANY"),
        ("storefront", "POST", "/api-keys"),
    ],
)
def test_a_key_without_the_scope_gets_403_before_its_body_is_validated(
    api: InProcessApi, reader: dict[str, Any], storefront: dict[str, Any], who: str, method: str, path: str, body: str
):
    key = {"reader": reader, "storefront": storefront}[who]["key"]

    response = api.request(method, path, key=key, data=body, headers={"Content-Type": "application/json"})

    assert_error(response, 403, "forbidden")


# --- 4. Channel isolation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoChannels:
    customer: dict[str, str]
    channel_a: str
    channel_b: str
    order_a: str  # placed by the storefront key of channel A
    order_b: str  # placed by the admin in channel B


@pytest.fixture(scope="module")
def two_channels(api: InProcessApi, storefront: dict[str, Any], channel_a: str, sku: str) -> TwoChannels:
    customer = {"id": unique("cus"), "email": "ada@example.com"}
    channel_b = f"web-{uuid.uuid4().hex[:12]}"
    mine = api.post("/orders", json=order_body((sku, 1), channel=channel_a, customer=customer), key=storefront["key"])
    assert mine.status_code == 201, mine.text
    theirs = api.post("/orders", json=order_body((sku, 1), channel=channel_b, customer=customer))
    assert theirs.status_code == 201, theirs.text
    return TwoChannels(customer, channel_a, channel_b, mine.json()["id"], theirs.json()["id"])


def test_a_channel_bound_key_places_orders_in_its_own_channel(api: InProcessApi, storefront: dict[str, Any], sku: str):
    body = order_body((sku, 2), channel=storefront["channel"])

    response = api.post("/orders", json=body, key=storefront["key"])

    assert response.status_code == 201, response.text
    assert response.json()["channel"] == storefront["channel"]


def test_a_channel_bound_key_cannot_place_an_order_for_another_channel(
    api: InProcessApi, storefront: dict[str, Any], sku: str
):
    body = order_body((sku, 1), channel=f"web-{uuid.uuid4().hex[:12]}")

    response = api.post("/orders", json=body, key=storefront["key"])

    assert_error(response, 403, "forbidden")
    assert api.orders_of(body["customer"]["id"]) == []


def test_a_channel_bound_key_is_refused_another_channel_with_an_idempotency_key_too(
    api: InProcessApi, storefront: dict[str, Any], sku: str
):
    body = order_body((sku, 1), channel="web")

    response = api.post("/orders", json=body, key=storefront["key"], headers={"Idempotency-Key": unique("idem")})

    assert_error(response, 403, "forbidden")
    assert api.orders_of(body["customer"]["id"]) == []


def without(text: str, *ids: str) -> str:
    for value in ids:
        text = text.replace(value, "<id>")
    return text


@pytest.mark.parametrize("suffix", ["", "/history"], ids=["order", "history"])
def test_another_channels_order_answers_404_exactly_like_an_unknown_one(
    api: InProcessApi, storefront: dict[str, Any], two_channels: TwoChannels, suffix: str
):
    foreign = api.get(f"/orders/{two_channels.order_b}{suffix}", key=storefront["key"])
    unknown = api.get(f"/orders/{UNKNOWN_ORDER}{suffix}", key=storefront["key"])

    foreign_error = assert_error(foreign, 404, "not_found")
    unknown_error = assert_error(unknown, 404, "not_found")
    assert without(foreign.text, two_channels.order_b) == without(unknown.text, UNKNOWN_ORDER)
    assert foreign_error["details"] == unknown_error["details"]
    assert api.get(f"/orders/{two_channels.order_b}{suffix}").status_code == 200  # the admin sees it


def test_a_channel_bound_key_reads_its_own_orders_and_history(
    api: InProcessApi, storefront: dict[str, Any], two_channels: TwoChannels
):
    order = api.get(f"/orders/{two_channels.order_a}", key=storefront["key"])
    history = api.get(f"/orders/{two_channels.order_a}/history", key=storefront["key"])

    assert order.status_code == 200, order.text
    assert order.json()["channel"] == two_channels.channel_a
    assert history.status_code == 200, history.text


def listed(api: InProcessApi, key: str, **params: str) -> list[dict[str, Any]]:
    response = api.get("/orders", key=key, params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_a_channel_bound_key_lists_only_its_channels_orders(
    api: InProcessApi, storefront: dict[str, Any], two_channels: TwoChannels
):
    customer = two_channels.customer["id"]

    by_customer = listed(api, storefront["key"], customer_id=customer)
    unfiltered = listed(api, storefront["key"])
    own_channel = listed(api, storefront["key"], channel=two_channels.channel_a)

    assert [order["id"] for order in by_customer] == [two_channels.order_a]
    # Another channel's list is 403, as its reports are: never a page of them, nor an empty one.
    for params in ({"customer_id": customer, "channel": two_channels.channel_b}, {"channel": two_channels.channel_b}):
        assert_error(api.get("/orders", key=storefront["key"], params=params), 403, "forbidden")
    assert unfiltered, "the key's own orders are listed"
    assert {order["channel"] for order in unfiltered} == {two_channels.channel_a}
    assert two_channels.order_a in {order["id"] for order in unfiltered}
    assert two_channels.order_a in {order["id"] for order in own_channel}


def test_the_admin_lists_every_channels_orders(api: InProcessApi, two_channels: TwoChannels):
    ids = {order["id"] for order in listed(api, api.admin_key, customer_id=two_channels.customer["id"])}

    assert ids == {two_channels.order_a, two_channels.order_b}


# --- 4b. Location binding: a warehouse's or a store's key acts only at its own locations ---------------


@dataclass(frozen=True)
class TwoSites:
    """Two warehouses and two pickup stores of one merchant; `key` (every location scope, no admin)
    is bound to the first warehouse and the first store. Each sku is stocked at one side only, so an
    order of it is sourced there: `own_sku` at the key's warehouse and store, `other_sku` at the others."""

    own: str
    own_store: str
    other: str
    other_store: str
    own_sku: str
    other_sku: str
    vendor: str
    key: dict[str, Any]

    def at(self, where: str) -> tuple[str, str, str]:
        """(warehouse, store, sku) of `where`: "own" or "other"."""
        if where == "own":
            return self.own, self.own_store, self.own_sku
        return self.other, self.other_store, self.other_sku


LOCATION_SCOPES = ("fulfillment:write", "inventory:write", "purchasing:write", "catalog:write", "orders:read")


@pytest.fixture(scope="module")
def sites(api: InProcessApi) -> TwoSites:
    catalog = Catalog(api)
    store = {"type": "store", "ships": False, "pickup": True}
    own, own_store, other, other_store = (
        catalog.location(),
        catalog.location(**store),
        catalog.location(),
        catalog.location(**store),
    )
    own_sku, other_sku = catalog.product("5.00"), catalog.product("5.00")
    for sku, places in ((own_sku, (own, own_store)), (other_sku, (other, other_store))):
        for place in places:
            catalog.stock(sku, place, 1000)
    vendor = unique("vendor")
    assert api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 2}).status_code == 201
    key = issue(api, *LOCATION_SCOPES, location_ids=[own, own_store])
    return TwoSites(own, own_store, other, other_store, own_sku, other_sku, vendor, key)


def assert_refused_at(response: Answer, location_id: str) -> None:
    """403 `forbidden`, its message naming the location the key may not act at."""
    error = assert_error(response, 403, "forbidden")
    assert location_id in error["message"], error


def test_a_key_bound_to_locations_says_so_when_issued_and_listed(api: InProcessApi, sites: TwoSites, channel_a: str):
    both = issue(api, "fulfillment:write", channel=channel_a, location_ids=[sites.other, sites.own])

    assert (both["channel"], both["location_ids"]) == (channel_a, [sites.other, sites.own])
    listed = {item["id"]: item for item in all_keys(api)[0]}
    assert listed[both["id"]]["location_ids"] == [sites.other, sites.own]
    assert listed[sites.key["id"]]["location_ids"] == [sites.own, sites.own_store]
    assert listed["key_admin"]["location_ids"] is None


def test_a_key_bound_to_a_location_the_network_does_not_have_is_422_naming_it_and_issues_nothing(
    api: InProcessApi, sites: TwoSites
):
    before = {item["id"] for item in all_keys(api)[0]}

    response = api.post(
        "/api-keys", json={"name": "3pl", "scopes": ["fulfillment:write"], "location_ids": [sites.own, "nowhere-1"]}
    )

    error = assert_error(response, 422, "validation_error", "location_ids[1]")
    assert "nowhere-1" in str(error["details"])
    assert {item["id"] for item in all_keys(api)[0]} == before


STOCK_WRITES = {
    "count": ("PUT", "", {"on_hand": 900}),
    "adjust": ("POST", "/adjustments", {"delta": -5, "reason": "damaged"}),
    "reorder-set": ("PUT", "/reorder", {"reorder_point": 10, "reorder_quantity": 50, "vendor_id": "{vendor}"}),
    "reorder-clear": ("DELETE", "/reorder", None),
}


@pytest.mark.parametrize("where", ["own", "other"])
@pytest.mark.parametrize("route", STOCK_WRITES.values(), ids=STOCK_WRITES.keys())
def test_a_location_bound_key_writes_stock_only_at_its_own_locations(
    api: InProcessApi, sites: TwoSites, route: tuple[str, str, dict | None], where: str
):
    method, suffix, body = route
    location, _, sku = sites.at(where)
    if body and body.get("vendor_id"):
        body = {**body, "vendor_id": sites.vendor}
    if method == "DELETE":  # a point to clear, set by the admin
        assert (
            api.put(
                f"/inventory/{sku}/{location}/reorder",
                json=STOCK_WRITES["reorder-set"][2] | {"vendor_id": sites.vendor},
            ).status_code
            == 200
        )
    before = api.get(f"/inventory/{sku}").json()

    response = api.request(method, f"/inventory/{sku}/{location}{suffix}", key=sites.key["key"], json=body)

    if where == "own":
        assert response.status_code in (200, 204), response.text
        assert api.get(f"/inventory/{sku}").json() != before
    else:
        assert_refused_at(response, location)
        assert api.get(f"/inventory/{sku}").json() == before


def order_at(api: InProcessApi, sites: TwoSites, where: str, pickup: bool = False) -> tuple[str, str]:
    """An allocated order of one unit sourced at `where`'s warehouse, or (`pickup`) to be collected
    at its store: the order's id and its one shipment's."""
    _, store, sku = sites.at(where)
    overrides = {"fulfillment": {"type": "pickup", "location_id": store}} if pickup else {}
    return allocated(api, sku, **overrides)


def as_it_stands(api: InProcessApi, order_id: str) -> tuple[Any, ...]:
    """What a refused action must leave as it was: the order's version, status, shipments and
    payment, and its history."""
    order = api.get(f"/orders/{order_id}").json()
    history = api.get(f"/orders/{order_id}/history").json()
    shipments = [(s["id"], s["status"], s["location_id"]) for s in order["shipments"]]
    return order["version"], order["status"], shipments, order["payment"], history


# Each action with what the admin does first (None: the allocated order as it is), whether the order
# is a pickup, and the shipment status the bound key's action leads to at its own location.
SHIPMENT_ACTIONS = {
    "ship": (None, False, "shipped"),
    "deliver": ("ship", False, "delivered"),
    "reject": (None, False, None),
    "ready": (None, True, "ready_for_pickup"),
    "collect": ("ready", True, "delivered"),
}


@pytest.mark.parametrize("where", ["own", "other"])
@pytest.mark.parametrize("action", SHIPMENT_ACTIONS, ids=SHIPMENT_ACTIONS.keys())
def test_a_location_bound_key_acts_on_parcels_only_at_its_own_locations(
    api: InProcessApi, sites: TwoSites, action: str, where: str
):
    first, pickup, reached = SHIPMENT_ACTIONS[action]
    order_id, shipment_id = order_at(api, sites, where, pickup)
    parcel = f"/orders/{order_id}/shipments/{shipment_id}"
    if first is not None:
        assert api.post(f"{parcel}/{first}", json={}).status_code == 200
    before = as_it_stands(api, order_id)
    verb = "deliver" if action == "collect" else action
    body = {"reason": "damaged on the shelf"} if action == "reject" else {}

    response = api.post(f"{parcel}/{verb}", json=body, key=sites.key["key"])

    if where == "own":
        assert response.status_code == 200, response.text
        statuses = {s["id"]: s["status"] for s in api.get(f"/orders/{order_id}").json()["shipments"]}
        assert statuses.get(shipment_id) == reached  # a rejected parcel leaves the order
    else:
        assert_refused_at(response, sites.at("other")[1 if pickup else 0])
        assert as_it_stands(api, order_id) == before


def test_a_confirmation_batch_refuses_only_the_item_at_another_location(api: InProcessApi, sites: TwoSites):
    own_order, own_parcel = order_at(api, sites, "own")
    other_order, other_parcel = order_at(api, sites, "other")
    later_order, later_parcel = order_at(api, sites, "own")
    before = as_it_stands(api, other_order)
    items = [
        {"order_id": own_order, "shipment_id": own_parcel, "action": "ship"},
        {"order_id": other_order, "shipment_id": other_parcel, "action": "ship"},
        {"order_id": later_order, "shipment_id": later_parcel, "action": "ship"},
    ]

    response = api.post("/shipments/confirmations", json={"items": items}, key=sites.key["key"])

    assert response.status_code == 200, response.text
    first, refused, last = response.json()["items"]
    assert (first["status"], first["error"], last["status"], last["error"]) == ("shipped", None, "shipped", None)
    assert refused["status"] is None and refused["retry"] is False
    assert refused["error"]["code"] == "forbidden" and sites.other in refused["error"]["message"]
    assert as_it_stands(api, other_order) == before


def purchase(sites: TwoSites, location: str, sku: str) -> dict[str, Any]:
    return {
        "vendor_id": sites.vendor,
        "location_id": location,
        "lines": [{"sku": sku, "quantity": 4, "unit_cost": {"amount": "2.00", "currency": "USD"}}],
    }


def vendors_orders(api: InProcessApi, vendor: str) -> list[dict[str, Any]]:
    response = api.get("/purchase-orders", params={"vendor_id": vendor, "limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.mark.parametrize("where", ["own", "other"])
@pytest.mark.parametrize("action", ["create", "receive", "cancel"])
def test_a_location_bound_key_buys_and_receives_only_for_its_own_locations(
    api: InProcessApi, sites: TwoSites, action: str, where: str
):
    location, _, sku = sites.at(where)
    po_id = None
    if action != "create":
        made = api.post("/purchase-orders", json=purchase(sites, location, sku))
        assert made.status_code == 201, made.text
        po_id = made.json()["id"]
    before = (vendors_orders(api, sites.vendor), api.get(f"/inventory/{sku}").json())
    key = sites.key["key"]

    if action == "create":
        response = api.post("/purchase-orders", json=purchase(sites, location, sku), key=key)
    elif action == "receive":
        response = api.post(f"/purchase-orders/{po_id}/receive", json={"lines": [{"sku": sku, "quantity": 4}]}, key=key)
    else:
        response = api.post(f"/purchase-orders/{po_id}/cancel", json={}, key=key)

    if where == "own":
        assert response.status_code in (200, 201), response.text
        assert (vendors_orders(api, sites.vendor), api.get(f"/inventory/{sku}").json()) != before
    else:
        assert_refused_at(response, location)
        assert (vendors_orders(api, sites.vendor), api.get(f"/inventory/{sku}").json()) == before


def test_a_location_bound_key_learns_nothing_of_a_parcel_withdrawn_at_another_location(
    api: InProcessApi, sites: TwoSites
):
    order_id, shipment_id = order_at(api, sites, "other")
    parcel = f"/orders/{order_id}/shipments/{shipment_id}"
    assert api.post(f"{parcel}/reject", json={"reason": "shelf empty"}).status_code == 200
    before = as_it_stands(api, order_id)

    response = api.post(f"{parcel}/ship", json={}, key=sites.key["key"])

    # Not 409 naming the withdrawal: that would tell another location's key what happened there.
    assert_refused_at(response, sites.other)
    assert as_it_stands(api, order_id) == before


def test_a_key_bound_to_a_channel_and_locations_finds_no_other_channels_parcel_wherever_it_is(
    api: InProcessApi, sites: TwoSites, channel_a: str
):
    both = issue(api, "fulfillment:write", channel=channel_a, location_ids=[sites.own])
    order_id, shipment_id = order_at(api, sites, "other")  # channel "web", not channel A

    response = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={}, key=both["key"])

    assert_error(response, 404, "not_found")  # as an unknown order: not 403, which would say it exists


def test_a_location_bound_key_is_refused_a_parcel_an_eventually_consistent_read_does_not_show_yet(
    api: InProcessApi, sites: TwoSites, monkeypatch: pytest.MonkeyPatch
):
    from functions.adapters.dynamodb import DynamoOrders

    order_id, shipment_id = order_at(api, sites, "other")
    before = as_it_stands(api, order_id)
    real_get = DynamoOrders.get

    def lagging(self: Any, wanted: str, *, consistent: bool = False) -> Any:
        # GetItem a moment after the order's parcel was made: the order as it was, without it.
        order = real_get(self, wanted, consistent=consistent)
        if wanted == order_id and not consistent and order is not None:
            return order.model_copy(update={"shipments": []})
        return order

    monkeypatch.setattr(DynamoOrders, "get", lagging)
    response = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={}, key=sites.key["key"])
    monkeypatch.undo()

    assert_refused_at(response, sites.other)
    assert as_it_stands(api, order_id) == before


@pytest.mark.parametrize("where", ["own", "other"])
def test_a_location_bound_key_submits_purchase_orders_of_its_own_locations_only(
    api: InProcessApi, sites: TwoSites, where: str
):
    location, _, sku = sites.at(where)
    made = api.post("/purchase-orders", json=purchase(sites, location, sku))
    assert made.status_code == 201, made.text

    response = api.post(f"/purchase-orders/{made.json()['id']}/submit", json={}, key=sites.key["key"])

    if where == "own":  # past the location's check, the PO's own answer: created open, it was never a draft
        assert_error(response, 409, "invalid_transition")
    else:
        assert_refused_at(response, location)
    assert api.get(f"/purchase-orders/{made.json()['id']}").json() == made.json()


@pytest.mark.parametrize("where", ["own", "other"])
def test_a_location_bound_key_receives_a_return_only_at_its_own_locations(
    api: InProcessApi, sites: TwoSites, where: str
):
    order_id, shipment_id = order_at(api, sites, "own")
    for step in ("ship", "deliver"):
        assert api.post(f"/orders/{order_id}/shipments/{shipment_id}/{step}", json={}).status_code == 200
    made = api.post(
        f"/orders/{order_id}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big"}]}
    )
    assert made.status_code == 201, made.text
    return_id = made.json()["id"]
    location = sites.at(where)[0]
    receipt = {"location_id": location, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    with returns_run_inline():
        response = api.post(f"/returns/{return_id}/receive", json=receipt, key=sites.key["key"])

    if where == "own":
        assert response.status_code in (200, 202), response.text
    else:
        assert_refused_at(response, location)
        assert unsigned(api.get(f"/returns/{return_id}").json()) == unsigned(made.json())  # its label signed anew


@pytest.mark.parametrize("where", ["own", "other"])
def test_a_location_bound_key_reads_the_pickup_list_of_its_own_stores_only(
    api: InProcessApi, sites: TwoSites, where: str
):
    order_id, _ = order_at(api, sites, where, pickup=True)
    store = sites.at(where)[1]

    response = api.get("/orders", params={"pickup_location_id": store}, key=sites.key["key"])

    if where == "own":
        assert response.status_code == 200, response.text
        assert order_id in [order["id"] for order in response.json()["items"]]
    else:
        assert_refused_at(response, store)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/orders", None),
     ("PUT", "/inventory/{sku}/{nowhere}", {"on_hand": 5})],
    ids=["pickup-list", "stock-take"],
)  # fmt: skip
def test_a_location_bound_key_naming_a_location_the_network_does_not_have_is_refused_as_anywhere_else(
    api: InProcessApi, sites: TwoSites, method: str, path: str, body: dict[str, Any] | None
):
    # README, Location binding: 403 before anything is read (an unbound key's pickup list is 422
    # unknown_location), so a store's tablet with a mistyped id reads as refused, not as an empty store.
    nowhere = unique("nowhere")
    before = api.get(f"/inventory/{sites.own_sku}").json()
    where = path.format(nowhere=nowhere, sku=sites.own_sku)
    params = {"pickup_location_id": nowhere} if method == "GET" else None

    response = api.request(method, where, key=sites.key["key"], json=body, params=params)

    assert_refused_at(response, nowhere)
    assert api.get(f"/inventory/{sites.own_sku}").json() == before


@pytest.mark.parametrize("where", ["own", "other"])
def test_a_location_bound_key_replaces_only_its_own_locations(api: InProcessApi, sites: TwoSites, where: str):
    location = sites.at(where)[0]
    before = [item for item in every_location(api) if item["location_id"] == location]

    response = api.put(f"/locations/{location}", json=location_body(name="Renamed"), key=sites.key["key"])

    after = [item for item in every_location(api) if item["location_id"] == location]
    if where == "own":
        assert response.status_code == 200, response.text
        assert after[0]["name"] == "Renamed"
    else:
        assert_refused_at(response, location)
        assert after == before


def test_a_location_bound_key_cannot_open_a_location_of_its_own(api: InProcessApi, sites: TwoSites):
    location = unique("loc")

    response = api.put(f"/locations/{location}", json=location_body(), key=sites.key["key"])

    assert_refused_at(response, location)
    assert location not in [item["location_id"] for item in every_location(api)]


def test_a_location_bound_key_is_no_carriers_key(api: InProcessApi, sites: TwoSites):
    # A carrier's report names parcels of any location: refused whole, before the plugin reads it.
    response = api.post("/carriers/oms-flat-rate/tracking", json={}, key=sites.key["key"])

    error = assert_error(response, 403, "forbidden")
    assert "location" in error["message"]


def test_a_location_bound_key_still_reads_the_stock_of_every_location(api: InProcessApi, sites: TwoSites):
    # Decided (README, Access): stock is the catalog's, which any key reads; binding limits actions.
    response = api.get(f"/inventory/{sites.other_sku}", key=sites.key["key"])

    assert response.status_code == 200, response.text
    assert sites.other in [level["location_id"] for level in response.json()["locations"]]


# --- 5. Server-owned fields (mass assignment) --------------------------------------------------------


@dataclass
class Scene:
    """One product (19.99, 10 units at one warehouse) that every refused write must leave alone."""

    api: InProcessApi
    sku: str
    location: str
    customer: str
    product: dict[str, Any]
    location_record: dict[str, Any]

    def request(self, route: str, body: Any) -> Answer:
        method, path = route.split(" ", 1)
        path = path.replace("{sku}", self.sku).replace("{location_id}", self.location)
        return self.api.request(method, path, json=body)

    def body(self, route: str) -> dict[str, Any]:
        """A valid body for `route` that would change something if it were accepted."""
        return copy.deepcopy(
            {
                "POST /orders": order_body((self.sku, 1), customer={"id": self.customer, "email": "ada@example.com"}),
                "PUT /products/{sku}": {"name": "Renamed", "price": money("29.99")},
                "PUT /locations/{location_id}": location_body(name="Renamed warehouse"),
                "PUT /inventory/{sku}/{location_id}": {"on_hand": 5},
                "POST /inventory/{sku}/{location_id}/adjustments": {"delta": 5, "reason": "receipt"},
                "POST /api-keys": {"name": f"mass-{self.customer}", "scopes": ["orders:read"]},
            }[route]
        )

    def assert_unchanged(self) -> None:
        api = self.api
        assert api.orders_of(self.customer) == [], "an order was stored"
        assert api.get(f"/products/{self.sku}").json() == self.product, "the product changed"
        locations = {loc["location_id"]: loc for loc in every_location(self.api)}
        assert locations[self.location] == self.location_record, "the location changed"
        stock = api.get(f"/inventory/{self.sku}").json()
        assert [(s["location_id"], s["on_hand"], s["reserved"]) for s in stock["locations"]] == [
            (self.location, 10, 0)
        ], stock
        assert not [k for k in all_keys(api)[0] if k["name"] == f"mass-{self.customer}"], "a key was issued"


def build_scene(api: InProcessApi) -> Scene:
    catalog = Catalog(api)
    location = catalog.location()
    sku = catalog.product("19.99")
    catalog.stock(sku, location, 10)
    product = api.get(f"/products/{sku}").json()
    record = next(loc for loc in every_location(api) if loc["location_id"] == location)
    return Scene(api, sku, location, unique("cus"), product, record)


@pytest.fixture(scope="module")
def scene(api: InProcessApi) -> Scene:
    """Shared by every test that expects nothing to be written."""
    return build_scene(api)


@pytest.fixture
def own_scene(api: InProcessApi) -> Scene:
    """For tests of known bugs, which do write: they must not spoil the shared scene."""
    return build_scene(api)


MONEY = money("0.00")
LATER = "2030-01-01T00:00:00Z"
ORDER_OWNED = {
    "id": UNKNOWN_ORDER,
    "status": "shipped",
    "version": 42,
    "created_at": LATER,
    "updated_at": LATER,
    "totals": {"subtotal": MONEY, "discount": MONEY, "shipping": MONEY, "tax": MONEY, "grand_total": MONEY},
    "subtotal": MONEY,
    "grand_total": MONEY,
    "unit_price": MONEY,
    "discount": MONEY,
    "tax": MONEY,
    "total": MONEY,
    "allocations": [{"line_id": "L1", "location_id": "loc-1", "quantity": 1}],
    "shipments": [],
    "line_id": "L1",
    "available": 1,
    "reserved": 0,
    "lines[0].line_id": "L1",
    "lines[0].unit_price": MONEY,
    "lines[0].discount": MONEY,
    "lines[0].tax": MONEY,
    "lines[0].total": MONEY,
    "payment.status": "captured",
    "payment.authorized": money("19.99"),
    "payment.captured": money("19.99"),
    "payment.refunded": MONEY,
}
CATALOG_OWNED = {
    "id": "x",
    "status": "active",
    "version": 42,
    "created_at": LATER,
    "updated_at": LATER,
    "available": 100,
    "reserved": 0,
}
STOCK_OWNED = {
    "id": "x",
    "available": 1000,
    "reserved": 0,
    "version": 42,
    "created_at": LATER,
    "updated_at": LATER,
    "sku": "OTHER",
    "location_id": "other",
}
KEY_OWNED = {
    "id": "key_chosen",
    "key": "oms_chosen_by_the_client_0123456789",
    "secret": "oms_chosen_by_the_client_0123456789",
    "hash": "0" * 64,
    "secret_hash": "0" * 64,
    "status": "active",
    "version": 1,
    "created_at": LATER,
    "updated_at": LATER,
    "revoked_at": None,
}
MASS_ASSIGNMENT = [
    *[("POST /orders", field, value) for field, value in ORDER_OWNED.items()],
    *[("PUT /products/{sku}", field, value) for field, value in {**CATALOG_OWNED, "sku": "OTHER"}.items()],
    *[
        ("PUT /locations/{location_id}", field, value)
        for field, value in {**CATALOG_OWNED, "location_id": "other"}.items()
    ],
    *[("PUT /inventory/{sku}/{location_id}", field, value) for field, value in STOCK_OWNED.items()],
    *[
        ("POST /inventory/{sku}/{location_id}/adjustments", field, value)
        for field, value in {**STOCK_OWNED, "on_hand": 99}.items()
    ],
    *[("POST /api-keys", field, value) for field, value in KEY_OWNED.items()],
]


@pytest.mark.parametrize(
    ("route", "field", "value"), MASS_ASSIGNMENT, ids=[f"{route} {field}" for route, field, _ in MASS_ASSIGNMENT]
)
def test_a_server_owned_field_in_a_write_body_is_422_naming_it_and_writes_nothing(
    scene: Scene, route: str, field: str, value: Any
):
    body = set_path(scene.body(route), field, value)

    response = scene.request(route, body)

    assert_error(response, 422, "validation_error", field)
    scene.assert_unchanged()


# --- 6. Card numbers: refused wherever they appear -------------------------------------------------------

CARD_FIELDS = [
    ("POST /orders", "payment.token", "4111111111111111"),
    ("POST /orders", "payment.token", 4111111111111111),
    ("POST /orders", "customer.name", "4111 1111 1111 1111"),
    ("POST /orders", "shipping_address.line2", "5555-5555-5555-4444"),
    ("POST /orders", "external_id", "378282246310005"),
    ("POST /orders", "lines[0].sku", "6011111111111117"),
    ("POST /orders", "promo_codes", ["SUMMER", "4012888888881881"]),
    ("POST /orders", "metadata", {"gift": {"notes": ["hi", {"card": "4111-1111-1111-1111"}]}}),
    ("PUT /products/{sku}", "name", "4111111111111111"),
    ("PUT /locations/{location_id}", "address.line2", "5105 1051 0510 5100"),
    ("PUT /inventory/{sku}/{location_id}", "on_hand", 4111111111111111),
    ("POST /inventory/{sku}/{location_id}/adjustments", "reason", "3530111333300000"),
    ("POST /api-keys", "name", "4111111111111111"),
]
CARD_DETAIL = {"promo_codes": "promo_codes[1]", "metadata": "metadata.gift.notes[1].card"}


@pytest.mark.parametrize(
    ("route", "field", "value"),
    CARD_FIELDS,
    ids=[f"{route} {field} {type(v).__name__}" for route, field, v in CARD_FIELDS],
)
def test_a_card_number_in_any_field_of_a_write_body_is_422_card_data_rejected_and_stores_nothing(
    scene: Scene, route: str, field: str, value: Any
):
    body = set_path(scene.body(route), field, value)

    response = scene.request(route, body)

    error = assert_error(response, 422, "card_data_rejected", CARD_DETAIL.get(field, field))
    digits = re.sub(r"\D", "", str(value))[-16:]
    assert digits not in re.sub(r"[ -]", "", response.text), "the error must never echo the number"
    assert all(detail.get("field") for detail in error["details"])
    scene.assert_unchanged()


@pytest.mark.parametrize("name", ["customer_id", "status", "channel", "cursor"])
def test_a_card_number_in_a_query_parameter_is_422_card_data_rejected(api: InProcessApi, name: str):
    response = api.get("/orders", params={name: "4111111111111111"})

    assert_error(response, 422, "card_data_rejected", name)
    assert "4111111111111111" not in response.text


@pytest.mark.parametrize("route", ["PUT /products/{sku}", "PUT /locations/{location_id}"])
def test_a_card_number_as_a_path_parameter_is_422_card_data_rejected(own_scene: Scene, route: str):
    method, template = route.split(" ", 1)

    response = own_scene.api.request(method, re.sub(r"\{\w+\}", CARD, template), json=own_scene.body(route))

    assert_error(response, 422, "card_data_rejected")
    assert own_scene.api.get(f"/products/{CARD}").status_code != 200
    assert CARD not in own_scene.api.get("/locations").text


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("POST /orders", "shipping_address.line2", "Card 4111 1111 1111 1111 exp 12/30"),
        ("POST /orders", "customer.name", "Ada Lovelace 4111111111111111"),
        ("POST /inventory/{sku}/{location_id}/adjustments", "reason", "refund to card 5555555555554444"),
    ],
    ids=["address-line", "customer-name", "adjustment-reason"],
)
def test_a_card_number_inside_free_text_is_422_card_data_rejected(own_scene: Scene, route: str, field: str, value: str):
    body = set_path(own_scene.body(route), field, value)

    response = own_scene.request(route, body)

    assert_error(response, 422, "card_data_rejected", field)
    own_scene.assert_unchanged()


# --- 7. Audit --------------------------------------------------------------------------------------------


def test_an_orders_history_names_the_key_that_placed_it(api: InProcessApi, storefront: dict[str, Any], sku: str):
    placed = api.post("/orders", json=order_body((sku, 1), channel=storefront["channel"]), key=storefront["key"])
    assert placed.status_code == 201, placed.text

    history = api.get(f"/orders/{placed.json()['id']}/history", key=storefront["key"])

    assert history.status_code == 200, history.text
    first = history.json()["items"][0]
    assert first["type"] == "created"
    assert first["actor"] == storefront["id"]


def test_an_order_placed_by_the_admin_names_the_admin_key(api: InProcessApi, sku: str):
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text

    history = api.get(f"/orders/{placed.json()['id']}/history")

    assert history.json()["items"][0]["actor"] == "key_admin"


# --- 7b. A key that may not read orders reads none by changing one ------------------------------------

RECEIPT = {"id", "status", "version"}


def test_a_write_only_key_that_cancels_an_order_gets_a_receipt_not_the_order_again_and_again(
    api: InProcessApi, channel_a: str, sku: str
):
    writer = issue(api, "orders:write", channel=channel_a)
    placed = api.post("/orders", json=order_body((sku, 1), channel=channel_a))  # by another key (the admin)
    assert placed.status_code == 201, placed.text
    order = placed.json()

    answers = [api.post(f"/orders/{order['id']}/cancel", json={"reason": "changed my mind"}, key=writer["key"])]
    answers.append(api.post(f"/orders/{order['id']}/cancel", json={"reason": "again"}, key=writer["key"]))

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": order["id"], "status": "cancelled", "version": answer.json()["version"]}
        assert order["customer"]["email"] not in answer.text
        assert order["shipping_address"]["line1"] not in answer.text
    assert_error(api.get(f"/orders/{order['id']}", key=writer["key"]), 403, "forbidden")
    # A key that may read orders gets the order, as before.
    reader_writer = issue(api, "orders:write", "orders:read", channel=channel_a)
    again = api.post(f"/orders/{order['id']}/cancel", json={"reason": "again"}, key=reader_writer["key"])
    assert again.status_code == 200, again.text
    assert again.json()["customer"] == order["customer"]


def test_a_write_only_key_that_edits_an_order_gets_a_receipt(api: InProcessApi, channel_a: str, sku: str):
    writer = issue(api, "orders:write", channel=channel_a)
    order = api.post("/orders", json=order_body((sku, 1), channel=channel_a)).json()

    edited = api.request(
        "PATCH",
        f"/orders/{order['id']}",
        json={"lines": [{"sku": sku, "quantity": 2}]},
        headers={"If-Match": str(order["version"])},
        key=writer["key"],
    )

    assert edited.status_code == 200, edited.text
    assert set(edited.json()) == RECEIPT
    assert edited.json()["version"] == order["version"] + 1
    assert api.get(f"/orders/{order['id']}").json()["lines"][0]["quantity"] == 2


def test_a_reviewer_key_without_orders_read_that_holds_and_releases_an_order_gets_receipts(
    api: InProcessApi, channel_a: str, sku: str
):
    reviewer = issue(api, "orders:approve", channel=channel_a)
    order = api.post("/orders", json=order_body((sku, 1), channel=channel_a)).json()

    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review"}, key=reviewer["key"])
    released = api.post(f"/orders/{order['id']}/release", json={"note": "checked"}, key=reviewer["key"])

    assert (held.status_code, released.status_code) == (200, 200), (held.text, released.text)
    assert (set(held.json()), set(released.json())) == (RECEIPT, RECEIPT)
    assert (held.json()["status"], released.json()["status"]) == ("on_hold", "pending")
    assert order["customer"]["email"] not in held.text + released.text


def test_a_write_only_key_still_gets_the_order_it_places(api: InProcessApi, channel_a: str, sku: str):
    writer = issue(api, "orders:write", channel=channel_a)

    placed = api.post("/orders", json=order_body((sku, 1), channel=channel_a), key=writer["key"])

    assert placed.status_code == 201, placed.text
    assert placed.json()["totals"]["grand_total"]["amount"] != "0.00"


# --- 8. Revocation behind the authorizer cache ---------------------------------------------------------


@pytest.mark.parametrize("api", [LONG_CACHE], indirect=True, ids=["authorizer-cache-300s"])
def test_behind_the_authorizer_cache_a_revoked_key_is_refused_on_the_very_next_request(api: InProcessApi):
    from infra.local.moto_patches import apigateway

    assert {authorizer.cache_seconds for authorizer in api.gateway.authorizers.values()} == {300}
    issued = issue(api, "orders:read")
    assert api.get("/orders", key=issued["key"]).status_code == 200  # the authorizer's answer is now cached
    flushed_before = len(apigateway.flushed)

    assert api.request("DELETE", f"/api-keys/{issued['id']}").status_code == 204

    # The API function's own FlushStageAuthorizersCache call, for the stage that served it.
    assert apigateway.flushed[flushed_before:] == [(api.gateway.api_id, api.gateway.stage)]
    assert_error(api.get("/orders", key=issued["key"]), 401, "unauthorized")
    # Other keys' cached answers went too; they are simply asked for again.
    assert api.get("/orders").status_code == 200


# --- 9. Malformed credentials --------------------------------------------------------------------------


def _raw(api: InProcessApi, headers: list[tuple[str, str]], path: str = "/orders") -> Answer:
    """GET `path` with exactly these headers, repeated names and their case as given."""
    from infra.local.gateway import HttpRequest

    response = api.gateway.handle(HttpRequest(method="GET", path=path, headers=headers))
    return Answer(response.status_code, response.headers, response.get_data())


@pytest.mark.parametrize("api", [LONG_CACHE], indirect=True, ids=["authorizer-cache-300s"])
@pytest.mark.parametrize(
    "names", [("Authorization", "Authorization"), ("authorization", "Authorization")], ids=["same case", "two cases"]
)
@pytest.mark.parametrize("reader_first", [True, False], ids=["reader first", "reader last"])
def test_an_authorization_header_sent_twice_is_401_and_makes_no_other_secret_work(
    api: InProcessApi, names: tuple[str, str], reader_first: bool
):
    # The authorizer read the first value while the gateway caches its answer under the last one: a
    # reader's key first and any well-formed string after it let that string in, as the reader, for
    # as long as the answer was cached. One request, one credential (RFC 9110 11.6.2).
    reader = issue(api, "orders:read")["key"]
    forged = "oms_" + uuid.uuid4().hex

    values = [f"Bearer {reader}", f"Bearer {forged}"][:: 1 if reader_first else -1]
    twice = _raw(api, list(zip(names, values, strict=True)))

    assert_error(twice, 401, "unauthorized")
    assert_error(_raw(api, [("Authorization", f"Bearer {forged}")]), 401, "unauthorized")
    assert _raw(api, [("Authorization", f"Bearer {reader}")]).status_code == 200


@pytest.mark.parametrize("api", [LONG_CACHE], indirect=True, ids=["authorizer-cache-300s"])
@pytest.mark.parametrize(
    "names", [("Authorization", "Authorization"), ("authorization", "Authorization")], ids=["same case", "two cases"]
)
def test_an_authorization_header_sent_twice_is_401_even_when_the_last_ones_answer_is_cached(
    api: InProcessApi, names: tuple[str, str]
):
    # The authorizer refuses two credentials, but the gateway asks it only on a cache miss, keyed by
    # the last value: once the reader's key had been used alone, anything before it went through as
    # the reader (200), and the same request was 401 or 200 by the cache's state. The API function
    # refuses it too, whatever the cache holds.
    reader = issue(api, "orders:read")["key"]
    forged = "oms_" + uuid.uuid4().hex
    assert _raw(api, [("Authorization", f"Bearer {reader}")]).status_code == 200  # its Allow now cached

    twice = _raw(api, list(zip(names, [f"Bearer {forged}", f"Bearer {reader}"], strict=True)))

    assert_error(twice, 401, "unauthorized")
    assert _raw(api, [("Authorization", f"Bearer {reader}")]).status_code == 200


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(lambda key: key.replace("k", "\u212a").replace("K", "\u212a"), id="kelvin sign for k"),
        pytest.param(lambda key: key.replace("s", "\u017f"), id="long s for s"),
        pytest.param(lambda key: key.replace("i", "\u0131"), id="dotless i for i"),
    ],
)
def test_a_secret_with_letters_outside_ascii_is_refused_without_a_lookup(api: InProcessApi, secret: Any):
    # [A-Za-z] under re.IGNORECASE also matched the letters that fold to ASCII ones (U+212A KELVIN
    # SIGN, U+017F, U+0131), so such a "secret" passed for a well-formed one and cost a DynamoDB read.
    from functions.adapters.api_key_lookup import ApiKeyLookup
    from functions.authorizer.app import api_keys

    reads: list[str] = []

    class Counting(ApiKeyLookup):
        def by_hash(self, secret_hash: str):  # type: ignore[override]
            reads.append(secret_hash)
            return super().by_hash(secret_hash)

    changed = secret("oms_kKsidemo_" + uuid.uuid4().hex)
    assert not changed.isascii()
    with api_keys.override(Counting(api_keys()._client, api_keys()._table)):
        answer = _raw(api, [("Authorization", f"Bearer {changed}")])

    assert_error(answer, 401, "unauthorized")
    assert reads == []


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda key: f"Bearer Bearer {key}", id="scheme twice"),
        pytest.param(lambda key: f"Bearer\t{key}", id="tab after the scheme"),
        pytest.param(lambda key: f"Bearer{key}", id="no space after the scheme"),
        pytest.param(lambda key: f"Bearer {key}\n", id="trailing newline"),
        pytest.param(lambda key: f"Bearer {key}\x00", id="trailing NUL"),
        pytest.param(lambda key: f"Bearer {key}x", id="one character more"),
        pytest.param(lambda key: f"Bearer {key[:-1]}", id="one character less"),
        pytest.param(lambda key: f"Bearer {key.swapcase()}", id="its letters in the other case"),
        pytest.param(lambda key: f"Bearer {key}, Bearer {key}", id="a list of two"),
        pytest.param(lambda key: f"Basic {key}", id="another scheme"),
        pytest.param(lambda key: key, id="no scheme"),
        pytest.param(lambda key: f"Bearer {key}{'a' * 10_240}", id="10 KB more"),
        pytest.param(lambda key: f"Bearer {key}\u00e9", id="non-ASCII"),
        pytest.param(lambda key: "Bearer ", id="scheme alone"),
    ],
)
def test_a_malformed_authorization_header_around_a_valid_key_is_the_contracts_401(api: InProcessApi, header: Any):
    # Each form carries a working key (its plain form is let in first, and its answer cached): none
    # is read as that key, and each refusal is the contract's error shape.
    key = issue(api, "orders:read")["key"]
    assert _raw(api, [("Authorization", f"Bearer {key}")]).status_code == 200

    assert_error(_raw(api, [("Authorization", header(key))]), 401, "unauthorized")


@pytest.mark.parametrize("api", [LONG_CACHE], indirect=True, ids=["authorizer-cache-300s"])
def test_a_key_revoked_while_the_authorizer_is_reading_it_is_refused_after_the_204(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # The authorizer read the key before the revocation and answered after the DELETE's flush: the
    # gateway cached that Allow, and the revoked key went on working for AuthorizerCacheSeconds (300 s
    # here). API Gateway caches when the authorizer returns, so the revocation must flush again once
    # every authorizer run that could have read the key before it has ended (on AWS: its Timeout;
    # here `settle` lets that run end and be cached, as the wait would).
    import threading

    from core.access import hash_secret
    from functions.adapters.api_key_lookup import ApiKeyLookup
    from functions.api.dependencies import container
    from functions.authorizer.app import api_keys

    issued = issue(api, "orders:read")
    target = hash_secret(issued["key"])
    read, release, cached, go = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    class ReadsBeforeTheRevocation(ApiKeyLookup):
        def by_hash(self, secret_hash: str):  # type: ignore[override]
            found = super().by_hash(secret_hash)
            if secret_hash == target and not read.is_set():
                read.set()
                release.wait(10)  # the revocation and its first flush happen now
            return found

    (authorizer,) = api.gateway.authorizers.values()
    answer = authorizer._output

    def answered_then_wait(event: Any) -> Any:
        output = answer(event)  # cached by now
        if event["headers"].get("Authorization") == f"Bearer {issued['key']}":
            cached.set()
            go.wait(10)  # its API call waits for the DELETE to end, as a second one would
        return output

    def settle() -> None:
        release.set()
        assert cached.wait(10)

    monkeypatch.setattr(authorizer, "_output", answered_then_wait)
    monkeypatch.setattr(container().api_keys, "_settle", settle, raising=False)
    statuses: list[int] = []
    with api_keys.override(ReadsBeforeTheRevocation(api_keys()._client, api_keys()._table)):
        in_flight = threading.Thread(target=lambda: statuses.append(api.get("/orders", key=issued["key"]).status_code))
        in_flight.start()
        assert read.wait(10)
        revoked = api.request("DELETE", f"/api-keys/{issued['id']}")
        release.set()
        go.set()
        in_flight.join(10)

    assert revoked.status_code == 204
    assert statuses == [200]  # it was authorized before the revocation
    assert_error(api.get("/orders", key=issued["key"]), 401, "unauthorized")
