"""A cancel of units writes the order (its parcel shrunk, Order.stock_owed recorded), then brings the
order's reservations down to what its shipments still need (UnitCancellation._stock_step). When its
function dies in between, the parcel's reservation still holds the cancelled units, and a ship takes
every unit reserved under its key out of on_hand (InventoryRepository.ship). Before, a warehouse
that shipped the shrunk parcel then took the cancelled units out of on_hand with it: they stayed on
the shelf and were never sold again, and the reconciler's pass (release_owed) no longer touched a
reservation whose parcel had left. Now a ship (or a pickup's collect) first gives back what the
parcel's reservation holds beyond the parcel (OrderActions._units_leave), so only the parcel's units
leave, and the reconciler's pass then settles what the order owes without moving a unit."""

from __future__ import annotations

import pytest

from core.unit_cancellation import UnitCancellation
from tests.unit.world import World

STOCK = [("TSHIRT", "wh-west", 10), ("TSHIRT", "store-sf", 10), ("CAP", "wh-east", 10)]
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


def cancelled_but_not_released(world: World, monkeypatch: pytest.MonkeyPatch, order_id: str, line_id: str) -> None:
    """Two units of `line_id` cancelled by a request that died after its order write."""

    def died(self: UnitCancellation, order: object) -> None:
        raise RuntimeError("the function timed out")

    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "_stock_step", died)
        with pytest.raises(RuntimeError):
            world.actions.cancel(order_id, "fewer", actor="key_cs", lines={line_id: 2})
    assert world.order(order_id).stock_owed


def test_a_parcel_shipped_after_a_cancel_died_takes_only_its_own_units_out_of_on_hand(world, monkeypatch):
    order = world.allocated(("TSHIRT", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    cancelled_but_not_released(world, monkeypatch, order.id, order.lines[0].line_id)
    assert world.level("TSHIRT", "wh-west") == (10, 3, 7)

    world.actions.ship(order.id, west, None, actor="key_wh")

    # Before: (7, 0, 7), the two cancelled units gone from on_hand with the one that shipped.
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)
    assert not world.actions.release_owed_stock(world.order(order.id)).stock_owed
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)


def test_a_pickup_collected_after_a_cancel_died_takes_only_its_own_units_out_of_on_hand(world, monkeypatch):
    order = world.allocated(("TSHIRT", 3), **PICKUP)
    (parcel,) = order.shipments
    world.actions.ready(order.id, parcel.id, actor="key_store")
    cancelled_but_not_released(world, monkeypatch, order.id, order.lines[0].line_id)

    world.actions.deliver_or_collect(order.id, parcel.id, actor="key_store")

    assert world.level("TSHIRT", "store-sf") == (9, 0, 9)
    assert not world.actions.release_owed_stock(world.order(order.id)).stock_owed
    assert world.level("TSHIRT", "store-sf") == (9, 0, 9)
