"""Acme Courier: next-day delivery within Great Britain, booked and tracked through the OMS.

- Quote: `acme_next_day` for orders in GBP shipped to GB: £6.95 up to 2 kg, £1.50 more per
  started kilogram above. Nothing for any other order, so their default method stays `standard`.
- Book: only orders whose shipping method is `acme_next_day` (any other is left to the next
  carrier plugin). The booking's reference is core.tracking.shipment_reference(order, shipment),
  which Acme echoes in its webhooks; a real integration would send it with the booking request,
  and `booking_key` as that request's idempotency key (never the shipment id: an edited order's
  parcel is booked again under the same shipment id, and must not get the old booking back). The
  label prints the booking it belongs to.
- Track: Acme posts one event per webhook to POST /carriers/acme-courier/tracking:

      {"parcel": {"tracking_number": "ACME0123456789", "customer_reference": "ord_…/shp_…"},
       "event": "DELIVERED", "occurred_at": "2026-01-16T10:02:00Z", "note": "Left in porch"}

  DELIVERED delivers the shipment; COLLECTED, IN_DEPOT and OUT_FOR_DELIVERY are in transit; other
  events (e.g. LABEL_CREATED) say nothing about where the parcel is and are skipped. When
  OMS_ACME_WEBHOOK_SECRET is set, the `Acme-Signature: sha256=<hex>` header must be the HMAC-SHA256
  of the raw body with that secret, or the webhook is refused (422).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from core import hookimpl
from core.errors import InvalidRequest, field_path
from core.models import Address, Location, Order, ShipmentLine
from core.money import Money
from core.pdf_pages import pdf_document, pdf_text
from core.pricing_types import PricingDraft, ShippingQuote
from core.tracking import parse_shipment_reference, shipment_reference
from core.workflow_types import CarrierShipment, TrackingUpdate

SHIPPING_METHOD = "acme_next_day"
CARRIER = "Acme Courier"
SERVICE = "Next day"
TRACKING_CARRIER = "acme-courier"  # the {carrier} of POST /carriers/{carrier}/tracking
WEBHOOK_SECRET_ENV = "OMS_ACME_WEBHOOK_SECRET"

BASE = Money(amount="6.95", currency="GBP")
PER_EXTRA_KG = Money(amount="1.50", currency="GBP")
INCLUDED_GRAMS = 2000

EVENTS = {"COLLECTED": "in_transit", "IN_DEPOT": "in_transit", "OUT_FOR_DELIVERY": "in_transit",
          "DELIVERED": "delivered"}  # fmt: skip


def charge(weight_grams: int) -> Money:
    extra_kg = -(-max(weight_grams - INCLUDED_GRAMS, 0) // 1000)  # every started kilogram
    return BASE + PER_EXTRA_KG.times(extra_kg)


@hookimpl
def oms_shipping_quotes(draft: PricingDraft, address: Address) -> list[ShippingQuote] | None:
    if draft.currency != "GBP" or address.country != "GB":
        return None
    return [ShippingQuote(method=SHIPPING_METHOD, amount=charge(draft.weight_grams), description="Acme next day")]


def tracking_number(shipment_id: str) -> str:
    """Acme's number for a shipment: the same on every retry of the booking."""
    digest = hashlib.sha256(f"acme:{shipment_id}".encode()).digest()
    return f"ACME{int.from_bytes(digest, 'big') % 10**10:010d}"


def _label(
    order: Order, shipment_id: str, booking_key: str, origin: Location, weight_grams: int, tracking: str
) -> bytes:
    to = order.shipping_address
    rows = [CARRIER, f"{SERVICE} - {tracking}", f"From: {origin.name}, {origin.address.city}",
            f"To: {to.name}, {to.line1}, {to.city} {to.postal_code}",
            f"Ref: {shipment_reference(order.id, shipment_id)}", f"Booking: {booking_key}",
            f"Weight: {weight_grams} g"]  # fmt: skip
    lines = [f"BT /F1 9 Tf 18 {400 - 16 * i} Td ({pdf_text(row)}) Tj ET" for i, row in enumerate(rows)]
    return pdf_document("\n".join(lines).encode("ascii"), title=f"{CARRIER} {tracking}")


@hookimpl
def oms_carrier_create_shipment(
    order: Order, shipment_id: str, booking_key: str, origin: Location, lines: list[ShipmentLine], weight_grams: int
) -> CarrierShipment | None:
    """The tracking number stays the shipment's (the webhook checks it against the reference's
    shipment); the label is the booking's."""
    if order.shipping_method != SHIPPING_METHOD:
        return None
    tracking = tracking_number(shipment_id)
    return CarrierShipment(
        carrier=CARRIER,
        service=SERVICE,
        tracking_number=tracking,
        label=_label(order, shipment_id, booking_key, origin, weight_grams, tracking),
    )


class Parcel(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Acme adds fields; what is needed is checked

    tracking_number: str
    customer_reference: str


class Webhook(BaseModel):
    model_config = ConfigDict(extra="ignore")

    parcel: Parcel
    event: str
    occurred_at: AwareDatetime
    note: str = ""


def _check_signature(headers: dict[str, str], body: str) -> None:
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret:
        return
    expected = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers.get("acme-signature", ""), expected):
        raise InvalidRequest(
            "the Acme-Signature header does not sign this body",
            code="invalid_signature",
            details=[{"field": "Acme-Signature", "message": "HMAC-SHA256 of the raw body with the shared secret"}],
        )


@hookimpl
def oms_carrier_tracking_update(
    carrier: str, payload: Any, headers: dict[str, str], body: str
) -> list[TrackingUpdate] | None:
    if carrier != TRACKING_CARRIER:
        return None
    _check_signature(headers, body)
    try:
        webhook = Webhook.model_validate(payload)
    except ValidationError as exc:
        details = [{"field": field_path(error["loc"]) or "body", "message": error["msg"]} for error in exc.errors()]
        raise InvalidRequest("not an Acme Courier webhook", details=details) from None
    status = EVENTS.get(webhook.event)
    if status is None:
        return []
    ids = parse_shipment_reference(webhook.parcel.customer_reference)
    if ids is None or webhook.parcel.tracking_number != tracking_number(ids[1]):
        raise InvalidRequest(
            "the parcel is not one Acme Courier booked for the OMS",
            details=[{"field": "parcel", "message": "customer_reference and tracking_number do not match"}],
        )
    return [
        TrackingUpdate(order_id=ids[0], shipment_id=ids[1], status=status, at=webhook.occurred_at,
                       description=webhook.note[:500])
    ]  # fmt: skip
