"""Payments through the payment plugins, with every answer checked."""

from __future__ import annotations

from typing import Any

import pluggy

from core.errors import PaymentDeclined, PluginError
from core.hook_calls import call_hook
from core.money import Money
from core.workflow_types import PaymentResult


class Payments:
    def __init__(self, plugins: pluggy.PluginManager):
        self._hook = plugins.hook

    def methods(self) -> set[str]:
        return set(call_hook(self._hook.oms_payment_methods))

    def _checked(self, result: Any, hook: str, method: str) -> PaymentResult:
        if result is None:
            raise PluginError(f"no payment plugin answered {hook} for method {method!r}")
        if not isinstance(result, PaymentResult):
            raise PluginError(f"{hook} returned {type(result).__name__}, expected PaymentResult")
        return result

    def authorize(self, method: str, token: str, amount: Money, order_id: str, attempt: int, key: str) -> PaymentResult:
        """Approved or raises PaymentDeclined; TransientError passes through for a retry. `key`
        is the gateway's idempotency key: the same for retries of one authorization."""
        result = self._checked(
            call_hook(
                self._hook.oms_payment_authorize,
                method=method, token=token, amount=amount, order_id=order_id,
                idempotency_key=key, attempt=attempt,
            ),
            "oms_payment_authorize", method,
        )  # fmt: skip
        if result.outcome == "declined":
            raise PaymentDeclined(result.message or "the payment was declined")
        return result

    def capture(self, method: str, authorization: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_capture,
                method=method, authorization=authorization, amount=amount, order_id=order_id, idempotency_key=key,
            ),
            "oms_payment_capture", method,
        )  # fmt: skip

    def void(self, method: str, authorization: str, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_void,
                method=method, authorization=authorization, order_id=order_id, idempotency_key=key,
            ),
            "oms_payment_void", method,
        )  # fmt: skip

    def refund(self, method: str, authorization: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_refund,
                method=method, authorization=authorization, amount=amount, order_id=order_id, idempotency_key=key,
            ),
            "oms_payment_refund", method,
        )  # fmt: skip

    def _approved(self, result: Any, hook: str, method: str) -> PaymentResult:
        checked = self._checked(result, hook, method)
        if checked.outcome != "approved":
            # A capture, void or refund the gateway refuses needs a person: it is not retried.
            raise PluginError(f"{hook} was refused by the gateway: {checked.message or 'no reason given'}")
        return checked
