"""The pending refund sweep: a refund left pending is asked again every pass until the gateway
answers, and a long outage does not grow the order's history a pass at a time: the outage is on
it once, then the answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core import hookimpl
from core.errors import NoPaymentPlugin, PaymentGatewayUnavailable, TransientError
from core.events import OrderEvent
from core.models import Order
from core.money import Money
from core.order_changes import modify
from core.ports import PendingRefunds
from core.refund_service import PendingRefundSweep, SweepIncomplete
from plugins.testing.gateway import RecordingGateway
from tests.unit.test_payment_truth import Removed
from tests.unit.test_refund_authorizations import STOCK as SPLIT_STOCK
from tests.unit.test_refund_authorizations import renewed_between_parcels
from tests.unit.test_unit_cancellation import STOCK as CANCEL_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import (
    AnAttemptInBetween,
    Clock,
    Died,
    World,
    build_racing_world,
    build_world,
    dies_before_recording,
)

STOCK = [("TSHIRT", "wh-west", 10)]
ACTOR = "reconciler"
FIVE = Money.of("5.00", "USD")


class InMemoryPendingRefunds(PendingRefunds):
    def __init__(self, world: World) -> None:
        self._world = world

    def pending_since_before(self, before: datetime) -> Iterator[str]:
        oldest = {}
        for order in self._world.orders.orders.values():
            begun = [refund.at for refund in order.payment.refunds if refund.status == "pending"]
            if begun and min(begun) < before:
                oldest[order.id] = min(begun)
        return iter(sorted(oldest, key=oldest.__getitem__))


def sweep(world: World, clock: Clock) -> PendingRefundSweep:
    return PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=timedelta(minutes=15))


def shipped(world: World) -> str:
    order = world.allocated(("TSHIRT", 1))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    return order.id


def refund_failures(world: World, order_id: str) -> list[tuple[str, str, int]]:
    return [
        (entry.actor, entry.detail["kind"], entry.detail["attempt"])
        for entry in world.history(order_id)
        if entry.type is OrderEvent.PAYMENT_REFUND_FAILED
    ]


def test_passes_through_a_long_outage_add_nothing_the_history_already_says_then_record_the_refund(world, clock):
    order_id = shipped(world)
    world.gateway.script("refund", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order_id, Money.of("5.00", "USD"), "late delivery", "k1", actor="key_cs")
    asked = refund_failures(world, order_id)
    assert asked == [("key_cs", "transient", 1), ("key_cs", "transient", 2), ("key_cs", "transient", 3)]

    for _ in range(12):  # an hour of passes, every five minutes, the gateway still down
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR) == []

    assert refund_failures(world, order_id) == asked
    assert [refund.status for refund in world.order(order_id).payment.refunds] == ["pending"]
    world.gateway.script("refund", "approve")
    [refund] = world.order(order_id).payment.refunds

    assert sweep(world, clock).run(ACTOR) == [refund.id]

    last = world.history(order_id)[-1]
    assert (last.type, last.actor, last.detail["refund_id"]) == (OrderEvent.PAYMENT_REFUNDED, ACTOR, refund.id)
    assert refund_failures(world, order_id) == asked


def dies(*args: object, **kwargs: object) -> None:
    raise TimeoutError("the API function timed out before asking the gateway")


def left_unasked(world: World, order_id: str, amount: Money = FIVE) -> None:
    """A refund of `amount` on the order left pending by the request that wrote it, which died
    before asking the gateway: nothing on the history says it was asked."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(world.refunds, "_ask_gateway", dies)
        with pytest.raises(TimeoutError):
            world.refunds.issue_refund(order_id, amount, "late delivery", "k1", actor="key_cs")


def test_an_outage_the_history_does_not_show_yet_is_recorded_once(world, clock):
    order_id = shipped(world)
    left_unasked(world, order_id)
    world.gateway.script("refund", "transient")

    for _ in range(6):
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR) == []

    assert refund_failures(world, order_id) == [(ACTOR, "transient", 1)]
    world.gateway.script("refund", "approve")
    assert len(sweep(world, clock).run(ACTOR)) == 1
    assert world.order(order_id).payment.refunded == Money.of("5.00", "USD")


def test_a_refusal_after_an_outage_is_recorded(world, clock):
    order_id = shipped(world)
    world.gateway.script("refund", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order_id, Money.of("5.00", "USD"), "late delivery", "k1", actor="key_cs")
    clock.advance(minutes=20)
    assert sweep(world, clock).run(ACTOR) == []
    world.gateway.script("refund", "refuse")

    [refund_id] = sweep(world, clock).run(ACTOR)

    assert refund_failures(world, order_id)[3:] == [(ACTOR, "refused", 1)]
    assert [(r.id, r.status) for r in world.order(order_id).payment.refunds] == [(refund_id, "failed")]


