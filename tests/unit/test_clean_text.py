"""Names and addresses: no control characters, no bidi overrides, stored in NFC."""

from __future__ import annotations

import importlib
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.holds import HoldRequest
from core.models import Address, Customer, PlaceOrder
from core.purchasing import VendorRequest
from tests.builders import order_body

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


def field_errors(error: ValidationError) -> dict[str, str]:
    return {".".join(str(part) for part in e["loc"]): e["msg"] for e in error.errors()}


@pytest.mark.parametrize("field", ["name", "line1", "line2", "city", "region", "postal_code"])
@pytest.mark.parametrize("bad", ["\x00", "\r\n", "\x1b[31m", "\t", "\x7f", "\x85"])
def test_an_address_field_with_a_control_character_is_refused_by_name(field: str, bad: str):
    with pytest.raises(ValidationError) as caught:
        Address.model_validate({**ADDRESS, field: f"12{bad}34"})
    assert field_errors(caught.value).keys() == {field}
    assert "control character" in field_errors(caught.value)[field]


@pytest.mark.parametrize(("bad", "said"), [("\n", "a line break"), ("\r", "a line break"), ("\t", "a tab")])
def test_a_line_break_or_a_tab_is_refused_saying_what_it_is(bad: str, said: str):
    # "must not contain a control character (U+000A)": no merchant whose spreadsheet cell holds
    # an address over two lines knows that is the line break.
    with pytest.raises(ValidationError) as caught:
        Address.model_validate({**ADDRESS, "line2": f"Floor 3{bad}Ring twice"})

    assert f"must not contain {said}, a control character (U+{ord(bad):04X})" in field_errors(caught.value)["line2"]


@pytest.mark.parametrize(
    "override", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
)
def test_a_bidi_override_is_refused(override: str):
    with pytest.raises(ValidationError) as caught:
        Address.model_validate({**ADDRESS, "line1": f"1 Main{override}tS"})
    assert "bidi override" in field_errors(caught.value)["line1"]


def test_a_customer_name_with_a_newline_is_refused():
    with pytest.raises(ValidationError) as caught:
        Customer.model_validate({"id": "c1", "email": "a@example.com", "name": "Ada\nINFO forged"})
    assert field_errors(caught.value).keys() == {"name"}


def test_a_place_order_names_the_nested_field():
    body = order_body()
    body["shipping_address"]["city"] = "Spring\x00field"
    with pytest.raises(ValidationError) as caught:
        PlaceOrder.model_validate(body)
    assert field_errors(caught.value).keys() == {"shipping_address.city"}


def test_names_are_stored_in_nfc():
    decomposed = "Zoe\u0308 Mu\u0308ller"  # e + combining diaeresis
    address = Address.model_validate({**ADDRESS, "name": decomposed, "city": "Ko\u0308ln"})
    assert address.name == "Zoë Müller"
    assert address.city == "Köln"
    customer = Customer.model_validate({"id": "c1", "email": "a@example.com", "name": decomposed})
    assert customer.name == "Zoë Müller"


def test_the_length_limit_is_on_the_nfc_that_is_stored():
    # U+1D15E (a half note) is one of the few characters NFC writes as two: 200 of them are 400
    # once stored, which the stored order's name (at most 200) could never be read back from.
    half_note = "\U0001d15e"
    with pytest.raises(ValidationError) as caught:
        Customer.model_validate({"id": "c1", "email": "a@example.com", "name": half_note * 200})
    assert field_errors(caught.value).keys() == {"name"}
    with pytest.raises(ValidationError):
        HoldRequest.model_validate({"reason": "other", "note": half_note * 500})
    kept = Customer.model_validate({"id": "c1", "email": "a@example.com", "name": half_note * 100}).name
    assert kept == "\U0001d157\U0001d165" * 100
    assert Customer.model_validate({"id": "c1", "email": "a@example.com", "name": kept}).name == kept


def test_ordinary_names_in_any_script_are_kept():
    for name in ["Zoë O'Brien-Smith", "東京 太郎", "محمد", "Ørsted & Søn, 3. sal"]:
        assert Address.model_validate({**ADDRESS, "name": name}).name == name


@given(st.text(min_size=1, max_size=50))
def test_whatever_is_accepted_is_nfc_and_free_of_controls_and_overrides(text: str):
    try:
        address = Address.model_validate({**ADDRESS, "line1": text})
    except ValidationError:
        return
    assert unicodedata.is_normalized("NFC", address.line1)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in address.line1)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in address.line1)


@pytest.mark.parametrize("text", ["Ada\n", "\tAda", "Ada\r\n", "Ada\x1f", "\x85Ada"])
def test_a_control_character_at_either_end_is_refused_not_trimmed(text: str):
    # The schema's pattern refuses it wherever it is; so does the API, before trimming spaces.
    with pytest.raises(ValidationError) as caught:
        Customer.model_validate({"id": "c1", "email": "a@example.com", "name": text})
    assert "control character" in field_errors(caught.value)["name"]


