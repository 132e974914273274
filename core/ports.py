"""Ports: what the services need from storage. Adapters implement them; test fakes subclass them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from core.access import ApiKey
from core.models import HistoryEntry, Location, Order, Product, StockLevel
from core.sourcing_rules import SourcingRules
from core.status import OrderStatus, ReturnStatus

if TYPE_CHECKING:
    # Named in the returns' ports only: the returns' models stay out of a new API container.
    from core.return_models import Return


# The ports' values are NamedTuples, immutable as frozen dataclasses were: Python compiles each
# method a dataclass generates as its module is imported (these five as dataclasses cost a new API
# container 12 M instructions more under callgrind). WaitingOrder stays a dataclass: its
# `bought_at` is no part of its order or equality.
class OrderFilter(NamedTuple):
    customer_id: str | None = None
    status: OrderStatus | None = None
    channel: str | None = None
    jeopardy: bool = False  # only orders marked late (GET /orders?jeopardy=true)
    # Only pickup orders with work waiting at this store (GET /orders?pickup_location_id=: Order.open_at_store)
    pickup_location_id: str | None = None

    def admits(self, order: Order) -> bool:
        """Whether `order` is one this filter lists."""
        return (
            (self.customer_id is None or order.customer.id == self.customer_id)
            and (self.status is None or order.status is self.status)
            and (self.channel is None or order.channel == self.channel)
            and (not self.jeopardy or order.listed_late)
            and (self.pickup_location_id is None or order.open_at_store == self.pickup_location_id)
        )


class StockMove(NamedTuple):
    """Bring the reservation under `key` (order#line) at (sku, location_id) from `held` units down to
    `keep` (0: released), the rest back to available; with `ships`, then take the `keep` units out
    of on_hand as a ship does, the reservation gone (a written-off parcel's, which left with its
    carrier: cancellation.leaving_moves), handed over at `handed_at` when known: a stock take
    recorded after that counted them out of on_hand already (InventoryRepository.ship)."""

    sku: str
    location_id: str
    key: str
    held: int
    keep: int = 0
    ships: bool = False
    handed_at: datetime | None = None


class OrderRepository(ABC):
    @abstractmethod
    def add(
        self, order: Order, first_entry: HistoryEntry, payment_token: str, later_entries: Sequence[HistoryEntry] = ()
    ) -> None:
        """Store a new order with its first history entry (and `later_entries`: a review's hold,
        made in the same write so no workflow sees the order before it) and the payment token the
        workflow will authorize (kept out of the Order so no response can show it). Raises
        DuplicateOrder if the id exists."""

    @abstractmethod
    def get(self, order_id: str, *, consistent: bool = False) -> Order | None:
        """The order, or None. A read may miss a write made milliseconds before it (DynamoDB's
        GetItem is eventually consistent); with `consistent` it shows every write acknowledged
        before it, for twice the read cost. Writes need no such read (each is conditional on what
        it read); a decision no write guards does, such as what to undo after losing a race."""

    def get_many(self, order_ids: Sequence[str]) -> dict[str, Order]:
        """The orders of `order_ids` that exist, by id, each read consistently (see get). This
        default reads them one by one; an adapter that can read many at once does."""
        return {order.id: order for order_id in order_ids if (order := self.get(order_id, consistent=True))}

    @abstractmethod
    def update(
        self, order: Order, expected: Order, entries: list[HistoryEntry], *, history_length: int | None = None
    ) -> None:
        """Replace `expected` by `order` and append `entries` to the history, in one write that
        holds only if the stored order still has `expected`'s status and version (and, given
        `history_length`, a history of exactly that many entries: a history-only entry leaves the
        version as it was, so one decided on the history must not land after another's). Raises
        StaleVersion otherwise: the caller re-reads and decides again. Refuses (InvalidTransition,
        through core.status.check_successor) an `order` that is not a legal successor of
        `expected`; `order` equal to `expected` appends history only."""

    @abstractmethod
    def update_with_stock(
        self, order: Order | None, expected: Order, entries: list[HistoryEntry], moves: Sequence[StockMove]
    ) -> None:
        """In one all-or-nothing write: `order` over `expected` with `entries` (as update; None:
        the order is not written, only checked to have `expected`'s status and version still) and
        each of `moves`, conditional on its reservation holding exactly `held` units. A stock step
        decided on `expected` (a cancel of units' release) so never lands on an order that moved on
        (a reject sending it back to be sourced, the workflow reserving again under the same keys)
        nor on reservations that changed since they were read. Raises, having written nothing,
        StaleVersion when the order moved on and ReservationsChanged when a reservation did (the
        caller reads again and decides again). Moves over more stock items than one write holds
        (DynamoDB: 99 beside the order) go in several, each conditional on the order being as
        `expected`, the order written with the last: each is a step right for `expected`, and a
        failure leaves those before it written, which the step decided again no longer asks for."""

    @abstractmethod
    def get_with_token(self, order_id: str, *, consistent: bool = False) -> tuple[Order, str] | None:
        """The order and the payment token it was placed with (for the payment plugin; never
        shown), in one read; `consistent`: a strongly consistent read."""

    @abstractmethod
    def history(self, order_id: str, *, consistent: bool = False) -> tuple[Order, list[HistoryEntry]] | None:
        """The order and its history, oldest first, in one read; None when there is no such order.
        `consistent`: a strongly consistent read (see get)."""

    def history_range(
        self, order_id: str, start: int, stop: int, *, consistent: bool = False
    ) -> tuple[Order, list[HistoryEntry], int] | None:
        """The order, the entries of its history from place `start` up to `stop` (oldest first,
        fewer past its end) and its length, the order read once; None when there is no such
        order. A page of the history (GET /orders/{id}/history) reads only what it shows: this
        default reads the whole history; an adapter that keeps the oldest entries apart reads only
        what holds the range."""
        found = self.history(order_id, consistent=consistent)
        if found is None:
            return None
        order, history = found
        return order, history[max(start, 0) : max(stop, 0)], len(history)

    def placed_by(self, order_id: str) -> str:
        """What placed the order, for its workflow's log lines (`correlation_id`): the API request
        id its created entry recorded, else that entry's actor (an import's id and line, or the
        queue's sender); empty for no such order. The outbox reads the same from the stream's
        image; a start made elsewhere (a restart, a backorder's fill) reads it here."""
        found = self.history_range(order_id, 0, 1)
        if found is None or not found[1]:
            return ""
        created = found[1][0]
        return str((created.detail or {}).get("request_id") or created.actor)

    @abstractmethod
    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        """Orders matching `where`, newest first, and an opaque cursor for the next page.

        Raises InvalidCursor for a cursor this repository did not issue for the same filter.
        """


class ReturnFilter(NamedTuple):
    status: ReturnStatus | None = None
    channel: str | None = None


class ReturnRepository(ABC):
    """Returns (RMAs), one record each; every change is conditional on status and version."""

    @abstractmethod
    def add(self, item: Return) -> None:
        """Store a new return. Raises StaleVersion when its id exists (another request took the
        same ordinal of the order: read the order's returns again and decide again)."""

    @abstractmethod
    def get(self, return_id: str, *, consistent: bool = False) -> Return | None:
        """The return, or None; with `consistent`, every write acknowledged before it shows (as
        OrderRepository.get)."""

    @abstractmethod
    def update(self, item: Return, expected: Return) -> None:
        """Replace `expected` by `item`, only if the stored return still has `expected`'s status
        and version (StaleVersion otherwise); `item` must be `expected`'s next version."""

    @abstractmethod
    def for_order(self, order_id: str) -> list[Return]:
        """Every return of the order, oldest first (by ordinal)."""

    @abstractmethod
    def list(self, where: ReturnFilter, limit: int, cursor: str | None) -> tuple[list[Return], str | None]:
        """Returns matching `where`, newest first, and an opaque cursor for the next page.
        Raises InvalidCursor for a cursor not issued for the same filter."""


class UnreceivedReturns(ABC):
    """The return expiry's question, answered through the Returns table's status index (never a
    scan of the table)."""

    @abstractmethod
    def created_before(self, status: ReturnStatus, before: datetime) -> Iterator[str]:
        """Ids of the returns in `status` created before `before`, oldest first, read a page at a
        time as the caller takes them: a caller that stops early reads no further page."""


class ReceivedReturns(ABC):
    """The returns reconciler's question: the returns `received` and not set aside, through an
    index of those only (never a scan of the table), so returns left to a person, which stay
    `received` for as long as the person takes, crowd no lost receipt behind them out of a pass."""

    @abstractmethod
    def received_before(self, before: datetime) -> Iterator[str]:
        """Ids of the returns `received`, not set aside, created before `before`, oldest first,
        read a page at a time as the caller takes them: a caller that stops early reads no further
        page."""

    @abstractmethod
    def waiting_for_plugin(self, method: str, before: datetime) -> Iterator[str]:
        """Ids of the returns set aside as waiting for a payment plugin that takes `method`
        (set_aside's `waiting_for`), created before `before`, oldest first, read a page at a time
        as the caller takes them."""

    @abstractmethod
    def set_aside(self, item: Return, *, waiting_for: str | None = None) -> None:
        """Leave the return out of received_before until its next write (which lists it again),
        provided it is still at its version and `received`: it is left to a person, and nothing is
        to be started for it until it changes; with `waiting_for` (a payment method), its refund
        waits for a plugin that takes that method, and waiting_for_plugin lists it meanwhile."""


class CatalogRepository(ABC):
    @abstractmethod
    def put_product(self, product: Product) -> bool:
        """Create or replace; True when the product is new."""

    @abstractmethod
    def get_product(self, sku: str) -> Product | None: ...

    @abstractmethod
    def get_products(self, skus: set[str]) -> dict[str, Product]:
        """The products that exist among `skus`, by sku."""

    @abstractmethod
    def put_location(self, location: Location) -> bool:
        """Create or replace; True when the location is new. Conflict (`location_network_full`)
        when the network's storage has no room for it."""

    @abstractmethod
    def get_location(self, location_id: str) -> Location | None: ...

    @abstractmethod
    def list_locations(self) -> list[Location]: ...

    @abstractmethod
    def wake_from(self, after: WaitingOrder) -> None:
        """Record on the location network the backordered order after which waking them for its
        change (a location that stopped shipping) goes on: the change this makes hands the next
        page to the backorder filler (the Catalog stream), as `SourcingRulesRepository.wake_from`."""


class ShortCount(NamedTuple):
    """A stock take recorded below the units reserved at (sku, location_id), whose rejects may not
    all have landed: by whom (the rejects' actor) and when (its mark, removed only as that count's)."""

    sku: str
    location_id: str
    actor: str
    counted_at: datetime


class CountedAlready(Exception):
    """InventoryRepository.set_on_hand's answer to a count under a key it recorded already (a
    stock take sent again under its Idempotency-Key after its first answer was lost): nothing was
    written; `level` is the stock record as it is stored."""

    def __init__(self, level: StockLevel):
        super().__init__(f"counted already: {level.sku} at {level.location_id}")
        self.level = level


class InventoryRepository(ABC):
    """Stock per (sku, location). Every change is one conditional write: never read-then-write."""

    @abstractmethod
    def set_on_hand(
        self, sku: str, location_id: str, on_hand: int, reason: str, releasing: dict[str, int] | None = None,
        short: ShortCount | None = None, counted_at: datetime | None = None, restocked: bool = False,
        key: str | None = None,
    ) -> StockLevel:  # fmt: skip
        """Set the counted units, recording when they were counted (`counted_at`; a count without
        it records no time, the one before forgotten): a parcel handed over before then was counted
        without its units (ship's `handed_at`). `restocked`: the count is above the one its caller
        read, units added as a receipt adds them (restocked_since_count); otherwise the count is
        where restocked_since_count starts again.
        Raises InsufficientStock when `on_hand` is below what is reserved
        but `releasing` ({order#line: units}, reservations the caller is about to release): the
        write is conditional on each of those keys holding its units still and on the other
        reserved units fitting `on_hand`. Below what is reserved, `available` is negative until
        those releases land, so nothing reserves the released units in between. With `releasing`,
        the same write marks the item with `short` (short_counts lists it until
        short_count_finished); a count that fits (no `releasing`) removes any mark, and one with
        `releasing` but no `short` leaves a mark there as it is.
        With `key` (from a client's Idempotency-Key) the count records the key for a day in the same
        atomic write: a count under a key recorded there writes nothing (no counted_at of its own)
        and raises CountedAlready with the level as stored when it counts the same `on_hand`, or
        Conflict (idempotency_key_reused) when not. A count refused records no key."""

    @abstractmethod
    def restocked_since_count(self, items: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of `items` (sku, location_id), the stock items units were added to since their last stock
        take (a receipt, a positive adjustment, a count above the one before, a return restocked),
        with no short stock take's mark standing there (its rejects' releases have landed): where a
        count's exclusion of an order lapses (Order.count_exclusion_lapsed). One consistent read."""

    @abstractmethod
    def short_counts(self, before: datetime, limit: int, after: datetime | None = None) -> list[ShortCount]:
        """Stock items marked by a short stock take (set_on_hand's `short`) counted before `before`
        (and after `after`, when given), oldest first, at most `limit`."""

    @abstractmethod
    def short_counts_resume(self) -> datetime | None:
        """When the last mark the reconciler's pass over them dealt with was counted, when that pass
        stopped before the end of the listing (record_short_counts_resume); None otherwise."""

    @abstractmethod
    def record_short_counts_resume(self, after: datetime | None) -> None:
        """Record where the next pass over the marks starts (after the mark counted at `after`;
        None: from the oldest)."""

    @abstractmethod
    def short_count_finished(self, count: ShortCount) -> None:
        """Remove `count`'s mark, unless a later count marked the item since (its own stays)."""

    @abstractmethod
    def held_at(self, sku: str, location_id: str) -> tuple[StockLevel, dict[str, int]]:
        """The stock record at (sku, location_id) and the units reserved there under each key
        (order#line), read consistently."""

    @abstractmethod
    def adjust(self, sku: str, location_id: str, delta: int, reason: str, key: str | None = None) -> StockLevel:
        """Add `delta` to on_hand. Raises InsufficientStock when on_hand would drop below reserved,
        StockLimitReached when it would pass MAX_ON_HAND (each refused by the write's condition).
        With `key` (from a client's Idempotency-Key) the change is counted once per key for a day,
        in the same atomic write: the same key again changes nothing, and returns the level when it
        comes with the same delta and reason, or raises Conflict (idempotency_key_reused) when not."""

    @abstractmethod
    def reserve(self, sku: str, location_id: str, key: str, quantity: int, keep: int = 0) -> None:
        """Move `quantity` from available to reserved under `key` (order#line), in one write
        conditional on enough being available with `keep` units (the location's safety stock)
        left over. Idempotent: the same key holding `quantity` again is a no-op.
        Raises InsufficientStock when not enough is available, or when the key holds another
        quantity (a twin run of the same step reserved under it on another plan); ReservationsFull
        when the stock item has no room for another open reservation (DynamoDB's 400 KB item)."""

    @abstractmethod
    def release(self, sku: str, location_id: str, key: str) -> None:
        """Give the units reserved under `key` back to available. Idempotent."""

    @abstractmethod
    def shrink(self, sku: str, location_id: str, key: str, held: int, keep: int) -> None:
        """Give `held - keep` of the units reserved under `key` back to available and keep `keep`
        (0 < keep < held), in one write conditional on `held` being reserved under it: a repeat,
        or a reservation that changed meanwhile, changes nothing."""

    @abstractmethod
    def rearrange(
        self, sku: str, location_id: str, held: dict[str, int], wanted: dict[str, int], keep: int = 0
    ) -> None:
        """Make the keys (order#line) of `held` and `wanted` hold what `wanted` says (a key it does
        not name: nothing), the difference reserved from available (with `keep` units, the
        location's safety stock, left over) or given back, in one write conditional on the keys of
        `held` holding those units and `wanted`'s other keys none: units an order moves from one of
        its keys to another (an edited order's line whose id changed, a line split in two) are
        never free for another order in between. (More keys than a write may name, in several
        writes, each giving back about what it takes, those that take first.) Idempotent: a
        repeat (the keys hold what `wanted` says) is a no-op. Raises InsufficientStock when not
        enough is available, or when the keys of `held` no longer hold those units;
        ReservationsFull when the item has no room for the keys it adds."""

    @abstractmethod
    def ship(self, sku: str, location_id: str, key: str, handed_at: datetime | None = None) -> None:
        """The units reserved under `key` leave: on_hand and reserved both drop. Idempotent. Never
        refused, and never below zero: on_hand below the reservation (a stock take recorded short
        since, its rejects not landed) was counted after the parcel left, so the count stands and
        only the reservation goes. So too, whatever it counted, with a stock take recorded after
        `handed_at` (when the parcel left, if known): it counted the shelf without the parcel's
        units, which left on_hand with it (each write conditional on the count's time it finds)."""

    @abstractmethod
    def restock(self, sku: str, location_id: str, key: str, quantity: int, received_at: datetime | None = None) -> None:
        """Put `quantity` returned units back on hand (and available) under `key` (return#line), in
        one atomic change that records the key: the same key again is a no-op, so a retried step
        restocks once. Units that would take on_hand past MAX_ON_HAND (what a stock take may count)
        are refused as a whole by the stock write's own condition: nothing is added, and the key is
        recorded as refused (not_restocked), so the step run again changes nothing either. With a
        stock take recorded after `received_at` (when the units arrived, if known), the key is
        recorded and nothing is added either, by the same write's condition on the count's time:
        that count had the units on the shelf, so they are in on_hand already (a restock whose step
        died, finished after the count)."""

    @abstractmethod
    def not_restocked(self, location_id: str, keys: list[str]) -> dict[str, int]:
        """The units each of `keys` (restocks at `location_id`) was refused for on_hand's cap
        (restock): {key: quantity}, only the refused keys. A strongly consistent read."""

    @abstractmethod
    def reservations(self, keys_by_item: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], int]:
        """Which of the given keys hold reservations on the given (sku, location) items, and how
        many units: {(sku, location_id, key): quantity}."""

    def holdings(
        self, keys_by_item: dict[tuple[str, str], list[str]], skus: set[str], location_ids: Iterable[str]
    ) -> tuple[dict[tuple[str, str, str], int], dict[str, list[StockLevel]]]:
        """`reservations(keys_by_item)` and `levels(skus, location_ids, consistent=True)` at once.
        This default makes the two reads; an adapter may read each stock item once for both."""
        return self.reservations(keys_by_item), self.levels(skus, location_ids, consistent=True)

    @abstractmethod
    def levels(
        self, skus: set[str], location_ids: Iterable[str] | None = None, *, consistent: bool = False
    ) -> dict[str, list[StockLevel]]:
        """Stock records of each sku (skus with none map to []): at `location_ids` (the capture
        path's read, as few requests as the skus need) or, when None, at every location (read
        consistently). `consistent`: the read at `location_ids` is strongly consistent too (every
        write acknowledged before shows)."""

    def expected(self, items: set[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """The earliest expected date of the open purchase orders bringing units to each
        (sku, location_id) item (its `next_expected_at`); items with none incoming are left out.
        One batched read. This default reads `levels`, which must then carry next_expected_at."""
        skus, location_ids = {sku for sku, _ in items}, {loc for _, loc in items}
        return {
            (level.sku, level.location_id): level.next_expected_at
            for levels in self.levels(skus, location_ids).values()
            for level in levels
            if (level.sku, level.location_id) in items and level.next_expected_at is not None
        }


class GatewayKey(NamedTuple):
    """An OMS key's own API Gateway API key (per-key usage plans): API Gateway's id for it, and the
    value the authorizer answers as usageIdentifierKey. Never shown to anyone."""

    id: str
    value: str


class ApiKeyRepository(ABC):
    """API keys, found by the hash of their secret (the authorizer) or by id (administration)."""

    @abstractmethod
    def add(self, key: ApiKey, secret_hash: str, gateway_key: GatewayKey | None = None) -> None:
        """Store a key; replaces a key with the same id, whose old secret stops working. With
        `gateway_key`, the key's requests are metered by it; without, a replaced key keeps its own.
        Conflict (`api_key_replaced`) when the key was revoked, or given another secret, while this
        one was stored: this secret then never works; Conflict (`api_key_secret_taken`), before
        anything changes, when the secret is another key's."""

    @abstractmethod
    def gateway_key(self, key_id: str) -> GatewayKey | None:
        """The key's own gateway key; None when it has none (or there is no such key)."""

    @abstractmethod
    def attach_gateway_key(self, key_id: str, gateway_key: GatewayKey) -> bool:
        """Give a key that has none its own gateway key (the backfill); False when it is revoked or
        does not exist, and when it has one already, which its lookup is then made to carry."""

    @abstractmethod
    def active_gateway_keys(self) -> list[tuple[str, GatewayKey | None]]:
        """Each key not revoked, by id, with its own gateway key or None (the backfill's)."""

    @abstractmethod
    def by_hash(self, secret_hash: str) -> ApiKey | None: ...

    @abstractmethod
    def list(self, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]: ...

    @abstractmethod
    def revoke(self, key_id: str, at: datetime, by: str | None = None) -> ApiKey | None:
        """Mark the key revoked at `at` by the key `by` (idempotent: a key revoked already keeps
        when and by whom it was first); None when there is no such key."""


class ApiStage(NamedTuple):
    """The deployed API stage a request came through (API Gateway's restApiId and stage name)."""

    api_id: str
    name: str


class AuthorizerCache(ABC):
    """API Gateway's cache of the authorizer's answers, kept per stage for AuthorizerCacheSeconds:
    a revoked key would keep working until its cached answer expired."""

    @abstractmethod
    def flush(self, stage: ApiStage) -> None:
        """Forget every cached answer of `stage`; raises TransientError when that failed."""


class GatewayKeys(ABC):
    """API Gateway API keys in the per-key usage plan of a stage: each OMS key's own, by which API
    Gateway applies the plan's limits to that key apart (KeyRateLimit, KeyBurstLimit, KeyQuotaPerDay)."""

    @abstractmethod
    def create(self, name: str, stage: ApiStage) -> GatewayKey:
        """A new enabled key named `name` (the OMS key's id), its value random, added to `stage`'s
        per-key usage plan. Raises TransientError when that failed, having deleted what it made."""

    @abstractmethod
    def add_to_plan(self, key_id: str, stage: ApiStage) -> bool:
        """Put an existing key in `stage`'s per-key usage plan (one there already is no error);
        False when there is no such key (deleted: its OMS key revoked, or never stored whole)."""

    @abstractmethod
    def delete(self, key_id: str) -> None:
        """Delete the key (API Gateway takes it out of its plan); one gone already is no error.
        Raises TransientError when that failed."""


class LabelStore(ABC):
    @abstractmethod
    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        """Store a shipping label (idempotent by `shipment_id`: a shipment's booking key, or a
        return label's, core.returns.return_booking_key) and return its key, what the order keeps."""

    @abstractmethod
    def link(self, key: str) -> str:
        """A short-lived URL to fetch the label stored under `key`, made fresh for each read: a
        stored link would outlive its signature. A `key` that is already a URL (orders stored
        before keys were) is signed again when it points at this store, else returned as is."""


class StalledOrder(NamedTuple):
    order_id: str
    created_at: datetime


class StalledOrders(ABC):
    """Orders still in a status their workflow should have moved them out of, oldest first."""

    @abstractmethod
    def stalled(self, statuses: Collection[OrderStatus], created_before: datetime) -> Iterator[StalledOrder]:
        """The orders in any of `statuses` placed before `created_before`, each once, oldest first
        (of each index partition read), read through an index a page at a time as the caller takes
        them (a page is read only once the orders before it are taken: a pass out of time reads no
        further). An index may also answer orders in another status (one that left since, or a
        status sharing a partition with one asked): the caller judges each order it reads."""

    @abstractmethod
    def filled_backorders(self, changed_before: datetime) -> Iterator[str]:
        """Ids of the backordered orders with every unit reserved (Order.backorder_filled)
        unchanged since before `changed_before` (Order.last_changed), longest unchanged first, read
        through an index that holds no backordered order still waiting for stock, a page at a time
        as the caller takes them."""


class LateOrders(ABC):
    """The jeopardy scan's questions, answered through an index (never a scan of the table)."""

    @abstractmethod
    def unmarked_since_before(self, status: OrderStatus, before: datetime, limit: int) -> list[str]:
        """Ids of up to `limit` orders in `status`, not marked late, that entered it before
        `before`, oldest placed first. Candidates: an index may also answer orders that left
        `status`, or are in one sharing its partition; the scan judges each order it reads."""

    @abstractmethod
    def held_since_before(self, before: datetime, limit: int) -> list[str]:
        """Ids of up to `limit` orders whose hold expiry counts from before `before`
        (Order.hold_expiry_counts_from: on hold since then, marked late or not, never a park or a
        parcel to confirm: Hold.parked, nor one whose ship died), held longest first: an index
        keyed on when the hold began, so no order held recently or parked is read on the way to
        them."""

    @abstractmethod
    def marked_since_after(self, after: dict[OrderStatus, datetime], limit: int) -> list[str]:
        """Ids of up to `limit` orders marked late now (listed: Order.listed_late) in one of the
        statuses of `after` whose deadline counts from after that status's moment
        (Order.deadline_counts_from): no longer late by the deadline their status has now. An index
        may answer more (an order changed since); the scan judges each order it reads."""

    @abstractmethod
    def count_in_jeopardy(self) -> int:
        """How many orders are marked late now."""

    @abstractmethod
    def count_ships_to_confirm(self) -> int:
        """How many orders are held now while a person is to confirm whether a parcel left after
        its ship died (Order.ships_to_confirm_since)."""


@dataclass(frozen=True, order=True)
class WaitingOrder:
    """One entry of a sku's backorder queue: oldest first is `created_at`, then the id.
    `bought_at`, read with the entry and no part of what names it: the location whose reorder point
    buys what the order lacks of the sku, once one was chosen (`Backorders.record_bought_at`).
    `supplied_by`, written with the entry (`for_order`) and no part of what names it either: where
    its order may take units, its pickup store's id or SHIPPING (any location that ships), so an
    arrival passes over, without reading it, an order that may not take units where they arrived
    (`may_take_at`); None on an entry written before entries said so (the order is read).
    `version`, written with the entry (`for_order`) and no part of what names it: the order's
    version when it was written, so that a removal after a later write of the order leaves an
    entry its order wrote again since (`Backorders.leave`), and so that an arrival that reads the
    order still `authorized` at that version knows it queued, its `backordered` write to come
    (`Backorders.stop`); None on an entry written before entries said so.
    `holds`, written with the entry and no part of what names it: its order held every unit of the
    sku it wants when it went backordered (it waits for its other skus). It lacks none of the sku,
    so the readers that look for what orders lack (the reorder points, ReserveStock's look behind
    older orders) pass it over unread; an arrival of the sku reads it only where `max_shipments` may
    keep its order from the location that now has its whole order (core.backorders)."""

    created_at: datetime
    order_id: str
    bought_at: str | None = field(default=None, compare=False)
    supplied_by: str | None = field(default=None, compare=False)
    version: int | None = field(default=None, compare=False)
    holds: bool = field(default=False, compare=False)

    @classmethod
    def for_order(cls, order: Order, *, holds: bool = False) -> WaitingOrder:
        """The entry of `order` in the queue of each sku it waits for (and, `holds`, of each it holds
        every unit of meanwhile). A fulfilment never changes (an edit names no fulfilment), so what
        the entry says of it stays true."""
        pickup = order.fulfillment.type == "pickup"
        supplied_by = order.fulfillment.location_id if pickup else SHIPPING
        return cls(
            created_at=order.created_at, order_id=order.id, supplied_by=supplied_by, version=order.version, holds=holds
        )

    def waits_for(self, order: Order) -> bool:
        """Whether `order` waits in the queue as this entry of it says: backordered, or queued by its
        ReserveStock and still `authorized` at the version it wrote the entry at, its `backordered`
        write to come (Workflow._wait_for_stock: the readers of the queue count it waiting, so the
        units its own look is about to find go to no younger order). Not one held, nor one sent back
        to be sourced (an edit: its entries are its earlier wait's, written at an older version)."""
        if order.status is OrderStatus.BACKORDERED:
            return True
        return order.status is OrderStatus.AUTHORIZED and not self.holds and self.version == order.version

    def may_take_at(self, location: Location | None) -> bool:
        """Whether the entry's order may take units at `location` (None: not in the network, where
        no order takes any), as `core.sourcing.eligible_locations` decides: its pickup store, or a
        location that ships. True when the entry does not say (the order decides)."""
        if self.supplied_by is None:
            return True
        if location is None:
            return False
        return location.ships if self.supplied_by == SHIPPING else location.location_id == self.supplied_by


# What a queue entry of an order to be shipped says it may be supplied by: any location that ships
# (no location id starts with "*").
SHIPPING = "*"


class TopUp(NamedTuple):
    """Grow the reservation under `key` at (sku, location) from `held` units (0: none) to `quantity`,
    leaving at least `keep` units available there (the location's safety stock)."""

    sku: str
    location_id: str
    key: str
    held: int
    quantity: int
    keep: int = 0


class Backorders(ABC):
    """Per sku, the backordered orders waiting for its units, oldest first (what an arrival of
    units reads instead of the Orders table), and the one write that fills a backordered order (or
    sends it back to be sourced whole with its plan's units reserved: Workflow.source_again_whole).
    Queue entries are idempotent to add and to remove."""

    @abstractmethod
    def add(self, sku: str, entry: WaitingOrder) -> None:
        """Add `entry`; one there already (its order backordered again) keeps its `bought_at`, loses
        its mark (`recorded` marks it anew) and says `holds` as `entry` does."""

    @abstractmethod
    def remove(self, sku: str, entry: WaitingOrder) -> None:
        """Remove `entry`, handing on from after it the walks still stopped at it (`stop`: its
        order's step died before handing them on, and the order no longer waits)."""

    @abstractmethod
    def leave(self, sku: str, entry: WaitingOrder, version: int) -> None:
        """Remove `entry` unless its order wrote it again at `version` or later: `version` is that
        of the order's write that ended its wait for `sku` (a cancel, an allocation, a wait that no
        longer needs it), and an order sent back and waiting again since wrote it anew, at a later
        version. An entry that does not say its version is removed; none there, nothing. Removed,
        the walks still stopped at it are handed on, as by `remove`."""

    def left(self, before: Order, after: Order) -> None:
        """After the order's write of `after` over `before`: its entries leave the queues of the
        skus it no longer waits for nor holds while it waits (cancelled, allocated, or waiting again
        without a line of them: an edit dropped it, a cancel took all its units), each removal
        conditional (`leave`), so one that runs late never removes what a later wait wrote. An
        order that waits keeps an entry in the queue of every sku of its lines: those it holds,
        `holds` (Workflow._wait_for_stock). The order's write decided: should a removal be lost, an
        arrival's walk that meets the entry removes it (core.backorders). Nothing for an order that never
        waited: `before` had waited (`may_wait`) or waits now. The skus it may have entries for:
        those it waited for and those of its lines, before and after (an edit forgets the skus it
        asks more of from `may_wait`)."""
        if not (before.may_wait or before.waits_for_stock()):
            return
        still = {line.sku for line in after.lines if line.quantity} if after.waits_for_stock() else set()
        had = {*before.may_wait, *after.may_wait, *(line.sku for line in [*before.lines, *after.lines])}
        entry = WaitingOrder(created_at=after.created_at, order_id=after.id)
        for sku in sorted(had - still):
            self.leave(sku, entry, after.version)

    @abstractmethod
    def record_bought_at(self, sku: str, entry: WaitingOrder, location_id: str) -> None:
        """Keep on `entry` the location whose reorder point buys what its order lacks of `sku`
        (read back as its `bought_at`). Nothing when the entry is gone."""

    @abstractmethod
    def recorded(self, sku: str, entry: WaitingOrder) -> None:
        """Mark `entry` once its order is written backordered: that change of the entry is what
        has the reorder points buy what the order lacks (functions/backorders). Nothing when the
        entry is gone (the order was filled meanwhile). Then hands on, from after the entry, each
        arrival's walk that stopped at it before (`stop`): called once the order has taken what
        it may (its fill), the younger orders get what is left."""

    @abstractmethod
    def walked_past(self, sku: str, entry: WaitingOrder) -> None:
        """Hand on, from after `entry`, the walks that stopped at it (`stop`): the run that queued
        its order lost its `backordered` write (a hold, a cancel or an edit came first), so nothing
        would mark it. Nothing when none stopped there, or the entry is gone."""

    @abstractmethod
    def stop(self, sku: str, entry: WaitingOrder, location_id: str, restocked: bool) -> bool:
        """An arrival's walk of `sku` at `location_id` (`restocked`: a restock's) stops at `entry`,
        whose order it read `authorized` at the entry's version: queued by its ReserveStock, its
        `backordered` write and its own look at stock to come (Workflow._wait_for_stock). Kept on
        the entry, for `recorded` (or `walked_past`) to hand the walk on, only while the order is
        still `authorized` at the entry's version, in the same write: not once it was written since
        (backordered, held, cancelled, edited: read it again; a stop landing after the write that
        lost had nothing left to hand it on), nor when the entry is marked already, of another
        version, or gone; whether it was kept."""

    @abstractmethod
    def waiting(self, sku: str, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        """Up to `limit` entries of `sku` after `after` (from the oldest when None), oldest first."""

    @abstractmethod
    def fill(self, order: Order, expected: Order, entries: list[HistoryEntry], top_ups: list[TopUp]) -> None:
        """Atomically: every top-up (each conditional on its reservation holding exactly `held` and
        on enough units being available) and the order's update (conditional on its status and
        version, as OrderRepository.update). A line of an order may take units from several
        locations, so only one write over all of them can keep two concurrent fills of the same
        order from reserving the same line twice. Raises StaleVersion, having written nothing,
        when the order or any of those reservations or stock levels changed since they were read;
        ReservationsFull, having written nothing, when a stock item has no room for another open
        reservation (DynamoDB's 400 KB item)."""


class BackorderedOrders(ABC):
    """Every backordered order, oldest first, read through an index (never a scan of the table)."""

    @abstractmethod
    def oldest(self, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        """Up to `limit` backordered orders placed after `after` (from the oldest when None), oldest first."""


class DuePickups(ABC):
    """Orders with a pickup waiting at its store past its `collect_by`, found through an index."""

    @abstractmethod
    def due(self, before: datetime) -> Iterator[str]:
        """Ids of the orders whose earliest waiting pickup was to be collected before `before`,
        earliest first, read a page at a time as the caller takes them: a caller that stops early
        reads no further page."""


class PendingRefunds(ABC):
    """Orders with a refund still `pending` at the gateway, found through an index."""

    @abstractmethod
    def pending_since_before(self, before: datetime) -> Iterator[str]:
        """Ids of the orders whose oldest pending refund was begun before `before`, oldest first,
        read a page at a time as the caller takes them: a caller that stops early reads no
        further page."""


class UnsettledAuthorizations(ABC):
    """Orders holding an authorization an edit left, or a cancelled order's own whose void the
    gateway could not make (Order.authorizations_left), found through an index."""

    @abstractmethod
    def left_since_before(self, before: datetime) -> Iterator[str]:
        """Ids of the orders that hold one and last changed before `before`, oldest first, read a
        page at a time as the caller takes them: a caller that stops early reads no further page."""

    @abstractmethod
    def set_aside(self, order: Order) -> None:
        """Leave the order out of left_since_before until its next write (which lists it again),
        provided it is still at its version: nothing is to be asked of it until it changes. What
        else it owes is found as if it held no authorization (what a return kept back, a carrier's
        work: KeptBackRefunds, OrdersOwingCarrier), not hidden with it."""


class SettlementCaptures(ABC):
    """Orders with a settlement capture asked of the gateway and not recorded (a CaptureRequest with
    no shipment: Order.capture_request(None)), found through an index."""

    @abstractmethod
    def requested_since_before(self, before: datetime) -> Iterator[str]:
        """Ids of the orders with one standing that last changed before `before`, oldest first,
        read a page at a time as the caller takes them."""


class KeptBackRefunds(ABC):
    """Orders owing the refund of what a return kept back, refundable now (core.refunds.owes_kept_back),
    found through an index."""

    @abstractmethod
    def owed_since_before(self, before: datetime) -> Iterator[str]:
        """Ids of the orders owing one that last changed before `before`, oldest first, read a page
        at a time as the caller takes them."""


class OrdersOwingCarrier(ABC):
    """Orders that still owe the carrier something (Order.owes_carrier_work), found through an index."""

    @abstractmethod
    def owing_since_before(self, before: datetime) -> Iterator[str]:
        """Ids of the orders owing the carrier work that last changed before `before`, oldest
        first, read a page at a time as the caller takes them."""


class WorkflowStarter(ABC):
    @abstractmethod
    def start(
        self, order_id: str, channel: str = "", correlation_id: str = "", rerun: str | None = None,
        finish_cancel: bool = False,
    ) -> bool:  # fmt: skip
        """Start the order's workflow; False when the service refused a duplicate name (a Standard
        workflow's). Express starts every call: the steps are what make a repeat harmless.
        `channel` and `correlation_id` ride in the input for the steps' log lines; `rerun` names a
        deliberate new execution (the reconciler's), so no service refuses it; `finish_cancel`
        runs only the clean-up of the order's recorded cancel (its stock released, its
        authorization voided)."""


class ReturnWorkflowStarter(ABC):
    @abstractmethod
    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        """Start the returns workflow for a received return (a new execution every call: its
        steps skip what is done, so starting it again resumes the return)."""


class SourcingRulesRepository(ABC):
    """The sourcing rules, every version kept: the newest is the one in force."""

    @abstractmethod
    def current(self) -> SourcingRules:
        """The newest version, or the defaults (version 0) before the first is written."""

    @abstractmethod
    def add(self, rules: SourcingRules) -> None:
        """Store a new version. Raises StaleVersion when that version number exists already
        (another change was written since `rules` was made from the current one)."""

    @abstractmethod
    def history(self, limit: int, cursor: str | None = None) -> tuple[list[SourcingRules], str | None]:
        """Versions newest first, and an opaque cursor for the next page (None: no more).
        Raises InvalidCursor for a cursor not issued here."""

    @abstractmethod
    def wake_from(self, version: int, after: WaitingOrder) -> None:
        """Record on `version` the backordered order after which waking them for it goes on: the
        change this makes hands the next page to the backorder filler (the Catalog stream)."""
