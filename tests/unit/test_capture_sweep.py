"""The unrecorded capture sweep: a capture a ship (or a settlement) asked the gateway for and never
recorded, on an order nobody ships or cancels again, is found by the jeopardy scan once the order is
past its status's deadline, and settled as the jeopardy handler settles it: asked again under its
key, a shipment's is refunded and its order held for a person to confirm whether the parcel left, a
settlement's is recorded; a young one is left to its request, and a refund the gateway refused is
not asked again every pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core import hookimpl, payment_keys
from core.cancellation import Cancellation
from core.capture_sweep import CapturesNotSettled, CapturesSettled, UnrecordedCaptureSweep
from core.errors import TransientError
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.jeopardy import SCAN_ACTOR, JeopardyScan, Scanned, parse_sla
from core.models import REFUND_REFUSED_REASON, Order
from core.money import Money
from core.order_changes import outage_noted_once
from core.ports import SettlementCaptures
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from plugins.testing.gateway import RecordingGateway
from plugins.testing.memory import InMemoryLateOrders
from tests.builders import location
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import (
    Clock,
    Died,
    World,
    a_ship_that_died,
    before_the_next_write,
    build_world,
    dies_before_recording,
    ships_died,
)

STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 3), ("CAP", "wh-east", 4)]
ACTOR = SCAN_ACTOR
NOTHING = CapturesSettled(settled=[], held=[], unconfirmed=[])
# Past an allocated order's deadline (48 h by default), by a minute.
LATE = {"hours": 48, "minutes": 1}


def sweep(world: World, clock: Clock) -> UnrecordedCaptureSweep:
    cancellation = Cancellation(
        world.orders, world.catalog, world.inventory, world.actions._payments, clock, void_failures=outage_noted_once
    )
    return UnrecordedCaptureSweep(world.orders, cancellation, clock, after=timedelta(minutes=15))


def jeopardy_scan(world: World, clock: Clock, sla: str = "") -> JeopardyScan:
    """The jeopardy handler's scan, handing on late orders whose capture request stands 15 minutes."""
    return JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(sla), captures_after=timedelta(minutes=15),
    )  # fmt: skip


def a_pass(world: World, clock: Clock, sla: str = "") -> CapturesSettled:
    """What the jeopardy handler does every five minutes: the scan, then the sweep over the late
    orders it handed on."""
    return sweep(world, clock).run(jeopardy_scan(world, clock, sla).run().captures_left, ACTOR)


def test_a_capture_whose_ship_died_is_refunded_and_the_order_held_once_the_order_is_past_its_deadline(
    world, clock, monkeypatch
):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    total = order.totals.grand_total
    clock.advance(hours=47)
    assert a_pass(world, clock) == NOTHING  # not late yet: its ship may still be repeated
    assert world.spy.refunded == [] and world.order(order.id).capture_request(shipment_id) is not None

    clock.advance(hours=1, minutes=1)
    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])

    after = world.order(order.id)
    assert world.gateway.keys("capture") == [payment_keys.capture(order.id, shipment_id)] * 2  # asked again
    assert [(amount, key) for _, amount, key in world.spy.refunded] == [
        (total, payment_keys.capture_reversal(order.id, shipment_id))
    ]
    assert after.captures_requested == [] and after.payment.captured.amount == 0
    assert after.payment.status is PaymentStatus.AUTHORIZED
    assert after.shipments[0].status is ShipmentStatus.PENDING
    assert (after.status, after.hold.reason, after.hold.resume_to) == (
        OrderStatus.ON_HOLD, "other", OrderStatus.ALLOCATED,
    )  # fmt: skip
    assert "confirm whether the parcel left" in after.hold.note
    held, withdrawn, reversed_ = world.history(order.id)[-3:]
    assert (held.type, held.actor, held.detail["shipment_ids"]) == (OrderEvent.ON_HOLD, ACTOR, [shipment_id])
    assert (withdrawn.type, reversed_.type) == (OrderEvent.CAPTURE_WITHDRAWN, OrderEvent.PAYMENT_CAPTURE_REVERSED)
    assert reversed_.detail["capture_reference"] and reversed_.detail["refund_reference"]
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)  # nothing left on_hand: it is not recorded shipped
    clock.advance(minutes=5)
    assert a_pass(world, clock) == NOTHING and len(world.spy.refunded) == 1


def test_a_late_order_with_no_capture_request_is_only_marked(world, clock):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(**LATE)
    scan = JeopardyScan(InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla(""))

    done = scan.run()

    assert (done.marked, done.captures_left) == ([order.id], [])


def test_a_late_order_whose_ship_is_under_way_is_judged_again_once_the_request_is_over(world, clock, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=47, minutes=55)
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):  # asked for its capture five minutes before the deadline
        world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    monkeypatch.undo()

    clock.advance(minutes=10)  # past the deadline, the request ten minutes old
    assert a_pass(world, clock) == NOTHING
    assert world.order(order.id).jeopardy is None and world.spy.refunded == []

    clock.advance(minutes=6)
    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])


def test_a_held_order_released_ships_again_under_a_new_capture_key(world, clock, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    a_pass(world, clock)

    Holds(world.orders, clock).release(order.id, ReleaseRequest(note="the parcel left"), "key_ops")
    shipped = world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.captured == order.totals.grand_total
    # The capture given back spent the order's authorization: renewed, and captured under a key naming it.
    renewed = shipped.payment.authorization
    assert renewed != order.payment.authorization
    assert world.gateway.keys("capture")[-1] == payment_keys.capture(order.id, shipment_id, 1, under=renewed)
    net = world.spy.captured_total() - sum(amount.amount for _, amount, _ in world.spy.refunded)
    assert net == shipped.payment.captured.amount


def test_a_ship_repeated_before_the_deadline_still_records_its_capture(world, clock, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    clock.advance(hours=5)
    assert a_pass(world, clock) == NOTHING

    shipped = world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.captured == order.totals.grand_total
    clock.advance(**LATE)
    assert a_pass(world, clock) == NOTHING and world.spy.refunded == []


def test_a_capture_the_gateway_refuses_when_asked_again_was_never_made_and_the_order_is_held(world, clock, monkeypatch):
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("capture", "refuse")
    clock.advance(**LATE)

    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])

    after = world.order(order.id)
    assert after.captures_requested == [] and world.spy.refunded == []
    assert after.status is OrderStatus.ON_HOLD and after.payment.captured.amount == 0
    assert world.history(order.id)[-1].type is OrderEvent.CAPTURE_NOT_MADE


def test_a_gateway_found_down_leaves_the_order_held_until_its_hold_is_late_and_the_outage_is_noted_once(
    world, clock, monkeypatch
):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    world.gateway.script("capture", "transient")
    clock.advance(**LATE)

    assert a_pass(world, clock) == CapturesSettled(settled=[], held=[order.id], unconfirmed=[])
    for _ in range(5):  # the passes of the next half hour find nothing: the order is not late on hold yet
        clock.advance(minutes=5)
        assert a_pass(world, clock) == NOTHING

    waiting = world.order(order.id)
    assert waiting.status is OrderStatus.ON_HOLD and waiting.capture_request(shipment_id) is not None
    failures = [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_CAPTURE_FAILED and h.actor == ACTOR]
    assert len(failures) == 1
    world.gateway.script("capture", "approve")
    clock.advance(hours=24)  # the hold's deadline (on_hold=24h): late again, handed on again

    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])
    assert world.order(order.id).captures_requested == [] and len(world.spy.refunded) == 1


def test_a_refused_refund_is_reported_once_then_left_for_a_person(world, clock, monkeypatch):
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)

    with pytest.raises(CapturesNotSettled) as incomplete:
        a_pass(world, clock)

    assert list(incomplete.value.failed) == [order.id] and incomplete.value.held == [order.id]
    refused = [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED]
    assert refused[-1].detail["kind"] == "refused" and refused[-1].detail["capture_reference"]
    for _ in range(3):
        clock.advance(minutes=5)
        assert a_pass(world, clock) == NOTHING
    assert [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED] == refused
    clock.advance(minutes=1)  # its last change (the hold) over `after` ago: only the refusal stops a sweep
    assert sweep(world, clock).run([order.id], ACTOR) == NOTHING  # handed on again: not asked again
    assert [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED] == refused


