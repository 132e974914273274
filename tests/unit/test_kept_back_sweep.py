"""What a return kept back is refunded by the reconciler when nothing ships again: the refund of it
refused on the last delivery, the return's own refund still pending when the last parcel left, or
the keep-back written after the last parcel's capture. Each ends with the customer paid in full,
and a pass after that refunds nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

import core.refund_service as refund_service
import core.returns as returns_module
from core.errors import PaymentGatewayUnavailable, TransientError
from core.models import Order
from core.money import Money
from core.ports import KeptBackRefunds
from core.refund_service import KeptBackSweep, PendingRefundSweep
from core.refunds import KEPT_BACK_REFUSALS, owes_kept_back, refund_id_for
from core.return_models import Return
from core.return_reconciliation import ReturnsNotReconciled
from core.returns import Returns
from core.status import ReturnStatus
from core.workflow_types import PaymentResult
from functions.adapters.dynamodb import KEPT_BACK_KEY, index_attributes
from tests.builders import NOW
from tests.fakes import InlineReturnWorkflow, ScriptedGateway, run_return_workflow
from tests.unit.test_pending_refund_sweep import InMemoryPendingRefunds
from tests.unit.test_return_reconciliation import StillRunning, reconciler
from tests.unit.test_returns import (
    STOCK,  # noqa: F401 (the stock of the `world` fixture)
    ask,
    exchange_of,
    mugs_back_after_goodwill,
    receipt,
    returns_for,
)
from tests.unit.world import Clock, World

ACTOR = "reconciler"
AFTER = timedelta(minutes=15)


class InMemoryKeptBackRefunds(KeptBackRefunds):
    """The orders the adapter puts in by_pending_refund's kept-back partition (index_attributes)."""

    def __init__(self, world: World) -> None:
        self._world = world

    def owed_since_before(self, before: datetime) -> Iterator[str]:
        owed = [
            order for order in self._world.orders.orders.values()
            if index_attributes(order).get("refund_key") == {"S": KEPT_BACK_KEY} and order.last_changed < before
        ]  # fmt: skip
        return iter(order.id for order in sorted(owed, key=lambda order: order.last_changed))


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW + timedelta(days=3))


def caps_delivered_while_the_gateway_was_down(world: World, clock: Clock, order: Order, caps: str) -> None:
    """The order's CAPs shipped and delivered while the gateway was down (the refund of what its
    return kept back left pending), the gateway back, and the reconciler's wait past."""
    world.gateway.script("refund", "transient")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.deliver(order.id, caps, actor="key_wh")
    world.gateway.script("refund", "approve")
    later(clock)


def mugs_exchanged_for_a_cap(world: World, returns: Returns) -> tuple[Order, Return, Return, Order]:
    """An order of 2 MUGs and 2 CAPs, its MUGs shipped from wh-west, returned resellable and
    exchanged for 1 CAP (13.48 refunded at once, the rest pays for the CAP): the order, the return
    as requested, as settled, and the replacement order placed for it."""
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")
    return order, item, settled, world.run(settled.exchange_order_id or "")


def sweep(world: World, clock: Clock) -> KeptBackSweep:
    return KeptBackSweep(
        InMemoryKeptBackRefunds(world), world.orders, world.actions.refund_kept_back, clock,
        release_stock=world.actions.release_owed_stock, after=AFTER,
    )  # fmt: skip


def later(clock: Clock) -> None:
    clock.now = clock.now + AFTER + timedelta(minutes=1)


def paid_in_full(order: Order, after: Order, goodwill: Money) -> bool:
    """Captured minus refunded is the order less the MUGs' whole worth and the goodwill."""
    paid = after.payment
    return paid.captured - paid.refunded == order.totals.grand_total - order.lines[0].total - goodwill


def test_what_a_return_kept_back_is_refunded_by_the_reconciler_when_the_last_delivery_was_refused_it(world, clock):
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    world.gateway.script("refund", "refuse", "refuse", "approve")  # the ship's and the delivery's refused
    world.actions.ship(order.id, caps, None, actor="key_wh")
    delivered = world.actions.deliver(order.id, caps, actor="key_wh")
    assert [r.status for r in delivered.payment.refunds[2:]] == ["failed", "failed"]
    assert index_attributes(delivered)["refund_key"] == {"S": KEPT_BACK_KEY}

    assert sweep(world, clock).run(ACTOR).refunded == []  # still in its request's hands
    later(clock)
    done = sweep(world, clock).run(ACTOR)

    after = world.order(order.id)
    assert done.refunded == [after.payment.refunds[-1].id] and done.refused == []
    assert paid_in_full(order, after, Money.of("1.00", "USD"))
    assert returns.get(return_id).refund == order.lines[0].total
    assert "refund_key" not in index_attributes(after)
    later(clock)
    assert sweep(world, clock).run(ACTOR).refunded == []
    assert world.order(order.id).payment == after.payment


