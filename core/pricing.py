"""Pricing: asks the plugins for unit prices, discounts, tax and shipping, and checks every answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import NamedTuple

import pluggy

from core.errors import InvalidRequest, NoPrice, NoShippingMethod, PluginError, UnknownShippingMethod
from core.hook_calls import call_hook
from core.models import Address, Customer, LineTaxRate, OrderLine, PlaceOrder, Product, PromotionGrant, Totals
from core.money import AmountTooLarge, Money, quantum
from core.pricing_types import Discount, DraftLine, PricingDraft, ShippingQuote, TaxRate

DEFAULT_SHIPPING_METHOD = "standard"
PICKUP_METHOD = "pickup"


class PricedOrder(NamedTuple):
    lines: list[OrderLine]
    totals: Totals
    shipping_method: str
    promo_codes: list[str]
    # What the promo codes and the plugins' own rules grant the order as priced (Order.promotion_grants:
    # kept from its capture, and from each edit of an order priced again: _merged).
    grants: list[PromotionGrant]
    # The command's customer and shipping address as an order holds them (Customer, Address): the
    # draft validated them so, and an order placed from this one takes them as they are, rather
    # than validating the client's CustomerInput and AddressInput a second time.
    customer: Customer
    shipping_address: Address


def _money_in(currency: str) -> Callable[[Money], Money]:
    """Accepts a plugin's Money only in the order's currency and never negative."""

    def accept(value: Money) -> Money:
        if value.currency != currency:
            raise PluginError(f"returned {value.currency}, the order is in {currency}")
        if value.is_negative():
            raise PluginError("returned a negative amount")
        return value

    return accept


# The order keeps one grant per discount (Order.promotion_grants): 1000 of them, with codes of up
# to 100 characters, keep its item well within DynamoDB's 400 KB (an edit keeps them beside today's).
MAX_DISCOUNTS = 1000
MAX_CODE_CHARS = 100


def _discount_in(currency: str, lines: dict[str, Money]) -> Callable[[Discount], Discount]:
    """Accepts a plugin's Discount in the order's currency, never negative, on one of `lines`, with
    a code of 1 to MAX_CODE_CHARS characters, and at most MAX_DISCOUNTS of them from all plugins in
    one call. Checked here, on what a plugin answers now, not on Discount: an order stored before
    the limit keeps a grant's longer code (_kept_terms)."""
    money = _money_in(currency)
    count = 0

    def accept(discount: Discount) -> Discount:
        nonlocal count
        count += 1
        if count > MAX_DISCOUNTS:
            raise PluginError(f"returned discount number {count}: an order takes at most {MAX_DISCOUNTS}")
        if not 1 <= len(discount.code) <= MAX_CODE_CHARS:
            raise PluginError(f"returned a discount code of {len(discount.code)} characters, not 1 to {MAX_CODE_CHARS}")
        if discount.amount is not None:
            money(discount.amount)
        if discount.line_id is not None and discount.line_id not in lines:
            raise PluginError(f"named unknown line {discount.line_id}")
        return discount

    return accept


def _quote_in(currency: str) -> Callable[[ShippingQuote], ShippingQuote]:
    money = _money_in(currency)

    def accept(quote: ShippingQuote) -> ShippingQuote:
        money(quote.amount)
        return quote

    return accept


def spread(amount: Money, weights: list[Money], names: list[str] | None = None) -> list[Money]:
    """Split a non-negative `amount` over lines in proportion to `weights` (largest-remainder
    method, in minor units): the parts add up to `amount` exactly and none is negative. Of lines
    with equal remainders and weights, the first by `names` (else by position) takes a unit more."""
    currency = amount.currency
    unit = quantum(currency)
    total_weight = sum((w.amount for w in weights), Decimal(0))
    if total_weight == 0 or amount.amount <= 0:
        return [Money.zero(currency) for _ in weights]
    units = int(amount.amount / unit)
    exact = [units * w.amount / total_weight for w in weights]
    parts = [int(e) for e in exact]  # floor: every share is non-negative
    tie = names or [""] * len(weights)
    by_remainder = sorted(range(len(weights)), key=lambda i: (parts[i] - exact[i], -weights[i].amount, tie[i], i))
    for i in by_remainder[: units - sum(parts)]:
        parts[i] += 1
    return [Money.of(p * unit, currency) for p in parts]


