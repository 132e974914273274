"""Capture service: validation, pricing through plugins, the stock check, one put."""

import json
from collections.abc import Callable

import pytest

from core.errors import DuplicateOrder, InsufficientStock, InvalidRequest, UnknownSku
from core.ids import order_id_for
from core.models import Address, Customer, Payment
from core.money import Money
from core.pricing import Pricing
from core.services import CaptureService, InventoryService, OrderQueries
from core.sourcing_rules import SourcingRules
from core.status import OrderStatus
from functions.plugin_loading import load_plugin_manager
from tests.builders import NOW, location, place_order, product
from tests.fakes import FakeCatalog, FakeInventory, FakeOrders


@pytest.fixture
def world():
    orders, catalog, inventory = FakeOrders(), FakeCatalog(), FakeInventory()
    catalog.put_product(product("TSHIRT", "19.99"))
    catalog.put_product(product("MUG", "12.50", weight_grams=350))
    catalog.put_product(product("PREORDER", "30.00", allow_backorder=True))
    catalog.put_location(location("wh-east"))
    catalog.put_location(location("wh-west", latitude=39.5, longitude=-119.8))
    catalog.put_location(location("store-sf", type="store", ships=False, pickup=True))
    inventory.set_on_hand("TSHIRT", "wh-east", 3, "count")
    inventory.set_on_hand("TSHIRT", "wh-west", 2, "count")
    inventory.set_on_hand("TSHIRT", "store-sf", 50, "count")
    inventory.set_on_hand("MUG", "store-sf", 4, "count")
    capture = CaptureService(orders, catalog, inventory, Pricing(load_plugin_manager()), clock=lambda: NOW)
    return capture, orders, inventory


def test_a_placed_order_is_pending_with_its_first_history_entry(world):
    capture, orders, _ = world
    order = capture.place(place_order(), actor="key_admin")
    assert order.status is OrderStatus.PENDING
    assert order.version == 1
    assert order.id == order_id_for("web", "web-1001")
    _, history = orders.history(order.id)
    assert [(h.type, h.from_status, h.to_status, h.actor) for h in history] == [
        ("created", None, OrderStatus.PENDING, "key_admin")
    ]
    assert orders.tokens[order.id] == "tok_approve"


def test_totals_follow_the_contract(world):
    capture, _, _ = world
    order = capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 2}]), actor="k")
    (line,) = order.lines
    assert str(line.unit_price.amount) == "19.99"
    assert line.total == line.unit_price.times(2) - line.discount + line.tax
    t = order.totals
    assert t.subtotal.amount == sum(x.unit_price.amount * x.quantity for x in order.lines)
    assert t.grand_total == line.total + t.shipping


def test_the_same_channel_and_external_id_is_a_duplicate(world):
    capture, _, _ = world
    first = capture.place(place_order(), actor="k")
    with pytest.raises(DuplicateOrder) as raised:
        capture.place(place_order(), actor="k")
    assert raised.value.order_id == first.id


def test_an_order_sent_again_after_its_stock_is_gone_is_a_duplicate_not_short_of_stock(world):
    # The first order's units are taken (by its own reservation, or a stock take): sent again, as a
    # re-imported file or a redelivered message sends it, it is the order already placed.
    capture, _, inventory = world
    first = capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 5}]), actor="k")
    inventory.set_on_hand("TSHIRT", "wh-east", 0, "count")
    with pytest.raises(DuplicateOrder) as raised:
        capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 5}]), actor="k")
    assert raised.value.order_id == first.id


def test_a_new_order_short_of_stock_is_still_refused_for_it(world):
    capture, _, _ = world
    with pytest.raises(InsufficientStock):
        capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 6}]), actor="k")


