"""The `response_keys` patch (infra/local/moto_patches/response_keys.py): every answer moto
serializes with the kept keys is the one it serializes with its own picker, byte for byte, for the
calls the OMS makes (and their errors); a member is read from the key moto's picker would pick when
a result holds several of its aliases; what the fast path does not cover goes through moto's own
code; and the suite's plain mock_aws() has the patch applied, from its start to its stop."""

from __future__ import annotations

import copy
import inspect
import io
import json
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from moto import mock_aws
from moto.core.serialize import ResponseSerializer

from infra.local.moto_patches import response_keys

REGION = "us-east-1"
TARGET = "moto.core.serialize.ResponseSerializer.get_value"
Answer = tuple[str, dict[str, Any], dict[str, Any]]  # operation, moto's own serialization, the patch's


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Answer]]:
    """Inside mock_aws (the patch applied, its keys forgotten): every answer moto serializes, made
    twice from the same result, once with moto's own `get_value` and once with the patch's."""
    moto_get_value = response_keys.PATCH.targets()[TARGET]
    serialize = ResponseSerializer.serialize
    found: list[Answer] = []

    def both(serializer: ResponseSerializer, result: Any) -> dict[str, Any]:
        with mock.patch.object(ResponseSerializer, "get_value", moto_get_value):
            by_moto = serialize(serializer, result)
        kept = serialize(serializer, result)
        found.append((serializer.operation_name, by_moto, copy.deepcopy(kept)))  # moto adds headers to its own
        return kept

    monkeypatch.setattr(ResponseSerializer, "serialize", both)
    response_keys.forget()
    with mock_aws():
        assert response_keys.PATCH.is_applied() and ResponseSerializer.__dict__["get_value"] is not moto_get_value
        yield found


def _attribute_value_of_every_type() -> dict[str, Any]:
    return {
        "S": {"S": "text"}, "N": {"N": "12.50"}, "B": {"B": b"\x00\xffbytes"}, "BOOL": {"BOOL": False},
        "NULL": {"NULL": True}, "SS": {"SS": ["a", "b"]}, "NS": {"NS": ["1", "2.5"]}, "BS": {"BS": [b"x", b"y"]},
        "L": {"L": [{"S": "first"}, {"N": "2"}, {"M": {"deep": {"L": [{"BOOL": True}]}}}]},
        "M": {"M": {"nested": {"M": {"price": {"N": "4.00"}, "skus": {"L": [{"S": "sku-1"}]}}}}},
    }  # fmt: skip


