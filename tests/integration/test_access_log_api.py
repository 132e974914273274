"""The access log in-process on moto: each read of an order is queued by the API, stored by the
access-log function (once, however often the message comes), and listed with the order's changes;
a queue that refuses never fails the read; scope audit:read and channels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest

from core.models import HistoryEntry
from core.status import OrderStatus
from tests.e2e.client import assert_error, times
from tests.integration.in_process import InProcessApi, allocated, in_process_api_with_labels
from tests.unit.conftest import a_stored_order


class Context:
    function_name = "AccessLogFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:AccessLogFunction"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def stored(oid: str, channel: str = "web") -> None:
    from functions.bootstrap import Config, bootstrap

    order = a_stored_order(("TSHIRT", 1), id=oid, channel=channel, status=OrderStatus.PENDING)
    created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_shop")
    bootstrap(Config.from_env()).order_repository.add(order, created, payment_token="tok_approve")


def consume_queued_reads() -> list[dict[str, Any]]:
    """What Lambda's SQS mapping does: hand the queued reads to the access-log function; returns them."""
    import os

    from functions.access_log.app import container, lambda_handler

    container.forget()
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = os.environ["ACCESS_LOG_QUEUE_URL"]
    records = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            records.append({"messageId": message["MessageId"], "body": message["Body"], "eventSource": "aws:sqs"})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    if records:
        event = {"Records": records}
        assert lambda_handler(event, Context()) == {"batchItemFailures": []}
        assert lambda_handler(event, Context()) == {"batchItemFailures": []}  # redelivered: stored once
    bodies = [json.loads(r["body"]) for r in records]
    return [read for body in bodies for read in (body if isinstance(body, list) else [body])]  # a list's: one array


def key(api: InProcessApi, *scopes: str, channel: str | None = None) -> tuple[str, str]:
    body: dict[str, Any] = {"name": "k", "scopes": list(scopes), **({"channel": channel} if channel else {})}
    issued = api.post("/api-keys", json=body).json()
    return issued["id"], issued["key"]


def test_each_read_of_an_order_is_logged_once_with_its_key_beside_the_changes(api):
    oid = "ord_" + "r" * 24
    stored(oid)
    reader_id, reader = key(api, "orders:read", "refunds:write")
    for path in ("", "/history", "/returns", "/refunds", "/notifications"):
        assert api.get(f"/orders/{oid}{path}", key=reader).status_code == 200, path
    assert_error(api.get(f"/orders/{oid}", key=key(api, "orders:read", channel="shop")[1]), 404)  # not a read
    queued = consume_queued_reads()
    assert [q["action"] for q in queued] == ["get", "history", "returns", "refunds", "notifications"]

    auditor_id, auditor = key(api, "audit:read")
    answer = api.get(f"/orders/{oid}/access-log", key=auditor)

    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [(i["actor"], i["action"]) for i in items] == [
        ("key_shop", "created"),
        *[(reader_id, action) for action in ("get", "history", "returns", "refunds", "notifications")],
    ]
    assert items[0]["detail"] == {"change": True, "to_status": "pending"}
    assert times(items) == sorted(times(items))
    # Reading the access log is a read of the order too.
    assert [(q["actor"], q["action"]) for q in consume_queued_reads()] == [(auditor_id, "access_log")]


