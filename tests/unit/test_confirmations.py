"""Batched fulfilment confirmations (core.confirmations): each item runs its single route's action,
in order, on the in-memory fakes with the real built-in plugins; one refused item stops nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from core.confirmations import MAX_ITEMS, ConfirmationBatch, MalformedItem, NotAttempted, confirm
from core.domain_events import EventType, order_events
from core.errors import (
    InvalidRequest,
    InvalidTransition,
    NotFound,
    PaymentGatewayUnavailable,
    PaymentRefused,
    PluginError,
    StaleVersion,
)
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import Order
from core.status import OrderStatus, ShipmentStatus
from tests.builders import NOW
from tests.unit.world import World, before_the_next_write, ships_died

STOCK = [("TSHIRT", "wh-west", 50), ("TSHIRT", "store-sf", 5), ("CAP", "wh-east", 10)]
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


def batch(*items: tuple[str, str, str] | object) -> ConfirmationBatch:
    bodies = [
        {"order_id": item[0], "shipment_id": item[1], "action": item[2]} if isinstance(item, tuple) else item
        for item in items
    ]
    return ConfirmationBatch.model_validate({"items": bodies})


def never_late() -> float:
    return 0.0


def mine(world: World, order_id: str) -> tuple:
    """What an item could change of one order: the order, its history, its reservations."""
    return world.order(order_id), world.history(order_id), world.held_for(order_id)


def run(world: World, *items, channel: str | None = None):
    return confirm(world.actions, batch(*items), "key_wms", channel, never_late)


def test_a_batch_ships_and_delivers_as_the_single_actions_do(world):
    first, second = world.allocated(("TSHIRT", 2)), world.allocated(("TSHIRT", 1))
    one, two = first.shipments[0].id, second.shipments[0].id

    results = run(
        world,
        {"order_id": first.id, "shipment_id": one, "action": "ship", "tracking_number": "1Z999"},
        (second.id, two, "ship"),
        (first.id, one, "deliver"),
    )

    assert [r.failure for r in results] == [None, None, None]
    assert [r.shipment_status for r in results] == [ShipmentStatus.SHIPPED, ShipmentStatus.SHIPPED,
                                                    ShipmentStatus.DELIVERED]  # fmt: skip
    assert results[2].order == world.order(first.id)
    assert world.order(first.id).status is OrderStatus.DELIVERED
    assert world.order(first.id).shipments[0].tracking_number == "1Z999"
    assert world.order(second.id).status is OrderStatus.SHIPPED
    # Each ship captured its share once, under the shipment's own idempotency key.
    assert sorted(key for _, _, key in world.spy.captured) == sorted(
        [f"{first.id}:{one}:capture", f"{second.id}:{two}:capture"]
    )
    assert world.level("TSHIRT", "wh-west") == (47, 0, 47)


def test_one_orders_parcels_confirmed_out_of_order_in_one_wave_capture_each_share_once(world):
    # A wave listing one order's two parcels out of order: a delivery before its ship is refused
    # alone (changing nothing), a ship repeated after its delivery changes nothing, and the order
    # ends delivered with each share captured once, its total in all, each parcel's units out once.
    order = world.allocated(("TSHIRT", 2), ("CAP", 2))
    tshirts, caps = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")

    results = run(
        world, (order.id, caps, "deliver"), (order.id, tshirts, "ship"), (order.id, tshirts, "deliver"),
        (order.id, caps, "ship"), (order.id, tshirts, "ship"), (order.id, caps, "deliver"),
    )  # fmt: skip

    assert [r.failure.code if r.failure else None for r in results] == ["invalid_transition"] + [None] * 5
    partly, shipped = OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED
    assert [r.order_status for r in results[1:]] == [partly, partly, shipped, shipped, OrderStatus.DELIVERED]
    delivered = world.order(order.id)
    assert delivered.payment.captured == delivered.totals.grand_total
    assert sorted(key for _, _, key in world.spy.captured) == sorted(
        [f"{order.id}:{tshirts}:capture", f"{order.id}:{caps}:capture"]
    )
    assert (world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")) == ((48, 0, 48), (8, 0, 8))


def test_a_repeated_item_and_a_repeated_batch_change_nothing_twice(world):
    order = world.allocated(("TSHIRT", 2))
    shipment = order.shipments[0].id
    items = [(order.id, shipment, "ship"), (order.id, shipment, "ship"), (order.id, shipment, "deliver")]

    run(world, *items)
    after_first = world.snapshot(order.id)
    again = run(world, *items)

    assert world.snapshot(order.id) == after_first
    assert [r.failure for r in again] == [None, None, None]
    assert len(world.spy.captured) == 1
    assert world.level("TSHIRT", "wh-west") == (48, 0, 48)


def test_an_item_shipping_a_shipped_parcel_with_another_tracking_number_is_refused_as_the_single_route_is(world):
    order = world.allocated(("TSHIRT", 2))
    shipment = order.shipments[0].id
    ship_as = [{"order_id": order.id, "shipment_id": shipment, "action": "ship", "tracking_number": number}
               for number in ("1ZWAVE0001", "1ZWAVE0001", "1ZWAVE0002")]  # fmt: skip

    results = run(world, *ship_as)

    assert [r.failure.code if r.failure else None for r in results] == [None, None, "tracking_number_conflict"]
    refused = results[2]
    assert refused.failure.details[0]["tracking_number"] == "1ZWAVE0001"
    assert (refused.order, refused.retry) == (None, False)
    assert world.order(order.id).shipments[0].tracking_number == "1ZWAVE0001"
    assert len(world.spy.captured) == 1


def test_one_refused_item_stops_nothing_and_changes_nothing_of_its_own(world):
    good, pending = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))
    untouched = mine(world, pending.id)

    results = run(
        world,
        ("ord_" + "a" * 24, "shp_" + "a" * 24, "ship"),  # well formed, unknown
        (good.id, "shp_" + "b" * 24, "ship"),  # not on this order
        (pending.id, pending.shipments[0].id, "deliver"),  # not shipped yet
        ("not even an id", "nor this", "ready"),
        (good.id, good.shipments[0].id, "ship"),
    )

    assert [type(r.failure) for r in results] == [NotFound, NotFound, InvalidTransition, NotFound, type(None)]
    assert [r.retry for r in results] == [False] * 5
    assert mine(world, pending.id) == untouched
    assert world.order(good.id).status is OrderStatus.SHIPPED


def test_another_channels_order_is_not_found_and_left_alone(world):
    order = world.allocated(("TSHIRT", 1))  # channel "web"
    untouched = world.snapshot(order.id)

    (result,) = run(world, (order.id, order.shipments[0].id, "ship"), channel="marketplace")

    assert isinstance(result.failure, NotFound)
    assert world.snapshot(order.id) == untouched


def test_a_refused_capture_and_an_unavailable_gateway_are_reported_per_item(world):
    refused, unavailable, fine = (world.allocated(("TSHIRT", 1)) for _ in range(3))
    # The gateway refuses the first capture, then fails transiently for every attempt of the next.
    world.gateway.script("capture", "refuse", "transient", "transient", "transient", "approve")

    results = run(world, *((o.id, o.shipments[0].id, "ship") for o in (refused, unavailable, fine)))

    # Sent again, the refused item renews the authorization the refusal spent first (retry: true).
    assert isinstance(results[0].failure, PaymentRefused) and results[0].retry is True
    assert isinstance(results[1].failure, PaymentGatewayUnavailable) and results[1].retry is True
    assert results[2].failure is None
    assert world.order(refused.id).shipments[0].status is ShipmentStatus.PENDING
    assert world.order(unavailable.id).shipments[0].status is ShipmentStatus.PENDING
    assert world.order(fine.id).shipments[0].status is ShipmentStatus.SHIPPED

    # The gateway is back: the same item again ships it, with the same capture key.
    (retried,) = run(world, (unavailable.id, unavailable.shipments[0].id, "ship"))
    assert retried.failure is None and retried.shipment_status is ShipmentStatus.SHIPPED


def test_a_refused_capture_is_retry_once_its_renewal_may_cure_it_and_not_after(world):
    # A capture refused on the order's authorization (the issuer let it lapse early) spends it: the
    # item sent again renews it first and may ship, so the warehouse is told to send it again. A
    # capture refused on that renewal as well is asked again on it, and refused again: retry false.
    cured, refused = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))
    world.gateway.script("capture", "refuse", "approve")

    (first,) = run(world, (cured.id, cured.shipments[0].id, "ship"))
    (again,) = run(world, (cured.id, cured.shipments[0].id, "ship"))

    assert isinstance(first.failure, PaymentRefused) and first.retry is True
    assert again.failure is None and again.shipment_status is ShipmentStatus.SHIPPED

    world.gateway.script("capture", "refuse")
    results = [run(world, (refused.id, refused.shipments[0].id, "ship"))[0] for _ in range(3)]

    assert [isinstance(r.failure, PaymentRefused) for r in results] == [True, True, True]
    assert [r.retry for r in results] == [True, False, False]
    assert world.order(refused.id).shipments[0].status is ShipmentStatus.PENDING


def test_a_ship_whose_capture_a_cancel_under_way_took_back_is_retry_and_ships_once_it_is_done(world, monkeypatch):
    # A parcel's ship died after its capture; a cancel of the order's other units takes that
    # capture back first, and the gateway fails it half-way: the request stands withdrawn, and a
    # ship of the parcel meanwhile is refused "ship again after". It said retry false (a person
    # called, the answer kept under the batch's Idempotency-Key) for a parcel that ships as soon
    # as the cancel is done, as the same item sent again then shows.
    order = world.allocated(("TSHIRT", 2), ("CAP", 2))
    tshirts, caps = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    ships_died(world, monkeypatch, order.id, [tshirts])
    world.gateway.script("capture", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.cancel(order.id, "out of caps", actor="key_cs", lines={"L2": 2})
    world.gateway.script("capture", "approve")

    (refused,) = run(world, (order.id, tshirts, "ship"))

    assert isinstance(refused.failure, InvalidTransition) and refused.failure.code == "invalid_transition"
    assert refused.retry is True
    assert world.order(order.id).shipment(tshirts).status is ShipmentStatus.PENDING
    world.actions.cancel(order.id, "out of caps", actor="key_cs", lines={"L2": 2})
    (again,) = run(world, (order.id, tshirts, "ship"))
    assert again.failure is None and again.shipment_status is ShipmentStatus.SHIPPED
    shipped = world.order(order.id)
    assert shipped.payment.captured == shipped.totals.grand_total
    assert world.order(order.id).shipment(caps).status is ShipmentStatus.CANCELLED


def test_a_ship_whose_capture_a_concurrent_cancel_took_back_before_its_write_is_retry(world, monkeypatch):
    # The cancel of the other units lands between the ship's capture and its write: it settles the
    # capture (refunded), the ship is refused, and the same item sent again ships, captured anew.
    order = world.allocated(("TSHIRT", 2), ("CAP", 2))
    tshirts = world.shipment_at(order, "wh-west")

    def cancel_caps() -> None:
        world.actions.cancel(order.id, "out of caps", actor="key_cs", lines={"L2": 2})

    before_the_next_write(world, monkeypatch, cancel_caps, skip=1)  # after the capture's request
    (refused,) = run(world, (order.id, tshirts, "ship"))
    monkeypatch.undo()

    assert isinstance(refused.failure, InvalidTransition) and refused.retry is True
    assert world.order(order.id).payment.captured.amount == 0
    (again,) = run(world, (order.id, tshirts, "ship"))
    assert again.failure is None and again.shipment_status is ShipmentStatus.SHIPPED
    shipped = world.order(order.id)
    assert shipped.payment.captured == shipped.totals.grand_total


def test_a_held_orders_parcels_are_refused_in_a_wave_with_nothing_captured_or_moved_and_ship_after_release(world):
    # Held: nothing is captured or shipped while it is (API.md), whatever a warehouse confirms. The
    # refusal is retry false: a person releases the order, and the item is sent again after.
    order = world.allocated(("TSHIRT", 2), ("CAP", 1))
    tshirts, caps = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order.id, HoldRequest(reason="fraud_review"), actor="key_cs")
    untouched = mine(world, order.id)
    stock = world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")

    results = run(world, (order.id, tshirts, "ship"), (order.id, caps, "ship"), (order.id, tshirts, "deliver"))

    assert [(r.failure.code, r.retry) for r in results] == [("invalid_transition", False)] * 3
    assert mine(world, order.id) == untouched
    assert (world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")) == stock
    assert world.spy.captured == []
    holds.release(order.id, ReleaseRequest(), actor="key_cs")
    again = run(world, (order.id, tshirts, "ship"), (order.id, caps, "ship"))
    assert [r.failure for r in again] == [None, None]
    shipped = world.order(order.id)
    assert shipped.payment.captured == shipped.totals.grand_total and len(world.spy.captured) == 2


def test_a_pickup_is_readied_then_collected_in_one_batch(world):
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    shipment = order.shipments[0].id

    results = run(world, (order.id, shipment, "ready"), (order.id, shipment, "deliver"))

    assert [r.shipment_status for r in results] == [ShipmentStatus.READY_FOR_PICKUP, ShipmentStatus.DELIVERED]
    assert world.order(order.id).payment.captured == world.order(order.id).totals.grand_total


def test_a_pickup_wave_sent_again_once_collected_answers_each_item_as_done_and_changes_nothing(world):
    # A store's wave (ready, then collected) sent again, its answer lost: the ready it repeats
    # happened, as a ship repeated after the delivery did, so it is answered with the order as it
    # stands, not refused (it was 409 invalid_transition, retry false: a person called for a repeat).
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    shipment = order.shipments[0].id
    wave = [(order.id, shipment, "ready"), (order.id, shipment, "deliver")]
    run(world, *wave)
    after_first = world.snapshot(order.id)

    again = run(world, *wave)

    assert [r.failure for r in again] == [None, None]
    assert [r.shipment_status for r in again] == [ShipmentStatus.DELIVERED, ShipmentStatus.DELIVERED]
    assert world.snapshot(order.id) == after_first
    assert len(world.spy.captured) == 1


def lagging_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain reads show each order as it was before its last write, as an eventually consistent
    GetItem may just after the write; consistent reads show it as written."""
    real_get, real_update = world.orders.get, world.orders.update
    before: dict[str, Order] = {}

    def update(order: Order, expected: Order, entries: list, **conditions) -> None:
        real_update(order, expected, entries, **conditions)
        before[order.id] = expected

    def get(order_id: str, consistent: bool = False) -> Order | None:
        return real_get(order_id) if consistent or order_id not in before else before[order_id]

    monkeypatch.setattr(world.orders, "update", update)
    monkeypatch.setattr(world.orders, "get", get)


