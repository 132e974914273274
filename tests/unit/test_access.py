"""Who may call what: API key requests, scopes, and the route table the API checks before anything else."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from pydantic import ValidationError

from core.access import Caller, NewApiKey, Scope, allows, hash_secret, new_secret, refuse_elsewhere
from core.errors import Forbidden
from functions.api.access import ANY_KEY, PUBLIC, ScopeTable, caller_from, requirement_of, requires
from functions.api.errors import ApiError
from infra.local.template import Template

EVERY_SCOPE = " ".join(Scope)


def event(
    method: str, resource: str, scopes: str | None = None, channel: str = "", key_id: str = "key_test",
    location_ids: str = "",
) -> dict:  # fmt: skip
    """A proxy event for `method resource`; with `scopes`, as the authorizer passes its caller."""
    evt: dict[str, Any] = {"httpMethod": method, "resource": resource, "path": resource, "requestContext": {}}
    if scopes is not None:
        evt["requestContext"]["authorizer"] = {
            "principalId": key_id,
            "key_id": key_id,
            "scopes": scopes,
            "channel": channel,
            "location_ids": location_ids,
        }
    return evt


def refusal(table: ScopeTable, evt: dict) -> ApiError:
    with pytest.raises(ApiError) as refused:
        table.check(evt)
    return refused.value


@pytest.fixture(scope="module")
def table() -> ScopeTable:
    """The real app's table, built the way lambda_handler builds it."""
    from functions.api.app import _scope_table

    return _scope_table()


# --- NewApiKey: the body of POST /api-keys ------------------------------------------------------


def test_a_new_key_request_with_distinct_known_scopes_is_valid_and_its_scopes_come_back_sorted():
    request = NewApiKey.model_validate(
        {"name": "  Web storefront ", "scopes": ["orders:write", "orders:read"], "channel": "web"}
    )

    assert request.name == "Web storefront"
    assert request.scopes == [Scope.ORDERS_READ, Scope.ORDERS_WRITE]
    assert request.channel == "web"


def test_a_new_key_request_without_a_channel_is_valid():
    assert NewApiKey.model_validate({"name": "ops", "scopes": ["reports:read"]}).channel is None


def test_an_admin_key_without_a_channel_is_valid():
    assert NewApiKey.model_validate({"name": "root", "scopes": ["admin"]}).scopes == [Scope.ADMIN]


def test_a_new_key_request_may_bind_a_channel_and_locations_both():
    request = NewApiKey.model_validate(
        {"name": "3pl", "scopes": ["fulfillment:write"], "channel": "web", "location_ids": ["wh-west", "wh-east"]}
    )

    assert (request.channel, request.location_ids) == ("web", ["wh-west", "wh-east"])
    assert NewApiKey.model_validate({"name": "ops", "scopes": ["reports:read"]}).location_ids is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "x", "scopes": ["orders:read", "orders:read"]}, "must not repeat"),
        ({"name": "x", "scopes": ["admin"], "channel": "web"}, "cannot be bound"),
        ({"name": "x", "scopes": ["admin", "orders:read"], "channel": "web"}, "cannot be bound"),
        ({"name": "x", "scopes": ["orders:delete"]}, "Input should be"),
        ({"name": "x", "scopes": ["ADMIN"]}, "Input should be"),
        ({"name": "x", "scopes": []}, "at least 1"),
        ({"name": "x"}, "Field required"),
        ({"name": "   ", "scopes": ["orders:read"]}, "at least 1"),
        ({"name": "x" * 101, "scopes": ["orders:read"]}, "at most 100"),
        ({"name": "x", "scopes": ["orders:read"], "channel": "Web Shop"}, "pattern"),
        ({"name": "x", "scopes": ["orders:read"], "key": "oms_mine"}, "Extra inputs"),
        ({"name": "x", "scopes": ["orders:read"], "id": "key_mine"}, "Extra inputs"),
        ({"name": "x", "scopes": ["admin"], "location_ids": ["wh-east"]}, "cannot be bound"),
        ({"name": "x", "scopes": ["fulfillment:write"], "location_ids": []}, "at least 1"),
        ({"name": "x", "scopes": ["fulfillment:write"], "location_ids": ["wh-east", "wh-east"]}, "must not repeat"),
        ({"name": "x", "scopes": ["fulfillment:write"], "location_ids": ["wh east"]}, "pattern"),
    ],
    ids=[
        "repeated-scope",
        "admin-bound-to-a-channel",
        "admin-among-others-bound-to-a-channel",
        "unknown-scope",
        "scope-in-upper-case",
        "no-scopes",
        "scopes-missing",
        "blank-name",
        "long-name",
        "bad-channel",
        "client-chosen-secret",
        "client-chosen-id",
        "admin-bound-to-a-location",
        "no-locations",
        "repeated-location",
        "bad-location-id",
    ],
)
def test_an_invalid_new_key_request_is_refused(body: dict, reason: str):
    with pytest.raises(ValidationError, match=reason):
        NewApiKey.model_validate(body)


