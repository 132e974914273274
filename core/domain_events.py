"""Domain events out: what an order change means to other systems, derived from its two versions."""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ValidationError

from core.ids import short_hash
from core.models import Hold, Order
from core.money import Money
from core.refunds import went_back_id, with_refunds_shown
from core.shown_references import references_shown_in, with_references_shown
from core.status import OrderStatus, PaymentStatus, RefundStatus, ReturnStatus, ShipmentStatus


class EventType(StrEnum):
    """The contract's event types (API.md "Events and webhooks")."""

    ORDER_CREATED = "order.created"
    ORDER_AUTHORIZED = "order.authorized"
    ORDER_PAYMENT_FAILED = "order.payment_failed"
    ORDER_ON_HOLD = "order.on_hold"
    ORDER_RELEASED = "order.released"
    ORDER_BACKORDERED = "order.backordered"
    ORDER_ALLOCATED = "order.allocated"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_JEOPARDY = "order.jeopardy"
    ORDER_DELIVERED = "order.delivered"
    SHIPMENT_SHIPPED = "shipment.shipped"
    SHIPMENT_DELIVERED = "shipment.delivered"
    SHIPMENT_REJECTED = "shipment.rejected"
    RETURN_CREATED = "return.created"
    RETURN_RECEIVED = "return.received"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"
    IMPORT_COMPLETED = "import.completed"
    INVENTORY_LOW = "inventory.low"


# The types of no order, so of no channel (DomainEvent.channel): a channel's subscription never gets
# them. Every other type is an order's change and carries its channel; a type added to neither set
# is refused to a channel's subscription until it is placed (a test fails meanwhile).
WITHOUT_CHANNEL = frozenset({EventType.IMPORT_COMPLETED, EventType.INVENTORY_LOW})
WITH_CHANNEL = frozenset(
    {
        EventType.ORDER_CREATED, EventType.ORDER_AUTHORIZED, EventType.ORDER_PAYMENT_FAILED, EventType.ORDER_ON_HOLD,
        EventType.ORDER_RELEASED, EventType.ORDER_BACKORDERED, EventType.ORDER_ALLOCATED, EventType.ORDER_CANCELLED,
        EventType.ORDER_JEOPARDY, EventType.ORDER_DELIVERED, EventType.SHIPMENT_SHIPPED, EventType.SHIPMENT_DELIVERED,
        EventType.SHIPMENT_REJECTED, EventType.RETURN_CREATED, EventType.RETURN_RECEIVED, EventType.REFUND_SUCCEEDED,
        EventType.REFUND_FAILED,
    }
)  # fmt: skip


# What each type's `data` always holds, by name (API.md "Events and webhooks"): the objects it is
# about as the API shows them, the order first for an order's change. The builders below name what
# they put in `data` from it, and the OpenAPI document's webhooks describe each type's body from it
# (functions/api/event_document.py): a type added here is documented, or the document fails to build.
# Besides these, an event too large whole names what it left out (`omitted`: fitted).
EVENT_DATA: dict[EventType, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            EventType.ORDER_CREATED, EventType.ORDER_AUTHORIZED, EventType.ORDER_PAYMENT_FAILED,
            EventType.ORDER_ON_HOLD, EventType.ORDER_RELEASED, EventType.ORDER_BACKORDERED,
            EventType.ORDER_ALLOCATED, EventType.ORDER_CANCELLED, EventType.ORDER_JEOPARDY,
            EventType.ORDER_DELIVERED,
        ),
        ("order",),
    ),
    **dict.fromkeys(
        (EventType.SHIPMENT_SHIPPED, EventType.SHIPMENT_DELIVERED, EventType.SHIPMENT_REJECTED), ("order", "shipment")
    ),
    **dict.fromkeys((EventType.RETURN_CREATED, EventType.RETURN_RECEIVED), ("order", "return")),
    **dict.fromkeys((EventType.REFUND_SUCCEEDED, EventType.REFUND_FAILED), ("order", "refund")),
    # The import as GET /imports/{id} shows it, and how many of its errors the event leaves out.
    EventType.IMPORT_COMPLETED: ("import", "errors_omitted"),
    EventType.INVENTORY_LOW: ("inventory",),
}  # fmt: skip


def event_data(type_: EventType, *values: Any) -> dict[str, Any]:
    """`data` of an event of `type_`: `values` under the names EVENT_DATA gives them, in its order."""
    return dict(zip(EVENT_DATA[type_], values, strict=True))


