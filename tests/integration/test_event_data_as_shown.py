"""What a receiving system gets, next to what the API shows: an order placed, held and released,
allocated in two parcels, one shipped and delivered, refunded and returned over HTTP in
process on moto (the workflow's steps run here), the Orders and Returns tables' stream records as
moto recorded them handed to the events function (each batch twice: a redelivery), and every event
on the bus held against the API's answers at that version: `data.order` is GET /orders/{id}
(label links null), `data.shipment` its shipment, `data.refund` its entry of GET
/orders/{id}/refunds, `data.return` GET /returns/{id}. No system-only field, and one id per change.
Every event is also what GET /openapi.json's webhook for its type says a delivery is: a receiver
generated from the document reads it (documented_events)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.builders import location_body, order_body, product_body
from tests.integration.documented_events import assert_documented
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_labels
from tests.integration.return_steps import services, step  # noqa: F401
from tests.integration.test_cancel_units_api import allocated

CHANNEL = "shown"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels(webhooks=True) as started, pytest.MonkeyPatch.context() as env:
        from functions.bootstrap import forget_warm_containers

        sqs = boto3.client("sqs", region_name="us-east-1")
        events = boto3.client("events", region_name="us-east-1")
        events.create_event_bus(Name="test-events")
        tap = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
        tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="all", EventBusName="test-events", EventPattern=json.dumps({"source": ["oms"]}))
        events.put_targets(Rule="all", EventBusName="test-events", Targets=[{"Id": "tap", "Arn": tap_arn}])
        env.setenv("EVENT_BUS_NAME", "test-events")
        env.setenv("WEBHOOK_QUEUE_URL", sqs.create_queue(QueueName="webhook-deliveries")["QueueUrl"])
        env.setenv("BUS_TAP", tap)
        forget_warm_containers()
        for sku, price in (("MUG", "12.50"), ("PEN", "3.33")):
            assert started.put(f"/products/{sku}", json=product_body(price)).status_code == 201
        west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
        assert started.put("/locations/wh-west", json=west).status_code == 201
        assert started.put("/inventory/MUG/wh-west", json={"on_hand": 100}).status_code == 200
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/PEN/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


class Receiver:
    """The bus as another system sees it, fed by the stream records of each step."""

    def __init__(self, api: InProcessApi) -> None:
        import os

        self.api = api
        # Not what earlier tests wrote.
        self.orders = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
        self.returns = TableStream(os.environ["RETURNS_TABLE"], from_now=True)
        self.tap = os.environ["BUS_TAP"]
        self.seen: dict[str, str] = {}  # every event id sent, with its type
        self.document = api.get("/openapi.json", key=None).json()

    def events(self) -> list[dict[str, Any]]:
        """The events of what was written since the last call, each stream batch handed twice."""
        from functions.events.app import lambda_handler

        for records in (self.orders.new_records(), self.returns.new_records()):
            for _ in range(2 if records else 0):
                assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}
        sqs = boto3.client("sqs", region_name="us-east-1")
        found: dict[str, dict[str, Any]] = {}
        while batch := sqs.receive_message(QueueUrl=self.tap, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                sqs.delete_message(QueueUrl=self.tap, ReceiptHandle=message["ReceiptHandle"])
                event = json.loads(message["Body"])["detail"]
                # One change, one id: the same id always carries the same event.
                assert found.setdefault(event["id"], event) == event
                assert_documented(self.document, event)
        self.seen |= {event_id: event["type"] for event_id, event in found.items()}
        return list(found.values())

    def order_as_shown(self, order_id: str) -> dict[str, Any]:
        order = self.api.get(f"/orders/{order_id}").json()
        for shipment in order["shipments"]:
            shipment["label_url"] = None  # signed at each read: an event's is null (README)
        return order

    def check(self, order_id: str, expected: set[str]) -> list[dict[str, Any]]:
        """The step's events, of the types `expected`; those at the order's version now (the last
        write of the step) carry the order, shipment, refund and return as the API shows them."""
        events = self.events()
        assert {e["type"] for e in events} == expected, [e["type"] for e in events]
        order = self.order_as_shown(order_id)
        refunds = {r["id"]: r for r in self.api.get(f"/orders/{order_id}/refunds").json()["items"]}
        for event in events:
            data = event["data"]
            if data["order"]["version"] == order["version"]:
                assert data["order"] == order, event["type"]
            else:  # an earlier write of the step: the same fields at least, none of the system's own
                assert set(data["order"]) == set(order), event["type"]
                shown_fields = {frozenset(shipment) for shipment in order["shipments"]}
                assert {frozenset(shipment) for shipment in data["order"]["shipments"]} <= shown_fields
            if "shipment" in data and data["order"]["version"] == order["version"]:
                (shown,) = [s for s in order["shipments"] if s["id"] == data["shipment"]["id"]]
                assert data["shipment"] == shown
            if "refund" in data:
                assert data["refund"] == refunds[data["refund"]["id"]], event["type"]
            if "return" in data:
                shown_return = self.api.get(f"/returns/{data['return']['id']}").json()
                shown_return["label_url"] = None
                if shown_return["version"] == data["return"]["version"]:
                    assert data["return"] == shown_return, event["type"]
            assert data["order"]["channel"] == CHANNEL
        return events


def subscribe(api: InProcessApi, key: str, channel: str | None) -> str:
    """A subscription to every type made by `key`, naming no channel: a channel key's is its channel's."""
    body = {"url": "http://127.0.0.1:9/hooks", "events": ["*"]}
    answer = api.request("POST", "/webhooks", json=body, key=key)
    assert answer.status_code == 201, answer.text
    assert answer.json()["channel"] == channel
    return answer.json()["id"]


def logged(api: InProcessApi, webhook_id: str) -> dict[str, str]:
    """The event ids on a subscription's delivery log, with their types (each must be there once)."""
    items = api.get(f"/webhooks/{webhook_id}/deliveries", params={"limit": 100}).json()["items"]
    assert len({item["event_id"] for item in items}) == len(items)
    return {item["event_id"]: item["event_type"] for item in items}


