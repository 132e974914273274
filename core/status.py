"""Order, payment, shipment, return, refund and import statuses, each with the one transition table
that relates them."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from core.errors import InvalidTransition

if TYPE_CHECKING:
    from core.models import Order


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


class PaymentStatus(StrEnum):
    PENDING = "pending"
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    PARTIALLY_CAPTURED = "partially_captured"
    CAPTURED = "captured"
    VOIDED = "voided"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class ShipmentStatus(StrEnum):
    PENDING = "pending"
    READY_FOR_PICKUP = "ready_for_pickup"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class RefundStatus(StrEnum):
    """A refund of an order's payment (PaymentRefund, and each of its parts)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ReturnStatus(StrEnum):
    REQUESTED = "requested"
    AUTHORIZED = "authorized"
    REJECTED = "rejected"
    RECEIVED = "received"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"


S = OrderStatus
P = PaymentStatus
H = ShipmentStatus

# The only place where statuses are related. Every status write checks these tables (through
# the Order's methods and again at the repository, `check_successor`) and is conditional on the
# expected current status and version in DynamoDB. Staying in a status is not a transition.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.AUTHORIZED, S.ON_HOLD, S.PAYMENT_FAILED, S.CANCELLED}),
    # A hold resumes to the status it was put on from (Order.hold keeps it): an order parked by
    # the workflow after an infrastructure failure was authorized already, and stays authorized;
    # an allocated order held by a person goes back to allocated, its shipments still pending; a
    # backordered one goes back to waiting with what it holds (nothing is filled while it is held).
    S.ON_HOLD: frozenset({S.PENDING, S.AUTHORIZED, S.ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.AUTHORIZED: frozenset({S.ALLOCATED, S.BACKORDERED, S.ON_HOLD, S.CANCELLED}),
    # Back to AUTHORIZED: an edit or a location's reject releases what was sourced and the
    # workflow sources the order again. ALLOCATED -> DELIVERED: a pickup collected at the store.
    S.BACKORDERED: frozenset({S.ALLOCATED, S.CANCELLED, S.AUTHORIZED, S.ON_HOLD}),
    S.ALLOCATED: frozenset({S.PARTIALLY_SHIPPED, S.SHIPPED, S.ON_HOLD, S.CANCELLED, S.AUTHORIZED, S.DELIVERED}),
    # Cancelling the units that have not shipped ends a partly shipped order shipped, or delivered
    # when every shipment that left has arrived; partially_returned or returned when units that
    # left came back before the rest shipped or was cancelled.
    S.PARTIALLY_SHIPPED: frozenset({S.SHIPPED, S.DELIVERED, S.PARTIALLY_RETURNED, S.RETURNED}),
    S.SHIPPED: frozenset({S.DELIVERED, S.PARTIALLY_RETURNED, S.RETURNED}),
    S.DELIVERED: frozenset({S.PARTIALLY_RETURNED, S.RETURNED}),
    S.PARTIALLY_RETURNED: frozenset({S.PARTIALLY_RETURNED, S.RETURNED}),
    S.RETURNED: frozenset(),
    S.PAYMENT_FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

# A payment moves only when the gateway approved the operation that moves it.
PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    P.PENDING: frozenset({P.AUTHORIZED, P.DECLINED}),
    P.AUTHORIZED: frozenset({P.PARTIALLY_CAPTURED, P.CAPTURED, P.VOIDED}),
    P.DECLINED: frozenset(),
    P.PARTIALLY_CAPTURED: frozenset({P.CAPTURED, P.PARTIALLY_REFUNDED, P.REFUNDED}),
    P.CAPTURED: frozenset({P.PARTIALLY_REFUNDED, P.REFUNDED}),
    P.VOIDED: frozenset(),
    P.PARTIALLY_REFUNDED: frozenset({P.REFUNDED}),
    P.REFUNDED: frozenset(),
}

# A pickup is readied by the store, then collected (delivered) or, uncollected, cancelled. A
# shipment that has not left is cancelled with its order (nothing of a cancelled order ships), or
# by a cancel of units that empties it.
SHIPMENT_TRANSITIONS: dict[ShipmentStatus, frozenset[ShipmentStatus]] = {
    H.PENDING: frozenset({H.SHIPPED, H.READY_FOR_PICKUP, H.CANCELLED}),
    H.READY_FOR_PICKUP: frozenset({H.DELIVERED, H.CANCELLED}),
    H.SHIPPED: frozenset({H.DELIVERED}),
    H.DELIVERED: frozenset(),
    H.CANCELLED: frozenset(),
}

# Shipments whose units have not left: a parcel still to ship, or a pickup waiting at its store.
# Their units can still be cancelled and stay reserved, and the payment is settled to the order's
# total only once none is left.
NOT_LEFT: frozenset[ShipmentStatus] = frozenset({H.PENDING, H.READY_FOR_PICKUP})

R = ReturnStatus

# A return waits for approval only when the policy asks for it; it is refunded once the gateway
# approved the refund of what was received (or nothing was due). Receiving is one event per return.
RETURN_TRANSITIONS: dict[ReturnStatus, frozenset[ReturnStatus]] = {
    R.REQUESTED: frozenset({R.AUTHORIZED, R.REJECTED, R.CANCELLED}),
    R.AUTHORIZED: frozenset({R.RECEIVED, R.CANCELLED}),
    R.RECEIVED: frozenset({R.REFUNDED}),
    R.REJECTED: frozenset(),
    R.REFUNDED: frozenset(),
    R.CANCELLED: frozenset(),
}

# A refund is written pending before the gateway is asked, then recorded as the gateway answered:
# money that went back is never asked for again, and a refused refund is asked again under a new
# key (a new refund), never revived.
REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PENDING: frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED}),
    RefundStatus.SUCCEEDED: frozenset(),
    RefundStatus.FAILED: frozenset(),
}

