"""Built-in tax: a rate per country (and region) and product tax code, from a JSON table.

The table is `plugins/data/tax_rates.json`, or the path in `OMS_PLUGIN_TAX_TABLE_RATES_FILE`. Each country
maps tax codes to rates ("standard" is required), or lists `regions` that do, or both (a listed
region wins over the country's own rates):

    {"GB": {"standard": "0.20", "reduced": "0.05"},
     "US": {"regions": {"CA": {"standard": "0.0725"}}}}

A product without a tax code, or with a code the jurisdiction does not list, is taxed at its
"standard" rate. A destination the table does not know is left untaxed (no answer), so a real
tax engine plugin can be installed alongside or instead of this one.
"""

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from core import hookimpl
from core.models import COUNTRIES, Address
from core.pricing_types import DraftLine, TaxRate
from plugins.data_files import DecimalText, data_file_path, load_data_file

NAME = "tax_table"  # its entry-point name, which namespaces its settings
TAX_RATES_FILE_ENV = "OMS_PLUGIN_TAX_TABLE_RATES_FILE"
STANDARD = "standard"

TaxCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,3}$")]
Rate = Annotated[DecimalText, Field(ge=0, le=1)]


def _require_standard(rates: dict[str, Decimal]) -> dict[str, Decimal]:
    if STANDARD not in rates:
        raise ValueError(f'a jurisdiction with rates needs a "{STANDARD}" rate')
    return rates


class RegionRates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    rates: dict[TaxCode, Rate]

    @model_validator(mode="before")
    @classmethod
    def _rates_inline(cls, data: Any) -> Any:
        return {"rates": data} if isinstance(data, dict) else data

    @field_validator("rates")
    @classmethod
    def _has_standard(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        return _require_standard(rates)


class CountryRates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    rates: dict[TaxCode, Rate] = Field(default_factory=dict)
    regions: dict[RegionCode, RegionRates] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _rates_inline(cls, data: Any) -> Any:
        # The file writes rates next to "regions", the way tax tables are usually read.
        if not isinstance(data, dict):
            return data
        rates = {code: rate for code, rate in data.items() if code != "regions"}
        return {"rates": rates, "regions": data.get("regions", {})}

    @model_validator(mode="after")
    def _has_rates(self) -> "CountryRates":
        if not self.rates and not self.regions:
            raise ValueError("a country needs rates, regions or both")
        if self.rates:
            _require_standard(self.rates)
        return self


class TaxTable(BaseModel):
    """The tax rates data file: country code -> CountryRates, plus `_source` and `_note` keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    source: str = Field(default="", alias="_source")
    note: str = Field(default="", alias="_note")
    countries: dict[str, CountryRates]

    @model_validator(mode="before")
    @classmethod
    def _countries_inline(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        metadata = {key: value for key, value in data.items() if key.startswith("_")}
        countries = {key: value for key, value in data.items() if not key.startswith("_")}
        return {**metadata, "countries": countries}

    @field_validator("countries")
    @classmethod
    def _iso_countries(cls, countries: dict[str, CountryRates]) -> dict[str, CountryRates]:
        unknown = sorted(set(countries) - COUNTRIES)
        if unknown:
            raise ValueError(f"not ISO 3166-1 alpha-2 country codes: {', '.join(unknown)}")
        return countries

    def rate(self, country: str, region: str | None, tax_code: str | None) -> TaxRate | None:
        country_rates = self.countries.get(country)
        if country_rates is None:
            return None
        region_code = _region_code(country, region)
        if region_code in country_rates.regions:
            return _pick(country_rates.regions[region_code].rates, tax_code, f"{country}-{region_code}")
        if country_rates.rates:
            return _pick(country_rates.rates, tax_code, country)
        return None


def _region_code(country: str, region: str | None) -> str:
    # Addresses carry free text: "ca", "CA" and the ISO 3166-2 form "US-CA" all name California.
    code = (region or "").strip().upper()
    return code.removeprefix(f"{country}-")


def _pick(rates: dict[str, Decimal], tax_code: str | None, place: str) -> TaxRate:
    code = tax_code if tax_code in rates else STANDARD
    return TaxRate(rate=rates[code], name=f"{place} {code}")


def load_tax_table() -> TaxTable:
    """The configured tax table. Raises DataFileError for a malformed file."""
    return load_data_file(data_file_path(NAME, "rates_file", "tax_rates.json"), TaxTable)


# trylast: a tax engine plugin, when installed, answers before this table.
@hookimpl(trylast=True)
def oms_tax_rate(line: DraftLine, address: Address) -> TaxRate | None:
    return load_tax_table().rate(address.country, address.region, line.product.tax_code)
