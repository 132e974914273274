"""GET /orders' (and GET /returns') pages on their tables' indexes, under moto answering as DynamoDB
does: where each page ends, and that the last one names no next."""

from __future__ import annotations

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
            answer["LastEvaluatedKey"] = {name: last[name] for name in INDEX_KEYS[request["IndexName"]]}
        return answer

    monkeypatch.setattr(aws.dynamodb, "query", query)


def every_page(orders, where: OrderFilter, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page, cursor = orders.list(where, limit, cursor)
        pages.append([order.id for order in page])
        if cursor is None:
            return pages
        assert len(pages) < 10, "next_cursor never became null"


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
        pages, cursor = [], None
        while True:
            page, cursor = returns.list(where, limit, cursor)
            pages.append([item.id for item in page])
            if cursor is None:
                return pages
            assert len(pages) < 10, "next_cursor never became null"

    assert every_page(4) == [newest_first]
    assert every_page(2) == [newest_first[:2], newest_first[2:]]