def test_what_a_return_kept_back_is_refunded_once_its_refund_left_pending_through_the_last_delivery_is_finished(
    world, clock
):  # fmt: skip
    # The gateway was down for the MUGs' refund (25.81, keeping 1.00 back) until the CAPs had shipped
    # and arrived: their ship and delivery had nothing kept back to refund yet.
    down = ScriptedGateway()
    returns, _ = returns_for(world, clock, down)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    down.script("refund", "transient")
    world.gateway.script("refund", "transient")
    assert run_return_workflow(returns, return_id, actor="key_wh").status is ReturnStatus.RECEIVED  # its refund pending
    world.actions.ship(order.id, caps, None, actor="key_wh")
    delivered = world.actions.deliver(order.id, caps, actor="key_wh")
    assert [r.status for r in delivered.payment.refunds] == ["succeeded", "pending"]
    world.gateway.script("refund", "approve")

    later(clock)
    # One reconciler pass: the pending-refund pass finishes the MUGs' refund, and the kept-back pass
    # after it refunds what that kept back at once, not 15 minutes later (the order changed then).
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    assert finished == [order.id]
    assert world.order(order.id).payment.refunds[1].kept_back == Money.of("1.00", "USD")
    done = sweep(world, clock).run(ACTOR, finished=finished)

    after = world.order(order.id)
    assert done.refunded == [after.payment.refunds[-1].id]
    assert paid_in_full(order, after, Money.of("1.00", "USD"))
    assert "refund_key" not in index_attributes(after)
    assert sweep(world, clock).run(ACTOR, finished=finished).refunded == []  # the same orders again: nothing more
    # Its workflow, restarted.
    assert run_return_workflow(returns, return_id, actor="key_wh").refund == order.lines[0].total
    later(clock)
    assert sweep(world, clock).run(ACTOR).refunded == []
    assert world.order(order.id).payment == after.payment


