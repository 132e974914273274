"""A local API Gateway (REST, v1): routes HTTP requests to the template's handlers as proxy events."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from core.card_numbers import MASK, contains_card_number, mask_card_numbers
from core.log_text import escape_for_log
from infra.local.lambdas import LocalFunction
from infra.local.template import ACCOUNT_ID, REGION, ApiRoute, GatewayResponse, Template

logger = logging.getLogger("infra.local.gateway")
access_log = logging.getLogger("infra.local.http")

API_GATEWAY_MAX_BODY = 10 * 1024 * 1024  # API Gateway refuses larger payloads before any Lambda runs

# The contract's error shape for what the gateway itself answers. A template's GatewayResponses
# (UNAUTHORIZED, ACCESS_DENIED, ...) take precedence, exactly as on AWS.
_DEFAULT_RESPONSES = {
    "UNAUTHORIZED": (401, "unauthorized", "missing, unknown or revoked API key"),
    "ACCESS_DENIED": (403, "forbidden", "this API key may not call this endpoint"),
    "REQUEST_TOO_LARGE": (413, "payload_too_large", "request body too large"),
    # On AWS an unknown route answers MISSING_AUTHENTICATION_TOKEN (403 unless the template maps
    # it); the contract says 404, so that is the local default.
    "MISSING_AUTHENTICATION_TOKEN": (404, "not_found", "no such resource"),
    "THROTTLED": (429, "throttled", "too many requests: slow down and retry"),
    "METHOD_NOT_ALLOWED": (405, "method_not_allowed", "this resource does not support the method"),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, "internal_error", "internal error"),
    "INTEGRATION_FAILURE": (500, "internal_error", "internal error"),
}


# --- Routing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteMatch:
    route: ApiRoute
    path_parameters: dict[str, str]


class Router:
    """Matches a request path against the template's resource paths the way API Gateway does:
    the most specific resource wins (literal segments over `{param}`), and a resource that lacks
    the method answers 405 rather than falling back to a looser one."""

    def __init__(self, routes: Iterable[ApiRoute]):
        self.routes = list(routes)
        self._compiled = [(route, _segments(route.path)) for route in self.routes]

    def match(self, raw_path: str, method: str) -> tuple[RouteMatch | None, list[str]]:
        """(the match, or None) and the methods the best-matching resource allows (empty: no resource)."""
        segments = raw_path.split("/")[1:]
        if segments and segments[-1] == "":
            segments.pop()  # API Gateway ignores one trailing slash
        best: tuple[tuple[int, ...], str] | None = None
        candidates: list[tuple[ApiRoute, dict[str, str]]] = []
        for route, pattern in self._compiled:
            params = _match_segments(pattern, segments)
            if params is None:
                continue
            rank = (tuple(kind for kind, _ in pattern), route.path)
            if best is None or rank < best:
                best, candidates = rank, [(route, params)]
            elif rank == best:
                candidates.append((route, params))
        allowed = sorted({route.method for route, _ in candidates})
        for route, params in candidates:
            if route.method == method.upper():
                return RouteMatch(route, params), allowed
        return None, allowed


_LITERAL, _PARAM = 0, 1


def _segments(path: str) -> list[tuple[int, str]]:
    parsed = []
    for segment in path.strip("/").split("/") if path.strip("/") else []:
        if segment.startswith("{") and segment.endswith("}"):
            parsed.append((_PARAM, segment[1:-1]))
        else:
            parsed.append((_LITERAL, segment))
    return parsed


def _match_segments(pattern: list[tuple[int, str]], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for index, (kind, name) in enumerate(pattern):
        if index >= len(segments) or segments[index] == "":
            return None
        value = unquote(segments[index])
        if kind == _LITERAL and value != name:
            return None
        if kind == _PARAM:
            params[name] = value
    return params if len(pattern) == len(segments) else None


# --- Events -------------------------------------------------------------------------------------


@dataclass
class HttpRequest:
    """What the gateway needs of an HTTP request; `path` is the raw (still percent-encoded) path."""

    method: str
    path: str
    query_string: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    domain_name: str = "127.0.0.1"
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received_at: float = field(default_factory=time.time)


def _single_and_multi(
    pairs: Iterable[tuple[str, str]],
) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value  # like API Gateway, the single-value map keeps the last one
        multi.setdefault(name, []).append(value)
    return (single or None), (multi or None)


def _body_fields(body: bytes) -> tuple[str | None, bool]:
    if not body:
        return None, False
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def proxy_event(
    request: HttpRequest,
    match: RouteMatch,
    *,
    stage: str = "v1",
    api_id: str = "local",
) -> dict[str, Any]:
    """The REST API (payload v1) proxy event API Gateway hands the integration for `request`."""
    headers = list(request.headers)
    names = {name.lower() for name, _ in headers}
    # What API Gateway adds in front of every integration.
    for name, value in (
        ("X-Forwarded-For", request.source_ip),
        ("X-Forwarded-Proto", "http"),
        ("X-Amzn-Trace-Id", f"Root=1-{int(request.received_at):08x}-{uuid.uuid4().hex[:24]}"),
    ):
        if name.lower() not in names:
            headers.append((name, value))
    single_headers, multi_headers = _single_and_multi(headers)
    query, multi_query = _single_and_multi(parse_qsl(request.query_string, keep_blank_values=True))
    body, is_base64 = _body_fields(request.body)
    user_agent = next((value for name, value in headers if name.lower() == "user-agent"), None)
    received = datetime.fromtimestamp(request.received_at, UTC)
    return {
        "resource": match.route.path,
        "path": request.path,
        "httpMethod": request.method.upper(),
        "headers": single_headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": match.path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid5(uuid.NAMESPACE_URL, match.route.path).hex[:6],
            "resourcePath": match.route.path,
            "httpMethod": request.method.upper(),
            "extendedRequestId": request.request_id[:16],
            "requestTime": received.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            # Served at the root, as behind a custom domain's base path mapping, so the path the
            # client used carries no stage (Swagger UI and links then point back here).
            "path": request.path,
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": request.domain_name.split(".")[0],
            "requestTimeEpoch": int(request.received_at * 1000),
            "requestId": request.request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": request.source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": user_agent,
                "user": None,
            },
            "domainName": request.domain_name,
            "apiId": api_id,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def method_arn(event: Mapping[str, Any], *, api_id: str = "local") -> str:
    context = event["requestContext"]
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{api_id}/{context['stage']}/{event['httpMethod']}{event['path']}"


def request_authorizer_event(event: Mapping[str, Any], *, api_id: str = "local") -> dict[str, Any]:
    """The REQUEST authorizer event API Gateway builds from a proxy event."""
    return {
        "type": "REQUEST",
        "methodArn": method_arn(event, api_id=api_id),
        "resource": event["resource"],
        "path": event["path"],
        "httpMethod": event["httpMethod"],
        "headers": event["headers"],
        "multiValueHeaders": event["multiValueHeaders"],
        "queryStringParameters": event["queryStringParameters"],
        "multiValueQueryStringParameters": event["multiValueQueryStringParameters"],
        "pathParameters": event["pathParameters"],
        "stageVariables": event["stageVariables"],
        "requestContext": {key: value for key, value in event["requestContext"].items() if key != "authorizer"},
    }


# --- Authorization --------------------------------------------------------------------------------


class AuthorizerMisconfigured(Exception):
    """The authorizer answered something API Gateway cannot use (a 500 on AWS too)."""


@dataclass
class Authorizer:
    """A REQUEST Lambda authorizer with API Gateway's result cache, keyed by the identity sources."""

    name: str
    function: LocalFunction
    identity_headers: tuple[str, ...] = ("Authorization",)
    cache_seconds: int = 300
    _cache: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = field(default_factory=dict, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def identity(self, headers: Mapping[str, str] | None) -> tuple[str, ...] | None:
        """The identity source values, or None when one is missing (API Gateway answers 401
        without calling the authorizer)."""
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        values = tuple(lowered.get(name.lower(), "") for name in self.identity_headers)
        return None if any(not value.strip() for value in values) else values

    def authorize(self, event: Mapping[str, Any], *, api_id: str = "local") -> dict[str, Any] | None:
        """The authorizer's output (policy and context), or None for "Unauthorized" (401).
        Any other exception from the handler propagates."""
        identity = self.identity(event.get("headers"))
        if identity is None and self.identity_headers:
            return None
        cacheable = self.cache_seconds > 0 and bool(identity)
        if cacheable:
            with self._cache_lock:
                cached = self._cache.get(identity)
                if cached and cached[0] > time.monotonic():
                    return cached[1]
        try:
            output = self.function.invoke(request_authorizer_event(event, api_id=api_id))
        except Exception as error:
            if str(error) == "Unauthorized":
                return None
            raise
        _validate_authorizer_output(output)
        if cacheable:
            with self._cache_lock:
                self._cache[identity] = (time.monotonic() + self.cache_seconds, output)
        return output

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()


def _validate_authorizer_output(output: Any) -> None:
    if not isinstance(output, dict) or "principalId" not in output or "policyDocument" not in output:
        raise AuthorizerMisconfigured("authorizer output needs principalId and policyDocument")
    for key, value in (output.get("context") or {}).items():
        if not isinstance(value, str | int | float | bool):
            raise AuthorizerMisconfigured(f"authorizer context {key!r} is not a string, number or boolean")


def policy_allows(policy: Mapping[str, Any], arn: str) -> bool:
    """API Gateway's verdict on an authorizer's policy for `arn`: an explicit Deny wins, then an
    Allow, else deny. Only what the authorizer writes is evaluated (execute-api:Invoke on an ARN,
    or on a prefix ending in `*`); any other action or wildcard raises AuthorizerMisconfigured."""
    allowed = False
    for statement in policy.get("Statement") or []:
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        if actions != ["execute-api:Invoke"] or any("*" in r[:-1] or "?" in r for r in resources):
            raise AuthorizerMisconfigured(f"policy statement not evaluated locally: {json.dumps(statement)}")
        if any(arn == r or (r.endswith("*") and arn.startswith(r[:-1])) for r in resources):
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _context_value(value: Any) -> str:
    # API Gateway hands the integration every authorizer context value as a string.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- The WSGI app ---------------------------------------------------------------------------------


class TokenBuckets:
    """API Gateway's throttling, per caller: `rate` tokens a second, at most `burst` saved up.
    On AWS the stage's MethodSettings throttle the whole stage; locally each API key (the
    authorizer's principalId) gets its own bucket, so one noisy client cannot starve the rest.
    A caller without a valid key (a public route, a missing, unknown or revoked key) is known only
    by its address, so it gets the bucket of its source IP: a bad key per request cannot buy a
    fresh bucket each time."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """0 when the request may go ahead, else the seconds until a token is available."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.rate


class ApiGateway:
    """The WSGI application: gateway checks, then the authorizer, then the API handler."""

    def __init__(
        self,
        routes: Sequence[ApiRoute],
        api: LocalFunction,
        authorizers: Mapping[str, Authorizer] | None = None,
        *,
        stage: str = "v1",
        api_id: str = "local",
        gateway_responses: Mapping[str, GatewayResponse] | None = None,
        max_body_bytes: int = API_GATEWAY_MAX_BODY,
        throttle: TokenBuckets | None = None,
    ):
        self.router = Router(routes)
        self.throttle = throttle
        self.api = api
        self.authorizers = dict(authorizers or {})
        missing = {r.authorizer for r in routes if r.authorizer and r.authorizer not in self.authorizers}
        if missing:
            raise ValueError(f"routes name authorizers that were not given: {sorted(missing)}")
        self.stage = stage
        self.api_id = api_id
        self.gateway_responses = dict(gateway_responses or {})
        self.max_body_bytes = max_body_bytes

    @classmethod
    def from_template(cls, template: Template, functions: Mapping[str, LocalFunction], **kwargs: Any) -> ApiGateway:
        """`functions` maps the template's function logical ids to their local functions."""
        authorizers = {
            name: Authorizer(
                name=name,
                function=functions[spec.function_logical_id],
                identity_headers=spec.identity_headers,
                cache_seconds=spec.reauthorize_every,
            )
            for name, spec in template.authorizers().items()
        }
        if "throttle" not in kwargs and (limits := template.throttle()) is not None:
            kwargs["throttle"] = TokenBuckets(*limits)
        return cls(
            template.api_routes(),
            functions[template.api_function().logical_id],
            authorizers,
            stage=template.stage_name(),
            gateway_responses=template.gateway_responses(),
            **kwargs,
        )

    def flush_authorizer_caches(self) -> None:
        """FlushStageAuthorizersCache for this stage: every authorizer asks again on the next request."""
        for authorizer in self.authorizers.values():
            authorizer.clear_cache()

    # Responses the gateway makes itself.
    def gateway_response(self, kind: str, request_id: str, headers: Mapping[str, str] | None = None) -> Response:
        declared = self.gateway_responses.get(kind)
        status, code, message = _DEFAULT_RESPONSES[kind]
        if declared is not None and declared.body is not None:
            status, body = declared.status, declared.body
        else:
            status = declared.status if declared is not None else status
            body = json.dumps({"error": {"code": code, "message": message, "details": []}})
        response = Response(body, status=status, content_type="application/json")
        response.headers["x-amzn-RequestId"] = request_id
        if kind in _ERROR_TYPES:
            response.headers["x-amzn-ErrorType"] = _ERROR_TYPES[kind]
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def _throttled(self, request_id: str, wait: float) -> Response:
        return self.gateway_response("THROTTLED", request_id, {"Retry-After": str(max(1, math.ceil(wait)))})

    def internal_error(self, request_id: str, status: int = 500) -> Response:
        body = {"error": {"code": "internal_error", "message": "internal error", "details": []}}
        response = Response(json.dumps(body), status=status, content_type="application/json")
        response.headers["x-amzn-RequestId"] = request_id
        return response

    # The pipeline.
    def handle(self, request: HttpRequest, *, declared_length: int | None = None) -> Response:
        """One request through the gateway. `declared_length` lets an oversized body be refused
        before it is read."""
        if declared_length is not None and declared_length > self.max_body_bytes:
            return self.gateway_response("REQUEST_TOO_LARGE", request.request_id)
        if len(request.body) > self.max_body_bytes:
            return self.gateway_response("REQUEST_TOO_LARGE", request.request_id)
        match, allowed = self.router.match(request.path, request.method)
        if match is None:
            if allowed:
                return self.gateway_response("METHOD_NOT_ALLOWED", request.request_id, {"Allow": ", ".join(allowed)})
            return self.gateway_response("MISSING_AUTHENTICATION_TOKEN", request.request_id)
        event = proxy_event(request, match, stage=self.stage, api_id=self.api_id)
        if match.route.authorizer:
            denied = self._authorize(self.authorizers[match.route.authorizer], event)
            if denied is not None:
                # A refused key is no one: its request counts against its address's bucket, so
                # a new bad key per request cannot buy a fresh bucket. (A valid key is never held
                # back by the bad keys sent from its address.)
                unauthorized = self.throttle is not None and denied.status_code == 401
                if unauthorized and (wait := self.throttle.take(request.source_ip)) > 0:
                    return self._throttled(request.request_id, wait)
                return denied
        if self.throttle is not None:
            caller = event["requestContext"].get("authorizer", {}).get("principalId") or request.source_ip
            wait = self.throttle.take(caller)
            if wait > 0:
                return self._throttled(request.request_id, wait)
        try:
            result = self.api.invoke(event)
        except Exception:
            logger.error(
                "%s %s: the API handler raised\n%s",
                escape_for_log(request.method),
                escape_for_log(_loggable_path(request.path)),
                traceback.format_exc(),
            )
            return self.internal_error(request.request_id)
        try:
            return _http_response(result, request.request_id)
        except (TypeError, ValueError, KeyError) as error:
            logger.error(
                "%s %s: malformed Lambda proxy response: %s",
                escape_for_log(request.method),
                escape_for_log(_loggable_path(request.path)),
                error,
            )
            return self.internal_error(request.request_id, status=502)

    def _authorize(self, authorizer: Authorizer, event: dict[str, Any]) -> Response | None:
        request_id = event["requestContext"]["requestId"]
        started = time.monotonic()
        try:
            output = authorizer.authorize(event, api_id=self.api_id)
        except AuthorizerMisconfigured as error:
            logger.error("authorizer %s: %s", authorizer.name, error)
            return self.gateway_response("AUTHORIZER_CONFIGURATION_ERROR", request_id)
        except Exception:
            logger.error("authorizer %s raised\n%s", authorizer.name, traceback.format_exc())
            return self.gateway_response("AUTHORIZER_CONFIGURATION_ERROR", request_id)
        if output is None:
            return self.gateway_response("UNAUTHORIZED", request_id)
        try:
            allowed = policy_allows(output["policyDocument"], method_arn(event, api_id=self.api_id))
        except AuthorizerMisconfigured as error:
            logger.error("authorizer %s: %s", authorizer.name, error)
            return self.gateway_response("AUTHORIZER_CONFIGURATION_ERROR", request_id)
        if not allowed:
            return self.gateway_response("ACCESS_DENIED", request_id)
        context = {key: _context_value(value) for key, value in (output.get("context") or {}).items()}
        event["requestContext"]["authorizer"] = {
            **context,
            "principalId": str(output["principalId"]),
            "integrationLatency": int((time.monotonic() - started) * 1000),
        }
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.monotonic()
        request = Request(environ)
        request.max_content_length = self.max_body_bytes
        http_request = HttpRequest(
            method=request.method,
            path=_raw_path(environ),
            query_string=environ.get("QUERY_STRING", ""),
            headers=environ.get(RAW_HEADERS_KEY) or list(request.headers.items()),
            source_ip=request.remote_addr or "127.0.0.1",
            domain_name=request.host or "127.0.0.1",
        )
        declared = request.content_length
        if declared is None or declared <= self.max_body_bytes:
            try:
                http_request.body = request.get_data(cache=False)
            except RequestEntityTooLarge:
                declared = self.max_body_bytes + 1
        response = self.handle(http_request, declared_length=declared)
        # Everything the client chose is escaped: a CR/LF or an ANSI escape in a path or a
        # (percent-decoded) parameter name would otherwise forge or recolour log lines.
        access_log.info(
            "%s %s%s -> %s (%d ms)",
            escape_for_log(http_request.method),
            escape_for_log(_loggable_path(http_request.path)),
            escape_for_log(_loggable_query(http_request.query_string)),
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response(environ, start_response)


# Long digit runs in a logged path (a card number sent as an id, say) are never written out.
_LONG_NUMBER = re.compile(r"\d[\d%20 -]{10,}\d")


def _loggable_path(path: str) -> str:
    """The raw path as it may be logged: a card number in it, however encoded or separated
    (/orders/4111.1111.1111.1111, %2E for the dots), is masked in the decoded path, which is
    logged encoded again."""
    decoded = unquote(path)
    if contains_card_number(decoded):
        path = MASK.join(quote(piece, safe="/") for piece in mask_card_numbers(decoded).split(MASK))
    return _LONG_NUMBER.sub("[number]", path)


def _loggable_query(query_string: str) -> str:
    """Parameter names only: values may carry what must never reach a log (and names are masked:
    they can carry a card number too)."""
    if not query_string:
        return ""
    return "?" + "&".join(
        sorted({mask_card_numbers(name) for name, _ in parse_qsl(query_string, keep_blank_values=True)})
    )


_ERROR_TYPES = {
    "UNAUTHORIZED": "UnauthorizedException",
    "THROTTLED": "TooManyRequestsException",
    "ACCESS_DENIED": "AccessDeniedException",
    "REQUEST_TOO_LARGE": "RequestTooLargeException",
    "MISSING_AUTHENTICATION_TOKEN": "MissingAuthenticationTokenException",
    "AUTHORIZER_CONFIGURATION_ERROR": "AuthorizerConfigurationException",
}


def _http_response(result: Any, request_id: str) -> Response:
    """The Lambda proxy response (statusCode, headers, multiValueHeaders, body, isBase64Encoded)."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        raise TypeError("a proxy response is a dict with an integer statusCode")
    body = result.get("body") or ""
    if not isinstance(body, str):
        raise TypeError("a proxy response body is a string")
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    response = Response(payload, status=result["statusCode"])
    response.headers.clear()
    multi = result.get("multiValueHeaders") or {}
    for name, values in multi.items():
        for value in values:
            response.headers.add(name, str(value))
    # API Gateway merges the two maps; a name in multiValueHeaders wins.
    taken = {name.lower() for name in multi}
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in taken:
            response.headers.add(name, str(value))
    if "Content-Type" not in response.headers:  # case-insensitive
        response.headers["Content-Type"] = "application/json"
    response.headers.setdefault("x-amzn-RequestId", request_id)
    return response


# --- HTTP plumbing --------------------------------------------------------------------------------

RAW_HEADERS_KEY = "oms.raw_headers"


def _raw_path(environ: Mapping[str, Any]) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = urlsplit(raw).path if raw.startswith(("http://", "https://")) else raw.split("?", 1)[0]
        # The WSGI environ carries bytes as latin-1 code points.
        return path.encode("latin-1").decode("utf-8", "replace") or "/"
    return environ.get("PATH_INFO") or "/"


class GatewayRequestHandler(WSGIRequestHandler):
    """Keeps the headers as sent (case and repeats), which WSGI's environ folds; access logging is
    the gateway's own. Speaks HTTP/1.1 so clients keep their connections alive, as they do with
    API Gateway (werkzeug's default, HTTP/1.0, closes every connection)."""

    protocol_version = "HTTP/1.1"

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[RAW_HEADERS_KEY] = list(self.headers.items())
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass
