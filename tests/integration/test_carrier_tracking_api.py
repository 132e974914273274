"""POST /carriers/oms-flat-rate/tracking over the in-process API with real orders: what a carrier's
webhook does to them when some of its events are bad, when a parcel is scanned delivered before
its ship is confirmed, and when the same webhook comes again. The rules are unit tests
(tests/unit/test_tracking.py); this is the route the carrier (or its relay) calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugins.flat_rate_carrier import tracking_number
from tests.e2e.client import order_body, stocked_sku, unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated

PATH = "/carriers/oms-flat-rate/tracking"
SCANNED_AT = "2026-11-23T09:30:00Z"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    return stocked_sku(api, "25.00", on_hand=1000)[1]


def allocated(api: InProcessApi, sku: str) -> tuple[str, str]:
    response = api.post("/orders", json=order_body((sku, 1)))
    assert response.status_code == 201, response.text
    order = run_to_allocated(api, response.json()["id"])
    return order["id"], order["shipments"][0]["id"]


def shipped(api: InProcessApi, sku: str) -> tuple[str, str]:
    order_id, shipment_id = allocated(api, sku)
    response = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={})
    assert response.status_code == 200, response.text
    return order_id, shipment_id


def scan(order_id: str, shipment_id: str, status: str = "delivered", **overrides: Any) -> dict[str, Any]:
    return {
        "reference": f"{order_id}/{shipment_id}",
        "tracking_number": tracking_number(shipment_id),
        "status": status,
        "at": SCANNED_AT,
        **overrides,
    }


def test_a_bad_event_is_refused_alone_at_its_position_and_the_good_ones_are_applied(api, sku):
    carrier = issue(api, "fulfillment:write")
    (first, one), (second, two) = shipped(api, sku), shipped(api, sku)
    body = {
        "events": [
            scan(first, one),
            scan(second, two, tracking_number=tracking_number(one)),  # pasted onto the wrong reference
            {"reference": f"{second}/{two}", "status": "delivered", "at": SCANNED_AT},  # no tracking number
            "not an event",
            scan(second, two, at="2026-11-23T09:30:00"),  # no zone: no moment
            scan(second, two, "in_transit"),
        ]
    }

    response = api.post(PATH, key=carrier, json=body)

    assert response.status_code == 200, response.text
    report = response.json()
    assert [(u["position"], u["order_id"], u["outcome"]) for u in report["updates"]] == [
        (0, first, "delivered"),
        (5, second, "not_recorded"),
    ]
    refused = report["refused"]
    assert [r["position"] for r in refused] == [1, 2, 3, 4]
    assert {r["error"]["code"] for r in refused} == {"validation_error"}
    assert [[d["field"] for d in r["error"]["details"]] for r in refused] == [
        ["events[1].tracking_number"],
        ["events[2].tracking_number"],
        ["events[3]"],
        ["events[4].at"],
    ]
    assert api.get(f"/orders/{first}").json()["status"] == "delivered"
    assert api.get(f"/orders/{second}").json()["status"] == "shipped"

    # The carrier's retry of the same webhook changes nothing and answers the same.
    before = [unsigned(api.get(f"/orders/{o}").json()) for o in (first, second)]
    again = api.post(PATH, key=carrier, json=body)

    assert (again.status_code, again.json()) == (200, report)
    assert [unsigned(api.get(f"/orders/{o}").json()) for o in (first, second)] == before


@pytest.mark.parametrize(
    "body",
    [{"events": "no list"}, {"events": [], "extra": 1}, {"parcels": []}, [], {"events": [{}] * 101}],
    ids=["events-not-a-list", "unknown-field", "no-events", "an-array", "too-many"],
)
def test_a_body_that_is_no_flat_rate_webhook_is_still_refused_whole(api, body):
    response = api.post(PATH, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
