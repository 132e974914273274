"""API.md's Conventions, walked over every operation of the OpenAPI document functions/api builds
(so a route added later is walked without being named here), through the in-process gateway in
front of the real authorizer and API handler: a page's `limit` and `cursor`, a body that is not
one JSON object of known fields of the right types, Money in other minor units, a malformed
Idempotency-Key or If-Match, and a key reused with another body. Each refusal is its status in
the contract's error shape, naming what is wrong; none is a 5xx. A key sent again with its body
replays the first answer, from its record as stored now and as stored before. Ids in paths are
walked by test_api_paths, channel isolation by test_channel_isolation_matrix."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from core.access import Scope
from functions.api.access import PUBLIC, ScopeTable
from functions.api.app import every_route
from tests.e2e.client import Catalog, assert_error, order_body, unique
from tests.integration.conftest import run_threads
from tests.integration.in_process import (
    InProcessApi,
    idempotency_records,
    in_process_api_with_labels,
    issue,
    returns_run_inline,
    run_to_allocated,
)
from tests.integration.test_api_paths import WELL_FORMED as LOOKED_UP

DOCUMENT: dict[str, Any] = json.loads(every_route().get_openapi_json_schema())
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    (method.upper(), path): operation
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in ("get", "post", "put", "patch", "delete")
}
_SCOPES = ScopeTable(every_route())
# A well-formed id that names nothing, per path parameter (a vendor's too: PUT /vendors/{vendor_id} makes one).
WELL_FORMED = {**LOOKED_UP, "vendor_id": "no-such-vendor"}
KEYED = sorted(route for route in OPERATIONS if _SCOPES.requirement(*route) is not PUBLIC)


def _parameters(route: tuple[str, str], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"].lower(): p for p in OPERATIONS[route].get("parameters", []) if p["in"] == where}


LISTS = sorted(route for route in OPERATIONS if "limit" in _parameters(route, "query"))
CURSORED = sorted(route for route in OPERATIONS if "cursor" in _parameters(route, "query"))
KEYED_BY_CLIENT = sorted(route for route in OPERATIONS if "idempotency-key" in _parameters(route, "header"))
VERSIONED = sorted(route for route in OPERATIONS if "if-match" in _parameters(route, "header"))
# What a required query parameter is sent as, so that only the parameter under test is wrong.
REQUIRED_QUERY = {"currency": "USD", "email": "ada@example.com"}
# A carrier's webhook body is the carrier's format (its plugin reads it): any fields, an array too.
CARRIER_WEBHOOK = ("POST", "/carriers/{carrier}/tracking")


def _id(route: tuple[str, str], *more: Any) -> str:
    return " ".join([*route, *map(str, more)])


def _path(path: str, **ids: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), WELL_FORMED[m.group(1)]), path)


def _required_query(route: tuple[str, str]) -> dict[str, str]:
    return {name: REQUIRED_QUERY[name] for name, p in _parameters(route, "query").items() if p.get("required")}


def test_every_required_query_parameter_and_path_id_has_a_value_to_send():
    required = {name for route in OPERATIONS for name, p in _parameters(route, "query").items() if p.get("required")}
    in_paths = {name for _, path in OPERATIONS for name in re.findall(r"\{(\w+)\}", path)}

    assert required <= set(REQUIRED_QUERY)
    assert in_paths <= set(WELL_FORMED)
    # Each stand-in fits its parameter's own pattern: the route is refused for what a test sends wrong.
    for route in OPERATIONS:
        for name, parameter in _parameters(route, "path").items():
            pattern = parameter["schema"].get("pattern")
            assert pattern is None or re.search(pattern, WELL_FORMED[name]), (route, name)


def test_the_walk_finds_the_routes_the_contract_names():
    # Else an empty or broken document would make every matrix below pass with nothing in it.
    assert {("GET", "/orders"), ("GET", "/webhooks/{webhook_id}/deliveries"), ("GET", "/imports")} <= set(CURSORED)
    assert {("GET", "/reports/top-products"), ("GET", "/vendors")} <= set(LISTS)
    assert {("POST", "/orders"), ("POST", "/orders/{order_id}/refunds")} <= set(KEYED_BY_CLIENT)
    assert {("PATCH", "/orders/{order_id}"), ("PUT", "/sourcing/rules")} <= set(VERSIONED)
    # A person decides these from the order or PO they saw: a precondition they send is honoured.
    decided = {("POST", f"/orders/{{order_id}}/{step}") for step in ("cancel", "hold", "release", "refunds")}
    decided |= {("POST", f"/returns/{{return_id}}/{step}") for step in ("approve", "reject")}
    assert {*decided, ("POST", "/purchase-orders/{po_id}/cancel")} <= set(VERSIONED)


# --- The world the lists page through ---------------------------------------------------------------


class World:
    """What the lists hold: two of each the admin can make in a few requests, and an order that has
    shipped and been delivered (for refunds and returns)."""

    def __init__(self, api: InProcessApi):
        self.api = api
        catalog = Catalog(api)
        self.location = catalog.location()
        catalog.location()
        self.sku = catalog.product("10.00", weight_grams=300)
        catalog.stock(self.sku, self.location, 500)
        for vendor in ("v1", "v2"):
            assert api.put(f"/vendors/{vendor}", json={"name": vendor, "lead_time_days": 2}).status_code == 201
            assert api.post("/purchase-orders", json=self.purchase("v1", 5)).status_code == 201
            made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
            assert made.status_code == 201, made.text
            self.webhook = made.json()["id"]
            issue(api, "orders:read")
        for version, most in enumerate((2, 3)):
            rules = api.put(
                "/sourcing/rules", json={"max_shipments": most, "prefer": "nearest"}, headers={"If-Match": str(version)}
            )
            assert rules.status_code == 200, rules.text
        self.order = self.delivered()
        self.channel_keys: dict[str, tuple[str, str]] = {}  # by list: the keys of two channels with items in it
        assert api.post("/orders", json=order_body((self.sku, 1))).status_code == 201

    def purchase(self, vendor: str, quantity: int) -> dict[str, Any]:
        line = {"sku": self.sku, "quantity": quantity, "unit_cost": {"amount": "1.00", "currency": "USD"}}
        return {"vendor_id": vendor, "location_id": self.location, "lines": [line]}

    def allocated(self, quantity: int = 3, channel: str = "web") -> dict[str, Any]:
        placed = self.api.post("/orders", json=order_body((self.sku, quantity), channel=channel))
        assert placed.status_code == 201, placed.text
        return run_to_allocated(self.api, placed.json()["id"])

    def delivered(self, channel: str = "web") -> str:
        order = self.allocated(channel=channel)
        for action in ("ship", "deliver"):
            done = self.api.post(f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/{action}", json={})
            assert done.status_code == 200, done.text
        return order["id"]

    def ids(self) -> dict[str, str]:
        """Path ids that name something, so a list reaches its cursor."""
        return {"order_id": self.order, "webhook_id": self.webhook}

    def cursor_of(self, path: str) -> str:
        page = self.api.get(path, params={"limit": 1})
        assert page.status_code == 200 and page.json()["next_cursor"], page.text
        return page.json()["next_cursor"]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels(webhooks=True) as started, returns_run_inline():
        yield started


@pytest.fixture(scope="module")
def world(api: InProcessApi) -> World:
    return World(api)


# --- Lists: limit, cursor, the last page --------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc"])
@pytest.mark.parametrize("route", LISTS, ids=[_id(r) for r in LISTS])
def test_a_limit_outside_1_to_100_is_422_naming_limit(api: InProcessApi, route: tuple[str, str], limit: str):
    method, path = route

    answer = api.request(method, _path(path), params={**_required_query(route), "limit": limit})

    assert_error(answer, 422, "validation_error", "limit")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# Cursors no list issued: not base64 JSON, JSON that is no cursor, half of a real one, another list's.
FOREIGN_CURSORS: dict[str, Callable[[World, tuple[str, str]], str]] = {
    "garbage": lambda world, route: "not-a-cursor!",
    "an array": lambda world, route: _b64("[]"),
    "an empty object": lambda world, route: _b64("{}"),
    "truncated": lambda world, route: world.cursor_of("/api-keys")[:30],
    "another list's": lambda world, route: world.cursor_of("/webhooks" if route[1] == "/api-keys" else "/api-keys"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_CURSORS))
@pytest.mark.parametrize("route", CURSORED, ids=[_id(r) for r in CURSORED])
def test_a_cursor_the_list_never_issued_is_422_invalid_cursor(
    api: InProcessApi, world: World, route: tuple[str, str], kind: str
):
    method, path = route
    cursor = FOREIGN_CURSORS[kind](world, route)

    answer = api.request(method, _path(path, **world.ids()), params={**_required_query(route), "cursor": cursor})

    assert_error(answer, 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize("route", CURSORED, ids=[_id(r) for r in CURSORED])
def test_an_empty_cursor_is_422_saying_to_leave_it_out_for_the_first_page(
    api: InProcessApi, world: World, route: tuple[str, str]
):
    # A client that templates `?cursor=${next}` sends it empty on the first page: told what to
    # do, not that its cursor was tampered with.
    method, path = route

    answer = api.request(method, _path(path, **world.ids()), params={**_required_query(route), "cursor": ""})

    error = assert_error(answer, 422, "validation_error", "cursor")
    assert error["details"] == [{"field": "cursor", "message": "is empty: leave cursor out to read the first page"}]


@pytest.mark.parametrize("route", CURSORED, ids=[_id(r) for r in CURSORED])
def test_next_cursor_is_null_on_the_last_page_and_no_page_is_empty(
    api: InProcessApi, world: World, route: tuple[str, str]
):
    method, path = route
    path, query = _path(path, **world.ids()), _required_query(route)
    whole = api.request(method, path, params={**query, "limit": 100})
    assert whole.status_code == 200, whole.text
    count = len(whole.json()["items"])
    assert whole.json()["next_cursor"] is None

    pages, cursor = [], None
    while len(pages) <= count:
        page = api.request(method, path, params={**query, "limit": 1, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        pages.append(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break

    assert cursor is None
    assert [len(items) for items in pages] == [1] * count or (count, pages) == (0, [[]])
    if count:
        exact = api.request(method, path, params={**query, "limit": count})
        assert exact.json()["next_cursor"] is None, "a page holding the last items names a next page"


# The lists the world fills with two or more items: there the walk above pages for real.
FILLED = {
    "/locations",
    "/orders",
    "/api-keys",
    "/webhooks",
    "/vendors",
    "/purchase-orders",
    "/sourcing/rules/history",
    "/orders/{order_id}/history",
    "/orders/{order_id}/access-log",
}


def test_the_world_fills_the_lists_it_says_it_fills(api: InProcessApi, world: World):
    for path in sorted(FILLED):
        assert len(api.get(_path(path, **world.ids()), params={"limit": 100}).json()["items"]) >= 2, path


def _orders_of(api: InProcessApi, world: World, key: str, channel: str) -> None:
    for _ in range(2):
        placed = api.post("/orders", key=key, json=order_body((world.sku, 1), channel=channel))
        assert placed.status_code == 201, placed.text


def _webhooks_of(api: InProcessApi, world: World, key: str, channel: str) -> None:
    for _ in range(2):
        made = api.post("/webhooks", key=key, json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
        assert made.status_code == 201, made.text


def _returns_of(api: InProcessApi, world: World, key: str, channel: str) -> None:
    order = world.delivered(channel)  # of 3 units: a return of one, twice
    for _ in range(2):
        line = {"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}
        made = api.post(f"/orders/{order}/returns", key=key, json={"lines": [line]})
        assert made.status_code == 201, made.text


# The lists a channel key sees its channel's part of, and how to give a channel two items in one.
CHANNEL_LISTS: dict[str, Callable[[InProcessApi, World, str, str], None]] = {
    "/orders": _orders_of,
    "/returns": _returns_of,
    "/webhooks": _webhooks_of,
}


@pytest.mark.parametrize("given_to", ["another channel's key", "the admin"])
@pytest.mark.parametrize("path", sorted(CHANNEL_LISTS))
def test_a_cursor_given_to_another_caller_is_422_to_a_channel_key(
    api: InProcessApi, world: World, path: str, given_to: str
):
    if path not in world.channel_keys:  # two channels' keys, each with two items in the list
        keys = []
        for channel in (f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"):
            keys.append(issue(api, "orders:write", "orders:read", "returns:write", "webhooks:write", channel=channel))
            CHANNEL_LISTS[path](api, world, keys[-1], channel)
        world.channel_keys[path] = (keys[0], keys[1])
    mine, theirs = world.channel_keys[path]
    first = api.get(path, params={"limit": 1}, **({} if given_to == "the admin" else {"key": theirs}))
    assert first.json()["next_cursor"], first.text

    answer = api.get(path, key=mine, params={"limit": 1, "cursor": first.json()["next_cursor"]})

    assert_error(answer, 422, "invalid_cursor", "cursor")


# --- Bodies ---------------------------------------------------------------------------------------------

RAW_BODIES: dict[str, tuple[bytes, int, str]] = {
    "duplicate keys": (b'{"a": 1, "a": 2}', 400, "malformed_json"),
    "an array": (b"[]", 400, "malformed_json"),
    "a string": (b'"x"', 400, "malformed_json"),
    "a number": (b"1", 400, "malformed_json"),
    "not UTF-8": (b'{"a": "\xff"}', 400, "malformed_json"),
    "over 256 KiB": (b'{"a": "' + b"x" * (256 * 1024) + b'"}', 413, "payload_too_large"),
}


# A carrier's webhook may be an array (its plugin's format): that one pair is not a refusal.
NOT_ONE_OBJECT = [
    pytest.param(route, kind, id=f"{kind}-{_id(route)}")
    for route in KEYED
    for kind in sorted(RAW_BODIES)
    if not (route == CARRIER_WEBHOOK and kind == "an array")
]


@pytest.mark.parametrize(("route", "kind"), NOT_ONE_OBJECT)
def test_a_body_that_is_not_one_json_object_is_refused_before_the_route(
    api: InProcessApi, route: tuple[str, str], kind: str
):
    raw, status, code = RAW_BODIES[kind]
    method, path = route

    answer = api.request(
        method, _path(path), params=_required_query(route), data=raw, headers={"Content-Type": "application/json"}
    )

    assert_error(answer, status, code)


@pytest.mark.parametrize("route", [r for r in KEYED if r != CARRIER_WEBHOOK], ids=_id)
def test_an_unknown_field_is_422_naming_it(api: InProcessApi, route: tuple[str, str]):
    method, path = route

    headers = {"If-Match": "1"}  # else PATCH /orders/{order_id} is 428, whatever its body

    answer = api.request(method, _path(path), params=_required_query(route), json={"zz_unknown": 1}, headers=headers)

    assert_error(answer, 422, "validation_error", "zz_unknown")


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _leaves(schema: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Each scalar a body may hold, by its path (lists by their first entry), with its JSON type."""
    schema = _schema(schema)
    if "anyOf" in schema:
        for choice in schema["anyOf"]:
            if choice.get("type") != "null":
                yield from _leaves(choice, path)
    elif "properties" in schema or isinstance(schema.get("additionalProperties"), dict):
        for name, field in schema.get("properties", {}).items():
            yield from _leaves(field, (*path, name))
        if isinstance(schema.get("additionalProperties"), dict):
            yield from _leaves(schema["additionalProperties"], (*path, "some-key"))
    elif schema.get("type") == "array":
        yield from _leaves(schema.get("items", {}), (*path, 0))
    elif schema.get("type") in WRONG_TYPES:
        yield path, schema["type"]


