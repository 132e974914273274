"""Our own CPU per `POST /orders`: N orders through the API handler in-process, under cProfile.

Runs in its own process (`python -m bench.request_profile`, called by `make bench`): it starts the
stack in-process, calls `functions.api.app.lambda_handler` directly (no HTTP, no authorizer), and
splits each order's CPU time into the AWS calls (botocore and moto, here standing in for
DynamoDB) and the rest, which is ours: routing, validation, pricing, plugins, serialization.
Prints one JSON object.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import time
import uuid
from collections import Counter
from typing import Any

import requests
from botocore.client import BaseClient

from bench.stack import external_id
from infra.local.stack import running_stack

ORDERS = int(os.environ.get("BENCH_PROFILE_ORDERS", "300"))
WARM_UP = 20


class Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    aws_request_id = "profile"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def post_order_event() -> dict[str, Any]:
    body = {
        "channel": "bench", "external_id": external_id(), "currency": "USD",
        "customer": {"id": "cus_bench", "email": "bench@example.com"},
        "lines": [{"sku": "TSHIRT-BLK-M", "quantity": 1}],
        "shipping_address": {"name": "Bench", "line1": "1 Market St", "city": "San Francisco", "region": "CA",
                             "postal_code": "94105", "country": "US"},
        "payment": {"method": "test", "token": "tok_approve"},
    }  # fmt: skip
    return {
        "resource": "/orders", "path": "/orders", "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"}, "multiValueHeaders": {},
        "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
        "requestContext": {"requestId": uuid.uuid4().hex, "stage": "v1", "path": "/v1/orders",
                           "resourcePath": "/orders", "httpMethod": "POST",
                           "authorizer": {"key_id": "key_admin", "scopes": "admin", "channel": ""}},
        "body": json.dumps(body), "isBase64Encoded": False,
    }  # fmt: skip


class AwsClock:
    """CPU seconds spent inside botocore's API call (request building, moto's work, parsing).
    While a profiler is set, it is paused for each call, so the profile holds our code alone."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls: Counter[str] = Counter()
        self.profiler: cProfile.Profile | None = None

    def install(self) -> None:
        original = BaseClient._make_api_call
        clock = self

        def timed(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
            profiler = clock.profiler
            if profiler is not None:
                profiler.disable()
            start = time.process_time()
            try:
                return original(client, operation_name, api_params)
            finally:
                clock.seconds += time.process_time() - start
                clock.calls[operation_name] += 1
                if profiler is not None:
                    profiler.enable()

        BaseClient._make_api_call = timed  # type: ignore[method-assign]


# Where a function's own time goes: the first matching path fragment names its owner.
OWNERS = [
    ("/botocore/", "botocore (client method dispatch)"),
    ("/boto3/", "boto3 (type serializer)"),
    ("/pydantic", "pydantic"),
    ("/aws_lambda_powertools/", "powertools"),
    ("/pluggy/", "pluggy"),
    ("/copy.py", "copy (deepcopy)"),
    ("/json/", "json"),
    ("/core/", "core/"),
    ("/functions/", "functions/"),
    ("/plugins/", "plugins/"),
]


def owner(filename: str) -> str:
    for fragment, name in OWNERS:
        if fragment in filename:
            return name
    return "other (stdlib, builtins)"


def main() -> None:
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    clock = AwsClock()
    clock.install()
    params = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    with running_stack(seed=True, event_sources=False, parameter_overrides=params) as stack:
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        requests.put(f"{stack.api_url}/inventory/TSHIRT-BLK-M/wh-west", json={"on_hand": 1_000_000},
                     headers=headers, timeout=10).raise_for_status()  # fmt: skip
        from functions.api.app import lambda_handler

        for _ in range(WARM_UP):
            assert lambda_handler(post_order_event(), Context())["statusCode"] == 201

        # First without the profiler: the split of CPU time into AWS calls and ours.
        clock.seconds, clock.calls = 0.0, Counter()
        cpu_start = time.process_time()
        for _ in range(ORDERS):
            status = lambda_handler(post_order_event(), Context())["statusCode"]
            assert status == 201, status
        cpu = time.process_time() - cpu_start
        aws, calls = clock.seconds, Counter(clock.calls)

        # Then under cProfile, paused inside AWS calls: where our share goes (cProfile's own
        # overhead inflates these; compare them with each other, not with the split above).
        clock.profiler = profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(ORDERS):
            lambda_handler(post_order_event(), Context())
        profiler.disable()
        clock.profiler = None

    if os.environ.get("BENCH_PROFILE_STATS"):
        # For a closer look: python -m pstats FILE, or snakeviz.
        profiler.dump_stats(os.environ["BENCH_PROFILE_STATS"])
    stats = pstats.Stats(profiler)
    by_owner: Counter[str] = Counter()
    functions: list[tuple[float, str]] = []
    for (filename, line, name), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_owner[owner(filename)] += tottime
        functions.append((cumtime, f"{short_path(filename)}:{line} {name}"))
    profiled = sum(by_owner.values())
    print(
        json.dumps(
            {
                "orders": ORDERS,
                "cpu_ms_per_order": cpu * 1000 / ORDERS,
                "aws_ms_per_order": aws * 1000 / ORDERS,
                "own_ms_per_order": (cpu - aws) * 1000 / ORDERS,
                "aws_calls_per_order": {k: v / ORDERS for k, v in sorted(calls.items())},
                "own_share_by_owner": {k: v / profiled for k, v in by_owner.most_common()},
                "top_own_functions_share_cumulative": [
                    [name, seconds / profiled] for seconds, name in sorted(functions, reverse=True)[:40]
                ],
            }
        )
    )


def short_path(filename: str) -> str:
    for marker in ("/site-packages/", "/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(filename, root) if filename.startswith(root) else filename


if __name__ == "__main__":
    sys.exit(main())
