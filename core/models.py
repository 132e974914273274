"""Domain models: catalog, network, inventory and orders, as the HTTP contract names them."""

# No `from __future__ import annotations` in a module of models: pydantic evaluates a model's
# string annotations when its class is made (typing.ForwardRef compiles each one), and this
# module's ~260 cost every new container's import some 3 ms (tests/unit/test_models_deferred.py).
# The few names used before they are defined are quoted.

import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    field_serializer,
    field_validator,
    model_validator,
)

from core.actors import WORKFLOW_ACTOR
from core.ca_addresses import province_code, provinces_of_postal_code
from core.errors import (
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    OutOfStock,
    ParcelNotConfirmed,
    RefundExceedsCaptured,
    StaleVersion,
)
from core.events import OrderEvent
from core.fields import empty_list
from core.ids import booking_key, shipment_id_for, shipment_ids_for, sourced_again_key
from core.log_text import shown_reference
from core.money import Currency, ExactMoney, Money
from core.status import (
    EDITABLE,
    NOT_LEFT,
    OPEN_AT_STORE,
    RESOURCEABLE,
    TERMINAL,
    OrderStatus,
    PaymentStatus,
    RefundStatus,
    ShipmentStatus,
    can_transition,
    check_successor,
)
from core.us_addresses import ZIP_TERRITORIES, code_of_zip, usps_code

# ISO 3166-1 alpha-2, officially assigned codes.
COUNTRIES = frozenset(
    [
        "AD",
        "AE",
        "AF",
        "AG",
        "AI",
        "AL",
        "AM",
        "AO",
        "AQ",
        "AR",
        "AS",
        "AT",
        "AU",
        "AW",
        "AX",
        "AZ",
        "BA",
        "BB",
        "BD",
        "BE",
        "BF",
        "BG",
        "BH",
        "BI",
        "BJ",
        "BL",
        "BM",
        "BN",
        "BO",
        "BQ",
        "BR",
        "BS",
        "BT",
        "BV",
        "BW",
        "BY",
        "BZ",
        "CA",
        "CC",
        "CD",
        "CF",
        "CG",
        "CH",
        "CI",
        "CK",
        "CL",
        "CM",
        "CN",
        "CO",
        "CR",
        "CU",
        "CV",
        "CW",
        "CX",
        "CY",
        "CZ",
        "DE",
        "DJ",
        "DK",
        "DM",
        "DO",
        "DZ",
        "EC",
        "EE",
        "EG",
        "EH",
        "ER",
        "ES",
        "ET",
        "FI",
        "FJ",
        "FK",
        "FM",
        "FO",
        "FR",
        "GA",
        "GB",
        "GD",
        "GE",
        "GF",
        "GG",
        "GH",
        "GI",
        "GL",
        "GM",
        "GN",
        "GP",
        "GQ",
        "GR",
        "GS",
        "GT",
        "GU",
        "GW",
        "GY",
        "HK",
        "HM",
        "HN",
        "HR",
        "HT",
        "HU",
        "ID",
        "IE",
        "IL",
        "IM",
        "IN",
        "IO",
        "IQ",
        "IR",
        "IS",
        "IT",
        "JE",
        "JM",
        "JO",
        "JP",
        "KE",
        "KG",
        "KH",
        "KI",
        "KM",
        "KN",
        "KP",
        "KR",
        "KW",
        "KY",
        "KZ",
        "LA",
        "LB",
        "LC",
        "LI",
        "LK",
        "LR",
        "LS",
        "LT",
        "LU",
        "LV",
        "LY",
        "MA",
        "MC",
        "MD",
        "ME",
        "MF",
        "MG",
        "MH",
        "MK",
        "ML",
        "MM",
        "MN",
        "MO",
        "MP",
        "MQ",
        "MR",
        "MS",
        "MT",
        "MU",
        "MV",
        "MW",
        "MX",
        "MY",
        "MZ",
        "NA",
        "NC",
        "NE",
        "NF",
        "NG",
        "NI",
        "NL",
        "NO",
        "NP",
        "NR",
        "NU",
        "NZ",
        "OM",
        "PA",
        "PE",
        "PF",
        "PG",
        "PH",
        "PK",
        "PL",
        "PM",
        "PN",
        "PR",
        "PS",
        "PT",
        "PW",
        "PY",
        "QA",
        "RE",
        "RO",
        "RS",
        "RU",
        "RW",
        "SA",
        "SB",
        "SC",
        "SD",
        "SE",
        "SG",
        "SH",
        "SI",
        "SJ",
        "SK",
        "SL",
        "SM",
        "SN",
        "SO",
        "SR",
        "SS",
        "ST",
        "SV",
        "SX",
        "SY",
        "SZ",
        "TC",
        "TD",
        "TF",
        "TG",
        "TH",
        "TJ",
        "TK",
        "TL",
        "TM",
        "TN",
        "TO",
        "TR",
        "TT",
        "TV",
        "TW",
        "TZ",
        "UA",
        "UG",
        "UM",
        "US",
        "UY",
        "UZ",
        "VA",
        "VC",
        "VE",
        "VG",
        "VI",
        "VN",
        "VU",
        "WF",
        "WS",
        "YE",
        "YT",
        "ZA",
        "ZM",
        "ZW",
    ]
)

# Controls (NUL, CR/LF, ESC...) and the bidi overrides that make "exe.txt" show as "txt.exe" are
# refused rather than stripped, so what is stored is what the client sent, in NFC: a name typed with
# combining accents and one typed precomposed are the same name.
_CONTROLS = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
# So are the characters that show nothing (the zero-width space, the word joiner, the byte order
# mark) and the Unicode line and paragraph separators: "Ada\u200bLovelace" looks like another
# customer's "AdaLovelace", and a U+2028 breaks a line where none may be. Not the zero-width
# non-joiner and joiner (U+200C, U+200D): Persian and Indic names are spelt with them, and emoji
# sequences are joined by them; refusing them would refuse real customers' orders. Text stored
# before they were refused still reads (StoredCleanText).
_INVISIBLE = "\u200b\u2060\ufeff\u2028\u2029"
_UNCLEAN = _CONTROLS + _INVISIBLE
_UNCLEAN_TEXT = re.compile(f"[{_UNCLEAN}]")
_INVISIBLE_TEXT = re.compile(f"[{_INVISIBLE}]")
# A person's note may run over lines: tabs and line breaks (LF, or CRLF) are kept; every other
# control (a CR alone among them), the bidi overrides and the invisible characters are refused as
# in names.
_UNCLEAN_IN_NOTES = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069" + _INVISIBLE
_UNCLEAN_NOTE = re.compile(f"[{_UNCLEAN_IN_NOTES}]|\r(?!\n)")
# The same as a pattern, which also asks for something besides white space (no lookahead: the
# schema's readers do not all have one).
_NOTE_LINE = f"(?:[^{_UNCLEAN_IN_NOTES}\r]|\r\n)*"
_NOTE_PATTERN = f"^{_NOTE_LINE}[^{_UNCLEAN_IN_NOTES}\\s]{_NOTE_LINE}$"


def _kind(char: str) -> str:
    # A line break or a tab is said so: a spreadsheet's cell with lines (an address typed with
    # Alt+Enter) shows no "U+000A" to the merchant who imports it.
    if char in "\r\n":
        return "a line break, a control character"
    if char == "\t":
        return "a tab, a control character"
    if char <= "\x9f":
        return "a control character"
    if char == "\u2028":
        return "a line separator"
    if char == "\u2029":
        return "a paragraph separator"
    return "an invisible character" if _INVISIBLE_TEXT.match(char) else "a bidi override"


def _refusing(unclean: re.Pattern[str]) -> Callable[[Any, Any], str]:
    def clean(value: Any, handler: Any) -> str:
        # Judged as sent, before surrounding whitespace is stripped: "Ada\n" is refused, not
        # trimmed, exactly as the schema's pattern says.
        found = unclean.search(value) if isinstance(value, str) else None
        if found is not None:
            char = found.group()[0]
            raise ValueError(f"must not contain {_kind(char)} (U+{ord(char):04X})")
        # Normalised before the length is checked: the limit is on what is stored and read back, and
        # NFC writes a few characters as two (U+1D15E), which a stored name could not be read from.
        return handler(unicodedata.normalize("NFC", value) if isinstance(value, str) else value)

    return clean


_clean_text = _refusing(_UNCLEAN_TEXT)


def _stored_text(value: Any, handler: Any) -> str:
    # Stored before invisible characters were refused: each is shown as U+FFFD, as in a plugin's
    # text, rather than failing the read of the order (product, location) that holds it. What is
    # read back is then taken again wherever it is sent on (an edit, an exchange's replacement).
    return _clean_text(_INVISIBLE_TEXT.sub("\ufffd", value) if isinstance(value, str) else value, handler)


def _made_visible(note: str | None) -> str | None:
    """A note the system is given (a review rule's): what a person's note refuses (a control other
    than a tab or a line break, a bidi override, an invisible character) replaced by U+FFFD; lines
    and tabs kept."""
    return None if note is None else _UNCLEAN_NOTE.sub("\ufffd", note)


# Text a plugin writes for people to read (a return policy's refusal, a shipping quote's description):
# made safe as a review rule's note is, since refusing it would fail the customer's own request. So
# is a person's free text read back (a refund's or a return line's reason, a note): one stored before
# invisible characters were refused shows each as U+FFFD, as a stored name does (StoredText).
VisibleText = AfterValidator(_made_visible)


def _visible_detail(detail: dict | None) -> dict | None:
    """A history entry's detail with the reasons and notes in it (a cancel's reason, a hold's note,
    a review rule's, at any depth) made visible (VisibleText): one stored before invisible
    characters were refused shows each as U+FFFD. Nothing else in it is touched."""

    def shown(value: Any, key: Any = None) -> Any:
        if isinstance(value, dict):
            return {k: shown(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(v) for v in value]
        return _made_visible(value) if key in ("reason", "note") and isinstance(value, str) else value

    return shown(detail)


def _made_visible_on_one_line(name: str) -> str:
    return _UNCLEAN_TEXT.sub("\ufffd", name)


# A name a plugin gives for people to read (a tax rate's, printed on an invoice line): made safe as
# VisibleText is, and kept on one line, so a tab or a line break is replaced as well.
VisibleName = AfterValidator(_made_visible_on_one_line)


class _CleanTextRule(WrapValidator):
    """The rule on names and addresses, for validation and, as a pattern, for the OpenAPI schema."""

    refused = _UNCLEAN

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        json_schema = handler(schema)
        json_schema["pattern"] = f"^[^{self.refused}]*$"
        return json_schema


class _StoredTextRule(_CleanTextRule):
    """The rule on names and addresses read back: what a client may no longer send but could before
    (an invisible character) is shown as U+FFFD, so the schema of what is read allows it."""

    refused = _CONTROLS


# A name or an address as a client sends it (a request body, an import line).
CleanText = _CleanTextRule(_clean_text)
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), CleanText]
# The same as stored and read back (Order, Product, Location): what CleanText takes reads unchanged.
StoredCleanText = _StoredTextRule(_stored_text)
StoredText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), StoredCleanText]


class _NoteRule(WrapValidator):
    """The rule on a person's note, for validation and, as a pattern, for the OpenAPI schema."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        json_schema = handler(schema)
        json_schema["pattern"] = _NOTE_PATTERN
        return json_schema


# A person's note (a hold, a release, a return's approval or rejection): trimmed, so the schema says
# it must hold something besides white space ("\t" alone is empty once trimmed, and refused); its
# lines and tabs are kept, any other control character, a bidi override or an invisible character
# is refused.
Note = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    Field(pattern=r"\S"),
    _NoteRule(_refusing(_UNCLEAN_NOTE)),
]
# A sku, a location id, a customer id: what a path or a filter naming one must match too.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
# Controls, bidi overrides and invisible characters refused as in names (no address has one), through
# a plain WrapValidator so that the schema keeps the address's own pattern.
_EMAIL = StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
Email = Annotated[str, _EMAIL, WrapValidator(_clean_text)]
# The same as stored and read back, as StoredText is.
StoredEmail = Annotated[str, _EMAIL, WrapValidator(_stored_text)]
Latitude = Annotated[float, Field(ge=-90, le=90, strict=True)]
Longitude = Annotated[float, Field(ge=-180, le=180, strict=True)]


class _NullAsLeftOutRule(BeforeValidator):
    """The rule of an optional field a client may send as null, and the schema saying it may."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        json_schema = handler(schema)
        return {"anyOf": [json_schema, {"type": "null"}]} if handler.mode == "validation" else json_schema


def null_as_left_out(default: Callable[[], Any]) -> _NullAsLeftOutRule:
    """An optional field of a request body whose default is not null (a list, an object, "ship"): JSON
    clients send null for a field they have no value for, so null reads as the field left out
    (`default()`, the field's own default), as it does for the fields whose default is null. The
    two are the same body: an Idempotency-Key's retry may send either (its payload is the
    validated body)."""
    return _NullAsLeftOutRule(lambda value: default() if value is None else value)


def utc_now() -> datetime:
    return datetime.now(UTC)


# Every model of core/ is declared with defer_build: pydantic builds its validator and serializer
# when it is first used, not at import. A new API container imports the models of every route and
# function (through the ports and hookspecs) and its first order uses about twenty of them: building
# them all at import was 15% of the API's import (tests/unit/test_models_deferred.py).
class Strict(BaseModel):
    """Request and domain models reject unknown fields: no silent drops."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class Shown(BaseModel):
    """A shape the API answers: every field is in every answer (an unset one as null), so the
    generated document marks each one required, as API.md lists them, not as one a client may miss."""

    model_config = ConfigDict(defer_build=True, json_schema_serialization_defaults_required=True)


class SharedPart:
    """A model that other models on a new API container's first order hold (an address, a customer,
    a fulfillment): built on its own, once, when the first model holding it is built, so each
    later one takes its schema. pydantic makes the whole schema of a held model not yet built
    inside the model holding it, without building it: Address was made in Location, PricingDraft
    and Order, Customer and Fulfillment in two and three (18.6 M instructions of a new API
    container's first order under callgrind). A model that subclasses one (AddressInput) is
    built as any other. tests/integration/test_api_cold_path.py counts the schemas made."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        if source is cls and SharedPart in cls.__bases__ and not cls.__pydantic_complete__ and cls not in _BUILDING:  # type: ignore[attr-defined]
            _BUILDING.add(cls)
            try:
                cls.model_rebuild()  # type: ignore[attr-defined]
            finally:
                _BUILDING.discard(cls)
        return handler(source)


# The shared parts being built: building one asks pydantic for its own schema, which is then made.
_BUILDING: set[type] = set()


class Address(SharedPart, Strict):
    # What is stored is an Address, whichever input model (AddressInput) it was sent as. Every
    # answer shows each field (Shown); a request's AddressInput keeps the optional ones optional.
    model_config = ConfigDict(
        extra="forbid", revalidate_instances="subclass-instances", json_schema_serialization_defaults_required=True
    )

    name: StoredText
    line1: StoredText
    line2: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), StoredCleanText] | None = None
    city: StoredText
    region: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100), StoredCleanText] | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20), StoredCleanText]
    country: str = Field(description="ISO 3166-1 alpha-2 code, e.g. US", json_schema_extra={"enum": sorted(COUNTRIES)})
    latitude: Latitude | None = None
    longitude: Longitude | None = None

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if value not in COUNTRIES:
            raise ValueError("country must be an ISO 3166-1 alpha-2 code in upper case, such as US or DE")
        return value


@dataclass(frozen=True)
class _TaxRegions:
    """How an address in a country that taxes by region (US states, Canadian provinces) names its
    region for sure: the codes a region may be written as, and those its postal code lies in."""

    postal_code_wanted: str  # what a postal_code must be, in words, with an example
    region_wanted: str  # what a region must be, in words, with an example
    postal_code_named: str  # what the country calls its postal codes
    code_of_region: Callable[[str], str | None]  # None: the region names none of the codes
    regions_of_postal_code: Callable[[str], tuple[str, ...]]  # none: no postal code in use


def _state_of_zip(postal_code: str) -> tuple[str, ...]:
    state = code_of_zip(postal_code)
    return (state,) if state else ()


_TAX_REGIONS = {
    "US": _TaxRegions(
        "a ZIP code in use, such as 94105 or 94105-1234",
        "a USPS state or territory code, such as CA",
        "ZIP code",
        usps_code,
        _state_of_zip,
    ),
    "CA": _TaxRegions(
        "a Canadian postal code, such as M5V 2T6 (letter digit letter, digit letter digit)",
        "a province or territory code, such as ON",
        "postal code",
        province_code,
        provinces_of_postal_code,
    ),
}


class AddressInput(Address):
    """An address as a client sends it (an order's shipping address, a location's). US sales tax
    is levied by state and Canadian sales tax by province, so an address in either country names
    its state or province for sure: its postal code must be one of the country's, its region (when
    sent) the code of the state or province that postal code is in, and a missing region is taken
    from the postal code (unless the code serves two, as Canada's X codes serve NT and NU). Region
    and postal code that disagree are refused rather than taxed by either. A territory addressed
    by US ZIP code under its own country code (PR, GU...) needs a ZIP code in that territory, so a
    state's address cannot pass for one. Stored addresses stay `Address`: reading one never
    re-judges it."""

    model_config = ConfigDict(
        json_schema_extra={
            "description": "For `country` US: `postal_code` is a ZIP code (12345 or 12345-6789) and `region` the "
            "USPS code of its state or territory (CA, NY, PR, AE...; `ca` and `US-CA` are read as CA); a missing "
            "`region` is filled in from the ZIP code, a region the ZIP code is not in is 422. For the territories "
            "addressed by US ZIP code that are countries of their own (`country` AS, GU, MP, PR, VI, FM, MH, PW), "
            "`postal_code` is a ZIP code in that territory. For `country` CA: `postal_code` is a Canadian postal code "
            "(M5V 2T6 or M5V2T6) and `region` the code of its province or territory (ON, QC, BC...; `on` and `CA-ON` "
            "are read as ON); a missing `region` is filled in from the postal code's first letter (an X code, in NT "
            "or NU, needs the region), a region the postal code is not in is 422."
        }
    )

    # A client's text: what an address stored before may hold (an invisible character) is refused.
    name: Text
    line1: Text
    line2: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), CleanText] | None = None
    city: Text
    region: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100), CleanText] | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20), CleanText]

    @model_validator(mode="before")
    @classmethod
    def _judged_again(cls, data: Any) -> Any:
        # A stored address re-priced (an edit that keeps it) is held to the same rule as a new one.
        return data.model_dump() if isinstance(data, Address) and not isinstance(data, cls) else data

    @model_validator(mode="after")
    def _coordinates_in_pairs(self) -> "AddressInput":
        # One coordinate places nothing: sourcing would pass over it in silence (core.sourcing).
        for sent, missing in (("latitude", "longitude"), ("longitude", "latitude")):
            if getattr(self, sent) is not None and getattr(self, missing) is None:
                raise _address_error(missing, "", f"send {missing} with {sent}, or neither")
        return self

    @model_validator(mode="after")
    def _tax_region_is_certain(self) -> "AddressInput":
        if self.country in ZIP_TERRITORIES:
            return self._zip_code_in_its_territory()
        rule = _TAX_REGIONS.get(self.country)
        if rule is None:
            return self
        lies_in = rule.regions_of_postal_code(self.postal_code)
        if not lies_in:
            raise _address_error(
                "postal_code", self.postal_code, f"a {self.country} postal_code must be {rule.postal_code_wanted}"
            )
        where = f"{rule.postal_code_named} {self.postal_code} is in {' or '.join(lies_in)}"
        if self.region is None or self.region == "":
            if len(lies_in) > 1:
                raise _address_error("region", "", f"{where}: region must say which")
            self.region = lies_in[0]
            return self
        region = rule.code_of_region(self.region)
        if region is None:
            raise _address_error("region", self.region, f"a {self.country} region must be {rule.region_wanted}")
        if region not in lies_in:
            raise _address_error("region", self.region, f"{where}, not {region}")
        self.region = region
        return self

    def _zip_code_in_its_territory(self) -> "AddressInput":
        # Puerto Rico, Guam... are addressed by US ZIP code but are countries of their own, which
        # the tax table does not tax: a California address sent with country PR was an untaxed order.
        zip_state = code_of_zip(self.postal_code)
        if zip_state != self.country:
            where = (
                f"{self.postal_code} is in {zip_state}" if zip_state else f"{self.postal_code} is no ZIP code in use"
            )
            raise _address_error(
                "postal_code",
                self.postal_code,
                f"a {self.country} postal_code must be a ZIP code in {self.country} (US ZIP codes address its mail): "
                f"{where}",
            )
        return self


def _address_error(field: str, value: str, message: str) -> ValidationError:
    # Raised from the model's own validator, the error would name the whole address; built this
    # way it names the field (shipping_address.region), in the API and on an import's line alike.
    return ValidationError.from_exception_data(
        "AddressInput", [{"type": "value_error", "loc": (field,), "input": value, "ctx": {"error": message}}]
    )


# --- Catalog and network -------------------------------------------------------------------

# Product attributes are bounded so a product stays one small item and a plugin can rely on
# their shape: lower-case keys (a plugin namespaces its own with a dot: "acme.tax_class").
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_LENGTH = 500
ATTRIBUTE_KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
AttributeKey = Annotated[str, StringConstraints(pattern=ATTRIBUTE_KEY_PATTERN)]
# A value is free text as a name is (it reaches plugins, the API's answers and logs): a control, a
# bidi override or an invisible character is refused and it is kept in NFC; unlike a name it is not
# trimmed and may be empty.
_ATTRIBUTE_VALUE = StringConstraints(max_length=MAX_ATTRIBUTE_LENGTH)
AttributeValue = Annotated[str, _ATTRIBUTE_VALUE, Field(strict=True), CleanText]


def _stored_attribute_value(value: Any, handler: Any) -> str:
    # Values took any string before they were held to that rule: a stored one shows each character
    # the rule refuses (a control and a bidi override too, unlike a stored name) as U+FFFD, as a
    # plugin's name is shown (VisibleName), rather than failing the read of its product.
    return _clean_text(_made_visible_on_one_line(value) if isinstance(value, str) else value, handler)


# The same as stored and read back: what AttributeValue takes reads unchanged, and what is read holds
# none of what it refuses, so the schema's pattern is the same.
StoredAttributeValue = Annotated[str, _ATTRIBUTE_VALUE, Field(strict=True), _CleanTextRule(_stored_attribute_value)]
_ATTRIBUTES = Field(
    max_length=MAX_ATTRIBUTES,
    # patternProperties alone would let a schema-driven client send any other key.
    json_schema_extra={"additionalProperties": False, "propertyNames": {"pattern": ATTRIBUTE_KEY_PATTERN}},
)
ProductAttributes = Annotated[dict[AttributeKey, AttributeValue], _ATTRIBUTES]
StoredProductAttributes = Annotated[dict[AttributeKey, StoredAttributeValue], _ATTRIBUTES]
_ATTRIBUTES_DESCRIPTION = (
    'Free string attributes that plugins read, e.g. {"acme.tax_class": "books"}: at most 50 lower-case keys '
    "(letters, digits, _ . -; up to 64 characters), string values up to 500 characters, with no control "
    "character, bidi override or invisible character (as in names), stored in NFC."
)


class ProductInput(Strict):
    name: Text
    price: ExactMoney

    @field_validator("price")
    @classmethod
    def _not_negative(cls, price: Money) -> Money:
        if price.is_negative():
            raise ValueError("price must not be negative")
        return price

    weight_grams: Annotated[int, Field(ge=0, le=10_000_000, strict=True)] | None = None
    tax_code: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")] | None = None
    allow_backorder: Annotated[bool, Field(strict=True)] = False
    attributes: ProductAttributes = Field(default_factory=dict, description=_ATTRIBUTES_DESCRIPTION)


class Product(ProductInput):
    # What the API answers (Shown): every field, an unset one as null; ProductInput's stay optional.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    name: StoredText
    attributes: StoredProductAttributes = Field(default_factory=dict, description=_ATTRIBUTES_DESCRIPTION)
    sku: Identifier
    updated_at: datetime


class LocationInput(Strict):
    name: Text
    type: Literal["warehouse", "store"]
    address: AddressInput
    latitude: Latitude
    longitude: Longitude
    ships: Annotated[bool, Field(strict=True)] = True
    pickup: Annotated[bool, Field(strict=True)] = False


class Location(LocationInput):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # as Product's

    name: StoredText
    address: Address
    location_id: Identifier
    updated_at: datetime


# --- Inventory -----------------------------------------------------------------------------


# The most units one (sku, location) holds: what a stock take may count, and what an adjustment or
# a purchase-order receipt may take on_hand to (refused past it, in the same conditional write).
MAX_ON_HAND = 1_000_000_000


class StockCount(Strict):
    on_hand: Annotated[int, Field(ge=0, le=MAX_ON_HAND, strict=True)]


class StockAdjustment(Strict):
    delta: Annotated[
        int, Field(ge=-1_000_000_000, le=1_000_000_000, strict=True, json_schema_extra={"not": {"const": 0}})
    ]
    reason: Text

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("delta must not be zero")
        return value


class ReorderSettings(Shown):
    """A (sku, location)'s reorder point (issue 15): when `available`, plus the units on open
    purchase orders not yet received, drops below `reorder_point`, a draft purchase order for
    `reorder_quantity` is made for `vendor_id`, its line priced at `unit_cost` when given."""

    reorder_point: int
    reorder_quantity: int
    vendor_id: str
    unit_cost: Money | None = None


# Its vendor and unit cost are purchasing's, which purchasing:write guards.
REORDER_SHOWN = "The reorder point, shown to keys with purchasing:write; null when none is set, and to other keys"


class StockLevel(Shown):
    """One (sku, location) record. available = on_hand - reserved, kept in the same write."""

    sku: str
    location_id: str
    on_hand: int
    reserved: int
    available: int
    updated_at: datetime | None = None
    incoming: int = 0  # units on open purchase orders to this location, not yet received
    next_expected_at: datetime | None = None  # the earliest such purchase order's expected_at
    # The reorder point set on it, if any. An answer shows it to a key that may set it (functions.api.routes.inventory).
    reorder: ReorderSettings | None = Field(default=None, description=REORDER_SHOWN)

    def as_shown(self) -> "StockLevel":
        """The level as every answer shows it: `available` never negative. The stored one is below
        zero while a stock take recorded under the reserved units waits for its rejects to release
        them (core.services.InventoryService.count), so that no order reserves those units first."""
        return self if self.available >= 0 else self.model_copy(update={"available": 0})


class LocationStock(Shown):
    location_id: str
    on_hand: int
    reserved: int
    available: int
    incoming: int = 0
    next_expected_at: datetime | None = None
    reorder: ReorderSettings | None = Field(default=None, description=REORDER_SHOWN)


class InventorySummary(Shown):
    sku: str
    available: int
    locations: list[LocationStock]


# --- Orders: what a client sends ------------------------------------------------------------


class Customer(SharedPart, Strict):
    """The customer an order is for, as stored. What is stored is a Customer, whichever input model
    (CustomerInput) it was sent as."""

    # Every answer shows `name`, null when none was given (as Shown); CustomerInput's stays optional.
    model_config = ConfigDict(
        extra="forbid", revalidate_instances="subclass-instances", json_schema_serialization_defaults_required=True
    )

    id: Identifier
    email: StoredEmail
    name: StoredText | None = None


class CustomerInput(Customer):
    """The customer as a client sends it (an order, an import line): what a customer stored before
    may hold (an invisible character) is refused."""

    email: Email
    name: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _judged_again(cls, data: Any) -> Any:
        # The stored order's customer, on the command of an edit or an exchange's replacement.
        return data.model_dump() if isinstance(data, Customer) and not isinstance(data, cls) else data


class LineInput(Strict):
    sku: Identifier
    quantity: Annotated[int, Field(ge=1, le=10_000, strict=True)]


class Fulfillment(SharedPart, Strict):
    """How the order is fulfilled: shipped (`type` ship, `location_id` null) or collected at the
    store `location_id` names (`type` pickup)."""

    # What is stored and answered is a Fulfillment, whichever input model (FulfillmentInput) it was
    # sent as: every answer shows both fields (Shown), a request's FulfillmentInput leaves them optional.
    model_config = ConfigDict(
        extra="forbid", revalidate_instances="subclass-instances", json_schema_serialization_defaults_required=True
    )

    type: Literal["ship", "pickup"] = "ship"
    location_id: Identifier | None = None


class FulfillmentInput(Fulfillment):
    """How the order is to be fulfilled, as a client sends it: shipped (`type` ship, the default;
    no `location_id`) or collected at a store (`type` pickup, `location_id` a location that offers
    pickup)."""

    type: Annotated[Literal["ship", "pickup"], null_as_left_out(lambda: "ship")] = "ship"

    @model_validator(mode="before")
    @classmethod
    def _judged_again(cls, data: Any) -> Any:
        # The stored order's fulfillment, on the command of an edit, a cancel of units or an exchange.
        return data.model_dump() if isinstance(data, Fulfillment) and not isinstance(data, cls) else data


def _shipped() -> FulfillmentInput:
    """The fulfillment of an order that names none: its defaults, which need no validation."""
    return FulfillmentInput.model_construct()


# What a client names as `payment.method`, and so what a payment plugin may take
# (oms_payment_methods: a plugin naming another is refused when it loads, core.plugin_manager).
PAYMENT_METHOD = re.compile(r"[a-z0-9_]{1,32}")
PaymentMethod = Annotated[str, StringConstraints(pattern=rf"^{PAYMENT_METHOD.pattern}$")]


class PaymentInput(Strict):
    method: PaymentMethod
    # A gateway's token (tok_..., pm_..., a nonce): printable ASCII without spaces. Blank, a control
    # character or a space is refused here (422) rather than taken and refused by the gateway later
    # as payment_failed.
    token: Annotated[
        str,
        StringConstraints(pattern=r"^[!-~]{1,256}$"),
        Field(description="The payment gateway's token: 1 to 256 printable ASCII characters, no spaces."),
    ]


ShippingMethod = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
# Codes match case-insensitively: upper-cased before the pattern is checked.
PromoCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9_-]{1,32}$"),
    BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v),
]


class PlaceOrder(Strict):
    """The body of POST /orders: the command to capture one order. Its repr names the order (channel,
    external id, currency, method, codes) without the customer, lines, address or payment: powertools
    formats the route's arguments into a debug line on every request, whatever the log level (3 %
    of our CPU per order, growing with the lines), and a repr in a log or a traceback should show no
    customer's personal data or payment token."""

    channel: Channel
    external_id: Identifier | None = None
    currency: Currency
    customer: CustomerInput = Field(repr=False)
    lines: Annotated[
        list[LineInput],
        Field(
            repr=False,
            min_length=1,
            max_length=100,
            description="Lines of the same sku stay separate lines (L1, L2, ... in the order sent) but are "
            "priced as one: the unit price is asked for their summed quantity, and the discount and tax of "
            "that one line are shared out to them in proportion to their subtotals, so splitting a sku over "
            "many lines cannot change a total by rounding.",
        ),
    ]
    shipping_address: AddressInput = Field(repr=False)
    fulfillment: Annotated[FulfillmentInput, null_as_left_out(_shipped)] = Field(default_factory=_shipped, repr=False)
    shipping_method: ShippingMethod | None = None
    promo_codes: Annotated[
        list[PromoCode],
        Field(
            max_length=10,
            description="At most one percent-off code applies to an order unless its promotion says it "
            "stacks; two that do not stack and both apply are 422 promo_codes_do_not_stack.",
        ),
        null_as_left_out(empty_list),
    ] = Field(default_factory=empty_list)
    payment: PaymentInput = Field(repr=False)


# --- Orders: what the OMS keeps -------------------------------------------------------------


class LineTaxRate(BaseModel, defer_build=True):
    """The tax rate a plugin applied to a line (its `TaxRate` answer), kept so an invoice can
    print what was charged and why."""

    rate: Decimal = Field(ge=0, le=1, description='A decimal string from "0" to "1", e.g. "0.0725"')
    name: str = Field(min_length=1, max_length=100, description='What an invoice prints, e.g. "US-CA standard"')

    @field_serializer("rate", when_used="json")
    def _plain_rate(self, rate: Decimal):
        # Written out in full: str() of a plugin's Decimal can be "1E-7", "0E-9" or "-0". No return
        # annotation, so the published schema stays the field's (a string with a decimal pattern).
        return format(rate.copy_abs(), "f")


class PromotionGrant(BaseModel, defer_build=True):
    """What one of an order's promo codes, or one of a plugin's own rules (a discount no code asks
    for, `code` its rule's name), granted it when it was placed (a plugin's Discount, named by sku
    instead of the draft's line id): kept so that the order keeps the promotion's terms should the
    code later leave every plugin or change (a promotion ended or changed while the order was open),
    and a rule's unless the plugins apply it otherwise to the units left (Pricing._lapsed). `sku`
    set: `amount` off `quantity` units of that sku; `sku` None: `amount` off the order
    (None with `free_shipping`)."""

    model_config = ConfigDict(frozen=True)

    code: str
    sku: str | None = None
    quantity: int | None = None
    amount: Money | None = None
    free_shipping: bool = False


# An order line's id: `L` and its number (core.pricing numbers them, Order.next_line_number).
_LINE_NUMBER = re.compile(r"L([0-9]+)")
# An order is one DynamoDB item (400 KB at most) and the lines its edits replace stay on it
# (Order.replaced_lines) until its sourcing clears them (ReserveStock's write) or it is cancelled:
# while its workflow does not run (pending, or held, a hold the edit itself puts on included) each
# edit of its lines adds every one it has (~260 bytes stored for 100 lines), and ~1,400 edits
# would pass 400 KB, after which every write to it fails. They cannot be trimmed instead: until the
# sourcing reads them, a line replaced may hold units (a ReserveStock that was running when the
# order was held or edited reserves under it), which nothing else would then give back. The order
# keeps 64 KiB of them as JSON (an upper bound of what they store: 423 of a random 128-character
# sku, the largest order beside them, store 48 KB; 1,900 of a 7-character sku, 20 edits of 100
# lines, 6.5 KB): an edit of its lines that would keep more is 409 `too_many_edits`
# (Order.check_room_to_replace_lines; tests/unit/test_aws_limits_order_item.py).
MAX_REPLACED_LINE_BYTES = 64 * 1024
# The authorizations edits that grew the total (or renewals) replaced stay on the order
# (Order.replaced_authorizations) until the gateway voids them: each a hold on the customer's card,
# and each asked to be voided again by every later edit, the last parcel's ship, a cancel and the
# reconciler. A gateway that refuses voids (or is down for them) left one more for each edit that
# grew the total, without bound. The order keeps MAX_REPLACED_AUTHORIZATIONS of them (references
# of up to 200 characters: 2 KB at most); an edit that would replace another is 409
# `too_many_authorizations` (Order.check_room_to_reauthorize), before the gateway is asked.
MAX_REPLACED_AUTHORIZATIONS = 10
# The carrier bookings an order's changes gave up stay on it (Order.bookings_to_cancel) until its
# carrier cancels them, one failing (its cancel down) being asked again by every later change and
# the reconciler. Each edit of an allocated order gives up its parcels' bookings and its sourcing
# books new ones: with the carrier's cancel down, ~140 bytes stored an edit of a two-parcel order,
# without bound. An order that owes MAX_BOOKINGS_TO_CANCEL (~200 bytes of JSON each) is not sent
# back to be sourced by an edit: 409 `too_many_bookings_to_cancel` (Order.check_room_to_give_up_bookings).
MAX_BOOKINGS_TO_CANCEL = 50
# A line id as a request names it. Edits number lines after every id the order has had, up to 100
# lines an edit: nine digits would take ten million edits to pass (three, as returns took, ten).
LineId = Annotated[str, StringConstraints(pattern=r"^L[1-9][0-9]{0,8}$")]


class OrderLine(Shown):
    line_id: str
    sku: str
    quantity: int
    unit_price: Money
    discount: Money
    tax: Money
    # None: no tax plugin answered, so the line is untaxed (unlike a zero rate, which is a rate).
    tax_rate: LineTaxRate | None = None
    total: Money
    # Units cancelled before they shipped (quantity has dropped by as many), and units that left in
    # a shipment: plain fields, kept by the methods that change them.
    cancelled_quantity: int = 0
    shipped_quantity: int = 0
    # Units received back on returns.
    returned_quantity: int = 0


class Totals(BaseModel, defer_build=True):
    subtotal: Money
    discount: Money
    shipping: Money
    tax: Money
    grand_total: Money


