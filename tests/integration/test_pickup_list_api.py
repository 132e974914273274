"""A store's pickup list, GET /orders?pickup_location_id=, in process on moto: the pickup orders its
counter still has work on, from their placement until they are collected or end, read through the
sparse by_pickup_location index whose key every write of an order keeps true (Order.open_at_store).
The workflow is not running here: each test runs its order's steps itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from core.errors import OutOfStock, PaymentDeclined
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


def a_store(api: InProcessApi) -> str:
    """A new pickup store with 20 mugs: each test's list is its own store's. Its id has capitals, as
    a store's code may: the list is keyed by the id as given."""
    store = unique("Store")
    answer = api.put(f"/locations/{store}", json=location_body(name="A store", type="store", ships=False, pickup=True))
    assert answer.status_code == 201, answer.text
    assert api.put(f"/inventory/MUG/{store}", json={"on_hand": 20}).status_code == 200
    return store


def pickup(api: InProcessApi, store: str, quantity: int = 1, **overrides: Any) -> str:
    """A pickup order at `store`, placed (pending): its id."""
    body = order_body(
        external_id=unique("web"), lines=[{"sku": "MUG", "quantity": quantity}],
        fulfillment={"type": "pickup", "location_id": store}, **overrides,
    )  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    return placed.json()["id"]


def listed(api: InProcessApi, store: str, key: Any = None, **query: str) -> list[tuple[str, str]]:
    """The store's list (one page of 100), newest first, as (order id, status)."""
    params = {"pickup_location_id": store, "limit": 100, **query}
    answer = api.get("/orders", params=params, **({"key": key} if key else {}))
    assert answer.status_code == 200, answer.text
    assert answer.json()["next_cursor"] is None
    return [(order["id"], order["status"]) for order in answer.json()["items"]]


def indexed_at(order_id: str) -> str | None:
    """The store the order's item is in the by_pickup_location index under, as stored (None: not in it)."""
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=os.environ["ORDERS_TABLE"], Key={"id": {"S": order_id}}
    )["Item"]
    return item.get("pickup_location", {}).get("S")


def index_by_hand(order_id: str, store: str | None) -> None:
    """The order's by_pickup_location key as another version left it: `store`, or none."""
    key = {"TableName": os.environ["ORDERS_TABLE"], "Key": {"id": {"S": order_id}}}
    client = boto3.client("dynamodb", region_name="us-east-1")
    if store is None:
        client.update_item(**key, UpdateExpression="REMOVE pickup_location")
    else:
        client.update_item(
            **key, UpdateExpression="SET pickup_location = :store", ExpressionAttributeValues={":store": {"S": store}}
        )


