"""POST /carriers/oms-flat-rate/tracking over the in-process API with real orders: what a carrier's
webhook does to them when some of its events are bad, when a parcel is scanned delivered before
its ship is confirmed, and when the same webhook comes again. The rules are unit tests
(tests/unit/test_tracking.py); this is the route the carrier (or its relay) calls."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from plugins.flat_rate_carrier import tracking_number
from tests.e2e.client import assert_error, stocked_sku, unsigned
from tests.integration.in_process import InProcessApi, allocated, in_process_api_with_labels, issue

PATH = "/carriers/oms-flat-rate/tracking"
SCANNED_AT = "2026-11-23T09:30:00Z"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    return stocked_sku(api, "25.00", on_hand=1000)[1]


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


def test_a_delivered_scan_before_the_ship_is_kept_and_the_ship_that_comes_later_delivers_it(api, sku):
    """The carrier's delivered scan outran the warehouse's ship confirmation. Nothing is captured
    on the carrier's word: the ship (the location's hand-over, which the contract captures on)
    records the parcel shipped, then delivered when the carrier said."""
    carrier = issue(api, "fulfillment:write")
    order_id, shipment_id = allocated(api, sku)
    # A time the OMS believes: not before the order was placed, not yet to come.
    delivered_at = api.get(f"/orders/{order_id}").json()["created_at"]

    early = api.post(PATH, key=carrier, json={"events": [scan(order_id, shipment_id, at=delivered_at)]})
    resent = api.post(PATH, key=carrier, json={"events": [scan(order_id, shipment_id, at=delivered_at)]})

    assert early.status_code == resent.status_code == 200, early.text
    assert [u["outcome"] for u in early.json()["updates"]] == ["not_shipped"]
    waiting = api.get(f"/orders/{order_id}").json()
    assert (waiting["status"], waiting["shipments"][0]["status"]) == ("allocated", "pending")
    assert waiting["payment"]["captured"]["amount"] == "0.00"
    kept = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "delivery_scan_kept"]
    assert [e["detail"] for e in kept] == [{"shipment_id": shipment_id, "delivered_at": delivered_at}]

    shipped = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={})

    assert shipped.status_code == 200, shipped.text
    order = shipped.json()
    assert order["status"] == "delivered"
    (shipment,) = order["shipments"]
    assert (shipment["status"], shipment["delivered_at"]) == ("delivered", delivered_at)
    assert shipment["shipped_at"] <= shipment["delivered_at"]
    assert order["payment"]["captured"] == order["totals"]["grand_total"]
    types = [e["type"] for e in api.get(f"/orders/{order_id}/history").json()["items"]]
    assert types[-3:] == ["delivery_scan_kept", "shipment_shipped", "shipment_delivered"]

    # The carrier's retry after that changes nothing.
    again = api.post(PATH, key=carrier, json={"events": [scan(order_id, shipment_id, at=delivered_at)]})
    assert [u["outcome"] for u in again.json()["updates"]] == ["delivered"]
    assert unsigned(api.get(f"/orders/{order_id}").json()) == unsigned(order)


@pytest.mark.parametrize("at", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_refused_alone_not_a_500(api, sku, at):
    order_id, shipment_id = shipped(api, sku)

    response = api.post(PATH, json={"events": [scan(order_id, shipment_id, at=at), scan(order_id, shipment_id)]})

    assert response.status_code == 200, response.text
    report = response.json()
    assert [(r["position"], [d["field"] for d in r["error"]["details"]]) for r in report["refused"]] == [
        (0, ["events[0].at"])
    ]
    assert [(u["position"], u["outcome"]) for u in report["updates"]] == [(1, "delivered")]


def scanned_before_its_ship(api: InProcessApi, sku: str, **overrides: Any) -> tuple[dict[str, Any], str]:
    """A new order of two units of `sku`, allocated in one parcel, whose carrier scanned that parcel
    delivered before its location confirmed the ship: the order as it then is, and the parcel's id."""
    order_id, shipment_id = allocated(api, sku, lines=[{"sku": sku, "quantity": 2}], **overrides)
    delivered_at = api.get(f"/orders/{order_id}").json()["created_at"]
    report = api.post(PATH, key=issue(api, "fulfillment:write"),
                      json={"events": [scan(order_id, shipment_id, at=delivered_at)]})  # fmt: skip
    assert [u["outcome"] for u in report.json()["updates"]] == ["not_shipped"], report.text
    return api.get(f"/orders/{order_id}").json(), shipment_id


