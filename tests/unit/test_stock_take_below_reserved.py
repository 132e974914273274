"""A stock take below the units reserved there (core.services.InventoryService.count) on the
in-memory fakes, with the order workflow and the order actions: the count is recorded, and the
pending shipments it no longer covers are rejected (newest order first) and sourced again; the
released units are never reserved by another order first, the same count again changes nothing,
a count whose function died before its rejects is finished by the count sent again, and a count
that could not fit even with every pending shipment rejected is refused and records nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core.errors import Backordered, InsufficientStock, InvalidTransition, OutOfStock, TransientError
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import LineInput, OrderEdit
from core.ports import ShortCount
from core.services import InventoryService, ShortCountsFinished
from core.status import OrderStatus
from tests.builders import NOW, product
from tests.unit.world import Clock, World, before_the_next_write, build_world

S = OrderStatus
KEY = "key_stock_take"
STOCK = [
    ("TSHIRT", "wh-west", 10),
    ("TSHIRT", "wh-east", 10),
    ("CAP", "wh-west", 4),
    ("BOOK", "wh-west", 4),
    ("MUG", "store-sf", 2),
]
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


CLOCKS: dict[int, Clock] = {}  # each world's clock, moved a minute before each order is placed


@pytest.fixture
def world() -> World:
    clock = Clock()
    world = build_world([], clock=clock)
    CLOCKS[id(world)] = clock
    world.catalog.put_product(product("BOOK", "12.00", allow_backorder=True))
    for sku, location_id, on_hand in STOCK:
        world.inventory.set_on_hand(sku, location_id, on_hand, reason="count")
    return world


def service(world: World) -> InventoryService:
    return InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=world.actions.reject,
        send_back=world.actions.source_backorder_again,
    )  # fmt: skip


def allocated_later(world: World, *lines: tuple[str, int], **overrides: object):
    CLOCKS[id(world)].advance(minutes=1)
    return world.allocated(*lines, **overrides)


def sourced_again(world: World, order_id: str):
    """The workflow the reject started again, as the state machine runs it (out of stock: its Catch)."""
    try:
        world.workflow.reserve_stock(order_id)
    except Backordered:
        return world.order(order_id)  # it waits for stock: the state machine's end of this run
    except OutOfStock as error:
        cause = json.dumps({"errorType": "OutOfStock", "errorMessage": str(error)})
        world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause=cause)
        return world.order(order_id)
    world.workflow.create_shipments(order_id)
    return world.order(order_id)


def rejected_by_count(world: World, order_id: str) -> list[tuple[str | None, str, dict]]:
    return [
        (e.actor, e.to_status, e.detail)
        for e in world.history(order_id)
        if e.type is OrderEvent.SHIPMENT_REJECTED and e.detail.get("reason") == "stock_count"
    ]


def test_a_count_below_reserved_is_recorded_and_the_newest_order_is_sourced_elsewhere(world):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    assert {s.location_id for s in older.shipments} == {s.location_id for s in newer.shipments} == {"wh-west"}

    level = service(world).count("TSHIRT", "wh-west", 5, actor=KEY)

    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)
    assert world.level("TSHIRT", "wh-west") == (5, 4, 1)
    assert world.order(older.id) == older  # the older order keeps its shipment
    ((actor, status, detail),) = rejected_by_count(world, newer.id)
    assert (actor, status, detail["location_id"]) == (KEY, S.AUTHORIZED, "wh-west")
    again = sourced_again(world, newer.id)
    assert again.status is S.ALLOCATED
    assert {s.location_id for s in again.shipments} == {"wh-east"}
    assert world.level("TSHIRT", "wh-west") == (5, 4, 1)


def test_with_no_other_location_the_orders_are_cancelled_or_backordered_as_their_products_say(world):
    caps = allocated_later(world, ("CAP", 2))
    books = allocated_later(world, ("BOOK", 2))
    more_caps = allocated_later(world, ("CAP", 2))

    service(world).count("CAP", "wh-west", 1, actor=KEY)  # 4 reserved: both caps orders go
    service(world).count("BOOK", "wh-west", 0, actor=KEY)

    assert world.level("CAP", "wh-west") == (1, 0, 1)
    assert world.level("BOOK", "wh-west") == (0, 0, 0)
    for order_id in (caps.id, more_caps.id, books.id):
        assert len(rejected_by_count(world, order_id)) == 1
    assert sourced_again(world, caps.id).status is S.CANCELLED
    assert sourced_again(world, more_caps.id).status is S.CANCELLED
    assert sourced_again(world, books.id).status is S.BACKORDERED
    assert world.level("CAP", "wh-west") == (1, 0, 1)


def test_the_same_count_sent_again_changes_nothing(world):
    allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    service(world).count("TSHIRT", "wh-west", 5, actor=KEY)
    sourced_again(world, newer.id)
    before = (world.orders.orders.copy(), {k: list(v) for k, v in world.orders.histories.items()}, world.held())

    level = service(world).count("TSHIRT", "wh-west", 5, actor=KEY)

    assert (level.on_hand, level.reserved) == (5, 4)
    assert (world.orders.orders, world.orders.histories, world.held()) == before


def test_a_count_whose_function_died_before_its_rejects_is_finished_by_the_count_sent_again(world):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the Lambda timed out after the count")

    dying = InventoryService(world.inventory, world.catalog, orders=lambda: world.orders, reject=died)
    with pytest.raises(RuntimeError):
        dying.count("TSHIRT", "wh-west", 5, actor=KEY)
    assert world.level("TSHIRT", "wh-west") == (5, 8, -3)  # counted; nothing there to reserve meanwhile
    meanwhile = allocated_later(world, ("TSHIRT", 1))
    assert {s.location_id for s in meanwhile.shipments} == {"wh-east"}

    service(world).count("TSHIRT", "wh-west", 5, actor=KEY)

    assert world.level("TSHIRT", "wh-west") == (5, 4, 1)
    assert world.order(older.id) == older
    assert len(rejected_by_count(world, newer.id)) == 1


def test_a_count_whose_function_died_before_its_rejects_sent_again_under_its_key_writes_nothing_more(world):
    # Its Idempotency-Key's record gone with the function, the retry under the key is answered the
    # level as recorded: no count written again (its counted_at stays the first's, so a parcel
    # handed over since still leaves on_hand) and no reject run; the mark leaves them to the
    # reconciler's pass, by the count's actor.
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    key = "api:key_stock_take:count-1"

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the Lambda timed out after the count")

    dying = InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=died, clock=lambda: NOW
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        dying.count("TSHIRT", "wh-west", 5, actor=KEY, key=key)
    again = InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=world.actions.reject,
        send_back=world.actions.source_backorder_again, clock=lambda: NOW + timedelta(minutes=1),
    )  # fmt: skip

    level = again.count("TSHIRT", "wh-west", 5, actor="key_other", key=key)

    assert (level.on_hand, level.reserved, level.available) == (5, 8, 0)
    assert rejected_by_count(world, newer.id) == []
    assert world.inventory.counted[("TSHIRT", "wh-west")] == NOW
    done = ShortCountsFinished()
    service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5))
    assert done.finished == [ShortCount("TSHIRT", "wh-west", KEY, NOW)]
    assert world.level("TSHIRT", "wh-west") == (5, 4, 1)
    assert world.order(older.id) == older
    assert [actor for actor, _, _ in rejected_by_count(world, newer.id)] == [KEY]


@pytest.mark.parametrize("channel", [None, "web"], ids=["key_of_every_channel", "key_bound_to_a_channel"])
def test_a_count_under_a_key_recorded_before_more_was_reserved_sent_again_is_answered_the_level_not_refused(
    world, channel
):
    # Counted at 2 under its key (its answer and idempotency record lost); 3 received and an order
    # reserving 4 since, not allocated yet (no reject may send it elsewhere, nor may a key bound to
    # a channel). Sent again under the key, the count was refused before its key was looked up.
    key = "api:key_stock_take:count-5"
    service(world).count("CAP", "wh-west", 2, actor=KEY, channel=channel, key=key)
    world.inventory.adjust("CAP", "wh-west", 3, "delivery")
    order_id = world.place(("CAP", 4))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    before = world.order(order_id)

    level = service(world).count("CAP", "wh-west", 2, actor=KEY, channel=channel, key=key)

    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)
    assert world.level("CAP", "wh-west") == (5, 4, 1)
    assert world.order(order_id) == before


def test_a_count_under_a_key_refused_for_an_order_cancelled_before_its_write_is_recorded_as_it_fits_now(
    world, monkeypatch
):
    # Planned on a read where an order not allocated yet held the units (a refusal), the order is
    # cancelled before the keyed write that looks the key up: that write finds the count fitting
    # and records it, as any count that fits (restocked only above what it read).
    order_id = world.place(("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    real = world.inventory.set_on_hand

    def cancelled_first(*args: object, **kwargs: object):
        monkeypatch.setattr(world.inventory, "set_on_hand", real)
        world.actions.cancel(order_id, "changed my mind", "key_web")
        return real(*args, **kwargs)

    monkeypatch.setattr(world.inventory, "set_on_hand", cancelled_first)
    level = service(world).count("CAP", "wh-west", 1, actor=KEY, key="api:key_stock_take:count-6")

    assert (level.on_hand, level.reserved, level.available) == (1, 0, 1)
    assert world.level("CAP", "wh-west") == (1, 0, 1)
    assert world.inventory.restocked_since_count({("CAP", "wh-west")}) == set()
    assert service(world).count("CAP", "wh-west", 1, actor=KEY, key="api:key_stock_take:count-6") == level


def counting_under_a_key_whose_first_reject_loses(world: World, meanwhile) -> InventoryService:
    """A service whose first reject finds the order moved on (`meanwhile` ran on it first), the
    rest rejected as usual: the count plans again within the same call."""
    lost: list[str] = []

    def reject(order_id: str, *args: object, **kwargs: object):
        if not lost:
            lost.append(order_id)
            meanwhile(order_id)
            raise InvalidTransition("the order moved on meanwhile")
        return world.actions.reject(order_id, *args, **kwargs)

    return InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=reject, clock=lambda: NOW
    )


def test_a_count_under_a_key_whose_first_reject_lost_rejects_the_order_on_its_next_plan(world):
    # Its own write under the key stands for this call's later ones: planned again, the count is
    # written with the releases of that plan and the order goes elsewhere, not left to the reconciler.
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))

    level = counting_under_a_key_whose_first_reject_loses(world, lambda order_id: None).count(
        "TSHIRT", "wh-west", 5, actor=KEY, key="api:key_stock_take:count-2"
    )

    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)
    assert world.order(older.id) == older
    assert len(rejected_by_count(world, newer.id)) == 1
    assert world.inventory.short_counts(NOW + timedelta(minutes=5), 10) == []


def test_a_count_under_a_key_planned_again_after_an_order_was_cancelled_meanwhile_ends_its_mark(world, monkeypatch):
    # Its reject lost, the order is cancelled before the count plans again: the count now fits, and
    # its write (this call's own key recorded already) removes the mark, not left to the reconciler.
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    real = world.inventory.held_at
    reads: list[str] = []

    def held_at(sku: str, location_id: str):
        reads.append(sku)
        if len(reads) == 3:  # the plan after the lost reject's
            world.actions.cancel(newer.id, "customer_request", actor="key_web")
        return real(sku, location_id)

    monkeypatch.setattr(world.inventory, "held_at", held_at)
    level = counting_under_a_key_whose_first_reject_loses(world, lambda order_id: None).count(
        "TSHIRT", "wh-west", 5, actor=KEY, key="api:key_stock_take:count-3"
    )

    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)
    assert world.order(newer.id).status is S.CANCELLED
    assert world.order(older.id) == older
    assert world.inventory.short_counts(NOW + timedelta(minutes=5), 10) == []


def test_the_released_units_are_not_reserved_by_an_order_placed_between_the_rejects(world, monkeypatch):
    # The count lands before the rejects: available stays negative until the last release, so an
    # order placed while the first reject's units go back cannot take them.
    first = allocated_later(world, ("TSHIRT", 3))
    second = allocated_later(world, ("TSHIRT", 3))
    third = allocated_later(world, ("TSHIRT", 3))
    placed: list[str] = []
    real = world.actions.reject

    def reject_then_place(order_id: str, shipment_id: str, reason: str, actor: str, counted_sku: str | None = None):
        done = real(order_id, shipment_id, reason, actor, counted_sku=counted_sku)
        if not placed:
            placed.append(allocated_later(world, ("TSHIRT", 2)).id)
        return done

    racing = InventoryService(world.inventory, world.catalog, orders=lambda: world.orders, reject=reject_then_place)
    racing.count("TSHIRT", "wh-west", 3, actor=KEY)

    assert {s.location_id for s in world.order(placed[0]).shipments} == {"wh-east"}
    assert world.level("TSHIRT", "wh-west") == (3, 3, 0)
    assert world.order(first.id) == first
    assert [len(rejected_by_count(world, o.id)) for o in (second, third)] == [1, 1]


def test_an_order_reserved_between_the_read_and_the_count_is_planned_for(world, monkeypatch):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    real = world.inventory.set_on_hand
    racing: list[str] = []

    def set_on_hand(sku, location_id, on_hand, reason, releasing=None, short=None, **counted_at):
        if releasing and not racing:
            racing.append(allocated_later(world, ("TSHIRT", 2)).id)  # reserved at wh-west: 10 now
        return real(sku, location_id, on_hand, reason, releasing, short, **counted_at)

    monkeypatch.setattr(world.inventory, "set_on_hand", set_on_hand)
    level = service(world).count("TSHIRT", "wh-west", 5, actor=KEY)

    assert (level.on_hand, level.reserved) == (5, 4)
    assert world.order(older.id) == older
    assert [len(rejected_by_count(world, o)) for o in (newer.id, racing[0])] == [1, 1]


def test_a_count_below_what_ready_pickups_hold_is_refused_and_records_nothing(world):
    pickup = world.allocated(("MUG", 2), **PICKUP)
    shipment = pickup.shipments[0].id
    world.actions.ready(pickup.id, shipment, actor="key_store")
    before = world.order(pickup.id)

    with pytest.raises(InsufficientStock):
        service(world).count("MUG", "store-sf", 1, actor=KEY)

    assert world.level("MUG", "store-sf") == (2, 2, 0)
    assert world.order(pickup.id) == before


def test_a_count_below_what_a_held_orders_parcel_holds_rejects_it_and_the_release_sources_it_again(world):
    # A location may reject a held order's pending parcel (the order stays on hold, sourced again
    # once released), so a count that finds its units gone does the same rather than being refused.
    order = allocated_later(world, ("TSHIRT", 4))
    holds = Holds(world.orders, clock=CLOCKS[id(world)])
    holds.hold(order.id, HoldRequest(reason="address_review"), actor="key_ops")

    level = service(world).count("TSHIRT", "wh-west", 2, actor=KEY)

    assert (level.on_hand, level.reserved, level.available) == (2, 0, 2)
    held = world.order(order.id)
    assert (held.status, held.allocations, held.shipments) == (S.ON_HOLD, [], [])
    assert held.excluded_locations == ["wh-west"]
    ((actor, _, detail),) = rejected_by_count(world, order.id)
    assert (actor, detail["location_id"]) == (KEY, "wh-west")
    assert holds.release(order.id, ReleaseRequest(), actor="key_ops").status is S.AUTHORIZED
    again = sourced_again(world, order.id)
    assert again.status is S.ALLOCATED
    assert {s.location_id for s in again.shipments} == {"wh-east"}


@pytest.mark.parametrize("key", [None, "api:key_stock_take:count-7"], ids=["without_a_key", "under_a_key"])
def test_a_count_below_what_an_order_not_allocated_yet_holds_is_refused_naming_what_holds_them(world, key):
    # Held between ReserveStock and CreateShipments: its units are in no parcel a reject may send
    # elsewhere. The refusal names what holds them, not "orders held": a held order's parcel is rejected.
    # Under a key, its write (which looks the key up first) refused too, the refusal is still this one.
    order_id = world.place(("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    Holds(world.orders, clock=CLOCKS[id(world)]).hold(order_id, HoldRequest(reason="address_review"), actor="key_ops")

    with pytest.raises(InsufficientStock) as refused:
        service(world).count("CAP", "wh-west", 1, actor=KEY, key=key)

    (detail,) = refused.value.details
    assert detail["message"] == (
        "must be at least the 3 units held by ready pickups and by orders no reject may send elsewhere yet "
        "(not allocated, or a parcel to confirm)"
    )
    assert world.level("CAP", "wh-west") == (4, 3, 1)


def test_a_count_that_would_send_more_orders_elsewhere_than_one_count_may_is_refused_and_records_nothing(
    world, monkeypatch
):
    monkeypatch.setattr("core.services.MAX_COUNT_REJECTS", 1)
    orders = [allocated_later(world, ("TSHIRT", 3)) for _ in range(3)]

    with pytest.raises(InsufficientStock) as refused:
        service(world).count("TSHIRT", "wh-west", 2, actor=KEY)  # all three orders would go

    assert "count in steps" in refused.value.details[0]["message"]
    assert world.level("TSHIRT", "wh-west") == (10, 9, 1)
    assert [world.order(o.id) for o in orders] == orders
    service(world).count("TSHIRT", "wh-west", 6, actor=KEY)  # the newest goes
    assert world.level("TSHIRT", "wh-west") == (6, 6, 0)
    assert [len(rejected_by_count(world, o.id)) for o in orders] == [0, 0, 1]


def test_an_order_cancelled_between_the_count_and_its_reject_is_left_cancelled(world, monkeypatch):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    real = world.inventory.set_on_hand

    def set_on_hand(sku, location_id, on_hand, reason, releasing=None, short=None, **counted_at):
        level = real(sku, location_id, on_hand, reason, releasing, short, **counted_at)
        if releasing:
            world.actions.cancel(newer.id, "customer_request", actor="key_web")
        return level

    monkeypatch.setattr(world.inventory, "set_on_hand", set_on_hand)
    level = service(world).count("TSHIRT", "wh-west", 5, actor=KEY)

    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)
    assert world.order(newer.id).status is S.CANCELLED
    assert rejected_by_count(world, newer.id) == []
    assert world.order(older.id) == older


def backordered_later(world: World, *lines: tuple[str, int]) -> str:
    """An order placed a minute later that reserves what there is and waits for the rest."""
    CLOCKS[id(world)].advance(minutes=1)
    order_id = world.place(*lines)
    world.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    return order_id


def sent_back_by_count(world: World, order_id: str) -> list[tuple[str | None, str, dict]]:
    return [
        (e.actor, e.to_status, e.detail)
        for e in world.history(order_id)
        if e.type is OrderEvent.SOURCED_AGAIN and e.detail.get("reason") == "stock_count"
    ]


def test_a_backordered_orders_units_at_the_location_go_back_to_be_sourced_before_any_shipment_goes(world):
    older = allocated_later(world, ("BOOK", 2))
    waiting = backordered_later(world, ("BOOK", 5))  # 2 reserved at wh-west, 3 short
    assert world.level("BOOK", "wh-west") == (4, 4, 0)

    level = service(world).count("BOOK", "wh-west", 2, actor=KEY)

    assert (level.on_hand, level.reserved, level.available) == (2, 2, 0)
    assert world.order(older.id) == older  # its parcel is ready to leave: it keeps it
    assert rejected_by_count(world, older.id) == []
    ((actor, status, detail),) = sent_back_by_count(world, waiting)
    assert (actor, status, detail["location_id"]) == (KEY, S.AUTHORIZED, "wh-west")
    assert world.order(waiting).allocations == []
    again = sourced_again(world, waiting)
    assert again.status is S.BACKORDERED  # BOOK is stocked nowhere else: it waits for stock again
    assert world.level("BOOK", "wh-west") == (2, 2, 0)


def test_a_count_below_what_a_backordered_order_holds_there_is_recorded_not_refused(world):
    older = allocated_later(world, ("BOOK", 2))
    waiting = backordered_later(world, ("BOOK", 5))

    level = service(world).count("BOOK", "wh-west", 1, actor=KEY)  # was 409: the backorder's 2 kept

    assert (level.on_hand, level.reserved, level.available) == (1, 0, 1)
    assert [len(rejected_by_count(world, older.id)), len(sent_back_by_count(world, waiting))] == [1, 1]
    assert service(world).count("BOOK", "wh-west", 1, actor=KEY) == level  # again: nothing more
    assert [len(rejected_by_count(world, older.id)), len(sent_back_by_count(world, waiting))] == [1, 1]


def test_a_count_whose_rejects_keep_losing_keeps_its_mark_for_the_reconcilers_pass(world):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))

    def lost(*args: object, **kwargs: object) -> None:
        raise InvalidTransition("the order moved on meanwhile")

    losing = InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=lost, clock=lambda: NOW
    )  # fmt: skip
    level = losing.count("TSHIRT", "wh-west", 5, actor=KEY)

    assert (level.on_hand, level.reserved) == (5, 8)  # recorded; nothing went elsewhere
    assert world.inventory.short_counts(NOW + timedelta(seconds=1), 10) == [ShortCount("TSHIRT", "wh-west", KEY, NOW)]
    done = ShortCountsFinished()
    service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5))

    assert (done.finished, done.failed) == ([ShortCount("TSHIRT", "wh-west", KEY, NOW)], {})
    assert world.level("TSHIRT", "wh-west") == (5, 4, 1)
    assert world.order(older.id) == older
    ((actor, _, _),) = rejected_by_count(world, newer.id)
    assert actor == KEY
    assert world.inventory.short_counts(NOW + timedelta(minutes=5), 10) == []


# --- An order sent back to be sourced between a count's plan and its send-back ----------------------


def sending_back_after(world: World, between) -> InventoryService:
    """The count's service, whose first send-back runs `between` (a request on another function)
    before it lands: the order the count planned to send back, backordered when read, has moved on."""
    real = world.actions.source_backorder_again
    ran: list[object] = []

    def send_back(order_id: str, location_id: str, reason: str, actor: str, counted_sku: str | None = None):
        if not ran:
            ran.append(between(order_id))
        return real(order_id, location_id, reason, actor, counted_sku=counted_sku)

    return InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=world.actions.reject, send_back=send_back,
        clock=lambda: NOW,
    )  # fmt: skip


def edited(world: World):
    def edit(order_id: str):
        change = OrderEdit(lines=[LineInput(sku="BOOK", quantity=4)])
        return world.actions.edit(order_id, world.order(order_id).version, change, actor="key_web")

    return edit


def units_cancelled(world: World):
    return lambda order_id: world.actions.cancel(order_id, "only four", actor="key_web", lines={"L1": 1})


@pytest.mark.parametrize("between", [edited, units_cancelled], ids=["edit", "cancel_of_units"])
def test_an_order_sent_back_between_the_count_and_its_send_back_keeps_no_unit_the_count_took(world, between):
    """Backordered when the count read it (4 BOOK held at wh-west, 1 short), it is sent back to be
    sourced (authorized, its units still held) before the count's send-back lands: the send-back
    still takes its units at wh-west, so its ReserveStock never plans on units the shelf lacks."""
    waiting = backordered_later(world, ("BOOK", 5))
    assert world.level("BOOK", "wh-west") == (4, 4, 0)

    level = sending_back_after(world, between(world)).count("BOOK", "wh-west", 0, actor=KEY)
    again = sourced_again(world, waiting)

    # Before: the send-back met an authorized order and was dropped, the count's mark removed, and
    # the ReserveStock counted the 4 units it held as its own: allocated from a shelf holding none.
    assert (again.status, [s.location_id for s in again.shipments]) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}
    assert (level.on_hand, level.reserved, level.available) == (0, 0, 0)
    ((actor, status, detail),) = sent_back_by_count(world, waiting)
    assert (actor, status, detail["location_id"]) == (KEY, None, "wh-west")  # authorized already
    assert again.excluded_locations == ["wh-west"]
    assert world.inventory.short_counts(NOW + timedelta(days=1), 10) == []


def test_an_order_sent_back_and_held_between_the_count_and_its_send_back_is_released_without_the_units(world):
    waiting = backordered_later(world, ("BOOK", 5))
    holds = Holds(world.orders, clock=CLOCKS[id(world)], inventory=world.inventory, catalog=world.catalog)

    def edited_then_held(order_id: str):
        edited(world)(order_id)
        return holds.hold(order_id, HoldRequest(reason="address_review"), actor="key_ops")

    level = sending_back_after(world, edited_then_held).count("BOOK", "wh-west", 0, actor=KEY)

    assert (level.on_hand, level.reserved) == (0, 0)
    held = world.order(waiting)
    assert (held.status, held.excluded_locations) == (S.ON_HOLD, ["wh-west"])
    assert len(sent_back_by_count(world, waiting)) == 1
    assert holds.release(waiting, ReleaseRequest(), actor="key_ops").status is S.AUTHORIZED
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}


def test_an_order_held_and_released_between_the_count_and_its_send_back_waits_again_without_the_units(world):
    """Released to wait for stock again (backordered), it is sent back as any backordered order."""
    waiting = backordered_later(world, ("BOOK", 5))
    holds = Holds(world.orders, clock=CLOCKS[id(world)], inventory=world.inventory, catalog=world.catalog)

    def held_and_released(order_id: str):
        holds.hold(order_id, HoldRequest(reason="address_review"), actor="key_ops")
        return holds.release(order_id, ReleaseRequest(), actor="key_ops")

    level = sending_back_after(world, held_and_released).count("BOOK", "wh-west", 0, actor=KEY)

    assert (level.on_hand, level.reserved) == (0, 0)
    assert len(sent_back_by_count(world, waiting)) == 1
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0)


def test_the_reserve_stock_of_an_order_sent_back_meanwhile_loses_its_write_to_the_send_back_and_plans_again(
    world, monkeypatch
):
    """Edited after the count's write, its ReserveStock planned on the 4 units it held at wh-west
    (available -4 there) and the count's send-back landed before its write: that write loses (the
    version moved on), and run again the step plans without wh-west."""
    waiting = backordered_later(world, ("BOOK", 5))
    send_back = world.actions.source_backorder_again
    raced: list[bool] = []

    def edited_then_sourcing(order_id: str):
        edited(world)(order_id)
        landed = before_the_next_write(world, monkeypatch, lambda: send_back(order_id, "wh-west", "stock_count", KEY))
        with pytest.raises(TransientError):
            world.workflow.reserve_stock(order_id)
        monkeypatch.undo()
        raced.extend(landed)

    level = sending_back_after(world, edited_then_sourcing).count("BOOK", "wh-west", 0, actor=KEY)

    assert raced == [True] and (level.on_hand, level.reserved) == (0, 0)
    assert len(sent_back_by_count(world, waiting)) == 1
    again = sourced_again(world, waiting)  # Step Functions runs the step again
    assert (again.status, again.shipments, again.excluded_locations) == (S.BACKORDERED, [], ["wh-west"])
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}


def test_an_order_sent_back_after_a_count_died_before_its_send_back_is_sent_elsewhere_by_the_reconcilers_pass(world):
    """The count's function died between its write and its send-back; the order, edited meanwhile,
    was sourced (ReserveStock counting the units it held there as its own: the count's mark still
    stands, its rejects owed) and allocated at wh-west. The reconciler's pass rejects that parcel."""
    waiting = backordered_later(world, ("BOOK", 5))

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the Lambda timed out after the count")

    dying = InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=world.actions.reject, send_back=died,
        clock=lambda: NOW,
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        dying.count("BOOK", "wh-west", 0, actor=KEY)
    edited(world)(waiting)
    assert sourced_again(world, waiting).status is S.ALLOCATED
    done = ShortCountsFinished()

    service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5))

    assert (done.finished, done.failed) == ([ShortCount("BOOK", "wh-west", KEY, NOW)], {})
    assert len(rejected_by_count(world, waiting)) == 1
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0)


