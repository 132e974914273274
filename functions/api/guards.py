"""Checks every request passes before routing and validation: body size, scope, card data, unknown fields."""

from __future__ import annotations

import base64
import json
import re
from contextvars import ContextVar
from typing import Any

from core import strict_json
from core.card_numbers import card_number_fields, contains_card_number, mask_card_numbers
from functions.api.access import PUBLIC, ScopeTable
from functions.api.errors import ApiError, given_more_than_once

MAX_BODY_BYTES = 256 * 1024
# A carrier's webhook body is the carrier's format, which may be an array; every other body is an object.
ARRAY_BODIES = frozenset({("POST", "/carriers/{carrier}/tracking")})

# A carrier's webhook is the carrier's request, in its plugin's format: what its URL carries is the
# carrier's to choose (a verification token, say), not a parameter of the API to check.
CARRIER_REQUESTS = frozenset({("POST", "/carriers/{carrier}/tracking")})

# The body this request's guards parsed, handed to the resolver so it is parsed once, by one set of rules.
_parsed: ContextVar[tuple[str, Any] | None] = ContextVar("parsed_body", default=None)


def body_bytes(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise ApiError(400, "malformed_body", "the request body is not valid base64") from None
    return body.encode()


def refuse_card_numbers(document: Any) -> None:
    """Card numbers must never reach the OMS (nor its logs): such a body is refused whole. The
    error names the fields, never the values."""
    fields = [field or "body" for field in card_number_fields(document)]
    if fields:
        raise ApiError(
            422,
            "card_data_rejected",
            "payment card numbers are never accepted: send a payment token instead",
            [{"field": field, "message": "looks like a payment card number"} for field in fields],
        )


def refuse_unread_fields(event: dict[str, Any], document: Any, scopes: ScopeTable) -> None:
    """Unknown fields are 422, never silently dropped (API.md), and to a route that reads no body
    (a GET, a DELETE, POST /purchase-orders/{id}/cancel) every field is unknown: a PO cancelled
    with {"reason": ...} would answer 200 and keep no reason. An empty object is no field."""
    if not isinstance(document, dict) or not document:
        return
    if scopes.reads_body(event.get("httpMethod", ""), event.get("resource", "")):
        return
    raise ApiError(
        422,
        "validation_error",
        "the request is not valid",
        [{"field": name, "message": "Extra inputs are not permitted"} for name in document],
    )


def refuse_unknown_query_parameters(event: dict[str, Any], scopes: ScopeTable) -> None:
    """A query parameter the route does not declare is 422, as an unknown body field is (API.md: no
    silent drops): `GET /orders?stauts=cancelled` answered every order, and a report's `?form=`
    the default days, each read as the answer to what was asked. Routes anyone may call (the
    health check and the API's description) take what a browser or a probe adds; a carrier's
    webhook is its own format (CARRIER_REQUESTS)."""
    method, resource = event.get("httpMethod", "").upper(), event.get("resource", "")
    declared = scopes.query_parameters(method, resource)
    if declared is None or (method, resource) in CARRIER_REQUESTS or scopes.requirement(method, resource) is PUBLIC:
        return
    sent = {**(event.get("queryStringParameters") or {}), **(event.get("multiValueQueryStringParameters") or {})}
    unknown = [name for name in sent if name not in declared]
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            "the request is not valid",
            # Checked after card numbers: a name is refused as one before it could be echoed here.
            [{"field": mask_card_numbers(name), "message": "Extra inputs are not permitted"} for name in unknown],
        )


def _every_value(event: dict[str, Any], lower_name: str) -> list[str]:
    """Every value the request carries of a header (its name in lower case): the multi-value map's,
    or the single-value map's one when an event has no multi-value map (merge_header_cases joined
    names differing in case; the single-value map keeps only the last value)."""
    many = [
        value
        for name, values in (event.get("multiValueHeaders") or {}).items()
        if name.lower() == lower_name
        for value in values or ()
    ]
    if many:
        return many
    return [value for name, value in (event.get("headers") or {}).items() if name.lower() == lower_name]


