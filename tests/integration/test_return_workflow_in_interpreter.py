"""The real returns workflow (infra/return_workflow.asl.json) in moto's ASL interpreter, started by
POST /returns/{id}/receive, with a failure injected at each step: Retry recovers what is transient
and a step that did its work and then crashed changes nothing when run again (one restock, one
count, one refund); a step that keeps failing records `return_stuck` on the order and ends the
execution FAILED; receiving again resumes the return where it stopped.

The stack runs the task on the real handler through a wrapper that, for one return at a time, can
run a fault instead. Event sources are off: the order workflow is started by the test itself. The
delivered order most tests return from is placed, run and delivered once per process; each later
test starts from a copy of what that left (delivered_order), so each test's return has the same id."""

from __future__ import annotations

import importlib
import json
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from core.errors import TransientError
from core.ids import ORDER_ID
from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, order_body, put_network, unique
from tests.integration.conftest import payments_of, remember_payments, written_once

PARAMETERS = {"ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}
RUN_SECONDS = 20
STEP_STATES = {"receive": "Receive", "restock": "Restock", "record": "RecordOnOrder", "refund": "Refund"}
HAPPY_PATH = ["Receive", "Restock", "RecordOnOrder", "Refund", "Exchange", "ReturnRefunded"]

Handler = Callable[[dict[str, Any], Any], Any]
Fault = Callable[[dict[str, Any], Any, Handler], Any]


class Faults:
    """What the task does for each (step, return): the real handler, unless a fault was injected."""

    def __init__(self) -> None:
        self._faults: dict[tuple[str, str], Fault] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def inject(self, step: str, return_id: str, fault: Fault) -> None:
        self._faults[(step, return_id)] = fault

    def clear(self, return_id: str) -> None:
        for key in [k for k in self._faults if k[1] == return_id]:
            del self._faults[key]

    def reset(self) -> None:
        """No fault injected and no call counted: an earlier test's return had the same id."""
        self._faults.clear()
        self.calls.clear()

    def handler(self, event: dict[str, Any], context: Any) -> Any:
        key = (event.get("step", ""), event.get("return_id", ""))
        with self._lock:
            self.calls[key] += 1
        real = importlib.import_module("functions.return_workflow.app").lambda_handler
        fault = self._faults.get(key)
        return real(event, context) if fault is None else fault(event, context, real)


def crash_after_once() -> Fault:
    crashed = threading.Event()

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        real(event, context)
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("injected: the step did its work, then crashed")

    return fault


def crash(event: dict[str, Any], context: Any, real: Handler) -> Any:
    raise RuntimeError("injected: the step keeps crashing")


def transient_once() -> Fault:
    failed = threading.Event()

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        if not failed.is_set():
            failed.set()
            raise TransientError("injected: briefly unavailable")
        return real(event, context)

    return fault


@pytest.fixture(scope="module")
def faults() -> Faults:
    return Faults()


@pytest.fixture(scope="module")
def stack(faults: Faults) -> Iterator[EmbeddedStack]:
    with running_stack(
        parameter_overrides=PARAMETERS,
        event_sources=False,
        retry_delay_scale=0,  # every Retry still runs (each test counts its attempts), none sleeps
        handlers={"ReturnStepFunction": faults.handler},
    ) as started:
        yield started


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


# The executions an earlier test started (executions_of_earlier_tests): each test's return has the
# same id as the last one's (a copy of one delivered order), and its executions' names that prefix.
_EARLIER: set[str] = set()


@pytest.fixture(autouse=True)
def executions_of_earlier_tests(stack: EmbeddedStack, faults: Faults) -> None:
    """What earlier tests left outside the tables set aside: their executions (wait() skips them),
    their faults and counted calls."""
    sfn, arn = stack.client("stepfunctions"), stack.state_machine_arns["ReturnWorkflow"]
    _EARLIER.clear()
    _EARLIER.update(e["executionArn"] for e in sfn.list_executions(stateMachineArn=arn, maxResults=1000)["executions"])
    faults.reset()


@pytest.fixture(autouse=True)
def calls_granted(stack: EmbeddedStack) -> Iterator[None]:
    """Every test's step runs (retried, crashed, stuck, resumed, an exchange placed or given up)
    call only what the template grants ReturnStepFunction, by table, index and action: moto lets
    through what AWS would refuse."""
    from tests.template_iam import calls_by_function, granted

    with calls_by_function(stack) as calls:
        yield
        assert stack.wait_until_idle(RUN_SECONDS)
    needed = calls.get("ReturnStepFunction", set())
    assert needed <= granted("ReturnStepFunction"), f"not granted: {needed - granted('ReturnStepFunction')}"


# --- Helpers ------------------------------------------------------------------------------------


def wait(stack: EmbeddedStack, machine: str, prefix: str) -> list[dict[str, Any]]:
    """Every execution of `machine` whose name starts with `prefix`, once none is running, but an
    earlier test's (_EARLIER): each with its description and the states it entered, oldest first."""
    sfn = stack.client("stepfunctions")
    arn = stack.state_machine_arns[machine]
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        # While one of them runs, only the running executions are listed: every execution of the
        # module's earlier tests, listed and parsed at each look, cost more than the runs waited on.
        running = sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING", maxResults=1000)["executions"]
        if not any(e["name"].startswith(prefix) for e in running):
            listed = sfn.list_executions(stateMachineArn=arn, maxResults=1000)["executions"]
            mine = [e for e in listed if e["name"].startswith(prefix) and e["executionArn"] not in _EARLIER]
            if mine and all(e["status"] != "RUNNING" for e in mine):
                break
        assert time.monotonic() < deadline, f"executions {prefix}* still running"
        time.sleep(0.02)
    runs = []
    for execution in sorted(mine, key=lambda e: e["startDate"]):
        events = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
        entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
        runs.append({"status": execution["status"], "states": entered})
    return runs


def delivered_order(stack: EmbeddedStack, api: Api, network: dict[str, str]) -> tuple[str, str]:
    """A delivered order of 3 units of a product of its own from the west warehouse; (order, sku).
    The process's first test to ask places, runs and delivers it through the API and the order
    workflow; each later one starts from a copy of the tables as that left them (written_once),
    with the test gateway's memory of their orders as it was then: what an earlier test did to
    the order (its return, refund, exchange) is gone."""
    orders_now = order_ids(stack)  # an earlier test's, the copy's among them: their payments forgotten
    account_id = stack.state_machine_arns["OrderWorkflow"].split(":")[4]

    def delivered() -> tuple[str, str, bytes]:
        order_id, sku = a_delivered_order(stack, api, network)
        orders = order_ids(stack)
        return order_id, sku, pickle.dumps((orders, payments_of(orders)))

    (order_id, sku, payments), copied = written_once(stack.table_names, "a delivered order", delivered, account_id)
    if copied:
        orders, remembered = pickle.loads(payments)
        remember_payments(orders | orders_now, remembered)
    return order_id, sku


def order_ids(stack: EmbeddedStack) -> set[str]:
    table = stack.table_names["OrdersTable"]
    scanned = stack.client("dynamodb").scan(TableName=table, ProjectionExpression="id", ConsistentRead=True)
    return {item["id"]["S"] for item in scanned["Items"] if ORDER_ID.fullmatch(item["id"]["S"])}


def a_delivered_order(stack: EmbeddedStack, api: Api, network: dict[str, str], token: str = "tok_approve"):
    """A delivered order of 3 units of a new product from the west warehouse, placed, run and
    delivered now; (order, sku)."""
    sku = Catalog(api).product("10.00")
    Catalog(api).stock(sku, network["west"], 10)
    placed = api.post("/orders", json=order_body((sku, 3), payment={"method": "test", "token": token}))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    run = unique("run")
    stack.client("stepfunctions").start_execution(
        stateMachineArn=stack.state_machine_arns["OrderWorkflow"], name=run, input=json.dumps({"order_id": order_id})
    )
    assert [execution["status"] for execution in wait(stack, "OrderWorkflow", run)] == ["SUCCEEDED"]
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order["status"]
    for shipment in order["shipments"]:
        for action in ("ship", "deliver"):
            assert api.post(f"/orders/{order_id}/shipments/{shipment['id']}/{action}", json={}).status_code == 200
    return order_id, sku


def a_return(api: Api, order_id: str, quantity: int = 2) -> str:
    body = {"lines": [{"line_id": "L1", "quantity": quantity, "reason": "too big", "reason_code": "size_or_fit"}]}
    created = api.post(f"/orders/{order_id}/returns", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def receive(api: Api, rma: str, location_id: str) -> Any:
    receipt = {
        "location_id": location_id,
        "lines": [
            {"line_id": "L1", "quantity": 1, "condition": "resellable"},
            {"line_id": "L1", "quantity": 1, "condition": "damaged"},
        ],
    }
    response = api.post(f"/returns/{rma}/receive", json=receipt)
    assert response.status_code in (200, 202), response.text
    return response


def on_hand(api: Api, sku: str, location_id: str) -> int:
    levels = api.get(f"/inventory/{sku}").json()["locations"]
    return next(level["on_hand"] for level in levels if level["location_id"] == location_id)


def settled(api: Api, order_id: str, rma: str, sku: str, location_id: str, before: int) -> None:
    """One restock, one count, one refund: whatever ran twice changed nothing."""
    assert api.get(f"/returns/{rma}").json()["status"] == "refunded"
    assert on_hand(api, sku, location_id) == before + 1
    order = api.get(f"/orders/{order_id}").json()
    assert (order["status"], order["lines"][0]["returned_quantity"]) == ("partially_returned", 2)
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [(r["return_id"], r["status"]) for r in refunds] == [(rma, "succeeded")]
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [e["type"] for e in history].count("return_received") == 1


# --- Journeys -----------------------------------------------------------------------------------


def test_a_receipt_runs_receive_restock_count_and_refund(stack: EmbeddedStack, api: Api, network):
    order_id, sku = delivered_order(stack, api, network)
    rma = a_return(api, order_id)
    before = on_hand(api, sku, network["west"])

    first = receive(api, rma, network["west"])

    assert first.json()["status"] in ("received", "refunded")
    assert [run["states"] for run in wait(stack, "ReturnWorkflow", rma)] == [HAPPY_PATH]
    settled(api, order_id, rma, sku, network["west"], before)
    again = receive(api, rma, network["west"])
    assert (again.status_code, again.json()["status"]) == (200, "refunded")
    settled(api, order_id, rma, sku, network["west"], before)


@pytest.mark.parametrize("step", list(STEP_STATES))
@pytest.mark.parametrize("fault", ["transient_once", "crash_after_once"])
def test_a_step_that_fails_once_is_retried_and_changes_nothing_twice(
    stack: EmbeddedStack, api: Api, network, faults: Faults, step: str, fault: str
):
    order_id, sku = delivered_order(stack, api, network)
    rma = a_return(api, order_id)
    before = on_hand(api, sku, network["west"])
    faults.inject(step, rma, transient_once() if fault == "transient_once" else crash_after_once())

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "SUCCEEDED" and run["states"] == HAPPY_PATH
    assert faults.calls[(step, rma)] >= 2
    settled(api, order_id, rma, sku, network["west"], before)


@pytest.mark.parametrize("step", ["restock", "record", "refund"])
def test_a_step_that_keeps_failing_is_recorded_stuck_and_receiving_again_resumes_it(
    stack: EmbeddedStack, api: Api, network, faults: Faults, step: str
):
    order_id, sku = delivered_order(stack, api, network)
    rma = a_return(api, order_id)
    before = on_hand(api, sku, network["west"])
    faults.inject(step, rma, crash)

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "FAILED"
    assert run["states"][-2:] == ["ReturnStuck", "ReturnWorkflowFailed"]
    assert STEP_STATES[step] in run["states"]
    assert api.get(f"/returns/{rma}").json()["status"] == "received"
    stuck = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "return_stuck"]
    assert [(e["actor"], e["detail"]["return_id"], e["detail"]["error"]) for e in stuck] == [
        ("returns-workflow", rma, "RuntimeError")
    ]
    assert stuck[0]["detail"]["execution"].startswith(f"{rma}-")  # its execution's name: once per execution

    faults.clear(rma)
    receive(api, rma, network["west"])

    assert wait(stack, "ReturnWorkflow", rma)[-1]["status"] == "SUCCEEDED"
    settled(api, order_id, rma, sku, network["west"], before)


def late(seconds: float) -> Fault:
    """The real step, asked `seconds` after its execution started (the StartTime the interpreter
    passed, moved back): a step late in an execution whose earlier steps took their retries."""

    def fault(event: dict[str, Any], context: Any, real: Handler) -> Any:
        started = datetime.fromisoformat(str(event["started"]).replace("Z", "+00:00"))
        return real({**event, "started": (started - timedelta(seconds=seconds)).isoformat()}, context)

    return fault


@pytest.mark.parametrize("step", ["restock", "refund"])
def test_a_step_asked_once_its_execution_is_out_of_time_is_recorded_stuck_at_once(
    stack: EmbeddedStack, api: Api, network, faults: Faults, step: str
):
    """AWS stops an Express execution at five minutes without running ReturnStuck: a step asked
    after its retries' time refuses at once (WorkflowOutOfTime, never retried), so the return is
    recorded stuck for a person while the execution can still do it; receiving it again resumes it."""
    order_id, sku = delivered_order(stack, api, network)
    rma = a_return(api, order_id)
    before = on_hand(api, sku, network["west"])
    faults.inject(step, rma, late(seconds=91))

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "FAILED" and run["states"][-2:] == ["ReturnStuck", "ReturnWorkflowFailed"]
    assert faults.calls[(step, rma)] == 1  # never retried
    stuck = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "return_stuck"]
    assert [(e["detail"]["return_id"], e["detail"]["error"]) for e in stuck] == [(rma, "WorkflowOutOfTime")]
    assert stuck[0]["detail"]["message"].startswith("the workflow's steps may be retried for 90 s")

    faults.clear(rma)
    receive(api, rma, network["west"])

    assert wait(stack, "ReturnWorkflow", rma)[-1]["status"] == "SUCCEEDED"
    settled(api, order_id, rma, sku, network["west"], before)


