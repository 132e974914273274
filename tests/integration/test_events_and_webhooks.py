"""Events and webhooks on moto: the Orders stream handler publishes to the bus and queues deliveries
(a redelivered record gives the same events and no second delivery); the delivery handler signs
and POSTs to a receiver over real HTTP on loopback, retries after a 5xx or a timeout."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from core.models import HistoryEntry
from core.status import OrderStatus
from core.webhooks import MAX_WEBHOOKS, DeliveryMessage, IssuedWebhook, verify_signature
from functions.adapters.webhooks import SqsDeliveryQueue
from tests.fakes import refusing_once
from tests.integration.documented_events import assert_documented, openapi_document
from tests.unit.conftest import a_stored_order

REGION = "us-east-1"


class Context:
    function_name = "EventsFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:EventsFunction"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


@pytest.fixture
def wired(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A bus whose every event is copied to a queue (a rule, as another stack would subscribe),
    the delivery queue, and the functions' environment naming them."""
    sqs = boto3.client("sqs", region_name=REGION)
    events = boto3.client("events", region_name=REGION)
    events.create_event_bus(Name="test-events")
    tap = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="everything", EventBusName="test-events", EventPattern=json.dumps({"source": ["oms"]}))
    events.put_targets(Rule="everything", EventBusName="test-events", Targets=[{"Id": "tap", "Arn": tap_arn}])
    deliveries = sqs.create_queue(QueueName="webhook-deliveries")["QueueUrl"]
    monkeypatch.setenv("EVENT_BUS_NAME", "test-events")
    monkeypatch.setenv("WEBHOOK_QUEUE_URL", deliveries)
    monkeypatch.setenv("WEBHOOK_ALLOW_LOCAL_HTTP", "true")
    from functions.events.app import container as events_container
    from functions.webhook_delivery.app import container as delivery_container

    events_container.forget()
    delivery_container.forget()
    yield {"sqs": sqs, "tap": tap, "deliveries": deliveries}
    events_container.forget()
    delivery_container.forget()


@pytest.fixture(autouse=True)
def events_calls_granted(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call the events and webhook delivery functions make in a test that wires them (here,
    and where a module imports this beside `wired`) is one the template grants them, by table, key
    and action: moto lets through what AWS refuses."""
    if "wired" not in request.fixturenames:
        yield
        return
    from tests.template_iam import handlers_checked

    aws, wiring = request.getfixturevalue("aws"), request.getfixturevalue("wired")
    handlers = {"EventsFunction": "functions.events.app", "WebhookDeliveryFunction": "functions.webhook_delivery.app"}
    names = {
        "event_bus_names": {"EventBus": "test-events"},
        "queue_urls": {"WebhookDeliveryQueue": wiring["deliveries"]},
    }
    with handlers_checked(monkeypatch, handlers, aws.tables, **names):
        yield


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        messages += batch
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def lambda_image(item: dict[str, Any]) -> dict[str, Any]:
    """An item as Lambda's stream event carries it: binary attributes in base64."""
    return {
        name: {"B": base64.b64encode(value["B"]).decode()} if "B" in value else value for name, value in item.items()
    }


def stream_event(*changes: tuple[str, dict | None, dict]) -> dict[str, Any]:
    records = []
    for number, (name, old, new) in enumerate(changes):
        images = {"Keys": {"id": new["id"]}, "NewImage": lambda_image(new), "SequenceNumber": str(100 + number)}
        if old is not None:
            images["OldImage"] = lambda_image(old)
        records.append(
            {
                "eventID": f"e{number}",
                "eventName": name,
                "eventSource": "aws:dynamodb",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/x",
                "dynamodb": images,
            }
        )
    return {"Records": records}


def stored_item(aws, order_id: str) -> dict[str, Any]:
    return aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}})["Item"]


