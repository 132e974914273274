"""An edit of an order after the shop's configuration changed: what the edit does not change keeps
what the order was sold with (a unit price no plugin gives any more, a shipping method no longer
quoted, a store no longer taking pickup orders), while new orders get the usual 422."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from core import hookimpl
from core.errors import InvalidRequest
from core.models import Order, OrderEdit
from core.money import Money
from core.pricing_types import PricingDraft, ShippingQuote
from core.status import OrderStatus
from plugins.tax_table import TAX_RATES_FILE_ENV
from tests.builders import product
from tests.unit.test_returns import RetiredWallet, with_one_coordinate
from tests.unit.test_unit_cancellation import CourierShipping, RetiringShipping, VolumePrice
from tests.unit.world import World, build_world

S = OrderStatus
STOCK = [("MUG", "wh-west", 10), ("CAP", "wh-west", 8)]


def new_address(order) -> OrderEdit:
    return OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})


def test_an_address_edit_after_no_plugin_prices_a_sold_sku_keeps_the_price_it_was_sold_at(world):
    order = world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", "11.00", currency="EUR", weight_grams=350))

    done = world.actions.edit(order.id, order.version, new_address(order), actor="key_web")

    assert done.shipping_address.line2 == "Apt 4"
    assert [line.unit_price for line in done.lines] == [line.unit_price for line in order.lines]
    assert done.totals == order.totals
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1))
    assert refused.value.code == "no_price"


def test_an_edit_of_other_lines_keeps_a_sold_skus_price_no_plugin_gives_any_more(world):
    order = world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", "11.00", currency="EUR", weight_grams=350))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}, {"sku": "CAP", "quantity": 1}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert [(line.quantity, line.unit_price) for line in done.lines] == [
        (3, order.lines[0].unit_price),
        (1, order.lines[1].unit_price),
    ]


def test_an_edit_adding_units_of_a_sku_no_plugin_prices_any_more_is_refused(world):
    order = world.allocated(("MUG", 3))
    world.catalog.put_product(product("MUG", "11.00", currency="EUR", weight_grams=350))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    with pytest.raises(InvalidRequest) as refused:
        world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert refused.value.code == "no_price"


def test_a_lines_edit_after_the_orders_shipping_method_is_no_longer_offered_keeps_its_charge():
    shipping = RetiringShipping()
    world = build_world(STOCK, shipping)
    order = world.allocated(("MUG", 2), ("CAP", 3), shipping_method="per_unit")
    shipping.offered = False

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert (done.lines[1].quantity, done.shipping_method) == (2, "per_unit")
    assert done.totals.shipping == order.totals.shipping  # what it was charged: its parcels go as booked
    sourced = world.run(order.id)
    assert sourced.status is S.ALLOCATED and sum(len(s.lines) for s in sourced.shipments) == 2
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1), shipping_method="per_unit")
    assert refused.value.code == "unknown_shipping_method"


def test_a_lines_edit_of_a_pickup_order_after_its_store_stopped_taking_pickups(world):
    world.inventory.set_on_hand("MUG", "store-sf", 5, reason="count")
    order = world.allocated(("MUG", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
    store = world.catalog.get_location("store-sf")
    world.catalog.put_location(store.model_copy(update={"pickup": False}))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert done.lines[0].quantity == 2
    assert done.totals.grand_total < order.totals.grand_total
    assert done.totals.shipping == Money.zero("USD")
    sourced = world.run(order.id)  # sourced again at its store, where its units are
    assert sourced.status is S.ALLOCATED
    assert [(s.location_id, s.lines[0].quantity) for s in sourced.shipments] == [("store-sf", 2)]
    with pytest.raises(InvalidRequest):
        world.place(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})


def test_a_pickup_order_placed_before_its_store_stopped_taking_pickups_is_allocated_there(world):
    world.inventory.set_on_hand("MUG", "store-sf", 5, reason="count")
    order_id = world.place(("MUG", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
    store = world.catalog.get_location("store-sf")
    world.catalog.put_location(store.model_copy(update={"pickup": False}))

    sourced = world.run(order_id)

    assert sourced.status is S.ALLOCATED
    assert [(s.location_id, s.lines[0].quantity) for s in sourced.shipments] == [("store-sf", 3)]


def test_an_edit_of_an_order_paid_with_a_method_no_longer_offered_goes_through():
    """The shop stops offering the wallet for new orders; the orders paid with it are still captured
    and refunded through it, and their customers may still fix an address or drop a unit."""
    wallet = RetiredWallet()
    world = build_world(STOCK, wallet)
    order = world.allocated(("MUG", 3), payment={"method": "wallet", "token": "tok_approve"})
    wallet.offered = False

    moved = world.actions.edit(order.id, order.version, new_address(order), actor="key_web")
    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    done = world.actions.edit(order.id, moved.version, fewer, actor="key_web")

    assert (done.shipping_address.line2, done.lines[0].quantity, done.payment.method) == ("Apt 4", 2, "wallet")
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1), payment={"method": "wallet", "token": "tok_approve"})
    assert refused.value.code == "unknown_payment_method"


def test_an_edit_that_grows_an_order_paid_with_a_method_no_longer_offered_is_refused():
    wallet = RetiredWallet()
    world = build_world(STOCK, wallet)
    order = world.allocated(("MUG", 3), payment={"method": "wallet", "token": "tok_approve"})
    wallet.offered = False

    more = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}]})
    with pytest.raises(InvalidRequest) as refused:
        world.actions.edit(order.id, order.version, more, actor="key_web")

    assert refused.value.code == "unknown_payment_method"
    assert world.order(order.id) == order  # nothing asked of the gateway, nothing written


def test_an_address_edit_after_the_shop_raised_a_price_keeps_what_the_units_were_sold_at(world):
    """The mug goes from 12.50 to 15.00 after the order was placed: fixing the address does not
    charge the customer the new price for mugs they have bought (nor ask their card for more)."""
    order = world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", "15.00", weight_grams=350))

    done = world.actions.edit(order.id, order.version, new_address(order), actor="key_web")

    assert [line.unit_price for line in done.lines] == [line.unit_price for line in order.lines]
    assert done.totals == order.totals
    assert done.payment.authorized == order.payment.authorized


def test_an_edit_that_changes_a_lines_units_prices_that_line_as_a_new_order_would(world):
    order = world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", "15.00", weight_grams=350))

    more = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 4}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, more, actor="key_web")

    assert [line.unit_price for line in done.lines] == [Money.of("15.00", "USD"), order.lines[1].unit_price]


@pytest.mark.parametrize("today", ["15.00", "9.00"])
def test_an_edit_that_asks_for_fewer_units_keeps_the_price_they_were_sold_at_as_a_cancel_does(world, today):
    """Three mugs sold at 12.50, repriced since: two of them cost what they were sold at, whether
    an edit or a cancel of units leaves them (today's price neither charges more for units bought
    nor gives an edit down a cut a cancel does not)."""
    edited, cancelled = world.allocated(("MUG", 3), ("CAP", 2)), world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", today, weight_grams=350))

    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 2}]})
    done = world.actions.edit(edited.id, edited.version, fewer, actor="key_web")
    left = world.actions.cancel(cancelled.id, "one less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].unit_price == Money.of("12.50", "USD")
    assert (done.totals, [line.total for line in done.lines]) == (left.totals, [line.total for line in left.lines])


@pytest.mark.parametrize(("mugs", "price"), [(1, "12.50"), (2, "12.50"), (4, "10.00")])
def test_an_edit_down_that_loses_a_volume_price_prices_the_units_left_as_a_cancel_of_units_does(mugs, price):
    world = build_world([("MUG", "wh-west", 10), ("CAP", "wh-east", 5)], VolumePrice())
    edited, cancelled = world.allocated(("MUG", 5), ("CAP", 1)), world.allocated(("MUG", 5), ("CAP", 1))
    assert edited.lines[0].unit_price == Money.of("10.00", "USD")

    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": mugs}, {"sku": "CAP", "quantity": 1}]})
    done = world.actions.edit(edited.id, edited.version, fewer, actor="key_web")
    left = world.actions.cancel(cancelled.id, "fewer", actor="key_web", lines={"L1": 5 - mugs})

    assert done.lines[0].unit_price == left.lines[0].unit_price == Money.of(price, "USD")
    assert done.totals == left.totals


def test_an_edit_down_to_units_no_plugin_prices_any_more_keeps_the_price_they_were_sold_at():
    # Sold 5 MUG at the volume price; the catalog has priced MUG only in EUR since, so nothing prices
    # 2 of them in USD today: the 2 left cost what they were sold at, as a sku nobody prices does.
    world = build_world([("MUG", "wh-west", 10), ("CAP", "wh-east", 5)], VolumePrice())
    order = world.allocated(("MUG", 5), ("CAP", 1))
    world.catalog.put_product(product("MUG", "11.00", currency="EUR", weight_grams=350))

    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 1}]})
    done = world.actions.edit(order.id, order.version, fewer, actor="key_web")

    assert (done.lines[0].quantity, done.lines[0].unit_price) == (2, Money.of("10.00", "USD"))


def test_an_edit_of_the_lines_after_the_shop_raised_its_shipping_rate_keeps_the_shipping_charged():
    courier = CourierShipping()
    world = build_world(STOCK, courier)
    order = world.allocated(("MUG", 3), shipping_method="courier")
    courier.rate = "9.00"

    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, fewer, actor="key_web")

    assert done.totals.shipping == Money.of("6.00", "USD")  # the flat rate does not change with units
    assert done.totals.grand_total == sum((line.total for line in done.lines), done.totals.shipping)


@pytest.mark.parametrize("change", ["address", "method"])
def test_an_edit_of_the_address_or_the_method_after_the_shop_raised_its_shipping_rate_is_charged_todays(change):
    """The parcels go somewhere else, or another way: what the order was charged for its shipping is
    no longer what it costs, and the edited order pays today's quote, as a new order would."""
    courier = CourierShipping()
    world = build_world(STOCK, courier)
    order = world.allocated(("MUG", 3), shipping_method="courier")
    courier.rate = "9.00"

    if change == "address":
        edit, method = new_address(order), "courier"
    else:
        edit, method = OrderEdit(shipping_method="express"), "express"
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    as_new = world.allocated(("MUG", 3), shipping_method=method)
    assert done.totals.shipping == as_new.totals.shipping != order.totals.shipping


