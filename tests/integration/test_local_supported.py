"""The guard between template.yaml and the local runtime: every resource type and property the
template uses is emulated or ignored with a reason (infra/local/supported.py), and anything else
fails startup naming the resource and the property."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.local import supported
from infra.local.supported import EMULATED, SUPPORTED, ByType, Each, UnsupportedTemplate, unsupported
from infra.local.template import DEFAULT_TEMPLATE, Template, load_template

TEMPLATE = load_template()


def _rules(table: Any) -> list[Any]:
    """Every rule in a table, nested ones included."""
    if isinstance(table, Each):
        return _rules(table.table)
    if isinstance(table, ByType):
        return [rule for nested in table.tables.values() for rule in _rules(nested)]
    if isinstance(table, dict):
        return [rule for value in table.values() for rule in [value, *_rules(value)]]
    return []


def test_every_rule_is_emulated_a_value_set_a_nested_table_or_ignored_with_a_reason():
    tables = [*SUPPORTED.values(), supported.RESOURCE_ATTRIBUTES, supported.SECTIONS]
    rules = [rule for table in tables for rule in [table, *_rules(table)]]
    for rule in rules:
        if isinstance(rule, str):
            assert rule == EMULATED or (rule.startswith("ignored: ") and len(rule) > len("ignored: ") + 10), rule
        else:
            assert isinstance(rule, frozenset | dict | Each | ByType) and rule, rule


def test_every_resource_type_and_property_of_template_yaml_is_emulated_or_ignored_with_a_reason():
    """Walked here without the guard's own code: each type, each top-level property, each event
    type and each event property of template.yaml has its entry; then the guard, which also walks
    the nested objects, finds nothing either."""
    seen = 0
    for logical_id, resource in TEMPLATE["Resources"].items():
        table = SUPPORTED.get(resource["Type"])
        assert table is not None, f"{logical_id}: {resource['Type']} is not in infra/local/supported.py"
        if isinstance(table, str):
            assert table.startswith("ignored: "), (logical_id, table)
            continue
        for name, value in (resource.get("Properties") or {}).items():
            assert name in table, f"{logical_id}.{name} is not in infra/local/supported.py"
            seen += 1
            if name == "Events":
                for event_name, event in value.items():
                    event_table = table["Events"].tables.get(event["Type"])
                    assert event_table is not None, f"{logical_id}.Events.{event_name}: {event['Type']}"
                    for prop in event.get("Properties") or {}:
                        assert prop in event_table, f"{logical_id}.Events.{event_name}.{prop}"
                        seen += 1
        for attribute in set(resource) - {"Type", "Properties"}:
            assert attribute in supported.RESOURCE_ATTRIBUTES, f"{logical_id}: {attribute}"
    assert seen > 400  # the walk really went through the template (428 when written)
    assert unsupported(TEMPLATE) == []


def _rows(rule: Any, path: str) -> set[str]:
    """Every row of a table by its path: a property, an event type, a value of a value set."""
    if isinstance(rule, frozenset):
        return {f"{path}={value.upper()}" for value in rule}
    if isinstance(rule, Each):
        return _rows(rule.table, f"{path}.*")
    tables = rule.tables if isinstance(rule, ByType) else rule if isinstance(rule, dict) else {}
    return {row for key, nested in tables.items() for row in {f"{path}.{key}", *_rows(nested, f"{path}.{key}")}}


def _used(value: Any, rule: Any, path: str) -> set[str]:
    """The rows of `rule` that `value`, a part of the template, uses (named as _rows names them)."""
    if isinstance(value, list):
        return {row for item in value for row in _used(item, rule, path)}
    if isinstance(rule, frozenset):
        return {f"{path}={str(value).upper()}"}
    if isinstance(rule, Each):
        return {row for item in value.values() for row in _used(item, rule.table, f"{path}.*")}
    if isinstance(rule, ByType):  # each event as {Type: Properties}
        return {row for e in value.values() for row in _used({e["Type"]: e.get("Properties") or {}}, rule.tables, path)}
    if not isinstance(rule, dict):
        return set()
    return {row for key, item in value.items() for row in {f"{path}.{key}", *_used(item, rule[key], f"{path}.{key}")}}


# Rows template.yaml does not use that the event-source tests' own template does (their mappings
# start at LATEST; their upload consumer filters by suffix): the code is event_sources.py's.
USED_BY_THE_EVENT_SOURCE_TESTS = {
    "AWS::Serverless::Function.Events.DynamoDB.StartingPosition=LATEST",
    "AWS::Serverless::Function.Events.S3.Filter.S3Key.Rules.Name=SUFFIX",
}


def test_every_row_of_the_tables_is_used_by_template_yaml():
    """The other direction: the runtime claims nothing template.yaml does not use, so a row the
    template stopped using (and the code behind it) does not linger. A function's rows count what
    Globals gives it."""
    functions = Template(TEMPLATE).functions()
    rows = _rows(supported.SECTIONS, "template") | {*SUPPORTED}
    used = _used(TEMPLATE, supported.SECTIONS, "template")
    for kind, table in SUPPORTED.items():
        rows |= _rows(table, kind)
    rows |= {f"{kind} parameter: {key}" for kind, keys in supported.PARAMETERS.items() for key in keys}
    rows |= {f"attribute {name}" for name in supported.RESOURCE_ATTRIBUTES}
    for logical_id, resource in TEMPLATE["Resources"].items():
        kind, table = resource["Type"], SUPPORTED[resource["Type"]]
        used.add(kind)
        if isinstance(table, dict):
            used |= _used(functions.get(logical_id) or resource.get("Properties") or {}, table, kind)
            used |= {f"attribute {name}" for name in set(resource) - {"Type", "Properties"}}
    used |= {f"{p['Type']} parameter: {key}" for p in TEMPLATE["Parameters"].values() for key in p}
    assert rows - used == USED_BY_THE_EVENT_SOURCE_TESTS, "rows of infra/local/supported.py template.yaml does not use"


def _add(resource: str, path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target = document["Resources"].setdefault(resource, {"Type": value, "Properties": {}})
        if path:
            *parents, last = path.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            _add("OrdersTable", "Properties.LocalSecondaryIndexes", []),
            "OrdersTable (AWS::DynamoDB::Table): property LocalSecondaryIndexes is not emulated",
        ),
        (
            _add("OrdersTable", "Properties.BillingMode", "PROVISIONED"),
            "OrdersTable (AWS::DynamoDB::Table).BillingMode: 'PROVISIONED' is not emulated (only PAY_PER_REQUEST)",
        ),
        (
            _add("ImportQueue", "Properties.FifoQueue", True),
            "ImportQueue (AWS::SQS::Queue): property FifoQueue is not emulated",
        ),
        (
            _add("LabelsBucket", "Properties.NotificationConfiguration", {}),
            "LabelsBucket (AWS::S3::Bucket): property NotificationConfiguration is not emulated",
        ),
        (
            _add("OmsApi", "Properties.Auth.Authorizers.ApiKeyAuthorizer.FunctionPayloadType", "TOKEN"),
            "OmsApi (AWS::Serverless::Api).Auth.Authorizers.ApiKeyAuthorizer.FunctionPayloadType: 'TOKEN' is not "
            "emulated (only REQUEST)",
        ),
        (
            _add("ApiFunction", "Properties.Events.Health.Properties.Method", "ANY"),
            "ApiFunction (AWS::Serverless::Function).Events.Health.Method: 'ANY' is not emulated",
        ),
        (
            _add("AccessLogFunction", "Properties.Events.AccessLogQueue.Properties.FilterCriteria", {}),
            "AccessLogFunction (AWS::Serverless::Function).Events.AccessLogQueue: property FilterCriteria is not "
            "emulated",
        ),
        (
            _add("ReconcilerFunction", "Properties.Events.EveryFiveMinutes.Properties.State", "DISABLED"),
            "ReconcilerFunction (AWS::Serverless::Function).Events.EveryFiveMinutes: property State is not emulated",
        ),
        (
            _add("OutboxFunction", "Properties.Events.Kinesis", {"Type": "Kinesis", "Properties": {}}),
            "OutboxFunction (AWS::Serverless::Function).Events.Kinesis: event type 'Kinesis' is not emulated",
        ),
        (
            _add("OrderWorkflow", "Properties.Definition", {"StartAt": "A", "States": {}}),
            "OrderWorkflow (AWS::Serverless::StateMachine): property Definition is not emulated",
        ),
        # An intrinsic Template.resolve does not evaluate, in an emulated property: refused here,
        # not a KeyError once the stack is half built.
        (
            _add("ApiFunction", "Properties.Environment.Variables.GREETING", {"Fn::Base64": "ab"}),
            "ApiFunction (AWS::Serverless::Function).Environment.Variables.GREETING: Fn::Base64 is not evaluated "
            "locally (only Ref, Fn::GetAtt, Fn::FindInMap, Fn::Sub, Fn::Join, Fn::Split, Fn::Select and Fn::If)",
        ),
        (
            _add("OrdersTable", "DependsOn", "ImportQueue"),
            "OrdersTable (AWS::DynamoDB::Table): property DependsOn is not emulated",
        ),
        (
            _add(
                "ApiFunction",
                "Properties.Environment.Variables.GREETING",
                {"Fn::Sub": ["${A}", {"A": {"Fn::GetAZs": ""}}]},
            ),
            "ApiFunction (AWS::Serverless::Function).Environment.Variables.GREETING.Fn::Sub[1].A: Fn::GetAZs is not "
            "evaluated locally",
        ),
        (
            _add("Mapping", "", "AWS::Lambda::EventSourceMapping"),
            "Mapping (AWS::Lambda::EventSourceMapping): resource type not emulated",
        ),
        # A value where the table expects an object: named, not an AttributeError from the walk.
        (
            _add("OrdersTable", "Properties.StreamSpecification", "NEW_IMAGE"),
            "OrdersTable (AWS::DynamoDB::Table).StreamSpecification: expected an object, got 'NEW_IMAGE'",
        ),
    ],
)
def test_a_template_using_what_the_runtime_does_not_emulate_fails_naming_resource_and_property(
    change: Callable[[dict[str, Any]], None], problem: str
):
    document = copy.deepcopy(TEMPLATE)
    change(document)
    problems = unsupported(document)
    assert any(found.startswith(problem) for found in problems), problems
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    ("parameter", "declared", "problem"),
    [
        ("Sla", {"MaxLength": 200}, "parameter Sla: property MaxLength is not emulated"),
        ("HoldExpiryDays", {"MinLength": 1}, "parameter HoldExpiryDays: property MinLength is not emulated"),
        ("ImportQueueSenders", {"AllowedPattern": ".*"}, "parameter ImportQueueSenders: property AllowedPattern"),
        ("Secret", {"Type": "AWS::SSM::Parameter::Value<String>"}, "parameter Secret: type 'AWS::SSM::"),
        # A secret's value would be shown in make run's messages and warnings.
        ("Sla", {"NoEcho": True}, "parameter Sla: property NoEcho is not emulated"),
    ],
)
def test_a_parameter_constraint_make_run_does_not_check_fails_naming_parameter_and_property(
    parameter: str, declared: dict[str, Any], problem: str
):
    # template.parameter_refused checks what supported.PARAMETERS names and nothing else: another
    # constraint would be a deploy's refusal `make run` took without a word.
    document = copy.deepcopy(TEMPLATE)
    document["Parameters"][parameter] = {**document["Parameters"].get(parameter, {"Type": "String"}), **declared}
    problems = unsupported(document)
    assert len(problems) == 1 and problem in problems[0], problems


def test_startup_fails_before_anything_is_created(tmp_path: Path):
    from infra.local.stack import EmbeddedStack

    document = copy.deepcopy(TEMPLATE)
    document["Resources"]["OrdersTable"]["Properties"]["LocalSecondaryIndexes"] = []
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(UnsupportedTemplate) as caught:
        EmbeddedStack(template=path, api_port=0, aws_port=0)
    assert "OrdersTable (AWS::DynamoDB::Table): property LocalSecondaryIndexes is not emulated" in str(caught.value)
    with pytest.raises(UnsupportedTemplate):
        Template.load(path)


def test_the_template_check_reports_it_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from infra.check_template import main

    text = DEFAULT_TEMPLATE.read_text().replace(
        "      BillingMode: PAY_PER_REQUEST\n", "      BillingMode: PROVISIONED\n", 1
    )
    path = tmp_path / "template.yaml"
    path.write_text(text)
    assert main([str(path)]) == 1
    assert "'PROVISIONED' is not emulated (only PAY_PER_REQUEST)" in capsys.readouterr().err


# --- Conditions: an emulated resource created only when its condition holds, Fn::If's branch ----------
def _conditional(zone: str) -> Template:
    document = {
        "Parameters": {"Zone": {"Type": "String", "Default": ""}, "Other": {"Type": "String", "Default": "x"}},
        "Conditions": {
            "HasZone": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Zone"}, ""]}]},
            "ZoneAndOther": {"Fn::And": [{"Condition": "HasZone"}, {"Fn::Equals": ["x", {"Ref": "Other"}]}]},
            "Joined": {"Fn::Equals": [{"Fn::Base64": "a"}, "YQ=="]},
        },
        "Resources": {
            "Plain": {"Type": "AWS::S3::Bucket", "Properties": {}},
            "Zonal": {"Type": "AWS::S3Express::DirectoryBucket", "Condition": "HasZone", "Properties": {}},
        },
    }
    return Template(document, parameter_overrides={"Zone": zone} if zone else {})


def test_a_resource_whose_condition_is_false_is_not_created_and_one_whose_condition_holds_is():
    assert list(_conditional("").properties("AWS::S3Express::DirectoryBucket")) == []
    assert list(_conditional("use1-az4").properties("AWS::S3Express::DirectoryBucket")) == ["Zonal"]
    assert list(_conditional("").properties("AWS::S3::Bucket")) == ["Plain"]


def test_fn_if_resolves_only_the_branch_its_condition_picks():
    value = {"Fn::If": ["HasZone", {"Ref": "Zonal"}, {"Ref": "Plain"}]}

    # The branch not taken names a resource that does not exist: never resolved.
    assert _conditional("").resolve(value, refs={"Plain": "plain-bucket"}) == "plain-bucket"
    assert _conditional("use1-az4").resolve(value, refs={"Zonal": "zonal--use1-az4--x-s3"}) == "zonal--use1-az4--x-s3"


def test_a_condition_the_runtime_cannot_evaluate_fails_naming_it():
    from infra.local.template import Unresolved

    with pytest.raises(Unresolved, match="Fn::Base64 is not evaluated locally"):
        _conditional("").condition("Joined")
    # Only what template.yaml's conditions use is evaluated (Fn::Equals, Fn::Not): not Fn::And,
    # Fn::Or or a condition by name.
    with pytest.raises(Unresolved, match=r"condition ZoneAndOther: .*Fn::And.* is not evaluated locally"):
        _conditional("use1-az4").condition("ZoneAndOther")
    with pytest.raises(Unresolved, match="condition Missing is not in the template's Conditions"):
        _conditional("").condition("Missing")
