"""Names and addresses: no control characters, no bidi overrides, stored in NFC."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.models import Address, Customer, PlaceOrder
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
