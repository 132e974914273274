"""A plugin host for tests: the OMS's real plugin manager with only the plugins a test names, and
the OMS's own code paths to call them through, so a plugin is tested against the same checks it
meets in production (a float for Money, another currency, a plan that misses a unit: each fails
exactly as it would there).

    from plugins import catalog_price
    from plugins.testing import a_place_order, a_product, plugin_host

    host = plugin_host(my_tax_plugin, catalog_price)      # catalog_price answers the unit prices
    priced = host.price(a_place_order(("BOOK-1", 1)), [a_product("BOOK-1")])

Sourcing and shipment booking run the order workflow's own steps (ReserveStock, CreateShipments)
on in-memory storage that the host keeps: `host.orders`, `host.catalog`, `host.inventory` and
`host.labels` show what those steps stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pluggy

from core.models import Address, Location, Order, PlaceOrder, Product, StockLevel
from core.money import Money
from core.payments import Payments
from core.plugin_manager import build_plugin_manager
from core.pricing import PricedOrder, Pricing
from core.status import OrderStatus
from core.tracking import CarrierTracking
from core.workflow import Workflow
from core.workflow_types import PaymentResult, RefusedTrackingEvent, TrackingUpdate
from plugins.testing.builders import NOW
from plugins.testing.memory import (
    InMemoryBackorders,
    InMemoryCatalog,
    InMemoryInventory,
    InMemoryLabels,
    InMemoryOrders,
)


def plugin_host(*plugins: object) -> PluginHost:
    """A host with the OMS's hookspecs and exactly `plugins` (modules, classes' instances): no
    entry point is loaded, so the test sees only what it names. Add the built-ins your plugin
    works with (e.g. `plugins.catalog_price` for unit prices) as plugins too.

    Raises pluggy.PluginValidationError when a plugin implements a hook the OMS does not have (a
    misspelt name) or takes a parameter its hook does not offer: the OMS refuses such a plugin."""
    manager = build_plugin_manager(*plugins)
    manager.check_pending()
    return PluginHost(manager)


class PluginHost:
    """Calls the plugins of `manager` the way the OMS does. Build it with plugin_host()."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.hook = manager.hook
        self.inventory = InMemoryInventory()
        self.orders = InMemoryOrders(self.inventory)
        self.catalog = InMemoryCatalog()
        self.labels = InMemoryLabels()
        self._pricing = Pricing(manager)
        self._payments = Payments(manager)
        self.backorders = InMemoryBackorders(self.orders, self.inventory)
        self._workflow = Workflow(
            self.orders,
            self.catalog,
            self.inventory,
            manager,
            self.labels,
            clock=lambda: NOW,
            backorders=self.backorders,
        )

    # --- Pricing -------------------------------------------------------------------------------------
    def price(self, order: PlaceOrder, products: Iterable[Product], tax_address: Address | None = None) -> PricedOrder:
        """Price `order` as POST /orders does: unit prices, discounts, tax and shipping from the
        plugins, every answer checked. Tax goes by `tax_address` (default: the shipping address;
        for a pickup order the OMS passes the store's)."""
        catalog = {product.sku: product for product in products}
        missing = sorted({line.sku for line in order.lines} - catalog.keys())
        if missing:
            raise ValueError(f"no product given for {', '.join(missing)}")
        return self._pricing.price(order, catalog, tax_address or order.shipping_address)

    # --- Payments ------------------------------------------------------------------------------------
    def payment_methods(self) -> set[str]:
        """Every method the payment plugins name (POST /orders refuses any other)."""
        return self._payments.methods()

    def authorize(
        self, method: str, token: str, amount: Money, *, order_id: str = "ord_1", attempt: int = 0,
        idempotency_key: str | None = None,
    ) -> PaymentResult:  # fmt: skip
        """Approved, or raises core.errors.PaymentDeclined; TransientError passes through."""
        key = idempotency_key or f"{order_id}:authorize"
        return self._payments.authorize(method, token, amount, order_id, attempt=attempt, key=key)

    def capture(
        self, method: str, authorization: str, amount: Money, *, order_id: str = "ord_1",
        idempotency_key: str | None = None,
    ) -> PaymentResult:  # fmt: skip
        """Approved, or raises core.errors.PaymentRefused (the OMS then records no capture)."""
        key = idempotency_key or f"{order_id}:capture"
        return self._payments.capture(method, authorization, amount, order_id, key)

    def void(
        self, method: str, authorization: str, *, order_id: str = "ord_1", idempotency_key: str | None = None
    ) -> PaymentResult:
        key = idempotency_key or f"{authorization}:void"
        return self._payments.void(method, authorization, order_id, key)

    def refund(
        self, method: str, authorization: str, amount: Money, *, order_id: str = "ord_1",
        idempotency_key: str | None = None,
    ) -> PaymentResult:  # fmt: skip
        key = idempotency_key or f"{order_id}:refund"
        return self._payments.refund(method, authorization, amount, order_id, key)

    # --- Sourcing and shipments, through the order workflow's steps ----------------------------------
    def source(self, order: Order, locations: Iterable[Location], stock: Iterable[StockLevel]) -> Order:
        """Run the workflow's ReserveStock step for `order` (authorized, not yet sourced) with
        `locations` and `stock` stored: the sourcing plugins plan, the OMS checks the plan and
        reserves it. Returns the stored order with its `allocations`; the plan's reasons are in
        `host.orders.histories[order.id]`. Raises core.errors.OutOfStock when no plugin can source
        it, PluginError when a plan is not acceptable, as the workflow would."""
        if order.status is not OrderStatus.AUTHORIZED or order.allocations:
            raise ValueError("source() takes an authorized order that is not sourced yet, as the workflow does")
        self._store(order, locations)
        for level in stock:
            self.inventory.put_level(level)
        self._workflow.reserve_stock(order.id)
        return self._stored(order.id)

    def book_shipments(self, order: Order, locations: Iterable[Location], products: Iterable[Product]) -> Order:
        """Run the workflow's CreateShipments step for `order` (authorized, with `allocations`,
        e.g. from builders.sourced_from): the carrier plugins book one shipment per location, the
        OMS checks each answer and stores the labels (`host.labels.labels` by booking key: the
        shipment id, for an order never edited nor sourced again). A pickup order's parcel is never
        sent to a carrier: the OMS makes its pick slip (core.pick_slips) and no plugin is asked.
        Returns the stored order, allocated, with its `shipments`."""
        if order.status is not OrderStatus.AUTHORIZED or not order.allocations:
            raise ValueError("book_shipments() takes an authorized order with allocations (see sourced_from)")
        self._store(order, locations)
        for product in products:
            self.catalog.put_product(product)
        self._workflow.create_shipments(order.id)
        return self._stored(order.id)

    # --- Tracking ------------------------------------------------------------------------------------
    def tracking_updates(
        self, carrier: str, payload: Any, headers: dict[str, str] | None = None, body: str | None = None
    ) -> list[TrackingUpdate | RefusedTrackingEvent]:
        """What POST /carriers/{carrier}/tracking reads from this webhook, checked as the OMS
        checks it. `body` (the raw text a signature is computed over) defaults to `payload` as
        JSON; header names are lower-cased as the OMS passes them."""
        raw = json.dumps(payload) if body is None else body
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        return CarrierTracking(self.manager).read(carrier, payload, lowered, raw)

    def _store(self, order: Order, locations: Iterable[Location]) -> None:
        for location in locations:
            self.catalog.put_location(location)
        self.orders.put(order, payment_token="tok_test")

    def _stored(self, order_id: str) -> Order:
        stored = self.orders.get(order_id)
        if stored is None:  # only a bug in the host itself could lose it
            raise AssertionError(f"order {order_id} is not stored")
        return stored
