"""The units of a parcel a person wrote off (its carrier reported it delivered, the gateway refused
the capture) are reserved under the order's own key (order and line) at the parcel's location until
the write-off's stock step ships them. Nothing tells those units apart from a new reservation the
order makes there under the same key, so two things must hold:

- while that step is owed (Order.stock_owed), no path sources the order again: each change that
  would is refused (Order.check_write_off_finished, called by Order._sourced_again, through which
  every such change goes), and every other path that reserves (the workflow run again, a fill, a
  change of the rules, a hold's release) leaves an order with shipments alone;
- once it is done, no stock step ships those units again: a keyed retry of the write-off that read
  the order before a reject or an edit sent it back to be sourced at the parcel's location shipped the
  new reservation's units out of on_hand (now UnitCancellation._ship_written_off ships only while
  the step is owed; the reservation stays excluded from any release).

Each state is built as a journey reaches it, or directly where none can (a backordered order that
still lists a written-off parcel), as tests/unit/test_written_off_stock_before_shipments.py does."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import InvalidTransition
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import LineInput, Order, OrderEdit
from core.status import OrderStatus as S
from core.unit_cancellation import UnitCancellation
from tests.builders import NOW
from tests.unit.test_delivery_write_off import PERSON
from tests.unit.test_reported_parcels_finished import kept_back_pass
from tests.unit.test_write_off_stock_before_sourcing_again import SPLIT, a_write_off_that_died
from tests.unit.world import World, build_world

WRITE_OFF = "capture refused: written off"


def never_oversold(world: World) -> None:
    """No stock level below zero, and none reserving more than it has: what a sale may take never
    counts a unit twice."""
    for level in world.inventory.stock.values():
        assert min(level.on_hand, level.reserved, level.available) >= 0
        assert level.available == level.on_hand - level.reserved


def _reject(world: World, order: Order, other: str) -> None:
    world.actions.reject(order.id, other, "no staff", actor="key_wh")


def _edit(world: World, order: Order, other: str) -> None:
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "key_cs")


# Each change that sends an allocated order back to be sourced, on the order as a journey leaves it.
SOURCES_AGAIN: dict[str, Callable[[World, Order, str], None]] = {"a reject": _reject, "an edit": _edit}


def _run_again(world: World, order: Order, other: str) -> None:
    # The state machine's reserving steps run again (an Express redelivery, the reconciler's restart).
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)


def _fill(world: World, order: Order, other: str) -> None:
    world.workflow.fill_backorder(order.id)


def _rules_changed(world: World, order: Order, other: str) -> None:
    world.workflow.source_again(order.id)


def _held_and_released(world: World, order: Order, other: str) -> None:
    holds = Holds(world.orders, clock=world.actions._clock, inventory=world.inventory, catalog=world.catalog)
    if order.status is not S.ON_HOLD:
        holds.hold(order.id, HoldRequest(reason="other"), actor="key_ops")
    holds.release(order.id, ReleaseRequest(), actor="key_ops")
    world.workflow.reserve_stock(order.id)  # the workflow the release starts again


# Each other path that reserves: none of them touches an order that has shipments.
RESERVES: dict[str, Callable[[World, Order, str], None]] = {
    "the workflow run again": _run_again,
    "stock arriving (a fill)": _fill,
    "a change of the sourcing rules": _rules_changed,
    "a hold and its release": _held_and_released,
}


@pytest.mark.parametrize("change", list(SOURCES_AGAIN), ids=list(SOURCES_AGAIN))
def test_a_change_that_sources_the_order_again_waits_while_a_write_off_is_owed(clock, monkeypatch, change):
    world = build_world(SPLIT, clock=clock)
    order, parcel, _, other = a_write_off_that_died(world, clock, monkeypatch)

    with pytest.raises(InvalidTransition, match="wrote off"):
        SOURCES_AGAIN[change](world, order, other)

    assert world.order(order.id).version == order.version
    assert world.level("TSHIRT", parcel.location_id) == (2, 2, 0)  # left for the write-off to ship
    clock.advance(minutes=16)
    kept_back_pass(world, clock)
    SOURCES_AGAIN[change](world, world.order(order.id), other)  # goes through once that is done
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
    never_oversold(world)


@pytest.mark.parametrize("path", list(RESERVES), ids=list(RESERVES))
def test_no_other_path_reserves_for_an_order_whose_write_off_is_owed(clock, monkeypatch, path):
    world = build_world(SPLIT, clock=clock)
    order, parcel, _, other = a_write_off_that_died(world, clock, monkeypatch)
    held = world.held_for(order.id)

    RESERVES[path](world, order, other)

    after = world.order(order.id)
    assert after.stock_owed and [s.id for s in after.written_off()] == [parcel.id]
    assert world.held_for(order.id) == held
    never_oversold(world)


@pytest.fixture
def backordered_with_a_write_off_owed(clock, monkeypatch):
    """The died write-off's order put straight into `backordered`, its written-off parcel and the
    record of stock owed kept, as no journey can leave it (only Order._sourced_again leaves an order
    with shipments before them, and it refuses while a write-off is owed): the world, the order and
    the written-off parcel."""
    world = build_world(SPLIT, clock=clock)
    died, parcel, _, _ = a_write_off_that_died(world, clock, monkeypatch)
    back = {"status": S.BACKORDERED, "shipments": [died.shipment(parcel.id)], "allocations": []}
    world.orders.orders[died.id] = died.model_copy(update=back)
    order = world.order(died.id)
    assert order.stock_owed and [s.id for s in order.written_off()] == [parcel.id]
    return world, order, parcel


def test_the_model_refuses_to_send_such_an_order_back_whichever_change_asks(backordered_with_a_write_off_owed):
    world, order, parcel = backordered_with_a_write_off_owed
    line = parcel.lines[0].line_id

    with pytest.raises(InvalidTransition, match="wrote off"):
        order.source_again(rules_version=None, at=NOW, actor="workflow")
    with pytest.raises(InvalidTransition, match="wrote off"):
        world.actions.cancel(order.id, "fewer", actor=PERSON, lines={line: 1})

    assert world.order(order.id).version == order.version
    assert world.level("TSHIRT", parcel.location_id) == (2, 2, 0)


def test_a_keyed_retry_that_read_the_write_off_before_the_order_was_sourced_again_there_leaves_its_new_units(
    clock, monkeypatch
):
    world = build_world(SPLIT, clock=clock)
    order, parcel, units, other = a_write_off_that_died(world, clock, monkeypatch)
    clock.advance(minutes=16)
    kept_back_pass(world, clock)  # the stock step done: the units that left are out of on_hand
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
    world.inventory.adjust("TSHIRT", parcel.location_id, 10, reason="count")  # more counted there since
    stock_step = UnitCancellation._stock_step

    def sourced_again_in_between(self, read: Order) -> None:
        # Between the retry's read and its stock step: the other parcel is rejected, so the order is
        # sourced again only at the written-off parcel's location, under the same key.
        _reject(world, world.order(order.id), other)
        world.workflow.reserve_stock(order.id)
        assert world.level("TSHIRT", parcel.location_id) == (10, 2, 8)
        stock_step(self, read)

    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "_stock_step", sourced_again_in_between)
        world.actions.cancel(order.id, WRITE_OFF, actor=PERSON, lines=units, request_key="w1")

    # Before: (8, 0, 8), the new reservation shipped as the written-off parcel's: the order
    # recorded units it no longer held, and their release would have found nothing.
    assert world.level("TSHIRT", parcel.location_id) == (10, 2, 8)
    world.workflow.create_shipments(order.id)
    resourced = world.order(order.id)
    (again,) = resourced.shipments
    assert again.location_id == parcel.location_id
    world.actions.ship(order.id, again.id, None, "key_wh")
    # The two units that left with the carrier counted out once, the new parcel's two once.
    assert world.level("TSHIRT", parcel.location_id) == (8, 0, 8)
    # The write-off repeated once more, and the reconciler's pass, change nothing.
    world.actions.cancel(order.id, WRITE_OFF, actor=PERSON, lines=units, request_key="w1")
    kept_back_pass(world, clock)
    assert world.level("TSHIRT", parcel.location_id) == (8, 0, 8)
    never_oversold(world)
