"""Usage plans in template.yaml, read from the SAM transform's output where SAM decides: every method
the authorizer guards requires an API Gateway key (which the authorizer answers), the public ones do
not; a shared key in a plan of the stage's limits meters every key without one of its own; per-key
usage plans are an option, off by default."""

from __future__ import annotations

from typing import Any

import pytest

from infra.check_template import translate
from infra.local.template import Template, load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
PUBLIC = {("/health", "get"), ("/openapi.json", "get"), ("/docs", "get")}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate(load_template())


def rest_api(translated: dict[str, Any]) -> dict[str, Any]:
    (api,) = [r for r in translated["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    return api


def methods(translated: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    paths = rest_api(translated)["Properties"]["Body"]["paths"]
    return {(path, verb): spec for path, verbs in paths.items() for verb, spec in verbs.items()}


def schemes(spec: dict[str, Any]) -> set[str]:
    return {name for requirement in spec.get("security") or [] for name in requirement}


def test_the_api_reads_api_keys_from_the_authorizer(translated):
    assert rest_api(translated)["Properties"]["ApiKeySourceType"] == "AUTHORIZER"


def test_every_method_the_authorizer_guards_requires_an_api_key(translated):
    guarded = {where: spec for where, spec in methods(translated).items() if where not in PUBLIC}

    assert guarded and all(schemes(spec) == {"ApiKeyAuthorizer", "api_key"} for spec in guarded.values())
    # The carriers' tracking webhook takes a key like every guarded route.
    assert schemes(guarded[("/carriers/{carrier}/tracking", "post")]) == {"ApiKeyAuthorizer", "api_key"}


@pytest.mark.parametrize("where", sorted(PUBLIC))
def test_the_public_routes_require_neither_an_authorizer_nor_a_key(translated, where):
    assert schemes(methods(translated)[where]) == set()


def test_api_key_required_is_a_literal_sam_reads_as_written():
    # SAM evaluates no intrinsic there: an !If would read as true on every method.
    assert RESOURCES["OmsApi"]["Properties"]["Auth"]["ApiKeyRequired"] is True
    events = RESOURCES["ApiFunction"]["Properties"]["Events"]
    assert {events[name]["Properties"]["Auth"]["ApiKeyRequired"] for name in ("Health", "OpenApi", "Docs")} == {False}


def test_the_shared_key_is_in_a_plan_of_the_stages_limits_and_the_authorizer_answers_it():
    key, plan, member = RESOURCES["SharedApiKey"], RESOURCES["SharedUsagePlan"], RESOURCES["SharedUsagePlanKey"]
    authorizer = RESOURCES["AuthorizerFunction"]["Properties"]["Environment"]["Variables"]

    assert "Condition" not in key and "Condition" not in plan and "Condition" not in member
    assert key["Properties"]["Enabled"] is True
    assert authorizer["GATEWAY_SHARED_KEY"] == key["Properties"]["Value"]
    assert plan["Properties"]["ApiStages"] == [{"ApiId": {"Ref": "OmsApi"}, "Stage": {"Ref": "OmsApi.Stage"}}]
    assert plan["Properties"]["Throttle"] == {
        "RateLimit": {"Ref": "ApiRateLimit"},
        "BurstLimit": {"Ref": "ApiBurstLimit"},
    }
    assert member["Properties"] == {
        "KeyId": {"Ref": "SharedApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": "SharedUsagePlan"},
    }


def test_the_shared_keys_value_is_long_enough_for_api_gateway():
    # API Gateway refuses a key value of fewer than 20 characters.
    value = Template.load().resolve(RESOURCES["SharedApiKey"]["Properties"]["Value"])
    assert len(value) >= 20


def test_per_key_usage_plans_are_an_option_off_by_default():
    parameters, conditions = TEMPLATE["Parameters"], TEMPLATE["Conditions"]
    plan = RESOURCES["KeyUsagePlan"]

    assert parameters["KeyRateLimit"]["Default"] == "" and parameters["KeyQuotaPerDay"]["Default"] == ""
    assert conditions["PerKeyUsagePlansOn"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KeyRateLimit"}, ""]}]}
    assert plan["Condition"] == RESOURCES["ApiFunctionGatewayKeysPolicy"]["Condition"] == "PerKeyUsagePlansOn"
    assert plan["Properties"]["Throttle"] == {
        "RateLimit": {"Ref": "KeyRateLimit"},
        "BurstLimit": {"Ref": "KeyBurstLimit"},
    }
    assert plan["Properties"]["Quota"]["Fn::If"][:2] == [
        "KeyQuotaOn",
        {"Limit": {"Ref": "KeyQuotaPerDay"}, "Period": "DAY"},
    ]
    assert plan["Properties"]["ApiStages"] == RESOURCES["SharedUsagePlan"]["Properties"]["ApiStages"]


@pytest.mark.parametrize("function", ["ApiFunction", "AuthorizerFunction"])
def test_the_functions_know_the_per_key_plan_by_its_name_only_when_it_is_on(function):
    variable = RESOURCES[function]["Properties"]["Environment"]["Variables"]["GATEWAY_KEY_PLAN"]
    name = RESOURCES["KeyUsagePlan"]["Properties"]["UsagePlanName"]

    assert variable == {"Fn::If": ["PerKeyUsagePlansOn", name, ""]}
    assert Template.load().resolve(variable) == ""
    assert Template.load(parameter_overrides={"KeyRateLimit": "5"}).resolve(variable).endswith("-per-key")


def test_a_quota_used_up_is_a_429_in_the_contracts_shape_without_retry_after():
    import json

    response = RESOURCES["OmsApi"]["Properties"]["GatewayResponses"]["QUOTA_EXCEEDED"]
    assert response["StatusCode"] == "429"
    assert json.loads(response["ResponseTemplates"]["application/json"])["error"]["code"] == "quota_exceeded"
    assert "ResponseParameters" not in response


def test_the_local_runtime_refuses_an_intrinsic_in_api_key_required():
    # SAM reads an !If there as true on every method; `make run` refuses it rather than guess.
    document = load_template()
    events = document["Resources"]["ApiFunction"]["Properties"]["Events"]
    events["Health"]["Properties"]["Auth"]["ApiKeyRequired"] = {"Fn::If": ["PerKeyUsagePlansOn", True, False]}

    with pytest.raises(ValueError, match=r"Health: Auth\.ApiKeyRequired must be true or false"):
        Template(document).api_routes()


def test_the_local_gateway_requires_a_key_where_sam_does():
    routes = {(route.path, route.method): route.api_key_required for route in Template.load().api_routes()}

    assert {where for where, required in routes.items() if not required} == {
        (path, method.upper()) for path, method in PUBLIC
    }


@pytest.mark.parametrize("stack_name", ["oms", "oms-prod-eu", "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o"])
def test_the_shared_keys_value_is_letters_and_digits_unique_to_the_stack_whatever_its_name(stack_name):
    # API Gateway takes a key value of 20 to 128 characters, which its guides call alphanumeric; a
    # stack name may hold "-", so the value is the stack id's UUID without its hyphens.
    value = RESOURCES["SharedApiKey"]["Properties"]["Value"]
    resolved = Template(TEMPLATE, stack_name=stack_name).resolve(value)
    other = Template(TEMPLATE, stack_name=stack_name + "x").resolve(value)

    assert resolved.isalnum() and resolved.isascii() and 20 <= len(resolved) <= 128
    assert resolved != other
