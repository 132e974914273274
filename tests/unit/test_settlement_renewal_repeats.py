"""The renewal of the authorization a settlement capture is asked on (what the captures of an order
left nothing to ship fall short of its total), asked again and again by a repeating caller (a
carrier reporting a parcel delivered on a loop, the reconciler's kept-back pass each run), when
the authorization had grown old (not spent by a refused capture) or no payment plugin takes the
order's method. Each answer is recorded, counted for SettlementCapturesNotMadeAlarm and logged
once by each caller, as a refused capture's, a spent authorization's declined renewal's and the
settlement capture's own `no_plugin` are; the order's item does not grow a repeat at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.events import OrderEvent
from functions.business_metrics import MeteredOrders
from tests.unit.test_authorization_renewal import FirstAnswers
from tests.unit.test_business_metrics import emitted
from tests.unit.test_jeopardy import Clock
from tests.unit.test_settlement_capture_not_made import NOT_MADE, SHORT, errors, metrics  # noqa: F401
from tests.unit.test_unit_cancellation import STOCK, PerUnitShipping
from tests.unit.world import World, build_world


def shipped_west(*plugins: object) -> tuple[World, Clock, str, str]:
    """As test_settlement_capture_not_made.shipped_west (a cancel of the CAPs leaves SHORT owed
    beyond the captures once the MUG's parcel shipped), a gateway answering a key with its first
    answer, and the clock 8 days on: the authorization is old."""
    clock = Clock()
    world = build_world(STOCK, PerUnitShipping(), FirstAnswers(), *plugins, wrap_orders=MeteredOrders, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    clock.now += timedelta(days=8)
    return world, clock, order.id, west


@pytest.mark.usefixtures("metrics")
def test_an_old_authorizations_renewal_declined_again_and_again_by_one_caller_is_recorded_once(capsys, caplog):
    # Before: each delivery report sent again asked the card for one more authorization under a new
    # key, and recorded its decline, a capture not made, a SettlementCapturesNotMade point and an
    # ERROR line: the alarm fired on every report of a carrier's loop, and the item grew each time.
    world, _, order_id, west = shipped_west()
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.actions.deliver(order_id, west, actor="carrier")  # another caller: its own entries
    assert [e.type for e in world.history(order_id)][-2:] == [
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED, OrderEvent.CAPTURE_NOT_MADE,
    ]  # fmt: skip
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()

    for _ in range(4):
        world.actions.deliver(order_id, west, actor="carrier")

    assert world.history(order_id) == before
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []
    # Asked again under the key the carrier's report was declined under: no new authorization.
    (declined_under,) = {e.detail["authorization_key"] for e in before[-2:] if "authorization_key" in e.detail}
    assert world.gateway.keys("authorize")[asked:] == [declined_under] * 4
    assert world.spy.captured_total() == world.order(order_id).payment.captured.amount

    # A person asking (the runbook's recovery) asks the card afresh, under a new key.
    world.gateway.script("authorize", "approve")
    after = world.actions.deliver(order_id, west, actor="key_ops")

    assert after.payment.captured == after.totals.grand_total
    assert world.gateway.keys("authorize")[-1] not in world.gateway.keys("authorize")[:-1]
