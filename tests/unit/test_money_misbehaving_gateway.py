"""The payment's invariant (tests/unit/test_money_invariants.py) with a payment plugin that
misbehaves after the gateway acted: it raises (its HTTP client could not parse the answer), answers
an outcome PaymentResult does not know, or approves another amount and currency than asked. Each
hits a ship's capture, the renewal a ship asks a week on, a cancel of units' capture, refund,
renewal or void, and an appeasement's refund; the client repeats what answered 502 or 503 once
the plugin works (a cancel of units under its request key, an appeasement under its
Idempotency-Key), and the reconciler's passes run (pending refunds, settlement captures, what
returns kept back). Held: nothing is recorded as moved that the gateway did not say it moved;
once a pass ran with the plugin working, no refund is left pending and no settlement owed unless
the gateway refused it (left to a person, in the history); and no authorization the gateway made
is left holding the customer's card on a closed or fully shipped order without a failed void in
the history (VoidsNotMadeAlarm counts those)."""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from core import hookimpl
from core.errors import PaymentGatewayUnavailable, PaymentPluginFailed, PaymentRefused
from core.events import OrderEvent
from core.money import Money, quantum
from core.refund_service import PendingRefundSweep
from core.status import OrderStatus, RefundStatus
from core.workflow_types import PaymentResult
from plugins import test_payments
from tests.stateful import at_length, in_make_test
from tests.unit import test_capture_sweep, test_kept_back_sweep
from tests.unit.test_capture_sweep import InMemorySettlementCaptures
from tests.unit.test_money_invariants import DiscountedOrderMoney, OrderMoney, _pending, _settlement_not_made
from tests.unit.test_pending_refund_sweep import InMemoryPendingRefunds

S = OrderStatus
MODES = ("raise", "unknown_outcome", "other_amount")
FAILED = (PaymentPluginFailed, PaymentRefused, PaymentGatewayUnavailable)  # 502, 502, 503: nothing recorded


