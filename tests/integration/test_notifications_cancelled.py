"""A customer is told when their order, or part of it, is cancelled, or waits for stock
(backordered), in-process on moto: orders placed and changed over HTTP (the workflow's steps, the
pickup expiry and the jeopardy scan invoked here, at a clock the test moves), the Orders table's
stream records handed to the events function, and what the notifier plugin sent read back. Told
why in the customer's words (never the OMS's reason code nor a person's note), and what happens to
their money: an authorization released is no refund, and nothing is said to be charged or refunded
that was not."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import Backordered, PaymentDeclined
from core.notifications import Notification
from functions.bootstrap import Config, bootstrap
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import InProcessApi, in_process_api_with_events, run_to_allocated
from tests.integration.test_jeopardy_hold_clock import scan_at
from tests.integration.test_notifications_told_true import consume, functions_at, pickup_ready, told, watched

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_events() as started:
        assert started.put("/products/MUG", json=product_body("12.50", name="Blue mug")).status_code == 201
        assert started.put("/products/CAP", json=product_body("7.77", name="Red cap")).status_code == 201
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        assert started.put("/inventory/MUG/store-sf", json={"on_hand": 100}).status_code == 200
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/CAP/wh-east", json={"on_hand": 100}).status_code == 200
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 100}).status_code == 200
        west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
        assert started.put("/locations/wh-west", json=west).status_code == 201
        assert started.put("/products/PEN", json=product_body("3.00", name="Green pen")).status_code == 201
        assert started.put("/inventory/PEN/wh-west", json={"on_hand": 100}).status_code == 200
        yield started


def placed(api: InProcessApi, *lines: tuple[str, int], token: str = "tok_approve") -> dict:
    body = order_body(
        external_id=f"shop-{next(_orders)}", lines=[{"sku": sku, "quantity": units} for sku, units in lines],
        payment={"method": "test", "token": token},
    )  # fmt: skip
    answer = api.post("/orders", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def steps():
    return bootstrap(Config.from_env()).workflow


def only(notes: list[Notification]) -> Notification:
    (note,) = notes
    assert note.kind.value == "cancelled"
    return note


def test_a_declined_payment_tells_the_customer_the_order_is_cancelled_and_nothing_was_charged(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = placed(api, ("CAP", 1), token="tok_decline")
        with pytest.raises(PaymentDeclined):
            steps().authorize_payment(order["id"], attempt=0)
        steps().fail_payment(order["id"], "PaymentDeclined", '{"errorMessage": "test gateway: declined"}')
        consume(stream)

    note = only(mailer.sent_for(order["id"]))
    number = order["external_id"]
    assert note.subject == f"Your order {number} has been cancelled"
    assert f"We could not take the payment for your order {number}: it was declined" in note.body
    assert "You have not been charged for it." in note.body
    assert "test gateway" not in note.body and "PaymentDeclined" not in note.body
    assert note.details == {"reason": "payment_declined"}
    assert told(api, order["id"]) == [("cancelled", True)]


def test_a_persons_cancel_tells_the_customer_without_the_persons_reason_and_the_authorization_is_no_refund(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = run_to_allocated(api, placed(api, ("MUG", 2))["id"])
        cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "fraud suspected by agent Bob"})
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled"), cancelled.text
        consume(stream)  # the cancel's record, and the void's after it, which tells nothing more

    note = only(mailer.sent_for(order["id"]))
    number, authorized = order["external_id"], order["payment"]["authorized"]
    assert note.subject == f"Your order {number} has been cancelled"
    assert note.body.startswith("Hello Ada Lovelace,\n\nYour order " + number + " has been cancelled.")
    assert "fraud" not in note.body and "Bob" not in note.body and "refund" not in note.body.lower()
    assert "You have not been charged for it." in note.body
    assert f"The {authorized['amount']} USD authorized on your payment method will be released" in note.body
    assert note.details == {}


def test_an_order_that_lost_the_race_for_the_last_units_tells_its_customer_they_ran_out(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = placed(api, ("CAP", 1), ("MUG", 1))
        steps().authorize_payment(order["id"], attempt=0)
        steps().cancel_after_failure(order["id"], "OutOfStock", '{"errorMessage": "no stock at wh-east"}')
        consume(stream)

    note = only(mailer.sent_for(order["id"]))
    assert "is no longer in stock" in note.body and "wh-east" not in note.body
    assert "out_of_stock" not in note.body
    assert note.details == {"reason": "out_of_stock"}


def test_a_pickup_nobody_collected_tells_its_customer_it_is_cancelled_past_its_collect_by(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order_id, parcel = pickup_ready(api)
        collect_by = datetime.fromisoformat(parcel["collect_by"]).astimezone(UTC)
        clock.now = collect_by + timedelta(minutes=5)
        built.actions.expire_pickup(order_id, parcel["id"], actor="pickup_expiry")
        consume(stream)

    kinds = [note.kind.value for note in mailer.sent_for(order_id)]
    assert kinds == ["ready_for_pickup", "cancelled"]
    note = mailer.sent_for(order_id)[-1]
    assert f"was not collected by {collect_by:%Y-%m-%d %H:%M} UTC" in note.body
    assert note.details == {"reason": "not_collected"}


def test_a_hold_that_expired_tells_its_customer_the_order_is_cancelled(api, monkeypatch):
    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "2")
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = run_to_allocated(api, placed(api, ("CAP", 1))["id"])
        held = api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review", "note": "velocity rule 7"})
        assert held.status_code == 200, held.text
        clock.now = datetime.fromisoformat(held.json()["updated_at"]) + timedelta(days=2, minutes=1)
        scan_at(clock)
        consume(stream)

    assert api.get(f"/orders/{order['id']}").json()["status"] == "cancelled"
    note = only([n for n in mailer.sent_for(order["id"]) if n.kind.value != "delayed"])
    assert "was on hold for longer than we can keep an order" in note.body
    assert "fraud" not in note.body and "velocity" not in note.body
    assert note.details == {"reason": "held_too_long"}


def test_a_cancel_is_told_once_when_its_stream_record_is_redelivered(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = run_to_allocated(api, placed(api, ("CAP", 1))["id"])
        assert api.post(f"/orders/{order['id']}/cancel", json={"reason": "asked"}).status_code == 200
        records = stream.new_records()
        from functions.events.app import lambda_handler
        from tests.integration.import_support import context

        for _ in range(2):
            assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}

    only(mailer.sent_for(order["id"]))
    assert told(api, order["id"]) == [("cancelled", True)]


def test_units_cancelled_before_they_ship_are_told_by_name_with_the_new_total(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = run_to_allocated(api, placed(api, ("MUG", 2), ("CAP", 1))["id"])
        mug = next(line["line_id"] for line in order["lines"] if line["sku"] == "MUG")
        body = {"reason": "customer called", "lines": [{"line_id": mug, "quantity": 1}]}
        cut = api.post(f"/orders/{order['id']}/cancel", json=body)
        assert (cut.status_code, cut.json()["status"]) == (200, "allocated"), cut.text
        consume(stream)

    note = only(mailer.sent_for(order["id"]))
    number, total = order["external_id"], cut.json()["totals"]["grand_total"]["amount"]
    assert note.subject == f"Part of your order {number} has been cancelled"
    assert f"We have cancelled 1 × Blue mug of your order {number}." in note.body
    assert f"Its new total is {total} USD." in note.body
    assert "customer called" not in note.body
    assert note.details == {"grand_total": total, "currency": "USD"}


def test_the_rest_of_a_partly_shipped_order_cancelled_is_told_as_the_rest(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        order = run_to_allocated(api, placed(api, ("MUG", 1), ("PEN", 1))["id"])
        first, _ = order["shipments"]  # the pens are at wh-west only: two parcels
        assert api.post(f"/orders/{order['id']}/shipments/{first['id']}/ship", json={}).status_code == 200
        done = api.post(f"/orders/{order['id']}/cancel", json={"reason": "no longer wanted"})
        assert (done.status_code, done.json()["status"]) == (200, "shipped"), done.text
        consume(stream)

    note = mailer.sent_for(order["id"])[-1]
    assert note.kind.value == "cancelled"
    assert note.subject == f"The rest of your order {order['external_id']} has been cancelled"


def test_a_cancel_the_notifier_could_not_send_is_sent_by_the_retry_pass_under_the_same_id(api):
    """The provider down at the cancel: the notice waits, unsent, and the reconciler's pass sends it
    (a cancelled order stays cancelled: nothing withdraws it), once."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        order = run_to_allocated(api, placed(api, ("CAP", 1))["id"])
        mailer.down = True
        assert api.post(f"/orders/{order['id']}/cancel", json={"reason": "asked"}).status_code == 200
        consume(stream)
        assert told(api, order["id"]) == [("cancelled", False)]
        mailer.down = False
        clock.advance(minutes=6)
        built.notification_retries.run()

    note = only(mailer.sent_for(order["id"]))
    (recorded,) = api.get(f"/orders/{order['id']}/notifications").json()["items"]
    assert recorded["id"] == note.id and recorded["sent_at"] is not None