def test_a_second_parcels_capture_is_refunded_on_an_order_that_cannot_be_held(world, clock, monkeypatch):
    # A partly shipped order is found once partially_shipped has a deadline (OMS_SLA).
    order = world.allocated(("MUG", 1), ("CAP", 3))
    first, second = (world.shipment_at(order, location) for location in ("wh-west", "wh-east"))
    world.actions.ship(order.id, first, None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, second, None, actor="key_wh")
    monkeypatch.undo()
    before = world.order(order.id)
    clock.advance(hours=72, minutes=1)

    assert a_pass(world, clock, "partially_shipped=72h") == CapturesSettled(
        settled=[order.id], held=[], unconfirmed=[order.id]
    )

    after = world.order(order.id)
    assert after.status is OrderStatus.PARTIALLY_SHIPPED and after.captures_requested == []
    assert after.payment.captured == before.payment.captured
    assert [amount for _, amount, _ in world.spy.refunded] == [before.capture_request(second).amount]


def test_a_pass_that_died_before_its_sweep_leaves_the_late_order_to_the_next_pass(world, clock, monkeypatch):
    # The scan found the order late with a capture standing, then the jeopardy function died (its
    # timeout, a crash) before the sweep; the schedule's next pass must still settle it.
    order, _ = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    scan = jeopardy_scan(world, clock)
    assert scan.run().captures_left == [order.id]  # ...and nothing settled it

    clock.advance(minutes=5)
    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])
    assert world.order(order.id).captures_requested == [] and len(world.spy.refunded) == 1


def test_a_gateway_down_for_an_order_that_cannot_be_held_is_asked_again_by_the_next_pass(world, clock, monkeypatch):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    first, second = (world.shipment_at(order, location) for location in ("wh-west", "wh-east"))
    world.actions.ship(order.id, first, None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, second, None, actor="key_wh")
    monkeypatch.undo()
    before = world.order(order.id)
    world.gateway.script("capture", "transient")
    clock.advance(hours=72, minutes=1)

    assert a_pass(world, clock, "partially_shipped=72h") == CapturesSettled(settled=[], held=[], unconfirmed=[order.id])
    assert world.order(order.id).capture_request(second) is not None
    world.gateway.script("capture", "approve")
    clock.advance(minutes=16)  # the first pass's withdrawal is a change: its request waits `after` again

    assert a_pass(world, clock, "partially_shipped=72h") == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])
    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.captured == before.payment.captured
    assert [amount for _, amount, _ in world.spy.refunded] == [before.capture_request(second).amount]
    clock.advance(minutes=5)
    a_pass(world, clock, "partially_shipped=72h")
    assert world.order(order.id).jeopardy is not None  # settled, it is marked late like any other


def partly_shipped_with_a_second_ship_that_died(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str]:
    """An order in two parcels whose first shipped and whose second's ship died after the gateway
    captured its share: the order as the died ship left it, and the second shipment."""
    order = world.allocated(("MUG", 1), ("CAP", 3))
    first, second = (world.shipment_at(order, location) for location in ("wh-west", "wh-east"))
    world.actions.ship(order.id, first, None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, second, None, actor="key_wh")
    monkeypatch.undo()
    return world.order(order.id), second


def test_an_order_whose_next_ship_asks_its_capture_while_the_pass_settles_is_counted_settled_once_none_stands(
    world, clock, monkeypatch
):
    # A partly shipped order in three parcels: the second's ship died after its capture. While the
    # pass gives that capture back, the warehouse ships the third, whose ship dies after its capture
    # too: the order is left with a request standing, so this pass does not count it settled; the
    # pass that settles that request, once it is over, does (UnrecordedCapturesSettled: one order).
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=41.88, longitude=-87.63))
    world.inventory.set_on_hand("PEN", "wh-north", 5, reason="count")
    order = world.allocated(("MUG", 1), ("CAP", 3), ("PEN", 1))
    west, east, north = (world.shipment_at(order, at) for at in ("wh-west", "wh-east", "wh-north"))
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])
    clock.advance(**LATE)

    landed = before_the_next_write(world, monkeypatch, lambda: ships_died(world, monkeypatch, order.id, [north]))
    assert a_pass(world, clock) == CapturesSettled(settled=[], held=[], unconfirmed=[order.id])

    standing = world.order(order.id)
    assert landed and [r.shipment_id for r in standing.captures_requested] == [north]
    clock.advance(minutes=16)
    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[order.id])
    assert world.order(order.id).captures_requested == [] and len(world.spy.refunded) == 2


def test_a_second_parcels_capture_is_refunded_with_the_default_sla_once_past_the_allocated_deadline(
    world, clock, monkeypatch
):
    # API.md's default OMS_SLA gives partially_shipped the allocated deadline, from the first ship.
    before, second = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    clock.advance(hours=47)
    assert a_pass(world, clock) == NOTHING  # a parcel may still leave within the allocated deadline

    clock.advance(**LATE)
    assert a_pass(world, clock) == CapturesSettled(settled=[before.id], held=[], unconfirmed=[before.id])

    after = world.order(before.id)
    assert after.status is OrderStatus.PARTIALLY_SHIPPED and after.captures_requested == []
    assert after.jeopardy is None and after.payment.captured == before.payment.captured
    assert [amount for _, amount, _ in world.spy.refunded] == [before.capture_request(second).amount]
    clock.advance(minutes=5)
    assert a_pass(world, clock) == NOTHING  # settled: not handed on again...
    assert world.order(before.id).jeopardy.status is OrderStatus.PARTIALLY_SHIPPED  # ...but marked late as any other


def test_a_partly_shipped_order_with_no_capture_request_is_marked_late_on_the_allocated_deadline(world, clock):
    # Its status had no deadline by default: the scan read it, noted it read, and marked nothing,
    # however long its second parcel waited.
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    clock.advance(hours=47)
    assert scan_pass(world, clock) == (Scanned(), NOTHING)
    clock.advance(hours=1, minutes=1)

    assert scan_pass(world, clock) == (Scanned(marked=[order.id], in_jeopardy=1), NOTHING)
    after = world.order(order.id)
    assert after.jeopardy.reason == "partially_shipped for longer than 2d" and not after.scan_read


def test_a_cancel_whose_refund_could_not_be_made_is_finished_refund_then_void(world, clock, monkeypatch):
    # A cancelled order is never late; one handed on, then cancelled before the sweep read it.
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "transient")
    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")
    assert cancelled.payment.status is PaymentStatus.AUTHORIZED and world.spy.voided == []
    world.gateway.script("refund", "approve")
    clock.advance(minutes=16)

    assert sweep(world, clock).run([order.id], ACTOR) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])

    after = world.order(order.id)
    assert (after.status, after.payment.status, after.captures_requested) == (
        OrderStatus.CANCELLED, PaymentStatus.VOIDED, [],
    )  # fmt: skip
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]
    assert world.spy.voided == [order.payment.authorization]


def test_a_gateway_found_down_for_a_cancelled_order_is_not_asked_for_the_next_one(world, clock, monkeypatch):
    # Two cancels whose refunds could not be made, through one gateway: found down finishing the
    # first, it is not asked again in the pass for the second (each ask costs the client's retries).
    first, first_shipment = a_ship_that_died(world, monkeypatch)
    second, second_shipment = a_ship_that_died(world, monkeypatch, ("MUG", 1))
    world.gateway.script("refund", "transient")
    for order in (first, second):
        world.actions.cancel(order.id, "customer asked", actor="key_web")
    world.gateway.script("capture", "transient")
    clock.advance(minutes=16)
    asked_before = len(world.gateway.calls)

    assert sweep(world, clock).run([first.id, second.id], ACTOR) == NOTHING

    asked = {key for _, key in world.gateway.calls[asked_before:]}  # the client retries under one key
    assert asked == {payment_keys.capture(first.id, first_shipment)}
    assert world.order(second.id).capture_request(second_shipment) is not None  # the next pass's


def test_a_settlement_capture_whose_cancel_died_is_recorded_not_given_back(clock, monkeypatch):
    # Its order is shipped: never late, so the scan does not hand it on (the reconciler finds it
    # through its index: run_settlements, below); handed on, the sweep records it.
    world = build_world(STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    clock.advance(minutes=16)

    assert sweep(world, clock).run([order.id], ACTOR) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])

    after = world.order(order.id)
    assert after.status is OrderStatus.SHIPPED and after.captures_requested == []
    assert after.payment.captured == after.totals.grand_total and after.payment.status is PaymentStatus.CAPTURED
    assert [amount for _, amount, _ in world.spy.captured][-1] == Money.of("2.00", "USD")
    assert world.spy.refunded == []


