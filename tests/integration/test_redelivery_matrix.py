"""Every function of the template handed the same input twice, as AWS hands it again: a stream batch
or a queue message redelivered, a Step Functions task invoked again after a lost response, a
schedule run twice over the same state, a request sent again under its Idempotency-Key. What the
second delivery leaves stored, sent and charged is exactly what the first one left. In-process, one
moto account per row; a guard fails when the template gains a function without a row."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.dynamodb.models import dynamodb_backends
from moto.sqs.models import sqs_backends
from moto.stepfunctions.models import stepfunctions_backends

from core.errors import Backordered, PaymentDeclined
from core.ids import new_id
from core.models import HistoryEntry, LocationInput, ProductInput
from core.status import OrderStatus
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.gateway import ApiGateway
from infra.local.lambdas import LocalFunction
from infra.local.template import Template
from plugins.flat_rate_carrier import tracking_number
from tests.builders import csv_file, csv_row, location_body, product_body, template_schedule
from tests.e2e.client import Catalog, order_body, unique, unsigned
from tests.integration.conftest import PASS_MACHINE, copy_tables, pass_through_workflow, tables_now
from tests.integration.import_support import create_import_resources, lambda_sqs_record
from tests.integration.in_process import FAST, InProcessApi
from tests.integration.test_events_and_webhooks import Receiver

REGION, ACCOUNT = "us-east-1", "123456789012"
EVENTS = Path(__file__).resolve().parents[2] / "events"  # the sample events
Delivery = Callable[[], Any]


@functools.cache
def template() -> Template:
    # Read once per test process (~0.2 s a read): the rows only read it.
    return Template.load(parameter_overrides=FAST)


@functools.cache
def schedule(function: str) -> tuple[str, str]:
    # Read once per test process, as template(): each read loads the template (40-70 ms of CPU),
    # and the world of every row read two.
    return template_schedule(function)


def functions_with_a_source() -> set[str]:
    """The template's functions something invokes: an event source of their own (Events), a state
    machine's task (DefinitionSubstitutions naming their ARN), the API's authorizer."""
    document = template().document["Resources"]
    invoked = {name for name, props in template().functions().items() if props.get("Events")}
    for resource in document.values():
        for value in ((resource.get("Properties") or {}).get("DefinitionSubstitutions") or {}).values():
            if isinstance(value, dict) and "Fn::GetAtt" in value:
                invoked.add(value["Fn::GetAtt"][0])
    authorizers = template().api("Auth", {}).get("Authorizers") or {}
    return invoked | {template().authorizer_function(name) for name in authorizers}


# --- The world a row runs in, and its snapshot ----------------------------------------------------


@dataclass
class World:
    """One moto account with every resource the functions name, the API in front of them, and a
    webhook receiver on loopback once a row subscribes."""

    aws: Any
    api: InProcessApi
    functions: dict[str, LocalFunction]
    queues: dict[str, str]  # label -> URL
    buckets: list[str]
    sku: str
    warehouse: str
    _receiver: Receiver | None = None

    @property
    def receiver(self) -> Receiver:
        """The webhook receiver, started by the first row that subscribes (its stop waits up to
        half a second: most rows never need one)."""
        if self._receiver is None:
            self._receiver = Receiver()
        return self._receiver

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()

    def invoke(self, function: str, event: Any) -> Delivery:
        return lambda: self.functions[function].invoke(event)

    def workflow(self) -> Any:
        """The order workflow's steps, as a task's container builds them (for arranging)."""
        from functions.bootstrap import Config, bootstrap

        return bootstrap(Config.from_env()).workflow

    def place(self, *lines: tuple[str, int], **overrides: Any) -> str:
        response = self.api.post("/orders", json=order_body(*(lines or [(self.sku, 1)]), **overrides))
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def allocated(self, *lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
        order_id = self.place(*lines, **overrides)
        steps = self.workflow()
        steps.authorize_payment(order_id, attempt=0)
        steps.reserve_stock(order_id)
        steps.create_shipments(order_id)
        return self.api.get(f"/orders/{order_id}").json()

    def delivered(self) -> dict[str, Any]:
        order = self.allocated()
        for shipment in order["shipments"]:
            for action in ("ship", "deliver"):
                done = self.api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", json={})
                assert done.status_code == 200, done.text
        return self.api.get(f"/orders/{order['id']}").json()

    def stream(self, table: str) -> Stream:
        return Stream(self.aws.tables[table])

    def received(self, queue: str, count: int = 10) -> dict[str, Any]:
        """What is on the queue, as Lambda's SQS mapping hands it to the function (left on the queue)."""
        sqs = boto3.client("sqs", region_name=REGION)
        url = self.queues[queue]
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=count, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        assert messages, f"nothing on {queue}"
        return {"Records": [lambda_sqs_record(message, url) for message in messages]}

    def drain(self, queue: str, function: str) -> None:
        """Every message on the queue handed to `function` and deleted, as its mapping does, until
        none is visible (a message queued with a delay waits on the queue); none may fail."""
        sqs, url = boto3.client("sqs", region_name=REGION), self.queues[queue]
        for _ in range(10):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            if attributes["Attributes"]["ApproximateNumberOfMessages"] == "0":
                return
            batch = self.received(queue)
            assert self.functions[function].invoke(batch) == {"batchItemFailures": []}
            for record in batch["Records"]:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=record["receiptHandle"])
        raise AssertionError(f"{queue} still has messages after 10 batches")


