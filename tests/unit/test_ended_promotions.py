"""An order placed under a promotion keeps its terms when the promotion ends: a cancel of units or
an edit prices it with what its codes granted it at capture, while a new order is refused the code."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from core.errors import InvalidRequest
from core.models import LineInput, Order, OrderEdit, PromotionGrant
from core.money import Money
from core.status import OrderStatus
from plugins.promotions import PROMOTIONS_FILE_ENV
from tests.builders import place_order
from tests.unit.world import World

S = OrderStatus
STOCK = [("MUG", "wh-west", 10), ("CAP", "wh-west", 8)]
CODES = ["WELCOME10", "SAVE5", "FREESHIP"]  # percent off, fixed off, free shipping (the packaged file)


@pytest.fixture
def end_promotions(tmp_path, monkeypatch):
    """Point the promotions plugin at a file without the order's codes: the operator ended them."""

    def end() -> None:
        path = tmp_path / "promotions.json"
        path.write_text(json.dumps({"promotions": [{"code": "LATER", "kind": "percent", "percent": "50"}]}))
        monkeypatch.setenv(PROMOTIONS_FILE_ENV, str(path))

    return end


def priced_today(world: World, *lines: tuple[str, int]):
    """What capture prices an order of `lines` under the order's codes (the promotions still on)."""
    return world.capture.quote(
        place_order(lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines], promo_codes=CODES,
                    payment={"method": "test", "token": "tok_approve"})
    )  # fmt: skip


def discounted(world: World) -> Order:
    order = world.allocated(("MUG", 4), ("CAP", 2), promo_codes=CODES)
    assert order.totals.discount.amount > 0 and order.totals.shipping == Money.zero("USD")
    return order


def test_a_cancel_of_units_after_the_promotion_ended_keeps_the_orders_discounts(world, end_promotions):
    order = discounted(world)
    expected = priced_today(world, ("MUG", 2), ("CAP", 2))
    end_promotions()

    done = world.actions.cancel(order.id, "two are enough", actor="key_web", lines={"L1": 2})

    assert [line.quantity for line in done.lines] == [2, 2]
    assert done.totals == expected.totals
    assert [line.discount for line in done.lines] == [line.discount for line in expected.lines]
    assert done.promo_codes == CODES


def test_an_edit_after_the_promotion_ended_keeps_the_orders_discounts(world, end_promotions):
    order = discounted(world)
    end_promotions()

    edit = OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert done.totals == order.totals
    assert [line.discount for line in done.lines] == [line.discount for line in order.lines]


def test_units_an_edit_adds_after_the_promotion_ended_are_not_discounted_by_it(world, end_promotions):
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    assert order.lines[0].discount == Money.of("5.00", "USD")  # 10% of 4 x 12.50
    end_promotions()

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert done.lines[0].discount == Money.of("5.00", "USD")  # the four bought under it, not the two added


def test_a_new_order_with_an_ended_code_is_refused(world, end_promotions):
    discounted(world)
    end_promotions()

    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1), promo_codes=["WELCOME10"])

    assert refused.value.code == "unknown_promo_code"


def test_an_order_keeps_what_its_codes_granted_it_where_it_is_stored(world):
    order = discounted(world)

    assert {grant.code for grant in order.promotion_grants} == set(CODES)
    assert Order.model_validate_json(order.stored_json()).promotion_grants == order.promotion_grants
    assert "promotion_grants" not in order.model_dump_json()  # never shown


def test_an_order_stored_before_grants_were_kept_that_paid_shipping_is_not_given_free_shipping_by_an_edit(world):
    """Its lines show WELCOME10's discounts and its totals the shipping it paid: nothing says the
    code shipped it free, so an edit of its address charges the shipping a new order there pays."""
    placed = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    assert placed.totals.shipping.amount > 0
    old = placed.model_copy(update={"promotion_grants": []})  # as stored before grants were kept
    world.orders.put(old, payment_token="tok_approve")
    moved = {**placed.shipping_address.model_dump(), "line2": "Apt 4"}

    done = world.actions.edit(old.id, old.version, OrderEdit.model_validate({"shipping_address": moved}),
                              actor="key_web")  # fmt: skip

    assert done.totals.shipping == placed.totals.shipping
    assert done.totals.discount == placed.totals.discount


