"""A hold a person released in the gateway's console (the SettlementCapturesNotMadeAlarm and
VoidsNotMadeAlarm runbooks ask for it) is then voided by the OMS too: a renewal replacing the
authorization, a cancel. PaymentResult says approved or declined and the gateway's words, nothing
the core could read "already voided" from: the hook's contract (oms_payment_void) asks a plugin to
answer a void of an authorization that holds nothing any more as released (approved), and to
decline only a hold that stays, so the alarm calls a person for a hold, not for one already gone.
The built-in test_payments plugin answers so."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import OrderEvent
from core.hookspecs import oms_payment_void as void_spec
from plugins.test_payments import oms_payment_void
from tests.unit.test_business_metrics import emitted
from tests.unit.test_settlement_capture_not_made import metrics, shipped_west  # noqa: F401

README = Path(__file__).resolve().parents[2] / "README.md"
VOID_FAILURES = {
    ("PaymentFailures", (("kind", kind), ("operation", "void"))) for kind in ("refused", "no_plugin", "transient")
}


@pytest.mark.usefixtures("metrics")
def test_a_hold_released_in_the_gateways_console_is_recorded_voided_when_a_renewal_replaces_it(capsys):
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")  # the settlement refused
    (spent,) = world.order(order_id).spent_authorizations
    # The runbook's step: the hold released in the gateway's console, outside the OMS.
    assert oms_payment_void("test", spent, "console:release").outcome == "approved"
    world.gateway.script("capture", "approve")
    emitted(capsys)

    after = world.actions.deliver(order_id, west, actor="key_ops")  # asked again: renewed, captured

    assert after.payment.captured == after.totals.grand_total
    voided = [e for e in world.history(order_id) if e.type is OrderEvent.PAYMENT_VOIDED]
    assert [e.detail.get("authorization") for e in voided][-1:] == [spent]
    assert not [e for e in world.history(order_id) if e.type is OrderEvent.PAYMENT_VOID_FAILED]
    assert not VOID_FAILURES & set(emitted(capsys))  # VoidsNotMadeAlarm stays quiet: nothing is held


@pytest.mark.usefixtures("metrics")
def test_a_void_the_gateway_refuses_while_the_hold_stays_still_calls_a_person(capsys):
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    (spent,) = world.order(order_id).spent_authorizations
    world.gateway.script("capture", "approve")
    world.gateway.script("void", "refuse")
    emitted(capsys)

    world.actions.deliver(order_id, west, actor="key_ops")

    (failed,) = [e for e in world.history(order_id) if e.type is OrderEvent.PAYMENT_VOID_FAILED]
    assert (failed.detail["authorization"], failed.detail["kind"]) == (spent, "refused")
    assert ("PaymentFailures", (("kind", "refused"), ("operation", "void"))) in emitted(capsys)


def test_the_void_hooks_contract_says_a_hold_released_already_is_answered_approved():
    # What the plugin author reads: the hookspec and README's hook reference.
    spec = " ".join((void_spec.__doc__ or "").split())
    text = README.read_text()
    entry = " ".join(text[text.index("`oms_payment_void(") :].split("\n`oms_", 1)[0].split())
    for contract in (spec, entry):
        assert "released already" in contract
        assert "gateway's console" in contract and "only when the hold stays" in contract