def test_a_pickup_readied_then_collected_in_one_batch_is_collected_while_plain_reads_lag(world, monkeypatch):
    # The collect runs milliseconds after the ready's write: a plain read may still show the
    # shipment pending, which must not refuse the customer's collection.
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    shipment = order.shipments[0].id
    lagging_reads(world, monkeypatch)

    results = run(world, (order.id, shipment, "ready"), (order.id, shipment, "deliver"))

    assert [r.failure for r in results] == [None, None]
    monkeypatch.undo()  # the order as written
    assert world.order(order.id).shipments[0].status is ShipmentStatus.DELIVERED
    assert world.order(order.id).payment.captured == order.totals.grand_total


def test_a_shipment_shipped_at_once_after_its_orders_release_ships_while_plain_reads_lag(world, monkeypatch):
    # The warehouse ships the moment the hold is lifted: a plain read may still show it held.
    order = world.allocated(("TSHIRT", 1))
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order.id, HoldRequest(reason="address_review"), actor="key_cs")
    lagging_reads(world, monkeypatch)
    holds.release(order.id, ReleaseRequest(), actor="key_cs")

    (result,) = run(world, (order.id, order.shipments[0].id, "ship"))

    assert result.failure is None
    monkeypatch.undo()
    assert world.order(order.id).status is OrderStatus.SHIPPED


