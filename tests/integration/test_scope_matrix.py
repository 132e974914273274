"""README's "Security: who can do what", route by route: every route that takes a key, sent with a
key of each single scope, through the in-process gateway in front of the real authorizer and API
handler. The table below is the README's table written out per route (not read from the routes'
@requires, which is what it checks): a scope the table does not give for a route is 403
`forbidden`, one it gives gets past the check (whatever the empty request then earns), and `admin`
gets past every one. A route added later without a line here fails the first test."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from core.access import Scope
from functions.api.access import PUBLIC, ScopeTable
from functions.api.app import every_route
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue
from tests.integration.test_api_paths import WELL_FORMED as LOOKED_UP

ANY = "any valid key"

# README.md, "Security: who can do what": each row's routes, as its "may" column names them.
README_TABLE: dict[str, set[tuple[str, str]]] = {
    "orders:write": {("POST", "/orders"), ("PATCH", "/orders/{order_id}"), ("POST", "/orders/{order_id}/cancel")},
    "orders:read": {
        ("GET", "/orders"),
        ("GET", "/orders/{order_id}"),
        ("GET", "/orders/{order_id}/history"),
        ("GET", "/orders/{order_id}/refunds"),
        ("GET", "/orders/{order_id}/returns"),
        ("GET", "/orders/{order_id}/notifications"),
        ("GET", "/returns"),
        ("GET", "/returns/{return_id}"),
        ("GET", "/customers"),
        ("GET", "/customers/{customer_id}"),
        ("GET", "/imports"),
        ("GET", "/imports/{import_id}"),
        ("POST", "/sourcing/simulate"),
    },
    "orders:approve": {("POST", "/orders/{order_id}/hold"), ("POST", "/orders/{order_id}/release")},
    "catalog:write": {("PUT", "/products/{sku}"), ("PUT", "/locations/{location_id}")},
    "inventory:write": {
        ("PUT", "/inventory/{sku}/{location_id}"),
        ("POST", "/inventory/{sku}/{location_id}/adjustments"),
    },
    "refunds:write": {("POST", "/orders/{order_id}/refunds")},
    "fulfillment:write": {
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/ship"),
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/deliver"),
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/ready"),
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/reject"),
        ("POST", "/shipments/confirmations"),
        ("POST", "/carriers/{carrier}/tracking"),
        ("POST", "/returns/{return_id}/receive"),
    },
    "returns:write": {
        ("POST", "/orders/{order_id}/returns"),
        ("POST", "/returns/{return_id}/approve"),
        ("POST", "/returns/{return_id}/reject"),
    },
    "webhooks:write": {
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("GET", "/webhooks/{webhook_id}"),
        ("DELETE", "/webhooks/{webhook_id}"),
        ("GET", "/webhooks/{webhook_id}/deliveries"),
        ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
    },
    "reports:read": {
        ("GET", "/reports/top-products"),
        ("GET", "/reports/top-customers"),
        ("GET", "/reports/top-regions"),
    },
    "audit:read": {("GET", "/orders/{order_id}/access-log")},
    "purchasing:write": {
        ("PUT", "/vendors/{vendor_id}"),
        ("GET", "/vendors"),
        ("POST", "/purchase-orders"),
        ("GET", "/purchase-orders"),
        ("GET", "/purchase-orders/{po_id}"),
        ("POST", "/purchase-orders/{po_id}/submit"),
        ("POST", "/purchase-orders/{po_id}/cancel"),
        ("POST", "/purchase-orders/{po_id}/receive"),
        ("PUT", "/inventory/{sku}/{location_id}/reorder"),
        ("DELETE", "/inventory/{sku}/{location_id}/reorder"),
    },
    "admin": {
        ("POST", "/api-keys"),
        ("GET", "/api-keys"),
        ("DELETE", "/api-keys/{key_id}"),
        ("GET", "/plugins"),
        ("PUT", "/sourcing/rules"),
    },
    ANY: {
        ("GET", "/products/{sku}"),
        ("GET", "/locations"),
        ("GET", "/inventory/{sku}"),
        ("GET", "/sourcing/rules"),
        ("GET", "/sourcing/rules/history"),
    },
}
NEEDS = {route: scope for scope, routes in README_TABLE.items() for route in routes}
_TABLE = ScopeTable(every_route())
KEYED = sorted(route for route in _TABLE.routes() if _TABLE.requirement(*route) is not PUBLIC)
WELL_FORMED = {**LOOKED_UP, "vendor_id": "no-such-vendor"}
# The query parameters a route requires, so that its request is complete but for the body.
REQUIRED_QUERY = {("GET", "/customers"): {"email": "ada@example.com"}}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels(webhooks=True) as started:
        yield started


@pytest.fixture(scope="module")
def keys(api: InProcessApi) -> dict[Scope, str]:
    """One key per scope, holding that scope alone, bound to no channel."""
    return {scope: issue(api, scope) for scope in Scope}


def test_the_readme_table_names_every_route_that_takes_a_key_and_no_other():
    assert set(NEEDS) == set(KEYED)
    assert sum(map(len, README_TABLE.values())) == len(NEEDS), "a route in two rows of the table"


def _send(api: InProcessApi, route: tuple[str, str], key: str):
    method, path = route
    path = re.sub(r"\{(\w+)\}", lambda m: WELL_FORMED[m.group(1)], path)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return api.request(method, path, key=key, json=body, params=REQUIRED_QUERY.get(route))


@pytest.mark.parametrize("scope", list(Scope), ids=str)
@pytest.mark.parametrize("route", KEYED, ids=" ".join)
def test_a_key_of_one_scope_passes_exactly_the_routes_the_readme_gives_it(
    api: InProcessApi, keys: dict[Scope, str], route: tuple[str, str], scope: Scope
):
    needed = NEEDS[route]
    answer = _send(api, route, keys[scope])

    if scope is Scope.ADMIN or needed in (ANY, scope):
        assert answer.status_code not in (401, 403), answer.text
        assert answer.status_code < 500, answer.text
    else:
        assert_error(answer, 403, "forbidden")
        assert needed in answer.json()["error"]["message"]
