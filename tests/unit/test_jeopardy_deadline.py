"""The jeopardy scan's own deadline: once its time is up it starts no other order or return (nor
reads another page of candidates), and each run starts with the next part of the scan in turn,
so a backlog larger than one run is scanned whole over the runs after it, and a backlog in one
part keeps no other part from its turn."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.deadline import Deadline
from core.jeopardy import JeopardyScan, ScanIncomplete, Scanned, parse_sla
from core.status import UNRECEIVED_RETURNS, OrderStatus, ReturnStatus
from plugins.testing.memory import InMemoryLateOrders, InMemoryUnreceivedReturns
from tests.unit.test_jeopardy import hold_at, one_mug_returned, returns_service
from tests.unit.world import Clock, World

S = OrderStatus
STOCK = [("MUG", "wh-west", 40)]


@pytest.fixture
def world(world: World) -> World:
    return counting_writes(world)


class Budget:
    """A run's time, spent by writes: up once the orders and returns took `writes` writes since
    it began, and from then on."""

    def __init__(self, world: World, writes: int) -> None:
        self._world = world
        self._until = writes_made(world) + writes

    def __call__(self) -> bool:
        return writes_made(self._world) >= self._until


def writes_made(world: World) -> int:
    return world.orders.writes + world.returns.writes  # type: ignore[attr-defined]


def counting_writes(world: World) -> World:
    for repository in (world.orders, world.returns):
        write = repository.update

        def counted(*args: object, _write=write, _repository=repository, **kwargs: object) -> object:
            _repository.writes += 1  # type: ignore[attr-defined]
            return _write(*args, **kwargs)

        repository.writes = 0  # type: ignore[attr-defined]
        repository.update = counted  # type: ignore[method-assign]
    return world


class Read(InMemoryLateOrders):
    """The index, recording each question but the count."""

    def __init__(self, world: World) -> None:
        super().__init__(world.orders)
        self.asked: list[str] = []

    def unmarked_since_before(self, status: OrderStatus, *args: object, **kwargs: object) -> list[str]:
        self.asked.append(status)
        return super().unmarked_since_before(status, *args, **kwargs)  # type: ignore[arg-type]

    def held_since_before(self, *args: object) -> list[str]:
        self.asked.append("held")
        return super().held_since_before(*args)  # type: ignore[arg-type]


def scanner(world: World, clock: Clock, late: InMemoryLateOrders | None = None) -> JeopardyScan:
    returns = returns_service(world, clock)
    return JeopardyScan(
        late or InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla("on_hold=60d"), hold_expiry=timedelta(days=2),
        unreceived=InMemoryUnreceivedReturns(world.returns), expire_return=returns.expire,
        return_expiry=timedelta(days=30),
    )  # fmt: skip


def held(world: World, clock: Clock, count: int) -> list[str]:
    orders = [world.place(("MUG", 1)) for _ in range(count)]
    for order_id in orders:
        hold_at(world, clock, order_id)
    return orders


def test_a_scan_with_no_time_left_reads_and_writes_nothing_but_still_counts_the_late_orders(world):
    clock = Clock()
    held(world, clock, 2)
    world.allocated(("MUG", 1))
    one_mug_returned(world, returns_service(world, clock))
    clock.advance(days=31)
    late = Read(world)
    stored = dict(world.orders.orders), dict(world.returns.returns)

    done = scanner(world, clock, late).run(time_up=lambda: True)

    assert done == Scanned() and late.asked == []
    assert (dict(world.orders.orders), dict(world.returns.returns)) == stored


def test_a_backlog_larger_than_one_run_is_scanned_whole_over_the_runs_after_it(world):
    clock = Clock()
    holds = held(world, clock, 4)
    allocated = [world.allocated(("MUG", 1)).id for _ in range(3)]
    returns = returns_service(world, clock)
    requested = [one_mug_returned(world, returns).id for _ in range(2)]
    clock.advance(days=31)
    scan = scanner(world, clock)

    runs = [scan.run(time_up=Budget(world, 3), turn=turn) for turn in range(12)]

    first = runs[0]
    assert len(first.expired) + len(first.marked) + len(first.returns_expired) < 9  # cut short
    assert sorted(order for run in runs for order in run.expired) == sorted(holds)
    assert sorted(order for run in runs for order in run.marked) == sorted(allocated)
    assert sorted(item for run in runs for item in run.returns_expired) == sorted(requested)
    assert {world.order(order_id).status for order_id in holds} == {S.CANCELLED}
    assert all(world.order(order_id).jeopardy is not None for order_id in allocated)
    assert {world.returns.get(return_id).status for return_id in requested} == {ReturnStatus.CANCELLED}
    assert runs[-1].in_jeopardy == 3
    # Nothing done twice: each once, in the run that did it.
    assert len([o for run in runs for o in run.expired]) == len(holds)
    assert len([o for run in runs for o in run.marked]) == len(allocated)


def test_a_backlog_of_holds_that_fills_every_run_keeps_no_late_order_from_its_turn(world):
    clock = Clock()
    held(world, clock, 3)
    late = world.allocated(("MUG", 1)).id
    clock.advance(days=3)
    scan = scanner(world, clock)

    marked_in = None
    for turn in range(10):
        done = scan.run(time_up=Budget(world, 3), turn=turn)
        if late in done.marked:
            marked_in = turn
            break
        held(world, clock, 3)  # more come due than a run can expire
        clock.advance(days=3)
    assert marked_in is not None, "the late order waited behind the holds for good"
    assert marked_in > 0  # the holds came first and took the run's time; its part came first later...
    assert S.ON_HOLD in {order.status for order in world.orders.orders.values()}  # ...behind a backlog still there


@pytest.mark.parametrize(("holds", "cut_short"), [(1, False), (2, True)])
def test_a_run_is_cut_short_only_when_its_deadline_left_something_undone(world, holds: int, cut_short: bool):
    # The holds are the run's last part (turn 1); the time is up once the first hold is expired.
    # With nothing after it the run did all it had: its handler logged "jeopardy scan cut short"
    # and counted JeopardyScansCutShort all the same.
    clock = Clock()
    orders = held(world, clock, holds)
    clock.advance(days=3)
    budget = Budget(world, 1)
    deadline = Deadline(lambda: 0 if budget() else 60_000, 30_000)

    done = scanner(world, clock).run(time_up=deadline, turn=1)

    assert done.expired == orders[:1]
    assert deadline.reached is cut_short
    assert [world.order(order_id).status for order_id in orders[1:]] == [S.ON_HOLD] * (holds - 1)


class ReturnsDown(InMemoryUnreceivedReturns):
    """The Returns table's index, throttled past botocore's retries."""

    def created_before(self, *args: object) -> list[str]:
        raise RuntimeError("the Returns table is throttled")


def test_a_part_that_fails_outright_keeps_what_the_others_did_and_the_count_and_names_itself(world):
    # A part that raised ended the run: what the parts before it did (holds cancelled, orders
    # marked) was stored but never logged nor counted, the parts after it did not run, and the
    # late orders were not counted (OrdersInJeopardyAlarm went without its point).
    clock = Clock()
    holds = held(world, clock, 2)
    late = world.allocated(("MUG", 1)).id
    one_mug_returned(world, returns_service(world, clock))
    clock.advance(days=31)
    scan = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla("on_hold=60d"), hold_expiry=timedelta(days=2),
        unreceived=ReturnsDown(world.returns), expire_return=returns_service(world, clock).expire,
        return_expiry=timedelta(days=30),
    )  # fmt: skip

    with pytest.raises(ScanIncomplete) as raised:
        scan.run(turn=0)  # the holds first, then the returns, then the late orders

    done = raised.value.done
    assert sorted(done.expired) == sorted(holds) and done.marked == [late] and done.in_jeopardy == 1
    assert [name for name, _ in raised.value.failed] == [f"returns {s.value}" for s in sorted(UNRECEIVED_RETURNS)]
    assert all(str(error) == "the Returns table is throttled" for _, error in raised.value.failed)
    assert {world.order(order_id).status for order_id in holds} == {S.CANCELLED}


def test_a_run_whose_time_runs_out_amid_expired_returns_expires_no_other_return_in_it(world):
    # The returns' candidates are read lazily (a page at a time, up to the read budget): once the
    # run's time is up, the part starts no other return, or the Lambda's timeout would end the run
    # with nothing it did reported.
    clock = Clock()
    returns = returns_service(world, clock)
    requested = [one_mug_returned(world, returns).id for _ in range(3)]
    clock.advance(days=31)

    def time_up() -> bool:
        return any(world.returns.get(return_id).status is ReturnStatus.CANCELLED for return_id in requested)

    done = scanner(world, clock).run(time_up=time_up)

    assert len(done.returns_expired) == 1
    assert [world.returns.get(return_id).status for return_id in requested].count(ReturnStatus.CANCELLED) == 1
