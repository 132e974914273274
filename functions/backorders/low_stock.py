"""Inventory stream records read as stock changes, for the reorder-point crossing they may be, and as
orders written backordered, whose lack the reorder points buy."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from core.models import ReorderSettings
from core.reorder import Crossing, StockChange, crossing
from functions.adapters.dynamodb import BACKORDER_PREFIX, BACKORDER_RECORDED
from functions.adapters.purchasing import WITHDRAWN_DRAFT


def _available(image: dict[str, Any] | None) -> int | None:
    value = (image or {}).get("available")
    return int(value) if value is not None else None


def _incoming(image: dict[str, Any]) -> int:
    # Absent on an item no open purchase order has named yet.
    return int(image.get("incoming") or 0)


def _changed_at(created: Any) -> datetime:
    """When a record's change was made: Lambda hands over epoch seconds; a record replayed by hand
    (the failure runbooks) is as `aws dynamodbstreams get-records` prints it, the time as ISO 8601
    text (the CLI's v2 default). Now when it carries none."""
    if created is None or created == "":
        return datetime.now(UTC)
    try:
        return datetime.fromtimestamp(float(created), UTC)
    except ValueError:
        return datetime.fromisoformat(str(created)).astimezone(UTC)


def stock_change(record: DynamoDBRecord) -> StockChange | None:
    """The change one record is, from its two images; None for what is not a stock item with
    both images (a new item, a removal, a backorder queue entry)."""
    stream = record.dynamodb
    if stream is None or record.raw_event.get("eventName") != "MODIFY":
        return None
    new, old = stream.new_image or {}, stream.old_image or {}
    before, after = _available(old), _available(new)
    if after is None or before is None:
        return None  # a backorder queue entry or a restock ledger item: no stock of its own
    keys = stream.keys or {}
    settings, settings_before = new.get("reorder"), old.get("reorder")
    return StockChange(
        sku=str(keys.get("sku", "")),
        location_id=str(keys.get("location_id", "")),
        available_before=before,
        available_after=after,
        settings=ReorderSettings.model_validate(settings) if settings else None,
        # The record's place in the stream: the same for a redelivery, new for every other change.
        change_id=str(stream.sequence_number),
        changed_at=_changed_at(record.raw_event["dynamodb"].get("ApproximateCreationDateTime")),
        incoming_before=_incoming(old),
        incoming_after=_incoming(new),
        draft_withdrawn=new.get(WITHDRAWN_DRAFT) is not None and new.get(WITHDRAWN_DRAFT) != old.get(WITHDRAWN_DRAFT),
        point_before=ReorderSettings.model_validate(settings_before).reorder_point if settings_before else None,
    )


def crossing_of(record: DynamoDBRecord) -> Crossing | None:
    change = stock_change(record)
    return crossing(change) if change is not None else None


def withdrawal_of(record: DynamoDBRecord) -> StockChange | None:
    """The change `record` is when it withdraws units bought (`StockChange.withdrawn`) and crosses
    no reorder point (a withdrawal that does is the crossing's: `crossing_of`); None otherwise."""
    change = stock_change(record)
    if change is None or not change.withdrawn or crossing(change) is not None:
        return None
    return change


def point_set(record: DynamoDBRecord) -> tuple[str, str] | None:
    """The sku and location of the stock item `record` gives a reorder point where it had none (set
    for the first time, on an item that may be new with it, or set again after it was cleared); None
    for any other change, a point changed (its vendor, say) included."""
    stream = record.dynamodb
    if stream is None or record.raw_event.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    new, old = stream.new_image or {}, stream.old_image or {}
    if not new.get("reorder") or old.get("reorder"):
        return None
    keys = stream.keys or {}
    return str(keys.get("sku", "")), str(keys.get("location_id", ""))


def backorder_marked(record: DynamoDBRecord) -> bool:
    """Whether `record` is a backorder queue entry marked as its order was written backordered
    (DynamoBackorders.recorded): the change that sets the mark, not a later one."""
    stream = record.dynamodb
    if stream is None or record.raw_event.get("eventName") != "MODIFY":
        return False
    if not str((stream.keys or {}).get("location_id", "")).startswith(BACKORDER_PREFIX):
        return False
    new, old = stream.new_image or {}, stream.old_image or {}
    return bool(new.get(BACKORDER_RECORDED)) and not old.get(BACKORDER_RECORDED)
