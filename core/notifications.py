"""Customer notifications: what an order change tells its customer, recorded once per event and sent by plugins."""

import contextvars
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from core.actors import SCAN_ACTOR, WORKFLOW_ACTOR
from core.deadline import TimeUp, never
from core.domain_events import EventType, order_events
from core.errors import CandidatesReadPast, OutOfStock, dependency_down
from core.events import OrderEvent
from core.fields import empty_list
from core.hook_calls import answer_refused, call_hook, calls_about
from core.ids import short_hash
from core.models import Location, Order, Product, Shown, VisibleText, utc_text
from core.services import OrderQueries
from core.status import OrderStatus, ShipmentStatus


class NotificationKind(StrEnum):
    SHIPPED = "shipped"
    READY_FOR_PICKUP = "ready_for_pickup"
    DELAYED = "delayed"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"
    BACKORDERED = "backordered"


class Recipient(Shown):
    email: str
    name: str | None = None


class Notification(Shown):
    """One message to the customer of an order. `id` is the id of the event it tells of, so a
    redelivered change records and sends it once. `details` holds the few facts a plugin's own
    template may use; nothing else of the order is in it (never its payment)."""

    id: str
    kind: NotificationKind
    order_id: str
    channel: str
    to: Recipient
    subject: str
    body: str
    details: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    # What the plugins (hook oms_notify) sent it through ("email", "sms"), the first MAX_WAYS they
    # named; empty: only recorded.
    sent_via: list[str] = Field(default_factory=empty_list)
    sent_at: datetime | None = None

    def as_sent(self, via: list[str], at: datetime) -> "Notification":
        """The version recorded once the plugins sent it, validated as a new one is (model_copy
        would skip it): a way that is not text, or a time that is not a time, is refused before it
        is stored, where it made the order's notifications unreadable (GET .../notifications)."""
        return Notification.model_validate({**dict(self), "sent_via": via, "sent_at": at})


class NotificationStore(ABC):
    @abstractmethod
    def add(self, notification: Notification) -> tuple[Notification, bool]:
        """Record it unless a notification with its id is recorded for its order; return the recorded
        one, and whether a failed attempt of it is recorded (it waits for the retry pass, or was given up)."""

    @abstractmethod
    def mark_sent(self, notification: Notification, sent_via: list[str], at: datetime) -> None:
        """Record that the plugins have sent it (through `sent_via`)."""

    @abstractmethod
    def defer(self, notification: Notification, error: str, at: datetime, due: datetime) -> bool:
        """Record the first failed attempt of a recorded notification (at `at`, `error`: the type of
        what the plugins raised) and list it for a retry at `due`; False when one is recorded already."""

    @abstractmethod
    def due(self, before: datetime) -> Iterator["Retry"]:
        """The notifications listed for a retry due before `before`, the earliest first."""

    @abstractmethod
    def claim(self, retry: "Retry", at: datetime, next_due: datetime) -> tuple[Notification, "Retry"] | None:
        """Claim the next attempt of `retry`'s notification: on the condition that it is still listed
        as `retry` (no other pass claimed it, it was neither sent nor given up), count the attempt and
        list it again at `next_due` (the retry if this attempt fails or its function dies). The
        notification and its new listing; None when the claim is lost."""

    @abstractmethod
    def retried(self, retry: "Retry", notification: Notification, sent_via: list[str], at: datetime) -> None:
        """Record that the attempt `retry` claimed sent it: as mark_sent does, and its listing removed."""

    @abstractmethod
    def failed(self, retry: "Retry", error: str) -> None:
        """Record the type of what the plugins raised on the attempt `retry` claimed."""

    @abstractmethod
    def abandon(self, retry: "Retry", at: datetime) -> bool:
        """Record it given up (unsent for good) and remove its listing, on the condition that it is
        still listed as `retry`; False when another pass moved it meanwhile."""

    @abstractmethod
    def withdraw(self, retry: "Retry", at: datetime) -> bool:
        """Record it withdrawn (unsent for good: its order has changed since, so what it tells no longer
        holds) and remove its listing, on the condition that it is still listed as `retry`; False when
        another pass moved it meanwhile."""

    @abstractmethod
    def list(self, order_id: str, limit: int, cursor: str | None) -> tuple[list[Notification], str | None]:
        """An order's notifications, oldest first."""


@dataclass(frozen=True)
class Retry:
    """A notification the plugins failed to send, listed for the retry pass: due at `due`, after
    `attempts` failed or claimed attempts, the first at `first_at`; `error`: the type of what the
    plugins last raised (never its words)."""

    order_id: str
    notification_id: str
    created_at: datetime
    due: datetime
    attempts: int
    first_at: datetime
    error: str


