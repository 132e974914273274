"""The renewal of an authorization grown old (asked before a ship's capture, or the settlement's of
what the captures fall short of the total) while the gateway is down, asked again by requests that
anything repeated at will sends again: a warehouse's ship repeated, a carrier's delivery report
sent again. Before: each request wrote its three failed attempts, so a loop through an outage grew
the order's history without bound, as a capture's or a void's outage did before
request_outage_noted_once. Now the first request to meet it records its attempts, and one whose
renewal's last failed attempt (the same key and amount) already says the gateway was unavailable
records none; its decline, or the renewal once the gateway is back, is recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import PaymentGatewayUnavailable
from core.events import OrderEvent
from core.status import OrderStatus
from tests.unit.test_unit_cancellation import STOCK, PerUnitShipping
from tests.unit.world import Clock, build_world

FAILED = OrderEvent.PAYMENT_AUTHORIZATION_FAILED


def renewal_failures(world, order_id: str, since: int = 0) -> list[tuple[str, str, str]]:
    return [
        (entry.detail["kind"], entry.actor, entry.detail["authorization_key"])
        for entry in world.history(order_id)[since:]
        if entry.type is FAILED
    ]  # fmt: skip


def test_a_renewal_outage_met_again_by_a_repeated_ship_is_recorded_once():
    clock = Clock()
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("MUG", 1))
    (shipment,) = order.shipments
    clock.now += timedelta(days=8)
    world.gateway.script("authorize", "transient")

    for _ in range(4):
        with pytest.raises(PaymentGatewayUnavailable):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    failures = renewal_failures(world, order.id)
    assert [kind for kind, _, _ in failures] == ["transient"] * 3  # the first ship's attempts only
    (key,) = {key for _, _, key in failures}
    world.gateway.script("authorize", "refuse")
    with pytest.raises(Exception, match="declined"):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    assert renewal_failures(world, order.id)[-1] == ("refused", "key_wh", key)  # the answer, recorded
    clock.now += timedelta(days=1)  # the decline answers the warehouse's repeats for a day
    world.gateway.script("authorize", "approve")
    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    assert shipped.status is OrderStatus.SHIPPED


def test_a_settlement_renewal_outage_met_again_by_repeated_reports_is_recorded_once():
    clock = Clock()
    world = build_world(STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    clock.now += timedelta(days=8)
    world.gateway.script("authorize", "transient")
    world.actions.cancel(order.id, "the rest is not wanted", actor="key_cs")
    assert [kind for kind, _, _ in renewal_failures(world, order.id)] == ["transient"] * 3
    since = len(world.history(order.id))

    for _ in range(3):
        world.actions.deliver(order.id, west, actor="carrier")

    assert renewal_failures(world, order.id, since) == []
    world.gateway.script("authorize", "approve")
    after = world.actions.deliver(order.id, west, actor="carrier")
    assert after.payment.captured == after.totals.grand_total