def test_a_refund_the_gateway_refuses_is_asked_again_then_recorded_stuck(stack: EmbeddedStack, api: Api, network):
    order_id, _ = a_delivered_order(stack, api, network, token="tok_refund_decline")
    rma = a_return(api, order_id)

    response = receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert response.status_code == 202
    assert run["status"] == "FAILED" and run["states"].count("Refund") == 1
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [r["status"] for r in refunds] == ["failed"] * 3  # the first try and the Retry's two
    assert len({r["id"] for r in refunds}) == 3
    order = api.get(f"/orders/{order_id}").json()
    assert (order["payment"]["refunded"]["amount"], order["status"]) == ("0.00", "partially_returned")
    assert api.get(f"/returns/{rma}").json()["status"] == "received"
    (stuck,) = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "return_stuck"]
    # Read by the desk after the retries ended: it says what the workflow did, never "it is tried again".
    assert stuck["detail"]["message"] == (
        f"the refund of return {rma} is failed; the returns workflow asks again under a new key while its retries last"
    )


# --- Exchanges ----------------------------------------------------------------------------------


def an_exchange(api: Api, order_id: str, sku: str) -> str:
    body = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "too big", "reason_code": "size_or_fit"}],
            "exchange": {"lines": [{"sku": sku, "quantity": 1}]}}  # fmt: skip
    created = api.post(f"/orders/{order_id}/returns", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def exchange_placed_once(api: Api, order_id: str, rma: str) -> dict[str, Any]:
    """The exchange's one replacement order (external_id original + -x1), named once in the
    original's history; the rest of the credit refunded once. Returns the replacement."""
    item = api.get(f"/returns/{rma}").json()
    assert item["status"] == "refunded" and item["exchange_order_id"]
    original = api.get(f"/orders/{order_id}").json()
    replacement = api.get(f"/orders/{item['exchange_order_id']}").json()
    assert replacement["external_id"] == f"{original['external_id']}-x1"
    assert replacement["exchange_of"] == rma
    placed = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "exchange_placed"]
    assert [e["detail"]["exchange_order_id"] for e in placed] == [replacement["id"]]
    line_total = Decimal(original["lines"][0]["total"]["amount"])
    credit = (line_total * 2 / 3).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert Decimal(replacement["exchange_credit"]["amount"]) == credit  # 2 of the line's 3 units
    rest = credit - Decimal(replacement["totals"]["grand_total"]["amount"])
    refunds = [(r["return_id"], r["status"], Decimal(r["amount"]["amount"]))
               for r in api.get(f"/orders/{order_id}/refunds").json()["items"]]  # fmt: skip
    assert refunds == ([(rma, "succeeded", rest)] if rest > 0 else [])
    assert Decimal(item["refund"]["amount"]) == max(rest, Decimal(0))
    return replacement


