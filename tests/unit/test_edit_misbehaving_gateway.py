"""An edit that grows an allocated order's total authorizes the new total first; here the gateway
or its plugin spoils that authorization after the gateway made it (its answers lost, a plugin that
raises, answers an outcome PaymentResult does not know or approves another amount). The edit
answers 503 or 502 and stores nothing; whatever comes next (the edit repeated with the same
If-Match, a cancel, or the parcels shipped as they were) leaves no authorization holding the
customer's card beyond the one the order captures on, and the order's payment as the gateway has it."""

from __future__ import annotations

import pytest

from core.errors import PaymentGatewayUnavailable, PaymentPluginFailed
from core.models import LineInput, Order, OrderEdit
from core.status import OrderStatus, PaymentStatus
from plugins import test_payments
from tests.fakes import AnswersLost
from tests.unit.test_money_misbehaving_gateway import MisbehavesAfterActing
from tests.unit.world import World, build_world

ANSWERED = {
    "lost": PaymentGatewayUnavailable,
    "raise": PaymentPluginFailed,
    "unknown_outcome": PaymentPluginFailed,
    "other_amount": PaymentPluginFailed,
}
TWO_MORE = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)])


def repeated(world: World, order: Order) -> Order:
    world.actions.edit(order.id, order.version, TWO_MORE, actor="key_cs")
    return world.run(order.id)  # the outbox restarts its workflow: sourced again


def cancelled(world: World, order: Order) -> Order:
    return world.actions.cancel(order.id, "changed my mind", actor="key_cs")


def shipped(world: World, order: Order) -> Order:
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    return world.order(order.id)


@pytest.mark.parametrize("then", [repeated, cancelled, shipped])
@pytest.mark.parametrize("mode", sorted(ANSWERED))
def test_an_edits_authorization_spoilt_after_the_gateway_made_it_leaves_no_hold_behind(mode, then):
    test_payments.forget()  # the gateway's record holds this test's authorizations only
    lost, misbehaves = AnswersLost(), MisbehavesAfterActing()
    world = build_world([("TSHIRT", "wh-west", 9)], lost, misbehaves)
    order = world.allocated(("TSHIRT", 2))
    if mode == "lost":
        lost.lose("authorize", 3)
    else:
        misbehaves.modes["authorize"] = mode

    with pytest.raises(ANSWERED[mode]):
        world.actions.edit(order.id, order.version, TWO_MORE, actor="key_cs")

    assert world.order(order.id).totals == order.totals  # nothing stored
    lost.left.clear()
    misbehaves.modes.clear()
    after = then(world, world.order(order.id))

    expected = {
        repeated: (OrderStatus.ALLOCATED, PaymentStatus.AUTHORIZED),
        cancelled: (OrderStatus.CANCELLED, PaymentStatus.VOIDED),
        shipped: (OrderStatus.SHIPPED, PaymentStatus.CAPTURED),
    }[then]
    assert (after.status, after.payment.status) == expected
    held = test_payments._held
    assert len(held) == 2  # the order's first authorization, and the edit's, made once
    holding = {ref for ref, h in held.items() if not h.voided and h.captured != h.amount}
    assert holding == ({after.payment.authorization} if then is repeated else set())
    assert sum(h.captured.amount for h in held.values()) == after.payment.captured.amount
    if then is repeated:
        assert after.payment.authorized == after.totals.grand_total  # the edit's, recorded as made
