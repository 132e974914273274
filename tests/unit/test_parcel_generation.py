"""The parcel generation (Order.rebookings) is counted where parcels are withdrawn: a version that
takes a pending parcel off the order while a parcel made again at its location would take its id
(Order.parcel_id) is refused, so no change can forget the count and let a late confirmation of the
withdrawn parcel land on its replacement."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import InvalidTransition
from core.events import OrderEvent
from core.models import LineInput, OrderEdit
from core.status import OrderStatus, check_successor
from tests.unit.world import build_world

STOCK = [("MUG", "wh-west", 10), ("CAP", "wh-east", 10)]


def test_a_change_that_withdraws_the_parcels_without_a_new_generation_is_refused():
    world = build_world(STOCK)
    order = world.allocated(("MUG", 1), ("CAP", 1))
    at = order.updated_at + timedelta(minutes=1)

    def withdraw(**fields: object):
        return order._next(
            at=at, actor="key_cs", type=OrderEvent.SOURCED_AGAIN, to=OrderStatus.AUTHORIZED,
            allocations=[], shipments=[], **fields,
        )  # fmt: skip

    with pytest.raises(InvalidTransition, match="withdrawn"):
        withdraw()
    forgot = order.model_copy(update={"shipments": [], "allocations": [], "version": order.version + 1})
    with pytest.raises(InvalidTransition, match="withdrawn"):
        check_successor(order, forgot)  # as every repository's update checks it

    new, _ = withdraw(rebookings=order.rebookings + 1)
    assert {new.parcel_id(s.location_id) for s in order.shipments}.isdisjoint({s.id for s in order.shipments})


def test_a_parcel_withdrawn_at_a_location_the_order_excludes_needs_no_new_generation():
    # A reject of a partly shipped order's parcel replaces it elsewhere: no parcel is made there again.
    world = build_world(STOCK)
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    kept = [s for s in order.shipments if s.id != west]
    excluded = order.model_copy(
        update={"shipments": kept, "excluded_locations": ["wh-west"], "version": order.version + 1}
    )
    check_successor(order, excluded)


def test_the_generation_never_goes_back():
    world = build_world(STOCK)
    order = world.allocated(("MUG", 1))
    edited = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    assert edited.rebookings == order.rebookings + 1
    back = edited.model_copy(update={"rebookings": order.rebookings, "version": edited.version + 1})
    with pytest.raises(InvalidTransition, match="generation"):
        check_successor(edited, back)


@pytest.mark.parametrize("change", ["reject", "edit", "cancel_units"])
def test_each_change_that_may_alter_the_parcels_starts_a_new_generation(change):
    # A reject or an edit sends the parcels back to be sourced; a cancel of units shrinks a pending
    # one, booked again under a new key (core.ids.booking_key).
    world = build_world(STOCK)
    order = world.allocated(("MUG", 2), ("CAP", 1))
    if change == "reject":
        world.actions.reject(order.id, world.shipment_at(order, "wh-east"), "damaged", actor="key_wh")
    elif change == "edit":
        edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=3), LineInput(sku="CAP", quantity=1)])
        world.actions.edit(order.id, order.version, edit, "key_cs")
    else:
        world.actions.cancel(order.id, "one mug fewer", actor="key_web", lines={"L1": 1})

    assert world.order(order.id).rebookings == order.rebookings + 1
