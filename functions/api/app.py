"""The OMS HTTP API: one powertools REST resolver, a Router per resource."""

from __future__ import annotations

import functools
import os
from re import Match
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from core.card_numbers import mask_card_numbers
from functions.api import access_log, errors, guards
from functions.api.access import ScopeTable
from functions.api.routes import access_log as access_log_routes
from functions.api.routes import (
    api_keys,
    carriers,
    catalog,
    confirmations,
    holds,
    imports,
    inventory,
    meta,
    orders,
    plugins,
    purchasing,
    refunds,
    returns,
    sourcing,
    store_execution,
)
from functions.api.routes import customers as customer_routes
from functions.api.routes import notifications as notification_routes
from functions.api.routes import webhooks as webhook_routes
from functions.business_metrics import emits_business_metrics


class _Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver, handing routes the path parameters API Gateway decoded. It would
    hand them the text its route pattern matched in the event's `path`, which a REST API passes
    still percent-encoded: /products/MUG%3ABLUE would reach the route as "MUG%3ABLUE", and a
    64-character name written in two-byte UTF-8 as 384 characters."""

    def _convert_matches_into_route_keys(self, match: Match[str]) -> dict[str, str]:
        decoded = self.current_event.path_parameters or {}
        return {name: decoded.get(name, value) for name, value in match.groupdict().items()}


logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
app = _Resolver(enable_validation=True, json_body_deserializer=guards.parsed_body)
errors.register(app)
app.include_router(meta.router)
app.include_router(catalog.router)
app.include_router(inventory.router)
app.include_router(orders.router)
app.include_router(api_keys.router)
app.include_router(imports.router)
app.include_router(carriers.router)
app.include_router(plugins.router)
app.include_router(refunds.router)
app.include_router(returns.router)
app.include_router(holds.router)
app.include_router(webhook_routes.router)
app.include_router(store_execution.router)
app.include_router(customer_routes.router)
app.include_router(notification_routes.router)
app.include_router(access_log_routes.router)
app.include_router(purchasing.router)
app.include_router(sourcing.router)
app.include_router(confirmations.router)


@functools.cache
def _scope_table() -> ScopeTable:
    return ScopeTable(app)


# Tracing: the template turns on X-Ray active tracing for every function, which records each
# invocation without the X-Ray SDK. Powertools' Tracer would import that SDK (~360 ms of cold
# start here) for per-call subsegments, so it is left out until a request needs it.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _append_order_keys(event)
    try:
        # Before the resolver: powertools validates the body before any route middleware runs.
        guards.check_request(event, _scope_table())
    except errors.ApiError as refused:
        response = errors.gateway_response(refused)
    else:
        response = app.resolve(event, context)
        access_log.recorded_read(event, response, metrics)
    metrics.add_metric(name=f"Http{response['statusCode'] // 100}xx", unit=MetricUnit.Count, value=1)
    return response


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
