"""Orders whose workflow never finished: started again while there is time, then parked for a person.

The outbox starts each order's workflow from the Orders stream, which keeps records for 24 hours;
a start that failed every retry waits in the outbox failure queue for an operator. Neither must be
the only way back: every few minutes the reconciler looks (through the by_status index, never a
scan) for orders still `pending` or `authorized` well after their workflow should have moved them
on (an Express execution ends within five minutes), and starts their workflow again. That is safe
however often it happens: Express does not refuse a second execution for the same order, but
every step is idempotent (keyed by order and step) and a step finding its work done does nothing.
An order still stalled long after it was placed is not restarted forever: it is parked on hold,
as the workflow parks an order whose failure outlived its retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.ports import StalledOrders, WorkflowStarter
from core.status import OrderStatus
from core.workflow import Workflow

# The statuses the workflow moves an order out of within one execution.
WORKFLOW_STATUSES = (OrderStatus.PENDING, OrderStatus.AUTHORIZED)
STALLED = "WorkflowStalled"  # the error a parked order's hold note names


@dataclass
class Reconciled:
    restarted: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        stalled: StalledOrders,
        starter: WorkflowStarter,
        workflow: Workflow,
        clock: Callable[[], datetime],
        *,
        restart_after: timedelta,
        park_after: timedelta,
        limit: int = 100,
    ):
        if not timedelta(minutes=5) < restart_after < park_after:
            # Younger than five minutes, an order's first execution may still be running.
            raise ValueError("restart_after must be over 5 minutes, and park_after longer still")
        self._stalled = stalled
        self._starter = starter
        self._workflow = workflow
        self._clock = clock
        self._restart_after = restart_after
        self._park_after = park_after
        self._limit = limit

    def run(self) -> Reconciled:
        """One pass: each stalled order is restarted once, or parked when it is too old for that.
        At most `limit` orders per status; the rest are the next pass's, oldest first."""
        now = self._clock()
        rerun = "restart-" + now.strftime("%Y%m%dT%H%M%S")  # one name per pass, well within 80 characters
        done = Reconciled()
        for status in WORKFLOW_STATUSES:
            for order in self._stalled.stalled(status, now - self._restart_after, self._limit):
                if order.created_at <= now - self._park_after:
                    minutes = int(self._park_after.total_seconds() // 60)
                    cause = f"still {status} {minutes} minutes after it was placed, though its workflow was restarted"
                    if self._workflow.park_after_failure(order.order_id, STALLED, cause):
                        done.parked.append(order.order_id)
                else:
                    self._starter.start(order.order_id, rerun)
                    done.restarted.append(order.order_id)
        return done
