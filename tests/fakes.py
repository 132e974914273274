"""Test doubles: the in-memory ports (from the plugin author's kit, plugins.testing.memory) under
the names the tests use, and a spy on the built-in `test` payment gateway."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

from core import hookimpl
from core.errors import NoPaymentPlugin, PaymentGatewayUnavailable, PaymentPluginFailed, TransientError
from core.money import Money
from core.ports import ReturnWorkflowStarter
from core.return_models import Return
from core.returns import RefundNotDone, Returns
from core.webhooks import DeliveryMessage, DeliveryQueue
from core.workflow_types import PaymentResult
from plugins import test_payments
from plugins.testing.memory import (
    InMemoryBackorders,
    InMemoryCatalog,
    InMemoryInventory,
    InMemoryLabels,
    InMemoryOrders,
    InMemoryReturns,
)

FakeOrders = InMemoryOrders
FakeCatalog = InMemoryCatalog
FakeInventory = InMemoryInventory
FakeLabels = InMemoryLabels
FakeReturns = InMemoryReturns
FakeBackorders = InMemoryBackorders


class PaymentSpy:
    """A plugin that watches every payment call on its way to the built-in `test` gateway and
    records what the gateway approved. A call repeating an idempotency key
    already seen is a retry the gateway answers from its record, not a new operation, so it is not
    recorded again."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.authorized: list[str] = []
        self.voided: list[str] = []
        self.captured: list[tuple[str, Money, str]] = []
        self.refunded: list[tuple[str, Money, str]] = []

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self, method: str, amount: Money):
        result = yield
        if result is not None and result.outcome == "approved":
            self.authorized.append(result.reference)
        return result

    def _new(self, key: str) -> bool:
        seen = key in self.keys
        self.keys.add(key)
        return not seen

    @hookimpl(wrapper=True)
    def oms_payment_void(self, method: str, authorization: str, idempotency_key: str):
        result = yield
        if result is not None and result.outcome == "approved" and self._new(idempotency_key):
            self.voided.append(authorization)
        return result

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, method: str, authorization: str, amount: Money, idempotency_key: str):
        result = yield
        if result is not None and result.outcome == "approved" and self._new(idempotency_key):
            self.captured.append((authorization, amount, idempotency_key))
        return result

    @hookimpl(wrapper=True)
    def oms_payment_refund(self, method: str, authorization: str, amount: Money, idempotency_key: str):
        result = yield
        if result is not None and result.outcome == "approved" and self._new(idempotency_key):
            self.refunded.append((authorization, amount, idempotency_key))
        return result

    def captured_total(self) -> Decimal:
        return sum((amount.amount for _, amount, _ in self.captured), Decimal(0))


class ScriptedGateway:
    """A payment plugin that runs ahead of the `test` gateway and, per operation, plays a script:
    each call takes the next outcome, the last one repeating. `approve` hands the call on to the
    `test` gateway (so references stay real), `refuse` answers declined, `transient` raises
    TransientError and `timeout` raises TimeoutError, as a plugin whose HTTP call timed out would.
    `calls` keeps (operation, idempotency_key) of every call, to check retries reuse the key.
    With `keeps_answers`, a `refuse` of a key the `test` gateway approved an authorization, a
    capture or a refund under hands the call on instead: a gateway answers a key it acted under
    with what it did (the plugin contract), which a test whose answers are lost relies on."""

    def __init__(self, *, keeps_answers: bool = False) -> None:
        self.scripts: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.keeps_answers = keeps_answers

    def script(self, operation: str, *outcomes: str) -> None:
        self.scripts[operation] = list(outcomes)

    def _play(self, operation: str, idempotency_key: str) -> PaymentResult | None:
        self.calls.append((operation, idempotency_key))
        script = self.scripts.get(operation) or ["approve"]
        outcome = script.pop(0) if len(script) > 1 else script[0]
        if outcome == "transient":
            raise TransientError(f"scripted: the gateway is briefly unavailable for {operation}")
        if outcome == "timeout":
            raise TimeoutError(f"scripted: the gateway did not answer the {operation} in time")
        acted = {"authorize": test_payments._authorized, "capture": test_payments._captured,
                 "refund": test_payments._refunded}.get(operation, {})  # fmt: skip
        if outcome == "refuse" and self.keeps_answers and idempotency_key in acted:
            return None
        if outcome == "refuse":
            message = f"scripted: {operation} refused"
            return PaymentResult(outcome="declined", reference=f"refused_{operation}", message=message)
        assert outcome == "approve", outcome
        return None

    def keys(self, operation: str) -> list[str]:
        return [key for op, key in self.calls if op == operation]

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, idempotency_key: str) -> PaymentResult | None:
        return self._play("authorize", idempotency_key)

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, idempotency_key: str) -> PaymentResult | None:
        return self._play("capture", idempotency_key)

    @hookimpl(tryfirst=True)
    def oms_payment_void(self, idempotency_key: str) -> PaymentResult | None:
        return self._play("void", idempotency_key)

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, idempotency_key: str) -> PaymentResult | None:
        return self._play("refund", idempotency_key)


