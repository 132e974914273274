"""A payment plugin that says it authorized, captured or refunded another amount (or currency)
than the OMS asked for: never taken for the operation asked, the plugin named, nothing recorded as
moved."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import hookimpl
from core.errors import PaymentDeclined, PluginError
from core.money import Money
from core.status import OrderStatus, PaymentStatus
from core.workflow_types import PaymentResult
from tests.unit.world import World, build_world

S, P = OrderStatus, PaymentStatus

STOCK = [("TSHIRT", "wh-east", 10)]


class SaysAnotherAmount:
    """Ahead of the `test` gateway: lets it do `operation` (so references are real), then answers
    approved for `amount_of(asked)` instead of what was asked."""

    def __init__(self) -> None:
        self.operation: str | None = None
        self.amount_of = lambda asked: asked

    def says(self, operation: str, amount_of) -> None:
        self.operation, self.amount_of = operation, amount_of

    def _answer(self, operation: str, method: str, amount: Money, kwargs: dict) -> PaymentResult | None:
        if operation != self.operation or method != "test":
            return None
        from plugins import test_payments

        done = getattr(test_payments, f"oms_payment_{operation}")(method=method, amount=amount, **kwargs)
        return PaymentResult(outcome=done.outcome, reference=done.reference, amount=self.amount_of(amount))

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount, order_id, idempotency_key, attempt):
        return self._answer("authorize", method, amount, dict(token=token, idempotency_key=idempotency_key,
                            attempt=attempt))  # fmt: skip

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, method, authorization, amount, order_id, idempotency_key):
        return self._answer("capture", method, amount, dict(authorization=authorization,
                            idempotency_key=idempotency_key))  # fmt: skip

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, method, authorization, amount, order_id, idempotency_key):
        return self._answer("refund", method, amount, dict(authorization=authorization,
                            idempotency_key=idempotency_key))  # fmt: skip


def half(asked: Money) -> Money:
    return Money.of(asked.amount / 2, asked.currency)


def in_euros(asked: Money) -> Money:
    return Money.of(asked.amount, "EUR")


ANOTHER_AMOUNT = pytest.mark.parametrize("amount_of", [half, in_euros], ids=["half", "in another currency"])


@pytest.fixture
def hostile() -> SaysAnotherAmount:
    return SaysAnotherAmount()


@pytest.fixture
def world(hostile, clock) -> World:
    return build_world(STOCK, hostile, clock=clock)


def test_an_answer_for_the_amount_asked_is_taken(world, hostile):
    hostile.says("authorize", lambda asked: asked)
    order = world.run(world.place(("TSHIRT", 2)))

    assert (order.status, order.payment.authorized) == (S.ALLOCATED, order.totals.grand_total)


@ANOTHER_AMOUNT
def test_an_authorization_of_another_amount_is_not_the_orders(world, hostile, amount_of):
    order_id = world.place(("TSHIRT", 2))
    hostile.says("authorize", amount_of)

    with pytest.raises(PluginError, match=r"approved .* was asked") as refused:
        world.workflow.authorize_payment(order_id, attempt=0)

    assert [detail["hook"] for detail in refused.value.details] == ["oms_payment_authorize"]
    order = world.order(order_id)
    assert (order.status, order.payment.status, order.payment.authorization) == (S.PENDING, P.PENDING, None)
    assert order.payment.authorized.amount == 0


@ANOTHER_AMOUNT
def test_a_capture_of_another_amount_is_not_recorded(world, hostile, amount_of):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    hostile.says("capture", amount_of)

    with pytest.raises(PluginError, match=r"approved .* was asked"):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    after = world.order(order.id)
    assert after.shipments == order.shipments
    assert (after.payment.status, after.payment.captured.amount) == (P.AUTHORIZED, Decimal(0))


@ANOTHER_AMOUNT
def test_a_refund_of_another_amount_is_not_recorded(world, hostile, amount_of):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    hostile.says("refund", amount_of)

    with pytest.raises(PluginError, match=r"approved .* was asked"):
        world.refunds.issue_refund(order.id, Money.of(Decimal("5.00"), "USD"), "goodwill", "k1", actor="key_cs")

    after = world.order(order.id)
    assert after.payment.refunded.amount == 0
    assert after.payment.captured == shipped.payment.captured


def test_a_decline_that_names_another_amount_is_the_gateways_decline_not_a_plugin_error(world, hostile):
    # A gateway that echoes an amount on a decline (half of it, a card's limit): the customer's card
    # was declined, so the order fails its payment as any declined one does, never parked as a
    # plugin's bug (the amount check is for what the gateway says it moved).
    order_id = world.place(("TSHIRT", 2), token="tok_decline")
    hostile.says("authorize", half)

    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert (order.payment.authorization, order.payment.authorized.amount) == (None, 0)
