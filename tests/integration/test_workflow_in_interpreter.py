"""The real order workflow (infra/order_workflow.asl.json) in moto's ASL interpreter, with a failure
injected at each step: Retry recovers what is transient, a failure that outlives the retries parks
the order on hold (never cancels it: its authorization and reservations stay), only a business
outcome (a decline, no stock) ends it, and a compensation that keeps failing ends the execution
FAILED in CompensationFailed for an operator.

The stack runs every task on the real handler through a wrapper that, for one order at a time,
can run a fault instead (raise before, raise after, fail once). Event sources are off: each test
starts its executions itself, for orders it placed through the HTTP API.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from core.errors import TransientError
from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, order_body, put_network, unique, unsigned

PARAMETERS = {"ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}
RUN_SECONDS = 15

STEPS = {
    "AuthorizePayment": "AuthorizePaymentFunction",
    "ReserveStock": "ReserveStockFunction",
    "CreateShipments": "CreateShipmentsFunction",
    "FailPayment": "FailPaymentFunction",
    "CancelOrder": "CancelOrderFunction",
    "ParkOrder": "ParkOrderFunction",
}
REAL_HANDLERS = {
    "AuthorizePaymentFunction": "functions.workflow.authorize_payment",
    "ReserveStockFunction": "functions.workflow.reserve_stock",
    "CreateShipmentsFunction": "functions.workflow.create_shipments",
    "FailPaymentFunction": "functions.workflow.fail_payment",
    "CancelOrderFunction": "functions.workflow.cancel_order",
    "ParkOrderFunction": "functions.workflow.park_order",
}

Handler = Callable[[dict[str, Any], Any], Any]
Fault = Callable[[dict[str, Any], Any, Handler], Any]


class Faults:
    """What each task does for one order: the real handler, unless a fault was injected."""

    def __init__(self) -> None:
        self._faults: dict[tuple[str, str], Fault] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.problems: list[str] = []  # assertions that failed inside a fault
        self._lock = threading.Lock()

    def inject(self, step: str, order_id: str, fault: Fault) -> None:
        self._faults[(step, order_id)] = fault

    def handler(self, step: str) -> Handler:
        def run(event: dict[str, Any], context: Any) -> Any:
            order_id = event.get("order_id", "")
            with self._lock:
                self.calls[(step, order_id)] += 1
            real = importlib.import_module(REAL_HANDLERS[STEPS[step]]).lambda_handler
            fault = self._faults.get((step, order_id))
            if fault is None:
                return real(event, context)
            try:
                return fault(event, context, real)
            except AssertionError as failed:
                # The workflow would catch it like any task error: keep it for the test to fail on.
                self.problems.append(f"{step} for {order_id}: {failed}")
                raise

        return run

    def count(self, order_id: str) -> dict[str, int]:
        return {step: n for (step, oid), n in self.calls.items() if oid == order_id}


# --- Faults ---------------------------------------------------------------------------------------


def crash(event: dict[str, Any], context: Any, real: Handler) -> Any:
    raise RuntimeError("injected: the task crashed before doing anything")


def crash_after(event: dict[str, Any], context: Any, real: Handler) -> Any:
    real(event, context)
    raise RuntimeError("injected: the task did its work, then crashed")


def transient_always(event: dict[str, Any], context: Any, real: Handler) -> Any:
    raise TransientError("injected: briefly unavailable, again")


def transient_once() -> Fault:
    failed = threading.Event()

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        if not failed.is_set():
            failed.set()
            raise TransientError("injected: briefly unavailable")
        return real(event, context)

    return fault


# --- Fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults() -> Faults:
    return Faults()


@pytest.fixture(scope="module")
def stack(faults: Faults) -> Iterator[EmbeddedStack]:
    with running_stack(
        api_port=0,
        aws_port=0,
        seed=False,
        parameter_overrides=PARAMETERS,
        event_sources=False,
        retry_delay_scale=0,  # every Retry still runs (tests count the attempts), none sleeps
        handlers={logical_id: faults.handler(step) for step, logical_id in STEPS.items()},
    ) as started:
        yield started


@pytest.fixture(autouse=True)
def no_failed_checks_inside_tasks(faults: Faults) -> Iterator[None]:
    faults.problems.clear()
    yield
    assert faults.problems == []


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def network(api: Api) -> dict[str, str]:
    return put_network(api)


@pytest.fixture
def stocked(api: Api, network: dict[str, str]) -> dict[str, Any]:
    """Two skus with 5 units each at the west warehouse, and the inventory as it starts."""
    catalog = Catalog(api)
    skus = [catalog.product("10.00"), catalog.product("4.25")]
    for sku in skus:
        catalog.stock(sku, network["west"], 5)
    return {"skus": skus, "start": inventory(api, *skus)}


# --- Helpers ---------------------------------------------------------------------------------------------


def place(api: Api, body: dict[str, Any]) -> str:
    response = api.post("/orders", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def get_order(api: Api, order_id: str) -> dict[str, Any]:
    response = api.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    return response.json()


def history(api: Api, order_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def inventory(api: Api, *skus: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(sku, location_id): (on_hand, reserved)}."""
    found = {}
    for sku in skus:
        response = api.get(f"/inventory/{sku}")
        assert response.status_code == 200, response.text
        for level in response.json()["locations"]:
            found[(sku, level["location_id"])] = (level["on_hand"], level["reserved"])
    return found


