"""The README's runbooks recover what the failure queues hold, step by step, on the local stack:
the AWS calls its `aws` commands make, through boto3 to the stack's AWS endpoint.

One stack with every event source running: the outbox's stream mapping, the S3 notification, the
splitter and the import worker behave as the template declares them (retries, OnFailure, the
import queue's redrive policy)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from functions.import_splitter.readers import COLUMNS
from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, order_body, stocked_sku, unique
from tests.e2e.conftest import workflow_stack
from tests.e2e.test_bulk_import import csv_row, finished, put_file

pytestmark = pytest.mark.e2e

SETTLE_SECONDS = 20
PAGE = 50  # get-records' --limit in the replay of a batch whose records lie pages apart


# A failed stream batch is retried after this pause, not the local stack's 0.2 s: the outbox's and
# the events function's mappings retry a batch their cause refuses 5 times (and bisect it) before
# it is parked, which is what these runbooks start from (3 of this module's 20 s of waiting).
MAPPING_RETRY_DELAY = 0.01


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack(mapping_retry_delay=MAPPING_RETRY_DELAY) as started:
        yield started


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    yield client
    client.close()


def wait_for_message(stack: EmbeddedStack, queue: str, **receive: Any) -> dict[str, Any]:
    """The first message to arrive in `queue` (received, so invisible for the visibility timeout)."""
    sqs = stack.client("sqs")
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=stack.queue_urls[queue], VisibilityTimeout=300, **receive)
        if messages.get("Messages"):
            return messages["Messages"][0]
        time.sleep(0.1)
    raise AssertionError(f"nothing arrived in {queue} in {SETTLE_SECONDS} s")


def status_of(api: Api, order_id: str, *expected: str) -> str:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        status = api.get(f"/orders/{order_id}").json()["status"]
        if status in expected or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def replay_outbox_failure(
    stack: EmbeddedStack,
    message: dict[str, Any],
    function: str = "OutboxFunction",
    queue: str = "OutboxFailureQueue",
    page: int = 1000,
) -> list[str]:
    """OutboxFailuresAlarm's recovery, as its `aws` and `jq` steps do it: read the stream batch the
    record names, hand its records to the outbox again, delete the record. Returns the ids of the
    orders whose records it handed over. EventsFailuresAlarm's is the same with `function`
    EventsFunction and `queue` EventsFailureQueue. `page` is get-records' --limit (the runbook's
    1000, AWS's most)."""
    # jq '.Messages[0].Body | fromjson | .DDBStreamBatchInfo'
    batch = json.loads(message["Body"])["DDBStreamBatchInfo"]
    end = batch["endSequenceNumber"]

    def upto(record: dict[str, Any]) -> bool:  # jq's upto($last): compared as strings, length first
        number = record["dynamodb"]["SequenceNumber"]
        return (len(number), number) <= (len(end), end)

    # aws dynamodbstreams get-shard-iterator --shard-iterator-type AT_SEQUENCE_NUMBER ...
    streams = stack.client("dynamodbstreams")
    iterator = streams.get_shard_iterator(
        StreamArn=batch["streamArn"],
        ShardId=batch["shardId"],
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        SequenceNumber=batch["startSequenceNumber"],
    ).get("ShardIterator")
    # get-records page after page, until a page reaches the batch's last record
    handed: list[dict[str, Any]] = []
    while iterator:
        records = streams.get_records(ShardIterator=iterator, Limit=page)
        handed += [r for r in records["Records"] if upto(r)]
        if any(r["dynamodb"]["SequenceNumber"] == end or not upto(r) for r in records["Records"]):
            break
        iterator = records.get("NextShardIterator")
    # aws lambda invoke --function-name "$(id OutboxFunction)" --payload "file://part-$N.json" out.json,
    # in batches of 25, each to go through before the next
    for start in range(0, len(handed), 25):
        part = {"Records": handed[start : start + 25]}
        answer = stack.client("lambda").invoke(
            FunctionName=stack.function_arns[function], Payload=json.dumps(part, default=as_cli_prints).encode()
        )
        assert answer.get("FunctionError") is None, answer["Payload"].read()
        assert json.loads(answer["Payload"].read()) == {"batchItemFailures": []}
    # aws sqs delete-message, once every batch went through
    assert handed, "the stream holds none of the batch's records"
    stack.client("sqs").delete_message(QueueUrl=stack.queue_urls[queue], ReceiptHandle=message["ReceiptHandle"])
    return [r["dynamodb"]["Keys"]["id"]["S"] for r in handed]