class DomainEvent(BaseModel, defer_build=True):
    """`{id, type, created_at, data}`, the body of a webhook delivery and the detail of a bus event."""

    id: str
    type: EventType
    created_at: datetime
    data: dict[str, Any]

    @property
    def channel(self) -> str | None:
        """The channel the event belongs to (its order's), for channel-bound subscriptions."""
        order = self.data.get("order")
        return order.get("channel") if isinstance(order, dict) else None


def event_id(order_id: str, version: int, type_: EventType, subject: str = "") -> str:
    """The same change always gets the same id: a redelivered stream record, or the outbox run
    again over it, yields events a subscriber recognises (OMS-Event-Id) and drops."""
    return "evt_" + short_hash(f"{order_id}\x1f{version}\x1f{type_.value}\x1f{subject}")


# A status reached means this event, whatever the status before it (holds are read from `hold`).
_STATUS_EVENTS: dict[str, EventType] = {
    OrderStatus.AUTHORIZED: EventType.ORDER_AUTHORIZED,
    OrderStatus.PAYMENT_FAILED: EventType.ORDER_PAYMENT_FAILED,
    OrderStatus.BACKORDERED: EventType.ORDER_BACKORDERED,
    OrderStatus.ALLOCATED: EventType.ORDER_ALLOCATED,
    OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
    OrderStatus.DELIVERED: EventType.ORDER_DELIVERED,
}
# A rejected shipment leaves the order instead (_rejected_shipments).
_SHIPMENT_EVENTS: dict[str, EventType] = {
    ShipmentStatus.SHIPPED: EventType.SHIPMENT_SHIPPED,
    ShipmentStatus.DELIVERED: EventType.SHIPMENT_DELIVERED,
}
_REFUND_EVENTS: dict[str, EventType] = {
    RefundStatus.SUCCEEDED: EventType.REFUND_SUCCEEDED,
    RefundStatus.FAILED: EventType.REFUND_FAILED,
}
# The statuses an order's returns keep it in when its last parcel arrives (Order.deliver).
_RETURNED_ORDER: frozenset[OrderStatus] = frozenset({OrderStatus.PARTIALLY_RETURNED, OrderStatus.RETURNED})
# A return that was received (and perhaps refunded in the same change) has been received.
_RECEIVED_RETURN: frozenset[ReturnStatus] = frozenset({ReturnStatus.RECEIVED, ReturnStatus.REFUNDED})


# What a stored hold keeps for the system alone (Hold's fields no response shows: the status its
# release resumes to, whether it is a park, the parcels behind a person's hold made one).
_HOLDS_OWN = tuple(name for name, field in Hold.model_fields.items() if field.exclude)
# The order's fields a response shows: its stored document adds the system's own beside them
# (Order.stored_json: booking keys, captures asked of the gateway, excluded locations...).
_ORDER_SHOWN = frozenset(name for name, field in Order.model_fields.items() if not field.exclude)


def api_order(document: dict[str, Any]) -> dict[str, Any]:
    """The order as the API shows it (its refunds as GET /orders/{id}/refunds lists them:
    core.refunds.with_refunds_shown; the gateway's references escaped:
    core.shown_references.with_references_shown). A shipment's label is stored as a key in the label store
    and the API signs a short-lived link to it at each read; an event outlives such a link, so
    its `label_url` is null (GET /orders/{id} gives a fresh one), unless the carrier hosts it
    (event_label). A document this version's model
    cannot read (a status or field added since) is shown as stored, which is the API's JSON plus
    what only the system reads, left out here: every top-level field but the Order's shown ones
    (_ORDER_SHOWN: a field added since is left out too, as this version cannot tell a shown one from
    the system's), and the hold's own (the status it resumes to, whether it is a park: _HOLDS_OWN)."""
    try:
        order = with_references_shown(with_refunds_shown(Order.model_validate(document))).model_dump(mode="json")
    except ValidationError:
        order = {name: value for name, value in json.loads(json.dumps(document)).items() if name in _ORDER_SHOWN}
        if isinstance(order.get("hold"), dict):
            for name in _HOLDS_OWN:
                order["hold"].pop(name, None)
        if isinstance(order.get("payment"), dict):
            order["payment"] = references_shown_in(order["payment"])
    for shipment in order.get("shipments") or []:
        shipment["label_url"] = event_label(
            shipment.get("label_url"), shipment.get("status") == ShipmentStatus.CANCELLED
        )
    return order


# The query parameters of a link signed for S3 (SigV4's, SigV2's): a label link of the labels bucket
# stored by an order written before links were signed at each read.
_SIGNATURES = frozenset({"x-amz-signature", "signature"})