def test_a_parcel_shipped_the_moment_its_order_is_allocated_ships_while_plain_reads_lag(world, monkeypatch):
    # The warehouse confirms the parcel as soon as the allocation names it: a plain read may still
    # show the order before its parcels were made, which must not answer not_found.
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    lagging_reads(world, monkeypatch)
    world.workflow.create_shipments(order_id)
    (parcel,) = world.orders.get(order_id, consistent=True).shipments
    assert world.orders.get(order_id).shipments == []  # what a plain read shows

    (result,) = run(world, (order_id, parcel.id, "ship"))

    assert result.failure is None
    monkeypatch.undo()
    assert world.order(order_id).status is OrderStatus.SHIPPED


def test_each_item_reports_the_order_as_it_left_it_while_plain_reads_lag(world, monkeypatch):
    # The last parcel of an order that lost a unit settles the payment after its delivery's write,
    # then reads the order to answer: a plain read may show it as it was before the delivery.
    order = world.allocated(("TSHIRT", 2), ("CAP", 2))
    tshirts, caps = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, tshirts, None, actor="key_wh")
    world.actions.cancel(order.id, "out of caps", actor="key_cs", lines={"L2": 1})
    lagging_reads(world, monkeypatch)

    results = run(world, (order.id, caps, "ship"), (order.id, tshirts, "deliver"), (order.id, caps, "deliver"))

    assert [r.failure for r in results] == [None, None, None]
    assert [(r.shipment_status, r.order_status) for r in results] == [
        (ShipmentStatus.SHIPPED, OrderStatus.SHIPPED),
        (ShipmentStatus.DELIVERED, OrderStatus.SHIPPED),
        (ShipmentStatus.DELIVERED, OrderStatus.DELIVERED),
    ]
    monkeypatch.undo()
    assert results[2].order == world.order(order.id)