# How long after a failed attempt the next one is made: the first retries soon (a blip), then
# less and less often; hourly after these, until GIVE_UP_AFTER.
RETRY_DELAYS = (timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
# A notification still unsent this long after its first attempt is given up: news a day old is
# more confusing than none (the order's page and its webhooks tell it), and a person is called.
GIVE_UP_AFTER = timedelta(hours=24)


def retry_delay(attempts: int) -> timedelta:
    """How long after its `attempts`-th failed attempt a notification is tried again."""
    return RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]


def failure_kind(error: BaseException) -> str:
    """What is recorded and logged of an error the plugins raised: its type alone (the plugin's own,
    which call_hook wraps), never its words, which may hold a card number or a host."""
    return type(error.__cause__ or error).__name__


def outdated(notification: Notification, order: Order | None) -> bool:
    """Whether `order` as it is now (None: not found) no longer bears out what `notification` tells,
    which a retry would send late, after what came since: a pickup ready no longer when its parcel
    was collected, cancelled or withdrawn, or until another deadline when a release moved its
    collect_by (the customer was told the new one); a delay none when the order left the status it
    was late in (it shipped: "your order is delayed" came after "your order has shipped"), save for
    a hold, which leaves it too: the order is no less late for its customer, who is not told again
    of that lateness after the release (_told_before), unless they asked for the hold, or the hold
    carries no lateness for its release to resume (Hold.resume_late: the mark was cleared before
    the hold, a lengthened deadline finding the order on time, or an edit sent it back to be
    sourced); a delay of a mark cleared since, the order marked late again (a lengthened deadline
    passed too: that mark's `since` is after the notification was made), whose own "delayed" tells
    it, held since or not (the lateness its hold resumes is that mark's), but for the lateness a
    release resumed (its `since` moved by the time held: late_resumed, Hold.resume_late_resumed,
    marked again or not yet: Order.late_since), of which the customer is not told again; a wait for
    stock none once the order no longer waits (allocated: "waiting for stock" would come after its
    parcel, or cancelled), held or not. A parcel shipped, a refund and a cancel stay true."""
    if order is None:
        return False
    if notification.kind is NotificationKind.DELAYED:
        if order.status is OrderStatus.ON_HOLD:
            hold = order.hold
            if hold is None:
                return False
            if hold.reason == "customer_request" or hold.resume_late is None:
                return True
            return hold.resume_late > notification.created_at and not hold.resume_late_resumed
        since = order.late_since()
        return since is None or (since > notification.created_at and since != order.late_resumed)
    if notification.kind is NotificationKind.BACKORDERED:
        waits = order.hold.resume_to if order.status is OrderStatus.ON_HOLD and order.hold else order.status
        return waits is not OrderStatus.BACKORDERED
    if notification.kind is NotificationKind.READY_FOR_PICKUP:
        parcel = next((s for s in order.shipments if s.id == notification.details.get("shipment_id")), None)
        if parcel is None or parcel.status is not ShipmentStatus.READY_FOR_PICKUP:
            return True
        told = notification.details.get("collect_by")
        return _minute_told(parcel.collect_by) != _minute_told(_moment(told) if told else None)
    return False


def ready_for_pickup_id(order_id: str, version: int, shipment_id: str) -> str:
    """No domain event tells of a pickup being ready, so its notification's id is made the way
    event ids are: stable for the same change."""
    return "evt_" + short_hash(f"{order_id}\x1f{version}\x1fshipment.ready_for_pickup\x1f{shipment_id}")