def capture_under(rules: Callable[[], SourcingRules], orders: FakeOrders, inventory: FakeInventory) -> CaptureService:
    """Capture over the world's two warehouses and its pickup store selling TSHIRT, MUG and PREORDER
    (which may wait for stock), under the sourcing rules `rules` says are in force."""
    catalog = FakeCatalog()
    for loc in ("wh-east", "wh-west"):
        catalog.put_location(location(loc))
    catalog.put_location(location("store-sf", type="store", ships=False, pickup=True))
    catalog.put_product(product("TSHIRT", "19.99"))
    catalog.put_product(product("MUG", "12.50", weight_grams=350))
    catalog.put_product(product("PREORDER", "30.00", allow_backorder=True))
    return CaptureService(
        orders, catalog, inventory, Pricing(load_plugin_manager()), clock=lambda: NOW, sourcing_rules=rules
    )


def test_stock_the_sourcing_rules_keep_back_is_not_counted(world):
    _, orders, inventory = world
    # wh-east's 3 are excluded and wh-west keeps 1 of its 2 back: 1 may be taken, as allocation would.
    rules = SourcingRules(version=2, excluded_locations=["wh-east"], safety_stock={"wh-west": 1})
    capture = capture_under(lambda: rules, orders, inventory)
    capture.place(place_order(external_id="ok", lines=[{"sku": "TSHIRT", "quantity": 1}]), "k")
    with pytest.raises(InsufficientStock) as raised:
        capture.place(place_order(external_id="short", lines=[{"sku": "TSHIRT", "quantity": 2}]), "k")
    assert raised.value.details == [
        {"field": "lines[0].quantity", "message": "1 of TSHIRT available under sourcing rules v2, 2 ordered"}
    ]
    # Every shipping location excluded: nothing is available, and no stock read is needed to say so.
    rules = SourcingRules(version=3, excluded_locations=["wh-east", "wh-west"])
    with pytest.raises(InsufficientStock):
        capture.place(place_order(external_id="none", lines=[{"sku": "TSHIRT", "quantity": 1}]), "k")


@pytest.mark.parametrize(
    ("rules", "said"),
    [
        (
            SourcingRules(version=7, safety_stock={"wh-east": 3, "wh-west": 2}),
            "0 of TSHIRT available under sourcing rules v7",
        ),
        (SourcingRules(version=8, excluded_locations=["wh-east"]), "2 of TSHIRT available under sourcing rules v8"),
    ],
    ids=["held-back", "excluded"],
)
def test_an_order_short_only_under_the_sourcing_rules_is_told_they_are_why(world, rules, said):
    # GET /inventory counts every unit (5 T-shirts here): a refusal that said "0 of TSHIRT
    # available" and no more left the merchandiser reading a count the inventory contradicts.
    _, orders, inventory = world
    capture = capture_under(lambda: rules, orders, inventory)
    with pytest.raises(InsufficientStock) as raised:
        capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 3}]), "k")
    assert raised.value.details == [{"field": "lines[0].quantity", "message": f"{said}, 3 ordered"}]


def test_an_order_that_may_wait_is_refused_when_the_sourcing_rules_leave_no_location_to_supply_it(world):
    # Backordered, it would wait for units no location the rules allow could ever ship: refused at
    # capture, before it is authorized, saying why.
    _, orders, inventory = world
    rules = SourcingRules(version=4, excluded_locations=["wh-east", "wh-west"])
    capture = capture_under(lambda: rules, orders, inventory)
    with pytest.raises(InsufficientStock) as raised:
        capture.place(place_order(lines=[{"sku": "PREORDER", "quantity": 1}]), "k")
    assert raised.value.message == "no location may supply this order under the sourcing rules"
    assert orders.orders == {}


def test_a_pickup_at_a_store_the_sourcing_rules_exclude_is_refused_naming_the_store(world):
    # A store closed for renovation is excluded: its pickup orders are refused. "no location may
    # supply it" left the store's tablet wondering which location, when the customer chose one.
    _, orders, inventory = world
    rules = SourcingRules(version=2, excluded_locations=["store-sf"])
    capture = capture_under(lambda: rules, orders, inventory)
    body = place_order(
        lines=[{"sku": "MUG", "quantity": 1}, {"sku": "PREORDER", "quantity": 1}],
        fulfillment={"type": "pickup", "location_id": "store-sf"},
    )
    with pytest.raises(InsufficientStock) as raised:
        capture.place(body, "k")
    assert raised.value.message == "the pickup store store-sf supplies no order under the sourcing rules"
    said = "store-sf (the pickup store) is excluded by sourcing rules v2"
    assert raised.value.details == [
        {"field": "lines[0].quantity", "message": said},
        {"field": "lines[1].quantity", "message": said},
    ]
    assert orders.orders == {}


