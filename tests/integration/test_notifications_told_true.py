"""What a customer is told stays true of their order, in-process on moto: orders placed and changed
over HTTP (the workflow's steps, the jeopardy scan and the reconciler invoked here, each at a clock
the test moves), the Orders table's stream records as moto recorded them handed to the events
function, and the notifier plugins' messages read back."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import hookimpl
from core.errors import TransientError
from core.notifications import Notification
from functions.api.dependencies import container as api_container
from functions.bootstrap import Config, Container, bootstrap
from tests.builders import location_body, order_body, product_body
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_events, run_to_allocated
from tests.integration.test_events_and_webhooks import Context
from tests.integration.test_jeopardy_hold_clock import scan_at
from tests.unit.world import Clock

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_events() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        assert started.put("/inventory/MUG/store-sf", json={"on_hand": 100}).status_code == 200
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/products/CAP", json=product_body("7.77")).status_code == 201
        assert started.put("/inventory/CAP/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


class Mailer:
    """A notifier plugin: what it sent, in order; while `down` (its provider down), it raises. A retry
    pass may hand it another test's notification (this module's tests share their tables): read
    `sent_for` an order."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self.down = False

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str] | None:
        if self.down:
            raise TransientError("smtp relay down")
        self.sent.append(notification)
        return ["email"]

    def sent_for(self, order_id: str) -> list[Notification]:
        return [note for note in self.sent if note.order_id == order_id]


@contextmanager
def functions_at(clock: Clock, mailer: Mailer) -> Iterator[Container]:
    """The API's and the events function's containers, one built at `clock` with `mailer` plugged in."""
    from functions.events.app import container as events_container

    built = bootstrap(Config.from_env(), clock=clock)
    built.plugins.register(mailer)
    with api_container.override(built), events_container.override(built):
        yield built


def watched() -> tuple[TableStream, Clock, Mailer]:
    """The Orders table's stream from now on, a clock at now, and a notifier whose provider is up."""
    return TableStream(os.environ["ORDERS_TABLE"], from_now=True), Clock(datetime.now(UTC)), Mailer()


def consume(stream: TableStream) -> None:
    """The events function handed the Orders stream's records written since it last read them."""
    from functions.events.app import lambda_handler

    records = stream.new_records()
    assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}


def pickup_ready(api: InProcessApi) -> tuple[str, dict[str, Any]]:
    """A pickup order of one MUG at store-sf, allocated and its parcel readied: (order id, its parcel)."""
    body = order_body(
        external_id=f"told-true-{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}],
        fulfillment={"type": "pickup", "location_id": "store-sf"},
    )  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    (parcel,) = order["shipments"]
    ready = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ready")
    assert ready.status_code == 200, ready.text
    return order["id"], ready.json()["shipments"][0]


def test_a_pickup_its_customer_did_not_collect_is_not_told_it_is_delayed(api):
    """Ready at the store, never collected, and its expiry did not cancel it (the reconciler's pickup
    expiry waits while the payment plugin is down): 48 hours past collect_by the scan marks it late
    (the alarm is for the merchant). Its customer was told it is ready and until when; telling them
    now that it "is taking longer than we planned" is false, and says not to come for it."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order_id, parcel = pickup_ready(api)
        clock.now = datetime.fromisoformat(parcel["collect_by"]) + timedelta(hours=48, minutes=1)
        assert scan_at(clock)["marked"] == [order_id]
        consume(stream)

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["ready_for_pickup"]
    told = api.get(f"/orders/{order_id}/notifications").json()["items"]
    assert [note["kind"] for note in told] == ["ready_for_pickup"]


def told(api: InProcessApi, order_id: str) -> list[tuple[str, bool]]:
    """GET /orders/{id}/notifications: each notification's kind, and whether it was sent."""
    items = api.get(f"/orders/{order_id}/notifications").json()["items"]
    return [(note["kind"], note["sent_at"] is not None) for note in items]


def listed(built: Container, clock: Clock) -> set[str]:
    """The orders whose notifications wait listed for a retry pass, however late it runs."""
    return {retry.order_id for retry in built.notification_store.due(clock.now + timedelta(days=2))}


def retry_pass(built: Container, clock: Clock) -> tuple[list[str], set[str]]:
    """The reconciler's notifications pass run at `clock`: the orders of the notifications it withdrew
    (one entry a notification), and those still listed after it (`listed`)."""
    withdrawn = [retry.order_id for retry in built.notification_retries.run().withdrawn]
    return withdrawn, listed(built, clock)