def test_an_edit_whose_units_change_the_shipping_quote_is_charged_todays_quote():
    shipping = RetiringShipping()  # 2.00 a unit
    world = build_world(STOCK, shipping)
    order = world.allocated(("MUG", 3), shipping_method="per_unit")

    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    done = world.actions.edit(order.id, order.version, fewer, actor="key_web")

    assert done.totals.shipping == Money.of("4.00", "USD")


def test_an_edit_of_other_lines_keeps_the_tax_rate_a_sku_left_as_it_is_was_sold_at(world, monkeypatch, tmp_path):
    """California's rate changes after the order was placed: an edit that adds a cap does not tax
    the three mugs it leaves as they are again at the new rate (they were sold, and charged, at the
    old one), nor does a change of shipping method; the cap it adds units to is taxed as a new
    order's would be."""
    order = world.allocated(("MUG", 3), ("CAP", 2))
    sold_at = order.lines[0].tax_rate
    assert sold_at is not None and sold_at.rate == Decimal("0.0725")
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.25"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}, {"sku": "CAP", "quantity": 3}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    mug, cap = done.lines
    assert (mug.tax_rate, mug.tax) == (sold_at, order.lines[0].tax)
    assert cap.tax_rate.rate == Decimal("0.25")
    method = world.actions.edit(order.id, done.version, OrderEdit(shipping_method="standard"), actor="key_web")
    assert [line.tax for line in method.lines] == [line.tax for line in done.lines]


