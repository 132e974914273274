"""AWS list prices (us-east-1, on-demand) and the cost model `make bench` applies to counted requests.

Every price is in one place, with its unit. Checked against the public pricing pages as of
2025; update them here only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PRICES = {
    # API Gateway REST API: per million requests (first 333 million a month).
    "apigateway_rest_request": 3.50 / 1_000_000,
    # Lambda: per request, and per GB-second on arm64 (Graviton).
    "lambda_request": 0.20 / 1_000_000,
    "lambda_gb_second_arm64": 0.0000133334,
    # Step Functions Express: per execution request, and per GB-second (billed in 64 MB steps).
    "sfn_express_request": 1.00 / 1_000_000,
    "sfn_express_gb_second": 0.00001667,
    # DynamoDB on-demand: per write request unit (1 KB) and read request unit (4 KB, strongly
    # consistent; an eventually consistent read is half a unit).
    "dynamodb_wru": 0.625 / 1_000_000,
    "dynamodb_rru": 0.125 / 1_000_000,
    # S3 Standard: PUT/COPY/POST/LIST per request, GET per request; per GB-month stored.
    "s3_put": 0.005 / 1_000,
    "s3_get": 0.0004 / 1_000,
    "s3_gb_month": 0.023,
    # S3 Express One Zone (a directory bucket: labels with LabelsZoneId set), the figures of the AWS
    # S3 FAQ's worked example for us-east-1 (aws.amazon.com/s3/faqs, "S3 Express One Zone"): per
    # PUT and per GET request, per GB uploaded and per GB retrieved, per GB-month stored.
    "s3_express_put": 0.00113 / 1_000,
    "s3_express_get": 0.00003 / 1_000,
    "s3_express_upload_gb": 0.0032,
    "s3_express_retrieval_gb": 0.0006,
    "s3_express_gb_month": 0.11,
    # SQS standard: per request (64 KB chunks).
    "sqs_request": 0.40 / 1_000_000,
    # EventBridge: per custom event published (each 64 KB chunk of an entry is one event).
    "eventbridge_event": 1.00 / 1_000_000,
    # CloudWatch Logs: per GB ingested (standard class; storage, $0.03/GB-month, is left out).
    "logs_ingest_gb": 0.50,
    # X-Ray: per trace recorded (traces retrieved or scanned by someone looking are left out).
    "xray_trace_recorded": 5.00 / 1_000_000,
}

# How long a function waits for an AWS call it makes from Lambda (same region), billed as its
# duration: DynamoDB answers single-item requests in single-digit milliseconds; S3 PUTs and Step
# Functions starts take longer. Assumptions, not measurements: moto answers in-process here.
AWS_CALL_SECONDS = {"dynamodb": 0.005, "s3": 0.020, "stepfunctions": 0.020, "default": 0.010}

# Lambda gives a function CPU in proportion to its memory: one vCPU's worth at 1,769 MB (Lambda
# Developer Guide, "Configuring Lambda function memory"), that share of one below it. A handler runs
# on one thread, so a second of one CPU here takes 1769 / MemorySize seconds on a smaller function,
# billed at its memory (Graviton's cores are taken to be as fast as this machine's: not measured).
LAMBDA_ONE_VCPU_MB = 1769


def lambda_cpu_seconds(cpu_seconds: float, memory_mb: int) -> float:
    """What `cpu_seconds` of one CPU here take on a function of `memory_mb`."""
    return cpu_seconds * max(1.0, LAMBDA_ONE_VCPU_MB / memory_mb)


# Lambda writes START, END and REPORT lines for every invocation (plus an XRAY TraceId line when
# tracing is active): about 400 bytes in the text format, whatever the function logs itself. That is
# the template's PlatformLogLevel INFO (the default); at WARN Lambda writes a line only for an
# invocation that failed, timed out or ran out of memory (platform.runtimeDone, JSON), none of the
# bench's, so those lines are priced as an optional feature, as the INFO lines are.
LAMBDA_PLATFORM_LOG_BYTES = 400
# X-Ray's default sampling rule: the first request each second, then 5 % of the rest. At a steady
# volume of orders the 5 % dominates; the reservoir adds at most one trace a second (about 2.6
# million traces, $13, a month) whatever the volume, a fixed cost left out of the per-order figure.
XRAY_SAMPLED_SHARE = 0.05

SFN_EXPRESS_BILLED_GB = 64 / 1024  # the smallest memory step Express executions are billed in

# A label is kept 90 days (LabelsBucket's and LabelsExpressBucket's lifecycle), in months of storage.
LABEL_KEPT_MONTHS = 90 / (365 / 12)


@dataclass
class Usage:
    """Requests one run made, per service and operation, and the capacity units they used."""

    calls: Counter[str] = field(default_factory=Counter)  # "dynamodb.PutItem" -> count
    by_function: Counter[str] = field(default_factory=Counter)  # "ApiFunction dynamodb.PutItem" -> count
    wru: float = 0.0
    # "ApiFunction PutItem Orders: item" or "... Orders: index by_status_key" -> write units
    wru_by_write: Counter[str] = field(default_factory=Counter)
    rru: float = 0.0
    lambda_invocations: Counter[str] = field(default_factory=Counter)
    lambda_gb_seconds: float = 0.0
    sfn_executions: int = 0
    sfn_gb_seconds: float = 0.0
    api_requests: int = 0
    log_bytes: Counter[str] = field(default_factory=Counter)  # level ("INFO", "metrics", "platform") -> bytes
    traces: int = 0  # requests that start a trace: API calls and stream-triggered invocations
    events_published: int = 0  # PutEvents entries (64 KB chunks)
    s3_put_bytes: int = 0  # the bodies of s3.PutObject requests (the functions put labels only)


def combined(*parts: tuple[Usage, float]) -> Usage:
    """The sum of usages, each times its factor: a phase measured on part of a run's orders,
    scaled to all of them, added to the phases every order went through."""
    total = Usage()
    for usage, factor in parts:
        for name, value in vars(usage).items():
            if isinstance(value, Counter):
                getattr(total, name).update({key: count * factor for key, count in value.items()})
            else:
                setattr(total, name, getattr(total, name) + value * factor)
    return total


def attribute_bytes(value: dict[str, Any]) -> int:
    """DynamoDB's size of one attribute value (low-level form), by its documented rules: strings
    and binaries by length, numbers by digits, lists and maps by their elements plus 3 bytes each."""
    ((kind, inner),) = value.items()
    if kind in ("S", "B"):
        return len(inner.encode()) if isinstance(inner, str) else len(inner)
    if kind == "N":
        return 1 + math.ceil(len(inner.lstrip("-").replace(".", "")) / 2)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "BS"):
        return sum(len(v.encode()) if isinstance(v, str) else len(v) for v in inner)
    if kind == "NS":
        return sum(attribute_bytes({"N": v}) for v in inner)
    if kind == "L":
        return 3 + sum(1 + attribute_bytes(v) for v in inner)
    return 3 + sum(1 + len(k.encode()) + attribute_bytes(v) for k, v in inner.items())  # "M"


def item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB bills it: attribute names plus values."""
    return sum(len(name.encode()) + attribute_bytes(value) for name, value in item.items())


