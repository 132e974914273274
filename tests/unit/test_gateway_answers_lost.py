"""A gateway that did what it was asked and whose answer was lost on the way back (the plugin's
HTTP call timed out after the charge, the void or the refund went through): every retry is asked
under the same idempotency key, which the gateway answers with what it did, so the money moves
once and the order records it once; with every answer lost the order records nothing as moved and
keeps what stands for the next request (or a cancel) to settle under that key.

tests/unit/test_payment_truth.py's `timeout` is a gateway that did nothing; here it acted first
(tests.fakes.AnswersLost wraps PaymentSpy, which sees what the `test` gateway did)."""

from __future__ import annotations

import pytest

from core import payment_keys
from core.errors import PaymentGatewayUnavailable, TransientError
from core.money import Money
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from tests.fakes import AnswersLost
from tests.unit.world import Clock, World, build_world

S, P = OrderStatus, PaymentStatus

STOCK = [("TSHIRT", "wh-west", 10), ("CAP", "wh-east", 4)]


@pytest.fixture
def lost() -> AnswersLost:
    return AnswersLost()


@pytest.fixture
def world(clock: Clock, lost: AnswersLost) -> World:
    return build_world(STOCK, lost, clock=clock)


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


def test_a_capture_whose_answer_was_lost_is_asked_again_under_its_key_and_captured_once(world, lost):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    lost.lose("capture")

    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    total = order.totals.grand_total
    assert (shipped.status, shipped.payment.status, shipped.payment.captured) == (S.SHIPPED, P.CAPTURED, total)
    key = payment_keys.capture(order.id, shipment.id)
    assert world.gateway.keys("capture") == [key, key]
    assert [(amount, k) for _, amount, k in world.spy.captured] == [(total, key)]  # the gateway moved it once
    assert [h.detail["kind"] for h in world.history(order.id) if h.type == "payment_capture_failed"] == ["transient"]


def ship_with_every_capture_answer_lost(world, lost):
    """An allocated order of 2 TSHIRT whose ship the gateway captured, every answer of it lost
    (503 to the ship): the order, its shipment and the total the gateway took."""
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    lost.lose("capture", times=3)
    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    return order, shipment, order.totals.grand_total


def test_a_ship_whose_capture_answers_were_all_lost_records_nothing_and_its_repeat_records_that_capture(world, lost):
    order, shipment, total = ship_with_every_capture_answer_lost(world, lost)

    # The gateway took the money; the order says nothing moved and keeps the request that may have.
    assert [amount for _, amount, _ in world.spy.captured] == [total]
    waiting = world.order(order.id)
    assert (waiting.status, waiting.payment.captured, waiting.shipment(shipment.id).status) == (
        S.ALLOCATED, usd("0.00"), ShipmentStatus.PENDING,
    )  # fmt: skip
    assert [(r.shipment_id, r.amount) for r in waiting.captures_requested] == [(shipment.id, total)]
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)

    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert (shipped.status, shipped.payment.captured, shipped.captures_requested) == (S.SHIPPED, total, [])
    assert set(world.gateway.keys("capture")) == {payment_keys.capture(order.id, shipment.id)}
    assert [amount for _, amount, _ in world.spy.captured] == [total]  # answered again, not captured again
    assert world.spy.refunded == []
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_cancel_after_every_capture_answer_was_lost_gives_that_capture_back_once_then_voids(world, lost):
    order, shipment, total = ship_with_every_capture_answer_lost(world, lost)

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.VOIDED)
    assert (cancelled.payment.captured, cancelled.payment.refunded, cancelled.captures_requested) == (
        usd("0.00"), usd("0.00"), [],
    )  # fmt: skip
    assert [amount for _, amount, _ in world.spy.captured] == [total]
    assert [(amount, key) for _, amount, key in world.spy.refunded] == [
        (total, payment_keys.capture_reversal(order.id, shipment.id))
    ]
    assert world.spy.voided == [order.payment.authorization]


def test_an_appeasement_whose_answer_was_lost_is_refunded_once(world, lost):
    order = world.allocated(("TSHIRT", 2))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    lost.lose("refund")

    refund = world.refunds.issue_refund(order.id, usd("5.00"), "late delivery", "api:k:1", actor="key_cs")

    assert (refund.status, refund.amount) == ("succeeded", usd("5.00"))
    assert world.order(order.id).payment.refunded == usd("5.00")
    assert [amount for _, amount, _ in world.spy.refunded] == [usd("5.00")]
    assert len(set(world.gateway.keys("refund"))) == 1 and len(world.gateway.keys("refund")) == 2