# The statuses an order waits in for someone or something, each of which may have a deadline
# (OMS_SLA: core/jeopardy.py's scan; the Orders table's status index keeps these orders' entries).
WATCHED: frozenset[OrderStatus] = frozenset(
    {S.PENDING, S.AUTHORIZED, S.ALLOCATED, S.PARTIALLY_SHIPPED, S.BACKORDERED, S.ON_HOLD}
)

# The statuses a pickup order has work waiting at its store in (GET /orders?pickup_location_id=, the
# store's list, Order.open_at_store): placed and being authorized or sourced there (pending,
# authorized: the store learns of it before it is allocated), waiting for stock to arrive there
# (backordered), held (its parcel may be on the shelf, to keep back), or allocated (to pick, to
# ready, to hand over: a pickup stays allocated until collected, then is delivered). It leaves the
# list at its end: collected (delivered), cancelled (by a person, its expiry, its store's reject:
# the store is its only source) or payment_failed. A pickup never ships, so shipped, partially
# shipped and the returned statuses are never a pickup's with anything at its store.
OPEN_AT_STORE: frozenset[OrderStatus] = frozenset({S.PENDING, S.AUTHORIZED, S.BACKORDERED, S.ON_HOLD, S.ALLOCATED})

# Returns nothing of which has arrived yet: what the return expiry cancels (OMS_RETURN_EXPIRY_DAYS).
UNRECEIVED_RETURNS: frozenset[ReturnStatus] = frozenset({R.REQUESTED, R.AUTHORIZED})


class ImportStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"


# An import runs until its counts reach its final total (completed, with errors if any line
# failed) or its file fails it. A failed import runs again only when its split was interrupted
# (error_code split_interrupted, which the ledger's write adds to its condition): Lambda retries
# the file's event, or a duplicate delivery read the file whole. A completed import is never reopened.
IMPORT_TRANSITIONS: dict[ImportStatus, frozenset[ImportStatus]] = {
    ImportStatus.RUNNING: frozenset({ImportStatus.COMPLETED, ImportStatus.COMPLETED_WITH_ERRORS, ImportStatus.FAILED}),
    ImportStatus.FAILED: frozenset({ImportStatus.RUNNING}),
    ImportStatus.COMPLETED: frozenset(),
    ImportStatus.COMPLETED_WITH_ERRORS: frozenset(),
}

_TABLES: dict[type[StrEnum], dict] = {
    OrderStatus: TRANSITIONS,
    PaymentStatus: PAYMENT_TRANSITIONS,
    ShipmentStatus: SHIPMENT_TRANSITIONS,
    ReturnStatus: RETURN_TRANSITIONS,
    RefundStatus: REFUND_TRANSITIONS,
    ImportStatus: IMPORT_TRANSITIONS,
}

