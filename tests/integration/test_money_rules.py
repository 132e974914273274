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


def test_a_us_order_without_a_region_is_taxed_for_the_state_its_zip_code_is_in(seeded):  # noqa: F811
    status, named = place(external_id="web-named", shipping_address=address(region="CA", postal_code="94105"))
    assert status == 201, named
    status, unnamed = place(external_id="web-unnamed", shipping_address=address(region=None, postal_code="94105"))
    assert status == 201, unnamed

    assert unnamed["shipping_address"]["region"] == "CA"
    assert unnamed["totals"]["tax"] == named["totals"]["tax"] != {"amount": "0.00", "currency": "USD"}


@pytest.mark.parametrize(
    ("region", "postal_code", "field"),
    [
        ("XX", "94105", "shipping_address.region"),
        ("Calif.", "94105", "shipping_address.region"),
        ("OR", "94105", "shipping_address.region"),  # Oregon has no sales tax; 94105 is in California
        ("CA", "1", "shipping_address.postal_code"),
        (None, "00000", "shipping_address.postal_code"),
    ],
)
def test_a_us_region_that_is_garbled_or_not_where_its_zip_code_is_is_422_naming_it(
    seeded,  # noqa: F811
    region: str | None,
    postal_code: str,
    field: str,
):
    status, body = place(external_id="web-dodge", shipping_address=address(region=region, postal_code=postal_code))

    assert status == 422, body
    assert [d["field"] for d in body["error"]["details"]] == [field]


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
