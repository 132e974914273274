"""The access log of an order: who read it (recorded per request, asynchronously) and who changed it (its history)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.services import OrderQueries

# The API's reads of an order, by (method, resource as API Gateway names it): the action each is
# recorded as. Reading the access log is itself a read of the order.
READS: dict[tuple[str, str], str] = {
    ("GET", "/orders/{order_id}"): "get",
    ("GET", "/orders/{order_id}/history"): "history",
    ("GET", "/orders/{order_id}/returns"): "returns",
    ("GET", "/orders/{order_id}/refunds"): "refunds",
    ("GET", "/orders/{order_id}/notifications"): "notifications",
    ("GET", "/orders/{order_id}/access-log"): "access_log",
}


class AccessEntry(BaseModel, defer_build=True):
    """`{at, actor, action, detail}` of GET /orders/{id}/access-log: `actor` the API key id (or
    `workflow` and the other system actors of the history for a change)."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any] | None = None


class OrderRead(BaseModel, defer_build=True):
    """One read of an order, as the API queues it: `request_id` (API Gateway's) makes recording it
    twice (a redelivered message) record it once."""

    request_id: str
    order_id: str
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any] | None = None


class ReadRecorder(ABC):
    @abstractmethod
    def record(self, read: OrderRead) -> None:
        """Queue the read for the access log (the API's side: never a table write in the read)."""


class AccessLogStore(ABC):
    @abstractmethod
    def add(self, read: OrderRead) -> None:
        """Store the read; storing the same request's read again changes nothing."""

    @abstractmethod
    def reads(self, order_id: str) -> list[OrderRead]:
        """Every stored read of the order, oldest first."""


class AccessLog:
    """GET /orders/{id}/access-log: the order's reads and its changes, oldest first."""

    def __init__(self, orders: OrderQueries, store: AccessLogStore):
        self._orders = orders
        self._store = store

    def entries(self, order_id: str, channel: str | None) -> list[AccessEntry]:
        # The history is the log of changes (each with the key id that made it); reading it also
        # answers NotFound for an order the caller may not see.
        history = self._orders.history(order_id, channel)
        changes = [
            AccessEntry(at=entry.at, actor=entry.actor, action=str(entry.type.value), detail=_change_detail(entry))
            for entry in history
        ]
        reads = [
            AccessEntry(at=read.at, actor=read.actor, action=read.action, detail=read.detail)
            for read in self._store.reads(order_id)
        ]
        return sorted(changes + reads, key=lambda entry: entry.at)


def _change_detail(entry: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"change": True}
    if entry.from_status is not None:
        detail["from_status"] = entry.from_status.value
    if entry.to_status is not None:
        detail["to_status"] = entry.to_status.value
    return detail
