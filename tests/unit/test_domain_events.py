"""Domain events from two versions of an order document: each contract type, stable ids."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from core.domain_events import (
    IMPORT_EVENT_ERROR_BYTES,
    WITH_CHANNEL,
    WITHOUT_CHANNEL,
    EventType,
    event_id,
    fitted,
    import_events,
    order_events,
    return_events,
)
from core.models import Allocation, Order, Payment, Shipment, ShipmentLine
from core.refunds import went_back_id
from core.return_models import ReceiveReturn, Return, ReturnLine
from core.status import OrderStatus, PaymentStatus
from tests.unit.conftest import a_stored_order, usd

USD = "USD"


def money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": USD}


def order_doc(**changes: Any) -> dict[str, Any]:
    """An order document as the Orders table stores it (Order.stored_json), `version` 1."""
    doc: dict[str, Any] = {
        "id": "ord_aaaaaaaaaaaaaaaaaaaaaaaa",
        "status": "pending",
        "channel": "web",
        "external_id": "web-1",
        "currency": USD,
        "customer": {"id": "cus_1", "email": "ada@example.com", "name": "Ada"},
        "lines": [
            {
                "line_id": "l1",
                "sku": "TSHIRT",
                "quantity": 1,
                "unit_price": money("10.00"),
                "discount": money("0.00"),
                "tax": money("0.00"),
                "total": money("10.00"),
            }
        ],
        "shipping_address": {"name": "Ada", "line1": "1 Main", "city": "SF", "postal_code": "94105", "country": "US"},
        "fulfillment": {"type": "ship"},
        "totals": {
            "subtotal": money("10.00"),
            "discount": money("0.00"),
            "shipping": money("0.00"),
            "tax": money("0.00"),
            "grand_total": money("10.00"),
        },
        "payment": {
            "method": "test",
            "authorized": money("0.00"),
            "captured": money("0.00"),
            "refunded": money("0.00"),
        },
        "created_at": "2026-12-01T10:00:00Z",
        "updated_at": "2026-12-01T10:00:00Z",
        "version": 1,
    }
    doc.update(copy.deepcopy(changes))
    return doc


def next_version(old: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return order_doc(**{**old, "version": old["version"] + 1, "updated_at": "2026-12-01T10:05:00Z", **changes})


def shipment(status: str, shipment_id: str = "shp_1", label: str | None = "labels/ord/shp_1.pdf") -> dict[str, Any]:
    return {
        "id": shipment_id,
        "location_id": "wh1",
        "lines": [{"line_id": "l1", "quantity": 1}],
        "carrier": "flat",
        "service": "ground",
        "status": status,
        "label_url": label,
    }


def types(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    return [event.type.value for event in order_events(old, new)]


def test_a_new_order_is_order_created_with_the_order_as_the_api_shows_it():
    new = order_doc()
    (event,) = order_events(None, new)
    assert event.type is EventType.ORDER_CREATED
    assert event.id == event_id(new["id"], 1, EventType.ORDER_CREATED)
    assert event.data["order"]["id"] == new["id"] and event.data["order"]["totals"]["grand_total"] == money("10.00")
    assert event.created_at.isoformat() == "2026-12-01T10:00:00+00:00"
    assert event.channel == "web"


def test_a_new_order_held_by_a_review_rule_is_created_and_on_hold():
    hold = {"reason": "fraud_review", "since": "2026-12-01T10:00:00Z", "resume_to": "pending"}
    assert types(None, order_doc(status="on_hold", hold=hold)) == ["order.created", "order.on_hold"]


def test_a_held_order_whose_hold_takes_a_review_rules_reason_is_on_hold_again():
    # A person held it for its address; an edit took it past a review rule, whose reason and note its
    # hold now shows (Order.held_for_review): a fraud system subscribed to order.on_hold heard nothing,
    # as the order was on hold already. The same hold written again (a release retried) is no event.
    person = {"reason": "address_review", "note": "flat number missing", "since": "2026-12-01T10:00:00Z",
              "resume_to": "pending"}  # fmt: skip
    old = order_doc(status="on_hold", hold=person)
    review = {**person, "reason": "fraud_review", "note": "grand total 150.00 USD is at or above 100.00"}
    assert types(old, next_version(old, hold=review)) == ["order.on_hold"]
    assert types(old, next_version(old, hold=dict(person))) == []


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("pending", "authorized", "order.authorized"),
        ("pending", "payment_failed", "order.payment_failed"),
        ("authorized", "backordered", "order.backordered"),
        ("authorized", "allocated", "order.allocated"),
        ("backordered", "allocated", "order.allocated"),
        ("allocated", "cancelled", "order.cancelled"),
        ("shipped", "delivered", "order.delivered"),
    ],
)
def test_each_status_reached_is_its_event(before: str, after: str, expected: str):
    old = order_doc(status=before)
    assert types(old, next_version(old, status=after)) == [expected]


def test_statuses_without_an_event_of_their_own_give_none():
    old = order_doc(status="allocated")
    assert types(old, next_version(old, status="partially_shipped")) == []


def test_a_pickup_readied_and_a_cancel_leaving_a_partly_shipped_order_shipped_are_no_event():
    """The contract names no type for them (README Events and webhooks): a subscriber learns of
    them with the order's next event, or from GET /orders/{id}."""
    pickup = order_doc(
        status="allocated", fulfillment={"type": "pickup", "location_id": "wh1"}, shipments=[shipment("pending")]
    )
    assert types(pickup, next_version(pickup, shipments=[shipment("ready_for_pickup")])) == []
    partly = order_doc(status="partially_shipped", shipments=[shipment("shipped"), shipment("pending", "shp_2")])
    rest_cancelled = next_version(
        partly, status="shipped", shipments=[shipment("shipped"), shipment("cancelled", "shp_2")]
    )
    assert types(partly, rest_cancelled) == []


