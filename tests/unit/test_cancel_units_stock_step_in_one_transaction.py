"""A cancel of units reads the order afresh just before its stock step (UnitCancellation._stock_step),
then brings its reservations down to what that read's shipments still need, and, for a parcel it
wrote off, takes that parcel's units out of on_hand. Before, those inventory writes went out one by
one after the read, each conditional on its reservation only: another pass landing in between (a
reject that sent the order back to be sourced, the workflow reserving again under the same keys,
the reconciler's pass finishing the write-off first) was not seen, and

- a release freed the new reservation of an order still allocated: oversold, the units on sale
  while the order counts on them;
- a ship of a written-off parcel took the new reservation's units out of on_hand: undercounted,
  units on the shelf counted gone.

Now the order write that records the step (or, with nothing to record, a check of the order's status
and version) and every inventory write it implies are one transaction (OrderRepository.update_with_stock):
an order that moved on cancels it whole, and the step is decided again on the order as it then is."""

from __future__ import annotations

from core.models import Order
from core.status import OrderStatus as S
from core.unit_cancellation import UnitCancellation
from tests.unit.test_cancel_units_release_reads_the_order_again import (
    STOCK,
    rejected_and_sourced_again,
    the_new_parcel_keeps_its_unit,
)
from tests.unit.test_reported_parcels_finished import kept_back_pass
from tests.unit.test_write_off_stock_before_sourcing_again import SPLIT, a_write_off_that_died
from tests.unit.test_written_off_units_never_sourced_again import PERSON, WRITE_OFF, never_oversold
from tests.unit.world import World, build_world


def race_before_the_writes(monkeypatch, race) -> list[Order]:
    """Run `race` once, between the stock step's read of the order and its writes (the step is
    given the read from before the race). Returns the reads the step was given."""
    stock_step = UnitCancellation._stock_step
    given: list[Order] = []

    def raced(self, read: Order) -> None:
        given.append(read)
        if len(given) == 1:
            race()
        stock_step(self, read)

    monkeypatch.setattr(UnitCancellation, "_stock_step", raced)
    return given


def test_a_reject_and_a_new_reservation_between_the_read_and_the_release_are_not_released(clock, monkeypatch):
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("TSHIRT", 3))
    (parcel,) = order.shipments
    other = next(loc for _, loc, _ in STOCK if loc != parcel.location_id)

    with monkeypatch.context() as patched:
        given = race_before_the_writes(patched, lambda: rejected_and_sourced_again(world, order, parcel, other))
        world.actions.cancel(order.id, "fewer", actor="key_cs", lines={order.lines[0].line_id: 2})

    assert given[0].status is S.ALLOCATED and given[0].shipment(parcel.id).location_id == parcel.location_id
    the_new_parcel_keeps_its_unit(world, order, parcel, other)
    never_oversold(world)


def _written_off_finished_then_sourced_again_there(world: World, clock, order: Order, other: str, location: str):
    def race() -> None:
        clock.advance(minutes=16)
        kept_back_pass(world, clock)  # another pass finishes the write-off's stock step first
        assert not world.order(order.id).stock_owed
        world.inventory.adjust("TSHIRT", location, 10, reason="count")
        world.actions.reject(order.id, other, "no staff", actor="key_wh")
        world.workflow.reserve_stock(order.id)  # sourced again where the written-off parcel was
        assert world.level("TSHIRT", location) == (10, 2, 8)

    return race


def test_a_written_off_parcel_finished_and_sourced_again_between_the_read_and_the_ship_keeps_its_units(
    clock, monkeypatch
):
    world = build_world(SPLIT, clock=clock)
    order, parcel, units, other = a_write_off_that_died(world, clock, monkeypatch)
    race = _written_off_finished_then_sourced_again_there(world, clock, order, other, parcel.location_id)

    with monkeypatch.context() as patched:
        given = race_before_the_writes(patched, race)
        # The write-off repeated under its key: its step reads the order still owing it.
        world.actions.cancel(order.id, WRITE_OFF, actor=PERSON, lines=units, request_key="w1")

    assert given[0].stock_owed
    # Before: (8, 0, 8): the new reservation's units shipped as the written-off parcel's (undercount).
    assert world.level("TSHIRT", parcel.location_id) == (10, 2, 8)
    world.workflow.create_shipments(order.id)
    (again,) = world.order(order.id).shipments
    world.actions.ship(order.id, again.id, None, "key_wh")
    assert world.level("TSHIRT", parcel.location_id) == (8, 0, 8)
    never_oversold(world)


def test_the_reconcilers_pass_racing_the_same_way_keeps_them_too(clock, monkeypatch):
    world = build_world(SPLIT, clock=clock)
    order, parcel, _, other = a_write_off_that_died(world, clock, monkeypatch)
    race = _written_off_finished_then_sourced_again_there(world, clock, order, other, parcel.location_id)

    with monkeypatch.context() as patched:
        given = race_before_the_writes(patched, race)
        world.actions.release_owed_stock(world.order(order.id))

    assert given[0].stock_owed
    assert world.level("TSHIRT", parcel.location_id) == (10, 2, 8)
    never_oversold(world)
