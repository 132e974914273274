"""Server ids: a prefix and a lower-case base32 body."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from datetime import timedelta

# How long a client's Idempotency-Key names one request (API.md; the API's idempotency records are
# kept as long: functions.api.idempotency.TTL_SECONDS): a request under the key after it is a new one.
KEY_HONOURED_FOR = timedelta(hours=24)

# What the OMS's order and shipment ids look like (new_order_id, shipment_id_for): text that does
# not (a control character, a bidi override, another case) names none, and is never looked up.
ORDER_ID = re.compile(r"ord_[a-z2-7]{24}")
SHIPMENT_ID = re.compile(r"shp_[a-z2-7]{24}")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def order_id_for(channel: str, external_id: str | None) -> str:
    """An order's id. With an external id it is derived from (channel, external_id), so one
    conditional put enforces their uniqueness with no second item; otherwise it is random."""
    if external_id is None:
        return "ord_" + _b32(secrets.token_bytes(15))
    digest = hashlib.sha256(f"{channel}\x1f{external_id}".encode()).digest()
    return "ord_" + _b32(digest[:15])


def order_id_for_request(caller_key_id: str, idempotency_key: str, request: str) -> str:
    """The id of an order placed without an external id under a client's Idempotency-Key: the same
    for every retry of that request (its key and body, `request`), so a retry whose first attempt
    was written finds that order instead of placing a second one. No channel or external id holds
    the separator, so it never names an order of order_id_for."""
    return "ord_" + short_hash(f"order\x1f{caller_key_id}\x1f{idempotency_key}\x1f{request}")


# What an order's created entry keeps of a hash (order_request_key, services.request_hash): 8 of
# short_hash's 24 characters, 40 bits. Each tells one request, or one content, from the few others
# sent for the same channel and external id: two alike by chance is about one in 10^12 for each
# such request, and a retry is recognised only when both its key's and its body's match (finding
# both by trial would take some 2^39 requests within the key's 24 hours, each knowing the order's
# body). The 16 characters more each were ~30 bytes of an item billed per started KB at each of its
# ~7 writes. Entries written before kept all 24: they are compared on what they kept (services.asked_alike).
KEPT_HASH_CHARS = 8


def order_request_key(caller_key_id: str, idempotency_key: str) -> str:
    """What the created entry of an order with an external id keeps of the API request that placed
    it under an Idempotency-Key (`request_key`, never shown), by which a retry of that request tells
    its own order from another request's: KEPT_HASH_CHARS of a hash of the caller's key id and the
    key. What the request asked is the entry's `request_hash` beside it, so the two name the request
    as its key and body do. No colon, so it never reads as a direct message's ("sqs:…")."""
    return short_hash(f"order-request\x1f{caller_key_id}\x1f{idempotency_key}")[:KEPT_HASH_CHARS]


def new_id(prefix: str) -> str:
    return f"{prefix}_{_b32(secrets.token_bytes(15))}"


def purchase_order_id_for(caller_key_id: str, idempotency_key: str) -> str:
    """The id of the purchase order a create with an Idempotency-Key makes: the same for every
    retry of it, so a retry whose first attempt was written finds that PO instead of adding one."""
    return "po_" + short_hash(f"purchase-order\x1f{caller_key_id}\x1f{idempotency_key}")


def webhook_id_for(caller_key_id: str, idempotency_key: str) -> str:
    """The id of the subscription a create with an Idempotency-Key makes: the same for every retry
    of it, so a retry whose first attempt was written finds that subscription instead of adding a
    second one that would get every event twice."""
    return "whk_" + short_hash(f"webhook\x1f{caller_key_id}\x1f{idempotency_key}")


def short_hash(text: str) -> str:
    """A stable 24-character id body for something derived from other ids (a shipment of an
    order at a location), so a retried step names it the same way."""
    return _b32(hashlib.sha256(text.encode()).digest()[:15])


def shipment_id_for(order_id: str, location_id: str, generation: int = 0) -> str:
    """The id of an order's shipment from a location: the same for every run of the step that
    makes it. `generation` is the order's `rebookings` when it is made (Order.parcel_id): a parcel
    a change withdrew (an edit, a reject, units cancelled: each counts one) and the one made after
    it at the same location have other ids, so a location's late confirmation of the first is
    refused as withdrawn instead of shipping the second, whose contents and label may be other.
    Generation 0 is the id every parcel had before there were others."""
    if not generation:
        return "shp_" + short_hash(f"{order_id}#{location_id}")
    return "shp_" + short_hash(f"{order_id}#{location_id}#{generation}")


def shipment_ids_for(order_id: str, location_id: str, generations: int) -> list[str]:
    """Every id a shipment of the order from the location may have had in its first `generations`
    generations (shipment_id_for), oldest first."""
    return [shipment_id_for(order_id, location_id, generation) for generation in range(generations)]


def booking_key(shipment_id: str, rebookings: int) -> str:
    """The key a carrier is asked to book a shipment under: the same on every retry of the step,
    and a new one once a change may have altered the parcel (`Order.rebookings`), whose shipment
    keeps its id. The first booking's is the shipment id, as before there were others."""
    return shipment_id if not rebookings else f"{shipment_id}-{rebookings}"


def sourced_again_key(shipment_id: str, version: int) -> str:
    """The key a parcel sourced again for a reject of a partly shipped order is booked under: new
    for each version of the order it is asked on, so a booking an attempt gave up (a write of the
    order that records it owed a cancel) is never the answer a later attempt gets. Never one that
    booking_key gives (`-v`, not a number after the dash)."""
    return f"{shipment_id}-v{version}"


def reservation_key(order_id: str, line_id: str) -> str:
    """The key an order line's units are reserved under, at whatever location holds them."""
    return f"{order_id}#{line_id}"


# The reference a carrier plugin books a shipment with, and reads back from its tracking webhook
# (core.tracking): the OMS has no index from tracking numbers to shipments.
REFERENCE_SEPARATOR = "/"


def shipment_reference(order_id: str, shipment_id: str) -> str:
    """The reference a carrier plugin books a shipment with: "ord_…/shp_…"."""
    return f"{order_id}{REFERENCE_SEPARATOR}{shipment_id}"


def parse_shipment_reference(reference: str) -> tuple[str, str] | None:
    """(order_id, shipment_id) from a reference made by shipment_reference, or None."""
    order_id, separator, shipment_id = reference.strip().partition(REFERENCE_SEPARATOR)
    if not separator or not order_id or not shipment_id or REFERENCE_SEPARATOR in shipment_id:
        return None
    return order_id, shipment_id
