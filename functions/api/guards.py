"""Checks every request passes before routing and validation: body size, scope, card data."""

from __future__ import annotations

import base64
import json
from typing import Any

from core.card_numbers import card_number_fields, contains_card_number, mask_card_numbers
from functions.api.access import ScopeTable
from functions.api.errors import ApiError

MAX_BODY_BYTES = 256 * 1024


def body_bytes(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise ApiError(400, "malformed_body", "the request body is not valid base64") from None
    return body.encode()


def refuse_card_numbers(raw: bytes) -> None:
    """Card numbers must never reach the OMS (nor its logs): such a body is refused whole. The
    error names the fields, never the values."""
    try:
        document = json.loads(raw)
    except ValueError:
        return  # not JSON: validation answers 400, and nothing is kept
    fields = [field or "body" for field in card_number_fields(document)]
    if fields:
        raise ApiError(
            422,
            "card_data_rejected",
            "payment card numbers are never accepted: send a payment token instead",
            [{"field": field, "message": "looks like a payment card number"} for field in fields],
        )


def _content_type(event: dict[str, Any]) -> str:
    for name, value in (event.get("headers") or {}).items():
        if name.lower() == "content-type":
            return (value or "").split(";")[0].strip().lower()
    return ""


def require_json(event: dict[str, Any], raw: bytes) -> None:
    """The API speaks JSON only: a body sent as a form or as plain text is refused with a clear
    error instead of being parsed as something else. A body without Content-Type is read as JSON."""
    content_type = _content_type(event)
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"request bodies are JSON: send Content-Type: application/json, not {content_type[:60]}",
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8 encoded JSON") from None


def check_request(event: dict[str, Any], scopes: ScopeTable) -> None:
    raw = body_bytes(event)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", "request body is over 256 KiB")
    scopes.check(event)
    if raw:
        require_json(event, raw)
        refuse_card_numbers(raw)
    # Paths and query strings can carry card numbers too (/products/4111..., ?customer_id=4111...),
    # in a parameter's name as well as in any of its values.
    fields = _card_number_parameters(event)
    if fields:
        raise ApiError(
            422,
            "card_data_rejected",
            "payment card numbers are never accepted",
            [{"field": field, "message": "looks like a payment card number"} for field in dict.fromkeys(fields)],
        )


def _card_number_parameters(event: dict[str, Any]) -> list[str]:
    """The path and query parameters that carry a card number, by (masked) name."""
    values: list[tuple[str, str]] = list((event.get("pathParameters") or {}).items())
    for name, value in (event.get("queryStringParameters") or {}).items():
        values.append((name, value))
    for name, many in (event.get("multiValueQueryStringParameters") or {}).items():
        values += [(name, value) for value in many or ()]
    found = []
    for name, value in values:
        if contains_card_number(name) or (value and contains_card_number(value)):
            found.append(mask_card_numbers(name))
    return found