def test_items_past_the_deadline_are_not_attempted_and_may_be_sent_again(world):
    first, second = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))
    third = world.allocated(("TSHIRT", 1))
    clock = iter([0.0, 25.0, 26.0])

    results = confirm(
        world.actions,
        batch(*((o.id, o.shipments[0].id, "ship") for o in (first, second, third))),
        "key_wms", None, lambda: next(clock), deadline_seconds=20.0,
    )  # fmt: skip

    assert results[0].failure is None
    assert isinstance(results[1].failure, NotAttempted) and results[1].retry is True
    assert [r.failure.message for r in results[1:]] == [
        "not attempted: the batch ran out of time once 1 of its 3 items had run; send this one again"
    ] * 2
    assert world.order(second.id).shipments[0].status is ShipmentStatus.PENDING


def test_an_item_a_broken_plugin_fails_is_refused_alone_as_its_single_route_answers_it(world, monkeypatch):
    # It failed the whole batch (a 500), losing the answers of the items done before it. No hook a
    # ship calls today fails outside the payment's PaymentPluginFailed: this is any plugin's failure.
    first, second, third = (world.allocated(("TSHIRT", 1)) for _ in range(3))
    ship = world.actions.ship

    def broken_for_the_second(order_id, *args, **kwargs):
        if order_id == second.id:
            raise PluginError("plugin acme failed in oms_some_hook: ValueError",
                              details=[{"plugin": "acme", "hook": "oms_some_hook"}])  # fmt: skip
        return ship(order_id, *args, **kwargs)

    monkeypatch.setattr(world.actions, "ship", broken_for_the_second)
    results = run(world, *((o.id, o.shipments[0].id, "ship") for o in (first, second, third)))

    assert [r.shipment_status for r in results] == [ShipmentStatus.SHIPPED, None, ShipmentStatus.SHIPPED]
    refused = results[1]
    assert isinstance(refused.failure, PluginError) and refused.failure.code == "plugin_error"
    assert refused.failure.details == [{"plugin": "acme", "hook": "oms_some_hook"}]
    assert refused.retry  # sent again once the plugin works: nothing it answered was kept
    assert world.order(second.id).shipments[0].status is ShipmentStatus.PENDING


