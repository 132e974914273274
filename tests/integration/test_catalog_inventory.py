"""Catalog, network and stock endpoints through the in-process gateway (tests/integration/in_process.py)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.e2e.client import Catalog, assert_error, location_body, money, unique
from tests.integration.in_process import InProcessApi


def product_body(amount: str = "19.99", currency: str = "USD", **fields) -> dict:
    return {"name": "Black T-shirt", "price": money(amount, currency), "weight_grams": 200, **fields}


# --- Products ----------------------------------------------------------------------------------


def test_put_product_creates_with_201_then_replaces_with_200_and_get_returns_the_latest(api: InProcessApi):
    sku = unique("SKU").upper()

    created = api.put(f"/products/{sku}", json=product_body("19.99"))
    replaced = api.put(f"/products/{sku}", json=product_body("24.50", name="Black T-shirt v2", tax_code="reduced"))
    fetched = api.get(f"/products/{sku}")

    assert created.status_code == 201, created.text
    assert created.json()["sku"] == sku
    assert created.json()["price"] == money("19.99")
    assert created.json()["allow_backorder"] is False
    assert replaced.status_code == 200, replaced.text
    assert fetched.status_code == 200, fetched.text
    product = fetched.json()
    assert (product["sku"], product["name"], product["price"], product["tax_code"], product["weight_grams"]) == (
        sku,
        "Black T-shirt v2",
        money("24.50"),
        "reduced",
        200,
    )
    assert product == replaced.json()


def test_a_products_attributes_are_stored_and_returned_for_plugins_to_read(api: InProcessApi):
    sku = unique("SKU").upper()
    attributes = {"acme.tax_class": "books", "colour": "black"}

    created = api.put(f"/products/{sku}", json=product_body(attributes=attributes))
    replaced_without = api.put(f"/products/{sku}", json=product_body())

    assert created.status_code == 201, created.text
    assert created.json()["attributes"] == attributes
    assert replaced_without.json()["attributes"] == {}  # a PUT replaces the product whole
    api.put(f"/products/{sku}", json=product_body(attributes=attributes))
    assert api.get(f"/products/{sku}").json()["attributes"] == attributes


def test_an_attribute_value_is_kept_in_nfc_with_its_joiners_and_spaces(api: InProcessApi):
    # As in names: the zero-width non-joiner and joiner are taken (Persian words, emoji sequences
    # are spelt with them), a decomposed accent is stored composed. Unlike a name, a value is not
    # trimmed and may be empty.
    sku = unique("SKU").upper()
    sent = {
        "colour": "Noe\u0308l ",
        "family": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
        "fa": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "note": "",
    }

    created = api.put(f"/products/{sku}", json=product_body(attributes=sent))

    assert created.status_code == 201, created.text
    kept = sent | {"colour": "No\u00ebl "}
    assert created.json()["attributes"] == kept
    assert api.get(f"/products/{sku}").json()["attributes"] == kept


def test_a_product_price_without_the_currencys_minor_units_is_422_not_rounded(api: InProcessApi):
    # API.md: `amount` is a decimal string "with exactly the currency's minor units".
    sku = unique("SKU").upper()

    assert_error(api.put(f"/products/{sku}", json=product_body("7")), 422, "validation_error", "price.amount")
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")
    response = api.put(f"/products/{sku}", json=product_body("7.00"))

    assert response.status_code == 201, response.text
    assert api.get(f"/products/{sku}").json()["price"] == money("7.00")


def test_get_an_unknown_product_is_404_not_found(api: InProcessApi):
    assert_error(api.get(f"/products/{unique('NOPE').upper()}"), 404, "not_found")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weight_grams": 1.5}, "weight_grams"),
        ({"weight_grams": -1}, "weight_grams"),
        ({"allow_backorder": "yes"}, "allow_backorder"),
        ({"colour": "black"}, "colour"),
        ({"name": ""}, "name"),
        ({"attributes": {"pages": 320}}, "attributes.pages"),
        # An attribute value is free text as a name is (README Security): it reaches plugins, the
        # API's answers and logs, so a NUL, a bidi override, a C1 control, a line break or an
        # invisible character in one is refused, not stored.
        ({"attributes": {"colour": "red\u0000"}}, "attributes.colour"),
        ({"attributes": {"colour": "red\u202e"}}, "attributes.colour"),
        ({"attributes": {"colour": "red\u202e\u0000"}}, "attributes.colour"),
        ({"attributes": {"colour": "red\x85"}}, "attributes.colour"),
        ({"attributes": {"colour": "red\nblue"}}, "attributes.colour"),
        ({"attributes": {"colour": "red\u200bblue"}}, "attributes.colour"),
    ],
    ids=[
        "float-weight",
        "negative-weight",
        "string-bool",
        "unknown-field",
        "empty-name",
        "number-attribute",
        "nul-in-attribute",
        "bidi-override-in-attribute",
        "bidi-override-and-nul-in-attribute",
        "c1-control-in-attribute",
        "line-break-in-attribute",
        "zero-width-space-in-attribute",
    ],
)
def test_put_product_with_an_invalid_field_is_422_naming_it_and_stores_nothing(
    api: InProcessApi, change: dict, field: str
):
    sku = unique("SKU").upper()

    response = api.put(f"/products/{sku}", json=product_body(**change))

    assert_error(response, 422, "validation_error", field)
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")


# --- Locations ---------------------------------------------------------------------------------


def every_location(api: InProcessApi) -> list[dict]:
    """GET /locations, page after page."""
    items: list[dict] = []
    cursor = None
    while True:
        page = api.get("/locations", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


def test_put_location_creates_with_201_replaces_with_200_and_get_locations_lists_it(api: InProcessApi):
    location_id = unique("loc")

    created = api.put(f"/locations/{location_id}", json=location_body(name="North"))
    replaced = api.put(f"/locations/{location_id}", json=location_body(name="North (renamed)", pickup=True))
    listed = every_location(api)

    assert created.status_code == 201, created.text
    assert created.json()["location_id"] == location_id
    assert replaced.status_code == 200, replaced.text
    mine = [item for item in listed if item["location_id"] == location_id]
    assert len(mine) == 1
    assert (mine[0]["name"], mine[0]["type"], mine[0]["pickup"], mine[0]["ships"]) == (
        "North (renamed)",
        "warehouse",
        True,
        True,
    )
    assert mine[0]["address"]["country"] == "US"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "depot"}, "type"),
        ({"latitude": 91}, "latitude"),
        ({"ships": "true"}, "ships"),
        ({"address": {"name": "X", "line1": "1 St", "city": "Y", "postal_code": "1", "country": "USA"}}, "address"),
    ],
    ids=["bad-type", "latitude-out-of-range", "string-bool", "bad-country"],
)
def test_put_location_with_an_invalid_field_is_422_and_lists_nothing(api: InProcessApi, change: dict, field: str):
    location_id = unique("loc")

    response = api.put(f"/locations/{location_id}", json=location_body(**change))

    error = assert_error(response, 422, "validation_error")
    assert any(detail["field"].startswith(field) for detail in error["details"]), error
    assert location_id not in [item["location_id"] for item in every_location(api)]


def test_get_locations_pages_by_limit_default_25_in_location_id_order(api: InProcessApi):
    for _ in range(26):
        assert api.put(f"/locations/{unique('loc')}", json=location_body()).status_code == 201

    first = api.get("/locations")
    small = [api.get("/locations", params={"limit": 2})]
    while small[-1].json()["next_cursor"] is not None:
        small.append(api.get("/locations", params={"limit": 2, "cursor": small[-1].json()["next_cursor"]}))

    assert first.status_code == 200, first.text
    assert len(first.json()["items"]) == 25
    assert first.json()["next_cursor"] is not None
    assert all(page.status_code == 200 and len(page.json()["items"]) <= 2 for page in small)
    walked = [item["location_id"] for page in small for item in page.json()["items"]]
    assert walked == sorted(set(walked))
    assert walked == [item["location_id"] for item in every_location(api)]
    assert walked[:25] == [item["location_id"] for item in first.json()["items"]]


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 101}, {"limit": "ten"}], ids=["zero", "over-100", "word"])
def test_get_locations_with_a_limit_outside_1_to_100_is_422(api: InProcessApi, query: dict):
    assert_error(api.get("/locations", params=query), 422, "validation_error", "limit")


def _location_cursor(document: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        _location_cursor({"l": "webhooks", "after": "L1"}),
        _location_cursor({"after": "L1"}),
        _location_cursor({"l": "locations", "after": ""}),
        _location_cursor({"l": "locations", "after": 1}),
    ],
    ids=["not base64 json", "another list's", "no list", "after nothing", "after a number"],
)
def test_get_locations_with_a_cursor_it_never_issued_is_422_invalid_cursor(api: InProcessApi, cursor: str):
    # Never read as a place in the network: `after` "" would answer the first page again.
    assert_error(api.get("/locations", params={"cursor": cursor}), 422, "invalid_cursor", "cursor")


# --- Inventory ---------------------------------------------------------------------------------


def test_put_inventory_sets_a_count_and_answers_the_record_with_available(api: InProcessApi, catalog: Catalog):
    sku, warehouse = catalog.product("9.99"), catalog.location()

    response = api.put(f"/inventory/{sku}/{warehouse}", json={"on_hand": 12})

    assert response.status_code == 200, response.text
    record = response.json()
    assert (record["sku"], record["location_id"], record["on_hand"], record["reserved"], record["available"]) == (
        sku,
        warehouse,
        12,
        0,
        12,
    )


def test_a_stock_take_replaces_the_previous_count(api: InProcessApi, catalog: Catalog):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 12)

    response = api.put(f"/inventory/{sku}/{warehouse}", json={"on_hand": 3})

    assert response.status_code == 200, response.text
    assert (response.json()["on_hand"], response.json()["available"]) == (3, 3)
    assert api.get(f"/inventory/{sku}").json()["available"] == 3


def test_an_adjustment_of_plus_5_adds_to_on_hand(api: InProcessApi, catalog: Catalog):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 10)

    response = api.post(f"/inventory/{sku}/{warehouse}/adjustments", json={"delta": 5, "reason": "receipt"})

    assert response.status_code == 200, response.text
    assert (response.json()["on_hand"], response.json()["reserved"], response.json()["available"]) == (15, 0, 15)


def test_an_adjustment_below_zero_is_409_and_changes_nothing(api: InProcessApi, catalog: Catalog):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 10)
    added = api.post(f"/inventory/{sku}/{warehouse}/adjustments", json={"delta": 5, "reason": "receipt"})
    assert added.status_code == 200, added.text
    before = api.get(f"/inventory/{sku}").json()

    response = api.post(f"/inventory/{sku}/{warehouse}/adjustments", json={"delta": -100, "reason": "damage"})

    assert_error(response, 409, "insufficient_stock")
    after = api.get(f"/inventory/{sku}")
    assert after.status_code == 200
    assert after.json() == before
    assert after.json()["available"] == 15


def test_an_adjustment_down_to_exactly_zero_is_allowed(api: InProcessApi, catalog: Catalog):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 4)

    response = api.post(f"/inventory/{sku}/{warehouse}/adjustments", json={"delta": -4, "reason": "damage"})

    assert response.status_code == 200, response.text
    assert (response.json()["on_hand"], response.json()["available"]) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"on_hand": -1}, "on_hand"),
        ({"on_hand": "5"}, "on_hand"),
        ({"on_hand": 2.5}, "on_hand"),
        ({"on_hand": 5, "reserved": 1}, "reserved"),
        ({}, "on_hand"),
        ({"on_hand": 1_000_000_001}, "on_hand"),  # past the most a stock take counts
        ({"on_hand": 10**39}, "on_hand"),  # past DynamoDB's 38 digits
        ({"on_hand": 5.0}, "on_hand"),  # a whole number sent as a float
        ({"on_hand": True}, "on_hand"),
    ],
    ids=[
        "negative",
        "string",
        "float",
        "reserved-is-server-side",
        "missing",
        "past-the-cap",
        "39-digits",
        "whole-float",
        "boolean",
    ],
)
def test_put_inventory_with_an_invalid_count_is_422_and_changes_nothing(
    api: InProcessApi, catalog: Catalog, body: dict, field: str
):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 7)

    response = api.put(f"/inventory/{sku}/{warehouse}", json=body)

    assert_error(response, 422, "validation_error", field)
    assert api.get(f"/inventory/{sku}").json()["available"] == 7


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delta": 0, "reason": "noop"}, "delta"),
        ({"delta": 1}, "reason"),
        ({"delta": "1", "reason": "x"}, "delta"),
        ({"delta": 1.5, "reason": "x"}, "delta"),
        ({"delta": -(10**39), "reason": "x"}, "delta"),  # past DynamoDB's 38 digits
        ({"delta": 1_000_000_001, "reason": "x"}, "delta"),
        ({"delta": 1, "reason": " "}, "reason"),
    ],
    ids=["zero", "no-reason", "string-delta", "fractional", "39-digits", "past-the-cap", "blank-reason"],
)
def test_an_invalid_adjustment_is_422_and_changes_nothing(api: InProcessApi, catalog: Catalog, body: dict, field: str):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    catalog.stock(sku, warehouse, 7)

    response = api.post(f"/inventory/{sku}/{warehouse}/adjustments", json=body)

    assert_error(response, 422, "validation_error", field)
    assert api.get(f"/inventory/{sku}").json()["available"] == 7


@pytest.mark.parametrize("unknown", ["sku", "location"])
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("PUT", "", {"on_hand": 1}), ("POST", "/adjustments", {"delta": 1, "reason": "receipt"})],
    ids=["count", "adjustment"],
)
def test_stock_for_an_unknown_sku_or_location_is_404_and_creates_nothing(
    api: InProcessApi, catalog: Catalog, unknown: str, method: str, suffix: str, body: dict
):
    sku, warehouse = catalog.product("9.99"), catalog.location()
    if unknown == "sku":
        sku = unique("NOPE").upper()
    else:
        warehouse = unique("nowhere")

    response = api.request(method, f"/inventory/{sku}/{warehouse}{suffix}", json=body)

    assert_error(response, 404, "not_found")
    summary = api.get(f"/inventory/{sku}")
    if unknown == "sku":
        assert_error(summary, 404, "not_found")
    else:
        assert summary.json()["locations"] == []


def test_get_inventory_sums_available_over_locations(api: InProcessApi, catalog: Catalog):
    sku = catalog.product("9.99")
    east, west = catalog.location(name="East"), catalog.location(name="West")
    catalog.stock(sku, east, 7)
    catalog.stock(sku, west, 5)

    response = api.get(f"/inventory/{sku}")

    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["sku"] == sku
    assert summary["available"] == 12
    assert sorted(
        (entry["location_id"], entry["on_hand"], entry["reserved"], entry["available"])
        for entry in summary["locations"]
    ) == sorted([(east, 7, 0, 7), (west, 5, 0, 5)])


def test_get_inventory_of_a_product_without_stock_is_zero_with_no_locations(api: InProcessApi, catalog: Catalog):
    sku = catalog.product("9.99")

    response = api.get(f"/inventory/{sku}")

    assert response.status_code == 200, response.text
    assert response.json() == {"sku": sku, "available": 0, "locations": []}


def test_get_inventory_of_an_unknown_sku_is_404(api: InProcessApi):
    assert_error(api.get(f"/inventory/{unique('NOPE').upper()}"), 404, "not_found")


# U+1D15E (a half note) is one of the few characters NFC writes as two (a composition exclusion).
HALF_NOTE = "\U0001d15e"


@pytest.mark.parametrize(
    ("change", "field"),
    [({"name": HALF_NOTE * 200}, "name"), ({"attributes": {"tune": HALF_NOTE * 500}}, "attributes.tune")],
    ids=["name", "attribute"],
)
def test_text_whose_nfc_is_over_its_limit_is_422_naming_it_and_stores_nothing(api: InProcessApi, change, field):
    # What is stored is the NFC and the limit is on what is stored: a product whose name or
    # attribute NFC made longer than the limit would fail every read of it (the catalog's, an order's).
    sku = unique("SKU").upper()

    assert_error(api.put(f"/products/{sku}", json=product_body(**change)), 422, "validation_error", field)
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")
    kept = api.put(f"/products/{sku}", json=product_body(name=HALF_NOTE * 100, attributes={"tune": HALF_NOTE * 250}))
    assert kept.status_code == 201, kept.text
    assert kept.json()["name"] == "\U0001d157\U0001d165" * 100
    assert kept.json()["attributes"]["tune"] == "\U0001d157\U0001d165" * 250