def test_a_hold_and_its_release_are_on_hold_and_released_not_the_status_resumed():
    old = order_doc(status="authorized")
    held = next_version(
        old, status="on_hold", hold={"reason": "other", "since": "2026-12-01T10:05:00Z", "resume_to": "authorized"}
    )
    assert types(old, held) == ["order.on_hold"]
    released = next_version(held, status="authorized", hold=None)
    assert types(held, released) == ["order.released"]
    cancelled = next_version(held, status="cancelled", hold=None)
    assert types(held, cancelled) == ["order.cancelled"]


@pytest.mark.parametrize("status", ["authorized", "a_status_added_later"])
def test_a_parks_event_never_shows_what_tells_it_from_a_persons_hold(status: str):
    """`hold.parked`, `resume_to` and `ships_to_confirm` (the parcels a person's hold made a park
    stands for) are the store's own, also in an order this version's model cannot read (a status
    added since), which the event shows as stored, less them."""
    old = order_doc(status="authorized")
    hold = {"reason": "other", "note": "order workflow failed", "since": "2026-12-01T10:05:00Z"}
    own = {"resume_to": status, "parked": True, "ships_to_confirm": ["shp_1"]}
    parked = next_version(old, status="on_hold", hold={**hold, **own})

    (event,) = order_events(old, parked)

    assert event.type is EventType.ORDER_ON_HOLD and event.data["order"]["hold"] == hold


def test_an_order_this_version_cannot_read_shows_no_field_of_the_systems_own():
    """An order this version's model cannot read (a status added since: a rollback's events function
    meeting a newer API's write) goes out as stored less what only the system reads: its stored
    document carries the booking keys, the captures asked of the gateway, the returns that owe the
    whole order's shipping, the locations a reject excluded (Order.stored_json), none of which the
    API shows. The event sent each of them to every subscriber."""
    from core.domain_events import api_order
    from core.models import CaptureRequest

    order = a_stored_order(("TSHIRT", 1), status=OrderStatus.ALLOCATED).model_copy(
        update={
            "booking_keys": {"shp_1": "bk_secret"},
            "captures_requested": [CaptureRequest(shipment_id="shp_1", amount=usd("10.00"))],
            "whole_order_returns": ["rma_1"],
            "excluded_locations": ["wh9"],
            "status_since": datetime(2026, 12, 1, tzinfo=UTC),
        }
    )
    stored = json.loads(order.stored_json())
    assert {"booking_keys", "captures_requested", "whole_order_returns", "excluded_locations"} <= set(stored)
    shown = api_order(stored)
    jeopardy = {"reason": "late", "status": "a_status_added_later", "since": "2026-12-01T10:20:00Z"}
    later = {**stored, "status": "a_status_added_later", "jeopardy": jeopardy, "version": stored["version"] + 1}

    (event,) = order_events(stored, later)

    assert event.type is EventType.ORDER_JEOPARDY
    assert set(event.data["order"]) - set(shown) == set()  # nothing the API never shows
    assert event.data["order"]["lines"][0]["sku"] == "TSHIRT" and event.data["order"]["status"] == later["status"]


def test_an_authorization_recorded_on_an_order_held_meanwhile_is_order_authorized():
    # A hold placed while the payment was being authorized: the authorization is recorded on the held
    # order (Order.authorize), whose release resumes to `authorized`, a status it never reaches anew.
    since = "2026-12-01T10:01:00Z"
    old = order_doc(status="on_hold", hold={"reason": "fraud_review", "since": since, "resume_to": "pending"})
    payment = {**old["payment"], "status": "authorized", "authorized": money("10.00"), "authorization": "auth_1"}
    authorized = next_version(
        old, payment=payment, hold={"reason": "fraud_review", "since": since, "resume_to": "authorized"}
    )

    assert types(old, authorized) == ["order.authorized"]
    assert types(authorized, next_version(authorized, status="authorized", hold=None)) == ["order.released"]
    assert types(authorized, next_version(authorized, version=authorized["version"] + 1)) == []


def test_jeopardy_is_an_event_when_it_is_marked_and_not_again_while_it_stays():
    old = order_doc(status="authorized")
    marked = next_version(old, jeopardy={"reason": "late", "status": "authorized", "since": "2026-12-01T10:20:00Z"})
    assert types(old, marked) == ["order.jeopardy"]
    assert types(marked, next_version(marked)) == []


def test_shipments_shipped_and_delivered_carry_the_shipment_without_a_stored_label_key():
    old = order_doc(status="allocated", shipments=[shipment("pending"), shipment("pending", "shp_2")])
    shipped = next_version(
        old, status="partially_shipped", shipments=[shipment("shipped"), shipment("pending", "shp_2")]
    )
    (event,) = order_events(old, shipped)
    assert event.type is EventType.SHIPMENT_SHIPPED
    assert event.data["shipment"]["id"] == "shp_1" and event.data["shipment"]["status"] == "shipped"
    assert event.data["shipment"]["label_url"] is None
    assert all(s["label_url"] is None for s in event.data["order"]["shipments"])
    delivered = next_version(shipped, shipments=[shipment("delivered"), shipment("pending", "shp_2")])
    assert types(shipped, delivered) == ["shipment.delivered"]


CARRIER_HOSTED = "https://labels.parcelhub.example/PH1234567890.pdf"
# An order stored before links were signed at read time holds a 7-day link to the labels bucket.
OUR_SIGNED_LINK = (
    "https://oms-labels.s3.amazonaws.com/labels/ord_x/shp_1.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=604800&X-Amz-Signature=ab12"
)


