"""The OMS HTTP API: one powertools REST resolver, a Router per resource, each joined on first use."""

from __future__ import annotations

import gc

# A new container's imports make about a hundred thousand objects (modules, classes, functions, the
# libraries' tables) that live as long as the container. The cyclic collector found no garbage
# among them, yet scanned them again and again: while they were imported, and in the older
# generations' collections of the first request (its models built, its AWS client made), a tenth
# of the cold path's CPU. So it is off while they are imported, and they are then frozen (kept
# where it never looks). What requests make is collected as before.
gc.disable()
try:
    import functools
    import importlib
    import os
    import threading
    from collections.abc import Iterable
    from re import Match
    from typing import Any

    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.logging import correlation_paths
    from aws_lambda_powertools.metrics import MetricUnit

    from core.card_numbers import mask_card_numbers
    from functions.api import access_log, errors, guards
    from functions.api.access import ScopeTable
    from functions.business_metrics import emits_business_metrics
    from functions.masked_logs import function_logger
finally:
    gc.freeze()
    gc.enable()


class _Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver, handing routes the path parameters API Gateway decoded. It would
    hand them the text its route pattern matched in the event's `path`, which a REST API passes
    still percent-encoded: /products/MUG%3ABLUE would reach the route as "MUG%3ABLUE", and a
    64-character name written in two-byte UTF-8 as 384 characters."""

    def _convert_matches_into_route_keys(self, match: Match[str]) -> dict[str, str]:
        decoded = self.current_event.path_parameters or {}
        return {name: decoded.get(name, value) for name, value in match.groupdict().items()}


logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
app = _Resolver(enable_validation=True, json_body_deserializer=guards.parsed_body)
errors.register(app, metrics)

# The route modules (functions/api/routes/), in the order the resolver joins them. A cold start
# imports only those its first request needs: importing and building all of them would cost
# every new container the models and services of routes it may never serve.
ROUTE_MODULES = (
    "meta",
    "catalog",
    "inventory",
    "orders",
    "api_keys",
    "imports",
    "carriers",
    "plugins",
    "refunds",
    "returns",
    "holds",
    "webhooks",
    "store_execution",
    "customers",
    "notifications",
    "access_log",
    "purchasing",
    "sourcing",
    "confirmations",
)
# The module serving a resource, by the resource's first segment, or where another module serves
# some of that segment's resources, by its first and last literal segments ("orders/hold" for
# /orders/{order_id}/hold). tests/unit/test_api_routers.py checks every route against this.
_MODULE_OF: dict[str, str] = {
    "health": "meta",
    "openapi.json": "meta",
    "docs": "meta",
    "products": "catalog",
    "locations": "catalog",
    "inventory": "inventory",
    "inventory/reorder": "purchasing",
    "orders": "orders",
    "orders/refunds": "refunds",
    "orders/returns": "returns",
    "orders/hold": "holds",
    "orders/release": "holds",
    "orders/ready": "store_execution",
    "orders/reject": "store_execution",
    "orders/notifications": "notifications",
    "orders/access-log": "access_log",
    "api-keys": "api_keys",
    "imports": "imports",
    "carriers": "carriers",
    "plugins": "plugins",
    "returns": "returns",
    "webhooks": "webhooks",
    "customers": "customers",
    "reports": "customers",
    "purchase-orders": "purchasing",
    "vendors": "purchasing",
    "sourcing": "sourcing",
    "shipments": "confirmations",
}

_joined: set[str] = set()
_joining = threading.Lock()
_table = ScopeTable(app)


def modules_for(path: str) -> set[str]:
    """The route modules that may serve `path` (a resource template or a request path); every
    module when no entry names it, so an unforeseen path is routed as if all were joined."""
    segments = [segment for segment in path.split("/") if segment and not segment.startswith("{")]
    if not segments:
        return set(ROUTE_MODULES)
    module = _MODULE_OF.get(f"{segments[0]}/{segments[-1]}") or _MODULE_OF.get(segments[0])
    return {module} if module else set(ROUTE_MODULES)


def _join(modules: Iterable[str]) -> ScopeTable:
    """Join the routers of `modules` to the app, once per container; the scope table of every
    route joined so far."""
    global _table
    missing = set(modules) - _joined
    if not missing:
        return _table
    with _joining:
        joined_now = [name for name in ROUTE_MODULES if name in missing and name not in _joined]
        for name in joined_now:
            app.include_router(importlib.import_module(f"functions.api.routes.{name}").router)
        # Routes in ROUTE_MODULES order whatever order requests joined them: the OpenAPI document
        # lists them so. Which route serves a request does not depend on it, as no two routes of
        # one method match the same path (the test checks this too). New lists, never sorted in
        # place: a request resolving in another thread meanwhile (the local runtime) reads them.
        rank = {f"functions.api.routes.{name}": index for index, name in enumerate(ROUTE_MODULES)}
        app._static_routes = sorted(app._static_routes, key=lambda route: rank[route.func.__module__])
        app._dynamic_routes = sorted(app._dynamic_routes, key=lambda route: rank[route.func.__module__])
        # Each operation is named for its function (place_order), which is what a client generated from
        # the document calls it, not powertools' name with the path and method (place_order_orders_post),
        # and tagged with its module (orders, returns, ...): a generated client's package and /docs'
        # section for its resource, where untagged every call fell under "default".
        for route in (*app._static_routes, *app._dynamic_routes):
            route.operation_id = route.func.__name__
            route.tags = [route.func.__module__.rsplit(".", 1)[1]]
        _table = ScopeTable(app)
        # Named joined only once the scope table holds their routes: a request in another thread
        # (the local runtime) that skips the lock then reads a table with them. A route missing
        # from the table would pass the scope check as an unknown path.
        _joined.update(joined_now)
        return _table


def every_route() -> _Resolver:
    """The app with every router joined: for the OpenAPI document and the tests."""
    _join(ROUTE_MODULES)
    return app


def _scope_table() -> ScopeTable:
    """Every route's requirement (every router joined)."""
    return _join(ROUTE_MODULES)


