"""The scheduled reconciler under moto: it finds stuck orders through the by_status_key index (a Query,
never a Scan), starts the workflow again once per pass for an order older than the threshold,
leaves a fresh one to its own execution, and parks one stuck for too long."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import cache, partial, partialmethod
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from core import hookimpl
from core.models import HistoryEntry, LocationInput, Order, PlaceOrder, ProductInput, utc_now
from core.notifications import Notification, notifications
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from tests.builders import location_body, place_order, product_body, template_schedule
from tests.conftest import forget_business_metrics
from tests.fakes import FakeLabels, run_return_workflow
from tests.installed import FAILS_TO_IMPORT, Installer, installing
from tests.integration.conftest import (
    PASS_MACHINE,
    dying_at_the_ship_write,
    left_off_tables,
    metrics_pending,
    pass_through_workflow,
    queries_sent,
    restore_left_off,
    stream_records,
    write_copies,
    written_once,
)
from tests.unit.conftest import a_stored_order

if TYPE_CHECKING:
    from functions.adapters.notifications import DynamoNotifications

E = TypeVar("E", bound=BaseException)


class Context:
    function_name = "ReconcilerFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ReconcilerFunction"
    aws_request_id = "req-reconcile"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


# The reconciler's period as template.yaml sets it, read once per test process: a read loads (a copy
# of) the whole template, ~10 ms of CPU at every test, and the template does not change meanwhile.
reconciler_schedule = cache(partial(template_schedule, "ReconcilerFunction"))


@pytest.fixture
def stack(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    sfn, arn = pass_through_workflow(monkeypatch)
    return_arn = sfn.create_state_machine(
        name="ReturnWorkflow", type="EXPRESS", definition=json.dumps(PASS_MACHINE),
        roleArn="arn:aws:iam::123456789012:role/workflow",
    )["stateMachineArn"]  # fmt: skip
    monkeypatch.setenv("RETURN_WORKFLOW_ARN", return_arn)
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "15")
    monkeypatch.setenv("RECONCILE_PARK_AFTER_MINUTES", "60")
    monkeypatch.setenv(*reconciler_schedule())
    from functions.reconciler import app

    app.container.forget()
    yield {"sfn": sfn, "arn": arn, "return_arn": return_arn, "aws": aws}
    app.container.forget()


@pytest.fixture(autouse=True)
def only_granted_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call the reconciler (the ParkOrder task, the jeopardy scan) makes in these tests, on every pass and
    its rare paths (pages, refusals, outages, a pass cut short), is one the template grants it, by
    table, index, key and action: moto lets through what AWS refuses."""
    if "aws" not in request.fixturenames:
        yield
        return
    from tests.template_iam import handlers_checked

    aws = request.getfixturevalue("aws")
    machines = {}
    if "stack" in request.fixturenames:
        started = request.getfixturevalue("stack")
        machines = {"OrderWorkflow": started["arn"], "ReturnWorkflow": started["return_arn"]}
    handlers = {
        "ReconcilerFunction": "functions.reconciler.app",
        "ParkOrderFunction": "functions.workflow.park_order",
        "JeopardyScanFunction": "functions.jeopardy.app",  # where a module imports this fixture
    }
    with handlers_checked(monkeypatch, handlers, aws.tables, state_machine_arns=machines):
        yield


def store(
    aws, order_id: str, status: OrderStatus, minutes_ago: float, later: tuple[HistoryEntry, ...] = (),
    *, restarted_minutes_ago: float | None = None,
) -> Order:  # fmt: skip
    """An order placed and last changed `minutes_ago`; `restarted_minutes_ago`: first restarted by a
    reconciler pass that long ago (Order.restarted_at)."""
    from functions.adapters.dynamodb import DynamoOrders

    placed = utc_now() - timedelta(minutes=minutes_ago)
    restarted = None if restarted_minutes_ago is None else utc_now() - timedelta(minutes=restarted_minutes_ago)
    order = a_stored_order(("TSHIRT", 1), id=order_id, status=status, created_at=placed, updated_at=placed,
                           restarted_at=restarted)  # fmt: skip
    created = HistoryEntry(at=placed, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(
        order, created, payment_token="tok_approve", later_entries=later
    )
    return order


def started(stack: dict[str, Any]) -> dict[str, int]:
    """How many executions each order has: an execution's input names its order."""
    counts: dict[str, int] = {}
    for execution in stack["sfn"].list_executions(stateMachineArn=stack["arn"])["executions"]:
        described = stack["sfn"].describe_execution(executionArn=execution["executionArn"])
        order_id = json.loads(described["input"])["order_id"]
        counts[order_id] = counts.get(order_id, 0) + 1
    return counts


def reconcile() -> dict[str, Any]:
    from functions.reconciler.app import lambda_handler

    return lambda_handler({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}, Context())


def did(**done: list[str]) -> dict[str, list[str]]:
    """A pass's answer: what it did, nothing else."""
    return {
        "restarted": [], "parked": [], "expired": [], "pickups_held": [], "returns_restarted": [],
        "refunds_finished": [], "kept_back_refunded": [], "authorizations_settled": [], "captures_settled": [],
        "ships_held": [], "ships_unconfirmed": [], "stock_takes_finished": [], "notifications_sent": [],
        "notifications_abandoned": [], "notifications_withdrawn": [], **done,
    }  # fmt: skip


def order_id(letter: str) -> str:
    return "ord_" + letter * 24


def first_written(
    stack: dict[str, Any], name: Any, set_up: Callable[[], Any], labels: dict[str, bytes] | None = None
) -> Any:
    """What `set_up` answers (its order, or a tuple with its order first), as a test's first writes:
    run through the product's own code by the process's first test to ask for `name`, copied into
    each later one's tables (written_once) with what it left off DynamoDB as it left it: the test
    gateway's memory of the order, the business metrics not printed yet and the `labels` its
    parcels were given. No execution may be started by it: no copy would hold one."""
    assert stream_records(stack["aws"].tables) == 0, "a set-up copied over what the test wrote before it"

    def written() -> tuple[Any, bytes, dict[str, bytes]]:
        before = metrics_pending()
        answer = set_up()
        for machine in (stack["arn"], stack["return_arn"]):
            assert not stack["sfn"].list_executions(stateMachineArn=machine)["executions"], "executions started"
        orders = {(answer if isinstance(answer, Order) else answer[0]).id}
        return copy.deepcopy(answer), left_off_tables(orders, before), dict(labels or {})

    (answer, left, kept_labels), copied = written_once(stack["aws"].tables, ("test_reconciler", name), written)
    if copied:
        restore_left_off(left)
        if labels is not None:
            labels.update(kept_labels)
    return copy.deepcopy(answer)  # what this test does with it is not the next one's


def test_a_stuck_pending_order_is_restarted_once_and_a_fresh_one_is_not(stack):
    aws = stack["aws"]
    stuck, fresh = order_id("a"), order_id("b")
    store(aws, stuck, OrderStatus.PENDING, minutes_ago=20)
    store(aws, fresh, OrderStatus.PENDING, minutes_ago=2)

    answer = reconcile()

    assert answer == did(restarted=[stuck])
    assert started(stack) == {stuck: 1}
    [execution] = stack["sfn"].list_executions(stateMachineArn=stack["arn"])["executions"]
    assert execution["name"].startswith(f"{stuck}-restart-")


def test_a_stuck_authorized_order_is_restarted_and_finished_or_held_ones_are_left_alone(stack):
    aws = stack["aws"]
    authorized = order_id("c")
    store(aws, authorized, OrderStatus.AUTHORIZED, minutes_ago=30)
    for letter, status in (("d", OrderStatus.ALLOCATED), ("e", OrderStatus.ON_HOLD), ("f", OrderStatus.CANCELLED)):
        store(aws, order_id(letter), status, minutes_ago=30)

    assert reconcile() == did(restarted=[authorized])
    assert started(stack) == {authorized: 1}


def test_each_pass_restarts_again_and_the_steps_make_that_harmless(stack):
    """Express refuses no execution name; a second pass starts a second execution, which finds
    each step done or not yet done exactly as the first left it (see tests/unit/test_workflow.py).
    Each pass names its executions apart, so a Standard machine would not refuse them either."""
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    stuck = order_id("g")
    store(stack["aws"], stuck, OrderStatus.PENDING, minutes_ago=20)
    reconcile()
    later = utc_now() + timedelta(minutes=5)

    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()

    assert started(stack) == {stuck: 2}
    names = {e["name"] for e in stack["sfn"].list_executions(stateMachineArn=stack["arn"])["executions"]}
    assert len(names) == 2


def test_an_order_stuck_past_the_park_threshold_though_restarted_is_parked_on_hold_not_restarted(stack):
    aws = stack["aws"]
    old = order_id("h")
    store(aws, old, OrderStatus.AUTHORIZED, minutes_ago=90, restarted_minutes_ago=70)

    assert reconcile() == did(parked=[old])

    from functions.adapters.dynamodb import DynamoOrders

    order, history = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).history(old)
    assert order.status is OrderStatus.ON_HOLD
    assert (order.hold.reason, order.hold.resume_to) == ("other", OrderStatus.AUTHORIZED)
    note = "order workflow failed after retries: WorkflowStalled: still authorized 60 minutes after its last change"
    assert order.hold.note.startswith(note)
    assert history[-1].type == "on_hold"
    assert started(stack) == {}
    # On hold: out of the index's pending/authorized.
    assert reconcile() == did()


def test_a_pass_parking_an_order_whose_history_is_past_the_threshold_moves_it_to_its_pages(stack):
    # The pass's write of the order moves all but its first entry to a page of the Catalog table
    # (ORDERHISTORY#<id>): the reconciler's one write there beside the imports' it recounts, and
    # template.yaml holds its Catalog writes to those partitions (checked on each call here).
    from functions.adapters.dynamodb import HISTORY_KEPT_BYTES, HISTORY_MOVED
    from functions.bootstrap import Config, bootstrap
    from tests.integration.test_dynamodb_history_pages import _history_bytes, _item, _noted, _pages

    aws = stack["aws"]
    old = order_id("p")
    long = tuple(_noted(n) for n in range(30))
    store(aws, old, OrderStatus.AUTHORIZED, minutes_ago=90, later=long, restarted_minutes_ago=70)
    assert _history_bytes(_item(aws, old)) > HISTORY_KEPT_BYTES

    assert reconcile() == did(parked=[old])

    item = _item(aws, old)
    assert HISTORY_MOVED in item and _history_bytes(item) <= HISTORY_KEPT_BYTES
    [page] = _pages(aws, old)
    assert len(page["entries"]["L"]) == len(long) + 1  # all but the first: the notes, then the hold
    order, history = bootstrap(Config.from_env()).order_repository.history(old, consistent=True)
    assert order.status is OrderStatus.ON_HOLD
    assert [h.actor for h in history if h.actor.startswith("n")] == [f"n{n}" for n in range(30)]
    assert history[-1].type == "on_hold"


def test_an_order_no_pass_restarted_is_restarted_before_it_is_parked_however_long_it_stalled(stack):
    """An outage of Step Functions or Lambda longer than the park threshold (or a backlog the passes
    did not reach): the order stalled 90 minutes ago was never restarted. It was parked at once,
    its hold saying "though its workflow was restarted". It is restarted now; the park threshold
    counts from that first restart (ParkStalledAfterMinutes - ReconcileAfterMinutes: the span of
    restarts an order stalled in quiet times gets), and only an order still stuck then is parked."""
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    old = order_id("h")
    store(aws, old, OrderStatus.AUTHORIZED, minutes_ago=90)

    assert reconcile() == did(restarted=[old])
    assert app.container().order_repository.get(old).status is OrderStatus.AUTHORIZED
    for minutes, answer in ((44, did(restarted=[old])), (46, did(parked=[old]))):
        later = utc_now() + timedelta(minutes=minutes)
        with app.container.override(bootstrap(Config.from_env(), clock=lambda at=later: at)):
            assert reconcile() == answer
    order = app.container().order_repository.get(old)
    assert order.status is OrderStatus.ON_HOLD
    assert "though its workflow was restarted" in order.hold.note
    assert started(stack) == {old: 2}


def test_authorized_orders_stored_apart_by_the_release_before_are_restarted_and_parked_as_the_others(stack):
    """The release before kept an authorized order under its own status key, with status_since: the
    pass reads that partition after the pending one, so each stalled order, of either form, is
    restarted once a pass and parked on the span of restarts every stalled order gets."""
    from functions.adapters.dynamodb import timestamp
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    table = aws.tables["OrdersTable"]
    stored_apart = [order_id("w"), order_id("x")]
    shared = [order_id("y"), order_id("z")]
    for each in stored_apart:
        order = store(aws, each, OrderStatus.AUTHORIZED, minutes_ago=30)
        aws.dynamodb.update_item(
            TableName=table, Key={"id": {"S": each}}, UpdateExpression="SET status_key = :s, status_since = :t",
            ExpressionAttributeValues={":s": {"S": "authorized"}, ":t": {"S": timestamp(order.updated_at)}},
        )  # fmt: skip
    store(aws, shared[0], OrderStatus.AUTHORIZED, minutes_ago=35)
    store(aws, shared[1], OrderStatus.PENDING, minutes_ago=25)

    assert sorted(reconcile()["restarted"]) == sorted(stored_apart + shared)
    assert started(stack) == dict.fromkeys(stored_apart + shared, 1)
    for each in stored_apart:  # the restart's write moved it
        item = aws.dynamodb.get_item(TableName=table, Key={"id": {"S": each}})["Item"]
        assert item["status_key"] == {"S": "pending"} and "status_since" not in item
    for minutes, done in ((44, "restarted"), (46, "parked")):
        later = utc_now() + timedelta(minutes=minutes)
        with app.container.override(bootstrap(Config.from_env(), clock=lambda at=later: at)):
            assert sorted(reconcile()[done]) == sorted(stored_apart + shared)
    assert started(stack) == dict.fromkeys(stored_apart + shared, 2)
    for each in stored_apart + shared:
        assert app.container().order_repository.get(each).status is OrderStatus.ON_HOLD


def test_a_backlog_of_stalled_orders_over_an_index_page_is_restarted_in_one_pass_oldest_first(stack, monkeypatch):
    """Thousands of orders stall at once in an outage. A pass read one index page (100) per status:
    at 12 runs an hour, more than 1,200 an hour were never restarted before the park threshold.
    A pass reads page after page while its run has time (a deadline cuts it short, tested in
    tests/unit/test_pass_deadlines.py), each status in turn so none waits behind another's backlog.
    The index read a page of 10 (the adapter's page_size): the same page edge as 100 with 12 orders
    where 120 took ~3 s of CPU to store and restart."""
    from functions import bootstrap
    from functions.adapters.dynamodb import DynamoStalledOrders

    monkeypatch.setattr(bootstrap, "DynamoStalledOrders", partial(DynamoStalledOrders, page_size=10))
    aws = stack["aws"]
    pending = [f"ord_p{i:023d}" for i in range(12)]  # over a page of 10
    authorized = [f"ord_a{i:023d}" for i in range(5)]
    # Oldest first, each status's i-th order placed before the other's (i+1)-th: stored in that
    # order, so that however long a store takes (minutes_ago counts from the clock at each store),
    # no order is placed after one stored later. Stored status by status, 120 pending orders took
    # over 6 s on a loaded machine and the first authorized one was placed after the second
    # pending one.
    for i, each in enumerate(pending):
        store(aws, each, OrderStatus.PENDING, minutes_ago=50 - i / 10)
        if i < len(authorized):
            store(aws, authorized[i], OrderStatus.AUTHORIZED, minutes_ago=50 - i / 10)

    restarted = reconcile()["restarted"]

    assert sorted(restarted) == sorted(pending + authorized)
    assert [each for each in restarted if each in pending] == pending
    assert restarted[:10] == [item for pair in zip(pending, authorized, strict=False) for item in pair]