@pytest.mark.parametrize("fault", ["transient_once", "crash_after_once"])
def test_an_exchange_step_that_fails_once_places_one_replacement(
    stack: EmbeddedStack, api: Api, network, faults: Faults, fault: str
):
    order_id, _ = delivered_order(stack, api, network)
    cheaper = Catalog(api).product("4.00")
    Catalog(api).stock(cheaper, network["west"], 5)
    rma = an_exchange(api, order_id, cheaper)
    faults.inject("exchange", rma, transient_once() if fault == "transient_once" else crash_after_once())

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "SUCCEEDED" and run["states"] == HAPPY_PATH
    assert faults.calls[("exchange", rma)] >= 2
    exchange_placed_once(api, order_id, rma)


def test_an_exchange_that_keeps_failing_is_stuck_and_receiving_again_resumes_it(
    stack: EmbeddedStack, api: Api, network, faults: Faults
):
    order_id, _ = delivered_order(stack, api, network)
    cheaper = Catalog(api).product("4.00")
    Catalog(api).stock(cheaper, network["west"], 5)
    rma = an_exchange(api, order_id, cheaper)
    faults.inject("exchange", rma, crash)

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "FAILED" and run["states"][-3:] == ["Exchange", "ReturnStuck", "ReturnWorkflowFailed"]
    assert api.get(f"/returns/{rma}").json()["status"] == "received"

    faults.clear(rma)
    receive(api, rma, network["west"])

    assert wait(stack, "ReturnWorkflow", rma)[-1]["status"] == "SUCCEEDED"
    exchange_placed_once(api, order_id, rma)


