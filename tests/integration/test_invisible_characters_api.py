"""Invisible characters and Unicode line separators through the in-process API: every body that
sends one in text people read is 422 naming the field, and an order or a product stored with one
before they were refused still reads, is shown with each as U+FFFD, and can still be changed."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest

from tests.e2e.client import Catalog, address, assert_error, document_attribute, order_body, stored_document
from tests.integration.in_process import InProcessApi

INVISIBLE = ["\u2028", "\u2029", "\u200b", "\u2060", "\ufeff"]
AN_ORDER = "/orders/ord_aaaaaaaaaaaaaaaaaaaaaaaa"
LOCATION = {
    "name": "East",
    "type": "warehouse",
    "address": address(name="East", city="Newark", postal_code="07102"),
    "latitude": 40.7,
    "longitude": -74.2,
}

# (method, path, a valid body, the field given the character): bodies people's text comes in by.
REQUESTS = [
    ("POST", "/orders", order_body(("MUG", 1)), "customer.name"),
    ("POST", "/orders", order_body(("MUG", 1)), "customer.email"),
    ("POST", "/orders", order_body(("MUG", 1)), "shipping_address.line1"),
    ("PUT", "/products/MUG", {"name": "Mug", "price": {"amount": "1.00", "currency": "USD"}}, "name"),
    (
        "PUT",
        "/products/MUG",
        {"name": "Mug", "price": {"amount": "1.00", "currency": "USD"}, "attributes": {"colour": "red"}},
        "attributes.colour",
    ),
    ("PUT", "/locations/east", LOCATION, "name"),
    ("PUT", "/locations/east", LOCATION, "address.city"),
    ("PUT", "/vendors/acme", {"name": "Acme", "lead_time_days": 3}, "name"),
    ("POST", "/api-keys", {"name": "ops", "scopes": ["orders:read"]}, "name"),
    ("POST", "/inventory/MUG/east/adjustments", {"delta": 1, "reason": "count"}, "reason"),
    ("POST", f"{AN_ORDER}/hold", {"reason": "other", "note": "called"}, "note"),
    ("POST", f"{AN_ORDER}/cancel", {"reason": "changed my mind"}, "reason"),
]


def _with(body: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    sent = copy.deepcopy(body)
    *parents, last = field.split(".")
    node = sent
    for part in parents:
        node = node[part]
    node[last] = value
    return sent


@pytest.mark.parametrize(("method", "path", "body", "field"), REQUESTS, ids=[f"{r[1]} {r[3]}" for r in REQUESTS])
@pytest.mark.parametrize("char", INVISIBLE)
def test_a_body_with_an_invisible_character_or_a_line_separator_is_422_naming_the_field(
    api: InProcessApi, method: str, path: str, body: dict[str, Any], field: str, char: str
):
    text = f"ada{char}@example.com" if field.endswith("email") else f"Ada{char}Lovelace"

    answer = api.request(method, path, json=_with(body, field, text))

    error = assert_error(answer, 422, "validation_error", field)
    assert f"U+{ord(char):04X}" in json.dumps(error["details"])


def test_an_order_stored_with_invisible_characters_before_they_were_refused_reads_and_changes(
    api: InProcessApi, catalog: Catalog
):
    (sku,) = catalog.stocked("10.00")
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    # Written as the name rule let it be before: a zero-width space, a joiner, a line separator.
    dynamodb, key = boto3.client("dynamodb"), {"id": {"S": order_id}}
    item = dynamodb.get_item(TableName="test-OrdersTable", Key=key)["Item"]
    document = stored_document(item)
    document["customer"] |= {"name": "Ada\u200bLovelace", "email": "ada\u2060@example.com"}
    document["shipping_address"]["line1"] = "1 Market St\u2028Apt 9"
    dynamodb.update_item(
        TableName="test-OrdersTable", Key=key, UpdateExpression="SET doc = :doc",
        ExpressionAttributeValues={":doc": document_attribute(document)},
    )  # fmt: skip

    read = api.get(f"/orders/{order_id}")

    assert read.status_code == 200, read.text
    shown = read.json()
    assert (shown["customer"]["name"], shown["customer"]["email"]) == ("Ada\ufffdLovelace", "ada\ufffd@example.com")
    assert shown["shipping_address"]["line1"] == "1 Market St\ufffdApt 9"
    listed = api.get("/orders", params={"customer_id": shown["customer"]["id"]})
    assert listed.status_code == 200 and listed.json()["items"][0]["customer"]["name"] == "Ada\ufffdLovelace"
    # An edit prices it again with its stored customer and address, as read: it is taken.
    edited = api.request(
        "PATCH", f"/orders/{order_id}", json={"lines": [{"sku": sku, "quantity": 2}]},
        headers={"If-Match": str(shown["version"])},
    )  # fmt: skip
    assert edited.status_code == 200, edited.text
    assert edited.json()["customer"]["name"] == "Ada\ufffdLovelace"
    held = api.post(f"/orders/{order_id}/hold", json={"reason": "other"})
    assert held.status_code == 200, held.text


def test_a_product_stored_with_an_invisible_character_reads_with_it_shown(api: InProcessApi, catalog: Catalog):
    sku = catalog.product("3.00")
    _stored_product(sku, name="Mug\u2060Blue")

    read = api.get(f"/products/{sku}")

    assert read.status_code == 200, read.text
    assert read.json()["name"] == "Mug\ufffdBlue"


def _stored_product(sku: str, **fields: Any) -> None:
    """The catalog's item for `sku` rewritten with `fields`, as a product written before a rule was."""
    from functions.bootstrap import forget_warm_containers

    dynamodb = boto3.client("dynamodb")
    (item,) = [
        item
        for item in dynamodb.scan(TableName="test-CatalogTable")["Items"]
        if "doc" in item and json.loads(item["doc"].get("S", "{}")).get("sku") == sku
    ]
    document = json.loads(item["doc"]["S"]) | fields
    dynamodb.put_item(TableName="test-CatalogTable", Item={**item, "doc": {"S": json.dumps(document)}})
    forget_warm_containers()  # read as a new container reads it, not from the one that cached it


def test_a_product_stored_with_a_control_in_an_attribute_reads_with_it_shown_and_still_sells(
    api: InProcessApi, catalog: Catalog
):
    # Attribute values took any string before they were held to the rule on names: such a product
    # still reads, and is still ordered, each control, bidi override or invisible character shown
    # as U+FFFD (as a name's invisible characters are).
    (sku,) = catalog.stocked("3.00")
    _stored_product(sku, attributes={"colour": "red\u202e\u0000", "finish": "matt\u200b\u2028", "size": "L"})
    shown = {"colour": "red\ufffd\ufffd", "finish": "matt\ufffd\ufffd", "size": "L"}

    read = api.get(f"/products/{sku}")
    placed = api.post("/orders", json=order_body((sku, 1)))

    assert read.status_code == 200, read.text
    assert read.json()["attributes"] == shown
    assert placed.status_code == 201, placed.text
