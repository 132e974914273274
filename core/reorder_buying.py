"""What a stock change buys: a reorder point crossed, an order backordered, units on order withdrawn, a point set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.backorders import BackorderAllocator, Demand
from core.domain_events import DomainEvent
from core.models import ReorderSettings, StockLevel
from core.ports import InventoryRepository
from core.purchasing import PurchaseOrder
from core.reorder import Crossing, DraftAtTheLimit, Replenishment, StockChange, lacking, low_stock_event


@dataclass(frozen=True)
class NotDrafted:
    """Units no draft may take (DraftAtTheLimit): no failure of the change (its retries would meet
    the same draft), but for a person to submit `draft_id`, the draft that holds the sku's line."""

    location_id: str
    units: int
    reason: str
    draft_id: str | None
    why: str


@dataclass(frozen=True)
class BoughtFor:
    """What the backordered orders counted at `location_id` lacked beyond its stock, open purchase
    orders and draft, put on the draft there (`draft`; None: the change was counted before, or no
    draft could take them)."""

    location_id: str
    units: int
    draft: PurchaseOrder | None


@dataclass(frozen=True)
class Crossed:
    """A crossing handled: `draft` grew or was made for it, else `why` not (`not drafted: <code>`,
    `counted before`, `covered by open orders and drafts`)."""

    available: int
    backordered: int
    draft: PurchaseOrder | None
    why: str


Said = NotDrafted | BoughtFor | Crossed


