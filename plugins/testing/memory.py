"""In-memory storage for the OMS's ports: the core's services run on it in tests, exactly as on
DynamoDB and S3. Each class subclasses the port it implements, so it cannot drift from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime

from core.errors import (
    Conflict,
    DuplicateOrder,
    InsufficientStock,
    InvalidCursor,
    InvalidTransition,
    ReservationsChanged,
    StaleVersion,
    StockLimitReached,
)
from core.models import MAX_ON_HAND, HistoryEntry, Location, Order, Product, StockLevel
from core.ports import (
    BackorderedOrders,
    Backorders,
    CatalogRepository,
    CountedAlready,
    InventoryRepository,
    LabelStore,
    LateOrders,
    OrderFilter,
    OrderRepository,
    ReceivedReturns,
    ReturnFilter,
    ReturnRepository,
    ShortCount,
    SourcingRulesRepository,
    StockMove,
    TopUp,
    UnreceivedReturns,
    WaitingOrder,
)
from core.return_models import Return
from core.sourcing_rules import SourcingRules
from core.status import OrderStatus, ReturnStatus, check_successor


class InMemoryOrders(OrderRepository):
    """`inventory`: the stock update_with_stock moves with an order's write (as DynamoOrders is
    given the Inventory table): without it, that write is refused."""

    def __init__(self, inventory: InMemoryInventory | None = None) -> None:
        self.orders: dict[str, Order] = {}
        self.histories: dict[str, list[HistoryEntry]] = {}
        self.tokens: dict[str, str] = {}
        self.inventory = inventory

    def add(
        self, order: Order, first_entry: HistoryEntry, payment_token: str, later_entries: Sequence[HistoryEntry] = ()
    ) -> None:
        if order.id in self.orders:
            raise DuplicateOrder(order.id)
        self.orders[order.id] = order
        self.histories[order.id] = [first_entry, *later_entries]
        self.tokens[order.id] = payment_token

    def put(self, order: Order, payment_token: str = "") -> None:
        """Store `order` as it is, replacing any earlier version: how a test sets the scene."""
        self.orders[order.id] = order
        self.histories.setdefault(order.id, [])
        self.tokens[order.id] = payment_token

    def get(self, order_id: str, *, consistent: bool = False) -> Order | None:
        return self.orders.get(order_id)  # always consistent

    def update(
        self, order: Order, expected: Order, entries: list[HistoryEntry], *, history_length: int | None = None
    ) -> None:
        check_successor(expected, order)
        stored = self.orders.get(order.id)
        if stored is None or (stored.status, stored.version) != (expected.status, expected.version):
            raise StaleVersion(f"order {order.id} moved on")
        if history_length is not None and len(self.histories[order.id]) != history_length:
            raise StaleVersion(f"order {order.id} has a newer history entry")
        self.orders[order.id] = order
        self.histories[order.id].extend(entries)

    def update_with_stock(
        self, order: Order | None, expected: Order, entries: list[HistoryEntry], moves: Sequence[StockMove]
    ) -> None:
        # All or nothing, as DynamoDB's transaction: every condition is checked before anything changes.
        if moves and self.inventory is None:
            raise ValueError("stock moves need the InMemoryInventory: InMemoryOrders(inventory)")
        if order is not None:
            check_successor(expected, order)
        stored = self.orders.get(expected.id)
        if stored is None or (stored.status, stored.version) != (expected.status, expected.version):
            raise StaleVersion(f"order {expected.id} moved on")
        if self.inventory is not None and not self.inventory.holds(moves):
            raise ReservationsChanged(f"a reservation of order {expected.id} changed")
        if order is not None:
            self.update(order, expected, entries)
        for move in moves:
            self.inventory.apply(move)  # type: ignore[union-attr]

    def get_with_token(self, order_id: str, *, consistent: bool = False) -> tuple[Order, str] | None:
        if order_id not in self.orders:
            return None
        return self.orders[order_id], self.tokens.get(order_id, "")

    def history(self, order_id: str, *, consistent: bool = False) -> tuple[Order, list[HistoryEntry]] | None:
        if order_id not in self.orders:
            return None
        return self.orders[order_id], self.histories[order_id]

    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        matching = [
            o for o in sorted(self.orders.values(), key=lambda o: o.created_at, reverse=True) if where.admits(o)
        ]
        start = 0
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidCursor()
            start = int(cursor)
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        return page, str(start + limit) if more else None


class InMemoryReturns(ReturnRepository):
    def __init__(self) -> None:
        self.returns: dict[str, Return] = {}
        # The received returns set aside from the reconciler's index, at the version they had
        # then (InMemoryReceivedReturns): a later version is listed again, as its write would.
        # (the version, and the payment method it waits for a plugin of, None when left to a person)
        self.set_aside_at: dict[str, tuple[int, str | None]] = {}

    def add(self, item: Return) -> None:
        if item.id in self.returns:
            raise StaleVersion(f"return {item.id} exists")
        self.returns[item.id] = item

    def get(self, return_id: str, *, consistent: bool = False) -> Return | None:
        return self.returns.get(return_id)  # always consistent

    def update(self, item: Return, expected: Return) -> None:
        stored = self.returns.get(item.id)
        if item.version != expected.version + 1:
            raise InvalidTransition(f"return {item.id} cannot go from version {expected.version} to {item.version}")
        if stored is None or (stored.status, stored.version) != (expected.status, expected.version):
            raise StaleVersion(f"return {item.id} moved on")
        self.returns[item.id] = item

    def for_order(self, order_id: str) -> list[Return]:
        return sorted((r for r in self.returns.values() if r.order_id == order_id), key=lambda r: r.ordinal)

    def list(self, where: ReturnFilter, limit: int, cursor: str | None) -> tuple[list[Return], str | None]:
        matching = [
            r
            for r in sorted(self.returns.values(), key=lambda r: r.created_at, reverse=True)
            if (where.status is None or r.status == where.status)
            and (where.channel is None or r.channel == where.channel)
        ]
        start = 0
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidCursor()
            start = int(cursor)
        more = start + limit < len(matching)
        return matching[start : start + limit], str(start + limit) if more else None


class InMemoryLateOrders(LateOrders):
    """The jeopardy scan's index questions, answered from the in-memory orders."""

    def __init__(self, orders: InMemoryOrders) -> None:
        self._orders = orders

    def unmarked_since_before(self, status: OrderStatus, before: datetime, limit: int) -> list[str]:
        # As the index: a marked order counts unmarked while a capture its ship asked for stands
        # (unless marked for a person with it standing: Order.listed_late).
        found = [o for o in self._orders.orders.values() if o.status is status and not o.listed_late]
        due = [o for o in found if o.deadline_counts_from is not None and o.deadline_counts_from < before]
        return [o.id for o in sorted(due, key=lambda o: o.created_at)][:limit]

    def held_since_before(self, before: datetime, limit: int) -> list[str]:
        # As the index: parks are left out, and the longest held come first.
        found = [o for o in self._orders.orders.values() if o.hold_expiry_counts_from is not None]
        due = sorted((o.hold_expiry_counts_from, o.id) for o in found if o.hold_expiry_counts_from < before)
        return [order_id for _, order_id in due][:limit]

    def marked_since_after(self, after: dict[OrderStatus, datetime], limit: int) -> list[str]:
        # As the index: the listed orders, by when they were placed, newest first.
        found = [
            o for o in self._orders.orders.values()
            if o.listed_late and o.status in after
            and o.deadline_counts_from is not None and o.deadline_counts_from > after[o.status]
        ]  # fmt: skip
        return [o.id for o in sorted(found, key=lambda o: o.created_at, reverse=True)][:limit]

    def count_in_jeopardy(self) -> int:
        return sum(1 for o in self._orders.orders.values() if o.listed_late)

    def count_ships_to_confirm(self) -> int:
        return sum(1 for o in self._orders.orders.values() if o.ships_to_confirm_since is not None)


