"""Failures are seen, never silent: which failures end an order and which park it on hold for a
person (core.workflow.after_failure, Workflow.park_after_failure), and the hold itself on the Order
(its reason, note and since, the status a release resumes to, which no response shows)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from core.errors import InvalidTransition, OrderClosed, StaleVersion, TransientError
from core.holds import Holds, ReleaseRequest
from core.jeopardy import JeopardyScan, parse_sla
from core.models import Order
from core.ports import StalledOrder, StalledOrders, WorkflowStarter
from core.reconciliation import MAX_REFUSED_STARTS, Reconciled, Reconciler
from core.status import OrderStatus, can_transition
from core.workflow import BUSINESS_OUTCOMES, PARK, after_failure
from functions.adapters.workflow_starter import StepFunctionsReturnStarter, StepFunctionsStarter
from plugins.testing.memory import InMemoryLateOrders
from tests.builders import NOW
from tests.unit.world import World, before_the_next_write, build_world

S = OrderStatus
STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 3)]


def cause(error: str, message: str) -> str:
    return json.dumps({"errorType": error, "errorMessage": message})


# --- Park or end: by the error's class -------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "state"),
    [
        ("PaymentDeclined", "FailPayment"),
        ("OutOfStock", "CancelOrder"),
        ("OrderClosed", "OrderAlreadyClosed"),
        ("OrderHeld", "OrderOnHold"),
    ],
)
def test_business_outcomes_end_the_order(error, state):
    assert after_failure(error) == state


@pytest.mark.parametrize(
    "error",
    [
        "TransientError",  # retries ran out: DynamoDB throttled, a gateway down, a lost race that kept losing
        "States.Timeout",  # the task's TimeoutSeconds
        "States.TaskFailed",
        "Sandbox.Timedout",  # the Lambda's own timeout
        "Lambda.TooManyRequestsException",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "ProvisionedThroughputExceededException",
        "ReadTimeoutError",  # a botocore timeout surfacing from a task
        "PluginError",  # a plugin answered nonsense: a person must look, not the customer pay for it
        "PluginUnavailable",
        "RuntimeError",
        "NotFound",
    ],
)
def test_every_other_failure_parks_the_order(error):
    assert after_failure(error) == PARK == "ParkOrder"


def test_only_the_business_outcomes_are_not_parked():
    assert set(BUSINESS_OUTCOMES) == {"PaymentDeclined", "OutOfStock", "OrderClosed", "OrderHeld", "Backordered"}


# --- The hold on the Order -----------------------------------------------------------------


def test_an_authorized_order_may_go_on_hold_and_back_and_a_hold_never_skips_ahead():
    assert can_transition(S.AUTHORIZED, S.ON_HOLD)
    assert can_transition(S.ON_HOLD, S.AUTHORIZED)
    assert can_transition(S.ON_HOLD, S.PENDING)
    assert not can_transition(S.SHIPPED, S.ON_HOLD)
    assert not can_transition(S.PARTIALLY_SHIPPED, S.ON_HOLD)
    # The table lets a hold end `allocated` (an allocated order held by a person); the Order
    # releases only to the status it was held from, so an authorized order never skips ahead.


def test_park_puts_the_order_on_hold_with_a_system_reason_and_a_note_naming_the_failure(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    before = world.order(order_id)

    parked = world.workflow.park_after_failure(
        order_id, "Lambda.TooManyRequestsException", cause("TooManyRequestsException", "Rate exceeded")
    )

    assert parked is True
    order = world.order(order_id)
    assert order.status is S.ON_HOLD
    assert order.hold is not None
    assert (order.hold.reason, order.hold.since, order.hold.resume_to) == ("other", NOW, S.AUTHORIZED)
    # Lambda's error, not the OMS's: named by its type, its message (which may name the account) left
    # to the step's log and the execution's history (core.workflow._own_error).
    assert order.hold.note == "order workflow failed after retries: Lambda.TooManyRequestsException"
    # Nothing moved money or stock: the authorization and the reservations are kept for the release.
    assert order.payment == before.payment and order.payment.status == "authorized"
    assert order.allocations == before.allocations
    assert sum(world.held_for(order_id).values()) == 2
    assert world.spy.voided == [] and world.spy.captured == []
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "on_hold",
        S.AUTHORIZED,
        S.ON_HOLD,
        "workflow",
    )
    assert entry.detail == {
        "reason": "other",
        "note": order.hold.note,
        "error": "Lambda.TooManyRequestsException",
        "message": "",
        "parked": True,
    }


def test_a_pending_order_whose_authorization_kept_failing_is_parked_not_declined(world):
    order_id = world.place(("TSHIRT", 1))

    assert world.workflow.park_after_failure(order_id, "TransientError", cause("TransientError", "gateway down"))

    order = world.order(order_id)
    assert (order.status, order.payment.status, order.hold.resume_to) == (S.ON_HOLD, "pending", S.PENDING)


def test_park_is_idempotent_and_leaves_a_finished_or_closed_order_alone(world):
    order_id = world.place(("TSHIRT", 1))
    assert world.workflow.park_after_failure(order_id, "States.Timeout", "")
    once = world.snapshot(order_id)

    assert world.workflow.park_after_failure(order_id, "States.Timeout", "") is False
    assert world.snapshot(order_id) == once

    allocated = world.allocated(("MUG", 1))
    assert world.workflow.park_after_failure(allocated.id, "RuntimeError", "") is False  # crashed after its write
    assert world.order(allocated.id).status is S.ALLOCATED


def test_a_park_whose_write_landed_but_whose_answer_was_lost_still_counts_as_parked(world, monkeypatch, clock):
    """DynamoDB wrote the park, then its answer was lost (a read timeout, a 500): botocore sends the
    same conditional write again, which fails its condition (StaleVersion), and the re-read finds the
    order on hold. That hold is this call's own: it parked the order, so ParkOrder (and the
    reconciler) count it for OrdersParkedAlarm. Taken for "parked already", the park was silent."""
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    clock.advance(minutes=3)  # the park is not at the moment the order last changed
    real = world.orders.update

    def landed_then_lost(order: Order, expected: Order, entries, **conditions) -> None:
        real(order, expected, entries, **conditions)
        monkeypatch.setattr(world.orders, "update", real)
        raise StaleVersion(f"order {order.id} is no longer {expected.status} at version {expected.version}")

    monkeypatch.setattr(world.orders, "update", landed_then_lost)

    assert world.workflow.park_after_failure(order_id, "TransientError", cause("TransientError", "down")) is True
    order = world.order(order_id)
    assert (order.status, order.hold.resume_to) == (S.ON_HOLD, S.AUTHORIZED)
    assert [entry.type for entry in world.history(order_id)].count("on_hold") == 1
    # Another park of it (a twin execution's, or this one's sent again) did not park it.
    assert world.workflow.park_after_failure(order_id, "TransientError", "") is False


def test_a_park_order_task_run_again_after_its_write_landed_still_counts_its_park(world, clock):
    """ParkOrder's function parked the order and died before it counted it (its timeout struck in
    the metric's flush, or its answer to Step Functions was lost): the Retry runs the task again, in
    the same execution, and finds the order parked. That park is this execution's: it counts it, or
    OrdersParkedAlarm never hears of the order. A park by another execution is not counted again."""
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    failure = ("States.Timeout", cause("States.Timeout", "the task timed out"))

    assert world.workflow.park_after_failure(order_id, *failure, execution="run-1") is True
    clock.advance(seconds=2)  # the Retry's interval
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-1", retried=True) is True
    # Its first attempt run twice at once (Express runs at least once): the twin counts it.
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-1") is False

    assert [entry.type for entry in world.history(order_id)].count("on_hold") == 1
    assert world.history(order_id)[-1].detail["execution"] == "run-1"
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-2") is False
    assert world.workflow.park_after_failure(order_id, *failure) is False


def test_a_park_task_run_again_counts_its_park_of_an_order_parked_and_released_before(world, clock):
    """As above, on an order an earlier execution parked and a person released: the hold found is
    the last one, this execution's, and counted; the first park is not taken for it."""
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    failure = ("States.Timeout", cause("States.Timeout", "the task timed out"))
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-1") is True
    Holds(world.orders, clock=clock).release(order_id, ReleaseRequest(), actor="key_ops")
    clock.advance(minutes=5)

    assert world.workflow.park_after_failure(order_id, *failure, execution="run-2") is True
    clock.advance(seconds=2)
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-2", retried=True) is True
    assert world.workflow.park_after_failure(order_id, *failure, execution="run-1", retried=True) is False


