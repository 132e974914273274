"""tests/template_iam.py, the tool the end-to-end "calls vs grants" tests use: it must find what AWS
would refuse and moto lets through."""

from __future__ import annotations

import os
from pathlib import Path
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
    idempotency = {grant: keys for grant, keys in key_limits(function).items() if grant[0] == "IdempotencyTable"}
    assert idempotency == {
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


def test_a_call_a_function_makes_from_its_own_worker_threads_is_recorded_as_the_function_s(
    aws: Any, as_the_worker: Any
):
    # The running function is known per thread: the API's reports read their partitions on a
    # ThreadPoolExecutor (DynamoAggregates.report_rows), and those calls were recorded as no
    # function's, so a walk of every route could not see an ungranted one there.
    from concurrent.futures import ThreadPoolExecutor

    table = aws.tables["IdempotencyTable"]
    with calls_by_function(stack_of(aws)) as calls, ThreadPoolExecutor(2) as readers:
        keys = ["import#i1#2", "oms-test#abc"]
        list(readers.map(lambda key: aws.dynamodb.get_item(TableName=table, Key={"id": {"S": key}}), keys))

    assert calls["ImportWorkerFunction"] == {
        ("IdempotencyTable", "dynamodb:GetItem"),
        ("IdempotencyTable", "dynamodb:GetItem of key oms-test#abc"),
    }


def test_a_call_a_function_makes_from_a_thread_it_starts_is_recorded_as_the_function_s(aws: Any, as_the_worker: Any):
    # Only pool tasks were: a call on a bare Thread or Timer (as the webhook sender starts, today for
    # no AWS call) was recorded as no function's, and a call its template does not grant passed.
    import threading

    table = aws.tables["IdempotencyTable"]
    with calls_by_function(stack_of(aws)) as calls:
        started = [
            threading.Thread(target=aws.dynamodb.get_item, kwargs={"TableName": table, "Key": {"id": {"S": "bare"}}}),
            threading.Timer(0, aws.dynamodb.get_item, kwargs={"TableName": table, "Key": {"id": {"S": "timer"}}}),
        ]
        for thread in started:
            thread.start()
            thread.join()

    assert calls["ImportWorkerFunction"] == {
        ("IdempotencyTable", "dynamodb:GetItem of key bare"),
        ("IdempotencyTable", "dynamodb:GetItem of key timer"),
    }


def stack_as(aws: Any, function: str, **more: Any) -> Any:
    """What calls_by_function reads of a stack running only `function` (as local-<function>)."""
    return SimpleNamespace(
        **{**vars(stack_of(aws)), "functions": {function: SimpleNamespace(name=f"local-{function}")}, **more}
    )


@pytest.fixture
def running_as() -> Any:
    def run_as(function: str) -> None:
        RUNNING.function = f"local-{function}"

    yield run_as
    RUNNING.function = None


def test_a_query_on_an_index_or_the_table_the_grant_does_not_name_is_recorded_as_not_granted(aws: Any, running_as: Any):
    # The reconciler may Query three of the orders table's indexes, not the table nor by_sla. The
    # tool read every index ARN as the table: a Query of by_sla, or of the table, passed every e2e
    # check, and would be AccessDenied on AWS (an index's ARN and the table's cover nothing of the other).
    table = aws.tables["OrdersTable"]
    running_as("ReconcilerFunction")
    with calls_by_function(stack_as(aws, "ReconcilerFunction")) as calls:
        for index, key in (("by_status_key", "status_key"), ("by_sla", "sla_key")):
            aws.dynamodb.query(
                TableName=table, IndexName=index, KeyConditionExpression=f"{key} = :k",
                ExpressionAttributeValues={":k": {"S": "x"}},
            )  # fmt: skip
        aws.dynamodb.query(
            TableName=table, KeyConditionExpression="id = :k", ExpressionAttributeValues={":k": {"S": "x"}}
        )

    assert calls["ReconcilerFunction"] - granted("ReconcilerFunction") == {
        ("OrdersTable", "dynamodb:Query on index/by_sla"),
        ("OrdersTable", "dynamodb:Query on itself"),
    }
    assert ("OrdersTable", "dynamodb:Query") in calls["ReconcilerFunction"]  # by_status_key: granted


def test_an_object_outside_the_prefix_a_grant_names_is_recorded_as_not_granted(aws: Any, running_as: Any):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="labels")
    running_as("ReconcilerFunction")
    with calls_by_function(stack_as(aws, "ReconcilerFunction", bucket_names={"LabelsBucket": "labels"})) as calls:
        s3.put_object(Bucket="labels", Key="labels/o1/p1.pdf", Body=b"%PDF")
        s3.put_object(Bucket="labels", Key="returns/o1/p1.pdf", Body=b"%PDF")

    assert calls["ReconcilerFunction"] == {
        ("LabelsBucket", "s3:PutObject"),
        ("LabelsBucket", "s3:PutObject on returns/o1/p1.pdf"),
    }


