"""Orders whose workflow never finished: started again while there is time, then parked for a person.

The outbox starts each order's workflow from the Orders stream, which keeps records for 24 hours;
a start that failed every retry waits in the outbox failure queue for an operator. Neither must be
the only way back: every few minutes the reconciler looks (through the status index, never a
scan) for orders still `pending` or `authorized` well after their workflow should have moved them
on (an Express execution ends within five minutes), and starts their workflow again. That is safe
however often it happens: Express does not refuse a second execution for the same order, but
every step is idempotent (keyed by order and step) and a step finding its work done does nothing.
An order still stalled long after it was placed is not restarted forever: it is parked on hold,
as the workflow parks an order whose failure outlived its retries. Only one the reconciler
restarted, though: the first restart of a stall is marked on the order (Order.restarted_at, once
Step Functions took the start), and the order is parked once still stalled `park_after -
restart_after` after it (in quiet times, about `park_after` after its last change). An order no
pass restarted (an outage of Step Functions or Lambda outlasting the threshold, a backlog the passes
had not reached yet) is restarted first, and gets the span of restarts any other stall gets.

After such an outage thousands of orders may be stalled at once: a pass reads its indexes page
after page while its run has time (`time_up`), taking them in turn (one order pending or
authorized, one backordered, and again) so neither waits behind the other's backlog. The pending
and the authorized orders are one query (the status index keeps them in one partition), each
judged on the status it is read in.

So is a backordered order whose every unit is reserved (Order.backorder_filled): the fill that
completed it started its workflow, whose CreateShipments allocates it, and should that execution
die (a park that failed too, a timeout, a start left in the outbox failure queue) no arrival would
start it again, and no reorder point buys for it. Those are read through an index of their own (by
last change), never among the backordered orders still waiting for stock.

The index finds candidates by when they were placed; each is then judged by its last change
(`Order.last_changed`: `updated_at`, unless that is the jeopardy scan's mark, which is no step of
the order), so an order that moved recently (edited, released from a hold and started again) is
left to the execution that moved it, and one the scan marked late is not put off by the mark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.deadline import TimeUp, never
from core.errors import CandidatesReadPast, StaleVersion, TransientError, dependency_down
from core.hook_calls import calls_about
from core.models import Order
from core.order_changes import modify
from core.ports import OrderRepository, StalledOrders, WorkflowStarter
from core.status import OrderStatus
from core.workflow import WORKFLOW_STALLED, Stall, Workflow

# The statuses the workflow moves an order out of within one execution (and a backordered order
# with every unit reserved, read apart: StalledOrders.filled_backorders).
WORKFLOW_STATUSES = (OrderStatus.PENDING, OrderStatus.AUTHORIZED)
STALLED = WORKFLOW_STALLED  # the error a parked order's hold note names
# A pass stops restarting after this many starts Step Functions refused (TransientError): it is
# throttling or down, each refusal costs the invocation the client's retries (seconds), and a pass
# over a hundred stalled orders would run out of time before the reconciler's other work. The rest
# are the next pass's; parks (DynamoDB writes) go on.
MAX_REFUSED_STARTS = 3


@dataclass
class Reconciled:
    restarted: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    # The orders whose own work raised (a record that no longer reads, an item its table refuses),
    # by id: read past, judged again by the next pass.
    failed: dict[str, Exception] = field(default_factory=dict)


class OrdersNotReconciled(CandidatesReadPast):
    """A stalled-orders pass went on past orders whose own work raised (CandidatesReadPast)."""

    def __init__(self, done: Reconciled):
        super().__init__(done, f"{len(done.failed)} stalled order(s) not reconciled")


class Reconciler:
    def __init__(
        self,
        stalled: StalledOrders,
        orders: OrderRepository,
        starter: WorkflowStarter,
        workflow: Workflow,
        clock: Callable[[], datetime],
        *,
        restart_after: timedelta,
        park_after: timedelta,
        outage: Callable[[Exception], bool] = dependency_down,
    ):
        if not timedelta(minutes=5) < restart_after < park_after:
            # Younger than five minutes, an order's first execution may still be running.
            raise ValueError("restart_after must be over 5 minutes, and park_after longer still")
        self._stalled = stalled
        self._orders = orders
        self._starter = starter
        self._workflow = workflow
        self._clock = clock
        self._restart_after = restart_after
        self._park_after = park_after
        self._outage = outage  # whether an error says a dependency is down (not the order's own)

    def run(self, done: Reconciled | None = None, *, time_up: TimeUp = never) -> Reconciled:
        """One pass: each stalled order is restarted once, or parked once still stalled
        `park_after - restart_after` after the first restart of its stall (never one no pass
        restarted: Order.restarted_since_change).
        A start the service refused as a duplicate of its name (a pass running alongside, in the
        same second) is that pass's restart, not counted here. Every stalled order, oldest first,
        in turn (pending or authorized, backordered with every unit reserved, and again), read
        page after page while there is time; an order whose start Step Functions
        refused or whose park kept losing races (TransientError) is the next pass's:
        one such order does not stop the pass, nor the reconciler's other work; after
        MAX_REFUSED_STARTS refused starts the pass restarts no more (it still parks). `done` is
        filled as the pass goes (a new one without it): a caller whose pass then fails outright
        still reports what it restarted and parked (a parked order is no later pass's). An order
        whose own work raises (a record that no longer reads) is read past, in `done.failed`: it
        stays the oldest of its status, so a pass it stopped would stop there every run; a
        dependency found down (`outage`) ends the pass there. Once `time_up` says so, no other
        order is read: the rest are the next pass's."""
        now = self._clock()
        rerun = "restart-" + now.strftime("%Y%m%dT%H%M%S")  # one name per pass, well within 80 characters
        done = done if done is not None else Reconciled()
        refused = 0
        for statuses, order_id in self._candidates(now - self._restart_after, time_up):
            try:
                with calls_about(order_id=order_id):
                    start = refused < MAX_REFUSED_STARTS
                    refused += self._reconcile(order_id, statuses, now, rerun, done, start=start)
            except Exception as error:  # any: the order's own, unless it says a dependency is down
                if self._outage(error):
                    raise  # each order after it would fail alike: the pass stops here
                done.failed[order_id] = error  # the orders behind it are judged all the same
        return done

    def _reconcile(
        self, order_id: str, statuses: tuple[OrderStatus, ...], now: datetime, rerun: str, done: Reconciled,
        *, start: bool,
    ) -> bool:  # fmt: skip
        """Judge one candidate, found among the orders in `statuses`: park it, restart it (when
        `start`), or leave it (moved on, or changed recently). True when Step Functions refused its start."""
        order = self._orders.get(order_id)
        if order is None or order.status not in statuses:
            return False  # moved on since the index was read
        status = order.status
        if not stalled_in(order, status) or order.last_changed > now - self._restart_after:
            return False  # moved on since the index was read, or recently enough to be running
        restarted = order.restarted_since_change
        if restarted is not None and restarted <= now - self._restart_span and not self._changed_since_park(order, now):
            minutes = int(self._park_after.total_seconds() // 60)
            still = "backordered with every unit reserved" if status is OrderStatus.BACKORDERED else status
            cause = f"still {still} {minutes} minutes after its last change, though its workflow was restarted"
            judged = Stall(status, now - self._park_after, now - self._restart_span)
            with contextlib.suppress(TransientError):  # kept losing races: the next pass finds it again
                if self._workflow.park_after_failure(order.id, STALLED, cause, stalled=judged):
                    done.parked.append(order.id)
        elif start:
            try:
                started = self._starter.start(
                    order.id, channel=order.channel, correlation_id=self._orders.placed_by(order.id), rerun=rerun
                )
            except TransientError:
                return True  # the next pass finds it again
            if started:  # False: a pass running alongside started it under this name (and marks it)
                done.restarted.append(order.id)
                if restarted is None:
                    self._mark_restarted(order, status, now)
        return False

    def _changed_since_park(self, order: Order, now: datetime) -> bool:
        # Restarted `restart_after` after its last change at the earliest: never true but for clocks apart.
        return order.last_changed > now - self._park_after

    @property
    def _restart_span(self) -> timedelta:
        """How long after its first restart a stalled order is parked: the span of restarts an
        order stalled in quiet times gets (restarted `restart_after` after its last change, parked
        `park_after` after it), whenever the first restart came."""
        return self._park_after - self._restart_after

    def _mark_restarted(self, order: Order, status: OrderStatus, now: datetime) -> None:
        """Mark the first restart of the order's stall, after Step Functions took it: a start it
        refused marks nothing, so no park follows a restart that never was. Written on the condition
        of the version read: an order its execution moved meanwhile is no longer stalled (a lost
        race: nothing to mark), and one not marked is restarted again by the next pass, then marked."""

        def decide(found: Order):
            if not stalled_in(found, status) or found.restarted_since_change is not None:
                return None
            return found.mark_restarted(at=now)

        with contextlib.suppress(StaleVersion):  # kept changing: the next pass restarts it again, then marks it
            modify(self._orders, order.id, decide, read=order)

    def _candidates(self, changed_before: datetime, time_up: TimeUp) -> Iterator[tuple[tuple[OrderStatus, ...], str]]:
        """The candidates of the workflow's statuses and the filled backorders, oldest first, one of
        each in turn until both run out, or until `time_up` says so: nothing is read after that (an
        index page is read only once the candidates before it are judged)."""
        queues: list[tuple[tuple[OrderStatus, ...], Iterator[str]]] = [
            (WORKFLOW_STATUSES, self._ids(WORKFLOW_STATUSES, changed_before)),
            ((OrderStatus.BACKORDERED,), self._filled_backorders(changed_before)),
        ]
        while queues:
            for queue in list(queues):
                if time_up():
                    return
                statuses, ids = queue
                order_id = next(ids, None)
                if order_id is None:
                    queues.remove(queue)
                else:
                    yield statuses, order_id

    # Generators: each index is asked only once the first of its candidates is wanted.
    def _ids(self, statuses: tuple[OrderStatus, ...], changed_before: datetime) -> Iterator[str]:
        for each in self._stalled.stalled(statuses, changed_before):
            yield each.order_id

    def _filled_backorders(self, changed_before: datetime) -> Iterator[str]:
        yield from self._stalled.filled_backorders(changed_before)


def stalled_in(order: Order, status: OrderStatus) -> bool:
    """Whether `order` is still as the reconciler found it: in `status`, and, backordered, with every
    unit reserved (one waiting for stock is no workflow's to move on)."""
    return order.status is status and (status is not OrderStatus.BACKORDERED or order.backorder_filled())
