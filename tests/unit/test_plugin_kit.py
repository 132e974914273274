"""The plugin author's kit (plugins.testing): a host with only the named plugins, whose helpers run
the OMS's own code paths, so a plugin fails in its tests exactly where it would fail in production."""

from __future__ import annotations

from decimal import Decimal

import pluggy
import pytest

from core import hookimpl
from core.errors import (
    InvalidRequest,
    NotFound,
    OutOfStock,
    PaymentDeclined,
    PaymentRefused,
    PluginError,
    TransientError,
)
from core.models import Allocation, LineTaxRate
from core.pricing_types import TaxRate
from core.status import OrderStatus
from core.tracking import shipment_reference
from core.workflow_types import CarrierShipment, SourcingPlan
from plugins import catalog_price, flat_rate_carrier, flat_rate_shipping, nearest_sourcing, test_payments
from plugins.testing import (
    RecordingGateway,
    a_draft,
    a_location,
    a_place_order,
    a_product,
    a_stock_level,
    an_address,
    an_order,
    money,
    plugin_host,
    sourced_from,
)

pytest_plugins = ["pytester"]

BOOK = a_product("BOOK-1", "20.00", attributes={"acme.tax_class": "books"})


class BooksAreReduced:
    @hookimpl
    def oms_tax_rate(self, line):
        if line.product.attributes.get("acme.tax_class") == "books":
            return TaxRate(rate=Decimal("0.05"), name="reduced (books)")
        return None


# --- The host ------------------------------------------------------------------------------------


def test_the_host_has_only_the_plugins_it_is_given():
    plugin = BooksAreReduced()
    host = plugin_host(plugin)

    assert host.manager.get_plugins() == {plugin}
    with pytest.raises(InvalidRequest) as no_price:  # catalog_price is not there to answer
        host.price(a_place_order(("BOOK-1", 1)), [BOOK])
    assert no_price.value.code == "no_price"


def test_a_misspelt_hook_or_an_unknown_parameter_is_refused_as_the_oms_refuses_it():
    class Misspelt:
        @hookimpl
        def oms_tax_rates(self, line):
            return None

    class UnknownParameter:
        @hookimpl
        def oms_tax_rate(self, line, vat_number):
            return None

    with pytest.raises(pluggy.PluginValidationError, match="oms_tax_rates"):
        plugin_host(Misspelt())
    with pytest.raises(pluggy.PluginValidationError, match="vat_number"):
        plugin_host(UnknownParameter())


# --- Pricing --------------------------------------------------------------------------------------


def test_an_order_is_priced_by_the_plugins_and_the_line_keeps_its_tax_rate():
    host = plugin_host(BooksAreReduced(), catalog_price, flat_rate_shipping)

    priced = host.price(a_place_order(("BOOK-1", 2)), [BOOK])

    (line,) = priced.lines
    assert (line.tax, line.tax_rate) == (money("2.00"), LineTaxRate(rate=Decimal("0.05"), name="reduced (books)"))
    assert priced.totals.grand_total == money("47.00")  # 40.00 + 2.00 tax + 5.00 standard shipping


@pytest.mark.parametrize(
    ("answer", "problem"), [(9.99, "float"), (money("9.99", "EUR"), "EUR"), (money("-1.00"), "negative")]
)
def test_a_unit_price_the_oms_would_refuse_fails_the_same_way(answer, problem):
    class Pricer:
        @hookimpl
        def oms_unit_price(self):
            return answer

    host = plugin_host(Pricer(), flat_rate_shipping)

    with pytest.raises(PluginError, match=problem):
        host.price(a_place_order(("BOOK-1", 1)), [BOOK])


