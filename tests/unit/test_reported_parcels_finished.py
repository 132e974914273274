"""A parcel a carrier reported delivered whose report's function died after marking it
(Order.reported_delivered) and that nobody reports again. Before: it sat `pending`, marked, the
order `allocated`, in no index any pass reads, until the jeopardy scan found the order 48 h late
and held it for a person to confirm whether a parcel its carrier had seen delivered left (its
capture refunded). Now the reconciler's kept-back pass finishes it (Order.reported_to_finish: the
kept-back partition of by_pending_refund, never on the typical order): shipped under the dead
ship's capture request (the same key: no second capture) and delivered at the carrier's time;
idempotent under the pass run twice or racing the carrier's retry; a refusal of that capture is
recorded as the report's is, and the pass asks no more. A person's hold over such an order is
refused (409 naming the parcel), and a person's release leaves no system hold over it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import payment_keys
from core.errors import InvalidTransition, NoPaymentPlugin
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.jeopardy import REPORTED_REASON
from core.refund_service import KeptBackSweep
from core.status import OrderStatus, ShipmentStatus
from functions.adapters.dynamodb import KEPT_BACK_KEY, index_attributes
from tests.unit.test_capture_sweep import (
    LATE,
    STOCK,  # the stock of the `world` fixture too
    a_pass,
)
from tests.unit.test_delivery_reports import held_for_parcels, the_ship_dies
from tests.unit.test_kept_back_sweep import InMemoryKeptBackRefunds
from tests.unit.test_payment_truth import Removed
from tests.unit.world import Clock, Died, World, a_ship_that_died, build_world, ships_died

ACTOR = "reconciler"
AFTER = timedelta(minutes=15)


def kept_back_pass(world: World, clock: Clock):
    """The reconciler's kept-back pass as bootstrap wires it, over the orders the adapter indexes."""
    sweep = KeptBackSweep(
        InMemoryKeptBackRefunds(world), world.orders, world.actions.refund_kept_back, clock,
        release_stock=world.actions.release_owed_stock, after=AFTER,
    )  # fmt: skip
    return sweep.run(ACTOR)


def marked_and_left(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch):
    """An allocated order whose ship died after the gateway captured, then whose carrier's report
    died once it had marked the parcel (before its ship): the order, the shipment and the
    carrier's time."""
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    clock.advance(minutes=20)
    arrived = clock.now - timedelta(minutes=10)
    with monkeypatch.context() as patched:
        the_ship_dies(world, patched)
        with pytest.raises(Died):
            world.actions.deliver(order.id, shipment_id, actor="key_carrier", delivered_at=arrived)
    marked = world.order(order.id)
    assert marked.status is OrderStatus.ALLOCATED and marked.parcels_reported() == [shipment_id]
    return marked, shipment_id, arrived


def test_the_kept_back_pass_ships_and_delivers_a_marked_parcel_under_its_standing_capture_request(
    world, clock, monkeypatch
):
    marked, shipment_id, arrived = marked_and_left(world, clock, monkeypatch)
    assert index_attributes(marked)["refund_key"] == {"S": KEPT_BACK_KEY}
    assert kept_back_pass(world, clock).reported_finished == {}  # its report's function may still run
    clock.advance(minutes=16)

    done = kept_back_pass(world, clock)

    after = world.order(marked.id)
    parcel = after.shipment(shipment_id)
    assert done.reported_finished == {marked.id: [shipment_id]} and not done.failed
    assert (after.status, parcel.status, parcel.shipped_at, parcel.delivered_at) == (
        OrderStatus.DELIVERED, ShipmentStatus.DELIVERED, arrived, arrived,
    )  # fmt: skip
    assert after.reported_delivered == [] and after.captures_requested == []
    # Asked again under the dead ship's key, answered with the capture it made: never a second.
    assert world.gateway.keys("capture") == [payment_keys.capture(marked.id, shipment_id)] * 2
    assert after.payment.captured == after.totals.grand_total and world.spy.refunded == []
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
    assert "refund_key" not in index_attributes(after)

    clock.advance(minutes=16)
    assert kept_back_pass(world, clock).reported_finished == {}  # run again: nothing more
    assert world.order(marked.id).version == after.version
    types = [e.type.value for e in world.history(marked.id)]
    assert (types.count("shipment_shipped"), types.count("shipment_delivered")) == (1, 1)


