"""The local runtime: template reading, the API Gateway emulation, the moto lock, the embedded stack.

Fake handlers stand in for functions/ throughout, so these tests pin the runtime's own behaviour.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.gateway import (
    LAMBDA_MAX_PAYLOAD,
    ApiGateway,
    Authorizer,
    HttpRequest,
    Router,
    TokenBuckets,
    policy_allows,
    proxy_event,
    request_authorizer_event,
)
from infra.local.lambdas import LOG_KEYS, ExitError, LocalFunction, TimedOut, _start_fresh
from infra.local.resources import Resources
from infra.local.template import DEFAULT_TEMPLATE, ApiRoute, Template, create_table_request, load_template

ARN_PREFIX = "arn:aws:execute-api:us-east-1:123456789012:local/v1"


# --- Fakes ------------------------------------------------------------------------------------------

received_events: list[dict[str, Any]] = []


def fake_api_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Echoes what it was given, as the real API handler's proxy response."""
    received_events.append(event)
    if event["path"] == "/locations" and event["httpMethod"] == "GET":
        return {"statusCode": 200, "body": json.dumps({"items": [], "next_cursor": None})}
    if event["path"].startswith("/orders/boom"):
        raise RuntimeError("secret detail that must not leak")
    status = 201 if event["httpMethod"] == "PUT" else 200
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": json.dumps({"function": context.function_name, "path": event["path"]}),
    }


