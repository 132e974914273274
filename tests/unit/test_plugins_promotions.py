"""The promotions plugin: promo codes from a JSON file, as percent, fixed or free-shipping discounts."""

from __future__ import annotations

import json

import pytest

from core.money import Money
from core.pricing_types import Discount
from plugins import promotions
from plugins.data_files import DataFileError
from plugins.promotions import PROMOTIONS_FILE_ENV, load_promotions
from tests.unit.conftest import a_draft, a_product, usd


@pytest.fixture
def promotions_file(tmp_path, monkeypatch):
    """Write a promotions file and point OMS_PROMOTIONS_FILE at it."""

    def write(*entries: dict, raw: str | None = None):
        path = tmp_path / "promotions.json"
        path.write_text(raw if raw is not None else json.dumps({"promotions": list(entries)}))
        monkeypatch.setenv(PROMOTIONS_FILE_ENV, str(path))
        return path

    return write


def discounts(draft):
    return promotions.oms_discounts(draft=draft)


def two_line_draft(**kwargs):
    return a_draft((a_product("A", "10.00"), 2), (a_product("B", "4.99"), 1), **kwargs)


# --- Registration and the packaged file -----------------------------------------------------


def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("promotions") is promotions


def test_packaged_file_offers_the_sample_codes():
    assert {"WELCOME10", "SAVE5", "FREESHIP"} <= set(load_promotions())


def test_grants_discounts_through_the_plugin_manager(plugins):
    results = plugins.hook.oms_discounts(draft=two_line_draft(promo_codes=["FREESHIP"]))

    assert [Discount(code="FREESHIP", free_shipping=True)] in results


# --- Kinds ----------------------------------------------------------------------------------


def test_percent_code_discounts_every_line_rounded_half_even():
    # 10% of 24.99 is 2.499 and of 0.25 is 0.025: each line is rounded on its own.
    draft = a_draft((a_product("A", "24.99"), 1), (a_product("B", "0.25"), 1), promo_codes=["WELCOME10"])

    assert discounts(draft) == [
        Discount(code="WELCOME10", amount=usd("2.50"), line_id="L1", exclusive=True),
        Discount(code="WELCOME10", amount=usd("0.02"), line_id="L2", exclusive=True),
    ]


def test_fixed_code_grants_one_order_level_amount_in_the_order_currency():
    assert discounts(two_line_draft(promo_codes=["SAVE5"])) == [Discount(code="SAVE5", amount=usd("5.00"))]

    gbp = a_draft((a_product(price="30.00", currency="GBP"), 1), currency="GBP", promo_codes=["SAVE5"])
    assert discounts(gbp) == [Discount(code="SAVE5", amount=Money(amount="4.00", currency="GBP"))]


def test_free_shipping_code_grants_free_shipping():
    assert discounts(two_line_draft(promo_codes=["FREESHIP"])) == [Discount(code="FREESHIP", free_shipping=True)]


def test_a_percent_code_is_exclusive_unless_its_promotion_stacks(promotions_file):
    promotions_file(
        {"code": "TEN", "kind": "percent", "percent": "10"},
        {"code": "STAFF5", "kind": "percent", "percent": "5", "stacks": True},
    )
    granted = discounts(a_draft((a_product(price="10.00"), 1), promo_codes=["TEN", "STAFF5"]))

    assert granted == [
        Discount(code="TEN", amount=usd("1.00"), line_id="L1", exclusive=True),
        Discount(code="STAFF5", amount=usd("0.50"), line_id="L1", exclusive=False),
    ]


def test_a_percent_code_the_order_does_not_qualify_for_is_not_exclusive():
    draft = a_draft((a_product(price="99.99"), 1), promo_codes=["BIGBASKET20"])

    assert [d.exclusive for d in discounts(draft)] == [False]


def test_stacks_must_be_a_boolean(promotions_file):
    promotions_file({"code": "TEN", "kind": "percent", "percent": "10", "stacks": "sometimes"})

    with pytest.raises(DataFileError):
        load_promotions()


def test_several_codes_apply_together():
    granted = discounts(two_line_draft(promo_codes=["FREESHIP", "SAVE5"]))

    assert {d.code for d in granted} == {"FREESHIP", "SAVE5"}


# --- Which codes answer ---------------------------------------------------------------------


def test_no_codes_no_discounts():
    assert discounts(two_line_draft()) == []


def test_unknown_code_gets_no_answer_so_the_core_can_reject_it():
    assert discounts(two_line_draft(promo_codes=["NOSUCHCODE"])) == []


def test_only_codes_the_order_carries_apply():
    granted = discounts(two_line_draft(promo_codes=["SAVE5"]))

    assert {d.code for d in granted} == {"SAVE5"}


def test_codes_match_case_insensitively():
    assert discounts(two_line_draft(promo_codes=[" save5 "])) == [Discount(code="SAVE5", amount=usd("5.00"))]