def test_an_edit_of_other_lines_keeps_a_sku_sold_untaxed_untaxed(world, monkeypatch, tmp_path):
    """California had no rate in the shop's table when the order was placed, and has one now: the
    mugs the edit leaves as they are were sold untaxed and stay so; the cap it adds is taxed."""
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"GB": {"standard": "0.20"}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))
    order = world.allocated(("MUG", 3))
    assert (order.lines[0].tax_rate, order.lines[0].tax) == (None, Money.zero("USD"))
    now = tmp_path / "tax_rates_now.json"
    now.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.25"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(now))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}, {"sku": "CAP", "quantity": 1}]})
    mug, cap = world.actions.edit(order.id, order.version, edit, actor="key_web").lines

    assert (mug.tax_rate, mug.tax) == (None, Money.zero("USD"))
    assert cap.tax_rate.rate == Decimal("0.25")


def test_an_edit_of_other_lines_taxes_a_line_stored_before_lines_kept_their_rate(world):
    """A taxed line stored without its rate (as before lines kept it) is taxed again through the
    plugins, not left untaxed for want of a rate to keep."""
    order = world.allocated(("MUG", 3), ("CAP", 2))
    assert order.lines[0].tax.amount > 0
    stored = order.model_copy(update={"lines": [line.model_copy(update={"tax_rate": None}) for line in order.lines]})
    world.orders.put(stored, payment_token="tok_approve")

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}, {"sku": "CAP", "quantity": 1}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert (done.lines[0].tax, done.lines[0].tax_rate) == (order.lines[0].tax, order.lines[0].tax_rate)


