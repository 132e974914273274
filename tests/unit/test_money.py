"""Money: exact decimal amounts, half-even rounding to each currency's minor units."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from core.money import MINOR_UNITS, Currency, ExactMoney, Money, round_money, total
from core.pricing import spread

# --- Parsing --------------------------------------------------------------------------------


def test_amount_is_parsed_from_a_decimal_string():
    money = Money(amount="12.34", currency="USD")

    assert money.amount == Decimal("12.34")
    assert money.currency == "USD"


def test_amount_with_fewer_decimals_is_normalized_to_the_currency_minor_units():
    assert str(Money(amount="12.3", currency="USD").amount) == "12.30"
    assert str(Money(amount="12", currency="EUR").amount) == "12.00"
    assert str(Money.of(7, "USD").amount) == "7.00"


@pytest.mark.parametrize("amount", [7, 0, -3])
def test_a_json_integer_is_not_an_amount(amount):
    with pytest.raises(ValidationError, match="not a JSON number"):
        Money(amount=amount, currency="USD")


def test_amount_with_more_decimals_than_the_currency_has_is_rejected():
    with pytest.raises(ValidationError, match="2 decimal places"):
        Money(amount="12.345", currency="USD")
    with pytest.raises(ValidationError, match="0 decimal places"):
        Money(amount="700.5", currency="JPY")


@pytest.mark.parametrize("amount", [12.34, 12.0, True, False])
def test_floats_and_bools_are_rejected_as_amounts(amount):
    # A JSON 12.34 is refused saying why: the client sent a number where a string belongs.
    with pytest.raises(ValidationError, match=r'decimal string such as "12\.34", not a JSON number'):
        Money(amount=amount, currency="USD")


@pytest.mark.parametrize(
    "amount", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", Decimal("NaN"), Decimal("Infinity")]
)
def test_nan_and_infinity_are_rejected(amount):
    with pytest.raises(ValidationError, match=r"finite|decimal string"):
        Money(amount=amount, currency="USD")


@pytest.mark.parametrize("amount", ["", "twelve", "12,34", "1.2.3", None, ["1"]])
def test_text_that_is_not_a_number_is_rejected(amount):
    with pytest.raises(ValidationError):
        Money(amount=amount, currency="USD")


@pytest.mark.parametrize("currency", ["XXX", "usd", "US", "", "BTC"])
def test_unsupported_currency_is_rejected(currency):
    with pytest.raises(ValidationError, match="unsupported currency"):
        Money(amount="1", currency=currency)


def test_an_unsupported_currency_is_echoed_no_longer_than_an_amount_is():
    # A 200 KB currency was repeated whole in the 422's message (an amount was cut at 40 characters).
    with pytest.raises(ValidationError) as refused:
        Money(amount="1.00", currency="U" * 200_000)

    (error,) = refused.value.errors()
    assert error["msg"] == f"Value error, unsupported currency {'U' * 40!r}: use an ISO 4217 code such as USD"


def test_a_currency_field_refuses_a_code_it_has_no_minor_units_for():
    # PlaceOrder.currency is one: an order in XXX is refused before anything is priced in it.
    with pytest.raises(ValidationError, match="unsupported currency"):
        TypeAdapter(Currency).validate_python("XXX")
    assert TypeAdapter(Currency).validate_python("JPY") == "JPY"


@pytest.mark.parametrize(
    ("amount", "currency"), [("1", "USD"), ("1.5", "USD"), ("12.345", "USD"), ("7.50", "BHD"), ("7.0", "JPY")]
)
def test_a_request_amount_has_exactly_its_currencys_places(amount, currency):
    # API.md: a client writes "1.50", never "1.5" (which Money itself would round to it).
    with pytest.raises(ValidationError, match="decimal places"):
        TypeAdapter(ExactMoney).validate_python({"amount": amount, "currency": currency})


@pytest.mark.parametrize(
    ("written", "match"),
    [
        ({"amount": "1.2.3", "currency": "USD"}, "decimal string"),
        ({"amount": "1.5", "currency": "XXX"}, "unsupported currency"),
        ({"amount": 1.5, "currency": "USD"}, "decimal string"),
    ],
)
def test_a_request_amount_that_is_no_amount_is_refused_for_what_it_is(written, match):
    with pytest.raises(ValidationError, match=match):
        TypeAdapter(ExactMoney).validate_python(written)


def test_exact_money_takes_what_code_and_storage_pass_as_money_does():
    exact = TypeAdapter(ExactMoney)

    assert exact.validate_python({"amount": "1.50", "currency": "USD"}) == Money.of("1.5", "USD")
    assert str(exact.validate_python({"amount": "700", "currency": "JPY"}).amount) == "700"
    assert exact.validate_python({"amount": Decimal("1.5"), "currency": "USD"}) == Money.of("1.50", "USD")
    assert exact.validate_python(Money.of("2.5", "USD")) == Money.of("2.50", "USD")


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError):
        Money.model_validate({"amount": "1.00", "currency": "USD", "cents": 100})


def test_money_is_immutable():
    money = Money(amount="1.00", currency="USD")

    with pytest.raises(ValidationError):
        money.amount = Decimal("2.00")


# --- Minor units and rounding ---------------------------------------------------------------


def test_each_currencys_minor_units_are_its_iso_4217_exponent():
    # Three for the dinars and the Omani rial; none for the Chilean peso, the Icelandic krona, the
    # yen, the won and the dong; two for every other currency the OMS accepts.
    three = {"BHD", "JOD", "KWD", "OMR", "TND"}
    none = {"CLP", "ISK", "JPY", "KRW", "VND"}

    assert {code: 3 if code in three else 0 if code in none else 2 for code in MINOR_UNITS} == MINOR_UNITS
    assert {code: str(Money.of(1, code).amount) for code in ("USD", "BHD", "CLP")} == {
        "USD": "1.00",
        "BHD": "1.000",
        "CLP": "1",
    }


def test_jpy_has_no_decimals():
    assert str(Money(amount="700", currency="JPY").amount) == "700"
    assert str(Money.of("2.5", "JPY").amount) == "2"


def test_kwd_has_three_decimals():
    assert str(Money(amount="1.234", currency="KWD").amount) == "1.234"
    assert str(Money(amount="1", currency="KWD").amount) == "1.000"
    with pytest.raises(ValidationError):
        Money(amount="1.2345", currency="KWD")


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.125", "USD", "0.12"),
        ("0.135", "USD", "0.14"),
        ("0.145", "USD", "0.14"),
        ("-0.125", "USD", "-0.12"),
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("1.2345", "KWD", "1.234"),
        ("1.2355", "KWD", "1.236"),
    ],
)
def test_rounding_is_half_even(amount, currency, rounded):
    assert round_money(Decimal(amount), currency) == Decimal(rounded)
    assert Money.of(amount, currency).amount == Decimal(rounded)


def test_times_rounds_half_even_once_on_the_product():
    assert Money(amount="0.25", currency="USD").times(Decimal("0.5")).amount == Decimal("0.12")
    assert Money(amount="19.99", currency="USD").times(3).amount == Decimal("59.97")
    assert Money(amount="10.00", currency="USD").times(Decimal("0.0725")).amount == Decimal("0.72")


@pytest.mark.parametrize(
    ("amount", "currency", "factor", "rounded"),
    [
        # 0.0149999…97 exactly: 0.01. Rounded first to Decimal's 28 digits it was 0.015, then 0.02.
        ("0.03", "USD", "0.4999999999999999999999999999999", "0.01"),
        ("0.003", "KWD", "0.4999999999999999999999999999999", "0.001"),
        ("3", "JPY", "0.4999999999999999999999999999999", "1"),
        # An amount of 13 digits times a rate of 35 places (TaxRate takes 40): 6172839450.6149999…
        ("12345678901.23", "USD", "0.49999999999999999999999999999999999", "6172839450.61"),
    ],
)
def test_times_rounds_a_product_of_more_than_28_digits_once(amount, currency, factor, rounded):
    assert Money(amount=amount, currency=currency).times(Decimal(factor)).amount == Decimal(rounded)


# --- Arithmetic -----------------------------------------------------------------------------


def test_addition_and_subtraction_stay_exact():
    assert Money(amount="0.10", currency="USD") + Money(amount="0.20", currency="USD") == Money(
        amount="0.30", currency="USD"
    )
    assert (Money(amount="5.00", currency="USD") - Money(amount="7.50", currency="USD")).amount == Decimal("-2.50")


def test_combining_currencies_raises():
    usd = Money(amount="1.00", currency="USD")
    eur = Money(amount="1.00", currency="EUR")

    with pytest.raises(ValueError, match="cannot combine USD with EUR"):
        _ = usd + eur
    with pytest.raises(ValueError, match="cannot combine"):
        _ = usd - eur
    with pytest.raises(ValueError, match="cannot combine"):
        _ = usd < eur


def test_equal_amounts_are_not_less_than_each_other():
    one, also_one, less = Money.of("1.00", "USD"), Money.of("1", "USD"), Money.of("0.99", "USD")

    assert not one < also_one and one <= also_one
    assert less < one and less <= one
    assert not one < less and not one <= less


def test_a_sum_over_many_orders_is_rounded_however_large():
    # One order stays below 10^15 (AmountTooLarge); what a customer's orders add up to may not.
    summed = Money.summed(Decimal("1000000000000000000000000000.125"), "USD")

    assert str(summed.amount) == "1000000000000000000000000000.12"
    assert str(Money.summed(Decimal("5"), "JPY").amount) == "5"
    assert summed.model_fields_set == Money.of(1, "USD").model_fields_set


@pytest.mark.parametrize("amount", [Decimal("NaN"), Decimal("Infinity")])
def test_a_sum_that_is_not_a_finite_number_is_refused(amount):
    with pytest.raises(ValueError, match="not a finite number"):
        Money.summed(amount, "USD")


def test_total_of_nothing_is_zero_in_the_currency():
    assert total([], "JPY") == Money.zero("JPY")
    assert total([Money.of("1.005", "USD"), Money.of("2", "USD")], "USD").amount == Decimal("3.00")


# --- JSON -----------------------------------------------------------------------------------


def test_json_amount_is_a_string_with_the_currency_minor_units():
    assert json.loads(Money(amount="12.3", currency="USD").model_dump_json()) == {
        "amount": "12.30",
        "currency": "USD",
    }
    assert Money(amount="700", currency="JPY").model_dump(mode="json") == {"amount": "700", "currency": "JPY"}


def test_json_schema_declares_the_amount_a_string():
    schema = Money.model_json_schema()

    assert schema["properties"]["amount"]["type"] == "string"


def test_an_absurdly_large_amount_is_a_validation_error():
    with pytest.raises(ValidationError):
        Money(amount="1e30", currency="USD")


# --- Properties -----------------------------------------------------------------------------

currencies = st.sampled_from(sorted(MINOR_UNITS))


@st.composite
def money_in(draw, currency: str, max_minor: int = 10**12) -> Money:
    minor = draw(st.integers(min_value=0, max_value=max_minor))
    return Money.of(Decimal(minor).scaleb(-MINOR_UNITS[currency]), currency)


@st.composite
def amount_and_weights(draw):
    currency = draw(currencies)
    amount = draw(money_in(currency, max_minor=10**9))
    weights = draw(st.lists(money_in(currency, max_minor=10**9), min_size=1, max_size=20))
    return amount, weights


@given(amount_and_weights())
def test_spread_parts_always_add_up_to_the_amount_exactly(case):
    amount, weights = case

    parts = spread(amount, weights)

    assert len(parts) == len(weights)
    assert all(part.currency == amount.currency for part in parts)
    if any(w.amount for w in weights):
        assert sum((part.amount for part in parts), Decimal(0)) == amount.amount


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**9), max_value=10**9), currencies)
def test_round_money_is_idempotent(amount, currency):
    once = round_money(amount, currency)

    assert round_money(once, currency) == once
    assert -once.as_tuple().exponent == MINOR_UNITS[currency]


@given(currencies.flatmap(money_in))
def test_json_round_trip_gives_the_same_money(money):
    assert Money.model_validate_json(money.model_dump_json()) == money


@pytest.mark.parametrize("amount", ["1e3", "+5", "1_000", "\u0661\u0662", " 12.34", "12.", ".5"])
def test_only_plain_ascii_decimal_strings_are_amounts(amount):
    with pytest.raises(ValidationError, match="decimal string"):
        Money(amount=amount, currency="USD")


@pytest.mark.parametrize("amount", ["1234567890123456", "-1000000000000000.00", "9" * 64])
def test_a_decimal_string_of_16_digits_or_more_is_refused_as_too_large(amount):
    with pytest.raises(ValidationError, match="not below 10\\^15"):
        Money(amount=amount, currency="USD")


def test_a_negative_zero_is_written_as_zero():
    assert Money.of("-0.001", "USD").model_dump(mode="json")["amount"] == "0.00"


@pytest.mark.parametrize(
    "amount", [Decimal("1e15"), Decimal("-1e15"), 10**15, Decimal("1e40"), Decimal("999999999999999.995")]
)
def test_a_computed_amount_at_or_above_10_to_the_15_is_the_orders_error_not_a_bug(amount):
    from core.errors import InvalidRequest
    from core.money import AmountTooLarge

    with pytest.raises(AmountTooLarge) as raised:
        Money.of(amount, "USD")

    assert isinstance(raised.value, InvalidRequest) and raised.value.code == "amount_too_large"


def test_a_line_total_that_reaches_10_to_the_15_raises_amount_too_large():
    from core.money import AmountTooLarge

    with pytest.raises(AmountTooLarge):
        Money.of("999999999999999.00", "USD").times(2)
