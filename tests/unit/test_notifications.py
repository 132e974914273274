"""Customer notifications from two versions of an order document: which, what they say, once per event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pluggy
import pytest
from pydantic import ValidationError

from core import PROJECT, hookimpl, hookspecs
from core.domain_events import EventType, event_id
from core.models import Hold, Jeopardy, Order, Shipment, ShipmentLine
from core.notifications import (
    Notification,
    NotificationKind,
    NotificationRetries,
    NotificationStore,
    Notified,
    Notifier,
    Retried,
    Retry,
    notifications,
    outdated,
    ready_for_pickup_id,
)
from core.status import OrderStatus
from tests.fakes import FakeOrders
from tests.unit.conftest import a_stored_order
from tests.unit.test_domain_events import _refund_steps, money, next_version, order_doc, shipment

ORDER = "ord_aaaaaaaaaaaaaaaaaaaaaaaa"
NUMBER = "web-1"  # order_doc's external_id: what the customer is told
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def kinds(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    return [n.kind.value for n in notifications(old, new)]


def test_a_shipped_shipment_tells_the_carrier_and_tracking_number_under_the_event_id():
    old = order_doc(status="allocated", shipments=[shipment("pending")])
    shipped = {**shipment("shipped"), "tracking_number": "1Z999"}
    new = next_version(old, status="shipped", shipments=[shipped])

    (note,) = notifications(old, new)

    assert note.kind is NotificationKind.SHIPPED
    assert note.id == event_id(ORDER, 2, EventType.SHIPMENT_SHIPPED, "shp_1")
    assert note.to.email == "ada@example.com" and note.to.name == "Ada"
    assert "1Z999" in note.body and "flat" in note.body and NUMBER in note.subject
    assert note.details == {"shipment_id": "shp_1", "carrier": "flat", "tracking_number": "1Z999"}
    assert note.body.startswith("Hello Ada,")


def test_jeopardy_is_a_delay_without_the_internal_reason():
    old = order_doc(status="allocated")
    late = {"reason": "allocated for longer than 48h", "status": "allocated", "since": "2026-12-03T10:00:00Z"}
    new = next_version(old, jeopardy=late)

    (note,) = notifications(old, new)

    assert note.kind is NotificationKind.DELAYED
    assert note.id == event_id(ORDER, 2, EventType.ORDER_JEOPARDY)
    assert "48h" not in note.body and "delayed" in note.subject


def test_an_order_held_at_the_customers_request_is_never_told_it_is_delayed_for_that_hold():
    # The customer asked to hold it: "taking longer than we planned, we are working on it" is false.
    held = order_doc(status="on_hold", hold={"reason": "customer_request", "since": "2026-12-01T10:00:00Z"})
    late = {"reason": "on_hold for longer than 24h", "status": "on_hold", "since": "2026-12-02T10:00:00Z"}
    assert kinds(held, next_version(held, jeopardy=late)) == []

    # Held for the OMS's own reasons, the order is late for the customer too.
    reviewed = order_doc(status="on_hold", hold={"reason": "fraud_review", "since": "2026-12-01T10:00:00Z"})
    assert kinds(reviewed, next_version(reviewed, jeopardy=late)) == ["delayed"]


def test_a_pickup_its_customer_did_not_collect_is_never_told_it_is_delayed():
    # Late past collect_by (the pickup expiry did not cancel it): the parcel has waited at the store
    # since the customer was told it is ready. "Taking longer than we planned" is false, and tells
    # them not to come for it.
    pickup = {"type": "pickup", "location_id": "store-sf"}
    ready = {**shipment("ready_for_pickup"), "location_id": "store-sf", "collect_by": "2026-12-08T10:00:00Z"}
    waiting = order_doc(status="allocated", fulfillment=pickup, shipments=[ready])
    late = {
        "reason": "allocated for longer than 2d past its pickup's collect_by",
        "status": "allocated",
        "since": "2026-12-10T10:00:00Z",
    }
    assert kinds(waiting, next_version(waiting, jeopardy=late)) == []

    # Late before the store picked it (its parcel pending): the wait is the merchant's.
    unpicked = order_doc(status="allocated", fulfillment=pickup, shipments=[shipment("pending")])
    late_to_pick = {**late, "reason": "allocated for longer than 2d"}
    assert kinds(unpicked, next_version(unpicked, jeopardy=late_to_pick)) == ["delayed"]


def test_a_pickup_with_a_parcel_the_store_has_not_picked_yet_is_told_it_is_delayed():
    # One parcel waits at the store for its customer, the other is still the merchant's to pick:
    # the order is late for the merchant's part, and its customer is told so.
    pickup = {"type": "pickup", "location_id": "store-sf"}
    ready = {**shipment("ready_for_pickup"), "location_id": "store-sf", "collect_by": "2026-12-08T10:00:00Z"}
    unpicked = {**shipment("pending"), "id": "shp_2", "location_id": "store-sf"}
    partly = order_doc(status="allocated", fulfillment=pickup, shipments=[ready, unpicked])
    late = {"reason": "allocated for longer than 2d", "status": "allocated", "since": "2026-12-10T10:00:00Z"}

    assert kinds(partly, next_version(partly, jeopardy=late)) == ["delayed"]


def test_a_pickup_ready_but_held_by_the_merchant_is_told_it_is_delayed():
    # Held for a fraud review, its parcel ready at the store cannot be collected: the wait is the
    # merchant's, not the customer's, and the customer is told the order is delayed.
    pickup = {"type": "pickup", "location_id": "store-sf"}
    ready = {**shipment("ready_for_pickup"), "location_id": "store-sf", "collect_by": "2026-12-08T10:00:00Z"}
    hold = {"reason": "fraud_review", "resume_to": "allocated", "held_at": "2026-12-09T10:00:00Z"}
    held = order_doc(status="on_hold", fulfillment=pickup, shipments=[ready], hold=hold)
    late = {"reason": "on_hold for longer than 1d", "status": "on_hold", "since": "2026-12-10T10:00:00Z"}

    assert kinds(held, next_version(held, jeopardy=late)) == ["delayed"]


def test_a_refund_tells_its_amount():
    old = order_doc(status="shipped")
    payment = {**old["payment"], "refunded": money("4.00")}
    payment["refunds"] = [{"id": "ref_1", "amount": money("4.00"), "reason": "damaged", "at": "2026-12-01T10:05:00Z"}]
    new = next_version(old, payment=payment)

    (note,) = notifications(old, new)

    assert note.kind is NotificationKind.REFUNDED
    assert "4.00 USD" in note.body
    assert note.details == {"refund_id": "ref_1", "amount": "4.00", "currency": "USD"}


def test_a_refund_is_told_once_the_gateway_approved_it_and_never_when_it_refused():
    captured, pending, succeeded, failed = _refund_steps()
    assert kinds(captured, pending) == []  # written pending: the gateway has not answered yet
    assert kinds(pending, failed) == []
    assert kinds(pending, succeeded) == ["refunded"]


def test_a_pickup_shipment_ready_is_told_once_with_its_location():
    pickup = {"type": "pickup", "location_id": "wh1"}
    old = order_doc(status="allocated", fulfillment=pickup, shipments=[shipment("pending")])
    new = next_version(old, shipments=[shipment("ready_for_pickup")])

    (note,) = notifications(old, new)

    assert note.kind is NotificationKind.READY_FOR_PICKUP
    assert note.id == ready_for_pickup_id(ORDER, 2, "shp_1")
    assert "wh1" in note.body
    # The next change of the same order does not tell it again.
    assert kinds(new, next_version(new)) == []


def test_changes_customers_are_not_told_of_tell_nothing():
    placed = order_doc()
    assert kinds(None, placed) == []
    assert kinds(placed, next_version(placed, status="authorized")) == []
    edited = next_version(placed, lines=[{**placed["lines"][0], "quantity": 3}])
    assert kinds(placed, edited) == []  # an edit cancels nothing: its lines are what the customer asked for
    cut = next_version(placed, lines=[{**placed["lines"][0], "cancelled_quantity": 2}])
    assert kinds(cut, next_version(cut, lines=placed["lines"])) == []  # lines replaced whole: none grew


def cancel_entry(actor: str, reason: str, type_: str = "cancelled", **detail: Any) -> dict[str, Any]:
    """A history entry as the Orders table stores it (decoded), as the stream record's new image appends it."""
    return {"at": "2026-12-01T10:05:00Z", "type": type_, "from_status": "allocated", "to_status": "cancelled",
            "actor": actor, "detail": {"reason": reason, **detail}}  # fmt: skip


