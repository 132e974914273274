"""The order workflow's steps (core.workflow.Workflow) on the in-memory fakes, with the real built-in
plugins and a fixed clock: what each step does, that running it again changes nothing, the failure
paths and their compensation, a crash between reserving and recording, and a cancel that lands
between a step's read and its write."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from core import hookimpl, payment_keys
from core.actors import WORKFLOW_ACTOR
from core.cancellation import LOST_RACE
from core.errors import (
    NotFound,
    OrderClosed,
    OutOfStock,
    PaymentDeclined,
    PluginError,
    PluginUnavailable,
    StaleVersion,
    TransientError,
)
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import Address, Allocation, HistoryEntry, LineInput, Order, OrderEdit
from core.money import Money
from core.order_changes import modify
from core.sourcing import MAX_REASON_CHARS, MAX_REASONS
from core.status import OrderStatus
from core.workflow import reservation_key
from core.workflow_types import SourcingPlan
from plugins import test_payments
from plugins.flat_rate_carrier import CARRIER, is_valid_tracking_number
from tests.builders import NOW, address_body, location
from tests.unit.world import (
    AnAttemptInBetween,
    RecordsBookings,
    World,
    before_the_next_write,
    build_racing_world,
    build_world,
)

S = OrderStatus

# --- The world (tests/unit/world.py) ----------------------------------------------------------
STOCK = [
    ("TSHIRT", "wh-east", 10),
    ("TSHIRT", "wh-west", 10),
    ("TSHIRT", "store-sf", 5),
    ("MUG", "wh-west", 3),
    ("MUG", "store-sf", 2),
    ("CAP", "wh-east", 4),
]


def cause(error: str, message: str) -> str:
    """The Cause a Step Functions Catch hands to a compensation: the Lambda's error JSON."""
    return json.dumps({"errorType": error, "errorMessage": message})


