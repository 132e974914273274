"""Observability as declared: log retention, workflow tracing, the steps' trace, the README's metrics."""

import json
import re
from pathlib import Path

from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
ASL = json.loads((ROOT / "infra" / "order_workflow.asl.json").read_text())


def _of_type(resource_type: str) -> dict[str, dict]:
    return {name: res for name, res in RESOURCES.items() if res["Type"] == resource_type}


def test_every_function_writes_to_a_log_group_of_the_stack_with_the_retention_parameter():
    groups = {
        res["Properties"].get("LogGroupName", {}).get("Fn::Sub"): res["Properties"]
        for res in _of_type("AWS::Logs::LogGroup").values()
    }
    functions = _of_type("AWS::Serverless::Function")
    assert functions
    for name in functions:
        group = groups.get(f"/aws/lambda/${{{name}}}")
        assert group is not None, f"{name} has no log group named /aws/lambda/<its name>"
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_the_state_machine_is_traced_and_logs_with_the_retention_parameter():
    for name, machine in _of_type("AWS::Serverless::StateMachine").items():
        props = machine["Properties"]
        assert props["Tracing"] == {"Enabled": True}, name
        for destination in props["Logging"]["Destinations"]:
            group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
            assert RESOURCES[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_a_state_machine_logs_to_a_group_under_aws_vendedlogs():
    # Step Functions adds each log group it delivers to to the account's CloudWatch Logs resource
    # policy, which holds 5,120 characters; near it, CloudWatch Logs lets only groups under
    # /aws/vendedlogs/ through. The workflows' groups had generated names, so a deploy in an account
    # with a few stacks (or other vended logs) failed to create its state machines, or their logs
    # stopped: AWS's advice is a name under /aws/vendedlogs/states/ (moto checks none of this).
    machines = _of_type("AWS::Serverless::StateMachine")
    assert machines
    for name, machine in machines.items():
        for destination in machine["Properties"]["Logging"]["Destinations"]:
            group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
            named = RESOURCES[group]["Properties"].get("LogGroupName", {})
            assert isinstance(named, dict) and set(named) == {"Fn::Sub"}, f"{name}: {group} has no name of its own"
            assert named["Fn::Sub"].startswith("/aws/vendedlogs/states/${AWS::StackName}-"), (name, named)


def test_the_retention_parameter_offers_only_values_cloudwatch_accepts():
    parameter = TEMPLATE["Parameters"]["LogRetentionDays"]
    assert parameter["Default"] in parameter["AllowedValues"]
    assert set(parameter["AllowedValues"]) <= {
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
    }  # fmt: skip


def test_every_workflow_task_passes_the_execution_input_as_the_steps_trace():
    # `$$.Execution.Input` exists whatever started the execution; a `$.channel` would fail every
    # step of an execution started without one.
    tasks = {name: state for name, state in ASL["States"].items() if state["Type"] == "Task"}
    assert tasks
    for name, task in tasks.items():
        assert task["Parameters"]["trace.$"] == "$$.Execution.Input", name


def test_the_readme_documents_every_business_metric_the_functions_record():
    recorded = set(re.findall(r'record\(\s*"(\w+)"', (ROOT / "functions" / "business_metrics.py").read_text()))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| metric | unit | dimensions |") :].split("\n\n")[0]
    documented = {row.split("|")[1].strip().strip("`") for row in table.splitlines()[2:]}
    assert recorded and documented == recorded