# --- Secrets ----------------------------------------------------------------------------------


def test_a_new_secret_carries_the_prefix_and_at_least_128_random_bits():
    secrets = {new_secret() for _ in range(50)}

    assert len(secrets) == 50
    for secret in secrets:
        assert re.fullmatch(r"oms_[A-Za-z0-9_-]{22,}", secret), secret


def test_a_secret_is_stored_as_a_hash_that_does_not_contain_it():
    secret = new_secret()

    assert hash_secret(secret) == hash_secret(secret)
    assert hash_secret(secret) != hash_secret(secret + "x")
    assert secret not in hash_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", hash_secret(secret))


# --- allows() --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", list(Scope), ids=str)
def test_the_admin_scope_holds_every_scope(scope: Scope):
    assert allows(Caller(key_id="key_admin", scopes=frozenset({Scope.ADMIN})), scope)


@pytest.mark.parametrize("scope", [s for s in Scope if s is not Scope.ORDERS_READ], ids=str)
def test_a_key_holds_only_its_own_scopes(scope: Scope):
    reader = Caller(key_id="key_r", scopes=frozenset({Scope.ORDERS_READ}))

    assert allows(reader, Scope.ORDERS_READ)
    assert not allows(reader, scope)


def test_a_key_without_scopes_holds_nothing():
    nobody = Caller(key_id="key_n", scopes=frozenset())

    assert not any(allows(nobody, scope) for scope in Scope)


# --- The caller the authorizer passes --------------------------------------------------------------


def test_the_caller_comes_from_the_authorizer_context():
    who = caller_from(event("GET", "/orders", scopes="orders:read orders:write", channel="web", key_id="key_abc"))

    assert who == Caller(key_id="key_abc", scopes=frozenset({Scope.ORDERS_READ, Scope.ORDERS_WRITE}), channel="web")


def test_an_empty_channel_in_the_context_means_no_channel():
    assert caller_from(event("GET", "/orders", scopes="admin", channel="")).channel is None


def test_the_callers_locations_come_from_the_authorizer_context_and_empty_means_none():
    bound = caller_from(event("POST", "/shipments/confirmations", scopes="fulfillment:write", location_ids="wh-a st/1"))
    unbound = caller_from(event("POST", "/shipments/confirmations", scopes="fulfillment:write", location_ids=""))

    assert bound is not None and bound.location_ids == frozenset({"wh-a", "st/1"})
    assert unbound is not None and unbound.location_ids is None


@pytest.mark.parametrize(
    ("location_ids", "location_id", "acts"),
    [(None, "wh-east", True), (frozenset({"wh-east"}), "wh-east", True), (frozenset({"wh-east"}), "wh-west", False)],
    ids=["unbound-acts-anywhere", "bound-at-its-own", "bound-elsewhere"],
)
def test_a_key_bound_to_locations_acts_only_at_them(location_ids: frozenset[str] | None, location_id: str, acts: bool):
    who = Caller(key_id="key_3pl", scopes=frozenset({Scope.FULFILLMENT_WRITE}), location_ids=location_ids)

    if acts:
        refuse_elsewhere(who.location_ids, location_id)
    else:
        with pytest.raises(Forbidden, match=f"location {location_id}"):
            refuse_elsewhere(who.location_ids, location_id)


def test_unknown_scopes_in_the_context_are_ignored_not_granted():
    who = caller_from(event("GET", "/orders", scopes="orders:read superuser *"))

    assert who is not None
    assert who.scopes == frozenset({Scope.ORDERS_READ})


def test_the_same_context_hands_out_the_caller_it_made_and_a_changed_one_a_new_caller():
    first = caller_from(event("GET", "/orders", scopes="orders:read", channel="web", key_id="key_same"))

    # The route's caller() after ScopeTable.check, or the same key's next request: not built again.
    assert caller_from(event("POST", "/orders", scopes="orders:read", channel="web", key_id="key_same")) is first
    changed = [
        event("GET", "/orders", scopes="orders:read", channel="web", key_id="key_same", location_ids="wh-east"),
        event("GET", "/orders", scopes="orders:read orders:write", channel="web", key_id="key_same"),
        event("GET", "/orders", scopes="orders:read", channel="store", key_id="key_same"),
        event("GET", "/orders", scopes="orders:read", channel="", key_id="key_same"),
        event("GET", "/orders", scopes="orders:read", channel="web", key_id="key_other"),
    ]
    assert [caller_from(evt) for evt in changed] == [
        Caller(
            key_id="key_same", scopes=frozenset({Scope.ORDERS_READ}), channel="web", location_ids=frozenset({"wh-east"})
        ),
        Caller(key_id="key_same", scopes=frozenset({Scope.ORDERS_READ, Scope.ORDERS_WRITE}), channel="web"),
        Caller(key_id="key_same", scopes=frozenset({Scope.ORDERS_READ}), channel="store"),
        Caller(key_id="key_same", scopes=frozenset({Scope.ORDERS_READ}), channel=None),
        Caller(key_id="key_other", scopes=frozenset({Scope.ORDERS_READ}), channel="web"),
    ]
    with pytest.raises(ValidationError):  # handed out again, so nobody may change it
        first.channel = "store"  # type: ignore[misc]