def an_order_allocated(aws) -> tuple[dict, dict, dict]:
    """A new order's item, then the same order allocated: the two changes of the stream."""
    from functions.adapters.dynamodb import DynamoOrders

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = a_stored_order(("TSHIRT", 1), id="ord_events1", status=OrderStatus.PENDING)
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    orders.add(placed, HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_1"), "tok")
    created = stored_item(aws, placed.id)
    authorized = placed.model_copy(update={"status": OrderStatus.AUTHORIZED, "version": 2})
    orders.update(authorized, placed, [])
    after_authorized = stored_item(aws, placed.id)
    return created, after_authorized, {}


def subscribe(url: str, events: list[str], channel: str | None = None) -> IssuedWebhook:
    from functions.events.app import container

    webhook = IssuedWebhook(
        id=f"whk_{'a' * 20}{len(url) % 10:04d}",
        url=url,
        events=events,
        channel=channel,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        secret="whsec_test",
    )
    container().webhook_store.add(webhook, MAX_WEBHOOKS)
    return webhook


@contextlib.contextmanager
def subscription_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The items of every read of the webhook subscriptions' partition made meanwhile, as
    DynamoDB answered them (before any adapter drops an attribute)."""
    from botocore.client import BaseClient

    from functions.adapters.webhooks import WEBHOOKS_PK

    answered: list[dict[str, Any]] = []
    calling = BaseClient._make_api_call

    def reading(client: Any, operation: str, params: dict[str, Any]) -> Any:
        answer = calling(client, operation, params)
        if operation == "Query" and params.get("ExpressionAttributeValues", {}).get(":pk") == {"S": WEBHOOKS_PK}:
            answered.extend(answer["Items"])
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", reading)
    yield answered


def one_delivery_queued(aws, wired, url: str) -> tuple[IssuedWebhook, DeliveryMessage]:
    """A subscription at `url` to order.created, an order allocated, and its INSERT read by the events
    function: the subscription and the one delivery message it queued (drained off the queue)."""
    from functions.events.app import lambda_handler as events_handler

    webhook = subscribe(url, ["order.created"])
    created, _, _ = an_order_allocated(aws)
    events_handler(stream_event(("INSERT", None, created)), Context())
    (queued,) = drain(wired["sqs"], wired["deliveries"])
    return webhook, DeliveryMessage.from_json(queued["Body"])


def test_order_changes_go_to_the_bus_and_to_matching_subscriptions_once_even_when_redelivered(aws, wired):
    from functions.events.app import container, lambda_handler

    created, authorized, _ = an_order_allocated(aws)
    everything = subscribe("http://127.0.0.1:9/all", ["*"])
    subscribe("http://127.0.0.1:9/shop", ["*"], channel="shop")  # another channel: gets nothing
    stream = stream_event(("INSERT", None, created), ("MODIFY", created, authorized))

    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    on_bus = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert [(e["source"], e["detail-type"]) for e in on_bus] == [("oms", "order.created"), ("oms", "order.authorized")]
    assert on_bus[1]["detail"]["data"]["order"]["status"] == "authorized"
    assert on_bus[1]["detail"]["id"].startswith("evt_")
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert {q["webhook_id"] for q in queued} == {everything.id} and len(queued) == 2
    records, _ = container().webhook_store.deliveries(everything.id, 10, None)
    assert sorted(r.event_type.value for r in records) == ["order.authorized", "order.created"]

    # The stream delivers the same records again (a retried batch): the same event ids reach the
    # bus (subscribers dedupe on them) and no delivery is made twice.
    records_before = {r.id: r for r in records}
    for record in records:  # as if both had been tried once already
        container().webhook_store.update_delivery(record.model_copy(update={"attempts": 1}), record)
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    again = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert [e["detail"]["id"] for e in again] == [e["detail"]["id"] for e in on_bus]
    assert drain(wired["sqs"], wired["deliveries"]) == []
    assert set(records_before) == {r.id for r in container().webhook_store.deliveries(everything.id, 10, None)[0]}


def test_the_events_function_reads_the_subscriptions_it_matches_without_their_signing_secrets(aws, wired, monkeypatch):
    # The function that turns every change into events needs a subscription's types, channel and
    # id, never what signs its deliveries: only the API and the delivery function read secrets.
    from functions.events.app import lambda_handler

    subscribe("http://127.0.0.1:9/created", ["order.created"])
    created, _, _ = an_order_allocated(aws)

    with subscription_reads(monkeypatch) as read:
        assert lambda_handler(stream_event(("INSERT", None, created)), Context()) == {"batchItemFailures": []}

    assert len(drain(wired["sqs"], wired["deliveries"])) == 1  # matched and queued all the same
    assert read and all("secret" not in item for item in read), read


def test_a_failed_record_holds_back_the_later_records_of_its_batch_so_events_keep_their_order(aws, wired, monkeypatch):
    """The stream retries a batch from its first failed record: a later record processed in the
    same run published its events before the failed one's (`order.allocated` before
    `order.authorized` on the bus and to subscribers). Every record after a failed one is reported
    failed, unprocessed, and the retry publishes them in order."""
    from functions.adapters.dynamodb import DynamoOrders
    from functions.adapters.webhooks import EventBridgePublisher
    from functions.events.app import lambda_handler

    created, authorized, _ = an_order_allocated(aws)
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    was = orders.get("ord_events1")
    orders.update(was.model_copy(update={"status": OrderStatus.ALLOCATED, "version": was.version + 1}), was, [])
    allocated = stored_item(aws, "ord_events1")
    subscribe("http://127.0.0.1:9/all", ["*"])
    stream = stream_event(("INSERT", None, created), ("MODIFY", created, authorized), ("MODIFY", authorized, allocated))
    publish = EventBridgePublisher.publish
    refusals = iter([False, True])  # the bus refuses the second record's event, once

    def refuse_once(self, events):
        if next(refusals, False):
            raise RuntimeError("the event bus refused 1 event(s)")
        publish(self, events)

    monkeypatch.setattr(EventBridgePublisher, "publish", refuse_once)
    assert lambda_handler(stream, Context()) == {
        "batchItemFailures": [{"itemIdentifier": "101"}, {"itemIdentifier": "102"}]
    }
    assert [json.loads(m["Body"])["detail-type"] for m in drain(wired["sqs"], wired["tap"])] == ["order.created"]
    assert len(drain(wired["sqs"], wired["deliveries"])) == 1

    # Lambda retries from the first failed record: the rest of the order's events, in order.
    stream["Records"] = stream["Records"][1:]
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    on_bus = [json.loads(m["Body"])["detail-type"] for m in drain(wired["sqs"], wired["tap"])]
    assert on_bus == ["order.authorized", "order.allocated"]
    assert len(drain(wired["sqs"], wired["deliveries"])) == 2


class LittleTimeLeft(Context):
    """An invocation near its end: half a second left of it, whatever the batch has done."""

    def get_remaining_time_in_millis(self) -> int:
        return 500


def test_a_batch_with_little_time_left_leaves_the_records_it_cannot_finish_to_the_next_and_publishes_each_event_once(
    aws, wired
):
    """The events function worked through its whole batch whatever time it had left: a batch at
    the webhook cap (25 changes, each event stored for 50 subscriptions) ran past the function's
    Timeout, and Lambda retried the batch whole, bisected, every change before the timeout
    publishing its events again. Once too little is left to start a record, the rest of the batch
    is reported failed unprocessed (after at least one record), so the stream resumes from the
    first of them, and each event reaches the bus and each subscription once."""
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler

    created, authorized, _ = an_order_allocated(aws)
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    was = orders.get("ord_events1")
    orders.update(was.model_copy(update={"status": OrderStatus.ALLOCATED, "version": was.version + 1}), was, [])
    allocated = stored_item(aws, "ord_events1")
    everything = subscribe("http://127.0.0.1:9/all", ["*"])
    stream = stream_event(("INSERT", None, created), ("MODIFY", created, authorized), ("MODIFY", authorized, allocated))

    assert lambda_handler(stream, LittleTimeLeft()) == {
        "batchItemFailures": [{"itemIdentifier": "101"}, {"itemIdentifier": "102"}]
    }
    first = [json.loads(m["Body"])["detail"] for m in drain(wired["sqs"], wired["tap"])]
    assert [e["type"] for e in first] == ["order.created"]
    assert len(drain(wired["sqs"], wired["deliveries"])) == 1

    # The stream hands the batch out again from its first failed record, with time to spare.
    stream["Records"] = stream["Records"][1:]
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    then = [json.loads(m["Body"])["detail"] for m in drain(wired["sqs"], wired["tap"])]
    assert [e["type"] for e in then] == ["order.authorized", "order.allocated"]
    ids = [e["id"] for e in first + then]
    assert len(set(ids)) == 3  # each event on the bus once
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert len(queued) == 2 and {q["webhook_id"] for q in queued} == {everything.id}
    records, _ = container().webhook_store.deliveries(everything.id, 10, None)
    assert sorted(r.event_id for r in records) == sorted(ids)


def test_an_events_deliveries_are_written_ten_at_a_time_each_only_if_new(aws, wired, monkeypatch):
    """Each delivery was written after the one before it: an event at the cap (50 subscriptions)
    was 50 round trips, a batch of 25 changes at the cap some 3,750, past the events function's
    Timeout. They are written REQUESTS_AT_ONCE at a time (here, no write of a round of ten ends
    before all ten have started: one at a time, the first waits in vain), each still conditional
    on being new, so the record's redelivery overwrites none."""
    from functions.adapters.webhooks import REQUESTS_AT_ONCE
    from functions.events.app import container, lambda_handler

    store = container().webhook_store
    made = datetime(2026, 12, 1, tzinfo=UTC)
    webhooks = [
        IssuedWebhook(id=f"whk_{n:024d}", url="http://127.0.0.1:9/x", events=["*"], channel=channel,
                      created_at=made, secret="whsec_test")
        for n, channel in enumerate(["web", None] * REQUESTS_AT_ONCE)
    ]  # fmt: skip
    for webhook in webhooks:
        store.add(webhook, MAX_WEBHOOKS)
    created, _, _ = an_order_allocated(aws)
    client = container().dynamodb
    real = client.put_item
    together = threading.Barrier(REQUESTS_AT_ONCE, timeout=30)

    def in_rounds(**request: Any) -> Any:
        if request["Item"]["pk"]["S"].startswith("WEBHOOK#"):
            together.wait()  # raises once it breaks: a write that started alone
        return real(**request)

    monkeypatch.setattr(client, "put_item", in_rounds)
    stream = stream_event(("INSERT", None, created))
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert sorted(q["webhook_id"] for q in queued) == [w.id for w in webhooks]
    monkeypatch.setattr(client, "put_item", real)

    # Redelivered once its deliveries were tried: none is written again, none queued again.
    for webhook in webhooks:
        [record], _ = store.deliveries(webhook.id, 10, None)
        assert store.update_delivery(record.model_copy(update={"attempts": 1, "last_status_code": 204}), record)
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    assert drain(wired["sqs"], wired["deliveries"]) == []
    for webhook in webhooks:
        [record], _ = store.deliveries(webhook.id, 10, None)
        assert (record.attempts, record.last_status_code) == (1, 204)


