"""Placing an order prices it through the plugins: exact line and order totals, through the in-process
API on moto (tests/integration/conftest.py's `api` and `catalog`: the gateway, the authorizer and the
API function, with the `test` gateway on; no HTTP server takes part)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.e2e.client import TOKYO, Catalog, amounts, assert_error, money, order_body
from tests.integration.in_process import InProcessApi
from tests.unit.test_pricing import FreeLine


def line_view(line: dict) -> tuple:
    return (
        line["quantity"],
        line["unit_price"]["amount"],
        line["discount"]["amount"],
        line["tax"]["amount"],
        line["total"]["amount"],
    )


def totals_view(order: dict) -> dict[str, str]:
    return {name: value["amount"] for name, value in order["totals"].items()}


def assert_sums_hold(order: dict) -> None:
    """The contract's arithmetic: line total = q × unit − discount + tax; totals are sums of lines."""
    lines = order["lines"]

    def d(value: dict) -> Decimal:
        return Decimal(value["amount"])

    for line in lines:
        assert d(line["total"]) == line["quantity"] * d(line["unit_price"]) - d(line["discount"]) + d(line["tax"])
    totals = order["totals"]
    assert d(totals["subtotal"]) == sum(line["quantity"] * d(line["unit_price"]) for line in lines)
    assert d(totals["discount"]) == sum(d(line["discount"]) for line in lines)
    assert d(totals["tax"]) == sum(d(line["tax"]) for line in lines)
    assert d(totals["grand_total"]) == sum(d(line["total"]) for line in lines) + d(totals["shipping"])


# Three lines chosen so that half-even and half-up rounding differ:
#   11.11 x 1: discount 1.111 -> 1.11, tax (10.00 x 7.25% = 0.725) -> 0.72 (half-up would give 0.73)
#   12.25 x 1: discount 1.225 -> 1.22 (half-up 1.23), tax (11.03 x 7.25% = 0.799675) -> 0.80
#    3.35 x 3: discount 1.005 -> 1.00 (half-up 1.01), tax (9.05 x 7.25% = 0.656125) -> 0.66
WELCOME10_LINES = [
    (1, "11.11", "1.11", "0.72", "10.72"),
    (1, "12.25", "1.22", "0.80", "11.83"),
    (3, "3.35", "1.00", "0.66", "9.71"),
]


def test_a_usd_order_takes_catalog_prices_welcome10_per_line_and_california_tax_rounded_half_even(
    api: InProcessApi, catalog: Catalog
):
    skus = catalog.stocked("11.11", "12.25", "3.35")
    body = order_body((skus[0], 1), (skus[1], 1), (skus[2], 3), promo_codes=["WELCOME10"])

    response = api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    order = response.json()
    assert re.fullmatch(r"ord_[a-z2-7]{24}", order["id"])
    assert order["status"] == "pending"
    assert (order["channel"], order["external_id"], order["currency"]) == ("web", body["external_id"], "USD")
    assert order["customer"]["id"] == body["customer"]["id"]
    assert [line["sku"] for line in order["lines"]] == skus
    assert [line_view(line) for line in order["lines"]] == WELCOME10_LINES
    assert totals_view(order) == {
        "subtotal": "33.41",
        "discount": "3.33",
        "shipping": "5.00",
        "tax": "2.18",
        "grand_total": "37.26",
    }
    assert order["shipping_method"] == "standard"
    assert order["payment"]["method"] == "test"
    assert order["payment"]["status"] in {"pending", "authorized"}
    assert order["version"] >= 1
    assert_sums_hold(order)
    for value in amounts(order):
        assert value["currency"] == "USD"
        assert re.fullmatch(r"\d+\.\d{2}", value["amount"]), value


def test_freeship_makes_shipping_zero_and_leaves_the_lines_alone(api: InProcessApi, catalog: Catalog):
    skus = catalog.stocked("11.11", "12.25", "3.35")
    body = order_body((skus[0], 1), (skus[1], 1), (skus[2], 3), promo_codes=["WELCOME10", "FREESHIP"])

    response = api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    order = response.json()
    assert [line_view(line) for line in order["lines"]] == WELCOME10_LINES
    assert order["totals"]["shipping"] == money("0.00")
    assert order["totals"]["grand_total"] == money("32.26")
    assert order["shipping_method"] == "standard"
    assert_sums_hold(order)