def _named_rate(rate: TaxRate) -> TaxRate:
    # Printed on the invoice line it taxes: a blank (only white space) names no tax.
    if not 1 <= len(rate.name) <= 100 or rate.name.isspace():
        raise PluginError("returned a TaxRate without a name of 1 to 100 characters, not all white space")
    return rate


def lines_by_sku(cmd: PlaceOrder) -> dict[str, list[int]]:
    """The indexes of `cmd`'s lines by sku, in the order the skus first appear."""
    by_sku: dict[str, list[int]] = {}
    for index, line in enumerate(cmd.lines):
        by_sku.setdefault(line.sku, []).append(index)
    return by_sku


class Pricing:
    """Prices a PlaceOrder command through the plugin manager's hooks."""

    def __init__(self, plugins: pluggy.PluginManager):
        self._hook = plugins.hook

    def todays_unit_price(self, cmd: PlaceOrder, product: Product, quantity: int) -> Money | None:
        """What the plugins price `quantity` units of `product` at for `cmd` (hook oms_unit_price,
        checked): None when none prices it in the order's currency."""
        return call_hook(
            self._hook.oms_unit_price, _money_in(cmd.currency), product=product, quantity=quantity,
            currency=cmd.currency, channel=cmd.channel, customer=cmd.customer,
        )  # fmt: skip

    def unpriced(self, cmd: PlaceOrder, products: dict[str, Product]) -> dict[str, list[int]]:
        """The skus of `cmd` no plugin prices today in its currency, as price() asks (a sku's lines
        as one, their quantities summed), with the indexes of their lines."""
        return {
            sku: indexes
            for sku, indexes in lines_by_sku(cmd).items()
            if self.todays_unit_price(cmd, products[sku], sum(cmd.lines[i].quantity for i in indexes)) is None
        }

    def price(
        self, cmd: PlaceOrder, products: dict[str, Product], tax_address: Address,
        unit_prices: Mapping[str, Money] | None = None, placed_with: Sequence[PromotionGrant] = (),
        shipped_for: Money | None = None, sold_at: Mapping[str, Money] | None = None,
        taxed_at: Mapping[str, LineTaxRate | None] | None = None, sold_units: Mapping[str, int] | None = None,
        first_line: int = 1,
    ) -> PricedOrder:  # fmt: skip
        """`cmd` priced through the plugins; a sku in `unit_prices` keeps that unit price (units an
        order sold already: what the plugins would ask today does not change what they cost).
        `placed_with`: what the codes, and the plugins' own rules, of an order being priced again
        granted it when it was placed; each keeps those terms for the units they were granted for,
        whatever its promotion or rule says today (ended, or on other terms): _kept_terms,
        _todays_terms; but a rule the plugins apply to the order as it now is otherwise than to the
        order as it was sold gives it what it gives today (_lapsed). `shipped_for`: what an order
        priced again was charged for its shipping method, charged again should no plugin quote that
        method any more (its parcels are booked with it already). `sold_at`: the unit prices an
        order priced again was sold at, by sku, for a sku no plugin prices any more (in the order's
        currency). `taxed_at`: the tax rate each sku of an order priced again was sold at (None:
        untaxed), kept instead of asking the plugins. `sold_units`: the units of each sku an order
        priced again has (before this change): of a code that granted a sku nothing of its own (a
        fixed amount off the order), only units beyond those get today's terms (_todays_terms).
        `first_line`: the number of the first line's id (`L<n>`, the next ones counting up from it):
        an edit's lines take ids after those its order has had (Order.next_line_number)."""
        currency = cmd.currency
        kept = unit_prices or {}
        promo_codes = list(dict.fromkeys(cmd.promo_codes))
        # Lines of one sku are priced as one line (the first one's id, their quantities summed) and
        # its discount and tax are then shared out to the client's lines. Priced one by one, each
        # would be rounded on its own: ten lines of one unit could round a tax to nothing, or a
        # percent-off up, where one line of ten does not. The client's lines and ids stay as sent.
        by_sku = lines_by_sku(cmd)
        draft_lines = []
        for sku, indexes in by_sku.items():
            product = products[sku]
            quantity = sum(cmd.lines[i].quantity for i in indexes)
            unit = kept.get(sku)
            if unit is None:
                unit = self.todays_unit_price(cmd, product, quantity)
            if unit is None and sold_at is not None:
                unit = sold_at.get(sku)
            if unit is None:
                raise NoPrice(
                    f"no price for {sku} in {currency}",
                    details=[{"field": f"lines[{i}].sku", "message": f"no price in {currency}"} for i in indexes],
                )
            try:
                subtotal = unit.times(quantity)
            except AmountTooLarge as error:
                # The sku's units alone reach it (API.md: a 422's details name the field): its lines.
                # Of several lines, the sum of theirs does (each may hold a unit): said so.
                said = f"{quantity} × {unit.amount} {currency} reaches 10^15 {currency}"
                if len(indexes) > 1:
                    named = [f"lines[{i}]" for i in indexes]
                    said = f"the {quantity} units of {sku} on {', '.join(named[:-1])} and {named[-1]}: {said}"
                details = [{"field": f"lines[{i}].quantity", "message": said} for i in indexes]
                raise AmountTooLarge(error.message, details=details) from None
            draft_lines.append(
                DraftLine(
                    line_id=f"L{indexes[0] + first_line}",
                    product=product,
                    quantity=quantity,
                    unit_price=unit,
                    subtotal=subtotal,
                )
            )
        zero = Money.zero(currency)
        # Summed before any plugin sees the draft: lines each below 10^15 may add up to more, and the
        # order is then refused (AmountTooLarge, 422) whoever asks first; a plugin that reads the
        # draft's subtotal (a promotion's minimum) would otherwise fail on it as a plugin's error.
        order_subtotal = sum((d.subtotal for d in draft_lines), zero)
        draft = PricingDraft(
            channel=cmd.channel,
            currency=currency,
            customer=cmd.customer,
            lines=draft_lines,
            shipping_address=cmd.shipping_address,
            fulfillment=cmd.fulfillment,
            shipping_method=cmd.shipping_method,
            promo_codes=promo_codes,
        )

        as_sold = _as_sold(draft, placed_with, sold_units, products, sold_at)
        line_discounts, free_shipping, granted = self._discounts(
            draft, placed_with, sold_units or {}, as_sold, cmd.promo_codes
        )
        taxes = [self._tax(line, line_discounts[line.line_id], tax_address, draft, taxed_at) for line in draft_lines]
        shipping_method, shipping = self._shipping(draft, free_shipping, shipped_for)

        lines: list[OrderLine | None] = [None] * len(cmd.lines)
        for d, indexes, (tax, tax_rate) in zip(draft_lines, by_sku.values(), taxes, strict=True):
            subtotals = [d.unit_price.times(cmd.lines[i].quantity) for i in indexes]
            discounts = spread(line_discounts[d.line_id], subtotals)
            for i, subtotal, discount, tax_part in zip(
                indexes, subtotals, discounts, spread(tax, subtotals), strict=True
            ):
                lines[i] = OrderLine(
                    line_id=f"L{i + first_line}",
                    sku=d.product.sku,
                    quantity=cmd.lines[i].quantity,
                    unit_price=d.unit_price,
                    discount=discount,
                    tax=tax_part,
                    tax_rate=tax_rate,
                    total=subtotal - discount + tax_part,
                )
        priced_lines = [line for line in lines if line is not None]
        discount = sum((line.discount for line in priced_lines), zero)
        tax = sum((line.tax for line in priced_lines), zero)
        grand_total = sum((line.total for line in priced_lines), zero) + shipping
        return PricedOrder(
            lines=priced_lines,
            totals=Totals(
                subtotal=order_subtotal, discount=discount, shipping=shipping, tax=tax, grand_total=grand_total
            ),
            shipping_method=shipping_method,
            promo_codes=promo_codes,
            grants=_grants(granted, draft) if not placed_with else _merged(_grants(granted, draft)),
            customer=draft.customer,
            shipping_address=draft.shipping_address,
        )

    def _discounts(
        self, draft: PricingDraft, placed_with: Sequence[PromotionGrant], sold_units: Mapping[str, int],
        as_sold: PricingDraft | None, sent: Sequence[str],
    ) -> tuple[dict[str, Money], bool, list[Discount]]:  # fmt: skip
        """`sent`: the promo codes as the client listed them, a repeated one too: a refused code is
        named at each of its positions there, not at its place among the codes counted once."""
        currency = draft.currency
        subtotals = {line.line_id: line.subtotal for line in draft.lines}
        granted: list[Discount] = call_hook(self._hook.oms_discounts, _discount_in(currency, subtotals), draft=draft)
        lapsed: set[str] = set()
        if as_sold is not None:  # its units changed: asked as it was sold too
            before = {line.line_id: line.subtotal for line in as_sold.lines}
            was: list[Discount] = call_hook(self._hook.oms_discounts, _discount_in(currency, before), draft=as_sold)
            lapsed = _lapsed(granted, draft, was, as_sold) | _granting_nothing_now(granted, placed_with, draft)
            placed_with = [grant for grant in placed_with if grant.code not in lapsed]
        claimed = {d.code.upper() for d in granted} | {grant.code for grant in placed_with}
        # A code whose terms the edited units changed is judged as capture judges it, its stacking
        # too: one that now applies does not combine with another today's plugins say it does not.
        answered = {d.code.upper() for d in granted if d.exclusive} if lapsed else set()
        # The codes an order priced again was placed with keep the terms they were sold with
        # (_kept_terms), whatever their promotions say today; today's count only for units added.
        granted = [*_todays_terms(granted, placed_with, draft, sold_units, lapsed), *_kept_terms(placed_with, draft)]
        unknown = [
            {"field": f"promo_codes[{i}]", "message": f"{code} is not a valid promotion"}
            for i, code in enumerate(sent)
            if code not in claimed
        ]
        if unknown:
            raise InvalidRequest("unknown promo code", code="unknown_promo_code", details=unknown)
        exclusive = {d.code.upper() for d in granted if d.exclusive} | answered
        clashing = [i for i, code in enumerate(sent) if code in exclusive]
        if len({sent[i] for i in clashing}) > 1:
            raise InvalidRequest(
                "these promo codes cannot be combined: use one of them",
                code="promo_codes_do_not_stack",
                details=[
                    {
                        "field": f"promo_codes[{i}]",
                        "message": f"{sent[i]} does not stack with another code",
                    }
                    for i in clashing
                ],
            )

        zero = Money.zero(currency)
        own = dict.fromkeys(subtotals, zero)  # the discounts granted a line itself
        shares = dict.fromkeys(subtotals, zero)  # its shares of amounts off the order
        # Shared out by sku where rounding leaves a tie, not by the order the client sent the
        # lines: the same basket costs the same in any order (lines are taxed apart).
        skus = [line.product.sku for line in draft.lines]
        free_shipping = False
        for d in granted:
            free_shipping = free_shipping or d.free_shipping
            if d.amount is None:
                continue
            if d.line_id is not None:
                own[d.line_id] = own[d.line_id] + d.amount
            else:
                for line_id, part in zip(shares, spread(d.amount, list(subtotals.values()), skus), strict=True):
                    shares[line_id] = shares[line_id] + part
        # A discount never makes a line negative: a line's own discounts are capped at its subtotal,
        # and so is its share of an amount off the order at what they leave of it. A share a line
        # has no room for (a rule gave the line away) comes off the lines that have, in proportion
        # to what is left of them: the order gets the whole amount until nothing is left to pay.
        capped = {line_id: min(own[line_id], subtotals[line_id], key=lambda m: m.amount) for line_id in own}
        room = {line_id: subtotals[line_id] - capped[line_id] for line_id in own}
        fitted = {line_id: min(shares[line_id], room[line_id], key=lambda m: m.amount) for line_id in own}
        left = sum(shares.values(), zero) - sum(fitted.values(), zero)
        if left.amount > 0:
            rest = [room[line_id] - fitted[line_id] for line_id in own]
            more = spread(min(left, sum(rest, zero), key=lambda m: m.amount), rest, skus)
            for line_id, part in zip(own, more, strict=True):
                fitted[line_id] = fitted[line_id] + part
        # spread() gives no line more than its weight when the amount is at most their sum: what
        # is left of each line holds its part.
        return {line_id: capped[line_id] + fitted[line_id] for line_id in own}, free_shipping, granted

    def _tax(
        self, line: DraftLine, discount: Money, address: Address, draft: PricingDraft,
        taxed_at: Mapping[str, LineTaxRate | None] | None,
    ) -> tuple[Money, LineTaxRate | None]:  # fmt: skip
        if taxed_at is not None and line.product.sku in taxed_at:
            kept = taxed_at[line.product.sku]
            if kept is None:
                return Money.zero(draft.currency), None
            return (line.subtotal - discount).times(kept.rate), kept
        # call_hook re-validates the answer (its rate is a Decimal from 0 to 1); the name is checked
        # as the line keeps it, against the plugin that gave it.
        rate: TaxRate | None = call_hook(self._hook.oms_tax_rate, _named_rate, line=line, address=address, draft=draft)
        if rate is None:
            return Money.zero(draft.currency), None
        return (line.subtotal - discount).times(rate.rate), LineTaxRate(rate=rate.rate, name=rate.name)

    def _shipping(self, draft: PricingDraft, free_shipping: bool, shipped_for: Money | None) -> tuple[str, Money]:
        zero = Money.zero(draft.currency)
        if draft.fulfillment.type == "pickup":
            if draft.shipping_method not in (None, PICKUP_METHOD):
                raise InvalidRequest(
                    "pickup orders are not shipped",
                    details=[{"field": "shipping_method", "message": "leave it out for pickup orders"}],
                )
            return PICKUP_METHOD, zero
        quotes: list[ShippingQuote] = call_hook(
            self._hook.oms_shipping_quotes,
            _quote_in(draft.currency),
            draft=draft,
            address=draft.shipping_address,
        )
        by_method: dict[str, Money] = {}
        for quote in quotes:
            # Two plugins quoting the same method: the customer gets the cheaper one.
            if quote.method not in by_method or quote.amount < by_method[quote.method]:
                by_method[quote.method] = quote.amount
        if shipped_for is not None and draft.shipping_method is not None and draft.shipping_method not in by_method:
            return draft.shipping_method, zero if free_shipping else shipped_for
        if not by_method:
            # The plugins may quote by destination or by currency (the built-in ones have rates in a
            # few currencies only): the answer names both, so the merchant knows where to look.
            served = f"an order in {draft.currency} to {draft.shipping_address.country}"
            raise NoShippingMethod(
                f"no shipping method serves {served}",
                details=[
                    {"field": "currency", "message": f"no shipping plugin quotes {served}"},
                    {"field": "shipping_address", "message": f"no shipping plugin quotes {served}"},
                ],
            )
        method = draft.shipping_method
        if method is None:
            method = (
                DEFAULT_SHIPPING_METHOD
                if DEFAULT_SHIPPING_METHOD in by_method
                else min(by_method, key=lambda m: by_method[m].amount)
            )
        if method not in by_method:
            raise UnknownShippingMethod(
                f"shipping method {method} is not offered for this order",
                details=[{"field": "shipping_method", "message": f"choose one of: {', '.join(sorted(by_method))}"}],
            )
        return method, zero if free_shipping else by_method[method]