def test_an_order_reserved_between_the_count_and_its_send_back_keeps_the_counts_mark_until_its_parcel_goes(world):
    """Edited, then its ReserveStock ran (the units it held at wh-west counted as its own) before the
    count's send-back landed: reserved and not allocated yet, it has no parcel a count may reject,
    and its workflow goes on to book one. The count keeps its mark: the reconciler's pass leaves it
    while the order is not allocated, then rejects the parcel its CreateShipments made there."""
    waiting = backordered_later(world, ("BOOK", 5))

    def edited_then_reserved(order_id: str):
        edited(world)(order_id)
        world.workflow.reserve_stock(order_id)

    level = sending_back_after(world, edited_then_reserved).count("BOOK", "wh-west", 0, actor=KEY)

    assert (level.on_hand, level.reserved) == (0, 4)
    marked = [ShortCount("BOOK", "wh-west", KEY, NOW)]
    # Before: the mark was removed here, and the order shipped from wh-west with nothing to reject it.
    assert world.inventory.short_counts(NOW + timedelta(minutes=5), 10) == marked
    early = ShortCountsFinished()
    service(world).finish_short_counts(early, before=NOW + timedelta(minutes=5))
    assert (early.finished, early.failed) == ([], {})
    assert world.inventory.short_counts(NOW + timedelta(minutes=5), 10) == marked
    world.workflow.create_shipments(waiting)  # allocated at wh-west: the window the pass closes
    done = ShortCountsFinished()

    service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5))

    assert (done.finished, done.failed) == (marked, {})
    assert len(rejected_by_count(world, waiting)) == 1
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0)