def event_label(stored: str | None, cancelled: bool) -> str | None:
    """A shipment's or a return's label link as an event shows it: a carrier-hosted https link as
    stored, as the API shows it (it signs none, and nothing of ours expires it). Null for a key of
    the label store or a link signed to it, which the API signs afresh at each read (an event
    outlives a signature: GET /orders/{id} gives a fresh one), and for a cancelled one, as the API
    shows none (a label printed from it would be void)."""
    if cancelled or not stored or not stored.startswith("https://"):
        return None
    signed = any(name.lower() in _SIGNATURES for name, _ in parse_qsl(urlsplit(stored).query, keep_blank_values=True))
    return None if signed else stored


def order_events(old: dict[str, Any] | None, new: dict[str, Any]) -> list[DomainEvent]:
    """The events one order change means: `old` and `new` are the order documents before and
    after it (`old` None for a new order). Only what differs between them produces events, so
    the same pair always gives the same events with the same ids, and a change that only
    appends history gives none. A shipped or delivered shipment that took another tracking
    number is its status's event again (_renumbered). Returns, refunds and jeopardy are read
    from the fields the order document carries for them (`returns`, `refunds` or
    `payment.refunds`, `jeopardy`), a rejected shipment from the location the reject excludes
    (`excluded_locations`)."""
    if not str(new.get("id", "")).startswith("ord_") or "status" not in new:
        return []  # not an order (another kind of item on the table)
    before = old or {}
    version = int(new.get("version", 0))
    created_at = new.get("updated_at") or new.get("created_at")
    events: list[DomainEvent] = []
    # Built once, and only for a change that is an event: many of an order's writes are none (a
    # capture requested, stock reserved, a history entry), and the API's form of the order is most
    # of the CPU a record costs.
    shown: list[dict[str, Any]] = []

    def order() -> dict[str, Any]:
        if not shown:
            shown.append(api_order(new))
        return shown[0]

    def emit(type_: EventType, about: dict[str, Any] | None = None) -> None:
        """The event of `type_` about the order, or about `about` (a shipment, refund, return) on it."""
        events.append(
            DomainEvent(
                id=event_id(new["id"], version, type_, about["id"] if about else ""),
                type=type_,
                created_at=created_at,
                data=event_data(type_, order(), *([about] if about else [])),
            )
        )

    for type_ in _order_level(old, new):
        emit(type_)
    for type_, shipment in _changed(before.get("shipments"), new.get("shipments"), _SHIPMENT_EVENTS):
        emit(type_, _shown_shipment(order(), shipment["id"]))
    for type_, shipment in _renumbered(before.get("shipments"), new.get("shipments")):
        emit(type_, _shown_shipment(order(), shipment["id"]))
    for shipment in _rejected_shipments(before, new):
        emit(EventType.SHIPMENT_REJECTED, shipment)
    for type_, refund in _refund_changes(before, new):
        emit(type_, refund)
    for type_, return_ in _return_changes(before.get("returns"), new.get("returns")):
        emit(type_, return_)
    return events


def _order_level(old: dict[str, Any] | None, new: dict[str, Any]) -> Iterator[EventType]:
    before = old or {}
    status, was = new.get("status"), before.get("status")
    if old is None:
        yield EventType.ORDER_CREATED
    held, was_held = _held(new), _held(before) if old is not None else False
    if held and (not was_held or _hold_reason(new) != _hold_reason(before)):
        # On hold again for another reason (a review rule's, over a person's hold an edit took past
        # it: Order.held_for_review): subscribers to order.on_hold learn what it waits for now.
        yield EventType.ORDER_ON_HOLD
    # Leaving a hold resumes the status it was put on from: that is a release, not the status
    # reached again (a held order that is cancelled is a cancellation).
    if was_held and not held and status != OrderStatus.CANCELLED:
        yield EventType.ORDER_RELEASED
    elif status != was and status in _STATUS_EVENTS:
        yield _STATUS_EVENTS[status]
    elif (
        was_held
        and held
        and _payment_status(before) == PaymentStatus.PENDING
        and _payment_status(new) == PaymentStatus.AUTHORIZED
    ):
        # A hold placed while the payment was being authorized: the authorization is recorded on
        # the held order (Order.authorize), whose release resumes to `authorized`, never reached anew.
        yield EventType.ORDER_AUTHORIZED
    elif status in _RETURNED_ORDER and _all_arrived(new) and not _all_arrived(before):
        # Units back before its last parcel arrived keep the order partially_returned (or returned)
        # when that parcel arrives (Order.deliver): the order is delivered all the same.
        yield EventType.ORDER_DELIVERED
    jeopardy, was_in = new.get("jeopardy"), before.get("jeopardy")
    if jeopardy and (not was_in or was_in.get("since") != jeopardy.get("since")):
        yield EventType.ORDER_JEOPARDY