@pytest.mark.parametrize(
    "body",
    [
        {"items": []},
        {"items": [{"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship"}] * (MAX_ITEMS + 1)},
        {"items": {"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship"}},
        {"items": [{"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship"}], "wave": "0001"},
    ],
)
def test_a_batch_that_is_not_a_list_of_1_to_100_items_is_refused_whole(body):
    with pytest.raises(ValidationError):
        ConfirmationBatch.model_validate(body)


@pytest.mark.parametrize(
    ("malformed", "field"),
    [
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "return"}, "items[1].action"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "deliver", "tracking_number": "1Z999"},
         "items[1].tracking_number"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship", "tracking_number": "1Z"},
         "items[1].tracking_number"),
        ({"order_id": "", "shipment_id": "shp_a", "action": "ship"}, "items[1].order_id"),
        ({"shipment_id": "shp_a", "action": "ship"}, "items[1].order_id"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship", "status": "shipped"}, "items[1].status"),
        ("ship ord_a shp_a", "items[1]"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "deliver", "shipped_at": "2026-11-22T11:00:00Z"},
         "items[1].shipped_at"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship", "shipped_at": "2026-11-22T11:00:00"},
         "items[1].shipped_at"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship", "shipped_at": "1795345200"},
         "items[1].shipped_at"),
        ({"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship", "shipped_at": 1795345200},
         "items[1].shipped_at"),
    ],
)  # fmt: skip
def test_a_malformed_item_is_refused_at_its_position_and_blocks_none_of_the_others(world, malformed, field):
    """A wave whose one row a WMS got wrong (a mistyped tracking number, an action this route does
    not take) ships the rest: that row alone is answered validation_error, naming its position."""
    first, last = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))

    results = run(world, (first.id, first.shipments[0].id, "ship"), malformed, (last.id, last.shipments[0].id, "ship"))

    assert [r.shipment_status for r in results] == [ShipmentStatus.SHIPPED, None, ShipmentStatus.SHIPPED]
    assert [type(r.failure) for r in results] == [type(None), InvalidRequest, type(None)]
    refused = results[1]
    assert refused.failure.code == "validation_error" and refused.retry is False
    assert refused.failure.details and all(d["field"].startswith(field) for d in refused.failure.details)
    assert any(d["field"] == field for d in refused.failure.details), refused.failure.details
    assert world.order(first.id).status is world.order(last.id).status is OrderStatus.SHIPPED


def test_a_malformed_item_is_answered_even_once_the_batch_ran_out_of_time(world):
    """Sending it again would not help: it is validation_error, not not_attempted."""
    order = world.allocated(("TSHIRT", 1))
    late = iter([25.0, 25.0])

    results = confirm(
        world.actions, batch((order.id, order.shipments[0].id, "ship"), {"order_id": "ord_a", "action": "ship"}),
        "key_wms", None, lambda: next(late), deadline_seconds=20.0,
    )  # fmt: skip

    assert isinstance(results[0].failure, NotAttempted) and results[0].retry is True
    assert isinstance(results[1].failure, InvalidRequest) and results[1].retry is False


def test_a_malformed_id_is_not_found_without_a_lookup(world, monkeypatch):
    order = world.allocated(("TSHIRT", 1))
    looked_up = []
    real_get = world.orders.get
    monkeypatch.setattr(world.orders, "get", lambda order_id: looked_up.append(order_id) or real_get(order_id))

    results = run(world, ("ORD_" + "A" * 24, order.shipments[0].id, "ship"), (order.id, "shp_\x00", "ship"))

    assert [type(r.failure) for r in results] == [NotFound, NotFound]
    assert looked_up == []


