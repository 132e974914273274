"""What pricing plugins receive and return. Plugins get copies; the core validates their answers."""

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.models import Address, Customer, Fulfillment, Product, ShippingMethod, VisibleName, VisibleText
from core.money import Money


class DraftLine(BaseModel):
    """One order line being priced. `subtotal` is quantity x unit_price, rounded."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    line_id: str
    product: Product
    quantity: int
    unit_price: Money
    subtotal: Money


class PricingDraft(BaseModel):
    """The order as the pricing hooks see it, after unit prices are known."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    channel: str
    currency: str
    customer: Customer
    lines: list[DraftLine]
    shipping_address: Address
    fulfillment: Fulfillment
    shipping_method: str | None
    promo_codes: list[str]

    @property
    def subtotal(self) -> Money:
        result = Money.zero(self.currency)
        for line in self.lines:
            result = result + line.subtotal
        return result

    @property
    def weight_grams(self) -> int:
        return sum((line.product.weight_grams or 0) * line.quantity for line in self.lines)


class Discount(BaseModel):
    """A discount a plugin grants.

    - `line_id` set: `amount` comes off that line.
    - `line_id` None and `amount` set: an order-level amount the core spreads over the lines in
      proportion to their subtotals (in minor units, largest remainders first: core.pricing.spread);
      a share a line has no room for (its own discounts took its subtotal) comes off the others.
    - `free_shipping`: the shipping charge becomes zero.
    `code` names what granted it: the promo code it answers for, or a rule name.
    `exclusive`: the code does not stack: at most one code per order may be granted an exclusive
    discount (a second is 422 `promo_codes_do_not_stack`). The promotions plugin marks its
    percent-off codes so unless the promotion says `stacks: true`.
    The order keeps what each discount granted it, with its `code` (Order.promotion_grants): the
    core accepts from a plugin a code of 1 to 100 characters, and at most
    core.pricing.MAX_DISCOUNTS of them an order (core.pricing._discount_in), to keep its item
    within DynamoDB's 400 KB.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    code: str
    amount: Money | None = None
    line_id: str | None = None
    free_shipping: bool = False
    exclusive: bool = False


# The order line shows its rate written out in full (LineTaxRate), on the order, its events and
# webhooks: 1E-100000 would be 100 KB of zeros there. 40 places hold any rate a tax service quotes
# or Decimal's 28-digit context computes above 1E-12, and far more than tax on any order can tell
# (an amount below 10^15 in thousandths, times a rate below 5E-19, rounds to nothing).
MAX_RATE_PLACES = 40


def _rate_places(rate: Decimal) -> Decimal:
    exponent = rate.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_RATE_PLACES:
        raise ValueError(f"a rate is written with at most {MAX_RATE_PLACES} decimal places")
    return rate


class TaxRate(BaseModel):
    """A tax rate for one line: tax = round_half_even((subtotal - discount) x rate), written with at
    most MAX_RATE_PLACES decimal places. `name` is kept on the order line for invoices: a control
    character or a bidi override in it is replaced by U+FFFD (refusing it would refuse every order
    the rate taxes)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    rate: Annotated[Decimal, Field(ge=0, le=1), AfterValidator(_rate_places)]
    name: Annotated[str, VisibleName]


class ShippingQuote(BaseModel):
    """One way to ship the order: `method` is what clients send as `shipping_method`, so it has
    that field's form (1 to 32 lower-case letters, digits or _): the order keeps it, and an edit
    or a unit cancel sends it again."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    method: ShippingMethod
    amount: Money
    description: Annotated[str, VisibleText] = ""