def _all_arrived(document: dict[str, Any]) -> bool:
    """Whether every parcel of the order that was to go has arrived (Order.deliver's
    `_all_delivered` on the document: one a cancel of units emptied never goes)."""
    parcels = [s for s in document.get("shipments") or [] if s.get("status") != ShipmentStatus.CANCELLED]
    return bool(parcels) and all(s.get("status") == ShipmentStatus.DELIVERED for s in parcels)


def _payment_status(document: dict[str, Any]) -> str:
    return str((document.get("payment") or {}).get("status") or PaymentStatus.PENDING)


def _hold_reason(document: dict[str, Any]) -> tuple[Any, Any]:
    hold = document.get("hold") or {}
    return hold.get("reason"), hold.get("note")


def _held(document: dict[str, Any]) -> bool:
    return bool(document.get("hold")) or document.get("status") == OrderStatus.ON_HOLD


def _changed(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]] | None, events: dict[str, EventType]
) -> Iterator[tuple[EventType, dict[str, Any]]]:
    """Each item of `after` (by id) whose status is new or changed, with the event its status means."""
    was = {item.get("id"): item.get("status") for item in before or []}
    for item in after or []:
        status = item.get("status")
        if status != was.get(item.get("id")) and status in events:
            yield events[status], item


def _renumbered(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]] | None
) -> Iterator[tuple[EventType, dict[str, Any]]]:
    """Each shipped or delivered shipment of `after` that kept its status and took another tracking
    number (Order.set_tracking_number: its ship named none, and its location learnt the carrier's
    number later), with the event of its status. The contract's types are fixed and name no
    `shipment.updated`: the shipment's event is sent again (under this version's id), the shipment
    as it is now, so a subscriber following shipment.shipped, and the customer, learn the number
    the parcel travels under. A pending parcel's number (a new label) is told by its ship."""
    was = {item.get("id"): item for item in before or []}
    for item in after or []:
        previous = was.get(item.get("id"))
        status = item.get("status")
        if (
            previous is not None
            and status in _SHIPMENT_EVENTS
            and previous.get("status") == status
            and previous.get("tracking_number") != item.get("tracking_number")
        ):
            yield _SHIPMENT_EVENTS[status], item


def _shown_shipment(order: dict[str, Any], shipment_id: str) -> dict[str, Any]:
    return next(shipment for shipment in order["shipments"] if shipment["id"] == shipment_id)