def test_a_presigned_link_is_recorded_as_the_call_its_holder_makes_as_the_signer(aws: Any, running_as: Any):
    # Presigning sends nothing, so the tool saw no call: a function signing links to objects it may
    # not read (another function's, another prefix) passed every check, and each link was a 403.
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="labels")
    seen = {}
    for function in ("ApiFunction", "ReconcilerFunction"):
        running_as(function)
        with calls_by_function(stack_as(aws, function, bucket_names={"LabelsBucket": "labels"})) as calls:
            for key in ("labels/o1/p1.pdf", "returns/o1/p1.pdf"):
                s3.generate_presigned_url("get_object", Params={"Bucket": "labels", "Key": key}, ExpiresIn=60)
        seen[function] = calls[function]

    assert seen["ApiFunction"] == {
        ("LabelsBucket", "s3:GetObject"),
        ("LabelsBucket", "s3:GetObject on returns/o1/p1.pdf"),
    }
    assert seen["ReconcilerFunction"] == {("LabelsBucket", "s3:GetObject")}  # it may only put labels
    assert ("LabelsBucket", "s3:GetObject") not in granted("ReconcilerFunction")


def test_the_reconciler_s_restarts_are_start_execution_on_the_template_s_state_machines(aws: Any, running_as: Any):
    # The reconciler's restart of a stuck order's workflow and of a lost return's: what the recorder
    # reads them as, granted by the template, and not granted once the template's grant is removed
    # (planted here, as test_reconciler.py's and test_reconciler_in_the_local_stack.py's fail then).
    import copy
    import json

    import boto3

    from functions.adapters.workflow_starter import StepFunctionsReturnStarter, StepFunctionsStarter
    from tests.template_iam import RESOURCES

    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    machine = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    role = "arn:aws:iam::123456789012:role/workflow"
    arns = {
        name: sfn.create_state_machine(name=name, definition=machine, roleArn=role)["stateMachineArn"]
        for name in ("OrderWorkflow", "ReturnWorkflow")
    }
    running_as("ReconcilerFunction")
    with calls_by_function(stack_as(aws, "ReconcilerFunction", state_machine_arns=arns)) as calls:
        StepFunctionsStarter(sfn, arns["OrderWorkflow"]).start("ord_" + "a" * 24, rerun="restart-1")
        StepFunctionsReturnStarter(sfn, arns["ReturnWorkflow"]).start("rma_" + "a" * 24)

    restarts = {("OrderWorkflow", "states:StartExecution"), ("ReturnWorkflow", "states:StartExecution")}
    assert calls["ReconcilerFunction"] == restarts
    assert restarts <= granted("ReconcilerFunction")
    planted = copy.deepcopy(RESOURCES)
    policy = planted["ReconcilerFunction"]["Properties"]["Policies"][0]["Statement"]
    policy[:] = [s for s in policy if s["Resource"] != {"Ref": "OrderWorkflow"}]
    assert restarts - granted("ReconcilerFunction", planted) == {("OrderWorkflow", "states:StartExecution")}


FAKE = "FakeFunction"