# What a refund gives back for: goodwill (an appeasement), a return, or units cancelled after
# their share was captured (settling the payment to a lower total).
RefundKind = Literal["appeasement", "return", "cancellation"]


class RefundedUnits(SharedPart, BaseModel, defer_build=True, json_schema_serialization_defaults_required=True):
    """Units of one line that a return's refund gave back, and what they were worth then: their
    share of the line's total as the line was priced when the refund was decided. A later return
    of the line gives back what its units add to that, so that a line priced again in between
    (units of it cancelled) is refunded its new total, not its old units' shares and the new
    ones'; what was given beyond a new total is settled by the cancel (core.unit_cancellation)."""

    line_id: str
    quantity: int
    amount: Money
    # Their place among the line's units: how many of them earlier returns had refunded, or were
    # refunding, when these were priced (core.refunds.units_refunded). A return whose refund gave
    # nothing for its units (a fee took all of it) records none, so the units recorded are not
    # always the line's first: what they are worth now is read at their place
    # (core.refunds.refunded_short_of_lines). None on shares recorded before it was kept.
    before: int | None = Field(
        default=None,
        description="How many units of the line earlier returns had refunded when these were priced (their place "
        "among its units); null on refunds recorded before it was kept",
    )


class RefundPart(Shown):
    """One gateway refund of a refund that gives back captures made under more than one of the
    order's authorizations (PaymentRefund.parts): asked against its own authorization under its
    own key (core/payment_keys.py), and recorded as the gateway answered it."""

    authorization: str
    amount: Money
    status: RefundStatus = RefundStatus.PENDING
    reference: str | None = None  # the gateway's, once it approved
    message: str | None = None  # why it was not made, once it was refused

    def approved(self, reference: str) -> "RefundPart":
        return _replaced(self, status=RefundStatus.SUCCEEDED, reference=reference)

    def refused(self, message: str) -> "RefundPart":
        return _replaced(self, status=RefundStatus.FAILED, message=message[:500])


class PaymentRefund(Shown):
    """One refund of the order, under an id derived from its idempotency key. It is written
    `pending` before the gateway is asked (so two refunds cannot both take the last of what was
    captured), then `succeeded` once the gateway approved it or `failed` when it refused; only a
    succeeded refund counts in `Payment.refunded` (and of one split in `parts`, each part the
    gateway approved)."""

    id: str
    amount: Money
    reason: Annotated[str, VisibleText]
    status: RefundStatus = RefundStatus.SUCCEEDED
    kind: RefundKind = "appeasement"
    return_id: str | None = None
    reference: str | None = None  # the gateway's, once it answered
    message: str | None = None  # why the gateway refused a failed one
    at: datetime  # created
    lines: list[RefundedUnits] | None = Field(
        default=None,
        description="A return's refund: what it gave back for the units of each line (null for any other refund)",
    )
    shipping: Money | None = Field(
        default=None,
        description="A return's refund: the order's shipping it gives back, with what of it the refund "
        "keeps back or its fee takes (null when none is)",
    )
    kept_back: Money | None = Field(
        default=None,
        description="A return's refund: what of the return's worth it could not give back, captured "
        "minus refunded falling short of it (null when nothing was); refunded once a later parcel's "
        "capture makes it refundable",
    )
    authorization: str | None = Field(
        default=None,
        description="The authorization whose captures it gives back, when not the payment's own "
        "(null: payment.authorization, or each of its parts names its own)",
    )
    parts: list[RefundPart] | None = Field(
        default=None,
        description="A refund of captures made under more than one authorization: one gateway refund "
        "per authorization (null for any other refund)",
    )
    over_capture: Money | None = Field(
        default=None,
        description="An appeasement made while the payment held more than the order costs (units "
        "cancelled after their share was captured, the refund of it refused until left to a person: "
        "core.refunds.left_to_a_person): what of it gives that back, which the settlement counts as "
        "given back (null: none of it, or any other refund)",
    )


# What the reason of the refund of the credit an exchange's replacement did not use
# (ExchangeCredits.give_back) says, on the original and on each order up the chain it drew from.
CREDIT_NOT_USED = "did not use its credit"
# A `sourced_again` entry's reason when units the order recorded as reserved were no longer held for
# it (Order.source_again_lost); the business metrics count it (ReservationsLost).
RESERVATIONS_LOST = "reservations_lost"
# A `carrier_booking_not_cancelled` entry's reason when the carrier refused the cancel (its plugin
# answered False): the business metrics count it (CarrierBookingsNotCancelled).
CARRIER_WILL_NOT_CANCEL = "the carrier will not cancel it"
# The reason of the `payment_authorized` entry of an order that owes nothing: no gateway was asked.
NOTHING_TO_AUTHORIZE = "nothing to pay: no authorization needed"
# ... and of the `payment_voided` entry that cancels it.
NOTHING_TO_VOID = "nothing to pay: nothing was authorized at the gateway"


def draws_on_credit(refund: PaymentRefund) -> bool:
    """Whether `refund`, one of an exchange's return, counts against the exchange's credit: any the
    gateway did not refuse, and a refused give-back of what a replacement did not use. That one is
    left to a person, as any refused refund is: nothing asks it again, and the credit's hold no
    longer keeps its amount from the appeasement that gives it back (Order.refundable)."""
    return refund.status != RefundStatus.FAILED or CREDIT_NOT_USED in refund.reason


def drawn_on_credit(refund: PaymentRefund) -> Money:
    """What `refund`, one of an exchange's return, took of the exchange's credit: its amount when it
    counts against it (draws_on_credit), else what the parts of it the gateway approved before it
    refused one gave back (Payment.with_failed_refund): that money did go back."""
    if draws_on_credit(refund):
        return refund.amount
    went = [part.amount for part in refund.parts or [] if part.status == RefundStatus.SUCCEEDED]
    return sum(went, Money.zero(refund.amount.currency))


class Payment(BaseModel):
    """What the gateway approved for the order. Its amounts and status change only in the write
    that follows the gateway's approval of the operation that moves them."""

    # A Payment handed to a new Order version is validated again, so no status escapes the enum.
    model_config = ConfigDict(
        revalidate_instances="always", defer_build=True, json_schema_serialization_defaults_required=True
    )

    method: str
    status: PaymentStatus = PaymentStatus.PENDING
    authorized: Money
    captured: Money
    refunded: Money
    # The gateway's reference for the authorization: what captures, voids and refunds name.
    authorization: str | None = None
    refunds: list[PaymentRefund] = Field(default_factory=empty_list)

    def refundable(self) -> Money:
        """Captured, less what is refunded or being refunded (a pending refund holds its amount)."""
        left = self.captured - self.refunded
        for refund in self.refunds:
            if refund.status == RefundStatus.PENDING:
                left = left - refund.amount
        return left

    def refund_by_id(self, refund_id: str) -> PaymentRefund | None:
        return next((r for r in self.refunds if r.id == refund_id), None)

    def authorized_for(self, amount: Money, reference: str | None) -> "Payment":
        return _replaced(self, status=PaymentStatus.AUTHORIZED, authorized=amount, authorization=reference)

    def with_capture(self, amount: Money, grand_total: Money) -> "Payment":
        if amount.amount == 0 and self.status is PaymentStatus.REFUNDED:
            # A parcel with nothing left to capture (an exchange's credit paid for it) leaving after
            # what was captured went back on a return: all it took is given back still.
            return self
        captured = self.captured + amount
        if self.refunded.amount > 0:
            status = PaymentStatus.PARTIALLY_REFUNDED
        elif grand_total <= captured:
            status = PaymentStatus.CAPTURED
        elif captured.amount > 0:
            status = PaymentStatus.PARTIALLY_CAPTURED
        else:
            status = self.status
        return _replaced(self, captured=captured, status=status)

    def voided(self) -> "Payment":
        return _replaced(self, status=PaymentStatus.VOIDED)

    def declined(self) -> "Payment":
        return _replaced(self, status=PaymentStatus.DECLINED)

    def with_pending_refund(self, refund: PaymentRefund) -> "Payment":
        return _replaced(self, refunds=[*self.refunds, refund])

    def with_refund(
        self, refund_id: str, reference: str, everything_captured: bool, parts: list[RefundPart] | None = None
    ) -> "Payment":
        """The pending refund `refund_id` succeeded (split, every one of its `parts`, as answered):
        it counts in `refunded` from now on."""
        refund = self._pending(refund_id)
        return self._refunded_by(refund.amount, everything_captured, refund_id, status=RefundStatus.SUCCEEDED,
                                 reference=reference, **({"parts": parts} if parts else {}))  # fmt: skip

    def with_failed_refund(
        self, refund_id: str, reference: str | None, message: str, parts: list[RefundPart] | None = None
    ) -> "Payment":
        """The pending refund `refund_id` was refused: kept, failed, never counted; but split, its
        `parts` (as answered) that the gateway approved before one was refused count, as the money
        they gave back did go back."""
        self._pending(refund_id)
        changes: dict[str, Any] = {"status": RefundStatus.FAILED, "reference": reference, "message": message[:500]}
        if not parts:
            return _replaced(self, refunds=[_replaced(r, **changes) if r.id == refund_id else r for r in self.refunds])
        went = sum((p.amount for p in parts if p.status == RefundStatus.SUCCEEDED), Money.zero(self.refunded.currency))
        if went.amount == 0:
            changes["parts"] = parts
            return _replaced(self, refunds=[_replaced(r, **changes) if r.id == refund_id else r for r in self.refunds])
        return self._refunded_by(went, False, refund_id, **changes, parts=parts)

    def _refunded_by(self, amount: Money, everything_captured: bool, refund_id: str, **changes: Any) -> "Payment":
        refunded = self.refunded + amount
        fully = everything_captured and refunded == self.captured
        return _replaced(
            self,
            refunded=refunded,
            refunds=[_replaced(r, **changes) if r.id == refund_id else r for r in self.refunds],
            status=PaymentStatus.REFUNDED if fully else PaymentStatus.PARTIALLY_REFUNDED,
        )

    def _pending(self, refund_id: str) -> PaymentRefund:
        refund = self.refund_by_id(refund_id)
        if refund is None or refund.status != RefundStatus.PENDING:
            raise InvalidTransition(f"refund {refund_id} is not pending")
        return refund


class Allocation(BaseModel, defer_build=True):
    line_id: str
    location_id: str
    quantity: int


class ReplacedLine(BaseModel, defer_build=True):
    """A line an edit replaced, by what its reservations are keyed by: its id and its sku (a line
    id the edit gave another sku holds that sku's units no more)."""

    line_id: str
    sku: str


class ShipmentLine(BaseModel, defer_build=True):
    line_id: str
    quantity: int


# The carrier of a pickup parcel's pick slip, made by the OMS itself (core.pick_slips): no carrier's
# booking, so nothing is owed a cancel when the parcel is given up.
PICK_SLIP_CARRIER = "OMS"


def is_pick_slip(carrier: str | None) -> bool:
    """Whether a shipment (or a booking) of this `carrier` is a pick slip: no carrier's booking."""
    return carrier == PICK_SLIP_CARRIER


class Shipment(BaseModel):
    model_config = ConfigDict(
        revalidate_instances="always", defer_build=True, json_schema_serialization_defaults_required=True
    )

    id: str
    location_id: str
    lines: list[ShipmentLine]
    carrier: str
    service: str
    tracking_number: str | None = None
    # Stored: the label's key in the label store. The API shows a link signed at each read in its
    # place (a stored link would expire), under the contract's name.
    label_url: str | None = None
    status: ShipmentStatus = ShipmentStatus.PENDING
    shipped_at: datetime | None = None
    delivered_at: datetime | None = None
    # A pickup: when the store readied it, and until when it waits to be collected.
    ready_at: datetime | None = None
    collect_by: datetime | None = None
    # The share of the payment captured when this shipment shipped (a pickup: when collected).
    captured: Money | None = None

    @property
    def handed_over_at(self) -> datetime | None:
        """When the parcel left its location: shipped, or collected (a pickup is never shipped)."""
        return self.shipped_at or self.delivered_at


class CaptureRequest(BaseModel, defer_build=True):
    """A capture asked of the gateway and not recorded yet: a shipment's share
    (Order.request_capture), or with no shipment the settlement of a total that cancelled units left
    higher than the captures (Order.request_settlement_capture). A ship, collect or settlement that
    died between the gateway's answer and its own write leaves it on the order, so that capture is
    never lost. Its gateway key derives from the shipment, or for the settlement from what was
    captured before it (core/payment_keys.py)."""

    # None: the settlement.
    shipment_id: str | None = None
    amount: Money
    # Taken back from the ship (Order.withdraw_capture_request): the order is about to change, so
    # the ship may no longer record it; the capture, if made, is refunded.
    withdrawn: bool = False
    # The authorization it is asked under (the order's when it was requested): asked again, given
    # back or recorded, it is under that one, even if a renewal for another parcel replaced it
    # meanwhile (Order.capture_authorization). None: stored before it existed (the order's, which
    # a renewal that replaces it names here: Order.renew_authorization).
    authorization: str | None = None


class AuthorizationRequest(BaseModel, defer_build=True):
    """An authorization of an edit's grown total asked of the gateway and not recorded yet
    (Order.request_reauthorization): an edit that died between the gateway's answer and its own
    write leaves it on the order, so that authorization (a hold on the customer's card) is never
    left behind: the edit repeated with the same If-Match records it, and anything else that
    finds it voids it first (core.cancellation.Cancellation.void_requested_authorization)."""

    # The version the edit was asked to change (its If-Match); the request is the next version.
    edit_of: int
    amount: Money
    # Taken back from its edit (Order.withdraw_reauthorization): the edit may no longer record it,
    # and the authorization, if made, is voided.
    withdrawn: bool = False

    @property
    def authorizes_version(self) -> int:
        """The version its edit writes: what keys the authorization (core/payment_keys.py)."""
        return self.edit_of + 2


class EarlierCaptures(BaseModel, defer_build=True):
    """What was captured under an authorization the order's current one replaced (Order.earlier_captures)."""

    authorization: str
    captured: Money
    # The shipments whose captures it holds (the rest of `captured`: settlement captures).
    shipments: list[str] = Field(default_factory=empty_list)


class GivenUpBooking(BaseModel, defer_build=True):
    """A carrier booking no parcel will use: a pending shipment's, given up when its order was
    cancelled, when the shipment went (all its units cancelled, or the order sent back to be
    sourced by an edit or a reject) or when it was booked again (Order.relabel). It is owed a
    cancel with its carrier (core.carrier_bookings), or the merchant pays for a label never used.
    `carrier` and `tracking_number` are None for a booking only maybe made: asked for under its key
    by a CreateShipments that died before it heard the answer (Order.park), or a return label's
    whose answer was lost. A return label's booking (core.returns: one no return uses, or an
    expired return's) names its return's id (`rma_...`) as `shipment_id`."""

    shipment_id: str
    carrier: str | None = None
    tracking_number: str | None = None
    booking_key: str


class StepPluginFailure(BaseModel, defer_build=True):
    """A workflow step's last failure in a plugin (a PluginError naming its plugin and hook), noted
    by the step that met it (Workflow.note_plugin_failure): Step Functions' Retry hands the next
    attempt nothing of the error before it, so an execution whose retries ran out of time names it,
    in the note of the hold that parks the order, from here. `message` is the OMS's own words about
    it (the plugin, the hook, the exception's type or what was wrong with the answer), never the
    plugin's."""

    plugin: str
    hook: str
    message: str
    at: datetime


HoldReason = Literal["fraud_review", "payment_review", "address_review", "customer_request", "other"]


class ReleaseSent(BaseModel, defer_build=True):
    """A person's release as sent: by whom (their API key's id) and with what note."""

    actor: str
    note: str | None = None


class ReportedDelivery(BaseModel, defer_build=True):
    """A carrier's report that the pending parcel of `shipment_id` arrived, its ship having died
    after asking for its capture (Order.report_delivered): proof it left, by `at` (the carrier's
    time when it gave one the OMS could believe, else when the OMS heard)."""

    shipment_id: str
    at: datetime
    # The gateway refused the capture of the ship the report made (`delivery_not_recorded`): the
    # money will not come through the OMS, so a person's cancel of the parcel's units writes it off
    # (Order.parcels_written_off). Stored only when True.
    refused: bool = False
    # The reconciler's kept-back pass met the gateway's refusal of its capture (Order.give_up_reported):
    # it asks no more, left to a person (DeliveriesNotRecordedAlarm) or the carrier's next report.
    # Stored only when set.
    given_up: bool = False


class DeliveryScan(BaseModel, defer_build=True):
    """A carrier's scan of a parcel delivered while it was still pending, nobody having confirmed
    its ship (Order.keep_delivery_scan): kept, so the ship that confirms the hand-over records it
    delivered at once, `at` (the carrier's time when the OMS could believe it, else when it heard).
    Nothing is captured on the carrier's word: only that ship captures, as the contract says. For
    the booking it was scanned under (`booking_key`): a parcel sourced or booked again is another
    parcel, and the scan goes with the one it named."""

    shipment_id: str
    booking_key: str
    at: datetime


class Hold(Shown):
    """Why an order is on hold and since when. `resume_to`, the status a release returns it to,
    is the system's own: stored with the order (Order.stored_json) but not part of the contract's
    `hold: {reason, note, since}`, so no response shows it."""

    reason: HoldReason
    note: Annotated[str, VisibleText] | None = None
    since: datetime
    # Always stored; None only in an Order read back from a response (POST /orders re-validates
    # its own answer, an Idempotency-Key replays it), which is never written or released.
    resume_to: OrderStatus | None = Field(default=None, exclude=True)
    # When the order entered `resume_to` before the hold stopped it (its deadline's start, OMS_SLA):
    # a release resumes that clock where the hold stopped it, the time held added (nothing of a held
    # order moves on, so the time held counts against no deadline of the status it resumes), as a
    # pickup's customer gets the time held back (Order.pickups_after_hold). The system's own like
    # `resume_to`; None when the status it resumes to was not the one held from (a held order sent
    # back to be sourced resumes to `authorized`, its clock starting at the release) and on holds
    # stored before it was kept.
    resume_since: datetime | None = Field(default=None, exclude=True)
    # The `since` of the late mark of `resume_to` the hold cleared (Order.jeopardy), or of the
    # lateness a release resumed that the order carried unmarked (Order.late_resumed): a release
    # that resumes the clock resumes that lateness too, moved by the time held as the clock is
    # (Order.late_resumed), so its customer is not told of it twice. Kept with `resume_since`
    # only; the system's own, stored on those holds only.
    resume_late: datetime | None = Field(default=None, exclude=True)
    # `resume_late` is the lateness a release resumed (Order.late_resumed, marked again or not),
    # moved by the time held, not a mark's own `since`: a 'delayed' made before it may tell it,
    # though it is later than that notification (core.notifications.outdated). Stored when True.
    resume_late_resumed: bool = Field(default=False, exclude=True)
    # A hold the system put on for a person after an infrastructure failure, so no hold expiry
    # cancels it (Order.hold_expiry_counts_from): a park (Order.park, the workflow's failure path),
    # or an order whose ship died after its capture, held to confirm whether the parcel left
    # (Order.hold_unfinished_ships: a cancel would put units that may have left back on sale). The
    # system's own like `resume_to`; stored on those only (a merchant's hold of reason `other`
    # may carry any note, so nothing else tells them apart).
    parked: bool = Field(default=False, exclude=True)
    # A person's hold made a park because ships of these shipments died after asking for their
    # captures (Order.park_for_unfinished_ships): the system's hold for those parcels stands behind
    # it, shown by the history alone, so the person's release ends their hold only and the order
    # stays held for a person to confirm the parcels (Order.release). Stored on those holds only.
    ships_to_confirm: list[str] = Field(default_factory=empty_list, exclude=True)
    # The system's hold for those parcels that a person's release of their hold made a park left
    # standing (Order.release): who released and with what note, so the same release sent again (a
    # client's blind retry, whatever its Idempotency-Key) is known for a repeat and confirms no
    # parcel nobody looked at (Order.repeats_release). Stored on those holds only.
    left_by_release: ReleaseSent | None = Field(default=None, exclude=True)
    # The system's own hold for a person to confirm whether the parcels of these shipments left
    # (Order.hold_unfinished_ships, and the one a person's release of their hold made a park leaves:
    # Order.release), so the jeopardy scan counts the parcels waiting for a person (Order.
    # ships_to_confirm_since) until a person releases it or the order is cancelled. Stored on those
    # holds only.
    confirms_ships: list[str] = Field(default_factory=empty_list, exclude=True)

    def resumed_since(self, at: datetime) -> datetime | None:
        """When the order entered `resume_to` as a release at `at` resumes its clock: `resume_since`
        moved on by the time held (never past `at`); None when the hold keeps none."""
        if self.resume_since is None:
            return None
        return min(self.resume_since + max(at - self.since, timedelta(0)), at)

    def resumed_late(self, at: datetime) -> datetime | None:
        """The `since` of the lateness a release at `at` resumes (`resume_late` moved on by the time
        held, as `resumed_since` moves the clock); None when the hold keeps none."""
        if self.resume_late is None or self.resume_since is None:
            return None
        return self.resume_late + max(at - self.since, timedelta(0))


# How long the same release sent again is taken for a retry of the one before (Order.repeats_release):
# as long as an Idempotency-Key is honoured (API.md).
RELEASE_RETRY_WINDOW = timedelta(hours=24)

# The least time a released order's customer has to collect a pickup whose deadline its hold took
# time from (Order.pickups_after_hold): told the new deadline only at the release, one with the
# minutes they had left when the hold began could not come in time. Never more than the wait the
# store gave them when it readied the pickup.
PICKUP_AFTER_RELEASE = timedelta(hours=24)


class Jeopardy(BaseModel, defer_build=True):
    """An order past its deadline for its current status (OMS_SLA): since when it is late, and
    why. Cleared when the order leaves that status."""

    reason: str
    status: OrderStatus
    since: datetime


class AwaitingLine(BaseModel, defer_build=True):
    """A line of a backordered order still short of units, and when more of its sku is expected."""

    line_id: str
    sku: str
    waiting_quantity: int = Field(description="Units of the line not reserved yet")
    expected_at: datetime | None = Field(
        description="The earliest `expected_at` of an open purchase order bringing the sku to a location "
        "the order may be supplied from; null when none is incoming. A date, not a promise: older "
        "orders waiting for the sku are served first"
    )


class AwaitingStock(BaseModel, defer_build=True):
    """What a backordered order waits for. Computed when the order is read (from the stock items'
    expected dates), never stored: it would go stale whenever a purchase order moved."""

    lines: list[AwaitingLine]


class ReviewRequest(BaseModel):
    """A review rule's answer (hook oms_review_order): hold the new order for a person, and why."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    reason: HoldReason
    note: str | None = Field(default=None, max_length=500)

    # A person's note is refused (422: they can send it again); a rule's is made safe instead, since
    # refusing it would fail the capture, or the edit, of the very order the rule asked to hold.
    _safe_note = field_validator("note")(_made_visible)


# The most review requests a hold's history entry keeps: it is in the order's one DynamoDB item (at
# most 400 KB), and a rule asking thousands of times would otherwise fail every capture.
MAX_REVIEW_REQUESTS = 10


def review_detail(requests: list[ReviewRequest]) -> dict[str, Any]:
    """What a hold's history entry keeps of the review rules' `requests`: the first
    MAX_REVIEW_REQUESTS, and how many more there were (`requests_not_kept`) when there were."""
    detail: dict[str, Any] = {
        "requests": [request.model_dump(exclude_none=True) for request in requests[:MAX_REVIEW_REQUESTS]]
    }
    if len(requests) > MAX_REVIEW_REQUESTS:
        detail["requests_not_kept"] = len(requests) - MAX_REVIEW_REQUESTS
    return detail


class HistoryEntry(Shown):
    at: datetime
    type: OrderEvent
    from_status: OrderStatus | None = None
    to_status: OrderStatus | None = None
    actor: str
    detail: Annotated[dict | None, AfterValidator(_visible_detail)] = None


M = TypeVar("M", bound=BaseModel)


def _rules_named(version: int | None) -> dict[str, int]:
    """The history detail naming the sourcing rules version an allocation used."""
    return {} if version is None else {"sourcing_rules_version": version}


def _replaced(model: M, **changes: Any) -> M:
    """`model` with `changes`, validated like a new one (model_copy would skip validation)."""
    return type(model).model_validate({**dict(model), **changes})


# How the jeopardy scan's reason ends when it marks an order late for a capture request standing
# whose refund the gateway refused (core/jeopardy.py; Order.jeopardy_for_refund).
REFUND_REFUSED_REASON = "; the gateway refused to refund a capture a ship that died took: a person settles it"


def _marks_settled(new: "Order") -> "Order":
    """`new` once no capture request stands on it (the capture refunded, or found never made) or
    the mark went, with the jeopardy scan's mark for a refused refund (Order.jeopardy_for_refund)
    settled: a partly shipped order's stored by the partly shipped pass goes (marked for the refund
    alone, while that status had no deadline by default); one made by a pass of its status's own
    deadline (Order.jeopardy_on_deadline: every mark the scan makes now), late all the same, keeps
    its mark and its `since` (no second order.jeopardy event, no second notice to the customer)
    with the plain reason. As it is otherwise. Order._next and
    Order._bookkeeping make each version through here."""
    if not new.jeopardy_for_refund or (new.jeopardy is not None and new.captures_requested):
        return new
    late = new.jeopardy
    settled = {"jeopardy_for_refund": False, "jeopardy_on_deadline": False}
    if late is None or (late.status is OrderStatus.PARTIALLY_SHIPPED and not new.jeopardy_on_deadline):
        return _replaced(new, jeopardy=None, **settled)
    plain = _replaced(late, reason=late.reason.removesuffix(REFUND_REFUSED_REASON))
    return _replaced(new, jeopardy=plain, **settled)


def same_tracking_number(one: str | None, other: str | None) -> bool:
    """Whether two tracking numbers are the same parcel's: carriers' numbers are case-insensitive
    ("1z999aa10123456784" is "1Z999AA10123456784") and are written with spaces or without
    ("9400 1000 0000 0000 0000 00"), so they are compared without either."""
    if one is None or other is None:
        return one is other
    return "".join(one.split()).casefold() == "".join(other.split()).casefold()


def tracking_number_named(history: list[HistoryEntry], shipment_id: str, recorded: str | None) -> bool:
    """Whether the parcel of `shipment_id`, its tracking number `recorded`, has a number a location
    named (its ship named one, or a later ship set or confirmed it: Order.set_tracking_number,
    OrderActions._numbered_as_asked), by its order's `history`. Not named: the ship named none,
    so the parcel kept the number its carrier booking gave (the last `allocated` or
    `shipment_relabelled` entry naming it), or it has none. A number that is not the booking's, of
    a ship recorded before ships wrote the number they named, was named."""
    booked: str | None = None
    for entry in history:
        detail = entry.detail or {}
        if entry.type is OrderEvent.ALLOCATED:
            booked = next(
                (s.get("tracking_number") for s in detail.get("shipments") or [] if s.get("id") == shipment_id), booked
            )
        elif detail.get("shipment_id") != shipment_id:
            continue
        elif entry.type is OrderEvent.SHIPMENT_RELABELLED:
            booked = detail.get("tracking_number")
        elif entry.type in (OrderEvent.SHIPMENT_TRACKING_NUMBER_SET, OrderEvent.SHIPMENT_TRACKING_NUMBER_CONFIRMED) or (
            entry.type is OrderEvent.SHIPMENT_SHIPPED and detail.get("tracking_number")
        ):
            return True
    return recorded is not None and recorded != booked


def utc_text(moment: datetime) -> str:
    """`moment` as the API writes a time (RFC 3339 in UTC: "2026-11-23T09:30:00Z"), for a history
    entry's detail."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def units_text(count: int) -> str:
    """A count of units as a message says it: "1 unit", "3 units"."""
    return f"{count} unit" if count == 1 else f"{count} units"


def _scans_kept(new: "Order") -> "Order":
    """`new` with only the delivery scans (Order.delivery_scans) of parcels it still holds as they
    were scanned: pending or shipped (its delivery to come), under the booking scanned. One of a
    parcel that went (rejected, sourced again, cancelled) or was booked again is dropped: the ship
    of a new parcel under the same id is not delivered by a scan of the old one."""
    held = {s.id: s.status for s in new.shipments}
    kept = [
        scan for scan in new.delivery_scans
        if held.get(scan.shipment_id) in (ShipmentStatus.PENDING, ShipmentStatus.SHIPPED)
        and new.booking_key_of(scan.shipment_id) == scan.booking_key
    ]  # fmt: skip
    return new if kept == new.delivery_scans else _replaced(new, delivery_scans=kept)


def _later_kept(later: list[str], requests: list[CaptureRequest], new: str) -> list[str]:
    """Order.later_authorizations once `new` replaces the order's authorization: `new`, and of
    `later` only those a standing capture request (of `requests`) is asked under, whose key names
    them (Order.capture_keyed_under). Nothing is asked under another again (a request takes the
    order's current authorization): kept, they would only grow the order by one each renewal."""
    asked = {request.authorization for request in requests}
    return [*(a for a in later if a in asked and a != new), new]


def _bookings_given_up(old: "Order", new: "Order") -> list[GivenUpBooking]:
    """The carrier bookings of `old`'s pending parcels that `new` no longer uses: the order
    cancelled, the shipment gone or cancelled, or booked again (another tracking number or booking
    key). A parcel that left (or was readied for pickup) used its booking, as did one a cancel wrote
    off (Order.written_off: it left with its carrier); but a pickup waiting at its store that an
    edit withdrew (sent back to be sourced, it is booked anew) gave its booking up."""
    if old.status is OrderStatus.CANCELLED:
        return []  # given up when it was cancelled
    after = {shipment.id: shipment for shipment in new.shipments}
    written_off = {shipment.id for shipment in new.written_off()} if new.reported_delivered else set()
    given_up = []
    for shipment in old.shipments:
        withdrawn = shipment.status is ShipmentStatus.READY_FOR_PICKUP and shipment.id not in after
        if (shipment.status is not ShipmentStatus.PENDING and not withdrawn) or not shipment.tracking_number:
            continue
        if is_pick_slip(shipment.carrier):
            continue  # the OMS's own slip, no carrier's booking: nothing to cancel
        if shipment.id in written_off:
            continue
        key = old.booking_key_of(shipment.id)
        kept = after.get(shipment.id)
        if kept is not None and kept.status not in (ShipmentStatus.PENDING, ShipmentStatus.CANCELLED):
            continue
        if (
            kept is not None
            and kept.status is ShipmentStatus.PENDING
            and new.status is not OrderStatus.CANCELLED
            and (kept.carrier, kept.tracking_number, new.booking_key_of(shipment.id))
            == (shipment.carrier, shipment.tracking_number, key)
        ):
            continue
        given_up.append(GivenUpBooking(shipment_id=shipment.id, carrier=shipment.carrier,
                                       tracking_number=shipment.tracking_number, booking_key=key))  # fmt: skip
    return given_up


def _labels_given_up(old: "Order", new: "Order") -> list[GivenUpBooking]:
    """The new labels of `old`'s parcels due one (`labels_due`) that may have been booked and that
    `new` will never ask for again under their key: the request that made a parcel due books it at
    once, and may never have heard the carrier's answer (lost, or the request killed), so a
    booking may exist under that key that nothing records. Once the parcel no longer waits for it
    (it left or was readied, it went, or a change moved the order's key on) it is owed a cancel,
    carrier and tracking number unknown. One `new` uses (relabelled under it) is not. A pickup
    order's parcel is relabelled with a pick slip (core.pick_slips), which books nothing."""
    if old.fulfillment.type == "pickup":
        return []
    given_up = []
    for shipment_id in old.labels_due:
        key = booking_key(shipment_id, old.rebookings)
        if shipment_id in new.labels_due and new.rebookings == old.rebookings:
            continue  # asked for again under the same key
        if any(s.id == shipment_id for s in new.shipments) and new.booking_key_of(shipment_id) == key:
            continue
        given_up.append(GivenUpBooking(shipment_id=shipment_id, booking_key=key))
    return given_up


def _all_delivered(shipments: list[Shipment]) -> bool:
    """Whether every parcel of `shipments` that was to go arrived: one a cancel of units emptied
    (`cancelled`) never goes, and keeps no order from `delivered`."""
    return all(s.status is ShipmentStatus.DELIVERED for s in shipments if s.status is not ShipmentStatus.CANCELLED)


def _shipped_counted(lines: list[OrderLine], shipments: list[Shipment]) -> list[OrderLine]:
    """`lines` with `shipped_quantity` as the shipments that left say (shipped or delivered: a
    pickup waiting at its store has not left, a collected one has)."""
    shipped = _shipped_by_line(lines, shipments)
    return [
        line if line.shipped_quantity == shipped.get(line.line_id, 0)
        else _replaced(line, shipped_quantity=shipped.get(line.line_id, 0))
        for line in lines
    ]  # fmt: skip


def _allocations_less(allocations: list[Allocation], cancelled: dict[str, int]) -> list[Allocation]:
    """`allocations` without the `cancelled` units ({line_id: units}), each line's taken from its
    last allocations first; an allocation left with none goes."""
    taking = dict(cancelled)
    kept: list[Allocation] = []
    for allocation in reversed(allocations):
        take = min(taking.get(allocation.line_id, 0), allocation.quantity)
        if take:
            taking[allocation.line_id] -= take
        if allocation.quantity - take:
            kept.append(_replaced(allocation, quantity=allocation.quantity - take) if take else allocation)
    return kept[::-1]


def _left_to_ship_nothing(to: OrderStatus, lines: list[OrderLine], shipments: list[Shipment]) -> OrderStatus:
    """`to` (shipped or delivered) for an order with nothing left to ship, unless units of it came
    back already, on returns received while the rest had not shipped: then `partially_returned`,
    or `returned` when every unit that left is back (its returns are what its status says)."""
    if not any(line.returned_quantity for line in lines):
        return to
    shipped = _shipped_by_line(lines, shipments)
    everything_back = all(line.returned_quantity >= shipped.get(line.line_id, 0) for line in lines)
    return OrderStatus.RETURNED if everything_back else OrderStatus.PARTIALLY_RETURNED


# Which history entry records a failed attempt at each payment operation.
PAYMENT_FAILURE_EVENTS: dict[str, OrderEvent] = {
    "authorize": OrderEvent.PAYMENT_AUTHORIZATION_FAILED,
    "capture": OrderEvent.PAYMENT_CAPTURE_FAILED,
    "void": OrderEvent.PAYMENT_VOID_FAILED,
    "refund": OrderEvent.PAYMENT_REFUND_FAILED,
}

Change = tuple["Order", HistoryEntry]
# A new version that is the system's own bookkeeping, with no entry in the history (a capture
# request, which the entries of its outcome tell about).
Bookkeeping = tuple["Order", None]
_TIMES = TypeAdapter(datetime)


# Computed when an order is read, never part of its stored document.
_NOT_STORED = frozenset({"awaiting_stock"})
# The order statuses after which nothing ships again.
_ALL_SHIPPED = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.PARTIALLY_RETURNED, OrderStatus.RETURNED}
)
# The payment statuses under which an authorization may still be captured on.
_CAPTURABLE = frozenset({PaymentStatus.AUTHORIZED, PaymentStatus.PARTIALLY_CAPTURED, PaymentStatus.PARTIALLY_REFUNDED})