def test_a_change_that_changes_nothing_answers_the_order_and_is_logged_as_a_read_of_it(api):
    # Cancelling a cancelled order answers the order and writes no history entry: the key read
    # the order (customer, address, labels) and the log said nothing of it.
    oid = "ord_" + "v" * 24
    stored(oid)
    writer_id, writer = key(api, "orders:write", "orders:read")
    consume_queued_reads()

    assert api.post(f"/orders/{oid}/cancel", json={"reason": "asked"}, key=writer).status_code == 200
    assert consume_queued_reads() == []  # a change: its history entry names the key
    again = api.post(f"/orders/{oid}/cancel", json={"reason": "asked"}, key=writer)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    replayed_key = {"Idempotency-Key": "cancel-1"}
    for _ in range(2):  # the first a change that changes nothing, the second a replay of its answer
        answer = api.post(f"/orders/{oid}/cancel", json={"reason": "asked"}, key=writer, headers=replayed_key)
        assert answer.status_code == 200, answer.text

    reads = consume_queued_reads()
    assert [(q["order_id"], q["actor"], q["action"]) for q in reads] == [(oid, writer_id, "cancel")] * 3
    items = api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    assert [(i["actor"], i["action"]) for i in items] == [
        ("key_shop", "created"),
        (writer_id, "cancelled"),
        *[(writer_id, "cancel")] * 3,
    ]
    consume_queued_reads()


def test_a_change_that_hands_out_label_links_is_logged_as_a_read_of_them_beside_its_entry(api):
    # A ship writes its history entry and answers the order with a freshly signed link to each
    # shipment's label (the customer's name and address on it); approving a return answers the
    # return's label link. The log named the change and not the links the key was handed.
    from core.return_models import Return, ReturnLine
    from functions.bootstrap import Config, bootstrap
    from tests.e2e.client import Catalog
    from tests.unit.conftest import usd

    [sku] = Catalog(api).stocked("19.99")
    oid, sid = allocated(api, sku)
    shipper_id, shipper = key(api, "fulfillment:write", "orders:read")
    consume_queued_reads()

    shipped = api.post(f"/orders/{oid}/shipments/{sid}/ship", json={}, key=shipper)
    assert shipped.status_code == 200 and shipped.json()["shipments"][0]["label_url"], shipped.text
    assert [(q["order_id"], q["actor"], q["action"], q["detail"]) for q in consume_queued_reads()] == [
        (oid, shipper_id, "ship", {"label_urls": [sid]})
    ]
    # A key that may not read orders is answered a receipt: no link handed out, nothing read.
    courier_id, courier = key(api, "fulfillment:write")
    delivered = api.post(f"/orders/{oid}/shipments/{sid}/deliver", json={}, key=courier)
    assert delivered.status_code == 200 and "shipments" not in delivered.json(), delivered.text
    assert consume_queued_reads() == []

    rid = "rma_" + "h" * 24
    at = bootstrap(Config.from_env()).order_repository.get(oid).updated_at
    bootstrap(Config.from_env()).return_repository.add(
        Return(
            id=rid, order_id=oid, channel="web", ordinal=1, status="requested",
            lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"), fee=usd("0.00"),
            return_to=shipped.json()["shipments"][0]["location_id"], created_at=at, updated_at=at, version=1,
        )
    )  # fmt: skip
    clerk_id, clerk = key(api, "returns:write")
    approved = api.post(f"/returns/{rid}/approve", json={}, key=clerk)
    assert approved.status_code == 200 and approved.json()["label_url"], approved.text
    assert [(q["order_id"], q["actor"], q["action"], q["detail"]) for q in consume_queued_reads()] == [
        (oid, clerk_id, "approve_return", {"return_id": rid, "label_urls": [rid]})
    ]

    items = api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    reads = [(i["actor"], i["action"], i["detail"]) for i in items if not (i["detail"] or {}).get("change")]
    assert reads[-2:] == [  # after the admin's reads that ran the order to allocated
        (shipper_id, "ship", {"label_urls": [sid]}),
        (clerk_id, "approve_return", {"return_id": rid, "label_urls": [rid]}),
    ]
    changes = [(i["actor"], i["action"]) for i in items if (i["detail"] or {}).get("change")]
    assert (shipper_id, "shipment_shipped") in changes and (clerk_id, "return_authorized") in changes
    assert (courier_id, "shipment_delivered") in changes
    consume_queued_reads()


