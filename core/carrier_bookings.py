"""The reconciler's pass over what carriers are still owed: a parcel due a new label, booked again.

A cancel of units that shrinks a pending parcel records it due a new label in its own write
(Order.labels_due), so the debt outlives a crash or a carrier down. The request that made the change
books it at once; the reconciler's pass books again whatever is still due, so an order nobody
touches again does not keep a label for contents it no longer has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING

from core.ports import OrderRepository, OrdersOwingCarrier

if TYPE_CHECKING:
    from core.fulfillment import OrderActions


@dataclass
class CarrierWork:
    """What asking the carrier did for one order: the shipments booked again, and what failed
    (left for the next pass)."""

    relabelled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class CarrierWorkSweep:
    """The reconciler's pass over orders that still owe the carrier something (a parcel due a new
    label), found through an index of those orders only (OrdersOwingCarrier), oldest first. Only
    orders unchanged for `after` are taken: a younger one is still in its request's hands. At most
    `limit` orders a pass; the rest are the next pass's. A failure is not noted in the order's
    history (a carrier down for hours would add an entry each pass): the pass returns it for its
    log line and metric, and the order stays owing."""

    def __init__(
        self, owing: OrdersOwingCarrier, orders: OrderRepository, actions: OrderActions,
        clock: Callable[[], datetime], *, after: timedelta, limit: int = 100,
    ):  # fmt: skip
        self._owing = owing
        self._orders = orders
        self._actions = actions
        self._clock = clock
        self._after = after
        self._limit = limit

    def run(self, actor: str) -> dict[str, CarrierWork]:
        """One pass: what it did, by order id (an order it found owing nothing is left out)."""
        unchanged_since = self._clock() - self._after
        done: dict[str, CarrierWork] = {}
        for order_id in islice(self._owing.owing_since_before(unchanged_since), self._limit):
            order = self._orders.get(order_id, consistent=True)
            if order is None or not order.owes_carrier_work():
                continue
            try:
                done[order_id] = self._actions.finish_carrier_work(order, actor)
            except Exception as failure:  # one order's error does not stop the pass
                done[order_id] = CarrierWork(failed=[f"{type(failure).__name__}: {failure}"])
        return done
