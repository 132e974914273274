"""Payment truth: a money operation is recorded only in the write that follows the gateway's
approval, every failed attempt is in the history, transient failures are retried with the same
idempotency key. Each operation (authorize, capture, void, refund) against a gateway that refuses,
fails transiently and then answers, keeps failing, and times out; then the races."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest

from core import hookimpl, payment_keys
from core.errors import (
    Conflict,
    InvalidTransition,
    NoPaymentPlugin,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentRefused,
    RefundExceedsCaptured,
    StaleVersion,
    TransientError,
)
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import LineInput, Order, OrderEdit
from core.money import Money
from core.refunds import refund_id_for
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from core.workflow_types import PaymentResult
from tests.unit.test_workflow import voided_unrecorded
from tests.unit.world import Died, World, a_ship_that_died, before_the_next_write, build_world, dies_before_recording

S, P = OrderStatus, PaymentStatus

STOCK = [("TSHIRT", "wh-east", 10), ("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 3), ("CAP", "wh-east", 4)]

FAILURE_TYPES = {"payment_authorization_failed", "payment_capture_failed", "payment_void_failed",
                 "payment_refund_failed"}  # fmt: skip


def usd(amount: str) -> Money:
    return Money(amount=amount, currency="USD")


def failures(world: World, order_id: str) -> list[tuple[str, str, str, int]]:
    """(type, operation, kind, attempt) of every failed gateway attempt in the order's history."""
    return [
        (h.type.value, h.detail["operation"], h.detail["kind"], h.detail["attempt"])
        for h in world.history(order_id)
        if h.type in FAILURE_TYPES
    ]


# Each scenario: the gateway's script, the failed attempts it leaves as (kind, attempt), and
# whether the operation ends done, refused by the gateway, or with the gateway still unavailable.
THREE_TRANSIENT = [("transient", 1), ("transient", 2), ("transient", 3)]
SCENARIOS = [
    pytest.param(["refuse"], [("refused", 1)], "refused", id="refuses"),
    pytest.param(["transient", "approve"], [("transient", 1)], "done", id="fails-transiently-then-answers"),
    pytest.param(["transient"], THREE_TRANSIENT, "unavailable", id="keeps-failing"),
    pytest.param(["timeout", "timeout", "approve"], THREE_TRANSIENT[:2], "done", id="times-out-then-answers"),
    pytest.param(["timeout"], THREE_TRANSIENT, "unavailable", id="keeps-timing-out"),
]


# --- Capture, at ship time ------------------------------------------------------------------------


@pytest.mark.parametrize(("script", "failed", "ends"), SCENARIOS)
def test_capture_at_ship(world, script, failed, ends):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", *script)

    if ends == "done":
        shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        assert shipped == world.order(order.id)
        assert shipped.status is S.SHIPPED
        assert shipped.payment.status is P.CAPTURED
        assert shipped.payment.captured == shipped.totals.grand_total
        assert world.spy.captured_total() == shipped.totals.grand_total.amount
        assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
        # The capture requested, then recorded: failed attempts are history, not versions.
        assert shipped.version == order.version + 2
        assert shipped.captures_requested == []
    else:
        expected = PaymentRefused if ends == "refused" else PaymentGatewayUnavailable
        with pytest.raises(expected) as raised:
            world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        assert (
            raised.value.code
            == {"refused": "payment_gateway_error", "unavailable": "payment_gateway_unavailable"}[ends]
        )
        # Nothing moved: the shipment is pending, nothing captured, the units still reserved.
        after = world.order(order.id)
        assert after.shipments == order.shipments and after.payment == order.payment
        assert after.payment.captured.amount == 0
        assert world.spy.captured == []
        assert world.level("TSHIRT", "wh-west") == (10, 2, 8)
        # A refusal says none was made; a gateway that never answered may have made it, so the
        # request stands for the next ship (or a cancel) to settle.
        standing = [(r.shipment_id, r.amount) for r in after.captures_requested]
        assert standing == ([] if ends == "refused" else [(shipment.id, order.totals.grand_total)])
    assert failures(world, order.id) == [("payment_capture_failed", "capture", kind, n) for kind, n in failed]
    entry = next(h for h in world.history(order.id) if h.type == "payment_capture_failed")
    assert (entry.actor, entry.from_status, entry.to_status, entry.detail["shipment_id"]) == (
        "key_wh", None, None, shipment.id,
    )  # fmt: skip
    assert entry.detail["message"]
    key = payment_keys.capture(order.id, shipment.id)
    assert set(world.gateway.keys("capture")) == {key}  # every retry is the same capture
    assert len(world.gateway.keys("capture")) == len(failed) + (ends == "done")


