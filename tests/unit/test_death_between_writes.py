"""A function that dies right after the gateway's answer is recorded, before a second write that
records what it means: every retry, redelivery and reconciler pass there is must still leave the
money, or the call to a person, where it belongs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.events import OrderEvent
from core.models import HistoryEntry, Order
from tests.unit.test_authorization_sweep import sweep as authorization_sweep
from tests.unit.test_jeopardy import Clock
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_pending_refund_sweep import sweep as pending_refund_sweep
from tests.unit.test_unit_cancellation import STOCK as CANCEL_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import Died, World, build_world

ACTOR = "reconciler"


def dies_after_recording(world: World, monkeypatch: pytest.MonkeyPatch, event: str, *, nth: int = 1) -> list[bool]:
    """The `nth` write with an entry `event` lands, and the process dies right after it, once:
    nothing the function meant to write next is written."""
    real = world.orders.update
    seen: list[bool] = []
    died: list[bool] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry]) -> None:
        real(order, expected, entries)
        if not died and any(entry.type == event for entry in entries):
            seen.append(True)
            if len(seen) == nth:
                died.append(True)
                raise Died(event)

    monkeypatch.setattr(world.orders, "update", update)
    return died


def passes(world: World, clock: Clock) -> None:
    """The reconciler's passes that touch payments, each as a later run finds the order."""
    for _ in range(3):
        clock.now += timedelta(minutes=20)
        pending_refund_sweep(world, clock).run(ACTOR)
        authorization_sweep(world, clock).run(ACTOR)
        kept_back_sweep(world, clock).run(ACTOR)


def every_pass(world: World, clock: Clock, order_id: str, shipment_id: str) -> None:
    """Every retry and pass there is for the order: deliveries and ships reported again, the
    reconciler's passes."""
    for _ in range(2):
        world.actions.deliver(order_id, shipment_id, actor="key_carrier")
        world.actions.ship(order_id, shipment_id, None, actor="key_wh")
        passes(world, clock)


def test_a_function_that_dies_after_the_third_over_capture_refusal_still_calls_a_person(monkeypatch):
    # Before: the third refusal was recorded in one write and the person told in the next; a
    # function that died between them left three refusals in a row, which nothing asks again
    # (left to a person), and no entry, no alarm, no log line: the customer's money was lost for good.
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    world.actions.deliver(order.id, east, actor="key_carrier")
    died = dies_after_recording(world, monkeypatch, OrderEvent.REFUND_FAILED, nth=1)
    with pytest.raises(Died):
        world.actions.deliver(order.id, east, actor="key_carrier")  # hears the third refusal
    monkeypatch.undo()
    assert died and [r.status for r in world.order(order.id).payment.refunds] == ["failed"] * 3

    every_pass(world, clock, order.id, east)

    after = world.order(order.id)
    assert [r.status for r in after.payment.refunds] == ["failed"] * 3  # nothing asks it again
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [(e.actor, e.detail["refusals"], e.detail["amount"]) for e in told] == [
        ("key_carrier", 3, after.payment.refunds[-1].amount.model_dump(mode="json"))
    ]