# --- Adversarial: marks that might stay, races of two counts, a pickup's only store ----------------


def test_a_count_mark_kept_for_an_order_reserved_and_then_held_goes_once_the_order_is_cancelled(world):
    """Reserved at wh-west before the count's send-back landed, then held for days before its
    parcels were booked: each pass keeps the mark (nothing there a count may send elsewhere yet),
    and the order's cancel, releasing its units, lets the next pass finish it."""
    waiting = backordered_later(world, ("BOOK", 5))
    holds = Holds(world.orders, clock=CLOCKS[id(world)], inventory=world.inventory, catalog=world.catalog)

    def edited_reserved_then_held(order_id: str):
        edited(world)(order_id)
        world.workflow.reserve_stock(order_id)
        return holds.hold(order_id, HoldRequest(reason="address_review"), actor="key_ops")

    sending_back_after(world, edited_reserved_then_held).count("BOOK", "wh-west", 0, actor=KEY)
    marked = [ShortCount("BOOK", "wh-west", KEY, NOW)]
    for days in (1, 2, 3):
        kept = ShortCountsFinished()
        service(world).finish_short_counts(kept, before=NOW + timedelta(days=days))
        assert (kept.finished, kept.failed, kept.left) == ([], {}, 0)
    assert world.inventory.short_counts(NOW + timedelta(days=3), 10) == marked

    world.actions.cancel(waiting, "no longer wanted", actor="key_web")
    done = ShortCountsFinished()
    service(world).finish_short_counts(done, before=NOW + timedelta(days=4))

    assert (done.finished, done.failed) == (marked, {})
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}
    assert world.inventory.short_counts(NOW + timedelta(days=4), 10) == []