def test_a_refund_replayed_under_its_idempotency_key_is_logged_as_a_read_of_the_order(api):
    # The replay answers the refund made the first time and writes nothing.
    from tests.integration.test_refunds_api import a_captured_order

    oid = "ord_" + "w" * 24
    a_captured_order(oid)
    clerk_id, clerk = key(api, "refunds:write")
    consume_queued_reads()
    body = {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "late"}

    for _ in range(2):
        answer = api.post(f"/orders/{oid}/refunds", json=body, key=clerk, headers={"Idempotency-Key": "late-1"})
        assert answer.status_code == 201, answer.text

    assert [(q["order_id"], q["actor"], q["action"]) for q in consume_queued_reads()] == [(oid, clerk_id, "refund")]


def test_an_order_placed_again_under_its_idempotency_key_is_logged_as_a_read_of_it(api):
    # The replay answers the order placed the first time (its customer, address and prices) and
    # writes nothing: the key read the order.
    from tests.e2e.client import Catalog, order_body

    [sku] = Catalog(api).stocked("19.99")
    shop_id, shop = key(api, "orders:write", "orders:read")
    consume_queued_reads()
    body = order_body((sku, 1))

    placed = [api.post("/orders", json=body, key=shop, headers={"Idempotency-Key": "place-1"}) for _ in range(2)]

    assert [answer.status_code for answer in placed] == [201, 201], placed[1].text
    oid = placed[0].json()["id"]
    assert placed[1].json()["id"] == oid
    assert [(q["order_id"], q["actor"], q["action"]) for q in consume_queued_reads()] == [(oid, shop_id, "place")]
    items = api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    assert [(i["actor"], i["action"]) for i in items[:1] + items[-1:]] == [(shop_id, "created"), (shop_id, "place")]
    consume_queued_reads()


def test_reading_one_of_its_returns_by_the_return_id_is_a_read_of_the_order(api):
    from core.return_models import Return, ReturnLine
    from functions.bootstrap import Config, bootstrap
    from tests.unit.conftest import usd

    oid, rid = "ord_" + "u" * 24, "rma_" + "u" * 24
    stored(oid)
    created = a_stored_order(("TSHIRT", 1)).created_at
    bootstrap(Config.from_env()).return_repository.add(
        Return(
            id=rid, order_id=oid, channel="web", ordinal=1, status="requested",
            lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"), fee=usd("0.00"),
            created_at=created, updated_at=created, version=1,
        )
    )  # fmt: skip
    reader_id, reader = key(api, "orders:read")
    consume_queued_reads()

    assert api.get(f"/returns/{rid}", key=reader).status_code == 200
    assert_error(api.get(f"/returns/{rid}", key=key(api, "orders:read", channel="shop")[1]), 404)  # not a read

    assert [(q["order_id"], q["actor"], q["action"], q["detail"]) for q in consume_queued_reads()] == [
        (oid, reader_id, "returns", {"return_id": rid})
    ]


def test_reading_returns_names_the_return_labels_it_handed_out_as_an_order_read_names_its_labels(api):
    # A return's label carries the customer's name and address, as a shipment's does. A read of the
    # order names the shipments whose label links it handed out (`label_urls`); a read of its
    # returns handed out each return's label link and the log did not say which.
    from core.return_models import Return, ReturnLine
    from functions.bootstrap import Config, bootstrap
    from tests.unit.conftest import usd

    oid = "ord_" + "k" * 24
    labelled, unlabelled = "rma_" + "k" * 24, "rma_" + "j" * 24
    stored(oid, channel="label-shop")
    created = a_stored_order(("TSHIRT", 1)).created_at
    for ordinal, (rid, status, label) in enumerate(
        [(labelled, "authorized", "https://labels.example/return.pdf"), (unlabelled, "requested", None)], start=1
    ):
        bootstrap(Config.from_env()).return_repository.add(
            Return(
                id=rid, order_id=oid, channel="label-shop", ordinal=ordinal, status=status,
                lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"),
                fee=usd("0.00"), label_url=label, carrier="OMS Flat Rate" if label else None,
                created_at=created, updated_at=created, version=1,
            )
        )  # fmt: skip
    reader_id, reader = key(api, "orders:read", channel="label-shop")
    consume_queued_reads()

    for path in (f"/returns/{labelled}", f"/returns/{unlabelled}", f"/orders/{oid}/returns", "/returns"):
        assert api.get(path, key=reader).status_code == 200, path

    reads = consume_queued_reads()
    assert [(q["order_id"], q["actor"], q["action"]) for q in reads] == [(oid, reader_id, "returns")] * 4
    assert [q["detail"] for q in reads[:3]] == [
        {"return_id": labelled, "label_urls": [labelled]},
        {"return_id": unlabelled},
        {"label_urls": [labelled]},
    ]
    listed = reads[3]["detail"]  # the page of GET /returns: the order once, naming both
    assert (sorted(listed["return_ids"]), listed["label_urls"]) == (sorted([labelled, unlabelled]), [labelled])


