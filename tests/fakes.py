"""In-memory fakes of the core's ports. They subclass the same ABCs, so they cannot drift."""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import DuplicateOrder, InsufficientStock, InvalidCursor
from core.models import HistoryEntry, Location, Order, Product, StockLevel
from core.ports import CatalogRepository, InventoryRepository, OrderFilter, OrderRepository


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

    def levels(self, skus: set[str], location_ids: Iterable[str] | None = None) -> dict[str, list[StockLevel]]:
        wanted = set(location_ids) if location_ids is not None else None
        return {
            sku: [lvl for (s, loc), lvl in sorted(self.stock.items()) if s == sku and (wanted is None or loc in wanted)]
            for sku in skus
        }
