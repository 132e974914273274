"""Business metrics (CloudWatch EMF) counted from what the order writes recorded, never from intent.

`MeteredOrders` wraps the order repository in the composition root: after an order is stored
(`add`) or a new version is written (`update`, conditional on status and version), each history
entry the write recorded becomes a metric point. A write that lost its race or a replayed
request records nothing, so nothing is counted twice; core stays free of metrics. Handlers wrap
themselves in `emits_business_metrics`, which prints the points once per invocation, one EMF
record per dimension set, even when the handler raises (a failed payment attempt is recorded
before the step that made it fails). It also notes which orders the invocation wrote a history
entry on, or a return of (`orders_changed`, `NotedReturns`): the API's access log counts a change
that wrote neither as a read. `MeteredInventory` and `MeteredBackorders` count the stock writes
refused because their stock item holds as many open reservations as it takes (`StockItemsFull`):
the order is sourced around it, or waits, or is parked, and an operator must hear of it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from core.actors import SCAN_ACTOR, WORKFLOW_ACTOR
from core.errors import ReservationsFull
from core.events import OrderEvent
from core.models import CARRIER_WILL_NOT_CANCEL, CREDIT_NOT_USED, RESERVATIONS_LOST, HistoryEntry, Order
from core.status import RefundStatus

# Callers cancel with free text; a dimension value per text would be a metric per text. The
# workflow's reasons and the jeopardy scan's are the system's own few codes (out_of_stock,
# workflow_error, hold_expired).
REQUESTED = "requested"
SYSTEM_ACTORS = frozenset({WORKFLOW_ACTOR, SCAN_ACTOR})
# What a carrier_booking_not_cancelled entry names (core.models.GivenUpBooking, and why).
BOOKING_FIELDS = ("shipment_id", "carrier", "tracking_number", "booking_key", "reason")

PAYMENT_FAILURE_OPERATIONS = {
    OrderEvent.PAYMENT_AUTHORIZATION_FAILED: "authorize",
    OrderEvent.PAYMENT_CAPTURE_FAILED: "capture",
    OrderEvent.PAYMENT_VOID_FAILED: "void",
    OrderEvent.PAYMENT_REFUND_FAILED: "refund",
}

Point = tuple[str, MetricUnit, float]
Dimensions = tuple[tuple[str, str], ...]

logger = Logger(child=True)
_pending = threading.local()  # the local stack runs handlers on threads; Lambda on one


def _points() -> dict[Dimensions, list[Point]]:
    if not hasattr(_pending, "points"):
        _pending.points = defaultdict(list)
    return _pending.points


def _changed() -> set[str]:
    if not hasattr(_pending, "changed"):
        _pending.changed = set()
    return _pending.changed


def orders_changed() -> frozenset[str]:
    """The ids of the orders this invocation has written a history entry on, or a return of, so far."""
    return frozenset(_changed())


def record(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count, **dimensions: str) -> None:
    _points()[tuple(sorted(dimensions.items()))].append((name, unit, value))


def flush() -> None:
    """Print what this invocation recorded, one EMF record per dimension set. Only the documented
    dimensions: alarms and dashboards name exactly these (no `service` dimension)."""
    points = _points()
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    try:
        for dimensions, group in points.items():
            # One emitter per thread and namespace, reused: a new one per record was about half of
            # the record's cost (~13 of ~27 µs; an order placed prints two).
            emf = getattr(_pending, "emf", None)
            if emf is None or emf.namespace != namespace:
                emf = _pending.emf = EphemeralMetrics(namespace=namespace, service="")
            try:
                for name, value in dimensions:
                    emf.add_dimension(name=name, value=value)
                for name, unit, value in group:
                    emf.add_metric(name=name, unit=unit, value=value)
                emf.flush_metrics()
            finally:
                # flush_metrics keeps what it did not print (metrics disabled, or a failure): the
                # next record must not carry this one's dimensions or metrics.
                emf.clear_metrics()
    finally:
        points.clear()  # never carried into the next invocation
        _changed().clear()


def order_placed(order: Order) -> None:
    record("OrdersPlaced", channel=order.channel)
    # A float for CloudWatch only: the order's money stays Decimal everywhere else.
    record(
        "OrderValue",
        float(order.totals.grand_total.amount),
        MetricUnit.NoUnit,
        channel=order.channel,
        currency=order.currency,
    )


def entry_recorded(order: Order, entry: HistoryEntry) -> None:
    detail = entry.detail or {}
    if entry.type is OrderEvent.ALLOCATED:
        record("OrdersAllocated", channel=order.channel)
    elif entry.type is OrderEvent.CANCELLED:
        reason = str(detail.get("reason", "")) if entry.actor in SYSTEM_ACTORS else REQUESTED
        record("OrdersCancelled", reason=reason or REQUESTED)
    elif entry.type is OrderEvent.PICKUP_EXPIRED:
        record("OrdersCancelled", reason="pickup_expired")
    elif entry.type is OrderEvent.PAYMENT_FAILED:
        record("PaymentFailures", operation="authorize", kind="declined")
    elif entry.type in PAYMENT_FAILURE_OPERATIONS:
        record("PaymentFailures", operation=PAYMENT_FAILURE_OPERATIONS[entry.type], kind=str(detail.get("kind", "")))
    elif entry.type in (OrderEvent.PAYMENT_REFUNDED, OrderEvent.PAYMENT_CAPTURE_REVERSED):
        kind = "refund" if entry.type is OrderEvent.PAYMENT_REFUNDED else "capture_reversed"
        record("Refunds", kind=kind)
        amount = detail.get("amount") or {}
        if "amount" in amount:
            record("RefundValue", float(amount["amount"]), MetricUnit.NoUnit, currency=str(amount.get("currency", "")))
    elif entry.type is OrderEvent.REFUND_FAILED:
        # A split refund refused after a part of it was approved: that part did go back.
        went = [part["amount"] for part in detail.get("parts") or [] if part.get("status") == RefundStatus.SUCCEEDED]
        if went:
            record("Refunds", kind="refund")
            total = sum(Decimal(str(amount["amount"])) for amount in went)
            record("RefundValue", float(total), MetricUnit.NoUnit, currency=str(went[0].get("currency", "")))
        # The give-back of a credit an exchange's replacement did not use, refused: nothing asks it
        # again (core.models.draws_on_credit), a person gives it back (CreditsNotGivenBackAlarm).
        refund = order.payment.refund_by_id(str(detail.get("refund_id", "")))
        if refund is not None and CREDIT_NOT_USED in refund.reason:
            record("CreditsNotGivenBack")
    elif entry.type is OrderEvent.SURPLUS_NOT_GIVEN_BACK:
        record("SurplusNotGivenBack")
    elif entry.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED:
        record("OverCapturesNotRefunded")
    elif entry.type is OrderEvent.CAPTURE_NOT_MADE and not detail.get("shipment_id"):
        # The settlement's (no shipment): what an order left nothing to ship owes beyond its
        # captures, refused (or taken by no plugin). Nothing asks it again by itself, and the
        # parcels have left: a person asks again or recovers it (SettlementCapturesNotMadeAlarm).
        record("SettlementCapturesNotMade")
    elif entry.type is OrderEvent.SOURCED_AGAIN and detail.get("reason") == RESERVATIONS_LOST:
        # Units the order recorded as reserved were no longer held for it (a twin ReserveStock run
        # gave them back and another order took them): sourced again, never shipped twice.
        record("ReservationsLost")
    elif entry.type is OrderEvent.DELIVERY_NOT_RECORDED:
        # A parcel a carrier reported delivered was refused its capture: it left, unpaid for.
        record("DeliveriesNotRecorded")
    elif entry.type is OrderEvent.CARRIER_BOOKING_NOT_CANCELLED and detail.get("reason") == CARRIER_WILL_NOT_CANCEL:
        # A label no parcel will use that its carrier refused to cancel: it bills it, and nothing
        # asks again (CarrierBookingsNotCancelledAlarm). Not one whose carrier no plugin cancels for
        # (a carrier plugin without the optional hook: every given-up booking of it, the deployment's
        # choice) nor one only maybe made that no plugin made (it cost nothing). The metric has no
        # dimension: this line names the order and the booking for the alarm's runbook.
        record("CarrierBookingsNotCancelled")
        logger.error(
            "carrier booking not cancelled: its label is billed and no parcel uses it",
            extra={"order_id": order.id, **{key: detail.get(key) for key in BOOKING_FIELDS}},
        )


class MeteredOrders:
    """The order repository, counting what each successful write recorded (and noting the orders
    a write gave a history entry: orders_changed).

    Not a subclass of OrderRepository on purpose: every other method is the wrapped adapter's own
    (delegated), so the port can grow without this class changing."""

    def __init__(self, orders: Any):
        self._orders = orders

    def add(
        self, order: Order, first_entry: HistoryEntry, payment_token: str, later_entries: Sequence[HistoryEntry] = ()
    ) -> None:
        self._orders.add(order, first_entry, payment_token, later_entries)
        _changed().add(order.id)
        order_placed(order)
        for entry in later_entries:
            entry_recorded(order, entry)

    def update(self, order: Order, expected: Order, entries: list[HistoryEntry], **conditions: Any) -> None:
        self._orders.update(order, expected, entries, **conditions)
        self._recorded(order, entries)

    def update_with_stock(
        self, order: Order | None, expected: Order, entries: list[HistoryEntry], moves: Sequence[Any]
    ) -> None:
        self._orders.update_with_stock(order, expected, entries, moves)
        if order is not None:
            self._recorded(order, entries)

    @staticmethod
    def _recorded(order: Order, entries: list[HistoryEntry]) -> None:
        if entries:
            _changed().add(order.id)
        for entry in entries:
            entry_recorded(order, entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._orders, name)


class NotedReturns:
    """The return repository, noting the order of each return a write stored (orders_changed): a
    receipt writes the return alone, and its order's entry (`return_received`, naming the key) is
    the returns workflow's, written after the request. Delegates the rest, as MeteredOrders does."""

    def __init__(self, returns: Any):
        self._returns = returns

    def add(self, item: Any) -> None:
        self._returns.add(item)
        _changed().add(item.order_id)

    def update(self, item: Any, expected: Any) -> None:
        self._returns.update(item, expected)
        _changed().add(item.order_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._returns, name)


