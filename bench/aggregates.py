"""What the customer and report aggregates cost per order: an order's stream changes replayed
through the events handler's aggregate code against moto, counting DynamoDB writes.

`python -m bench.aggregates` prints a Markdown table: write units per order for the usual life
of an order (placed, authorized, allocated, shipped, delivered), one cancelled after allocation,
and one with a unit returned and refunded, and what they cost per million orders.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from typing import Any

import boto3
from moto import mock_aws

from bench.cost import PRICES
from core.aggregates import aggregate_change
from functions.adapters.aggregates import DynamoAggregates
from infra.local.template import Template, create_table_request


def _line(line_id: str, sku: str, quantity: int, price: str) -> dict[str, Any]:
    usd = lambda amount: {"amount": amount, "currency": "USD"}  # noqa: E731
    return {"line_id": line_id, "sku": sku, "quantity": quantity, "unit_price": usd(price), "discount": usd("0.00")}


def _order(n: int) -> dict[str, Any]:
    """A two-line order of a returning customer (every fifth order is a new customer's)."""
    return {
        "id": f"ord_{n}",
        "status": "pending",
        "channel": "web",
        "currency": "USD",
        "customer": {"id": f"cus_{n // 5}", "email": f"c{n // 5}@example.com", "name": "C"},
        "lines": [_line("L1", f"SKU{n % 40}", 2, "10.00"), _line("L2", f"SKU{n % 7}", 1, "5.00")],
        "shipping_address": {"country": "US", "region": "CA"},
        "totals": {"grand_total": {"amount": "25.00", "currency": "USD"}},
        "payment": {"refunded": {"amount": "0.00", "currency": "USD"}},
        "created_at": f"2026-12-01T10:{n % 60:02d}:00Z",
        "version": 1,
    }


def _lives(order: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    def then(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return {**copy.deepcopy(doc), "version": doc["version"] + 1, **changes}

    authorized = then(order, status="authorized")
    allocated = then(authorized, status="allocated")
    shipped = then(allocated, status="shipped")
    delivered = then(shipped, status="delivered")
    lines = copy.deepcopy(delivered["lines"])
    lines[0]["returned_quantity"] = 1
    returned = then(
        delivered, status="partially_returned", lines=lines, received_returns=["rma_1"],
        payment={"refunded": {"amount": "10.00", "currency": "USD"}},
    )  # fmt: skip
    return {
        "delivered": [order, authorized, allocated, shipped, delivered],
        "cancelled after allocation": [order, authorized, allocated, then(allocated, status="cancelled")],
        "delivered, one unit returned and refunded": [order, authorized, allocated, shipped, delivered, returned],
    }


class _Meter:
    """Write units as DynamoDB bills them for these small items (each under 1 KB): one per
    PutItem or UpdateItem (a conditional write that fails its condition is billed too), two per
    item of a transaction."""

    def __init__(self) -> None:
        self.wru = 0
        self.calls: Counter[str] = Counter()

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] += 1
        if model.name == "TransactWriteItems":
            self.wru += 2 * len(params["TransactItems"])
        elif model.name in ("PutItem", "UpdateItem"):
            self.wru += 1


def measure(orders: int = 100) -> dict[str, dict[str, float]]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results = {}
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        request = create_table_request(
            Template.load().properties("AWS::DynamoDB::Table")["CatalogTable"], "bench-catalog"
        )
        # Write units do not depend on the stream, and moto deep-copies every table (its stream
        # records included) for each transaction, which made this run quadratic in the orders.
        request.pop("StreamSpecification", None)
        client.create_table(**request)
        for life, name in enumerate(_lives(_order(0))):
            meter = _Meter()
            client.meta.events.register("provide-client-params.dynamodb", meter)
            store = DynamoAggregates(client, "bench-catalog")
            for n in range(orders):
                # Each row its own orders and customers: "delivered" and "delivered, one unit
                # returned" shared both (named by the rows' first four letters), so the second
                # found the first's markers, and every row's orders came after the earlier rows'
                # orders of the same customers at the same times, each an older order arriving late.
                order = _order(n)
                customer = {
                    **order["customer"],
                    "id": f"cus_{life}_{n // 5}",
                    "email": f"c{life}_{n // 5}@example.com",
                }
                versions = _lives({**order, "id": f"ord_{life}_{n}", "customer": customer})[name]
                previous = None
                for doc in versions:
                    change = aggregate_change(previous, doc)
                    if not change.empty:
                        store.apply(change)
                    previous = doc
            client.meta.events.unregister("provide-client-params.dynamodb", meter)
            wru = meter.wru / orders
            results[name] = {"wru_per_order": wru, "dollars_per_million_orders": wru * PRICES["dynamodb_wru"] * 1e6}
    return results


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "",
        "## What the customer and report aggregates cost",
        "",
        "(`python -m bench.aggregates`, run by `make bench`.) Each order's stream changes replayed through",
        "`EventsFunction`'s aggregate code against moto: 100 two-line orders per row, one customer in five new;",
        "write units counted per request (one per put or update, a failed conditional write included, two",
        "per item of a transaction), at on-demand prices. Reads (`GET /customers`, `/reports/*`) are not",
        "per order and are left out.",
        "",
        "| an order's life | DynamoDB write units per order | $ per million orders |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {run['wru_per_order']:.1f} | {run['dollars_per_million_orders']:.2f} |"
        for name, run in results.items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