def test_an_address_edit_of_a_pickup_order_keeps_the_tax_rate_it_was_sold_at(world, monkeypatch, tmp_path):
    """A pickup order is taxed where its store is, which an edit of its address does not move: the
    rate changed since does not tax its units again."""
    world.inventory.set_on_hand("MUG", "store-sf", 5, reason="count")
    order = world.allocated(("MUG", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.25"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))

    done = world.actions.edit(order.id, order.version, new_address(order), actor="key_web")

    assert done.shipping_address.line2 == "Apt 4"
    assert (done.lines[0].tax_rate, done.totals) == (order.lines[0].tax_rate, order.totals)
    assert order.lines[0].tax.amount > 0


def test_an_edit_of_the_address_taxes_the_order_at_the_rate_of_its_new_address(world, monkeypatch, tmp_path):
    """The address decides the tax jurisdiction: an edited address is taxed as a new order to it."""
    order = world.allocated(("MUG", 3))
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.25"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))

    done = world.actions.edit(order.id, order.version, new_address(order), actor="key_web")

    assert done.lines[0].tax_rate.rate == Decimal("0.25")


def test_an_edit_whose_order_as_it_was_reaches_10_to_the_15_at_todays_tax_rate_is_priced(monkeypatch, tmp_path):
    """Two mugs of 4.6 x 10^14 sold under California's 7.25% (below 10^15 in all); then the rate is
    10% and the courier charges 9.00. Taking a mug off is an order the OMS records (the mug left
    keeps the rate it was sold at, as a cancel of units leaves it); the order as it was, priced
    again at today's rate only to learn whether the edit changes today's shipping quote, is not: the
    edit was refused 422 `amount_too_large` for an amount nobody is charged. Unable to ask, the
    edited order gets today's quote, as one whose units change it does."""
    courier = CourierShipping()
    world = build_world(STOCK, courier)
    world.catalog.put_product(product("MUG", "460000000000000.00", weight_grams=350))
    order = world.allocated(("MUG", 2), shipping_method="courier")
    assert order.totals.grand_total == Money.of("986700000000006.00", "USD")
    courier.rate = "9.00"
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.10"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 1}]})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert done.lines[0].quantity == 1
    assert done.totals.shipping == Money.of("9.00", "USD")
    assert done.lines[0].tax_rate == order.lines[0].tax_rate
    assert done.totals.grand_total == Money.of("493350000000009.00", "USD")  # 460 x 10^12 at 7.25%, 9.00


def test_an_edit_of_lines_whose_stored_address_todays_rules_refuse_is_422_naming_it(world):
    """An edit that keeps the stored address holds it to today's rules, as a new order's; one stored
    before a rule refused it (a lone latitude) made the edit fail with pydantic's error: a 500."""
    order = world.allocated(("MUG", 3))
    with_one_coordinate(world, order)

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}]})
    with pytest.raises(InvalidRequest) as refused:
        world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert refused.value.code == "validation_error"
    assert [detail["field"] for detail in refused.value.details] == ["shipping_address.longitude"]
    assert world.order(order.id).lines[0].quantity == 3