def test_a_parked_order_stops_the_workflow_steps(world):
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.park_after_failure(order_id, "States.Timeout", "")
    once = world.snapshot(order_id)

    for step in (world.workflow.reserve_stock, world.workflow.create_shipments):
        with pytest.raises(OrderClosed):
            step(order_id)
    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert world.snapshot(order_id) == once


def test_release_resumes_the_status_it_was_held_from_and_clears_the_hold(world):
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.park_after_failure(order_id, "States.Timeout", "")
    held = world.order(order_id)

    released, entry = held.release(note="throttling over", at=NOW, actor="key_ops")

    assert (released.status, released.hold, released.version) == (S.AUTHORIZED, None, held.version + 1)
    assert (entry.type, entry.from_status, entry.to_status) == ("released", S.ON_HOLD, S.AUTHORIZED)
    assert entry.detail == {"reason": "other", "note": "throttling over"}
    with pytest.raises(InvalidTransition):
        released.release(note=None, at=NOW, actor="key_ops")


def test_a_held_order_can_still_be_cancelled_and_the_cancel_clears_the_hold(world):
    order_id = world.place(("TSHIRT", 1))
    world.workflow.park_after_failure(order_id, "States.Timeout", "")

    cancelled, _ = world.order(order_id).cancel("operator", at=NOW, actor="key_ops")

    assert (cancelled.status, cancelled.hold) == (S.CANCELLED, None)


