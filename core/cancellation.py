"""Cancel an order: record the cancel, release the stock it holds, then void its authorization."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core import payment_keys
from core.errors import PaymentGatewayUnavailable, PaymentRefused, TransientError
from core.ids import reservation_key
from core.models import Location, Order
from core.order_changes import failure_recorder, modify
from core.payments import Payments
from core.ports import CatalogRepository, InventoryRepository, OrderRepository
from core.status import TERMINAL, OrderStatus, PaymentStatus
from core.workflow_types import PaymentResult

if TYPE_CHECKING:
    from core.exchange_credit import ExchangeCredits


def holding_locations(order: Order, network: list[Location]) -> list[str]:
    """Where `order` may hold stock: every location of `network`, and wherever the order records
    units. The network an API container reads is cached for seconds (CachedCatalog) while the
    workflow reads it fresh, so a location added meanwhile may hold the order's units unseen."""
    recorded = [a.location_id for a in order.allocations] + [s.location_id for s in order.shipments]
    return sorted({loc.location_id for loc in network} | set(recorded))


class Cancellation:
    """Used by `POST /orders/{id}/cancel` and by the workflow's compensation alike."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        clock: Callable[[], datetime],
        credits: ExchangeCredits | None = None,
    ):
        self._orders = orders
        # None: an OMS without returns, whose orders are never an exchange's replacement.
        self._credits = credits
        self._catalog = catalog
        self._inventory = inventory
        self._payments = payments
        self._clock = clock

    def cancel(
        self,
        order_id: str,
        reason: str,
        actor: str,
        *,
        channel: str | None = None,
        detail: dict[str, Any] | None = None,
        closed_ok: bool = False,
        retry_void_later: bool = False,
        spare_held: bool = False,
    ) -> Order:
        """End the order cancelled, release every reservation, void its authorization; an
        exchange's replacement gives its credit back on the original order (ExchangeCredits). Refused
        (InvalidTransition, 409) once anything has shipped; with `closed_ok` an order already closed
        otherwise (payment_failed) is left as it is.

        The cancel is a business fact: it is written first, conditional on what was read, and
        only then are stock and payment touched, so a cancel that loses a race to a shipment has
        changed nothing. The payment shows `voided` only after the gateway approved the void; a
        void that is refused or keeps failing leaves it `authorized`, with each failed attempt in
        the history. A cancel of a cancelled order runs the clean-up again (every part is
        idempotent): it finishes an interrupted cancel and retries a failed void. With
        `retry_void_later` a void or a credit's refund that keeps failing raises TransientError (the
        workflow's step is retried); otherwise the cancelled order is returned. With `spare_held`
        an order on hold is left as it is (the workflow's own cancel: a person holds it, and its
        release starts the workflow again)."""

        def decide(order: Order):
            if order.status is OrderStatus.CANCELLED or (closed_ok and order.status in TERMINAL):
                return None
            if spare_held and order.status is OrderStatus.ON_HOLD:
                return None
            return order.cancel(reason, at=self._clock(), actor=actor, detail=detail)

        order = modify(self._orders, order_id, decide, channel=channel)
        if order.status is not OrderStatus.CANCELLED:
            return order
        self._release(order)
        try:
            order = self.void(order, actor)
        except PaymentRefused:
            pass  # recorded in the history; the payment honestly stays authorized
        except PaymentGatewayUnavailable as unavailable:
            if retry_void_later:
                raise TransientError(unavailable.message) from None
        if self._credits is not None:
            try:
                self._credits.give_back(order, actor)  # a replacement's credit, on the original order
            except PaymentGatewayUnavailable as unavailable:
                if retry_void_later:
                    raise TransientError(unavailable.message) from None
        return order

    def _release(self, order: Order) -> None:
        # Release by what the inventory holds for this order, not only what the order recorded: a
        # step that crashed between reserving and recording leaves nothing behind either.
        locations = holding_locations(order, self._catalog.list_locations())
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in order.lines:
            for location_id in locations:
                keys[(line.sku, location_id)].append(reservation_key(order.id, line.line_id))
        for item in self._inventory.reservations(dict(keys)):
            self._inventory.release(*item)

    def _void(self, order: Order, authorization: str, actor: str) -> PaymentResult:
        return self._payments.retried(
            "void",
            lambda attempt: self._payments.void(
                order.payment.method, authorization, order.id, payment_keys.void(authorization)
            ),
            failure_recorder(self._orders, order.id, actor, self._clock, authorization=authorization),
        )

    def void(self, order: Order, actor: str) -> Order:
        """Void the cancelled order's authorization and record it; nothing to do when the payment
        is not `authorized`. Raises PaymentRefused or PaymentGatewayUnavailable with every failed
        attempt recorded."""
        payment = order.payment
        authorization = payment.authorization
        if payment.status is not PaymentStatus.AUTHORIZED or not authorization:
            return order
        result = self._void(order, authorization, actor)
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_void(authorization, result.reference, at=at, actor=actor)
            if current.payment.status is PaymentStatus.AUTHORIZED and current.payment.authorization == authorization
            else None,
        )  # fmt: skip

    def void_unrecorded(self, order: Order, authorization: str, actor: str) -> PaymentResult | None:
        """Release an authorization the order does not (or no longer) record: one an edit replaced,
        or one obtained by a write that lost its race. None when it could not be voided; each
        failed attempt is in the order's history, for an operator."""
        try:
            return self._void(order, authorization, actor)
        except (PaymentRefused, PaymentGatewayUnavailable):
            return None
