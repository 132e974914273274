"""core.services.OrderQueries.by_external_id and core.ports.OrderFilter.admits: an order found by the
number its customer quotes is the one its channel placed under it, and only when the list's other
filters would list it."""

from __future__ import annotations

import pytest

from core.ids import order_id_for
from core.ports import OrderFilter
from core.services import OrderQueries
from core.status import OrderStatus
from plugins.testing.memory import InMemoryOrders
from tests.unit.conftest import a_stored_order


def test_a_filter_of_one_channel_does_not_list_another_channels_order():
    market = a_stored_order(("MUG", 1), channel="market")

    assert not OrderFilter(channel="web").admits(market)
    assert OrderFilter(channel="market").admits(market)
    assert OrderFilter().admits(market)


def test_an_order_is_found_by_its_number_on_its_channel_and_narrowed_by_the_other_filters():
    orders = InMemoryOrders()
    placed = a_stored_order(("MUG", 1), id=order_id_for("web", "web-7"), external_id="web-7")
    orders.put(placed)
    queries = OrderQueries(orders)

    assert queries.by_external_id(OrderFilter(channel="web"), "web-7") == placed
    assert queries.by_external_id(OrderFilter(channel="market"), "web-7") is None
    assert queries.by_external_id(OrderFilter(channel="web", status=OrderStatus.AUTHORIZED), "web-7") == placed
    assert queries.by_external_id(OrderFilter(channel="web", status=OrderStatus.CANCELLED), "web-7") is None


def test_a_number_without_a_channel_is_refused_never_read_as_some_channels():
    with pytest.raises(ValueError, match="channel"):
        OrderQueries(InMemoryOrders()).by_external_id(OrderFilter(), "web-7")
