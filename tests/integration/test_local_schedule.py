"""The local runtime runs the template's Schedule events (the reconciler's): rate(...) periods,
EventBridge's scheduled-event shape, OMS_LOCAL_SCHEDULE_SECONDS to run them often locally."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from infra.local.event_sources import (
    SCHEDULE_PERIOD_ENV,
    EventSourceError,
    ScheduleMapping,
    schedule_period,
)
from infra.local.lambdas import LocalFunction
from infra.local.template import Template

# The head of this file's templates: an API and its function; each adds its scheduled functions.
API = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 5
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
"""
TEMPLATE = (
    API
    + """
  Job:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.job
      Environment: { Variables: { OMS_SCHEDULE_MINUTES_JOB: !FindInMap [Periods, Job, Minutes] } }
      Events:
        Often:
          Type: Schedule
          Properties: { Schedule: !Sub ["rate(${M} minutes)", { M: !FindInMap [Periods, Job, Minutes] }] }
        Hourly: { Type: Schedule, Properties: { Schedule: rate(1 hour) } }
  Undeclared:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.undeclared
      Events:
        Daily: { Type: Schedule, Properties: { Schedule: rate(1 day) } }
Mappings:
  Periods:
    Job: { Minutes: 5 }
"""
)


def scheduled_stack(
    tmp_path: Path, template: str, handlers: dict[str, Callable[..., Any]], **options: Any
) -> AbstractContextManager[Any]:
    """A local stack of `template` (written to tmp_path), its scheduled functions run by `handlers`."""
    from infra.local.stack import running_stack

    path = tmp_path / "template.yaml"
    path.write_text(template)
    return running_stack(
        template=path,
        stack_name="sched",
        handlers={"ApiFunction": lambda event, context: {"statusCode": 200, "body": "{}"}, **handlers},
        admin_key_bootstrap=lambda secret: None,
        **options,
    )


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(2 hours)", 7200), ("rate(1 day)", 86400)],
)
def test_rate_expressions_are_read_as_aws_reads_them(expression: str, seconds: int):
    assert schedule_period(expression, "here") == seconds


@pytest.mark.parametrize("expression", ["rate(5 minute)", "rate(1 minutes)", "rate(0 minutes)", "every 5 minutes"])
def test_a_malformed_schedule_fails_clearly_rather_than_run_at_the_wrong_times(expression: str):
    with pytest.raises(EventSourceError, match=r"here: Schedule "):
        schedule_period(expression, "here")


@pytest.mark.parametrize("expression", ["cron(0 3 ? * MON-FRI *)", "cron(0/15 * * * ? *)", "cron(0 3 * * * *)"])
def test_a_cron_schedule_is_refused_as_its_uneven_gaps_would_skip_turns(expression: str):
    # A scheduled function numbers its runs in its period, OMS_SCHEDULE_MINUTES_<FUNCTION>
    # (functions/schedule.py). cron(0 3 ? * MON-FRI *) was taken and run at 03:00 on weekdays: in
    # periods of 5 minutes a run came 288 after the one before, a Monday's 864, so the reconciler's
    # first pass (of 7) stepped 1, 1, 1, 1, 3: each Monday began with the last Monday's pass and two
    # of the seven never began a run. The template schedules only rate(...): a cron is refused.
    with pytest.raises(EventSourceError, match=r"^here: Schedule 'cron\(.*\)': cron\(\.\.\.\) is not emulated"):
        schedule_period(expression, "here")


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf", "3_0", " 30 "])
def test_a_local_schedule_period_that_is_not_a_positive_finite_number_fails_at_start(monkeypatch, value: str):
    # NaN and inf passed the "<= 0" check: the next run was due at now + nan (never reached) or
    # + inf (OMS_JEOPARDY_SCAN_SECONDS=inf: no jeopardy pass ever ran locally, and nothing said so).
    from infra.local.event_sources import _local_period

    monkeypatch.setenv(SCHEDULE_PERIOD_ENV, value)

    with pytest.raises(EventSourceError, match=f"^{SCHEDULE_PERIOD_ENV} must be a positive number of seconds"):
        _local_period("Job", 300.0)