def test_a_refused_capture_names_the_refusal_and_repeating_the_ship_tries_again(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse", "approve")

    with pytest.raises(PaymentRefused) as raised:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    assert "refused the capture" in raised.value.message
    assert "scripted: capture refused" in raised.value.message

    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    # Asked again on a new authorization, under a key naming it: the refusal may be an
    # authorization the issuer let lapse, and under the same key a gateway answers the same.
    renewed = shipped.payment.authorization
    assert shipped.status is S.SHIPPED and shipped.payment.status is P.CAPTURED
    assert renewed != order.payment.authorization and world.spy.voided == [order.payment.authorization]
    assert world.gateway.keys("capture") == [
        payment_keys.capture(order.id, shipment.id), payment_keys.capture(order.id, shipment.id, under=renewed)
    ]  # fmt: skip
    assert [h.type for h in world.history(order.id)][-6:] == [
        "allocated", "payment_capture_failed", "capture_not_made", "payment_authorized", "payment_voided",
        "shipment_shipped",
    ]  # fmt: skip


def test_a_ship_repeated_after_a_refusal_renews_and_ships_while_plain_reads_lag(world, monkeypatch):
    # The renewal is recorded a moment after the ship wrote that it asks for one: a plain read may
    # not show that request yet, which must not void the new authorization as nobody's.
    from tests.unit.test_confirmations import lagging_reads

    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    lagging_reads(world, monkeypatch)

    world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    monkeypatch.undo()
    shipped = world.order(order.id)
    assert shipped.status is S.SHIPPED and shipped.payment.status is P.CAPTURED
    assert world.spy.voided == [order.payment.authorization]


def test_a_capture_declined_by_the_test_gateway_leaves_the_shipment_pending(world):
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments

    with pytest.raises(PaymentRefused) as raised:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert "tok_capture_decline" in raised.value.message
    after = world.order(order.id)
    assert (after.shipments, after.payment, after.captures_requested) == (order.shipments, order.payment, [])
    assert failures(world, order.id) == [("payment_capture_failed", "capture", "refused", 1)]


# --- Void, at cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize(("script", "failed", "ends"), SCENARIOS)
def test_void_at_cancel(world, script, failed, ends):
    order = world.allocated(("TSHIRT", 2))
    authorization = order.payment.authorization
    world.gateway.script("void", *script)

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    # The cancel happened whatever the gateway said: status, stock released.
    assert cancelled == world.order(order.id)
    assert cancelled.status is S.CANCELLED
    assert world.held() == {}
    if ends == "done":
        assert cancelled.payment.status is P.VOIDED
        assert world.spy.voided == [authorization]
        assert [h.type for h in world.history(order.id)][-2:] == ["payment_voided", "carrier_booking_cancelled"]
    else:
        assert cancelled.payment.status is P.AUTHORIZED  # honestly not released
        assert world.spy.voided == []
        assert [h.type for h in world.history(order.id)][-2:] == ["payment_void_failed", "carrier_booking_cancelled"]
    assert failures(world, order.id) == [("payment_void_failed", "void", kind, n) for kind, n in failed]
    assert set(world.gateway.keys("void")) == {payment_keys.void(authorization)}


@pytest.mark.parametrize("first", ["refuse", "transient"])
def test_cancelling_a_cancelled_order_again_retries_the_void(world, first):
    order = world.allocated(("TSHIRT", 2))
    world.gateway.script("void", first)
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert cancelled.payment.status is P.AUTHORIZED
    world.gateway.script("void", "approve")

    again = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert again == world.order(order.id)
    assert (again.status, again.payment.status) == (S.CANCELLED, P.VOIDED)
    assert again.version == cancelled.version + 1
    assert world.spy.voided == [order.payment.authorization]
    assert [h.type for h in world.history(order.id)].count("cancelled") == 1


def test_a_void_declined_by_the_test_gateway_leaves_the_payment_authorized(world):
    order = world.allocated(("TSHIRT", 2), token="tok_void_decline")

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert failures(world, order.id) == [("payment_void_failed", "void", "refused", 1)]


def test_a_refused_void_a_client_asks_again_by_cancelling_again_is_recorded_once(world):
    # The first cancel's own clean-up after its void (its parcel's booking cancelled with the
    # carrier) ended the history: the repeat's refusal, the same answer, was recorded again, counting
    # the one hold twice for VoidsNotMadeAlarm.
    order = world.allocated(("TSHIRT", 2), token="tok_void_decline")
    world.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert [h.type for h in world.history(order.id)][-2:] == ["payment_void_failed", "carrier_booking_cancelled"]

    for _ in range(2):
        again = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert (again.status, again.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert failures(world, order.id) == [("payment_void_failed", "void", "refused", 1)]


def test_the_workflow_compensation_asks_to_be_retried_while_the_void_cannot_be_done(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.gateway.script("void", "transient")

    with pytest.raises(TransientError) as raised:
        world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")

    assert type(raised.value) is TransientError  # what the CancelOrder task's Retry matches
    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert len(failures(world, order_id)) == 3

    world.gateway.script("void", "approve")
    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")  # Step Functions' retry

    assert world.order(order_id).payment.status is P.VOIDED
    assert [h.type for h in world.history(order_id)].count("cancelled") == 1


def test_a_refused_void_in_the_workflow_ends_cancelled_with_the_refusal_recorded(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.gateway.script("void", "refuse")

    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")  # no retry: a person decides

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert failures(world, order_id) == [("payment_void_failed", "void", "refused", 1)]


# --- Refund ---------------------------------------------------------------------------------------


def shipped_order(world: World, *lines: tuple[str, int], token: str = "tok_approve") -> Order:
    order = world.allocated(*(lines or (("TSHIRT", 2),)), token=token)
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    shipped = world.order(order.id)
    assert shipped.payment.status is P.CAPTURED
    return shipped


def refund(world: World, order_id: str, key: str, amount: Money, reason: str = "goodwill"):
    return world.refunds.issue_refund(order_id, amount, reason, key, actor="key_cs")


@pytest.mark.parametrize(("script", "failed", "ends"), SCENARIOS)
def test_refund(world, script, failed, ends):
    order = shipped_order(world)
    world.gateway.script("refund", *script)
    refund_id = refund_id_for(order.id, "k1")

    if ends == "unavailable":
        with pytest.raises(PaymentGatewayUnavailable):
            refund(world, order.id, "k1", usd("5.00"))
        held = world.order(order.id)
        assert [(r.id, r.status) for r in held.payment.refunds] == [(refund_id, "pending")]
        assert held.payment.refunded == usd("0.00") and held.payment.refundable() == order.payment.captured - usd(
            "5.00"
        )
        assert world.spy.refunded == []
    else:
        done = refund(world, order.id, "k1", usd("5.00"))
        stored = world.order(order.id)
        assert (done.id, done.status, done.amount, done.reason) == (
            refund_id, "succeeded" if ends == "done" else "failed", usd("5.00"), "goodwill",
        )  # fmt: skip
        entry = world.history(order.id)[-1]
        assert (entry.actor, entry.detail["refund_id"]) == ("key_cs", refund_id)
        if ends == "done":
            assert stored.payment.refunded == usd("5.00")
            assert stored.payment.status is P.PARTIALLY_REFUNDED
            assert entry.type == "payment_refunded" and entry.detail["reason"] == "goodwill"
            assert [key for _, _, key in world.spy.refunded] == [payment_keys.refund(order.id, refund_id)]
        else:
            assert stored.payment.refunded == usd("0.00") and stored.payment.status is order.payment.status
            assert stored.payment.refundable() == order.payment.captured
            assert entry.type == "refund_failed"
            assert world.spy.refunded == []
    assert failures(world, order.id) == [("payment_refund_failed", "refund", kind, n) for kind, n in failed]
    assert set(world.gateway.keys("refund")) == {payment_keys.refund(order.id, refund_id)}


def test_a_refund_left_pending_by_an_unavailable_gateway_is_finished_by_its_retry(world):
    order = shipped_order(world)
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        refund(world, order.id, "k1", usd("5.00"))

    done = refund(world, order.id, "k1", usd("5.00"))

    assert done.status == "succeeded"
    assert world.order(order.id).payment.refunded == usd("5.00")
    assert len(world.spy.refunded) == 1
    assert set(world.gateway.keys("refund")) == {payment_keys.refund(order.id, done.id)}


def test_a_refund_the_gateway_made_is_recorded_while_plain_reads_lag(world, monkeypatch):
    # The gateway answers a moment after the pending refund's write: a plain read may not show it
    # yet, which must not leave money refunded and the refund pending (nor answer 500).
    from tests.unit.test_confirmations import lagging_reads

    order = shipped_order(world)
    lagging_reads(world, monkeypatch)

    done = refund(world, order.id, "k1", usd("5.00"))

    monkeypatch.undo()
    assert done.status == "succeeded"
    assert [r.status for r in world.order(order.id).payment.refunds] == ["succeeded"]
    assert world.order(order.id).payment.refunded == usd("5.00")


def test_a_refund_is_never_more_than_captured_minus_refunded_and_the_gateway_is_not_asked(world):
    order = shipped_order(world)
    captured = order.payment.captured

    with pytest.raises(RefundExceedsCaptured) as raised:
        refund(world, order.id, "k1", captured + usd("0.01"), "too much")
    assert raised.value.code == "refund_exceeds_captured"
    second = refund(world, order.id, "k2", captured - usd("1.00"), "most of it")
    with pytest.raises(RefundExceedsCaptured):
        refund(world, order.id, "k3", usd("1.01"), "a cent too much")

    last = refund(world, order.id, "k4", usd("1.00"), "the rest")

    done = world.order(order.id)
    assert done.payment.refunded == captured
    assert done.payment.status is P.REFUNDED
    assert world.gateway.keys("refund") == [payment_keys.refund(order.id, r.id) for r in (second, last)]


def test_a_pending_refund_holds_its_amount(world):
    order = shipped_order(world)
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        refund(world, order.id, "k1", order.payment.captured - usd("1.00"))

    with pytest.raises(RefundExceedsCaptured):
        refund(world, order.id, "k2", usd("1.01"))
    assert refund(world, order.id, "k3", usd("1.00")).status == "succeeded"


def test_a_refund_refused_for_money_held_says_what_holds_it_beside_captured_and_refunded(world):
    # An agent read "30.00 is more than the 25.79 captured and not yet refunded" beside an order
    # showing 46.58 captured and 0.00 refunded: an exchange's credit held the rest, unnamed.
    order = shipped_order(world)
    captured = order.payment.captured
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        refund(world, order.id, "k1", usd("2.00"))

    with pytest.raises(RefundExceedsCaptured) as raised:
        refund(world, order.id, "k2", captured)
    left, pending = captured - usd("2.00"), "2.00 in refunds not finished yet"
    assert raised.value.message == (
        f"{captured.amount} is more than the {left.amount} left to refund:"
        f" {captured.amount} captured, 0.00 refunded, {pending}"
    )

    held = world.order(order.id).model_copy(update={"credit_holds": {"rma_1": usd("5.00")}})
    with pytest.raises(RefundExceedsCaptured) as raised:
        held.check_refund(captured)
    assert raised.value.message == (
        f"{captured.amount} is more than the {(left - usd('5.00')).amount} left to refund:"
        f" {captured.amount} captured, 0.00 refunded, {pending}, 5.00 held as exchanges' credit for their replacements"
    )
    # Nothing held: the sentence as it was.
    with pytest.raises(RefundExceedsCaptured) as raised:
        shipped_order(world).check_refund(captured + usd("0.01"))
    assert raised.value.message.endswith(f"than the {captured.amount} captured and not yet refunded")


def test_the_same_refund_twice_refunds_once(world):
    order = shipped_order(world)

    once = refund(world, order.id, "k1", usd("5.00"))
    twice = refund(world, order.id, "k1", usd("5.00"))

    assert twice == once
    assert world.order(order.id).payment.refunded == usd("5.00")
    assert len(world.spy.refunded) == 1


def test_an_appeasement_from_a_version_another_refund_overtook_before_its_write_asks_the_gateway_nothing(
    world, monkeypatch
):
    # The agent read the order; a colleague's refund lands between the appeasement's read and its
    # write. Its write judges the version again: nothing held, nothing asked of the gateway.
    order = shipped_order(world)
    before_the_next_write(world, monkeypatch, lambda: refund(world, order.id, "colleague", usd("10.00")))

    with pytest.raises(StaleVersion) as refused:
        world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs",
                                   expected_version=order.version)  # fmt: skip

    now = world.order(order.id)
    assert refused.value.details == [{"field": "If-Match", "message": f"current version is {now.version}"}]
    assert [(r.amount, r.reason) for r in now.payment.refunds] == [(usd("10.00"), "goodwill")]
    assert [amount for _, amount, _ in world.spy.refunded] == [usd("10.00")]


def test_an_appeasement_from_the_version_read_refunds_and_its_retry_answers_the_refund_it_made(world):
    order = shipped_order(world)
    with pytest.raises(StaleVersion):
        world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs",
                                   expected_version=order.version + 1)  # fmt: skip
    assert (world.order(order.id), world.spy.refunded) == (order, [])

    made = world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs",
                                      expected_version=order.version)  # fmt: skip
    again = world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs",
                                       expected_version=order.version)  # fmt: skip

    assert again == made and made.status == "succeeded"
    assert world.order(order.id).payment.refunded == usd("5.00") and len(world.spy.refunded) == 1


