"""Built-in shipping: flat `standard` and `express` charges per order currency."""

from __future__ import annotations

from core import hookimpl
from core.money import Money
from core.pricing_types import PricingDraft, ShippingQuote

# currency: (standard, express). A flat rate is a storefront promise, not a carrier quote, so it
# depends on the currency only.
_AMOUNTS: dict[str, tuple[str, str]] = {
    "USD": ("5.00", "15.00"),
    "EUR": ("5.00", "15.00"),
    "GBP": ("4.00", "12.00"),
    "JPY": ("700", "2000"),
    "CAD": ("7.00", "20.00"),
    "AUD": ("8.00", "22.00"),
}

DESCRIPTIONS = {
    "standard": "Standard delivery, 3-5 business days",
    "express": "Express delivery, 1-2 business days",
}

FLAT_RATES: dict[str, dict[str, Money]] = {
    currency: {
        "standard": Money(amount=standard, currency=currency),
        "express": Money(amount=express, currency=currency),
    }
    for currency, (standard, express) in _AMOUNTS.items()
}


@hookimpl
def oms_shipping_quotes(draft: PricingDraft) -> list[ShippingQuote] | None:
    rates = FLAT_RATES.get(draft.currency)
    if rates is None:
        return None
    return [
        ShippingQuote(method=method, amount=amount, description=DESCRIPTIONS[method])
        for method, amount in rates.items()
    ]
