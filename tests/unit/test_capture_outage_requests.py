"""A capture the gateway is down for, asked by requests that anything repeated at will sends again:
a carrier's delivery report sent again (each asks the settlement's capture of what the captures fall
short of the total), a warehouse's ship of a parcel repeated. Before: each request wrote every
failed attempt (three entries a call), so a carrier repeating its report, or a warehouse its ship,
through an outage grew the order's history without bound, until DynamoDB's 400 KB refused every
write on the order. Now, as for a void (test_void_outage_requests), an outage already the last word
of the order's history on that capture records nothing more; the first request to meet it records
its attempts, and the gateway's refusal, or its capture once back, is recorded."""

from __future__ import annotations

import pytest

from core.errors import PaymentGatewayUnavailable, PaymentRefused
from core.events import OrderEvent
from core.status import ShipmentStatus
from tests.unit.test_capture_sweep import STOCK
from tests.unit.test_settlement_capture_not_made import shipped_west
from tests.unit.world import build_world

CAPTURE_FAILED = OrderEvent.PAYMENT_CAPTURE_FAILED


def capture_entries(world, order_id: str, since: int) -> list[tuple[str, str, str | None]]:
    return [
        (entry.detail.get("kind"), entry.actor, entry.detail.get("shipment_id"))
        for entry in world.history(order_id)[since:]
        if entry.type is CAPTURE_FAILED
    ]  # fmt: skip


def test_a_settlement_capture_outage_met_again_by_repeated_reports_is_recorded_once():
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "transient")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    assert capture_entries(world, order_id, 0) == [("transient", "key_cs", None)] * 3
    since = len(world.history(order_id))

    for _ in range(3):
        world.actions.deliver(order_id, west, actor="carrier")
        world.actions.ship(order_id, west, None, actor="key_wh")

    assert capture_entries(world, order_id, since) == []
    assert [e.type for e in world.history(order_id)[since:]] == [OrderEvent.SHIPMENT_DELIVERED]
    order = world.order(order_id)
    assert order.payment.captured < order.totals.grand_total  # nothing recorded as captured

    # The gateway back and refusing: recorded (SettlementCapturesNotMadeAlarm), not hidden.
    world.gateway.script("capture", "refuse")
    world.actions.deliver(order_id, west, actor="carrier")
    assert capture_entries(world, order_id, since) == [("refused", "carrier", None)]
    assert world.history(order_id)[-1].type is OrderEvent.CAPTURE_NOT_MADE


def test_a_settlement_capture_made_once_the_gateway_is_back_is_recorded():
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "transient")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.actions.deliver(order_id, west, actor="carrier")
    world.gateway.script("capture", "approve")

    world.actions.deliver(order_id, west, actor="carrier")

    order = world.order(order_id)
    assert order.payment.captured == order.totals.grand_total
    assert any(e.type is OrderEvent.PAYMENT_CAPTURED for e in world.history(order_id))


def test_a_parcels_capture_outage_met_again_by_a_repeated_ship_is_recorded_once():
    world = build_world(STOCK)
    order = world.allocated(("TSHIRT", 1))
    parcel = order.shipments[0].id
    world.gateway.script("capture", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, parcel, None, actor="key_wh")
    assert capture_entries(world, order.id, 0) == [("transient", "key_wh", parcel)] * 3
    since = len(world.history(order.id))

    for _ in range(3):
        with pytest.raises(PaymentGatewayUnavailable):
            world.actions.ship(order.id, parcel, None, actor="key_wh")

    assert world.history(order.id)[since:] == []
    assert world.spy.captured_total() == 0

    # Refused once back: recorded; then approved: shipped and captured.
    world.gateway.script("capture", "refuse")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, parcel, None, actor="key_wh")
    assert capture_entries(world, order.id, since) == [("refused", "key_wh", parcel)]
    world.gateway.script("capture", "approve")
    shipped = world.actions.ship(order.id, parcel, None, actor="key_wh")
    assert shipped.shipment(parcel).status is ShipmentStatus.SHIPPED
    assert shipped.payment.captured == shipped.totals.grand_total


def test_another_parcels_capture_outage_is_its_own():
    # The outage recorded for one parcel's capture does not silence another's first attempts.
    world = build_world(STOCK)
    order = world.allocated(("TSHIRT", 1), ("CAP", 1))
    first, second = (s.id for s in order.shipments)
    world.gateway.script("capture", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, first, None, actor="key_wh")
    since = len(world.history(order.id))
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, second, None, actor="key_wh")
    assert capture_entries(world, order.id, since) == [("transient", "key_wh", second)] * 3
