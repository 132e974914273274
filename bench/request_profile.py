"""Our own CPU per `POST /orders`: N orders through the API handler in-process, then sampled.

Runs in its own process (`python -m bench.request_profile`, called by `make bench`): it starts the
stack in-process, calls `functions.api.app.lambda_handler` directly (no HTTP, no authorizer), and
splits each order's CPU time into the AWS calls (botocore and moto, here standing in for
DynamoDB) and the rest, which is ours: routing, validation, pricing, plugins, serialization.
Where ours goes is sampled (the stack every half millisecond of CPU), not traced: cProfile's
cost per Python call inflates code made of many small calls (pricing, pluggy) two to three times
over code that runs in C (pydantic-core, json), and ranked them wrongly.
Prints one JSON object. `--capture PATH` instead pickles the AWS calls of one order for the raw
baseline (capture_order_calls).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from botocore.client import BaseClient

from bench.stack import external_id
from infra.local.lambdas import end_invocation_metrics
from infra.local.stack import EmbeddedStack, running_stack

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
    """CPU seconds spent inside botocore's API call (request building, moto's work, parsing), and
    whether one is running now, so the sampler leaves those samples out: the profile holds our code."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls: Counter[str] = Counter()
        self.inside = False

    def install(self) -> None:
        original = BaseClient._make_api_call
        clock = self

        def timed(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
            start = time.process_time()
            clock.inside = True
            try:
                return original(client, operation_name, api_params)
            finally:
                clock.inside = False
                clock.seconds += time.process_time() - start
                clock.calls[operation_name] += 1

        BaseClient._make_api_call = timed  # type: ignore[method-assign]


class Sampler:
    """Every SAMPLE_SECONDS of the process's CPU time, the main thread's stack, unless an AWS call is
    running: self time by function (the innermost frame) and inclusive time (every frame once)."""

    SAMPLE_SECONDS = 0.0005

    def __init__(self, clock: AwsClock):
        self._clock = clock
        self.own: Counter[tuple[str, int, str]] = Counter()
        self.inclusive: Counter[tuple[str, int, str]] = Counter()
        self.samples = 0

    def _sample(self, _signal: int, frame: Any) -> None:
        if self._clock.inside or frame is None:
            return
        self.samples += 1
        code = frame.f_code
        self.own[(code.co_filename, code.co_firstlineno, code.co_name)] += 1
        seen = set()
        while frame is not None:
            code = frame.f_code
            seen.add((code.co_filename, code.co_firstlineno, code.co_name))
            frame = frame.f_back
        self.inclusive.update(seen)

    def __enter__(self) -> Sampler:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.SAMPLE_SECONDS, self.SAMPLE_SECONDS)
        return self

    def __exit__(self, *_: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)


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


def as_on_lambda(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler`, its metric set left after each invocation as Lambda's leaves it
    (infra.local.lambdas.end_invocation_metrics, what the local runtime does after every run):
    with POWERTOOLS_METRICS_DISABLED (set here, so no EMF line is printed) log_metrics neither
    prints nor clears it, and a set that grows across invocations, every add_metric formatting
    the whole list into its debug line, is a cost Lambda never pays, measured as ours."""

    def invoke(event: dict[str, Any], context: Any) -> Any:
        try:
            return handler(event, context)
        finally:
            end_invocation_metrics()

    return invoke


@contextmanager
def warm_api() -> Iterator[tuple[EmbeddedStack, Callable[..., Any]]]:
    """A started stack with the demo data and plenty of stock, and the API handler after WARM_UP
    orders: a warm container."""
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    params = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    with running_stack(seed=True, event_sources=False, parameter_overrides=params) as stack:
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        requests.put(f"{stack.api_url}/inventory/TSHIRT-BLK-M/wh-west", json={"on_hand": 1_000_000},
                     headers=headers, timeout=10).raise_for_status()  # fmt: skip
        from functions.api import app

        lambda_handler = as_on_lambda(app.lambda_handler)
        for _ in range(WARM_UP):
            assert lambda_handler(post_order_event(), Context())["statusCode"] == 201
        yield stack, lambda_handler


def capture_order_calls(path: str) -> None:
    """Pickles to `path` the AWS calls one warm POST /orders makes (operation, parameters), the
    tables they touch (their DescribeTable answers) and the items its reads find: make bench's raw
    baseline replays exactly these calls in a fresh process."""
    calls: list[tuple[str, dict[str, Any]]] = []
    original = BaseClient._make_api_call

    def spy(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        calls.append((operation_name, copy.deepcopy(api_params)))
        return original(client, operation_name, api_params)

    with warm_api() as (stack, lambda_handler):
        BaseClient._make_api_call = spy  # type: ignore[method-assign]
        try:
            assert lambda_handler(post_order_event(), Context())["statusCode"] == 201
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]
        dynamodb = stack.client("dynamodb")
        touched = {params["TableName"] for _, params in calls if "TableName" in params}
        touched |= {name for _, params in calls for name in params.get("RequestItems", {})}
        read_keys = [(name, read["Keys"]) for op, params in calls if op == "BatchGetItem"
                     for name, read in params["RequestItems"].items()]  # fmt: skip
        captured = {
            "calls": calls,
            "tables": [dynamodb.describe_table(TableName=name)["Table"] for name in sorted(touched)],
            "items": [
                (name, item)
                for name, keys in read_keys
                for item in dynamodb.batch_get_item(RequestItems={name: {"Keys": keys}})["Responses"][name]
            ],
        }
    if not calls or not captured["items"]:
        raise RuntimeError(f"one POST /orders made {[op for op, _ in calls]}, reading {captured['items']}")
    with open(path, "wb") as file:
        pickle.dump(captured, file)


def main() -> None:
    if sys.argv[1:2] == ["--capture"]:
        capture_order_calls(sys.argv[2])
        return
    clock = AwsClock()
    clock.install()
    with warm_api() as (_, lambda_handler):
        # First without the profiler: the split of CPU time into AWS calls and ours.
        clock.seconds, clock.calls = 0.0, Counter()
        cpu_start = time.process_time()
        for _ in range(ORDERS):
            status = lambda_handler(post_order_event(), Context())["statusCode"]
            assert status == 201, status
        cpu = time.process_time() - cpu_start
        aws, calls = clock.seconds, Counter(clock.calls)

        # Then sampled, the AWS calls left out: where our share goes.
        with Sampler(clock) as sampler:
            for _ in range(ORDERS):
                lambda_handler(post_order_event(), Context())

    by_owner: Counter[str] = Counter()
    for (filename, _, _), count in sampler.own.items():
        by_owner[owner(filename)] += count
    # The handler and what it calls: not this script's frames around it.
    functions = [
        (count, f"{short_path(filename)}:{line} {name}")
        for (filename, line, name), count in sampler.inclusive.items()
        if not short_path(filename).startswith(("bench/", "<frozen"))
    ]
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
                    [name, count / profiled] for count, name in sorted(functions, reverse=True)[:40]
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
