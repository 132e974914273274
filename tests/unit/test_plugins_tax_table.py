"""The tax_table plugin: a rate per country, region and tax code, from a JSON table."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from core import hookimpl
from core.plugin_manager import build_plugin_manager
from core.pricing_types import TaxRate
from functions.plugin_loading import entry_point_sources
from plugins import tax_table
from plugins.data_files import DataFileError
from plugins.tax_table import TAX_RATES_FILE_ENV, load_tax_table
from tests.unit.conftest import a_draft, a_product, an_address


def rate_for(country, region=None, tax_code=None):
    draft = a_draft((a_product(tax_code=tax_code), 1))
    return tax_table.oms_tax_rate(line=draft.lines[0], address=an_address(country, region))


def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("tax_table") is tax_table


def test_answers_through_the_plugin_manager(plugins):
    draft = a_draft()

    rate = plugins.hook.oms_tax_rate(line=draft.lines[0], address=an_address("US", "CA"), draft=draft)

    assert rate == TaxRate(rate=Decimal("0.0725"), name="US-CA standard")


@pytest.mark.parametrize(
    ("country", "region", "rate", "name"),
    [
        ("US", "CA", "0.0725", "US-CA standard"),
        ("US", "NY", "0.04", "US-NY standard"),
        ("US", "TX", "0.0625", "US-TX standard"),
        ("US", "WA", "0.065", "US-WA standard"),
        ("US", "OR", "0", "US-OR standard"),
        ("CA", "ON", "0.13", "CA-ON standard"),
        ("CA", "BC", "0.12", "CA-BC standard"),
        ("CA", "QC", "0.14975", "CA-QC standard"),
        ("GB", None, "0.20", "GB standard"),
        ("DE", None, "0.19", "DE standard"),
        ("FR", None, "0.20", "FR standard"),
        ("JP", None, "0.10", "JP standard"),
    ],
)
def test_standard_rate_of_each_jurisdiction(country, region, rate, name):
    assert rate_for(country, region) == TaxRate(rate=Decimal(rate), name=name)


@pytest.mark.parametrize(
    ("country", "tax_code", "rate", "name"),
    [
        ("GB", "reduced", "0.05", "GB reduced"),
        ("GB", "zero", "0", "GB zero"),
        ("DE", "reduced", "0.07", "DE reduced"),
        ("FR", "reduced", "0.055", "FR reduced"),
        ("JP", "reduced", "0.08", "JP reduced"),
    ],
)
def test_product_tax_code_picks_its_rate(country, tax_code, rate, name):
    assert rate_for(country, tax_code=tax_code) == TaxRate(rate=Decimal(rate), name=name)


def test_unknown_tax_code_falls_back_to_the_standard_rate():
    assert rate_for("DE", tax_code="spaceships") == TaxRate(rate=Decimal("0.19"), name="DE standard")
    assert rate_for("US", "CA", tax_code="reduced") == TaxRate(rate=Decimal("0.0725"), name="US-CA standard")


@pytest.mark.parametrize("region", ["ca", " CA ", "US-CA", "us-ca"])
def test_region_is_matched_case_insensitively_and_in_iso_form(region):
    assert rate_for("US", region).name == "US-CA standard"


@pytest.mark.parametrize(
    ("country", "region"),
    [("CH", None), ("US", "MT"), ("US", None), ("US", "California"), ("CA", None), ("CA", "US-ON")],
)
def test_unknown_jurisdiction_is_left_untaxed(country, region):
    assert rate_for(country, region) is None


def test_answers_last_so_a_tax_engine_plugin_can_replace_the_table():
    class TaxEngine:
        @hookimpl
        def oms_tax_rate(self):
            return TaxRate(rate=Decimal("0.0925"), name="engine")

    # Registered before the entry points load, so only trylast puts the table after it.
    plugins = build_plugin_manager(TaxEngine())
    plugins.load(entry_point_sources())
    draft = a_draft()

    rate = plugins.hook.oms_tax_rate(line=draft.lines[0], address=an_address("US", "CA"), draft=draft)

    assert rate.name == "engine"


def test_packaged_table_documents_that_it_is_illustrative():
    table = load_tax_table()

    assert "not a tax engine" in table.note
    assert table.source


# --- The data file --------------------------------------------------------------------------


@pytest.fixture
def tax_file(tmp_path, monkeypatch):
    def write(table: dict):
        path = tmp_path / "tax_rates.json"
        path.write_text(json.dumps(table))
        monkeypatch.setenv(TAX_RATES_FILE_ENV, str(path))
        return path

    return write


def test_env_var_points_at_another_table(tax_file):
    tax_file({"CH": {"standard": "0.081", "reduced": "0.026"}})

    assert rate_for("CH", tax_code="reduced") == TaxRate(rate=Decimal("0.026"), name="CH reduced")
    assert rate_for("GB") is None


def test_listed_region_wins_over_the_country_rates(tax_file):
    tax_file({"ES": {"standard": "0.21", "regions": {"CN": {"standard": "0.07"}}}})

    assert rate_for("ES", "CN").name == "ES-CN standard"
    assert rate_for("ES", "MD") == TaxRate(rate=Decimal("0.21"), name="ES standard")


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"GB": {"standard": 0.2}}, "as a string"),
        ({"GB": {"standard": "1.5"}}, "less than or equal to 1"),
        ({"GB": {"standard": "-0.1"}}, "greater than or equal to 0"),
        ({"GB": {"reduced": "0.05"}}, '"standard" rate'),
        ({"US": {"regions": {"CA": {"reduced": "0.01"}}}}, '"standard" rate'),
        ({"US": {}}, "rates, regions or both"),
        ({"XX": {"standard": "0.1"}}, "not ISO 3166-1"),
        ({"US": {"regions": {"ca": {"standard": "0.1"}}}}, "should match pattern"),
        ({"GB": {"Standard": "0.2"}}, "should match pattern"),
        ({"GB": {"standard": "twenty"}}, "not a decimal number"),
    ],
)
def test_malformed_table_raises_a_clear_error(tax_file, table, problem):
    tax_file(table)

    with pytest.raises(DataFileError, match=problem):
        load_tax_table()
