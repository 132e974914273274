"""AWS list prices (us-east-1, on-demand) and the cost model `make bench` applies to counted requests.

Every price is in one place, with its unit. Checked against the public pricing pages as of
2025; update them here only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

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
    # S3 Standard: PUT/COPY/POST/LIST per request, GET per request.
    "s3_put": 0.005 / 1_000,
    "s3_get": 0.0004 / 1_000,
    # SQS standard: per request (64 KB chunks).
    "sqs_request": 0.40 / 1_000_000,
}

SFN_EXPRESS_BILLED_GB = 64 / 1024  # the smallest memory step Express executions are billed in


@dataclass
class Usage:
    """Requests one run made, per service and operation, and the capacity units they used."""

    calls: Counter[str] = field(default_factory=Counter)  # "dynamodb.PutItem" -> count
    by_function: Counter[str] = field(default_factory=Counter)  # "ApiFunction dynamodb.PutItem" -> count
    wru: float = 0.0
    rru: float = 0.0
    lambda_invocations: Counter[str] = field(default_factory=Counter)
    lambda_gb_seconds: float = 0.0
    sfn_executions: int = 0
    sfn_gb_seconds: float = 0.0
    api_requests: int = 0


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
    }
