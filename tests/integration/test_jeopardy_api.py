"""GET /orders?jeopardy=true in process on moto: the scan's marks as API.md's "Jeopardy" shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from functions.bootstrap import Config, bootstrap
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import in_process_api
from tests.integration.test_refunds_api import issue_key


def test_jeopardy_true_lists_the_late_orders_each_showing_its_mark_until_it_leaves_the_late_status():
    """API.md "Jeopardy" at the route: the scan marks orders past their status's deadline (pending:
    5m by default), the Order shows `jeopardy: {reason, status, since}`, `GET /orders?jeopardy=true`
    lists them (a channel key its channel's), and leaving the late status clears the mark."""
    with in_process_api() as api:
        assert api.put("/products/TSHIRT", json=product_body()).status_code == 201
        assert api.put("/locations/wh-east", json=location_body()).status_code == 201
        assert api.put("/inventory/TSHIRT/wh-east", json={"on_hand": 100}).status_code == 200
        placed = {}
        for channel in ("web", "market"):
            answer = api.post("/orders", json=order_body(external_id=f"late-{channel}", channel=channel))
            assert answer.status_code == 201, answer.text
            placed[channel] = answer.json()["id"]
        assert api.get("/orders", params={"jeopardy": "true"}).json() == {"items": [], "next_cursor": None}

        later = datetime.now(UTC) + timedelta(minutes=6)
        assert sorted(bootstrap(Config.from_env(), clock=lambda: later).jeopardy_scan.run().marked) == sorted(
            placed.values()
        )

        late = api.get("/orders", params={"jeopardy": "true"}).json()
        assert sorted(order["id"] for order in late["items"]) == sorted(placed.values()) and late["next_cursor"] is None
        mark = api.get(f"/orders/{placed['web']}").json()["jeopardy"]
        assert set(mark) == {"reason", "status", "since"} and mark["status"] == "pending", mark
        web = issue_key(api, "orders:read", channel="web")
        assert [o["id"] for o in api.get("/orders", params={"jeopardy": "true"}, key=web).json()["items"]] == [
            placed["web"]
        ]

        cancelled = api.post(f"/orders/{placed['web']}/cancel", json={"reason": "customer_request"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["jeopardy"] is None
        assert [o["id"] for o in api.get("/orders", params={"jeopardy": "true"}).json()["items"]] == [placed["market"]]
