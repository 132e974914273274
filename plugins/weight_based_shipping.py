"""Built-in shipping: a `ground` charge of a base fee plus a fee per started kilogram."""

from __future__ import annotations

from typing import NamedTuple

from core import hookimpl
from core.money import Money
from core.pricing_types import PricingDraft, ShippingQuote

METHOD = "ground"


class GroundRate(NamedTuple):
    base: Money
    per_kg: Money

    def charge(self, weight_grams: int) -> Money:
        # Carriers bill every started kilogram: 1001 g costs two.
        started_kg = -(-weight_grams // 1000)
        return self.base + self.per_kg.times(started_kg)


def _rate(base: str, per_kg: str, currency: str) -> GroundRate:
    return GroundRate(Money(amount=base, currency=currency), Money(amount=per_kg, currency=currency))


GROUND_RATES: dict[str, GroundRate] = {
    "USD": _rate("3.00", "1.20", "USD"),
    "EUR": _rate("3.00", "1.00", "EUR"),
    "GBP": _rate("2.50", "0.90", "GBP"),
    "JPY": _rate("500", "150", "JPY"),
    "CAD": _rate("4.00", "1.50", "CAD"),
    "AUD": _rate("5.00", "1.80", "AUD"),
}


@hookimpl
def oms_shipping_quotes(draft: PricingDraft) -> list[ShippingQuote] | None:
    rate = GROUND_RATES.get(draft.currency)
    if rate is None:
        return None
    # A product without weight_grams counts as weightless, so such an order pays the base fee only.
    return [
        ShippingQuote(
            method=METHOD,
            amount=rate.charge(draft.weight_grams),
            description="Ground delivery, priced by weight",
        )
    ]
