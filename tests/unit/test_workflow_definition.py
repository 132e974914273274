"""infra/order_workflow.asl.json agrees with the domain: its tasks are core's steps, the statuses
they write follow the transition table, only business outcomes end an order and every other
failure is retried then parked (within Express's five minutes: tests/unit/test_aws_limits.py), and
every path ends."""

import json
from pathlib import Path

from core.status import TRANSITIONS, OrderStatus
from core.workflow import BUSINESS_OUTCOMES, CANCEL_RECORDED, PARK, STEP_RESULTS, after_failure
from infra.local.template import load_template

ASL = json.loads((Path(__file__).resolve().parents[2] / "infra" / "order_workflow.asl.json").read_text())
STATES = ASL["States"]
TASKS = {name: state for name, state in STATES.items() if state["Type"] == "Task"}
MAIN_PATH = ["AuthorizePayment", "ReserveStock", "CreateShipments"]


def _next_states(state: dict) -> list[str]:
    nexts = [state["Next"]] if "Next" in state else []
    nexts += [catch["Next"] for catch in state.get("Catch", [])]
    nexts += [rule["Next"] for rule in state.get("Choices", [])] + ([state["Default"]] if "Default" in state else [])
    return nexts


def test_every_task_is_a_step_of_core_and_back():
    assert set(TASKS) == set(STEP_RESULTS)


def test_every_task_resource_is_a_substituted_function_arn():
    for name, state in TASKS.items():
        assert state["Resource"] == "${" + name + "FunctionArn}", name


def test_the_main_path_moves_statuses_along_the_transition_table():
    assert STATES[ASL["StartAt"]]["Default"] == MAIN_PATH[0]
    status = OrderStatus.PENDING
    for step, following in zip(MAIN_PATH, [*MAIN_PATH[1:], "OrderAllocated"], strict=True):
        assert TASKS[step]["Next"] == following
        produced = STEP_RESULTS[step]
        if produced is not None:
            assert produced in TRANSITIONS[status], f"{step}: {status} -> {produced}"
            status = produced
    assert status is OrderStatus.ALLOCATED
    assert STATES["OrderAllocated"]["Type"] == "Succeed"


def test_every_main_step_parks_what_is_not_a_business_outcome_and_declines_only_at_authorization():
    for step in MAIN_PATH:
        catches = {err: c["Next"] for c in TASKS[step]["Catch"] for err in c["ErrorEquals"]}
        assert catches["States.ALL"] == PARK, step
        for error, state in catches.items():
            assert after_failure(error) == state, f"{step}: {error} -> {state}"
        assert catches["OrderClosed"] == "OrderAlreadyClosed", step
    catches = {err: c["Next"] for c in TASKS["AuthorizePayment"]["Catch"] for err in c["ErrorEquals"]}
    assert catches["PaymentDeclined"] == "FailPayment"
    assert {err for c in TASKS["ReserveStock"]["Catch"] for err in c["ErrorEquals"]} >= {"OutOfStock"}
    # A declined payment happens before any stock is held, so it needs no release.
    assert STEP_RESULTS["FailPayment"] in TRANSITIONS[OrderStatus.PENDING]
    for status in (OrderStatus.PENDING, OrderStatus.AUTHORIZED):
        assert STEP_RESULTS["CancelOrder"] in TRANSITIONS[status]
        # Parked from wherever a main step can fail, and released back to it.
        assert STEP_RESULTS[PARK] in TRANSITIONS[status]
        assert status in TRANSITIONS[STEP_RESULTS[PARK]]


def test_compensations_end_the_execution_and_their_own_failure_is_a_fail_state():
    for compensation, end in (
        ("FailPayment", "OrderPaymentFailed"), ("CancelOrder", "OrderCancelled"), (PARK, "OrderParked")
    ):  # fmt: skip
        assert TASKS[compensation]["Next"] == end
        assert STATES[end]["Type"] == "Succeed"
        assert [c["Next"] for c in TASKS[compensation]["Catch"]] == ["CompensationFailed"]
    for compensation in ("FailPayment", "CancelOrder"):
        assert TRANSITIONS[STEP_RESULTS[compensation]] == frozenset()
    assert STATES["CompensationFailed"]["Type"] == "Fail"


def _waits(retrier: dict) -> list[float]:
    """The waits before each retry, without jitter (FULL jitter only shortens them)."""
    interval, rate, cap = (
        retrier.get("IntervalSeconds", 1),
        retrier.get("BackoffRate", 2.0),
        retrier.get("MaxDelaySeconds"),
    )
    waits = [interval * rate**n for n in range(retrier.get("MaxAttempts", 3))]
    return [min(w, cap) if cap else w for w in waits]


