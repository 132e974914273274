"""A ship or collect records the hand-over, then its units leave on_hand; dying in between left
them reserved for good unless someone sent it again. The Orders stream's record of the hand-over
names the parcels that left (parcels_left, on the order documents), and units_left_behind makes
what their reservations still hold leave as the ship would have: only those, once, and a
reservation holding more than its parcel (a cancel of units that died before its stock step) gives
the rest back first."""

from __future__ import annotations

from typing import Any

import pytest

from core.cancellation import parcel_units, parcels_left, units_left_behind
from core.fulfillment import OrderActions
from tests.unit.test_ship_after_a_cancel_died_before_its_stock_step import cancelled_but_not_released
from tests.unit.world import World

STOCK = [("TSHIRT", "wh-west", 10), ("CAP", "wh-east", 10)]


def parcel(status: str, shipment_id: str = "shp_1") -> dict[str, Any]:
    return {"id": shipment_id, "status": status, "lines": [{"line_id": "L1", "quantity": 1}]}


@pytest.mark.parametrize(
    ("before", "after", "left"),
    [
        ("pending", "shipped", {"shp_1"}),  # a ship
        ("ready_for_pickup", "delivered", {"shp_1"}),  # a collect
        ("pending", "delivered", {"shp_1"}),  # shipped and delivered in one change
        ("shipped", "delivered", set()),  # it left with its ship
        ("shipped", "shipped", set()),  # another change of a shipped order
        ("pending", "cancelled", set()),
        ("pending", "ready_for_pickup", set()),
    ],
)
def test_a_change_names_the_parcels_it_handed_over(before: str, after: str, left: set[str]):
    other = parcel("pending", "shp_2")
    assert parcels_left({"shipments": [parcel(before), other]}, {"shipments": [parcel(after), other]}) == left


def test_a_new_order_hands_nothing_over():
    assert parcels_left(None, {"shipments": [parcel("shipped")]}) == set()


def died_after_its_record(world: World, monkeypatch: pytest.MonkeyPatch, order_id: str, shipment_id: str) -> None:
    def dies(self: OrderActions, *args: Any) -> None:
        raise TimeoutError("the function timed out after recording the ship")

    with monkeypatch.context() as patched, pytest.raises(TimeoutError):
        patched.setattr(OrderActions, "_units_leave", dies)
        world.actions.ship(order_id, shipment_id, None, actor="key_wh")


def test_what_a_ship_that_died_after_its_record_left_reserved_leaves_once(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    died_after_its_record(world, monkeypatch, order.id, west)
    shipped = world.order(order.id)
    units = parcel_units(shipped, [shipped.shipment(west)])
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)

    assert units_left_behind(world.inventory, units) == units
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
    assert world.level("CAP", "wh-east") == (10, 1, 9)  # the other parcel is not touched
    assert units_left_behind(world.inventory, units) == {}  # the record again
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_reservation_holding_more_than_its_parcel_gives_the_rest_back_before_the_parcel_leaves(world, monkeypatch):
    order = world.allocated(("TSHIRT", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    cancelled_but_not_released(world, monkeypatch, order.id, order.lines[0].line_id)
    died_after_its_record(world, monkeypatch, order.id, west)
    shipped = world.order(order.id)
    assert world.level("TSHIRT", "wh-west") == (10, 3, 7)

    moved = units_left_behind(world.inventory, parcel_units(shipped, [shipped.shipment(west)]))

    assert list(moved.values()) == [1]
    assert world.level("TSHIRT", "wh-west") == (9, 0, 9)