def test_a_delay_the_notifier_could_not_send_is_not_sent_after_the_order_shipped(api):
    """Late, its customer's "delayed" deferred (the email provider down); the warehouse ships it
    minutes later and the provider is back: the customer is told it shipped. The retry pass, five
    minutes after the failed attempt, sent "your order is delayed" after "your order has shipped":
    the order is no longer late, so the customer is no longer told it is."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        placed = api.post("/orders", json=order_body(external_id=f"told-true-{next(_orders)}",
                                                     lines=[{"sku": "CAP", "quantity": 1}]))  # fmt: skip
        assert placed.status_code == 201, placed.text
        order = run_to_allocated(api, placed.json()["id"])
        clock.now = datetime.fromisoformat(order["updated_at"]) + timedelta(hours=49)
        assert scan_at(clock)["marked"] == [order["id"]]
        mailer.down = True
        consume(stream)
        assert told(api, order["id"]) == [("delayed", False)]

        mailer.down = False
        clock.advance(minutes=2)
        (parcel,) = order["shipments"]
        shipped = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ship", json={})
        assert shipped.status_code == 200, shipped.text
        consume(stream)
        clock.advance(minutes=4)
        withdrawn, left = retry_pass(built, clock)

    assert [note.kind.value for note in mailer.sent_for(order["id"])] == ["shipped"]
    assert told(api, order["id"]) == [("delayed", False), ("shipped", True)]
    assert order["id"] in withdrawn and order["id"] not in left


def readied_while_the_provider_was_down(
    api: InProcessApi, stream: TableStream, mailer: Mailer
) -> tuple[str, dict[str, Any]]:
    """`pickup_ready`'s order, its "ready for pickup" deferred (the provider down, back since)."""
    mailer.down = True
    order_id, parcel = pickup_ready(api)
    consume(stream)
    mailer.down = False
    return order_id, parcel


def test_a_ready_pickup_the_notifier_could_not_send_is_not_sent_once_its_customer_collected_it(api):
    """Readied while the provider was down: the customer came anyway (the store called them) and
    collected it. The retry pass sent "your order is ready for pickup, collect it by ..." after
    they had it in hand."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id, parcel = readied_while_the_provider_was_down(api, stream, mailer)
        clock.advance(minutes=2)
        collected = api.post(f"/orders/{order_id}/shipments/{parcel['id']}/deliver")
        assert (collected.status_code, collected.json()["status"]) == (200, "delivered"), collected.text
        consume(stream)
        clock.advance(minutes=4)
        withdrawn, left = retry_pass(built, clock)

    assert mailer.sent_for(order_id) == []
    assert told(api, order_id) == [("ready_for_pickup", False)]
    assert order_id in withdrawn and order_id not in left


def test_a_ready_pickups_deadline_the_notifier_could_not_send_is_not_sent_after_the_one_a_release_moved(
    api,
):
    """Readied while the provider was down (collect_by D), held and released (collect_by moved by
    the time held: the customer is told the new deadline). The retry pass then sent the first
    message, with D: the customer's last word was the wrong deadline."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id, parcel = readied_while_the_provider_was_down(api, stream, mailer)
        released = held_and_released(api, clock, order_id, timedelta(minutes=2))
        consume(stream)
        clock.advance(minutes=3)
        withdrawn, left = retry_pass(built, clock)

    (sent,) = mailer.sent_for(order_id)
    moved = released["shipments"][0]["collect_by"]
    assert moved != parcel["collect_by"] and sent.details["collect_by"] == moved
    assert told(api, order_id) == [("ready_for_pickup", False), ("ready_for_pickup", True)]
    assert order_id in withdrawn and order_id not in left


def held_and_released(api: InProcessApi, clock: Clock, order_id: str, held_for: timedelta) -> dict[str, Any]:
    """A minute on, the merchant holds the order (fraud review) and releases it `held_for` later:
    the order as the release answered it."""
    clock.advance(minutes=1)
    assert api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"}).status_code == 200
    clock.now += held_for
    released = api.post(f"/orders/{order_id}/release", json={})
    assert released.status_code == 200, released.text
    return released.json()


def late_and_deferred(api: InProcessApi, stream: TableStream, clock: Clock, mailer: Mailer) -> str:
    """A CAP order allocated 49 hours: marked late by the default 48 hours, its "delayed" deferred
    (the provider down). Its id."""
    placed = api.post("/orders", json=order_body(external_id=f"told-true-{next(_orders)}",
                                                 lines=[{"sku": "CAP", "quantity": 1}]))  # fmt: skip
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    clock.now = datetime.fromisoformat(order["updated_at"]) + timedelta(hours=49)
    assert order["id"] in scan_at(clock)["marked"]  # with an order of an earlier test, late too
    mailer.down = True
    consume(stream)
    assert told(api, order["id"]) == [("delayed", False)]
    return order["id"]


