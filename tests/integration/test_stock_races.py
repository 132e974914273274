"""Stock under racing requests, on moto with the real adapters: two orders for the last unit, an
adjustment down between a reservation's read and its write, a cancel's release beside a ship, an
uncollected pickup giving its units back once, an adjustment sent twice at once under its
Idempotency-Key. Races are played either on threads (moto serialized, each request atomic as on
AWS) or by running one request between another's read and its write."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from core.errors import (
    Backordered,
    Conflict,
    InsufficientStock,
    InvalidTransition,
    OrderClosed,
    OutOfStock,
    TransientError,
)
from core.ids import reservation_key
from core.pickups import PickupExpiry
from core.status import OrderStatus, ShipmentStatus
from functions.adapters.dynamodb import DynamoDuePickups, DynamoInventory
from functions.bootstrap import Config, Container, bootstrap
from functions.business_metrics import flush
from tests.builders import NOW, location, place_order, product
from tests.fakes import FakeLabels
from tests.integration.conftest import pass_through_workflow, run_threads

S, H = OrderStatus, ShipmentStatus


class Ticking:
    """A clock a second apart per reading, safe across threads; `skip` moves it on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self.offset = timedelta()

    def __call__(self):
        with self._lock:
            self._n += 1
            return NOW + self.offset + timedelta(seconds=self._n)


@dataclass
class Shop:
    container: Container
    clock: Ticking
    counter: int = 0

    def placed(self, sku: str, quantity: int, **overrides: Any) -> str:
        self.counter += 1
        body = {"external_id": f"race-{self.counter}", "lines": [{"sku": sku, "quantity": quantity}], **overrides}
        order_id = self.container.capture.place(place_order(**body), actor="key_web").id
        self.container.workflow.authorize_payment(order_id, attempt=0)
        return order_id

    def allocated(self, sku: str, quantity: int, **overrides: Any) -> str:
        order_id = self.placed(sku, quantity, **overrides)
        self.container.workflow.reserve_stock(order_id)
        self.container.workflow.create_shipments(order_id)
        assert self.order(order_id).status is S.ALLOCATED
        return order_id

    def order(self, order_id: str):
        order = self.container.order_repository.get(order_id, consistent=True)
        assert order is not None
        return order

    def level(self, sku: str, location_id: str) -> tuple[int, int, int]:
        [level] = self.container.inventory_repository.levels({sku}, [location_id], consistent=True)[sku]
        return level.on_hand, level.reserved, level.available

    def held(self, sku: str, location_id: str, order_id: str) -> int:
        order = self.order(order_id)
        keys = {reservation_key(order_id, line.line_id) for line in order.lines}
        found = self.container.inventory_repository.reservations({(sku, location_id): sorted(keys)})
        return sum(found.values())