def run(stack: EmbeddedStack, order_id: str, **given: Any) -> dict[str, Any]:
    """Start an execution for the order (with `given` in its input too), wait for it to end; its
    description, the names of the states it entered and its events."""
    sfn = stack.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=stack.state_machine_arns["OrderWorkflow"],
        name=unique("run"),
        input=json.dumps({"order_id": order_id, **given}),
    )["executionArn"]
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            break
        assert time.monotonic() < deadline, f"execution for {order_id} still running"
        time.sleep(0.02)
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    return {"described": described, "states": entered, "events": events}


def assert_compensated(api: Api, order_id: str, start: dict[tuple[str, str], tuple[int, int]], skus: list[str]):
    """Cancelled by the workflow for an error: nothing reserved, inventory as it started, and the
    authorization (if one was made) voided."""
    order = get_order(api, order_id)
    assert order["status"] == "cancelled", order["status"]
    assert inventory(api, *skus) == start
    payment = order["payment"]
    assert Decimal(payment["captured"]["amount"]) == 0
    if Decimal(payment["authorized"]["amount"]) > 0:
        assert payment["status"] == "voided", payment
    else:
        assert payment["status"] != "authorized", payment
    entries = history(api, order_id)
    last = next(e for e in reversed(entries) if e["type"] == "cancelled")
    assert (last["type"], last["to_status"], last["actor"]) == ("cancelled", "cancelled", "workflow")
    if payment["status"] == "voided":  # recorded after the cancel, in the write that follows the gateway's yes
        assert entries[-1]["type"] == "payment_voided"
    return order, last


# --- Outcomes without faults ---------------------------------------------------------------------------------


def test_an_approved_order_ends_in_order_allocated(stack: EmbeddedStack, api: Api, faults: Faults, stocked):
    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 2)))

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"] == ["Start", "AuthorizePayment", "ReserveStock", "CreateShipments", "OrderAllocated"]
    assert json.loads(result["described"]["output"]) == {"order_id": order_id}
    assert get_order(api, order_id)["status"] == "allocated"
    assert faults.count(order_id) == {"AuthorizePayment": 1, "ReserveStock": 1, "CreateShipments": 1}


def test_a_declined_payment_ends_in_order_payment_failed(stack: EmbeddedStack, api: Api, faults: Faults, stocked):
    order_id = place(api, order_body((stocked["skus"][0], 1), payment={"method": "test", "token": "tok_decline"}))

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"] == ["Start", "AuthorizePayment", "FailPayment", "OrderPaymentFailed"]
    assert get_order(api, order_id)["status"] == "payment_failed"
    assert inventory(api, *stocked["skus"]) == stocked["start"]
    assert faults.count(order_id) == {"AuthorizePayment": 1, "FailPayment": 1}  # a decline is not retried


def test_an_order_cancelled_before_its_execution_ends_in_order_already_closed(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    order_id = place(api, order_body((stocked["skus"][0], 1)))
    assert api.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"}).status_code == 200
    before = get_order(api, order_id)

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"] == ["Start", "AuthorizePayment", "OrderAlreadyClosed"]
    assert get_order(api, order_id) == before  # never authorized, nothing reserved
    assert inventory(api, *stocked["skus"]) == stocked["start"]


def test_a_cancel_written_by_a_process_that_then_died_is_finished_by_the_execution_the_outbox_starts(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    """The jeopardy scan (an expired hold), the pickup expiry or a request writes the cancel, then
    releases and voids: one that dies in between leaves the stock reserved and the authorization
    held. The outbox starts an execution with `finish_cancel` for the cancel's record, and it runs
    CancelOrder alone, which finishes the clean-up."""
    from functions.bootstrap import Config, bootstrap

    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 2)))
    assert run(stack, order_id)["states"][-1] == "OrderAllocated"
    assert api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"}).status_code == 200
    repository = bootstrap(Config.from_env()).order_repository
    held = repository.get(order_id)
    cancelled, entry = held.cancel("hold_expired", at=held.updated_at, actor="jeopardy_scan")
    repository.update(cancelled, held, [entry])  # ...and the scan's Lambda dies here
    order = get_order(api, order_id)
    assert (order["status"], order["payment"]["status"]) == ("cancelled", "authorized")
    assert inventory(api, *stocked["skus"]) != stocked["start"]

    finishing = run(stack, order_id, finish_cancel=True)

    assert finishing["described"]["status"] == "SUCCEEDED"
    assert finishing["states"] == ["Start", "CancelRecorded", "CancelOrder", "OrderCancelled"]
    assert faults.count(order_id).get("AuthorizePayment") == 1  # only the first execution's
    order = get_order(api, order_id)
    assert (order["status"], order["payment"]["status"]) == ("cancelled", "voided")
    assert inventory(api, *stocked["skus"]) == stocked["start"]
    assert [e["type"] for e in history(api, order_id)][-2:] == ["cancelled", "payment_voided"]


