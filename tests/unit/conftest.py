"""Builders for unit tests (products, addresses, orders, pricing drafts), a fresh plugin setup, and
the order world (tests/unit/world.py) over the test module's own `STOCK`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pluggy
import pytest

from core.models import (
    Address,
    Customer,
    Fulfillment,
    LineInput,
    Order,
    OrderLine,
    Payment,
    PaymentInput,
    PlaceOrder,
    Product,
    Totals,
)
from core.money import Money
from core.pricing import Pricing
from core.pricing_types import DraftLine, PricingDraft
from core.status import OrderStatus
from functions.plugin_loading import load_plugin_manager
from plugins.data_files import load_data_file
from plugins.promotions import PROMOTIONS_FILE_ENV
from plugins.tax_table import TAX_RATES_FILE_ENV
from tests.unit.world import Clock, World, build_world

UPDATED_AT = datetime(2025, 1, 1, tzinfo=UTC)


def a_product(
    sku: str = "MUG-1",
    price: str = "10.00",
    currency: str = "USD",
    *,
    weight_grams: int | None = None,
    tax_code: str | None = None,
) -> Product:
    return Product(
        sku=sku,
        name=f"Product {sku}",
        price=Money(amount=price, currency=currency),
        weight_grams=weight_grams,
        tax_code=tax_code,
        updated_at=UPDATED_AT,
    )


# A US order's ZIP code must lie in its region (core.models.AddressInput).
ZIP_CODES = {"CA": "94105", "MT": "59601", "NY": "10001", "OR": "97201", "TX": "78701", "WA": "98101"}


def an_address(country: str = "US", region: str | None = "CA") -> Address:
    return Address(
        name="Ada Lovelace",
        line1="1 Analytical Way",
        city="Somewhere",
        region=region,
        postal_code=ZIP_CODES.get(region or "", "12345") if country == "US" else "12345",
        country=country,
    )


def a_customer() -> Customer:
    return Customer(id="cus_1", email="ada@example.com", name="Ada Lovelace")


def an_order(
    *lines: tuple[str, int],
    currency: str = "USD",
    address: Address | None = None,
    promo_codes: list[str] | None = None,
    shipping_method: str | None = None,
    channel: str = "web",
    fulfillment: Fulfillment | None = None,
) -> PlaceOrder:
    """A PlaceOrder for (sku, quantity) lines; one MUG-1 when none are given."""
    return PlaceOrder(
        channel=channel,
        currency=currency,
        customer=a_customer(),
        lines=[LineInput(sku=sku, quantity=quantity) for sku, quantity in (lines or [("MUG-1", 1)])],
        shipping_address=address or an_address(),
        fulfillment=fulfillment or Fulfillment(),
        shipping_method=shipping_method,
        promo_codes=promo_codes or [],
        payment=PaymentInput(method="test", token="tok_approve"),
    )


def a_draft(
    *lines: tuple[Product, int],
    currency: str = "USD",
    address: Address | None = None,
    promo_codes: list[str] | None = None,
    channel: str = "web",
) -> PricingDraft:
    """A PricingDraft whose unit prices are the products' catalog prices."""
    draft_lines = [
        DraftLine(
            line_id=f"L{index + 1}",
            product=product,
            quantity=quantity,
            unit_price=product.price,
            subtotal=product.price.times(quantity),
        )
        for index, (product, quantity) in enumerate(lines or [(a_product(), 1)])
    ]
    return PricingDraft(
        channel=channel,
        currency=currency,
        customer=a_customer(),
        lines=draft_lines,
        shipping_address=address or an_address(),
        fulfillment=Fulfillment(),
        shipping_method=None,
        promo_codes=promo_codes or [],
    )


def usd(amount: str) -> Money:
    return Money(amount=amount, currency="USD")


def a_stored_order(*lines: tuple[str, int], **fields: object) -> Order:
    """An order as stored, authorized and priced at zero, with (sku, quantity) lines L1, L2, ...;
    `fields` replace any other field (status, shipping_address, fulfillment, version, ...)."""
    zero = usd("0.00")
    values: dict[str, object] = {
        "id": "ord_1",
        "status": OrderStatus.AUTHORIZED,
        "channel": "web",
        "currency": "USD",
        "customer": a_customer(),
        "lines": [
            OrderLine(
                line_id=f"L{index}", sku=sku, quantity=quantity, unit_price=zero, discount=zero, tax=zero, total=zero
            )
            for index, (sku, quantity) in enumerate(lines, start=1)
        ],
        "shipping_address": an_address(),
        "fulfillment": Fulfillment(),
        "totals": Totals(subtotal=zero, discount=zero, shipping=zero, tax=zero, grand_total=zero),
        "payment": Payment(method="test", authorized=zero, captured=zero, refunded=zero),
        "created_at": UPDATED_AT,
        "updated_at": UPDATED_AT,
        "version": 1,
    }
    return Order(**{**values, **fields})


@pytest.fixture(autouse=True)
def packaged_data_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from the packaged data files, with nothing cached from another test."""
    monkeypatch.delenv(PROMOTIONS_FILE_ENV, raising=False)
    monkeypatch.delenv(TAX_RATES_FILE_ENV, raising=False)
    load_data_file.cache_clear()
    yield
    load_data_file.cache_clear()


@pytest.fixture
def plugins() -> pluggy.PluginManager:
    """The built-in plugins, loaded through the `oms` entry points like any installed plugin."""
    return load_plugin_manager()


@pytest.fixture
def pricing(plugins: pluggy.PluginManager) -> Pricing:
    return Pricing(plugins)


@pytest.fixture
def clock() -> Clock:
    """The world's clock, at NOW until the test moves it; a module overrides it to start elsewhere."""
    return Clock()


@pytest.fixture
def world(request: pytest.FixtureRequest, clock: Clock) -> World:
    """The order world over the test module's `STOCK` ([(sku, location_id, on_hand)]), on `clock`.
    A module that needs more (a plugin, a wrapped repository) overrides this fixture."""
    return build_world(request.module.STOCK, clock=clock)


@pytest.fixture
def running() -> Iterator[None]:
    """RUNNING (the local runtime's running function, which the bench's recorders read) restored
    after the test; imported here, as only the bench's tests use it."""
    from infra.local.lambdas import RUNNING

    outer = getattr(RUNNING, "function", None)
    yield
    RUNNING.function = outer