class Stream:
    """A table's stream from now on: what is written next, as the function's mapping delivers it."""

    def __init__(self, table: str) -> None:
        self._streams = boto3.client("dynamodbstreams", region_name=REGION)
        described = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)["Table"]
        self.arn = described["LatestStreamArn"]
        (shard,) = self._streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        self._iterator = self._streams.get_shard_iterator(
            StreamArn=self.arn, ShardId=shard["ShardId"], ShardIteratorType="LATEST"
        )["ShardIterator"]

    def event(self, function: str, source: str) -> dict[str, Any]:
        """The records written since, that function's event `source` lets through (its
        FilterCriteria), as one batch of Lambda's stream event."""
        read = self._streams.get_records(ShardIterator=self._iterator, Limit=1000)
        props = template().functions()[function]["Events"][source]["Properties"]
        filters = compile_filters(template().resolve(props.get("FilterCriteria")), f"{function}.{source}")
        records = [lambda_stream_record(record, self.arn) for record in read["Records"]]
        kept = [record for record in records if matches_filters(filters, record)]
        assert kept, f"no record of the table passes {function}.{source}'s filter"
        return {"Records": kept}


def lambda_stream_record(record: dict[str, Any], arn: str) -> dict[str, Any]:
    """A GetRecords record as Lambda hands it over: binary attributes in base64, epoch seconds."""
    dynamodb = dict(record["dynamodb"])
    if isinstance(created := dynamodb.get("ApproximateCreationDateTime"), datetime):
        dynamodb["ApproximateCreationDateTime"] = float(int(created.timestamp()))
    for image in ("Keys", "NewImage", "OldImage"):
        if image in dynamodb:
            dynamodb[image] = {name: _in_base64(value) for name, value in dynamodb[image].items()}
    return {**record, "dynamodb": dynamodb, "eventSourceARN": arn}


def _in_base64(value: dict[str, Any]) -> dict[str, Any]:
    (kind, inner), = value.items()  # fmt: skip
    if kind == "B":
        return {"B": base64.b64encode(inner).decode()}
    if kind == "BS":
        return {"BS": [base64.b64encode(item).decode() for item in inner]}
    if kind == "L":
        return {"L": [_in_base64(item) for item in inner]}
    if kind == "M":
        return {"M": {name: _in_base64(item) for name, item in inner.items()}}
    return value


def scheduled_event(function: str) -> dict[str, Any]:
    """EventBridge's scheduled event for the function's rule (infra/local/event_sources.py's shape)."""
    return {
        "version": "0", "id": "d0c0ffee-0000-4000-8000-000000000001", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": ACCOUNT, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION, "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{function}-EveryFiveMinutes"],
        "detail": {},
    }  # fmt: skip


def task_input(**fields: Any) -> dict[str, Any]:
    """A task's Parameters as the state machine passes them (infra/*.asl.json), started just now."""
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The execution's input ($$.Execution.Input), as the outbox and the receipt start them.
    trace = {key: fields[key] for key in ("order_id", "return_id") if key in fields}
    trace |= {"channel": "web", "correlation_id": "req-1"}
    # The main steps are passed when their execution started and how long they may be retried; the
    # compensations (a Catch's, passed the error) are not.
    budget = {} if "error" in fields else {"started": started, "retry_for_seconds": 90}
    return {"trace": trace, **fields, **budget}