def test_a_backordered_order_tells_its_customer_what_waits_and_then_that_it_shipped(api):
    stream, clock, mailer = watched()
    with functions_at(clock, mailer):
        kite = product_body("30.00", name="Box kite", allow_backorder=True)
        assert api.put("/products/KITE", json=kite).status_code in (200, 201)
        order = placed(api, ("KITE", 2))
        steps().authorize_payment(order["id"], attempt=0)
        with pytest.raises(Backordered):
            steps().reserve_stock(order["id"])
        assert api.put("/inventory/KITE/wh-east", json={"on_hand": 5}).status_code == 200
        steps().reserve_stock(order["id"])  # what the backorder queue runs once units arrive
        steps().create_shipments(order["id"])
        allocated = api.get(f"/orders/{order['id']}").json()
        (parcel,) = allocated["shipments"]
        assert api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ship", json={}).status_code == 200
        consume(stream)

    waited, shipped = mailer.sent_for(order["id"])
    assert (waited.kind.value, shipped.kind.value) == ("backordered", "shipped")
    assert f"Your order {order['external_id']} is not in stock yet: 2 × Box kite." in waited.body


def test_a_wait_for_stock_the_notifier_could_not_send_is_withdrawn_once_the_units_came(api):
    """Backordered while the provider was down; the units arrive and the order is allocated before the
    retry pass: "your order is waiting for stock" would come as its parcel is being packed."""
    stream, clock, mailer = watched()
    with functions_at(clock, mailer) as built:
        kite = product_body("40.00", name="Delta kite", allow_backorder=True)
        assert api.put("/products/DELTA", json=kite).status_code == 201
        order = placed(api, ("DELTA", 1))
        steps().authorize_payment(order["id"], attempt=0)
        with pytest.raises(Backordered):
            steps().reserve_stock(order["id"])
        mailer.down = True
        consume(stream)
        mailer.down = False
        assert api.put("/inventory/DELTA/wh-east", json={"on_hand": 1}).status_code == 200
        steps().reserve_stock(order["id"])
        steps().create_shipments(order["id"])
        clock.advance(minutes=6)
        withdrawn = [retry.order_id for retry in built.notification_retries.run().withdrawn]

    assert order["id"] in withdrawn and mailer.sent_for(order["id"]) == []
    assert told(api, order["id"]) == [("backordered", False)]
