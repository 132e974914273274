"""Acme Pay on account: business customers pay by invoice, up to their account's limit.

The payment token is the customer's Acme account id (`acct_` + 4 to 32 lower-case letters or
digits). An authorization is approved when the order's total is within the limit for its
currency, set by OMS_ACME_PAY_LIMITS (e.g. "GBP:2500.00,EUR:3000.00"; default "GBP:1000.00"); a
currency without a limit is declined. Acme invoices what is captured, so captures, voids and
refunds only check that they name an Acme authorization.

Every reference is derived from the operation's idempotency key, so a retry gets the reference
the first call got, as Acme's API (which dedupes on the key) would return.
"""

from __future__ import annotations

import hashlib
import os
import re
from decimal import Decimal, InvalidOperation

from core import hookimpl
from core.money import Money
from core.workflow_types import PaymentResult

METHOD = "acme_pay"
LIMITS_ENV = "OMS_ACME_PAY_LIMITS"
DEFAULT_LIMITS = "GBP:1000.00"

ACCOUNT = re.compile(r"^acct_[a-z0-9]{4,32}$")
AUTHORIZATION = re.compile(r"^acme_auth_[0-9a-f]{20}$")


def limits() -> dict[str, Decimal]:
    """The configured limit per currency. A malformed setting is an operator's error: it fails
    loudly (the order's authorization step fails) rather than approving without a limit."""
    configured = os.environ.get(LIMITS_ENV, "").strip() or DEFAULT_LIMITS
    result: dict[str, Decimal] = {}
    for part in configured.split(","):
        currency, _, amount = part.strip().partition(":")
        try:
            result[currency.strip().upper()] = Decimal(amount.strip())
        except InvalidOperation:
            raise ValueError(f"{LIMITS_ENV}: {part.strip()!r} is not CURRENCY:AMOUNT") from None
    return result


def _reference(kind: str, idempotency_key: str) -> str:
    return f"acme_{kind}_{hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]}"


def _answer(approved: bool, kind: str, idempotency_key: str, message: str) -> PaymentResult:
    return PaymentResult(
        outcome="approved" if approved else "declined", reference=_reference(kind, idempotency_key), message=message
    )


@hookimpl
def oms_payment_methods() -> list[str]:
    return [METHOD]


@hookimpl
def oms_payment_authorize(method: str, token: str, amount: Money, idempotency_key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    if not ACCOUNT.fullmatch(token):
        return _answer(False, "decl", idempotency_key, "Acme Pay: the token is not an Acme account id")
    limit = limits().get(amount.currency)
    if limit is None:
        return _answer(False, "decl", idempotency_key, f"Acme Pay: no account limit in {amount.currency}")
    if amount.amount > limit:
        return _answer(False, "decl", idempotency_key, f"Acme Pay: over the account limit of {limit} {amount.currency}")
    return _answer(True, "auth", idempotency_key, "Acme Pay: on account")


def _settles(method: str, authorization: str, amount: Money | None, kind: str, key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    if not AUTHORIZATION.fullmatch(authorization):
        return _answer(False, kind, key, "Acme Pay: not an Acme authorization")
    if amount is not None and amount.amount <= 0:
        return _answer(False, kind, key, "Acme Pay: the amount must be positive")
    return _answer(True, kind, key, f"Acme Pay: {kind}")


@hookimpl
def oms_payment_capture(method: str, authorization: str, amount: Money, idempotency_key: str) -> PaymentResult | None:
    return _settles(method, authorization, amount, "capture", idempotency_key)


@hookimpl
def oms_payment_void(method: str, authorization: str, idempotency_key: str) -> PaymentResult | None:
    return _settles(method, authorization, None, "void", idempotency_key)


@hookimpl
def oms_payment_refund(method: str, authorization: str, amount: Money, idempotency_key: str) -> PaymentResult | None:
    return _settles(method, authorization, amount, "refund", idempotency_key)
