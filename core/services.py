"""Use cases: capture an order, keep the catalog, the network and stock counts, read orders."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pluggy

from core import order_lists
from core.access import ADMIN_KEY_ID, ApiKey, IssuedApiKey, NewApiKey, Scope, hash_secret, new_secret
from core.cursors import cursor_document, cursor_of
from core.deadline import TimeUp, never
from core.errors import (
    Conflict,
    DuplicateOrder,
    InsufficientStock,
    InvalidCursor,
    InvalidRequest,
    NotFound,
    PickupNotOffered,
    TransientError,
    UnknownPaymentMethod,
    UnknownSku,
)
from core.events import OrderEvent
from core.hook_calls import call_hook, calls_about
from core.ids import KEPT_HASH_CHARS, new_id, order_id_for, short_hash
from core.models import (
    Address,
    HistoryEntry,
    InventorySummary,
    Location,
    LocationInput,
    LocationStock,
    Order,
    PlaceOrder,
    Product,
    ProductInput,
    PromotionGrant,
    ReviewRequest,
    StockLevel,
    Totals,
    review_detail,
    utc_now,
)
from core.money import AmountTooLarge, Money
from core.order_changes import visible
from core.ports import (
    ApiKeyRepository,
    ApiStage,
    AuthorizerCache,
    CatalogRepository,
    CountedAlready,
    GatewayKeys,
    InventoryRepository,
    OrderFilter,
    OrderRepository,
    ShortCount,
)
from core.pricing import PricedOrder, Pricing
from core.secret_hashes import is_usable_secret
from core.sourcing_rules import SourcingRules
from core.status import OPEN_AT_STORE, OrderStatus

Clock = Callable[[], datetime]
REVIEW_ACTOR = "review_rules"  # the history's actor of a hold a review rule asked for at capture


class CatalogService:
    """`stored`: the catalog read without a cache (consistently), to tell a PUT that changes
    nothing (a cached copy may be another container's write behind); `catalog` by default."""

    def __init__(self, catalog: CatalogRepository, clock: Clock = utc_now, stored: CatalogRepository | None = None):
        self._catalog = catalog
        self._clock = clock
        self._stored = stored or catalog

    def put_product(self, sku: str, data: ProductInput) -> tuple[Product, bool]:
        """The product as `data` says, replacing the one stored; one that `data` would not change
        is answered as it is (its updated_at too) and nothing is written: a catalog sync that sends
        every product again changes none it leaves be. (A write racing this read wins either way,
        as it would the PUT's own.)"""
        current = self._stored.get_product(sku)
        if current is not None and _unchanged(current, data):
            return current, False
        product = Product(sku=sku, updated_at=self._clock(), **data.model_dump())
        return product, self._catalog.put_product(product)

    def get_product(self, sku: str) -> Product:
        product = self._catalog.get_product(sku)
        if product is None:
            raise NotFound(f"no product {sku}")
        return product

    def put_location(self, location_id: str, data: LocationInput) -> tuple[Location, bool]:
        """As put_product: a location `data` would not change is answered as it is, and the
        network's item is not written (its stream wakes no backorder function for nothing)."""
        current = self._stored.get_location(location_id)
        if current is not None and _unchanged(current, data):
            return current, False
        location = Location(location_id=location_id, updated_at=self._clock(), **data.model_dump())
        return location, self._catalog.put_location(location)

    def locations(self, limit: int, cursor: str | None) -> tuple[list[Location], str | None]:
        """A page of the network in location_id order. The network is one item read whole, so the
        cursor is the last id shown: a location added meanwhile is shown when it sorts after it."""
        after = "" if cursor is None else _location_after(cursor)
        later = [loc for loc in self._catalog.list_locations() if loc.location_id > after]
        page = later[:limit]
        if len(later) <= limit:
            return page, None
        return page, cursor_of({"l": "locations", "after": page[-1].location_id})


def _unchanged(stored: Product | Location, data: ProductInput | LocationInput) -> bool:
    """Whether a PUT of `data` would store what `stored` holds, but for its updated_at."""
    return stored.model_dump(include=set(type(data).model_fields)) == data.model_dump()


def _location_after(cursor: str) -> str:
    """The location id a GET /locations cursor names, or InvalidCursor unless that list issued it."""
    try:
        decoded = cursor_document(cursor)
        after = decoded["after"]
        valid = decoded["l"] == "locations" and isinstance(after, str) and after != ""
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return after


STOCK_COUNT_REASON = "stock_count"  # a reject's reason when a stock take found fewer units than were reserved
COUNT_ATTEMPTS = 3  # plans of a stock take below what is reserved, each on the record as it was read
# The most orders one stock take sends elsewhere, and the most reservations its write is conditional
# on: each reject is a few writes within the API's 29 seconds, and each key a clause of the count's
# condition (DynamoDB's expressions are at most 4 KB).
MAX_COUNT_REJECTS = 25
MAX_COUNT_RELEASES = 100
# The most stock takes recorded short one reconciler pass works (oldest first, paged), each finished
# unless its time is up; the next pass goes on after the last one it dealt with, round the listing,
# so those that keep failing or an order keeps are passed over, never in the way of the later ones.
SHORT_COUNTS_READ = 500


class CountsReject(Protocol):
    """OrderActions.reject as a stock take calls it: the sku it counted short names the exclusion."""

    def __call__(
        self, order_id: str, shipment_id: str, reason: str, actor: str, *, counted_sku: str | None = None
    ) -> Order: ...


class CountsSendBack(Protocol):
    """OrderActions.source_backorder_again as a stock take calls it."""

    def __call__(
        self, order_id: str, location_id: str, reason: str, actor: str, *, counted_sku: str | None = None
    ) -> Order: ...


class NotAllocatedYet(InsufficientStock):
    """What a stock take may not send elsewhere includes units of orders their workflow has not
    allocated yet (InventoryService._to_reject): refused as any such count before it is recorded,
    but a count recorded already keeps its mark, so the reconciler's pass rejects the parcels their
    workflow books there rather than leave them units the shelf lacks."""


@dataclass
class ShortCountsFinished:
    """What InventoryService.finish_short_counts did, filled as it goes."""

    finished: list[ShortCount] = field(default_factory=list)
    failed: dict[ShortCount, Exception] = field(default_factory=dict)
    # Marks not started: the pass's time was up, or more were marked than one pass reads (counted
    # as one then: the rest are not read). The next pass starts with them.
    left: int = 0


class InventoryService:
    def __init__(
        self,
        inventory: InventoryRepository,
        catalog: CatalogRepository,
        orders: Callable[[], OrderRepository] | None = None,
        reject: CountsReject | None = None,
        clock: Clock = utc_now,
        send_back: CountsSendBack | None = None,
    ):
        """`orders` (the repository, built when first needed: a stock read never reads an order)
        and `reject` (OrderActions.reject: order id, shipment id, reason, actor, and the sku counted
        short) let a stock take below the reserved units send the shipments it no longer covers to
        be sourced again; without them such a count is refused (InsufficientStock). `send_back`
        (OrderActions.source_backorder_again: order id, location id, reason, actor, the sku) sends a
        backordered order's units there back to be sourced; without it they are kept. The sku
        named lets the exclusion each makes lapse once it is restocked there."""
        self._send_back = send_back
        self._inventory = inventory
        self._catalog = catalog
        self._orders = orders
        self._reject = reject
        self._clock = clock

    def _require(self, sku: str, location_id: str) -> None:
        if self._catalog.get_product(sku) is None:
            raise NotFound(f"no product {sku}")
        if self._catalog.get_location(location_id) is None:
            raise NotFound(f"no location {location_id}")

    def count(
        self, sku: str, location_id: str, on_hand: int, actor: str = "stock_take", channel: str | None = None,
        key: str | None = None,
    ) -> StockLevel:  # fmt: skip
        """Record the counted units. Below what is reserved there, the count is recorded all the
        same and the pending shipments at that location holding the sku, newest order first, are
        rejected (reason `stock_count`, by `actor`) until what stays reserved fits it: each order is
        sourced again with that location excluded (a partly shipped order: only that parcel's units,
        those no other location has cancelled out_of_stock, as its reject does). The count lands
        first, in a write conditional on the reservations it is to release still being held and the
        rest fitting, which marks the
        stock item short (ShortCount) until what stays reserved fits: `available` is negative until
        those releases land, so no order reserves the released units before. A count sent again,
        or the reconciler's pass over the marks (finish_short_counts) after the function died
        between the count and the rejects, finds the same count short and rejects what is left
        (recorded, it keeps its mark while orders not allocated yet hold what does not fit: an
        order sent back to be sourced since it was read, reserved before the send-back landed).
        InsufficientStock, recording nothing, when rejecting every such shipment would not make it
        fit (units held by ready pickups, by orders not yet allocated, or by one a person is to confirm
        a parcel of), unless on_hand is that count already (recorded: sent again, it answers the level).
        A held order's pending shipment is rejected as any other (OrderActions.reject:
        it stays on hold, sourced again once released). Units a
        backordered order holds there go first (send_back: it is sourced again without that
        location, reason `stock_count`, also when sent back to be sourced since this read it:
        Order.source_again_without), newest order first: they are in no parcel yet. A key bound to
        a `channel` changes no other channel's order, and sends none elsewhere: its count below the
        units reserved is InsufficientStock (but as sent again: on_hand that count already). `key`:
        the count's own, derived from a client's Idempotency-Key, recorded with its write: a count
        under it recorded already (its answer lost) is answered the level as stored, writing nothing
        (no later counted_at, no reject: the reconciler's pass finishes those owed), also when more is
        reserved there since than it counted (not refused as above)."""
        self._require(sku, location_id)
        short = ShortCount(sku, location_id, actor, self._clock())
        written = False
        for _ in range(COUNT_ATTEMPTS):
            level, held = self._inventory.held_at(sku, location_id)
            if level.reserved <= on_hand or self._reject is None:
                try:
                    # Above what was there, it adds units as a receipt does: a count's exclusion
                    # there lapses (restocked_since_count).
                    return self._inventory.set_on_hand(
                        sku, location_id, on_hand, "stock_take", counted_at=short.counted_at,
                        restocked=on_hand > level.on_hand, key=None if written else key,
                    ).as_shown()  # fmt: skip
                except CountedAlready as counted:
                    return counted.level.as_shown()
                except InsufficientStock:
                    if self._reject is None:
                        raise
                    continue  # reserved meanwhile: planned again on the record as it is now
            if channel is not None:
                if level.on_hand == on_hand:  # recorded already: it stands
                    return level.as_shown()
                refused = InsufficientStock(
                    f"cannot count {on_hand}: {level.reserved} units of {sku} are reserved at {location_id}, and a "
                    "key bound to a channel sends no order elsewhere",
                    details=[{"field": "on_hand", "message": f"must be at least the {level.reserved} reserved units "
                              "(a key of every channel may count fewer)"}],
                )  # fmt: skip
                return self._unless_counted(refused, level, on_hand, short.counted_at, key)
            try:
                shipments, releasing = self._to_reject(location_id, held, level.reserved - on_hand)
            except InsufficientStock as kept:
                if written:  # recorded by this call; a shipment was readied for pickup since
                    if not isinstance(kept, NotAllocatedYet):  # else the mark stays for their parcels
                        self._inventory.short_count_finished(short)
                    return level.as_shown()
                if level.on_hand == on_hand:  # recorded already (a retry whose answer was lost): it stands
                    return level.as_shown()
                return self._unless_counted(kept, level, on_hand, short.counted_at, key)
            try:
                level = self._inventory.set_on_hand(
                    sku, location_id, on_hand, "stock_take", releasing, short, counted_at=short.counted_at,
                    key=None if written else key,  # recorded by this call's first write
                )  # fmt: skip
            except CountedAlready as counted:
                return counted.level.as_shown()
            except InsufficientStock:
                continue  # the reservations changed meanwhile
            written = True
            self._rejected(sku, location_id, shipments, actor)
            level, _ = self._inventory.held_at(sku, location_id)
            if level.reserved <= level.on_hand:
                self._inventory.short_count_finished(short)
                return level.as_shown()
        if written:  # recorded, its mark kept: the reconciler's pass (or the count sent again) finishes it
            return level.as_shown()
        raise InsufficientStock(
            f"cannot count {on_hand}: the units of {sku} reserved at {location_id} keep changing; count again",
            details=[{"field": "on_hand", "message": f"{level.reserved} units are reserved"}],
        )

    def _unless_counted(
        self, refused: InsufficientStock, level: StockLevel, on_hand: int, counted_at: datetime, key: str | None
    ) -> StockLevel:
        """Raise `refused` (the count, below what `level` holds reserved, recording nothing) unless
        the count under `key` was recorded already: a retry whose first answer was lost, more reserved
        there since, is answered the level as stored, as the same retry with nothing changed is. The
        keyed write is what finds its key, before its condition (set_on_hand); it records the count
        only when the reservations went meanwhile and it fits."""
        if key is None:
            raise refused
        try:
            return self._inventory.set_on_hand(
                level.sku, level.location_id, on_hand, "stock_take", counted_at=counted_at,
                restocked=on_hand > level.on_hand, key=key,
            ).as_shown()  # fmt: skip
        except CountedAlready as counted:
            return counted.level.as_shown()
        except InsufficientStock:
            raise refused from None

    def _rejected(self, sku: str, location_id: str, shipments: list[tuple[str, str, bool]], actor: str) -> None:
        assert self._reject is not None
        for order_id, shipment_id, backordered in shipments:
            # Conflict, NotFound: moved on (cancelled, shipped), planned again after.
            with contextlib.suppress(Conflict, NotFound), calls_about(order_id=order_id):
                if backordered:
                    assert self._send_back is not None
                    self._send_back(order_id, location_id, STOCK_COUNT_REASON, actor, counted_sku=sku)
                else:
                    self._reject(order_id, shipment_id, STOCK_COUNT_REASON, actor, counted_sku=sku)

    def finish_short_counts(
        self, done: ShortCountsFinished, before: datetime, limit: int = SHORT_COUNTS_READ, time_up: TimeUp = never
    ) -> None:
        """Finish the stock takes recorded short before `before` whose function died between the
        count and its rejects (their marks: InventoryRepository.short_counts), oldest first: the
        pending shipments there are rejected (by the count's actor, reason `stock_count`) until what
        stays reserved fits what is on hand, as the count sent again would, without writing the
        count again (an adjustment since stands). A mark is removed once it fits, or once nothing
        left there may be sent elsewhere (ready pickups: their collection or expiry ends it); it
        stays while orders not allocated yet hold what does not fit (NotAllocatedYet). The
        marks finished go in `done.finished`; one whose work raised (a reject's plugin, a table down)
        in `done.failed`, its mark left for the next pass, and the pass goes on to the next: at most
        `limit` are read (paged), so those that keep failing never keep the later ones waiting. None
        is started once `time_up`: the rest wait for the next pass (`done.left`, with one more
        when more than `limit` are marked). A pass that stops so records after which mark the next
        starts (InventoryRepository.record_short_counts_resume), and the next takes the listing
        round from there (the later marks, then the oldest up to it): marks that stay (an order
        not allocated yet keeps them, held or parked, or their work keeps failing) are dealt with
        once a round however many they are, and never keep a later one waiting for good. Reads:
        where to start (one Query), the marks (one Query a page, two when it goes round), and per
        mark worked its stock item (a Query) and the orders holding units there (a BatchGetItem);
        a write where to start when that changes."""
        resume = self._inventory.short_counts_resume()
        marked = self._inventory.short_counts(before, limit + 1, after=resume)
        if resume is not None and len(marked) <= limit:  # round the listing: the oldest, up to where it began
            wrapped = self._inventory.short_counts(before, limit + 1 - len(marked))
            marked += [short for short in wrapped if short.counted_at <= resume]
        stopped: ShortCount | None = None  # the last mark dealt with, when the pass stops before the end
        for n, short in enumerate(marked[:limit]):
            if time_up():
                done.left = len(marked) - n
                stopped = marked[n - 1] if n else None
                break  # the rest to the next pass
            try:
                with calls_about(sku=short.sku, location_id=short.location_id):
                    finished = self._finish(short)
            except Exception as error:  # any: the other marks are still finished
                done.failed[short] = error
                continue
            if finished:
                done.finished.append(short)
        else:
            done.left = len(marked) - limit if len(marked) > limit else 0
            stopped = marked[limit - 1] if done.left else None
        after = stopped.counted_at if stopped is not None else (resume if done.left else None)
        if after != resume:
            self._inventory.record_short_counts_resume(after)

    def _finish(self, short: ShortCount) -> bool:
        """Whether `short` is finished (its mark removed): what stays reserved fits, or nothing left
        there may be sent elsewhere. Orders that kept moving on meanwhile, or not allocated yet,
        leave it for the next pass."""
        for _ in range(COUNT_ATTEMPTS):
            level, held = self._inventory.held_at(short.sku, short.location_id)
            if level.reserved <= level.on_hand:
                break
            try:
                shipments, _ = self._to_reject(short.location_id, held, level.reserved - level.on_hand)
            except NotAllocatedYet:
                return False  # a later pass rejects the parcels their workflow books there
            except InsufficientStock:
                break  # held by orders no count sends elsewhere
            self._rejected(short.sku, short.location_id, shipments, short.actor)
        else:
            level, _ = self._inventory.held_at(short.sku, short.location_id)
            if level.reserved > level.on_hand:
                return False
        self._inventory.short_count_finished(short)
        return True

    def _to_reject(
        self, location_id: str, held: dict[str, int], excess: int
    ) -> tuple[list[tuple[str, str, bool]], dict[str, int]]:
        """The shipments at `location_id` to reject, newest order first, so that `excess` reserved
        units go, and the reservations ({order#line: units}) their rejects release.
        InsufficientStock when rejecting every one the location may still reject falls short;
        NotAllocatedYet when orders not allocated yet hold some of what is kept."""
        assert self._orders is not None
        by_order: dict[str, dict[str, int]] = defaultdict(dict)
        for key, units in held.items():
            by_order[key.rpartition("#")[0]][key] = units
        candidates: list[tuple[Order, str, bool]] = []
        unallocated = False  # units held by orders whose parcels are still to be booked
        for order in self._orders().get_many(sorted(by_order)).values():
            # Its parcel there, whichever generation (Order.parcel_id); else the id one made now would have.
            here = (s.id for s in order.shipments if s.location_id == location_id)
            shipment_id = next(here, None) or order.parcel_id(location_id)
            # Backordered, or held while backordered: its units are in no parcel, and the hold stays.
            waiting = order.waits_for_stock() and self._send_back is not None
            if waiting and any(a.location_id == location_id for a in order.allocations):
                candidates.append((order, shipment_id, True))
                continue
            rejected = location_id in order.excluded_locations and all(s.id != shipment_id for s in order.shipments)
            if not rejected:
                try:
                    # A partly shipped order's parcel is sourced again alone, as its reject decides
                    # (OrderActions.reject: Order.rejectable_in_part); any other order's all of it.
                    if order.status is OrderStatus.PARTIALLY_SHIPPED:
                        order.rejectable_in_part(shipment_id)
                    else:
                        order.rejectable(shipment_id)
                except (Conflict, NotFound):
                    # No pending shipment there a reject may take (a ready pickup, not yet allocated, ...).
                    unallocated = unallocated or order.not_allocated_yet()
                    continue
            candidates.append((order, shipment_id, False))
        # A backordered order's units first (they are in no parcel yet: it waits for stock anyway),
        # then pending shipments; newest order first within each.
        candidates.sort(key=lambda found: (found[2], found[0].created_at, found[0].id), reverse=True)
        shipments: list[tuple[str, str, bool]] = []
        releasing: dict[str, int] = {}
        for order, shipment_id, backordered in candidates:
            if sum(releasing.values()) >= excess:
                break
            shipments.append((order.id, shipment_id, backordered))
            releasing.update(by_order[order.id])
        if sum(releasing.values()) < excess:
            kept = sum(held.values()) - sum(releasing.values())
            raise (NotAllocatedYet if unallocated else InsufficientStock)(
                f"{kept} units reserved at {location_id} are held by orders its count cannot send elsewhere",
                details=[{"field": "on_hand", "message": f"must be at least the {kept} units held by ready pickups "
                          "and by orders no reject may send elsewhere yet (not allocated, or a parcel to confirm)"}],
            )  # fmt: skip
        if len(shipments) > MAX_COUNT_REJECTS or len(releasing) > MAX_COUNT_RELEASES:
            raise InsufficientStock(
                f"counting {sum(held.values()) - excess} would send {len(shipments)} orders elsewhere, "
                f"more than the {MAX_COUNT_REJECTS} one stock take may",
                details=[{"field": "on_hand", "message": "count in steps: a count that sends at most "
                          f"{MAX_COUNT_REJECTS} orders elsewhere first"}],
            )  # fmt: skip
        return shipments, releasing

    def adjust(self, sku: str, location_id: str, delta: int, reason: str, key: str | None = None) -> StockLevel:
        """`key`: the adjustment's own, derived from a client's Idempotency-Key (counted once).
        Answered as shown (StockLevel.as_shown): after a stock take whose rejects are still owed,
        the stored `available` is below zero."""
        self._require(sku, location_id)
        return self._inventory.adjust(sku, location_id, delta, reason, key).as_shown()

    def summary(self, sku: str) -> InventorySummary:
        if self._catalog.get_product(sku) is None:
            raise NotFound(f"no product {sku}")
        levels = sorted(self._inventory.levels({sku})[sku], key=lambda level: level.location_id)
        locations = [
            LocationStock(
                location_id=level.location_id,
                on_hand=level.on_hand,
                reserved=level.reserved,
                available=level.as_shown().available,
                incoming=level.incoming,
                next_expected_at=level.next_expected_at,
                reorder=level.reorder,
            )
            for level in levels
        ]
        return InventorySummary(sku=sku, available=sum(loc.available for loc in locations), locations=locations)


def request_hash(cmd: PlaceOrder) -> str:
    """What a POST /orders body asks, as capture knows it: the validated command as JSON with its
    keys sorted (the request the API's Idempotency-Key hashes), without the fields left at their
    defaults, hashed (ids.short_hash). Two bodies that ask the same order (keys in another order, a
    default sent or left out, a CSV row or a JSON line) hash alike; and a field added to the body
    later with a default changes no order's stored hash, so a file imported again after it is still
    the same content. Kept on the order's created entry (`request_hash`, never shown): its first
    KEPT_HASH_CHARS characters."""
    return _content_hash(cmd)[:KEPT_HASH_CHARS]


def _content_hash(cmd: PlaceOrder) -> str:
    return short_hash(json.dumps(cmd.model_dump(mode="json", exclude_defaults=True), sort_keys=True))


def asked_alike(kept: object, cmd: PlaceOrder) -> bool:
    """Whether a created entry's `request_hash` (`kept`: KEPT_HASH_CHARS characters, or the whole
    hash in an entry written before) is that of `cmd` (request_hash)."""
    return isinstance(kept, str) and len(kept) >= KEPT_HASH_CHARS and _content_hash(cmd).startswith(kept)


class CaptureService:
    """Capture: validate, price through plugins, check stock, then one conditional put."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        pricing: Pricing,
        clock: Clock = utc_now,
        payment_methods: Callable[[], set[str]] | None = None,
        review_rules: pluggy.PluginManager | None = None,
        sourcing_rules: Callable[[], SourcingRules] | None = None,
        sourcing: pluggy.PluginManager | None = None,
    ):
        self._orders = orders
        self._catalog = catalog
        self._inventory = inventory
        self._pricing = pricing
        self._clock = clock
        self._payment_methods = payment_methods
        self._review_rules = review_rules
        # The rules in force, so capture counts only the stock allocation may take: none at an
        # excluded location, none of a location's safety stock.
        self._sourcing_rules = sourcing_rules
        # The sourcing plugins, so that under `max_shipments` capture refuses an order allocation
        # could only cancel: no plan ships it from that few locations.
        self._sourcing = sourcing

    def place(
        self, cmd: PlaceOrder, actor: str, request_id: str | None = None, order_id: str | None = None,
        request_key: str | None = None,
    ) -> Order:  # fmt: skip
        """Store a new pending order; the order workflow takes it from there. `request_id` (the
        API request that placed it) is kept on the created entry: the outbox passes it to the
        workflow, whose steps log it, so one order is followed from its request to its end.
        `request_key` (a client's Idempotency-Key with its key id and the body sent: placed_under)
        is kept there too, never shown: a retry of that request finds the order it placed; and so
        is the hash of what it asks (request_hash), by which an import tells the same order sent
        again (a duplicate) from another order under its channel and external id. `order_id` names
        an order without an external id (ids.order_id_for_request); DuplicateOrder when it is taken,
        as for an external id, even when today's catalog or stock would refuse it: an order sent
        again (a file imported again, a message or request retried) is the order placed, whose own
        reservation may have taken the last units."""
        try:
            priced = self.quote(cmd)
        except (InvalidRequest, Conflict):
            # Looked up only when refused: the put below finds a duplicate at no cost.
            placed_id = order_id
            if placed_id is None and cmd.external_id is not None:
                placed_id = order_id_for(cmd.channel, cmd.external_id)
            if placed_id is not None and self._orders.get(placed_id, consistent=True) is not None:
                raise DuplicateOrder(placed_id) from None
            raise
        return self._placed(
            cmd, priced, self._clock(), actor, request_id, order_id=order_id, request_key=request_key,
            content=request_hash(cmd),
        )  # fmt: skip

    def placed_under(
        self, order_id: str, request_key: str, cmd: PlaceOrder, earlier_key: str | None = None
    ) -> Order | None:
        """The order `order_id` if the request that asked `cmd` under `request_key`
        (ids.order_request_key) placed it: its created entry keeps that key and the hash of what
        it asked (request_hash), or `earlier_key`, what an entry written before kept of the same
        request (a hash of its key and body). Read consistently: its write may be a moment old.
        None otherwise."""
        found = self._created(order_id)
        if found is None:
            return None
        order, created = found
        detail = created.detail or {}
        kept = detail.get("request_key")
        if kept == request_key and asked_alike(detail.get("request_hash"), cmd):
            return order
        return order if earlier_key is not None and kept == earlier_key else None

    def created_entry(self, order_id: str) -> tuple[Order, HistoryEntry] | None:
        """Order `order_id` and the entry that created it (who placed it, and the `request_key` and
        `request_hash` of the request that did), read consistently: its write may be a moment old.
        None when there is no such order."""
        return self._created(order_id)

    def _created(self, order_id: str) -> tuple[Order, HistoryEntry] | None:
        found = self._orders.history_range(order_id, 0, 1, consistent=True)
        if found is None or not found[1]:
            return None
        order, (created, *_), _ = found
        return (order, created) if created.type is OrderEvent.CREATED else None

    def place_exchange(
        self, cmd: PlaceOrder, credit: Money, original_id: str, return_id: str, actor: str
    ) -> Order:  # fmt: skip
        """Store a return's replacement order, as `place` would, with the return's refund as its
        `exchange_credit`: its workflow authorizes only what the credit does not cover. Its stock
        is not checked again: the exchange was decided on `quote`'s check (Returns.exchange), and,
        as for any order whose stock goes between capture and ReserveStock, its workflow backorders
        or cancels it (which gives the credit back)."""
        exchange = {"order_id": original_id, "return_id": return_id, "credit": credit}
        return self._placed(cmd, self.quote(cmd, check_stock=False), self._clock(), actor, exchange=exchange)

    def quote(
        self, cmd: PlaceOrder, *, held: dict[tuple[str, str], int] | None = None, excluded: Iterable[str] = (),
        placed_with: Sequence[PromotionGrant] = (), check_stock: bool = True, of: Order | None = None,
        consistent_stock: bool = False, first_line: int = 1,
    ) -> PricedOrder:  # fmt: skip
        """Everything capture checks before storing: skus, payment method, fulfilment, prices
        through the plugins, stock (unless not `check_stock`). Editing an order (`of`) runs the same
        checks, on the stock the order may be sourced from again: what it holds itself counts as
        available (`held`, units by sku and location: the workflow reuses them), the locations that
        rejected a shipment of it (`excluded`) count for nothing, and its promo codes keep what they
        granted it when it was placed (`placed_with`, Order.placed_promotions) whatever their
        promotions say today. Its payment method is not checked: it was taken when the order was
        placed, and the orders paid with it are still captured and refunded through it (an edit
        that grows the total checks it, check_payment_method). A sku of `of` whose units the edit
        leaves as they are, or fewer, keeps the unit price it was sold at (_sold_prices): an edit
        that adds no units of it does not need, nor charge, today's price of it; nor, while the tax
        address stays (the shipping address, or a pickup order's store), today's tax rate of it (an
        address edited is taxed where the order now goes, as a new order there); while the edit
        changes neither the shipping method nor
        the address, the shipping costs what the order was charged unless the edited units change
        today's quote (a method no plugin quotes any more, a rate changed since: its parcels go as
        they were booked), and one that takes units away, never more than that charge for a rate or a
        product's weight raised since (raised_since); its pickup store need not take new pickup
        orders any more. `consistent_stock`:
        the stock is read strongly consistently (for a decision nothing retries: a plain read may not
        show a restock acknowledged a moment ago). `first_line`: the number the lines' ids start at
        (Pricing.price)."""
        skus = {line.sku for line in cmd.lines}
        if of is not None:  # its own skus too: Pricing asks its rules about the order as it was sold
            skus |= {line.sku for line in of.lines}
        products = self._catalog.get_products(skus)
        _check_skus(cmd, products)
        if of is None:
            self.check_payment_method(cmd)
        sources, tax_address = self._sources(cmd, placed=of is not None)
        unit_prices = sold_at = shipped_for = sold_units = taxed_at = None
        if of is not None:
            unit_prices = sold_at = _sold_prices(of, cmd, products, self._pricing)
            sold_units = _units(of)
            same_address = cmd.shipping_address.model_dump() == of.shipping_address.model_dump()
            shipped_for = of.totals.shipping if same_address and cmd.shipping_method == of.shipping_method else None
            if same_address or of.fulfillment.type == "pickup":
                # Taxed where it was: a sku left as it is keeps the rate it was sold at (a taxed line
                # stored before lines kept their rate shows none: the plugins are asked).
                taxed_at = {line.sku: line.tax_rate for line in of.lines
                            if line.sku in unit_prices and (line.tax_rate or not line.tax.amount)}  # fmt: skip
        try:
            priced = self._pricing.price(
                cmd, products, tax_address, unit_prices, placed_with, shipped_for=shipped_for, sold_at=sold_at,
                taxed_at=taxed_at, sold_units=sold_units, first_line=first_line,
            )  # fmt: skip
        except AmountTooLarge as error:
            if error.details:
                raise
            # Lines each below it whose sum, tax or shipping reaches it: fewer units is the remedy.
            said = "their amounts (with their tax and the shipping) reach 10^15"
            raise AmountTooLarge(error.message, details=[{"field": "lines", "message": said}]) from None
        if of is not None and shipped_for is not None and priced.totals.shipping != shipped_for:
            # Sent the same way: when the plugins quote the order as it was as they quote it edited,
            # the edit changes nothing about its shipping, and it keeps what it was charged (a
            # rate changed since is no reason to charge more, or less). A per-unit charge, a
            # weight band, a threshold the edit crosses: today's quote for the edited order.
            as_it_was = PlaceOrder.model_validate(
                {**cmd.model_dump(), "lines": [{"sku": line.sku, "quantity": line.quantity}
                                               for line in of.lines if line.quantity]}
            )  # fmt: skip
            products = products | self._catalog.get_products({line.sku for line in as_it_was.lines} - set(products))
            try:
                before = self._pricing.price(
                    as_it_was, products, tax_address, _sold_prices(of, as_it_was), placed_with,
                    shipped_for=shipped_for, sold_at=sold_at, sold_units=sold_units,
                )  # fmt: skip
            except AmountTooLarge:
                # The order as it was reaches 10^15 at today's rates (a tax rate raised since): the
                # edited order, below it, is not refused for it; unasked, it gets today's quote.
                before = None
            if before is not None and (
                before.totals.shipping == priced.totals.shipping
                or (
                    _takes_units_away(cmd, of)
                    and raised_since(before.totals.shipping, shipped_for, priced.totals.shipping)
                )
            ):
                priced = _shipped_for(priced, shipped_for)
        may_wait = _may_wait(cmd, products, of)
        if check_stock:
            self._check_stock(cmd, products, sources, held or {}, set(excluded), may_wait, consistent=consistent_stock)
        return priced

    def check_payment_method(self, cmd: PlaceOrder) -> None:
        """UnknownPaymentMethod (422) unless a payment plugin takes `cmd`'s method for new money:
        a new order's, or what an edit adds to an order's total."""
        if self._payment_methods is not None and cmd.payment.method not in self._payment_methods():
            raise UnknownPaymentMethod(
                f"no payment plugin takes method {cmd.payment.method}",
                details=[{"field": "payment.method", "message": "not a payment method of this OMS"}],
            )

    def price(
        self, cmd: PlaceOrder, unit_prices: Mapping[str, Money] | None = None, *, of: Order | None = None
    ) -> PricedOrder:
        """Prices through the plugins exactly as capture does, without the stock check: for units
        already reserved or shipped (what a cancel leaves on an order). A sku in `unit_prices`
        keeps that unit price. `of`: the order priced again, whose promo codes keep what they
        granted it (as for `quote`), whose pickup store stays its tax address after the store
        stopped taking new pickup orders (its units are there already), and whose shipping method
        and units cost what they were charged should no plugin quote or price them any more (its
        parcels are booked, its units sold), and whose skus keep the tax rate they were sold at (a
        rate changed since does not tax units sold again)."""
        skus = {line.sku for line in cmd.lines}
        if of is not None:  # its own skus too, as for `quote`
            skus |= {line.sku for line in of.lines}
        products = self._catalog.get_products(skus)
        _check_skus(cmd, products)
        _, tax_address = self._sources(cmd, placed=of is not None)
        if of is None:
            return self._pricing.price(cmd, products, tax_address, unit_prices)
        return self._pricing.price(
            cmd, products, tax_address, unit_prices, of.placed_promotions(), shipped_for=of.totals.shipping,
            sold_at={line.sku: line.unit_price for line in of.lines},
            # A taxed line stored before lines kept their rate shows none: the plugins are asked.
            taxed_at={line.sku: line.tax_rate for line in of.lines if line.tax_rate or not line.tax.amount},
            sold_units=_units(of),
        )  # fmt: skip

    def _placed(
        self, cmd: PlaceOrder, priced: PricedOrder, now: datetime, actor: str, request_id: str | None = None,
        exchange: dict[str, Any] | None = None, order_id: str | None = None, request_key: str | None = None,
        content: str | None = None,
    ) -> Order:  # fmt: skip
        zero = Money.zero(cmd.currency)
        order = Order(
            id=order_id or order_id_for(cmd.channel, cmd.external_id),
            status=OrderStatus.PENDING,
            channel=cmd.channel,
            external_id=cmd.external_id,
            currency=cmd.currency,
            customer=priced.customer,
            lines=priced.lines,
            shipping_address=priced.shipping_address,
            fulfillment=cmd.fulfillment,
            shipping_method=priced.shipping_method,
            promo_codes=priced.promo_codes,
            promotion_grants=priced.grants,
            totals=priced.totals,
            # Validated once, by the order: an order validates its Payment again whatever it is given.
            payment={"method": cmd.payment.method, "authorized": zero, "captured": zero, "refunded": zero},
            created_at=now,
            updated_at=now,
            version=1,
            priced_version=1,
            status_since=now,
            exchange_of=exchange["return_id"] if exchange else None,
            exchange_credit=exchange["credit"] if exchange else None,
            credit_rest=_credit_rest(exchange["credit"], priced.totals.grand_total) if exchange else None,
        )
        created = HistoryEntry(
            at=now,
            type=OrderEvent.CREATED,
            from_status=None,
            to_status=OrderStatus.PENDING,
            actor=actor,
            detail={
                "grand_total": order.totals.grand_total.model_dump(mode="json"),
                **({"request_id": request_id} if request_id else {}),
                **({"request_key": request_key} if request_key else {}),
                **({"request_hash": content} if content else {}),
                **({"exchange": _exchange_detail(exchange)} if exchange else {}),
            },
        )
        order, held = self._reviewed(order, now)
        self._orders.add(order, created, payment_token=cmd.payment.token, later_entries=held)
        return order

    def reviews(self, order: Order) -> list[ReviewRequest]:
        """What the review rules ask for `order` (hook oms_review_order): nothing without rules."""
        if self._review_rules is None:
            return []
        return call_hook(self._review_rules.hook.oms_review_order, order=order) or []

    def _reviewed(self, order: Order, now: datetime) -> tuple[Order, list[HistoryEntry]]:
        """The new order, on hold when a review rule asks for it (with the hold's entry): stored
        that way in the same write, so its workflow never sees it pending and authorizes nothing."""
        requests = self.reviews(order)
        if not requests:
            return order, []
        first = requests[0]
        held, entry = order.hold_for(
            first.reason, first.note, at=now, actor=REVIEW_ACTOR, detail=review_detail(requests)
        )
        return held, [entry]

    def _sources(self, cmd: PlaceOrder, *, placed: bool = False) -> tuple[set[str] | None, Address]:
        """Locations whose stock may serve the order (None: every shipping location), and the
        address tax is computed for. `placed`: the order exists, and its pickup store need not
        take pickup orders any more."""
        fulfillment = cmd.fulfillment
        if fulfillment.type == "ship":
            if fulfillment.location_id is not None:
                raise InvalidRequest(
                    "location_id is only for pickup orders",
                    details=[{"field": "fulfillment.location_id", "message": "only allowed with type pickup"}],
                )
            return None, cmd.shipping_address
        if fulfillment.location_id is None:
            raise InvalidRequest(
                "a pickup order needs the store's location_id",
                details=[{"field": "fulfillment.location_id", "message": "required for pickup"}],
            )
        location = self._catalog.get_location(fulfillment.location_id)
        if location is None:
            # As POST /purchase-orders, PUT /sourcing/rules and a return's receipt name a location
            # the network does not have.
            raise PickupNotOffered(
                f"no location {fulfillment.location_id}",
                code="unknown_location",
                details=[{"field": "fulfillment.location_id", "message": "not a location of the network"}],
            )
        if not (location.pickup or placed):
            raise PickupNotOffered(
                "that location does not offer pickup",
                details=[{"field": "fulfillment.location_id", "message": "no pickup location with this id"}],
            )
        return {location.location_id}, location.address

    def _check_stock(
        self, cmd: PlaceOrder, products: dict[str, Product], sources: set[str] | None,
        held: dict[tuple[str, str], int], excluded: set[str], may_wait: tuple[str, ...], *, consistent: bool = False,
    ) -> None:  # fmt: skip
        if sources is None:
            sources = {loc.location_id for loc in self._catalog.list_locations() if loc.ships}
        sources = sources - excluded
        wanted: dict[str, int] = defaultdict(int)
        for line in cmd.lines:
            wanted[line.sku] += line.quantity
        short_skus = {sku for sku in wanted if sku not in may_wait}
        rules = self._sourcing_rules() if self._sourcing_rules is not None else SourcingRules()
        # ReserveStock would find no location to source it from and end it out of stock, after
        # authorizing it: products that may wait would wait for nothing that can reach it. Said as
        # it is: the network (no location ships, or those left rejected it) before the rules.
        if not sources:
            raise InsufficientStock(
                "no location that ships orders may supply this order (a location with ships false supplies none)",
                details=[
                    {"field": f"lines[{i}].quantity", "message": "no location that ships orders may supply it"}
                    for i in range(len(cmd.lines))
                ],
            )
        if not sources - set(rules.excluded_locations):
            store = cmd.fulfillment.location_id if cmd.fulfillment.type == "pickup" else None
            if store:  # the customer chose the store: it is named
                message = f"the pickup store {store} supplies no order under the sourcing rules"
                each = f"{store} (the pickup store) is excluded by {rules.named()}"
            else:
                message = "no location may supply this order under the sourcing rules"
                each = f"no location may supply it ({rules.named()})"
            raise InsufficientStock(
                message, details=[{"field": f"lines[{i}].quantity", "message": each} for i in range(len(cmd.lines))]
            )
        # Under max_shipments the units must also lie at few enough locations: that takes the plan.
        planned = rules.max_shipments is not None and self._sourcing is not None
        if not short_skus and not planned:
            return
        # A count the rules cut says so: GET /inventory shows every unit, excluded or held back.
        kept_back = bool(sources & set(rules.excluded_locations)) or any(rules.safety_stock.get(loc) for loc in sources)
        under = f" under {rules.named()}" if kept_back else ""
        # A pickup's count is its store's alone, which GET /inventory's total over the network is not.
        at = f" at {cmd.fulfillment.location_id} (the pickup store)" if cmd.fulfillment.type == "pickup" else ""
        sources = sources - set(rules.excluded_locations)
        skus = set(wanted) if planned else short_skus
        levels = self._inventory.levels(skus, sources, consistent=consistent) if sources else {}
        levels = rules.for_orders(levels)
        if held:
            # As ReserveStock counts them: the order's own units are available to it again, the
            # safety stock kept back from the rest only.
            own = held.get
            levels = {
                sku: [
                    level.model_copy(update={"available": max(level.available, 0) + own((sku, level.location_id), 0)})
                    for level in found
                ]
                for sku, found in levels.items()
            }
        available = {
            sku: sum(max(level.available, 0) for level in levels.get(sku, []) if level.location_id in sources)
            for sku in short_skus
        }
        short = [
            {
                "field": f"lines[{i}].quantity",
                "message": f"{available[line.sku]} of {line.sku} available{at}{under}, {wanted[line.sku]} ordered",
            }
            for i, line in enumerate(cmd.lines)
            if line.sku in short_skus and available[line.sku] < wanted[line.sku]
        ]
        if short:
            raise InsufficientStock("not enough stock for this order", details=short)
        if planned:
            eligible = [loc for loc in self._catalog.list_locations() if loc.location_id in sources]
            self._check_plan(cmd, may_wait, eligible, levels, rules)

    def _check_plan(
        self, cmd: PlaceOrder, may_wait: tuple[str, ...], eligible: list[Location],
        levels: dict[str, list[StockLevel]], rules: SourcingRules,
    ) -> None:  # fmt: skip
        """Refuse (409) an order ReserveStock would end out of stock on this stock: units enough in
        all, but no plan ships the products that may not wait from at most `max_shipments` locations."""
        # Only an order under sourcing rules that plan its shipments needs the planner: imported
        # here, the others' first request (and every new API container) does without it.
        from core.sourcing import allocation_plan, destination_of, unplaced

        assert self._sourcing is not None
        order = unplaced(cmd)
        plan = allocation_plan(
            self._sourcing.hook, order, eligible, levels, destination_of(order, eligible), rules,
            lambda skus: {sku for sku in skus if sku not in may_wait},
        )  # fmt: skip
        if plan is not None:
            return
        message = f"no plan ships it from at most {rules.max_shipments} location(s) (sourcing rules v{rules.version})"
        # What cannot wait is named; an order of products that may all wait fails only for want of
        # any location that may supply it, which every line needs.
        lines = [i for i, line in enumerate(cmd.lines) if line.sku not in may_wait]
        raise InsufficientStock(
            "not enough stock for this order within the sourcing rules",
            details=[{"field": f"lines[{i}].quantity", "message": message} for i in lines or range(len(cmd.lines))],
        )


def _exchange_detail(exchange: dict[str, Any]) -> dict[str, Any]:
    """What a replacement order's `created` entry says of the exchange that placed it."""
    return {
        "order_id": exchange["order_id"],
        "return_id": exchange["return_id"],
        "credit": exchange["credit"].model_dump(mode="json"),
    }


class OrderQueries:
    def __init__(
        self, orders: OrderRepository, owed_entries: Callable[[Order], list[HistoryEntry]] | None = None,
        location: Callable[[str], Location | None] | None = None,
    ):  # fmt: skip
        """`location`: the network's location of an id, or None (CatalogRepository.get_location, a
        warm container's cached read), asked only of a store's pickup list."""
        self._orders = orders
        # Returns.owed_entries: what the order's returns owe its history and a writer died before writing.
        self._owed_entries = owed_entries
        self._location = location

    def get(self, order_id: str, channel: str | None = None) -> Order:
        # Read consistently: a client reads the order straight after placing, shipping or editing it
        # (for the `version` its next If-Match sends); a plain read may be a moment behind, the order
        # as it was or, just placed, none. One read unit per 4 KB instead of half a unit.
        return visible(self._orders.get(order_id, consistent=True), order_id, channel)

    def history(self, order_id: str, channel: str | None = None, *, consistent: bool = False) -> list[HistoryEntry]:
        """The order's history, oldest first, with the entries its returns owed it written first:
        each entry at its place as stored, which never changes (the access log knows a change by it)."""
        found = self._orders.history(order_id, consistent=consistent)
        order = visible(found[0] if found else None, order_id, channel)
        assert found is not None
        if self._owed_entries is not None and self._owed_entries(order):
            # Written after the history was read: after any change that landed in between, so read
            # again (only then: a writer died) rather than put after the history as read.
            found = self._orders.history(order_id, consistent=True)
            assert found is not None
        return list(found[1])

    def history_page(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[HistoryEntry], str | None]:
        """Up to `limit` entries of the order's history (as `history`), oldest first, after the
        place `cursor` names, and the next page's cursor (None: no more). A cursor names a place in
        the whole history, which only grows (its oldest entries moving to pages of their own
        changes no place), and is bound to the order: InvalidCursor for one issued for another
        order or list, or naming no place in this one."""

        def read(start: int, stop: int) -> tuple[list[HistoryEntry], int]:
            # Read consistently, as `get`: a page read straight after a change shows it, and the place
            # a cursor names is never past the end of a history read a moment behind (422 for a good
            # cursor). Only the entries shown are read (a long history's oldest are in pages of their
            # own), then those the returns owed it written, and the range read again if there were
            # any, as `history` does: at their places as stored.
            found = self._orders.history_range(order_id, start, stop, consistent=True)
            order = visible(found[0] if found else None, order_id, channel)
            if self._owed_entries is not None and self._owed_entries(order):
                found = self._orders.history_range(order_id, start, stop, consistent=True)
            assert found is not None
            _, entries, length = found
            return entries, length

        return order_lists.ranged_page(read, order_id, "history", limit, cursor)

    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        self._check_store(where)
        return self._orders.list(where, limit, cursor)

    def _check_store(self, where: OrderFilter) -> None:
        """A store's pickup list names a location of the network and, if any, a status it holds
        (OPEN_AT_STORE): 422 otherwise, never an empty page, which a store's tablet would show as
        "no work" for a mistyped store, or as "nothing collected" for `delivered`. A location that
        takes no pickups now (a warehouse, a store that stopped) has a list all the same: a store
        hands over what it took before it stopped."""
        if where.pickup_location_id is None:
            return
        if self._location is None or self._location(where.pickup_location_id) is None:
            raise InvalidRequest(
                f"no location {where.pickup_location_id}",
                code="unknown_location",  # as POST /purchase-orders and a return's receipt name it
                details=[{"field": "pickup_location_id", "message": f"no location {where.pickup_location_id}"}],
            )
        if where.status is not None and where.status not in OPEN_AT_STORE:
            held = ", ".join(sorted(OPEN_AT_STORE))
            raise InvalidRequest(
                f"a store's pickup list holds no {where.status} orders",
                details=[{"field": "status", "message": f"a store's pickup list holds orders {held} only"}],
            )

    def by_external_id(self, where: OrderFilter, external_id: str) -> Order | None:
        """The order placed on `where.channel` under `external_id` (the number its storefront, its
        notices and its pick slips give the customer) if `where` lists it, else None: one read of
        the item whose id they make (ids.order_id_for; POST /orders, an import and an exchange's
        replacement all place it there), no index. Read consistently, as GET /orders/{id} is."""
        if where.channel is None:
            raise ValueError("an external id names an order only with its channel")
        self._check_store(where)
        order = self._orders.get(order_id_for(where.channel, external_id), consistent=True)
        return order if order is not None and where.admits(order) else None


class ApiKeyService:
    """Issues, lists and revokes API keys. The secret is returned once and stored as a hash."""

    def __init__(
        self,
        keys: ApiKeyRepository,
        clock: Clock = utc_now,
        authorizer_cache: AuthorizerCache | None = None,
        settle: Callable[[], None] | None = None,
        gateway_keys: GatewayKeys | None = None,
        catalog: CatalogRepository | None = None,
    ):
        """`settle` returns once every authorizer run that began before it was called has ended
        (on AWS: waits the authorizer's Timeout); None when no answer is cached for long.
        `gateway_keys`: per-key usage plans (None when they are off: every key is metered by the
        stage's shared gateway key). `catalog`: where a key's locations must exist (None: a tool
        that issues no location-bound key; one asked for is refused)."""
        self._catalog = catalog
        self._keys = keys
        self._clock = clock
        self._authorizer_cache = authorizer_cache
        self._settle = settle
        self._gateway_keys = gateway_keys

    def issue(self, request: NewApiKey, created_by: str | None = None, stage: ApiStage | None = None) -> IssuedApiKey:
        """A new key, issued by the key `created_by`. With per-key usage plans, it gets its own
        gateway key in `stage`'s per-key plan first: when API Gateway cannot make it, no key is
        stored (TransientError), and one made for a key that could not be stored is deleted again."""
        self._refuse_unknown_locations(request.location_ids or [])
        secret = new_secret()
        key = ApiKey(
            id=new_id("key"),
            name=request.name,
            scopes=request.scopes,
            channel=request.channel,
            location_ids=request.location_ids,
            created_at=self._clock(),
            created_by=created_by,
        )
        gateway_key = None
        if self._gateway_keys is not None and stage is not None:
            gateway_key = self._gateway_keys.create(key.id, stage)
        try:
            self._keys.add(key, hash_secret(secret), gateway_key)
        except BaseException:
            if self._gateway_keys is not None and gateway_key is not None:
                with contextlib.suppress(TransientError):  # one left over meters nothing
                    self._gateway_keys.delete(gateway_key.id)
            raise
        return IssuedApiKey(**key.model_dump(), key=secret)

    def _refuse_unknown_locations(self, location_ids: list[str]) -> None:
        """A key is bound only to locations the network has (422 naming each other entry): one
        bound to a mistyped id would act nowhere, and to one made later by someone else, there."""
        if not location_ids:
            return
        if self._catalog is None:
            raise InvalidRequest("this service issues no location-bound keys")
        unknown = [
            {"field": f"location_ids[{index}]", "message": f"no location {location_id}"}
            for index, location_id in enumerate(location_ids)
            if self._catalog.get_location(location_id) is None
        ]
        if unknown:
            raise InvalidRequest("the request is not valid", details=unknown)

    def give_gateway_keys(self, stage: ApiStage) -> tuple[int, int, int]:
        """The backfill of per-key usage plans: each key not revoked that has no gateway key of its
        own gets one in `stage`'s per-key plan, and each that has one is put in that plan (one made
        before the plan was deleted and made again, with the option off and on again). Returns
        (keys given one, keys that had one, keys whose own is gone: revoked since they were listed,
        or stored by an issue that failed before their secret's lookup, which deleted it). Run again
        after a failure, it gives none twice."""
        if self._gateway_keys is None:
            raise ValueError("per-key usage plans are off: there is no plan to give keys in")
        given = kept = gone = 0
        for key_id, own in self._keys.active_gateway_keys():
            if own is not None:
                if not self._gateway_keys.add_to_plan(own.id, stage):
                    gone += 1
                    continue
                self._keys.attach_gateway_key(key_id, own)  # its lookup too, had a run died before it
                kept += 1
                continue
            made = self._gateway_keys.create(key_id, stage)
            if self._keys.attach_gateway_key(key_id, made):
                given += 1
            else:  # revoked meanwhile, or given one by another run
                self._gateway_keys.delete(made.id)
        return given, kept, gone

    def ensure_admin(self, secret: str) -> ApiKey:
        """The bootstrap admin key (every scope) under `secret`; a previous admin secret stops working.
        A secret the authorizer cannot read is refused (ValueError) before anything changes."""
        if not is_usable_secret(secret):
            raise ValueError("an API key secret is 16 to 200 characters of A-Z, a-z, 0-9, '_' and '-'")
        key = ApiKey(id=ADMIN_KEY_ID, name="admin", scopes=sorted(Scope), channel=None, created_at=self._clock())
        self._keys.add(key, hash_secret(secret))
        return key

    def list(self, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]:
        return self._keys.list(limit, cursor)

    def revoke(self, key_id: str, *, by: str | None = None, stage: ApiStage | None = None) -> ApiKey:
        """Revoked at once: the stored key first, then `stage`'s cache of authorizer answers (where
        the key may still be allowed), so no request after this one is let in by the cache. A
        repeated revoke flushes again: the retry after a failed flush.

        An authorizer run that read the key just before the revocation answers after the flush, and
        API Gateway caches that answer when it comes: the key would work for AuthorizerCacheSeconds
        more. So the cache is flushed again once every such run has ended (`settle`). `by`: the key
        that revokes it, recorded with the first revocation."""
        if key_id == ADMIN_KEY_ID:
            raise Conflict(
                "the bootstrap admin key is not revoked through the API: rotate it with "
                "`python -m infra.admin_key` (or OMS_ADMIN_API_KEY locally)",
                code="admin_key_protected",
            )
        revoked = self._keys.revoke(key_id, self._clock(), by)
        if revoked is None:
            raise NotFound(f"no API key {key_id}")
        if stage is not None and self._authorizer_cache is not None:
            self._authorizer_cache.flush(stage)
            if self._settle is not None:
                self._settle()
                self._authorizer_cache.flush(stage)
        # Last: the key is refused by then. A repeated revoke deletes it again (gone is no error).
        if self._gateway_keys is not None and (own := self._keys.gateway_key(key_id)) is not None:
            self._gateway_keys.delete(own.id)
        return revoked


def _sold_prices(
    order: Order, cmd: PlaceOrder, products: Mapping[str, Product] | None = None, pricing: Pricing | None = None
) -> dict[str, Money]:  # fmt: skip
    """The unit prices `order` sold its skus at that an edit to `cmd` keeps (Pricing.price
    unit_prices, sold_at): those of the skus it asks no more units of, left as they are or fewer.
    Their units are sold: what the catalog says today does not change what they cost, as a cancel
    of units keeps it (a price raised since would charge the customer more for fewer units, one
    lowered since would give an edit what a cancel does not). As for a cancel too, a sku it asks
    fewer units of whose new quantity the plugins (`pricing`) price otherwise than its old one today
    (a volume price lost with the units) is priced as a new order's would be, as is a sku it adds
    units to."""
    has = _units(order)
    wanted = _units_asked(cmd)
    sold = {line.sku: line.unit_price for line in order.lines if line.quantity}
    kept = {sku: price for sku, price in sold.items() if wanted.get(sku, 0) <= has[sku]}
    if pricing is None or products is None:
        return kept
    fewer = [sku for sku in kept if 0 < wanted.get(sku, 0) < has[sku] and sku in products]
    for sku in fewer:
        now = pricing.todays_unit_price(cmd, products[sku], wanted[sku])
        if now is not None and now != pricing.todays_unit_price(cmd, products[sku], has[sku]):
            del kept[sku]
    return kept


def _credit_rest(credit: Money, grand_total: Money) -> Money | None:
    """What of an exchange's `credit` its replacement of `grand_total`, as placed, leaves over: the
    rest the exchange refunds at once (Returns.exchange); None when the credit does not cover it."""
    rest = credit - grand_total
    return rest if rest.amount > 0 else None


def _check_skus(cmd: PlaceOrder, products: Mapping[str, Product]) -> None:
    """Raise 422 `unknown_sku` naming each line of `cmd` whose sku is not in `products`."""
    unknown = [
        {"field": f"lines[{i}].sku", "message": f"no product {line.sku}"}
        for i, line in enumerate(cmd.lines)
        if line.sku not in products
    ]
    if unknown:
        raise UnknownSku("unknown sku", details=unknown)


def _may_wait(cmd: PlaceOrder, products: dict[str, Product], of: Order | None) -> tuple[str, ...]:
    """The skus of `cmd` its order may wait backordered for: those whose product allows backorder
    today, and, for an edit of the order `of`, those it has waited for whose units the edit does
    not grow (Order.may_still_wait): a product that stopped allowing backorder since refuses more
    units, not the units a customer was told would come."""
    kept = set(of.may_still_wait(cmd.lines)) if of is not None else set()
    return tuple(sorted({line.sku for line in cmd.lines if products[line.sku].allow_backorder or line.sku in kept}))


def _units_asked(cmd: PlaceOrder) -> dict[str, int]:
    units: dict[str, int] = defaultdict(int)
    for line in cmd.lines:
        units[line.sku] += line.quantity
    return units


def _units(order: Order) -> dict[str, int]:
    """The units of each sku `order` has (its lines' quantities, summed by sku)."""
    units: dict[str, int] = defaultdict(int)
    for line in order.lines:
        units[line.sku] += line.quantity
    return units


def raised_since(as_it_was: Money, charged: Money, left: Money) -> bool:
    """Whether units taken away from an order would raise its shipping above what it was charged,
    only because the shipping costs more today than when it was sold (a rate or a product's weight
    raised since): today's quote of the order as it was (`as_it_was`) is above `charged`, and so is
    today's quote of what is left (`left`). Units already sold are not charged more for what the
    configuration says today; what is left keeps the charge."""
    return charged < as_it_was and charged < left


def _takes_units_away(cmd: PlaceOrder, of: Order) -> bool:
    """Whether `cmd` asks for no more units of any sku than the order `of` has (a new sku is more)."""
    sold = _units(of)
    return all(units <= sold.get(sku, 0) for sku, units in _units_asked(cmd).items())


def _shipped_for(priced: PricedOrder, shipping: Money) -> PricedOrder:
    """`priced` with its shipping charged `shipping`, its grand total with it."""
    totals = priced.totals
    return priced._replace(
        totals=Totals(
            subtotal=totals.subtotal, discount=totals.discount, shipping=shipping, tax=totals.tax,
            grand_total=totals.grand_total - totals.shipping + shipping,
        ),
    )  # fmt: skip
