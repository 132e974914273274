"""The local runtime's state machines: ASL validation, substitutions, moto's interpreter running
Lambda tasks on in-process (fake) handlers, and the template check that reuses the validator."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.asl import AslError, substitute, validate_asl
from infra.local.template import DEFAULT_TEMPLATE, PROJECT_ROOT, Template

# --- The validator ----------------------------------------------------------------------------------


def machine(**states: Any) -> dict[str, Any]:
    return {"StartAt": next(iter(states)), "States": states}


@pytest.mark.parametrize(
    ("logical_id", "path", "placeholder"),
    [
        ("OrderWorkflow", "infra/order_workflow.asl.json", "AuthorizePaymentFunctionArn"),
        ("ReturnWorkflow", "infra/return_workflow.asl.json", "ReturnStepFunctionArn"),
    ],
)
def test_each_workflow_is_valid_once_substituted(logical_id: str, path: str, placeholder: str):
    template = Template.load()
    machines = template.properties("AWS::Serverless::StateMachine")
    assert set(machines) == {"OrderWorkflow", "ReturnWorkflow"}
    props = machines[logical_id]
    assert props["Type"] == "EXPRESS"
    declared = props["DefinitionSubstitutions"]
    substitutions = {name: f"arn:aws:lambda:us-east-1:123456789012:function:{name}" for name in declared}
    definition = template.state_machine_definition(props, substitutions)
    assert validate_asl(definition) == []
    raw = json.loads((PROJECT_ROOT / path).read_text())
    assert any(f"unresolved placeholder ${{{placeholder}}}" in p for p in validate_asl(raw))


def test_a_dangling_next_is_reported():
    problems = validate_asl(
        machine(
            A={"Type": "Task", "Resource": "arn:aws:lambda:x", "Next": "Nowhere"},
            B={"Type": "Task", "Resource": "arn:aws:lambda:x", "Catch": [{"ErrorEquals": ["X"], "Next": "Gone"}]},
        )
    )
    assert "States.A.Next: names state 'Nowhere', which does not exist" in problems
    assert "States.B.Catch[0].Next: names state 'Gone', which does not exist" in problems


def test_a_missing_or_wrong_start_at_is_reported():
    assert "definition: StartAt is missing" in validate_asl({"States": {"A": {"Type": "Succeed"}}})
    problems = validate_asl({"StartAt": "Nope", "States": {"A": {"Type": "Succeed"}}})
    assert "definition: StartAt names state 'Nope', which does not exist" in problems


def test_an_unresolved_placeholder_is_reported():
    definition = substitute(
        machine(
            A={"Type": "Task", "Resource": "${Known}", "Next": "B"},
            B={"Type": "Task", "Resource": "${Unknown}", "End": True},
        ),
        {"Known": "arn:aws:lambda:us-east-1:123456789012:function:known"},
    )
    assert definition["States"]["A"]["Resource"].endswith(":known")
    [problem] = validate_asl(definition)
    assert "States.B.Resource" in problem and "${Unknown}" in problem


def test_a_path_that_never_ends_and_an_unreachable_state_are_reported():
    problems = validate_asl(
        machine(
            Loop={"Type": "Task", "Resource": "arn:aws:lambda:x", "Next": "Again"},
            Again={"Type": "Task", "Resource": "arn:aws:lambda:x", "Next": "Loop"},
            Orphan={"Type": "Succeed"},
            Dangling={"Type": "Task", "Resource": "arn:aws:lambda:x"},
        )
    )
    assert "States.Loop: no path from here ends (in Succeed, Fail or End: true)" in problems
    assert "States.Orphan: not reachable from StartAt 'Loop'" in problems
    assert "States.Dangling: needs Next or End: true" in problems


def test_states_all_must_be_in_the_last_retrier_or_catcher():
    problems = validate_asl(
        machine(
            A={
                "Type": "Task",
                "Resource": "arn:aws:lambda:us-east-1:123456789012:function:x",
                "Retry": [{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}],
                "End": True,
            }
        )
    )
    assert problems == ["States.A.Retry[0].ErrorEquals: States.ALL must be alone and in the last entry"]


@pytest.mark.parametrize(
    ("retry_or_catch", "reason"),
    [
        ({"Retry": [{"ErrorEquals": ["X"], "IntervalSeconds": 0}]}, "IntervalSeconds value MUST be a positive integer"),
        ({"Retry": [{"ErrorEquals": ["X"], "BackoffRate": 0.5}]}, "BackoffRate MUST be greater than or equal to 1.0"),
        ({"Retry": [{"ErrorEquals": []}]}, "mismatched input ']'"),
        ({"Catch": [{"ErrorEquals": "X", "Next": "A"}]}, "missing '['"),
        ({"Catch": [{"ErrorEquals": ["X"]}]}, "Missing Next declaration for Catcher"),
    ],
)
def test_what_moto_s_asl_parser_refuses_is_a_problem_too(retry_or_catch: dict[str, Any], reason: str):
    resource = "arn:aws:lambda:us-east-1:123456789012:function:x"
    problems = validate_asl(machine(A={"Type": "Task", "Resource": resource, "End": True, **retry_or_catch}))
    assert problems and all(problem.startswith("definition: ") for problem in problems)
    assert any(reason in problem for problem in problems), problems


@pytest.mark.parametrize("state_type", ["Wait", "Parallel", "Map"])
def test_a_state_type_the_workflows_do_not_use_is_reported_not_left_unchecked(state_type: str):
    [problem] = validate_asl(machine(A={"Type": state_type, "End": True}))
    assert problem.startswith(f"States.A.Type: {state_type!r} is not checked locally (only Choice, Fail, Pass")


def test_a_choice_s_rules_and_default_and_a_pass_s_next_are_checked():
    problems = validate_asl(
        machine(
            Route={
                "Type": "Choice",
                "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "Gone"}],
                "Default": "Lost",
            },
            Empty={"Type": "Choice", "Choices": [], "End": True},
            Step={"Type": "Pass"},
        )
    )
    assert "States.Route.Choices[0].Next: names state 'Gone', which does not exist" in problems
    assert "States.Route.Default: names state 'Lost', which does not exist" in problems
    assert "States.Empty.Choices: needs a non-empty list of rules" in problems
    assert "States.Empty: a Choice state goes on by its rules and Default, never Next or End" in problems
    assert "States.Step: needs Next or End: true" in problems
    valid = machine(
        Route={
            "Type": "Choice",
            "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "Step"}],
            "Default": "Done",
        },
        Step={"Type": "Pass", "Result": {"a": 1}, "ResultPath": "$.y", "Next": "Done"},
        Done={"Type": "Succeed"},
    )
    assert validate_asl(valid) == []


def test_check_template_fails_on_an_invalid_state_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from infra.check_template import main, state_machine_problems

    assert state_machine_problems(DEFAULT_TEMPLATE) == []
    shutil.copy(DEFAULT_TEMPLATE, tmp_path / "template.yaml")
    (tmp_path / "infra").mkdir()
    definition = json.loads((PROJECT_ROOT / "infra/order_workflow.asl.json").read_text())
    definition["States"]["ReserveStock"]["Next"] = "CreateShipment"  # a typo
    (tmp_path / "infra/order_workflow.asl.json").write_text(json.dumps(definition))
    assert main([str(tmp_path / "template.yaml")]) == 1
    err = capsys.readouterr().err
    assert "OrderWorkflow: States.ReserveStock.Next: names state 'CreateShipment', which does not exist" in err


# --- State machines in the stack --------------------------------------------------------------------

WORKFLOW_TEMPLATE = """
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
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      StreamSpecification: { StreamViewType: NEW_IMAGE }
      AttributeDefinitions: [{ AttributeName: id, AttributeType: S }]
      KeySchema: [{ AttributeName: id, KeyType: HASH }]
  Outbox:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.outbox
      Environment:
        Variables:
          WORKFLOW_ARN: !Ref Workflow
      Policies:  # what the fake outbox calls, as on AWS (the suite reads every call against it)
        - Statement:
            - { Effect: Allow, Action: states:StartExecution, Resource: !Ref Workflow }
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Orders.StreamArn
            StartingPosition: TRIM_HORIZON
            FilterCriteria: { Filters: [{ Pattern: '{"eventName": ["INSERT"]}' }] }
  Charge:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.charge
      Environment:
        Variables:
          CHARGE_NAME: !Ref Charge
  Ship:
    Type: AWS::Serverless::Function
    Properties: { Handler: fake.ship }
  Refund:
    Type: AWS::Serverless::Function
    Properties: { Handler: fake.refund }
  Workflow:
    Type: AWS::Serverless::StateMachine
    Properties:
      Type: EXPRESS
      DefinitionUri: workflow.asl.json
      DefinitionSubstitutions:
        ChargeArn: !GetAtt Charge.Arn
        ShipArn: !GetAtt Ship.Arn
        RefundArn: !GetAtt Refund.Arn