def test_an_order_stored_before_grants_were_kept_keeps_what_its_one_codes_lines_show(world, end_promotions):
    placed = world.allocated(("MUG", 4), ("CAP", 2), promo_codes=["WELCOME10"])
    old = placed.model_copy(update={"promotion_grants": []})  # as stored before grants were kept
    world.orders.put(old)
    end_promotions()

    done = world.actions.cancel(old.id, "two are enough", actor="key_web", lines={"L1": 2})

    mug, cap = done.lines
    assert mug.discount == Money.of("2.50", "USD")  # 10% of 2 x 12.50, per unit of the 5.00 it had
    assert cap.discount == placed.lines[1].discount
    assert done.totals.shipping == placed.totals.shipping


@pytest.fixture
def change_promotions(tmp_path, monkeypatch):
    """Point the promotions plugin at a file where the codes are still on, on new terms."""

    def change(*promotions: dict) -> None:
        path = tmp_path / "changed.json"
        path.write_text(json.dumps({"promotions": list(promotions)}))
        monkeypatch.setenv(PROMOTIONS_FILE_ENV, str(path))

    return change


WELCOME30 = {"code": "WELCOME10", "kind": "percent", "percent": "30"}


def test_a_cancel_of_units_after_the_promotions_terms_changed_keeps_the_terms_it_was_sold_with(
    world, change_promotions
):
    order = world.allocated(("MUG", 4), ("CAP", 2), promo_codes=["WELCOME10"])
    change_promotions(WELCOME30)

    done = world.actions.cancel(order.id, "two are enough", actor="key_web", lines={"L1": 2})

    mug, cap = done.lines
    assert mug.discount == Money.of("2.50", "USD")  # 10% of 2 x 12.50, as sold; not 30%
    assert cap.discount == order.lines[1].discount


def test_an_edit_after_the_promotions_terms_changed_keeps_the_terms_of_the_units_it_had(world, change_promotions):
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    change_promotions(WELCOME30)

    edit = OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})
    same = world.actions.edit(order.id, order.version, edit, actor="key_web")
    assert same.totals == order.totals  # nothing it sold costs more or less

    grown = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}]})
    done = world.actions.edit(order.id, same.version, grown, actor="key_web")
    # The four sold under 10%, the two the edit adds at today's 30% (of 12.50 each: 7.50).
    assert done.lines[0].discount == Money.of("12.50", "USD")


def test_a_promotion_that_no_longer_qualifies_an_order_gives_the_units_left_what_capture_would(world):
    """SHIPFREE50 grants free shipping from a 50.00 subtotal: a cancel that takes the order below it
    is priced as capture prices the order left (API.md: totals recomputed as for an edit, exactly as
    at capture), so it pays today's shipping."""
    order = world.allocated(("MUG", 4), promo_codes=["SHIPFREE50"])
    assert order.totals.shipping == Money.zero("USD")

    done = world.actions.cancel(order.id, "one is enough", actor="key_web", lines={"L1": 3})

    as_new = world.capture.quote(place_order(lines=[{"sku": "MUG", "quantity": 1}], promo_codes=["SHIPFREE50"],
                                             payment={"method": "test", "token": "tok_approve"}))  # fmt: skip
    assert done.totals.shipping.amount > 0
    assert done.totals == as_new.totals