def test_an_import_that_ends_goes_to_the_bus_and_its_subscribers_once_even_when_redelivered(aws, wired):
    """The Catalog stream's record of an import's item reaching `completed_with_errors` (what the
    ImportsStream mapping's filter passes) is `import.completed`, the import as GET /imports/{id}
    shows it, errors included; channel-bound subscriptions do not get it."""
    from core.import_service import Outcome
    from core.imports import LineError
    from functions.adapters.imports import DynamoImportLedger, _import_key
    from functions.events.app import container, lambda_handler

    ledger = DynamoImportLedger(aws.dynamodb, aws.tables["CatalogTable"], aws.tables["IdempotencyTable"])
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    key = _import_key("imp_events1")
    ledger.begin("imp_events1", "s3://b/incoming/orders.csv", at)
    ledger.finish_reading("imp_events1", "csv", 2, at)
    ledger.record("imp_events1", 1, Outcome.IMPORTED, None, at)
    running = aws.dynamodb.get_item(TableName=aws.tables["CatalogTable"], Key=key)["Item"]
    ledger.record("imp_events1", 2, Outcome.FAILED, LineError(2, None, "unknown_sku", "no product NOPE"), at)
    ended = aws.dynamodb.get_item(TableName=aws.tables["CatalogTable"], Key=key)["Item"]
    assert ended["status"] == {"S": "completed_with_errors"}
    imports = subscribe("http://127.0.0.1:9/imports", ["import.completed"])
    subscribe("http://127.0.0.1:9/shop-all", ["*"], channel="shop")  # bound to a channel: nothing
    record = {
        "eventID": "c1",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/catalog/stream/x",
        "dynamodb": {"Keys": key, "OldImage": running, "NewImage": ended, "SequenceNumber": "200"},
    }

    assert lambda_handler({"Records": [record]}, Context()) == {"batchItemFailures": []}
    [on_bus] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert (on_bus["source"], on_bus["detail-type"]) == ("oms", "import.completed")
    shown = ledger.get("imp_events1").model_dump(mode="json")
    assert [error["code"] for error in shown["errors"]] == ["unknown_sku"]
    assert on_bus["detail"]["data"] == {"import": shown, "errors_omitted": 0}
    assert_documented(openapi_document(), on_bus["detail"])  # as GET /openapi.json's webhook says
    [queued] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert queued["webhook_id"] == imports.id

    [delivery] = container().webhook_store.deliveries(imports.id, 10, None)[0]
    assert delivery.event_type.value == "import.completed"

    # Redelivered after the delivery was tried: the same event id on the bus, no second delivery.
    container().webhook_store.update_delivery(delivery.model_copy(update={"attempts": 1}), delivery)
    assert lambda_handler({"Records": [record]}, Context()) == {"batchItemFailures": []}
    [again] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert again["detail"]["id"] == on_bus["detail"]["id"]
    assert drain(wired["sqs"], wired["deliveries"]) == []
    assert [d.id for d in container().webhook_store.deliveries(imports.id, 10, None)[0]] == [delivery.id]


def imports_stream(aws) -> list[dict[str, Any]]:
    """The Catalog table's stream records that the EventsFunction's ImportsStream filter (the
    template's own, matched as Lambda matches it) passes, as Lambda's event carries them."""
    from infra.local.event_sources import compile_filters, matches_filters
    from infra.local.template import Template

    criteria = Template.load().functions()["EventsFunction"]["Events"]["ImportsStream"]["Properties"]["FilterCriteria"]
    patterns = compile_filters(criteria, "EventsFunction")
    table = aws.tables["CatalogTable"]
    arn = aws.dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", region_name=REGION)
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = [
        {"eventID": r["eventID"], "eventName": r["eventName"], "eventSource": "aws:dynamodb",
         "eventSourceARN": arn, "dynamodb": r["dynamodb"]}
        for r in streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    ]  # fmt: skip
    return [record for record in records if matches_filters(patterns, record)]


def publish_imports_stream(aws) -> None:
    """The EventsFunction run on what ImportsStream passes of the Catalog stream from its start (a
    record seen before is delivered again); Lambda is not invoked when the filter passes nothing."""
    from functions.events.app import lambda_handler

    records = imports_stream(aws)
    if records:
        assert lambda_handler({"Records": records}, Context()) == {"batchItemFailures": []}


@pytest.mark.parametrize(
    ("key", "data", "code"),
    [
        ("incoming/orders.xlsx", b"PK\x03\x04", "unknown_format"),
        ("incoming/orders.csv", b"\n\n", "empty_file"),
        ("incoming/orders.csv", b"order,id\n1,2\n", "invalid_header"),
    ],
)
def test_an_import_that_fails_as_a_whole_is_import_completed_once_with_its_error(
    aws, wired, monkeypatch, key, data, code
):
    """A file that cannot be imported ends its import `failed`: that end is `import.completed` too,
    the import as GET /imports/{id} shows it (its error with no line), sent once."""
    from functions.events.app import container
    from functions.import_splitter.app import lambda_handler as splitter
    from tests.integration.import_support import context, create_import_resources, report, split

    stack = create_import_resources(aws, monkeypatch)
    imports = subscribe("http://127.0.0.1:9/imports", ["import.completed"])
    import_id = split(stack, key, data)
    shown = report(import_id)
    assert (shown["status"], [(e["line"], e["code"]) for e in shown["errors"]]) == ("failed", [(None, code)])

    publish_imports_stream(aws)
    [on_bus] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert on_bus["detail-type"] == "import.completed"
    assert on_bus["detail"]["data"] == {"import": shown, "errors_omitted": 0}
    assert_documented(openapi_document(), on_bus["detail"])  # a failed import too
    [queued] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert queued["webhook_id"] == imports.id

    # The S3 event delivered again changes nothing, and the stream's record delivered again (after
    # the delivery was tried) gives the same event id and no second delivery.
    [delivery] = container().webhook_store.deliveries(imports.id, 10, None)[0]
    container().webhook_store.update_delivery(delivery.model_copy(update={"attempts": 1}), delivery)
    splitter(stack.s3_event(key), context("ImportSplitterFunction", 900))
    publish_imports_stream(aws)
    [again] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert again["detail"]["id"] == on_bus["detail"]["id"]
    assert drain(wired["sqs"], wired["deliveries"]) == []
    assert [d.id for d in container().webhook_store.deliveries(imports.id, 10, None)[0]] == [delivery.id]


