"""In-memory fakes of the core's ports. They subclass the same ABCs, so they cannot drift."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from core import hookimpl
from core.errors import DuplicateOrder, InsufficientStock, InvalidCursor, StaleVersion, TransientError
from core.models import HistoryEntry, Location, Order, Product, StockLevel
from core.money import Money
from core.ports import CatalogRepository, InventoryRepository, LabelStore, OrderFilter, OrderRepository
from core.status import check_successor
from core.workflow_types import PaymentResult


class FakeOrders(OrderRepository):
    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self.histories: dict[str, list[HistoryEntry]] = {}
        self.tokens: dict[str, str] = {}

    def add(self, order: Order, first_entry: HistoryEntry, payment_token: str) -> None:
        if order.id in self.orders:
            raise DuplicateOrder(order.id)
        self.orders[order.id] = order
        self.histories[order.id] = [first_entry]
        self.tokens[order.id] = payment_token

    def get(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    def update(self, order: Order, expected: Order, entries: list[HistoryEntry]) -> None:
        check_successor(expected, order)
        stored = self.orders.get(order.id)
        if stored is None or (stored.status, stored.version) != (expected.status, expected.version):
            raise StaleVersion(f"order {order.id} moved on")
        self.orders[order.id] = order
        self.histories[order.id].extend(entries)

    def get_with_token(self, order_id: str) -> tuple[Order, str] | None:
        if order_id not in self.orders:
            return None
        return self.orders[order_id], self.tokens.get(order_id, "")

    def history(self, order_id: str) -> tuple[Order, list[HistoryEntry]] | None:
        if order_id not in self.orders:
            return None
        return self.orders[order_id], self.histories[order_id]

    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        matching = [
            o
            for o in sorted(self.orders.values(), key=lambda o: o.created_at, reverse=True)
            if (where.customer_id is None or o.customer.id == where.customer_id)
            and (where.status is None or o.status == where.status)
            and (where.channel is None or o.channel == where.channel)
        ]
        start = 0
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidCursor()
            start = int(cursor)
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        return page, str(start + limit) if more else None


class FakeCatalog(CatalogRepository):
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.locations: dict[str, Location] = {}

    def put_product(self, product: Product) -> bool:
        created = product.sku not in self.products
        self.products[product.sku] = product
        return created

    def get_product(self, sku: str) -> Product | None:
        return self.products.get(sku)

    def get_products(self, skus: set[str]) -> dict[str, Product]:
        return {s: self.products[s] for s in skus if s in self.products}

    def put_location(self, location: Location) -> bool:
        created = location.location_id not in self.locations
        self.locations[location.location_id] = location
        return created

    def get_location(self, location_id: str) -> Location | None:
        return self.locations.get(location_id)

    def list_locations(self) -> list[Location]:
        return [self.locations[k] for k in sorted(self.locations)]


class FakeInventory(InventoryRepository):
    def __init__(self) -> None:
        self.stock: dict[tuple[str, str], StockLevel] = {}
        self.held: dict[tuple[str, str], dict[str, int]] = {}

    def _get(self, sku: str, location_id: str) -> StockLevel:
        return self.stock.get(
            (sku, location_id),
            StockLevel(sku=sku, location_id=location_id, on_hand=0, reserved=0, available=0),
        )

    def _put(self, level: StockLevel) -> StockLevel:
        self.stock[(level.sku, level.location_id)] = level
        return level

    def set_on_hand(self, sku: str, location_id: str, on_hand: int, reason: str) -> StockLevel:
        level = self._get(sku, location_id)
        if on_hand < level.reserved:
            raise InsufficientStock("below reserved")
        return self._put(level.model_copy(update={"on_hand": on_hand, "available": on_hand - level.reserved}))

    def adjust(self, sku: str, location_id: str, delta: int, reason: str) -> StockLevel:
        level = self._get(sku, location_id)
        if level.on_hand + delta < level.reserved:
            raise InsufficientStock("below reserved")
        return self._put(
            level.model_copy(update={"on_hand": level.on_hand + delta, "available": level.available + delta})
        )

    # Reservations keyed like the DynamoDB adapter's: (sku, location) -> {order#line: quantity}.
    def _held(self, sku: str, location_id: str) -> dict[str, int]:
        return self.held.setdefault((sku, location_id), {})

    def reserve(self, sku: str, location_id: str, key: str, quantity: int) -> None:
        held = self._held(sku, location_id)
        if key in held:
            return
        level = self._get(sku, location_id)
        if level.available < quantity:
            raise InsufficientStock(f"{level.available} of {sku} available")
        held[key] = quantity
        self._put(level.model_copy(update={"reserved": level.reserved + quantity,
                                           "available": level.available - quantity}))  # fmt: skip

    def release(self, sku: str, location_id: str, key: str) -> None:
        quantity = self._held(sku, location_id).pop(key, None)
        if quantity is not None:
            level = self._get(sku, location_id)
            self._put(level.model_copy(update={"reserved": level.reserved - quantity,
                                               "available": level.available + quantity}))  # fmt: skip

    def ship(self, sku: str, location_id: str, key: str) -> None:
        quantity = self._held(sku, location_id).pop(key, None)
        if quantity is not None:
            level = self._get(sku, location_id)
            self._put(level.model_copy(update={"reserved": level.reserved - quantity,
                                               "on_hand": level.on_hand - quantity}))  # fmt: skip

    def reservations(self, keys_by_item: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], int]:
        return {
            (sku, location_id, key): self.held[(sku, location_id)][key]
            for (sku, location_id), keys in keys_by_item.items()
            for key in keys
            if key in self.held.get((sku, location_id), {})
        }

    def levels(self, skus: set[str], location_ids: Iterable[str] | None = None) -> dict[str, list[StockLevel]]:
        wanted = set(location_ids) if location_ids is not None else None
        return {
            sku: [lvl for (s, loc), lvl in sorted(self.stock.items()) if s == sku and (wanted is None or loc in wanted)]
            for sku in skus
        }


class FakeLabels(LabelStore):
    def __init__(self) -> None:
        self.labels: dict[str, bytes] = {}

    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        self.labels[shipment_id] = document
        return f"https://labels.example/{order_id}/{shipment_id}"


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
    `calls` keeps (operation, idempotency_key) of every call, to check retries reuse the key."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str]] = []

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