def test_a_carrier_hosted_label_link_is_in_the_events_as_the_api_shows_it_and_our_signed_ones_are_not():
    """A carrier plugin that hosts its labels answers an https link, which the API shows as stored
    (no link of ours to sign, none that expires at our hand): an event shows it too, as `data`
    holds the objects as the API shows them. A stored label key, or a link signed to the labels
    bucket (an order stored before links were signed at each read), stays null: an event outlives
    a signature. A cancelled parcel shows none, as in the API."""
    hosted, ours = shipment("pending", label=CARRIER_HOSTED), shipment("pending", "shp_2", label=OUR_SIGNED_LINK)
    given_up = shipment("cancelled", "shp_4", label=CARRIER_HOSTED)
    old = order_doc(status="allocated", shipments=[hosted, ours, shipment("pending", "shp_3"), given_up])
    shipped = next_version(
        old, status="partially_shipped", shipments=[{**hosted, "status": "shipped"}, *old["shipments"][1:]]
    )

    (event,) = order_events(old, shipped)

    assert event.data["shipment"]["label_url"] == CARRIER_HOSTED
    assert [s["label_url"] for s in event.data["order"]["shipments"]] == [CARRIER_HOSTED, None, None, None]


@pytest.mark.parametrize("status", ["partially_returned", "returned"])
def test_the_last_parcel_arriving_after_units_came_back_is_order_delivered_though_the_status_stays(status: str):
    """Units of a split order returned before its last parcel arrived keep it `partially_returned`
    (or `returned`) when that parcel arrives (Order.deliver: its returns are what its status says),
    so the status never became `delivered` and `order.delivered` never went out: a subscriber
    waiting for the order to arrive never learnt it had. Every parcel arriving is the event; a
    later change of an order delivered already is not it again."""
    old = order_doc(status=status, shipments=[shipment("delivered"), shipment("shipped", "shp_2")])
    arrived = next_version(old, shipments=[shipment("delivered"), shipment("delivered", "shp_2")])

    assert sorted(types(old, arrived)) == ["order.delivered", "shipment.delivered"]
    assert types(arrived, next_version(arrived, status="returned")) == []
    # A parcel a cancel of units emptied never goes: the one left arriving delivers the order.
    emptied = next_version(old, shipments=[shipment("delivered"), shipment("cancelled", "shp_2")])
    assert types(old, emptied) == ["order.delivered"]


def test_a_shipment_its_location_rejects_is_shipment_rejected_though_it_leaves_the_order():
    """A reject sends the order back to be sourced: its pending shipments are removed, so no
    shipment of the new version is `rejected` and the event never went out. The shipment the
    rejecting location (now excluded) held is the event's, as it was shown before the reject but
    for its status: `cancelled`, as it is after it (it will never ship), not `pending`."""
    at = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    pending = Shipment(
        id="shp_1", location_id="wh1", lines=[ShipmentLine(line_id="L1", quantity=1)], carrier="flat",
        service="ground", label_url="labels/ord/shp_1.pdf",
    )  # fmt: skip
    allocated = a_stored_order(
        ("TSHIRT", 1), id="ord_aaaaaaaaaaaaaaaaaaaaaaaa", status=OrderStatus.ALLOCATED, shipments=[pending],
        allocations=[Allocation(line_id="L1", location_id="wh1", quantity=1)],
    )  # fmt: skip
    rejected, _ = allocated.reject_shipment("shp_1", "damaged stock", at=at, actor="key_store")
    old, new = (json.loads(order.stored_json()) for order in (allocated, rejected))

    events = order_events(old, new)

    assert [e.type.value for e in events] == ["order.authorized", "shipment.rejected"]
    shown = events[1].data["shipment"]
    shown_as = (shown["id"], shown["location_id"], shown["status"], shown["label_url"])
    assert shown_as == ("shp_1", "wh1", "cancelled", None)
    assert events[1].data["order"]["shipments"] == []
    assert events[1].id == event_id(allocated.id, rejected.version, EventType.SHIPMENT_REJECTED, "shp_1")
    # Sourced again later: the location stays excluded, and the reject is not told again.
    assert types(new, next_version(new, status="allocated")) == ["order.allocated"]


def test_a_refund_the_gateway_approved_is_refund_succeeded_as_the_contracts_refund():
    old = order_doc(status="shipped")
    refund = {
        "id": "ref_1",
        "amount": money("4.00"),
        "reason": "late",
        "reference": "gw-1",
        "at": "2026-12-01T11:00:00Z",
    }
    new = next_version(old, payment={**old["payment"], "refunds": [refund], "refunded": money("4.00")})
    (event,) = order_events(old, new)
    assert event.type is EventType.REFUND_SUCCEEDED
    assert event.data["refund"] == {
        "id": "ref_1",
        "order_id": old["id"],
        "amount": money("4.00"),
        "reason": "late",
        "status": "succeeded",
        "return_id": None,
        "created_at": "2026-12-01T11:00:00Z",
    }


def test_refunds_with_a_status_give_succeeded_and_failed():
    old = order_doc(status="shipped", refunds=[])
    refunds = [
        {"id": "ref_1", "amount": money("1.00"), "reason": "x", "status": "succeeded"},
        {"id": "ref_2", "amount": money("2.00"), "reason": "y", "status": "failed"},
    ]
    new = next_version(old, refunds=refunds)
    assert types(old, new) == ["refund.succeeded", "refund.failed"]
    assert [e.data["refund"]["order_id"] for e in order_events(old, new)] == [old["id"]] * 2


