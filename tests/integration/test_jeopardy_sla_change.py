"""A deadline lengthened (`Sla` deployed anew, the runbook's recovery for deadlines wrong for the
business) unmarks the orders it makes no longer late: in process on moto, the order placed and
allocated through the API and the scan invoked as Lambda invokes it, each at a clock the test moves."""

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
        invocation = context("JeopardyScanFunction", timeout_seconds=60)
        return jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, invocation)


def test_a_late_order_no_longer_late_by_a_lengthened_deadline_is_unmarked_and_no_longer_counted(monkeypatch):
    """Allocated 49 hours: late by the default 48 hours, marked, listed and counted. `Sla` deployed
    with `allocated=96h`: the next scan unmarks it (an entry in its history says why), so the list
    and `OrdersInJeopardy` (what the alarm reads) no longer hold it; past 96 hours it is marked
    again, since the new deadline."""
    with in_process_api_with_labels() as api:
        assert api.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert api.put("/locations/wh-east", json=location_body()).status_code == 201
        assert api.put("/inventory/TSHIRT/wh-east", json={"on_hand": 10}).status_code == 200
        clock = Clock(datetime.now(UTC))
        with container.override(bootstrap(Config.from_env(), clock=clock)):
            order_id = api.post("/orders", json=order_body(external_id="sla-lengthened")).json()["id"]
            allocated_at = datetime.fromisoformat(run_to_allocated(api, order_id)["updated_at"])

            clock.now = allocated_at + timedelta(hours=49)
            assert scan_at(clock)["marked"] == [order_id]
            assert api.get(f"/orders/{order_id}").json()["jeopardy"]["status"] == "allocated"

            monkeypatch.setenv("OMS_SLA", "allocated=96h")
            clock.advance(minutes=5)
            scanned = scan_at(clock)
            assert scanned["in_jeopardy"] == 0, scanned
            assert api.get(f"/orders/{order_id}").json()["jeopardy"] is None
            assert api.get("/orders", params={"jeopardy": "true"}).json()["items"] == []
            history = api.get(f"/orders/{order_id}/history", params={"limit": 100}).json()["items"]
            cleared = history[-1]
            assert (cleared["type"], cleared["actor"]) == ("jeopardy_cleared", "jeopardy_scan"), cleared
            assert (cleared["from_status"], cleared["to_status"]) == (None, None)  # no status changed
            assert cleared["detail"] == {
                "status": "allocated",
                "since": history[-2]["detail"]["since"],  # the mark's
                "reason": "not past the deadline of allocated now (4d)",
            }

            clock.advance(minutes=5)
            assert scan_at(clock)["marked"] == []  # not marked again while the new deadline holds

            clock.now = allocated_at + timedelta(hours=96, minutes=5)
            assert scan_at(clock)["marked"] == [order_id]
            mark = api.get(f"/orders/{order_id}").json()["jeopardy"]
            assert datetime.fromisoformat(mark["since"]) == allocated_at + timedelta(hours=96)