def test_an_interrupted_split_is_no_event_and_the_import_it_resumes_ends_in_one(aws, wired, monkeypatch):
    """`split_interrupted` is not an end: Lambda retries the file's event and the import resumes.
    Only its real end is `import.completed`."""
    from functions.adapters.imports import SqsOrderQueue
    from functions.import_splitter.app import lambda_handler as splitter
    from tests.builders import csv_file, csv_row
    from tests.integration.import_support import context, create_import_resources, report

    stack = create_import_resources(aws, monkeypatch)
    subscribe("http://127.0.0.1:9/imports", ["import.completed"])
    # Every row fails at the splitter (recorded there), so the import ends without a worker.
    import_id = stack.put_file("incoming/orders.csv", csv_file(csv_row("ext-1", quantity="x")))
    event = stack.s3_event("incoming/orders.csv")
    flush = SqsOrderQueue.flush
    monkeypatch.setattr(SqsOrderQueue, "flush", lambda queue: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(ConnectionError):
        splitter(event, context("ImportSplitterFunction", 900))
    assert report(import_id)["errors"][0]["code"] == "split_interrupted"
    publish_imports_stream(aws)
    assert drain(wired["sqs"], wired["tap"]) == []

    monkeypatch.setattr(SqsOrderQueue, "flush", flush)
    splitter(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event
    assert report(import_id)["status"] == "completed_with_errors"
    publish_imports_stream(aws)
    on_bus = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert [e["detail"]["data"]["import"]["status"] for e in on_bus] == ["completed_with_errors"]


def test_a_file_error_found_by_a_duplicate_delivery_after_another_was_interrupted_is_one_event(aws, wired, monkeypatch):
    """S3 may deliver a file's event twice at once. One delivery's read is interrupted (the import
    shows split_interrupted) while the other, begun before, finds the file cannot be imported: it
    turned the import failed -> failed, which the stream's filter (running -> an end) does not pass,
    and the import ended with no `import.completed` ever (the retry of the interrupted delivery
    then found it ended, and did nothing)."""
    from core.import_service import ImportSource
    from functions.adapters.imports import S3ImportFiles
    from functions.import_splitter.app import container as splitter_container
    from functions.import_splitter.app import lambda_handler as splitter
    from functions.import_splitter.readers import read_orders
    from tests.integration.import_support import context, create_import_resources, report

    stack = create_import_resources(aws, monkeypatch)
    subscribe("http://127.0.0.1:9/imports", ["import.completed"])
    data = b"order,id\n1,2\n"  # no usable header: invalid_header
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    open_file = S3ImportFiles.open

    def other_delivery_interrupted_meanwhile():
        monkeypatch.setattr(S3ImportFiles, "open", lambda *args: (_ for _ in ()).throw(ConnectionError("reset")))
        with pytest.raises(ConnectionError):
            splitter(event, context("ImportSplitterFunction", 900))
        monkeypatch.setattr(S3ImportFiles, "open", open_file)
        yield data

    duplicate, _ = splitter_container().import_splitter()
    source = ImportSource(import_id=import_id, uri=f"s3://{stack.bucket}/incoming/orders.csv")
    duplicate.split(source, lambda: read_orders(other_delivery_interrupted_meanwhile(), "orders.csv"))
    splitter(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the interrupted delivery

    ended = report(import_id)
    assert ended["status"] == "failed"
    assert [(e["line"], e["code"]) for e in ended["errors"]] == [(None, "invalid_header")]
    publish_imports_stream(aws)
    on_bus = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert [e["detail"]["data"] for e in on_bus] == [{"import": ended, "errors_omitted": 0}]


def test_a_failed_imports_event_carries_its_file_error_even_when_a_read_does_not_see_the_failure_yet(
    aws, wired, monkeypatch
):
    """The event's errors were read again from the import's item, an eventually consistent read that
    may not yet see the write the stream record comes from: the event said `failed` with no error
    and none omitted. The file's error is the record's own."""
    from functions.events.app import container
    from tests.integration.import_support import create_import_resources, report, split

    stack = create_import_resources(aws, monkeypatch)
    import_id = split(stack, "incoming/orders.csv", b"order,id\n1,2\n")
    shown = report(import_id)
    client = container().import_ledger._client
    get_item = client.get_item

    def before_the_failure(**request: Any) -> dict[str, Any]:
        found = get_item(**request)
        if request["Key"]["pk"]["S"] == f"IMPORT#{import_id}" and "Item" in found:
            item = {k: v for k, v in found["Item"].items() if k not in ("error_code", "error_message")}
            found = {**found, "Item": {**item, "status": {"S": "running"}}}
        return found

    monkeypatch.setattr(client, "get_item", before_the_failure)
    publish_imports_stream(aws)

    [on_bus] = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert on_bus["detail"]["data"] == {"import": shown, "errors_omitted": 0}


class Receiver:
    """Answers each POST with the next of `answers` (an int status, a (status, headers) pair, or
    "slow" to sleep past the client's timeout), recording what it received."""

    def __init__(self, *answers: Any):
        self.answers = list(answers)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "slow":
                    time.sleep(1.5)
                    answer = 200
                answer, headers = answer if isinstance(answer, tuple) else (answer, {})
                try:
                    self.send_response(answer)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def delivery_worker_installed(c: Any, queue: Any, clock: Any, *, timeout: float) -> Iterator[None]:
    """The webhook delivery function's container for the block, its worker built as the function's own
    (`c`'s store, sender, URL check and retry schedule) with `queue`, `clock`, no jitter and `timeout`."""
    from core.webhooks import DeliveryWorker
    from functions.webhook_delivery.app import container

    worker = DeliveryWorker(
        c.webhook_store, queue, c.webhook_sender, c.check_webhook_url, clock, c.retry_schedule, lambda: 1.0,
        timeout=timeout,
    )  # fmt: skip
    with container.override(type(c)(c.config)) as fresh:
        fresh.__dict__["delivery_worker"] = worker
        yield


class RecordingQueue(SqsDeliveryQueue):
    """The real queue, remembering what it was sent (a retry's message is delayed in SQS)."""

    def __init__(self, client: Any, url: str):
        super().__init__(client, url)
        self.sent: list[tuple[DeliveryMessage, int]] = []

    def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
        self.sent.append((message, delay_seconds))
        super().send(message, delay_seconds)


def sqs_event(message: DeliveryMessage) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "m1",
                "receiptHandle": "r1",
                "body": message.to_json(),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:webhook-deliveries",
            }
        ]
    }


def test_deliveries_are_signed_posts_over_http_retried_after_a_5xx_and_a_timeout(aws, wired):
    from functions.events.app import container as events_container
    from functions.webhook_delivery.app import container, lambda_handler

    receiver = Receiver(503, "slow", 204)
    try:
        webhook, message = one_delivery_queued(aws, wired, receiver.url)
        c = container()
        queue = RecordingQueue(c.sqs, wired["deliveries"])
        # Each attempt as soon as it is due: the clock jumps to the scheduled time.
        now = [datetime.now(UTC)]
        errors = []
        with delivery_worker_installed(c, queue, lambda: now[0], timeout=0.5):
            for _ in range(3):
                assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
                record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
                if record.status != "pending":
                    break
                errors.append(record.last_error)
                message, _ = queue.sent[-1]
                now[0] = record.next_attempt_at
        # Backoff: 30 s after the 5xx, 60 s after the timeout (AWS's schedule, jitter at its top).
        assert [delay for _, delay in queue.sent] == [30, 60]
        assert [m.attempts for m, _ in queue.sent] == [1, 2]
        assert errors == ["HTTP 503", "timed out"]
        record = events_container().webhook_store.get_delivery(webhook.id, message.delivery_id)
        assert (record.status, record.attempts, record.last_status_code) == ("delivered", 3, 204)
        assert len(receiver.received) == 3
        bodies = {body for _, body in receiver.received}
        assert len(bodies) == 1  # every attempt sends the same event
        for headers, body in receiver.received:
            assert verify_signature("whsec_test", headers["OMS-Signature"], body, now=int(time.time()))
            assert headers["OMS-Event-Type"] == "order.created"
            assert headers["OMS-Event-Id"] == json.loads(body)["id"]
    finally:
        receiver.close()


def test_a_subscriber_asking_to_be_tried_later_is_not_tried_sooner_nor_left_past_the_longest_wait(aws, wired):
    """A 429 or 503 with Retry-After (seconds, or an HTTP date) is a receiver saying when it can take
    the event again: the next attempt waits that long when the backoff would come sooner, and never
    longer than the schedule's longest wait (a receiver cannot park its deliveries for days). The
    delivery was tried again at the backoff's 30 s, and again, while the receiver kept refusing."""
    from email.utils import format_datetime

    from functions.webhook_delivery.app import container, lambda_handler

    receiver = Receiver()
    try:
        webhook, message = one_delivery_queued(aws, wired, receiver.url)
        now = [(datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)]  # the delivery is due
        in_ten_minutes = format_datetime(now[0] + timedelta(seconds=630), usegmt=True)
        receiver.answers = [
            (429, {"Retry-After": "120"}),
            (503, {"Retry-After": in_ten_minutes}),
            (429, {"Retry-After": "86400"}),
        ]
        c = container()
        queue = RecordingQueue(c.sqs, wired["deliveries"])
        waits = []
        with delivery_worker_installed(c, queue, lambda: now[0], timeout=5):
            for _ in range(3):
                assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
                record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
                waits.append((record.next_attempt_at - now[0]).total_seconds())
                message, _ = queue.sent[-1]
                now[0] = record.next_attempt_at
        # 120 s asked (the backoff's 30 s would be sooner); 600 s to the date (after the 120 s
        # waited); a day asked, the longest wait (1 h) given.
        assert waits == [120, 510, 3600]
        assert (record.status, record.attempts, record.last_status_code) == ("pending", 3, 429)
        assert len(receiver.received) == 3
    finally:
        receiver.close()


