"""Money.of builds without validating again what it already checked: the result is the Money
validation would make, and what validation refuses is still refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.money import MINOR_UNITS, Money

currencies = st.sampled_from(sorted(MINOR_UNITS))
amounts = st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12, places=6)


@given(amounts, currencies)
def test_money_of_is_the_money_validation_makes(amount, currency):
    built = Money.of(amount, currency)
    validated = Money.model_validate({"amount": str(built.amount), "currency": currency})

    assert built == validated
    assert str(built.amount) == str(validated.amount)  # the same exponent: "1.50", never "1.5"
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump(mode="json") == validated.model_dump(mode="json")


@given(st.integers(min_value=-(10**9), max_value=10**9), currencies)
def test_money_of_an_int_or_a_str_is_that_of_the_same_decimal(amount, currency):
    assert Money.of(amount, currency) == Money.of(str(amount), currency) == Money.of(Decimal(amount), currency)


def test_a_decimal_string_that_rounds_up_to_10_to_the_15_is_still_refused():
    with pytest.raises(ValidationError, match="below 10\\^15"):
        Money.of("999999999999999.995", "USD")


@pytest.mark.parametrize("currency", ["usd", "XXX", ""])
def test_an_unknown_currency_is_still_refused(currency):
    with pytest.raises(ValueError, match="unsupported currency"):
        Money.of("1.00", currency)


@pytest.mark.parametrize("amount", [True, False])
def test_money_of_refuses_a_bool_as_validation_does(amount):
    with pytest.raises(ValueError, match="decimal string"):
        Money.of(amount, "USD")


def test_money_of_stays_frozen():
    with pytest.raises(ValidationError):
        Money.of("1.00", "USD").amount = Decimal(2)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [
        (Decimal("1.50"), "USD", "1.50"),  # already the currency's places: kept as it is
        (Decimal("1.5"), "USD", "1.50"),
        (Decimal("7"), "BHD", "7.000"),
        (Decimal("1E+2"), "USD", "100.00"),
        (Decimal("1E+2"), "JPY", "100"),  # no places, but an exponent all the same
        (Decimal("-0.00"), "USD", "0.00"),  # never a negative zero
        (Decimal("-0"), "JPY", "0"),
    ],
)
def test_validation_writes_exactly_the_currencys_places(amount, currency, written):
    validated = Money.model_validate({"amount": amount, "currency": currency})
    built = Money.of(amount, currency)

    assert str(validated.amount) == str(built.amount) == written
    assert hash(validated) == hash(built)
