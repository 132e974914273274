"""An authorization the gateway may have let lapse is authorized again before a ship or collect
captures on it (core.fulfillment.OrderActions._renew_authorization), on the in-memory world."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest

from core import hookimpl, payment_keys
from core.errors import InvalidTransition, PaymentGatewayUnavailable, PaymentRefused
from core.models import CaptureRequest, LineInput, Order, OrderEdit
from core.money import Money
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from core.workflow_types import PaymentResult
from plugins.test_payments import AUTHORIZATION, reference
from tests.builders import location
from tests.unit.test_money_invariants import PerUnitShipping
from tests.unit.test_workflow import NoLookup, voided_unrecorded
from tests.unit.world import Clock, Died, World, before_the_next_write, build_world, dies_before_recording

STOCK = [("TSHIRT", "wh-east", 10), ("MUG", "wh-west", 3), ("CAP", "wh-east", 4)]


def test_a_ship_a_week_after_the_authorization_authorizes_again_voids_the_old_one_and_captures_on_the_new(world, clock):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    old = order.payment.authorization
    clock.days_later(8)  # backordered, held, or simply slow: past the gateway's 7 days

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    key = payment_keys.renewal(order.id, old)
    new = reference(AUTHORIZATION, key)
    assert world.spy.authorized[-1] == new
    assert world.spy.voided == [old]
    assert world.spy.captured == [(new, order.payment.authorized, f"{order.id}:{shipment.id}:capture:0:{new}")]
    assert shipped.status is OrderStatus.SHIPPED
    assert shipped.payment.status is PaymentStatus.CAPTURED
    assert (shipped.payment.authorization, shipped.payment.authorized) == (new, order.payment.authorized)
    # Everything captured on the new one: when it was made is dropped with the capture.
    assert (shipped.authorized_at, shipped.renewing_authorization, shipped.replaced_authorizations) == (
        None, None, []
    )  # fmt: skip
    renewed = next(e for e in world.history(order.id) if e.detail.get("replaces") == old)
    assert (renewed.type, renewed.detail["reference"]) == ("payment_authorized", new)
    voided = next(e for e in world.history(order.id) if e.type == "payment_voided")
    assert voided.detail["authorization"] == old


def test_a_ship_within_the_week_captures_on_the_authorization_it_has(world, clock):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(6.9)

    world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    assert world.spy.authorized == [order.payment.authorization]
    assert world.spy.voided == []
    assert world.spy.captured[0][0] == order.payment.authorization


def test_a_renewal_the_gateway_declines_is_refused_as_a_capture_is_and_changes_nothing_but_the_history(world, clock):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse")

    with pytest.raises(PaymentRefused) as refused:
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    assert refused.value.code == "payment_gateway_error"  # 502, as a refused capture
    after = world.order(order.id)
    assert after.shipment(shipment.id).status is ShipmentStatus.PENDING
    assert after.payment == order.payment
    assert (after.renewing_authorization, after.captures_requested) == (None, [])
    assert world.spy.captured == [] and world.spy.voided == []
    failed = world.history(order.id)[-1]
    assert (failed.type, failed.detail["kind"]) == ("payment_authorization_failed", "refused")


def test_a_ship_that_died_before_recording_the_renewal_records_the_same_one_when_repeated(world, clock, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    assert world.order(order.id).renewing_authorization == order.payment.authorization

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert world.gateway.keys("authorize")[-2:] == [key, key]
    assert shipped.payment.authorization == reference(AUTHORIZATION, key)
    assert world.spy.captured[0][0] == shipped.payment.authorization
    assert world.spy.voided == [order.payment.authorization]


def test_a_cancel_after_a_ship_died_mid_renewal_voids_what_the_gateway_authorized_under_it(world, clock, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    made = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert sorted(world.spy.voided) == sorted([made, order.payment.authorization])
    assert cancelled.payment.status is PaymentStatus.VOIDED
    assert cancelled.renewing_authorization is None


def test_a_partly_shipped_order_renews_only_what_is_left_to_capture(world, clock):
    order = world.allocated(("MUG", 1), ("CAP", 3))  # west: L1, east: L2
    west, east = (next(s.id for s in order.shipments if s.location_id == loc) for loc in ("wh-west", "wh-east"))
    first = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    clock.days_later(10)

    done = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    left = order.payment.authorized - first.payment.captured
    renewed = next(e for e in world.history(order.id) if e.detail.get("replaces"))
    assert renewed.detail["amount"] == left.model_dump(mode="json")
    assert world.spy.captured[-1][0] == done.payment.authorization != order.payment.authorization
    assert done.payment.captured == order.payment.authorized
    assert done.payment.status is PaymentStatus.CAPTURED


def test_an_order_stored_before_authorized_at_counts_from_when_it_was_placed(world, clock):
    order = world.allocated(("TSHIRT", 2))
    legacy = order.model_copy(update={"authorized_at": None})
    assert not legacy.authorization_lapsed(timedelta(days=7), order.created_at + timedelta(days=6))
    assert legacy.authorization_lapsed(timedelta(days=7), order.created_at + timedelta(days=7))


def test_a_pickup_collected_after_the_authorization_grew_old_is_captured_on_a_new_one(world, clock):
    world.inventory.set_on_hand("TSHIRT", "store-sf", 2, reason="count")
    order = world.allocated(("TSHIRT", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    (shipment,) = order.shipments
    clock.days_later(3)
    world.actions.ready(order.id, shipment.id, actor="key_store")
    clock.days_later(6)  # within the pickup's 7 days, past the authorization's

    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    key = payment_keys.capture(order.id, shipment.id, under=renewed)
    assert world.spy.captured == [(renewed, order.payment.authorized, key)]
    assert world.spy.voided == [order.payment.authorization]
    assert collected.shipment(shipment.id).status is ShipmentStatus.DELIVERED


def test_a_settlement_capture_a_week_later_is_made_on_a_renewed_authorization(world, clock):
    # The shipping was the east parcel's share: cancelled with it a week later, it is captured
    # after all, on an authorization that is not a week old.
    order = world.allocated(("MUG", 2), ("CAP", 3))
    west = next(s.id for s in order.shipments if s.location_id == "wh-west")
    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    clock.days_later(8)

    settled = world.actions.cancel(order.id, "rest", actor="key_web")

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    authorization, _, key = world.spy.captured[-1]
    assert (authorization, key) == (
        renewed,
        payment_keys.settlement_capture(order.id, str(shipped.payment.captured.amount), under=renewed),
    )
    assert settled.payment.authorization == renewed
    assert settled.payment.captured == settled.totals.grand_total
    assert order.payment.authorization in world.spy.voided


def test_a_renewal_the_gateway_cannot_make_now_answers_503_and_the_ship_repeated_records_it(world, clock):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "transient", "transient", "transient", "approve")

    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    waiting = world.order(order.id)
    assert waiting.renewing_authorization == order.payment.authorization
    assert (waiting.payment, waiting.shipment(shipment.id).status) == (order.payment, ShipmentStatus.PENDING)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert world.gateway.keys("authorize")[-4:] == [key] * 4
    assert shipped.payment.authorization == reference(AUTHORIZATION, key)
    assert shipped.status is OrderStatus.SHIPPED and shipped.renewing_authorization is None


def test_a_renewal_an_edit_overtakes_is_voided_and_the_edits_authorization_kept(world, clock, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)

    def edit() -> None:
        current = world.order(order.id)
        world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_cs")

    before_the_next_write(world, monkeypatch, edit, skip=1)  # after the renewal is requested
    # The edit sent the order back to be sourced: its shipment went, and the ship says so (409).
    with pytest.raises(InvalidTransition, match="was withdrawn"):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    after = world.order(order.id)
    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert after.payment.authorization not in (renewal, order.payment.authorization)
    assert after.renewing_authorization is None and after.replaced_authorizations == []
    assert sorted(world.spy.voided) == sorted([renewal, order.payment.authorization])
    assert world.spy.captured == []
    # The renewal's void is in the history, under its key, for an auditor: the order never recorded it.
    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert voided_unrecorded(world, order.id) == [("key_wh", renewal, key)]


class FirstAnswers:
    """A gateway that answers an authorization asked again under a key it has answered with that
    first answer, a decline included, as the hookspec asks."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self, idempotency_key: str):
        result = yield
        return self.answers.setdefault(idempotency_key, result)


