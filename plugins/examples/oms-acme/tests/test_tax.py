"""acme_tax: products marked with `acme.tax_class` get Acme's rate where Acme lists one; every other
line is rated by the next tax plugin (the built-in table), exactly as without Acme."""

from decimal import Decimal

import pytest
from oms_acme import tax

from core.models import LineTaxRate
from plugins.testing import a_draft_line, a_place_order, a_product, an_address, money


def book(sku="BOOK-1", tax_class="books"):
    return a_product(sku, "20.00", "GBP", attributes={tax.TAX_CLASS_ATTRIBUTE: tax_class})


def gb_order(*lines):
    return a_place_order(*lines, currency="GBP", shipping_address=an_address("GB", None))


def test_a_book_shipped_to_great_britain_is_zero_rated_and_the_line_says_why(oms_host):
    priced = oms_host.price(gb_order(("BOOK-1", 1)), [book()])

    (line,) = priced.lines
    assert line.tax == money("0.00", "GBP")
    assert line.tax_rate == LineTaxRate(rate=Decimal("0"), name="GB books (Acme)")


def test_a_book_to_germany_gets_the_reduced_rate(oms_host):
    order = a_place_order(("BOOK-1", 1), currency="EUR", shipping_address=an_address("DE", None))

    priced = oms_host.price(order, [a_product("BOOK-1", "20.00", "EUR", attributes={"acme.tax_class": "books"})])

    assert priced.lines[0].tax_rate == LineTaxRate(rate=Decimal("0.07"), name="DE books (Acme)")
    assert priced.lines[0].tax == money("1.40", "EUR")


@pytest.mark.parametrize(
    ("product", "country"),
    [
        (a_product("MUG-1", "20.00", "GBP"), "GB"),  # no Acme class
        (book(tax_class="bookz"), "GB"),  # a class Acme does not know
        (book(), "NL"),  # a country Acme does not list for books
    ],
    ids=["unmarked", "unknown-class", "unlisted-country"],
)
def test_anything_else_is_left_to_the_next_tax_plugin(oms_host, product, country):
    line = a_draft_line(product)

    assert tax.oms_tax_rate(line=line, address=an_address(country, None)) is None
    order = a_place_order((product.sku, 1), currency="GBP", shipping_address=an_address(country, None))
    rated = oms_host.price(order, [product]).lines[0].tax_rate
    assert rated is None or "(Acme)" not in rated.name  # the built-in table's rate, or none


def test_a_mixed_basket_is_rated_line_by_line(oms_host):
    priced = oms_host.price(gb_order(("BOOK-1", 1), ("MUG-1", 1)), [book(), a_product("MUG-1", "10.00", "GBP")])

    assert [line.tax_rate.name for line in priced.lines] == ["GB books (Acme)", "GB standard"]
    assert priced.totals.tax == money("2.00", "GBP")
