"""Each state machine's own role (as the SAM transform writes it) against what its ASL's tasks call:
a Lambda task invokes its function, a service integration (`arn:aws:states:::dynamodb:putItem`,
`sqs:sendMessage`, `states:startExecution`, `lambda:invoke`) calls that service as the role. moto's
interpreter runs the definition without IAM, so a task the role may not call passed every local
test and failed every execution on AWS (States.TaskFailed, AccessDenied)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.check_template import translate
from infra.local.template import Template, load_template
from tests.template_iam import actions, like, listed

Need = tuple[str, str, str]  # (IAM action, template resource, the part of it: "" or index/<name>)


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate(load_template())


def translate_machines(template: dict[str, Any]) -> dict[str, Any]:
    """translate() of `template` with its other SAM resources (the functions, the API, the layer)
    left out: a state machine's role is made from its own properties, and the whole template's
    transform took ~2.5 s of each test. The first test checks the roles come out the same."""
    kept = copy.deepcopy(template)
    kept["Resources"] = {
        name: resource
        for name, resource in kept["Resources"].items()
        if not resource["Type"].startswith("AWS::Serverless::") or resource["Type"] == "AWS::Serverless::StateMachine"
    }
    return translate(kept)


def tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Task state, those of a Parallel's branches and a Map's iterator included."""
    for name, state in states.items():
        if state.get("Type") == "Task":
            yield name, state
        for branch in state.get("Branches", []):
            yield from tasks(branch["States"])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from tasks(state[key]["States"])


def _named(value: Any, machine: dict[str, Any]) -> str:
    """The template resource a task's ARN, name or URL names: one of the machine's
    DefinitionSubstitutions (substituted as `@{Name}`), which must be a Ref or a GetAtt of it."""
    found = re.fullmatch(r"@\{(\w+)\}", value) if isinstance(value, str) else None
    assert found, f"a task's target this test cannot read: {value!r} (name it through DefinitionSubstitutions)"
    intrinsic = machine["DefinitionSubstitutions"][found[1]]
    if "Ref" in intrinsic:
        return intrinsic["Ref"]
    assert "Fn::GetAtt" in intrinsic, f"a substitution this test cannot read: {intrinsic}"
    return intrinsic["Fn::GetAtt"][0]


# Step Functions' optimized integrations: the IAM action each calls, and the parameter naming its target.
_INTEGRATIONS = {
    "lambda:invoke": ("lambda:InvokeFunction", "FunctionName"),
    "dynamodb:getItem": ("dynamodb:GetItem", "TableName"),
    "dynamodb:putItem": ("dynamodb:PutItem", "TableName"),
    "dynamodb:updateItem": ("dynamodb:UpdateItem", "TableName"),
    "dynamodb:deleteItem": ("dynamodb:DeleteItem", "TableName"),
    "sqs:sendMessage": ("sqs:SendMessage", "QueueUrl"),
    "states:startExecution": ("states:StartExecution", "StateMachineArn"),
}


def needs(machine: dict[str, Any], definition: dict[str, Any]) -> dict[str, set[Need]]:
    """What each task of `definition` calls as the machine's role, by state name."""
    found = {}
    for name, state in tasks(definition["States"]):
        resource = state["Resource"]
        if not resource.startswith("arn:aws:states:::"):
            found[name] = {("lambda:InvokeFunction", _named(resource, machine), "")}
            continue
        integration = re.sub(r"\.(sync(:2)?|waitForTaskToken)$", "", resource.removeprefix("arn:aws:states:::"))
        assert integration in _INTEGRATIONS, f"{name}: an integration this test cannot read: {resource}"
        action, target = _INTEGRATIONS[integration]
        parameters = state.get("Parameters") or {}
        assert target in parameters, f"{name}: {resource} names its {target} at run time: this test cannot read it"
        assert not (integration == "states:startExecution" and resource.endswith((".sync", ".sync:2"))), (
            f"{name}: {resource} also needs grants on its executions and a managed rule: this test cannot read them"
        )
        need = {(action, _named(parameters[target], machine), "")}
        found[name] = need
    return found