def test_the_jeopardy_scan_runs_every_30_s_locally_or_as_often_as_oms_local_schedule_seconds_says(monkeypatch):
    # README's Configuration: its own variable wins, then OMS_LOCAL_SCHEDULE_SECONDS, then 30 s (the
    # table said 30 s won over OMS_LOCAL_SCHEDULE_SECONDS; make run ran the scan every 20 s with it 20).
    from infra.local.event_sources import _local_period

    monkeypatch.delenv(SCHEDULE_PERIOD_ENV, raising=False)
    monkeypatch.delenv("OMS_JEOPARDY_SCAN_SECONDS", raising=False)
    assert _local_period("JeopardyScanFunction", 300.0) == 30.0
    monkeypatch.setenv(SCHEDULE_PERIOD_ENV, "20")
    assert _local_period("JeopardyScanFunction", 300.0) == 20.0
    monkeypatch.setenv("OMS_JEOPARDY_SCAN_SECONDS", "5")
    assert _local_period("JeopardyScanFunction", 300.0) == 5.0
    assert _local_period("ReconcilerFunction", 300.0) == 20.0


def test_the_reconciler_schedule_is_in_the_template():
    template = Template.load()
    [event] = template.functions()["ReconcilerFunction"]["Events"].values()
    assert event["Type"] == "Schedule"
    assert schedule_period(template.resolve(event["Properties"]["Schedule"]), "template") == 300


def test_a_schedule_invokes_its_function_every_period_with_a_scheduled_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(SCHEDULE_PERIOD_ENV, "0.05")
    events: list[dict[str, Any]] = []
    twice = threading.Event()

    def job(event: dict[str, Any], context: Any) -> None:
        if event["resources"][0].endswith("rule/Job-Often"):  # Hourly runs every 0.05 s too
            events.append(event)
        if len(events) >= 2:
            twice.set()

    with scheduled_stack(tmp_path, TEMPLATE, {"Job": job, "Undeclared": job}) as running:
        assert set(running.mappings) == {"Job.Often", "Job.Hourly", "Undeclared.Daily"}
        often = running.mappings["Job.Often"]
        assert (often.kind, often.expression, often.period) == ("Schedule", "rate(5 minutes)", 0.05)
        assert twice.wait(30), events

    first = events[0]
    assert (first["source"], first["detail-type"], first["detail"]) == ("aws.events", "Scheduled Event", {})
    assert first["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/Job-Often"]


def test_a_failed_scheduled_run_is_retried_with_its_event_as_lambda_retries_an_asynchronous_invocation():
    seen: list[str] = []
    done = threading.Event()

    def job(event: dict[str, Any], context: Any) -> None:
        seen.append(event["id"])
        if len(seen) >= 4:
            done.set()
        raise RuntimeError("the store is down")

    mapping = ScheduleMapping(
        name="Job.Often",
        function_logical_id="Job",
        function=LocalFunction("sched-Job", job),
        source_arn="arn:aws:events:us-east-1:123456789012:rule/Job-Often",
        source_label="rate(5 minutes)",
        client=lambda service: None,
        expression="rate(5 minutes)",
        period=0.01,
        maximum_retry_attempts=2,  # the default of an asynchronous invocation
        retry_delay=0,
    )
    mapping.start()
    try:
        assert done.wait(30)
    finally:
        mapping.stop()
    # The first run and its two retries carry one event; the next period brings a new one.
    assert seen[0] == seen[1] == seen[2] != seen[3]


FAILING_TEMPLATE = (
    API
    + """
  Job:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.job
      EventInvokeConfig:
        MaximumRetryAttempts: 1
        DestinationConfig: { OnFailure: { Type: SQS, Destination: !GetAtt JobFailures.Arn } }
      Events:
        Often: { Type: Schedule, Properties: { Schedule: rate(5 minutes) } }
  JobFailures:
    Type: AWS::SQS::Queue
"""
)


def test_a_scheduled_run_that_exhausts_its_retries_goes_to_on_failure_as_lambda_s_invocation_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # EventBridge invokes asynchronously: what reaches the destination is Lambda's record of an
    # asynchronous invocation (the event, replayable, and the error), not a stream's batch info.
    monkeypatch.setenv(SCHEDULE_PERIOD_ENV, "0.05")
    events: list[dict[str, Any]] = []

    def job(event: dict[str, Any], context: Any) -> None:
        events.append(event)
        raise RuntimeError("the store is down")

    with scheduled_stack(tmp_path, FAILING_TEMPLATE, {"Job": job}, mapping_retry_delay=0) as running:
        sqs = running.client("sqs")
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not messages and time.monotonic() < deadline:
            messages = sqs.receive_message(QueueUrl=running.queue_urls["JobFailures"], WaitTimeSeconds=1).get(
                "Messages", []
            )
        assert messages, events
        arn = running.function_arns["Job"]

    record = json.loads(messages[0]["Body"])
    assert record.keys() == {
        "version", "timestamp", "requestContext", "requestPayload", "responseContext", "responsePayload"
    }  # fmt: skip
    assert record["version"] == "1.0" and record["timestamp"]
    context = record["requestContext"]
    assert (context["condition"], context["approximateInvokeCount"]) == ("RetriesExhausted", 2)
    assert context["functionArn"] == f"{arn}:$LATEST" and context["requestId"]
    assert record["requestPayload"] == events[0] == events[1]  # the run and its retry: one event
    assert record["requestPayload"]["detail-type"] == "Scheduled Event"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    response = record["responsePayload"]
    assert (response["errorType"], response["errorMessage"]) == ("RuntimeError", "the store is down")
    assert any("in job" in line for line in response["stackTrace"])  # the handler's