class InMemorySettlementCaptures(SettlementCaptures):
    def __init__(self, world: World) -> None:
        self._world = world

    def requested_since_before(self, before: datetime) -> Iterator[str]:
        standing = [
            o for o in self._world.orders.orders.values()
            if o.capture_request(None) is not None and o.last_changed < before
        ]  # fmt: skip
        return iter(o.id for o in sorted(standing, key=lambda o: o.last_changed))


def a_settlement_that_died(world: World, monkeypatch: pytest.MonkeyPatch) -> Order:
    """A partly shipped order whose cancel of what was left died after the gateway captured the
    rest of its total (its shipping), before its write: the order as it then is, shipped."""
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    return world.order(order.id)


def test_the_reconciler_records_a_settlement_capture_the_scan_never_hands_on(clock, monkeypatch):
    world = build_world(STOCK, PerUnitShipping(), clock=clock)
    died = a_settlement_that_died(world, monkeypatch)
    [request] = died.captures_requested
    assert died.status is OrderStatus.SHIPPED and request.shipment_id is None
    requested = InMemorySettlementCaptures(world)
    assert sweep(world, clock).run_settlements(requested, "reconciler") == NOTHING  # its cancel may record it
    clock.advance(days=30)
    assert a_pass(world, clock) == NOTHING  # shipped: never late, never handed on

    assert sweep(world, clock).run_settlements(requested, "reconciler") == CapturesSettled(
        settled=[died.id], held=[], unconfirmed=[]
    )

    after = world.order(died.id)
    assert (after.status, after.captures_requested, after.payment.status) == (
        OrderStatus.SHIPPED, [], PaymentStatus.CAPTURED,
    )  # fmt: skip
    assert after.payment.captured == after.totals.grand_total == died.payment.captured + request.amount
    recorded = world.history(died.id)[-1]
    assert (recorded.type, recorded.actor) == (OrderEvent.PAYMENT_CAPTURED, "reconciler")
    assert (
        world.gateway.keys("capture")[-2:]
        == [payment_keys.settlement_capture(died.id, str(died.payment.captured.amount))] * 2
    )
    assert world.spy.refunded == []
    assert list(requested.requested_since_before(clock() + timedelta(days=1))) == []
    assert sweep(world, clock).run_settlements(requested, "reconciler") == NOTHING


def test_a_settlement_pass_reads_at_most_its_limit_and_leaves_a_request_the_gateway_is_down_for(clock, monkeypatch):
    world = build_world(STOCK, PerUnitShipping(), clock=clock)
    died = a_settlement_that_died(world, monkeypatch)
    requested = InMemorySettlementCaptures(world)
    clock.advance(minutes=16)
    assert sweep(world, clock).run_settlements(requested, "reconciler", limit=0) == NOTHING
    world.gateway.script("capture", "transient")

    assert sweep(world, clock).run_settlements(requested, "reconciler") == NOTHING

    assert world.order(died.id).capture_request(None) == died.capture_request(None)  # the next pass asks again
    world.gateway.script("capture", "approve")
    clock.advance(minutes=16)
    assert sweep(world, clock).run_settlements(requested, "reconciler").settled == [died.id]
    assert world.order(died.id).payment.captured == died.totals.grand_total


class CapturesDownForTest:
    """The `test` method's gateway unavailable for captures (or its plugin failing with `error`);
    other methods unaffected."""

    def __init__(self, error: Exception | None = None) -> None:
        self.down = False
        self.asked: list[str] = []
        self._error = error or TransientError("the test gateway is down")

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, method: str, order_id: str) -> None:
        if method == "test" and self.down:
            self.asked.append(order_id)
            raise self._error


def settlements_through_two_gateways(
    outage: CapturesDownForTest, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> tuple[World, list[Order], Order]:
    """Two settlements that died paid through the `test` method, whose captures `outage` now
    fails, and a younger one through another gateway that is up: the world, the two, the one."""
    world = build_world(STOCK, PerUnitShipping(), RecordingGateway("fake"), outage, clock=clock)
    down = [a_settlement_that_died(world, monkeypatch) for _ in range(2)]
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit",
                            payment={"method": "fake", "token": "tok_fake"})  # fmt: skip
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    assert world.order(order.id).capture_request(None) is not None
    clock.advance(minutes=16)
    outage.down = True
    return world, down, order


def test_a_settlement_pass_reads_past_a_gateway_found_down_to_reach_requests_through_another(clock, monkeypatch):
    # The oldest requests' gateway down took the whole of a pass's `limit`: the request behind
    # them, through another gateway that was up, waited for the outage to end (for good, with a
    # payment plugin removed), where the reconciler's other sweeps read past such orders.
    outage = CapturesDownForTest()
    world, down, order = settlements_through_two_gateways(outage, clock, monkeypatch)

    done = sweep(world, clock).run_settlements(InMemorySettlementCaptures(world), "reconciler", limit=2)

    assert done.settled == [order.id]
    assert world.order(order.id).payment.captured == world.order(order.id).totals.grand_total
    assert set(outage.asked) == {down[0].id}  # the gateway found down is asked for one order only
    assert all(world.order(o.id).capture_request(None) is not None for o in down)  # for the next pass


@pytest.mark.parametrize(
    "error", [TransientError("the test gateway is down"), RuntimeError("the test payment plugin failed")]
)
def test_a_settlement_pass_counts_an_order_whose_capture_failed_among_its_limit(clock, monkeypatch, error):
    # The gateway was asked for it (down, or its plugin failing): one of the `limit` asked a pass,
    # which bounds a pass's calls to the gateway; the request behind it waits for the next pass.
    outage = CapturesDownForTest(error)
    world, down, order = settlements_through_two_gateways(outage, clock, monkeypatch)
    requested = InMemorySettlementCaptures(world)

    if isinstance(error, TransientError):
        done = sweep(world, clock).run_settlements(requested, "reconciler", limit=1)
    else:
        with pytest.raises(CapturesNotSettled) as failed:
            sweep(world, clock).run_settlements(requested, "reconciler", limit=1)
        done = failed.value.done

    assert done == NOTHING and set(outage.asked) == {down[0].id}
    assert world.order(order.id).capture_request(None) is not None  # the next pass's


def test_a_settlement_pass_reads_no_more_orders_than_its_read_budget(clock, monkeypatch):
    # Orders read past (their gateway found down) are still read: the budget bounds a pass's reads
    # whatever the gateway says; the request behind them waits for the next pass.
    outage = CapturesDownForTest()
    world, down, order = settlements_through_two_gateways(outage, clock, monkeypatch)
    requested = InMemorySettlementCaptures(world)

    assert sweep(world, clock).run_settlements(requested, "reconciler", limit=5, max_reads=2) == NOTHING

    assert set(outage.asked) == {down[0].id} and world.order(order.id).capture_request(None) is not None


def test_two_overlapping_passes_hold_and_settle_a_ship_that_died_once_and_report_it_once(world, clock, monkeypatch):
    # Two jeopardy passes at once (a schedule's run overlapping the one before) both found the order
    # late: one held it and gave the capture back, the other lost each write and reported the order
    # held and settled as well, so ShipsToConfirm counted one parcel to confirm twice.
    import core.capture_sweep

    order, _ = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    late = jeopardy_scan(world, clock).run().captures_left
    assert late == [order.id]
    twin: list[CapturesSettled | None] = []
    modify = core.capture_sweep.modify

    def the_twin_first(*args, **kwargs):
        if not twin:
            twin.append(None)
            twin[0] = sweep(world, clock).run(late, ACTOR)  # the other pass, a moment ahead
        return modify(*args, **kwargs)

    monkeypatch.setattr(core.capture_sweep, "modify", the_twin_first)
    this = sweep(world, clock).run(late, ACTOR)

    assert twin == [CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])]
    assert this == NOTHING
    assert len(world.spy.refunded) == 1 and world.order(order.id).status is OrderStatus.ON_HOLD
    assert [e.type for e in world.history(order.id)].count(OrderEvent.ON_HOLD) == 1


