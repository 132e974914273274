"""The jeopardy scan's index under moto, on the tables built from template.yaml: the sparse by_sla
index holds an order while it can be late (by its status and when it entered it) or is marked late
(the late partition), never once it is closed; GET /orders?jeopardy=true pages through it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.jeopardy import JeopardyScan, parse_sla
from core.plugin_manager import build_plugin_manager
from core.ports import OrderFilter
from core.pricing import Pricing
from core.services import CaptureService
from core.status import OrderStatus
from functions.adapters.dynamodb import DynamoCatalog, DynamoInventory, DynamoLateOrders, DynamoOrders
from tests.builders import NOW, location, place_order, product

S = OrderStatus


@pytest.fixture
def orders(aws):
    return DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])


@pytest.fixture
def capture(aws, orders):
    catalog = DynamoCatalog(aws.dynamodb, aws.tables["CatalogTable"])
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    catalog.put_product(product("TSHIRT"))
    catalog.put_location(location("wh-east"))
    inventory.set_on_hand("TSHIRT", "wh-east", 1000, "count")
    ticks = iter(range(10_000))
    return CaptureService(
        orders, catalog, inventory, Pricing(build_plugin_manager()), clock=lambda: NOW + timedelta(seconds=next(ticks))
    )


@pytest.fixture
def late(aws):
    return DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])


def index_entries(aws) -> dict[str, tuple[str, str]]:
    """{order id: (sla_key, sla_at)} of every item the sparse index would hold."""
    items = aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Items"]  # the test reads all; the code never
    return {i["id"]["S"]: (i["sla_key"]["S"], i["sla_at"]["S"]) for i in items if "sla_key" in i}


def test_orders_enter_the_index_by_status_and_leave_it_when_closed(aws, capture, orders, late):
    first = capture.place(place_order(external_id="a"), actor="k")
    second = capture.place(place_order(external_id="b"), actor="k")

    assert set(index_entries(aws)) == {first.id, second.id}
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == [first.id, second.id]
    assert late.unmarked_since_before(S.PENDING, first.created_at, 10) == []  # before either entered
    assert late.unmarked_since_before(S.AUTHORIZED, NOW + timedelta(days=1), 10) == []

    cancelled, entry = orders.get(first.id).cancel("test", at=NOW + timedelta(minutes=1), actor="k")
    orders.update(cancelled, orders.get(first.id), [entry])

    assert set(index_entries(aws)) == {second.id}  # a closed order leaves the index


def test_a_marked_order_moves_to_the_late_partition_is_listed_and_counted(aws, capture, orders, late):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(3)]
    clock = lambda: NOW + timedelta(minutes=30)  # noqa: E731
    scan = JeopardyScan(late, orders, lambda *a: None, clock, sla=parse_sla(""))

    done = scan.run()

    assert sorted(done.marked) == sorted(o.id for o in placed) and done.in_jeopardy == 3
    assert {key for key, _ in index_entries(aws).values()} == {"jeopardy"}
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == []
    assert scan.run().marked == []  # a second pass finds nothing new to mark
    page, cursor = orders.list(OrderFilter(jeopardy=True), 2, None)
    rest, end = orders.list(OrderFilter(jeopardy=True), 2, cursor)
    assert [o.id for o in page + rest] == [o.id for o in reversed(placed)] and end is None  # newest first
    assert orders.list(OrderFilter(jeopardy=True, channel="other"), 10, None)[0] == []
    assert orders.list(OrderFilter(jeopardy=True, status=S.AUTHORIZED), 10, None)[0] == []


def test_held_orders_are_found_for_expiry_marked_or_not(aws, capture, orders, late):
    marked = capture.place(place_order(external_id="m"), actor="k")
    unmarked = capture.place(place_order(external_id="u"), actor="k")
    for order_id, at in ((marked.id, NOW), (unmarked.id, NOW + timedelta(hours=30))):
        held, entry = orders.get(order_id).hold_for("fraud_review", None, at=at, actor="k")
        orders.update(held, orders.get(order_id), [entry])
    current = orders.get(marked.id)
    late_one, entry = current.mark_jeopardy("on_hold for longer than 24h", NOW + timedelta(hours=24),
                                            at=NOW + timedelta(hours=25), actor="x")  # fmt: skip
    orders.update(late_one, current, [entry])

    assert late.held_since_before(NOW + timedelta(hours=1), 10) == [marked.id]
    assert sorted(late.held_since_before(NOW + timedelta(days=2), 10)) == sorted([marked.id, unmarked.id])
    assert late.count_in_jeopardy() == 1
