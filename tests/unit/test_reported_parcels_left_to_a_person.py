"""A parcel a carrier reported delivered whose ship is not recorded (Order.reported_delivered),
read with the reconciler's kept-back pass (Order.reported_to_finish), a person's write-off
(ReportedDelivery.refused) and the capture sweep together.

Before: the pass asked again the capture of a parcel whose report the gateway had just refused
(`refused`), the person DeliveriesNotRecordedAlarm called deciding meanwhile whether to take the
money another way or write the parcel off; a parcel the pass gave up (`given_up`) whose person's
ship then died after the gateway captured was left to the capture sweep, which refunded that
capture and held the order for a person to confirm whether the parcel left; and the sweep did the
same with the request of a marked parcel on an order it held for another parcel. Now a refused
parcel is a person's alone, unless a capture asked for it stands again, which the pass finishes
under its key; the sweep never refunds or holds for a parcel its carrier reported
(Order.captures_to_settle)."""

from __future__ import annotations

import pytest

from core import payment_keys
from core.errors import PaymentRefused
from core.events import OrderEvent
from core.fulfillment import OrderActions
from core.holds import Holds, ReleaseRequest
from core.status import OrderStatus, ShipmentStatus
from tests.unit.test_capture_sweep import (
    LATE,
    STOCK,  # noqa: F401 (the stock of the `world` fixture)
    a_pass,
)
from tests.unit.test_delivery_reports import the_ship_dies
from tests.unit.test_delivery_write_off import PERSON, refused_delivery
from tests.unit.test_reported_parcels_finished import (
    ACTOR,
    first_reported_on_a_hold_for_both,
    kept_back_pass,
    marked_and_left,
)
from tests.unit.world import Died, build_world, dies_before_recording


def test_the_pass_never_asks_again_the_capture_of_a_parcel_whose_report_the_gateway_refused(world, clock, monkeypatch):
    # The report's refusal called a person (delivery_not_recorded): they may be taking the money
    # another way. Before: the pass asked the capture again 15 minutes on, under the same key (a
    # gateway willing by then took the money a second time), and recorded a second refusal, a
    # second DeliveriesNotRecorded point, for the same parcel when it refused again.
    order, shipment_id = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 2))
    assert order.reported_to_finish() == []
    asked = len(world.gateway.calls)
    clock.advance(minutes=16)

    done = kept_back_pass(world, clock)

    assert (done.reported_finished, done.reported_given_up, done.failed) == ({}, {}, {})
    assert len(world.gateway.calls) == asked and world.order(order.id).version == order.version
    # The person's write-off is theirs to make.
    written = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON)
    assert written.shipment(shipment_id).status is ShipmentStatus.CANCELLED
    assert [e.type for e in world.history(order.id)].count(OrderEvent.DELIVERY_NOT_RECORDED) == 1


def test_a_given_up_parcel_whose_persons_ship_died_after_its_capture_is_finished_by_the_pass(world, clock, monkeypatch):
    # The pass met the gateway's refusal and gave the parcel up; a person then shipped it (the
    # gateway willing again) and that ship died after the gateway captured. Before: the pass looked
    # no more (given up), and 48 h on the capture sweep refunded the capture and held the order for
    # a person to confirm whether a parcel its carrier had seen delivered left.
    marked, shipment_id, arrived = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    world.gateway.script("capture", "refuse")
    assert kept_back_pass(world, clock).reported_given_up == {marked.id: [shipment_id]}
    world.gateway.script("capture", "approve")
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_shipped")
        with pytest.raises(Died):
            world.actions.ship(marked.id, shipment_id, None, actor=PERSON)
    died = world.order(marked.id)
    assert died.unfinished_ships() == [shipment_id] and died.parcels_refused() == []
    key = world.gateway.keys("capture")[-1]
    clock.advance(minutes=16)

    done = kept_back_pass(world, clock)

    after = world.order(marked.id)
    assert done.reported_finished == {marked.id: [shipment_id]}
    assert (after.status, after.shipment(shipment_id).delivered_at) == (OrderStatus.DELIVERED, arrived)
    assert world.gateway.keys("capture")[-1] == key and world.spy.refunded == []
    assert after.payment.captured == after.totals.grand_total
    clock.advance(**LATE)
    assert a_pass(world, clock).held == [] and world.order(marked.id).version == after.version


def test_the_sweep_leaves_a_marked_parcels_capture_request_on_an_order_held_for_another(world, clock, monkeypatch):
    # Two ships died after their captures; the sweep held the order for both and died before
    # settling them. The carrier reported the first (marked: the hold narrowed to the second).
    # Before: once the order was late on hold, the sweep refunded both captures, the first's too;
    # released, the first was captured again under a new key.
    order, first, second = first_reported_on_a_hold_for_both(world, clock, monkeypatch)
    clock.advance(**LATE)

    a_pass(world, clock)

    held = world.order(order.id)
    assert held.status is OrderStatus.ON_HOLD and held.unfinished_ships() == [first]
    assert [key for _, _, key in world.spy.refunded] == [payment_keys.refund(order.id, second)]
    released = Holds(world.orders, clock).release(order.id, ReleaseRequest(note="the cap never left"), "key_ops")
    assert released.reported_to_finish() == [first]
    clock.advance(minutes=16)
    assert kept_back_pass(world, clock).reported_finished == {order.id: [first]}
    assert world.order(order.id).shipment(first).status is ShipmentStatus.DELIVERED
    assert world.gateway.keys("capture").count(payment_keys.capture(order.id, first)) == 2  # died, then finished


