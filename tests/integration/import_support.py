"""What the bulk import tests share under moto: the template's import queue (with its DLQ) and
bucket, a small catalog, and Lambda's SQS event source mapping played by hand (receive, invoke,
delete what succeeded, let the failures come back)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

from core.imports import import_id_for
from infra.local.lambdas import LambdaContext
from infra.local.stack import forget_warm_containers
from infra.local.template import Template

REGION = "us-east-1"
Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class ImportAws:
    sqs: Any
    s3: Any
    dynamodb: Any
    queue_url: str
    dlq_url: str
    bucket: str
    tables: dict[str, str]
    invocations: list[dict[str, Any]] = field(default_factory=list)

    def put_file(self, key: str, data: bytes) -> str:
        """Upload, and return the id of the import the splitter will make of it."""
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        etag = self.s3.head_object(Bucket=self.bucket, Key=key)["ETag"]
        return import_id_for(self.bucket, key, etag)

    def s3_event(self, key: str) -> dict[str, Any]:
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        s3_object = {"key": key.replace(" ", "+"), "size": head["ContentLength"], "eTag": head["ETag"].strip('"')}
        return {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": REGION,
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": self.bucket, "arn": f"arn:aws:s3:::{self.bucket}"}, "object": s3_object},
                }
            ]
        }

    def messages_waiting(self, queue_url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def peek(self, max_messages: int = 10) -> list[dict[str, Any]]:
        """Messages on the import queue, left there (visible again at once)."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max_messages, MessageAttributeNames=["All"]
        ).get("Messages", [])
        for message in messages:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return messages

    def deliver_once(
        self, handler: Handler, batch_size: int = 10, invocation: Any = None
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """One batch as Lambda's SQS mapping delivers it (to an invocation with the worker's Timeout,
        or `invocation`, a Lambda context): returns the records and the ids the handler reported
        failed. Successes are deleted; a failure (or a raise) becomes visible again at once, standing
        in for the visibility timeout running out."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return [], set()
        records = [lambda_sqs_record(message, self.queue_url) for message in messages]
        event = {"Records": records}
        self.invocations.append(event)
        try:
            response = handler(event, invocation or context("ImportWorkerFunction"))
            failed = {failure["itemIdentifier"] for failure in (response or {}).get("batchItemFailures", [])}
        except Exception:
            failed = {record["messageId"] for record in records}
        for message in messages:
            if message["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return records, failed

    def drain(self, handler: Handler, max_batches: int = 100) -> int:
        """Deliver until the queue is empty; the number of batches delivered."""
        for batches in range(max_batches):
            records, _ = self.deliver_once(handler)
            if not records:
                return batches
        raise AssertionError(f"the import queue still has messages after {max_batches} batches")


def lambda_sqs_record(message: dict[str, Any], queue_url: str) -> dict[str, Any]:
    name = queue_url.rsplit("/", 1)[-1]
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            key: {
                "stringValue": value.get("StringValue"),
                "dataType": value["DataType"],
                "stringListValues": [],
                "binaryListValues": [],
            }
            for key, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{name}",
        "awsRegion": REGION,
    }


def context(function: str, timeout_seconds: float = 30) -> LambdaContext:
    return LambdaContext(
        function_name=function,
        memory_limit_in_mb=512,
        invoked_function_arn=f"arn:aws:lambda:{REGION}:123456789012:function:{function}",
        aws_request_id="test",
        timeout_seconds=timeout_seconds,
    )


@functools.cache
def _template() -> Template:
    # Read once per test process (~0.2 s a read): these tests only read it.
    return Template.load()


@functools.cache
def _client(service: str) -> Any:
    """One client of `service` per test process: each test's moto account is new, but a client
    holds no account state (moto answers it under whichever account is started) and boto3's session
    is kept (tests/integration/conftest.py); making the two anew cost ~17 ms of CPU a test."""
    return boto3.client(service, region_name=REGION)


def create_import_resources(aws: Any, monkeypatch: pytest.MonkeyPatch) -> ImportAws:
    """The import queue and its DLQ as the template declares them, and the imports bucket."""
    resources = _template().document["Resources"]
    sqs, s3 = _client("sqs"), _client("s3")
    dlq_props = resources["ImportDeadLetterQueue"]["Properties"]
    dlq_url = sqs.create_queue(
        QueueName="test-import-dlq", Attributes={"MessageRetentionPeriod": str(dlq_props["MessageRetentionPeriod"])}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    props = resources["ImportQueue"]["Properties"]
    max_receives = _template().resolve(props["RedrivePolicy"]["maxReceiveCount"])
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
    queue_url = sqs.create_queue(
        QueueName="test-import-queue",
        Attributes={"VisibilityTimeout": str(props["VisibilityTimeout"]), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    bucket = "test-imports"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("IMPORT_QUEUE_URL", queue_url)
    # What the template gives the worker: the splitter role's unique id. moto records one SenderId
    # for every sender, so in these tests every message comes from "the splitter".
    monkeypatch.setenv("IMPORT_SPLITTER_ROLE_ID", SQS_SENDER_ID)
    monkeypatch.delenv("IMPORT_QUEUE_SENDER_CHANNELS", raising=False)
    # What the template gives the worker: its queue's maxReceiveCount.
    monkeypatch.setenv("IMPORT_QUEUE_MAX_RECEIVES", str(max_receives))
    forget_warm_containers()  # the import's clients must talk to this account
    return ImportAws(sqs, s3, aws.dynamodb, queue_url, dlq_url, bucket, aws.tables)


# What seed_catalog's writes left in a fresh account's tables (moto's Table objects, pickled as the
# aws fixture pickles the empty ones: each later account gets its own copy, unpickled in a quarter
# of a deep copy's CPU), per catalog asked for: the same items, stream records and indexes, made by
# the API's container once per test process rather than at every test (~40 ms of CPU each, a fifth
# of the import worker tests').
_seeded: dict[tuple[tuple[tuple[str, str], ...], int], bytes] = {}


def seed_catalog(skus: dict[str, str] | None = None, on_hand: int = 1000) -> None:
    """Products (sku -> USD price) with stock at one shipping warehouse."""
    import os
    import pickle

    from core.models import LocationInput, ProductInput
    from functions.api.dependencies import container
    from tests.builders import location_body, product_body
    from tests.integration.conftest import ENV_BY_TABLE

    catalog = skus or {"TSHIRT": "19.99", "MUG": "12.50"}
    asked = (tuple(catalog.items()), on_hand)
    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
    names = [os.environ[variable] for variable in ENV_BY_TABLE.values()]
    fresh = not any(len(backend.tables[name]) for name in names)  # nothing written in this account yet
    if fresh and asked in _seeded:
        backend.tables.update(pickle.loads(_seeded[asked]))
        return
    c = container()
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    for sku, price in catalog.items():
        c.catalog.put_product(sku, ProductInput.model_validate(product_body(price)))
        c.inventory.count(sku, "wh-east", on_hand)
    if fresh:
        _seeded[asked] = pickle.dumps({name: backend.tables[name] for name in names})


def report(import_id: str) -> dict[str, Any]:
    from functions.api.dependencies import container

    return container().import_queries.get(import_id).model_dump(mode="json")


def split(stack: ImportAws, key: str, data: bytes) -> str:
    """Put the file and run the splitter on its S3 event; the import id."""
    from functions.import_splitter.app import lambda_handler

    import_id = stack.put_file(key, data)
    lambda_handler(stack.s3_event(key), context("ImportSplitterFunction", 900))
    return import_id


def worker(event: dict[str, Any], context: Any) -> Any:
    """The import worker's Lambda handler, imported when first called (after the env is set)."""
    from functions.import_worker.app import lambda_handler

    return lambda_handler(event, context)


def before_puts(ledger: Any, monkeypatch: pytest.MonkeyPatch, before: Callable[[dict[str, Any]], None]) -> None:
    """`before` sees the item of each PutItem the ledger makes (from now on) before DynamoDB does:
    it may raise in its place, or run what happens meanwhile."""
    _before(ledger, monkeypatch, "put_item", lambda request: before(request["Item"]))


def before_updates(ledger: Any, monkeypatch: pytest.MonkeyPatch, before: Callable[[dict[str, Any]], None]) -> None:
    """`before` sees each UpdateItem request the ledger makes (from now on) before DynamoDB does,
    as before_puts does its puts (the two stack)."""
    _before(ledger, monkeypatch, "update_item", before)


def _before(
    ledger: Any, monkeypatch: pytest.MonkeyPatch, method: str, before: Callable[[dict[str, Any]], None]
) -> None:
    client = ledger._client

    class Watched:
        def __getattr__(self, name: str) -> Any:
            call = getattr(client, name)
            if name != method:
                return call

            def watched(**request: Any) -> Any:
                before(request)
                return call(**request)

            return watched

    monkeypatch.setattr(ledger, "_client", Watched())


def refuse_puts(
    ledger: Any, monkeypatch: pytest.MonkeyPatch, pick: Callable[[dict[str, Any]], str | None]
) -> list[str]:
    """DynamoDB refuses (throttled past botocore's retries) the ledger's first PutItem of each name
    `pick` gives an item (None: not refused). Returns the names refused, in order."""
    from botocore.exceptions import ClientError

    refused: list[str] = []

    def refusing(item: dict[str, Any]) -> None:
        picked = pick(item)
        if picked is not None and picked not in refused:
            refused.append(picked)
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "PutItem")

    before_puts(ledger, monkeypatch, refusing)
    return refused


def error_pk(item: dict[str, Any]) -> str | None:
    """An import's error item's pk; None for any other item."""
    pk = item.get("pk", {}).get("S", "")
    return pk if pk.endswith("#ERRORS") else None


def refuse_an_error_and_its_fallback(ledger: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first write of a counted failure's error is refused, and the first write of that error
    onto the line's marker, record()'s fallback: the error is then on neither."""
    return refuse_puts(
        ledger, monkeypatch, lambda item: "error" if error_pk(item) else "fallback" if "unkept_error" in item else None
    )
