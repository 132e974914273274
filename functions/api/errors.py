"""Maps every failure to the contract's error shape: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from botocore.exceptions import ClientError

from core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    PluginError,
    PluginUnavailable,
    TransientError,
    field_path,
    said,
)
from core.models import IDENTIFIER_PATTERN
from functions.adapters.aws_errors import busy
from functions.api.paths import UNKNOWN_ID
from functions.failure_logs import failure_logged

logger = Logger(child=True)

# One point per 500 internal_error the API answers itself: a bug it caught, so the invocation
# succeeds and Lambda's Errors never count it. ApiInternalErrorsAlarm (template.yaml) reads it,
# and ApiNewVersionInternalErrorsAlarm the same point with the function's version: during a canary
# deployment the first counts both versions' 500s, the second rolls the new one back on its own.
INTERNAL_ERRORS_METRIC = "ApiInternalErrors"


class ApiError(Exception):
    """An HTTP-level refusal raised by the API layer itself (auth, headers, body size)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return Response(status, content_types.APPLICATION_JSON, json.dumps(body))


def gateway_response(error: ApiError) -> dict[str, Any]:
    """A refusal made before the resolver runs, in API Gateway's proxy response shape."""
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _field(loc: tuple[Any, ...]) -> str:
    """("body", "lines", 0, "quantity") -> "lines[0].quantity"."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    return field_path(parts) or (str(loc[0]) if loc else "body")


def given_more_than_once(count: int) -> str:
    """What a header or query parameter that must come once is told when it came `count` times."""
    return f"given {count} times: send it once"


def _message(error: dict[str, Any]) -> str:
    """What a validation error tells the sender. A query parameter or header given more than once
    reaches its route as a list of values, which pydantic calls not a string ("Input should be a
    valid integer" for ?limit=5&limit=5): the message says what is wrong instead."""
    if error.get("loc", ("",))[0] in ("query", "header") and isinstance(error.get("input"), list):
        return given_more_than_once(len(error["input"]))
    if error.get("type") == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == IDENTIFIER_PATTERN:
        return _not_an_identifier(error.get("input"))
    return said(error)


def _not_an_identifier(value: Any) -> str:
    """What is wrong with a sku, location, vendor, customer or external id, in words rather than
    IDENTIFIER_PATTERN, and never the value itself (it may be card data)."""
    if isinstance(value, str) and value != value.strip():
        reason = "has white space before or after it"
    elif isinstance(value, str) and any(character.isspace() for character in value):
        reason = "has white space in it"
    elif isinstance(value, str) and len(value) > 128:
        reason = "is longer than 128 characters"
    else:
        reason = "is not an id"
    return f"{reason}: an id is 1 to 128 letters, digits and . _ : / -, the first a letter or digit"


def _header(name: Any) -> str:
    """A header as the resolver names it ("if-match") named as the contract, the 409s and the 428 do ("If-Match")."""
    return "-".join(part.capitalize() for part in str(name).split("-"))


_DOMAIN_STATUS: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (InvalidRequest, 422),
]


def described(error: DomainError) -> tuple[int, str, str, list[dict[str, Any]]]:
    """The status, code, message and details a route answers `error` with: the handlers below
    use it, and so does each refused item of a batch (POST /shipments/confirmations)."""
    if isinstance(error, PluginUnavailable | PaymentGatewayUnavailable):
        return 503, error.code, error.message, error.details
    if isinstance(error, PaymentRefused | PluginError):
        # A dependency of the OMS failed: the gateway refused, or a plugin (payment, pricing, tax,
        # carrier, ...) raised or answered what the OMS cannot take. Nothing it answered was kept.
        return 502, error.code, error.message, error.details
    if isinstance(error, TransientError):
        # A plugin's is named by its plugin and hook alone (core.hook_calls.unavailable); the
        # OMS's own (DynamoDB busy, an order changing under the step) carry no details.
        return 503, "temporarily_unavailable", error.message, error.details
    status = next((s for cls, s in _DOMAIN_STATUS if isinstance(error, cls)), 422)
    return status, error.code, error.message, error.details


