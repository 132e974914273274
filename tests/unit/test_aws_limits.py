"""template.yaml against what AWS does and moto does not show: an SQS mapping's queue hides a batch
for as long as Lambda may still be working on it, and its dead letters outlive the messages they
came from; a stream is read by at most two mappings, each bounded and recording what it gives up;
an Express execution, which AWS stops at five minutes without running any Catch, parks its order
(or records its return stuck) before then however its steps fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.local.template import load_template
from tests.unit.test_workflow_definition import _waits  # the waits before each retry, as ASL defines them

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBALS = TEMPLATE["Globals"]["Function"]
FUNCTIONS = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
# Every SQS queue a function's event source mapping polls: (function, event name, its Properties).
SQS_MAPPINGS = [
    (function, event, spec["Properties"])
    for function, props in FUNCTIONS.items()
    for event, spec in (props.get("Events") or {}).items()
    if spec["Type"] == "SQS"
]


def _timeout(function: str) -> int:
    return FUNCTIONS[function].get("Timeout", GLOBALS["Timeout"])


def _queue(mapping: dict[str, Any]) -> dict[str, Any]:
    (name, attribute) = mapping["Queue"]["Fn::GetAtt"]
    assert attribute == "Arn"
    return RESOURCES[name]["Properties"]


def _resolved(value: Any) -> Any:
    """A value written as a !FindInMap of the template's Mappings, or as itself."""
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        mapping, key, attribute = value["Fn::FindInMap"]
        return TEMPLATE["Mappings"][mapping][key][attribute]
    return value


def test_the_template_has_sqs_mappings_to_check():
    assert {function for function, _, _ in SQS_MAPPINGS} >= {
        "ImportWorkerFunction", "WebhookDeliveryFunction", "AccessLogFunction"
    }  # fmt: skip


@pytest.mark.parametrize(("function", "event", "mapping"), SQS_MAPPINGS, ids=[f"{f}.{e}" for f, e, _ in SQS_MAPPINGS])
def test_a_queue_hides_a_batch_for_six_function_timeouts_plus_its_batching_window(
    function: str, event: str, mapping: dict[str, Any]
):
    """AWS's advice for a queue Lambda polls: a visibility timeout of at least six times the
    function's Timeout (room for Lambda's own retries of a throttled invocation), plus the
    mapping's MaximumBatchingWindowInSeconds, during which the first message received waits
    invisible for the rest of its batch. Less, and SQS hands a message out again while its first
    delivery is still being worked on (moto's queues never show it: the local stack polls them
    one batch at a time)."""
    visibility = _queue(mapping).get("VisibilityTimeout", 30)
    window = mapping.get("MaximumBatchingWindowInSeconds", 0)
    assert visibility >= 6 * _timeout(function) + window, (function, visibility, _timeout(function), window)


@pytest.mark.parametrize(("function", "event", "mapping"), SQS_MAPPINGS, ids=[f"{f}.{e}" for f, e, _ in SQS_MAPPINGS])
def test_a_polled_queue_gives_up_after_a_few_receives_to_a_dead_letter_queue_that_keeps_them_longer(
    function: str, event: str, mapping: dict[str, Any]
):
    """A message moved to a standard queue's DLQ keeps its first enqueue time, so a DLQ that keeps
    messages no longer than its source drops at once what its source kept to the end."""
    queue = _queue(mapping)
    redrive = queue["RedrivePolicy"]
    assert 3 <= _resolved(redrive["maxReceiveCount"]) <= 10, function
    (dead, attribute) = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    kept = queue.get("MessageRetentionPeriod", 345600)
    assert RESOURCES[dead]["Properties"].get("MessageRetentionPeriod", 345600) > kept, (function, dead)


# --- DynamoDB stream mappings ------------------------------------------------------------------------

STREAM_MAPPINGS = [
    (function, event, spec["Properties"])
    for function, props in FUNCTIONS.items()
    for event, spec in (props.get("Events") or {}).items()
    if spec["Type"] == "DynamoDB"
]


def test_no_stream_has_more_than_two_mappings_reading_it():
    """DynamoDB Streams serves a shard to at most two readers at once without throttling them (AWS's
    limit; moto serves any number): a third mapping on a table's stream would slow all three."""
    readers: dict[str, list[str]] = {}
    for function, event, mapping in STREAM_MAPPINGS:
        (table, attribute) = mapping["Stream"]["Fn::GetAtt"]
        assert attribute == "StreamArn"
        readers.setdefault(table, []).append(f"{function}.{event}")
    assert readers and all(len(names) <= 2 for names in readers.values()), readers


@pytest.mark.parametrize(
    ("function", "event", "mapping"), STREAM_MAPPINGS, ids=[f"{f}.{e}" for f, e, _ in STREAM_MAPPINGS]
)
def test_a_stream_mapping_splits_a_failing_batch_retries_a_few_times_then_records_it(
    function: str, event: str, mapping: dict[str, Any]
):
    """Without a bound, a batch Lambda cannot process blocks its shard for the stream's 24 hours; with
    MaximumRetryAttempts and no OnFailure destination, it would be dropped without a trace. At most
    5 filters a mapping (AWS's quota), each a JSON pattern on the record."""
    assert mapping["BisectBatchOnFunctionError"] is True, function
    assert 1 <= mapping["MaximumRetryAttempts"] <= 10, function
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function
    assert mapping["DestinationConfig"]["OnFailure"]["Type"] == "SQS", function
    filters = mapping.get("FilterCriteria", {}).get("Filters", [])
    assert len(filters) <= 5, function
    for pattern in filters:
        assert isinstance(json.loads(pattern["Pattern"]), dict), (function, pattern)


