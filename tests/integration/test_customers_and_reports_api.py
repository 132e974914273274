"""Customers and reports in-process on moto: the query parameters as the HTTP contract takes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


@pytest.mark.parametrize("report", ["top-products", "top-customers", "top-regions"])
@pytest.mark.parametrize("channel", ["", "Web", "web shop", "-web"])
def test_a_report_for_what_cannot_be_a_channel_is_422_not_an_empty_report(api: InProcessApi, report: str, channel: str):
    # "channel=Web" answered 200 with no items: an operator read it as no sales in the web channel.
    answer = api.get(f"/reports/{report}", params={"currency": "USD", "channel": channel})
    assert_error(answer, 422, "validation_error", "channel")
    assert api.get(f"/reports/{report}", params={"currency": "USD", "channel": "web"}).status_code == 200


@pytest.mark.parametrize("report", ["top-products", "top-customers", "top-regions"])
@pytest.mark.parametrize(
    ("asked", "field"),
    [
        ({"from": "2026-02-30"}, "from"),  # no such day
        ({"to": "2026-13-01"}, "to"),
        ({"from": "0000-01-01"}, "from"),
        ({"from": "2026-1-01"}, "from"),  # not YYYY-MM-DD
        ({"from": "2026-03-01T00:00:00Z"}, "from"),  # a time, not a day
        ({"from": ""}, "from"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),  # after `to`
        ({"from": "2025-02-28", "to": "2026-03-01"}, "from"),  # over 366 days
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "XXX"}, "currency"),
        ({"currency": None}, "currency"),  # required
    ],
)
def test_a_report_asked_for_days_a_limit_or_a_currency_it_cannot_take_is_422_naming_it(
    api: InProcessApi, report: str, asked: dict[str, str | None], field: str
):
    params = {name: value for name, value in {"currency": "USD", **asked}.items() if value is not None}
    assert_error(api.get(f"/reports/{report}", params=params), 422, "validation_error", field)


@pytest.mark.parametrize("report", ["top-products", "top-customers", "top-regions"])
def test_a_report_takes_the_first_and_last_days_of_the_calendar_and_limits_of_one_and_a_hundred(
    api: InProcessApi, report: str
):
    first, last = {"from": "0001-01-01", "to": "0001-01-05"}, {"from": "9999-12-31", "to": "9999-12-31"}
    for asked in [first, {"to": "0001-01-05"}, last, {"limit": "1"}, {"limit": "100"}]:
        answer = api.get(f"/reports/{report}", params={"currency": "USD", **asked})
        assert (answer.status_code, answer.json()) == (200, {"items": []}), (asked, answer.text)


def test_customers_found_by_email_take_limit_and_cursor(api: InProcessApi):
    from core.aggregates import AggregateChange, CounterUpdate, CustomerSeen
    from functions.api.dependencies import container

    store = container().aggregate_store
    for n in range(3):
        seen = CustomerSeen(f"cus_{n}", "web", "buyers@acme.example", "2026-12-01T10:00:00.000000Z")
        counted = CounterUpdate(f"customer#cus_{n}", "web", {"orders_count": 1})
        store.apply(AggregateChange(f"ord_{n}", 1, [counted], seen))

    first = api.get("/customers", params={"email": "buyers@acme.example", "limit": 2})
    assert first.status_code == 200, first.text
    assert [c["id"] for c in first.json()["items"]] == ["cus_0", "cus_1"] and first.json()["next_cursor"]
    cursor = first.json()["next_cursor"]
    second = api.get("/customers", params={"email": "buyers@acme.example", "limit": 2, "cursor": cursor})
    assert (second.json()["items"][0]["id"], second.json()["next_cursor"]) == ("cus_2", None)
    elsewhere = api.get("/customers", params={"email": "other@acme.example", "cursor": cursor})
    assert_error(elsewhere, 422, "invalid_cursor", "cursor")
    assert_error(api.get("/customers", params={"email": "buyers@acme.example", "limit": 101}), 422)


def test_a_customer_and_a_report_summing_past_what_one_order_may_reach_are_shown_whole(api: InProcessApi):
    """One order's amounts stay below 10^15 (Money refuses more, AmountTooLarge); a customer's
    orders, or a report's, may add up to more: two orders of 600 trillion USD answered 422
    amount_too_large ("an amount of the order...") to GET /customers/{id} and every report of their
    days. The sums are shown whole, in the currency's minor units."""
    from core.aggregates import aggregate_change
    from functions.api.dependencies import container

    store = container().aggregate_store
    big = {"amount": "600000000000000.00", "currency": "USD"}
    zero = {"amount": "0.00", "currency": "USD"}
    for n in range(2):
        store.apply(aggregate_change(None, {
            "id": f"ord_big{n}", "status": "allocated", "channel": "web", "currency": "USD",
            "customer": {"id": "cus_big", "email": "big@acme.example"},
            "lines": [{"line_id": "L1", "sku": "YACHT", "quantity": 1, "unit_price": big, "discount": zero}],
            "shipping_address": {"country": "US", "region": "CA"}, "totals": {"grand_total": big},
            "payment": {"refunded": zero}, "created_at": "2026-11-30T10:00:00Z", "version": 1,
        }))  # fmt: skip

    customer = api.get("/customers/cus_big")
    assert customer.status_code == 200, customer.text
    assert customer.json()["totals"] == [
        {"currency": "USD", "ordered": {"amount": "1200000000000000.00", "currency": "USD"}, "refunded": zero}
    ]
    days = {"currency": "USD", "from": "2026-11-30", "to": "2026-11-30"}
    products = api.get("/reports/top-products", params=days)
    assert products.status_code == 200, products.text
    assert products.json()["items"] == [
        {"sku": "YACHT", "units": 2, "revenue": {"amount": "1200000000000000.00", "currency": "USD"}}
    ]
    for report in ("top-customers", "top-regions"):
        answer = api.get(f"/reports/{report}", params=days)
        assert answer.status_code == 200, answer.text
        assert answer.json()["items"][0]["revenue"]["amount"] == "1200000000000000.00"


