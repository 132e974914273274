"""Exchanges in a currency without minor units (JPY) and one with three (KWD), of units of a
discounted line, for a dearer, a cheaper or a same-priced product, whose replacement ships, is
cancelled or has its difference declined: the credit is the returned units' exact share of their
line, the card is asked only for what it does not cover, and across both orders the customer pays
for what they keep, to the last unit (in-process, on the fakes with the built-in plugins)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import hookimpl
from core.money import Money
from core.pricing_types import PricingDraft, ShippingQuote
from core.refunds import cumulative_share
from core.status import OrderStatus, ReturnStatus
from tests.builders import NOW, product
from tests.fakes import run_return_workflow
from tests.unit.test_returns import delivered, exchange_of, receipt, returns_for
from tests.unit.world import Clock, World, build_world

# Three products a unit of A (three ordered, two sent back) may be exchanged for, each at one price
# in each currency, every one of them in stock at wh-west.
PRICES = {
    "JPY": {"A": "3333", "DEARER": "5001", "CHEAPER": "77", "SAME": "3333"},
    "KWD": {"A": "3.333", "DEARER": "8.001", "CHEAPER": "0.077", "SAME": "3.333"},
}
# A fixed discount in JPY, a percent one in KWD (the built-in SAVE5 has no KWD amount).
PROMO_CODES = {"JPY": ["SAVE5"], "KWD": ["WELCOME10"]}
ENDED = {"shipped": OrderStatus.DELIVERED, "cancelled": OrderStatus.CANCELLED, "declined": OrderStatus.PAYMENT_FAILED}


class KuwaitShipping:
    """Flat-rate shipping in KWD, which the built-in flat rates do not quote."""

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft) -> list[ShippingQuote] | None:
        if draft.currency != "KWD":
            return None
        return [ShippingQuote(method="standard", amount=Money.of("1.235", "KWD"), description="Standard")]


def kept(order_id: str, world: World) -> Money:
    """What the customer's card ended paying on the order: captured less refunded."""
    payment = world.order(order_id).payment
    return payment.captured - payment.refunded


@pytest.mark.parametrize("currency", sorted(PRICES))
@pytest.mark.parametrize("wanted", ["DEARER", "CHEAPER", "SAME"])
@pytest.mark.parametrize("ending", ["shipped", "cancelled", "declined"])
def test_an_exchange_of_discounted_units_pays_to_the_last_minor_unit(currency: str, wanted: str, ending: str):
    world = build_world([(sku, "wh-west", 10) for sku in PRICES[currency]], KuwaitShipping())
    for sku, price in PRICES[currency].items():
        world.catalog.put_product(product(sku, price, currency))
    returns, _ = returns_for(world, Clock(NOW + timedelta(days=3)))
    order = delivered(world, world.allocated(("A", 3), currency=currency, promo_codes=PROMO_CODES[currency]))
    line = order.lines[0]
    assert line.discount.amount > 0 and line.total.amount % 3 != 0  # a share that must be rounded

    item = returns.request(order.id, exchange_of("L1", 2, (wanted, 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    zero = Money.zero(currency)
    replacement = world.order(settled.exchange_order_id or "")
    credit, total = cumulative_share(line, 2), replacement.totals.grand_total
    assert replacement.exchange_credit == credit
    rest = credit - total if credit > total else zero
    assert (settled.status, settled.refund) == (ReturnStatus.REFUNDED, rest)
    assert world.order(order.id).payment.refunded == rest

    if ending == "declined":
        world.workflow.fail_payment(replacement.id, "PaymentDeclined", "card declined")
    else:
        allocated = world.run(replacement.id)
        assert allocated.payment.authorized == (total - credit if total > credit else zero)
        if ending == "shipped":
            delivered(world, allocated)
        else:
            world.actions.cancel(replacement.id, "not wanted after all", actor="key_cs")

    original, replacement = world.order(order.id), world.order(replacement.id)
    shipped = ending == "shipped"
    assert replacement.status is ENDED[ending]
    assert all(r.status == "succeeded" for r in original.payment.refunds + replacement.payment.refunds)
    assert returns.get(item.id).refund == (rest if shipped else credit)
    assert kept(replacement.id, world) == (total - credit if shipped and total > credit else zero)
    assert kept(order.id, world) + kept(replacement.id, world) == order.totals.grand_total - credit + (
        total if shipped else zero
    )
    assert all(level.on_hand >= 0 and level.available >= 0 for level in world.inventory.stock.values())