@contextmanager
def _counting_full_stock_items() -> Iterator[None]:
    """Count a stock write refused because its stock item is full (ReservationsFull, raised on)."""
    try:
        yield
    except ReservationsFull as full:
        record("StockItemsFull")
        # The metric has no dimension (one alarm for every location); this line names the item.
        logger.warning(
            "stock item full: no room for another reservation, orders are sourced around it",
            extra={"sku": full.sku, "location_id": full.location_id},
        )
        raise


class MeteredInventory:
    """The inventory repository, counting each reserve or rearrange refused because its stock item
    holds as many open reservations as it takes (`StockItemsFull`). Delegates the rest."""

    def __init__(self, inventory: Any):
        self._inventory = inventory

    def reserve(self, *args: Any, **kwargs: Any) -> None:
        with _counting_full_stock_items():
            self._inventory.reserve(*args, **kwargs)

    def rearrange(self, *args: Any, **kwargs: Any) -> None:
        with _counting_full_stock_items():
            self._inventory.rearrange(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inventory, name)


class MeteredBackorders:
    """The backorder queues, counting each backorder fill (or send-back to be sourced whole, which
    reserves in the same write) refused because a stock item it reserves at is full
    (`StockItemsFull`). Delegates the rest."""

    def __init__(self, backorders: Any):
        self._backorders = backorders

    def fill(self, *args: Any, **kwargs: Any) -> None:
        with _counting_full_stock_items():
            self._backorders.fill(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backorders, name)


F = TypeVar("F", bound=Callable[..., Any])


def emits_business_metrics(handler: F) -> F:
    """Print the business metrics the invocation recorded when it ends, whichever way it ends."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _changed().clear()  # this invocation's writes only, whatever ran on the thread before it
        try:
            return handler(*args, **kwargs)
        finally:
            try:
                flush()
            except Exception:
                # What happened to the order is stored; a metric that cannot be printed must not
                # turn its answer into an error.
                logger.exception("business metrics not printed")

    return wrapper  # type: ignore[return-value]