AUTHORIZED = {"method": "test", "status": "authorized", "authorized": money("10.00"), "captured": money("0.00"),
              "refunded": money("0.00")}  # fmt: skip


def cancelled(entries: list[dict[str, Any]], payment: dict[str, Any] = AUTHORIZED) -> Notification:
    old = order_doc(status="allocated", payment=payment)
    lines = [{**line, "quantity": 0, "cancelled_quantity": line["quantity"]} for line in old["lines"]]
    (note,) = notifications(old, next_version(old, status="cancelled", lines=lines), entries=lambda: entries)
    assert note.kind is NotificationKind.CANCELLED and note.subject == f"Your order {NUMBER} has been cancelled"
    assert note.id == event_id(ORDER, 2, EventType.ORDER_CANCELLED)  # one per order: the cancel's event
    return note


@pytest.mark.parametrize(
    ("entry", "reason", "says"),
    [
        (cancel_entry("workflow", "out_of_stock"), "out_of_stock", "is no longer in stock"),
        (cancel_entry("workflow", "workflow_error"), "not_completed", "We could not complete your order"),
        (cancel_entry("jeopardy_scan", "hold_expired"), "held_too_long", "on hold for longer than we can keep"),
        (cancel_entry("pickup_expiry", "pickup_expired", "pickup_expired", collect_by="2026-12-08T10:00:00.5Z"),
         "not_collected", "was not collected by 2026-12-08 10:00 UTC"),
        # A person typing a system's reason is a person's cancel all the same: their words are not told.
        (cancel_entry("key_desk", "out_of_stock"), None, f"Your order {NUMBER} has been cancelled."),
    ],
)  # fmt: skip
def test_a_cancel_tells_why_in_the_customers_words_never_the_oms_code(entry, reason, says):
    note = cancelled([{"type": "stock_reserved", "actor": "workflow", "detail": {}}, entry])

    assert says in note.body
    assert note.details == ({"reason": reason} if reason else {})
    assert entry["detail"]["reason"] not in note.body and entry["actor"] not in note.body


def test_a_cancel_whose_entries_are_not_at_hand_is_told_without_a_reason():
    old = order_doc(status="allocated", payment=AUTHORIZED)
    (note,) = notifications(old, next_version(old, status="cancelled"))

    assert note.body == (
        f"Hello Ada,\n\nYour order {NUMBER} has been cancelled. You have not been charged for it. The 10.00 USD"
        " authorized on your payment method will be released; your bank may show it as pending for a few days.\n"
    )


def test_a_cancel_says_nothing_charged_only_when_nothing_is_and_never_calls_a_release_a_refund():
    never_authorized = {**AUTHORIZED, "status": "pending", "authorized": money("0.00")}
    assert cancelled([], payment=never_authorized).body.endswith(
        "has been cancelled. You have not been charged for it.\n"
    )
    charged = {**AUTHORIZED, "status": "partially_captured", "captured": money("4.00")}
    assert "charged" not in cancelled([], payment=charged).body  # its refund, once made, is `refunded`
    refunded = {**charged, "status": "refunded", "refunded": money("4.00")}
    assert (
        "charged" not in cancelled([], payment=refunded).body and "released" not in cancelled([], payment=refunded).body
    )
    voided = {**AUTHORIZED, "status": "voided"}
    assert "The 10.00 USD authorized on your payment method will be released" in cancelled([], payment=voided).body
    for payment in (AUTHORIZED, never_authorized, charged, refunded):
        assert "refund" not in cancelled([], payment=payment).body


