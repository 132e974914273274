"""A hold pauses the deadline of the status it stopped, never restarts it (API.md: a release
"resumes it where it stopped"): in process on moto, the order held and released through the API
and the scan invoked as Lambda invokes it, each at a clock the test moves."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import functions.jeopardy.app as jeopardy
from functions.api.dependencies import container
from functions.bootstrap import Config, bootstrap
from tests.builders import location_body, order_body, product_body
from tests.integration.documented_events import assert_documented
from tests.integration.import_support import context
from tests.integration.in_process import in_process_api_with_labels, run_to_allocated
from tests.unit.world import Clock


def scan_at(clock: Clock) -> dict:
    with jeopardy.container.override(bootstrap(Config.from_env(), clock=clock)):
        # Its Timeout: the scan keeps its last 30 s for the count and the report (SCAN_RESERVE_MILLIS).
        invocation = context("JeopardyScanFunction", timeout_seconds=60)
        return jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, invocation)


def test_a_hold_and_release_of_a_late_allocated_order_pauses_its_deadline_and_the_next_scan_marks_it_again():
    """Allocated 47 hours, held 2 hours, released: the warehouse has had 47 of its 48 hours (the
    time held, when nothing may ship, does not count), so the order is late an hour after the
    release, not 48 hours after it, and its `since` is the deadline moved by the time held."""
    with in_process_api_with_labels() as api:
        assert api.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert api.put("/locations/wh-east", json=location_body()).status_code == 201
        assert api.put("/inventory/TSHIRT/wh-east", json={"on_hand": 10}).status_code == 200
        clock = Clock(datetime.now(UTC))
        with container.override(bootstrap(Config.from_env(), clock=clock)):
            placed = api.post("/orders", json=order_body(external_id="held-late"))
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            allocated_at = datetime.fromisoformat(run_to_allocated(api, order_id)["updated_at"])

            clock.now = allocated_at + timedelta(hours=47)
            held = api.post(f"/orders/{order_id}/hold", json={"reason": "other", "note": "why so slow?"})
            assert held.status_code == 200, held.text
            assert set(held.json()["hold"]) == {"reason", "note", "since"}  # the clock kept is the system's own
            clock.advance(hours=2)
            released = api.post(f"/orders/{order_id}/release", json={})
            assert (released.status_code, released.json()["status"]) == (200, "allocated"), released.text

            assert scan_at(clock)["marked"] == []  # 47 of its 48 hours spent: not late yet
            clock.advance(hours=1, minutes=1)
            assert scan_at(clock)["marked"] == [order_id]

            late = api.get(f"/orders/{order_id}").json()["jeopardy"]
            assert late["status"] == "allocated"
            assert datetime.fromisoformat(late["since"]) == allocated_at + timedelta(hours=48 + 2)
            listed = api.get("/orders", params={"jeopardy": "true"}).json()["items"]
            assert [order["id"] for order in listed] == [order_id]


def test_a_late_order_held_and_released_is_marked_again_but_its_customer_is_told_of_the_delay_once():
    """Allocated 49 hours (marked late, its customer told it is delayed), held an hour and
    released: late still on the clock the release resumes, the next scan marks it again, an
    order.jeopardy event as each mark is, but the lateness is the one the customer was told of
    (its `since` moved by the hour held), so no second 'delayed' notice. Each stored change is
    handed to the events function's notifier as its stream record would be."""
    import boto3

    from core.domain_events import EventType, order_events
    from functions.events.app import notify, order_document
    from tests.integration.test_events_and_webhooks import lambda_image

    with in_process_api_with_labels() as api:
        assert api.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert api.put("/locations/wh-east", json=location_body()).status_code == 201
        assert api.put("/inventory/TSHIRT/wh-east", json={"on_hand": 10}).status_code == 200
        clock = Clock(datetime.now(UTC))
        table = os.environ["ORDERS_TABLE"]

        def stored(order_id: str) -> dict:
            item = boto3.client("dynamodb").get_item(TableName=table, Key={"id": {"S": order_id}})["Item"]
            return order_document(lambda_image(item))

        with container.override(bootstrap(Config.from_env(), clock=clock)):
            placed = api.post("/orders", json=order_body(external_id="told-once"))
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            allocated_at = datetime.fromisoformat(run_to_allocated(api, order_id)["updated_at"])
            versions = [stored(order_id)]

            clock.now = allocated_at + timedelta(hours=49)
            assert scan_at(clock)["marked"] == [order_id]
            versions.append(stored(order_id))
            clock.advance(minutes=10)
            assert api.post(f"/orders/{order_id}/hold", json={"reason": "other"}).status_code == 200
            versions.append(stored(order_id))
            clock.advance(hours=1)
            assert api.post(f"/orders/{order_id}/release", json={}).json()["jeopardy"] is None
            versions.append(stored(order_id))
            clock.advance(minutes=1)
            assert scan_at(clock)["marked"] == [order_id]
            versions.append(stored(order_id))

        changes = list(pairwise(versions))
        for old, new in changes:
            notify(old, new)
        marks = [e for old, new in changes for e in order_events(old, new) if e.type is EventType.ORDER_JEOPARDY]
        assert len(marks) == 2  # each mark is a change: the contract's event, both times
        document = api.get("/openapi.json", key=None).json()
        for mark in marks:  # each as GET /openapi.json's webhook for order.jeopardy says a delivery is
            assert_documented(document, mark.model_dump(mode="json"))
        told = api.get(f"/orders/{order_id}/notifications").json()["items"]
        assert [note["kind"] for note in told] == ["delayed"]
        assert told[0]["id"] == marks[0].id
