"""A payment plugin that fails in a void (raises, or answers what the core cannot take: PluginError)
is a failed attempt no gateway answered (kind `plugin_error`): the cancel was written, so it answers
the order cancelled (not a 500), its payment honestly still authorized and the void owed, counted
for VoidsNotMadeAlarm; the reconciler's authorization pass asks again until the plugin voids it."""

from __future__ import annotations

import pytest

from core import hookimpl
from core.authorization_sweep import Settled, SettleIncomplete
from core.events import OrderEvent
from core.status import OrderStatus, PaymentStatus
from functions.business_metrics import MeteredOrders
from tests.unit.test_authorization_sweep import ACTOR, STOCK, authorized, sweep, void_failures
from tests.unit.test_business_metrics import emitted
from tests.unit.test_settlement_capture_not_made import metrics  # noqa: F401
from tests.unit.world import build_world


class CrashingVoid:
    """A payment plugin whose void raises (a bug of its own, not a gateway's answer) while `crashing`."""

    crashing = False
    asked = 0

    @hookimpl(tryfirst=True)
    def oms_payment_void(self) -> None:
        self.asked += 1
        if self.crashing:
            raise ValueError("the plugin's own bug")


@pytest.mark.usefixtures("metrics")
def test_a_cancel_whose_payment_plugin_crashes_in_the_void_is_cancelled_and_the_pass_voids_it_later(clock, capsys):
    crashing = CrashingVoid()
    world = build_world(STOCK, crashing, clock=clock, wrap_orders=MeteredOrders)
    order = authorized(world)
    crashing.crashing = True
    emitted(capsys)

    # The cancel was written: the client is told so (not a 500), the hold honestly still stands.
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert cancelled == world.order(order.id)
    assert (cancelled.status, cancelled.payment.status) == (OrderStatus.CANCELLED, PaymentStatus.AUTHORIZED)
    assert world.held() == {} and world.spy.voided == []
    assert void_failures(world, order.id) == [("key_web", "plugin_error")]
    [failed] = [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_VOID_FAILED]
    assert "failed in oms_payment_void: ValueError" in failed.detail["message"]
    assert failed.detail["authorization"] == order.payment.authorization
    assert cancelled.authorizations_left  # owed: the reconciler's pass asks again
    not_made = ("PaymentFailures", (("kind", "plugin_error"), ("operation", "void")))
    assert emitted(capsys).get(not_made) == [1.0]  # VoidsNotMadeAlarm
    said = world.history(order.id)
    world.actions.cancel(order.id, "changed my mind", actor="key_web")  # the client repeats: asked, noted once
    assert world.history(order.id) == said and not_made not in emitted(capsys)

    clock.advance(minutes=16)
    for _ in range(2):  # every pass asks again, the plugin's failure noted once, the pass reported failed
        asked = crashing.asked
        with pytest.raises(SettleIncomplete) as incomplete:
            sweep(world, clock).run(ACTOR)
        assert list(incomplete.value.failed) == [order.id] and crashing.asked > asked
        clock.advance(minutes=5)
    assert void_failures(world, order.id) == [("key_web", "plugin_error"), (ACTOR, "plugin_error")]

    crashing.crashing = False
    assert sweep(world, clock).run(ACTOR) == Settled([order.id], own=[order.id])
    after = world.order(order.id)
    assert after.payment.status is PaymentStatus.VOIDED and world.spy.voided == [order.payment.authorization]
    assert not after.authorizations_left


def test_the_workflows_cancel_whose_payment_plugin_crashes_in_the_void_ends_with_the_void_owed(clock):
    # Not retried by the step (a plugin's bug does not pass in seconds): the reconciler's pass asks again.
    crashing = CrashingVoid()
    world = build_world(STOCK, crashing, clock=clock)
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    crashing.crashing = True

    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (OrderStatus.CANCELLED, PaymentStatus.AUTHORIZED)
    assert void_failures(world, order_id) == [("workflow", "plugin_error")] and order.own_void_owed


def test_a_cancel_of_the_rest_whose_payment_plugin_crashes_releasing_the_authorization_is_answered(clock):
    crashing = CrashingVoid()
    world = build_world([("MUG", "wh-west", 5), ("CAP", "wh-east", 5)], crashing, clock=clock)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    crashing.crashing = True

    cancelled = world.actions.cancel(order.id, "the rest", actor="key_web")

    assert cancelled == world.order(order.id)
    assert cancelled.status is OrderStatus.SHIPPED and world.spy.voided == []
    assert cancelled.payment.authorized > cancelled.payment.captured  # the rest still held
    assert void_failures(world, order.id) == [("key_web", "plugin_error")]
    assert cancelled.settlement_owed  # asked again (the kept-back pass, a delivery reported)
    crashing.crashing = False
    world.actions.cancel(order.id, "the rest", actor="key_web")
    after = world.order(order.id)
    assert after.payment.authorized == after.payment.captured and not after.settlement_owed