def test_an_edit_that_sends_the_address_again_corrects_one_todays_rules_refuse(world):
    order = world.allocated(("MUG", 3))
    with_one_coordinate(world, order)
    address = {**order.shipping_address.model_dump(), "latitude": None, "longitude": None}

    edit = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}], "shipping_address": address})
    done = world.actions.edit(order.id, order.version, edit, actor="key_web")

    assert (done.lines[0].quantity, done.shipping_address.latitude) == (2, None)


def test_a_cancel_of_units_of_an_order_whose_stored_address_todays_rules_refuse_is_422_until_it_is_edited(world):
    """A cancel of units prices the units left as an edit does, so it holds the stored address to
    today's rules too: it failed with pydantic's error (a 500); it is 422 naming the field, and once
    an edit sends the address corrected the cancel goes through."""
    order = world.allocated(("MUG", 3))
    with_one_coordinate(world, order)

    with pytest.raises(InvalidRequest) as refused:
        world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})
    assert [detail["field"] for detail in refused.value.details] == ["shipping_address.longitude"]
    assert world.order(order.id).lines[0].quantity == 3

    address = {**order.shipping_address.model_dump(), "latitude": None, "longitude": None}
    edited = world.actions.edit(order.id, order.version, OrderEdit(shipping_address=address), actor="key_web")
    world.run(edited.id)
    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})
    assert (done.lines[0].quantity, done.lines[0].cancelled_quantity) == (2, 1)


def test_a_cancel_of_units_after_a_price_rise_past_10_to_the_15_keeps_the_price_the_units_were_sold_at(world):
    """The mug now costs 4 x 10^14: the order as it was (three mugs), priced at today's price only
    to learn whether the plugins price the units left otherwise (a volume price), reaches 10^15,
    and the cancel of one mug was refused 422 `amount_too_large` for an amount nobody is charged.
    Unable to ask, the units left keep the price they were sold at."""
    order = world.allocated(("MUG", 3))
    world.catalog.put_product(product("MUG", "400000000000000.00", weight_grams=350))

    done = world.actions.cancel(order.id, "one less", actor="key_web", lines={"L1": 1})

    assert (done.lines[0].quantity, done.lines[0].unit_price) == (2, order.lines[0].unit_price)
    assert done.totals.subtotal == order.lines[0].unit_price.times(2)


def mugs_left(world: World, order: Order, mugs: int, *, by: str) -> Order:
    """The order of mugs alone with `mugs` of them left, the rest taken away `by` an edit of its lines
    or a cancel of units: the order as it is then."""
    if by == "edit":
        fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": mugs}]})
        return world.actions.edit(order.id, order.version, fewer, actor="key_web")
    (line,) = order.lines
    return world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={line.line_id: line.quantity - mugs})