@pytest.mark.parametrize("held_again", [False, True], ids=["released", "released-then-held-by-a-person"])
def test_an_order_whose_parcel_a_person_confirmed_while_an_overlapping_pass_held_it_is_not_held_again(
    world, clock, monkeypatch, held_again
):
    # Two passes found the order late with its dead ship's request standing. Between this pass's
    # read and its hold, the other held it, gave the capture back, and a person released it (the
    # parcel never left), then, maybe, held it for a review of their own. Nothing is left to confirm:
    # this pass neither holds the order again nor makes the person's hold a park no expiry ends.
    order, _ = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    late = jeopardy_scan(world, clock).run().captures_left
    assert late == [order.id]
    holds, twin = Holds(world.orders, clock), []

    def the_twin_then_a_person() -> None:
        twin.append(sweep(world, clock).run(late, ACTOR))
        holds.release(order.id, ReleaseRequest(note="the parcel never left"), "key_ops")
        if held_again:
            holds.hold(order.id, HoldRequest(reason="address_review"), "key_ops")

    landed = before_the_next_write(world, monkeypatch, the_twin_then_a_person)
    this = sweep(world, clock).run(late, ACTOR)

    assert landed and twin == [CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])]
    assert this == NOTHING and len(world.spy.refunded) == 1
    after = world.order(order.id)
    if held_again:
        assert (after.status, after.hold.reason, after.hold.parked) == (OrderStatus.ON_HOLD, "address_review", False)
    else:
        assert (after.status, after.hold) == (OrderStatus.ALLOCATED, None)
    assert [e.type for e in world.history(order.id)].count(OrderEvent.ON_HOLD) == 1 + held_again


def test_an_order_a_pass_alongside_settles_before_this_pass_holds_it_takes_no_place_in_this_pass_limit(
    world, clock, monkeypatch
):
    # Between this pass's read of the first order and its hold, the other pass held it and gave the
    # capture back: this pass asked the gateway nothing for it, so its limit of one still reaches the
    # next order, whose capture would otherwise wait a pass more.
    first, _ = a_ship_that_died(world, monkeypatch)
    second, _ = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    late = jeopardy_scan(world, clock).run().captures_left
    assert sorted(late) == sorted([first.id, second.id])
    twin: list[CapturesSettled] = []
    landed = before_the_next_write(world, monkeypatch, lambda: twin.append(sweep(world, clock).run([first.id], ACTOR)))

    this = sweep(world, clock).run([first.id, second.id], ACTOR, limit=1)

    assert landed and twin == [CapturesSettled(settled=[first.id], held=[first.id], unconfirmed=[])]
    assert this == CapturesSettled(settled=[second.id], held=[second.id], unconfirmed=[])
    assert len(world.spy.refunded) == 2 and world.order(second.id).captures_requested == []


def test_a_ship_that_died_on_an_order_marked_late_already_is_settled_by_a_later_pass(world, clock, monkeypatch):
    # The warehouse ships the late order at last and its ship dies after the gateway captured: the
    # scan reads only unmarked orders, so it never read this one again, and nobody gave the money
    # back (or recorded it) while the order sat allocated, in jeopardy, for good.
    order = world.allocated(("TSHIRT", 2))
    clock.advance(**LATE)
    assert a_pass(world, clock) == NOTHING and world.order(order.id).jeopardy is not None  # marked late
    shipment_id = order.shipments[0].id
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    monkeypatch.undo()
    assert world.order(order.id).capture_request(shipment_id) is not None
    clock.advance(minutes=5)
    assert a_pass(world, clock) == NOTHING  # its ship may still be under way

    clock.advance(minutes=11)
    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[order.id], unconfirmed=[])

    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.captured.amount == 0
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]
    assert (after.status, after.hold.resume_to) == (OrderStatus.ON_HOLD, OrderStatus.ALLOCATED)


def test_a_lengthened_deadline_leaves_the_mark_of_an_order_whose_ship_asks_its_capture_as_the_pass_unmarks(
    world, clock, monkeypatch
):
    # Read among the marked orders (listed) before the deadline it is late by was lengthened, the
    # order's ship asks its capture before the unmark lands: no longer listed, it is not the
    # unmark's (Order.listed_late); the mark stays until that ship is over.
    order = world.allocated(("TSHIRT", 2))
    clock.advance(**LATE)
    assert a_pass(world, clock) == NOTHING and world.order(order.id).listed_late  # marked late
    shipment_id = order.shipments[0].id

    def a_ship_that_dies() -> None:
        with monkeypatch.context() as patched:
            dies_before_recording(world, patched, "shipment_shipped")
            with pytest.raises(Died):
                world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    landed = before_the_next_write(world, monkeypatch, a_ship_that_dies)
    scanned, settled = scan_pass(world, clock, sla="allocated=72h")  # no longer late by 72 hours

    assert landed and (scanned.unmarked, settled) == ([], NOTHING)
    asking = world.order(order.id)
    assert asking.capture_request(shipment_id) is not None and asking.jeopardy is not None
    assert [e.type for e in world.history(order.id)].count(OrderEvent.JEOPARDY_CLEARED) == 0


def test_the_hold_expiry_never_cancels_an_order_held_to_confirm_whether_its_parcel_left(world, clock, monkeypatch):
    """Issue 10: only a business outcome ends a paid order. Its ship died (an infrastructure
    failure) and nobody knows whether the parcel left: a cancel would put units that may have left
    back on sale and void the authorization a ship again needs. It waits for a person, like a park;
    released and held again by a person, that hold expires like any other."""
    order, _ = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    assert a_pass(world, clock).held == [order.id]
    held = world.order(order.id)
    assert held.hold_expiry_counts_from is None and held.hold.parked
    assert "parked" not in held.model_dump_json()
    clock.advance(days=30)

    expiring = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(""), hold_expiry=timedelta(days=1), captures_after=timedelta(minutes=15),
    )  # fmt: skip
    assert expiring.run().expired == []

    after = world.order(order.id)
    assert (after.status, after.payment.status) == (OrderStatus.ON_HOLD, PaymentStatus.AUTHORIZED)
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8) and world.spy.voided == []
    Holds(world.orders, clock).release(order.id, ReleaseRequest(note="it never left"), "key_ops")
    Holds(world.orders, clock).hold(order.id, HoldRequest(reason="other"), "key_ops")
    clock.advance(days=2)
    assert expiring.run().expired == [order.id]


def test_a_persons_hold_met_with_the_gateway_down_is_made_a_park_once_and_settled_by_a_later_pass(
    world, clock, monkeypatch
):
    """A person held the order after its ship died: the pass that finds the gateway down still
    makes their hold a park (the expiry must not cancel it while it waits), once; the pass that
    finds the gateway up settles the capture and reports nothing held again."""
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    Holds(world.orders, clock).hold(order.id, HoldRequest(reason="address_review", note="odd address"), "key_ops")
    world.gateway.script("capture", "transient")
    clock.advance(hours=24, minutes=16)  # late on hold (on_hold=24h)

    assert a_pass(world, clock) == CapturesSettled(settled=[], held=[order.id], unconfirmed=[])
    waiting = world.order(order.id)
    assert (waiting.hold.reason, waiting.hold.note, waiting.hold.parked) == ("address_review", "odd address", True)
    assert waiting.capture_request(shipment_id) is not None
    world.gateway.script("capture", "approve")
    clock.advance(hours=24)

    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])
    after, history = world.order(order.id), world.history(order.id)
    assert after.captures_requested == [] and len(world.spy.refunded) == 1 and after.hold.parked
    parks = [h for h in history if h.type is OrderEvent.ON_HOLD and h.to_status is None]
    assert [(h.actor, h.detail["shipment_ids"]) for h in parks] == [(ACTOR, [shipment_id])]


