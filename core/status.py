"""Order statuses and the one transition table that relates them."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    AUTHORIZED = "authorized"
    ALLOCATED = "allocated"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    ON_HOLD = "on_hold"
    BACKORDERED = "backordered"
    PAYMENT_FAILED = "payment_failed"
    CANCELLED = "cancelled"
    PARTIALLY_RETURNED = "partially_returned"
    RETURNED = "returned"


S = OrderStatus

# The only place where statuses are related. Every status write checks this table and is
# conditional on the expected current status and version in DynamoDB.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.AUTHORIZED, S.ON_HOLD, S.PAYMENT_FAILED, S.CANCELLED}),
    S.ON_HOLD: frozenset({S.PENDING, S.CANCELLED}),
    S.AUTHORIZED: frozenset({S.ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.BACKORDERED: frozenset({S.ALLOCATED, S.CANCELLED}),
    S.ALLOCATED: frozenset({S.PARTIALLY_SHIPPED, S.SHIPPED, S.CANCELLED}),
    S.PARTIALLY_SHIPPED: frozenset({S.SHIPPED}),
    S.SHIPPED: frozenset({S.DELIVERED, S.PARTIALLY_RETURNED, S.RETURNED}),
    S.DELIVERED: frozenset({S.PARTIALLY_RETURNED, S.RETURNED}),
    S.PARTIALLY_RETURNED: frozenset({S.PARTIALLY_RETURNED, S.RETURNED}),
    S.RETURNED: frozenset(),
    S.PAYMENT_FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL: frozenset[OrderStatus] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)

# Lines, address and shipping method may change only before stock is reserved.
EDITABLE: frozenset[OrderStatus] = frozenset({S.PENDING, S.ON_HOLD, S.AUTHORIZED})


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]