def as_cli_prints(value: Any) -> str:
    """What the AWS CLI's JSON output makes of what JSON has no type for: a binary attribute (an
    order's compressed `doc`) in base64, a record's time as ISO 8601 text (v2's default)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value.isoformat() if isinstance(value, datetime) else str(value)


def refuse_every_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.adapters.workflow_starter import StepFunctionsStarter

    def throttled(self: StepFunctionsStarter, order_id: str, *args: Any, **kwargs: Any) -> bool:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")

    monkeypatch.setattr(StepFunctionsStarter, "start", throttled)


def parked_messages(stack: EmbeddedStack, queue: str) -> list[dict[str, Any]]:
    """Every record a mapping parked in `queue`, once the stack is idle (the first waited for; each
    received, so invisible for the visibility timeout)."""
    parked = [wait_for_message(stack, queue)]
    assert stack.wait_until_idle(SETTLE_SECONDS)
    sqs = stack.client("sqs")
    while more := sqs.receive_message(QueueUrl=stack.queue_urls[queue], VisibilityTimeout=300).get("Messages"):
        parked += more
    return parked


def test_a_new_order_never_started_and_a_cancel_left_unfinished_are_started_from_the_outbox_failure_records(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """OutboxFailuresAlarm's runbook: while every start fails, a new order stays `pending` and a
    cancel whose writer died before releasing and voiding keeps its units and its authorization;
    the records of both parked. Each batch read back from the stream and handed to the outbox
    again (the new order's workflow started, the cancel's clean-up started with `finish_cancel`),
    each record deleted: the new order is allocated, the cancel finished."""
    from functions.bootstrap import Config, bootstrap

    network, sku = stocked_sku(api)
    placed = api.post("/orders", json=order_body((sku, 2)))
    assert placed.status_code == 201, placed.text
    cancelled_id = placed.json()["id"]
    assert status_of(api, cancelled_id, "allocated") == "allocated"
    assert stack.wait_until_idle(SETTLE_SECONDS)
    refuse_every_start(monkeypatch)
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    repository = bootstrap(Config.from_env()).order_repository
    order = repository.get(cancelled_id)
    cancelled, entry = order.cancel("hold_expired", at=order.updated_at, actor="jeopardy_scan")
    repository.update(cancelled, order, [entry])  # ...and the writer died here

    parked = parked_messages(stack, "OutboxFailureQueue")
    assert api.get(f"/orders/{order_id}").json()["status"] == "pending"  # stuck: nothing started it
    assert api.get(f"/orders/{cancelled_id}").json()["payment"]["status"] == "authorized"  # still held
    monkeypatch.undo()  # the cause is fixed

    handed = [handed_id for message in parked for handed_id in replay_outbox_failure(stack, message)]
    assert {order_id, cancelled_id} <= set(handed)

    assert status_of(api, order_id, "allocated") == "allocated"
    deadline = time.monotonic() + SETTLE_SECONDS
    while api.get(f"/orders/{cancelled_id}").json()["payment"]["status"] != "voided":
        assert time.monotonic() < deadline, "the cancel was not finished"
        time.sleep(0.05)
    (level,) = [x for x in api.get(f"/inventory/{sku}").json()["locations"] if x["location_id"] == network["west"]]
    assert (level["on_hand"], level["reserved"]) == (5, 1)  # the cancel's 2 released, the new order's 1 held


def test_an_import_message_parked_in_the_dead_letter_queue_is_replayed_into_the_import_queue(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """ImportDeadLetterAlarm's runbook, by hand: receive with its attributes, send to the import
    queue, delete; the import that stayed `running` one line short completes."""
    from core.import_service import OrderImporter

    real_import = OrderImporter.import_order

    def broken_for_line_2(self: OrderImporter, body: str, *args: Any, **kwargs: Any) -> Any:
        if '"D-2"' in body:
            raise ConnectionError("the tax service reset the connection")
        return real_import(self, body, *args, **kwargs)

    _, sku = stocked_sku(api, "8.00", 10)
    channel = unique("mkt")
    sqs = stack.client("sqs")
    import_queue = stack.queue_urls["ImportQueue"]
    # The template's 180 s visibility timeout would make five receives take 15 minutes here; 1 s
    # (SQS's least but 0) still covers a run, which fails at its first line (50 ms measured; 2 s
    # made this test 10 s of waiting). Not 0: the import worker's mapping runs batches side by side
    # (its MaximumConcurrency), and a message visible again at once was in several of them together.
    sqs.set_queue_attributes(QueueUrl=import_queue, Attributes={"VisibilityTimeout": "1"})
    monkeypatch.setattr(OrderImporter, "import_order", broken_for_line_2)
    try:
        rows = [csv_row(channel, "D-1", sku), csv_row(channel, "D-2", sku)]
        import_id = put_file(stack, f"incoming/{channel}.csv", ("\n".join([",".join(COLUMNS), *rows]) + "\n").encode())
        dead = wait_for_message(stack, "ImportDeadLetterQueue", MessageAttributeNames=["All"])
    finally:
        sqs.set_queue_attributes(QueueUrl=import_queue, Attributes={"VisibilityTimeout": "180"})
    report = api.get(f"/imports/{import_id}").json()
    assert (report["status"], report["total"], report["imported"]) == ("running", 2, 1)
    # Its report says where the order is (the worker's last delivery listed it).
    assert [(e["line"], e["external_id"], e["code"]) for e in report["errors"]] == [(3, "D-2", "dead_lettered")]
    assert "ConnectionError" in report["errors"][0]["message"]
    monkeypatch.undo()  # the cause is fixed

    # aws sqs send-message --message-body ... --message-attributes "$(jq ... map_values({DataType, StringValue}))"
    attributes = {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in (dead.get("MessageAttributes") or {}).items()
    }
    assert attributes, "the message keeps the import and line it belongs to"
    sqs.send_message(QueueUrl=import_queue, MessageBody=dead["Body"], MessageAttributes=attributes)
    # aws sqs delete-message --queue-url $(id ImportDeadLetterQueue) ...
    sqs.delete_message(QueueUrl=stack.queue_urls["ImportDeadLetterQueue"], ReceiptHandle=dead["ReceiptHandle"])

    replayed = finished(api, import_id, timeout=SETTLE_SECONDS)
    assert (replayed["status"], replayed["total"], replayed["imported"], replayed["failed"]) == ("completed", 2, 2, 0)
    assert replayed["errors"] == []
    imported = sorted(order["external_id"] for order in api.list_all({"channel": channel}))
    assert imported == ["D-1", "D-2"]


def bus_tap(stack: EmbeddedStack) -> str:
    """A queue every event on the stack's bus is copied to (a rule, as another stack subscribes)."""
    sqs, events = stack.client("sqs"), stack.client("events")
    tap = sqs.create_queue(QueueName=unique("bus-tap"))["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = stack.event_bus_names["EventBus"]
    rule = unique("tap")
    events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps({"source": ["oms"]}))
    events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "tap", "Arn": tap_arn}])
    return tap


