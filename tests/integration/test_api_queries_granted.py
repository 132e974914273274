"""Every Query and Scan the API function makes, over every route that lists or reads by an index,
is one the template grants it: its Query grant on the orders' and returns' tables names ten
indexes (never the table, never the scheduled passes' indexes), and a Query of any other is
AccessDenied on AWS, a 500 to the user, where moto answers it. The API runs in process as
ApiFunction (tests/template_iam.py reads each call against the template's statements)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.builders import order_body
from tests.e2e.client import Catalog, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, returns_run_inline
from tests.template_iam import calls_by_function, granted
from tests.unit.test_template_security import QUERIED_INDEXES

API = "ApiFunction"
WEBHOOK_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/test-WebhookQueue"
TABLES = ("OrdersTable", "ReturnsTable", "InventoryTable", "CatalogTable", "IdempotencyTable")


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    """The in-process API with a labels bucket, and the returns workflow's steps run inline."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WEBHOOK_QUEUE_URL", WEBHOOK_QUEUE)  # named, never sent to by these reads
        with in_process_api_with_labels() as started, returns_run_inline():
            yield started


def the_api_as_a_stack() -> Any:
    """What calls_by_function reads of a stack: the API function and the resources it is given."""
    import os

    return SimpleNamespace(
        functions={API: SimpleNamespace(name=API)},  # the in-process gateway runs it by its logical id
        table_names={table: f"test-{table}" for table in TABLES},
        bucket_names={"LabelsBucket": "test-labels"},
        event_bus_names={},
        queue_urls={"AccessLogQueue": os.environ["ACCESS_LOG_QUEUE_URL"], "WebhookDeliveryQueue": WEBHOOK_QUEUE},
        state_machine_arns={},
        gateway=None,
    )


@pytest.fixture
def reads() -> Iterator[tuple[set[tuple[str, str, str]], dict[str, Any]]]:
    """Each Query and Scan the API function makes, (operation, table, index or ""), and every call
    it makes as the grant it needs (calls_by_function's record)."""
    from botocore.client import BaseClient

    from infra.local.lambdas import RUNNING

    seen: set[tuple[str, str, str]] = set()
    with calls_by_function(the_api_as_a_stack()) as calls, pytest.MonkeyPatch.context() as patch:
        inner = BaseClient._make_api_call

        def noting(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if getattr(RUNNING, "function", None) == API and operation in ("Query", "Scan"):
                table = params["TableName"].removeprefix("test-")
                seen.add((operation, table, params.get("IndexName", "")))
            return inner(client, operation, params)

        patch.setattr(BaseClient, "_make_api_call", noting)
        yield seen, calls


def an_order(api: InProcessApi, catalog: Catalog, channel: str, customer: str, *, deliver: bool) -> dict[str, Any]:
    from functions.bootstrap import Config, bootstrap

    warehouse = catalog.location()
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, warehouse, 10)
    body = order_body(channel=channel, external_id=unique("ext"), lines=[{"sku": sku, "quantity": 2}])
    body["customer"] = {**body["customer"], "id": customer}
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    if deliver:
        steps = bootstrap(Config.from_env()).workflow
        steps.authorize_payment(order["id"], attempt=0)
        steps.reserve_stock(order["id"])
        steps.create_shipments(order["id"])
        for shipment in api.get(f"/orders/{order['id']}").json()["shipments"]:
            for action in ("ship", "deliver"):
                done = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", json={})
                assert done.status_code == 200, done.text
    return api.get(f"/orders/{order['id']}").json()