def _dynamodb_calls(run: int) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=f"orders{run}", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "status")],
        GlobalSecondaryIndexes=[{
            "IndexName": "by-status", "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )  # fmt: skip
    dynamodb.describe_table(TableName=f"orders{run}")
    ttl = {"Enabled": True, "AttributeName": "ttl"}
    dynamodb.update_time_to_live(TableName=f"orders{run}", TimeToLiveSpecification=ttl)
    dynamodb.describe_time_to_live(TableName=f"orders{run}")
    dynamodb.list_tables()
    every_type = _attribute_value_of_every_type()
    for n in range(3):
        key = {"pk": {"S": "order"}, "sk": {"S": f"line#{n}"}}
        dynamodb.put_item(TableName=f"orders{run}", Item={**key, "status": {"S": "NEW"}, **every_type})
        dynamodb.put_item(
            TableName=f"orders{run}", Item={**key, "status": {"S": "NEW"}, **every_type}, ReturnValues="ALL_OLD"
        )
        dynamodb.update_item(
            TableName=f"orders{run}", Key=key, ReturnValues="ALL_NEW",
            UpdateExpression="SET #m.nested.skus[0] = :sku, #l = list_append(#l, :more), tally = if_not_exists("
            "tally, :zero) REMOVE #b ADD NS :two DELETE SS :a",
            ExpressionAttributeNames={"#m": "M", "#l": "L", "#b": "BOOL"},
            ExpressionAttributeValues={":sku": {"S": "sku-2"}, ":more": {"L": [{"NULL": True}]}, ":zero": {"N": "0"},
                                       ":two": {"NS": ["3"]}, ":a": {"SS": ["a"]}},
        )  # fmt: skip
        dynamodb.update_item(TableName=f"orders{run}", Key=key, UpdateExpression="SET qty = :v",
                             ExpressionAttributeValues={":v": {"N": str(n)}}, ReturnValues="UPDATED_OLD")  # fmt: skip
    key = {"pk": {"S": "order"}, "sk": {"S": "line#0"}}
    dynamodb.get_item(TableName=f"orders{run}", Key=key, ConsistentRead=True, ReturnConsumedCapacity="TOTAL")
    dynamodb.get_item(TableName=f"orders{run}", Key=key, ProjectionExpression="#m.nested, L[1], SS",
                      ExpressionAttributeNames={"#m": "M"})  # fmt: skip
    dynamodb.get_item(TableName=f"orders{run}", Key={"pk": {"S": "none"}, "sk": {"S": "none"}})
    page = dynamodb.query(TableName=f"orders{run}", KeyConditionExpression="pk = :pk", Limit=2,
                          ExpressionAttributeValues={":pk": {"S": "order"}})  # fmt: skip
    dynamodb.query(TableName=f"orders{run}", KeyConditionExpression="pk = :pk", Select="COUNT",
                   ExclusiveStartKey=page["LastEvaluatedKey"],
                   ExpressionAttributeValues={":pk": {"S": "order"}})  # fmt: skip
    dynamodb.query(TableName=f"orders{run}", IndexName="by-status", KeyConditionExpression="#s = :s",
                   FilterExpression="qty > :zero", ExpressionAttributeNames={"#s": "status"},
                   ExpressionAttributeValues={":s": {"S": "NEW"}, ":zero": {"N": "0"}})  # fmt: skip
    dynamodb.scan(TableName=f"orders{run}", Limit=1)
    dynamodb.batch_get_item(RequestItems={f"orders{run}": {"Keys": [key, {"pk": {"S": "none"}, "sk": {"S": "x"}}]}})
    put = {"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"S": "1"}}}}
    dynamodb.batch_write_item(RequestItems={f"orders{run}": [put]})
    dynamodb.transact_get_items(TransactItems=[{"Get": {"TableName": f"orders{run}", "Key": key}}])
    dynamodb.transact_write_items(TransactItems=[
        {"Update": {"TableName": f"orders{run}", "Key": key, "UpdateExpression": "SET qty = qty + :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"ConditionCheck": {"TableName": f"orders{run}", "Key": {"pk": {"S": "b"}, "sk": {"S": "1"}},
                            "ConditionExpression": "attribute_exists(pk)"}},
    ])  # fmt: skip
    refused: list[Callable[[], Any]] = [
        lambda: dynamodb.put_item(TableName=f"orders{run}", Item={**key, "status": {"S": "NEW"}},
                                  ConditionExpression="attribute_not_exists(pk)",
                                  ReturnValuesOnConditionCheckFailure="ALL_OLD"),
        lambda: dynamodb.update_item(TableName=f"orders{run}", Key=key, UpdateExpression="SET a = :missing"),
        lambda: dynamodb.update_item(TableName=f"orders{run}", Key=key, UpdateExpression="SET a = = :v",
                                     ExpressionAttributeValues={":v": {"S": "x"}}),
        lambda: dynamodb.transact_write_items(TransactItems=[
            {"ConditionCheck": {"TableName": f"orders{run}", "Key": {"pk": {"S": "none"}, "sk": {"S": "x"}},
                                "ConditionExpression": "attribute_exists(pk)"}},
        ]),
        lambda: dynamodb.describe_table(TableName="missing"),
    ]  # fmt: skip
    for call in refused:
        with pytest.raises(dynamodb.exceptions.ClientError):
            call()
    dynamodb.delete_item(TableName=f"orders{run}", Key=key, ReturnValues="ALL_OLD")

    streams = boto3.client("dynamodbstreams", region_name=REGION)
    arn = dynamodb.describe_table(TableName=f"orders{run}")["Table"]["LatestStreamArn"]
    streams.list_streams()
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    streams.get_records(ShardIterator=iterator["ShardIterator"], Limit=1000)


def _sqs_calls(run: int) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    dead = sqs.create_queue(QueueName=f"dead{run}")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=f"work{run}", Attributes={
        "VisibilityTimeout": "30", "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 3}),
    })["QueueUrl"]  # fmt: skip
    sqs.send_message(QueueUrl=url, MessageBody="one", MessageAttributes={
        "kind": {"DataType": "String", "StringValue": "order"}, "raw": {"DataType": "Binary", "BinaryValue": b"\x01"},
    })  # fmt: skip
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"batch {n}"} for n in range(3)])
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                   MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"])  # fmt: skip
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=received["Messages"][0]["ReceiptHandle"],
                                  VisibilityTimeout=0)  # fmt: skip
    sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]} for n, message in enumerate(received["Messages"])
    ] + [{"Id": "unknown", "ReceiptHandle": "not-a-handle"}])  # fmt: skip
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    sqs.list_queues()
    sqs.get_queue_url(QueueName=f"work{run}")
    with pytest.raises(sqs.exceptions.ClientError):
        sqs.get_queue_url(QueueName="missing")


