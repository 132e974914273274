"""The reconciler and a backordered order whose every unit an arrival reserved (Order.backorder_filled):
the execution that fill started is its only way to allocation, so when that execution dies (its
start refused for good, or its CreateShipments and then its park failing every retry) the reconciler
restarts it, then parks it; one still waiting for stock is no workflow's to move on and is left alone.
On the in-memory fakes (core.reconciliation), with the index entry their writes carry
(index_attributes); the query that finds them is tests/integration/test_reconciler.py's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.backorders import BackorderAllocator
from core.errors import Backordered, TransientError
from core.ports import StalledOrder, StalledOrders, WorkflowStarter
from core.reconciliation import STALLED, Reconciled, Reconciler
from core.status import OrderStatus
from core.workflow import Stall
from functions.adapters.dynamodb import BACKORDER_FILLED_KEY, index_attributes, timestamp
from tests.builders import NOW, place_order, product
from tests.unit.world import Clock, World, before_the_next_write, build_world

S = OrderStatus


class Stalled(StalledOrders):
    """The reconciler's queries over the fake's orders, as the indexes answer them."""

    def __init__(self, world: World):
        self.world = world
        self.asked: list[str] = []

    def stalled(self, statuses, created_before):
        self.asked.append(" or ".join(status.value for status in statuses))
        orders = self.world.orders.orders.values()
        found = [o for o in orders if o.status in statuses and o.created_at < created_before]
        return iter([StalledOrder(o.id, o.created_at) for o in sorted(found, key=lambda o: o.created_at)])

    def filled_backorders(self, changed_before):
        self.asked.append("filled backorders")
        orders = self.world.orders.orders.values()
        found = [o for o in orders if o.backorder_filled() and o.last_changed < changed_before]
        return iter([o.id for o in sorted(found, key=lambda o: o.last_changed)])


class DeadStarter(WorkflowStarter):
    """Records each start; the execution it started dies before any step writes (a start left in
    the outbox failure queue, an Express timeout, CreateShipments then ParkOrder failing every retry)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []
        self.correlations: list[str] = []

    def start(self, order_id, channel="", correlation_id="", rerun=None):
        self.started.append((order_id, rerun))
        self.correlations.append(correlation_id)
        return True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(clock: Clock) -> World:
    world = build_world([("PREORDER", "wh-west", 1), ("TSHIRT", "wh-west", 10)], clock=clock)
    world.catalog.put_product(product("PREORDER", "30.00", allow_backorder=True))
    return world


def backordered(world: World, *lines: tuple[str, int]) -> str:
    order_id = world.place(*lines)
    world.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    return order_id


def filled_by_an_arrival(world: World, clock: Clock, units: int = 1) -> DeadStarter:
    """Units of PREORDER arrive at wh-west a minute after NOW and fill what waits for them; the
    executions the fills start die."""
    clock.now = NOW + timedelta(minutes=1)
    starter = DeadStarter()
    world.inventory.adjust("PREORDER", "wh-west", units, reason="receipt")
    BackorderAllocator(world.orders, world.catalog, world.backorders, world.workflow, starter).arrived(
        "PREORDER", "wh-west"
    )
    return starter


def reconciler(world: World, minutes_later: float) -> tuple[Reconciler, Stalled, DeadStarter]:
    stalled, starter = Stalled(world), DeadStarter()
    at = NOW + timedelta(minutes=minutes_later)
    run = Reconciler(
        stalled, world.orders, starter, world.workflow, lambda: at,
        restart_after=timedelta(minutes=15), park_after=timedelta(minutes=60),
    )  # fmt: skip
    return run, stalled, starter


def test_a_filled_backorder_whose_execution_died_is_restarted_then_allocated_by_the_restart(world, clock):
    order_id = backordered(world, ("PREORDER", 2), ("TSHIRT", 1))
    fill = filled_by_an_arrival(world, clock)
    assert fill.started == [(order_id, f"backorder-v{world.order(order_id).version}")]
    filled = world.order(order_id)
    assert filled.status is S.BACKORDERED and filled.backorder_filled()
    # The reconciler's index entry: added by the fill that completed it, by its last change.
    assert index_attributes(filled)["refund_key"] == {"S": BACKORDER_FILLED_KEY}
    assert index_attributes(filled)["refund_since"] == {"S": timestamp(filled.last_changed)}

    early, _, starter = reconciler(world, minutes_later=10)  # its execution may still be running
    assert (early.run(), starter.started) == (Reconciled(), [])

    run, stalled, starter = reconciler(world, minutes_later=20)
    assert run.run() == Reconciled(restarted=[order_id])
    assert starter.started == [(order_id, "restart-20261122T122000")]
    assert stalled.asked == ["pending or authorized", "filled backorders"]

    # The restarted execution's steps: nothing reserved again, CreateShipments allocates it.
    held = world.held_for(order_id)
    order = world.run(order_id)
    assert order.status is S.ALLOCATED and world.held_for(order_id) == held
    assert "refund_key" not in index_attributes(order)  # and removed by its allocation
    assert world.level("PREORDER", "wh-west")[:2] == (2, 2)
    assert reconciler(world, minutes_later=25)[0].run() == Reconciled()


