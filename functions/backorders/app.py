"""Inventory stream consumer: when `available` rises for a sku at a location, fill the orders backordered for it;
when it falls below a reorder point, emit `inventory.low`, and grow the draft purchase order unless units on
open purchase orders and drafts cover the point; when an order is written backordered, or a point is set where
there was none, grow the draft by what the orders lack beyond what is there and on order. Catalog stream consumer for
the sourcing rules: a new version wakes the backordered orders it may let take units, a page at a time;
and for the location network: a location that stops shipping, or ships again, wakes them the same way."""

from __future__ import annotations

import os
from typing import Any
from uuid import uuid4

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from core.backorders import Arrival
from core.models import Location
from core.ports import WaitingOrder
from core.reorder_buying import BoughtFor, NotDrafted, Said
from core.sourcing_rules import SourcingRules
from functions.adapters.dynamodb import (
    BACKORDER_PREFIX,
    NETWORK_KEY,
    RESTOCKED_SINCE_COUNT,
    SHORT_COUNT,
    SOURCING_RULES_PK,
    WAKE_AFTER,
    WALK_AFTER,
    WALK_BY,
    WALK_RESTOCKED,
    wake_after,
)
from functions.backorders.low_stock import backorder_marked, crossing_of, point_set, withdrawal_of
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.masked_logs import function_logger
from functions.stream_batches import InOrderStreamProcessor, batch_response

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
# A record is not started with less than this left of the function's 10 s Timeout (the rest of the
# batch is reported failed unprocessed; the stream hands it out again from there, where a timeout
# had the batch retried whole and bisected, its walks done again). One record's walk is bounded
# (core/backorders.py WALK_READS, WALK_PAGES): 25 orders filled by one arrival measured 230 DynamoDB
# requests and 25 StartExecution on moto, ~1.3 s at 5 ms a request and ~2.6 s at 10 ms, so a batch of
# such arrivals outlives the Timeout unthrottled; the rest is room for throttled requests retried.
RECORD_RESERVE_MILLIS = 5_000
processor = InOrderStreamProcessor(reserve_millis=RECORD_RESERVE_MILLIS)
container = WarmContainer()


def _available(image: dict[str, Any] | None) -> int:
    value = (image or {}).get("available")
    return int(value) if value is not None else 0


def _restocked(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether the change added units to on_hand (a receipt, a count above the last, a return
    restocked), or units were added since the item's last stock take (RESTOCKED_SINCE_COUNT: a
    reservation released there after a restock whose walk stopped before the order), which lifts a
    stock take's exclusion of the location for the orders it sent elsewhere. Not while a count's
    mark stands there: its rejects' releases may not have landed, and an order filled there before
    they do would have its new units released by them."""
    added = int(new.get("on_hand") or 0) > int(old.get("on_hand") or 0) or bool(new.get(RESTOCKED_SINCE_COUNT))
    return added and SHORT_COUNT not in new


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
    restocked = _restocked(new, old)
    if _available(new) <= _available(old):
        if not new.get(WALK_AFTER) or new.get(WALK_BY) == old.get(WALK_BY):
            return  # reserved or shipped: nothing arrived
        after = wake_after(str(new[WALK_AFTER]))  # a walk handed on: it goes on from there
        restocked = bool(new.get(WALK_RESTOCKED))  # as the walk that handed it on was
    if not container().backorders.waiting(sku, after, 1):
        return  # nobody waits for this sku (after there): one Query, and no plugin is loaded for it
    # Its place in the stream, the same for a redelivery (which hands on nothing again); a record
    # replayed by hand carries none, and is a walk of its own.
    by = str(record.dynamodb.sequence_number or f"replay-{uuid4().hex}")

    def hand_on(last: WaitingOrder) -> None:
        # On the stock item, as a change the stream's filter passes: the rest of the walk is a
        # record of its own, in order with the sku's other changes there, and a failure before
        # it is written fails this record, whose retry walks again (its fills reserve nothing twice).
        container().backorders.walk_from(sku, location_id, last, by, restocked)
        logger.info("backorder walk handed on", extra={"after": last.order_id})

    with logger.append_context_keys(sku=sku, location_id=location_id):
        _report(container().backorder_allocator.arrived(sku, location_id, after, hand_on, restocked=restocked))


def _say(said: Said) -> None:
    """What a reorder record bought, as ReorderBuying does it: its log line (with the caller's context
    keys) and its metric."""
    if isinstance(said, NotDrafted):
        logger.warning(
            "reorder not drafted",
            extra={
                "reason": said.reason,
                "location_id": said.location_id,
                "draft": said.draft_id,
                "units": said.units,
                "why": said.why,
            },
        )
        metrics.add_metric(name="ReordersNotDrafted", unit=MetricUnit.Count, value=1)
    elif isinstance(said, BoughtFor):
        logger.info(
            "backorders bought for",
            extra={
                "location_id": said.location_id,
                "units": said.units,
                "draft": said.draft.id if said.draft else "counted before",
            },
        )
        if said.draft is not None:
            metrics.add_metric(name="BackordersBoughtFor", unit=MetricUnit.Count, value=1)
    else:
        logger.info(
            "reorder point crossed",
            extra={
                "available": said.available,
                "backordered": said.backordered,
                "draft": said.draft.id if said.draft else said.why,
            },
        )
        if said.draft is not None:
            metrics.add_metric(name="ReorderPointsCrossed", unit=MetricUnit.Count, value=1)


def reorder_point_crossed(record: DynamoDBRecord) -> None:
    crossed = crossing_of(record)
    if crossed is None:
        return
    with logger.append_context_keys(sku=crossed.sku, location_id=crossed.location_id):
        container().reorder_buying.crossed(crossed, _say)


def backorder_recorded(record: DynamoDBRecord) -> None:
    stream = record.dynamodb
    assert stream is not None  # backorder_marked
    sku = str((stream.keys or {}).get("sku", ""))
    order_id = str((stream.new_image or {}).get("order_id", ""))
    with logger.append_context_keys(sku=sku, order_id=order_id):
        container().reorder_buying.backorder_recorded(sku, order_id, str(stream.sequence_number), _say)


def on_order_withdrawn(record: DynamoDBRecord) -> None:
    change = withdrawal_of(record)
    if change is None:
        return
    with logger.append_context_keys(sku=change.sku, location_id=change.location_id):
        container().reorder_buying.withdrawn(change, _say)


def reorder_point_set(record: DynamoDBRecord) -> None:
    placed = point_set(record)
    if placed is None:
        return
    sku, location_id = placed
    assert record.dynamodb is not None  # point_set
    with logger.append_context_keys(sku=sku, location_id=location_id):
        container().reorder_buying.point_set(sku, location_id, str(record.dynamodb.sequence_number), _say)


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
    # retried record reserves nothing twice. The records there is no time left for
    # (RECORD_RESERVE_MILLIS) are failed unprocessed too.
    answer = batch_response(event=event, record_handler=stock_changed, processor=processor, context=context)
    processor.say_if_cut_short(logger, event)
    return answer