def _other_calls(run: int) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=f"imports{run}")
    s3.put_object(Bucket=f"imports{run}", Key="a/file.csv", Body=io.BytesIO(b"sku,qty\n"), Metadata={"by": "test"})
    s3.head_object(Bucket=f"imports{run}", Key="a/file.csv")
    s3.list_objects_v2(Bucket=f"imports{run}", Prefix="a/")
    s3.get_object(Bucket=f"imports{run}", Key="a/file.csv")["Body"].read()
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=f"imports{run}", Key="missing")
    stepfunctions = boto3.client("stepfunctions", region_name=REGION)
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
    machine = stepfunctions.create_state_machine(
        name=f"m{run}", definition=definition, roleArn="arn:aws:iam::123456789012:role/r"
    )["stateMachineArn"]
    stepfunctions.describe_state_machine(stateMachineArn=machine)
    execution = stepfunctions.start_execution(stateMachineArn=machine, name="e", input="{}")["executionArn"]
    stepfunctions.describe_execution(executionArn=execution)
    stepfunctions.list_executions(stateMachineArn=machine)
    boto3.client("sts", region_name=REGION).get_caller_identity()


@pytest.mark.parametrize("calls", [_dynamodb_calls, _sqs_calls, _other_calls], ids=["dynamodb", "sqs", "others"])
def test_every_answer_is_the_one_moto_s_own_picker_makes(answers: list[Answer], calls: Callable[[int], None]) -> None:
    calls(1)
    calls(2)  # again: every member's keys are kept by now
    assert len(answers) > 10
    different = [operation for operation, by_moto, kept in answers if kept != by_moto]
    assert different == []


def test_a_member_is_read_from_the_alias_moto_s_picker_reads_first(answers: list[Answer]) -> None:
    """DescribeTable's `Table` member has the structure shape TableDescription: moto's picker reads
    a result's "TableDescription" before its "Table" (ShapeNameAlias comes first), and tries each
    key's xform_name too. So does the kept path."""
    from moto.core.responses import ActionResult
    from moto.core.serialize import get_serializer_class
    from moto.core.utils import get_service_model

    context = mock.Mock(
        operation_model=get_service_model("dynamodb").operation_model("DescribeTable"),
        serializer_class=get_serializer_class("dynamodb", "json"),
        response=object(),
    )
    results = [
        {"Table": {"TableName": "from Table"}, "TableDescription": {"TableName": "from TableDescription"}},
        {"table": {"table_name": "snake case"}},
        {"Table": {"TableName": "only Table", "ItemCount": None}},
    ]
    bodies = [ActionResult(result).execute_result(context)[2] for result in results for _ in range(2)]
    read = [json.loads(body)["Table"]["TableName"] for body in bodies]
    assert read == ["from TableDescription"] * 2 + ["snake case"] * 2 + ["only Table"] * 2
    assert [operation for operation, by_moto, kept in answers if kept != by_moto] == []
    assert len(answers) == 6


