"""Health (and the plugins that failed to load) and the API's own description: the OpenAPI document and Swagger UI."""

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, Field

from core.plugin_manager import shown_reason
from functions.api.access import PUBLIC, requires
from functions.api.dependencies import container
from functions.api.schemas import error_responses, ok
from functions.warm import Warm

router = Router()

# The routes anyone may call: the document says so (an empty `security` overrides the API's key).
PUBLIC_OPERATION = {"security": []}
_ETAG = {"ETag": {"description": "The page's version: send it as If-None-Match", "schema": {"type": "string"}}}
_NOT_MODIFIED = {304: {"description": "Not modified: If-None-Match names the current ETag", "headers": _ETAG}}

TITLE = "OMS API"
VERSION = "1"
DESCRIPTION = (
    "Order management system, HTTP API v1. The contract is API.md; errors are "
    '{"error": {"code", "message", "details"}}.'
)


class Health(BaseModel, defer_build=True):
    status: Literal["ok"]


class BrokenPlugin(BaseModel, defer_build=True):
    name: str = Field(description="The plugin's entry-point name")
    reason: str = Field(
        description="Its exception's type and where the reason is: the log line `plugin failed to load` and "
        "GET /plugins (admin key). Never the exception's message, which can hold the plugin's configuration"
    )


class Degraded(BaseModel, defer_build=True):
    status: Literal["degraded"]
    broken_plugins: list[BrokenPlugin]


@router.get(
    "/health",
    summary="Liveness; 503 names the plugins that failed to load",
    include_in_schema=True,
    responses={
        **ok(200, Health, "Every plugin loaded"),
        **ok(503, Degraded, "Plugins failed to load: the routes that call plugins answer 503 plugin_unavailable"),
        **error_responses(),
    },
    openapi_extensions=PUBLIC_OPERATION,
)
@requires(PUBLIC)
# No return annotation: the body is one of two shapes, each documented above.
def health():
    broken = container().plugins.broken
    if not broken:
        return Response(200, content_types.APPLICATION_JSON, Health(status="ok").model_dump_json())
    degraded = Degraded(
        status="degraded", broken_plugins=[BrokenPlugin(name=p.name, reason=shown_reason(p)) for p in broken]
    )
    return Response(503, content_types.APPLICATION_JSON, degraded.model_dump_json())


@dataclass(frozen=True)
class _Page:
    body: str
    content_type: str
    etag: str


class _Pages:
    """The description's pages, each built on its first request and kept while the container is
    warm: generating the document takes tens of milliseconds of CPU, which an anonymous caller
    must not be able to make the API spend on every request (issue 11 item 6)."""

    def __init__(self) -> None:
        self._pages: dict[tuple[str, str], _Page] = {}
        self._lock = threading.RLock()  # re-entrant: the UI page is built from the document page

    def get(self, kind: str, base: str) -> _Page:
        page = self._pages.get((kind, base))
        if page is None:
            with self._lock:
                page = self._pages.get((kind, base))
                if page is None:
                    page = _PAGE_BUILDERS[kind](base)
                    self._pages[(kind, base)] = page
        return page


_pages: Warm[_Pages] = Warm(_Pages)


def _page(body: str, content_type: str) -> _Page:
    return _Page(body, content_type, '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"')


def _base() -> str:
    # The same servers entry for the document and for Swagger UI: the stage, when the URL has it.
    # Only two values, so at most two copies of each page are kept.
    context = router.current_event.request_context
    stage_prefix = f"/{context.stage}"
    return stage_prefix if context.stage and (context.path or "").startswith(stage_prefix) else "/"


def _served(page: _Page) -> Response:
    """The page, or 304 when the client's If-None-Match names its ETag (RFC 9110 13.1.2: a weak
    comparison, `*` matches)."""
    headers = {"ETag": page.etag, "Cache-Control": "no-cache"}  # revalidate each time: a deploy changes it
    asked = router.current_event.get_header_value("If-None-Match") or ""
    tags = {tag.strip().removeprefix("W/") for tag in asked.split(",")}
    if page.etag in tags or "*" in tags:
        return Response(304, None, "", headers=headers)
    return Response(200, page.content_type, page.body, headers=headers)