def test_a_declined_payment_is_told_as_a_cancel_under_its_event_with_nothing_charged():
    old = order_doc()
    (note,) = notifications(old, next_version(old, status="payment_failed"))

    assert note.id == event_id(ORDER, 2, EventType.ORDER_PAYMENT_FAILED)
    assert note.kind is NotificationKind.CANCELLED and note.details == {"reason": "payment_declined"}
    assert f"We could not take the payment for your order {NUMBER}: it was declined" in note.body
    assert note.body.endswith("You have not been charged for it.\n")


def test_units_cancelled_name_the_product_or_its_sku_and_the_new_total_and_are_not_told_again():
    old = order_doc(status="allocated", payment=AUTHORIZED)
    old["lines"] = [{**old["lines"][0], "quantity": 3}, {**old["lines"][0], "line_id": "l2", "sku": "MUG"}]
    lines = [{**old["lines"][0], "quantity": 1, "cancelled_quantity": 2}, old["lines"][1]]
    new = next_version(old, lines=lines, totals={**old["totals"], "grand_total": money("20.00")})
    names = {"TSHIRT": "Black T-shirt"}

    def product(sku: str) -> Any:
        return type("Product", (), {"name": names[sku]}) if sku in names else None

    (note,) = notifications(old, new, products=product)
    assert note.kind is NotificationKind.CANCELLED and note.subject == f"Part of your order {NUMBER} has been cancelled"
    assert note.body.endswith(
        f"We have cancelled 2 × Black T-shirt of your order {NUMBER}. Its new total is 20.00 USD.\n"
    )
    assert note.details == {"grand_total": "20.00", "currency": "USD"}
    names.clear()
    (by_sku,) = notifications(old, new, products=product)
    assert "2 × TSHIRT of your order" in by_sku.body and by_sku.id == note.id  # the same change, the same id
    assert kinds(new, next_version(new)) == []


def test_no_payment_token_or_secret_reaches_a_notification():
    secret = "tok_live_4242424242424242"
    old = order_doc(status="allocated", shipments=[shipment("pending")])
    old["payment"] = {**old["payment"], "token": secret, "authorization": "auth_secret_123"}
    new = next_version(old, status="shipped", shipments=[{**shipment("shipped"), "tracking_number": "T1"}])
    payment = {**new["payment"], "refunded": money("1.00")}
    payment["refunds"] = [{"id": "ref_1", "amount": money("1.00"), "reason": "x", "at": "2026-12-01T10:05:00Z"}]
    new["payment"] = payment
    new["jeopardy"] = {"reason": "late", "status": "shipped", "since": "2026-12-01T10:05:00Z"}

    found = notifications(old, new)

    assert sorted(n.kind.value for n in found) == ["delayed", "refunded", "shipped"]
    for note in found:
        shown = note.model_dump_json()
        assert secret not in shown and "auth_secret_123" not in shown and "labels/" not in shown


class MemoryStore(NotificationStore):
    def __init__(self) -> None:
        self.items: dict[str, Notification] = {}
        self.attempts: dict[str, int] = {}  # by notification id: its failed (or claimed) attempts
        self.listed: dict[str, Retry] = {}  # by notification id: listed for the retry pass

    def add(self, notification: Notification) -> tuple[Notification, bool]:
        return self.items.setdefault(notification.id, notification), notification.id in self.attempts

    def mark_sent(self, notification: Notification, sent_via: list[str], at: datetime) -> None:
        self.items[notification.id] = notification.as_sent(sent_via, at)

    def defer(self, notification: Notification, error: str, at: datetime, due: datetime) -> bool:
        if notification.id in self.attempts:
            return False
        self.attempts[notification.id] = 1
        self.listed[notification.id] = Retry(notification.order_id, notification.id, notification.created_at,
                                             due, 1, at, error)  # fmt: skip
        return True

    def due(self, before: datetime) -> Iterator[Retry]:
        return iter(sorted((r for r in self.listed.values() if r.due < before), key=lambda r: r.due))

    def claim(self, retry: Retry, at: datetime, next_due: datetime) -> tuple[Notification, Retry] | None:
        if self.listed.get(retry.notification_id) != retry:
            return None
        listed = replace(retry, due=next_due, attempts=retry.attempts + 1)
        self.listed[retry.notification_id], self.attempts[retry.notification_id] = listed, listed.attempts
        return self.items[retry.notification_id], listed

    def retried(self, retry: Retry, notification: Notification, sent_via: list[str], at: datetime) -> None:
        self.mark_sent(notification, sent_via, at)
        del self.listed[retry.notification_id]

    def failed(self, retry: Retry, error: str) -> None:
        if self.listed.get(retry.notification_id) == retry:
            self.listed[retry.notification_id] = replace(retry, error=error)

    def abandon(self, retry: Retry, at: datetime) -> bool:
        listed = self.listed.get(retry.notification_id)
        if listed is None or listed.attempts != retry.attempts:
            return False
        del self.listed[retry.notification_id]
        return True

    def withdraw(self, retry: Retry, at: datetime) -> bool:
        return self.abandon(retry, at)

    def list(self, order_id: str, limit: int, cursor: str | None) -> tuple[list[Notification], str | None]:
        return [n for n in self.items.values() if n.order_id == order_id][:limit], None


class Mailer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str] | None:
        if self.fail:
            raise RuntimeError("smtp down")
        self.sent.append(notification.id)
        return ["email"]


def hook_with(*plugins: object) -> Any:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin)
    return manager.hook


def a_shipped_change() -> tuple[dict[str, Any], dict[str, Any]]:
    old = order_doc(status="allocated", shipments=[shipment("pending")])
    return old, next_version(old, status="shipped", shipments=[shipment("shipped")])