def test_a_subscription_url_that_resolves_privately_is_refused_at_send_time_without_a_call(aws, wired, monkeypatch):
    from functions.webhook_delivery.app import container, lambda_handler

    webhook, message = one_delivery_queued(aws, wired, "https://hooks.example.com/x")
    c = container()
    c.__dict__["url_resolver"] = lambda host, port: ["169.254.169.254"]  # the metadata service
    assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert record.status == "pending" and record.attempts == 1 and record.last_status_code is None
    assert "private, loopback or link-local" in record.last_error


def test_a_message_handed_out_again_after_its_next_attempt_was_not_queued_queues_it(aws, wired):
    """The attempt is recorded (in the table), then SendMessage for the next one fails: the
    message fails, SQS hands it out again (the same messageId), and it queues the next attempt."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    from functions.webhook_delivery.app import container, lambda_handler

    webhook, message = one_delivery_queued(aws, wired, "http://127.0.0.1:9/refused")  # nothing listens: refused
    c = container()
    queue = refusing_once(RecordingQueue)(c.sqs, wired["deliveries"])
    with delivery_worker_installed(c, queue, c.clock, timeout=0.5):
        with pytest.raises(BatchProcessingError):  # its only message failed: the invocation fails
            lambda_handler(sqs_event(message), Context())
        assert c.webhook_store.get_delivery(webhook.id, message.delivery_id).attempts == 1
        assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    ((next_message, _),) = queue.sent
    assert next_message == DeliveryMessage(webhook.id, message.delivery_id, 0, 1)
    record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.attempts) == ("pending", 1)


def test_subscriptions_list_by_channel_and_page(aws, wired):
    from functions.adapters.webhooks import DynamoWebhooks

    store = DynamoWebhooks(aws.dynamodb, aws.tables["CatalogTable"])
    for index in range(3):
        store.add(
            IssuedWebhook(
                id=f"whk_{index:024d}",
                url="https://a.example/h",
                events=["*"],
                channel="shop" if index else None,
                created_at=datetime(2026, 12, 1, tzinfo=UTC),
                secret="whsec_x",
            ),
            MAX_WEBHOOKS,
        )
    first, cursor = store.list(None, 2, None)
    second, end = store.list(None, 2, cursor)
    assert [w.id for w in first + second] == [f"whk_{i:024d}" for i in range(3)] and end is None
    assert all("secret" not in w.model_dump() for w in first)
    assert [w.id for w in store.list("shop", 25, None)[0]] == [f"whk_{i:024d}" for i in (1, 2)]
    assert store.delete("whk_" + "0" * 24) and not store.delete("whk_" + "0" * 24)


def test_a_new_return_and_its_receipt_go_to_the_bus_and_subscribers_from_the_returns_stream(aws, wired):
    """The Returns table's records (what the ReturnsStream mapping's filter passes: a new return,
    and one received) are return.created and return.received, with the return's order; an
    approval is filtered out; a redelivered record queues no second delivery."""
    from core.return_models import ReceiveReturn, Return, ReturnLine
    from functions.adapters.dynamodb import DynamoOrders, DynamoReturns
    from functions.events.app import container, lambda_handler
    from infra.local.event_sources import compile_filters, matches_filters
    from tests.template_iam import RESOURCES
    from tests.unit.conftest import usd

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    order = a_stored_order(("TSHIRT", 1), id="ord_returns1", status=OrderStatus.DELIVERED, channel="shop")
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    orders.add(order, HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_1"), "tok")
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    requested = Return(
        id="rma_returns1", order_id=order.id, channel="shop", ordinal=1, status="requested",
        lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"), fee=usd("0.00"),
        created_at=at, updated_at=at, version=1,
    )  # fmt: skip
    returns.add(requested)
    key = {"id": {"S": requested.id}}
    items = [aws.dynamodb.get_item(TableName=aws.tables["ReturnsTable"], Key=key)["Item"]]
    approved = requested.approve(None, at=at)
    returns.update(approved, requested)
    items.append(aws.dynamodb.get_item(TableName=aws.tables["ReturnsTable"], Key=key)["Item"])
    receipt = ReceiveReturn(location_id="wh1", lines=[{"line_id": "L1", "quantity": 1, "condition": "resellable"}])
    returns.update(approved.receive(receipt, at=at, by="key_wh"), approved)
    items.append(aws.dynamodb.get_item(TableName=aws.tables["ReturnsTable"], Key=key)["Item"])
    stream = stream_event(("INSERT", None, items[0]), ("MODIFY", items[0], items[1]), ("MODIFY", items[1], items[2]))
    mapping = RESOURCES["EventsFunction"]["Properties"]["Events"]["ReturnsStream"]["Properties"]
    patterns = compile_filters(mapping["FilterCriteria"], "ReturnsStream")
    stream["Records"] = [record for record in stream["Records"] if matches_filters(patterns, record)]
    assert [r["eventName"] for r in stream["Records"]] == ["INSERT", "MODIFY"]  # the approval is not passed
    shop = subscribe("http://127.0.0.1:9/shop-returns", ["return.created", "return.received"], channel="shop")
    subscribe("http://127.0.0.1:9/web", ["*"], channel="web")  # another channel: gets nothing

    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    on_bus = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["tap"])]
    assert [e["detail-type"] for e in on_bus] == ["return.created", "return.received"]
    assert [e["detail"]["data"]["return"]["status"] for e in on_bus] == ["requested", "received"]
    assert {e["detail"]["data"]["order"]["id"] for e in on_bus} == {order.id}
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert [q["webhook_id"] for q in queued] == [shop.id, shop.id]

    for record in container().webhook_store.deliveries(shop.id, 10, None)[0]:  # as if tried once already
        container().webhook_store.update_delivery(record.model_copy(update={"attempts": 1}), record)
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    assert [json.loads(m["Body"])["detail"]["id"] for m in drain(wired["sqs"], wired["tap"])] == [
        e["detail"]["id"] for e in on_bus
    ]
    assert drain(wired["sqs"], wired["deliveries"]) == []


def test_a_subscriber_trickling_its_2xx_past_the_timeout_is_a_timed_out_attempt():
    """Socket timeouts bound each read, not the attempt: a receiver sending its answer a byte at a
    time, each well within the timeout, took as long as it liked (a 2xx after the contract's 10 s
    counted as delivered, and a slower one outlived the function, whose attempt was then never
    recorded). The attempt ends at its timeout, whatever the receiver is doing."""
    from core.webhooks import check_url
    from functions.adapters.webhooks import HttpWebhookSender

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"x" * 60 + b"\r\n\r\n"
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            read_request(connection)
            for byte in answer:
                if done.wait(0.05):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up

    threading.Thread(target=trickle, daemon=True).start()
    try:
        target = check_url(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", lambda *_: [], allow_local_http=True)
        result = HttpWebhookSender().post(target, b"{}", {"Content-Type": "application/json"}, timeout=0.5)
    finally:
        done.set()
        listener.close()
    assert (result.status_code, result.error) == (None, "timed out")


def read_request(connection: socket.socket) -> bytes:
    """The whole request, headers and body: http.client sends them in two writes, and a listener
    that answers after the first and closes with the body unread makes the kernel reset the
    connection, which the client may see before it reads the answer (a flake in CI)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += connection.recv(65536) or b"\r\n\r\n"
    head, _, body = request.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length and (more := connection.recv(65536)):
        body += more
    return request[: len(head) + 4] + body