def fake_function(monkeypatch: pytest.MonkeyPatch, **statement: Any) -> None:
    """A function whose one statement is `statement` on the idempotency table."""
    from tests import template_iam

    statement = {
        "Effect": "Allow",
        "Action": ["dynamodb:GetItem", "dynamodb:PutItem"],
        "Resource": {"Fn::GetAtt": ["IdempotencyTable", "Arn"]},
        **statement,
    }
    resource = {"Type": "AWS::Serverless::Function", "Properties": {"Policies": [{"Statement": [statement]}]}}
    monkeypatch.setitem(template_iam.RESOURCES, FAKE, resource)


LIKE = "ForAllValues:StringLike"
EQUALS = "ForAllValues:StringEquals"
SPECIFIC = {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"}


@pytest.mark.parametrize(
    "statement",
    [
        {"Condition": {"StringLike": {"dynamodb:LeadingKeys": ["import#*"]}}},  # no set operator
        {"Condition": {"ForAnyValue:StringLike": {"dynamodb:LeadingKeys": ["import#*"]}}},
        {"Condition": {"StringEquals": {"aws:SourceVpc": "vpc-1"}}},
        {"Condition": {LIKE: {"dynamodb:LeadingKeys": ["import#*"]}, "Bool": {"aws:SecureTransport": "true"}}},
        {"Condition": {LIKE: {"dynamodb:LeadingKeys": ["import#*"], "dynamodb:Attributes": ["id"]}}},
        {"Condition": {LIKE: {"dynamodb:LeadingKeys": [{"Fn::Sub": "${AWS::StackName}#*"}]}}},
        {"Condition": {LIKE: {"dynamodb:LeadingKeys": ["${aws:userid}#*"]}}},  # a policy variable
        {"Condition": {LIKE: {"dynamodb:LeadingKeys": []}}},
        # An attributes grant read whole only with Select required: ForAllValues passes a request
        # naming no attribute (the whole item), and IfExists one sending no Select.
        {"Condition": {EQUALS: {"dynamodb:Attributes": ["id"]}}},
        {"Condition": {EQUALS: {"dynamodb:Attributes": ["id"]}, "StringEqualsIfExists": SPECIFIC}},
        {"Condition": {EQUALS: {"dynamodb:Attributes": ["id"]}, "StringEquals": {"dynamodb:Select": "ALL_ATTRIBUTES"}}},
        # ...and on Query alone: what a write's or a GetItem's attributes are, this tool does not read.
        {"Condition": {EQUALS: {"dynamodb:Attributes": ["id"]}, "StringEquals": SPECIFIC}},
        {"Effect": "Deny"},
    ],
)
def test_a_statement_the_tool_cannot_read_fails_every_reader_loudly(monkeypatch: pytest.MonkeyPatch, statement: Any):
    # granted() read the actions and resources and never the Condition: a grant under a condition
    # it did not understand counted as given in full in the unit "granted exactly what the code
    # calls" test, and a Deny as a grant.
    fake_function(monkeypatch, **statement)

    with pytest.raises(AssertionError, match="cannot read"):
        granted(FAKE)
    with pytest.raises(AssertionError, match="cannot read"):
        key_limits(FAKE)


def test_leading_keys_are_matched_as_iam_does_and_read_in_a_transaction(
    aws: Any, monkeypatch: pytest.MonkeyPatch, running_as: Any
):
    # IAM's StringLike knows `*` and `?` only: `[1]` is two brackets and a 1 (fnmatch read a set).
    # A transaction's item names its key: it is read, not recorded as "(keys not read)".
    fake_function(monkeypatch, Condition={LIKE: {"dynamodb:LeadingKeys": ["import#[1]*"]}})
    table = aws.tables["IdempotencyTable"]
    running_as(FAKE)
    with calls_by_function(stack_as(aws, FAKE)) as calls:
        aws.dynamodb.get_item(TableName=table, Key={"id": {"S": "import#[1]x"}})
        aws.dynamodb.get_item(TableName=table, Key={"id": {"S": "import#1x"}})
        aws.dynamodb.transact_write_items(
            TransactItems=[{"Put": {"TableName": table, "Item": {"id": {"S": "import#[1]y"}}}}]
        )

    assert calls[FAKE] == {
        ("IdempotencyTable", "dynamodb:GetItem"),
        ("IdempotencyTable", "dynamodb:GetItem of key import#1x"),
        ("IdempotencyTable", "dynamodb:PutItem"),
    }


def test_a_query_s_partition_is_read_from_its_key_condition_and_its_attributes_from_its_projection(
    aws: Any, monkeypatch: pytest.MonkeyPatch, running_as: Any
):
    # A Query names its partition in its key condition: the tool read no key of it, so a Query grant
    # limited to some partitions recorded every call "(keys not read)", and such grants were left
    # whole (EventsFunction's and BackorderFunction's could read any Catalog item, an API key's).
    # A grant limited to some attributes (a subscription's, never its secret) holds a Query that
    # asks for those by name, with Select SPECIFIC_ATTRIBUTES: without Select the condition's key
    # is absent and StringEquals refuses it.
    only_named = {
        LIKE: {"dynamodb:LeadingKeys": ["WEBHOOKS"]},
        EQUALS: {"dynamodb:Attributes": ["pk", "sk", "id", "events"]},
        "StringEquals": SPECIFIC,
    }
    fake_function(monkeypatch, Action="dynamodb:Query", Resource={"Fn::GetAtt": ["CatalogTable", "Arn"]},
                  Condition=only_named)  # fmt: skip
    table = aws.tables["CatalogTable"]

    def query(pk: str, names: dict[str, str] | None = None, **read: Any) -> None:
        aws.dynamodb.query(
            TableName=table, KeyConditionExpression="#p = :pk", ExpressionAttributeValues={":pk": {"S": pk}},
            ExpressionAttributeNames={"#p": "pk", **(names or {})}, **read,
        )  # fmt: skip

    running_as(FAKE)
    with calls_by_function(stack_as(aws, FAKE)) as calls:
        query("WEBHOOKS", {"#e": "events"}, Select="SPECIFIC_ATTRIBUTES", ProjectionExpression="id, #e")
        query("APIKEY#1", Select="SPECIFIC_ATTRIBUTES", ProjectionExpression="id")
        query("WEBHOOKS")
        query("WEBHOOKS", ProjectionExpression="id")
        query("WEBHOOKS", Select="SPECIFIC_ATTRIBUTES", ProjectionExpression="id, secret")

    assert calls[FAKE] == {
        ("CatalogTable", "dynamodb:Query"),
        ("CatalogTable", "dynamodb:Query of key APIKEY#1"),
        ("CatalogTable", "dynamodb:Query without Select SPECIFIC_ATTRIBUTES"),
        ("CatalogTable", "dynamodb:Query of attribute secret"),
    }


def test_a_query_s_attributes_are_every_one_it_names_its_filter_s_too(
    aws: Any, monkeypatch: pytest.MonkeyPatch, running_as: Any
):
    # AWS holds dynamodb:Attributes to every top-level attribute a request names, one only a filter
    # evaluates too (DynamoDB developer guide, fine-grained access control, example 3): the tool
    # read a Query's projection and key condition only, so a filter on an attribute the grant
    # leaves out (a subscription's secret) passed here and is AccessDenied on AWS. A nested
    # attribute's path names its top-level one; a function's name and a value name none; a next
    # page's ExclusiveStartKey names the table's keys, which the grant lists.
    fake_function(monkeypatch, Action="dynamodb:Query", Resource={"Fn::GetAtt": ["CatalogTable", "Arn"]},
                  Condition={
                      LIKE: {"dynamodb:LeadingKeys": ["WEBHOOKS"]},
                      EQUALS: {"dynamodb:Attributes": ["pk", "sk", "id", "events"]},
                      "StringEquals": SPECIFIC,
                  })  # fmt: skip
    table = aws.tables["CatalogTable"]

    def query(values: dict[str, Any] | None = None, **read: Any) -> None:
        aws.dynamodb.query(
            TableName=table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "WEBHOOKS"}, **(values or {})},
            Select="SPECIFIC_ATTRIBUTES", ProjectionExpression="id", **read,
        )  # fmt: skip

    running_as(FAKE)
    with calls_by_function(stack_as(aws, FAKE)) as calls:
        query(FilterExpression="size(events) > :n AND NOT contains(events[0], :n) OR events.x IN (:n)",
              values={":n": {"N": "1"}})  # fmt: skip
        query(FilterExpression="attribute_exists(#s)", ExpressionAttributeNames={"#s": "secret"})
        query(ExclusiveStartKey={"pk": {"S": "WEBHOOKS"}, "sk": {"S": "wh_1"}})

    assert calls[FAKE] == {
        ("CatalogTable", "dynamodb:Query"),
        ("CatalogTable", "dynamodb:Query of attribute secret"),
    }