def notifications(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    locations: Callable[[str], Location | None] | None = None,
    *,
    products: Callable[[str], Product | None] | None = None,
    entries: Callable[[], list[dict[str, Any]]] | None = None,
) -> list[Notification]:
    """The notifications one order change means (`old`, `new`: the order documents before and
    after it), from the same events webhooks get: shipment.shipped, order.jeopardy (save one for a
    hold the customer asked for or a pickup waiting for them), refund.succeeded, order.backordered
    (what waits for stock), order.cancelled and order.payment_failed (the order is not going to
    come: `cancelled`), plus a pickup shipment that
    became ready_for_pickup and units of the order cancelled before they shipped (`cancelled`, a
    part of it). `locations` (the catalog's get_location) names a pickup's store to its
    customer by its name and street, asked only for a pickup readied; without it, or for a store
    the catalog no longer has, it is named by its id. `products` (the catalog's get_product) names
    cancelled units by their product's name (by their sku without it). `entries`: the history
    entries the change appended (as stored), asked only for a cancel, which says why in the
    customer's words (_why_cancelled); without them it says no reason."""
    events = order_events(old, new)
    units_cancelled = _units_cancelled(old, new)
    if not events and not units_cancelled and not _ready_shipments(old, new):
        return []
    customer = new.get("customer") or {}
    if not customer.get("email"):
        return []
    order_id, version = new["id"], int(new.get("version", 0))
    # What the customer is told the order is: the number their storefront showed them (its
    # external_id), the OMS's id only for an order placed without one.
    number = new.get("external_id") or order_id
    to = Recipient(email=customer["email"], name=customer.get("name"))
    hello = f"Hello {to.name}," if to.name else "Hello,"
    at = new.get("updated_at") or new.get("created_at")
    found: list[Notification] = []

    def note(id_: str, kind: NotificationKind, subject: str, text: str, **details: str | None) -> None:
        found.append(
            Notification(
                id=id_,
                kind=kind,
                order_id=order_id,
                channel=new.get("channel", ""),
                to=to,
                subject=subject,
                body=f"{hello}\n\n{text}\n",
                details={key: value for key, value in details.items() if value is not None},
                created_at=at,
            )
        )

    for event in events:
        if event.type is EventType.SHIPMENT_SHIPPED:
            shipment = event.data["shipment"]
            tracking = shipment.get("tracking_number")
            what = f"{_part_shipped(shipment, new)} {number}"
            subject = f"{what} has shipped"  # what an inbox shows: part, the rest or the whole order, as the body
            text = f"{what} has shipped with {shipment['carrier']}."
            if tracking and shipment["id"] in _shipped_before(old):
                # Its location learnt the carrier's number after the ship (core.domain_events._renumbered).
                subject = f"The tracking number of your order {number}"
                carrier = shipment["carrier"]
                text = f"{what}, shipped with {carrier}, has the tracking number {tracking}."
            elif tracking:
                text += f" Tracking number: {tracking}."
            note(
                event.id, NotificationKind.SHIPPED, subject, text,
                shipment_id=shipment["id"], carrier=shipment["carrier"], tracking_number=tracking,
            )  # fmt: skip
        elif event.type is EventType.ORDER_JEOPARDY:
            if _held_for_the_customer(new):
                continue  # late on a hold the customer asked for: nothing is delayed for them
            if _waits_for_the_customer(new):
                continue  # late past its pickup's collect_by: the parcel waits at the store for them
            if _told_before(new):
                continue  # the lateness a hold and release resumed: its customer was told of it
            # The jeopardy's reason is the OMS's own wording about its deadlines, not for a customer.
            text = f"Your order {number} is taking longer than we planned. We are working on it."
            note(event.id, NotificationKind.DELAYED, f"Your order {number} is delayed", text)
        elif event.type is EventType.REFUND_SUCCEEDED:
            amount = event.data["refund"]["amount"]
            money = f"{amount['amount']} {amount['currency']}"
            text = f"We refunded {money} for your order {number} to the way you paid."
            note(
                event.id, NotificationKind.REFUNDED, f"Refund for your order {number}", text,
                refund_id=event.data["refund"]["id"], amount=amount["amount"], currency=amount["currency"],
            )  # fmt: skip
        elif event.type is EventType.ORDER_BACKORDERED:
            # Its deadline is long (OMS_SLA backordered=14d): untold, the customer would wait that
            # long for "delayed", or for a parcel, not knowing why nothing came.
            names = ", ".join(f"{units} × {_product_name(sku, products)}" for sku, units in _units_short(new))
            some = "Part of your order" if new.get("allocations") else "Your order"
            text = (
                f"{some} {number} is not in stock yet: {names}. We will send it as soon as it arrives, and tell"
                " you when it ships. If you would rather not wait, contact us to cancel it."
            )
            note(event.id, NotificationKind.BACKORDERED, f"Your order {number} is waiting for stock", text)
        elif event.type in _ORDER_ENDED:
            reason, why = _why_cancelled(number, new, entries() if entries is not None else [])
            text = f"{why} {_money_of_a_cancel(new)}".rstrip()
            note(event.id, NotificationKind.CANCELLED, f"Your order {number} has been cancelled", text, reason=reason)
    if units_cancelled and new.get("status") not in _ORDER_ENDED_STATUSES:
        # Before capture no money moves (the authorization covers less), so no refund tells of it:
        # without this the customer learns of it from a parcel short of what they ordered.
        names = ", ".join(f"{units} × {_product_name(sku, products)}" for sku, units in units_cancelled)
        total = (new.get("totals") or {}).get("grand_total") or {}
        if _nothing_left_to_ship(new):  # a partly shipped order's rest: what shipped is all they get
            subject = f"The rest of your order {number} has been cancelled"
            text = f"We have cancelled {names}, the rest of your order {number}: it will not ship."
        else:
            subject = f"Part of your order {number} has been cancelled"
            text = f"We have cancelled {names} of your order {number}."
        text += f" Its new total is {total.get('amount')} {total.get('currency')}."
        note(
            units_cancelled_id(order_id, version), NotificationKind.CANCELLED, subject, text,
            grand_total=total.get("amount"), currency=total.get("currency"),
        )  # fmt: skip
    for shipment in _ready_shipments(old, new):
        store = locations(shipment["location_id"]) if locations is not None else None
        place = f"{store.name}, {store.address.line1}, {store.address.city}" if store else shipment["location_id"]
        text = f"Your order {number} is ready for pickup at {place}."
        collect_by = _collect_by(shipment)
        if collect_by is not None:
            # The pickup expiry cancels it once past this moment: the customer hears of it only here.
            # To the minute, cut down: never later than the deadline itself.
            text += (
                f" Please collect it by {_minute_told(collect_by)} UTC: an order not collected by then is cancelled."
            )
        note(
            ready_for_pickup_id(order_id, version, shipment["id"]),
            NotificationKind.READY_FOR_PICKUP, f"Your order {number} is ready for pickup", text,
            shipment_id=shipment["id"], location_id=shipment["location_id"],
            location_name=store.name if store else None,
            collect_by=utc_text(collect_by) if collect_by is not None else None,
        )  # fmt: skip
    return found