def unmarked_by_a_longer_deadline(
    api: InProcessApi, stream: TableStream, clock: Clock, mailer: Mailer, monkeypatch: pytest.MonkeyPatch, sla: str
) -> str:
    """`late_and_deferred`'s order (allocated 49 hours), then `Sla` deployed as `sla` (a deadline
    longer than 49 hours) and the next scan, two minutes later, unmarks it. Its id."""
    order_id = late_and_deferred(api, stream, clock, mailer)
    monkeypatch.setenv("OMS_SLA", sla)
    clock.advance(minutes=2)
    assert order_id in scan_at(clock)["unmarked"]
    return order_id


def test_a_delay_the_notifier_could_not_send_is_withdrawn_once_a_lengthened_deadline_unmarked_it(api, monkeypatch):
    """Marked late, its "delayed" deferred; `Sla` deployed with a longer deadline, the next scan
    unmarks it (jeopardy_cleared): the order is on time, so the retry pass withdraws the delay."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = unmarked_by_a_longer_deadline(api, stream, clock, mailer, monkeypatch, "allocated=96h")
        consume(stream)
        mailer.down = False
        clock.advance(minutes=4)
        withdrawn, left = retry_pass(built, clock)

    assert mailer.sent_for(order_id) == []
    assert order_id in withdrawn and order_id not in left


def test_a_delay_the_notifier_could_not_send_is_withdrawn_when_an_order_a_lengthened_deadline_unmarked_is_held(
    api, monkeypatch
):
    """Marked late, its "delayed" deferred; unmarked by a lengthened deadline (on time now), then
    held by the merchant (fraud review). A hold kept a late order's delay true (it is no less late
    for its customer), so the retry pass told the customer of an order on time that it is delayed:
    the hold carries no lateness (nothing for a release to resume), and nothing says it is late."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = unmarked_by_a_longer_deadline(api, stream, clock, mailer, monkeypatch, "allocated=96h")
        clock.advance(minutes=1)
        held = api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"})
        assert held.status_code == 200, held.text
        consume(stream)
        mailer.down = False
        clock.advance(minutes=3)
        withdrawn, left = retry_pass(built, clock)

    assert mailer.sent_for(order_id) == []
    assert told(api, order_id) == [("delayed", False)]
    assert order_id in withdrawn and order_id not in left


def shipped_orders(api: InProcessApi, count: int) -> list[str]:
    """`count` CAP orders placed, allocated and shipped: their ids."""
    ids = []
    for _ in range(count):
        placed = api.post("/orders", json=order_body(external_id=f"told-true-{next(_orders)}",
                                                     lines=[{"sku": "CAP", "quantity": 1}]))  # fmt: skip
        assert placed.status_code == 201, placed.text
        order = run_to_allocated(api, placed.json()["id"])
        (parcel,) = order["shipments"]
        shipped = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ship", json={})
        assert shipped.status_code == 200, shipped.text
        ids.append(order["id"])
    return ids


class UnderTheReserve(Context):
    """An invocation with 2.5 s left at every ask: under the 3 s a record after the first needs
    (RECORD_RESERVE_MILLIS), over the 1 s kept past a notifier plugin's call (NOTIFY_RESERVE_MILLIS).
    Fixed, not a 1 s Timeout's wall clock: with under 1 s left the plugins are not called at all
    (the notification deferred to the retry pass), and with a clock it depended on the test's speed."""

    def get_remaining_time_in_millis(self) -> int:
        return 2_500


def test_records_left_to_the_next_batch_for_lack_of_time_tell_each_customer_once(api):
    """The events function starts no record with under 3 s left (RECORD_RESERVE_MILLIS): the rest of
    the batch is reported failed unprocessed and handed out again from its first. Invoked every time
    with that little left (UnderTheReserve), each invocation handles one record: every order's "shipped" is still
    sent once, and recorded sent once."""
    from functions.events.app import lambda_handler

    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order_ids = shipped_orders(api, 2)
        records = stream.new_records()
        handed_out, invocations = len(records), 0
        while records:
            invocations += 1
            failed = lambda_handler({"Records": records}, UnderTheReserve())
            ids = [record["dynamodb"]["SequenceNumber"] for record in records]
            left = [item["itemIdentifier"] for item in failed["batchItemFailures"]]
            assert left == ids[1:]  # the first record handled, the rest left to the stream
            records = records[1:]

    assert invocations == handed_out > 2
    for order_id in order_ids:
        assert [note.kind.value for note in mailer.sent_for(order_id)] == ["shipped"]
        assert told(api, order_id) == [("shipped", True)]


class Died(BaseException):
    """The function ended mid-record (its Timeout): nothing of the invocation catches it."""