@contextlib.contextmanager
def answering(raw: bytes) -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A listener on loopback that answers its first request with `raw` and keeps what it was sent,
    until the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def answer() -> None:
        with contextlib.suppress(OSError):  # shut down at the block's end: nobody came
            connection, _ = listener.accept()
            with connection:
                requests.append(read_request(connection))
                connection.sendall(raw)

    with accepting(listener, answer):
        yield listener, requests


@contextlib.contextmanager
def accepting(listener: socket.socket, answer: Callable[[], None]) -> Iterator[None]:
    """`answer` run on a thread of its own while the block runs, then `listener` shut down and
    closed and the thread joined: on Linux a close alone does not wake a thread blocked in
    accept() (it stayed there for the rest of the process); a shutdown does (accept raises)."""
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # not listening any more
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join()


def test_a_listener_nobody_reached_leaves_no_thread_behind(tmp_path):
    """The receivers these tests stand up end with their block, reached or not: closing the listener
    alone left its thread blocked in accept() for the rest of the worker (Linux does not wake it)."""
    cert_file, key_file = self_signed_localhost(tmp_path)
    before = set(threading.enumerate())
    with answering(b"HTTP/1.1 204 No Content\r\n\r\n"), answering_over_tls(b"", cert_file, key_file):
        assert len(set(threading.enumerate()) - before) == 2
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize(
    ("raw", "answered"),
    [
        (b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n", (410, "HTTP 410")),
        # Interim answers are skipped to the final one, but a protocol switch is no answer to a POST.
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", (101, "HTTP 101")),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 4_000_000, (200, None)),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", (None, "got more than 100 headers")),
    ],
)
def test_a_subscribers_answer_is_recorded_as_given_and_a_redirect_never_followed(raw: bytes, answered: tuple):
    """Checked and right, kept so: a 3xx is the answer (following it would reach wherever its
    Location says, past the checks on the URL); a 410 is a failure like any other (the contract
    retries anything but a 2xx); a huge body is not read; endless headers end the attempt."""
    from core.webhooks import check_url
    from functions.adapters.webhooks import HttpWebhookSender

    sender = HttpWebhookSender()
    results = []
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as (elsewhere, reached):
        redirect = f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{elsewhere.getsockname()[1]}/x\r\n\r\n"
        for answer in (redirect.encode(), raw):
            with answering(answer) as (listener, requests):
                port = listener.getsockname()[1]
                target = check_url(f"http://127.0.0.1:{port}/hook", lambda *_: [], allow_local_http=True)
                results.append(sender.post(target, b"{}", {"Content-Type": "application/json"}, timeout=5))
            assert len(requests) == 1 and requests[0].startswith(b"POST /hook ")
    assert [(r.status_code, r.error) for r in results] == [(302, "HTTP 302"), answered]
    assert reached == []


def test_a_delivery_whose_webhook_was_deleted_ends_failed_without_counting_a_missed_event(
    aws, wired, monkeypatch, capsys
):
    """The runbook of WebhookDeliveriesFailedAlarm ends with "delete a subscription nobody serves
    any more": its pending deliveries end `failed` on their next message, but no subscriber missed
    anything, so WebhookDeliveriesFailed (what the alarm watches) is not counted."""
    from functions.webhook_delivery.app import container, lambda_handler, metrics

    webhook, message = one_delivery_queued(aws, wired, "https://hooks.example.com/gone")
    container().webhook_store.delete(webhook.id)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    capsys.readouterr()

    assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}

    printed = capsys.readouterr().out
    metrics.clear_metrics()
    record = container().webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.last_error) == ("failed", "the webhook was deleted")
    assert "WebhookDeliveriesFailed" not in printed


def test_a_subscriber_whose_first_address_refuses_is_reached_at_its_next_checked_one():
    """A host with several addresses (a load balancer's, one per zone) whose first does not answer:
    every attempt connected to that first address only, so one zone down failed every delivery for
    the whole retry window while the others served. The attempt tries the checked addresses in
    turn until one takes the connection (never another address: no DNS lookup after the check)."""
    from core.webhooks import Target
    from functions.adapters.webhooks import HttpWebhookSender

    receiver = Receiver()
    port = receiver.server.server_address[1]
    # 127.0.0.2 is loopback too, but nothing listens there on this port (the receiver binds 127.0.0.1).
    target = Target("http", "127.0.0.1", port, "/hook", ("127.0.0.2", "127.0.0.1"))
    try:
        result = HttpWebhookSender().post(target, b"{}", {"Content-Type": "application/json"}, timeout=5)
    finally:
        receiver.close()
    assert (result.status_code, result.error) == (200, None)
    assert [body for _, body in receiver.received] == [b"{}"]


def a_pending_delivery(webhook_id: str, number: int, made: datetime, retry_until: datetime) -> Any:
    """A delivery of `webhook_id` never tried yet, made at `made`: event `evt_<number>`."""
    from core.webhooks import DeliveryRecord

    return DeliveryRecord(
        id=f"dlv_{number:014x}{'c' * 16}",
        event_id=f"evt_{number}",
        event_type="order.created",
        status="pending",
        attempts=0,
        next_attempt_at=made,
        webhook_id=webhook_id,
        body="{}",
        created_at=made,
        retry_until=retry_until,
    )


def test_a_delivery_retried_longer_than_deliveries_are_kept_is_kept_past_the_end_of_its_window(aws):
    """WebhookRetryWindowSeconds may be longer than the 30 days a delivery's record is kept: the
    record expired (TTL) 30 days after it was made while its schedule still ran, so it vanished,
    neither delivered nor `failed` and kept, and its next message found nothing. It is kept until
    30 days after its window closes (and a manual retry, which closes it anew, keeps it as long)."""
    from core.webhooks import DeliveryRecord
    from functions.adapters.webhooks import DELIVERY_RETENTION, DynamoWebhooks

    store = DynamoWebhooks(aws.dynamodb, aws.tables["CatalogTable"])
    made = datetime(2026, 12, 1, tzinfo=UTC)
    webhook_id = f"whk_{'b' * 24}"

    def expiry(record: DeliveryRecord) -> datetime:
        key = {"pk": {"S": f"WEBHOOK#{webhook_id}"}, "sk": {"S": record.id}}
        item = aws.dynamodb.get_item(TableName=aws.tables["CatalogTable"], Key=key)["Item"]
        return datetime.fromtimestamp(int(item["expires_at"]["N"]), UTC)

    for days in (1, 40):
        record = a_pending_delivery(webhook_id, days, made, retry_until=made + timedelta(days=days))
        assert store.add_delivery(record)
        assert expiry(record) == record.retry_until + DELIVERY_RETENTION
        retried = record.model_copy(update={"generation": 1, "retry_until": made + timedelta(days=days + 5)})
        assert store.update_delivery(retried, record)
        assert expiry(retried) == retried.retry_until + DELIVERY_RETENTION


def test_a_subscriber_whose_first_address_never_answers_is_reached_at_its_next_one_within_the_timeout():
    """A zone that drops connections (no refusal: the connect hangs) took the attempt's whole
    timeout, so the next address was never tried and every attempt failed. Each address gets its
    share of what is left of the timeout, the last all of it."""
    from core.webhooks import Target
    from functions.adapters.webhooks import HttpWebhookSender

    receiver = Receiver()
    port = receiver.server.server_address[1]
    # On 127.0.0.2 at the receiver's port, a listener whose one-place backlog is taken: the kernel
    # drops every further connection's SYN, so a connect there waits until its own timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.2", port))
    silent.listen(0)
    queued = socket.create_connection(("127.0.0.2", port))
    target = Target("http", "127.0.0.1", port, "/hook", ("127.0.0.2", "127.0.0.1"))
    try:
        result = HttpWebhookSender().post(target, b"{}", {"Content-Type": "application/json"}, timeout=4)
    finally:
        queued.close()
        silent.close()
        receiver.close()
    assert (result.status_code, result.error) == (200, None)
    assert [body for _, body in receiver.received] == [b"{}"]