TERMINAL: frozenset[OrderStatus] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)

# Lines, address and shipping method may change before stock is reserved, and on an allocated or
# backordered order until something ships: that order is sourced again (RESOURCEABLE).
EDITABLE: frozenset[OrderStatus] = frozenset({S.PENDING, S.ON_HOLD, S.AUTHORIZED})
RESOURCEABLE: frozenset[OrderStatus] = frozenset({S.ALLOCATED, S.BACKORDERED})

E = TypeVar("E", OrderStatus, PaymentStatus, ShipmentStatus, ReturnStatus, RefundStatus, ImportStatus)


def can_transition(current: E, target: E) -> bool:
    """Whether `current` may move to `target` in its own table (order, payment, shipment, return,
    refund or import)."""
    return type(current) is type(target) and target in _TABLES[type(current)][current]


def moving_to(target: E) -> tuple[E, ...]:
    """The statuses its table lets move to `target`, in the enum's order: what a conditional write
    of `target` requires the stored status to be."""
    return tuple(status for status in type(target) if can_transition(status, target))


def _step(kind: type[E], before: object, after: object, what: str) -> None:
    try:
        old, new = kind(before), kind(after)
    except ValueError:
        raise InvalidTransition(f"{after!r} is not a {what} status") from None
    if old != new and not can_transition(old, new):
        raise InvalidTransition(f"a {what} cannot go from {old} to {new}")


def check_successor(old: Order, new: Order) -> None:
    """Raise InvalidTransition unless `new` may be written over `old`: the next version whose order,
    payment and shipment statuses each stay or follow their table (a new shipment starts pending,
    one that left never disappears, nor one waiting at its store but with every parcel of an order
    sent back to be sourced), or `old` itself unchanged (a write that
    only appends history).
    The repositories call it on every update, so even a buggy service cannot store a jump."""
    if new.id != old.id:
        raise InvalidTransition(f"order {new.id} cannot replace order {old.id}")
    if new.version == old.version:
        if new != old:
            raise InvalidTransition(f"order {new.id} changed without a new version")
        return
    if new.version != old.version + 1:
        raise InvalidTransition(f"order {new.id} cannot go from version {old.version} to {new.version}")
    _step(OrderStatus, old.status, new.status, "order")
    _step(PaymentStatus, old.payment.status, new.payment.status, "payment")
    before = {shipment.id: shipment.status for shipment in old.shipments}
    for shipment in new.shipments:
        if shipment.id in before:
            _step(ShipmentStatus, before.pop(shipment.id), shipment.status, "shipment")
        elif shipment.status != ShipmentStatus.PENDING:
            raise InvalidTransition(f"a new shipment starts pending, not {shipment.status}")
    # A pending or cancelled shipment may go (the order sent back to be sourced); one that left never.
    # A pickup waiting at its store goes only with every parcel and reservation of an order sent
    # back to be sourced (an edit: it has not shipped); an expiry or a cancel cancels it instead.
    stays = {ShipmentStatus.PENDING, ShipmentStatus.CANCELLED}
    if not new.shipments and not new.allocations:
        stays.add(ShipmentStatus.READY_FOR_PICKUP)
    gone = [shipment_id for shipment_id, status in before.items() if status not in stays]
    if gone:
        raise InvalidTransition(f"shipment {gone[0]} has left and cannot be removed from order {new.id}")
    _check_refunds(old, new)
    _check_capture_requests(old, new)
    _check_parcel_generation(old, new, withdrawn=before)


def _check_refunds(old: Order, new: Order) -> None:
    """Each refund of `old` stays on `new` and follows its table; a new one starts pending."""
    before = {refund.id: refund.status for refund in old.payment.refunds}
    for refund in new.payment.refunds:
        if refund.id in before:
            _step(RefundStatus, before.pop(refund.id), refund.status, "refund")
        elif refund.status != RefundStatus.PENDING:
            raise InvalidTransition(f"a new refund starts pending, not {refund.status!r}")
    if before:
        raise InvalidTransition(f"refund {next(iter(before))} cannot be removed from order {new.id}")