def test_finishing_a_cancel_that_keeps_failing_ends_the_execution_failed_for_an_operator(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    order_id = place(api, order_body((stocked["skus"][0], 1)))
    assert api.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"}).status_code == 200
    faults.inject("CancelOrder", order_id, transient_always)

    result = run(stack, order_id, finish_cancel=True)

    assert result["described"]["status"] == "FAILED"
    assert result["states"] == ["Start", "CancelRecorded", "CancelOrder", "CompensationFailed"]
    assert faults.count(order_id)["CancelOrder"] == 6  # the task's 5 retries, then OrderWorkflowFailedAlarm


def test_an_allocated_order_run_again_ends_allocated_and_unchanged(stack: EmbeddedStack, api: Api, stocked):
    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 2)))
    assert run(stack, order_id)["states"][-1] == "OrderAllocated"
    allocated, reserved = get_order(api, order_id), inventory(api, sku)

    again = run(stack, order_id)

    assert again["states"] == ["Start", "AuthorizePayment", "ReserveStock", "CreateShipments", "OrderAllocated"]
    assert unsigned(get_order(api, order_id)) == unsigned(allocated)  # label links are signed at each read
    assert inventory(api, sku) == reserved


def test_a_backordered_order_ends_its_execution_and_a_new_one_allocates_it_once_stock_is_there(
    stack: EmbeddedStack, api: Api, faults: Faults, network
):
    catalog = Catalog(api)
    sku = catalog.product("30.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 1)
    order_id = place(api, order_body((sku, 3)))

    waiting = run(stack, order_id)

    assert waiting["described"]["status"] == "SUCCEEDED"
    assert waiting["states"] == ["Start", "AuthorizePayment", "ReserveStock", "OrderBackordered"]
    order = get_order(api, order_id)
    assert (order["status"], order["shipments"], order["payment"]["status"]) == ("backordered", [], "authorized")
    assert [a["quantity"] for a in order["allocations"]] == [1]
    assert inventory(api, sku) == {(sku, network["west"]): (1, 1)}
    assert run(stack, order_id)["states"] == [
        "Start",
        "AuthorizePayment",
        "ReserveStock",
        "CreateShipments",
        "OrderBackordered",
    ]

    catalog.stock(sku, network["east"], 5)  # event sources are off here: the next execution takes them
    resumed = run(stack, order_id)

    assert resumed["states"] == ["Start", "AuthorizePayment", "ReserveStock", "CreateShipments", "OrderAllocated"]
    order = get_order(api, order_id)
    assert order["status"] == "allocated" and sum(a["quantity"] for a in order["allocations"]) == 3
    assert {s["location_id"] for s in order["shipments"]} == {network["west"], network["east"]}
    assert inventory(api, sku) == {(sku, network["west"]): (1, 1), (sku, network["east"]): (5, 2)}


# --- A task that keeps failing: retried, then ParkOrder -------------------------------------------------------
RETRIES = 6  # the ASL's States.ALL retrier: MaxAttempts


def assert_parked(api: Api, order_id: str, error: str) -> dict[str, Any]:
    """On hold for a person, with a system reason: nothing voided, captured or cancelled."""
    order = get_order(api, order_id)
    assert order["status"] == "on_hold", order["status"]
    assert order["hold"]["reason"] == "other"
    assert order["hold"]["note"].startswith(f"order workflow failed after retries: {error}")
    assert set(order["hold"]) == {"reason", "note", "since"}
    assert Decimal(order["payment"]["captured"]["amount"]) == 0
    assert order["payment"]["status"] in ("pending", "authorized")
    entries = history(api, order_id)
    assert [e["type"] for e in entries].count("cancelled") == 0
    last = entries[-1]
    assert (last["type"], last["to_status"], last["actor"]) == ("on_hold", "on_hold", "workflow")
    assert (last["detail"]["reason"], last["detail"]["error"]) == ("other", error)
    return order


@pytest.mark.parametrize("step", ["AuthorizePayment", "ReserveStock", "CreateShipments"])
def test_a_task_that_keeps_crashing_is_retried_then_parks_the_order_on_hold(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, step: str
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2), (skus[1], 1)))
    faults.inject(step, order_id, crash)

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"][-3:] == [step, "ParkOrder", "OrderParked"]
    assert faults.count(order_id)[step] == 1 + RETRIES
    order = assert_parked(api, order_id, "RuntimeError")
    # A bug's message is not the OMS's to show whoever reads the order: its type only (the step's
    # log line and the execution's history keep the message).
    assert order["hold"]["note"] == "order workflow failed after retries: RuntimeError"
    assert order["shipments"] == []
    if step == "AuthorizePayment":
        assert order["payment"]["status"] == "pending"
        assert inventory(api, *skus) == stocked["start"]
    else:
        # Paid: the authorization stays; what was reserved stays reserved for the release.
        assert order["payment"]["status"] == "authorized"
    if step == "CreateShipments":
        assert inventory(api, *skus) != stocked["start"]
        assert len(order["allocations"]) == 2