def test_an_appeasement_whose_every_answer_was_lost_stays_pending_and_its_retry_refunds_nothing_twice(world, lost):
    order = world.allocated(("TSHIRT", 2))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    lost.lose("refund", times=3)

    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order.id, usd("5.00"), "late delivery", "api:k:1", actor="key_cs")

    pending = world.order(order.id).payment
    assert ([r.status for r in pending.refunds], pending.refunded) == (["pending"], usd("0.00"))
    assert [amount for _, amount, _ in world.spy.refunded] == [usd("5.00")]  # the gateway gave it back
    # What it holds is not refundable again meanwhile: all but it is.
    left = pending.captured - usd("5.00")
    assert world.refunds.issue_refund(order.id, left, "the rest", "api:k:2", actor="key_cs").status == "succeeded"

    again = world.refunds.issue_refund(order.id, usd("5.00"), "late delivery", "api:k:1", actor="key_cs")

    assert again.status == "succeeded"
    paid = world.order(order.id).payment
    assert (paid.refunded, paid.status) == (paid.captured, P.REFUNDED)
    assert sorted(amount.amount for _, amount, _ in world.spy.refunded) == sorted([usd("5.00").amount, left.amount])


def test_a_void_whose_answers_were_all_lost_leaves_the_payment_authorized_and_a_second_cancel_records_it(world, lost):
    order = world.allocated(("TSHIRT", 2))
    lost.lose("void", times=3)

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    # The gateway released it; the order, told nothing, still says authorized and names the failures.
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert world.spy.voided == [order.payment.authorization]
    assert [h.detail["kind"] for h in world.history(order.id) if h.type == "payment_void_failed"] == ["transient"] * 3

    again = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert again.payment.status is P.VOIDED
    assert set(world.gateway.keys("void")) == {payment_keys.void(order.payment.authorization)}
    assert world.spy.voided == [order.payment.authorization]


def test_an_authorization_whose_answer_was_lost_is_the_one_the_workflows_retry_records(world, lost):
    order_id = world.place(("TSHIRT", 2))
    lost.lose("authorize")

    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.authorize_payment(order_id, attempt=1)

    authorized = world.order(order_id)
    assert authorized.status is S.AUTHORIZED
    key = payment_keys.authorize(order_id, authorized.authorized_version)
    assert world.gateway.keys("authorize") == [key, key]
    # Both attempts approved the one authorization the gateway holds under the key: the order records it.
    assert world.spy.authorized == [authorized.payment.authorization] * 2
    assert authorized.payment.authorized == authorized.totals.grand_total


@pytest.mark.parametrize("then", ["ship", "cancel"])
def test_a_renewal_whose_answers_were_all_lost_is_the_one_the_next_ship_or_cancel_records(world, lost, clock, then):
    order = world.allocated(("TSHIRT", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    clock.advance(days=8)  # the authorization grown old: the next capture renews it first
    lost.lose("authorize", times=3)

    with pytest.raises(PaymentGatewayUnavailable):
        world.actions.ship(order.id, east, None, actor="key_wh")

    # The gateway authorized the renewal; the order, told nothing, still holds the first one.
    renewal = payment_keys.renewal(order.id, order.payment.authorization)
    first, renewed = world.spy.authorized[0], world.spy.authorized[-1]
    assert world.order(order.id).payment.authorization == first != renewed
    assert world.spy.captured[-1][0] == first  # only the west parcel's capture so far

    if then == "ship":
        done = world.actions.ship(order.id, east, None, actor="key_wh")
    else:
        done = world.actions.cancel(order.id, "the rest", actor="key_web")

    assert world.gateway.keys("authorize")[1:] == [renewal] * 4  # three lost, then answered: the same renewal
    assert done.payment.authorization == renewed
    assert done.status is S.SHIPPED and done.payment.captured == done.totals.grand_total
    assert world.spy.voided[0] == first  # what the first held is released once replaced
    if then == "cancel":
        assert world.spy.voided == [first, renewed]  # nothing left to ship: the renewal's rest released