def test_a_code_repeated_in_the_order_applies_once():
    assert discounts(two_line_draft(promo_codes=["SAVE5", "save5"])) == [Discount(code="SAVE5", amount=usd("5.00"))]


# --- Conditions -----------------------------------------------------------------------------


def test_code_below_its_minimum_subtotal_is_accepted_but_grants_nothing():
    draft = a_draft((a_product(price="99.99"), 1), promo_codes=["BIGBASKET20"])

    assert discounts(draft) == [Discount(code="BIGBASKET20", amount=usd("0.00"))]


def test_code_at_its_minimum_subtotal_applies():
    draft = a_draft((a_product(price="50.00"), 2), promo_codes=["BIGBASKET20"])

    assert discounts(draft) == [Discount(code="BIGBASKET20", amount=usd("20.00"), line_id="L1", exclusive=True)]


def test_code_with_a_minimum_in_other_currencies_only_grants_nothing_in_this_one():
    draft = a_draft((a_product(price="500.00", currency="CHF"), 1), currency="CHF", promo_codes=["BIGBASKET20"])

    assert discounts(draft) == [Discount(code="BIGBASKET20", amount=Money.zero("CHF"))]


def test_free_shipping_below_its_minimum_is_accepted_but_grants_nothing():
    draft = a_draft((a_product(price="49.99"), 1), promo_codes=["SHIPFREE50"])

    (granted,) = discounts(draft)
    assert granted.code == "SHIPFREE50"
    assert not granted.free_shipping
    assert granted.amount == usd("0.00")


def test_code_for_another_channel_is_accepted_but_grants_nothing():
    assert discounts(two_line_draft(promo_codes=["APP15"])) == [Discount(code="APP15", amount=usd("0.00"))]

    in_app = discounts(two_line_draft(promo_codes=["APP15"], channel="mobile-app"))
    assert [d.amount for d in in_app] == [usd("3.00"), usd("0.75")]


def test_fixed_code_without_an_amount_in_the_order_currency_grants_nothing():
    draft = a_draft((a_product(price="30.00", currency="CAD"), 1), currency="CAD", promo_codes=["SAVE5"])

    assert discounts(draft) == [Discount(code="SAVE5", amount=Money.zero("CAD"))]


# --- The data file --------------------------------------------------------------------------


def test_env_var_points_at_another_promotions_file(promotions_file):
    promotions_file({"code": "half", "kind": "percent", "percent": "50"})

    assert set(load_promotions()) == {"HALF"}
    assert discounts(a_draft(promo_codes=["HALF"])) == [
        Discount(code="HALF", amount=usd("5.00"), line_id="L1", exclusive=True)
    ]
    assert discounts(a_draft(promo_codes=["WELCOME10"])) == []


def test_file_is_read_once_per_path(promotions_file):
    path = promotions_file({"code": "ONE", "kind": "free_shipping"})
    assert set(load_promotions()) == {"ONE"}

    path.write_text(json.dumps({"promotions": [{"code": "TWO", "kind": "free_shipping"}]}))

    assert set(load_promotions()) == {"ONE"}


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{"code": "X", "kind": "bogus"}], "does not match any of the expected tags"),
        ([{"code": "X", "kind": "percent"}], "percent: Field required"),
        ([{"code": "X", "kind": "percent", "percent": 10.5}], "as a string"),
        ([{"code": "X", "kind": "percent", "percent": "0"}], "greater than 0"),
        ([{"code": "X", "kind": "percent", "percent": "101"}], "less than or equal to 100"),
        ([{"code": "X", "kind": "fixed", "amounts": {}}], "at least 1 item"),
        ([{"code": "X", "kind": "fixed", "amounts": {"USD": "5.001"}}], "2 decimal places"),
        ([{"code": "X", "kind": "fixed", "amounts": {"USD": "-5.00"}}], "must not be negative"),
        ([{"code": "X", "kind": "fixed", "amounts": {"XYZ": "5"}}], "unsupported currency"),
        ([{"code": "X", "kind": "free_shipping", "channels": []}], "at least 1 item"),
        ([{"code": "X", "kind": "free_shipping", "percent": "5"}], "Extra inputs are not permitted"),
        ([{"code": "no spaces", "kind": "free_shipping"}], "should match pattern"),
        ([{"code": "X", "kind": "free_shipping"}, {"code": "x", "kind": "free_shipping"}], "listed twice"),
    ],
)
def test_malformed_file_raises_a_clear_error(promotions_file, entries, problem):
    path = promotions_file(*entries)

    with pytest.raises(DataFileError, match=problem) as error:
        load_promotions()
    assert str(path) in str(error.value)


def test_file_that_is_not_json_raises_a_clear_error(promotions_file):
    promotions_file(raw="{not json")

    with pytest.raises(DataFileError, match="Invalid JSON"):
        discounts(a_draft(promo_codes=["SAVE5"]))


def test_missing_file_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(PROMOTIONS_FILE_ENV, str(tmp_path / "nowhere.json"))

    with pytest.raises(DataFileError, match="cannot read"):
        load_promotions()