class InMemoryUnreceivedReturns(UnreceivedReturns):
    """The return expiry's index question, answered from the in-memory returns."""

    def __init__(self, returns: InMemoryReturns) -> None:
        self._returns = returns

    def created_before(self, status: ReturnStatus, before: datetime) -> Iterator[str]:
        found = [r for r in self._returns.returns.values() if r.status is status and r.created_at < before]
        return iter([r.id for r in sorted(found, key=lambda r: r.created_at)])


class InMemoryReceivedReturns(ReceivedReturns):
    """The returns reconciler's index question, answered from the in-memory returns: those
    received, less those set aside at the version they still have (the adapter's next write lists
    a return again)."""

    def __init__(self, returns: InMemoryReturns) -> None:
        self._returns = returns

    def received_before(self, before: datetime) -> Iterator[str]:
        return self._listed(before, lambda aside: aside is None)

    def waiting_for_plugin(self, method: str, before: datetime) -> Iterator[str]:
        return self._listed(before, lambda aside: aside is not None and aside[1] == method)

    def _listed(self, before: datetime, under: Callable[[tuple[int, str | None] | None], bool]) -> Iterator[str]:
        aside = self._returns.set_aside_at
        found = [
            r for r in self._returns.returns.values()
            if r.status is ReturnStatus.RECEIVED and r.created_at < before
            and under(aside[r.id] if aside.get(r.id, (None,))[0] == r.version else None)
        ]  # fmt: skip
        return iter([r.id for r in sorted(found, key=lambda r: r.created_at)])

    def set_aside(self, item: Return, *, waiting_for: str | None = None) -> None:
        stored = self._returns.returns.get(item.id)
        if stored is not None and stored.version == item.version and stored.status is ReturnStatus.RECEIVED:
            self._returns.set_aside_at[item.id] = (item.version, waiting_for)