def test_a_ship_after_the_gateway_declined_the_renewal_asks_under_a_new_key_and_ships(clock):
    # The customer's bank blocked the card for a day: the ship answered 502. Asked again under the
    # same key, a gateway that keeps its first answers would decline forever.
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(1)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    first, second = (payment_keys.renewal(order.id, order.payment.authorization, n) for n in (0, 1))
    assert first == payment_keys.renewal(order.id, order.payment.authorization)  # the key in use is kept
    assert world.gateway.keys("authorize")[-2:] == [first, second]
    assert shipped.status is OrderStatus.SHIPPED
    assert shipped.payment.authorization == reference(AUTHORIZATION, second)
    assert world.spy.captured[0][0] == shipped.payment.authorization


def test_a_second_decline_gets_a_third_key_and_a_lost_answer_keeps_its_key(clock):
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "refuse", "transient", "transient", "transient", "approve")
    for wait in (0, 1):  # asked again by the warehouse once its decline no longer answers it: a day
        clock.days_later(wait)
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(2)  # the second decline in a row answers for two
    with pytest.raises(PaymentGatewayUnavailable):  # the renewal stands: it may have been made
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    keys = [payment_keys.renewal(order.id, order.payment.authorization, n) for n in (0, 1, 2)]
    assert world.gateway.keys("authorize")[-6:] == [keys[0], keys[1], keys[2], keys[2], keys[2], keys[2]]
    assert shipped.payment.authorization == reference(AUTHORIZATION, keys[2])


def test_a_cancel_after_a_ship_died_mid_renewal_after_a_decline_voids_what_the_new_key_holds(clock, monkeypatch):
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(1)  # the decline no longer answers the warehouse's ship
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    made = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization, 1))
    assert sorted(world.spy.voided) == sorted([made, order.payment.authorization])
    assert cancelled.payment.status is PaymentStatus.VOIDED and cancelled.renewing_authorization is None


def test_a_ship_that_finds_the_renewal_standing_asks_under_its_key_while_its_decline_is_recorded(clock, monkeypatch):
    # Two parcels ship at once: the second finds the first's renewal standing, its decline in the
    # history but not yet written off. One renewal, one key: the second is declined with it.
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "approve")

    def the_other_parcel() -> None:
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    before_the_next_write(world, monkeypatch, the_other_parcel, skip=2)  # the request, the decline
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    monkeypatch.undo()
    clock.days_later(1)  # the decline no longer answers the west warehouse's ship
    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    first, second = (payment_keys.renewal(order.id, order.payment.authorization, n) for n in (0, 1))
    assert world.gateway.keys("authorize")[-3:] == [first, first, second]
    assert shipped.payment.authorization == reference(AUTHORIZATION, second)
    assert world.order(order.id).renewal_declined_before == 0  # cleared with the renewal