def test_an_exchange_with_no_stock_for_its_replacement_is_refunded_instead(stack: EmbeddedStack, api: Api, network):
    # The replacement's product may not wait for stock and none is left when the parcel arrives:
    # the workflow ends refunded (not return_stuck, with neither the item nor the money given).
    order_id, _ = delivered_order(stack, api, network)
    sold_out = Catalog(api).product("4.00")
    rma = an_exchange(api, order_id, sold_out)
    orders_before = {o["id"] for o in api.get("/orders?limit=100").json()["items"]}

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "SUCCEEDED" and run["states"] == HAPPY_PATH
    item = api.get(f"/returns/{rma}").json()
    assert (item["status"], item["exchange_order_id"], item["exchange_not_placed"]) == (
        "refunded", None, "insufficient_stock"
    )  # fmt: skip
    original = api.get(f"/orders/{order_id}").json()
    line_total = Decimal(original["lines"][0]["total"]["amount"])
    due = (line_total * 2 / 3).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)  # 2 of the line's 3 units
    assert Decimal(item["refund"]["amount"]) == due
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [(r["return_id"], r["status"], Decimal(r["amount"]["amount"])) for r in refunds] == [(rma, "succeeded", due)]
    assert "exchange not placed" in refunds[0]["reason"]
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    (entry,) = [e for e in history if e["type"] == "exchange_not_placed"]
    assert (entry["detail"]["return_id"], entry["detail"]["code"]) == (rma, "insufficient_stock")
    assert not [e for e in history if e["type"] in ("return_stuck", "exchange_placed")]
    assert {o["id"] for o in api.get("/orders?limit=100").json()["items"]} == orders_before