def test_returns_created_and_received():
    old = order_doc(status="delivered")
    requested = next_version(old, returns=[{"id": "rma_1", "status": "authorized"}])
    assert types(old, requested) == ["return.created"]
    received = next_version(requested, status="partially_returned", returns=[{"id": "rma_1", "status": "received"}])
    (event,) = order_events(requested, received)
    assert event.type is EventType.RETURN_RECEIVED and event.data["return"]["id"] == "rma_1"
    refunded = next_version(received, returns=[{"id": "rma_1", "status": "refunded"}])
    assert types(received, refunded) == []


def test_the_same_change_gives_the_same_ids_and_another_change_other_ids():
    old = order_doc(status="pending")
    new = next_version(old, status="authorized")
    assert [e.id for e in order_events(old, new)] == [e.id for e in order_events(old, new)]
    later = next_version(new, status="allocated")
    assert {e.id for e in order_events(old, new)}.isdisjoint(e.id for e in order_events(new, later))


def test_a_change_that_only_appends_history_and_items_that_are_not_orders_give_nothing():
    old = order_doc(status="authorized")
    assert types(old, old) == []
    assert order_events(None, {"pk": "something else"}) == []


def test_a_change_that_is_no_event_never_builds_the_order_as_the_api_shows_it(monkeypatch):
    """Every order change built its API form (a validation and a dump of the whole order, most of
    the events function's CPU for a record) before finding whether it meant any event; most of an
    order's writes (a history entry, a capture requested, stock reserved) mean none."""
    import core.domain_events

    def refused(document: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the API's order built for a change that is no event")

    old = order_doc(status="authorized")
    later = next_version(old)  # a write that changed nothing an event tells (its history, say)
    monkeypatch.setattr(core.domain_events, "api_order", refused)
    assert order_events(old, later) == []


def test_every_contract_type_is_known():
    contract = (
        "order.created order.authorized order.payment_failed order.on_hold order.released order.backordered "
        "order.allocated order.cancelled order.jeopardy order.delivered shipment.shipped shipment.delivered "
        "shipment.rejected return.created return.received refund.succeeded refund.failed import.completed inventory.low"
    )
    assert {t.value for t in EventType} == set(contract.split())


def test_every_type_is_of_a_channel_or_of_none_as_its_data_says():
    # A channel's subscription takes only the types of an order's change (its data names the
    # order, so the channel): a type in neither set would be accepted there and never delivered.
    # API.md: {order} for order.*, {order, shipment} for shipment.*, {order, return},
    # {order, refund}, {import}, {inventory}.
    of_an_order = {t for t in EventType if t.value.split(".")[0] in {"order", "shipment", "return", "refund"}}
    assert of_an_order == WITH_CHANNEL
    assert set(EventType) - of_an_order == WITHOUT_CHANNEL
    assert not WITH_CHANNEL & WITHOUT_CHANNEL


# --- import.completed -----------------------------------------------------------------------------


def an_import(status: str, **changes: Any) -> dict[str, Any]:
    """An import as GET /imports/{id} shows it, without its errors."""
    return {
        "id": "imp_aaaaaaaaaaaaaaaaaaaaaaaa",
        "source": "s3://bucket/incoming/orders.csv",
        "status": status,
        "format": "csv",
        "total": 3,
        "total_final": True,
        "imported": 2,
        "duplicates": 0,
        "failed": 1 if status == "completed_with_errors" else 0,
        "created_at": "2026-12-01T12:00:00Z",
        "updated_at": "2026-12-01T12:00:05Z",
        **changes,
    }


def no_errors() -> list[dict[str, Any]]:
    return []


def an_error(line: int, message: str = "no product NOPE") -> dict[str, Any]:
    return {"line": line, "external_id": f"ext-{line}", "code": "unknown_sku", "message": message}


@pytest.mark.parametrize("status", ["completed", "completed_with_errors"])
def test_an_import_that_ends_is_import_completed_with_an_id_of_its_import_and_status(status):
    running, ended = an_import("running"), an_import(status)
    errors = [an_error(3)] if status == "completed_with_errors" else []
    [event] = import_events(running, ended, lambda: errors)
    assert event.type is EventType.IMPORT_COMPLETED
    assert event.id == event_id(ended["id"], 0, EventType.IMPORT_COMPLETED, status)
    # The import as GET /imports/{id} shows it, its errors included.
    assert event.data == {"import": {**ended, "errors": errors}, "errors_omitted": 0} and event.channel is None
    assert event.created_at.isoformat() == "2026-12-01T12:00:05+00:00"
    # A redelivered change gives the same id.
    assert import_events(copy.deepcopy(running), copy.deepcopy(ended), lambda: errors)[0].id == event.id


def test_an_import_whose_errors_would_not_fit_an_eventbridge_entry_carries_the_first_and_counts_the_rest():
    # 1,000 errors of 500 characters each are about 0.6 MB: an EventBridge entry holds 256 KB.
    errors = [an_error(line, "é" * 500) for line in range(2, 1002)]
    running, ended = an_import("running"), an_import("completed_with_errors", failed=1000, imported=0, total=1000)
    [event] = import_events(running, ended, lambda: errors)
    carried = event.data["import"]["errors"]
    assert 0 < len(carried) < len(errors) and carried == errors[: len(carried)]
    assert event.data["errors_omitted"] == len(errors) - len(carried)
    assert len(event.model_dump_json().encode()) <= 256 * 1024 - 1024  # room for the entry's source and type


def test_an_error_counted_and_not_yet_written_when_the_import_ended_is_counted_as_omitted():
    # A worker counts a failure before it writes its error: another worker's last line may end the
    # import in between, and GET /imports/{id} lists the error once it is written.
    running, ended = an_import("running"), an_import("completed_with_errors", failed=2, imported=1)
    [event] = import_events(running, ended, lambda: [an_error(2)])
    assert event.data["import"]["errors"] == [an_error(2)] and event.data["errors_omitted"] == 1


def test_errors_are_read_only_for_an_import_that_has_just_ended():
    def unread() -> list[dict[str, Any]]:
        raise AssertionError("errors read for a change that is no event")

    assert import_events(an_import("running"), an_import("running"), unread) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("running", "running"),  # progress
        ("completed", "completed"),  # a change to an ended import (none is made today)
        ("completed_with_errors", "completed_with_errors"),
    ],
)
def test_an_import_that_has_not_just_ended_is_no_event(old, new):
    assert import_events(an_import(old), an_import(new), no_errors) == []


