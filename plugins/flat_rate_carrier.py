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
pickup (or a pickup order) → "Store pickup", anything else title-cased ("two_day" → "Two Day").

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

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core import hookimpl
from core.errors import InvalidRequest, field_path
from core.ids import parse_shipment_reference, shipment_reference
from core.models import Address, Location, Order, ShipmentLine
from core.workflow_types import CarrierShipment, RefusedField, RefusedTrackingEvent, TrackingUpdate, UtcTime

CARRIER = "OMS Flat Rate"
TRACKING_CARRIER = "oms-flat-rate"  # the {carrier} of POST /carriers/{carrier}/tracking
TRACKING_PREFIX = "OMS"
TRACKING_BODY_DIGITS = 12

SERVICES = {
    "standard": "Ground",
    "ground": "Ground",
    "express": "Express",
    "pickup": "Store pickup",
}

# 4 x 6 inches in PDF points (1/72 inch): the usual thermal shipping label.
PAGE_WIDTH = 288
PAGE_HEIGHT = 432
MARGIN = 18
MAX_LABEL_LINES = 12  # content lines listed before "... and N more lines"


def service_for(order: Order) -> str:
    method = (order.shipping_method or "").strip().lower()
    if order.fulfillment.type == "pickup" and not method:
        return SERVICES["pickup"]
    if not method:
        return SERVICES["standard"]
    return SERVICES.get(method) or method.replace("_", " ").title()[:60]


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of a string of digits (weights 3, 1, ... from the right)."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("a check digit is computed over digits only")
    weighted = sum(int(digit) * (3 if index % 2 == 0 else 1) for index, digit in enumerate(reversed(digits)))
    return str((10 - weighted % 10) % 10)


def tracking_number(shipment_id: str) -> str:
    """The tracking number of a shipment: "OMS" + 12 digits derived from its id + a check digit."""
    if not shipment_id:
        raise ValueError("a shipment id is needed to derive its tracking number")
    digest = hashlib.sha256(f"oms-flat-rate:{shipment_id}".encode()).digest()
    body = str(int.from_bytes(digest, "big") % 10**TRACKING_BODY_DIGITS).zfill(TRACKING_BODY_DIGITS)
    return f"{TRACKING_PREFIX}{body}{gs1_check_digit(body)}"


def is_valid_tracking_number(value: str) -> bool:
    body = value.removeprefix(TRACKING_PREFIX)
    return (
        value.startswith(TRACKING_PREFIX)
        and len(body) == TRACKING_BODY_DIGITS + 1
        and body.isascii()
        and body.isdigit()
        and gs1_check_digit(body[:-1]) == body[-1]
    )


# --- The label --------------------------------------------------------------------------------
# The PDF is written by hand: a single page with uncompressed text in the standard Helvetica
# fonts (every PDF reader has them, so nothing is embedded) takes about 40 lines, and no
# well-kept PDF writer is a dependency of the OMS; adding one (and its native wheels) to every
# Lambda package for a stand-in carrier's label would not pay for itself.


def pdf_text(value: str) -> str:
    """`value` as the body of a PDF literal string: printable ASCII only, specials escaped."""
    ascii_only = "".join(char if " " <= char <= "~" else "?" for char in value)
    return ascii_only.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _fit(value: str, size: float) -> str:
    # Helvetica averages about 0.55 em a character: cut what would run off the label.
    room = int((PAGE_WIDTH - 2 * MARGIN) / (size * 0.55))
    return value if len(value) <= room else value[: room - 3] + "..."


def _address_lines(address: Address) -> list[str]:
    city_line = " ".join(part for part in (address.city, address.region, address.postal_code) if part)
    return [address.name, address.line1, *([address.line2] if address.line2 else []), city_line, address.country]


def _weight(weight_grams: int) -> str:
    pounds = weight_grams / 453.59237
    return f"{weight_grams / 1000:.2f} kg ({pounds:.2f} lb)"


def _content_lines(order: Order, lines: list[ShipmentLine]) -> list[str]:
    sku_of = {line.line_id: line.sku for line in order.lines}
    listed = [f"{line.line_id}  {sku_of.get(line.line_id, '?')}  x{line.quantity}" for line in lines]
    if len(listed) > MAX_LABEL_LINES:
        listed = [*listed[: MAX_LABEL_LINES - 1], f"... and {len(listed) - MAX_LABEL_LINES + 1} more lines"]
    return listed


def _rendered(rows: list[tuple[str, float, str] | None]) -> bytes:
    """The page's content stream: (font, size, text) rows top-down, None a rule between blocks."""
    commands: list[str] = []
    y = PAGE_HEIGHT - MARGIN
    for row in rows:
        if row is None:
            y -= 4
            commands.append(f"0.8 w {MARGIN} {y} m {PAGE_WIDTH - MARGIN} {y} l S")
            y -= 4
            continue
        font, size, text = row
        y -= size + 2
        commands.append(f"BT /{font} {size} Tf {MARGIN} {y} Td ({pdf_text(_fit(text, size))}) Tj ET")
    return "\n".join(commands).encode("ascii")


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
        *[("F1", 8, text) for text in [origin.name, *_address_lines(origin.address)[1:]]],
        None,
        ("F1", 7, "TO:"),
        *[("F2", 12, text) for text in _address_lines(order.shipping_address)],
        None,
        ("F2", 12, f"SERVICE: {service.upper()}"),
        ("F2", 12, f"TRACKING #: {tracking}"),
        None,
        ("F1", 7, f"Ref: {shipment_reference(order.id, shipment_id)}"),  # what tracking events echo
        ("F1", 8, f"Weight: {_weight(weight_grams)}"),
        ("F1", 8, f"Contents ({sum(line.quantity for line in lines)} units):"),
        *[("F1", 8, text) for text in _content_lines(order, lines)],
    ]
    return _rendered(rows)


def pdf_document(content: bytes, title: str) -> bytes:
    """A valid single-page PDF 1.4 of PAGE_WIDTH x PAGE_HEIGHT points showing `content`."""
    fonts = "/Font << /F1 5 0 R /F2 6 0 R >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
        f"/Resources << {fonts} >> /Contents 4 0 R >>".encode("ascii"),
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        f"<< /Title ({pdf_text(title)}) /Producer (OMS flat_rate_carrier) >>".encode("ascii"),
    ]
    # The binary comment after the header tells transfer tools the file is not text.
    document = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(document))
        document += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(document)
    # Every cross-reference entry is exactly 20 bytes: 10-digit offset, 5-digit generation, type, EOL.
    document += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    document += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    document += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, len(objects))
    document += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(document)


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
        *[("F1", 8, text) for text in _address_lines(order.shipping_address)],
        None,
        ("F1", 7, "TO:"),
        *[("F2", 12, text) for text in [destination.name, *_address_lines(destination.address)[1:]]],
        None,
        ("F2", 12, f"RMA: {return_id}"),
        ("F2", 12, f"TRACKING #: {tracking}"),
        None,
        ("F1", 7, f"Order: {order.id}"),
        ("F1", 8, f"Weight: {_weight(weight_grams)}"),
        ("F1", 8, f"Contents ({sum(line.quantity for line in lines)} units):"),
        *[("F1", 8, text) for text in _content_lines(order, lines)],
    ]
    return _rendered(rows)


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