def crash_once(world: World, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The next FakeOrders.update raises, as a Lambda that dies before its write would."""
    real = world.orders.update
    calls: list[int] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        calls.append(order.version)
        if len(calls) == 1:
            raise RuntimeError("the Lambda timed out before it wrote")
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)
    return calls


# --- The happy path, step by step -------------------------------------------------------------


def test_authorize_payment_authorizes_the_grand_total(world):
    order_id = world.place(("TSHIRT", 2))
    placed = world.order(order_id)

    world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.status == "authorized"
    assert order.payment.authorized == placed.totals.grand_total
    assert order.payment.captured == Money.zero("USD")
    assert order.payment.authorization == world.spy.authorized[-1]
    assert order.payment.authorization.startswith("auth_")
    assert (order.version, order.updated_at) == (placed.version + 1, NOW)
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor, entry.at) == (
        "payment_authorized", S.PENDING, S.AUTHORIZED, "workflow", NOW,
    )  # fmt: skip
    assert entry.detail == {
        "amount": placed.totals.grand_total.model_dump(mode="json"),
        "reference": order.payment.authorization,
    }
    assert world.held() == {}


def test_reserve_stock_records_the_allocations_and_holds_them_under_order_line_keys(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)

    world.workflow.reserve_stock(order_id)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED  # reserving records, the status moves with the shipments
    assert order.version == authorized.version + 1
    assert [a.model_dump() for a in order.allocations] == [{"line_id": "L1", "location_id": "wh-west", "quantity": 2}]
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 2}
    assert reservation_key(order_id, "L1") == f"{order_id}#L1"
    west = world.inventory.stock[("TSHIRT", "wh-west")]
    assert (west.on_hand, west.reserved, west.available) == (10, 2, 8)
    assert world.inventory.stock[("TSHIRT", "wh-east")].reserved == 0
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor, entry.at) == (
        "stock_reserved", None, None, "workflow", NOW,
    )  # fmt: skip
    assert entry.detail["allocations"] == [{"line_id": "L1", "location_id": "wh-west", "quantity": 2}]
    reasons = entry.detail["reasons"]
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert any("wh-west" in r for r in reasons)


def test_create_shipments_allocates_with_a_booked_pending_shipment(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    reserved = world.order(order_id)

    world.workflow.create_shipments(order_id)

    order = world.order(order_id)
    assert order.status is S.ALLOCATED
    assert order.version == reserved.version + 1
    (shipment,) = order.shipments
    assert shipment.id.startswith("shp_")
    assert shipment.location_id == "wh-west"
    assert [line.model_dump() for line in shipment.lines] == [{"line_id": "L1", "quantity": 2}]
    assert (shipment.status, shipment.shipped_at, shipment.delivered_at) == ("pending", None, None)
    assert (shipment.carrier, shipment.service) == (CARRIER, "Ground")
    assert is_valid_tracking_number(shipment.tracking_number)
    # The order keeps the label's key, never a link: links are signed when the order is read.
    assert shipment.label_url == f"labels/{order_id}/{shipment.id}"
    assert list(world.labels.labels) == [shipment.id]
    assert world.labels.labels[shipment.id].startswith(b"%PDF-")
    # Shipments are created, not shipped: the units stay reserved and nothing is captured.
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 2}
    assert world.spy.captured == []
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "allocated", S.AUTHORIZED, S.ALLOCATED, "workflow",
    )  # fmt: skip
    assert entry.detail == {
        "shipments": [{"id": shipment.id, "location_id": "wh-west", "tracking_number": shipment.tracking_number}]
    }
    assert [h.type for h in world.history(order_id)] == ["created", "payment_authorized", "stock_reserved", "allocated"]


def test_shipment_ids_and_tracking_numbers_are_the_same_in_another_run_of_the_same_order():
    first, second = build_world(STOCK), build_world(STOCK)
    runs = [w.run(w.place(("MUG", 1), ("CAP", 1))) for w in (first, second)]
    assert runs[0].id == runs[1].id
    assert [(s.id, s.location_id, s.tracking_number) for s in runs[0].shipments] == [
        (s.id, s.location_id, s.tracking_number) for s in runs[1].shipments
    ]


# --- At least once: every step twice --------------------------------------------------------


@pytest.mark.parametrize("step", ["authorize_payment", "reserve_stock", "create_shipments"])
def test_every_step_run_twice_changes_nothing_the_second_time(world, step):
    order_id = world.place(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))  # a split order: two locations
    steps = {
        "authorize_payment": lambda: world.workflow.authorize_payment(order_id, attempt=0),
        "reserve_stock": lambda: world.workflow.reserve_stock(order_id),
        "create_shipments": lambda: world.workflow.create_shipments(order_id),
    }
    for name, run in steps.items():
        run()
        if name == step:
            break
    once = world.snapshot(order_id)

    steps[step]()

    assert world.snapshot(order_id) == once
    assert world.order(order_id).version == once[0].version


def test_the_whole_workflow_again_after_allocation_changes_nothing(world):
    order_id = world.place(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    world.run(order_id)
    once = world.snapshot(order_id)

    for attempt in (0, 1):
        world.workflow.authorize_payment(order_id, attempt=attempt)
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)

    assert world.snapshot(order_id) == once
    assert len(world.spy.authorized) == 1  # the gateway was not asked again
    held = world.held_for(order_id)
    assert sum(held.values()) == 6  # 2 + 1 + 3 units, each held once


# --- Payment failures -------------------------------------------------------------------------


def test_a_declined_payment_ends_payment_failed_with_no_stock_held(world):
    order_id = world.place(("TSHIRT", 2), token="tok_decline")

    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert world.order(order_id).status is S.PENDING
    assert world.order(order_id).version == 1

    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause=cause("PaymentDeclined", "declined"))

    order = world.order(order_id)
    assert order.status is S.PAYMENT_FAILED
    assert order.payment.status == "declined"
    assert order.payment.authorization is None
    assert order.payment.authorized == Money.zero("USD")
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "payment_failed", S.PENDING, S.PAYMENT_FAILED, "workflow",
    )  # fmt: skip
    assert entry.detail == {"reason": "payment_declined", "error": "PaymentDeclined", "message": "declined"}
    assert world.held() == {}
    assert set(world.reserved().values()) == {0}
    assert world.spy.authorized == []

    # Repeated, it changes nothing; the later steps see a closed order.
    once = world.snapshot(order_id)
    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause=cause("PaymentDeclined", "declined"))
    assert world.snapshot(order_id) == once
    for later in (world.workflow.reserve_stock, world.workflow.create_shipments):
        with pytest.raises(OrderClosed):
            later(order_id)
    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=1)
    assert world.snapshot(order_id) == once


def test_a_flaky_gateway_fails_the_first_attempt_and_authorizes_the_retry(world):
    order_id = world.place(("TSHIRT", 2), token="tok_flaky")

    with pytest.raises(TransientError) as raised:
        world.workflow.authorize_payment(order_id, attempt=0)
    assert type(raised.value) is TransientError  # the class name Step Functions' Retry matches
    assert world.order(order_id).status is S.PENDING
    assert world.order(order_id).version == 1  # a failed attempt is history, not a new version
    _, failed = world.history(order_id)
    assert (failed.type, failed.actor, failed.to_status) == ("payment_authorization_failed", "workflow", None)
    assert {k: failed.detail[k] for k in ("operation", "attempt", "kind")} == {
        "operation": "authorize", "attempt": 1, "kind": "transient",
    }  # fmt: skip

    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorized == order.totals.grand_total
    assert order.payment.authorization == world.spy.authorized[-1]


def test_steps_on_an_unknown_order_raise_not_found(world):
    with pytest.raises(NotFound):
        world.workflow.authorize_payment("ord_nope", attempt=0)
    with pytest.raises(NotFound):
        world.workflow.reserve_stock("ord_nope")


# --- Out of stock ------------------------------------------------------------------------------


def test_stock_that_vanished_after_capture_ends_cancelled_out_of_stock_with_the_authorization_voided(world):
    order_id = world.place(("TSHIRT", 2))
    for location_id in ("wh-east", "wh-west"):  # a stock take finds the shelves empty
        world.inventory.set_on_hand("TSHIRT", location_id, 0, reason="stock_take")
    world.workflow.authorize_payment(order_id, attempt=0)
    authorization = world.order(order_id).payment.authorization

    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order_id)
    assert world.held() == {}
    assert world.order(order_id).allocations == []

    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause=cause("OutOfStock", "stock ran out"))

    order = world.order(order_id)
    assert order.status is S.CANCELLED
    assert order.payment.status == "voided"
    assert world.spy.voided == [authorization]
    entry, voided = world.history(order_id)[-2:]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "cancelled", S.AUTHORIZED, S.CANCELLED, "workflow",
    )  # fmt: skip
    assert entry.detail == {
        "reason": "out_of_stock", "error": "OutOfStock", "message": "stock ran out", "lines": {"L1": 2},
        "grand_total": {"from": {"amount": "47.88", "currency": "USD"}, "to": {"amount": "0.00", "currency": "USD"}},
    }  # fmt: skip
    assert [(line.quantity, line.cancelled_quantity) for line in order.lines] == [(0, 2)]
    assert (voided.type, voided.actor, voided.detail["authorization"]) == ("payment_voided", "workflow", authorization)
    assert world.held() == {}
    assert set(world.reserved().values()) == {0}


def test_stock_lost_to_another_order_halfway_through_reserving_is_all_given_back(world, monkeypatch):
    # West has the TSHIRTs and the MUG, only east has CAPs: the plan reserves at both.
    order_id = world.place(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    real = world.inventory.reserve
    reserved_before_the_loss: list[tuple[str, str]] = []

    def reserve(sku: str, location_id: str, key: str, quantity: int) -> None:
        if sku == "CAP":  # another order takes the last caps first
            real("CAP", "wh-east", "ord_rival#L1", 4)
        else:
            reserved_before_the_loss.append((sku, location_id))
        real(sku, location_id, key, quantity)

    monkeypatch.setattr(world.inventory, "reserve", reserve)

    # Losing the race is worth a retry: the step plans again on fresh stock.
    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)

    assert reserved_before_the_loss  # the rollback really had something to give back
    assert world.held() == {("CAP", "wh-east", "ord_rival#L1"): 4}
    assert world.inventory.stock[("TSHIRT", "wh-west")].reserved == 0
    assert world.inventory.stock[("MUG", "wh-west")].reserved == 0
    assert world.order(order_id).allocations == []
    assert world.order(order_id).status is S.AUTHORIZED

    # The retry finds no caps anywhere: now the order is out of stock.
    monkeypatch.setattr(world.inventory, "reserve", real)
    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order_id)
    assert world.held() == {("CAP", "wh-east", "ord_rival#L1"): 4}


# --- Sourcing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            [("TSHIRT", 2), ("MUG", 1), ("CAP", 3)],
            {("L1", "wh-west"): 2, ("L2", "wh-west"): 1, ("L3", "wh-east"): 3},
            id="skus-at-different-locations",
        ),
        pytest.param([("TSHIRT", 15)], {("L1", "wh-west"): 10, ("L1", "wh-east"): 5}, id="one-line-split"),
    ],
)
def test_a_split_order_gets_one_shipment_per_location_covering_every_unit(world, lines, expected):
    order_id = world.place(*lines)

    order = world.run(order_id)

    assert order.status is S.ALLOCATED
    allocations = {(a.line_id, a.location_id): a.quantity for a in order.allocations}
    assert allocations == expected
    for line in order.lines:
        assert sum(a.quantity for a in order.allocations if a.line_id == line.line_id) == line.quantity
    assert sorted(s.location_id for s in order.shipments) == ["wh-east", "wh-west"]
    assert len({s.id for s in order.shipments}) == 2
    shipped = {(x.line_id, s.location_id): x.quantity for s in order.shipments for x in s.lines}
    assert shipped == expected
    sku_of = {line.line_id: line.sku for line in order.lines}
    assert world.held() == {
        (sku_of[line_id], location_id, f"{order_id}#{line_id}"): q for (line_id, location_id), q in expected.items()
    }
    assert sorted(world.labels.labels) == sorted(s.id for s in order.shipments)


def test_a_pickup_order_is_sourced_from_the_pickup_store_only(world):
    order_id = world.place(
        ("TSHIRT", 2), ("MUG", 2), fulfillment={"type": "pickup", "location_id": "store-sf"}
    )  # the warehouses have all of it too

    order = world.run(order_id)

    assert order.status is S.ALLOCATED
    assert {a.location_id for a in order.allocations} == {"store-sf"}
    (shipment,) = order.shipments
    assert shipment.location_id == "store-sf"
    assert shipment.service == "Store pickup"
    assert world.held() == {
        ("TSHIRT", "store-sf", f"{order_id}#L1"): 2,
        ("MUG", "store-sf", f"{order_id}#L2"): 2,
    }
    assert "pickup store" in " ".join(world.history(order_id)[2].detail["reasons"])


# --- Crashes: a step that dies between its side effect and its write ---------------------------


def test_a_crash_between_reserving_and_recording_reserves_each_unit_exactly_once(world, monkeypatch):
    # All ten west units: the retry sees none available there unless it counts its own.
    order_id = world.place(("TSHIRT", 10))
    world.workflow.authorize_payment(order_id, attempt=0)
    crash_once(world, monkeypatch)

    with pytest.raises(RuntimeError):
        world.workflow.reserve_stock(order_id)
    assert world.order(order_id).allocations == []
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 10}

    world.workflow.reserve_stock(order_id)

    order = world.order(order_id)
    assert [(a.line_id, a.location_id, a.quantity) for a in order.allocations] == [("L1", "wh-west", 10)]
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 10}
    assert world.reserved()[("TSHIRT", "wh-west")] == 10
    assert world.reserved()[("TSHIRT", "wh-east")] == 0
    assert [h.type for h in world.history(order_id)].count("stock_reserved") == 1


def test_a_reservation_made_after_a_cancel_by_a_run_that_died_is_given_back_by_the_retry(world, monkeypatch):
    # The cancel landed between the step's read and its reservation (it released nothing: nothing
    # was held yet), and the step died before its write: the retry is the last to know of the units.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    real_reserve = world.inventory.reserve

    def reserve(*args, **kwargs):
        monkeypatch.setattr(world.inventory, "reserve", real_reserve)
        world.actions.cancel(order_id, "changed my mind", "key_web")
        crash_once(world, monkeypatch)
        return real_reserve(*args, **kwargs)

    monkeypatch.setattr(world.inventory, "reserve", reserve)
    with pytest.raises(RuntimeError):
        world.workflow.reserve_stock(order_id)
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 2}
    monkeypatch.undo()

    with pytest.raises(OrderClosed):
        world.workflow.reserve_stock(order_id)

    assert world.order(order_id).status is S.CANCELLED
    assert world.held() == {}
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)


def test_a_crash_between_booking_and_recording_shipments_books_the_same_shipments_again(world, monkeypatch):
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    crash_once(world, monkeypatch)

    with pytest.raises(RuntimeError):
        world.workflow.create_shipments(order_id)
    booked = dict(world.labels.labels)
    assert world.order(order_id).shipments == []

    world.workflow.create_shipments(order_id)

    order = world.order(order_id)
    assert order.status is S.ALLOCATED
    assert sorted(s.id for s in order.shipments) == sorted(booked)
    assert world.labels.labels == booked  # the same labels, no stray ones


# --- A cancel that lands between a step's read and its write -----------------------------------


def test_a_cancel_during_authorization_voids_the_authorization_the_step_obtained(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2))
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", "key_web"))

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert order.status is S.CANCELLED
    assert order.payment.authorization is None
    assert world.spy.authorized != []
    assert world.spy.voided == world.spy.authorized  # what the step obtained, it gave back
    # The cancel found it already (oms_payment_find_authorization) and voided it: one void, one key.
    assert [h.type for h in world.history(order_id)] == ["created", "cancelled", "payment_voided"]
    assert world.history(order_id)[-1].actor == "key_web"


class Meanwhile:
    """A payment plugin that runs `meanwhile` (once) as the step asks the gateway to authorize,
    before the gateway acts, then hands the call on to the `test` gateway."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], object] = lambda: None

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self) -> None:
        run, self.meanwhile = self.meanwhile, lambda: None
        run()