def test_the_response_shows_the_contract_hold_and_the_store_keeps_the_status_to_resume_to(world):
    order_id = world.place(("TSHIRT", 1))
    assert world.order(order_id).model_dump(mode="json")["hold"] is None
    world.workflow.park_after_failure(order_id, "States.Timeout", "")
    order = world.order(order_id)

    shown = order.model_dump(mode="json")["hold"]
    assert set(shown) == {"reason", "note", "since"}
    stored = Order.model_validate_json(order.stored_json())
    assert stored == order and stored.hold.resume_to is S.PENDING
    # What tells a park from a person's hold (no hold expiry cancels it) is the store's alone.
    assert stored.hold.parked and "parked" not in order.model_dump_json()
    assert order.hold_expiry_counts_from is None
    unheld = world.order(world.place(("MUG", 1)))
    # The version its authorization covers is the store's too, never the response's.
    assert "priced_version" not in unheld.model_dump(mode="json")
    assert Order.model_validate_json(unheld.stored_json()) == unheld and unheld.priced_version == 1
    # A person's hold stores no marker (and an order never held none either).
    held, _ = unheld.hold_for("other", order.hold.note, at=NOW, actor="key_ops")
    assert "parked" not in held.stored_json() and "parked" not in unheld.stored_json()
    assert held.hold_expiry_counts_from == NOW and unheld.hold_expiry_counts_from is None


# --- The reconciler's decision (core.reconciliation) ------------------------------------------


class Stalled(StalledOrders):
    def __init__(self, world: World):
        self.world = world
        self.asked: list[tuple[tuple[OrderStatus, ...], object]] = []

    def stalled(self, statuses, created_before):
        self.asked.append((tuple(statuses), created_before))
        orders = self.world.orders.orders.values()
        found = [o for o in orders if o.status in statuses and o.created_at < created_before]
        return iter([StalledOrder(o.id, o.created_at) for o in sorted(found, key=lambda o: o.created_at)])

    def filled_backorders(self, changed_before):
        return iter([])  # no order here is backordered (tests/unit/test_reconciliation_backorders.py)


class Starter(WorkflowStarter):
    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []

    def start(self, order_id, channel="", correlation_id="", rerun=None):
        self.started.append((order_id, rerun))
        return True


def reconciler(world: World, minutes_later: float, **kwargs) -> tuple[Reconciler, Stalled, Starter]:
    stalled, starter = Stalled(world), Starter()
    clock = lambda: NOW + timedelta(minutes=minutes_later)  # noqa: E731
    limits = {"restart_after": timedelta(minutes=15), "park_after": timedelta(minutes=60), **kwargs}
    return Reconciler(stalled, world.orders, starter, world.workflow, clock, **limits), stalled, starter