def test_each_report_answers_its_ten_highest_by_revenue_unless_told_a_limit(api: InProcessApi):
    """API.md: `limit` (default 10), items sorted by revenue, highest first, each report's rows with
    exactly its fields. Twelve orders on one day, each its own product, customer and region, worth
    1.00 to 12.00: the default page is the ten worth most, dearest first."""
    from core.aggregates import aggregate_change
    from functions.api.dependencies import container

    store = container().aggregate_store
    zero = {"amount": "0.00", "currency": "USD"}
    for n in range(1, 13):
        price = {"amount": f"{n}.00", "currency": "USD"}
        store.apply(aggregate_change(None, {
            "id": f"ord_top{n}", "status": "allocated", "channel": "toptest", "currency": "USD",
            "customer": {"id": f"cus_top{n}", "email": f"top{n}@acme.example"},
            "lines": [{"line_id": "L1", "sku": f"TOP{n}", "quantity": 1, "unit_price": price, "discount": zero}],
            "shipping_address": {"country": "US", "region": f"R{n}"}, "totals": {"grand_total": price},
            "payment": {"refunded": zero}, "created_at": "2026-11-20T10:00:00Z", "version": 1,
        }))  # fmt: skip
    days = {"currency": "USD", "from": "2026-11-20", "to": "2026-11-20", "channel": "toptest"}
    dearest = range(12, 2, -1)
    rows = {
        "top-products": ({"sku", "units", "revenue"}, "sku", [f"TOP{n}" for n in dearest]),
        "top-customers": ({"customer_id", "orders", "revenue"}, "customer_id", [f"cus_top{n}" for n in dearest]),
        "top-regions": ({"country", "region", "orders", "revenue"}, "region", [f"R{n}" for n in dearest]),
    }
    for report, (fields, key, expected) in rows.items():
        answer = api.get(f"/reports/{report}", params=days)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"items"}, answer.json()
        items = answer.json()["items"]
        assert all(set(item) == fields for item in items), items
        assert [item[key] for item in items] == expected, report
        assert [item["revenue"]["amount"] for item in items] == [f"{n}.00" for n in dearest], report
        every = api.get(f"/reports/{report}", params={**days, "limit": 12}).json()["items"]
        assert [item["revenue"]["amount"] for item in every][-2:] == ["2.00", "1.00"], report
        assert_error(api.get(f"/reports/{report}", params={**days, "limit": 0}), 422, "validation_error", "limit")


