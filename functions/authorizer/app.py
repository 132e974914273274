"""API Gateway REQUEST authorizer: finds the bearer API key by its hash and passes who is calling."""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from botocore.config import Config

from core.secret_hashes import SECRET_PATTERN, hash_secret
from functions.adapters.api_key_lookup import ApiKeyLookup, KeyGrant
from functions.adapters.aws_clients import aws_client
from functions.warm import Warm

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

# It runs on nearly every new connection, so its cold start is paid often: nothing here may import
# pydantic, the core models, the plugins or the API's resolver (functions.bootstrap imports them
# all), nor powertools, whose import alone adds a tenth to boto3's. tests/unit/test_authorizer_imports.py
# holds it to that.


@functools.cache
def logger() -> Logger:
    """Built on the first refusal, the only thing this function logs: a caller with a good key
    never pays for powertools' import. Kept for the process's life, never forgotten with the warm
    state: powertools keeps one handler per service, on the stdout it was first created with."""
    from functions.masked_logs import function_logger

    return function_logger(service="oms-authorizer")


# The first invocation of this process is its cold start, as powertools' `cold_start` key means.
_invocations = itertools.count()

# The scheme in any case and 1*SP before the key (RFC 9110 11.1, RFC 6750 2.1). Only the scheme is
# read in any case: a secret's [A-Za-z] under IGNORECASE would match letters that fold to ASCII ones
# (U+212A KELVIN SIGN for k, U+017F for s, U+0131 for i), none of which a secret holds.
_BEARER = re.compile(rf"(?i:bearer) +({SECRET_PATTERN})")


# Its Timeout is 5 s (template.yaml), not the 10 s functions/adapters/aws_clients.py's defaults fit
# three attempts of 3 s into: two attempts of 1.5 s (a consistent GetItem answers in milliseconds)
# raise botocore's own error in time, where Lambda would kill a third attempt (and the container).
LOOKUP_CLIENT = Config(connect_timeout=0.5, read_timeout=1.0, retries={"mode": "standard", "total_max_attempts": 2})

# Built on first use and kept while the execution environment is warm.
api_keys: Warm[ApiKeyLookup] = Warm(
    lambda: ApiKeyLookup(aws_client("dynamodb", config=LOOKUP_CLIENT), os.environ["CATALOG_TABLE"])
)


class RefusedHashes:
    """Key hashes refused lately (unknown or revoked), so a caller retrying a bad key costs no
    DynamoDB read per attempt. Bounded (the oldest is dropped first) and short-lived: a hash
    that names no key now could name one a moment later only by a secret being issued or
    rotated to it, which a short TTL lets through soon enough."""

    def __init__(self, size: int = 1024, ttl_seconds: float = 30.0, clock: Any = time.monotonic):
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, secret_hash: str) -> bool:
        with self._lock:
            until = self._until.get(secret_hash)
            if until is None:
                return False
            if until <= self._clock():
                del self._until[secret_hash]
                return False
            return True

    def add(self, secret_hash: str) -> None:
        with self._lock:
            self._until[secret_hash] = self._clock() + self.ttl_seconds
            self._until.move_to_end(secret_hash)
            while len(self._until) > self.size:
                self._until.popitem(last=False)


refused: Warm[RefusedHashes] = Warm(RefusedHashes)


def _authorization(event: dict[str, Any]) -> str | None:
    """The request's one Authorization header, or None when it has none or several. Sent twice (or
    under two spellings of its name) it names two credentials while API Gateway caches this
    function's answer under one of them (the single-value map's, the last): answering for either
    could let the other in for the cache's lifetime. RFC 9110 11.6.2 allows one."""
    single = [value for name, value in (event.get("headers") or {}).items() if name.lower() == "authorization"]
    multi = [
        value
        for name, values in (event.get("multiValueHeaders") or {}).items()
        if name.lower() == "authorization"
        for value in values or ()
    ]
    if len(single) > 1 or len(multi) > 1 or (multi and multi != single):
        return None
    return single[0] if single else None