def test_a_cancel_that_lands_before_the_gateway_authorizes_leaves_nothing_held_on_the_card():
    # The cancel looked the order's key up before the gateway had anything under it: only the
    # step, whose write then fails, knows of the authorization, and it voids it.
    asking = Meanwhile()
    world = build_world(STOCK, asking)
    order_id = world.place(("TSHIRT", 2))
    asking.meanwhile = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert (order.status, order.payment.authorization) == (S.CANCELLED, None)
    assert len(world.spy.authorized) == 1
    assert world.spy.voided == world.spy.authorized
    # An auditor reading the history sees what was done to the card: the void, under the key the
    # step asked under, and why the order never recorded what it released.
    (made,) = world.spy.authorized
    key = payment_keys.authorize(order_id, order.authorized_version)
    assert voided_unrecorded(world, order_id) == [(WORKFLOW_ACTOR, made, key)]


def test_a_cancel_repeated_while_the_step_voids_what_it_obtained_leaves_one_void_in_the_history():
    # The cancel landed before the gateway authorized, so only the step knew of the authorization;
    # the customer's cancel, sent again, found it under the step's key and noted its void after the
    # step read the history and before the step's own note landed. An auditor sees the void once.
    asking = Meanwhile()
    world, racing = build_racing_world(STOCK, OrderEvent.PAYMENT_VOIDED, asking)
    order_id = world.place(("TSHIRT", 2))
    asking.meanwhile = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")
    racing.between = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)

    assert racing.between is None
    (made,) = world.spy.authorized
    voids = [h for h in world.history(order_id) if h.type == "payment_voided"]
    assert [(v.actor, v.detail["authorization"]) for v in voids] == [("key_web", made)]
    assert world.order(order_id).status is S.CANCELLED


def voided_unrecorded(world: World, order_id: str) -> list[tuple[str, str, str | None]]:
    """(actor, authorization, key) of each `payment_voided` in the order's history for an
    authorization a write that lost its race obtained; asserts each names the void's reference."""
    voids = [h for h in world.history(order_id) if h.type == "payment_voided" and h.detail.get("reason") == LOST_RACE]
    for void in voids:
        assert void.detail["reference"] == test_payments.reference(
            test_payments.VOID, payment_keys.void(void.detail["authorization"])
        )
    return [(v.actor, v.detail["authorization"], v.detail.get("authorization_key")) for v in voids]


def cancelled_with_nothing_held(world: World, order_id: str, authorization: str | None) -> Order:
    """Asserts the order is cancelled, its `authorization` voided (the only void) and no stock
    held or reserved anywhere; the order."""
    order = world.order(order_id)
    assert order.status is S.CANCELLED
    assert order.payment.status == "voided"
    assert world.spy.voided == [authorization]
    assert world.held() == {}
    assert set(world.reserved().values()) == {0}
    return order


def test_a_cancel_during_reservation_leaves_no_stock_held(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorization = world.order(order_id).payment.authorization
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", "key_web"))

    with pytest.raises(OrderClosed):
        world.workflow.reserve_stock(order_id)

    order = cancelled_with_nothing_held(world, order_id, authorization)
    assert order.allocations == []
    assert [h.type for h in world.history(order_id)] == ["created", "payment_authorized", "cancelled", "payment_voided"]


def test_a_cancel_during_shipment_creation_ends_cancelled_with_nothing_held(world, monkeypatch):
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    authorization = world.order(order_id).payment.authorization
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", "key_web"))

    with pytest.raises(OrderClosed):
        world.workflow.create_shipments(order_id)

    order = cancelled_with_nothing_held(world, order_id, authorization)
    assert order.shipments == []
    assert [h.type for h in world.history(order_id)][-2:] == ["cancelled", "payment_voided"]


def test_a_retry_after_a_lost_race_never_records_the_authorization_it_voided(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2))
    renamed = Address.model_validate(address_body(name="Ada King"))  # same region: same total
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.edit(order_id, 1, OrderEdit(shipping_address=renamed), "key_web")
    )
    with pytest.raises(TransientError):  # the edit moved the order on: retry
        world.workflow.authorize_payment(order_id, attempt=0)
    assert len(world.spy.voided) == 1

    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorization not in world.spy.voided


def test_a_twin_authorization_that_loses_its_write_never_voids_the_one_its_twin_recorded(world, monkeypatch):
    # Two executions of one order (an Express workflow started twice by a redelivered stream
    # record) authorize under the same key, so the gateway answers both with one authorization:
    # the one that loses the write must not void what the winner recorded.
    order_id = world.place(("TSHIRT", 2))
    before_the_next_write(world, monkeypatch, lambda: world.workflow.authorize_payment(order_id, attempt=0))

    world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorization in world.spy.authorized
    assert world.spy.voided == []


def test_an_authorization_that_loses_its_write_to_a_jeopardy_mark_is_recorded_not_voided(world, monkeypatch):
    # The scan marking a slow pending order late changes its version, not its price: the
    # authorization still pays for it. Voided, the step's retry would ask again under the same key
    # and record the authorization the gateway had voided.
    order_id = world.place(("TSHIRT", 2))
    late = NOW + timedelta(hours=1)

    def mark_late():
        modify(world.orders, order_id, lambda order: order.mark_jeopardy("late", NOW, at=late, actor="jeopardy_scan"))

    before_the_next_write(world, monkeypatch, mark_late)

    world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.jeopardy is None  # leaving the late status clears the mark
    assert order.payment.authorization in world.spy.authorized
    assert world.spy.voided == []
    assert [h.type for h in world.history(order_id)] == ["created", "jeopardy", "payment_authorized"]


