"""What template.yaml grants each function, and what each function's code really calls on a local stack."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import Any

from infra.local.template import load_template

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
Grant = tuple[str, str]  # (resource logical id, IAM action)
# What grants on API Gateway's API keys and usage plans name, which are made outside the template
# (per-key usage plans: functions.adapters.api_gateway.ApiGatewayKeys), in place of a logical id.
API_KEYS, USAGE_PLANS = "API Gateway API keys", "API Gateway usage plans"


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def logical_id(resource: Any) -> str:
    """The template resource an IAM statement's Resource names (an index or object path of it too);
    EVERY for `"*"`. Any other literal ARN is an AssertionError: this tool cannot tell what it names."""
    if resource == "*":
        return EVERY
    cannot = f"a Resource this tool cannot read: {resource!r}"
    assert isinstance(resource, dict) and len(resource) == 1, cannot
    if "Fn::GetAtt" in resource:
        return resource["Fn::GetAtt"][0]
    if "Ref" in resource:
        return resource["Ref"]
    text = resource.get("Fn::Sub")
    assert isinstance(text, str), cannot
    if "-imports-${AWS::AccountId}" in text:  # the imports bucket, named to avoid a dependency cycle
        return "ImportsBucket"
    if api := re.search(r"::/restapis/\$\{(\w+)\}/", text):  # an API Gateway resource path
        return api.group(1)
    if plan := re.search(r"::/usageplans/\$\{(\w+)\}/", text):  # a usage plan's path (its keys)
        return plan.group(1)
    if collection := re.search(r"::(/apikeys|/usageplans)(/\*)?$", text):  # resources made outside the template
        return {"/apikeys": API_KEYS, "/usageplans": USAGE_PLANS}[collection.group(1)]
    named = re.match(r"\$\{(\w+)\.Arn\}", text)  # the resource's ARN, then perhaps a path in it
    assert named, cannot
    return named.group(1)


def statements(function: str, resources: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """The function's own Policies, then those of IAM policies attached to its role (what a grant
    naming a resource that refers to the function needs, to avoid a cycle); `resources`: a
    template's (template.yaml's unless told). A function with no Policies is granted nothing."""
    resources = RESOURCES if resources is None else resources
    for policy in resources[function]["Properties"].get("Policies") or []:
        assert list(policy) == ["Statement"], f"{function}: a SAM policy template grants more than the code uses"
        yield from policy["Statement"]
    for resource in resources.values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": f"{function}Role"} in resource["Properties"]["Roles"]:
            yield from resource["Properties"]["PolicyDocument"]["Statement"]


def allowed_statements(function: str, resources: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """statements(function), each checked to be one this tool reads whole: an Allow, with no
    Condition or one of a `ForAllValues:StringLike` on `dynamodb:LeadingKeys` (plain patterns)
    and, on a Query grant, a `ForAllValues:StringEquals` on `dynamodb:Attributes` with the
    `StringEquals` `dynamodb:Select` SPECIFIC_ATTRIBUTES it needs (attribute_limit). Anything else
    fails here, loudly: a grant read without its condition (or a Deny read as a grant) would pass
    a call AWS refuses."""
    for statement in statements(function, resources):
        cannot = f"{function}: a statement this tool cannot read: {statement}"
        assert statement["Effect"] == "Allow", cannot
        # NotAction, NotResource: everything but what they name, which this tool does not list.
        assert "Action" in statement and "Resource" in statement, cannot
        assert not {"NotAction", "NotResource", "Principal", "NotPrincipal"} & set(statement), cannot
        key_patterns(function, statement)
        attribute_limit(function, statement)
        for action in listed(statement["Action"]):
            actions(action, cannot)
        for resource in listed(statement["Resource"]):
            logical_id(resource), scope(resource)
        yield statement


# The condition operators and keys this tool reads, each operator with its one key.
_CONDITIONS = {
    "ForAllValues:StringLike": "dynamodb:LeadingKeys",
    "ForAllValues:StringEquals": "dynamodb:Attributes",
    "StringEquals": "dynamodb:Select",
}
SPECIFIC_ATTRIBUTES = "SPECIFIC_ATTRIBUTES"


def _condition(function: str, statement: dict[str, Any]) -> dict[str, list[Any]]:
    """A statement's condition as {key: its values}, checked to be one this tool reads (see
    allowed_statements); {} without a Condition."""
    condition = statement.get("Condition")
    if condition is None:
        return {}
    cannot = f"{function}: a condition this tool cannot read: {condition}"
    assert isinstance(condition, dict) and condition and set(condition) <= set(_CONDITIONS), cannot
    read: dict[str, list[Any]] = {}
    for operator, values in condition.items():
        assert isinstance(values, dict) and list(values) == [_CONDITIONS[operator]], cannot
        read[_CONDITIONS[operator]] = listed(values[_CONDITIONS[operator]])
    for values in read.values():
        assert values and all(isinstance(v, str) and "${" not in v for v in values), cannot
    # The attributes' condition, read only as AWS enforces it for reads: ForAllValues holds for a
    # request naming no attribute (one reading whole items), so it is whole only with Select
    # required to be SPECIFIC_ATTRIBUTES (StringEquals: a request sending no Select is refused),
    # and on Query alone (what a write's or a GetItem's attributes are, this tool does not read).
    if "dynamodb:Attributes" in read or "dynamodb:Select" in read:
        assert read.get("dynamodb:Select") == [SPECIFIC_ATTRIBUTES] and "dynamodb:Attributes" in read, cannot
        assert all(actions(a) == {"dynamodb:Query"} for a in listed(statement["Action"])), cannot
    return read


def key_patterns(function: str, statement: dict[str, Any]) -> list[str] | None:
    """The patterns a statement's `ForAllValues:StringLike` condition on `dynamodb:LeadingKeys`
    limits it to (every key a request touches must match one); None without one. Any condition
    _condition does not read (another operator, another key, an intrinsic or a policy variable in
    a pattern) is an AssertionError: this tool cannot tell what it allows."""
    return _condition(function, statement).get("dynamodb:LeadingKeys")


def attribute_limit(function: str, statement: dict[str, Any]) -> list[str] | None:
    """The attributes a Query statement's `dynamodb:Attributes` condition limits it to (the call
    must send Select SPECIFIC_ATTRIBUTES and name only these: read_attributes); None without one."""
    return _condition(function, statement).get("dynamodb:Attributes")


# The words of a Query's expressions that name no attribute: a condition's operators.
_OPERATORS = frozenset({"AND", "OR", "NOT", "BETWEEN", "IN"})


def read_attributes(params: dict[str, Any]) -> tuple[str | None, frozenset[str]]:
    """A Query's Select and the top-level attributes it names, aliases resolved: what
    `dynamodb:Select` and `dynamodb:Attributes` hold. AWS counts every top-level attribute a request
    names, one only a filter evaluates too (the developer guide's fine-grained access control page,
    example 3): its projection's, its key condition's, its filter's, and its ExclusiveStartKey's
    (the table's keys, which such a grant must list anyway)."""
    names = params.get("ExpressionAttributeNames", {})
    expressions = ", ".join(
        params.get(name, "") for name in ("ProjectionExpression", "KeyConditionExpression", "FilterExpression")
    )
    # A name or an alias; never a nested attribute's (after "."), a value (:v) or a function (before "(").
    words = re.findall(r"(?<![:\w#.])#?[A-Za-z_]\w*(?!\w|\s*\()", expressions)
    named = {names.get(w, w) for w in words if w.upper() not in _OPERATORS}
    return params.get("Select"), frozenset(named | set(params.get("ExclusiveStartKey", {})))


# --- Actions and resources as IAM reads them --------------------------------------------------------
EVERY = "*"  # what `Resource: "*"` names: every resource
# The botocore services whose operations are a service prefix's IAM actions (most are named as
# their operation), and the IAM actions that are no operation's name (or not the service's own).
_SERVICES = {
    "apigateway": (), "cloudwatch": ("cloudwatch",), "dynamodb": ("dynamodb", "dynamodbstreams"),
    "events": ("events",), "kms": ("kms",), "lambda": ("lambda",), "logs": ("logs",), "s3": ("s3",),
    "sns": ("sns",), "sqs": ("sqs",), "states": ("stepfunctions",), "xray": ("xray",),
}  # fmt: skip
_IAM_ONLY = {
    "apigateway": ("GET", "POST", "PUT", "PATCH", "DELETE"),  # API Gateway's actions are its REST verbs
    "dynamodb": ("ConditionCheckItem",),  # a transaction's ConditionCheck
    "s3": ("GetObjectVersion", "ListBucket", "ListBucketVersions", "PutObjectAcl", "GetObjectAcl"),
}


@lru_cache(maxsize=1)
def known_actions() -> frozenset[str]:
    """Every IAM action (`prefix:Name`, as AWS spells it) of the services this tool names: what an
    action pattern (`dynamodb:Get*`, `s3:*`, `*`) is read against."""
    import botocore.session

    session = botocore.session.get_session()
    known = set()
    for prefix, services in _SERVICES.items():
        for service in services:
            known |= {f"{prefix}:{name}" for name in session.get_service_model(service).operation_names}
        known |= {f"{prefix}:{name}" for name in _IAM_ONLY.get(prefix, ())}
    return frozenset(known)


def actions(action: Any, cannot: str = "") -> frozenset[str]:
    """The IAM actions a statement's `action` allows, as IAM matches them: case-insensitively, `*`
    any run and `?` any one character (`dynamodb:Get*` is GetItem, GetRecords...). An action with no
    wildcard that no known service has stays as written; a pattern that matches none of them, or
    what is no `prefix:name` string, is an AssertionError naming the statement (`cannot`)."""
    assert isinstance(action, str) and (action == "*" or ":" in action), cannot or f"an action: {action!r}"
    matched = _matched_actions(action.lower())
    if matched:
        return matched
    assert not {"*", "?"} & set(action), f"{cannot or 'an action'}: {action!r} matches no action this tool knows"
    return frozenset({action})


def _pairs(statement: dict[str, Any], resources: dict[str, Any] | None = None) -> set[Grant]:
    """What a statement grants, as (resource, action) pairs; `Resource: "*"` grants its actions on
    every template resource (and on EVERY, what a call naming no resource, such as X-Ray's, needs)."""
    every = [EVERY, *(RESOURCES if resources is None else resources)]
    names = {name for r in listed(statement["Resource"]) for name in (every if r == "*" else [logical_id(r)])}
    return {(name, a) for action in listed(statement["Action"]) for a in actions(action) for name in names}


def _covers(resource: Any, action: Any, grant: Grant, within: str) -> bool:
    """Whether a statement's `resource` and `action` (one each) allow `grant` on the part of its
    resource the call names (`within`, in scope()'s form): `"*"` covers every resource and part."""
    if grant[1] not in actions(action):
        return False
    # Matched from the separator on, as IAM matches the whole ARN: `${Table.Arn}/*` names the
    # table's indexes, never the table (`table/orders` is not `table/orders/*`); `${Table.Arn}*` both.
    return resource == "*" or (
        logical_id(resource) == grant[0] and like(f"/{within}" if within else "", _path(resource))
    )


def granted(function: str, resources: dict[str, Any] | None = None) -> set[Grant]:
    """What the template (template.yaml, or the one whose `resources` these are) grants `function`."""
    grants = set()
    for statement in allowed_statements(function, resources):
        grants |= _pairs(statement, resources)
    return grants


def key_limits(function: str, resources: dict[str, Any] | None = None) -> dict[Grant, list[str]]:
    """The grants of `function` limited to items whose partition key matches one of some patterns
    (a `ForAllValues:StringLike` condition on `dynamodb:LeadingKeys`, as AWS evaluates it: every key
    the request touches must match). A grant also given without a condition is not limited."""
    limited: dict[Grant, list[str]] = {}
    free: set[Grant] = set()
    for statement in allowed_statements(function, resources):
        patterns = key_patterns(function, statement)
        if patterns is None:
            free |= _pairs(statement, resources)
            continue
        for pair in _pairs(statement, resources):
            limited.setdefault(pair, []).extend(patterns)
    return {pair: patterns for pair, patterns in limited.items() if pair not in free}


def scope(resource: Any) -> str:
    """What of its resource a statement's Resource names: "" the resource itself (a table, a
    bucket, a queue), or the path after its ARN: `index/by_sla` or `index/*` (a table's indexes,
    which the table's ARN does not cover, nor they the table), `labels/*` (a bucket's objects)."""
    if resource == "*":
        return "*"  # every part of every resource
    return _path(resource).removeprefix("/")


def _path(resource: Any) -> str:
    """What follows its resource's ARN in a statement's Resource, as written: "", `/index/by_sla`,
    `/*` (the parts only), `*` (the resource and its parts)."""
    if not isinstance(resource, dict) or "Fn::Sub" not in resource or ":apigateway:" in resource["Fn::Sub"]:
        return ""  # an API Gateway resource is the API's (or a plan's) path: the tool names it by its API
    text = resource["Fn::Sub"]
    if "-imports-${AWS::AccountId}" in text:
        path = text.split("-${AWS::Region}", 1)[1]
    else:
        path = re.search(r"\$\{\w+\.Arn\}(.*)", text).group(1)
    assert "${" not in path, f"a Resource path this tool cannot read: {text}"
    return path


@cache
def _matched_actions(pattern: str) -> frozenset[str]:
    """The known actions a lower-cased action pattern matches: read once per pattern, since every
    call a function makes is read against each action of its statements (matched against every
    known action each time, one call cost most of a second)."""
    wildcard = _wildcard(pattern)
    return frozenset(known for known in known_actions() if wildcard.fullmatch(known.lower()))


@cache
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def like(value: str, pattern: str) -> bool:
    """IAM's StringLike (and a Resource's wildcards): `*` any run, `?` any one character, nothing
    else special (fnmatch would read `[...]` as a set)."""
    return _wildcard(pattern).fullmatch(value) is not None


def _hash_key(table: str, resources: dict[str, Any]) -> str:
    (name,) = (k["AttributeName"] for k in resources[table]["Properties"]["KeySchema"] if k["KeyType"] == "HASH")
    return name


def _leading_keys(
    params: dict[str, Any], table: str, physical: str, resources: dict[str, Any] | None = None
) -> list[str] | None:
    """The partition keys a DynamoDB call on `table` (a logical id, `physical` its name) touches,
    a batch's or a transaction's items on it included; None when they cannot be read from its
    parameters (a Query's condition, a Scan: no key, which a ForAllValues condition would let
    through unchecked)."""
    hash_key = _hash_key(table, RESOURCES if resources is None else resources)

    def _key_value(key: dict[str, Any], table: str) -> str:
        (value,) = key[hash_key].values()  # {"S": ...} or {"N": ...}
        return str(value)

    if "Key" in params or "Item" in params:
        return [_key_value(params.get("Key") or params["Item"], table)]
    if "KeyConditionExpression" in params and "IndexName" not in params:  # a Query of the table
        return [_queried_partition(params, hash_key)]
    if "TransactItems" in params:
        specs = [spec for item in params["TransactItems"] for spec in item.values() if spec["TableName"] == physical]
        return [_key_value(spec.get("Key") or spec["Item"], table) for spec in specs]
    if physical in params.get("RequestItems", {}):
        request = params["RequestItems"][physical]
        if isinstance(request, dict):  # BatchGetItem
            return [_key_value(key, table) for key in request["Keys"]]
        writes = [next(iter(write.values())) for write in request]  # BatchWriteItem: PutRequest or DeleteRequest
        return [_key_value(w.get("Key") or w["Item"], table) for w in writes]
    return None


def _queried_partition(params: dict[str, Any], hash_key: str) -> str:
    """The partition a Query's key condition names (`<key> = :value`, the key perhaps an alias)."""
    names = params.get("ExpressionAttributeNames", {})
    for name, value in re.findall(r"(#?\w+)\s*=\s*(:\w+)", params["KeyConditionExpression"]):
        if names.get(name, name) == hash_key:
            (key,) = params["ExpressionAttributeValues"][value].values()
            return str(key)
    raise AssertionError(f"a Query whose partition this tool cannot read: {params['KeyConditionExpression']}")


def not_granted_as(
    policy: list[dict[str, Any]],
    function: str,
    grant: Grant,
    within: str,
    keys: list[str] | None,
    read: tuple[str | None, frozenset[str]] | None = None,
) -> set[Grant]:
    """How a call that needs `grant` (one the template gives `function`, whose statements are
    `policy`, perhaps on some part of the resource only, for some keys, or for some attributes) is
    recorded: as itself when a statement allows it on the part it names (`within`, in scope()'s
    form) for the keys it touches and the attributes it reads (`read`: read_attributes' answer);
    otherwise as what no statement grants (`<action> on <part>`, `<action> of key <key>`,
    `<action> of attribute <name>`, `<action> without Select SPECIFIC_ATTRIBUTES`), which AWS
    refuses and moto lets through."""
    covering = [
        statement
        for statement in policy
        if any(_covers(r, a, grant, within) for a in listed(statement["Action"]) for r in listed(statement["Resource"]))
    ]
    if not covering:
        return {(grant[0], f"{grant[1]} on {within or 'itself'}")}
    select, named = read if read is not None else (None, frozenset())

    def holds_keys(patterns: list[str] | None) -> bool:
        return patterns is None or (keys is not None and all(any(like(key, p) for p in patterns) for key in keys))

    def holds_attributes(allowed: list[str] | None) -> bool:
        return allowed is None or (select == SPECIFIC_ATTRIBUTES and named <= set(allowed))

    limits = [(key_patterns(function, s), attribute_limit(function, s)) for s in covering]
    if any(holds_keys(patterns) and holds_attributes(allowed) for patterns, allowed in limits):
        return {grant}
    in_keys = [allowed for patterns, allowed in limits if holds_keys(patterns)]
    if in_keys:  # refused for what it reads, by every statement that holds its keys
        if select != SPECIFIC_ATTRIBUTES:
            return {(grant[0], f"{grant[1]} without Select {SPECIFIC_ATTRIBUTES}")}
        outside = named - {name for allowed in in_keys for name in allowed or ()}
        return {(grant[0], f"{grant[1]} of attribute {name}") for name in sorted(outside)}
    if keys is None:
        return {(grant[0], f"{grant[1]} of key (keys not read)")}
    every = [p for patterns, _ in limits for p in patterns or ()]
    outside = [key for key in keys if not any(like(key, p) for p in every)] or keys
    return {(grant[0], f"{grant[1]} of key {key}") for key in outside}


# --- What the code calls ------------------------------------------------------------------------
# The IAM action an API call is authorized as, where it is not the operation's own name.
_AUTHORIZED_AS = {
    ("sqs", "SendMessageBatch"): "SendMessage",
    ("sqs", "DeleteMessageBatch"): "DeleteMessage",
    ("apigateway", "FlushStageAuthorizersCache"): "DELETE",  # API Gateway's actions are its REST verbs
    ("apigateway", "GetUsagePlans"): "GET",
    ("apigateway", "CreateApiKey"): "POST",
    ("apigateway", "CreateUsagePlanKey"): "POST",
    ("apigateway", "DeleteApiKey"): "DELETE",
    ("lambda", "Invoke"): "InvokeFunction",
}
_PREFIX = {"stepfunctions": "states"}
# The API Gateway calls that name a collection made outside the template (a key's id is no template
# resource's): what their grants name in place of a logical id.
_OUTSIDE = {"CreateApiKey": API_KEYS, "DeleteApiKey": API_KEYS, "GetUsagePlans": USAGE_PLANS}
_READS = re.compile("Get|List|Describe|Query|Scan|BatchGet|Receive|Head")  # what sets no function going


class Calls(dict[str, set[Grant]]):
    """What calls_by_function records, by function logical id, and in `made` how many calls needed
    each (function, grant) so far (a Watch fails each test that makes a call not granted, not only
    the first); `lock` held while it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.made: Counter[tuple[str, Grant]] = Counter()
        self.writes = 0  # calls made outside a function (a test's own) that may set one going

    def snapshot(self) -> dict[str, set[Grant]]:
        with self.lock:
            return {function: set(grants) for function, grants in self.items()}


def resources_of(stack: Any) -> dict[str, Any]:
    """The template resources `stack` runs: its own template's (a test's edited copy of
    template.yaml, or a template of its own), template.yaml's for what names no template."""
    template = getattr(stack, "template", None)
    return RESOURCES if template is None else template.document["Resources"]


