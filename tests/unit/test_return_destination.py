"""Where a return's units go back to (core.returns.return_destination, a Return's `return_to`): of
the locations whose parcels carried the returned lines, the nearest to the customer."""

from __future__ import annotations

from datetime import UTC, datetime

from core.models import Fulfillment, Location, Order, Shipment, ShipmentLine
from core.returns import return_destination
from tests.builders import address_body, location
from tests.unit.conftest import a_stored_order, an_address

AT = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
# Marunouchi, Tokyo: where the walk's customer lives (the address as a storefront sends it, with coordinates).
TOKYO_CUSTOMER = an_address("JP", None).model_copy(update={"city": "Tokyo", "latitude": 35.68, "longitude": 139.76})


def a_location(location_id: str, country: str, latitude: float, longitude: float, **fields: object) -> Location:
    return location(
        location_id, address=address_body(city=location_id, region=None, postal_code="1", country=country),
        latitude=latitude, longitude=longitude, **fields,
    )  # fmt: skip


TOKYO = a_location("wh-tokyo", "JP", 35.63, 139.88)
OSAKA = a_location("wh-osaka", "JP", 34.69, 135.50)
BERLIN = a_location("wh-berlin", "DE", 52.52, 13.40)
NETWORK = [BERLIN, OSAKA, TOKYO]


def parcel(location_id: str, *lines: tuple[str, int], status: str = "delivered") -> Shipment:
    return Shipment(
        id=f"shp_{location_id}", location_id=location_id, carrier="flat", service="ground", status=status,
        lines=[ShipmentLine(line_id=line_id, quantity=quantity) for line_id, quantity in lines],
        shipped_at=None if status == "pending" else AT,
    )  # fmt: skip


def an_order_shipped(*parcels: Shipment, **fields: object) -> Order:
    """Lines L1 (3 units) and L2 (2 units) to the Tokyo customer, in `parcels` (in their order)."""
    values = {"shipping_address": TOKYO_CUSTOMER, "shipments": list(parcels), **fields}
    return a_stored_order(("TEA", 3), ("CUP", 2), **values)


def test_units_shipped_from_three_countries_go_back_to_the_location_nearest_the_customer():
    # The walk: one unit each from Berlin, Osaka and Tokyo, Berlin's parcel first.
    order = an_order_shipped(*(parcel(location_id, ("L1", 1)) for location_id in ("wh-berlin", "wh-osaka", "wh-tokyo")))

    assert return_destination(order, {"L1"}, NETWORK) == "wh-tokyo"


def test_a_return_of_two_lines_goes_to_the_nearer_of_the_locations_that_shipped_them():
    order = an_order_shipped(parcel("wh-berlin", ("L1", 3)), parcel("wh-osaka", ("L2", 2)))

    assert return_destination(order, {"L1", "L2"}, NETWORK) == "wh-osaka"
    # A location that shipped none of the returned lines is not where they go back to, however near.
    assert return_destination(order, {"L1"}, NETWORK) == "wh-berlin"


def test_a_parcel_not_shipped_yet_is_no_origin_of_the_units_returned_one_on_its_way_is():
    order = an_order_shipped(parcel("wh-berlin", ("L1", 1)), parcel("wh-tokyo", ("L1", 2), status="pending"))
    on_its_way = order.model_copy(
        update={"shipments": [*order.shipments, parcel("wh-osaka", ("L1", 1), status="shipped")]}
    )

    assert return_destination(order, {"L1"}, NETWORK) == "wh-berlin"
    assert return_destination(order, {"L2"}, NETWORK) is None
    assert return_destination(on_its_way, {"L1"}, NETWORK) == "wh-osaka"


def test_at_the_same_distance_the_location_that_shipped_more_of_the_returned_units_is_chosen_then_the_first_by_id():
    # Two warehouses on one site: as near as each other to the customer.
    ariake, haneda = (a_location(name, "JP", 35.63, 139.88) for name in ("wh-ariake", "wh-haneda"))
    more_from_haneda = an_order_shipped(parcel("wh-ariake", ("L1", 1)), parcel("wh-haneda", ("L1", 2)))
    more_of_the_returned_from_ariake = an_order_shipped(
        parcel("wh-ariake", ("L1", 2)), parcel("wh-haneda", ("L1", 1), ("L2", 2))
    )
    as_many = an_order_shipped(parcel("wh-haneda", ("L1", 1)), parcel("wh-ariake", ("L1", 1)))

    assert return_destination(more_from_haneda, {"L1"}, [ariake, haneda]) == "wh-haneda"
    assert return_destination(more_of_the_returned_from_ariake, {"L1"}, [ariake, haneda]) == "wh-ariake"
    assert return_destination(as_many, {"L1"}, [ariake, haneda]) == "wh-ariake"


def test_with_the_customers_coordinates_a_location_across_the_border_that_is_nearer_comes_first():
    # A customer in Strasbourg: Kehl, across the Rhine, before Paris (the country breaks no distance).
    kehl, paris = a_location("wh-kehl", "DE", 48.57, 7.81), a_location("wh-paris", "FR", 48.86, 2.35)
    strasbourg = an_address("FR", None).model_copy(update={"latitude": 48.58, "longitude": 7.75})
    order = an_order_shipped(parcel("wh-paris", ("L1", 2)), parcel("wh-kehl", ("L1", 1)), shipping_address=strasbourg)

    assert return_destination(order, {"L1"}, [kehl, paris]) == "wh-kehl"


def test_without_the_customers_coordinates_a_location_in_their_country_comes_before_one_abroad():
    # No distance to measure: an address without coordinates (as most storefronts send them).
    order = an_order_shipped(parcel("wh-berlin", ("L1", 2)), parcel("wh-tokyo", ("L1", 1)))
    unlocated = order.model_copy(update={"shipping_address": an_address("JP", None)})

    assert return_destination(unlocated, {"L1"}, NETWORK) == "wh-tokyo"
    # In one country, the one that shipped the most of them.
    both_in_japan = unlocated.model_copy(
        update={"shipments": [parcel("wh-tokyo", ("L1", 1)), parcel("wh-osaka", ("L1", 2))]}
    )
    assert return_destination(both_in_japan, {"L1"}, NETWORK) == "wh-osaka"


def test_a_location_deleted_since_it_shipped_comes_after_every_one_that_still_exists():
    # No label can be addressed to a location the network no longer has (Returns._with_label books none).
    order = an_order_shipped(parcel("wh-tokyo", ("L1", 2)), parcel("wh-berlin", ("L1", 1)))

    assert return_destination(order, {"L1"}, [BERLIN, OSAKA]) == "wh-berlin"
    assert return_destination(order, {"L1"}, [OSAKA]) == "wh-tokyo"  # none exists: the most units, as before


def test_a_pickup_orders_units_go_back_to_its_store():
    store = a_location("store-ginza", "JP", 35.67, 139.77, type="store", ships=False, pickup=True)
    sapporo = a_location("wh-sapporo", "JP", 43.06, 141.35)
    # The customer's own address is in Sapporo; the order was collected at the Ginza store (distances are
    # measured from it, as sourcing measures them: a parcel from Sapporo, which a pickup never has, comes after).
    order = an_order_shipped(
        parcel("store-ginza", ("L1", 1)), parcel("wh-sapporo", ("L1", 1)),
        shipping_address=an_address("JP", None).model_copy(update={"latitude": 43.06, "longitude": 141.34}),
        fulfillment=Fulfillment(type="pickup", location_id="store-ginza"),
    )  # fmt: skip

    assert return_destination(order, {"L1"}, [sapporo, store]) == "store-ginza"