def test_the_last_page_of_a_subscriptions_deliveries_has_no_next_cursor(aws, monkeypatch):
    """DynamoDB answers a Query that stopped at its Limit with a LastEvaluatedKey, more items or
    not (moto only when more follow: emulated below). The deliveries page was that Query, so a
    subscription with exactly `limit` deliveries (or a last page of exactly `limit`) answered a
    next_cursor whose page was empty; every other list reads one item ahead and says null."""
    from functions.adapters.webhooks import DynamoWebhooks

    real = aws.dynamodb.query

    def query(**request: Any) -> dict[str, Any]:
        answer = real(**request)
        if "LastEvaluatedKey" not in answer and request.get("Limit") == len(answer["Items"]) > 0:
            last = answer["Items"][-1]
            answer["LastEvaluatedKey"] = {"pk": last["pk"], "sk": last["sk"]}
        return answer

    monkeypatch.setattr(aws.dynamodb, "query", query)
    store = DynamoWebhooks(aws.dynamodb, aws.tables["CatalogTable"])
    made = datetime(2026, 12, 1, tzinfo=UTC)
    webhook_id = f"whk_{'d' * 24}"
    for n in range(3):
        store.add_delivery(a_pending_delivery(webhook_id, n, made, retry_until=made + timedelta(days=1)))

    shown, cursor = store.deliveries(webhook_id, 3, None)
    assert ([r.event_id for r in shown], cursor) == (["evt_2", "evt_1", "evt_0"], None)
    first, cursor = store.deliveries(webhook_id, 2, None)
    assert [r.event_id for r in first] == ["evt_2", "evt_1"] and cursor is not None
    rest, cursor = store.deliveries(webhook_id, 2, cursor)
    assert ([r.event_id for r in rest], cursor) == (["evt_0"], None)
    last, cursor = store.deliveries(webhook_id, 1, store.deliveries(webhook_id, 2, None)[1])
    assert ([r.event_id for r in last], cursor) == (["evt_0"], None)


def test_a_tracking_number_learnt_after_the_ship_reaches_shipment_shipped_subscribers_and_the_customer(aws, wired):
    """A location ships a parcel without naming its number (it keeps its label's), then names the
    carrier's number in a later ship (Order.set_tracking_number): that change went out as no event,
    so a subscriber following shipment.shipped (and the customer, told through the same events)
    never learnt the number the parcel travels under. It is shipment.shipped again, the shipment as
    it is now, under an event id of its own; the bus gets it too."""
    from core.models import Shipment, ShipmentLine
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler
    from tests.unit.conftest import usd

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    parcel = Shipment(
        id="shp_" + "t" * 24, location_id="wh1", lines=[ShipmentLine(line_id="L1", quantity=1)],
        carrier="oms-flat-rate", service="Ground", tracking_number="OMS0000000001",
    )  # fmt: skip
    allocated = a_stored_order(("TSHIRT", 1), id="ord_" + "t" * 24, status=OrderStatus.ALLOCATED, shipments=[parcel])
    orders.add(allocated, HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_1"), "tok")
    images = [stored_item(aws, allocated.id)]
    shipped, entry = allocated.ship(
        parcel.id, tracking_number=None, captured=usd("0.00"), capture_reference=None, at=at, actor="key_wh"
    )
    orders.update(shipped, allocated, [entry])
    images.append(stored_item(aws, allocated.id))
    numbered, entry = shipped.set_tracking_number(parcel.id, "1ZLATER0001", at=at + timedelta(hours=2), actor="key_wh")
    orders.update(numbered, shipped, [entry])
    images.append(stored_item(aws, allocated.id))
    follower = subscribe("http://127.0.0.1:9/shipments", ["shipment.shipped"])

    stream = stream_event(("MODIFY", images[0], images[1]), ("MODIFY", images[1], images[2]))
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}

    on_bus = [json.loads(m["Body"])["detail"] for m in drain(wired["sqs"], wired["tap"])]
    shipment_events = [e for e in on_bus if e["type"] == "shipment.shipped"]
    assert [e["data"]["shipment"]["tracking_number"] for e in shipment_events] == ["OMS0000000001", "1ZLATER0001"]
    assert len({e["id"] for e in shipment_events}) == 2
    assert len(drain(wired["sqs"], wired["deliveries"])) == 2
    records, _ = container().webhook_store.deliveries(follower.id, 10, None)
    bodies = {json.loads(r.body)["id"]: json.loads(r.body) for r in records}
    assert bodies[shipment_events[1]["id"]]["data"]["shipment"]["tracking_number"] == "1ZLATER0001"
    told, _ = container().notification_store.list(allocated.id, 10, None)
    assert sorted(n.details.get("tracking_number") for n in told) == ["1ZLATER0001", "OMS0000000001"]


class KeptAlive(BaseHTTPRequestHandler):
    """A receiver speaking HTTP/1.1 that answers 200 without a Content-Length (a common slip: its
    framework adds none for an empty answer) and keeps the connection open for the next request."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_2xx_answered_in_time_is_delivered_whatever_its_body_does_after(aws, wired):
    """The answer is the status line: the attempt then waited for a body nobody owed it. A receiver
    answering 200 at once but with no Content-Length on a kept-alive connection (or a Content-Length
    it never sends in full) held the attempt until its timeout: recorded `timed out`, the event sent
    again and again for 24 hours though it had been taken each time, then `failed` and alarmed on."""
    from functions.webhook_delivery.app import container, lambda_handler

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeptAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        webhook, message = one_delivery_queued(aws, wired, f"http://127.0.0.1:{server.server_address[1]}/hook")
        c = container()
        with delivery_worker_installed(c, c.webhook_queue, lambda: datetime.now(UTC), timeout=2.0):
            assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    finally:
        server.shutdown()
        server.server_close()
    record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.attempts, record.last_status_code, record.last_error) == ("delivered", 1, 200, None)
    assert drain(wired["sqs"], wired["deliveries"]) == []


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
    ],
)
def test_a_2xx_after_interim_1xx_answers_is_delivered(aws, wired, interim: bytes):
    """A receiver may send interim answers before its final one (RFC 9110 15.2: a client must parse
    any number of them): a server that says `102 Processing` while it stores the event, or a front
    that sends `103 Early Hints`. http.client skips only a `100 Continue`, so the attempt took the
    103 for the answer: recorded `HTTP 103`, sent again for 24 hours though the receiver took
    the event each time with a 204, then `failed` and alarmed on."""
    from functions.webhook_delivery.app import container, lambda_handler

    with answering(interim + b"HTTP/1.1 204 No Content\r\n\r\n") as (listener, requests):
        webhook, message = one_delivery_queued(aws, wired, f"http://127.0.0.1:{listener.getsockname()[1]}/hook")
        c = container()
        with delivery_worker_installed(c, c.webhook_queue, lambda: datetime.now(UTC), timeout=2.0):
            assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    assert len(requests) == 1
    record = c.webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.attempts, record.last_status_code, record.last_error) == ("delivered", 1, 204, None)
    assert drain(wired["sqs"], wired["deliveries"]) == []


def self_signed_localhost(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for `localhost` (and its key), signed by itself: what a receiver's TLS
    server shows, and what a client trusts once it is among its CAs."""
    pytest.importorskip("cryptography", reason="the cryptography package (moto's dependency) makes the certificate")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "receiver.pem", directory / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextlib.contextmanager
