"""Health (and the plugins that failed to load) and the API's own description: the OpenAPI document and Swagger UI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from functions.api.access import PUBLIC, requires
from functions.api.dependencies import container
from functions.api.schemas import ok

router = Router()

TITLE = "OMS API"
VERSION = "1"
DESCRIPTION = (
    "Order management system, HTTP API v1. The contract is API.md; errors are "
    '{"error": {"code", "message", "details"}}.'
)


class Health(BaseModel):
    status: Literal["ok"]


class BrokenPlugin(BaseModel):
    name: str
    reason: str


class Degraded(BaseModel):
    status: Literal["degraded"]
    broken_plugins: list[BrokenPlugin]


@router.get(
    "/health",
    summary="Liveness; 503 names the plugins that failed to load",
    include_in_schema=True,
    responses={
        **ok(200, Health, "Every plugin loaded"),
        **ok(503, Degraded, "Plugins failed to load: the routes that call plugins answer 503 plugin_unavailable"),
    },
)
@requires(PUBLIC)
# No return annotation: the body is one of two shapes, each documented above.
def health():
    broken = container().plugins.broken
    if not broken:
        return Response(200, content_types.APPLICATION_JSON, Health(status="ok").model_dump_json())
    degraded = Degraded(
        status="degraded", broken_plugins=[BrokenPlugin(name=p.name, reason=p.reason or "") for p in broken]
    )
    return Response(503, content_types.APPLICATION_JSON, degraded.model_dump_json())


def _document() -> str:
    """The OpenAPI document, generated from the routes. Built only when asked for: powertools'
    OpenAPI models cost ~100 ms to import, which no order should pay on a cold start (this is
    why /docs is not powertools' enable_swagger, which imports them when the app is built)."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server

    from functions.api.app import app

    # The same servers entry for the document and for Swagger UI: the stage, when the URL has it.
    context = router.current_event.request_context
    stage_prefix = f"/{context.stage}"
    base = stage_prefix if context.stage and (context.path or "").startswith(stage_prefix) else "/"
    return app.get_openapi_json_schema(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        servers=[Server(url=base)],
        security_schemes={"apiKey": HTTPBearer(description="Authorization: Bearer <API key>")},
        security=[{"apiKey": []}],
    )


@router.get("/openapi.json", summary="This OpenAPI document", include_in_schema=False)
@requires(PUBLIC)
# No return annotation: powertools would try to build a response schema from a bare Response.
def openapi():
    return Response(200, content_types.APPLICATION_JSON, _document())


@router.get("/docs", summary="Swagger UI", include_in_schema=False)
@requires(PUBLIC)
def docs():
    """Swagger UI with its script and styles inlined (powertools' page and assets): the page
    loads nothing from any other host."""
    from aws_lambda_powertools.event_handler.openapi import swagger_ui
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html

    spec = _document()
    if (router.current_event.query_string_parameters or {}).get("format") == "json":
        return Response(200, content_types.APPLICATION_JSON, spec)
    assets = Path(swagger_ui.__file__).parent
    html = generate_swagger_html(
        spec.replace("</", "<\\/"),  # the spec sits inside a <script>: never let it close the tag
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        "",
        None,
        False,
    )
    return Response(200, "text/html", html)
