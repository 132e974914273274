"""Seeded random journeys of a two-parcel order on the in-memory world (ships days apart, so its
authorization is renewed and refunds split; appeasements, returns, exchanges and returns of their
replacements, cancels of units; a gateway that refuses parts and loses answers), ended by a
reconciler pass: whatever happened, the money the gateway moved is what the orders, their refund
lists, their `refund.succeeded` events, the customer's `refunded` total and the returns show."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.aggregates import aggregate_change
from core.domain_events import EventType, order_events
from core.errors import DomainError
from core.models import Order, PaymentRefund
from core.money import Money
from core.refund_service import KeptBackSweep, PendingRefundSweep
from core.return_models import ReceiveReturn, RequestReturn
from tests.fakes import run_return_workflow
from tests.unit.test_kept_back_sweep import InMemoryKeptBackRefunds
from tests.unit.test_pending_refund_sweep import InMemoryPendingRefunds
from tests.unit.test_refund_authorizations import STOCK, returns_of
from tests.unit.world import Clock, World, build_world

USD = Money.zero("USD")
# How the gateway answers the refunds of a step, in turn (the last one sticks).
ANSWERS = [
    ("approve",), ("approve", "refuse"), ("approve", "approve", "refuse"), ("refuse", "approve"),
    ("transient", "transient", "transient", "approve"),
]  # fmt: skip
STEPS = [
    "ship", "ship", "deliver", "days", "appease", "appease", "return", "exchange", "replacement", "replacement",
    "appease_replacement", "return_replacement", "settle_again", "cancel_units", "reconcile",
]  # fmt: skip


class LostAnswers:
    """A gateway that refunds, then loses its answer now and then (the call times out), and replays
    its answer to a key it answered before, as a real one does."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.losing = True
        self.answered: dict[str, Any] = {}

    @hookimpl(wrapper=True)
    def oms_payment_refund(self, idempotency_key):
        result = yield
        if idempotency_key in self.answered:
            result = self.answered[idempotency_key]
        elif result is not None and result.outcome == "approved":
            self.answered[idempotency_key] = result
        if self.losing and result is not None and result.outcome == "approved" and self.rnd.random() < 0.3:
            raise TimeoutError("the gateway's answer was lost")
        return result


def went_back(refund: PaymentRefund) -> Money:
    """What of `refund` the gateway gave back: all of a succeeded one, the approved parts of a refused one."""
    if refund.status == "succeeded":
        return refund.amount
    return sum((part.amount for part in refund.parts or [] if part.status == "succeeded"), USD)


def returnable(order: Order) -> list[tuple[str, int]]:
    shipped = order.shipped_units()
    left = [(line.line_id, shipped.get(line.line_id, 0) - line.returned_quantity) for line in order.lines]
    return [(line_id, units) for line_id, units in left if units > 0]


