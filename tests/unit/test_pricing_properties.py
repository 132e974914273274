"""The contract's pricing rules under any basket: random prices (in USD, JPY and KWD), quantities,
lines of one sku split or not and in any order, promo codes, a plugin's own line and order-level
discounts and a tax rate of up to 40 places. `make test` runs 150 derandomized examples,
`make fuzz` the same property at length (tests/properties.py)."""

from __future__ import annotations

import functools
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core import hookimpl
from core.errors import InvalidRequest
from core.models import Fulfillment
from core.money import Money, quantum
from core.pricing import PricedOrder, Pricing
from core.pricing_types import Discount, PricingDraft, TaxRate
from functions.plugin_loading import load_plugin_manager
from tests.properties import at_length
from tests.unit.conftest import a_product, an_address, an_order
from tests.unit.test_pricing import assert_follows_the_contract

CODES = ["WELCOME10", "SAVE5", "FREESHIP", "BIGBASKET20", "SHIPFREE50", "MEMBER5"]


class Terms:
    """What the rule plugin grants and the tax plugin answers for the example being run."""

    rate: Decimal | None = None
    # ("line", fraction of the line's subtotal, n: the line of SKU-n, if any) or ("order", fraction of the
    # subtotal, _): by sku, not by position, so that the same basket sent otherwise gets the same
    discounts: tuple[tuple[str, Decimal, int], ...] = ()


class Rule:
    """A plugin's own rule (no promo code): Terms.discounts, rounded as Money.of rounds them."""

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        granted = []
        for kind, fraction, index in Terms.discounts:
            if kind == "line":
                for line in draft.lines:
                    if line.product.sku == f"SKU-{index}":
                        amount = Money.of(line.subtotal.amount * fraction, draft.currency)
                        granted.append(Discount(code="RULE_LINE", amount=amount, line_id=line.line_id))
            else:
                granted.append(Discount(code="RULE_ORDER", amount=Money.of(draft.subtotal.amount * fraction,
                                                                           draft.currency)))  # fmt: skip
        return granted


class Rate:
    """Terms.rate for every line, answered before the tax table; the table's when None."""

    @hookimpl(tryfirst=True)
    def oms_tax_rate(self) -> TaxRate | None:
        return None if Terms.rate is None else TaxRate(rate=Terms.rate, name="property")


@functools.cache
def pricing() -> Pricing:
    plugins = load_plugin_manager()
    plugins.register(Rule(), name="rule")
    plugins.register(Rate(), name="rate")
    return Pricing(plugins)


@st.composite
def baskets(draw: st.DrawFn) -> dict:
    currency = draw(st.sampled_from(["USD", "JPY", "KWD"]))
    # Up to 10^9 minor units a unit: 10,000 units of a sku, or all of them 1.5 times over (the rule's
    # largest discount), stay below 10^15, and an amount and a 40-place rate still make 50 digits.
    minor = draw(st.lists(st.integers(0, 5) | st.integers(0, 10**5) | st.integers(0, 10**9), min_size=1, max_size=4))
    products = {
        f"SKU-{i}": a_product(f"SKU-{i}", str(quantum(currency) * units), currency) for i, units in enumerate(minor)
    }
    lines = draw(st.lists(st.tuples(st.sampled_from(sorted(products)), st.integers(1, 2500)), min_size=1, max_size=4))
    return {"currency": currency, "products": products, "lines": lines}


RATES = (
    st.none()
    | st.decimals(0, 1, places=4)
    | st.decimals(0, 1, places=40)
    | st.integers(1, 39).map(lambda nines: Decimal("0.4" + "9" * nines))  # a hair below a half (40 places)
)
DISCOUNTS = st.lists(
    st.tuples(st.sampled_from(["line", "order"]), st.decimals(0, Decimal("1.5"), places=3), st.integers(0, 3)),
    max_size=3,
)
PRICED = given(basket=baskets(), codes=st.lists(st.sampled_from(CODES), max_size=2), rate=RATES, discounts=DISCOUNTS)


def priced_as(basket: dict, lines: list[tuple[str, int]], codes: list[str]) -> PricedOrder:
    currency = basket["currency"]
    # KWD: no built-in shipping plugin quotes it, so those orders are collected (pricing charges no shipping).
    fulfillment = Fulfillment(type="pickup", location_id="store-1") if currency == "KWD" else None
    address = an_address()
    order = an_order(*lines, currency=currency, address=address, promo_codes=codes, fulfillment=fulfillment)
    return pricing().price(order, basket["products"], address)


def rounded_once(amount: Fraction, currency: str) -> Fraction:
    """`amount` rounded half-even to the currency's minor units, exactly."""
    unit = Fraction(quantum(currency))
    units = amount / unit
    whole = units.numerator // units.denominator
    rest = units - whole
    return (whole + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1))) * unit


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@PRICED
def test_any_basket_is_priced_by_the_contracts_rules(basket, codes, rate, discounts):
    Terms.rate, Terms.discounts = rate, tuple(discounts)
    lines = basket["lines"]
    try:
        priced = priced_as(basket, lines, codes)
    except InvalidRequest as refused:
        assert refused.code == "promo_codes_do_not_stack"
        assume(False)

    assert_follows_the_contract(priced)
    for line in priced.lines:
        assert Money.zero(basket["currency"]) <= line.discount <= line.unit_price.times(line.quantity)
        assert not line.tax.is_negative() and not line.total.is_negative()

    # Lines of one sku are priced as one line: the same units on one line cost the same, and so does
    # the same basket sent in another order.
    units: dict[str, int] = {}
    for sku, quantity in lines:
        units[sku] = units.get(sku, 0) + quantity
    assert priced_as(basket, list(units.items()), codes).totals == priced.totals
    assert priced_as(basket, lines[::-1], codes).totals == priced.totals

    by_sku: dict[str, list] = {}
    for line in priced.lines:
        by_sku.setdefault(line.sku, []).append(line)
    if rate is not None:
        # A sku's tax is round_half_even((quantity x unit_price - discount) x rate), rounded once.
        for sku_lines in by_sku.values():
            base = sum(Fraction(line.total.amount - line.tax.amount) for line in sku_lines)
            tax = sum(Fraction(line.tax.amount) for line in sku_lines)
            assert tax == rounded_once(base * Fraction(rate), basket["currency"])
    if not codes:
        # The rule's line discounts come off their lines up to each one's subtotal; its amounts off
        # the order come off in full while any line has some of its subtotal left.
        subtotals = {sku: sum(line.unit_price.times(line.quantity).amount for line in ls) for sku, ls in by_sku.items()}
        skus = list(units)
        own = dict.fromkeys(skus, Decimal(0))
        off = Decimal(0)
        for kind, fraction, index in discounts:
            sku = f"SKU-{index}"
            if kind == "line" and sku in own:
                own[sku] += Money.of(subtotals[sku] * fraction, basket["currency"]).amount
            elif kind == "order":
                off += Money.of(sum(subtotals.values()) * fraction, basket["currency"]).amount
        owned = sum(min(own[sku], subtotals[sku]) for sku in skus)
        assert priced.totals.discount.amount == min(owned + off, sum(subtotals.values()))


# At length (2000 random examples; `make test` runs the same 150 on every run): `make fuzz`.
test_any_basket_is_priced_by_the_contracts_rules_at_length = at_length(
    test_any_basket_is_priced_by_the_contracts_rules, PRICED, 2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