def test_a_persons_release_of_their_hold_made_a_park_leaves_the_parcel_to_confirm_standing(world, clock, monkeypatch):
    """A person held the order after its ship died; the pass made their hold a park, the parcel to
    confirm recorded only in the history (the order shows their reason and note). Their release
    (their review done) ended the park with it: the order went back to `allocated`, its shipment
    pending, and nothing the order shows said any longer that a parcel which may have left is to
    be confirmed. Their release now ends their hold only: the order stays on the system's hold for
    the parcel (as the pass would have held it), which no hold expiry cancels; the next release is
    the parcel's confirmation and resumes the order where the person's hold stopped it."""
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    holds = Holds(world.orders, clock)
    holds.hold(order.id, HoldRequest(reason="fraud_review", note="call the customer"), "key_fraud")
    clock.advance(hours=24, minutes=16)
    assert a_pass(world, clock).held == [order.id]

    clock.advance(minutes=5)
    released = holds.release(order.id, ReleaseRequest(note="customer confirmed"), "key_fraud")

    assert (released.status, released.hold.reason, released.hold.parked, released.hold.resume_to) == (
        OrderStatus.ON_HOLD, "other", True, OrderStatus.ALLOCATED,
    )  # fmt: skip
    assert shipment_id in released.hold.note and "confirm whether the parcel left" in released.hold.note
    assert released.hold.since == clock() and released.hold_expiry_counts_from is None
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor, entry.from_status, entry.to_status) == (
        OrderEvent.RELEASED, "key_fraud", None, None,
    )  # fmt: skip
    assert (entry.detail["reason"], entry.detail["note"], entry.detail["shipment_ids"]) == (
        "fraud_review", "customer confirmed", [shipment_id],
    )  # fmt: skip
    assert a_pass(world, clock).held == []  # nothing to hold again: the capture was settled

    confirmed = holds.release(order.id, ReleaseRequest(note="the parcel never left"), "key_ops")
    assert (confirmed.status, confirmed.hold) == (OrderStatus.ALLOCATED, None)
    assert confirmed.shipments[0].status is ShipmentStatus.PENDING


def test_a_blind_retry_of_a_persons_release_of_their_hold_made_a_park_does_not_confirm_the_parcel(
    world, clock, monkeypatch
):
    """The person's release of their hold made a park leaves the order on the system's hold for the
    parcel. Their client, whose first answer was lost (a timeout), sent the same release again, with
    a new Idempotency-Key or none: that retry released the system's hold too, confirming a parcel
    nobody looked at (the order back to `allocated`, its shipment pending, as if checked). The
    retry (same caller, same note, the parcel's hold still the one their release left) now answers
    the order as it stands and changes nothing; another caller's release, or theirs with another
    note, confirms the parcel, and so does the same release a day on."""
    order, _ = a_ship_that_died(world, monkeypatch)
    holds = Holds(world.orders, clock)
    holds.hold(order.id, HoldRequest(reason="fraud_review", note="call the customer"), "key_fraud")
    clock.advance(hours=24, minutes=16)
    assert a_pass(world, clock).held == [order.id]
    clock.advance(minutes=5)
    first = holds.release(order.id, ReleaseRequest(note="customer confirmed"), "key_fraud")
    entries = len(world.history(order.id))

    clock.advance(seconds=30)
    again = holds.release(order.id, ReleaseRequest(note="customer confirmed"), "key_fraud")

    assert again == first == world.order(order.id)
    assert (again.status, again.hold.reason, again.hold.parked) == (OrderStatus.ON_HOLD, "other", True)
    assert len(world.history(order.id)) == entries
    # Their release with another note is no retry: it confirms the parcel.
    other = holds.release(order.id, ReleaseRequest(note="the parcel never left"), "key_fraud")
    assert (other.status, other.hold) == (OrderStatus.ALLOCATED, None)


@pytest.mark.parametrize("by, note, after", [
    ("key_ops", "customer confirmed", timedelta(minutes=1)),  # another caller
    ("key_fraud", None, timedelta(minutes=1)),  # another note
    ("key_fraud", "customer confirmed", timedelta(hours=24, seconds=1)),  # past a retry's window
])  # fmt: skip
def test_a_release_of_the_parcels_hold_that_is_no_retry_confirms_the_parcel(world, clock, monkeypatch, by, note, after):
    order, _ = a_ship_that_died(world, monkeypatch)
    holds = Holds(world.orders, clock)
    holds.hold(order.id, HoldRequest(reason="fraud_review"), "key_fraud")
    clock.advance(hours=24, minutes=16)
    assert a_pass(world, clock).held == [order.id]
    holds.release(order.id, ReleaseRequest(note="customer confirmed"), "key_fraud")
    clock.advance(**{"seconds": after.total_seconds()})

    confirmed = holds.release(order.id, ReleaseRequest(note=note), by)

    assert (confirmed.status, confirmed.hold) == (OrderStatus.ALLOCATED, None)
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor, entry.to_status) == (OrderEvent.RELEASED, by, OrderStatus.ALLOCATED)


def test_the_scan_counts_each_order_whose_parcel_waits_for_a_person_until_a_person_ends_that_wait(
    world, clock, monkeypatch
):
    """ShipsToConfirmAlarm watches this count, which the jeopardy scan publishes every run: an
    order held while a ship's capture request stands on it (its ship died: a held order never
    ships), however long its on_hold deadline; the same order once the sweep made the person's hold
    a park; the system's hold their release left, a blind retry of it too; an order the sweep held
    itself. Not one whose hold a person released for good, nor a cancelled one."""
    late = InMemoryLateOrders(world.orders)
    order, _ = a_ship_that_died(world, monkeypatch)
    other, _ = a_ship_that_died(world, monkeypatch, ("MUG", 1))
    holds = Holds(world.orders, clock)
    assert late.count_ships_to_confirm() == 0  # its ship may still be repeated: not held
    holds.hold(order.id, HoldRequest(reason="fraud_review"), "key_fraud")
    assert late.count_ships_to_confirm() == 1
    clock.advance(hours=48, minutes=16)
    assert a_pass(world, clock, sla="on_hold=30d").held == [other.id]  # the held one is not late yet
    assert late.count_ships_to_confirm() == 2
    clock.advance(days=30)
    assert a_pass(world, clock, sla="on_hold=30d").held == [order.id]  # the person's hold made a park
    assert late.count_ships_to_confirm() == 2
    holds.release(order.id, ReleaseRequest(), "key_fraud")
    holds.release(order.id, ReleaseRequest(), "key_fraud")  # a blind retry
    assert late.count_ships_to_confirm() == 2
    assert holds.release(order.id, ReleaseRequest(note="it never left"), "key_ops").status is OrderStatus.ALLOCATED
    assert late.count_ships_to_confirm() == 1
    world.actions.cancel(other.id, "the parcel never left", actor="key_ops")
    assert late.count_ships_to_confirm() == 0


def scan_pass(world: World, clock: Clock, sla: str = "") -> tuple[Scanned, CapturesSettled]:
    """A pass as a_pass, with what the scan did as well as what the sweep did."""
    scanned = jeopardy_scan(world, clock, sla).run()
    return scanned, sweep(world, clock).run(scanned.captures_left, ACTOR)


def test_a_partly_shipped_order_whose_refund_the_gateway_refused_is_listed_late_for_a_person(world, clock, monkeypatch):
    # It cannot be held, and the sweep asks a refused refund no more: after the pass that met the
    # refusal, nothing listed or counted the order, and every pass read it and handed it on for
    # nothing. Marked on its status's deadline (the allocated one by default), the mark outlives
    # the refund.
    before, second = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled) as incomplete:
        a_pass(world, clock)
    assert incomplete.value.done.unconfirmed == [before.id]
    late = InMemoryLateOrders(world.orders)
    clock.advance(minutes=16)  # its last change (the request taken back from its ship) is over

    assert scan_pass(world, clock) == (Scanned(marked=[before.id], in_jeopardy=1), NOTHING)

    after = world.order(before.id)
    assert after.status is OrderStatus.PARTIALLY_SHIPPED and after.capture_request(second) is not None
    assert after.jeopardy.status is OrderStatus.PARTIALLY_SHIPPED and after.jeopardy_on_deadline
    assert after.jeopardy.reason == f"partially_shipped for longer than 2d{REFUND_REFUSED_REASON}"
    assert after.listed_late and late.count_in_jeopardy() == 1
    assert late.unmarked_since_before(OrderStatus.PARTIALLY_SHIPPED, clock(), 100) == []  # read no more
    for _ in range(3):
        clock.advance(minutes=5)
        assert scan_pass(world, clock) == (Scanned(in_jeopardy=1), NOTHING)
    assert [e.type for e in world.history(before.id)].count(OrderEvent.JEOPARDY) == 1
    assert len([e for e in world.history(before.id) if e.type is OrderEvent.PAYMENT_REFUND_FAILED]) == 1