class InMemoryCatalog(CatalogRepository):
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.locations: dict[str, Location] = {}
        self.woken_from: WaitingOrder | None = None

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

    def wake_from(self, after: WaitingOrder) -> None:
        self.woken_from = after


class InMemoryInventory(InventoryRepository):
    def __init__(self) -> None:
        self.stock: dict[tuple[str, str], StockLevel] = {}
        self.held: dict[tuple[str, str], dict[str, int]] = {}
        self.restocked: set[str] = set()
        self.refused_restocks: dict[tuple[str, str], int] = {}  # (location, key): units past MAX_ON_HAND
        self.adjusted: dict[tuple[str, str, str], tuple[int, str]] = {}  # what each key counted
        self.count_keys: dict[tuple[str, str, str], int] = {}  # the on_hand each stock take's key counted
        self.short: dict[tuple[str, str], ShortCount] = {}  # stock takes recorded short, by stock item
        self.short_resume: datetime | None = None  # where the reconciler's next pass over them starts
        self.counted: dict[tuple[str, str], datetime] = {}  # when each stock item's last stock take was counted
        self.restocked_items: set[tuple[str, str]] = set()  # units added since its last stock take

    def _get(self, sku: str, location_id: str) -> StockLevel:
        return self.stock.get(
            (sku, location_id),
            StockLevel(sku=sku, location_id=location_id, on_hand=0, reserved=0, available=0),
        )

    def _put(self, level: StockLevel) -> StockLevel:
        self.stock[(level.sku, level.location_id)] = level
        return level

    def put_level(self, level: StockLevel) -> None:
        """Store a stock record as it is (units reserved by other orders included): how a test
        sets the scene. available is recomputed as on_hand - reserved, as the adapter keeps it."""
        self._put(level.model_copy(update={"available": level.on_hand - level.reserved}))

    def set_on_hand(
        self, sku: str, location_id: str, on_hand: int, reason: str, releasing: dict[str, int] | None = None,
        short: ShortCount | None = None, counted_at: datetime | None = None, restocked: bool = False,
        key: str | None = None,
    ) -> StockLevel:  # fmt: skip
        level = self._get(sku, location_id)
        releasing = releasing or {}
        if key is not None and (sku, location_id, key) in self.count_keys:  # before any refusal, as DynamoDB
            if self.count_keys[(sku, location_id, key)] != on_hand:
                raise Conflict(
                    "this Idempotency-Key was used with a different request body", code="idempotency_key_reused"
                )
            raise CountedAlready(level)
        held = self._held(sku, location_id)
        if any(held.get(key) != units for key, units in releasing.items()):
            raise InsufficientStock("the reservations to release changed")
        if on_hand + sum(releasing.values()) < level.reserved:
            raise InsufficientStock("below reserved")
        if not releasing:  # a count that fits: no mark stands
            self.short.pop((sku, location_id), None)
        elif short is not None:  # else a mark there stays, as the DynamoDB adapter keeps it
            self.short[(sku, location_id)] = short
        if counted_at is not None:
            self.counted[(sku, location_id)] = counted_at
        else:
            self.counted.pop((sku, location_id), None)
        if restocked and not releasing:
            self.restocked_items.add((sku, location_id))
        else:
            self.restocked_items.discard((sku, location_id))
        if key is not None:
            self.count_keys[(sku, location_id, key)] = on_hand
        return self._put(level.model_copy(update={"on_hand": on_hand, "available": on_hand - level.reserved}))

    def short_counts(self, before: datetime, limit: int, after: datetime | None = None) -> list[ShortCount]:
        marked = sorted(
            (c for c in self.short.values() if c.counted_at < before and (after is None or c.counted_at > after)),
            key=lambda c: c.counted_at,
        )
        return marked[:limit]

    def short_counts_resume(self) -> datetime | None:
        return self.short_resume

    def record_short_counts_resume(self, after: datetime | None) -> None:
        self.short_resume = after

    def short_count_finished(self, count: ShortCount) -> None:
        if self.short.get((count.sku, count.location_id)) == count:
            del self.short[(count.sku, count.location_id)]

    def restocked_since_count(self, items: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return {item for item in items if item in self.restocked_items and item not in self.short}

    def held_at(self, sku: str, location_id: str) -> tuple[StockLevel, dict[str, int]]:
        return self._get(sku, location_id), dict(self.held.get((sku, location_id), {}))

    def adjust(self, sku: str, location_id: str, delta: int, reason: str, key: str | None = None) -> StockLevel:
        level = self._get(sku, location_id)
        counted = self.adjusted.get((sku, location_id, key)) if key is not None else None
        if counted is not None:
            if counted != (delta, reason):
                raise Conflict(
                    "this Idempotency-Key was used with a different request body", code="idempotency_key_reused"
                )
            return level
        if delta < 0 and level.on_hand + delta < level.reserved:  # a receipt lands under a short count's mark too
            raise InsufficientStock("below reserved")
        if level.on_hand + delta > MAX_ON_HAND:
            raise StockLimitReached(f"past {MAX_ON_HAND} on hand", details=[{"field": "delta", "message": "too many"}])
        if key is not None:
            self.adjusted[(sku, location_id, key)] = (delta, reason)
        if delta > 0:
            self.restocked_items.add((sku, location_id))
        return self._put(
            level.model_copy(update={"on_hand": level.on_hand + delta, "available": level.available + delta})
        )

    # Reservations keyed like the DynamoDB adapter's: (sku, location) -> {order#line: quantity}.
    def _held(self, sku: str, location_id: str) -> dict[str, int]:
        return self.held.setdefault((sku, location_id), {})

    def reserve(self, sku: str, location_id: str, key: str, quantity: int, keep: int = 0) -> None:
        held = self._held(sku, location_id)
        if held.get(key) == quantity:
            return
        level = self._get(sku, location_id)
        if key in held:
            raise InsufficientStock(f"{held[key]} of {sku} reserved under {key}, {quantity} wanted")
        if level.available < quantity + keep:
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

    def shrink(self, sku: str, location_id: str, key: str, held: int, keep: int) -> None:
        if not 0 < keep < held:
            raise ValueError(f"a reservation of {held} shrinks to between 1 and {held - 1} units, not {keep}")
        reservations = self._held(sku, location_id)
        if reservations.get(key) != held:
            return
        reservations[key] = keep
        level = self._get(sku, location_id)
        self._put(level.model_copy(update={"reserved": level.reserved - (held - keep),
                                           "available": level.available + (held - keep)}))  # fmt: skip

    def rearrange(
        self, sku: str, location_id: str, held: dict[str, int], wanted: dict[str, int], keep: int = 0
    ) -> None:
        reservations = self._held(sku, location_id)
        keys = held.keys() | wanted.keys()
        if all(reservations.get(key) == (wanted.get(key) or None) for key in keys):
            return
        level = self._get(sku, location_id)
        more = sum(wanted.values()) - sum(held.values())
        if any(reservations.get(key) != held.get(key) for key in keys) or (more > 0 and level.available < more + keep):
            raise InsufficientStock(f"{level.available} of {sku} available, or its reservations changed")
        for key in keys:
            if wanted.get(key):
                reservations[key] = wanted[key]
            else:
                reservations.pop(key, None)
        self._put(level.model_copy(update={"reserved": level.reserved + more, "available": level.available - more}))

    def ship(self, sku: str, location_id: str, key: str, handed_at: datetime | None = None) -> None:
        quantity = self._held(sku, location_id).pop(key, None)
        if quantity is not None:
            level = self._get(sku, location_id)
            counted = self.counted.get((sku, location_id))
            # Fewer on hand than it carries (a stock take recorded short since), or a stock take
            # recorded after the parcel left (it counted the shelf without it): the count stands.
            counted_out = handed_at is not None and counted is not None and counted > handed_at
            gone = quantity if level.on_hand >= quantity and not counted_out else 0
            self._put(level.model_copy(update={"reserved": level.reserved - quantity, "on_hand": level.on_hand - gone,
                                               "available": level.available + quantity - gone}))  # fmt: skip

    def holds(self, moves: Sequence[StockMove]) -> bool:
        """Whether each move's reservation holds exactly its `held` units (the condition of its write)."""
        return all(self.held.get((m.sku, m.location_id), {}).get(m.key) == m.held for m in moves)

    def apply(self, move: StockMove) -> None:
        """Apply `move`, whose condition (holds) was checked: OrderRepository.update_with_stock's.
        A move is one of the writes a cancel made one at a time: a shrink then a ship, a ship, a
        shrink or a release."""
        if move.ships and move.keep:
            if move.keep < move.held:
                self.shrink(move.sku, move.location_id, move.key, held=move.held, keep=move.keep)
            self.ship(move.sku, move.location_id, move.key, handed_at=move.handed_at)
        elif move.keep:
            self.shrink(move.sku, move.location_id, move.key, held=move.held, keep=move.keep)
        else:
            self.release(move.sku, move.location_id, move.key)

    def restock(self, sku: str, location_id: str, key: str, quantity: int, received_at: datetime | None = None) -> None:
        if key in self.restocked:
            return
        self.restocked.add(key)
        counted = self.counted.get((sku, location_id))
        if received_at is not None and counted is not None and counted > received_at:
            return  # a stock take recorded since the units arrived counted them on the shelf
        level = self._get(sku, location_id)
        if level.on_hand + quantity > MAX_ON_HAND:
            self.refused_restocks[(location_id, key)] = quantity
            return
        self.restocked_items.add((sku, location_id))
        self._put(level.model_copy(update={"on_hand": level.on_hand + quantity,
                                           "available": level.available + quantity}))  # fmt: skip

    def not_restocked(self, location_id: str, keys: list[str]) -> dict[str, int]:
        return {
            key: self.refused_restocks[(location_id, key)]
            for key in keys
            if (location_id, key) in self.refused_restocks
        }

    def reservations(self, keys_by_item: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], int]:
        return {
            (sku, location_id, key): self.held[(sku, location_id)][key]
            for (sku, location_id), keys in keys_by_item.items()
            for key in keys
            if key in self.held.get((sku, location_id), {})
        }

    def levels(
        self, skus: set[str], location_ids: Iterable[str] | None = None, *, consistent: bool = False
    ) -> dict[str, list[StockLevel]]:
        wanted = set(location_ids) if location_ids is not None else None
        return {
            sku: [lvl for (s, loc), lvl in sorted(self.stock.items()) if s == sku and (wanted is None or loc in wanted)]
            for sku in skus
        }