def test_a_channel_keys_reports_and_customers_never_show_another_channels_sales(api: InProcessApi):
    """A storefront's key asking for a report without `channel` reads its own channel's, and another
    channel's customer is 404 to it (API.md): never the other storefront's sales and customers."""
    from core.aggregates import aggregate_change
    from functions.api.dependencies import container
    from tests.integration.in_process import issue

    store = container().aggregate_store
    zero = {"amount": "0.00", "currency": "USD"}
    for channel in ("rptweb", "rptmarket"):
        price = {"amount": "5.00", "currency": "USD"}
        store.apply(aggregate_change(None, {
            "id": f"ord_{channel}", "status": "allocated", "channel": channel, "currency": "USD",
            "customer": {"id": f"cus_{channel}", "email": f"{channel}@acme.example"},
            "lines": [{"line_id": "L1", "sku": channel.upper(), "quantity": 1, "unit_price": price, "discount": zero}],
            "shipping_address": {"country": "US", "region": channel}, "totals": {"grand_total": price},
            "payment": {"refunded": zero}, "created_at": "2026-11-22T10:00:00Z", "version": 1,
        }))  # fmt: skip
    web = issue(api, "reports:read", "orders:read", channel="rptweb")

    sold = api.get(
        "/reports/top-products", params={"currency": "USD", "from": "2026-11-22", "to": "2026-11-22"}, key=web
    )

    assert sold.status_code == 200, sold.text
    assert [item["sku"] for item in sold.json()["items"]] == ["RPTWEB"]
    assert api.get("/customers/cus_rptweb", key=web).status_code == 200
    assert_error(api.get("/customers/cus_rptmarket", key=web), 404, "not_found")


def test_a_customer_search_cursor_is_bound_to_the_channel_it_was_read_for(api: InProcessApi):
    # A web key's cursor names the last web customer it was shown: sent by the market key, it was
    # taken, and the market's list quietly began after that id (skipping market customers before it).
    from core.aggregates import AggregateChange, CounterUpdate, CustomerSeen
    from functions.api.dependencies import container
    from tests.integration.in_process import issue

    store = container().aggregate_store
    for n, channel in enumerate(["web", "market", "web", "market"]):
        seen = CustomerSeen(f"cus_b{n}", channel, "both@acme.example", "2026-12-01T10:00:00.000000Z")
        counted = CounterUpdate(f"customer#cus_b{n}", channel, {"orders_count": 1})
        store.apply(AggregateChange(f"ord_b{n}", 1, [counted], seen))
    web, market = issue(api, "orders:read", channel="web"), issue(api, "orders:read", channel="market")

    first = api.get("/customers", params={"email": "both@acme.example", "limit": 1}, key=web)
    assert [c["id"] for c in first.json()["items"]] == ["cus_b0"]
    cursor = first.json()["next_cursor"]
    assert cursor

    sent_by_market = api.get("/customers", params={"email": "both@acme.example", "cursor": cursor}, key=market)
    assert_error(sent_by_market, 422, "invalid_cursor", "cursor")
    sent_by_admin = api.get("/customers", params={"email": "both@acme.example", "cursor": cursor})
    assert_error(sent_by_admin, 422, "invalid_cursor", "cursor")
    rest = api.get("/customers", params={"email": "both@acme.example", "cursor": cursor}, key=web)
    assert ([c["id"] for c in rest.json()["items"]], rest.json()["next_cursor"]) == (["cus_b2"], None)


