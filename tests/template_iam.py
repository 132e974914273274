"""What template.yaml grants each function, and what each function's code really calls on a local stack."""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infra.local.template import load_template

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
Grant = tuple[str, str]  # (resource logical id, IAM action)


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def logical_id(resource: Any) -> str:
    """The template resource an IAM statement's Resource names (an index or object path of it too)."""
    if "Fn::GetAtt" in resource:
        return resource["Fn::GetAtt"][0]
    if "Ref" in resource:
        return resource["Ref"]
    text = resource["Fn::Sub"]
    if "-imports-${AWS::AccountId}" in text:  # the imports bucket, named to avoid a dependency cycle
        return "ImportsBucket"
    if api := re.search(r"::/restapis/\$\{(\w+)\}/", text):  # an API Gateway resource path
        return api.group(1)
    return re.search(r"\$\{(\w+)\.Arn\}", text).group(1)


def statements(function: str) -> Iterator[dict[str, Any]]:
    """The function's own Policies, then those of IAM policies attached to its role (what a grant
    naming a resource that refers to the function needs, to avoid a cycle)."""
    for policy in RESOURCES[function]["Properties"]["Policies"]:
        assert list(policy) == ["Statement"], f"{function}: a SAM policy template grants more than the code uses"
        yield from policy["Statement"]
    for resource in RESOURCES.values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": f"{function}Role"} in resource["Properties"]["Roles"]:
            yield from resource["Properties"]["PolicyDocument"]["Statement"]


def granted(function: str) -> set[Grant]:
    grants = set()
    for statement in statements(function):
        assert statement["Effect"] == "Allow"
        grants |= {(logical_id(r), a) for a in listed(statement["Action"]) for r in listed(statement["Resource"])}
    return grants


def key_limits(function: str) -> dict[Grant, list[str]]:
    """The grants of `function` limited to items whose partition key matches one of some patterns
    (a `ForAllValues:StringLike` condition on `dynamodb:LeadingKeys`, as AWS evaluates it: every key
    the request touches must match). A grant also given without a condition is not limited."""
    limited: dict[Grant, list[str]] = {}
    free: set[Grant] = set()
    for statement in statements(function):
        pairs = {(logical_id(r), a) for a in listed(statement["Action"]) for r in listed(statement["Resource"])}
        condition = statement.get("Condition")
        if condition is None:
            free |= pairs
            continue
        assert list(condition) == ["ForAllValues:StringLike"], f"{function}: a condition this tool cannot read"
        assert list(condition["ForAllValues:StringLike"]) == ["dynamodb:LeadingKeys"], function
        for pair in pairs:
            limited.setdefault(pair, []).extend(listed(condition["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]))
    return {pair: patterns for pair, patterns in limited.items() if pair not in free}


def _hash_key(table: str) -> str:
    (name,) = (k["AttributeName"] for k in RESOURCES[table]["Properties"]["KeySchema"] if k["KeyType"] == "HASH")
    return name


def _leading_keys(params: dict[str, Any], table: str) -> list[str] | None:
    """The partition keys a DynamoDB call on `table` (a logical id) touches; None when they cannot
    be read from its parameters (a Query's condition, a Scan: no key, which a ForAllValues
    condition would let through unchecked)."""
    name = _hash_key(table)
    if "Key" in params or "Item" in params:
        return [(params.get("Key") or params.get("Item"))[name]["S"]]
    return None


# --- What the code calls ------------------------------------------------------------------------
# The IAM action an API call is authorized as, where it is not the operation's own name.
_AUTHORIZED_AS = {
    ("sqs", "SendMessageBatch"): "SendMessage",
    ("sqs", "DeleteMessageBatch"): "DeleteMessage",
    ("apigateway", "FlushStageAuthorizersCache"): "DELETE",  # API Gateway's actions are its REST verbs
}
_PREFIX = {"stepfunctions": "states"}


@contextmanager
def calls_by_function(stack: Any) -> Iterator[dict[str, set[Grant]]]:
    """Every AWS call made while a function of `stack` runs, as the grants it needs, by function
    logical id. Calls made outside a function (the test's own, the stack's) are not counted."""
    from botocore.client import BaseClient

    from infra.local.lambdas import RUNNING

    functions = {f.name: logical for logical, f in stack.functions.items()}
    resources = {
        **{name: logical for logical, name in stack.table_names.items()},
        **{name: logical for logical, name in stack.bucket_names.items()},
        **{name: logical for logical, name in stack.event_bus_names.items()},
        **{url: logical for logical, url in stack.queue_urls.items()},
        **{arn: logical for logical, arn in stack.state_machine_arns.items()},
        **({stack.gateway.api_id: "OmsApi"} if stack.gateway is not None else {}),
    }
    seen: dict[str, set[Grant]] = {}
    limits = {logical: key_limits(logical) for logical in stack.functions if logical in RESOURCES}
    lock = threading.Lock()
    original = BaseClient._make_api_call

    def named(params: dict[str, Any]) -> list[str]:
        if "RequestItems" in params:
            return list(params["RequestItems"])
        for key in ("TableName", "Bucket", "QueueUrl", "stateMachineArn", "restApiId"):
            if key in params:
                return [params[key]]
        if "Entries" in params:  # EventBridge PutEvents names its bus in each entry
            return sorted({entry.get("EventBusName", "default") for entry in params["Entries"]})
        return ["*"]

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        function = functions.get(getattr(RUNNING, "function", None) or "")
        if function is not None:
            service = client.meta.service_model.service_name
            action = _AUTHORIZED_AS.get((service, operation), operation)
            if (service, operation) == ("s3", "GetObject") and "VersionId" in params:
                action = "GetObjectVersion"
            grants = {
                (resources.get(name, name), f"{_PREFIX.get(service, service)}:{action}") for name in named(params)
            }
            if (service, operation) == ("dynamodb", "TransactWriteItems"):
                # IAM authorizes each item of a transaction as its own action on its table.
                grants = {
                    (resources.get(spec["TableName"], spec["TableName"]), f"dynamodb:{kind}Item")
                    for item in params["TransactItems"]
                    for kind, spec in item.items()
                }
            for grant in list(grants):
                patterns = limits.get(function, {}).get(grant)
                if patterns is None:
                    continue
                # Granted only for some keys: a call outside them is AccessDenied on AWS (moto
                # does not check), so it is recorded as a grant the template does not give.
                keys = _leading_keys(params, grant[0])
                outside = (
                    ["(keys not read)"]
                    if keys is None
                    else [key for key in keys if not any(fnmatch.fnmatchcase(key, p) for p in patterns)]
                )
                if outside:
                    grants.discard(grant)
                    grants |= {(grant[0], f"{grant[1]} of key {key}") for key in outside}
            with lock:
                seen.setdefault(function, set()).update(grants)
        return original(client, operation, params)

    BaseClient._make_api_call = recording
    try:
        yield seen
    finally:
        BaseClient._make_api_call = original