class AnswerLost:
    """A gateway that authorizes the first time it is asked, but whose answer never arrives (the
    plugin's HTTP call times out after the gateway approved): `made` keeps what it authorized, and
    `meanwhile` runs while the call hangs. Asked again under the same key, the gateway answers with
    that authorization, as a real one does. `failure`: what the call raises instead of its timeout
    (a plugin's own bug raising after the gateway approved)."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.made: list[str] = []
        self.meanwhile: Callable[[], object] = lambda: None
        self.failure = failure or TimeoutError("read timed out")

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount, idempotency_key, attempt):
        if self.made:
            return None  # the `test` gateway: the same key, the same authorization
        self.made.append(test_payments.oms_payment_authorize(
            method=method, token=token, amount=amount, idempotency_key=idempotency_key, attempt=attempt
        ).reference)  # fmt: skip
        self.meanwhile()
        raise self.failure


def test_an_authorization_whose_answer_was_lost_is_voided_when_the_order_is_cancelled():
    lost = AnswerLost()
    world = build_world(STOCK, lost)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)

    world.actions.cancel(order_id, "changed my mind", "key_web")

    order = world.order(order_id)
    assert order.status is S.CANCELLED
    assert order.payment.status == "pending"  # never recorded as authorized
    assert world.spy.voided == lost.made  # but what the gateway authorized is released
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.actor, entry.detail["authorization"]) == ("payment_voided", "key_web", lost.made[0])
    once = world.snapshot(order_id)
    world.workflow.cancel_after_failure(order_id, error="CancelRecorded", cause="")  # the cancel's own execution
    assert world.snapshot(order_id) == once


def test_an_authorization_whose_answer_was_lost_to_a_cancel_meanwhile_is_voided_by_the_steps_retry():
    # The cancel lands while the gateway call hangs, before the failed attempt is in the history,
    # and its gateway cannot look authorizations up (oms_payment_find_authorization).
    lost = AnswerLost()
    world = build_world(STOCK, lost, NoLookup())
    order_id = world.place(("TSHIRT", 2))
    lost.meanwhile = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert world.spy.voided == []

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=1)

    assert world.order(order_id).status is S.CANCELLED
    assert world.spy.voided == lost.made
    assert world.history(order_id)[-1].type == "payment_voided"


def test_an_authorization_whose_answer_was_lost_is_voided_when_an_edit_makes_the_order_ask_anew():
    # Parked after the gateway's outage, its address fixed before the release: the next authorization
    # is asked under the edited version's key, so the one the gateway may hold would never be used.
    lost = AnswerLost()
    world = build_world(STOCK, lost)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)

    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorization not in lost.made
    assert world.spy.voided == lost.made


def test_a_lost_authorization_the_gateway_never_saw_is_looked_up_at_cancel_not_asked_for_again():
    # The attempt timed out before it reached the gateway: nothing is held. Asked to authorize again
    # under its key, the gateway would make a hold now, which the cancel then voids: the customer
    # would see a fresh temporary hold after cancelling. The payment plugin is asked what it holds.
    world = build_world(STOCK)
    world.gateway.script("authorize", "timeout", "approve")
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).status is S.CANCELLED
    assert world.gateway.keys("authorize") == [payment_keys.authorize(order_id, 1)]  # never asked again
    assert world.spy.authorized == [] and world.spy.voided == []
    once = world.snapshot(order_id)
    world.actions.cancel(order_id, "changed my mind", "key_web")
    assert world.snapshot(order_id) == once


def test_an_edit_never_releases_the_key_its_own_version_is_authorized_under(monkeypatch):
    # The workflow's attempt under the edited version's key times out after the gateway approved,
    # and is recorded, before the edit (its Lambda slow) releases the keys it left behind: that key
    # is the order's own, still asked for. Voided, the step's retry would get the same
    # authorization back under it and record one the gateway had voided.
    lost = AnswerLost()
    world = build_world(STOCK, lost)
    order_id = world.place(("TSHIRT", 2))
    placed = world.order(order_id)
    real = world.orders.update

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        real(order, expected, entries, **conditions)
        if entries and entries[0].type == "edited":
            with pytest.raises(TransientError):
                world.workflow.authorize_payment(order_id, attempt=0)

    monkeypatch.setattr(world.orders, "update", update)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    monkeypatch.undo()
    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert (order.status, order.payment.authorization) == (S.AUTHORIZED, lost.made[0])
    assert world.spy.voided == []


def test_a_lost_authorization_the_gateway_declines_when_asked_again_was_never_made_and_is_not_voided():
    # A payment plugin that cannot look authorizations up is asked to authorize again under the key.
    world = build_world(STOCK, NoLookup())
    world.gateway.script("authorize", "timeout", "refuse")
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).status is S.CANCELLED
    assert world.spy.voided == []
    assert world.gateway.keys("authorize") == [payment_keys.authorize(order_id, 1)] * 2  # asked again, once
    once = world.snapshot(order_id)
    world.actions.cancel(order_id, "changed my mind", "key_web")
    assert world.snapshot(order_id) == once


def dies_recording_the_authorization(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AuthorizePayment Lambda dies after the gateway approved and before its write (a timeout):
    nothing in the order's history says an attempt was made."""
    real = world.orders.update

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        if entries and entries[0].type == "payment_authorized":
            raise RuntimeError("the Lambda timed out before it wrote")
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)


def test_an_authorization_whose_step_died_before_recording_it_is_voided_when_the_order_is_cancelled(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    assert [h.type for h in world.history(order_id)] == ["created"]
    made = world.spy.authorized

    world.actions.cancel(order_id, "changed my mind", "key_web")

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.CANCELLED, "pending")  # never recorded as authorized
    assert len(made) == 1 and world.spy.voided == made  # but what the gateway authorized is released
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.actor, entry.detail["authorization"], entry.detail["authorization_key"]) == (
        "payment_voided", "key_web", made[0], payment_keys.authorize(order_id, 1),
    )  # fmt: skip
    once = world.snapshot(order_id)
    world.workflow.cancel_after_failure(order_id, error="CancelRecorded", cause="")  # the cancel's own execution
    world.actions.cancel(order_id, "changed my mind", "key_web")
    assert world.snapshot(order_id) == once


def stored_before_priced_version(world: World, order_id: str) -> None:
    """The order's item as written before `priced_version` existed: an authorization of it was
    keyed by the version AuthorizePayment read."""
    stored = json.loads(world.order(order_id).stored_json())
    del stored["priced_version"]
    world.orders.orders[order_id] = Order.model_validate(stored)


def test_an_order_stored_before_priced_version_has_the_key_its_authorization_used_looked_up_at_cancel(
    world, monkeypatch
):
    order_id = world.place(("TSHIRT", 2))
    stored_before_priced_version(world, order_id)
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    made = world.spy.authorized

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).payment.status == "pending"
    assert len(made) == 1 and world.spy.voided == made
    assert world.gateway.keys("authorize") == [payment_keys.authorize(order_id, 1)]  # never asked to authorize
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.detail["authorization_key"]) == ("payment_voided", payment_keys.authorize(order_id, 1))


def test_an_order_stored_before_priced_version_and_changed_since_has_each_version_it_had_looked_up(world, monkeypatch):
    # Held and released after the attempt that died: the cancel cannot know which version the
    # attempt read, so it looks up each one the order had before it was closed, authorizing none.
    order_id = world.place(("TSHIRT", 2))
    stored_before_priced_version(world, order_id)
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    made = world.spy.authorized
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order_id, HoldRequest(reason="fraud_review"), "key_ops")
    holds.release(order_id, ReleaseRequest(), "key_ops")

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.spy.voided == made
    assert world.gateway.keys("authorize") == [payment_keys.authorize(order_id, 1)]
    assert world.spy.authorized == made


def test_the_next_authorization_of_an_order_stored_before_priced_version_looks_up_each_earlier_version(
    world, monkeypatch
):
    # Held and released after its attempt died: the retry is keyed by the version it reads now, so
    # what the attempt that died holds would never be used.
    order_id = world.place(("TSHIRT", 2))
    stored_before_priced_version(world, order_id)
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    (first,) = world.spy.authorized
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order_id, HoldRequest(reason="fraud_review"), "key_ops")
    released = holds.release(order_id, ReleaseRequest(), "key_ops")

    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED and order.payment.authorization != first
    assert world.spy.voided == [first]
    assert world.gateway.keys("authorize") == [
        payment_keys.authorize(order_id, 1),
        payment_keys.authorize(order_id, released.version),
    ]