def test_the_third_refusal_of_an_over_capture_refund_heard_by_a_pass_calls_a_person(clock):
    # Before: only the cancel, ship or delivery that began the refund told a person; the third one,
    # left pending by an outage and refused to the sweep, was the last word and nobody was told.
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse", "refuse", "transient")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    world.actions.deliver(order.id, east, actor="key_carrier")
    world.actions.deliver(order.id, east, actor="key_carrier")  # the third, left pending
    world.gateway.script("refund", "refuse")
    clock.advance(minutes=20)

    [refund_id] = sweep(world, clock).run(ACTOR)

    after = world.order(order.id)
    assert [(r.id, r.status) for r in after.payment.refunds][-1] == (refund_id, "failed")
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [(e.actor, e.detail["refusals"]) for e in told] == [(ACTOR, 3)]
    sweep(world, clock).run(ACTOR)
    world.actions.deliver(order.id, east, actor="key_carrier")
    assert len([e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]) == 1


class RefundsDownForTest:
    """The `test` method's gateway unavailable for refunds while `down`; other methods unaffected."""

    def __init__(self) -> None:
        self.down = True
        self.asked: list[str] = []

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, method: str, order_id: str) -> None:
        if method == "test":
            self.asked.append(order_id)
            if self.down:
                raise TransientError("the test gateway is down")


def refunds_down_then_one_through_another_gateway(
    clock: Clock, down_orders: int
) -> tuple[World, RefundsDownForTest, list[str], Order]:
    """`down_orders` shipped orders whose refund found their gateway down (left pending), then one paid
    through another gateway whose refund was left unasked, 20 minutes ago."""
    outage = RefundsDownForTest()
    world = build_world(STOCK, RecordingGateway("fake"), outage, clock=clock)
    down = [shipped(world) for _ in range(down_orders)]
    for order_id in down:
        with pytest.raises(PaymentGatewayUnavailable):
            world.refunds.issue_refund(order_id, Money.of("5.00", "USD"), "late delivery", "k1", actor="key_cs")
    other = world.allocated(("TSHIRT", 1), payment={"method": "fake", "token": "tok_fake"})
    for shipment in other.shipments:
        world.actions.ship(other.id, shipment.id, None, actor="key_wh")
    left_unasked(world, other.id)
    clock.advance(minutes=20)
    return world, outage, down, other


def test_a_pass_asks_a_gateway_found_down_no_more_and_reaches_refunds_through_another_behind_them(clock):
    world, outage, down, other = refunds_down_then_one_through_another_gateway(clock, 3)
    outage.asked.clear()
    [waiting] = world.order(other.id).payment.refunds

    pass_ = PendingRefundSweep(
        InMemoryPendingRefunds(world), world.refunds, clock, after=timedelta(minutes=15), limit=2
    )
    assert pass_.run(ACTOR) == [waiting.id]

    assert outage.asked == [down[0]] * 3  # one order's attempts, not every order's
    assert world.order(other.id).payment.refunded == Money.of("5.00", "USD")
    outage.down = False
    assert len(pass_.run(ACTOR)) == 2 and len(pass_.run(ACTOR)) == 1
    assert {refund.status for order_id in down for refund in world.order(order_id).payment.refunds} == {"succeeded"}


class RefundsBrokenForOneOrder:
    """The `test` method's refund hook raising a plugin's own error for one order: not an outage."""

    def __init__(self) -> None:
        self.broken: str | None = None

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, method: str, order_id: str) -> None:
        if order_id == self.broken:
            raise KeyError("the plugin lost its merchant account for this order")


def test_an_order_whose_refund_fails_otherwise_does_not_keep_the_refunds_behind_it_pending(clock):
    # The oldest pending refund fails with a plugin's error every pass: before, the pass stopped
    # there, and the refunds behind it stayed pending for as long as it failed.
    broken = RefundsBrokenForOneOrder()
    world = build_world(STOCK, broken, clock=clock)
    orders = [shipped(world) for _ in range(2)]
    for order_id in orders:
        left_unasked(world, order_id)
        clock.advance(minutes=1)
    broken.broken = orders[0]
    clock.advance(minutes=20)
    [behind] = world.order(orders[1]).payment.refunds

    with pytest.raises(SweepIncomplete) as incomplete:
        sweep(world, clock).run(ACTOR)

    assert incomplete.value.finished == [behind.id]
    assert list(incomplete.value.failed) == [orders[0]]
    assert world.order(orders[1]).payment.refunded == Money.of("5.00", "USD")
    assert [refund.status for refund in world.order(orders[0]).payment.refunds] == ["pending"]
    # Its failure is in the history (kind plugin_error), once however many passes it fails.
    for _ in range(2):
        clock.advance(minutes=5)
        with pytest.raises(SweepIncomplete):
            sweep(world, clock).run(ACTOR)
    assert refund_failures(world, orders[0]) == [(ACTOR, "plugin_error", 1)]