class ReorderBuying:
    """The Inventory stream's reorder records as purchases: each method takes one change, buys what
    it should once (a redelivered change buys nothing again: every buy is keyed by the change) and
    tells `say` what it did, as it does it, for the caller to log and count."""

    READINGS = 3

    def __init__(
        self,
        inventory: InventoryRepository,
        replenishment: Replenishment,
        allocator: BackorderAllocator,
        publish: Callable[[list[DomainEvent]], None],
    ) -> None:
        self._inventory = inventory
        self._replenishment = replenishment
        self._allocator = allocator
        self._publish = publish  # to the bus and the webhooks

    def crossed(self, crossed: Crossing, say: Callable[[Said], None]) -> None:
        """A fall below a reorder point: `inventory.low` is published when `available` fell, with an
        id of the crossing's own, so a redelivered record publishes the same event again (subscribers
        dedupe); the draft grows once per crossing (a marker in the same transaction) when available
        plus the units on open purchase orders and on the draft, less what backordered orders still
        lack there, is below the point: units already on order are not bought again, and the
        backorders' need is (each order's at one location with a reorder point for the sku,
        `core.sourcing.bought_at`, kept on its queue entry)."""
        levels, demand = self._demand(crossed.sku, crossed.location_id)
        waiting = demand.waiting[crossed.location_id]
        # What the orders lack is counted against the stock and the drafts now, each unit once
        # (`_level_after_draft`): the image's `incoming` beside the drafts now counted a draft
        # submitted since nowhere, and bought its units again. `available` as stored: below zero
        # after a stock take counted short, the units its rejects will send back to wait, which
        # count against the point as they do once waiting (counted as 0, a fall read before the
        # rejects bought nothing where one read after them bought `reorder_quantity`).
        now, drafted = self._level_after_draft(crossed.sku, crossed.location_id, crossed.settings)
        position = now.available + now.incoming + drafted if now is not None else None
        buys = crossed.to_buy(waiting, drafted, demand.kept[crossed.location_id], position)
        refused: list[str] = []
        draft = None
        if buys:
            draft = self._drafted(
                lambda: self._replenishment.reorder(crossed, buys), buys, crossed.location_id, say, refused
            )
        if crossed.low:
            self._publish([low_stock_event(crossed)])
        why = refused[0] if refused else "counted before" if buys else "covered by open orders and drafts"
        say(Crossed(crossed.available, waiting, draft, why))
        self._buy_where_placed(crossed.sku, levels, demand, crossed.change_id, crossed.location_id, say)

    def backorder_recorded(self, sku: str, order_id: str, change_id: str, say: Callable[[Said], None]) -> None:
        """An order written backordered: the reorder point that buys what it lacks
        (`core.sourcing.bought_at`) buys, at once, what the orders it buys for lack, without waiting
        for a crossing there (stock may sit below the point for good). Only that:
        `reorder_quantity` is a crossing's."""
        levels, demand = self._demand(sku)
        at = demand.at.get(order_id)  # None: filled meanwhile, or no point buys for it
        self._buy_lacking(sku, next((level for level in levels if level.location_id == at), None), demand,
                          change_id, say)  # fmt: skip
        self._buy_where_placed(sku, levels, demand, change_id, at, say)

    def withdrawn(self, change: StockChange, say: Callable[[Said], None]) -> None:
        """Units bought withdrawn (a purchase order cancelled, or a draft a person cancelled) where
        that crossed nothing (the stock position was below the point already, or a draft's units are
        no part of it): the orders that were to take them are bought for again, on the open draft or
        a new one. At a location with a reorder point, by that point; at one whose point was cleared,
        the orders counted there with nothing coming there now are placed again where a point buys
        (`demand`), and bought for there. A withdrawal that crosses the point is the crossing's
        (`crossed`), never given here."""
        # Not `also`: it buys by the point there now (`_buy_lacking`); one cleared since buys
        # nothing, and an order placed there would be kept there, bought by no point.
        levels, demand = self._demand(change.sku)
        by_location = {level.location_id: level for level in levels}
        here = by_location.get(change.location_id)
        buys_here = here is not None and here.reorder is not None
        buying = {change.location_id} | demand.placed if buys_here else set(demand.at.values())
        for location_id in sorted(buying):
            self._buy_lacking(change.sku, by_location.get(location_id), demand, change.change_id, say)
        self._allocator.place(change.sku, demand)  # bought for where placed

    def point_set(self, sku: str, location_id: str, change_id: str, say: Callable[[Said], None]) -> None:
        """A reorder point set where there was none (a new one, or one set again after it was
        cleared): the orders backordered meanwhile had no point to buy for them, and one whose draft
        was cancelled while there was none had its units bought by nothing; stock already below the
        point crosses nothing, so they would wait for the next order backordered. What the orders
        counted there lack is bought now (not `reorder_quantity`, a crossing's), once per change."""
        # Not `also`, as for a withdrawal: a point cleared since buys nothing.
        levels, demand = self._demand(sku)
        level = next((level for level in levels if level.location_id == location_id), None)
        self._buy_lacking(sku, level, demand, change_id, say)
        self._buy_where_placed(sku, levels, demand, change_id, location_id, say)

    def _level_after_draft(
        self, sku: str, location_id: str, settings: ReorderSettings | None
    ) -> tuple[StockLevel | None, int]:
        """The units of `sku` on its draft at `location_id` (the point's vendor's and the former
        vendors', `settings`; None: every vendor's a point there bought from) and the stock record
        there, each unit in one of them: a draft submitted moves its units to the record's
        `incoming` (one transaction), so the draft is read before and after the record (read
        consistently), and again while the two readings differ. Counted nowhere, units were bought
        again; counted twice, orders were left waiting with nothing bought. Still moving after a few
        readings: the later one (buy more)."""
        drafted = self._replenishment.drafted(sku, location_id, settings)
        for _ in range(self.READINGS):
            levels = self._inventory.levels({sku})[sku]
            level = next((level for level in levels if level.location_id == location_id), None)
            before, drafted = drafted, self._replenishment.drafted(sku, location_id, settings)
            if drafted == before:
                break
        return level, drafted

    def _still_coming(self, sku: str) -> Callable[[str], int]:
        """The units of `sku` at a location (whose point was cleared since) and still coming there:
        available, on open purchase orders (`incoming`) and on a draft, each unit counted once (a
        draft submitted meanwhile moves its units to `incoming`: `_level_after_draft`)."""

        def coming(location_id: str) -> int:
            level, drafted = self._level_after_draft(sku, location_id, None)
            return drafted + (max(level.available, 0) + level.incoming if level is not None else 0)

        return coming

    def _demand(self, sku: str, also: str | None = None) -> tuple[list[StockLevel], Demand]:
        """The sku's stock at every location (one Query), and what its backordered orders lack by the
        location whose reorder point buys it (`also` buys even when its point was cleared since).
        Nothing more is read when no point buys the sku: nothing can be bought for them. A change
        that reads it buys at its own location and where the reading placed an order anew, then
        records those places (`_buy_where_placed`)."""
        levels = self._inventory.levels({sku})[sku]
        buying = {level.location_id for level in levels if level.reorder is not None} | ({also} if also else set())
        if not buying:
            return levels, Demand()
        return levels, self._allocator.demand(sku, buying, self._still_coming(sku))

    @staticmethod
    def _drafted(
        buy: Callable[[], PurchaseOrder | None], units: int, location_id: str, say: Callable[[Said], None],
        refused: list[str] | None = None,
    ) -> PurchaseOrder | None:  # fmt: skip
        """The draft `buy` grew or made at `location_id`; None when it was counted before, or when no
        draft may take the units (one would bill 10^15 or more, or order more than a line takes,
        `DraftAtTheLimit`: said, and its code added to `refused`)."""
        try:
            return buy()
        except DraftAtTheLimit as full:
            if refused is not None:
                refused.append(f"not drafted: {full.code}")
            say(NotDrafted(location_id, units, full.code, full.draft_id, full.message))
            return None

    def _buy_lacking(
        self, sku: str, level: StockLevel | None, demand: Demand, change_id: str, say: Callable[[Said], None]
    ) -> None:
        """Grow the draft of `level`'s reorder point by what the orders counted there lack beyond its
        stock, open purchase orders and draft, less the safety stock kept back from orders
        (`lacking`); nothing without a point. Once per change (a marker in the draft's transaction):
        a redelivered change, or one read after the draft grew, buys nothing again."""
        if level is None or level.reorder is None:
            return
        settings = level.reorder
        now, drafted = self._level_after_draft(sku, level.location_id, settings)
        if now is None:
            return
        position = max(now.available, 0) + now.incoming + drafted
        units = lacking(demand.waiting[level.location_id], position, demand.kept[level.location_id])
        if not units:
            return  # covered by what is there or bought already
        key = f"{sku}#{level.location_id}#{change_id}"
        draft = self._drafted(
            lambda: self._replenishment.buy(sku, level.location_id, settings, units, key), units, level.location_id, say
        )
        say(BoughtFor(level.location_id, units, draft))

    def _buy_where_placed(
        self, sku: str, levels: list[StockLevel], demand: Demand, change_id: str, bought: str | None,
        say: Callable[[Said], None],
    ) -> None:  # fmt: skip
        """Buy (`_buy_lacking`) at each location this reading placed an order at anew
        (`Demand.placed`) other than `bought`, where the change buys itself, then record those places
        (`BackorderAllocator.place`): recorded there, the order is kept there by every later reading,
        so no later change would buy for it there, and a change that fails before it bought leaves it
        to place again when redelivered."""
        by_location = {level.location_id: level for level in levels}
        for location_id in sorted(demand.placed - {bought}):
            self._buy_lacking(sku, by_location.get(location_id), demand, change_id, say)
        self._allocator.place(sku, demand)
