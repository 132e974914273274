"""Reorder points: stock falling below one becomes `inventory.low`, and one draft purchase order line
unless units already on order cover it."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, Field

from core.domain_events import DomainEvent, EventType, event_data
from core.errors import InvalidRequest, NotFound, StaleVersion
from core.ids import new_id, short_hash
from core.models import Identifier, ReorderSettings, Strict
from core.ports import CatalogRepository
from core.purchasing import (
    MAX_UNITS,
    PurchaseOrder,
    PurchaseOrderLine,
    PurchasingRepository,
    UnitCost,
    Units,
    bill_at_the_limit,
    costs_within_the_limit,
)
from core.status import PurchaseOrderStatus


class DraftAtTheLimit(InvalidRequest):
    """Units a crossing (or the backorders) would buy that no draft may take: the draft holding
    the sku's line would bill 10^15 or more in a currency (`amount_too_large`) or order more than
    MAX_UNITS of it (`quantity_too_large`), or a new draft of them alone would. Nothing is
    written; the caller logs it (`draft_id`: the draft that holds the line, if any)."""

    def __init__(self, message: str, draft_id: str | None, code: str) -> None:
        super().__init__(message, code=code)
        self.draft_id = draft_id


def past_the_limit(draft: PurchaseOrder, sku: str) -> tuple[str, str] | None:
    """Why `draft` may not be written: the error code and what it would do (`bill 10^15 USD or
    more`, `order more than 1,000,000,000 MUG`), or None. An open PO could not be made of it: its
    bill is an amount (below 10^15, API.md) and its line's quantity one a create takes (at most
    MAX_UNITS, the most a location holds too), whether or not the line has a cost yet."""
    if (currency := bill_at_the_limit(draft.lines)) is not None:
        return "amount_too_large", f"bill 10^15 {currency} or more"
    if any(line.sku == sku and line.quantity > MAX_UNITS for line in draft.lines):
        return "quantity_too_large", f"order more than {MAX_UNITS:,} {sku} on one line"
    return None


class ReorderRequest(Strict):
    # Available never goes below 0, so a point of 0 could never be crossed: 1 is the lowest that means something.
    reorder_point: Annotated[int, Field(ge=1, le=1_000_000_000, strict=True)]
    reorder_quantity: Units
    vendor_id: Identifier
    unit_cost: UnitCost | None = Field(
        default=None,
        description="Extension: the cost each draft line for this sku gets, the units drafted before at an older "
        "cost too; without it a new line has no cost (a line grown keeps its own) and submitting it needs one",
    )


class ReorderPoint(ReorderSettings):
    """The reorder point of one sku at one location, as the API shows it."""

    sku: str
    location_id: str


@dataclass(frozen=True)
class StockChange:
    """One change of a stock item, read from the Inventory stream: `available` before (None for a
    new item) and after, the units on open purchase orders not yet received (`incoming`) before
    and after, the reorder settings after it, and the change's id in the stream (the same for a
    redelivered record, different for every other change)."""

    sku: str
    location_id: str
    available_before: int | None
    available_after: int
    settings: ReorderSettings | None
    change_id: str
    changed_at: datetime
    incoming_before: int = 0
    incoming_after: int = 0
    draft_withdrawn: bool = False  # a draft holding the sku here was cancelled by this change
    point_before: int | None = None  # the reorder point before the change (None: there was none)

    @property
    def withdrawn(self) -> bool:
        """Units bought withdrawn: a draft that held some cancelled (`draft_withdrawn`), or
        `incoming` fell and the stock position (available plus incoming) with it, as when a
        purchase order is cancelled (a receipt moves its units from incoming to available)."""
        if self.draft_withdrawn:
            return True
        if self.available_before is None:
            return False
        before = self.available_before + self.incoming_before
        return self.incoming_after < self.incoming_before and self.available_after + self.incoming_after < before


@dataclass(frozen=True)
class Crossing:
    """A change that took `available` (`low`), or `available` plus the units on order
    (`reorders`), from at or above the reorder point to below it. Either may buy: units already
    on order or on a draft that keep the stock position at the point need no second purchase,
    unless backordered orders wait for them too (`to_buy`)."""

    sku: str
    location_id: str
    available: int
    settings: ReorderSettings
    change_id: str
    changed_at: datetime
    low: bool
    reorders: bool
    incoming: int = 0  # units on open purchase orders after the change

    @property
    def key(self) -> str:
        """Names this crossing and no other: `#` appears in no sku or location id."""
        return f"{self.sku}#{self.location_id}#{self.change_id}"

    def to_buy(self, waiting: int, drafted: int = 0, kept: int = 0, now: int | None = None) -> int:
        """Units the draft gets for this crossing when backordered orders still lack `waiting`
        units this point buys for (`BackorderAllocator.demand`: each order's at one of the
        locations it may take them at), the open draft here holds `drafted` units of the sku and
        the sourcing rules keep `kept` units back from orders here (0: it buys nothing). Those
        orders take the first units that come, so they are part of the need: the stock position
        counted against the point is available plus incoming plus the draft's units less
        `waiting` (`now`, the stock position read with `waiting`, when given: a draft submitted
        since the crossing moved its units to `incoming`). At or above the point with nothing
        lacking, nothing is bought; else what they lack beyond all of that (`lacking`) is bought
        on top of `reorder_quantity` (units a draft already bought for them are not bought again)."""
        position = self.available + self.incoming + drafted if now is None else now
        short = lacking(waiting, position, kept)
        # Units on a draft are bought, as units on order are: a draft that keeps the position at
        # the point buys nothing more, so stock falling past the point again and again while its
        # draft waits for a person does not grow the draft each time (it grows only while the
        # position is below the point: to at most the point plus `reorder_quantity` plus what the
        # backorders lack).
        if not short and position - waiting >= self.settings.reorder_point:
            return 0
        return self.settings.reorder_quantity + short


def lacking(waiting: int, position: int, kept: int) -> int:
    """Units backordered orders lacking `waiting` at a location still lack once all of `position`
    (available, incoming and drafted units) is there, the safety stock `kept` held back from them."""
    return max(0, waiting - max(0, position - kept))


def crossing(change: StockChange) -> Crossing | None:
    """The crossing `change` is, if any: available at or above the point before it and below the
    point after it (`low`: inventory.low), or the stock position, available plus incoming, doing
    so (`reorders`: a draft). A fall that open purchase orders cover is low but buys nothing; a
    purchase order cancelled while stock is low buys without a new low. Stock already below the
    point is not crossed again until it has risen back to the point. The side before a change is
    compared with the point in force before it: a point raised above stock that was at or above
    the point before crosses it (compared with the new point on both sides, the raise crossed
    nothing and every fall after it began below: the raised point never bought); a point set
    where there was none, changed otherwise, or lowered crosses nothing."""
    settings = change.settings
    if settings is None or change.available_before is None:
        return None
    point = settings.reorder_point
    armed_at = change.point_before if change.point_before is not None else point
    low = change.available_before >= armed_at and point > change.available_after
    position_before = change.available_before + change.incoming_before
    reorders = position_before >= armed_at and point > change.available_after + change.incoming_after
    if not low and not reorders:
        return None
    return Crossing(
        sku=change.sku,
        location_id=change.location_id,
        available=change.available_after,
        settings=settings,
        change_id=change.change_id,
        changed_at=change.changed_at,
        low=low,
        reorders=reorders,
        incoming=change.incoming_after,
    )


class LowStock(BaseModel, defer_build=True):
    """`data.inventory` of `inventory.low`: a stock item whose available units fell below its point."""

    sku: str
    location_id: str
    available: Annotated[int, Field(ge=0, description="Units available after the fall, below reorder_point")]
    reorder_point: int


def low_stock_event(crossed: Crossing) -> DomainEvent:
    """`inventory.low`; its id comes from the crossing, so a redelivered record gives the same one."""
    low = LowStock(
        sku=crossed.sku,
        location_id=crossed.location_id,
        # Never negative, as every read shows it: a stock take recorded below the reserved
        # units is stored below zero until its rejects release them (StockLevel.as_shown).
        available=max(crossed.available, 0),
        reorder_point=crossed.settings.reorder_point,
    )
    return DomainEvent(
        id="evt_" + short_hash(f"{EventType.INVENTORY_LOW.value}\x1f{crossed.key}"),
        type=EventType.INVENTORY_LOW,
        created_at=crossed.changed_at,
        data=event_data(EventType.INVENTORY_LOW, low.model_dump()),
    )


class Replenishment:
    """Reorder points set per (sku, location), and the draft purchase orders their crossings make."""

    ATTEMPTS = 8

    def __init__(
        self, repository: PurchasingRepository, catalog: CatalogRepository, clock: Callable[[], datetime]
    ) -> None:
        self._repository = repository
        self._catalog = catalog
        self._clock = clock

    def _require(self, sku: str, location_id: str) -> None:
        # As the other /inventory/{sku}/{location_id} routes answer: an unknown one is 404.
        if self._catalog.get_product(sku) is None:
            raise NotFound(f"no product {sku}")
        if self._catalog.get_location(location_id) is None:
            raise NotFound(f"no location {location_id}")

    def set_point(self, sku: str, location_id: str, request: ReorderRequest) -> ReorderPoint:
        self._require(sku, location_id)
        if self._repository.get_vendor(request.vendor_id) is None:
            raise InvalidRequest(
                f"no vendor {request.vendor_id}",
                code="unknown_vendor",
                details=[{"field": "vendor_id", "message": "PUT /vendors/{vendor_id} first"}],
            )
        # The draft each crossing would make at that cost could never be submitted: refused now.
        line = PurchaseOrderLine(sku=sku, quantity=request.reorder_quantity, unit_cost=request.unit_cost)
        costs_within_the_limit([line], {"field": "unit_cost", "message": "reorder_quantity × unit_cost reaches it"})
        settings = ReorderSettings.model_validate(request.model_dump())
        self._repository.set_reorder(sku, location_id, settings)
        return ReorderPoint(sku=sku, location_id=location_id, **settings.model_dump())

    def clear_point(self, sku: str, location_id: str) -> None:
        self._require(sku, location_id)
        self._repository.set_reorder(sku, location_id, None)

    def drafted(self, sku: str, location_id: str, settings: ReorderSettings | None) -> int:
        """Units of `sku` on drafts at `location_id`: bought, though not on order yet. The draft
        that holds its line for the point's vendor (`settings`), even once full and no longer the
        open one, and those of the vendors the point bought it from before its vendor changed
        (with no point there now, None: those of every vendor a point bought it from)."""
        vendor_id = settings.vendor_id if settings is not None else None
        drafts = self._repository.holding_drafts(vendor_id, location_id, sku)
        if vendor_id is not None and not any(draft.vendor_id == vendor_id for draft in drafts):
            # None named (a line added before drafts were named by sku): the open one.
            draft, _ = self._repository.open_draft(vendor_id, location_id)
            drafts += [draft] if draft is not None else []
        return sum(line.quantity for draft in drafts for line in draft.lines if line.sku == sku)

    def reorder(self, crossed: Crossing, quantity: int | None = None) -> PurchaseOrder | None:
        """Add `quantity` (by default the crossing's `reorder_quantity`; `Crossing.to_buy` adds the
        backorders' need) to the open draft for its vendor and location, or make that draft; None
        when this crossing was counted already (a redelivered record)."""
        settings = crossed.settings
        units = settings.reorder_quantity if quantity is None else quantity
        return self.buy(crossed.sku, crossed.location_id, settings, units, crossed.key)

    def buy(self, sku: str, location_id: str, settings: ReorderSettings, units: int, key: str) -> PurchaseOrder | None:
        """Add `units` of `sku` to the draft of the point's vendor at `location_id` that holds its
        line (`holding_draft`), else to the open one, or make that draft; None when the change
        `key` names (`sku#location_id#change_id`) was counted already. The draft's write and the
        change's marker are one transaction, so concurrent changes each grow the draft once and a
        change seen twice grows it once. No draft is grown or made to bill 10^15 or more in a
        currency, nor to order more than MAX_UNITS of a sku on its line, priced or not (no submit
        could open it, and no one could shrink it; `past_the_limit`): a sku the draft lacks then
        goes on a new draft (as at MAX_LINES lines), and units its line (there or nowhere) or a new
        draft cannot take raise DraftAtTheLimit, nothing written."""
        vendor = self._repository.get_vendor(settings.vendor_id)
        if vendor is None:
            raise NotFound(f"no vendor {settings.vendor_id} for the reorder point of {sku}")
        now = self._clock()
        for _ in range(self.ATTEMPTS):
            # The sku's line grows where it is, though that draft is full and no longer the open one:
            # its units are counted there (`drafted`), and a second line would be a second order.
            draft, pointer = self._repository.holding_draft(settings.vendor_id, location_id, sku), None
            if draft is None:
                draft, pointer = self._repository.open_draft(settings.vendor_id, location_id)
            grown = (
                draft.grow(sku, units, settings.unit_cost, at=now) if draft is not None and draft.takes(sku) else None
            )
            if grown is not None and (limit := past_the_limit(grown, sku)) is not None:
                if draft is not None and any(line.sku == sku for line in draft.lines):
                    # Its line grows there or nowhere (one line a sku: its units are counted there).
                    if self._repository.reordered(key):
                        return None  # counted before the draft reached the limit (a redelivery)
                    code, would = limit
                    raise DraftAtTheLimit(
                        f"purchase order {grown.id} would {would} with {units} more {sku}: submit it, "
                        "and the next crossing starts a new draft",
                        grown.id,
                        code,
                    )
                grown = None  # full for a sku it lacks: a new draft takes it, as at MAX_LINES lines
            if grown is not None:
                new, expected = grown, draft
            else:
                line = PurchaseOrderLine(sku=sku, quantity=units, unit_cost=settings.unit_cost)
                new, expected = (
                    PurchaseOrder(
                        id=new_id("po"),
                        vendor_id=settings.vendor_id,
                        location_id=location_id,
                        status=PurchaseOrderStatus.DRAFT,
                        lines=[line],
                        expected_at=now + timedelta(days=vendor.lead_time_days),
                        created_at=now,
                        updated_at=now,
                    ),
                    None,
                )
                if (limit := past_the_limit(new, sku)) is not None:
                    if self._repository.reordered(key):
                        return None
                    code, would = limit
                    raise DraftAtTheLimit(f"{units} {sku} would {would} on a draft of their own", None, code)
            try:
                if not self._repository.add_reorder(new, expected, pointer, key):
                    return None
            except StaleVersion:
                continue  # the draft was grown, submitted or made by another change: decide again
            return new
        raise StaleVersion(f"the draft for {settings.vendor_id} at {location_id} keeps changing")
