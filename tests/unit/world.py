"""The unit tests' world for the order workflow and the order actions: the core services on the
in-memory fakes, a spy on the `test` payment gateway, a gateway script that can make it fail, a
fixed clock and no real sleeping between payment retries.

Two warehouses that ship (Newark in the east, Reno in the west) and a San Francisco store that
only offers pickup; orders go to San Francisco, so the west warehouse is the nearer one. Each test
module passes its own stock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from core import hookimpl
from core.events import OrderEvent
from core.exchange_credit import ExchangeCredits
from core.fulfillment import OrderActions
from core.models import HistoryEntry, Order
from core.payments import Payments
from core.ports import SourcingRulesRepository
from core.pricing import Pricing
from core.refund_service import RefundService
from core.services import CaptureService
from core.status import OrderStatus
from core.workflow import Workflow
from functions.adapters.catalog_cache import CachedCatalog
from functions.plugin_loading import load_plugin_manager
from tests.builders import NOW, location, place_order, product
from tests.fakes import (
    FakeBackorders,
    FakeCatalog,
    FakeInventory,
    FakeLabels,
    FakeOrders,
    FakeReturns,
    PaymentSpy,
    ScriptedGateway,
)

Held = dict[tuple[str, str, str], int]
Stock = list[tuple[str, str, int]]  # (sku, location_id, on_hand)


class Clock:
    """A clock a test moves: at `now` (NOW unless given) until the test advances it."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def days_later(self, days: float) -> None:
        self.advance(days=days)


