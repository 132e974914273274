"""A parcel a person wrote off (its carrier reported it delivered, the gateway refused the capture:
tests/unit/test_delivery_write_off.py) whose cancel died after its order write, before taking its
units out of on_hand (Order.stock_owed), then another parcel of the order rejected.

Before: the reject sent the order back to be sourced, dropping its shipments, the written-off one
with them: nothing recorded any more that those units had left with the carrier. The order's
reservation of them (keyed by order and line, at the written-off parcel's location) counted as its
own when it was sourced again there, so a new parcel took the units that had left: on_hand counted
them, and once the reconciler found the stock owed, it brought nothing out of on_hand for them.

Now a change that sends an order back to be sourced (a reject, an edit) is refused (409) while a
write-off's stock step is unfinished: the reconciler's next pass, or the write-off repeated under
its Idempotency-Key, finishes it (the units leave on_hand as a ship's do), and the change then goes
through."""

from __future__ import annotations

import pytest

from core.errors import InvalidTransition, OutOfStock
from core.models import LineInput, OrderEdit
from core.status import OrderStatus
from core.unit_cancellation import UnitCancellation
from tests.unit.test_delivery_write_off import PERSON, refused_delivery
from tests.unit.test_reported_parcels_finished import kept_back_pass
from tests.unit.world import Died, build_world

SPLIT = [("TSHIRT", "wh-west", 2), ("TSHIRT", "wh-east", 2)]  # four units: two parcels


def a_write_off_that_died(world, clock, monkeypatch, request_key: str = "w1"):
    """An order of four units over two parcels, the first reported delivered and its capture
    refused, whose person's write-off died after its order write, before its stock step: the order,
    the written-off parcel, its units and the other parcel."""
    order, written_off = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 4))
    parcel = world.order(order.id).shipment(written_off)
    units = {item.line_id: item.quantity for item in parcel.lines}

    def dies(self, order):
        raise Died("before the stock step")

    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "_stock_step", dies)
        with pytest.raises(Died):
            world.actions.cancel(order.id, "capture refused: written off", actor=PERSON, lines=units,
                                 request_key=request_key)  # fmt: skip
    died = world.order(order.id)
    assert died.stock_owed and [s.id for s in died.written_off()] == [written_off]
    assert world.level("TSHIRT", parcel.location_id) == (2, 2, 0)  # the units that left still on hand
    other = next(s.id for s in died.shipments if s.id != written_off)
    return died, parcel, units, other


def test_a_reject_waits_for_a_write_offs_stock_step_which_the_reconciler_finishes(clock, monkeypatch):
    world = build_world(SPLIT, clock=clock)
    order, parcel, _, other = a_write_off_that_died(world, clock, monkeypatch)

    with pytest.raises(InvalidTransition, match="wrote off"):
        world.actions.reject(order.id, other, "no staff", actor="key_wh")

    assert world.order(order.id).version == order.version
    clock.advance(minutes=16)
    kept_back_pass(world, clock)
    # The units that left with the carrier are out of on_hand, as a ship takes them: not on sale.
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
    assert not world.order(order.id).stock_owed
    world.actions.reject(order.id, other, "no staff", actor="key_wh")
    # Sourced again, only where the written-off parcel was (the other location rejected it): nothing
    # is on the shelf there. Before: a new parcel there took the two units that had left.
    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order.id)
    assert world.order(order.id).shipments == []
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)


def test_a_write_off_repeated_under_its_key_finishes_its_stock_step_and_lets_an_edit_through(clock, monkeypatch):
    world = build_world(SPLIT, clock=clock)
    order, parcel, units, _ = a_write_off_that_died(world, clock, monkeypatch, request_key="w2")
    one = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)])
    with pytest.raises(InvalidTransition, match="wrote off"):
        world.actions.edit(order.id, order.version, one, "key_cs")
    assert world.order(order.id).version == order.version

    world.actions.cancel(order.id, "capture refused: written off", actor=PERSON, lines=units, request_key="w2")

    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
    finished = world.order(order.id)
    assert not finished.stock_owed
    edited = world.actions.edit(order.id, finished.version, one, "key_cs")
    assert edited.status is OrderStatus.AUTHORIZED and edited.shipments == []
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