def kept_back_as_the_last_parcel_arrived(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A return of both MUGs settled after a goodwill refund took all their capture, so it gave
    nothing, while the CAPs shipped and arrived before it wrote what it kept back: (returns service,
    order, return, goodwill, the CAPs' shipment id)."""
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    goodwill = world.order(order.id).payment.captured
    world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    caps = world.shipment_at(order, "wh-east")
    keep_back = returns._keep_back

    def after_the_last_parcel(*args: object) -> None:
        world.actions.ship(order.id, caps, None, actor="key_wh")
        world.actions.deliver(order.id, caps, actor="key_wh")
        keep_back(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(returns, "_keep_back", after_the_last_parcel)
    assert run_return_workflow(returns, item.id, actor="key_wh").refund == Money.zero("USD")
    return returns, order, item, goodwill, caps


def test_what_a_return_kept_back_is_refunded_when_it_was_kept_back_after_the_last_parcel_was_captured(
    world, clock, monkeypatch
):  # fmt: skip
    # The goodwill took all the MUGs' capture, so their refund gave nothing; the CAPs shipped and
    # arrived before the return wrote what it kept back: nothing ships after to refund it.
    returns, order, item, goodwill, caps = kept_back_as_the_last_parcel_arrived(world, clock, monkeypatch)
    kept = world.order(order.id)
    assert kept.returns_kept_back == {item.id: order.lines[0].total} and kept.payment.refunded == goodwill

    later(clock)
    sweep(world, clock).run(ACTOR)

    after = world.order(order.id)
    caps_captured = after.shipment(caps).captured
    assert after.payment.captured == order.totals.grand_total
    assert after.payment.refunded == after.payment.captured  # goodwill and the MUGs' worth exceed it all
    assert [r.amount for r in after.payment.refunds if r.return_id == item.id] == [caps_captured]
    assert returns.get(item.id).refund == caps_captured
    later(clock)
    assert sweep(world, clock).run(ACTOR).refunded == []
    assert world.order(order.id).payment == after.payment


def test_a_refund_of_what_a_return_kept_back_the_gateway_keeps_refusing_is_left_to_a_person(world, clock):
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.ship(order.id, caps, None, actor="key_wh")  # refused once

    passes = []
    for _ in range(KEPT_BACK_REFUSALS):
        later(clock)
        passes.append(sweep(world, clock).run(ACTOR))

    assert [(len(done.refused), len(done.given_up)) for done in passes] == [(1, 0), (1, 1), (0, 0)]
    # A refused refund is no money back: never reported refunded (nor its order named for one).
    assert [(done.refunded, done.order_of) for done in passes] == [([], {})] * KEPT_BACK_REFUSALS
    after = world.order(order.id)
    assert [r.status for r in after.payment.refunds[2:]] == ["failed"] * KEPT_BACK_REFUSALS
    assert owes_kept_back(after, refusals=None) and "refund_key" not in index_attributes(after)


def test_deliveries_reported_again_and_again_leave_the_last_refusal_to_the_reconciler(world, clock):
    # Before: every ship repeated and every delivery a carrier's tracking reported again asked the
    # refused refund once more under a new key, each a failed refund on the order and its history
    # entries, without bound; and the reconciler, finding it refused three times already, never
    # asked it nor told a person. Now ships and deliveries ask it one time fewer than the
    # reconciler's bound, so its pass asks the last time and, refused, leaves it to a person.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    for _ in range(5):
        world.actions.ship(order.id, caps, None, actor="key_wh")
        world.actions.deliver(order.id, caps, actor="key_carrier")

    refused = [r for r in world.order(order.id).payment.refunds if r.status == "failed"]
    assert len(refused) == KEPT_BACK_REFUSALS - 1
    later(clock)
    done = sweep(world, clock).run(ACTOR)
    assert (len(done.refused), len(done.given_up)) == (1, 1)


def test_an_order_that_kept_nothing_back_is_in_no_partition_and_the_pass_reads_nothing(world, clock):
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")

    assert "refund_key" not in index_attributes(world.order(order.id))
    later(clock)
    assert sweep(world, clock).run(ACTOR).refunded == []


def test_a_return_whose_kept_back_refund_was_refused_its_last_time_is_not_asked_again_for_another(
    world, clock, monkeypatch
):  # fmt: skip
    # The goodwill took all the MUGs' capture: each MUG's return gave nothing and kept its worth
    # back. The gateway refuses the first's refund every time; the second's is left pending by the
    # CAPs' ship and delivery, then refused. Passes asking the second again never ask the first
    # more than KEPT_BACK_REFUSALS times in all.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, world.order(order.id).payment.captured, "goodwill", "appease-1", "key_cs")
    first, second = (returns.request(order.id, ask(("L1", 1, None)), actor="key_cs") for _ in range(2))
    for item in (first, second):
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        run_return_workflow(returns, item.id, actor="key_wh")
    firsts = {refund_id_for(order.id, f"{first.id}#kept_back#{n}") for n in range(10)}
    down, play = [True], world.gateway._play

    def refused_or_down(operation: str, idempotency_key: str) -> PaymentResult | None:
        if operation != "refund":
            return play(operation, idempotency_key)
        if down[0] and idempotency_key.split(":refund:")[1] not in firsts:
            raise TransientError("scripted: the gateway is briefly unavailable")
        return PaymentResult(outcome="declined", reference="refused_refund", message="scripted: refused")

    monkeypatch.setattr(world.gateway, "_play", refused_or_down)
    caps = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.deliver(order.id, caps, actor="key_wh")
    down[0] = False
    later(clock)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR)

    passes = []
    for _ in range(KEPT_BACK_REFUSALS):
        later(clock)
        passes.append(sweep(world, clock).run(ACTOR))

    after = world.order(order.id)
    asked = {
        item.id: [r.status for r in after.payment.refunds if r.return_id == item.id and r.reason != "goodwill"]
        for item in (first, second)
    }
    assert asked == {first.id: ["failed"] * KEPT_BACK_REFUSALS, second.id: ["failed"] * KEPT_BACK_REFUSALS}
    assert [order.id] in [done.given_up for done in passes]
    assert "refund_key" not in index_attributes(after)


def test_a_return_shows_what_it_kept_back_once_the_reconciler_finishes_the_refund_of_it_left_pending(world, clock):
    # The gateway was down when the CAPs' ship and delivery refunded what the MUGs' return kept back:
    # that refund stayed pending, and the reconciler's pending-refund pass made it. Before: nothing
    # showed it on the return (the kept-back pass found nothing owed any more), which kept showing
    # the MUGs' refund short of what went back for them.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    shown = returns.get(return_id).refund
    world.gateway.script("refund", "transient")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    delivered = world.actions.deliver(order.id, caps, actor="key_wh")
    assert delivered.payment.refunds[-1].status == "pending"
    assert returns.get(return_id).refund == shown
    world.gateway.script("refund", "approve")

    later(clock)
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    sweep(world, clock).run(ACTOR, finished=finished)

    after = world.order(order.id)
    assert after.payment.refunds[-1].status == "succeeded"
    assert paid_in_full(order, after, Money.of("1.00", "USD"))
    assert returns.get(return_id).refund == order.lines[0].total


def caps_return_finishing_the_kept_back_refund(world: World, clock: Clock) -> tuple[Returns, Order, str, str]:
    """The MUGs' return settled (keeping 1.00 back), the CAPs shipped and delivered while the gateway
    was down (the refund of what the MUGs kept back left pending), then a CAP back and received: its
    refund step finishes that pending refund first. The returns, the order, the MUGs' return and the CAP's."""
    returns, _ = returns_for(world, clock)
    order, caps, mugs_return = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, mugs_return, actor="key_wh")
    world.gateway.script("refund", "transient")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    assert world.actions.deliver(order.id, caps, actor="key_wh").payment.refunds[-1].status == "pending"
    world.gateway.script("refund", "approve")
    cap = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")
    returns.receive(cap.id, receipt("wh-east", ("L2", 1, "resellable")), "key_wh")
    return returns, order, mugs_return, cap.id


def died_showing(monkeypatch: pytest.MonkeyPatch, returns: Returns, return_id: str) -> None:
    """The refund step of `return_id` dies just after it finished the other pending refund, before
    any other return shows it."""

    def dies(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the function died")

    with monkeypatch.context() as patched:
        patched.setattr(refund_service, "show_refunded_in_all", dies)
        patched.setattr(returns_module, "show_refunded_in_all", dies, raising=False)
        with pytest.raises(RuntimeError):
            run_return_workflow(returns, return_id, actor="key_wh")


def test_a_return_shows_what_it_kept_back_when_the_step_that_finished_its_refund_died_before_showing_it(
    world, clock, monkeypatch
):  # fmt: skip
    # Before: the CAP's step made the pending refund of what the MUGs kept back, then died; run
    # again it found nothing pending (so nothing to show), and no pass looked again: the MUGs'
    # return showed 25.81 of the 26.81 that went back for it, for good.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    died_showing(monkeypatch, returns, cap_return)
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    assert returns.get(mugs_return).refund == order.lines[0].total - Money.of("1.00", "USD")

    assert run_return_workflow(returns, cap_return, actor="key_wh").status is ReturnStatus.REFUNDED  # the step, retried
    assert returns.get(mugs_return).refund == order.lines[0].total
    after = world.order(order.id)
    cap_refund = returns.get(cap_return).refund
    assert cap_refund.amount > 0
    assert paid_in_full(order, after, Money.of("1.00", "USD") + cap_refund)  # the CAP's refund beside the goodwill
    assert after.payment.refunded == Money.of("1.00", "USD") + order.lines[0].total + cap_refund
    shown = returns.get(mugs_return)
    # Again: nothing more.
    assert run_return_workflow(returns, cap_return, actor="key_wh").refund == returns.get(cap_return).refund
    assert returns.get(mugs_return) == shown
    assert world.order(order.id).payment == after.payment


def test_the_returns_pass_shows_what_went_back_when_the_step_that_finished_the_refund_died_and_was_left_stuck(
    world, clock, monkeypatch
):  # fmt: skip
    # The CAP's step died after making the refund of what the MUGs kept back, and its execution then
    # recorded it stuck (timed out), so no retry runs it. Before: the returns pass left it to a
    # person and nothing else looked: the MUGs' return showed 25.81 of the 26.81 that went back.
    # The MUGs' return shows it first; then the CAP's return, stuck midway with no refund of its own
    # refused, failed or pending, has its workflow started again, which refunds it once (it was left
    # to a person until plain returns were restarted as exchanges are).
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    died_showing(monkeypatch, returns, cap_return)
    returns.stuck(cap_return, "States.Timeout", "the function died", actor="returns-workflow", execution="x1")
    workflow = InlineReturnWorkflow(returns)
    clock.now = clock.now + timedelta(hours=1)
    passes = reconciler(world, clock, workflow)

    assert passes.run() == [cap_return]
    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).status is ReturnStatus.REFUNDED
    shown = returns.get(mugs_return)
    after = world.order(order.id)
    cap_refund = returns.get(cap_return).refund
    assert cap_refund.amount > 0
    assert after.payment.refunded == Money.of("1.00", "USD") + order.lines[0].total + cap_refund
    assert paid_in_full(order, after, Money.of("1.00", "USD") + cap_refund)
    clock.now = clock.now + timedelta(hours=1)
    assert passes.run() == []  # nothing more
    assert workflow.started == [cap_return]
    assert returns.get(mugs_return) == shown and world.order(order.id) == after


def test_a_stuck_return_the_pass_started_again_after_showing_what_went_back_is_not_started_twice_while_it_runs(
    world, clock, monkeypatch
):  # fmt: skip
    # The CAP's step died after making the refund of what the MUGs kept back, before showing it, and
    # was recorded stuck. The pass shows the MUGs' return what went back and starts the CAP's
    # workflow again; while that execution runs, the next pass of the same (warm) reconciler starts
    # no second one and reports none: the return is set aside as the show left it.
    returns, _, _, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    died_showing(monkeypatch, returns, cap_return)
    returns.stuck(cap_return, "States.Timeout", "the function died", actor="returns-workflow", execution="x1")
    workflow = StillRunning(returns)
    clock.now = clock.now + timedelta(hours=1)
    passes = reconciler(world, clock, workflow)

    runs = [(passes.run(), passes.stuck_started) for _ in range(2)]

    assert runs == [([cap_return], [cap_return]), ([], [])]
    assert workflow.started == [cap_return]


def test_a_return_left_to_a_person_for_another_returns_refund_the_gateway_left_pending_shows_that_one_once_made(
    world, clock, monkeypatch
):  # fmt: skip
    # The CAP's step found the gateway down as it finished the refund of what the MUGs kept back,
    # through three executions (each recorded stuck): the CAP's return is the person's now, and the
    # MUGs' return is owed its show of a refund the gateway has not made. Once the reconciler's
    # passes made that refund, the MUGs' return shows its whole; the CAP's is still the person's.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)

    def down(*args: object, **kwargs: object) -> None:
        raise PaymentGatewayUnavailable("the gateway is unavailable")

    for execution in ("x1", "x2", "x3"):
        with monkeypatch.context() as patched:
            patched.setattr(returns._refunds, "finish_pending", down)
            run_return_workflow(returns, cap_return, actor="key_wh")
        returns.stuck(cap_return, "PaymentGatewayUnavailable", "the gateway is down", "returns-workflow", execution)
    assert returns.get(cap_return).shows_owed == [mugs_return]
    workflow = InlineReturnWorkflow(returns)
    passes = reconciler(world, clock, workflow)
    clock.now = clock.now + timedelta(hours=1)
    assert passes.run() == []
    finished: list[str] = []  # the reconciler's passes, in its order
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    sweep(world, clock).run(ACTOR, finished=finished)
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    clock.now = clock.now + timedelta(hours=1)

    assert passes.run() == []

    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).status is ReturnStatus.RECEIVED and workflow.started == []  # still the person's