@dataclass
class World:
    orders: FakeOrders
    catalog: FakeCatalog
    inventory: FakeInventory
    labels: FakeLabels
    spy: PaymentSpy
    gateway: ScriptedGateway
    capture: CaptureService
    workflow: Workflow
    actions: OrderActions
    refunds: RefundService
    counter: list[int] = field(default_factory=lambda: [0])
    backorders: FakeBackorders | None = None
    # The returns an exchange's replacement is looked up in (tests/unit/test_returns.py's service
    # keeps its returns here), so a replacement that does not go ahead gives its credit back.
    returns: FakeReturns = field(default_factory=FakeReturns)

    def place(self, *lines: tuple[str, int], token: str = "tok_approve", **overrides: object) -> str:
        self.counter[0] += 1
        body = {
            "external_id": f"web-{1000 + self.counter[0]}",
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in (lines or [("TSHIRT", 2)])],
            "payment": {"method": "test", "token": token},
            **overrides,
        }
        return self.capture.place(place_order(**body), actor="key_web").id

    def run(self, order_id: str) -> Order:
        """The workflow's steps up to allocation, as the state machine runs them."""
        self.workflow.authorize_payment(order_id, attempt=0)
        self.workflow.reserve_stock(order_id)
        self.workflow.create_shipments(order_id)
        return self.order(order_id)

    def allocated(self, *lines: tuple[str, int], **overrides: object) -> Order:
        order = self.run(self.place(*lines, **overrides))
        assert order.status is OrderStatus.ALLOCATED
        return order

    def order(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        assert order is not None
        return order

    def history(self, order_id: str) -> list[HistoryEntry]:
        return list(self.orders.histories[order_id])

    def held(self) -> Held:
        """Every reservation the inventory holds: {(sku, location_id, key): quantity}."""
        return {(sku, loc, key): q for (sku, loc), keys in self.inventory.held.items() for key, q in keys.items()}

    def held_for(self, order_id: str) -> Held:
        return {item: q for item, q in self.held().items() if item[2].startswith(f"{order_id}#")}

    def reserved(self) -> dict[tuple[str, str], int]:
        return {item: level.reserved for item, level in self.inventory.stock.items()}

    def level(self, sku: str, location_id: str) -> tuple[int, int, int]:
        level = self.inventory.stock[(sku, location_id)]
        return level.on_hand, level.reserved, level.available

    def actions_behind_a_new_location(self, sku: str, moved_from: str) -> OrderActions:
        """The order actions of an API container whose network (CachedCatalog: kept for seconds)
        was read before `wh-north` was added. Five units of `sku` are counted there and none is
        left at `moved_from`, so the workflow, which reads the network fresh, sources `sku` there."""
        cached = CachedCatalog(self.catalog, ttl_seconds=10, clock=lambda: 0.0)
        cached.list_locations()
        actions = OrderActions(self.orders, cached, self.inventory, self.actions._payments, self.capture,
                               clock=lambda: NOW, refunds=self.refunds)  # fmt: skip
        self.catalog.put_location(location("wh-north", name="North warehouse"))  # through another container
        self.inventory.set_on_hand(sku, "wh-north", 5, reason="count")
        self.inventory.adjust(sku, moved_from, -self.level(sku, moved_from)[0], reason="moved north")
        return actions

    def shipment_at(self, order: Order, location_id: str) -> str:
        return next(s.id for s in order.shipments if s.location_id == location_id)

    def snapshot(self, order_id: str) -> tuple:
        return (
            self.order(order_id),
            self.history(order_id),
            self.held(),
            self.reserved(),
            dict(self.labels.labels),
            (list(self.spy.authorized), list(self.spy.voided), list(self.spy.captured)),
        )


def build_world(
    stock: Stock,
    *extra_plugins: object,
    wrap_orders: Callable[[FakeOrders], object] | None = None,
    clock: Callable[[], datetime] | None = None,
    sourcing_rules: SourcingRulesRepository | None = None,
) -> World:
    """`wrap_orders` wraps the repository the services use (the World keeps the fake itself)."""
    inventory = FakeInventory()
    fake, catalog, labels = FakeOrders(inventory), FakeCatalog(), FakeLabels()
    orders: FakeOrders = wrap_orders(fake) if wrap_orders else fake  # type: ignore[assignment]
    catalog.put_product(product("TSHIRT", "19.99"))
    catalog.put_product(product("MUG", "12.50", weight_grams=350))
    catalog.put_product(product("CAP", "7.77", weight_grams=90))
    catalog.put_product(product("PEN", "3.33", weight_grams=10))
    catalog.put_location(location("wh-east"))
    catalog.put_location(location("wh-west", name="West warehouse", latitude=39.53, longitude=-119.81))
    catalog.put_location(
        location("store-sf", name="SF store", type="store", latitude=37.79, longitude=-122.40, ships=False, pickup=True)
    )
    for sku, location_id, on_hand in stock:
        inventory.set_on_hand(sku, location_id, on_hand, reason="count")
    spy, gateway = PaymentSpy(), ScriptedGateway()
    plugins = load_plugin_manager(spy, gateway, *extra_plugins, enable_test_payments=True)

    def fixed():
        return NOW

    clock = clock or fixed

    def sleep(seconds: float) -> None:
        pass

    payments = Payments(plugins, sleep=sleep)

    capture = CaptureService(
        orders,
        catalog,
        inventory,
        Pricing(plugins),
        clock=clock,
        payment_methods=payments.methods,
        review_rules=plugins,
    )
    backorders = FakeBackorders(fake, inventory)
    refunds = RefundService(orders, payments, clock)
    returns = FakeReturns()
    credits = ExchangeCredits(returns, refunds, orders, clock)
    workflow = Workflow(
        orders, catalog, inventory, plugins, labels, clock=clock, sleep=sleep, backorders=backorders,
        sourcing_rules=sourcing_rules, credits=credits,
    )  # fmt: skip
    actions = OrderActions(orders, catalog, inventory, payments, capture, clock=clock, refunds=refunds, credits=credits,
                           hook=plugins.hook, labels=labels, returns=returns, resourcing=workflow)  # fmt: skip
    return World(
        fake, catalog, inventory, labels, spy, gateway, capture, workflow, actions, refunds, backorders=backorders,
        returns=returns,
    )  # fmt: skip


def before_the_next_write(
    world: World, monkeypatch: pytest.MonkeyPatch, action: Callable[[], object], *, skip: int = 0
) -> list[bool]:
    """Run `action` right before the next FakeOrders.update lands (after `skip` others have): a
    request that slips in between a step's read and its conditional write. Writes made by `action`
    itself go straight through."""
    real = world.orders.update
    landed: list[bool] = []
    skipped: list[bool] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        if len(skipped) < skip:
            skipped.append(True)
        elif not landed:
            landed.append(True)
            action()
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)
    return landed


