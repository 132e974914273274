"""The flat_rate_shipping plugin: flat standard and express charges per currency."""

from __future__ import annotations

import pytest

from core.money import Money
from core.pricing_types import ShippingQuote
from plugins import flat_rate_shipping
from tests.unit.conftest import a_draft, a_product, an_address


def flat_quotes(plugins, draft):
    impl = next(i for i in plugins.hook.oms_shipping_quotes.get_hookimpls() if i.plugin is flat_rate_shipping)
    return impl.function(draft=draft)


def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("flat_rate_shipping") is flat_rate_shipping


@pytest.mark.parametrize(
    ("currency", "price", "standard", "express"),
    [
        ("USD", "10.00", "5.00", "15.00"),
        ("EUR", "10.00", "5.00", "15.00"),
        ("GBP", "10.00", "4.00", "12.00"),
        ("JPY", "1000", "700", "2000"),
        ("CAD", "10.00", "7.00", "20.00"),
        ("AUD", "10.00", "8.00", "22.00"),
    ],
)
def test_quotes_standard_and_express_in_the_order_currency(currency, price, standard, express):
    draft = a_draft((a_product(price=price, currency=currency), 1), currency=currency)

    quotes = flat_rate_shipping.oms_shipping_quotes(draft=draft)

    assert {q.method: q.amount for q in quotes} == {
        "standard": Money(amount=standard, currency=currency),
        "express": Money(amount=express, currency=currency),
    }
    assert all(q.description for q in quotes)


def test_quotes_nothing_in_a_currency_without_rates():
    draft = a_draft((a_product(price="10.00", currency="CHF"), 1), currency="CHF")

    assert not flat_rate_shipping.oms_shipping_quotes(draft=draft)


def test_charge_does_not_depend_on_weight_or_quantity(plugins):
    light = a_draft((a_product(weight_grams=100), 1))
    heavy = a_draft((a_product(weight_grams=20_000), 7))

    assert flat_quotes(plugins, light) == flat_quotes(plugins, heavy)


def test_quotes_are_collected_with_the_other_shipping_plugins(plugins):
    draft = a_draft()

    results = plugins.hook.oms_shipping_quotes(draft=draft, address=an_address())

    methods = {q.method for result in results if result for q in result}
    assert {"standard", "express"} <= methods
    assert all(isinstance(q, ShippingQuote) for result in results if result for q in result)