def tapped(stack: EmbeddedStack, tap: str) -> dict[str, list[str]]:
    """The types of the events the tap holds (each as `detail`), by order id, read off it."""
    sqs, found = stack.client("sqs"), {}
    while messages := sqs.receive_message(QueueUrl=tap, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            detail = json.loads(message["Body"])["detail"]
            found.setdefault(detail["data"].get("order", {}).get("id"), []).append(detail["type"])
            sqs.delete_message(QueueUrl=tap, ReceiptHandle=message["ReceiptHandle"])
    return found


def sequence_numbers(stack: EmbeddedStack, stream_arn: str, shard_id: str) -> dict[tuple[str, str], str]:
    """Each (order id, event name) of the Orders stream with its record's sequence number (the last
    of each, reading the shard from its start)."""
    streams, found = stack.client("dynamodbstreams"), {}
    iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    while records := (page := streams.get_records(ShardIterator=iterator, Limit=1000))["Records"]:
        for record in records:
            found[record["dynamodb"]["Keys"]["id"]["S"], record["eventName"]] = record["dynamodb"]["SequenceNumber"]
        iterator = page["NextShardIterator"]
    return found


def test_an_orders_events_the_bus_refused_are_published_from_the_events_failure_records_and_a_batch_read_over_pages(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """EventsFailuresAlarm's runbook: the bus refused a new order's events past the stream's
    retries, so its records are parked; each handed to the events function again as the runbook
    says (the records as the CLI prints them, the compressed document in base64), the order's
    events are on the bus.

    Then a parked batch whose first and last records lie more than one GetRecords page apart: a
    page holds at most 1,000 records or 1 MB (AWS's GetRecords), and a filtered mapping's batch
    passes over what its filter leaves out (the outbox's, between two new orders, every other
    change of the orders written meanwhile; the events function's imports, every other write of
    the Catalog table). Replayed as the runbook says, every record of the batch is handed over,
    the last too. The runbook's pages are of 1,000 records; here of PAGE, with PAGE changes
    between the two records: the same loop reads them over more than one page (1,000 changes,
    written, streamed, filtered by the mappings and handed over in 41 invocations, were half of
    this module's CPU)."""
    from functions.adapters.webhooks import EventBridgePublisher

    tap = bus_tap(stack)
    _, sku = stocked_sku(api)
    assert stack.wait_until_idle(SETTLE_SECONDS)

    def refused(self: EventBridgePublisher, events: list[Any]) -> None:
        raise RuntimeError('the event bus refused 1 event(s): [{"ErrorCode": "InternalFailure"}]')

    monkeypatch.setattr(EventBridgePublisher, "publish", refused)
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    first = placed.json()["id"]
    message = wait_for_message(stack, "EventsFailureQueue")
    assert status_of(api, first, "allocated") == "allocated"  # the outbox has its own mapping
    assert stack.wait_until_idle(SETTLE_SECONDS)
    monkeypatch.undo()  # the cause is fixed
    assert "order.created" not in tapped(stack, tap).get(first, [])

    assert first in replay_outbox_failure(stack, message, "EventsFunction", "EventsFailureQueue")
    # and each other record the mapping parked meanwhile (its later changes)
    sqs = stack.client("sqs")
    while parked := sqs.receive_message(QueueUrl=stack.queue_urls["EventsFailureQueue"], VisibilityTimeout=300).get(
        "Messages"
    ):
        replay_outbox_failure(stack, parked[0], "EventsFunction", "EventsFailureQueue")

    published = tapped(stack, tap)[first]
    assert {"order.created", "order.authorized", "order.allocated"} <= set(published)

    # a page of changes between the batch's first and last record that no event comes of
    dynamodb, orders = stack.client("dynamodb"), stack.resources.table_names["OrdersTable"]
    for n in range(PAGE):
        dynamodb.update_item(
            TableName=orders, Key={"id": {"S": first}}, UpdateExpression="SET replay_gap = :n",
            ExpressionAttributeValues={":n": {"N": str(n)}},
        )  # fmt: skip
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    last = placed.json()["id"]
    assert status_of(api, last, "allocated") == "allocated"
    assert stack.wait_until_idle(SETTLE_SECONDS)
    tapped(stack, tap)  # what the mapping published: read off

    # The record Lambda parks for a batch from the first order's INSERT to the last order's.
    stream_arn = dynamodb.describe_table(TableName=orders)["Table"]["LatestStreamArn"]
    shard_id = stack.client("dynamodbstreams").describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0][
        "ShardId"
    ]
    numbers = sequence_numbers(stack, stream_arn, shard_id)
    info = {
        "shardId": shard_id,
        "startSequenceNumber": numbers[first, "INSERT"],
        "endSequenceNumber": numbers[last, "INSERT"],
        "streamArn": stream_arn,
    }
    queue = stack.queue_urls["EventsFailureQueue"]
    body = json.dumps({"DDBStreamBatchInfo": info})
    sqs.send_message(QueueUrl=queue, MessageBody=body)
    message = wait_for_message(stack, "EventsFailureQueue")
    assert message["Body"] == body, "no other record is parked"

    handed = replay_outbox_failure(stack, message, "EventsFunction", "EventsFailureQueue", page=PAGE)

    assert {first, last} <= set(handed) and len(handed) > PAGE  # read over more than one page
    published = tapped(stack, tap)
    assert ["order.created" in published.get(order_id, []) for order_id in (first, last)] == [True, True]