def snapshot(world: World) -> dict[str, Any]:
    """Everything a delivery can leave behind, by part: each table's items, each queue's messages,
    the executions started (by name: an Express workflow starts another under a name it has, by
    design, and its steps are the rows that make that harmless), each bucket's objects, what the
    `test` payment gateway holds, and the webhook POSTs the receiver got."""
    from plugins import test_payments

    # Each table's items as moto stores them (DynamoDB JSON), as the queues' and executions' below:
    # a consistent Scan of every table, three times a row, was 11 % of the module's CPU.
    tables = dynamodb_backends[ACCOUNT][REGION].tables
    parts: dict[str, Any] = {}
    for logical, name in world.aws.tables.items():
        items = (item.to_json()["Attributes"] for item in tables[name].all_items())
        parts[logical] = sorted(json.dumps(item, sort_keys=True, default=_text) for item in items)
    sqs = sqs_backends[ACCOUNT][REGION]
    for label, url in world.queues.items():
        parts[label] = sorted(message.body for message in sqs.queues[url.rsplit("/", 1)[-1]]._messages)
    # The bus is at least once (subscribers dedupe on the event's id): an event is its detail, its
    # envelope (id, time) being EventBridge's own, and the same event put again is not a new one.
    parts["events"] = sorted({json.dumps(json.loads(body)["detail"], sort_keys=True) for body in parts["events"]})
    parts["executions"] = sorted(
        {
            (machine.name, execution.name, execution.execution_input)
            for machine in stepfunctions_backends[ACCOUNT][REGION].state_machines
            for execution in machine.executions
        }
    )
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in world.buckets:
        parts[f"s3://{bucket}"] = sorted(
            (o["Key"], o["ETag"]) for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        )
    parts["gateway"] = {
        "authorized": dict(test_payments._authorized),
        "held": {k: repr(dataclasses.astuple(v)) for k, v in test_payments._held.items()},
        "captured": dict(test_payments._captured),
        "refunded": dict(test_payments._refunded),
    }
    parts["webhook posts"] = [body for _, body in world.receiver.received] if world._receiver else []
    return parts


def _text(value: Any) -> str:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else str(value)


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The parts that differ, each with what was added and what went."""
    found = {}
    for part in before.keys() | after.keys():
        old, new = before.get(part), after.get(part)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            found[part] = {"added": [x for x in new if x not in old], "gone": [x for x in old if x not in new]}
            if not any(found[part].values()):
                found[part] = {"before": len(old), "after": len(new)}
        else:
            found[part] = {"before": old, "after": new}
    return found


# --- The rows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    function: str  # the template's logical id
    how: str  # how AWS hands it again
    changes: tuple[str, ...]  # what the first delivery must change: the parts the row compares for doubling
    arrange: Callable[[World], Delivery]
    # Parts a second delivery adds to by design, never takes from: the access log records each
    # request that answers an order, a replay under its Idempotency-Key too (API.md: "a read named
    # after it"); the reconciler restarts each stalled order once per pass; a receipt sent again
    # resumes its return in a new execution.
    adds: tuple[str, ...] = ()
    # Whether its caller reads the answer: EventBridge drops a scheduled run's (what it did is logged).
    answer_read: bool = True
    # The template's event (its Events key) the input comes from; none for a state machine's task,
    # the authorizer and the API's routes.
    source: str = ""


# Order workflow tasks: invoked again with the same Parameters after one succeeded (its answer lost).


def authorize(world: World) -> Delivery:
    order_id = world.place()
    # Passed $$.State.RetryCount: the retry is attempt 1 (the gateway's `tok_flaky` tells them apart).
    retries = iter(range(2))
    function = world.functions["AuthorizePaymentFunction"]
    return lambda: function.invoke(task_input(order_id=order_id, attempt=next(retries)))


def reserve(world: World) -> Delivery:
    order_id = world.place()
    world.workflow().authorize_payment(order_id, attempt=0)
    return world.invoke("ReserveStockFunction", task_input(order_id=order_id))


def create_shipments(world: World) -> Delivery:
    order_id = world.place()
    steps = world.workflow()
    steps.authorize_payment(order_id, attempt=0)
    steps.reserve_stock(order_id)
    return world.invoke("CreateShipmentsFunction", task_input(order_id=order_id))


def fail_payment(world: World) -> Delivery:
    order_id = world.place(payment={"method": "test", "token": "tok_decline"})
    with pytest.raises(PaymentDeclined) as declined:
        world.workflow().authorize_payment(order_id, attempt=0)
    cause = json.dumps({"errorMessage": str(declined.value), "errorType": "PaymentDeclined"})
    return world.invoke("FailPaymentFunction", task_input(order_id=order_id, error="PaymentDeclined", cause=cause))


def cancel_after_out_of_stock(world: World) -> Delivery:
    # CreateShipments' Catch of OutOfStock: the authorization voided and the units reserved released.
    order_id = world.place()
    steps = world.workflow()
    steps.authorize_payment(order_id, attempt=0)
    steps.reserve_stock(order_id)
    cause = json.dumps({"errorMessage": "no location can ship it", "errorType": "OutOfStock"})
    return world.invoke("CancelOrderFunction", task_input(order_id=order_id, error="OutOfStock", cause=cause))


def park(world: World) -> Delivery:
    order_id = world.place()
    world.workflow().authorize_payment(order_id, attempt=0)
    cause = json.dumps({"errorMessage": "Task timed out after 30.00 seconds", "errorType": "Sandbox.Timedout"})
    return world.invoke(
        "ParkOrderFunction",
        task_input(order_id=order_id, execution=f"{order_id}-v3", error="Sandbox.Timedout", cause=cause),
    )


# Returns workflow tasks: one function, told the step; each invoked again after it succeeded.

RECEIPT_LINES = [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]


def a_return(world: World, steps: tuple[str, ...], exchange: bool = False) -> str:
    """A delivered order of one unit, its return received at the warehouse, `steps` done."""
    order = world.delivered()
    body: dict[str, Any] = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big"}]}
    if exchange:
        body["exchange"] = {"lines": [{"sku": world.sku, "quantity": 1}]}
    made = world.api.post(f"/orders/{order['id']}/returns", json=body)
    assert made.status_code == 201, made.text
    return_id = made.json()["id"]
    receipt = {"location_id": world.warehouse, "lines": RECEIPT_LINES}
    got = world.api.post(f"/returns/{return_id}/receive", json=receipt)
    assert got.status_code in (200, 202), got.text
    for step in steps:
        world.functions["ReturnStepFunction"].invoke(task_input(step=step, return_id=return_id))
    return return_id


def return_step(step: str, before: tuple[str, ...], exchange: bool = False) -> Callable[[World], Delivery]:
    def arrange(world: World) -> Delivery:
        return_id = a_return(world, before, exchange)
        return world.invoke("ReturnStepFunction", task_input(step=step, return_id=return_id))

    return arrange


def return_stuck(world: World) -> Delivery:
    return_id = a_return(world, ("receive", "restock", "record"))
    cause = json.dumps({"errorMessage": "the gateway is down", "errorType": "TransientError"})
    return world.invoke(
        "ReturnStepFunction",
        task_input(step="stuck", return_id=return_id, execution=f"{return_id}-0a1b2c3d", error="TransientError",
                   cause=cause),
    )  # fmt: skip


# Stream consumers: the same batch delivered again (a timeout, a partial failure, a retried shard).


def outbox(world: World) -> Delivery:
    stream = world.stream("OrdersTable")
    world.place()
    return world.invoke("OutboxFunction", stream.event("OutboxFunction", "OrdersStream"))


def events(world: World) -> Delivery:
    subscribed = world.api.post("/webhooks", json={"url": world.receiver.url, "events": ["*"]})
    assert subscribed.status_code == 201, subscribed.text
    stream = world.stream("OrdersTable")
    world.allocated()
    batch = stream.event("EventsFunction", "OrdersStream")

    def deliver() -> Any:
        # The deliveries it queues are handed to their worker as the queue's mapping would: what
        # a subscriber gets of a redelivered batch is what counts, not the messages on the way.
        answer = world.functions["EventsFunction"].invoke(batch)
        world.drain("WebhookDeliveryQueue", "WebhookDeliveryFunction")
        return answer

    return deliver


def backordered(world: World, *, elsewhere: str | None = None) -> str:
    """A product that may wait for stock, none of it at the warehouse (5 units at `elsewhere`, when
    named), and an order of one unit of it run to `backordered`: the product's sku."""
    sku = Catalog(world.api).product("12.50", allow_backorder=True)
    Catalog(world.api).stock(sku, world.warehouse, 0)
    if elsewhere is not None:
        Catalog(world.api).stock(sku, elsewhere, 5)
    order_id = world.place((sku, 1))
    steps = world.workflow()
    steps.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)
    return sku


