"""The order workflow end to end: an order placed over HTTP is authorized, sourced, reserved and
given shipments on its own (Orders stream → outbox → Step Functions → workflow tasks), or ends
payment_failed / cancelled with everything it took given back.

One stack for the module with its event sources on, so the outbox starts the workflow exactly as
on AWS; Retry sleeps are scaled down (retry_delay_scale) and nothing here asserts a timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from infra.local.stack import EmbeddedStack, forget_warm_containers
from tests.e2e.client import Api, Catalog, order_body, put_network, unique, unsigned
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 10
WORKFLOW = "workflow"
ADMIN_KEY_ID = "key_admin"


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(scope="module")
def network(stack: EmbeddedStack) -> dict[str, str]:
    """The location network, set up once before any order (as a deployment's would be): a warehouse
    near San Francisco (where the orders ship to), one in Newark, and a San Francisco store that
    only serves pickups."""
    api = Api(stack.api_url, stack.admin_key)
    try:
        return put_network(api, store=True)
    finally:
        api.close()


# --- Helpers --------------------------------------------------------------------------------------


def settle(stack: EmbeddedStack) -> None:
    """Until the outbox has delivered everything and no workflow execution is running."""
    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"


def order_when(api: Api, order_id: str, *statuses: str) -> dict[str, Any]:
    """The order once it is in one of `statuses` (polled for a bounded time)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        response = api.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        order = response.json()
        if order["status"] in statuses or time.monotonic() > deadline:
            assert order["status"] in statuses, f"{order_id} is {order['status']}, expected one of {statuses}"
            return order
        time.sleep(0.05)


def place(api: Api, body: dict[str, Any]) -> str:
    response = api.post("/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    return response.json()["id"]


def history(api: Api, order_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def stock_of(api: Api, sku: str) -> dict[str, dict[str, int]]:
    """{location_id: {on_hand, reserved, available}} for a sku."""
    response = api.get(f"/inventory/{sku}")
    assert response.status_code == 200, response.text
    body = response.json()
    for level in body["locations"]:
        assert level["available"] == max(level["on_hand"] - level["reserved"], 0), body
        assert level["available"] >= 0 and level["reserved"] >= 0, body
    return {
        level["location_id"]: {key: level[key] for key in ("on_hand", "reserved", "available")}
        for level in body["locations"]
    }


def reserved_total(api: Api, *skus: str) -> int:
    return sum(level["reserved"] for sku in skus for level in stock_of(api, sku).values())


def dec(money: dict[str, str]) -> Decimal:
    return Decimal(money["amount"])


# --- The happy path --------------------------------------------------------------------------------


def test_an_approved_order_is_allocated_on_its_own_tells_its_story_and_prints_a_private_label(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    """Placed, authorized, reserved and given a shipment by the workflow; its history names who did
    each step; its label is a PDF a warehouse printer fetches without a key, with nothing private."""
    west = network["west"]
    shirt, mug = catalog.product("30.00"), catalog.product("7.50")
    catalog.stock(shirt, west, 10)
    catalog.stock(mug, west, 4)
    before = {sku: stock_of(api, sku) for sku in (shirt, mug)}
    customer = {"id": unique("cus"), "email": "grace@example.com", "name": "Grace Hopper"}

    order_id = place(api, order_body((shirt, 2), (mug, 3), customer=customer))
    settle(stack)
    order = order_when(api, order_id, "allocated")

    payment = order["payment"]
    assert payment["status"] == "authorized"
    assert payment["authorized"] == order["totals"]["grand_total"]
    assert dec(payment["captured"]) == 0 and dec(payment["refunded"]) == 0
    # Every unit of every line is allocated, here all from the one location that has everything.
    allocated: dict[str, int] = {}
    for allocation in order["allocations"]:
        allocated[allocation["line_id"]] = allocated.get(allocation["line_id"], 0) + allocation["quantity"]
        assert allocation["location_id"] == west
    assert allocated == {line["line_id"]: line["quantity"] for line in order["lines"]}
    # One pending shipment per sourcing location, booked with the carrier.
    [shipment] = order["shipments"]
    assert shipment["id"].startswith("shp_") and shipment["location_id"] == west
    assert shipment["status"] == "pending"
    assert shipment["shipped_at"] is None and shipment["delivered_at"] is None
    assert shipment["carrier"] and shipment["service"] == "Ground"
    assert shipment["tracking_number"] and shipment["label_url"].startswith("http")
    assert sorted((x["line_id"], x["quantity"]) for x in shipment["lines"]) == sorted(allocated.items())
    # The ordered units are reserved at the chosen location, and nothing else moved.
    for sku, quantity in ((shirt, 2), (mug, 3)):
        after = stock_of(api, sku)[west]
        assert after["reserved"] == before[sku][west]["reserved"] + quantity
        assert after["on_hand"] == before[sku][west]["on_hand"]
        assert after["available"] == before[sku][west]["available"] - quantity

    # The history tells the workflow's story with its actors.
    entries = history(api, order_id)
    assert [(e["type"], e["from_status"], e["to_status"]) for e in entries] == [
        ("created", None, "pending"),
        ("payment_authorized", "pending", "authorized"),
        ("stock_reserved", None, None),
        ("allocated", "authorized", "allocated"),
    ]
    assert [e["actor"] for e in entries] == [ADMIN_KEY_ID, WORKFLOW, WORKFLOW, WORKFLOW]
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    reserved = entries[2]["detail"]
    assert reserved["allocations"] == order["allocations"]
    assert reserved["reasons"] and all(isinstance(r, str) and r.strip() for r in reserved["reasons"])
    assert any(west in reason for reason in reserved["reasons"])
    assert entries[1]["detail"]["amount"] == order["totals"]["grand_total"]
    assert [s["id"] for s in entries[3]["detail"]["shipments"]] == [s["id"] for s in order["shipments"]]
    # The order's version counts its changes: one per history entry.
    assert order["version"] == len(entries)

    # The label's URL works without the API key (a presigned link a warehouse printer can fetch).
    with requests.Session() as browser:
        browser.trust_env = False
        label = browser.get(shipment["label_url"], timeout=10)
    assert label.status_code == 200, label.text[:300]
    assert label.content.startswith(b"%PDF-")
    assert label.content.rstrip().endswith(b"%%EOF")
    text = label.content.decode("latin-1")
    for expected in (shipment["tracking_number"], order_id, shipment["id"], "San Francisco", shirt, "x2"):
        assert expected in text, expected
    for private in ("grace@example.com", "tok_approve", "auth_", "30.00", "Traceback", customer["id"]):
        assert private not in text, private


def test_a_declined_payment_ends_payment_failed_while_a_flaky_gateway_is_retried_and_authorizes_once(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    declined_sku, flaky_sku = catalog.product("15.00"), catalog.product("9.00")
    catalog.stock(declined_sku, network["west"], 5)
    catalog.stock(declined_sku, network["east"], 5)
    catalog.stock(flaky_sku, network["west"], 5)

    declined_id = place(api, order_body((declined_sku, 2), payment={"method": "test", "token": "tok_decline"}))
    flaky_id = place(api, order_body((flaky_sku, 1), payment={"method": "test", "token": "tok_flaky"}))
    settle(stack)
    declined = order_when(api, declined_id, "payment_failed")
    flaky = order_when(api, flaky_id, "allocated")

    # Declined: nothing authorized, nothing reserved anywhere.
    assert declined["payment"]["status"] == "declined"
    assert dec(declined["payment"]["authorized"]) == 0 and dec(declined["payment"]["captured"]) == 0
    assert declined["allocations"] == [] and declined["shipments"] == []
    assert all(level["reserved"] == 0 and level["on_hand"] == 5 for level in stock_of(api, declined_sku).values())
    entries = history(api, declined_id)
    assert [(e["type"], e["to_status"], e["actor"]) for e in entries] == [
        ("created", "pending", ADMIN_KEY_ID),
        ("payment_failed", "payment_failed", WORKFLOW),
    ]
    assert entries[1]["from_status"] == "pending"
    assert entries[1]["detail"]["reason"] == "payment_declined"
    assert entries[1]["detail"]["message"].strip()

    # Flaky: retried, authorized once.
    assert flaky["payment"]["status"] == "authorized"
    assert flaky["payment"]["authorized"] == flaky["totals"]["grand_total"]
    entries = history(api, flaky_id)
    assert [e["type"] for e in entries].count("payment_authorized") == 1
    # The failed first attempt is in the history; the order itself moved on only once.
    assert [e["type"] for e in entries] == [
        "created", "payment_authorization_failed", "payment_authorized", "stock_reserved", "allocated",
    ]  # fmt: skip
    assert (entries[1]["detail"]["kind"], entries[1]["detail"]["attempt"]) == ("transient", 1)
    assert stock_of(api, flaky_sku)[network["west"]]["reserved"] == 1


# --- Sourcing ----------------------------------------------------------------------------------------


def test_orders_are_sourced_split_whole_from_the_nearest_or_from_the_pickup_store_and_a_rerun_changes_nothing(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    """Three orders placed together: one no single location can supply (split in two shipments),
    one the nearest location supplies whole, one picked up at its store; then the split one's
    workflow runs again and its INSERT is delivered again, and nothing changes."""
    west, east, store = network["west"], network["east"], network["store"]
    only_west, only_east = catalog.product("10.00"), catalog.product("20.00")
    catalog.stock(only_west, west, 5)
    catalog.stock(only_east, east, 5)
    nearest_sku = catalog.product("5.00")
    catalog.stock(nearest_sku, west, 5)
    catalog.stock(nearest_sku, east, 50)
    pickup_sku = catalog.product("25.00")
    catalog.stock(pickup_sku, store, 2)
    catalog.stock(pickup_sku, west, 20)  # nearer stock elsewhere does not matter for a pickup

    split_id = place(api, order_body((only_west, 2), (only_east, 1)))
    nearest_id = place(api, order_body((nearest_sku, 3)))
    pickup_id = place(api, order_body((pickup_sku, 2), fulfillment={"type": "pickup", "location_id": store}))
    settle(stack)
    split = order_when(api, split_id, "allocated")
    nearest = order_when(api, nearest_id, "allocated")
    pickup = order_when(api, pickup_id, "allocated")

    # Split: one shipment per location, each with its own line and tracking number.
    line_of = {line["sku"]: line["line_id"] for line in split["lines"]}
    assert sorted((a["line_id"], a["location_id"], a["quantity"]) for a in split["allocations"]) == sorted(
        [(line_of[only_west], west, 2), (line_of[only_east], east, 1)]
    )
    shipments = {s["location_id"]: s for s in split["shipments"]}
    assert set(shipments) == {west, east} and len(split["shipments"]) == 2
    assert shipments[west]["lines"] == [{"line_id": line_of[only_west], "quantity": 2}]
    assert shipments[east]["lines"] == [{"line_id": line_of[only_east], "quantity": 1}]
    assert len({s["id"] for s in split["shipments"]}) == 2
    assert len({s["tracking_number"] for s in split["shipments"]}) == 2
    assert all(s["status"] == "pending" and s["label_url"] for s in split["shipments"])
    assert stock_of(api, only_west)[west]["reserved"] == 2
    assert stock_of(api, only_east)[east]["reserved"] == 1

    # The nearest location with everything supplies the whole order.
    assert [(a["location_id"], a["quantity"]) for a in nearest["allocations"]] == [(west, 3)]
    assert stock_of(api, nearest_sku)[east]["reserved"] == 0

    # A pickup order is supplied by its store.
    assert pickup["fulfillment"] == {"type": "pickup", "location_id": store}
    assert [(a["location_id"], a["quantity"]) for a in pickup["allocations"]] == [(store, 2)]
    [shipment] = pickup["shipments"]
    assert shipment["location_id"] == store and shipment["status"] == "pending"
    assert shipment["service"] == "Store pickup"
    levels = stock_of(api, pickup_sku)
    assert levels[store]["reserved"] == 2 and levels[west]["reserved"] == 0

    # Running the split order's workflow again changes nothing.
    first_history = history(api, split_id)
    first_stock = {sku: stock_of(api, sku) for sku in (only_west, only_east)}
    # A second execution for the same order (Express runs at least once; a replayed INSERT on
    # AWS, where Express names are not unique, starts another one).
    sfn = stack.client("stepfunctions")
    execution = sfn.start_execution(
        stateMachineArn=stack.state_machine_arns["OrderWorkflow"],
        name=f"again-{split_id}",
        input=json.dumps({"order_id": split_id}),
    )
    # And the stream delivering the same INSERT record to the outbox again.
    redelivered = stack.client("lambda").invoke(
        FunctionName=stack.function_arns["OutboxFunction"],
        Payload=json.dumps(_insert_record(stack, split_id)).encode(),
    )
    settle(stack)

    assert redelivered.get("FunctionError") is None
    assert json.loads(redelivered["Payload"].read()) == {"batchItemFailures": []}
    described = sfn.describe_execution(executionArn=execution["executionArn"])
    assert described["status"] == "SUCCEEDED", described
    again = api.get(f"/orders/{split_id}").json()
    assert unsigned(again) == unsigned(split)  # same version, shipments, allocations, payment
    assert history(api, split_id) == first_history
    assert {sku: stock_of(api, sku) for sku in (only_west, only_east)} == first_stock  # reservations not doubled


def _insert_record(stack: EmbeddedStack, order_id: str) -> dict[str, Any]:
    table = stack.table_names["OrdersTable"]
    stream_arn = stack.client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]
    return {
        "Records": [
            {
                "eventID": unique("evt"),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "Keys": {"id": {"S": order_id}},
                    "NewImage": {"id": {"S": order_id}},
                    "SequenceNumber": "1",
                    "SizeBytes": 64,
                    "StreamViewType": "NEW_IMAGE",
                },
                "eventSourceARN": stream_arn,
            }
        ]
    }


# --- Losing the stock between capture and allocation -------------------------------------------------


def test_orders_that_lose_all_or_part_of_their_stock_before_allocation_are_cancelled_voided_and_released(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    """Both placed while the workflow waits: one whose only sku goes in a stock take, one that
    loses one of its two skus to damage; each is cancelled whole, its payment voided."""
    west = network["west"]
    sku = catalog.product("40.00")
    catalog.stock(sku, west, 2)
    kept, lost = catalog.product("10.00"), catalog.product("12.00")
    catalog.stock(kept, west, 5)
    catalog.stock(lost, west, 1)
    settle(stack)
    stack.pause_mappings()
    try:
        order_id = place(api, order_body((sku, 2)))  # passes the capture check: 2 available
        partial_id = place(api, order_body((kept, 2), (lost, 1)))
        # The stock goes before the workflow runs (a stock take; nothing is reserved yet).
        catalog.stock(sku, west, 0)
        response = api.post(f"/inventory/{lost}/{west}/adjustments", json={"delta": -1, "reason": "damaged"})
        assert response.status_code == 200, response.text
    finally:
        stack.resume_mappings()
    settle(stack)
    order = order_when(api, order_id, "cancelled")
    partial = order_when(api, partial_id, "cancelled")

    assert order["payment"]["status"] == "voided"
    assert dec(order["payment"]["captured"]) == dec(order["totals"]["grand_total"]) == 0
    # Its units are cancelled with it, as any cancel's are: the line at zero, counted cancelled.
    assert [(line["quantity"], line["cancelled_quantity"]) for line in order["lines"]] == [(0, 2)]
    assert order["shipments"] == []
    assert stock_of(api, sku)[west] == {"on_hand": 0, "reserved": 0, "available": 0}
    entries = history(api, order_id)
    # The cancel is recorded first; the payment says voided in the write after the gateway's approval.
    assert [e["type"] for e in entries] == ["created", "payment_authorized", "cancelled", "payment_voided"]
    cancelled = entries[-2]
    assert (cancelled["from_status"], cancelled["to_status"], cancelled["actor"]) == (
        "authorized",
        "cancelled",
        WORKFLOW,
    )
    assert cancelled["detail"]["reason"] == "out_of_stock"
    # It was authorized for the grand total it had, which the cancel's entry keeps, then voided.
    assert order["payment"]["authorized"] == cancelled["detail"]["grand_total"]["from"]

    # A partial loss cancels the whole order and releases what it held.
    assert partial["payment"]["status"] == "voided"
    assert history(api, partial_id)[-2]["detail"]["reason"] == "out_of_stock"
    assert reserved_total(api, kept, lost) == 0
    assert stock_of(api, kept)[west]["available"] == 5


# --- The location network changing ----------------------------------------------------------------------


@pytest.fixture
def cold_containers(stack: EmbeddedStack) -> Iterator[None]:
    """The workflow's container starts cold, so its catalog cache is filled during the test (not
    up to 10 s earlier), and the next test starts cold again."""
    settle(stack)
    forget_warm_containers()
    yield
    settle(stack)
    forget_warm_containers()


def test_a_location_opened_after_the_workflow_last_ran_supplies_the_next_order(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str], cold_containers: None
):
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 5)
    first = place(api, order_body((sku, 1)))
    settle(stack)
    order_when(api, first, "allocated")  # the workflow has read (and cached) the network
    opened = catalog.location(name="New warehouse")
    newcomer = catalog.product("10.00")
    catalog.stock(newcomer, opened, 5)

    order_id = place(api, order_body((newcomer, 1)))  # capture sees the new location's stock
    settle(stack)
    order = order_when(api, order_id, "allocated", "cancelled")

    assert order["status"] == "allocated", history(api, order_id)[-1]["detail"]
    assert [(a["location_id"], a["quantity"]) for a in order["allocations"]] == [(opened, 1)]


def test_every_call_a_function_makes_on_an_orders_journeys_is_granted_by_the_template(
    stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]
):
    """The template's least-privilege statements are enough for what the code really calls: each
    AWS call made inside a function is recorded with the resource it names (issue 10 item 5)."""
    from tests.template_iam import calls_by_function, granted

    west = network["west"]
    sku, lost = catalog.product("12.00"), catalog.product("13.00")
    catalog.stock(sku, west, 5)
    catalog.stock(lost, west, 1)
    reader = api.post("/api-keys", json={"name": unique("reader"), "scopes": ["orders:read"]})
    assert reader.status_code == 201, reader.text
    settle(stack)
    with calls_by_function(stack) as calls:
        # A key the authorizer has not seen yet: its answer is not in the gateway's cache.
        assert api.get("/orders", params={"limit": 1}, key=reader.json()["key"]).status_code == 200
        allocated = place(api, order_body((sku, 1)))
        declined = place(api, order_body((sku, 1), payment={"method": "test", "token": "tok_decline"}))
        stack.pause_mappings()
        try:
            cancelled = place(api, order_body((lost, 1)))
            catalog.stock(lost, west, 0)  # gone before the workflow runs: CancelOrder compensates
        finally:
            stack.resume_mappings()
        settle(stack)
        order = order_when(api, allocated, "allocated")
        order_when(api, declined, "payment_failed")
        order_when(api, cancelled, "cancelled")
        shipment = order["shipments"][0]["id"]
        assert api.post(f"/orders/{allocated}/shipments/{shipment}/ship").status_code == 200
        assert api.post(f"/orders/{allocated}/shipments/{shipment}/deliver").status_code == 200
        assert api.get("/orders", params={"channel": "web", "limit": 2}).status_code == 200
        assert api.request("DELETE", f"/api-keys/{reader.json()['id']}").status_code == 204  # flushes the cache
        settle(stack)

    expected = {
        "AuthorizerFunction",
        "ApiFunction",
        "OutboxFunction",
        "AuthorizePaymentFunction",
        "ReserveStockFunction",
        "CreateShipmentsFunction",
        "FailPaymentFunction",
        "CancelOrderFunction",
    }
    assert expected <= set(calls), sorted(calls)
    assert ("OmsApi", "apigateway:DELETE") in calls["ApiFunction"]  # FlushStageAuthorizersCache
    for function, needed in calls.items():
        assert needed <= granted(function), f"{function} calls what it is not granted: {needed - granted(function)}"
