"""How an order item stores its document and history entries: JSON deflated with a preset dictionary.

Every write of an order is billed per started KB of the whole item, and an order is rewritten at
each step of its life, so its item is kept under 1 KB where it can be: the document (`doc`) and
each history entry (an element of `history`) are the model's JSON compressed by zlib (deflate) with a
preset dictionary of what every order's JSON repeats (field names, statuses, event types, the built-in
plugins' words). A small JSON text compresses poorly on its own (a 200-byte history entry to ~170
bytes); with the dictionary to ~60.

A stored value is one byte naming the dictionary, then the raw deflate stream (RFC 1951) made
with it; `decompress` also reads what was stored before dictionaries (a zlib stream, or a JSON
string). A dictionary, once used, can never change: items stored with it need it to be read. To
change what is compressed against, add a new one to DICTIONARIES and point CURRENT at it (a test
pins each dictionary's digest). Reading one by hand: README, "Reading a stored order".
"""

from __future__ import annotations

import base64
import json
import sys
import zlib

# What orders repeat, the most frequent last (zlib reaches the end of a dictionary most cheaply).
# Values that are one shop's (names, addresses, SKUs, locations) are left out: the dictionary
# helps every deployment alike.
_DICTIONARY_2026_12 = "".join(
    (
        '"payment_failed","payment_voided","payment_refunded","payment_capture_reversed",'
        '"payment_authorization_failed","payment_capture_failed","payment_void_failed",'
        '"payment_refund_failed","refund_requested","refund_failed","units_cancelled","return_requested",'
        '"return_authorized","return_rejected","return_received","return_stuck","pickup_expired",'
        '"shipment_rejected","shipment_ready_for_pickup","on_hold","released","jeopardy","edited",'
        '"partially_shipped","partially_returned","returned","declined","partially_captured","backordered",'
        '"reason":"","note":"","code":"","message":"","reference":"","sourcing_rules_version":',
        '"fulfillment":{"type":"pickup","location_id":"","collect_by":"',
        '"line2":"","phone":"","lat":,"lng":,"promo_codes":["',
        '"type":"cancelled","from_status":"","to_status":"cancelled","actor":"system","detail":{"reason":"',
        '"reasons":["the destination has no coordinates: distances are measured to the centre of ',
        '","',
        "supplies every line: the nearest location that has the whole order (",
        ' km)"],"sourcing_rules_version":0}}',
        '{"id":"ord_","status":"pending","channel":"web","external_id":"","currency":"USD",'
        '"customer":{"id":"cus_","email":"@example.com"},"lines":[{"line_id":"L1","sku":"","quantity":1,'
        '"unit_price":{"amount":"","currency":"USD"},"discount":{"amount":"0.00","currency":"USD"},'
        '"tax":{"amount":"","currency":"USD"},"tax_rate":{"rate":"","name":" standard"},'
        '"total":{"amount":"","currency":"USD"},"cancelled_quantity":0,"shipped_quantity":0,'
        '"returned_quantity":0}],"shipping_address":{"name":"","line1":"","city":"","region":"",'
        '"postal_code":"","country":"US"},"fulfillment":{"type":"ship"},"shipping_method":"standard",'
        '"promo_codes":[],"totals":{"subtotal":{"amount":"","currency":"USD"},'
        '"discount":{"amount":"0.00","currency":"USD"},"shipping":{"amount":"5.00","currency":"USD"},'
        '"tax":{"amount":"","currency":"USD"},"grand_total":{"amount":"","currency":"USD"}},'
        '"payment":{"method":"card","status":"captured","authorized":{"amount":"","currency":"USD"},'
        '"captured":{"amount":"","currency":"USD"},"refunded":{"amount":"0.00","currency":"USD"},'
        '"authorization":"auth_","refunds":[]},"allocations":[{"line_id":"L1","location_id":"",'
        '"quantity":1}],"shipments":[{"id":"shp_","location_id":"","lines":[{"line_id":"L1","quantity":1}],'
        '"carrier":"OMS Flat Rate","service":"Ground","tracking_number":"OMS","label_url":"labels/ord_',
        '/shp_.pdf","status":"delivered","shipped_at":"2026-","delivered_at":"2026-",'
        '"captured":{"amount":"","currency":"USD"}}],"received_returns":[],"exchanges":[],'
        '"created_at":"2026-","updated_at":"2026-","version":1,"priced_version":1,"status_since":"2026-',
        '{"at":"2026-","type":"created","to_status":"pending","actor":"key_","detail":{"grand_total":'
        '{"amount":"","currency":"USD"},"request_id":""}}',
        '{"at":"2026-","type":"payment_authorized","from_status":"pending","to_status":"authorized",'
        '"actor":"workflow","detail":{"amount":{"amount":"","currency":"USD"},"reference":"auth_"}}',
        '{"at":"2026-","type":"stock_reserved","actor":"workflow","detail":{"allocations":[{"line_id":"L1",'
        '"location_id":"","quantity":1}],"reasons":["',
        '{"at":"2026-","type":"allocated","from_status":"authorized","to_status":"allocated",'
        '"actor":"workflow","detail":{"shipments":[{"id":"shp_","location_id":"","tracking_number":"OMS"}]}}',
        '{"at":"2026-","type":"shipment_shipped","from_status":"allocated","to_status":"shipped",'
        '"actor":"key_","detail":{"shipment_id":"shp_","location_id":"","captured":{"amount":"",'
        '"currency":"USD"},"capture_reference":"cap_"}}',
        '{"at":"2026-","type":"shipment_delivered","from_status":"shipped","to_status":"delivered",'
        '"actor":"key_","detail":{"shipment_id":"shp_"}}',
    )
).encode()