def test_every_event_carries_the_objects_as_the_api_shows_them(api, services):  # noqa: F811
    from tests.integration.in_process import issue

    receiver = Receiver(api)
    own = subscribe(api, issue(api, "webhooks:write", channel=CHANNEL), CHANNEL)
    other = subscribe(api, issue(api, "webhooks:write", channel="elsewhere"), "elsewhere")
    unbound = subscribe(api, api.admin_key, None)
    body = order_body(
        channel=CHANNEL,
        external_id="shown-1",
        lines=[{"sku": "MUG", "quantity": 3}, {"sku": "PEN", "quantity": 1}],
    )
    placed = api.post("/orders", json=body, headers={"Idempotency-Key": "shown-1"})
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    receiver.check(order_id, {"order.created"})

    hold = api.post(f"/orders/{order_id}/hold", json={"reason": "customer_request", "note": "call first"})
    assert hold.status_code == 200, hold.text
    receiver.check(order_id, {"order.on_hold"})
    release = api.post(f"/orders/{order_id}/release", json={"note": "called"}, headers={"Idempotency-Key": "r1"})
    assert release.status_code == 200, release.text
    receiver.check(order_id, {"order.released"})

    from functions.bootstrap import Config, bootstrap

    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    receiver.check(order_id, {"order.authorized", "order.allocated"})

    order = api.get(f"/orders/{order_id}").json()
    west = next(s for s in order["shipments"] if s["location_id"] == "wh-west")
    shipped = api.post(f"/orders/{order_id}/shipments/{west['id']}/ship", json={}, headers={"Idempotency-Key": "s1"})
    assert shipped.status_code == 200, shipped.text
    receiver.check(order_id, {"shipment.shipped"})
    delivered = api.post(f"/orders/{order_id}/shipments/{west['id']}/deliver", json={})
    assert delivered.status_code == 200, delivered.text
    receiver.check(order_id, {"shipment.delivered"})

    refund = {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "late"}
    refunded = api.post(f"/orders/{order_id}/refunds", json=refund, headers={"Idempotency-Key": "f1"})
    assert refunded.status_code == 201, refunded.text
    receiver.check(order_id, {"refund.succeeded"})

    lines = [{"line_id": "L1", "quantity": 1, "reason": "broken", "reason_code": "damaged"}]
    asked = api.post(f"/orders/{order_id}/returns", json={"lines": lines}, headers={"Idempotency-Key": "t1"})
    assert asked.status_code == 201, asked.text
    return_id = asked.json()["id"]
    receiver.check(order_id, {"return.created"})
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    assert api.post(f"/returns/{return_id}/receive", json=receipt).status_code in (200, 202)
    for name in ("receive", "restock", "record", "refund"):
        step(name, return_id)
    receiver.check(order_id, {"return.received", "refund.succeeded"})

    # Every event once on the delivery log of the channel's subscription and of the unbound one,
    # though each stream batch was handed over twice; none on another channel's.
    assert logged(api, own) == receiver.seen and logged(api, unbound) == receiver.seen
    assert logged(api, other) == {}