@pytest.mark.parametrize("step", ["AuthorizePayment", "ReserveStock"])
def test_a_task_that_keeps_crashing_after_its_work_parks_the_paid_order_without_voiding(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, step: str
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 3), (skus[1], 2)))
    faults.inject(step, order_id, crash_after)

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    order = assert_parked(api, order_id, "RuntimeError")
    assert order["payment"]["status"] == "authorized"  # never voided for an infrastructure reason
    types = [e["type"] for e in history(api, order_id)]
    assert "payment_voided" not in types and types.count("payment_authorized") == 1


def test_a_failure_that_stays_transient_parks_the_order_after_the_retries(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 1)))
    faults.inject("ReserveStock", order_id, transient_always)

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    assert faults.count(order_id)["ReserveStock"] == 1 + RETRIES
    assert assert_parked(api, order_id, "TransientError")["payment"]["status"] == "authorized"


def late(seconds: float) -> Fault:
    """The real task, asked `seconds` after its execution started (Step Functions' StartTime, as
    the interpreter passed it, moved back): how a step runs late in an execution whose earlier
    steps took their retries, without waiting for them."""

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        started = datetime.fromisoformat(str(event["started"]).replace("Z", "+00:00"))
        return real({**event, "started": (started - timedelta(seconds=seconds)).isoformat()}, context)

    return fault


@pytest.mark.parametrize("step", ["AuthorizePayment", "ReserveStock", "CreateShipments"])
def test_a_step_asked_once_its_execution_is_out_of_time_parks_the_order_at_once(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, step: str
):
    """AWS stops an Express execution at five minutes and runs no Catch then: a main step asked
    after its retries' time (the ASL's retry_for_seconds) refuses without retrying, so ParkOrder
    runs while the execution still has the time to, and the order waits on hold for a person."""
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 1)))
    faults.inject(step, order_id, late(seconds=91))

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"][-3:] == [step, "ParkOrder", "OrderParked"]
    assert faults.count(order_id)[step] == 1  # never retried
    order = assert_parked(api, order_id, "WorkflowOutOfTime")
    assert order["hold"]["note"].startswith(
        "order workflow failed after retries: WorkflowOutOfTime: the workflow's steps may be retried for 90 s"
    )
    assert order["payment"]["status"] == ("pending" if step == "AuthorizePayment" else "authorized")


def test_a_step_asked_within_its_executions_time_runs_as_usual(stack: EmbeddedStack, api: Api, faults: Faults, stocked):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 1)))
    for step in ("AuthorizePayment", "ReserveStock", "CreateShipments"):
        faults.inject(step, order_id, late(seconds=85))

    assert run(stack, order_id)["states"][-1] == "OrderAllocated"
    assert get_order(api, order_id)["status"] == "allocated"


def test_dynamodb_throttling_that_outlives_every_retry_parks_the_order(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    """A throttle that botocore's own retries could not ride out surfaces from the task as a
    ClientError: the state machine retries it for minutes, then parks the order."""
    from botocore.exceptions import ClientError

    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 1)))

    def throttled(event: dict[str, Any], context: Any, real: Handler) -> Any:
        error = {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded"}
        raise ClientError({"Error": error}, "UpdateItem")

    faults.inject("CreateShipments", order_id, throttled)

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    assert faults.count(order_id)["CreateShipments"] == 1 + RETRIES
    order = assert_parked(api, order_id, "ClientError")
    # botocore's message may name the account, roles and tables: the type only.
    assert order["hold"]["note"] == "order workflow failed after retries: ClientError"
    assert order["payment"]["status"] == "authorized"


def test_a_crash_that_recovers_within_the_retries_allocates_the_order(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 1)))
    failures = iter(range(3))

    def crashes_three_times(event: dict[str, Any], context: Any, real: Handler) -> Any:
        if next(failures, None) is not None:
            raise RuntimeError("injected: a dependency was down for a while")
        return real(event, context)

    faults.inject("ReserveStock", order_id, crashes_three_times)

    result = run(stack, order_id)

    assert result["states"][-1] == "OrderAllocated"
    assert faults.count(order_id)["ReserveStock"] == 4
    assert get_order(api, order_id)["status"] == "allocated"