def test_an_old_order_placed_with_several_codes_keeps_its_discounts_after_their_promotions_ended(world, end_promotions):
    placed = world.allocated(("MUG", 4), ("CAP", 2), promo_codes=CODES)
    old = placed.model_copy(update={"promotion_grants": []})  # as stored before grants were kept
    world.orders.put(old)
    end_promotions()

    done = world.actions.cancel(old.id, "two are enough", actor="key_web", lines={"L1": 2})
    mug, cap = done.lines
    assert mug.discount == placed.lines[0].discount.times(Decimal(1) / Decimal(2))
    assert cap.discount == placed.lines[1].discount
    assert done.totals.shipping == placed.totals.shipping

    edit = OrderEdit.model_validate({"shipping_address": {**old.shipping_address.model_dump(), "line2": "Apt 4"}})
    edited = world.actions.edit(old.id, done.version, edit, actor="key_web")
    assert edited.totals == done.totals


SAVE5_AS_PERCENT = {"code": "SAVE5", "kind": "percent", "percent": "10"}


def test_an_edit_after_a_fixed_promotion_became_a_percent_keeps_the_terms_of_the_units_it_had(world, change_promotions):
    """SAVE5 took 5.00 off the order when it was placed; the operator then made it 10% off: the
    mugs bought keep the 5.00 (and get no 10% on top), only units an edit adds get today's 10%."""
    order = world.allocated(("MUG", 4), ("CAP", 2), promo_codes=["SAVE5"])
    assert order.totals.discount == Money.of("5.00", "USD")
    change_promotions(SAVE5_AS_PERCENT)

    same = world.actions.edit(order.id, order.version, OrderEdit.model_validate({"shipping_method": "standard"}),
                              actor="key_web")  # fmt: skip
    assert same.totals == order.totals

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(order.id, same.version, edit, actor="key_web")
    # The 5.00 as it was, spread over the units sold, and 10% of the two mugs added (2.50).
    assert done.totals.discount == Money.of("7.50", "USD")


def test_units_an_edit_added_under_a_promotion_keep_its_terms_after_it_ends(world, end_promotions):
    """Two mugs added while WELCOME10 was on got its 10%: an address edit after the promotion
    ended does not take it off them (they were bought under it, as the first four were)."""
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    more = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 6}]})
    grown = world.actions.edit(order.id, order.version, more, actor="key_web")
    assert grown.lines[0].discount == Money.of("7.50", "USD")
    end_promotions()

    edit = OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})
    done = world.actions.edit(order.id, grown.version, edit, actor="key_web")

    assert done.lines[0].discount == Money.of("7.50", "USD")
    assert done.totals == grown.totals


def test_units_a_cancel_took_and_an_edit_adds_back_get_todays_terms(world, change_promotions):
    """Two of four mugs cancelled, then added back by an edit once WELCOME10 is 30%: the two the
    order kept are as sold (10%), the two added back are bought today, at 30% (7.50)."""
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    fewer = world.actions.cancel(order.id, "two are enough", actor="key_web", lines={"L1": 2})
    assert fewer.lines[0].discount == Money.of("2.50", "USD")
    change_promotions(WELCOME30)

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    done = world.actions.edit(order.id, fewer.version, edit, actor="key_web")

    assert done.lines[0].discount == Money.of("10.00", "USD")


def test_units_a_cancel_took_are_not_discounted_when_added_back_after_the_promotion_ended(world, end_promotions):
    order = world.allocated(("MUG", 4), promo_codes=["WELCOME10"])
    fewer = world.actions.cancel(order.id, "two are enough", actor="key_web", lines={"L1": 2})
    end_promotions()

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    done = world.actions.edit(order.id, fewer.version, edit, actor="key_web")

    assert done.lines[0].discount == Money.of("2.50", "USD")  # the two kept, as sold; not the two added back