def test_a_held_order_whose_refund_the_gateway_refused_is_marked_once_and_takes_no_candidates_place(
    world, clock, monkeypatch
):
    # Late on hold, it was handed on every pass for a refund the sweep never asks again: each pass
    # it took one of the `limit` places of the on_hold candidates, and it was never listed late.
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled):
        a_pass(world, clock)
    late = InMemoryLateOrders(world.orders)
    clock.advance(hours=24, minutes=1)  # late for its hold (on_hold=24h)

    assert scan_pass(world, clock) == (Scanned(marked=[order.id], in_jeopardy=1), NOTHING)

    after = world.order(order.id)
    assert (after.status, after.jeopardy.status) == (OrderStatus.ON_HOLD, OrderStatus.ON_HOLD)
    assert after.captures_requested and after.listed_late
    assert late.unmarked_since_before(OrderStatus.ON_HOLD, clock(), 100) == []
    clock.advance(minutes=5)
    assert scan_pass(world, clock) == (Scanned(in_jeopardy=1), NOTHING)
    assert len(world.spy.refunded) == 0


def held_late_with_its_refund_refused(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Order:
    """An order whose ship died (a_ship_that_died), parked on hold by a pass whose refund of the
    capture the gateway refused, then late for its hold (on_hold=24h)."""
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled):
        a_pass(world, clock)
    clock.advance(hours=24, minutes=1)
    return order


def test_a_mark_for_a_refused_refund_outlives_a_deadline_lengthened_past_it(world, clock, monkeypatch):
    # A lengthened deadline unmarks the orders it makes no longer late, but not this one: the money
    # a ship that died took stands, and only its listing tells a person to settle it.
    order = held_late_with_its_refund_refused(world, clock, monkeypatch)
    assert scan_pass(world, clock) == (Scanned(marked=[order.id], in_jeopardy=1), NOTHING)
    clock.advance(minutes=5)

    assert scan_pass(world, clock, sla="on_hold=60d") == (Scanned(in_jeopardy=1), NOTHING)

    assert world.order(order.id).listed_late


def test_an_order_marked_for_a_refused_refund_that_changes_is_asked_again_then_marked_again(world, clock, monkeypatch):
    order = held_late_with_its_refund_refused(world, clock, monkeypatch)
    assert scan_pass(world, clock)[0].marked == [order.id]
    marked = world.order(order.id)
    changed, _ = marked._bookkeeping(at=clock())  # a change since the mark (a person's, say)
    world.orders.update(changed, marked, [])
    assert not changed.listed_late and InMemoryLateOrders(world.orders).count_in_jeopardy() == 0
    clock.advance(minutes=16)

    with pytest.raises(CapturesNotSettled):  # handed on, and the refund asked again: refused again
        scan_pass(world, clock)
    clock.advance(minutes=5)
    assert scan_pass(world, clock) == (Scanned(marked=[order.id], in_jeopardy=1), NOTHING)

    assert [e.type for e in world.history(order.id)].count(OrderEvent.JEOPARDY) == 2
    assert len([e for e in world.history(order.id) if e.type is OrderEvent.PAYMENT_REFUND_FAILED]) == 2


def test_an_order_a_pass_alongside_marks_for_its_refused_refund_is_marked_once(world, clock, monkeypatch):
    # Two overlapping passes judge the late held order: the one alongside marks it for the refund
    # the gateway refused between this pass's judgement and its history read. Listed already, it
    # is this pass's to mark no more: one mark, one jeopardy entry, and no order reported failed
    # (a second mark is refused: InvalidTransition, the order read past).
    order = held_late_with_its_refund_refused(world, clock, monkeypatch)
    real, alongside = world.orders.history, []

    def history(order_id: str, **kwargs: object):  # type: ignore[no-untyped-def]
        if not alongside:
            alongside.append(None)  # its own history read goes straight through
            alongside[0] = scan_pass(world, clock)
        return real(order_id, **kwargs)

    monkeypatch.setattr(world.orders, "history", history)
    scanned, settled = scan_pass(world, clock)

    assert alongside == [(Scanned(marked=[order.id], in_jeopardy=1), NOTHING)]
    assert (scanned.marked, settled) == ([], NOTHING)
    assert world.order(order.id).listed_late
    assert [e.type for e in world.history(order.id)].count(OrderEvent.JEOPARDY) == 1


def test_a_late_order_whose_ship_is_under_way_is_not_handed_on_to_the_sweep_until_its_request_is_over(
    world, clock, monkeypatch
):
    # A request younger than captures_after may belong to a ship under way: handed on, the sweep
    # would read the order's whole history for nothing every pass until it is over.
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=47, minutes=55)
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):  # asked for its capture five minutes before the deadline
        world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    monkeypatch.undo()
    clock.advance(minutes=10)  # past the deadline, the request ten minutes old

    assert scan_pass(world, clock) == (Scanned(), NOTHING)

    clock.advance(minutes=6)
    assert scan_pass(world, clock)[0].captures_left == [order.id]