def _content_types(event: dict[str, Any]) -> list[str]:
    """Every Content-Type the request carries, as media types without parameters."""
    return [(value or "").split(";")[0].strip().lower() for value in _every_value(event, "content-type")]


def require_json(event: dict[str, Any]) -> None:
    """The API speaks application/json only: a form, plain text or another JSON media type
    (application/*+json, whose rules differ) is refused with a clear error instead of being parsed
    as something else. A body without Content-Type is read as JSON. Content-Type is one header
    (RFC 9110, a singleton field): sent twice, the body was judged by the last value alone (plain
    text then JSON was parsed, the other order 415), so it is a malformed header, as If-Match or
    Idempotency-Key sent twice are."""
    content_types = _content_types(event)
    if len(content_types) > 1:
        raise ApiError(
            400,
            "malformed_header",
            "a request header is malformed",
            [{"field": "Content-Type", "message": given_more_than_once(len(content_types))}],
        )
    content_type = content_types[0] if content_types else ""
    if content_type and content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"request bodies are JSON: send Content-Type: application/json, not {content_type[:60]}",
        )
    # Media types are case-insensitive; the resolver matches "application/json" as written.
    for headers in (event.get("headers") or {}, event.get("multiValueHeaders") or {}):
        for name in [name for name in headers if name.lower() == "content-type"]:
            headers[name] = ["application/json"] if isinstance(headers[name], list) else "application/json"


def parse_body(event: dict[str, Any], raw: bytes) -> Any:
    """The body as the API reads it: one JSON object (an array where the route takes one), no
    duplicate keys, nesting and numbers bounded. Anything else is 400 before any route runs."""
    route = (event.get("httpMethod", "").upper(), event.get("resource", ""))
    try:
        text = raw.decode("utf-8")
        document = strict_json.loads(text, top_level_object=route not in ARRAY_BODIES)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8 encoded JSON") from None
    except strict_json.StrictJsonError as error:
        raise ApiError(400, "malformed_json", f"the request body {error}") from None
    if not isinstance(document, dict | list):
        # A route that takes an array takes an object too, and nothing else (API.md: 400).
        raise ApiError(400, "malformed_json", "the request body is not a JSON object or array")
    _parsed.set((text, document))
    return document


def parsed_body(text: str) -> Any:
    """The resolver's JSON deserializer: the document parse_body made of this very body."""
    parsed = _parsed.get()
    if parsed is not None and parsed[0] == text:
        return parsed[1]
    try:
        return strict_json.loads(text, top_level_object=False)
    except strict_json.StrictJsonError as error:
        # The resolver answers a JSONDecodeError with 400 malformed_json.
        raise json.JSONDecodeError(str(error), text, 0) from None


def merge_header_cases(event: dict[str, Any]) -> None:
    """One header under names that differ only in case (RFC 9110: names are case-insensitive) is
    one header sent that many times: its values are joined under the first name, so a route's
    header parameter sees them all ("given 2 times", 400) where the resolver, reading the names
    case-insensitively, kept the last and dropped the rest."""
    many: dict[str, list[str]] = event.get("multiValueHeaders") or {}
    first: dict[str, str] = {}
    for name in list(many):
        kept = first.setdefault(name.lower(), name)
        if kept != name:
            many[kept] = [*(many[kept] or []), *(many.pop(name) or [])]
    single: dict[str, str] = event.get("headers") or {}
    for name in list(single):
        kept = first.get(name.lower(), name)
        if kept != name:
            single[kept] = single.pop(name)  # the last value, as the single-value map keeps it