def register(app: APIGatewayRestResolver, metrics: Metrics) -> None:
    """Map every failure `app` meets to its answer; `metrics`: the handler's, which prints once per invocation."""

    def internal_error() -> Response:
        logger.exception("unhandled error")
        metrics.add_metric(name=INTERNAL_ERRORS_METRIC, unit=MetricUnit.Count, value=1)
        # Lambda names the version it runs (a number behind the `live` alias; `$LATEST` when
        # invoked unqualified, as the local runtime does).
        version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        with single_metric(
            name=INTERNAL_ERRORS_METRIC, unit=MetricUnit.Count, value=1, namespace=metrics.namespace
        ) as point:
            point.add_dimension(name="service", value=str(metrics.service))
            point.add_dimension(name="version", value=version)
        return error_response(500, "internal_error", "internal error")

    @app.exception_handler(RequestValidationError)
    def _validation(error: RequestValidationError) -> Response:
        errors = error.errors()
        unknown = next((e for e in errors if e.get("type") == UNKNOWN_ID), None)
        if unknown is not None:
            # Whatever else is wrong with the request, the resource it names does not exist.
            return error_response(404, "not_found", unknown.get("msg", "not found"))
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("header", "if-match") for e in errors):
            # A required precondition (RFC 6585): an edit never overwrites a change its sender has not seen.
            return error_response(
                428,
                "if_match_required",
                "send If-Match with the order's version, so an edit never overwrites a change you have not seen",
                [{"field": "If-Match", "message": "required"}],
            )
        headers = [e for e in errors if e.get("loc", ("",))[0] == "header"]
        if headers:
            details = [{"field": _header(e["loc"][-1]), "message": _message(e)} for e in headers]
            return error_response(400, "malformed_header", "a request header is malformed", details)
        details = [{"field": _field(tuple(e.get("loc", ()))), "message": _message(e)} for e in errors]
        return error_response(422, "validation_error", "the request is not valid", details)

    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported_media_type(error: RequestUnsupportedContentType) -> Response:
        # guards.require_json refuses these first; this keeps any the resolver meets from being a 500.
        return error_response(
            415, "unsupported_media_type", "request bodies are JSON: send Content-Type: application/json"
        )

    @app.exception_handler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.details)

    @app.exception_handler(PluginError)
    def _plugin_error(error: PluginError) -> Response:
        # A plugin's bug (it raised, or answered what the OMS cannot take): nothing it answered was
        # kept, so the request repeated once the plugin works finishes it (502, as a payment
        # plugin's failure is). Logged once (failure_logged), answered without a traceback.
        failure_logged(logger, "plugin failed", error, error_code=error.code)
        return error_response(*described(error))

    @app.exception_handler(PaymentPluginFailed)
    def _payment_plugin_failed(error: PaymentPluginFailed) -> Response:
        # The payment plugin's bug, recorded in the order's history (kind plugin_error) and logged
        # once (failure_logged); what the request asked of the gateway stands under its key, so
        # the request repeated (or the reconciler) finishes it once the plugin works.
        failure_logged(logger, "payment plugin failed", error, operation=error.operation)
        return error_response(*described(error))

    @app.exception_handler(PluginUnavailable)
    def _plugin_unavailable(error: PluginUnavailable) -> Response:
        # Why each plugin failed was logged when the container loaded them; this names them.
        logger.warning("refused: a plugin failed to load", extra={"plugins": [d["plugin"] for d in error.details]})
        return error_response(503, error.code, error.message, error.details)

    @app.exception_handler(PaymentRefused)
    def _payment_refused(error: PaymentRefused) -> Response:
        # The gateway answered and said no: the order records nothing as moved; a person decides.
        logger.warning("payment gateway refused", extra={"operation": error.operation})
        return error_response(*described(error))

    @app.exception_handler(PaymentGatewayUnavailable)
    def _payment_unavailable(error: PaymentGatewayUnavailable) -> Response:
        # Retried within the request already; the same request later is safe (same idempotency key).
        logger.warning("payment gateway unavailable", extra={"error_code": error.code})
        response = error_response(*described(error))
        response.headers["Retry-After"] = "2"
        return response

    @app.exception_handler(TransientError)
    def _transient(error: TransientError) -> Response:
        # A gateway or carrier is briefly down: the request changed nothing and may be retried.
        response = error_response(*described(error))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(ClientError)
    def _aws_error(error: ClientError) -> Response:
        if not busy(error):
            return internal_error()
        logger.warning(
            "AWS busy",
            extra={"operation": error.operation_name, "error_code": error.response.get("Error", {}).get("Code")},
        )
        response = error_response(503, "temporarily_unavailable", "the OMS is busy: repeat the request shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DomainError)
    def _domain_error(error: DomainError) -> Response:
        return error_response(*described(error))

    @app.exception_handler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        return error_response(error.status_code, "http_error", error.msg)

    @app.not_found
    def _not_found(_: Exception) -> Response:
        return error_response(404, "not_found", "no such endpoint")

    @app.exception_handler(Exception)
    def _unexpected(error: Exception) -> Response:
        return internal_error()