def test_a_refund_whose_payment_plugin_was_removed_stays_pending_noted_once_and_is_finished_once_it_is_back(clock):
    # Recorded failed by the first pass, it freed its 5.00, though the request that died may have
    # refunded it through the plugin: a new refund once the plugin was back refunded it twice.
    removed = Removed()
    world = build_world(STOCK, removed, clock=clock)
    order_id = shipped(world)
    with pytest.MonkeyPatch.context() as patched:
        dies_before_recording(world, patched, "payment_refunded")
        with pytest.raises(Died):
            world.refunds.issue_refund(order_id, Money.of("5.00", "USD"), "late delivery", "k1", actor="key_cs")
    [refund] = world.order(order_id).payment.refunds
    removed.gone = True
    clock.advance(minutes=15)

    for _ in range(6):  # half an hour of passes: each reports the order for a person
        clock.advance(minutes=5)
        with pytest.raises(SweepIncomplete) as incomplete:
            sweep(world, clock).run(ACTOR)
        assert isinstance(incomplete.value.failed[order_id], NoPaymentPlugin)

    assert [(r.id, r.status) for r in world.order(order_id).payment.refunds] == [(refund.id, "pending")]
    assert refund_failures(world, order_id) == [(ACTOR, "no_plugin", 1)]
    removed.gone = False

    assert sweep(world, clock).run(ACTOR) == [refund.id]
    assert world.order(order_id).payment.refunded == Money.of("5.00", "USD")
    assert len(world.spy.refunded) == 1


def unasked_through_an_outage(clock: Clock) -> tuple[World, AnAttemptInBetween, str]:
    """A racing world (on the next refund failure's write) whose order's refund was left unasked,
    the gateway down, and the sweep's time for it come."""
    world, race = build_racing_world(STOCK, OrderEvent.PAYMENT_REFUND_FAILED, clock=clock)
    order_id = shipped(world)
    left_unasked(world, order_id)
    world.gateway.script("refund", "transient")
    clock.advance(minutes=20)
    return world, race, order_id


def test_two_passes_at_once_through_an_outage_the_history_does_not_show_yet_record_it_once(clock):
    # Before: each pass asked "is the refund's last entry transient already?" before its write
    # (RefundService._outage_noted_once): both found it not, and both wrote their attempt.
    world, race, order_id = unasked_through_an_outage(clock)
    race.between = lambda: sweep(world, clock).run(ACTOR)

    assert sweep(world, clock).run(ACTOR) == []

    assert race.between is None  # the other pass ran inside this one's write
    assert refund_failures(world, order_id) == [(ACTOR, "transient", 1)]


def not_finished(world: World, clock: Clock) -> None:
    with pytest.raises(SweepIncomplete):
        sweep(world, clock).run(ACTOR)


def test_two_passes_at_once_at_a_refund_whose_payment_plugin_was_removed_note_it_once(clock):
    # Before: each pass asked "is the refund's last entry no_plugin already?" before its write
    # (RefundService._unanswered_noted_once): both found it not, and both wrote their attempt.
    removed = Removed()
    world, race = build_racing_world(STOCK, OrderEvent.PAYMENT_REFUND_FAILED, removed, clock=clock)
    order_id = shipped(world)
    with pytest.MonkeyPatch.context() as patched:
        dies_before_recording(world, patched, "payment_refunded")
        with pytest.raises(Died):
            world.refunds.issue_refund(order_id, Money.of("5.00", "USD"), "late delivery", "k1", actor="key_cs")
    removed.gone = True
    clock.advance(minutes=20)
    race.between = lambda: not_finished(world, clock)

    not_finished(world, clock)

    assert race.between is None
    assert refund_failures(world, order_id) == [(ACTOR, "no_plugin", 1)]
    assert [refund.status for refund in world.order(order_id).payment.refunds] == ["pending"]


