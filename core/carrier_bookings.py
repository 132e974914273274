"""Bookings no parcel will use, cancelled with their carrier; the reconciler's pass over what carriers are owed.

A change that gives a booking up (a cancel, a parcel gone or booked again) records it on the
order in its own write (Order.bookings_to_cancel), so the debt outlives a crash or a carrier down.
The request that made the change asks the carrier at once; the reconciler's pass asks again for
whatever is still owed, and books again any parcel still due a label (Order.labels_due), so an
order nobody touches again does not keep a label for contents it no longer has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from core.deadline import TimeUp, never
from core.errors import InvalidTransition, NotFound, StaleVersion, dependency_down
from core.hook_calls import call_hook, calls_about
from core.models import CARRIER_WILL_NOT_CANCEL, GivenUpBooking, Order
from core.order_changes import modify
from core.ports import OrderRepository, OrdersOwingCarrier

if TYPE_CHECKING:
    from core.fulfillment import OrderActions


@dataclass
class CarrierWork:
    """What asking the carrier did for one order: the shipments booked again, the
    given-up bookings settled (cancelled, or never to be), and what failed (left for the next pass)."""

    relabelled: list[str] = field(default_factory=list)
    settled: list[GivenUpBooking] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, other: CarrierWork) -> None:
        self.relabelled += other.relabelled
        self.settled += other.settled
        self.failed += other.failed


class CarrierBookings:
    """Asks the carrier plugins to cancel the bookings an order gave up, and records their answers."""

    def __init__(self, orders: OrderRepository, hook: Any, clock: Callable[[], datetime]):
        self._orders = orders
        self._hook = hook
        self._clock = clock

    def cancel_given_up(
        self, order: Order, actor: str, down: set[str] | None = None, *, only: list[GivenUpBooking] | None = None
    ) -> CarrierWork:
        """Ask the carrier plugins (oms_carrier_cancel_shipment) to cancel each booking `order`
        gave up (of those in `only`, when given), and record each answer (Order.booking_settled):
        cancelled, refused for good, or
        nobody's (no plugin answers for its carrier; for a booking only maybe made, none made it).
        One whose plugin raises (the carrier down) stays owed for the reconciler's next pass:
        whatever the carrier does, the change that gave the booking up stands. A carrier in `down`
        (one that failed earlier in the same pass, which this adds to) is not asked."""
        done = CarrierWork()
        down = set() if down is None else down
        for booking in order.bookings_to_cancel:
            if booking.carrier in down or (only is not None and booking not in only):
                continue
            try:
                answer = call_hook(
                    self._hook.oms_carrier_cancel_shipment, carrier=booking.carrier,
                    tracking_number=booking.tracking_number, booking_key=booking.booking_key, order_id=order.id,
                )  # fmt: skip
            except Exception as failure:  # any: the booking stays owed, the change stands
                down.add(booking.carrier)
                done.failed.append(f"cancel of {booking.tracking_number}: {type(failure).__name__}: {failure}")
                continue
            reason = (
                CARRIER_WILL_NOT_CANCEL if answer is False
                else f"no carrier plugin cancels bookings of {booking.carrier}" if booking.carrier is not None
                else "no carrier plugin made a booking under its key"
            )  # fmt: skip
            self._settle(order.id, booking, answer is True, reason, actor)
            done.settled.append(booking)
        return done

    def _settle(self, order_id: str, booking: GivenUpBooking, cancelled: bool, reason: str, actor: str) -> None:
        at = self._clock()
        # Nothing to write once another request (or pass) settled it meanwhile.
        with contextlib.suppress(InvalidTransition, NotFound, StaleVersion):
            modify(
                self._orders, order_id,
                lambda current: current.booking_settled(booking, cancelled, reason, at=at, actor=actor)
                if booking in current.bookings_to_cancel else None,
            )  # fmt: skip


def give_up_unrecorded(
    orders: OrderRepository, order_id: str, bookings: list[GivenUpBooking], clock: Callable[[], datetime]
) -> None:
    """Bookings made for the order that its version never recorded (a step that failed after the
    carrier booked, or whose write lost to a change), owed a cancel once nothing will ask for them
    again under their key, at once or from the change that means it (Order.unrecorded_bookings_given_up):
    the next request that changes the order, or the reconciler's next pass, cancels them."""
    at = clock()
    with contextlib.suppress(NotFound, StaleVersion):
        modify(orders, order_id, lambda current: current.unrecorded_bookings_given_up(bookings, at=at))


class CarrierWorkSweep:
    """The reconciler's pass over orders that still owe the carrier something (a parcel due a new
    label, a booking to cancel), found through an index of those orders only (OrdersOwingCarrier),
    oldest first. Only orders unchanged for `after` are taken: a younger one is still in its
    request's hands. A carrier that fails is not asked again in the same pass: the orders that owe
    only it are read past (they stay owing, and oldest, for the next pass), up to `max_reads`
    orders a pass, so orders owing other carriers are not stuck behind them; at most `limit`
    orders are asked. A failure is not noted in the order's history (a carrier down for hours
    would add an entry each pass): the pass returns it for its log line and metric."""

    def __init__(
        self, owing: OrdersOwingCarrier, orders: OrderRepository, actions: OrderActions,
        clock: Callable[[], datetime], *, after: timedelta, limit: int = 100, max_reads: int = 1000,
        outage: Callable[[Exception], bool] = dependency_down,
    ):  # fmt: skip
        self._outage = outage  # whether a read's error says a dependency is down (not the order's own)
        self._owing = owing
        self._orders = orders
        self._actions = actions
        self._clock = clock
        self._after = after
        self._limit = limit
        self._max_reads = max_reads

    def run(self, actor: str, *, time_up: TimeUp = never) -> dict[str, CarrierWork]:
        """One pass: what it did, by order id (an order it found owing nothing is left out). Once
        `time_up` says so, no other order is read: the rest are the next pass's."""
        unchanged_since = self._clock() - self._after
        done: dict[str, CarrierWork] = {}
        down: set[str] = set()
        for order_id in islice(self._owing.owing_since_before(unchanged_since), self._max_reads):
            if time_up():
                break
            try:
                order = self._orders.get(order_id, consistent=True)
            except Exception as failure:  # any: the order's own (a record that no longer reads), unless
                if self._outage(failure):  # it says a dependency is down: each read after it would fail alike
                    raise
                # Read past, reported with the carriers' failures: it stays the oldest owing, so a pass
                # it stopped would stop there every run.
                done[order_id] = CarrierWork(failed=[f"{type(failure).__name__}: {failure}"])
                continue
            if order is None or not order.owes_carrier_work():
                continue
            if not order.labels_due and all(booking.carrier in down for booking in order.bookings_to_cancel):
                continue  # its carriers failed in this pass already
            try:
                with calls_about(order_id=order_id):
                    done[order_id] = self._actions.finish_carrier_work(order, actor, down)
            except Exception as failure:  # one order's error does not stop the pass
                done[order_id] = CarrierWork(failed=[f"{type(failure).__name__}: {failure}"])
            if len(done) == self._limit:
                break
        return done
