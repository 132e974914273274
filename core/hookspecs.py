"""Plugin hooks of the OMS. Call them with keyword arguments only."""

from __future__ import annotations

from core import hookspec
from core.models import Address, Customer, Product
from core.money import Money
from core.pricing_types import Discount, DraftLine, PricingDraft, ShippingQuote, TaxRate

# --- Pricing --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def oms_unit_price(product: Product, quantity: int, currency: str, channel: str, customer: Customer) -> Money | None:
    """Price one unit of `product` for this order line.

    :param product: the catalog product, with its list `price`.
    :param quantity: units on the line (for volume pricing).
    :param currency: the order's ISO 4217 currency.
    :param channel: the sales channel placing the order.
    :param customer: the ordering customer (id, email, name).
    :return: the unit price in `currency`, or None to let another plugin answer.

    Stops at first non-None result. When no plugin answers, the line is rejected (422 `no_price`).
    """


@hookspec
def oms_discounts(draft: PricingDraft) -> list[Discount] | None:
    """Grant discounts on an order whose unit prices are known.

    :param draft: the order being priced: lines with unit prices and subtotals, customer,
        address, fulfilment, shipping method and the `promo_codes` the client sent.
    :return: the discounts this plugin grants (possibly empty), or None.

    Every plugin is called and all discounts apply. A promo code that no returned discount names
    in its `code` is rejected (422 `unknown_promo_code`). The core caps a line's discount at the
    line's subtotal and rejects negative amounts or another currency.
    """


@hookspec(firstresult=True)
def oms_tax_rate(line: DraftLine, address: Address, draft: PricingDraft) -> TaxRate | None:
    """The tax rate for one line shipped to (or picked up at) `address`.

    :param line: the line, with its product (`tax_code`), quantity and subtotal.
    :param address: the address the goods go to: the shipping address, or the pickup location's.
    :param draft: the whole order, for rules that depend on it.
    :return: a TaxRate (0 <= rate <= 1) or None to let another plugin answer.

    Stops at first non-None result. When no plugin answers, the line is untaxed.
    """


@hookspec
def oms_shipping_quotes(draft: PricingDraft, address: Address) -> list[ShippingQuote] | None:
    """Offer ways to ship the order to `address`.

    :param draft: the order being priced (lines carry products with `weight_grams`).
    :param address: the shipping address.
    :return: the quotes this plugin offers (possibly empty), or None.

    Every plugin is called. The client picks one by `shipping_method`; without one the core takes
    `standard` if offered, else the cheapest quote. Pickup orders are not quoted.
    """
