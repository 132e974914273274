"""GET /orders?external_id= through the in-process gateway: a customer quotes the number the
storefront (and the OMS's notices and pick slips) gave them, and a CS agent or a store associate
finds the order by it, on its channel only, with one read of the order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, allocated, in_process_api_with_labels, issue
from tests.integration.test_dynamodb_adapters import requests_made

CUSTOMER = {"id": "cus_quoted", "email": "quoted@example.com", "name": "Ada Lovelace"}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/TSHIRT/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


@pytest.fixture(scope="module")
def quoted(api: InProcessApi) -> dict[str, Any]:
    """The web storefront's order web-5001, as GET /orders/{id} shows it."""
    placed = api.post("/orders", json=order_body(external_id="web-5001", customer=CUSTOMER))
    assert placed.status_code == 201, placed.text
    shown = api.get(f"/orders/{placed.json()['id']}")
    assert shown.status_code == 200, shown.text
    return shown.json()


def found(api: InProcessApi, key: Any = None, **query: str) -> list[dict[str, Any]]:
    """The orders GET /orders answers `query` with (as the admin without `key`): its one page."""
    answer = api.get("/orders", params=query, **({"key": key} if key is not None else {}))
    assert answer.status_code == 200, answer.text
    assert answer.json()["next_cursor"] is None
    return answer.json()["items"]


def test_an_order_is_found_by_the_number_its_customer_quotes_on_its_channel(api: InProcessApi, quoted: dict):
    assert found(api, external_id="web-5001", channel="web") == [quoted]


def test_the_same_number_on_another_channel_is_no_order(api: InProcessApi, quoted: dict):
    assert found(api, external_id="web-5001", channel="market") == []
    assert found(api, external_id="web-5002", channel="web") == []


def test_a_channel_key_finds_its_own_order_by_number_and_cannot_name_another_channel(api: InProcessApi, quoted: dict):
    web = issue(api, "orders:read", channel="web")
    market = issue(api, "orders:read", channel="market")

    assert found(api, web, external_id="web-5001") == [quoted]
    assert found(api, web, external_id="web-5001", channel="web") == [quoted]
    assert_error(api.get("/orders", params={"external_id": "web-5001", "channel": "market"}, key=web), 403, "forbidden")
    # The market's key asks on its own channel: the web's order under that number is not its own.
    assert found(api, market, external_id="web-5001") == []
    assert_error(api.get("/orders", params={"external_id": "web-5001", "channel": "web"}, key=market), 403, "forbidden")


@pytest.mark.parametrize(
    "other, listed",
    [
        ({"status": "pending"}, True),
        ({"status": "cancelled"}, False),
        ({"customer_id": "cus_quoted"}, True),
        ({"customer_id": "cus_other"}, False),
        ({"jeopardy": "true"}, False),
    ],
    ids=["its status", "another status", "its customer", "another customer", "late only"],
)
def test_the_other_filters_still_apply_to_the_order_found_by_number(
    api: InProcessApi, quoted: dict, other: dict, listed: bool
):
    assert quoted["status"] == "pending"
    assert found(api, external_id="web-5001", channel="web", **other) == ([quoted] if listed else [])


def test_a_late_order_is_found_by_number_among_the_late(api: InProcessApi):
    from core.order_changes import modify
    from functions.api.dependencies import container

    placed = api.post("/orders", json=order_body(external_id="web-5003", customer=CUSTOMER))
    assert placed.status_code == 201, placed.text
    placed_at = datetime.fromisoformat(placed.json()["created_at"])
    late = modify(
        container().order_repository,
        placed.json()["id"],
        lambda order: order.mark_jeopardy("pending too long", placed_at, at=placed_at, actor="jeopardy_scan"),
    )
    assert late.listed_late

    assert [o["id"] for o in found(api, external_id="web-5003", channel="web", jeopardy="true")] == [late.id]


def test_a_number_without_a_channel_is_422_naming_external_id(api: InProcessApi, quoted: dict):
    # The admin's (or an ops key's) number names an order only with its channel: two storefronts
    # may each have a web-5001.
    error = assert_error(api.get("/orders", params={"external_id": "web-5001"}), 422, "validation_error", "external_id")
    assert "channel" in error["details"][0]["message"]


