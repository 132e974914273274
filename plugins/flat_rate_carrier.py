"""Built-in carrier "OMS Flat Rate": books every shipment itself, with a tracking number and a 4x6 inch PDF label.

It stands in for a real carrier integration (which a third-party plugin provides, answering first:
this one is `trylast`), so the workflow, the local stack and the tests get realistic shipments
without a carrier account.

Tracking numbers: "OMS" + 12 digits + 1 check digit, e.g. "OMS4839201746385".
- The 12 digits are SHA-256("oms-flat-rate:" + shipment id) read as a number, modulo 10**12: the
  same shipment id (which is the same on every retry) always gets the same tracking number. It
  keeps no bookings, so it needs no `booking_key`: every call renders the label from the lines and
  weight it is given (an edited order's parcel, booked again under the same shipment id, shows
  what it now holds), and the number stays the shipment's, which its webhook checks.
- The check digit is the GS1 mod-10 digit that USPS and GS1 labels use: weights 3, 1, 3, ...
  from the rightmost digit of the 12, and the digit that brings the weighted sum to a multiple
  of 10. It catches any single mistyped digit and most swaps of neighbours.
Two different shipments share a number only by a hash collision: one chance in 10**12 for a
given pair, so likely somewhere among about a million shipments. Fine for a stand-in carrier,
whose numbers nobody looks up; a real carrier issues unique ones.

Services by the order's `shipping_method`: standard and ground → "Ground", express → "Express",
anything else title-cased ("two_day" → "Two Day"). A pickup order never reaches it: the OMS makes
a pickup parcel's pick slip itself (core/pick_slips.py), asking no carrier plugin.

Tracking: the label prints the booking's reference ("ord_…/shp_…", core.ids.shipment_reference).
Whoever scans the parcel (a courier app, a relay, a person) posts to
`POST /carriers/oms-flat-rate/tracking`:

    {"events": [{"reference": "ord_…/shp_…", "tracking_number": "OMS…",
                 "status": "in_transit" | "delivered", "at": "2026-11-22T12:00:00Z",
                 "description": "Left with the concierge"}]}

`description` is optional. Each event's tracking number must be the one this carrier gave that
shipment, so an event pasted onto the wrong reference is refused rather than delivering someone
else's parcel. A bad event (that, a reference on no label, a field missing or malformed, a time
without a zone) is refused alone, at its position, and the others are applied; a body that is no
such webhook at all (not an object, no `events` list, a field besides it, more than 100 events)
is refused whole (422).
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core import hookimpl
from core.errors import InvalidRequest, field_path
from core.ids import parse_shipment_reference, shipment_reference
from core.models import Location, Order, ShipmentLine
from core.pdf_pages import (
    address_lines,
    content_lines,
    contents_heading,
    derived_code,
    gs1_check_digit,
    pdf_document,
    rendered,
    weight_text,
)
from core.workflow_types import CarrierShipment, RefusedField, RefusedTrackingEvent, TrackingUpdate, UtcTime

CARRIER = "OMS Flat Rate"
TRACKING_CARRIER = "oms-flat-rate"  # the {carrier} of POST /carriers/{carrier}/tracking
TRACKING_PREFIX = "OMS"
TRACKING_BODY_DIGITS = 12

SERVICES = {
    "standard": "Ground",
    "ground": "Ground",
    "express": "Express",
}


def service_for(order: Order) -> str:
    method = (order.shipping_method or "").strip().lower()
    if not method:
        return SERVICES["standard"]
    return SERVICES.get(method) or method.replace("_", " ").title()[:60]


def tracking_number(shipment_id: str) -> str:
    """The tracking number of a shipment: "OMS" + 12 digits derived from its id + a check digit."""
    if not shipment_id:
        raise ValueError("a shipment id is needed to derive its tracking number")
    return derived_code(TRACKING_PREFIX, "oms-flat-rate", shipment_id, TRACKING_BODY_DIGITS)


def is_valid_tracking_number(value: str) -> bool:
    body = value.removeprefix(TRACKING_PREFIX)
    return (
        value.startswith(TRACKING_PREFIX)
        and len(body) == TRACKING_BODY_DIGITS + 1
        and body.isascii()
        and body.isdigit()
        and gs1_check_digit(body[:-1]) == body[-1]
    )


def _label_content(
    order: Order,
    shipment_id: str,
    origin: Location,
    lines: list[ShipmentLine],
    weight_grams: int,
    service: str,
    tracking: str,
) -> bytes:
    """The page's content stream: (font, size, text) rows top-down, with rules between the blocks."""
    rows: list[tuple[str, float, str] | None] = [
        ("F2", 14, CARRIER),
        ("F1", 7, "FROM:"),
        *[("F1", 8, text) for text in [origin.name, *address_lines(origin.address)[1:]]],
        None,
        ("F1", 7, "TO:"),
        *[("F2", 12, text) for text in address_lines(order.shipping_address)],
        None,
        ("F2", 12, f"SERVICE: {service.upper()}"),
        ("F2", 12, f"TRACKING #: {tracking}"),
        None,
        ("F1", 7, f"Ref: {shipment_reference(order.id, shipment_id)}"),  # what tracking events echo
        ("F1", 8, f"Weight: {weight_text(weight_grams)}"),
        ("F1", 8, contents_heading(lines)),
        *[("F1", 8, text) for text in content_lines(order, lines)],
    ]
    return rendered(rows)