@contextmanager
def calls_by_function(stack: Any) -> Iterator[Calls]:
    """Every AWS call made while a function of `stack` runs, as the grants it needs (by what its
    own template grants: resources_of), by function logical id, a presigned URL it signs included
    (the call its holder makes as the function). Calls made outside a function (the test's own,
    the stack's) are not counted. The stack's names are read as they are when a call is made: a
    stack may be entered before it is started."""
    from botocore.client import BaseClient

    from infra.local.lambdas import RUNNING, WORKER_THREADS

    def names_of() -> tuple[dict[str, str], dict[str, str]]:
        return {f.name: logical for logical, f in stack.functions.items()}, {
            **{name: logical for logical, name in stack.table_names.items()},
            **{name: logical for logical, name in stack.bucket_names.items()},
            **{name: logical for logical, name in stack.event_bus_names.items()},
            **{url: logical for logical, url in stack.queue_urls.items()},
            **{arn: logical for logical, arn in stack.state_machine_arns.items()},
            **({stack.gateway.api_id: "OmsApi"} if stack.gateway is not None else {}),
            **{plan_id: logical for logical, plan_id in getattr(stack, "usage_plan_ids", {}).items()},
            # A function invoked, by its name or ARN (a stand-in stack's functions may have no ARN).
            **{getattr(f, "arn", f.name): logical for logical, f in stack.functions.items()},
            **{f.name: logical for logical, f in stack.functions.items()},
        }

    def sizes() -> tuple[Any, ...]:
        parts = (stack.functions, stack.table_names, stack.bucket_names, stack.event_bus_names, stack.queue_urls)
        return (*map(len, parts), len(stack.state_machine_arns), stack.gateway is None)

    named_as: list[Any] = [sizes(), *names_of()]  # read again when the stack has more to name

    def names(again: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        if again or sizes() != named_as[0]:
            named_as[:] = [sizes(), *names_of()]
        return named_as[1], named_as[2]

    seen = Calls()
    # Read once (and checked: a statement this tool cannot read fails here, before any call); a
    # function the stack builds only once started is read at its first call.
    template = resources_of(stack)
    policies = {
        logical: list(allowed_statements(logical, template)) for logical in stack.functions if logical in template
    }
    given = {logical: granted(logical, template) for logical in policies}

    def policy_of(function: str) -> list[dict[str, Any]]:
        if function not in policies and function in template:
            policies[function], given[function] = (
                list(allowed_statements(function, template)),
                granted(function, template),
            )
        return policies.get(function, [])

    lock = seen.lock
    original = BaseClient._make_api_call

    def named(params: dict[str, Any]) -> list[str]:
        if "RequestItems" in params:
            return list(params["RequestItems"])
        for key in ("TableName", "Bucket", "QueueUrl", "stateMachineArn", "restApiId", "FunctionName", "usagePlanId"):
            if key in params:
                return [params[key]]
        if "Entries" in params:  # EventBridge PutEvents names its bus in each entry
            return sorted({entry.get("EventBusName", "default") for entry in params["Entries"]})
        return ["*"]

    def record(client: Any, operation: str, params: dict[str, Any]) -> None:
        running = getattr(RUNNING, "function", None)
        if running is None:
            seen.writes += not _READS.match(operation)
            return
        functions, resources = names()
        called = [_OUTSIDE[operation]] if operation in _OUTSIDE else named(params)
        if running not in functions or not {*called} <= {*resources, "*", "default", *_OUTSIDE.values()}:
            functions, resources = names(again=True)  # a name the stack gave since (as it names them now)
        function = functions.get(running)
        if function is not None:
            policy = policy_of(function)
            service = client.meta.service_model.service_name
            action = _AUTHORIZED_AS.get((service, operation), operation)
            if (service, operation) == ("s3", "GetObject") and "VersionId" in params:
                action = "GetObjectVersion"
            grants = {(resources.get(name, name), f"{_PREFIX.get(service, service)}:{action}"): name for name in called}
            if (service, operation) == ("dynamodb", "TransactWriteItems"):
                # IAM authorizes each item of a transaction as its own action on its table.
                grants = {
                    (resources.get(spec["TableName"], spec["TableName"]), f"dynamodb:{kind}Item"): spec["TableName"]
                    for item in params["TransactItems"]
                    for kind, spec in item.items()
                }

            # Any object call on a directory bucket (S3 Express One Zone, LabelsZoneId) is authorized
            # as s3express:CreateSession on the bucket: its access boundary is the bucket, not a key.
            express = {
                grant
                for grant in grants
                if service == "s3" and template.get(grant[0], {}).get("Type") == "AWS::S3Express::DirectoryBucket"
            }
            grants = {((g[0], "s3express:CreateSession") if g in express else g): name for g, name in grants.items()}

            def leading(grant: Grant, physical: str) -> list[str] | None:
                if service != "dynamodb" or template.get(grant[0], {}).get("Type") != "AWS::DynamoDB::Table":
                    return None
                return _leading_keys(params, grant[0], physical, template)

            # A grant on part of a resource (an index, a prefix of objects) or for some keys only:
            # a call outside it is AccessDenied on AWS (moto does not check), so it is recorded as
            # a grant the template does not give.
            # What a Query reads (its Select and attributes), for a grant limited to some attributes.
            read = read_attributes(params) if (service, operation) == ("dynamodb", "Query") else None
            within = ""  # what of the resource the call names: an index, an object
            if service == "dynamodb" and "IndexName" in params:
                within = f"index/{params['IndexName']}"
            elif service == "s3" and not express:
                within = params.get("Key", "")
            grants = {
                shown
                for grant, physical in grants.items()
                for shown in (
                    not_granted_as(policy, function, grant, within, leading(grant, physical), read)
                    if grant in given.get(function, set())
                    else {grant}
                )
            }
            with lock:
                seen.setdefault(function, set()).update(grants)
                seen.made.update((function, grant) for grant in grants)

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        record(client, operation, params)
        return original(client, operation, params)

    def presigning(client: Any, api_params: dict[str, Any], operation_model: Any, context: dict[str, Any]) -> Any:
        # A presigned URL (a label link) makes no call: whoever follows it makes the call as the
        # signer, so the signer needs its grant (s3:GetObject on that key), and AWS refuses it then.
        if context.get("is_presign_request"):
            record(client, operation_model.name, api_params)
        return emitted(client, api_params, operation_model, context)

    emitted = BaseClient._emit_api_params
    BaseClient._make_api_call = recording
    BaseClient._emit_api_params = presigning
    # A worker thread a function starts (the reports' partition readers) runs as that function.
    WORKER_THREADS.apply()
    try:
        yield seen
    finally:
        BaseClient._make_api_call = original
        BaseClient._emit_api_params = emitted
        WORKER_THREADS.undo()


@contextmanager
def only_granted_calls(
    stack: Any, expected: tuple[str, ...] = (), settle_seconds: float = 10
) -> Iterator[dict[str, set[Grant]]]:
    """calls_by_function(stack) around a test's whole journey (what its functions still run once
    it ends included, up to `settle_seconds`), then fails on any call of any function the template
    does not grant it: an autouse fixture gives a module's rare paths (retries, refusals,
    schedules) this check at no cost of its own. `expected`: functions the journey must have run.
    A stack the suite watches (every EmbeddedStack: tests/conftest.py) fails the test itself on
    such a call, not its teardown here a second time."""
    with calls_by_function(stack) as calls:
        yield calls
        # A scheduled function the journey expects may not have had its turn yet when the stack
        # is idle (an idle stack settles at once): wait for it first, within the same bound.
        deadline = time.monotonic() + settle_seconds
        while not all(function in calls for function in expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.wait_until_idle(max(deadline - time.monotonic(), 0.0))
    assert set(expected) <= set(calls), f"never ran: {set(expected) - set(calls)}"
    if id(stack) in WATCHED:
        return
    missing = {function: needed - granted(function, resources_of(stack)) for function, needed in calls.items()}
    assert not any(missing.values()), f"calls the template does not grant: { {f: m for f, m in missing.items() if m} }"


@contextmanager
def handlers_checked(
    monkeypatch: Any, handlers: dict[str, str], tables: dict[str, str], **names: dict[str, str]
) -> Iterator[dict[str, set[Grant]]]:
    """only_granted_calls for handlers a test calls in this process, without a stack: each of
    `handlers` (function logical id -> its module) runs as that function while called through its
    module's `lambda_handler`; `tables` (and `names`: state_machine_arns, bucket_names, queue_urls
    as a stack names them) say which template resource each physical name is. A call of a
    resource not named there is recorded by its physical name, never granted: name it."""
    import importlib
    from types import SimpleNamespace

    from infra.local.lambdas import RUNNING

    for logical, module_name in handlers.items():
        module = importlib.import_module(module_name)

        def run(event: Any, context: Any, real: Any = module.lambda_handler, name: str = f"local-{logical}") -> Any:
            outer = getattr(RUNNING, "function", None)
            RUNNING.function = name
            try:
                return real(event, context)
            finally:
                RUNNING.function = outer

        monkeypatch.setattr(module, "lambda_handler", run)
    empty = {"bucket_names": {}, "event_bus_names": {}, "queue_urls": {}, "state_machine_arns": {}}
    stack = SimpleNamespace(
        functions={logical: SimpleNamespace(name=f"local-{logical}") for logical in handlers},
        table_names=tables, gateway=None, **{**empty, **names},
    )  # fmt: skip
    # Watched as a stack is (tests/conftest.py): a call not granted fails the test that made it,
    # not the teardown of the fixture that holds this (the test passed, an ERROR followed).
    watch(stack)
    try:
        yield WATCHED[id(stack)].calls
    finally:
        found = unwatch(stack)
    assert not found, not_granted_message(found, "made by handlers called in this process")


# --- Every local stack of the suite -------------------------------------------------------------
WATCHED: dict[int, Watch] = {}  # id(stack) -> the Watch kept on it (watch(), unwatch())


def watch(stack: Any) -> None:
    WATCHED.setdefault(id(stack), Watch(stack))


def unwatch(stack: Any) -> list[str]:
    """Stops watching `stack`: what its functions called that is not granted and not reported yet."""
    watched = WATCHED.pop(id(stack), None)
    if watched is None:
        return []
    watched.close()
    return watched.not_granted()


def not_granted_message(found: list[str], when: str) -> str:
    return f"calls their template does not grant, {when}:\n  " + "\n  ".join(found)


def not_granted_anywhere(settle_seconds: float = 0) -> list[str]:
    """Every watched stack's calls not granted and not reported yet; with `settle_seconds`, once
    each stack whose functions ran since the last time this was asked has finished what they
    started (its pollers and executions idle), up to that long: what a test set going on its
    stack is counted in that test, not in the next one."""
    found = []
    for watched in list(WATCHED.values()):
        if settle_seconds:
            watched.settle(settle_seconds)
        found.extend(watched.not_granted())
    return found


class Watch:
    """calls_by_function(stack) for a stack's whole life: tests/conftest.py keeps one on every local
    stack the suite starts, and fails the test during which (or the stop at which) a function of it
    made a call its template does not grant, naming the function, the action and the resource."""

    def __init__(self, stack: Any):
        self.stack = stack
        self._resources = resources_of(stack)
        self._recording = calls_by_function(stack)
        self.calls = self._recording.__enter__()
        self._granted: dict[str, set[Grant]] = {}
        self._reported: Counter[tuple[str, Grant]] = Counter()  # the calls made when last asked
        self._settled_at: tuple[int, int] = (-1, -1)  # the stack's invocations and the writes, when it last settled

    def close(self) -> None:
        if self._recording is not None:
            self._recording, recording = None, self._recording
            recording.__exit__(None, None, None)

    def settle(self, seconds: float) -> None:
        """Waits, up to `seconds`, until what the stack's functions started has run (the stack's
        wait_until_idle), when any of them ran, or a write was made outside them (a test's own put
        of an item a stream hands a function), since it last settled; a stack that has no pollers
        (the in-process API) or is not running, at once."""
        waiting = getattr(self.stack, "wait_until_idle", None)
        if waiting is None or not getattr(self.stack, "_started", False):
            return
        if self._activity() != self._settled_at:
            waiting(seconds)
            self._settled_at = self._activity()

    def _activity(self) -> tuple[int, int]:
        return sum(function.invocations for function in list(self.stack.functions.values())), self.calls.writes

    def not_granted(self) -> list[str]:
        """Each call not granted made since the last time this was asked (the same call made
        again in a later test is found again), as `Function: action on resource` (or `Function:
        action on part (resource)`, `Function: action of key k (resource)`: a grant that leaves that
        index, prefix or key out)."""
        with self.calls.lock:
            made = self.calls.made.copy()
        found = []
        for (function, (resource, action)), times in sorted(made.items()):
            if times == self._reported[function, (resource, action)]:
                continue
            self._reported[function, (resource, action)] = times
            if function not in self._granted:
                self._granted[function] = granted(function, self._resources) if function in self._resources else set()
            if (resource, action) not in self._granted[function]:
                shown = f"{action} ({resource})" if " " in action else f"{action} on {resource}"
                found.append(f"{function}: {shown}")
        return found