def test_a_parcel_written_off_between_the_passs_read_and_its_ship_is_no_failure_of_the_pass(world, clock, monkeypatch):
    # Between the pass's read of the order and its ship of the marked parcel, the carrier's report
    # sent again met the gateway's refusal and the person it called wrote the parcel off. Before:
    # the pass's delivery of a cancelled parcel was its failure (ReconcilerErrorsAlarm, 'a
    # shipment is delivered only after it has shipped') for a write-off the runbook asks for.
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    real = OrderActions.deliver
    raced: list[bool] = []

    def deliver(self, order_id, parcel, actor, *args, **kwargs):
        if actor == ACTOR and not raced:
            raced.append(True)
            world.gateway.script("capture", "refuse")
            with pytest.raises(PaymentRefused):
                real(self, order_id, parcel, "key_carrier")
            world.gateway.script("capture", "approve")
            world.actions.cancel(order_id, "capture refused: written off", actor=PERSON)
        return real(self, order_id, parcel, actor, *args, **kwargs)

    monkeypatch.setattr(OrderActions, "deliver", deliver)

    done = kept_back_pass(world, clock)

    assert raced and (done.failed, done.reported_finished, done.reported_given_up) == ({}, {}, {})
    after = world.order(marked.id)
    assert after.status is OrderStatus.CANCELLED and after.shipment(shipment_id).status is ShipmentStatus.CANCELLED


def test_a_parcel_sourced_again_where_one_was_written_off_is_not_taken_for_the_written_off_one(clock, monkeypatch):
    # A line split over two locations; the parcel from wh-east is written off, the other rejected by
    # wh-west, and the order sourced again from wh-east (restocked). The new parcel there has an id
    # of its own (Order.parcel_id); before, it had the written-off one's (shipment_id_for's first
    # generation) and inherited its mark: taken for a parcel its
    # carrier had reported delivered (a reject or a cancel of it 409, a write-off of units still on
    # the shelf let through), and its ship recorded it delivered at once, at the carrier's old time.
    world = build_world([("TSHIRT", "wh-west", 2), ("TSHIRT", "wh-east", 2)], clock=clock)
    order, written_off = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 4))
    parcel = world.order(order.id).shipment(written_off)
    units = {item.line_id: item.quantity for item in parcel.lines}
    world.actions.cancel(order.id, "capture refused: written off", actor=PERSON, lines=units, request_key="w1")
    other = next(s.id for s in world.order(order.id).shipments if s.id != written_off)
    world.inventory.set_on_hand("TSHIRT", parcel.location_id, 5, reason="count")
    world.actions.reject(order.id, other, "no staff", actor="key_wh")
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    clock.advance(hours=1)

    again = world.order(order.id)
    (new,) = again.shipments
    assert (new.location_id, new.status, again.status) == (
        parcel.location_id, ShipmentStatus.PENDING, OrderStatus.ALLOCATED,
    )  # fmt: skip
    assert new.id != written_off
    assert again.parcels_reported() == [] and again.reported_delivered == []

    shipped = world.actions.ship(order.id, new.id, None, actor="key_wh")

    parcel = shipped.shipment(new.id)
    assert (shipped.status, parcel.status, parcel.shipped_at) == (
        OrderStatus.SHIPPED,
        ShipmentStatus.SHIPPED,
        clock.now,
    )


def test_a_refused_parcel_a_persons_ship_shipped_and_died_before_delivering_is_delivered_by_the_pass(
    world, clock, monkeypatch
):
    # The gateway willing again, a person's ship of the refused parcel was captured and recorded,
    # then died before the delivery that ship records for a marked parcel. Before: the refusal kept
    # it out of the pass (given up, or now refused), so the order stayed `shipped` for good.
    order, shipment_id = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 2))
    arrived = order.reported(shipment_id).at
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.ship(order.id, shipment_id, None, actor=PERSON)
    shipped = world.order(order.id)
    assert (shipped.status, shipped.reported_to_finish()) == (OrderStatus.SHIPPED, [shipment_id])
    asked = len(world.gateway.calls)
    clock.advance(minutes=16)

    done = kept_back_pass(world, clock)

    after = world.order(order.id)
    assert done.reported_finished == {order.id: [shipment_id]} and len(world.gateway.calls) == asked
    assert (after.status, after.shipment(shipment_id).delivered_at, after.reported_delivered) == (
        OrderStatus.DELIVERED, arrived, [],
    )  # fmt: skip


def test_an_order_marked_late_before_its_parcel_was_reported_stays_listed_late(world, clock, monkeypatch):
    # Marked late (its warehouse slow), then its ship died after the gateway captured and the
    # carrier's report died once it had marked the parcel. Before: the request standing unlisted it
    # (a capture for the sweep to settle), and the scan, which leaves a marked parcel's request to
    # the pass, never marked it again: late, and in no list nor count of late orders.
    order = world.allocated(("TSHIRT", 2))
    shipment_id = order.shipments[0].id
    clock.advance(**LATE)
    a_pass(world, clock)
    assert world.order(order.id).listed_late
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_shipped")
        with pytest.raises(Died):
            world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    assert not world.order(order.id).listed_late  # a capture for the sweep, should nobody finish it
    with monkeypatch.context() as patched:
        the_ship_dies(world, patched)
        with pytest.raises(Died):
            world.actions.deliver(order.id, shipment_id, actor="key_carrier")

    marked = world.order(order.id)

    assert marked.parcels_reported() == [shipment_id] and marked.unfinished_ships() == [shipment_id]
    assert marked.listed_late and marked.jeopardy is not None
    assert a_pass(world, clock).held == [] and world.order(order.id).version == marked.version