def test_the_returns_a_step_owes_showing_are_stored_never_shown_and_leave_its_last_change_as_it_was(world, clock):
    returns, _, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    item = returns.get(cap_return)
    owing = item.owing_shown([mugs_return])
    assert Return.model_validate_json(owing.stored_json()).shows_owed == [mugs_return]
    assert "shows_owed" not in owing.model_dump(mode="json")
    assert owing.updated_at == item.updated_at and owing.version == item.version + 1
    assert owing.owing_shown([mugs_return]).shows_owed == [mugs_return]
    cleared = owing.owed_shown()
    assert cleared.shows_owed == [] and "shows_owed" not in cleared.stored_json()


def test_a_pass_out_of_time_still_shows_a_return_what_went_back_for_it_and_asks_the_gateway_nothing(world, clock):
    # Past its deadline a kept-back pass asks nothing more of the gateway, but the orders the
    # pending-refund pass just finished, that owe nothing more, cost no call: nothing else would
    # show their returns what went back for them, so they are still shown.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    caps_delivered_while_the_gateway_was_down(world, clock, order, caps)
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    asked = len(world.gateway.calls)

    assert sweep(world, clock).run(ACTOR, finished=finished, time_up=lambda: True).refunded == []

    assert len(world.gateway.calls) == asked
    assert returns.get(return_id).refund == order.lines[0].total


def test_a_pass_out_of_time_leaves_what_a_return_kept_back_owed_for_the_next_pass(world, clock):
    down = ScriptedGateway()
    returns, _ = returns_for(world, clock, down)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    down.script("refund", "transient")
    world.gateway.script("refund", "transient")
    run_return_workflow(returns, return_id, actor="key_wh")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.deliver(order.id, caps, actor="key_wh")
    world.gateway.script("refund", "approve")
    later(clock)
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    assert finished == [order.id]

    assert sweep(world, clock).run(ACTOR, finished=finished, time_up=lambda: True).refunded == []
    assert owes_kept_back(world.order(order.id))  # still in the index: not lost

    later(clock)
    done = sweep(world, clock).run(ACTOR)
    after = world.order(order.id)
    assert done.refunded == [after.payment.refunds[-1].id]
    assert paid_in_full(order, after, Money.of("1.00", "USD"))