def store_backordered(
    aws, order_id: str, minutes_ago: float, *, reserved: int, restarted_minutes_ago: float | None = None
) -> Order:
    """A backordered order of two PREORDER units holding `reserved` of them, last changed `minutes_ago`
    (and first restarted `restarted_minutes_ago`, as `store`)."""
    from core.models import Allocation
    from functions.adapters.dynamodb import DynamoOrders

    placed = utc_now() - timedelta(minutes=minutes_ago)
    restarted = None if restarted_minutes_ago is None else utc_now() - timedelta(minutes=restarted_minutes_ago)
    held = [Allocation(line_id="L1", location_id="wh-east", quantity=reserved)]
    order = a_stored_order(("PREORDER", 2), id=order_id, status=OrderStatus.BACKORDERED, allocations=held,
                           created_at=placed - timedelta(days=3), updated_at=placed,
                           restarted_at=restarted)  # fmt: skip
    created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(order, created, payment_token="tok_approve")
    return order


def test_a_backordered_order_every_unit_of_which_is_reserved_is_restarted_then_parked_through_its_index(stack):
    """Its fill started its execution, which died: no arrival starts it again. Found by its last
    change in by_pending_refund's own partition, where a backordered order still waiting for stock
    (however old) has no entry, so no pass reads the backlog waiting for stock."""
    from functions.adapters.dynamodb import DynamoOrders, timestamp

    aws = stack["aws"]
    stalled, old, waiting = order_id("s"), order_id("t"), order_id("u")
    filled = store_backordered(aws, stalled, minutes_ago=20, reserved=2)
    store_backordered(aws, old, minutes_ago=90, reserved=2, restarted_minutes_ago=50)
    store_backordered(aws, waiting, minutes_ago=90, reserved=1)
    store_backordered(aws, order_id("v"), minutes_ago=2, reserved=2)  # its execution may still be running
    assert refund_index(aws, stalled) == {
        "refund_key": "backorder_filled",
        "refund_since": timestamp(filled.updated_at),
    }
    assert refund_index(aws, waiting) == {}

    assert reconcile() == did(restarted=[stalled], parked=[old])

    assert started(stack) == {stalled: 1}
    [execution] = stack["sfn"].list_executions(stateMachineArn=stack["arn"])["executions"]
    assert execution["name"].startswith(f"{stalled}-restart-")
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    parked = orders.get(old)
    assert parked.status is OrderStatus.ON_HOLD and parked.hold.resume_to is OrderStatus.BACKORDERED
    assert parked.hold.note.startswith("order workflow failed after retries: WorkflowStalled: still backordered with")
    assert refund_index(aws, old) == {}  # on hold: out of the partition
    assert orders.get(waiting).status is OrderStatus.BACKORDERED