def _kept_terms(placed_with: Sequence[PromotionGrant], draft: PricingDraft) -> list[Discount]:
    """The discounts that the order's codes and the plugins' own rules (those not _lapsed) granted
    it when it was placed, as its lines now are: a line's discount comes with the units it was
    granted for (per unit, never for units added since), an order-level amount and free shipping
    stay as they were. Neither a promotion or rule ended nor one whose terms changed (another
    percentage, a minimum the order no longer reaches) changes what the units bought under it
    cost. Never exclusive: the order passed the stacking
    check when it was placed, and a change adds no code."""
    by_sku = {line.product.sku: line for line in draft.lines}
    kept: list[Discount] = []
    for grant in placed_with:
        amount = grant.amount
        line_id = None
        if grant.sku is not None and amount is not None:
            line = by_sku.get(grant.sku)
            granted_for = grant.quantity or 0
            if line is None or granted_for <= 0:
                amount = Money.zero(draft.currency)
            else:
                line_id = line.line_id
                # Multiplied before it is divided, as a refund's share is (core.refunds): a factor
                # such as 1/6 rounded first took 0.03 x 1/6 to 0.005000…01, 0.01, not 0.00.
                amount = Money.of(amount.amount * min(line.quantity, granted_for) / granted_for, amount.currency)
        kept.append(Discount(code=grant.code, amount=amount, line_id=line_id, free_shipping=grant.free_shipping))
    return kept


