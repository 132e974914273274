"""Payments through the payment plugins, with every answer checked."""

from __future__ import annotations

from typing import Any

import pluggy

from core.errors import PaymentDeclined, PluginError, TransientError
from core.money import Money
from core.workflow_types import PaymentResult


def _call(hook: Any, name: str, **kwargs: Any) -> Any:
    try:
        return hook(**kwargs)
    except TransientError:
        raise
    except Exception as exc:
        raise PluginError(f"a payment plugin failed in {name}: {type(exc).__name__}") from exc


class Payments:
    def __init__(self, plugins: pluggy.PluginManager):
        self._hook = plugins.hook

    def methods(self) -> set[str]:
        names: set[str] = set()
        for answer in _call(self._hook.oms_payment_methods, "oms_payment_methods"):
            if answer is None:
                continue
            if not isinstance(answer, list | tuple) or not all(isinstance(m, str) for m in answer):
                raise PluginError("oms_payment_methods returned something other than a list of names")
            names.update(answer)
        return names

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
            _call(
                self._hook.oms_payment_authorize, "oms_payment_authorize",
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
            _call(
                self._hook.oms_payment_capture, "oms_payment_capture",
                method=method, authorization=authorization, amount=amount, order_id=order_id, idempotency_key=key,
            ),
            "oms_payment_capture", method,
        )  # fmt: skip

    def void(self, method: str, authorization: str, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            _call(
                self._hook.oms_payment_void, "oms_payment_void",
                method=method, authorization=authorization, order_id=order_id, idempotency_key=key,
            ),
            "oms_payment_void", method,
        )  # fmt: skip

    def refund(self, method: str, authorization: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            _call(
                self._hook.oms_payment_refund, "oms_payment_refund",
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
