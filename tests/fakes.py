"""Test doubles: the in-memory ports (from the plugin author's kit, plugins.testing.memory) under
the names the tests use, and a spy on the built-in `test` payment gateway."""

from __future__ import annotations

from decimal import Decimal

from core import hookimpl
from core.money import Money
from plugins.testing.memory import InMemoryCatalog, InMemoryInventory, InMemoryLabels, InMemoryOrders

FakeOrders = InMemoryOrders
FakeCatalog = InMemoryCatalog
FakeInventory = InMemoryInventory
FakeLabels = InMemoryLabels


class PaymentSpy:
    """A plugin that watches every payment call on its way to the built-in `test` gateway (which
    keeps no state) and records what the gateway approved. A call repeating an idempotency key
    already seen is a retry the gateway answers from its record, not a new operation, so it is not
    recorded again."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.authorized: list[str] = []
        self.voided: list[str] = []
        self.captured: list[tuple[str, Money, str]] = []

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

    def captured_total(self) -> Decimal:
        return sum((amount.amount for _, amount, _ in self.captured), Decimal(0))
