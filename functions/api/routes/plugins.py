"""The deployment's plugins: what GET /plugins lists, and the guard of the routes that call them."""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.plugin_manager import PluginReport
from functions.api.access import requires
from functions.api.dependencies import container
from functions.api.schemas import errors, ok

router = Router()


def plugins_loaded(app: APIGatewayRestResolver, next_middleware: Callable[..., Response]) -> Response:
    """Route middleware for every route that calls a plugin hook: while any plugin failed to
    load, the route answers 503 plugin_unavailable before it reads or writes anything. Checked
    up front, because a route that had already written (a cancel) must not stop half-way."""
    container().plugins.require_loaded()
    return next_middleware(app)


@router.get(
    "/plugins",
    summary="The plugins this deployment loaded, disabled or could not load, and each hook's call order",
    responses={**ok(200, PluginReport, "Every plugin and every hook"), **errors(403)},
)
@requires(Scope.ADMIN)
def list_plugins() -> PluginReport:
    return container().plugins.report()