def _rejected_shipments(before: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The shipments a location rejected in this change, as the API showed them before it but
    `cancelled`, as they are after it: none will ship (the order no longer lists them). A reject
    sends the order back to be sourced, which removes its pending shipments, and excludes the
    rejecting location for the order (nothing else does): a shipment gone from the order whose
    location is newly excluded is the rejected one."""
    excluded = set(new.get("excluded_locations") or []) - set(before.get("excluded_locations") or [])
    if not excluded:
        return []
    kept = {shipment.get("id") for shipment in new.get("shipments") or []}
    gone = {
        shipment.get("id")
        for shipment in before.get("shipments") or []
        if shipment.get("id") not in kept and shipment.get("location_id") in excluded
    }
    if not gone:
        return []
    return [
        {**shipment, "status": ShipmentStatus.CANCELLED.value}
        for shipment in api_order(before)["shipments"]
        if shipment["id"] in gone
    ]


def _refund_changes(before: dict[str, Any], new: dict[str, Any]) -> Iterator[tuple[EventType, dict[str, Any]]]:
    """Refunds with a status (a `refunds` list on the order), else the order's `payment.refunds`
    as GET /orders/{id}/refunds shows them (core.refunds.Refund, with the return it paid for). A
    refund is written `pending` before the gateway is asked, so it is an event only once the
    gateway answered: `succeeded` or `failed` (one stored before refunds had a status was
    approved)."""
    if "refunds" in new:
        for type_, refund in _changed(before.get("refunds"), new.get("refunds"), _REFUND_EVENTS):
            # As stored, its references are the gateway's exactly: shown escaped, as everywhere.
            yield type_, references_shown_in({**refund, "order_id": new["id"]})
        return

    def answered(payment: dict[str, Any] | None) -> list[dict[str, Any]]:
        return [
            shown
            for refund in (payment or {}).get("refunds") or []
            for shown in _shown_refunds({**refund, "status": refund.get("status", RefundStatus.SUCCEEDED.value)})
        ]

    for type_, refund in _changed(answered(before.get("payment")), answered(new.get("payment")), _REFUND_EVENTS):
        yield (
            type_,
            {
                "id": refund["id"],
                "order_id": new["id"],
                "amount": refund["amount"],
                "reason": refund.get("reason"),
                "status": refund["status"],
                "return_id": refund.get("return_id"),
                "created_at": refund.get("at"),
            },
        )


def _shown_refunds(refund: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored refund as GET /orders/{id}/refunds shows it (core.refunds.Refund.shown): a split
    one the gateway refused after approving a part of it is what did not go back, `failed` under
    its own id, and what did, `succeeded` under an id derived from its own."""
    approved = [part["amount"] for part in refund.get("parts") or [] if part.get("status") == RefundStatus.SUCCEEDED]
    if refund["status"] != RefundStatus.FAILED or not approved:
        return [refund]
    amount = Money.model_validate(refund["amount"])
    went = sum((Money.model_validate(part) for part in approved), Money.zero(amount.currency))
    return [
        {**refund, "amount": (amount - went).model_dump(mode="json")},
        {
            **refund,
            "id": went_back_id(refund["id"]),
            "amount": went.model_dump(mode="json"),
            "status": RefundStatus.SUCCEEDED.value,
        },
    ]


def _return_changes(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]] | None
) -> Iterator[tuple[EventType, dict[str, Any]]]:
    was = {item.get("id"): item.get("status") for item in before or []}
    for item in after or []:
        status, previous = item.get("status"), was.get(item.get("id"), "absent")
        if previous == "absent":
            yield EventType.RETURN_CREATED, item
        if status in _RECEIVED_RETURN and previous not in _RECEIVED_RETURN:
            yield EventType.RETURN_RECEIVED, item


def return_events(old: dict[str, Any] | None, new: dict[str, Any], order: dict[str, Any] | None) -> list[DomainEvent]:
    """`return.created` for a new return and `return.received` when one is received (refunded in
    the same write counts): `old` and `new` are the return's documents before and after a change
    of the Returns table (`old` None for a new one), `order` its order's document, which gives
    the events their channel. A return is its own item, so the order's changes never show it;
    its id and version make the events' ids, so a redelivered change gives the same ones."""
    from core.return_models import Return

    if order is None or not str(new.get("id", "")).startswith("rma_") or "status" not in new:
        return []
    types = [EventType.RETURN_CREATED] if old is None else []
    if new["status"] in _RECEIVED_RETURN and (old or {}).get("status") not in _RECEIVED_RETURN:
        types.append(EventType.RETURN_RECEIVED)
    # As the API shows it, but for a stored label key, which the API signs a short-lived link to at
    # each read (GET /returns/{id} gives one), as for a shipment's (event_label).
    shown = Return.model_validate(new).model_dump(mode="json")
    shown["label_url"] = event_label(shown["label_url"], shown["status"] == ReturnStatus.CANCELLED)
    shown_order = api_order(order)
    version = int(new.get("version", 0))
    return [
        DomainEvent(
            id=event_id(new["order_id"], version, type_, new["id"]),
            type=type_,
            created_at=new.get("updated_at") or new["created_at"],
            data=event_data(type_, shown_order, shown),
        )
        for type_ in types
    ]


# What an event may weigh (its JSON in UTF-8) to go out whole: an EventBridge entry holds 256 KB,
# the event (its Detail) with its Source ("oms"), DetailType (its type: 20 bytes at most) and Time
# (counted as 14 bytes).
# The webhook deliveries carry the same body, which a delivery's record (DynamoDB, 400 KB) holds.
EVENT_BYTES = 256 * 1024 - 64
# What an event over EVENT_BYTES leaves out, in this order, until it fits: the lists of its order
# that weigh the most, as paths under `data`. Its refunds come first: nothing bounds how many an
# order takes (a thousand weigh a megabyte); its 100 lines, shipments and allocations are bounded.
OMITTABLE = (("order", "payment", "refunds"), ("order", "shipments"), ("order", "allocations"), ("order", "lines"))