def test_the_reconciler_queries_the_status_index_and_never_scans(stack, monkeypatch):
    from functions.reconciler import app

    client = app.container().dynamodb
    calls: list[tuple[str, dict[str, Any]]] = []
    for operation in ("query", "scan"):
        real = getattr(client, operation)

        def spy(*args: Any, _real: Any = real, _operation: str = operation, **kwargs: Any) -> Any:
            calls.append((_operation, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(client, operation, spy)
    store(stack["aws"], order_id("i"), OrderStatus.PENDING, minutes_ago=20)

    reconcile()

    # The pending and authorized orders (one partition), the backordered orders with every unit
    # reserved (by_pending_refund's partition of theirs), taken in turn, then the authorized orders a
    # release before stored in a partition of their own; then the pickups past their deadline; then
    # the received returns, and those set aside waiting for a plugin of each method one takes (the
    # test stack's `acme_pay` and `test`); then the orders owing a carrier work, the refunds left
    # pending, what returns kept back, the authorizations edits left and the settlement captures
    # cancels left (the by_pending_refund index's five partitions); then the imports' listing, for
    # imports left short; then where the pass over the stock takes recorded short starts (its own
    # item in the Inventory table) and those marks (the Inventory table's short_counts); then the
    # listing of the customer notifications the plugins failed to send (its own partition, the due ones).
    assert [operation for operation, _ in calls] == ["query"] * 16
    *calls, (_, imports), (_, resume), (_, short_counts), (_, retries) = calls
    assert "IndexName" not in imports and imports["ExpressionAttributeValues"][":pk"] == {"S": "IMPORTS"}
    assert "IndexName" not in resume and resume["ExpressionAttributeValues"][":sku"] == {"S": "#short_counts"}
    assert short_counts["IndexName"] == "short_counts"
    assert "IndexName" not in retries and retries["ExpressionAttributeValues"][":pk"] == {"S": "NOTIFY_RETRY"}
    assert [kwargs["IndexName"] for _, kwargs in calls] == [
        "by_status_key", "by_pending_refund", "by_status_key", "by_pickup_deadline", *["by_receipt"] * 3,
        *["by_pending_refund"] * 5,
    ]  # fmt: skip
    partitions = [kwargs["ExpressionAttributeValues"][":status"]["S"] for _, kwargs in (calls[0], calls[2])]
    assert partitions == ["pending", "authorized"]
    keys = [kwargs["ExpressionAttributeValues"][":key"]["S"] for _, kwargs in calls[1:2] + calls[4:]]
    assert keys == [
        "backorder_filled", "received", "waits_for_plugin#acme_pay", "waits_for_plugin#test",
        "carrier", "pending", "kept_back", "void", "settlement",
    ]  # fmt: skip


# --- The metrics the alarm watches ------------------------------------------------------------------


@pytest.fixture
def metrics_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """EMF on stdout, starting empty: powertools keeps one metric set for every Metrics instance,
    and with metrics disabled (the other tests) nothing flushes it."""
    from functions.reconciler.app import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def emitted(output: str, dimensions: tuple[str, ...] = ("service",)) -> dict[str, float]:
    """The metrics in the EMF lines a function printed with these dimensions (its own: `service`;
    the business metrics have theirs): name -> sum."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if '"_aws"' not in line:
            continue
        record = json.loads(line)
        for directive in record["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "OMS"
            if directive["Dimensions"] != [list(dimensions)]:
                continue
            for metric in directive["Metrics"]:
                values = record[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(
                    values if isinstance(values, list) else [values]
                )
    return totals


def failed_run(capsys: pytest.CaptureFixture[str], raises: type[E]) -> tuple[E, dict[str, float]]:
    """A run of the reconciler that fails with `raises` (the function's errors alarm calls a person),
    its output read from its start: what it raised, and the metrics it printed (`emitted`)."""
    capsys.readouterr()
    with pytest.raises(raises) as failed:
        reconcile()
    return failed.value, emitted(capsys.readouterr().out)


def test_park_order_emits_orders_parked_once_per_order_it_parked(stack, metrics_on, capsys):
    from functions.workflow import park_order

    stuck = order_id("j")
    store(stack["aws"], stuck, OrderStatus.AUTHORIZED, minutes_ago=1)
    step = {"order_id": stuck, "error": "States.Timeout", "cause": ""}
    capsys.readouterr()

    park_order.lambda_handler(step, Context())
    park_order.lambda_handler(step, Context())  # a repeated task: parked already, not counted again

    assert emitted(capsys.readouterr().out) == {"OrdersParked": 1}


def test_the_reconciler_emits_what_it_restarted_and_parked(stack, metrics_on, capsys):
    store(stack["aws"], order_id("k"), OrderStatus.PENDING, minutes_ago=20)
    store(stack["aws"], order_id("l"), OrderStatus.PENDING, minutes_ago=25)
    store(stack["aws"], order_id("m"), OrderStatus.AUTHORIZED, minutes_ago=120, restarted_minutes_ago=100)
    capsys.readouterr()

    reconcile()

    assert emitted(capsys.readouterr().out) == {"OrderWorkflowsRestarted": 2, "OrdersParked": 1}


def test_each_order_a_pass_restarted_is_logged_by_its_id(stack, caplog):
    # The runbook of a restart backlog starts from these lines: one per order, each naming it.
    stuck = [order_id("q"), order_id("r")]
    for minutes, each in zip((20, 25), stuck, strict=True):
        store(stack["aws"], each, OrderStatus.PENDING, minutes_ago=minutes)
    caplog.set_level(logging.WARNING)

    reconcile()

    logged = [r.order_id for r in caplog.records if r.getMessage() == "order workflow restarted: the order was stuck"]
    assert sorted(logged) == sorted(stuck)


def test_orders_a_pass_parked_before_it_failed_outright_are_still_reported(stack, metrics_on, capsys, monkeypatch):
    # A parked order leaves the stalled statuses for on_hold: no later pass finds it again, so
    # OrdersParked (OrdersParkedAlarm calls a person) counts it in the invocation that parked it,
    # even when a read after the park failed outright, or the order waits on hold with nobody told.
    from botocore.exceptions import ClientError

    from functions.reconciler.app import container

    parked = order_id("n")
    store(stack["aws"], parked, OrderStatus.PENDING, minutes_ago=120, restarted_minutes_ago=100)
    busy = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}}, "Query")
    stalled = container().reconciler._stalled

    def throttled(*args: Any) -> Any:
        raise busy

    # The read after the park: the filled backorders' turn comes once the stalled order's is done.
    monkeypatch.setattr(stalled, "filled_backorders", throttled)

    _, metrics = failed_run(capsys, ClientError)

    assert container().order_repository.get(parked).status is OrderStatus.ON_HOLD
    assert metrics == {"OrdersParked": 1}


# --- Pickups nobody collected -----------------------------------------------------------------------


# A pickup readied with this wait is past its collect_by by the next reconciler pass (0 never expires).
DUE_AT_ONCE = 1e-9  # 86 microseconds


def ready_pickup(aws, days: float, external_id: str) -> Order:
    """A pickup order placed, allocated and readied at its store with services on this moto
    account, whose pickups wait `days` (OMS_PICKUP_EXPIRY_DAYS)."""
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env()._replace(pickup_expiry_days=days), label_store=FakeLabels())
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    store = location_body(type="store", ships=False, pickup=True)
    services.catalog.put_location("store-sf", LocationInput.model_validate(store))
    services.inventory.count("TSHIRT", "store-sf", 5)
    pickup = {"type": "pickup", "location_id": "store-sf"}
    order = allocated(services, place_order(external_id=external_id, fulfillment=pickup))
    (shipment,) = order.shipments
    return services.actions.ready(order.id, shipment.id, actor="key_store")


# The one external id of the pickups a test starts from, by wait (starting_from_a_ready_pickup).
_PICKUP_IDS = {DUE_AT_ONCE: "web-due", 7: "web-waiting", 0: "web-never"}


def starting_from_a_ready_pickup(stack: dict[str, Any], days: float) -> Order:
    """ready_pickup as a test's first writes, its external id the one of its wait (_PICKUP_IDS):
    written once, copied after (first_written). Its writes are the same each time and no test's
    subject; a tenth of the CPU of each test that starts from one."""
    set_up = partial(ready_pickup, stack["aws"], days, _PICKUP_IDS[days])
    return first_written(stack, ("a ready pickup", days), set_up)


def index_keys(aws, order_id: str) -> dict[str, Any]:
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}})["Item"]
    return {name: item[name]["S"] for name in ("pickup_pk", "collect_by") if name in item}


def test_a_pickup_past_its_deadline_is_found_through_its_index_cancelled_and_its_units_released(stack):
    from functions.adapters.dynamodb import DynamoInventory, DynamoOrders

    aws = stack["aws"]
    due = starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    waiting = ready_pickup(aws, days=7, external_id="web-waiting")
    assert index_keys(aws, due.id)["pickup_pk"] == "ready_for_pickup"
    assert index_keys(aws, waiting.id)["collect_by"] > index_keys(aws, due.id)["collect_by"]
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    assert (inventory.levels({"TSHIRT"})["TSHIRT"][0].reserved) == 4

    assert reconcile() == did(expired=[due.id])

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    expired = orders.get(due.id)
    assert (expired.status, expired.shipments[0].status, expired.payment.status) == (
        OrderStatus.CANCELLED, ShipmentStatus.CANCELLED, PaymentStatus.VOIDED,
    )  # fmt: skip
    assert index_keys(aws, due.id) == {}  # out of the index once nothing waits
    (level,) = inventory.levels({"TSHIRT"})["TSHIRT"]
    assert (level.on_hand, level.reserved) == (5, 2)  # the waiting pickup still holds its units
    assert orders.get(waiting.id) == waiting
    assert reconcile()["expired"] == []  # nothing more is due


def test_the_pickup_index_is_read_a_page_at_a_time_as_the_expiry_takes_the_ids(aws, monkeypatch):
    # One Query of the first `limit` entries was all a pass read: orders it cannot expire (a collect
    # died with its capture standing) kept every pickup behind them waiting. The expiry now reads
    # on past them, and a page is read only when it takes the ids before it.
    from functions.adapters.dynamodb import PICKUP_PK, DynamoDuePickups, timestamp

    now = utc_now()
    table = aws.tables["OrdersTable"]
    for minutes, order_id in ((3, "ord_first"), (2, "ord_second"), (1, "ord_third"), (-1, "ord_waiting")):
        deadline = timestamp(now - timedelta(minutes=minutes))
        item = {"id": {"S": order_id}, "pickup_pk": {"S": PICKUP_PK}, "collect_by": {"S": deadline}}
        aws.dynamodb.put_item(TableName=table, Item=item)
    queries: list[dict[str, Any]] = []
    real = aws.dynamodb.query
    monkeypatch.setattr(aws.dynamodb, "query", lambda **kwargs: queries.append(kwargs) or real(**kwargs))
    due = DynamoDuePickups(aws.dynamodb, table, page_size=2)

    assert next(iter(due.due(now))) == "ord_first" and len(queries) == 1
    assert list(due.due(now)) == ["ord_first", "ord_second", "ord_third"]  # earliest first, none waiting
    assert len(queries) == 3 and {q["IndexName"] for q in queries} == {"by_pickup_deadline"}


def test_a_pass_that_fails_outright_leaves_the_others_to_run_then_fails_the_invocation(stack, monkeypatch):
    # A throttle outlasting botocore's retries on the first pass's reads stopped every pass after it
    # (pickup expiry, refunds, voids) for as long as it lasted: each now runs, and the invocation
    # still fails (ReconcilerErrorsAlarm) with what the first failure raised.
    from botocore.exceptions import ClientError

    from functions.adapters.dynamodb import DynamoOrders
    from functions.reconciler.app import container

    due = starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    busy = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}
    throttled = ClientError(busy, "Query")

    def refused(*_: Any, **__: Any) -> None:
        raise throttled

    monkeypatch.setattr(container().reconciler, "run", refused)

    with pytest.raises(ClientError) as raised:
        reconcile()

    assert raised.value is throttled
    orders = DynamoOrders(stack["aws"].dynamodb, stack["aws"].tables["OrdersTable"])
    assert orders.get(due.id).status is OrderStatus.CANCELLED  # the pickup pass ran all the same


def test_a_pickup_expiry_of_0_never_cancels_a_pickup_as_0_never_expires_a_hold_or_a_return(stack):
    from functions.adapters.dynamodb import DynamoOrders

    aws = stack["aws"]
    waiting = starting_from_a_ready_pickup(stack, 0)

    (shipment,) = waiting.shipments
    assert (shipment.status, shipment.collect_by) == (ShipmentStatus.READY_FOR_PICKUP, None)
    assert index_keys(aws, waiting.id) == {}  # nothing for the expiry query to find
    assert reconcile()["expired"] == []
    assert DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).get(waiting.id) == waiting


def test_a_ready_pickup_is_a_jeopardy_candidate_only_once_its_collect_by_passed(stack):
    # allocated's deadline counts from collect_by once the store has picked it: the status index's
    # status_since says so, so waiting pickups never fill the scan's candidates.
    from functions.adapters.dynamodb import DynamoLateOrders

    aws = stack["aws"]
    waiting = starting_from_a_ready_pickup(stack, 7)
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])
    (shipment,) = waiting.shipments

    assert late.unmarked_since_before(OrderStatus.ALLOCATED, shipment.collect_by - timedelta(seconds=1), 10) == []
    assert late.unmarked_since_before(OrderStatus.ALLOCATED, shipment.collect_by + timedelta(seconds=1), 10) == [
        waiting.id
    ]


def test_a_ready_pickup_that_never_expires_is_never_a_jeopardy_candidate(stack):
    # No collect_by (OMS_PICKUP_EXPIRY_DAYS 0): it waits for the customer, which is nobody's lateness.
    from functions.adapters.dynamodb import DynamoLateOrders

    aws = stack["aws"]
    waiting = starting_from_a_ready_pickup(stack, 0)
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])

    assert late.unmarked_since_before(OrderStatus.ALLOCATED, waiting.created_at + timedelta(days=3650), 10) == []


def test_a_held_pickup_past_its_deadline_leaves_the_index_and_expires_once_released(stack):
    from core.holds import HoldRequest, ReleaseRequest
    from functions.bootstrap import Config, bootstrap

    aws = stack["aws"]
    due = starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    before = index_keys(aws, due.id)
    holds = bootstrap(Config.from_env()).holds
    holds.hold(due.id, HoldRequest(reason="fraud_review"), actor="key_ops")

    # A person stopped it: nothing for the pickup expiry to find, only the hold expiry's entry.
    assert index_keys(aws, due.id)["pickup_pk"] == "on_hold"
    assert reconcile() == did()
    assert bootstrap(Config.from_env()).order_repository.get(due.id).status is OrderStatus.ON_HOLD

    holds.release(due.id, ReleaseRequest(), actor="key_ops")

    assert index_keys(aws, due.id) == before  # held once overdue: back in the index, its deadline as it was
    assert reconcile() == did(expired=[due.id])


def test_a_pickup_held_past_its_deadline_is_not_cancelled_by_the_pass_after_its_release(stack):
    # Held on day 1 of 7 and released on day 9: the first pass after the release cancelled it, the
    # customer's remaining 6 days spent on a hold. Released, its deadline moves by the time held,
    # and so does the index key the pass reads.
    from core.holds import HoldRequest, ReleaseRequest
    from functions.adapters.dynamodb import DynamoOrders, timestamp
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    waiting = starting_from_a_ready_pickup(stack, 7)
    (shipment,) = waiting.shipments
    held_at, released_at = waiting.updated_at + timedelta(days=1), waiting.updated_at + timedelta(days=9)
    bootstrap(Config.from_env(), clock=lambda: held_at).holds.hold(
        waiting.id, HoldRequest(reason="fraud_review"), actor="key_ops"
    )
    bootstrap(Config.from_env(), clock=lambda: released_at).holds.release(waiting.id, ReleaseRequest(), actor="key_ops")

    moved = shipment.collect_by + timedelta(days=8)
    assert index_keys(aws, waiting.id) == {"pickup_pk": "ready_for_pickup", "collect_by": timestamp(moved)}
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: released_at + timedelta(minutes=5))):
        assert reconcile() == did()
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    assert orders.get(waiting.id).status is OrderStatus.ALLOCATED
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: moved + timedelta(minutes=5))):
        assert reconcile() == did(expired=[waiting.id])


@pytest.fixture
def installer(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installer]:
    yield from installing(tmp_path, monkeypatch)


def test_pickups_wait_while_a_plugin_failed_to_load_and_expire_once_it_loads(stack, installer, monkeypatch):
    # An expiry cancels and voids: with the payment plugin's hooks unavailable it would cancel an
    # order whose authorization it cannot void, then stop the whole pass at the first pickup.
    from functions.adapters.dynamodb import DynamoOrders
    from infra.local.stack import forget_warm_containers

    aws = stack["aws"]
    due = starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    installer.install("oms-acme", "2.1.0", {"acme_tax": FAILS_TO_IMPORT})
    forget_warm_containers()

    assert reconcile() == did()
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    assert orders.get(due.id) == due  # still ready, its units reserved, its payment authorized

    monkeypatch.setenv("OMS_DISABLED_PLUGINS", "acme_tax")
    forget_warm_containers()
    assert reconcile() == did(expired=[due.id])
    expired = orders.get(due.id)
    assert (expired.status, expired.payment.status) == (OrderStatus.CANCELLED, PaymentStatus.VOIDED)


def test_a_collected_pickup_leaves_the_index(stack):
    from functions.bootstrap import Config, bootstrap

    aws = stack["aws"]
    order = starting_from_a_ready_pickup(stack, 7)

    services = bootstrap(Config.from_env())
    services.actions.deliver_or_collect(order.id, order.shipments[0].id, actor="key_store")

    assert index_keys(aws, order.id) == {}


def test_the_reconciler_counts_the_pickups_it_expired(stack, metrics_on, capsys):
    starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    forget_business_metrics()  # the placing and readying, done here without a handler
    capsys.readouterr()

    reconcile()
    reconcile()  # nothing more is due: not counted again

    printed = capsys.readouterr().out
    assert emitted(printed) == {"PickupsExpired": 1}
    # The cancel its write recorded, printed by the reconciler's own invocation.
    assert emitted(printed, dimensions=("reason",)) == {"OrdersCancelled": 1}


def test_pickups_a_pass_expired_before_a_later_page_failed_are_still_logged_and_counted(
    stack, metrics_on, capsys, caplog, monkeypatch
):
    # The due pickups are read a page at a time: a later page's Query throttled past botocore's
    # retries failed the pass, and the run reported an empty result. The order it had cancelled
    # stayed cancelled, with no log line and no PickupsExpired for it, and no later pass finds it.
    from botocore.exceptions import ClientError

    from functions.reconciler.app import container

    due = starting_from_a_ready_pickup(stack, DUE_AT_ONCE)
    forget_business_metrics()  # the placing and readying, done here without a handler
    throttled = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}}, "Query")
    index = container().pickup_expiry._due
    real = index.due

    def throttled_after_the_first_page(before: Any) -> Iterator[str]:
        yield from real(before)
        raise throttled

    monkeypatch.setattr(index, "due", throttled_after_the_first_page)

    raised, metrics = failed_run(capsys, ClientError)

    assert raised is throttled  # the errors alarm still calls a person
    assert container().order_repository.get(due.id).status is OrderStatus.CANCELLED
    assert metrics == {"PickupsExpired": 1}
    [logged] = [r for r in caplog.records if r.getMessage() == "pickup expired: cancelled, its units back on hand"]
    assert logged.order_id == due.id


# --- Received returns whose workflow never started ------------------------------------------------


def received_return(
    aws, order_letter: str, minutes_ago: float, *, stuck: bool = False, error: str = "RefundNotDone",
    exchange: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """A delivered order with one return received `minutes_ago` and no returns workflow since (the
    receipt's function died before starting it); or, `stuck`, one its workflow left to a person
    (`return_stuck` on the order's history after the receipt, naming the step's `error`). With
    `exchange`, the return's exchange."""
    from core.money import Money
    from core.return_models import ExchangeInput, Return, ReturnLine
    from core.returns import return_id_for
    from core.status import ReturnStatus
    from functions.adapters.dynamodb import DynamoReturns

    at = utc_now() - timedelta(minutes=minutes_ago)
    left = HistoryEntry(
        at=at + timedelta(minutes=1), type="return_stuck", actor="returns-workflow",
        detail={"return_id": return_id_for(order_id(order_letter), 1), "error": error},
    )  # fmt: skip
    later = (left,) if stuck else ()
    order = store(aws, order_id(order_letter), OrderStatus.DELIVERED, minutes_ago=minutes_ago + 60, later=later)
    line = ReturnLine(line_id="L1", quantity=1, reason="too small", received_quantity=1, resellable_quantity=1,
                      condition="resellable")  # fmt: skip
    item = Return(
        id=return_id_for(order.id, 1), order_id=order.id, channel=order.channel, ordinal=1,
        status=ReturnStatus.RECEIVED, lines=[line], refund=Money.zero("USD"), fee=Money.zero("USD"),
        received_at_location="wh-west", created_at=at - timedelta(hours=1), updated_at=at, version=2,
        exchange=ExchangeInput.model_validate(exchange) if exchange else None,
    )  # fmt: skip
    DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]).add(item)
    return item.id


def test_a_received_return_whose_workflow_never_started_is_started_once_the_receipts_own_would_have_ended(stack):
    lost = received_return(stack["aws"], "r", minutes_ago=20)
    fresh = received_return(stack["aws"], "s", minutes_ago=3)

    answer = reconcile()

    assert answer["returns_restarted"] == [lost]
    executions = stack["sfn"].list_executions(stateMachineArn=stack["return_arn"])["executions"]
    inputs = [json.loads(stack["sfn"].describe_execution(executionArn=e["executionArn"])["input"]) for e in executions]
    assert [(i["return_id"], i["channel"]) for i in inputs] == [(lost, "web")]
    assert fresh not in answer["returns_restarted"]


def test_a_return_left_to_a_person_is_set_aside_from_the_receipt_index_and_read_by_no_later_pass(stack):
    # Such returns stay received for as long as the person takes: each pass read them all again,
    # and past a pass's 1,000 reads they kept every receipt lost behind them from being restarted.
    from functions.adapters.dynamodb import DynamoReceivedReturns

    aws = stack["aws"]
    left = received_return(aws, "t", minutes_ago=40, stuck=True)
    lost = received_return(aws, "u", minutes_ago=20)
    index = DynamoReceivedReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    assert list(index.received_before(utc_now())) == [left, lost]

    assert reconcile()["returns_restarted"] == [lost]

    assert list(index.received_before(utc_now())) == [lost]  # the workflow (a Pass here) settles it
    item = aws.dynamodb.get_item(TableName=aws.tables["ReturnsTable"], Key={"id": {"S": left}})["Item"]
    assert item["status"] == {"S": "received"} and item["version"] == {"N": "2"}  # still the person's


def history_failing(monkeypatch: pytest.MonkeyPatch, code: str, *, of: str | None = None) -> list[str]:
    """DynamoOrders.history raising a ClientError `code` for the order `of` (every order: None),
    every time; the orders it was asked for."""
    from botocore.exceptions import ClientError

    from functions.adapters.dynamodb import DynamoOrders

    real, asked = DynamoOrders.history, []

    def history(self: Any, order: str, **kwargs: Any) -> Any:
        asked.append(order)
        if of in (None, order):
            raise ClientError({"Error": {"Code": code, "Message": "it failed"}}, "GetItem")
        return real(self, order, **kwargs)

    monkeypatch.setattr(DynamoOrders, "history", history)
    return asked


def test_a_return_whose_own_work_keeps_failing_keeps_no_return_behind_it_waiting(
    stack, metrics_on, capsys, caplog, monkeypatch
):  # fmt: skip
    # Before: the pass raised on the first return every run; the one behind it was never started.
    from core.return_reconciliation import ReturnsNotReconciled

    poison = received_return(stack["aws"], "v", minutes_ago=40)
    lost = received_return(stack["aws"], "w", minutes_ago=20)
    history_failing(monkeypatch, "ValidationException", of=order_id("v"))

    raised, metrics = failed_run(capsys, ReturnsNotReconciled)

    assert raised.restarted == [lost] and list(raised.failed) == [poison]
    assert metrics == {"ReturnWorkflowsRestarted": 1, "ReturnsNotReconciled": 1}
    [logged] = [r for r in caplog.records if r.getMessage().startswith("return not reconciled")]
    assert (logged.levelname, logged.return_id) == ("ERROR", poison)
    assert not [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]


def test_a_table_down_ends_the_returns_pass_at_the_first_return_and_fails_it(
    stack, metrics_on, capsys, caplog, monkeypatch
):  # fmt: skip
    # A throttle past botocore's retries is no return's own: each return after it would fail alike.
    from core.return_reconciliation import ReturnsNotReconciled

    received_return(stack["aws"], "x", minutes_ago=40)
    received_return(stack["aws"], "y", minutes_ago=20)
    asked = history_failing(monkeypatch, "ProvisionedThroughputExceededException")

    raised, metrics = failed_run(capsys, ReturnsNotReconciled)

    assert raised.failed == {} and raised.outage is not None
    assert asked == [order_id("x")]  # nothing read past it
    assert "ReturnsNotReconciled" not in metrics
    [logged] = [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]
    assert logged.__dict__["pass"] == "returns"


def test_an_exchange_stuck_midway_has_its_workflow_started_again_logged_and_counted(stack, metrics_on, capsys, caplog):
    # Its Exchange step kept failing (a table throttled), no refund of it refused: before, left to a person.
    swap = {"lines": [{"sku": "MUG", "quantity": 1}]}
    stuck = received_return(stack["aws"], "e", minutes_ago=40, stuck=True, error="TransientError", exchange=swap)
    refused = received_return(stack["aws"], "f", minutes_ago=40, stuck=True, exchange=swap)
    capsys.readouterr()

    answer = reconcile()

    assert answer["returns_restarted"] == [stuck]  # the one stopped on a refused refund: a person's
    assert emitted(capsys.readouterr().out).get("ReturnWorkflowsRestarted") == 1
    [logged] = [r for r in caplog.records if r.getMessage().startswith("stuck return's workflow started again")]
    assert (logged.levelname, logged.return_id) == ("WARNING", stuck)
    assert refused not in answer["returns_restarted"]
    assert reconcile()["returns_restarted"] == []  # set aside while its execution runs


# --- Refunds left pending by a function that died -------------------------------------------------


def shipped_order(aws, external_id: str) -> Order:
    """An order placed, allocated and shipped (its payment captured) with services on this moto account."""
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order = allocated_tshirt(services, external_id)
    (shipment,) = order.shipments
    return services.actions.ship(order.id, shipment.id, None, actor="key_wh")


def allocated_mugs(services: Any, external_id: str, quantity: int) -> Order:
    """`quantity` MUGs (12.50, 5 on hand at wh-west) placed and allocated with these services, its
    one shipment pending: the order as stored."""
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body()))
    services.inventory.count("MUG", "wh-west", 5)
    return allocated(services, place_order(external_id=external_id, lines=[{"sku": "MUG", "quantity": quantity}]))


