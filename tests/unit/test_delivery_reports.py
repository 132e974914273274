"""A carrier's delivery report of a parcel whose ship died after its capture (the parcel still
`pending`): proof it left. The report marks the parcel (Order.reported_delivered) in the write
that ends what waited on it, so a function that dies before its ship leaves nothing that could put
the parcel's units back on sale, and a report sent again finishes the ship; the ship and delivery
take the carrier's time; a hold naming two parcels is answered for the one reported; a person's
release that wins the race for the hold leaves the report as it would be had it come second."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import payment_keys
from core.errors import Conflict, InvalidTransition
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.jeopardy import REPORTED_REASON
from core.models import LineInput, Order, OrderEdit
from core.status import OrderStatus, ShipmentStatus
from plugins.testing.memory import InMemoryLateOrders
from tests.unit.test_capture_sweep import (
    LATE,
    STOCK,  # noqa: F401 (the stock of the `world` fixture)
    a_pass,
)
from tests.unit.test_parcels_to_confirm import held_for_a_parcel
from tests.unit.world import Clock, Died, World, dies_before_recording, ships_died


def held_for_parcels(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, *lines: tuple[str, int], dead: int = 1
):
    """An allocated order whose first `dead` parcels' ships died after their captures, held by the
    scan's pass for a person to confirm whether they left: the order and those shipments."""
    order = world.allocated(*(lines or [("TSHIRT", 2)]))
    shipment_ids = [s.id for s in order.shipments[:dead]]
    ships_died(world, monkeypatch, order.id, shipment_ids)
    clock.advance(**LATE)
    assert a_pass(world, clock).held == [order.id]
    held = world.order(order.id)
    assert held.parcels_to_confirm() == shipment_ids
    return held, shipment_ids


def the_ship_dies(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's function dies once its report is written, before the ship records anything."""

    def dies(*args, **kwargs):
        raise Died("ship")

    monkeypatch.setattr(world.actions, "ship", dies)


def test_a_report_whose_function_dies_before_its_ship_leaves_the_parcel_that_nothing_can_put_back_on_sale(
    world, clock, monkeypatch
):
    # The report's release and its ship are two writes. Dying between them left the order
    # `allocated`, no hold, the parcel pending with nothing but the history saying a carrier saw it
    # delivered: a reject (or an edit, a cancel) put its units back on sale, and the carrier's retry
    # then found no such shipment (404). Now the release marks the parcel in the same write.
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)
    with monkeypatch.context() as patched:
        the_ship_dies(world, patched)
        with pytest.raises(Died):
            world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    between = world.order(held.id)
    assert (between.status, between.hold) == (OrderStatus.ALLOCATED, None)

    for refused in (
        lambda: world.actions.reject(held.id, shipment_id, "no staff", actor="key_wh"),
        lambda: world.actions.edit(held.id, between.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=1)]),
                                   actor="key_web"),
        lambda: world.actions.cancel(held.id, "changed my mind", actor="key_ops"),
        lambda: world.actions.cancel(held.id, "one fewer", actor="key_web",
                                     lines={between.shipment(shipment_id).lines[0].line_id: 1}),
    ):  # fmt: skip
        with pytest.raises(InvalidTransition) as raised:
            refused()
        assert [d["shipment_id"] for d in raised.value.details] == [shipment_id]
    after = world.order(held.id)
    assert (after.version, after.shipments, after.allocations) == (
        between.version,
        between.shipments,
        between.allocations,
    )
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)  # still reserved for the parcel
    assert after.parcels_reported() == [shipment_id]
    assert Order.model_validate_json(after.stored_json()) == after  # the mark is stored (and only there)
    assert "reported_delivered" not in after.model_dump_json()

    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    assert delivered.status is OrderStatus.DELIVERED and delivered.reported_delivered == []
    assert delivered.payment.captured == delivered.totals.grand_total
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
    types = [e.type.value for e in world.history(held.id)]
    assert (types.count("released"), types.count("shipment_shipped"), types.count("shipment_delivered")) == (1, 1, 1)


def test_a_persons_release_that_wins_the_race_for_the_hold_leaves_the_report_refused(world, clock, monkeypatch):
    # The report read the order held and the person's release landed first: the report shipped and
    # delivered the parcel all the same, beside the person's 'the parcel never left'. Now it is what
    # a report after that release is: refused (409), nothing shipped.
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)
    holds = Holds(world.orders, clock)
    real = world.orders.update
    raced: list[Order] = []

    def update(order, expected, entries, **conditions):
        if not raced and any(e.type.value == "released" and e.actor == "key_carrier" for e in entries):
            raced.append(holds.release(held.id, ReleaseRequest(note="the parcel never left"), "key_ops"))
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)

    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    after = world.order(held.id)
    assert after.version == raced[0].version and after.status is OrderStatus.ALLOCATED
    assert after.shipment(shipment_id).status is ShipmentStatus.PENDING and after.reported_delivered == []
    types = [e.type.value for e in world.history(held.id)]
    assert "shipment_shipped" not in types and types[-1] == "released"