def test_reserve_stock_that_reserved_then_crashed_before_recording_holds_each_unit_once_when_parked(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, monkeypatch: pytest.MonkeyPatch
):
    """The reservations were made but the order never recorded them, every time: parked with the
    inventory holding the order's units once (each retry reconciles with what it finds), and a
    cancel by an operator releases what the inventory holds for the order, not only what it knows of."""
    from functions.adapters.dynamodb import DynamoOrders

    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2), (skus[1], 4)))
    real_update = DynamoOrders.update

    def reserve_then_crash(event: dict[str, Any], context: Any, real: Handler) -> Any:
        def update(self: Any, new: Any, old: Any, entries: Any, **conditions: Any) -> Any:
            if new.id == order_id and any(entry.type == "stock_reserved" for entry in entries):
                raise RuntimeError("injected: the container died before the order was written")
            return real_update(self, new, old, entries, **conditions)

        monkeypatch.setattr(DynamoOrders, "update", update)
        try:
            return real(event, context)
        finally:
            monkeypatch.setattr(DynamoOrders, "update", real_update)

    faults.inject("ReserveStock", order_id, reserve_then_crash)

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    order = assert_parked(api, order_id, "RuntimeError")
    assert order["allocations"] == []
    reserved = sum(r for (_, r) in inventory(api, *skus).values()) - sum(r for (_, r) in stocked["start"].values())
    assert reserved == 6
    cancelled = api.post(f"/orders/{order_id}/cancel", json={"reason": "operator: parked order"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["status"] == "voided"
    assert inventory(api, *skus) == stocked["start"]


# --- A business outcome: CancelOrder --------------------------------------------------------------------------


def test_stock_gone_before_reservation_cancels_the_order_and_voids(stack: EmbeddedStack, api: Api, stocked):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 5)))
    taken = place(api, order_body((skus[0], 5)))  # every unit of the west warehouse
    assert run(stack, taken)["states"][-1] == "OrderAllocated"
    start = inventory(api, skus[0])

    result = run(stack, order_id)

    assert result["states"] == ["Start", "AuthorizePayment", "ReserveStock", "CancelOrder", "OrderCancelled"]
    order, entry = assert_compensated(api, order_id, start, [skus[0]])
    assert order["payment"]["status"] == "voided"
    assert (entry["detail"]["reason"], entry["detail"]["error"]) == ("out_of_stock", "OutOfStock")


# --- Compensation that fails: CompensationFailed -----------------------------------------------------------------


def test_a_park_order_that_keeps_failing_ends_the_execution_failed_for_an_operator(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2)))
    faults.inject("CreateShipments", order_id, crash)
    faults.inject("ParkOrder", order_id, crash)

    result = run(stack, order_id)

    described = result["described"]
    assert described["status"] == "FAILED"
    assert described["error"] == "CompensationFailed"
    assert "operator" in described["cause"]
    assert result["states"][-2:] == ["ParkOrder", "CompensationFailed"]
    assert faults.count(order_id)["ParkOrder"] == 6  # the first attempt and MaxAttempts 5 retries
    # The order is left as the failure found it (authorized, stock reserved), for an operator,
    # who can still cancel it through the API: that releases and voids.
    stuck = get_order(api, order_id)
    assert stuck["status"] == "authorized" and stuck["payment"]["status"] == "authorized"
    assert inventory(api, *skus) != stocked["start"]
    cancelled = api.post(f"/orders/{order_id}/cancel", json={"reason": "operator: workflow compensation failed"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["status"] == "voided"
    assert inventory(api, *skus) == stocked["start"]


def test_a_park_order_that_died_after_parking_is_run_again_and_still_counts_the_park(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, monkeypatch: pytest.MonkeyPatch
):
    """ParkOrder's write landed, then its function died before it counted the park: the Retry's run
    finds the order parked by this execution and counts it (OrdersParked, which OrdersParkedAlarm
    watches), once the order is parked once."""
    from functions.workflow import park_order, step

    counted: list[str] = []
    monkeypatch.setattr(park_order.metrics, "add_metric", lambda name, **_: counted.append(name))
    order_id = place(api, order_body((stocked["skus"][0], 1)))
    faults.inject("CreateShipments", order_id, crash)
    died = threading.Event()

    def parks_then_dies(event: dict[str, Any], context: Any, real: Handler) -> Any:
        if died.is_set():
            return real(event, context)
        died.set()
        park_order.park(step.container().workflow, step.StepInput.model_validate(event))
        counted.clear()  # the function died before its metrics were flushed
        raise RuntimeError("injected: ParkOrder parked the order, then died")

    faults.inject("ParkOrder", order_id, parks_then_dies)

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    assert faults.count(order_id)["ParkOrder"] == 2
    assert counted == ["OrdersParked"]
    assert_parked(api, order_id, "RuntimeError")
    entries = history(api, order_id)
    assert [e["type"] for e in entries].count("on_hold") == 1
    assert entries[-1]["detail"]["execution"] == result["described"]["name"]


def twin_writes_first(monkeypatch: pytest.MonkeyPatch) -> Fault:
    """The task run twice at once (Express runs at least once): the run asked first reads the order
    and does its work, and its twin, run whole just before the first's order write, writes first."""
    from functions.adapters.dynamodb import DynamoOrders

    real_update = DynamoOrders.update

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        def update(self: Any, new: Any, old: Any, entries: Any, **conditions: Any) -> Any:
            monkeypatch.setattr(DynamoOrders, "update", real_update)
            real(event, context)  # the twin
            return real_update(self, new, old, entries, **conditions)

        monkeypatch.setattr(DynamoOrders, "update", update)
        try:
            return real(event, context)
        finally:
            monkeypatch.setattr(DynamoOrders, "update", real_update)

    return fault


@pytest.mark.parametrize("step", ["AuthorizePayment", "ReserveStock", "CreateShipments"])
def test_a_step_run_twice_at_once_leaves_the_order_as_one_run_does(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, step: str, monkeypatch: pytest.MonkeyPatch
):
    """The run that loses its write to its twin's undoes only what is its own: the authorization, the
    reservations and the bookings the twin recorded (the same keys) stay."""
    from functions.bootstrap import Config, bootstrap

    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2), (skus[1], 1)))
    faults.inject(step, order_id, twin_writes_first(monkeypatch))

    assert run(stack, order_id)["states"][-1] == "OrderAllocated"

    order = get_order(api, order_id)
    assert order["status"] == "allocated" and order["payment"]["status"] == "authorized"
    assert [e["type"] for e in history(api, order_id)] == [
        "created",
        "payment_authorized",
        "stock_reserved",
        "allocated",
    ]
    assert len(order["shipments"]) == 1
    reserved = {item: level[1] - stocked["start"][item][1] for item, level in inventory(api, *skus).items()}
    assert sorted(reserved.values()) == [1, 2]
    stored = bootstrap(Config.from_env()).order_repository.get(order_id)
    assert (stored.bookings_to_cancel, stored.unrecorded_bookings) == ([], [])


