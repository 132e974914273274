"""Plugins get copies: nothing a plugin does to its arguments reaches stored or cached data."""

from __future__ import annotations

import types

import tests.conftest as suite_checks
from core import hookimpl, plugin_manager
from core.models import Fulfillment
from core.money import Money
from core.plugin_manager import build_plugin_manager
from core.status import OrderStatus
from tests.builders import place_order
from tests.unit.test_plugin_argument_copies import _draft
from tests.unit.world import build_world

STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 10), ("TSHIRT", "store-sf", 5)]


class CheapensTheProduct:
    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product, customer):
        product.price = Money.of("0.01", product.price.currency)  # assignment is not validated
        product.name = "renamed by a plugin"
        customer.email = "someone-else@example.com"
        return None


class MovesTheAddress:
    @hookimpl(tryfirst=True)
    def oms_tax_rate(self, line, address, draft):
        address.country = "DE"
        address.city = "Berlin"
        line.product.tax_code = "zero"
        draft.lines.clear()
        return None


class RewritesTheCity:
    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, order, origin, lines):
        order.shipping_address.city = "Nowhere"
        order.lines.clear()
        origin.address.city = "Nowhere"
        lines.append(lines[0])
        return None


class EditsItsLocations:
    @hookimpl(wrapper=True)
    def oms_source_order(self, order, locations, stock):
        plan = yield
        for edited in locations:
            edited.ships = False
            edited.address.city = "Nowhere"
        locations.clear()
        stock.clear()
        order.lines.clear()
        return plan


def test_a_price_plugin_that_changes_the_product_changes_neither_the_catalog_nor_the_order():
    world = build_world(STOCK, CheapensTheProduct())

    order = world.order(world.place(("TSHIRT", 1)))

    stored = world.catalog.get_product("TSHIRT")
    assert (stored.price, stored.name) == (Money.of("19.99", "USD"), "Black T-shirt")
    assert order.customer.email == "ada@example.com"


def test_a_tax_plugin_that_changes_the_address_changes_neither_the_order_nor_the_store():
    world = build_world(STOCK, MovesTheAddress())

    shipped = world.order(world.place(("TSHIRT", 1)))
    picked_up = world.order(world.place(("TSHIRT", 1), fulfillment={"type": "pickup", "location_id": "store-sf"}))

    assert (shipped.shipping_address.country, shipped.shipping_address.city) == ("US", "San Francisco")
    assert [line.sku for line in shipped.lines] == ["TSHIRT"]
    assert picked_up.fulfillment == Fulfillment(type="pickup", location_id="store-sf")
    store = world.catalog.get_location("store-sf")
    assert (store.address.country, store.address.city) == ("US", "Newark")
    assert world.catalog.get_product("TSHIRT").tax_code is None


def test_a_carrier_that_changes_the_city_changes_neither_the_order_nor_the_location():
    world = build_world(STOCK, RewritesTheCity())

    order = world.allocated(("TSHIRT", 2))

    assert order.shipping_address.city == "San Francisco"
    assert [(line.sku, line.quantity) for line in order.lines] == [("TSHIRT", 2)]
    assert [[(x.line_id, x.quantity) for x in s.lines] for s in order.shipments] == [[("L1", 2)]]
    assert world.catalog.get_location("wh-west").address.city == "Newark"


def test_a_sourcing_plugin_that_edits_its_locations_changes_neither_the_network_nor_the_order():
    world = build_world(STOCK, EditsItsLocations())

    order = world.allocated(("TSHIRT", 2), ("MUG", 1))

    assert [(a.line_id, a.location_id, a.quantity) for a in order.allocations] == [
        ("L1", "wh-west", 2),
        ("L2", "wh-west", 1),
    ]
    assert [line.sku for line in order.lines] == ["TSHIRT", "MUG"]
    assert all(loc.address.city == "Newark" for loc in world.catalog.list_locations())
    assert [loc.location_id for loc in world.catalog.list_locations() if loc.ships] == ["wh-east", "wh-west"]
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)


