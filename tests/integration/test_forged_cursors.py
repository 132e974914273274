"""A cursor is opaque, but it is only base64 JSON: a client can forge one that names the list it
is sent to and carries a key DynamoDB refuses as a start key (an empty or oversized key value, or
another partition than the one the list reads). DynamoDB answers such a Query with a
ValidationException, which would be a 500; every list refuses the cursor itself with 422
invalid_cursor instead, before any Query. moto accepts these start keys, so the tests check the
answer, not a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from core.cursors import cursor_of
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks, issue
from tests.integration.test_refunds_api import a_captured_order, order_id

ORDER = order_id(41)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_webhooks() as started:
        a_captured_order(ORDER)
        yield started


@pytest.fixture(scope="module")
def webhook_id(api: InProcessApi) -> str:
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert made.status_code == 201, made.text
    return made.json()["id"]


def forged(scope: str, key: dict[str, str]) -> str:
    """A cursor as the adapters encode one (functions/adapters/dynamodb.encode_cursor)."""
    return cursor_of({"i": scope, "k": {name: {"S": value} for name, value in key.items()}}, sort_keys=True)


# Each list: its path, the scope its cursors are bound to, and a key in the partition it reads.
LISTS: dict[str, tuple[str, str, dict[str, str]]] = {
    "api keys": ("/api-keys", "api_keys", {"pk": "APIKEYS", "sk": "key_x"}),
    "imports": ("/imports", "imports", {"pk": "IMPORTS", "sk": "x"}),
    "webhooks": ("/webhooks", "webhooks", {"pk": "WEBHOOKS", "sk": "whk_x"}),
    "vendors": ("/vendors", "vendors", {"pk": "VENDORS", "sk": "v"}),
    "purchase orders": ("/purchase-orders", "purchase_orders::", {"pk": "PURCHASE_ORDERS", "sk": "po_x"}),
    "sourcing rules": ("/sourcing/rules/history", "sourcing_rules", {"pk": "SOURCING_RULES", "sk": "v1"}),
    "notifications": (f"/orders/{ORDER}/notifications", f"notifications:{ORDER}", {"pk": f"NOTIFY#{ORDER}", "sk": "x"}),
    "orders": ("/orders", "by_created", {"list_pk": "order", "id": "ord_x", "created_at": "2026-01-01T00:00:00Z"}),
    "returns": ("/returns", "returns:by_created=return", {"list_pk": "return", "id": "rma_x", "created_at": "2026"}),
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_a_well_formed_cursor_of_the_lists_own_partition_is_taken(api: InProcessApi, name: str):
    path, scope, key = LISTS[name]

    response = api.get(path, params={"cursor": forged(scope, key)})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", sorted(LISTS))
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda value: "", id="empty"),
        pytest.param(lambda value: "x" * 1025, id="over 1024 bytes"),
        pytest.param(lambda value: "é" * 513, id="over 1024 bytes in UTF-8"),
    ],
)
def test_a_cursor_whose_key_values_dynamodb_refuses_is_422(api: InProcessApi, name: str, change: Any):
    path, scope, key = LISTS[name]
    for attribute in key:
        cursor = forged(scope, {**key, attribute: change(key[attribute])})
        if len(cursor) > 2048:
            continue  # refused by the parameter's own bound (422 validation_error)

        assert_error(api.get(path, params={"cursor": cursor}), 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize("name", sorted(LISTS))
def test_a_cursor_naming_another_partition_is_422(api: InProcessApi, name: str):
    path, scope, key = LISTS[name]
    partition = next(iter(key))
    cursor = forged(scope, {**key, partition: "APIKEYS" if key[partition] != "APIKEYS" else "WEBHOOKS"})

    assert_error(api.get(path, params={"cursor": cursor}), 422, "invalid_cursor", "cursor")


def test_a_deliveries_cursor_is_bound_to_its_webhooks_partition(api: InProcessApi, webhook_id: str):
    path, scope = f"/webhooks/{webhook_id}/deliveries", f"deliveries:{webhook_id}"

    own = api.get(path, params={"cursor": forged(scope, {"pk": f"WEBHOOK#{webhook_id}", "sk": "dlv_x"})})
    other = api.get(path, params={"cursor": forged(scope, {"pk": "WEBHOOK#whk_other", "sk": "dlv_x"})})
    empty = api.get(path, params={"cursor": forged(scope, {"pk": f"WEBHOOK#{webhook_id}", "sk": ""})})

    assert own.status_code == 200, own.text
    assert_error(other, 422, "invalid_cursor", "cursor")
    assert_error(empty, 422, "invalid_cursor", "cursor")


def test_a_channel_keys_import_list_refuses_any_cursor_as_a_list_with_no_imports_would(api: InProcessApi):
    # A key bound to a channel sees no imports, exactly as if there were none: its first page is
    # empty, and no page of it ever returned a cursor, so any it sends (an admin's included) is 422.
    admins = forged("imports", {"pk": "IMPORTS", "sk": "x"})
    key = issue(api, "orders:read", channel="web")

    first = api.get("/imports", key=key)

    assert first.status_code == 200, first.text
    assert first.json() == {"items": [], "next_cursor": None}
    assert_error(api.get("/imports", key=key, params={"cursor": admins}), 422, "invalid_cursor", "cursor")


# Every list that takes a cursor, beyond LISTS: those whose cursors name a position, not a key.
PATHS = sorted(
    {path for path, _, _ in LISTS.values()}
    | {f"/orders/{ORDER}/returns", f"/orders/{ORDER}/refunds", f"/orders/{ORDER}/access-log", "/locations"}
    | {"/customers?email=ada@example.com"}
)


@pytest.mark.parametrize("path", PATHS)
def test_a_cursor_nested_deeper_than_the_json_parser_goes_is_422(api: InProcessApi, path: str):
    # 2,048 characters of base64 hold 1,536 `[`: json.loads raised RecursionError, which no list
    # caught (it is no ValueError), and every list answered 500.
    path, _, email = path.partition("?email=")
    deep = base64.urlsafe_b64encode(b"[" * 1536).decode()

    answer = api.get(path, params={"cursor": deep, **({"email": email} if email else {})})

    assert_error(answer, 422, "invalid_cursor", "cursor")


def forged_raw(scope: str, key: dict[str, Any]) -> str:
    """A cursor of any key document, typed values included."""
    raw = json.dumps({"i": scope, "k": key}, sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("name", sorted(LISTS))
def test_a_cursor_whose_key_lacks_an_attribute_or_types_a_value_twice_is_422(api: InProcessApi, name: str):
    # DynamoDB refuses such a start key (ValidationException: a 500); moto takes it.
    path, scope, key = LISTS[name]
    typed = {attribute: {"S": value} for attribute, value in key.items()}
    for attribute in key:
        lacking = {other: value for other, value in typed.items() if other != attribute}
        twice = {**typed, attribute: {"S": key[attribute], "N": "1"}}

        assert_error(api.get(path, params={"cursor": forged_raw(scope, lacking)}), 422, "invalid_cursor", "cursor")
        assert_error(api.get(path, params={"cursor": forged_raw(scope, twice)}), 422, "invalid_cursor", "cursor")