"""

WORKFLOW_ASL = {
    "StartAt": "Charge",
    "States": {
        "Charge": {
            "Type": "Task",
            "Resource": "${ChargeArn}",
            "Parameters": {"order_id.$": "$.order_id", "attempt.$": "$$.State.RetryCount"},
            "ResultPath": "$.charge",
            "Retry": [{"ErrorEquals": ["TransientError"], "MaxAttempts": 2}],
            "Catch": [{"ErrorEquals": ["PaymentDeclined"], "ResultPath": "$.error", "Next": "Refund"}],
            "Next": "Ship",
        },
        "Ship": {"Type": "Task", "Resource": "${ShipArn}", "End": True},
        "Refund": {"Type": "Task", "Resource": "${RefundArn}", "ResultPath": None, "Next": "Declined"},
        "Declined": {"Type": "Fail", "Error": "PaymentDeclined", "Cause": "the card was declined"},
    },
}


class TransientError(Exception):
    pass


class PaymentDeclined(Exception):
    pass


calls: list[tuple[str, Any]] = []


def charge(event: dict[str, Any], context: Any) -> dict[str, Any]:
    calls.append(("charge", dict(event)))
    if event["order_id"].startswith("flaky") and event["attempt"] == 0:
        raise TransientError("try again")
    if event["order_id"].startswith("declined"):
        raise PaymentDeclined("card declined")
    if event["order_id"].startswith("slow"):
        time.sleep(0.2)  # past the Timeout a test gives it
    return {"charged": True, "by": context.function_name}


def ship(event: dict[str, Any], context: Any) -> dict[str, Any]:
    calls.append(("ship", dict(event)))
    return {**event, "shipped": True}


def refund(event: dict[str, Any], context: Any) -> None:
    calls.append(("refund", dict(event)))


def outbox(event: dict[str, Any], context: Any) -> None:
    """Starts one execution per new order, as the real outbox does."""
    import boto3

    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    for record in event["Records"]:
        order_id = record["dynamodb"]["NewImage"]["id"]["S"]
        sfn.start_execution(
            stateMachineArn=os.environ["WORKFLOW_ARN"], name=order_id, input=json.dumps({"order_id": order_id})
        )


def ok(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": "{}"}


def write_workflow(directory: Path, asl: dict[str, Any] = WORKFLOW_ASL) -> Path:
    (directory / "workflow.asl.json").write_text(json.dumps(asl))
    path = directory / "template.yaml"
    path.write_text(WORKFLOW_TEMPLATE)
    return path


# Before the module's stack starts: these start (or fail to start) stacks of their own.


def test_stop_stops_running_executions_and_waits_for_their_handlers(tmp_path: Path):
    from infra.local.stack import running_stack

    started: list[float] = []

    def slow_charge(event: dict[str, Any], context: Any) -> None:
        started.append(time.monotonic())
        time.sleep(0.3)
        raise TransientError("again")  # would be retried, but the stack stops first

    with running_stack(
        template=write_workflow(tmp_path),
        stack_name="stopping",
        handlers={"ApiFunction": ok, "Charge": slow_charge},
        admin_key_bootstrap=lambda secret: None,
        retry_delay_scale=0.1,
    ) as running:
        running.client("stepfunctions").start_execution(
            stateMachineArn=running.state_machine_arns["Workflow"], name="o", input='{"order_id": "o"}'
        )
        deadline = time.monotonic() + 5
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.running_executions()
    assert len(started) == 1
    time.sleep(0.4)  # past the (scaled) Retry interval: nothing ran the handler again
    assert len(started) == 1


def test_a_wait_until_idle_that_times_out_logs_what_is_busy_and_where_every_thread_stands(tmp_path: Path, caplog):
    # A bench run once ended with an execution left RUNNING, none of its tasks run, and nothing kept
    # to say where it stood: the timeout now logs the running executions and every thread's stack.
    from infra.local.stack import running_stack

    release, entered = threading.Event(), threading.Event()

    def parked_charge(event: dict[str, Any], context: Any) -> None:
        entered.set()
        release.wait(10)

    with running_stack(
        template=write_workflow(tmp_path),
        stack_name="parked",
        handlers={"ApiFunction": ok, "Charge": parked_charge},
        admin_key_bootstrap=lambda secret: None,
    ) as running:
        running.client("stepfunctions").start_execution(
            stateMachineArn=running.state_machine_arns["Workflow"], name="parked-o", input='{"order_id": "o"}'
        )
        assert entered.wait(5)
        try:
            with caplog.at_level(logging.WARNING, logger="infra.local.activity"):
                assert running.wait_until_idle(0.2) is False
        finally:
            release.set()
        assert running.wait_until_idle(10)
    (report,) = [r.getMessage() for r in caplog.records if r.name == "infra.local.activity"]
    assert report.startswith("not idle after 0.2 s: functions [")
    assert "Charge (1 running)" in report
    assert re.search(r"executions RUNNING \[[^]]*:parked-o'\]", report)
    assert "in parked_charge\n    release.wait(10)" in report  # the parked thread's own frame


# Each scale of the local stack's: its variable and the keyword (and attribute) that sets it.
SCALES = [("OMS_RETRY_DELAY_SCALE", "retry_delay_scale"), ("OMS_BATCHING_WINDOW_SCALE", "batching_window_scale")]


@pytest.mark.parametrize(("variable", "keyword"), SCALES)
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-0.5", "fast", "1_0", " 2 "])
def test_a_scale_that_is_not_a_finite_number_of_0_or_more_is_refused_at_once(
    monkeypatch, value: str, variable: str, keyword: str
):
    # nan, inf or a negative retry delay scale started the stack: the first Retry of some execution
    # then called time.sleep with it, which refuses it, and that execution failed inside the interpreter.
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"^{variable} must be a number of 0 or more"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False)

    monkeypatch.delenv(variable)
    if value in ("1_0", " 2 "):
        return  # float() takes them (as the variable's text they are refused above, as a deploy refuses a Number so)
    with pytest.raises(ValueError, match=rf"^{variable} must be a number of 0 or more"):
        EmbeddedStack(api_port=0, aws_port=0, seed=False, **{keyword: float(value.replace("fast", "nan"))})


@pytest.mark.parametrize(("variable", "keyword"), SCALES)
def test_a_scale_of_0_or_more_is_taken(monkeypatch, variable: str, keyword: str):
    from infra.local.stack import EmbeddedStack

    monkeypatch.setenv(variable, "0")
    assert getattr(EmbeddedStack(api_port=0, aws_port=0, seed=False), keyword) == 0.0
    monkeypatch.delenv(variable)
    assert getattr(EmbeddedStack(api_port=0, aws_port=0, seed=False), keyword) == 1.0
    assert getattr(EmbeddedStack(api_port=0, aws_port=0, seed=False, **{keyword: 0.01}), keyword) == 0.01


def test_an_invalid_definition_stops_startup_with_the_problems(tmp_path: Path):
    from infra.local.stack import EmbeddedStack

    bad = json.loads(json.dumps(WORKFLOW_ASL))
    bad["States"]["Ship"] = {"Type": "Task", "Resource": "${ShipArm}", "Next": "Shipped"}
    stack = EmbeddedStack(
        template=write_workflow(tmp_path, bad),
        api_port=0,
        aws_port=0,
        seed=False,
        stack_name="bad",
        handlers={"ApiFunction": ok},
        admin_key_bootstrap=lambda secret: None,
    )
    with pytest.raises(AslError) as caught:
        stack.start()
    message = str(caught.value)
    assert "state machine Workflow: invalid definition" in message
    assert "States.Ship.Next: names state 'Shipped', which does not exist" in message
    assert "unresolved placeholder ${ShipArm}" in message
    assert "WORKFLOW_ARN" not in os.environ  # stopped and restored


def test_a_substitution_naming_an_unknown_resource_stops_startup(tmp_path: Path):
    from infra.local.stack import EmbeddedStack

    path = write_workflow(tmp_path)
    path.write_text(path.read_text().replace("RefundArn: !GetAtt Refund.Arn", "RefundArn: !GetAtt Refnud.Arn"))
    stack = EmbeddedStack(
        template=path,
        api_port=0,
        aws_port=0,
        seed=False,
        handlers={"ApiFunction": ok},
        admin_key_bootstrap=lambda secret: None,
    )
    with pytest.raises(ValueError, match=r"state machine Workflow: cannot resolve !GetAtt Refnud\.Arn locally"):
        stack.start()


def test_the_real_template_creates_the_order_workflow(tmp_path: Path):
    from moto.awslambda.models import LambdaBackend
    from moto.s3 import notifications
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    from infra.local.stack import running_stack

    originals = (LambdaBackend.__dict__["invoke"], notifications._invoke_awslambda, retrier_decl.time)
    with running_stack(
        handlers={"ApiFunction": ok, "AuthorizerFunction": ok},
        admin_key_bootstrap=lambda secret: None,
        event_sources=False,
    ) as running:
        arn = running.state_machine_arns["OrderWorkflow"]
        assert os.environ["ORDER_WORKFLOW_ARN"] == arn
        assert os.environ["LABELS_BUCKET"] == running.bucket_names["LabelsBucket"]
        described = running.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
        definition = json.loads(described["definition"])
        assert definition["States"]["AuthorizePayment"]["Resource"] == running.function_arns["AuthorizePaymentFunction"]
        assert described["type"] == "EXPRESS"
        outbox = running.mappings["OutboxFunction.OrdersStream"]
        # New orders, releases from a hold, orders an edit or a reject sent back from
        # allocated/backordered to be sourced again, and cancels (their clean-up finished).
        released = {
            "OldImage": {"status": {"S": ["on_hold"]}},
            "NewImage": {"status": {"S": ["pending", "authorized", "backordered"]}},
        }
        sent_back = {
            "OldImage": {"status": {"S": ["allocated", "backordered"]}},
            "NewImage": {"status": {"S": ["authorized"]}},
        }
        cancelled = {
            "OldImage": {"status": {"S": ["pending", "authorized", "allocated", "on_hold", "backordered"]}},
            "NewImage": {"status": {"S": ["cancelled"]}},
        }
        assert outbox.filters == [
            {"eventName": ["INSERT"]},
            {"eventName": ["MODIFY"], "dynamodb": released},
            {"eventName": ["MODIFY"], "dynamodb": sent_back},
            {"eventName": ["MODIFY"], "dynamodb": cancelled},
        ]
        assert outbox.paused
        assert outbox.on_failure.queue_url == running.queue_urls["OutboxFailureQueue"]
        assert LambdaBackend.__dict__["invoke"] is not originals[0]
    # stop() puts moto back as it found it.
    assert (LambdaBackend.__dict__["invoke"], notifications._invoke_awslambda, retrier_decl.time) == originals


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from infra.local.stack import running_stack

    path = write_workflow(tmp_path_factory.mktemp("workflow"))
    with running_stack(
        template=path,
        stack_name="wf",
        handlers={"ApiFunction": ok, "Outbox": outbox, "Charge": charge, "Ship": ship, "Refund": refund},
        admin_key_bootstrap=lambda secret: None,
        retry_delay_scale=0.01,  # Retry's 1 s IntervalSeconds becomes 10 ms
    ) as running:
        yield running


def run(stack: Any, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=stack.state_machine_arns["Workflow"], name=name, input=json.dumps(payload)
    )["executionArn"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.02)
    raise AssertionError(f"{name} still running")


def test_the_state_machine_is_created_with_its_substitutions_resolved(stack: Any):
    arn = stack.state_machine_arns["Workflow"]
    assert arn == "arn:aws:states:us-east-1:123456789012:stateMachine:wf-Workflow"
    assert stack.refs["Workflow"] == stack.atts["Workflow.Arn"] == arn
    assert stack.atts["Workflow.Name"] == "wf-Workflow"
    described = stack.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
    assert described["type"] == "EXPRESS"
    definition = json.loads(described["definition"])
    assert definition["States"]["Charge"]["Resource"] == "arn:aws:lambda:us-east-1:123456789012:function:wf-Charge"
    assert stack.function_arns["Ship"] == definition["States"]["Ship"]["Resource"]
    assert stack.atts["Ship.Arn"] == stack.function_arns["Ship"] and stack.refs["Ship"] == "wf-Ship"


def test_function_environments_are_resolved_and_exported_as_their_union(stack: Any):
    assert stack.function_environments["Outbox"] == {"WORKFLOW_ARN": stack.state_machine_arns["Workflow"]}
    assert stack.function_environments["Charge"] == {"CHARGE_NAME": "wf-Charge"}
    assert os.environ["WORKFLOW_ARN"] == stack.state_machine_arns["Workflow"]
    assert os.environ["CHARGE_NAME"] == "wf-Charge"


def test_a_task_error_is_retried_by_its_class_name(stack: Any):
    calls.clear()
    result = run(stack, "flaky-1", {"order_id": "flaky-1"})
    assert result["status"] == "SUCCEEDED"
    charges = [event for name, event in calls if name == "charge"]
    assert charges == [{"order_id": "flaky-1", "attempt": 0}, {"order_id": "flaky-1", "attempt": 1}]
    output = json.loads(result["output"])
    assert output["charge"] == {"charged": True, "by": "wf-Charge"}
    assert output["shipped"] is True


def test_a_task_error_is_caught_by_its_class_name(stack: Any):
    calls.clear()
    result = run(stack, "declined-1", {"order_id": "declined-1"})
    assert result["status"] == "FAILED"
    assert result.get("error") == "PaymentDeclined"
    assert [name for name, _ in calls] == ["charge", "refund"]
    error = calls[1][1]["error"]
    assert error["Error"] == "PaymentDeclined"
    assert json.loads(error["Cause"])["errorMessage"] == "card declined"


def test_a_task_past_its_function_s_timeout_fails_as_lambda_reports_it(stack: Any, monkeypatch: pytest.MonkeyPatch):
    # Its answer went on to Ship; on AWS Lambda stops it, and the state sees Sandbox.Timedout (the
    # workflows' Retry and Catch name it; States.Timeout is the state's own TimeoutSeconds, moto's).
    monkeypatch.setattr(stack.functions["Charge"], "timeout_seconds", 0.05)
    calls.clear()
    result = run(stack, "slow-1", {"order_id": "slow-1"})
    assert (result["status"], result.get("error")) == ("FAILED", "Sandbox.Timedout")
    assert [name for name, _ in calls] == ["charge"]


def test_a_stream_insert_starts_the_workflow_end_to_end(stack: Any):
    calls.clear()
    stack.client("dynamodb").put_item(TableName=stack.table_names["Orders"], Item={"id": {"S": "ord-1"}})
    assert stack.wait_until_idle(10)
    assert [name for name, _ in calls] == ["charge", "ship"]
    assert stack.running_executions() == []
    sfn = stack.client("stepfunctions")
    described = sfn.describe_execution(
        executionArn=stack.state_machine_arns["Workflow"].replace(":stateMachine:", ":execution:") + ":ord-1"
    )
    assert described["status"] == "SUCCEEDED"


def test_lambda_invoke_reaches_the_handlers_and_unknown_functions_are_not_found(stack: Any):
    from botocore.exceptions import ClientError

    lam = stack.client("lambda")
    answer = lam.invoke(FunctionName="wf-Ship", Payload=json.dumps({"order_id": "x"}))
    assert json.loads(answer["Payload"].read()) == {"order_id": "x", "shipped": True}
    answer = lam.invoke(FunctionName=stack.function_arns["Charge"], Payload=json.dumps({"order_id": "declined-2"}))
    assert answer["FunctionError"] == "Unhandled"
    assert json.loads(answer["Payload"].read())["errorType"] == "PaymentDeclined"
    with pytest.raises(ClientError) as caught:
        lam.invoke(FunctionName="wf-Nope", Payload=b"{}")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # Only RequestResponse is emulated (what Step Functions' tasks make): another kind is refused,
    # not run as if it were one.
    for kind in ("Event", "DryRun"):
        with pytest.raises(ClientError, match=f"InvocationType {kind} is not emulated") as caught:
            lam.invoke(FunctionName="wf-Ship", InvocationType=kind, Payload=b"{}")
        assert caught.value.response["Error"]["Code"] == "InvalidParameterValueException"