def test_a_plugin_that_edits_its_arguments_leaves_the_command_it_was_given_alone():
    world = build_world(STOCK, MovesTheAddress(), CheapensTheProduct())
    command = place_order(lines=[{"sku": "TSHIRT", "quantity": 1}])
    before = command.model_copy(deep=True)

    placed = world.capture.place(command, actor="key_web")

    assert command == before
    assert placed.status is OrderStatus.PENDING


def _built_in_module(hook: object) -> types.ModuleType:
    """A plugin module the manager takes for one of this project's own (it lives in `plugins/`)."""
    module = types.ModuleType("plugins.under_test")
    module.__file__ = str(plugin_manager._BUILT_IN_DIRECTORY / "under_test.py")
    module.oms_tax_rate = hook  # type: ignore[attr-defined]
    return module


def _tax_call() -> dict:
    draft, _ = _draft()
    return {"line": draft.lines[0], "address": draft.shipping_address, "draft": draft}


def test_a_call_only_built_in_plugins_answer_gets_the_arguments_themselves():
    seen = []

    @hookimpl
    def oms_tax_rate(line, address, draft):
        seen.append((line, address, draft))

    plugins = build_plugin_manager(_built_in_module(oms_tax_rate))
    given = _tax_call()

    plugins.hook.oms_tax_rate(**given)

    assert [tuple(map(id, call)) for call in seen] == [(id(given["line"]), id(given["address"]), id(given["draft"]))]


def test_a_plugin_of_anyone_else_beside_a_built_in_makes_the_call_copy_for_both():
    seen = []

    @hookimpl
    def oms_tax_rate(line, address, draft):
        seen.append(address)

    plugins = build_plugin_manager(_built_in_module(oms_tax_rate), MovesTheAddress())
    given = _tax_call()

    plugins.hook.oms_tax_rate(**given)

    assert (given["address"].country, given["address"].city) == ("US", "San Francisco")
    assert seen and seen[0] is not given["address"]


def test_the_suite_fails_a_test_whose_built_in_plugin_changes_its_arguments():
    @hookimpl
    def oms_tax_rate(line, address, draft):
        address.city = "Berlin"

    plugins = build_plugin_manager(_built_in_module(oms_tax_rate))

    plugins.hook.oms_tax_rate(**_tax_call())

    assert suite_checks._broken_promises == [
        f"oms_tax_rate({name}=...) was changed by a built-in plugin: plugins.under_test"
        for name in ("address", "draft")
    ]
    suite_checks._broken_promises.clear()  # this test's own, on purpose


def test_a_plugin_module_from_outside_the_projects_plugins_directory_gets_copies(tmp_path):
    # An installed plugin is a module too (an `oms` entry point names one), with a file of its own:
    # only the modules of this project's `plugins` directory are trusted to leave arguments alone.
    module = types.ModuleType("acme_tax")
    module.__file__ = str(tmp_path / "acme_tax.py")
    module.oms_tax_rate = MovesTheAddress().oms_tax_rate  # type: ignore[attr-defined]
    plugins = build_plugin_manager(module)
    given = _tax_call()

    plugins.hook.oms_tax_rate(**given)

    assert (given["address"].country, given["address"].city) == ("US", "San Francisco")
    assert len(given["draft"].lines) == 2


def test_the_copies_a_call_hands_out_share_what_its_arguments_share():
    # The line being taxed is one of the draft's lines: a plugin that edits it sees its draft's
    # line edited, as it would without copies.
    seen = []

    class Looks:
        @hookimpl
        def oms_tax_rate(self, line, draft):
            seen.append((line is draft.lines[0], line is given["line"]))

    plugins = build_plugin_manager(Looks())
    given = _tax_call()

    plugins.hook.oms_tax_rate(**given)

    assert seen == [(True, False)]