@pytest.mark.parametrize("by", ["edit", "cancel"])
def test_units_taken_away_after_a_products_weight_was_raised_never_cost_more_shipping_than_was_charged(world, by):
    """Two mugs of 350 g went by ground (3.00 and 1.20 a started kilogram: 4.20). The merchant then
    corrects the mug's weight to 2 kg: one mug less, by an edit or a cancel of a unit, was charged
    today's quote for the mug left (2 kg: 5.40), more than the order paid to ship both; the edit,
    for a mug at 12.50, grew the order's total. The catalog's weight today is no reason to charge
    more for units already sold: what is taken away never raises the shipping above its charge."""
    order = world.allocated(("MUG", 2), shipping_method="ground")
    assert order.totals.shipping == Money.of("4.20", "USD")
    world.catalog.put_product(product("MUG", "12.50", weight_grams=2000))

    done = mugs_left(world, order, 1, by=by)

    assert done.totals.shipping == order.totals.shipping
    assert done.totals.grand_total < order.totals.grand_total
    more = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 3}]})  # units added: today's quote
    assert world.actions.edit(order.id, done.version, more, actor="key_web").totals.shipping == Money.of("10.20", "USD")


@pytest.mark.parametrize("by", ["edit", "cancel"])
def test_units_taken_away_after_a_weight_was_raised_cost_todays_quote_when_it_is_below_the_charge(world, by):
    """Four mugs of 350 g went by ground (1.4 kg: 5.40). The mug's weight is then corrected to 600 g:
    the four would cost 6.60 today, more than was charged, but the one mug left costs 4.20 today,
    less than was charged: the customer pays that, not the charge for the four."""
    order = world.allocated(("MUG", 4), shipping_method="ground")
    assert order.totals.shipping == Money.of("5.40", "USD")
    world.catalog.put_product(product("MUG", "12.50", weight_grams=600))

    done = mugs_left(world, order, 1, by=by)

    assert done.totals.shipping == Money.of("4.20", "USD")


class FreeOverShipping(CourierShipping):
    """The courier free for an order of `free_over` or more, `rate` below it."""

    free_over = Money.of("0.00", "USD")

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft, address: object) -> list[ShippingQuote]:
        free = draft.subtotal >= self.free_over
        return [ShippingQuote(method="courier", amount=Money.of("0.00" if free else self.rate, draft.currency))]


@pytest.mark.parametrize("by", ["edit", "cancel"])
def test_units_taken_away_below_a_free_shipping_threshold_cost_the_shipping_the_units_left_are_quoted(by):
    """Nothing in the configuration changed since the order was sold: it shipped free for what it
    came to, and what is left of it, below the threshold, is charged the courier, as a new order of it
    would be (no rate or weight raised since keeps it at the charge)."""
    courier = FreeOverShipping()
    world = build_world(STOCK, courier)
    placed = world.place(("MUG", 2), shipping_method="courier")
    courier.free_over = world.order(placed).totals.subtotal
    order = world.allocated(("MUG", 2), shipping_method="courier")
    assert order.totals.shipping == Money.of("0.00", "USD")

    done = mugs_left(world, order, 1, by=by)

    assert done.totals.shipping == Money.of(CourierShipping.rate, "USD")


def test_an_edit_that_takes_units_of_one_sku_away_and_keeps_another_as_it_is_keeps_the_charge(world):
    order = world.allocated(("MUG", 2), ("CAP", 3), shipping_method="ground")
    cap = next(line for line in order.lines if line.sku == "CAP")
    world.catalog.put_product(product("CAP", str(cap.unit_price.amount), weight_grams=2000))
    fewer = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 1}]})

    done = world.actions.edit(order.id, order.version, fewer, actor="key_web")

    assert done.totals.shipping == order.totals.shipping


def test_an_edit_that_takes_units_away_and_adds_a_new_sku_is_charged_todays_quote(world):
    # Units added, of a sku the order did not have: today's weights price its shipping.
    order = world.allocated(("MUG", 2), shipping_method="ground")
    world.catalog.put_product(product("MUG", "12.50", weight_grams=2000))
    other = OrderEdit.model_validate({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "CAP", "quantity": 1}]})

    done = world.actions.edit(order.id, order.version, other, actor="key_web")

    assert done.totals.shipping > order.totals.shipping
