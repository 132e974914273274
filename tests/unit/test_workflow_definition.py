"""infra/order_workflow.asl.json agrees with the domain: its tasks are core's steps, the statuses
they write follow the transition table, every failure is compensated, every path ends."""

import json
from pathlib import Path

from core.status import TRANSITIONS, OrderStatus
from core.workflow import STEP_RESULTS

ASL = json.loads((Path(__file__).resolve().parents[2] / "infra" / "order_workflow.asl.json").read_text())
STATES = ASL["States"]
TASKS = {name: state for name, state in STATES.items() if state["Type"] == "Task"}
MAIN_PATH = ["AuthorizePayment", "ReserveStock", "CreateShipments"]


def _next_states(state: dict) -> list[str]:
    nexts = [state["Next"]] if "Next" in state else []
    nexts += [catch["Next"] for catch in state.get("Catch", [])]
    return nexts


def test_every_task_is_a_step_of_core_and_back():
    assert set(TASKS) == set(STEP_RESULTS)


def test_every_task_resource_is_a_substituted_function_arn():
    for name, state in TASKS.items():
        assert state["Resource"] == "${" + name + "FunctionArn}", name


def test_the_main_path_moves_statuses_along_the_transition_table():
    assert ASL["StartAt"] == MAIN_PATH[0]
    status = OrderStatus.PENDING
    for step, following in zip(MAIN_PATH, [*MAIN_PATH[1:], "OrderAllocated"], strict=True):
        assert TASKS[step]["Next"] == following
        produced = STEP_RESULTS[step]
        if produced is not None:
            assert produced in TRANSITIONS[status], f"{step}: {status} -> {produced}"
            status = produced
    assert status is OrderStatus.ALLOCATED
    assert STATES["OrderAllocated"]["Type"] == "Succeed"


def test_every_main_step_is_compensated_and_payment_failure_is_reached_only_from_authorization():
    for step in MAIN_PATH:
        catches = {err: c["Next"] for c in TASKS[step]["Catch"] for err in c["ErrorEquals"]}
        assert catches["States.ALL"] == "CancelOrder", step
        assert catches["OrderClosed"] == "OrderAlreadyClosed", step
    catches = {err: c["Next"] for c in TASKS["AuthorizePayment"]["Catch"] for err in c["ErrorEquals"]}
    assert catches["PaymentDeclined"] == "FailPayment"
    # A declined payment happens before any stock is held, so it needs no release.
    assert STEP_RESULTS["FailPayment"] in TRANSITIONS[OrderStatus.PENDING]
    for status in (OrderStatus.PENDING, OrderStatus.AUTHORIZED):
        assert STEP_RESULTS["CancelOrder"] in TRANSITIONS[status]


def test_compensations_end_in_terminal_statuses_and_their_own_failure_is_a_fail_state():
    for compensation, end in (("FailPayment", "OrderPaymentFailed"), ("CancelOrder", "OrderCancelled")):
        assert TRANSITIONS[STEP_RESULTS[compensation]] == frozenset()
        assert TASKS[compensation]["Next"] == end
        assert STATES[end]["Type"] == "Succeed"
        assert [c["Next"] for c in TASKS[compensation]["Catch"]] == ["CompensationFailed"]
    assert STATES["CompensationFailed"]["Type"] == "Fail"


def test_transient_errors_are_retried_with_backoff_and_a_cap():
    for step in MAIN_PATH:
        retries = TASKS[step]["Retry"]
        transient = next(r for r in retries if "TransientError" in r["ErrorEquals"])
        assert transient["MaxAttempts"] >= 2
        assert transient["BackoffRate"] > 1
        assert transient["MaxDelaySeconds"] <= 60


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
