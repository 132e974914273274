"""The order workflow's steps and the order actions that follow it (ship, deliver, cancel, edit).

Every step reads the order, acts, then writes with one update conditional on the status and
version it read. A step that loses that race undoes what it did itself (releases the stock it
reserved, voids the authorization it obtained) and either stops (the order was closed) or asks
to be retried (TransientError). Every side effect is keyed by order and step, so running a step
twice changes nothing: Express workflows and stream retries run things at least once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pluggy

from core.errors import (
    InsufficientStock,
    InvalidTransition,
    NotFound,
    OrderClosed,
    OutOfStock,
    PluginError,
    StaleVersion,
    TransientError,
)
from core.events import OrderEvent
from core.hook_calls import call_hook
from core.ids import short_hash
from core.models import (
    Address,
    HistoryEntry,
    Location,
    Order,
    Shipment,
    ShipmentLine,
    utc_now,
)
from core.money import Money
from core.payments import Payments
from core.ports import CatalogRepository, InventoryRepository, LabelStore, OrderRepository
from core.status import TERMINAL, OrderStatus, can_transition
from core.workflow_types import CarrierShipment, SourcingPlan

S = OrderStatus
WORKFLOW_ACTOR = "workflow"
Clock = Callable[[], datetime]

# Which status each task of infra/order_workflow.asl.json writes (None: it records without
# moving the status). tests/unit/test_workflow_definition.py checks the ASL against this and
# against the transition table.
STEP_RESULTS: dict[str, OrderStatus | None] = {
    "AuthorizePayment": S.AUTHORIZED,
    "ReserveStock": None,
    "CreateShipments": S.ALLOCATED,
    "FailPayment": S.PAYMENT_FAILED,
    "CancelOrder": S.CANCELLED,
}

CANCELLABLE = frozenset(s for s in OrderStatus if can_transition(s, S.CANCELLED))


def reservation_key(order_id: str, line_id: str) -> str:
    return f"{order_id}#{line_id}"


def changed(
    order: Order,
    *,
    at: datetime,
    actor: str,
    type: OrderEvent,
    to: OrderStatus | None = None,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[Order, HistoryEntry]:
    """The next version of `order` and the history entry that explains it. A status change
    must be in the transition table."""
    if to is not None and to != order.status and not can_transition(order.status, to):
        raise InvalidTransition(f"an order cannot go from {order.status} to {to}")
    new = order.model_copy(
        update={**fields, "status": to or order.status, "version": order.version + 1, "updated_at": at}
    )
    entry = HistoryEntry(
        at=at,
        type=type,
        from_status=order.status if to is not None else None,
        to_status=to,
        actor=actor,
        detail=detail,
    )
    return new, entry


def eligible_locations(order_fulfillment_type: str, pickup_id: str | None, locations: list[Location]) -> list[Location]:
    if order_fulfillment_type == "pickup":
        return [loc for loc in locations if loc.location_id == pickup_id and loc.pickup]
    return [loc for loc in locations if loc.ships]


def destination_of(order: Order, locations: list[Location]) -> Address:
    if order.fulfillment.type == "pickup":
        store = next((loc for loc in locations if loc.location_id == order.fulfillment.location_id), None)
        if store is not None:
            return store.address.model_copy(update={"latitude": store.latitude, "longitude": store.longitude})
    return order.shipping_address


def shipment_share(order: Order, shipment: Shipment) -> Money:
    """What shipping `shipment` captures: its lines' share of their line totals. The last
    shipment to ship captures whatever is left of the authorization (shipping, rounding)."""
    by_line = {line.line_id: line for line in order.lines}
    share = Money.zero(order.currency)
    for item in shipment.lines:
        line = by_line[item.line_id]
        share = share + line.total.times(Decimal(item.quantity) / Decimal(line.quantity))
    return share


class Workflow:
    """The tasks of the order workflow state machine, one method each."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        plugins: pluggy.PluginManager,
        labels: LabelStore,
        clock: Clock = utc_now,
    ):
        self._orders = orders
        self._catalog = catalog
        self._inventory = inventory
        self._hook = plugins.hook
        self._payments = Payments(plugins)
        self._labels = labels
        self._clock = clock

    def _load(self, order_id: str) -> Order:
        order = self._orders.get(order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        return order

    def _closed_or_retry(self, order_id: str, undo: Callable[[], None]) -> OrderClosed | TransientError:
        """After losing a write race: undo our own side effect, then stop if the order is closed
        (someone else finished it) or ask Step Functions to run the step again."""
        undo()
        order = self._load(order_id)
        if order.status in TERMINAL:
            return OrderClosed(f"order {order_id} is {order.status}")
        return TransientError(f"order {order_id} changed while this step ran")

    # --- AuthorizePayment ----------------------------------------------------------------
    def authorize_payment(self, order_id: str, attempt: int) -> None:
        found = self._orders.get_with_token(order_id)
        if found is None:
            raise NotFound(f"no order {order_id}")
        order, token = found
        if order.status != S.PENDING:
            if order.status in TERMINAL or order.status == S.ON_HOLD:
                raise OrderClosed(f"order {order_id} is {order.status}")
            return  # authorized already: a repeated execution
        amount = order.totals.grand_total
        # Keyed by version: a retry of this same read reuses the authorization, while a retry
        # after an edit (a new version) gets a new one, never the one voided below.
        result = self._payments.authorize(
            order.payment.method, token, amount, order_id, attempt, key=f"{order_id}:authorize:v{order.version}"
        )
        payment = order.payment.model_copy(
            update={"status": "authorized", "authorized": amount, "authorization": result.reference}
        )
        new, entry = changed(
            order, at=self._clock(), actor=WORKFLOW_ACTOR, type=OrderEvent.PAYMENT_AUTHORIZED, to=S.AUTHORIZED,
            detail={"amount": amount.model_dump(mode="json"), "reference": result.reference}, payment=payment,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            raise self._closed_or_retry(
                order_id, lambda: self._payments.void(order.payment.method, result.reference, order_id,
                                                      f"{result.reference}:void"),
            ) from None  # fmt: skip

    # --- ReserveStock ----------------------------------------------------------------------
    def reserve_stock(self, order_id: str) -> None:
        order = self._load(order_id)
        if order.status != S.AUTHORIZED or order.allocations:
            if order.status in TERMINAL:
                raise OrderClosed(f"order {order_id} is {order.status}")
            return  # reserved already
        locations = self._catalog.list_locations()
        eligible = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
        skus = {line.sku for line in order.lines}
        stock = self._inventory.levels(skus, [loc.location_id for loc in eligible])
        # A retry after a crash may find this order's own reservations: count them as available
        # again, so the plan is the one a first run would make, then reconcile.
        mine = self._reservations_of(order, [loc.location_id for loc in eligible])
        for sku, levels in stock.items():
            stock[sku] = [
                level.model_copy(
                    update={"available": max(level.available, 0) + sum(
                        q for (s, loc, _), q in mine.items() if s == sku and loc == level.location_id)}
                )
                for level in levels
            ]  # fmt: skip
        plan = self._source(order, eligible, stock, destination_of(order, locations))
        line_sku = {line.line_id: line.sku for line in order.lines}
        wanted = {
            (line_sku[a.line_id], a.location_id, reservation_key(order.id, a.line_id)): a.quantity
            for a in plan.allocations
        }
        for item, quantity in mine.items():
            if wanted.get(item) != quantity:
                self._inventory.release(*item)
        done: list[tuple[str, str, str]] = []
        try:
            for (sku, location_id, key), quantity in wanted.items():
                self._inventory.reserve(sku, location_id, key, quantity)
                done.append((sku, location_id, key))
        except InsufficientStock:
            for item in done:
                self._inventory.release(*item)
            # The plan lost a race for some units. Another location may still have them: the
            # retry plans again on fresh stock, and ends OutOfStock only if nothing is left.
            raise TransientError(f"stock for order {order_id} changed while it was being reserved") from None
        new, entry = changed(
            order, at=self._clock(), actor=WORKFLOW_ACTOR, type=OrderEvent.STOCK_RESERVED,
            detail={"allocations": [a.model_dump() for a in plan.allocations], "reasons": plan.reasons},
            allocations=plan.allocations,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            raise self._closed_or_retry(order_id, lambda: [self._inventory.release(*i) for i in done]) from None

    def _reservations_of(self, order: Order, location_ids: list[str]) -> dict[tuple[str, str, str], int]:
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in order.lines:
            for location_id in location_ids:
                keys[(line.sku, location_id)].append(reservation_key(order.id, line.line_id))
        return self._inventory.reservations(dict(keys))

    def _source(self, order: Order, eligible: list[Location], stock: dict, destination: Address) -> SourcingPlan:
        if not eligible:
            raise OutOfStock(f"no location can supply order {order.id}")
        plan = call_hook(
            self._hook.oms_source_order, order=order, locations=eligible, stock=stock, destination=destination
        )
        if plan is None:
            raise OutOfStock(f"the eligible locations cannot cover order {order.id}")
        if not isinstance(plan, SourcingPlan):
            raise PluginError(f"oms_source_order returned {type(plan).__name__}, expected SourcingPlan")
        allowed = {loc.location_id for loc in eligible}
        covered: dict[str, int] = defaultdict(int)
        for allocation in plan.allocations:
            if allocation.location_id not in allowed or allocation.quantity <= 0:
                raise PluginError(f"oms_source_order allocated {allocation} outside the eligible locations")
            covered[allocation.line_id] += allocation.quantity
        if covered != {line.line_id: line.quantity for line in order.lines}:
            raise PluginError("oms_source_order did not cover every unit of every line exactly once")
        return plan

    # --- CreateShipments --------------------------------------------------------------------
    def create_shipments(self, order_id: str) -> None:
        order = self._load(order_id)
        if order.status != S.AUTHORIZED:
            if order.status in TERMINAL:
                raise OrderClosed(f"order {order_id} is {order.status}")
            return  # allocated already
        if not order.allocations:
            raise TransientError(f"order {order_id} has no reservations yet")
        locations = {loc.location_id: loc for loc in self._catalog.list_locations()}
        products = self._catalog.get_products({line.sku for line in order.lines})
        line_sku = {line.line_id: line.sku for line in order.lines}
        by_location: dict[str, list[ShipmentLine]] = defaultdict(list)
        for allocation in order.allocations:
            by_location[allocation.location_id].append(
                ShipmentLine(line_id=allocation.line_id, quantity=allocation.quantity)
            )
        shipments = []
        for location_id in sorted(by_location):
            lines = by_location[location_id]
            shipment_id = "shp_" + short_hash(f"{order.id}#{location_id}")
            weight = sum((products[line_sku[x.line_id]].weight_grams or 0) * x.quantity for x in lines)
            booked = self._book(order, shipment_id, locations[location_id], lines, weight)
            url = self._labels.put_label(order.id, shipment_id, booked.label, booked.label_content_type)
            shipments.append(
                Shipment(
                    id=shipment_id, location_id=location_id, lines=lines, carrier=booked.carrier,
                    service=booked.service, tracking_number=booked.tracking_number, label_url=url,
                )
            )  # fmt: skip
        new, entry = changed(
            order, at=self._clock(), actor=WORKFLOW_ACTOR, type=OrderEvent.ALLOCATED, to=S.ALLOCATED,
            detail={"shipments": [{"id": s.id, "location_id": s.location_id, "tracking_number": s.tracking_number}
                                  for s in shipments]},
            shipments=shipments,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            raise self._closed_or_retry(order_id, lambda: None) from None

    def _book(
        self, order: Order, shipment_id: str, origin: Location, lines: list[ShipmentLine], weight: int
    ) -> CarrierShipment:
        booked = call_hook(
            self._hook.oms_carrier_create_shipment,
            order=order, shipment_id=shipment_id, origin=origin, lines=lines, weight_grams=weight,
        )  # fmt: skip
        if not isinstance(booked, CarrierShipment):
            raise PluginError(f"oms_carrier_create_shipment returned {type(booked).__name__}, expected CarrierShipment")
        return booked

    # --- Compensation -------------------------------------------------------------------------
    def fail_payment(self, order_id: str, error: str, cause: str) -> None:
        order = self._load(order_id)
        if order.status != S.PENDING:
            return  # failed already, or closed by someone else
        payment = order.payment.model_copy(update={"status": "declined"})
        new, entry = changed(
            order, at=self._clock(), actor=WORKFLOW_ACTOR, type=OrderEvent.PAYMENT_FAILED, to=S.PAYMENT_FAILED,
            detail={"reason": "payment_declined", "error": error, "message": _message(cause)}, payment=payment,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            raise TransientError(f"order {order_id} changed while it was being marked payment_failed") from None

    def cancel_after_failure(self, order_id: str, error: str, cause: str) -> None:
        reason = "out_of_stock" if error == "OutOfStock" else "workflow_error"
        cancel_order(
            order_id, reason=reason, actor=WORKFLOW_ACTOR, orders=self._orders, catalog=self._catalog,
            inventory=self._inventory, payments=self._payments, clock=self._clock,
            detail={"error": error, "message": _message(cause)}, from_workflow=True,
        )  # fmt: skip


def _message(cause: str) -> str:
    # The Catch's Cause is the Lambda's error JSON; only its message is worth keeping.
    try:
        return str(json.loads(cause).get("errorMessage", ""))[:500]
    except (ValueError, AttributeError, TypeError):
        return (cause or "")[:500]


def cancel_order(
    order_id: str,
    *,
    reason: str,
    actor: str,
    orders: OrderRepository,
    catalog: CatalogRepository,
    inventory: InventoryRepository,
    payments: Payments,
    clock: Clock,
    channel: str | None = None,
    detail: dict[str, Any] | None = None,
    from_workflow: bool = False,
) -> Order:
    """End the order cancelled, then release every reservation and void its authorization.
    Refused (409) once anything has shipped.

    The status is claimed first, with a write conditional on what was read, and only then are
    stock and payment touched: a cancel that loses a race to a shipment has changed nothing. A
    cancel of a cancelled order runs the clean-up again (every part is idempotent), so one
    interrupted after its claim is finished by the next attempt."""
    for _ in range(5):
        order = orders.get(order_id)
        if order is None or (channel is not None and order.channel != channel):
            raise NotFound(f"no order {order_id}")
        if order.status == S.CANCELLED:
            _release_and_void(order, catalog, inventory, payments)
            return order
        if order.status not in CANCELLABLE:
            if from_workflow and order.status in TERMINAL:
                return order
            raise InvalidTransition(f"an order that is {order.status} can no longer be cancelled")
        payment = order.payment
        if payment.authorization and payment.status == "authorized":
            payment = payment.model_copy(update={"status": "voided"})
        new, entry = changed(
            order, at=clock(), actor=actor, type=OrderEvent.CANCELLED, to=S.CANCELLED,
            detail={"reason": reason, **(detail or {})}, payment=payment,
        )  # fmt: skip
        try:
            orders.update(new, order, [entry])
        except StaleVersion:
            continue  # the workflow or a shipment moved the order on meanwhile: look again
        _release_and_void(new, catalog, inventory, payments)
        return new
    raise TransientError(f"order {order_id} kept changing while it was being cancelled")


def _release_and_void(order: Order, catalog: CatalogRepository, inventory: InventoryRepository,
                      payments: Payments) -> None:  # fmt: skip
    # Release by what the inventory holds for this order, not only what the order recorded: a
    # step that crashed between reserving and recording leaves nothing behind either.
    locations = [loc.location_id for loc in catalog.list_locations()]
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    for line in order.lines:
        for location_id in locations:
            keys[(line.sku, location_id)].append(reservation_key(order.id, line.line_id))
    for item in inventory.reservations(dict(keys)):
        inventory.release(*item)
    payment = order.payment
    if payment.authorization and payment.status == "voided":
        payments.void(payment.method, payment.authorization, order.id, f"{payment.authorization}:void")
