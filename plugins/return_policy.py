"""Built-in return policy: returns within a window of delivery, no approval, no fee; shipping back
only when the whole order comes back for a fault of the shop.

- The window: `OMS_RETURN_WINDOW_DAYS` (default 30; 0 takes no return) from the delivery of the shipment(s) that
  carried the returned lines, or from their shipment when not delivered yet (the latest such
  time: a line split over two parcels is returnable until the later one's window closes). A line
  outside it refuses the whole return with 422 `return_window_closed`.
- No approval: the return is `authorized` at once. No restocking fee.
- Shipping is refunded only when the whole order comes back for a fault of the shop: a return
  every line of which gives `damaged`, `defective` or `wrong_item` is decided
  `refund_shipping_with_whole_order`, so the core refunds the shipping with the return whose
  receipt brings the order's last unit back, once every unit arrived on such returns. (Not
  decided here by counting the returns still open: one that never arrives would leave the
  customer a unit and the shipping.)

A shop's own policy is a plugin answering `oms_return_policy` first (this one is `trylast`).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from core import hookimpl
from core.models import Order
from core.return_decisions import ReturnPolicyDecision
from core.status import ShipmentStatus

if TYPE_CHECKING:
    # A parameter's type: the returns' models stay out of a new API container, which loads this plugin.
    from core.return_models import ReturnLineInput

DEFAULT_WINDOW_DAYS = 30
SHOP_FAULTS = frozenset({"damaged", "defective", "wrong_item"})


def window() -> timedelta:
    """`OMS_RETURN_WINDOW_DAYS`: a number of days, fractions allowed (the template parameter
    `ReturnWindowDays` is a Number: 30.5 deploys, and was read with int(), so every return request
    failed), from 0 (returns are not taken) to 100 years (core.deadline.LONGEST: more, or NaN or
    inf, cannot be a timedelta or leaves the calendar), in any spelling of a finite number the
    deploy let through (core.settings.setting); anything else is refused naming the setting,
    when the plugin loads (below) and, should the variable change since, at each request."""
    from core.deadline import LONGEST
    from core.settings import setting

    raw = os.environ.get("OMS_RETURN_WINDOW_DAYS", "")
    days = setting(raw) if raw.strip() else DEFAULT_WINDOW_DAYS
    if days is None or not 0 <= days <= LONGEST.days:
        raise ValueError(
            f"OMS_RETURN_WINDOW_DAYS must be a number of days from 0 to {LONGEST.days} (100 years), not {raw!r}"
        )
    return timedelta(days=days)


window()  # a malformed value fails the plugin's load, where /health names it, not each return request


def since(order: Order, line_id: str) -> datetime | None:
    """When the window of `line_id` started: the latest delivery (or, undelivered, shipment) of
    the shipments carrying it; None when none of them has left."""
    times = [
        shipment.delivered_at or shipment.shipped_at
        for shipment in order.shipments
        if shipment.status in (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED)
        and any(item.line_id == line_id for item in shipment.lines)
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _event_at(order: Order, line_id: str, started: datetime) -> str:
    """What happened to `line_id` at `started` (since's answer), as a refusal names it."""
    delivered = any(
        shipment.delivered_at == started and any(item.line_id == line_id for item in shipment.lines)
        for shipment in order.shipments
    )
    return "delivered" if delivered else "shipped"


@hookimpl(trylast=True)
def oms_return_policy(order: Order, lines: list[ReturnLineInput], now: datetime) -> ReturnPolicyDecision:
    allowed_for = window()
    for index, line in enumerate(lines):
        started = since(order, line.line_id)
        if started is not None and not allowed_for:
            return ReturnPolicyDecision(
                allowed=False,
                code="return_window_closed",
                message="returns are not taken: the return window is 0 days (OMS_RETURN_WINDOW_DAYS)",
            )
        if started is not None and now - started > allowed_for:
            return ReturnPolicyDecision(
                allowed=False,
                code="return_window_closed",
                field=f"lines[{index}].line_id",
                message=f"line {line.line_id} was {_event_at(order, line.line_id, started)} more than "
                f"{allowed_for / timedelta(days=1):g} days ago ({started.date().isoformat()}); "
                "the return window is closed",
            )
    shop_fault = all(line.reason_code in SHOP_FAULTS for line in lines)
    return ReturnPolicyDecision(refund_shipping_with_whole_order=shop_fault)