def test_nothing_captured_means_nothing_to_refund(world):
    order = world.allocated(("TSHIRT", 2))

    # Captured minus refunded is 0: any amount is more than it (API.md's 422 `refund_exceeds_captured`).
    with pytest.raises(RefundExceedsCaptured):
        refund(world, order.id, "k1", usd("1.00"), "early")

    assert world.gateway.keys("refund") == []
    assert world.order(order.id) == order


def test_a_refund_declined_by_the_test_gateway_is_recorded_failed_and_frees_what_it_held(world):
    order = shipped_order(world, token="tok_refund_decline")

    failed = refund(world, order.id, "k1", order.payment.captured)

    assert failed.status == "failed"
    stored = world.order(order.id)
    assert stored.payment.refunded == usd("0.00") and stored.payment.status is P.CAPTURED
    assert "tok_refund_decline" in stored.payment.refunds[0].message
    assert refund(world, order.id, "k1", order.payment.captured) == failed  # final under its key
    assert len(world.gateway.keys("refund")) == 1
    assert refund(world, order.id, "k2", order.payment.captured).status == "failed"  # a new try, a new key


# --- Authorize: the workflow's step and an edit's re-authorization ------------------------------


@pytest.mark.parametrize("failure", ["transient", "timeout"])
def test_a_failed_authorization_attempt_in_the_workflow_is_recorded_and_retried_with_the_same_key(world, failure):
    order_id = world.place(("TSHIRT", 2))
    world.gateway.script("authorize", failure, "approve")

    with pytest.raises(TransientError) as raised:
        world.workflow.authorize_payment(order_id, attempt=0)
    assert type(raised.value) is TransientError
    assert world.order(order_id).version == 1
    world.workflow.authorize_payment(order_id, attempt=1)  # Step Functions' retry

    order = world.order(order_id)
    assert order.status is S.AUTHORIZED
    assert failures(world, order_id) == [("payment_authorization_failed", "authorize", "transient", 1)]
    assert world.gateway.keys("authorize") == [payment_keys.authorize(order_id, 1)] * 2


def grow(world: World, order_id: str) -> Order:
    five = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)])
    return world.actions.edit(order_id, world.order(order_id).version, five, "key_web")