# --- Wildcards and "*", read as IAM reads them ------------------------------------------------------


IDEMPOTENCY = {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}


def calls_of_a_fake(aws: Any, running_as: Any) -> set[Any]:
    """What of FAKE's calls (on the idempotency table, the orders table and its by_sla index) the
    template's grants, as the tool reads them, do not cover."""
    idempotency, orders = aws.tables["IdempotencyTable"], aws.tables["OrdersTable"]
    running_as(FAKE)
    with calls_by_function(stack_as(aws, FAKE)) as calls:
        aws.dynamodb.get_item(TableName=idempotency, Key={"id": {"S": "k1"}})
        aws.dynamodb.put_item(TableName=idempotency, Item={"id": {"S": "k2"}})
        aws.dynamodb.get_item(TableName=orders, Key={"id": {"S": "o1"}})
        aws.dynamodb.query(
            TableName=orders, IndexName="by_sla", KeyConditionExpression="sla_key = :k",
            ExpressionAttributeValues={":k": {"S": "x"}},
        )  # fmt: skip
    return calls[FAKE] - granted(FAKE)


@pytest.mark.parametrize(
    ("actions", "resource", "refused"),
    [
        # IAM reads an action's `*` and `?` as wildcards, and its name (and prefix) in any case.
        ("dynamodb:Get*", IDEMPOTENCY, {"PutItem", "GetItem on OrdersTable", "Query"}),
        (["DynamoDB:getitem", "dynamodb:PUTITEM"], IDEMPOTENCY, {"GetItem on OrdersTable", "Query"}),
        ("dynamodb:?etItem", IDEMPOTENCY, {"PutItem", "GetItem on OrdersTable", "Query"}),
        ("dynamodb:*", IDEMPOTENCY, {"GetItem on OrdersTable", "Query"}),
        # `Resource: "*"`: every table, every index of it.
        (["dynamodb:GetItem", "dynamodb:Query"], "*", {"PutItem"}),
        ("*", "*", set()),
    ],
)  # fmt: skip
def test_wildcard_actions_and_a_bare_star_resource_grant_what_iam_grants(
    aws: Any, monkeypatch: pytest.MonkeyPatch, running_as: Any, actions: Any, resource: Any, refused: set[str]
):
    # The tool compared a statement's actions and resources as written: `dynamodb:Get*` granted no
    # GetItem (every call under it a false alarm), and `Resource: "*"` failed with a TypeError.
    fake_function(monkeypatch, Action=actions, Resource=resource)

    expected = {
        "PutItem": ("IdempotencyTable", "dynamodb:PutItem"),
        "GetItem on OrdersTable": ("OrdersTable", "dynamodb:GetItem"),
        "Query": ("OrdersTable", "dynamodb:Query"),
    }
    assert calls_of_a_fake(aws, running_as) == {expected[name] for name in refused}


