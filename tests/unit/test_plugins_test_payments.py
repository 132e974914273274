"""The test_payments plugin: the built-in `test` gateway's tokens, idempotent references and input checks."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from core.errors import TransientError
from core.money import Money
from core.plugin_manager import build_plugin_manager
from core.workflow_types import PaymentResult
from functions.plugin_loading import load_plugin_manager
from plugins import test_payments
from plugins.test_payments import oms_payment_authorize, oms_payment_capture, oms_payment_refund, oms_payment_void
from tests.unit.conftest import usd

AMOUNT = usd("42.50")


def authorize(token: str = "tok_approve", *, key: str = "auth-ord_1", attempt: int = 0, amount: Money = AMOUNT):
    return oms_payment_authorize(method="test", token=token, amount=amount, idempotency_key=key, attempt=attempt)


def an_authorization() -> str:
    return authorize().reference


@pytest.fixture
def pm():
    return build_plugin_manager(test_payments)


# --- Registration -----------------------------------------------------------------------------


def test_is_registered_through_the_oms_entry_point_when_test_payments_are_enabled():
    assert "test_payments" in entry_points(group="oms").names
    assert load_plugin_manager(enable_test_payments=True).get_plugin("test_payments") is test_payments


def test_is_off_unless_test_payments_are_enabled(plugins):
    # It approves tok_approve without a card: a deployment that loaded it by accident would ship unpaid goods.
    assert plugins.get_plugin("test_payments") is None
    assert "OMS_ENABLE_TEST_PAYMENTS" in {p.name: p.reason for p in plugins.report().plugins}["test_payments"]


def test_answers_through_the_plugin_manager_with_the_specs_keyword_arguments(pm):
    authorized = pm.hook.oms_payment_authorize(
        method="test", token="tok_approve", amount=AMOUNT, order_id="ord_1", idempotency_key="k1", attempt=0
    )
    auth = authorized.reference
    common = {"method": "test", "authorization": auth, "order_id": "ord_1"}

    assert authorized.outcome == "approved"
    assert pm.hook.oms_payment_capture(amount=AMOUNT, idempotency_key="k2", **common).outcome == "approved"
    assert pm.hook.oms_payment_refund(amount=AMOUNT, idempotency_key="k3", **common).outcome == "approved"
    assert pm.hook.oms_payment_void(idempotency_key="k4", **common).outcome == "approved"


def test_names_its_method_so_orders_paid_with_it_are_accepted(pm):
    assert ["test"] in pm.hook.oms_payment_methods()


def test_other_methods_get_no_answer(pm):
    auth = an_authorization()

    assert oms_payment_authorize("card", "tok_approve", AMOUNT, "k", 0) is None
    assert oms_payment_capture("card", auth, AMOUNT, "k") is None
    assert oms_payment_void("paypal", auth, "k") is None
    assert oms_payment_refund("TEST", auth, AMOUNT, "k") is None
    assert (
        pm.hook.oms_payment_authorize(
            method="card", token="tok_approve", amount=AMOUNT, order_id="o", idempotency_key="k", attempt=0
        )
        is None
    )


# --- Tokens -----------------------------------------------------------------------------------


def test_tok_approve_authorizes_with_an_authorization_reference():
    result = authorize("tok_approve")

    assert isinstance(result, PaymentResult)
    assert result.outcome == "approved"
    assert result.reference.startswith("auth_")
    assert len(result.reference) == len("auth_") + 20


def test_tok_decline_is_declined():
    result = authorize("tok_decline")

    assert result.outcome == "declined"
    assert result.message
    assert not result.reference.startswith("auth_")


def test_tok_flaky_fails_transiently_on_the_first_attempt():
    with pytest.raises(TransientError):
        authorize("tok_flaky", attempt=0)


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_tok_flaky_is_approved_on_a_retry(attempt):
    result = authorize("tok_flaky", attempt=attempt)

    assert result.outcome == "approved"
    assert result.reference.startswith("auth_")


def test_tok_flaky_retry_has_the_reference_a_first_success_would_have():
    assert authorize("tok_flaky", key="k", attempt=1).reference == authorize("tok_approve", key="k").reference


@pytest.mark.parametrize("token", ["tok_other", "TOK_APPROVE", "tok_approve ", "", "pm_card_visa"])
def test_unknown_tokens_are_declined_with_a_clear_message(token):
    result = authorize(token)

    assert result.outcome == "declined"
    assert "unknown test token" in result.message


def test_a_mistyped_token_is_declined_naming_every_token_the_test_gateway_takes():
    # A desk that typed tok_refund_declined is told the token it meant, not only the first three.
    result = authorize("tok_refund_declined")

    told = ["tok_approve", "tok_decline", "tok_flaky", "tok_capture_decline", "tok_void_decline", "tok_refund_decline"]
    assert [token for token in told if token not in result.message] == []


def test_a_card_number_is_declined_and_never_echoed():
    result = authorize("4242 4242 4242 4242")

    assert result.outcome == "declined"
    assert "card number" in result.message
    assert "4242" not in result.message + result.reference


def test_an_unknown_token_is_not_echoed():
    assert "secret-ish" not in authorize("secret-ish").message


def test_authorizing_zero_is_approved_but_a_negative_amount_is_declined():
    assert authorize(amount=usd("0.00")).outcome == "approved"
    assert authorize(amount=usd("-1.00")).outcome == "declined"


# --- Idempotency ------------------------------------------------------------------------------


def test_the_same_idempotency_key_gets_the_same_reference():
    auth = an_authorization()

    assert authorize(key="a").reference == authorize(key="a").reference
    assert authorize("tok_decline", key="a").reference == authorize("tok_decline", key="a").reference
    assert oms_payment_capture("test", auth, AMOUNT, "c") == oms_payment_capture("test", auth, AMOUNT, "c")
    assert oms_payment_void("test", auth, "v") == oms_payment_void("test", auth, "v")
    assert oms_payment_refund("test", auth, AMOUNT, "r") == oms_payment_refund("test", auth, AMOUNT, "r")


def test_different_idempotency_keys_get_different_references():
    auth = an_authorization()

    assert authorize(key="a").reference != authorize(key="b").reference
    assert (
        oms_payment_capture("test", auth, AMOUNT, "c1").reference
        != oms_payment_capture("test", auth, AMOUNT, "c2").reference
    )
    assert oms_payment_void("test", auth, "v1").reference != oms_payment_void("test", auth, "v2").reference
    assert (
        oms_payment_refund("test", auth, AMOUNT, "r1").reference
        != oms_payment_refund("test", auth, AMOUNT, "r2").reference
    )


def test_each_operation_names_its_kind():
    auth = an_authorization()

    assert oms_payment_capture("test", auth, AMOUNT, "k").reference.startswith("cap_")
    assert oms_payment_void("test", auth, "k").reference.startswith("void_")
    assert oms_payment_refund("test", auth, AMOUNT, "k").reference.startswith("refund_")


def test_references_fit_the_result_model_for_any_key():
    long_key = "k" * 10_000 + "é"

    assert len(authorize(key=long_key).reference) == 25


def test_an_empty_idempotency_key_is_a_caller_bug():
    with pytest.raises(ValueError, match="idempotency_key"):
        authorize(key="")
    with pytest.raises(ValueError, match="idempotency_key"):
        oms_payment_capture("test", an_authorization(), AMOUNT, "  ")


# --- Captures, voids and refunds --------------------------------------------------------------


def test_capture_void_and_refund_of_an_approved_authorization_succeed():
    auth = an_authorization()

    assert oms_payment_capture("test", auth, usd("10.00"), "c").outcome == "approved"
    assert oms_payment_void("test", auth, "v").outcome == "approved"
    assert oms_payment_refund("test", auth, usd("10.00"), "r").outcome == "approved"


@pytest.mark.parametrize(
    "authorization",
    ["", "auth_", "auth_xyz", "ch_123", "AUTH_0123456789abcdef0123", "auth_0123456789abcdef0123 "],
)
def test_an_authorization_this_gateway_did_not_issue_is_declined(authorization):
    assert oms_payment_capture("test", authorization, AMOUNT, "c").outcome == "declined"
    assert oms_payment_void("test", authorization, "v").outcome == "declined"
    assert oms_payment_refund("test", authorization, AMOUNT, "r").outcome == "declined"


def test_a_declined_authorization_cannot_be_captured():
    declined = authorize("tok_decline").reference

    result = oms_payment_capture("test", declined, AMOUNT, "c")

    assert result.outcome == "declined"
    assert "unknown authorization" in result.message


@pytest.mark.parametrize("amount", ["0.00", "-5.00"])
def test_capture_and_refund_need_a_positive_amount(amount):
    auth = an_authorization()

    captured = oms_payment_capture("test", auth, usd(amount), "c")
    refunded = oms_payment_refund("test", auth, usd(amount), "r")

    assert (captured.outcome, refunded.outcome) == ("declined", "declined")
    assert "positive" in captured.message
    assert "positive" in refunded.message


def test_amounts_in_any_supported_currency_are_accepted():
    auth = authorize(amount=Money(amount="700", currency="JPY")).reference

    assert oms_payment_capture("test", auth, Money(amount="700", currency="JPY"), "c").outcome == "approved"


def test_a_capture_on_an_authorization_it_voided_is_declined_as_a_real_gateway_does():
    auth = an_authorization()
    assert oms_payment_void("test", auth, "v").outcome == "approved"

    captured = oms_payment_capture("test", auth, usd("10.00"), "c")

    assert captured.outcome == "declined" and "voided" in captured.message


def test_captures_add_up_to_the_authorization_and_no_further():
    auth = an_authorization()  # 42.50

    assert oms_payment_capture("test", auth, usd("30.00"), "c1").outcome == "approved"
    over = oms_payment_capture("test", auth, usd("12.51"), "c2")
    assert oms_payment_capture("test", auth, usd("12.50"), "c3").outcome == "approved"
    spent = oms_payment_capture("test", auth, usd("0.01"), "c4")

    assert over.outcome == spent.outcome == "declined"
    assert "12.50 USD left" in over.message and "0.00 USD left" in spent.message


def test_a_capture_is_not_given_its_amount_back_by_a_refund():
    auth = an_authorization()
    oms_payment_capture("test", auth, AMOUNT, "c1")
    assert oms_payment_refund("test", auth, AMOUNT, "r").outcome == "approved"

    assert oms_payment_capture("test", auth, AMOUNT, "c2").outcome == "declined"


def test_a_capture_asked_again_under_its_key_gets_the_capture_made_whatever_came_after():
    auth = an_authorization()
    first = oms_payment_capture("test", auth, AMOUNT, "c")
    oms_payment_void("test", auth, "v")

    assert oms_payment_capture("test", auth, AMOUNT, "c") == first
    assert first.outcome == "approved"


def test_a_capture_in_another_currency_than_its_authorization_is_declined():
    captured = oms_payment_capture("test", an_authorization(), Money(amount="700", currency="JPY"), "c")

    assert captured.outcome == "declined" and "USD, not JPY" in captured.message


def test_refunds_add_up_to_what_was_captured_and_no_further():
    auth = an_authorization()  # 42.50
    oms_payment_capture("test", auth, usd("30.00"), "c1")

    assert oms_payment_refund("test", auth, usd("20.00"), "r1").outcome == "approved"
    over = oms_payment_refund("test", auth, usd("10.01"), "r2")
    assert oms_payment_refund("test", auth, usd("10.00"), "r3").outcome == "approved"
    spent = oms_payment_refund("test", auth, usd("0.01"), "r4")

    assert over.outcome == spent.outcome == "declined"
    assert "10.00 USD captured and not refunded" in over.message
    assert "0.00 USD captured and not refunded" in spent.message


def test_a_capture_asked_twice_at_once_under_one_key_is_counted_once(monkeypatch):
    # The local stack runs its functions in threads of one process: a ship and its repeat may ask
    # the same capture at once. Each is made to pause where it has read what the authorization
    # holds, so that without the gateway deciding one at a time both would count 30.00.
    import threading
    import time

    auth = an_authorization()  # 42.50
    judged = test_payments._capture_refused

    def slow(held, amount):
        time.sleep(0.05)
        return judged(held, amount)

    monkeypatch.setattr(test_payments, "_capture_refused", slow)
    answers = []
    asks = [
        threading.Thread(target=lambda: answers.append(oms_payment_capture("test", auth, usd("30.00"), "c1")))
        for _ in range(2)
    ]
    for ask in asks:
        ask.start()
    for ask in asks:
        ask.join()
    monkeypatch.setattr(test_payments, "_capture_refused", judged)

    assert [answer.outcome for answer in answers] == ["approved", "approved"]
    assert oms_payment_capture("test", auth, usd("12.50"), "c2").outcome == "approved"  # 30.00 was taken once


def test_nothing_captured_is_nothing_to_refund():
    refunded = oms_payment_refund("test", an_authorization(), usd("0.01"), "r")

    assert refunded.outcome == "declined" and "0.00 USD captured and not refunded" in refunded.message


def test_what_was_captured_stays_refundable_after_a_void():
    auth = an_authorization()
    oms_payment_capture("test", auth, usd("10.00"), "c")
    oms_payment_void("test", auth, "v")

    assert oms_payment_refund("test", auth, usd("10.00"), "r").outcome == "approved"


def test_a_refund_asked_again_under_its_key_gets_the_refund_made_and_refunds_nothing_more():
    auth = an_authorization()
    oms_payment_capture("test", auth, usd("10.00"), "c")
    first = oms_payment_refund("test", auth, usd("10.00"), "r")

    assert oms_payment_refund("test", auth, usd("10.00"), "r") == first
    assert first.outcome == "approved"
    assert oms_payment_capture("test", auth, usd("0.01"), "c2").outcome == "approved"  # the rest is still held
    assert oms_payment_refund("test", auth, usd("0.02"), "r2").outcome == "declined"


def test_a_refund_in_another_currency_than_its_authorization_is_declined():
    auth = an_authorization()
    oms_payment_capture("test", auth, AMOUNT, "c")

    refunded = oms_payment_refund("test", auth, Money(amount="700", currency="JPY"), "r")

    assert refunded.outcome == "declined" and "USD, not JPY" in refunded.message


def test_an_authorization_another_process_approved_is_known_by_its_look_only():
    auth = an_authorization()
    test_payments.forget()  # as in another Lambda container

    assert oms_payment_void("test", auth, "v").outcome == "approved"
    assert oms_payment_capture("test", auth, usd("1000.00"), "c").outcome == "approved"
    assert oms_payment_refund("test", auth, usd("2000.00"), "r").outcome == "approved"


@pytest.mark.parametrize(
    ("token", "refused", "outcomes"),
    [
        # With its capture refused there is nothing to refund either.
        ("tok_capture_decline", "capture", {"capture": "declined", "void": "approved", "refund": "declined"}),
        ("tok_void_decline", "void", {"capture": "approved", "void": "declined", "refund": "approved"}),
        ("tok_refund_decline", "refund", {"capture": "approved", "void": "approved", "refund": "declined"}),
    ],
)
def test_the_decline_tokens_authorize_but_refuse_their_one_operation(token, refused, outcomes):
    authorization = authorize(token, key="k").reference
    results = {
        "capture": oms_payment_capture("test", authorization, AMOUNT, "c"),
        "void": oms_payment_void("test", authorization, "v"),
        "refund": oms_payment_refund("test", authorization, AMOUNT, "r"),
    }

    assert authorization.startswith(authorize(key="k").reference)  # approved, like tok_approve's
    assert {op: r.outcome for op, r in results.items()} == outcomes
    assert token in results[refused].message


# --- Looking an authorization up by its key -----------------------------------------------------


def find(key: str, method: str = "test") -> PaymentResult | None:
    return test_payments.oms_payment_find_authorization(method=method, idempotency_key=key)


def test_finds_the_authorization_it_approved_under_a_key_and_nothing_under_any_other():
    made = authorize("tok_void_decline", key="ord_1:authorize:v1").reference
    authorize("tok_decline", key="ord_2:authorize:v1")
    with pytest.raises(TransientError):
        authorize("tok_flaky", key="ord_3:authorize:v1")

    assert find("ord_1:authorize:v1") == PaymentResult(
        outcome="approved", reference=made, message="test gateway: authorized under this key"
    )
    assert [find(key).outcome for key in ("ord_2:authorize:v1", "ord_3:authorize:v1", "never-asked")] == [
        "declined"
    ] * 3
    assert find("ord_1:authorize:v1", method="other") is None


def test_remembers_only_the_latest_authorizations(monkeypatch):
    monkeypatch.setattr(test_payments, "MEMORY", 2)
    for order in ("ord_1", "ord_2", "ord_3"):
        authorize(key=f"{order}:authorize:v1")

    assert [find(f"{order}:authorize:v1").outcome for order in ("ord_1", "ord_2", "ord_3")] == [
        "declined", "approved", "approved",
    ]  # fmt: skip