class Order(Shown):
    """The aggregate. Its methods are the only way to a new version: each returns that version,
    validated and checked against the status tables, with the history entry that explains it.
    They decide; the services read, call gateways and write."""

    id: str
    status: OrderStatus
    channel: str
    external_id: str | None = None
    currency: str
    customer: Customer
    lines: list[OrderLine]
    shipping_address: Address
    fulfillment: Fulfillment
    shipping_method: str | None = None
    promo_codes: list[str] = Field(default_factory=empty_list)
    hold: Hold | None = None
    jeopardy: Jeopardy | None = None
    # Shown on a read of a backordered order (core.backorders.ExpectedArrivals); never stored.
    awaiting_stock: AwaitingStock | None = Field(
        default=None,
        description="On a `backordered` order, read through the API: its lines still waiting for units "
        "and when more is expected; null otherwise (and in events)",
    )
    # The version whose lines and totals the payment authorizes: set at capture and by each edit,
    # never by a hold or a release, so the authorization's idempotency key (core/payment_keys.py)
    # outlives a hold: released, the order gets the gateway's first answer again, never a second
    # authorization. The system's own, like Hold.resume_to: stored, never shown. None: stored
    # before it existed (the order's version then).
    priced_version: int | None = Field(default=None, exclude=True)
    # What its promo codes and the plugins' own rules granted it when it was placed (PromotionGrant):
    # a change priced again prices the units it was sold as these say, whatever the plugins answer
    # for its codes today (for a rule: unless they apply it otherwise to the units left).
    # The system's own: stored, never shown. Empty: no code granted anything, or stored before it
    # existed.
    promotion_grants: list[PromotionGrant] = Field(default_factory=empty_list, exclude=True)
    # When the order entered its current status: the jeopardy scan's clock (core/jeopardy.py).
    # Stored, never shown. None: stored before it existed (`updated_at` stands in).
    status_since: datetime | None = Field(default=None, exclude=True)
    # When the order last changed before the jeopardy scan marked it late (mark_jeopardy), while the
    # mark (or its clearing: clear_jeopardy) is its last change: a mark is the scan's observation,
    # not a step of the order, so the reconciler judges a stalled order by this (`last_changed`).
    # Any later change drops it. The
    # system's own: stored, never shown.
    changed_before_mark: datetime | None = Field(default=None, exclude=True)
    # A release resumed the clock of the status this order was marked late for before its hold
    # (Hold.resume_late): the `since` that lateness has now, moved by the time held. The scan's next
    # mark of it (the same `since`, the deadline unchanged) is an order.jeopardy event as every
    # mark is, but its customer was told of that lateness already: no second 'delayed' notice
    # (core.notifications). Goes when the order leaves the status; the system's own: stored, never shown.
    late_resumed: datetime | None = Field(default=None, exclude=True)
    # The jeopardy mark is the scan's for a capture request standing whose refund the gateway
    # refused (mark_jeopardy's `refund_refused`: a person settles it): settled with the last request
    # standing (the capture refunded, or found never made, by a later pass): the mark stays, plainly,
    # but one stored for the refund alone (not jeopardy_on_deadline), which goes (_marks_settled).
    # Goes with the mark. Rare; the system's own: stored, never shown.
    jeopardy_for_refund: bool = Field(default=False, exclude=True)
    # That mark (jeopardy_for_refund) was made by a pass of its status's own deadline (every mark
    # the scan makes now; not one the partly shipped pass stored while that status had no deadline
    # by default, a mark for the refund alone: mark_late_on_deadline): settled, it
    # stays, plainly, the order being late all the same (_marks_settled). Goes with the mark. Rare;
    # the system's own: stored, never shown.
    jeopardy_on_deadline: bool = Field(default=False, exclude=True)
    # The jeopardy scan read this partly shipped order past the allocated deadline with no capture
    # request standing: its partly shipped pass noted so while that status had no deadline by
    # default, and read it no more while none stood (`read_by_scan`, its index entry). The scan notes
    # none now (its status's deadline pass reads every unmarked order), so only stored orders have
    # it. Goes when it leaves the status; the system's own: stored, never shown.
    scan_read: bool = Field(default=False, exclude=True)
    # When the reconciler first restarted the order's workflow (core/reconciliation.py) in the stall
    # it is in: a stall's park threshold counts from it, so no order is parked "though its workflow
    # was restarted" that no pass restarted (an outage outlasting the threshold, a backlog the passes
    # had not reached). A mark of an earlier stall (before the order's last change) is none
    # (`restarted_since_change`). The system's own: stored, never shown.
    restarted_at: datetime | None = Field(default=None, exclude=True)
    totals: Totals
    payment: Payment
    allocations: list[Allocation] = Field(default_factory=empty_list)
    shipments: list[Shipment] = Field(default_factory=empty_list)
    # The returns whose receipt this order has recorded (in `returned_quantity`), so recording
    # one again changes nothing.
    received_returns: list[str] = Field(default_factory=empty_list)
    # The entries of its returns' requests, approvals, rejections and expiries that the history
    # has ("<return id>:<entry type>", Order.return_noted), so writing one again changes nothing.
    # The system's own: stored, never shown.
    return_entries: list[str] = Field(default_factory=empty_list, exclude=True)
    # Locations that rejected a shipment of this order, or that a stock take counted short of what
    # it held there: sourcing does not use them for it. The system's own, like Hold.resume_to:
    # stored (stored_json), never in a response.
    excluded_locations: list[str] = Field(default_factory=empty_list, exclude=True)
    # Of those, the ones only stock takes excluded, with the skus they counted short there: such an
    # exclusion lapses once that sku is restocked there (a receipt, a count raising on_hand:
    # Order.count_exclusion_lapsed), while a location a person's reject excluded stays excluded
    # (its reject takes it out of here). Stored before this was kept: empty, every exclusion stays.
    # The system's own: stored (stored_json), never shown.
    counted_short: dict[str, list[str]] = Field(default_factory=dict, exclude=True)
    # The skus it has waited backordered for (Order.backorder): a product that stops allowing
    # backorder stops new orders, not the ones waiting, which may still wait for those units when
    # sourced again (an edit that asks for no more of them, a reject, a change of the network).
    # Stored before this was kept: empty, and the product decides, as it did. The system's own:
    # stored (stored_json), never shown.
    may_wait: list[str] = Field(default_factory=empty_list, exclude=True)
    # A shipment id per capture given back because the order changed while it shipped (a parcel
    # sourced again from that location in the same generation, Order.parcel_id, would have the id):
    # its next capture takes a new gateway key (core/payment_keys.py). The system's own: stored, never shown.
    reversed_captures: list[str] = Field(default_factory=empty_list, exclude=True)
    # How many changes (an edit, a location's reject, units cancelled while backordered or from a
    # pending parcel) may have altered what the order's parcels hold: a parcel booked after one is
    # asked of the carrier under a new key (core.ids.booking_key), so a carrier idempotent by key
    # books the parcel as it now is instead of answering an earlier booking again; a parcel made
    # after one (sourced again) has a new id too (parcel_id), while a pending parcel a cancel of
    # units shrank keeps its own. A retried step, a hold or a release does not change it. Counted
    # where parcels are sent back to be sourced (_sourced_again); a version that withdraws a parcel
    # whose id could be made again without counting one is refused (core.status.check_successor).
    # The system's own: stored, never shown.
    rebookings: int = Field(default=0, exclude=True)
    # Pending shipments a cancel of units shrank after they were booked: their carrier booking and
    # label still show the old contents and weight until they are booked again under the order's
    # current booking key (Order.relabel); a parcel that leaves or is readied for pickup, or an order
    # cancelled, is no longer due one (`_next`). The system's own: stored, never shown.
    labels_due: list[str] = Field(default_factory=empty_list, exclude=True)
    # The booking key of each shipment booked under another key than its id (one booked after a
    # change, core.ids.booking_key): what a cancel of that booking names (`booking_key_of`). Empty
    # on an order nothing changed. The system's own: stored, never shown.
    booking_keys: dict[str, str] = Field(default_factory=dict, exclude=True)
    # Carrier bookings no parcel will use, owed a cancel with their carrier (GivenUpBooking; each
    # new version adds those it gives up, `_next`). The system's own: stored, never shown.
    bookings_to_cancel: list[GivenUpBooking] = Field(default_factory=empty_list, exclude=True)
    # Carrier bookings made for its parcels that no shipment records, which a retry will ask for
    # again under the same key and use (a CreateShipments that failed after booking some parcels,
    # then parked, say): owed a cancel from the change after which nothing will (the order closed,
    # booked under new keys, the parcel no longer waiting for one: `_next`), else that booking is
    # recorded nowhere. The system's own: stored, never shown.
    unrecorded_bookings: list[GivenUpBooking] = Field(default_factory=empty_list, exclude=True)
    # Return label bookings made (or maybe made: the answer lost) that no return records yet, each
    # under its return's id (`shipment_id`): a request or approval that failed after asking the
    # carrier, or lost its write. Judged on that return once it is stored or changes
    # (core.returns.judged_labels): used by it, owed a cancel (`bookings_to_cancel`), or kept
    # while a retry may still ask for it under its key. Empty on nearly every order. The system's
    # own: stored, never shown.
    unrecorded_return_labels: list[GivenUpBooking] = Field(default_factory=empty_list, exclude=True)
    # Lines edits replaced whose reservations are owed a release (Order.reservation_lines): the edit
    # releases them after its write; what it could not (the inventory unavailable) the order's
    # sourcing (ReserveStock, whose write clears them) or its cancel releases, or they would stay
    # reserved for good under a line the order no longer has. The system's own: stored, never shown.
    replaced_lines: list[ReplacedLine] = Field(default_factory=empty_list, exclude=True)
    # The locations an order sent back to be sourced (an edit, a reject, the sourcing rules) held
    # units at: its sourcing (ReserveStock, whose write clears them) looks for its reservations there
    # too, though one may no longer supply it (it stopped shipping), or they would stay reserved for
    # no one. The system's own: stored, never shown.
    held_before: list[str] = Field(default_factory=empty_list, exclude=True)
    # Captures asked of the gateway for a shipment or the settlement and not recorded yet
    # (CaptureRequest): while one stands, its shipment keeps its lines and the authorization is not
    # voided; on an order nobody ships or cancels again the jeopardy scan finds it once the order is
    # late, and it is settled (core.capture_sweep). The system's own: stored, never shown.
    captures_requested: list[CaptureRequest] = Field(default_factory=empty_list, exclude=True)
    # An edit's authorization asked of the gateway and not recorded yet (AuthorizationRequest). The
    # system's own: stored, never shown.
    authorization_requested: AuthorizationRequest | None = Field(default=None, exclude=True)
    # Authorizations an edit (or a renewal, renew_authorization) replaced and that are not voided
    # yet (the edit's write names them, so
    # one whose void did not happen, the gateway down or the edit dead, is voided by the next edit,
    # a cancel or the last parcel's ship, or on an order nobody changes again by the reconciler:
    # core.authorization_sweep). One a standing capture request is asked under (capturing_under: a
    # renewal for another parcel replaced it meanwhile) waits for that capture to be recorded or
    # given back first. The system's own: stored, never shown.
    replaced_authorizations: list[str] = Field(default_factory=empty_list, exclude=True)
    # When the gateway approved the order's current authorization (`payment.authorization`): a
    # gateway lets an authorization lapse after some days, so a ship or collect of an order whose
    # authorization is older than OMS_AUTHORIZATION_VALID_DAYS authorizes again first
    # (authorization_lapsed). None: stored before it existed (`created_at` stands in: the
    # authorization came after it), or nothing is left to capture on the order's authorizations
    # (dropped by the capture that took the last of it: _captured_apart). The system's own:
    # stored, never shown.
    authorized_at: datetime | None = Field(default=None, exclude=True)
    # The authorizations the current one replaced (a renewal, an edit) under which something was
    # captured, oldest first (EarlierCaptures), written by the write that replaces one: a refund
    # goes to the authorization whose captures it gives back (refund_sources), and every refund
    # made before names the one it went to (PaymentRefund.authorization). Empty on the typical
    # order, with one authorization; on an order stored before it existed, its captures count as
    # made under its current authorization, which is where its refunds went. The system's own:
    # stored, never shown.
    earlier_captures: list[EarlierCaptures] = Field(default_factory=empty_list, exclude=True)
    # The lapsed authorization a ship or collect asks the gateway to authorize again, written before
    # it asks (request_renewal) and cleared by the write that records the new one, or its decline:
    # the ship repeated asks again under the same key (core/payment_keys.py) and records it, and a
    # cancel releases what the gateway holds under it (or, once it could not, the reconciler:
    # renewal_left). None on the typical order. The system's own: stored, never shown.
    renewing_authorization: str | None = Field(default=None, exclude=True)
    # How many renewals of `renewing_authorization` the gateway had declined when it was asked (the
    # history's), which its key counts: a gateway answers a key it has seen with its first answer,
    # so a renewal asked after a decline is a new one, while this one, its answer lost, is asked
    # again under its key. Written and cleared with it; 0 on the typical order. Stored, never shown.
    renewal_declined_before: int = Field(default=0, exclude=True)
    # What `renewing_authorization`'s renewal asks the gateway to authorize (what it had left to
    # capture when the renewal was requested), written and cleared with it: asked again under its
    # key, by the ship repeated or by a cancel releasing it through a payment plugin that cannot
    # look keys up, it is for the same amount, which a captured parcel or an edit meanwhile would
    # change. None: none stands, or stored before it existed. Stored, never shown.
    renewal_amount: Money | None = Field(default=None, exclude=True)
    # The last failure of a workflow step in a plugin (StepPluginFailure), which an execution out of
    # time names when it parks the order (Workflow.out_of_time); one older than the execution's
    # start is an earlier execution's, named by none. None on nearly every order. Stored, never shown.
    step_plugin_failure: StepPluginFailure | None = Field(default=None, exclude=True)
    # The authorizations that replaced the order's first (a renewal's, an edit's for a grown
    # total), each added by the write that records it: a capture asked under one names it in its
    # key (capture_keyed_under), so one the gateway refused under an earlier authorization (let
    # lapse early by the issuer) is asked afresh, not answered with that refusal again. Kept while
    # a key may still name it (_later_kept): the current one, and one a standing capture request is
    # asked under. Empty on the typical order, whose keys stay as they were. Stored, never shown.
    later_authorizations: list[str] = Field(default_factory=empty_list, exclude=True)
    # The order's current authorization, when a capture given back (record_capture_reversal) was
    # made under it, or the gateway refused a capture on it (record_capture_not_made; not on the
    # `refusal_renewal`): a gateway does not let what a refunded capture took be captured again,
    # and one that refused a capture (the issuer let the authorization lapse early) answers the
    # same again, so the order renews it before capturing on it again (authorization_lapsed); the
    # renewal (or an edit's authorization) that replaces it drops it. One a renewal replaced
    # already is not renewed again, so it is not kept. Empty on the typical order. Stored, never
    # shown.
    spent_authorizations: list[str] = Field(default_factory=empty_list, exclude=True)
    # The authorization a renewal made because a capture on the one it replaced was refused or
    # given back (spent_authorizations), written by the renewal that records it (and cleared by the
    # next): a capture the gateway refuses on it as well is no lapse a new authorization cures (the
    # bank now refuses the card, a fraud flag), so it is not spent again. The ship repeated asks
    # the capture again on it, under its own key, and the parcel stays refused, in the history,
    # for a person to act on, instead of each repeat placing and voiding one more authorization on
    # the customer's card. Says something only while it is the order's current authorization; one
    # grown old is renewed as ever. None on the typical order. Stored, never shown.
    refusal_renewal: str | None = Field(default=None, exclude=True)
    # The gateway keys of authorization attempts the order gave up (an answer lost before an edit
    # keyed its next authorization anew) that could not be released before it was authorized: the
    # gateway down through the edit and the authorization. The authorization's write names them, as
    # an edit's write names what it replaced, so a cancel or, on an order nobody changes again, the
    # reconciler releases them (Cancellation.release_given_up_keys); nothing else asks about an
    # earlier key of an authorized order. So are the keys of authorizations it asked for once
    # authorized and could not record nor void, the gateway down (give_up_key). Empty on the typical
    # order. The system's own: stored, never shown.
    authorization_keys_given_up: list[str] = Field(default_factory=empty_list, exclude=True)
    # Whether the cancelled order's own authorization is still to void because the gateway could
    # not (unavailable through every attempt, or its payment plugin failed: `plugin_error`), or could
    # not get to it: a capture the order asked for and never recorded is given back first
    # (Cancellation.void); or, its payment never
    # authorized (pending; or declined, the order payment_failed), what the gateway may hold under
    # a key of its own could not be looked up or voided.
    # Set by the write that records the first such attempt, and cleared by the one that records the
    # void (or the release), or a refusal (which no pass asks again). The cancel's execution
    # retries it for a while; once that gives up, the reconciler's authorization pass settles it
    # (core.authorization_sweep). False on the typical order, whose void is made at once. The
    # system's own: stored, never shown.
    own_void_owed: bool = Field(default=False, exclude=True)
    # An exchange's replacement order: the return whose refund pays for part of it (`exchange_of`)
    # and that credit. The payment authorizes and captures only `payable()`, the rest is paid.
    exchange_of: str | None = None
    exchange_credit: Money | None = None
    # What of that credit the exchange refunds at once on the original order: the credit beyond the
    # replacement's total as it was placed (Returns.exchange). Given back to the customer, it pays
    # nothing of what an edit adds to the replacement since (usable_credit). The system's own:
    # stored, never shown. None on a replacement that cost at least its credit (or placed before it).
    credit_rest: Money | None = Field(default=None, exclude=True)
    # The returns of this order whose replacement was placed (the history names each once).
    exchanges: list[str] = Field(default_factory=empty_list)
    # What each of those returns' units were worth when their value became the replacement's credit
    # (by return id): what a refund records for returned units (PaymentRefund.lines), for units
    # paid back as a credit. The system's own: stored, never shown.
    exchange_shares: dict[str, list[RefundedUnits]] = Field(default_factory=dict, exclude=True)
    # What each return of this replacement's units (by return id) that its own captures refunded
    # nothing of (they paid only the difference: its exchange's credit refunded the units whole)
    # gave back for each line's units, as a refund records them (PaymentRefund.lines): a line priced
    # again since counts what they were refunded (core.refunds.refunded_short_of_lines). The
    # system's own: stored, never shown.
    credit_refunded_shares: dict[str, list[RefundedUnits]] = Field(default_factory=dict, exclude=True)
    # The order's shipping an exchange's credit gives back (by return id), claimed before the
    # replacement is placed, or a return's refund that gave nothing keeps back (Order.keep_back),
    # so a refund deciding the shipping meanwhile counts it (as it counts PaymentRefund.shipping).
    # The system's own: stored, never shown.
    shipping_claims: dict[str, Money] = Field(default_factory=dict, exclude=True)
    # What each exchange's credit (by return id) takes of this order's captured money to pay for its
    # replacement, held before the replacement is placed, so a refund deciding meanwhile cannot
    # refund it too (Order.refundable); what the credit gives back (refunds of that return) frees
    # it again. The system's own: stored, never shown.
    credit_holds: dict[str, Money] = Field(default_factory=dict, exclude=True)
    # What of the returned units' worth each exchange's credit (by return id) could not take when it
    # was held, or a return's refund could not give back at all (it gave nothing), captured minus
    # refunded falling short of it (an appeasement took part of what the units were captured for
    # while another parcel was still to be captured): refunded once that parcel's capture makes it
    # refundable (UnitCancellation.refund_kept_back), as a return's refund that gave part keeps it
    # (PaymentRefund.kept_back). The system's own: stored, never shown.
    returns_kept_back: dict[str, Money] = Field(default_factory=dict, exclude=True)
    # The returns that owe showing what went back for them (core.refund_service.show_refunded_in_all)
    # since the gateway answered a refund of theirs that nothing shows yet: one the reconciler's
    # pending-refund pass finished, or one of what a return (or its exchange's credit) kept back.
    # Written with the refund's record, so a function that dies before showing it leaves the order
    # in the kept-back pass's index (functions.adapters.dynamodb.index_attributes), which shows it
    # and clears this (UnitCancellation.refund_kept_back); without it the order would be in no
    # index and the return would show less than went back, for good. Empty on the typical order.
    # The system's own: stored, never shown.
    returns_to_show: list[str] = Field(default_factory=empty_list, exclude=True)
    # The received returns whose policy gives the order's shipping back once the whole order is
    # back (refund_shipping_with_whole_order), in the order they were recorded, each counting for
    # what arrived of it (as core.returns._shipping_due counts them): when the rest of the order is
    # cancelled after they brought every shipped unit back (no receipt brings its last unit back
    # then), the shipping is owed all the same (core.refunds.kept_back_owed). Empty on the typical
    # order. The system's own: stored, never shown.
    whole_order_returns: list[str] = Field(default_factory=empty_list, exclude=True)
    # Of those, the ones whose refund gave nothing, their restocking fee taking all their units were
    # worth before the whole order was back (their refund weighed no shipping), with what of the fee
    # the units did not cover: the shipping given back once the rest is cancelled is less that, as
    # the return's own refund would have been had the cancel come first (core.refunds.
    # _whole_order_shipping_owed). Empty on the typical order (no fee). The system's own: stored, never shown.
    fees_beyond_units: dict[str, Money] = Field(default_factory=dict, exclude=True)
    # What the units of returns whose fee took all they were worth (their refund gave nothing, so no
    # refund records it) were worth for each line, as a refund's `lines` record a refund's: the fee
    # kept it, as it keeps its part of a refund it lowers, so the payment is settled alike when units
    # of the line are cancelled and it is priced again (core.refunds.given_back_for_units). Empty on
    # the typical order (no fee). The system's own: stored, never shown.
    fee_kept_shares: dict[str, list[RefundedUnits]] = Field(default_factory=dict, exclude=True)
    # What a cancel of units owes back that its function does after its write: the refund of what
    # the captures hold beyond the new total (a settlement), and for an exchange's replacement left
    # nothing to ship, the give-back of the credit it does not use (on its original order); so does
    # a replacement's last parcel shipped or collected below its credit owe that give-back
    # (core.exchange_credit.owes_credit_back). Written with the cancel (or that ship or collect), so
    # a function that dies before those leaves the order in the kept-back pass's index
    # (functions.adapters.dynamodb.index_attributes), which finishes them and clears this
    # (UnitCancellation.settle_owed); without it only a client repeating the cancel (or the ship or
    # collect: a carrier that never reports delivery, a pickup collected) would, and the money
    # would stay with the shop for good. Never set on the typical order (no cancel of units, no credit).
    # The system's own: stored, never shown.
    settlement_owed: bool = Field(default=False, exclude=True)
    # A cancel of units (of an order whose stock its workflow no longer settles) brought the order's
    # reservations down after its write (UnitCancellation._stock_moves): written with the cancel,
    # so a function that dies before that leaves the order in the kept-back pass's index, which
    # releases them and clears this (UnitCancellation.release_owed); without it only a client
    # repeating the cancel would, and the units would stay reserved for no one (and leave on_hand
    # with the last parcel's ship). Never set on the typical order. The system's own: stored, never shown.
    # Written too with a cancel that lands while a ReserveStock run may be reserving for the order
    # (Order.cancel: reserving_maybe), so the same pass gives back what such a run reserved after
    # the cancel's release and died before its write, which nothing else would ever release.
    stock_owed: bool = Field(default=False, exclude=True)
    # The parcels a carrier reported delivered while their ships, dead after asking for their
    # captures, had not recorded them (Order.report_delivered): written with the report's release
    # of the hold that waited on them (or alone, on an order not held), before the ship the report
    # then makes, so a function that dies between leaves them marked. Marked, a parcel's units are
    # never put back on sale (check_parcels_kept: no reject, edit, cancel of its units or of the
    # order), the ship and delivery that finish it take the carrier's time, and a report sent
    # again (a carrier retries a report answered 5xx) or a ship of it finishes it, or, should
    # nobody send it, the reconciler's kept-back pass (reported_to_finish); its delivery clears it.
    # No person's hold stands over it (hold_for). Never set on the typical order. The system's own:
    # stored, never shown.
    reported_delivered: list[ReportedDelivery] = Field(default_factory=empty_list, exclude=True)
    # Carriers' scans of pending parcels delivered before anyone confirmed their ships
    # (Order.keep_delivery_scan): each parcel's ship delivers it at the carrier's time, and its
    # delivery clears it; a parcel that goes (a reject, an edit, a cancel) or is booked again takes
    # its scan with it (_scans_kept). Never set on the typical order. The system's own: stored, never shown.
    delivery_scans: list[DeliveryScan] = Field(default_factory=empty_list, exclude=True)
    created_at: datetime
    updated_at: datetime
    version: int

    # --- Reading ---------------------------------------------------------------------------
    def stored_json(self) -> str:
        """The order as the repository stores it: the API's JSON plus what only the system reads
        (the status a hold resumes to, the version its authorization covers, the locations
        excluded from sourcing it)."""
        system: dict[str, Any] = {}
        if self.priced_version is not None:
            system["priced_version"] = self.priced_version
        if self.promotion_grants:
            system["promotion_grants"] = [
                g.model_dump(mode="json", exclude_defaults=True) for g in self.promotion_grants
            ]
        if self.status_since is not None:
            system["status_since"] = _TIMES.dump_python(self.status_since, mode="json")
        if self.changed_before_mark is not None:
            system["changed_before_mark"] = _TIMES.dump_python(self.changed_before_mark, mode="json")
        if self.late_resumed is not None:
            system["late_resumed"] = _TIMES.dump_python(self.late_resumed, mode="json")
        if self.jeopardy_for_refund:
            system["jeopardy_for_refund"] = True
        if self.jeopardy_on_deadline:
            system["jeopardy_on_deadline"] = True
        if self.scan_read:
            system["scan_read"] = True
        if self.restarted_at is not None:
            system["restarted_at"] = _TIMES.dump_python(self.restarted_at, mode="json")
        if self.excluded_locations:
            system["excluded_locations"] = list(self.excluded_locations)
        if self.counted_short:
            system["counted_short"] = {location_id: list(skus) for location_id, skus in self.counted_short.items()}
        if self.may_wait:
            system["may_wait"] = list(self.may_wait)
        if self.reversed_captures:
            system["reversed_captures"] = list(self.reversed_captures)
        if self.rebookings:
            system["rebookings"] = self.rebookings
        if self.labels_due:
            system["labels_due"] = list(self.labels_due)
        if self.booking_keys:
            system["booking_keys"] = dict(self.booking_keys)
        if self.bookings_to_cancel:
            system["bookings_to_cancel"] = [b.model_dump(mode="json") for b in self.bookings_to_cancel]
        if self.unrecorded_bookings:
            system["unrecorded_bookings"] = [b.model_dump(mode="json") for b in self.unrecorded_bookings]
        if self.unrecorded_return_labels:
            system["unrecorded_return_labels"] = [b.model_dump(mode="json") for b in self.unrecorded_return_labels]
        if self.replaced_lines:
            system["replaced_lines"] = [line.model_dump(mode="json") for line in self.replaced_lines]
        if self.held_before:
            system["held_before"] = list(self.held_before)
        if self.captures_requested:
            system["captures_requested"] = [r.model_dump(mode="json") for r in self.captures_requested]
        if self.authorization_requested is not None:
            system["authorization_requested"] = self.authorization_requested.model_dump(mode="json")
        if self.replaced_authorizations:
            system["replaced_authorizations"] = list(self.replaced_authorizations)
        if self.authorization_keys_given_up:
            system["authorization_keys_given_up"] = list(self.authorization_keys_given_up)
        if self.authorized_at is not None:
            system["authorized_at"] = _TIMES.dump_python(self.authorized_at, mode="json")
        if self.renewing_authorization is not None:
            system["renewing_authorization"] = self.renewing_authorization
        if self.renewal_declined_before:
            system["renewal_declined_before"] = self.renewal_declined_before
        if self.renewal_amount is not None:
            system["renewal_amount"] = self.renewal_amount.model_dump(mode="json")
        if self.step_plugin_failure is not None:
            system["step_plugin_failure"] = self.step_plugin_failure.model_dump(mode="json")
        if self.later_authorizations:
            system["later_authorizations"] = list(self.later_authorizations)
        if self.spent_authorizations:
            system["spent_authorizations"] = list(self.spent_authorizations)
        if self.refusal_renewal is not None:
            system["refusal_renewal"] = self.refusal_renewal
        if self.earlier_captures:
            system["earlier_captures"] = [e.model_dump(mode="json") for e in self.earlier_captures]
        if self.own_void_owed:
            system["own_void_owed"] = True
        if self.return_entries:
            system["return_entries"] = list(self.return_entries)
        if self.credit_rest is not None:
            system["credit_rest"] = self.credit_rest.model_dump(mode="json")
        if self.exchange_shares:
            system["exchange_shares"] = {
                return_id: [share.model_dump(mode="json") for share in shares]
                for return_id, shares in self.exchange_shares.items()
            }
        if self.credit_refunded_shares:
            system["credit_refunded_shares"] = {
                return_id: [share.model_dump(mode="json") for share in shares]
                for return_id, shares in self.credit_refunded_shares.items()
            }
        if self.shipping_claims:
            system["shipping_claims"] = {
                return_id: amount.model_dump(mode="json") for return_id, amount in self.shipping_claims.items()
            }
        if self.credit_holds:
            system["credit_holds"] = {
                return_id: amount.model_dump(mode="json") for return_id, amount in self.credit_holds.items()
            }
        if self.returns_kept_back:
            system["returns_kept_back"] = {
                return_id: amount.model_dump(mode="json") for return_id, amount in self.returns_kept_back.items()
            }
        if self.returns_to_show:
            system["returns_to_show"] = list(self.returns_to_show)
        if self.whole_order_returns:
            system["whole_order_returns"] = list(self.whole_order_returns)
        if self.fees_beyond_units:
            system["fees_beyond_units"] = {
                return_id: amount.model_dump(mode="json") for return_id, amount in self.fees_beyond_units.items()
            }
        if self.fee_kept_shares:
            system["fee_kept_shares"] = {
                return_id: [share.model_dump(mode="json", exclude_none=True) for share in shares]
                for return_id, shares in self.fee_kept_shares.items()
            }
        if self.settlement_owed:
            system["settlement_owed"] = True
        if self.stock_owed:
            system["stock_owed"] = True
        if self.delivery_scans:
            system["delivery_scans"] = [scan.model_dump(mode="json") for scan in self.delivery_scans]
        if self.reported_delivered:
            system["reported_delivered"] = [
                r.model_dump(mode="json", exclude_defaults=True) for r in self.reported_delivered
            ]
        if self.hold is not None and self.hold.resume_to is not None:
            # Inside the API's `hold`: through a dict (held orders only).
            doc = self.model_dump(mode="json", exclude_none=True, exclude=_NOT_STORED)
            doc["hold"]["resume_to"] = self.hold.resume_to.value
            if self.hold.resume_since is not None:
                doc["hold"]["resume_since"] = _TIMES.dump_python(self.hold.resume_since, mode="json")
            if self.hold.resume_late is not None:
                doc["hold"]["resume_late"] = _TIMES.dump_python(self.hold.resume_late, mode="json")
            if self.hold.resume_late_resumed:
                doc["hold"]["resume_late_resumed"] = True
            if self.hold.parked:
                doc["hold"]["parked"] = True
            if self.hold.ships_to_confirm:
                doc["hold"]["ships_to_confirm"] = list(self.hold.ships_to_confirm)
            if self.hold.confirms_ships:
                doc["hold"]["confirms_ships"] = list(self.hold.confirms_ships)
            if self.hold.left_by_release is not None:
                doc["hold"]["left_by_release"] = self.hold.left_by_release.model_dump(mode="json", exclude_none=True)
            return json.dumps({**doc, **system}, separators=(",", ":"))
        api_json = self.model_dump_json(exclude_none=True, exclude=_NOT_STORED)
        if not system:
            return api_json
        # After the API's fields, where a dict would put them: appended to pydantic's JSON, in half
        # the time of dumping the order to a dict and that to JSON (every new order has two).
        return api_json[:-1] + "," + json.dumps(system, separators=(",", ":"))[1:]

    def placed_promotions(self) -> list[PromotionGrant]:
        """What its promo codes granted it when it was placed (`promotion_grants`). An order stored
        before those were kept shows it on its lines: each sku's discount for the units it has, and
        free shipping when it ships and paid none (what it was sold at, either way). Placed with
        several codes, the lines do not say which code gave what: the first code is taken to have
        given it all and the others nothing more, which keeps the order at what it was sold at."""
        if self.promotion_grants or not self.promo_codes:
            return list(self.promotion_grants)
        code, *others = self.promo_codes
        by_sku: dict[str, tuple[int, Money]] = {}
        for line in self.lines:
            if line.quantity:
                units, discount = by_sku.get(line.sku, (0, Money.zero(self.currency)))
                by_sku[line.sku] = (units + line.quantity, discount + line.discount)
        grants = [
            PromotionGrant(code=code, sku=sku, quantity=units, amount=discount)
            for sku, (units, discount) in by_sku.items()
        ]
        if self.fulfillment.type == "ship" and self.totals.shipping.amount == 0:
            grants.append(PromotionGrant(code=code, free_shipping=True))
        return grants + [PromotionGrant(code=other) for other in others]

    def shipped_units(self) -> dict[str, int]:
        """Units of each line that left in shipped or delivered shipments (read from the shipments,
        so orders stored before `shipped_quantity` existed answer the same)."""
        return _shipped_by_line(self.lines, self.shipments)

    @property
    def usable_credit(self) -> Money | None:
        """What of an exchange's credit pays for this replacement (None: it is none): the credit
        less what the exchange refunded of it at once (`credit_rest`), which the customer has back
        already: an edit that makes the replacement dearer is paid for by its card, not by it."""
        credit = self.exchange_credit
        if credit is None or self.credit_rest is None:
            return credit
        usable = credit - self.credit_rest
        return usable if usable.amount > 0 else Money.zero(self.currency)

    def payable(self, totals: Totals | None = None) -> Money:
        """What the payment must cover: the grand total, less an exchange's credit (what the
        returned units' refund would have been, kept on the original order to pay for this one;
        less what of it the exchange refunded at once: usable_credit), never below zero.
        Authorization, captures and refund arithmetic work on this, so that captured minus refunded
        equals what the customer still owes on this order."""
        total = (totals or self.totals).grand_total
        credit = self.usable_credit
        if credit is None:
            return total
        due = total - credit
        return due if due.amount > 0 else Money.zero(self.currency)

    @property
    def in_status_since(self) -> datetime:
        """When the order entered its current status (see `status_since`)."""
        return self.status_since if self.status_since is not None else self.updated_at

    @property
    def deadline_counts_from(self) -> datetime | None:
        """When the deadline of its current status (OMS_SLA) starts counting: when it entered the
        status, save for an allocated pickup whose every parcel waits at its store for the customer,
        who has until `collect_by`: nobody is late before then (the pickup expiry cancels it at
        that moment; a mark after the deadline says it did not). None when none of its waiting
        parcels has a `collect_by` (OMS_PICKUP_EXPIRY_DAYS 0): the customer may come whenever,
        so the order is never late."""
        if self.status is not OrderStatus.ALLOCATED or not self._picked():
            return self.in_status_since
        waiting = self.pickup_deadline()
        return None if waiting is None else max(waiting, self.in_status_since)

    @property
    def last_changed(self) -> datetime:
        """When the order last changed, a jeopardy mark aside (see `changed_before_mark`)."""
        return self.changed_before_mark if self.changed_before_mark is not None else self.updated_at

    @property
    def restarted_since_change(self) -> datetime | None:
        """When the reconciler first restarted the workflow since the order last changed (a jeopardy
        mark aside: `last_changed`), or None when no pass has in this stall."""
        at = self.restarted_at
        return at if at is not None and at >= self.last_changed else None

    @property
    def listed_late(self) -> bool:
        """Whether the order is listed late (GET /orders?jeopardy=true, counted for the alarm) and
        so no candidate of the jeopardy scan: marked, with no capture a ship asked for standing (but
        a parcel's its carrier reported delivered, which its ship finishes: captures_to_settle), or
        marked with one standing whose refund the gateway refused (mark_jeopardy's
        `refund_refused`: a person settles it) and unchanged since (the mark its last change,
        `changed_before_mark` set: every other mark is made with no request standing, and a
        request asked after a mark is a change that drops it). A marked order whose ship asks a
        capture counts unmarked meanwhile, so the scan reads it again should that ship die with
        the money taken (core/jeopardy.py)."""
        return self.jeopardy is not None and (not self.captures_to_settle() or self.changed_before_mark is not None)

    @property
    def read_by_scan(self) -> bool:
        """Whether the order keeps the index entry of the scan's old partly shipped pass (`scan_read`):
        noted read with no capture request standing, and none stands now (a ship that asks one
        removes it; but for a parcel its carrier reported delivered: captures_to_settle)."""
        return self.scan_read and not self.captures_to_settle()

    @property
    def edit_authorizations_left(self) -> bool:
        """Whether an edit left an authorization to settle: one it asked for and did not record
        (`authorization_requested`), one it replaced and that is not voided yet
        (`replaced_authorizations`), or a key it gave up that was not released (before the order was
        authorized, or after: `authorization_keys_given_up`):
        core.authorization_sweep.UnsettledAuthorizationSweep finds them."""
        return (
            self.authorization_requested is not None
            or bool(self.replaced_authorizations)
            or bool(self.authorization_keys_given_up)
        )

    @property
    def authorizations_left(self) -> bool:
        """Whether an authorization is left for the reconciler's authorization pass to settle: one
        an edit left (`edit_authorizations_left`), or a closed order's own that the gateway could not
        settle (`own_void_owed`, `renewal_left`)."""
        return self.edit_authorizations_left or self.own_void_owed or self.renewal_left

    @property
    def renewal_left(self) -> bool:
        """Whether the cancelled order, or one with nothing left to ship nor to capture (a cancel of
        its last parcel's units released its authorization), still asks for a renewal of its
        authorization (`renewing_authorization`: a ship died after asking the gateway): its cancel
        could not release what the gateway holds under it (Cancellation.release_renewal), and
        nothing will ship the order to record it."""
        if self.renewing_authorization is None:
            return False
        if self.status is OrderStatus.CANCELLED:
            return True
        return self.status in _ALL_SHIPPED and self.payment.authorized <= self.payment.captured

    @property
    def authorized_version(self) -> int:
        """The version an authorization of this order is keyed by (see `priced_version`)."""
        return self.priced_version if self.priced_version is not None else self.version

    def authorization_versions(self) -> list[int]:
        """The versions an authorization of this order may have been asked under: its
        `authorized_version`; for one stored before `priced_version` existed, AuthorizePayment keyed
        each attempt by the version it read, which nothing recorded: every version the order had
        before it was closed (the write that closed it was never authorized)."""
        if self.priced_version is not None:
            return [self.priced_version]
        return list(range(1, self.version if self.status in TERMINAL else self.version + 1))

    def shipment(self, shipment_id: str) -> Shipment:
        found = next((s for s in self.shipments if s.id == shipment_id), None)
        if found is None:
            raise NotFound(f"no shipment {shipment_id} on order {self.id}")
        return found

    def parcel_id(self, location_id: str) -> str:
        """The id of a parcel made now at `location_id`: the same on every run of the step that
        makes it, and a new one once a change that may alter what the location packs (`rebookings`:
        each that withdraws parcels counts one) has passed, so a late confirmation of a parcel it
        withdrew never lands on the one made after it there (core.ids.shipment_id_for)."""
        return shipment_id_for(self.id, location_id, self.rebookings)

    def parcel_held_at(self, location_id: str) -> Shipment | None:
        """The parcel of this order that `location_id` holds to hand over (pending, or a pickup
        ready at the store); None when it holds none."""
        held = (ShipmentStatus.PENDING, ShipmentStatus.READY_FOR_PICKUP)
        return next((s for s in self.shipments if s.location_id == location_id and s.status in held), None)

    def check_nothing_held_at(self, location_id: str, withdrawn_id: str) -> None:
        """InvalidTransition when `location_id` holds a parcel of this order (parcel_held_at): its
        late reject of the parcel `withdrawn_id` a change withdrew cannot exclude it (reject_withdrawn)."""
        held = self.parcel_held_at(location_id)
        if held is not None:
            raise InvalidTransition(
                f"shipment {withdrawn_id} was withdrawn and location {location_id} holds parcel {held.id} of order "
                f"{self.id} now: reject that one if it cannot be supplied"
            )

    def location_of_parcel(self, shipment_id: str, location_ids: Iterable[str]) -> str | None:
        """Which of `location_ids` a parcel of this order with `shipment_id` was made at, whichever
        generation it was made in (parcel_id); None when none."""
        return next(
            (loc for loc in location_ids if loc and shipment_id in shipment_ids_for(self.id, loc, self.rebookings + 1)),
            None,
        )

    def booking_key_of(self, shipment_id: str) -> str:
        """The key the shipment's current carrier booking was made under (see `booking_keys`)."""
        return self.booking_keys.get(shipment_id, shipment_id)

    def owes_carrier_work(self) -> bool:
        """Whether the carrier is still to be asked something for this order: a pending parcel
        booked again (`labels_due`) or a booking cancelled (`bookings_to_cancel`)."""
        return bool(self.labels_due or self.bookings_to_cancel)

    @property
    def hold_expiry_counts_from(self) -> datetime | None:
        """When the hold expiry (OMS_HOLD_EXPIRY_DAYS) starts counting for this order: when it was
        put on hold. None when it is not on hold, or when its hold is the system's for an
        infrastructure failure (`hold.parked`: a park, Order.park, or a ship that died after its
        capture, Order.hold_unfinished_ships): it waits for a person, and only a business outcome
        cancels it. None too while a ship's capture request stands on it (unfinished_ships): a held
        order never ships, so that ship died, and its parcel may have left; the capture sweep makes
        the hold a park (Order.park_for_unfinished_ships), which an expiry that ran first would
        have cancelled, putting the parcel's units back on sale. And None while its carrier's scan
        says a pending parcel was delivered (parcels_scanned): the hold stops its location's ship,
        and the expiry's cancel would put the parcel's units back on sale and release the payment
        for goods the customer has; a person ends it (released, the parcel is shipped)."""
        if self.status is not OrderStatus.ON_HOLD or (self.hold is not None and self.hold.parked):
            return None
        if self.unfinished_ships() or (self.delivery_scans and self.parcels_scanned()):
            return None
        return self.in_status_since

    @property
    def ships_to_confirm_since(self) -> datetime | None:
        """When the hold began of an order held while a person is to confirm whether a parcel left
        after its ship died: the system's hold for that (Hold.confirms_ships), a person's hold made
        a park for it (Hold.ships_to_confirm), or a hold on which a ship's capture request still
        stands, which the capture sweep makes one of those only once the order is past its on_hold
        deadline (a held order never ships: that ship died). None otherwise: the jeopardy scan
        counts these for ShipsToConfirmAlarm, which stays on while any waits (a sparse index
        partition: the typical order has no entry)."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None:
            return None
        if self.hold.parked and (self.hold.confirms_ships or self.hold.ships_to_confirm):
            return self.hold.since
        return self.hold.since if self.unfinished_ships() else None

    def parcels_to_confirm(self) -> list[str]:
        """The shipments whose parcels the order's hold waits for a person to confirm: their ships
        died after asking for their captures, so each may be in the carrier's van (the system's
        hold for them, Hold.confirms_ships, a person's hold made a park for them,
        Hold.ships_to_confirm, or a hold a ship's capture request still stands on, unfinished_ships:
        a held order never ships, so that ship died, and the capture sweep names it only once the
        order is late on hold, as ships_to_confirm_since counts it from the start). Empty when it is
        not on such a hold. Until a person releases it (the parcels confirmed) or cancels the order,
        nothing may put their units back on sale or change their shipments (check_parcels_kept): an
        edit or a reject, which send the order back to be sourced, or a cancel of their units."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None:
            return []
        named = [*self.hold.confirms_ships, *self.hold.ships_to_confirm, *self.unfinished_ships()]
        return list(dict.fromkeys(named))

    def check_parcels_kept(self, what: str, shipment_ids: list[str] | None = None, *, scans: bool = True) -> None:
        """ParcelNotConfirmed (409) when `what` would touch a parcel waiting for a person to confirm
        whether it left (parcels_to_confirm), or, unless not `scans` (a person's cancel, who answers
        that), one its carrier scanned delivered before its ship was confirmed (parcels_scanned):
        those of `shipment_ids`, or with None any (an edit or a reject sends every parcel of the
        order back to be sourced). InvalidTransition (409) when it would touch one a carrier
        reported delivered whose ship is not finished (parcels_reported): it left, so its units are
        not put back on sale."""
        self.check_parcels_reported(what, shipment_ids)
        waiting = self.parcels_to_confirm()
        touched = [s for s in waiting if shipment_ids is None or s in shipment_ids]
        if not touched:
            if scans:
                self._check_parcels_scanned(what, shipment_ids)
            return
        raise ParcelNotConfirmed(
            f"order {self.id} waits for a person to confirm whether shipment {', '.join(touched)} left with "
            f"the carrier (its ship died after its capture): it cannot be {what} until the hold is released "
            f"(POST /orders/{self.id}/release: the parcel confirmed) or the order cancelled",
            details=[{"shipment_id": s, "message": "may have left with the carrier: to be confirmed by a person"}
                     for s in touched],
        )  # fmt: skip

    def check_parcels_reported(
        self, what: str, shipment_ids: list[str] | None = None, *, writes_off: Collection[str] = ()
    ) -> None:
        """InvalidTransition (409) when `what` would touch a parcel a carrier reported delivered
        whose ship is not recorded yet (parcels_reported; of `shipment_ids`, or with None any): it
        left, so its units are not put back on sale, whoever asks. But for those of `writes_off`
        (parcels_refused: a person's cancel writes them off, their units leaving on_hand)."""
        reported = [
            s for s in self.parcels_reported() if (shipment_ids is None or s in shipment_ids) and s not in writes_off
        ]  # fmt: skip
        if reported:
            refused = [s for s in self.parcels_refused() if s in reported]
            written_off = (
                f"; the gateway refused the capture of {', '.join(refused)}: a cancel of all its units by a key "
                "with orders:approve writes it off" if refused else ""
            )  # fmt: skip
            raise InvalidTransition(
                f"the carrier reported shipment {', '.join(reported)} of order {self.id} delivered (its ship died "
                f"after its capture): it cannot be {what}; the report sent again, a ship of it "
                f"(POST /orders/{self.id}/shipments/{reported[0]}/ship) records it shipped{written_off}",
                details=[{"shipment_id": s, "message": "reported delivered by its carrier: it left"}
                         for s in reported],
            )  # fmt: skip

    def parcels_scanned(self) -> list[str]:
        """The pending parcels their carrier scanned delivered before their location confirmed the
        ship (delivery_scans): the customer has them, by the carrier's word, which captures nothing
        (only the location's ship does) but puts nothing back on sale either."""
        scanned = {scan.shipment_id for scan in self.delivery_scans}
        return [s.id for s in self.shipments if s.id in scanned and s.status is ShipmentStatus.PENDING]

    def _check_parcels_scanned(self, what: str, shipment_ids: list[str] | None) -> None:
        """ParcelNotConfirmed (409) when `what` would touch a parcel of parcels_scanned (of
        `shipment_ids`, or with None any): cancelled, edited or sourced again, its units would go
        back on sale and its payment be released (or a second parcel sent) for goods the carrier
        delivered. Its location's ship records it shipped and delivered (its units are returned
        then); a person who finds it never left cancels it (orders:approve: check_parcels_kept)."""
        scanned = [s for s in self.parcels_scanned() if shipment_ids is None or s in shipment_ids]
        if not scanned:
            return
        raise ParcelNotConfirmed(
            f"the carrier scanned shipment {', '.join(scanned)} of order {self.id} delivered before its location "
            f"confirmed the ship: it cannot be {what}; the location's ship of it "
            f"(POST /orders/{self.id}/shipments/{scanned[0]}/ship) records it shipped and delivered (return its "
            "units then), and if it never left a key with orders:approve may cancel it",
            details=[{"shipment_id": s, "message": "scanned delivered by its carrier: its ship is to be confirmed"}
                     for s in scanned],
        )  # fmt: skip

    def parcels_refused(self) -> list[str]:
        """The parcels a carrier reported delivered whose ship is not recorded (parcels_reported)
        because the gateway refused its capture (`delivery_not_recorded`: ReportedDelivery.refused),
        with no capture asked for them standing (unfinished_ships: one may be in flight): the money
        will not come through the OMS, so a person's cancel of every unit of one writes it off
        (parcels_written_off)."""
        refused = {r.shipment_id for r in self.reported_delivered if r.refused}
        if not refused:
            return []
        standing = set(self.unfinished_ships())
        return [s for s in self.parcels_reported() if s in refused and s not in standing]

    def parcels_written_off(self, cancelled: dict[str, int]) -> list[str]:
        """The refused parcels (parcels_refused) a cancel of `cancelled` units ({line_id: units})
        writes off: each whose every unit it names (counting the parcels before it first). One it
        names only some units of is not touched (a parcel left whole: its units are not split)."""
        refused = self.parcels_refused()
        if not refused:
            return []
        left = dict(cancelled)
        off = []
        for shipment in self.shipments:
            if shipment.id in refused and all(left.get(i.line_id, 0) >= i.quantity for i in shipment.lines):
                for item in shipment.lines:
                    left[item.line_id] -= item.quantity
                off.append(shipment.id)
        return off

    def written_off(self) -> list[Shipment]:
        """The parcels a cancel wrote off (parcels_written_off): cancelled, their mark kept. Their
        units left with the carrier: their reservations leave on_hand, as a ship's do, and are
        never released (UnitCancellation._stock_moves, Cancellation._release)."""
        refused = {r.shipment_id for r in self.reported_delivered if r.refused}
        if not refused:
            return []
        return [s for s in self.shipments if s.id in refused and s.status is ShipmentStatus.CANCELLED]

    def check_write_off_finished(self, what: str) -> None:
        """InvalidTransition (409) when `what` would send the order back to be sourced (its shipments
        dropped: _sourced_again) while a cancel that wrote a parcel off (written_off) has not taken
        its units out of on_hand yet (stock_owed: its function died after its write). Dropped, that
        parcel would leave no record that its units left with the carrier, and its reservation
        (keyed by order and line) would count as the order's own when sourced again there, selling
        them a second time. The write-off repeated under its Idempotency-Key, or the reconciler's
        kept-back pass (UnitCancellation.release_owed), finishes that step; then `what` may go ahead."""
        if not self.stock_owed:
            return
        off = [shipment.id for shipment in self.written_off()]
        if off:
            raise InvalidTransition(
                f"order {self.id} wrote off shipment {', '.join(off)} and has not yet taken its units out of "
                f"on_hand: it cannot be {what} until that is done (repeat the write-off with its "
                "Idempotency-Key, or wait for the reconciler's next pass)"
            )

    def note_delivery_not_recorded(self, shipment_id: str, message: str, *, at: datetime, actor: str) -> Change:
        """A carrier's report of the marked parcel `shipment_id` could not ship it: the gateway
        refused its capture. The `delivery_not_recorded` entry (the shipment and the gateway's
        words), and the parcel's mark says so (ReportedDelivery.refused), in a version of its own,
        so a person's cancel of its units may write it off (parcels_refused)."""
        entry = HistoryEntry(
            at=at, type=OrderEvent.DELIVERY_NOT_RECORDED, actor=actor,
            detail={"shipment_id": shipment_id, "message": message[:500]},
        )  # fmt: skip
        reported = self.reported(shipment_id)
        if reported is None or reported.refused:
            return self, entry
        marks = [_replaced(r, refused=True) if r is reported else r for r in self.reported_delivered]
        return self._bookkeeping(at=at, reported_delivered=marks)[0], entry

    def refused_reports_from(self, history: list[HistoryEntry], *, at: datetime) -> Bookkeeping | None:
        """The one-off upgrade of an order whose carrier's report of a marked parcel met the
        gateway's refusal before the mark said so (ReportedDelivery.refused): each pending parcel
        still marked (parcels_reported) whose `delivery_not_recorded` `history` holds is marked
        refused, as note_delivery_not_recorded marks it in the same write now. That entry is the
        refusal known: a person was called for it. One an earlier version recorded with none (the
        refusal of a parcel a report shipped with another's, of a second parcel right after a
        first's) may be a report's or an older ship's: not known, left unmarked, so the kept-back
        pass asks its capture again and records the refusal that marks it (reported_to_finish).
        None when nothing is marked. Bookkeeping, for infra.backfill_orders."""
        marked = {r.shipment_id for r in self.reported_delivered if r.refused}
        unmarked = [s for s in self.parcels_reported() if s not in marked]
        noted = {
            (entry.detail or {}).get("shipment_id") for entry in history
            if entry.type is OrderEvent.DELIVERY_NOT_RECORDED
        }  # fmt: skip
        refused = [s for s in unmarked if s in noted]
        if not refused:
            return None
        marks = [_replaced(r, refused=True) if r.shipment_id in refused else r for r in self.reported_delivered]
        return self._bookkeeping(at=at, reported_delivered=marks)

    def parcels_reported(self) -> list[str]:
        """The pending parcels a carrier reported delivered whose ship is not recorded yet
        (reported_delivered): they left, so nothing may put their units back on sale."""
        marked = {r.shipment_id for r in self.reported_delivered}
        return [s.id for s in self.shipments if s.id in marked and s.status is ShipmentStatus.PENDING]

    def reported_to_finish(self) -> list[str]:
        """The parcels a carrier reported delivered (reported_delivered) whose ship or delivery is
        not recorded yet, for the reconciler's kept-back pass to finish (OrderActions.finish_reported:
        the report's function died after marking it, and nobody reports it again): none while the
        order is on hold (it ships once the hold ends: the release puts it back here) or closed,
        nor one pending whose capture the gateway refused (`refused`: the report's refusal;
        `given_up`: that pass's), left to a person (DeliveriesNotRecordedAlarm: they may take the
        money another way, or write the parcel off), unless a capture asked for it stands again
        (unfinished_ships: a person's ship of it died after asking; the gateway may have made it,
        and the ship's key asked again answers it). One shipped is delivered whatever was refused
        before (a person's ship that died before the delivery it records too: no gateway asked).
        Never any on the typical order (no mark)."""
        if not self.reported_delivered or self.status is OrderStatus.ON_HOLD or self.status in TERMINAL:
            return []
        standing = set(self.unfinished_ships())
        refused = {
            r.shipment_id for r in self.reported_delivered
            if (r.given_up or r.refused) and r.shipment_id not in standing
        }  # fmt: skip
        marked = {r.shipment_id for r in self.reported_delivered}
        return [
            s.id for s in self.shipments
            if s.id in marked and (
                s.status is ShipmentStatus.SHIPPED or (s.status is ShipmentStatus.PENDING and s.id not in refused)
            )
        ]  # fmt: skip

    def give_up_reported(self, shipment_id: str, *, at: datetime) -> Bookkeeping:
        """The reconciler's kept-back pass met the gateway's refusal of the capture of the parcel
        of `shipment_id` a carrier reported delivered (recorded as the report's is:
        `delivery_not_recorded`): it asks no more (reported_to_finish), the parcel still marked, so
        nothing puts its units back on sale; a person's ship of it, or its carrier's next report,
        finishes it. Bookkeeping: the refusal's entries are the record. InvalidTransition when the
        parcel is not marked, or given up already."""
        reported = self.reported(shipment_id)
        if reported is None or reported.given_up:
            raise InvalidTransition(f"shipment {shipment_id} has no report for the reconciler to give up")
        marks = [_replaced(r, given_up=True) if r is reported else r for r in self.reported_delivered]
        return self._bookkeeping(at=at, reported_delivered=marks)

    def _parcels_kept(self, *, scans: bool = True) -> set[str]:
        """The parcels no cancel of units may take units from: those waiting for a person to confirm
        whether they left (parcels_to_confirm), those a carrier reported delivered (parcels_reported)
        and, unless not `scans` (a person's cancel), those it scanned delivered (parcels_scanned)."""
        return {*self.parcels_to_confirm(), *self.parcels_reported(), *(self.parcels_scanned() if scans else ())}

    def delivery_scan(self, shipment_id: str) -> DeliveryScan | None:
        """The carrier's scan of the parcel of `shipment_id` delivered before its ship was confirmed,
        kept for that ship (delivery_scans), if any."""
        return next((scan for scan in self.delivery_scans if scan.shipment_id == shipment_id), None)

    def keep_delivery_scan(self, shipment_id: str, delivered_at: datetime, *, at: datetime, actor: str) -> Change:
        """A carrier scanned the pending parcel of `shipment_id` delivered by `delivered_at`, and
        nobody has confirmed its ship: the scan is kept (delivery_scans, a `delivery_scan_kept`
        entry for the person who finds the order late), and the ship that confirms the hand-over
        delivers it at that time. Its share is captured by that ship only: the carrier's word is no
        location's hand-over, which is what the contract captures on. InvalidTransition for a
        pickup (no carrier hands one over), a parcel not pending, or one whose scan is kept already."""
        shipment = self.shipment(shipment_id)
        if self.fulfillment.type == "pickup" or shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}: no scan is kept for it")
        if self.delivery_scan(shipment_id) is not None:
            raise InvalidTransition(f"a delivery scan of shipment {shipment_id} is kept already")
        scan = DeliveryScan(shipment_id=shipment_id, booking_key=self.booking_key_of(shipment_id), at=delivered_at)
        return self._next(
            at=at, actor=actor, type=OrderEvent.DELIVERY_SCAN_KEPT,
            detail={"shipment_id": shipment_id, "delivered_at": utc_text(delivered_at)},
            delivery_scans=[*self.delivery_scans, scan],
        )  # fmt: skip

    def reported(self, shipment_id: str) -> ReportedDelivery | None:
        """The carrier's report that the parcel of `shipment_id` arrived, while its ship or delivery
        is not recorded yet (reported_delivered)."""
        return next((r for r in self.reported_delivered if r.shipment_id == shipment_id), None)

    def delivery_confirms(self, shipment_id: str) -> bool:
        """Whether a carrier's report that the pending parcel of `shipment_id` arrived answers the
        order's hold for it: the system's hold for a person to confirm whether parcels left, which
        names it (Hold.confirms_ships), no person's hold before it (Hold.ships_to_confirm: their
        reason is no question the carrier answers). The report is proof that parcel left, as a
        person's release of the hold would say; other parcels the hold names still wait for a
        person (Order.report_delivered)."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None or not self.hold.parked:
            return False
        return not self.hold.ships_to_confirm and shipment_id in self.hold.confirms_ships

    def report_delivered(
        self, shipment_id: str, left_at: datetime, *, at: datetime, actor: str
    ) -> Change | Bookkeeping:
        """A carrier reported the pending parcel of `shipment_id` delivered by `left_at` while its
        ship, dead after asking for its capture, never recorded it: proof it left. Marked on the
        order (reported_delivered) in the same write that ends what waited on it, before the ship
        that records it (OrderActions.deliver), so nothing can put its units back on sale between.
        On the system's hold for a person to confirm whether parcels left that names it
        (delivery_confirms), that hold is released by the report, its note saying so: back to the
        status the hold resumes to, or, when the hold names other parcels too, held still for those
        alone (a `released` entry that changes no status, `detail.shipment_ids` the parcels still to
        confirm; the marked parcel ships once a person releases them). On an order not held whose
        ship of that parcel still has its capture request standing (unfinished_ships), only marked
        (bookkeeping: its ship's entry follows). InvalidTransition for anything else: a pickup, a
        parcel not pending, or marked already on an order not held, a person's hold, a parcel
        nobody's ship died for."""
        shipment = self.shipment(shipment_id)
        if self.fulfillment.type == "pickup" or shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}: nothing to report shipped")
        reported = self.reported(shipment_id) is not None
        marked = [
            *self.reported_delivered,
            *([] if reported else [ReportedDelivery(shipment_id=shipment_id, at=left_at)]),
        ]
        if self.status is OrderStatus.ON_HOLD:
            # Marked already and held for it again (the capture sweep found its request standing
            # after a report died before its ship): this report answers that hold too.
            if not self.delivery_confirms(shipment_id):
                raise InvalidTransition(f"order {self.id} is on a hold the carrier's report does not answer")
            assert self.hold is not None
            detail: dict[str, Any] = {"reason": self.hold.reason, "note": reported_delivered_note(shipment_id)}
            rest = [s for s in self.parcels_to_confirm() if s != shipment_id and self.reported(s) is None]
            if rest:
                hold = _replaced(self.hold, note=_unfinished_ships_note(rest), confirms_ships=rest)
                return self._next(
                    at=at, actor=actor, type=OrderEvent.RELEASED, detail={**detail, "shipment_ids": rest}, hold=hold,
                    reported_delivered=marked,
                )  # fmt: skip
            return self._next(
                at=at, actor=actor, type=OrderEvent.RELEASED, to=self.hold.resume_to, detail=detail, hold=None,
                reported_delivered=marked, **self._resumed_clock(at),
            )  # fmt: skip
        if reported:
            raise InvalidTransition(f"shipment {shipment_id} is reported delivered already")
        if shipment_id not in self.unfinished_ships():
            raise InvalidTransition(f"shipment {shipment_id} has not been confirmed shipped")
        return self._bookkeeping(at=at, reported_delivered=marked)

    def unfinished_ships(self) -> list[str]:
        """The shipments whose ship (or collect) asked for a capture that still waits for it: not
        recorded, and not taken back by a change the ship would have lost to (that ship answered
        409)."""
        return [r.shipment_id for r in self.captures_requested if r.shipment_id is not None and not r.withdrawn]

    def captures_to_settle(self) -> list[CaptureRequest]:
        """The capture requests (captures_requested) the capture sweep settles on an order nobody
        ships again, and the jeopardy scan hands on for it: all but those of parcels a carrier
        reported delivered (parcels_reported). Those left: their ships finish them under the same
        key (the report sent again, a person's ship, the reconciler's kept-back pass:
        reported_to_finish), never a refund and a hold for a person to confirm what the carrier said.
        All of them on the typical order (no mark)."""
        if not self.reported_delivered:
            return self.captures_requested
        reported = set(self.parcels_reported())
        return [r for r in self.captures_requested if r.shipment_id not in reported]

    @property
    def open_at_store(self) -> str | None:
        """The store a pickup order has work waiting at (its `fulfillment.location_id`, its only
        source: core.sourcing.eligible_locations) from when it is placed until it is collected or
        ends (OPEN_AT_STORE); None for an order shipped home, and once it is done there."""
        if self.fulfillment.type != "pickup" or self.status not in OPEN_AT_STORE:
            return None
        return self.fulfillment.location_id

    def pickup_deadline(self) -> datetime | None:
        """The earliest `collect_by` of a pickup waiting at its store; None while none waits, or
        while the order is on hold (nothing expires a held order's pickup: core/pickups.py)."""
        if self.status is OrderStatus.ON_HOLD:
            return None
        waiting = [s.collect_by for s in self.shipments if s.status is ShipmentStatus.READY_FOR_PICKUP and s.collect_by]
        return min(waiting, default=None)

    def _picked(self) -> bool:
        """Whether every parcel is past the store's picking and one waits for the customer."""
        return not any(s.status is ShipmentStatus.PENDING for s in self.shipments) and any(
            s.status is ShipmentStatus.READY_FOR_PICKUP for s in self.shipments
        )

    def _pending_besides(self, shipment_id: str) -> bool:
        return any(s.status is ShipmentStatus.PENDING and s.id != shipment_id for s in self.shipments)

    def _share(self, shipment: Shipment) -> Money:
        by_line = {line.line_id: line for line in self.lines}
        share = Money.zero(self.currency)
        for item in shipment.lines:
            line = by_line[item.line_id]
            share = share + line.total.times(Decimal(item.quantity) / Decimal(line.quantity))
        return share

    def capture_due(self, shipment_id: str) -> Money:
        """What shipping `shipment_id` captures: its lines' share of their totals, and for the
        order's first shipment also the shipping and whatever rounding leaves, so the captures add
        up to the grand total exactly in whatever order the parcels leave (and two ships at once
        cannot disagree). The last pending shipment takes whatever is left; never more. A parcel a
        cancel of units emptied (`cancelled`) ships nothing and has no share."""
        shipment = self.shipment(shipment_id)
        zero = Money.zero(self.currency)
        if not self.payment.authorization or shipment.status is ShipmentStatus.CANCELLED:
            return zero
        remaining = self.payable() - self.payment.captured
        if not self._pending_besides(shipment_id):
            # Never negative: a cancel that left the captures above the new total refunded the
            # excess, so the last parcel is paid for already.
            return max(remaining, zero, key=lambda m: m.amount)
        live = [s for s in self.shipments if s.status is not ShipmentStatus.CANCELLED]
        if shipment.id == live[0].id:
            others = [self._share(s) for s in live[1:]]
            planned = self.payable() - sum(others, zero) if others else remaining
        else:
            planned = self._share(shipment)
        # Never negative: units cancelled after a capture can leave the order captured beyond its new
        # total (that over-capture is refunded by the cancel, core.unit_cancellation).
        due = min(max(planned, zero, key=lambda m: m.amount), remaining, key=lambda m: m.amount)
        return max(due, zero, key=lambda m: m.amount)

    def captures_reversed(self, shipment_id: str) -> int:
        """How many captures for a shipment of this id were given back (core/payment_keys.py)."""
        return self.reversed_captures.count(shipment_id)

    def capture_request(self, shipment_id: str | None) -> CaptureRequest | None:
        """The capture asked for `shipment_id` (None: the settlement) and not recorded yet, if any."""
        return next((r for r in self.captures_requested if r.shipment_id == shipment_id), None)

    def capture_authorization(self, shipment_id: str | None) -> str:
        """The authorization the capture for `shipment_id` (None: the settlement) is asked under:
        its request's (CaptureRequest.authorization), else the payment's own."""
        request = self.capture_request(shipment_id)
        return (request.authorization if request else None) or self.payment.authorization or ""

    def capture_keyed_under(self, shipment_id: str | None) -> str | None:
        """The authorization the key of the capture for `shipment_id` (None: the settlement) names
        (core/payment_keys.py): the one it is asked under (capture_authorization) when that replaced
        another (`later_authorizations`); None for the order's first, keyed as ever."""
        authorization = self.capture_authorization(shipment_id)
        return authorization if authorization in self.later_authorizations else None

    def _captured_apart(self, shipment_id: str | None, amount: Money, payment: Payment) -> dict[str, Any]:
        """The fields that record a capture of `amount` (for `shipment_id`; None: the settlement),
        `payment` the version's with it counted. One made under an authorization a renewal replaced
        while it was asked (its request's) is counted under that one (earlier_captures), not the
        current one, and `payment.authorized` grows by it: the renewal authorized what was left to
        capture, this capture's share included, which the current authorization holds still until
        it is released (nothing left to ship: core.unit_cancellation). Just `payment` for any other
        capture. The capture that leaves nothing to capture drops `authorized_at`, which no longer
        says anything (authorization_lapsed): a shipped or delivered order stores none."""
        authorization = self.capture_authorization(shipment_id)
        if not authorization or authorization == self.payment.authorization or amount.amount <= 0:
            return {"payment": payment, **self._spent(payment)}
        shipments = [shipment_id] if shipment_id else []
        earlier = [_replaced(e, captured=e.captured + amount, shipments=[*e.shipments, *shipments])
                   if e.authorization == authorization else e for e in self.earlier_captures]  # fmt: skip
        if all(e.authorization != authorization for e in earlier):
            earlier.append(EarlierCaptures(authorization=authorization, captured=amount, shipments=shipments))
        payment = _replaced(payment, authorized=payment.authorized + amount)
        return {"payment": payment, "earlier_captures": earlier, **self._spent(payment)}

    def _spent(self, payment: Payment) -> dict[str, Any]:
        """`authorized_at` dropped once `payment` (the next version's) has nothing left to capture:
        it no longer says anything (authorization_lapsed), so a shipped or delivered order stores
        none. Nothing when it is dropped already."""
        return {"authorized_at": None} if self.authorized_at and payment.authorized <= payment.captured else {}

    def capturing_under(self, authorization: str) -> bool:
        """Whether a capture asked under `authorization` stands (CaptureRequest.authorization: a
        ship in flight, or one that died after the gateway answered): an authorization a renewal
        replaced is not voided while one does, since that capture is asked again, given back or
        recorded under it."""
        return any(request.authorization == authorization for request in self.captures_requested)

    def _requests_besides(self, shipment_id: str | None) -> list[CaptureRequest]:
        return [r for r in self.captures_requested if r.shipment_id != shipment_id]

    def request_capture(self, shipment_id: str, amount: Money, *, at: datetime) -> Bookkeeping:
        """Written before a ship or collect asks the gateway for the shipment's share (`amount`),
        so a capture the gateway makes is on the order even when the request dies before recording
        it: the ship repeated records it, and a cancel, reject or cancel of units refunds it first
        (core.cancellation.Cancellation.settle_capture_requests). Bookkeeping: the history tells
        the outcome (`shipment_shipped` with what was captured, `payment_capture_failed`,
        `payment_capture_reversed`, `capture_not_made`), not the request, which keeps the item of a
        delivered order within one write unit."""
        shipment = self.shipment(shipment_id)
        if shipment.status is ShipmentStatus.READY_FOR_PICKUP:
            self.ready_to_collect(shipment_id)
        else:
            self.ready_to_ship(shipment_id)
        if self.capture_request(shipment_id) is not None:
            raise InvalidTransition(f"a capture for shipment {shipment_id} is requested already")
        request = CaptureRequest(shipment_id=shipment_id, amount=amount, authorization=self.payment.authorization)
        return self._requested(request, at=at)

    def request_settlement_capture(self, amount: Money, *, at: datetime) -> Bookkeeping:
        """Written before the settlement capture (`amount`, the rest of a total that cancelled units
        left higher than the captures, once no parcel is pending) is asked of the gateway, as
        request_capture is before a shipment's: whatever settles the payment next (the cancel or
        the last ship repeated, or Cancellation.settle_capture_requests) asks again under its key
        for its amount and records it. Nothing left to ship can change what it is owed, so it is
        never given back. Bookkeeping, as request_capture."""
        if not self.payment.authorization or any(s.status in NOT_LEFT for s in self.shipments):
            raise InvalidTransition(f"order {self.id} has parcels to ship or nothing authorized: nothing to settle")
        if amount.currency != self.currency or amount.amount <= 0:
            raise InvalidTransition(f"a settlement capture is a positive amount in {self.currency}")
        if self.capture_request(None) is not None:
            raise InvalidTransition(f"a settlement capture of order {self.id} is requested already")
        return self._requested(CaptureRequest(amount=amount, authorization=self.payment.authorization), at=at)

    def _requested(self, request: CaptureRequest, *, at: datetime) -> Bookkeeping:
        return self._bookkeeping(at=at, captures_requested=[*self.captures_requested, request])

    def withdraw_capture_request(self, shipment_id: str, *, at: datetime, actor: str) -> Change:
        """Take a capture request back from its ship before the order changes under it: the ship may
        no longer record that capture, which is refunded if it was made."""
        request = self.capture_request(shipment_id)
        if request is None or request.withdrawn:
            raise InvalidTransition(f"no capture for shipment {shipment_id} is waiting to be recorded")
        return self._next(
            at=at, actor=actor, type=OrderEvent.CAPTURE_WITHDRAWN, detail={"shipment_id": shipment_id},
            captures_requested=[*self._requests_besides(shipment_id), _replaced(request, withdrawn=True)],
        )  # fmt: skip

    def record_capture_not_made(
        self, shipment_id: str | None, message: str, *, at: datetime, actor: str, refused: bool = True,
        noted: bool = True,
    ) -> Change | Bookkeeping:  # fmt: skip
        """The gateway refused the requested capture (`shipment_id` None: the settlement) when it
        was asked: it was never made, and the authorization it was asked under is renewed before
        anything more is captured on it (`spent_authorizations`: the issuer may have let it lapse
        early, and asked again under the same key the gateway answers with that refusal). Not when
        the gateway was never asked (`refused` False: no payment plugin took the order's method),
        nor when that authorization is a renewal made for such a refusal already (`refusal_renewal`:
        the capture is asked again on it). Not `noted`: the history ends with this very refusal
        already (a ship repeated on a loop, core.cancellation.Cancellation.refusal_recorded_last),
        so the request goes as bookkeeping, with no entry."""
        request = self.capture_request(shipment_id)
        if request is None:
            raise InvalidTransition(f"no capture for shipment {shipment_id} is requested")
        detail = {"shipment_id": shipment_id} if shipment_id else {"amount": request.amount.model_dump(mode="json")}
        authorization = self.capture_authorization(shipment_id)
        spent = refused and authorization != self.refusal_renewal
        changes = {"captures_requested": self._requests_besides(shipment_id),
                   **(self._spending(authorization) if spent else {})}  # fmt: skip
        if not noted:
            return self._bookkeeping(at=at, **changes)
        return self._next(
            at=at, actor=actor, type=OrderEvent.CAPTURE_NOT_MADE, detail={**detail, "message": message[:500]},
            **changes,
        )  # fmt: skip

    def record_settlement_not_made(self, amount: Money, message: str, *, at: datetime, actor: str) -> Change:
        """The settlement capture (`amount`, what the captures fall short of the total once nothing
        is left to ship) was not asked: the gateway declined the renewal of the authorization it
        would be asked under (`message`), so none was made (`capture_not_made`, the amount and no
        shipment, as a refused one records: SettlementCapturesNotMade). No request stood, and the
        authorization stays as it was (spent or old: the next ask renews it again)."""
        if self.capture_request(None) is not None:
            raise InvalidTransition(f"a settlement capture of order {self.id} is requested: its answer is recorded")
        if amount.currency != self.currency or amount.amount <= 0:
            raise InvalidTransition(f"a settlement capture is a positive amount in {self.currency}")
        return self._next(
            at=at, actor=actor, type=OrderEvent.CAPTURE_NOT_MADE,
            detail={"amount": amount.model_dump(mode="json"), "message": message[:500]},
        )  # fmt: skip

    def _spending(self, authorization: str) -> dict[str, Any]:
        """`spent_authorizations` with `authorization`, when it is the order's current one (the only
        one renewed: authorization_lapsed) and not there already."""
        spent = self.spent_authorizations
        if not authorization or authorization != self.payment.authorization or authorization in spent:
            return {}
        return {"spent_authorizations": [*spent, authorization]}

    def check_seen(self, if_match: int | None) -> None:
        """Refuse a change a person decided from version `if_match` (their If-Match) of an order at
        another version: StaleVersion, 409 `version_conflict`, naming the current one. None: they
        named none, and the change is decided on the order as it is."""
        if if_match is not None and self.version != if_match:
            raise StaleVersion.unseen(f"order {self.id}", self.version, if_match)

    def edits_from(self, if_match: int) -> bool:
        """Whether an edit asked to change version `if_match` may change this order: it is that
        version, or the next only by that edit's own request for an authorization (the edit
        repeated after it died, or while it is in flight, with the same If-Match)."""
        request = self.authorization_requested
        own = request is not None and not request.withdrawn and request.edit_of == if_match
        return self.version == if_match or (own and self.version == if_match + 1)

    def request_reauthorization(self, amount: Money, *, at: datetime) -> Bookkeeping:
        """Written before an edit asks the gateway to authorize its grown total (`amount`), so an
        authorization the gateway makes is on the order even when the edit dies before recording
        it: the edit repeated records it (edits_from), and whatever finds it otherwise voids it.
        Bookkeeping, as request_capture: the edit's entry (`edited`, with what was authorized) or
        the void's tells the outcome."""
        self.check_editable()
        if self.payment.status is not PaymentStatus.AUTHORIZED:
            raise InvalidTransition(f"a payment that is {self.payment.status} is not authorized again by an edit")
        if self.authorization_requested is not None:
            raise InvalidTransition(f"an authorization for an edit of order {self.id} is requested already")
        request = AuthorizationRequest(edit_of=self.version, amount=amount)
        return self._bookkeeping(at=at, authorization_requested=request)

    def withdraw_reauthorization(self, *, at: datetime) -> Bookkeeping:
        """Take the requested authorization back from its edit before it is voided: the edit may no
        longer record it (its write expects the version this one replaces). Bookkeeping: the
        void's entry tells it."""
        request = self.authorization_requested
        if request is None or request.withdrawn:
            raise InvalidTransition(f"no authorization for an edit of order {self.id} is waiting to be recorded")
        return self._bookkeeping(at=at, authorization_requested=_replaced(request, withdrawn=True))

    def record_reauthorization_voided(
        self, authorization: str | None, reference: str | None, *, at: datetime, actor: str
    ) -> Change | Bookkeeping:
        """The requested authorization, withdrawn from its edit (or asked by an edit that can no
        longer record it), was voided (`payment_voided`), or with no `authorization` the gateway
        declined it when asked again: none was made (bookkeeping: the decline is in the history)."""
        request = self.authorization_requested
        if request is None:
            raise InvalidTransition(f"no authorization for an edit of order {self.id} is requested")
        if authorization is None:
            return self._bookkeeping(at=at, authorization_requested=None)
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_VOIDED,
            detail={"authorization": authorization, "reference": reference,
                    "amount": request.amount.model_dump(mode="json"),
                    "reason": "asked for by an edit that did not record it"},
            authorization_requested=None,
        )  # fmt: skip

    def authorization_lapsed(self, valid_for: timedelta, now: datetime) -> bool:
        """Whether the authorization that captures this order's next share is at least `valid_for`
        old (`authorized_at`): the gateway may have let it lapse, so it is authorized again before
        anything is captured on it (core.fulfillment). So is one a capture given back spent, or
        the gateway refused a capture on (`spent_authorizations`).
        False when nothing is left on it to capture."""
        payment = self.payment
        if payment.status not in _CAPTURABLE or not payment.authorization or payment.authorized <= payment.captured:
            return False
        if payment.authorization in self.spent_authorizations:
            return True
        return self.authorization_old(valid_for, now)

    def authorization_old(self, valid_for: timedelta, now: datetime) -> bool:
        """Whether the order's authorization is at least `valid_for` old (`authorized_at`; an order
        stored before it existed counts from `created_at`)."""
        return now - (self.authorized_at or self.created_at) >= valid_for

    def request_renewal(self, *, at: datetime, declined_before: int = 0) -> Bookkeeping:
        """Written before a ship, collect or settlement capture asks the gateway to authorize the
        lapsed authorization again (`renewing_authorization`), so what the gateway authorizes is
        never left behind: the ship repeated asks under the same key and records it
        (renew_authorization), and a cancel releases it
        (core.cancellation.Cancellation.release_renewal), each for what the authorization has left
        to capture now, but never more than the order can still capture (`renewal_amount`:
        _renewal_due). `declined_before`: the renewals of it the gateway declined before
        (`renewal_declined_before`, which its key counts). Bookkeeping, as request_capture."""
        if self.renewing_authorization is not None or not self.payment.authorization:
            raise InvalidTransition(f"order {self.id} is renewing its authorization already, or has none")
        return self._bookkeeping(
            at=at, renewing_authorization=self.payment.authorization, renewal_declined_before=declined_before,
            renewal_amount=self._renewal_due(),
        )  # fmt: skip

    def _renewal_due(self) -> Money:
        """What a renewal authorizes: what the lapsed authorization has left to capture, but no more
        than the order may still capture: what it owes (`payable`, after an edit or a cancel took
        units off it) beyond its captures, plus its refunds (a settlement captures again what a
        cancel's refund gave back). A customer who took an order down is not held for, nor declined
        on, the total it had. What is left when nothing is owed (the capture asks for nothing)."""
        payment = self.payment
        left = payment.authorized - payment.captured
        refunds = sum((refund.amount for refund in payment.refunds), Money.zero(self.currency))
        owed = self.payable() - payment.captured + refunds
        return owed if 0 < owed.amount < left.amount else left

    def authorization_covers(self) -> Money:
        """What the order's authorizations cover: `payment.authorized`, but while a renewal of its
        authorization stands (`renewing_authorization`), its captures and what the renewal asks for
        (`renewal_amount`), all they cover once it is recorded (renew_authorization). An edit to a
        total beyond it is authorized again (core.fulfillment), or the renewal would leave the new
        total's capture more than its authorization holds."""
        if self.renewing_authorization is None or self.renewal_amount is None:
            return self.payment.authorized
        return self.payment.captured + self.renewal_amount

    def renew_authorization(self, amount: Money, reference: str, *, at: datetime, actor: str) -> Change:
        """The gateway authorized again (`reference`, for `amount`: what the lapsed authorization
        had left to capture, or less, request_renewal) the authorization this order was renewing,
        which it replaces (`replaced_authorizations`) until it is voided. `payment.authorized` is
        the total the order's authorizations covered: its captures and the new one. A capture
        request stored before requests named their authorization is asked under `old`, and now says so.
        A renewal of one a capture was refused on or given back is kept as `refusal_renewal`."""
        old = self.renewing_authorization
        if old is None or self.payment.authorization != old:
            raise InvalidTransition(
                f"order {self.id} is not renewing its authorization {_shown_reference(self.payment.authorization)}"
            )
        requests = [r if r.authorization else _replaced(r, authorization=old) for r in self.captures_requested]
        spent = old in self.spent_authorizations
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_AUTHORIZED,
            detail={"amount": amount.model_dump(mode="json"), "reference": reference, "replaces": old,
                    "reason": "a capture on the authorization was refused, or given back"
                    if spent else "the authorization was old enough for the gateway to let it lapse"},
            authorized_at=at, renewing_authorization=None, renewal_declined_before=0, renewal_amount=None,
            refusal_renewal=reference if spent else None,
            replaced_authorizations=[*self.replaced_authorizations, old],
            later_authorizations=_later_kept(self.later_authorizations, requests, reference),
            spent_authorizations=[a for a in self.spent_authorizations if a != old], captures_requested=requests,
            **self._replacing(_replaced(self.payment, authorization=reference,
                                        authorized=self.payment.captured + amount)),
        )  # fmt: skip

    def _replacing(self, payment: Payment) -> dict[str, Any]:
        """The fields of a version whose `payment` is authorized anew: what was captured under the
        authorization it replaces is kept apart (`earlier_captures`, with the shipments that
        captured it: those not kept apart before), and each refund made against it names it
        (PaymentRefund.authorization). Just `payment` when nothing was captured under it."""
        old = self.payment.authorization
        earlier = self.earlier_captures
        captured = self.payment.captured - sum((e.captured for e in earlier), Money.zero(self.currency))
        if not old or payment.authorization == old or captured.amount <= 0:
            return {"payment": payment}
        kept = {shipment_id for e in earlier for shipment_id in e.shipments}
        shipments = [s.id for s in self.shipments if s.captured is not None and s.id not in kept]
        refunds = [_replaced(r, authorization=old) if r.authorization is None and r.parts is None else r
                   for r in payment.refunds]  # fmt: skip
        return {
            "payment": _replaced(payment, refunds=refunds),
            "earlier_captures": [*earlier, EarlierCaptures(authorization=old, captured=captured, shipments=shipments)],
        }

    def drop_renewal(self, *, at: datetime) -> Bookkeeping:
        """The renewal asked for (`renewing_authorization`) is settled without being recorded: the
        gateway declined it (in the history), or what it made was released. Bookkeeping."""
        if self.renewing_authorization is None:
            raise InvalidTransition(f"order {self.id} is not renewing its authorization")
        return self._bookkeeping(at=at, renewing_authorization=None, renewal_declined_before=0, renewal_amount=None)

    def ready_to_ship(self, shipment_id: str) -> Shipment:
        """The pending shipment, if the order may ship it now; InvalidTransition otherwise (a
        pickup order's shipment is never shipped: readied, then collected at its store)."""
        shipment = self.shipment(shipment_id)
        if self.fulfillment.type == "pickup":
            raise InvalidTransition(f"shipment {shipment_id} is a pickup: it is made ready, then collected")
        if shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}, not pending")
        if self.status not in (OrderStatus.ALLOCATED, OrderStatus.PARTIALLY_SHIPPED):
            raise InvalidTransition(f"an order that is {self.status} cannot ship")
        return shipment

    def check_editable(self) -> None:
        """Editable before stock is reserved, and allocated or backordered (held or not) until
        anything left (then it is sourced again). An authorized order in the middle of reserving is
        not: its workflow is about to allocate it, and a moment later it is editable again. Nor is
        one with a shipment's capture requested: that shipment is being shipped (or its ship died,
        and is repeated or the order cancelled)."""
        # An edit sends every parcel back to be sourced, its units released or kept on a new plan.
        # (First: on a hold, a ship's capture request standing is a ship that died, not one under way.)
        self.check_parcels_kept("edited")
        self.check_write_off_finished("edited")
        shipping = next((r.shipment_id for r in self.captures_requested if r.shipment_id), None)
        if shipping is not None:
            raise InvalidTransition(f"shipment {shipping} of order {self.id} is being shipped; it cannot be edited")
        if self.status in RESOURCEABLE:
            # A pickup waiting at its store has not shipped (API.md: edits until the first shipment
            # ships): the edit withdraws it with the rest, and the store picks the new parcel.
            self._check_nothing_left("edited", picked_goes=True)
        elif self._held_with_stock() or (self.status is OrderStatus.ON_HOLD and self.waits_for_stock()):
            # Held for review (an address to fix): edited on hold, so nothing ships before the fix.
            # Held while backordered too (nothing of it has shipped): its hold then resumes to
            # `authorized`, so its release sources it again (_sourced_again), as after a cancel of units.
            self._check_nothing_left("edited", picked_goes=True)
        elif self.status not in EDITABLE:
            # Once anything has shipped (API.md): named, as the statuses that follow it keep allocations.
            self._check_nothing_left("edited", picked_goes=True)
            raise InvalidTransition(f"an order that is {self.status} can no longer be edited")
        elif self.allocations:
            raise InvalidTransition(f"an order that is {self.status} and has stock reserved can no longer be edited")

    def _check_resourceable(self, what: str) -> None:
        if self.status not in RESOURCEABLE:
            raise InvalidTransition(f"an order that is {self.status} cannot be {what} now")
        self._check_nothing_left(what)

    def _check_nothing_left(self, what: str, *, picked_goes: bool = False) -> None:
        # A parcel a cancel of units emptied (cancelled) never left: it goes with the pending ones;
        # with `picked_goes` (an edit), a pickup waiting at its store too.
        stay = {ShipmentStatus.PENDING, ShipmentStatus.CANCELLED}
        if picked_goes:
            stay.add(ShipmentStatus.READY_FOR_PICKUP)
        left = next((s for s in self.shipments if s.status not in stay), None)
        if left is not None:
            raise InvalidTransition(f"shipment {left.id} is {left.status}: the order can no longer be {what}")

    def _held_with_stock(self) -> bool:
        """On hold from allocated, or with stock reserved (held between reserving and allocating):
        an edit sources it again, when it is released. (Held while backordered is another case:
        waits_for_stock.)"""
        return (
            self.status is OrderStatus.ON_HOLD
            and self.hold is not None
            and self.hold.resume_to is not OrderStatus.BACKORDERED
            and (self.hold.resume_to is OrderStatus.ALLOCATED or bool(self.allocations))
        )

    def next_line_number(self) -> int:
        """The number an edit's first line takes (`L<n>`): after the highest line id the order has,
        the lines edits replaced and still owe a release included. An edit numbers every line it
        sends after them, so ids only grow and the highest the order has is the highest it ever had
        (no counter stored): an id names one line for the order's whole life, and a cancel, a pick
        slip or an event keyed by an id from before an edit never names other goods."""
        numbers = [int(found.group(1)) for line in (*self.lines, *self.replaced_lines)
                   if (found := _LINE_NUMBER.fullmatch(line.line_id))]  # fmt: skip
        return max(numbers, default=0) + 1

    def check_room_to_replace_lines(self) -> None:
        """409 `too_many_edits` when an edit of this order's lines would keep more than
        MAX_REPLACED_LINE_BYTES of the lines edits replaced: such an edit replaces every line the
        order has (each takes a new id), beside those earlier edits replaced (reservation_lines)."""
        kept = sum(len(ReplacedLine(line_id=line_id, sku=sku).model_dump_json().encode())
                   for line_id, sku in self.reservation_lines())  # fmt: skip
        if kept <= MAX_REPLACED_LINE_BYTES:
            return
        raise Conflict(
            f"order {self.id} keeps {len(self.replaced_lines)} lines its edits replaced, as many as it keeps"
            f" ({MAX_REPLACED_LINE_BYTES // 1024} KiB of them) until it is sourced: its lines can be edited again"
            " once it is (released, if it is held); its address and shipping method still can",
            code="too_many_edits",
            details=[
                {"field": "lines", "message": f"order {self.id} takes no more edits of its lines until it is sourced"}
            ],
        )

    def check_room_to_reauthorize(self) -> None:
        """409 `too_many_authorizations` when this order keeps MAX_REPLACED_AUTHORIZATIONS
        authorizations replaced and not voided yet: another edit that grows its total would add one."""
        if len(self.replaced_authorizations) < MAX_REPLACED_AUTHORIZATIONS:
            return
        raise Conflict(
            f"order {self.id} has {len(self.replaced_authorizations)} earlier authorizations the payment gateway has"
            " not voided yet, as many as it keeps: its total cannot grow again until they are (its next change asks"
            " the gateway to void them again); an edit that does not grow it still can",
            code="too_many_authorizations",
            details=[{"field": "lines", "message": f"order {self.id} cannot be authorized for more now"}],
        )

    def check_room_to_give_up_bookings(self, changed: Sequence[str]) -> None:
        """409 `too_many_bookings_to_cancel` when an edit of `changed` would send this order back to
        be sourced (giving up its parcels' bookings: sources_again_after) while it owes its carriers
        MAX_BOOKINGS_TO_CANCEL cancels."""
        if not (self.sourced_again_by_edit() and self.sources_again_after(changed)):
            return
        if len(self.bookings_to_cancel) < MAX_BOOKINGS_TO_CANCEL:
            return
        raise Conflict(
            f"order {self.id} owes its carrier cancels of {len(self.bookings_to_cancel)} bookings its changes gave up,"
            " as many as it keeps: it cannot be edited (which gives up its parcels' bookings) until the carrier takes"
            " them (each change of the order, and the reconciler every few minutes, asks again); it can be cancelled",
            code="too_many_bookings_to_cancel",
        )

    def reservation_lines(self) -> list[tuple[str, str]]:
        """The (line id, sku) of each line the order's reservations are keyed by: its lines, then
        those edits replaced whose release is still owed (`replaced_lines`)."""
        return list(dict.fromkeys([*((line.line_id, line.sku) for line in self.lines),
                                   *((line.line_id, line.sku) for line in self.replaced_lines)]))  # fmt: skip

    def sourced_again_by_edit(self) -> bool:
        """Whether an edit sends this order back to be sourced (its reservations then count as its
        own, and those its changed lines no longer use are released)."""
        return self.status in RESOURCEABLE or self._held_with_stock()

    def _sourced_again(self) -> dict[str, Any]:
        """The fields that send an allocated or backordered order back to be sourced: authorized,
        nothing allocated, its pending shipments gone (the workflow books new ones), where it held
        units kept (`held_before`). A held one (with stock, or held while backordered: an edit, a
        cancel of its units) stays on hold and is released to `authorized`, which starts its
        workflow again.
        The marks of parcels a cancel wrote off (Order.written_off) go with their shipments: one
        sourced again from the same location in the same generation (Order.parcel_id) would have
        the same id, and would be taken for a parcel its carrier reported delivered (no other mark
        can stand then: a marked parcel pending keeps the order from being sourced again,
        check_parcels_kept). Parcels withdrawn start a new parcel generation (`rebookings`), so
        the ones made after them have ids and booking keys of their own (check_successor refuses
        a version that withdraws them without)."""
        self.check_write_off_finished("sourced again")
        held_before = sorted({*self.held_before, *(a.location_id for a in self.allocations)})
        marks: dict[str, Any] = {"reported_delivered": []} if self.reported_delivered else {}
        if self.shipments:
            marks["rebookings"] = self.rebookings + 1
        if self._held_with_stock() or (self.status is OrderStatus.ON_HOLD and self.waits_for_stock()):
            assert self.hold is not None
            # Sourced again: released to `authorized` anew, its clock starting at the release.
            resumes = _replaced(
                self.hold,
                resume_to=OrderStatus.AUTHORIZED,
                resume_since=None,
                resume_late=None,
                resume_late_resumed=False,
            )
            return {"allocations": [], "shipments": [], "labels_due": [], "held_before": held_before,
                    "hold": resumes, **marks}  # fmt: skip
        if self.status not in RESOURCEABLE:
            return {}
        return {"to": OrderStatus.AUTHORIZED, "allocations": [], "shipments": [], "labels_due": [],
                "held_before": held_before, **marks}  # fmt: skip

    def refundable(self, *, besides_return: str | None = None) -> Money:
        """What a refund may still give back: captured, less what is refunded or being refunded
        (Payment.refundable), less what the exchanges' credits still hold of it to pay for their
        replacements (credit_holds, less what each gave back: the refunds of its return that draw on
        it, drawn_on_credit), but the
        credit of return `besides_return`, whose own refunds are drawn on it."""
        left = self.payment.refundable()
        for return_id, credit in self.credit_holds.items():
            if return_id == besides_return:
                continue
            given = [drawn_on_credit(r) for r in self.payment.refunds if r.return_id == return_id]
            held = credit - sum(given, Money.zero(self.currency))
            if held.amount > 0:
                left = left - held
        return left

    def refund_sources(self, amount: Money, lines: list[RefundedUnits] | None = None) -> list[tuple[str, Money]]:
        """The authorizations a refund of `amount` goes to, oldest first, with what it takes of each:
        never more than was captured under one (earlier_captures; the current one has the rest of
        `payment.captured`) less what its refunds took or hold; a return's refund (`lines`, what it
        gives back for each line's units) first takes what its units were captured for under the
        authorization that captured them (_owed_by_authorization), then, as any other refund, the
        rest from the oldest authorization that has any left. [] on the typical order, whose one
        authorization is the payment's own. RefundExceedsCaptured when the authorizations together
        have less left than `amount` (check_refund has refused that already)."""
        current = self.payment.authorization
        if not self.earlier_captures or not current:
            return []
        zero = Money.zero(self.currency)
        left = {e.authorization: e.captured for e in self.earlier_captures}
        left[current] = self.payment.captured - sum(left.values(), zero)
        for authorization, held in self._refunds_by_authorization():
            left[authorization] = left.get(authorization, zero) - held
        owed = self._owed_by_authorization(lines) if lines else {}
        taken = dict.fromkeys(left, zero)
        wanted = amount
        for cap in (owed, left):
            for authorization in left:
                take = min(cap.get(authorization, zero), left[authorization] - taken[authorization], wanted,
                           key=lambda money: money.amount)  # fmt: skip
                if take.amount > 0:
                    taken[authorization] = taken[authorization] + take
                    wanted = wanted - take
        if wanted.amount > 0:
            raise RefundExceedsCaptured(
                f"{amount.amount} is more than the order's authorizations have captured and not yet refunded",
                details=[{"field": "amount", "message": "more than captured minus refunded"}],
            )
        return [(authorization, took) for authorization, took in taken.items() if took.amount > 0]

    def _refunds_by_authorization(self) -> list[tuple[str, Money]]:
        """What each refund the gateway did not refuse took or holds, by the authorization it went to."""
        current = self.payment.authorization or ""
        held: list[tuple[str, Money]] = []
        for refund in self.payment.refunds:
            if refund.parts:
                held += [
                    (part.authorization, part.amount) for part in refund.parts if part.status != RefundStatus.FAILED
                ]
            elif refund.status != RefundStatus.FAILED:
                held.append((refund.authorization or current, refund.amount))
        return held

    def _owed_by_authorization(self, lines: list[RefundedUnits]) -> dict[str, Money]:
        """What a return's refund gives back for `lines` ({line, units, what they are worth}) of the
        captures under each authorization: a line's units counted in the order their shipments
        left (after those the order's earlier return refunds and exchanges gave back), each unit
        of the authorization that captured its shipment, its worth split in proportion."""
        by_shipment = {shipment_id: e.authorization for e in self.earlier_captures for shipment_id in e.shipments}
        current = self.payment.authorization or ""
        left = sorted((s for s in self.shipments if s.captured is not None),
                      key=lambda s: s.shipped_at or s.delivered_at or self.created_at)  # fmt: skip
        before: dict[str, int] = {}
        given = [r.lines for r in self.payment.refunds if r.status != RefundStatus.FAILED and r.lines and r.return_id]
        recorded = [*given, *self.exchange_shares.values(), *self.credit_refunded_shares.values()]
        for share in [s for shares in recorded for s in shares]:
            before[share.line_id] = before.get(share.line_id, 0) + share.quantity
        owed: dict[str, Money] = {}
        for share in lines:
            if share.quantity <= 0:
                continue
            start, end, seen = before.get(share.line_id, 0), before.get(share.line_id, 0) + share.quantity, 0
            units: dict[str, int] = {}
            for shipment in left:
                for item in shipment.lines:
                    if item.line_id != share.line_id:
                        continue
                    overlap = min(end, seen + item.quantity) - max(start, seen)
                    if overlap > 0:
                        authorization = by_shipment.get(shipment.id, current)
                        units[authorization] = units.get(authorization, 0) + overlap
                    seen += item.quantity
            counted = Money.zero(self.currency)
            for index, (authorization, count) in enumerate(units.items()):
                worth = (
                    share.amount - counted if index == len(units) - 1 and sum(units.values()) == share.quantity
                    else Money.of(share.amount.amount * count / share.quantity, self.currency)
                )  # fmt: skip
                counted = counted + worth
                owed[authorization] = owed.get(authorization, Money.zero(self.currency)) + worth
        return owed

    def check_refund(self, amount: Money, return_id: str | None = None) -> None:
        if amount.currency != self.currency or amount.amount <= 0:
            raise InvalidRequest(
                f"a refund is a positive amount in {self.currency}",
                details=[{"field": "amount", "message": f"must be positive, in {self.currency}"}],
            )
        # Nothing captured yet (or everything captured refunded already) leaves 0: any amount is
        # more than captured minus refunded, the contract's 422, whatever the payment's status.
        refundable = self.refundable(besides_return=return_id)
        if refundable < amount:
            raise RefundExceedsCaptured(
                self._refund_refused(amount, refundable),
                details=[{"field": "amount", "message": "more than captured minus refunded"}],
            )

    def _refund_refused(self, amount: Money, refundable: Money) -> str:
        """Why `amount` is refused, in the figures the order shows: what pending refunds and
        exchanges' credits hold is named, else "captured, not yet refunded" would not be the order's
        `captured − refunded` a person checks it against."""
        payment, zero = self.payment, Money.zero(self.currency)
        pending = payment.captured - payment.refunded - payment.refundable()
        held = payment.refundable() - refundable
        if pending == zero and held == zero:
            return f"{amount.amount} is more than the {refundable.amount} captured and not yet refunded"
        parts = [f"{payment.captured.amount} captured", f"{payment.refunded.amount} refunded"]
        if pending != zero:
            parts.append(f"{pending.amount} in refunds not finished yet")
        if held != zero:
            parts.append(f"{held.amount} held as exchanges' credit for their replacements")
        return f"{amount.amount} is more than the {refundable.amount} left to refund: {', '.join(parts)}"

    # --- Deciding ----------------------------------------------------------------------------
    def _bookkeeping(self, *, at: datetime, **changes: Any) -> Bookkeeping:
        """The next version with `changes` to the system's own fields and no history entry
        (Bookkeeping): written, as every change, on the condition of this version. Stored before
        `status_since` existed, its clock is pinned where `updated_at` had it, as _next pins it."""
        if self.status_since is None:
            changes = {"status_since": self.updated_at, **changes}
        new = _replaced(self, **changes, version=self.version + 1, updated_at=at, changed_before_mark=None)
        new = _marks_settled(new)
        check_successor(self, new)
        return new, None

    def _next(
        self,
        *,
        at: datetime,
        actor: str,
        type: OrderEvent,
        to: OrderStatus | None = None,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Change:
        if to is not None and to != self.status and not can_transition(self.status, to):
            raise InvalidTransition(f"an order cannot go from {self.status} to {to}")
        if to is not None and to != self.status:
            # A new status starts its own deadline; leaving the late status clears the jeopardy mark.
            # A release resumes the clock its hold stopped instead (`status_since` given: _resumed_clock).
            fields = {"status_since": at, "late_resumed": None, **fields, "jeopardy": None, "scan_read": False}
        elif self.status_since is None:
            # Stored before `status_since` existed, `updated_at` stood in for it: pinned before this
            # write moves it, so only a status change restarts the status's clock (a late mark, say,
            # would otherwise put off a hold's expiry by a day).
            fields = {"status_since": self.updated_at, **fields}
        fields = {"changed_before_mark": None, **fields}
        new = _replaced(self, **fields, status=to or self.status, version=self.version + 1, updated_at=at)
        new = _marks_settled(new)
        if new.delivery_scans:
            new = _scans_kept(new)
        given_up = _bookings_given_up(self, new)
        keys = {shipment_id: key for shipment_id, key in new.booking_keys.items()
                if any(s.id == shipment_id for s in new.shipments)}  # fmt: skip
        # Only a pending parcel of an order not cancelled is booked again: one that shipped, was
        # readied for pickup or went keeps the label it has.
        pending = {s.id for s in new.shipments if s.status is ShipmentStatus.PENDING}
        due = [d for d in new.labels_due if d in pending] if new.status is not OrderStatus.CANCELLED else []
        if given_up or keys != new.booking_keys or due != new.labels_due:
            # Owed a cancel from the write that gives them up, so neither a crash after it nor a
            # carrier down loses the debt (core.carrier_bookings asks, then records the answer).
            new = _replaced(new, bookings_to_cancel=[*new.bookings_to_cancel, *given_up], booking_keys=keys,
                            labels_due=due)  # fmt: skip
        if self.labels_due:
            known = {(b.shipment_id, b.booking_key) for b in [*new.bookings_to_cancel, *new.unrecorded_bookings]}
            maybe = [b for b in _labels_given_up(self, new) if (b.shipment_id, b.booking_key) not in known]
            if maybe:
                new = _replaced(new, bookings_to_cancel=[*new.bookings_to_cancel, *maybe])
        if new.unrecorded_bookings:
            # Judged on this version: kept while a retried step will still ask for them, owed a
            # cancel from the change after which nothing will, dropped once a shipment uses them.
            waiting, unused = new._unrecorded_judged(new.unrecorded_bookings)
            if waiting != new.unrecorded_bookings:
                owed = [booking for booking in unused if booking not in new.bookings_to_cancel]
                new = _replaced(new, unrecorded_bookings=waiting, bookings_to_cancel=[*new.bookings_to_cancel, *owed])
        check_successor(self, new)
        entry = HistoryEntry(
            at=at,
            type=type,
            from_status=self.status if to is not None else None,
            to_status=to,
            actor=actor,
            detail=detail,
        )
        return new, entry

    def noted(self, type: OrderEvent, *, at: datetime, actor: str, detail: dict[str, Any]) -> Change:
        """The order unchanged, with an entry for something that touched none of its fields (a
        failed gateway attempt, an old authorization released): no new version, so an If-Match
        or an idempotency key derived from the version stays valid."""
        return self, HistoryEntry(at=at, type=type, actor=actor, detail=detail)

    def record_payment_failure(
        self, operation: str, *, attempt: int, kind: str, message: str, at: datetime, actor: str,
        detail: dict[str, Any] | None = None,
    ) -> Change:  # fmt: skip
        """One failed attempt at the gateway (`kind` transient, refused, no_plugin or plugin_error), for
        the audit trail. One at settling a cancelled order's own payment also says whether that is still owed
        (`own_void_owed`, _own_void_owed_after), in a version of its own when that changes."""
        noted = self.noted(
            PAYMENT_FAILURE_EVENTS[operation], at=at, actor=actor,
            detail={"operation": operation, "attempt": attempt, "kind": kind, "message": message[:500],
                    **(detail or {})},
        )  # fmt: skip
        owed = self._own_void_owed_after(operation, kind, detail or {})
        if owed is None or owed == self.own_void_owed:
            return noted
        return self._bookkeeping(at=at, own_void_owed=owed)[0], noted[1]

    def _own_void_owed_after(self, operation: str, kind: str, detail: dict[str, Any]) -> bool | None:
        """Whether a failed attempt at settling this cancelled (or payment_failed) order's own
        payment leaves it owed (`own_void_owed`): True when the gateway was unavailable, or the
        payment plugin failed (`plugin_error`: nothing moved, and a pass may ask it again); False when
        it refused, or no payment plugin took it (no pass asks that again); None (nothing changes)
        for an attempt at something else, or a refusal that settles what was asked (a capture asked
        again and refused, or an authorization: none was made). Its own payment: the authorization
        it records (voided once every capture it asked for and never recorded is given back), or,
        never authorized, what the gateway may hold under a key of its own (an attempt whose answer
        was lost, or that left nothing in the history: looked up, or asked again, by
        `authorization_key`)."""
        payment = self.payment
        if self.status not in (OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED):
            return None
        if payment.status is PaymentStatus.AUTHORIZED:
            own = (operation == "void" and detail.get("authorization") == payment.authorization) or (
                operation in ("capture", "refund") and bool(self.captures_requested)
            )
        else:
            unpaid = payment.status in (PaymentStatus.PENDING, PaymentStatus.DECLINED)
            own = unpaid and operation in ("void", "authorize") and "authorization_key" in detail
        if not own:
            return None
        if kind in ("transient", "plugin_error"):
            return True
        return None if kind == "refused" and operation in ("capture", "authorize") else False

    def owe_own_void_from(self, history: list[HistoryEntry], *, at: datetime) -> Bookkeeping | None:
        """The one-off upgrade of an order cancelled before `own_void_owed` existed, whose own
        authorization the gateway could not void: owed, as its failed attempts in `history` since
        the cancel say (_own_void_owed_after, replayed: the last attempt that says anything
        decides), so the reconciler's authorization pass voids it. None when nothing is owed: not
        cancelled, its payment no longer `authorized`, owed already, no such attempt, or the last
        one refused (no pass asks a refused void again). Bookkeeping, for infra.backfill_orders."""
        cancelled = self.status is OrderStatus.CANCELLED and self.payment.status is PaymentStatus.AUTHORIZED
        if not cancelled or self.own_void_owed:
            return None
        operations = {event: operation for operation, event in PAYMENT_FAILURE_EVENTS.items()}
        owed = False
        for entry in history:
            if entry.to_status is OrderStatus.CANCELLED:
                owed = False  # what the gateway said since the cancel counts
                continue
            operation = operations.get(entry.type)
            detail = entry.detail or {}
            said = self._own_void_owed_after(operation, str(detail.get("kind")), detail) if operation else None
            owed = owed if said is None else said
        if not owed:
            return None
        return self._bookkeeping(at=at, own_void_owed=True)

    def parked_from(self, history: list[HistoryEntry], *, at: datetime) -> Bookkeeping | None:
        """The one-off upgrade of an order held by the system for an infrastructure failure before
        such a hold stored that it is one (`hold.parked`), which the hold expiry would cancel like
        a person's hold: marked when the `on_hold` entry its hold began with in `history` is a
        park's (`detail.parked`, Order.park) or a ship's that died after its capture
        (`detail.shipment_ids`, Order.hold_unfinished_ships). The latter, or a person's hold made
        one (Order.park_for_unfinished_ships) or the hold a person's release of it leaves, stored
        before such a hold named its parcels, is given them (Hold.confirms_ships), which puts it in
        the count ShipsToConfirmAlarm watches (Order.ships_to_confirm_since). None when it is not on
        hold, is marked already, or its hold is a person's. Bookkeeping, for infra.backfill_orders."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None:
            return None
        began = next((entry for entry in reversed(history) if entry.type == OrderEvent.ON_HOLD), None)
        detail = (began.detail or {}) if began is not None else {}
        shipment_ids = [str(shipment_id) for shipment_id in detail.get("shipment_ids") or []]
        if self.hold.parked:
            if not shipment_ids or self.hold.confirms_ships or self.hold.ships_to_confirm:
                return None
            return self._bookkeeping(at=at, hold=_replaced(self.hold, confirms_ships=shipment_ids))
        if not (detail.get("parked") or shipment_ids):
            return None
        return self._bookkeeping(at=at, hold=_replaced(self.hold, parked=True, confirms_ships=shipment_ids))

    def record_own_void_settled(self, *, at: datetime) -> Bookkeeping | None:
        """Nothing of the closed order's own payment is left to settle (`own_void_owed`): what its
        unpaid payment's keys may hold was released. Bookkeeping; None when nothing was owed."""
        if not self.own_void_owed:
            return None
        return self._bookkeeping(at=at, own_void_owed=False)

    def authorize(
        self, amount: Money, reference: str | None, *, at: datetime, actor: str, keys_given_up: list[str] | None = None
    ) -> Change:
        """The gateway authorized `amount` as `reference`; or, with no `reference`, the order owes
        nothing (`amount` zero) and no gateway was asked: authorized with nothing to capture, void or
        refund (every such path does nothing for a payment without a reference). `keys_given_up`:
        earlier keys of the order whose release failed before it (`authorization_keys_given_up`),
        named by this write."""
        if reference is None and amount.amount != 0:
            raise InvalidTransition(f"only an order that owes nothing is authorized without the gateway, not {amount}")
        given_up = {"authorization_keys_given_up": list(keys_given_up)} if keys_given_up else {}
        why = {"reason": NOTHING_TO_AUTHORIZE} if reference is None else {}
        if self.waits_for_authorization_on_hold():
            # The authorization raced a hold placed while pending and lost the write: recorded on
            # the held order, so neither is lost (a cancel voids it; a release resumes after it).
            return self._next(
                at=at, actor=actor, type=OrderEvent.PAYMENT_AUTHORIZED,
                detail={"amount": amount.model_dump(mode="json"), "reference": reference, **why},
                payment=self.payment.authorized_for(amount, reference), authorized_at=at,
                hold=_replaced(self.hold, resume_to=OrderStatus.AUTHORIZED, resume_since=None, resume_late=None,
                               resume_late_resumed=False),
                **given_up,
            )  # fmt: skip
        if self.status is not OrderStatus.PENDING:
            raise InvalidTransition(f"an order that is {self.status} is not waiting for its authorization")
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_AUTHORIZED, to=OrderStatus.AUTHORIZED,
            detail={"amount": amount.model_dump(mode="json"), "reference": reference, **why},
            payment=self.payment.authorized_for(amount, reference), authorized_at=at, **given_up,
        )  # fmt: skip

    def give_up_key(self, key: str, *, at: datetime) -> Bookkeeping | None:
        """What the gateway authorized under `key`, which the order does not record (the write it
        was asked for lost its race), could not be voided: the gateway was down. Kept in
        `authorization_keys_given_up`, for a cancel or the reconciler to release. Bookkeeping; None
        when it is kept already, or when the payment was never authorized (pending, declined): its
        history's failed void naming the key is asked about again (release_lost_authorizations)."""
        if key in self.authorization_keys_given_up or self.payment.status in (
            PaymentStatus.PENDING, PaymentStatus.DECLINED
        ):  # fmt: skip
            return None
        return self._bookkeeping(at=at, authorization_keys_given_up=[*self.authorization_keys_given_up, key])

    def record_given_up_keys_released(self, keys: list[str], *, at: datetime) -> Bookkeeping | None:
        """The keys of `authorization_keys_given_up` in `keys` are settled (each release is in the
        history: voided, never made, or unknown to a plugin that cannot look keys up). Bookkeeping;
        None when none of them is still named."""
        left = [key for key in self.authorization_keys_given_up if key not in keys]
        if left == self.authorization_keys_given_up:
            return None
        return self._bookkeeping(at=at, authorization_keys_given_up=left)

    def waits_for_authorization_on_hold(self) -> bool:
        """Held while pending, nothing authorized yet."""
        return (
            self.status is OrderStatus.ON_HOLD
            and self.hold is not None
            and self.hold.resume_to is OrderStatus.PENDING
            and self.payment.status is PaymentStatus.PENDING
        )

    def decline_payment(self, *, error: str, message: str, at: datetime, actor: str) -> Change:
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_FAILED, to=OrderStatus.PAYMENT_FAILED,
            detail={"reason": "payment_declined", "error": error, "message": message},
            payment=self.payment.declined(),
        )  # fmt: skip

    def reserve(
        self, allocations: list[Allocation], reasons: list[str], *, at: datetime, actor: str,
        rules_version: int | None = None, restocked: Collection[tuple[str, str]] = (),
    ) -> Change:  # fmt: skip
        """`restocked` (sku, location_id) pairs: restocked since the stock take there, which lifts
        the exclusions counts made of them (counts_lapsed) in the same write, named in the entry."""
        if self.status is not OrderStatus.AUTHORIZED or self.allocations:
            raise InvalidTransition(f"an order that is {self.status} cannot reserve stock now")
        lapsed, named = self.counts_lapsed(restocked)
        return self._next(
            at=at, actor=actor, type=OrderEvent.STOCK_RESERVED,
            detail={"allocations": [a.model_dump() for a in allocations], "reasons": reasons,
                    **_rules_named(rules_version), **named},
            allocations=allocations, replaced_lines=[], held_before=[], **lapsed,
        )  # fmt: skip

    def _waits_for(self, short: Mapping[str, int]) -> list[str]:
        """`may_wait` once this order waits for the units `short` of (by line id): the skus of those
        lines beside those it waited for before that its lines still have. A sku an edit dropped
        goes: this wait's write, read as before it, takes the order out of that sku's queue
        (BackorderedOrders.left), and an edit adding the sku back would ask more of it than none, so
        it could never wait on it again; kept, `may_wait` would grow with every sku the order ever
        waited for (an order is one DynamoDB item, 400 KB at most)."""
        skus = {line.sku for line in self.lines}
        return sorted({*(sku for sku in self.may_wait if sku in skus),
                       *(line.sku for line in self.lines if line.line_id in short)})  # fmt: skip

    def short_of(self, allocations: list[Allocation] | None = None) -> dict[str, int]:
        """Units of each line not reserved (by this order's allocations, or by `allocations`), by
        line id: only the lines short of some."""
        held: dict[str, int] = {}
        for allocation in self.allocations if allocations is None else allocations:
            held[allocation.line_id] = held.get(allocation.line_id, 0) + allocation.quantity
        return {
            line.line_id: line.quantity - held.get(line.line_id, 0)
            for line in self.lines
            if line.quantity > held.get(line.line_id, 0)
        }

    def backorder(
        self, allocations: list[Allocation], reasons: list[str], *, at: datetime, actor: str,
        rules_version: int | None = None, restocked: Collection[tuple[str, str]] = (),
    ) -> Change:  # fmt: skip
        """Authorized, but the eligible locations lack units of backorderable products: keep what
        could be reserved (`allocations`, possibly none) and wait for the rest. `restocked`: as reserve's."""
        if self.status is not OrderStatus.AUTHORIZED or self.allocations:
            raise InvalidTransition(f"an order that is {self.status} cannot be backordered now")
        short = self.short_of(allocations)
        if not short:
            raise InvalidTransition(f"order {self.id} is not short of stock")
        lapsed, named = self.counts_lapsed(restocked)
        return self._next(
            at=at, actor=actor, type=OrderEvent.BACKORDERED, to=OrderStatus.BACKORDERED,
            detail={"allocations": [a.model_dump() for a in allocations], "short": short, "reasons": reasons,
                    **_rules_named(rules_version), **named},
            allocations=allocations, replaced_lines=[], held_before=[], **lapsed,
            may_wait=self._waits_for(short),
        )  # fmt: skip

    def source_again(
        self, *, rules_version: int | None, at: datetime, actor: str, whole: bool = False,
        arrived_at: str | None = None, reserving: Mapping[tuple[str, str], int] | None = None,
    ) -> Change:  # fmt: skip
        """A backordered order the sourcing rules in force leave nowhere to take more units goes back
        to be sourced under them (authorized, nothing allocated): the workflow the change starts
        counts what it holds as its own, releases what the rules no longer let it ship, and
        allocates it, backorders it again or cancels it out_of_stock. `whole`: instead,
        `max_shipments` keeps it from adding a location beside those it holds units at (one where
        units `arrived_at`, when named), and sourced again it has every unit it wants
        (Workflow.source_again_whole). `reserving`: the units the same write reserves for its plan,
        by (sku, location_id): named in the entry (`reserved`), beside what it held (`allocations`),
        and their locations kept in `held_before` with those it held units at, so that its sourcing
        finds them there though a location stopped shipping meanwhile."""
        if self.status is not OrderStatus.BACKORDERED:
            raise InvalidTransition(f"an order that is {self.status} is not waiting for stock")
        held_at = ", ".join(sorted({a.location_id for a in self.allocations}))
        if not whole:
            reason = "the sourcing rules leave no location to fill it"
        elif arrived_at is None:
            reason = (f"max_shipments kept it from adding a location beside {held_at}: "
                      "sourced again, it has every unit it wants")  # fmt: skip
        else:
            reason = (f"units arrived at {arrived_at}, which max_shipments kept it from adding beside {held_at}: "
                      "sourced again, it has every unit it wants")  # fmt: skip
        fields = self._sourced_again()  # backordered: never held, so always `held_before`
        reserving = reserving or {}
        reserved = [
            {"sku": sku, "location_id": location_id, "quantity": units}
            for (sku, location_id), units in sorted(reserving.items())
        ]
        return self._next(
            at=at, actor=actor, type=OrderEvent.SOURCED_AGAIN,
            detail={"allocations": [a.model_dump() for a in self.allocations], "short": self.short_of(),
                    "reasons": [reason], **({"reserved": reserved} if reserved else {}), **_rules_named(rules_version)},
            **{**fields, "held_before": sorted({*fields["held_before"], *(location for _, location in reserving)})},
        )  # fmt: skip

    def source_again_without(
        self, location_id: str, reason: str, *, at: datetime, actor: str, counted_sku: str | None = None
    ) -> Change:
        """A backordered order whose units reserved at `location_id` a stock take there no longer
        covers (`reason`: stock_count) goes back to be sourced without that location, as a reject
        sends an allocated order (authorized, nothing allocated, the location excluded): the
        workflow the change starts counts what it holds elsewhere as its own, and reserves the rest
        elsewhere or waits for stock again. Its units there are released after this write. One
        held while backordered (waits_for_stock) stays on hold, to be released to `authorized`
        (_sourced_again): a count counts what is there, whatever holds the order.
        One sent back to be sourced since the count read it backordered (an edit, a cancel of
        units, the arrival walk's send-back whole: not_sourced, still holding its units, the
        location among `held_before`) gets the location excluded all the same, staying as it is
        (authorized, or on hold to be released to it): the workflow that change started plans
        without it (its ReserveStock's write, conditional on the version, loses to this one and
        plans again), or it would count the units the count took as its own. `counted_sku`: the sku
        the count counted short, whose restocking there lifts the exclusion (_excluding)."""
        if self.not_sourced():
            if location_id not in self.held_before:
                raise InvalidTransition(f"order {self.id} held no units at {location_id}")
        elif not self.waits_for_stock():
            raise InvalidTransition(f"an order that is {self.status} is not waiting for stock")
        elif not any(a.location_id == location_id for a in self.allocations):
            raise InvalidTransition(f"order {self.id} holds no units at {location_id}")
        return self._next(
            at=at, actor=actor, type=OrderEvent.SOURCED_AGAIN,
            detail={"allocations": [a.model_dump() for a in self.allocations], "short": self.short_of(),
                    "location_id": location_id, "reason": reason,
                    "reasons": [f"a stock take at {location_id} counted fewer units than it held there"]},
            **self._excluding(location_id, counted_sku), **self._sourced_again(),
        )  # fmt: skip

    def lost_reservations_resourceable(self) -> bool:
        """Whether units this order records as reserved that no stock item holds for it may be
        sourced again (source_again_lost): it records allocations, and none has left yet
        (authorized or backordered, or allocated with every parcel pending)."""
        if not self.allocations:
            return False
        if self.status in (OrderStatus.AUTHORIZED, OrderStatus.BACKORDERED):
            return True
        return self.status is OrderStatus.ALLOCATED and all(s.status is ShipmentStatus.PENDING for s in self.shipments)

    def source_again_lost(self, lost: list[dict[str, Any]], *, at: datetime, actor: str) -> Change:
        """Units the order records as reserved (`lost`: sku, location_id, recorded, held) that no
        stock item holds for it any more (a twin ReserveStock run gave them back before it lost its
        write, and another order took them): shipped so, they would be sold twice. The order goes
        back to be sourced (`sourced_again`, reason RESERVATIONS_LOST: authorized, nothing
        allocated, its pending parcels gone, where it held units kept in `held_before`, no location
        excluded), as a reject sends it; the workflow then counts what its keys still hold as its
        own and reserves the rest, waits backordered or cancels it out_of_stock."""
        if not self.lost_reservations_resourceable():
            raise InvalidTransition(f"an order that is {self.status} cannot be sourced again for lost reservations")
        fields: dict[str, Any] = self._sourced_again()
        if self.status is OrderStatus.AUTHORIZED:
            held_before = sorted({*self.held_before, *(a.location_id for a in self.allocations)})
            fields = {"allocations": [], "held_before": held_before}
        return self._next(
            at=at, actor=actor, type=OrderEvent.SOURCED_AGAIN,
            detail={"allocations": [a.model_dump() for a in self.allocations], "short": self.short_of(),
                    "reason": RESERVATIONS_LOST, "lost": lost,
                    "reasons": ["units it recorded as reserved were no longer held for it"]},
            **fields,
        )  # fmt: skip

    def reserve_backordered(
        self, allocations: list[Allocation], *, at: datetime, actor: str, rules_version: int | None = None,
        restocked: tuple[str, str] | None = None,
    ) -> Change:  # fmt: skip
        """More units of a backordered order reserved as stock arrived: `allocations` is all it
        now holds; it stays backordered until CreateShipments allocates it. `restocked` (sku,
        location_id): that sku was restocked there, which lifts the exclusion a stock take's count
        of it made (count_exclusion_lapsed) in the same write, named in the entry."""
        if self.status is not OrderStatus.BACKORDERED:
            raise InvalidTransition(f"an order that is {self.status} is not waiting for stock")
        lapsed = self.count_exclusion_lapsed(restocked[1], restocked[0]) if restocked is not None else {}
        named = {"exclusion_lapsed": {"location_id": restocked[1], "sku": restocked[0]}} if restocked and lapsed else {}
        return self._next(
            at=at, actor=actor, type=OrderEvent.STOCK_RESERVED,
            detail={"allocations": [a.model_dump() for a in allocations], "short": self.short_of(allocations),
                    "reasons": ["backordered units arrived"], **named, **_rules_named(rules_version)},
            allocations=allocations, **lapsed,
        )  # fmt: skip

    def allocate(self, shipments: list[Shipment], *, at: datetime, actor: str) -> Change:
        return self._next(
            at=at, actor=actor, type=OrderEvent.ALLOCATED, to=OrderStatus.ALLOCATED,
            detail={"shipments": [{"id": s.id, "location_id": s.location_id, "tracking_number": s.tracking_number}
                                  for s in shipments]},
            shipments=shipments, booking_keys=self._keys_booked_under(shipments),
        )  # fmt: skip

    def _keys_booked_under(self, shipments: list[Shipment]) -> dict[str, str]:
        """The booking keys of `shipments`, booked under this version's (core.ids.booking_key), that
        are not their ids."""
        keys = {shipment.id: booking_key(shipment.id, self.rebookings) for shipment in shipments}
        return {shipment_id: key for shipment_id, key in keys.items() if key != shipment_id}

    def ship(
        self, shipment_id: str, *, tracking_number: str | None, captured: Money, capture_reference: str | None,
        at: datetime, actor: str, shipped_at: datetime | None = None,
    ) -> Change:  # fmt: skip
        """The shipment left, and `captured` (what the gateway approved for it) is recorded. It
        left at `shipped_at` when its location says when (a WMS's manifest; named in the entry),
        else at `at`; one a carrier reported delivered (reported_delivered) left by the time it
        gave, or scanned delivered by the scan's, whichever is earlier."""
        shipment = self.ready_to_ship(shipment_id)
        payment = self.payment
        if payment.authorization or self.authorized_nothing():
            # One that owed nothing captures nothing: paid in full, no gateway asked (authorized_nothing).
            payment = payment.with_capture(captured, self.payable())
        reported = self.reported(shipment_id) if self.reported_delivered else None
        scan = self.delivery_scan(shipment_id) if self.delivery_scans else None
        # Scanned delivered before this ship: it left by then (its delivery follows at that time).
        left_by = reported.at if reported is not None else min(scan.at, at) if scan is not None else at
        stated, shipped_at = shipped_at, left_by if shipped_at is None else min(shipped_at, left_by)
        shipments = [
            _replaced(s, status=ShipmentStatus.SHIPPED, shipped_at=shipped_at, captured=captured,
                      tracking_number=tracking_number or s.tracking_number)
            if s.id == shipment_id else s
            for s in self.shipments
        ]  # fmt: skip
        detail: dict[str, Any] = {
            "shipment_id": shipment_id,
            "location_id": shipment.location_id,
            "captured": captured.model_dump(mode="json"),
        }
        if capture_reference:
            detail["capture_reference"] = capture_reference
        if stated is not None:
            detail["shipped_at"] = utc_text(shipped_at)
        if tracking_number:
            # The location named it: its number, not the booking's (set_tracking_number changes
            # only one nobody named).
            detail["tracking_number"] = tracking_number
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_SHIPPED,
            to=OrderStatus.PARTIALLY_SHIPPED if self._pending_besides(shipment_id)
            else _left_to_ship_nothing(OrderStatus.SHIPPED, self.lines, shipments),
            detail=detail, shipments=shipments, lines=_shipped_counted(self.lines, shipments),
            captures_requested=self._requests_besides(shipment_id),
            **self._captured_apart(shipment_id, captured, payment),
        )  # fmt: skip

    def set_tracking_number(self, shipment_id: str, tracking_number: str, *, at: datetime, actor: str) -> Change:
        """The shipped (or delivered) parcel of `shipment_id`, whose ship named no tracking number
        and so kept its booking's, takes the one its location learnt later (the carrier's manifest
        read after the hand-over): a `shipment_tracking_number_set` entry with the number it
        replaced. Whether a location named one already is the history's to say
        (tracking_number_named): OrderActions.ship asks it first. InvalidTransition for a parcel not
        shipped or delivered."""
        shipment = self.shipment(shipment_id)
        if shipment.status not in (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED):
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}: its ship names its tracking number")
        shipments = [
            _replaced(s, tracking_number=tracking_number) if s.id == shipment_id else s for s in self.shipments
        ]
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_TRACKING_NUMBER_SET,
            detail={"shipment_id": shipment_id, "tracking_number": tracking_number,
                    "replaced": shipment.tracking_number},
            shipments=shipments,
        )  # fmt: skip

    def deliver(self, shipment_id: str, *, at: datetime, actor: str, delivered_at: datetime | None = None) -> Change:
        """The shipped parcel arrived, at `delivered_at` when its carrier says when (a webhook may
        come late): a time before it shipped, or yet to come, is nobody's and `at` stands instead. A
        parcel a carrier reported delivered before its ship was recorded (reported_delivered)
        arrived by the time that report gave, unless this one gives another; its mark goes."""
        shipment = self.shipment(shipment_id)
        if shipment.status is not ShipmentStatus.SHIPPED:
            raise InvalidTransition("a shipment is delivered only after it has shipped")
        reported = self.reported(shipment_id) if self.reported_delivered else None
        marks: dict[str, Any] = {}
        if reported is not None:
            delivered_at = delivered_at or reported.at
            marks["reported_delivered"] = [r for r in self.reported_delivered if r is not reported]
        scan = self.delivery_scan(shipment_id) if self.delivery_scans else None
        if scan is not None:
            delivered_at = delivered_at or scan.at
            marks["delivery_scans"] = [kept for kept in self.delivery_scans if kept is not scan]
        shipped_at = shipment.shipped_at or at
        arrived = delivered_at if delivered_at is not None and shipped_at <= delivered_at <= at else at
        shipments = [
            _replaced(s, status=ShipmentStatus.DELIVERED, delivered_at=arrived) if s.id == shipment_id else s
            for s in self.shipments
        ]
        # A shipped order with units already back stays partially_returned (or returned) when its
        # last parcel arrives: its returns are what its status says.
        everything_delivered = _all_delivered(shipments) and self.status not in (
            OrderStatus.PARTIALLY_RETURNED,
            OrderStatus.RETURNED,
        )
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_DELIVERED,
            to=OrderStatus.DELIVERED if everything_delivered else None,
            detail={"shipment_id": shipment_id}, shipments=shipments, **marks,
        )  # fmt: skip

    # --- Store and warehouse execution ---------------------------------------------------------
    def reject_shipment(
        self, shipment_id: str, reason: str, *, at: datetime, actor: str, counted_sku: str | None = None
    ) -> Change:
        """The location cannot fulfil this pending shipment: the order goes back to be sourced
        again (authorized, nothing allocated, no pending shipment) and never from that location
        (`counted_sku`, a stock take's reject: until that sku is restocked there, _excluding). A
        held one (held allocated) stays on hold, and is sourced again when it is released."""
        shipment = self.rejectable(shipment_id)
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_REJECTED,
            detail={"shipment_id": shipment_id, "location_id": shipment.location_id, "reason": reason,
                    "released": [a.model_dump() for a in self.allocations]},
            **self._excluding(shipment.location_id, counted_sku), **self._sourced_again(),
        )  # fmt: skip

    def _excluding(self, location_id: str, counted_sku: str | None = None) -> dict[str, Any]:
        """The fields that exclude `location_id` for this order. A stock take's (`counted_sku`, the
        sku it counted short there) is kept in `counted_short`, to lapse once that sku is restocked
        there, unless a person's reject excluded the location already (that stays); a person's
        reject (None) makes the exclusion its own, whatever counts made it before."""
        excluded = list(dict.fromkeys([*self.excluded_locations, location_id]))
        counted = {loc: list(skus) for loc, skus in self.counted_short.items() if loc != location_id}
        persons = location_id in self.excluded_locations and location_id not in self.counted_short
        if counted_sku is not None and not persons:
            counted[location_id] = sorted({*self.counted_short.get(location_id, []), counted_sku})
        return {"excluded_locations": excluded, "counted_short": counted}

    def excludes(self, location_id: str, restocked: str | None = None) -> bool:
        """Whether `location_id` may not supply this order (a reject, a stock take there);
        `restocked`: a sku whose units were just added there, which lifts a count's exclusion of the
        location when it was that sku's alone (count_exclusion_lapsed)."""
        if location_id not in self.excluded_locations:
            return False
        return restocked is None or self.counted_short.get(location_id) != [restocked]

    def count_exclusion_lapsed(self, location_id: str, sku: str) -> dict[str, Any]:
        """The fields of this order once `sku` is restocked at `location_id`: that sku's count no
        longer excludes the location, which may supply the order again unless a count of another
        sku there excludes it still. Nothing (an empty dict) when no count of `sku` excludes it
        (never excluded, a person's reject excluded it, or lapsed already)."""
        skus = self.counted_short.get(location_id)
        if skus is None or sku not in skus:
            return {}
        counted = {loc: list(each) for loc, each in self.counted_short.items() if loc != location_id}
        if skus != [sku]:
            return {"counted_short": {**counted, location_id: [each for each in skus if each != sku]}}
        excluded = [loc for loc in self.excluded_locations if loc != location_id]
        return {"excluded_locations": excluded, "counted_short": counted}

    def counts_lapsed(self, restocked: Collection[tuple[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fields of this order once each (sku, location_id) of `restocked` is restocked
        (count_exclusion_lapsed of each in turn), and the entry's detail naming those whose count
        excluded the location (`exclusions_lapsed`); two empty dicts when none did."""
        order, named = self, []
        for sku, location_id in sorted(restocked):
            if lapsed := order.count_exclusion_lapsed(location_id, sku):
                order = order.model_copy(update=lapsed)
                named.append({"location_id": location_id, "sku": sku})
        if not named:
            return {}, {}
        fields = {"excluded_locations": order.excluded_locations, "counted_short": order.counted_short}
        return fields, {"exclusions_lapsed": named}

    def rejectable(self, shipment_id: str) -> Shipment:
        """The pending shipment, if its location may reject it now (checked before a capture asked
        for a parcel of the order is given back, as ready_to_ship is before one is asked);
        InvalidTransition otherwise: it is not pending, or the order can no longer be sourced again."""
        shipment = self.shipment(shipment_id)
        if shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}; only a pending one can be rejected")
        # A reject sends every parcel of the order back to be sourced, not only this one.
        self.check_parcels_kept("sourced again")
        self.check_write_off_finished("sourced again")
        if self._held_with_stock():
            self._check_nothing_left("sourced again")
        else:
            self._check_resourceable("sourced again")
        return shipment

    def rejectable_in_part(self, shipment_id: str) -> Shipment:
        """The pending shipment of a partly shipped order, if its location may reject it now: only
        that parcel is sourced again (reject_in_part), so only it must not be one a carrier reported
        or scanned delivered, or one waiting for a person to confirm whether it left;
        InvalidTransition otherwise."""
        shipment = self.shipment(shipment_id)
        if self.status is not OrderStatus.PARTIALLY_SHIPPED:
            raise InvalidTransition(f"an order that is {self.status} has no parcel sourced again alone")
        if shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}; only a pending one can be rejected")
        self.check_parcels_kept("sourced again", [shipment_id])
        self.check_write_off_finished("sourced again")
        return shipment

    def reject_in_part(
        self, shipment_id: str, reason: str, *, shipments: list[Shipment], allocations: list[Allocation],
        cancelled: Change | None, at: datetime, actor: str, maybe_booked: list[GivenUpBooking] | None = None,
        counted_sku: str | None = None, sourcing_rules_version: int | None = None,
    ) -> "tuple[Order, list[HistoryEntry]]":  # fmt: skip
        """The location cannot fulfil this pending parcel of a partly shipped order: the parcel
        leaves the order, replaced by `shipments` (its units sourced again at other locations and
        booked there: Workflow.source_parcel_again) holding `allocations`, and the location is
        excluded for the order. The status stays partially_shipped: what left stays as it is, and
        an order that shipped something is never `authorized` again. The units no location has are
        cancelled out_of_stock in the same version: `cancelled` is this order's cancel_units of
        them, decided with this parcel last among the pending ones (cancelling_first), so it took
        them from this parcel alone; it may end the order shipped (or delivered). One write, two
        entries (shipment_rejected, then units_cancelled); the release of what the parcel held at
        its location is owed from it (owing_stock: UnitCancellation.settle_after_reject).
        `maybe_booked`: bookings an earlier attempt killed before its write may have made at
        locations this one does not use, judged as unrecorded bookings are (_next): owed a cancel
        from this write, but one a parcel of the order uses, or owed already. `counted_sku`: as for
        reject_shipment. `sourcing_rules_version`: the rules the units were planned under, named in
        the shipment_rejected entry as a stock_reserved entry names them."""
        parcel = self.rejectable_in_part(shipment_id)
        base = self
        entries: list[HistoryEntry] = []
        if cancelled is not None:
            base, cancel_entry = cancelled
            others = {s.id: s for s in base.shipments if s.id != shipment_id}
            if others != {s.id: s for s in self.shipments if s.id != shipment_id}:
                raise InvalidTransition(f"the units cancelled with shipment {shipment_id} came from another parcel")
            entries.append(cancel_entry)
            # The parcel goes: a label the cancel made it due (fewer units) is never booked.
            base = _replaced(base, labels_due=[d for d in base.labels_due if d != shipment_id])
        order_of = {s.id: index for index, s in enumerate(self.shipments)}
        kept = sorted((s for s in base.shipments if s.id != shipment_id), key=lambda s: order_of[s.id])
        if any(s.id in order_of for s in shipments):
            raise InvalidTransition(f"a parcel sourced again for {shipment_id} has the id of one the order has")
        keys = {**base.booking_keys, **{s.id: sourced_again_key(s.id, self.version) for s in shipments}}
        known = {(b.shipment_id, b.booking_key) for b in [*base.bookings_to_cancel, *base.unrecorded_bookings]}
        maybe = [b for b in maybe_booked or [] if (b.shipment_id, b.booking_key) not in known]
        moved, entry = base._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_REJECTED,
            detail={"shipment_id": shipment_id, "location_id": parcel.location_id, "reason": reason,
                    "released": [a.model_dump() for a in self.allocations if a.location_id == parcel.location_id],
                    "sourced": [a.model_dump() for a in allocations], "shipments": [s.id for s in shipments],
                    **_rules_named(sourcing_rules_version)},
            **self._excluding(parcel.location_id, counted_sku), shipments=[*kept, *shipments], booking_keys=keys,
            allocations=[*(a for a in base.allocations if a.location_id != parcel.location_id), *allocations],
            **({"unrecorded_bookings": [*base.unrecorded_bookings, *maybe]} if maybe else {}),
        )  # fmt: skip
        new = _replaced(moved.owing_stock(), version=self.version + 1)
        check_successor(self, new)
        return new, [entry, *entries]

    def cancelling_first(self, shipment_id: str) -> "Order":
        """This order with pending parcel `shipment_id` last among its parcels, as cancel_units takes
        units from the last pending parcels first: so a cancel of units it holds takes them from it
        (reject_in_part). Only decided on, never stored."""
        last = self.shipment(shipment_id)
        return _replaced(self, shipments=[*(s for s in self.shipments if s.id != shipment_id), last])

    def reject_withdrawn(
        self, shipment_id: str, location_id: str, reason: str, *, at: datetime, actor: str,
        counted_sku: str | None = None,
    ) -> Change:  # fmt: skip
        """A location rejects a shipment of this order that an earlier change withdrew before the
        location heard of it (another location's reject, an edit: the order went back to be
        sourced): the location is excluded for this order all the same, so sourcing never sends
        the shipment back to it. Only while the order may still be sourced, and only while the
        location holds no parcel of the order (parcel_held_at): one sourced there again since is
        the parcel it has to act on (reject that one if it cannot supply it), never excluded from
        under it. `counted_sku`: a stock take's reject, as for reject_shipment (_excluding)."""
        if any(s.id == shipment_id for s in self.shipments):
            raise InvalidTransition(f"shipment {shipment_id} is on order {self.id}: it is rejected as it is")
        self.check_nothing_held_at(location_id, shipment_id)
        if self.status not in EDITABLE | RESOURCEABLE:
            raise InvalidTransition(f"an order that is {self.status} is not sourced again")
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_REJECTED,
            detail={"shipment_id": shipment_id, "location_id": location_id, "reason": reason, "withdrawn": True},
            **self._excluding(location_id, counted_sku),
        )  # fmt: skip

    def reject_counted_out(
        self, shipment_id: str, location_id: str, reason: str, *, at: datetime, actor: str
    ) -> Change | None:
        """A person at `location_id` rejects the shipment `shipment_id` a stock take's count there
        rejected first (its exclusion lapses once the sku is restocked there, `counted_short`): the
        exclusion becomes the person's and stays, as it does when the person rejects first
        (_excluding). The order and its parcels are as they are; no location is newly excluded, so
        no shipment.rejected is published again. None when nothing changes: a count does not
        exclude the location (a person's reject did, or its exclusion lapsed), or the order ended."""
        if location_id not in self.counted_short or self.status in TERMINAL:
            return None
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_REJECTED,
            detail={"shipment_id": shipment_id, "location_id": location_id, "reason": reason, "counted_out": True},
            **self._excluding(location_id),
        )  # fmt: skip

    def ready_for_pickup(self, shipment_id: str, *, collect_by: datetime | None, at: datetime, actor: str) -> Change:
        """The store has picked a pickup order's shipment; it waits for the customer until `collect_by`
        (None: until collected, nothing expires it)."""
        shipment = self.shipment(shipment_id)
        if self.fulfillment.type != "pickup":
            raise InvalidTransition("only a pickup order's shipment is made ready for pickup")
        if shipment.status is not ShipmentStatus.PENDING or self.status is not OrderStatus.ALLOCATED:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status} on an order that is {self.status}")
        shipments = [
            _replaced(s, status=ShipmentStatus.READY_FOR_PICKUP, ready_at=at, collect_by=collect_by)
            if s.id == shipment_id else s
            for s in self.shipments
        ]  # fmt: skip
        # Every parcel picked: the deadline counts from collect_by now, or never counts without one
        # (deadline_counts_from), so a mark for being late to pick it no longer holds.
        picked = not any(s.status is ShipmentStatus.PENDING for s in shipments)
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_READY_FOR_PICKUP,
            detail={"shipment_id": shipment_id, "location_id": shipment.location_id,
                    "collect_by": utc_text(collect_by) if collect_by is not None else None},
            shipments=shipments, **({"jeopardy": None} if picked else {}),
        )  # fmt: skip

    def ready_to_collect(self, shipment_id: str) -> Shipment:
        """The pickup waiting at its store, if the order may hand it over now (checked before its
        share is captured, as ready_to_ship is); InvalidTransition otherwise: a held order's waits."""
        shipment = self._waiting_pickup(shipment_id)
        if self.status is not OrderStatus.ALLOCATED:
            raise InvalidTransition(f"an order that is {self.status} cannot hand over its pickup")
        return shipment

    def _waiting_pickup(self, shipment_id: str) -> Shipment:
        shipment = self.shipment(shipment_id)
        if shipment.status is not ShipmentStatus.READY_FOR_PICKUP:
            raise InvalidTransition(f"shipment {shipment_id} is {shipment.status}, not ready_for_pickup")
        return shipment

    def collect(
        self, shipment_id: str, *, captured: Money, capture_reference: str | None, at: datetime, actor: str
    ) -> Change:
        """The customer collected the pickup, and `captured` (what the gateway approved for it) is recorded."""
        self.ready_to_collect(shipment_id)
        payment = self.payment
        if payment.authorization or self.authorized_nothing():
            # One that owed nothing captures nothing: paid in full, no gateway asked (authorized_nothing).
            payment = payment.with_capture(captured, self.payable())
        shipments = [
            _replaced(s, status=ShipmentStatus.DELIVERED, delivered_at=at, captured=captured)
            if s.id == shipment_id else s
            for s in self.shipments
        ]  # fmt: skip
        detail: dict[str, Any] = {"shipment_id": shipment_id, "captured": captured.model_dump(mode="json")}
        if capture_reference:
            detail["capture_reference"] = capture_reference
        everything_delivered = _all_delivered(shipments)
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_DELIVERED,
            to=OrderStatus.DELIVERED if everything_delivered else None,
            detail=detail, shipments=shipments, lines=_shipped_counted(self.lines, shipments),
            captures_requested=self._requests_besides(shipment_id),
            **self._captured_apart(shipment_id, captured, payment),
        )  # fmt: skip

    def expire_pickup(self, shipment_id: str, *, at: datetime, actor: str) -> Change:
        """Nobody collected the pickup by its deadline: the shipment and the order are cancelled
        (reason `pickup_expired`), every unit with it (_everything_cancelled); the caller then
        releases its units and voids the authorization.
        Never while the order is on hold: a person stopped it, and its release hands it back. Nor
        while a collect of it asked for its capture (Order.captures_requested): the customer was at
        the counter, and the collect (repeated, or settled by the jeopardy scan's capture sweep,
        which holds the order for a person) says whether they took it."""
        if self.status is OrderStatus.ON_HOLD:
            raise InvalidTransition(f"order {self.id} is on hold: its pickup does not expire until it is released")
        if self.capture_request(shipment_id) is not None:
            raise InvalidTransition(f"shipment {shipment_id} is being collected: its capture was asked for")
        shipment = self._waiting_pickup(shipment_id)
        if shipment.collect_by is None or shipment.collect_by >= at:  # collectable until then
            raise InvalidTransition(f"shipment {shipment_id} may still be collected until {shipment.collect_by}")
        cancelled = ShipmentStatus.CANCELLED
        shipments = [_replaced(s, status=cancelled) if s.id == shipment_id else s for s in self.shipments]
        lines, totals, units = self._everything_cancelled()
        return self._next(
            at=at, actor=actor, type=OrderEvent.PICKUP_EXPIRED, to=OrderStatus.CANCELLED,
            detail={"reason": "pickup_expired", "shipment_id": shipment_id, "location_id": shipment.location_id,
                    "collect_by": utc_text(shipment.collect_by), **units},
            shipments=shipments, hold=None, lines=lines, totals=totals, allocations=[],
        )  # fmt: skip

    def cancel(
        self, reason: str, *, at: datetime, actor: str, detail: dict[str, Any] | None = None, writes_off: bool = False
    ) -> Change:
        """The cancel is recorded on its own: the authorization is voided after it, and the
        payment says `voided` only once the gateway has approved that (`record_void`). Every unit
        goes with it (nothing has shipped: _everything_cancelled), and so do its allocations: the
        caller releases what they reserved (Cancellation.cancel). Its shipments, none of which has
        left, are cancelled (_shipments_withdrawn). `writes_off` (a person's cancel): a parcel a
        carrier reported delivered whose capture the gateway refused (parcels_refused) is written
        off with it (`written_off` in the entry): cancelled, its units leave on_hand (written_off)."""
        if not can_transition(self.status, OrderStatus.CANCELLED):
            raise InvalidTransition(f"an order that is {self.status} can no longer be cancelled")
        # A parcel a carrier reported delivered left: cancelled, its units would go back on sale.
        off = self.parcels_refused() if writes_off else []
        self.check_parcels_reported("cancelled", writes_off=off)
        if off:
            detail = {**(detail or {}), "written_off": off}
        lines, totals, units = self._everything_cancelled()
        # Its workflow's own out-of-stock cancel follows a ReserveStock run that reserved nothing.
        owed = self.reserving_maybe() and not (actor == WORKFLOW_ACTOR and reason == OutOfStock.code)
        return self._next(
            at=at, actor=actor, type=OrderEvent.CANCELLED, to=OrderStatus.CANCELLED,
            detail={"reason": reason, **(detail or {}), **units}, hold=None, shipments=self._shipments_withdrawn(),
            lines=lines, totals=totals, allocations=[], **({"stock_owed": True} if owed else {}),
        )  # fmt: skip

    def reserving_maybe(self) -> bool:
        """Whether a ReserveStock run may be reserving for this order now: authorized with nothing
        allocated (or held so: a run that read it before the hold goes on). Such a run that
        reserves after a cancel's release and dies before its write (which would fail and give the
        units back) leaves them held for no one, and no retry of it may come: the cancel records
        the release owed (stock_owed), which the reconciler's kept-back pass makes once the order
        has not changed for ReconcileAfterMinutes, longer than an Express execution lives."""
        resumes_to = self.hold.resume_to if self.status is OrderStatus.ON_HOLD and self.hold else self.status
        return resumes_to is OrderStatus.AUTHORIZED and not self.allocations

    def _everything_cancelled(self) -> tuple[list[OrderLine], Totals, dict[str, Any]]:
        """The lines and totals of this order, nothing of which has shipped, once every unit is
        cancelled, as a cancel of units leaves a line it empties: each line's quantity drops to
        zero and its cancelled_quantity grows by it, at zero discount, tax and total (its unit
        price kept); nothing is left to price, ship or pay for, so every total is zero. And what
        the history entry says of it: the units ({line_id: units}) and the old and new grand total,
        as a `units_cancelled` entry does (the value cancelled stays derivable from it)."""
        zero = Money.zero(self.currency)
        lines = [
            _replaced(line, quantity=0, discount=zero, tax=zero, total=zero,
                      cancelled_quantity=line.cancelled_quantity + line.quantity)
            for line in self.lines
        ]  # fmt: skip
        totals = Totals(subtotal=zero, discount=zero, shipping=zero, tax=zero, grand_total=zero)
        units = {
            "lines": {line.line_id: line.quantity for line in self.lines if line.quantity},
            "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                            "to": zero.model_dump(mode="json")},
        }  # fmt: skip
        return lines, totals, units

    def _shipments_withdrawn(self) -> list[Shipment]:
        # A parcel still to ship, or a pickup waiting at its store, goes with the order: nothing of a
        # cancelled one is shipped or collected, and a location reading it finds no work left.
        cancelled = ShipmentStatus.CANCELLED
        return [_replaced(s, status=cancelled) if s.status in NOT_LEFT else s for s in self.shipments]

    def hold_for(self, reason: HoldReason, note: str | None, *, at: datetime, actor: str,
                 detail: dict[str, Any] | None = None, parked: bool = False, confirms_ships: list[str] | None = None,
                 **fields: Any) -> Change:  # fmt: skip
        """On hold from where it is now, remembering that status for the release (`parked`: a
        park's, Order.park; `confirms_ships`: Order.hold_unfinished_ships's). A hold not `parked`
        (a person's, a review's) of an order with a parcel a carrier reported delivered is
        InvalidTransition naming it (check_parcels_reported): that parcel has left."""
        if not can_transition(self.status, OrderStatus.ON_HOLD):
            raise InvalidTransition(f"an order that is {self.status} cannot be put on hold")
        if not parked:
            # A person's hold (or a review's) means nothing of the order ships while it stands: a
            # parcel a carrier reported delivered has left, as a shipped one has (a partly shipped
            # order cannot be held). The system's own holds for a person (a park, parcels to
            # confirm) may stand over it: the report sent again answers them.
            self.check_parcels_reported("put on hold")
        return self._next(
            at=at, actor=actor, type=OrderEvent.ON_HOLD, to=OrderStatus.ON_HOLD,
            detail={"reason": reason, **({"note": note} if note else {}), **(detail or {})},
            hold=Hold(reason=reason, note=note, since=at, resume_to=self.status, resume_since=self.in_status_since,
                      resume_late=self.late_since(),
                      resume_late_resumed=self.late_resumed is not None and self.late_since() == self.late_resumed,
                      parked=parked, confirms_ships=list(confirms_ships or [])), **fields,
        )  # fmt: skip

    def park(self, *, error: str, message: str, at: datetime, actor: str, execution: str = "") -> Change:
        """The workflow could not finish for an infrastructure reason (retries ran out): on hold
        for a person, with what was reserved and authorized kept as it is, nothing captured.
        Parked with every unit reserved and no shipment, its CreateShipments is what failed, and
        may have been killed (timed out) after the carrier booked a parcel, running no failure
        path: the keys it asked under are kept as bookings maybe made (`unrecorded_bookings`),
        used by the release's bookings or owed a cancel from the change that gives them up.
        `execution`: the name of the workflow execution that parks it, named in the entry."""
        note = f"order workflow failed after retries: {error}" + (f": {message}" if message else "")
        detail: dict[str, Any] = {"error": error, "message": message, "parked": True}
        if execution:
            detail["execution"] = execution
        return self.hold_for(
            "other", note[:500], at=at, actor=actor, detail=detail,
            parked=True, unrecorded_bookings=[*self.unrecorded_bookings, *self._bookings_maybe_made()],
        )  # fmt: skip

    def _bookings_maybe_made(self) -> list[GivenUpBooking]:
        """The bookings CreateShipments asks the carrier for (one per location of the allocations,
        under the order's current booking key) when it is this order's step to run, save those
        already kept: the carrier and tracking number of each unknown. None for a pickup order: its
        parcels get pick slips (core.pick_slips), no carrier is asked."""
        if self.fulfillment.type == "pickup":
            return []
        if self.status not in (OrderStatus.AUTHORIZED, OrderStatus.BACKORDERED) or self.shipments:
            return []
        if not self.allocations or self.short_of():
            return []
        kept = {(booking.shipment_id, booking.booking_key) for booking in self.unrecorded_bookings}
        maybe = []
        for location_id in sorted({allocation.location_id for allocation in self.allocations}):
            shipment_id = self.parcel_id(location_id)
            key = booking_key(shipment_id, self.rebookings)
            if (shipment_id, key) not in kept:
                maybe.append(GivenUpBooking(shipment_id=shipment_id, booking_key=key))
        return maybe

    def hold_unfinished_ships(self, shipment_ids: list[str], *, at: datetime, actor: str) -> Change:
        """The ships of `shipment_ids` asked for their captures and never finished (their requests
        died, and nobody shipped again): on hold for a person to confirm whether each parcel left,
        which nothing the order holds can say. The jeopardy scan's handler gives those captures back
        (core/capture_sweep.py), so a parcel that left is shipped again after the release. Only a
        person ends it: no hold expiry cancels it (Hold.parked)."""
        # The system's hold for a person, as a park is: no hold expiry cancels it (Hold.parked).
        return self.hold_for(
            "other", _unfinished_ships_note(shipment_ids), at=at, actor=actor,
            detail={"shipment_ids": list(shipment_ids)}, parked=True, confirms_ships=list(shipment_ids),
        )  # fmt: skip

    def park_for_unfinished_ships(self, shipment_ids: list[str], *, at: datetime, actor: str) -> Change:
        """The ships of `shipment_ids` asked for their captures and never finished, on an order a
        person held first (hold_unfinished_ships cannot hold it again): the person's hold stays the
        order's (its reason, note, since and the status a release resumes to are theirs), made a
        park, so no hold expiry cancels an order whose parcel may have left (Hold.parked); the
        system's hold is recorded beside it, an `on_hold` entry that changes no status, with the
        parcels to confirm (`shipment_ids`, which Order.parked_from reads as hold_unfinished_ships's),
        which the person's release leaves standing (Hold.ships_to_confirm, Order.release).
        InvalidTransition when the order is not on a person's hold (a park is one already)."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None or self.hold.parked:
            raise InvalidTransition(f"order {self.id} is not on a person's hold")
        return self._next(
            at=at, actor=actor, type=OrderEvent.ON_HOLD,
            detail={"reason": "other", "note": _unfinished_ships_note(shipment_ids),
                    "shipment_ids": list(shipment_ids)},
            hold=_replaced(self.hold, parked=True, ships_to_confirm=list(shipment_ids)),
        )  # fmt: skip

    def mark_jeopardy(
        self,
        reason: str,
        since: datetime,
        *,
        at: datetime,
        actor: str,
        refund_refused: bool = False,
        on_deadline: bool = False,
    ) -> Change:
        """Late for its current status (the scan found it past its deadline `since`).
        `refund_refused`: late with a capture request standing whose refund the gateway refused
        since the order last changed, so a person settles it: marked (again, when a change since
        its mark left it unlisted) to be listed late (`listed_late`); `on_deadline`, found so by a
        pass of its status's own deadline, so the mark outlives the refund (jeopardy_on_deadline).
        Marked again, it keeps the `since` of the mark it has (late since then, whichever pass's
        deadline found it now: OMS_SLA may have named its status, or changed its deadline, since):
        order.jeopardy and the customer's 'delayed' notice come of a new `since`
        (core.domain_events), and one lateness is told once."""
        if refund_refused and not self.captures_requested:
            raise InvalidTransition(f"order {self.id} has no capture request standing")
        marked = self.jeopardy is not None and self.jeopardy.status is self.status
        if marked and (self.listed_late or not refund_refused):
            raise InvalidTransition(f"order {self.id} is marked late for {self.status} already")
        if marked:
            assert self.jeopardy is not None
            since = self.jeopardy.since
        jeopardy = Jeopardy(reason=reason, status=self.status, since=since)
        return self._next(
            at=at, actor=actor, type=OrderEvent.JEOPARDY, detail=jeopardy.model_dump(mode="json"), jeopardy=jeopardy,
            changed_before_mark=self.last_changed, jeopardy_for_refund=refund_refused,
            jeopardy_on_deadline=refund_refused and on_deadline,
        )  # fmt: skip

    def mark_late_on_deadline(self) -> Bookkeeping:
        """The jeopardy scan found this order, marked late for a refund the gateway refused alone
        (stored by the partly shipped pass while that status had no deadline by default:
        jeopardy_for_refund, not jeopardy_on_deadline), past a deadline of its status's own (the
        default gives it one now, as OMS_SLA may): the mark now outlives the refund
        (jeopardy_on_deadline), as one that pass made would, so no second mark, order.jeopardy
        event or notice follows it once the refund is made. Bookkeeping that changes nothing else,
        not even when the order last changed (`updated_at`): the capture sweep and the reconciler
        judge it as before. Rare: only such a stored mark."""
        late = self.jeopardy
        if late is None or late.status is not self.status or not self.jeopardy_for_refund or self.jeopardy_on_deadline:
            raise InvalidTransition(f"order {self.id} is not marked late for a refused refund alone")
        new = _replaced(self, jeopardy_on_deadline=True, version=self.version + 1)
        check_successor(self, new)
        return new, None

    def clear_jeopardy(self, reason: str, *, at: datetime, actor: str) -> Change:
        """No longer late for its current status by the deadline that status has now: the jeopardy
        scan found it so after OMS_SLA lengthened that deadline (a mark stands otherwise until the
        order leaves the status). The mark goes, and with it the lateness a release resumed
        (late_resumed, of the old deadline), so a hold now carries none; a `jeopardy_cleared`
        entry (the mark's status and `since`, and `reason`) that changes no status, nor when the
        order last changed (`last_changed`), as its mark did not: the reconciler judges a stall as
        before. InvalidTransition when the order is not marked for its status, or is marked for a
        person to settle a refund the gateway refused (jeopardy_for_refund: late or not, money
        stands that nobody else settles)."""
        late = self.jeopardy
        if late is None or late.status is not self.status or self.jeopardy_for_refund:
            raise InvalidTransition(f"order {self.id} is not marked late for {self.status} by its deadline")
        return self._next(
            at=at, actor=actor, type=OrderEvent.JEOPARDY_CLEARED,
            detail={"status": late.status.value, "since": _TIMES.dump_python(late.since, mode="json"),
                    "reason": reason},
            jeopardy=None, late_resumed=None, changed_before_mark=self.last_changed,
        )  # fmt: skip

    def mark_restarted(self, *, at: datetime) -> Bookkeeping:
        """The reconciler restarted this stalled order's workflow at `at`, the first time since it
        last changed (`restarted_since_change`): the park threshold counts from it. Bookkeeping
        that changes nothing else, not even when the order last changed (`updated_at`): the
        execution restarted, the jeopardy scan and the reconciler's next passes judge it as before."""
        if self.restarted_since_change is not None:
            raise InvalidTransition(f"order {self.id} is marked restarted in this stall already")
        new = _replaced(self, restarted_at=at, version=self.version + 1)
        check_successor(self, new)
        return new, None

    def repeats_release(self, *, note: str | None, at: datetime, actor: str) -> bool:
        """Whether a release by `actor` with `note` at `at` is the person's release that left the
        order on the system's hold for parcels to confirm sent again (Hold.left_by_release): the
        same caller and note, within RELEASE_RETRY_WINDOW of it. Such a retry (its answer lost, it
        carries a new Idempotency-Key or none) means the hold its sender saw, which is released
        already: answered with the order as it stands, it confirms no parcel (Holds.release)."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None or self.hold.left_by_release is None:
            return False
        sent = self.hold.left_by_release
        return (sent.actor, sent.note) == (actor, note) and at - self.hold.since < RELEASE_RETRY_WINDOW

    def release(self, *, note: str | None, at: datetime, actor: str, request_key: str | None = None) -> Change:
        """Off hold, back to the status it was held from. A person's hold made a park for parcels
        to confirm (Hold.ships_to_confirm, Order.park_for_unfinished_ships) ends alone: the order
        stays on the system's hold for those parcels, as hold_unfinished_ships would have held it
        (reason `other`, its note naming them, a park no hold expiry cancels, resuming where the
        person's hold stopped), recorded as a `released` entry that changes no status. What the
        order showed was the person's hold only, so a release of it must not also confirm parcels
        it never named; the next release does. So with a hold a ship's capture request still stands
        on that the hold does not name (unfinished_ships: a person's hold before the capture sweep
        made it a park, or a park for a failure): a held order never ships, so that ship died and
        its parcel may have left; released to `allocated`, the order had nothing to say so, and a
        reject or a cancel of units would refund the capture and put the parcel's units back on
        sale. The release leaves the system's hold for those parcels as the sweep's park would, but
        for one a carrier reported delivered (reported_delivered): it left, and the reconciler's
        kept-back pass ships it once the order is released (reported_to_finish).
        `request_key` (a client's Idempotency-Key, scoped to its API key) is kept in the entry, so
        a retry of this release finds it once the order is no longer held (Holds.release). Either
        way a pickup waiting at its store gets back the time held (pickups_after_hold), in this
        same write: a retry, which writes nothing, moves no deadline again."""
        keyed = {"request_key": request_key} if request_key is not None else {}
        if self.status is not OrderStatus.ON_HOLD or self.hold is None:
            raise InvalidTransition(f"an order that is {self.status} is not on hold")
        if self.hold.resume_to is None:
            raise InvalidTransition(f"order {self.id} was read without the status its hold resumes to")
        # The time held does not count against a pickup's customer (pickups_after_hold).
        shipments, collect_by = self.pickups_after_hold(at=at)
        moved: dict[str, Any] = {"collect_by": collect_by} if collect_by else {}
        resumed: dict[str, Any] = {"shipments": shipments} if collect_by else {}
        # A parcel a carrier reported delivered (reported_delivered) is confirmed: it left.
        unnamed = [s for s in self.unfinished_ships() if s not in self.hold.confirms_ships and self.reported(s) is None]
        if self.hold.ships_to_confirm or unnamed:
            shipment_ids = list(dict.fromkeys([*self.hold.ships_to_confirm, *unnamed]))
            to_confirm = Hold(reason="other", note=_unfinished_ships_note(shipment_ids), since=at,
                              resume_to=self.hold.resume_to, resume_since=self.hold.resumed_since(at),
                              resume_late=self.hold.resumed_late(at),
                              resume_late_resumed=self.hold.resumed_late(at) is not None,
                              parked=True, confirms_ships=shipment_ids,
                              left_by_release=ReleaseSent(actor=actor, note=note))  # fmt: skip
            return self._next(
                at=at, actor=actor, type=OrderEvent.RELEASED,
                detail={"reason": self.hold.reason, **({"note": note} if note else {}), "shipment_ids": shipment_ids,
                        **keyed, **moved},
                hold=to_confirm, **resumed,
            )  # fmt: skip
        return self._next(
            at=at, actor=actor, type=OrderEvent.RELEASED, to=self.hold.resume_to,
            detail={"reason": self.hold.reason, **({"note": note} if note else {}), **keyed, **moved}, hold=None,
            **resumed, **self._resumed_clock(at),
        )  # fmt: skip

    def pickups_after_hold(self, *, at: datetime) -> tuple[list[Shipment], dict[str, str]]:
        """The shipments once this order's hold ends at `at`, each pickup waiting at its store given
        back the time the hold took from its customer, and the new deadlines by shipment id ({} when
        none moved). A held order hands nothing over (ready_to_collect) and nothing expires it, so a
        customer who came meanwhile was turned away: each `collect_by` after the hold began moves
        later by the time held (the customer has, from the release, what they had left when it
        began), and to no sooner than PICKUP_AFTER_RELEASE after the release (at most the wait they
        were given), so a customer told of it then can still come. A hold that began past the
        deadline took nothing from them: that pickup expires on the next pass. But for a pickup the
        hold asks a person to confirm (Hold.confirms_ships: its collect died after the capture, the
        customer at the counter), whose hold the capture sweep puts on only once it is late: the
        person who finds the customer took it releases, then hands it over again (a held order
        hands nothing over), and a pass between the two would cancel an order its customer has,
        putting the units they took back on sale. It gets PICKUP_AFTER_RELEASE from the release too."""
        assert self.hold is not None
        since, shipments, moved = self.hold.since, [], {}
        confirming = set(self.hold.confirms_ships)
        for shipment in self.shipments:
            deadline = shipment.collect_by
            if (
                shipment.status is ShipmentStatus.READY_FOR_PICKUP and deadline is not None
                and (since < deadline or shipment.id in confirming)
            ):  # fmt: skip
                wait = deadline - shipment.ready_at if shipment.ready_at is not None else PICKUP_AFTER_RELEASE
                later = max(deadline + (at - since), at + min(PICKUP_AFTER_RELEASE, wait))
                if later > deadline:
                    moved[shipment.id] = utc_text(later)
                    shipment = _replaced(shipment, collect_by=later)
            shipments.append(shipment)
        return shipments, moved

    def edit(
        self, *, lines: list[OrderLine], totals: Totals, shipping_address: Address, shipping_method: str | None,
        changed: list[str], reauthorized: tuple[Money, str] | None, at: datetime, actor: str,
        grants: list[PromotionGrant] | None = None,
    ) -> Change:  # fmt: skip
        """New lines, address or shipping method, priced again (`grants`: what its codes and the
        plugins' rules grant the order as edited, its `promotion_grants` from now on, so units the edit
        adds keep the terms they were bought under; None: as they were); `reauthorized` is the (amount,
        reference) of an authorization the gateway approved for a grown total, which the order
        requested (request_reauthorization): a request standing is recorded by this edit or settled
        before it (InvalidTransition otherwise), and the authorization it replaces is named in
        `replaced_authorizations` until it is voided. An allocated or
        backordered order goes back to `authorized` with nothing allocated, to be sourced again (a
        held one when it is released), unless the edit changes nothing its parcels depend on
        (sources_again_after)."""
        self.check_editable()
        detail: dict[str, Any] = {
            "changed": changed,
            "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                            "to": totals.grand_total.model_dump(mode="json")},
        }  # fmt: skip
        payment = self.payment
        replaced = list(self.replaced_authorizations)
        later, spent = list(self.later_authorizations), list(self.spent_authorizations)
        authorized_at = self.authorized_at
        if reauthorized is not None:
            payment = payment.authorized_for(*reauthorized)
            authorized_at = at
            detail["reauthorized"] = {"amount": reauthorized[0].model_dump(mode="json"), "reference": reauthorized[1]}
            if self.payment.authorization:
                replaced.append(self.payment.authorization)
                later = _later_kept(later, self.captures_requested, reauthorized[1])
                spent = [a for a in spent if a != self.payment.authorization]
        request = self.authorization_requested
        recorded = request is not None and not request.withdrawn and reauthorized is not None
        if (request is not None or reauthorized is not None) and not (recorded and request.amount == reauthorized[0]):
            raise InvalidTransition(f"order {self.id} has no authorization of this edit's total requested")
        sourced = self.sources_again_after(changed)
        again = self._sourced_again() if sourced else {}
        if again:
            detail["released"] = [a.model_dump() for a in self.allocations]
        kept = {(line.line_id, line.sku) for line in lines}
        gone = [ReplacedLine(line_id=line_id, sku=sku) for line_id, sku in self.reservation_lines()
                if (line_id, sku) not in kept]  # fmt: skip
        if sourced:
            # Such an edit may alter every parcel, made or still to be made: a new parcel generation,
            # whether or not it withdrew any (sourced again counts the same one).
            again["rebookings"] = self.rebookings + 1
        return self._next(
            at=at, actor=actor, type=OrderEvent.EDITED, detail=detail, lines=lines, totals=totals, replaced_lines=gone,
            shipping_address=shipping_address, shipping_method=shipping_method, **self._replacing(payment),
            priced_version=self.version + 1, authorization_requested=None,
            replaced_authorizations=replaced, later_authorizations=later, spent_authorizations=spent,
            authorized_at=authorized_at,
            promotion_grants=self.promotion_grants if grants is None else grants,
            may_wait=self.may_still_wait(lines), **again,
        )  # fmt: skip

    def sources_again_after(self, changed: Sequence[str]) -> bool:
        """Whether an edit that changes `changed` (of lines, shipping_address, shipping_method) sends
        this order back to be sourced (edit). Any change can move where and how a shipped order's
        parcels go (the nearest location, the label's address, the service booked). A pickup's
        parcel is its lines picked at its store, which no edit changes, and its address is the
        customer's, not where anything goes (its tax is the store's: CaptureService.quote): an edit
        of its address alone leaves what the store reserved or picked where it is, ready or not."""
        return self.fulfillment.type != "pickup" or "lines" in changed

    def may_still_wait(self, lines: Sequence[OrderLine | LineInput]) -> list[str]:
        """The skus it has waited for (`may_wait`) that an edit to `lines` asks no more units of:
        those units may wait again whatever their product allows now; more are a new order's."""
        had: dict[str, int] = defaultdict(int)
        wanted: dict[str, int] = defaultdict(int)
        for line in self.lines:
            had[line.sku] += line.quantity
        for line in lines:
            wanted[line.sku] += line.quantity
        return [sku for sku in self.may_wait if wanted[sku] <= had[sku]]

    def record_replaced_voided(
        self, authorization: str, reference: str, *, at: datetime, actor: str,
        reason: str = "replaced by the authorization of the edited total",
    ) -> Change:  # fmt: skip
        """The gateway voided `authorization`, which an edit or a renewal (renew_authorization)
        replaced (`replaced_authorizations`)."""
        if authorization not in self.replaced_authorizations:
            raise InvalidTransition(
                f"order {self.id} has no replaced authorization {_shown_reference(authorization)} to void"
            )
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_VOIDED,
            detail={"authorization": authorization, "reference": reference,
                    "reason": reason},
            replaced_authorizations=[a for a in self.replaced_authorizations if a != authorization],
        )  # fmt: skip

    def _resumed_clock(self, at: datetime) -> dict[str, Any]:
        """The `status_since` a release at `at` resumes (Hold.resume_since, the time held added), and
        the lateness it resumes with it (Hold.resume_late: late_resumed), as _next's fields; nothing
        when the hold keeps no clock (the clock then starts at the release, and so would a lateness)."""
        assert self.hold is not None
        since, late = self.hold.resumed_since(at), self.hold.resumed_late(at)
        if since is None:
            return {}
        return {"status_since": since, **({"late_resumed": late} if late is not None else {})}

    def late_since(self) -> datetime | None:
        """Since when the order is late in its current status: its mark's `since`, or, unmarked, that
        of the lateness a release resumed (late_resumed); None when it is neither."""
        if self.jeopardy is not None and self.jeopardy.status is self.status:
            return self.jeopardy.since
        return self.late_resumed

    def as_released(self) -> "Order":
        """A copy of this order as its release would resume it (the status its hold resumes to, no
        hold): what the review rules judge of an edited held order (hookspec oms_review_order: a
        `pending` or `authorized` order). Never stored. The order itself when it is not held."""
        if self.status is not OrderStatus.ON_HOLD or self.hold is None or self.hold.resume_to is None:
            return self
        return self.model_copy(update={"status": self.hold.resume_to, "hold": None})

    def held_for_review(
        self, edited: Change, requests: list[ReviewRequest], *, at: datetime, actor: str
    ) -> "tuple[Order, list[HistoryEntry]]":
        """`edited` (this order's edit) on hold in the same version, as a new order is when a review
        rule asks (the first request's reason and note; the requests in the entry, review_detail):
        one write, so nothing is authorized or sourced for the edited order before a person has looked.
        Held already (a person's hold), its hold takes the review's reason and note, keeping when it
        began and the status it resumes to, with an `on_hold` entry that changes no status: whoever
        releases it sees what the rules ask, as on a new order they held."""
        new, entry = edited
        first = requests[0]
        if new.status is OrderStatus.ON_HOLD and new.hold is not None:
            hold = _replaced(new.hold, reason=first.reason, note=first.note)
            hold_entry = HistoryEntry(
                at=at, type=OrderEvent.ON_HOLD, actor=actor,
                detail={"reason": first.reason, **({"note": first.note} if first.note else {}),
                        **review_detail(requests)},
            )  # fmt: skip
            held = _replaced(new, hold=hold)
            check_successor(self, held)
            return held, [entry, hold_entry]
        held, hold_entry = new.hold_for(first.reason, first.note, at=at, actor=actor, detail=review_detail(requests))
        held = _replaced(held, version=self.version + 1)
        check_successor(self, held)
        return held, [entry, hold_entry]

    def record_capture_reversal(self, shipment_id: str, detail: dict[str, Any], *, at: datetime, actor: str) -> Change:
        """A capture for `shipment_id` that this order could not record was refunded: counted, so a
        shipment made again under that id is captured under a new key, and its authorization is
        spent (`spent_authorizations`): what the capture took is not captured on it again."""
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_CAPTURE_REVERSED, detail=detail,
            reversed_captures=[*self.reversed_captures, shipment_id],
            **self._spending(self.capture_authorization(shipment_id)),
            captures_requested=self._requests_besides(shipment_id),
        )  # fmt: skip

    def record_void(self, authorization: str | None, reference: str | None, *, at: datetime, actor: str) -> Change:
        """The gateway released the authorization of this cancelled order; or, with no
        `authorization`, the order was authorized for nothing with no gateway asked (authorized_nothing),
        and is voided with none asked either."""
        payment = self.payment
        if self.status is not OrderStatus.CANCELLED:
            raise InvalidTransition(f"only a cancelled order's authorization is voided, not a {self.status} one's")
        if payment.status is not PaymentStatus.AUTHORIZED or payment.authorization != authorization:
            raise InvalidTransition(
                f"the payment is {payment.status} under {_shown_reference(payment.authorization)}; nothing to void"
            )
        if authorization is None and (reference is not None or not self.authorized_nothing()):
            raise InvalidTransition(f"order {self.id} holds an authorization: the gateway voids it")
        why = {"reason": NOTHING_TO_VOID} if authorization is None else {}
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_VOIDED,
            detail={"authorization": authorization, "reference": reference, **why}, payment=payment.voided(),
            own_void_owed=False,
        )  # fmt: skip

    def authorized_nothing(self) -> bool:
        """Authorized with no gateway asked: it owed nothing (Order.authorize with no reference), and
        no edit since authorized anything (payment.authorization stays None until one does)."""
        payment = self.payment
        return (
            payment.status is PaymentStatus.AUTHORIZED and payment.authorization is None
            and payment.authorized.amount == 0 and payment.captured.amount == 0
        )  # fmt: skip

    # --- Cancelling units that have not shipped -----------------------------------------------
    def unshipped_units(self) -> dict[str, int]:
        """Units of each line in shipments that have not left (pending, or a pickup waiting at its store)."""
        units = {line.line_id: 0 for line in self.lines}
        for shipment in self.shipments:
            if shipment.status in NOT_LEFT:
                for item in shipment.lines:
                    units[item.line_id] = units.get(item.line_id, 0) + item.quantity
        return units

    def ships_units_left(self) -> bool:
        """Allocated (or held from allocated: its shipments wait for the release) or partly shipped:
        its units not yet shipped are in pending shipments."""
        held_allocated = self.hold is not None and self.hold.resume_to is OrderStatus.ALLOCATED
        return self.status in (OrderStatus.ALLOCATED, OrderStatus.PARTIALLY_SHIPPED) or (
            self.status is OrderStatus.ON_HOLD and held_allocated
        )

    def not_allocated_yet(self) -> bool:
        """Pending or authorized (or held from either), reserved or not: its workflow has yet to
        book its parcels and allocate it."""
        held_from = self.hold.resume_to if self.status is OrderStatus.ON_HOLD and self.hold is not None else None
        return self.status in (OrderStatus.PENDING, OrderStatus.AUTHORIZED) or held_from in (
            OrderStatus.PENDING, OrderStatus.AUTHORIZED,
        )  # fmt: skip

    def not_sourced(self) -> bool:
        """Pending or authorized (or held from either) with nothing allocated: every unit waits to
        be sourced, in no shipment yet."""
        return self.not_allocated_yet() and not self.allocations

    def waits_for_stock(self) -> bool:
        """Backordered, or held while backordered (its release waits for stock again): what it
        holds is in no shipment yet."""
        held_from = self.hold.resume_to if self.status is OrderStatus.ON_HOLD and self.hold is not None else None
        return OrderStatus.BACKORDERED in (self.status, held_from)

    def reserved_on_hold(self) -> bool:
        """Held between ReserveStock and CreateShipments (a park, or a person's hold landing then):
        stock reserved for it (allocations) and no shipment yet. Its release restarts its workflow,
        which books the parcels; a cancel of its units sends it back to be sourced, as an edit does."""
        return (
            self.status is OrderStatus.ON_HOLD
            and self.hold is not None
            and self.hold.resume_to is OrderStatus.AUTHORIZED
            and bool(self.allocations)
            and not self.shipments
        )

    def reserved_unbooked(self) -> bool:
        """Authorized with its stock reserved (allocations) and no parcel yet: between its workflow's
        ReserveStock and CreateShipments, which is booking the parcels of those allocations (or
        retrying the carrier). A cancel of its units takes them from its allocations (cancel_units);
        that CreateShipments loses its write and, retried, books what is left."""
        return self.status is OrderStatus.AUTHORIZED and bool(self.allocations) and not self.shipments

    def backorder_filled(self) -> bool:
        """Backordered with every unit reserved: it waits for no stock, only for the execution its
        last fill started to create its shipments (CreateShipments allocates it). Should that
        execution die, no arrival starts it again: the reconciler does (core.reconciliation)."""
        return self.status is OrderStatus.BACKORDERED and bool(self.allocations) and not self.short_of()

    def units_to_cancel(self, lines: dict[str, int] | None) -> dict[str, int]:
        """The units a cancel takes ({line_id: units}): `lines`, or for None every unit not yet
        shipped. Only an allocated (held or not), partly shipped or (with `lines`) backordered (held
        or not: waits_for_stock) or not yet sourced (not_sourced) order cancels units
        (InvalidTransition otherwise); a line the order lacks, or more units than a line has, is
        InvalidRequest; units that have shipped are InvalidTransition (409: they are returned instead).
        Held with stock reserved and no shipment yet (reserved_on_hold) counts as not yet sourced, and
        so does one not held whose parcels are being booked (reserved_unbooked)."""
        waiting = (
            self.waits_for_stock() or self.not_sourced() or self.reserved_on_hold() or self.reserved_unbooked()
        ) and lines is not None
        if not (self.ships_units_left() or waiting):
            raise InvalidTransition(f"units of an order that is {self.status} cannot be cancelled")
        # A backordered or not yet sourced order has no shipment yet: every unit of it is unshipped.
        unshipped = {line.line_id: line.quantity for line in self.lines} if waiting else self.unshipped_units()
        if lines is None:
            return {line_id: units for line_id, units in unshipped.items() if units}
        by_id = {line.line_id: line for line in self.lines}
        invalid = [
            {"field": f"lines[{i}].line_id", "message": f"no line {line_id}"} if line_id not in by_id
            else {"field": f"lines[{i}].quantity", "message": f"{line_id} has {units_text(by_id[line_id].quantity)}"}
            for i, (line_id, units) in enumerate(lines.items())
            if line_id not in by_id or units > by_id[line_id].quantity
        ]  # fmt: skip
        if invalid:
            said = "; ".join(item["message"] for item in invalid)
            raise InvalidRequest(f"these lines cannot be cancelled as asked: {said}", details=invalid)
        shipped = [line_id for line_id, units in lines.items() if units > unshipped.get(line_id, 0)]
        if shipped:
            raise InvalidTransition(
                f"units of {', '.join(shipped)} have shipped: return them instead",
                details=[{"line_id": line_id, "unshipped": unshipped.get(line_id, 0)} for line_id in shipped],
            )
        return dict(lines)

    def check_units_spare_parcels(self, cancelled: dict[str, int], *, writes_off: bool = False) -> None:
        """ParcelNotConfirmed (409) when the `cancelled` units ({line_id: units}) cannot all come
        from parcels other than those waiting for a person to confirm whether they left
        (parcels_to_confirm), or a carrier reported or scanned delivered (_parcels_kept):
        cancel_units takes them from the others, and never from those. `writes_off` (a person's
        cancel): the refused parcels whose every unit it names (parcels_written_off) give theirs
        first, and the scanned ones are as any other (the person answers whether they left)."""
        off = self.parcels_written_off(cancelled) if writes_off else []
        if off:
            cancelled = dict(cancelled)
            for item in (item for s in self.shipments if s.id in off for item in s.lines):
                cancelled[item.line_id] -= item.quantity
        waiting = self._parcels_kept(scans=not writes_off) - set(off)
        if not waiting:
            return
        # A capture request standing on the hold is settled before any units are cancelled (refunded,
        # the request gone: UnitCancellation), which would leave a person's hold the expiry cancels and
        # no trace of the parcel to confirm: refused whichever parcels the units come from.
        self.check_parcels_kept("cancelled in part", self.unfinished_ships())
        spare: dict[str, int] = defaultdict(int)
        holding: dict[str, list[str]] = defaultdict(list)
        for shipment in self.shipments:
            if shipment.status not in NOT_LEFT or shipment.id in off:
                continue
            for item in shipment.lines:
                if shipment.id in waiting:
                    holding[item.line_id].append(shipment.id)
                else:
                    spare[item.line_id] += item.quantity
        short = [line_id for line_id, units in cancelled.items() if units > spare[line_id]]
        touched = [shipment_id for line_id in short for shipment_id in holding[line_id]]
        self.check_parcels_kept("cancelled in part", list(dict.fromkeys(touched)), scans=not writes_off)

    def cancel_units(
        self, cancelled: dict[str, int], priced: dict[str, OrderLine], totals: Totals, *, reason: str, at: datetime,
        actor: str, grants: list[PromotionGrant] | None = None, request_key: str | None = None,
        writes_off: bool = False,
    ) -> Change:  # fmt: skip
        """`cancelled` units ({line_id: units}, from units_to_cancel) leave the order before they
        ship: each line's quantity drops and its cancelled_quantity grows by them, the lines left
        take their `priced` values (the lines with units left, priced again) and the order
        `totals`, and `grants` (what its codes and the plugins' rules grant the units left) are its
        `promotion_grants` from now on (None: as they were), as an edit's are. An order not yet
        sourced (not_sourced) or backordered has no shipment to shrink (see the branches below);
        otherwise the shipments that have not left (pending, or a pickup waiting at its store)
        lose those units (the last ones first) and an emptied one is `cancelled` (kept, as a whole
        cancel keeps its parcels; its booking given up) and its allocations go; a pending one left with fewer units
        is due a label for what it now holds (`labels_due`, booked under a new booking key:
        `rebookings` grows). With nothing left to ship the order is `shipped`, or `delivered` when
        every shipment not cancelled is. `request_key` (a client's Idempotency-Key, scoped to its API key) is kept
        in the entry: a retry of the request finds it there (UnitCancellation.cancel). `writes_off`
        (a person's cancel): a parcel a carrier reported delivered whose capture the gateway refused,
        every unit of which the cancel names (parcels_written_off), gives its units first and is
        written off (`written_off` in the entry): cancelled with its lines and mark kept, its units
        leaving on_hand after the write (Order.written_off), never back on sale."""
        zero = Money.zero(self.currency)
        keyed = {"request_key": request_key} if request_key is not None else {}
        lines = []
        for line in self.lines:
            gone = cancelled.get(line.line_id, 0)
            left = line.quantity - gone
            if left:
                price = priced[line.line_id]
                if price.quantity != left or price.sku != line.sku:
                    raise InvalidTransition(f"line {line.line_id} was priced for {price.quantity} units, not {left}")
                line = _replaced(price, line_id=line.line_id, cancelled_quantity=line.cancelled_quantity + gone,
                                 shipped_quantity=line.shipped_quantity,
                                 returned_quantity=line.returned_quantity)  # fmt: skip
            else:
                line = _replaced(line, quantity=0, discount=zero, tax=zero, total=zero,
                                 cancelled_quantity=line.cancelled_quantity + gone)  # fmt: skip
            lines.append(line)
        kept_grants = self.promotion_grants if grants is None else grants
        if self.not_sourced():
            # Nothing is reserved for it yet (or, sent back to be sourced, its workflow counts what
            # it holds as its own and gives back what it no longer needs): it keeps its status. One
            # not authorized yet is authorized for the new total under a new key, as an edited one
            # is (`priced_version`); an authorization made covers it, and its shipments capture
            # only the new total, the rest released once the last has shipped.
            repriced = {"priced_version": self.version + 1} if self.payment.status is PaymentStatus.PENDING else {}
            return self._next(
                at=at, actor=actor, type=OrderEvent.UNITS_CANCELLED,
                detail={"reason": reason, "lines": cancelled,
                        "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                                        "to": totals.grand_total.model_dump(mode="json")}, **keyed},
                lines=lines, totals=totals, promotion_grants=kept_grants, **repriced,
            )  # fmt: skip
        if self.waits_for_stock() or self.reserved_on_hold():
            # Nothing is in a shipment yet: like an edit, the order is sourced again for what is left
            # (its workflow counts its reservations as its own and gives back what it no longer needs).
            # A held one stays on hold, released to `authorized`, which starts that workflow again.
            # Its parcels, made or still to be made, may hold other units: a new parcel generation,
            # whether or not it withdrew any (sourced again counts the same one).
            again = {**self._sourced_again(), "rebookings": self.rebookings + 1}
            return self._next(
                at=at, actor=actor, type=OrderEvent.UNITS_CANCELLED,
                detail={"reason": reason, "lines": cancelled,
                        "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                                        "to": totals.grand_total.model_dump(mode="json")},
                        "released": [a.model_dump() for a in self.allocations], **keyed},
                lines=lines, totals=totals, promotion_grants=kept_grants, **again,
            )  # fmt: skip
        if self.reserved_unbooked():
            # Its workflow's CreateShipments is booking the parcels of its allocations: they lose the
            # units (the last ones first), so that step's write, over the version it read, is refused
            # and its retry books what is left, in a new parcel generation (the bookings it made are
            # given up, never taken for the new parcels'). What the units held is released after this
            # write (UnitCancellation's stock step: stock_owed), as for an allocated order.
            return self._next(
                at=at, actor=actor, type=OrderEvent.UNITS_CANCELLED,
                detail={"reason": reason, "lines": cancelled,
                        "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                                        "to": totals.grand_total.model_dump(mode="json")}, **keyed},
                lines=lines, totals=totals, promotion_grants=kept_grants, rebookings=self.rebookings + 1,
                allocations=_allocations_less(self.allocations, cancelled),
            )  # fmt: skip
        # Never from a parcel waiting for a person to confirm whether it left: it may be in the
        # carrier's van, and its units must not go back on sale.
        self.check_units_spare_parcels(cancelled, writes_off=writes_off)
        off = self.parcels_written_off(cancelled) if writes_off else []
        waiting = self._parcels_kept(scans=not writes_off) - set(off)
        taking = dict(cancelled)
        removed: dict[tuple[str, str], int] = {}
        shrunk: list[str] = []
        shipments: list[Shipment | None] = list(self.shipments)
        for index, shipment in enumerate(self.shipments):
            if shipment.id in off:  # its every unit, its lines kept: they say what left on_hand
                for item in shipment.lines:
                    taking[item.line_id] -= item.quantity
                    key = (item.line_id, shipment.location_id)
                    removed[key] = removed.get(key, 0) + item.quantity
                shipments[index] = _replaced(shipment, status=ShipmentStatus.CANCELLED)
        for index in reversed(range(len(shipments))):
            shipment = self.shipments[index]
            if shipment.status not in NOT_LEFT or shipment.id in waiting or shipment.id in off:
                continue
            kept = []
            for item in shipment.lines:
                take = min(taking.get(item.line_id, 0), item.quantity)
                if take:
                    taking[item.line_id] -= take
                    removed[(item.line_id, shipment.location_id)] = (
                        removed.get((item.line_id, shipment.location_id), 0) + take
                    )
                if item.quantity - take:
                    kept.append(ShipmentLine(line_id=item.line_id, quantity=item.quantity - take))
            # An emptied parcel is cancelled, as a whole cancel leaves its parcels: it stays on the
            # order, so a location reading it finds no work left (a ship of it is 409, not 404).
            shipments[index] = (
                _replaced(shipment, lines=kept) if kept else _replaced(shipment, status=ShipmentStatus.CANCELLED)
            )
            if kept and kept != shipment.lines and shipment.status is ShipmentStatus.PENDING:
                shrunk.append(shipment.id)
        if any(taking.values()):
            raise InvalidTransition("those units have shipped: return them instead")
        left = [shipment for shipment in shipments if shipment is not None]
        pending = {shipment.id for shipment in left if shipment.status is ShipmentStatus.PENDING}
        labels_due = [shipment_id for shipment_id in dict.fromkeys([*self.labels_due, *shrunk])
                      if shipment_id in pending]  # fmt: skip
        allocations = []
        for allocation in self.allocations:
            quantity = allocation.quantity - removed.pop((allocation.line_id, allocation.location_id), 0)
            if quantity > 0:
                allocations.append(_replaced(allocation, quantity=quantity))
        live = [shipment for shipment in left if shipment.status is not ShipmentStatus.CANCELLED]
        gone_out = [shipment for shipment in live if shipment.status not in NOT_LEFT]
        to = None
        payment = self.payment
        if len(gone_out) == len(live):
            if not gone_out:
                raise InvalidTransition("cancelling every unit before anything shipped cancels the order")
            delivered = all(shipment.status is ShipmentStatus.DELIVERED for shipment in gone_out)
            to = _left_to_ship_nothing(OrderStatus.DELIVERED if delivered else OrderStatus.SHIPPED, lines, left)
            if payment.status is PaymentStatus.PARTIALLY_CAPTURED and self.payable(totals) <= payment.captured:
                payment = _replaced(payment, status=PaymentStatus.CAPTURED)
        written_off = {"written_off": off} if off else {}
        return self._next(
            at=at, actor=actor, type=OrderEvent.UNITS_CANCELLED, to=to,
            detail={"reason": reason, "lines": cancelled,
                    "grand_total": {"from": self.totals.grand_total.model_dump(mode="json"),
                                    "to": totals.grand_total.model_dump(mode="json")}, **keyed, **written_off},
            lines=lines, totals=totals, shipments=left, allocations=allocations, payment=payment,
            labels_due=labels_due, rebookings=self.rebookings + 1 if shrunk else self.rebookings,
            promotion_grants=kept_grants,
        )  # fmt: skip

    def relabel(
        self, shipment_id: str, key: str, *, carrier: str, service: str, tracking_number: str | None,
        label_url: str, at: datetime, actor: str,
    ) -> Change:  # fmt: skip
        """A pending shipment a cancel of units shrank (`labels_due`) was booked again with the
        carrier under `key`, the order's current booking key for it: it takes that booking's carrier,
        service, tracking number and label, and is no longer due one."""
        shipment = self.shipment(shipment_id)
        if shipment_id not in self.labels_due or shipment.status is not ShipmentStatus.PENDING:
            raise InvalidTransition(f"shipment {shipment_id} is not waiting for a new label")
        if key != booking_key(shipment_id, self.rebookings):
            raise InvalidTransition(f"shipment {shipment_id} was booked under {key}, not its current key")
        relabelled = _replaced(shipment, carrier=carrier, service=service, tracking_number=tracking_number,
                               label_url=label_url)  # fmt: skip
        return self._next(
            at=at, actor=actor, type=OrderEvent.SHIPMENT_RELABELLED,
            detail={"shipment_id": shipment_id, "lines": [item.model_dump() for item in shipment.lines],
                    "tracking_number": tracking_number},
            shipments=[relabelled if s.id == shipment_id else s for s in self.shipments],
            labels_due=[due for due in self.labels_due if due != shipment_id],
            booking_keys={**self.booking_keys, shipment_id: key},
        )  # fmt: skip

    def plugin_failure_noted(self, failure: StepPluginFailure) -> Bookkeeping | None:
        """This order with `failure` as its workflow step's last failure in a plugin (Bookkeeping:
        the step's own log line and error tell it). None once the order is past the workflow's
        steps (closed, on hold, allocated: no execution of it will run out of time on them), and on
        a pending order stored before `priced_version` existed, whose authorization is keyed by its
        version (authorized_version): a new one would have the retry authorize under another key."""
        if self.status not in (OrderStatus.PENDING, OrderStatus.AUTHORIZED, OrderStatus.BACKORDERED):
            return None
        if self.status is OrderStatus.PENDING and self.priced_version is None:
            return None
        return self._bookkeeping(at=failure.at, step_plugin_failure=failure)

    def unrecorded_bookings_given_up(self, bookings: list[GivenUpBooking], *, at: datetime) -> Bookkeeping | None:
        """Bookings made for this order that no version recorded (a CreateShipments or a re-booking
        that failed after the carrier booked, or whose write lost to a change), owed a cancel
        (`bookings_to_cancel`) once nothing will ask for them again under their key: the order
        closed, or changed so its parcels are booked under another key, or the parcel no longer
        waiting for one. One a retried step (a retry, a release, the next pass) will ask for again
        and so be answered is kept (`unrecorded_bookings`) until the change after which nothing
        will (`_next`); one the order uses is left alone. Bookkeeping: the cancel's own entry tells.
        None when there is nothing new to keep or give up."""
        waiting, unused = self._unrecorded_judged(bookings)
        given_up = [booking for booking in unused if booking not in self.bookings_to_cancel]
        kept = [booking for booking in waiting if booking not in self.unrecorded_bookings]
        if not given_up and not kept:
            return None
        # A booking known now replaces one kept, or owed a cancel, as maybe made under its key.
        known = {(booking.shipment_id, booking.booking_key) for booking in [*kept, *given_up]}

        def not_replaced(booking: GivenUpBooking) -> bool:
            return booking.carrier is not None or (booking.shipment_id, booking.booking_key) not in known

        unrecorded = [booking for booking in self.unrecorded_bookings if not_replaced(booking)]
        owed = [booking for booking in self.bookings_to_cancel if not_replaced(booking)]
        return self._bookkeeping(at=at, bookings_to_cancel=[*owed, *given_up], unrecorded_bookings=[*unrecorded, *kept])

    def _unrecorded_judged(self, bookings: list[GivenUpBooking]) -> tuple[list[GivenUpBooking], list[GivenUpBooking]]:
        """Of bookings no version recorded, those a retried step will ask for again under their key
        (and use), and those nothing will; one a shipment of this order uses is neither."""
        in_use = {(s.id, s.tracking_number, self.booking_key_of(s.id)) for s in self.shipments}
        # A booking maybe made (its tracking number unknown) is the one a shipment booked under its key.
        in_use |= {(s.id, None, self.booking_key_of(s.id)) for s in self.shipments}
        current = {s.id for s in self.shipments}
        sourcing = self.status in (OrderStatus.AUTHORIZED, OrderStatus.BACKORDERED, OrderStatus.ON_HOLD)

        def asked_again(booking: GivenUpBooking) -> bool:
            if self.status in TERMINAL or booking.booking_key != booking_key(booking.shipment_id, self.rebookings):
                return False
            return booking.shipment_id in self.labels_due or (sourcing and booking.shipment_id not in current)

        unrecorded = [b for b in bookings if (b.shipment_id, b.tracking_number, b.booking_key) not in in_use]
        waiting = [booking for booking in unrecorded if asked_again(booking)]
        return waiting, [booking for booking in unrecorded if booking not in waiting]

    def booking_settled(self, booking: GivenUpBooking, cancelled: bool, reason: str, *, at: datetime,
                        actor: str) -> Change:  # fmt: skip
        """The carrier answered for a booking this order gave up (`bookings_to_cancel`): it is
        `cancelled`, or it will never be (`reason`: the carrier refused, no plugin cancels its
        bookings); either way it is no longer owed."""
        if booking not in self.bookings_to_cancel:
            raise InvalidTransition(f"order {self.id} owes no cancel of booking {booking.booking_key}")
        return self._next(
            at=at, actor=actor,
            type=OrderEvent.CARRIER_BOOKING_CANCELLED if cancelled else OrderEvent.CARRIER_BOOKING_NOT_CANCELLED,
            detail={**booking.model_dump(), **({} if cancelled else {"reason": reason[:500]})},
            bookings_to_cancel=[owed for owed in self.bookings_to_cancel if owed != booking],
        )  # fmt: skip

    def record_settlement_capture(self, amount: Money, reference: str, *, at: datetime, actor: str) -> Change:
        """The gateway captured `amount` more, so that a total that cancelled units left higher
        than what the shipments captured is paid in full: the settlement capture requested
        (request_settlement_capture), recorded."""
        request = self.capture_request(None)
        if request is None or request.amount != amount:
            raise InvalidTransition(f"no settlement capture of {amount.amount} is requested on order {self.id}")
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_CAPTURED,
            detail={"amount": amount.model_dump(mode="json"), "reference": reference,
                    "reason": "the order's total after cancelled units"},
            captures_requested=self._requests_besides(None),
            **self._captured_apart(None, amount, self.payment.with_capture(amount, self.payable())),
        )  # fmt: skip

    def release_authorization(self, reference: str, *, at: datetime, actor: str, settled: bool = False) -> Change:
        """The gateway released what the order's authorization held beyond what was captured:
        nothing is left to ship, so `authorized` drops to `captured` (and `authorized_at` goes: _spent).
        `settled`: the payment owes nothing more either way (nothing to capture, nothing to refund:
        core.unit_cancellation), so one whose every captured cent went back already (an appeasement
        before a cancel of the rest) is `refunded`, no longer "partially"."""
        payment = self.payment
        released = _replaced(payment, authorized=payment.captured)
        if (
            settled and payment.status is PaymentStatus.PARTIALLY_REFUNDED and payment.refunded == payment.captured
            and not self.captures_requested and all(refund.status != RefundStatus.PENDING for refund in payment.refunds)
        ):  # fmt: skip
            released = _replaced(released, status=PaymentStatus.REFUNDED)
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_VOIDED,
            detail={"authorization": payment.authorization, "reference": reference,
                    "released": (payment.authorized - payment.captured).model_dump(mode="json"),
                    "reason": "nothing is left to ship"},
            payment=released, **self._spent(released),
        )  # fmt: skip

    def begin_refund(
        self, refund_id: str, amount: Money, *, reason: str, kind: RefundKind = "appeasement",
        return_id: str | None = None, lines: list[RefundedUnits] | None = None, shipping: Money | None = None,
        kept_back: Money | None = None, over_capture: Money | None = None, at: datetime, actor: str,
    ) -> Change:  # fmt: skip
        """A refund about to be asked of the gateway, written first as `pending` so that what it
        takes is held: never more than captured minus refunded and pending, nor what an exchange's
        credit holds but the refunds of its own return (refundable). `lines`: what a
        return's refund gives back for each line's units; `shipping`: what of it is the order's
        shipping (core.refunds.shipping_refunded counts it, so shipping goes back once);
        `kept_back`: what of the return's worth it cannot give back (PaymentRefund.kept_back);
        `over_capture`: what of an appeasement gives back what the payment holds beyond the
        order's total (PaymentRefund.over_capture), also in the history's entry."""
        if self.payment.refund_by_id(refund_id) is not None:
            raise InvalidTransition(f"refund {refund_id} exists already")
        self.check_refund(amount, return_id)
        sources = self.refund_sources(amount, lines)
        authorization = sources[0][0] if len(sources) == 1 and sources[0][0] != self.payment.authorization else None
        parts = [RefundPart(authorization=a, amount=part) for a, part in sources] if len(sources) > 1 else None
        refund = PaymentRefund(id=refund_id, amount=amount, reason=reason, status=RefundStatus.PENDING, kind=kind,
                               return_id=return_id, at=at, lines=lines, shipping=shipping, kept_back=kept_back,
                               authorization=authorization, parts=parts, over_capture=over_capture)  # fmt: skip
        return self._next(
            at=at, actor=actor, type=OrderEvent.REFUND_REQUESTED,
            detail={"refund_id": refund_id, "amount": amount.model_dump(mode="json"), "reason": reason, "kind": kind,
                    **({"return_id": return_id} if return_id else {}),
                    **({"over_capture": over_capture.model_dump(mode="json")} if over_capture else {})},
            payment=self.payment.with_pending_refund(refund),
        )  # fmt: skip

    def record_refund(
        self, refund_id: str, reference: str, *, at: datetime, actor: str, parts: list[RefundPart] | None = None,
        to_show: list[str] | None = None,
    ) -> Change:  # fmt: skip
        """The gateway refunded the pending refund `refund_id` (split, each of its `parts`, as
        answered): `payment.refunded` grows by it. `to_show`: the returns that then owe showing
        what went back for them (returns_to_show)."""
        refund = self.payment._pending(refund_id)
        everything_captured = self.payable() <= self.payment.captured
        return self._next(
            at=at, actor=actor, type=OrderEvent.PAYMENT_REFUNDED,
            detail={"refund_id": refund_id, "amount": refund.amount.model_dump(mode="json"), "reference": reference,
                    "reason": refund.reason, "kind": refund.kind,
                    **({"return_id": refund.return_id} if refund.return_id else {}), **_sources(refund, parts)},
            payment=self.payment.with_refund(refund_id, reference, everything_captured, parts),
            **self._showing(to_show),
        )  # fmt: skip

    def _showing(self, to_show: list[str] | None) -> dict[str, Any]:
        """The fields of a write that records returns `to_show` as owing a show (returns_to_show)."""
        added = list(dict.fromkeys([*self.returns_to_show, *(to_show or [])]))
        return {"returns_to_show": added} if added != self.returns_to_show else {}

    def owe_returns_shown(self, return_ids: list[str], *, at: datetime) -> Bookkeeping | None:
        """The returns `return_ids` owe showing what went back for them (returns_to_show), as the
        one-off upgrade finds them for an order an earlier version wrote without the record
        (core.refund_service.returns_shown_short). None when each is recorded so already."""
        fields = self._showing(return_ids)
        return self._bookkeeping(at=at, **fields) if fields else None

    def owing_settlement(self) -> "Order":
        """This version (one a cancel of units, or a replacement's last ship or collect, has just
        decided) recording that what it owes back is still to be done (settlement_owed): written
        with it, not a version of its own."""
        return _replaced(self, settlement_owed=True)

    def owing_stock(self) -> "Order":
        """This version (one a cancel of units has just decided) recording that the reservations
        it frees are still to be brought down (stock_owed): written with it, not a version of its own."""
        return _replaced(self, stock_owed=True)

    def stock_released(self, *, at: datetime) -> Bookkeeping | None:
        """What a cancel of units freed is released: no longer owed (stock_owed). None when it was not."""
        return self._bookkeeping(at=at, stock_owed=False) if self.stock_owed else None

    def settlement_done(self, *, at: datetime) -> Bookkeeping | None:
        """What a cancel of units owed back is done, or left to a person: no longer owed
        (settlement_owed). None when it was not."""
        return self._bookkeeping(at=at, settlement_owed=False) if self.settlement_owed else None

    def returns_shown(self, return_ids: list[str], *, at: datetime) -> Bookkeeping | None:
        """The returns `return_ids` show what went back for them: no longer owed a show
        (returns_to_show). None when none of them was."""
        left = [return_id for return_id in self.returns_to_show if return_id not in return_ids]
        return None if left == self.returns_to_show else self._bookkeeping(at=at, returns_to_show=left)

    def record_failed_refund(
        self, refund_id: str, reference: str | None, message: str, *, at: datetime, actor: str,
        parts: list[RefundPart] | None = None, to_show: list[str] | None = None,
    ) -> Change:  # fmt: skip
        """The gateway refused the pending refund `refund_id`: it stays on the order as failed,
        never counted, and what it held can be refunded again under a new id. Split, its `parts`
        (as answered) that the gateway approved before one was refused count all the same
        (Payment.with_failed_refund). `to_show`: as record_refund's."""
        refund = self.payment._pending(refund_id)
        return self._next(
            at=at, actor=actor, type=OrderEvent.REFUND_FAILED,
            detail={"refund_id": refund_id, "amount": refund.amount.model_dump(mode="json"), "message": message[:500],
                    **({"reference": reference} if reference else {}), **_sources(refund, parts)},
            payment=self.payment.with_failed_refund(refund_id, reference, message, parts),
            **self._showing(to_show),
        )  # fmt: skip

    def record_return(
        self, return_id: str, received: dict[str, int], *, at: datetime, actor: str,
        detail: dict[str, Any] | None = None, whole_order_shipping: bool = False,
    ) -> Change | None:  # fmt: skip
        """The units of return `return_id` are back: each line's `returned_quantity` grows by what
        was received, and a shipped or delivered order becomes `partially_returned`, or `returned`
        once every unit that shipped is back and nothing is left to ship. None when this return is
        recorded already. (An order still partly shipped keeps its status: it has more to ship.)
        `whole_order_shipping`: the return gives the order's shipping back once the whole order is
        back (whole_order_returns)."""
        if return_id in self.received_returns:
            return None
        shipped = self.shipped_units()
        lines = []
        for line in self.lines:
            back = line.returned_quantity + received.get(line.line_id, 0)
            if back > shipped.get(line.line_id, 0):
                raise InvalidTransition(f"line {line.line_id} would have more units back than shipped")
            lines.append(_replaced(line, returned_quantity=back))
        to = None
        if self.status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.PARTIALLY_RETURNED):
            everything_back = all(line.returned_quantity >= shipped.get(line.line_id, 0) for line in lines)
            to = OrderStatus.RETURNED if everything_back else OrderStatus.PARTIALLY_RETURNED
        return self._next(
            at=at, actor=actor, type=OrderEvent.RETURN_RECEIVED, to=to,
            detail={"return_id": return_id,
                    "lines": [{"line_id": k, "quantity": v} for k, v in sorted(received.items())], **(detail or {})},
            lines=lines, received_returns=[*self.received_returns, return_id],
            **({"whole_order_returns": [*self.whole_order_returns, return_id]} if whole_order_shipping else {}),
        )  # fmt: skip

    def has_return_entry(self, return_id: str, type: OrderEvent) -> bool:
        """Whether the history has the entry `type` of return `return_id` (Order.return_noted)."""
        return f"{return_id}:{type.value}" in self.return_entries

    def return_noted(
        self, return_id: str, type: OrderEvent, *, at: datetime, actor: str, detail: dict[str, Any],
        unrecorded_labels: list[GivenUpBooking] | None = None, labels_given_up: list[GivenUpBooking] | None = None,
    ) -> Change | None:  # fmt: skip
        """The entry `type` of return `return_id` (its request, approval, rejection or expiry,
        core.return_models.OrderEntry) on the history, in a version that remembers it; None when
        the history has it already, so a writer that repeats one after another died writes it once.
        With it, the return label bookings judged on the return (core.returns.judged_labels): those
        still `unrecorded_labels`, and those `labels_given_up`, owed a cancel (`bookings_to_cancel`)."""
        if self.has_return_entry(return_id, type):
            return None
        key = f"{return_id}:{type.value}"
        return self._next(
            at=at, actor=actor, type=type, detail=detail, return_entries=[*self.return_entries, key],
            **self._return_labels(unrecorded_labels, labels_given_up or []),
        )  # fmt: skip

    def return_label_unrecorded(self, booking: GivenUpBooking, *, at: datetime) -> Bookkeeping | None:
        """A return label booking made, or maybe made, that its return does not record (its request
        or approval failed after asking the carrier, or lost its write), kept
        (`unrecorded_return_labels`) until the return is judged on (core.returns.judged_labels).
        A booking known now replaces one kept as maybe made under its key. None when kept already."""
        same_key = [b for b in self.unrecorded_return_labels if b.booking_key == booking.booking_key]
        if booking in self.bookings_to_cancel or booking in same_key or (booking.carrier is None and same_key):
            return None
        kept = [b for b in self.unrecorded_return_labels if b not in same_key]
        return self._bookkeeping(at=at, unrecorded_return_labels=[*kept, booking])

    def return_labels_judged(
        self, unrecorded: list[GivenUpBooking], given_up: list[GivenUpBooking], *, at: datetime
    ) -> Bookkeeping | None:
        """The return label bookings judged on a return (core.returns.judged_labels): those still
        `unrecorded`, and those `given_up`, owed a cancel. None when that changes nothing."""
        changes = self._return_labels(unrecorded, given_up)
        return self._bookkeeping(at=at, **changes) if changes else None

    def _return_labels(
        self, unrecorded: list[GivenUpBooking] | None, given_up: list[GivenUpBooking]
    ) -> dict[str, list[GivenUpBooking]]:
        changes: dict[str, list[GivenUpBooking]] = {}
        if unrecorded is not None and unrecorded != self.unrecorded_return_labels:
            changes["unrecorded_return_labels"] = unrecorded
        owed = [booking for booking in given_up if booking not in self.bookings_to_cancel]
        if owed:
            changes["bookings_to_cancel"] = [*self.bookings_to_cancel, *owed]
        return changes

    def claim_shipping(self, return_id: str, amount: Money, *, at: datetime) -> Bookkeeping:
        """`amount` of the order's shipping is given back by return `return_id`'s exchange credit,
        written before the replacement is placed with it (core.refunds.shipping_refunded counts it).
        Bookkeeping: the history's `exchange_placed` entry names the credit."""
        if return_id in self.shipping_claims:
            raise InvalidTransition(f"return {return_id} has claimed the shipping already")
        if amount.currency != self.currency or amount.amount <= 0:
            raise InvalidTransition(f"a shipping claim is a positive amount in {self.currency}")
        return self._bookkeeping(at=at, shipping_claims={**self.shipping_claims, return_id: amount})

    def release_shipping_claim(self, return_id: str, *, at: datetime) -> Bookkeeping | None:
        """Return `return_id`'s exchange was given up before its replacement was placed: the shipping
        its credit claimed (claim_shipping) is no longer given back by it, so a refund decides it
        again (its own, or another return's that brings the order back). None without a claim."""
        if return_id not in self.shipping_claims:
            return None
        claims = {key: amount for key, amount in self.shipping_claims.items() if key != return_id}
        return self._bookkeeping(at=at, shipping_claims=claims)

    def hold_credit(
        self, return_id: str, amount: Money, *, at: datetime, kept_back: Money | None = None
    ) -> Bookkeeping:  # fmt: skip
        """`amount` of the captured money is return `return_id`'s exchange credit, written before the
        replacement is placed with it: no other refund can take it from now on (refundable).
        `kept_back`: what of the units' worth the credit could not take (returns_kept_back).
        Bookkeeping: the history's `exchange_placed` entry names the credit."""
        if return_id in self.credit_holds:
            raise InvalidTransition(f"return {return_id} holds its credit already")
        if amount.currency != self.currency or amount.is_negative():
            raise InvalidTransition(f"a credit is a non-negative amount in {self.currency}")
        kept = {**self.returns_kept_back, return_id: kept_back} if kept_back else self.returns_kept_back
        return self._bookkeeping(at=at, credit_holds={**self.credit_holds, return_id: amount}, returns_kept_back=kept)

    def keep_back(
        self, return_id: str, amount: Money, *, at: datetime, shipping: Money | None = None
    ) -> Bookkeeping | None:  # fmt: skip
        """Return `return_id`'s refund gave nothing back of `amount`, the units' worth, as nothing was
        refundable (returns_kept_back). `shipping`: what of it is the order's shipping, claimed in
        the same write (shipping_claims, as an exchange's credit claims it), so that no other
        return's refund gives that shipping back again while this one owes it. None when it is
        recorded so already."""
        claimed = (
            shipping if shipping is not None and shipping.amount > 0 and return_id not in self.shipping_claims else None
        )
        if self.returns_kept_back.get(return_id) == amount and claimed is None:
            return None
        if amount.currency != self.currency or amount.amount <= 0:
            raise InvalidTransition(f"what is kept back is a positive amount in {self.currency}")
        if claimed is not None and claimed.currency != self.currency:
            raise InvalidTransition(f"a shipping claim is a positive amount in {self.currency}")
        claims = {**self.shipping_claims, return_id: claimed} if claimed is not None else self.shipping_claims
        return self._bookkeeping(
            at=at, returns_kept_back={**self.returns_kept_back, return_id: amount}, shipping_claims=claims
        )

    def kept_by_fee(
        self, return_id: str, shares: list[RefundedUnits], *, at: datetime, beyond: Money | None = None
    ) -> Bookkeeping | None:  # fmt: skip
        """Return `return_id`'s refund gave nothing, its fee taking all its units were worth: `shares`,
        what they were worth for each line (fee_kept_shares), and for a return that gives the
        shipping back with the whole order, `beyond`, what of the fee they did not cover
        (fees_beyond_units). None when that is recorded already."""
        if return_id in self.fee_kept_shares:
            return None
        if beyond is not None and (beyond.currency != self.currency or beyond.is_negative()):
            raise InvalidTransition(f"a fee beyond a return's units is an amount of at least 0 in {self.currency}")
        fees = {**self.fees_beyond_units, return_id: beyond} if beyond is not None else self.fees_beyond_units
        kept = {**self.fee_kept_shares, return_id: shares}
        return self._bookkeeping(at=at, fee_kept_shares=kept, fees_beyond_units=fees)

    def refunded_from_credit(self, return_id: str, shares: list[RefundedUnits], *, at: datetime) -> Bookkeeping | None:
        """Return `return_id` of this replacement's units, worth `shares` for each line's units, was
        refunded from its exchange's credit alone, its own captures giving nothing
        (credit_refunded_shares). None when that is recorded already, or a refund of it on this
        order records them (PaymentRefund.lines)."""
        if return_id in self.credit_refunded_shares or any(
            r.return_id == return_id and r.status != RefundStatus.FAILED and r.lines for r in self.payment.refunds
        ):
            return None
        return self._bookkeeping(at=at, credit_refunded_shares={**self.credit_refunded_shares, return_id: shares})

    def release_credit(self, return_id: str, *, at: datetime) -> Bookkeeping | None:
        """Return `return_id`'s exchange was given up: what its credit held (hold_credit) may be
        refunded again, and what it kept back is the return's refund's to decide. None without a hold."""
        if return_id not in self.credit_holds:
            return None
        holds = {key: amount for key, amount in self.credit_holds.items() if key != return_id}
        kept = {key: amount for key, amount in self.returns_kept_back.items() if key != return_id}
        return self._bookkeeping(at=at, credit_holds=holds, returns_kept_back=kept)

    def hold_placed_credits(self, history: list[HistoryEntry], *, at: datetime) -> Bookkeeping | None:
        """The credits of the exchanges placed before their credit was held (hold_credit), held
        as the exchange would hold them now: each the credit its `exchange_placed` entry in
        `history` names, never more than was captured (an original that is itself a replacement
        may have carried part of it from its own credit). None when every placed exchange holds
        its credit: the one-off upgrade (infra.backfill_orders) writes only the orders that need it."""
        holds = dict(self.credit_holds)
        for entry in history:
            detail = entry.detail or {}
            return_id = detail.get("return_id")
            if entry.type is not OrderEvent.EXCHANGE_PLACED or return_id not in self.exchanges or return_id in holds:
                continue
            holds[return_id] = self._placed_hold(Money.model_validate(detail["credit"]))
        if holds == self.credit_holds:
            return None
        return self._bookkeeping(at=at, credit_holds=holds)

    def _placed_hold(self, credit: Money) -> Money:
        """What a replacement placed without its credit held holds of this order: its `credit`,
        never more than was captured."""
        return min(credit, self.payment.captured, key=lambda money: money.amount)

    def exchanged(
        self, return_id: str, replacement_id: str, credit: Money, refund: Money, shares: list[RefundedUnits], *,
        at: datetime, actor: str,
    ) -> Change | None:  # fmt: skip
        """The replacement order of return `return_id` was placed, paid for in part by `credit`
        (the returned units' refund, kept on this order, worth `shares` for each line's units);
        `refund` is what is given back beyond it. None when this exchange is recorded already.
        One placed by a version that held no credit (a retried step finds it placed) holds it
        here, as hold_placed_credits does for the exchanges that version recorded."""
        if return_id in self.exchanges:
            return None
        holds = self.credit_holds
        if return_id not in holds:
            holds = {**holds, return_id: self._placed_hold(credit)}
        return self._next(
            at=at, actor=actor, type=OrderEvent.EXCHANGE_PLACED,
            detail={"return_id": return_id, "exchange_order_id": replacement_id,
                    "credit": credit.model_dump(mode="json"), "refund": refund.model_dump(mode="json")},
            exchanges=[*self.exchanges, return_id], exchange_shares={**self.exchange_shares, return_id: shares},
            credit_holds=holds,
        )  # fmt: skip


