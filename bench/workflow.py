"""Orders from POST to `allocated` on the local stack, and what each order costs on AWS, with what
the optional features (events, one webhook subscription, the aggregates, notifications, the access
log) add on top.

Runs in its own process (`python -m bench.workflow`, called by `make bench`) because it starts
the stack in-process: a botocore event hook then sees every AWS request the functions make,
attributed to the function making it. Prints one JSON object. `python -m bench.workflow steady`
prices the placing alone at a steady arrival rate (see STEADY_TIME_SCALE), for `make bench` to
set beside the burst's.
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

import requests
from botocore.client import BaseClient

from bench.cost import (
    AWS_CALL_SECONDS,
    LAMBDA_PLATFORM_LOG_BYTES,
    SFN_EXPRESS_BILLED_GB,
    Usage,
    attribute_bytes,
    combined,
    dollars,
    item_bytes,
    labels_in_s3_express,
    lambda_cpu_seconds,
    optional_dollars,
    rru_for,
    wru_for,
)
from bench.stack import external_id
from functions.adapters import order_codec
from infra.local.event_sources import LOCAL_SCHEDULE_PERIODS, SCHEDULE_PERIOD_ENV, schedule_period
from infra.local.lambdas import RUNNING, WORKER_THREADS, LocalFunction
from infra.local.moto_patches.lock import MOTO_LOCK
from infra.local.stack import running_stack
from infra.local.template import Template

ORDERS = int(os.environ.get("BENCH_WORKFLOW_ORDERS", "100"))
CLIENTS = 4
# Shipments a warehouse system confirms in one POST /shipments/confirmations (a wave, a manifest).
CONFIRMATION_BATCH = 50

# The burst (CLIENTS placing orders as fast as they can) gathers many orders' stream records in
# each batching window (the template's MaximumBatchingWindowInSeconds, 1 s); a shop that takes an
# order every few seconds does not. `python -m bench.workflow steady` places STEADY_ORDERS orders
# one every STEADY_SECONDS_APART seconds, so that each window holds one order's records at most.
# Its clock is compressed by STEADY_TIME_SCALE to keep it short: the gap between orders, the
# batching windows (OMS_BATCHING_WINDOW_SCALE), the authorizer's cache (AuthorizerCacheSeconds:
# 5 s, past by each order's turn) all by the same factor, so each keeps its ratio to the gap: what
# shares an invocation and what the cache answers are as at this rate on AWS (the schedules are
# charged by arithmetic instead: see MEASURED_SCHEDULE_SECONDS). Nothing billed is timed (requests,
# items, the modeled durations), so the compression changes the bill through those alone. The functions' own
# latency is not scaled: an order's records come over ~0.6 s here (POST to `allocated`), which
# the 1.2 s gap leaves room for; how they split between 0.2 s windows follows that latency.
STEADY_ORDERS = int(os.environ.get("BENCH_STEADY_ORDERS", "10"))
STEADY_SECONDS_APART = 6.0  # on AWS: 600 orders an hour
STEADY_TIME_SCALE = 0.2  # keeps the authorizer's cache a whole number of seconds (API Gateway's unit)

# A scheduled function (the template's Schedule events: the jeopardy scan, the reconciler) runs by
# the clock, not per order: on AWS once a template period (5 minutes), whatever the orders. Both
# runs measure what one scheduled run costs (its requests, read and write units, Lambda time and
# invocation, log lines) from the runs the local stack makes every MEASURED_SCHEDULE_SECONDS (each
# function's usage kept apart from the phases'), and charge the runs AWS would make while the run's
# orders arrive: (seconds they arrive over, on AWS) / (template period). A local period set to the
# template's would count a whole run, or none, in a run shorter than it; the local default (30 s)
# counted ten times AWS's. The burst's orders arrive over its placing (POST to `allocated`; its
# confirmations and reads, later here, go on beside later orders' placing on AWS), the steady run's
# over STEADY_ORDERS * STEADY_SECONDS_APART; the charge is part of the placing's bill.
MEASURED_SCHEDULE_SECONDS = 5.0

# The optional features, by the function that does their work; the core figure leaves them out.
# EventsFunction's own time is the events' (the aggregates and notifications ride on its
# invocations); its requests are split by what they are for (see UsageRecorder.feature).
FEATURE_FUNCTIONS = {
    "EventsFunction": "events",
    "WebhookDeliveryFunction": "webhooks",
    "AccessLogFunction": "access log",
}
FEATURES = ("events", "webhooks", "aggregates", "notifications")  # per order; the access log is per read
_FEATURE = threading.local()  # the feature EventsFunction is working for, while it does
CORE = ""  # what EventsFunction works for while it finishes a hand-over's stock step: no feature's


@contextmanager
def working_for(feature: str) -> Iterator[None]:
    outer = getattr(_FEATURE, "name", None)
    _FEATURE.name = feature
    try:
        yield
    finally:
        _FEATURE.name = outer


def tag_events_function() -> None:
    """EventsFunction's counters and notifications are the aggregates' and notifications' cost, and
    its reads of a handed-over parcel's reservations (and the stock step it finishes) the core's:
    its handler calls these module functions, wrapped here (the stack runs in this process)."""
    import functions.events.app as events_app

    tags = (("update_aggregates", "aggregates"), ("notify", "notifications"), ("finish_parcels_left", CORE))
    for name, feature in tags:
        original = getattr(events_app, name)

        def tagged(*args: Any, _original: Callable[..., Any] = original, _feature: str = feature) -> Any:
            with working_for(_feature):
                return _original(*args)

        setattr(events_app, name, tagged)


@dataclass(frozen=True)
class Index:
    keys: frozenset[str]
    projected: frozenset[str] | None  # None: every attribute (ALL)
    name: str = ""

    def writes_on_put(self, item: dict[str, Any]) -> int:
        # A sparse index holds only the items that carry all its key attributes.
        return 1 if self.keys <= item.keys() else 0

    def writes_on_change(self, *attributes: str) -> int:
        """Index entries (each under 1 KB: one write unit) written when `attributes` change."""
        changed = frozenset(attributes)
        if changed & self.keys:
            return 2  # the entry moves: a delete and a put
        if self.projected is None or changed & self.projected:
            return 1
        return 0

    def writes_on_update(self, old: dict[str, Any], new: dict[str, Any]) -> int:
        """Index entries written when an item's attributes go from `old` to `new`, by DynamoDB's
        rules: an entry that appears or goes is one write, one whose keys change a delete and a
        put, one whose projected attributes change one write, and an unchanged one none."""
        was, now = self.keys <= old.keys(), self.keys <= new.keys()
        if was != now:
            return 1
        if not was:
            return 0
        if any(old[key] != new[key] for key in self.keys):
            return 2
        projected = old.keys() | new.keys() if self.projected is None else self.projected
        return 1 if any(old.get(name) != new.get(name) for name in projected) else 0


def updated_attributes(attributes: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """An item's top-level attributes after `update` (an UpdateItem's parameters): its plain
    `name = :value` SETs and its REMOVEs (list_append and other functions are left out)."""
    names = update.get("ExpressionAttributeNames", {})
    values = update.get("ExpressionAttributeValues", {})
    sets, _, removes = update["UpdateExpression"].partition(" REMOVE ")
    result = dict(attributes)
    for name, value in re.findall(r"(#?\w+) = (:\w+)", sets):
        result[names.get(name, name)] = values[value]
    for name in filter(None, (n.strip() for n in removes.split(","))):
        result.pop(names.get(name, name), None)
    return result


ItemKey = tuple[str, str]  # (table, the item's key attributes as JSON)


def item_key(table: str, item: Mapping[str, Any]) -> ItemKey:
    """An item's identity for stored_sizes: its table and its key attributes (read from the
    table as the stack created it; an item's other attributes are left out)."""
    hash_key, range_key = _key_schema(table)
    key = {name: item[name] for name in (hash_key, range_key) if name}
    return table, json.dumps(key, sort_keys=True, default=repr)


