"""tests/template_iam.py, the tool the end-to-end "calls vs grants" tests use: it must find what AWS
would refuse and moto lets through."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from infra.local.lambdas import RUNNING
from tests.template_iam import calls_by_function, granted, key_limits


def stack_of(aws: Any) -> Any:
    """What calls_by_function reads of a stack: the import worker, and the template's tables."""
    return SimpleNamespace(
        functions={"ImportWorkerFunction": SimpleNamespace(name="local-ImportWorker")},
        table_names=aws.tables,
        bucket_names={},
        event_bus_names={},
        queue_urls={},
        state_machine_arns={},
        gateway=None,
    )


@pytest.fixture
def as_the_worker() -> Any:
    RUNNING.function = "local-ImportWorker"
    yield
    RUNNING.function = None


@pytest.mark.parametrize("function", ["ImportSplitterFunction", "ImportWorkerFunction"])
def test_the_import_functions_idempotency_table_grants_are_limited_to_import_markers(function: str):
    # The table also holds the API's cached responses. ForAllValues: every key a call names must
    # match, and GetItem and PutItem always name one (a Scan would pass such a condition unchecked).
    assert key_limits(function) == {
        ("IdempotencyTable", "dynamodb:GetItem"): ["import#*"],
        ("IdempotencyTable", "dynamodb:PutItem"): ["import#*"],
    }
    assert key_limits("ApiFunction") == {}  # the API's cached responses: any key


def test_a_call_outside_a_grant_s_leading_keys_is_recorded_as_not_granted(aws: Any, as_the_worker: Any):
    # moto does not enforce IAM, and the tool compared only tables and actions: a worker reading or
    # writing an API response's record (a key that is not import#...) passed every e2e check, and
    # would be AccessDenied on AWS.
    table = aws.tables["IdempotencyTable"]
    with calls_by_function(stack_of(aws)) as calls:
        aws.dynamodb.put_item(TableName=table, Item={"id": {"S": "import#i1#2"}})
        aws.dynamodb.get_item(TableName=table, Key={"id": {"S": "import#i1#2"}})
        aws.dynamodb.get_item(TableName=table, Key={"id": {"S": "oms-test#abc"}})

    assert calls["ImportWorkerFunction"] == {
        ("IdempotencyTable", "dynamodb:PutItem"),
        ("IdempotencyTable", "dynamodb:GetItem"),
        ("IdempotencyTable", "dynamodb:GetItem of key oms-test#abc"),
    }
    assert calls["ImportWorkerFunction"] - granted("ImportWorkerFunction") == {
        ("IdempotencyTable", "dynamodb:GetItem of key oms-test#abc")
    }