def test_a_cursor_with_a_number_is_422_there_is_nothing_to_page(api: InProcessApi, quoted: dict):
    first = api.get("/orders", params={"channel": "web", "limit": 1})
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"] or "x"

    answer = api.get("/orders", params={"external_id": "web-5001", "channel": "web", "cursor": cursor})

    assert_error(answer, 422, "validation_error", "cursor")


@pytest.mark.parametrize(
    "number",
    ["", "-5001", "web 5001", "w" * 129, "web-5001,web-5002", "web\u202e5001"],
    ids=["empty", "a leading dash", "a space", "129 characters", "sent twice", "a bidi override"],
)
def test_a_number_post_orders_would_refuse_is_422_not_a_page_read_as_no_such_order(api: InProcessApi, number: str):
    placed = api.post("/orders", json=order_body(external_id=number))
    assert_error(placed, 422, "validation_error", "external_id")

    answer = api.get("/orders", params={"external_id": number, "channel": "web"})

    assert_error(answer, 422, "validation_error", "external_id")


def test_the_longest_number_post_orders_takes_is_found(api: InProcessApi):
    number = "w" * 128
    placed = api.post("/orders", json=order_body(external_id=number))
    assert placed.status_code == 201, placed.text

    assert [o["id"] for o in found(api, external_id=number, channel="web")] == [placed.json()["id"]]


def test_a_number_is_found_as_the_storefront_wrote_it_capitals_and_all(api: InProcessApi):
    # POST /orders keeps WEB-5004 and web-5004 as two numbers (two orders): each is found by its own.
    placed = api.post("/orders", json=order_body(external_id="WEB-5004", customer=CUSTOMER))
    assert placed.status_code == 201, placed.text

    assert [o["id"] for o in found(api, external_id="WEB-5004", channel="web")] == [placed.json()["id"]]
    assert found(api, external_id="web-5004", channel="web") == []


def test_an_order_found_by_number_hands_out_its_label_links_as_get_orders_id_does(api: InProcessApi):
    # A store associate finds a parcel's order by the number on the customer's notice and prints its label.
    order_id, _ = allocated(api, "TSHIRT", external_id="web-5005", customer=CUSTOMER)

    [shown] = found(api, external_id="web-5005", channel="web")

    link = shown["shipments"][0]["label_url"]
    assert shown["id"] == order_id and link.startswith("http") and "Signature=" in link, link


def test_an_imported_order_is_found_by_its_number(api: InProcessApi):
    from core.import_service import OrderImporter, Outcome
    from functions.api.dependencies import container

    body = order_body(channel="market", external_id="mkt-77", customer=CUSTOMER)
    importer = OrderImporter(container().capture, container().import_ledger)
    imported = importer.import_order(json.dumps(body), None, sender="AIDAMARKETTOOL", message_id="m-1")
    assert imported.outcome is Outcome.IMPORTED, imported

    assert [o["id"] for o in found(api, external_id="mkt-77", channel="market")] == [imported.order_id]
    assert found(api, external_id="mkt-77", channel="web") == []


def test_finding_an_order_by_number_reads_one_item_and_queries_no_index(api: InProcessApi, quoted: dict):
    from functions.api.dependencies import container

    with requests_made(container().dynamodb) as made:
        assert found(api, external_id="web-5001", channel="web") == [quoted]

    orders_table = container().config.orders_table
    on_orders = [operation for operation, params in made if params.get("TableName") == orders_table]
    assert on_orders == ["GetItem"], made
    assert [params.get("ConsistentRead") for _, params in made if params.get("TableName") == orders_table] == [True]
    assert not [operation for operation, _ in made if operation in ("Query", "Scan", "BatchGetItem")], made


def test_the_api_document_describes_the_number_as_post_orders_takes_it(api: InProcessApi):
    document = api.get("/openapi.json", key=None).json()
    listing = document["paths"]["/orders"]["get"]
    number = next(p for p in listing["parameters"] if p["name"] == "external_id")
    placed = document["components"]["schemas"]["PlaceOrder"]["properties"]["external_id"]

    assert number["in"] == "query" and not number.get("required")
    assert number["schema"]["anyOf"][0]["pattern"] == placed["anyOf"][0]["pattern"]
    assert "channel" in number["description"] and "cursor" in number["description"]
    assert "`external_id`" in listing["description"] and "422" in listing["description"]