class MisbehavesAfterActing:
    """Wraps the payment hooks: the next call of an operation given a mode lets the gateway act,
    then answers as that mode says instead of with the gateway's answer (`other_amount`: approved
    for one minor unit more than asked; a void, which asks no amount, for 1.00 USD)."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}

    def _answer(self, operation: str, result: PaymentResult | None, asked: Money | None = None) -> PaymentResult | None:
        mode = self.modes.pop(operation, None)
        if mode is None:
            return result
        if mode == "raise":
            raise ValueError("the gateway's answer could not be parsed")
        if mode == "unknown_outcome":
            return PaymentResult.model_construct(outcome="pending", reference="ch_1", message="", amount=None)
        assert mode == "other_amount", mode
        said = asked + Money.of(quantum(asked.currency), asked.currency) if asked else Money.of("1", "USD")
        return PaymentResult(outcome="approved", reference="ch_2", amount=said)

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self, amount: Money):
        return self._answer("authorize", (yield), amount)

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, amount: Money):
        return self._answer("capture", (yield), amount)

    @hookimpl(wrapper=True)
    def oms_payment_void(self):
        return self._answer("void", (yield))

    @hookimpl(wrapper=True)
    def oms_payment_refund(self, amount: Money):
        return self._answer("refund", (yield), amount)


class MisbehavingOrderMoney(OrderMoney):
    misbehaves: MisbehavesAfterActing

    def pricing_plugins(self) -> tuple[object, ...]:
        self.misbehaves = MisbehavesAfterActing()
        return (*super().pricing_plugins(), self.misbehaves)

    def _done_shipping(self) -> bool:
        """OrderMoney's, while no refund is pending: the rules it gates ask refunds, and a refund
        asked while another waits for the gateway's answer (a cancel of units' refund whose plugin
        failed: the cancel answered 200) is refused, 409, until the reconciler finishes that one."""
        pending = any(r.status == RefundStatus.PENDING for r in self.order.payment.refunds)
        return super()._done_shipping() and not pending

    def _ship(self, shipment_id: str, operation: str, mode: str) -> None:
        warehouse = f"key_{self.order.shipment(shipment_id).location_id}"
        self.misbehaves.modes[operation] = mode
        try:
            self.world.actions.ship(self.order_id, shipment_id, None, actor=warehouse)
        except FAILED:
            pass  # the ship answered 502 or 503: the parcel stays pending, its capture request standing
        finally:
            self.misbehaves.modes.clear()

    @precondition(lambda self: _pending(self.order))
    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def ship_misbehaving(self, data: st.DataObject, mode: str) -> None:
        self._ship(data.draw(st.sampled_from(_pending(self.order))), "capture", mode)

    @precondition(lambda self: _pending(self.order))
    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def ship_a_week_later_renewal_misbehaving(self, data: st.DataObject, mode: str) -> None:
        """The authorization grew old: the ship renews it first, and the renewal's answer is bad."""
        self.a_week_passes()
        self._ship(data.draw(st.sampled_from(_pending(self.order))), "authorize", mode)

    @precondition(lambda self: _pending(self.order))
    @rule(
        data=st.data(),
        mode=st.sampled_from(MODES),
        operation=st.sampled_from(["capture", "refund", "authorize", "void"]),
    )
    def cancel_units_misbehaving(self, data: st.DataObject, mode: str, operation: str) -> None:
        unshipped = {line_id: units for line_id, units in self.order.unshipped_units().items() if units}
        line_id = data.draw(st.sampled_from(sorted(unshipped)))
        lines = {line_id: data.draw(st.integers(min_value=1, max_value=unshipped[line_id]))}
        key = self._key()
        self.misbehaves.modes[operation] = mode
        try:
            self.world.actions.cancel(self.order_id, "fewer", actor="key_cs", lines=lines, request_key=key)
        except FAILED:
            self.misbehaves.modes.clear()
            # The client repeats the request once the plugin works: its key cancels no unit twice.
            # A renewal or settlement the gateway refuses is left to a person, in the history.
            with contextlib.suppress(PaymentRefused):
                self.world.actions.cancel(self.order_id, "fewer", actor="key_cs", lines=lines, request_key=key)
        finally:
            self.misbehaves.modes.clear()

    @precondition(lambda self: self._done_shipping() and self.order.payment.refundable().amount > 0)
    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def appease_misbehaving(self, data: st.DataObject, mode: str) -> None:
        order = self.order
        unit = quantum(order.currency)
        steps = int(order.payment.refundable().amount / unit)
        amount = Money.of(data.draw(st.integers(min_value=1, max_value=steps)) * unit, order.currency)
        key = self._key()
        self.world.gateway.script("refund", "approve")
        self.misbehaves.modes["refund"] = mode
        try:
            first = self.world.refunds.issue_refund(self.order_id, amount, "goodwill", key, actor="key_cs")
        except FAILED:
            first = None
        finally:
            self.misbehaves.modes.clear()
        assert first is None or first.status != RefundStatus.SUCCEEDED, "an answer the core cannot take taken"
        again = self.world.refunds.issue_refund(self.order_id, amount, "goodwill", key, actor="key_cs")
        assert (again.status, again.amount) == (RefundStatus.SUCCEEDED, amount)

    @rule()
    def reconciler_passes(self) -> None:
        """An hour on, the plugin working: the reconciler's passes finish what the requests left."""
        self.clock.advance(hours=1)
        self.world.gateway.script("refund", "approve")
        finished: list[str] = []
        after = timedelta(minutes=15)
        PendingRefundSweep(InMemoryPendingRefunds(self.world), self.world.refunds, self.clock, after=after).run(
            "reconciler", orders=finished
        )
        test_capture_sweep.sweep(self.world, self.clock).run_settlements(
            InMemorySettlementCaptures(self.world), "reconciler"
        )
        test_kept_back_sweep.sweep(self.world, self.clock).run("reconciler", finished=finished)
        order = self.order
        refused = _settlement_not_made(self.world.history(self.order_id)) is not None
        assert [r.id for r in order.payment.refunds if r.status == RefundStatus.PENDING] == []
        assert order.capture_request(None) is None or refused, order.captures_requested
        assert not order.settlement_owed or refused

    # --- What must always hold, besides OrderMoney's -------------------------------------------
    @invariant()
    def each_renewal_asked_is_answered_in_the_history(self) -> None:
        """OrderMoney's, but a renewal whose plugin failed is asked again (the plugin may work now)
        with its failure noted once, not once an ask: its key is left out."""
        history = self.world.history(self.order_id)
        failed = {
            entry.detail["authorization_key"] for entry in history
            if entry.type == OrderEvent.PAYMENT_AUTHORIZATION_FAILED and entry.detail.get("kind") == "plugin_error"
        }  # fmt: skip
        declined = Counter(
            entry.detail["authorization_key"] for entry in history
            if entry.type == OrderEvent.PAYMENT_AUTHORIZATION_FAILED and "authorization_key" in (entry.detail or {})
        )  # fmt: skip
        made = {
            (entry.detail or {}).get("reference") for entry in history if entry.type == OrderEvent.PAYMENT_AUTHORIZED
        }
        asked = Counter(key for key in self.world.gateway.keys("authorize") if ":authorize:renew:" in key)
        for key, calls in asked.items():
            if key not in failed:
                assert calls <= declined[key] + (test_payments.reference(test_payments.AUTHORIZATION, key) in made), key

    @invariant()
    def settled_once_everything_left_has_shipped(self) -> None:
        """OrderMoney's, once no refund is pending, no capture request stands and no settlement is
        owed: a plugin that failed after the gateway acted leaves one for the request repeated or the
        reconciler (a cancel of units whose settlement's renewal it failed leaves the order
        settlement_owed, which reconciler_passes asserts it finishes)."""
        order = self.order
        if order.captures_requested or any(r.status == RefundStatus.PENDING for r in order.payment.refunds):
            return
        if order.settlement_owed:
            return
        super().settled_once_everything_left_has_shipped()

    @invariant()
    def no_authorization_left_holding_the_card_unseen(self) -> None:
        """On a cancelled or fully shipped order with nothing left owed, every authorization the
        gateway made is captured in full or voided (the order's current one aside while it ships),
        unless a void failed and is in the history (VoidsNotMadeAlarm)."""
        order = self.order
        if order.status not in (S.CANCELLED, S.SHIPPED, S.DELIVERED) or order.captures_requested:
            return
        if order.settlement_owed:
            return  # a settlement's renewal or capture still to make: the reconciler's
        history = self.world.history(self.order_id)
        if any(entry.type == OrderEvent.PAYMENT_VOID_FAILED for entry in history):
            return
        for reference, held in test_payments._held.items():  # every one is this order's: forgotten at `place`
            if held.voided or (order.status is not S.CANCELLED and reference == order.payment.authorization):
                continue
            assert held.captured == held.amount, f"{reference} holds {held.amount.amount - held.captured.amount}"


class DiscountedMisbehavingOrderMoney(MisbehavingOrderMoney, DiscountedOrderMoney):
    """The same, on an order with an amount off it that each cancel of units spreads again."""


def test_the_payment_is_settled_whatever_the_plugin_answers_after_the_gateway_acted():
    run_state_machine_as_test(MisbehavingOrderMoney, settings=in_make_test(examples=12, steps=8))


@pytest.mark.fuzz
def test_the_payment_is_settled_whatever_the_plugin_answers_after_the_gateway_acted_at_length():
    run_state_machine_as_test(MisbehavingOrderMoney, settings=at_length(examples=300, steps=15))


def test_the_payment_of_an_order_with_an_amount_off_is_settled_whatever_the_plugin_answers():
    run_state_machine_as_test(DiscountedMisbehavingOrderMoney, settings=in_make_test(examples=12, steps=8))


@pytest.mark.fuzz
def test_the_payment_of_an_order_with_an_amount_off_is_settled_whatever_the_plugin_answers_at_length():
    run_state_machine_as_test(DiscountedMisbehavingOrderMoney, settings=at_length(examples=300, steps=15))
