"""What a return costs on AWS: requested and received over HTTP on the local stack, restocked,
counted and refunded by the returns workflow (moto's interpreter, its task in-process), and what the
optional features (events, one webhook subscription, the aggregates, notifications, the access log)
add on top.

Runs in its own process (`python -m bench.returns`, called by `make bench`), like bench.workflow,
whose request counter, duration model and log meter it reuses, with its attribution of each request,
invocation and log line to the optional feature it is for. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import requests

from bench.cost import SFN_EXPRESS_BILLED_GB, Usage, combined, dollars, optional_dollars
from bench.workflow import (
    FEATURES,
    MEASURED_SCHEDULE_SECONDS,
    DurationModel,
    ItemKey,
    LogMeter,
    ScheduledRuns,
    Subscriber,
    UsageRecorder,
    as_billed,
    bill_lambda,
    feature_dollars,
    print_metrics_as_on_lambda,
    run_schedules_every,
    tag_events_function,
)
from infra.local.stack import running_stack

RETURNS = int(os.environ.get("BENCH_RETURNS", "40"))
SKU = "TSHIRT-BLK-M"
# The optional features, as the order's (bench.workflow.FEATURES), and the access log: the order's is
# priced per read, a return's by what it records of the return's own requests.
RETURN_FEATURES = (*FEATURES, "access log")


class ReturnUsageRecorder(UsageRecorder):
    """bench.workflow's recorder, plus the Returns table's index writes (its four GSIs on a put, the
    status index on a status change); its items, and the restock transactions' (each write doubled),
    billed on their sizes as the recorder bills every item outside the Orders table."""

    returns_table = ""

    def _capacity(self, usage: Usage, operation: str, params: dict[str, Any], sizes: Mapping[ItemKey, int]) -> None:
        table = params.get("TableName")
        if table and table == self.returns_table:
            if operation == "PutItem":
                usage.wru += 4  # by_order, by_channel, by_status and by_created entries
            elif operation == "UpdateItem":
                values = params.get("ExpressionAttributeValues", {})
                if values[":status"]["S"] != values[":expected_status"]["S"]:
                    usage.wru += 2  # the by_status entry moves
        super()._capacity(usage, operation, params, sizes)  # the item: on its size (UsageRecorder.written_keys)


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


def return_bill(core: Usage, features: Mapping[str, Usage], count: int) -> dict[str, Any]:
    """`count` returns' bill per million returns, as the order's is reported: the core by service
    (with what AWS adds to what the functions did: as_billed), the logs' INFO lines, Lambda's
    START/END/REPORT lines and X-Ray on top, then each optional feature's (its requests, invocations
    and log lines, as UsageRecorder attributes them), and the total with all of them; the invocations
    per return, the features' too."""
    billed = as_billed(core)
    per_million = {service: cost / count * 1_000_000 for service, cost in dollars(billed).items()}
    optional = {feature: cost / count * 1_000_000 for feature, cost in optional_dollars(billed).items()}
    by_feature = {feature: feature_dollars(features.get(feature, Usage()), count) for feature in RETURN_FEATURES}
    invocations = combined((core, 1.0), *((features[f], 1.0) for f in RETURN_FEATURES if f in features))
    return {
        "lambda_invocations_per_return": {
            name: calls / count for name, calls in sorted(invocations.lambda_invocations.items())
        },
        "dollars_per_million_returns": per_million,
        "total_per_million_returns": sum(per_million.values()),
        "optional_dollars_per_million_returns": optional,
        "features_per_million_returns": by_feature,
        "total_with_all_per_million_returns": sum(per_million.values())
        + sum(optional.values())
        + sum(sum(bill.values()) for bill in by_feature.values()),
    }


def main() -> None:
    params = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    cpu = DurationModel()
    cpu.install()
    recorder = ReturnUsageRecorder(durations=cpu)
    recorder.install()
    print_metrics_as_on_lambda()
    lock = threading.Lock()
    real_stdout = sys.stdout
    sys.stdout = LogMeter(sys.stdout, recorder.running_usage, lock)
    sys.stderr = LogMeter(sys.stderr, recorder.running_usage, lock)
    # The scheduled functions are charged by the clock, as bench.workflow's (MEASURED_SCHEDULE_SECONDS):
    # at the template's rate for the seconds the returns come over.
    run_schedules_every(MEASURED_SCHEDULE_SECONDS)
    receiver = Subscriber()
    with running_stack(seed=True, parameter_overrides=params) as stack:
        tag_events_function()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.admin_key}"
        # One webhook subscription to every event, answered at once, as the order's bench has.
        session.post(f"{stack.api_url}/webhooks", json={"url": receiver.url, "events": ["*"]},
                     timeout=10).raise_for_status()  # fmt: skip
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
        recorder.access_log_queue = stack.queue_urls["AccessLogQueue"]

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
        recorder.features.clear()
        functions = stack.functions.values()
        cpu_before = Counter(cpu.seconds)
        invocations_before = {f.name: f.invocations for f in functions}
        delivered_before = receiver.received
        schedules.mark()
        started = time.monotonic()
        made = [one_return(order_id) for order_id in placed[1:]]
        stack.wait_until_idle(300)
        returns_seconds = time.monotonic() - started

        # The run's usage, kept from the reads below (the access log records them).
        usage, features, recorder.features = recorder.usage, recorder.features, defaultdict(Usage)
        bill_lambda(functions, usage, features, cpu, cpu_before, invocations_before)
        usage = combined((usage, 1.0), (schedules.charge(returns_seconds), 1.0))
        usage.sfn_gb_seconds = (
            sum(cpu.seconds[f.name] - cpu_before[f.name] for f in functions if "ReturnStep" in f.name)
            * SFN_EXPRESS_BILLED_GB
        )
        usage.api_requests = 2 * len(made)  # the request and the receipt
        deliveries = receiver.received - delivered_before
        statuses = Counter(session.get(f"{stack.api_url}/returns/{rma}", timeout=30).json()["status"] for rma in made)

    receiver.close()
    sys.stdout = real_stdout
    count = len(made)

    def per_return(counts: Counter[str]) -> dict[str, float]:
        return {key: value / count for key, value in sorted(counts.items())}

    print(
        json.dumps(
            {
                "returns": count,
                "statuses": dict(statuses),
                "api_requests_per_return": usage.api_requests / count,
                "requests_per_return_by_function": per_return(usage.by_function),
                "lambda_gb_seconds_per_return": usage.lambda_gb_seconds / count,
                "sfn_executions_per_return": usage.sfn_executions / count,
                "wru_per_return": usage.wru / count,
                "rru_per_return": usage.rru / count,
                "webhook_deliveries_per_return": deliveries / count,
                **return_bill(usage, features, count),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