@pytest.mark.parametrize(("script", "failed", "ends"), SCENARIOS)
def test_reauthorization_at_edit(world, script, failed, ends):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    world.gateway.script("authorize", *script)

    if ends == "done":
        edited = grow(world, order_id)
        assert edited.payment.authorized == edited.totals.grand_total
        assert edited.payment.authorization != authorized.payment.authorization
        assert world.spy.voided == [authorized.payment.authorization]  # the replaced one
        assert [h.type for h in world.history(order_id)][-2:] == ["edited", "payment_voided"]
        # The authorization requested, recorded, then the replaced one's void: failed attempts are
        # history, not versions.
        assert world.order(order_id).version == authorized.version + 3
        assert edited.authorization_requested is None
    else:
        expected = Conflict if ends == "refused" else PaymentGatewayUnavailable
        with pytest.raises(expected) as raised:
            grow(world, order_id)
        if ends == "refused":
            assert raised.value.code == "payment_declined"
        # Nothing a client sees changed but the version: the request stands (a gateway that never
        # answered may have authorized), and the edit repeated with the same If-Match settles it.
        after = world.order(order_id)
        assert shown(after) == shown(authorized) and after.version == authorized.version + 1
        assert after.authorization_requested.edit_of == authorized.version
        assert world.spy.voided == []
    assert failures(world, order_id) == [("payment_authorization_failed", "authorize", kind, n) for kind, n in failed]
    assert set(world.gateway.keys("authorize")[1:]) == {payment_keys.authorize(order_id, authorized.version + 2)}


def shown(order: Order) -> dict:
    """What a client sees of `order`, but for the version and the time of its last change."""
    return order.model_dump(mode="json", exclude={"version", "updated_at"})


def test_an_edit_repeated_while_the_first_is_being_written_never_voids_the_authorization_it_recorded(
    world, monkeypatch
):
    # A client's retry of a PATCH (same If-Match, same body) reauthorizes under the same key as the
    # first, so the gateway answers both with one authorization: the one that loses the write
    # (409) must not void what the other recorded.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    first = world.order(order_id).payment.authorization
    before_the_next_write(world, monkeypatch, lambda: grow(world, order_id))

    with pytest.raises(StaleVersion):
        grow(world, order_id)

    edited = world.order(order_id)
    assert edited.payment.authorized == edited.totals.grand_total
    assert edited.payment.authorization != first
    assert edited.payment.authorization not in world.spy.voided
    assert world.spy.voided == [first]


def test_a_declined_authorization_is_not_retried(world):
    order_id = world.place(("TSHIRT", 2))
    world.gateway.script("authorize", "refuse")

    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=0)

    assert len(world.gateway.keys("authorize")) == 1


# --- Races ----------------------------------------------------------------------------------------


def test_a_capture_whose_record_loses_to_a_cancel_is_refunded_and_the_ship_refused(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    # The cancel lands while the ship waits for the gateway (after it requested the capture).
    landed = before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order.id, "too late?", "key_web"), skip=1
    )

    with pytest.raises(InvalidTransition) as raised:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert landed and isinstance(raised.value, Conflict)  # 409
    after = world.order(order.id)
    assert (after.status, after.payment.status) == (S.CANCELLED, P.VOIDED)
    assert after.shipments[0].status is ShipmentStatus.CANCELLED  # it never left, and never will
    assert after.payment.captured.amount == 0  # never recorded as captured...
    captured = world.spy.captured
    assert [amount for _, amount, _ in captured] == [order.totals.grand_total]  # ...because it was given back
    assert [(amount, key) for _, amount, key in world.spy.refunded] == [
        (order.totals.grand_total, payment_keys.refund(order.id, shipment.id))
    ]
    assert [h.type for h in world.history(order.id)][-5:] == [
        "allocated", "cancelled", "payment_capture_reversed", "payment_voided", "carrier_booking_cancelled",
    ]  # fmt: skip
    reversed_ = world.history(order.id)[-3]
    assert reversed_.detail["shipment_id"] == shipment.id
    assert reversed_.detail["capture_reference"] and reversed_.detail["refund_reference"]
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)  # released by the cancel, never shipped


def test_two_ships_of_the_same_shipment_at_once_capture_once_and_refund_nothing(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    before_the_next_write(world, monkeypatch, lambda: world.actions.ship(order.id, shipment.id, None, "key_wh"))

    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert shipped == world.order(order.id)
    assert shipped.status is S.SHIPPED
    assert len(world.spy.captured) == 1
    assert world.spy.refunded == []
    assert [h.type for h in world.history(order.id)].count("shipment_shipped") == 1
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


@pytest.mark.parametrize("first", ["wh-west", "wh-east"])
def test_two_parcels_shipped_at_once_still_capture_the_grand_total_exactly(world, monkeypatch, first):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    other = "wh-east" if first == "wh-west" else "wh-west"
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.ship(order.id, world.shipment_at(order, other), None, "key_wh")
    )

    world.actions.ship(order.id, world.shipment_at(order, first), None, actor="key_wh")

    done = world.order(order.id)
    assert done.status is S.SHIPPED
    assert done.payment.status is P.CAPTURED
    assert world.spy.captured_total() == done.totals.grand_total.amount == done.payment.captured.amount
    assert all(amount.amount > Decimal(0) for _, amount, _ in world.spy.captured)


def test_a_shipment_shipped_again_after_its_capture_was_given_back_is_captured_under_a_new_key(world, monkeypatch):
    # A hold landed while the shipment was being captured, so that capture was refunded; released,
    # the same shipment ships again. Under the same key a gateway would answer its next capture
    # with the refunded one, and no money would move.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    before_the_next_write(
        world, monkeypatch,
        lambda: Holds(world.orders).hold(order.id, HoldRequest(reason="fraud_review"), actor="key_cs"), skip=1,
    )  # fmt: skip
    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    monkeypatch.undo()
    reversed_ = world.order(order.id)
    assert Order.model_validate_json(reversed_.stored_json()).captures_reversed(shipment.id) == 1  # stored...
    assert "reversed_captures" not in reversed_.model_dump(mode="json")  # ...never shown
    Holds(world.orders).release(order.id, ReleaseRequest(), actor="key_cs")

    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    first, second = world.gateway.keys("capture")
    assert first == payment_keys.capture(order.id, shipment.id) and second != first
    assert shipped.payment.captured == shipped.totals.grand_total
    assert [amount for _, amount, _ in world.spy.captured] == [order.totals.grand_total] * 2
    assert len(world.spy.refunded) == 1


def test_idempotency_keys_keep_the_shapes_gateways_already_hold():
    assert payment_keys.authorize("ord_1", 3) == "ord_1:authorize:v3"
    assert payment_keys.capture("ord_1", "shp_1") == "ord_1:shp_1:capture"
    assert payment_keys.void("auth_0123") == "auth_0123:void"
    assert payment_keys.refund("ord_1", "ref_1") == "ord_1:refund:ref_1"


def test_a_reversal_the_gateway_refuses_is_left_in_the_history_for_an_operator(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("refund", "refuse")
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order.id, "too late?", "key_web"), skip=1)

    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    after = world.order(order.id)
    assert after.status is S.CANCELLED and after.payment.captured.amount == 0
    assert world.spy.refunded == []
    failed = world.history(order.id)[-1]
    assert (failed.type, failed.detail["kind"], failed.detail["shipment_id"]) == (
        "payment_refund_failed", "refused", shipment.id,
    )  # fmt: skip
    assert failed.detail["capture_reference"]  # what the operator refunds by hand


# --- A ship that dies after the gateway captured ----------------------------------------------------