def test_the_notifier_records_sends_through_plugins_and_sends_once_per_event():
    store, mailer = MemoryStore(), Mailer()
    notifier = Notifier(store, hook_with(mailer), lambda: NOW)
    old, new = a_shipped_change()

    assert len(notifier.notify(old, new).sent) == 1
    assert notifier.notify(old, new) == Notified()  # the stream redelivers the record

    (recorded,) = store.items.values()
    assert mailer.sent == [recorded.id]
    assert recorded.sent_via == ["email"] and recorded.sent_at == NOW


def test_without_a_sending_plugin_the_notification_is_recorded_as_sent_nowhere():
    store = MemoryStore()
    Notifier(store, hook_with(), lambda: NOW).notify(*a_shipped_change())

    (recorded,) = store.items.values()
    assert recorded.sent_via == [] and recorded.sent_at == NOW


class Terminal:
    """A sender whose answer names its way with escape sequences, a bidi override, and at length."""

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str]:
        return ["sms\x1b[2J\u202e", "x" * 100_000]


def test_the_ways_a_plugin_names_are_recorded_with_controls_made_visible_and_at_most_60_characters():
    # Shown to operators by GET /orders/{id}/notifications, and a whole answer was one stored item.
    store = MemoryStore()

    Notifier(store, hook_with(Terminal()), lambda: NOW).notify(*a_shipped_change())

    (recorded,) = store.items.values()
    assert recorded.sent_via == ["sms\ufffd[2J\ufffd", "x" * 60]


class Broadcaster:
    """A sender that names a way for every one of thousands of subscribers it reached."""

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str]:
        return [f"push:device-{n:06d}" for n in range(10_000)]


def test_a_notification_records_at_most_20_ways_however_many_a_plugin_names():
    # Thousands of ways outgrew the stored item: recording it as sent failed, the stream redelivered
    # the change and the customer was sent the message again.
    store = MemoryStore()

    Notifier(store, hook_with(Broadcaster()), lambda: NOW).notify(*a_shipped_change())

    (recorded,) = store.items.values()
    assert recorded.sent_via == [f"push:device-{n:06d}" for n in range(20)]
    assert recorded.sent_at == NOW


def test_a_failing_plugin_leaves_it_recorded_unsent_and_deferred_and_a_redelivery_leaves_it_to_the_retry_pass():
    store, mailer = MemoryStore(), Mailer(fail=True)
    notifier = Notifier(store, hook_with(mailer), lambda: NOW)
    old, new = a_shipped_change()

    notified = notifier.notify(old, new)  # no error: the stream record succeeds
    (recorded,) = store.items.values()
    assert recorded.sent_at is None
    assert notified == Notified(deferred=[(recorded, "RuntimeError")])
    (retry,) = store.listed.values()
    assert (retry.attempts, retry.due, retry.error) == (1, NOW + timedelta(minutes=5), "RuntimeError")

    mailer.fail = False
    assert notifier.notify(old, new) == Notified()  # redelivered: the pass's to send
    assert mailer.sent == [] and store.items[recorded.id].sent_at is None

    # A parcel shipped stays true: its retry reads no order (the store holds none).
    retries = NotificationRetries(store, hook_with(mailer), lambda: NOW + timedelta(minutes=6), FakeOrders().get)
    assert [r.notification_id for r in retries.run().sent] == [recorded.id]
    assert mailer.sent == [recorded.id] and store.items[recorded.id].sent_via == ["email"]
    assert retries.run().sent == []


@pytest.mark.parametrize(("via", "at"), [(["email", 7], NOW), ([None], NOW), (["email"], "not a time")])
def test_a_notification_recorded_as_sent_refuses_a_way_that_is_not_text_or_a_time_that_is_not_one(via, at):
    (notification,) = notifications(*a_shipped_change())

    with pytest.raises(ValidationError):
        notification.as_sent(via, at)

    sent = notification.as_sent(["email"], NOW)
    assert sent.sent_via == ["email"] and sent.sent_at == NOW
    assert sent.model_dump(exclude={"sent_via", "sent_at"}) == notification.model_dump(exclude={"sent_via", "sent_at"})


def test_a_moved_collect_by_is_told_once_the_order_is_off_hold_and_not_while_it_stays_held():
    # A person's release that leaves the system's hold for a collect to confirm (Order.release) moves
    # the deadline with the order still held: the customer could not collect it yet, so nothing is
    # told until the release that lets them, with the deadline then.
    pickup = {"type": "pickup", "location_id": "wh1"}
    waiting = {**shipment("ready_for_pickup"), "collect_by": "2026-12-08T12:00:00Z"}
    held = order_doc(status="on_hold", fulfillment=pickup, shipments=[waiting])
    still_held = next_version(held, shipments=[{**waiting, "collect_by": "2026-12-10T12:00:00Z"}])
    released = next_version(
        still_held, status="allocated", shipments=[{**waiting, "collect_by": "2026-12-11T12:00:00Z"}]
    )

    assert kinds(held, still_held) == []
    (note,) = notifications(still_held, released)
    assert (note.kind, note.details["collect_by"]) == (NotificationKind.READY_FOR_PICKUP, "2026-12-11T12:00:00Z")
    assert note.id == ready_for_pickup_id(ORDER, released["version"], "shp_1")


def test_a_release_that_moves_collect_by_within_the_minute_told_tells_nothing_again():
    # Held and released within seconds (a hold placed by mistake): the deadline moves by the time held,
    # but what the customer was told ("collect it by 2026-12-08 12:00 UTC") is the same to the minute;
    # the same email again is noise. A minute more is a new deadline, told.
    pickup = {"type": "pickup", "location_id": "wh1"}
    waiting = {**shipment("ready_for_pickup"), "collect_by": "2026-12-08T12:00:00Z"}
    held = order_doc(status="on_hold", fulfillment=pickup, shipments=[waiting])
    seconds = next_version(held, status="allocated", shipments=[{**waiting, "collect_by": "2026-12-08T12:00:02.5Z"}])
    a_minute = next_version(held, status="allocated", shipments=[{**waiting, "collect_by": "2026-12-08T12:01:00Z"}])

    assert kinds(held, seconds) == []
    assert kinds(held, a_minute) == ["ready_for_pickup"]


