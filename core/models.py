"""Domain models: catalog, network, inventory and orders, as the HTTP contract names them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from core.events import OrderEvent
from core.money import Currency, Money
from core.status import OrderStatus

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

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Latitude = Annotated[float, Field(ge=-90, le=90, strict=True)]
Longitude = Annotated[float, Field(ge=-180, le=180, strict=True)]


T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Strict(BaseModel):
    """Request and domain models reject unknown fields: no silent drops."""

    model_config = ConfigDict(extra="forbid")


class Address(Strict):
    name: Text
    line1: Text
    line2: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    city: Text
    region: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)]
    country: str = Field(description="ISO 3166-1 alpha-2 code, e.g. US", json_schema_extra={"enum": sorted(COUNTRIES)})
    latitude: Latitude | None = None
    longitude: Longitude | None = None

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if value not in COUNTRIES:
            raise ValueError("country must be an ISO 3166-1 alpha-2 code in upper case, such as US or DE")
        return value


# --- Catalog and network -------------------------------------------------------------------

# Product attributes are bounded so a product stays one small item and a plugin can rely on
# their shape: lower-case keys (a plugin namespaces its own with a dot: "acme.tax_class").
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_LENGTH = 500
ATTRIBUTE_KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
AttributeKey = Annotated[str, StringConstraints(pattern=ATTRIBUTE_KEY_PATTERN)]
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_LENGTH), Field(strict=True)]
ProductAttributes = Annotated[
    dict[AttributeKey, AttributeValue],
    Field(
        max_length=MAX_ATTRIBUTES,
        # patternProperties alone would let a schema-driven client send any other key.
        json_schema_extra={"additionalProperties": False, "propertyNames": {"pattern": ATTRIBUTE_KEY_PATTERN}},
    ),
]


class ProductInput(Strict):
    name: Text
    price: Money

    @field_validator("price")
    @classmethod
    def _not_negative(cls, price: Money) -> Money:
        if price.is_negative():
            raise ValueError("price must not be negative")
        return price

    weight_grams: Annotated[int, Field(ge=0, le=10_000_000, strict=True)] | None = None
    tax_code: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")] | None = None
    allow_backorder: Annotated[bool, Field(strict=True)] = False
    attributes: ProductAttributes = Field(
        default_factory=dict,
        description='Free string attributes that plugins read, e.g. {"acme.tax_class": "books"}: at most 50 '
        "lower-case keys (letters, digits, _ . -; up to 64 characters), string values up to 500 characters.",
    )


class Product(ProductInput):
    sku: Identifier
    updated_at: datetime


class LocationInput(Strict):
    name: Text
    type: Literal["warehouse", "store"]
    address: Address
    latitude: Latitude
    longitude: Longitude
    ships: Annotated[bool, Field(strict=True)] = True
    pickup: Annotated[bool, Field(strict=True)] = False


class Location(LocationInput):
    location_id: Identifier
    updated_at: datetime


# --- Inventory -----------------------------------------------------------------------------


class StockCount(Strict):
    on_hand: Annotated[int, Field(ge=0, le=1_000_000_000, strict=True)]


class StockAdjustment(Strict):
    delta: Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000, strict=True)]
    reason: Text

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("delta must not be zero")
        return value


class StockLevel(BaseModel):
    """One (sku, location) record. available = on_hand - reserved, kept in the same write."""

    sku: str
    location_id: str
    on_hand: int
    reserved: int
    available: int
    updated_at: datetime | None = None


class LocationStock(BaseModel):
    location_id: str
    on_hand: int
    reserved: int
    available: int


class InventorySummary(BaseModel):
    sku: str
    available: int
    locations: list[LocationStock]


# --- Orders: what a client sends ------------------------------------------------------------


class Customer(Strict):
    id: Identifier
    email: Email
    name: Text | None = None


class LineInput(Strict):
    sku: Identifier
    quantity: Annotated[int, Field(ge=1, le=10_000, strict=True)]


class Fulfillment(Strict):
    type: Literal["ship", "pickup"] = "ship"
    location_id: Identifier | None = None


class PaymentInput(Strict):
    method: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
    token: Annotated[str, StringConstraints(min_length=1, max_length=256)]


ShippingMethod = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
# Codes match case-insensitively: upper-cased before the pattern is checked.
PromoCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9_-]{1,32}$"),
    BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v),
]


class PlaceOrder(Strict):
    """The body of POST /orders: the command to capture one order."""

    channel: Channel
    external_id: Identifier | None = None
    currency: Currency
    customer: Customer
    lines: Annotated[list[LineInput], Field(min_length=1, max_length=100)]
    shipping_address: Address
    fulfillment: Fulfillment = Field(default_factory=Fulfillment)
    shipping_method: ShippingMethod | None = None
    promo_codes: Annotated[list[PromoCode], Field(max_length=10)] = Field(default_factory=list)
    payment: PaymentInput


# --- Orders: what the OMS keeps -------------------------------------------------------------


class LineTaxRate(BaseModel):
    """The tax rate a plugin applied to a line (its `TaxRate` answer), kept so an invoice can
    print what was charged and why."""

    rate: Decimal = Field(ge=0, le=1, description='A decimal string from "0" to "1", e.g. "0.0725"')
    name: str = Field(min_length=1, max_length=100, description='What an invoice prints, e.g. "US-CA standard"')


class OrderLine(BaseModel):
    line_id: str
    sku: str
    quantity: int
    unit_price: Money
    discount: Money
    tax: Money
    # None: no tax plugin answered, so the line is untaxed (unlike a zero rate, which is a rate).
    tax_rate: LineTaxRate | None = None
    total: Money


class Totals(BaseModel):
    subtotal: Money
    discount: Money
    shipping: Money
    tax: Money
    grand_total: Money


PaymentStatus = Literal[
    "pending",
    "authorized",
    "declined",
    "partially_captured",
    "captured",
    "voided",
    "partially_refunded",
    "refunded",
]


class Payment(BaseModel):
    method: str
    status: PaymentStatus = "pending"
    authorized: Money
    captured: Money
    refunded: Money
    # The gateway's reference for the authorization: what captures, voids and refunds name.
    authorization: str | None = None


class Allocation(BaseModel):
    line_id: str
    location_id: str
    quantity: int


class ShipmentLine(BaseModel):
    line_id: str
    quantity: int


class Shipment(BaseModel):
    id: str
    location_id: str
    lines: list[ShipmentLine]
    carrier: str
    service: str
    tracking_number: str | None = None
    label_url: str | None = None
    status: Literal["pending", "shipped", "delivered"] = "pending"
    shipped_at: datetime | None = None
    delivered_at: datetime | None = None
    # The share of the payment captured when this shipment shipped.
    captured: Money | None = None


class HistoryEntry(BaseModel):
    at: datetime
    type: OrderEvent
    from_status: OrderStatus | None = None
    to_status: OrderStatus | None = None
    actor: str
    detail: dict | None = None


class Order(BaseModel):
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
    promo_codes: list[str] = Field(default_factory=list)
    totals: Totals
    payment: Payment
    allocations: list[Allocation] = Field(default_factory=list)
    shipments: list[Shipment] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    version: int


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class HistoryPage(BaseModel):
    items: list[HistoryEntry]


class OrderEdit(Strict):
    """The body of PATCH /orders/{id}: what may change before the order is allocated."""

    lines: Annotated[list[LineInput], Field(min_length=1, max_length=100)] | None = None
    shipping_address: Address | None = None
    shipping_method: ShippingMethod | None = None

    @model_validator(mode="after")
    def _something(self) -> OrderEdit:
        if self.lines is None and self.shipping_address is None and self.shipping_method is None:
            raise ValueError("send at least one of lines, shipping_address, shipping_method")
        return self


class CancelRequest(Strict):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ShipRequest(Strict):
    tracking_number: Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=60)] | None = None
