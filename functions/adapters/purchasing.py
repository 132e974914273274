"""DynamoDB adapter for vendors and purchase orders: Catalog-table items, and the incoming units on stock items."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from core.errors import StaleVersion, StockLimitReached
from core.models import MAX_ON_HAND, ReorderSettings, utc_now
from core.purchasing import (
    INCOMING,
    PurchaseOrder,
    PurchaseOrderFilter,
    PurchasingRepository,
    RecordedReceipt,
    Vendor,
    receipts_listed,
)
from core.status import PurchaseOrderStatus
from functions.adapters.dynamodb import (
    ARRIVED,
    RESTOCKED_SINCE_COUNT,
    WITHDRAWN,
    _is_conditional_failure,
    cancellation_reasons,
    decode_cursor,
    encode_cursor,
    query_page,
    timestamp,
    to_item,
)

VENDORS_PK = "VENDORS"
PURCHASE_ORDERS_PK = "PURCHASE_ORDERS"
# A stock item keeps, per open PO that still brings units of its sku, that PO's expected date in
# an attribute of its own (`expected#<po id>`): next_expected_at is the earliest of them, read with
# the item, never by scanning POs. Top-level attributes, because a map would have to exist before
# an update could set one of its keys, which one UpdateExpression cannot ensure.
EXPECTED_PREFIX = "expected#"
# Reorder points: the open draft per (vendor, location) is named by one item (pk DRAFT_PURCHASE_ORDERS,
# sk <vendor>#<location>) so that a crossing finds it with a GetItem; each crossing counted leaves a
# marker (pk REORDERED#<sku>#<location>, sk the stream change's id) kept for longer than a stream
# record can be redelivered (24 h), then expired by the table's TTL.
DRAFTS_PK = "DRAFT_PURCHASE_ORDERS"
# The draft each sku's line was last added to, per vendor and location (sk <vendor>#<location>#<sku>):
# a draft that filled up is no longer the open one, and its lines are still found (`holding_draft`).
DRAFT_LINES_PK = "DRAFT_PURCHASE_ORDER_LINES"
# Beside those, per location and sku (sk <location>#<sku>), the vendors whose drafts took a line of
# it (`vendors`, a string set): a point whose vendor changed still finds the former vendor's draft.
DRAFT_VENDORS = "vendors"
REORDERED_PREFIX = "REORDERED#"
REORDER_MARKER_TTL_SECONDS = 7 * 24 * 3600
# A draft cancelled names itself on the stock item of each of its lines (the same transaction): its
# units, counted as bought, are not coming, and the stream's record of that change buys them again
# for the backorders (`ReorderBuying.withdrawn`, core/reorder_buying.py), as a PO's cancelled incoming does.
WITHDRAWN_DRAFT = "withdrawn_draft"


def _po_key(po_id: str) -> dict[str, Any]:
    return {"pk": {"S": PURCHASE_ORDERS_PK}, "sk": {"S": po_id}}


def _incoming(po: PurchaseOrder) -> dict[str, int]:
    return po.outstanding() if po.status in INCOMING else {}


def _draft_cancelled(po: PurchaseOrder, expected: PurchaseOrder) -> bool:
    return expected.status is PurchaseOrderStatus.DRAFT and po.status is PurchaseOrderStatus.CANCELLED


def _recorded(value: str) -> RecordedReceipt:
    # A receipt's JSON document; one recorded before receipts kept theirs holds the time it was counted.
    return RecordedReceipt.model_validate_json(value) if value.startswith("{") else RecordedReceipt()


def _document(po: PurchaseOrder) -> str:
    # Its receipts are kept beside it, each under its key (`receipts`), and listed from there: once.
    return po.model_dump_json(exclude={"receipts"})


def _read(item: dict[str, Any]) -> tuple[PurchaseOrder, dict[str, RecordedReceipt]]:
    """The PO an item holds, its receipts listed, and the receipts it keeps by key."""
    receipts = {key: _recorded(value["S"]) for key, value in item.get("receipts", {}).get("M", {}).items()}
    po = PurchaseOrder.model_validate_json(item["doc"]["S"])
    return po.model_copy(update={"receipts": receipts_listed(receipts)}), receipts


class DynamoPurchasing(PurchasingRepository):
    """Vendors and POs live in the Catalog table (as API keys and webhooks do), each in one
    partition (`VENDORS`, `PURCHASE_ORDERS`) sorted by id: POs are few beside orders. A PO is its
    JSON document (`doc`) beside the attributes that conditions and list filters need."""

    # The most items a filtered page reads (one Query; DynamoDB's 1 MB a Query may stop it sooner).
    READ_PER_PAGE = 1000

    def __init__(self, client: Any, catalog_table: str, inventory_table: str):
        self._client = client
        self._table = catalog_table
        self._inventory = inventory_table

    # --- Vendors ---------------------------------------------------------------------------------
    def put_vendor(self, vendor: Vendor) -> bool:
        item = {"pk": {"S": VENDORS_PK}, "sk": {"S": vendor.vendor_id}, "doc": {"S": vendor.model_dump_json()}}
        response = self._client.put_item(TableName=self._table, Item=item, ReturnValues="ALL_OLD")
        return not response.get("Attributes")

    def get_vendor(self, vendor_id: str) -> Vendor | None:
        key = {"pk": {"S": VENDORS_PK}, "sk": {"S": vendor_id}}
        item = self._client.get_item(TableName=self._table, Key=key).get("Item")
        return Vendor.model_validate_json(item["doc"]["S"]) if item else None

    def list_vendors(self, limit: int, cursor: str | None) -> tuple[list[Vendor], str | None]:
        items, next_cursor = self._page(VENDORS_PK, "vendors", limit, cursor, None, {}, {})
        return [Vendor.model_validate_json(item["doc"]["S"]) for item in items], next_cursor

    # --- Purchase orders -------------------------------------------------------------------------
    def _po_put(self, po: PurchaseOrder) -> dict[str, Any]:
        return {
            **_po_key(po.id),
            "doc": {"S": _document(po)},
            "status": {"S": po.status.value},
            "vendor_id": {"S": po.vendor_id},
            "version": {"N": str(po.version)},
            "receipts": {"M": {}},
        }

    def add(self, po: PurchaseOrder) -> None:
        put = {"TableName": self._table, "Item": self._po_put(po), "ConditionExpression": "attribute_not_exists(pk)"}
        self._write(po, {"Put": put}, _incoming(po), {}, {})

    def get(self, po_id: str) -> tuple[PurchaseOrder, dict[str, RecordedReceipt]] | None:
        item = self._client.get_item(TableName=self._table, Key=_po_key(po_id), ConsistentRead=True).get("Item")
        if not item:
            return None
        return _read(item)

    def update(self, po: PurchaseOrder, expected: PurchaseOrder, receipt: tuple[str, RecordedReceipt] | None) -> None:
        names = {"#doc": "doc", "#status": "status", "#version": "version"}
        values = {
            ":doc": _document(po),
            ":status": po.status.value,
            ":version": po.version,
            ":expected_status": expected.status.value,
            ":expected_version": expected.version,
        }
        expression = "SET #doc = :doc, #status = :status, #version = :version"
        if receipt is not None:
            names["#receipt"] = receipt[0]
            values[":receipt"] = receipt[1].model_dump_json(exclude_none=True)
            expression += ", receipts.#receipt = :receipt"
        update = {
            "TableName": self._table,
            "Key": _po_key(po.id),
            "UpdateExpression": expression,
            "ConditionExpression": "#status = :expected_status AND #version = :expected_version",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }
        received = (receipt[1].units or {}) if receipt else {}
        withdrawn = {line.sku for line in expected.lines} if _draft_cancelled(po, expected) else set()
        self._write(po, {"Update": update}, _incoming(po), _incoming(expected), received, withdrawn)

    def _write(
        self,
        po: PurchaseOrder,
        po_write: dict[str, Any],
        incoming: dict[str, int],
        incoming_before: dict[str, int],
        received: dict[str, int],
        withdrawn: set[str] | None = None,
    ) -> None:
        """The PO write and, per sku whose incoming or on hand moves or whose drafted units are
        `withdrawn` (a draft cancelled), one stock update: one transaction."""
        items = [po_write]
        withdrawn = withdrawn or set()
        skus: list[str] = []  # the sku of each stock update, in the transaction's order after the PO's
        for sku in sorted(set(incoming) | set(incoming_before) | set(received) | withdrawn):
            change = incoming.get(sku, 0) - incoming_before.get(sku, 0)
            units = received.get(sku, 0)
            moved = change != 0 or units != 0 or (incoming.get(sku, 0) > 0) != (incoming_before.get(sku, 0) > 0)
            if not moved and sku not in withdrawn:
                continue
            update = self._stock_update(po, sku, change, units, incoming.get(sku, 0) > 0, sku in withdrawn)
            items.append({"Update": update})
            skus.append(sku)
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            if (
                error.response["Error"]["Code"] == "TransactionCanceledException"
                and reasons
                and reasons[0].get("Code") == "ConditionalCheckFailed"
            ) or _is_conditional_failure(error):
                raise StaleVersion(f"purchase order {po.id} changed meanwhile") from None
            # The PO as expected, a stock item refused the units received: it holds too many.
            full = [sku for sku, reason in zip(skus, reasons[1:], strict=False)
                    if reason.get("Code") == "ConditionalCheckFailed"]  # fmt: skip
            if error.response["Error"]["Code"] == "TransactionCanceledException" and full:
                raise StockLimitReached(
                    f"receiving would take on_hand at {po.location_id} past {MAX_ON_HAND:,} units",
                    details=[{"sku": sku, "message": f"at most {MAX_ON_HAND:,} units may be on hand"} for sku in full],
                ) from None
            raise

    def _stock_update(
        self, po: PurchaseOrder, sku: str, change: int, units: int, expected: bool, withdrawn: bool = False
    ) -> dict[str, Any]:
        # An item a PO creates starts with no stock, so that it reads as any stock record does.
        expression = (
            "SET on_hand = if_not_exists(on_hand, :zero) + :units, "
            "available = if_not_exists(available, :zero) + :units, "
            "reserved = if_not_exists(reserved, :zero), reservations = if_not_exists(reservations, :none), "
            "incoming = if_not_exists(incoming, :zero) + :change, updated_at = :now"
        )
        values: dict[str, Any] = {
            ":units": units, ":zero": 0, ":none": {}, ":change": change, ":now": utc_now(),
        }  # fmt: skip
        removed = []
        condition = None
        if units:
            # A receipt raises available: the backorder filler's stream filter passes it (ARRIVED).
            expression += f", last_reason = :reason, {ARRIVED} = :arrived, {RESTOCKED_SINCE_COUNT} = :arrived"
            values[":reason"] = f"purchase order {po.id}"
            values[":arrived"] = True
            # Never past what a stock take may count: the units on hand refuse the receipt.
            condition = "attribute_not_exists(on_hand) OR on_hand <= :room"
            values[":room"] = MAX_ON_HAND - units
        else:
            removed.append(ARRIVED)  # only incoming moves: nothing arrived
        names = {"#expected": f"{EXPECTED_PREFIX}{po.id}"}
        if withdrawn:
            expression += f", {WITHDRAWN_DRAFT} = :draft"
            values[":draft"] = po.id
        if withdrawn or units + change < 0:
            # Units bought no longer coming (the stock position falls): the filter passes it where
            # no point marks the item, and the orders waiting for them are bought for elsewhere.
            expression += f", {WITHDRAWN} = :withdrawn"
            values[":withdrawn"] = True
        else:
            removed.append(WITHDRAWN)
        if expected:
            expression += ", #expected = :at"
            values[":at"] = timestamp(po.expected_at)
        else:
            removed.append("#expected")
        if removed:
            expression += " REMOVE " + ", ".join(removed)
        update = {
            "TableName": self._inventory,
            "Key": {"sku": {"S": sku}, "location_id": {"S": po.location_id}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }
        if condition is not None:
            update["ConditionExpression"] = condition
        return update

    def list(
        self, where: PurchaseOrderFilter, limit: int, cursor: str | None
    ) -> tuple[list[PurchaseOrder], str | None]:
        conditions, names, values = [], {}, {}
        if where.status is not None:
            conditions.append("#status = :status")
            names["#status"] = "status"
            values[":status"] = {"S": where.status.value}
        if where.vendor_id is not None:
            conditions.append("vendor_id = :vendor")
            values[":vendor"] = {"S": where.vendor_id}
        scope = f"purchase_orders:{where.status or ''}:{where.vendor_id or ''}"
        items, next_cursor = self._page(
            PURCHASE_ORDERS_PK, scope, limit, cursor, " AND ".join(conditions) or None, names, values
        )
        return [_read(item)[0] for item in items], next_cursor

    def _page(
        self,
        pk: str,
        scope: str,
        limit: int,
        cursor: str | None,
        condition: str | None,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` items of one partition in id order, filtered, with one Query: a cursor when
        more may follow. Filtered, it reads up to READ_PER_PAGE items (a filter may match few of
        them), so a page may hold fewer than `limit`, and its cursor goes on after the last item it
        read: filling the page Query after Query read the whole partition in one request when the
        filter matched few of the POs kept (received and cancelled ones stay for good)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}, **values},
        }
        if names:
            request["ExpressionAttributeNames"] = names
        if cursor is not None:
            request["ExclusiveStartKey"] = decode_cursor(cursor, scope, {"pk", "sk"}, {"pk": pk})
        if condition is None:
            found, last = query_page(self._client, request, limit, {"pk", "sk"})
            return found, encode_cursor(scope, last) if last else None
        request["FilterExpression"] = condition
        response = self._client.query(**request, Limit=max(limit + 1, self.READ_PER_PAGE))
        found, last = response.get("Items", []), response.get("LastEvaluatedKey")
        if len(found) > limit:
            found, last = found[:limit], {"pk": found[limit - 1]["pk"], "sk": found[limit - 1]["sk"]}
        return found, encode_cursor(scope, last) if last else None

    # --- Reorder points (issue 15 item 3) --------------------------------------------------------
    def set_reorder(self, sku: str, location_id: str, settings: ReorderSettings | None) -> None:
        key = {"sku": {"S": sku}, "location_id": {"S": location_id}}
        if settings is None:
            try:
                # Only on an item that exists: a REMOVE would otherwise make one with no stock fields.
                self._client.update_item(
                    TableName=self._inventory,
                    Key=key,
                    UpdateExpression="REMOVE reorder_point, reorder_watch, #reorder",
                    ConditionExpression="attribute_exists(sku)",
                    ExpressionAttributeNames={"#reorder": "reorder"},
                )
            except ClientError as error:
                if not _is_conditional_failure(error):
                    raise
            return
        # `reorder_watch` is what the stream's filter matches (template.yaml, BackorderFunction): a
        # top-level boolean, matched exactly, since a stream record carries DynamoDB numbers as
        # strings and a numeric pattern cannot be relied on to match them. A new item starts with
        # no stock, so that it reads as any stock record does.
        self._client.update_item(
            TableName=self._inventory,
            Key=key,
            UpdateExpression=(
                "SET reorder_point = :point, reorder_watch = :watch, #reorder = :settings, "
                "on_hand = if_not_exists(on_hand, :zero), available = if_not_exists(available, :zero), "
                "reserved = if_not_exists(reserved, :zero), "
                "reservations = if_not_exists(reservations, :none)"
            ),
            ExpressionAttributeNames={"#reorder": "reorder"},
            ExpressionAttributeValues=to_item(
                {
                    ":point": settings.reorder_point,
                    ":watch": True,
                    ":settings": settings.model_dump(mode="json", exclude_none=True),
                    ":zero": 0,
                    ":none": {},
                }
            ),
        )

    def open_draft(self, vendor_id: str, location_id: str) -> tuple[PurchaseOrder | None, str | None]:
        key = {"pk": {"S": DRAFTS_PK}, "sk": {"S": f"{vendor_id}#{location_id}"}}
        pointer = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        if not pointer:
            return None, None
        po_id = pointer["po_id"]["S"]
        found = self.get(po_id)
        draft = found[0] if found and found[0].status is PurchaseOrderStatus.DRAFT else None
        return draft, po_id

    def holding_draft(self, vendor_id: str, location_id: str, sku: str) -> PurchaseOrder | None:
        key = {"pk": {"S": DRAFT_LINES_PK}, "sk": {"S": f"{vendor_id}#{location_id}#{sku}"}}
        held = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        found = self.get(held["po_id"]["S"]) if held else None
        return found[0] if found and found[0].status is PurchaseOrderStatus.DRAFT else None

    def holding_drafts(self, vendor_id: str | None, location_id: str, sku: str) -> list[PurchaseOrder]:
        key = {"pk": {"S": DRAFT_LINES_PK}, "sk": {"S": f"{location_id}#{sku}"}}
        item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item") or {}
        vendors = sorted(set(item.get(DRAFT_VENDORS, {}).get("SS", [])) | ({vendor_id} if vendor_id else set()))
        return [draft for vendor in vendors if (draft := self.holding_draft(vendor, location_id, sku)) is not None]

    def reordered(self, key: str) -> bool:
        sku, location_id, change_id = key.split("#", 2)
        marker = {"pk": {"S": f"{REORDERED_PREFIX}{sku}#{location_id}"}, "sk": {"S": change_id}}
        found = self._client.get_item(TableName=self._table, Key=marker, ConsistentRead=True, ProjectionExpression="pk")
        return "Item" in found

    def add_reorder(self, po: PurchaseOrder, expected: PurchaseOrder | None, pointer: str | None, key: str) -> bool:
        sku, location_id, change_id = key.split("#", 2)
        marker = {
            "pk": {"S": f"{REORDERED_PREFIX}{sku}#{location_id}"},
            "sk": {"S": change_id},
            "po_id": {"S": po.id},
            "expires_at": {"N": str(int(time.time()) + REORDER_MARKER_TTL_SECONDS)},
        }
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self._table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}}
        ]
        if expected is None:
            items.append(
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": self._po_put(po),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
            draft_key = {"pk": {"S": DRAFTS_PK}, "sk": {"S": f"{po.vendor_id}#{po.location_id}"}}
            put_pointer: dict[str, Any] = {
                "TableName": self._table,
                "Item": {**draft_key, "po_id": {"S": po.id}},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
            if pointer is not None:
                put_pointer["ConditionExpression"] = "po_id = :was"
                put_pointer["ExpressionAttributeValues"] = {":was": {"S": pointer}}
            items.append({"Put": put_pointer})
        else:
            items.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": _po_key(po.id),
                        "UpdateExpression": "SET #doc = :doc, #version = :version",
                        "ConditionExpression": "#status = :draft AND #version = :expected_version",
                        "ExpressionAttributeNames": {"#doc": "doc", "#status": "status", "#version": "version"},
                        "ExpressionAttributeValues": to_item(
                            {
                                ":doc": _document(po),
                                ":version": po.version,
                                ":draft": PurchaseOrderStatus.DRAFT.value,
                                ":expected_version": expected.version,
                            }
                        ),
                    }
                }
            )
        if expected is None or not any(line.sku == sku for line in expected.lines):
            # A new line: the draft that holds the sku from now on (the draft's write guards it).
            held = {"pk": {"S": DRAFT_LINES_PK}, "sk": {"S": f"{po.vendor_id}#{po.location_id}#{sku}"}}
            items.append({"Put": {"TableName": self._table, "Item": {**held, "po_id": {"S": po.id}}}})
            vendors = {"pk": {"S": DRAFT_LINES_PK}, "sk": {"S": f"{po.location_id}#{sku}"}}
            add_vendor = {
                "TableName": self._table,
                "Key": vendors,
                "UpdateExpression": "ADD #vendors :vendor",
                "ExpressionAttributeNames": {"#vendors": DRAFT_VENDORS},
                "ExpressionAttributeValues": {":vendor": {"SS": [po.vendor_id]}},
            }
            items.append({"Update": add_vendor})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = cancellation_reasons(error)
            if reasons is None:
                raise
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False  # this crossing was counted by an earlier delivery of its record
            if "ConditionalCheckFailed" in reasons:
                raise StaleVersion(f"the draft for {po.vendor_id} at {po.location_id} changed meanwhile") from None
            raise
        return True