def test_a_malformed_item_echoes_only_ids_and_an_action_it_could_name():
    (refused,) = batch(
        {"order_id": "ord_\ud800", "shipment_id": "shp_" + "a" * 61, "action": "ship", "wave": "0001"}
    ).items

    assert isinstance(refused, MalformedItem)
    assert (refused.position, refused.order_id, refused.shipment_id, refused.action) == (0, None, None, "ship")
    assert [d["field"] for d in refused.details] == ["items[0].order_id", "items[0].shipment_id", "items[0].wave"]


def test_a_row_with_an_action_this_route_does_not_take_is_refused_for_that_alone_and_echoes_its_ids():
    # Its tracking number is no second fault: whether it goes with the action is for a valid action to say.
    (refused,) = batch(
        {"order_id": "ord_a", "shipment_id": "shp_a", "action": "return", "tracking_number": "1Z999AA10123456784"}
    ).items

    assert isinstance(refused, MalformedItem)
    assert (refused.position, refused.order_id, refused.shipment_id, refused.action) == (0, "ord_a", "shp_a", None)
    assert [d["field"] for d in refused.details] == ["items[0].action"]


def test_a_deliver_item_sent_with_a_null_tracking_number_is_delivered_as_one_without_it(world):
    # A WMS that writes every field of its row sends `"tracking_number": null` beside `deliver`: no
    # number given, as on the single route, not a number given with the wrong action.
    order = world.allocated(("TSHIRT", 1))
    shipment = order.shipments[0].id

    results = run(
        world, (order.id, shipment, "ship"),
        {"order_id": order.id, "shipment_id": shipment, "action": "deliver", "tracking_number": None},
    )  # fmt: skip

    assert [r.failure for r in results] == [None, None]
    assert results[1].shipment_status is ShipmentStatus.DELIVERED


def test_a_batch_of_exactly_the_most_items_is_taken():
    item = {"order_id": "ord_a", "shipment_id": "shp_a", "action": "ship"}

    assert len(ConfirmationBatch.model_validate({"items": [item] * MAX_ITEMS}).items) == MAX_ITEMS


def test_each_result_answers_its_own_item_a_refused_one_after_another_item_too(world):
    order = world.allocated(("TSHIRT", 1))
    shipment = order.shipments[0].id
    items = [(order.id, shipment, "ship"), (order.id, "shp_" + "b" * 24, "ship"), (order.id, shipment, "ready")]

    results = run(world, *items)

    assert [type(r.failure) for r in results] == [type(None), NotFound, InvalidTransition]
    assert [(r.item.order_id, r.item.shipment_id, r.item.action) for r in results] == items


def test_an_item_whose_order_concurrent_writers_kept_changing_is_retry_and_ships_once_sent_again(world, monkeypatch):
    # Every write of its order lost to another writer (StaleVersion once the attempts are spent):
    # nothing of it is recorded, the items after it run, and the warehouse is told to send it again.
    contested, fine = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))

    def losing(write):
        def lost(order, expected, *args, **kwargs):
            if expected.id == contested.id:
                raise StaleVersion(f"order {expected.id} moved on")
            return write(order, expected, *args, **kwargs)

        return lost

    with monkeypatch.context() as patched:
        patched.setattr(world.orders, "update", losing(world.orders.update))
        patched.setattr(world.orders, "update_with_stock", losing(world.orders.update_with_stock))
        results = run(world, (contested.id, contested.shipments[0].id, "ship"), (fine.id, fine.shipments[0].id, "ship"))

    assert isinstance(results[0].failure, StaleVersion) and results[0].retry is True
    assert results[1].failure is None
    assert world.order(contested.id).shipments[0].status is ShipmentStatus.PENDING
    (again,) = run(world, (contested.id, contested.shipments[0].id, "ship"))
    assert again.failure is None and again.shipment_status is ShipmentStatus.SHIPPED
    assert world.order(contested.id).payment.captured == world.order(contested.id).totals.grand_total


def test_the_items_run_before_the_deadline_are_counted_without_the_malformed_ones(world):
    first, second = world.allocated(("TSHIRT", 1)), world.allocated(("TSHIRT", 1))
    clock = iter([0.0, 25.0])

    results = confirm(
        world.actions,
        batch({"order_id": "ord_a", "action": "ship"}, *((o.id, o.shipments[0].id, "ship") for o in (first, second))),
        "key_wms", None, lambda: next(clock), deadline_seconds=20.0,
    )  # fmt: skip

    assert [type(r.failure) for r in results] == [InvalidRequest, type(None), NotAttempted]
    assert results[2].failure.message == (
        "not attempted: the batch ran out of time once 1 of its 3 items had run; send this one again"
    )


@pytest.mark.parametrize("action", ["ready", "deliver"])
def test_another_channels_parcel_is_neither_readied_nor_delivered(world, action):
    order = world.allocated(("TSHIRT", 1), **PICKUP)  # channel "web"
    shipment = order.shipments[0].id
    if action == "deliver":
        world.actions.ready(order.id, shipment, actor="key_store", channel=None)
    untouched = world.snapshot(order.id)

    (result,) = run(world, (order.id, shipment, action), channel="marketplace")

    assert isinstance(result.failure, NotFound)
    assert world.snapshot(order.id) == untouched