def wru_for(item_bytes: int) -> int:
    return max(1, math.ceil(item_bytes / 1024))


def rru_for(item_bytes: int, consistent: bool = False) -> float:
    units = max(1, math.ceil(item_bytes / 4096))
    return units if consistent else units / 2


def dollars(usage: Usage) -> dict[str, float]:
    """The bill of one run, per service."""
    p = PRICES
    return {
        "API Gateway": usage.api_requests * p["apigateway_rest_request"],
        "Lambda": sum(usage.lambda_invocations.values()) * p["lambda_request"]
        + usage.lambda_gb_seconds * p["lambda_gb_second_arm64"],
        "Step Functions": usage.sfn_executions * p["sfn_express_request"]
        + usage.sfn_gb_seconds * p["sfn_express_gb_second"],
        "DynamoDB": usage.wru * p["dynamodb_wru"] + usage.rru * p["dynamodb_rru"],
        "S3": usage.calls["s3.PutObject"] * p["s3_put"] + usage.calls["s3.GetObject"] * p["s3_get"],
        "SQS": sum(v for k, v in usage.calls.items() if k.startswith("sqs.")) * p["sqs_request"],
        "EventBridge": usage.events_published * p["eventbridge_event"],
        "CloudWatch Logs (metrics, warnings and errors)": sum(
            v for level, v in usage.log_bytes.items() if level not in ("INFO", "DEBUG", "platform")
        )
        / 1e9
        * p["logs_ingest_gb"],
    }


def optional_dollars(usage: Usage) -> dict[str, float]:
    """What the optional features add to the bill of one run: each can be turned off."""
    p = PRICES

    def ingested(level: str) -> float:
        return usage.log_bytes[level] / 1e9 * p["logs_ingest_gb"]

    return {
        "CloudWatch Logs: INFO lines (LogLevel INFO, the default)": ingested("INFO"),
        "CloudWatch Logs: Lambda's START/END/REPORT lines (PlatformLogLevel INFO, the default)": ingested("platform"),
        "X-Ray: traces at 5 % sampling (Tracing: Active)": usage.traces * XRAY_SAMPLED_SHARE * p["xray_trace_recorded"],
    }


def labels_in_s3_express(usage: Usage) -> float:
    """What the labels a run put (its s3.PutObject requests) add to dollars() when kept in S3
    Express One Zone (LabelsZoneId set) instead of S3 Standard: its PUTs, the bytes uploaded and
    their storage for the 90 days a label is kept, less S3 Standard's PUTs and storage (dollars()
    leaves storage out; both are counted here, so that the difference is whole). Negative: cheaper.
    Printing a label (a GET through its link) is left out, as in dollars(): the bench makes none.
    A print costs $0.40 per million in S3 Standard, $0.03 in S3 Express (with $0.0006 per GB
    retrieved: about $0.001 per million 1.7 KB labels)."""
    p = PRICES
    puts, stored_gb = usage.calls["s3.PutObject"], usage.s3_put_bytes / 1e9
    express = (
        puts * p["s3_express_put"]
        + stored_gb * p["s3_express_upload_gb"]
        + stored_gb * LABEL_KEPT_MONTHS * p["s3_express_gb_month"]
    )
    standard = puts * p["s3_put"] + stored_gb * LABEL_KEPT_MONTHS * p["s3_gb_month"]
    return express - standard
