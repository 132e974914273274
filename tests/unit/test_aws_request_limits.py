"""tests/aws_request_limits.py: the DynamoDB requests AWS refuses and moto takes are refused in
every test, as AWS refuses them."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from tests.aws_request_limits import MAX_EXPRESSION_BYTES, pytest_runtest_call, refusals, taken

WITHIN = "#a, " * ((MAX_EXPRESSION_BYTES - 2) // 4) + "#a"  # 4,094 bytes
PAST = WITHIN + ", #b"


def test_an_expression_of_4_kb_passes_and_one_byte_more_is_refused_wherever_it_is():
    assert len(WITHIN.encode()) <= MAX_EXPRESSION_BYTES < len(PAST.encode())
    assert refusals("GetItem", {"ProjectionExpression": WITHIN}) == []
    assert refusals("GetItem", {"ProjectionExpression": PAST}) == [
        f"GetItem: ProjectionExpression of {len(PAST)} bytes, past DynamoDB's 4096"
    ]
    in_a_transaction = {"TransactItems": [{"Put": {}}, {"Update": {"UpdateExpression": "SET " + PAST}}]}
    assert refusals("TransactWriteItems", in_a_transaction) == [
        f"TransactWriteItems TransactItems[1].Update: UpdateExpression of {len(PAST) + 4} bytes, past DynamoDB's 4096"
    ]
    in_a_batch = {"RequestItems": {"orders": {"Keys": [], "ProjectionExpression": PAST}}}
    assert refusals("BatchGetItem", in_a_batch) == [
        f"BatchGetItem RequestItems[orders]: ProjectionExpression of {len(PAST)} bytes, past DynamoDB's 4096"
    ]
    for name in ("KeyConditionExpression", "FilterExpression", "ConditionExpression"):
        assert len(refusals("Query", {name: PAST})) == 1, name


def test_an_in_of_a_hundred_operands_passes_and_of_a_hundred_and_one_is_refused():
    def among(n: int) -> str:
        return "#s IN (" + ", ".join(f":s{i}" for i in range(n)) + ")"

    assert refusals("Query", {"FilterExpression": among(100)}) == []
    assert refusals("Query", {"FilterExpression": "#x = :x AND " + among(101).lower()}) == [
        "Query: FilterExpression has an IN of 101 operands, past DynamoDB's 100"
    ]


def test_a_placeholder_of_255_bytes_passes_and_of_256_is_refused():
    assert refusals("GetItem", {"ExpressionAttributeNames": {"#" + "n" * 254: "name"}}) == []
    assert refusals("GetItem", {"ExpressionAttributeValues": {":" + "v" * 255: {"S": "v"}}}) == [
        "GetItem: ExpressionAttributeValues ':vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv'... past DynamoDB's 255 bytes"
    ]


def test_a_call_dynamodb_would_refuse_is_refused_as_it_would_be_and_fails_the_test_whatever_the_code_did(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )  # fmt: skip
        assert client.get_item(TableName="t", Key={"id": {"S": "1"}}, ProjectionExpression="id") is not None
        with pytest.raises(ClientError) as refused:
            client.get_item(TableName="t", Key={"id": {"S": "1"}}, ProjectionExpression=PAST)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    # code that swallowed the refusal: the test's call phase still fails, naming the call
    hook = pytest_runtest_call(item=None)  # type: ignore[arg-type]
    next(hook)
    with pytest.raises(
        AssertionError, match=f"DynamoDB would refuse: GetItem: ProjectionExpression of {len(PAST)} bytes"
    ):
        hook.send(None)
    assert taken() == []  # held against that test only