def test_a_refused_answer_names_the_plugin_object_by_its_class_as_the_oms_names_it_by_entry_point():
    # In the OMS a plugin's failure names its entry point; in the kit an object of a class names its
    # class (a second one of the same class its position), never a number the author cannot place.
    class Pricer:
        @hookimpl
        def oms_unit_price(self):
            return 9.99

    host = plugin_host(Pricer(), RecordingGateway(), RecordingGateway(method="other"), flat_rate_shipping)

    with pytest.raises(PluginError) as refused:
        host.price(a_place_order(("BOOK-1", 1)), [BOOK])
    assert str(refused.value) == "plugin Pricer returned float, expected Money (oms_unit_price)"
    assert refused.value.details == [{"plugin": "Pricer", "hook": "oms_unit_price"}]
    assert {host.manager.get_name(plugin) for plugin in host.manager.get_plugins()} == {
        "Pricer",
        "RecordingGateway",
        "RecordingGateway#2",
        "plugins.flat_rate_shipping",
    }


def test_pricing_needs_every_product_of_the_order():
    with pytest.raises(ValueError, match="MUG-1"):
        plugin_host(catalog_price).price(a_place_order(("MUG-1", 1)), [BOOK])


# --- Payments -------------------------------------------------------------------------------------


def test_payments_go_through_the_oms_checks_to_the_recording_gateway():
    gateway = RecordingGateway()
    host = plugin_host(gateway, test_payments)

    authorized = host.authorize("fake", "tok_anything", money("30.00"), order_id="ord_9")
    host.capture("fake", authorized.reference, money("20.00"), order_id="ord_9")
    host.refund("fake", authorized.reference, money("5.00"), order_id="ord_9")
    host.void("fake", authorized.reference, order_id="ord_9")

    assert host.payment_methods() == {"fake", "test"}
    assert [(c.operation, c.outcome, c.amount) for c in gateway.calls] == [
        ("authorize", "approved", money("30.00")),
        ("capture", "approved", money("20.00")),
        ("refund", "approved", money("5.00")),
        ("void", "approved", None),
    ]
    assert {c.authorization for c in gateway.calls[1:]} == {authorized.reference}
    assert host.authorize("test", "tok_approve", money("1.00")).outcome == "approved"  # not the gateway's method
    assert len(gateway.calls) == 4


def test_the_recording_gateway_declines_and_fails_transiently_when_told():
    gateway = RecordingGateway()
    host = plugin_host(gateway)
    gateway.fail_transiently("authorize", times=1)
    gateway.decline("capture", "insufficient funds")

    with pytest.raises(TransientError):
        host.authorize("fake", "tok", money("10.00"), attempt=0)
    retried = host.authorize("fake", "tok", money("10.00"), attempt=1)
    with pytest.raises(PaymentRefused, match="insufficient funds"):  # the gateway said no: never recorded
        host.capture("fake", retried.reference, money("10.00"))
    gateway.decline("authorize")
    with pytest.raises(PaymentDeclined):
        host.authorize("fake", "tok", money("10.00"), idempotency_key="second")

    assert [(c.operation, c.outcome, c.attempt) for c in gateway.calls] == [
        ("authorize", "transient_error", 0),
        ("authorize", "approved", 1),
        ("capture", "declined", None),
        ("authorize", "declined", 0),
    ]


def test_a_retry_with_the_same_key_gets_the_same_reference():
    host = plugin_host(RecordingGateway())

    first = host.authorize("fake", "tok", money("10.00"), idempotency_key="k1")
    again = host.authorize("fake", "tok", money("10.00"), idempotency_key="k1", attempt=1)
    other = host.authorize("fake", "tok", money("10.00"), idempotency_key="k2")

    assert first.reference == again.reference != other.reference


def test_a_method_no_plugin_takes_is_refused():
    # As for an order whose payment plugin was removed: nothing is made (core.payments._answered).
    with pytest.raises(PaymentRefused, match="no payment plugin takes method 'acme_pay'"):
        plugin_host(RecordingGateway()).authorize("acme_pay", "tok", money("1.00"))