@pytest.mark.parametrize(
    "email", ["ada", "ada@example", "ada @example.com", "\u0000\u0001\u0002", "ada@exam\u200bple.com"]
)
def test_a_search_for_what_cannot_be_an_email_is_422_not_no_customer(api: InProcessApi, email: str):
    # "?email=ada" (the domain forgotten) answered 200 with no items: support read it as "no such
    # customer", though no order can be placed under an address without its domain.
    assert_error(api.get("/customers", params={"email": email}), 422, "validation_error", "email")


def test_a_search_whose_plus_the_query_string_read_as_a_space_says_so_not_a_pattern(api: InProcessApi):
    # An agent typed ?email=kim+shop@example.com: the + of a query string is a space, and the 422
    # answered the address's regular expression, naming nothing the agent could see was wrong.
    error = assert_error(api.get("/customers", params={"email": "kim shop@example.com"}), 422, "validation_error")
    (detail,) = error["details"]
    assert detail["field"] == "email" and "%2B" in detail["message"] and "pattern" not in detail["message"], detail
    # Not an address at all: told so in words, with what one looks like.
    (detail,) = assert_error(api.get("/customers", params={"email": "ada@example"}), 422)["details"]
    assert detail["field"] == "email" and "ada@example.com" in detail["message"], detail
    assert "pattern" not in detail["message"] and "%2B" not in detail["message"], detail


def test_a_search_by_email_trims_it_and_ignores_its_case(api: InProcessApi):
    from core.aggregates import AggregateChange, CounterUpdate, CustomerSeen
    from functions.api.dependencies import container

    seen = CustomerSeen("cus_trim", "web", "Grace@Example.com", "2026-12-01T10:00:00.000000Z")
    container().aggregate_store.apply(
        AggregateChange("ord_trim", 1, [CounterUpdate("customer#cus_trim", "web", {"orders_count": 1})], seen)
    )

    found = api.get("/customers", params={"email": "  GRACE@example.COM "})
    assert found.status_code == 200, found.text
    assert [c["id"] for c in found.json()["items"]] == ["cus_trim"]


def test_rows_of_equal_revenue_come_in_the_order_of_their_key_so_a_limit_cuts_the_same_ones(api: InProcessApi):
    from core.aggregates import aggregate_change
    from functions.api.dependencies import container

    store = container().aggregate_store
    zero, price = {"amount": "0.00", "currency": "USD"}, {"amount": "5.00", "currency": "USD"}
    for n in ("C", "A", "B"):
        store.apply(aggregate_change(None, {
            "id": f"ord_tie{n}", "status": "allocated", "channel": "tietest", "currency": "USD",
            "customer": {"id": f"cus_tie{n}", "email": f"tie{n}@acme.example"},
            "lines": [{"line_id": "L1", "sku": f"TIE{n}", "quantity": 1, "unit_price": price, "discount": zero}],
            "shipping_address": {"country": "US", "region": f"R{n}"}, "totals": {"grand_total": price},
            "payment": {"refunded": zero}, "created_at": "2026-11-21T10:00:00Z", "version": 1,
        }))  # fmt: skip
    days = {"currency": "USD", "from": "2026-11-21", "to": "2026-11-21", "channel": "tietest", "limit": 2}

    for report, key, expected in [("top-products", "sku", ["TIEA", "TIEB"]),
                                  ("top-customers", "customer_id", ["cus_tieA", "cus_tieB"]),
                                  ("top-regions", "region", ["RA", "RB"])]:  # fmt: skip
        for _ in range(2):
            items = api.get(f"/reports/{report}", params=days).json()["items"]
            assert [(item[key], item["revenue"]["amount"]) for item in items] == [(k, "5.00") for k in expected]
