"""Invisible characters (zero-width ones, the word joiner, the BOM) and the Unicode line and paragraph
separators in text people read: refused in what comes in, as controls are; text stored before they
were refused still reads, each shown as U+FFFD."""

from __future__ import annotations

import copy
import importlib
import json
import re
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter, ValidationError

from core.models import Address, Customer, Location, Order, PlaceOrder, Product, VisibleName, VisibleText
from core.workflow_types import CarrierShipment
from plugins.testing.builders import an_order
from tests.builders import address_body, location, location_body, order_body, product, product_body

INVISIBLE = {
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
    "\u200b": "invisible character",
    "\u2060": "invisible character",
    "\ufeff": "invisible character",
}


def _model(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _with(body: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    """`body` with the field at the dotted `path` (a list index as a number) set to `value`."""
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return body


# Every body a client (or an import line) sends whose text people read: (model, a valid body, field).
INPUTS = [
    pytest.param("core.models:PlaceOrder", order_body(), "customer.name", id="an order's customer name"),
    pytest.param("core.models:PlaceOrder", order_body(), "customer.email", id="an order's customer email"),
    *(
        pytest.param("core.models:PlaceOrder", order_body(), f"shipping_address.{field}", id=f"an order's {field}")
        for field in ("name", "line1", "line2", "city", "postal_code")
    ),
    pytest.param("core.models:OrderEdit", {"shipping_address": address_body()}, "shipping_address.line1", id="an edit"),
    pytest.param("core.models:ProductInput", product_body(), "name", id="a product's name"),
    pytest.param("core.models:LocationInput", location_body(), "name", id="a location's name"),
    pytest.param("core.models:LocationInput", location_body(), "address.city", id="a location's city"),
    pytest.param("core.models:StockAdjustment", {"delta": 1, "reason": "count"}, "reason", id="a stock reason"),
    pytest.param("core.models:CancelRequest", {"reason": "x"}, "reason", id="a cancel's reason"),
    pytest.param("core.models:RejectRequest", {"reason": "x"}, "reason", id="a rejected shipment's reason"),
    pytest.param("core.models:ShipRequest", {"tracking_number": "1Z999"}, "tracking_number", id="a tracking number"),
    pytest.param(
        "core.refunds:RefundRequest",
        {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "x"},
        "reason",
        id="a refund's reason",
    ),
    pytest.param("core.access:NewApiKey", {"name": "ops", "scopes": ["orders:read"]}, "name", id="an API key's name"),
    pytest.param("core.purchasing:VendorRequest", {"name": "Acme", "lead_time_days": 3}, "name", id="a vendor"),
    pytest.param(
        "core.purchasing:VendorRequest",
        {"name": "Acme", "email": "o@acme.example", "lead_time_days": 3},
        "email",
        id="a vendor's email",
    ),
    pytest.param(
        "core.return_models:RequestReturn",
        {"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]},
        "lines.0.reason",
        id="a return line's reason",
    ),
    pytest.param("core.holds:HoldRequest", {"reason": "other", "note": "x"}, "note", id="a hold's note"),
    pytest.param("core.holds:ReleaseRequest", {"note": "x"}, "note", id="a release's note"),
    pytest.param("core.return_models:ReturnNote", {"note": "x"}, "note", id="a return's approval note"),
]


@pytest.mark.parametrize(("model", "body", "field"), INPUTS)
@pytest.mark.parametrize("char", list(INVISIBLE))
def test_an_invisible_character_or_a_line_separator_sent_in_is_refused_naming_the_field(
    model: str, body: dict[str, Any], field: str, char: str
):
    sent = _with(copy.deepcopy(body), field, f"1Z Ada{char}Love 94105")
    with pytest.raises(ValidationError) as caught:
        _model(model).model_validate(sent)

    (error,) = caught.value.errors()
    assert ".".join(str(part) for part in error["loc"]) == field
    assert INVISIBLE[char] in error["msg"] and f"U+{ord(char):04X}" in error["msg"]


@pytest.mark.parametrize(("model", "body", "field"), [p for p in INPUTS if not p.values[2].endswith("postal_code")])
def test_names_spelt_with_the_zero_width_non_joiner_or_joiner_are_taken(model: str, body: dict[str, Any], field: str):
    # Persian writes "mi-khaham" with a non-joiner (U+200C), Malayalam and Sinhala conjuncts and
    # emoji sequences use the joiner (U+200D): real customers' names and addresses, taken as sent.
    text = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb"
    if field.endswith("email"):
        text = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645@example.com"
    taken = _model(model).model_validate(_with(copy.deepcopy(body), field, text))

    assert _with(taken.model_dump(), field, text) == taken.model_dump()


@pytest.mark.parametrize(("model", "body", "field"), [p for p in INPUTS if not p.values[2].endswith("postal_code")])
def test_text_in_any_script_with_a_replacement_character_is_still_taken(model: str, body: dict[str, Any], field: str):
    # U+FFFD is what stored text shows an invisible character as: sent back in an edit, it is taken.
    text = "zoë.東京\ufffd@example.com" if field.endswith("email") else "1Z Zoë 東京 \ufffd"
    taken = _model(model).model_validate(_with(copy.deepcopy(body), field, text))

    assert _with(taken.model_dump(), field, text) == taken.model_dump()


def test_the_schema_of_a_request_states_the_rule_and_that_of_a_stored_order_reads_what_it_holds():
    sent = PlaceOrder.model_json_schema()["$defs"]
    stored = Order.model_json_schema()["$defs"]
    for defs, refused in ((sent, True), (stored, False)):
        customer = next(schema for name, schema in defs.items() if name.startswith("Customer"))
        pattern = re.compile(customer["properties"]["name"]["anyOf"][0]["pattern"])
        assert pattern.search("Zoë 東京")
        assert not pattern.search("Ada\x1b[31m")
        assert (pattern.search("Ada\u200bLovelace") is None) == refused


def test_a_carrier_plugins_tracking_number_with_an_invisible_character_is_refused():
    # A replaced character would send the customer a wrong number; one they cannot see, too.
    with pytest.raises(ValidationError) as caught:
        CarrierShipment.model_validate(
            {
                "carrier": "Acme",
                "service": "Ground",
                "tracking_number": "1Z\u200b999",
                "label_url": "https://l.example/1",
            }
        )
    assert [e["loc"] for e in caught.value.errors()] == [("tracking_number",)]


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_a_plugins_text_for_people_shows_an_invisible_character_or_a_line_separator_as_u_fffd(char: str):
    assert TypeAdapter(Annotated[str, VisibleText]).validate_python(f"a\nb{char}c") == "a\nb\ufffdc"
    assert TypeAdapter(Annotated[str, VisibleName]).validate_python(f"VAT{char}") == "VAT\ufffd"


# --- Stored before they were refused -----------------------------------------------------------


def stored_order_json(name: str) -> str:
    """The JSON of an order as an earlier version stored it, when the name rule let invisible
    characters through: `name` as its customer's, a zero-width space in the customer's email and a
    line separator in its address."""
    document = an_order(("MUG-1", 1)).model_dump(mode="json")
    document["customer"] |= {"name": name, "email": "ada\u200b@example.com"}
    document["shipping_address"]["line1"] = "1\u2028Market St"
    return json.dumps(document)


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_an_order_stored_with_an_invisible_character_reads_with_it_shown_as_u_fffd(char: str):
    order = Order.model_validate_json(stored_order_json(f"Ada{char}Lovelace"))

    assert order.customer.name == "Ada\ufffdLovelace"
    assert order.customer.email == "ada\ufffd@example.com"
    assert order.shipping_address.line1 == "1\ufffdMarket St"
    assert type(order.customer) is Customer and type(order.shipping_address) is Address


def test_a_product_and_a_location_stored_with_one_read_with_it_shown_as_u_fffd():
    stored_product = product().model_dump() | {"name": "Mug\u200b"}
    stored_location = location().model_dump() | {"name": "East\u2029WH"}
    stored_location["address"]["city"] = "New\u2060ark"

    assert Product.model_validate(stored_product).name == "Mug\ufffd"
    read = Location.model_validate(stored_location)
    assert (read.name, read.address.city) == ("East\ufffdWH", "New\ufffdark")


def test_a_vendor_and_an_api_key_stored_with_one_read_with_it_shown_as_u_fffd():
    from core.access import ApiKey
    from core.purchasing import Vendor

    vendor = Vendor.model_validate(
        {"vendor_id": "acme", "name": "Acme\u200b", "email": "o\u2060@acme.example", "lead_time_days": 3}
    )
    key = ApiKey.model_validate(
        {"id": "key_1", "name": "ops\u2028admin", "scopes": ["orders:read"], "created_at": "2026-11-01T00:00:00Z"}
    )

    assert (vendor.name, vendor.email, key.name) == ("Acme\ufffd", "o\ufffd@acme.example", "ops\ufffdadmin")


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_a_refunds_reason_stored_with_one_reads_with_it_shown_as_u_fffd(char: str):
    from core.refunds import Refund

    stored = {"id": "rf_1", "amount": {"amount": "5.00", "currency": "USD"}, "reason": f"late{char}delivery",
              "status": "succeeded", "at": "2026-11-01T00:00:00Z"}  # fmt: skip
    order = Order.model_validate_json(stored_order_json("Ada"))
    payment = order.payment.model_dump(mode="json") | {"refunds": [stored]}
    read = Order.model_validate({**order.model_dump(mode="json"), "payment": payment})

    (refund,) = read.payment.refunds
    assert refund.reason == "late\ufffddelivery"
    assert Refund.of(read.id, refund).reason == "late\ufffddelivery"


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_a_returns_reasons_and_note_stored_with_one_read_with_it_shown_as_u_fffd(char: str):
    from core.return_models import Return

    stored = {
        "id": "ret_1", "order_id": "ord_1", "channel": "web", "ordinal": 1, "status": "authorized",
        "lines": [{"line_id": "L1", "quantity": 1, "reason": f"too{char}small", "reason_code": "size_or_fit"}],
        "refund": {"amount": "0.00", "currency": "USD"}, "fee": {"amount": "0.00", "currency": "USD"},
        "note": f"approved{char}\nby phone", "created_at": "2026-11-01T00:00:00Z",
        "updated_at": "2026-11-01T00:00:00Z", "version": 2,
    }  # fmt: skip

    read = Return.model_validate_json(json.dumps(stored))

    assert (read.lines[0].reason, read.note) == ("too\ufffdsmall", "approved\ufffd\nby phone")


@pytest.mark.parametrize("char", list(INVISIBLE))
def test_notes_and_reasons_in_a_history_entry_stored_with_one_read_with_it_shown_as_u_fffd(char: str):
    from core.models import HistoryEntry

    detail = {"reason": f"changed{char}mind", "note": f"called{char}\ttwice", "refund_id": "rf_1",
              "requests": [{"reason": "other", "note": f"rule{char}"}], "lines": {"L1": 1}}  # fmt: skip
    stored = {"at": "2026-11-01T00:00:00Z", "type": "cancelled", "actor": "key_web", "detail": detail}

    read = HistoryEntry.model_validate_json(json.dumps(stored))

    assert read.detail == {"reason": "changed\ufffdmind", "note": "called\ufffd\ttwice", "refund_id": "rf_1",
                           "requests": [{"reason": "other", "note": "rule\ufffd"}], "lines": {"L1": 1}}  # fmt: skip


def test_a_hold_note_stored_with_one_reads_with_it_shown_as_u_fffd():
    document = json.loads(stored_order_json("Ada"))
    document["hold"] = {"reason": "other", "note": "call\u200bback\nlater", "since": "2026-11-01T00:00:00Z"}

    assert Order.model_validate(document).hold.note == "call\ufffdback\nlater"