def units_cancelled_id(order_id: str, version: int) -> str:
    """No domain event tells of units cancelled, so their notification's id is made the way event
    ids are: stable for the same change."""
    return "evt_" + short_hash(f"{order_id}\x1f{version}\x1forder.units_cancelled")


# The events that end an order before it came: its customer is told it is cancelled.
_ORDER_ENDED = frozenset({EventType.ORDER_CANCELLED, EventType.ORDER_PAYMENT_FAILED})
_ORDER_ENDED_STATUSES = frozenset({OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED})
# The history entries that end an order (Order.cancel, Order.expire_pickup, Order.decline_payment).
_ENDING_ENTRIES = frozenset({OrderEvent.CANCELLED, OrderEvent.PICKUP_EXPIRED, OrderEvent.PAYMENT_FAILED})


def _why_cancelled(number: str, order: dict[str, Any], entries: list[dict[str, Any]]) -> tuple[str | None, str]:
    """Why the order ended, as its customer is told it: (a reason a plugin's template may use, the
    sentence). The OMS's reason code, a person's typed reason and a gateway's words are never told:
    a person's cancel (an API key's: their reason may be "fraud suspected") says none."""
    if order.get("status") == OrderStatus.PAYMENT_FAILED:
        return "payment_declined", (
            f"We could not take the payment for your order {number}: it was declined, so we have cancelled the order."
        )
    entry = next((e for e in reversed(entries) if e.get("type") in _ENDING_ENTRIES), None) or {}
    detail = entry.get("detail") or {}
    if entry.get("type") == OrderEvent.PICKUP_EXPIRED and detail.get("collect_by"):
        collect_by = _moment(detail["collect_by"]).astimezone(UTC)
        return "not_collected", (
            f"Your order {number} was not collected by {collect_by:%Y-%m-%d %H:%M} UTC, so we have cancelled it."
        )
    if entry.get("actor") == WORKFLOW_ACTOR and detail.get("reason") == OutOfStock.code:
        return (
            "out_of_stock",
            f"We are sorry: what you ordered in your order {number} is no longer in stock, so we have cancelled it.",
        )
    if entry.get("actor") == SCAN_ACTOR:  # the jeopardy scan cancels only holds kept too long
        return (
            "held_too_long",
            f"Your order {number} was on hold for longer than we can keep an order, so we have cancelled it.",
        )
    if entry.get("actor") == WORKFLOW_ACTOR:
        return "not_completed", f"We could not complete your order {number}, so we have cancelled it."
    return None, f"Your order {number} has been cancelled."