def answering_over_tls(raw: bytes, cert_file: Path, key_file: Path) -> Iterator[tuple[socket.socket, list[bytes]]]:
    """As `answering`, over TLS with the certificate given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def answer() -> None:
        with contextlib.suppress(OSError):  # shut down at the block's end, or a handshake the client refused
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                requests.append(read_request(tls))
                tls.sendall(raw)

    with accepting(listener, answer):
        yield listener, requests


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
    ],
)
def test_a_2xx_after_interim_1xx_answers_over_https_is_the_answer(tmp_path, monkeypatch, interim: bytes):
    """As over HTTP (above), over TLS, the way every subscriber on AWS is reached: the sender's
    HTTPS connection reads the final answer past the interim ones. The receiver's certificate is
    trusted as a CA's is, from the default context's CA file (SSL_CERT_FILE, read by OpenSSL)."""
    from core.webhooks import Target
    from functions.adapters.webhooks import HttpWebhookSender

    cert_file, key_file = self_signed_localhost(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    answer = interim + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with answering_over_tls(answer, cert_file, key_file) as (listener, requests):
        target = Target("https", "localhost", listener.getsockname()[1], "/hook", ("127.0.0.1",))
        result = HttpWebhookSender().post(target, b"{}", {"Content-Type": "application/json"}, timeout=5)

    assert (result.status_code, result.error) == (200, None)
    assert len(requests) == 1 and requests[0].startswith(b"POST /hook ")


def test_customer_text_in_any_script_reaches_the_subscriber_as_given_under_a_signature_the_readmes_verify_accepts(
    aws, wired
):
    """Checked and right, kept so: an order whose customer writes in other scripts, with an emoji,
    a joiner (as emoji sequences use) and JSON's own quote and backslash, goes through the events and
    delivery handlers over HTTP; the README's `verify`, copied as a receiver copies it, accepts
    the raw body, which parses to the text as given, and refuses it with one character changed."""
    from functions.adapters.dynamodb import DynamoOrders
    from functions.webhook_delivery.app import container, lambda_handler
    from tests.readme_code import readme_verify

    name = 'Zoë 李小龍 👩\u200d💻 Ελληνικά "quoted" back\\slash </script>'
    receiver = Receiver(204)
    try:
        webhook = subscribe(receiver.url, ["order.created"])
        orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
        placed = a_stored_order(("TSHIRT", 1), id="ord_events1", status=OrderStatus.PENDING)
        placed = placed.model_copy(update={"customer": placed.customer.model_copy(update={"name": name})})
        at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        orders.add(placed, HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_1"), "tok")
        from functions.events.app import lambda_handler as events_handler

        events_handler(stream_event(("INSERT", None, stored_item(aws, placed.id))), Context())
        (queued,) = drain(wired["sqs"], wired["deliveries"])
        assert lambda_handler(sqs_event(DeliveryMessage.from_json(queued["Body"])), Context()) == {
            "batchItemFailures": []
        }
    finally:
        receiver.close()
    ((headers, body),) = receiver.received
    verify = readme_verify()
    assert verify(webhook.secret, headers, body)
    assert json.loads(body)["data"]["order"]["customer"]["name"] == name
    assert not verify(webhook.secret, headers, body.replace("李".encode(), "季".encode()))
    record = container().webhook_store.get_delivery(webhook.id, DeliveryMessage.from_json(queued["Body"]).delivery_id)
    assert (record.status, record.last_status_code) == ("delivered", 204)


def shipped_images(aws: Any, *order_ids: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each order stored allocated, then shipped: the stream images of each ship (MODIFY, before, after)."""
    from functions.adapters.dynamodb import DynamoOrders
    from tests.integration.test_notifications import allocated_then_shipped

    orders, images = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]), []
    for oid in order_ids:
        allocated, shipped = allocated_then_shipped(oid)
        created = HistoryEntry(at=allocated.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_1")
        orders.add(allocated, created, "tok")
        before = stored_item(aws, oid)
        orders.update(shipped, allocated, [])
        images.append(("MODIFY", before, stored_item(aws, oid)))
    return images


@pytest.mark.usefixtures("wired")
def test_a_throttled_delivery_write_fails_its_record_alone_and_its_redelivery_queues_each_delivery_once(
    aws, wired, monkeypatch
):
    # The deliveries are written ten at a time on threads (add_deliveries): one write throttled past
    # botocore's retries fails the record; the writes beside it land, their messages not queued.
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    from functions.adapters import order_codec
    from functions.adapters.webhooks import DELIVERIES_PK
    from functions.events.app import lambda_handler

    for url in ("https://a.example/h", "https://bb.example/h", "https://ccc.example/h"):
        subscribe(url, ["order.shipped", "shipment.shipped"])
    images = shipped_images(aws, "ord_" + "x" * 24, "ord_" + "y" * 24)

    throttled: list[str] = []
    calling = BaseClient._make_api_call

    def throttling(client: Any, operation: str, params: dict[str, Any]) -> Any:
        body = params.get("Item", {}).get("body", {}).get("B", b"")
        if (
            operation == "PutItem"
            and params["Item"]["pk"]["S"].startswith(DELIVERIES_PK)
            and "ord_" + "y" * 24 in order_codec.stored_json({"B": body}).decode()
            and not throttled
        ):
            throttled.append(params["Item"]["sk"]["S"])
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}}, "PutItem"
            )
        return calling(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", throttling)
    assert lambda_handler(stream_event(*images), Context()) == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    assert throttled and not [t for t in threading.enumerate() if t.name.startswith("deliveries")]
    first = [DeliveryMessage.from_json(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]

    # The stream hands the failed record out again, first of its next batch.
    assert lambda_handler(stream_event(images[1]), Context()) == {"batchItemFailures": []}
    again = [DeliveryMessage.from_json(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]

    queued = [m.delivery_id for m in first + again]
    assert len(queued) == len(set(queued)) == 2 * len(first)  # each order's deliveries once, none twice
    assert throttled[0] in {m.delivery_id for m in again}


@pytest.mark.usefixtures("wired")
def test_a_delivery_message_the_queue_refuses_fails_the_batch_and_its_retry_queues_it(aws, wired, monkeypatch):
    # The batch's 16 messages go ten to a SendMessageBatch, the batches on threads (send_now): one
    # entry refused fails the invocation (Lambda retries the batch whole), which queues it; none is lost.
    from botocore.client import BaseClient

    from functions.events.app import lambda_handler

    for url in ("https://a.example/h", "https://bb.example/h", "https://ccc.example/h", "https://dddd.example/h"):
        subscribe(url, ["order.shipped", "shipment.shipped"])
    images = shipped_images(aws, "ord_" + "u" * 24, "ord_" + "v" * 24, "ord_" + "w" * 24, "ord_" + "x" * 24)

    refused: list[str] = []
    calling = BaseClient._make_api_call

    def refusing(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation != "SendMessageBatch" or refused:
            return calling(client, operation, params)
        first, *rest = params["Entries"]
        refused.append(DeliveryMessage.from_json(first["MessageBody"]).delivery_id)
        answer = calling(client, operation, {**params, "Entries": rest})
        return {**answer, "Failed": [{"Id": first["Id"], "SenderFault": False, "Code": "InternalError"}]}

    monkeypatch.setattr(BaseClient, "_make_api_call", refusing)
    with pytest.raises(RuntimeError, match="refused 1 message"):
        lambda_handler(stream_event(*images), Context())
    assert not [t for t in threading.enumerate() if t.name.startswith("delivery-messages")]
    first = {DeliveryMessage.from_json(m["Body"]).delivery_id for m in drain(wired["sqs"], wired["deliveries"])}
    # The batch refused in part, and those not started when it failed (Executor.map cancels them).
    assert refused and refused[0] not in first and len(first) < 16

    assert lambda_handler(stream_event(*images), Context()) == {"batchItemFailures": []}
    again = [DeliveryMessage.from_json(m["Body"]).delivery_id for m in drain(wired["sqs"], wired["deliveries"])]
    # Each of the 16 deliveries (4 orders, 4 subscriptions) queued: those queued before again, as
    # never tried yet (the worker drops the copy once the first is tried); none lost.
    assert refused[0] in again and len(set(again)) == 16 and first < set(again)
