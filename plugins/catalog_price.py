"""Built-in unit price: the product's catalog price, when it is in the order's currency."""

from __future__ import annotations

from core import hookimpl
from core.models import Product
from core.money import Money


# trylast: the list price is the fallback, so channel, customer or volume pricing plugins answer first.
@hookimpl(trylast=True)
def oms_unit_price(product: Product, currency: str) -> Money | None:
    if product.price.currency != currency:
        return None
    return product.price