def test_an_unknown_sku_names_its_line_and_stores_nothing(world):
    capture, orders, _ = world
    with pytest.raises(UnknownSku) as raised:
        capture.place(place_order(lines=[{"sku": "TSHIRT", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]), "k")
    assert raised.value.details == [{"field": "lines[1].sku", "message": "no product NOPE"}]
    assert orders.orders == {}


def test_pricing_an_unknown_sku_names_its_line_as_placing_it_does(world):
    capture, _, _ = world
    with pytest.raises(UnknownSku) as raised:
        capture.price(place_order(lines=[{"sku": "TSHIRT", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]))
    assert raised.value.details == [{"field": "lines[1].sku", "message": "no product NOPE"}]


def test_stock_is_summed_over_shipping_locations_only(world):
    capture, orders, _ = world
    # 3 + 2 ship from warehouses; the store's 50 are not eligible for a shipped order.
    capture.place(place_order(external_id="ok", lines=[{"sku": "TSHIRT", "quantity": 5}]), "k")
    with pytest.raises(InsufficientStock) as raised:
        capture.place(place_order(external_id="short", lines=[{"sku": "TSHIRT", "quantity": 6}]), "k")
    assert raised.value.details[0]["field"] == "lines[0].quantity"
    assert len(orders.orders) == 1


def test_lines_of_the_same_sku_are_checked_together(world):
    capture, _, _ = world
    lines = [{"sku": "TSHIRT", "quantity": 3}, {"sku": "TSHIRT", "quantity": 3}]
    with pytest.raises(InsufficientStock):
        capture.place(place_order(lines=lines), "k")


def test_backorderable_products_skip_the_stock_check(world):
    capture, _, _ = world
    order = capture.place(place_order(lines=[{"sku": "PREORDER", "quantity": 7}]), "k")
    assert order.status is OrderStatus.PENDING


def test_pickup_uses_the_store_stock_and_pays_no_shipping(world):
    capture, _, _ = world
    order = capture.place(
        place_order(lines=[{"sku": "MUG", "quantity": 4}], fulfillment={"type": "pickup", "location_id": "store-sf"}),
        "k",
    )
    assert order.shipping_method == "pickup"
    assert order.totals.shipping.amount == 0


def test_a_pickup_order_short_at_its_store_is_told_the_store_s_count_and_names_the_store(world):
    # A pickup is supplied by its store alone: "0 of HOODIE available" beside a GET /inventory that
    # counts the warehouses' units read as a wrong count; the refusal says whose count it is.
    capture, _, inventory = world
    inventory.set_on_hand("MUG", "wh-east", 20, "count")
    with pytest.raises(InsufficientStock) as raised:
        pickup = {"type": "pickup", "location_id": "store-sf"}
        capture.place(place_order(lines=[{"sku": "MUG", "quantity": 5}], fulfillment=pickup), "k")
    assert raised.value.details == [
        {"field": "lines[0].quantity", "message": "4 of MUG available at store-sf (the pickup store), 5 ordered"}
    ]


def test_a_pickup_short_at_its_store_under_the_sourcing_rules_is_told_whose_count_and_why_it_is_less(world):
    # The store's 4 mugs less the 1 the rules keep back there: both said, in the order they cut the count.
    _, orders, inventory = world
    capture = capture_under(lambda: SourcingRules(version=4, safety_stock={"store-sf": 1}), orders, inventory)
    with pytest.raises(InsufficientStock) as raised:
        pickup = {"type": "pickup", "location_id": "store-sf"}
        capture.place(place_order(lines=[{"sku": "MUG", "quantity": 4}], fulfillment=pickup), "k")
    said = "3 of MUG available at store-sf (the pickup store) under sourcing rules v4, 4 ordered"
    assert raised.value.details == [{"field": "lines[0].quantity", "message": said}]


@pytest.mark.parametrize(
    ("sku", "fulfillment"), [("TSHIRT", {"type": "ship"}), ("MUG", {"type": "pickup", "location_id": "store-sf"})]
)
def test_the_order_holds_the_clients_customer_and_address_as_stored_and_a_payment_of_nothing_yet(
    world, sku, fulfillment
):
    # Pricing validates them as the order stores them once, for its draft, and the order takes
    # them from there: a pickup order keeps the client's address, not the store's it is taxed at.
    capture, orders, _ = world
    cmd = place_order(lines=[{"sku": sku, "quantity": 1}], fulfillment=fulfillment)
    order = capture.place(cmd, actor="k")
    assert type(order.customer) is Customer and order.customer == Customer.model_validate(cmd.customer)
    assert type(order.shipping_address) is Address
    assert order.shipping_address == Address.model_validate(cmd.shipping_address)
    zero = Money.zero("USD")
    assert order.payment == Payment(method=cmd.payment.method, authorized=zero, captured=zero, refunded=zero)
    assert orders.get(order.id) == order


def test_pickup_needs_a_pickup_location(world):
    capture, _, _ = world
    with pytest.raises(InvalidRequest) as raised:
        capture.place(place_order(fulfillment={"type": "pickup", "location_id": "wh-east"}), "k")
    assert raised.value.details[0]["field"] == "fulfillment.location_id"
    with pytest.raises(InvalidRequest):
        capture.place(place_order(fulfillment={"type": "pickup"}), "k")


def test_a_shipped_order_cannot_name_a_location(world):
    capture, _, _ = world
    with pytest.raises(InvalidRequest):
        capture.place(place_order(fulfillment={"type": "ship", "location_id": "wh-east"}), "k")


def test_inventory_summary_adds_up_locations(world):
    _, _, inventory = world
    catalog = FakeCatalog()
    catalog.put_product(product("TSHIRT"))
    summary = InventoryService(inventory, catalog).summary("TSHIRT")
    assert summary.available == 55
    assert [loc.location_id for loc in summary.locations] == ["store-sf", "wh-east", "wh-west"]


def test_another_channels_order_reads_as_missing(world):
    capture, orders, _ = world
    order = capture.place(place_order(), "k")
    queries = OrderQueries(orders)
    assert queries.get(order.id, channel="web").id == order.id
    from core.errors import NotFound

    with pytest.raises(NotFound):
        queries.get(order.id, channel="marketplace")
    with pytest.raises(NotFound):
        queries.history(order.id, channel="marketplace")


def test_what_a_request_asked_is_told_by_the_hash_its_created_entry_keeps_whatever_its_length():
    from core.ids import KEPT_HASH_CHARS, short_hash
    from core.services import asked_alike, request_hash

    command, other = place_order(), place_order(lines=[{"sku": "TSHIRT", "quantity": 3}])
    whole = short_hash(json.dumps(command.model_dump(mode="json", exclude_defaults=True), sort_keys=True))

    # What entries keep now, and the whole hash entries written before kept (an order in flight).
    assert request_hash(command) == whole[:KEPT_HASH_CHARS]
    assert asked_alike(request_hash(command), command) and asked_alike(whole, command)
    assert not asked_alike(request_hash(other), command) and not asked_alike(whole, other)
    assert not asked_alike(whole[:4], command) and not asked_alike(None, command)  # too little to tell


def test_an_order_sent_again_with_null_for_fields_it_left_out_asks_the_same_order():
    # An import line sent again (or a feed's next export) spelling "none" as null is the same
    # content: its order is a duplicate, not the 409 / duplicate_external_id of other content.
    from core.services import request_hash

    nulls = {"fulfillment": None, "promo_codes": None, "shipping_method": None}
    sent_again = [place_order(**nulls), place_order(fulfillment={"type": None}, promo_codes=None)]

    assert [request_hash(command) for command in sent_again] == [request_hash(place_order())] * 2