def test_the_fills_start_and_the_restart_carry_the_request_that_placed_the_order(world, clock):
    # Their steps log it as correlation_id, as the outbox's start does ("Following one order").
    # Before: both started the execution with none, so the steps of those executions logged none.
    body = {"external_id": "web-traced", "lines": [{"sku": "PREORDER", "quantity": 2}]}
    order_id = world.capture.place(
        place_order(**body, payment={"method": "test", "token": "tok_approve"}), actor="key_web", request_id="req-1"
    ).id
    world.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    fill = filled_by_an_arrival(world, clock)
    run, _, restart = reconciler(world, minutes_later=20)
    run.run()

    assert ([started for started, _ in fill.started], fill.correlations) == ([order_id], ["req-1"])
    assert ([started for started, _ in restart.started], restart.correlations) == ([order_id], ["req-1"])


def test_a_filled_backorder_still_stalled_after_the_park_threshold_is_parked_for_a_person(world, clock):
    order_id = backordered(world, ("PREORDER", 2))
    filled_by_an_arrival(world, clock)
    assert reconciler(world, minutes_later=62)[0].run() == Reconciled(restarted=[order_id])  # none restarted it yet

    run, _, starter = reconciler(world, minutes_later=107)  # still stalled 45 (60 - 15) minutes after
    assert (run.run(), starter.started) == (Reconciled(parked=[order_id]), [])

    order = world.order(order_id)
    assert order.status is S.ON_HOLD and order.hold.resume_to is S.BACKORDERED
    assert order.hold.note.startswith(
        f"order workflow failed after retries: {STALLED}: still backordered with every unit reserved 60 minutes"
    )
    assert world.held_for(order_id)  # its units stay held for the release
    assert reconciler(world, minutes_later=63)[0].run() == Reconciled()  # parked once


def test_a_backordered_order_still_waiting_for_stock_is_neither_restarted_nor_parked(world, clock):
    waiting = backordered(world, ("PREORDER", 3))
    filled_by_an_arrival(world, clock)  # one unit of the two it lacks
    assert world.order(waiting).short_of() and "refund_key" not in index_attributes(world.order(waiting))

    assert reconciler(world, minutes_later=90)[0].run() == Reconciled()
    # Read filled by an index a fill had not reached yet (short again since): judged on the order read.
    run, stalled, starter = reconciler(world, minutes_later=30)
    stalled.filled_backorders = lambda changed_before: iter([waiting])  # type: ignore[method-assign]
    assert (run.run(), starter.started) == (Reconciled(), [])
    # Judged filled, then short again before the park: the park's own condition leaves it waiting.
    judged = Stall(S.BACKORDERED, NOW + timedelta(minutes=90), NOW + timedelta(minutes=90))
    assert not world.workflow.park_after_failure(waiting, STALLED, "stalled", stalled=judged)
    assert world.order(waiting).status is S.BACKORDERED


def test_a_restart_alongside_the_fills_own_execution_reserves_nothing_twice_and_allocates_once(world, clock):
    """Express refuses no second execution: the fill's execution and the reconciler's restart run the
    same steps, interleaved, and each finds the other's work done."""
    order_id = backordered(world, ("PREORDER", 2), ("TSHIRT", 1))
    filled_by_an_arrival(world, clock)
    held = world.held_for(order_id)

    for _ in range(2):  # both executions authorize and reserve
        world.workflow.authorize_payment(order_id, attempt=0)
        world.workflow.reserve_stock(order_id)
    assert world.held_for(order_id) == held
    world.workflow.create_shipments(order_id)
    allocated = world.order(order_id)
    world.workflow.create_shipments(order_id)

    assert world.order(order_id) == allocated and allocated.status is S.ALLOCATED
    assert len(allocated.shipments) == 1 and world.held_for(order_id) == held
    assert world.level("PREORDER", "wh-west")[:2] == (2, 2) and world.level("TSHIRT", "wh-west")[:2] == (10, 1)


def test_a_restart_whose_create_shipments_loses_its_write_to_the_other_execution_gives_up_nothing(
    world, clock, monkeypatch
):
    """The restart's CreateShipments books its parcel, and the fill's execution allocates the order
    before that write lands: the loser asks to run again (then finds it allocated), and the
    booking it made under the same key is the recorded parcel's, not one to cancel."""
    order_id = backordered(world, ("PREORDER", 2))
    filled_by_an_arrival(world, clock)
    held = world.held_for(order_id)

    landed = before_the_next_write(world, monkeypatch, lambda: world.workflow.create_shipments(order_id))
    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)
    assert landed == [True]
    world.workflow.create_shipments(order_id)  # its retry

    order = world.order(order_id)
    assert order.status is S.ALLOCATED and len(order.shipments) == 1 and world.held_for(order_id) == held
    assert not order.owes_carrier_work() and order.bookings_to_cancel == []