def _field(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def _body_with(path: tuple[str | int, ...], value: Any) -> Any:
    """The smallest body holding `value` at `path` ({"lines": [{"quantity": value}]})."""
    for step in reversed(path):
        value = [value] if isinstance(step, int) else {step: value}
    return value


def _request_schema(route: tuple[str, str]) -> dict[str, Any] | None:
    body = OPERATIONS[route].get("requestBody", {}).get("content", {}).get("application/json", {})
    return body.get("schema")


# JSON values of another type than the field's: a number for a string, a string for a number, ...
WRONG_TYPES: dict[str, list[Any]] = {
    "string": [5, True],
    "integer": ["5", 1.5, True],
    "number": ["5", True],
    "boolean": ["true", 1],
}
# A batch of shipment confirmations answers each item (200, an error per refused item), not 422.
BATCHES = {("POST", "/shipments/confirmations")}
TYPED = [
    pytest.param(route, path, value, id=_id(route, _field(path), json.dumps(value)))
    for route in OPERATIONS
    if (schema := _request_schema(route)) is not None and route != CARRIER_WEBHOOK
    for path, kind in _leaves(schema)
    for value in WRONG_TYPES[kind]
]


@pytest.mark.parametrize(("route", "path", "value"), TYPED)
def test_a_value_of_another_json_type_is_422_naming_its_field(
    api: InProcessApi, route: tuple[str, str], path: tuple[str | int, ...], value: Any
):
    method, template = route
    field = _field(path)

    answer = api.request(method, _path(template), json=_body_with(path, value), headers={"If-Match": "1"})

    if route in BATCHES:  # the batch is answered, its item refused in the same shape
        assert answer.status_code == 200, answer.text
        error = answer.json()["items"][0]["error"]
        assert error["code"] == "validation_error", error
    else:
        error = assert_error(answer, 422, "validation_error")
    named = [detail.get("field") or "" for detail in error["details"]]
    assert any(name == field or name.startswith((f"{field}.", f"{field}[")) for name in named), (field, named)


def _money(schema: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of each Money a body may hold."""
    if schema.get("$ref", "").endswith("/Money"):
        yield path
        return
    schema = _schema(schema)
    for choice in schema.get("anyOf", []):
        yield from _money(choice, path)
    for name, field in schema.get("properties", {}).items():
        yield from _money(field, (*path, name))
    if schema.get("type") == "array":
        yield from _money(schema.get("items", {}), (*path, 0))


MONIES = [
    pytest.param(route, path, amount, id=_id(route, _field(path), amount["amount"], amount["currency"]))
    for route in OPERATIONS
    if (schema := _request_schema(route)) is not None
    for path in _money(schema)
    # API.md: `amount` has "exactly the currency's minor units": fewer places are as wrong as more.
    for amount in (
        {"amount": "1.234", "currency": "USD"},
        {"amount": "1.5", "currency": "JPY"},
        {"amount": "1.0000", "currency": "KWD"},
        {"amount": "1", "currency": "USD"},
        {"amount": "1.5", "currency": "EUR"},
        {"amount": "1.00", "currency": "KWD"},
    )
]


def test_the_walk_finds_every_money_the_contract_takes():
    assert {(param.values[0], _field(param.values[1])) for param in MONIES} >= {
        (("PUT", "/products/{sku}"), "price"),
        (("POST", "/orders/{order_id}/refunds"), "amount"),
        (("POST", "/purchase-orders"), "lines[0].unit_cost"),
    }


@pytest.mark.parametrize(("route", "path", "amount"), MONIES)
def test_money_in_other_minor_units_than_its_currencys_is_422_naming_its_amount(
    api: InProcessApi, route: tuple[str, str], path: tuple[str | int, ...], amount: dict[str, str]
):
    method, template = route
    field = f"{_field(path)}.amount"  # API.md: details name the field at fault, the amount, not its currency

    error = assert_error(api.request(method, _path(template), json=_body_with(path, amount)), 422, "validation_error")
    named = [detail.get("field") or "" for detail in error["details"]]
    assert field in named, (field, named)
    assert any(f"{amount['currency']} amounts have" in detail["message"] for detail in error["details"]), error


# --- Headers --------------------------------------------------------------------------------------------

MALFORMED_HEADERS = [
    *[("idempotency-key", route, value) for route in KEYED_BY_CLIENT for value in ("k" * 256, "a\tb", "a\x7fb", "é")],
    *[("if-match", route, value) for route in VERSIONED for value in ("abc", '"7', "W/7", "1" * 11)],
]


@pytest.mark.parametrize(
    ("header", "route", "value"), MALFORMED_HEADERS, ids=[_id(r, h, repr(v[:12])) for h, r, v in MALFORMED_HEADERS]
)
def test_a_malformed_idempotency_key_or_if_match_is_400_naming_it(
    api: InProcessApi, header: str, route: tuple[str, str], value: str
):
    method, path = route
    named = "-".join(part.capitalize() for part in header.split("-"))

    answer = api.request(method, _path(path), json={}, headers={named: value})

    assert_error(answer, 400, "malformed_header", named)


# Each route that honours Idempotency-Key: a fresh target, and two bodies it takes.
Reuse = Callable[[World], tuple[str, dict[str, Any], dict[str, Any]]]


def _cancel(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    order = world.allocated()["id"]
    lines = [{"line_id": "L1", "quantity": 1}]
    return f"/orders/{order}/cancel", {"reason": "x", "lines": lines}, {"reason": "y", "lines": lines}


def _hold(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return f"/orders/{world.allocated()['id']}/hold", {"reason": "other"}, {"reason": "fraud_review"}


def _release(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    order = world.allocated()["id"]
    assert world.api.post(f"/orders/{order}/hold", json={"reason": "other"}).status_code == 200
    return f"/orders/{order}/release", {"note": "a"}, {"note": "b"}


def _refund(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    one, two = ({"amount": {"amount": amount, "currency": "USD"}, "reason": "late"} for amount in ("1.00", "2.00"))
    return f"/orders/{world.delivered()}/refunds", one, two


def _return(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    one, two = (
        {"lines": [{"line_id": "L1", "quantity": quantity, "reason": "x", "reason_code": "other"}]}
        for quantity in (1, 2)
    )
    return f"/orders/{world.delivered()}/returns", one, two


def _receive(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    po = world.api.post("/purchase-orders", json=world.purchase("v1", 5)).json()["id"]
    one, two = ({"lines": [{"sku": world.sku, "quantity": quantity}]} for quantity in (1, 2))
    return f"/purchase-orders/{po}/receive", one, two


def _confirm(world: World) -> tuple[str, dict[str, Any], dict[str, Any]]:
    order = world.allocated()
    item = {"order_id": order["id"], "shipment_id": order["shipments"][0]["id"]}
    return (
        "/shipments/confirmations",
        {"items": [{**item, "action": "ship"}]},
        {"items": [{**item, "action": "deliver"}]},
    )


REUSES: dict[tuple[str, str], Reuse] = {
    ("POST", "/orders"): lambda w: ("/orders", order_body((w.sku, 1)), order_body((w.sku, 2))),
    ("PUT", "/inventory/{sku}/{location_id}"): lambda w: (
        f"/inventory/{w.sku}/{w.location}",
        {"on_hand": 500},
        {"on_hand": 501},
    ),
    ("POST", "/inventory/{sku}/{location_id}/adjustments"): lambda w: (
        f"/inventory/{w.sku}/{w.location}/adjustments",
        {"delta": 1, "reason": "receipt"},
        {"delta": 2, "reason": "receipt"},
    ),
    ("POST", "/purchase-orders"): lambda w: ("/purchase-orders", w.purchase("v1", 1), w.purchase("v1", 2)),
    ("POST", "/orders/{order_id}/cancel"): _cancel,
    ("POST", "/orders/{order_id}/hold"): _hold,
    ("POST", "/orders/{order_id}/release"): _release,
    ("POST", "/orders/{order_id}/refunds"): _refund,
    ("POST", "/orders/{order_id}/returns"): _return,
    ("POST", "/purchase-orders/{po_id}/receive"): _receive,
    ("POST", "/shipments/confirmations"): _confirm,
    ("POST", "/webhooks"): lambda w: (
        "/webhooks",
        {"url": "http://127.0.0.1:9/hook", "events": ["order.created"]},
        {"url": "http://127.0.0.1:9/hook", "events": ["shipment.shipped"]},
    ),
}


def test_every_route_that_honours_an_idempotency_key_is_in_the_reuse_matrix():
    assert set(REUSES) == set(KEYED_BY_CLIENT)


@pytest.mark.parametrize("route", sorted(REUSES), ids=_id)
def test_a_key_sent_again_refuses_another_body_replays_its_own_from_either_record_and_after_a_died_attempt_acts_once(
    api: InProcessApi, world: World, route: tuple[str, str]
):
    # One target and first request per route for what a key sent again meets, in turn (each step
    # leaves the target as it was: a refused or replayed request runs no route, and the first attempt
    # is what the retry finds): another body is 409 and changes nothing; its own body replays the
    # first answer, from the record as kept now (deflated, functions/api/idempotency.py) and as one
    # stored in the 24 h before that kept it (powertools' own JSON, its keys sorted); and once
    # Lambda killed the first attempt after its change and before powertools marked its record done,
    # the retry runs again and must find that change by its own keys (an order's id or created entry,
    # a refund's id, a cancel's entry, a PO's id, a receipt's key...) instead of making a second one.
    # (Three tests each made their own target: a third of this file's CPU was orders run to allocated.)
    from functions.api.idempotency import ANSWERS

    method, _ = route
    path, first, other = REUSES[route](world)
    key = {"Idempotency-Key": unique("key")}
    before = idempotency_records()
    done = api.request(method, path, json=first, headers=key)
    assert done.status_code in (200, 201), done.text
    ((record_id, record),) = ((record_id, item) for record_id, item in idempotency_records().items()
                              if record_id not in before)  # fmt: skip

    reused = api.request(method, path, json=other, headers=key)
    again = api.request(method, path, json=copy.deepcopy(first), headers=key)
    answer = ANSWERS.from_dict(json.loads(record["data"]["S"]))
    stored_before = {**record, "data": {"S": json.dumps(answer, sort_keys=True)}}
    boto3.client("dynamodb", region_name="us-east-1").put_item(TableName=os.environ["IDEMPOTENCY_TABLE"],
                                                               Item=stored_before)  # fmt: skip
    from_plain = api.request(method, path, json=copy.deepcopy(first), headers=key)
    _died_before_its_record_was_done(record_id)
    retried = api.request(method, path, json=copy.deepcopy(first), headers=key)

    assert_error(reused, 409, "idempotency_key_reused", "Idempotency-Key")
    # A label link is signed as it is shown, so one shown in another second differs by its signature.
    for sent_again in (again, from_plain, retried):
        assert (sent_again.status_code, _unsigned(sent_again.json())) == (done.status_code, _unsigned(done.json()))


def _unsigned(answer: Any) -> Any:
    """`answer` with each `label_url` cut before its query (the signature and its time)."""
    if isinstance(answer, dict):
        return {
            name: value.partition("?")[0] if name == "label_url" and isinstance(value, str) else _unsigned(value)
            for name, value in answer.items()
        }
    if isinstance(answer, list):
        return [_unsigned(item) for item in answer]
    return answer


def _died_before_its_record_was_done(record_id: str) -> None:
    """The record as a function killed after its change leaves it: still INPROGRESS, no answer, and
    its in-progress expiry (the invocation's deadline) passed, so powertools lets a retry run again."""
    boto3.client("dynamodb", region_name="us-east-1").update_item(
        TableName=os.environ["IDEMPOTENCY_TABLE"],
        Key={"id": {"S": record_id}},
        UpdateExpression="SET #status = :running, in_progress_expiration = :passed REMOVE #data",
        ExpressionAttributeNames={"#status": "status", "#data": "data"},
        ExpressionAttributeValues={":running": {"S": "INPROGRESS"}, ":passed": {"N": "1"}},
    )


@pytest.fixture(scope="module")
def other_client(world: World) -> str:
    """Another client's API key, with every scope but admin: only sent, never changed, by the tests."""
    return issue(world.api, *(scope.value for scope in Scope if scope is not Scope.ADMIN))


@pytest.mark.parametrize("route", sorted(REUSES), ids=_id)
def test_the_same_idempotency_key_sent_by_another_api_key_or_on_another_target_of_the_route_is_another_request(
    api: InProcessApi, world: World, other_client: str, route: tuple[str, str]
):
    # A key is scoped to the API key that sent it: two clients choosing the same key (a counter, a
    # date) never get each other's answers, nor a 409 for the other's body. And to the target its
    # route names: the same key on another order, stock item or purchase order is another request.
    # (Both after one first request: each made its own target, an order run to allocated for most.)
    method, route_path = route
    path, first, other = REUSES[route](world)
    # A route without an id has one path: another body on it (a second target of POST
    # /shipments/confirmations was an order run to allocated, then never sent).
    another_path, another_first, _ = REUSES[route](world) if "{" in route_path else (path, other, other)
    if another_path == path:  # no id in the path: another body on the same route
        another_first = other
    key = {"Idempotency-Key": unique("key")}
    done = api.request(method, path, json=first, headers=key)
    assert done.status_code in (200, 201), done.text

    theirs = api.request(method, another_path, json=another_first, headers=key, key=other_client)

    assert theirs.status_code in (200, 201), theirs.text
    assert _unsigned(theirs.json()) != _unsigned(done.json())
    if "{" not in route_path:
        return
    elsewhere_path, elsewhere_first, _ = REUSES[route](world)
    if elsewhere_path == path:  # one stock item: another location's
        elsewhere_path = path.replace(world.location, Catalog(world.api).location())

    elsewhere = api.request(method, elsewhere_path, json=elsewhere_first, headers=key)

    assert elsewhere.status_code in (200, 201), elsewhere.text
    assert _unsigned(elsewhere.json()) != _unsigned(done.json())


@pytest.mark.parametrize("route", sorted(REUSES), ids=_id)
def test_one_request_sent_twice_at_once_under_its_key_acts_once_and_a_retry_after_gets_its_answer(
    api: InProcessApi, world: World, route: tuple[str, str]
):
    # The twin finds powertools' INPROGRESS record: 409 request_in_progress (README), never a second
    # effect; once the first is done, the same request answers as it did.
    method, _ = route
    path, first, _other = REUSES[route](world)
    key = {"Idempotency-Key": unique("key")}
    answers: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def send(n: int) -> None:
        barrier.wait()
        answers[n] = api.request(method, path, json=copy.deepcopy(first), headers=key)

    run_threads(threading.Thread(target=send, args=(n,)) for n in range(2))
    after = api.request(method, path, json=copy.deepcopy(first), headers=key)

    done = [answer for answer in answers if answer.status_code in (200, 201)]
    assert done and all(answer.status_code in (200, 201, 409) for answer in answers), [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert_error(answer, 409, "request_in_progress", "Idempotency-Key")
    for answer in (*done, after):
        assert (answer.status_code, _unsigned(answer.json())) == (done[0].status_code, _unsigned(done[0].json()))


# Each route that honours Idempotency-Key: a target, a body its service refuses (a 4xx decided
# after the key's record was started), what makes the second body pass, and that body.
Refusal = Callable[[World], tuple[str, dict[str, Any], Callable[[], None], dict[str, Any]]]


def _refused_hold(world: World) -> tuple[str, dict[str, Any], Callable[[], None], dict[str, Any]]:
    order = world.allocated()["id"]
    assert world.api.post(f"/orders/{order}/hold", json={"reason": "other"}).status_code == 200  # held already: 409

    def release() -> None:
        assert world.api.post(f"/orders/{order}/release", json={}).status_code == 200

    return f"/orders/{order}/hold", {"reason": "other"}, release, {"reason": "other"}


def _refused_release(world: World) -> tuple[str, dict[str, Any], Callable[[], None], dict[str, Any]]:
    order = world.allocated()["id"]  # not on hold: 409

    def hold() -> None:
        assert world.api.post(f"/orders/{order}/hold", json={"reason": "other"}).status_code == 200

    return f"/orders/{order}/release", {"note": "a"}, hold, {"note": "a"}


def _nothing() -> None:
    return None


def _refused_count(world: World) -> tuple[str, dict[str, Any], Callable[[], None], dict[str, Any]]:
    # Below the units a ready pickup holds (no reject sends it elsewhere): 409, the key not recorded.
    catalog = Catalog(world.api)
    store = catalog.location(name="Store", type="store", ships=False, pickup=True)
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, store, 2)
    placed = world.api.post("/orders", json=order_body((sku, 2), fulfillment={"type": "pickup", "location_id": store}))
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(world.api, placed.json()["id"])
    ready = world.api.post(f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/ready")
    assert ready.status_code == 200, ready.text
    return f"/inventory/{sku}/{store}", {"on_hand": 1}, _nothing, {"on_hand": 2}


REFUSALS: dict[tuple[str, str], Refusal] = {
    ("POST", "/orders"): lambda w: ("/orders", order_body((w.sku, 10**6)), _nothing, order_body((w.sku, 1))),
    ("PUT", "/inventory/{sku}/{location_id}"): _refused_count,
    ("POST", "/inventory/{sku}/{location_id}/adjustments"): lambda w: (
        f"/inventory/{w.sku}/{w.location}/adjustments",
        {"delta": -(10**8), "reason": "damage"},
        _nothing,
        {"delta": 1, "reason": "receipt"},
    ),
    ("POST", "/purchase-orders"): lambda w: (
        "/purchase-orders",
        w.purchase("no-such-vendor", 1),
        _nothing,
        w.purchase("v1", 1),
    ),
    ("POST", "/orders/{order_id}/cancel"): lambda w: (
        f"/orders/{w.allocated()['id']}/cancel",
        {"reason": "x", "lines": [{"line_id": "L1", "quantity": 4}]},
        _nothing,
        {"reason": "x", "lines": [{"line_id": "L1", "quantity": 1}]},
    ),
    ("POST", "/orders/{order_id}/hold"): _refused_hold,
    ("POST", "/orders/{order_id}/release"): _refused_release,
    ("POST", "/orders/{order_id}/refunds"): lambda w: (
        f"/orders/{w.delivered()}/refunds",
        {"amount": {"amount": "999.00", "currency": "USD"}, "reason": "late"},
        _nothing,
        {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "late"},
    ),
    ("POST", "/orders/{order_id}/returns"): lambda w: (
        f"/orders/{w.delivered()}/returns",
        {"lines": [{"line_id": "L1", "quantity": 4, "reason": "x"}]},
        _nothing,
        {"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]},
    ),
    ("POST", "/purchase-orders/{po_id}/receive"): lambda w: (
        f"/purchase-orders/{w.api.post('/purchase-orders', json=w.purchase('v1', 5)).json()['id']}/receive",
        {"lines": [{"sku": w.sku, "quantity": 6}]},
        _nothing,
        {"lines": [{"sku": w.sku, "quantity": 1}]},
    ),
    ("POST", "/webhooks"): lambda w: (
        "/webhooks",
        {"url": "http://127.0.0.1:9/hook", "events": ["import.completed"], "channel": "web"},
        _nothing,
        {"url": "http://127.0.0.1:9/hook", "events": ["order.created"], "channel": "web"},
    ),
}


def test_every_route_that_honours_an_idempotency_key_but_the_confirmations_batch_is_in_the_refusal_matrix():
    # A batch is not refused whole: each item's refusal is in its 200 answer (and one to retry is
    # not kept: tests/integration/test_shipment_confirmations.py).
    assert set(REFUSALS) == set(KEYED_BY_CLIENT) - {("POST", "/shipments/confirmations")}


@pytest.mark.parametrize("route", sorted(REFUSALS), ids=_id)
def test_a_request_refused_under_a_key_is_not_kept_and_the_key_then_runs_the_request_that_passes(
    api: InProcessApi, world: World, route: tuple[str, str]
):
    # README: an idempotent first attempt that failed is not stored. Its refusal is not replayed to
    # the request sent when the refusal no longer holds, nor is that 409 idempotency_key_reused.
    method, _ = route
    path, refused, unblock, passing = REFUSALS[route](world)
    key = {"Idempotency-Key": unique("key")}
    no = api.request(method, path, json=refused, headers=key)
    assert 400 <= no.status_code < 500 and no.status_code != 400, no.text
    unblock()

    yes = api.request(method, path, json=passing, headers=key)

    assert yes.status_code in (200, 201), yes.text


def test_one_idempotency_key_on_an_orders_hold_release_cancel_and_refund_is_four_requests(
    api: InProcessApi, world: World
):
    # A hold's, a release's and a cancel's history entries all keep the key (request_key): each
    # finds only its own kind, so the release is not taken for a retry of the hold.
    order = world.delivered()
    other = world.allocated()["id"]
    key = {"Idempotency-Key": unique("key")}

    held = api.post(f"/orders/{other}/hold", json={"reason": "other"}, headers=key)
    released = api.post(f"/orders/{other}/release", json={}, headers=key)
    cancelled = api.post(f"/orders/{other}/cancel", json={"reason": "x", "lines": [{"line_id": "L1", "quantity": 1}]},
                         headers=key)  # fmt: skip
    refunded = api.post(f"/orders/{order}/refunds", json={"amount": {"amount": "1.00", "currency": "USD"},
                                                          "reason": "late"}, headers=key)  # fmt: skip

    assert [held.status_code, released.status_code, cancelled.status_code, refunded.status_code] == [200, 200, 200, 201]
    assert (held.json()["status"], released.json()["status"]) == ("on_hold", "allocated")
    assert cancelled.json()["lines"][0]["cancelled_quantity"] == 1