def refund_refused_late_on_hold(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Order:
    """A ship that died, its capture's refund refused by the gateway, the order held for it and
    late for its hold (on_hold=24h), not marked yet."""
    order = held_late_with_its_refund_refused(world, clock, monkeypatch)
    return order


def test_an_index_behind_a_mark_for_a_refused_refund_fails_no_pass_and_reports_no_second_mark(
    world, clock, monkeypatch
):
    # The index may answer an order marked a moment ago (eventually consistent, or a pass running
    # alongside): judged again, it is listed already, so the pass writes nothing and reports no mark.
    order = refund_refused_late_on_hold(world, clock, monkeypatch)
    assert scan_pass(world, clock)[0].marked == [order.id]
    once = world.snapshot(order.id)
    clock.advance(minutes=5)

    class Behind(InMemoryLateOrders):
        def unmarked_since_before(self, status, before, limit):
            found = super().unmarked_since_before(status, before, limit)
            return [order.id, *found] if status is OrderStatus.ON_HOLD else found

    done = JeopardyScan(
        Behind(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(""), captures_after=timedelta(minutes=15),
    ).run()  # fmt: skip

    assert done == Scanned(in_jeopardy=1)
    assert world.snapshot(order.id) == once


def test_an_order_changed_while_its_refused_refund_is_judged_is_handed_on_to_be_asked_again_not_marked(
    world, clock, monkeypatch
):
    # A change since the refusal (a person's, say) makes the refund one to ask again: the mark for
    # the refusal, decided on the history read before that change, is not written.
    order = refund_refused_late_on_hold(world, clock, monkeypatch)
    read = world.orders.history

    def changed_after_read(order_id: str, **kwargs: object):
        found = read(order_id, **kwargs)
        monkeypatch.setattr(world.orders, "history", read)
        current = world.order(order_id)
        changed, _ = current._bookkeeping(at=clock())
        world.orders.update(changed, current, [])
        return found

    monkeypatch.setattr(world.orders, "history", changed_after_read)
    scan = jeopardy_scan(world, clock)

    done = scan.run()

    assert (done.marked, done.captures_left) == ([], [order.id])
    assert world.order(order.id).jeopardy is None


def test_two_overlapping_passes_count_a_capture_they_both_settle_once(world, clock, monkeypatch):
    # Both passes read the partly shipped order (it cannot be held) with its request standing; the
    # twin settled it first, and this pass, finding nothing left to settle, counted it settled (and
    # a parcel to confirm) as well: UnrecordedCapturesSettled and ShipsToConfirm said two for one.
    before, _ = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    late = jeopardy_scan(world, clock).run().captures_left
    assert late == [before.id]
    twin: list[CapturesSettled] = []
    settle = Cancellation.settle_capture_requests

    def the_twin_first(self, order, actor, **kwargs):
        if not twin:
            twin.append(NOTHING)
            twin[0] = sweep(world, clock).run(late, ACTOR)  # the other pass, a moment ahead
        return settle(self, order, actor, **kwargs)

    monkeypatch.setattr(Cancellation, "settle_capture_requests", the_twin_first)
    this = sweep(world, clock).run(late, ACTOR)

    assert twin == [CapturesSettled(settled=[before.id], held=[], unconfirmed=[before.id])]
    assert this == NOTHING and len(world.spy.refunded) == 1  # neither settled nor to confirm twice


def test_the_in_memory_late_list_leaves_out_a_marked_order_while_a_capture_stands_as_the_index_does(
    world, clock, monkeypatch
):
    from core.ports import OrderFilter

    order = world.allocated(("TSHIRT", 2))
    clock.advance(**LATE)
    a_pass(world, clock)
    assert [o.id for o in world.orders.list(OrderFilter(jeopardy=True), 10, None)[0]] == [order.id]
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")

    assert world.order(order.id).jeopardy is not None  # marked, but read again by the scan meanwhile
    assert world.orders.list(OrderFilter(jeopardy=True), 10, None)[0] == []
    assert InMemoryLateOrders(world.orders).count_in_jeopardy() == 0


def test_a_typical_order_never_has_an_entry_in_the_parcels_partition(world):
    """Placed, allocated, shipped and delivered, never held: no by_pickup_deadline key at any step."""
    from functions.adapters.dynamodb import index_attributes

    order = world.allocated(("TSHIRT", 2))
    seen = [index_attributes(order)]
    shipment_id = order.shipments[0].id
    seen.append(index_attributes(world.actions.ship(order.id, shipment_id, None, actor="key_wh")))
    seen.append(index_attributes(world.actions.deliver(order.id, shipment_id, actor="key_wh")))
    assert world.order(order.id).status is OrderStatus.DELIVERED
    assert [{"pickup_pk", "collect_by"} & set(attributes) for attributes in seen] == [set()] * 3
    assert [{"sla_key", "sla_at"} & set(attributes) for attributes in seen] == [set()] * 3  # nor a late one's


def test_a_held_orders_late_mark_for_a_refused_refund_stays_plainly_once_the_refund_is_made(world, clock, monkeypatch):
    from functions.adapters.dynamodb import index_attributes

    order = held_late_with_its_refund_refused(world, clock, monkeypatch)
    assert scan_pass(world, clock)[0].marked == [order.id]
    marked = world.order(order.id)
    changed, _ = marked._bookkeeping(at=clock())
    world.orders.update(changed, marked, [])
    world.gateway.script("refund", "approve")
    clock.advance(minutes=16)
    settled = CapturesSettled(settled=[order.id], held=[], unconfirmed=[])
    assert scan_pass(world, clock) == (Scanned(captures_left=[order.id]), settled)  # counted before the sweep

    # Still late on hold: listed and counted, with no mark or event of its own again (the customer is
    # told once), the reason no longer asking a person to settle a refund made.
    after = world.order(order.id)
    assert after.status is OrderStatus.ON_HOLD and after.listed_late and not after.jeopardy_for_refund
    assert after.jeopardy == marked.jeopardy.model_copy(update={"reason": "on_hold for longer than 1d"})
    assert index_attributes(after)["sla_key"] == {"S": "jeopardy"}
    clock.advance(minutes=5)
    assert scan_pass(world, clock) == (Scanned(in_jeopardy=1), NOTHING)
    assert [e.type for e in world.history(order.id)].count(OrderEvent.JEOPARDY) == 1


@pytest.mark.parametrize("sla", ["", "partially_shipped=48h"])
def test_a_partly_shipped_orders_mark_for_a_refused_refund_stays_plainly_once_the_refund_is_made(
    world, clock, monkeypatch, sla
):
    # The order is late on its status's own deadline (the allocated one by default, or OMS_SLA's):
    # once the refund was made its mark went all the same (under the default SLA, which gave the
    # status no deadline, the mark was for the refund alone; its status listed late a person
    # settling a refund made), and the next pass marked it late again: a second order.jeopardy
    # event and a second 'delayed' notice to the customer for one lateness.
    from functions.adapters.dynamodb import index_attributes

    before, _ = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled):
        scan_pass(world, clock, sla)
    clock.advance(minutes=16)
    assert scan_pass(world, clock, sla)[0].marked == [before.id]
    marked = world.order(before.id)
    assert marked.jeopardy.reason.endswith("a person settles it") and marked.jeopardy_on_deadline
    assert Order.model_validate_json(marked.stored_json()) == marked  # the flag is stored
    changed, _ = marked._bookkeeping(at=clock())  # a change since the mark (a person's, say)
    world.orders.update(changed, marked, [])
    world.gateway.script("refund", "approve")
    clock.advance(minutes=16)
    settled = CapturesSettled(settled=[before.id], held=[], unconfirmed=[])
    assert scan_pass(world, clock, sla) == (Scanned(captures_left=[before.id]), settled)

    after = world.order(before.id)
    assert after.status is OrderStatus.PARTIALLY_SHIPPED and after.captures_requested == []
    assert after.listed_late and after.jeopardy == marked.jeopardy.model_copy(
        update={"reason": "partially_shipped for longer than 2d"}
    )
    assert index_attributes(after)["sla_key"] == {"S": "jeopardy"}
    stored = Order.model_validate_json(after.stored_json())
    assert stored == after and not stored.jeopardy_for_refund
    clock.advance(minutes=5)
    assert scan_pass(world, clock, sla) == (Scanned(in_jeopardy=1), NOTHING)
    assert [e.type for e in world.history(before.id)].count(OrderEvent.JEOPARDY) == 1


def marked_for_the_refund_alone(world: World, clock: Clock, order_id: str) -> Order:
    """The order marked late as the scan's partly shipped pass marked it while partially_shipped had
    no deadline by default: for a refund the gateway refused alone (jeopardy_for_refund, not
    jeopardy_on_deadline), past the allocated deadline. A stored order may still carry that mark."""
    order = world.order(order_id)
    reason = f"partially_shipped for longer than 2d{REFUND_REFUSED_REASON}"
    since = order.deadline_counts_from + timedelta(hours=48)
    marked, entry = order.mark_jeopardy(reason, since, at=clock(), actor=SCAN_ACTOR, refund_refused=True)
    world.orders.update(marked, order, [entry])
    assert marked.listed_late and not marked.jeopardy_on_deadline
    return marked


def test_a_partly_shipped_orders_mark_stored_for_a_refused_refund_alone_stays_once_the_refund_is_made(
    world, clock, monkeypatch
):
    # Marked for the refund alone (stored by the partly shipped pass while the default SLA gave
    # partially_shipped no deadline), now that the status has one: once the refund was made the mark
    # went (made for the refund alone), though the order was late on its status's own deadline,
    # and the next pass marked it again: a second order.jeopardy event and a second 'delayed' notice to the customer for
    # one lateness. The pass of its status's deadline that reads it (a change since the mark left
    # it unlisted) notes it late on that deadline too, with no entry and no change to when it last
    # changed, so the mark stays, plainly, once the refund is made.
    from functions.adapters.dynamodb import index_attributes

    before, _ = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled):
        scan_pass(world, clock)
    clock.advance(minutes=16)
    marked = marked_for_the_refund_alone(world, clock, before.id)
    changed, _ = marked._bookkeeping(at=clock())  # a change since the mark (a person's, say)
    world.orders.update(changed, marked, [])
    entries = len(world.history(before.id))
    world.gateway.script("refund", "approve")
    clock.advance(minutes=16)
    sla = ""  # the default: the allocated deadline
    settled = CapturesSettled(settled=[before.id], held=[], unconfirmed=[])

    assert scan_pass(world, clock, sla) == (Scanned(captures_left=[before.id]), settled)

    after = world.order(before.id)
    assert after.captures_requested == [] and after.listed_late
    assert after.jeopardy == marked.jeopardy.model_copy(update={"reason": "partially_shipped for longer than 2d"})
    assert index_attributes(after)["sla_key"] == {"S": "jeopardy"}
    assert not Order.model_validate_json(after.stored_json()).jeopardy_on_deadline  # settled with the mark kept
    clock.advance(minutes=5)
    assert scan_pass(world, clock, sla) == (Scanned(in_jeopardy=1), NOTHING)
    assert [e.type for e in world.history(before.id)].count(OrderEvent.JEOPARDY) == 1
    # The note wrote no entry: the history grew by the refund and what the sweep recorded only.
    assert OrderEvent.JEOPARDY not in [e.type for e in world.history(before.id)[entries:]]