def test_a_tracking_number_learnt_after_the_ship_is_told_as_the_parcels_number_not_as_a_second_shipping():
    """A parcel shipped under its label's number takes the carrier's later (shipment.shipped again,
    core.domain_events._renumbered): the customer is told the number it travels under, and not
    that the parcel has shipped once more."""
    old = order_doc(status="shipped", shipments=[{**shipment("shipped"), "tracking_number": "OMS0000000001"}])
    new = next_version(old, shipments=[{**shipment("shipped"), "tracking_number": "1ZLATER0001"}])

    (note,) = notifications(old, new)

    assert note.kind is NotificationKind.SHIPPED
    assert note.id == event_id(ORDER, 2, EventType.SHIPMENT_SHIPPED, "shp_1")
    assert note.details == {"shipment_id": "shp_1", "carrier": "flat", "tracking_number": "1ZLATER0001"}
    assert "tracking number" in note.subject.lower() and NUMBER in note.subject
    assert "1ZLATER0001" in note.body and "OMS0000000001" not in note.body and "has shipped" not in note.body


def test_the_customer_is_told_the_order_by_the_number_the_shop_gave_it():
    """The customer knows the number their storefront showed (the order's `external_id`), not the
    OMS's `ord_...` (seen by h719: a caller's "web-c1-a" nowhere in the mail). An order placed
    without one is named by the OMS's id."""
    old = order_doc(status="allocated", shipments=[shipment("pending")])
    new = next_version(old, status="shipped", shipments=[shipment("shipped")])

    (note,) = notifications(old, new)

    assert (note.subject, note.order_id) == (f"Your order {NUMBER} has shipped", ORDER)
    assert NUMBER in note.body and ORDER not in note.body

    old, new = ({**doc, "external_id": None} for doc in (old, new))
    (note,) = notifications(old, new)
    assert note.subject == f"Your order {ORDER} has shipped"


def test_a_parcel_holding_the_whole_order_is_told_as_the_order_not_as_part_of_it():
    """Most orders leave in one parcel: its customer is told their order has shipped, not "part of"
    it, which would have them wait for a rest that never comes."""
    old = order_doc(status="allocated", shipments=[shipment("pending")])
    new = next_version(old, status="shipped", shipments=[{**shipment("shipped"), "tracking_number": "1Z999"}])

    (note,) = notifications(old, new)

    assert note.body == f"Hello Ada,\n\nYour order {NUMBER} has shipped with flat. Tracking number: 1Z999.\n"

    renumbered = next_version(new, shipments=[{**shipment("shipped"), "tracking_number": "1ZLATER0001"}])
    (note,) = notifications(new, renumbered)
    assert note.body == f"Hello Ada,\n\nYour order {NUMBER}, shipped with flat, has the tracking number 1ZLATER0001.\n"


def test_a_parcel_holding_some_of_the_order_is_told_as_part_of_it():
    two = [{"line_id": "l1", "quantity": 2}]
    old = order_doc(status="allocated", shipments=[shipment("pending"), {**shipment("pending", "shp_2"), "lines": two}])
    old["lines"][0]["quantity"] = 3
    new = next_version(old, status="partially_shipped", shipments=[shipment("shipped"), old["shipments"][1]])

    (note,) = notifications(old, new)

    assert note.body == f"Hello Ada,\n\nPart of your order {NUMBER} has shipped with flat.\n"


def test_the_last_parcel_of_an_order_sent_in_several_is_told_as_the_rest_of_it():
    """Told "part of your order" again, the customer would wait for a parcel that never comes."""
    two = [{"line_id": "l1", "quantity": 2}]
    first, rest = shipment("delivered"), {**shipment("pending", "shp_2"), "lines": two}
    old = order_doc(status="partially_shipped", shipments=[first, rest])
    old["lines"][0]["quantity"] = 3
    new = next_version(old, status="shipped", shipments=[first, {**rest, "status": "shipped"}])

    (note,) = notifications(old, new)

    assert note.body == f"Hello Ada,\n\nThe rest of your order {NUMBER} has shipped with flat.\n"

    # A parcel its location rejected (cancelled) shipped none of its units: the one after it is not the rest.
    rejected = {**shipment("cancelled", "shp_3"), "lines": [{"line_id": "l1", "quantity": 1}]}
    old["lines"][0]["quantity"] = 4
    old["shipments"] = [first, rest, rejected]
    new = next_version(old, status="partially_shipped", shipments=[first, {**rest, "status": "shipped"}, rejected])
    (note,) = notifications(old, new)
    assert note.body == f"Hello Ada,\n\nPart of your order {NUMBER} has shipped with flat.\n"


def test_a_parcel_s_subject_tells_what_its_body_tells_part_the_rest_or_the_whole_order():
    """The subject is what an inbox shows: "Your order ... has shipped" above a first parcel of
    two had the customer think everything was on its way (found on make run, a split order)."""
    two = [{"line_id": "l1", "quantity": 2}]
    first, rest = shipment("pending"), {**shipment("pending", "shp_2"), "lines": two}
    old = order_doc(status="allocated", shipments=[first, rest])
    old["lines"][0]["quantity"] = 3
    shipped_first = next_version(old, status="partially_shipped", shipments=[{**first, "status": "shipped"}, rest])
    (part,) = notifications(old, shipped_first)
    assert part.subject == f"Part of your order {NUMBER} has shipped"

    shipped_rest = next_version(
        shipped_first, status="shipped", shipments=[shipped_first["shipments"][0], {**rest, "status": "shipped"}]
    )
    (the_rest,) = notifications(shipped_first, shipped_rest)
    assert the_rest.subject == f"The rest of your order {NUMBER} has shipped"

    whole = order_doc(status="allocated", shipments=[shipment("pending")])
    (all_of_it,) = notifications(whole, next_version(whole, status="shipped", shipments=[shipment("shipped")]))
    assert all_of_it.subject == f"Your order {NUMBER} has shipped"