def _sources(refund: PaymentRefund, parts: list[RefundPart] | None) -> dict[str, Any]:
    """What a refund's history entry says of the authorizations it went to, when not the payment's own."""
    if parts:
        return {"parts": [part.model_dump(mode="json", exclude_none=True) for part in parts]}
    return {"authorization": refund.authorization} if refund.authorization else {}


def _shipped_by_line(lines: list[OrderLine], shipments: list[Shipment]) -> dict[str, int]:
    shipped = {line.line_id: 0 for line in lines}
    for shipment in shipments:
        if shipment.status in (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED):
            for item in shipment.lines:
                shipped[item.line_id] = shipped.get(item.line_id, 0) + item.quantity
    return shipped


class HistoryPage(Shown):
    """A page of an order's history, oldest first (GET /orders/{id}/history)."""

    items: list[HistoryEntry]
    next_cursor: str | None = None


class OrderEdit(Strict):
    """The body of PATCH /orders/{id}: what may change until the first shipment ships."""

    lines: Annotated[list[LineInput], Field(min_length=1, max_length=100)] | None = None
    shipping_address: AddressInput | None = None
    shipping_method: ShippingMethod | None = None

    @model_validator(mode="after")
    def _something(self) -> "OrderEdit":
        if self.lines is None and self.shipping_address is None and self.shipping_method is None:
            raise ValueError("send at least one of lines, shipping_address, shipping_method")
        return self