def test_an_exchange_whose_product_lost_its_price_is_refunded_instead(stack: EmbeddedStack, api: Api, network):
    # Repriced in euros only after the return was accepted: no replacement can ever be priced in
    # dollars, so the workflow ends refunded (not return_stuck, with neither the item nor the money).
    order_id, _ = delivered_order(stack, api, network)
    cap = Catalog(api).product("4.00")
    Catalog(api).stock(cap, network["west"], 5)
    rma = an_exchange(api, order_id, cap)
    repriced = api.put(f"/products/{cap}", json={"name": "Cap", "price": {"amount": "4.00", "currency": "EUR"}})
    assert repriced.status_code == 200, repriced.text

    receive(api, rma, network["west"])

    (run,) = wait(stack, "ReturnWorkflow", rma)
    assert run["status"] == "SUCCEEDED" and run["states"] == HAPPY_PATH
    item = api.get(f"/returns/{rma}").json()
    assert (item["status"], item["exchange_order_id"], item["exchange_not_placed"]) == ("refunded", None, "no_price")
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    (entry,) = [e for e in history if e["type"] == "exchange_not_placed"]
    assert (entry["detail"]["return_id"], entry["detail"]["code"]) == (rma, "no_price")
    assert not [e for e in history if e["type"] in ("return_stuck", "exchange_placed")]