def backorders(world: World) -> Delivery:
    sku = backordered(world)
    stream = world.stream("InventoryTable")
    Catalog(world.api).stock(sku, world.warehouse, 5)  # the units arrive
    return world.invoke("BackorderFunction", stream.event("BackorderFunction", "InventoryStream"))


def events_of_returns(world: World) -> Delivery:
    order_id = world.delivered()["id"]
    stream = world.stream("ReturnsTable")
    made = world.api.post(
        f"/orders/{order_id}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big"}]}
    )
    assert made.status_code == 201, made.text
    return world.invoke("EventsFunction", stream.event("EventsFunction", "ReturnsStream"))


def events_of_imports(world: World) -> Delivery:
    stream = world.stream("CatalogTable")
    import_splitter(world)()
    world.drain("ImportQueue", "ImportWorkerFunction")
    return world.invoke("EventsFunction", stream.event("EventsFunction", "ImportsStream"))


def backorders_after_a_location_ships_again(world: World) -> Delivery:
    # A location that did not ship kept 5 units; shipping again, they fill the order waiting for them.
    store = Catalog(world.api).location(ships=False)
    backordered(world, elsewhere=store)
    stream = world.stream("CatalogTable")
    assert world.api.put(f"/locations/{store}", json=location_body(ships=True)).status_code == 200
    return world.invoke("BackorderFunction", stream.event("BackorderFunction", "SourcingRulesStream"))


# Queue workers: the same message delivered again.


def webhook_delivery(world: World) -> Delivery:
    subscribed = world.api.post("/webhooks", json={"url": world.receiver.url, "events": ["order.created"]})
    assert subscribed.status_code == 201, subscribed.text
    stream = world.stream("OrdersTable")
    world.place()
    world.functions["EventsFunction"].invoke(stream.event("EventsFunction", "OrdersStream"))
    return world.invoke("WebhookDeliveryFunction", world.received("WebhookDeliveryQueue"))