class InMemorySourcingRules(SourcingRulesRepository):
    """Every version in a list, oldest first."""

    def __init__(self) -> None:
        self.versions: list[SourcingRules] = []
        self.woken_from: dict[int, WaitingOrder] = {}

    def current(self) -> SourcingRules:
        return self.versions[-1] if self.versions else SourcingRules()

    def add(self, rules: SourcingRules) -> None:
        if any(v.version == rules.version for v in self.versions):
            raise StaleVersion(f"sourcing rules version {rules.version} exists")
        self.versions.append(rules)
        self.versions.sort(key=lambda v: v.version)

    def history(self, limit: int, cursor: str | None = None) -> tuple[list[SourcingRules], str | None]:
        newest_first = list(reversed(self.versions))
        try:
            start = int(cursor) if cursor is not None else 0
        except ValueError:
            raise InvalidCursor("not a sourcing rules cursor") from None
        page = newest_first[start : start + limit]
        return page, str(start + limit) if start + limit < len(newest_first) else None

    def wake_from(self, version: int, after: WaitingOrder) -> None:
        self.woken_from[version] = after


class InMemoryBackorderedOrders(BackorderedOrders):
    """The backordered orders among the in-memory ones, oldest first."""

    def __init__(self, orders: InMemoryOrders) -> None:
        self._orders = orders

    def oldest(self, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        waiting = sorted(
            WaitingOrder(order.created_at, order.id)
            for order in self._orders.orders.values()
            if order.status is OrderStatus.BACKORDERED
        )
        return [entry for entry in waiting if after is None or entry > after][:limit]


class InMemoryBackorders(Backorders):
    """The queue, and fills applied to the in-memory orders and inventory all or nothing."""

    def __init__(self, orders: InMemoryOrders, inventory: InMemoryInventory) -> None:
        self.entries: dict[str, set[WaitingOrder]] = {}
        self.marked: set[tuple[str, WaitingOrder]] = set()  # entries whose order was written backordered
        self.bought: dict[tuple[str, WaitingOrder], str] = {}  # where each entry's order is bought for
        # The walks stopped at each entry (location id, restocked), and those handed on from after
        # an entry once its order was written backordered (DynamoBackorders.walk_from's records).
        self.stopped: dict[tuple[str, WaitingOrder], set[tuple[str, bool]]] = {}
        self.handed_on: list[tuple[str, str, WaitingOrder, bool]] = []
        self._orders = orders
        self._inventory = inventory

    def add(self, sku: str, entry: WaitingOrder) -> None:
        # Written again: it keeps where it is bought for and loses its mark (DynamoBackorders.add).
        self.marked.discard((sku, entry))
        self.entries.setdefault(sku, set()).discard(entry)  # written again: what it says now
        self.entries[sku].add(entry)

    def remove(self, sku: str, entry: WaitingOrder) -> None:
        self.walked_past(sku, entry)  # the walks still stopped at it go on (DynamoBackorders.remove)
        self.entries.get(sku, set()).discard(entry)
        self.marked.discard((sku, entry))
        self.bought.pop((sku, entry), None)

    def leave(self, sku: str, entry: WaitingOrder, version: int) -> None:
        # Unless its order wrote it again at `version` or later (DynamoBackorders.leave).
        written = next((e for e in self.entries.get(sku, set()) if e == entry), None)
        if written is not None and (written.version is None or written.version < version):
            self.remove(sku, written)

    def record_bought_at(self, sku: str, entry: WaitingOrder, location_id: str) -> None:
        if entry in self.entries.get(sku, set()):
            self.bought[(sku, entry)] = location_id

    def recorded(self, sku: str, entry: WaitingOrder) -> None:
        if entry in self.entries.get(sku, set()):
            self.marked.add((sku, entry))
            self.walked_past(sku, entry)

    def walked_past(self, sku: str, entry: WaitingOrder) -> None:
        if entry in self.entries.get(sku, set()):
            for location_id, restocked in sorted(self.stopped.pop((sku, entry), set())):
                self.handed_on.append((sku, location_id, entry, restocked))

    def stop(self, sku: str, entry: WaitingOrder, location_id: str, restocked: bool) -> bool:
        written = next((e for e in self.entries.get(sku, set()) if e == entry), None)
        if written is None or written.version is None or written.version != entry.version:
            return False
        if (sku, written) in self.marked:
            return False
        # Only while its order is still `authorized` at the entry's version (DynamoBackorders.stop).
        order = self._orders.get(entry.order_id)
        if order is None or order.status is not OrderStatus.AUTHORIZED or order.version != entry.version:
            return False
        self.stopped.setdefault((sku, written), set()).add((location_id, restocked))
        return True

    def waiting(self, sku: str, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        waiting = [e for e in sorted(self.entries.get(sku, set())) if after is None or e > after][:limit]
        return [replace(e, bought_at=self.bought.get((sku, e))) for e in waiting]

    def fill(self, order: Order, expected: Order, entries: list[HistoryEntry], top_ups: list[TopUp]) -> None:
        for t in top_ups:
            held = self._inventory.held.get((t.sku, t.location_id), {}).get(t.key, 0)
            if held != t.held or self._inventory._get(t.sku, t.location_id).available < t.quantity - t.held + t.keep:
                raise StaleVersion(f"the reservation {t.key} or the stock of {t.sku} at {t.location_id} changed")
        # The order's own conditional update decides (it raises StaleVersion); the stock changes
        # only after it, so a fill that loses the order changes nothing.
        self._orders.update(order, expected, entries)
        for t in top_ups:
            more = t.quantity - t.held
            level = self._inventory._get(t.sku, t.location_id)
            self._inventory._held(t.sku, t.location_id)[t.key] = t.quantity
            self._inventory._put(
                level.model_copy(update={"reserved": level.reserved + more, "available": level.available - more})
            )


class InMemoryLabels(LabelStore):
    def __init__(self) -> None:
        self.labels: dict[str, bytes] = {}
        self.links_made = 0

    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        self.labels[shipment_id] = document
        return f"labels/{order_id}/{shipment_id}"

    def link(self, key: str) -> str:
        if key.startswith(("http://", "https://")):
            return key
        self.links_made += 1
        return f"https://labels.example/{key}?signature={self.links_made}"