def allocated(services: Any, placing: PlaceOrder) -> Order:
    """The order placed and taken through the workflow's steps up to allocation with these services,
    as the state machine runs them: the order as stored after."""
    order = services.capture.place(placing, actor="key_web")
    services.workflow.authorize_payment(order.id, attempt=0)
    services.workflow.reserve_stock(order.id)
    services.workflow.create_shipments(order.id)
    return services.order_repository.get(order.id)


def two_parcels(services: Any, external_id: str) -> Order:
    """A MUG from wh-west and 2 HATs from wh-east placed and allocated: two parcels."""
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_product("HAT", ProductInput.model_validate(product_body("5.00")))
    west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
    services.catalog.put_location("wh-west", LocationInput.model_validate(west))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("MUG", "wh-west", 5)
    services.inventory.count("HAT", "wh-east", 5)
    lines = [{"sku": "MUG", "quantity": 1}, {"sku": "HAT", "quantity": 2}]
    return allocated(services, place_order(external_id=external_id, lines=lines))


def two_parcels_the_west_one_shipped(services: Any, stack: dict[str, Any]) -> Order:
    """two_parcels with the MUG's parcel shipped, as a test's first writes: written once, copied after
    (first_written), the label the MUG shipped with in `services`' store. The order as written."""

    def shipped() -> Order:
        order = two_parcels(services, "web-two-parcels")
        west = next(s.id for s in order.shipments if s.location_id == "wh-west")
        services.actions.ship(order.id, west, None, actor="key_wh")
        return services.order_repository.get(order.id)

    return first_written(stack, "two parcels, the west one shipped", shipped, services.label_store.labels)


def allocated_tshirt(services: Any, external_id: str) -> Order:
    """A TSHIRT (5 on hand at wh-east) placed and allocated with these services, its one shipment
    pending: the order as stored."""
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 5)
    return allocated(services, place_order(external_id=external_id))


def cancelled_while_the_carrier_was_down(services: Any, monkeypatch: pytest.MonkeyPatch) -> Order:
    """An allocated TSHIRT cancelled while its carrier's API was down: the order as cancelled, its
    booking still to cancel."""
    from core import carrier_bookings

    order = allocated_tshirt(services, "web-booked")

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("carrier API unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(carrier_bookings, "call_hook", down)
        return services.actions.cancel(order.id, "changed my mind", actor="key_web")


def test_an_appeasement_left_pending_by_a_function_that_died_is_finished_through_its_index(stack, monkeypatch, caplog):
    from core.money import Money
    from core.refund_service import RefundService
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    order = shipped_order(aws, "web-appeased")
    assert order.payment.captured.amount > 0

    def dies(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("the API function timed out here")

    with monkeypatch.context() as patched:
        patched.setattr(RefundService, "_ask_gateway", dies)
        with pytest.raises(TimeoutError):
            bootstrap(Config.from_env()).refunds.issue_refund(
                order.id, Money.of("5.00", "USD"), "late delivery", "rfk_lost", "key_cs"
            )
    services = bootstrap(Config.from_env())
    [pending] = services.order_repository.get(order.id).payment.refunds
    assert pending.status == "pending"
    assert reconcile()["refunds_finished"] == []  # it may still be in flight: left to its request

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        answer = reconcile()

    assert answer["refunds_finished"] == [pending.id]
    # Money moved for the order: the line names it, so "Following one order" finds it by order_id.
    # Before: it named the refund alone.
    [line] = [r for r in caplog.records if r.getMessage() == "refund left pending by its request finished"]
    assert (getattr(line, "order_id", None), line.refund_id) == (order.id, pending.id)
    finished = services.order_repository.get(order.id)
    assert [r.status for r in finished.payment.refunds] == ["succeeded"]
    assert finished.payment.refunded == Money.of("5.00", "USD")
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        assert reconcile()["refunds_finished"] == []  # out of the index once nothing is pending
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order.id}})["Item"]
    assert "refund_key" not in item and "refund_since" not in item


def test_orders_with_a_pending_refund_are_read_a_page_at_a_time_oldest_first_as_the_sweep_takes_them(aws, monkeypatch):
    from itertools import islice

    from functions.adapters.dynamodb import PENDING_REFUND_KEY, DynamoPendingRefunds, timestamp

    start = utc_now() - timedelta(hours=2)
    ids = [order_id(letter) for letter in "abcde"]
    for n, each in enumerate(ids):
        aws.dynamodb.put_item(
            TableName=aws.tables["OrdersTable"],
            Item={"id": {"S": each}, "refund_key": {"S": PENDING_REFUND_KEY},
                  "refund_since": {"S": timestamp(start + timedelta(minutes=n))}},
        )  # fmt: skip
    pending = DynamoPendingRefunds(aws.dynamodb, aws.tables["OrdersTable"], page_size=2)
    queries = queries_sent(aws, monkeypatch)

    assert list(pending.pending_since_before(utc_now())) == ids
    assert list(pending.pending_since_before(start + timedelta(minutes=1, seconds=30))) == ids[:2]
    queries.clear()
    assert list(islice(pending.pending_since_before(utc_now()), 3)) == ids[:3]
    assert len(queries) == 2 and {q["IndexName"] for q in queries} == {"by_pending_refund"}  # no third page


def test_a_sweep_that_could_not_finish_an_order_reports_what_it_did_then_fails(
    stack, metrics_on, capsys, caplog, monkeypatch
):
    # One order whose refund fails for a reason other than an outage: the pass finishes the rest,
    # counts them, logs the order at ERROR and fails (the function's errors alarm calls a person).
    from core.refund_service import PendingRefundSweep, SweepIncomplete

    def incomplete(
        self: PendingRefundSweep, actor: str, *, order_of: dict[str, str] | None = None, **_: Any
    ) -> list[str]:
        if order_of is not None:
            order_of["ref_finished"] = order_id("y")
        raise SweepIncomplete(["ref_finished"], {order_id("z"): KeyError("no merchant account")})

    monkeypatch.setattr(PendingRefundSweep, "run", incomplete)

    _, metrics = failed_run(capsys, SweepIncomplete)

    assert metrics == {"PendingRefundsFinished": 1}
    [logged] = [record for record in caplog.records if record.getMessage() == "pending refund not finished"]
    assert (logged.levelname, logged.order_id) == ("ERROR", order_id("z"))
    assert isinstance(logged.exc_info[1], KeyError)
    [finished] = [r for r in caplog.records if r.getMessage() == "refund left pending by its request finished"]
    assert (finished.order_id, finished.refund_id) == (order_id("y"), "ref_finished")


# --- Authorizations an edit left on an order nobody changes again ----------------------------------


def an_edit_that_died(aws, monkeypatch: pytest.MonkeyPatch) -> Order:
    """An allocated order on this moto account whose PATCH to a grown total died after the gateway
    authorized it, before its write: the order as it was."""
    from core.models import LineInput, OrderEdit
    from functions.adapters.dynamodb import DynamoOrders
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 10)
    placed = services.capture.place(place_order(external_id="web-edited"), actor="key_web")
    services.workflow.authorize_payment(placed.id, attempt=0)
    services.workflow.reserve_stock(placed.id)
    services.workflow.create_shipments(placed.id)
    order = services.order_repository.get(placed.id)
    real = DynamoOrders.update

    def dies(self: DynamoOrders, new: Order, expected: Order, entries: list[HistoryEntry], **kw: object) -> None:
        if entries and entries[0].type == "edited":
            raise TimeoutError("the API function timed out before writing the edit")
        real(self, new, expected, entries, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", dies)
        with pytest.raises(TimeoutError):
            services.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)]),
                                  "key_web")  # fmt: skip
    assert services.order_repository.get(order.id).authorization_requested is not None  # asked, never recorded
    return order


def refund_index(aws, order_id: str) -> dict[str, str]:
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}})["Item"]
    return {name: item[name]["S"] for name in ("refund_key", "refund_since") if name in item}


def test_the_authorization_of_an_edit_that_died_is_voided_through_the_index_once_its_patch_is_over(
    stack, monkeypatch, metrics_on, capsys, caplog
):
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    order = an_edit_that_died(aws, monkeypatch)
    asked = bootstrap(Config.from_env()).order_repository.get(order.id).authorization_requested
    assert refund_index(aws, order.id)["refund_key"] == "void"
    assert reconcile()["authorizations_settled"] == []  # its PATCH may still record it
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        answer = reconcile()

    assert answer == did(authorizations_settled=[order.id])
    services = bootstrap(Config.from_env())
    settled, history = services.order_repository.history(order.id)
    assert settled.authorization_requested is None and settled.payment == order.payment
    [voided] = [h for h in history if h.type == "payment_voided"]
    assert (voided.actor, voided.detail["amount"]) == ("reconciler", asked.amount.model_dump(mode="json"))
    assert voided.detail["authorization"] != order.payment.authorization and voided.detail["reference"]
    assert refund_index(aws, order.id) == {}  # out of the index once nothing is left
    assert emitted(capsys.readouterr().out) == {"EditAuthorizationsSettled": 1}
    [logged] = [r for r in caplog.records if r.getMessage() == "authorization left by an edit settled"]
    assert (logged.levelname, logged.order_id) == ("WARNING", order.id)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        assert reconcile()["authorizations_settled"] == []


