"""A parcel made at a location after a change withdrew the order's parcel there has an id of its own
(core.ids.shipment_id_for's generation, Order.parcel_id), the same on every run of the step that
makes it; parcels made before there were generations keep theirs."""

from __future__ import annotations

import pytest

from core.errors import ParcelWithdrawn
from core.ids import shipment_id_for, shipment_ids_for, short_hash
from core.models import LineInput, OrderEdit
from core.status import OrderStatus
from tests.unit.test_sourcing_rules import twin_run_whose_units_went_to_another_order
from tests.unit.world import Died, RecordsBookings, build_world, dies_before_recording


def test_the_first_generations_id_is_the_one_every_parcel_had_before_generations():
    assert shipment_id_for("ord_a", "wh-west") == "shp_" + short_hash("ord_a#wh-west")
    assert shipment_id_for("ord_a", "wh-west", 0) == shipment_id_for("ord_a", "wh-west")


def test_each_generation_names_another_parcel_of_the_same_id_shape():
    ids = shipment_ids_for("ord_a", "wh-west", 4)
    assert ids[0] == shipment_id_for("ord_a", "wh-west")
    assert len(set(ids)) == 4
    assert all(len(i) == len(ids[0]) and i.startswith("shp_") for i in ids)
    assert shipment_id_for("ord_a", "wh-west", 1) not in shipment_ids_for("ord_a", "wh-east", 4)


def test_a_createshipments_that_died_before_its_write_names_the_replacement_the_same_when_retried(monkeypatch):
    bookings = RecordsBookings()
    world = build_world([("MUG", "wh-west", 10)], bookings)
    order = world.allocated(("MUG", 1))
    (first,) = order.shipments
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    world.workflow.reserve_stock(order.id)
    dies_before_recording(world, monkeypatch, OrderStatus.ALLOCATED.value)

    with pytest.raises(Died):
        world.workflow.create_shipments(order.id)
    monkeypatch.undo()
    world.workflow.create_shipments(order.id)

    replaced = world.order(order.id)
    (replacement,) = replaced.shipments
    assert (replacement.location_id, replacement.id != first.id) == (first.location_id, True)
    assert replacement.id == replaced.parcel_id("wh-west")
    # Both attempts asked the carrier for the same parcel under the same key: one booking, used.
    asked = [(shipment_id, key) for shipment_id, key, _, _ in bookings.asked]
    assert asked[0] == (first.id, first.id)
    assert asked[1:] == [(replacement.id, replaced.booking_key_of(replacement.id))] * 2
    assert all(b.shipment_id == first.id for b in replaced.bookings_to_cancel)
    assert replaced.location_of_parcel(first.id, ["wh-east", "wh-west"]) == "wh-west"
    assert replaced.location_of_parcel(replacement.id, ["wh-west"]) == "wh-west"
    not_yet = shipment_id_for(order.id, "wh-west", replaced.rebookings + 1)
    assert replaced.location_of_parcel(not_yet, ["wh-west"]) is None


def test_a_ship_of_a_parcel_sent_back_for_lost_reservations_is_refused_as_withdrawn_not_unknown():
    """The twin ReserveStock race of tests/unit/test_sourcing_rules.py: the order's west parcel is
    withdrawn (its units went to another order) and it is sourced again from the east. The west
    warehouse's ship of its parcel is refused naming that change, as any withdrawn parcel's is."""
    world, order_id, _ = twin_run_whose_units_went_to_another_order()
    assert world.order(order_id).shipments == []
    west = shipment_id_for(order_id, "wh-west")

    with pytest.raises(ParcelWithdrawn) as refused:
        world.actions.ship(order_id, west, tracking_number=None, actor="key_wh")

    assert refused.value.details == [{"shipment_id": west, "location_id": "wh-west", "withdrawn_by": "sourced_again"}]