def test_make_run_tells_each_scheduled_function_the_period_it_runs_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The turn of a scheduled function (which part of its work a run starts with) is counted in
    # its schedule's periods: make run runs the jeopardy scan every 30 s, and counted in the
    # template's 5 minutes ten runs in a row started with the same part. The stack overrides the
    # variable the template declares (from the Schedule's own Mappings entry), and makes up none.
    from functions.schedule import period_variable

    monkeypatch.setenv(SCHEDULE_PERIOD_ENV, "30")
    for function in ("Job", "Undeclared"):
        monkeypatch.delenv(period_variable(function), raising=False)

    with scheduled_stack(tmp_path, TEMPLATE, {"Job": lambda e, c: None, "Undeclared": lambda e, c: None}) as running:
        assert running.mappings["Job.Often"].expression == "rate(5 minutes)"  # the Mappings entry, resolved
        assert float(os.environ[period_variable("Job")]) == 0.5  # minutes: 30 s
        assert running.environment[period_variable("Job")] == os.environ[period_variable("Job")]
        assert running.function_environments["Job"][period_variable("Job")] == "5"  # what AWS would say
        assert period_variable("Undeclared") not in os.environ
    assert period_variable("Job") not in os.environ  # the stack stopped: as it was


def the_templates_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service the template names, set before a handler module is first imported: it builds its
    Metrics at import with the service it reads then and stays imported for the rest of the worker's
    run, so imported here without one, its points lost the `service` dimension in every later test
    (tests/integration/test_reconciler.py's metrics, when that file ran after this one)."""
    from tests.template_iam import TEMPLATE

    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", variables["POWERTOOLS_SERVICE_NAME"])


@pytest.mark.parametrize("minutes", [None, "0.5", "0.25"])
def test_each_run_of_the_jeopardy_scan_and_the_reconciler_starts_with_the_next_part_at_any_period(
    monkeypatch: pytest.MonkeyPatch, minutes: str | None
):
    from datetime import UTC, datetime, timedelta

    the_templates_service(monkeypatch)
    from functions.jeopardy import app as jeopardy
    from functions.reconciler import app as reconciler
    from tests.builders import template_schedule

    for function in ("JeopardyScanFunction", "ReconcilerFunction"):
        name, declared = template_schedule(function)  # on AWS: the template's 5 minutes
        monkeypatch.setenv(name, minutes or declared)
    seconds = float(minutes or declared) * 60
    start = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    runs = [{"time": (start + timedelta(seconds=seconds * n)).isoformat()} for n in range(4)]
    turns = [jeopardy._turn(run) for run in runs]
    assert [turn - turns[0] for turn in turns] == [0, 1, 2, 3]
    firsts = [reconciler._first_pass(run, 100) for run in runs]
    assert [(first - firsts[0]) % 100 for first in firsts] == [0, 1, 2, 3]


@pytest.mark.parametrize("value", [None, "", "0", "-5", "soon", "nan", "inf"])
def test_a_scheduled_run_whose_period_is_unset_or_not_a_positive_number_of_minutes_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str | None
):
    # No constant in the code stands in for the template's rate: a function deployed without the
    # variable would count its turn in a period nobody runs it on.
    the_templates_service(monkeypatch)
    from functions.reconciler import app as reconciler
    from functions.schedule import period_variable

    name = period_variable("ReconcilerFunction")
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    with pytest.raises((ValueError, RuntimeError), match=f"^{name} "):
        reconciler._first_pass({"time": "2026-12-03T12:00:00Z"}, 7)
    assert reconciler._first_pass({"detail-type": "Scheduled Event"}, 7) == 0  # by hand: no period needed