def _todays_terms(
    granted: list[Discount], placed_with: Sequence[PromotionGrant], draft: PricingDraft,
    sold_units: Mapping[str, int], lapsed: set[str],
) -> list[Discount]:  # fmt: skip
    """The plugins' discounts `granted`, but of a code the order was placed with (`placed_with`,
    whose terms _kept_terms keeps) only a line's share for the units beyond those it was granted
    for (a code that granted the sku nothing of its own, a fixed amount off the order say: beyond
    the order's `sold_units` of it, which its kept terms cover): an edit that adds units prices
    them at today's terms, as a new order would be, and a promotion whose kind changed since (a
    fixed amount now a percent) gives the units bought nothing more. So with a plugin's own rule
    (no promo code of the draft) that the order keeps no grant of, unless it is `lapsed`: it
    granted the units sold nothing (a rule begun since), or, on an order stored before grants were
    kept, what the lines the order keeps hold already. Never exclusive, as _kept_terms."""
    if not placed_with:
        return granted
    kept_codes = {grant.code for grant in placed_with}
    granted_for: dict[tuple[str, str], int] = {}
    for grant in placed_with:
        if grant.sku is not None:
            key = (grant.code, grant.sku)
            granted_for[key] = max(granted_for.get(key, 0), grant.quantity or 0)
    lines = {line.line_id: line for line in draft.lines}
    today: list[Discount] = []
    for discount in granted:
        code = discount.code.upper()
        if code not in kept_codes and (code in draft.promo_codes or code in lapsed):
            today.append(discount)
            continue
        line = lines.get(discount.line_id or "")
        if line is None or discount.amount is None:
            continue  # an order-level amount or free shipping: kept as it was
        sku = line.product.sku
        had = granted_for.get((code, sku))
        added = line.quantity - (sold_units.get(sku, 0) if had is None else had)
        if added > 0:
            share = Money.of(discount.amount.amount * added / line.quantity, discount.amount.currency)
            today.append(Discount(code=discount.code, amount=share, line_id=line.line_id))
    return today