def test_the_pass_racing_the_carriers_retry_records_the_parcel_once(world, clock, monkeypatch):
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    real = world.orders.update
    raced: list[bool] = []

    def update(order, expected, entries, **conditions):
        if not raced and entries and entries[0].type.value == "shipment_shipped" and entries[0].actor == ACTOR:
            raced.append(True)
            world.actions.deliver(marked.id, shipment_id, actor="key_carrier")  # lands first
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)

    kept_back_pass(world, clock)

    after = world.order(marked.id)
    assert raced and after.status is OrderStatus.DELIVERED and after.reported_delivered == []
    assert after.payment.captured == after.totals.grand_total and world.spy.refunded == []
    assert set(world.gateway.keys("capture")) == {payment_keys.capture(marked.id, shipment_id)}
    types = [e.type.value for e in world.history(marked.id)]
    assert (types.count("shipment_shipped"), types.count("shipment_delivered")) == (1, 1)
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_parcel_marked_then_released_by_a_person_is_finished_by_the_pass(world, clock, monkeypatch):
    # A hold naming two parcels, one reported (marked, the hold narrowed to the other); the person
    # releases the other: nobody reports the first again, nor ships it.
    held, (first, _) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)
    arrived = clock.now - timedelta(hours=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier", delivered_at=arrived)
    assert "refund_key" not in index_attributes(world.order(held.id))  # held: it ships once released
    Holds(world.orders, clock).release(held.id, ReleaseRequest(note="the cap never left"), "key_ops")
    clock.advance(minutes=16)

    assert kept_back_pass(world, clock).reported_finished == {held.id: [first]}

    after = world.order(held.id)
    parcel = after.shipment(first)
    assert (parcel.status, parcel.delivered_at, after.status) == (
        ShipmentStatus.DELIVERED, arrived, OrderStatus.PARTIALLY_SHIPPED,
    )  # fmt: skip
    assert after.reported_delivered == []


def test_a_refused_capture_is_recorded_as_the_reports_and_the_pass_asks_no_more(world, clock, monkeypatch):
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    world.gateway.script("capture", "refuse")

    done = kept_back_pass(world, clock)

    after = world.order(marked.id)
    assert done.reported_given_up == {marked.id: [shipment_id]} and done.reported_finished == {}
    assert after.shipment(shipment_id).status is ShipmentStatus.PENDING
    assert after.parcels_reported() == [shipment_id]  # still marked: nothing puts its units back on sale
    assert after.reported_to_finish() == [] and "refund_key" not in index_attributes(after)
    types = [e.type.value for e in world.history(marked.id)]
    assert types[-1] == "delivery_not_recorded" and types.count("delivery_not_recorded") == 1
    asked = len(world.gateway.calls)

    clock.advance(minutes=16)
    assert kept_back_pass(world, clock).reported_given_up == {}
    assert len(world.gateway.calls) == asked  # asked no more
    with pytest.raises(InvalidTransition):
        world.actions.reject(marked.id, shipment_id, "no staff", actor="key_wh")

    # A person's ship of it (the gateway willing again) finishes it, at the carrier's time.
    world.gateway.script("capture", "approve")
    shipped = world.actions.ship(marked.id, shipment_id, None, actor="key_ops")
    assert shipped.shipment(shipment_id).status is ShipmentStatus.DELIVERED and shipped.reported_delivered == []


def test_a_payment_plugin_taken_out_leaves_the_parcel_to_the_pass_once_it_is_back(clock, monkeypatch):
    # Nobody asked the gateway: no refusal is recorded and nothing is left to a person.
    removed = Removed()
    world = build_world(STOCK, removed, clock=clock)
    marked, shipment_id, arrived = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    removed.gone = True

    with pytest.raises(NoPaymentPlugin):
        world.actions.finish_reported(world.order(marked.id), ACTOR)

    after = world.order(marked.id)
    assert after.shipment(shipment_id).status is ShipmentStatus.PENDING
    assert after.reported_to_finish() == [shipment_id]  # the next pass asks again
    assert "delivery_not_recorded" not in [e.type.value for e in world.history(marked.id)]

    removed.gone = False
    clock.advance(minutes=16)
    assert kept_back_pass(world, clock).reported_finished == {marked.id: [shipment_id]}
    assert world.order(marked.id).shipment(shipment_id).delivered_at == arrived


def test_a_gateway_down_leaves_the_parcel_for_the_next_pass(world, clock, monkeypatch):
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    world.gateway.script("capture", "transient")

    done = kept_back_pass(world, clock)

    assert marked.id in done.gateway_down and done.reported_finished == {}
    assert done.reported_given_up == {}  # waiting for the gateway, not left to a person
    between = world.order(marked.id)
    assert between.reported_to_finish() == [shipment_id]
    assert index_attributes(between)["refund_key"] == {"S": KEPT_BACK_KEY}

    world.gateway.script("capture", "approve")
    clock.advance(minutes=16)
    assert kept_back_pass(world, clock).reported_finished == {marked.id: [shipment_id]}
    assert world.order(marked.id).status is OrderStatus.DELIVERED


def test_a_person_cannot_put_an_order_with_a_marked_parcel_on_hold(world, clock, monkeypatch):
    # A hold means nothing of the order ships while it stands; the marked parcel has left (as a
    # shipped one has: a partly shipped order cannot be held). Before: held, the parcel left
    # pending under a hold the hold expiry would then try to cancel (refused for the parcel, every pass).
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)

    with pytest.raises(InvalidTransition) as raised:
        Holds(world.orders, clock).hold(marked.id, HoldRequest(reason="fraud_review"), "key_ops")

    assert [d["shipment_id"] for d in raised.value.details] == [shipment_id]
    assert world.order(marked.id).version == marked.version