class VoidedRefusesCaptures:
    """A gateway that refuses a new capture on an authorization it has voided, as a real one does;
    `meanwhile` runs once, right before the next capture reaches it (another request while that
    capture is on its way). `done`: what it voided and captured, by authorization, in order."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.meanwhile: Callable[[], object] | None = None

    @hookimpl(wrapper=True)
    def oms_payment_void(self, authorization: str):
        result = yield
        if result is not None and result.outcome == "approved":
            self.done.append(("void", authorization))
        return result

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, authorization: str):
        action, self.meanwhile = self.meanwhile, None
        if action is not None:
            action()
        result = yield
        if result is None or result.outcome != "approved":
            return result
        if ("void", authorization) in self.done:
            return PaymentResult(outcome="declined", reference=result.reference, message="the authorization is voided")
        self.done.append(("capture", authorization))
        return result


def shipped_across_a_renewal(clock: Clock) -> tuple[World, VoidedRefusesCaptures, Order, Order]:
    """The west parcel's ship asks for its capture on the order's authorization, six and a half
    days old; while that capture is on its way, the east parcel ships a day later, renewing it.
    The world, its gateway, the order before and after."""
    gateway = VoidedRefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    clock.days_later(6.5)

    def the_east_parcel() -> None:
        clock.days_later(1)
        world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    gateway.meanwhile = the_east_parcel
    return world, gateway, order, world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")


def test_a_renewal_for_one_parcel_leaves_the_old_authorization_to_the_other_parcels_capture_in_flight(clock):
    # Before: the renewal voided the old authorization at once, so the west capture was refused
    # (502) and the parcel, handed over, stayed pending.
    _, gateway, order, shipped = shipped_across_a_renewal(clock)

    old = order.payment.authorization
    new = reference(AUTHORIZATION, payment_keys.renewal(order.id, old))
    assert shipped.payment.authorization == new
    assert gateway.done[:3] == [("capture", new), ("capture", old), ("void", old)]
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.status is PaymentStatus.CAPTURED
    assert shipped.payment.captured == order.payment.authorized
    assert shipped.replaced_authorizations == [] and shipped.captures_requested == []
    assert [e.authorization for e in shipped.earlier_captures] == [old]


def test_the_authorization_pass_leaves_the_old_authorization_to_a_dead_ships_capture_asked_under_it(clock, monkeypatch):
    # The west parcel's ship wrote its capture request and died before asking the gateway; the east
    # parcel's ship renewed the authorization since. The pass must not void the old one while that
    # capture stands: voided, the warehouse's repeat of the west ship was refused, the parcel unpaid.
    from tests.unit.test_authorization_sweep import ACTOR as RECONCILER
    from tests.unit.test_authorization_sweep import sweep

    gateway = VoidedRefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    old = order.payment.authorization
    clock.days_later(6.5)

    def died(*args, **kwargs):
        raise Died("before the gateway was asked")

    with monkeypatch.context() as patched:
        patched.setattr(world.actions._payments, "capture", died)
        with pytest.raises(Died):
            world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    clock.days_later(1)
    renewed = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    assert renewed.payment.authorization != old and renewed.replaced_authorizations == [old]
    clock.advance(minutes=16)

    sweep(world, clock).run(RECONCILER)

    assert ("void", old) not in gateway.done
    done = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    assert done.status is OrderStatus.SHIPPED and done.payment.captured == order.totals.grand_total


def test_what_a_renewal_authorized_for_a_parcel_captured_on_the_old_authorization_is_released_once_all_shipped(clock):
    # The renewal authorized what was left to capture, the west parcel's share included. Before:
    # with everything shipped and paid, the renewed authorization still held the west share on the
    # card until it lapsed.
    world, gateway, order, shipped = shipped_across_a_renewal(clock)

    new = shipped.payment.authorization
    west_share = shipped.shipment(world.shipment_at(order, "wh-west")).captured
    assert west_share is not None and gateway.done[3:] == [("void", new)]
    released = world.history(order.id)[-1]
    assert (released.type, released.detail["authorization"]) == ("payment_voided", new)
    assert released.detail["released"] == west_share.model_dump(mode="json")
    assert shipped.payment.authorized == shipped.payment.captured == order.payment.authorized


class AuthorizeCalls:
    """Records each authorization asked of the gateway: (idempotency key, amount)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Money]] = []

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self, amount: Money, idempotency_key: str):
        self.calls.append((idempotency_key, amount))
        return (yield)


