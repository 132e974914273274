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


def test_the_orders_table_by_its_template_name_holds_the_order_the_api_placed_read_by_get_item_and_a_scan(
    stack: EmbeddedStack, dynamodb: Any, placed: dict
):
    """The stack's own AWS endpoint (a free port, not LocalStack's 4566) lists the Orders table by
    the name the template gives it, and plain boto3 reads the order the API placed there, by its
    key and in a scan."""
    name = stack.table_names["OrdersTable"]
    assert name in dynamodb.list_tables()["TableNames"]
    assert stack.aws_endpoint.startswith("http://127.0.0.1:")
    assert not stack.aws_endpoint.endswith(":4566")

    response = dynamodb.get_item(TableName=name, Key={"id": {"S": placed["id"]}})
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

    paginator = dynamodb.get_paginator("scan")
    ids = [
        row["id"]["S"]
        for page in paginator.paginate(TableName=name, ProjectionExpression="id")
        for row in page["Items"]
    ]
    assert placed["id"] in ids