def test_a_record_read_while_its_step_is_still_finishing_the_refund_is_kept_for_the_steps_retry(
    world, clock, monkeypatch
):  # fmt: skip
    # The returns pass (or a concurrent run of the step) reads the CAP's record while its step is
    # still asking the gateway for the MUGs' pending refund; the step then finishes it and dies.
    # Before: that read cleared the record (the refund still pending showed nothing new), so the
    # retry found neither a record nor a pending refund: the MUGs' return showed 25.81 of the
    # 26.81 that went back, for good.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    finish, show = returns._refunds.finish_pending, refund_service.show_refunded_in_all
    dead: list[bool] = []

    def read_meanwhile_then_die(order_id: str, actor: str, **kwargs: object) -> object:
        refund_service.show_owed(world.returns, world.orders, world.returns.get(cap_return), clock())
        assert world.returns.get(cap_return).shows_owed == [mugs_return]  # still pending: kept
        finished = finish(order_id, actor, **kwargs)
        dead.append(True)
        return finished

    def shows_unless_dead(*args: object, **kwargs: object) -> None:
        if dead:
            raise RuntimeError("the function died")
        show(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(returns._refunds, "finish_pending", read_meanwhile_then_die)
        patched.setattr(refund_service, "show_refunded_in_all", shows_unless_dead)
        with pytest.raises(RuntimeError):
            run_return_workflow(returns, cap_return, actor="key_wh")
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    assert returns.get(mugs_return).refund == order.lines[0].total - Money.of("1.00", "USD")

    assert run_return_workflow(returns, cap_return, actor="key_wh").status is ReturnStatus.REFUNDED  # the step, retried
    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).shows_owed == []


def test_a_run_that_marks_the_return_refunded_shows_what_a_concurrent_run_that_died_finished(
    world, clock, monkeypatch
):  # fmt: skip
    # Two runs of the CAP's refund step: one records the MUGs' return as owed, finishes its pending
    # refund and dies; the other read the return before that record and marks it refunded. Before:
    # the refunded return kept the record, which no pass reads (the returns pass reads received
    # returns): the MUGs' return showed 25.81 of the 26.81 that went back, for good.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    before = returns.get(cap_return)
    died_showing(monkeypatch, returns, cap_return)
    assert returns.get(cap_return).shows_owed == [mugs_return]
    with monkeypatch.context() as patched:
        patched.setattr(returns, "_received", lambda return_id: before)  # read before the record
        assert returns.refund(cap_return, actor="key_wh").status is ReturnStatus.REFUNDED

    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).shows_owed == []


def test_a_run_finding_its_return_refunded_by_a_concurrent_one_leaves_other_returns_pending_refunds_alone(
    world, clock
):  # fmt: skip
    # A run that read the order with the MUGs' refund pending finds the CAP's return marked refunded
    # by a concurrent run. Before: it recorded the MUGs' return on the refunded one (read by no pass)
    # and finished the refund: dying then, nothing showed it. Now the refund is left pending, to the
    # pending-refund pass, which shows what went back.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    stale = world.order(order.id)
    item = returns.get(cap_return)
    world.returns.update(item.refunded(Money.of("1.00", "USD"), at=clock()), item)

    after = returns._finish_pending(item, stale, "key_wh", besides_return=cap_return)

    assert after.payment.refunds[-1].status == "pending"
    assert returns.get(cap_return).shows_owed == []
    later(clock)
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    sweep(world, clock).run(ACTOR, finished=finished)
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    assert returns.get(mugs_return).refund == order.lines[0].total


def test_a_show_failing_after_the_gateway_stayed_down_does_not_hide_that_it_was_down(world, clock, monkeypatch):
    # The CAP's step finds the gateway still down for the MUGs' pending refund, and the show it makes
    # all the same (of what was finished before) fails too. Before: the show's error replaced the
    # gateway's, so the workflow saw a plain error, not PaymentGatewayUnavailable (its Retry).
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)

    def down(*args: object, **kwargs: object) -> None:
        raise PaymentGatewayUnavailable("the gateway is unavailable")

    def show_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the Returns table failed")

    with monkeypatch.context() as patched:
        patched.setattr(returns._refunds, "finish_pending", down)
        patched.setattr(returns_module, "show_owed", show_fails)
        with pytest.raises(PaymentGatewayUnavailable) as raised:
            returns.refund(cap_return, actor="key_wh")  # the workflow's step (run_return_workflow takes it as not done)
    assert any("the Returns table failed" in note for note in getattr(raised.value, "__notes__", []))
    assert world.order(order.id).payment.refunds[-1].status == "pending"
    assert returns.get(cap_return).shows_owed == [mugs_return]  # the record stays for the retry

    assert run_return_workflow(returns, cap_return, actor="key_wh").status is ReturnStatus.REFUNDED  # the step, retried
    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).shows_owed == []


class Died(Exception):
    """The function running the step died here."""


