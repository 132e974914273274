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


RETURNS = json.loads((Path(__file__).resolve().parents[2] / "infra" / "return_workflow.asl.json").read_text())
RETURN_STEPS = {"Receive": "receive", "Restock": "restock", "RecordOnOrder": "record", "Refund": "refund",
                "Exchange": "exchange"}  # fmt: skip
# No retry mends these: a return not received (or gone), a step asked once its execution is out of
# time, and an exchange whose replacement cannot be placed (its refund is made instead).
NOT_RETRIED = {"ReturnNotReceived", "NotFound", "WorkflowOutOfTime"}
EXCHANGE_REFUSALS = {"InsufficientStock", "UnknownSku", "InvalidRequest", "ExchangeIdTaken"}


def test_a_returns_step_refused_for_good_is_recorded_stuck_at_once_and_any_other_failure_after_its_retries():
    """Each step in turn (receive, restock, count on the order, refund, exchange), each told which it
    is and when its execution started; a refusal no retry mends goes to ReturnStuck at once (not
    after a minute and a half of retries), a refund the gateway refused is asked again twice, 30 s
    apart, and anything else is retried; then the return is recorded stuck, naming the execution,
    the error and its cause, and the execution fails for the ReturnWorkflowFailedAlarm."""
    states = RETURNS["States"]
    path = [RETURNS["StartAt"]]
    while states[path[-1]]["Type"] == "Task":
        path.append(states[path[-1]]["Next"])
    assert path == [*RETURN_STEPS, "ReturnRefunded"] and states["ReturnRefunded"]["Type"] == "Succeed"
    for name, step in RETURN_STEPS.items():
        state = states[name]
        assert state["Parameters"]["step"] == step, name
        assert state["Parameters"]["started.$"] == "$$.Execution.StartTime", name
        retries = state["Retry"]
        never = [r for r in retries if r.get("MaxAttempts") == 0]
        assert len(never) == 1 and retries.index(never[0]) < len(retries) - 1, name
        assert set(never[0]["ErrorEquals"]) == NOT_RETRIED | (EXCHANGE_REFUSALS if name == "Exchange" else set()), name
        refused = [r for r in retries if "RefundNotDone" in r["ErrorEquals"]]
        if name in ("Refund", "Exchange"):
            assert refused == [retries[0]], name
            assert (refused[0]["IntervalSeconds"], refused[0]["MaxAttempts"], refused[0]["BackoffRate"]) == (30, 2, 1)
        else:
            assert refused == [], name
        assert retries[-1]["ErrorEquals"] == ["States.ALL"] and retries[-1]["MaxAttempts"] >= 5, name
        assert state["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "ReturnStuck"}], name
    stuck = states["ReturnStuck"]
    assert stuck["Parameters"]["step"] == "stuck"
    assert {k: stuck["Parameters"][k] for k in ("execution.$", "error.$", "cause.$")} == {
        "execution.$": "$$.Execution.Name",
        "error.$": "$.error.Error",
        "cause.$": "$.error.Cause",
    }
    assert stuck["Retry"][0]["ErrorEquals"] == ["States.ALL"] and stuck["Retry"][0]["MaxAttempts"] >= 3
    assert stuck["Next"] == "ReturnWorkflowFailed" and [c["Next"] for c in stuck["Catch"]] == ["ReturnWorkflowFailed"]
    assert states["ReturnWorkflowFailed"]["Type"] == "Fail"


def test_the_retries_an_operator_reads_in_the_readme_are_the_state_machines():
    """The README tells an operator how long a failing step is retried before its order is parked
    (3, 6, 12, 24, 45, 45 s; a task's timeouts 3 times over 35 s) and how long a compensation is
    (5 times over about 30 s): what they wait for before an alarm is the schedule the ASL runs."""
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "(3, 6, 12, 24, 45, 45 s; task timeouts 3 times over 35 s)" in readme
    assert "retried by the task (5 times over about 30 s)" in readme
    for step in MAIN_PATH:
        retries = TASKS[step]["Retry"]
        assert _waits(retries[-1]) == [3, 6, 12, 24, 45, 45], step
        timeouts = next(r for r in retries if "States.Timeout" in r["ErrorEquals"])
        assert len(_waits(timeouts)) == 3 and sum(_waits(timeouts)) == 35, step
    for compensation in ("FailPayment", "CancelOrder", PARK):
        (retry,) = TASKS[compensation]["Retry"]
        assert retry["ErrorEquals"] == ["States.ALL"], compensation
        assert len(_waits(retry)) == 5 and 25 <= sum(_waits(retry)) <= 35, compensation


# The business outcomes each main step can end an order with (the rest of BUSINESS_OUTCOMES it never raises).
OUTCOMES = {
    "AuthorizePayment": ["OrderHeld", "OrderClosed", "PaymentDeclined"],
    "ReserveStock": ["OrderHeld", "OrderClosed", "OutOfStock", "Backordered"],
    "CreateShipments": ["OrderHeld", "OrderClosed", "OutOfStock", "Backordered"],
}


def test_a_hold_a_close_or_a_business_outcome_at_any_step_is_caught_before_the_park_and_hands_on_the_error():
    """Step Functions takes the first Catch that matches: a held order caught by States.ALL would be
    parked (a person's hold overwritten by a note about a failure), a declined payment parked
    instead of failed. Each main step catches its own outcomes first, States.ALL last, and keeps
    the order id beside the error (`$.error`) for the state it hands on to."""
    for step, outcomes in OUTCOMES.items():
        catches = TASKS[step]["Catch"]
        assert [c["ErrorEquals"] for c in catches] == [[error] for error in outcomes] + [["States.ALL"]], step
        assert [c["Next"] for c in catches] == [after_failure(error) for error in outcomes] + [PARK], step
        assert {c["ResultPath"] for c in catches} == {"$.error"}, step


def test_every_step_is_told_what_it_needs_to_stop_in_time_and_the_park_what_failed():
    """Each main step gets the order, the execution's input (for its log lines), when the execution
    started and how long it may retry (else it could never refuse in time for the park);
    AuthorizePayment its attempt; ParkOrder the error, its cause,
    the execution that parks (shown in the order's history) and its attempt (a park counted once)."""
    for step in MAIN_PATH:
        parameters = TASKS[step]["Parameters"]
        assert {k: parameters[k] for k in ("order_id.$", "trace.$", "started.$")} == {
            "order_id.$": "$.order_id", "trace.$": "$$.Execution.Input", "started.$": "$$.Execution.StartTime"
        }, step  # fmt: skip
        assert parameters["retry_for_seconds"] == 90, step
    assert TASKS["AuthorizePayment"]["Parameters"]["attempt.$"] == "$$.State.RetryCount"
    park = TASKS[PARK]["Parameters"]
    assert {k: park[k] for k in ("order_id.$", "execution.$", "attempt.$", "error.$", "cause.$")} == {
        "order_id.$": "$.order_id", "execution.$": "$$.Execution.Name", "attempt.$": "$$.State.RetryCount",
        "error.$": "$.error.Error", "cause.$": "$.error.Cause",
    }  # fmt: skip
    for compensation in ("FailPayment", "CancelOrder"):
        parameters = TASKS[compensation]["Parameters"]
        assert (parameters["error.$"], parameters["cause.$"]) == ("$.error.Error", "$.error.Cause"), compensation