def _document(base: str) -> _Page:
    """The OpenAPI document, generated from the routes. Built only when asked for: powertools'
    OpenAPI models cost ~100 ms to import, which no order should pay on a cold start (this is
    why /docs is not powertools' enable_swagger, which imports them when the app is built), and the
    events a subscriber receives (its webhooks) with it."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server

    from functions.api.app import every_route
    from functions.api.event_document import with_webhooks

    body = every_route().get_openapi_json_schema(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        servers=[Server(url=base)],
        security_schemes={"apiKey": HTTPBearer(description="Authorization: Bearer <API key>")},
        security=[{"apiKey": []}],
    )
    return _page(json.dumps(with_webhooks(_as_served(json.loads(body)))), content_types.APPLICATION_JSON)


def _as_served(document: dict[str, Any]) -> dict[str, Any]:
    """What the generator cannot say by itself, said as the API behaves:
    - a request body is a JSON object or absent: `null` is 400 like any other non-object, so an
      optional body is not `anyOf [X, null]`;
    - validation errors are answered in the contract's error shape (errors.py), never powertools'
      HTTPValidationError, and an operation with no parameter and no body has none to answer;
    - a 304 has no body."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        choices = body.get("schema", {}).get("anyOf")
        if choices and {"type": "null"} in choices:
            rest = [choice for choice in choices if choice != {"type": "null"}]
            body["schema"] = rest[0] if len(rest) == 1 else {"anyOf": rest}
        responses = operation["responses"]
        if "HTTPValidationError" in json.dumps(responses.get("422", {})):
            if operation.get("parameters") or operation.get("requestBody"):
                responses["422"]["content"] = {"application/json": {"schema": {"$ref": _ERROR_BODY}}}
            else:
                del responses["422"]
        responses.get("304", {}).pop("content", None)
    for (method, path, status), links in _LINKS.items():
        document["paths"][path][method]["responses"][status]["links"] = {
            name: {"operationRef": _operation_ref(*target), "parameters": parameters}
            for name, (target, parameters) in links.items()
        }
    # Drop powertools' own error schemas that nothing refers to any more.
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ResponseValidationError", "ValidationError"):
        without = {key: value for key, value in document.items() if key != "components"}
        others = {key: value for key, value in schemas.items() if key != name}
        if f"#/components/schemas/{name}" not in json.dumps([without, others]):
            schemas.pop(name, None)
    return document


_ERROR_BODY = "#/components/schemas/ErrorBody"

_ORDER = {"order_id": "$response.body#/id"}
# What a client can do next with what an answer names (OpenAPI links): the order a POST placed,
# the product a PUT stored, the key a POST issued. Schemathesis' stateful phase follows them.
_LINKS: dict[tuple[str, str, str], dict[str, tuple[tuple[str, str], dict[str, str]]]] = {
    ("post", "/orders", "201"): {
        "GetOrder": (("get", "/orders/{order_id}"), _ORDER),
        "GetOrderHistory": (("get", "/orders/{order_id}/history"), _ORDER),
        "EditOrder": (("patch", "/orders/{order_id}"), {**_ORDER, "header.if-match": "$response.body#/version"}),
        "CancelOrder": (("post", "/orders/{order_id}/cancel"), _ORDER),
    },
    ("put", "/products/{sku}", "201"): {
        "GetProduct": (("get", "/products/{sku}"), {"sku": "$response.body#/sku"}),
        "GetStock": (("get", "/inventory/{sku}"), {"sku": "$response.body#/sku"}),
    },
    ("post", "/api-keys", "201"): {
        "RevokeApiKey": (("delete", "/api-keys/{key_id}"), {"key_id": "$response.body#/id"}),
    },
}


def _operation_ref(method: str, path: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


@router.get(
    "/openapi.json",
    summary="This OpenAPI document",
    responses={
        200: {
            "description": "The document",
            "headers": _ETAG,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **_NOT_MODIFIED,
        **error_responses(),
    },
    openapi_extensions=PUBLIC_OPERATION,
)
@requires(PUBLIC)
# No return annotation: powertools would try to build a response schema from a bare Response.
def openapi():
    return _served(_pages().get("document", _base()))


@router.get(
    "/docs",
    summary="Swagger UI for this document (`?format=json`: the document itself)",
    responses={
        200: {
            "description": "The page",
            "headers": _ETAG,
            "content": {
                "text/html": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        **_NOT_MODIFIED,
        **error_responses(),
    },
    openapi_extensions=PUBLIC_OPERATION,
)
@requires(PUBLIC)
def docs():
    """Swagger UI with its script and styles inlined (powertools' page and assets): the page
    loads nothing from any other host."""
    kind = "document" if (router.current_event.query_string_parameters or {}).get("format") == "json" else "ui"
    return _served(_pages().get(kind, _base()))


def _swagger_ui(base: str) -> _Page:
    from aws_lambda_powertools.event_handler.openapi import swagger_ui
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html

    spec = _pages().get("document", base).body
    assets = Path(swagger_ui.__file__).parent
    html = generate_swagger_html(
        spec.replace("</", "<\\/"),  # the spec sits inside a <script>: never let it close the tag
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        "",
        None,
        False,
    )
    return _page(html, "text/html")


_PAGE_BUILDERS = {"document": _document, "ui": _swagger_ui}