class CancelLine(Strict):
    line_id: LineId
    quantity: Annotated[int, Field(ge=1, le=10_000, strict=True)]


class CancelRequest(Strict):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), CleanText]
    # Left out, every unit not yet shipped is cancelled. An explicit null is refused (422), not read
    # as left out: a client that meant some lines and sent none would lose the whole order.
    lines: Annotated[
        list[CancelLine],
        Field(
            min_length=1,
            max_length=100,
            description="Cancel only these units (of a pending, authorized, allocated, partly shipped or "
            "backordered order, held or not); each line once. Leave it out to cancel every unit not "
            "yet shipped.",
        ),
    ] = None  # type: ignore[assignment]  # left out only: null is not a list

    @field_validator("lines")
    @classmethod
    def _each_line_once(cls, lines: list[CancelLine] | None) -> list[CancelLine] | None:
        named = [line.line_id for line in lines or []]
        for index, line_id in enumerate(named):
            if line_id in named[:index]:
                # Raised as a ValidationError so that it names the repeating entry, not the whole list.
                raise ValidationError.from_exception_data(
                    "lines",
                    [{"type": "value_error", "loc": (index, "line_id"), "input": line_id,
                      "ctx": {"error": f"name each line_id once: lines[{named.index(line_id)}] names it"}}],
                )  # fmt: skip
        return lines