def _grants(granted: list[Discount], draft: PricingDraft) -> list[PromotionGrant]:
    """What `granted` gives the draft, by sku: its promo codes and the plugins' own rules (the order
    keeps it: PromotionGrant)."""
    lines = {line.line_id: line for line in draft.lines}
    grants = []
    for discount in granted:
        code = discount.code.upper()
        line = lines.get(discount.line_id or "")
        sku, quantity = (line.product.sku, line.quantity) if line else (None, None)
        grants.append(PromotionGrant(code=code, sku=sku, quantity=quantity, amount=discount.amount,
                                     free_shipping=discount.free_shipping))  # fmt: skip
    return grants


def _as_sold(
    draft: PricingDraft, placed_with: Sequence[PromotionGrant], sold_units: Mapping[str, int] | None,
    products: Mapping[str, Product], sold_at: Mapping[str, Money] | None,
) -> PricingDraft | None:  # fmt: skip
    """The order priced again as it was sold (`sold_units` of each sku, at the unit price it has in
    `draft`, else at the one it was sold at), for _lapsed to ask the plugins about; None when the
    order keeps no grants (`placed_with`: a new order, or one stored before grants were kept that
    no code discounted) or its units are as they were. A sku whose product or price is gone is
    left out. None too when an amount of it reaches 10^15 (AmountTooLarge: a line, or the subtotal
    a plugin may read) at today's prices: the edited order, below it, is not refused for an order
    nobody buys, nor failed as a plugin's error; unasked, its rules keep the terms its units were
    sold with (_kept_terms), as when its units are as they were."""
    if not sold_units or not placed_with:
        return None
    units = {sku: quantity for sku, quantity in sold_units.items() if quantity > 0}
    now = {line.product.sku: line for line in draft.lines}
    if units == {sku: line.quantity for sku, line in now.items()}:
        return None
    lines = []
    summed = Money.zero(draft.currency)
    for number, (sku, quantity) in enumerate(units.items(), start=1):
        line = now.get(sku)
        product = line.product if line else products.get(sku)
        unit = line.unit_price if line else (sold_at or {}).get(sku)
        if product is None or unit is None:
            continue
        line_id = line.line_id if line else f"S{number}"
        try:
            subtotal = unit.times(quantity)
            summed = summed + subtotal  # what the draft's subtotal, read by a plugin, would reach
        except AmountTooLarge:
            return None
        lines.append(DraftLine(line_id=line_id, product=product, quantity=quantity, unit_price=unit,
                               subtotal=subtotal))  # fmt: skip
    return draft.model_copy(update={"lines": lines})


