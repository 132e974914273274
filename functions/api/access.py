"""Who may call which route: each route declares its scope with @requires, next to its path.

The check runs before powertools validates the request (see app.lambda_handler), so a key
without the scope learns nothing about the body it sent: 401 or 403 comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final, TypeVar

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from pydantic import BaseModel

from core.access import Caller, Scope, allows
from functions.api.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


PUBLIC: Final = _Marker("PUBLIC")  # no key at all: /health, /openapi.json, /docs
ANY_KEY: Final = _Marker("ANY_KEY")  # any valid key: catalog and stock reads
Requirement = Scope | _Marker


def requires(requirement: Requirement) -> Callable[[F], F]:
    """Declare what a route needs. Goes directly under the route's @router decorator."""

    def mark(route: F) -> F:
        route.__oms_requires__ = requirement  # type: ignore[attr-defined]
        return route

    return mark


def requirement_of(route_function: Callable[..., Any]) -> Requirement | None:
    return getattr(route_function, "__oms_requires__", None)


# The caller the last request's authorizer context made, by what that context said: a request
# asks for it twice (ScopeTable.check, then its route through caller()), and a warm container's
# next request mostly comes from the same key. Caller is frozen, so one made is safe to hand out again.
_last_caller: ContextVar[tuple[tuple[Any, str, Any, str], Caller] | None] = ContextVar("last_caller", default=None)


def caller_from(event: dict[str, Any]) -> Caller | None:
    """The caller the authorizer put in the request context (None if it is not there)."""
    context = (event.get("requestContext") or {}).get("authorizer") or {}
    key_id = context.get("key_id")
    if not key_id:
        return None
    said = (key_id, str(context.get("scopes", "")), context.get("channel"), str(context.get("location_ids") or ""))
    last = _last_caller.get()
    if last is not None and last[0] == said:
        return last[1]
    scopes = frozenset(Scope(s) for s in said[1].split() if s in Scope._value2member_map_)
    # Space-separated (an id holds no space); none: a key that acts at every location.
    location_ids = frozenset(said[3].split()) or None
    who = Caller(key_id=key_id, scopes=scopes, channel=said[2] or None, location_ids=location_ids)
    _last_caller.set((said, who))
    return who


class ScopeTable:
    """(method, resource path) -> requirement, read once from the app's routes; and whether a
    route reads a body, and as which models."""

    def __init__(self, app: APIGatewayRestResolver, also: dict[tuple[str, str], Requirement] | None = None):
        routes = app._static_routes + app._dynamic_routes
        self._table: dict[tuple[str, str], Requirement | None] = {
            (route.method.upper(), route.openapi_path): requirement_of(route.func) for route in routes
        }
        self._routes = {(route.method.upper(), route.openapi_path): route for route in routes}
        # Routes powertools registers itself (Swagger UI) cannot carry a decorator.
        self._table.update(also or {})

    def routes(self) -> dict[tuple[str, str], Requirement | None]:
        return dict(self._table)

    def reads_body(self, method: str, resource: str) -> bool:
        """Whether the route takes a body parameter (True for a route not in the table: the
        resolver answers it). Powertools builds and keeps a route's dependant for its validation."""
        route = self._routes.get((method.upper(), resource))
        return route is None or bool(route.dependant.body_params)

    def query_parameters(self, method: str, resource: str) -> frozenset[str] | None:
        """The query parameters the route declares, by the name a request sends (None for a route
        not in the table: the resolver answers it)."""
        route = self._routes.get((method.upper(), resource))
        if route is None:
            return None
        return frozenset(field.alias for field in route.dependant.query_params)

    def body_models(self, method: str, resource: str) -> list[type[BaseModel]]:
        """The models the route's body parameters are (none for a route not in the table)."""
        route = self._routes.get((method.upper(), resource))
        if route is None:
            return []
        return [
            field.type_
            for field in route.dependant.body_params
            if isinstance(field.type_, type) and issubclass(field.type_, BaseModel)
        ]

    def requirement(self, method: str, resource: str) -> Requirement | None:
        return self._table.get((method.upper(), resource), PUBLIC)

    def check(self, event: dict[str, Any]) -> None:
        """Raise 401/403 unless the event's caller may call its route. Unknown routes pass
        through to the resolver's 404. A route without a declaration is refused (fail closed)."""
        requirement = self.requirement(event.get("httpMethod", ""), event.get("resource", ""))
        if requirement is PUBLIC:
            return
        who = caller_from(event)
        if who is None:
            raise ApiError(401, "unauthorized", "missing, unknown or revoked API key")
        if requirement is ANY_KEY:
            return
        if not isinstance(requirement, Scope) or not allows(who, requirement):
            raise ApiError(403, "forbidden", f"this API key lacks the {requirement} scope")


def caller(app: APIGatewayRestResolver) -> Caller:
    who = caller_from(app.current_event.raw_event)
    if who is None:
        raise ApiError(401, "unauthorized", "missing, unknown or revoked API key")
    return who