def test_the_body_an_idempotency_key_stands_for_is_the_batch_as_sent_a_malformed_item_as_it_came():
    # Two batches that differ only in a malformed row are two requests: under one Idempotency-Key the
    # second is 409 idempotency_key_reused, not the first one's answer replayed.
    good = {"order_id": "ord_" + "a" * 24, "shipment_id": "shp_" + "a" * 24, "action": "ship", "tracking_number": None}
    malformed = {"order_id": "ord_b", "shipment_id": "shp_b", "action": "return"}

    sent = ConfirmationBatch.model_validate({"items": [good, malformed]})

    assert sent.as_sent() == {"items": [good, malformed]}
    other = ConfirmationBatch.model_validate({"items": [good, {**malformed, "action": "cancel"}]})
    assert other.as_sent() != sent.as_sent()


def ship_at(order: Order, shipped_at: str) -> dict[str, str]:
    return {"order_id": order.id, "shipment_id": order.shipments[0].id, "action": "ship", "shipped_at": shipped_at}


def test_a_ship_item_stating_when_the_parcel_left_records_that_time_in_utc(world, clock):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=3)
    before = world.order(order.id)

    (result,) = run(world, ship_at(order, "2026-11-22T14:30:00+02:00"))  # 12:30 UTC, after NOW's allocation

    assert result.failure is None
    left = datetime(2026, 11, 22, 12, 30, tzinfo=UTC)
    shipment = world.order(order.id).shipments[0]
    assert (shipment.status, shipment.shipped_at) == (ShipmentStatus.SHIPPED, left)
    shipped = world.history(order.id)[-1]
    assert shipped.type is OrderEvent.SHIPMENT_SHIPPED
    assert (shipped.at, shipped.detail["shipped_at"]) == (clock.now, "2026-11-22T12:30:00Z")
    assert len(world.spy.captured) == 1  # captured at the confirmation, as without the time
    documents = (json.loads(before.stored_json()), json.loads(world.order(order.id).stored_json()))
    (event,) = [e for e in order_events(*documents) if e.type is EventType.SHIPMENT_SHIPPED]
    assert event.data["shipment"]["shipped_at"] == "2026-11-22T12:30:00Z"


def test_a_ship_item_without_a_time_records_the_confirmations_time_and_names_none(world, clock):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=3)

    run(world, (order.id, order.shipments[0].id, "ship"))

    assert world.order(order.id).shipments[0].shipped_at == clock.now
    assert "shipped_at" not in world.history(order.id)[-1].detail


def test_a_shelf_counted_after_the_stated_hand_over_keeps_its_count_and_one_counted_before_gives_the_units(
    world, clock
):
    after, before = world.allocated(("TSHIRT", 2)), world.allocated(("TSHIRT", 2))  # 50 on hand, 4 reserved
    clock.advance(hours=1)
    left = clock.now.isoformat()
    clock.advance(minutes=10)
    world.inventory.set_on_hand("TSHIRT", "wh-west", 48, "stock take", counted_at=clock.now)  # after's 2 gone
    clock.advance(minutes=10)

    run(world, ship_at(after, left))
    assert world.level("TSHIRT", "wh-west") == (48, 2, 46)  # the count stands: not 46
    run(world, ship_at(before, clock.now.isoformat()))  # left after that count: counted on the shelf
    assert world.level("TSHIRT", "wh-west") == (46, 0, 46)


@pytest.mark.parametrize(
    ("stated", "why"),
    [
        (NOW + timedelta(hours=1, seconds=61), "later than now"),
        (NOW - timedelta(microseconds=1), "before the OMS made"),
    ],
)
def test_a_hand_over_time_ahead_of_the_clock_or_before_the_parcel_was_made_is_refused_alone(world, clock, stated, why):
    order, other = world.allocated(("TSHIRT", 2)), world.allocated(("TSHIRT", 1))
    clock.advance(hours=1)
    before = mine(world, order.id)

    refused, shipped = run(world, ship_at(order, stated.isoformat()), (other.id, other.shipments[0].id, "ship"))

    assert isinstance(refused.failure, InvalidRequest) and refused.failure.code == "validation_error"
    assert why in str(refused.failure)
    assert [d["field"] for d in refused.failure.details] == ["items[0].shipped_at"]
    assert (refused.order, refused.retry) == (None, False)
    assert mine(world, order.id) == before
    assert shipped.failure is None and shipped.shipment_status is ShipmentStatus.SHIPPED
    assert len(world.spy.captured) == 1


