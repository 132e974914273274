"""A pickup parcel's pick slip: made by the OMS itself, never booked with a carrier.

A pickup order's parcel waits on a shelf of the store the customer collects from; it never
travels, so no carrier plugin is asked to book it (a real carrier would charge for a label nobody
uses, and the store would print that carrier's label for a shelf) or, once given up, to cancel it:
core.workflow_types.book_parcel makes the slip here instead, for CreateShipments, a reject's parcel
sourced again and a parcel a cancel of units shrank alike. The slip has what a label has, so a
pickup shipment reads as any other: carrier `OMS`, service `Store pickup`, a pickup code in
`tracking_number` and a printable 4x6 PDF in `label_url`.

The pickup code: "PU" + 12 digits + a GS1 mod-10 check digit (the flat-rate carrier's scheme, so a
mistyped digit at the counter is caught), the 12 digits SHA-256("oms-pick-slip:" + shipment id)
modulo 10**12: the same parcel (the same id, on every retry) always gets the same code. The slip
also prints the parcel's reference ("ord_…/shp_…", core.ids.shipment_reference) and its contents.

A pickup parcel stored before the OMS made its slips was booked with the carrier plugins (the
built-in answered "Store pickup" as carrier `OMS Flat Rate`): it keeps that booking, reads as
before, and is still cancelled with its carrier when given up (only a slip, carrier `OMS`, is not).
"""

from __future__ import annotations

from typing import NamedTuple

from core.ids import shipment_reference
from core.models import Location, Order, ShipmentLine
from core.pdf_pages import (
    address_lines,
    content_lines,
    contents_heading,
    derived_code,
    paged,
    pdf_pages_document,
    weight_text,
    wrapped,
)

PICK_SLIP_SERVICE = "Store pickup"  # its carrier is core.models.PICK_SLIP_CARRIER, "OMS"
CODE_PREFIX = "PU"
CODE_DIGITS = 12


class PickSlip(NamedTuple):
    code: str  # the pickup code, shown as the shipment's tracking number
    document: bytes  # the slip, a PDF


def pickup_code(shipment_id: str) -> str:
    """The pickup code of a parcel: "PU" + 12 digits derived from its id + a check digit."""
    if not shipment_id:
        raise ValueError("a shipment id is needed to derive its pickup code")
    return derived_code(CODE_PREFIX, "oms-pick-slip", shipment_id, CODE_DIGITS)


def pick_slip(
    order: Order, shipment_id: str, store: Location, lines: list[ShipmentLine], weight_grams: int
) -> PickSlip:
    """The slip of the pickup parcel `shipment_id` of `order`, picked at `store`: what the store
    puts with the units on the shelf, and finds again by the order the customer names when
    collecting: the number the ready_for_pickup notification gave them (core.notifications), the
    storefront's `external_id`, or the OMS's id for an order placed without one (the reference
    line keeps the OMS's ids)."""
    code = pickup_code(shipment_id)
    customer = order.customer.name or order.shipping_address.name
    rows: list[tuple[str, float, str] | None] = [
        ("F2", 14, "STORE PICKUP"),
        ("F1", 7, "AT:"),
        *[("F1", 8, text) for text in [store.name, *address_lines(store.address)[1:]]],
        None,
        ("F1", 7, "FOR:"),
        ("F2", 12, customer),
        ("F1", 8, order.customer.email),
        None,
        ("F2", 12, f"PICKUP CODE: {code}"),
        *[("F1", 8, text) for text in wrapped(f"Order: {order.external_id or order.id}", 8)],
        None,
        ("F1", 7, f"Ref: {shipment_reference(order.id, shipment_id)}"),
        ("F1", 8, f"Weight: {weight_text(weight_grams)}"),
        ("F1", 8, contents_heading(lines)),
        # Every line, over more pages when they need them: the store picks the parcel from this list.
        *[("F1", 8, text) for text in content_lines(order, lines, limit=None)],
    ]
    title = f"Pick slip {code}"
    return PickSlip(code=code, document=pdf_pages_document(paged(rows, title), title=title))