def test_a_parcel_scanned_delivered_before_its_ship_is_not_cancelled_edited_or_rejected(api, sku):
    """The carrier delivered it: a storefront's cancel, of the order or of its units, or an edit,
    would put its units back on sale and release the payment for goods the customer has (or send
    them a second parcel); a reject would source it again. 409 naming the parcel, nothing changed;
    the location's ship then records it shipped and delivered, and captures it."""
    storefront = issue(api, "orders:write", "orders:read")
    order, shipment_id = scanned_before_its_ship(api, sku)
    order_id = order["id"]
    held = api.get(f"/inventory/{sku}").json()["locations"][0]["reserved"]

    whole = {"reason": "changed my mind"}
    units = {"reason": "one is enough", "lines": [{"line_id": "L1", "quantity": 1}]}
    edit = {"lines": [{"sku": sku, "quantity": 1}]}
    answers = [
        api.post(f"/orders/{order_id}/cancel", key=storefront, json=whole),
        api.post(f"/orders/{order_id}/cancel", key=storefront, json=units),
        api.request(
            "PATCH", f"/orders/{order_id}", key=storefront, json=edit, headers={"If-Match": str(order["version"])}
        ),
        api.post(
            f"/orders/{order_id}/shipments/{shipment_id}/reject",
            key=issue(api, "fulfillment:write"),
            json={"reason": "no staff"},
        ),
    ]

    for answer in answers:
        error = assert_error(answer, 409, "parcel_not_confirmed")
        assert [d["shipment_id"] for d in error["details"]] == [shipment_id], error
    assert unsigned(api.get(f"/orders/{order_id}").json()) == unsigned(order)
    assert api.get(f"/inventory/{sku}").json()["locations"][0]["reserved"] == held
    shipped = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    done = shipped.json()
    assert (done["status"], done["payment"]["captured"]) == ("delivered", done["totals"]["grand_total"])


def test_a_person_who_finds_a_scanned_parcel_never_left_may_cancel_it(api, sku):
    """The way out when the scan was wrong: a key that may release a hold (orders:approve) answers
    whether the parcel left, as for a parcel whose ship died; its cancel puts the units back."""
    person = issue(api, "orders:write", "orders:read", "orders:approve")
    order, _ = scanned_before_its_ship(api, sku)
    reserved = api.get(f"/inventory/{sku}").json()["locations"][0]["reserved"]

    answer = api.post(f"/orders/{order['id']}/cancel", key=person, json={"reason": "the scan was wrong"})

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "voided")
    assert api.get(f"/inventory/{sku}").json()["locations"][0]["reserved"] == reserved - 2


def test_a_scan_of_a_parcel_an_edit_withdrew_is_answered_withdrawn_not_unknown(api, sku, caplog):
    """The edit sent the order back to be sourced, but the warehouse had handed the parcel over all
    the same and its carrier delivered it: the customer has goods the order no longer holds. The
    single deliver route answers such a parcel 409 `invalid_transition` naming what withdrew it, so a
    person settles it; the webhook answered `unknown_shipment`, as for an id the carrier got wrong,
    and nobody heard. Its scans (delivered, and in transit: it left all the same) are `withdrawn`,
    logged for a person with the order, and nothing changes."""
    order_id, shipment_id = allocated(api, sku)
    version = api.get(f"/orders/{order_id}").json()["version"]
    edited = api.request("PATCH", f"/orders/{order_id}", json={"lines": [{"sku": sku, "quantity": 2}]},
                         headers={"If-Match": str(version)})  # fmt: skip
    assert edited.status_code == 200, edited.text
    before = api.get(f"/orders/{order_id}").json()
    assert shipment_id not in [s["id"] for s in before["shipments"]]

    scans = {"events": [scan(order_id, shipment_id, "in_transit"), scan(order_id, shipment_id)]}
    with caplog.at_level("WARNING"):
        report = api.post(PATH, key=issue(api, "fulfillment:write"), json=scans)

    assert report.status_code == 200, report.text
    assert [(u["shipment_id"], u["outcome"]) for u in report.json()["updates"]] == [(shipment_id, "withdrawn")] * 2
    assert unsigned(api.get(f"/orders/{order_id}").json()) == unsigned(before)
    lines = [r for r in caplog.records if "withdrawn" in r.getMessage() and order_id in r.getMessage()]
    assert [(r.levelname, shipment_id in r.getMessage()) for r in lines] == [("WARNING", True)] * 2
    # Another channel's key learns nothing of it: unknown, as any order it may not see.
    other = issue(api, "fulfillment:write", channel="elsewhere")
    hidden = api.post(PATH, key=other, json=scans)
    assert [u["outcome"] for u in hidden.json()["updates"]] == ["unknown_shipment"] * 2


def test_a_body_the_carrier_plugin_refuses_whole_writes_no_error_line(api, caplog):
    # The plugin's documented refusal (InvalidRequest, 422) is the sender's fault, not the plugin's:
    # it was logged as the plugin's failure, `plugin raised` at ERROR with a traceback, so anyone who
    # can reach the route could raise the API's error alarms and its log bill at will.
    caplog.set_level(logging.DEBUG)

    response = api.post(PATH, json={"parcels": []})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == "not an OMS Flat Rate tracking webhook"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