def test_two_counts_at_two_locations_racing_on_one_sent_back_order_exclude_both_and_release_both(world):
    """Backordered holding BOOK at wh-west and wh-east; both counts read it backordered, an edit
    sends it back to be sourced before either send-back lands: each excludes its own location and
    releases the units there, and the order's ReserveStock plans on neither."""
    world.inventory.set_on_hand("BOOK", "wh-east", 4, reason="count")
    waiting = backordered_later(world, ("BOOK", 10))
    assert world.level("BOOK", "wh-west") == world.level("BOOK", "wh-east") == (4, 4, 0)

    def east_counted(order_id: str):
        return sending_back_after(world, edited(world)).count("BOOK", "wh-east", 0, actor=KEY)

    west = sending_back_after(world, east_counted).count("BOOK", "wh-west", 0, actor=KEY)

    assert (west.on_hand, west.reserved) == (0, 0)
    assert world.level("BOOK", "wh-west") == world.level("BOOK", "wh-east") == (0, 0, 0)
    assert sorted(d["location_id"] for _, _, d in sent_back_by_count(world, waiting)) == ["wh-east", "wh-west"]
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert sorted(again.excluded_locations) == ["wh-east", "wh-west"]
    assert world.held_for(waiting) == {}
    assert world.inventory.short_counts(NOW + timedelta(days=1), 10) == []