def test_a_notification_recorded_before_the_function_died_is_sent_once_on_redelivery(api, monkeypatch):
    """The notification is recorded, then the function ends (its Timeout) before the plugins are
    handed it (nothing sent, nothing deferred): the stream hands the batch out again, and the record
    finds it recorded and unsent, so the plugins are handed it then, once; a third delivery sends
    nothing."""
    import core.notifications as notifier
    from functions.events.app import lambda_handler

    handed = notifier.call_hook

    def dies_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(notifier, "call_hook", handed)
        raise Died()

    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        (order_id,) = shipped_orders(api, 1)
        records = stream.new_records()
        monkeypatch.setattr(notifier, "call_hook", dies_once)
        with pytest.raises(Died):
            lambda_handler({"Records": records}, context("EventsFunction"))
        assert told(api, order_id) == [("shipped", False)]
        assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}
        assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["shipped"]
    assert told(api, order_id) == [("shipped", True)]


def test_a_delay_unmarked_and_marked_again_before_its_retry_is_told_once(api, monkeypatch):
    """Marked late, its "delayed" deferred (the provider down); a lengthened deadline unmarks it,
    and the order, late by the new one too, is marked again while the provider is still down: that
    mark's "delayed" is deferred as well. The retry pass sent both: the customer was told twice that
    their order is delayed. The first tells of a mark cleared since; the second is the one sent."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = unmarked_by_a_longer_deadline(api, stream, clock, mailer, monkeypatch, "allocated=50h")
        clock.advance(minutes=60)
        assert order_id in scan_at(clock)["marked"]
        consume(stream)
        assert told(api, order_id) == [("delayed", False), ("delayed", False)]
        mailer.down = False
        clock.advance(minutes=6)
        withdrawn, left = retry_pass(built, clock)

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["delayed"]
    assert sorted(told(api, order_id)) == [("delayed", False), ("delayed", True)]
    assert withdrawn.count(order_id) == 1 and order_id not in left


def test_a_delay_unmarked_marked_again_and_held_before_its_retry_is_told_once(api, monkeypatch):
    """Marked late, its "delayed" deferred (the provider down); a lengthened deadline unmarks it,
    the order, late by the new one too, is marked again, and that mark's "delayed" is sent (the
    provider back). Then the merchant holds it before the retry pass: the retry sent the first
    "delayed" too, the customer told twice, as the hold's lateness (the new mark's) kept it true."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = unmarked_by_a_longer_deadline(api, stream, clock, mailer, monkeypatch, "allocated=50h")
        clock.advance(minutes=60)
        assert order_id in scan_at(clock)["marked"]
        mailer.down = False
        consume(stream)
        assert told(api, order_id) == [("delayed", False), ("delayed", True)]
        clock.advance(minutes=1)
        held = api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"})
        assert held.status_code == 200, held.text
        consume(stream)
        clock.advance(minutes=5)
        withdrawn, left = retry_pass(built, clock)

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["delayed"]
    assert sorted(told(api, order_id)) == [("delayed", False), ("delayed", True)]
    assert withdrawn.count(order_id) == 1 and order_id not in left


def test_a_delay_the_notifier_could_not_send_is_sent_once_when_its_lateness_a_release_resumed_is_held_again(api):
    """Marked late, its "delayed" deferred; held two hours and released (the lateness resumed, its
    `since` moved past that notification by the time held), marked again by the scan (no second
    notice: the same lateness), then held again before the retry pass. The lateness the hold
    resumes is the one the deferred "delayed" tells: sent, once."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = late_and_deferred(api, stream, clock, mailer)  # allocated 49 hours
        held_and_released(api, clock, order_id, timedelta(hours=2))
        clock.advance(minutes=2)
        assert order_id in scan_at(clock)["marked"]
        clock.advance(minutes=1)
        assert api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review"}).status_code == 200
        consume(stream)
        assert told(api, order_id) == [("delayed", False)]
        mailer.down = False
        clock.advance(minutes=5)
        withdrawn, left = retry_pass(built, clock)

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["delayed"]
    assert told(api, order_id) == [("delayed", True)]
    assert order_id not in withdrawn and order_id not in left


def test_a_delay_the_notifier_could_not_send_is_sent_once_its_order_is_released_before_the_scan_marks_it_again(api):
    """Marked late, its "delayed" deferred; held and released before the retry pass: the release
    resumes the lateness unmarked (late_resumed) until the scan marks it again, and that mark makes
    no second notice (its customer was told of it). The retry pass withdrew the delay as of an order
    no longer late, so its customer was never told."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id = late_and_deferred(api, stream, clock, mailer)  # allocated 49 hours
        held_and_released(api, clock, order_id, timedelta(minutes=2))
        consume(stream)
        mailer.down = False
        clock.advance(minutes=3)
        withdrawn, _ = retry_pass(built, clock)
        clock.advance(minutes=1)
        assert order_id in scan_at(clock)["marked"]
        consume(stream)
        left = listed(built, clock)

    assert [note.kind.value for note in mailer.sent_for(order_id)] == ["delayed"]
    assert told(api, order_id) == [("delayed", True)]
    assert order_id not in withdrawn and order_id not in left