def _key_schema(table: str) -> tuple[str, str | None]:
    table_model = _moto_table(table)
    return table_model.hash_key_attr, table_model.range_key_attr


def _moto_table(table: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return dynamodb_backends[DEFAULT_ACCOUNT_ID][region].get_table(table)


def _stored(sizes: Mapping[ItemKey, int] | None, table: str | None, item: Mapping[str, Any] | None) -> int:
    """What `sizes` (stored_sizes') says the item weighs; 0 when it was not measured."""
    if not sizes or table is None or item is None:
        return 0
    return sizes.get(item_key(table, item), 0)


def stored_sizes(keys: list[ItemKey]) -> dict[ItemKey, int]:
    """What each item weighs in the stack's moto now (0: none), by DynamoDB's rules (item_bytes):
    read from moto's tables directly, so no request is counted or billed."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    sizes = {}
    for table, key_json in keys:
        model = _moto_table(table)
        key = json.loads(key_json)
        range_key = DynamoType(key[model.range_key_attr]) if model.range_key_attr else None
        found = model.get_item(DynamoType(key[model.hash_key_attr]), range_key)
        sizes[(table, key_json)] = item_bytes(found.to_json()["Attributes"]) if found else 0
    return sizes


def orders_indexes() -> list[Index]:
    """The Orders table's GSIs as template.yaml declares them, so the estimate follows the template."""
    indexes = []
    for gsi in Template.load().properties("AWS::DynamoDB::Table")["OrdersTable"]["GlobalSecondaryIndexes"]:
        projection = gsi.get("Projection", {})
        kind = projection.get("ProjectionType", "KEYS_ONLY")
        included = frozenset(projection.get("NonKeyAttributes", [])) if kind == "INCLUDE" else frozenset()
        keys = frozenset(k["AttributeName"] for k in gsi["KeySchema"])
        indexes.append(Index(keys, None if kind == "ALL" else included, gsi["IndexName"]))
    return indexes


class DurationModel:
    """What each function's invocations would bill on Lambda: their CPU time here (in the invoking
    thread, less invocations nested inside them) without the CPU spent inside AWS calls (moto's
    work, which on AWS is the service's), stretched to the function's share of a CPU on Lambda
    (`lambda_cpu_seconds`), plus a network wait per AWS call (AWS_CALL_SECONDS).
    Wall time would count a loaded machine's waits, and the stack's lock, as run time. A worker
    thread's CPU and waits (the reports' partition readers) are not added: they run beside the
    invoking thread, so adding them would bill parallel time as if serial (their requests count)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._frames = threading.local()
        self._lock = threading.Lock()

    def _stack(self) -> list[list[float]]:
        return self._frames.__dict__.setdefault("stack", [])  # per frame: [nested or AWS seconds, waits]

    def install(self) -> None:
        original = LocalFunction.invoke
        model = self

        def invoke(function: LocalFunction, event: Any, *waits: float, **how: Any) -> Any:  # how: container=
            stack = model._stack()
            stack.append([0.0, 0.0])
            started = time.thread_time()
            try:
                return original(function, event, *waits, **how)
            finally:
                spent = time.thread_time() - started
                excluded, waits = stack.pop()
                if stack:
                    stack[-1][0] += spent
                with model._lock:
                    model.seconds[function.name] += lambda_cpu_seconds(spent - excluded, function.memory_mb) + waits

        LocalFunction.invoke = invoke  # type: ignore[method-assign]

    def aws_call(self, service: str, call: Callable[[], Any]) -> Any:
        stack = self._stack()
        if not stack:
            return call()
        started = time.thread_time()
        try:
            return call()
        finally:
            stack[-1][0] += time.thread_time() - started
            stack[-1][1] += AWS_CALL_SECONDS.get(service, AWS_CALL_SECONDS["default"])


class LogMeter(io.TextIOBase):
    """Stands in for stdout and stderr: counts what the functions write (what CloudWatch Logs would
    ingest), by log level, and passes everything through. A line written in pieces (print writes
    an EMF record, then its newline) is counted by its first piece's level."""

    def __init__(self, stream: Any, usage: Callable[[], Usage], lock: threading.Lock):
        self._stream = stream
        self._usage = usage
        self._lock = lock
        self._open = threading.local()  # the level of the line this thread has begun, until its end

    def write(self, text: str) -> int:
        if RUNNING.function is not None:
            for line in text.splitlines(keepends=True):
                level = getattr(self._open, "level", None) or _level(line)
                self._open.level = None if line.endswith(("\n", "\r")) else level
                with self._lock:
                    self._usage().log_bytes[level] += len(line.encode())
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


class _PerFunction(MutableMapping[str, Any]):
    """One of powertools' metric, dimension and metadata sets, which every Metrics instance in a
    process shares, kept apart for each local function (RUNNING): on Lambda each function has its
    own process, and the local stack runs them all in one, concurrently (one run of each at a time)."""

    def __init__(self) -> None:
        self._sets: defaultdict[str | None, dict[str, Any]] = defaultdict(dict)

    def _set(self) -> dict[str, Any]:
        return self._sets[RUNNING.function]

    def __getitem__(self, key: str) -> Any:
        return self._set()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._set()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._set()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())


