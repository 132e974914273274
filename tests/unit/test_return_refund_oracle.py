"""Seeded journeys of a two-parcel order (MUGs in the west, one to three CAPs in the east) under a
policy with a restocking fee and the built-in rule for shipping (back with the whole order, when
it all came back for the shop's fault): returns one after another (a fee that may take all their
units are worth, parcels that arrive short), the east parcel shipped or cancelled at any point,
appeasements; ended by the reconciler's refund passes. What was refunded is what API.md says a
return gives back, worked out here apart from the code: each unit's share of its line (the
cumulative shares, rounded half-even), plus the shipping for the return that brings the whole
order back for the shop's fault, minus the fee, never below zero; with the appeasements, never
more than was captured."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from core.money import Money
from core.refunds import units_share
from core.return_models import ReceiveReturn, RequestReturn
from core.returns import Returns
from tests.builders import NOW
from tests.fakes import run_return_workflow
from tests.unit.test_refund_journeys import reconcile
from tests.unit.test_returns import FeeForFaults, returns_for
from tests.unit.world import Clock, build_world

SHOP_FAULTS = ("damaged", "defective")
FEES = ["0.00", "1.00", "5.00", "13.41", "15.00", "30.00"]


def sent_back(rnd: random.Random, returns: Returns, order_id: str, left: dict[str, int], code: str) -> dict[str, int]:
    """A return of some of the units `left` of each line, for `code`, received (a parcel now and then
    short of what it was asked for) and settled: the units that arrived."""
    asked = {line_id: rnd.randint(1, units) for line_id, units in left.items() if units > 0}
    body = [
        {"line_id": line_id, "quantity": units, "reason": "r", "reason_code": code} for line_id, units in asked.items()
    ]
    item = returns.request(order_id, RequestReturn.model_validate({"lines": body}), actor="key_cs")
    arrived = {line_id: rnd.randint(1, units) if rnd.random() < 0.25 else units for line_id, units in asked.items()}
    receipt = [{"line_id": line_id, "quantity": units, "condition": "damaged"} for line_id, units in arrived.items()]
    returns.receive(item.id, ReceiveReturn.model_validate({"location_id": "wh-west", "lines": receipt}), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    return arrived


@pytest.mark.parametrize("seed", range(100))
def test_what_returns_refund_is_their_units_shares_and_the_shipping_less_their_fees(seed: int):
    rnd = random.Random(seed)
    clock = Clock(NOW + timedelta(days=3))
    world = build_world([("MUG", "wh-west", 3), ("CAP", "wh-east", 3)])
    policy = FeeForFaults("0.00")
    returns, _ = returns_for(world, clock, policy)
    order = world.allocated(("MUG", rnd.randint(1, 3)), ("CAP", rnd.randint(1, 3)))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    east_left = True  # the east parcel neither shipped nor cancelled yet
    back = {"L1": 0, "L2": 0}  # units of each line back so far
    fault_back = dict(back)  # of those, units back on returns for the shop's fault
    due: list[tuple[Decimal, Decimal]] = []  # each return's units' worth and fee, in turn
    appeased = Decimal(0)
    taken: list[object] = []
    for _ in range(8):
        current = world.order(order.id)
        shipped = current.shipped_units()
        left = {line.line_id: shipped.get(line.line_id, 0) - back[line.line_id] for line in current.lines}
        step = rnd.choice(["appease"] + ["return"] * 2 * any(left.values()) + ["ship", "cancel"] * east_left)
        if step == "ship":
            world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
            east_left = False
        elif step == "cancel":
            world.actions.cancel(order.id, "customer_request", "key_cs")
            east_left = False
        elif step == "appease" and current.refundable().amount > 0:
            amount = Money.of(Decimal(rnd.randint(1, int(current.refundable().amount * 100))) / 100, "USD")
            appeased += world.refunds.issue_refund(
                order.id, amount, "goodwill", f"k{len(taken)}", "key_cs"
            ).amount.amount
        elif step == "return":
            code = rnd.choice([*SHOP_FAULTS, "size_or_fit"])
            policy.fee = rnd.choice(FEES)
            arrived = sent_back(rnd, returns, order.id, left, code)
            lines = {line.line_id: line for line in world.order(order.id).lines}
            worth = Decimal(0)
            for line_id, units in arrived.items():
                worth += units_share(lines[line_id], units, back[line_id]).amount
                back[line_id] += units
                fault_back[line_id] += units if code in SHOP_FAULTS else 0
            due.append((worth, Decimal(policy.fee)))
            step = f"return ({code}, fee {policy.fee}): {arrived}"
        taken.append(step)
    reconcile(world, clock)

    final = world.order(order.id)
    whole = not east_left and all(fault_back[line.line_id] >= line.quantity for line in final.lines)
    owed = Decimal(0)
    for n, (worth, fee) in enumerate(due, start=1):
        shipping = final.totals.shipping.amount if whole and n == len(due) else Decimal(0)
        owed += max(worth + shipping - fee, Decimal(0))
    # The returns get what they are owed as far as the appeasements left captured money for them.
    assert final.payment.refunded.amount == appeased + min(owed, final.payment.captured.amount - appeased), taken
    assert final.payment.refunded <= final.payment.captured, taken