def test_an_edit_of_an_order_stored_before_priced_version_looks_up_each_version_it_had(world, monkeypatch):
    # The edit keys the next authorization anew: what the attempt that died holds would never be used.
    order_id = world.place(("TSHIRT", 2))
    stored_before_priced_version(world, order_id)
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    (first,) = world.spy.authorized
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order_id, HoldRequest(reason="fraud_review"), "key_ops")
    released = holds.release(order_id, ReleaseRequest(), "key_ops")

    world.actions.edit(order_id, released.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_ops")
    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED and order.payment.authorization != first
    assert world.spy.voided == [first]
    assert world.gateway.keys("authorize") == [
        payment_keys.authorize(order_id, 1),
        payment_keys.authorize(order_id, released.version + 1),
    ]


class CancelledMeanwhile:
    """Runs `meanwhile` once, while the gateway is asked to authorize (before it answers)."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], object] = lambda: None

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self) -> None:
        meanwhile, self.meanwhile = self.meanwhile, lambda: None
        meanwhile()


def test_an_authorization_whose_step_died_after_a_cancel_meanwhile_is_voided_by_the_steps_retry(monkeypatch):
    # The cancel lands while the gateway call is on its way (it finds nothing authorized yet), then
    # the gateway approves and the Lambda dies before its write: the retry finds the order cancelled.
    meanwhile = CancelledMeanwhile()
    world = build_world(STOCK, meanwhile)
    order_id = world.place(("TSHIRT", 2))
    meanwhile.meanwhile = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    assert world.order(order_id).status is S.CANCELLED
    assert len(world.spy.authorized) == 1 and world.spy.voided == []

    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=1)

    assert world.order(order_id).payment.status == "pending"
    assert world.spy.voided == world.spy.authorized
    assert world.history(order_id)[-1].type == "payment_voided"


def cancelled_while_the_steps_retry_voids(
    world: World, racing: AnAttemptInBetween, order_id: str
) -> list[tuple[str, str]]:
    """The customer's cancel, the step's retry (finding the order cancelled, releasing what it
    obtained) landing between the cancel's history read and its note: the voids the history notes
    then, (actor, authorization) each."""

    def the_steps_retry() -> None:
        with pytest.raises(OrderClosed):
            world.workflow.authorize_payment(order_id, attempt=1)

    racing.between = the_steps_retry

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert racing.between is None
    noted = [entry for entry in world.history(order_id) if entry.type == "payment_voided"]
    return [(entry.actor, entry.detail["authorization"]) for entry in noted]


def test_a_steps_retry_voiding_what_a_cancel_is_voiding_leaves_one_void_in_the_history(monkeypatch):
    # The step died after the gateway approved; the customer's cancel found the authorization under
    # the order's key and, before its note landed, the step's retry found the order cancelled and
    # released the same authorization, noting it. An auditor sees the void once.
    world, racing = build_racing_world(STOCK, OrderEvent.PAYMENT_VOIDED)
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()

    voids = cancelled_while_the_steps_retry_voids(world, racing, order_id)

    (made,) = world.spy.authorized
    assert voids == [(WORKFLOW_ACTOR, made)]
    assert world.order(order_id).status is S.CANCELLED


@pytest.mark.parametrize("looked_up", [True, False], ids=["looked_up", "asked_again"])
def test_a_steps_retry_voiding_what_a_cancel_releases_after_a_lost_answer_leaves_one_void_in_the_history(
    looked_up: bool,
):
    # As above, the gateway's answer to the step lost (its failed attempt names the key): the
    # cancel and the step's retry both release what it holds under that key, looked up, or through a
    # payment plugin that cannot look keys up (NoLookup) each asking to authorize again under the
    # lost attempt's key and voiding what the gateway answers, the same authorization. Noted once.
    lost = AnswerLost()
    plugins = (lost,) if looked_up else (lost, NoLookup())
    world, racing = build_racing_world(STOCK, OrderEvent.PAYMENT_VOIDED, *plugins)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)

    voids = cancelled_while_the_steps_retry_voids(world, racing, order_id)

    (made,) = lost.made
    assert voids == [(WORKFLOW_ACTOR, made)]


def test_an_authorization_whose_step_died_is_voided_when_an_edit_makes_the_order_ask_anew(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    placed = world.order(order_id)
    (first,) = world.spy.authorized

    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorization != first
    assert world.spy.voided == [first]


class NoLookup:
    """Hides every answer to oms_payment_find_authorization: a payment plugin without that hook."""

    @hookimpl(wrapper=True)
    def oms_payment_find_authorization(self):
        yield
        return None


def test_without_a_lookup_hook_a_cancel_leaves_an_unrecorded_authorization_and_logs_it(monkeypatch, caplog):
    world = build_world(STOCK, NoLookup())
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()

    with caplog.at_level("WARNING", logger="core.cancellation"):
        world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).status is S.CANCELLED
    assert world.spy.voided == []  # today's behaviour: nothing to void it by
    (warning,) = [r for r in caplog.records if r.name == "core.cancellation"]
    assert (warning.levelname, warning.order_id, warning.authorization_key) == (
        "WARNING", order_id, payment_keys.authorize(order_id, 1),
    )  # fmt: skip


def test_a_retried_authorization_of_a_free_order_cancelled_meanwhile_looks_nothing_up(caplog):
    # A retry of AuthorizePayment that finds the order cancelled releases what an earlier attempt
    # under its key may hold: one that owed nothing never asked the gateway, so nothing can be there
    # (and, behind a plugin without the lookup hook, a WARNING said otherwise).
    from tests.builders import product

    world = build_world([("SAMPLE", "store-sf", 5)], NoLookup())
    world.catalog.put_product(product("SAMPLE", "0.00"))
    order_id = world.place(("SAMPLE", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    assert world.order(order_id).totals.grand_total == Money.of("0.00", "USD")  # a free pickup
    world.actions.cancel(order_id, "changed my mind", "key_web")

    with caplog.at_level("WARNING", logger="core.cancellation"), pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=1)

    assert world.order(order_id).status is S.CANCELLED
    assert [r.getMessage() for r in caplog.records if r.name == "core.cancellation"] == []


def test_a_free_order_edited_while_pending_looks_nothing_up(caplog):
    # The edit releases what an attempt under the placed version's key may hold: an order that owed
    # nothing was never asked of a gateway, so there is nothing to look up (nor a WARNING to log).
    from tests.builders import product

    world = build_world([("SAMPLE", "store-sf", 5)], NoLookup())
    world.catalog.put_product(product("SAMPLE", "0.00"))
    order_id = world.place(("SAMPLE", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    placed = world.order(order_id)
    assert placed.totals.grand_total == Money.of("0.00", "USD")  # a free pickup

    with caplog.at_level("WARNING", logger="core.cancellation"):
        world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="SAMPLE", quantity=2)]), "key_web")

    assert world.order(order_id).lines[0].quantity == 2
    assert [r.getMessage() for r in caplog.records if r.name == "core.cancellation"] == []


class LookupDown:
    """The gateway cannot answer a lookup `times` times (each a TransientError), then can."""

    def __init__(self, times: int) -> None:
        self.times = times

    @hookimpl(tryfirst=True)
    def oms_payment_find_authorization(self) -> None:
        if self.times:
            self.times -= 1
            raise TransientError("the gateway is briefly unavailable")


def test_a_lookup_the_gateway_cannot_answer_is_asked_again_by_the_cancels_execution(monkeypatch):
    world = build_world(STOCK, LookupDown(times=3))
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).status is S.CANCELLED and world.spy.voided == []
    failed = [h for h in world.history(order_id) if h.type == "payment_void_failed"]
    assert [(h.detail["kind"], h.detail["authorization_key"]) for h in failed] == [
        ("transient", payment_keys.authorize(order_id, 1))
    ] * 3
    world.workflow.cancel_after_failure(order_id, error="CancelRecorded", cause="")
    assert world.spy.voided == world.spy.authorized
    assert world.history(order_id)[-1].type == "payment_voided"
    assert not world.order(order_id).authorizations_left  # nothing for the reconciler's pass to settle again


def test_an_authorization_after_an_edit_releases_what_the_edit_could_not():
    # The first attempt's answer was lost (the gateway authorized), and the edit that keyed the next
    # authorization anew could not look the old key up. Once authorized, nothing would ask again.
    lost = AnswerLost()
    world = build_world(STOCK, lost, LookupDown(times=3))
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    assert world.spy.voided == []

    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert order.payment.authorization not in lost.made
    assert world.spy.voided == lost.made
    voided = [h for h in world.history(order_id) if h.type == "payment_voided"]
    assert [h.detail["authorization_key"] for h in voided] == [payment_keys.authorize(order_id, 1)]


class PluginRemoved:
    """Once `gone`, no payment plugin takes any method (the orders' plugin was taken out of the
    deployment), where NoLookup is a plugin that takes it and has no lookup hook."""

    gone = False

    @hookimpl(wrapper=True)
    def oms_payment_methods(self):
        methods = yield
        return [] if self.gone else methods

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self):
        result = yield
        return None if self.gone else result

    @hookimpl(wrapper=True)
    def oms_payment_void(self):
        result = yield
        return None if self.gone else result

    @hookimpl(wrapper=True)
    def oms_payment_find_authorization(self):
        result = yield
        return None if self.gone else result


def test_a_key_an_edit_could_not_look_up_for_a_removed_plugin_is_asked_again_once_it_is_back(monkeypatch):
    # Not a plugin without the lookup hook (warned, never asked again): nobody could say, so the
    # key is named in the history and the next authorization, the plugin back, releases it.
    removed = PluginRemoved()
    world = build_world(STOCK, removed)
    order_id = world.place(("TSHIRT", 2))
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    monkeypatch.undo()
    (first,) = world.spy.authorized
    removed.gone = True
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    failed = [h for h in world.history(order_id) if h.type == "payment_void_failed"]
    assert [(h.detail["kind"], h.detail["authorization_key"]) for h in failed] == [
        ("no_plugin", payment_keys.authorize(order_id, 1))
    ]

    removed.gone = False
    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED and order.payment.authorization != first
    assert world.spy.voided == [first]


def declined_after_an_edit_left_an_earlier_authorization() -> tuple[World, str, AnswerLost]:
    """An order whose first attempt's answer was lost (the gateway authorized), edited while
    pending (its next authorization keyed anew), neither the edit nor the next attempt able to look
    the old key up, and the edited total declined: the world, the order's id, and what the
    gateway made. Nothing else will ever settle the payment_failed order."""
    lost = AnswerLost()
    world = build_world(STOCK, lost, LookupDown(times=6))
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_ops")  # fmt: skip
    assert world.spy.voided == []
    world.gateway.script("authorize", "refuse")
    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=1)
    return world, order_id, lost


def test_a_declined_authorization_releases_what_an_earlier_key_left_at_the_gateway():
    world, order_id, lost = declined_after_an_edit_left_an_earlier_authorization()

    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause=cause("PaymentDeclined", "declined"))

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.PAYMENT_FAILED, "declined")
    assert world.spy.voided == lost.made
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.actor, entry.detail["authorization_key"]) == (
        "payment_voided", "workflow", payment_keys.authorize(order_id, 1),
    )  # fmt: skip
    once = world.snapshot(order_id)
    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause=cause("PaymentDeclined", "declined"))
    assert world.snapshot(order_id) == once


def test_a_declined_order_whose_earlier_authorization_the_gateway_refuses_to_void_still_ends_payment_failed():
    # The refusal is in the history for an operator, as any refused void is: FailPayment ends the
    # execution `payment_failed` rather than failing it into CompensationFailed.
    world, order_id, _ = declined_after_an_edit_left_an_earlier_authorization()
    world.gateway.script("void", "refuse")

    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause=cause("PaymentDeclined", "declined"))

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.PAYMENT_FAILED, "declined")
    assert world.spy.voided == []
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.actor, entry.detail["kind"], entry.detail["authorization_key"]) == (
        "payment_void_failed", "workflow", "refused", payment_keys.authorize(order_id, 1),
    )  # fmt: skip


def test_an_order_cancelled_before_any_authorization_was_asked_for_asks_for_none():
    world = build_world(STOCK)
    order_id = world.place(("TSHIRT", 2))

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.gateway.keys("authorize") == []
    assert world.spy.voided == []


# --- A step whose plugin kept failing until the execution ran out of time ------------------------


class CarrierApiChanged:
    """A carrier plugin whose every booking fails (its carrier changed its API)."""

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self):
        raise RuntimeError("unexpected field 'labelUrl'")


def a_reserved_order_its_carrier_fails_to_book(clock) -> tuple[World, str]:
    world = build_world(STOCK, CarrierApiChanged(), clock=clock)
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    return world, order_id


def test_an_order_whose_carrier_plugin_kept_failing_until_the_workflow_ran_out_of_time_is_parked_naming_it(clock):
    """The plugin guide names the plugin in the note of the hold that parks an order. A step whose
    plugin keeps failing is retried until the execution's time budget runs out, and the attempt asked
    then refuses at once (WorkflowOutOfTime) without calling the plugin: its note named only the
    budget. It names the plugin and hook of the step's last plugin failure in this execution."""
    world, order_id = a_reserved_order_its_carrier_fails_to_book(clock)
    started = clock()
    for _ in range(3):  # Step Functions' retries, each failing the same way
        clock.advance(seconds=20)
        with pytest.raises(PluginError) as failed:
            world.workflow.create_shipments(order_id)
        world.workflow.note_plugin_failure(order_id, failed.value)
    clock.advance(seconds=45)

    refused = world.workflow.out_of_time(order_id, started, retry_for_seconds=90)
    world.workflow.park_after_failure(order_id, "WorkflowOutOfTime", refused.message)

    order = world.order(order_id)
    assert order.status is S.ON_HOLD
    assert order.hold.note.startswith(
        "order workflow failed after retries: WorkflowOutOfTime: plugin CarrierApiChanged failed in"
        " oms_carrier_create_shipment: RuntimeError; its words are in the log line `plugin raised`"
    ), order.hold.note
    assert "retried until the workflow's 90 s from its start" in order.hold.note
    parked = world.history(order_id)[-1]
    assert (
        parked.type == "on_hold"
        and "plugin CarrierApiChanged failed in oms_carrier_create_shipment" in (parked.detail["message"])
    )
    assert "unexpected field" not in order.hold.note  # the plugin's words stay in its log line


def test_an_execution_out_of_time_after_no_plugin_failure_of_its_own_keeps_the_out_of_time_note(clock):
    """A plugin failure noted before the execution started (an earlier one's, parked and released)
    did not use up this one's time: its refusal says only that the time ran out."""
    world, order_id = a_reserved_order_its_carrier_fails_to_book(clock)
    with pytest.raises(PluginError) as failed:
        world.workflow.create_shipments(order_id)
    world.workflow.note_plugin_failure(order_id, failed.value)
    clock.advance(seconds=1)
    started = clock()
    clock.advance(seconds=90)

    refused = world.workflow.out_of_time(order_id, started, retry_for_seconds=90)

    assert refused.message == (
        "the workflow's steps may be retried for 90 s from its start (2026-11-22T12:00:01Z), and that time has run out"
    ), refused.message


def test_a_payment_plugin_failure_on_an_order_stored_before_priced_version_leaves_its_authorization_key(world):
    """Such an order's authorization is keyed by its version (Order.authorized_version): a note
    written as a new version would have the retry ask the gateway under another key, a second
    authorization beside the one the failed attempt may have made. Nothing is noted on it."""
    order_id = world.place(("TSHIRT", 2))
    stored_before_priced_version(world, order_id)
    key = world.order(order_id).authorized_version
    failed = PluginError(
        "plugin acme failed in oms_payment_authorize: KeyError; its words are in the log line `plugin raised`",
        details=[{"plugin": "acme", "hook": "oms_payment_authorize"}],
    )

    world.workflow.note_plugin_failure(order_id, failed)

    assert world.order(order_id).authorized_version == key


def test_an_execution_out_of_time_that_cannot_read_its_order_still_refuses_as_out_of_time(clock, monkeypatch):
    """The refusal is what parks the order before AWS stops the execution: a read of the noted
    failure that fails (DynamoDB throttled) must not turn it into an error Step Functions retries."""
    world, order_id = a_reserved_order_its_carrier_fails_to_book(clock)
    started = clock()
    clock.advance(seconds=90)

    def throttled(*_: object, **__: object) -> None:
        raise TransientError("the Orders table is throttled")

    monkeypatch.setattr(world.orders, "get", throttled)
    refused = world.workflow.out_of_time(order_id, started, retry_for_seconds=90)

    assert refused.message.startswith("the workflow's steps may be retried for 90 s"), refused.message


def test_a_plugin_failure_is_not_noted_on_an_order_past_the_workflows_steps_nor_without_a_plugin_named(clock):
    """A cancel that landed while the step ran closes the order: no execution of it runs out of
    time on a step any more, and nothing is written to it. A PluginError naming no plugin points a
    person nowhere: nothing is kept either."""
    world, order_id = a_reserved_order_its_carrier_fails_to_book(clock)
    with pytest.raises(PluginError) as failed:
        world.workflow.create_shipments(order_id)
    world.workflow.note_plugin_failure(order_id, PluginError("oms_carrier_create_shipment returned str"))
    assert world.order(order_id).step_plugin_failure is None
    world.actions.cancel(order_id, "changed my mind", "key_web")
    cancelled = world.order(order_id)

    world.workflow.note_plugin_failure(order_id, failed.value)

    assert world.order(order_id) == cancelled


# --- Compensation -------------------------------------------------------------------------------


def test_cancel_after_failure_releases_reservations_the_order_never_recorded_and_is_idempotent(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorization = world.order(order_id).payment.authorization
    crash_once(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.reserve_stock(order_id)
    assert world.order(order_id).allocations == []
    assert sum(world.held_for(order_id).values()) == 6

    world.workflow.cancel_after_failure(order_id, error="RuntimeError", cause=cause("RuntimeError", "timed out"))

    order = world.order(order_id)
    assert order.status is S.CANCELLED
    assert order.payment.status == "voided"
    assert world.held() == {}
    assert set(world.reserved().values()) == {0}
    assert world.spy.voided == [authorization]
    entry = world.history(order_id)[-2]
    assert (entry.type, entry.actor, entry.detail["reason"]) == ("cancelled", "workflow", "workflow_error")

    once = world.snapshot(order_id)
    world.workflow.cancel_after_failure(order_id, error="RuntimeError", cause=cause("RuntimeError", "timed out"))
    assert world.snapshot(order_id) == once


def test_cancel_after_failure_leaves_a_payment_failed_order_as_it_is(world):
    order_id = world.place(("TSHIRT", 2), token="tok_decline")
    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause="declined")
    once = world.snapshot(order_id)

    world.workflow.cancel_after_failure(order_id, error="States.Timeout", cause="")

    assert world.snapshot(order_id) == once
    assert world.order(order_id).status is S.PAYMENT_FAILED


def test_the_workflows_cancel_while_a_plugin_failed_to_load_fails_its_step_and_voids_once_they_load(world, monkeypatch):
    # No hook runs while a plugin failed to load (PluginUnavailable): the void asked nobody and
    # records nothing owed, so the step fails, to be run again, rather than end with the card held.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorization = world.order(order_id).payment.authorization

    def unloaded(*args, **kwargs):
        raise PluginUnavailable("plugins failed to load: acme_tax")

    monkeypatch.setattr(world.workflow._payments, "void", unloaded)
    with pytest.raises(PluginUnavailable):
        world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")
    assert world.order(order_id).status is S.CANCELLED
    assert (world.order(order_id).payment.status, world.spy.voided) == ("authorized", [])
    monkeypatch.undo()

    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")

    assert (world.order(order_id).payment.status, world.spy.voided) == ("voided", [authorization])


def test_a_step_that_loses_its_write_to_another_step_asks_for_a_retry(world, monkeypatch):
    # Not closed, just moved on (the same step ran twice at once): the loser gives back its own
    # reservation and asks to run again, which then finds the work done.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    real = world.orders.update

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        current = world.order(order.id)
        bumped = current.model_copy(update={"version": current.version + 1})
        real(bumped, current, [])  # someone else wrote first
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)
    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)
    assert world.held() == {}
    assert world.order(order_id).allocations == []

    monkeypatch.setattr(world.orders, "update", real)
    world.workflow.reserve_stock(order_id)
    assert world.held() == {("TSHIRT", "wh-west", f"{order_id}#L1"): 2}