def test_surrounding_spaces_are_still_trimmed():
    assert Customer.model_validate({"id": "c1", "email": "a@example.com", "name": "  Ada  "}).name == "Ada"


# One-line free text a client sends and others read back (the order's history and events, a
# customer's shipped notification, the key list) is held to the rule names are, as a refund's or a
# rejected shipment's reason already is.
ONE_LINE_TEXTS = [
    pytest.param("core.models:CancelRequest", {}, "reason", id="a cancel's reason"),
    pytest.param("core.access:NewApiKey", {"scopes": ["orders:read"]}, "name", id="an API key's name"),
    pytest.param("core.models:ShipRequest", {}, "tracking_number", id="a ship's tracking number"),
    pytest.param(
        "core.confirmations:Confirmation",
        {"order_id": "ord_x", "shipment_id": "shp_x", "action": "ship"},
        "tracking_number",
        id="a confirmed ship's tracking number",
    ),
]


def _model(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("model", "rest", "field"), ONE_LINE_TEXTS)
@pytest.mark.parametrize("bad", ["\x00", "\r\n", "\x1b[31m", "\u202e", "\x85"])
def test_one_line_free_text_with_a_control_or_a_bidi_override_is_refused(model: str, rest: dict, field: str, bad: str):
    with pytest.raises(ValidationError) as caught:
        _model(model).model_validate({**rest, field: f"AB12{bad}34"})
    assert field_errors(caught.value).keys() == {field}


@pytest.mark.parametrize(("model", "rest", "field"), ONE_LINE_TEXTS)
def test_one_line_free_text_in_any_script_is_kept_in_nfc(model: str, rest: dict, field: str):
    kept = _model(model).model_validate({**rest, field: " 1Z Zoe\u0308 東京 "})
    assert getattr(kept, field) == "1Z Zoë 東京"


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\u202e", "\x85", "\x7f"])
def test_an_email_with_a_control_or_a_bidi_override_is_refused(bad: str):
    # No address has one (RFC 5322 and 6531 leave controls out); it would reach the notifier's
    # recipient and the customer lookup by email as sent.
    with pytest.raises(ValidationError) as caught:
        Customer.model_validate({"id": "c1", "email": f"ada{bad}@example.com"})
    assert field_errors(caught.value).keys() == {"email"}
    with pytest.raises(ValidationError):
        VendorRequest.model_validate({"name": "Acme", "email": f"orders{bad}@acme.example", "lead_time_days": 3})


# A person's note (a hold, a release, a return's approval or rejection) may run over lines: tabs
# and line breaks are kept, every other control and the bidi overrides are refused as in names.
NOTES = [
    pytest.param("core.holds:HoldRequest", {"reason": "other"}, id="a hold's note"),
    pytest.param("core.holds:ReleaseRequest", {}, id="a release's note"),
    pytest.param("core.return_models:ReturnNote", {}, id="a return's approval or rejection note"),
]


@pytest.mark.parametrize(("model", "rest"), NOTES)
@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x07", "\x7f", "\x85", "\u202e", "\u2066", "\r", "a\rb"])
def test_a_note_with_a_control_or_a_bidi_override_is_refused(model: str, rest: dict, bad: str):
    with pytest.raises(ValidationError) as caught:
        _model(model).model_validate({**rest, "note": f"called{bad} the customer"})
    assert field_errors(caught.value).keys() == {"note"}
    assert "control character" in field_errors(caught.value)["note"] or "bidi" in field_errors(caught.value)["note"]


@pytest.mark.parametrize(("model", "rest"), NOTES)
@pytest.mark.parametrize("text", ["called twice\nno answer", "called twice\r\nno answer", "item\tqty\n1\t2"])
def test_a_note_keeps_its_tabs_and_line_breaks(model: str, rest: dict, text: str):
    assert _model(model).model_validate({**rest, "note": f"  {text}\n"}).note == text


@pytest.mark.parametrize(("model", "rest"), NOTES)
def test_a_note_of_white_space_only_is_still_refused(model: str, rest: dict):
    with pytest.raises(ValidationError):
        _model(model).model_validate({**rest, "note": " \t\r\n "})


def test_the_schema_of_a_note_states_the_rule():
    pattern = re.compile(HoldRequest.model_json_schema()["properties"]["note"]["anyOf"][0]["pattern"])
    for kept in ["ok", "called\nback", "a\r\nb", "\ttabbed", "東京 ✓"]:
        assert pattern.search(kept), kept
    for refused in ["", " \n\t", "nul\x00", "esc\x1b", "cr\ronly", "\u202eevil", "c1\x85"]:
        assert not pattern.search(refused), refused
