"""What DynamoDB refuses in a request and moto takes, refused in every test (a pytest plugin:
pyproject.toml's addopts load it with `-p`).

DynamoDB answers a ValidationException to an expression longer than 4 KB, to an expression
attribute name or value placeholder longer than 255 bytes, and to an `IN` of more than 100
operands (the Developer Guide's "Constraints: expression parameters"); moto takes all three. An
adapter that builds an expression from what a request holds (a projection naming each reservation
key an order asks about, a condition listing each status) passes every test on moto and fails on
AWS once an order is large enough. So each DynamoDB call made in a test process is checked as
DynamoDB would check it: one it would refuse is refused here the same way (the code under test
meets the ValidationException it meets on AWS), and the test it happened in fails, naming the
call, whatever the code did with the refusal.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

MAX_EXPRESSION_BYTES = 4096
MAX_PLACEHOLDER_BYTES = 255
MAX_IN_OPERANDS = 100
EXPRESSIONS = (
    "KeyConditionExpression",
    "FilterExpression",
    "ProjectionExpression",
    "ConditionExpression",
    "UpdateExpression",
)
_IN = re.compile(r"\bIN\s*\(([^)]*)\)", re.IGNORECASE)

_lock = threading.Lock()
_refused: list[str] = []  # what was refused since the last test's call ended (any thread)


def _requests(operation: str, params: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each part of a call that carries expressions of its own: (where, its parameters)."""
    yield operation, params
    for n, item in enumerate(params.get("TransactItems") or ()):
        for kind, spec in item.items():
            yield f"{operation} TransactItems[{n}].{kind}", spec
    for table, spec in (params.get("RequestItems") or {}).items():
        if isinstance(spec, dict):  # BatchGetItem's (BatchWriteItem's are lists of writes: no expressions)
            yield f"{operation} RequestItems[{table}]", spec


def refusals(operation: str, params: dict[str, Any]) -> list[str]:
    """What DynamoDB would refuse in a call of `operation` with `params`, each said as its
    ValidationException would (empty: nothing)."""
    found = []
    for where, spec in _requests(operation, params):
        for name in EXPRESSIONS:
            expression = spec.get(name)
            if not isinstance(expression, str):
                continue
            size = len(expression.encode())
            if size > MAX_EXPRESSION_BYTES:
                found.append(f"{where}: {name} of {size} bytes, past DynamoDB's {MAX_EXPRESSION_BYTES}")
            for operands in _IN.findall(expression):
                count = operands.count(",") + 1
                if count > MAX_IN_OPERANDS:
                    found.append(f"{where}: {name} has an IN of {count} operands, past DynamoDB's {MAX_IN_OPERANDS}")
        for placeholders in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
            long = [key for key in spec.get(placeholders) or () if len(key.encode()) > MAX_PLACEHOLDER_BYTES]
            if long:
                found.append(
                    f"{where}: {placeholders} {long[0][:40]!r}... past DynamoDB's {MAX_PLACEHOLDER_BYTES} bytes"
                )
    return found


_original = BaseClient._make_api_call


def _checked(client: Any, operation: str, params: dict[str, Any]) -> Any:
    if client.meta.service_model.service_name == "dynamodb":
        found = refusals(operation, params)
        if found:
            with _lock:
                _refused.extend(found)
            error = {"Error": {"Code": "ValidationException", "Message": "; ".join(found)}}
            raise ClientError(error, operation)
    return _original(client, operation, params)


def taken() -> list[str]:
    """What was refused since the last test's call ended, no longer held against the test (for a
    test that makes such a call on purpose)."""
    with _lock:
        found, _refused[:] = list(_refused), []
    return found


def pytest_configure(config: pytest.Config) -> None:
    BaseClient._make_api_call = _checked


def pytest_unconfigure(config: pytest.Config) -> None:
    BaseClient._make_api_call = _original


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The test fails if a call made since the last test's call (its fixtures' too) was refused,
    whatever the code did with the ValidationException."""
    result = yield
    found = taken()
    if found:
        raise AssertionError("DynamoDB would refuse: " + "; ".join(dict.fromkeys(found)))
    return result