class AnAttemptInBetween:
    """The order repository, in whose next write of an `event` entry (a failed payment attempt)
    `between` (the same request sent again, a pass at once) runs whole before that write lands: it
    reads the history the first read, without that entry, as a call racing it on another function
    would."""

    def __init__(self, orders: object, event: OrderEvent) -> None:
        self._orders = orders
        self._event = event
        self.between: Callable[[], object] | None = None

    def update(self, order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        if self.between is not None and any(e.type is self._event for e in entries):
            race, self.between = self.between, None
            race()
        self._orders.update(order, expected, entries, **conditions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._orders, name)


def build_racing_world(
    stock: Stock, event: OrderEvent, *extra_plugins: object, around: Callable[[object], object] | None = None,
    **options: Any,
) -> tuple[World, AnAttemptInBetween]:  # fmt: skip
    """build_world, its order repository (wrapped in `around` first: MeteredOrders) running a race
    on its next `event` write (AnAttemptInBetween)."""
    racing: list[AnAttemptInBetween] = []

    def wrap(fake: FakeOrders) -> AnAttemptInBetween:
        racing.append(AnAttemptInBetween(around(fake) if around else fake, event))
        return racing[0]

    world = build_world(stock, *extra_plugins, wrap_orders=wrap, **options)
    return world, racing[0]


class RecordsBookings:
    """A carrier plugin that answers nothing (the built-in carrier books) and records each booking
    it was asked for: (shipment id, booking key, [(line id, units)], weight in grams)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, list[tuple[str, int]], int]] = []

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, shipment_id, booking_key, lines, weight_grams):
        self.asked.append((shipment_id, booking_key, [(line.line_id, line.quantity) for line in lines], weight_grams))


def history_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the orders whose history is read from now on, one per read."""
    reads: list[str] = []
    history = world.orders.history

    def read(order_id: str, **kw: bool):
        reads.append(order_id)
        return history(order_id, **kw)

    monkeypatch.setattr(world.orders, "history", read)
    return reads


class Died(Exception):
    """The request's process ended (a Lambda timeout, a crash) before this write landed."""


def dies_before_recording(world: World, monkeypatch: pytest.MonkeyPatch, event: str) -> None:
    """The next write whose entry is `event` never lands: the process dies, once."""
    real = world.orders.update
    died: list[bool] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        if not died and entries and entries[0].type == event:
            died.append(True)
            raise Died(event)
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)


def ships_died(world: World, monkeypatch: pytest.MonkeyPatch, order_id: str, shipment_ids: list[str]) -> None:
    """Each of the order's `shipment_ids` shipped by the warehouse, each ship dying after the
    gateway captured its share, before the order recorded it."""
    for shipment_id in shipment_ids:
        with monkeypatch.context() as patched:
            dies_before_recording(world, patched, "shipment_shipped")
            with pytest.raises(Died):
                world.actions.ship(order_id, shipment_id, None, actor="key_wh")


def a_ship_that_died(world: World, monkeypatch: pytest.MonkeyPatch, *lines: tuple[str, int]) -> tuple[Order, str]:
    """An allocated order whose first shipment's ship died after the gateway captured its share,
    before the order recorded it: the order as it was, and the shipment."""
    order = world.allocated(*(lines or [("TSHIRT", 2)]))
    shipment_id = order.shipments[0].id
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    monkeypatch.undo()
    return order, shipment_id