def every_page(api: InProcessApi, path: str, key: Any = None, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, one item a page (so each cursor the list makes is followed)."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {**params, "limit": 1}
    while True:
        page = api.get(path, params=query, **({"key": key} if key else {}))
        assert page.status_code == 200, f"{path} {query}: {page.text}"
        items += page.json()["items"]
        if page.json()["next_cursor"] is None:
            return items
        query["cursor"] = page.json()["next_cursor"]


def test_every_route_that_reads_by_an_index_queries_only_what_the_api_is_granted(
    api: InProcessApi, reads: tuple[set[tuple[str, str, str]], dict[str, Any]]
):
    queried, calls = reads
    catalog = Catalog(api)
    channel, customer = f"web-{uuid.uuid4().hex[:8]}", f"cus_{uuid.uuid4().hex[:8]}"
    delivered = an_order(api, catalog, channel, customer, deliver=True)
    pending = an_order(api, catalog, channel, customer, deliver=False)
    rma = api.post(
        f"/orders/{delivered['id']}/returns",
        json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]},
    )
    assert rma.status_code == 201, rma.text
    own = api.post("/api-keys", json={"name": "own", "scopes": ["orders:read"], "channel": channel}).json()["key"]

    # The order lists: every filter and combination GET /orders takes, each page's cursor followed.
    for filters in (
        {}, {"status": "pending"}, {"status": "delivered"}, {"customer_id": customer},
        {"customer_id": customer, "channel": channel}, {"customer_id": customer, "status": "pending"},
        {"channel": channel}, {"channel": channel, "status": "delivered"}, {"jeopardy": "true"},
        {"jeopardy": "true", "channel": channel}, {"jeopardy": "true", "customer_id": customer},
    ):  # fmt: skip
        every_page(api, "/orders", **filters)
    assert {o["id"] for o in every_page(api, "/orders", customer_id=customer)} == {delivered["id"], pending["id"]}
    # A store's pickup list (these orders are shipped home: the warehouse's list is empty).
    assert every_page(api, "/orders", pickup_location_id=delivered["shipments"][0]["location_id"]) == []
    assert len(every_page(api, "/orders", key=own)) == 2  # a channel's key: its channel's list
    # An order's returns, history (the units owed back) and reads; the return lists.
    assert [r["id"] for r in every_page(api, f"/orders/{delivered['id']}/returns")] == [rma.json()["id"]]
    for path in (f"/orders/{delivered['id']}/history", f"/orders/{delivered['id']}", f"/returns/{rma.json()['id']}"):
        assert api.get(path).status_code == 200, path
    for filters in ({}, {"status": "authorized"}):
        assert rma.json()["id"] in {r["id"] for r in every_page(api, "/returns", **filters)}
    assert [r["id"] for r in every_page(api, "/returns", key=own)] == [rma.json()["id"]]
    # What else lists or reports: customers, reports, holds, access log, refunds, sourcing,
    # purchasing, inventory.
    assert api.post(f"/orders/{pending['id']}/hold", json={"reason": "other"}).status_code == 200
    assert every_page(api, "/orders", status="on_hold")[0]["id"] == pending["id"]
    days = {"currency": "USD", "from": "2026-01-01", "to": "2026-12-31"}
    for path, params in (
        ("/customers", {"email": delivered["customer"]["email"]}),
        ("/reports/top-products", days), ("/reports/top-customers", days), ("/reports/top-regions", days),
        (f"/orders/{delivered['id']}/access-log", {}), (f"/orders/{delivered['id']}/refunds", {}),
        (f"/orders/{delivered['id']}/notifications", {}), ("/sourcing/rules", {}), ("/sourcing/rules/history", {}),
        ("/webhooks", {}), ("/purchase-orders", {}), ("/vendors", {}), ("/locations", {}),
        (f"/inventory/{delivered['lines'][0]['sku']}", {}),
    ):  # fmt: skip
        answer = api.get(path, params=params)
        assert answer.status_code == 200, f"{path}: {answer.text}"
    assert api.get("/imports/imp_" + "a" * 24).status_code == 404  # the import ledger's Query
    # Its totals come from the orders' stream, which does not run here: read, and not found.
    assert api.get(f"/customers/{customer}").status_code == 404
    assert api.post(f"/orders/{pending['id']}/cancel", json={"reason": "customer_request"}).status_code == 200

    # Every call is granted (an index AWS would refuse is recorded as `Query on index/...`).
    assert not calls[API] - granted(API), f"calls the template does not grant the API: {calls[API] - granted(API)}"
    # Every index the API is granted is one a route reads (the grant is no wider than its code),
    # and it reads no other: never a table's own Query, never a Scan.
    granted_indexes = {table: {i.removeprefix("index/") for i in on} for table, on in QUERIED_INDEXES[API].items()}
    assert {table: {i for op, t, i in queried if t == table and op == "Query"} for table in granted_indexes} == (
        granted_indexes
    )
    assert not {read for read in queried if read[0] == "Scan"}