def test_an_object_result_and_a_picker_with_transformers_go_through_moto_s_own_picker(
    answers: list[Answer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core.responses import ActionResult
    from moto.core.serialize import XFormedAttributePicker, get_serializer_class
    from moto.core.utils import get_service_model

    picked: list[str] = []
    pick = XFormedAttributePicker.__call__

    def counted(picker: XFormedAttributePicker, context: Any) -> Any:
        picked.append(context.key)
        return pick(picker, context)

    monkeypatch.setattr(XFormedAttributePicker, "__call__", counted)
    service = get_service_model("sqs")
    context = mock.Mock(
        operation_model=service.operation_model("GetQueueUrl"),
        serializer_class=get_serializer_class("sqs", "json"),
        response=mock.Mock(RESPONSE_KEY_PATH_TO_TRANSFORMER={"QueueUrl": str.upper}),
    )

    class Found:
        QueueUrl = "https://queue/object"

    transformed = ActionResult({"QueueUrl": "https://queue/dict"}).execute_result(context)[2]
    context.response = object()  # moto's own picker: no transformers
    from_object = ActionResult(Found()).execute_result(context)[2]
    picked_before_dicts = list(picked)
    from_dict = ActionResult({"QueueUrl": "https://queue/dict"}).execute_result(context)[2]
    assert [json.loads(body) for body in (transformed, from_object, from_dict)] == [
        {"QueueUrl": "HTTPS://QUEUE/DICT"},
        {"QueueUrl": "https://queue/object"},
        {"QueueUrl": "https://queue/dict"},
    ]
    # Each serialized twice (moto's, the patch's): the patch asked moto's picker for the first two only.
    assert picked_before_dicts == ["QueueUrl"] * 4 and picked == ["QueueUrl"] * 5
    assert [operation for operation, by_moto, kept in answers if kept != by_moto] == []


def test_the_suite_s_mock_aws_applies_the_patch_from_its_start_to_its_stop() -> None:
    assert not response_keys.PATCH.is_applied()
    with mock_aws():
        assert response_keys.PATCH.is_applied()
        with mock_aws():
            assert response_keys.PATCH.is_applied()
        assert response_keys.PATCH.is_applied()
    assert not response_keys.PATCH.is_applied()


def test_canary_moto_s_picker_still_builds_its_alias_providers_for_every_member() -> None:
    """Canary of `response_keys`: once moto keeps each member's keys itself, drop the patch. Also
    what it relies on: moto's picker reads a dict result only through its aliases' names, found
    from the shape, the key and the result's class (a dict's has no `Meta` and is always `dict`)."""
    from moto.core import serialize

    assert "alias_provider_cls(context)" in inspect.getsource(serialize.AttributePicker.get_possible_keys)
    assert "get_value(obj, possible_key, MISSING)" in inspect.getsource(serialize.AttributePicker.__call__)
    assert [provider.__name__ for provider in serialize.DEFAULT_ALIAS_PROVIDERS] == [
        "ExplicitAlias", "ShapeNameAlias", "NoAlias", "ShapePrefixAlias", "ClassPrefixAlias", "ModelAlias",
    ]  # fmt: skip
    shape_only = ["ShapeNameAlias", "NoAlias", "ShapePrefixAlias", "ModelAlias"]
    assert not [name for name in shape_only if "context.obj" in inspect.getsource(getattr(serialize, name))]
