"""Acme tax classes: reduced and zero rates for the products a shop marks with an attribute.

A product opts in with `"attributes": {"acme.tax_class": "books"}` (PUT /products/{sku}). For a
destination country listed under its class, this plugin answers that rate; for any other product
or country it answers None, and the next tax plugin (the built-in `tax_table`) rates the line.
A class Acme does not know (a typo such as "bookz") is left to the next plugin too, so the line is
taxed at its standard rate rather than failing the order.
"""

from __future__ import annotations

from decimal import Decimal

from core import hookimpl
from core.models import Address
from core.pricing_types import DraftLine, TaxRate

TAX_CLASS_ATTRIBUTE = "acme.tax_class"

# tax class -> country -> rate. Illustrative rates, not tax advice.
RATES: dict[str, dict[str, Decimal]] = {
    "books": {"GB": Decimal("0"), "IE": Decimal("0"), "DE": Decimal("0.07"), "FR": Decimal("0.055")},
    "childrens_clothing": {"GB": Decimal("0"), "IE": Decimal("0")},
}


@hookimpl
def oms_tax_rate(line: DraftLine, address: Address) -> TaxRate | None:
    tax_class = line.product.attributes.get(TAX_CLASS_ATTRIBUTE)
    rate = RATES.get(tax_class or "", {}).get(address.country)
    if rate is None:
        return None
    return TaxRate(rate=rate, name=f"{address.country} {tax_class.replace('_', ' ')} (Acme)")