def test_a_star_resource_grants_on_every_template_resource_and_a_wildcard_only_what_it_matches(
    monkeypatch: pytest.MonkeyPatch,
):
    fake_function(monkeypatch, Action=["sqs:Send*", "states:StartExecution"], Resource="*")

    grants = granted(FAKE)
    assert ("ImportQueue", "sqs:SendMessage") in grants and ("ReturnWorkflow", "states:StartExecution") in grants
    assert ("ImportQueue", "sqs:SendMessageBatch") in grants  # an action of its own in IAM's list
    assert not {action for _, action in grants} - {"sqs:SendMessage", "sqs:SendMessageBatch", "states:StartExecution"}


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        # `table/orders/*`: the table's indexes (and streams), never the table itself.
        ("/*", {("OrdersTable", "dynamodb:GetItem on itself")}),
        ("/index/*", {("OrdersTable", "dynamodb:GetItem on itself")}),
        ("/index/by_?la", {("OrdersTable", "dynamodb:GetItem on itself")}),
        ("/index/by_SLA", {("OrdersTable", "dynamodb:GetItem on itself"), ("OrdersTable", "dynamodb:Query on index/by_sla")}),  # noqa: E501
        # `table/orders*`: the table and every part of it.
        ("*", set()),
    ],
)  # fmt: skip
def test_a_resource_wildcard_matches_the_arn_as_iam_does_from_the_separator_on(
    aws: Any, monkeypatch: pytest.MonkeyPatch, running_as: Any, path: str, refused: set[Any]
):
    # The tool cut the "/" after the table's ARN before matching: `${OrdersTable.Arn}/*` read as
    # `*`, which it matched against the table itself, so a GetItem of the table passed every check
    # where AWS refuses it (arn:...:table/orders does not match arn:...:table/orders/*). An ARN is
    # matched case-sensitively: `by_SLA` names no index of the table.
    fake_function(
        monkeypatch, Action=["dynamodb:GetItem", "dynamodb:Query"], Resource={"Fn::Sub": f"${{OrdersTable.Arn}}{path}"}
    )

    not_the_fakes = {("IdempotencyTable", "dynamodb:GetItem"), ("IdempotencyTable", "dynamodb:PutItem")}
    assert calls_of_a_fake(aws, running_as) - not_the_fakes == refused


