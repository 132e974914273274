"""A local API Gateway (REST, v1): routes HTTP requests to the template's handlers as proxy events."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from core import settings
from core.card_numbers import MASK, contains_card_number, mask_card_numbers
from core.log_text import escape_for_log
from infra.local.lambdas import LocalFunction, TimedOut
from infra.local.template import ACCOUNT_ID, REGION, ApiRoute, Template

logger = logging.getLogger("infra.local.gateway")
access_log = logging.getLogger("infra.local.http")

API_GATEWAY_MAX_BODY = 10 * 1024 * 1024  # API Gateway refuses larger payloads before any Lambda runs
LAMBDA_MAX_PAYLOAD = 6 * 1024 * 1024  # a synchronous invoke's event, and its response, each at most (as JSON)
API_ID = "local"  # the REST API's id in ARNs and request contexts
RAW_HEADERS_KEY = "oms.raw_headers"  # the headers as sent (case and repeats), which WSGI's environ folds

# What the gateway answers by itself, by API Gateway's name for it: its status, x-amzn-ErrorType and
# the message of its built-in body. MISSING_AUTHENTICATION_TOKEN answers a path no resource has and
# a method its resource lacks.
_ANSWERS = {
    "UNAUTHORIZED": (401, "UnauthorizedException", "Unauthorized"),
    "ACCESS_DENIED": (403, "AccessDeniedException", "User is not authorized to access this resource"),
    "REQUEST_TOO_LARGE": (413, "RequestTooLargeException", "Request Too Long"),
    "MISSING_AUTHENTICATION_TOKEN": (403, "MissingAuthenticationTokenException", "Missing Authentication Token"),
    "THROTTLED": (429, "TooManyRequestsException", "Too Many Requests"),
    # A method requiring an API key: the authorizer named none of a usage plan on the stage, or a
    # key past its plan's quota.
    "INVALID_API_KEY": (403, "ForbiddenException", "Forbidden"),
    "QUOTA_EXCEEDED": (429, "LimitExceededException", "Limit Exceeded"),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, "AuthorizerConfigurationException", None),
    # Lambda refused to invoke the API function (an event over its 6 MB): 500, Lambda's documentation
    # of API Gateway's errors. A declared INTEGRATION_FAILURE (or its StatusCode) would be taken first.
    "INTEGRATION_FAILURE": (500, "InternalServerErrorException", "Internal server error"),
    # The function ran and failed (it raised, timed out, answered more than 6 MB or no proxy response):
    # 502, a 5xx of no response type of its own, so DEFAULT_5XX's body and headers.
    "DEFAULT_5XX": (502, "InternalServerErrorException", "Internal server error"),
    # It ran past the integration's timeout (a function's Timeout over it): API Gateway stopped waiting.
    "INTEGRATION_TIMEOUT": (504, "InternalServerErrorException", "Endpoint request timed out"),
}


@dataclass(frozen=True)
class RouteMatch:
    route: ApiRoute
    path_parameters: dict[str, str]


class Router:
    """Matches a request path as API Gateway does: the most specific resource wins (literal
    segments over `{param}`), and one that lacks the method matches nothing, as a path no resource
    has (no fallback to a looser one). A greedy `{proxy+}` is refused, not matched as a segment."""

    def __init__(self, routes: Iterable[ApiRoute]):
        self.routes = list(routes)
        for route in self.routes:
            if "+}" in route.path:
                raise ValueError(f"route {route.event_name}: greedy path {route.path} is not emulated")
        methods: dict[str, dict[str, ApiRoute]] = {}  # each resource once (a method's first route wins)
        for route in self.routes:
            methods.setdefault(route.path, {}).setdefault(route.method, route)
        # Most specific first (literal segments before `{param}`s, position by position, then the
        # path): the first that matches is API Gateway's pick.
        self._resources = [
            (_segments(path), methods[path])
            for path in sorted(methods, key=lambda path: ([s.startswith("{") for s in _segments(path)], path))
        ]

    def match(self, raw_path: str, method: str) -> RouteMatch | None:
        segments = raw_path.split("/")[1:]
        if segments and segments[-1] == "":
            segments.pop()  # API Gateway ignores one trailing slash
        if "" in segments:  # an empty segment (`//`) names no resource
            return None
        values = [unquote(segment) for segment in segments]
        for resource, by_method in self._resources:
            if len(resource) == len(values) and all(
                s[0] == "{" or s == v for s, v in zip(resource, values, strict=True)
            ):
                route = by_method.get(method.upper())
                parameters = {s[1:-1]: v for s, v in zip(resource, values, strict=True) if s[0] == "{"}
                return None if route is None else RouteMatch(route, parameters)
        return None


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


@dataclass
class HttpRequest:
    method: str
    path: str  # raw, still percent-encoded
    query_string: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    domain_name: str = "127.0.0.1"
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received_at: float = field(default_factory=time.time)


def _single_and_multi(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value  # like API Gateway, the single-value map keeps the last one
        multi.setdefault(name, []).append(value)
    return (single or None), (multi or None)


# The caller identity fields API Gateway sends as null for a request without IAM or Cognito auth.
_NULL_IDENTITY = dict.fromkeys((
    "cognitoIdentityPoolId", "accountId", "cognitoIdentityId", "caller", "principalOrgId", "accessKey",
    "cognitoAuthenticationType", "cognitoAuthenticationProvider", "userArn", "user",
))  # fmt: skip


def proxy_event(request: HttpRequest, match: RouteMatch, *, stage: str = "v1") -> dict[str, Any]:
    """The REST API (payload v1) proxy event API Gateway hands the integration for `request`."""
    headers = list(request.headers)
    names = {name.lower() for name, _ in headers}
    added = {  # what API Gateway adds in front of every integration
        "X-Forwarded-For": request.source_ip,
        "X-Forwarded-Proto": "http",
        "X-Amzn-Trace-Id": f"Root=1-{int(request.received_at):08x}-{os.urandom(12).hex()}",
    }
    headers += [(name, value) for name, value in added.items() if name.lower() not in names]
    single_headers, multi_headers = _single_and_multi(headers)
    query, multi_query = _single_and_multi(parse_qsl(request.query_string, keep_blank_values=True))
    try:
        body, is_base64 = (request.body.decode("utf-8") if request.body else None), False
    except UnicodeDecodeError:
        body, is_base64 = base64.b64encode(request.body).decode("ascii"), True
    user_agent = next((value for name, value in headers if name.lower() == "user-agent"), None)
    method = request.method.upper()
    return {
        "resource": match.route.path,
        "path": request.path,
        "httpMethod": method,
        "headers": single_headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": match.path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid5(uuid.NAMESPACE_URL, match.route.path).hex[:6],  # stable per resource
            "resourcePath": match.route.path,
            "httpMethod": method,
            "extendedRequestId": request.request_id[:16],
            "requestTime": datetime.fromtimestamp(int(request.received_at), UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            # Served at the root, as behind a custom domain's base path mapping, so the path the
            # client used carries no stage (Swagger UI and links then point back here).
            "path": request.path,
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": request.domain_name.split(".")[0],
            "requestTimeEpoch": int(request.received_at * 1000),
            "requestId": request.request_id,
            "identity": {**_NULL_IDENTITY, "sourceIp": request.source_ip, "userAgent": user_agent},
            "domainName": request.domain_name,
            "apiId": API_ID,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def method_arn(event: Mapping[str, Any]) -> str:
    stage = event["requestContext"]["stage"]
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{stage}/{event['httpMethod']}{event['path']}"


# What a REQUEST authorizer's event shares with the proxy event.
_AUTHORIZER_EVENT_KEYS = (
    "resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
    "multiValueQueryStringParameters", "pathParameters", "stageVariables",
)  # fmt: skip


def request_authorizer_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The REQUEST authorizer event API Gateway builds from a proxy event."""
    return {
        "type": "REQUEST",
        "methodArn": method_arn(event),
        **{key: event[key] for key in _AUTHORIZER_EVENT_KEYS},
        "requestContext": {key: value for key, value in event["requestContext"].items() if key != "authorizer"},
    }


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

    def refusal(self, event: dict[str, Any]) -> str | None:
        """None when the request may go on, its request context then carrying the authorizer's
        principal and context (every value a string, as API Gateway hands them over); else the
        gateway response: UNAUTHORIZED when an identity source is missing or blank (the authorizer
        is not called) or the authorizer raised "Unauthorized", ACCESS_DENIED when its policy does
        not allow the method, AUTHORIZER_CONFIGURATION_ERROR when it failed (a 500 on AWS too)."""
        started = time.monotonic()
        try:
            output = self._output(event)
            if output is None or not policy_allows(output["policyDocument"], method_arn(event)):
                return "UNAUTHORIZED" if output is None else "ACCESS_DENIED"
        except AuthorizerMisconfigured as error:
            logger.error("authorizer %s: %s", self.name, error)
            return "AUTHORIZER_CONFIGURATION_ERROR"
        except Exception:
            logger.exception("authorizer %s raised", self.name)
            return "AUTHORIZER_CONFIGURATION_ERROR"
        if "usageIdentifierKey" in output:  # the API key a method requiring one is metered by
            event["requestContext"].setdefault("identity", {})["apiKey"] = str(output["usageIdentifierKey"])
        context = output.get("context") or {}
        event["requestContext"]["authorizer"] = {
            **{key: json.dumps(value) if isinstance(value, bool) else str(value) for key, value in context.items()},
            "principalId": str(output["principalId"]),
            "integrationLatency": int((time.monotonic() - started) * 1000),
        }
        return None

    def _output(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
        identity = tuple(headers.get(name.lower(), "") for name in self.identity_headers)
        if any(not value.strip() for value in identity):
            return None
        cacheable = self.cache_seconds > 0 and bool(identity)
        with self._cache_lock:
            cached = self._cache.get(identity) if cacheable else None
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            output = self.function.invoke(request_authorizer_event(event))
        except Exception as error:
            if str(error) == "Unauthorized":
                return None
            raise
        if not isinstance(output, dict) or "principalId" not in output or "policyDocument" not in output:
            raise AuthorizerMisconfigured("authorizer output needs principalId and policyDocument")
        for key, value in (output.get("context") or {}).items():
            if not isinstance(value, str | int | float | bool):
                raise AuthorizerMisconfigured(f"authorizer context {key!r} is not a string, number or boolean")
        if cacheable:
            with self._cache_lock:
                self._cache[identity] = (time.monotonic() + self.cache_seconds, output)
        return output

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()


def policy_allows(policy: Mapping[str, Any], arn: str) -> bool:
    """API Gateway's verdict on an authorizer's policy for `arn`: an explicit Deny wins, then an
    Allow, else deny. Only what the authorizer writes is evaluated (execute-api:Invoke on an ARN,
    or on a prefix ending in `*`); any other action or wildcard raises AuthorizerMisconfigured."""
    allowed = False
    for statement in policy.get("Statement") or []:
        actions, resources = _as_list(statement.get("Action")), _as_list(statement.get("Resource"))
        if actions != ["execute-api:Invoke"] or any("*" in r[:-1] or "?" in r for r in resources):
            raise AuthorizerMisconfigured(f"policy statement not evaluated locally: {json.dumps(statement)}")
        if any(arn == r or (r.endswith("*") and arn.startswith(r[:-1])) for r in resources):
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


@dataclass
class TokenBuckets:
    """API Gateway's throttling, per caller: `rate` tokens a second, at most `burst` saved up.
    On AWS the stage's MethodSettings throttle the whole stage; locally each caller (ApiGateway.handle
    says who that is) gets its own bucket, so one noisy client cannot starve the rest. `clock` is
    where the time comes from (a test stops it, so no token refills while a slow machine serves)."""

    rate: float
    burst: int
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # caller -> (tokens, last refill)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, caller: str, limits: tuple[float, int] | None = None) -> bool:
        """Whether the request may go ahead (API Gateway's THROTTLED says when to retry: the template's).
        `limits`: (rate, burst) of the caller's usage plan, in place of the stage's."""
        rate, burst = limits or (self.rate, self.burst)
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(caller, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            self._buckets[caller] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
            return tokens >= 1


@dataclass(frozen=True)
class UsagePlan:
    """A usage plan on the stage, as the gateway applies it to each key in it: its throttle's
    (rate, burst) (a bucket per caller, as the stage's) and its requests per day (None: no quota)."""

    plan_id: str
    limits: tuple[float, int] | None  # None: the plan has no throttle, the stage's applies
    quota_per_day: int | None


@dataclass
class UsagePlans:
    """The usage plans of this stage, read from moto (where the template's are made, and the API
    function adds per-key plans' keys): which plan the API key an authorizer answered is in, and
    each key's requests counted per UTC day against its plan's quota. A key found is remembered: a
    key's plan never changes, and a deleted key's OMS key is revoked (the authorizer refuses it)."""

    client: Any  # apigateway
    api_id: str
    stage: str
    clock: Callable[[], float] = field(default=time.time, repr=False)
    _plans: dict[str, UsagePlan] = field(default_factory=dict, repr=False)  # by key value
    _by_id: dict[str, UsagePlan] = field(default_factory=dict, repr=False)
    _used: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)  # (key, day) -> requests
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def plan_of(self, value: str) -> UsagePlan | None:
        with self._lock:
            if value in self._plans:
                return self._plans[value]
        key_id = next(
            (
                key["id"]
                for page in self.client.get_paginator("get_api_keys").paginate(includeValues=True)
                for key in page.get("items", [])
                if key.get("value") == value and key.get("enabled")
            ),
            None,
        )
        if key_id is None:
            return None
        for declared in self.client.get_usage_plans(keyId=key_id).get("items", []):
            if {"apiId": self.api_id, "stage": self.stage} in declared.get("apiStages", []):
                with self._lock:
                    plan = self._by_id.get(declared["id"])
                    if plan is None:
                        throttle = declared.get("throttle")
                        plan = self._by_id[declared["id"]] = UsagePlan(
                            declared["id"],
                            (float(throttle["rateLimit"]), int(throttle["burstLimit"])) if throttle else None,
                            (declared.get("quota") or {}).get("limit"),
                        )
                    self._plans[value] = plan
                    return plan
        return None

    def within_quota(self, plan: UsagePlan, value: str) -> bool:
        """Counts the request against the key's quota for today (UTC); False once it is used up."""
        if plan.quota_per_day is None:
            return True
        day = int(self.clock() // 86400)
        with self._lock:
            used = self._used.get((value, day), 0)
            if used >= plan.quota_per_day:
                return False
            self._used = {k: v for k, v in self._used.items() if k[1] == day}  # yesterday's counts go
            self._used[(value, day)] = used + 1
            return True


def _whole(template: Template, declared: Any, prop: str) -> int:
    """The template's value of an integer property of the API (`declared`, unresolved), or
    ValueError naming the parameter that set it: a Number parameter takes 400.5, which the
    property (and so the deploy) refuses."""
    value = template.resolve(declared)
    number = settings.number(str(value))
    if number is None or number != int(number):
        source = f"parameter {declared['Ref']}" if isinstance(declared, dict) and "Ref" in declared else prop
        raise ValueError(f"{source} must be a whole number ({prop} is an integer on API Gateway), got {value!r}")
    return int(number)


def _declared_answer(kind: str, responses: Mapping[str, Mapping[str, Any]]) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of the answer `kind` as API Gateway picks it from GatewayResponses:
    the kind's own, else DEFAULT_4XX or DEFAULT_5XX, else the built-in. A header mapped from the
    request (method.request...) is not emulated and fails startup."""
    status, _, message = _ANSWERS[kind]
    name = kind if kind in responses else f"DEFAULT_{status // 100}XX"
    declared = responses.get(name) or {}
    body = (declared.get("ResponseTemplates") or {}).get("application/json") or json.dumps({"message": message})
    headers = {}
    for header, value in ((declared.get("ResponseParameters") or {}).get("Headers") or {}).items():
        if not (isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'"):
            raise ValueError(f"GatewayResponses.{name} header {header}: {value!r} not emulated (only 'static' values)")
        headers[header] = value[1:-1]
    return int(declared.get("StatusCode", status)), body, headers


@dataclass(eq=False)  # hashed by identity: its flush callback is registered and removed
class ApiGateway:
    """The WSGI application: gateway checks, then the authorizer, then the API handler."""

    routes: Sequence[ApiRoute]
    api: LocalFunction
    authorizers: Mapping[str, Authorizer] = field(default_factory=dict)
    api_id: ClassVar[str] = API_ID  # FlushStageAuthorizersCache names the API by it
    _: KW_ONLY
    stage: str = "v1"
    gateway_responses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the API's GatewayResponses
    max_body_bytes: int = API_GATEWAY_MAX_BODY
    throttle: TokenBuckets | None = None
    integration_timeout: float = 29.0  # seconds: API Gateway's limit on a Lambda integration
    usage_plans: UsagePlans | None = None  # ApiKeySourceType AUTHORIZER: the stage's usage plans

    def __post_init__(self) -> None:
        self.router = Router(self.routes)
        missing = {r.authorizer for r in self.routes if r.authorizer and r.authorizer not in self.authorizers}
        if missing:
            raise ValueError(f"routes name authorizers that were not given: {sorted(missing)}")
        self._answers = {kind: _declared_answer(kind, self.gateway_responses) for kind in _ANSWERS}

    @classmethod
    def from_template(
        cls, template: Template, functions: Mapping[str, LocalFunction], apigateway: Any = None
    ) -> ApiGateway:
        """The template's REST API: routes, authorizers, GatewayResponses, stage, the throttle of
        its stage's catch-all MethodSettings (`/*` and `*`: supported.py), and with ApiKeySourceType
        AUTHORIZER its usage plans, read through `apigateway` (a client of the stack's moto).
        `functions`: by logical id."""
        authorizers = {}
        for name, config in (template.api("Auth", {}).get("Authorizers") or {}).items():
            identity = config.get("Identity") or {}
            headers, cache_seconds = tuple(identity.get("Headers") or ()), identity.get("ReauthorizeEvery", 300)
            function = functions[template.authorizer_function(name)]
            authorizers[name] = Authorizer(name, function, headers, _whole(template, cache_seconds, "ReauthorizeEvery"))
        throttle = None
        for declared in template.api("MethodSettings", []):
            if not {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= declared.keys():
                raise ValueError("MethodSettings: only an entry setting both throttling limits is emulated")
            rate = float(template.resolve(declared["ThrottlingRateLimit"]))
            throttle = TokenBuckets(rate, _whole(template, declared["ThrottlingBurstLimit"], "ThrottlingBurstLimit"))
        stage = str(template.resolve(template.api("StageName", "Prod")))
        # Without a client (a test's gateway in front of stand-in functions), keys are not checked.
        usage_plans = None
        if template.api("ApiKeySourceType") == "AUTHORIZER" and apigateway is not None:
            usage_plans = UsagePlans(apigateway, API_ID, stage)
        return cls(
            template.api_routes(),
            functions[template.api_function()],
            authorizers,
            stage=stage,
            gateway_responses=template.api("GatewayResponses", {}),
            throttle=throttle,
            usage_plans=usage_plans,
        )

    def flush_authorizer_caches(self) -> None:  # FlushStageAuthorizersCache for this stage
        for authorizer in self.authorizers.values():
            authorizer.clear_cache()

    def gateway_response(self, kind: str, request_id: str) -> Response:
        status, body, headers = self._answers[kind]
        response = Response(body, status=status, content_type="application/json")
        response.headers.update({"x-amzn-RequestId": request_id, "x-amzn-ErrorType": _ANSWERS[kind][1], **headers})
        return response

    def handle(self, request: HttpRequest) -> Response:
        if len(request.body) > self.max_body_bytes:
            return self.gateway_response("REQUEST_TOO_LARGE", request.request_id)
        match = self.router.match(request.path, request.method)
        if match is None:
            return self.gateway_response("MISSING_AUTHENTICATION_TOKEN", request.request_id)
        event = proxy_event(request, match, stage=self.stage)
        authorizer = self.authorizers.get(match.route.authorizer or "")
        refusal = authorizer.refusal(event) if authorizer else None
        if refusal not in (None, "UNAUTHORIZED"):
            return self.gateway_response(refusal, request.request_id)
        # The caller is the API key (the authorizer's principalId). One without a valid key (a public
        # route, a missing, unknown or revoked key) is known only by its address: its request counts
        # against that address's bucket, so a new bad key per request cannot buy a fresh bucket.
        caller = event["requestContext"].get("authorizer", {}).get("principalId") or request.source_ip
        plan, usage_key = None, None
        if refusal is None and match.route.api_key_required and self.usage_plans is not None:
            # Metered by the usage plan of the key the authorizer answered, which must be one of a
            # plan on this stage (API Gateway's InvalidKeyParameter otherwise).
            usage_key = (event["requestContext"].get("identity") or {}).get("apiKey")
            plan = self.usage_plans.plan_of(usage_key) if usage_key else None
            if plan is None:
                return self.gateway_response("INVALID_API_KEY", request.request_id)
        if self.throttle is not None and not self.throttle.take(caller, plan.limits if plan else None):
            return self.gateway_response("THROTTLED", request.request_id)
        if refusal is not None:
            return self.gateway_response(refusal, request.request_id)
        if plan is not None and usage_key and self.usage_plans and not self.usage_plans.within_quota(plan, usage_key):
            return self.gateway_response("QUOTA_EXCEEDED", request.request_id)
        if _json_size(event) > LAMBDA_MAX_PAYLOAD:
            logger.error("%s: the event is over Lambda's 6 MB: the invoke is refused", _loggable_request(request))
            return self.gateway_response("INTEGRATION_FAILURE", request.request_id)
        try:
            result = self.api.invoke(event, self.integration_timeout)
        except Exception as error:
            logger.exception("%s: the API handler raised", _loggable_request(request))
            late = isinstance(error, TimedOut) and self.api.timeout_seconds > self.integration_timeout
            return self.gateway_response("INTEGRATION_TIMEOUT" if late else "DEFAULT_5XX", request.request_id)
        try:
            if _json_size(result) > LAMBDA_MAX_PAYLOAD:
                raise ValueError("the response is over Lambda's 6 MB")
            return _http_response(result, request.request_id)
        except (TypeError, ValueError, KeyError) as error:
            logger.error("%s: malformed Lambda proxy response: %s", _loggable_request(request), error)
            return self.gateway_response("DEFAULT_5XX", request.request_id)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.monotonic()
        request = Request(environ)
        request.max_content_length = self.max_body_bytes
        body = None  # None: too large, refused before it is read (werkzeug raises for a chunked one)
        if (request.content_length or 0) <= self.max_body_bytes:
            with suppress(RequestEntityTooLarge):
                body = request.get_data(cache=False)
        http_request = HttpRequest(
            method=request.method,
            path=_raw_path(environ),
            query_string=environ.get("QUERY_STRING", ""),
            headers=environ.get(RAW_HEADERS_KEY) or list(request.headers.items()),
            body=body or b"",
            source_ip=request.remote_addr or "127.0.0.1",
            domain_name=request.host or "127.0.0.1",
        )
        if body is None:
            response = self.gateway_response("REQUEST_TOO_LARGE", http_request.request_id)
        else:
            response = self.handle(http_request)
        # Everything the client chose is escaped: a CR/LF or an ANSI escape in a path or a
        # (percent-decoded) parameter name would otherwise forge or recolour log lines.
        query = escape_for_log(_loggable_query(http_request.query_string))
        milliseconds = (time.monotonic() - started) * 1000
        access_log.info(
            "%s%s -> %s (%d ms)", _loggable_request(http_request), query, response.status_code, milliseconds
        )
        return response(environ, start_response)


def _json_size(payload: Any) -> int:
    """The bytes of `payload` as JSON, as Lambda counts an invoke's event or response."""
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "replace"))


def _http_response(result: Any, request_id: str) -> Response:
    """The Lambda proxy response as HTTP."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        raise TypeError("a proxy response is a dict with an integer statusCode")
    body = "" if result.get("body") is None else result["body"]  # an empty {} is no string either
    if not isinstance(body, str):
        raise TypeError("a proxy response body is a string")
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    multi = result.get("multiValueHeaders") or {}
    # API Gateway merges the two maps; a name in multiValueHeaders wins.
    headers = [(name, str(value)) for name, values in multi.items() for value in values]
    taken = {name.lower() for name, values in multi.items() if values or not isinstance(values, list | tuple | set)}
    single = (result.get("headers") or {}).items()
    headers += [(name, str(value)) for name, value in single if name.lower() not in taken]
    names = {name.lower() for name, _ in headers}
    defaults = {"Content-Type": "application/json", "x-amzn-RequestId": request_id}
    headers += [(name, value) for name, value in defaults.items() if name.lower() not in names]
    return Response(payload, status=result["statusCode"], headers=headers)


# Long digit runs in a logged path (a card number sent as an id, say) are never written out.
_LONG_NUMBER = re.compile(r"\d[\d%20 -]{10,}\d")


def _loggable_request(request: HttpRequest) -> str:
    return f"{escape_for_log(request.method)} {escape_for_log(_loggable_path(request.path))}"


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
    names = {mask_card_numbers(name) for name, _ in parse_qsl(query_string, keep_blank_values=True)}
    return "?" + "&".join(sorted(names)) if query_string else ""


def _raw_path(environ: Mapping[str, Any]) -> str:
    raw = environ.get("RAW_URI") or environ["REQUEST_URI"]  # werkzeug's server and test client set both
    path = urlsplit(raw).path if raw.startswith(("http://", "https://")) else raw.split("?", 1)[0]
    return path.encode("latin-1").decode("utf-8", "replace") or "/"  # WSGI carries bytes as latin-1
