"""What a cancel of units owes back (Order.settlement_owed) and the reconciler's kept-back pass that
gives it when the cancel's own function could not: what the pass reports of it, apart from what
returns kept back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.events import OrderEvent
from core.refund_service import KeptBackRefunded
from core.unit_cancellation import SETTLEMENT_REASON
from tests.unit.test_death_between_writes import dies_after_recording
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_pending_refund_sweep import sweep as pending_refund_sweep
from tests.unit.test_unit_cancellation import STOCK as CANCEL_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import Clock, Died, World, build_world

ACTOR = "reconciler"


def pass_later(world: World, clock: Clock | Clock) -> KeptBackRefunded:
    """The reconciler's pending-refund and kept-back passes, a while later: what the latter did."""
    clock.now += timedelta(minutes=20)
    pending_refund_sweep(world, clock).run(ACTOR)
    return kept_back_sweep(world, clock).run(ACTOR)


def cancel_dies_after_its_write(monkeypatch: pytest.MonkeyPatch, *refunds: str):
    """A delivered MUG and CAPs order whose cancel of the MUG dies right after its write, before
    refunding what the CAPs' capture holds beyond the new total; the gateway answers `refunds`."""
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.actions.deliver(order.id, east, actor="key_carrier")
    dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    monkeypatch.undo()
    world.gateway.script("refund", *refunds)
    return world, clock, order


def test_a_settlement_the_kept_back_pass_refunds_is_reported_as_owed_back_not_as_kept_back(monkeypatch):
    # Before: the pass counted it among the refunds of what a return kept back (its log line and
    # KeptBackRefunded), though no return kept anything back.
    world, clock, order = cancel_dies_after_its_write(monkeypatch, "approve")

    done = pass_later(world, clock)

    refund = world.order(order.id).payment.refunds[-1]
    assert (refund.kind, refund.status, refund.reason) == ("cancellation", "succeeded", SETTLEMENT_REASON)
    assert (done.owed_back_refunded, done.refunded) == ([refund.id], [])
    assert done.order_of == {refund.id: order.id}  # the reconciler's line names the order, not the refund alone
    refunded = [e for e in world.history(order.id) if e.type is OrderEvent.PAYMENT_REFUNDED]
    assert [e.detail["refund_id"] for e in refunded] == [refund.id]  # recorded once
    assert pass_later(world, clock) == KeptBackRefunded()  # out of the index: nothing more


def test_a_settlement_the_gateway_refuses_to_the_kept_back_pass_is_reported_as_owed_back_refused(monkeypatch):
    # Before: the pass counted the order among those whose refund of what a return kept back was
    # refused ("refund of what a return kept back refused", KeptBackRefused).
    world, clock, order = cancel_dies_after_its_write(monkeypatch, "refuse")

    done = pass_later(world, clock)

    assert [r.status for r in world.order(order.id).payment.refunds] == ["failed"]
    assert (done.owed_back_refused, done.refused, done.given_up) == ([order.id], [], [])


def test_two_cancels_that_die_before_refunding_owe_the_sum_and_the_pass_refunds_it_once(monkeypatch):
    # A CAP shipped with all the shipping captured (20.00 a unit), three PENs still to ship: two
    # cancels of a PEN each die right after their write. The second's write keeps the record the
    # first made, and what the captures hold beyond the total then holds both PENs' shipping: the
    # pass refunds it in one refund, once, and the order is settled to its total.
    from tests.unit.test_unit_cancellation import ShippingPerUnitOf20, settled

    clock = Clock()
    world = build_world([("PEN", "wh-west", 5), ("CAP", "wh-east", 8)], ShippingPerUnitOf20(), clock=clock)
    order = world.allocated(("CAP", 1), ("PEN", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    for key in ("k-1", "k-2"):
        dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
        with pytest.raises(Died):
            world.actions.cancel(order.id, "one pen", actor="key_web", lines={"L2": 1}, request_key=key)
        monkeypatch.undo()
    owing = world.order(order.id)
    assert owing.settlement_owed and owing.payment.refunds == []

    done = [pass_later(world, clock) for _ in range(2)]

    after = world.order(order.id)
    assert [(r.kind, r.status, r.amount) for r in after.payment.refunds] == [
        ("cancellation", "succeeded", owing.payment.captured - owing.totals.grand_total)
    ]
    assert settled(after) == after.totals.grand_total
    assert [d.owed_back_refunded for d in done] == [[after.payment.refunds[0].id], []]
    assert not after.settlement_owed