def test_a_key_an_order_gave_up_before_it_was_authorized_is_voided_through_the_index(stack, monkeypatch):
    # The first authorization's answer was lost (the gateway approved), the pending order was edited
    # (its next authorization keyed anew), and the gateway could not look the old key up through the
    # edit and the next authorization, which it approved.
    from core import payment_keys
    from core.errors import TransientError
    from core.models import LineInput, OrderEdit
    from core.payments import Payments
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 10)
    placed = services.capture.place(place_order(external_id="web-gave-up"), actor="key_web")
    real = Payments.authorize

    def answer_lost(self: Payments, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)
        raise TransientError("read timed out")

    def lookup_down(self: Payments, *args: Any, **kwargs: Any) -> Any:
        raise TransientError("the gateway is briefly unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(Payments, "authorize", answer_lost)
        with pytest.raises(TransientError):
            services.workflow.authorize_payment(placed.id, attempt=0)
    with monkeypatch.context() as patched:
        patched.setattr(Payments, "find_authorization", lookup_down)
        edited = services.actions.edit(
            placed.id, services.order_repository.get(placed.id).version,
            OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_web",
        )  # fmt: skip
        services.workflow.authorize_payment(placed.id, attempt=1)
    authorized = services.order_repository.get(placed.id)
    assert authorized.status is OrderStatus.AUTHORIZED and edited.version < authorized.version
    assert refund_index(aws, placed.id)["refund_key"] == "void"

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        # (stuck authorized as well: nothing runs its workflow here)
        assert reconcile() == did(restarted=[placed.id], authorizations_settled=[placed.id])

    settled, history = bootstrap(Config.from_env()).order_repository.history(placed.id)
    [voided] = [h for h in history if h.type == "payment_voided"]
    assert (voided.actor, voided.detail["authorization_key"]) == ("reconciler", payment_keys.authorize(placed.id, 1))
    assert voided.detail["authorization"] != settled.payment.authorization
    assert settled.payment == authorized.payment and not settled.edit_authorizations_left
    assert refund_index(aws, placed.id) == {}


def test_a_cancelled_orders_own_void_the_gateway_could_not_make_is_made_through_the_index(
    stack, monkeypatch, metrics_on, capsys, caplog
):
    # The cancel's execution retries the void for half a minute; after that, only this pass asks.
    from botocore.client import BaseClient

    from core.errors import TransientError
    from core.payments import Payments
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app
    from tests.integration.test_unrecorded_captures import _sets_refund_key

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 10)
    typical, down = (services.capture.place(place_order(external_id=e), actor="key_web") for e in ("web-1", "web-2"))
    for placed in (typical, down):
        # Reserved: a cancel of an order authorized with nothing reserved yet, while its ReserveStock
        # may be reserving, records the release owed for the kept-back pass (Order.reserving_maybe).
        services.workflow.authorize_payment(placed.id, attempt=0)
        services.workflow.reserve_stock(placed.id)
    writes: list[dict[str, Any]] = []
    real = BaseClient._make_api_call

    def recorded(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation in ("PutItem", "UpdateItem", "TransactWriteItems", "BatchWriteItem"):
            writes.append(params)
        return real(self, operation, params)

    def void_down(self: Payments, *args: Any, **kwargs: Any) -> Any:
        raise TransientError("the gateway is briefly unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(BaseClient, "_make_api_call", recorded)
        voided = services.actions.cancel(typical.id, "changed my mind", "key_web")
    assert voided.payment.status is PaymentStatus.VOIDED
    assert not any(_sets_refund_key(p) for p in writes) and refund_index(aws, typical.id) == {}
    with monkeypatch.context() as patched:
        patched.setattr(Payments, "void", void_down)
        cancelled = services.actions.cancel(down.id, "changed my mind", "key_web")
    assert cancelled.payment.status is PaymentStatus.AUTHORIZED
    assert refund_index(aws, down.id)["refund_key"] == "void"

    later = utc_now() + timedelta(minutes=16)
    capsys.readouterr()
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        assert reconcile() == did(authorizations_settled=[down.id])

    settled, history = bootstrap(Config.from_env()).order_repository.history(down.id)
    assert settled.payment.status is PaymentStatus.VOIDED and not settled.own_void_owed
    assert (history[-1].type, history[-1].actor) == ("payment_voided", "reconciler")
    assert refund_index(aws, down.id) == {}
    # Named as what it settled: no edit left anything on it.
    assert emitted(capsys.readouterr().out) == {"OwnAuthorizationsSettled": 1}
    logged = [(r.getMessage(), r.order_id) for r in caplog.records if r.getMessage().endswith("authorization settled")]
    assert logged == [("closed order's own authorization settled", down.id)]


def test_an_order_with_a_refund_pending_is_swept_for_the_refund_first():
    from core.models import PaymentRefund
    from functions.adapters.dynamodb import index_attributes, timestamp
    from tests.builders import NOW

    order = a_stored_order(("TSHIRT", 1), status=OrderStatus.AUTHORIZED, replaced_authorizations=["auth_old"])
    assert index_attributes(order)["refund_key"] == {"S": "void"}
    assert index_attributes(order)["refund_since"] == {"S": timestamp(order.updated_at)}
    refund = PaymentRefund(id="ref_1", amount=order.totals.grand_total, reason="late", status="pending", at=NOW)
    pending = order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": [refund]})})
    assert index_attributes(pending)["refund_key"] == {"S": "pending"}
    assert "refund_key" not in index_attributes(order.model_copy(update={"replaced_authorizations": []}))


def test_orders_left_holding_an_authorization_are_read_oldest_first_a_page_at_a_time(aws, monkeypatch):
    from itertools import islice

    from functions.adapters.dynamodb import (
        PENDING_REFUND_KEY,
        UNSETTLED_AUTHORIZATION_KEY,
        DynamoUnsettledAuthorizations,
        timestamp,
    )

    start = utc_now() - timedelta(hours=2)
    ids = [order_id(letter) for letter in "abcde"]
    keys = [UNSETTLED_AUTHORIZATION_KEY] * 5 + [PENDING_REFUND_KEY]
    for n, (each, key) in enumerate(zip([*ids, order_id("f")], keys, strict=True)):
        aws.dynamodb.put_item(
            TableName=aws.tables["OrdersTable"],
            Item={"id": {"S": each}, "refund_key": {"S": key},
                  "refund_since": {"S": timestamp(start + timedelta(minutes=n))}},
        )  # fmt: skip
    unsettled = DynamoUnsettledAuthorizations(aws.dynamodb, aws.tables["OrdersTable"], page_size=2)
    queries = queries_sent(aws, monkeypatch)

    assert list(unsettled.left_since_before(utc_now())) == ids  # never the pending refund's order
    assert list(unsettled.left_since_before(start + timedelta(minutes=1, seconds=30))) == ids[:2]
    queries.clear()
    assert list(islice(unsettled.left_since_before(utc_now()), 3)) == ids[:3]
    assert len(queries) == 2 and {q["IndexName"] for q in queries} == {"by_pending_refund"}


def test_an_order_set_aside_leaves_the_partition_until_its_next_write_and_only_at_the_version_judged(aws):
    # What the sweep does with an order whose void was refused: nothing is asked of it until it
    # changes, so it must not stay where every pass reads it.
    from core.events import OrderEvent
    from functions.adapters.dynamodb import DynamoOrders, DynamoUnsettledAuthorizations

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    unsettled = DynamoUnsettledAuthorizations(aws.dynamodb, aws.tables["OrdersTable"])
    placed = utc_now() - timedelta(hours=1)
    left = a_stored_order(("TSHIRT", 1), id=order_id("a"), created_at=placed, updated_at=placed, version=3,
                          replaced_authorizations=["auth_replaced"])  # fmt: skip
    created = HistoryEntry(at=placed, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    orders.add(left, created, payment_token="tok_approve")
    assert list(unsettled.left_since_before(utc_now())) == [left.id]

    unsettled.set_aside(left.model_copy(update={"version": 2}))  # judged on a version since replaced: left as it is
    assert list(unsettled.left_since_before(utc_now())) == [left.id]
    unsettled.set_aside(left)
    assert list(unsettled.left_since_before(utc_now())) == []
    unsettled.set_aside(left)  # out already: nothing to do
    assert orders.get(left.id, consistent=True) == left

    noted, entry = left.noted(OrderEvent.PAYMENT_VOID_FAILED, at=utc_now(), actor="key_web", detail={})
    orders.update(noted, left, [entry])  # its next write lists it again
    assert list(unsettled.left_since_before(utc_now())) == [left.id]


def test_a_pass_that_could_not_settle_an_order_reports_what_it_did_then_fails(
    stack, metrics_on, capsys, caplog, monkeypatch
):
    from core.authorization_sweep import Settled, SettleIncomplete, UnsettledAuthorizationSweep
    from core.errors import PaymentRefused

    def incomplete(self: UnsettledAuthorizationSweep, actor: str, **_: Any) -> Settled:
        settled = Settled([order_id("y")], edits=[order_id("y")])
        raise SettleIncomplete(settled, {order_id("z"): PaymentRefused("void", "expired")})

    monkeypatch.setattr(UnsettledAuthorizationSweep, "run", incomplete)

    _, metrics = failed_run(capsys, SettleIncomplete)

    assert metrics == {"EditAuthorizationsSettled": 1}
    [logged] = [r for r in caplog.records if r.getMessage() == "authorization left by an edit not settled"]
    assert (logged.levelname, logged.order_id) == ("ERROR", order_id("z"))
    assert isinstance(logged.exc_info[1], PaymentRefused)


# --- What carriers are still owed ---------------------------------------------------------------------


def test_a_booking_the_carrier_could_not_cancel_with_the_order_is_cancelled_by_a_later_pass(
    stack, metrics_on, capsys, monkeypatch
):
    # The carrier was down when the order was cancelled: nobody would ask it again, and the merchant
    # would pay for a label never used.
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    cancelled = cancelled_while_the_carrier_was_down(services, monkeypatch)
    assert cancelled.status is OrderStatus.CANCELLED and len(cancelled.bookings_to_cancel) == 1
    key = {"id": {"S": cancelled.id}}
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert item["refund_key"] == {"S": "carrier"}  # in the index's carrier partition while it owes
    reconcile()
    assert services.order_repository.get(cancelled.id).owes_carrier_work()  # still in its request's hands
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()

    assert emitted(capsys.readouterr().out) == {"CarrierBookingsSettled": 1}
    after = services.order_repository.get(cancelled.id)
    assert not after.owes_carrier_work() and after.status is OrderStatus.CANCELLED
    _, history = services.order_repository.history(cancelled.id)
    assert [entry.type for entry in history][-1] == "carrier_booking_cancelled"
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert "refund_key" not in item and "refund_since" not in item


def test_an_order_set_aside_for_a_refused_void_is_still_found_for_the_carrier_work_it_owes(
    stack, metrics_on, capsys, monkeypatch
):
    # An order holding an authorization whose void the gateway refused sits in the authorization
    # pass's partition, ahead of the carrier's: set aside from it, it must land in the carrier's,
    # or no pass would ever cancel its booking (the merchant pays for a label never used).
    from core.events import OrderEvent
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    cancelled = cancelled_while_the_carrier_was_down(services, monkeypatch)
    # As an edit leaves it: an authorization it replaced, whose void the gateway refused.
    left = cancelled.model_copy(update={"replaced_authorizations": ["auth_replaced"], "version": cancelled.version + 1})
    refusal = {"operation": "void", "kind": "refused", "message": "expired", "authorization": "auth_replaced"}
    entry = HistoryEntry(at=utc_now(), type=OrderEvent.PAYMENT_VOID_FAILED, actor="key_web", detail=refusal)
    services.order_repository.update(left, cancelled, [entry])
    key = {"id": {"S": cancelled.id}}
    assert aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]["refund_key"] == {"S": "void"}
    capsys.readouterr()

    for minutes in (16, 21):
        later = utc_now() + timedelta(minutes=minutes)
        with app.container.override(bootstrap(Config.from_env(), clock=lambda later=later: later)):
            reconcile()

    assert emitted(capsys.readouterr().out) == {"CarrierBookingsSettled": 1}
    after = services.order_repository.get(cancelled.id)
    assert not after.owes_carrier_work() and after.replaced_authorizations == ["auth_replaced"]


# --- What returns kept back -------------------------------------------------------------------------


def mugs_back_after_goodwill(services: Any, stack: dict[str, Any]) -> tuple[Order, str, str]:
    """On this moto account: 2 MUGs (wh-west's parcel) and 2 CAPs (wh-east's); the MUGs ship, 1.00
    goes back as goodwill, then both MUGs come back, received while the CAPs wait. The order, the
    CAPs' shipment and the return's id. The process's first test to ask writes it through the
    product's own code; each later one starts from a copy of the tables it left (written_once), the
    test gateway's memory of the order, the MUGs' label and the business metrics not yet printed as
    they were then (first_written): its writes are no test's subject, and copied they cost each later
    test using them ~0.15 s of CPU less, two fifths of its own."""
    labels = services.label_store.labels
    return first_written(stack, "mugs back after goodwill", partial(_mugs_back_after_goodwill, services), labels)


def _mugs_back_after_goodwill(services: Any) -> tuple[Order, str, str]:
    from core.money import Money
    from core.return_models import ReceiveReturn, RequestReturn

    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_product("CAP", ProductInput.model_validate(product_body("7.77")))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body(name="West warehouse")))
    services.inventory.count("MUG", "wh-west", 5)
    services.inventory.count("CAP", "wh-east", 5)
    lines = [{"sku": "MUG", "quantity": 2}, {"sku": "CAP", "quantity": 2}]
    order = services.capture.place(place_order(external_id="web-kept", lines=lines), actor="key_web")
    services.workflow.authorize_payment(order.id, attempt=0)
    services.workflow.reserve_stock(order.id)
    services.workflow.create_shipments(order.id)
    order = services.order_repository.get(order.id)
    mugs = next(s.id for s in order.shipments if s.location_id == "wh-west")
    caps = next(s.id for s in order.shipments if s.location_id == "wh-east")
    services.actions.ship(order.id, mugs, None, actor="key_wh")
    goodwill = Money.of("1.00", "USD")
    services.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs")
    asked = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "too big", "reason_code": None}]}
    item = services.returns.request(order.id, RequestReturn.model_validate(asked), actor="key_cs")
    got = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 2, "condition": "resellable"}]}
    services.returns.receive(item.id, ReceiveReturn.model_validate(got), "key_wh")
    return order, caps, item.id


def test_what_a_return_kept_back_is_refunded_by_a_later_pass_when_the_last_delivery_never_refunded_it(
    stack, metrics_on, capsys, caplog, monkeypatch
):
    # A 1.00 goodwill left the MUGs' return 1.00 short of their worth while the CAPs were still to be
    # captured. The CAPs' ship and delivery died before refunding it: nothing ships after them.
    from core.money import Money
    from core.unit_cancellation import UnitCancellation
    from functions.adapters.dynamodb import backfill_index_attributes
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order, caps, return_id = mugs_back_after_goodwill(services, stack)
    goodwill = Money.of("1.00", "USD")
    run_return_workflow(services.returns, return_id, actor="key_wh")
    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "refund_kept_back", lambda self, order, actor, refusals=None: order)
        services.actions.ship(order.id, caps, None, actor="key_wh")
        services.actions.deliver(order.id, caps, actor="key_wh")
    key = {"id": {"S": order.id}}
    item_keys = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert item_keys["refund_key"] == {"S": "kept_back"}
    # An earlier version wrote no key for it: the one-off upgrade's index step gives it its keys.
    table = aws.tables["OrdersTable"]
    aws.dynamodb.update_item(TableName=table, Key=key, UpdateExpression="REMOVE refund_key, refund_since")
    assert backfill_index_attributes(aws.dynamodb, table)[0] == 1
    item_keys = aws.dynamodb.get_item(TableName=table, Key=key)["Item"]
    assert item_keys["refund_key"] == {"S": "kept_back"}
    assert reconcile()["kept_back_refunded"] == []  # still in its request's hands
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        answer = reconcile()
        assert reconcile()["kept_back_refunded"] == []

    after = services.order_repository.get(order.id)
    assert answer["kept_back_refunded"] == [after.payment.refunds[-1].id]
    assert emitted(capsys.readouterr().out) == {"KeptBackRefunded": 1}
    [line] = [r for r in caplog.records if r.getMessage() == "what a return kept back refunded"]
    # Before: the refund's id alone.
    assert (getattr(line, "order_id", None), line.refund_id) == (order.id, after.payment.refunds[-1].id)
    paid = after.payment
    assert paid.captured == order.totals.grand_total
    assert paid.captured - paid.refunded == order.totals.grand_total - order.lines[0].total - goodwill
    assert services.returns.get(return_id).refund == order.lines[0].total  # shows all refunded for it
    item_keys = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert "refund_key" not in item_keys and "refund_since" not in item_keys


def test_the_units_a_cancel_died_before_releasing_are_released_logged_and_counted_once(
    stack, metrics_on, capsys, caplog, monkeypatch
):
    # Before: the kept-back pass released them and cleared the order's record, and neither logged
    # nor counted it: a pass that finished owed stock looked like one that did nothing.
    from core.unit_cancellation import UnitCancellation
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order = allocated_mugs(services, "web-owed", 4)
    with monkeypatch.context() as patched:  # its function dies right after the cancel's write
        patched.setattr(UnitCancellation, "_settle", lambda self, order, actor: order)
        services.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    assert services.order_repository.get(order.id).stock_owed
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()
        printed = capsys.readouterr().out
        reconcile()

    assert not services.order_repository.get(order.id).stock_owed
    assert services.inventory.summary("MUG").available == 2  # 5 on hand, 3 reserved for the parcel
    assert emitted(printed) == {"OwedStockReleased": 1}
    logged = [r for r in caplog.records if r.getMessage() == "units a cancel of units freed released"]
    assert [r.__dict__.get("order_id") for r in logged] == [order.id]
    assert "OwedStockReleased" not in emitted(capsys.readouterr().out)  # once


