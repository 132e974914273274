"""A renewal's idempotency key is never asked for another amount: a gateway answers a key it has
seen with its first answer (or refuses a reuse with other parameters), so a key asked again
must ask what it asked (core.cancellation.Cancellation._renew), on the in-memory world."""

from __future__ import annotations

import pytest

from core import hookimpl, payment_keys
from core.errors import PaymentRefused
from core.money import Money
from core.status import ShipmentStatus
from plugins.test_payments import AUTHORIZATION, reference
from tests.unit.test_authorization_renewal import STOCK, Clock, FirstAnswers
from tests.unit.world import build_world


class AmountsAsked:
    """The amounts each authorization key was asked for."""

    def __init__(self) -> None:
        self.amounts: dict[str, set[Money]] = {}

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, amount: Money, idempotency_key: str) -> None:
        self.amounts.setdefault(idempotency_key, set()).add(amount)


def test_a_declined_renewal_for_a_refused_capture_is_not_asked_again_under_its_key_for_a_smaller_order():
    # A capture refused spent the authorization; its renewal (asked once, for the order's total)
    # was declined. A person cancels the other parcel's units: the next ship asks for less, which
    # under the declined key a gateway answers with its first answer, or refuses as a key reused.
    clock = Clock()
    asked = AmountsAsked()
    world = build_world(STOCK, FirstAnswers(), asked, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west = world.shipment_at(order, "wh-west")
    world.gateway.script("capture", "refuse", "approve")
    world.gateway.script("authorize", "refuse", "approve")
    for _ in range(2):  # the capture refused, then its renewal declined
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    cap = next(line.line_id for line in order.lines if line.sku == "CAP")
    world.actions.cancel(order.id, "the customer wants fewer", actor="key_cs", lines={cap: 2})

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    assert {key: amounts for key, amounts in asked.amounts.items() if len(amounts) > 1} == {}
    renewal = payment_keys.renewal(order.id, order.payment.authorization or "", 1)  # a new key
    assert asked.amounts[renewal] == {shipped.payment.authorized}
    assert shipped.payment.authorization == reference(AUTHORIZATION, renewal)
    assert shipped.shipment(west).status is ShipmentStatus.SHIPPED
