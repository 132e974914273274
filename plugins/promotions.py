"""Built-in promotions: the promo codes of a JSON data file, as percent, fixed or free-shipping discounts.

The file is `plugins/data/promotions.json`, or the path in `OMS_PLUGIN_PROMOTIONS_FILE`:

    {"promotions": [
        {"code": "WELCOME10", "kind": "percent", "percent": "10"},
        {"code": "STAFF5", "kind": "percent", "percent": "5", "stacks": true},
        {"code": "SAVE5", "kind": "fixed", "amounts": {"USD": "5.00", "JPY": "700"}},
        {"code": "FREESHIP", "kind": "free_shipping",
         "min_subtotal": {"USD": "50.00"}, "channels": ["web"]}
    ]}

A code the file does not list gets no answer from this plugin (so, unless another plugin knows it,
the core rejects it as `unknown_promo_code`). A listed code whose conditions the order does not
meet (channel, minimum subtotal, no fixed amount in the order's currency) is accepted but grants
nothing: a zero-amount discount, so the customer is not told a real code does not exist.

Stacking: at most one percent-off code discounts an order, plus any whose promotion says
`"stacks": true`; two that do not stack and that the order both qualifies for are 422
`promo_codes_do_not_stack` (one that grants nothing clashes with nothing). Fixed and
free-shipping codes combine with anything.
"""

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from core import hookimpl
from core.models import Channel
from core.money import Money
from core.pricing_types import Discount, PricingDraft
from plugins.data_files import DecimalText, data_file_path, load_data_file

NAME = "promotions"  # its entry-point name, which namespaces its settings
PROMOTIONS_FILE_ENV = "OMS_PLUGIN_PROMOTIONS_FILE"


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


# Upper-cased before the pattern check, so the file may spell a code in any case.
Code = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z0-9_-]{1,32}$")]


def _as_money_objects(value: Any) -> Any:
    # The file writes {"USD": "5.00"}; Money then checks the currency and its decimal places.
    if isinstance(value, dict):
        return {currency: {"amount": amount, "currency": currency} for currency, amount in value.items()}
    return value


def _not_negative(value: dict[str, Money]) -> dict[str, Money]:
    for money in value.values():
        if money.is_negative():
            raise ValueError(f"{money.currency} amount must not be negative")
    return value


MoneyByCurrency = Annotated[dict[str, Money], BeforeValidator(_as_money_objects), AfterValidator(_not_negative)]


class _Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    code: Code
    description: str = ""
    min_subtotal: MoneyByCurrency = Field(
        default_factory=dict,
        description="Minimum order subtotal per currency. When set, orders in a currency it does not list "
        "do not qualify.",
    )
    channels: Annotated[list[Channel], Field(min_length=1)] | None = Field(
        default=None, description="Channels the code is valid in; absent means every channel."
    )

    def discounts_for(self, draft: PricingDraft) -> list[Discount]:
        if not self._qualifies(draft):
            return [self._nothing(draft)]
        return self._grant(draft)

    def _qualifies(self, draft: PricingDraft) -> bool:
        if self.channels is not None and draft.channel not in self.channels:
            return False
        if self.min_subtotal:
            minimum = self.min_subtotal.get(draft.currency)
            if minimum is None or draft.subtotal < minimum:
                return False
        return True

    def _nothing(self, draft: PricingDraft) -> Discount:
        return Discount(code=self.code, amount=Money.zero(draft.currency))

    def _grant(self, draft: PricingDraft) -> list[Discount]:
        raise NotImplementedError


class PercentOff(_Promotion):
    """`percent` off every line, rounded half-even per line. Unless `stacks` is true its discounts
    are marked `exclusive`: the core refuses an order that two such codes would both discount."""

    kind: Literal["percent"]
    percent: Annotated[DecimalText, Field(gt=0, le=100)]
    stacks: bool = Field(
        default=False, description="May be combined with other percent-off codes in one order (default: no)."
    )

    def _grant(self, draft: PricingDraft) -> list[Discount]:
        factor = self.percent / Decimal(100)
        return [
            Discount(
                code=self.code, amount=line.subtotal.times(factor), line_id=line.line_id, exclusive=not self.stacks
            )
            for line in draft.lines
        ] or [self._nothing(draft)]


class FixedOff(_Promotion):
    """A fixed amount off the order, per currency; the core spreads it over the lines."""

    kind: Literal["fixed"]
    amounts: Annotated[MoneyByCurrency, Field(min_length=1)]

    def _grant(self, draft: PricingDraft) -> list[Discount]:
        amount = self.amounts.get(draft.currency)
        if amount is None:
            return [self._nothing(draft)]
        return [Discount(code=self.code, amount=amount)]


class FreeShipping(_Promotion):
    """The shipping charge becomes zero."""

    kind: Literal["free_shipping"]

    def _grant(self, draft: PricingDraft) -> list[Discount]:
        return [Discount(code=self.code, free_shipping=True)]


Promotion = Annotated[PercentOff | FixedOff | FreeShipping, Field(discriminator="kind")]


class PromotionsFile(BaseModel):
    """The promotions data file."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    note: str = Field(default="", alias="_note")
    promotions: list[Promotion]

    @model_validator(mode="after")
    def _unique_codes(self) -> "PromotionsFile":
        seen: set[str] = set()
        for promotion in self.promotions:
            if promotion.code in seen:
                raise ValueError(f"promo code {promotion.code} is listed twice")
            seen.add(promotion.code)
        return self

    def by_code(self) -> dict[str, PercentOff | FixedOff | FreeShipping]:
        return {promotion.code: promotion for promotion in self.promotions}


def load_promotions() -> dict[str, PercentOff | FixedOff | FreeShipping]:
    """The configured promotions by upper-case code. Raises DataFileError for a malformed file."""
    return load_data_file(data_file_path(NAME, "file", "promotions.json"), PromotionsFile).by_code()


@hookimpl
def oms_discounts(draft: PricingDraft) -> list[Discount]:
    if not draft.promo_codes:
        return []
    promotions = load_promotions()
    discounts: list[Discount] = []
    for code in dict.fromkeys(code.strip().upper() for code in draft.promo_codes):
        promotion = promotions.get(code)
        if promotion is not None:
            discounts.extend(promotion.discounts_for(draft))
    return discounts