def test_a_capture_whose_ship_died_stays_on_the_order_stored_and_never_shown(world, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)

    after = world.order(order.id)
    assert after.shipments[0].status is ShipmentStatus.PENDING and after.payment.captured.amount == 0
    assert [amount for _, amount, _ in world.spy.captured] == [order.totals.grand_total]  # the gateway's truth
    stored = Order.model_validate_json(after.stored_json())
    assert [(r.shipment_id, r.amount, r.withdrawn) for r in stored.captures_requested] == [
        (shipment_id, order.totals.grand_total, False)
    ]
    assert "captures_requested" not in after.model_dump(mode="json")
    assert world.history(order.id)[-1].type == "allocated"  # bookkeeping: the outcome will have the entry


def test_a_cancel_after_a_ship_died_refunds_the_capture_before_voiding(world, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)

    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.VOIDED)
    assert cancelled.captures_requested == [] and cancelled.payment.captured.amount == 0
    captured = [amount for _, amount, _ in world.spy.captured]
    assert captured == [order.totals.grand_total]  # asked again under its key: the same capture
    assert [(amount, key) for _, amount, key in world.spy.refunded] == [
        (order.totals.grand_total, payment_keys.capture_reversal(order.id, shipment_id))
    ]
    assert world.spy.voided == [order.payment.authorization]
    assert [h.type for h in world.history(order.id)][-5:] == [
        "allocated", "cancelled", "payment_capture_reversed", "payment_voided", "carrier_booking_cancelled",
    ]  # fmt: skip
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)


def test_a_ship_repeated_after_it_died_records_the_capture_it_made(world, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)

    shipped = world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    assert shipped.status is S.SHIPPED and shipped.payment.captured == order.totals.grand_total
    assert shipped.captures_requested == []
    assert world.gateway.keys("capture") == [payment_keys.capture(order.id, shipment_id)] * 2
    assert len(world.spy.captured) == 1 and world.spy.refunded == []


def test_an_order_whose_ship_died_cannot_be_edited_and_a_reject_refunds_the_capture_first(world, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    current = world.order(order.id)
    with pytest.raises(InvalidTransition, match="being shipped"):
        world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "k")

    rejected = world.actions.reject(order.id, shipment_id, "parcel damaged", actor="key_wh")

    assert (rejected.status, rejected.captures_requested, rejected.payment.captured.amount) == (S.AUTHORIZED, [], 0)
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]
    assert [h.type for h in world.history(order.id)][-5:] == [
        "allocated", "capture_withdrawn", "payment_capture_reversed", "shipment_rejected", "carrier_booking_cancelled",
    ]  # fmt: skip


def test_units_cancelled_after_their_ship_died_get_its_capture_refunded_first(world, monkeypatch):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    first, second = (world.shipment_at(order, location) for location in ("wh-west", "wh-east"))
    world.actions.ship(order.id, first, None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, second, None, actor="key_wh")
    monkeypatch.undo()
    share = world.order(order.id).capture_request(second).amount

    done = world.actions.cancel(order.id, "the rest", actor="key_web")

    assert done.status is S.SHIPPED and done.captures_requested == []
    assert [amount for _, amount, _ in world.spy.refunded] == [share]
    assert (
        world.spy.captured_total() - sum(a.amount for _, a, _ in world.spy.refunded)
        == (done.payment.captured - done.payment.refunded).amount
        == done.totals.grand_total.amount
    )


def test_a_capture_the_gateway_refuses_when_asked_again_was_never_made_and_the_void_goes_ahead(world, monkeypatch):
    order, _ = a_ship_that_died(world, monkeypatch)
    world.gateway.script("capture", "refuse")

    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")

    assert (cancelled.payment.status, cancelled.captures_requested) == (P.VOIDED, [])
    assert world.spy.refunded == []
    types = [h.type for h in world.history(order.id)]
    assert types[-5:] == [
        "cancelled", "payment_capture_failed", "capture_not_made", "payment_voided", "carrier_booking_cancelled",
    ]  # fmt: skip


def test_a_cancel_whose_refund_cannot_be_made_now_leaves_the_authorization_until_it_is_repeated(world, monkeypatch):
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    world.gateway.script("refund", "transient")

    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.AUTHORIZED)  # never voided under it
    assert [r.shipment_id for r in world.order(order.id).captures_requested] == [shipment_id]
    assert world.spy.voided == []
    world.gateway.script("refund", "approve")

    again = world.actions.cancel(order.id, "customer asked", actor="key_web")

    assert (again.payment.status, again.captures_requested) == (P.VOIDED, [])
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]


def test_the_repositories_refuse_a_void_or_a_changed_shipment_under_a_capture_request(world, monkeypatch):
    order, _ = a_ship_that_died(world, monkeypatch)
    current = world.order(order.id)
    cancelled, _ = current.cancel("x", at=current.updated_at, actor="k")
    with pytest.raises(InvalidTransition, match="cannot be voided"):
        cancelled.record_void(current.payment.authorization, "void_1", at=current.updated_at, actor="k")
    fewer = current.model_copy(update={"shipments": [], "version": current.version + 1})
    with pytest.raises(InvalidTransition, match="cannot change"):
        world.orders.update(fewer, current, [])


# --- An edit that dies after the gateway authorized its grown total --------------------------------


def an_edit_that_died(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str]:
    """An authorized order whose edit to a grown total died after the gateway authorized it and
    before the order recorded it: the order as it was, and the authorization the gateway made."""
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    dies_before_recording(world, monkeypatch, "edited")
    with pytest.raises(Died):
        grow(world, order_id)
    monkeypatch.undo()
    (made,) = [a for a in world.spy.authorized if a != authorized.payment.authorization]
    return authorized, made


def test_an_authorization_whose_edit_died_stays_on_the_order_stored_and_never_shown(world, monkeypatch):
    authorized, made = an_edit_that_died(world, monkeypatch)

    after = world.order(authorized.id)
    assert shown(after) == shown(authorized) and after.payment.authorization != made
    stored = Order.model_validate_json(after.stored_json()).authorization_requested
    assert (stored.edit_of, stored.withdrawn) == (authorized.version, False)
    assert stored.amount > authorized.payment.authorized
    assert "authorization_requested" not in after.model_dump(mode="json")
    assert world.history(authorized.id)[-1].type == "payment_authorized"  # bookkeeping: no entry of its own
    assert world.spy.voided == []


def test_an_edit_repeated_with_the_same_if_match_after_it_died_records_the_authorization_it_made(world, monkeypatch):
    authorized, made = an_edit_that_died(world, monkeypatch)
    five = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)])

    edited = world.actions.edit(authorized.id, authorized.version, five, "key_web")

    assert (edited.payment.authorization, edited.payment.authorized) == (made, edited.totals.grand_total)
    assert edited.authorization_requested is None and edited.version == authorized.version + 3
    assert world.gateway.keys("authorize")[1:] == [payment_keys.authorize(authorized.id, authorized.version + 2)] * 2
    assert world.spy.voided == [authorized.payment.authorization]  # the replaced one, not the one made


