"""The catalog_price plugin: the catalog price, in the order's currency only."""

from __future__ import annotations

from core import hookimpl
from core.plugin_manager import build_plugin_manager
from functions.plugin_loading import entry_point_sources
from plugins import catalog_price
from tests.unit.conftest import a_customer, a_product, usd


def unit_price(plugins, product, currency="USD", quantity=1):
    return plugins.hook.oms_unit_price(
        product=product, quantity=quantity, currency=currency, channel="web", customer=a_customer()
    )


def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("catalog_price") is catalog_price


def test_prices_a_unit_at_the_catalog_price_in_the_same_currency(plugins):
    assert unit_price(plugins, a_product(price="19.99")) == usd("19.99")


def test_gives_no_price_in_another_currency(plugins):
    assert unit_price(plugins, a_product(price="19.99"), currency="EUR") is None


def test_answers_the_same_when_called_directly():
    product = a_product(price="700", currency="JPY")

    assert catalog_price.oms_unit_price(product=product, currency="JPY") == product.price
    assert catalog_price.oms_unit_price(product=product, currency="USD") is None


def test_answers_last_so_another_pricing_plugin_can_override_the_list_price():
    class ChannelPrice:
        @hookimpl
        def oms_unit_price(self, product, channel):
            return usd("9.00") if channel == "web" else None

    # Registered before the entry points load, so only trylast puts the catalog price after it.
    plugins = build_plugin_manager(ChannelPrice())
    plugins.load(entry_point_sources())

    assert unit_price(plugins, a_product(price="10.00")) == usd("9.00")