def _policy(principal: str, effect: str, method_arn: str, context: dict[str, str]) -> dict[str, Any]:
    # The policy covers the whole stage, not just this route: API Gateway caches it per key for
    # AuthorizerCacheSeconds, and scopes are checked per route by the API function.
    api_arn = "/".join(method_arn.split("/")[:2]) + "/*"
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": api_arn}],
        },
        "context": context,
    }


def _log_refusal(event: dict[str, Any], context: Any, cold_start: bool, reason: str) -> None:
    # The keys powertools' inject_lambda_context would set, and as `correlation_id` the same request
    # id the API function logs for this request.
    log = logger()
    log.clear_state()
    log.append_keys(
        cold_start=cold_start,
        function_name=context.function_name,
        function_memory_size=context.memory_limit_in_mb,
        function_arn=context.invoked_function_arn,
        function_request_id=context.aws_request_id,
    )
    log.set_correlation_id((event.get("requestContext") or {}).get("requestId"))
    log.info("rejected API key", extra={"reason": reason})


def _count_refusal(invoked_at: float) -> None:
    """One ApiKeysRefused point (powertools EMF, the functions' namespace and service) for a caller
    refused: raising "Unauthorized" is an error to Lambda, so each one is in the function's Errors
    metric, and AuthorizerErrorsAlarm takes these out of it (a bad key is the caller's mistake, not
    a failure to call a person for). Timestamped at the invocation's start, as Lambda's Errors is,
    so both land in the same minute. Imported on a refusal only, as the logger is."""
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    metrics = EphemeralMetrics()
    metrics.set_timestamp(int(invoked_at * 1000))
    metrics.add_metric(name="ApiKeysRefused", unit=MetricUnit.Count, value=1)
    metrics.flush_metrics()


_now = time.time  # when an invocation starts (a test's clock in its place)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    invoked_at = _now()
    cold_start = next(_invocations) == 0
    # Raising "Unauthorized" is API Gateway's contract for a 401; the header is never logged.
    header = _authorization(event)
    # RFC 9110 5.5: the whitespace around a field value is not part of it (a key pasted with a space).
    match = _BEARER.fullmatch(header.strip(" \t")) if isinstance(header, str) else None
    if match is None:
        _count_refusal(invoked_at)
        raise Exception("Unauthorized")
    secret_hash = hash_secret(match.group(1))
    if secret_hash in refused():
        _log_refusal(event, context, cold_start, "refused lately")
        _count_refusal(invoked_at)
        raise Exception("Unauthorized")
    key = api_keys().by_hash(secret_hash)
    if key is None or key.revoked:
        refused().add(secret_hash)
        _log_refusal(event, context, cold_start, "unknown" if key is None else "revoked")
        _count_refusal(invoked_at)
        raise Exception("Unauthorized")
    # Context values are strings: a key's locations space-separated (an id holds no space), "" for none.
    context = {
        "key_id": key.key_id,
        "scopes": " ".join(key.scopes),
        "channel": key.channel or "",
        "location_ids": " ".join(key.location_ids or ()),
    }
    answer = _policy(key.key_id, "Allow", event["methodArn"], context)
    if usage_key := _usage_key(key):
        answer["usageIdentifierKey"] = usage_key
    return answer


def _usage_key(key: KeyGrant) -> str | None:
    """The API Gateway key whose usage plan meters the caller (the API's ApiKeySourceType is
    AUTHORIZER): the key's own while per-key usage plans are on (GATEWAY_KEY_PLAN), else the
    stage's shared one, every key's before per-key plans and while they are off (a key's own is
    in no plan then)."""
    if key.gateway_key and os.environ.get("GATEWAY_KEY_PLAN"):
        return key.gateway_key
    return os.environ.get("GATEWAY_SHARED_KEY") or None