def test_a_cancel_after_an_edit_died_voids_the_authorization_it_made_too(world, monkeypatch):
    authorized, made = an_edit_that_died(world, monkeypatch)

    cancelled = world.actions.cancel(authorized.id, "changed my mind", actor="key_web")

    assert (cancelled.status, cancelled.payment.status, cancelled.payment.authorization) == (
        S.CANCELLED, P.VOIDED, authorized.payment.authorization,
    )  # fmt: skip
    assert world.spy.voided == [made, authorized.payment.authorization]
    assert cancelled.authorization_requested is None
    voided = [h for h in world.history(authorized.id) if h.type == "payment_voided"]
    assert [h.detail["authorization"] for h in voided] == [made, authorized.payment.authorization]


def test_another_edit_after_an_edit_died_voids_its_authorization_first(world, monkeypatch):
    authorized, made = an_edit_that_died(world, monkeypatch)
    current = world.order(authorized.id)  # the client read the order again

    edited = world.actions.edit(authorized.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]),
                                "key_web")  # fmt: skip

    assert edited.lines[0].quantity == 1
    assert edited.payment.authorization == authorized.payment.authorization  # the smaller total keeps it
    assert world.spy.voided == [made]
    assert edited.authorization_requested is None
    assert [h.type for h in world.history(authorized.id)][-2:] == ["payment_voided", "edited"]


def test_the_last_parcel_shipped_voids_an_authorization_an_edit_asked_for_and_never_recorded(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    dies_before_recording(world, monkeypatch, "edited")
    with pytest.raises(Died):
        grow(world, order.id)
    monkeypatch.undo()
    (made,) = [a for a in world.spy.authorized if a != order.payment.authorization]

    shipped = world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")

    assert shipped.status is S.SHIPPED and shipped.payment.captured == order.totals.grand_total
    assert world.spy.voided == [made] and shipped.authorization_requested is None


def test_an_edit_whose_authorization_another_edit_voided_meanwhile_never_records_it(world, monkeypatch):
    # The second edit (a smaller total, after reading the version the first's request wrote) takes the
    # request back before voiding it, so the first, still waiting for the gateway, cannot record an
    # authorization the gateway has voided: its write loses (409) and the order keeps a live one.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    one = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)])
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.edit(order_id, world.order(order_id).version, one, "key_web"), skip=1
    )

    with pytest.raises(StaleVersion):
        grow(world, order_id)

    after = world.order(order_id)
    assert after.lines[0].quantity == 1 and after.authorization_requested is None
    assert after.payment.authorization == authorized.payment.authorization
    (made,) = {a for a in world.spy.authorized if a != authorized.payment.authorization}  # asked twice, one
    assert world.spy.voided == [made]


def test_an_edit_whose_authorization_a_cancel_voided_meanwhile_is_refused_and_nothing_is_held(world, monkeypatch):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    first = world.order(order_id).payment.authorization
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", "key_web"),
                          skip=1)  # fmt: skip

    with pytest.raises(StaleVersion):
        grow(world, order_id)

    cancelled = world.order(order_id)
    assert (cancelled.status, cancelled.payment.status, cancelled.payment.authorization) == (
        S.CANCELLED, P.VOIDED, first,
    )  # fmt: skip
    (made,) = {a for a in world.spy.authorized if a != first}
    assert world.spy.voided == [made, first] and cancelled.authorization_requested is None


def test_an_edits_authorization_a_cancel_found_nothing_under_is_voided_by_the_edit_and_the_history_says_so(
    world, monkeypatch
):
    # The cancel lands while the edit's new authorization is on its way: asked under the edit's key,
    # the gateway said nothing was made yet, so the cancel settled the edit's request with no void.
    # The edit's write then loses, and it voids what the gateway made by itself: the history names
    # that void, as it names every void of an authorization the order does not record.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    first = world.order(order_id).payment.authorization

    def cancel() -> None:
        world.gateway.script("authorize", "refuse")
        world.actions.cancel(order_id, "changed my mind", "key_web")

    before_the_next_write(world, monkeypatch, cancel, skip=1)  # the edit's request is written first
    with pytest.raises(StaleVersion):
        grow(world, order_id)

    (made,) = {a for a in world.spy.authorized if a != first}
    assert world.spy.voided == [first, made]
    key = world.gateway.keys("authorize")[-1]  # the edit's, the cancel's question asked under it again
    assert key != payment_keys.authorize(order_id, 1)
    assert voided_unrecorded(world, order_id) == [("key_web", made, key)]


def test_a_declined_edit_then_a_smaller_one_with_the_same_if_match_goes_ahead(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    world.gateway.script("authorize", "refuse")
    with pytest.raises(Conflict):
        grow(world, order_id)

    one = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)])
    edited = world.actions.edit(order_id, authorized.version, one, "key_web")

    assert edited.lines[0].quantity == 1 and edited.authorization_requested is None
    assert edited.payment.authorization == authorized.payment.authorization
    assert world.spy.voided == []  # asked again, declined again: none was made
    assert world.gateway.keys("authorize")[1:] == [payment_keys.authorize(order_id, authorized.version + 2)] * 2


class CardBlockedUntilLifted:
    """A card whose bank declines every authorization until the block is lifted, behind a gateway
    that answers a key it has seen with its first answer (core/hookspecs.py: a decline stays the
    key's answer), as Stripe replays an idempotency key's response."""

    def __init__(self) -> None:
        self.blocked = False
        self.declined: set[str] = set()

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, idempotency_key: str) -> PaymentResult | None:
        if self.blocked or idempotency_key in self.declined:
            self.declined.add(idempotency_key)
            return PaymentResult(outcome="declined", reference="decl_blocked", message="the bank blocked the card")
        return None


@pytest.mark.parametrize("read_again", [False, True], ids=["same-if-match", "if-match-read-again"])
def test_a_grown_edit_declined_then_sent_again_once_the_bank_lifts_the_block_is_authorized(clock, read_again):
    # A customer edits an order up, the bank declines (a block on the card: 409 payment_declined),
    # the customer has the bank lift it and sends the same edit again. The retry asked under the
    # declined request's key, which the gateway answers with that decline for good: the edit could
    # never go through (until some other change came first). A renewal asked after a decline is a
    # new authorization (core/payment_keys.renewal); so is an edit's.
    card = CardBlockedUntilLifted()
    world = build_world(STOCK, card, clock=clock)
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    five = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)])
    card.blocked = True
    with pytest.raises(Conflict) as declined:
        world.actions.edit(order_id, authorized.version, five, "key_web")
    assert declined.value.code == "payment_declined"
    card.blocked = False

    if_match = world.order(order_id).version if read_again else authorized.version
    edited = world.actions.edit(order_id, if_match, five, "key_web")

    assert edited.lines[0].quantity == 5 and edited.authorization_requested is None
    assert edited.payment.authorized == edited.totals.grand_total
    assert edited.payment.authorization not in (None, authorized.payment.authorization)
    assert world.spy.voided == [authorized.payment.authorization]  # the one the edit replaced, nothing else


