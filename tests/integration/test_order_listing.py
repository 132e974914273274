"""GET /orders: newest first, paginated with opaque cursors bound to their filter (through the
in-process gateway, tests/integration/in_process.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, unique
from tests.integration.in_process import InProcessApi


@dataclass(frozen=True)
class Orders:
    """Seven orders of one customer (five in channel `main`, two in `side`) and one order of
    another customer in `main`; ids in the order they were placed."""

    customer: str
    main: str
    side: str
    customer_ids: list[str]  # the customer's seven, oldest first
    main_ids: list[str]  # every order in `main`, oldest first
    stranger_id: str

    @property
    def everyone(self) -> list[str]:
        """All eight, oldest first."""
        return [*self.customer_ids, self.stranger_id]


@pytest.fixture(scope="module")
def orders(api: InProcessApi) -> Orders:
    """Read-only for every test here: built once per module, since listing tests only read."""
    (sku,) = Catalog(api).stocked("5.00")
    customer = {"id": unique("cus"), "email": "grace@example.com"}
    main, side = unique("main"), unique("side")
    placed: list[tuple[str, str]] = []  # (channel, id)
    for channel in [main, side, main, main, side, main, main]:
        response = api.post("/orders", json=order_body((sku, 1), channel=channel, customer=customer))
        assert response.status_code == 201, response.text
        placed.append((channel, response.json()["id"]))
    stranger = api.post("/orders", json=order_body((sku, 1), channel=main))
    assert stranger.status_code == 201, stranger.text
    return Orders(
        customer=customer["id"],
        main=main,
        side=side,
        customer_ids=[order_id for _, order_id in placed],
        main_ids=[order_id for channel, order_id in placed if channel == main] + [stranger.json()["id"]],
        stranger_id=stranger.json()["id"],
    )


def pages(api: InProcessApi, params: dict, limit: int) -> list[dict]:
    """Every page of a list, following next_cursor until it is null."""
    found = []
    cursor = None
    for _ in range(50):
        response = api.get("/orders", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        found.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("next_cursor never became null")


def ids(found: list[dict]) -> list[str]:
    return [order["id"] for page in found for order in page["items"]]


def test_a_customers_seven_orders_come_in_pages_of_3_3_1_newest_first_without_duplicates(
    api: InProcessApi, orders: Orders
):
    found = pages(api, {"customer_id": orders.customer}, limit=3)

    assert [len(page["items"]) for page in found] == [3, 3, 1]
    assert [page["next_cursor"] is None for page in found] == [False, False, True]
    assert ids(found) == orders.customer_ids[::-1]
    assert len(set(ids(found))) == 7
    created = [order["created_at"] for page in found for order in page["items"]]
    assert created == sorted(created, reverse=True)


def test_listing_by_channel_returns_that_channels_orders_of_every_customer_newest_first(
    api: InProcessApi, orders: Orders
):
    found = ids(pages(api, {"channel": orders.main}, limit=2))

    assert found == orders.main_ids[::-1]


def test_listing_by_channel_and_status_returns_the_pending_orders_of_that_channel(api: InProcessApi, orders: Orders):
    found = pages(api, {"channel": orders.side, "status": "pending"}, limit=3)

    assert ids(found) == [order_id for order_id in orders.customer_ids[::-1] if order_id not in orders.main_ids]
    assert {order["status"] for page in found for order in page["items"]} == {"pending"}


def test_listing_by_status_pending_includes_every_new_order_in_newest_first_order(api: InProcessApi, orders: Orders):
    # Other tests' orders share this list; ours must appear in it, in order, and all be pending.
    found = pages(api, {"status": "pending"}, limit=100)
    listed = ids(found)

    ours = set(orders.everyone)
    assert [order_id for order_id in listed if order_id in ours] == orders.everyone[::-1]
    assert {order["status"] for page in found for order in page["items"]} == {"pending"}
    assert len(listed) == len(set(listed))


def test_listing_by_customer_and_channel_returns_only_that_customers_orders_in_that_channel(
    api: InProcessApi, orders: Orders
):
    found = ids(pages(api, {"customer_id": orders.customer, "channel": orders.main}, limit=3))

    assert found == [order_id for order_id in orders.customer_ids[::-1] if order_id in orders.main_ids]


def test_listing_without_filters_includes_every_order_newest_first(api: InProcessApi, orders: Orders):
    listed = ids(pages(api, {}, limit=100))

    ours = set(orders.everyone)
    assert [order_id for order_id in listed if order_id in ours] == orders.everyone[::-1]


def test_a_customer_with_no_orders_gets_an_empty_page_and_a_null_cursor(api: InProcessApi):
    response = api.get("/orders", params={"customer_id": unique("nobody")})

    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "other_filter",
    ["channel", "status", "another customer", "no filter"],
)
def test_a_cursor_from_one_filter_is_422_invalid_cursor_with_another(
    api: InProcessApi, orders: Orders, other_filter: str
):
    first = api.get("/orders", params={"customer_id": orders.customer, "limit": 3})
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert cursor
    params = {
        "channel": {"channel": orders.main},
        "status": {"status": "pending"},
        "another customer": {"customer_id": unique("cus")},
        "no filter": {},
    }[other_filter]

    response = api.get("/orders", params={**params, "cursor": cursor, "limit": 3})

    assert_error(response, 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize("extra", [{"channel": "main"}, {"status": "pending"}], ids=["channel", "status"])
def test_a_customer_cursor_is_422_invalid_cursor_once_channel_or_status_is_added(
    api: InProcessApi, orders: Orders, extra: dict
):
    first = api.get("/orders", params={"customer_id": orders.customer, "limit": 3})
    cursor = first.json()["next_cursor"]
    params = {key: (orders.main if value == "main" else value) for key, value in extra.items()}

    response = api.get("/orders", params={"customer_id": orders.customer, **params, "cursor": cursor, "limit": 3})

    assert_error(response, 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "eyJpIjoiYnlfY3JlYXRlZCJ9", "!!!", "x" * 2049],
    ids=["word", "base64-json-without-key", "not-base64", "too-long"],
)
def test_a_cursor_the_api_did_not_hand_out_is_422(api: InProcessApi, cursor: str):
    response = api.get("/orders", params={"cursor": cursor})

    error = assert_error(response, 422, None, "cursor")
    assert error["code"] in {"invalid_cursor", "validation_error"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "bogus"}, "status"),
        ({"channel": "Not A Channel"}, "channel"),
    ],
    ids=["limit-0", "limit-101", "limit-negative", "limit-word", "status-bogus", "channel-bad"],
)
def test_out_of_range_list_parameters_are_422_naming_the_parameter(api: InProcessApi, params: dict, field: str):
    response = api.get("/orders", params=params)

    assert_error(response, 422, "validation_error", field)


@pytest.mark.parametrize("limit", [1, 100])
def test_limits_1_and_100_are_accepted(api: InProcessApi, limit: int):
    response = api.get("/orders", params={"limit": limit})

    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) <= limit


def test_a_list_read_without_a_limit_answers_25_orders_and_the_cursor_of_the_rest(api: InProcessApi):
    (sku,) = Catalog(api).stocked("5.00")
    channel = unique("many")
    for _ in range(26):
        assert api.post("/orders", json=order_body((sku, 1), channel=channel)).status_code == 201

    first = api.get("/orders", params={"channel": channel})
    rest = api.get("/orders", params={"channel": channel, "cursor": first.json()["next_cursor"]})

    assert first.status_code == 200 and len(first.json()["items"]) == 25, first.text
    assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None, rest.text