def test_an_import_that_fails_as_a_whole_is_import_completed_with_its_error_once():
    failure = {"line": None, "external_id": None, "code": "unknown_format", "message": "cannot tell the format"}
    running = an_import("running", total=0, imported=0, total_final=False)
    failed = an_import("failed", total=0, imported=0, total_final=False)
    [event] = import_events(running, failed, lambda: [failure], new_failure="unknown_format")
    assert event.type is EventType.IMPORT_COMPLETED
    assert event.id == event_id(failed["id"], 0, EventType.IMPORT_COMPLETED, "failed")
    assert event.data == {"import": {**failed, "errors": [failure]}, "errors_omitted": 0}
    # A later write of the failed import (a duplicate delivery of its file's event failing too) is
    # no second end.
    assert import_events(failed, failed, no_errors, old_failure="unknown_format", new_failure="unknown_format") == []


def test_a_failed_import_whose_lines_were_counted_omits_only_the_errors_not_yet_written():
    # Its file went missing on the retry of an interrupted split: two lines had failed before.
    failure = {"line": None, "external_id": None, "code": "file_unavailable", "message": "deleted"}
    failed = an_import("failed", failed=2, imported=0, total_final=False)
    [event] = import_events(
        an_import("running"), failed, lambda: [failure, an_error(2)], new_failure="file_unavailable"
    )
    assert event.data["import"]["errors"] == [failure, an_error(2)] and event.data["errors_omitted"] == 1


@pytest.mark.parametrize(("old", "old_failure"), [("running", None), ("failed", "split_interrupted")])
def test_an_interrupted_split_is_no_end_of_its_import_but_a_file_error_after_one_is(old, old_failure):
    interrupted = an_import("failed", total_final=False)
    assert import_events(an_import(old), interrupted, no_errors, old_failure, "split_interrupted") == []
    [event] = import_events(an_import(old), interrupted, no_errors, old_failure, "file_unavailable")
    assert event.data["import"]["status"] == "failed"


# --- Refunds as the order stores them: written pending, then succeeded or failed -------------------


def _refund_steps() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A delivered, captured order's documents (Order.stored_json): before a refund, with the refund
    written pending (before the gateway is asked), the gateway approving it, and refusing it."""
    at = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    captured = a_stored_order(
        ("TSHIRT", 1),
        id="ord_aaaaaaaaaaaaaaaaaaaaaaaa",
        status=OrderStatus.DELIVERED,
        payment=Payment(
            method="test", status=PaymentStatus.CAPTURED, authorized=usd("10.00"), captured=usd("10.00"),
            refunded=usd("0.00"), authorization="auth-1",
        ),
    )  # fmt: skip
    pending, _ = captured.begin_refund("ref_1", usd("4.00"), reason="late", at=at, actor="key_1")
    succeeded, _ = pending.record_refund("ref_1", "gw-1", at=at, actor="key_1")
    failed, _ = pending.record_failed_refund("ref_1", None, "card closed", at=at, actor="key_1")
    captured_doc, pending_doc, succeeded_doc, failed_doc = (
        json.loads(order.stored_json()) for order in (captured, pending, succeeded, failed)
    )
    return captured_doc, pending_doc, succeeded_doc, failed_doc


def test_a_refund_written_pending_before_the_gateway_answers_is_no_event_yet():
    captured, pending, _, _ = _refund_steps()
    assert types(captured, pending) == []


def test_a_pending_refund_the_gateway_approves_is_refund_succeeded():
    _, pending, succeeded, _ = _refund_steps()
    (event,) = order_events(pending, succeeded)
    assert event.type is EventType.REFUND_SUCCEEDED
    assert event.data["refund"]["id"] == "ref_1" and event.data["refund"]["status"] == "succeeded"
    assert event.data["refund"]["amount"] == money("4.00")


def test_a_returns_refund_is_the_refund_as_get_refunds_shows_it_with_its_return():
    """The event's refund lacked `return_id`, which GET /orders/{id}/refunds shows: a subscriber
    could not tell which return a refund paid for."""
    from core.refunds import Refund

    captured, *_ = _refund_steps()
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    order = Order.model_validate(captured)
    pending, _ = order.begin_refund(
        "ref_2", usd("4.00"), reason="return", kind="return", return_id="rma_1", at=at, actor="returns"
    )
    succeeded, _ = pending.record_refund("ref_2", "gw-2", at=at, actor="returns")
    (event,) = order_events(json.loads(pending.stored_json()), json.loads(succeeded.stored_json()))
    shown = Refund.of(order.id, succeeded.payment.refund_by_id("ref_2")).model_dump(mode="json")
    assert shown["return_id"] == "rma_1"
    assert event.data["refund"] == shown


def test_a_pending_refund_the_gateway_refuses_is_refund_failed():
    _, pending, _, failed = _refund_steps()
    (event,) = order_events(pending, failed)
    assert event.type is EventType.REFUND_FAILED
    assert event.data["refund"]["id"] == "ref_1" and event.data["refund"]["status"] == "failed"


# --- Returns: their own items (the Returns table), with the order they belong to ------------------


def _return_steps() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A return's stored documents (Return.stored_json): requested, approved (its label a stored
    key), received, refunded."""
    at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    requested = Return(
        id="rma_aaaaaaaaaaaaaaaaaaaaaaaa",
        order_id="ord_aaaaaaaaaaaaaaaaaaaaaaaa",
        channel="web",
        ordinal=1,
        status="requested",
        lines=[ReturnLine(line_id="L1", quantity=1, reason="too small", reason_code="size_or_fit")],
        refund=usd("0.00"),
        fee=usd("0.00"),
        created_at=at,
        updated_at=at,
        version=1,
    )
    # Labelled at its approval's version, as Returns.approve labels it.
    approved = requested.approve(None, at=at).labelled("flat", "1Z1", "labels/rma/label.pdf")
    receipt = ReceiveReturn(location_id="wh1", lines=[{"line_id": "L1", "quantity": 1, "condition": "resellable"}])
    received = approved.receive(receipt, at=at, by="key_wh")
    refunded = received.refunded(usd("10.00"), at=at)
    requested_doc, approved_doc, received_doc, refunded_doc = (
        json.loads(item.stored_json()) for item in (requested, approved, received, refunded)
    )
    return requested_doc, approved_doc, received_doc, refunded_doc


