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