def test_save5_is_spread_over_two_lines_in_proportion_to_their_subtotals(api: InProcessApi, catalog: Catalog):
    # 5.00 over subtotals 10.00 and 20.00: 1.666.. -> 1.67 and 3.333.. -> 3.33, adding up to 5.00.
    skus = catalog.stocked("10.00", "20.00")
    body = order_body((skus[0], 1), (skus[1], 1), promo_codes=["SAVE5"])

    response = api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    order = response.json()
    assert [line_view(line) for line in order["lines"]] == [
        (1, "10.00", "1.67", "0.60", "8.93"),  # tax: 8.33 x 7.25% = 0.603925
        (1, "20.00", "3.33", "1.21", "17.88"),  # tax: 16.67 x 7.25% = 1.208575
    ]
    assert totals_view(order) == {
        "subtotal": "30.00",
        "discount": "5.00",
        "shipping": "5.00",
        "tax": "1.81",
        "grand_total": "31.81",
    }
    assert_sums_hold(order)


@pytest.fixture
def gift(api: InProcessApi, catalog: Catalog) -> Iterator[str]:
    """A product at 10.00 that a plugin's own rule (FreeLine, on the API's plugins for one test)
    gives away: each of its lines discounted by its whole subtotal."""
    from functions.api.dependencies import container
    from functions.bootstrap import forget_warm_containers

    (sku,) = catalog.stocked("10.00")
    rule = FreeLine(sku)
    container().plugins.register(rule)
    yield sku
    container().plugins.unregister(rule)
    forget_warm_containers()


def test_save5_comes_off_the_paid_line_in_full_when_a_rule_gave_the_other_line_away(
    api: InProcessApi, catalog: Catalog, gift: str
):
    # SAVE5 spread in proportion to the subtotals put 2.50 on the free line, capped away: the order
    # cost 13.04 where 5.00 off the mug makes it 10.36.
    (mug,) = catalog.stocked("10.00")

    response = api.post("/orders", json=order_body((mug, 1), (gift, 1), promo_codes=["SAVE5"]))

    assert response.status_code == 201, response.text
    order = response.json()
    assert [line_view(line) for line in order["lines"]] == [
        (1, "10.00", "5.00", "0.36", "5.36"),  # tax: 5.00 x 7.25% = 0.3625
        (1, "10.00", "10.00", "0.00", "0.00"),
    ]
    assert totals_view(order) == {
        "subtotal": "20.00",
        "discount": "15.00",
        "shipping": "5.00",
        "tax": "0.36",
        "grand_total": "10.36",
    }
    assert_sums_hold(order)


def test_a_jpy_order_has_whole_yen_amounts_japanese_tax_and_700_yen_standard_shipping(
    api: InProcessApi, catalog: Catalog
):
    # 1225 x 1: discount 122.5 -> 122 (half-even), tax 1103 x 10% = 110.3 -> 110
    # 1234 x 2: discount 246.8 -> 247, tax 2221 x 10% = 222.1 -> 222
    skus = catalog.stocked("1225", "1234", currency="JPY")
    body = order_body((skus[0], 1), (skus[1], 2), currency="JPY", shipping_address=TOKYO, promo_codes=["WELCOME10"])

    response = api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["currency"] == "JPY"
    assert [line_view(line) for line in order["lines"]] == [
        (1, "1225", "122", "110", "1213"),
        (2, "1234", "247", "222", "2443"),
    ]
    assert totals_view(order) == {
        "subtotal": "3693",
        "discount": "369",
        "shipping": "700",
        "tax": "332",
        "grand_total": "4356",
    }
    assert order["shipping_method"] == "standard"
    assert_sums_hold(order)
    for value in amounts(order):
        assert value["currency"] == "JPY"
        assert re.fullmatch(r"\d+", value["amount"]), value