def test_what_a_return_kept_back_is_refunded_in_the_pass_that_finishes_its_own_refund_left_pending(
    stack, metrics_on, capsys, monkeypatch
):
    # The MUGs' refund (25.81, keeping 1.00 back) was left pending by a step that died, and the
    # gateway was down when the CAPs' ship and delivery asked for it again: nothing ships after them.
    # One reconciler pass finishes that refund and refunds the 1.00, not a pass 15 minutes later.
    from core.errors import PaymentGatewayUnavailable
    from core.money import Money
    from core.refund_service import RefundService
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order, caps, return_id = mugs_back_after_goodwill(services, stack)

    def dies(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("the returns workflow's step timed out here")

    def down(*args: Any, **kwargs: Any) -> None:
        raise PaymentGatewayUnavailable("the gateway is down")

    with monkeypatch.context() as patched:
        patched.setattr(RefundService, "_ask_gateway", dies)
        with pytest.raises(TimeoutError):
            run_return_workflow(services.returns, return_id, actor="key_wh")
        patched.setattr(RefundService, "finish_pending", down)
        services.actions.ship(order.id, caps, None, actor="key_wh")
        services.actions.deliver(order.id, caps, actor="key_wh")
    [pending] = [r for r in services.order_repository.get(order.id).payment.refunds if r.status == "pending"]
    assert pending.kept_back == Money.of("1.00", "USD")
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        answer = reconcile()
        assert reconcile()["kept_back_refunded"] == []

    after = services.order_repository.get(order.id)
    assert answer["refunds_finished"] == [pending.id]
    assert answer["kept_back_refunded"] == [after.payment.refunds[-1].id]
    counted = emitted(capsys.readouterr().out)  # the return's workflow is started again too, each pass
    assert (counted["PendingRefundsFinished"], counted["KeptBackRefunded"]) == (1, 1)
    paid = after.payment
    goodwill = Money.of("1.00", "USD")
    assert paid.captured - paid.refunded == order.totals.grand_total - order.lines[0].total - goodwill


def caps_delivered_then_refunded_by_a_pass_that_dies(
    services: Any, order: Order, caps: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order's CAPs shipped and delivered while the gateway is down (the refund of what its
    return kept back stays pending), then the reconciler's pending-refund pass, 16 minutes on, makes
    that refund, and the run dies before its kept-back pass."""
    from core.errors import PaymentGatewayUnavailable
    from core.refund_service import RefundService
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    def down(*args: Any, **kwargs: Any) -> None:
        raise PaymentGatewayUnavailable("the gateway is down")

    with monkeypatch.context() as patched:
        patched.setattr(RefundService, "_ask_gateway", down)
        services.actions.ship(order.id, caps, None, actor="key_wh")
        services.actions.deliver(order.id, caps, actor="key_wh")
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: utc_now() + timedelta(minutes=16))):
        app.container().pending_refund_sweep.run("reconciler", orders=[])  # and the run dies here


def test_a_return_shows_what_it_kept_back_though_the_run_that_finished_its_refund_died_before_showing_it(
    stack, monkeypatch
):
    # The gateway was down when the CAPs' ship and delivery refunded the 1.00 the MUGs' return kept
    # back: left pending, a reconciler run's pending-refund pass made it, and that run died before its
    # kept-back pass showed it. Before: the order was in no partition of by_pending_refund (nothing
    # pending, nothing owed), so no run read it again, and the return showed 1.00 less, for good.
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order, caps, return_id = mugs_back_after_goodwill(services, stack)
    shown = run_return_workflow(services.returns, return_id, actor="key_wh").refund

    caps_delivered_then_refunded_by_a_pass_that_dies(services, order, caps, monkeypatch)
    finished = services.order_repository.get(order.id)
    assert finished.payment.refunds[-1].status == "succeeded"
    assert services.returns.get(return_id).refund == shown
    key = {"id": {"S": order.id}}
    assert aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]["refund_key"] == {
        "S": "kept_back"
    }

    later = utc_now() + timedelta(minutes=32)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        answer = reconcile()
        reconcile()

    assert answer["refunds_finished"] == [] and answer["kept_back_refunded"] == []  # nothing asked again
    after = services.order_repository.get(order.id)
    assert after.payment.refunds == finished.payment.refunds and not after.returns_to_show
    assert services.returns.get(return_id).refund == order.lines[0].total
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert "refund_key" not in item and "refund_since" not in item


# --- The passes share the function's minute ---------------------------------------------------

PASSES = [
    "stalled orders", "pickup expiry", "returns", "carrier work", "refunds", "authorizations", "settlement captures",
    "imports", "stock takes", "notifications",
]  # fmt: skip


@pytest.fixture
def passes_run(stack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passes the reconciler starts, in order (each does nothing)."""
    from core.authorization_sweep import Settled, UnsettledAuthorizationSweep
    from core.capture_sweep import CapturesSettled, UnrecordedCaptureSweep
    from core.carrier_bookings import CarrierWorkSweep
    from core.import_recount import Recounted, StuckImportRecount
    from core.notifications import NotificationRetries, Retried
    from core.pickups import PickupExpiry, PickupsExpired
    from core.reconciliation import Reconciled, Reconciler
    from core.refund_service import KeptBackRefunded, KeptBackSweep, PendingRefundSweep
    from core.return_reconciliation import ReturnReconciler
    from core.services import InventoryService

    ran: list[str] = []

    def recorded(name: str, answer: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            ran.append(name)
            return answer

        return run

    for owner, method, name, answer in (
        (Reconciler, "run", "stalled orders", Reconciled()),
        (PickupExpiry, "run", "pickup expiry", PickupsExpired()),
        (ReturnReconciler, "run", "returns", []),
        (CarrierWorkSweep, "run", "carrier work", {}),
        (PendingRefundSweep, "run", "refunds", []),
        (KeptBackSweep, "run", "kept back", KeptBackRefunded()),
        (UnsettledAuthorizationSweep, "run", "authorizations", Settled()),
        (UnrecordedCaptureSweep, "run_settlements", "settlement captures", CapturesSettled([], [], [])),
        (StuckImportRecount, "run", "imports", Recounted()),
        (InventoryService, "finish_short_counts", "stock takes", None),
        (NotificationRetries, "run", "notifications", Retried()),
    ):
        monkeypatch.setattr(owner, method, recorded(name, answer))
    return ran


def scheduled(at: str) -> dict[str, Any]:
    return {"source": "aws.events", "detail-type": "Scheduled Event", "time": at, "detail": {}}


def test_each_scheduled_run_starts_with_the_next_pass_so_a_backlog_in_one_holds_no_other_back(passes_run):
    # Every pass comes first once in ten runs: a backlog that fills the minute with the passes
    # run first never keeps the refunds, voids and settlements from their turn.
    from functions.reconciler.app import lambda_handler

    firsts = []
    for n in range(len(PASSES)):
        passes_run.clear()
        lambda_handler(scheduled(f"2026-12-03T12:{5 * n:02d}:00Z"), Context())
        first = PASSES.index(passes_run[0])
        assert [name for name in passes_run if name != "kept back"] == [*PASSES[first:], *PASSES[:first]]
        assert passes_run[passes_run.index("refunds") + 1] == "kept back"  # it takes the refunds just finished
        firsts.append(first)
    assert [(first - firsts[0]) % len(PASSES) for first in firsts] == list(range(len(PASSES)))


def test_no_pass_is_started_without_the_time_to_run_it_and_the_next_run_starts_with_the_first_left(passes_run, caplog):
    from functions.reconciler.app import lambda_handler

    class RunningOut(Context):
        """A minute the first pass uses nearly all of."""

        def get_remaining_time_in_millis(self) -> int:
            return 60_000 if not passes_run else 5_000

    lambda_handler(scheduled("2026-12-03T12:00:00Z"), RunningOut())
    first = PASSES.index(passes_run[0])
    assert [name for name in passes_run if name != "kept back"] == [PASSES[first]]
    [logged] = [r for r in caplog.records if r.getMessage().startswith("reconciler passes left to the next runs")]
    assert logged.passes == [*PASSES[first + 1 :], *PASSES[:first]]

    passes_run.clear()
    lambda_handler(scheduled("2026-12-03T12:05:00Z"), RunningOut())
    assert [name for name in passes_run if name != "kept back"] == [PASSES[(first + 1) % len(PASSES)]]


def test_the_passes_turn_with_the_schedule_the_template_gives_the_reconciler():
    from infra.local.event_sources import schedule_period
    from infra.local.template import Template, load_template

    template = Template.load()
    properties = load_template()["Resources"]["ReconcilerFunction"]["Properties"]
    schedule = properties["Events"]["EveryFiveMinutes"]
    # The period the function counts its turn in is the rate it runs on: one Mappings entry, read by both.
    _, minutes = template_schedule("ReconcilerFunction")
    assert schedule_period(template.resolve(schedule["Properties"]["Schedule"]), "template") == float(minutes) * 60
    assert template.document["Mappings"]["ScheduleMinutes"]["ReconcilerFunction"]["Minutes"] == 5  # its name says so
    # An EventBridge rule (SAM's Schedule) puts the run's `time` in its event, which the turn is
    # taken from; EventBridge Scheduler (ScheduleV2) sends none unless told, and every run would
    # start with the same pass.
    assert schedule["Type"] == "Schedule"


def test_the_reconcilers_timeout_leaves_its_passes_time_beyond_the_reserve():
    # No pass starts with less than PASS_RESERVE_MILLIS left: a timeout at or under it would run
    # none, and one barely over it would start one pass a run.
    from functions.reconciler.app import PASS_RESERVE_MILLIS
    from infra.local.template import load_template

    timeout = load_template()["Resources"]["ReconcilerFunction"]["Properties"]["Timeout"]
    assert timeout * 1000 >= 3 * PASS_RESERVE_MILLIS


def test_the_passes_a_run_left_for_want_of_time_are_counted(passes_run, metrics_on, capsys):
    # Left passes are no error (the alarm stays quiet), so the warning alone would show a backlog
    # that keeps them from running only to someone reading the logs: a metric graphs and alarms it.
    from functions.reconciler.app import lambda_handler

    class RunningOut(Context):
        def get_remaining_time_in_millis(self) -> int:
            return 60_000 if not passes_run else 5_000

    capsys.readouterr()
    lambda_handler(scheduled("2026-12-03T12:00:00Z"), RunningOut())
    assert emitted(capsys.readouterr().out) == {"ReconcilerPassesLeft": len(PASSES) - 1}

    lambda_handler(scheduled("2026-12-03T12:05:00Z"), Context())  # time for all: none left, none counted
    assert emitted(capsys.readouterr().out) == {}


def test_what_a_pass_counted_is_printed_before_the_next_pass_starts(stack, metrics_on, capsys, monkeypatch):
    # A pass started with 15 s left can still run past the timeout, and Lambda then ends the run
    # before the handler prints anything: the orders the passes before it parked would never reach
    # OrdersParkedAlarm, nor a void they saw refused VoidsNotMadeAlarm. Each pass's count is out first.
    from core.pickups import PickupExpiry
    from core.reconciliation import Reconciled, Reconciler
    from functions import business_metrics
    from functions.reconciler.app import lambda_handler

    def parks(self: Any, done: Reconciled | None = None, **_: Any) -> Reconciled:
        done = done if done is not None else Reconciled()
        done.parked.append(order_id("z"))
        business_metrics.record("PaymentFailures", operation="void", kind="refused")
        return done

    printed_before_the_next_pass: list[str] = []

    def runs_past_the_timeout(self: Any, *args: Any, **_: Any) -> Any:
        printed_before_the_next_pass.append(capsys.readouterr().out)
        raise SystemExit("the timeout ends the run")  # nothing after this is printed on Lambda

    monkeypatch.setattr(Reconciler, "run", parks)
    monkeypatch.setattr(PickupExpiry, "run", runs_past_the_timeout)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        lambda_handler({}, Context())  # by hand: stalled orders first, pickup expiry next

    [out] = printed_before_the_next_pass
    assert emitted(out) == {"OrdersParked": 1}
    assert emitted(out, ("kind", "operation")) == {"PaymentFailures": 1}


class Ticking(Context):
    """An invocation with time for `checks` more looks at the clock, then 5 s left: a backlog that
    fills the minute, without timing anything."""

    def __init__(self, checks: int):
        self.checks = checks

    def get_remaining_time_in_millis(self) -> int:
        self.checks -= 1
        return 60_000 if self.checks >= 0 else 5_000


def test_a_pass_with_a_backlog_stops_within_its_time_reports_what_it_did_and_the_next_run_resumes(
    stack, metrics_on, capsys, caplog
):
    # Each order the pass parks costs seconds on AWS (reads, a write, the hold's hooks): a backlog
    # ran the pass into the timeout, which ended the run before it logged or counted anything,
    # and the next run met the same backlog. It now stops starting orders as it stops starting
    # passes, reports what it did and that it was cut short, and the next run takes the rest.
    from functions.adapters.dynamodb import DynamoOrders
    from functions.reconciler.app import lambda_handler

    stuck = [order_id(letter) for letter in "pqr"]
    for minutes, stuck_id in zip((120, 110, 100), stuck, strict=True):
        store(stack["aws"], stuck_id, OrderStatus.AUTHORIZED, minutes_ago=minutes, restarted_minutes_ago=minutes - 20)
    capsys.readouterr()

    # By hand (stalled orders first): time to start the pass, to find no pending order, and its
    # first authorized one, then no more.
    answer = lambda_handler({}, Ticking(checks=3))

    assert answer == did(parked=stuck[:1])
    assert emitted(capsys.readouterr().out) == {
        "OrdersParked": 1, "ReconcilerPassesCutShort": 1, "ReconcilerPassesLeft": len(PASSES) - 1
    }  # fmt: skip
    [cut] = [r for r in caplog.records if r.getMessage().startswith("reconciler pass cut short")]
    assert cut.levelname == "WARNING" and getattr(cut, "pass") == "stalled orders"
    orders = DynamoOrders(stack["aws"].dynamodb, stack["aws"].tables["OrdersTable"])
    assert [orders.get(o).status for o in stuck] == [
        OrderStatus.ON_HOLD,
        OrderStatus.AUTHORIZED,
        OrderStatus.AUTHORIZED,
    ]

    # The next run, with its time: the rest, none twice (the one parked left the index).
    caplog.clear()
    assert lambda_handler({}, Context()) == did(parked=stuck[1:])
    assert emitted(capsys.readouterr().out) == {"OrdersParked": 2}
    assert not [r for r in caplog.records if r.getMessage().startswith("reconciler pass cut short")]
    assert [len(orders.history(o)[1]) for o in stuck] == [2, 2, 2]  # created, then on_hold once


def test_the_upgrade_marks_a_return_left_short_by_an_earlier_version_and_the_reconciler_shows_it(stack, monkeypatch):
    # As above, but the run that finished the refund was an earlier version's, which recorded the
    # gateway's yes without the returns owing its show. Before: nothing after the deploy read the
    # order again (no pass's index held it) and the return showed 1.00 less than went back, for
    # good. Now `infra.backfill_orders --returns-table` marks it (reading its returns), the next
    # pass shows it and clears the mark, and a second run of the backfill writes nothing.
    from core.money import Money
    from functions.adapters.dynamodb import backfill_returns_to_show
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    aws = stack["aws"]
    orders_table, returns_table = aws.tables["OrdersTable"], aws.tables["ReturnsTable"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order, caps, return_id = mugs_back_after_goodwill(services, stack)
    shown = run_return_workflow(services.returns, return_id, actor="key_wh").refund
    one_mug = [{"sku": "MUG", "quantity": 1}]
    typical = services.capture.place(place_order(external_id="typical", lines=one_mug), actor="k")

    caps_delivered_then_refunded_by_a_pass_that_dies(services, order, caps, monkeypatch)
    marked = services.order_repository.get(order.id)
    unmarked = marked.returns_shown([return_id], at=utc_now())  # as the earlier version stored it
    assert unmarked is not None
    services.order_repository.update(unmarked[0], marked, [])
    earlier = services.order_repository.get(order.id)
    key = {"id": {"S": order.id}}
    assert "refund_key" not in aws.dynamodb.get_item(TableName=orders_table, Key=key)["Item"]

    later = utc_now() + timedelta(minutes=32)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()
    assert services.returns.get(return_id).refund == shown  # short, and nothing reads the order again
    typical = services.order_repository.get(typical.id)  # stalled pending here: the pass restarted it (marked)

    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table, page_size=1) == (1, 1)
    assert services.order_repository.get(order.id).returns_to_show == [return_id]
    assert services.order_repository.get(typical.id) == typical
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later + timedelta(minutes=16))):
        answer = reconcile()

    assert answer["refunds_finished"] == [] and answer["kept_back_refunded"] == []  # nothing asked again
    after = services.order_repository.get(order.id)
    assert after.payment.refunds == earlier.payment.refunds and not after.returns_to_show
    assert services.returns.get(return_id).refund == order.lines[0].total == shown + Money.of("1.00", "USD")
    item = aws.dynamodb.get_item(TableName=orders_table, Key=key)["Item"]
    assert "refund_key" not in item and "refund_since" not in item
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 2)  # a second run writes nothing


def _delivered(services: Any, order_id: str) -> Order:
    """The order taken by the workflow's steps from placed to delivered, each parcel shipped and
    delivered in turn."""
    services.workflow.authorize_payment(order_id, attempt=0)
    services.workflow.reserve_stock(order_id)
    services.workflow.create_shipments(order_id)
    for shipment in services.order_repository.get(order_id).shipments:
        services.actions.ship(order_id, shipment.id, None, actor="key_wh")
        services.actions.deliver(order_id, shipment.id, actor="key_wh")
    return services.order_repository.get(order_id)