def test_an_unknown_operation_is_a_mistake_in_the_test():
    with pytest.raises(ValueError, match="one of authorize"):
        RecordingGateway().decline("charge")


# --- Sourcing and shipments -------------------------------------------------------------------------


EAST = a_location("wh-east")
WEST = a_location("wh-west", latitude=39.53, longitude=-119.81)


def test_sourcing_runs_the_workflows_reserve_step_and_reserves_the_plan():
    host = plugin_host(nearest_sourcing)
    order = an_order(("MUG-1", 2))

    sourced = host.source(
        order, [EAST, WEST], [a_stock_level("MUG-1", "wh-east", 5), a_stock_level("MUG-1", "wh-west", 5)]
    )

    assert sourced.allocations == [Allocation(line_id="L1", location_id="wh-west", quantity=2)]  # nearer to CA
    assert host.inventory.stock[("MUG-1", "wh-west")].reserved == 2
    assert "wh-west" in " ".join(host.orders.histories[order.id][-1].detail["reasons"])


def test_stock_reserved_by_other_orders_is_not_available():
    host = plugin_host(nearest_sourcing)

    sourced = host.source(
        an_order(("MUG-1", 2)), [EAST, WEST],
        [a_stock_level("MUG-1", "wh-east", 5), a_stock_level("MUG-1", "wh-west", 5, reserved=4)],
    )  # fmt: skip

    assert [a.location_id for a in sourced.allocations] == ["wh-east"]


def test_a_plan_the_oms_would_refuse_fails_the_same_way():
    class HalfPlan:
        @hookimpl
        def oms_source_order(self, order, locations):
            line = order.lines[0]
            return SourcingPlan(
                allocations=[Allocation(line_id=line.line_id, location_id=locations[0].location_id, quantity=1)]
            )

    with pytest.raises(PluginError, match="every unit"):
        plugin_host(HalfPlan()).source(an_order(("MUG-1", 2)), [EAST], [a_stock_level("MUG-1", "wh-east", 5)])
    with pytest.raises(OutOfStock):
        plugin_host(nearest_sourcing).source(an_order(("MUG-1", 9)), [EAST], [a_stock_level("MUG-1", "wh-east", 5)])


def test_an_order_the_step_would_not_take_is_a_mistake_in_the_test():
    host = plugin_host(nearest_sourcing, flat_rate_carrier)
    stock = [a_stock_level("MUG-1", "wh-east", 5)]

    with pytest.raises(ValueError, match="authorized"):
        host.source(an_order(status=OrderStatus.PENDING), [EAST], stock)
    with pytest.raises(ValueError, match="not sourced yet"):
        host.source(sourced_from(an_order(), "wh-east"), [EAST], stock)
    with pytest.raises(ValueError, match="with allocations"):
        host.book_shipments(an_order(), [EAST], [a_product()])


def test_booking_runs_the_workflows_create_shipments_step_and_stores_the_label():
    host = plugin_host(flat_rate_carrier)
    order = sourced_from(an_order(("MUG-1", 2)), "wh-east")

    booked = host.book_shipments(order, [EAST], [a_product("MUG-1", weight_grams=350)])

    assert booked.status is OrderStatus.ALLOCATED
    (shipment,) = booked.shipments
    assert (shipment.location_id, shipment.carrier, shipment.service) == ("wh-east", "OMS Flat Rate", "Ground")
    assert host.labels.labels[shipment.id].startswith(b"%PDF-")
    assert shipment_reference(order.id, shipment.id).encode() in host.labels.labels[shipment.id]


def test_a_booking_the_oms_would_refuse_fails_the_same_way():
    class NoLabel:
        @hookimpl
        def oms_carrier_create_shipment(self):
            return {"carrier": "Acme", "tracking_number": "ACME1"}

    with pytest.raises(PluginError, match="expected CarrierShipment"):
        plugin_host(NoLabel()).book_shipments(sourced_from(an_order(), "wh-east"), [EAST], [a_product()])