@pytest.mark.parametrize("then", ["retry", "passes"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("at_write", range(1, 8))  # the step makes 7 writes
def test_a_refund_step_dying_at_any_write_shows_every_return_what_went_back_once(
    world, clock, monkeypatch, at_write, when, then
):  # fmt: skip
    # The CAP's refund step (finishing the pending refund of what the MUGs kept back first) dies
    # just before or just after its `at_write`-th write of an order or a return (before one: the
    # gateway may have answered, unrecorded); then the step is run again to its end, or, recorded
    # stuck, only the reconciler's passes run. Whatever the death point, the MUGs' return shows all
    # that went back for it, the CAP's is refunded, the money moved once, and no record is left.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    returns.restock(cap_return)
    returns.record_on_order(cap_return, "key_wh")
    writes = [0]

    def dying(write):
        def write_or_die(*args: object, **kwargs: object) -> None:
            writes[0] += 1
            if writes[0] == at_write and when == "before":
                raise Died
            write(*args, **kwargs)
            if writes[0] == at_write:
                raise Died

        return write_or_die

    with monkeypatch.context() as patched:
        patched.setattr(world.orders, "update", dying(world.orders.update))
        patched.setattr(world.returns, "update", dying(world.returns.update))
        with pytest.raises(Died):
            returns.refund(cap_return, actor="key_wh")

    if then == "passes":
        returns.stuck(cap_return, "States.Timeout", "the function died", actor="returns-workflow", execution="x1")
        workflow = InlineReturnWorkflow(returns)
        # The payment plugin takes the order's method (Payments.methods): a return set aside while
        # its own refund is pending is read again once the pending-refund pass made it.
        passes = reconciler(world, clock, workflow, payment_methods=lambda: {order.payment.method})
        for _ in range(2):
            later(clock)
            passes.run()
            finished: list[str] = []
            PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(
                ACTOR, orders=finished
            )
            sweep(world, clock).run(ACTOR, finished=finished)
        # Stuck midway with no refund of its own refused, failed or pending, the CAP's workflow is
        # started again, once (it was left to a person until plain returns were restarted); one whose
        # own refund was begun is marked refunded once the pending-refund pass has made it.
        assert workflow.started in ([], [cap_return])
        assert returns.get(cap_return).status is ReturnStatus.REFUNDED
    else:
        # The step, retried.
        assert run_return_workflow(returns, cap_return, actor="key_wh").status is ReturnStatus.REFUNDED
    after = world.order(order.id)
    cap_refund = returns.get(cap_return).refund
    assert returns.get(mugs_return).refund == order.lines[0].total
    assert returns.get(cap_return).shows_owed == []
    assert [r.status for r in after.payment.refunds if r.status != "succeeded"] == []
    assert after.payment.refunded == Money.of("1.00", "USD") + order.lines[0].total + cap_refund
    assert paid_in_full(order, after, Money.of("1.00", "USD") + cap_refund)


def test_a_return_whose_owed_refresh_keeps_failing_keeps_no_return_behind_it_from_its_pass(world, clock, monkeypatch):
    # The CAP's step died before showing the MUGs' return what went back, and was left stuck; then
    # the other CAP came back and the function died before starting its workflow. Every write of
    # the CAP's return now raises (as one too large for its table would). Before: the returns pass
    # raised on the CAP every run, and the other CAP, behind it in the index, was never started.
    returns, order, mugs_return, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    died_showing(monkeypatch, returns, cap_return)
    returns.stuck(cap_return, "States.Timeout", "the function died", actor="returns-workflow", execution="x1")
    lost = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")
    returns.receive(lost.id, receipt("wh-east", ("L2", 1, "resellable")), "key_wh")
    write = world.returns.update

    def fails_for_the_cap(new: Return, *args: object, **kwargs: object) -> object:
        if new.id == cap_return:
            raise RuntimeError("ValidationException: Item size has exceeded the maximum allowed size")
        return write(new, *args, **kwargs)

    monkeypatch.setattr(world.returns, "update", fails_for_the_cap)
    workflow = InlineReturnWorkflow(returns)
    passes = reconciler(world, clock, workflow)
    clock.now = clock.now + timedelta(hours=1)

    with pytest.raises(ReturnsNotReconciled) as raised:
        passes.run()

    assert raised.value.restarted == [lost.id] and workflow.started == [lost.id]
    assert list(raised.value.failed) == [cap_return] and raised.value.outage is None
    assert "Item size" in str(raised.value.failed[cap_return])
    assert returns.get(lost.id).status is ReturnStatus.REFUNDED
    assert returns.get(cap_return).shows_owed == [mugs_return]  # still owed: the next pass tries again
    with pytest.raises(ReturnsNotReconciled) as again:
        passes.run()
    assert again.value.restarted == [] and list(again.value.failed) == [cap_return]


def test_a_dependency_down_ends_the_returns_pass_with_what_it_did(world, clock, monkeypatch):
    # Not a return's own failure: every return after it would fail alike, so the pass stops.
    returns, order, _, cap_return = caps_return_finishing_the_kept_back_refund(world, clock)
    other = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")
    returns.receive(other.id, receipt("wh-east", ("L2", 1, "resellable")), "key_wh")
    history = world.orders.history
    reads: list[str] = []

    def down(order_id: str, *args: object, **kwargs: object) -> object:
        reads.append(order_id)
        raise TransientError("the orders table is throttled")

    monkeypatch.setattr(world.orders, "history", down)
    workflow = InlineReturnWorkflow(returns)
    passes = reconciler(world, clock, workflow)
    clock.now = clock.now + timedelta(hours=1)

    with pytest.raises(ReturnsNotReconciled) as raised:
        passes.run()

    assert isinstance(raised.value.outage, TransientError) and raised.value.failed == {}
    assert reads == [order.id] and workflow.started == []  # stopped at the first: nothing read past it
    monkeypatch.setattr(world.orders, "history", history)
    assert passes.run() == [cap_return, other.id]  # back: both started


def test_a_return_shows_what_it_kept_back_when_the_reconciler_died_between_finishing_the_refund_and_showing_it(
    world, clock
):  # fmt: skip
    # As above, but the reconciler died after the pending-refund pass recorded the gateway's yes and
    # before the kept-back pass showed it. Before: the order was then in neither pass's index (no
    # refund pending, nothing kept back owed), so no pass ever read it again and the MUGs' return
    # showed 1.00 less than went back for it, for good.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    shown = returns.get(return_id).refund
    caps_delivered_while_the_gateway_was_down(world, clock, order, caps)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=[])
    finished = world.order(order.id)
    assert finished.payment.refunds[-1].status == "succeeded"
    assert returns.get(return_id).refund == shown  # the reconciler died here
    asked = len(world.gateway.calls)

    for _ in range(2):  # every pass, run as the reconciler runs them, twice
        later(clock)
        passed: list[str] = []
        PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=passed)
        sweep(world, clock).run(ACTOR, finished=passed)

    after = world.order(order.id)
    assert returns.get(return_id).refund == order.lines[0].total == shown + Money.of("1.00", "USD")
    assert paid_in_full(order, after, Money.of("1.00", "USD"))
    assert after.payment.refunds == finished.payment.refunds  # nothing refunded twice
    assert len(world.gateway.calls) == asked  # nor asked again
    assert "refund_key" not in index_attributes(after)  # read by no pass again