# --- Express state machines end at five minutes ----------------------------------------------------

EXPRESS_LIMIT = 300  # seconds: an Express execution still running then is stopped, no Catch runs
OUT_OF_TIME = "WorkflowOutOfTime"
EXPRESS = {
    name: json.loads((ROOT / r["Properties"]["DefinitionUri"]).read_text())
    for name, r in RESOURCES.items()
    if r["Type"] == "AWS::Serverless::StateMachine" and r["Properties"]["Type"] == "EXPRESS"
}


def _tasks(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: state for name, state in definition["States"].items() if state["Type"] == "Task"}


def _budget(task: dict[str, Any]) -> int | None:
    """The seconds a main step's retries may run from the execution's start (None: a step that must
    run to its end however late, a compensation)."""
    parameters = task.get("Parameters", {})
    if "retry_for_seconds" not in parameters:
        return None
    assert parameters["started.$"] == "$$.Execution.StartTime"
    return parameters["retry_for_seconds"]


def _worst(task: dict[str, Any]) -> float:
    """Every retrier spent, every attempt running to the task's TimeoutSeconds (Step Functions keeps
    one count per retrier, so a step that times out and errs in turn gets all of them)."""
    retries = task.get("Retry", [])
    attempts = 1 + sum(r.get("MaxAttempts", 3) for r in retries)
    return attempts * task["TimeoutSeconds"] + sum(sum(_waits(r)) for r in retries)


def _reachable(definition: dict[str, Any], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = definition["States"][name]
        todo += [state["Next"]] if "Next" in state else []
        todo += [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
        todo += [state["Default"]] if "Default" in state else []
    return seen


def test_the_template_has_express_machines_to_check():
    assert set(EXPRESS) == {"OrderWorkflow", "ReturnWorkflow"}


@pytest.mark.parametrize("machine", sorted(EXPRESS))
def test_a_main_step_stops_retrying_when_its_execution_is_out_of_time_and_never_retries_that(machine: str):
    definition = EXPRESS[machine]
    tasks = _tasks(definition)
    main = {name for name, task in tasks.items() if _budget(task) is not None}
    assert main, machine
    for name in main:
        retries = tasks[name]["Retry"]
        (refused,) = [n for n, r in enumerate(retries) if OUT_OF_TIME in r["ErrorEquals"]]
        assert retries[refused]["MaxAttempts"] == 0, name
        assert retries[-1]["ErrorEquals"] == ["States.ALL"] and refused < len(retries) - 1, name
        assert tasks[name]["Catch"][-1]["ErrorEquals"] == ["States.ALL"], name
    # What runs after a main step (a park, a compensation, a record of a stuck return) runs to its
    # end and never leads back to a main step, whose budget would be spent already.
    for name in set(tasks) - main:
        assert not (_reachable(definition, name) & main), name


@pytest.mark.parametrize("machine", sorted(EXPRESS))
def test_every_execution_ends_within_express_five_minutes_however_its_steps_fail(machine: str):
    """The worst case, from the ASL: once a main step's budget (retry_for_seconds from the
    execution's start) has passed, the attempt running then ends within its TimeoutSeconds; the
    step then waits at most its longest retry wait and its next attempt (or the next main step's
    first) raises WorkflowOutOfTime within its TimeoutSeconds; what that leads to (ParkOrder,
    ReturnStuck, a compensation) runs every retry of its own, each attempt to its TimeoutSeconds.
    An execution that takes no main step (one finishing a cancel) runs a compensation alone."""
    definition = EXPRESS[machine]
    tasks = _tasks(definition)
    main = {name: _budget(task) for name, task in tasks.items() if _budget(task) is not None}
    after = {name: task for name, task in tasks.items() if name not in main}
    tail_runs = max(_worst(task) for task in after.values())
    for name, budget in main.items():
        task = tasks[name]
        longest_wait = max(max(_waits(r), default=0) for r in task["Retry"])
        following = [tasks[task["Next"]]["TimeoutSeconds"]] if task.get("Next") in main else []
        tail = task["TimeoutSeconds"] + max([longest_wait + task["TimeoutSeconds"], *following])
        assert budget + tail + tail_runs < EXPRESS_LIMIT, (machine, name, budget, tail, tail_runs)
    for name, task in after.items():
        assert _worst(task) < EXPRESS_LIMIT, (machine, name)


@pytest.mark.parametrize("machine", sorted(EXPRESS))
def test_a_step_failing_from_the_start_is_still_retried_for_about_a_minute_and_a_half(machine: str):
    """The budget cuts retries short only for an execution that is late already: one step that
    keeps failing from the execution's start gets its first five retries (3, 6, 12, 24 and 45 s)."""
    tasks = _tasks(EXPRESS[machine])
    for name, task in tasks.items():
        budget = _budget(task)
        if budget is not None:
            rest = task["Retry"][-1]
            assert rest["ErrorEquals"] == ["States.ALL"], name
            assert sum(_waits(rest)[:5]) <= budget, (machine, name)
