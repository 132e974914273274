"""GET /orders filters through the in-process gateway: each filter returns exactly the orders it names."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error, unique
from tests.integration.in_process import InProcessApi, in_process_api
from tests.integration.test_refunds_api import issue_key


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        assert started.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/TSHIRT/wh-east", json={"on_hand": 100}).status_code == 200
        for n, customer in enumerate(("cus_ada", "cus_bob", "cus_bob")):
            body = order_body(external_id=f"list-{n}", customer={"id": customer, "email": "c@example.com"})
            assert started.post("/orders", json=body).status_code == 201
        yield started


def customers(api: InProcessApi, key: str, **query: str) -> list[str]:
    answer = api.get("/orders", params=query, key=key)
    assert answer.status_code == 200, answer.text
    return [order["customer"]["id"] for order in answer.json()["items"]]


@pytest.mark.parametrize("channel", [None, "web"])
def test_an_empty_customer_id_is_422_not_every_customers_orders(api: InProcessApi, channel: str | None):
    # A storefront that fills in `customer_id=` for a customer it has no id for would otherwise
    # show that customer every other customer's orders of its channel.
    key = issue_key(api, "orders:read", channel=channel)

    assert_error(api.get("/orders", params={"customer_id": ""}, key=key), 422, "validation_error", "customer_id")
    assert customers(api, key, customer_id="cus_bob") == ["cus_bob", "cus_bob"]


@pytest.mark.parametrize("channel", ["", "-web"], ids=["empty", "a leading dash"])
def test_a_channel_no_order_can_have_is_422_not_every_channels_orders_or_none(api: InProcessApi, channel: str):
    # `channel=` read as no filter would list every channel's orders; one no order can be in, an empty page.
    assert_error(api.get("/orders", params={"channel": channel}), 422, "validation_error", "channel")


@pytest.mark.parametrize("report, asked", [("/orders", {}), ("/reports/top-products", {"currency": "USD"})])
def test_a_channel_key_asking_for_another_channels_orders_is_403_as_for_its_reports(
    api: InProcessApi, report: str, asked: dict
):
    # The web storefront's key asking for the market's orders answered 200 with no items: read
    # as "the market has no orders", where the same key asking for the market's report was 403.
    key = issue_key(api, "orders:read", "reports:read", channel="web")

    assert_error(api.get(report, params={**asked, "channel": "market"}, key=key), 403, "forbidden")
    assert api.get(report, params={**asked, "channel": "web"}, key=key).status_code == 200
    assert len(customers(api, key)) == 3


def test_a_channel_keys_pages_of_a_customer_name_no_order_of_another_channel(api: InProcessApi):
    # The customer's index holds every channel's orders and the channel was filtered after each
    # page was cut: the web key got an empty page whose cursor carried the market order's id.
    customer = {"id": "cus_both", "email": "both@example.com"}
    ids = {}
    for channel in ("web", "market", "market", "web", "market"):
        body = order_body(channel=channel, external_id=f"both-{len(ids)}-{channel}", customer=customer)
        placed = api.post("/orders", json=body)
        assert placed.status_code == 201, placed.text
        ids[placed.json()["id"]] = channel
    key = issue_key(api, "orders:read", channel="web")

    pages, cursor = [], None
    while True:
        params = {"customer_id": "cus_both", "limit": 1, **({"cursor": cursor} if cursor else {})}
        answer = api.get("/orders", params=params, key=key)
        assert answer.status_code == 200, answer.text
        pages.append([order["id"] for order in answer.json()["items"]])
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            break
        named = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["k"]["id"]["S"]
        assert ids[named] == "web", "a cursor names another channel's order"

    web = [order_id for order_id, channel in reversed(ids.items()) if channel == "web"]
    assert pages == [[order_id] for order_id in web]


@pytest.mark.parametrize(
    "customer_id",
    [["cus_ada", "cus_bob"], "cus_ada,cus_bob", "cus\x00", " cus_bob", "cus bob", "x" * 129],
    ids=["sent twice", "comma", "control", "leading space", "space", "too long"],
)
def test_a_customer_id_no_order_can_have_is_422_not_an_empty_page(api: InProcessApi, customer_id):
    # Sent twice (the gateway joins the values with a comma), or with a character no customer id
    # holds (core.models.Identifier, as GET /customers/{id} takes), it answered 200 with no items:
    # read as "this customer has no orders".
    answer = api.get("/orders", params={"customer_id": customer_id})

    assert_error(answer, 422, "validation_error", "customer_id")
    assert customers(api, api.admin_key, customer_id="cus_ada") == ["cus_ada"]


def test_a_channel_keys_authorized_orders_come_from_its_channel_and_a_pending_cursor_is_not_theirs(api: InProcessApi):
    # Pending and authorized orders share the status index's partition; a channel's list of either
    # reads the channel index, and each status's cursor is its own.
    from functions.bootstrap import Config, bootstrap

    shop, other = unique("shop"), unique("other")
    placed = {}
    for n, channel in enumerate((shop, other, shop, shop, other)):
        answer = api.post("/orders", json=order_body(channel=channel, external_id=f"authorized-{n}-{channel}"))
        assert answer.status_code == 201, answer.text
        placed[answer.json()["id"]] = channel
    ids = list(placed)
    steps = bootstrap(Config.from_env()).workflow
    for order_id in ids[:3]:
        steps.authorize_payment(order_id, attempt=0)
    key = issue_key(api, "orders:read", channel=shop)

    def listed(status: str) -> list[str]:
        seen, cursor = [], None
        for _ in range(10):
            params = {"status": status, "limit": 1, **({"cursor": cursor} if cursor else {})}
            answer = api.get("/orders", params=params, key=key)
            assert answer.status_code == 200, answer.text
            seen += [order["id"] for order in answer.json()["items"]]
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("next_cursor never became null")

    assert listed("authorized") == [ids[2], ids[0]]
    assert listed("pending") == [ids[3]]
    first = api.get("/orders", params={"status": "authorized", "limit": 1}).json()
    assert first["next_cursor"]
    for status in ("pending", "on_hold"):
        answer = api.get("/orders", params={"status": status, "cursor": first["next_cursor"]})
        assert_error(answer, 422, "invalid_cursor", "cursor")
