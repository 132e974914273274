"""The API's lists (GET /orders, its notifications, /returns, /imports, /api-keys, the sourcing rules'
history) on their tables and indexes, under moto answering as DynamoDB does: where each page ends,
and that the last one names no next."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core.ports import OrderFilter, ReturnFilter
from core.status import OrderStatus, ReturnStatus
from functions.adapters.dynamodb import DynamoReturns, order_update
from tests.builders import place_order
from tests.integration.test_dynamodb_adapters import requested_returns

# The key attributes of each index's entries: the table's `id`, then the index's own.
INDEX_KEYS = {
    "by_customer": ("id", "customer_id", "created_at"),
    "by_channel": ("id", "channel", "created_at"),
    "by_status_key": ("id", "status_key", "created_at"),
    "by_created": ("id", "list_pk", "created_at"),
    "by_sla": ("id", "sla_key", "sla_at"),
    "by_pickup_location": ("id", "pickup_location", "created_at"),
    "by_status": ("id", "status", "created_at"),  # the Returns table's
}


@pytest.fixture
def as_dynamodb(aws, monkeypatch):
    """DynamoDB names a LastEvaluatedKey whenever a Query stops at its Limit, whether more follow
    or not; moto only when more follow. This client answers as DynamoDB does."""
    real = aws.dynamodb.query

    def query(**request: Any) -> dict[str, Any]:
        answer = real(**request)
        if "LastEvaluatedKey" not in answer and request.get("Limit") == answer["ScannedCount"] > 0:
            last = answer["Items"][-1]
            keys = INDEX_KEYS[request["IndexName"]] if "IndexName" in request else ("pk", "sk")
            answer["LastEvaluatedKey"] = {name: last[name] for name in keys}
        return answer

    monkeypatch.setattr(aws.dynamodb, "query", query)


def pages_of(read: Any, limit: int) -> list[list[str]]:
    """Every page `read(limit, cursor)` answers, as the ids (or versions) of its items."""
    pages, cursor = [], None
    while True:
        page, cursor = read(limit, cursor)
        pages.append([str(getattr(item, "id", None) or item.version) for item in page])
        if cursor is None:
            return pages
        assert len(pages) < 10, "next_cursor never became null"


def every_page(orders, where: OrderFilter, limit: int) -> list[list[str]]:
    return pages_of(lambda limit, cursor: orders.list(where, limit, cursor), limit)


@pytest.mark.parametrize(
    "where",
    [
        OrderFilter(),
        OrderFilter(customer_id="cus_1"),
        OrderFilter(channel="web"),
        OrderFilter(status=OrderStatus.PENDING),
        OrderFilter(customer_id="cus_1", status=OrderStatus.PENDING),
    ],
    ids=["all", "customer", "channel", "status", "customer-and-status"],
)
def test_a_last_page_of_exactly_limit_orders_names_no_next_page(aws, capture, orders, as_dynamodb, where):
    # The page was the Query's answer cut at `limit`, and its cursor DynamoDB's LastEvaluatedKey:
    # the last `limit` orders named a next page, which was empty.
    placed = [capture.place(place_order(external_id=f"o{n}"), actor="k").id for n in range(4)]
    newest_first = placed[::-1]

    assert every_page(orders, where, 4) == [newest_first]
    assert every_page(orders, where, 2) == [newest_first[:2], newest_first[2:]]
    assert every_page(orders, where, 3) == [newest_first[:3], newest_first[3:]]


def test_a_last_page_of_exactly_limit_shipped_orders_names_no_next_page(aws, capture, orders, as_dynamodb):
    # Shipped orders are listed from every order, filtered after the read.
    placed = [capture.place(place_order(external_id=f"o{n}"), actor="k") for n in range(2)]
    for order in placed:
        shipped = order.model_copy(update={"status": OrderStatus.SHIPPED, "version": order.version + 1})
        aws.dynamodb.update_item(**order_update(aws.tables["OrdersTable"], shipped, order, []))

    assert every_page(orders, OrderFilter(status=OrderStatus.SHIPPED), 2) == [[placed[1].id, placed[0].id]]


def test_a_last_page_of_exactly_limit_pickups_at_a_store_names_no_next_page(aws, capture, orders, as_dynamodb):
    from functions.adapters.dynamodb import DynamoCatalog, DynamoInventory
    from tests.builders import location

    store = location("store-sf", type="store", pickup=True)
    DynamoCatalog(aws.dynamodb, aws.tables["CatalogTable"]).put_location(store)
    DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"]).set_on_hand("TSHIRT", "store-sf", 100, "count")
    at_store = {"type": "pickup", "location_id": "store-sf"}
    placed = [capture.place(place_order(external_id=f"p{n}", fulfillment=at_store), actor="k").id for n in range(4)]
    capture.place(place_order(external_id="shipped-home"), actor="k")  # newest, and on no store's list

    where = OrderFilter(pickup_location_id="store-sf")
    assert every_page(orders, where, 4) == [placed[::-1]]
    assert every_page(orders, where, 2) == [placed[::-1][:2], placed[::-1][2:]]


@pytest.mark.parametrize(
    "where", [ReturnFilter(), ReturnFilter(status=ReturnStatus.REQUESTED), ReturnFilter(channel="shop")],
    ids=["all", "status", "channel"],
)  # fmt: skip
def test_a_last_page_of_exactly_limit_returns_names_no_next_page(aws, as_dynamodb, where):
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    made = requested_returns(4)
    for item in made:
        returns.add(item)
    newest_first = [item.id for item in sorted(made, key=lambda item: item.created_at, reverse=True)]

    def every_page(limit: int) -> list[list[str]]:
        return pages_of(lambda limit, cursor: returns.list(where, limit, cursor), limit)

    assert every_page(4) == [newest_first]
    assert every_page(2) == [newest_first[:2], newest_first[2:]]


def other_lists(aws) -> dict[str, tuple[Any, int, list[str]]]:
    """Each list: how it reads a page, a `limit`, and what it holds (exactly `limit` items)."""
    from core.access import ApiKey, Scope
    from core.sourcing_rules import SourcingRules
    from functions.adapters.dynamodb import DynamoApiKeys, DynamoSourcingRules
    from functions.adapters.imports import DynamoImportLedger
    from functions.adapters.notifications import DynamoNotifications
    from tests.builders import NOW
    from tests.integration.test_notifications import allocated_then_shipped, notifications

    catalog = aws.tables["CatalogTable"]
    keys = DynamoApiKeys(aws.dynamodb, catalog)
    rules = DynamoSourcingRules(aws.dynamodb, catalog)
    imports = DynamoImportLedger(aws.dynamodb, catalog, aws.tables["IdempotencyTable"])
    for n in (1, 2):
        keys.add(ApiKey(id=f"key_{n}", name="k", scopes=[Scope.ORDERS_READ], created_at=NOW), f"hash_{n}")
        rules.add(SourcingRules(version=n))
        imports.begin(f"imp_{n}", f"s3://bucket/incoming/{n}.csv", NOW + timedelta(seconds=n))
    store = DynamoNotifications(aws.dynamodb, catalog)
    allocated, shipped = allocated_then_shipped("ord_" + "n" * 24)
    (notification,) = notifications(allocated.model_dump(mode="json"), shipped.model_dump(mode="json"))
    store.add(notification)
    return {
        "api keys": (keys.list, 2, ["key_1", "key_2"]),
        "sourcing rules": (lambda limit, cursor: rules.history(limit, cursor), 2, ["2", "1"]),
        "imports": (imports.list, 2, ["imp_2", "imp_1"]),
        "notifications": (lambda limit, cursor: store.list(allocated.id, limit, cursor), 1, [notification.id]),
    }


@pytest.mark.parametrize("name", ["api keys", "sourcing rules", "imports", "notifications"])
def test_the_last_page_of_another_list_of_exactly_limit_items_names_no_next_page(aws, as_dynamodb, name):
    # Each was one Query cut at `limit` with DynamoDB's LastEvaluatedKey as its cursor.
    read, limit, held = other_lists(aws)[name]

    assert pages_of(read, limit) == [held]
    if limit > 1:
        assert pages_of(read, 1) == [[item] for item in held]