def test_a_rejected_parcel_and_a_cancel_carry_the_order_as_the_api_shows_it(api):
    """A location's reject (its parcel leaves the order, which is sourced again without it) and a
    cancel of what is left: the events' order is GET /orders/{id} at their version."""
    receiver = Receiver(api)
    order_id = allocated(api, ("MUG", 1), channel=CHANNEL)["id"]
    receiver.check(order_id, {"order.created", "order.authorized", "order.allocated"})

    (parcel,) = api.get(f"/orders/{order_id}").json()["shipments"]
    rejected = api.post(f"/orders/{order_id}/shipments/{parcel['id']}/reject", json={"reason": "damaged stock"})
    assert rejected.status_code == 200, rejected.text
    # Sent back to be sourced (order.authorized: its parcel is gone), the rejected parcel cancelled.
    events = receiver.check(order_id, {"shipment.rejected", "order.authorized"})
    (reject,) = [e for e in events if e["type"] == "shipment.rejected"]
    assert reject["data"]["shipment"] == {**parcel, "status": "cancelled", "label_url": None}
    cancelled = api.post(f"/orders/{order_id}/cancel", json={"reason": "no location left"})
    assert cancelled.status_code == 200, cancelled.text
    receiver.check(order_id, {"order.cancelled"})


def test_a_backordered_orders_event_carries_it_as_the_api_shows_it_with_awaiting_stock_null(api):
    """What it waits for is computed at each read and never stored (README Backorders): the
    event's order is GET /orders/{id} at its version, except `awaiting_stock`, null."""
    from core.errors import Backordered
    from tests.integration.test_cancel_units_api import authorized

    assert api.put("/products/KITE", json=product_body("8.00", allow_backorder=True)).status_code == 201
    assert api.put("/inventory/KITE/wh-west", json={"on_hand": 1}).status_code == 200
    receiver = Receiver(api)
    order_id, workflow = authorized(api, ("KITE", 3), channel=CHANNEL)
    with contextlib.suppress(Backordered):
        workflow.reserve_stock(order_id)
    (event,) = [e for e in receiver.events() if e["type"] == "order.backordered"]
    shown = receiver.order_as_shown(order_id)
    assert shown["status"] == "backordered" and shown["version"] == event["data"]["order"]["version"]
    assert shown["awaiting_stock"]["lines"][0]["waiting_quantity"] == 2
    assert event["data"]["order"] == {**shown, "awaiting_stock": None}


def test_a_declined_payment_a_last_parcel_and_a_refused_refund_are_events_as_the_api_and_the_document_show_them(api):
    """The types the life above does not reach, as cheaply: a declined authorization
    (`order.payment_failed`, as the workflow's FailPayment ends it), an order's only parcel delivered
    (`order.delivered` with `shipment.delivered`) and a refund the gateway refuses (`refund.failed`)."""
    from core.errors import PaymentDeclined
    from functions.bootstrap import Config, bootstrap
    from tests.integration.test_cancel_units_api import authorized

    receiver = Receiver(api)
    with pytest.raises(PaymentDeclined):
        authorized(api, ("PEN", 1), channel=CHANNEL, payment={"method": "test", "token": "tok_decline"})
    (declined,) = {e["data"]["order"]["id"] for e in receiver.events() if e["type"] == "order.created"}
    bootstrap(Config.from_env()).workflow.fail_payment(declined, "PaymentDeclined", "{}")  # the ASL's Catch
    receiver.check(declined, {"order.payment_failed"})

    token = {"method": "test", "token": "tok_refund_decline"}
    order = allocated(api, ("PEN", 1), channel=CHANNEL, payment=token)
    receiver.check(order["id"], {"order.created", "order.authorized", "order.allocated"})
    (parcel,) = order["shipments"]
    shipped = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    receiver.check(order["id"], {"shipment.shipped"})
    delivered = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/deliver", json={})
    assert delivered.status_code == 200, delivered.text
    receiver.check(order["id"], {"shipment.delivered", "order.delivered"})
    refund = {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "late"}
    refused = api.post(f"/orders/{order['id']}/refunds", json=refund, headers={"Idempotency-Key": "refused-1"})
    assert (refused.status_code, refused.json()["status"]) == (201, "failed"), refused.text
    receiver.check(order["id"], {"refund.failed"})