def test_a_sent_back_order_whose_release_died_and_then_held_has_its_units_released_by_the_reconcilers_pass(
    world, monkeypatch
):
    """The count's send-back recorded (wh-west excluded) and died before its release; the order,
    held since, runs no ReserveStock that would release them. The reconciler's pass finishes the
    release, as the count sent again would, rather than keep the units and the mark while it is held."""
    waiting = backordered_later(world, ("BOOK", 5))
    holds = Holds(world.orders, clock=CLOCKS[id(world)], inventory=world.inventory, catalog=world.catalog)
    release = world.actions._release_lines

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the Lambda timed out before the release")

    monkeypatch.setattr(world.actions, "_release_lines", died)
    counting = InventoryService(
        world.inventory, world.catalog, orders=lambda: world.orders, reject=world.actions.reject,
        send_back=world.actions.source_backorder_again, clock=lambda: NOW,
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        counting.count("BOOK", "wh-west", 0, actor=KEY)
    monkeypatch.setattr(world.actions, "_release_lines", release)
    holds.hold(waiting, HoldRequest(reason="address_review"), actor="key_ops")
    assert world.level("BOOK", "wh-west")[:2] == (0, 4)
    done = ShortCountsFinished()

    service(world).finish_short_counts(done, before=NOW + timedelta(days=1))

    assert (done.finished, done.failed) == ([ShortCount("BOOK", "wh-west", KEY, NOW)], {})
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}
    assert world.inventory.short_counts(NOW + timedelta(days=1), 10) == []
    assert len(sent_back_by_count(world, waiting)) == 1 and rejected_by_count(world, waiting) == []