@pytest.mark.parametrize("dies", [False, True], ids=["same_run", "died_before_the_kept_back_pass"])
def test_an_exchange_shows_its_credit_given_back_once_the_reconciler_finishes_the_give_back_left_pending(
    world, clock, dies
):  # fmt: skip
    # The MUGs are exchanged for a CAP (13.48 refunded at once, the rest pays for the CAP). The CAP is
    # cancelled while the gateway is down: the give-back of its credit, naming the return, stays
    # pending, and the reconciler's pending-refund pass makes it. Before: nothing showed it on the
    # return (nothing was kept back, so the kept-back pass did not read the order), which kept
    # showing 13.48 of the 26.81 that went back for it, for good.
    returns, _ = returns_for(world, clock)
    order, item, settled, replacement = mugs_exchanged_for_a_cap(world, returns)
    world.gateway.script("refund", "transient")
    with contextlib.suppress(PaymentGatewayUnavailable):
        world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    assert world.order(order.id).payment.refunds[-1].status == "pending"
    world.gateway.script("refund", "approve")

    later(clock)
    finished: list[str] = []
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=finished)
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    if dies:
        assert returns.get(item.id).refund == settled.refund  # the reconciler died here
        later(clock)
        finished = []
    sweep(world, clock).run(ACTOR, finished=finished)

    after = world.order(order.id)
    assert after.payment.refunded == order.lines[0].total
    assert returns.get(item.id).refund == order.lines[0].total
    assert "refund_key" not in index_attributes(after)


def test_an_exchange_shows_its_credit_given_back_though_the_cancel_that_gave_it_back_died_before_showing_it(
    world, clock, monkeypatch
):  # fmt: skip
    # The CAP replacement is cancelled and its credit given back at once, and the cancel dies before
    # showing it on the exchange's return. Before: nothing pending, nothing kept back, so no pass read
    # the order again and the return showed 13.48 of the 26.81 that went back for it, for good.
    import core.exchange_credit as exchange_credit

    returns, _ = returns_for(world, clock)
    order, item, settled, replacement = mugs_exchanged_for_a_cap(world, returns)

    def dies(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the cancel's function timed out here")

    with monkeypatch.context() as patched:
        patched.setattr(exchange_credit, "show_refunded_in_all", dies)
        with pytest.raises(TimeoutError):
            world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    given = world.order(order.id)
    assert given.payment.refunded == order.lines[0].total
    assert returns.get(item.id).refund == settled.refund
    asked = len(world.gateway.calls)

    later(clock)
    sweep(world, clock).run(ACTOR)

    after = world.order(order.id)
    assert returns.get(item.id).refund == order.lines[0].total
    assert after.payment.refunds == given.payment.refunds and len(world.gateway.calls) == asked
    assert "refund_key" not in index_attributes(after)


def test_the_upgrade_finds_an_exchange_an_earlier_version_left_short_and_the_pass_shows_it(world, clock, monkeypatch):
    # As above, but the cancel ran under an earlier version, which recorded the give-back without the
    # returns owing its show: the order was in no index and the exchange's return showed 13.48 of the
    # 26.81 that went back for it, for good. The upgrade (infra.backfill_orders) finds the return
    # showing less than the order refunded for it and marks the order; the pass shows it.
    import core.exchange_credit as exchange_credit
    from core.refund_service import returns_shown_short

    returns, store = returns_for(world, clock)
    order, item, _settled, replacement = mugs_exchanged_for_a_cap(world, returns)
    other = world.allocated(("MUG", 1))  # no return: nothing to read

    def dies(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the cancel's function timed out here")

    with monkeypatch.context() as patched:
        patched.setattr(exchange_credit, "show_refunded_in_all", dies)
        with pytest.raises(TimeoutError):
            world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    marked = world.order(order.id)
    unmarked = marked.returns_shown([item.id], at=clock())  # as the earlier version stored it
    assert unmarked is not None
    world.orders.update(unmarked[0], marked, [])
    earlier = world.order(order.id)
    assert "refund_key" not in index_attributes(earlier)

    assert returns_shown_short(earlier, store) == [item.id]
    assert returns_shown_short(world.order(replacement.id), store) == returns_shown_short(other, store) == []
    upgraded = earlier.owe_returns_shown([item.id], at=clock())
    assert upgraded is not None and earlier.owe_returns_shown([], at=clock()) is None
    world.orders.update(upgraded[0], earlier, [])
    later(clock)
    sweep(world, clock).run(ACTOR)

    after = world.order(order.id)
    assert returns.get(item.id).refund == order.lines[0].total
    assert after.payment.refunds == earlier.payment.refunds and not after.returns_to_show
    assert "refund_key" not in index_attributes(after)
    assert returns_shown_short(after, store) == []  # a second run marks nothing


def test_a_show_computed_before_another_refund_was_answered_does_not_clear_the_record(world, clock):
    # The pending-refund pass finished the refund of what the MUGs' return kept back (the order
    # records the return owing its show). A show decided on the order as read then, with another
    # refund answered since (a goodwill refund), clears nothing: what it showed may be short of it.
    # The kept-back pass, reading the order again, shows it and clears the record.
    from core.refund_service import returns_shown

    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    caps_delivered_while_the_gateway_was_down(world, clock, order, caps)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR, orders=[])
    seen = world.order(order.id)
    assert seen.returns_to_show == [return_id]
    world.refunds.issue_refund(order.id, Money.of("0.50", "USD"), "sorry again", "appease-2", "key_cs")

    kept = returns_shown(world.orders, seen, [return_id], clock())
    assert kept.returns_to_show == [return_id] and len(kept.payment.refunds) == len(seen.payment.refunds) + 1
    later(clock)
    sweep(world, clock).run(ACTOR)
    after = world.order(order.id)
    assert not after.returns_to_show and "refund_key" not in index_attributes(after)
    assert returns.get(return_id).refund == order.lines[0].total


def test_the_upgrade_leaves_a_replacements_return_that_shows_what_went_back_unmarked_run_after_run(world, clock):
    # A return of a replacement's units refunded from its captures and from the credit on the
    # original, shown whole (the replacement's own refund and the credit's). Before: the upgrade
    # (infra.backfill_orders) marked every refunded return of a replacement's units, right or not,
    # so each run of it marked the order again after the pass had shown and cleared it. Now it
    # counts what the credit refunded up the chain, and marks only a return showing less than both.
    from core.exchange_credit import ExchangeCredits
    from core.refund_service import returns_shown_short
    from tests.unit.test_returns import delivered, exchanged

    returns, _, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    replacement = delivered(world, world.run(settled.exchange_order_id or ""))
    back = returns.request(replacement.id, ask(("L1", 1, "wrong_item"), ("L2", 1, "wrong_item")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "resellable")), "key_wh")
    done = run_return_workflow(returns, back.id, actor="key_wh")
    replacement = world.order(replacement.id)
    assert done.status is ReturnStatus.REFUNDED and done.refund == replacement.totals.grand_total
    assert replacement.payment.refunded < done.refund  # the rest came from the credit, on the original
    drawn = ExchangeCredits(world.returns, world.refunds, world.orders).drawn_for_return

    assert returns_shown_short(replacement, world.returns, drawn) == []

    # An earlier version showed only the replacement's own refund of it: that one is marked.
    item = world.returns.get(back.id)
    assert item is not None
    short = item.model_copy(update={"refund": replacement.payment.refunded, "version": item.version + 1})
    world.returns.update(short, item)
    assert returns_shown_short(replacement, world.returns, drawn) == [back.id]