def strip_header_whitespace(event: dict[str, Any]) -> None:
    """Each header value without the spaces and tabs around it (RFC 9110 5.5: they are not part of
    a field value, and a parser excludes them), in both maps: `If-Match: 3 ` is version 3 and
    `Idempotency-Key: k ` the key k, where the routes' patterns refused them as malformed (400)."""
    single: dict[str, Any] = event.get("headers") or {}
    for name, value in single.items():
        if isinstance(value, str):
            single[name] = value.strip(" \t")
    many: dict[str, Any] = event.get("multiValueHeaders") or {}
    for name, values in many.items():
        if isinstance(values, list):
            many[name] = [value.strip(" \t") if isinstance(value, str) else value for value in values]


def refuse_a_second_credential(event: dict[str, Any], scopes: ScopeTable) -> None:
    """Two Authorization headers are 401 on every route that takes a key, as the authorizer answers
    them (RFC 9110 11.6.2: one credential). The gateway asks the authorizer only when its cache has
    no answer under the last value: once that key had been used alone, the request went through as
    it, the other value unread, and the same request was 401 or 2xx by the cache's state."""
    method, resource = event.get("httpMethod", "").upper(), event.get("resource", "")
    if scopes.requirement(method, resource) is PUBLIC:
        return
    values = _every_value(event, "authorization")
    if len(values) > 1:
        raise ApiError(
            401,
            "unauthorized",
            "send one Authorization header: one request, one API key",
            [{"field": "Authorization", "message": given_more_than_once(len(values))}],
        )


def check_request(event: dict[str, Any], scopes: ScopeTable) -> None:
    _parsed.set(None)
    strip_header_whitespace(event)
    merge_header_cases(event)
    refuse_a_second_credential(event, scopes)
    raw = body_bytes(event)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", "request body is over 256 KiB")
    scopes.check(event)
    if raw:
        require_json(event)
        document = parse_body(event, raw)
        refuse_card_numbers(document)
        refuse_unread_fields(event, document, scopes)
    # Paths and query strings can carry card numbers too (/products/4111..., ?customer_id=4111...),
    # in a parameter's name as well as in any of its values; so can the one header the OMS keeps.
    fields = _card_number_parameters(event) + _card_number_headers(event)
    if fields:
        raise ApiError(
            422,
            "card_data_rejected",
            "payment card numbers are never accepted",
            [{"field": field, "message": "looks like a payment card number"} for field in dict.fromkeys(fields)],
        )
    refuse_unknown_query_parameters(event, scopes)


# The header whose value the OMS keeps: an Idempotency-Key is stored with what it made (a return's
# request_key, a cancel's history entry).
KEPT_HEADER = "idempotency-key"


def _card_number_headers(event: dict[str, Any]) -> list[str]:
    """["Idempotency-Key"] when that header carries a card number, in any of its values."""
    values = [v for k, v in (event.get("headers") or {}).items() if k.lower() == KEPT_HEADER]
    for name, many in (event.get("multiValueHeaders") or {}).items():
        if name.lower() == KEPT_HEADER:
            values += many or []
    return ["Idempotency-Key"] if any(isinstance(v, str) and contains_card_number(v) for v in values) else []


# A server id (core/ids.py): a short prefix and 24 characters of lower-case base32. Its digits are
# 2-7, and a run of them can pass the Luhn check (`ord_2222222222222224tkznege7`, found by
# schemathesis) without being anything a person typed, so an id in this form is not scanned.
SERVER_ID = re.compile(r"[a-z]{2,4}_[a-z2-7]{24}")


def _card_number_parameters(event: dict[str, Any]) -> list[str]:
    """The path and query parameters that carry a card number, by (masked) name."""
    values: list[tuple[str, str]] = [
        (name, value)
        for name, value in (event.get("pathParameters") or {}).items()
        if not (isinstance(value, str) and SERVER_ID.fullmatch(value))
    ]
    for name, value in (event.get("queryStringParameters") or {}).items():
        values.append((name, value))
    for name, many in (event.get("multiValueQueryStringParameters") or {}).items():
        values += [(name, value) for value in many or ()]
    found = []
    for name, value in values:
        if contains_card_number(name) or (value and contains_card_number(value)):
            found.append(mask_card_numbers(name))
    return found