def test_a_park_order_task_run_twice_at_once_parks_and_counts_the_order_once(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, monkeypatch: pytest.MonkeyPatch
):
    """The run that parks counts the park; its twin, which read the order before that write and
    lost its own to it, finds the order parked by its execution. That is no earlier attempt that
    died before counting (a Retry, `$$.State.RetryCount` above 0), and counting it again told
    OrdersParked of two parks of one order."""
    from functions.workflow import park_order

    counted: list[str] = []
    monkeypatch.setattr(park_order.metrics, "add_metric", lambda name, **_: counted.append(name))
    order_id = place(api, order_body((stocked["skus"][0], 1)))
    faults.inject("CreateShipments", order_id, crash)
    faults.inject("ParkOrder", order_id, twin_writes_first(monkeypatch))

    result = run(stack, order_id)

    assert result["states"][-2:] == ["ParkOrder", "OrderParked"]
    assert_parked(api, order_id, "RuntimeError")
    assert [e["type"] for e in history(api, order_id)].count("on_hold") == 1
    assert counted == ["OrdersParked"]


def test_a_fail_payment_that_keeps_failing_ends_the_execution_failed(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    order_id = place(api, order_body((stocked["skus"][0], 1), payment={"method": "test", "token": "tok_decline"}))
    faults.inject("FailPayment", order_id, crash)

    result = run(stack, order_id)

    assert result["described"]["status"] == "FAILED"
    assert result["described"]["error"] == "CompensationFailed"
    assert result["states"] == ["Start", "AuthorizePayment", "FailPayment", "CompensationFailed"]
    assert faults.count(order_id)["FailPayment"] == 6
    assert get_order(api, order_id)["status"] == "pending"
    assert inventory(api, *stocked["skus"]) == stocked["start"]


# --- Stock that goes while the step runs ------------------------------------------------------------------------------


def test_losing_the_planned_location_to_a_concurrent_change_sources_again_elsewhere(
    stack: EmbeddedStack, api: Api, faults: Faults, network: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """ReserveStock plans from the levels it read, then reserves. If, in between, another order (or
    a stock take) takes the units at the planned location, the order did not lose the race for
    the last units: the other warehouse can still supply it."""
    from functions.adapters.dynamodb import DynamoInventory

    west, east = network["west"], network["east"]
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, west, 2)
    catalog.stock(sku, east, 10)
    order_id = place(api, order_body((sku, 2)))  # plans west, the nearest with everything
    real_reserve = DynamoInventory.reserve

    def west_sells_out_meanwhile(event: dict[str, Any], context: Any, real: Handler) -> Any:
        def reserve(self: Any, sku_: str, location_id: str, key: str, quantity: int) -> None:
            if sku_ == sku and location_id == west and key.startswith(order_id):
                monkeypatch.setattr(DynamoInventory, "reserve", real_reserve)
                response = api.put(f"/inventory/{sku}/{west}", json={"on_hand": 0})  # a concurrent stock take
                assert response.status_code == 200, response.text
            return real_reserve(self, sku_, location_id, key, quantity)

        monkeypatch.setattr(DynamoInventory, "reserve", reserve)
        try:
            return real(event, context)
        finally:
            monkeypatch.setattr(DynamoInventory, "reserve", real_reserve)

    faults.inject("ReserveStock", order_id, west_sells_out_meanwhile)

    result = run(stack, order_id)

    order = get_order(api, order_id)
    assert (order["status"], result["states"][-1]) == ("allocated", "OrderAllocated"), history(api, order_id)[-1][
        "detail"
    ]
    assert [(a["location_id"], a["quantity"]) for a in order["allocations"]] == [(east, 2)]


# --- The API acting on the order while its workflow runs ------------------------------------------------------------


def test_an_order_cancelled_while_its_workflow_runs_is_left_closed_and_voided(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2)))

    def customer_cancels_first(event: dict[str, Any], context: Any, real: Handler) -> Any:
        response = api.post(f"/orders/{order_id}/cancel", json={"reason": "customer cancelled"})
        assert response.status_code == 200, response.text
        return real(event, context)

    faults.inject("ReserveStock", order_id, customer_cancels_first)

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"] == ["Start", "AuthorizePayment", "ReserveStock", "OrderAlreadyClosed"]
    order = get_order(api, order_id)
    assert order["status"] == "cancelled" and order["payment"]["status"] == "voided"
    assert inventory(api, *skus) == stocked["start"]
    cancelled, voided = history(api, order_id)[-2:]
    assert (cancelled["type"], cancelled["actor"], cancelled["detail"]["reason"]) == (
        "cancelled", "key_admin", "customer cancelled",
    )  # fmt: skip
    assert (voided["type"], voided["actor"]) == ("payment_voided", "key_admin")