def test_a_delay_retried_is_withdrawn_once_its_order_is_no_longer_late_but_not_while_it_is_held():
    # Shipped, cancelled or picked since, the order is no longer late: "delayed" would come after
    # the news that it is not. Held meanwhile (a hold leaves the late status, so the mark goes), it
    # is no less late for its customer, who is not told again of that lateness after the release
    # (the mark it resumes is the one told of): withdrawn only when they asked for the hold.

    # Late since before the change that marked it (the notification's created_at), as every mark is.
    since = NOW - timedelta(hours=3)
    late = Jeopardy(reason="allocated for longer than 2d", status=OrderStatus.ALLOCATED, since=since)
    order = a_stored_order(("TSHIRT", 1), id=ORDER, status=OrderStatus.ALLOCATED, jeopardy=late)
    old = order_doc(status="allocated")
    (delay,) = notifications(old, next_version(old, jeopardy=late.model_dump(mode="json")))
    assert late.since < delay.created_at

    assert not outdated(delay, order)
    shipped = order.model_copy(update={"status": OrderStatus.SHIPPED, "jeopardy": None})
    assert outdated(delay, shipped)
    for reason, withdrawn in (("fraud_review", False), ("customer_request", True)):
        held, _ = order.hold_for(reason, None, at=NOW + timedelta(minutes=2), actor="key_ops")
        assert held.jeopardy is None and outdated(delay, held) is withdrawn
    # Found on time by a lengthened deadline before the hold (jeopardy_cleared): the hold carries no
    # lateness for its release to resume, so nothing says the order is late.
    cleared, _ = order.clear_jeopardy("not past the deadline", at=NOW + timedelta(minutes=1), actor="jeopardy_scan")
    held, _ = cleared.hold_for("fraud_review", None, at=NOW + timedelta(minutes=2), actor="key_ops")
    assert held.hold is not None and held.hold.resume_late is None and outdated(delay, held)
    # Marked again since, late by the lengthened deadline too: that mark's own "delayed" tells it.
    later = Jeopardy(reason="allocated for longer than 3d", status=OrderStatus.ALLOCATED, since=NOW + timedelta(days=1))
    assert outdated(delay, cleared.model_copy(update={"jeopardy": later}))
    # Unless it is the lateness a release resumed (moved by the time held): the customer was told of it.
    resumed = cleared.model_copy(update={"jeopardy": later, "late_resumed": later.since})
    assert not outdated(delay, resumed)
    # Released before the scan marks that lateness again: late still, unmarked (late_resumed).
    assert not outdated(delay, cleared.model_copy(update={"late_resumed": later.since}))
    # Held after that mark: the lateness the hold resumes is the new mark's, whose "delayed" tells it.
    # Held after the resumed lateness was marked, or before: the one its customer was told of (kept
    # as it is stored).
    marked_again = cleared.model_copy(update={"jeopardy": later})
    for before, withdrawn in (
        (marked_again, True),
        (resumed, False),
        (resumed.model_copy(update={"jeopardy": None}), False),
    ):
        held, _ = before.hold_for("fraud_review", None, at=NOW + timedelta(days=2), actor="key_ops")
        assert held.hold is not None and held.hold.resume_late == later.since
        assert outdated(delay, Order.model_validate_json(held.stored_json())) is withdrawn


def test_a_retry_a_plugin_answers_what_the_spec_refuses_for_is_recorded_sent_and_not_retried_again():
    # Its provider back, the plugin sends and answers "email" (not a list): the retry pass handed it
    # over again every hour for a day, the customer getting it each time.
    class SendsThenSaysText:
        def __init__(self) -> None:
            self.sent: list[str] = []
            self.down = True

        @hookimpl
        def oms_notify(self, notification: Notification) -> list[str] | None:
            if self.down:
                raise RuntimeError("smtp down")
            self.sent.append(notification.id)
            return "email"  # type: ignore[return-value]

    store, plugin = MemoryStore(), SendsThenSaysText()
    Notifier(store, hook_with(plugin), lambda: NOW).notify(*a_shipped_change())
    plugin.down = False
    now = [NOW + timedelta(minutes=6)]
    retries = NotificationRetries(store, hook_with(plugin), lambda: now[-1], FakeOrders().get)

    done = retries.run()
    for hours in range(1, 25):
        now.append(NOW + timedelta(hours=hours))
        assert retries.run() == Retried()

    (recorded,) = store.items.values()
    assert plugin.sent == [recorded.id] and store.listed == {}
    assert recorded.sent_at == NOW + timedelta(minutes=6) and recorded.sent_via == []
    ((retry, why),) = done.refused
    assert retry.notification_id == recorded.id and "returned str, expected a list (oms_notify)" in why