# A stored value's first byte names its dictionary; the deflate stream follows (no zlib header
# or checksum: ten bytes a value that DynamoDB's own integrity checks make redundant). Never edit
# or renumber one: items stored with it need exactly it to be read. Numbers have a low nibble
# other than 8, so they never read as a zlib header (what documents stored before this were).
DICTIONARIES: dict[int, bytes] = {1: _DICTIONARY_2026_12}
CURRENT = 1


class UnknownDictionary(ValueError):
    """A stored value names a dictionary this code does not have (it was written by a newer one)."""


def compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(level=9, wbits=-15, zdict=DICTIONARIES[CURRENT])
    return bytes([CURRENT]) + compressor.compress(data) + compressor.flush()


def decompress(data: bytes | str) -> bytes:
    """A stored value's JSON: a dictionary's number and its deflate stream, or (stored before
    dictionaries) a zlib stream. A stream record's binary arrives base64-encoded (a str)."""
    raw = base64.b64decode(data) if isinstance(data, str) else bytes(data)
    if raw[:1] and raw[0] & 0x0F == 8:  # a zlib header (CM 8, deflate)
        return zlib.decompress(raw)
    if not raw or raw[0] not in DICTIONARIES:
        raise UnknownDictionary(f"stored with dictionary {raw[:1].hex() or 'none'}, which this code does not have")
    decompressor = zlib.decompressobj(wbits=-15, zdict=DICTIONARIES[raw[0]])
    data = decompressor.decompress(raw[1:]) + decompressor.flush()
    if not decompressor.eof:  # a raw stream has no checksum: a cut one must not read as whole
        raise zlib.error("the stored value ends before its deflate stream does")
    return data


def stored_json(value: dict[str, object]) -> bytes:
    """The JSON of a stored attribute value in DynamoDB's form: a string as it is, a binary
    decompressed (`doc`, a history entry)."""
    if "B" in value:
        return decompress(value["B"])  # type: ignore[arg-type]
    return str(value["S"]).encode()


def readable(item: dict[str, object]) -> dict[str, object]:
    """An Orders item in DynamoDB JSON with its document and history entries decoded, for a person
    (a page of its history, in the Catalog table, with its `entries`; a webhook delivery there, with
    the `body` its attempts send)."""
    decoded = dict(item)
    if isinstance(doc := item.get("doc"), dict):
        decoded["doc"] = json.loads(stored_json(doc))
    pk, body = item.get("pk"), item.get("body")
    if isinstance(pk, dict) and str(pk.get("S", "")).startswith("WEBHOOK#") and isinstance(body, dict):
        decoded["body"] = json.loads(stored_json(body))  # a webhook delivery's (DynamoWebhooks)
    for name in ("history", "entries"):
        if isinstance(history := item.get(name), dict):
            decoded[name] = [json.loads(stored_json(entry)) for entry in history.get("L", [])]
    return decoded


def main() -> None:
    """`aws dynamodb get-item` (or `scan`, `query`) output on stdin, printed with every order's
    document and history decoded: `... --output json | python -m functions.adapters.order_codec`."""
    answer = json.load(sys.stdin)
    if "Item" in answer:
        answer["Item"] = readable(answer["Item"])
    if "Items" in answer:
        answer["Items"] = [readable(item) for item in answer["Items"]]
    json.dump(answer, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