def test_the_reconciler_restarts_pending_and_authorized_orders_past_the_threshold_and_parks_older_ones(world):
    pending, authorized = world.place(("TSHIRT", 1)), world.place(("MUG", 1))
    world.workflow.authorize_payment(authorized, attempt=0)
    allocated = world.allocated(("TSHIRT", 1)).id

    early = reconciler(world, minutes_later=10)
    assert early[0].run().restarted == [] and early[2].started == []

    run, stalled, starter = reconciler(world, minutes_later=20)
    done = run.run()
    assert (done.restarted, done.parked) == ([pending, authorized], [])
    assert starter.started == [(pending, "restart-20261122T122000"), (authorized, "restart-20261122T122000")]
    assert [statuses for statuses, _ in stalled.asked] == [(S.PENDING, S.AUTHORIZED)]  # one query for both
    assert world.order(allocated).status is S.ALLOCATED
    assert world.order(pending).restarted_at == NOW + timedelta(minutes=20)  # the first restart of its stall

    # Parked once still stuck 45 minutes (60 - 15) after the first restart: the span of restarts every stall gets.
    assert reconciler(world, minutes_later=64)[0].run() == Reconciled(restarted=[pending, authorized])
    assert world.order(pending).restarted_at == NOW + timedelta(minutes=20)  # the first, not the last
    late = reconciler(world, minutes_later=65)
    done = late[0].run()
    assert (done.restarted, sorted(done.parked)) == ([], sorted([pending, authorized]))
    assert world.order(authorized).hold.note.startswith("order workflow failed after retries: WorkflowStalled")


@pytest.mark.parametrize(("restart", "park"), [(5, 60), (15, 15), (20, 10)])
def test_the_reconciler_refuses_thresholds_that_would_restart_a_running_execution_or_never_restart(
    world, restart, park
):
    with pytest.raises(ValueError):
        reconciler(world, 0, restart_after=timedelta(minutes=restart), park_after=timedelta(minutes=park))


def test_a_start_step_functions_refuses_or_a_park_that_keeps_losing_races_waits_for_the_next_pass(world, monkeypatch):
    throttled, restarted = world.place(("TSHIRT", 1)), world.place(("MUG", 1))
    run, _, starter = reconciler(world, minutes_later=20)

    def refuses_first(order_id, channel="", correlation_id="", rerun=None):
        if order_id == throttled:
            raise TransientError("the order workflow could not be started: ThrottlingException")
        starter.started.append((order_id, rerun))
        return True

    monkeypatch.setattr(starter, "start", refuses_first)
    assert run.run() == Reconciled(restarted=[restarted])

    raced, parked = world.place(("TSHIRT", 1)), world.place(("MUG", 1))
    real = world.workflow.park_after_failure

    def keeps_changing(order_id, error, cause, **judged):
        if order_id == raced:
            raise TransientError(f"order {order_id} kept changing while it was being put on hold")
        return real(order_id, error, cause, **judged)

    monkeypatch.setattr(world.workflow, "park_after_failure", keeps_changing)
    assert reconciler(world, minutes_later=16)[0].run().restarted == [throttled, restarted, raced, parked]
    done = reconciler(world, minutes_later=61)[0].run()

    assert raced not in done.parked and parked in done.parked
    assert world.order(raced).status is S.PENDING and world.order(parked).status is S.ON_HOLD


def _refused(code: str, status: int) -> ClientError:
    answer = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(answer, "StartExecution")


@pytest.mark.parametrize("starter", [StepFunctionsStarter, StepFunctionsReturnStarter], ids=["order", "return"])
@pytest.mark.parametrize(
    ("failure", "raised"),
    [(_refused("ThrottlingException", 400), TransientError), (_refused("ServiceUnavailable", 503), TransientError),
     (_refused("InternalFailure", 500), TransientError),
     (EndpointConnectionError(endpoint_url="https://states.us-east-1.amazonaws.com"), TransientError),
     (_refused("StateMachineDoesNotExist", 400), ClientError), (_refused("AccessDeniedException", 400), ClientError)],
    ids=["throttled", "unavailable", "server-error", "unreachable", "no-state-machine", "denied"],
)  # fmt: skip
def test_a_start_step_functions_refuses_for_now_is_transient_and_one_refused_for_good_is_not(starter, failure, raised):
    """Refused for now (throttled, any server error, out of reach), the start is the caller's to retry:
    the stream's, the reconciler's next pass, a receipt sent again. Refused for good, the error itself,
    which no retry mends and the errors alarm calls a person for."""

    class Refusing:
        def start_execution(self, **request):
            raise failure

    with pytest.raises(raised):
        starter(Refusing(), "arn:aws:states:us-east-1:1:stateMachine:o").start("ord_x")


