"""Builders for what OMS hooks receive: valid by default, with keyword overrides for what a test is about.

    product = a_product("BOOK-1", "12.00", "GBP", attributes={"acme.tax_class": "books"})
    draft = a_draft((product, 2), address=an_address("GB", None))
    order = an_order(("BOOK-1", 2), shipping_method="acme_courier")

Every builder validates what it builds (through the model), so a test cannot hand a hook
something the OMS would never send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.models import (
    Address,
    Allocation,
    Customer,
    Fulfillment,
    LineInput,
    Location,
    Order,
    OrderLine,
    Payment,
    PaymentInput,
    PlaceOrder,
    Product,
    ShipmentLine,
    StockLevel,
    Totals,
)
from core.money import Money
from core.pricing_types import DraftLine, PricingDraft
from core.status import OrderStatus, PaymentStatus

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
ORDER_ID = "ord_testtesttesttesttesttest"


def money(amount: str, currency: str = "USD") -> Money:
    """Money from a decimal string, e.g. money("9.99", "EUR"). Never from a float."""
    return Money(amount=amount, currency=currency)


def an_address(country: str = "US", region: str | None = "CA", **fields: Any) -> Address:
    values = {
        "name": "Ada Lovelace",
        "line1": "1 Market St",
        "city": "San Francisco",
        "region": region,
        "postal_code": "94105",
        "country": country,
    }
    return Address.model_validate({**values, **fields})


def a_customer(**fields: Any) -> Customer:
    return Customer.model_validate({"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace", **fields})


def a_product(sku: str = "MUG-1", price: str = "10.00", currency: str = "USD", **fields: Any) -> Product:
    """A catalog product; `fields` set weight_grams, tax_code, attributes, allow_backorder, name."""
    values = {"sku": sku, "name": f"Product {sku}", "price": money(price, currency), "updated_at": NOW}
    return Product.model_validate({**values, **fields})


def a_location(location_id: str = "wh-1", **fields: Any) -> Location:
    """A warehouse that ships, in Newark NJ; `fields` change any of it (type, ships, pickup, ...)."""
    values = {
        "location_id": location_id,
        "name": f"Warehouse {location_id}",
        "type": "warehouse",
        "address": an_address(region="NJ", name=f"Warehouse {location_id}", city="Newark", postal_code="07102"),
        "latitude": 40.73,
        "longitude": -74.17,
        "ships": True,
        "pickup": False,
        "updated_at": NOW,
    }
    return Location.model_validate({**values, **fields})


def a_stock_level(sku: str, location_id: str, on_hand: int, reserved: int = 0) -> StockLevel:
    """One (sku, location) stock record; `available` is on_hand - reserved, as the OMS keeps it."""
    return StockLevel(
        sku=sku, location_id=location_id, on_hand=on_hand, reserved=reserved, available=on_hand - reserved
    )


def a_place_order(*lines: tuple[str, int], currency: str = "USD", **fields: Any) -> PlaceOrder:
    """The command POST /orders receives, for (sku, quantity) lines (one MUG-1 when none are
    given); `fields` replace any other part (shipping_address, fulfillment, promo_codes, ...)."""
    values: dict[str, Any] = {
        "channel": "web",
        "external_id": "web-1001",
        "currency": currency,
        "customer": a_customer(),
        "lines": [LineInput(sku=sku, quantity=quantity) for sku, quantity in (lines or [("MUG-1", 1)])],
        "shipping_address": an_address(),
        "payment": PaymentInput(method="test", token="tok_approve"),
    }
    return PlaceOrder.model_validate({**values, **fields})


def a_draft_line(
    product: Product, quantity: int = 1, line_id: str = "L1", unit_price: Money | None = None
) -> DraftLine:
    """A line being priced: `unit_price` defaults to the product's price."""
    unit = unit_price or product.price
    return DraftLine(
        line_id=line_id, product=product, quantity=quantity, unit_price=unit, subtotal=unit.times(quantity)
    )


def a_draft(*lines: tuple[Product, int], currency: str | None = None, **fields: Any) -> PricingDraft:
    """The order as pricing hooks see it, for (product, quantity) lines priced at the products'
    prices (one a_product() when none are given); `fields` replace any other part."""
    products = lines or ((a_product(), 1),)
    values: dict[str, Any] = {
        "channel": "web",
        "currency": currency or products[0][0].price.currency,
        "customer": a_customer(),
        "lines": [a_draft_line(p, q, line_id=f"L{i}") for i, (p, q) in enumerate(products, start=1)],
        "shipping_address": an_address(),
        "fulfillment": Fulfillment(),
        "shipping_method": None,
        "promo_codes": [],
    }
    return PricingDraft.model_validate({**values, **fields})


def an_order(*lines: tuple[str, int], unit_price: str = "10.00", currency: str = "USD", **fields: Any) -> Order:
    """An order as the OMS stores it: authorized, for (sku, quantity) lines L1, L2, ... at
    `unit_price` each, untaxed, no shipping (one MUG-1 when no lines are given). `fields` replace
    any other part: status, shipping_address, shipping_method, fulfillment, allocations, ..."""
    unit = money(unit_price, currency)
    order_lines = [
        OrderLine(
            line_id=f"L{index}",
            sku=sku,
            quantity=quantity,
            unit_price=unit,
            discount=Money.zero(currency),
            tax=Money.zero(currency),
            total=unit.times(quantity),
        )
        for index, (sku, quantity) in enumerate(lines or [("MUG-1", 1)], start=1)
    ]
    zero = Money.zero(currency)
    total = sum((line.total for line in order_lines), zero)
    values: dict[str, Any] = {
        "id": ORDER_ID,
        "status": OrderStatus.AUTHORIZED,
        "channel": "web",
        "external_id": "web-1001",
        "currency": currency,
        "customer": a_customer(),
        "lines": order_lines,
        "shipping_address": an_address(),
        "fulfillment": Fulfillment(),
        "shipping_method": "standard",
        "totals": Totals(subtotal=total, discount=zero, shipping=zero, tax=zero, grand_total=total),
        "payment": Payment(
            method="test",
            status=PaymentStatus.AUTHORIZED,
            authorized=total,
            captured=zero,
            refunded=zero,
            authorization="auth_1",
        ),
        "created_at": NOW,
        "updated_at": NOW,
        "version": 2,
    }
    return Order.model_validate({**values, **fields})


def sourced_from(order: Order, location_id: str) -> Order:
    """`order` with every unit of every line allocated at `location_id`: an order ready for its
    shipments to be booked (PluginHost.book_shipments)."""
    allocations = [Allocation(line_id=line.line_id, location_id=location_id, quantity=line.quantity)
                   for line in order.lines]  # fmt: skip
    return Order.model_validate({**order.model_dump(), "allocations": allocations})


def shipment_lines(order: Order) -> list[ShipmentLine]:
    """Every line of `order` in one parcel, as oms_carrier_create_shipment receives them."""
    return [ShipmentLine(line_id=line.line_id, quantity=line.quantity) for line in order.lines]


__all__ = [
    "NOW",
    "ORDER_ID",
    "a_customer",
    "a_draft",
    "a_draft_line",
    "a_location",
    "a_place_order",
    "a_product",
    "a_stock_level",
    "an_address",
    "an_order",
    "money",
    "shipment_lines",
    "sourced_from",
]