def allow_all(principal: str = "key_test", **context: Any) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": f"{ARN_PREFIX}/*"}],
        },
        "context": context,
    }


def fake_authorizer_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = (event["headers"] or {}).get("Authorization", "")
    if token == "Bearer deny":
        policy = allow_all()
        policy["policyDocument"]["Statement"][0]["Effect"] = "Deny"
        return policy
    if token.startswith("Bearer good"):
        # A stack's shared gateway key, as the real authorizer answers it (ApiKeySourceType AUTHORIZER);
        # a gateway made here without a stack checks no key.
        shared = os.environ.get("GATEWAY_SHARED_KEY")
        return {
            **allow_all(scopes="admin", channel="", count=3, admin=True),
            **({"usageIdentifierKey": shared} if shared else {}),
        }
    raise Exception("Unauthorized")


class Recorder:
    """A handler that records its calls and answers from a function."""

    def __init__(self, answer: Any):
        self.answer = answer
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        return self.answer(event) if callable(self.answer) else self.answer


def ok(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return {"statusCode": 200, "body": json.dumps({"ok": True})}


ROUTES = [
    ApiRoute("Health", "/health", "GET", None),
    ApiRoute("ListOrders", "/orders", "GET", "Keys"),
    ApiRoute("PlaceOrder", "/orders", "POST", "Keys"),
    ApiRoute("GetOrder", "/orders/{order_id}", "GET", "Keys"),
    ApiRoute("GetOrderHistory", "/orders/{order_id}/history", "GET", "Keys"),
    ApiRoute("SetStock", "/inventory/{sku}/{location_id}", "PUT", "Keys"),
    ApiRoute("GetFile", "/files/{name}", "GET", None),
]


# The template's GatewayResponses: the local gateway answers by itself only what they declare.
RESPONSES: dict[str, Any] = load_template()["Resources"]["OmsApi"]["Properties"]["GatewayResponses"]


def gateway(api: Any = ok, authorizer: Any = fake_authorizer_handler, cache_seconds: int = 0, **kwargs: Any):
    kwargs.setdefault("gateway_responses", RESPONSES)
    return ApiGateway(
        ROUTES,
        LocalFunction("oms-local-ApiFunction", api, timeout_seconds=10),
        {
            "Keys": Authorizer(
                "Keys", LocalFunction("oms-local-AuthorizerFunction", authorizer), ("Authorization",), cache_seconds
            )
        },
        **kwargs,
    )


def call(gw: ApiGateway, method: str, path: str, *, headers=(), body: bytes = b"", query: str = ""):
    response = gw.handle(HttpRequest(method, path, query, list(headers), body))
    return response.status_code, json.loads(response.get_data() or b"null"), response


# --- The template -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.load()


def test_short_tags_become_long_form_and_dates_stay_strings(tmp_path: Path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "AWSTemplateFormatVersion: 2010-09-09\n"
        "Resources:\n"
        "  Thing:\n"
        "    Type: AWS::SQS::Queue\n"
        "    Properties:\n"
        "      A: !Ref Other\n"
        "      B: !GetAtt Other.Arn\n"
        "      C: !Sub '${AWS::StackName}-x'\n"
        "      D: !If [IsProd, !Ref X, !Ref AWS::NoValue]\n"
        "      E: !Join ['-', [a, b]]\n"
    )
    document = load_template(path)
    props = document["Resources"]["Thing"]["Properties"]
    assert document["AWSTemplateFormatVersion"] == "2010-09-09"
    assert props["A"] == {"Ref": "Other"}
    assert props["B"] == {"Fn::GetAtt": ["Other", "Arn"]}
    assert props["C"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert props["D"] == {"Fn::If": ["IsProd", {"Ref": "X"}, {"Ref": "AWS::NoValue"}]}
    assert props["E"] == {"Fn::Join": ["-", ["a", "b"]]}


def test_tables_are_created_with_the_keys_indexes_and_streams_the_template_declares(template: Template):
    tables = template.properties("AWS::DynamoDB::Table")
    assert set(tables) == {"OrdersTable", "InventoryTable", "CatalogTable", "IdempotencyTable", "ReturnsTable"}
    request = create_table_request(tables["OrdersTable"], "t")
    assert request["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    indexes = {index["IndexName"]: index for index in request["GlobalSecondaryIndexes"]}
    assert {"by_customer", "by_channel", "by_status_key"} <= set(indexes)
    assert indexes["by_customer"]["Projection"] == {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["channel"],
    }
    # Only by_status_key carries the status: any other index would be rewritten on every status change.
    assert indexes["by_channel"]["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert request["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert request["BillingMode"] == "PAY_PER_REQUEST"
    # The TTL is UpdateTimeToLive's (test_stack_serves_the_api_and_the_aws_endpoint_on_free_ports).
    assert "TimeToLiveSpecification" not in request


def test_functions_take_globals_unless_they_set_their_own(template: Template):
    functions = template.functions()
    declared = template.properties("AWS::Serverless::Function")
    assert "MemorySize" not in declared["ApiFunction"] and functions["ApiFunction"]["MemorySize"] == 512
    assert functions["AuthorizerFunction"]["Timeout"] == declared["AuthorizerFunction"]["Timeout"] == 5
    environment = functions["ApiFunction"]["Environment"]["Variables"]
    assert environment["ORDERS_TABLE"] == {"Ref": "OrdersTable"}  # from Globals
    assert environment["RETURNS_TABLE"] == {"Ref": "ReturnsTable"}  # its own
    function = LocalFunction.from_properties(functions["ApiFunction"], "oms-local-ApiFunction")
    assert (function.memory_mb, function.timeout_seconds) == (512, 10)


def test_routes_authorizer_and_environment_come_from_the_template(template: Template):
    routes = {(route.method, route.path): route for route in template.api_routes()}
    assert routes[("GET", "/health")].authorizer is None
    assert routes[("GET", "/orders/{order_id}")].authorizer == "ApiKeyAuthorizer"
    assert ("PUT", "/inventory/{sku}/{location_id}") in routes
    functions = template.functions()
    assert functions[template.api_function()]["Handler"] == "functions.api.app.lambda_handler"
    assert functions[template.authorizer_function("ApiKeyAuthorizer")]["Handler"] == (
        "functions.authorizer.app.lambda_handler"
    )
    gw = ApiGateway.from_template(template, {name: LocalFunction(name, ok) for name in functions})
    assert gw.api.name == "ApiFunction" and gw.stage == "v1"
    authorizer = gw.authorizers["ApiKeyAuthorizer"]
    assert authorizer.function.name == "AuthorizerFunction"
    assert authorizer.identity_headers == ("Authorization",)
    assert authorizer.cache_seconds == int(template.parameter("AuthorizerCacheSeconds"))
    assert gw.gateway_response("UNAUTHORIZED", "r").status_code == 401
    env = template.global_environment(
        {"OrdersTable": "o", "InventoryTable": "i", "CatalogTable": "c", "IdempotencyTable": "d"}
    )
    assert env["ORDERS_TABLE"] == "o"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"


def test_a_global_variable_may_name_an_attribute_as_a_functions_own_may():
    # Globals were resolved with the refs only: `!GetAtt Queue.Arn` there failed the start-up.
    variables = {"QUEUE_ARN": {"Fn::GetAtt": ["Queue", "Arn"]}, "TABLE": {"Ref": "Table"}}
    resources = Resources(
        Template({"Resources": {}, "Globals": {"Function": {"Environment": {"Variables": variables}}}})
    )
    resources.refs["Table"], resources.atts["Queue.Arn"] = "t", "arn:aws:sqs:us-east-1:123456789012:q"
    environment = resources.environment()
    assert (environment["QUEUE_ARN"], environment["TABLE"]) == ("arn:aws:sqs:us-east-1:123456789012:q", "t")


def test_sub_and_the_long_form_of_getatt_resolve_as_cloudformation_resolves_them():
    template = Template({"Resources": {}})
    atts = {"Queue.Arn": "arn:q"}
    resolved = template.resolve({"Fn::Sub": "${Queue.Arn}/${AWS::Region}"}, {}, atts)
    assert resolved == "arn:q/us-east-1"
    assert template.resolve({"Fn::GetAtt": "Queue.Arn"}, {}, atts) == "arn:q"


def test_an_api_event_of_the_implicit_api_is_refused_rather_than_left_unrouted():
    api_event = {"Type": "Api", "Properties": {"RestApiId": {"Ref": "Api"}, "Path": "/a", "Method": "get"}}
    implicit = {"Type": "Api", "Properties": {"Path": "/b", "Method": "get"}}
    resources = {
        "Api": {"Type": "AWS::Serverless::Api", "Properties": {"StageName": "v1"}},
        "ApiFunction": {"Type": "AWS::Serverless::Function", "Properties": {"Events": {"A": api_event}}},
        "Other": {"Type": "AWS::Serverless::Function", "Properties": {"Events": {"B": implicit}}},
    }
    with pytest.raises(ValueError, match=r"Other: Api events \['B'\] must name RestApiId"):
        Template({"Resources": resources}).api_routes()
    del resources["Other"]
    assert [route.path for route in Template({"Resources": resources}).api_routes()] == ["/a"]


def _api_document(authorizer: str = "Keys", function_arn: Any = None, apis: int = 1, served: bool = True):
    """A template of one REST API with a REQUEST authorizer and one route behind it."""
    route = {"RestApiId": {"Ref": "Api"}, "Path": "/a", "Method": "get", "Auth": {"Authorizer": authorizer}}
    auth = {"Authorizers": {"Keys": {"FunctionArn": function_arn or {"Fn::GetAtt": ["AuthFunction", "Arn"]}}}}
    resources = {
        f"Api{'' if n == 0 else n}": {"Type": "AWS::Serverless::Api", "Properties": {"StageName": "v1", "Auth": auth}}
        for n in range(apis)
    }
    events = {"A": {"Type": "Api", "Properties": route}} if served else {}
    resources["ApiFunction"] = {"Type": "AWS::Serverless::Function", "Properties": {"Events": events}}
    resources["AuthFunction"] = {"Type": "AWS::Serverless::Function", "Properties": {}}
    return {"Resources": resources}


@pytest.mark.parametrize(
    ("document", "refused"),
    [
        # Served without an authorizer, the route would answer anyone.
        (_api_document(authorizer="Keyz"), r"routes name authorizers that were not given: \['Keyz'\]"),
        (_api_document(function_arn="arn:aws:lambda:us-east-1:1:function:elsewhere"), "authorizer Keys: FunctionArn"),
        (_api_document(apis=2), r"expected one AWS::Serverless::Api, found \['Api', 'Api1'\]"),
        (_api_document(served=False), r"expected one function serving Api, found \[\]"),
    ],
    ids=["an undeclared authorizer", "an authorizer outside the template", "two APIs", "no function serving it"],
)
def test_an_api_the_local_gateway_cannot_serve_as_declared_fails_startup_naming_why(document: Any, refused: str):
    functions = {"ApiFunction": LocalFunction("api", ok), "AuthFunction": LocalFunction("auth", ok)}
    with pytest.raises(ValueError, match=refused):
        ApiGateway.from_template(Template(document), functions)


def test_parameter_overrides_win_over_defaults():
    template = Template.load(parameter_overrides={"AuthorizerCacheSeconds": 0})
    functions = {name: LocalFunction(name, ok) for name in template.functions()}
    assert ApiGateway.from_template(template, functions).authorizers["ApiKeyAuthorizer"].cache_seconds == 0


def test_a_stage_throttle_that_sets_one_limit_only_fails_startup_naming_it():
    # AWS takes either limit alone (the other is the account's); the local throttle is one token
    # bucket per caller, which needs both: refused at start, not a bucket made up.
    document = load_template()
    del document["Resources"]["OmsApi"]["Properties"]["MethodSettings"][0]["ThrottlingBurstLimit"]
    template = Template(document)
    functions = {name: LocalFunction(name, ok) for name in template.functions()}

    with pytest.raises(ValueError, match=r"^MethodSettings: only an entry setting both throttling limits"):
        ApiGateway.from_template(template, functions)


@pytest.mark.parametrize(
    ("parameter", "value", "refused"),
    [
        ("ApiBurstLimit", "400.5", "ThrottlingBurstLimit"),
        ("AuthorizerCacheSeconds", "2.5", "ReauthorizeEvery"),
    ],
)
def test_a_number_an_integer_property_cannot_take_is_refused_naming_its_parameter(parameter, value, refused):
    # A Number parameter takes 400.5, but API Gateway's ThrottlingBurstLimit and an authorizer's
    # ReauthorizeEvery are integers: the deploy fails on the stage or the authorizer. `make run`
    # failed too, with int()'s "invalid literal for int() with base 10: '400.5'", naming nothing.
    template = Template.load(parameter_overrides={parameter: value})
    functions = {name: LocalFunction(name, ok) for name in template.functions()}

    with pytest.raises(ValueError, match=f"^parameter {parameter} must be a whole number .*{refused}.*got '{value}'"):
        ApiGateway.from_template(template, functions)


@pytest.mark.parametrize(
    ("parameter", "value", "refused"),
    [
        ("HoldExpiryDays", "-1", "must be at least 0"),
        ("ReturnExpiryDays", "nan", "must be a number"),
        ("PickupExpiryDays", "inf", "must be a number"),
        ("ReturnWindowDays", "36501", "must be at most 36500"),
        ("AuthorizerCacheSeconds", 301, "must be at most 300"),
        ("WebhookRetryBaseSeconds", "0", "must be at least 1"),
        # API.md: a failing delivery is retried for at least 24 hours, at least daily (the local
        # stack's minute is its own, not the template's: a deploy may not shorten the window).
        ("WebhookRetryWindowSeconds", "3600", "must be at least 86400"),
        ("WebhookRetryWindowSeconds", "0", "must be at least 86400"),
        ("WebhookRetryMaxDelaySeconds", "86401", "must be at most 86400"),
        # API.md's exponential backoff: the longest wait at least twice any base (template.yaml).
        ("WebhookRetryMaxDelaySeconds", "1799", "must be at least 1800"),
        ("WebhookRetryBaseSeconds", "901", "must be at most 900"),
        ("LogRetentionDays", "31", "must be one of 1, 3, 5"),
        ("ApiRateLimit", "many", "must be a number"),
        # What Python's float() takes and a deploy's Number does not: `make run` took OMS_RATE_LIMIT=1_000.
        ("ApiRateLimit", "1_000", "must be a number"),
        ("ApiBurstLimit", " 400 ", "must be a number"),
        ("ReturnWindowDays", "\u0663\u0660", "must be a number"),
        # A String parameter's AllowedValues (exact, as CloudFormation compares) and AllowedPattern.
        ("EnableTestPayments", "yes", "must be one of true, false"),
        ("EnableTestPayments", "TRUE", "must be one of true, false"),
        ("LogLevel", "debug", "must be one of DEBUG, INFO, WARNING, ERROR"),
        ("Sla", "pending=5x", "must match"),
        # A status named twice: every pass of the scan failed on it (parse_sla), found by its alarm.
        ("Sla", "allocated=1d,pending=5m,allocated=2d", "must match"),
        ("Sla", "backordered=99999d", "must match"),  # over 100 years: the same
        ("ReviewThreshold", "USD 1000", "must match"),
    ],
)
def test_an_override_a_deploy_would_refuse_is_refused_by_name(parameter: str, value: Any, refused: str):
    # The template's MinValue, MaxValue and AllowedValues held at deploy only: `make run` took
    # OMS_HOLD_EXPIRY_DAYS=-1 and every jeopardy pass then failed on it, as nan or inf did.
    template = Template.load(parameter_overrides={parameter: value})

    with pytest.raises(ValueError, match=f"^parameter {parameter} {refused}"):
        template.parameter(parameter)
    with pytest.raises(ValueError, match=f"^parameter {parameter} {refused}"):
        template.check_parameters()


def test_a_parameter_without_a_default_is_refused_naming_its_first_use_unless_given():
    # Its uses by !Sub count as by !Ref; a parameter given (an override, its variable) needs none.
    document = {
        "Parameters": {"Bucket": {"Type": "String"}},
        "Resources": {
            "Imports": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": {"Fn::Sub": "${Bucket}-imports"}}},
            "Exports": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": {"Ref": "Bucket"}}},
        },
    }
    with pytest.raises(ValueError) as refused:
        Template(document).check_parameters(settable={"OMS_BUCKET": "Bucket"})
    assert str(refused.value) == (
        "template parameter Bucket has no Default (used by Imports.BucketName and 1 more):"
        " give it a Default in the template, or set OMS_BUCKET"
    )
    Template(document, parameter_overrides={"Bucket": "b"}).check_parameters()


def test_an_allowed_pattern_s_classes_are_java_s_ascii_ones():
    # CloudFormation matches AllowedPattern with Java's regex, whose `\s` and `\d` are ASCII: a no-break
    # space in AlarmEmail is not whitespace there (a deploy takes it), Arabic-Indic digits are not
    # digits. Python's unicode classes refused the first and took the second.
    from infra.local.template import parameter_refused

    assert parameter_refused(load_template()["Parameters"]["AlarmEmail"], "ops\u00a0desk@example.com") is None
    assert parameter_refused({"Type": "String", "AllowedPattern": r"\d+"}, "\u0661\u0662") == "must match \\d+"


def test_every_parameter_s_default_is_what_a_deploy_takes():
    from infra.local.template import parameter_refused

    parameters = load_template()["Parameters"]
    refused = {name: parameter_refused(p, p["Default"]) for name, p in parameters.items() if "Default" in p}

    assert {name: why for name, why in refused.items() if why} == {}


def test_the_local_stack_refuses_such_an_override_at_once_naming_its_variable(monkeypatch: pytest.MonkeyPatch):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "-1")
    with pytest.raises(ValueError, match=r"^OMS_HOLD_EXPIRY_DAYS: parameter HoldExpiryDays must be at least 0"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)
    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "1")
    monkeypatch.setenv("OMS_RATE_LIMIT", "1_000")
    with pytest.raises(ValueError, match=r"^OMS_RATE_LIMIT: parameter ApiRateLimit must be a number, got '1_000'"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)
    monkeypatch.delenv("OMS_RATE_LIMIT")
    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "-1")
    # Given by the caller, the override wins over the variable, and is named as a parameter.
    with pytest.raises(ValueError, match=r"^parameter HoldExpiryDays must be a number, got 'nan'"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False, parameter_overrides={"HoldExpiryDays": "nan"})

    # make run passes OMS_ENABLE_TEST_PAYMENTS on as an override of its own: still named by the variable.
    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "1")
    monkeypatch.setenv("OMS_ENABLE_TEST_PAYMENTS", "yes")
    with pytest.raises(ValueError, match=r"^OMS_ENABLE_TEST_PAYMENTS: parameter EnableTestPayments must be one of"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False, parameter_overrides={"EnableTestPayments": "yes"})
    monkeypatch.setenv("OMS_SLA", "pending=5x")
    monkeypatch.delenv("OMS_ENABLE_TEST_PAYMENTS")
    with pytest.raises(ValueError, match=r"^OMS_SLA: parameter Sla must match"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)
    monkeypatch.delenv("OMS_SLA")

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "0.5")
    monkeypatch.setenv("OMS_PICKUP_EXPIRY_DAYS", "0.01")
    stack = EmbeddedStack(api_port=0, aws_port=0, seed=False)
    assert (stack.template.parameter("HoldExpiryDays"), stack.template.parameter("PickupExpiryDays")) == ("0.5", "0.01")


def test_every_variable_a_parameter_sets_for_a_function_is_taken_from_the_shell_by_make_run(
    monkeypatch: pytest.MonkeyPatch,
):
    # The stack exports every function's variables as the template resolves them, over the shell's:
    # a variable fed by a parameter reaches the functions only as that parameter. A hand-kept list
    # of them missed RECONCILE_AFTER_MINUTES, RECONCILE_PARK_AFTER_MINUTES, WEBHOOK_RETRY_*_SECONDS
    # and IMPORT_QUEUE_SENDER_CHANNELS: `make run` silently kept the template's (or its own) value.
    from infra.local.stack import EmbeddedStack, _compressed_retries

    template = Template.load()
    fed = {
        name: value["Ref"]
        for props in template.functions().values()
        for name, value in props["Environment"]["Variables"].items()
        if isinstance(value, dict) and value.get("Ref") in template.document["Parameters"]
    }
    assert {"RECONCILE_AFTER_MINUTES", "WEBHOOK_RETRY_BASE_SECONDS", "IMPORT_QUEUE_SENDER_CHANNELS"} <= set(fed)
    assert template.parameter_variables() == set(fed.items())

    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "20")
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "5")
    monkeypatch.setenv("IMPORT_QUEUE_SENDER_CHANNELS", "AROAEXAMPLE=web")
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # a constant of the template: not a parameter
    stack = EmbeddedStack(api_port=0, aws_port=0, seed=False)
    taken = ("ReconcileAfterMinutes", "WebhookRetryBaseSeconds", "ImportQueueSenderChannels")
    assert tuple(stack.template.parameter(name) for name in taken) == ("20", "5", "AROAEXAMPLE=web")
    # The base is the shell's; the local stack still compresses the two retry variables it left unset.
    assert _compressed_retries(stack.template) == {
        "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "8",
        "WEBHOOK_RETRY_WINDOW_SECONDS": "60",
    }

    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "5")  # a deploy refuses it (MinValue 6)
    with pytest.raises(ValueError, match=r"^RECONCILE_AFTER_MINUTES: parameter ReconcileAfterMinutes must be at least"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)
    monkeypatch.delenv("RECONCILE_AFTER_MINUTES")
    # The shell's window is the parameter's, checked as a deploy checks it: the compression is not.
    monkeypatch.setenv("WEBHOOK_RETRY_WINDOW_SECONDS", "3600")
    with pytest.raises(
        ValueError, match=r"^WEBHOOK_RETRY_WINDOW_SECONDS: parameter WebhookRetryWindowSeconds must be at least 86400"
    ):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)
    monkeypatch.setenv("WEBHOOK_RETRY_WINDOW_SECONDS", "172800")
    stack = EmbeddedStack(api_port=0, aws_port=0, seed=False)
    assert stack.template.parameter("WebhookRetryWindowSeconds") == "172800"
    assert _compressed_retries(stack.template) == {"WEBHOOK_RETRY_MAX_DELAY_SECONDS": "8"}  # the base is the shell's


def test_the_return_window_is_taken_from_the_shell_and_refused_by_its_variable(monkeypatch: pytest.MonkeyPatch):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "2.5")
    assert EmbeddedStack(api_port=0, aws_port=0, seed=False).template.parameter("ReturnWindowDays") == "2.5"

    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "-1")
    with pytest.raises(ValueError, match=r"^OMS_RETURN_WINDOW_DAYS: parameter ReturnWindowDays must be at least 0"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)


# --- Routing and events -----------------------------------------------------------------------------


def test_router_prefers_literal_segments_and_does_not_fall_back_to_a_looser_resource():
    router = Router([*ROUTES, ApiRoute("Search", "/orders/search", "GET", None)])
    assert router.match("/orders/search", "GET").route.event_name == "Search"
    match = router.match("/orders/ord_1", "GET")
    assert match.route.path == "/orders/{order_id}" and match.path_parameters == {"order_id": "ord_1"}
    assert router.match("/orders", "DELETE") is None
    assert router.match("/orders/search", "POST") is None  # /orders/{order_id} has no POST either
    assert router.match("/nope", "GET") is None
    match = router.match("/inventory/a%20b/loc_1", "PUT")
    assert match.path_parameters == {"sku": "a b", "location_id": "loc_1"}
    assert router.match("/orders/", "GET").route.path == "/orders"
    assert router.match("/orders//history", "GET") is None  # an empty segment names no resource


def test_router_ranks_resources_with_parameters_by_their_first_literal_segment_then_their_path():
    routes = [
        ApiRoute("Late", "/{kind}/b", "GET", None),
        ApiRoute("Early", "/a/{id}", "GET", None),
        ApiRoute("Second", "/a/{other}", "GET", None),
        ApiRoute("Literal", "/a/c/", "POST", None),
    ]
    router = Router(routes)
    # /a/{id} and /a/{other} both beat /{kind}/b: a literal segment counts from the left; of two
    # alike, the path that sorts first. A resource's trailing slash is ignored, as a request's is.
    match = router.match("/a/b", "GET")
    assert (match.route.event_name, match.path_parameters) == ("Early", {"id": "b"})
    assert router.match("/x/b", "GET").path_parameters == {"kind": "x"}
    assert router.match("/a/c", "POST").route.event_name == "Literal"
    assert router.match("/a/c", "GET") is None  # /a/c has no GET; /a/{id} is not tried


def test_a_greedy_proxy_path_is_refused_rather_than_matched_as_one_segment():
    with pytest.raises(ValueError, match=r"route Proxy: greedy path /files/\{proxy\+\} is not emulated"):
        Router([*ROUTES, ApiRoute("Proxy", "/files/{proxy+}", "GET", None)])


def test_unknown_path_and_a_method_its_resource_lacks_are_both_404_as_api_gateway_answers():
    # API Gateway answers both MISSING_AUTHENTICATION_TOKEN (403 by default; the template maps it to
    # the contract's 404). The local gateway answered 405 method_not_allowed for the second.
    gw = gateway()
    for method, path in [("GET", "/nowhere"), ("DELETE", "/orders"), ("POST", "/health")]:
        status, body, response = call(gw, method, path, headers=[("Authorization", "Bearer good")])
        assert status == 404, (method, path)
        assert body["error"]["code"] == "not_found" and body["error"]["details"] == []
        assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert "Allow" not in response.headers


def test_the_gateway_s_own_answers_carry_the_request_s_id_as_api_gateway_s_do():
    request = HttpRequest("GET", "/nowhere")
    response = gateway().handle(request)
    assert (response.status_code, response.headers["x-amzn-RequestId"]) == (404, request.request_id)


def test_proxy_event_has_api_gateway_v1_shape():
    request = HttpRequest(
        "PUT",
        "/inventory/TSHIRT%2FBLK/wh-east",
        "a=1&tag=x&tag=y&empty=",
        [("Content-Type", "application/json"), ("X-Tag", "one"), ("X-Tag", "two")],
        b'{"on_hand": 3}',
        source_ip="10.0.0.7",
    )
    event = proxy_event(request, Router(ROUTES).match(request.path, request.method))
    assert event["resource"] == "/inventory/{sku}/{location_id}"
    assert event["path"] == "/inventory/TSHIRT%2FBLK/wh-east"  # REST APIs keep the path encoded
    assert event["pathParameters"] == {"sku": "TSHIRT/BLK", "location_id": "wh-east"}
    assert event["httpMethod"] == "PUT"
    assert event["queryStringParameters"] == {"a": "1", "tag": "y", "empty": ""}
    assert event["multiValueQueryStringParameters"]["tag"] == ["x", "y"]
    assert event["headers"]["X-Tag"] == "two"
    assert event["multiValueHeaders"]["X-Tag"] == ["one", "two"]
    assert event["body"] == '{"on_hand": 3}' and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["stage"] == "v1"
    assert context["resourcePath"] == "/inventory/{sku}/{location_id}"
    assert context["httpMethod"] == "PUT"
    assert context["identity"]["sourceIp"] == "10.0.0.7"
    assert context["requestId"] == request.request_id
    assert abs(context["requestTimeEpoch"] - time.time() * 1000) < 5000
    assert context["requestTime"] == time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(request.received_at))
    assert re.fullmatch(r"[0-9a-f]{6}", context["resourceId"])
    again = proxy_event(request, Router(ROUTES).match(request.path, request.method))
    other = proxy_event(request, Router(ROUTES).match("/orders/ord_1", "GET"))["requestContext"]["resourceId"]
    # One id per resource, the same on every request; a trace id per request.
    assert again["requestContext"]["resourceId"] == context["resourceId"] != other
    trace = event["headers"]["X-Amzn-Trace-Id"]
    assert re.fullmatch(rf"Root=1-{int(request.received_at):08x}-[0-9a-f]{{24}}", trace)
    assert again["headers"]["X-Amzn-Trace-Id"] != trace
    # Served at the root (like a custom domain's base path mapping): no stage in the path.
    assert context["path"] == "/inventory/TSHIRT%2FBLK/wh-east"


def test_proxy_event_without_query_or_body_uses_nulls_and_binary_bodies_are_base64():
    match = Router(ROUTES).match("/health", "GET")
    event = proxy_event(HttpRequest("GET", "/health"), match)
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] is None
    assert event["body"] is None and event["isBase64Encoded"] is False
    binary = bytes([0xFF, 0x00, 0xFE])
    event = proxy_event(HttpRequest("GET", "/health", body=binary), match)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == binary


def test_handler_response_becomes_the_http_response():
    gw = gateway(
        api=lambda event, context: {
            "statusCode": 201,
            "headers": {"Content-Type": "text/plain", "X-One": "1"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": base64.b64encode(b"\xffraw").decode(),
            "isBase64Encoded": True,
        }
    )
    response = gw.handle(HttpRequest("GET", "/health"))
    assert response.status_code == 201
    assert response.get_data() == b"\xffraw"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert response.headers["x-amzn-RequestId"]


def test_a_name_in_multi_value_headers_wins_over_headers_whatever_its_case():
    gw = gateway(
        api=lambda event, context: {
            "statusCode": 200,
            "headers": {"X-TAG": "single", "X-Empty": "kept", "X-Amzn-Requestid": "mine"},
            "multiValueHeaders": {"X-Tag": ["one", "two"], "X-Empty": [], "content-type": ["text/csv"]},
            "body": "a,b",
        }
    )
    response = gw.handle(HttpRequest("GET", "/health"))
    assert response.headers.getlist("X-Tag") == ["one", "two"]
    assert response.headers.getlist("X-Empty") == ["kept"]  # an empty list takes nothing
    # What the handler set is not set again, whatever its case.
    assert response.headers.getlist("Content-Type") == ["text/csv"]
    assert response.headers.getlist("x-amzn-RequestId") == ["mine"]


def test_a_handler_that_raises_is_502_without_the_traceback(caplog: pytest.LogCaptureFixture):
    # API Gateway answers a function error (an exception, a timeout) with 502, as it answers a response
    # that is no proxy response; the local gateway answered 500, the status of an invoke Lambda refused.
    def explode(event, context):
        raise RuntimeError("secret detail")

    status, body, response = call(gateway(api=explode), "GET", "/health")
    assert status == 502
    assert body == {"error": {"code": "internal_error", "message": "internal error", "details": []}}
    assert response.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
    assert b"secret" not in response.get_data()
    assert "secret detail" in caplog.text  # logged for the developer


def test_a_function_error_is_answered_from_the_template_s_default_5xx_as_on_aws():
    # The 5xx the gateway made of a failed API function came from a copy of the contract's body kept
    # in gateway.py, not from the template's DEFAULT_5XX (whose headers it never sent either).
    default_5xx = {
        "ResponseTemplates": {"application/json": '{"error": {"code": "from_default_5xx"}}'},
        "ResponseParameters": {"Headers": {"X-Declared": "'yes'"}},
    }
    responses = {**RESPONSES, "DEFAULT_5XX": default_5xx}

    def explode(event, context):
        raise RuntimeError("boom")

    malformed = [
        Recorder({"statusCode": "200"}),
        Recorder("not a proxy response"),
        Recorder({"statusCode": 200, "body": {}}),  # a body that is not a string: was served as an empty 200
    ]
    for api in (explode, *malformed):
        status, body, response = call(gateway(api=api, gateway_responses=responses), "GET", "/health")
        assert (status, body, response.headers["X-Declared"]) == (502, {"error": {"code": "from_default_5xx"}}, "yes")
    status, body, _ = call(gateway(api=explode, gateway_responses={}), "GET", "/health")
    assert (status, body) == (502, {"message": "Internal server error"})


def late(seconds: float, answer: Any = None) -> Any:
    """A handler that answers (or raises) after `seconds`."""

    def handler(event: Any, context: Any) -> Any:
        time.sleep(seconds)
        if isinstance(answer, BaseException):
            raise answer
        return answer or {"statusCode": 200, "body": "{}"}

    return handler


@pytest.mark.parametrize("answer", [None, ValueError("late"), SystemExit(3)])
@pytest.mark.usefixtures("wall_clock_runs")
def test_an_api_function_past_its_timeout_is_a_502_and_past_the_integration_s_a_504(answer: Any, caplog):
    # The answer of a function that ran past its Timeout was served: on AWS Lambda stops it and API
    # Gateway answers the function error (502); a function whose Timeout is over API Gateway's 29 s is
    # given up at 29 s (504 "Endpoint request timed out"), whatever it answers after.
    # 0.3 s against 0.02, timed by the wall (wall_clock_runs): less its waits for a CPU, as RunClock
    # times a run, a loaded machine's kernel counted most of a sleep as such a wait and the run was
    # judged within the limit (the function's error served, not a timeout).
    gw = gateway(api=late(0.3, answer))
    gw.api.timeout_seconds = 0.02
    status, body, response = call(gw, "GET", "/health")
    assert (status, body) == (502, {"error": {"code": "internal_error", "message": "internal error", "details": []}})
    assert re.search(r"RequestId: [0-9a-f-]{36} Error: Task timed out after 0\.02 seconds", caplog.text)
    gw = gateway(api=late(0.1, answer), integration_timeout=0.02, gateway_responses={})
    status, body, response = call(gw, "GET", "/health")
    assert (status, body) == (504, {"message": "Endpoint request timed out"})
    assert response.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
    assert call(gateway(api=late(0, answer)), "GET", "/health")[0] == (200 if answer is None else 502)


def test_an_api_function_that_exits_is_a_502(caplog):
    # SystemExit is no Exception: it went through the gateway's handling (on a server thread, it ended
    # the request unanswered). Lambda's runtime reports the process's exit as a function error.
    assert call(gateway(api=late(0, SystemExit(3))), "GET", "/health")[0] == 502
    assert re.search(r"RequestId: [0-9a-f-]{36} Error: Runtime exited with error: exit status 3", caplog.text)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (3, "Runtime exited with error: exit status 3"),
        ("a message", "Runtime exited with error: exit status 1"),  # Python prints it and exits 1
        (None, "Runtime exited without providing a reason"),  # sys.exit(): status 0
        (0, "Runtime exited without providing a reason"),
    ],
)
def test_a_handler_s_exit_is_worded_as_lambda_words_the_runtime_s_exit(code: Any, reason: str):
    seen = []

    def handler(event: Any, context: Any) -> None:
        seen.append(context.aws_request_id)
        sys.exit(code)

    with pytest.raises(ExitError) as caught:
        LocalFunction("exits", handler).invoke({})
    assert type(caught.value).__name__ == "Runtime.ExitError"
    assert str(caught.value) == f"RequestId: {seen[0]} Error: {reason}"  # the invocation's own request id


# A handler package with warm state in two modules, as functions/api keeps its container in
# dependencies.py: each build numbered, the handler answering which builds it was served.
_FRESH_APP = """
import sys
import threading
import time

from functions.warm import Warm

from {package}.deps import clients

builds = []
state = Warm(lambda: builds.append({{"build": len(builds) + 1, "touched_by": []}}) or builds[-1])
release, left_behind = threading.Event(), []


def lambda_handler(event, context):
    served = [state()["build"], clients()]
    state()["touched_by"].append("run")
    if event.get("exit"):
        sys.exit(3)
    if event.get("leave_a_thread"):  # it uses the warm state after the run has failed
        thread = threading.Thread(target=lambda: release.wait(5) and state()["touched_by"].append("thread"))
        left_behind.append(thread)
        thread.start()
    time.sleep(event.get("sleep", 0))
    return served
"""
_FRESH_DEPS = """
from functions.warm import Warm

built = []
clients = Warm(lambda: built.append(len(built) + 1) or built[-1])
"""


@pytest.fixture
def fresh_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    names = ("local_fresh_a", "local_fresh_b")
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "app.py").write_text(_FRESH_APP.format(package=name))
        (tmp_path / name / "deps.py").write_text(_FRESH_DEPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield names
    for module in [module for module in sys.modules if module.startswith(names)]:
        del sys.modules[module]


@pytest.mark.parametrize("failure", [{"sleep": 0.1}, {"exit": True}], ids=["Sandbox.Timedout", "Runtime.ExitError"])
@pytest.mark.usefixtures("wall_clock_runs")
def test_after_a_timeout_or_an_exit_the_function_s_next_run_starts_fresh_and_only_its_own(
    fresh_packages: tuple[str, str], failure: dict[str, Any]
):
    # Only the failing run is held to 0.05 s (it sleeps 0.1 s): a run that must not time out had
    # 0.05 s too, and a loaded machine (the suite's CI, two workers) once paused one that long.
    one, other = (LocalFunction(name, f"{name}.app.lambda_handler", timeout_seconds=5) for name in fresh_packages)
    assert one.invoke({}) == other.invoke({}) == [1, 1]
    assert one.invoke({}) == [1, 1]  # warm: built once
    one.timeout_seconds = 0.05
    with pytest.raises((TimedOut, ExitError)):
        one.invoke(failure)
    one.timeout_seconds = 5
    # A new environment builds every Warm of its package again, its other modules' too; the
    # other function's environment was not replaced.
    assert one.invoke({}) == [2, 2]
    assert sys.modules[f"{fresh_packages[0]}.app"].builds[-1]["touched_by"] == ["run"]
    assert other.invoke({}) == [1, 1]
    assert one.invoke({}) == [2, 2]  # and is warm again


@pytest.mark.usefixtures("wall_clock_runs")
def test_a_run_past_only_what_its_caller_waits_leaves_its_environment_warm(fresh_packages: tuple[str, str]):
    # API Gateway gives up at 29 s on a function allowed longer: the caller hears of a timeout, but
    # Lambda let the run end on its own, and its environment stays as the run left it.
    function = LocalFunction("patient", f"{fresh_packages[0]}.app.lambda_handler", timeout_seconds=5)
    assert function.invoke({}) == [1, 1]
    with pytest.raises(TimedOut):
        function.invoke({"sleep": 0.1}, waits=0.05)
    assert function.invoke({}) == [1, 1]


@pytest.mark.usefixtures("wall_clock_runs")
def test_a_thread_the_timed_out_run_left_running_does_not_reach_the_next_run_s_fresh_state(
    fresh_packages: tuple[str, str],
):
    function = LocalFunction("slow", f"{fresh_packages[0]}.app.lambda_handler", timeout_seconds=0.05)
    app = importlib.import_module(f"{fresh_packages[0]}.app")
    with pytest.raises(TimedOut):
        function.invoke({"leave_a_thread": True, "sleep": 0.1})
    function.timeout_seconds = 5  # the next run must not time out: 0.05 s is a loaded machine's pause
    # The run's thread goes on after its caller heard of the timeout, and asks for the warm state
    # again (it rebuilds what was forgotten, if it was forgotten already): the next run must not
    # be served what that thread built or touched.
    app.release.set()
    app.left_behind[0].join(5)
    assert function.invoke({}) == [len(app.builds), 2]
    assert app.builds[-1]["touched_by"] == ["run"]


def test_the_api_function_s_fresh_environment_forgets_its_package_s_warm_state_and_no_other_s(
    monkeypatch: pytest.MonkeyPatch,
):
    from functions.api import app, dependencies
    from functions.api.routes import meta
    from functions.authorizer import app as authorizer
    from functions.warm import Warm

    forgotten: list[Warm[Any]] = []
    monkeypatch.setattr(Warm, "forget", lambda warm: forgotten.append(warm))
    _start_fresh(app.lambda_handler)
    assert {id(warm) for warm in forgotten} == {id(dependencies.container), id(meta._pages)}
    assert authorizer.api_keys not in forgotten


def test_each_run_leaves_the_metric_set_as_lambda_s_flush_leaves_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    # The local stack's default: log_metrics neither prints the set nor clears it.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metrics = Metrics(namespace="Local")
    metrics.clear_metrics()

    @metrics.log_metrics
    def handler(event: dict[str, Any], context: Any) -> int:
        metrics.add_metric(name="Runs", unit=MetricUnit.Count, value=1)
        if event.get("fail"):
            raise RuntimeError("the handler failed")
        return len(metrics.metric_set["Runs"]["Value"])

    function = LocalFunction("metered", handler)
    try:
        assert [function.invoke({}) for _ in range(150)] == [1] * 150
        with pytest.raises(RuntimeError):
            function.invoke({"fail": True})
        assert metrics.metric_set == {}
        assert "_aws" not in capsys.readouterr().out  # no EMF line, as powertools prints one at 100 values
        # Metrics switched on, log_metrics flushes the set itself: what another function has added
        # and not printed yet stays for it to print.
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
        metrics.add_metric(name="Unprinted", unit=MetricUnit.Count, value=1)
        assert LocalFunction("plain", lambda event, context: "done").invoke({}) == "done"
        assert list(metrics.metric_set) == ["Unprinted"]
    finally:
        metrics.clear_metrics()


@pytest.mark.usefixtures("wall_clock_runs")
def test_an_authorizer_past_its_timeout_is_a_500():
    gw = gateway(authorizer=late(0.1, allow_all()))
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 200
    gw.authorizers["Keys"].function.timeout_seconds = 0.02
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 500


def test_an_event_over_lambda_s_6_mb_is_refused_by_lambda_500_and_the_function_never_runs():
    # API Gateway takes a body up to 10 MB, Lambda a synchronous invoke's event up to 6 MB: between
    # the two the API function is never called and API Gateway answers 500 (Lambda refused the
    # invoke). The local gateway called it, and the function answered 413 as no deployed stack does.
    api = Recorder(ok)
    gw = gateway(api=api)
    status, body, response = call(gw, "GET", "/health", body=b"x" * LAMBDA_MAX_PAYLOAD)
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert response.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
    assert api.events == []
    # The event is what counts, as JSON: a body of control characters is six times its size there.
    status, _, _ = call(gw, "GET", "/health", body=b"\x01" * (LAMBDA_MAX_PAYLOAD // 6 + 1))
    assert status == 500 and api.events == []
    assert call(gw, "GET", "/health", body=b"x" * (LAMBDA_MAX_PAYLOAD - 8 * 1024))[0] == 200
    assert len(api.events) == 1


def test_a_response_over_lambda_s_6_mb_is_a_function_error_502():
    big = Recorder({"statusCode": 200, "body": "x" * LAMBDA_MAX_PAYLOAD})
    status, body, _ = call(gateway(api=big), "GET", "/health")
    assert (status, body["error"]["code"]) == (502, "internal_error")
    fits = Recorder({"statusCode": 200, "body": json.dumps("x" * (LAMBDA_MAX_PAYLOAD - 1024))})
    assert call(gateway(api=fits), "GET", "/health")[0] == 200


def test_body_over_the_gateway_limit_is_413_before_any_function_runs():
    api = Recorder(ok)
    status, body, _ = call(gateway(api=api, max_body_bytes=10), "GET", "/health", body=b"x" * 11)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert api.events == []


# --- The authorizer ---------------------------------------------------------------------------------


def test_missing_identity_header_is_401_without_calling_the_authorizer():
    authorizer = Recorder(lambda event: allow_all())
    status, body, _ = call(gateway(authorizer=authorizer), "GET", "/orders")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert authorizer.events == []


def test_unauthorized_exception_is_401_and_deny_is_403():
    gw = gateway()
    status, body, _ = call(gw, "GET", "/orders", headers=[("Authorization", "Bearer bad")])
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body, _ = call(gw, "GET", "/orders", headers=[("Authorization", "Bearer deny")])
    assert (status, body["error"]["code"]) == (403, "forbidden")


def test_allow_passes_principal_and_context_to_the_api_handler():
    api = Recorder(ok)
    authorizer = Recorder(lambda event: allow_all("key_1", scopes="orders:read", count=3, admin=True))
    status, _, _ = call(
        gateway(api=api, authorizer=authorizer),
        "GET",
        "/orders/ord_1",
        headers=[("authorization", "Bearer good-key")],
        query="x=1",
    )
    assert status == 200
    [auth_event] = authorizer.events
    assert auth_event["type"] == "REQUEST"
    assert auth_event["methodArn"] == f"{ARN_PREFIX}/GET/orders/ord_1"
    assert auth_event["resource"] == "/orders/{order_id}"
    assert auth_event["pathParameters"] == {"order_id": "ord_1"}
    assert auth_event["queryStringParameters"] == {"x": "1"}
    assert auth_event["headers"]["authorization"] == "Bearer good-key"
    [event] = api.events
    assert event["requestContext"]["authorizer"]["principalId"] == "key_1"
    assert event["requestContext"]["authorizer"]["scopes"] == "orders:read"
    # API Gateway hands context values over as strings.
    assert event["requestContext"]["authorizer"]["count"] == "3"
    assert event["requestContext"]["authorizer"]["admin"] == "true"


def test_a_policy_that_does_not_cover_the_method_is_403():
    def narrow(event):
        output = allow_all()
        output["policyDocument"]["Statement"][0]["Resource"] = f"{ARN_PREFIX}/GET/orders"
        return output

    gw = gateway(authorizer=Recorder(narrow))
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer x")])[0] == 200
    assert call(gw, "POST", "/orders", headers=[("Authorization", "Bearer x")])[0] == 403
    assert not policy_allows({"Statement": []}, "arn:x")


def test_a_policy_the_runtime_does_not_evaluate_is_a_500_not_a_guess(caplog: pytest.LogCaptureFixture):
    """Only execute-api:Invoke on an ARN or an ARN prefix ending in `*` (what the authorizer
    writes) is evaluated; any other action or wildcard fails loudly."""

    def wildcard(event):
        output = allow_all()
        output["policyDocument"]["Statement"][0]["Action"] = "execute-api:*"
        return output

    status, body, _ = call(gateway(authorizer=Recorder(wildcard)), "GET", "/orders", headers=[("Authorization", "x")])
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "not evaluated locally" in caplog.text


def test_authorizer_results_are_cached_per_authorization_header():
    authorizer = Recorder(lambda event: allow_all())
    gw = gateway(authorizer=authorizer, cache_seconds=60)
    for _ in range(3):
        assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 200
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer b")])[0] == 200
    assert len(authorizer.events) == 2
    uncached = Recorder(lambda event: allow_all())
    gw = gateway(authorizer=uncached, cache_seconds=0)
    for _ in range(2):
        call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])
    assert len(uncached.events) == 2


def test_a_stage_flush_empties_the_authorizer_cache_so_the_next_request_asks_again():
    authorizer = Recorder(lambda event: allow_all())
    gw = gateway(authorizer=authorizer, cache_seconds=300)
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 200

    def refuse(event):
        raise Exception("Unauthorized")

    authorizer.answer = refuse  # the key is revoked: the authorizer now refuses it
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 200  # still cached

    gw.flush_authorizer_caches()

    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 401
    assert len(authorizer.events) == 2


def test_the_api_functions_flush_call_reaches_the_local_gateway_of_that_stage():
    import boto3
    from moto import mock_aws

    from infra.local.moto_patches import apigateway

    gw = gateway(cache_seconds=300)
    good = [("Authorization", "Bearer good")]
    with mock_aws(), apigateway.PATCH.registered((gw.api_id, gw.stage, gw.flush_authorizer_caches)):
        assert call(gw, "GET", "/orders", headers=good)[0] == 200
        assert gw.authorizers["Keys"]._cache
        client = boto3.client("apigateway", region_name="us-east-1")

        client.flush_stage_authorizers_cache(restApiId="other", stageName="v1")  # another API's stage
        assert gw.authorizers["Keys"]._cache
        answer = client.flush_stage_authorizers_cache(restApiId=gw.api_id, stageName=gw.stage)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert not gw.authorizers["Keys"]._cache
    assert not apigateway.PATCH.is_applied()


def test_requests_with_bad_keys_are_throttled_per_source_address_and_spare_good_keys():
    gw = gateway(throttle=TokenBuckets(rate=0.001, burst=3))
    statuses = [
        call(gw, "GET", "/orders", headers=[("Authorization", f"Bearer bad{n}")])[0] for n in range(5)
    ]  # a new bad key each time buys no new bucket

    assert statuses == [401, 401, 401, 429, 429]
    status, body, response = call(gw, "GET", "/orders", headers=[("Authorization", "Bearer bad9")])
    assert status == 429 and body["error"]["code"] == "throttled" and int(response.headers["Retry-After"]) >= 1
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer good")])[0] == 200  # its own bucket
    assert call(gw, "GET", "/health")[0] == 429  # the address's bucket: public routes share it


def test_public_routes_are_throttled_per_source_address():
    gw = gateway(throttle=TokenBuckets(rate=0.001, burst=2))

    assert [call(gw, "GET", "/health")[0] for _ in range(3)] == [200, 200, 429]


def test_a_gateway_response_sends_the_headers_the_template_declares_as_aws_does():
    # API Gateway sends a declared header's static value in place of anything computed.
    throttled = {**RESPONSES["THROTTLED"], "ResponseParameters": {"Headers": {"Retry-After": "'7'"}}}
    gw = gateway(throttle=TokenBuckets(rate=0.001, burst=1), gateway_responses={**RESPONSES, "THROTTLED": throttled})

    assert call(gw, "GET", "/health")[0] == 200
    status, _, response = call(gw, "GET", "/health")
    assert (status, response.headers["Retry-After"]) == (429, "7")


def test_a_gateway_response_header_mapped_from_the_request_is_refused_at_startup():
    headers = {"X-Key": "method.request.header.Authorization"}
    mapped = {**RESPONSES["THROTTLED"], "ResponseParameters": {"Headers": headers}}

    with pytest.raises(ValueError, match="THROTTLED header X-Key"):
        gateway(gateway_responses={**RESPONSES, "THROTTLED": mapped})


def test_an_answer_the_template_does_not_name_takes_its_default_4xx_or_5xx_as_on_aws():
    # The local gateway kept its own copy of the contract's bodies for every answer, and answered an
    # authorizer's bad output with it; API Gateway takes DEFAULT_5XX's (and DEFAULT_4XX's for a 4xx).
    default_5xx = {"ResponseTemplates": {"application/json": '{"error": {"code": "from_default_5xx"}}'}}
    broken = Recorder({"principalId": "x"})  # no policyDocument: AUTHORIZER_CONFIGURATION_ERROR
    gw = gateway(authorizer=broken, gateway_responses={**RESPONSES, "DEFAULT_5XX": default_5xx})
    status, body, response = call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])
    assert (status, body) == (500, {"error": {"code": "from_default_5xx"}})
    assert response.headers["x-amzn-ErrorType"] == "AuthorizerConfigurationException"

    # A context value that is not a string, number or boolean: API Gateway refuses the output too.
    nested = Recorder(allow_all(scopes=["orders:read"]))
    gw = gateway(authorizer=nested, gateway_responses={**RESPONSES, "DEFAULT_5XX": default_5xx})
    assert call(gw, "GET", "/orders", headers=[("Authorization", "Bearer a")])[:2] == (500, body)

    only_default = {key: value for key, value in RESPONSES.items() if key != "MISSING_AUTHENTICATION_TOKEN"}
    status, body, _ = call(gateway(gateway_responses=only_default), "GET", "/nowhere")
    assert (status, body["error"]["code"]) == (403, "request_refused")  # API Gateway's own 403, DEFAULT_4XX's body


def test_an_answer_with_neither_its_own_template_nor_a_default_is_api_gateway_s_own():
    gw = gateway(gateway_responses={})

    status, body, response = call(gw, "DELETE", "/orders")
    assert (status, body) == (403, {"message": "Missing Authentication Token"})
    assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert call(gw, "GET", "/orders")[:2] == (401, {"message": "Unauthorized"})


def test_authorizer_crash_or_bad_output_is_500():
    def crash(event, context):
        raise ValueError("boom")

    assert call(gateway(authorizer=crash), "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 500
    bad = Recorder({"principalId": "x"})
    assert call(gateway(authorizer=bad), "GET", "/orders", headers=[("Authorization", "Bearer a")])[0] == 500


def test_authorizer_event_is_built_from_the_proxy_event():
    match = Router(ROUTES).match("/orders", "POST")
    event = proxy_event(HttpRequest("POST", "/orders", headers=[("Authorization", "Bearer z")]), match)
    auth_event = request_authorizer_event(event)
    assert auth_event["methodArn"] == f"{ARN_PREFIX}/POST/orders"
    assert auth_event["httpMethod"] == "POST" and auth_event["path"] == "/orders"
    assert "authorizer" not in auth_event["requestContext"]


# --- Functions ------------------------------------------------------------------------------------


def test_handlers_are_imported_on_first_invocation_with_a_lambda_context():
    function = LocalFunction("oms-local-Fn", "tests.integration.no_such_module.handler", memory_mb=256)
    with pytest.raises(ModuleNotFoundError):
        function.invoke({})  # constructing it did not import anything
    function = LocalFunction("oms-local-Fn", f"{__name__}.fake_api_handler", memory_mb=256, timeout_seconds=5)
    context = function.new_context()
    assert context.function_name == "oms-local-Fn"
    assert context.memory_limit_in_mb == 256
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:oms-local-Fn"
    assert context.aws_request_id
    assert 4000 < context.get_remaining_time_in_millis() <= 5000
    assert function.invoke({"path": "/x", "httpMethod": "GET"})["statusCode"] == 200


def test_a_step_functions_task_reaching_a_stopping_stack_fails_as_lambda_s_service_error_and_runs_nothing():
    from infra.local.lambdas import LambdaService

    handler = Recorder(ok)
    service = LambdaService({"Fn": LocalFunction("oms-local-Fn", handler)})
    service.close()
    headers: dict[str, Any] = {}
    answer = json.loads(service.invoke(service.lookup("oms-local-Fn"), b"{}", {}, headers))
    assert answer["errorType"] == "Lambda.ServiceException" and "stopping" in answer["errorMessage"]
    assert headers["x-amz-function-error"] == "Unhandled"
    assert handler.events == []  # no handler outlives the mock it talks to


def test_a_handler_given_for_a_function_the_template_lacks_is_refused_before_anything_starts():
    from infra.local.stack import EmbeddedStack

    # Ignored, the test would run the real handler where it meant its fake.
    with pytest.raises(ValueError, match=r"handlers given for functions the template lacks: \['ApiFuncton'\]"):
        EmbeddedStack(handlers={"ApiFuncton": ok}, api_port=0, aws_port=0)


# --- The moto lock --------------------------------------------------------------------------------


def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(name, value)


def _dynamodb_with_table_t() -> Any:
    """A DynamoDB client (inside mock_aws) and its table "t", keyed by "id"."""
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client


def test_the_lock_lets_one_request_into_moto_at_a_time(monkeypatch: pytest.MonkeyPatch):
    from moto import mock_aws
    from moto.core.responses import BaseResponse
    from moto.dynamodb.models import DynamoDBBackend

    from infra.local.moto_patches import lock

    inside = 0
    most_inside = 0
    counter = threading.Lock()
    original_get_item = DynamoDBBackend.get_item

    def slow_get_item(self, *args, **kwargs):
        nonlocal inside, most_inside
        with counter:
            inside += 1
            most_inside = max(most_inside, inside)
        time.sleep(0.005)
        with counter:
            inside -= 1
        return original_get_item(self, *args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "get_item", slow_get_item)
    _fake_credentials(monkeypatch)
    original_call_action = BaseResponse.__dict__["call_action"]
    with mock_aws(), lock.PATCH.registered():
        assert BaseResponse.__dict__["call_action"] is not original_call_action
        client = _dynamodb_with_table_t()

        def reader():
            for _ in range(5):
                client.get_item(TableName="t", Key={"id": {"S": "x"}})

        threads = [threading.Thread(target=reader) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most_inside == 1
    assert BaseResponse.__dict__["call_action"] is original_call_action  # uninstalled


def test_a_run_held_behind_another_function_s_moto_call_past_its_timeout_answers(monkeypatch: pytest.MonkeyPatch):
    # On AWS a function's DynamoDB call does not queue behind another function's: the time a run
    # waits for MOTO_LOCK is not its run time, nor taken from its context's remaining time.
    from moto import mock_aws

    from infra.local.moto_patches import lock

    _fake_credentials(monkeypatch)
    with mock_aws(), lock.PATCH.registered():
        client = _dynamodb_with_table_t()
        asking = threading.Event()

        def handler(event: Any, context: Any) -> int:
            asking.set()
            client.get_item(TableName="t", Key={"id": {"S": "x"}})
            return context.get_remaining_time_in_millis()

        function = LocalFunction("held", handler, timeout_seconds=0.25)
        answers: list[tuple[Any, Exception | None]] = []
        run = threading.Thread(target=lambda: answers.append(function.try_invoke({})))
        with lock.MOTO_LOCK:  # another function's call, in moto for a second
            run.start()
            assert asking.wait(10)
            time.sleep(1)
        run.join(10)
    [(remaining, error)] = answers
    assert error is None and remaining > 0


@pytest.mark.skipif(not Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists(), reason="Linux")
def test_a_thread_s_wait_for_a_cpu_is_read_afresh_from_a_file_closed_when_the_thread_ends():
    # RunClock reads it at least twice a run: the thread keeps its schedstat open and preads it.
    import subprocess

    from infra.local.moto_patches import lock

    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    files = len(os.listdir("/proc/self/fd"))
    seen: list[float] = []

    def crowded() -> None:
        os.sched_setaffinity(0, {cpu})  # beside the hog: this thread waits for the CPU it spins on
        path = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        seen.append(lock.queued_seconds())
        started = time.thread_time()
        while time.thread_time() - started < 0.05:
            pass
        seen.extend([lock.queued_seconds(), int(path.read_text().split()[1]) / 1e9])
        seen.append(len(os.listdir("/proc/self/fd")))

    try:
        time.sleep(0.2)  # the hog is pinned and spinning
        thread = threading.Thread(target=crowded)
        thread.start()
        thread.join(10)
    finally:
        hog.kill()
        hog.wait()
    before, after, fresh, open_in_thread = seen
    assert before < after <= fresh  # the kept file answers what the kernel says now
    assert open_in_thread == files + 1 and len(os.listdir("/proc/self/fd")) == files


@pytest.mark.skipif(not Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists(), reason="Linux")
def test_a_run_the_machine_kept_from_a_cpu_past_its_timeout_answers():
    # On AWS a function has its own CPU: here two processes pinned to the run's one CPU take two
    # thirds of it, so the run's 0.1 s of CPU takes about 0.3 s of wall time, past its 0.2 s Timeout
    # (the margin is for what is still counted: waits for the GIL this process's other threads hold).
    import subprocess

    cpu = min(os.sched_getaffinity(0))
    spin = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})  # this thread, the one the run is in

        def handler(event: Any, context: Any) -> int:
            started = time.thread_time()
            while time.thread_time() - started < 0.1:
                pass
            return context.get_remaining_time_in_millis()

        function = LocalFunction("crowded", handler, timeout_seconds=0.2)
        time.sleep(0.2)  # the hogs are pinned and spinning
        assert function.invoke({}) > 0
    finally:
        os.sched_setaffinity(0, mine)
        for hog in hogs:
            hog.kill()
            hog.wait()


# --- The embedded stack ---------------------------------------------------------------------------


def request(url: str, method: str = "GET", body: bytes | None = None, headers=()) -> tuple[int, Any, Any]:
    """Plain HTTP (http.client lets a header repeat, and sees no proxy settings)."""
    parts = url.split("/", 3)
    host, port = parts[2].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest(method, "/" + (parts[3] if len(parts) > 3 else ""))
    for name, value in headers:
        connection.putheader(name, value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = raw
    return response.status, data, response


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def served() -> Iterator[tuple[str, int]]:
    """The fake gateway behind the stack's own HTTP server (infra/local/servers.py)."""
    from infra.local.servers import Servers

    servers = Servers("127.0.0.1")
    port = servers.start_api(gateway(), 0)
    try:
        yield "127.0.0.1", port
    finally:
        servers.stop()


def test_a_response_leaves_in_one_write_its_status_line_headers_and_body(served, monkeypatch: pytest.MonkeyPatch):
    import email.utils
    import socketserver

    writes: list[bytes] = []
    write = socketserver._SocketWriter.write
    monkeypatch.setattr(
        socketserver._SocketWriter, "write", lambda self, data: writes.append(bytes(data)) or write(self, data)
    )
    connection = http.client.HTTPConnection(*served, timeout=10)
    connection.request("GET", "/health")
    response = connection.getresponse()
    body = response.read()
    connection.close()

    assert (response.status, body) == (200, b'{"ok": true}')
    # One send: two (the headers', then the body's) cost a second syscall and TCP segment.
    [sent] = writes
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b"\r\n\r\n" + body)
    assert email.utils.parsedate_to_datetime(response.getheader("Date")).tzinfo is not None


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(served):
    # curl asks so for a body over 1 KB, and waits a second for the answer before sending it anyway
    # (http.server answers it as it parses the request, before the gateway reads the body).
    head = (
        b"PUT /inventory/SKU-1/wh-1 HTTP/1.1\r\nHost: local\r\nAuthorization: Bearer good\r\n"
        b"Content-Type: application/json\r\nContent-Length: 14\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(served, timeout=10) as client:
        client.sendall(head)
        assert client.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b'{"on_hand": 1}')
        assert client.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_werkzeug_s_request_line_is_logged_only_when_its_logger_is_at_info(served, caplog: pytest.LogCaptureFixture):
    def get_health() -> None:
        connection = http.client.HTTPConnection(*served, timeout=10)
        connection.request("GET", "/health")
        connection.getresponse().read()
        connection.close()

    caplog.set_level(logging.WARNING, logger="werkzeug")  # as the stack sets it (the gateway logs requests)
    get_health()
    assert not [record for record in caplog.records if record.name == "werkzeug"]
    caplog.set_level(logging.INFO, logger="werkzeug")
    get_health()
    [line] = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert '"GET /health HTTP/1.1" 200 -' in line


def test_a_stack_reads_botocore_s_service_models_once_per_process(monkeypatch: pytest.MonkeyPatch):
    # moto's mock (one per stack) sets boto3's default session aside, so each stack's clients and
    # its functions' clients made a new session whose loader parsed every service's JSON model
    # again: 0.1 to 0.2 s of CPU per stack started, some 60 of them in a test run.
    import boto3
    import botocore.loaders

    from functions.adapters.aws_clients import aws_client
    from infra.local.stack import running_stack

    services = ("dynamodb", "dynamodbstreams", "sqs", "s3", "stepfunctions", "events")
    options = {"handlers": {"ApiFunction": ok, "AuthorizerFunction": fake_authorizer_handler}}
    default_session = boto3.DEFAULT_SESSION
    with running_stack(**options, admin_key_bootstrap=lambda secret: None, event_sources=False) as first:
        earlier = [first.client(service) for service in services] + [aws_client(service) for service in services]
    loaded: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file

    def recorded(loader: Any, path: str) -> Any:
        data = load_file(loader, path)
        if data is not None:
            loaded.append(path.rsplit("/data/", 1)[-1])
        return data

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", recorded)
    with running_stack(**options, admin_key_bootstrap=lambda secret: None, event_sources=False) as second:
        later = [second.client(service) for service in services] + [aws_client(service) for service in services]
        dynamodb = second.client("dynamodb")
        assert sorted(dynamodb.list_tables()["TableNames"]) == sorted(second.table_names.values())
        assert sorted(aws_client("dynamodb").list_tables()["TableNames"]) == sorted(second.table_names.values())
    assert loaded == []
    assert not {id(client) for client in earlier} & {id(client) for client in later}  # each stack's own clients
    assert boto3.DEFAULT_SESSION is default_session


def test_stack_stop_restores_the_environment_and_frees_the_ports():
    from functions.bootstrap import Config, WarmContainer, bootstrap
    from infra.local.stack import running_stack

    warm = WarmContainer(lambda: bootstrap(Config()))  # as a handler module holds one
    before = warm()
    assert "ORDERS_TABLE" not in os.environ
    with running_stack(
        handlers={"ApiFunction": ok, "AuthorizerFunction": fake_authorizer_handler},
        admin_key_bootstrap=lambda secret: None,
    ) as running:
        ports = (running.api_port, running.aws_port)
        assert os.environ["AWS_ACCOUNT_ID_ENDPOINT_MODE"] == "disabled"
        assert LOG_KEYS.is_applied()  # each function logs with its own keys (test_local_function_logs.py)
        inside = warm()
    assert "ORDERS_TABLE" not in os.environ
    assert not LOG_KEYS.is_applied()
    # A new stack is a new account: no warm container's clients cross into it or out of it.
    assert inside is not before and warm() is not inside
    assert all(_port_is_free(port) for port in ports)
    from infra.local.moto_patches import all_patches
    from tests.conftest import PROCESS_PATCHES

    assert not [patch.name for patch in all_patches() if patch.is_applied() and patch not in PROCESS_PATCHES]


def test_stack_seeds_the_demo_data_through_the_api_when_empty():
    from infra.local.seed import DEMO_SEED
    from infra.local.stack import running_stack

    received_events.clear()
    with running_stack(
        handlers={"ApiFunction": fake_api_handler, "AuthorizerFunction": fake_authorizer_handler},
        admin_key_bootstrap=lambda secret: None,
        admin_key="good-admin-key-for-tests",
        seed=True,
    ) as running:
        assert running.seeded
    seed = json.loads(DEMO_SEED.read_text())
    calls = [(event["httpMethod"], event["resource"]) for event in received_events]
    assert calls[0] == ("GET", "/locations")
    assert calls.count(("PUT", "/products/{sku}")) == len(seed["products"]) == 4
    assert calls.count(("PUT", "/locations/{location_id}")) == len(seed["locations"]) == 3
    assert calls.count(("PUT", "/inventory/{sku}/{location_id}")) == len(seed["stock"])
    first_product = json.loads(received_events[1]["body"])
    assert "sku" not in first_product and first_product["price"] == {"amount": "19.99", "currency": "USD"}
    assert all(event["headers"]["Authorization"] == "Bearer good-admin-key-for-tests" for event in received_events)


def test_a_seed_call_the_api_refuses_is_a_seed_error_naming_the_call_and_the_answer():
    # make run warns with it and keeps the stack running (infra/local/__main__.py); the path
    # (urllib's HTTPError on a 4xx) was never run by the suite.
    from infra.local.seed import SeedError
    from infra.local.stack import running_stack

    def refusing_api(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["httpMethod"] == "GET":
            return {"statusCode": 200, "body": json.dumps({"items": []})}
        return {"statusCode": 422, "body": json.dumps({"error": {"code": "validation_error"}})}

    with running_stack(
        handlers={"ApiFunction": refusing_api, "AuthorizerFunction": fake_authorizer_handler},
        admin_key_bootstrap=lambda secret: None,
        admin_key="good-admin-key-for-tests",
    ) as running:
        with pytest.raises(SeedError) as refused:
            running.seed_demo_data()
        assert not running.seeded
    assert str(refused.value) == ('PUT /products/TSHIRT-BLK-M answered 422: {"error": {"code": "validation_error"}}')


def test_make_run_warns_of_a_refused_seed_and_an_unwritten_state_file_and_runs_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    # Neither stops the stack (a path coverage of the suite and of make run showed never run): the
    # API is up without the demo data, and make import then needs its OMS_* variables.
    import signal

    from infra.local import __main__ as make_run
    from infra.local.seed import SeedError
    from infra.local.stack import EmbeddedStack

    def refused(stack: EmbeddedStack) -> bool:
        raise SeedError('PUT /products/TSHIRT-BLK-M answered 422: {"error": {}}')

    handlers: dict[int, Any] = {}

    def ready(stack: EmbeddedStack, started: float) -> str:
        handlers[signal.SIGINT](signal.SIGINT, None)  # Ctrl-C once the banner is printed
        return "ready"

    monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # main's, kept out of the test process
    monkeypatch.setattr("signal.signal", lambda signum, handler: handlers.setdefault(signum, handler))
    monkeypatch.setattr(make_run, "banner", ready)
    monkeypatch.setattr(EmbeddedStack, "seed_demo_data", refused)
    state = tmp_path / "no such directory" / "state.json"
    for name, value in (("OMS_PORT", "0"), ("OMS_AWS_PORT", "0"), ("OMS_SEED", "1"), ("OMS_STATE_FILE", str(state))):
        monkeypatch.setenv(name, value)
    assert make_run.main() == 0
    out, err = capsys.readouterr()
    assert (
        err.splitlines()[0] == 'warning: demo data not loaded: PUT /products/TSHIRT-BLK-M answered 422: {"error": {}}'
    )
    assert err.splitlines()[1].startswith(f"warning: {state} not written (")
    assert err.splitlines()[1].endswith("): make import needs OMS_* variables") and len(err.splitlines()) == 2
    assert out == "ready\nstopped.\n"


def test_a_table_added_to_the_template_is_created(tmp_path: Path):
    import boto3

    from infra.local.stack import running_stack

    text = DEFAULT_TEMPLATE.read_text()
    extra = (
        "  ReportsTable:\n"
        "    Type: AWS::DynamoDB::Table\n"
        "    Properties:\n"
        "      BillingMode: PAY_PER_REQUEST\n"
        "      AttributeDefinitions: [{ AttributeName: pk, AttributeType: S }]\n"
        "      KeySchema: [{ AttributeName: pk, KeyType: HASH }]\n"
        "      TimeToLiveSpecification: { AttributeName: ttl, Enabled: true }\n"
    )
    path = tmp_path / "template.yaml"
    path.write_text(text.replace("\nResources:\n", "\nResources:\n" + extra, 1))
    (tmp_path / "infra").mkdir()  # the state machine's DefinitionUri is relative to the template
    shutil.copy(DEFAULT_TEMPLATE.parent / "infra/order_workflow.asl.json", tmp_path / "infra")
    shutil.copy(DEFAULT_TEMPLATE.parent / "infra/return_workflow.asl.json", tmp_path / "infra")
    with running_stack(
        template=path,
        handlers={"ApiFunction": ok, "AuthorizerFunction": ok},
        admin_key_bootstrap=lambda secret: None,
        stack_name="t",
    ) as running:
        assert running.table_names["ReportsTable"] == "t-ReportsTable"
        client = boto3.client("dynamodb", region_name="us-east-1")
        assert "t-ReportsTable" in client.list_tables()["TableNames"]
        ttl = client.describe_time_to_live(TableName="t-ReportsTable")["TimeToLiveDescription"]
        assert ttl["AttributeName"] == "ttl"


# --- check_template -------------------------------------------------------------------------------


def test_check_template_accepts_ours_and_rejects_a_bad_event_type(tmp_path: Path, capsys):
    from infra.check_template import main

    assert main([str(DEFAULT_TEMPLATE)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_TEMPLATE.read_text().replace("Type: Api\n", "Type: Apii\n", 1))
    assert main([str(bad)]) == 1
    assert "Apii" in capsys.readouterr().err


def test_check_template_names_a_schedule_it_cannot_resolve(tmp_path: Path):
    # Template.resolve's refusal (Unresolved) is a problem in the list, not a traceback.
    from infra.check_template import schedule_problems

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        DEFAULT_TEMPLATE.read_text().replace("ReconcilerFunction: { Minutes: 5 }", "Reconciler: { Minutes: 5 }")
    )
    assert "Reconciler: { Minutes: 5 }" in bad.read_text()
    assert schedule_problems(bad) == [
        "cannot resolve !FindInMap ['ScheduleMinutes', 'ReconcilerFunction', 'Minutes']: not in the template's Mappings"
    ]


@pytest.mark.parametrize("value", ["8_080", "٨٠٨٠", "abc", "70000", "-1", "80.0"])
@pytest.mark.parametrize("variable", ["OMS_PORT", "OMS_AWS_PORT"])
def test_a_port_not_written_as_one_is_refused_at_start_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
):
    # int() took `8_080` and other scripts' digits, and `abc` failed naming no variable; 70000
    # failed only when the socket was bound.
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"^{variable} must be a port number from 0 to 65535, got "):
        EmbeddedStack(seed=False)


def test_a_port_is_taken_from_the_shell(monkeypatch: pytest.MonkeyPatch):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_PORT", " 8081 ")
    monkeypatch.setenv("OMS_AWS_PORT", "4567")
    stack = EmbeddedStack(seed=False)
    assert (stack._api_port_asked, stack._aws_port_asked) == (8081, 4567)


@pytest.mark.parametrize("value", ["no", "off", "yes", "2", "none", "paused"])
@pytest.mark.parametrize("variable", ["OMS_SEED", "OMS_EVENT_SOURCES"])
def test_a_make_run_switch_that_is_neither_on_nor_off_is_refused_at_start_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
):
    # Anything but 0/false/no/off was on: OMS_EVENT_SOURCES=paused ran every poller, silently.
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"^{variable} must be 1 or 0 \(or true or false\), got {value!r}"):
        EmbeddedStack(api_port=0, aws_port=0)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("OMS_EVENT_SOURCES", "paused", "OMS_EVENT_SOURCES must be 1 or 0 (or true or false), got 'paused'"),
        ("RECONCILE_AFTER_MINUTES", "5", "RECONCILE_AFTER_MINUTES: parameter ReconcileAfterMinutes must be at least 6"),
        # Refused once the stack starts (the schedules' pollers, the admin key's bootstrap): these
        # printed a traceback still, the admin key's without naming the variable.
        ("OMS_LOCAL_SCHEDULE_SECONDS", "0", "OMS_LOCAL_SCHEDULE_SECONDS must be a positive number of seconds, got '0'"),
        ("OMS_JEOPARDY_SCAN_SECONDS", "abc", "OMS_JEOPARDY_SCAN_SECONDS must be a positive number of seconds"),
        ("OMS_ADMIN_API_KEY", "short", "OMS_ADMIN_API_KEY must be 16 to 200 characters of A-Z, a-z, 0-9, '_' and '-'"),
        # A traceback from botocore's CreateQueue (`Can only include alphanumeric characters...`).
        ("OMS_STACK_NAME", "a/b", "OMS_STACK_NAME must be a lower-case letter, then lower-case letters, digits or"),
    ],
)
def test_make_run_refuses_a_setting_in_one_line_naming_it_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, named: str
):
    # make run printed a Python traceback, the setting's name in its last line, for a value it
    # refuses: a newcomer's first run now says it in one line and exits 2.
    from infra.local.__main__ import main

    monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # main's, kept out of the test process
    for name, free in (("OMS_PORT", "0"), ("OMS_AWS_PORT", "0"), ("OMS_SEED", "0")):
        monkeypatch.setenv(name, free)
    monkeypatch.setenv(variable, value)
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot start the local stack: ") and named in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_make_run_on_a_port_in_use_says_so_in_one_line_and_puts_the_process_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # The API's port taken (a second `make run`, another server on 8080): the stack has started
    # moto by then; main() stops it, names the variables to set and exits 1 (a path coverage of the
    # suite showed never run).
    from infra.local.__main__ import main

    monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # main's, kept out of the test process
    monkeypatch.setattr("signal.signal", lambda *_: None)  # Ctrl-C stays the test runner's
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for name, value in (("OMS_PORT", str(taken.getsockname()[1])), ("OMS_AWS_PORT", "0"), ("OMS_SEED", "0")):
            monkeypatch.setenv(name, value)
        environment = dict(os.environ)
        assert main() == 1
        port = taken.getsockname()[1]
    err = capsys.readouterr().err
    assert err.startswith("cannot start the local stack: ") and "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}: " in err  # which of the two ports
    assert err.endswith("(set OMS_PORT / OMS_AWS_PORT to free ports)\n") and err.count("\n") == 1
    assert dict(os.environ) == environment  # the stack's variables undone by its stop()


_THRESHOLD_DEFAULT = '  ReviewThreshold:\n    Type: String\n    Default: ""\n'


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        # A parameter without a Default was a KeyError traceback from deep in start() ("pass it in
        # parameter_overrides", an argument make run's user has no way to pass).
        (
            _THRESHOLD_DEFAULT,
            "  ReviewThreshold:\n    Type: String\n",
            "template parameter ReviewThreshold has no Default (used by Globals.Function.Environment.Variables"
            ".OMS_REVIEW_THRESHOLD): give it a Default in the template, or set OMS_REVIEW_THRESHOLD",
        ),
        # An edit that is not YAML was a yaml.parser traceback.
        ("\nResources:\n", "\nResources:\n  : [\n", "template.yaml is not valid YAML: did not find expected key"),
        ("\nResources:\n", "\nResources:\n\tOops: 1\n", "template.yaml is not valid YAML: found character that cannot"),
        # YAML, but no template: named before the guard walks it as one.
        ("\nResources:\n", "\nResourcez:\n", "template.yaml: not a CloudFormation template"),
        # A typo in a !Ref was a KeyError traceback from start() naming neither resource nor property.
        (
            "OMS_REVIEW_THRESHOLD: !Ref ReviewThreshold",
            "OMS_REVIEW_THRESHOLD: !Ref ReviewThreshhold",
            "Globals.Function.Environment.Variables.OMS_REVIEW_THRESHOLD: cannot resolve !Ref ReviewThreshhold",
        ),
        (
            "WEBHOOK_QUEUE_URL: !Ref WebhookDeliveryQueue  # POST",
            "WEBHOOK_QUEUE_URL: !Ref WebhookDeliveryQeue  # POST",
            "ApiFunction.Environment.Variables.WEBHOOK_QUEUE_URL: cannot resolve !Ref WebhookDeliveryQeue",
        ),
    ],
    ids=["no Default", "not YAML", "a tab", "not a template", "a Globals !Ref typo", "a function's !Ref typo"],
)
def test_make_run_refuses_a_template_mistake_in_one_line_naming_it_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str, named: str
):
    from infra.local.__main__ import main

    path = tmp_path / "template.yaml"
    text = DEFAULT_TEMPLATE.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    (tmp_path / "infra").mkdir()  # the state machines' DefinitionUri is relative to the template
    for definition in DEFAULT_TEMPLATE.parent.glob("infra/*.asl.json"):
        shutil.copy(definition, tmp_path / "infra")
    monkeypatch.setattr("infra.local.template.DEFAULT_TEMPLATE", path)  # what make run loads
    monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # main's, kept out of the test process
    monkeypatch.setattr("signal.signal", lambda *_: None)  # Ctrl-C stays the test runner's
    for name, free in (("OMS_PORT", "0"), ("OMS_AWS_PORT", "0"), ("OMS_SEED", "0")):
        monkeypatch.setenv(name, free)
    assert main() == 2
    err = capsys.readouterr().err
    where = f"{tmp_path}/" if named.startswith("template.yaml") else ""  # the file's path, to open it
    assert err.startswith(f"cannot start the local stack: {where}{named}")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("during", ["the template's load", "start"])
def test_make_run_interrupted_while_starting_stops_without_a_banner_or_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, during: str
):
    # Ctrl-C during start() was taken (the handler only sets an event) and then the banner of a
    # ready stack printed anyway, its state file written, before it stopped; during the template's
    # load, before main installed its handlers, it was a KeyboardInterrupt traceback.
    import signal

    from infra.local import __main__ as make_run
    from infra.local.stack import EmbeddedStack

    handlers: dict[int, Any] = {}
    started: list[EmbeddedStack] = []
    load, start = Template.load.__func__, EmbeddedStack.start

    def interrupted_load(cls: type[Template], *args: Any, **kwargs: Any) -> Template:
        if during == "the template's load":
            handlers[signal.SIGINT](signal.SIGINT, None)
        return load(cls, *args, **kwargs)

    def interrupted_start(stack: EmbeddedStack) -> EmbeddedStack:
        started.append(stack)
        if during == "start":
            handlers[signal.SIGINT](signal.SIGINT, None)
        return start(stack)

    monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # main's, kept out of the test process
    monkeypatch.setattr("signal.signal", lambda signum, handler: handlers.setdefault(signum, handler))
    monkeypatch.setattr(Template, "load", classmethod(interrupted_load))
    monkeypatch.setattr(EmbeddedStack, "start", interrupted_start)
    state = tmp_path / "state.json"
    for name, value in (("OMS_PORT", "0"), ("OMS_AWS_PORT", "0"), ("OMS_SEED", "0"), ("OMS_STATE_FILE", str(state))):
        monkeypatch.setenv(name, value)
    environment = dict(os.environ)
    assert make_run.main() == 0
    assert capsys.readouterr() == ("stopped.\n", "")
    assert len(started) == (during == "start") and not state.exists()
    assert dict(os.environ) == environment  # a stack that started was stopped


@pytest.mark.parametrize("value", ["a/b", "1oms", "-oms", "Oms", "oms_local", "oms.local", "o" * 33])
def test_a_stack_name_a_deploy_refuses_is_refused_at_start_by_its_variable(monkeypatch: pytest.MonkeyPatch, value: str):
    # CloudFormation takes a letter, then letters, digits and hyphens; the imports bucket the
    # template names `<stack>-imports-<account>-<region>` takes lower case, 63 characters in all.
    # `Oms` and 33 characters started here and failed only on a deploy.
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_STACK_NAME", value)
    with pytest.raises(ValueError, match=rf"^OMS_STACK_NAME must be a lower-case letter, .* got {value!r}$"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)


@pytest.mark.parametrize("value", ["oms", "oms-local", "o2-eu", "o" * 32])
def test_a_stack_name_a_deploy_takes_names_the_local_resources(monkeypatch: pytest.MonkeyPatch, value: str):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_STACK_NAME", value)
    assert EmbeddedStack(api_port=0, aws_port=0, seed=False).stack_name == value


@pytest.mark.parametrize(("value", "on"), [("1", True), ("0", False), (" TRUE ", True), ("False", False), ("", True)])
def test_a_make_run_switch_is_taken_as_on_or_off(monkeypatch: pytest.MonkeyPatch, value: str, on: bool):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_SEED", value)
    monkeypatch.setenv("OMS_EVENT_SOURCES", value)
    stack = EmbeddedStack(api_port=0, aws_port=0)
    assert (stack.seed, stack.event_sources) == (on, on)


def test_a_schedule_of_one_minute_written_as_minutes_is_refused_by_check_template_and_make_run(tmp_path: Path, capsys):
    # ScheduleMinutes feeds `rate(${Minutes} minutes)`: 1 made `rate(1 minutes)`, which the SAM
    # transform and cfn-lint pass and EventBridge refuses at deploy (it wants `rate(1 minute)`).
    from infra.check_template import main
    from infra.local.event_sources import EventSourceError
    from infra.local.stack import EmbeddedStack

    one = "ReconcilerFunction: { Minutes: 1 }"
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_TEMPLATE.read_text().replace("ReconcilerFunction: { Minutes: 5 }", one, 1))
    assert one in bad.read_text()
    assert main([str(bad)]) == 1
    assert "ReconcilerFunction.EveryFiveMinutes: Schedule 'rate(1 minutes)'" in capsys.readouterr().err

    template = Template.load()
    template.document["Mappings"]["ScheduleMinutes"]["ReconcilerFunction"]["Minutes"] = 1
    with pytest.raises(EventSourceError, match=r"Schedule 'rate\(1 minutes\)': AWS wants rate\(1 minute\)"):
        EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False).start()


@pytest.mark.parametrize("schedule", ["cron(0/5 * * * ? *)", "cron(0 3 ? * MON-FRI *)"])
def test_check_template_and_make_run_refuse_a_cron_schedule_naming_why(tmp_path: Path, schedule: str):
    # A cron was taken and run at its times while the reconciler numbered its runs in its rate's
    # period: uneven gaps skipped passes' turns (tests/integration/test_local_schedule.py).
    # check_template's own schedule check (main reports what it finds: the rate(1 minutes) test above,
    # without a second SAM transform of the whole template here).
    from infra.check_template import schedule_problems
    from infra.local.event_sources import EventSourceError
    from infra.local.stack import EmbeddedStack

    rate = """Schedule: !Sub
              - "rate(${Minutes} minutes)"
              - Minutes: !FindInMap [ScheduleMinutes, ReconcilerFunction, Minutes]"""
    path = tmp_path / "template.yaml"
    path.write_text(DEFAULT_TEMPLATE.read_text().replace(rate, f"Schedule: '{schedule}'", 1))
    shutil.copytree(DEFAULT_TEMPLATE.parent / "infra", tmp_path / "infra", dirs_exist_ok=True)
    assert schedule in path.read_text()

    why = f"EveryFiveMinutes{{}}: Schedule '{schedule}': cron(...) is not emulated"
    [problem] = schedule_problems(path)
    assert problem.startswith("ReconcilerFunction." + why.format(""))
    with pytest.raises(EventSourceError) as refused:
        EmbeddedStack(template=Template.load(path), api_port=0, aws_port=0, seed=False).start()
    assert str(refused.value).startswith("ReconcilerFunction.Events." + why.format(" (Schedule)"))


@pytest.mark.parametrize("value", ["USD:0", "XYZ:5", "USD:10,USD:20"])
def test_a_review_threshold_a_deploy_refuses_is_refused_at_start_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
):
    # make run took them (as the pattern did) and the review plugin then failed to load.
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", value)
    with pytest.raises(
        ValueError, match=r"^OMS_REVIEW_THRESHOLD: parameter ReviewThreshold must match CURRENCY:AMOUNT"
    ):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)

    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:1000.123,JPY:10.5")
    assert EmbeddedStack(api_port=0, aws_port=0, seed=False).template.parameter("ReviewThreshold") == (
        "USD:1000.123,JPY:10.5"
    )


def test_a_variable_two_functions_set_to_two_parameters_is_both_when_set_in_the_shell(monkeypatch: pytest.MonkeyPatch):
    # parameter_variables kept one parameter per name (the last function's), while the exported
    # environment keeps the first function's value: the shell's value set a parameter whose value
    # was never exported, and the functions ran on the template's default, silently.
    from infra.local.stack import EmbeddedStack

    template = Template.load()
    jeopardy = template.document["Resources"]["JeopardyScanFunction"]["Properties"]["Environment"]["Variables"]
    jeopardy["OMS_RETURN_WINDOW_DAYS"] = {"Ref": "ReturnExpiryDays"}  # the API function's is ReturnWindowDays
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "12")

    stack = EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False)
    assert (stack.template.parameter("ReturnWindowDays"), stack.template.parameter("ReturnExpiryDays")) == ("12", "12")


def test_two_variables_setting_one_parameter_to_two_values_are_refused_naming_both(monkeypatch: pytest.MonkeyPatch):
    from infra.local.stack import EmbeddedStack

    template = Template.load()
    jeopardy = template.document["Resources"]["JeopardyScanFunction"]["Properties"]["Environment"]["Variables"]
    jeopardy["OMS_SLA_TOO"] = {"Ref": "Sla"}
    monkeypatch.setenv("OMS_SLA", "allocated=1h")
    monkeypatch.setenv("OMS_SLA_TOO", "allocated=1h")
    assert (
        EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False).template.parameter("Sla") == "allocated=1h"
    )

    monkeypatch.setenv("OMS_SLA_TOO", "allocated=2h")
    with pytest.raises(
        ValueError, match=r"^OMS_SLA='allocated=1h' and OMS_SLA_TOO='allocated=2h' both set parameter Sla"
    ):
        EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False)


def test_a_variable_the_template_sets_to_a_parameter_through_fn_sub_alone_is_taken_as_that_parameter(
    monkeypatch: pytest.MonkeyPatch,
):
    # `!Sub "${Sla}"` is `!Ref Sla`: make run exported the template's value over the shell's.
    from infra.local.stack import EmbeddedStack

    template = Template.load()
    jeopardy = template.document["Resources"]["JeopardyScanFunction"]["Properties"]["Environment"]["Variables"]
    jeopardy["OMS_DEADLINES"] = {"Fn::Sub": "${Sla}"}
    monkeypatch.setenv("OMS_DEADLINES", "allocated=1h")

    stack = EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False)

    assert stack.template.parameter_overrides["Sla"] == "allocated=1h"
    monkeypatch.setenv("OMS_DEADLINES", "allocated=0h")
    with pytest.raises(ValueError, match=r"^OMS_DEADLINES: parameter Sla must match"):
        EmbeddedStack(template=template, api_port=0, aws_port=0, seed=False)


def test_a_variable_two_functions_resolve_differently_keeps_the_first_with_a_warning(
    caplog: pytest.LogCaptureFixture,
):
    # One process holds one value of a variable two functions resolve differently.
    function = {"Type": "AWS::Serverless::Function", "Properties": {"Handler": "x.y"}}
    document = {
        "Parameters": {"Stage": {"Type": "String", "Default": "v1"}},
        "Resources": {
            name: {**function, "Properties": {"Handler": "x.y", "Environment": {"Variables": variables}}}
            for name, variables in (("A", {"STAGE": {"Ref": "Stage"}}), ("B", {"STAGE": {"Fn::Sub": "${Stage}-b"}}))
        },
    }

    with caplog.at_level("WARNING", logger="infra.local.stack"):
        environment = Resources(Template(document)).environment()

    assert environment["STAGE"] == "v1"
    assert "B: STAGE='v1-b' differs from 'v1'; keeping the first" in caplog.text


def test_make_run_interrupted_while_its_modules_load_stops_without_a_traceback():
    # A Ctrl-C in make run's first half second, while moto and the stack's modules imported, was
    # a KeyboardInterrupt traceback: main's handlers were not installed yet. The signal is sent
    # from inside the import of infra.local.stack, so it lands there whatever the machine's speed.
    script = """
import importlib.abc, os, runpy, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "infra.local.stack":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["infra.local"]
runpy.run_module("infra.local", run_name="__main__", alter_sys=True)
"""
    environment = {**os.environ, "OMS_PORT": "0", "OMS_AWS_PORT": "0", "OMS_SEED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environment, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped.\n", "")