@dataclass(frozen=True)
class OutgoingEvent:
    """An event ready to leave: `body`, its JSON made once, is the bus entry's Detail and every
    subscriber's delivery body alike; `weight` is its length in UTF-8, what the limits count.
    Serializing a 170 KB event again for each of them was billed duration on every order change."""

    event: DomainEvent
    body: str
    weight: int


def outgoing(event: DomainEvent) -> OutgoingEvent:
    """`event` serialized: the one place an event becomes its JSON."""
    body = event.model_dump_json()
    return OutgoingEvent(event, body, len(body.encode()))


def fitted(event: DomainEvent, budget: int = EVENT_BYTES) -> OutgoingEvent:
    """`event` ready to leave when its JSON fits `budget` bytes; else the same event (the same id)
    without the first of OMITTABLE that make it fit, `data.omitted` naming them
    ("order.payment.refunds"): GET /orders/{id} shows them. The object the event is about
    (`data.refund`, `data.shipment`, `data.return`) is always whole, and `event` itself is left as
    it is (its order is shared with the other events of its change). One that fits no way is
    returned as short as it gets (the publisher refuses it, so the change goes to the failure
    queue). Serialized once, and once more for each list left out."""
    whole = outgoing(event)
    if whole.weight <= budget:
        return whole
    data = event.data
    omitted: list[str] = []
    slim = whole
    for path in OMITTABLE:
        cut = _without(data, path)
        if cut is None:
            continue  # an empty list weighs nothing: the event keeps it, and says nothing of it
        data = cut
        omitted.append(".".join(path))
        slim = outgoing(event.model_copy(update={"data": {**data, "omitted": list(omitted)}}))
        if slim.weight <= budget:
            break
    return slim


def _without(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """`data` without the list at `path` (a copy of each dict on the way to it, the rest shared);
    None when there is no such list or it is empty."""
    *parents, name = path
    copy = dict(data)
    holder = copy
    for parent in parents:
        inner = holder.get(parent)
        if not isinstance(inner, dict):
            return None
        inner = dict(inner)
        holder[parent] = inner
        holder = inner
    if not holder.get(name):
        return None
    del holder[name]
    return copy


# What of an import's errors `import.completed` carries: an EventBridge entry holds 256 KB (the event
# with its source and type), and up to 1,000 errors of up to 500 characters would not fit.
IMPORT_EVENT_ERROR_BYTES = 200 * 1024


def import_events(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    errors: Callable[[], list[dict[str, Any]]],
    old_failure: str | None = None,
    new_failure: str | None = None,
) -> list[DomainEvent]:
    """`import.completed` when an import ends: completed, or failed as a whole for good (its file
    cannot be imported). `old` and `new` are the import before and after the change as GET
    /imports/{id} shows it without its `errors`; `old_failure` and `new_failure` the codes it had
    failed with as a whole (None when it had not); `errors` reads its errors (only for an import
    that has just ended). `data.import` is the import as GET /imports/{id} shows it, with the
    first of its errors that fit IMPORT_EVENT_ERROR_BYTES; `data.errors_omitted` counts those GET
    /imports/{id} lists and the event does not carry: left out for room, or not written yet (a
    worker counts a failure before it writes its error, and another worker's last line may end the
    import in between). Its id is the import's and the status's, so a redelivered change gives the
    same id."""
    # Imported here, not with the module: the API reaches this module through the hookspecs on
    # every cold start, and only the stream's import records need the import service.
    from core.import_service import MAX_REPORTED_ERRORS, import_has_ended

    # An interrupted split (failed, split_interrupted) is no end: the import resumes.
    if not import_has_ended(new.get("status"), new_failure) or (
        old is not None and import_has_ended(old.get("status"), old_failure)
    ):
        return []
    status = new["status"]
    found = errors()
    carried = _fitting(found, IMPORT_EVENT_ERROR_BYTES)
    # The error of a file that failed as a whole (no line) is listed besides its counted lines'.
    whole = sum(1 for error in found if error.get("line") is None)
    kept = whole + max(len(found) - whole, min(int(new.get("failed", 0)), MAX_REPORTED_ERRORS))
    type_ = EventType.IMPORT_COMPLETED
    return [
        DomainEvent(
            id=event_id(new["id"], 0, type_, status),
            type=type_,
            created_at=new["updated_at"],
            data=event_data(type_, {**new, "errors": carried}, kept - len(carried)),
        )
    ]


def _fitting(items: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The first of `items` whose JSON (UTF-8, as the event is sent) fits `budget` bytes."""
    used = 0
    for count, item in enumerate(items):
        used += len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()) + 1
        if used > budget:
            return items[:count]
    return items