def test_the_upgrade_marks_no_replacement_whose_returns_show_what_went_back_for_them(stack):
    # A MUG exchanged for a MUG and a CAP; both come back from the replacement and are refunded, from
    # its captures and from the credit on the original, and the return shows both. Before: the
    # backfill marked every refunded return of a replacement's units, right or not, and marked the
    # order again at each run after the reconciler had shown and cleared it. Now it reads what the
    # credit refunded up the chain and marks nothing here, run after run.
    from functions.adapters.dynamodb import backfill_returns_to_show
    from functions.bootstrap import Config, bootstrap
    from tests.unit.test_returns import ask, exchange_of, receipt

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_product("CAP", ProductInput.model_validate(product_body("7.77")))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body(name="West warehouse")))
    services.inventory.count("MUG", "wh-west", 5)
    services.inventory.count("CAP", "wh-west", 5)

    delivered = partial(_delivered, services)

    lines = [{"sku": "MUG", "quantity": 1}]
    order = delivered(services.capture.place(place_order(external_id="web-x", lines=lines), actor="key_web").id)
    item = services.returns.request(order.id, exchange_of("L1", 1, ("MUG", 1), ("CAP", 1)), actor="key_cs")
    services.returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = delivered(run_return_workflow(services.returns, item.id, actor="key_wh").exchange_order_id or "")
    wrong = ask(("L1", 1, "wrong_item"), ("L2", 1, "wrong_item"))  # its shipping goes back too
    back = services.returns.request(replacement.id, wrong, actor="key_cs")
    services.returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "resellable")), "key_wh")
    done = run_return_workflow(services.returns, back.id, actor="key_wh")
    replacement = services.order_repository.get(replacement.id)
    assert done.refund == replacement.totals.grand_total > replacement.payment.refunded  # the credit paid the rest

    orders_table, returns_table = aws.tables["OrdersTable"], aws.tables["ReturnsTable"]
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 2)
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 2)
    assert services.order_repository.get(replacement.id) == replacement


def test_the_upgrade_marks_a_return_of_a_replacement_s_replacement_left_short_once(stack):
    # A MUG exchanged for a MUG, that MUG exchanged again, and the second replacement's MUG and its
    # shipping returned: refunded from its captures and from the credits up the chain. Left showing
    # less than that (as an earlier version dying before the show left it), the backfill marks the
    # second replacement only, the kept-back pass shows the return all that went back for it, and
    # runs of the backfill before and after write nothing else.
    from core.money import Money
    from functions.adapters.dynamodb import backfill_returns_to_show
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app
    from tests.unit.test_returns import ask, exchange_of, receipt

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body(name="West warehouse")))
    services.inventory.count("MUG", "wh-west", 9)

    delivered = partial(_delivered, services)

    def exchanged(order: Order) -> Order:
        item = services.returns.request(order.id, exchange_of("L1", 1, ("MUG", 1)), actor="key_cs")
        services.returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        return delivered(run_return_workflow(services.returns, item.id, actor="key_wh").exchange_order_id or "")

    lines = [{"sku": "MUG", "quantity": 1}]
    order = delivered(services.capture.place(place_order(external_id="web-y", lines=lines), actor="key_web").id)
    second = exchanged(exchanged(order))
    back = services.returns.request(second.id, ask(("L1", 1, "wrong_item")), actor="key_cs")
    services.returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    done = run_return_workflow(services.returns, back.id, actor="key_wh")
    first = services.returns.get(second.exchange_of or "").order_id
    up_the_chain = [
        r.reason for o in (first, order.id) for r in services.order_repository.get(o).payment.refunds
        if r.status == "succeeded" and r.reason.startswith(f"return {back.id} of exchange {second.id}")
    ]  # fmt: skip
    assert len(up_the_chain) == 2 and "carried" in up_the_chain[1]  # the first's credit, then the original's
    orders_table, returns_table = aws.tables["OrdersTable"], aws.tables["ReturnsTable"]
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 3)

    returns = services.return_repository
    item = returns.get(back.id)
    returns.update(item.refunded_in_all(done.refund - Money.of("1.00", "USD"), at=utc_now()), item)

    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (1, 2)
    assert services.order_repository.get(second.id).returns_to_show == [back.id]
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 3)
    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()
    assert returns.get(back.id).refund == done.refund
    assert not services.order_repository.get(second.id).returns_to_show
    assert backfill_returns_to_show(aws.dynamodb, orders_table, returns_table) == (0, 3)


def test_an_order_the_kept_back_pass_failed_on_is_logged_as_what_it_owed(stack, caplog, monkeypatch):
    # Before: every order the pass failed on (a payment plugin raising, not refusing) was logged
    # "refund of what a return kept back not made", though it owed a cancel's settlement or the
    # release of units it freed and no return had kept anything back: the person reading the log
    # looked for a return that was never there.
    from core.refund_service import OWED_SETTLEMENT, OWED_SHOW, OWED_STOCK, KeptBackNotRefunded, KeptBackRefunded
    from functions.reconciler.app import container

    failure = RuntimeError("plugin failed")
    owing = {order_id("s"): [OWED_SETTLEMENT, OWED_SHOW], order_id("u"): [OWED_STOCK], order_id("k"): []}
    done = KeptBackRefunded(failed=dict.fromkeys(owing, failure), failed_owing=owing)
    monkeypatch.setattr(container().kept_back_sweep, "run", lambda *_, **__: done)

    with pytest.raises(KeptBackNotRefunded):
        reconcile()

    logged = {
        r.__dict__.get("order_id"): (r.getMessage(), r.__dict__.get("owed"))
        for r in caplog.records if r.levelname == "ERROR" and r.__dict__.get("order_id") in owing
    }  # fmt: skip
    assert logged == {
        order_id("s"): ("what a cancel of units or a last parcel owed back not settled", [OWED_SETTLEMENT, OWED_SHOW]),
        order_id("u"): ("units a cancel of units freed not released", [OWED_STOCK]),
        order_id("k"): ("refund of what a return kept back not made", ["kept_back"]),
    }


def test_the_order_the_kept_back_pass_found_its_gateway_down_on_is_logged_and_counted(
    stack, caplog, monkeypatch, metrics_on, capsys
):
    # Before: a gateway that stayed down for what an order owed back said nothing in the
    # reconciler's log and counted nothing, while a carrier down is logged and counted
    # (CarrierWorkFailed). Logged at WARNING with what the order owes, counted, and no error.
    from core.refund_service import OWED_KEPT_BACK, OWED_SETTLEMENT, KeptBackRefunded
    from functions.reconciler.app import container

    owing = {order_id("d"): [OWED_SETTLEMENT, OWED_KEPT_BACK]}
    monkeypatch.setattr(container().kept_back_sweep, "run", lambda *_, **__: KeptBackRefunded(gateway_down=owing))
    capsys.readouterr()

    reconcile()

    logged = [
        (r.levelname, r.getMessage(), r.__dict__.get("owed"))
        for r in caplog.records if r.__dict__.get("order_id") == order_id("d")
    ]  # fmt: skip
    message = "payment gateway down for what the order owes: the next pass asks again"
    assert logged == [("WARNING", message, [OWED_SETTLEMENT, OWED_KEPT_BACK])]
    assert emitted(capsys.readouterr().out)["KeptBackGatewayDown"] == 1


def test_a_parcel_a_carrier_reported_whose_report_died_before_its_ship_is_shipped_delivered_logged_and_counted(
    aws, stack, metrics_on, capsys, caplog, monkeypatch
):
    # Before: the marked parcel was in no index the reconciler reads; it sat pending, the order
    # allocated, until the jeopardy scan found it 48 h late and held it for a person to confirm
    # whether a parcel its carrier had seen delivered left. Now the kept-back partition has it.
    from core.fulfillment import OrderActions
    from functions.adapters.dynamodb import DynamoOrders
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order = allocated_mugs(services, "web-marked", 2)
    shipment_id = services.order_repository.get(order.id).shipments[0].id
    with monkeypatch.context() as patched:  # the ship dies after the gateway captured
        patched.setattr(DynamoOrders, "update", dying_at_the_ship_write(RuntimeError("the ship's function died")))
        with pytest.raises(RuntimeError):
            services.actions.ship(order.id, shipment_id, None, actor="key_wh")
    with monkeypatch.context() as patched:  # the carrier's report dies once it marked the parcel
        patched.setattr(OrderActions, "ship", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("died")))
        with pytest.raises(RuntimeError):
            services.actions.deliver(order.id, shipment_id, actor="key_carrier")
    assert services.order_repository.get(order.id).parcels_reported() == [shipment_id]
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()
        printed = capsys.readouterr().out
        reconcile()

    after = services.order_repository.get(order.id)
    assert after.status is OrderStatus.DELIVERED and after.reported_delivered == []
    assert after.payment.captured == after.totals.grand_total and after.payment.refunded.amount == 0
    assert emitted(printed) == {"ReportedDeliveriesFinished": 1}
    message = "parcel a carrier reported delivered shipped and delivered: its report's function died"
    logged = [r for r in caplog.records if r.getMessage() == message]
    assert [(r.__dict__.get("order_id"), r.__dict__.get("shipment_ids")) for r in logged] == [(order.id, [shipment_id])]
    assert "ReportedDeliveriesFinished" not in emitted(capsys.readouterr().out)  # once
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order.id}})["Item"]
    assert "refund_key" not in item


# --- Stock takes recorded short whose function died before their rejects ------------------------


def test_a_short_count_whose_function_died_before_its_rejects_is_finished_through_its_index(stack):
    from core.services import InventoryService
    from functions.adapters.dynamodb import DynamoInventory
    from functions.bootstrap import Config, bootstrap

    aws = stack["aws"]
    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body()))
    services.inventory.count("MUG", "wh-west", 4)
    older = allocated(services, place_order(external_id="web-older", lines=[{"sku": "MUG", "quantity": 2}]))
    newer = allocated(services, place_order(external_id="web-newer", lines=[{"sku": "MUG", "quantity": 2}]))

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the API function timed out after the count")

    counted_at = utc_now() - timedelta(minutes=5)  # its request is long over
    dying = InventoryService(
        services.inventory_repository, services.cached_catalog, orders=lambda: services.order_repository,
        reject=died, clock=lambda: counted_at,
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        dying.count("MUG", "wh-west", 3, actor="key_counter")
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    (level,) = inventory.levels({"MUG"}, consistent=True)["MUG"]
    assert (level.on_hand, level.reserved, level.available) == (3, 4, -1)  # counted, nothing rejected

    assert reconcile() == did(stock_takes_finished=["MUG/wh-west"])

    (level,) = inventory.levels({"MUG"}, consistent=True)["MUG"]
    assert (level.on_hand, level.reserved, level.available) == (3, 2, 1)
    assert services.order_repository.get(older.id) == older
    _, history = services.order_repository.history(newer.id)
    assert [(e.actor, e.detail["reason"]) for e in history if e.type == "shipment_rejected"] == [
        ("key_counter", "stock_count")
    ]
    assert inventory.short_counts(utc_now(), 10) == []  # its mark removed
    assert reconcile()["stock_takes_finished"] == []


def test_a_short_count_still_in_its_request_is_left_to_it(stack):
    from core.ports import ShortCount
    from functions.adapters.dynamodb import DynamoInventory

    inventory = DynamoInventory(stack["aws"].dynamodb, stack["aws"].tables["InventoryTable"])
    inventory.adjust("MUG", "wh-west", 4, reason="receipt")
    inventory.reserve("MUG", "wh-west", "ord_x#L1", 4)
    short = ShortCount("MUG", "wh-west", "key_counter", utc_now())
    inventory.set_on_hand("MUG", "wh-west", 1, reason="stock_take", releasing={"ord_x#L1": 4}, short=short)

    assert reconcile()["stock_takes_finished"] == []
    assert inventory.short_counts(utc_now() + timedelta(seconds=1), 10) == [short]


def counted_short(inventory: Any, skus: list[str]) -> None:
    """Each of `skus` holding 4 units at wh-west, all reserved, counted 1 half an hour ago (a second
    apart, oldest first) by a stock take whose function died before its rejects: marked short."""
    from core.ports import ShortCount

    counted = utc_now() - timedelta(minutes=30)
    for n, sku in enumerate(skus):
        inventory.adjust(sku, "wh-west", 4, reason="receipt")
        inventory.reserve(sku, "wh-west", f"{order_id('x')}#L1", 4)
        short = ShortCount(sku, "wh-west", "key_counter", counted + timedelta(seconds=n))
        inventory.set_on_hand(sku, "wh-west", 1, reason="stock_take", releasing={f"{order_id('x')}#L1": 4}, short=short)


def counted_short_alike(aws: Any, inventory: Any, skus: list[str]) -> None:
    """counted_short for `skus`: the first sku's stock item written by the adapter, each other's a
    copy of it under that sku, marked a second after the one before (write_copies, where the
    adapter's three UpdateItems a sku took ~25 ms of moto's CPU)."""
    from functions.adapters import dynamodb as adapter

    def marked_after(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        first = datetime.fromisoformat(item[adapter.SHORT_COUNTED_AT]["S"])
        for n, sku in enumerate(skus[1:], start=1):
            yield {"sku": {"S": sku}, adapter.SHORT_COUNTED_AT: {"S": adapter.timestamp(first + timedelta(seconds=n))}}

    counted_short(inventory, skus[:1])
    key = {"sku": {"S": skus[0]}, "location_id": {"S": "wh-west"}}
    write_copies(aws.dynamodb, aws.tables["InventoryTable"], key, marked_after)


def test_short_counts_past_the_first_page_are_finished_though_the_first_keep_failing(
    stack, monkeypatch, metrics_on, capsys
):
    # The pass read the 25 oldest marks, one query and no more: while those kept failing (a reject's
    # plugin, an order no reject may move), the 26th waited for good. It pages on now.
    from functions.adapters.dynamodb import DynamoInventory

    inventory = DynamoInventory(stack["aws"].dynamodb, stack["aws"].tables["InventoryTable"])
    skus = [f"SKU{n:02}" for n in range(26)]
    counted_short_alike(stack["aws"], inventory, skus)
    failing = set(skus[:25])  # the oldest
    real_held_at = DynamoInventory.held_at

    def held_at(self: DynamoInventory, sku: str, location_id: str) -> Any:
        if sku in failing:
            raise RuntimeError("the reject's plugin failed")
        return real_held_at(self, sku, location_id)

    monkeypatch.setattr(DynamoInventory, "held_at", held_at)
    with pytest.raises(RuntimeError):  # the errors alarm calls a person for the 25
        reconcile()

    assert [s.sku for s in inventory.short_counts(utc_now(), 100)] == skus[:25]  # the 26th's mark removed
    assert emitted(capsys.readouterr().out).get("StockTakesFinished") == 1


def test_units_a_reserve_run_took_for_an_order_cancelled_meanwhile_then_died_for_good_are_released_by_the_pass(
    stack, metrics_on, capsys, monkeypatch
):
    # The cancel lands after ReserveStock read the order authorized and before it reserved, so the
    # cancel's release (and the clean-up execution the outbox starts for it) finds nothing held; the
    # run then reserves and its execution dies for good (Express's 5 minutes, no retry left). Only a
    # retry of it would have looked: the units stayed held by the cancelled order forever.
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    class Died(Exception):
        """The reserve task's process dying (a Lambda timeout) after its reservation."""

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("MUG", ProductInput.model_validate(product_body("12.50")))
    services.catalog.put_location("wh-west", LocationInput.model_validate(location_body()))
    services.inventory.count("MUG", "wh-west", 5)
    order = services.capture.place(place_order(external_id="web-dies", lines=[{"sku": "MUG", "quantity": 2}]),
                                   actor="key_web")  # fmt: skip
    services.workflow.authorize_payment(order.id, attempt=0)
    inventory = services.inventory_repository
    real_reserve = inventory.reserve

    def reserve(*args: Any, **kwargs: Any) -> None:
        services.actions.cancel(order.id, "customer_request", actor="key_web")
        real_reserve(*args, **kwargs)
        raise Died

    with monkeypatch.context() as dying:
        dying.setattr(inventory, "reserve", reserve)
        with pytest.raises(Died):
            services.workflow.reserve_stock(order.id)
    assert services.order_repository.get(order.id).status is OrderStatus.CANCELLED
    assert services.inventory.summary("MUG").available == 3  # held for a cancelled order
    capsys.readouterr()

    assert reconcile()["kept_back_refunded"] == []  # an execution may still be running for it
    assert services.inventory.summary("MUG").available == 3
    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()
        printed = capsys.readouterr().out
        reconcile()

    assert services.inventory.summary("MUG").available == 5
    assert not services.order_repository.get(order.id).stock_owed
    assert emitted(printed) == {"OwedStockReleased": 1}
    assert "OwedStockReleased" not in emitted(capsys.readouterr().out)  # once


def test_short_counts_a_pass_does_not_start_are_counted_as_left(stack):
    # Past its read (one more than `limit` is read to know) or its time, a mark waits for the next
    # pass: the reconciler logs and counts how many (StockTakesLeft).
    from core.services import ShortCountsFinished
    from functions.adapters.dynamodb import DynamoInventory
    from functions.bootstrap import Config, bootstrap

    inventory = DynamoInventory(stack["aws"].dynamodb, stack["aws"].tables["InventoryTable"])
    skus = [f"SKU{n}" for n in range(4)]
    counted_short(inventory, skus)
    service = bootstrap(Config.from_env(), label_store=FakeLabels()).inventory

    past_the_read = ShortCountsFinished()
    service.finish_short_counts(past_the_read, utc_now(), limit=2)
    assert ([s.sku for s in past_the_read.finished], past_the_read.left) == (skus[:2], 1)

    starts = iter([False, True])
    out_of_time = ShortCountsFinished()
    service.finish_short_counts(out_of_time, utc_now(), time_up=lambda: next(starts))
    assert ([s.sku for s in out_of_time.finished], out_of_time.left) == (skus[2:3], 1)
    assert [s.sku for s in inventory.short_counts(utc_now(), 10)] == skus[3:]


def test_a_mark_behind_more_kept_marks_than_a_pass_works_is_finished_by_a_later_run(stack, monkeypatch):
    # Marks an order keeps (held, or parked, not allocated yet: NotAllocatedYet) stay, oldest first in
    # the index: each run read the 500 oldest (SHORT_COUNTS_READ) and worked those only, so with 500
    # kept the 501st waited for good. Each run now works the next 500 in turn, the listing taken
    # round from where the run before stopped. Here a pass reads 5 (finish_short_counts' `limit`),
    # the same edge at a hundredth of the marks: 500 took a second of CPU to write and read.
    from core.services import InventoryService
    from functions.adapters import dynamodb as adapter
    from functions.reconciler.app import lambda_handler

    read = 5
    monkeypatch.setattr(
        InventoryService, "finish_short_counts", partialmethod(InventoryService.finish_short_counts, limit=read)
    )
    client, table = stack["aws"].dynamodb, stack["aws"].tables["InventoryTable"]
    kept = [f"KEPT{n:03}" for n in range(read)]
    counted = utc_now() - timedelta(hours=1)
    items = [
        adapter.to_item({
            "sku": sku, "location_id": "wh-west", "on_hand": 1, "reserved": 4, "available": -3,
            "reservations": {f"{order_id('x')}#L1": 4}, adapter.SHORT_COUNT: adapter.SHORT_COUNT,
            adapter.SHORT_COUNTED_AT: adapter.timestamp(counted + timedelta(seconds=n)),
            adapter.SHORT_COUNT_ACTOR: "key_counter",
        })
        for n, sku in enumerate(kept)
    ]  # fmt: skip
    for start in range(0, len(items), 25):
        client.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]})
    inventory = adapter.DynamoInventory(client, table)
    counted_short(inventory, ["LATER"])  # half an hour ago: after every kept one
    real_finish = InventoryService._finish

    def finish(self: InventoryService, short: Any) -> bool:
        return False if short.sku.startswith("KEPT") else real_finish(self, short)

    monkeypatch.setattr(InventoryService, "_finish", finish)
    for n in range(3):
        lambda_handler(scheduled(f"2026-12-03T12:{5 * n:02d}:00Z"), Context())

    assert [s.sku for s in inventory.short_counts(utc_now(), 1_000)] == kept  # LATER's finished


