"""A parcel a person writes off (its carrier reported it delivered, the gateway refused its capture)
after a cancel of some of its units died before its stock step (Order.stock_owed): the parcel's
reservation still holds the cancelled units. A write-off takes the parcel's units out of on_hand,
as a ship does; before, it took every unit reserved under the parcel's key (InventoryRepository.ship),
so the cancelled units, still on the shelf, left on_hand with it and were never sold again: by a
whole cancel (Cancellation._release) and by a cancel of the parcel's units (UnitCancellation's
stock step, in its transaction with the order). Now both give back what the reservation holds
beyond the parcel first, as a ship does (OrderActions._units_leave: the same helper,
cancellation.units_leave / leaving_moves), so only the parcel's units leave."""

from __future__ import annotations

import pytest

from core.errors import PaymentRefused
from core.status import OrderStatus, ShipmentStatus
from tests.unit.test_capture_sweep import LATE, a_pass
from tests.unit.test_delivery_write_off import PERSON
from tests.unit.test_ship_after_a_cancel_died_before_its_stock_step import cancelled_but_not_released
from tests.unit.world import Clock, World, ships_died

STOCK = [("TSHIRT", "wh-west", 10), ("CAP", "wh-east", 10)]


def refused_after_a_cancel_died(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, *lines):
    """An order of three TSHIRTs (and `lines`) two of which a cancel took off, its function dying
    before its stock step; then the TSHIRT parcel's ship died after its capture, the order was held
    for a person to confirm it left, and its carrier reported it delivered, the gateway refusing the
    capture. The order and that parcel."""
    order = world.allocated(("TSHIRT", 3), *lines)
    west = world.shipment_at(order, "wh-west")
    cancelled_but_not_released(world, monkeypatch, order.id, order.lines[0].line_id)
    assert world.level("TSHIRT", "wh-west") == (10, 3, 7)
    ships_died(world, monkeypatch, order.id, [west])
    clock.advance(**LATE)
    assert a_pass(world, clock).held == [order.id]
    world.gateway.script("capture", "refuse")
    with pytest.raises(PaymentRefused):
        world.actions.deliver(order.id, west, actor="key_carrier")
    world.gateway.script("capture", "approve")
    refused = world.order(order.id)
    assert refused.parcels_refused() == [west] and refused.stock_owed
    assert [item.quantity for item in refused.shipment(west).lines] == [1]
    assert world.level("TSHIRT", "wh-west") == (10, 3, 7)
    return refused, west


def test_a_whole_cancel_writing_off_the_parcel_takes_only_its_units_out_of_on_hand(world, clock, monkeypatch):
    order, west = refused_after_a_cancel_died(world, clock, monkeypatch)

    cancelled = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON)

    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.shipment(west).status is ShipmentStatus.CANCELLED
    # Before: (7, 0, 7), the two cancelled units gone from on_hand with the one that left.
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)
    assert world.held_for(order.id) == {}
    world.actions.release_owed_stock(world.order(order.id))
    again = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON)
    assert again.version == world.order(order.id).version
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)


def test_a_cancel_of_the_parcels_units_writing_it_off_takes_only_its_units_out_of_on_hand(world, clock, monkeypatch):
    order, west = refused_after_a_cancel_died(world, clock, monkeypatch, ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    assert world.actions.ship(order.id, east, None, actor="key_wh").status is OrderStatus.PARTIALLY_SHIPPED
    units = {item.line_id: item.quantity for item in order.shipment(west).lines}

    written = world.actions.cancel(order.id, "written off", actor=PERSON, lines=units, request_key="k1")

    assert written.shipment(west).status is ShipmentStatus.CANCELLED
    assert not written.stock_owed
    # Before: (7, 0, 7).
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)
    assert world.level("CAP", "wh-east") == (9, 0, 9)
    world.actions.cancel(order.id, "written off", actor=PERSON, lines=units, request_key="k1")
    world.actions.release_owed_stock(world.order(order.id))
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)
