"""What happens to an order after the workflow: ship, deliver, cancel and edit, each idempotent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core import payment_keys
from core.cancellation import Cancellation
from core.errors import (
    Conflict,
    InvalidTransition,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentRefused,
    StaleVersion,
)
from core.events import OrderEvent
from core.ids import reservation_key
from core.models import LineInput, Order, OrderEdit, PaymentInput, PlaceOrder, utc_now
from core.money import Money
from core.order_changes import failure_recorder, modify, visible
from core.payments import Payments
from core.ports import CatalogRepository, InventoryRepository, OrderRepository
from core.refund_service import RefundService
from core.services import CaptureService
from core.status import OrderStatus, ShipmentStatus
from core.unit_cancellation import UnitCancellation
from core.workflow_types import PaymentResult

S = OrderStatus
Clock = Callable[[], datetime]


class OrderActions:
    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        capture: CaptureService,
        clock: Clock = utc_now,
        refunds: RefundService | None = None,
    ):
        self._orders = orders
        self._inventory = inventory
        self._payments = payments
        self._capture = capture
        self._clock = clock
        self._cancellation = Cancellation(orders, catalog, inventory, payments, clock)
        self._units = UnitCancellation(
            orders, catalog, inventory, payments, capture, refunds or RefundService(orders, payments, clock),
            self._cancellation, clock,
        )  # fmt: skip

    def _order(self, order_id: str, channel: str | None) -> Order:
        return visible(self._orders.get(order_id), order_id, channel)

    def _recorder(self, order_id: str, actor: str, **detail: object):
        return failure_recorder(self._orders, order_id, actor, self._clock, **detail)

    # --- Ship ------------------------------------------------------------------------------
    def ship(self, order_id: str, shipment_id: str, tracking_number: str | None, actor: str,
             channel: str | None = None) -> Order:  # fmt: skip
        """The location handed the parcel over: the shipment's share of the payment is captured,
        then the shipment is recorded shipped with what the gateway captured, then its reserved
        units leave on_hand.

        The capture comes first, so the order never says shipped and paid for money the gateway
        did not give: a capture that keeps failing transiently (PaymentGatewayUnavailable, 503) or
        is refused (PaymentRefused, 502) leaves the shipment pending with every failed attempt in
        the history, and the ship may simply be repeated (the capture's idempotency key is the
        shipment's). A capture whose record then loses to a cancel is refunded at once and the ship
        is refused (409). Shipping a shipped shipment again finishes its stock movement
        (idempotent by reservation key) and changes nothing else."""
        order = self._order(order_id, channel)
        if order.shipment(shipment_id).status is not ShipmentStatus.PENDING:
            self._units_leave(order, shipment_id)
            return order
        order.ready_to_ship(shipment_id)
        amount = order.capture_due(shipment_id)
        capture = self._capture_share(order, shipment_id, amount, actor) if amount.amount > 0 else None
        at = self._clock()

        def decide(current: Order):
            if current.shipment(shipment_id).status is not ShipmentStatus.PENDING:
                return None  # a concurrent ship of this shipment recorded it (the same capture: the same key)
            return current.ship(
                shipment_id, tracking_number=tracking_number, captured=amount,
                capture_reference=capture.reference if capture else None, at=at, actor=actor,
            )  # fmt: skip

        try:
            shipped = modify(self._orders, order_id, decide, channel=channel)
        except InvalidTransition:
            if capture is not None:
                self._reverse_capture(order, shipment_id, amount, capture, actor)
            raise
        self._units_leave(shipped, shipment_id)
        return self._units.after_shipping(shipped, actor)

    def _capture_share(self, order: Order, shipment_id: str, amount: Money, actor: str) -> PaymentResult:
        payment = order.payment
        authorization = payment.authorization or ""
        key = payment_keys.capture(order.id, shipment_id)
        return self._payments.retried(
            "capture",
            lambda attempt: self._payments.capture(payment.method, authorization, amount, order.id, key),
            self._recorder(order.id, actor, shipment_id=shipment_id, amount=amount.model_dump(mode="json")),
        )

    def _reverse_capture(self, order: Order, shipment_id: str, amount: Money, capture: PaymentResult,
                         actor: str) -> None:  # fmt: skip
        """Refund a capture the order can no longer record: it was cancelled while the shipment was
        being shipped. A refund that fails is in the history for an operator."""
        payment = order.payment
        authorization = payment.authorization or ""
        detail = {"shipment_id": shipment_id, "amount": amount.model_dump(mode="json"),
                  "capture_reference": capture.reference}  # fmt: skip
        key = payment_keys.refund(order.id, shipment_id)
        try:
            refund = self._payments.retried(
                "refund",
                lambda attempt: self._payments.refund(payment.method, authorization, amount, order.id, key),
                self._recorder(order.id, actor, **detail),
            )
        except (PaymentRefused, PaymentGatewayUnavailable):
            return
        at = self._clock()
        modify(
            self._orders, order.id,
            lambda current: current.noted(OrderEvent.PAYMENT_CAPTURE_REVERSED, at=at, actor=actor,
                                          detail={**detail, "refund_reference": refund.reference}),
        )  # fmt: skip

    def _units_leave(self, order: Order, shipment_id: str) -> None:
        shipment = order.shipment(shipment_id)
        line_sku = {line.line_id: line.sku for line in order.lines}
        for item in shipment.lines:
            self._inventory.ship(line_sku[item.line_id], shipment.location_id, reservation_key(order.id, item.line_id))

    # --- Deliver ------------------------------------------------------------------------------
    def deliver(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None) -> Order:
        at = self._clock()

        def decide(order: Order):
            if order.shipment(shipment_id).status is ShipmentStatus.DELIVERED:
                return None
            return order.deliver(shipment_id, at=at, actor=actor)

        return modify(self._orders, order_id, decide, channel=channel)

    # --- Cancel -------------------------------------------------------------------------------
    def cancel(self, order_id: str, reason: str, actor: str, channel: str | None = None,
               lines: dict[str, int] | None = None) -> Order:  # fmt: skip
        """Before anything shipped and without `lines`: the order, cancelled, even when its
        authorization could not be voided (the payment then stays `authorized` and the history
        says why; cancelling again retries the void). On a partly shipped order, or with `lines`
        ({line_id: units}): those units, or every unit not shipped, cancelled (UnitCancellation)."""
        return self._units.cancel(order_id, reason, actor, lines=lines, channel=channel)

    # --- Edit ---------------------------------------------------------------------------------
    def edit(self, order_id: str, expected_version: int, edit: OrderEdit, actor: str,
             channel: str | None = None) -> Order:  # fmt: skip
        """Change lines, address or shipping method before allocation; totals are priced again
        exactly as at capture. An authorized order whose total grows is authorized again for
        the new total (and the old authorization voided) before anything is stored."""
        found = self._orders.get_with_token(order_id)
        visible(found[0] if found else None, order_id, channel)
        order, token = found
        if order.version != expected_version:
            raise StaleVersion(
                f"order {order_id} is at version {order.version}, not {expected_version}",
                details=[{"field": "If-Match", "message": f"current version is {order.version}"}],
            )
        order.check_editable()
        lines = edit.lines or [LineInput(sku=line.sku, quantity=line.quantity) for line in order.lines]
        shipping_method = edit.shipping_method or (order.shipping_method if order.fulfillment.type == "ship" else None)
        cmd = PlaceOrder(
            channel=order.channel, external_id=order.external_id, currency=order.currency,
            customer=order.customer, lines=lines,
            shipping_address=edit.shipping_address or order.shipping_address,
            fulfillment=order.fulfillment, shipping_method=shipping_method,
            promo_codes=order.promo_codes, payment=PaymentInput(method=order.payment.method, token=token or "none"),
        )  # fmt: skip
        priced = self._capture.quote(cmd)
        total = order.payable(priced.totals)
        reauthorized = None
        if order.status == S.AUTHORIZED and total.amount > order.payment.authorized.amount:
            reauthorized = self._reauthorize(order, token, total, actor)
        changes = sorted(name for name in ("lines", "shipping_address", "shipping_method")
                         if getattr(edit, name) is not None)  # fmt: skip
        new, entry = order.edit(
            lines=priced.lines, totals=priced.totals, shipping_address=cmd.shipping_address,
            shipping_method=priced.shipping_method, changed=changes,
            reauthorized=(total, reauthorized.reference) if reauthorized else None, at=self._clock(), actor=actor,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            if reauthorized is not None:
                self._cancellation.void_unrecorded(order, reauthorized.reference, actor)  # no version records it
            raise StaleVersion(f"order {order_id} changed meanwhile; read it again") from None
        old = order.payment.authorization
        voided = self._cancellation.void_unrecorded(order, old, actor) if reauthorized is not None and old else None
        if voided is not None:
            at = self._clock()
            modify(
                self._orders, order_id,
                lambda current: current.noted(
                    OrderEvent.PAYMENT_VOIDED, at=at, actor=actor,
                    detail={"authorization": old, "reference": voided.reference,
                            "reason": "replaced by the authorization of the edited total"},
                ),
            )  # fmt: skip
        return new

    def _reauthorize(self, order: Order, token: str, amount: Money, actor: str) -> PaymentResult:
        """Within the request: transient failures are retried; still failing, 503 with Retry-After.
        Keyed by the version the edit will write, so repeating the edit reuses the authorization."""
        key = payment_keys.authorize(order.id, order.version + 1)
        try:
            return self._payments.retried(
                "authorize",
                lambda attempt: self._payments.authorize(order.payment.method, token, amount, order.id, attempt, key),
                self._recorder(order.id, actor, amount=amount.model_dump(mode="json")),
            )
        except PaymentDeclined as declined:
            raise Conflict(
                f"the payment was declined for the new total: {declined.message}", code="payment_declined"
            ) from None
