"""Holds for review: a person puts an order that has not shipped on hold, and releases it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.models import HoldReason, Note, Order, Strict, utc_now
from core.order_changes import modify
from core.ports import OrderRepository


class HoldRequest(Strict):
    """The body of POST /orders/{id}/hold."""

    reason: HoldReason
    note: Note | None = None


class ReleaseRequest(Strict):
    """The body of POST /orders/{id}/release."""

    note: Note | None = None


class Holds:
    """Each is one conditional write (core.order_changes.modify): a hold that races a workflow
    step wins or loses whole, and the step that lost re-reads, finds the hold and stops. The
    workflow of a released `pending`, `authorized` or `backordered` order is started again by the
    outbox (the Orders stream sees the order leave `on_hold`); no execution waits meanwhile."""

    def __init__(self, orders: OrderRepository, clock: Callable[[], datetime] = utc_now):
        self._orders = orders
        self._clock = clock

    def hold(self, order_id: str, request: HoldRequest, actor: str, channel: str | None = None) -> Order:
        """On hold from `pending`, `authorized`, `backordered` or `allocated` (InvalidTransition, 409,
        otherwise: held already, shipped, closed)."""
        at = self._clock()
        return modify(
            self._orders, order_id,
            lambda order: order.hold_for(request.reason, request.note, at=at, actor=actor),
            channel=channel,
        )  # fmt: skip

    def release(self, order_id: str, request: ReleaseRequest, actor: str, channel: str | None = None) -> Order:
        """Back to the status it was held from (InvalidTransition, 409, when it is not on hold)."""
        at = self._clock()
        return modify(
            self._orders, order_id,
            lambda order: order.release(note=request.note, at=at, actor=actor),
            channel=channel,
        )  # fmt: skip