def test_a_hand_over_time_within_a_minute_ahead_is_recorded_as_now_and_one_at_the_parcels_making_is_taken(world, clock):
    order, made_now = world.allocated(("TSHIRT", 2)), world.allocated(("TSHIRT", 1))
    clock.advance(hours=1)

    results = run(world, ship_at(order, (clock.now + timedelta(seconds=60)).isoformat()),
                  ship_at(made_now, NOW.isoformat()))  # fmt: skip

    assert [r.failure for r in results] == [None, None]
    assert world.order(order.id).shipments[0].shipped_at == clock.now
    assert world.order(made_now.id).shipments[0].shipped_at == NOW


def test_a_ship_sent_again_with_another_hand_over_time_changes_nothing(world, clock):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=2)
    run(world, ship_at(order, (NOW + timedelta(hours=1)).isoformat()))
    after_first = world.snapshot(order.id)

    again = run(world, ship_at(order, (NOW + timedelta(minutes=90)).isoformat()), ship_at(order, NOW.isoformat()))
    impossible = run(world, ship_at(order, (NOW - timedelta(seconds=1)).isoformat()))  # before it was made

    assert [(r.failure, r.shipment_status) for r in again] == [(None, ShipmentStatus.SHIPPED)] * 2
    assert [d["field"] for d in impossible[0].failure.details] == ["items[0].shipped_at"]
    assert world.snapshot(order.id) == after_first
    assert world.order(order.id).shipments[0].shipped_at == NOW + timedelta(hours=1)
    assert len(world.spy.captured) == 1


def test_a_hand_over_time_sent_again_in_another_offset_is_the_same_body_for_the_idempotency_key():
    def sent(shipped_at: str) -> dict:
        item = {"order_id": "ord_" + "a" * 24, "shipment_id": "shp_" + "a" * 24, "action": "ship"}
        return ConfirmationBatch.model_validate({"items": [{**item, "shipped_at": shipped_at}]}).as_sent()

    assert sent("2026-11-22T14:30:00+02:00") == sent("2026-11-22T12:30:00Z")
    assert sent("2026-11-22T14:30:00+02:00")["items"][0]["shipped_at"] == "2026-11-22T12:30:00Z"
    assert sent("2026-11-22T14:30:00+02:00") != sent("2026-11-22T14:30:00+01:00")


def test_a_parcel_its_carrier_scanned_delivered_before_the_stated_hand_over_left_by_the_scan(world, clock):
    """A manifest's time later than the carrier's delivery scan is no time the parcel can have left
    at: it left by the scan, and is delivered then, as a ship without a time records it."""
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=3)
    scanned = NOW + timedelta(hours=1)
    with pytest.raises(InvalidTransition):
        world.actions.deliver_scanned(order.id, order.shipments[0].id, actor="key_carrier", delivered_at=scanned)

    (result,) = run(world, ship_at(order, (NOW + timedelta(hours=2)).isoformat()))

    assert result.failure is None and result.shipment_status is ShipmentStatus.DELIVERED
    shipment = world.order(order.id).shipments[0]
    assert (shipment.shipped_at, shipment.delivered_at) == (scanned, scanned)


def test_the_ship_action_refuses_a_time_it_cannot_have_left_at_as_a_validation_error_naming_shipped_at(world, clock):
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=1)
    shipment_id = order.shipments[0].id

    for stated in (clock.now + timedelta(minutes=2), NOW - timedelta(minutes=2)):
        with pytest.raises(InvalidRequest) as refused:
            world.actions.ship(order.id, shipment_id, None, actor="key_wms", shipped_at=stated)
        assert refused.value.code == "validation_error"
        assert [d["field"] for d in refused.value.details] == ["shipped_at"]
    assert world.order(order.id).shipments[0].status is ShipmentStatus.PENDING


def test_a_history_naming_no_entry_that_made_the_parcel_bounds_its_hand_over_by_the_orders_placing(
    world, clock, monkeypatch
):
    """An order whose history does not say which entry made the parcel: no parcel of it left before
    the order was placed, and any time since is believed."""
    order = world.allocated(("TSHIRT", 2))
    clock.advance(hours=2)
    made = {e.type for e in world.history(order.id) if (e.detail or {}).get("shipments")}
    assert made == {OrderEvent.ALLOCATED}
    read = world.orders.history

    def unnamed(order_id: str, **kw: bool):
        found = read(order_id, **kw)
        return found and (found[0], [e for e in found[1] if e.type is not OrderEvent.ALLOCATED])

    monkeypatch.setattr(world.orders, "history", unnamed)
    placed = world.order(order.id).created_at

    refused, shipped = run(world, ship_at(order, (placed - timedelta(seconds=1)).isoformat()),
                           ship_at(order, placed.isoformat()))  # fmt: skip

    assert [d["field"] for d in refused.failure.details] == ["items[0].shipped_at"]
    assert shipped.failure is None and world.order(order.id).shipments[0].shipped_at == placed