def access_log(world: World) -> Delivery:
    order_id = world.place()
    assert world.api.get(f"/orders/{order_id}").status_code == 200
    return world.invoke("AccessLogFunction", world.received("AccessLogQueue"))


def import_splitter(world: World) -> Delivery:
    bucket = "test-imports"
    file = csv_file(*(csv_row(unique("ext"), sku=world.sku) for _ in range(3)))
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="incoming/orders.csv", Body=file)
    return world.invoke("ImportSplitterFunction", s3_event(bucket, "incoming/orders.csv"))


def import_worker(world: World) -> Delivery:
    import_splitter(world)()
    return world.invoke("ImportWorkerFunction", world.received("ImportQueue"))


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    head = boto3.client("s3", region_name=REGION).head_object(Bucket=bucket, Key=key)
    s3_object = {"key": key, "size": head["ContentLength"], "eTag": head["ETag"].strip('"'), "sequencer": "01"}
    return {
        "Records": [
            {
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
                "eventTime": datetime.now(UTC).isoformat(), "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": s3_object},
            }
        ]
    }  # fmt: skip


# Scheduled functions: run twice over the same state.


def an_order_stored(world: World, status: Any, age: timedelta) -> str:
    """An order placed `age` ago, stored as its `status` leaves it (no workflow ran for it)."""
    from functions.adapters.dynamodb import DynamoOrders
    from tests.unit.conftest import a_stored_order

    at = datetime.now(UTC) - age
    order = a_stored_order((world.sku, 1), id=new_id("ord"), status=status, created_at=at, updated_at=at)
    created = HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(world.aws.dynamodb, world.aws.tables["OrdersTable"]).add(order, created, payment_token="tok_approve")
    return order.id


def reconciler(world: World) -> Delivery:
    an_order_stored(world, OrderStatus.PENDING, timedelta(minutes=20))  # its workflow never started
    return world.invoke("ReconcilerFunction", scheduled_event("ReconcilerFunction"))


def jeopardy(world: World) -> Delivery:
    an_order_stored(world, OrderStatus.PENDING, timedelta(days=3))  # far past its status's deadline
    return world.invoke("JeopardyScanFunction", scheduled_event("JeopardyScanFunction"))


# The API: each write route that honours an Idempotency-Key, but POST /orders (whose retries
# test_order_idempotency_api.py covers), the same request sent again under the same key.


def keyed(
    method: str, path: Callable[[World], str], body: Callable[[World], Any], *, key: bool = True
) -> Callable[[World], Delivery]:
    """A request whose path and body are made from the world (after what they need is arranged),
    sent under one Idempotency-Key each time (none, for an action a repeat of which finds done,
    without `key`): its status and body are the answer compared."""

    def arrange(world: World) -> Delivery:
        headers, url = ({"Idempotency-Key": unique("idem")} if key else {}), path(world)
        sent = body(world)

        def send() -> tuple[int, Any]:
            answer = world.api.request(method, url, json=sent, headers=headers)
            assert answer.status_code < 300, answer.text
            return answer.status_code, answer.json()

        return send

    return arrange


def api_row(
    route: str, changes: tuple[str, ...], arrange: Callable[[World], Delivery], adds: tuple[str, ...] = ()
) -> Row:
    return Row("ApiFunction", route, changes, arrange, adds=("AccessLogQueue", *adds))


def authorized_order(world: World) -> str:
    order_id = world.place()
    world.workflow().authorize_payment(order_id, attempt=0)
    return order_id


def held_order(world: World) -> str:
    order_id = authorized_order(world)
    held = world.api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"})
    assert held.status_code == 200, held.text
    return order_id


def shipped_order(world: World) -> dict[str, Any]:
    order = world.allocated()
    shipment = order["shipments"][0]["id"]
    done = world.api.post(f"/orders/{order['id']}/shipments/{shipment}/ship", json={})
    assert done.status_code == 200, done.text
    return done.json()


def open_purchase_order(world: World) -> str:
    made = world.api.post("/purchase-orders", json=purchase_order(world))
    assert made.status_code == 201, made.text
    return made.json()["id"]


def purchase_order(world: World) -> dict[str, Any]:
    vendor = unique("ven")
    assert world.api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 5}).status_code == 201
    line = {"sku": world.sku, "quantity": 10, "unit_cost": {"amount": "7.00", "currency": "USD"}}
    return {"vendor_id": vendor, "location_id": world.warehouse, "lines": [line]}


def allocated_pair(world: World) -> str:
    """An order of two units, allocated: a cancel of one of them has the other left."""
    return world.allocated((world.sku, 2))["id"]


def shipment_of(world: World) -> dict[str, Any]:
    order = world.allocated()
    return {"items": [{"order_id": order["id"], "shipment_id": order["shipments"][0]["id"], "action": "ship"}]}