def test_a_start_step_functions_refuses_as_a_duplicate_of_its_name_started_nothing():
    """Two passes in the same second name their restart alike (as a redelivered record names its
    start): the second start is no execution, so neither the reconciler's restarts nor the
    outbox's started workflows count it."""
    names: list[str] = []

    class StepFunctions:
        def start_execution(self, **request):
            if request["name"] in names:
                raise _refused("ExecutionAlreadyExists", 400)
            names.append(request["name"])

    starter = StepFunctionsStarter(StepFunctions(), "arn:aws:states:us-east-1:1:stateMachine:o")

    assert starter.start("ord_x", rerun="restart-20261122T122000") is True
    assert starter.start("ord_x", rerun="restart-20261122T122000") is False
    assert starter.start("ord_x") is True
    assert names == ["ord_x-restart-20261122T122000", "ord_x"]


def test_a_return_received_again_starts_another_execution_carrying_its_channel_and_request():
    """Receiving a return again resumes its workflow, so no start may be refused by its name; the
    steps' log lines name the channel and the request that received it, from the input."""
    started: list[dict[str, str]] = []

    class StepFunctions:
        def start_execution(self, **request):
            started.append({"name": request["name"], **json.loads(request["input"])})

    starter = StepFunctionsReturnStarter(StepFunctions(), "arn:aws:states:us-east-1:1:stateMachine:r")
    starter.start("rma_1", channel="web", correlation_id="req-7")
    starter.start("rma_1", channel="web", correlation_id="req-8")

    first, again = started
    assert first["name"] != again["name"] and first["name"].startswith("rma_1-")
    assert {k: v for k, v in first.items() if k != "name"} == {
        "return_id": "rma_1",
        "channel": "web",
        "correlation_id": "req-7",
    }


def test_the_reconciler_judges_an_order_by_its_last_change_not_when_it_was_placed(world):
    """Placed an hour ago but changed ten minutes ago (say, released from a hold and started
    again): its own execution may be running, so it is neither restarted nor parked yet."""
    order_id = world.place(("TSHIRT", 1))
    changed = world.order(order_id).model_copy(update={"updated_at": NOW + timedelta(minutes=51)})
    world.orders.orders[order_id] = changed

    run, _, starter = reconciler(world, minutes_later=61)
    assert (run.run(), starter.started) == (Reconciled(), [])

    run, _, starter = reconciler(world, minutes_later=70)
    assert run.run() == Reconciled(restarted=[order_id])
    assert world.order(order_id).status is S.PENDING


@pytest.mark.parametrize(("minutes_later", "expected"), [(16, "restarted"), (61, "parked")])
def test_a_jeopardy_mark_is_no_change_that_puts_off_the_restart_or_the_park(world, minutes_later, expected):
    """The scan marks a pending order late at +7 minutes (pending=5m): the mark changes the order's
    `updated_at`, but it is the scan's observation, not a sign of an execution moving the order, so
    the reconciler still restarts it 15 minutes after its last change and parks it after 60 (45
    minutes after that first restart)."""
    order_id = world.place(("TSHIRT", 1))
    at = NOW + timedelta(minutes=7)
    marked = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, lambda: at, sla=parse_sla("")
    ).run()
    assert marked.marked == [order_id] and world.order(order_id).updated_at == at

    stored = Order.model_validate_json(world.order(order_id).stored_json())
    assert (stored.last_changed, stored.updated_at) == (NOW, at)
    if minutes_later > 16:
        assert reconciler(world, minutes_later=16)[0].run().restarted == [order_id]

    run, _, _ = reconciler(world, minutes_later=minutes_later)
    done = run.run()

    assert getattr(done, expected) == [order_id]