def test_an_order_in_a_currency_no_shipping_plugin_quotes_is_422_naming_the_currency_not_only_the_address(
    api: InProcessApi, catalog: Catalog
):
    # A Swiss storefront: the built-in shipping plugins have no CHF rates, and the same address in
    # EUR is served, so the currency is what the merchant has to change (or a plugin to add).
    (watch,) = catalog.stocked("199.00", currency="CHF")
    zurich = {"name": "Jürg Küng", "line1": "Bahnhofstr. 1", "city": "Zürich", "postal_code": "8001", "country": "CH"}

    error = assert_error(
        api.post("/orders", json=order_body((watch, 1), currency="CHF", shipping_address=zurich)),
        422,
        "no_shipping_method",
        "currency",
        "shipping_address",
    )

    assert "an order in CHF to CH" in error["message"], error
    (in_eur,) = catalog.stocked("199.00", currency="EUR")
    assert api.post("/orders", json=order_body((in_eur, 1), currency="EUR", shipping_address=zurich)).status_code == 201


def test_get_order_returns_exactly_what_post_returned(api: InProcessApi, catalog: Catalog):
    (sku,) = catalog.stocked("19.99")
    placed = api.post("/orders", json=order_body((sku, 2), promo_codes=["WELCOME10"]))
    assert placed.status_code == 201, placed.text

    fetched = api.get(f"/orders/{placed.json()['id']}")

    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == placed.json()


def test_history_of_a_new_order_is_one_created_entry_to_pending_by_the_admin_key(api: InProcessApi, catalog: Catalog):
    (sku,) = catalog.stocked("19.99")
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order = placed.json()

    response = api.get(f"/orders/{order['id']}/history")

    assert response.status_code == 200, response.text
    history = response.json()
    assert set(history) == {"items", "next_cursor"}  # paged as every list (API.md conventions)
    assert len(history["items"]) == 1 and history["next_cursor"] is None
    (entry,) = history["items"]
    assert entry["type"] == "created"
    assert entry["from_status"] is None
    assert entry["to_status"] == "pending"
    assert entry["actor"] == "key_admin"
    assert entry["at"] == order["created_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", entry["at"])


def test_an_order_whose_subtotal_reaches_10_to_the_15_is_422_with_a_minimum_subtotal_code_too(
    api: InProcessApi, catalog: Catalog
):
    # Two lines each below 10^15 that add up to more: 422 without a code, and 422 (not a promotion
    # plugin's 500) when BIGBASKET20 asks for the subtotal to check its minimum.
    skus = catalog.stocked("99999999999999.99", "99999999999999.98")
    body = order_body((skus[0], 6), (skus[1], 6), promo_codes=["BIGBASKET20"])

    assert_error(api.post("/orders", json=body), 422, "amount_too_large", "lines")


def test_an_edit_whose_lines_reach_10_to_the_15_is_422_naming_the_line_and_changes_nothing(
    api: InProcessApi, catalog: Catalog
):
    # API.md: 422 validation, `details` naming the field (as every other 422 of an edit does).
    cheap, dear = catalog.stocked("1.00", "600000000000000.00")
    placed = api.post("/orders", json=order_body((cheap, 1)))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    edit = {"lines": [{"sku": cheap, "quantity": 1}, {"sku": dear, "quantity": 2}]}

    refused = api.request("PATCH", f"/orders/{order['id']}", json=edit, headers={"If-Match": str(order["version"])})

    error = assert_error(refused, 422, "amount_too_large", "lines[1].quantity")
    assert [detail["field"] for detail in error["details"]] == ["lines[1].quantity"]
    assert api.get(f"/orders/{order['id']}").json()["version"] == order["version"]


def test_lines_of_one_sku_reaching_10_to_the_15_together_are_422_saying_so_not_that_each_line_does(
    api: InProcessApi, catalog: Catalog
):
    # Two 1-unit lines of one sku are priced as one (its units summed): together they reach 10^15.
    # Each line was told "2 × 500000000000000.00 USD reaches 10^15 USD" though it holds one unit.
    (sku,) = catalog.stocked("500000000000000.00")
    body = order_body((sku, 1), (sku, 1))

    error = assert_error(api.post("/orders", json=body), 422, "amount_too_large")

    said = f"the 2 units of {sku} on lines[0] and lines[1]: 2 × 500000000000000.00 USD reaches 10^15 USD"
    assert error["details"] == [
        {"field": "lines[0].quantity", "message": said},
        {"field": "lines[1].quantity", "message": said},
    ]