def print_metrics_as_on_lambda() -> None:
    """Metrics on, so that each invocation that added metrics prints its EMF record as on Lambda
    (the local stack switches them off unless the environment says otherwise), each record holding
    only its own function's metrics. Called before any function's module makes its Metrics."""
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
    from aws_lambda_powertools import Metrics

    for name in ("_metrics", "_dimensions", "_metadata"):
        setattr(Metrics, name, _PerFunction())


def _level(line: str) -> str:
    if line.startswith('{"_aws"'):
        return "metrics"  # an EMF record: CloudWatch turns it into metrics, but it is ingested as a log
    try:
        return str(json.loads(line).get("level", "other"))
    except (ValueError, AttributeError):
        return "other"


class UsageRecorder:
    """Counts each AWS request made inside a local function and estimates the DynamoDB capacity
    units it uses from the sizes it sends. It wraps botocore's one entry point for API calls
    rather than registering a `before-call` handler, because moto resets boto3's default session
    when it starts and clients cached by warm containers would never see a handler added later."""

    def __init__(self, orders_table: str = "", durations: DurationModel | None = None):
        self.durations = durations or DurationModel()
        self.usage = Usage()
        self.features: defaultdict[str, Usage] = defaultdict(Usage)
        # The scheduled functions' usage, each apart (ScheduledRuns charges it by the clock).
        self.scheduled: defaultdict[str, Usage] = defaultdict(Usage)
        self.scheduled_functions = frozenset(schedule_periods())
        self.access_log_queue = ""
        self.orders_table = orders_table
        self.indexes = orders_indexes()
        self.tables: dict[str, str] = {}  # physical table name -> its name in the template
        self._order_bytes: dict[str, tuple[int, int]] = {}  # order id -> (item size, doc size)
        self._order_attributes: dict[str, dict[str, Any]] = {}  # order id -> its attributes but the history
        self._history_bytes: dict[str, int] = {}  # order id -> what its history attribute weighs
        self._lock = threading.Lock()

    def order_sizes(self) -> list[tuple[int, int]]:
        """(item bytes, doc bytes) of every order written, as last written."""
        return list(self._order_bytes.values())

    def install(self) -> None:
        original = BaseClient._make_api_call
        recorder = self

        def counted(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
            service = client.meta.service_model.service_name

            def call() -> Any:
                return recorder.durations.aws_call(service, lambda: original(client, operation_name, api_params))

            written = recorder.written_keys(service, operation_name, api_params)
            if not written:
                recorder.record(service, operation_name, api_params)
                return call()
            # Billed by the larger of each item's sizes before and after the write: both read from
            # the stack's moto, the write between them (no other request in between: MOTO_LOCK).
            with MOTO_LOCK:
                before = stored_sizes(written)
                try:
                    return call()
                finally:
                    after = stored_sizes(written)
                    sizes = {key: max(before[key], after[key]) for key in written}
                    recorder.record(service, operation_name, api_params, sizes)

        BaseClient._make_api_call = counted  # type: ignore[method-assign]
        # The reports' partition readers (worker threads a function starts) query as that function:
        # their requests were counted as no function's, so not at all.
        WORKER_THREADS.apply()

    def feature(self, function: str, operation: str, params: dict[str, Any]) -> str | None:
        """The optional feature a request is made for, None for the core. EventsFunction publishes
        (PutEvents: events) and queues webhook deliveries (the subscriptions read, the delivery
        records, the messages: webhooks) unless it is keeping counters or notifying."""
        if (tagged := getattr(_FEATURE, "name", None)) is not None:
            return tagged or None  # CORE: None
        if function == "EventsFunction":
            return "events" if operation == "events.PutEvents" else "webhooks"
        if function == "ApiFunction" and operation == "sqs.SendMessage":
            return "access log" if params.get("QueueUrl") == self.access_log_queue else None
        return FEATURE_FUNCTIONS.get(function)

    def running_usage(self) -> Usage:
        """The usage the running function's log lines are billed to."""
        if (scheduled := self.running_scheduled()) is not None:
            return scheduled
        feature = FEATURE_FUNCTIONS.get((RUNNING.function or "").split("-")[-1])
        return self.features[feature] if feature else self.usage

    def running_scheduled(self) -> Usage | None:
        """The running scheduled function's own usage (ScheduledRuns charges it); None for another."""
        function = (RUNNING.function or "").split("-")[-1]
        return self.scheduled[function] if function in self.scheduled_functions else None

    def written_keys(self, service: str, operation: str, params: dict[str, Any]) -> list[ItemKey]:
        """The items a write made inside a function puts, updates or deletes outside the Orders
        table (whose sizes _update follows from its writes): stock items, whose `reservations` map
        holds an entry per open order line, the network item, counters, records."""
        if service != "dynamodb" or RUNNING.function is None:
            return []
        if operation == "TransactWriteItems":
            entries = [written for entry in params["TransactItems"] for written in entry.values()]
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            entries = [params]
        elif operation == "BatchWriteItem":
            entries = _batch_writes(params)
        else:
            return []
        return [
            item_key(entry["TableName"], entry.get("Key") or entry["Item"])
            for entry in entries
            if entry["TableName"] != self.orders_table
        ]

    def record(
        self, service: str, operation_name: str, params: dict[str, Any], sizes: Mapping[ItemKey, int] | None = None
    ) -> None:
        """Counts one request (made inside a function); `sizes`: what each item a write changes
        outside the Orders table weighs (written_keys), the larger of before and after."""
        function = RUNNING.function
        if function is None:
            return  # the stack's own work (creating tables, polling streams) is not billed per order
        operation = f"{service}.{operation_name}"
        name = function.split("-")[-1]
        with self._lock:
            if name in self.scheduled_functions:
                usage = self.scheduled[name]
                usage.by_function[f"{name} {operation}"] += 1  # charged with the rest of its runs
            else:
                feature = self.feature(name, operation, params)
                usage = self.features[feature] if feature else self.usage
                self.usage.by_function[f"{name} {operation}"] += 1  # every request, for the table
            usage.calls[operation] += 1
            if service == "dynamodb":
                self._capacity(usage, operation_name, params, sizes or {})
            elif operation == "stepfunctions.StartExecution":
                usage.sfn_executions += 1
            elif operation == "events.PutEvents":
                usage.events_published += len(params.get("Entries", []))
            elif operation == "s3.PutObject":
                body = params.get("Body") or b""
                usage.s3_put_bytes += len(body.encode() if isinstance(body, str) else body)

    def _bill(self, usage: Usage, units: int, operation: str, table: str | None, part: str = "item") -> None:
        """`units` write units, attributed to the function, the request, the table and the part
        written (the item itself, or an index entry) for the run's table of writes."""
        function = (RUNNING.function or "").split("-")[-1]
        table_name = self.tables.get(table or "", table or "?")
        usage.wru += units
        usage.wru_by_write[f"{function} {operation} {table_name}: {part}"] += units

    def _put(
        self, usage: Usage, operation: str, params: dict[str, Any], factor: int = 1,
        sizes: Mapping[ItemKey, int] | None = None,
    ) -> None:  # fmt: skip
        table, item = params.get("TableName"), params["Item"]
        size = max(item_bytes(item), _stored(sizes, table, item))
        if table == self.orders_table:
            order_id = item["id"]["S"]
            self._order_bytes[order_id] = (size, attribute_bytes(item["doc"]))
            self._order_attributes[order_id] = {k: v for k, v in item.items() if k != "history"}
            self._history_bytes[order_id] = item_bytes({"history": item["history"]}) if "history" in item else 0
            for index in self.indexes:
                self._bill(usage, factor * index.writes_on_put(item), operation, table, f"index {index.name}")
        self._bill(usage, factor * wru_for(size), operation, table)

    def _update(
        self, usage: Usage, operation: str, params: dict[str, Any], factor: int = 1,
        sizes: Mapping[ItemKey, int] | None = None,
    ) -> None:  # fmt: skip
        table = params.get("TableName")
        values = params.get("ExpressionAttributeValues", {})
        if table != self.orders_table or ":doc" not in values:
            # A stock item grows by an entry per open order line at its location (~34 bytes each):
            # billed on what it weighs (sizes), one unit when not known.
            size = _stored(sizes, table, params.get("Key"))
            self._bill(usage, factor * wru_for(size), operation, table)
            return
        order_id = params["Key"]["id"]["S"]
        # A write is billed on the item's size after it: its attributes as the update leaves them
        # (the new doc, the SLA attributes set or removed) and the history grown by the new entries.
        old = self._order_attributes.get(order_id, {})
        new = self._order_attributes[order_id] = updated_attributes(old, params)
        entries = sum(1 + attribute_bytes(entry) for entry in values.get(":entries", {}).get("L", []))
        self._history_bytes[order_id] = self._history_bytes.get(order_id, 0) + entries
        size = item_bytes(new) + self._history_bytes[order_id]
        self._order_bytes[order_id] = (size, attribute_bytes(values[":doc"]))
        self._bill(usage, factor * wru_for(size), operation, table)
        # Each index entry the change adds, moves, rewrites or removes (the sparse status index
        # moves with the status until it is shipped, but not at the authorization: pending and
        # authorized share a partition; the late index changes only with a mark).
        for index in self.indexes:
            self._bill(usage, factor * index.writes_on_update(old, new), operation, table, f"index {index.name}")

    def _capacity(self, usage: Usage, operation: str, params: dict[str, Any], sizes: Mapping[ItemKey, int]) -> None:
        if operation == "PutItem":
            self._put(usage, operation, params, sizes=sizes)
        elif operation == "UpdateItem":
            self._update(usage, operation, params, sizes=sizes)
        elif operation == "DeleteItem":
            self._bill(usage, wru_for(_stored(sizes, params["TableName"], params["Key"])), operation,
                       params["TableName"])  # fmt: skip
        elif operation == "TransactWriteItems":
            # A transaction bills each of its writes twice.
            for entry in params["TransactItems"]:
                ((kind, written),) = entry.items()
                if kind == "Put":
                    self._put(usage, operation, written, factor=2, sizes=sizes)
                elif kind == "Update":
                    self._update(usage, operation, written, factor=2, sizes=sizes)
                else:  # a check or a delete
                    size = _stored(sizes, written.get("TableName"), written.get("Key"))
                    self._bill(usage, 2 * wru_for(size), operation, written.get("TableName"))
        elif operation == "BatchWriteItem":
            # Each write billed as its own PutItem or DeleteItem would be (the access log's reads).
            for written in _batch_writes(params):
                if "Item" in written:
                    self._put(usage, operation, written, sizes=sizes)
                else:
                    size = _stored(sizes, written["TableName"], written["Key"])
                    self._bill(usage, wru_for(size), operation, written["TableName"])
        elif operation in ("GetItem", "Query"):
            usage.rru += rru_for(2048, params.get("ConsistentRead", False))
        elif operation == "BatchGetItem":
            usage.rru += sum(
                rru_for(2048, spec.get("ConsistentRead", False)) * len(spec["Keys"])
                for spec in params["RequestItems"].values()
            )


def _batch_writes(params: dict[str, Any]) -> list[dict[str, Any]]:
    """A BatchWriteItem's writes, each as its PutItem's or DeleteItem's parameters."""
    return [
        {"TableName": table, **next(iter(request.values()))}
        for table, requests in params["RequestItems"].items()
        for request in requests
    ]


def _storefront_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with a fresh Idempotency-Key: an order is placed as a storefront that retries safely
    places it (the quick start's), which adds the idempotency record's writes and the created entry's
    request_key to what it costs."""
    return {**headers, "Idempotency-Key": str(uuid.uuid4())}


def _order_body() -> dict[str, Any]:
    return {
        "channel": "bench",
        "external_id": external_id(),
        "currency": "USD",
        "customer": {"id": "cus_bench", "email": "bench@example.com"},
        "lines": [{"sku": "TSHIRT-BLK-M", "quantity": 1}],
        "shipping_address": {"name": "Bench", "line1": "1 Market St", "city": "San Francisco", "region": "CA",
                             "postal_code": "94105", "country": "US"},
        "payment": {"method": "test", "token": "tok_approve"},
    }  # fmt: skip


def confirmation_summary(usage: Usage, count: int) -> dict[str, Any]:
    """What one way of confirming shipments makes an order cost: the requests it sends through
    API Gateway, the API function's and the authorizer's invocations, and the bill."""
    bill = {service: cost / count * 1_000_000 for service, cost in dollars(usage).items()}
    optional = {feature: cost / count * 1_000_000 for feature, cost in optional_dollars(usage).items()}
    return {
        "api_requests_per_order": usage.api_requests / count,
        "api_invocations_per_order": usage.lambda_invocations["ApiFunction"] / count,
        "authorizer_invocations_per_order": usage.lambda_invocations["AuthorizerFunction"] / count,
        "lambda_gb_seconds_per_order": usage.lambda_gb_seconds / count,
        "dollars_per_million_orders": bill,
        "total_per_million_orders": sum(bill.values()),
        "total_with_optional_per_million_orders": sum(bill.values()) + sum(optional.values()),
        "labels_in_s3_express_per_million_orders": labels_in_s3_express(usage) / count * 1_000_000,
    }


def as_billed(usage: Usage) -> Usage:
    """A copy of `usage` with what AWS adds to what the functions did: Lambda's START/END/REPORT
    lines for every invocation, and a trace for each API request (the authorizer and the API
    function are in it) and each stream-triggered outbox invocation (the executions it starts,
    with their tasks)."""
    billed = combined((usage, 1.0))
    billed.log_bytes["platform"] += sum(billed.lambda_invocations.values()) * LAMBDA_PLATFORM_LOG_BYTES
    billed.traces = billed.api_requests + billed.lambda_invocations["OutboxFunction"]
    return billed


def feature_dollars(usage: Usage, count: int) -> dict[str, float]:
    """A feature's bill per million (orders or reads), its services that cost something."""
    billed = as_billed(usage)
    bill = {**dollars(billed), **optional_dollars(billed)}
    return {service: cost / count * 1_000_000 for service, cost in bill.items() if cost}


def per_order_bill(core: Usage, features: Mapping[str, Usage], count: int) -> dict[str, Any]:
    """What the burst and the steady rate are compared by: each function's invocations per order
    (the core's and the per-order features'), and the bill per million orders without the optional
    features, what the INFO lines, Lambda's START/END/REPORT lines and X-Ray add, and what the per-order
    features add."""
    per_order = [features[feature] for feature in FEATURES if feature in features]
    invocations = sum((feature.lambda_invocations for feature in per_order), Counter(core.lambda_invocations))
    billed = as_billed(core)
    return {
        "lambda_invocations_per_order": {name: calls / count for name, calls in sorted(invocations.items())},
        "total_per_million_orders": sum(dollars(billed).values()) / count * 1_000_000,
        "optional_per_million_orders": sum(optional_dollars(billed).values()) / count * 1_000_000,
        "features_per_million_orders": sum(sum(feature_dollars(feature, count).values()) for feature in per_order),
    }


def bill_lambda(
    functions: Any,
    usage: Usage,
    features: defaultdict[str, Usage],
    cpu: DurationModel,
    cpu_before: Counter[str],
    invocations_before: dict[str, int],
) -> None:
    """Each function's invocations and modeled GB-seconds since the marks, to the core's usage or
    to its feature's; the scheduled functions' are ScheduledRuns'."""
    scheduled = set(schedule_periods())
    for f in functions:
        calls = f.invocations - invocations_before[f.name]
        if calls and (name := f.name.split("-")[-1]) not in scheduled:
            target = features[FEATURE_FUNCTIONS[name]] if name in FEATURE_FUNCTIONS else usage
            target.lambda_invocations[name] += calls
            target.lambda_gb_seconds += (cpu.seconds[f.name] - cpu_before[f.name]) * f.memory_mb / 1024


class Subscriber:
    """A webhook receiver on loopback that answers every delivery 204 at once, counting them."""

    def __init__(self) -> None:
        self.received = 0
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                subscriber.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/oms"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str]) -> None:
    if argv not in ([], ["steady"]):
        raise SystemExit("usage: python -m bench.workflow [steady]")
    steady = bool(argv)
    params = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    # The steady run's clock is compressed (see STEADY_TIME_SCALE): the batching windows and the
    # authorizer's cache by the same factor as the gap between orders.
    options = steady_stack_options(params) if steady else {"parameter_overrides": params}
    run_schedules_every(MEASURED_SCHEDULE_SECONDS)  # charged by the clock: ScheduledRuns
    # Installed before the stack starts, so every client the functions create carries the hook.
    cpu = DurationModel()
    cpu.install()
    recorder = UsageRecorder(durations=cpu)
    recorder.install()
    print_metrics_as_on_lambda()
    lock = threading.Lock()
    real_stdout = sys.stdout
    sys.stdout = LogMeter(sys.stdout, recorder.running_usage, lock)
    sys.stderr = LogMeter(sys.stderr, recorder.running_usage, lock)
    receiver = Subscriber()
    with running_stack(seed=True, **options) as stack:
        tag_events_function()
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        # One webhook subscription to every event, answered at once (what one subscriber costs).
        requests.post(f"{stack.api_url}/webhooks", json={"url": receiver.url, "events": ["*"]},
                      headers=headers, timeout=10).raise_for_status()  # fmt: skip
        # Stock for every order of the run, so none is cancelled out_of_stock.
        requests.put(f"{stack.api_url}/inventory/TSHIRT-BLK-M/wh-west", json={"on_hand": 100_000},
                     headers=headers, timeout=10).raise_for_status()  # fmt: skip
        warm = requests.post(
            f"{stack.api_url}/orders", json=_order_body(), headers=_storefront_headers(headers), timeout=10
        )
        warm.raise_for_status()
        schedules = ScheduledRuns(stack, recorder, cpu)
        stack.wait_until_idle(30)

        recorder.orders_table = stack.table_names["OrdersTable"]
        recorder.tables = {name: logical.removesuffix("Table") for logical, name in stack.table_names.items()}
        recorder.access_log_queue = stack.queue_urls["AccessLogQueue"]
        recorder.usage = Usage()  # what the warm-up did is not part of the run
        recorder.features.clear()
        functions = stack.functions.values()
        cpu_before = Counter(cpu.seconds)
        invocations_before = {f.name: f.invocations for f in functions}
        schedules.mark()

        placed: list[str] = []

        def place(session: requests.Session) -> None:
            response = session.post(
                f"{stack.api_url}/orders", json=_order_body(), headers=_storefront_headers(headers), timeout=30
            )
            response.raise_for_status()
            with lock:
                placed.append(response.json()["id"])

        started = time.perf_counter()
        (place_steadily if steady else place_in_a_burst)(place)
        stack.wait_until_idle(300)
        allocated_seconds = time.perf_counter() - started

        statuses: Counter[str] = Counter()
        dynamodb = stack.client("dynamodb")  # read directly: the benchmark's checks are no order's cost
        shipments: dict[str, list[str]] = {}
        for order_id in placed:
            item = dynamodb.get_item(TableName=recorder.orders_table, Key={"id": {"S": order_id}})["Item"]
            order = json.loads(order_codec.stored_json(item["doc"]))
            statuses[order["status"]] += 1
            shipments[order_id] = [shipment["id"] for shipment in order["shipments"]]

        placing, placing_features = recorder.usage, recorder.features
        bill_lambda(functions, placing, placing_features, cpu, cpu_before, invocations_before)
        workflow_seconds = sum(
            cpu.seconds[f.name] - cpu_before[f.name]
            for f in functions
            if any(step in f.name for step in ("AuthorizePayment", "ReserveStock", "CreateShipments"))
        )
        placing.sfn_gb_seconds = workflow_seconds * SFN_EXPRESS_BILLED_GB
        placing.api_requests = len(placed)  # one POST /orders each
        if steady:
            placing = combined((placing, 1.0), (schedules.charge(STEADY_ORDERS * STEADY_SECONDS_APART), 1.0))
            result = {
                "orders": len(placed),
                "statuses": dict(statuses),
                "seconds_apart_on_aws": STEADY_SECONDS_APART,
                "time_scale": STEADY_TIME_SCALE,
                "placing": per_order_bill(placing, placing_features, len(placed)),
                "scheduled_per_million_orders": schedules.per_million_orders(len(placed)),
            }
        else:
            # The scheduled runs while the orders arrived (charged once every phase has measured).
            result = fulfilled_and_read(stack, headers, recorder, cpu, placed, shipments, placing, placing_features,
                                        lambda: schedules.charge(allocated_seconds))  # fmt: skip
            result |= {
                "statuses": dict(statuses),
                "allocated_per_second": len(placed) / allocated_seconds,
                "clients": CLIENTS,
                "webhook_deliveries_per_order": receiver.received / len(placed),
                "scheduled_per_million_orders": schedules.per_million_orders(len(placed)),
                "schedules_measured_every_seconds": MEASURED_SCHEDULE_SECONDS,
            }
    receiver.close()
    sys.stdout = real_stdout
    print(json.dumps(result))


def place_in_a_burst(place: Callable[[requests.Session], None]) -> None:
    """ORDERS orders placed by CLIENTS clients, each as fast as it can."""

    def client(count: int) -> None:
        session = requests.Session()
        for _ in range(count):
            place(session)

    threads = [threading.Thread(target=client, args=(ORDERS // CLIENTS,)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def place_steadily(place: Callable[[requests.Session], None]) -> None:
    """STEADY_ORDERS orders, one every STEADY_SECONDS_APART seconds of AWS time (times the run's
    scale), each on its tick whatever the previous one took."""
    session, started = requests.Session(), time.monotonic()
    for tick in range(STEADY_ORDERS):
        time.sleep(max(0.0, started + tick * STEADY_SECONDS_APART * STEADY_TIME_SCALE - time.monotonic()))
        place(session)


def steady_stack_options(params: dict[str, Any]) -> dict[str, Any]:
    """running_stack's options with the template's times STEADY_TIME_SCALE: its batching windows
    and its authorizer's cache (the schedules are charged by the clock: ScheduledRuns)."""
    cache_seconds = Template.load().parameter("AuthorizerCacheSeconds") * STEADY_TIME_SCALE
    return {
        "batching_window_scale": STEADY_TIME_SCALE,
        "parameter_overrides": {**params, "AuthorizerCacheSeconds": round(cache_seconds, 9)},
    }


@cache
def schedule_periods() -> Mapping[str, float]:
    """Each scheduled function's seconds between runs on AWS: its template's Schedule (or
    ScheduleV2) rate, the shortest if it has more than one."""
    template = Template.load()
    periods: dict[str, float] = {}
    for logical_id, function in template.functions().items():
        for name, event in (function.get("Events") or {}).items():
            key = {"Schedule": "Schedule", "ScheduleV2": "ScheduleExpression"}.get(event["Type"])
            if key:
                where = f"{logical_id}.Events.{name}"
                period = schedule_period(template.resolve(event["Properties"][key]), where)
                periods[logical_id] = min(period, periods.get(logical_id, period))
    return MappingProxyType(periods)


def run_schedules_every(seconds: float) -> None:
    """The local stack's period for every schedule (each function's own variable too, which wins)."""
    for variable in (SCHEDULE_PERIOD_ENV, *(own for own, _ in LOCAL_SCHEDULE_PERIODS.values())):
        os.environ[variable] = repr(seconds)


def scheduled_charge(measured: Mapping[str, tuple[Usage, int]], seconds: float) -> Usage:
    """What the scheduled functions cost over `seconds` on AWS: each one's measured usage (of `runs`
    runs) times the runs its template period gives in that time per run measured."""
    periods = schedule_periods()
    parts = []
    for name, (usage, runs) in measured.items():
        if runs < 1:
            raise ValueError(f"{name}: no scheduled run was measured")
        parts.append((usage, seconds / periods[name] / runs))
    return combined(*parts)


class ScheduledRuns:
    """The scheduled functions' runs from mark() on, measured apart from the phases' (the recorder
    keeps their requests, read and write units and log lines apart; this, their invocations and
    Lambda time), and charged by the clock (see MEASURED_SCHEDULE_SECONDS)."""

    def __init__(self, stack: Any, recorder: UsageRecorder, cpu: DurationModel):
        self._stack, self._recorder, self._cpu = stack, recorder, cpu
        self._mappings = [
            mapping for mapping in stack.mappings.values() if mapping.function_logical_id in schedule_periods()
        ]
        self._functions = list({mapping.function.name: mapping.function for mapping in self._mappings}.values())
        for mapping in self._mappings:  # no run in flight at the mark: its start would be left out
            mapping.pause()
        self._runs_before: dict[str, int] = {}
        self._cpu_before: dict[str, float] = {}
        self.charged: dict[str, Usage] = {}  # each function's charge, once charge() has run

    def mark(self) -> None:
        """Measures from now on (the stack idle, the schedules paused since the constructor)."""
        self._recorder.scheduled.clear()
        self._runs_before = {f.name: f.invocations for f in self._functions}
        self._cpu_before = {f.name: self._cpu.seconds[f.name] for f in self._functions}
        for mapping in self._mappings:
            mapping.resume()

    def charge(self, seconds: float) -> Usage:
        """Once each scheduled function has run since the mark (the schedules then paused and the
        stack idle, so every run counted is whole): their cost over `seconds` on AWS."""
        deadline = time.monotonic() + 2 * MEASURED_SCHEDULE_SECONDS + 30
        while any(f.invocations == self._runs_before[f.name] for f in self._functions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"a scheduled function did not run every {MEASURED_SCHEDULE_SECONDS} s")
            time.sleep(0.1)
        for mapping in self._mappings:
            mapping.pause()
        self._stack.wait_until_idle(60)
        for f in self._functions:
            name = f.name.split("-")[-1]
            usage = combined((self._recorder.scheduled[name], 1.0))
            runs = f.invocations - self._runs_before[f.name]
            usage.lambda_invocations[name] += runs
            usage.lambda_gb_seconds += (self._cpu.seconds[f.name] - self._cpu_before[f.name]) * f.memory_mb / 1024
            self.charged[name] = scheduled_charge({name: (usage, runs)}, seconds)
        return combined(*((usage, 1.0) for usage in self.charged.values()))

    def per_million_orders(self, count: int) -> dict[str, float]:
        """Each scheduled function's charge in dollars per million of the run's `count` orders."""
        return {name: sum(dollars(as_billed(usage)).values()) / count * 1e6 for name, usage in self.charged.items()}


def fulfilled_and_read(
    stack: Any,
    headers: dict[str, str],
    recorder: UsageRecorder,
    cpu: DurationModel,
    placed: list[str],
    shipments: dict[str, list[str]],
    placing: Usage,
    placing_features: defaultdict[str, Usage],
    scheduled: Callable[[], Usage],
) -> dict[str, Any]:
    """The burst run's orders shipped and delivered both ways, then each read once; the run's
    figures, from capture to delivery, and the placing's, each with the `scheduled` runs' charge
    (part of the placing's, asked for once every phase has run)."""
    functions = stack.functions.values()
    session = requests.Session()
    # Shipping and delivering, measured both ways, each on half of the orders: the first half
    # with a request per shipment and action (the single routes), the second half as a
    # warehouse system would confirm them, in batches of CONFIRMATION_BATCH.
    half = len(placed) // 2
    singly = [(o, s) for o in placed[:half] for s in shipments[o]]
    together = [(o, s) for o in placed[half:] for s in shipments[o]]

    def one_by_one() -> int:
        for order_id, shipment_id in singly:
            base = f"{stack.api_url}/orders/{order_id}/shipments/{shipment_id}"
            session.post(f"{base}/ship", headers=headers, timeout=30).raise_for_status()
            session.post(f"{base}/deliver", headers=headers, timeout=30).raise_for_status()
        return 2 * len(singly)

    def in_batches() -> int:
        sent = 0
        for action in ("ship", "deliver"):
            for start in range(0, len(together), CONFIRMATION_BATCH):
                items = [{"order_id": o, "shipment_id": s, "action": action}
                         for o, s in together[start : start + CONFIRMATION_BATCH]]  # fmt: skip
                for _ in range(10):  # as a warehouse system does: what may succeed again is sent again
                    if not items:
                        break
                    response = session.post(f"{stack.api_url}/shipments/confirmations", json={"items": items},
                                            headers=headers, timeout=60)  # fmt: skip
                    response.raise_for_status()
                    sent += 1
                    results = response.json()["items"]
                    refused = [result for result in results if result["error"] and not result["retry"]]
                    assert not refused, refused
                    items = [item for item, result in zip(items, results, strict=True) if result["retry"]]
                assert not items, f"still refused after 10 sends: {items}"
        return sent

    def fulfilled(confirm: Callable[[], int]) -> tuple[Usage, defaultdict[str, Usage]]:
        recorder.usage, recorder.features = Usage(), defaultdict(Usage)
        before, calls_before = Counter(cpu.seconds), {f.name: f.invocations for f in functions}
        sent = confirm()
        stack.wait_until_idle(60)
        usage, features = recorder.usage, recorder.features
        bill_lambda(functions, usage, features, cpu, before, calls_before)
        usage.api_requests = sent
        return usage, features

    singly_usage, _ = fulfilled(one_by_one)  # the optional features: as for the batched half
    batched_usage, batched_features = fulfilled(in_batches)
    count = len(placed)
    # The access log is paid per read: one GET /orders/{id} per order, counting only what
    # recording it costs (the API's SendMessage, the access-log function and its BatchWriteItem).
    recorder.usage, recorder.features = Usage(), defaultdict(Usage)
    cpu_before = Counter(cpu.seconds)
    invocations_before = {f.name: f.invocations for f in functions}
    for order_id in placed:
        session.get(f"{stack.api_url}/orders/{order_id}", headers=headers, timeout=30).raise_for_status()
    stack.wait_until_idle(60)
    reads = recorder.features
    bill_lambda(functions, Usage(), reads, cpu, cpu_before, invocations_before)
    placing = combined((placing, 1.0), (scheduled(), 1.0))
    # Every order placed, then shipped and delivered the way its half was, scaled to the run
    # by the orders each half shipped (an order the workflow did not allocate ships nothing).
    shipped_singly = len({order_id for order_id, _ in singly})
    shipped_together = len({order_id for order_id, _ in together})
    assert shipped_singly and shipped_together, "no order of a half was allocated"
    per_shipment = combined((placing, 1.0), (singly_usage, count / shipped_singly))
    usage = combined((placing, 1.0), (batched_usage, count / shipped_together))
    features: defaultdict[str, Usage] = defaultdict(Usage)
    for feature in {*placing_features, *batched_features}:
        features[feature] = combined(
            (placing_features[feature], 1.0), (batched_features[feature], count / shipped_together)
        )
    billed, per_shipment = as_billed(usage), as_billed(per_shipment)

    bill = dollars(billed)
    per_million = {service: cost / count * 1_000_000 for service, cost in bill.items()}
    features_per_million = {feature: feature_dollars(features[feature], count) for feature in FEATURES}
    optional_per_million = {feature: cost / count * 1_000_000 for feature, cost in optional_dollars(billed).items()}

    def per_order(counts: Counter[str]) -> dict[str, float]:
        return {key: value / count for key, value in sorted(counts.items())}

    return {
        "orders": count,
        "requests_per_order": per_order(usage.calls),
        "requests_per_order_by_function": per_order(usage.by_function),
        "lambda_invocations_per_order": per_order(usage.lambda_invocations),
        "lambda_gb_seconds_per_order": usage.lambda_gb_seconds / len(placed),
        "wru_per_order": usage.wru / len(placed),
        "wru_per_order_by_write": per_order(+usage.wru_by_write),  # unary plus: no zeros
        "rru_per_order": usage.rru / len(placed),
        "api_requests_per_order": usage.api_requests / len(placed),
        "dollars_per_million_orders": per_million,
        "total_per_million_orders": sum(per_million.values()),
        "optional_dollars_per_million_orders": optional_per_million,
        "features_per_million_orders": features_per_million,
        "access_log_per_million_reads": feature_dollars(reads["access log"], count),
        "log_bytes_per_order": per_order(billed.log_bytes),  # with Lambda's platform lines (as_billed)
        "traces_per_order": billed.traces / count,
        "order_item_bytes_at_delivery": statistics.median(size for size, _ in recorder.order_sizes()),
        "confirmation_batch": CONFIRMATION_BATCH,
        "confirmations": {
            "per shipment": confirmation_summary(per_shipment, count),
            "batched": confirmation_summary(billed, count),
        },
        "bill": per_order_bill(usage, features, count),
        "placing": per_order_bill(placing, placing_features, count),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
