"""acme_pay: on-account payments up to a configured limit, through the OMS's payment checks."""

import pytest
from oms_acme import pay

from core.errors import PaymentDeclined, PaymentRefused, PluginError
from plugins import test_payments
from plugins.testing import money, plugin_host

ACCOUNT = "acct_bigco42"


@pytest.fixture
def host():
    return plugin_host(pay, test_payments)


def test_acme_pay_is_a_payment_method_next_to_the_others(host):
    assert host.payment_methods() == {"acme_pay", "test"}


def test_an_order_within_the_default_limit_is_authorized_and_settles(host):
    authorized = host.authorize("acme_pay", ACCOUNT, money("999.99", "GBP"))

    assert authorized.reference.startswith("acme_auth_")
    assert host.capture("acme_pay", authorized.reference, money("600.00", "GBP")).outcome == "approved"
    assert host.refund("acme_pay", authorized.reference, money("50.00", "GBP")).outcome == "approved"
    assert host.void("acme_pay", authorized.reference).outcome == "approved"


def test_a_retry_gets_the_reference_the_first_call_got(host):
    first = host.authorize("acme_pay", ACCOUNT, money("10.00", "GBP"), idempotency_key="ord_1:authorize:v1")
    again = host.authorize("acme_pay", ACCOUNT, money("10.00", "GBP"), idempotency_key="ord_1:authorize:v1", attempt=1)

    assert first.reference == again.reference


@pytest.mark.parametrize(
    ("token", "amount", "why"),
    [
        (ACCOUNT, money("1000.01", "GBP"), "over the account limit"),
        (ACCOUNT, money("10.00", "USD"), "no account limit in USD"),
        ("tok_approve", money("10.00", "GBP"), "not an Acme account"),
    ],
)
def test_what_the_account_does_not_cover_is_declined(host, token, amount, why):
    with pytest.raises(PaymentDeclined, match=why):
        host.authorize("acme_pay", token, amount)


def test_limits_come_from_the_deployments_setting(host, monkeypatch):
    monkeypatch.setenv(pay.LIMITS_ENV, "GBP:5000.00, USD:20.00")

    assert host.authorize("acme_pay", ACCOUNT, money("4000.00", "GBP")).outcome == "approved"
    assert host.authorize("acme_pay", ACCOUNT, money("20.00", "USD"), idempotency_key="usd").outcome == "approved"


def test_a_malformed_setting_fails_loudly_instead_of_approving(host, monkeypatch):
    monkeypatch.setenv(pay.LIMITS_ENV, "GBP=5000")

    with pytest.raises(PluginError):
        host.authorize("acme_pay", ACCOUNT, money("10.00", "GBP"))


def test_a_capture_of_something_acme_did_not_authorize_is_refused(host):
    with pytest.raises(PaymentRefused, match="not an Acme authorization"):
        host.capture("acme_pay", "auth_0123456789abcdef0123", money("10.00", "GBP"))


def test_other_methods_are_left_to_their_plugins(host):
    assert host.authorize("test", "tok_approve", money("10.00", "GBP")).reference.startswith("auth_")
    assert pay.oms_payment_authorize(method="test", token=ACCOUNT, amount=money("1.00", "GBP"),
                                     idempotency_key="k") is None  # fmt: skip