def test_the_access_log_needs_audit_read_and_channel_keys_see_their_channel_only(api):
    oid = "ord_" + "s" * 24
    stored(oid, channel="web")
    assert_error(api.get(f"/orders/{oid}/access-log", key=key(api, "orders:read")[1]), 403)
    assert_error(api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read", channel="shop")[1]), 404)
    assert api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read", channel="web")[1]).status_code == 200
    assert_error(api.get(f"/orders/ord_{'z' * 24}/access-log"), 404)
    consume_queued_reads()


def test_a_queue_that_refuses_never_fails_the_read_and_the_read_goes_to_the_log(api, monkeypatch, caplog):
    from functions.api.dependencies import container

    oid = "ord_" + "t" * 24
    stored(oid)

    class Refusing:
        def record(self, read: Any) -> None:
            raise ConnectionError("sqs unavailable")

    monkeypatch.setattr(container(), "read_recorder", Refusing())
    caplog.clear()
    answer = api.get(f"/orders/{oid}")

    assert answer.status_code == 200, answer.text
    (logged,) = [record for record in caplog.records if record.getMessage() == "read not queued"]
    assert logged.levelname == "ERROR"
    assert logged.access["order_id"] == oid and logged.access["action"] == "get"  # the whole read, to put back


def test_a_much_read_orders_log_is_read_a_page_at_a_time(api):
    # Every read stays 400 days: a storefront polling an order would make its whole log one answer
    # past Lambda's 6 MB. Pages of `limit` (default 25, as every list), each one bounded Query.
    from datetime import timedelta

    from core.access_log import OrderRead
    from functions.api.dependencies import container

    oid = "ord_" + "p" * 24
    stored(oid)
    store = container().access_log_store
    start = a_stored_order(("TSHIRT", 1)).created_at
    for n in range(60):
        at = start + timedelta(seconds=n // 2)  # two reads a second: ties broken by request id
        store.add(OrderRead(request_id=f"req-{n:03d}", order_id=oid, at=at, actor="key_poller", action="get"))
    queries: list[dict] = []
    events = container().dynamodb.meta.events
    events.register("provide-client-params.dynamodb.Query", count := lambda params, **_: queries.append(params))

    first = api.get(f"/orders/{oid}/access-log")
    assert first.status_code == 200, first.text
    assert len(first.json()["items"]) == 25 and first.json()["next_cursor"]
    items, cursor = first.json()["items"], first.json()["next_cursor"]
    while cursor:
        page = api.get(f"/orders/{oid}/access-log", params={"cursor": cursor, "limit": 100})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]

    assert [i["action"] for i in items] == ["created"] + ["get"] * 60
    assert times(items) == sorted(times(items))
    # (The other Query of each page: the order's returns, for entries they owe its history.)
    reads = [q for q in queries if q["ExpressionAttributeValues"].get(":pk") == {"S": f"ACCESS#{oid}"}]
    assert len(reads) == 2 and all(q["Limit"] <= 101 for q in reads)
    assert_error(api.get(f"/orders/{oid}/access-log", params={"limit": 101}), 422, "validation_error", "limit")
    events.unregister("provide-client-params.dynamodb.Query", count)
    other_order = "ord_" + "q" * 24
    stored(other_order)
    other = api.get(f"/orders/{other_order}/access-log", params={"cursor": first.json()["next_cursor"]})
    assert_error(other, 422, "invalid_cursor", "cursor")
    consume_queued_reads()


# A cursor names the last read a page showed by its request id, which the next page's Query puts in
# its key condition. Half a UTF-16 pair (\ud800, which JSON can write) has no UTF-8 form: moto
# answers the Query, DynamoDB stores and compares strings as UTF-8 and refuses it (a client error,
# which the API answered 500 internal_error). The position is refused as the client's, before any
# Query is sent.
@pytest.mark.parametrize(("letter", "request_id"), [("h", "\ud800"), ("i", "req-\udfff"), ("j", "\udc00\ud800")])
def test_an_access_log_cursor_naming_half_a_character_is_422_before_any_query(api, letter, request_id):
    import base64

    from functions.api.dependencies import container

    oid = "ord_" + letter * 24
    stored(oid)
    at = a_stored_order(("TSHIRT", 1)).created_at.isoformat()
    raw = json.dumps({"o": oid, "at": at, "k": 1, "key": request_id})  # written as the \u escape JSON has for it
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    queries: list[dict] = []
    events = container().dynamodb.meta.events
    events.register("provide-client-params.dynamodb.Query", count := lambda params, **_: queries.append(params))
    try:
        answer = api.get(f"/orders/{oid}/access-log", params={"cursor": cursor})
    finally:
        events.unregister("provide-client-params.dynamodb.Query", count)

    assert_error(answer, 422, "invalid_cursor", "cursor")
    assert not [q for q in queries if q["ExpressionAttributeValues"].get(":pk") == {"S": f"ACCESS#{oid}"}]
    consume_queued_reads()


def test_listing_orders_or_returns_is_a_read_of_each_order_listed(api):
    # GET /orders answers each order whole (customer, address, signed label links) and GET /returns
    # each return (its label link): the log of every order listed said nothing of either.
    from core.return_models import Return, ReturnLine
    from functions.bootstrap import Config, bootstrap
    from tests.unit.conftest import usd

    first, second = "ord_" + "l" * 24, "ord_" + "m" * 24
    stored(first, channel="kiosk")
    stored(second, channel="kiosk")
    created = a_stored_order(("TSHIRT", 1)).created_at
    returns = [f"rma_{letter * 24}" for letter in "mn"]
    for ordinal, rid in enumerate(returns, start=1):
        bootstrap(Config.from_env()).return_repository.add(
            Return(
                id=rid, order_id=second, channel="kiosk", ordinal=ordinal, status="requested",
                lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"),
                fee=usd("0.00"), created_at=created, updated_at=created, version=1,
            )
        )  # fmt: skip
    reader_id, reader = key(api, "orders:read", channel="kiosk")
    consume_queued_reads()

    listed = api.get("/orders", key=reader)
    assert listed.status_code == 200, listed.text
    assert {order["id"] for order in listed.json()["items"]} == {first, second}
    page = api.get("/returns", key=reader)
    assert sorted(item["id"] for item in page.json()["items"]) == returns
    assert api.get("/orders", key=reader, params={"status": "cancelled"}).json()["items"] == []  # nothing read

    reads = consume_queued_reads()
    assert sorted((q["order_id"], q["actor"], q["action"]) for q in reads) == [
        (first, reader_id, "list"), (second, reader_id, "list"), (second, reader_id, "returns"),
    ]  # fmt: skip
    assert [q["detail"] for q in reads if q["action"] == "list"] == [None, None]  # no shipment: no label link
    (of_returns,) = [q["detail"] for q in reads if q["action"] == "returns"]
    assert sorted(of_returns["return_ids"]) == returns  # one read of the order, naming both
    items = api.get(f"/orders/{second}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    assert [(i["actor"], i["action"]) for i in items] == [("key_shop", "created"), (reader_id, "list"),
                                                          (reader_id, "returns")]  # fmt: skip
    consume_queued_reads()


def test_a_return_received_again_is_logged_as_a_read_of_its_order_and_its_first_receipt_is_not(api, monkeypatch):
    # Receiving a received return again with the same receipt answers the return as it is (its
    # lines, refund and a freshly signed label link) and writes nothing: the key read it, which a
    # GET /returns/{id} records, and the log said nothing. The first receipt writes the return
    # (the workflow then writes the order's `return_received` entry, naming the key): a change,
    # not a read.
    from core.return_models import Return, ReturnLine
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap
    from tests.e2e.client import Catalog
    from tests.unit.conftest import usd

    class Started:
        def __init__(self) -> None:
            self.started: list[str] = []

        def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
            self.started.append(return_id)

    oid, rid = "ord_" + "x" * 24, "rma_" + "x" * 24
    stored(oid)
    created = a_stored_order(("TSHIRT", 1)).created_at
    bootstrap(Config.from_env()).return_repository.add(
        Return(
            id=rid, order_id=oid, channel="web", ordinal=1, status="authorized",
            lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"), fee=usd("0.00"),
            created_at=created, updated_at=created, version=1,
        )
    )  # fmt: skip
    warehouse = Catalog(api).location()
    monkeypatch.setitem(vars(container()), "return_workflow", workflow := Started())
    clerk_id, clerk = key(api, "fulfillment:write")  # the location's key that receives the parcel
    consume_queued_reads()
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    first = api.post(f"/returns/{rid}/receive", json=receipt, key=clerk)
    assert (first.status_code, first.json()["status"], workflow.started) == (202, "received", [rid]), first.text
    assert consume_queued_reads() == []  # a change: the workflow's entry names the key
    again = api.post(f"/returns/{rid}/receive", json=receipt, key=clerk)
    assert (again.status_code, again.json()["status"]) == (202, "received"), again.text
    recount = {**receipt, "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}]}
    assert_error(api.post(f"/returns/{rid}/receive", json=recount, key=clerk), 409)  # refused: not a read

    assert [(q["order_id"], q["actor"], q["action"], q["detail"]) for q in consume_queued_reads()] == [
        (oid, clerk_id, "receive", {"return_id": rid})
    ]


def test_simulating_the_sourcing_of_stored_orders_is_a_read_of_each_of_them(api):
    # POST /sourcing/simulate with order ids (scope orders:read, another channel's order refused
    # as unknown) answers each order's lines, skus, quantities and distances to where it goes:
    # the key read those orders, and their logs said nothing.
    first, second = "ord_" + "y" * 24, "ord_" + "z" * 24
    stored(first)
    stored(second)
    planner_id, planner = key(api, "orders:read")
    consume_queued_reads()
    body = {"orders": [first, second, first]}

    answer = api.post("/sourcing/simulate", json=body, key=planner)

    assert answer.status_code == 200, answer.text
    assert [item["order_id"] for item in answer.json()["items"]] == [first, second, first]
    elsewhere = key(api, "orders:read", channel="shop")[1]
    assert_error(api.post("/sourcing/simulate", json={"orders": [first]}, key=elsewhere), 422, None, "orders[0]")
    reads = consume_queued_reads()  # once per order and request
    assert sorted((q["order_id"], q["actor"], q["action"]) for q in reads) == [
        (first, planner_id, "simulate"),
        (second, planner_id, "simulate"),
    ]


def test_a_read_that_showed_a_change_comes_after_it_in_the_log(api):
    # API Gateway's request time is when the request arrived. A read that waited (a new container
    # starting, the authorizer) while a change was made, and then read the order with it, was
    # listed before that change: the log said the key saw the order as it was, not as it showed it.
    import time

    from infra.local.gateway import HttpRequest

    oid = "ord_" + "g" * 24
    stored(oid)
    clerk_id, clerk = key(api, "orders:write", "orders:read")
    consume_queued_reads()
    arrived = time.time()  # the read arrives; the order is cancelled meanwhile; then it is read
    assert api.post(f"/orders/{oid}/cancel", json={"reason": "asked"}, key=clerk).status_code == 200
    asked = HttpRequest(method="GET", path=f"/orders/{oid}", headers=[("Authorization", f"Bearer {clerk}")],
                        received_at=arrived - 1)  # fmt: skip
    read = api.gateway.handle(asked)
    assert read.status_code == 200 and json.loads(read.get_data())["status"] == "cancelled"
    consume_queued_reads()

    items = api.get(f"/orders/{oid}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    assert [(i["actor"], i["action"]) for i in items] == [
        ("key_shop", "created"),
        (clerk_id, "cancelled"),
        (clerk_id, "get"),
    ]
    consume_queued_reads()


def test_a_queued_read_with_no_time_zone_is_poison_and_one_at_another_offset_is_kept_at_its_instant(api):
    # The runbooks send reads to AccessLogQueue by hand (a `read not queued` line's `access`, a
    # dead-letter redrive): the function is the queue's only reader and stored whatever parsed. A
    # read with no zone was stored, and every page of its order's log then compared it with the
    # changes' times (aware) and answered 500 for 400 days; a read at +01:00 was keyed by its
    # local time, so the Query's order (the key's) put it after reads it came before.
    from functions.access_log.app import container, lambda_handler

    oid = "ord_" + "e" * 24
    stored(oid)
    consume_queued_reads()
    at = a_stored_order(("TSHIRT", 1)).created_at.replace(tzinfo=None)  # the order's `created` entry, with no zone

    def message(request_id: str, when: str) -> dict[str, Any]:
        actor = f"key_{request_id[-1]}"
        body = {"request_id": request_id, "order_id": oid, "at": when, "actor": actor, "action": "get"}
        return {"messageId": request_id, "body": json.dumps(body), "eventSource": "aws:sqs"}

    later_utc = (at + timedelta(minutes=30)).isoformat() + "+00:00"  # 30 minutes after the order
    earlier_in_paris = (at + timedelta(minutes=70)).isoformat() + "+01:00"  # 10 minutes after it
    no_zone = (at + timedelta(minutes=5)).isoformat()
    event = {"Records": [message("req-a", later_utc), message("req-b", earlier_in_paris), message("req-c", no_zone)]}
    container.forget()

    assert lambda_handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": "req-c"}]}

    auditor = key(api, "audit:read")[1]
    whole = api.get(f"/orders/{oid}/access-log", key=auditor)
    assert whole.status_code == 200, whole.text
    assert [(i["actor"], i["action"]) for i in whole.json()["items"]] == [
        ("key_shop", "created"),
        ("key_b", "get"),  # 10 minutes after the order, written at +01:00
        ("key_a", "get"),
    ]
    assert times(whole.json()["items"]) == sorted(times(whole.json()["items"]))
    paged, cursor = [], None
    while True:
        page = api.get(
            f"/orders/{oid}/access-log", key=auditor, params={"limit": 1, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        paged += page.json()["items"]
        if not (cursor := page.json()["next_cursor"]):
            break
    assert paged == whole.json()["items"]
    consume_queued_reads()


def walk(api: InProcessApi, oid: str, auditor: str) -> list[dict[str, Any]]:
    """The order's whole log, a page of one entry at a time, every page 200."""
    paged, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/orders/{oid}/access-log", key=auditor, params=params)
        assert page.status_code == 200, page.text
        paged += page.json()["items"]
        if not (cursor := page.json()["next_cursor"]):
            return paged


def test_a_read_with_no_request_id_is_walked_past(api):
    # The API queues "" as the request id of a read whose event has none (API Gateway's always has
    # one; a read sent by hand may not). The page that showed such a read handed out a cursor naming
    # it, and its next page refused that cursor (422): the reads after it could not be walked to.
    from functions.access_log.app import container, lambda_handler

    oid = "ord_" + "d" * 24
    stored(oid)
    consume_queued_reads()
    at = a_stored_order(("TSHIRT", 1)).created_at
    reads = [("", "key_none", 1), ("req-later", "key_later", 2)]
    records = [
        {"messageId": f"m{n}", "eventSource": "aws:sqs", "body": json.dumps({
            "request_id": request_id, "order_id": oid, "at": (at + timedelta(minutes=minutes)).isoformat(),
            "actor": actor, "action": "get",
        })}
        for n, (request_id, actor, minutes) in enumerate(reads)
    ]  # fmt: skip
    container.forget()
    assert lambda_handler({"Records": records}, Context()) == {"batchItemFailures": []}

    paged = walk(api, oid, key(api, "audit:read")[1])

    assert [i["actor"] for i in paged] == ["key_shop", "key_none", "key_later"]
    consume_queued_reads()


def test_a_queued_read_whose_request_id_no_cursor_may_name_is_poison(api):
    # A page's cursor names the last read it showed by its request id, and a cursor naming one longer
    # than API Gateway's ever are (200 characters) is refused. A read sent by hand with a longer one
    # was stored: the page that showed it handed out a cursor its next page refused (422), and the
    # reads after it could not be walked to.
    from functions.access_log.app import container, lambda_handler

    oid = "ord_" + "f" * 24
    stored(oid)
    consume_queued_reads()
    at = a_stored_order(("TSHIRT", 1)).created_at

    def message(request_id: str, minutes: int) -> dict[str, Any]:
        when = (at + timedelta(minutes=minutes)).isoformat()
        body = {"request_id": request_id, "order_id": oid, "at": when, "actor": "key_hand", "action": "get"}
        return {"messageId": request_id[:20], "body": json.dumps(body), "eventSource": "aws:sqs"}

    long_id = "r" * 201
    event = {"Records": [message(long_id, 1), message("req-later", 2)]}
    container.forget()

    assert lambda_handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": long_id[:20]}]}

    paged = walk(api, oid, key(api, "audit:read")[1])
    assert [(i["actor"], i["action"]) for i in paged] == [("key_shop", "created"), ("key_hand", "get")]
    consume_queued_reads()


def test_an_auditor_walking_the_log_one_entry_a_page_reaches_its_end_though_each_page_is_a_read(api):
    # Reading the log is a read of the order, stored within a second or so: a walk at `limit=1` slower
    # than that met one new entry (its own last page) on every page and never reached a null cursor
    # (seen on make run: 5,768 `access_log` entries in ten minutes). The reads made once the walk
    # began are the next walk's.
    oid = "ord_" + "n" * 24
    stored(oid)
    reader_id, reader = key(api, "orders:read")
    assert api.get(f"/orders/{oid}", key=reader).status_code == 200
    auditor_id, auditor = key(api, "audit:read")
    consume_queued_reads()
    paged, cursor = [], None
    for _ in range(10):
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/orders/{oid}/access-log", key=auditor, params=params)
        assert page.status_code == 200, page.text
        paged += page.json()["items"]
        consume_queued_reads()  # the page's own read, stored before the next page is asked for
        if not (cursor := page.json()["next_cursor"]):
            break

    assert cursor is None, [(i["actor"], i["action"]) for i in paged]
    walked = [("key_shop", "created"), (reader_id, "get")]
    assert [(i["actor"], i["action"]) for i in paged] == walked
    again = api.get(f"/orders/{oid}/access-log", key=auditor, params={"limit": 100}).json()["items"]
    assert [(i["actor"], i["action"]) for i in again] == walked + [(auditor_id, "access_log")] * 2
    consume_queued_reads()