def test_a_report_ships_and_delivers_the_parcel_at_the_carriers_time(world, clock, monkeypatch):
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)
    arrived = clock.now - timedelta(hours=30)  # the carrier delivered it before the scan held the order

    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier", delivered_at=arrived)

    parcel = delivered.shipment(shipment_id)
    assert (parcel.shipped_at, parcel.delivered_at) == (arrived, arrived)


@pytest.mark.parametrize(
    "given",
    [timedelta(hours=1), timedelta(days=-30)],
    ids=["in_the_future", "before_the_order_was_placed"],
)
def test_a_reports_time_that_cannot_be_believed_is_when_the_oms_heard(world, clock, monkeypatch, given):
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)

    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier", delivered_at=clock.now + given)

    parcel = delivered.shipment(shipment_id)
    assert (parcel.shipped_at, parcel.delivered_at) == (clock.now, clock.now)


def test_a_report_of_one_of_two_parcels_a_hold_names_answers_for_that_one_and_the_hold_waits_for_the_other(
    world, clock, monkeypatch
):
    # It was 409 with nothing kept: the hold waited for a person to confirm both parcels, though the
    # carrier had said one of them left.
    held, (first, second) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)

    with pytest.raises(InvalidTransition) as raised:
        world.actions.deliver(held.id, first, actor="key_carrier")
    assert [d["shipment_id"] for d in raised.value.details] == [second]

    waiting = world.order(held.id)
    assert (waiting.status, waiting.hold.confirms_ships, waiting.parcels_to_confirm()) == (
        OrderStatus.ON_HOLD, [second], [second],
    )  # fmt: skip
    assert second in waiting.hold.note and first not in waiting.hold.note
    assert waiting.parcels_reported() == [first]
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1
    # Sent again, it is as it was: recorded once.
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier")
    assert world.order(held.id).version == waiting.version

    # A person finds the other never left: their release is no cancel of the reported parcel.
    released = Holds(world.orders, clock).release(held.id, ReleaseRequest(note="the cap never left"), "key_ops")
    assert released.status is OrderStatus.ALLOCATED
    with pytest.raises(InvalidTransition):
        world.actions.reject(held.id, first, "no staff", actor="key_wh")

    delivered = world.actions.deliver(held.id, first, actor="key_carrier")
    assert delivered.status is OrderStatus.PARTIALLY_SHIPPED
    assert delivered.shipment(first).status is ShipmentStatus.DELIVERED
    assert delivered.shipment(second).status is ShipmentStatus.PENDING
    # The reported parcel's units left on_hand; the other's stay reserved for it.
    sku = {line.line_id: line.sku for line in held.lines}
    for shipment_id, reserved in ((first, 0), (second, held.shipment(second).lines[0].quantity)):
        parcel = held.shipment(shipment_id)
        assert world.level(sku[parcel.lines[0].line_id], parcel.location_id)[1] == reserved


def test_a_carriers_scan_of_a_reported_parcel_while_the_hold_waits_for_the_other_keeps_no_scan_of_it(
    world, clock, monkeypatch
):
    # The carrier's webhook (deliver_scanned) keeps a scan only of a parcel nothing else vouches
    # for: this one's report is recorded (its mark), which ships it once the hold ends.
    held, (first, _other) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver_scanned(held.id, first, actor="key_carrier")
    waiting = world.order(held.id)
    assert (waiting.parcels_reported(), waiting.delivery_scans) == ([first], [])

    with pytest.raises(InvalidTransition):
        world.actions.deliver_scanned(held.id, first, actor="key_carrier")

    assert world.order(held.id) == waiting
    assert "delivery_scan_kept" not in [e.type.value for e in world.history(held.id)]


def test_a_report_that_ends_a_hold_another_report_narrowed_ships_and_delivers_both_parcels(world, clock, monkeypatch):
    # The first report was answered 409 (recorded, held for the other parcel): nobody reports it again.
    held, (first, second) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier")
    arrived = clock.now - timedelta(hours=1)

    delivered = world.actions.deliver(held.id, second, actor="key_carrier", delivered_at=arrived)

    assert (delivered.status, delivered.hold, delivered.reported_delivered) == (OrderStatus.DELIVERED, None, [])
    assert delivered.shipment(second).delivered_at == arrived
    assert delivered.shipment(first).delivered_at == clock.now  # the first report gave no time
    assert delivered.payment.captured == delivered.totals.grand_total
    types = [e.type.value for e in world.history(held.id)]
    assert (types.count("released"), types.count("shipment_shipped"), types.count("shipment_delivered")) == (2, 2, 2)


def test_a_report_that_ends_the_hold_delivers_its_parcel_while_the_gateway_is_down_for_the_other_reported_one(
    world, clock, monkeypatch
):
    # The other parcel's ship is no part of this report's answer: it stays marked for a later
    # report, a person's ship or the reconciler's pass.
    held, (first, second) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier")
    world.gateway.script("capture", "approve", "transient")

    delivered = world.actions.deliver(held.id, second, actor="key_carrier")

    assert delivered.shipment(second).status is ShipmentStatus.DELIVERED
    assert (delivered.shipment(first).status, delivered.parcels_reported()) == (ShipmentStatus.PENDING, [first])
    assert delivered.hold is None