def _money_of_a_cancel(order: dict[str, Any]) -> str:
    """What the cancel means for the customer's money, as the order records it at the cancel: nothing
    charged (nothing captured), and an authorization, which the cancel voids after its write (or a
    person releases, the gateway refusing), released, which is no refund. Money captured is not
    spoken of here, refunded since or not: each refund is told when the gateway makes it (`refunded`)."""
    payment = order.get("payment") or {}
    if _amount(payment.get("captured")) > 0:
        return ""
    text = "You have not been charged for it."
    authorized = payment.get("authorized") or {}
    if _amount(authorized) > 0:  # authorized (or voided since): nothing captured on it
        text += (
            f" The {authorized['amount']} {authorized['currency']} authorized on your payment method will be"
            " released; your bank may show it as pending for a few days."
        )
    return text


def _amount(money: dict[str, Any] | None) -> Decimal:
    return Decimal(str((money or {}).get("amount") or "0"))


def _units_cancelled(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, int]]:
    """The units this change cancelled, (sku, units) by line: each line's cancelled_quantity grown."""
    if old is None:
        return []
    was = {line.get("line_id"): int(line.get("cancelled_quantity") or 0) for line in old.get("lines") or []}
    grown = [
        (str(line.get("sku")), int(line.get("cancelled_quantity") or 0) - was.get(line.get("line_id"), 0))
        for line in new.get("lines") or []
    ]
    return [(sku, units) for sku, units in grown if units > 0]


def _units_short(order: dict[str, Any]) -> list[tuple[str, int]]:
    """The units the order has not reserved (sku, units) by line: what a backordered order waits for."""
    held: dict[str, int] = {}
    for allocation in order.get("allocations") or []:
        held[allocation.get("line_id")] = held.get(allocation.get("line_id"), 0) + int(allocation.get("quantity") or 0)
    short = [
        (str(line.get("sku")), int(line.get("quantity") or 0) - held.get(line.get("line_id"), 0))
        for line in order.get("lines") or []
    ]
    return [(sku, units) for sku, units in short if units > 0]


def _nothing_left_to_ship(order: dict[str, Any]) -> bool:
    """Whether every unit the order still has has shipped (a partly shipped order's rest cancelled)."""
    lines = order.get("lines") or []
    return bool(lines) and all(
        int(line.get("shipped_quantity") or 0) >= int(line.get("quantity") or 0) for line in lines
    )


def _product_name(sku: str, products: Callable[[str], Product | None] | None) -> str:
    product = products(sku) if products is not None else None
    return product.name if product is not None else sku


def _part_shipped(shipment: dict[str, Any], order: dict[str, Any]) -> str:
    """How a shipped parcel is told: "Your order" when it carries every unit `order` still has (a
    line's `quantity` drops as its units are cancelled), "The rest of your order" when the parcels
    shipped with it carry them all, else "Part of your order", which leaves more to come."""
    units = sum(int(line.get("quantity", 0)) for line in order.get("lines") or [])
    if units > 0 and _units_in(shipment) == units:
        return "Your order"
    left = (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED)
    shipped = sum(_units_in(parcel) for parcel in order.get("shipments") or [] if parcel.get("status") in left)
    return "The rest of your order" if units > 0 and shipped >= units else "Part of your order"


def _units_in(shipment: dict[str, Any]) -> int:
    return sum(int(line.get("quantity", 0)) for line in shipment.get("lines") or [])


def _shipped_before(old: dict[str, Any] | None) -> set[str]:
    """The ids of the shipments `old` shows shipped already."""
    return {s.get("id") for s in (old or {}).get("shipments") or [] if s.get("status") == ShipmentStatus.SHIPPED}


def _held_for_the_customer(order: dict[str, Any]) -> bool:
    """Whether the order is late for a hold its customer asked for (on_hold, `customer_request`)."""
    late, hold = order.get("jeopardy") or {}, order.get("hold") or {}
    return late.get("status") == OrderStatus.ON_HOLD and hold.get("reason") == "customer_request"


def _waits_for_the_customer(order: dict[str, Any]) -> bool:
    """Whether the order is an allocated pickup whose every parcel the store has picked and one waits
    for its customer (Order.deadline_counts_from): late only past its collect_by, when the pickup
    expiry did not cancel it, and its customer was told it is ready and until when."""
    shipments = order.get("shipments") or []
    return (
        order.get("status") == OrderStatus.ALLOCATED
        and not any(s.get("status") == ShipmentStatus.PENDING for s in shipments)
        and any(s.get("status") == ShipmentStatus.READY_FOR_PICKUP for s in shipments)
    )


