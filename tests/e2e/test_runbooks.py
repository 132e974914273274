"""The README's runbooks recover what the failure queues hold, step by step, on the local stack:
the AWS calls its `aws` commands make, through boto3 to the stack's AWS endpoint.

One stack with every event source running: the outbox's stream mapping, the S3 notification, the
splitter and the import worker behave as the template declares them (retries, OnFailure, the
import queue's redrive policy)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from functions.import_splitter.readers import COLUMNS
from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, order_body, put_network, unique
from tests.e2e.conftest import workflow_stack
from tests.e2e.test_bulk_import import csv_row, finished, put_file

pytestmark = pytest.mark.e2e

SETTLE_SECONDS = 20


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
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


def test_an_order_whose_workflow_never_started_is_started_from_the_outbox_failure_record(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """OutboxFailuresAlarm's runbook: read the stream batch the record names, start the workflow of
    each INSERT in it, delete the record."""
    from functions.adapters.workflow_starter import StepFunctionsStarter

    def throttled(self: StepFunctionsStarter, order_id: str) -> bool:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")

    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("12.00")
    catalog.stock(sku, network["west"], 5)
    monkeypatch.setattr(StepFunctionsStarter, "start", throttled)
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]

    message = wait_for_message(stack, "OutboxFailureQueue")
    assert stack.wait_until_idle(SETTLE_SECONDS)
    assert api.get(f"/orders/{order_id}").json()["status"] == "pending"  # stuck: nothing started it
    monkeypatch.undo()  # the cause is fixed

    # jq '.Messages[0].Body | fromjson | .DDBStreamBatchInfo'
    batch = json.loads(message["Body"])["DDBStreamBatchInfo"]
    # aws dynamodbstreams get-shard-iterator --shard-iterator-type AT_SEQUENCE_NUMBER ...; get-records
    streams = stack.client("dynamodbstreams")
    iterator = streams.get_shard_iterator(
        StreamArn=batch["streamArn"],
        ShardId=batch["shardId"],
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        SequenceNumber=batch["startSequenceNumber"],
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator, Limit=1000)["Records"]
    # the INSERTs up to endSequenceNumber (the jq filter compares the numbers as strings, length first)
    end = batch["endSequenceNumber"]
    in_batch = [
        record["dynamodb"]["Keys"]["id"]["S"]
        for record in records
        if record["eventName"] == "INSERT"
        and (len(record["dynamodb"]["SequenceNumber"]), record["dynamodb"]["SequenceNumber"]) <= (len(end), end)
    ]
    assert order_id in in_batch
    # aws stepfunctions start-execution --state-machine-arn "$(id OrderWorkflow)" --name "$ORDER" ...
    sfn = stack.client("stepfunctions")
    for order in in_batch:
        sfn.start_execution(
            stateMachineArn=stack.state_machine_arns["OrderWorkflow"], name=order, input=json.dumps({"order_id": order})
        )
    # aws sqs delete-message
    stack.client("sqs").delete_message(
        QueueUrl=stack.queue_urls["OutboxFailureQueue"], ReceiptHandle=message["ReceiptHandle"]
    )

    assert status_of(api, order_id, "allocated") == "allocated"


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

    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("8.00")
    catalog.stock(sku, network["west"], 10)
    channel = unique("mkt")
    sqs = stack.client("sqs")
    import_queue = stack.queue_urls["ImportQueue"]
    # The template's 180 s visibility timeout would make five receives take 15 minutes here.
    sqs.set_queue_attributes(QueueUrl=import_queue, Attributes={"VisibilityTimeout": "0"})
    monkeypatch.setattr(OrderImporter, "import_order", broken_for_line_2)
    try:
        rows = [csv_row(channel, "D-1", sku), csv_row(channel, "D-2", sku)]
        import_id = put_file(stack, f"incoming/{channel}.csv", ("\n".join([",".join(COLUMNS), *rows]) + "\n").encode())
        dead = wait_for_message(stack, "ImportDeadLetterQueue", MessageAttributeNames=["All"])
    finally:
        sqs.set_queue_attributes(QueueUrl=import_queue, Attributes={"VisibilityTimeout": "180"})
    report = api.get(f"/imports/{import_id}").json()
    assert (report["status"], report["total"], report["imported"]) == ("running", 2, 1)
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
    imported = sorted(order["external_id"] for order in api.list_all({"channel": channel}))
    assert imported == ["D-1", "D-2"]