def test_any_change_after_a_jeopardy_mark_is_the_orders_last_change_again(world):
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    at = NOW + timedelta(minutes=20)
    marked, _ = authorized.mark_jeopardy("late", NOW + timedelta(minutes=15), at=at, actor="jeopardy_scan")
    assert (marked.last_changed, marked.updated_at) == (authorized.updated_at, at)

    later = at + timedelta(minutes=1)
    requested, _ = marked.request_reauthorization(marked.totals.grand_total, at=later)  # bookkeeping
    edited, _ = marked.edit(
        lines=marked.lines, totals=marked.totals, shipping_address=marked.shipping_address,
        shipping_method=marked.shipping_method, changed=["shipping_address"], reauthorized=None, at=later,
        actor="key_cs",
    )  # fmt: skip

    assert requested.last_changed == edited.last_changed == later


def test_the_reconciler_never_parks_an_order_that_moved_on_after_it_was_judged_stalled(monkeypatch):
    """Judged stalled `pending` an hour after it was placed, the order is authorized by the
    execution the last pass restarted just before the park lands: that order is moving, so it is
    left to its execution, not put on hold for a person with a note saying it was stuck pending."""
    now = [NOW]
    world = build_world(STOCK, clock=lambda: now[0])
    order_id = world.place(("TSHIRT", 1))
    assert reconciler(world, minutes_later=16)[0].run().restarted == [order_id]
    now[0] = NOW + timedelta(minutes=61)
    before_the_next_write(world, monkeypatch, lambda: world.workflow.authorize_payment(order_id, attempt=0))

    done = reconciler(world, minutes_later=61)[0].run()

    assert done == Reconciled()
    order = world.order(order_id)
    assert (order.status, order.hold) == (S.AUTHORIZED, None)


def test_an_order_a_lagging_index_still_answers_as_stalled_is_judged_on_the_status_it_is_read_in(world):
    """The status index still answers `pending` for an order its execution allocated an hour ago
    (a replica not caught up): the order read is allocated, no workflow's to move on, so it is
    neither restarted nor marked (an operator would meet a second execution for an order already
    allocated, and a restart mark on it)."""
    allocated = world.allocated(("TSHIRT", 1))
    assert allocated.last_changed == NOW
    run, stalled, starter = reconciler(world, minutes_later=90)
    lagging = StalledOrder(allocated.id, allocated.created_at)
    stalled.stalled = lambda statuses, created_before: iter([lagging])  # type: ignore[method-assign]

    assert (run.run(), starter.started) == (Reconciled(), [])
    assert world.order(allocated.id) == allocated


@pytest.mark.parametrize("parked_at", ["AuthorizePayment", "ReserveStock", "CreateShipments"])
def test_the_execution_a_release_starts_resumes_the_order_while_plain_reads_still_show_it_held(
    world, monkeypatch, parked_at
):
    """The outbox starts the release's execution from the release's stream record, and its steps'
    plain reads (GetItem is eventually consistent) may still show the order on hold. OrderHeld is
    not retried: the execution would end OrderOnHold and the released order wait for nothing (a
    backordered one for good: the reconciler restarts only pending and authorized orders)."""
    order_id = world.place(("TSHIRT", 1))
    steps = [
        lambda: world.workflow.authorize_payment(order_id, attempt=0),
        lambda: world.workflow.reserve_stock(order_id),
        lambda: world.workflow.create_shipments(order_id),
    ]
    at = ["AuthorizePayment", "ReserveStock", "CreateShipments"].index(parked_at)
    for step in steps[:at]:
        step()
    assert world.workflow.park_after_failure(order_id, "States.Timeout", "")
    held = world.order(order_id)
    released, entry = held.release(note="throttling over", at=NOW, actor="key_ops")
    world.orders.update(released, held, [entry])

    real_get, real_with_token = world.orders.get, world.orders.get_with_token
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real_get(oid) if consistent else held)
    monkeypatch.setattr(
        world.orders, "get_with_token",
        lambda oid, consistent=False: real_with_token(oid) if consistent else (held, world.orders.tokens[oid]),
    )  # fmt: skip
    for step in steps[at:]:
        step()

    monkeypatch.undo()
    order = world.order(order_id)
    assert (order.status, order.hold) == (S.ALLOCATED, None)
    assert world.held_for(order_id) == {("TSHIRT", "wh-west", f"{order_id}#L1"): 1}