def test_a_new_return_is_return_created_with_its_order_and_the_return_as_the_api_shows_it():
    requested, *_ = _return_steps()
    order = order_doc(status="delivered")
    (event,) = return_events(None, requested, order)
    assert event.type is EventType.RETURN_CREATED
    assert event.id == event_id(order["id"], 1, EventType.RETURN_CREATED, requested["id"])
    assert event.channel == "web" and event.data["order"]["id"] == order["id"]
    assert event.data["return"]["id"] == requested["id"] and event.data["return"]["status"] == "requested"
    assert event.data["return"]["lines"][0]["reason_code"] == "size_or_fit"


def test_a_received_return_is_return_received_once_and_its_label_key_is_never_shown():
    requested, approved, received, refunded = _return_steps()
    order = order_doc(status="delivered")
    assert return_events(requested, approved, order) == []
    (event,) = return_events(approved, received, order)
    assert event.type is EventType.RETURN_RECEIVED and event.data["return"]["status"] == "received"
    assert event.data["return"]["label_url"] is None
    assert return_events(received, refunded, order) == []
    assert [e.id for e in return_events(approved, received, order)] == [event.id]  # a redelivered change


def test_a_return_label_the_carrier_hosts_is_in_return_received_as_get_returns_shows_it():
    requested, *_ = _return_steps()
    at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    approved = Return.model_validate(requested).approve(None, at=at).labelled("parcelhub", "PH1", CARRIER_HOSTED)
    received = approved.receive(
        ReceiveReturn(location_id="wh1", lines=[{"line_id": "L1", "quantity": 1, "condition": "resellable"}]),
        at=at, by="key_wh",
    )  # fmt: skip
    old, new = (json.loads(item.stored_json()) for item in (approved, received))

    (event,) = return_events(old, new, order_doc(status="delivered"))

    assert event.data["return"]["label_url"] == CARRIER_HOSTED


def test_a_return_without_its_order_or_an_item_that_is_not_a_return_gives_nothing():
    requested, *_ = _return_steps()
    assert return_events(None, requested, None) == []
    assert return_events(None, order_doc(), order_doc()) == []


def a_refund_event(refunds: int) -> Any:
    """`refund.succeeded` of an order that took `refunds` refunds, shipped in two parcels."""
    old = order_doc(status="shipped", shipments=[shipment("shipped"), shipment("shipped", "shp_2")])
    taken = [
        {"id": f"ref_{n}", "amount": money("0.01"), "reason": "sorry " * 30, "reference": f"gw-{n}",
         "at": "2026-12-01T11:00:00Z"}
        for n in range(refunds)
    ]  # fmt: skip
    new = next_version(old, payment={**old["payment"], "refunds": taken, "refunded": money("1.00")})
    old["payment"]["refunds"] = taken[:-1]
    (event,) = order_events(old, new)
    return event


def weight(event: Any) -> int:
    return len(event.model_dump_json().encode())


def test_an_event_that_fits_goes_out_as_it_is():
    event = a_refund_event(3)
    ready = fitted(event, weight(event))
    assert ready.event is event and ready.body == event.model_dump_json() and ready.weight == weight(event)