@pytest.mark.parametrize("backorder", [True, False], ids=["backorderable", "not_backorderable"])
def test_a_pickup_order_sent_back_whose_only_store_the_count_excludes_ends_cancelled_its_authorization_voided(
    world, backorder
):
    """A pickup at store-sf, backordered there (its only eligible location), is edited (sent back
    to be sourced) before the count's send-back lands: store-sf excluded, it may be sourced nowhere,
    so it ends cancelled with its authorization voided even when its product may wait backordered
    (README: a pickup's reject ends it so; no arrival could fill it), and no unit held at store-sf."""
    world.catalog.put_product(product("MUG", "8.00", allow_backorder=True))
    CLOCKS[id(world)].advance(minutes=1)
    waiting = world.place(("MUG", 3), **PICKUP)
    world.workflow.authorize_payment(waiting, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(waiting)
    assert world.level("MUG", "store-sf") == (2, 2, 0)
    world.catalog.put_product(product("MUG", "8.00", allow_backorder=backorder))

    def edit(order_id: str):
        change = OrderEdit(lines=[LineInput(sku="MUG", quantity=2)])
        return world.actions.edit(order_id, world.order(order_id).version, change, actor="key_web")

    level = sending_back_after(world, edit).count("MUG", "store-sf", 0, actor=KEY)
    again = sourced_again(world, waiting)

    assert (level.on_hand, level.reserved) == (0, 0)
    assert again.excluded_locations == ["store-sf"] and again.shipments == []
    assert (again.status, again.payment.status) == (S.CANCELLED, "voided")
    assert world.level("MUG", "store-sf") == (0, 0, 0) and world.held_for(waiting) == {}


def test_a_count_mark_kept_for_an_order_parked_after_its_reserve_goes_once_released_and_its_parcel_rejected(world):
    """Reserved at wh-west before the count's send-back landed, then parked (its CreateShipments
    failed after retries: no hold expiry ends a park, a person does): the mark stays through the
    passes while parked, and once released and its parcel booked there, the pass rejects it."""
    waiting = backordered_later(world, ("BOOK", 5))
    holds = Holds(world.orders, clock=CLOCKS[id(world)], inventory=world.inventory, catalog=world.catalog)

    def edited_reserved_then_parked(order_id: str):
        edited(world)(order_id)
        world.workflow.reserve_stock(order_id)
        assert world.workflow.park_after_failure(order_id, "States.Timeout", "")

    sending_back_after(world, edited_reserved_then_parked).count("BOOK", "wh-west", 0, actor=KEY)
    marked = [ShortCount("BOOK", "wh-west", KEY, NOW)]
    for days in (1, 5):
        kept = ShortCountsFinished()
        service(world).finish_short_counts(kept, before=NOW + timedelta(days=days))
        assert (kept.finished, kept.failed) == ([], {})
    assert world.level("BOOK", "wh-west")[:2] == (0, 4)  # the parked order's units, shown available 0

    assert holds.release(waiting, ReleaseRequest(), actor="key_ops").status is S.AUTHORIZED
    world.workflow.create_shipments(waiting)
    done = ShortCountsFinished()
    service(world).finish_short_counts(done, before=NOW + timedelta(days=6))

    assert (done.finished, done.failed) == (marked, {})
    assert len(rejected_by_count(world, waiting)) == 1
    again = sourced_again(world, waiting)
    assert (again.status, again.shipments) == (S.BACKORDERED, [])
    assert world.level("BOOK", "wh-west") == (0, 0, 0) and world.held_for(waiting) == {}


def test_a_count_recorded_whose_mark_is_kept_for_an_order_not_allocated_yet_sent_again_answers_as_it_did(world):
    """The PUT retried (its answer lost) while the count's mark is kept for an order reserved before
    the send-back landed: the count stands already, and the retry answers the level as the first
    did, changing nothing, rather than refuse (409) what it recorded."""
    waiting = backordered_later(world, ("BOOK", 5))

    def edited_then_reserved(order_id: str):
        edited(world)(order_id)
        world.workflow.reserve_stock(order_id)

    first = sending_back_after(world, edited_then_reserved).count("BOOK", "wh-west", 0, actor=KEY)
    before = (world.orders.orders.copy(), {k: list(v) for k, v in world.orders.histories.items()}, world.held())

    again = service(world).count("BOOK", "wh-west", 0, actor=KEY)

    assert again == first and (again.on_hand, again.reserved) == (0, 4)
    assert (world.orders.orders, world.orders.histories, world.held()) == before
    assert world.inventory.short_counts(NOW + timedelta(days=1), 10) == [ShortCount("BOOK", "wh-west", KEY, NOW)]
    assert world.order(waiting).status is S.AUTHORIZED


def test_a_receipt_while_a_counts_mark_is_kept_for_an_order_not_allocated_yet_is_counted_and_sells_nothing(world):
    """Units received at wh-west while the count's mark stands for an order reserved there before
    the send-back landed: the receipt lands (as the DynamoDB adapter's adjust lets any positive
    delta), `available` still shown 0 as the units go to what the shelf owes; no order oversold."""
    backordered_later(world, ("BOOK", 5))

    def edited_then_reserved(order_id: str):
        edited(world)(order_id)
        world.workflow.reserve_stock(order_id)

    sending_back_after(world, edited_then_reserved).count("BOOK", "wh-west", 0, actor=KEY)

    received = service(world).adjust("BOOK", "wh-west", 2, "receipt")

    assert (received.on_hand, received.reserved, received.available) == (2, 4, 0)
    assert world.level("BOOK", "wh-west")[:2] == (2, 4)
    assert world.inventory.short_counts(NOW + timedelta(days=1), 10) == [ShortCount("BOOK", "wh-west", KEY, NOW)]


# --- A stock take's exclusion lapses once its sku is restocked there; a person's reject stays ----------


def test_a_counts_exclusion_names_its_sku_and_lapses_only_for_that_sku_restocked_there(world):
    older = allocated_later(world, ("BOOK", 2))
    waiting = backordered_later(world, ("BOOK", 5))  # 2 reserved at wh-west, 3 short
    service(world).count("BOOK", "wh-west", 2, actor=KEY)

    sent = world.order(waiting)
    assert (sent.excluded_locations, sent.counted_short) == (["wh-west"], {"wh-west": ["BOOK"]})
    assert sent.excludes("wh-west") and sent.excludes("wh-west", restocked="CAP")
    assert not sent.excludes("wh-west", restocked="BOOK")
    assert sent.count_exclusion_lapsed("wh-west", "BOOK") == {"excluded_locations": [], "counted_short": {}}
    assert sent.count_exclusion_lapsed("wh-west", "CAP") == {}
    assert world.order(older.id).counted_short == {}  # its parcel was kept


def test_a_stock_takes_reject_of_a_parcel_names_its_sku_and_a_persons_reject_after_makes_it_stay(world):
    older = allocated_later(world, ("TSHIRT", 4))
    newer = allocated_later(world, ("TSHIRT", 4))
    service(world).count("TSHIRT", "wh-west", 5, actor=KEY)
    assert world.order(newer.id).counted_short == {"wh-west": ["TSHIRT"]}
    assert world.order(older.id).counted_short == {}

    again = sourced_again(world, newer.id)  # allocated at wh-east
    # Another count there makes no difference to a location a person refused the order at, and a
    # person's reject makes the exclusion of a location a count excluded their own.
    persons = again._excluding("wh-east")
    assert persons == {"excluded_locations": ["wh-west", "wh-east"], "counted_short": {"wh-west": ["TSHIRT"]}}
    refused = again.model_copy(update=persons)
    assert refused._excluding("wh-east", "TSHIRT")["counted_short"] == {"wh-west": ["TSHIRT"]}
    assert again._excluding("wh-west")["counted_short"] == {}
    assert again._excluding("wh-west", "CAP")["counted_short"] == {"wh-west": ["CAP", "TSHIRT"]}


# --- The reconciler's pass over the marks goes on where the one before stopped ------------------------


def test_each_pass_over_the_marks_goes_on_after_the_last_one_the_pass_before_dealt_with(world, monkeypatch):
    # Three marks an order keeps (not allocated yet) and a later one: two a pass, the later one is
    # reached by the second pass, and the third takes the listing round to the oldest again.
    marks = {sku: ShortCount(sku, "wh-west", KEY, NOW + timedelta(seconds=n))
             for n, sku in enumerate(["KEPT1", "KEPT2", "KEPT3", "LATER"])}  # fmt: skip
    world.inventory.short.update({(m.sku, m.location_id): m for m in marks.values()})
    worked: list[str] = []

    def finish(self: InventoryService, short: ShortCount) -> bool:
        worked.append(short.sku)
        if short.sku.startswith("KEPT"):
            return False
        self._inventory.short_count_finished(short)
        return True

    monkeypatch.setattr(InventoryService, "_finish", finish)
    passes = []
    for _ in range(3):
        done = ShortCountsFinished()
        service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5), limit=2)
        passes.append((list(worked), [s.sku for s in done.finished], done.left))
        worked.clear()

    assert passes == [
        (["KEPT1", "KEPT2"], [], 1),  # one more than a pass works is read: more are left
        (["KEPT3", "LATER"], ["LATER"], 1),  # and KEPT1, round the listing, left to the next
        (["KEPT1", "KEPT2"], [], 1),
    ]
    assert sorted(sku for sku, _ in world.inventory.short) == ["KEPT1", "KEPT2", "KEPT3"]


def test_a_pass_that_deals_with_every_mark_starts_the_next_from_the_oldest(world, monkeypatch):
    world.inventory.short[("KEPT", "wh-west")] = ShortCount("KEPT", "wh-west", KEY, NOW)
    world.inventory.short_resume = NOW + timedelta(seconds=30)  # a pass stopped after a mark finished since
    monkeypatch.setattr(InventoryService, "_finish", lambda self, short: False)

    done = ShortCountsFinished()
    service(world).finish_short_counts(done, before=NOW + timedelta(minutes=5), limit=2)

    assert done.left == 0 and world.inventory.short_resume is None
