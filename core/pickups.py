"""Uncollected pickups: each ready longer than its store waits is cancelled and its units go back.

Found without a table scan: an order carries index keys (a sparse index, by_pickup_deadline)
only while a pickup of it waits at its store and it is not on hold, keyed by the earliest
`collect_by`; the scheduled reconciler asks that index for the deadlines already past. A hold is a
person stopping the automation, so nothing expires a held order's pickup, nor hands it over:
released, the order is back in the index with each deadline moved later by the time held
(Order.pickups_after_hold: the time held does not count against the customer), and a pickup held
only once overdue expires on the next pass (the person who releases it may still hand it over
first). Nor one a collect asked a capture for and never recorded (the customer was at the
counter): the collect repeated records it, or the jeopardy scan holds the order for a person
(core/capture_sweep.py), whose release gives the pickup a day however overdue (the collect they
record after it must not meet an expired order); until then a pass reads past it, as past a held
one, to the pickups behind it. Storing the deadline on the shipment
when it is readied (rather than computing ready_at + days at expiry) fixes the customer's
promise at that moment: changing OMS_PICKUP_EXPIRY_DAYS later moves no deadline already given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from core.deadline import TimeUp, never
from core.errors import CandidatesReadPast, InvalidTransition, StaleVersion, dependency_down
from core.fulfillment import OrderActions
from core.hook_calls import calls_about
from core.models import Order
from core.order_changes import modify
from core.ports import DuePickups, OrderRepository
from core.status import OrderStatus, ShipmentStatus

EXPIRY_ACTOR = "pickup_expiry"


@dataclass
class PickupsExpired:
    expired: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # due, but on hold: left to the person holding them
    # The due orders whose own work raised (a record that no longer reads, a clean-up's plugin), by
    # id: read past, judged again by the next pass.
    failed: dict[str, Exception] = field(default_factory=dict)


class PickupsNotExpired(CandidatesReadPast):
    """A pickup-expiry pass went on past due orders whose own work raised (CandidatesReadPast)."""

    def __init__(self, done: PickupsExpired):
        super().__init__(done, f"the pickups of {len(done.failed)} order(s) not expired")


class PickupExpiry:
    def __init__(
        self,
        due: DuePickups,
        orders: OrderRepository,
        actions: OrderActions,
        clock: Callable[[], datetime],
        *,
        limit: int = 100,
        max_reads: int = 1000,
        outage: Callable[[Exception], bool] = dependency_down,
    ):
        self._due = due
        self._orders = orders
        self._actions = actions
        self._clock = clock
        self._limit = limit
        self._max_reads = max_reads
        self._outage = outage  # whether an error says a dependency is down (not the order's own)

    def run(self, done: PickupsExpired | None = None, *, time_up: TimeUp = never) -> PickupsExpired:
        """One pass: the orders whose waiting pickups this pass cancelled, and apart those due but
        found on hold (held after the index was read, or stored before a hold took an order out of
        it), left as they are. At most `limit` orders it tried to expire, among at most `max_reads`
        read, earliest deadline first; the rest are the next pass's. An order it cannot expire (on
        hold, a capture a collect asked for standing) is read past, so those, which stay earliest
        until a person or the jeopardy scan takes them, keep no pickup behind them waiting. An
        order collected or changed since the index was read is left as it is, and not counted.
        `done` is filled as the pass goes (a new one without it): a caller whose pass then fails
        outright (a later page's Query, a read) still reports what it expired (no later pass's).
        An order whose own work raises (a record that no longer reads) is read past, in
        `done.failed`: it stays the earliest due, so a pass it stopped would stop there every run;
        a dependency found down (`outage`) ends the pass there.
        Once `time_up` says so, no other order is read: the rest are the next pass's."""
        now = self._clock()
        done = done if done is not None else PickupsExpired()
        tried = 0
        for order_id in islice(self._due.due(now), self._max_reads):
            if time_up():
                break
            try:
                with calls_about(order_id=order_id):
                    tried += self._expire_due(order_id, now, done)
            except Exception as error:  # any: the order's own, unless it says a dependency is down
                if self._outage(error):
                    raise  # each order after it would fail alike: the pass stops here
                done.failed[order_id] = error  # the pickups behind it are expired all the same
                tried += 1
            if tried == self._limit:
                break
        return done

    def _expire_due(self, order_id: str, now: datetime, done: PickupsExpired) -> bool:
        """Expire the order's pickups due at `now`: whether it had any to try."""
        order = self._orders.get(order_id)
        if order is None:
            return False
        if order.status is OrderStatus.ON_HOLD:
            done.held.append(order_id)
            return False
        due = [
            shipment.id
            for shipment in order.shipments
            if shipment.status is ShipmentStatus.READY_FOR_PICKUP
            and shipment.collect_by is not None
            and shipment.collect_by < now
            and order.capture_request(shipment.id) is None  # being collected: read past
        ]
        for shipment_id in due:
            self._expire(order_id, shipment_id, done)
        return bool(due)

    def _expire(self, order_id: str, shipment_id: str, done: PickupsExpired) -> None:
        """Cancel the waiting pickup in one conditional write, judged again on the order as it is
        written (Order.expire_pickup); then the clean-up every cancel does (release its units,
        void the authorization: OrderActions.expire_pickup, which finds it expired and only
        finishes it). In `done.expired` only when this write expired it (before its clean-up, which
        may raise): one collected or cancelled meanwhile (the write lost its race and changed
        nothing) is not."""
        at = self._clock()
        expired = False

        def decide(order: Order):
            nonlocal expired
            shipment = next((s for s in order.shipments if s.id == shipment_id), None)
            expired = (
                shipment is not None
                and order.status is not OrderStatus.ON_HOLD
                and shipment.status is ShipmentStatus.READY_FOR_PICKUP
                and shipment.collect_by is not None
                and shipment.collect_by < at
                and order.capture_request(shipment_id) is None  # being collected (Order.expire_pickup)
            )
            return order.expire_pickup(shipment_id, at=at, actor=EXPIRY_ACTOR) if expired else None

        try:
            modify(self._orders, order_id, decide)
        except (InvalidTransition, StaleVersion):
            return  # still changing: the next pass looks again
        if expired:
            done.expired.append(order_id)
            # Should this Lambda die first, or the clean-up keep losing races, the execution the
            # cancel's stream record starts finishes it (functions/outbox, CancelOrder), as for any
            # cancel: the pass goes on to the next pickup.
            with contextlib.suppress(StaleVersion):
                self._actions.expire_pickup(order_id, shipment_id, actor=EXPIRY_ACTOR)