def test_an_outage_at_a_split_refunds_second_part_after_its_first_parts_is_recorded_once(clock):
    # A refund split over the renewed authorization and the old one (part 1: old, part 2: new).
    # Pass 1 finds the gateway down at part 1 and records it. Pass 2 gets part 1 refunded (not
    # recorded until every part answered) and finds it down at part 2. Before: the refund's last
    # entry, part 1's outage, was taken for part 2's, so the history went on saying part 1 (whose
    # money had gone back) was what waited, with no word of part 2, nor a PaymentFailures point.
    world = build_world(SPLIT_STOCK, clock=clock)
    first, second = renewed_between_parcels(world, clock)
    old, new = first.payment.authorization, second.payment.authorization
    left_unasked(world, second.id, second.payment.captured)
    world.gateway.script("refund", "transient")
    clock.advance(minutes=20)
    assert sweep(world, clock).run(ACTOR) == []

    for _ in range(3):  # part 1 answered under its key each pass, part 2 still down
        world.gateway.script("refund", "approve", "transient")
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR) == []

    failed = [e.detail for e in world.history(second.id) if e.type is OrderEvent.PAYMENT_REFUND_FAILED]
    assert [(d["authorization"], d["kind"], d["attempt"]) for d in failed] == [
        (old, "transient", 1), (new, "transient", 1),
    ]  # fmt: skip
    world.gateway.script("refund", "approve")
    assert len(sweep(world, clock).run(ACTOR)) == 1
    assert world.order(second.id).payment.refunded == second.payment.captured


def test_two_passes_at_once_both_answered_by_the_gateway_record_the_refund_once(clock):
    # Both passes get the gateway's answer (under the refund's one key); the inner pass's write
    # lands first, and the outer pass's, decided again on the order that now says `succeeded`,
    # records nothing: the refund counted in `payment.refunded` once, one `payment_refunded` entry.
    world, race = build_racing_world(STOCK, OrderEvent.PAYMENT_REFUNDED, clock=clock)
    order_id = shipped(world)
    left_unasked(world, order_id)
    [refund] = world.order(order_id).payment.refunds
    clock.advance(minutes=20)
    inner: list[list[str]] = []
    race.between = lambda: inner.append(sweep(world, clock).run(ACTOR))

    assert sweep(world, clock).run(ACTOR) == [refund.id]

    assert inner == [[refund.id]]  # the other pass ran inside this one's write, and recorded it
    assert world.order(order_id).payment.refunded == FIVE
    refunded = [e for e in world.history(order_id) if e.type is OrderEvent.PAYMENT_REFUNDED]
    assert [e.detail["refund_id"] for e in refunded] == [refund.id]
    assert len(world.spy.refunded) == 1


def test_a_passs_first_outage_whose_write_another_entry_beat_is_decided_again_and_recorded(clock):
    # Its write is conditional on the history's length (failure_recorder's `unless`): another
    # entry landing first (here a label booking noted on the order) refuses it, and it is decided
    # again on the history that holds that entry, which says nothing of this refund's outage.
    world, race, order_id = unasked_through_an_outage(clock)
    note = {"shipment_id": "elsewhere", "message": "another function's entry"}
    race.between = lambda: modify(
        world.orders, order_id,
        lambda current: current.noted(OrderEvent.LABEL_BOOKING_FAILED, at=clock(), actor="key_wh", detail=note),
    )  # fmt: skip

    assert sweep(world, clock).run(ACTOR) == []

    assert race.between is None
    assert [e.type for e in world.history(order_id)][-2:] == [
        OrderEvent.LABEL_BOOKING_FAILED, OrderEvent.PAYMENT_REFUND_FAILED,
    ]  # fmt: skip
    assert refund_failures(world, order_id) == [(ACTOR, "transient", 1)]


def test_an_order_whose_gateway_was_found_down_counts_as_asked_toward_the_passs_limit(clock):
    # A pass of at most one order asked: the first order's gateway is down (its retries spent), so
    # the pass is done; it does not go past its limit to the refund through another gateway behind it.
    world, _, _, other = refunds_down_then_one_through_another_gateway(clock, 1)
    pass_ = PendingRefundSweep(
        InMemoryPendingRefunds(world), world.refunds, clock, after=timedelta(minutes=15), limit=1
    )

    assert pass_.run(ACTOR) == []

    assert [refund.status for refund in world.order(other.id).payment.refunds] == ["pending"]


def test_only_the_orders_whose_refunds_a_pass_answered_are_handed_to_the_kept_back_pass(clock):
    # The kept-back pass takes the orders handed to it at once, however recently they changed: one
    # whose refund the pass left pending (its method's gateway found down on an order before it) is
    # not one of them, and waits in its index like any other.
    world, _, down, other = refunds_down_then_one_through_another_gateway(clock, 2)
    handed: list[str] = []

    (finished,) = sweep(world, clock).run(ACTOR, orders=handed)

    assert handed == [other.id]
    assert [r.status for order_id in down for r in world.order(order_id).payment.refunds] == ["pending", "pending"]
    assert world.order(other.id).payment.refunds[0].id == finished
