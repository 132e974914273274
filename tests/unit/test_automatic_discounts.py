"""A pricing plugin's own rules (discounts no promo code asks for): an order keeps what they granted
it when it was placed, as it keeps what its codes granted, while the plugin's terms lapse the rule
for units that no longer qualify."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import hookimpl
from core.models import OrderEdit, PromotionGrant
from core.money import Money
from core.pricing_types import Discount, PricingDraft
from tests.builders import product
from tests.unit.world import World, build_world

STOCK = [("MUG", "wh-west", 20), ("CAP", "wh-west", 20)]


class BulkRule:
    """`percent` off each line of at least `minimum` units, no code needed; `active` False: ended."""

    active = True
    percent = "10"
    minimum = 3

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        if not self.active:
            return []
        factor = Decimal(self.percent) / 100
        return [Discount(code="bulk", amount=line.subtotal.times(factor), line_id=line.line_id)
                for line in draft.lines if line.quantity >= self.minimum]  # fmt: skip


@pytest.fixture
def rule() -> BulkRule:
    return BulkRule()


@pytest.fixture
def world(rule) -> World:
    return build_world(STOCK, rule)


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


def test_a_new_order_is_discounted_by_the_rule_as_before(world):
    order = world.allocated(("MUG", 4), ("CAP", 2))

    assert [line.discount for line in order.lines] == [usd("5.00"), usd("0.00")]  # 10% of 4 x 12.50
    # What the rule granted is kept with the order, as a promo code's grant is.
    assert order.promotion_grants == [PromotionGrant(code="BULK", sku="MUG", quantity=4, amount=usd("5.00"))]


def test_a_cancel_of_units_after_the_rule_ended_keeps_what_it_granted_the_units_left(world, rule):
    order = world.allocated(("MUG", 4), ("CAP", 2))
    rule.active = False

    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].discount == usd("3.75")  # the three mugs left keep their 10%
    assert done.totals.grand_total < order.totals.grand_total


def test_a_cancel_of_units_after_the_rules_terms_changed_keeps_the_terms_they_were_sold_with(world, rule):
    order = world.allocated(("MUG", 4), ("CAP", 2))
    rule.percent = "20"

    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].discount == usd("3.75")  # 10% as sold, not today's 20%


def test_units_left_that_no_longer_qualify_lose_the_rule_as_its_terms_say(world, rule):
    """The rule takes 10% off a line of three or more: a cancel that leaves two mugs leaves a line
    the plugin no longer discounts, as a new order of two mugs is not."""
    order = world.allocated(("MUG", 4), ("CAP", 2))

    done = world.actions.cancel(order.id, "two less", actor="key_web", lines={"L1": 2})

    assert done.lines[0].discount == usd("0.00")


def test_an_edit_after_the_rule_ended_keeps_its_discount_and_gives_units_added_none(world, rule):
    order = world.allocated(("MUG", 4), ("CAP", 2))
    rule.active = False

    same = world.actions.edit(order.id, order.version, OrderEdit(shipping_method="standard"), actor="key_web")
    assert same.totals == order.totals

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(order.id, same.version, edit, actor="key_web")
    assert done.lines[0].discount == usd("5.00")  # the four sold under it; nothing for the two added


class BasketRule:
    """10% off every line of an order of at least six units in all, no code needed."""

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        if sum(line.quantity for line in draft.lines) < 6:
            return []
        return [Discount(code="basket", amount=line.subtotal.times(Decimal("0.1")), line_id=line.line_id)
                for line in draft.lines]  # fmt: skip


def test_a_cancel_of_a_whole_line_lapses_a_rule_the_order_left_no_longer_qualifies_for():
    """Four mugs and two caps make the six units the rule asks for; cancelling the caps leaves four
    mugs, which the rule does not discount: the order is priced as its terms say."""
    world = build_world(STOCK, BasketRule())
    order = world.allocated(("MUG", 4), ("CAP", 2))
    assert order.lines[0].discount == usd("5.00")

    done = world.actions.cancel(order.id, "no caps", actor="key_web", lines={"L2": 2})

    assert done.lines[0].discount == usd("0.00")


def test_units_an_edit_added_under_a_rule_keep_it_after_the_rule_ended(world, rule):
    order = world.allocated(("MUG", 4))
    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}]})
    grown = world.actions.edit(order.id, order.version, edit, actor="key_web")
    assert grown.lines[0].discount == usd("7.50")
    world.run(order.id)  # sourced again
    rule.active = False

    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={grown.lines[0].line_id: 1})

    assert done.lines[0].discount == usd("6.25")  # the five mugs left, each sold at 10% off


def test_a_cancel_of_an_order_stored_before_grants_were_kept_does_not_give_the_rule_twice(world):
    """Placed with WELCOME10 and discounted by the rule too (10% + 10% of 4 x 12.50), stored before
    orders kept what they were granted: its lines' discounts hold both, so the mugs left keep 20%,
    and the rule, still on, takes nothing more off them."""
    placed = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    assert placed.lines[0].discount == usd("10.00")
    old = placed.model_copy(update={"promotion_grants": []})
    world.orders.put(old)

    done = world.actions.cancel(old.id, "one less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].discount == usd("7.50")


def test_a_rule_that_began_after_the_order_was_placed_gives_the_units_sold_nothing(world, rule):
    rule.active = False
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    rule.active = True

    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].discount == usd("3.75")  # WELCOME10's 10% of the three left, as sold


class SubtotalRule:
    """5% off an order whose subtotal (the draft's, summed over its lines) is at least 20.00."""

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        if draft.subtotal.amount < 20:
            return []
        return [Discount(code="basket", amount=draft.subtotal.times(Decimal("0.05")))]


def test_an_edit_whose_order_as_sold_reaches_10_to_the_15_at_todays_price_keeps_the_rules_terms(world):
    """Four mugs sold at 2.4 x 10^14 under the rule (9.6 x 10^13 off), and a cap; the cap now costs
    10^14. One mug (at the price it was sold at) and two caps at today's are an order the OMS
    records; the four mugs and the cap sold, asked of the rule with the cap at today's price, are not
    (1.06 x 10^15): the edit was refused 422 `amount_too_large` for an amount it never charges. The
    mug left keeps what the rule granted it when it was sold."""
    world.catalog.put_product(product("MUG", "240000000000000.00", weight_grams=350))
    order = world.allocated(("MUG", 4), ("CAP", 1))
    world.catalog.put_product(product("CAP", "100000000000000.00", weight_grams=90))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert [(line.quantity, line.unit_price) for line in done.lines] == [
        (1, usd("240000000000000.00")), (2, usd("100000000000000.00"))]  # fmt: skip
    assert done.lines[0].discount == usd("24000000000000.00")  # a quarter of what the four were granted


def test_an_edit_whose_order_as_sold_adds_up_to_10_to_the_15_is_no_plugins_failure():
    """Each line of the order as sold is below 10^15 at today's prices, their sum is not: a rule
    that reads the draft's subtotal raised AmountTooLarge, and the edit failed as the plugin's
    error (500 `plugin_error`) though the edited order is one the OMS records."""
    world = build_world(STOCK, SubtotalRule())
    world.catalog.put_product(product("MUG", "300000000000000.00", weight_grams=350))
    order = world.allocated(("MUG", 2), ("CAP", 2))
    assert order.totals.discount == usd("30000000000000.78")  # 5% of 600000000000015.54
    world.catalog.put_product(product("CAP", "300000000000000.00", weight_grams=90))

    edit = OrderEdit.model_validate({"lines": [{"sku": "CAP", "quantity": 3}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert [line.quantity for line in done.lines] == [3]
    assert done.totals.subtotal == usd("900000000000000.00")


def test_an_edit_that_brings_a_line_up_to_the_rules_minimum_gets_the_rule_on_all_its_units(world):
    # Sold 2 MUG under SAVE5 (kept): the rule's 3-unit minimum not reached, it granted nothing. Edited
    # to 4 the rule applies to the order as it now is (lapsed: it answers otherwise than for the order
    # as sold), so all 4 units get its 10%, as a new order of them would, not only the 2 added.
    order = world.allocated(("MUG", 2), promo_codes=["SAVE5"])
    assert order.totals.discount == usd("5.00")

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    as_new = world.allocated(("MUG", 4), promo_codes=["SAVE5"])
    assert done.totals == as_new.totals and done.totals.discount == usd("10.00")  # 5.00 of the rule + SAVE5


class LoyaltyRule:
    """No code needed: free shipping for orders whose subtotal is at least 50.00, and 1.00 off every
    order; answered in that order, or the other way round (`free_first` False)."""

    def __init__(self, free_first: bool = True):
        self.free_first = free_first

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        subtotal = sum((line.subtotal.amount for line in draft.lines), Decimal(0))
        ships_free = [Discount(code="loyalty", free_shipping=True)] if subtotal >= 50 else []
        off = [Discount(code="loyalty", amount=Money.of("1.00", draft.currency))]
        return ships_free + off if self.free_first else off + ships_free


def test_an_edit_below_a_free_shipping_rules_minimum_pays_the_shipping_as_a_new_order_would():
    world = build_world(STOCK, LoyaltyRule())
    order = world.allocated(("MUG", 4))  # 50.00: shipped free
    assert order.totals.shipping == usd("0.00")

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    as_new = world.allocated(("MUG", 3))
    assert done.totals == as_new.totals and done.totals.shipping != usd("0.00")
    assert done.totals.discount == usd("1.00")


@pytest.mark.parametrize("free_first", [True, False])
def test_a_rule_granting_free_shipping_and_an_amount_keeps_both_over_edits_that_keep_its_terms(free_first):
    # Each edit keeps what the rule granted (its terms unchanged), merged into one grant: the free
    # shipping survives the merge whichever of the rule's discounts came first, so a second edit
    # still ships free.
    world = build_world(STOCK, LoyaltyRule(free_first))
    order = world.allocated(("MUG", 4))
    assert (order.totals.shipping, order.totals.discount) == (usd("0.00"), usd("1.00"))

    for line2 in ("Apt 4", "Apt 5"):
        moved = {**order.shipping_address.model_dump(), "line2": line2}
        order = world.actions.edit(order.id, order.version, OrderEdit.model_validate({"shipping_address": moved}),
                                   actor="key_web")  # fmt: skip

    assert (order.totals.shipping, order.totals.discount) == (usd("0.00"), usd("1.00"))


class TwiceFreeShipping:
    """No code needed: free shipping, answered twice under one name (two reasons for it)."""

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        return [Discount(code="members", free_shipping=True), Discount(code="members", free_shipping=True)]


def test_an_edit_keeps_free_shipping_a_rule_granted_twice_without_an_amount():
    world = build_world(STOCK, TwiceFreeShipping())
    order = world.allocated(("MUG", 2))
    moved = {**order.shipping_address.model_dump(), "line2": "Apt 4"}

    done = world.actions.edit(order.id, order.version, OrderEdit.model_validate({"shipping_address": moved}),
                              actor="key_web")  # fmt: skip

    assert done.totals.shipping == usd("0.00")
    assert done.promotion_grants == [PromotionGrant(code="MEMBERS", free_shipping=True)]


def test_an_edit_gets_what_an_order_level_rule_gives_the_order_as_it_now_is():
    # 5% off the subtotal: sold at 2 MUG and 2 CAP, edited to 4 MUG, the amount off the order follows
    # the new subtotal, as for a new order of 4 MUG, rather than staying what the order as sold got.
    world = build_world(STOCK, SubtotalRule())
    order = world.allocated(("MUG", 2), ("CAP", 2))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    as_new = world.allocated(("MUG", 4))
    assert done.totals == as_new.totals and done.totals.discount == usd("2.50")  # 5% of 50.00


def test_an_edit_that_drops_a_line_gets_what_an_order_level_rule_gives_the_lines_left():
    # 5% off the subtotal: sold at 2 MUG and 2 CAP, edited down to the 2 MUG, the amount off the order
    # is 5% of what is left, as for a new order of them, not what the bigger basket got.
    world = build_world(STOCK, SubtotalRule())
    order = world.allocated(("MUG", 2), ("CAP", 2))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    as_new = world.allocated(("MUG", 2))
    assert done.totals == as_new.totals and done.totals.discount == usd("1.25")  # 5% of 25.00
