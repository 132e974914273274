"""What a return costs on AWS: requested and received over HTTP on the local stack, restocked,
counted and refunded by the returns workflow (moto's interpreter, its task in-process).

Runs in its own process (`python -m bench.returns`, called by `make bench`), like bench.workflow,
whose request counter, duration model and log meter it reuses. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import requests

from bench.cost import (
    LAMBDA_PLATFORM_LOG_BYTES,
    SFN_EXPRESS_BILLED_GB,
    Usage,
    combined,
    dollars,
    optional_dollars,
    wru_for,
)
from bench.workflow import (
    MEASURED_SCHEDULE_SECONDS,
    DurationModel,
    LogMeter,
    ScheduledRuns,
    UsageRecorder,
    print_metrics_as_on_lambda,
    run_schedules_every,
    schedule_periods,
)
from infra.local.stack import running_stack

RETURNS = int(os.environ.get("BENCH_RETURNS", "40"))
SKU = "TSHIRT-BLK-M"


class ReturnUsageRecorder(UsageRecorder):
    """bench.workflow's recorder, plus the Returns table's index writes (its four GSIs on a put, the
    status index on a status change) and restock transactions (two items, each write doubled)."""

    returns_table = ""

    def _capacity(self, usage: Usage, operation: str, params: dict[str, Any]) -> None:
        table = params.get("TableName")
        if operation == "TransactWriteItems":
            usage.wru += 2 * len(params["TransactItems"])  # small items: one unit each, doubled
            return
        if table and table == self.returns_table:
            if operation == "PutItem":
                usage.wru += 4  # by_order, by_channel, by_status and by_created entries
            elif operation == "UpdateItem":
                values = params.get("ExpressionAttributeValues", {})
                if values[":status"]["S"] != values[":expected_status"]["S"]:
                    usage.wru += 2  # the by_status entry moves
                usage.wru += wru_for(len(values[":doc"]["S"].encode()) + 120) - 1
        super()._capacity(usage, operation, params)


def _order_body() -> dict[str, Any]:
    return {
        "channel": "bench",
        "external_id": uuid.uuid4().hex,
        "currency": "USD",
        "customer": {"id": "cus_bench", "email": "bench@example.com"},
        "lines": [{"sku": SKU, "quantity": 2}],
        "shipping_address": {"name": "Bench", "line1": "1 Market St", "city": "San Francisco", "region": "CA",
                             "postal_code": "94105", "country": "US"},
        "payment": {"method": "test", "token": "tok_approve"},
    }  # fmt: skip


def main() -> None:
    params = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    cpu = DurationModel()
    cpu.install()
    recorder = ReturnUsageRecorder(durations=cpu)
    recorder.install()
    print_metrics_as_on_lambda()
    lock = threading.Lock()
    real_stdout = sys.stdout
    sys.stdout = LogMeter(sys.stdout, lambda: recorder.running_scheduled() or recorder.usage, lock)
    sys.stderr = LogMeter(sys.stderr, lambda: recorder.running_scheduled() or recorder.usage, lock)
    # The scheduled functions are charged by the clock, as bench.workflow's (MEASURED_SCHEDULE_SECONDS):
    # at the template's rate for the seconds the returns come over.
    run_schedules_every(MEASURED_SCHEDULE_SECONDS)
    with running_stack(seed=True, parameter_overrides=params) as stack:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.admin_key}"
        session.put(
            f"{stack.api_url}/inventory/{SKU}/wh-west", json={"on_hand": 100_000}, timeout=10
        ).raise_for_status()
        placed = []
        for _ in range(RETURNS + 1):  # the first is the warm-up
            response = session.post(f"{stack.api_url}/orders", json=_order_body(), timeout=30)
            response.raise_for_status()
            placed.append(response.json()["id"])
        stack.wait_until_idle(300)
        origins = {}
        for order_id in placed:
            order = session.get(f"{stack.api_url}/orders/{order_id}", timeout=30).json()
            for shipment in order["shipments"]:
                base = f"{stack.api_url}/orders/{order_id}/shipments/{shipment['id']}"
                session.post(f"{base}/ship", timeout=30).raise_for_status()
                session.post(f"{base}/deliver", timeout=30).raise_for_status()
                origins[order_id] = shipment["location_id"]
        stack.wait_until_idle(60)
        recorder.returns_table = stack.table_names["ReturnsTable"]
        recorder.orders_table = stack.table_names["OrdersTable"]

        def one_return(order_id: str) -> str:
            body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}
            created = session.post(f"{stack.api_url}/orders/{order_id}/returns", json=body, timeout=30)
            created.raise_for_status()
            rma = created.json()["id"]
            receipt = {"location_id": origins[order_id],
                       "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}  # fmt: skip
            session.post(f"{stack.api_url}/returns/{rma}/receive", json=receipt, timeout=30).raise_for_status()
            return rma

        one_return(placed[0])
        schedules = ScheduledRuns(stack, recorder, cpu)
        stack.wait_until_idle(60)
        recorder.usage = Usage()  # what the warm-up did is not part of the run
        functions = stack.functions.values()
        cpu_before = Counter(cpu.seconds)
        invocations_before = {f.name: f.invocations for f in functions}
        schedules.mark()
        started = time.monotonic()
        made = [one_return(order_id) for order_id in placed[1:]]
        stack.wait_until_idle(300)
        returns_seconds = time.monotonic() - started

        usage = recorder.usage
        for f in functions:
            calls = f.invocations - invocations_before[f.name]
            if calls and (name := f.name.split("-")[-1]) not in schedule_periods():
                usage.lambda_invocations[name] += calls
                usage.lambda_gb_seconds += (cpu.seconds[f.name] - cpu_before[f.name]) * f.memory_mb / 1024
        usage = combined((usage, 1.0), (schedules.charge(returns_seconds), 1.0))
        usage.sfn_gb_seconds = (
            sum(cpu.seconds[f.name] - cpu_before[f.name] for f in functions if "ReturnStep" in f.name)
            * SFN_EXPRESS_BILLED_GB
        )
        usage.api_requests = 2 * len(made)  # the request and the receipt
        usage.log_bytes["platform"] += sum(usage.lambda_invocations.values()) * LAMBDA_PLATFORM_LOG_BYTES
        usage.traces = usage.api_requests
        statuses = Counter(session.get(f"{stack.api_url}/returns/{rma}", timeout=30).json()["status"] for rma in made)

    sys.stdout = real_stdout
    count = len(made)
    per_million = {service: cost / count * 1_000_000 for service, cost in dollars(usage).items()}
    optional = {feature: cost / count * 1_000_000 for feature, cost in optional_dollars(usage).items()}

    def per_return(counts: Counter[str]) -> dict[str, float]:
        return {key: value / count for key, value in sorted(counts.items())}

    print(
        json.dumps(
            {
                "returns": count,
                "statuses": dict(statuses),
                "api_requests_per_return": usage.api_requests / count,
                "requests_per_return_by_function": per_return(usage.by_function),
                "lambda_invocations_per_return": per_return(usage.lambda_invocations),
                "lambda_gb_seconds_per_return": usage.lambda_gb_seconds / count,
                "sfn_executions_per_return": usage.sfn_executions / count,
                "wru_per_return": usage.wru / count,
                "rru_per_return": usage.rru / count,
                "dollars_per_million_returns": per_million,
                "total_per_million_returns": sum(per_million.values()),
                "optional_dollars_per_million_returns": optional,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