def _edit_while_authorized(api: Api, order_id: str, lines: list[dict[str, Any]]) -> Fault:
    """A ReserveStock that first lets the customer edit the (authorized, not yet reserved) order."""

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        current = get_order(api, order_id)
        assert current["status"] == "authorized"
        response = api.request(
            "PATCH", f"/orders/{order_id}", headers={"If-Match": str(current["version"])}, json={"lines": lines}
        )
        assert response.status_code == 200, response.text
        return real(event, context)

    return fault


def test_an_authorized_order_edited_to_a_larger_total_is_authorized_again_and_captures_it(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 1)))
    faults.inject("ReserveStock", order_id, _edit_while_authorized(api, order_id, [{"sku": sku, "quantity": 3}]))

    assert run(stack, order_id)["states"][-1] == "OrderAllocated"

    order = get_order(api, order_id)
    assert order["payment"]["authorized"] == order["totals"]["grand_total"]
    assert [(a["quantity"]) for a in order["allocations"]] == [3]
    [shipment] = order["shipments"]
    shipped = api.post(f"/orders/{order_id}/shipments/{shipment['id']}/ship")
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["payment"]["captured"] == order["totals"]["grand_total"]


def test_an_authorized_order_edited_to_a_smaller_total_captures_only_the_new_total(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked
):
    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 4)))
    faults.inject("ReserveStock", order_id, _edit_while_authorized(api, order_id, [{"sku": sku, "quantity": 1}]))
    assert run(stack, order_id)["states"][-1] == "OrderAllocated"
    order = get_order(api, order_id)
    [shipment] = order["shipments"]

    shipped = api.post(f"/orders/{order_id}/shipments/{shipment['id']}/ship")

    assert shipped.status_code == 200, shipped.text
    payment = shipped.json()["payment"]
    # The authorization for the larger total stands; only what the order now costs is captured.
    assert Decimal(order["payment"]["authorized"]["amount"]) > Decimal(order["totals"]["grand_total"]["amount"])
    assert payment["captured"] == order["totals"]["grand_total"], (payment, order["totals"]["grand_total"])


# --- Holds: the execution ends at a hold, a release starts the workflow again ------------------------------------


def _hold_first(api: Api, order_id: str) -> Fault:
    """The task a person's hold reaches first: the hold lands, then the real step runs."""

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        response = api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review", "note": "check it"})
        assert response.status_code == 200, response.text
        return real(event, context)

    return fault


@pytest.mark.parametrize("step", ["AuthorizePayment", "ReserveStock", "CreateShipments"])
def test_a_hold_at_each_step_ends_the_execution_and_the_release_resumes_it_there(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, step: str
):
    sku = stocked["skus"][0]
    order_id = place(api, order_body((sku, 2)))
    faults.inject(step, order_id, _hold_first(api, order_id))

    held_run = run(stack, order_id)

    main = ["Start", "AuthorizePayment", "ReserveStock", "CreateShipments"]
    assert held_run["described"]["status"] == "SUCCEEDED"
    assert held_run["states"] == [*main[: main.index(step) + 1], "OrderOnHold"]  # no retry, nothing waits
    held = get_order(api, order_id)
    assert held["status"] == "on_hold" and held["hold"]["reason"] == "fraud_review"
    assert held["shipments"] == []
    reserved = sum(r for _, r in inventory(api, sku).values())
    assert reserved == (2 if step == "CreateShipments" else 0)  # a hold reserves nothing new

    faults.inject(step, order_id, lambda event, context, real: real(event, context))
    released = api.post(f"/orders/{order_id}/release", json={"note": "verified"})
    assert released.status_code == 200, released.text
    # The outbox starts a new execution on the release (event sources are off in this module).
    resumed = run(stack, order_id)

    assert resumed["states"] == [*main, "OrderAllocated"]
    order = get_order(api, order_id)
    assert order["status"] == "allocated" and order["hold"] is None
    authorized = [e for e in history(api, order_id) if e["type"] == "payment_authorized"]
    assert len(authorized) == 1  # the steps done before the hold were skipped, not repeated
    assert [e["type"] for e in history(api, order_id)].count("released") == 1