# A carrier's tracking number as a location types it: shown on the order and in the customer's
# shipped notification.
TrackingNumber = Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=60), CleanText]


class ShipRequest(Strict):
    tracking_number: TrackingNumber | None = None


class RejectRequest(Strict):
    """The body of POST .../shipments/{id}/reject: why the location cannot fulfil it."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), CleanText]


def _shown_reference(reference: str | None) -> str | None:
    """A gateway's reference as an error's text shows it (core.log_text.shown_reference): an error
    reaches a client's 409 and the logs, where a bidi override in it would reorder what is read."""
    return None if reference is None else shown_reference(reference)


def reported_delivered_note(shipment_id: str) -> str:
    """The note of the release a carrier's delivery report of a parcel to confirm makes (Order.report_delivered)."""
    return f"the carrier reported shipment {shipment_id} delivered: the parcel left"


def _unfinished_ships_note(shipment_ids: list[str]) -> str:
    """What a person holding an order whose ships of `shipment_ids` died after asking for their
    captures is to do (Order.hold_unfinished_ships, Order.park_for_unfinished_ships)."""
    shipments = ", ".join(shipment_ids)
    note = (
        f"a ship (or collect) of {shipments} died after asking for its capture, which is refunded: confirm "
        "whether the parcel left; if it did, release the order and ship (or collect) it again"
    )
    return note[:500]