def test_what_a_return_kept_back_is_shown_on_it_though_its_first_show_lost_a_race(world, clock, monkeypatch):
    # As above; the return's show of what went back for it loses its conditional write to another
    # writer of the return (StaleVersion): read again and written, not dropped, or the return would
    # show none of the money given back for it.
    from core.errors import StaleVersion

    returns, order, item, _, caps = kept_back_as_the_last_parcel_arrived(world, clock, monkeypatch)
    update = world.returns.update
    lost: list[str] = []

    def loses_once(new: Return, expected: Return) -> None:
        if new.id == item.id and not lost:
            lost.append(new.id)
            raise StaleVersion(f"return {new.id} moved on")
        update(new, expected)

    monkeypatch.setattr(world.returns, "update", loses_once)
    later(clock)
    sweep(world, clock).run(ACTOR)

    assert lost == [item.id]
    assert returns.get(item.id).refund == world.order(order.id).shipment(caps).captured


def test_a_stuck_return_whose_refund_went_back_is_not_marked_refunded_while_the_refund_of_what_it_kept_back_pends(
    world, clock, monkeypatch
):  # fmt: skip
    # The MUGs' refund went back (25.81, keeping 1.00 back for the CAPs' capture), but marking the
    # return refunded was throttled through the step's retries and its workflow recorded it stuck;
    # the CAPs then shipped and arrived while the gateway was down, leaving the refund of that 1.00
    # pending. The pass leaves the return received while that refund pends, and marks it refunded
    # once the pending-refund pass made it, showing the MUGs' whole worth.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    real = world.returns.update

    def throttled_marking_it_refunded(new: Return, expected: Return, *args: object, **kwargs: object) -> None:
        if new.status is ReturnStatus.REFUNDED:
            raise TransientError("the Returns table is throttled")
        real(new, expected, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(world.returns, "update", throttled_marking_it_refunded)
        with pytest.raises(TransientError):
            run_return_workflow(returns, return_id, actor="returns-workflow")
    returns.stuck(return_id, "TransientError", "the Returns table is throttled", actor="returns-workflow")
    caps_delivered_while_the_gateway_was_down(world, clock, order, caps)
    refunds = world.order(order.id).payment.refunds
    assert [(r.return_id, r.status) for r in refunds[1:]] == [(return_id, "succeeded"), (return_id, "pending")]
    workflow = InlineReturnWorkflow(returns)
    methods = {order.payment.method}

    passes = reconciler(world, clock, workflow, payment_methods=lambda: methods)
    assert (passes.run(), passes.marked_refunded) == ([], [])
    assert returns.get(return_id).status is ReturnStatus.RECEIVED

    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=AFTER).run(ACTOR)
    assert world.order(order.id).payment.refunds[-1].status == "succeeded"
    assert (passes.run(), passes.marked_refunded) == ([], [return_id])
    done = returns.get(return_id)
    assert (done.status, done.refund) == (ReturnStatus.REFUNDED, order.lines[0].total)
    assert paid_in_full(order, world.order(order.id), Money.of("1.00", "USD")) and workflow.started == []