class AnswersLost:
    """A payment plugin that wraps every call to the gateway and, for the next `times` calls of an
    operation, lets the gateway do it (the `test` gateway authorizes, captures, voids or refunds,
    and PaymentSpy records it) and then raises TimeoutError, as a plugin whose HTTP call timed out
    reading the answer after the gateway had acted would. Registered after PaymentSpy, so it wraps
    the spy: the spy sees what the gateway did, the OMS sees only the timeout."""

    def __init__(self) -> None:
        self.left: dict[str, int] = {}

    def lose(self, operation: str, times: int = 1) -> None:
        self.left[operation] = times

    def _answer(self, operation: str, result: PaymentResult | None) -> PaymentResult | None:
        if self.left.get(operation, 0) > 0:
            self.left[operation] -= 1
            raise TimeoutError(f"lost: the gateway's answer to the {operation} never arrived")
        return result

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self):
        return self._answer("authorize", (yield))

    @hookimpl(wrapper=True)
    def oms_payment_capture(self):
        return self._answer("capture", (yield))

    @hookimpl(wrapper=True)
    def oms_payment_void(self):
        return self._answer("void", (yield))

    @hookimpl(wrapper=True)
    def oms_payment_refund(self):
        return self._answer("refund", (yield))


def run_return_workflow(returns: Returns, return_id: str, actor: str) -> Return:
    """The returns workflow's steps after a receipt, at once and in its state machine's order
    (infra/return_workflow.asl.json: Receive, Restock, RecordOnOrder, Refund, Exchange): restock,
    the order's count, refund, exchange, each skipping what is done. Receive's check is restock's
    own first read (a return not received raises ReturnNotReceived there). A refund not done yet
    (refused, the gateway still unavailable, the payment plugin failing, or a pending one no
    payment plugin takes), which the state machine retries and then records stuck, leaves the
    return `received`, its refund pending under its key: running this again finishes it."""
    returns.restock(return_id)
    returns.record_on_order(return_id, actor)
    try:
        returns.refund(return_id, actor)
        return returns.exchange(return_id, actor)
    except (RefundNotDone, PaymentGatewayUnavailable, PaymentPluginFailed, NoPaymentPlugin):
        return returns.get(return_id)


class InlineReturnWorkflow(ReturnWorkflowStarter):
    """The returns workflow's steps run at once, in the caller (run_return_workflow): for
    the in-process API, which has no state machine. `returns` is the service to run them on (given
    here, or set once the service that starts this workflow is built)."""

    def __init__(self, returns: Returns | None = None) -> None:
        self.returns = returns
        self.started: list[str] = []

    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        assert self.returns is not None, "give the InlineReturnWorkflow its Returns service"
        self.started.append(return_id)
        run_return_workflow(self.returns, return_id, actor="returns-workflow")


Q = TypeVar("Q", bound=DeliveryQueue)


def refusing_once(queue: type[Q]) -> type[Q]:
    """`queue`, a webhook delivery queue, whose first send raises ConnectionError (SQS refused it)
    and every later one sends as usual."""

    class RefusingOnce(queue):  # type: ignore[valid-type,misc]
        refused = False

        def send(self, message: DeliveryMessage, delay_seconds: int) -> Any:
            if not self.refused:
                self.refused = True
                raise ConnectionError("SQS unavailable")
            return super().send(message, delay_seconds)

    return RefusingOnce
