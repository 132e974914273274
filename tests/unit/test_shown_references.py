"""A payment gateway's references (an authorization's, a refund's and its parts') are stored and sent
back to the gateway exactly as it gave them, and shown (API answers, events and webhooks, the
order's history) as an escaped copy: a bidi override in one cannot reorder what a person reads."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core.domain_events import EventType, order_events
from core.errors import InvalidTransition
from core.events import OrderEvent
from core.models import HistoryEntry, Payment, PaymentRefund, RefundPart
from core.shown_references import history_shown, shown_reference, with_references_shown
from core.status import OrderStatus
from tests.builders import NOW
from tests.unit.conftest import a_stored_order, usd

RLO = "auth_\u202egnp.exe"
SHOWN = "auth_\\u202egnp.exe"


def an_order_paid_under_bidi_references():
    refunds = [
        PaymentRefund(id="ref_1", amount=usd("2.00"), reason="late", status="succeeded", reference="re_\u2066x\u2069",
                      at=NOW),
        PaymentRefund(id="ref_2", amount=usd("3.00"), reason="late", status="succeeded", at=NOW,
                      parts=[RefundPart(authorization="old\u200b", amount=usd("1.00"), status="succeeded",
                                        reference="p\x1b[31m"),
                             RefundPart(authorization=RLO, amount=usd("2.00"), status="succeeded", reference="q\\")]),
    ]  # fmt: skip
    payment = Payment(method="test", status="captured", authorized=usd("10.00"), captured=usd("10.00"),
                      refunded=usd("5.00"), authorization=RLO, refunds=refunds)  # fmt: skip
    return a_stored_order(("MUG", 1), payment=payment)


def test_a_reference_is_shown_with_its_controls_bidi_and_invisible_characters_escaped_and_nothing_else():
    assert shown_reference(RLO) == SHOWN
    assert shown_reference("a\u200bb\ufeff\u2060\u2028\n\\") == "a\\u200bb\\ufeff\\u2060\\u2028\\n\\\\"
    assert shown_reference("pi_3Nx-Ü_日本") == "pi_3Nx-Ü_日本"
    # Distinct references stay distinct when shown (a replacement character would show them alike).
    assert shown_reference("a\u202eb") != shown_reference("a\u202db")
    assert shown_reference("a\\u202eb") != shown_reference("a\u202eb")


def test_an_order_shows_its_references_escaped_and_keeps_them_exact():
    order = an_order_paid_under_bidi_references()
    shown = with_references_shown(order).payment

    assert shown.authorization == SHOWN
    assert [r.reference for r in shown.refunds] == ["re_\\u2066x\\u2069", None]
    parts = shown.refunds[1].parts or []
    assert [(p.authorization, p.reference) for p in parts] == [("old\\u200b", "p\\x1b[31m"), (SHOWN, "q\\\\")]
    assert order.payment.authorization == RLO and (order.payment.refunds[1].parts or [])[1].authorization == RLO
    assert json.loads(order.stored_json())["payment"]["authorization"] == RLO  # what is stored is exact
    plain = a_stored_order(("MUG", 1))
    assert with_references_shown(plain) is plain


def test_an_orders_events_carry_its_references_escaped():
    # Before: data.order (every event, and so every webhook) carried the authorization as the gateway gave it.
    order = an_order_paid_under_bidi_references()
    events = order_events(None, json.loads(order.stored_json()))

    assert [event.type for event in events][:1] == [EventType.ORDER_CREATED]
    for event in events:
        payment = event.data["order"]["payment"]
        assert payment["authorization"] == SHOWN
        assert payment["refunds"][0]["reference"] == "re_\\u2066x\\u2069"
        assert "\u202e" not in json.dumps(event.data, ensure_ascii=False)


def test_a_refund_event_of_a_document_listing_refunds_with_a_status_carries_its_reference_escaped():
    # Before: the branch for a document carrying a `refunds` list of its own put the refund in the
    # event as stored, its reference (and a part's authorization) exactly as the gateway gave it.
    order = json.loads(an_order_paid_under_bidi_references().stored_json())
    refund = {"id": "ref_9", "amount": {"amount": "1.00", "currency": "USD"}, "status": "pending",
              "reference": None, "parts": [{"authorization": RLO, "status": "pending"}]}  # fmt: skip
    answered = {**refund, "status": "succeeded", "reference": "re_\u202ex",
                "parts": [{"authorization": RLO, "status": "succeeded", "reference": "p\x1b"}]}  # fmt: skip
    old = {**order, "refunds": [refund]}
    new = {**order, "version": order["version"] + 1, "refunds": [answered]}

    [event] = [event for event in order_events(old, new) if event.type is EventType.REFUND_SUCCEEDED]

    assert event.data["refund"]["reference"] == "re_\\u202ex"
    assert event.data["refund"]["parts"][0] == {"authorization": SHOWN, "status": "succeeded", "reference": "p\\x1b"}
    assert event.data["refund"]["order_id"] == order["id"]
    assert "\u202e" not in json.dumps(event.data, ensure_ascii=False)
    assert new["refunds"][0]["reference"] == "re_\u202ex"  # the stored document is untouched


def test_a_history_shows_its_references_escaped_and_the_entries_the_system_reads_stay_exact():
    renewed = HistoryEntry(at=NOW, type=OrderEvent.PAYMENT_AUTHORIZED, actor="system",
                           detail={"amount": {"amount": "1.00", "currency": "USD"}, "reference": RLO, "replaces": RLO,
                                   "reauthorized": {"reference": RLO}, "parts": [{"authorization": RLO}],
                                   "reason": "r", "authorization_key": "k\u202e"})  # fmt: skip
    plain = HistoryEntry(at=NOW + timedelta(seconds=1), type=OrderEvent.PAYMENT_AUTHORIZED, actor="system",
                         detail={"reference": "auth_1"})  # fmt: skip

    shown = history_shown([renewed, plain])

    assert shown[0].detail == {
        "amount": {"amount": "1.00", "currency": "USD"}, "reference": SHOWN, "replaces": SHOWN,
        "reauthorized": {"reference": SHOWN}, "parts": [{"authorization": SHOWN}], "reason": "r",
        "authorization_key": "k\u202e",
    }  # fmt: skip
    assert shown[1] is plain
    assert renewed.detail is not None and renewed.detail["reference"] == RLO


def test_an_error_naming_an_authorization_shows_it_escaped():
    # Before: the InvalidTransition of a renewal or a void that found the order moved on put the
    # authorization in its text as the gateway gave it: a client's 409 and the log line read reordered.
    payment = Payment(method="test", status="authorized", authorized=usd("10.00"), captured=usd("0.00"),
                      refunded=usd("0.00"), authorization=RLO)  # fmt: skip
    authorized = a_stored_order(("MUG", 1), payment=payment)
    cancelled = a_stored_order(("MUG", 1), payment=payment, status=OrderStatus.CANCELLED)
    refusals = [
        lambda: authorized.renew_authorization(usd("10.00"), "auth_2", at=NOW, actor="system"),
        lambda: authorized.record_replaced_voided(RLO, "void_1", at=NOW, actor="system"),
        lambda: cancelled.record_void("auth_other", "void_1", at=NOW, actor="system"),
    ]
    for refused in refusals:
        with pytest.raises(InvalidTransition) as error:
            refused()
        assert SHOWN in str(error.value) and "\u202e" not in str(error.value)