def test_the_next_request_of_another_key_with_the_same_scopes_and_channel_is_that_keys_own():
    # A warm container's next request from another storefront of the channel: handed the previous
    # request's caller, it would place orders, mint keys and cut off keys in the other key's name.
    first = caller_from(event("GET", "/orders", scopes="orders:read orders:write", channel="web", key_id="key_one"))
    second = caller_from(event("GET", "/orders", scopes="orders:read orders:write", channel="web", key_id="key_two"))

    assert (first.key_id, second.key_id) == ("key_one", "key_two")


@pytest.mark.parametrize(
    "context",
    [None, {}, {"key_id": ""}, {"principalId": "key_x", "scopes": "admin"}],
    ids=["no-authorizer", "empty", "blank-key-id", "no-key-id"],
)
def test_without_a_key_id_there_is_no_caller(context: dict | None):
    evt = event("GET", "/orders")
    if context is not None:
        evt["requestContext"]["authorizer"] = context

    assert caller_from(evt) is None


# --- The app's route table ------------------------------------------------------------------------


def test_every_route_of_the_app_declares_what_it_requires(table: ScopeTable):
    undeclared = sorted(route for route, requirement in table.routes().items() if requirement is None)

    assert undeclared == [], f"routes without @requires (refused to everyone): {undeclared}"


def test_every_route_of_the_template_is_in_the_table(table: ScopeTable):
    declared = {(route.method, route.path) for route in Template.load().api_routes()}

    assert declared <= set(table.routes())


def test_only_health_openapi_and_docs_are_public(table: ScopeTable):
    public = {route for route, requirement in table.routes().items() if requirement is PUBLIC}

    assert public == {("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs")}


def test_the_template_leaves_exactly_the_public_routes_without_an_authorizer(table: ScopeTable):
    open_in_template = {(r.method, r.path) for r in Template.load().api_routes() if r.authorizer is None}
    public = {route for route, requirement in table.routes().items() if requirement is PUBLIC}

    assert open_in_template == public


@pytest.mark.parametrize(
    ("method", "resource", "expected"),
    [
        ("POST", "/orders", Scope.ORDERS_WRITE),
        ("GET", "/orders", Scope.ORDERS_READ),
        ("GET", "/orders/{order_id}", Scope.ORDERS_READ),
        ("GET", "/orders/{order_id}/history", Scope.ORDERS_READ),
        ("PUT", "/products/{sku}", Scope.CATALOG_WRITE),
        ("PUT", "/locations/{location_id}", Scope.CATALOG_WRITE),
        ("PUT", "/inventory/{sku}/{location_id}", Scope.INVENTORY_WRITE),
        ("POST", "/inventory/{sku}/{location_id}/adjustments", Scope.INVENTORY_WRITE),
        ("GET", "/products/{sku}", ANY_KEY),
        ("GET", "/locations", ANY_KEY),
        ("GET", "/inventory/{sku}", ANY_KEY),
        ("POST", "/api-keys", Scope.ADMIN),
        ("GET", "/api-keys", Scope.ADMIN),
        ("DELETE", "/api-keys/{key_id}", Scope.ADMIN),
        ("POST", "/carriers/{carrier}/tracking", Scope.FULFILLMENT_WRITE),
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/ready", Scope.FULFILLMENT_WRITE),
        ("POST", "/orders/{order_id}/shipments/{shipment_id}/reject", Scope.FULFILLMENT_WRITE),
        ("GET", "/plugins", Scope.ADMIN),
        ("GET", "/health", PUBLIC),
        ("GET", "/openapi.json", PUBLIC),
        ("GET", "/docs", PUBLIC),
    ],
)
def test_the_table_holds_each_routes_requirement(table: ScopeTable, method: str, resource: str, expected: Any):
    assert table.routes()[(method, resource)] is expected
    assert table.requirement(method.lower(), resource) is expected