def test_a_cancel_releases_a_renewal_a_dead_ship_left_through_a_plugin_that_cannot_look_keys_up(clock, monkeypatch):
    # Before: the cancel could not look the renewal's key up (no oms_payment_find_authorization),
    # logged a warning and dropped the renewal: what the gateway authorized under it stayed on the
    # customer's card until it lapsed.
    asked = AuthorizeCalls()
    world = build_world(STOCK, NoLookup(), asked, clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()

    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    key = payment_keys.renewal(order.id, order.payment.authorization)
    made = reference(AUTHORIZATION, key)
    assert [call for call in asked.calls if call[0] == key] == [(key, order.payment.authorized)] * 2
    assert sorted(world.spy.voided) == sorted([made, order.payment.authorization])
    assert cancelled.payment.status is PaymentStatus.VOIDED and cancelled.renewing_authorization is None
    assert not cancelled.authorizations_left
    voided = [e for e in world.history(order.id) if e.type == "payment_voided" and e.detail["authorization"] == made]
    assert [e.detail["authorization_key"] for e in voided] == [key]


def test_a_renewal_a_dead_ship_left_is_asked_again_for_the_amount_it_was_asked_for_after_an_edit(clock, monkeypatch):
    # An edit grew the order's total while the renewal stood: asked again under its key for the
    # edited total, a gateway that holds a key to its parameters refuses the request (it is not a
    # replay), so the renewal's hold was never found.
    asked = AuthorizeCalls()
    world = build_world(STOCK, NoLookup(), asked, clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()
    current = world.order(order.id)
    edited = world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                                "key_cs")  # fmt: skip
    assert edited.payment.authorized > order.payment.authorized

    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert [call for call in asked.calls if call[0] == key] == [(key, order.payment.authorized)] * 2
    assert reference(AUTHORIZATION, key) in world.spy.voided
    assert cancelled.renewing_authorization is None and not cancelled.authorizations_left


def test_a_delivered_order_stores_no_more_than_before_authorizations_were_renewed(world, clock):
    # Before: `authorized_at` stayed on every order once everything was captured, 39 bytes more
    # on each delivered order for a time nothing reads again (nothing is left to capture).
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    assert world.order(order.id).authorized_at == clock.now  # what the ship will ask about
    clock.days_later(2)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    delivered = world.actions.deliver(order.id, shipment.id, actor="key_wh")

    assert (shipped.authorized_at, delivered.authorized_at) == (None, None)
    assert "authorized_at" not in delivered.stored_json()
    assert Order.model_validate_json(delivered.stored_json()) == delivered
    assert not delivered.authorization_lapsed(timedelta(days=7), clock.now + timedelta(days=30))


def test_a_partly_shipped_order_keeps_when_its_authorization_was_made_until_the_last_parcel(world, clock):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (next(s.id for s in order.shipments if s.location_id == loc) for loc in ("wh-west", "wh-east"))

    first = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    last = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    assert (first.authorized_at, last.authorized_at) == (order.authorized_at, None)


def test_a_cancel_of_the_last_parcels_units_after_its_ship_died_mid_renewal_voids_what_the_gateway_renewed(
    clock, monkeypatch
):
    # The caps shipped; ten days later the mug's ship died after the gateway renewed the
    # authorization; then the customer cancelled the mug. Before: the cancel released the old
    # authorization only, and the order, shipped, never asked about the renewal again: what the
    # gateway authorized under it stayed on the customer's card until it lapsed.
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    clock.days_later(10)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    monkeypatch.undo()

    after = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert after.status is OrderStatus.SHIPPED
    assert sorted(world.spy.voided) == sorted([order.payment.authorization, renewal])
    assert world.order(order.id).renewing_authorization is None and not world.order(order.id).authorizations_left


def test_an_order_whose_last_units_were_cancelled_stores_no_authorized_at_once_its_authorization_is_released(
    world, clock
):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), tracking_number=None, actor="key_wh_east")

    after = world.actions.cancel(order.id, "customer_request", actor="key_cs")

    assert after.status is OrderStatus.SHIPPED and after.payment.authorized == after.payment.captured
    assert after.authorized_at is None and "authorized_at" not in after.stored_json()