def test_a_pass_stops_asking_step_functions_once_it_keeps_refusing_and_still_parks(world):
    """Step Functions throttling every start: each refusal costs the reconciler's invocation the
    client's retries (seconds), so a pass over a hundred stalled orders would run out of time and
    none of the reconciler's other work (pickups, refunds, voids) would run. A pass asks a few
    times, leaves the rest to the next pass, and still parks what is too old to restart."""
    asked: list[str] = []

    class Throttled(WorkflowStarter):
        def start(self, order_id, channel="", correlation_id="", rerun=None):
            asked.append(order_id)
            raise TransientError("the order workflow could not be started: ThrottlingException")

    now = [NOW]
    world = build_world([("TSHIRT", "wh-west", 50)], clock=lambda: now[0])
    old = world.place(("TSHIRT", 1))
    assert reconciler(world, minutes_later=16)[0].run().restarted == [old]
    now[0] = NOW + timedelta(minutes=45)
    stalled = [world.place(("TSHIRT", 1)) for _ in range(10)]
    now[0] = NOW + timedelta(minutes=61)
    run = Reconciler(
        Stalled(world), world.orders, Throttled(), world.workflow, lambda: now[0],
        restart_after=timedelta(minutes=15), park_after=timedelta(minutes=60),
    )  # fmt: skip

    assert run.run() == Reconciled(parked=[old])
    assert len(asked) == MAX_REFUSED_STARTS < len(stalled)


def test_a_restart_the_service_refused_as_a_duplicate_is_not_counted_as_restarted(world):
    # Two passes in the same second (an overlapping run) name their restart alike: a Standard
    # workflow refuses the second (ExecutionAlreadyExists). The other pass restarted the order;
    # counting it here too would log and count one restart twice.
    started, duplicate = world.place(("TSHIRT", 1)), world.place(("MUG", 1))
    run, _, starter = reconciler(world, minutes_later=20)
    real = starter.start

    def already_named(order_id, channel="", correlation_id="", rerun=None):
        real(order_id, channel, correlation_id, rerun)
        return order_id != duplicate

    starter.start = already_named  # type: ignore[method-assign]

    assert run.run() == Reconciled(restarted=[started])
    assert [order_id for order_id, _ in starter.started] == [started, duplicate]


def test_a_pass_alongside_marking_the_restart_first_leaves_this_pass_its_restart_and_fails_nothing(world, monkeypatch):
    # A manual pass beside the scheduled one (a second apart: two names, two starts Step Functions
    # takes): the scheduled pass marks the first restart between the manual pass's read and its
    # mark. The mark stands as written (the park counts from it); the manual pass found nothing to
    # mark, and reported no order failed.
    order_id = world.place(("TSHIRT", 1))
    scheduled, manual = reconciler(world, minutes_later=20)[0], reconciler(world, minutes_later=21)[0]
    alongside: list[Reconciled] = []
    landed = before_the_next_write(world, monkeypatch, lambda: alongside.append(scheduled.run()))

    assert manual.run() == Reconciled(restarted=[order_id])

    assert landed and alongside == [Reconciled(restarted=[order_id])]
    assert world.order(order_id).restarted_at == NOW + timedelta(minutes=20)


def test_an_order_whose_every_start_step_functions_refused_is_never_parked_as_restarted(world):
    """Step Functions refusing starts for longer than the park threshold: no pass restarted the
    order, so none parks it with a note saying its workflow was restarted. Only a start the service
    took marks the order (Order.restarted_at), and its first successful restart starts the span."""
    order_id = world.place(("TSHIRT", 1))

    class Refusing(WorkflowStarter):
        def start(self, order_id, channel="", correlation_id="", rerun=None):
            raise TransientError("the order workflow could not be started: ServiceUnavailable")

    for minutes in (20, 61, 120):
        clock = lambda at=NOW + timedelta(minutes=minutes): at  # noqa: E731
        limits = {"restart_after": timedelta(minutes=15), "park_after": timedelta(minutes=60)}
        run = Reconciler(Stalled(world), world.orders, Refusing(), world.workflow, clock, **limits)
        assert run.run() == Reconciled()
    assert world.order(order_id).restarted_at is None

    assert reconciler(world, minutes_later=125)[0].run() == Reconciled(restarted=[order_id])
    assert reconciler(world, minutes_later=169)[0].run() == Reconciled(restarted=[order_id])
    assert reconciler(world, minutes_later=170)[0].run() == Reconciled(parked=[order_id])
    assert world.order(order_id).status is S.ON_HOLD