def _check_parcel_generation(old: Order, new: Order, *, withdrawn: dict[str, ShipmentStatus]) -> None:
    """The parcel generation (Order.rebookings: shipment ids and booking keys derive from it) never
    goes back, and a version that takes a parcel off the order (`withdrawn`: its ids) counts a new
    one unless no parcel made again would take that id (Order.parcel_id): made at a location the
    order excludes, or in an earlier generation. Otherwise a late confirmation of the withdrawn
    parcel would land on the one made after it, whose contents and label may be other."""
    if new.rebookings < old.rebookings:
        raise InvalidTransition(
            f"order {new.id}'s parcel generation cannot go from {old.rebookings} to {new.rebookings}"
        )
    for shipment in old.shipments:
        if shipment.id not in withdrawn or shipment.location_id in new.excluded_locations:
            continue
        if new.parcel_id(shipment.location_id) == shipment.id:
            raise InvalidTransition(
                f"shipment {shipment.id} is withdrawn from order {new.id} with no new parcel generation: a parcel "
                f"made again at {shipment.location_id} would take its id"
            )


def _check_capture_requests(old: Order, new: Order) -> None:
    """A capture asked of the gateway and not recorded yet (Order.captures_requested) pins what it
    was asked for: its shipment keeps its lines, and the authorization is not voided under it; the
    settlement's keeps what was captured before it (its gateway key)."""
    if not new.captures_requested:
        return
    if new.payment.status is PaymentStatus.VOIDED and old.payment.status is not PaymentStatus.VOIDED:
        raise InvalidTransition(f"order {new.id} has a capture requested; its authorization cannot be voided")
    settling = old.capture_request(None) is not None and new.capture_request(None) is not None
    if settling and new.payment.captured != old.payment.captured:
        raise InvalidTransition(f"order {new.id} has a settlement capture requested; what is captured cannot change")
    lines_before = {shipment.id: shipment.lines for shipment in old.shipments}
    lines_after = {shipment.id: shipment.lines for shipment in new.shipments}
    for request in new.captures_requested:
        before = lines_before.get(request.shipment_id)
        if before is not None and lines_after.get(request.shipment_id) != before:
            raise InvalidTransition(
                f"a capture for shipment {request.shipment_id} is requested; the shipment cannot change"
            )


# --- Webhook deliveries (issue 14) ---------------------------------------------------------------
class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# A delivery is attempted until a subscriber answers 2xx or its retry window closes; a manual
# retry (POST .../retry) puts a failed one back to pending for one attempt. A delivered one stays
# delivered for good: the subscriber had it, whatever a manual resend of it meets later.
DELIVERY_TRANSITIONS: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED}),
    DeliveryStatus.DELIVERED: frozenset(),
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.PENDING}),
}


def check_delivery_step(current: DeliveryStatus, target: DeliveryStatus) -> None:
    """Raise InvalidTransition unless a delivery may go from `current` to `target`."""
    if current != target and target not in DELIVERY_TRANSITIONS[current]:
        raise InvalidTransition(f"a webhook delivery cannot go from {current} to {target}")


# --- Purchase orders (issue 15) ------------------------------------------------------------------
class PurchaseOrderStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PARTIALLY_RECEIVED = "partially_received"
    RECEIVED = "received"
    CANCELLED = "cancelled"


PO = PurchaseOrderStatus

# A draft is submitted to the vendor (open) and then received, in one receipt or several. Cancelling
# a partly received PO gives up what has not arrived; what arrived stays in stock.
PURCHASE_ORDER_TRANSITIONS: dict[PurchaseOrderStatus, frozenset[PurchaseOrderStatus]] = {
    PO.DRAFT: frozenset({PO.OPEN, PO.CANCELLED}),
    PO.OPEN: frozenset({PO.PARTIALLY_RECEIVED, PO.RECEIVED, PO.CANCELLED}),
    PO.PARTIALLY_RECEIVED: frozenset({PO.PARTIALLY_RECEIVED, PO.RECEIVED, PO.CANCELLED}),
    PO.RECEIVED: frozenset(),
    PO.CANCELLED: frozenset(),
}


def check_purchase_order_step(current: PurchaseOrderStatus, target: PurchaseOrderStatus, why: str = "") -> None:
    """Raise InvalidTransition unless a purchase order may go from `current` to `target`, saying
    `why` when given (what the request's caller asked for, in its words), else the table's step."""
    if target not in PURCHASE_ORDER_TRANSITIONS[current]:
        raise InvalidTransition(why or f"a purchase order cannot go from {current} to {target}")
