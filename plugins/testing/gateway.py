"""A fake payment gateway plugin that records every call and answers as a test tells it to.

    gateway = RecordingGateway()            # method "fake"; approves everything
    gateway.decline("capture", "insufficient funds")
    gateway.fail_transiently("authorize", times=1)
    host = plugin_host(my_plugin, gateway)
    ...
    assert [call.operation for call in gateway.calls] == ["authorize", "authorize", "capture"]

It answers only for its own `method`, like a real payment plugin, and keeps no state beyond its
record: a reference is derived from the operation's idempotency key, so a retry with the same
key gets the same reference, as a real gateway replaying a request would answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from core import hookimpl
from core.errors import TransientError
from core.money import Money
from core.workflow_types import PaymentResult

Operation = Literal["authorize", "capture", "void", "refund"]
OPERATIONS: tuple[Operation, ...] = ("authorize", "capture", "void", "refund")


@dataclass(frozen=True)
class PaymentCall:
    """One call the OMS made to the gateway, and how the gateway answered it."""

    operation: Operation
    method: str
    order_id: str
    idempotency_key: str
    amount: Money | None  # None for a void
    authorization: str | None  # None for an authorize
    token: str | None  # only for an authorize
    attempt: int | None  # only for an authorize
    outcome: Literal["approved", "declined", "transient_error"]
    reference: str | None


class RecordingGateway:
    """A payment plugin for `method` that approves every operation unless told otherwise."""

    def __init__(self, method: str = "fake"):
        self.method = method
        self.calls: list[PaymentCall] = []
        self._declines: dict[Operation, str] = {}
        self._transient: dict[Operation, int] = {}

    # --- What the test tells it -----------------------------------------------------------------
    def decline(self, operation: Operation, message: str = "declined by the recording gateway") -> None:
        """Decline every later `operation` (until approve() is called)."""
        self._declines[_operation(operation)] = message

    def approve(self, operation: Operation) -> None:
        self._declines.pop(_operation(operation), None)

    def fail_transiently(self, operation: Operation, times: int = 1) -> None:
        """Raise TransientError for the next `times` calls of `operation`, as a gateway that is
        briefly unavailable does; the calls after those are answered as usual."""
        self._transient[_operation(operation)] = times

    # --- What the test reads ------------------------------------------------------------------
    def calls_to(self, operation: Operation) -> list[PaymentCall]:
        return [call for call in self.calls if call.operation == operation]

    # --- The hooks ------------------------------------------------------------------------------
    @hookimpl
    def oms_payment_methods(self) -> list[str]:
        return [self.method]

    @hookimpl
    def oms_payment_authorize(
        self, method: str, token: str, amount: Money, order_id: str, idempotency_key: str, attempt: int
    ) -> PaymentResult | None:
        if method != self.method:
            return None
        return self._answer("authorize", order_id, idempotency_key, amount=amount, token=token, attempt=attempt)

    @hookimpl
    def oms_payment_capture(
        self, method: str, authorization: str, amount: Money, order_id: str, idempotency_key: str
    ) -> PaymentResult | None:
        if method != self.method:
            return None
        return self._answer("capture", order_id, idempotency_key, amount=amount, authorization=authorization)

    @hookimpl
    def oms_payment_void(
        self, method: str, authorization: str, order_id: str, idempotency_key: str
    ) -> PaymentResult | None:
        if method != self.method:
            return None
        return self._answer("void", order_id, idempotency_key, authorization=authorization)

    @hookimpl
    def oms_payment_refund(
        self, method: str, authorization: str, amount: Money, order_id: str, idempotency_key: str
    ) -> PaymentResult | None:
        if method != self.method:
            return None
        return self._answer("refund", order_id, idempotency_key, amount=amount, authorization=authorization)

    def _answer(
        self,
        operation: Operation,
        order_id: str,
        idempotency_key: str,
        *,
        amount: Money | None = None,
        authorization: str | None = None,
        token: str | None = None,
        attempt: int | None = None,
    ) -> PaymentResult:
        def record(outcome: Literal["approved", "declined", "transient_error"], reference: str | None) -> None:
            self.calls.append(
                PaymentCall(operation, self.method, order_id, idempotency_key, amount, authorization, token, attempt,
                            outcome, reference)
            )  # fmt: skip

        if self._transient.get(operation, 0) > 0:
            self._transient[operation] -= 1
            record("transient_error", None)
            raise TransientError(f"recording gateway: {operation} temporarily unavailable")
        reference = f"{operation}_{hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]}"
        if operation in self._declines:
            record("declined", reference)
            return PaymentResult(outcome="declined", reference=reference, message=self._declines[operation])
        record("approved", reference)
        return PaymentResult(outcome="approved", reference=reference, message=f"recording gateway: {operation}")


def _operation(operation: str) -> Operation:
    if operation not in OPERATIONS:
        raise ValueError(f"unknown payment operation {operation!r}: one of {', '.join(OPERATIONS)}")
    return operation  # type: ignore[return-value]