def test_a_restart_mark_is_the_stall_it_was_made_in_only(world):
    """Restarted while pending, then moved on (authorized) and stalled there: the mark of the
    first stall makes no restart of the second, which gets its own span before any park."""
    order_id = world.place(("TSHIRT", 1))
    assert reconciler(world, minutes_later=20)[0].run() == Reconciled(restarted=[order_id])
    authorized = world.order(order_id)
    moved = authorized.model_copy(update={"status": S.AUTHORIZED, "updated_at": NOW + timedelta(minutes=21)})
    world.orders.orders[order_id] = moved
    assert moved.restarted_at == NOW + timedelta(minutes=20) and moved.restarted_since_change is None

    assert reconciler(world, minutes_later=90)[0].run() == Reconciled(restarted=[order_id])
    assert world.order(order_id).restarted_since_change == NOW + timedelta(minutes=90)
    assert reconciler(world, minutes_later=135)[0].run() == Reconciled(parked=[order_id])


def test_a_restart_marked_by_a_pass_whose_clock_ran_ahead_parks_no_order_before_its_park_threshold(world):
    """Clocks apart: a pass marked the first restart a minute after the order's last change (no pass
    on one clock restarts within ReconcileAfterMinutes of it). 45 minutes after that mark the order
    has stalled 50 minutes, not ParkStalledAfterMinutes (60): it is restarted again, not yet put on
    hold for a person."""
    order_id = world.place(("TSHIRT", 1))
    marked = world.order(order_id).model_copy(update={"restarted_at": NOW + timedelta(minutes=1)})
    world.orders.orders[order_id] = marked
    assert marked.restarted_since_change == NOW + timedelta(minutes=1)

    assert reconciler(world, minutes_later=50)[0].run() == Reconciled(restarted=[order_id])
    assert world.order(order_id).status is S.PENDING
    assert reconciler(world, minutes_later=60)[0].run() == Reconciled(parked=[order_id])


def test_an_order_its_restart_moved_on_before_the_mark_carries_no_mark_into_its_next_stall(monkeypatch):
    """The restarted execution authorized the order between the pass's start and its mark: that
    mark was the pending stall's, which is over. Written anyway, it would count as a restart of the
    authorized order's stall, parked 45 minutes later with no restart of its own."""
    now = [NOW]
    world = build_world(STOCK, clock=lambda: now[0])
    order_id = world.place(("TSHIRT", 1))
    now[0] = NOW + timedelta(minutes=20)
    before_the_next_write(world, monkeypatch, lambda: world.workflow.authorize_payment(order_id, attempt=0))

    assert reconciler(world, minutes_later=20)[0].run() == Reconciled(restarted=[order_id])

    order = world.order(order_id)
    assert (order.status, order.restarted_at) == (S.AUTHORIZED, None)


def test_a_restart_whose_mark_keeps_losing_races_is_counted_and_fails_nothing(world, monkeypatch):
    """Step Functions took the restart, but the order kept changing under its mark: the restart
    stands (counted and logged as one), nothing is reported failed, and a later pass restarts it
    again and marks it then."""
    order_id = world.place(("TSHIRT", 1))

    def keeps_changing(*args, **kwargs):
        raise StaleVersion(f"order {order_id} changed meanwhile")

    monkeypatch.setattr(world.orders, "update", keeps_changing)
    assert reconciler(world, minutes_later=20)[0].run() == Reconciled(restarted=[order_id])
    assert world.order(order_id).restarted_at is None

    monkeypatch.undo()
    assert reconciler(world, minutes_later=25)[0].run() == Reconciled(restarted=[order_id])
    assert world.order(order_id).restarted_at == NOW + timedelta(minutes=25)


def test_a_restarts_execution_carries_the_orders_channel_for_its_steps_log_lines(world, monkeypatch):
    order_id = world.place(("TSHIRT", 1))
    run, _, starter = reconciler(world, minutes_later=20)
    channels: list[str] = []
    real = starter.start

    def carrying(order_id, channel="", correlation_id="", rerun=None):
        channels.append(channel)
        return real(order_id, channel, correlation_id, rerun)

    monkeypatch.setattr(starter, "start", carrying)

    assert run.run() == Reconciled(restarted=[order_id])
    assert channels == [world.order(order_id).channel] and channels != [""]