def test_an_order_kept_a_rules_grant_under_a_code_of_over_100_characters_is_still_cancelled_and_edited(world):
    # Before a plugin's code was limited to 100 characters, a rule's grant kept any code: the order
    # keeps its terms (_kept_terms), which must not refuse what the limit refuses only in an answer.
    order = world.allocated(("MUG", 4), ("CAP", 2))
    rule = PromotionGrant(code="LOYALTY-" + "X" * 120, sku="MUG", quantity=4, amount=Money.zero("USD"))
    old = order.model_copy(update={"promotion_grants": [*order.promotion_grants, rule]})
    world.orders.put(old)

    cancelled = world.actions.cancel(old.id, "two are enough", actor="key_web", lines={"L1": 2})
    edit = OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})
    edited = world.actions.edit(old.id, cancelled.version, edit, actor="key_web")

    assert [line.quantity for line in cancelled.lines] == [2, 2]
    assert edited.totals == cancelled.totals
    assert rule.code in {grant.code for grant in edited.promotion_grants}


BIGBASKET20_FROM_50 = {"code": "BIGBASKET20", "kind": "percent", "percent": "20", "min_subtotal": {"USD": "50.00"}}


def test_an_address_edit_after_a_codes_minimum_was_lowered_keeps_the_codes_terms_and_is_not_refused(
    world, change_promotions
):
    """Sold at 62.50 with WELCOME10's 10% and BIGBASKET20, below its 100.00 minimum: nothing. Its
    minimum is now 50.00, so today both percent-off codes would apply, which a new order is refused
    for. An edit of the address changes no units: the codes keep what they granted, and the edit
    is not refused for a stacking the order was never given."""
    order = world.allocated(("MUG", 5), promo_codes=["WELCOME10", "BIGBASKET20"])
    change_promotions({"code": "WELCOME10", "kind": "percent", "percent": "10"}, BIGBASKET20_FROM_50)
    moved = {**order.shipping_address.model_dump(), "line2": "Apt 4"}

    done = world.actions.edit(order.id, order.version, OrderEdit.model_validate({"shipping_address": moved}),
                              actor="key_web")  # fmt: skip

    assert done.totals.discount == order.totals.discount == Money.of("6.25", "USD")
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 5), promo_codes=["WELCOME10", "BIGBASKET20"])
    assert refused.value.code == "promo_codes_do_not_stack"


SHIPFREE_FROM_100 = {"code": "SHIPFREE50", "kind": "free_shipping", "min_subtotal": {"USD": "100.00"}}


def test_an_edit_below_a_free_shipping_minimum_raised_since_pays_the_shipping_as_capture_would(
    world, change_promotions
):
    """Sold at 62.50 shipped free (minimum 50.00); the minimum is now 100.00. Edited down to 50.00
    the order is charged shipping as a new order would be: the code ships neither the order as sold
    nor as it is now for free, and the units left do not keep the free shipping it gave them."""
    order = world.allocated(("MUG", 5), promo_codes=["SHIPFREE50"])
    assert order.totals.shipping == Money.zero("USD")
    change_promotions(SHIPFREE_FROM_100)

    done = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=4)]), "key_web")

    as_new = world.allocated(("MUG", 4), promo_codes=["SHIPFREE50"])
    assert done.totals.shipping == as_new.totals.shipping != Money.zero("USD")
    assert done.totals == as_new.totals


BIGBASKET20_FROM_200 = {"code": "BIGBASKET20", "kind": "percent", "percent": "20", "min_subtotal": {"USD": "200.00"}}


def test_an_edit_below_a_minimum_raised_since_drops_the_codes_discount_as_capture_would(world, change_promotions):
    """Sold at 125.00 with 20% off (minimum 100.00); the minimum is now 200.00. Edited down to
    112.50 the order is priced as capture prices it: the code grants nothing, neither to the order
    as it was sold nor as it is now, and the units left do not keep what it gave them."""
    order = world.allocated(("MUG", 10), promo_codes=["BIGBASKET20"])
    assert order.totals.discount == Money.of("25.00", "USD")
    change_promotions(BIGBASKET20_FROM_200)

    done = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=9)]), "key_web")

    assert done.totals.discount == Money.zero("USD")