def test_business_outcomes_are_never_retried_and_everything_else_is_retried_for_minutes():
    for step in MAIN_PATH:
        retries = TASKS[step]["Retry"]
        first = retries[0]
        # With the business outcomes, the refusal of a step asked once its execution is out of time.
        assert set(first["ErrorEquals"]) == {*BUSINESS_OUTCOMES, "WorkflowOutOfTime"}, step
        assert first["MaxAttempts"] == 0, step
        rest = retries[-1]
        assert rest["ErrorEquals"] == ["States.ALL"], step
        assert rest["BackoffRate"] > 1 and rest.get("JitterStrategy") == "FULL", step
        # Throttles, Lambda errors, a TransientError, a botocore error: about two minutes of backoff,
        # cut short once the execution has retried for its retry_for_seconds (test_aws_limits.py).
        assert 120 <= sum(_waits(rest)) <= 150, step
        timeouts = next(r for r in retries if "States.Timeout" in r["ErrorEquals"])
        assert "Sandbox.Timedout" in timeouts["ErrorEquals"] and timeouts["MaxAttempts"] >= 2, step


def test_every_task_has_a_timeout_shorter_than_it_could_hang():
    """Each task's TimeoutSeconds (the returns workflow's too) is above its function's Timeout in
    template.yaml, so a function that runs out of time fails as Lambda reports it
    (Sandbox.Timedout, retried) before the state does (States.Timeout), and at most 30 s, so a
    hung step cannot eat Express's five minutes."""
    template = load_template()
    resources = template["Resources"]
    returns = json.loads((Path(__file__).resolve().parents[2] / "infra" / "return_workflow.asl.json").read_text())
    for name, state in [*STATES.items(), *returns["States"].items()]:
        if state["Type"] != "Task":
            continue
        function = resources[state["Resource"].removeprefix("${").removesuffix("Arn}")]["Properties"]
        timeout = function.get("Timeout", template["Globals"]["Function"]["Timeout"])
        assert timeout < state["TimeoutSeconds"] <= 30, name


def test_every_state_is_reachable_and_every_path_ends():
    seen, todo = set(), [ASL["StartAt"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = STATES[name]
        nexts = _next_states(state)
        assert nexts or state["Type"] in ("Succeed", "Fail") or state.get("End"), name
        todo.extend(nexts)
    assert seen == set(STATES)


def test_a_backordered_order_ends_the_execution_and_waits_without_an_execution():
    """ReserveStock backorders an order short of backorderable stock and CreateShipments refuses
    one still short: both end the execution at a Succeed state (no Wait, no task token), and
    the backorder allocator starts a new one once every unit is reserved."""
    for step in ("ReserveStock", "CreateShipments"):
        catches = {err: c["Next"] for c in TASKS[step]["Catch"] for err in c["ErrorEquals"]}
        assert catches["Backordered"] == after_failure("Backordered") == "OrderBackordered", step
    assert STATES["OrderBackordered"]["Type"] == "Succeed"
    assert not [s for s in STATES.values() if s["Type"] == "Wait"]
    assert OrderStatus.BACKORDERED in TRANSITIONS[OrderStatus.AUTHORIZED]
    assert OrderStatus.ALLOCATED in TRANSITIONS[OrderStatus.BACKORDERED]
    assert OrderStatus.CANCELLED in TRANSITIONS[OrderStatus.BACKORDERED]


def test_an_execution_started_to_finish_a_cancel_goes_straight_to_cancel_order_and_nothing_else():
    """The outbox starts one with `finish_cancel` for each cancel recorded outside the workflow:
    the first state sends it to CancelOrder, told by the error CANCEL_RECORDED to finish the clean-up
    (never to cancel), and every other execution to the main path."""
    start = STATES[ASL["StartAt"]]
    assert start["Type"] == "Choice"
    [rule] = start["Choices"]
    assert rule == {"Variable": "$.finish_cancel", "IsPresent": True, "Next": "CancelRecorded"}
    recorded = STATES["CancelRecorded"]
    assert recorded["Type"] == "Pass" and recorded["Next"] == "CancelOrder"
    assert recorded["ResultPath"] == "$.error" and recorded["Result"]["Error"] == CANCEL_RECORDED
    assert TASKS["CancelOrder"]["Parameters"]["error.$"] == "$.error.Error"