def journey(seed: int) -> tuple[World, dict[str, list[dict[str, Any]]], list[str]]:
    """The world after `seed`'s journey and a reconciler pass, each order's stored versions in turn,
    and the steps taken."""
    rnd = random.Random(seed)
    clock = Clock()
    lost = LostAnswers(rnd)
    world = build_world(STOCK, lost, clock=clock)
    versions: dict[str, list[dict[str, Any]]] = {}
    write, add = world.orders.update, world.orders.add

    def updated(order: Order, expected: Order, entries: list, **conditions: Any) -> None:
        write(order, expected, entries, **conditions)
        versions.setdefault(order.id, []).append(json.loads(order.stored_json()))

    def added(order: Order, *args: Any, **kwargs: Any) -> None:
        add(order, *args, **kwargs)
        versions.setdefault(order.id, []).append(json.loads(order.stored_json()))

    world.orders.update, world.orders.add = updated, added  # type: ignore[method-assign]
    order = world.allocated(("MUG", 1), ("CAP", 3))
    returns = returns_of(world, clock)
    replacements: list[str] = []
    received: list[str] = []
    taken: list[str] = []

    def give_back(order_id: str, lines: list[tuple[str, int]], exchange: bool = False) -> None:
        line_id, units = rnd.choice(lines)
        units = rnd.randint(1, units)
        asked: dict[str, Any] = {"lines": [{"line_id": line_id, "quantity": units, "reason": "r"}]}
        if exchange:
            asked["exchange"] = {"lines": [{"sku": rnd.choice(["TSHIRT", "CAP"]), "quantity": rnd.randint(1, 3)}]}
        item = returns.request(order_id, RequestReturn.model_validate(asked), actor="key_cs")
        back = {"location_id": "wh-east", "lines": [{"line_id": line_id, "quantity": units, "condition": "resellable"}]}
        returns.receive(item.id, ReceiveReturn.model_validate(back), "key_wh")
        received.append(item.id)
        settled = run_return_workflow(returns, item.id, actor="key_wh")
        if settled.exchange_order_id:
            replacements.append(settled.exchange_order_id)

    def appease(order_id: str) -> None:
        left = world.order(order_id).refundable()
        if left.amount > 0:
            amount = Money.of(str(round(rnd.uniform(0.01, float(left.amount)), 2)), "USD")
            world.refunds.issue_refund(order_id, amount, "goodwill", rnd.choice(["k1", f"k{len(taken)}"]), actor="cs")

    for _ in range(24):
        step = rnd.choice(STEPS)
        world.gateway.script("refund", *rnd.choice(ANSWERS))
        current = world.order(order.id)
        pending = [s.id for s in current.shipments if s.status.value == "pending"]
        try:
            if step == "ship" and pending:
                world.actions.ship(order.id, rnd.choice(pending), tracking_number=None, actor="key_wh")
            elif step == "deliver":
                shipped = [s.id for s in current.shipments if s.status.value == "shipped"]
                if shipped:
                    world.actions.deliver(order.id, rnd.choice(shipped), actor="key_wh")
            elif step == "days":
                clock.days_later(rnd.choice([1, 10]))
            elif step == "appease":
                appease(order.id)
            elif step in ("return", "exchange") and returnable(current):
                give_back(order.id, returnable(current), exchange=step == "exchange")
            elif step == "replacement" and replacements:
                replacement = world.order(rnd.choice(replacements))
                waiting = [s.id for s in replacement.shipments if s.status.value == "pending"]
                if replacement.status.value in ("pending", "authorized"):
                    world.run(replacement.id)
                elif waiting:
                    world.actions.ship(replacement.id, rnd.choice(waiting), tracking_number=None, actor="key_wh")
            elif step == "appease_replacement" and replacements:
                appease(rnd.choice(replacements))
            elif step == "return_replacement" and replacements:
                replacement = world.order(rnd.choice(replacements))
                if returnable(replacement):
                    give_back(replacement.id, returnable(replacement))
            elif step == "settle_again" and received:
                run_return_workflow(returns, rnd.choice(received), actor="key_wh")
            elif step == "cancel_units":
                line = rnd.choice(current.lines)
                left = line.quantity - current.shipped_units().get(line.line_id, 0)
                if left > 0 and len(pending) > 0:
                    world.actions.cancel(order.id, "x", actor="key_web", lines={line.line_id: rnd.randint(1, left)})
            elif step == "reconcile":
                reconcile(world, clock)
            taken.append(step)
        except DomainError as error:  # a refusal the API answers (409, 422, 503): the journey goes on
            taken.append(f"{step}: {type(error).__name__}")
    lost.losing = False
    world.gateway.script("refund", "approve")
    reconcile(world, clock)
    return world, versions, taken


def reconcile(world: World, clock: Clock) -> None:
    """The reconciler's refund passes, 20 minutes on: the pending refunds, then what returns kept back."""
    clock.now = clock.now + timedelta(minutes=20)
    finished: list[str] = []
    after = timedelta(minutes=15)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=after).run("rec", orders=finished)
    owed = InMemoryKeptBackRefunds(world)
    KeptBackSweep(
        owed,
        world.orders,
        world.actions.refund_kept_back,
        clock,
        release_stock=world.actions.release_owed_stock,
        after=after,
    ).run("rec", finished=finished)


# Seed 66 ends with a refund of what a return kept back that only the reconciler finishes, 101 with
# one another return's refund step finishes, 312 with a split refund refused after its first part.
@pytest.mark.parametrize("seed", [*range(12), 66, 101, 312])
def test_what_the_gateway_refunded_is_what_the_orders_events_customer_and_returns_show(seed: int):
    world, versions, taken = journey(seed)

    moved = sum((amount for _, amount, _ in world.spy.refunded), USD)
    orders = {order_id: world.order(order_id) for order_id in versions}
    assert sum((order.payment.refunded for order in orders.values()), USD) == moved, taken
    for order in orders.values():
        assert order.payment.refunded <= order.payment.captured, taken
    listed = [r for order_id in orders for r in world.refunds.refunds(order_id) if r.status == "succeeded"]
    assert sum((r.amount for r in listed), USD) == moved, taken
    told = [
        Money.model_validate(event.data["refund"]["amount"])
        for stored in versions.values()
        for old, new in zip([None, *stored], stored, strict=False)
        for event in order_events(old, new)
        if event.type is EventType.REFUND_SUCCEEDED
    ]
    assert sum(told, USD) == moved, taken
    counted = Decimal(0)
    for stored in versions.values():
        for old, new in zip([None, *stored], stored, strict=False):
            counted += sum(
                (u.add.get("refunded_USD", Decimal(0)) for u in aggregate_change(old, new).updates), Decimal(0)
            )
    assert counted == moved.amount, taken
    for order in orders.values():
        for item in world.returns.for_order(order.id):
            if item.status.value != "refunded" or item.exchange_order_id:
                continue
            mine = [r for r in order.payment.refunds if r.return_id == item.id]
            if order.exchange_of:  # drawn on its exchange's credit, on the original
                drawn = f"return {item.id} of exchange"
                mine += [r for other in orders.values() for r in other.payment.refunds if drawn in r.reason]
            assert item.refund == sum((went_back(r) for r in mine), USD), (item.id, taken)
