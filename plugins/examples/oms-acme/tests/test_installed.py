"""Installed next to the OMS (pip install), Acme is loaded through the `oms` entry points, and an
order that names none of Acme's methods, classes or carriers is priced exactly as without it."""

from importlib.metadata import entry_points

import pytest
from oms_acme import courier, pay, tax

from core.pricing import Pricing
from functions.plugin_loading import load_plugin_manager
from plugins.testing import a_place_order, a_product, an_address

pytestmark = pytest.mark.skipif(
    "acme_tax" not in entry_points(group="oms").names, reason="oms-acme is not installed (pip install -e)"
)


def test_the_oms_loads_each_acme_plugin_by_its_entry_point_name():
    manager = load_plugin_manager()

    assert (manager.get_plugin("acme_tax"), manager.get_plugin("acme_courier"), manager.get_plugin("acme_pay")) == (
        tax, courier, pay,
    )  # fmt: skip


@pytest.mark.parametrize("country", ["US", "GB"])
def test_an_order_that_is_not_acmes_is_priced_as_without_acme(country):
    currency = "USD" if country == "US" else "GBP"
    order = a_place_order(("MUG-1", 2), currency=currency, shipping_address=an_address(country, None))
    products = {"MUG-1": a_product("MUG-1", "12.00", currency, weight_grams=500)}
    with_acme = load_plugin_manager()
    without_acme = load_plugin_manager()
    for name in ("acme_tax", "acme_courier", "acme_pay"):
        without_acme.set_blocked(name)

    priced = Pricing(with_acme).price(order, products, order.shipping_address)

    assert priced == Pricing(without_acme).price(order, products, order.shipping_address)