def test_the_same_step_run_twice_at_once_leaves_the_winners_reservations_held(world, monkeypatch):
    # Two executions of ReserveStock (Express runs at least once; the outbox and the reconciler may
    # start another): both reserve under the same order#line keys, one records them. The loser's
    # undo must not release what the order now records, or nothing holds its units and a ship
    # takes nothing off on_hand.
    order_id = world.place(("TSHIRT", 2), ("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    before_the_next_write(world, monkeypatch, lambda: world.workflow.reserve_stock(order_id))

    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)
    world.workflow.reserve_stock(order_id)  # the loser's retry: reserved already

    order = world.order(order_id)
    recorded = {
        (line.sku, a.location_id, reservation_key(order_id, a.line_id)): a.quantity
        for a in order.allocations
        for line in order.lines
        if line.line_id == a.line_id
    }
    assert sum(recorded.values()) == 3
    assert world.held_for(order_id) == recorded
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)


def test_a_concurrent_run_of_the_step_that_recorded_first_keeps_its_reservations(world, monkeypatch):
    # The west mugs go while this run plans; a concurrent run of the same step sources the mug
    # from the east, reserves and records. This run then finds its TSHIRT key reserved (by the
    # other run), cannot reserve its west mug and gives back what it holds: never the TSHIRT
    # reservation the order now records.
    world.inventory.adjust("MUG", "wh-east", 2, reason="receipt")
    order_id = world.place(("TSHIRT", 2), ("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    real = world.inventory.reserve
    raced: list[bool] = []

    def reserve(*args, **kwargs):
        if not raced:
            raced.append(True)
            world.inventory.adjust("MUG", "wh-west", -3, reason="damaged")
            world.workflow.reserve_stock(order_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(world.inventory, "reserve", reserve)
    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)

    order = world.order(order_id)
    assert sorted((a.line_id, a.location_id, a.quantity) for a in order.allocations) == [
        ("L1", "wh-west", 2), ("L2", "wh-east", 1)
    ]  # fmt: skip
    assert world.held_for(order_id) == {
        ("TSHIRT", "wh-west", reservation_key(order_id, "L1")): 2,
        ("MUG", "wh-east", reservation_key(order_id, "L2")): 1,
    }


@pytest.mark.parametrize("step", ["reserve_stock", "create_shipments"])
def test_a_step_that_reads_the_order_before_its_authorization_shows_asks_to_run_again(world, monkeypatch, step):
    # DynamoDB's GetItem is eventually consistent: milliseconds after AuthorizePayment wrote, the
    # next step may still read the order `pending`. That is never work done (the step would end
    # the execution with nothing reserved or allocated, and the order parked or stalled): retry.
    order_id = world.place(("TSHIRT", 2))
    pending = world.order(order_id)
    world.workflow.authorize_payment(order_id, attempt=0)
    real = world.orders.get
    lagging = [pending]
    monkeypatch.setattr(
        world.orders, "get", lambda oid, consistent=False: lagging.pop() if lagging and oid == order_id else real(oid)
    )

    with pytest.raises(TransientError):
        getattr(world.workflow, step)(order_id)

    world.workflow.reserve_stock(order_id)  # the retries read the order as it is
    world.workflow.create_shipments(order_id)
    assert world.order(order_id).status is S.ALLOCATED


def test_create_shipments_reading_the_order_before_its_reservations_show_asks_to_run_again(world, monkeypatch):
    # The same lag after ReserveStock's write: the order read `authorized` with nothing reserved.
    # Asking again is right; ending it out of stock would cancel a paid order whose units are held.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    world.workflow.reserve_stock(order_id)
    real = world.orders.get
    lagging = [authorized]
    monkeypatch.setattr(
        world.orders, "get", lambda oid, consistent=False: lagging.pop() if lagging and oid == order_id else real(oid)
    )

    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)

    world.workflow.create_shipments(order_id)
    order = world.order(order_id)
    assert order.status is S.ALLOCATED
    assert world.held_for(order_id) == {("TSHIRT", "wh-west", f"{order_id}#L1"): 2}
    assert world.spy.voided == []


def test_the_loser_of_the_race_reads_the_order_consistently_before_it_releases(world, monkeypatch):
    # GetItem is eventually consistent: just after losing its write, a plain read may show the
    # order as the step read it before, which records nothing; the undo reads consistently.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    before_the_next_write(world, monkeypatch, lambda: world.workflow.reserve_stock(order_id))
    lost_to = world.orders.update
    real_get = world.orders.get
    stale: list[Order] = []

    def update(order, expected, entries, **conditions):
        try:
            lost_to(order, expected, entries, **conditions)
        except StaleVersion:
            stale.append(expected)  # the next read still shows the version this write expected
            raise

    monkeypatch.setattr(world.orders, "update", update)
    monkeypatch.setattr(
        world.orders, "get", lambda oid, consistent=False: stale.pop() if stale and not consistent else real_get(oid)
    )

    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)

    assert world.held_for(order_id) == {("TSHIRT", "wh-west", reservation_key(order_id, "L1")): 2}