# --- Settings that leave an order no location: parked, not cancelled ----------------------------------------------


def every_location(api: Api) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        response = api.get("/locations", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        ids += [loc["location_id"] for loc in response.json()["items"]]
        if (cursor := response.json()["next_cursor"]) is None:
            return ids


@pytest.fixture
def exclude_every_location(api: Api) -> Iterator[Callable[[], dict[str, Any]]]:
    """Puts sourcing rules excluding every location of the network (a merchant's mistake, or a
    pause) when called, and returns them; the defaults are put back after the test."""

    def exclude() -> dict[str, Any]:
        response = api.put("/sourcing/rules", json={"prefer": "nearest", "excluded_locations": every_location(api)})
        assert response.status_code == 200, response.text
        return response.json()

    try:
        yield exclude
    finally:
        put_back = api.put("/sourcing/rules", json={"prefer": "nearest"})
        assert put_back.status_code == 200, put_back.text


def test_rules_that_leave_a_paid_order_no_location_park_it_with_its_payment_and_the_release_sources_it_again(
    stack: EmbeddedStack, api: Api, faults: Faults, stocked, exclude_every_location, monkeypatch: pytest.MonkeyPatch
):
    """Captured just before a PUT /sourcing/rules excluding every location, an order of products
    that may not wait backordered was cancelled out_of_stock, its authorization voided, though its
    units were on the shelf: a setting is not a business outcome. It is parked for a person instead
    (OrdersParked, whose alarm calls one), holding nothing, its authorization kept; put back, the
    rules source it on its release."""
    from functions.workflow import park_order

    counted: list[str] = []
    monkeypatch.setattr(park_order.metrics, "add_metric", lambda name, **_: counted.append(name))
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2), (skus[1], 1)))
    version = exclude_every_location()["version"]

    result = run(stack, order_id)

    assert result["described"]["status"] == "SUCCEEDED"
    assert result["states"][-3:] == ["ReserveStock", "ParkOrder", "OrderParked"]
    # Retried as any failure is (rules put back within the retries would let it go on), then parked.
    assert faults.count(order_id)["ReserveStock"] == 1 + RETRIES
    assert counted == ["OrdersParked"]
    order = assert_parked(api, order_id, "OutOfReach")
    assert f"no location may supply order {order_id} under sourcing rules v{version}" in order["hold"]["note"]
    assert order["payment"]["status"] == "authorized" and order["allocations"] == []
    assert inventory(api, *skus) == stocked["start"]  # nothing reserved while parked

    put_back = api.put("/sourcing/rules", json={"prefer": "nearest"})
    assert put_back.status_code == 200, put_back.text
    released = api.post(f"/orders/{order_id}/release", json={"note": "rules put back"})
    assert released.status_code == 200, released.text
    assert run(stack, order_id)["states"][-2:] == ["CreateShipments", "OrderAllocated"]
    allocated = get_order(api, order_id)
    assert allocated["status"] == "allocated" and allocated["payment"]["status"] == "authorized"
    reserved = [e for e in history(api, order_id) if e["type"] == "stock_reserved"]
    assert [e["detail"]["sourcing_rules_version"] for e in reserved] == [put_back.json()["version"]]


def test_rules_that_leave_an_order_no_location_still_cancel_it_when_no_location_has_its_units(
    stack: EmbeddedStack, api: Api, stocked, exclude_every_location
):
    """No setting keeps it from units that are not there: out of stock under any rules is the
    business outcome it always was (cancelled out_of_stock, authorization voided)."""
    skus = stocked["skus"]
    order_id = place(api, order_body((skus[0], 2)))
    taken = place(api, order_body((skus[0], 5)))  # every unit there is
    assert run(stack, taken)["states"][-1] == "OrderAllocated"
    exclude_every_location()
    start = inventory(api, skus[0])

    result = run(stack, order_id)

    assert result["states"][-2:] == ["CancelOrder", "OrderCancelled"]
    order, entry = assert_compensated(api, order_id, start, [skus[0]])
    assert order["payment"]["status"] == "voided"
    assert (entry["detail"]["reason"], entry["detail"]["error"]) == ("out_of_stock", "OutOfStock")
