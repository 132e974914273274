"""The `aws` fixture's accounts (tests/integration/conftest.py): each starts as the template makes
it, whatever the test before it wrote, created, changed or hooked, although only a process's first
gets its tables through CreateTable and the rest get copies of those."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local.template import create_table_request
from tests.integration.conftest import KEEP_BOTO3_SESSION, PASS_MACHINE, Aws, _table_properties, fresh_account

# What differs between two CreateTable of the same request: when, and the stream named after when.
WHEN = {"CreationDateTime", "LatestStreamLabel", "LatestStreamArn"}


def test_each_account_starts_empty_as_the_template_makes_it_whatever_the_one_before_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooked: list[str] = []
    first: dict[str, Any] = {}
    for account in range(3):  # the first may be the process's first account; the later two are copies
        with fresh_account(monkeypatch) as aws:
            described = _described(aws)
            first = first or described
            assert described == first
            assert sorted(aws.dynamodb.list_tables()["TableNames"]) == sorted(aws.tables.values())
            for name in aws.tables.values():
                assert aws.dynamodb.scan(TableName=name)["Items"] == []
                ttl = aws.dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
                assert ttl["TimeToLiveStatus"] == "DISABLED"
            sqs = boto3.client("sqs", region_name="us-east-1")
            queue_url = os.environ["ACCESS_LOG_QUEUE_URL"]
            assert sqs.list_queues()["QueueUrls"] == [queue_url]
            assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
            assert boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"] == []
            assert boto3.client("stepfunctions", region_name="us-east-1").list_state_machines()["stateMachines"] == []
            assert hooked == []  # a handler the last test hooked on its client hears nothing of this one's

            _leave_everything_changed(aws, sqs, queue_url, account, hooked)


def test_a_copied_table_describes_as_create_table_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_account(monkeypatch):
        pass  # the process's baseline is made by now, if it was not before
    with fresh_account(monkeypatch) as aws:
        copied = _described(aws)
    with mock_aws(config=KEEP_BOTO3_SESSION):
        client = boto3.client("dynamodb", region_name="us-east-1")
        for logical_id, props in _table_properties().items():
            client.create_table(**create_table_request(props, f"test-{logical_id}"))
        created = _described(Aws({logical_id: f"test-{logical_id}" for logical_id in _table_properties()}))
    assert copied == created


def _described(aws: Aws) -> dict[str, Any]:
    described = {}
    for logical_id, name in aws.tables.items():
        table = aws.dynamodb.describe_table(TableName=name)["Table"]
        described[logical_id] = {key: value for key, value in table.items() if key not in WHEN}
    return described


def _leave_everything_changed(aws: Aws, sqs: Any, queue_url: str, account: int, hooked: list[str]) -> None:
    """An item in every table, a message queued, TTL on, a table, a bucket and a state machine of the
    test's own, and a handler hooked on its DynamoDB client."""
    for logical_id, name in aws.tables.items():
        props = _table_properties()[logical_id]
        key = {element["AttributeName"]: {"S": f"leaked-{account}"} for element in props["KeySchema"]}
        aws.dynamodb.put_item(TableName=name, Item=key)
    aws.dynamodb.update_time_to_live(
        TableName=aws.tables["OrdersTable"], TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    aws.dynamodb.create_table(
        TableName=f"own-{account}",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    )
    sqs.send_message(QueueUrl=queue_url, MessageBody="leaked")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=f"own-{account}")
    boto3.client("stepfunctions", region_name="us-east-1").create_state_machine(
        name=f"own-{account}", definition=json.dumps(PASS_MACHINE), roleArn="arn:aws:iam::123456789012:role/own"
    )
    aws.dynamodb.meta.events.register("before-call.dynamodb", lambda **_: hooked.append("called"))
