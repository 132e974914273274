"""Money rules through the API: promo codes that do not stack, and one sku on many lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.test_handlers import api, event, seeded  # noqa: F401 (a fixture)


def place(**changes: Any) -> tuple[int, dict]:
    evt = event("api_place_order.json")
    evt["body"] = json.dumps({**json.loads(evt["body"]), **changes})
    for headers in (evt["headers"], evt["multiValueHeaders"]):
        headers.pop("Idempotency-Key")
    return api(evt)


def test_two_percent_off_codes_that_do_not_stack_are_422_naming_both(seeded):  # noqa: F811
    status, body = place(lines=[{"sku": "TSHIRT-BLK-M", "quantity": 6}], promo_codes=["WELCOME10", "BIGBASKET20"])

    assert status == 422
    assert body["error"]["code"] == "promo_codes_do_not_stack"
    assert [d["field"] for d in body["error"]["details"]] == ["promo_codes[0]", "promo_codes[1]"]


def test_a_sku_split_over_lines_keeps_the_lines_and_costs_what_one_line_would(seeded):  # noqa: F811
    status, whole = place(external_id="web-whole", lines=[{"sku": "TSHIRT-BLK-M", "quantity": 3}])
    assert status == 201, whole
    status, split = place(external_id="web-split", lines=[{"sku": "TSHIRT-BLK-M", "quantity": 1}] * 3)
    assert status == 201, split

    assert [(line["line_id"], line["quantity"]) for line in split["lines"]] == [("L1", 1), ("L2", 1), ("L3", 1)]
    assert split["totals"] == whole["totals"]


def address(**changes: Any) -> dict[str, Any]:
    body = json.loads(event("api_place_order.json")["body"])["shipping_address"]
    return {key: value for key, value in {**body, **changes}.items() if value is not None}


@pytest.mark.parametrize(
    ("region", "postal_code", "country"), [("CA", "94105", "US"), ("ON", "M5V 2T6", "CA"), ("QC", "H2Y 1C6", "CA")]
)
def test_an_order_without_a_region_is_taxed_for_the_state_or_province_its_postal_code_is_in(
    seeded,  # noqa: F811
    region: str,
    postal_code: str,
    country: str,
):
    named_address = address(region=region, postal_code=postal_code, country=country)
    status, named = place(external_id="web-named", shipping_address=named_address)
    assert status == 201, named
    status, unnamed = place(external_id="web-unnamed", shipping_address={**named_address, "region": None})
    assert status == 201, unnamed

    assert unnamed["shipping_address"]["region"] == region
    assert unnamed["totals"]["tax"] == named["totals"]["tax"] != {"amount": "0.00", "currency": "USD"}


@pytest.mark.parametrize(
    ("region", "postal_code", "country", "field", "said"),
    [
        ("XX", "94105", "US", "shipping_address.region", "a US region must be a USPS state or territory code"),
        ("Calif.", "94105", "US", "shipping_address.region", "a US region must be a USPS state or territory code"),
        # Oregon has no sales tax; 94105 is in California.
        ("OR", "94105", "US", "shipping_address.region", "ZIP code 94105 is in CA, not OR"),
        ("CA", "1", "US", "shipping_address.postal_code", "a US postal_code must be a ZIP code in use"),
        (None, "00000", "US", "shipping_address.postal_code", "a US postal_code must be a ZIP code in use"),
        ("XX", "M5V 2T6", "CA", "shipping_address.region", "a CA region must be a province or territory code"),
        # Alberta's 5% is the lowest tax in Canada; M5V 2T6 is in Toronto, Ontario (13%).
        ("AB", "M5V 2T6", "CA", "shipping_address.region", "postal code M5V 2T6 is in ON, not AB"),
        (None, "X0A 0H0", "CA", "shipping_address.region", "postal code X0A 0H0 is in NT or NU: region must say"),
        ("ON", "94105", "CA", "shipping_address.postal_code", "a CA postal_code must be a Canadian postal code"),
        (None, "Toronto", "CA", "shipping_address.postal_code", "a CA postal_code must be a Canadian postal code"),
    ],
)
def test_a_region_that_is_garbled_or_not_where_its_postal_code_is_is_422_naming_it_never_an_untaxed_order(
    seeded,  # noqa: F811
    region: str | None,
    postal_code: str,
    country: str,
    field: str,
    said: str,
):
    status, body = place(
        external_id="web-dodge", shipping_address=address(region=region, postal_code=postal_code, country=country)
    )

    assert status == 422, body
    assert [d["field"] for d in body["error"]["details"]] == [field]
    assert said in body["error"]["details"][0]["message"]


# The territories whose mail is addressed by US ZIP code, each its own ISO 3166-1 country, which
# the tax table does not tax: a California address sent as one of them was an untaxed order.
@pytest.mark.parametrize("country", ["PR", "GU", "VI", "AS", "MP", "FM", "MH", "PW"])
def test_a_zip_code_of_a_state_under_a_territory_s_country_code_is_422_not_an_untaxed_order(
    seeded,  # noqa: F811
    country: str,
):
    status, body = place(
        external_id=f"web-{country.lower()}",
        shipping_address=address(region="CA", postal_code="94105", country=country),
    )

    assert status == 422, body
    assert [d["field"] for d in body["error"]["details"]] == ["shipping_address.postal_code"]
    assert "94105 is in CA" in body["error"]["details"][0]["message"]


@pytest.mark.parametrize(
    ("country", "postal_code"),
    [("PR", "00901"), ("GU", "96910"), ("VI", "00802"), ("AS", "96799"), ("MP", "96950"), ("PW", "96939")],
)
def test_a_territory_s_own_zip_code_under_its_country_code_is_taken(
    seeded,  # noqa: F811
    country: str,
    postal_code: str,
):
    status, body = place(
        external_id=f"web-own-{country.lower()}",
        shipping_address=address(region=None, postal_code=postal_code, country=country),
    )

    assert status == 201, body
    assert body["shipping_address"]["country"] == country