class SplitsAPlace:
    """A third-party sourcing plugin that answers a line's units at one location in two parts."""

    @hookimpl(tryfirst=True)
    def oms_source_order(self, order):
        return SourcingPlan(
            allocations=[Allocation(line_id="L1", location_id="wh-west", quantity=1)] * order.lines[0].quantity
        )


def test_a_plan_that_names_one_place_twice_reserves_and_ships_every_unit_it_records():
    # Reservations are keyed by order#line at a location: two allocations of one line at one
    # location became one reservation of the last one's units, while the order recorded both, so
    # shipping took fewer units off on_hand than the shipment said left.
    world = build_world([("TSHIRT", "wh-west", 10)], SplitsAPlace())

    order = world.allocated(("TSHIRT", 3))

    assert [(a.line_id, a.location_id, a.quantity) for a in order.allocations] == [("L1", "wh-west", 3)]
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", reservation_key(order.id, "L1")): 3}
    shipped = world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    assert [(x.line_id, x.quantity) for x in shipped.shipments[0].lines] == [("L1", 3)]
    assert world.level("TSHIRT", "wh-west") == (7, 0, 7)


class Explains:
    """A sourcing plugin that takes every unit at wh-west and gives `reasons`."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons

    @hookimpl(tryfirst=True)
    def oms_source_order(self, order):
        return SourcingPlan(
            allocations=[Allocation(line_id=line.line_id, location_id="wh-west", quantity=line.quantity)
                         for line in order.lines],
            reasons=self.reasons,
        )  # fmt: skip


def reserved_reasons(world: World, order_id: str) -> list[str]:
    return next(h.detail["reasons"] for h in world.history(order_id) if h.type == "stock_reserved")


def test_reasons_within_the_bounds_are_kept_as_the_plugin_gave_them():
    reasons = ["x" * (MAX_REASON_CHARS - 1) + "."] * MAX_REASONS
    world = build_world([("TSHIRT", "wh-west", 10)], Explains(reasons))

    order = world.allocated(("TSHIRT", 1))

    assert reserved_reasons(world, order.id) == reasons


def test_a_reason_past_the_bound_is_cut_and_stays_free_of_a_lone_carriage_return():
    # Cut between the CR and the LF of a line break, it would keep a CR alone, which reasons never hold.
    long = "x" * (MAX_REASON_CHARS - 2) + "\r\n" + "y" * 10
    world = build_world([("TSHIRT", "wh-west", 10)], Explains([long, "short"]))

    order = world.allocated(("TSHIRT", 1))

    assert reserved_reasons(world, order.id) == ["x" * (MAX_REASON_CHARS - 2) + "\ufffd…", "short"]


# --- Booking a parcel again ---------------------------------------------------------------------


def test_an_edited_order_booked_again_from_the_same_location_is_booked_under_a_new_key(monkeypatch):
    carrier = RecordsBookings()
    world = build_world(STOCK, carrier)
    order_id = world.place(("TSHIRT", 2))
    first = world.run(order_id)
    (before,) = first.shipments

    world.actions.edit(order_id, first.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                       actor="key_web")  # fmt: skip
    edited = world.order(order_id)
    assert Order.model_validate_json(edited.stored_json()) == edited  # the repository keeps what keys it
    world.workflow.reserve_stock(order_id)
    crash_once(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.create_shipments(order_id)
    world.workflow.create_shipments(order_id)  # the step run again

    (shipment,) = world.order(order_id).shipments
    # The same location, a parcel of its own (Order.parcel_id): the same on the step's retry.
    assert shipment.location_id == before.location_id and shipment.id != before.id
    booked, rebooked, retried = carrier.asked
    assert booked == (before.id, before.id, [("L1", 2)], 400)  # a first booking's key is its shipment id
    assert rebooked[0] == shipment.id and rebooked[1] not in (before.id, shipment.id)
    assert rebooked[2:] == ([("L2", 3)], 600)  # the parcel as it is now (the edited line's new id)
    assert retried == rebooked  # a retried step asks under the same key
    # The new booking's label is the one the order keeps; the first one is not served.
    assert shipment.label_url == f"labels/{order_id}/{rebooked[1]}" != before.label_url
    assert world.labels.labels[rebooked[1]] != world.labels.labels[before.id]


def test_a_parcel_booked_again_after_another_location_rejects_is_booked_under_a_new_key():
    carrier = RecordsBookings()
    world = build_world(STOCK, carrier)
    world.catalog.put_location(location("wh-north", name="North warehouse"))
    world.inventory.set_on_hand("TSHIRT", "wh-north", 10, reason="count")
    first = world.allocated(("TSHIRT", 12))  # more than any one warehouse holds
    rejected = world.shipment_at(first, "wh-west")
    kept = next(s for s in first.shipments if s.id != rejected)

    world.actions.reject(first.id, rejected, "damaged stock", actor="key_wms")
    world.workflow.reserve_stock(first.id)
    world.workflow.create_shipments(first.id)

    # The same location ships again, more of the order, in a parcel of its own (Order.parcel_id).
    replaced = world.order(first.id)
    again = replaced.shipment(world.shipment_at(replaced, kept.location_id))
    assert again.lines != kept.lines and again.id != kept.id
    (key,) = {asked[1] for asked in carrier.asked if asked[0] == again.id}
    assert again.label_url == f"labels/{first.id}/{key}"


def test_an_order_placed_just_after_a_restock_is_not_cancelled_out_of_stock_on_a_lagging_read(world, monkeypatch):
    # Out of stock cancels the order and voids its authorization, and it is not retried: it is
    # decided on stock levels as written, never on a plain read (BatchGetItem is eventually
    # consistent) that may not show the restock the order was placed against yet.
    before = {lvl.location_id: lvl for lvl in world.inventory.levels({"MUG"}, ["wh-west"])["MUG"]}
    world.inventory.set_on_hand("MUG", "wh-west", 6, reason="restock")
    order_id = world.place(("MUG", 5))
    world.workflow.authorize_payment(order_id, attempt=0)
    real = world.inventory.levels

    def lagging(skus, location_ids=None, *, consistent=False):
        levels = real(skus, location_ids)
        if consistent:
            return levels
        return {sku: [before.get(lvl.location_id, lvl) if sku == "MUG" else lvl for lvl in found]
                for sku, found in levels.items()}  # fmt: skip

    monkeypatch.setattr(world.inventory, "levels", lagging)
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)

    monkeypatch.undo()
    assert world.order(order_id).status is OrderStatus.ALLOCATED
    assert world.held_for(order_id) == {("MUG", "wh-west", f"{order_id}#L1"): 5}
    assert world.spy.voided == []


def test_stock_levels_asked_for_consistently_are_read_consistently_from_dynamodb():
    from functions.adapters.dynamodb import DynamoInventory

    class Recording:
        def __init__(self) -> None:
            self.pages: list[dict] = []

        def batch_get_item(self, RequestItems):
            self.pages.extend(RequestItems.values())
            return {"Responses": {}}

    client = Recording()
    DynamoInventory(client, "inventory").levels({"MUG"}, ["wh-west"])
    DynamoInventory(client, "inventory").levels({"MUG"}, ["wh-west"], consistent=True)

    assert [page.get("ConsistentRead", False) for page in client.pages] == [False, True]
