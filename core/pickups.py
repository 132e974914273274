"""Uncollected pickups: each ready longer than its store waits is cancelled and its units go back.

Found without a table scan: an order carries index keys (a sparse index, by_pickup_deadline)
only while a pickup of it waits at its store, keyed by the earliest `collect_by`; the scheduled
reconciler asks that index for the deadlines already past. Storing the deadline on the shipment
when it is readied (rather than computing ready_at + days at expiry) fixes the customer's
promise at that moment: changing OMS_PICKUP_EXPIRY_DAYS later moves no deadline already given.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.errors import InvalidTransition, StaleVersion
from core.fulfillment import OrderActions
from core.ports import DuePickups, OrderRepository
from core.status import ShipmentStatus

EXPIRY_ACTOR = "pickup_expiry"


class PickupExpiry:
    def __init__(
        self,
        due: DuePickups,
        orders: OrderRepository,
        actions: OrderActions,
        clock: Callable[[], datetime],
        *,
        limit: int = 100,
    ):
        self._due = due
        self._orders = orders
        self._actions = actions
        self._clock = clock
        self._limit = limit

    def run(self) -> list[str]:
        """One pass: the orders whose waiting pickups were cancelled now. At most `limit`; the
        rest are the next pass's, earliest deadline first. An order collected or changed since the
        index was read is left as it is."""
        now = self._clock()
        expired = []
        for order_id in self._due.due(now, self._limit):
            order = self._orders.get(order_id)
            if order is None:
                continue
            for shipment in order.shipments:
                if shipment.status is not ShipmentStatus.READY_FOR_PICKUP or (shipment.collect_by or now) > now:
                    continue
                try:
                    self._actions.expire_pickup(order_id, shipment.id, actor=EXPIRY_ACTOR)
                except (InvalidTransition, StaleVersion):
                    continue  # collected meanwhile, or still changing: the next pass looks again
                expired.append(order_id)
        return expired
