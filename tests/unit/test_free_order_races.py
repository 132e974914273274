"""The authorization of an order that owes nothing (no gateway asked) racing a hold and an edit, as
the authorization the gateway makes does: recorded on the order held while pending, or, the order
edited meanwhile to owe something, asked of the gateway for that by the step's retry."""

from __future__ import annotations

import pytest

from core.errors import OrderClosed, OrderHeld, TransientError
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import NOTHING_TO_AUTHORIZE, LineInput, OrderEdit
from core.money import Money
from core.status import OrderStatus, PaymentStatus
from tests.builders import NOW, product
from tests.unit.world import World, before_the_next_write, build_world

S, P = OrderStatus, PaymentStatus
PICKUP = {"type": "pickup", "location_id": "store-sf"}


@pytest.fixture
def world() -> World:
    made = build_world([("SAMPLE", "store-sf", 10), ("MUG", "store-sf", 10)])
    made.catalog.put_product(product("SAMPLE", "0.00"))
    return made


def free_pickup(world: World) -> str:
    order_id = world.place(("SAMPLE", 1), fulfillment=PICKUP)
    assert world.order(order_id).payable() == Money.zero("USD")
    return order_id


def test_a_hold_placed_while_a_free_order_is_authorized_keeps_the_authorization_for_its_release(world, monkeypatch):
    order_id = free_pickup(world)
    holds = Holds(world.orders, clock=lambda: NOW)
    before_the_next_write(
        world, monkeypatch, lambda: holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    )

    with pytest.raises(OrderHeld):
        world.workflow.authorize_payment(order_id, attempt=0)

    held = world.order(order_id)
    assert (held.status, held.payment.status, held.payment.authorization) == (S.ON_HOLD, P.AUTHORIZED, None)
    assert held.hold is not None and held.hold.resume_to is S.AUTHORIZED
    [entry] = [e for e in world.history(order_id) if e.type == "payment_authorized"]
    assert entry.detail["reason"] == NOTHING_TO_AUTHORIZE
    assert world.spy.authorized == []
    monkeypatch.undo()
    holds.release(order_id, ReleaseRequest(), actor="key_ops")
    assert world.run(order_id).status is S.ALLOCATED
    assert world.spy.authorized == []


def test_a_free_order_edited_to_owe_something_while_it_is_authorized_is_authorized_for_that_by_the_retry(
    world, monkeypatch
):
    order_id = free_pickup(world)
    version = world.order(order_id).version

    def edit() -> None:
        lines = [LineInput(sku="SAMPLE", quantity=1), LineInput(sku="MUG", quantity=1)]
        world.actions.edit(order_id, version, OrderEdit(lines=lines), "key_cs")

    before_the_next_write(world, monkeypatch, edit)

    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)

    assert world.order(order_id).payment.status is P.PENDING
    monkeypatch.undo()
    world.workflow.authorize_payment(order_id, attempt=1)
    order = world.order(order_id)
    assert (order.status, order.payment.authorized) == (S.AUTHORIZED, order.totals.grand_total)
    assert order.payment.authorization in world.spy.authorized and order.payment.authorized.amount > 0


def test_a_free_order_cancelled_while_it_is_authorized_ends_the_step_as_closed_with_nothing_authorized(
    world, monkeypatch
):
    # OrderClosed ends the execution OrderAlreadyClosed; anything else (an InvalidTransition from
    # authorizing a cancelled order) would send it to ParkOrder, a task failure for an alarm.
    order_id = free_pickup(world)
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", "key_web"))

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert (order.status, order.payment.status, order.payment.authorization) == (S.CANCELLED, P.PENDING, None)
    assert [e.type for e in world.history(order_id)] == ["created", "cancelled"]
    assert world.spy.authorized == []
