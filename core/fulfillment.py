"""What happens to an order after the workflow: ship, deliver, cancel and edit, each idempotent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.errors import Conflict, InvalidTransition, NotFound, PaymentDeclined, StaleVersion, TransientError
from core.events import OrderEvent
from core.models import LineInput, Order, OrderEdit, PaymentInput, PlaceOrder, Shipment, utc_now
from core.money import Money
from core.payments import Payments
from core.ports import CatalogRepository, InventoryRepository, OrderRepository
from core.services import CaptureService
from core.status import EDITABLE, OrderStatus
from core.workflow import cancel_order, changed, reservation_key, shipment_share
from core.workflow_types import PaymentResult

S = OrderStatus
Clock = Callable[[], datetime]
ATTEMPTS = 5  # re-reads after losing a write race to the workflow or another request


class OrderActions:
    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        capture: CaptureService,
        clock: Clock = utc_now,
    ):
        self._orders = orders
        self._catalog = catalog
        self._inventory = inventory
        self._payments = payments
        self._capture = capture
        self._clock = clock

    def _order(self, order_id: str, channel: str | None) -> Order:
        order = self._orders.get(order_id)
        if order is None or (channel is not None and order.channel != channel):
            raise NotFound(f"no order {order_id}")
        return order

    # --- Ship ------------------------------------------------------------------------------
    def ship(self, order_id: str, shipment_id: str, tracking_number: str | None, actor: str,
             channel: str | None = None) -> Order:  # fmt: skip
        """The location handed the parcel over: its reserved units leave on_hand, and its share
        of the payment is captured.

        The shipment is claimed first (one write conditional on what was read) and only then are
        stock and payment touched, so a ship that loses a race to a cancel has changed nothing.
        Shipping a shipped shipment again runs those effects again, each idempotent (the stock by
        its reservation key, the capture by its gateway key): a ship interrupted after its claim
        is finished by the next attempt, and a finished one changes nothing."""
        for _ in range(ATTEMPTS):
            order = self._order(order_id, channel)
            shipment = next((s for s in order.shipments if s.id == shipment_id), None)
            if shipment is None:
                raise NotFound(f"no shipment {shipment_id} on order {order_id}")
            if shipment.status != "pending":
                self._ship_effects(order, shipment)
                return order
            if order.status not in (S.ALLOCATED, S.PARTIALLY_SHIPPED):
                raise InvalidTransition(f"an order that is {order.status} cannot ship")
            others_pending = [s for s in order.shipments if s.status == "pending" and s.id != shipment_id]
            payment = order.payment
            # Captures add up to the order's grand total (which an edit may have lowered below
            # what was authorized), never to more.
            remaining = order.totals.grand_total - payment.captured
            amount = remaining if not others_pending else min(shipment_share(order, shipment), remaining,
                                                                key=lambda m: m.amount)  # fmt: skip
            if not payment.authorization:
                amount = Money.zero(order.currency)
            payment = payment.model_copy(
                update={"captured": payment.captured + amount,
                        "status": "partially_captured" if others_pending else "captured"}
            )  # fmt: skip
            now = self._clock()
            shipments = [
                s.model_copy(update={"status": "shipped", "shipped_at": now, "captured": amount,
                                     "tracking_number": tracking_number or s.tracking_number})
                if s.id == shipment_id else s
                for s in order.shipments
            ]  # fmt: skip
            new, entry = changed(
                order, at=now, actor=actor, type=OrderEvent.SHIPMENT_SHIPPED,
                to=S.PARTIALLY_SHIPPED if others_pending else S.SHIPPED,
                detail={"shipment_id": shipment_id, "location_id": shipment.location_id,
                        "captured": amount.model_dump(mode="json")},
                shipments=shipments, payment=payment,
            )  # fmt: skip
            try:
                self._orders.update(new, order, [entry])
            except StaleVersion:
                continue  # nothing was touched yet: read again and decide again
            self._ship_effects(new, next(s for s in new.shipments if s.id == shipment_id))
            return new
        raise Conflict(f"order {order_id} kept changing; retry", code="version_conflict")

    def _ship_effects(self, order: Order, shipment: Shipment) -> None:
        line_sku = {line.line_id: line.sku for line in order.lines}
        for item in shipment.lines:
            self._inventory.ship(line_sku[item.line_id], shipment.location_id, reservation_key(order.id, item.line_id))
        payment = order.payment
        if shipment.captured is not None and shipment.captured.amount > 0 and payment.authorization:
            self._payments.capture(payment.method, payment.authorization, shipment.captured, order.id,
                                   f"{order.id}:{shipment.id}:capture")  # fmt: skip

    # --- Deliver ------------------------------------------------------------------------------
    def deliver(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None) -> Order:
        for _ in range(ATTEMPTS):
            order = self._order(order_id, channel)
            shipment = next((s for s in order.shipments if s.id == shipment_id), None)
            if shipment is None:
                raise NotFound(f"no shipment {shipment_id} on order {order_id}")
            if shipment.status == "delivered":
                return order
            if shipment.status != "shipped":
                raise InvalidTransition("a shipment is delivered only after it has shipped")
            now = self._clock()
            shipments = [
                s.model_copy(update={"status": "delivered", "delivered_at": now}) if s.id == shipment_id else s
                for s in order.shipments
            ]
            everything_delivered = all(s.status == "delivered" for s in shipments)
            new, entry = changed(
                order, at=now, actor=actor, type=OrderEvent.SHIPMENT_DELIVERED,
                to=S.DELIVERED if everything_delivered else None,
                detail={"shipment_id": shipment_id}, shipments=shipments,
            )  # fmt: skip
            try:
                self._orders.update(new, order, [entry])
                return new
            except StaleVersion:
                continue
        raise Conflict(f"order {order_id} kept changing; retry", code="version_conflict")

    # --- Cancel -------------------------------------------------------------------------------
    def cancel(self, order_id: str, reason: str, actor: str, channel: str | None = None) -> Order:
        return cancel_order(
            order_id, reason=reason, actor=actor, orders=self._orders, catalog=self._catalog,
            inventory=self._inventory, payments=self._payments, clock=self._clock, channel=channel,
        )  # fmt: skip

    # --- Edit ---------------------------------------------------------------------------------
    def _authorize_now(self, method: str, token: str, amount: Money, order_id: str, key: str) -> PaymentResult:
        """Within a request: a transient failure is retried twice at once; still failing, it
        reaches the client as 503 with Retry-After."""
        for attempt in range(3):
            try:
                return self._payments.authorize(method, token, amount, order_id, attempt=attempt, key=key)
            except TransientError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def edit(self, order_id: str, expected_version: int, edit: OrderEdit, actor: str,
             channel: str | None = None) -> Order:  # fmt: skip
        """Change lines, address or shipping method before allocation; totals are priced again
        exactly as at capture. An authorized order whose total grows is authorized again for
        the new total (and the old authorization voided) before anything is stored."""
        found = self._orders.get_with_token(order_id)
        if found is None or (channel is not None and found[0].channel != channel):
            raise NotFound(f"no order {order_id}")
        order, token = found
        if order.version != expected_version:
            raise StaleVersion(
                f"order {order_id} is at version {order.version}, not {expected_version}",
                details=[{"field": "If-Match", "message": f"current version is {order.version}"}],
            )
        if order.status not in EDITABLE or order.allocations:
            raise InvalidTransition(f"an order that is {order.status} and has stock reserved can no longer be edited"
                                    if order.allocations else
                                    f"an order that is {order.status} can no longer be edited")  # fmt: skip
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
        payment = order.payment
        reauthorized = None
        if order.status == S.AUTHORIZED and priced.totals.grand_total.amount > payment.authorized.amount:
            try:
                reauthorized = self._authorize_now(
                    payment.method, token, priced.totals.grand_total, order.id,
                    key=f"{order.id}:authorize:v{order.version + 1}",
                )  # fmt: skip
            except PaymentDeclined as declined:
                raise Conflict(
                    f"the payment was declined for the new total: {declined.message}", code="payment_declined"
                ) from None
            payment = payment.model_copy(
                update={"authorized": priced.totals.grand_total, "authorization": reauthorized.reference}
            )
        changes = sorted(name for name in ("lines", "shipping_address", "shipping_method")
                         if getattr(edit, name) is not None)  # fmt: skip
        new, entry = changed(
            order, at=self._clock(), actor=actor, type=OrderEvent.EDITED,
            detail={"changed": changes, "grand_total": {"from": order.totals.grand_total.model_dump(mode="json"),
                                                        "to": priced.totals.grand_total.model_dump(mode="json")}},
            lines=priced.lines, totals=priced.totals, shipping_address=cmd.shipping_address,
            shipping_method=priced.shipping_method, payment=payment,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            if reauthorized is not None:
                self._payments.void(payment.method, reauthorized.reference, order.id, f"{reauthorized.reference}:void")
            raise StaleVersion(f"order {order_id} changed meanwhile; read it again") from None
        if reauthorized is not None and order.payment.authorization:
            old = order.payment.authorization
            self._payments.void(payment.method, old, order.id, f"{old}:void")
        return new
