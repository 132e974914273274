"""A hold pauses the deadline of the status it stopped, never restarts it (API.md: a release
"resumes it where it stopped"): in process on moto, the order held and released through the API
and the scan invoked as Lambda invokes it, each at a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import functions.jeopardy.app as jeopardy
from functions.api.dependencies import container
from functions.bootstrap import Config, bootstrap
from tests.builders import location_body, order_body, product_body
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