def test_a_carrier_gets_the_origin_the_order_ships_from():
    seen = []

    class Carrier:
        @hookimpl
        def oms_carrier_create_shipment(self, origin, weight_grams):
            seen.append((origin.location_id, weight_grams))
            return CarrierShipment(carrier="Acme", service="Next day", tracking_number="ACME1", label=b"%PDF-1.4")

    plugin_host(Carrier()).book_shipments(
        sourced_from(an_order(("MUG-1", 3)), "wh-west"), [EAST, WEST], [a_product("MUG-1", weight_grams=350)]
    )

    assert seen == [("wh-west", 1050)]


def test_a_pickup_parcel_is_never_sent_to_a_carrier_the_oms_makes_its_pick_slip():
    asked = []

    class Carrier:
        @hookimpl
        def oms_carrier_create_shipment(self, shipment_id):
            asked.append(shipment_id)
            return CarrierShipment(carrier="Acme", service="Next day", tracking_number="ACME1", label=b"%PDF-1.4")

    store = a_location("store-sf", type="store", ships=False, pickup=True)
    order = sourced_from(an_order(fulfillment={"type": "pickup", "location_id": "store-sf"}), "store-sf")
    host = plugin_host(Carrier())

    (slip,) = host.book_shipments(order, [store], [a_product()]).shipments

    assert asked == [] and (slip.carrier, slip.service) == ("OMS", "Store pickup")
    assert shipment_reference(order.id, slip.id).encode() in host.labels.labels[slip.id]


# --- Tracking ---------------------------------------------------------------------------------------


def test_tracking_webhooks_are_read_and_checked_as_the_oms_reads_them():
    host = plugin_host(flat_rate_carrier)
    event = {
        "reference": "ord_1/shp_1",
        "tracking_number": flat_rate_carrier.tracking_number("shp_1"),
        "status": "delivered",
        "at": "2026-01-15T12:00:00Z",
    }

    (update,) = host.tracking_updates("oms-flat-rate", {"events": [event]})

    assert (update.order_id, update.shipment_id, update.status) == ("ord_1", "shp_1", "delivered")
    with pytest.raises(NotFound):
        host.tracking_updates("ups", {"events": [event]})


# --- Builders ------------------------------------------------------------------------------------------


def test_builders_make_valid_objects_and_take_overrides():
    order = an_order(("MUG-1", 2), ("BOOK-1", 1), unit_price="4.50", shipping_method="express")
    draft = a_draft((BOOK, 2), (a_product("MUG-1"), 1), shipping_address=an_address("GB", None))

    assert order.totals.grand_total == order.payment.authorized == money("13.50")
    assert [line.line_id for line in order.lines] == ["L1", "L2"]
    assert order.shipping_method == "express"
    assert (draft.subtotal, draft.shipping_address.country) == (money("50.00"), "GB")
    with pytest.raises(ValueError, match="attributes"):
        a_product(attributes={"pages": 320})


# --- The pytest fixtures -------------------------------------------------------------------------------


def test_the_fixtures_give_a_host_with_the_plugins_a_conftest_names(pytester: pytest.Pytester):
    pytester.makeconftest(
        """
        import pytest
        from plugins import catalog_price, flat_rate_shipping

        pytest_plugins = ["plugins.testing.fixtures"]

        @pytest.fixture
        def oms_plugins(recording_gateway):
            return [catalog_price, flat_rate_shipping, recording_gateway]
        """
    )
    pytester.makepyfile(
        """
        from plugins.testing import a_place_order, a_product, money

        def test_priced(oms_host):
            priced = oms_host.price(a_place_order(("MUG-1", 1)), [a_product("MUG-1")])
            assert priced.totals.grand_total == money("15.00")

        def test_paid(oms_host, recording_gateway):
            oms_host.authorize("fake", "tok", money("15.00"))
            assert [c.operation for c in recording_gateway.calls] == ["authorize"]
        """
    )

    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