def _covers(resource: Any, need: Need) -> bool:
    """Whether a role statement's `resource` (as the SAM transform writes it) covers `need`'s."""
    _, logical, part = need
    if resource == "*":
        return True
    if not isinstance(resource, dict):
        return False
    if "Fn::GetAtt" in resource or "Ref" in resource:
        return (resource.get("Ref") or resource["Fn::GetAtt"][0]) == logical and part == ""
    text, variables = (resource["Fn::Sub"], {}) if isinstance(resource["Fn::Sub"], str) else resource["Fn::Sub"]
    # A policy template's ARN: `...:function:${functionName}*`, `...:table/${tableName}`, ...
    for variable, value in variables.items():
        if value == {"Ref": logical} or (isinstance(value, dict) and value.get("Fn::GetAtt", [None])[0] == logical):
            suffix = text.split(f"${{{variable}}}", 1)[1]
            return like(f"/{part}" if part else "", suffix) or suffix == "*"
    named = re.match(r"\$\{(\w+)(\.Arn)?\}(.*)", text)
    # Matched from the separator on: `${Table.Arn}/*` is the table's indexes, never the table.
    return bool(named) and named[1] == logical and like(f"/{part}" if part else "", named[3])


def granted_to(role: dict[str, Any], need: Need) -> bool:
    statements = [s for policy in role["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]
    for statement in statements:
        assert statement["Effect"] == "Allow" and "Condition" not in statement, f"cannot read: {statement}"
        if any(need[0] in actions(a) for a in listed(statement["Action"])) and any(
            _covers(r, need) for r in listed(statement["Resource"])
        ):
            return True
    return False


def machine_needs(machine: dict[str, Any]) -> dict[str, set[Need]]:
    """needs() of a template's state machine, its definition read from its DefinitionUri."""
    placeholders = {name: f"@{{{name}}}" for name in machine.get("DefinitionSubstitutions") or {}}
    return needs(machine, Template.load().state_machine_definition(machine, placeholders))


def problems(template: dict[str, Any], translated: dict[str, Any]) -> list[str]:
    """Every task call a state machine's role does not grant, as `<machine>.<state>: <action> on <resource>`."""
    found = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::StateMachine":
            continue
        role = translated["Resources"][f"{logical}Role"]
        for state, calls in machine_needs(resource["Properties"]).items():
            found += [
                f"{logical}.{state}: {action} on {target}"
                for action, target, _ in sorted(calls)
                if not granted_to(role, (action, target, ""))
            ]
    return found


def test_every_task_of_every_state_machine_is_one_its_role_may_call(translated: dict[str, Any]):
    template = load_template()
    machines = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::StateMachine"]
    assert sum(len(machine_needs(m)) for m in machines) == 12  # the order workflow's 6 Lambda tasks, the returns' 6

    assert problems(template, translated) == []
    roles = [f"{name}Role" for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::StateMachine"]
    alone = translate_machines(template)
    assert {role: alone["Resources"][role] for role in roles} == {role: translated["Resources"][role] for role in roles}


@pytest.mark.parametrize("function", ["ParkOrderFunction", "CancelOrderFunction"])
def test_a_lambda_task_whose_function_the_role_may_not_invoke_is_found(function: str):
    template = load_template()
    policies = template["Resources"]["OrderWorkflow"]["Properties"]["Policies"]
    policies.remove({"LambdaInvokePolicy": {"FunctionName": {"Ref": function}}})

    found = problems(template, translate_machines(template))

    state = function.removesuffix("Function")
    assert found == [f"OrderWorkflow.{state}: lambda:InvokeFunction on {function}"]


def a_machine(tmp_path: Path, policies: list[Any], **tasks: dict[str, Any]) -> dict[str, Any]:
    """The template with one more state machine, FakeWorkflow: `tasks` one after the other."""
    names = list(tasks)
    states = {
        name: {**task, "Type": "Task", **({"Next": names[i + 1]} if i + 1 < len(names) else {"End": True})}
        for i, (name, task) in enumerate(tasks.items())
    }
    definition = tmp_path / "fake.asl.json"
    definition.write_text(json.dumps({"StartAt": names[0], "States": states}))
    template = load_template()
    template["Resources"]["FakeWorkflow"] = {
        "Type": "AWS::Serverless::StateMachine",
        "Properties": {
            "Type": "EXPRESS",
            "DefinitionUri": str(definition),
            "DefinitionSubstitutions": {
                "Table": {"Ref": "OrdersTable"},
                "Queue": {"Ref": "WebhookDeliveryQueue"},
                "Machine": {"Ref": "ReturnWorkflow"},
                "Step": {"Fn::GetAtt": ["ReturnStepFunction", "Arn"]},
            },
            "Policies": policies,
        },
    }
    return template


SERVICE_TASKS = {
    "Put": {"Resource": "arn:aws:states:::dynamodb:putItem", "Parameters": {"TableName": "${Table}", "Item": {}}},
    "Send": {"Resource": "arn:aws:states:::sqs:sendMessage", "Parameters": {"QueueUrl": "${Queue}", "MessageBody": ""}},
    "Start": {"Resource": "arn:aws:states:::states:startExecution", "Parameters": {"StateMachineArn": "${Machine}"}},
    "Invoke": {"Resource": "arn:aws:states:::lambda:invoke", "Parameters": {"FunctionName": "${Step}"}},
    "Direct": {"Resource": "${Step}"},
}  # fmt: skip


def test_a_service_integration_is_checked_against_the_roles_statements_by_action_and_resource(tmp_path: Path):
    granted = [
        {"DynamoDBWritePolicy": {"TableName": {"Ref": "InventoryTable"}}},  # another table
        {"SQSSendMessagePolicy": {"QueueName": {"Fn::GetAtt": ["WebhookDeliveryQueue", "QueueName"]}}},
        {"Statement": [{"Effect": "Allow", "Action": "states:Describe*", "Resource": {"Ref": "ReturnWorkflow"}}]},
        {"LambdaInvokePolicy": {"FunctionName": {"Ref": "ReturnStepFunction"}}},
    ]
    template = a_machine(tmp_path, granted, **SERVICE_TASKS)

    assert problems(template, translate_machines(template)) == [
        "FakeWorkflow.Put: dynamodb:PutItem on OrdersTable",
        "FakeWorkflow.Start: states:StartExecution on ReturnWorkflow",
    ]


@pytest.mark.parametrize(
    "task",
    [
        {"Resource": "arn:aws:states:::aws-sdk:dynamodb:query", "Parameters": {"TableName": "${Table}"}},
        {"Resource": "arn:aws:states:::states:startExecution.sync:2", "Parameters": {"StateMachineArn": "${Machine}"}},
        {"Resource": "arn:aws:states:::dynamodb:putItem", "Parameters": {"TableName.$": "$.table"}},
        {"Resource": "arn:aws:lambda:us-east-1:123456789012:function:elsewhere"},
    ],
)
def test_a_task_this_test_cannot_read_fails_it_naming_the_state(tmp_path: Path, task: dict[str, Any]):
    template = a_machine(tmp_path, [], Odd=task)

    with pytest.raises(AssertionError, match=r"Odd|cannot read"):
        problems(template, translate_machines(template))


@pytest.mark.parametrize(("path", "granted"), [("/*", False), ("/index/*", False), ("", True), ("*", True)])
def test_a_resource_wildcard_after_a_tables_arn_is_matched_from_the_separator_as_iam_does(
    tmp_path: Path, path: str, granted: bool
):
    # `${OrdersTable.Arn}/*` names the table's indexes, never the table (arn:...:table/orders is not
    # arn:...:table/orders/*): the "/" was cut before matching and `*` covered a PutItem of the table.
    statement = {
        "Effect": "Allow",
        "Action": "dynamodb:PutItem",
        "Resource": {"Fn::Sub": f"${{OrdersTable.Arn}}{path}"},
    }
    template = a_machine(tmp_path, [{"Statement": [statement]}], Put=SERVICE_TASKS["Put"])

    found = problems(template, translate_machines(template))

    assert found == ([] if granted else ["FakeWorkflow.Put: dynamodb:PutItem on OrdersTable"])