def test_an_event_over_its_room_leaves_out_its_orders_refunds_first_and_names_what_it_left_out():
    event = a_refund_event(200)
    whole = json.loads(event.model_dump_json())
    ready = fitted(event, weight(event) // 2)
    slim = ready.event
    assert slim.id == event.id and slim.type is event.type and ready.weight <= weight(event) // 2
    assert ready.body == slim.model_dump_json() and ready.weight == weight(slim)
    assert slim.data["omitted"] == ["order.payment.refunds"]
    assert (
        "refunds" not in slim.data["order"]["payment"]
        and slim.data["order"]["shipments"] == whole["data"]["order"]["shipments"]
    )
    assert slim.data["refund"] == whole["data"]["refund"]  # what the event is about stays whole
    assert json.loads(event.model_dump_json()) == whole  # the event itself (its order shared) unchanged


def test_an_event_still_over_its_room_without_refunds_leaves_out_the_next_lists_in_turn():
    event = a_refund_event(1)
    without_refunds = fitted(event, weight(event) - 1)
    slim = fitted(event, without_refunds.weight - 1).event
    assert slim.data["omitted"] == ["order.payment.refunds", "order.shipments"]
    assert "shipments" not in slim.data["order"] and slim.data["order"]["lines"]


def test_an_event_leaves_out_no_list_that_is_empty():
    event = a_refund_event(1)
    event.data["order"]["payment"]["refunds"] = []
    slim = fitted(event, weight(event) - 1).event
    assert slim.data["omitted"] == ["order.shipments"] and slim.data["order"]["payment"]["refunds"] == []


def numbered(status: str, tracking_number: str | None, shipment_id: str = "shp_1") -> dict[str, Any]:
    return {**shipment(status, shipment_id), "tracking_number": tracking_number}


@pytest.mark.parametrize(("status", "expected"), [("shipped", "shipment.shipped"), ("delivered", "shipment.delivered")])
def test_a_tracking_number_set_after_the_ship_is_the_shipments_event_again_with_the_number(status: str, expected: str):
    """A parcel shipped without naming its number (it kept its label's, or had none) takes the one
    its location learns later (Order.set_tracking_number): no event said so, and a subscriber that
    follows shipment.shipped never learnt the number. The contract's types are fixed and it has no
    `shipment.updated`, so the change is the event of the shipment's status sent again (data.shipment
    as it is now, its number the new one), under an id of its own (another version)."""
    old = order_doc(status="shipped", shipments=[numbered(status, "OMS0000000001"), numbered("shipped", None, "shp_2")])
    numbered_now = next_version(old, shipments=[numbered(status, "1ZLATER0001"), numbered("shipped", None, "shp_2")])

    (event,) = order_events(old, numbered_now)

    assert event.type.value == expected
    assert event.data["shipment"]["id"] == "shp_1" and event.data["shipment"]["tracking_number"] == "1ZLATER0001"
    assert event.data["shipment"]["status"] == status
    first = order_events(order_doc(status="allocated", shipments=[numbered("pending", "OMS0000000001")]), old)
    assert event.id not in {e.id for e in first}
    assert [e.id for e in order_events(old, numbered_now)] == [event.id]  # a redelivered change: the same id


def test_a_tracking_number_unchanged_or_on_a_parcel_not_yet_shipped_is_no_shipment_event():
    pending = order_doc(status="allocated", shipments=[numbered("pending", "OMS0000000001")])
    relabelled = next_version(pending, shipments=[numbered("pending", "OMS0000000002")])
    shipped = order_doc(status="shipped", shipments=[numbered("shipped", "1Z1")])
    again = next_version(shipped, shipments=[numbered("shipped", "1Z1")])
    assert types(pending, relabelled) == []  # its shipped event will carry the number it leaves with
    assert types(shipped, again) == []


def test_a_partly_shipped_orders_rejected_parcel_is_shipment_rejected_and_the_order_lists_what_replaces_it():
    at = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)

    def parcel(shipment_id: str, location_id: str, **changes: Any) -> Shipment:
        return Shipment(
            id=shipment_id, location_id=location_id, lines=[ShipmentLine(line_id="L1", quantity=1)], carrier="flat",
            service="ground", label_url=f"labels/ord/{shipment_id}.pdf", **changes,
        )  # fmt: skip

    partly = a_stored_order(
        ("TSHIRT", 2), id="ord_aaaaaaaaaaaaaaaaaaaaaaaa", status=OrderStatus.PARTIALLY_SHIPPED,
        shipments=[parcel("shp_0", "wh0", status="shipped", shipped_at=at), parcel("shp_1", "wh1")],
        allocations=[Allocation(line_id="L1", location_id="wh1", quantity=1)],
    )  # fmt: skip
    rejected, entries = partly.reject_in_part(
        "shp_1", "damaged stock", shipments=[parcel("shp_2", "wh2")],
        allocations=[Allocation(line_id="L1", location_id="wh2", quantity=1)], cancelled=None, at=at, actor="key_wh",
    )  # fmt: skip
    old, new = (json.loads(order.stored_json()) for order in (partly, rejected))

    events = order_events(old, new)

    assert [e.type.value for e in events] == ["shipment.rejected"]
    assert (events[0].data["shipment"]["id"], events[0].data["shipment"]["status"]) == ("shp_1", "cancelled")
    assert [s["id"] for s in events[0].data["order"]["shipments"]] == ["shp_0", "shp_2"]
    assert rejected.status is OrderStatus.PARTIALLY_SHIPPED and rejected.excluded_locations == ["wh1"]
    assert [e.type.value for e in entries] == ["shipment_rejected"] and rejected.stock_owed


# --- What a subscriber meets at the edges ---------------------------------------------------------
def test_an_event_is_dated_by_the_change_that_made_it_not_by_its_orders_creation():
    old = order_doc(status="pending")
    (event,) = order_events(old, next_version(old, status="authorized"))
    assert event.created_at.isoformat() == "2026-12-01T10:05:00+00:00"


def test_two_parcels_shipped_in_one_change_are_two_events_a_subscriber_tells_apart_by_id():
    # Subscribers dedupe by OMS-Event-Id: one id for both parcels would have them drop the second.
    old = order_doc(status="allocated", shipments=[shipment("pending"), shipment("pending", "shp_2")])
    new = next_version(old, status="shipped", shipments=[shipment("shipped"), shipment("shipped", "shp_2")])
    events = order_events(old, new)
    assert [e.type.value for e in events] == ["shipment.shipped", "shipment.shipped"]
    assert len({e.id for e in events}) == 2


def test_an_order_marked_late_again_from_a_later_moment_is_order_jeopardy_again():
    # A mark of a new lateness (cleared, then late by a lengthened deadline) keeps `jeopardy` set
    # from one version to the next: its new `since` is the event (and the customer's notice).
    old = order_doc(status="authorized")
    marked = next_version(old, jeopardy={"reason": "late", "status": "authorized", "since": "2026-12-01T10:20:00Z"})
    again = next_version(marked, jeopardy={"reason": "later", "status": "authorized", "since": "2026-12-02T10:20:00Z"})
    assert types(marked, again) == ["order.jeopardy"]


