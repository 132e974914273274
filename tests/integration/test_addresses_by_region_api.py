"""An edit's new address and a location's address name their US state or Canadian province for
sure, as a new order's does (in-process API on moto): filled in from the postal code when missing,
422 naming the field when garbled or not where the postal code is. The rule's cells are in
tests/unit/test_addresses_by_region.py, a new order's in tests/integration/test_money_rules.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import address_body, location_body
from tests.e2e.client import Catalog, assert_error, order_body

TORONTO = address_body(city="Toronto", region=None, postal_code="M5V 2T6", country="CA")
SAN_FRANCISCO = address_body(region=None)

# An address whose region is not certain, and the words that say why.
REFUSED = [
    ({**SAN_FRANCISCO, "region": "OR"}, "ZIP code 94105 is in CA, not OR"),
    ({**TORONTO, "region": "AB"}, "postal code M5V 2T6 is in ON, not AB"),
    ({**TORONTO, "region": "XX"}, "a CA region must be a province or territory code"),
    ({**TORONTO, "postal_code": "X0A 0H0"}, "postal code X0A 0H0 is in NT or NU: region must say which"),
]


def edit(api: Any, catalog: Catalog, changes: dict[str, Any]) -> Any:
    (sku,) = catalog.stocked("10.00")
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    return api.request("PATCH", f"/orders/{order['id']}", json=changes, headers={"If-Match": str(order["version"])})


@pytest.mark.parametrize(("address", "region"), [(SAN_FRANCISCO, "CA"), (TORONTO, "ON")])
def test_an_edit_to_an_address_without_a_region_is_taxed_for_the_one_its_postal_code_is_in(
    api, catalog, address, region
):
    edited = edit(api, catalog, {"shipping_address": address})

    assert edited.status_code == 200, edited.text
    assert edited.json()["shipping_address"]["region"] == region
    assert edited.json()["totals"]["tax"] != {"amount": "0.00", "currency": "USD"}


@pytest.mark.parametrize(("address", "said"), REFUSED)
def test_an_edit_to_an_address_whose_region_is_not_certain_is_422_naming_the_region(api, catalog, address, said):
    refused = assert_error(edit(api, catalog, {"shipping_address": address}), 422, None, "shipping_address.region")

    assert said in refused["details"][0]["message"]


@pytest.mark.parametrize(("address", "region"), [(SAN_FRANCISCO, "CA"), (TORONTO, "ON")])
def test_a_location_without_a_region_takes_the_one_its_postal_code_is_in(api, address, region):
    put = api.put(f"/locations/wh-{region.lower()}", json=location_body(address=address))

    assert put.status_code == 201, put.text
    assert put.json()["address"]["region"] == region


@pytest.mark.parametrize(("address", "said"), REFUSED)
def test_a_location_whose_region_is_not_certain_is_422_naming_the_region(api, address, said):
    refused = assert_error(
        api.put("/locations/wh-unsure", json=location_body(address=address)), 422, None, "address.region"
    )

    assert said in refused["details"][0]["message"]