class Slow:
    """A sender that answers only once the test lets it (`go`)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls = 0

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str]:
        self.calls += 1
        self.go.wait(5)
        return ["sms"]


def test_plugins_given_a_time_limit_send_within_it_and_a_failure_in_their_thread_is_deferred_by_its_type():
    store = MemoryStore()
    Notifier(store, hook_with(Mailer()), lambda: NOW).notify(*a_shipped_change(), seconds_left=lambda: 5.0)
    (recorded,) = store.items.values()
    assert recorded.sent_via == ["email"]

    store = MemoryStore()
    notified = Notifier(store, hook_with(Mailer(fail=True)), lambda: NOW).notify(
        *a_shipped_change(), seconds_left=lambda: 5.0
    )
    (recorded,) = store.items.values()
    assert notified == Notified(deferred=[(recorded, "RuntimeError")])


def test_no_time_left_defers_the_notification_without_calling_the_plugins():
    store, slow = MemoryStore(), Slow()
    slow.go.set()
    notified = Notifier(store, hook_with(slow), lambda: NOW).notify(*a_shipped_change(), seconds_left=lambda: 0.0)

    (recorded,) = store.items.values()
    assert notified == Notified(deferred=[(recorded, "NotifierOverdue")])
    assert slow.calls == 0


def test_a_call_past_its_limit_is_deferred_and_none_is_started_while_it_runs_then_they_are_again():
    store, slow = MemoryStore(), Slow()
    notifier = Notifier(store, hook_with(slow), lambda: NOW)
    old, new = a_shipped_change()
    try:
        first = notifier.notify(old, new, seconds_left=lambda: 0.01)
        other = {"id": "ord_" + "b" * 24}
        later = notifier.notify(old | other, new | other, seconds_left=lambda: 5.0)
    finally:
        slow.go.set()
    assert [kind for _, kind in first.deferred + later.deferred] == ["NotifierOverdue", "NotifierOverdue"]
    assert slow.calls == 1  # the second was never handed to the stuck plugins

    for stuck in [t for t in threading.enumerate() if t.name == "oms-notify"]:
        stuck.join()  # the stuck call ended (its answer dropped): the plugins are called again
    third_id = {"id": "ord_" + "c" * 24}
    third = notifier.notify(old | third_id, new | third_id, seconds_left=lambda: 5.0)
    assert len(third.sent) == 1 and slow.calls == 2


def test_the_retry_pass_defers_an_attempt_its_plugins_hang_in_past_the_time_left_and_calls_none_while_it_runs():
    # Waited for, the stuck plugin held the reconciler's run into its Timeout: what the run's passes
    # did was never logged or counted, and the next run met the same plugin.
    store, slow = MemoryStore(), Slow()
    for order_id in ("ord_" + "d" * 24, "ord_" + "e" * 24):
        old, new = a_shipped_change()
        Notifier(store, hook_with(Mailer(fail=True)), lambda: NOW).notify(
            old | {"id": order_id}, new | {"id": order_id}
        )
    retries = NotificationRetries(store, hook_with(slow), lambda: NOW + timedelta(minutes=6), FakeOrders().get)
    try:
        done = retries.run(seconds_left=lambda: 0.01)
    finally:
        slow.go.set()

    assert [(r.attempts, r.error) for r in done.deferred] == [(2, "NotifierOverdue"), (2, "NotifierOverdue")]
    assert done.sent == [] and slow.calls == 1


# --- Edges a customer meets -------------------------------------------------------------------------
def test_a_parcel_shipped_without_a_tracking_number_gives_plugins_no_empty_tracking_number():
    (note,) = notifications(*a_shipped_change())
    assert note.details == {"shipment_id": "shp_1", "carrier": "flat"}
    assert "Tracking number" not in note.body


def test_a_delay_is_not_told_again_for_the_lateness_a_release_resumed_but_is_for_a_new_one():
    # late_resumed: the lateness the release resumed, its `since` moved by the time held; the
    # customer was told of it before the hold. A later lateness (another `since`) is news.
    resumed_at = "2026-12-03T10:00:00Z"
    old = order_doc(status="allocated", late_resumed=resumed_at)
    late = {"reason": "allocated for longer than 2d", "status": "allocated", "since": resumed_at}
    assert kinds(old, next_version(old, jeopardy=late)) == []
    later = {**late, "reason": "allocated for longer than 3d", "since": "2026-12-04T10:00:00Z"}
    assert kinds(old, next_version(old, jeopardy=later)) == ["delayed"]


def a_pickup_ready(**parcel_fields: Any) -> Order:
    """The order of the pickup a ready_for_pickup notification tells of, its parcel changed by `parcel_fields`."""
    values: dict[str, Any] = {
        "id": "shp_1", "location_id": "store-sf", "lines": [ShipmentLine(line_id="L1", quantity=1)],
        "carrier": "flat", "service": "ground", "status": "ready_for_pickup",
        "collect_by": datetime(2026, 12, 8, 10, tzinfo=UTC),
    }  # fmt: skip
    parcel = Shipment(**{**values, **parcel_fields})
    return a_stored_order(("TSHIRT", 1), id=ORDER, status=OrderStatus.ALLOCATED, shipments=[parcel])


def test_a_pickup_ready_retried_is_withdrawn_once_collected_or_given_another_deadline():
    ready = Notification(
        id="evt_1", kind=NotificationKind.READY_FOR_PICKUP, order_id=ORDER, channel="web",
        to={"email": "ada@example.com"}, subject="ready", body="ready", created_at=NOW,
        details={"shipment_id": "shp_1", "collect_by": "2026-12-08T10:00:00Z"},
    )  # fmt: skip
    assert not outdated(ready, a_pickup_ready())
    assert outdated(ready, a_pickup_ready().model_copy(update={"shipments": []}))
    assert outdated(ready, a_pickup_ready(status="delivered"))  # collected
    assert outdated(ready, a_pickup_ready(collect_by=datetime(2026, 12, 9, 10, tzinfo=UTC)))  # told a new deadline
    # Moved within the minute it tells (a hold of seconds): no new deadline was told, this one holds.
    assert not outdated(ready, a_pickup_ready(collect_by=datetime(2026, 12, 8, 10, 0, 30, tzinfo=UTC)))
    # An order the pass cannot find is not taken for changed: what it tells may still hold.
    assert not outdated(ready, None)


def test_a_delay_retried_stays_true_for_an_order_marked_late_at_the_moment_it_was_told():
    # The scan found it late at the very moment of its deadline: that mark is the one told of.
    late = Jeopardy(reason="allocated for longer than 2d", status=OrderStatus.ALLOCATED, since=NOW)
    order = a_stored_order(("TSHIRT", 1), id=ORDER, status=OrderStatus.ALLOCATED, jeopardy=late)
    delay = Notification(
        id="evt_2", kind=NotificationKind.DELAYED, order_id=ORDER, channel="web", to={"email": "ada@example.com"},
        subject="delayed", body="delayed", created_at=NOW,
    )  # fmt: skip
    assert not outdated(delay, order)
    # On hold with no hold recorded: nothing says the lateness is gone.
    assert not outdated(delay, order.model_copy(update={"status": OrderStatus.ON_HOLD, "jeopardy": None}))


class SaysText:
    """A sender that sends, then answers a way as text where the hook's spec asks for a list."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str] | None:
        self.sent.append(notification.id)
        return "email"  # type: ignore[return-value]