@pytest.mark.parametrize("sla", ["partially_shipped=72h", "partially_shipped=24h"])
def test_a_partly_shipped_order_marked_for_a_refused_refund_changed_and_refused_again_tells_its_customer_once(
    world, clock, monkeypatch, sla
):
    # Marked for the refund alone (stored by the partly shipped pass while the default SLA gave
    # partially_shipped no deadline); OMS_SLA names partially_shipped with a deadline other than the
    # allocated one; a change since the mark
    # (a person's, say), the refund asked again and refused again: the pass of the status's own
    # deadline marked it again, late since another moment, which is a second order.jeopardy event
    # and a second 'delayed' notice to the customer for one lateness. The mark made again keeps
    # when the order was found late first: listed, with no event and no notice.
    import json

    from core.domain_events import EventType, order_events
    from core.notifications import NotificationKind, notifications

    before, _ = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    told: list[EventType] = []
    delayed: list[str] = []
    update = world.orders.update

    def seen(new: Order, old: Order, entries: list, **conditions: object) -> None:
        update(new, old, entries, **conditions)
        documents = json.loads(old.stored_json()), json.loads(new.stored_json())
        told.extend(event.type for event in order_events(*documents))
        delayed.extend(n.id for n in notifications(*documents) if n.kind is NotificationKind.DELAYED)

    monkeypatch.setattr(world.orders, "update", seen)
    world.gateway.script("refund", "refuse")
    clock.advance(hours=72, minutes=1)
    with pytest.raises(CapturesNotSettled):
        scan_pass(world, clock)
    clock.advance(minutes=16)
    marked = marked_for_the_refund_alone(world, clock, before.id)
    assert told.count(EventType.ORDER_JEOPARDY) == 1 and len(delayed) == 1
    changed, _ = marked._bookkeeping(at=clock())  # a change since the mark (a person's, say)
    world.orders.update(changed, marked, [])
    clock.advance(minutes=16)
    with pytest.raises(CapturesNotSettled):  # handed on, and the refund asked again: refused again
        scan_pass(world, clock, sla)
    clock.advance(minutes=5)

    assert scan_pass(world, clock, sla)[0].marked == [before.id]

    after = world.order(before.id)
    assert after.listed_late and after.jeopardy.since == marked.jeopardy.since
    assert after.jeopardy.reason.endswith("a person settles it")
    assert told.count(EventType.ORDER_JEOPARDY) == 1 and len(delayed) == 1
    assert [e.type for e in world.history(before.id)].count(OrderEvent.JEOPARDY) == 2  # marked again, in the history


def test_a_partly_shipped_order_the_old_pass_noted_read_is_still_marked_late_on_its_deadline(world, clock):
    # Noted read by the partly shipped pass while the default SLA gave partially_shipped no deadline
    # (scan_read, stored), it was left out of every query of its status, and never marked late.
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    clock.advance(**LATE)
    shipped = world.order(order.id)
    noted = shipped.model_copy(update={"scan_read": True, "version": shipped.version + 1})
    world.orders.update(noted, shipped, [])
    assert world.order(order.id).read_by_scan

    assert scan_pass(world, clock) == (Scanned(marked=[order.id], in_jeopardy=1), NOTHING)
    assert world.order(order.id).listed_late


def test_a_dead_ships_capture_waiting_for_its_payment_plugin_does_not_grow_the_order_a_pass_at_a_time(
    world, clock, monkeypatch
):
    # Before: the capture request a ship that died left stood (no payment plugin took the order's
    # method, the plugin out of the deployment: nobody asked the gateway, so it stands), and every
    # jeopardy pass handed the partly shipped order on and its sweep asked again: each added a
    # `payment_capture_failed` (no_plugin) entry to the order's item, 288 a day toward DynamoDB's
    # 400 KB, past which every write on the order fails. The first is noted (and reported by each
    # pass, at ERROR); the next add none while nothing else happened to the order.
    from tests.unit.test_payment_truth import Removed

    removed = Removed()
    world = build_world(STOCK, removed, clock=clock)
    before, second = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    removed.gone = True
    clock.advance(**LATE)
    with pytest.raises(CapturesNotSettled):
        a_pass(world, clock)
    noted = world.history(before.id)
    assert [(e.type, (e.detail or {}).get("kind")) for e in noted].count(
        (OrderEvent.PAYMENT_CAPTURE_FAILED, "no_plugin")
    ) == 1

    for _ in range(3):
        clock.advance(minutes=16)
        with pytest.raises(CapturesNotSettled):  # reported each pass all the same
            a_pass(world, clock)

    assert world.history(before.id) == noted
    assert world.order(before.id).capture_request(second) is not None  # stands for when the plugin is back
    removed.gone = False
    clock.advance(minutes=16)
    settled = CapturesSettled(settled=[before.id], held=[], unconfirmed=[])  # reported unconfirmed by the first
    assert a_pass(world, clock) == settled
    assert world.order(before.id).captures_requested == [] and len(world.spy.refunded) == 1


def test_a_settlement_capture_waiting_for_its_payment_plugin_does_not_grow_the_order_a_pass_at_a_time(
    clock, monkeypatch
):
    # As above for the settlement capture a cancel that died left standing: every reconciler pass
    # of the settlement captures asked it again and added a `payment_capture_failed` (no_plugin).
    from tests.unit.test_payment_truth import Removed

    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed, clock=clock)
    died = a_settlement_that_died(world, monkeypatch)
    requested = InMemorySettlementCaptures(world)
    removed.gone = True
    clock.advance(minutes=16)
    with pytest.raises(CapturesNotSettled):
        sweep(world, clock).run_settlements(requested, "reconciler")
    noted = world.history(died.id)
    assert (noted[-1].type, noted[-1].detail["kind"]) == (OrderEvent.PAYMENT_CAPTURE_FAILED, "no_plugin")

    for _ in range(3):
        clock.advance(minutes=5)
        with pytest.raises(CapturesNotSettled):
            sweep(world, clock).run_settlements(requested, "reconciler")

    assert world.history(died.id) == noted
    assert world.order(died.id).capture_request(None) == died.capture_request(None)
    removed.gone = False
    clock.advance(minutes=5)
    assert sweep(world, clock).run_settlements(requested, "reconciler").settled == [died.id]
    assert world.order(died.id).payment.captured == died.totals.grand_total


def test_a_parked_order_a_pass_held_and_could_not_settle_is_settled_by_a_later_pass_and_not_reported_unconfirmed(
    world, clock, monkeypatch
):
    # The pass held the order for its parcel (a park) and then failed to write the capture's
    # withdrawal (the orders table busy): the next pass, once the hold is late, finds it held for a
    # person already and settles it; it is not an order that cannot be held (`unconfirmed`).
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    dies_before_recording(world, monkeypatch, OrderEvent.CAPTURE_WITHDRAWN)
    with pytest.raises(CapturesNotSettled) as incomplete:
        a_pass(world, clock)
    monkeypatch.undo()
    assert incomplete.value.done == CapturesSettled(settled=[], held=[order.id], unconfirmed=[])
    parked = world.order(order.id)
    assert parked.hold.parked and parked.capture_request(shipment_id) is not None
    clock.advance(hours=24, minutes=1)  # past the hold's deadline (on_hold=24h): late again, handed on again

    assert a_pass(world, clock) == CapturesSettled(settled=[order.id], held=[], unconfirmed=[])
    assert world.order(order.id).captures_requested == [] and len(world.spy.refunded) == 1


def test_a_refused_refund_of_an_appeasement_does_not_keep_the_sweep_from_a_capture_a_ship_left(
    world, clock, monkeypatch
):
    # Customer service's goodwill refund on the partly shipped order was refused by the gateway
    # after the second parcel's ship died: that refusal is no answer about the ship's capture,
    # which the sweep still asks to refund (a refusal stops it only for a capture's own refund).
    before, second = partly_shipped_with_a_second_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "refuse")
    goodwill = world.refunds.issue_refund(before.id, Money.of("1.00", "USD"), "late delivery", "goodwill-1", "key_cs")
    world.gateway.script("refund", "approve")
    assert goodwill.status == "failed"
    (refused,) = [h for h in world.history(before.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED]
    assert refused.detail["kind"] == "refused" and "capture_reference" not in refused.detail
    clock.advance(**LATE)

    assert a_pass(world, clock) == CapturesSettled(settled=[before.id], held=[], unconfirmed=[before.id])
    assert world.order(before.id).captures_requested == []
    assert [amount for _, amount, _ in world.spy.refunded] == [before.capture_request(second).amount]
