"""A partly shipped order has a deadline (API.md "Jeopardy": each open order has one for its current
status): by default the allocated one, counted from when its first parcel left. In process on moto,
the order shipped through the API and the scan invoked as Lambda invokes it, at a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from functions.api.dependencies import container
from functions.bootstrap import Config, bootstrap
from tests.builders import order_body
from tests.integration.in_process import in_process_api_with_labels, run_to_allocated
from tests.integration.test_cancel_units_api import ship, stock_two_parcels
from tests.integration.test_jeopardy_hold_clock import scan_at
from tests.unit.world import Clock


def test_a_partly_shipped_order_whose_second_parcel_waits_past_the_allocated_deadline_is_marked_late():
    """MUG ships from wh-west, CAP waits at wh-east: 48 hours (the allocated default, OMS_SLA not
    naming partially_shipped) after the first parcel left, the order is late; shipping the rest
    clears the mark."""
    with in_process_api_with_labels() as api:
        stock_two_parcels(api)
        clock = Clock(datetime.now(UTC))
        with container.override(bootstrap(Config.from_env(), clock=clock)):
            lines = [{"sku": "MUG", "quantity": 1}, {"sku": "CAP", "quantity": 1}]
            placed = api.post("/orders", json=order_body(external_id="second-parcel-late", lines=lines))
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            allocated = run_to_allocated(api, order_id)
            assert len(allocated["shipments"]) == 2, allocated

            clock.now = datetime.fromisoformat(allocated["updated_at"]) + timedelta(hours=1)
            shipped_at = clock.now
            partly = ship(api, allocated, "wh-west")
            assert (partly["status"], partly["jeopardy"]) == ("partially_shipped", None)

            clock.advance(hours=47)
            assert scan_at(clock)["marked"] == []  # 47 of its 48 hours since the first parcel left
            clock.advance(hours=1, minutes=1)
            assert scan_at(clock)["marked"] == [order_id]

            late = api.get(f"/orders/{order_id}").json()["jeopardy"]
            assert late["status"] == "partially_shipped"
            assert late["reason"] == "partially_shipped for longer than 2d"
            assert datetime.fromisoformat(late["since"]) == shipped_at + timedelta(hours=48)
            listed = api.get("/orders", params={"jeopardy": "true"}).json()["items"]
            assert [order["id"] for order in listed] == [order_id]

            done = ship(api, api.get(f"/orders/{order_id}").json(), "wh-east")
            assert (done["status"], done["jeopardy"]) == ("shipped", None)
            assert api.get("/orders", params={"jeopardy": "true"}).json()["items"] == []
