"""Payments through the payment plugins, with every answer checked and transient failures retried."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import pluggy

from core.errors import (
    NoPaymentPlugin,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    PluginError,
    PluginUnavailable,
    TransientError,
)
from core.hook_calls import call_hook
from core.money import Money
from core.workflow_types import PaymentResult


class Failure(NamedTuple):
    """One failed attempt at the gateway: what the order's history records."""

    operation: str  # authorize, capture, void or refund
    attempt: int  # 1 for the first
    # transient, refused, no_plugin (NoPaymentPlugin: nobody asked the gateway) or plugin_error (the
    # payment plugin raised, or answered what the core cannot take: PluginError)
    kind: str
    message: str


OnFailure = Callable[[Failure], None]
R = TypeVar("R")

logger = logging.getLogger(__name__)


class Payments:
    def __init__(
        self,
        plugins: pluggy.PluginManager,
        *,
        attempts: int = 3,
        backoff_seconds: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._hook = plugins.hook
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._sleep = sleep

    def methods(self) -> set[str]:
        return set(call_hook(self._hook.oms_payment_methods))

    def retried(self, operation: str, call: Callable[[int], R], on_failure: OnFailure) -> R:
        """`call(attempt)` (attempt 0, 1, ...) until the gateway answers, at most `attempts` times
        with a short backoff, telling `on_failure` of every failed attempt. Raises
        PaymentGatewayUnavailable when every attempt failed transiently, and the gateway's refusal
        (PaymentRefused, PaymentDeclined) at once: asking again would be refused again; so is
        NoPaymentPlugin, a failure of its own kind (`no_plugin`), since the gateway said nothing; and
        so is a PluginError (kind `plugin_error`: the plugin raised, or its answer was not one the
        core can take), as PaymentPluginFailed naming `operation`: nothing is recorded as moved, and
        asking again later may or may not work (a plugin's bug stays until it is fixed). A plugin
        that did not load (PluginUnavailable) asked nobody about this order: it passes unrecorded."""
        for attempt in range(self._attempts):
            try:
                return call(attempt)
            except TransientError as error:
                on_failure(Failure(operation, attempt + 1, "transient", error.message))
                if attempt + 1 == self._attempts:
                    raise PaymentGatewayUnavailable(
                        f"the payment gateway did not complete the {operation} after {self._attempts} attempts; "
                        "nothing was recorded as done, and repeating the request is safe",
                        # The plugin and hook (call_hook's details), as a payment_plugin_error names them.
                        details=[
                            {"operation": operation, "attempts": self._attempts, "message": error.message}
                            | (error.details[0] if error.details else {})
                        ],
                    ) from error
                self._sleep(self._backoff * 2**attempt)
            except NoPaymentPlugin as unanswered:
                on_failure(Failure(operation, attempt + 1, "no_plugin", unanswered.gateway_message))
                raise
            except PaymentRefused as refused:
                on_failure(Failure(operation, attempt + 1, "refused", refused.gateway_message))
                raise
            except PaymentDeclined as declined:
                on_failure(Failure(operation, attempt + 1, "refused", declined.message))
                raise
            except PluginUnavailable:
                raise
            except PluginError as failed:
                on_failure(Failure(operation, attempt + 1, "plugin_error", failed.message))
                raise PaymentPluginFailed(
                    operation, failed.message, details=failed.details, logged=failed.logged
                ) from failed
        raise AssertionError("unreachable")

    @staticmethod
    def _as_asked(asked: Money) -> Callable[[PaymentResult], PaymentResult]:
        """Accepts a payment plugin's answer unless it approves another amount than `asked` (a
        partial authorization, a capture in another currency): taken for the operation asked, it
        would record money as moved that the gateway did not move."""

        def accept(result: PaymentResult) -> PaymentResult:
            said = result.amount
            if result.outcome == "approved" and said is not None and said != asked:
                raise PluginError(
                    f"approved {said.amount} {said.currency} where {asked.amount} {asked.currency} was asked"
                )
            return result

        return accept

    def _checked(self, result: Any, hook: str, method: str) -> PaymentResult:
        if result is None:
            raise PluginError(f"no payment plugin answered {hook} for method {method!r}")
        if not isinstance(result, PaymentResult):
            raise PluginError(f"{hook} returned {type(result).__name__}, expected PaymentResult")
        return result

    def authorize(self, method: str, token: str, amount: Money, order_id: str, attempt: int, key: str) -> PaymentResult:
        """Approved or raises PaymentDeclined; TransientError passes through for a retry. `key`
        is the gateway's idempotency key: the same for retries of one authorization. Raises
        NoPaymentPlugin when no payment plugin takes `method` (_answered)."""
        result = self._checked(
            self._answered(
                call_hook(
                    self._hook.oms_payment_authorize, self._as_asked(amount),
                    method=method, token=token, amount=amount, order_id=order_id,
                    idempotency_key=key, attempt=attempt,
                ),
                "authorize", method, order_id,
            ),
            "oms_payment_authorize", method,
        )  # fmt: skip
        if result.outcome == "declined":
            raise PaymentDeclined(result.message or "the payment was declined")
        return result

    def find_authorization(self, method: str, order_id: str, key: str) -> PaymentResult | None:
        """What the gateway authorized under `key`: approved with its reference, declined when
        nothing was; None when the payment plugin that takes `method` does not answer
        oms_payment_find_authorization (it is optional). NoPaymentPlugin when no payment plugin
        takes `method` (_answered): nobody could say, so the key is asked about again once the
        plugin is back. TransientError passes through for a retry."""
        result = call_hook(
            self._hook.oms_payment_find_authorization, method=method, order_id=order_id, idempotency_key=key
        )
        if result is None and method not in self.methods():
            self._answered(result, "void", method, order_id)
        return None if result is None else self._checked(result, "oms_payment_find_authorization", method)

    def capture(self, method: str, authorization: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_capture, self._as_asked(amount),
                method=method, authorization=authorization, amount=amount, order_id=order_id, idempotency_key=key,
            ),
            "capture", method, order_id,
        )  # fmt: skip

    def void(self, method: str, authorization: str, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_void,
                method=method, authorization=authorization, order_id=order_id, idempotency_key=key,
            ),
            "void", method, order_id,
        )  # fmt: skip

    def refund(self, method: str, authorization: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        return self._approved(
            call_hook(
                self._hook.oms_payment_refund, self._as_asked(amount),
                method=method, authorization=authorization, amount=amount, order_id=order_id, idempotency_key=key,
            ),
            "refund", method, order_id,
        )  # fmt: skip

    def _approved(self, result: Any, operation: str, method: str, order_id: str) -> PaymentResult:
        """Approved, or PaymentRefused: the gateway refused, or no payment plugin takes `method`
        (NoPaymentPlugin)."""
        checked = self._checked(self._answered(result, operation, method, order_id), f"oms_payment_{operation}", method)
        if checked.outcome != "approved":
            raise PaymentRefused(operation, checked.message or "no reason given")
        return checked

    @staticmethod
    def _answered(result: Any, operation: str, method: str, order_id: str) -> Any:
        """`result`, unless no payment plugin answered: the plugin of a method orders still use was
        removed (or lost its configuration). Nothing moved at the gateway now, as when it refuses:
        NoPaymentPlugin, a PaymentRefused each caller records as a failed attempt (kind
        `no_plugin`; a cancel still answers 200, the payment honestly unchanged), which settles no
        request an earlier call left standing (that one may have reached the gateway through the
        plugin), and an ERROR log, so that a person settles the payment by hand or brings the
        plugin back."""
        if result is not None:
            return result
        logger.error(
            "no payment plugin takes the payment method of an order: its %s was not made", operation,
            extra={"order_id": order_id, "payment_method": method, "operation": operation},
        )  # fmt: skip
        raise NoPaymentPlugin(operation, method)
