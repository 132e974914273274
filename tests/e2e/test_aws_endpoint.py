"""The emulated AWS endpoint: DynamoDB as the API left it, seen through plain boto3."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer

from functions.adapters import order_codec
from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, order_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dynamodb(stack: EmbeddedStack) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def placed(api: Api, catalog: Catalog) -> dict:
    (sku,) = catalog.stocked("11.11")
    response = api.post("/orders", json=order_body((sku, 2), promo_codes=["WELCOME10"]))
    assert response.status_code == 201, response.text
    return response.json()


def plain(item: dict) -> dict:
    deserializer = TypeDeserializer()
    values = {name: deserializer.deserialize(value) for name, value in item.items()}

    # The adapter stores the order's document and history entries compressed in binaries (fewer
    # write units).
    def readable(value: Any) -> Any:
        if isinstance(value, Binary):
            return order_codec.decompress(value.value).decode()
        return [readable(v) for v in value] if isinstance(value, list) else value

    return {name: readable(v) for name, v in values.items()}


def test_the_stack_exposes_the_orders_table_by_its_template_name(stack: EmbeddedStack, dynamodb: Any):
    name = stack.table_names["OrdersTable"]

    assert name in dynamodb.list_tables()["TableNames"]
    assert stack.aws_endpoint.startswith("http://127.0.0.1:")
    assert not stack.aws_endpoint.endswith(":4566")


def test_get_item_on_the_orders_table_sees_the_order_the_api_placed(stack: EmbeddedStack, dynamodb: Any, placed: dict):
    response = dynamodb.get_item(TableName=stack.table_names["OrdersTable"], Key={"id": {"S": placed["id"]}})

    assert "Item" in response
    item = plain(response["Item"])
    # The key and the attributes the template's GSIs are built on are part of the table's design;
    # how the rest of the order is laid out is the adapter's business, so it is only searched.
    assert item["id"] == placed["id"]
    assert (item["status"], item["channel"], item["customer_id"]) == (
        "pending",
        placed["channel"],
        placed["customer"]["id"],
    )
    assert item["created_at"].startswith(placed["created_at"][:19])
    stored = json.dumps(item, default=str)
    for value in (placed["external_id"], placed["lines"][0]["sku"], placed["totals"]["grand_total"]["amount"]):
        assert value in stored


def test_a_scan_of_the_orders_table_finds_the_order(stack: EmbeddedStack, dynamodb: Any, placed: dict):
    paginator = dynamodb.get_paginator("scan")
    ids = [
        item["id"]["S"]
        for page in paginator.paginate(TableName=stack.table_names["OrdersTable"], ProjectionExpression="id")
        for item in page["Items"]
    ]

    assert placed["id"] in ids
