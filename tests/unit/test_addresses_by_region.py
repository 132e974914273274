"""US and Canadian addresses name their state or province for sure: ZIP codes and USPS codes,
postal codes and province codes, and the one rule that ties each country's pair."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from core.ca_addresses import PROVINCE_CODES, province_code, provinces_of_postal_code
from core.models import Address, AddressInput, OrderEdit
from core.us_addresses import _PREFIXES, _SHARED_PREFIXES, USPS_CODES, code_of_zip, usps_code

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "country": "US"}
CA = {"country": "CA"}


def refusal(**fields: Any) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as refused:
        AddressInput.model_validate({**ADDRESS, **fields})
    (error,) = refused.value.errors()
    return error["loc"], error["msg"]


@pytest.mark.parametrize(
    ("postal_code", "code"),
    [
        ("94105", "CA"),
        ("10001", "NY"),
        ("00501", "NY"),
        ("00601", "PR"),
        ("00802", "VI"),
        ("02108", "MA"),
        ("05501", "MA"),
        ("20001", "DC"),
        ("20166", "VA"),
        ("34002", "AA"),
        ("09001", "AE"),
        ("96201", "AP"),
        ("73301", "TX"),
        ("88510", "TX"),
        ("96799", "AS"),
        ("96813", "HI"),
        ("96910", "GU"),
        ("96950", "MP"),
        ("99501", "AK"),
        ("97201-1234", "OR"),
        ("972011234", "OR"),
    ],
)
def test_a_zip_code_names_the_state_or_territory_it_is_in(postal_code: str, code: str):
    assert code_of_zip(postal_code) == code


@pytest.mark.parametrize("postal_code", ["00001", "96901", "1234", "123456", "ABCDE", "94105-12", "SW1A 1AA", ""])
def test_a_value_that_is_no_zip_code_in_use_names_no_state(postal_code: str):
    assert code_of_zip(postal_code) is None


def test_prefix_ranges_are_in_order_and_apart_so_each_zip_code_lies_in_the_one_its_bisection_finds():
    # code_of_zip bisects the ranges: in order and disjoint, a prefix is in at most one of them.
    assert all(high < next_low for (_, high, _), (next_low, _, _) in itertools.pairwise(_PREFIXES))
    assert all(low <= high for low, high, _ in _PREFIXES)
    for prefix in set(range(1000)) - _SHARED_PREFIXES:  # those a range of ZIP codes answers first
        walked = next((code for low, high, code in _PREFIXES if low <= prefix <= high), None)
        assert code_of_zip(f"{prefix:03d}01") == walked, prefix


def test_every_prefix_names_a_usps_code():
    found = {code_of_zip(f"{prefix:03d}01") for prefix in range(1000)} - {None}
    assert found <= USPS_CODES
    assert len(found) >= 55  # the states, DC and the territories with ZIP codes of their own prefix


@pytest.mark.parametrize(
    ("region", "code"), [("CA", "CA"), ("ca", "CA"), (" Ca ", "CA"), ("US-CA", "CA"), ("us-ny", "NY")]
)
def test_a_region_is_read_as_its_usps_code(region: str, code: str):
    assert usps_code(region) == code


@pytest.mark.parametrize("region", ["California", "XX", "C A", "CA-US", "UK", ""])
def test_a_region_that_is_no_usps_code_names_nothing(region: str):
    assert usps_code(region) is None


@pytest.mark.parametrize(
    ("postal_code", "codes"),
    [
        ("A1A 1A1", ("NL",)),
        ("B3H 4R2", ("NS",)),
        ("C1A 7N8", ("PE",)),
        ("E1C 4M3", ("NB",)),
        ("G1R 4P5", ("QC",)),
        ("H2Y 1C6", ("QC",)),
        ("J8X 3X7", ("QC",)),
        ("K1A 0B1", ("ON",)),
        ("L5B 3C3", ("ON",)),
        ("M5V 2T6", ("ON",)),
        ("N2L 3G1", ("ON",)),
        ("P3E 2C6", ("ON",)),
        ("R3C 4T3", ("MB",)),
        ("S4P 3V7", ("SK",)),
        ("T2P 2M5", ("AB",)),
        ("V6B 4Y8", ("BC",)),
        ("Y1A 2C6", ("YT",)),
        ("X1A 2L9", ("NT", "NU")),  # Canada Post's X district serves both territories
        ("K1A0B1", ("ON",)),
        ("m5v 2t6", ("ON",)),
        ("M5W 1Z9", ("ON",)),  # W and Z are letters of the code, only never its first
    ],
)
def test_a_postal_code_names_the_province_or_territory_its_first_letter_is(postal_code: str, codes: tuple[str, ...]):
    assert provinces_of_postal_code(postal_code) == codes


@pytest.mark.parametrize(
    "postal_code",
    ["D1A 1A1", "F1A 1A1", "I1A 1A1", "O1A 1A1", "Q1A 1A1", "U1A 1A1", "W1A 1A1", "Z1A 1A1", "M5D 2T6", "M5V 2O6",
     "M5V 2TO", "M5V  2T6", "M5V-2T6", "M5V 2T", "M5V 2T66", "5MV 2T6", "94105", "SW1A 1AA", ""],
)  # fmt: skip
def test_a_value_that_is_no_canadian_postal_code_names_no_province(postal_code: str):
    assert provinces_of_postal_code(postal_code) == ()


def test_every_postal_district_names_province_codes():
    leading = "ABCEGHJKLMNPRSTVXY"
    found = {code for letter in leading for code in provinces_of_postal_code(f"{letter}1A 1A1")}

    assert found == PROVINCE_CODES  # each of the 13 is some district's, none is made up
    assert len(PROVINCE_CODES) == 13


@pytest.mark.parametrize(
    ("region", "code"), [("ON", "ON"), ("on", "ON"), (" Qc ", "QC"), ("CA-ON", "ON"), ("ca-nu", "NU")]
)
def test_a_region_is_read_as_its_province_code(region: str, code: str):
    assert province_code(region) == code


@pytest.mark.parametrize("region", ["Ontario", "XX", "O N", "ON-CA", "US-ON", "CA", ""])
def test_a_region_that_is_no_province_code_names_nothing(region: str):
    assert province_code(region) is None


@pytest.mark.parametrize(
    ("fields", "region"),
    [
        ({"postal_code": "94105"}, "CA"),
        ({"region": " ", "postal_code": "10001"}, "NY"),
        ({**CA, "postal_code": "M5V 2T6"}, "ON"),
        ({**CA, "region": "", "postal_code": "H2Y 1C6"}, "QC"),
        ({**CA, "postal_code": "Y1A 2C6"}, "YT"),
    ],
)
def test_an_address_without_a_region_takes_it_from_its_postal_code(fields: dict[str, str], region: str):
    assert AddressInput.model_validate({**ADDRESS, **fields}).region == region


@pytest.mark.parametrize(
    ("fields", "region"),
    [
        ({"region": "us-ca", "postal_code": "94105"}, "CA"),
        ({**CA, "region": "on", "postal_code": "M5V 2T6"}, "ON"),
        ({**CA, "region": "CA-ON", "postal_code": "M5V 2T6"}, "ON"),
        ({**CA, "region": "nu", "postal_code": "X0A 0H0"}, "NU"),
        ({**CA, "region": "NT", "postal_code": "X1A 2L9"}, "NT"),
    ],
)
def test_a_region_is_stored_as_its_code(fields: dict[str, str], region: str):
    assert AddressInput.model_validate({**ADDRESS, **fields}).region == region


def test_a_canadian_postal_code_is_kept_as_it_was_sent_as_a_zip_code_is():
    sent = AddressInput.model_validate({**ADDRESS, **CA, "postal_code": "K1A0B1"})

    assert (sent.region, sent.postal_code) == ("ON", "K1A0B1")


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"region": "Calif.", "postal_code": "94105"}, "a US region must be a USPS state or territory code"),
        ({**CA, "region": "XX", "postal_code": "M5V 2T6"}, "a CA region must be a province or territory code"),
        ({**CA, "region": "Ontario", "postal_code": "M5V 2T6"}, "a CA region must be a province or territory code"),
        ({**CA, "region": "US-ON", "postal_code": "M5V 2T6"}, "a CA region must be a province or territory code"),
    ],
)
def test_a_garbled_region_is_refused_naming_the_region(fields: dict[str, str], said: str):
    loc, message = refusal(**fields)

    assert loc == ("region",)
    assert said in message


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        # Oregon has no sales tax; a San Francisco ZIP code is in California.
        ({"region": "OR", "postal_code": "94105"}, "ZIP code 94105 is in CA, not OR"),
        # Alberta's 5% is the lowest; a Toronto postal code is in Ontario (13%).
        ({**CA, "region": "AB", "postal_code": "M5V 2T6"}, "postal code M5V 2T6 is in ON, not AB"),
        ({**CA, "region": "BC", "postal_code": "M5V 2T6"}, "postal code M5V 2T6 is in ON, not BC"),
        ({**CA, "region": "ON", "postal_code": "X1A 2L9"}, "postal code X1A 2L9 is in NT or NU, not ON"),
    ],
)
def test_a_region_its_postal_code_is_not_in_is_refused_so_a_lower_tax_cannot_be_claimed(
    fields: dict[str, str], said: str
):
    loc, message = refusal(**fields)

    assert loc == ("region",)
    assert said in message


def test_a_territory_its_postal_code_cannot_tell_apart_must_be_named():
    # X codes serve the Northwest Territories and Nunavut alike: no region can be filled in.
    loc, message = refusal(**CA, postal_code="X0A 0H0")

    assert loc == ("region",)
    assert "postal code X0A 0H0 is in NT or NU: region must say which" in message


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"region": "CA", "postal_code": "1"}, "a US postal_code must be a ZIP code in use"),
        ({"region": "CA", "postal_code": "00001"}, "a US postal_code must be a ZIP code in use"),
        ({"region": "CA", "postal_code": "SW1A 1AA"}, "a US postal_code must be a ZIP code in use"),
        ({**CA, "region": "ON", "postal_code": "94105"}, "a CA postal_code must be a Canadian postal code"),
        ({**CA, "region": "ON", "postal_code": "D5V 2T6"}, "a CA postal_code must be a Canadian postal code"),
        ({**CA, "postal_code": "W5V 2T6"}, "a CA postal_code must be a Canadian postal code"),
    ],
)
def test_a_postal_code_that_is_none_of_its_country_s_is_refused_naming_it(fields: dict[str, str], said: str):
    loc, message = refusal(**fields)

    assert loc == ("postal_code",)
    assert said in message


def test_addresses_elsewhere_keep_their_free_text_region():
    address = AddressInput.model_validate({**ADDRESS, "country": "GB", "region": "Greater London", "postal_code": "N1"})

    assert address.region == "Greater London"


@pytest.mark.parametrize(
    "fields", [{"region": "OR", "postal_code": "94105"}, {**CA, "region": "AB", "postal_code": "M5V 2T6"}]
)
def test_an_edit_is_held_to_the_same_rule_and_a_stored_address_to_none(fields: dict[str, str]):
    with pytest.raises(ValidationError) as refused:
        OrderEdit.model_validate({"shipping_address": {**ADDRESS, **fields}})
    assert refused.value.errors()[0]["loc"] == ("shipping_address", "region")
    # What is stored is an Address and is read back as it was stored, whatever rule came later.
    stored = Address.model_validate({**ADDRESS, **fields})
    assert stored.region == fields["region"]
    assert type(Address.model_validate(AddressInput.model_validate({**ADDRESS, "postal_code": "94105"}))) is Address


@pytest.mark.parametrize(
    ("postal_code", "said"), [("94105", "94105 is in CA"), ("PR 123", "PR 123 is no ZIP code in use")]
)
def test_a_territory_addressed_by_zip_code_needs_one_of_its_own(postal_code: str, said: str):
    loc, message = refusal(country="PR", region="San Juan", postal_code=postal_code)

    assert loc == ("postal_code",)
    assert said in message


def test_a_territory_keeps_its_free_text_region_with_its_own_zip_code():
    address = AddressInput.model_validate({**ADDRESS, "country": "PR", "region": "San Juan", "postal_code": "00901"})

    assert (address.region, address.postal_code) == ("San Juan", "00901")
