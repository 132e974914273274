"""US addresses name their state for sure: ZIP codes, USPS codes, and the rule that ties them."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from core.models import Address, AddressInput, OrderEdit
from core.us_addresses import _PREFIXES, _SHARED_PREFIXES, USPS_CODES, code_of_zip, usps_code

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "country": "US"}


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


def test_a_us_address_without_a_region_takes_it_from_its_zip_code():
    assert AddressInput.model_validate({**ADDRESS, "postal_code": "94105"}).region == "CA"
    assert AddressInput.model_validate({**ADDRESS, "region": " ", "postal_code": "10001"}).region == "NY"


def test_a_us_region_is_stored_as_its_usps_code():
    assert AddressInput.model_validate({**ADDRESS, "region": "us-ca", "postal_code": "94105"}).region == "CA"


def test_a_garbled_us_region_is_refused_naming_the_region():
    loc, message = refusal(region="Calif.", postal_code="94105")

    assert loc == ("region",)
    assert "USPS state or territory code" in message


def test_a_region_its_zip_code_is_not_in_is_refused_so_a_tax_free_state_cannot_be_claimed():
    # Oregon has no sales tax; a San Francisco ZIP code is in California.
    loc, message = refusal(region="OR", postal_code="94105")

    assert loc == ("region",)
    assert "94105 is in CA, not OR" in message


@pytest.mark.parametrize("postal_code", ["1", "00001", "SW1A 1AA"])
def test_a_us_postal_code_that_is_no_zip_code_is_refused_naming_it(postal_code: str):
    loc, _ = refusal(region="CA", postal_code=postal_code)

    assert loc == ("postal_code",)


def test_addresses_elsewhere_keep_their_free_text_region():
    address = AddressInput.model_validate({**ADDRESS, "country": "GB", "region": "Greater London", "postal_code": "N1"})

    assert address.region == "Greater London"


def test_an_edit_is_held_to_the_same_rule_and_a_stored_address_to_none():
    with pytest.raises(ValidationError) as refused:
        OrderEdit.model_validate({"shipping_address": {**ADDRESS, "region": "OR", "postal_code": "94105"}})
    assert refused.value.errors()[0]["loc"] == ("shipping_address", "region")
    # What is stored is an Address and is read back as it was stored, whatever rule came later.
    stored = Address.model_validate({**ADDRESS, "region": "OR", "postal_code": "94105"})
    assert stored.region == "OR"
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
