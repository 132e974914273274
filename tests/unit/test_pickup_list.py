"""A store's pickup list (GET /orders?pickup_location_id=): OrderFilter.admits lists a pickup order
at its own store while the store has work on it (Order.open_at_store), and OrderQueries refuses a
store the network does not have, or a status the list never holds, as 422 rather than an empty page."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from core.models import Fulfillment
from core.ports import OrderFilter
from core.services import OrderQueries
from core.status import OrderStatus
from plugins.testing.memory import InMemoryOrders
from tests.builders import location
from tests.unit.conftest import a_stored_order

S = OrderStatus
AT_SF = Fulfillment(type="pickup", location_id="store-sf")
# Placed, sourced, waiting for stock, held or allocated: picked, readied and handed over there.
STORE_HAS_WORK = {S.PENDING, S.AUTHORIZED, S.BACKORDERED, S.ON_HOLD, S.ALLOCATED}


@pytest.mark.parametrize("status", list(OrderStatus))
def test_a_pickup_order_is_on_its_stores_list_until_it_is_collected_or_ends(status: OrderStatus):
    order = a_stored_order(("MUG", 1), fulfillment=AT_SF, status=status)

    assert OrderFilter(pickup_location_id="store-sf").admits(order) is (status in STORE_HAS_WORK)
    assert order.open_at_store == ("store-sf" if status in STORE_HAS_WORK else None)


def test_a_store_lists_neither_another_stores_pickups_nor_orders_shipped_home():
    at_sf = a_stored_order(("MUG", 1), fulfillment=AT_SF, status=S.ALLOCATED)
    shipped_home = a_stored_order(("MUG", 1), status=S.ALLOCATED)

    assert not OrderFilter(pickup_location_id="store-ny").admits(at_sf)
    assert not OrderFilter(pickup_location_id="store-sf").admits(shipped_home)
    assert shipped_home.open_at_store is None
    assert OrderFilter().admits(shipped_home)  # the filter narrows only when it is given


def test_the_other_filters_narrow_a_stores_list():
    order = a_stored_order(("MUG", 1), fulfillment=AT_SF, status=S.ALLOCATED, channel="web")

    assert OrderFilter(pickup_location_id="store-sf", channel="web", status=S.ALLOCATED).admits(order)
    assert not OrderFilter(pickup_location_id="store-sf", channel="market").admits(order)
    assert not OrderFilter(pickup_location_id="store-sf", status=S.BACKORDERED).admits(order)
    assert not OrderFilter(pickup_location_id="store-sf", customer_id="cus_other").admits(order)
    assert not OrderFilter(pickup_location_id="store-sf", jeopardy=True).admits(order)


def queries_with_network() -> tuple[OrderQueries, InMemoryOrders]:
    orders = InMemoryOrders()
    network = {loc.location_id: loc for loc in (location("store-sf", type="store", pickup=True), location("wh-east"))}
    return OrderQueries(orders, location=network.get), orders


def test_a_store_the_network_does_not_have_is_422_unknown_location_not_an_empty_list():
    queries, orders = queries_with_network()
    orders.put(a_stored_order(("MUG", 1), fulfillment=AT_SF, status=S.ALLOCATED))

    with pytest.raises(InvalidRequest) as refused:
        queries.list(OrderFilter(pickup_location_id="store-sf-typo"), 25, None)

    assert refused.value.code == "unknown_location"
    assert refused.value.details == [{"field": "pickup_location_id", "message": "no location store-sf-typo"}]
    with pytest.raises(InvalidRequest, match="store-sf-typo"):
        queries.by_external_id(OrderFilter(channel="web", pickup_location_id="store-sf-typo"), "web-1")
    assert [o.id for o in queries.list(OrderFilter(pickup_location_id="store-sf"), 25, None)[0]] == ["ord_1"]
    # A location that takes no pickups (a warehouse, a store that stopped) has a list, empty or not.
    assert queries.list(OrderFilter(pickup_location_id="wh-east"), 25, None) == ([], None)


@pytest.mark.parametrize("status", sorted(set(OrderStatus) - STORE_HAS_WORK))
def test_asking_a_stores_list_for_a_status_it_never_holds_is_422_not_an_empty_list(status: OrderStatus):
    # "Collected at store-sf" answered with an empty page would read as "nothing was collected".
    queries, _ = queries_with_network()

    with pytest.raises(InvalidRequest) as refused:
        queries.list(OrderFilter(pickup_location_id="store-sf", status=status), 25, None)

    assert refused.value.code == "validation_error"
    assert [detail["field"] for detail in refused.value.details] == ["status"]
    assert "allocated" in refused.value.details[0]["message"]
    assert queries.list(OrderFilter(status=status), 25, None) == ([], None)  # without a store: any status