def shipment_action(action: str, *, shipped: bool = False) -> Callable[[World], str]:
    """The path of `action` on the one shipment of an allocated order (shipped first, when told)."""

    def path(world: World) -> str:
        order = shipped_order(world) if shipped else world.allocated()
        return f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/{action}"

    return path


def delivered_scan(world: World) -> dict[str, Any]:
    """The flat-rate carrier's report that the one parcel of a shipped order was delivered."""
    order = shipped_order(world)
    shipment = order["shipments"][0]["id"]
    event = {"reference": f"{order['id']}/{shipment}", "tracking_number": tracking_number(shipment),
             "status": "delivered", "at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip
    return {"events": [event]}


def requested_return(world: World) -> str:
    """A return of one unit of a delivered order, authorized and not received yet."""
    made = world.api.post(
        f"/orders/{world.delivered()['id']}/returns",
        json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big"}]},
    )
    assert made.status_code == 201, made.text
    return made.json()["id"]


def delivered_order(world: World) -> str:
    return world.delivered()["id"]


def route(path: str, make: Callable[[World], Any]) -> Callable[[World], str]:
    """The path with `{}` filled by what `make` arranges."""
    return lambda world: path.format(make(world))


def authorizer(world: World) -> Delivery:
    event = json.loads((EVENTS / "authorizer_request.json").read_text())
    event["headers"] = {"Authorization": f"Bearer {world.api.admin_key}"}
    event["multiValueHeaders"] = {"Authorization": [f"Bearer {world.api.admin_key}"]}
    return world.invoke("AuthorizerFunction", event)


ROWS = [
    Row("AuthorizePaymentFunction", "task retried", ("OrdersTable", "gateway"), authorize),
    Row("ReserveStockFunction", "task retried", ("OrdersTable", "InventoryTable"), reserve),
    Row("CreateShipmentsFunction", "task retried", ("OrdersTable",), create_shipments),
    Row("FailPaymentFunction", "task retried", ("OrdersTable",), fail_payment),
    Row("CancelOrderFunction", "task retried", ("OrdersTable", "InventoryTable", "gateway"),
        cancel_after_out_of_stock),
    Row("ParkOrderFunction", "task retried", ("OrdersTable",), park),
    # A check that the receipt is recorded: it writes nothing, either time.
    Row("ReturnStepFunction", "receive retried", (), return_step("receive", ())),
    Row("ReturnStepFunction", "restock retried", ("InventoryTable",), return_step("restock", ("receive",))),
    Row("ReturnStepFunction", "record retried", ("OrdersTable",), return_step("record", ("receive", "restock"))),
    Row("ReturnStepFunction", "refund retried", ("ReturnsTable", "OrdersTable", "gateway"),
        return_step("refund", ("receive", "restock", "record"))),
    Row("ReturnStepFunction", "exchange retried", ("ReturnsTable", "OrdersTable"),
        return_step("exchange", ("receive", "restock", "record", "refund"), exchange=True)),
    Row("ReturnStepFunction", "stuck retried", ("ReturnsTable", "OrdersTable"), return_stuck),
    Row("OutboxFunction", "batch redelivered", ("executions",), outbox, source="OrdersStream"),
    Row("EventsFunction", "orders batch redelivered", ("events", "CatalogTable", "webhook posts"), events,
        source="OrdersStream"),
    Row("EventsFunction", "returns batch redelivered", ("events",), events_of_returns, source="ReturnsStream"),
    Row("EventsFunction", "imports batch redelivered", ("events",), events_of_imports, source="ImportsStream"),
    Row("BackorderFunction", "inventory batch redelivered", ("InventoryTable", "OrdersTable", "executions"),
        backorders, source="InventoryStream"),
    Row("BackorderFunction", "network batch redelivered", ("InventoryTable", "OrdersTable"),
        backorders_after_a_location_ships_again, source="SourcingRulesStream"),
    Row("WebhookDeliveryFunction", "message redelivered", ("webhook posts", "CatalogTable"), webhook_delivery,
        source="DeliveryQueue"),
    Row("AccessLogFunction", "message redelivered", ("CatalogTable",), access_log, source="AccessLogQueue"),
    Row("ImportSplitterFunction", "S3 event retried", ("ImportQueue", "CatalogTable"), import_splitter,
        source="FileUploaded"),
    Row("ImportWorkerFunction", "batch redelivered", ("OrdersTable", "CatalogTable"), import_worker,
        source="ImportQueue"),
    # Each pass restarts the orders still stalled, under a name of its own (its second: a run a
    # second later is another), until it parks them: a run again may start another execution of the
    # order (Express; its steps are the rows above), but marks the stall's first restart once.
    Row("ReconcilerFunction", "run twice", ("executions", "OrdersTable"), reconciler, adds=("executions",),
        answer_read=False, source="EveryFiveMinutes"),
    Row("JeopardyScanFunction", "run twice", ("OrdersTable",), jeopardy, answer_read=False,
        source="EveryFiveMinutes"),
    # Reads the key's hash, writes nothing: asked twice (API Gateway's cache expired), still nothing.
    Row("AuthorizerFunction", "asked twice", (), authorizer),
    api_row("POST /orders/{id}/hold", ("OrdersTable",),
        keyed("POST", route("/orders/{}/hold", authorized_order), lambda world: {"reason": "fraud_review"})),
    api_row("POST /orders/{id}/release", ("OrdersTable",),
        keyed("POST", route("/orders/{}/release", held_order), lambda world: {"note": "checked"})),
    api_row("POST /orders/{id}/cancel of some units", ("OrdersTable", "InventoryTable"),
        keyed("POST", route("/orders/{}/cancel", allocated_pair),
              lambda world: {"reason": "changed my mind", "lines": [{"line_id": "L1", "quantity": 1}]})),
    api_row("POST /inventory/{sku}/{location_id}/adjustments", ("InventoryTable",),
        keyed("POST", lambda world: f"/inventory/{world.sku}/{world.warehouse}/adjustments",
              lambda world: {"delta": 5, "reason": "receipt"})),
    api_row("POST /orders/{id}/refunds", ("OrdersTable", "gateway"),
        keyed("POST", route("/orders/{}/refunds", lambda world: shipped_order(world)["id"]),
              lambda world: {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "goodwill"})),
    api_row("POST /orders/{id}/returns", ("ReturnsTable",),
        keyed("POST", route("/orders/{}/returns", delivered_order),
              lambda world: {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big"}]})),
    api_row("POST /shipments/confirmations", ("OrdersTable", "gateway"),
        keyed("POST", lambda world: "/shipments/confirmations", shipment_of)),
    # Actions without a key: sent again, each finds itself done and answers the order as it is.
    api_row("POST /orders/{id}/shipments/{shipment_id}/ship", ("OrdersTable", "InventoryTable", "gateway"),
        keyed("POST", shipment_action("ship"), lambda world: {}, key=False)),
    api_row("POST /orders/{id}/shipments/{shipment_id}/deliver", ("OrdersTable",),
        keyed("POST", shipment_action("deliver", shipped=True), lambda world: {}, key=False)),
    api_row("POST /orders/{id}/cancel", ("OrdersTable", "InventoryTable", "gateway"),
        keyed("POST", route("/orders/{}/cancel", lambda world: world.allocated()["id"]),
              lambda world: {"reason": "changed my mind"}, key=False)),
    api_row("POST /orders/{id}/shipments/{shipment_id}/reject", ("OrdersTable", "InventoryTable"),
        keyed("POST", shipment_action("reject"), lambda world: {"reason": "damaged stock"}, key=False)),
    # A scan sent again by the carrier finds its parcel delivered.
    api_row("POST /carriers/{carrier}/tracking", ("OrdersTable",),
        keyed("POST", lambda world: "/carriers/oms-flat-rate/tracking", delivered_scan, key=False)),
    api_row("POST /purchase-orders/{id}/cancel", ("CatalogTable",),
        keyed("POST", route("/purchase-orders/{}/cancel", open_purchase_order), lambda world: {}, key=False)),
    # A receipt sent again resumes its return: another execution of the returns workflow, by design
    # (core/ports.py ReturnWorkflowStarter), whose steps are the rows above.
    api_row("POST /returns/{id}/receive", ("ReturnsTable", "executions"),
        keyed("POST", route("/returns/{}/receive", requested_return),
              lambda world: {"location_id": world.warehouse, "lines": RECEIPT_LINES}, key=False),
        adds=("executions",)),
    api_row("POST /webhooks", ("CatalogTable",),
        keyed("POST", lambda world: "/webhooks", lambda world: {"url": world.receiver.url, "events": ["*"]})),
    api_row("POST /purchase-orders", ("CatalogTable",),
        keyed("POST", lambda world: "/purchase-orders", purchase_order)),
    api_row("POST /purchase-orders/{id}/receive", ("CatalogTable", "InventoryTable"),
        keyed("POST", route("/purchase-orders/{}/receive", open_purchase_order),
              lambda world: {"lines": [{"sku": world.sku, "quantity": 4}]})),
]  # fmt: skip


# --- The test --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """What a world's tables hold before its row: the admin key, and a product with 100 units
    counted at a shipping warehouse; the tables as the process's first world wrote them, pickled."""

    admin_key: str
    sku: str
    warehouse: str
    tables: bytes  # tables_now


_seeds: list[Seeded] = []


def _seeded(aws: Any) -> Seeded:
    """The admin key, location, product and stock in the row's fresh account's tables. The
    process's first world writes them (the admin key as the stack's bootstrap does, the rest through
    the services PUT /locations, /products and /inventory call: no row's subject); each later world
    gets its own copy of the tables as that one left them, as the aws fixture gives each account a
    copy of the empty ones. Written again in every world, they were a sixth of the module's CPU."""
    from functions.bootstrap import Config, bootstrap

    if _seeds:
        copy_tables(aws.tables, _seeds[0].tables)
        return _seeds[0]
    admin_key = "oms_admin_" + secrets.token_urlsafe(24)
    built = bootstrap(Config.from_env())
    built.api_keys.ensure_admin(admin_key)
    warehouse, sku = unique("loc"), unique("SKU").upper()
    built.catalog.put_location(warehouse, LocationInput.model_validate(location_body()))
    built.catalog.put_product(sku, ProductInput.model_validate(product_body("19.99", name=f"Product {sku}")))
    built.inventory.count(sku, warehouse, 100)
    _seeds.append(Seeded(admin_key, sku, warehouse, tables_now(aws.tables)))
    return _seeds[0]


@pytest.fixture
def world(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from functions.bootstrap import forget_warm_containers

    sqs = boto3.client("sqs", region_name=REGION)
    events = boto3.client("events", region_name=REGION)
    events.create_event_bus(Name="test-events")
    tap = sqs.create_queue(QueueName="test-events-tap")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="everything", EventBusName="test-events", EventPattern=json.dumps({"source": ["oms"]}))
    events.put_targets(Rule="everything", EventBusName="test-events", Targets=[{"Id": "tap", "Arn": tap_arn}])
    webhooks = sqs.create_queue(QueueName="test-webhook-deliveries")["QueueUrl"]
    imports = create_import_resources(aws, monkeypatch)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="test-labels")
    sfn, _ = pass_through_workflow(monkeypatch)
    returns = sfn.create_state_machine(
        name="ReturnWorkflow", type="EXPRESS", definition=json.dumps(PASS_MACHINE),
        roleArn="arn:aws:iam::123456789012:role/workflow",
    )["stateMachineArn"]  # fmt: skip
    for name, value in {
        "EVENT_BUS_NAME": "test-events", "WEBHOOK_QUEUE_URL": webhooks, "WEBHOOK_ALLOW_LOCAL_HTTP": "true",
        "LABELS_BUCKET": "test-labels", "RETURN_WORKFLOW_ARN": returns,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for function in ("ReconcilerFunction", "JeopardyScanFunction"):
        monkeypatch.setenv(*schedule(function))
    forget_warm_containers()
    seeded = _seeded(aws)
    functions = {name: LocalFunction.from_properties(props, name) for name, props in template().functions().items()}
    api = InProcessApi(ApiGateway.from_template(template(), functions), seeded.admin_key)
    sku, warehouse = seeded.sku, seeded.warehouse
    queues = {
        "events": tap, "WebhookDeliveryQueue": webhooks, "ImportQueue": imports.queue_url,
        "AccessLogQueue": os.environ["ACCESS_LOG_QUEUE_URL"],
    }  # fmt: skip
    world = World(aws, api, functions, queues, ["test-labels", imports.bucket], sku, warehouse)
    try:
        yield world
    finally:
        world.close()
        forget_warm_containers()


@pytest.mark.parametrize("row", ROWS, ids=[f"{row.function}: {row.how}" for row in ROWS])
def test_a_second_delivery_leaves_what_the_first_left(world: World, row: Row):
    deliver = row.arrange(world)
    before = snapshot(world)
    first = deliver()
    once = snapshot(world)
    missing = [part for part in row.changes if part not in once]
    assert not missing, f"no such part of the snapshot: {missing}"
    unchanged = [part for part in row.changes if once[part] == before[part]]
    assert not unchanged, f"the first delivery changed none of {unchanged}: the row tests nothing there"
    if not row.changes:
        assert changed(before, once) == {}, "it writes nothing"
    second = deliver()
    twice = snapshot(world)
    differences = changed(once, twice)
    for part in row.adds:  # added to, by design: nothing of them gone
        found = differences.get(part, {})
        if part in differences and not found.get("gone") and found.get("after", 0) >= found.get("before", 0):
            del differences[part]
    assert differences == {}, "the second delivery changed what the first left"
    if row.answer_read:
        assert unsigned(second) == unsigned(first), "the second delivery answered otherwise"


def test_every_function_something_invokes_has_a_row():
    rows = {row.function for row in ROWS}
    assert functions_with_a_source() - rows == set(), "a function without a redelivery row"
    assert rows - functions_with_a_source() == set(), "a row for a function nothing invokes any more"


def test_every_event_source_but_the_apis_routes_has_a_row():
    # The API's routes are rows of their own where they take an Idempotency-Key (the rest are
    # reads, PUTs of a whole resource, or actions a repeat of which finds done).
    declared = {
        (function, name)
        for function, props in template().functions().items()
        for name, event in (props.get("Events") or {}).items()
        if event["Type"] != "Api"
    }
    rows = {(row.function, row.source) for row in ROWS if row.source}
    assert declared - rows == set(), "an event source without a redelivery row"
    assert rows - declared == set(), "a row for an event source the template no longer declares"