def test_a_notification_a_plugin_sent_but_answered_wrongly_is_recorded_sent_not_left_to_the_retry_pass():
    store, plugin = MemoryStore(), SaysText()
    notified = Notifier(store, hook_with(plugin), lambda: NOW).notify(*a_shipped_change())

    (recorded,) = store.items.values()
    assert plugin.sent == [recorded.id] and recorded.sent_at == NOW and store.listed == {}
    assert [n.id for n, _ in notified.refused] == [recorded.id] and notified.deferred == []


def a_failed_notification(store: MemoryStore) -> Retry:
    Notifier(store, hook_with(Mailer(fail=True)), lambda: NOW).notify(*a_shipped_change())
    (retry,) = store.listed.values()
    return retry


def test_a_notification_failing_again_is_tried_after_15_minutes_then_hourly():
    store = MemoryStore()
    a_failed_notification(store)
    now = [NOW + timedelta(minutes=6)]
    retries = NotificationRetries(store, hook_with(Mailer(fail=True)), lambda: now[-1], FakeOrders().get)

    (second,) = retries.run().deferred
    now.append(now[-1] + timedelta(minutes=16))
    (third,) = retries.run().deferred

    assert (second.attempts, second.due) == (2, NOW + timedelta(minutes=21))
    assert (third.attempts, third.due) == (3, now[-1] + timedelta(hours=1))


def test_a_notification_is_given_up_at_the_day_after_its_first_attempt_not_tried_past_it():
    store, mailer = MemoryStore(), Mailer(fail=True)
    retry = a_failed_notification(store)
    # Its next attempt, failing, would be listed exactly at the deadline: given up now.
    store.listed[retry.notification_id] = replace(retry, attempts=3, due=NOW + timedelta(hours=22))
    retries = NotificationRetries(store, hook_with(mailer), lambda: NOW + timedelta(hours=23), FakeOrders().get)
    assert [r.notification_id for r in retries.run().abandoned] == [retry.notification_id]

    # Due at the deadline itself: given up without an attempt.
    store = MemoryStore()
    retry = a_failed_notification(store)
    mailer.fail = False
    retries = NotificationRetries(store, hook_with(mailer), lambda: NOW + timedelta(hours=24), FakeOrders().get)
    done = retries.run()
    assert [r.notification_id for r in done.abandoned] == [retry.notification_id] and mailer.sent == []


def test_a_retried_notification_that_no_later_change_can_make_untrue_reads_no_order():
    # Only a pickup ready and a delay can outdate (_OUTDATED_BY_CHANGES): a parcel shipped is not
    # worth an order read per retry.
    def no_read(order_id: str) -> Order | None:
        raise AssertionError(f"order {order_id} read")

    store, mailer = MemoryStore(), Mailer()
    retry = a_failed_notification(store)
    done = NotificationRetries(store, hook_with(mailer), lambda: NOW + timedelta(minutes=6), no_read).run()
    assert [r.notification_id for r in done.sent] == [retry.notification_id] and done.failed == {}


def test_a_retry_pass_that_finds_a_dependency_down_stops_there_and_says_so():
    from core.errors import TransientError

    class Down(MemoryStore):
        def claim(self, retry: Retry, at: datetime, next_due: datetime) -> tuple[Notification, Retry] | None:
            raise TransientError("the notifications table is throttled")

    store = Down()
    a_failed_notification(store)
    retries = NotificationRetries(store, hook_with(Mailer()), lambda: NOW + timedelta(minutes=6), FakeOrders().get)
    with pytest.raises(TransientError):
        retries.run()


def test_a_backordered_order_tells_what_waits_for_stock_by_name_under_its_event():
    old = order_doc(status="authorized", payment=AUTHORIZED)
    old["lines"] = [{**old["lines"][0], "quantity": 3}, {**old["lines"][0], "line_id": "l2", "sku": "MUG"},
                    {**old["lines"][0], "line_id": "l3", "sku": "CAP"}]  # fmt: skip
    held = [
        {"line_id": "l1", "location_id": "wh1", "quantity": 1},
        {"line_id": "l3", "location_id": "wh1", "quantity": 1},
        {"line_id": "l1", "location_id": "wh2", "quantity": 1},
    ]
    waiting = next_version(old, status="backordered", allocations=held)  # the caps are all reserved

    (note,) = notifications(
        old, waiting, products=lambda sku: type("Product", (), {"name": "Mug"}) if sku == "MUG" else None
    )

    assert note.kind is NotificationKind.BACKORDERED and note.id == event_id(ORDER, 2, EventType.ORDER_BACKORDERED)
    assert note.subject == f"Your order {NUMBER} is waiting for stock"
    assert f"Part of your order {NUMBER} is not in stock yet: 1 × TSHIRT, 1 × Mug." in note.body
    assert "as soon as it arrives" in note.body and note.details == {}
    nothing = next_version(old, status="backordered")
    (whole,) = notifications(old, nothing)
    assert f"Your order {NUMBER} is not in stock yet: 3 × TSHIRT, 1 × MUG, 1 × CAP." in whole.body
    assert kinds(waiting, next_version(waiting, allocations=[])) == []  # still waiting: told once


def test_a_backorder_notice_the_notifier_could_not_send_is_outdated_once_the_order_no_longer_waits():
    old = order_doc(status="authorized")
    (note,) = notifications(old, next_version(old, status="backordered"))

    def order(status: str, **fields: Any) -> Order:
        return a_stored_order(("TSHIRT", 1), id=ORDER, status=status, **fields)

    assert not outdated(note, order("backordered"))
    assert outdated(note, order("allocated")) and outdated(note, order("cancelled"))
    held = {"reason": "customer_request", "since": NOW}
    assert not outdated(note, order("on_hold", hold=Hold(**held, resume_to=OrderStatus.BACKORDERED)))
    assert outdated(note, order("on_hold", hold=Hold(**held, resume_to=OrderStatus.ALLOCATED)))
