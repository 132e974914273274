"""Built-in `test` payment gateway: fixed tokens that approve, decline or fail once, for tests and the local stack.

Tokens (opaque strings; a card number is never accepted, and no token is ever echoed back):

- `tok_approve`: the authorization is approved; captures, voids and refunds on it succeed.
- `tok_decline`: the authorization is declined.
- `tok_flaky`:   the first attempt (attempt 0) raises TransientError, as a briefly unavailable
  gateway would; the workflow's retry (attempt >= 1) is approved.
- `tok_capture_decline`, `tok_void_decline`, `tok_refund_decline`: the authorization is approved,
  but every capture (void, refund) of it is declined, as a gateway that refuses the operation would.
- anything else: declined as an unknown test token.

Every reference is derived from the operation's idempotency key (`auth_`, `cap_`, `void_` or
`refund_` + the first 20 hex digits of its SHA-256), so a retry gets the same reference a real
gateway would return for a replayed idempotency key. The only state is what this process did (the
last MEMORY of each): which keys it approved an authorization under, for
oms_payment_find_authorization (a lookup in another process, another Lambda container, finds none,
as for a key never asked); what each authorization it approved holds, what was captured of it and
whether it was voided and what was refunded of it; and which keys it approved a capture or a refund
under. As a real gateway does, a capture on an authorization it voided is declined, and so is one
for more than the authorization has left to capture (nothing, once fully captured) or in another
currency; a refund of more than was captured of the authorization and not refunded yet is declined
too (a void does not take back what was captured, so that stays refundable). A capture or refund
asked again under a key it approved is approved again, however the authorization stands now. An
authorization another process approved is known only by its look: captures, voids and refunds
check that it looks like one this gateway approved. The tokens that make one of them refuse mark
the authorization's reference (`auth_<digest>_declines_capture`).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from core import hookimpl
from core.card_numbers import looks_like_card_number
from core.errors import TransientError
from core.money import Money
from core.workflow_types import PaymentResult

METHOD = "test"

APPROVE = "tok_approve"
DECLINE = "tok_decline"
FLAKY = "tok_flaky"
CAPTURE_DECLINE = "tok_capture_decline"
VOID_DECLINE = "tok_void_decline"
REFUND_DECLINE = "tok_refund_decline"

AUTHORIZATION = "auth"
DECLINED_AUTHORIZATION = "decl"
CAPTURE = "cap"
VOID = "void"
REFUND = "refund"

# Only approved authorizations carry this prefix, so a declined one cannot be captured. The
# suffix names the one operation the authorization's token makes the gateway refuse.
_AUTHORIZATION_REFERENCE = re.compile(r"^auth_[0-9a-f]{20}(?:_declines_(capture|void|refund))?$")
_DECLINES = {CAPTURE_DECLINE: "capture", VOID_DECLINE: "void", REFUND_DECLINE: "refund"}

MEMORY = 10_000
_authorized: OrderedDict[str, str] = OrderedDict()  # idempotency key -> the authorization approved under it


@dataclass
class _Held:
    """What an authorization this process approved holds: its amount, what was captured of it,
    whether it was voided, and what was refunded of what was captured."""

    amount: Money
    captured: Money
    refunded: Money
    voided: bool = False


_held: OrderedDict[str, _Held] = OrderedDict()  # authorization -> what it holds
_captured: OrderedDict[str, str] = OrderedDict()  # idempotency key -> the authorization captured under it
_refunded: OrderedDict[str, str] = OrderedDict()  # idempotency key -> the authorization refunded under it
# A gateway decides one operation on an authorization at a time; the local stack runs its functions
# in threads of one process, so two captures (or refunds) under one key, or on one authorization,
# must not both read what it holds before either records what it did.
_lock = threading.Lock()


def forget() -> None:
    """Forget everything this process did (tests that reuse order ids start clean)."""
    _authorized.clear()
    _held.clear()
    _captured.clear()
    _refunded.clear()


def _remember(memory: OrderedDict, key: str, value: object) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MEMORY:
        memory.popitem(last=False)


def reference(kind: str, idempotency_key: str) -> str:
    """The reference of one operation: the same for every retry with the same idempotency key."""
    if not idempotency_key or not idempotency_key.strip():
        # Without a key a retry could not be recognised: that is a bug in the caller, not a decline.
        raise ValueError("the test gateway needs a non-empty idempotency_key")
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:20]
    return f"{kind}_{digest}"


def _approved(kind: str, idempotency_key: str, message: str) -> PaymentResult:
    return PaymentResult(outcome="approved", reference=reference(kind, idempotency_key), message=message)


def _declined(kind: str, idempotency_key: str, message: str) -> PaymentResult:
    return PaymentResult(outcome="declined", reference=reference(kind, idempotency_key), message=message)


def _unknown_authorization(authorization: str) -> bool:
    return not isinstance(authorization, str) or not _AUTHORIZATION_REFERENCE.fullmatch(authorization)


def _declines(authorization: str, kind: str) -> bool:
    found = _AUTHORIZATION_REFERENCE.fullmatch(authorization)
    return found is not None and found.group(1) == kind


@hookimpl
def oms_payment_methods() -> list[str]:
    return [METHOD]


@hookimpl
def oms_payment_authorize(
    method: str, token: str, amount: Money, idempotency_key: str, attempt: int
) -> PaymentResult | None:
    if method != METHOD:
        return None
    result = _authorize(token, amount, idempotency_key, attempt)
    if result.outcome == "approved":
        with _lock:
            _remember(_authorized, idempotency_key, result.reference)
            if result.reference not in _held:  # a replayed key keeps what its authorization holds
                nothing = Money.zero(amount.currency)
                _remember(_held, result.reference, _Held(amount=amount, captured=nothing, refunded=nothing))
    return result


@hookimpl
def oms_payment_find_authorization(method: str, idempotency_key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    made = _authorized.get(idempotency_key)
    if made is None:
        return _declined(DECLINED_AUTHORIZATION, idempotency_key, "test gateway: nothing authorized under this key")
    return PaymentResult(outcome="approved", reference=made, message="test gateway: authorized under this key")


def _authorize(token: str, amount: Money, idempotency_key: str, attempt: int) -> PaymentResult:
    decline = DECLINED_AUTHORIZATION
    if amount.is_negative():
        return _declined(decline, idempotency_key, "the amount to authorize must not be negative")
    if token == APPROVE:
        return _approved(AUTHORIZATION, idempotency_key, "test gateway: approved")
    if token in _DECLINES:
        marked = f"{reference(AUTHORIZATION, idempotency_key)}_declines_{_DECLINES[token]}"
        return PaymentResult(outcome="approved", reference=marked, message=f"test gateway: approved ({token})")
    if token == DECLINE:
        return _declined(decline, idempotency_key, "test gateway: declined (tok_decline always is)")
    if token == FLAKY:
        if attempt < 1:
            raise TransientError("test gateway: temporarily unavailable (tok_flaky fails its first attempt)")
        return _approved(AUTHORIZATION, idempotency_key, f"test gateway: approved on attempt {attempt}")
    if looks_like_card_number(token):
        # Said without repeating the value: a card number must not reach a log or the history.
        return _declined(decline, idempotency_key, "test gateway: a card number is not a payment token")
    known = f"{APPROVE}, {DECLINE}, {FLAKY}, {CAPTURE_DECLINE}, {VOID_DECLINE} or {REFUND_DECLINE}"
    return _declined(decline, idempotency_key, f"test gateway: unknown test token; use {known}")


@hookimpl
def oms_payment_capture(method: str, authorization: str, amount: Money, idempotency_key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    if _unknown_authorization(authorization):
        return _declined(CAPTURE, idempotency_key, "test gateway: unknown authorization")
    if amount.amount <= 0:
        return _declined(CAPTURE, idempotency_key, "test gateway: the amount to capture must be positive")
    if _declines(authorization, "capture"):
        return _declined(CAPTURE, idempotency_key, f"test gateway: capture declined ({CAPTURE_DECLINE})")
    with _lock:
        if _captured.get(idempotency_key) == authorization:
            return _approved(CAPTURE, idempotency_key, "test gateway: captured")  # the capture made under this key
        held = _held.get(authorization)
        if held is not None:
            refused = _capture_refused(held, amount)
            if refused:
                return _declined(CAPTURE, idempotency_key, f"test gateway: {refused}")
            held.captured = held.captured + amount
        _remember(_captured, idempotency_key, authorization)
    return _approved(CAPTURE, idempotency_key, "test gateway: captured")


def _capture_refused(held: _Held, amount: Money) -> str:
    """Why a real gateway would refuse to capture `amount` of the authorization that holds `held`;
    empty when it would not."""
    if held.voided:
        return "the authorization was voided"
    if amount.currency != held.amount.currency:
        return f"the authorization is in {held.amount.currency}, not {amount.currency}"
    left = held.amount - held.captured
    if amount.amount > left.amount:
        return f"the authorization has {left.amount} {left.currency} left to capture, not {amount.amount}"
    return ""


@hookimpl
def oms_payment_void(method: str, authorization: str, idempotency_key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    if _unknown_authorization(authorization):
        return _declined(VOID, idempotency_key, "test gateway: unknown authorization")
    if _declines(authorization, "void"):
        return _declined(VOID, idempotency_key, f"test gateway: void declined ({VOID_DECLINE})")
    held = _held.get(authorization)
    if held is not None:
        held.voided = True  # what is left to capture is released; what was captured stays
    return _approved(VOID, idempotency_key, "test gateway: voided")


@hookimpl
def oms_payment_refund(method: str, authorization: str, amount: Money, idempotency_key: str) -> PaymentResult | None:
    if method != METHOD:
        return None
    if _unknown_authorization(authorization):
        return _declined(REFUND, idempotency_key, "test gateway: unknown authorization")
    if amount.amount <= 0:
        return _declined(REFUND, idempotency_key, "test gateway: the amount to refund must be positive")
    if _declines(authorization, "refund"):
        return _declined(REFUND, idempotency_key, f"test gateway: refund declined ({REFUND_DECLINE})")
    with _lock:
        if _refunded.get(idempotency_key) == authorization:
            return _approved(REFUND, idempotency_key, "test gateway: refunded")  # the refund made under this key
        held = _held.get(authorization)
        if held is not None:
            refused = _refund_refused(held, amount)
            if refused:
                return _declined(REFUND, idempotency_key, f"test gateway: {refused}")
            held.refunded = held.refunded + amount
        _remember(_refunded, idempotency_key, authorization)
    return _approved(REFUND, idempotency_key, "test gateway: refunded")


def _refund_refused(held: _Held, amount: Money) -> str:
    """Why a real gateway would refuse to refund `amount` of what was captured under the
    authorization that holds `held`; empty when it would not."""
    if amount.currency != held.amount.currency:
        return f"the authorization is in {held.amount.currency}, not {amount.currency}"
    left = held.captured - held.refunded
    if amount.amount > left.amount:
        return f"the authorization has {left.amount} {left.currency} captured and not refunded, not {amount.amount}"
    return ""