# --- The authorization an edit replaced, when its void cannot be made then -------------------------


def test_an_authorization_an_edit_replaced_and_could_not_void_is_voided_by_the_cancel(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    old = world.order(order_id).payment.authorization
    world.gateway.script("void", "transient", "transient", "transient", "approve")

    edited = grow(world, order_id)  # 200: the edit stands, the old authorization still holds

    assert edited.payment.authorization != old and world.spy.voided == []
    stored = json.loads(edited.stored_json())
    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")
    assert world.spy.voided == [old, edited.payment.authorization]
    assert stored["replaced_authorizations"] == [old] and "replaced_authorizations" not in edited.model_dump()
    assert (cancelled.payment.status, cancelled.replaced_authorizations) == (P.VOIDED, [])


def test_an_authorization_an_edit_replaced_and_could_not_void_is_voided_once_the_last_parcel_ships(world):
    order = world.allocated(("TSHIRT", 2))
    world.gateway.script("void", "transient", "transient", "transient", "approve")
    grow(world, order.id)
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    sourced = world.order(order.id)
    assert world.spy.voided == []

    shipped = world.actions.ship(order.id, sourced.shipments[0].id, None, actor="key_wh")

    assert shipped.status is S.SHIPPED and shipped.payment.captured == shipped.totals.grand_total
    assert world.spy.voided == [order.payment.authorization] and shipped.replaced_authorizations == []
    entry = [h for h in world.history(order.id) if h.type == "payment_voided"][-1]
    assert entry.detail["reason"] == "replaced by the authorization of the edited total"


def test_a_replaced_authorization_whose_void_is_refused_stops_no_other_void(world):
    # Two edits grew the order while the gateway refused every void: two replaced authorizations.
    # The first one's void stays refused; the second and the order's own are still released.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    first = world.order(order_id).payment.authorization
    world.gateway.script("void", "refuse")
    second = grow(world, order_id).payment.authorization
    seven = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=7)])
    edited = world.actions.edit(order_id, world.order(order_id).version, seven, "key_web")
    assert json.loads(edited.stored_json())["replaced_authorizations"] == [first, second]
    tried = [h.detail["authorization"] for h in world.history(order_id)[-2:] if h.type == "payment_void_failed"]
    assert tried == [first, second]  # each tried
    world.gateway.script("void", "refuse", "approve")

    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")

    assert world.spy.voided == [second, edited.payment.authorization]
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.VOIDED)
    assert json.loads(world.order(order_id).stored_json())["replaced_authorizations"] == [first]
    assert failures(world, order_id)[-1] == ("payment_void_failed", "void", "refused", 1)


def test_the_workflows_cancel_is_retried_while_its_own_void_finds_the_gateway_down_after_another_void_was_refused(
    world,
):
    # The refusal of the replaced authorization's void is recorded for a person; the own one the
    # gateway could not answer is what the step is run again for (TransientError), not given up.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.gateway.script("void", "refuse")
    own = grow(world, order_id).payment.authorization
    world.gateway.script("void", "refuse", "transient")

    with pytest.raises(TransientError):
        world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")

    assert (world.order(order_id).status, world.order(order_id).payment.status) == (S.CANCELLED, P.AUTHORIZED)
    world.gateway.script("void", "approve")
    world.workflow.cancel_after_failure(order_id, error="OutOfStock", cause="")
    assert world.order(order_id).payment.status is P.VOIDED and own in world.spy.voided


def test_a_cancel_whose_replaced_authorizations_void_a_repeat_recorded_first_answers_the_order_cancelled(
    world, monkeypatch
):
    # The client repeats the cancel while the first is between the gateway's void of the replaced
    # authorization and its write: the repeat records it; the first finds it recorded, not a 409.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.gateway.script("void", "refuse")
    first = world.order(order_id).payment.authorization
    assert grow(world, order_id).replaced_authorizations == [first]
    world.gateway.script("void", "approve")
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order_id, "changed my mind", actor="key_web"), skip=1
    )

    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.VOIDED)
    assert cancelled.replaced_authorizations == [] and first in world.spy.voided


def test_an_edit_returns_the_order_as_its_replaced_authorization_void_left_it(world):
    # The edit's answer is the latest version (the void of the replaced authorization is a write of
    # its own), so its version is what the next If-Match names.
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)

    edited = grow(world, order_id)

    assert edited == world.order(order_id) and edited.replaced_authorizations == []
    assert world.actions.edit(order_id, edited.version, OrderEdit(shipping_method="express"), "key_web")


# --- The payment plugin of a method in use, removed -----------------------------------------------


class Removed:
    """Once `gone`, no payment plugin answers for any method: the plugin of the orders' method was
    taken out of the deployment while they still use it."""

    gone = False

    def _answer(self, result):
        return None if self.gone else result

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self):
        return self._answer((yield))

    @hookimpl(wrapper=True)
    def oms_payment_capture(self):
        return self._answer((yield))

    @hookimpl(wrapper=True)
    def oms_payment_void(self):
        return self._answer((yield))

    @hookimpl(wrapper=True)
    def oms_payment_refund(self):
        return self._answer((yield))

    @hookimpl(wrapper=True)
    def oms_payment_find_authorization(self):
        return self._answer((yield))


def removed_errors(caplog: pytest.LogCaptureFixture, order_id: str, operation: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "core.payments" and r.levelname == "ERROR"
            and (r.order_id, r.payment_method, r.operation) == (order_id, "test", operation)]  # fmt: skip


def test_a_cancel_whose_payment_plugin_was_removed_is_a_refused_void_recorded_and_logged(caplog):
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("TSHIRT", 2))
    removed.gone = True

    with caplog.at_level("ERROR", logger="core.payments"):
        cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert cancelled == world.order(order.id)
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.AUTHORIZED)  # honestly not released
    assert world.held() == {}
    assert failures(world, order.id) == [("payment_void_failed", "void", "no_plugin", 1)]
    [failed] = [entry for entry in world.history(order.id) if entry.type == "payment_void_failed"]
    assert "no payment plugin takes method 'test'" in failed.detail["message"]
    assert removed_errors(caplog, order.id, "void")


def test_a_pending_cancel_whose_payment_plugin_was_removed_still_cancels(caplog):
    # Its authorization's answer was lost: the cancel would ask the gateway again under its key.
    removed = Removed()
    world = build_world(STOCK, removed)
    world.gateway.script("authorize", "timeout", "approve")
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    removed.gone = True

    with caplog.at_level("ERROR", logger="core.payments"):
        cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.PENDING)
    assert failures(world, order_id)[-1] == ("payment_authorization_failed", "authorize", "no_plugin", 1)
    assert removed_errors(caplog, order_id, "authorize")


