"""GET /orders' pages under moto while the list is not still: orders placed at the same instant
(ties on every index's sort key), and orders placed or leaving a status between two pages."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.models import HistoryEntry, Order
from core.ports import OrderFilter
from core.pricing import Pricing
from core.services import CaptureService
from core.status import OrderStatus
from functions.adapters import dynamodb
from functions.adapters.dynamodb import DynamoCatalog, DynamoInventory, DynamoOrders
from functions.plugin_loading import load_plugin_manager
from tests.builders import NOW, location, place_order, product

CUSTOMER = {"id": "cus_tie", "email": "tie@example.com"}


@pytest.fixture
def tied(aws, orders):
    """A capture service whose clock the test sets: orders it places while the clock stands still
    share their created_at to the microsecond."""
    catalog = DynamoCatalog(aws.dynamodb, aws.tables["CatalogTable"])
    catalog.put_product(product("TSHIRT"))
    catalog.put_location(location("wh-east"))
    DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"]).set_on_hand("TSHIRT", "wh-east", 1000, "count")
    now = [NOW]
    capture = CaptureService(orders, catalog, DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"]),
                             Pricing(load_plugin_manager()), clock=lambda: now[0])  # fmt: skip
    return capture, now


def every_page(orders: DynamoOrders, where: OrderFilter, limit: int, between=lambda page: None) -> list[list[Order]]:
    """Every page of `where`, following the cursor to its end; `between(n)` runs after page n."""
    pages, cursor = [], None
    for n in range(100):
        page, cursor = orders.list(where, limit, cursor)
        pages.append(page)
        between(n)
        if cursor is None:
            return pages
    raise AssertionError("the cursor never ran out")


def hold(orders: DynamoOrders, order_id: str) -> None:
    order = orders.get(order_id)
    assert order is not None
    entry = HistoryEntry(at=NOW, type="on_hold", from_status=order.status, to_status=OrderStatus.ON_HOLD, actor="k")
    orders.update(
        order.model_copy(update={"status": OrderStatus.ON_HOLD, "version": order.version + 1}), order, [entry]
    )


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_orders_placed_at_the_same_instant_page_without_a_skip_or_a_repeat(tied, orders, monkeypatch, limit):
    # Every index sorts by created_at; orders sharing it are told apart by their id, which a cursor
    # carries. A channel's page of a customer (or of the late orders) stops at its read budget (2
    # entries here) only between two instants: a cursor holding only an instant would skip the rest
    # of a tie, or repeat it.
    monkeypatch.setattr(dynamodb, "CHANNEL_LIST_READS", 2)
    capture, now = tied
    placed: list[Order] = []
    for second, channels in enumerate(
        (["web", "market", "web"], ["market", "market", "web", "web"], ["web", "market"])
    ):
        now[0] = NOW + timedelta(seconds=second)
        for channel in channels:
            placed.append(capture.place(place_order(external_id=f"t{len(placed)}", channel=channel, customer=CUSTOMER),
                                        actor="k"))  # fmt: skip
    for order in placed:  # all late: the late orders' index (by_sla) sorts by when they were placed too
        current = orders.get(order.id)
        assert current is not None
        marked, entry = current.mark_jeopardy("pending too long", NOW, at=NOW + timedelta(hours=1), actor="x")
        orders.update(marked, current, [entry])

    for where in (
        OrderFilter(),
        OrderFilter(channel="web"),
        OrderFilter(customer_id=CUSTOMER["id"]),
        OrderFilter(customer_id=CUSTOMER["id"], channel="web"),
        OrderFilter(customer_id=CUSTOMER["id"], channel="market", status=OrderStatus.PENDING),
        OrderFilter(status=OrderStatus.PENDING),
        OrderFilter(jeopardy=True),
        OrderFilter(jeopardy=True, channel="web"),
        OrderFilter(jeopardy=True, customer_id=CUSTOMER["id"], channel="market"),
    ):
        shown = [order for page in every_page(orders, where, limit) for order in page]
        expected = {o.id for o in placed if where.channel in (None, o.channel)}
        assert len(shown) == len({o.id for o in shown}), f"{where}: an order shown twice"
        assert {o.id for o in shown} == expected, f"{where}: an order skipped"
        assert [o.created_at for o in shown] == sorted((o.created_at for o in shown), reverse=True)


@pytest.mark.parametrize(
    "where",
    [
        OrderFilter(status=OrderStatus.PENDING),
        OrderFilter(channel="web", status=OrderStatus.PENDING),
        OrderFilter(customer_id=CUSTOMER["id"], status=OrderStatus.PENDING),
        OrderFilter(customer_id=CUSTOMER["id"], channel="web", status=OrderStatus.PENDING),
    ],
)
def test_orders_placed_or_leaving_the_status_between_pages_are_neither_repeated_nor_shown_stale(tied, orders, where):
    # Newest first by when placed, which never changes: an order placed after the walk began is
    # above its cursor (the next walk shows it), one held before its page is read is not shown in a
    # status it left (the channel and customer indexes hold no status: the order read back tells),
    # one held after its page was shown is not shown again, and every order pending throughout is
    # shown once.
    capture, now = tied
    placed = []
    for n in range(8):
        now[0] = NOW + timedelta(seconds=n)
        placed.append(capture.place(place_order(external_id=f"c{n}", customer=CUSTOMER), actor="k").id)
    newest_first = placed[::-1]
    held_unseen, held_seen = newest_first[4], newest_first[0]

    def between(n: int) -> None:
        if n == 0:
            hold(orders, held_unseen)
            hold(orders, held_seen)
            now[0] = NOW + timedelta(seconds=100)
            capture.place(place_order(external_id="late", customer=CUSTOMER), actor="k")

    pages = every_page(orders, where, 2, between)
    shown = [order for page in pages for order in page]

    assert [o.id for o in shown] == [i for i in newest_first if i != held_unseen]
    assert all(o.status is OrderStatus.PENDING for o in shown)
