"""A pickup's collect (its share captured then, on an authorization renewed first once it grew old)
against a gateway that misbehaves: its answers lost after it acted, a refusal, or a payment plugin
that raises, answers an outcome PaymentResult does not know or approves another amount after the
gateway acted. The collect answers 502 or 503 with nothing recorded as moved, the parcel stays
ready, and the store's repeat collects it: captured once, in USD, JPY and KWD, the gateway holding
exactly what the order records, and no authorization left holding the customer's card."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.errors import PaymentGatewayUnavailable, PaymentPluginFailed, PaymentRefused
from core.models import Order
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from plugins import test_payments
from tests.builders import product
from tests.fakes import AnswersLost
from tests.unit.test_money_misbehaving_gateway import MisbehavesAfterActing
from tests.unit.world import Clock, World, build_world

PRICES = {"USD": "19.99", "JPY": "1999", "KWD": "5.999"}
ANSWERED = {
    "lost": PaymentGatewayUnavailable,
    "refuse": PaymentRefused,
    "raise": PaymentPluginFailed,
    "unknown_outcome": PaymentPluginFailed,
    "other_amount": PaymentPluginFailed,
}


class Store:
    def __init__(self, currency: str) -> None:
        test_payments.forget()  # the gateway's record holds this test's authorizations only
        self.clock = Clock()
        self.lost, self.misbehaves = AnswersLost(), MisbehavesAfterActing()
        self.world: World = build_world([("TSHIRT", "store-sf", 5)], self.lost, self.misbehaves, clock=self.clock)
        self.world.gateway.keeps_answers = True  # a key the gateway acted under is answered with what it did
        self.world.catalog.put_product(product("TSHIRT", PRICES[currency], currency=currency))
        pickup = {"type": "pickup", "location_id": "store-sf"}
        self.order = self.world.allocated(("TSHIRT", 3), fulfillment=pickup, currency=currency)
        (self.shipment,) = self.order.shipments
        self.world.actions.ready(self.order.id, self.shipment.id, actor="key_store")

    def misbehaving(self, operation: str, mode: str) -> None:
        if mode == "lost":
            self.lost.lose(operation, 3)  # every retry of the request's three
        elif mode == "refuse":
            self.world.gateway.script(operation, "refuse")
        else:
            self.misbehaves.modes[operation] = mode

    def mended(self) -> None:
        self.lost.left.clear()
        self.misbehaves.modes.clear()
        self.world.gateway.script("capture", "approve")
        self.world.gateway.script("authorize", "approve")

    def collect(self) -> Order:
        return self.world.actions.collect(self.order.id, self.shipment.id, actor="key_store")

    def paid_once(self, order: Order) -> None:
        """Collected and paid in full, the gateway holding what the order records and no
        authorization holding more than was captured of it."""
        held = test_payments._held
        net = sum((h.captured.amount - h.refunded.amount for h in held.values()), Decimal(0))
        assert (order.status, order.shipment(self.shipment.id).status) == (
            OrderStatus.DELIVERED, ShipmentStatus.DELIVERED,
        )  # fmt: skip
        assert (order.payment.status, order.payment.captured) == (PaymentStatus.CAPTURED, order.totals.grand_total)
        assert net == (order.payment.captured - order.payment.refunded).amount
        assert [ref for ref, h in held.items() if not h.voided and h.captured != h.amount] == []


@pytest.mark.parametrize("currency", sorted(PRICES))
@pytest.mark.parametrize("mode", sorted(ANSWERED))
def test_a_collect_whose_capture_the_gateway_or_plugin_spoils_captures_nothing_and_its_repeat_captures_once(
    currency, mode
):
    store = Store(currency)
    store.misbehaving("capture", mode)

    with pytest.raises(ANSWERED[mode]):
        store.collect()

    waiting = store.world.order(store.order.id)
    assert waiting.shipment(store.shipment.id).status is ShipmentStatus.READY_FOR_PICKUP
    assert waiting.payment.captured.amount == 0  # nothing recorded that the gateway was not heard to do
    store.mended()
    store.paid_once(store.collect())


@pytest.mark.parametrize("currency", sorted(PRICES))
@pytest.mark.parametrize("mode", sorted(set(ANSWERED) - {"refuse"}))
def test_a_collect_a_week_on_whose_renewal_the_gateway_or_plugin_spoils_is_renewed_once_by_its_repeat(currency, mode):
    store = Store(currency)
    store.clock.days_later(8)  # the authorization grew old: the collect renews it first
    store.misbehaving("authorize", mode)

    with pytest.raises(ANSWERED[mode]):
        store.collect()

    assert store.world.order(store.order.id).payment.captured.amount == 0
    store.mended()
    collected = store.collect()

    store.paid_once(collected)
    assert collected.payment.authorization != store.order.payment.authorization  # captured on the renewal
    assert test_payments._held[store.order.payment.authorization].voided  # the old one released


def test_a_collect_whose_renewal_was_declined_is_refused_again_that_day_and_renewed_anew_the_next():
    store = Store("USD")
    store.clock.days_later(8)
    store.misbehaving("authorize", "refuse")
    with pytest.raises(PaymentRefused):
        store.collect()
    store.mended()

    with pytest.raises(PaymentRefused):
        store.collect()  # answered from the history while the decline stands: not asked again
    store.clock.advance(hours=25)
    collected = store.collect()

    store.paid_once(collected)
    assert test_payments._held[store.order.payment.authorization].voided