@pytest.fixture
def shop(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    pass_through_workflow(monkeypatch)
    clock = Ticking()
    container = bootstrap(Config.from_env(), clock=clock, label_store=FakeLabels())
    catalog = container.catalog_repository
    catalog.put_product(product("LAST", "30.00"))
    catalog.put_location(location("wh-east"))
    catalog.put_location(
        location("store-sf", name="SF store", type="store", pickup=True, latitude=37.78, longitude=-122.4)
    )
    yield Shop(container, clock)


def on_threads(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` at once, moto serialized (each request atomic, as on AWS); each one's result or
    the exception it raised."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = calls[n]()
        except BaseException as error:  # the race's outcome is the test's subject
            results[n] = error

    run_threads(threading.Thread(target=run, args=(n,)) for n in range(len(calls)))
    return results


def before_the_write(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, meanwhile: Callable[[], Any]) -> list:
    """Run `meanwhile` once, just before the first call of `target.name` (a write), after every
    read that decided it; its result (or exception) is kept in the list returned."""
    original = getattr(target, name)
    done: list[Any] = []
    started: list[bool] = []

    def write(*args: Any, **kwargs: Any) -> Any:
        if not started:  # once: `meanwhile` may make the same call itself
            started.append(True)
            try:
                done.append(meanwhile())
            except Exception as error:
                done.append(error)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, write)
    return done


# --- Two orders for the last unit ---------------------------------------------------------------


def test_two_orders_for_the_last_unit_reserve_it_once_and_the_loser_ends_out_of_stock(shop):
    shop.container.inventory.count("LAST", "wh-east", 1)
    first, second = shop.placed("LAST", 1), shop.placed("LAST", 1)  # both pass capture's check

    outcomes = on_threads(*(lambda o=o: shop.container.workflow.reserve_stock(o) for o in (first, second)))

    won = [o for o, outcome in zip((first, second), outcomes, strict=True) if outcome is None]
    lost = [o for o, outcome in zip((first, second), outcomes, strict=True) if outcome is not None]
    assert len(won) == len(lost) == 1, outcomes
    assert isinstance(outcomes[(first, second).index(lost[0])], (TransientError, OutOfStock))
    assert shop.level("LAST", "wh-east") == (1, 1, 0)
    with pytest.raises(OutOfStock):  # the workflow's retry plans again on the stock as written
        shop.container.workflow.reserve_stock(lost[0])
    assert shop.held("LAST", "wh-east", won[0]) == 1 and shop.held("LAST", "wh-east", lost[0]) == 0
    assert shop.level("LAST", "wh-east") == (1, 1, 0)


# --- An adjustment down racing a reservation ----------------------------------------------------


def test_an_adjustment_down_between_a_reservations_read_and_its_write_wins_and_nothing_is_oversold(shop, monkeypatch):
    shop.container.inventory.count("LAST", "wh-east", 2)
    order_id = shop.placed("LAST", 2)
    inventory = shop.container.inventory_repository
    # The workflow read 2 available; a damaged unit is written off before its reservation is written.
    written_off = before_the_write(
        monkeypatch, inventory, "reserve", lambda: shop.container.inventory.adjust("LAST", "wh-east", -1, "damaged")
    )

    with pytest.raises(TransientError):
        shop.container.workflow.reserve_stock(order_id)

    assert written_off[0].on_hand == 1
    assert shop.level("LAST", "wh-east") == (1, 0, 1)
    assert shop.order(order_id).allocations == []


def test_a_reservation_between_an_adjustments_read_and_its_write_refuses_the_adjustment(shop, monkeypatch):
    shop.container.inventory.count("LAST", "wh-east", 2)
    order_id = shop.placed("LAST", 2)
    # The adapter's own write (the container's repository counts full stock items around it).
    reserved = before_the_write(
        monkeypatch, DynamoInventory, "_update", lambda: shop.container.workflow.reserve_stock(order_id)
    )

    with pytest.raises(InsufficientStock):
        shop.container.inventory.adjust("LAST", "wh-east", -1, "damaged")

    assert reserved == [None]
    assert shop.level("LAST", "wh-east") == (2, 2, 0)


def test_adjustments_down_and_reservations_on_threads_never_take_on_hand_below_reserved(shop):
    shop.container.inventory.count("LAST", "wh-east", 3)
    orders = [shop.placed("LAST", 1) for _ in range(3)]

    def write_off() -> Any:
        return shop.container.inventory.adjust("LAST", "wh-east", -1, "damaged")

    outcomes = on_threads(*(lambda o=o: shop.container.workflow.reserve_stock(o) for o in orders), write_off, write_off)

    on_hand, reserved, available = shop.level("LAST", "wh-east")
    written_off = sum(1 for outcome in outcomes[3:] if not isinstance(outcome, BaseException))
    refused = [outcome for outcome in outcomes[3:] if isinstance(outcome, BaseException)]
    assert all(isinstance(outcome, InsufficientStock) for outcome in refused), refused
    holding = [o for o in orders if shop.held("LAST", "wh-east", o)]
    assert on_hand == 3 - written_off and reserved == len(holding) and available == on_hand - reserved >= 0
    assert on_hand >= reserved


# --- A cancel's release beside a ship -----------------------------------------------------------


def test_a_cancel_between_a_ships_capture_and_its_record_releases_the_units_once_and_ships_none(shop, monkeypatch):
    shop.container.inventory.count("LAST", "wh-east", 3)
    order_id = shop.allocated("LAST", 2)
    (shipment,) = shop.order(order_id).shipments
    actions = shop.container.actions
    cancelled = before_the_write(
        monkeypatch, actions._cancellation, "capture_share",
        lambda: actions.cancel(order_id, "customer_request", actor="key_web"),
    )  # fmt: skip

    with pytest.raises(InvalidTransition):
        actions.ship(order_id, shipment.id, None, actor="key_wh")

    assert cancelled[0].status is S.CANCELLED
    assert shop.level("LAST", "wh-east") == (3, 0, 3)
    order = shop.order(order_id)
    assert (order.status, order.payment.captured.amount) == (S.CANCELLED, order.payment.refunded.amount)
    with pytest.raises(InvalidTransition):
        actions.ship(order_id, shipment.id, None, actor="key_wh")
    assert shop.level("LAST", "wh-east") == (3, 0, 3)


def test_a_cancel_after_a_ships_record_and_before_its_units_leave_is_refused_and_the_units_leave_once(
    shop, monkeypatch
):
    shop.container.inventory.count("LAST", "wh-east", 3)
    order_id = shop.allocated("LAST", 2)
    (shipment,) = shop.order(order_id).shipments
    actions = shop.container.actions
    refused = before_the_write(
        monkeypatch, shop.container.inventory_repository, "ship",
        lambda: actions.cancel(order_id, "customer_request", actor="key_web"),
    )  # fmt: skip

    shipped = actions.ship(order_id, shipment.id, None, actor="key_wh")

    assert isinstance(refused[0], InvalidTransition), refused  # 409: cancelling units that shipped
    assert shipped.status is S.SHIPPED
    assert shop.level("LAST", "wh-east") == (1, 0, 1)
    actions.ship(order_id, shipment.id, None, actor="key_wh")  # repeated: its units leave once
    assert shop.level("LAST", "wh-east") == (1, 0, 1)


def test_a_cancel_and_a_ship_on_threads_leave_the_units_either_released_or_shipped_once(shop):
    shop.container.inventory.count("LAST", "wh-east", 3)
    order_id = shop.allocated("LAST", 2)
    (shipment,) = shop.order(order_id).shipments
    actions = shop.container.actions

    on_threads(
        lambda: actions.cancel(order_id, "customer_request", actor="key_web"),
        lambda: actions.ship(order_id, shipment.id, None, actor="key_wh"),
    )

    order = shop.order(order_id)
    if order.status is S.CANCELLED:
        assert shop.level("LAST", "wh-east") == (3, 0, 3)
    else:
        assert order.status is S.SHIPPED and shop.level("LAST", "wh-east") == (1, 0, 1)


# --- An uncollected pickup ------------------------------------------------------------------------


PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


def ready_pickup(shop: Shop) -> tuple[str, str]:
    shop.container.inventory.count("LAST", "store-sf", 5)
    order_id = shop.allocated("LAST", 2, **PICKUP)
    (shipment,) = shop.order(order_id).shipments
    shop.container.actions.ready(order_id, shipment.id, actor="key_store")
    shop.clock.offset = timedelta(days=8)  # past the 7 days' wait
    return order_id, shipment.id


def expiry(shop: Shop) -> PickupExpiry:
    c = shop.container
    return PickupExpiry(DynamoDuePickups(c.dynamodb, c.config.orders_table), c.order_repository, c.actions, shop.clock)


def test_an_uncollected_pickup_gives_its_units_back_once_however_often_it_is_expired_or_cancelled(shop):
    order_id, shipment_id = ready_pickup(shop)
    assert shop.level("LAST", "store-sf") == (5, 2, 3)

    assert expiry(shop).run().expired == [order_id]
    assert shop.level("LAST", "store-sf") == (5, 0, 5)
    assert expiry(shop).run().expired == []
    shop.container.actions.expire_pickup(order_id, shipment_id, actor="pickup_expiry")
    shop.container.actions.cancel(order_id, "customer_request", actor="key_web")

    assert shop.order(order_id).status is S.CANCELLED
    assert shop.level("LAST", "store-sf") == (5, 0, 5)
    with pytest.raises(InvalidTransition):  # the customer arrives late: nothing leaves the store
        shop.container.actions.collect(order_id, shipment_id, actor="key_store")
    assert shop.level("LAST", "store-sf") == (5, 0, 5)


def test_two_expiry_passes_and_a_late_collect_on_threads_move_the_units_once(shop):
    order_id, shipment_id = ready_pickup(shop)

    on_threads(
        lambda: expiry(shop).run(),
        lambda: expiry(shop).run(),
        lambda: shop.container.actions.collect(order_id, shipment_id, actor="key_store"),
    )

    order = shop.order(order_id)
    if order.status is S.CANCELLED:
        assert shop.level("LAST", "store-sf") == (5, 0, 5)
    else:
        assert order.shipments[0].status is H.DELIVERED and shop.level("LAST", "store-sf") == (3, 0, 3)


# --- A cancel of units beside a ship ----------------------------------------------------------------


def test_a_ship_between_a_cancel_of_units_and_its_release_takes_only_the_shipped_units_off_hand(shop, monkeypatch):
    # The cancel of 1 of 3 units writes the order (its parcel now 2 units), then releases the unit
    # it freed; the parcel shipped in between took all 3 reserved units out of on_hand, and the
    # release, finding the parcel gone, had nothing left to give back: one unit lost for good.
    shop.container.inventory.count("LAST", "wh-east", 5)
    order_id = shop.allocated("LAST", 3)
    order = shop.order(order_id)
    (shipment,) = order.shipments
    actions = shop.container.actions
    shipped = before_the_write(
        monkeypatch, actions._units, "_stock_step", lambda: actions.ship(order_id, shipment.id, None, actor="key_wh")
    )

    actions.cancel(order_id, "customer_request", actor="key_web", lines={order.lines[0].line_id: 1})

    assert shipped[0].shipments[0].lines[0].quantity == 2
    assert shop.level("LAST", "wh-east") == (3, 0, 3)


def test_a_ship_after_a_cancel_of_units_died_before_its_release_takes_only_the_shipped_units_off_hand(
    shop, monkeypatch
):
    shop.container.inventory.count("LAST", "wh-east", 5)
    order_id = shop.allocated("LAST", 3)
    order = shop.order(order_id)
    (shipment,) = order.shipments
    actions = shop.container.actions

    def died(order: Any) -> None:
        raise RuntimeError("the function timed out")

    with monkeypatch.context() as dying:
        dying.setattr(actions._units, "_stock_step", died)
        with pytest.raises(RuntimeError):
            actions.cancel(order_id, "customer_request", actor="key_web", lines={order.lines[0].line_id: 1})
    assert shop.order(order_id).stock_owed and shop.level("LAST", "wh-east") == (5, 3, 2)

    actions.ship(order_id, shipment.id, None, actor="key_wh")
    actions.ship(order_id, shipment.id, None, actor="key_wh")  # repeated: nothing leaves twice
    actions.release_owed_stock(shop.order(order_id))  # the reconciler's pass, after it

    assert shop.level("LAST", "wh-east") == (3, 0, 3)
    assert not shop.order(order_id).stock_owed


def settled(shop: Shop, order_id: str, shipped: int) -> None:
    """Once everything left has shipped: `shipped` units shipped, every line shipped or cancelled,
    nothing owed, and the money what the order now costs (captured less refunded), never more
    refunded than captured nor captured than authorized."""
    order = shop.order(order_id)
    assert order.status is S.SHIPPED, order.status
    assert [line.quantity for line in order.lines] == [line.shipped_quantity for line in order.lines]
    assert sum(line.shipped_quantity for line in order.lines) == shipped
    assert not order.stock_owed and not order.captures_requested
    payment = order.payment
    assert payment.refunded <= payment.captured <= payment.authorized
    assert payment.captured - payment.refunded == order.totals.grand_total


def test_a_cancel_of_units_and_a_ship_of_their_parcel_on_threads_ship_or_cancel_each_unit_once(shop):
    # The cancel decides on orders.modify (h556): its units leave the parcel before the ship's
    # capture, or the ship's capture is asked first and the cancel is refused (or settles it first,
    # a First effect, and cancels the units on the parcel as it is then): either way each unit is
    # shipped or released once, and the money is what the units shipped cost.
    rounds = 3
    shop.container.inventory.count("LAST", "wh-east", 3 * rounds)
    actions = shop.container.actions
    shipped_so_far = 0
    for _ in range(rounds):
        order_id = shop.allocated("LAST", 3)
        order = shop.order(order_id)
        (shipment,) = order.shipments
        line_id = order.lines[0].line_id

        cancelled, ship = on_threads(
            lambda: actions.cancel(order_id, "customer_request", actor="key_web", lines={line_id: 1}),  # noqa: B023
            lambda: actions.ship(order_id, shipment.id, None, actor="key_wh"),  # noqa: B023
        )

        assert not isinstance(cancelled, Exception) or isinstance(cancelled, (Conflict, InvalidTransition)), cancelled
        if shop.order(order_id).status is not S.SHIPPED:
            assert isinstance(ship, (Conflict, InvalidTransition)), ship  # the parcel changed under it
            actions.ship(order_id, shipment.id, None, actor="key_wh")  # the warehouse's retry
        units = 3 if isinstance(cancelled, Exception) else 2
        settled(shop, order_id, units)
        assert shop.order(order_id).lines[0].cancelled_quantity == 3 - units
        shipped_so_far += units
        assert shop.level("LAST", "wh-east") == (3 * rounds - shipped_so_far, 0, 3 * rounds - shipped_so_far)


def test_a_cancel_of_every_unit_left_and_the_last_ship_on_threads_ship_or_cancel_each_unit_once(shop):
    # Two parcels (one unit each, at two warehouses); the first has shipped. A cancel of the one
    # unit left (everything not shipped: the rest of the order) races the ship of the last parcel.
    catalog = shop.container.catalog_repository
    catalog.put_location(location("wh-west", name="West warehouse", latitude=39.53, longitude=-119.81))
    actions = shop.container.actions
    for _ in range(3):
        shop.container.inventory.count("LAST", "wh-east", 1)
        shop.container.inventory.count("LAST", "wh-west", 1)
        order_id = shop.allocated("LAST", 2)
        order = shop.order(order_id)
        east, west = ({s.location_id: s.id for s in order.shipments}[loc] for loc in ("wh-east", "wh-west"))
        actions.ship(order_id, east, None, actor="key_wh")
        assert shop.order(order_id).status is S.PARTIALLY_SHIPPED
        line_id = order.lines[0].line_id

        cancelled, ship = on_threads(
            lambda: actions.cancel(order_id, "customer_request", actor="key_web", lines={line_id: 1}),  # noqa: B023
            lambda: actions.ship(order_id, west, None, actor="key_wh"),  # noqa: B023
        )

        assert not isinstance(cancelled, Exception) or isinstance(cancelled, (Conflict, InvalidTransition)), cancelled
        assert isinstance(cancelled, Exception) != isinstance(ship, Exception), (cancelled, ship)
        units = 2 if isinstance(cancelled, Exception) else 1
        settled(shop, order_id, units)
        assert shop.level("LAST", "wh-east") == (0, 0, 0)
        assert shop.level("LAST", "wh-west") == ((0, 0, 0) if units == 2 else (1, 0, 1))


# --- An adjustment replayed under its Idempotency-Key -------------------------------------------------


def test_one_adjustment_sent_at_once_on_threads_under_its_key_counts_once(shop):
    shop.container.inventory.count("LAST", "wh-east", 5)
    key = "api:key_wh:delivery-4711"

    def receipt() -> Any:
        return shop.container.inventory.adjust("LAST", "wh-east", 10, "delivery 4711", key)

    outcomes = on_threads(receipt, receipt, receipt, receipt)

    assert [type(outcome).__name__ for outcome in outcomes] == ["StockLevel"] * 4, outcomes
    assert shop.level("LAST", "wh-east") == (15, 0, 15)
    with pytest.raises(Conflict):  # the same key for another count
        shop.container.inventory.adjust("LAST", "wh-east", 1, "delivery 4711", key)
    assert shop.level("LAST", "wh-east") == (15, 0, 15)


# --- A backorder's units and a new order --------------------------------------------------------------


def test_units_that_arrived_for_a_backordered_order_are_not_taken_by_a_newer_order_before_the_filler_runs(shop):
    # The contract: arrivals allocate backordered orders oldest first. The stream hands the units
    # to the queue moments after they land; a newer order sourced in between leaves them alone.
    catalog = shop.container.catalog_repository
    catalog.put_product(product("PRE", "30.00", allow_backorder=True))
    shop.container.inventory.count("PRE", "wh-east", 0)
    older = shop.placed("PRE", 2)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(older)
    shop.container.inventory.adjust("PRE", "wh-east", 2, "receipt")  # not handed to the queue yet
    catalog.put_product(product("PRE", "30.00", allow_backorder=False))  # no longer sold ahead of stock
    newer = shop.placed("PRE", 2)  # capture counts the 2 units available

    with pytest.raises(OutOfStock):
        shop.container.workflow.reserve_stock(newer)
    shop.container.backorder_allocator.arrived("PRE", "wh-east")

    assert shop.held("PRE", "wh-east", older) == 2 and shop.held("PRE", "wh-east", newer) == 0
    assert shop.level("PRE", "wh-east") == (2, 2, 0)


# --- A cancel while the reservation is being made -----------------------------------------------------


class Died(Exception):
    """The reserve task's process dying (a Lambda timeout, the runtime killed) after its reservation."""


def test_a_reserve_task_that_died_after_reserving_for_an_order_cancelled_meanwhile_gives_the_units_back_on_its_retry(
    shop, monkeypatch
):
    # The cancel lands after the task read the order and before it reserved: the cancel's release
    # (and the clean-up execution the outbox starts for it) finds nothing held yet. The task then
    # reserves and dies before its write would have told it the order was cancelled. Step Functions
    # runs the task again (its Retry): that run finds the order cancelled, and must not leave the
    # unit held for an order that will never ship it.
    shop.container.inventory.count("LAST", "wh-east", 1)
    order_id = shop.placed("LAST", 1)
    actions, inventory = shop.container.actions, shop.container.inventory_repository
    cancelled = before_the_write(
        monkeypatch, inventory, "reserve", lambda: actions.cancel(order_id, "customer_request", actor="key_web")
    )
    repository = shop.container.order_repository
    real_update = repository.update

    def update(new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if entries and entries[0].type == "stock_reserved":
            raise Died  # the write that would have lost to the cancel
        return real_update(new, expected, entries, **conditions)

    with monkeypatch.context() as dying:
        dying.setattr(repository, "update", update)
        with pytest.raises(Died):
            shop.container.workflow.reserve_stock(order_id)
    assert cancelled[0].status is S.CANCELLED
    assert shop.level("LAST", "wh-east") == (1, 1, 0)  # held by the run that died

    with pytest.raises(OrderClosed):  # the retry: the execution ends OrderAlreadyClosed
        shop.container.workflow.reserve_stock(order_id)

    assert shop.held("LAST", "wh-east", order_id) == 0
    assert shop.level("LAST", "wh-east") == (1, 0, 1)


def test_a_twin_reserve_run_that_gave_back_the_winners_units_before_losing_its_write_holds_them_again(
    shop, monkeypatch
):
    # tests/unit/test_sourcing_rules.py plays the race on the fakes; here on DynamoDB: A reserves
    # at one warehouse, the rules then exclude it, B (counting A's units as the order's own) plans
    # the other, gives A's units back, and loses its write to A's.
    from core.sourcing_rules import SourcingRulesInput

    shop.container.catalog_repository.put_location(location("wh-west", latitude=39.53, longitude=-119.81))
    shop.container.inventory.count("LAST", "wh-east", 3)
    shop.container.inventory.count("LAST", "wh-west", 3)
    order_id = shop.placed("LAST", 2)
    nearest = shop.container.workflow
    repository = shop.container.order_repository
    real_update = repository.update
    writes: list[tuple] = []

    def update(new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if not writes:  # A's write: B runs before it lands
            writes.append((new, expected, entries, conditions))
            first = shop.order(order_id)
            assert first.status is S.AUTHORIZED
            [a_location] = {a.location_id for a in new.allocations}
            shop.container.sourcing_rules_service.replace(
                SourcingRulesInput(prefer="nearest", excluded_locations=[a_location]), by="key_admin"
            )
            with pytest.raises(TransientError):
                nearest.reserve_stock(order_id)
            return None  # landed inside B's run
        if len(writes) == 1:  # B's write: A's lands just before it
            writes.append((new, expected, entries, conditions))
            a_new, a_expected, a_entries, a_conditions = writes[0]
            real_update(a_new, a_expected, a_entries, **a_conditions)
        return real_update(new, expected, entries, **conditions)

    monkeypatch.setattr(repository, "update", update)
    nearest.reserve_stock(order_id)

    [allocation] = shop.order(order_id).allocations
    other = "wh-west" if allocation.location_id == "wh-east" else "wh-east"
    assert shop.held("LAST", allocation.location_id, order_id) == 2 and shop.held("LAST", other, order_id) == 0
    assert shop.level("LAST", allocation.location_id) == (3, 2, 1) and shop.level("LAST", other) == (3, 0, 3)


def test_a_twin_reserve_run_that_cannot_hold_the_winners_units_again_sends_the_order_back_to_be_sourced(
    shop, monkeypatch, caplog, capsys
):
    # As above, but another order takes the units B gave back before B can hold them again for A's
    # record: the order recorded units no stock item held for it (its parcel would ship units sold
    # to that other order), in silence. It goes back to be sourced instead (`sourced_again`, reason
    # `reservations_lost`, logged with its id), and B's retry sources it where units are.
    from core.sourcing_rules import SourcingRulesInput

    shop.container.catalog_repository.put_location(location("wh-west", latitude=39.53, longitude=-119.81))
    shop.container.inventory.count("LAST", "wh-east", 3)
    shop.container.inventory.count("LAST", "wh-west", 3)
    order_id = shop.placed("LAST", 2)
    other_id = shop.placed("LAST", 2)
    nearest = shop.container.workflow
    repository = shop.container.order_repository
    real_update = repository.update
    writes: list[tuple] = []
    taken: list[str] = []

    def update(new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if new.id != order_id or len(writes) >= 2:
            return real_update(new, expected, entries, **conditions)
        if not writes:  # A's write: B runs before it lands
            writes.append((new, expected, entries, conditions))
            [a_location] = {a.location_id for a in new.allocations}
            taken.append(a_location)
            shop.container.sourcing_rules_service.replace(
                SourcingRulesInput(prefer="nearest", excluded_locations=[a_location]), by="key_admin"
            )
            with pytest.raises(TransientError):
                nearest.reserve_stock(order_id)
            return None  # landed inside B's run
        # B's write: A's lands just before it, and the other order takes the units B gave back.
        writes.append((new, expected, entries, conditions))
        a_new, a_expected, a_entries, a_conditions = writes[0]
        real_update(a_new, a_expected, a_entries, **a_conditions)
        shop.container.inventory_repository.reserve("LAST", taken[0], reservation_key(other_id, "L1"), 2)
        return real_update(new, expected, entries, **conditions)

    monkeypatch.setattr(repository, "update", update)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    flush()  # the placing's points: this test reads ReserveStock's
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        nearest.reserve_stock(order_id)
    flush()  # what the task's handler prints when its invocation ends

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [record.get("ReservationsLost") for record in printed if "ReservationsLost" in record] == [[1.0]]

    order = shop.order(order_id)
    assert order.status is S.AUTHORIZED and order.allocations == []  # records nothing it does not hold
    lost = [e for e in repository.history(order_id, consistent=True)[1] if e.type == "sourced_again"]
    assert [e.detail["reason"] for e in lost] == ["reservations_lost"], lost
    logged = [r for r in caplog.records if r.name == "core.workflow" and r.levelname == "WARNING"]
    assert [(r.__dict__.get("order_id"), order_id in r.getMessage()) for r in logged] == [(order_id, True)]
    assert shop.held("LAST", taken[0], order_id) == 0
    assert shop.level("LAST", taken[0]) == (3, 2, 1)  # the other order's

    nearest.reserve_stock(order_id)  # the retry of the run whose restore failed

    [allocation] = shop.order(order_id).allocations
    assert allocation.location_id != taken[0] and allocation.quantity == 2
    assert shop.held("LAST", allocation.location_id, order_id) == 2
    assert shop.level("LAST", allocation.location_id) == (3, 2, 1)


def test_two_orders_for_the_last_unit_of_a_product_that_may_wait_one_reserves_it_the_other_waits_holding_none(
    shop,
):
    shop.container.catalog_repository.put_product(product("LAST", "30.00", allow_backorder=True))
    shop.container.inventory.count("LAST", "wh-east", 1)
    first, second = shop.placed("LAST", 1), shop.placed("LAST", 1)

    outcomes = on_threads(*(lambda o=o: shop.container.workflow.reserve_stock(o) for o in (first, second)))
    for order_id, outcome in zip((first, second), outcomes, strict=True):
        assert outcome is None or isinstance(outcome, (TransientError, Backordered)), outcome
        if isinstance(outcome, TransientError):  # lost the write: the retry plans again on the stock as written
            with pytest.raises(Backordered):
                shop.container.workflow.reserve_stock(order_id)

    statuses = sorted(shop.order(o).status for o in (first, second))
    assert statuses == sorted([S.AUTHORIZED, S.BACKORDERED]), statuses
    [won] = [o for o in (first, second) if shop.order(o).status is S.AUTHORIZED]
    [waits] = [o for o in (first, second) if o != won]
    assert shop.held("LAST", "wh-east", won) == 1 and shop.held("LAST", "wh-east", waits) == 0
    assert shop.level("LAST", "wh-east") == (1, 1, 0)


def test_two_orders_for_the_last_unit_above_the_safety_stock_reserve_it_once(shop):
    from core.sourcing_rules import SourcingRulesInput

    shop.container.sourcing_rules_service.replace(SourcingRulesInput(safety_stock={"wh-east": 1}), by="key_admin")
    shop.container.inventory.count("LAST", "wh-east", 2)
    first, second = shop.placed("LAST", 1), shop.placed("LAST", 1)
    # Both read the same stock: 2 on hand, 1 kept back, so each plans the one unit above it.

    outcomes = on_threads(*(lambda o=o: shop.container.workflow.reserve_stock(o) for o in (first, second)))

    assert sorted(outcome is None for outcome in outcomes) == [False, True], outcomes
    [lost] = [o for o, outcome in zip((first, second), outcomes, strict=True) if outcome is not None]
    with pytest.raises(OutOfStock):
        shop.container.workflow.reserve_stock(lost)
    assert shop.level("LAST", "wh-east") == (2, 1, 1)  # the safety stock is still there
