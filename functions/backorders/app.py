"""Inventory stream consumer: when `available` rises for a sku at a location, fill the orders backordered for it;
when it falls below a reorder point, emit `inventory.low`, and grow the draft purchase order unless units on
open purchase orders and drafts cover the point; when an order is written backordered, or a point is set where
there was none, grow the draft by what the orders lack beyond what is there and on order. Catalog stream consumer for
the sourcing rules: a new version wakes the backordered orders it may let take units, a page at a time;
and for the location network: a location that stops shipping, or ships again, wakes them the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from core.backorders import Arrival, Demand
from core.models import Location, ReorderSettings, StockLevel
from core.ports import WaitingOrder
from core.purchasing import PurchaseOrder
from core.reorder import DraftAtTheLimit, crossing, lacking, low_stock_event
from core.sourcing_rules import SourcingRules
from functions.adapters.dynamodb import (
    BACKORDER_PREFIX,
    NETWORK_KEY,
    SOURCING_RULES_PK,
    WAKE_AFTER,
    WALK_AFTER,
    WALK_BY,
    wake_after,
)
from functions.backorders.low_stock import backorder_marked, crossing_of, point_set, stock_change
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.stream_batches import InOrderStreamProcessor

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
processor = InOrderStreamProcessor()
container = WarmContainer()


def _available(image: dict[str, Any] | None) -> int:
    value = (image or {}).get("available")
    return int(value) if value is not None else 0


def _report(result: Arrival) -> None:
    """What a fill did: its log lines (with the caller's context keys), one per order sent back to be
    sourced, and its metrics."""
    if result.filled:
        logger.info("backorders filled", extra={"filled": result.filled, "completed": result.completed})
        metrics.add_metric(name="BackordersFilled", unit=MetricUnit.Count, value=len(result.filled))
    if result.completed:
        metrics.add_metric(name="BackordersCompleted", unit=MetricUnit.Count, value=len(result.completed))
    for order_id in result.sourced_again:
        logger.info("order sourced again", extra={"order_id": order_id})
    if result.sourced_again:
        metrics.add_metric(name="OrdersSourcedAgain", unit=MetricUnit.Count, value=len(result.sourced_again))


def arrival(record: DynamoDBRecord) -> None:
    keys = record.dynamodb.keys if record.dynamodb else {}
    sku, location_id = str(keys.get("sku", "")), str(keys.get("location_id", ""))
    if not sku or location_id.startswith(BACKORDER_PREFIX[0]):
        return  # a backorder queue entry, not stock
    new, old = record.dynamodb.new_image or {}, record.dynamodb.old_image or {}
    after = None  # units arrived: the walk starts from the oldest
    if _available(new) <= _available(old):
        if not new.get(WALK_AFTER) or new.get(WALK_BY) == old.get(WALK_BY):
            return  # reserved or shipped: nothing arrived
        after = wake_after(str(new[WALK_AFTER]))  # a walk handed on: it goes on from there
    if not container().backorders.waiting(sku, after, 1):
        return  # nobody waits for this sku (after there): one Query, and no plugin is loaded for it
    # Its place in the stream, the same for a redelivery (which hands on nothing again); a record
    # replayed by hand carries none, and is a walk of its own.
    by = str(record.dynamodb.sequence_number or f"replay-{uuid4().hex}")

    def hand_on(last: WaitingOrder) -> None:
        # On the stock item, as a change the stream's filter passes: the rest of the walk is a
        # record of its own, in order with the sku's other changes there, and a failure before
        # it is written fails this record, whose retry walks again (its fills reserve nothing twice).
        container().backorders.walk_from(sku, location_id, last, by)
        logger.info("backorder walk handed on", extra={"after": last.order_id})

    with logger.append_context_keys(sku=sku, location_id=location_id):
        _report(container().backorder_allocator.arrived(sku, location_id, after, hand_on))


def _level_after_draft(sku: str, location_id: str, settings: ReorderSettings | None) -> tuple[StockLevel | None, int]:
    """The units of `sku` on its draft at `location_id` (the point's vendor's and the former
    vendors', `settings`; None: every vendor's a point there bought from) and the stock record
    there, each unit in one of them: a draft submitted moves its units to the record's
    `incoming` (one transaction), so the draft is read before and after the record (read
    consistently), and again while the two readings differ. Counted nowhere, units were bought
    again; counted twice, orders were left waiting with nothing bought. Still moving after a few
    readings: the later one (buy more)."""
    drafted = container().replenishment.drafted(sku, location_id, settings)
    for _ in range(3):
        levels = container().inventory_repository.levels({sku})[sku]
        level = next((level for level in levels if level.location_id == location_id), None)
        before, drafted = drafted, container().replenishment.drafted(sku, location_id, settings)
        if drafted == before:
            break
    return level, drafted


def _still_coming(sku: str) -> Callable[[str], int]:
    """The units of `sku` at a location (whose point was cleared since) and still coming there:
    available, on open purchase orders (`incoming`) and on a draft, each unit counted once (a
    draft submitted meanwhile moves its units to `incoming`: `_level_after_draft`)."""

    def coming(location_id: str) -> int:
        level, drafted = _level_after_draft(sku, location_id, None)
        return drafted + (max(level.available, 0) + level.incoming if level is not None else 0)

    return coming


def _demand(sku: str, also: str | None = None) -> tuple[list[StockLevel], Demand]:
    """The sku's stock at every location (one Query), and what its backordered orders lack by the
    location whose reorder point buys it (`also` buys even when its point was cleared since).
    Nothing more is read when no point buys the sku: nothing can be bought for them. A record
    that reads it buys at its own location and where the reading placed an order anew, then
    records those places (`_buy_where_placed`)."""
    levels = container().inventory_repository.levels({sku})[sku]
    buying = {level.location_id for level in levels if level.reorder is not None} | ({also} if also else set())
    if not buying:
        return levels, Demand()
    return levels, container().backorder_allocator.demand(sku, buying, _still_coming(sku))


def reorder_point_crossed(record: DynamoDBRecord) -> None:
    """A fall below a reorder point: `inventory.low` is published when `available` fell, with an
    id of the crossing's own, so a redelivered record publishes the same event again (subscribers
    dedupe); the draft grows once per crossing (a marker in the same transaction) when available
    plus the units on open purchase orders and on the draft, less what backordered orders still
    lack there, is below the point: units already on order are not bought again, and the
    backorders' need is (each order's at one location with a reorder point for the sku,
    `core.sourcing.bought_at`, kept on its queue entry)."""
    crossed = crossing_of(record)
    if crossed is None:
        return
    with logger.append_context_keys(sku=crossed.sku, location_id=crossed.location_id):
        levels, demand = _demand(crossed.sku, crossed.location_id)
        waiting = demand.waiting[crossed.location_id]
        # What the orders lack is counted against the stock and the drafts now, each unit once
        # (`_level_after_draft`): the image's `incoming` beside the drafts now counted a draft
        # submitted since nowhere, and bought its units again.
        now, drafted = _level_after_draft(crossed.sku, crossed.location_id, crossed.settings)
        position = max(now.available, 0) + now.incoming + drafted if now is not None else None
        buys = crossed.to_buy(waiting, drafted, demand.kept[crossed.location_id], position)
        refused: list[str] = []
        draft = None
        if buys:
            draft = _drafted(
                lambda: container().replenishment.reorder(crossed, buys), buys, crossed.location_id, refused
            )
        why = "counted before" if buys else "covered by open orders and drafts"
        if crossed.low:
            container().event_dispatcher.dispatch([low_stock_event(crossed)])
        logger.info(
            "reorder point crossed",
            extra={
                "available": crossed.available,
                "backordered": waiting,
                "draft": draft.id if draft else (refused or [why])[0],
            },
        )
        _buy_where_placed(crossed.sku, levels, demand, crossed.change_id, crossed.location_id)
    if draft is not None:
        metrics.add_metric(name="ReorderPointsCrossed", unit=MetricUnit.Count, value=1)


def _drafted(
    buy: Callable[[], PurchaseOrder | None], units: int, location_id: str, refused: list[str] | None = None
) -> PurchaseOrder | None:
    """The draft `buy` grew or made at `location_id`; None when it was counted before, or when no
    draft may take the units (one would bill 10^15 or more, or order more than a line takes,
    `DraftAtTheLimit`, then said in `refused`): not a failure of the record (its retries would
    meet the same draft), but a warning naming the draft that holds the sku's line, for a person
    to submit, and the metric `ReordersNotDrafted` (its alarm calls that person)."""
    try:
        return buy()
    except DraftAtTheLimit as full:
        if refused is not None:
            refused.append(f"not drafted: {full.code}")
        logger.warning(
            "reorder not drafted",
            extra={
                "reason": full.code,
                "location_id": location_id,
                "draft": full.draft_id,
                "units": units,
                "why": full.message,
            },
        )
        metrics.add_metric(name="ReordersNotDrafted", unit=MetricUnit.Count, value=1)
        return None


def _buy_lacking(sku: str, level: StockLevel | None, demand: Demand, change_id: str) -> None:
    """Grow the draft of `level`'s reorder point by what the orders counted there lack beyond its
    stock, open purchase orders and draft, less the safety stock kept back from orders
    (`lacking`); nothing without a point. Once per change (a marker in the draft's transaction):
    a redelivered record, or one read after the draft grew, buys nothing again."""
    if level is None or level.reorder is None:
        return
    now, drafted = _level_after_draft(sku, level.location_id, level.reorder)
    if now is None:
        return
    position = max(now.available, 0) + now.incoming + drafted
    units = lacking(demand.waiting[level.location_id], position, demand.kept[level.location_id])
    if not units:
        return  # covered by what is there or bought already
    key = f"{sku}#{level.location_id}#{change_id}"
    draft = _drafted(
        lambda: container().replenishment.buy(sku, level.location_id, level.reorder, units, key),
        units,
        level.location_id,
    )
    logger.info(
        "backorders bought for",
        extra={"location_id": level.location_id, "units": units, "draft": draft.id if draft else "counted before"},
    )
    if draft is not None:
        metrics.add_metric(name="BackordersBoughtFor", unit=MetricUnit.Count, value=1)


def _buy_where_placed(sku: str, levels: list[StockLevel], demand: Demand, change_id: str, bought: str | None) -> None:
    """Buy (`_buy_lacking`) at each location this reading placed an order at anew
    (`Demand.placed`) other than `bought`, where the record buys itself, then record those places
    (`BackorderAllocator.place`): recorded there, the order is kept there by every later reading,
    so no later record would buy for it there, and a record that fails before it bought leaves it
    to place again when redelivered."""
    by_location = {level.location_id: level for level in levels}
    for location_id in sorted(demand.placed - {bought}):
        _buy_lacking(sku, by_location.get(location_id), demand, change_id)
    container().backorder_allocator.place(sku, demand)


def backorder_recorded(record: DynamoDBRecord) -> None:
    """An order written backordered (its queue entry for the sku then marked,
    `Backorders.recorded`): the reorder point that buys what it lacks (`core.sourcing.bought_at`)
    buys, at once, what the orders it buys for lack (`_buy_lacking`), without waiting for a
    crossing there (stock may sit below the point for good). Only that: `reorder_quantity` is a
    crossing's."""
    stream = record.dynamodb
    assert stream is not None  # backorder_marked
    sku = str((stream.keys or {}).get("sku", ""))
    order_id = str((stream.new_image or {}).get("order_id", ""))
    with logger.append_context_keys(sku=sku, order_id=order_id):
        levels, demand = _demand(sku)
        at = demand.at.get(order_id)  # None: filled meanwhile, or no point buys for it
        _buy_lacking(sku, next((level for level in levels if level.location_id == at), None), demand,
                     str(stream.sequence_number))  # fmt: skip
        _buy_where_placed(sku, levels, demand, str(stream.sequence_number), at)


def on_order_withdrawn(record: DynamoDBRecord) -> None:
    """Units bought withdrawn (a purchase order cancelled, or a draft a person cancelled) where
    that crossed nothing (the stock position was below the point already, or a draft's units are
    no part of it): the orders that were to take them are bought for again (`_buy_lacking`), on
    the open draft or a new one. At a location with a reorder point, by that point; at one whose
    point was cleared (the purchasing adapter marks the withdrawal `withdrawn`, which the stream's
    filter passes), the orders counted there with nothing coming there now are placed again where
    a point buys (`demand`), and bought for there. A withdrawal that crosses the point is the
    crossing's (`reorder_point_crossed`)."""
    change = stock_change(record)
    if change is None or not change.withdrawn or crossing(change) is not None:
        return
    with logger.append_context_keys(sku=change.sku, location_id=change.location_id):
        # Not `also`: it buys by the point there now (`_buy_lacking`); one cleared since buys
        # nothing, and an order placed there would be kept there, bought by no point.
        levels, demand = _demand(change.sku)
        by_location = {level.location_id: level for level in levels}
        here = by_location.get(change.location_id)
        buys_here = here is not None and here.reorder is not None
        buying = {change.location_id} | demand.placed if buys_here else set(demand.at.values())
        for location_id in sorted(buying):
            _buy_lacking(change.sku, by_location.get(location_id), demand, change.change_id)
        container().backorder_allocator.place(change.sku, demand)  # bought for where placed


def reorder_point_set(record: DynamoDBRecord) -> None:
    """A reorder point set where there was none (a new one, or one set again after it was cleared):
    the orders backordered meanwhile had no point to buy for them, and one whose draft was cancelled
    while there was none had its units bought by nothing; stock already below the point crosses
    nothing, so they would wait for the next order backordered. What the orders counted there lack
    is bought now (`_buy_lacking`: not `reorder_quantity`, a crossing's), once per record."""
    placed = point_set(record)
    if placed is None:
        return
    sku, location_id = placed
    with logger.append_context_keys(sku=sku, location_id=location_id):
        # Not `also`, as for a withdrawal: a point cleared since buys nothing.
        levels, demand = _demand(sku)
        level = next((level for level in levels if level.location_id == location_id), None)
        assert record.dynamodb is not None  # point_set
        _buy_lacking(sku, level, demand, str(record.dynamodb.sequence_number))
        _buy_where_placed(sku, levels, demand, str(record.dynamodb.sequence_number), location_id)


def rules_changed(record: DynamoDBRecord) -> None:
    """A new version of the sourcing rules (its item inserted) wakes the backordered orders from the
    oldest; the page after is handed on by the `wake_after` that page wrote on the version's item."""
    stream = record.dynamodb
    if stream is None or (stream.keys or {}).get("pk") != SOURCING_RULES_PK:
        return
    new, old = stream.new_image or {}, stream.old_image or {}
    if record.raw_event.get("eventName") == "INSERT":
        after = None
    elif new.get(WAKE_AFTER) and new.get(WAKE_AFTER) != old.get(WAKE_AFTER):
        after = wake_after(str(new[WAKE_AFTER]))
    else:
        return  # not a page to wake: the wake of an older record, or another change of the item
    version = SourcingRules.model_validate_json(str(new["doc"])).version
    with logger.append_context_keys(sourcing_rules_version=version):
        _report(container().backorder_allocator.rules_changed(version, after))


def _shipping_changed(old: dict[str, str], new: dict[str, str]) -> bool:
    """Whether a location of the network's item `old` (JSON documents by location id) that shipped
    ships no more in `new` (changed to not ship, or gone), or one that did not ship ships again (the
    stock it kept meanwhile, which no arrival brings, may fill waiting orders)."""
    return any(
        Location.model_validate_json(document).ships
        != (location_id in new and Location.model_validate_json(new[location_id]).ships)
        for location_id, document in old.items()
        if new.get(location_id) != document
    )


def network_changed(record: DynamoDBRecord) -> None:
    """A change of the location network that stops a location shipping, or has one ship again,
    wakes the backordered orders from the oldest (it may leave some nowhere to take more units, or
    give them the units it kept), as a new version of the rules does; the page after is handed on
    by the `wake_after` that page wrote on the network's item. Other changes of the network wake
    no one."""
    stream = record.dynamodb
    if stream is None or (stream.keys or {}).get("pk") != NETWORK_KEY["pk"]["S"]:
        return
    new, old = stream.new_image or {}, stream.old_image or {}
    if _shipping_changed(old.get("locations") or {}, new.get("locations") or {}):
        after = None
    elif new.get(WAKE_AFTER) and new.get(WAKE_AFTER) != old.get(WAKE_AFTER):
        after = wake_after(str(new[WAKE_AFTER]))
    else:
        return  # a location added, or changed and shipping as before (a store that stops taking pickups
        # still supplies its pickup orders: `eligible_locations`): nobody is left without one
    with logger.append_context_keys(network_changed=True):
        _report(container().backorder_allocator.network_changed(after))


def stock_changed(record: DynamoDBRecord) -> None:
    # The Inventory stream: a record is an arrival, a crossing, or neither. The Catalog stream
    # (keys pk and sk) brings sourcing rules and the location network only, through its filter.
    if record.dynamodb is not None and "pk" in (record.dynamodb.keys or {}):
        rules_changed(record)
        network_changed(record)
        return
    if backorder_marked(record):
        backorder_recorded(record)
        return
    arrival(record)
    reorder_point_crossed(record)
    on_order_withdrawn(record)
    reorder_point_set(record)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Partial batch response: the stream retries from the first failed record, and the records
    # after it are failed unprocessed (a sku's changes are taken in order); a batch failed whole is
    # bisected, then its record handed to the on-failure queue. Filling is idempotent, so a
    # retried record reserves nothing twice.
    return process_partial_response(event=event, record_handler=stock_changed, processor=processor, context=context)