def test_an_order_on_hold_whose_document_names_no_hold_is_on_hold_then_released():
    # The status alone says it is held (_held): a release from it is order.released, not the status
    # it resumes reached anew.
    old = order_doc(status="authorized")
    held = next_version(old, status="on_hold")
    assert types(old, held) == ["order.on_hold"]
    assert types(held, next_version(held, status="authorized")) == ["order.released"]


def test_a_return_received_and_refunded_in_one_write_is_return_received():
    _, approved, _, refunded = _return_steps()
    order = order_doc(status="delivered")
    assert [e.type.value for e in return_events(approved, refunded, order)] == ["return.received"]
    # As the order's own `returns` show it too.
    listed = order_doc(status="delivered", returns=[{"id": "rma_1", "status": "authorized"}])
    done = next_version(listed, status="returned", returns=[{"id": "rma_1", "status": "refunded"}])
    assert types(listed, done) == ["return.received"]


def test_a_reject_at_one_location_is_shipment_rejected_for_its_parcel_only_though_the_others_go_too():
    # Sent back to be sourced, the order loses every pending parcel; the other location's parcel is
    # sourced again, not rejected: subscribers would be told of a reject that never happened.
    at = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)

    def parcel(shipment_id: str, location_id: str) -> Shipment:
        return Shipment(
            id=shipment_id, location_id=location_id, lines=[ShipmentLine(line_id="L1", quantity=1)], carrier="flat",
            service="ground", label_url=f"labels/ord/{shipment_id}.pdf",
        )  # fmt: skip

    allocated = a_stored_order(
        ("TSHIRT", 2), id="ord_aaaaaaaaaaaaaaaaaaaaaaaa", status=OrderStatus.ALLOCATED,
        shipments=[parcel("shp_1", "wh1"), parcel("shp_2", "wh2")],
        allocations=[Allocation(line_id="L1", location_id=f"wh{n}", quantity=1) for n in (1, 2)],
    )  # fmt: skip
    rejected, _ = allocated.reject_shipment("shp_1", "damaged stock", at=at, actor="key_store")
    old, new = (json.loads(order.stored_json()) for order in (allocated, rejected))

    events = [e for e in order_events(old, new) if e.type is EventType.SHIPMENT_REJECTED]

    assert new["shipments"] == [] and [e.data["shipment"]["id"] for e in events] == ["shp_1"]


def test_a_split_refund_refused_after_a_part_went_back_is_failed_for_the_rest_and_succeeded_for_the_part():
    # GET /orders/{id}/refunds shows it so (core.refunds): the failed refund is what did not go back.
    pending = {
        "id": "ref_1",
        "amount": money("4.00"),
        "reason": "late",
        "status": "pending",
        "at": "2026-12-01T11:00:00Z",
    }
    parts = [
        {"authorization": "auth-1", "amount": money("1.00"), "status": "succeeded"},
        {"authorization": "auth-2", "amount": money("3.00"), "status": "failed"},
    ]
    old = order_doc(status="delivered", payment={**order_doc()["payment"], "refunds": [pending]})
    new = next_version(
        old,
        payment={
            **old["payment"],
            "refunds": [{**pending, "status": "failed", "parts": parts}],
            "refunded": money("1.00"),
        },
    )

    shown = {e.type.value: (e.data["refund"]["id"], e.data["refund"]["amount"]) for e in order_events(old, new)}

    assert shown == {
        "refund.failed": ("ref_1", money("3.00")),
        "refund.succeeded": (went_back_id("ref_1"), money("1.00")),
    }


def utf8_weight(errors: list[dict[str, Any]]) -> int:
    """What the errors weigh in an event, each as its compact JSON in UTF-8 and a separator."""
    return sum(len(json.dumps(error, ensure_ascii=False, separators=(",", ":")).encode()) + 1 for error in errors)


def test_an_imports_errors_that_fill_the_events_room_exactly_are_all_carried():
    # 100 errors of 2,048 bytes each: exactly IMPORT_EVENT_ERROR_BYTES.
    errors = [an_error(line, "") for line in range(100, 200)]
    errors = [{**error, "message": "a" * (2048 - utf8_weight([error]))} for error in errors]
    assert utf8_weight(errors) == IMPORT_EVENT_ERROR_BYTES
    ended = an_import("completed_with_errors", failed=100, imported=0, total=100)
    [event] = import_events(an_import("running"), ended, lambda: errors)
    assert event.data["import"]["errors"] == errors and event.data["errors_omitted"] == 0


def test_an_imports_non_ascii_errors_are_weighed_in_utf8_so_as_many_as_fit_are_carried():
    errors = [an_error(line, "é" * 500) for line in range(2, 1002)]
    ended = an_import("completed_with_errors", failed=1000, imported=0, total=1000)
    [event] = import_events(an_import("running"), ended, lambda: errors)
    carried = event.data["import"]["errors"]
    assert utf8_weight(carried) <= IMPORT_EVENT_ERROR_BYTES < utf8_weight(errors[: len(carried) + 1])


def test_an_import_failing_more_lines_than_it_keeps_errors_for_omits_none_of_the_errors_it_lists():
    # `failed` counts every line; GET /imports/{id} lists the first MAX_REPORTED_ERRORS errors only.
    from core.import_service import MAX_REPORTED_ERRORS

    errors = [an_error(line) for line in range(2, 2 + MAX_REPORTED_ERRORS)]
    ended = an_import("completed_with_errors", failed=MAX_REPORTED_ERRORS + 200, imported=0, total=1200)
    [event] = import_events(an_import("running"), ended, lambda: errors)
    assert event.data["import"]["errors"] == errors and event.data["errors_omitted"] == 0
