"""Response shapes that exist only at the HTTP edge: the error body, documented per route."""

from typing import Any

from pydantic import BaseModel

from core.models import Order, Shown
from core.status import OrderStatus

# Built on first use, as core's models are (core/models.py): the error models serve the OpenAPI
# document, the pages and the receipt other routes, and a new container's first order uses none.


class ErrorDetail(BaseModel, defer_build=True):
    field: str | None = None
    message: str


class ErrorInfo(BaseModel, defer_build=True):
    code: str
    message: str
    details: list[dict[str, Any]]


class ErrorBody(BaseModel, defer_build=True):
    error: ErrorInfo


# A page of a list is written out, not made as a generic `Page[Order]`: pydantic builds a generic
# model's origin the moment it is parametrized, whatever its defer_build, so every new API
# container (which imports this module to serve POST /orders) built a model no order needs.
class OrderPage(Shown):
    items: list[Order]
    next_cursor: str | None = None


class OrderReceipt(BaseModel, defer_build=True):
    """What a change to an order answers a key that may not read orders (orders:write without
    orders:read): that the change was made and the version it made, never the order's body."""

    id: str
    status: OrderStatus
    version: int


_DESCRIPTIONS = {
    400: "Malformed JSON or header",
    401: "Missing, unknown or revoked API key",
    403: "The key lacks the scope",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Body over 256 KiB",
    415: "Body is not JSON",
    428: "If-Match is required",
    422: "Validation failed",
    429: "Throttled",
    502: "The payment gateway refused the operation (`payment_gateway_error`), the payment plugin failed "
    "(`payment_plugin_error`), or another plugin failed (`plugin_error`: a pricing, tax, carrier, sourcing, review "
    "or return policy plugin raised or answered what the OMS cannot take; `details` names the plugin and hook): "
    "nothing was recorded as done, and the request may be repeated once the plugin works",
    503: "The payment gateway kept failing (`payment_gateway_unavailable`): nothing was recorded as done; "
    "repeat the request after Retry-After; or a plugin failed to load (`plugin_unavailable`): `details` names "
    "each one and its exception's type (why it failed is in the logs and GET /plugins); "
    "or the OMS's storage was too busy, or a plugin's service was briefly down (`temporarily_unavailable`; a "
    "plugin's names it and its hook in `details`, and its exception's type, never its message, which is in the "
    "logs): repeat the request after Retry-After",
}


# What any request can be answered before its route runs: a body is checked on every route
# (size, media type, JSON rules), whether the route reads one or not, and every caller is throttled.
EVERY_ROUTE = (400, 413, 415, 429)


def errors(*codes: int) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` entries for the error codes a route with a key can answer (plus 401, 422,
    503 when its storage is too busy, and what every route can answer)."""
    return error_responses(*codes, 401, 422, 503)


def error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` entries for `codes` and what every route can answer."""
    return {
        code: {"description": _DESCRIPTIONS[code], "content": {"application/json": {"model": ErrorBody}}}
        for code in sorted({*codes, *EVERY_ROUTE})
    }


def ok(status: int, model: type[BaseModel], description: str) -> dict[int, dict[str, Any]]:
    return {status: {"description": description, "content": {"application/json": {"model": model}}}}
