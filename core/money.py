"""Money: a Decimal amount in an ISO 4217 currency, rounded half-even to the currency's minor units."""

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from core.errors import InvalidRequest

# ISO 4217 minor units for the currencies the OMS accepts. A currency missing here is rejected
# rather than guessed: pricing a JPY order with two decimals is a real-money bug.
MINOR_UNITS: dict[str, int] = {
    "AED": 2,
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CLP": 0,
    "CNY": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "IDR": 2,
    "ILS": 2,
    "INR": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "MXN": 2,
    "MYR": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PHP": 2,
    "PLN": 2,
    "RON": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "THB": 2,
    "TND": 3,
    "TRY": 2,
    "TWD": 2,
    "USD": 2,
    "VND": 0,
    "ZAR": 2,
}


def minor_units(currency: str) -> int:
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise ValueError(f"unsupported currency {currency[:40]!r}: use an ISO 4217 code such as USD") from None


_QUANTA = {currency: Decimal(1).scaleb(-units) for currency, units in MINOR_UNITS.items()}


def quantum(currency: str) -> Decimal:
    # Looked up, not computed: every amount is rounded with it, dozens of times an order.
    quantum = _QUANTA.get(currency)
    return quantum if quantum is not None else Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-even to the currency's minor units (the contract's rule, at line level)."""
    rounded = amount.quantize(quantum(currency), rounding=ROUND_HALF_EVEN)
    return rounded.copy_abs() if rounded.is_zero() else rounded  # never "-0.00"


def _check_currency(value: Any) -> Any:
    if isinstance(value, str):
        minor_units(value)
    return value


Currency = Annotated[
    str,
    BeforeValidator(_check_currency),
    WithJsonSchema({"type": "string", "enum": sorted(MINOR_UNITS), "description": "ISO 4217 code"}),
]


# ASCII digits only, at most 15 before the point: far beyond any order total, and well inside
# Decimal's 28-digit context, so quantizing never raises.
_AMOUNT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,6})?")
# Well formed but with more digits before the point: too large, which the refusal says (bounded,
# so a megabyte of digits is not matched through).
_LARGE_AMOUNT = re.compile(r"-?[0-9]{16,64}(\.[0-9]{1,6})?")
MAX_ABS_AMOUNT = Decimal("1e15")


def _parse_amount(value: Any) -> Decimal:
    # Floats are refused on purpose: 0.1 has no exact binary form, and money must never pass
    # through one. Decimal and int come from code and DynamoDB; strings come from JSON.
    if isinstance(value, bool | float):
        raise ValueError('amount must be a decimal string such as "12.34", not a JSON number')
    if isinstance(value, int):
        value = Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or abs(value) >= MAX_ABS_AMOUNT:
            raise ValueError("amount must be a finite number below 10^15")
        return value
    if isinstance(value, str):
        if _LARGE_AMOUNT.fullmatch(value):
            raise ValueError(f"amount {value[:40]!r} is not below 10^15, the most the OMS records")
        if not _AMOUNT.fullmatch(value):
            raise ValueError(f'amount {value[:40]!r} is not a decimal string such as "12.34"')
        return Decimal(value)
    raise ValueError('amount must be a decimal string such as "12.34"')


def _amount_field(value: Any) -> Decimal:
    # In a request, amounts are strings: a JSON number (even an integer) is refused, so no client
    # ever learns that some numbers happen to work. Code passes Decimal.
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError('amount must be a decimal string such as "12.34", not a JSON number')
    return _parse_amount(value)


Amount = Annotated[
    Decimal,
    BeforeValidator(_amount_field),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "examples": ["12.34"]}),
]


def _not_in_minor_units(currency: str, units: int, amount: Any) -> ValidationError:
    # Raised as a ValueError, the error would name the Money (`price`); built this way it names its
    # amount (`price.amount`, `lines[0].unit_cost.amount`), the field at fault, as API.md's details do.
    message = f"{currency} amounts have {units} decimal places, got {amount}"
    return ValidationError.from_exception_data(
        "Money", [{"type": "value_error", "loc": ("amount",), "input": str(amount), "ctx": {"error": message}}]
    )


def _written_exactly(value: Any) -> Any:
    """A Money as a client writes it (API.md: `amount` is a decimal string with exactly the currency's
    minor units): "1" or "1.5" is no USD amount, as "1.234" is not. What code and storage pass
    (Decimal, or strings the OMS wrote) is rounded to the minor units by Money itself."""
    if isinstance(value, dict):
        amount, currency = value.get("amount"), value.get("currency")
        if isinstance(amount, str) and isinstance(currency, str) and currency in MINOR_UNITS:
            places = len(amount.partition(".")[2])
            units = MINOR_UNITS[currency]
            if places != units and _AMOUNT.fullmatch(amount):
                raise _not_in_minor_units(currency, units, amount)
    return value


# Wide enough for any product Money.times makes exactly: an amount below 10^15 in thousandths (18
# digits) times a tax rate written with up to 40 places (core.pricing_types.TaxRate), a quantity or
# a percentage. Decimal's default 28 digits rounded such a product before Money rounded it again:
# 0.03 x 0.4999…9 (31 nines) became 0.015, then 0.02, where rounding it once gives 0.01.
_EXACT = Context(prec=100)


class AmountTooLarge(InvalidRequest):
    """A computed amount (a line, a tax, a total) at or above 10^15: the order is refused (422)."""

    code = "amount_too_large"


class Money(BaseModel):
    """An exact amount in one currency. Serialized as {"amount": "12.34", "currency": "USD"}."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    amount: Amount
    currency: Currency

    @model_validator(mode="after")
    def _exact_minor_units(self) -> "Money":
        amount = self.amount
        exponent = amount.as_tuple().exponent
        places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        units = minor_units(self.currency)
        if places > units:
            raise _not_in_minor_units(self.currency, units, amount)
        # Exact at this point, so quantizing only writes the contract's fixed number of places:
        # an amount that has them already (what code and storage pass) is kept as it is, unless
        # it is a negative zero.
        if exponent != -units or (amount.is_zero() and amount.is_signed()):
            object.__setattr__(self, "amount", round_money(amount, self.currency))
        return self

    @classmethod
    def of(cls, amount: Decimal | int | str, currency: str) -> "Money":
        """Build from any exact amount, rounding half-even to the currency's minor units. An amount
        computed at or above 10^15 is the order's fault, not a bug: AmountTooLarge."""
        exact = isinstance(amount, Decimal | int) and not isinstance(amount, bool)
        if exact:
            value = Decimal(amount)
            if not value.is_finite():
                rounded = round_money(_parse_amount(value), currency)  # raises: not a finite number
            elif abs(value) >= MAX_ABS_AMOUNT:
                raise AmountTooLarge(f"an amount of the order reaches 10^15 {currency}, the most the OMS records")
            else:
                # Below 10^15 before rounding, so quantizing cannot raise; rounding can still reach it.
                rounded = round_money(value, currency)  # raises for an unknown currency
                if abs(rounded) >= MAX_ABS_AMOUNT:
                    raise AmountTooLarge(f"an amount of the order reaches 10^15 {currency}, the most the OMS records")
        else:
            rounded = round_money(_parse_amount(amount), currency)
        if cls is Money and type(currency) is str and abs(rounded) < MAX_ABS_AMOUNT:
            # Already all that validation checks and makes (a finite amount below the limit, in a
            # known currency's minor units): built without validating it again, as pydantic's
            # model_construct would build it (every field set, no extras, no private attributes)
            # in a third of its time. Pricing computes dozens of amounts an order.
            money = cls.__new__(cls)
            object.__setattr__(money, "__dict__", {"amount": rounded, "currency": currency})
            object.__setattr__(money, "__pydantic_fields_set__", {"amount", "currency"})
            object.__setattr__(money, "__pydantic_extra__", None)
            object.__setattr__(money, "__pydantic_private__", None)
            return money
        return cls(amount=rounded, currency=currency)

    @classmethod
    def summed(cls, amount: Decimal, currency: str) -> "Money":
        """A sum over many orders (a customer's totals, a report's revenue) as the API shows it:
        rounded half-even to the currency's minor units, however large. The 10^15 limit is one
        order's (AmountTooLarge refuses the order that reaches it); orders below it may add up to
        more, and a read of what they add up to must not fail on it."""
        if not amount.is_finite():
            raise ValueError(f"a sum of {currency} amounts is not a finite number: {amount}")
        with localcontext() as context:
            context.prec = max(context.prec, amount.adjusted() + minor_units(currency) + 2)
            rounded = round_money(amount, currency)
        money = cls.__new__(cls)  # built as Money.of builds one: the amount checked and made above
        object.__setattr__(money, "__dict__", {"amount": rounded, "currency": currency})
        object.__setattr__(money, "__pydantic_fields_set__", {"amount", "currency"})
        object.__setattr__(money, "__pydantic_extra__", None)
        object.__setattr__(money, "__pydantic_private__", None)
        return money

    @classmethod
    def zero(cls, currency: str) -> "Money":
        return cls.of(0, currency)

    def _same(self, other: "Money") -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: "Money") -> "Money":
        self._same(other)
        return Money.of(self.amount + other.amount, self.currency)

    def __sub__(self, other: "Money") -> "Money":
        self._same(other)
        return Money.of(self.amount - other.amount, self.currency)

    def times(self, factor: int | Decimal) -> "Money":
        """Multiply and round half-even (used for quantity x unit price and rate x base), once: the
        product is exact before it is rounded (_EXACT)."""
        return Money.of(_EXACT.multiply(self.amount, Decimal(factor)), self.currency)

    def __lt__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount <= other.amount

    def is_negative(self) -> bool:
        return self.amount < 0


def total(amounts: list[Money], currency: str) -> Money:
    result = Money.zero(currency)
    for amount in amounts:
        result = result + amount
    return result


# Money in a request body: what Money takes, but an amount string with other than exactly its
# currency's minor units is refused (422) instead of rounded.
ExactMoney = Annotated[Money, BeforeValidator(_written_exactly)]