class FirstCaptureAnswers:
    """A gateway that answers a capture asked again under a key it has answered with that first
    answer, a refusal included, as the hookspec asks."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, idempotency_key: str):
        result = yield
        return self.answers.setdefault(idempotency_key, result)


def test_a_capture_refused_on_an_authorization_that_lapsed_early_is_asked_afresh_on_its_renewal(clock):
    # The issuer let the authorization lapse after three days: the capture was refused (502). Four
    # days later the ship renews it, but asked again under the same key, a gateway that keeps its
    # first answers refused the capture on the new authorization forever.
    world = build_world(STOCK, FirstCaptureAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(3)
    world.gateway.script("capture", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(5)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    first = payment_keys.capture(order.id, shipment.id)
    assert first == f"{order.id}:{shipment.id}:capture"  # on the original authorization: the key in use
    assert world.gateway.keys("capture") == [first, payment_keys.capture(order.id, shipment.id, under=renewed)]
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.status is PaymentStatus.CAPTURED
    assert shipped.payment.authorization == renewed
    assert world.spy.captured[-1][:2] == (renewed, order.payment.authorized)


def test_a_capture_on_a_renewed_authorization_whose_answer_was_lost_is_asked_again_under_its_key(world, clock):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("capture", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    key = payment_keys.capture(order.id, shipment.id, under=shipped.payment.authorization)
    assert world.gateway.keys("capture") == [key] * 4
    assert shipped.status is OrderStatus.SHIPPED and world.spy.captured == [
        (shipped.payment.authorization, order.payment.authorized, key)
    ]


def test_a_capture_refused_before_an_edit_authorized_the_grown_total_is_asked_afresh_on_the_new_authorization(clock):
    # The capture was refused (the issuer let the authorization lapse early); the customer then
    # added a shirt, authorized anew for the grown total, and the order was sourced again from the
    # same warehouse (under another shipment id now: Order.parcel_id). Under the same key, a gateway
    # that keeps its first answers refused the capture on the edit's authorization forever.
    world = build_world(STOCK, FirstCaptureAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(3)
    world.gateway.script("capture", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    current = world.order(order.id)
    edited = world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                                "key_cs")  # fmt: skip
    assert "spent_authorizations" not in edited.stored_json()  # the refused one is replaced: nothing to renew
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    (replacement,) = world.order(order.id).shipments
    assert (replacement.location_id, replacement.id != shipment.id) == (shipment.location_id, True)

    shipped = world.actions.ship(order.id, replacement.id, tracking_number=None, actor="key_wh")

    new = edited.payment.authorization
    assert new != order.payment.authorization
    assert world.gateway.keys("capture") == [
        payment_keys.capture(order.id, shipment.id), payment_keys.capture(order.id, replacement.id, under=new)
    ]  # fmt: skip
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.captured == edited.totals.grand_total


class CapturesWithinTheAuthorization:
    """A gateway that refuses a capture for more than the authorization has left, what a capture
    took counting even once refunded, as a real one does."""

    def __init__(self) -> None:
        self.left: dict[str, Money] = {}

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self, amount: Money):
        result = yield
        if result is not None and result.outcome == "approved":
            self.left.setdefault(result.reference, amount)
        return result

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, authorization: str, amount: Money):
        result = yield
        if result is None or result.outcome != "approved":
            return result
        if amount > self.left[authorization]:
            return PaymentResult(outcome="declined", reference=result.reference, message="more than is left")
        self.left[authorization] = self.left[authorization] - amount
        return result


def test_a_parcel_whose_capture_was_given_back_is_captured_on_a_renewed_authorization(clock, monkeypatch):
    # The cancel of a unit landed while the parcel's capture was on its way: that capture was
    # refunded. The gateway does not let a refunded capture's amount be captured again, so the ship
    # repeated was refused (502) on the spent authorization, forever.
    gateway = CapturesWithinTheAuthorization()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("CAP", 4))
    (shipment,) = order.shipments
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1}),
        skip=1,
    )  # fmt: skip
    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.authorization == renewed
    assert shipped.payment.captured == shipped.totals.grand_total < order.totals.grand_total
    assert world.spy.captured[-1][:2] == (renewed, shipped.totals.grand_total)
    assert order.payment.authorization in world.spy.voided


def test_the_old_authorization_is_voided_once_the_last_capture_asked_under_it_is_recorded(clock):
    # Three parcels: the west one's capture is on its way under the order's authorization when the
    # east one's ship renews it. Before: once the west capture was recorded, nothing more would be
    # captured on the old authorization, yet it held the north parcel's share on the customer's
    # card (the renewal holds it too) until that parcel shipped, a cancel or the reconciler.
    gateway = VoidedRefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    world.inventory.set_on_hand("PEN", "wh-north", 5, reason="count")
    order = world.allocated(("MUG", 1), ("CAP", 3), ("PEN", 2))
    west, east, north = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east", "wh-north"))
    clock.days_later(6.5)

    def the_east_parcel() -> None:
        clock.days_later(1)
        world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    gateway.meanwhile = the_east_parcel
    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    old = order.payment.authorization
    assert shipped.shipment(north).status is ShipmentStatus.PENDING
    assert gateway.done[-1] == ("void", old) and shipped.replaced_authorizations == []
    voided = world.history(order.id)[-1]
    assert (voided.type, voided.detail["authorization"]) == ("payment_voided", old)

    done = world.actions.ship(order.id, north, tracking_number=None, actor="key_wh_north")

    assert done.status is OrderStatus.SHIPPED and done.payment.status is PaymentStatus.CAPTURED
    assert done.payment.captured == order.totals.grand_total
    assert [d for d in gateway.done if d[0] == "void"].count(("void", old)) == 1


def test_the_old_authorization_is_voided_by_the_next_ship_once_the_capture_asked_under_it_was_refused(clock):
    # As above, but the gateway refused the west capture on the old authorization (502): nothing
    # will be captured on it again, yet it held the north parcel's share until that parcel shipped.
    gateway = VoidedRefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    world.inventory.set_on_hand("PEN", "wh-north", 5, reason="count")
    order = world.allocated(("MUG", 1), ("CAP", 3), ("PEN", 2))
    west, east, north = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east", "wh-north"))
    clock.days_later(6.5)
    world.gateway.script("capture", "approve", "refuse", "approve")  # the east capture, then the west one

    def the_east_parcel() -> None:
        clock.days_later(1)
        world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    gateway.meanwhile = the_east_parcel
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    old = order.payment.authorization
    assert world.order(order.id).replaced_authorizations == [old]

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    assert shipped.shipment(north).status is ShipmentStatus.PENDING
    assert ("void", old) in gateway.done and shipped.replaced_authorizations == []
    assert [a for a, _, _ in world.spy.captured] == [shipped.payment.authorization] * 2


def test_a_ship_repeated_after_the_gateway_refused_the_capture_renews_the_authorization_at_once(clock):
    # The issuer let the authorization lapse after three days, long before OMS_AUTHORIZATION_VALID_DAYS.
    # Before: the ship repeated asked the same capture on the same authorization under the same
    # key, and a gateway that keeps its first answers refused it again, until the week was over.
    world = build_world(STOCK, FirstCaptureAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(3)
    world.gateway.script("capture", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(0.1)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.authorization == renewed
    assert world.spy.captured == [(renewed, order.payment.authorized, payment_keys.capture(order.id, shipment.id,
                                                                                           under=renewed))]  # fmt: skip
    assert world.spy.voided == [order.payment.authorization]
    assert "spent_authorizations" not in shipped.stored_json()  # the renewal replaced the refused one


def test_a_capture_no_payment_plugin_took_renews_nothing(world, clock):
    # Nobody asked the gateway: once the plugin is back, the capture is asked on the authorization.
    order = world.allocated(("TSHIRT", 2))
    request = CaptureRequest(shipment_id=order.shipments[0].id, amount=order.payment.authorized,
                             authorization=order.payment.authorization)  # fmt: skip
    asked = order.model_copy(update={"captures_requested": [request]})

    refused, _ = asked.record_capture_not_made(request.shipment_id, "no plugin", at=clock.now, actor="k", refused=False)
    declined, _ = asked.record_capture_not_made(request.shipment_id, "declined", at=clock.now, actor="k")

    assert not refused.authorization_lapsed(timedelta(days=7), clock.now)
    assert declined.authorization_lapsed(timedelta(days=7), clock.now)


class RefusesVoidsOf:
    """A gateway that refuses to void the authorizations in `refused` (one it let lapse already)."""

    def __init__(self) -> None:
        self.refused: set[str] = set()

    @hookimpl(tryfirst=True)
    def oms_payment_void(self, authorization: str) -> PaymentResult | None:
        if authorization in self.refused:
            return PaymentResult(outcome="declined", reference="void_refused", message="the authorization has expired")
        return None


def test_a_replaced_authorization_the_gateway_will_not_void_keeps_no_hold_on_the_last_parcels_authorization(clock):
    # The west parcel shipped a week late on a renewed authorization; the gateway refuses to void
    # the lapsed one. A cap was then cancelled, so the east parcel's capture left part of the
    # renewal unused. Before: the refused void stopped the settlement after the last parcel, and
    # what was left on the renewal stayed held on the customer's card.
    gateway = RefusesVoidsOf()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    gateway.refused.add(order.payment.authorization)
    clock.days_later(8)
    renewed = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west").payment.authorization
    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L2": 1})

    done = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    assert done.status is OrderStatus.SHIPPED and done.payment.captured == done.totals.grand_total
    assert renewed in world.spy.voided  # what the renewal held beyond the captures is released
    assert done.payment.authorized == done.payment.captured
    assert done.replaced_authorizations == [order.payment.authorization]  # for the reconciler, or a person


def test_a_ship_refused_again_and_again_keeps_only_the_authorizations_its_keys_still_name(world, clock):
    # A warehouse system that repeats a refused ship renews the authorization each time. Before:
    # the order kept every authorization that had ever replaced another, one more per repeat, in
    # its item (toward DynamoDB's 400 KB), though no capture would ever be asked under them.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse")
    for _ in range(6):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    after = world.order(order.id)
    assert len(world.spy.authorized) == 2  # the first, then one renewal: a refusal on it renews nothing
    assert after.later_authorizations == [after.payment.authorization]
    assert after.spent_authorizations == []
    world.gateway.script("capture", "approve")
    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    assert shipped.status is OrderStatus.SHIPPED
    assert world.spy.captured[-1][2] == payment_keys.capture(order.id, shipment.id, under=shipped.payment.authorization)


def test_a_ship_repeated_after_the_card_refuses_its_captures_renews_the_authorization_once(world, clock):
    # The customer's bank now refuses the card (tok_capture_decline: every capture declined). Before:
    # each repeat of the ship placed and voided one more authorization on the customer's card and
    # added four history entries to the order's item (about 800 repeats to DynamoDB's 400 KB).
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments
    entries = [len(world.history(order.id))]
    for _ in range(5):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
        entries.append(len(world.history(order.id)))

    renewed = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert world.spy.authorized == [order.payment.authorization, renewed + "_declines_capture"]
    assert world.spy.voided == [order.payment.authorization]
    # The first refusal on the renewal adds what a refused capture adds: its failed attempt, not
    # made. The same refusal repeated adds nothing (test_an_identical_refusal_repeated_...).
    assert [b - a for a, b in itertools.pairwise(entries)] == [2, 4, 0, 0, 0]
    assert [e.type for e in world.history(order.id)[-2:]] == ["payment_capture_failed", "capture_not_made"]
    key = payment_keys.capture(order.id, shipment.id, under=renewed + "_declines_capture")
    assert world.gateway.keys("capture")[-4:] == [key] * 4  # asked again on it, under its own key
    after = world.order(order.id)
    assert after.shipment(shipment.id).status is ShipmentStatus.PENDING and after.captures_requested == []
    assert after.payment.captured.amount == 0 and after.spent_authorizations == []
    assert Order.model_validate_json(after.stored_json()).refusal_renewal == after.payment.authorization

    cancelled = world.actions.cancel(order.id, "the card is refused", actor="key_cs")  # what a person does

    assert cancelled.status is OrderStatus.CANCELLED and cancelled.payment.status is PaymentStatus.VOIDED
    assert world.spy.voided == [order.payment.authorization, cancelled.payment.authorization]


def test_an_identical_refusal_repeated_is_not_recorded_again_so_a_loop_cannot_fill_the_order(world, clock):
    # A warehouse system that retries a refused ship on a loop. Before: each repeat added two
    # entries (payment_capture_failed, capture_not_made) to the order's item; about a thousand
    # filled DynamoDB's 400 KB and then every write on the order failed.
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments
    for _ in range(2):  # refused, then refused again on the renewal
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    before = world.history(order.id)

    for _ in range(50):
        with pytest.raises(PaymentRefused) as refused:
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
        assert "tok_capture_decline" in refused.value.message  # the caller is still told why, each time

    assert world.history(order.id) == before
    failed, not_made = before[-2:]
    assert (failed.type, failed.actor, failed.detail["kind"]) == ("payment_capture_failed", "key_wh", "refused")
    assert (not_made.type, not_made.detail["shipment_id"]) == ("capture_not_made", shipment.id)
    after = world.order(order.id)
    assert after.captures_requested == [] and after.shipment(shipment.id).status is ShipmentStatus.PENDING


class RefusesCaptures:
    """A gateway that refuses every capture, in the words of `message`."""

    message = "insufficient funds"

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self) -> PaymentResult:
        return PaymentResult(outcome="declined", reference="refused_capture", message=self.message)


def test_a_refusal_repeated_by_another_actor_or_in_other_words_is_recorded(clock):
    # Who asked, and what the gateway said, are what an auditor reads: a repeat that changes either
    # is recorded as any refusal is, and the same repeated after it is not.
    gateway = RefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    for _ in range(2):  # refused, then refused again on the renewal
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    entries = [len(world.history(order.id))]

    for actor, message in [("key_ops", "insufficient funds"), ("key_ops", "insufficient funds"),
                           ("key_ops", "do not honour"), ("key_wh", "do not honour")]:  # fmt: skip
        gateway.message = message
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor=actor)
        entries.append(len(world.history(order.id)))

    assert [b - a for a, b in itertools.pairwise(entries)] == [2, 0, 2, 2]
    assert [(e.actor, e.detail["message"]) for e in world.history(order.id)[-2:]] == [
        ("key_wh", "do not honour"), ("key_wh", "the payment gateway refused the capture: do not honour"),
    ]  # fmt: skip


def test_a_settlement_capture_refused_again_and_again_is_recorded_once_per_actor(clock):
    # The rest of the order was cancelled after its first parcel shipped, and per-unit shipping left
    # the total above what that parcel captured: the last ship (or a delivery) asks the gateway for
    # the difference. Before: each ship repeated and each delivery a carrier reported again added
    # the two entries of the refused capture, without bound.
    world = build_world(STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order.id, "the rest is not wanted", actor="key_cs")
    entries = [len(world.history(order.id))]
    for actor in ("key_wh",) * 4 + ("carrier",) * 3:
        if actor == "carrier":
            world.actions.deliver(order.id, west, actor=actor)
        else:
            world.actions.ship(order.id, west, tracking_number=None, actor=actor)
        entries.append(len(world.history(order.id)))

    # The ship's: the refusal (the first authorization spent), its renewal, the refusal on that.
    # The carrier's: the delivery, and the refusal it asked again, in its own name.
    assert [b - a for a, b in itertools.pairwise(entries)] == [4, 0, 0, 0, 3, 0, 0]
    assert [e.type for e in world.history(order.id)[-2:]] == ["payment_capture_failed", "capture_not_made"]
    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.captured < after.totals.grand_total  # for a person


def test_a_settlement_capture_refused_again_once_its_payment_plugin_is_back_is_recorded(clock):
    # A ship repeated on a loop is refused the settlement's capture; the payment plugin is taken
    # out (the repeat notes `no_plugin`), then put back, and the gateway refuses again. Before: the
    # refusal was matched past the `no_plugin` pair with the first and not recorded, so the history
    # ended saying no plugin took the method after the gateway had answered again. A run of the
    # same answer only is matched: the new answer is recorded, and its repeat is not.
    from tests.unit.test_payment_truth import Removed

    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order.id, "the rest is not wanted", actor="key_cs")
    for gone in (False, True, False, False):
        removed.gone = gone
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")

    failed = [(e.actor, (e.detail or {}).get("kind")) for e in world.history(order.id)
              if e.type == "payment_capture_failed"]  # fmt: skip
    assert failed[-3:] == [("key_wh", "refused"), ("key_wh", "no_plugin"), ("key_wh", "refused")]
    assert [e.type for e in world.history(order.id)[-2:]] == ["payment_capture_failed", "capture_not_made"]
    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.captured < after.totals.grand_total  # for a person


def test_an_authorization_renewed_after_a_refused_capture_is_renewed_again_once_old(world, clock):
    # The bound is per authorization: once the renewal is old enough to lapse, it is renewed as any
    # other, and a refusal on that one may be an early lapse again.
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments
    for _ in range(3):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    assert len(world.spy.authorized) == 2
    clock.days_later(8)

    for _ in range(3):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    assert len(world.spy.authorized) == 4  # grown old, then refused on the one that replaced it
    assert len(world.spy.voided) == 3


def test_a_capture_asked_under_a_renewal_keeps_its_key_while_later_renewals_replace_that_one(clock):
    # The west parcel's capture is asked under a renewal and its answer lost (503); meanwhile the
    # east parcel's capture is refused twice, each repeat renewing again. The west ship repeated
    # asks under the key it used, which names the authorization its request was made under.
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    clock.days_later(8)
    world.gateway.script("capture", "timeout")
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    under = world.order(order.id).payment.authorization
    world.gateway.script("capture", "refuse")
    for _ in range(3):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    world.gateway.script("capture", "approve")

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    key = payment_keys.capture(order.id, west, under=under)
    assert {k for k in world.gateway.keys("capture") if f":{west}:" in k} == {key}
    assert shipped.shipment(west).status is ShipmentStatus.SHIPPED
    assert under in world.spy.voided


def test_a_capture_refused_under_an_authorization_already_replaced_marks_nothing_to_renew(world, clock):
    # Only the order's current authorization is ever renewed: one a renewal replaced already, kept
    # as spent, would stay on the order for good.
    order = world.allocated(("TSHIRT", 2))
    request = CaptureRequest(shipment_id=order.shipments[0].id, amount=order.payment.authorized,
                             authorization="auth_replaced_meanwhile")  # fmt: skip
    asked = order.model_copy(update={"captures_requested": [request]})

    refused, _ = asked.record_capture_not_made(request.shipment_id, "declined", at=clock.now, actor="k")

    assert refused.spent_authorizations == [] and "spent_authorizations" not in refused.stored_json()


def test_a_replaced_authorization_the_gateway_refused_to_void_is_not_asked_again_by_every_ship(clock):
    # Before: the renewing ship asked the void twice, and every later ship once more, each adding
    # the same refusal to the history (under the same key the gateway answers the same).
    gateway = RefusesVoidsOf()
    world = build_world(STOCK, gateway, clock=clock)
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    world.inventory.set_on_hand("PEN", "wh-north", 5, reason="count")
    order = world.allocated(("MUG", 1), ("CAP", 3), ("PEN", 2))
    west, east, north = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east", "wh-north"))
    old = order.payment.authorization
    gateway.refused.add(old)
    clock.days_later(8)

    def refusals() -> int:
        return sum(1 for e in world.history(order.id) if e.type == "payment_void_failed"
                   and e.detail.get("authorization") == old)  # fmt: skip

    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    assert refusals() == 1
    world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    assert refusals() == 1

    done = world.actions.ship(order.id, north, tracking_number=None, actor="key_wh_north")

    assert done.status is OrderStatus.SHIPPED and done.payment.captured == order.totals.grand_total
    assert refusals() == 2  # the last parcel's ship asks once more; then the reconciler, a person
    assert done.replaced_authorizations == [old]


def test_the_void_of_an_authorization_a_renewal_replaced_says_why_it_was_renewed(clock):
    # Before: voided once no capture stood under it, it was "replaced by the authorization of the
    # edited total" on an order never edited; and voided at once after a refused capture, it "had
    # grown old" after three days.
    gateway = VoidedRefusesCaptures()
    world = build_world(STOCK, gateway, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    clock.days_later(6.5)

    def the_east_parcel() -> None:
        clock.days_later(1)
        world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")

    gateway.meanwhile = the_east_parcel
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    again = world.allocated(("TSHIRT", 2))
    world.gateway.script("capture", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(again.id, again.shipments[0].id, tracking_number=None, actor="key_wh")
    world.actions.ship(again.id, again.shipments[0].id, tracking_number=None, actor="key_wh")

    def why_voided(placed: Order) -> str:
        voided = [e for e in world.history(placed.id) if e.type == "payment_voided"
                  and e.detail["authorization"] == placed.payment.authorization]  # fmt: skip
        assert len(voided) == 1
        return voided[0].detail["reason"]

    renewal = "replaced by its renewal: "
    assert why_voided(order) == renewal + "the authorization was old enough for the gateway to let it lapse"
    assert why_voided(again) == renewal + "a capture on the authorization was refused, or given back"


def test_an_order_edited_back_up_while_a_renewal_for_its_smaller_total_stands_ships_for_its_new_total(
    world, clock, monkeypatch
):
    # Edited down, the order kept its larger authorization; the ship that renewed it for the one
    # shirt left died. Edited back up to three within what the old authorization held, the order was
    # not authorized again, and the renewal then recorded held one shirt's total: every capture of
    # three was refused, and every renewal asked for one again.
    order = world.allocated(("TSHIRT", 4))
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "key_cs")
    (shipment,) = world.run(order.id).shipments
    clock.days_later(8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()
    current = world.order(order.id)
    assert current.renewing_authorization == order.payment.authorization

    grown = world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]),
                               "key_cs")  # fmt: skip
    (shipment,) = world.run(order.id).shipments
    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    total = grown.totals.grand_total
    assert shipped.status is OrderStatus.SHIPPED
    assert (shipped.payment.authorized, shipped.payment.captured) == (total, total)
    assert world.spy.captured[-1][:2] == (grown.payment.authorization, total)
    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert {renewal, order.payment.authorization} <= set(world.spy.voided)


def test_a_renewal_declined_after_a_refused_capture_answers_the_repeats_and_is_recorded_once(clock):
    # The card's capture was refused, and the bank declines the authorization asked in its place as
    # well. Before: each repeat of the ship (a warehouse system retrying on a loop) asked the card
    # for one more authorization under a new key and added its decline to the order's item, without
    # bound. A renewal made for a refusal is asked once (Order.refusal_renewal); declined, the
    # decline answers the warehouse's repeats without asking the gateway (which would answer its
    # key with that decline) until the authorization is old.
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse")
    world.gateway.script("authorize", "refuse")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    entries = [len(world.history(order.id))]
    for wait in (0, 0, 1, 2, 3):  # six days on: the authorization is not old yet
        clock.days_later(wait)
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
        entries.append(len(world.history(order.id)))

    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert world.gateway.keys("authorize")[1:] == [key]  # the first repeat's, and no more
    assert [b - a for a, b in itertools.pairwise(entries)] == [1, 0, 0, 0, 0]
    declined = world.history(order.id)[-1]
    assert (declined.type, declined.detail["kind"]) == ("payment_authorization_failed", "refused")
    after = world.order(order.id)
    assert after.payment == order.payment and after.shipment(shipment.id).status is ShipmentStatus.PENDING
    assert (after.renewing_authorization, after.captures_requested) == (None, [])

    cancelled = world.actions.cancel(order.id, "the card is refused", actor="key_cs")  # what a person does

    assert cancelled.status is OrderStatus.CANCELLED and cancelled.payment.status is PaymentStatus.VOIDED


def test_a_renewal_declined_after_a_refused_capture_is_asked_afresh_once_the_authorization_is_old(clock):
    # The bound is the one a renewal made for a refusal has: once old, renewed as any other.
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse", "approve")
    world.gateway.script("authorize", "refuse", "approve")
    for _ in range(3):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    clock.days_later(8)

    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    first, second = (payment_keys.renewal(order.id, order.payment.authorization, n) for n in (0, 1))
    assert world.gateway.keys("authorize")[1:] == [first, second]  # the third ship answered by the decline
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.authorization == reference(AUTHORIZATION, second)


def test_two_parcels_refused_again_and_again_in_turn_are_recorded_once_each(world, clock):
    # Each warehouse retries its refused ship on a loop (the card's captures declined): the two
    # loops take turns. Before: a refusal was skipped only when the history ended with it, so each
    # parcel's repeat, following the other's, added its two entries again, without bound.
    order = world.allocated(("MUG", 1), ("CAP", 3), token="tok_capture_decline")
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")] * 2:  # refused, then on the renewal
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)
    before = world.history(order.id)

    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")] * 10:
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)

    assert world.history(order.id) == before
    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.captured.amount == 0


def test_a_declined_renewal_asked_by_two_parcels_in_turn_is_recorded_once_by_each(clock):
    # Both warehouses retry their refused ship on a loop, in turn: each asks the renewal the first
    # refusal made due, under its key, once, and the gateway's decline answers each one's loop.
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    world.gateway.script("capture", "refuse")
    world.gateway.script("authorize", "refuse")
    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")] * 2:
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)
    before = world.history(order.id)
    key = payment_keys.renewal(order.id, order.payment.authorization)
    assert world.gateway.keys("authorize")[1:] == [key, key]  # each warehouse's first ask

    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")] * 10:
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)

    assert world.history(order.id) == before
    assert world.gateway.keys("authorize")[1:] == [key, key]  # each one's decline answers its loop
