"""The weight_based_shipping plugin: ground = base fee + fee per started kilogram."""

from __future__ import annotations

import pytest

from core.money import Money
from plugins import weight_based_shipping
from tests.unit.conftest import a_draft, a_product, an_address, usd


def ground(draft):
    (quote,) = weight_based_shipping.oms_shipping_quotes(draft=draft)
    assert quote.method == "ground"
    return quote.amount


def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("weight_based_shipping") is weight_based_shipping


@pytest.mark.parametrize(
    ("grams", "charge"),
    [
        (0, "3.00"),
        (1, "4.20"),
        (999, "4.20"),
        (1000, "4.20"),
        (1001, "5.40"),
        (2500, "6.60"),
        (10_000, "15.00"),
    ],
)
def test_charges_base_plus_every_started_kilogram(grams, charge):
    assert ground(a_draft((a_product(weight_grams=grams), 1))) == usd(charge)


def test_weight_is_summed_over_lines_and_quantities():
    draft = a_draft((a_product("A", weight_grams=400), 3), (a_product("B", weight_grams=250), 2))

    # 1200 g + 500 g = 1.7 kg: two started kilograms.
    assert ground(draft) == usd("5.40")


def test_products_without_a_weight_pay_the_base_fee_only():
    assert ground(a_draft((a_product(weight_grams=None), 5))) == usd("3.00")


def test_jpy_rates_have_whole_yen():
    draft = a_draft((a_product(price="1000", currency="JPY", weight_grams=1500), 1), currency="JPY")

    assert ground(draft) == Money(amount="800", currency="JPY")


def test_quotes_nothing_in_a_currency_without_rates():
    draft = a_draft((a_product(price="10.00", currency="SEK"), 1), currency="SEK")

    assert not weight_based_shipping.oms_shipping_quotes(draft=draft)


def test_ground_is_offered_through_the_plugin_manager(plugins):
    draft = a_draft((a_product(weight_grams=2000), 1))

    results = plugins.hook.oms_shipping_quotes(draft=draft, address=an_address())

    quotes = [q for result in results if result for q in result if q.method == "ground"]
    assert [q.amount for q in quotes] == [usd("5.40")]