def first_reported_on_a_hold_for_both(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch):
    """An order of two parcels whose ships died, held for both before the scan's pass settled their
    captures (it died after the hold): both requests stand. The carrier then reported the first
    (marked, the hold narrowed to the second). The order, and the two shipments."""
    order = world.allocated(("TSHIRT", 2), ("CAP", 1))
    shipment_ids = [s.id for s in order.shipments]
    ships_died(world, monkeypatch, order.id, shipment_ids)
    clock.advance(**LATE)
    with monkeypatch.context() as patched:
        patched.setattr(
            "core.cancellation.Cancellation.settle_capture_requests",
            lambda *args, **kwargs: (_ for _ in ()).throw(Died("settle")),
        )
        with pytest.raises(Exception):  # noqa: B017 - the pass reports it failed on the order
            a_pass(world, clock)
    held = world.order(order.id)
    assert held.status is OrderStatus.ON_HOLD and held.unfinished_ships() == shipment_ids
    first, second = shipment_ids
    with pytest.raises(InvalidTransition):
        world.actions.deliver(order.id, first, actor="key_carrier")
    assert world.order(order.id).hold.confirms_ships == [second]
    return order, first, second


def test_a_persons_release_leaves_no_hold_for_a_parcel_its_carrier_reported(world, clock, monkeypatch):
    # The person releases the second parcel's hold. Before: the release held the order again, for
    # a person to confirm the first, which its carrier had seen delivered.
    order, first, _ = first_reported_on_a_hold_for_both(world, clock, monkeypatch)

    released = Holds(world.orders, clock).release(order.id, ReleaseRequest(note="the cap never left"), "key_ops")

    assert (released.status, released.hold) == (OrderStatus.ALLOCATED, None)
    assert released.reported_to_finish() == [first]


def test_a_late_order_whose_marked_parcel_was_given_up_is_marked_late_for_that_parcel(world, clock, monkeypatch):
    # The pass met the gateway's refusal and gave the parcel up: the order stays `allocated`, and
    # the scan marks it late once past 48 h. Before, its reason was a warehouse's delay's
    # (`allocated for longer than 2d`): the parcel had left; the reason now says so.
    marked, shipment_id, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    world.gateway.script("capture", "refuse")
    assert kept_back_pass(world, clock).reported_given_up == {marked.id: [shipment_id]}
    clock.advance(**LATE)

    assert a_pass(world, clock).held == []  # no capture request stands: nothing to hold it for

    late = world.order(marked.id)
    assert late.status is OrderStatus.ALLOCATED and late.jeopardy is not None
    assert late.jeopardy.reason == f"allocated for longer than 2d{REPORTED_REASON} ({shipment_id})"


def test_a_gateway_found_down_on_one_marked_parcel_is_not_asked_for_the_next_one_of_its_method(
    world, clock, monkeypatch
):
    # Two orders paid the same way, each with a parcel its carrier reported delivered left to the
    # pass. The gateway is down for the first one's capture (its retries spent): the second waits for
    # the next pass with the rest its method owes, not asked through the same outage in this one.
    first, first_parcel, _ = marked_and_left(world, clock, monkeypatch)
    second, second_parcel, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    world.gateway.script("capture", "transient")
    asked = len(world.gateway.keys("capture"))

    done = kept_back_pass(world, clock)

    assert list(done.gateway_down) == [first.id] and done.reported_finished == {}
    tried = world.gateway.keys("capture")[asked:]
    assert tried and all(key.startswith(first.id) for key in tried)
    assert world.order(second.id).reported_to_finish() == [second_parcel]
    assert world.order(first.id).reported_to_finish() == [first_parcel]


def test_a_kept_back_pass_of_at_most_one_order_asked_finishes_one_marked_parcel_and_leaves_the_next(
    world, clock, monkeypatch
):
    first, first_parcel, _ = marked_and_left(world, clock, monkeypatch)
    second, second_parcel, _ = marked_and_left(world, clock, monkeypatch)
    clock.advance(minutes=16)
    one_at_a_time = KeptBackSweep(
        InMemoryKeptBackRefunds(world), world.orders, world.actions.refund_kept_back, clock,
        release_stock=world.actions.release_owed_stock, after=AFTER, limit=1,
    )  # fmt: skip

    assert one_at_a_time.run(ACTOR).reported_finished == {first.id: [first_parcel]}
    assert world.order(second.id).reported_to_finish() == [second_parcel]
    assert one_at_a_time.run(ACTOR).reported_finished == {second.id: [second_parcel]}