@pytest.mark.parametrize(
    "statement",
    [
        {"Action": "dynamodb:Frobnicate*"},  # a pattern that matches no action the tool knows
        {"Action": "GetItem"},  # no service prefix
        {"NotAction": "dynamodb:Scan"},
        {"Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/orders"},  # a literal ARN
        {"Resource": {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:*:*:table/${OrdersTable}"}},
        {"NotResource": {"Fn::GetAtt": ["OrdersTable", "Arn"]}},
    ],
)
def test_an_action_or_resource_the_tool_cannot_read_fails_loudly_naming_it(
    monkeypatch: pytest.MonkeyPatch, statement: dict[str, Any]
):
    fake_function(monkeypatch, **statement)
    if "NotAction" in statement or "NotResource" in statement:
        from tests import template_iam

        del template_iam.RESOURCES[FAKE]["Properties"]["Policies"][0]["Statement"][0][
            "Action" if "NotAction" in statement else "Resource"
        ]

    with pytest.raises(AssertionError, match=r"cannot read|matches no action"):
        granted(FAKE)


def test_a_call_the_template_does_not_grant_fails_the_local_stack_it_was_made_on(monkeypatch: pytest.MonkeyPatch):
    # tests/conftest.py and in_process.py keep a Watch on every local stack and the in-process API:
    # a read of an order queues it for the access log, which the API could not do without its grant.
    from tests import template_iam
    from tests.integration.in_process import in_process_api
    from tests.integration.test_access_log_api import stored

    real = template_iam.granted
    monkeypatch.setattr(template_iam, "granted", lambda f, *r: real(f, *r) - {("AccessLogQueue", "sqs:SendMessage")})
    missing = r"not grant, .*\n  ApiFunction: sqs:SendMessage on AccessLogQueue$"
    with pytest.raises(AssertionError, match=missing), in_process_api() as api:
        stored("ord_" + "g" * 24)
        assert api.get("/orders/ord_" + "g" * 24).status_code == 200
    assert not template_iam.WATCHED


# A module of tests on a stack of its own template (one a test edits into being): all but the second
# write an item whose stream runs a consumer, which calls what its template does not grant.
ONE_STACK_TWO_TESTS = '''
from pathlib import Path

import boto3
import pytest

from infra.local.stack import running_stack

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties: { StageName: v1 }
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.api
      Events:
        Health: { Type: Api, Properties: { RestApiId: !Ref Api, Path: /health, Method: GET } }
  Things:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      StreamSpecification: { StreamViewType: NEW_IMAGE }
      AttributeDefinitions: [{ AttributeName: id, AttributeType: S }]
      KeySchema: [{ AttributeName: id, KeyType: HASH }]
  Consumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.consumer
      Policies:
        - Statement:
            - { Effect: Allow, Action: dynamodb:GetItem, Resource: !GetAtt Things.Arn }
      Events:
        Stream:
          Type: DynamoDB
          Properties: { Stream: !GetAtt Things.StreamArn, StartingPosition: TRIM_HORIZON }
"""


def consumer(event, context):
    table = boto3.client("dynamodb", region_name="us-east-1")
    for record in event["Records"]:
        key = record["dynamodb"]["Keys"]
        table.get_item(TableName="two-Things", Key=key)  # granted
        table.delete_item(TableName="two-Things", Key=key)  # not granted


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("two") / "template.yaml"
    path.write_text(TEMPLATE)
    handlers = {"ApiFunction": lambda event, context: {"statusCode": 200, "body": "{}"}, "Consumer": consumer}
    with running_stack(template=path, stack_name="two", handlers=handlers, admin_key_bootstrap=lambda s: None) as up:
        yield up


def test_sets_a_consumer_going(stack):
    stack.client("dynamodb").put_item(TableName="two-Things", Item={"id": {"S": "a"}})


def test_then_does_nothing(stack):
    pass


def test_sets_it_going_again_and_waits(stack):
    stack.client("dynamodb").put_item(TableName="two-Things", Item={"id": {"S": "b"}})
    assert stack.wait_until_idle(5)


def test_sets_it_going_and_ends_at_once(stack):
    stack.client("dynamodb").put_item(TableName="two-Things", Item={"id": {"S": "c"}})


def test_sets_it_going_then_skips(stack):
    stack.client("dynamodb").put_item(TableName="two-Things", Item={"id": {"S": "d"}})
    assert stack.wait_until_idle(5)
    pytest.skip("what it set going is not skipped with it")
'''


def test_a_call_not_granted_fails_the_test_that_set_it_going_on_a_stack_of_its_own_template(tmp_path: Path):
    # The suite read a stack against template.yaml's grants only, and left unread any stack whose
    # template granted otherwise (a test's edited copy, a template of its own); what it found
    # failed the next test at its teardown (an ERROR), and a module stack's pollers' calls made
    # after a test ended were counted against the next test. Now the test that wrote the item fails.
    import subprocess
    import sys

    from infra.local.template import PROJECT_ROOT

    (tmp_path / "test_two.py").write_text(ONE_STACK_TWO_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's (its addopts, its markers)
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-o", "addopts=",
         "-c", "pytest.ini", "-rA", "test_two.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    out = ran.stdout
    assert "FAILED test_two.py::test_sets_a_consumer_going" in out, out + ran.stderr
    assert "Consumer: dynamodb:DeleteItem on Things" in out
    assert "while this test ran (or for what it set going)" in out
    assert "PASSED test_two.py::test_then_does_nothing" in out
    # The same call made again, in a later test, fails that test too (it was reported once per stack).
    assert "FAILED test_two.py::test_sets_it_going_again_and_waits" in out
    # A test that only writes, and ends before a poller took its record, is waited for: the end of
    # a test waited only when a function had run since the last wait, so the consumer ran in the
    # next test, or never (the stack stopped first) and its call passed unseen.
    assert "FAILED test_two.py::test_sets_it_going_and_ends_at_once" in out
    # A test that skips (or calls pytest.fail) after its call: what was found was dropped unshown.
    assert "FAILED test_two.py::test_sets_it_going_then_skips" in out
    assert "ERROR" not in out and "4 failed, 1 passed" in out