@hookimpl(trylast=True)
def oms_carrier_create_shipment(
    order: Order, shipment_id: str, origin: Location, lines: list[ShipmentLine], weight_grams: int
) -> CarrierShipment:
    if weight_grams < 0:
        raise ValueError("a parcel cannot weigh less than nothing")
    service = service_for(order)
    tracking = tracking_number(shipment_id)
    content = _label_content(order, shipment_id, origin, lines, weight_grams, service, tracking)
    return CarrierShipment(
        carrier=CARRIER,
        service=service,
        tracking_number=tracking,
        label=pdf_document(content, title=f"Shipping label {tracking}"),
        label_content_type="application/pdf",
    )


@hookimpl(trylast=True)
def oms_carrier_cancel_shipment(carrier: str | None) -> bool | None:
    """Its bookings cost nothing and it keeps none: one given up is cancelled by forgetting it. So
    is one maybe made (`carrier` None), which it is asked about last: whatever it booked under the
    key costs nothing."""
    return True if carrier in (CARRIER, None) else None


# --- Return labels ----------------------------------------------------------------------------

RETURN_SERVICE = "Returns"


def _return_label_content(
    order: Order, return_id: str, destination: Location, lines: list[ShipmentLine], weight_grams: int, tracking: str
) -> bytes:
    """A return label: from the customer's address back to the location, the RMA in large type so
    the receiving dock knows which return a parcel is."""
    rows: list[tuple[str, float, str] | None] = [
        ("F2", 14, f"{CARRIER} RETURN"),
        ("F1", 7, "FROM:"),
        *[("F1", 8, text) for text in address_lines(order.shipping_address)],
        None,
        ("F1", 7, "TO:"),
        *[("F2", 12, text) for text in [destination.name, *address_lines(destination.address)[1:]]],
        None,
        ("F2", 12, f"RMA: {return_id}"),
        ("F2", 12, f"TRACKING #: {tracking}"),
        None,
        ("F1", 7, f"Order: {order.id}"),
        ("F1", 8, f"Weight: {weight_text(weight_grams)}"),
        ("F1", 8, contents_heading(lines)),
        *[("F1", 8, text) for text in content_lines(order, lines)],
    ]
    return rendered(rows)


@hookimpl(trylast=True)
def oms_carrier_return_label(
    order: Order, return_id: str, destination: Location, lines: list[ShipmentLine], weight_grams: int
) -> CarrierShipment:
    """The return's tracking number is derived from its RMA id like a shipment's from its id, so a
    retried request books the same label. It keeps no bookings, so it needs no `booking_key`: every
    call renders the lines and weight it is given (a request made again with other lines after a
    failed booking shows what it now holds)."""
    if weight_grams < 0:
        raise ValueError("a parcel cannot weigh less than nothing")
    tracking = tracking_number(return_id)
    content = _return_label_content(order, return_id, destination, lines, weight_grams, tracking)
    return CarrierShipment(
        carrier=CARRIER,
        service=RETURN_SERVICE,
        tracking_number=tracking,
        label=pdf_document(content, title=f"Return label {tracking}"),
        label_content_type="application/pdf",
    )


# --- Tracking ---------------------------------------------------------------------------------


class TrackingEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    reference: Annotated[str, StringConstraints(min_length=3, max_length=130)]
    tracking_number: Annotated[str, StringConstraints(min_length=4, max_length=60)]
    status: Literal["in_transit", "delivered"]
    at: UtcTime  # a time with its zone that exists in UTC
    description: Annotated[str, StringConstraints(max_length=500)] = ""


class TrackingWebhook(BaseModel):
    """The body: each event is read on its own (tracking_updates), so one bad event refuses no other."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    events: Annotated[list[Any], Field(max_length=100)]


def _refused(index: int, message: str, details: list[tuple[str, str]]) -> RefusedTrackingEvent:
    return RefusedTrackingEvent(
        message=message, details=[RefusedField(field=f"events[{index}]{path}", message=why) for path, why in details]
    )


def _event(index: int, sent: Any) -> TrackingUpdate | RefusedTrackingEvent:
    try:
        event = TrackingEvent.model_validate(sent)
    except ValidationError as exc:
        details = [
            (f".{path}" if (path := field_path(error["loc"])) else "", error["msg"])
            for error in exc.errors(include_url=False, include_input=False)
        ]
        return _refused(index, "not an OMS Flat Rate tracking event", details)
    ids = parse_shipment_reference(event.reference)
    if ids is None:
        return _refused(
            index, "a tracking event's reference is not the one on the label", [(".reference", "expected ord_…/shp_…")]
        )
    if event.tracking_number != tracking_number(ids[1]):
        return _refused(
            index, "a tracking event's tracking number is not the one of its shipment",
            [(".tracking_number", f"not the number of {ids[1]}")],
        )  # fmt: skip
    return TrackingUpdate(
        order_id=ids[0], shipment_id=ids[1], status=event.status, at=event.at, description=event.description
    )


def tracking_updates(payload: Any) -> list[TrackingUpdate | RefusedTrackingEvent]:
    """The updates of one webhook body, one per event in the order sent: an event that is wrong is
    refused in its place (RefusedTrackingEvent, naming the field: "events[3].tracking_number"), the
    others read. InvalidRequest (422) naming the field for a body that is no such webhook at all."""
    try:
        webhook = TrackingWebhook.model_validate(payload)
    except ValidationError as exc:
        details = [{"field": field_path(error["loc"]) or "body", "message": error["msg"]} for error in exc.errors()]
        raise InvalidRequest("not an OMS Flat Rate tracking webhook", details=details) from None
    return [_event(index, sent) for index, sent in enumerate(webhook.events)]


@hookimpl(trylast=True)
def oms_carrier_tracking_update(carrier: str, payload: Any) -> list[TrackingUpdate | RefusedTrackingEvent] | None:
    if carrier != TRACKING_CARRIER:
        return None
    return tracking_updates(payload)