def test_a_partly_shipped_orders_reject_that_died_after_its_write_is_finished_by_the_kept_back_pass(stack, monkeypatch):
    # The reject of the pending parcel no other location has cancelled its units out_of_stock in
    # its write, and died before releasing them and settling the payment: nobody sends it again.
    from core.unit_cancellation import UnitCancellation
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order = two_parcels_the_west_one_shipped(services, stack)
    by_location = {s.location_id: s.id for s in order.shipments}
    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "settle_after_reject", lambda self, order, actor: order)
        services.actions.reject(order.id, by_location["wh-east"], "stock damaged", actor="key_wh")
    written = services.order_repository.get(order.id)
    assert written.status is OrderStatus.SHIPPED and written.stock_owed and written.settlement_owed
    assert hats(services) == (5, 2)

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later, label_store=FakeLabels())):
        reconcile()

    done = services.order_repository.get(order.id)
    assert not done.stock_owed and not done.settlement_owed
    assert hats(services) == (5, 0)
    assert done.payment.status is PaymentStatus.CAPTURED
    assert done.payment.captured - done.payment.refunded == done.totals.grand_total


def test_a_stock_take_left_short_by_a_function_that_died_sources_a_partly_shipped_orders_parcel_again(
    stack, monkeypatch
):
    # The reconciler's stock-take pass rejects the pending parcel of a partly shipped order, which
    # sources its units again elsewhere: it reads the sourcing rules in force (its Query of the
    # Catalog table reaches SOURCING_RULES), through the handler, so every call it makes is one
    # the template grants it.
    from core.services import InventoryService
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    class Died(Exception):
        """The stock take's function dying after its count's write, before its rejects."""

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    order = two_parcels_the_west_one_shipped(services, stack)
    north = location_body(name="North warehouse", latitude=42.36, longitude=-71.06)
    services.catalog.put_location("wh-north", LocationInput.model_validate(north))
    services.inventory.count("HAT", "wh-north", 5)

    def died(*args: Any, **kwargs: Any) -> None:
        raise Died

    with monkeypatch.context() as dying:
        dying.setattr(InventoryService, "_rejected", died)
        with pytest.raises(Died):
            services.inventory.count("HAT", "wh-east", 0, actor="key_counter")
    assert hats(services) == (0, 2)  # counted, its parcel's units still held there

    monkeypatch.setattr(app, "SHORT_COUNT_GRACE", timedelta(0))  # the mark is the pass's at once
    with app.container.override(bootstrap(Config.from_env(), label_store=FakeLabels())):
        assert reconcile()["stock_takes_finished"] == ["HAT/wh-east"]

    done = services.order_repository.get(order.id)
    assert done.status is OrderStatus.PARTIALLY_SHIPPED
    assert [(s.location_id, s.status) for s in done.shipments] == [
        ("wh-west", ShipmentStatus.SHIPPED),
        ("wh-north", ShipmentStatus.PENDING),  # sourced again: the east parcel rejected
    ]
    assert hats(services) == (0, 0)


def hats(services: Any) -> tuple[int, int]:
    """HAT at wh-east: (on_hand, reserved)."""
    east = next(loc for loc in services.inventory.summary("HAT").locations if loc.location_id == "wh-east")
    return east.on_hand, east.reserved


# --- Customer notifications the notifier plugins failed to send ----------------------------------


def deferred_shipped_notification(
    store: DynamoNotifications, letter: str, failed_ago: timedelta, error: str = "TransientError"
) -> Notification:
    """The "shipped" notification of order `letter` (one TSHIRT, allocated then shipped) as the events
    function recorded it in `store`, its send failed `failed_ago` with `error` and retried 5 minutes
    after that."""
    allocated = a_stored_order(("TSHIRT", 1), id=order_id(letter), status=OrderStatus.ALLOCATED,
                               shipments=[_a_shipment(ShipmentStatus.PENDING)])  # fmt: skip
    shipped = allocated.model_copy(
        update={"status": OrderStatus.SHIPPED, "shipments": [_a_shipment(ShipmentStatus.SHIPPED)], "version": 2}
    )
    (notification,) = notifications(allocated.model_dump(mode="json"), shipped.model_dump(mode="json"))
    store.add(notification)
    at = utc_now() - failed_ago
    assert store.defer(notification, error, at, at + timedelta(minutes=5))
    return notification


class Mailer:
    """A notifier plugin whose provider is up: the ids of the notifications it sent, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str]:
        self.sent.append(notification.id)
        return ["email"]


def test_the_pass_sends_a_due_notification_and_gives_up_one_unsent_a_day_with_a_metric_and_an_error(
    stack, metrics_on, capsys, caplog
):
    # Through the handler, so every call it makes is one the template grants it (only_granted_calls).
    from functions.adapters.notifications import DynamoNotifications
    from functions.reconciler.app import container

    aws, mailer = stack["aws"], Mailer()
    store = DynamoNotifications(aws.dynamodb, aws.tables["CatalogTable"])  # the events function's writes
    deferred = [
        deferred_shipped_notification(store, letter, failed_ago)
        for letter, failed_ago in (("u", timedelta(minutes=6)), ("v", timedelta(hours=24, minutes=1)))
    ]

    container().plugins.register(mailer, name="test_mailer_back")
    capsys.readouterr()
    answer = reconcile()

    back, given_up = deferred
    assert answer == did(notifications_sent=[back.id], notifications_abandoned=[given_up.id])
    assert mailer.sent == [back.id]  # the one past its day is given up unsent: news a day late confuses
    assert emitted(capsys.readouterr().out) == {"CustomerNotifications": 1, "NotificationsAbandoned": 1}
    (error,) = [r for r in caplog.records if r.getMessage().startswith("customer notification abandoned")]
    assert error.levelname == "ERROR" and error.notification_id == given_up.id and error.error == "TransientError"
    assert reconcile() == did()  # sent and given up once


def test_a_notifier_hanging_in_the_pass_past_the_time_left_fails_that_attempt_and_the_run_ends(stack):
    # Waited for, the hung plugin held the run into its Timeout: nothing the passes did was logged,
    # counted or answered, and the next run met the same plugin. With 15.05 s left every pass starts
    # (PASS_RESERVE_MILLIS: 15 s), the plugins given the 50 ms past that reserve.
    import threading

    from functions.adapters.notifications import DynamoNotifications
    from functions.reconciler.app import container, lambda_handler

    aws = stack["aws"]
    store = DynamoNotifications(aws.dynamodb, aws.tables["CatalogTable"])
    notification = deferred_shipped_notification(store, "h", timedelta(minutes=6))
    go, tried = threading.Event(), []

    class Hung:
        @hookimpl
        def oms_notify(self, notification: Notification) -> list[str]:
            tried.append(notification.id)
            go.wait(5)
            return ["email"]

    class NearlyOut(Context):
        def get_remaining_time_in_millis(self) -> int:
            return 15_050

    container().plugins.register(Hung(), name="test_mailer_hung")
    try:
        answer = lambda_handler(scheduled("2026-12-03T12:00:00Z"), NearlyOut())
    finally:
        go.set()
        container().plugins.unregister(name="test_mailer_hung")

    assert answer["notifications_sent"] == [] and tried == [notification.id]
    (waiting,) = store.due(utc_now() + timedelta(hours=2))
    assert (waiting.notification_id, waiting.attempts, waiting.error) == (notification.id, 2, "NotifierOverdue")


def test_a_deferred_notification_that_no_longer_reads_keeps_none_behind_it_waiting(stack, metrics_on, capsys, caplog):
    from core.notifications import NotificationsNotRetried
    from functions.adapters.notifications import DynamoNotifications
    from functions.reconciler.app import container

    aws, mailer = stack["aws"], Mailer()
    store = DynamoNotifications(aws.dynamodb, aws.tables["CatalogTable"])
    deferred = [
        deferred_shipped_notification(store, letter, failed_ago)
        for letter, failed_ago in (("x", timedelta(minutes=9)), ("y", timedelta(minutes=6)))
    ]
    poison, behind = deferred
    aws.dynamodb.update_item(  # the earliest due one's record made one no version of the code reads
        TableName=aws.tables["CatalogTable"],
        Key={"pk": {"S": f"NOTIFY#{poison.order_id}"}, "sk": {"S": f"{poison.created_at.isoformat()}#{poison.id}"}},
        UpdateExpression="SET doc = :doc",
        ExpressionAttributeValues={":doc": {"S": '{"id": "not a notification"}'}},
    )

    container().plugins.register(mailer, name="test_mailer_poison")
    failed, metrics = failed_run(capsys, NotificationsNotRetried)

    assert mailer.sent == [behind.id] and list(failed.failed) == [poison.id]
    assert metrics == {"CustomerNotifications": 1, "NotificationsNotRetried": 1}
    (error,) = [r for r in caplog.records if r.getMessage().startswith("customer notification not retried")]
    assert error.levelname == "ERROR" and error.notification_id == poison.id


def test_a_deferred_delay_of_an_order_shipped_since_is_withdrawn_unsent_with_nobody_called(stack, caplog):
    # Through the handler: it reads the order (a grant of its own) before it hands the delay over.
    from core.models import Jeopardy
    from functions.adapters.dynamodb import DynamoOrders
    from functions.adapters.notifications import DynamoNotifications
    from functions.reconciler.app import container

    aws, mailer = stack["aws"], Mailer()
    store = DynamoNotifications(aws.dynamodb, aws.tables["CatalogTable"])
    allocated = a_stored_order(("TSHIRT", 1), id=order_id("z"), status=OrderStatus.ALLOCATED,
                               shipments=[_a_shipment(ShipmentStatus.PENDING)])  # fmt: skip
    late = Jeopardy(reason="allocated for longer than 2d", status=OrderStatus.ALLOCATED, since=utc_now())
    marked = allocated.model_copy(update={"jeopardy": late, "version": 2})
    (delay,) = notifications(allocated.model_dump(mode="json"), marked.model_dump(mode="json"))
    store.add(delay)
    at = utc_now() - timedelta(minutes=6)
    assert store.defer(delay, "TransientError", at, at + timedelta(minutes=5))
    shipped = marked.model_copy(update={
        "status": OrderStatus.SHIPPED, "shipments": [_a_shipment(ShipmentStatus.SHIPPED)], "jeopardy": None,
        "version": 3,
    })  # fmt: skip
    created = HistoryEntry(at=at, type="created", to_status=OrderStatus.PENDING, actor="key_1")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(shipped, created, "tok")

    container().plugins.register(mailer, name="test_mailer_withdrawn")
    assert reconcile() == did(notifications_withdrawn=[delay.id])

    assert mailer.sent == []  # "your order is delayed" after "your order has shipped": never
    (line,) = [r for r in caplog.records if r.getMessage().startswith("customer notification withdrawn")]
    assert line.levelname == "INFO" and line.notification_id == delay.id
    assert list(store.due(utc_now() + timedelta(days=2))) == []
    assert reconcile() == did()  # withdrawn once


def _a_shipment(status: ShipmentStatus) -> Any:
    from core.models import Shipment, ShipmentLine

    return Shipment(
        id="shp_" + "w" * 24, location_id="wh1", lines=[ShipmentLine(line_id="L1", quantity=1)], status=status,
        carrier="oms-flat-rate", service="Ground", tracking_number="FLAT777",
    )  # fmt: skip