def test_a_ship_whose_payment_plugin_was_removed_is_a_refused_capture(caplog):
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    removed.gone = True

    with caplog.at_level("ERROR", logger="core.payments"), pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    stored = world.order(order.id)
    assert stored.shipments[0].status is ShipmentStatus.PENDING
    assert stored.payment.captured == usd("0.00")
    assert failures(world, order.id) == [("payment_capture_failed", "capture", "no_plugin", 1)]
    assert removed_errors(caplog, order.id, "capture")


def test_a_refund_whose_payment_plugin_was_removed_is_recorded_failed(caplog):
    removed = Removed()
    world = build_world(STOCK, removed)
    order = shipped_order(world)
    removed.gone = True

    with caplog.at_level("ERROR", logger="core.payments"):
        failed = refund(world, order.id, "k1", usd("5.00"))

    assert failed.status == "failed"
    assert world.order(order.id).payment.refunded == usd("0.00")
    assert failures(world, order.id) == [("payment_refund_failed", "refund", "no_plugin", 1)]
    assert removed_errors(caplog, order.id, "refund")


def test_a_ship_whose_plugin_was_removed_after_a_ship_died_keeps_the_capture_request():
    # The dead ship's capture went through the plugin now gone: the gateway holds the money.
    removed = Removed()
    world = build_world(STOCK, removed)
    with pytest.MonkeyPatch.context() as monkeypatch:
        order, shipment_id = a_ship_that_died(world, monkeypatch)
    removed.gone = True

    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    stored = world.order(order.id)
    assert [(r.shipment_id, r.amount) for r in stored.captures_requested] == [(shipment_id, order.totals.grand_total)]
    assert "capture_not_made" not in [h.type for h in world.history(order.id)]
    assert failures(world, order.id) == [("payment_capture_failed", "capture", "no_plugin", 1)]

    removed.gone = False  # the plugin is back: the ship asked again records the capture it made
    shipped = world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    assert shipped.payment.captured == order.totals.grand_total and shipped.captures_requested == []
    assert len(world.spy.captured) == 1


def test_a_cancel_whose_plugin_was_removed_after_a_ship_died_answers_and_keeps_the_capture_request():
    removed = Removed()
    world = build_world(STOCK, removed)
    with pytest.MonkeyPatch.context() as monkeypatch:
        order, shipment_id = a_ship_that_died(world, monkeypatch)
    removed.gone = True

    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")

    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, P.AUTHORIZED)
    assert [r.shipment_id for r in world.order(order.id).captures_requested] == [shipment_id]
    assert "capture_not_made" not in [h.type for h in world.history(order.id)]

    removed.gone = False  # the plugin is back: cancelling again refunds the capture, then voids
    again = world.actions.cancel(order.id, "customer asked", actor="key_web")
    assert (again.payment.status, again.captures_requested) == (P.VOIDED, [])
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]


def test_a_lost_authorization_key_a_removed_plugin_could_not_release_is_released_once_it_is_back():
    removed = Removed()
    world = build_world(STOCK, removed)
    world.gateway.script("authorize", "timeout", "approve")
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    removed.gone = True
    world.actions.cancel(order_id, "changed my mind", actor="key_web")
    assert world.spy.voided == []

    removed.gone = False
    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")

    assert cancelled.payment.status is P.PENDING
    key = payment_keys.authorize(order_id, 1)
    (voided,) = [h for h in world.history(order_id) if h.type == "payment_voided"]
    assert voided.detail["authorization_key"] == key
    assert len(world.spy.voided) == 1


def test_a_ship_whose_plugin_was_removed_takes_back_the_capture_request_it_made_itself():
    # Nothing was ever asked under its key: kept, a cancel once the plugin is back would capture
    # money the customer never paid, only to refund it.
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    removed.gone = True

    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert world.order(order.id).captures_requested == []
    assert world.history(order.id)[-1].type == "capture_not_made"
    removed.gone = False
    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")
    assert cancelled.payment.status is P.VOIDED
    assert world.spy.refunded == [] and "payment_capture_reversed" not in [h.type for h in world.history(order.id)]


def a_refund_that_died(world: World, order: Order, key: str = "k1") -> str:
    """A refund of 5.00 the gateway made whose request died before recording it: pending, by id."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        dies_before_recording(world, monkeypatch, "payment_refunded")
        with pytest.raises(Died):
            refund(world, order.id, key, usd("5.00"))
    assert [amount for _, amount, _ in world.spy.refunded] == [usd("5.00")]  # the gateway's truth
    return refund_id_for(order.id, key)


def test_a_refund_left_pending_is_not_failed_when_its_payment_plugin_was_removed_and_refunds_once_it_is_back():
    # Recorded failed, it freed its 5.00: a new refund once the plugin was back refunded it twice.
    removed = Removed()
    world = build_world(STOCK, removed)
    order = shipped_order(world)
    refund_id = a_refund_that_died(world, order)
    removed.gone = True

    for _ in range(3):  # the client repeats the request
        with pytest.raises(NoPaymentPlugin):
            refund(world, order.id, "k1", usd("5.00"))

    held = world.order(order.id)
    assert [(r.id, r.status) for r in held.payment.refunds] == [(refund_id, "pending")]
    assert held.payment.refundable() == order.payment.captured - usd("5.00")
    assert failures(world, order.id) == [("payment_refund_failed", "refund", "no_plugin", 1)]  # once
    assert "refund_failed" not in [h.type for h in world.history(order.id)]

    removed.gone = False
    done = refund(world, order.id, "k1", usd("5.00"))
    assert (done.id, done.status) == (refund_id, "succeeded")
    assert world.order(order.id).payment.refunded == usd("5.00")
    assert len(world.spy.refunded) == 1


def test_a_cancel_of_the_rest_leaves_a_pending_refund_its_removed_payment_plugin_cannot_ask_pending():
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    refund_id = a_refund_that_died(world, order)
    removed.gone = True

    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    assert done.status is S.SHIPPED
    assert [(r.id, r.status) for r in done.payment.refunds] == [(refund_id, "pending")]
    assert failures(world, order.id)[0] == ("payment_refund_failed", "refund", "no_plugin", 1)
    assert "refund_failed" not in [h.type for h in world.history(order.id)]


@pytest.mark.parametrize(("amount", "reason"), [("6.00", "late delivery"), ("5.00", "damaged box")])
def test_another_body_under_the_key_of_a_refund_left_pending_is_refused_before_the_gateway_is_asked(
    world, amount, reason
):
    # A client's Idempotency-Key whose first request left its refund pending (the gateway stayed
    # down, nothing stored under the key): the same key with another amount or another reason is
    # not that request (409 idempotency_key_reused), and the pending refund is not asked for it.
    order = shipped_order(world)
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order.id, usd("5.00"), "late delivery", "api:k1", "key_cs", same_request=True)
    asked = len(world.gateway.keys("refund"))

    with pytest.raises(Conflict) as refused:
        world.refunds.issue_refund(order.id, usd(amount), reason, "api:k1", "key_cs", same_request=True)

    assert refused.value.code == "idempotency_key_reused"
    assert len(world.gateway.keys("refund")) == asked
    assert [r.status for r in world.order(order.id).payment.refunds] == ["pending"]