def test_a_ship_of_a_reported_parcel_records_it_delivered_at_the_carriers_time(world, clock, monkeypatch):
    # A person released the hold for the other parcel: the reported one is shipped by the location
    # (or a person), and since its carrier saw it delivered, it is recorded delivered too.
    held, (first, _) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1), dead=2)
    arrived = clock.now - timedelta(hours=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier", delivered_at=arrived)
    Holds(world.orders, clock).release(held.id, ReleaseRequest(note="the cap never left"), "key_ops")
    clock.advance(hours=1)

    shipped = world.actions.ship(held.id, first, None, actor="key_ops")

    parcel = shipped.shipment(first)
    assert (parcel.status, parcel.shipped_at, parcel.delivered_at) == (ShipmentStatus.DELIVERED, arrived, arrived)
    assert shipped.reported_delivered == [] and shipped.status is OrderStatus.PARTIALLY_SHIPPED


def test_a_late_order_whose_marked_parcels_capture_request_stands_is_neither_held_nor_refunded(
    world, clock, monkeypatch
):
    # On an order not held, the report marked the parcel and died before its ship; the dead ship's
    # request stood, and nothing (the reconciler's pass among it: its gateway down, no plugin for
    # its method) finished it within the allocated deadline. Before: the capture sweep refunded the
    # capture and held the order for a person to confirm whether a parcel its carrier had seen
    # delivered left; once they released it, the parcel was captured again under a new key. Now
    # the request is the parcel's ship's to finish under its key (Order.captures_to_settle): the
    # order is marked late for that parcel, and the carrier's retry ships it under that request.
    order = world.allocated(("TSHIRT", 2))
    shipment_id = order.shipments[0].id
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_shipped")
        with pytest.raises(Died):
            world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    with monkeypatch.context() as patched:
        the_ship_dies(world, patched)
        with pytest.raises(Died):
            world.actions.deliver(order.id, shipment_id, actor="key_carrier")
    assert world.order(order.id).parcels_reported() == [shipment_id]
    clock.advance(**LATE)

    done = a_pass(world, clock)

    late = world.order(order.id)
    assert (done.held, late.status, world.spy.refunded) == ([], OrderStatus.ALLOCATED, [])
    assert late.unfinished_ships() == [shipment_id] and late.listed_late
    assert late.jeopardy is not None and late.jeopardy.reason.endswith(f"{REPORTED_REASON} ({shipment_id})")
    assert a_pass(world, clock).held == [] and world.order(order.id).version == late.version

    delivered = world.actions.deliver(order.id, shipment_id, actor="key_carrier")

    assert (delivered.status, delivered.hold, delivered.reported_delivered) == (OrderStatus.DELIVERED, None, [])
    assert delivered.payment.captured == delivered.totals.grand_total and world.spy.refunded == []
    assert set(world.gateway.keys("capture")) == {payment_keys.capture(order.id, shipment_id)}
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_report_of_a_parcel_on_a_persons_hold_is_still_refused(world, clock, monkeypatch):
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)
    Holds(world.orders, clock).release(held.id, ReleaseRequest(note="looking"), "key_ops")
    Holds(world.orders, clock).hold(held.id, HoldRequest(reason="address_review"), "key_ops")
    before = world.order(held.id)

    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    assert world.order(held.id).version == before.version


def test_a_release_retried_under_its_key_after_a_report_ended_the_hold_it_left_answers_the_order(
    world, clock, monkeypatch
):
    # A person's release of their own hold left the system's hold for the parcel; the carrier's
    # report then ended that. Their retry (its answer lost, no idempotency record: the function died
    # after the write) was 409 'not on hold' for a release that took effect.
    order, shipment_id = held_for_a_parcel(world, clock, monkeypatch, persons=True)
    holds = Holds(world.orders, clock)
    request = ReleaseRequest(note="address checked")
    key = "api:key_ops:release-1"
    released = holds.release(order.id, request, "key_ops", request_key=key)
    assert released.parcels_to_confirm() == [shipment_id]
    delivered = world.actions.deliver(order.id, shipment_id, actor="key_carrier")
    assert delivered.status is OrderStatus.DELIVERED

    assert holds.release(order.id, request, "key_ops", request_key=key) == delivered
    assert world.order(order.id).version == delivered.version
    with pytest.raises(InvalidTransition):  # no key: a new release of an order not on hold
        holds.release(order.id, request, "key_ops")
    with pytest.raises(InvalidTransition):  # another caller's key
        holds.release(order.id, request, "key_other", request_key="api:key_other:release-1")
    with pytest.raises(Conflict) as raised:  # the key with another note
        holds.release(order.id, ReleaseRequest(note="something else"), "key_ops", request_key=key)
    assert raised.value.code == "idempotency_key_reused"