def post(api: InProcessApi, path: str, body: Any = None) -> dict[str, Any]:
    answer = api.post(path, json=body if body is not None else {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def steps() -> Any:
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def test_a_store_lists_its_pickups_from_placement_newest_first_and_no_other_stores_or_shipped_order(
    api: InProcessApi,
):
    store, other = a_store(api), a_store(api)
    first, second = pickup(api, store), pickup(api, store)
    elsewhere = pickup(api, other)
    home = order_body(external_id=unique("web"), lines=[{"sku": "MUG", "quantity": 1}])
    shipped_home = api.post("/orders", json=home)
    assert shipped_home.status_code == 201, shipped_home.text

    assert listed(api, store) == [(second, "pending"), (first, "pending")]
    assert listed(api, other) == [(elsewhere, "pending")]
    assert (indexed_at(first), indexed_at(elsewhere), indexed_at(shipped_home.json()["id"])) == (store, other, None)
    assert listed(api, "wh-east") == []  # a location with no pickups has an empty list, not a 422


def test_a_pickup_stays_listed_while_allocated_ready_and_held_and_leaves_once_collected(api: InProcessApi):
    store = a_store(api)
    order_id = pickup(api, store)
    (shipment,) = run_to_allocated(api, order_id)["shipments"]
    assert listed(api, store) == [(order_id, "allocated")]

    post(api, f"/orders/{order_id}/shipments/{shipment['id']}/ready")
    assert listed(api, store) == [(order_id, "allocated")] and indexed_at(order_id) == store
    post(api, f"/orders/{order_id}/hold", {"reason": "customer_request"})
    assert listed(api, store) == [(order_id, "on_hold")] and indexed_at(order_id) == store
    post(api, f"/orders/{order_id}/release")
    collected = post(api, f"/orders/{order_id}/shipments/{shipment['id']}/deliver")

    assert collected["status"] == "delivered"
    assert listed(api, store) == [] and indexed_at(order_id) is None
    # An index is eventually consistent: an entry a moment behind the collect still names it, and
    # the order read back is not shown.
    index_by_hand(order_id, store)
    assert listed(api, store) == []


def test_a_pickup_cancelled_leaves_its_stores_list_and_one_with_units_cancelled_stays(api: InProcessApi):
    store = a_store(api)
    order_id = pickup(api, store, quantity=3)
    run_to_allocated(api, order_id)

    one_unit = {"reason": "customer_request", "lines": [{"line_id": "L1", "quantity": 1}]}
    fewer = post(api, f"/orders/{order_id}/cancel", one_unit)
    assert fewer["status"] == "allocated" and fewer["lines"][0]["quantity"] == 2
    assert listed(api, store) == [(order_id, "allocated")] and indexed_at(order_id) == store
    cancelled = post(api, f"/orders/{order_id}/cancel", {"reason": "customer_request"})

    assert cancelled["status"] == "cancelled"
    assert listed(api, store) == [] and indexed_at(order_id) is None


def test_an_uncollected_pickup_that_expires_leaves_its_stores_list(api: InProcessApi):
    from functions.bootstrap import Config, bootstrap

    store = a_store(api)
    order_id = pickup(api, store)
    (shipment,) = run_to_allocated(api, order_id)["shipments"]
    ready = post(api, f"/orders/{order_id}/shipments/{shipment['id']}/ready")
    later = datetime.fromisoformat(ready["shipments"][0]["collect_by"].replace("Z", "+00:00")) + timedelta(seconds=1)

    assert bootstrap(Config.from_env(), clock=lambda: later).pickup_expiry.run().expired == [order_id]

    assert api.get(f"/orders/{order_id}").json()["status"] == "cancelled"
    assert listed(api, store) == [] and indexed_at(order_id) is None


def test_a_pickup_its_store_rejects_stays_listed_until_sourcing_it_again_cancels_it(api: InProcessApi):
    # Its store is its only source: sourced again without it, it ends cancelled out_of_stock.
    store = a_store(api)
    order_id = pickup(api, store)
    (shipment,) = run_to_allocated(api, order_id)["shipments"]

    rejected = post(api, f"/orders/{order_id}/shipments/{shipment['id']}/reject", {"reason": "damaged stock"})
    assert rejected["status"] == "authorized"
    assert listed(api, store) == [(order_id, "authorized")] and indexed_at(order_id) == store
    with pytest.raises(OutOfStock):
        steps().reserve_stock(order_id)
    steps().cancel_after_failure(order_id, "OutOfStock", "no location left")  # the state machine's Catch

    assert api.get(f"/orders/{order_id}").json()["status"] == "cancelled"
    assert listed(api, store) == [] and indexed_at(order_id) is None


def test_an_edited_pickup_stays_on_its_stores_list_while_sourced_again(api: InProcessApi):
    store = a_store(api)
    order_id = pickup(api, store)
    allocated = run_to_allocated(api, order_id)

    edited = api.request(
        "PATCH", f"/orders/{order_id}", json={"lines": [{"sku": "MUG", "quantity": 2}]},
        headers={"If-Match": str(allocated["version"])},
    )  # fmt: skip

    assert edited.status_code == 200, edited.text
    assert listed(api, store) == [(order_id, "authorized")] and indexed_at(order_id) == store
    run_to_allocated(api, order_id)
    assert listed(api, store) == [(order_id, "allocated")]


def test_a_pickup_whose_payment_is_declined_leaves_its_stores_list(api: InProcessApi):
    store = a_store(api)
    order_id = pickup(api, store, payment={"method": "test", "token": "tok_decline"})
    assert listed(api, store) == [(order_id, "pending")]

    with pytest.raises(PaymentDeclined):
        steps().authorize_payment(order_id, attempt=0)
    steps().fail_payment(order_id, "PaymentDeclined", "declined")  # the state machine's Catch

    assert api.get(f"/orders/{order_id}").json()["status"] == "payment_failed"
    assert listed(api, store) == [] and indexed_at(order_id) is None


def test_the_other_filters_narrow_a_stores_list(api: InProcessApi):
    from functions.bootstrap import Config, bootstrap

    store = a_store(api)
    ada = pickup(api, store, customer={"id": "cus_ada", "email": "ada@example.com"})
    market = pickup(api, store, channel="market")
    allocated = pickup(api, store)
    run_to_allocated(api, allocated)
    elsewhere = pickup(api, a_store(api), customer={"id": "cus_ada", "email": "ada@example.com"})

    assert listed(api, store, status="allocated") == [(allocated, "allocated")]
    assert [i for i, _ in listed(api, store, customer_id="cus_ada")] == [ada]
    assert [i for i, _ in listed(api, store, channel="market")] == [market]
    web = issue(api, "orders:read", channel="web")
    assert [i for i, _ in listed(api, store, key=web)] == [allocated, ada]  # a channel's key: its own
    assert_error(api.get("/orders", params={"pickup_location_id": store, "channel": "market"}, key=web), 403)
    number = api.get(f"/orders/{market}").json()["external_id"]
    assert [i for i, _ in listed(api, store, channel="market", external_id=number)] == [market]
    assert listed(api, a_store(api), channel="market", external_id=number) == []
    # The late ones: pending for longer than its 5 minutes (OMS_SLA), marked by the scan.
    later = datetime.now(UTC) + timedelta(minutes=6)
    assert {ada, market} <= set(bootstrap(Config.from_env(), clock=lambda: later).jeopardy_scan.run().marked)
    assert [i for i, _ in listed(api, store, jeopardy="true")] == [market, ada]
    # A page of one: the newest pickup, allocated and not late, is judged on the order read back,
    # and the page comes back short (follow next_cursor). Its cursor is the late list's own.
    late_page = api.get("/orders", params={"pickup_location_id": store, "jeopardy": "true", "limit": 1}).json()
    assert late_page["items"] == [] and late_page["next_cursor"] is not None
    whole = {"pickup_location_id": store, "limit": 1, "cursor": late_page["next_cursor"]}
    assert_error(api.get("/orders", params=whole), 422, "invalid_cursor")
    assert elsewhere not in {i for i, _ in listed(api, store)}


def test_a_stores_list_pages_newest_first_and_its_cursor_is_its_own(api: InProcessApi):
    store = a_store(api)
    placed = [pickup(api, store) for _ in range(3)]

    pages, cursor = [], None
    while True:
        query = {"pickup_location_id": store, "limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = api.get("/orders", params=query)
        assert answer.status_code == 200, answer.text
        pages.append([order["id"] for order in answer.json()["items"]])
        if (cursor := answer.json()["next_cursor"]) is None:
            break
        elsewhere = api.get("/orders", params={**query, "cursor": cursor, "pickup_location_id": a_store(api)})
        assert_error(elsewhere, 422, "invalid_cursor")
        # Nor another status's list of the store: it would go on below the newer held pickups unread.
        assert_error(api.get("/orders", params={**query, "cursor": cursor, "status": "on_hold"}), 422, "invalid_cursor")

    assert pages == [placed[::-1][:2], placed[::-1][2:]]


def test_a_pickup_placed_before_the_index_is_on_its_stores_list_once_backfilled(api: InProcessApi):
    # README, "Pickup orders placed before the by_pickup_location index": an earlier version wrote
    # no pickup_location; python -m infra.backfill_orders's index attributes' step writes it.
    from functions.adapters.dynamodb import backfill_index_attributes

    store = a_store(api)
    order_id = pickup(api, store)
    client, table = boto3.client("dynamodb", region_name="us-east-1"), os.environ["ORDERS_TABLE"]
    index_by_hand(order_id, None)
    assert listed(api, store) == []

    backfill_index_attributes(client, table)

    assert listed(api, store) == [(order_id, "pending")] and indexed_at(order_id) == store
    assert backfill_index_attributes(client, table)[0] == 0  # a second run writes nothing


def test_a_pickup_cancelled_after_a_rollback_to_a_version_before_the_index_leaves_it_once_backfilled(
    api: InProcessApi,
):
    # A version before the index writes no pickup_location and removes none: a pickup placed here
    # and cancelled after a rollback to it keeps its entry, read (and hidden) on every list of its
    # store until python -m infra.backfill_orders's index attributes' step removes it.
    from functions.adapters.dynamodb import backfill_index_attributes

    store = a_store(api)
    order_id = pickup(api, store)
    post(api, f"/orders/{order_id}/cancel", {"reason": "customer_request"})
    index_by_hand(order_id, store)

    backfill_index_attributes(boto3.client("dynamodb", region_name="us-east-1"), os.environ["ORDERS_TABLE"])

    assert indexed_at(order_id) is None and listed(api, store) == []


def test_a_pickup_placed_before_the_index_joins_its_stores_list_at_its_next_change_unbackfilled(api: InProcessApi):
    # Each write sets the order's index attributes from the order, whatever it changes.
    store = a_store(api)
    order_id = pickup(api, store)
    index_by_hand(order_id, None)

    post(api, f"/orders/{order_id}/hold", {"reason": "customer_request"})

    assert listed(api, store) == [(order_id, "on_hold")] and indexed_at(order_id) == store


def test_a_store_the_network_does_not_have_or_a_status_the_list_never_holds_is_422(api: InProcessApi):
    store = a_store(api)
    pickup(api, store)

    typo = assert_error(api.get("/orders", params={"pickup_location_id": store + "x"}), 422, "unknown_location")
    assert typo["details"] == [{"field": "pickup_location_id", "message": f"no location {store}x"}]
    collected = api.get("/orders", params={"pickup_location_id": store, "status": "delivered"})
    assert_error(collected, 422, "validation_error", "status")
    assert_error(api.get("/orders", params={"pickup_location_id": ""}), 422, "validation_error", "pickup_location_id")


def test_a_stores_list_is_one_query_of_its_index_and_one_read_of_its_orders(api: InProcessApi, monkeypatch):
    from botocore.client import BaseClient

    from infra.local.lambdas import RUNNING

    store = a_store(api)
    placed = [pickup(api, store) for _ in range(2)]
    listed(api, store)  # the container's first list: its catalog read
    inner, calls = BaseClient._make_api_call, []

    def noting(client: Any, operation: str, params: dict[str, Any]) -> Any:
        tables = {params.get("TableName"), *params.get("RequestItems", {})}
        if getattr(RUNNING, "function", None) == "ApiFunction" and os.environ["ORDERS_TABLE"] in tables:
            calls.append((operation, params.get("IndexName")))
        return inner(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", noting)
    assert [i for i, _ in listed(api, store)] == placed[::-1]
    assert calls == [("Query", "by_pickup_location"), ("BatchGetItem", None)]
    calls.clear()

    # Its late orders too: the store's few open pickups, not every store's late orders (by_sla).
    assert listed(api, store, jeopardy="true") == []
    assert calls == [("Query", "by_pickup_location"), ("BatchGetItem", None)]
    calls.clear()

    # One customer's, or one channel's: not all that customer's (by_customer) or channel's orders.
    assert [i for i, _ in listed(api, store, customer_id="cus_1")] == placed[::-1]
    assert [i for i, _ in listed(api, store, channel="web")] == placed[::-1]
    assert calls == [("Query", "by_pickup_location"), ("BatchGetItem", None)] * 2


def test_a_tablet_asking_for_allocated_pickups_behind_newer_held_ones_is_told_to_follow_next_cursor(
    api: InProcessApi,
):
    # The first page of `status=allocated` read only newer orders of another status: it holds
    # none, and the pickup to pick is on the page its next_cursor names. The OpenAPI description of
    # GET /orders, which a tablet's developer codes against, says so (as GET /purchase-orders' does).
    store = a_store(api)
    to_pick = pickup(api, store)
    run_to_allocated(api, to_pick)
    held = pickup(api, store)
    post(api, f"/orders/{held}/hold", {"reason": "customer_request"})

    first = api.get("/orders", params={"pickup_location_id": store, "status": "allocated", "limit": 1}).json()
    assert first["items"] == [] and first["next_cursor"] is not None
    after = {"pickup_location_id": store, "status": "allocated", "limit": 1, "cursor": first["next_cursor"]}
    assert [order["id"] for order in api.get("/orders", params=after).json()["items"]] == [to_pick]
    described = api.get("/openapi.json", key=None).json()["paths"]["/orders"]["get"]["description"]
    assert "a page may hold fewer than `limit` orders, even none" in described
    assert "follow `next_cursor` until it is null" in described