def _lapsed(granted: list[Discount], draft: PricingDraft, was: list[Discount], as_sold: PricingDraft) -> set[str]:
    """The order's promo codes and the plugins' own rules that the plugins apply to the order as it
    now is (`granted` for `draft`) otherwise than to the order as it was sold (`was` for `as_sold`):
    another amount per unit of a line the two share (within what rounding each line's amount
    explains), another amount off the order, free shipping or not. Such a code's or rule's terms
    depend on the units that changed (a minimum subtotal the order edited no longer reaches, or now
    reaches; a volume rule the units left no longer qualify for, another tier): the order gets what
    it gives it today, as capture would give the order as it now is (otherwise a code's minimum met
    with units edited away later would keep its discount). One applied alike, or no longer at all
    (ended), keeps what it granted the units sold (_kept_terms)."""
    now, before = _rule_terms(granted, draft), _rule_terms(was, as_sold)
    units = {line.product.sku: line.quantity for line in draft.lines}
    sold = {line.product.sku: line.quantity for line in as_sold.lines}
    half = quantum(draft.currency) / 2
    lapsed = set()
    for rule in now.keys() | before.keys():
        lines_now, off_now, free_now = now.get(rule, ({}, Decimal(0), False))
        lines_before, off_before, free_before = before.get(rule, ({}, Decimal(0), False))
        if off_now != off_before or free_now != free_before:
            lapsed.add(rule)
            continue
        for sku in units.keys() & sold.keys():
            # Per unit: now / units against before / sold, each rounded by up to half a quantum.
            a, b = lines_now.get(sku, Decimal(0)), lines_before.get(sku, Decimal(0))
            if abs(a * sold[sku] - b * units[sku]) > half * (sold[sku] + units[sku]):
                lapsed.add(rule)
                break
    return lapsed