def _routed(event: dict[str, Any]) -> ScopeTable:
    """Join the routers `event` may need: its resource's, and its path's, should they differ."""
    resource, path = event.get("resource"), event.get("path")
    if not resource or not path:
        return _join(ROUTE_MODULES)
    return _join(modules_for(resource) | modules_for(path))


# The first request of a container builds what the container then keeps (its models' validators, its
# AWS client's service model, the plugins): tens of thousands of objects the collector would scan
# over and over while they are made, as it did the imports' (above). The collector is off during
# that request alone, and on again after it, whatever it answered or raised: the next collection
# looks at what it left once.
_first_request = True


# Tracing: the template turns on X-Ray active tracing for every function, which records each
# invocation without the X-Ray SDK. Powertools' Tracer would import that SDK (~360 ms of cold
# start here) for per-call subsegments, so it is left out until a request needs it.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _append_order_keys(event)
    table = _routed(event)
    try:
        # Before the resolver: powertools validates the body before any route middleware runs.
        guards.check_request(event, table)
    except errors.ApiError as refused:
        response = errors.gateway_response(refused)
    else:
        _build_body_models(event, table)
        response = app.resolve(event, context)
        access_log.recorded_read(event, response, metrics)
    metrics.add_metric(name=f"Http{response['statusCode'] // 100}xx", unit=MetricUnit.Count, value=1)
    return response


@functools.wraps(_handle, assigned=())  # its __wrapped__: the decorators' chain (tests read it)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _first_request
    if not _first_request:
        return _handle(event, context)
    _first_request = False
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _handle(event, context)
    finally:
        if collecting:
            gc.enable()


def _build_body_models(event: dict[str, Any], table: ScopeTable) -> None:
    """Build the route's body models (declared with defer_build) before powertools validates the
    body. Powertools validates it with an adapter of its own, which, for a model not yet built,
    makes the model's whole schema again without building the model: a route then using the
    model itself (POST /orders dumps it for an Idempotency-Key) made it a second time (~2 ms of
    a new container's first order, 21 M instructions). Built first, the adapter takes its schema."""
    for model in table.body_models(event.get("httpMethod", ""), event.get("resource", "")):
        if not model.__pydantic_complete__:
            model.model_rebuild()


def _append_order_keys(event: dict[str, Any]) -> None:
    # Every line this request logs names its order and channel (POST /orders adds them once it
    # knows the order); the request id is already there as `correlation_id`.
    order_id = (event.get("pathParameters") or {}).get("order_id")
    if order_id:
        # Before the guards refuse one: an id that is a card number never reaches a log line.
        logger.append_keys(order_id=mask_card_numbers(order_id))
    channel = ((event.get("requestContext") or {}).get("authorizer") or {}).get("channel")
    if channel:
        logger.append_keys(channel=channel)