def _told_before(order: dict[str, Any]) -> bool:
    """Whether the order's late mark is of the lateness its customer was told of before a hold and
    release (Order.late_resumed: the release resumed the clock of the status it was marked late
    for, and that lateness's `since`, moved by the time held, is the mark's)."""
    late, resumed = order.get("jeopardy") or {}, order.get("late_resumed")
    return bool(resumed and late.get("since")) and _moment(late["since"]) == _moment(resumed)


def _moment(value: str | datetime) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _collect_by(shipment: dict[str, Any]) -> datetime | None:
    """When the ready pickup stops being collectable (its `collect_by`, in UTC); None without one
    (OMS_PICKUP_EXPIRY_DAYS 0: nothing expires it)."""
    value = shipment.get("collect_by")
    if not value:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC)


def _minute_told(collect_by: datetime | None) -> str | None:
    """A pickup's deadline as its customer is told it: to the minute in UTC, cut down (never later
    than the deadline itself). A release that moves it within that minute (a hold of seconds) tells
    them nothing new."""
    return collect_by.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if collect_by is not None else None


def _ready_shipments(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """The pickups this change made ready, and those waiting whose `collect_by` a release moved
    (Order.pickups_after_hold) to another minute than the one told (_minute_told): the customer was
    told the old deadline, and may have been turned away at the counter while the order was held;
    told again that it is ready, and until when."""
    was = {item.get("id"): item for item in (old or {}).get("shipments") or []}
    held = new.get("status") == OrderStatus.ON_HOLD
    return [
        shipment
        for shipment in new.get("shipments") or []
        if shipment.get("status") == ShipmentStatus.READY_FOR_PICKUP
        and (
            (was.get(shipment.get("id")) or {}).get("status") != ShipmentStatus.READY_FOR_PICKUP
            or (
                not held
                and _minute_told(_collect_by(was.get(shipment.get("id")) or {})) != _minute_told(_collect_by(shipment))
            )
        )
    ]


class Notifier:
    """Records each notification (the built-in notifier: GET /orders/{id}/notifications shows
    what it would send), then hands it to the plugins that send (hook oms_notify). A notification
    recorded and sent already is skipped. One a plugin answered what the hook's spec refuses for
    (`"email"` where it asks for a list) went out all the same (every plugin ran to its end): it is
    recorded sent, by ways unknown, never handed over again (the retry pass would have it sent, and
    answered the same, every hour for a day). One the plugins fail to send (they raise: a provider
    down) is recorded deferred, unsent, and left to the retry pass (NotificationRetries): the
    stream record does not fail, so the shard's later records do not wait through its retries. One
    recorded but neither sent nor deferred (the function died in the plugins, the stream
    redelivers) is handed to them again, so they dedupe by its id."""

    def __init__(
        self, store: NotificationStore, hook: Any, clock: Callable[[], datetime],
        locations: Callable[[str], Location | None] | None = None,
        products: Callable[[str], Product | None] | None = None,
    ):  # fmt: skip
        self._store = store
        self._hook = hook
        self._clock = clock
        self._locations = locations
        self._products = products
        self._wait = PluginWait()

    def notify(
        self, old: dict[str, Any] | None, new: dict[str, Any], *, seconds_left: Callable[[], float] | None = None,
        entries: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> "Notified":  # fmt: skip
        """The notifications sent now (none when the change means none or all went out before), and
        those deferred now. With `seconds_left` (how long the plugins may take, asked before each
        notification: the invocation's time left less what must follow), the plugins are called in a
        thread of their own and not waited for past it: one they have not answered by then is
        deferred as one they failed to send (NotifierOverdue), and while that call still runs every
        later notification is deferred without a call (one stuck thread, never a pile of them).
        `entries`: the history entries the change appended (notifications)."""
        done = Notified()
        for notification in notifications(old, new, self._locations, products=self._products, entries=entries):
            recorded, deferred = self._store.add(notification)
            if recorded.sent_at is not None or deferred:
                continue
            copy = recorded.model_copy(deep=True)
            try:
                # The keys of a plugin's `plugin raised` line (calls_about) name this notification's
                # order, not the logger's: a call past its limit writes it once the function works
                # on another order (a later record, a later invocation) whose keys the logger has.
                with calls_about(order_id=recorded.order_id, notification_id=recorded.id):
                    call = partial(call_hook, self._hook.oms_notify, _way_shown, notification=copy)
                    via = self._wait(call, seconds_left)
            except Exception as error:  # any: the provider's outage is the retry pass's, not the stream's
                if answer_refused(error):
                    self._store.mark_sent(recorded, [], self._clock())
                    done.refused.append((recorded, str(error)))
                    continue
                now, kind = self._clock(), failure_kind(error)
                if self._store.defer(recorded, kind, now, now + retry_delay(1)):
                    done.deferred.append((recorded, kind))
                continue
            self._store.mark_sent(recorded, via[:MAX_WAYS], self._clock())
            done.sent.append(recorded)
        return done


class PluginWait:
    """How the notifier plugins (hook oms_notify) are waited for, by one Notifier or retry pass in a
    warm container: `wait(call, seconds_left)` is `call`'s answer (what it raises, raised), waited
    for at most `seconds_left()` seconds (None: for as long as it takes, in this thread). Python
    cannot stop a thread: one not done in time runs on to its end in the warm container (its answer
    dropped, the retry pass sending the notification again under the same id), so none is started
    while it runs: NotifierOverdue at once."""

    def __init__(self) -> None:
        # The plugins' call that outlived its limit, while it still runs.
        self._overdue: threading.Thread | None = None

    def __call__(self, call: Callable[[], list[str]], seconds_left: Callable[[], float] | None) -> list[str]:
        if seconds_left is None:
            return call()
        if self._overdue is not None and self._overdue.is_alive():
            raise NotifierOverdue("the notifier plugins have not answered a call made before")
        limit = seconds_left()
        if limit <= 0:
            raise NotifierOverdue("no time left for the notifier plugins")
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["answer"] = call()
            except BaseException as error:  # any: raised again in the caller's thread
                outcome["error"] = error

        # Daemon: a thread stuck in a plugin never holds the process's exit. A copy of this
        # context: call_hook's and calls_about's context variables as the caller set them.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), name="oms-notify", daemon=True)
        thread.start()
        thread.join(limit)
        if thread.is_alive():
            self._overdue = thread
            raise NotifierOverdue(f"the notifier plugins did not answer within {limit:.1f} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["answer"]


class NotifierOverdue(Exception):
    """The notifier plugins did not answer within the time they were given (PluginWait), or a call
    of theirs that did not is still running: the notification is deferred to the retry pass (or its
    attempt there fails), as one they failed to send."""


@dataclass
class Notified:
    """What one order change's notifications came to: sent, deferred with the type of what the
    plugins raised, or sent with an answer refused (why: the plugin and what it returned)."""

    sent: list[Notification] = field(default_factory=list)
    deferred: list[tuple[Notification, str]] = field(default_factory=list)
    refused: list[tuple[Notification, str]] = field(default_factory=list)


@dataclass
class Retried:
    """What a retry pass did: the notifications it sent, those that failed again (listed for a
    later attempt, `error` the type of what the plugins raised), those it gave up and those it
    withdrew, each as its listing after the attempt (`attempts` counting it); `lost`: the ones
    another pass moved first."""

    sent: list[Retry] = field(default_factory=list)
    deferred: list[Retry] = field(default_factory=list)
    abandoned: list[Retry] = field(default_factory=list)
    # Left unsent for good, its order having changed since (`outdated`): nobody is called for them.
    withdrawn: list[Retry] = field(default_factory=list)
    # Sent, a plugin's answer refused (Notifier.notify): recorded sent; why, as Notified.refused.
    refused: list[tuple[Retry, str]] = field(default_factory=list)
    lost: int = 0
    # The listings whose own work raised (a notification that no longer reads, an item its table
    # refuses), by notification id: read past, taken again by a later pass.
    failed: dict[str, Exception] = field(default_factory=dict)


# The kinds a later change of the order can make untrue (`outdated`): only their retries read it.
_OUTDATED_BY_CHANGES = frozenset(
    {NotificationKind.READY_FOR_PICKUP, NotificationKind.DELAYED, NotificationKind.BACKORDERED}
)


class NotificationsNotRetried(CandidatesReadPast):
    """A notification retry pass went on past notifications whose own work raised (CandidatesReadPast)."""

    def __init__(self, done: Retried):
        super().__init__(done, f"{len(done.failed)} customer notification(s) not retried")


class NotificationRetries:
    """The reconciler's pass over the notifications the plugins failed to send: each due one is
    handed to them again (hook oms_notify, the same notification and id, so they dedupe), its
    attempt claimed first by a conditional write (NotificationStore.claim), so two passes at once
    make each attempt once; failed again, it is tried after RETRY_DELAYS (then hourly); still
    unsent GIVE_UP_AFTER after its first attempt, it is given up (recorded abandoned: a person is
    called). One its order, read again (`orders`, the order repository's get), has outdated since
    (a pickup collected, a late order shipped: `outdated`) is withdrawn instead of sent after what
    the customer was told since. At least once, as webhooks are: a function that dies after the
    plugins sent it and before it is recorded sent has it sent again by the attempt after (its id
    is the same)."""

    def __init__(
        self, store: NotificationStore, hook: Any, clock: Callable[[], datetime],
        orders: Callable[[str], Order | None], *, outage: Callable[[Exception], bool] = dependency_down,
    ):  # fmt: skip
        self._store = store
        self._hook = hook
        self._clock = clock
        self._orders = orders
        self._outage = outage  # whether an error says a dependency is down (not the notification's own)
        self._wait = PluginWait()

    def run(
        self, done: Retried | None = None, *, time_up: TimeUp = never, seconds_left: Callable[[], float] | None = None
    ) -> Retried:
        """One pass over the due ones, earliest first, until `time_up` says so (the rest are the next
        pass's). `done` is filled as the pass goes. With `seconds_left`, the plugins are waited for
        no longer than it says (PluginWait): an attempt they do not answer in time fails
        (NotifierOverdue), as one they raise in does. A listing whose own work raises (its
        notification no longer reads) is read past, in `done.failed`: it is the earliest due, so a
        pass it stopped would stop there every run; a dependency found down (`outage`) ends the
        pass there. What the plugins raise is no such failure: it is the attempt's (deferred)."""
        done = done if done is not None else Retried()
        now = self._clock()
        for retry in self._store.due(now):
            if time_up():
                break
            try:
                with calls_about(order_id=retry.order_id, notification_id=retry.notification_id):
                    self._retry(retry, now, done, seconds_left)
            except Exception as error:  # any: the notification's own, unless it says a dependency is down
                if self._outage(error):
                    raise
                done.failed[retry.notification_id] = error
        return done

    def _retry(self, retry: Retry, now: datetime, done: Retried, seconds_left: Callable[[], float] | None) -> None:
        give_up_at = retry.first_at + GIVE_UP_AFTER
        if now >= give_up_at:
            if self._store.abandon(retry, now):
                done.abandoned.append(retry)
            else:
                done.lost += 1
            return
        claimed = self._store.claim(retry, now, now + retry_delay(retry.attempts + 1))
        if claimed is None:
            done.lost += 1
            return
        notification, listed = claimed
        if notification.kind in _OUTDATED_BY_CHANGES and outdated(notification, self._orders(notification.order_id)):
            if self._store.withdraw(listed, now):
                done.withdrawn.append(listed)
            else:
                done.lost += 1
            return
        try:
            copy = notification.model_copy(deep=True)
            via = self._wait(partial(call_hook, self._hook.oms_notify, _way_shown, notification=copy), seconds_left)
        except Exception as error:  # any: the provider still down
            if answer_refused(error):  # it went out: as Notifier.notify records it
                self._store.retried(listed, notification, [], self._clock())
                done.refused.append((listed, str(error)))
                return
            failed = replace(listed, error=failure_kind(error))
            self._store.failed(listed, failed.error)
            if listed.due >= give_up_at and self._store.abandon(listed, now):
                done.abandoned.append(failed)  # no attempt would come before the deadline
            else:
                done.deferred.append(failed)
            return
        self._store.retried(listed, notification, via[:MAX_WAYS], self._clock())
        done.sent.append(listed)


# A way a plugin says it sent a notification ("email"), as GET /orders/{id}/notifications shows it:
# its controls and bidi overrides made visible, cut to a name's length. Mended, not refused: the
# message went out, and a refusal would have the stream redeliver the change and send it again.
_WAY = TypeAdapter(Annotated[str, VisibleText])
_MAX_WAY_CHARS = 60
# The first ways the plugins name, in call order, are recorded; the rest are left out, for the same
# reason: thousands outgrew the notification's one item (400 KB), so recording it as sent failed
# and the customer was sent it again. Every plugin's handful of ways (email, SMS, push) fits in 20,
# and 20 of at most 60 characters (240 bytes of UTF-8) keep a page of 100 notifications small.
MAX_WAYS = 20


def _way_shown(way: str) -> str:
    return _WAY.validate_python(way[:_MAX_WAY_CHARS])


class OrderNotifications:
    """What GET /orders/{id}/notifications reads: an order's notifications, for a caller that may see the order."""

    def __init__(self, orders: OrderQueries, store: NotificationStore):
        self._orders = orders
        self._store = store

    def list(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Notification], str | None]:
        self._orders.get(order_id, channel)  # another channel's order, or none, is NotFound
        return self._store.list(order_id, limit, cursor)