# --- check(): 401, 403, or through -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "resource"),
    [("POST", "/orders"), ("GET", "/orders/{order_id}"), ("GET", "/products/{sku}"), ("DELETE", "/api-keys/{key_id}")],
)
def test_a_protected_route_without_a_caller_is_401_unauthorized(table: ScopeTable, method: str, resource: str):
    refused = refusal(table, event(method, resource))

    assert (refused.status, refused.code) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "resource", "scopes"),
    [
        ("POST", "/orders", "orders:read"),
        ("GET", "/orders", "orders:write"),
        ("PUT", "/products/{sku}", "orders:read orders:write"),
        ("PUT", "/inventory/{sku}/{location_id}", "catalog:write"),
        ("POST", "/inventory/{sku}/{location_id}/adjustments", "orders:write"),
        ("POST", "/api-keys", " ".join(s for s in Scope if s is not Scope.ADMIN)),
        ("DELETE", "/api-keys/{key_id}", "orders:read"),
        ("GET", "/orders", ""),
    ],
)
def test_a_caller_without_the_routes_scope_is_403_forbidden(table: ScopeTable, method: str, resource: str, scopes: str):
    refused = refusal(table, event(method, resource, scopes=scopes))

    assert (refused.status, refused.code) == (403, "forbidden")
    assert refused.message


@pytest.mark.parametrize(
    ("method", "resource", "scopes"),
    [
        ("POST", "/orders", "orders:write"),
        ("GET", "/orders", "orders:read"),
        ("PUT", "/products/{sku}", "catalog:write"),
        ("PUT", "/inventory/{sku}/{location_id}", "inventory:write"),
        ("POST", "/api-keys", "admin"),
        ("DELETE", "/api-keys/{key_id}", "admin"),
        ("PUT", "/products/{sku}", "admin"),
        ("GET", "/products/{sku}", ""),  # any valid key may read the catalog
        ("GET", "/inventory/{sku}", "orders:read"),
    ],
)
def test_a_caller_with_the_routes_scope_passes(table: ScopeTable, method: str, resource: str, scopes: str):
    table.check(event(method, resource, scopes=scopes))


@pytest.mark.parametrize("resource", ["/health", "/openapi.json", "/docs"])
def test_a_public_route_passes_without_a_caller(table: ScopeTable, resource: str):
    table.check(event("GET", resource))


def test_an_unknown_route_passes_through_to_the_resolvers_404(table: ScopeTable):
    table.check(event("GET", "/nope"))


def test_a_channel_bound_caller_is_checked_by_scope_like_any_other(table: ScopeTable):
    table.check(event("POST", "/orders", scopes="orders:write", channel="web"))
    refused = refusal(table, event("PUT", "/products/{sku}", scopes="orders:write orders:read", channel="web"))

    assert refused.status == 403


# --- Fail closed: a route that forgot @requires ----------------------------------------------------


def test_a_route_without_requires_is_refused_even_to_the_admin():
    throwaway = APIGatewayRestResolver()

    @throwaway.get("/undeclared/<thing_id>")
    def undeclared(thing_id: str) -> dict:
        return {"thing": thing_id}

    table = ScopeTable(throwaway)

    assert table.routes() == {("GET", "/undeclared/{thing_id}"): None}
    refused = refusal(table, event("GET", "/undeclared/{thing_id}", scopes=EVERY_SCOPE, key_id="key_admin"))
    assert (refused.status, refused.code) == (403, "forbidden")
    anonymous = refusal(table, event("GET", "/undeclared/{thing_id}"))
    assert anonymous.status == 401


def test_requires_marks_the_route_without_wrapping_it():
    def route() -> str:
        return "ok"

    marked = requires(Scope.ORDERS_READ)(route)

    assert marked is route
    assert requirement_of(route) is Scope.ORDERS_READ
    assert requirement_of(lambda: None) is None


def test_declared_routes_of_a_throwaway_app_get_their_requirements():
    throwaway = APIGatewayRestResolver()

    @throwaway.get("/open")
    @requires(PUBLIC)
    def open_route() -> dict:
        return {}

    @throwaway.post("/things")
    @requires(Scope.CATALOG_WRITE)
    def write_route() -> dict:
        return {}

    table = ScopeTable(throwaway, also={("GET", "/extra"): ANY_KEY})

    assert table.routes() == {
        ("GET", "/open"): PUBLIC,
        ("POST", "/things"): Scope.CATALOG_WRITE,
        ("GET", "/extra"): ANY_KEY,
    }
    table.check(event("GET", "/open"))
    table.check(event("POST", "/things", scopes="catalog:write"))
    assert refusal(table, event("POST", "/things", scopes="orders:write")).status == 403
    assert refusal(table, event("GET", "/extra")).status == 401