def _granting_nothing_now(
    granted: list[Discount], placed_with: Sequence[PromotionGrant], draft: PricingDraft
) -> set[str]:  # fmt: skip
    """The order's promo codes the plugins answer for the order as it now is (`granted` for `draft`)
    with nothing (no amount, no free shipping: a condition, a minimum say, it does not meet today)
    though they granted it something when it was sold (`placed_with`): nothing, as capture gives
    it, even when the order as it was sold would not meet today's terms either (a minimum raised
    since). A code no plugin answers for (its promotion ended) is not among them."""
    answered: set[str] = set()
    giving: set[str] = set()
    for discount in granted:
        code = discount.code.upper()
        if code in draft.promo_codes:
            answered.add(code)
            if discount.free_shipping or (discount.amount is not None and discount.amount.amount > 0):
                giving.add(code)
    gave = {grant.code for grant in placed_with
            if grant.free_shipping or (grant.amount is not None and grant.amount.amount > 0)}  # fmt: skip
    return (answered - giving) & gave


def _rule_terms(granted: list[Discount], draft: PricingDraft) -> dict[str, tuple[dict[str, Decimal], Decimal, bool]]:
    """What each promo code and each of the plugins' own rules in `granted` gives `draft`: by sku,
    off the order, free shipping."""
    skus = {line.line_id: line.product.sku for line in draft.lines}
    terms: dict[str, tuple[dict[str, Decimal], Decimal, bool]] = {}
    for discount in granted:
        rule = discount.code.upper()
        by_sku, off, free = terms.get(rule, ({}, Decimal(0), False))
        amount = discount.amount.amount if discount.amount is not None else Decimal(0)
        if discount.line_id is not None:
            sku = skus[discount.line_id]
            by_sku[sku] = by_sku.get(sku, Decimal(0)) + amount
        else:
            off += amount
        terms[rule] = (by_sku, off, free or discount.free_shipping)
    return terms


def _merged(grants: list[PromotionGrant]) -> list[PromotionGrant]:
    """`grants` of an order priced again (the terms its units were sold with, and today's for units
    an edit adds, each its own grant) as one grant per code and sku: what each code or rule gives
    the sku's units, all of them bought under it once the edit is stored."""
    merged: dict[tuple[str, str | None], PromotionGrant] = {}
    for grant in grants:
        key = (grant.code, grant.sku)
        had = merged.get(key)
        if had is not None:
            amounts = [amount for amount in (had.amount, grant.amount) if amount is not None]
            grant = PromotionGrant(
                code=grant.code, sku=grant.sku, quantity=grant.quantity,
                amount=sum(amounts[1:], amounts[0]) if amounts else None,
                free_shipping=had.free_shipping or grant.free_shipping,
            )  # fmt: skip
        merged[key] = grant
    return list(merged.values())
