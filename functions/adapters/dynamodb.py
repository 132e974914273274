"""DynamoDB adapters for the core's ports: the only code that knows table layouts."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from core.access import ApiKey
from core.cursors import cursor_document, cursor_of
from core.errors import (
    Conflict,
    DuplicateOrder,
    InsufficientStock,
    InvalidCursor,
    InvalidTransition,
    ReservationsChanged,
    ReservationsFull,
    StaleVersion,
    StockLimitReached,
    TransientError,
)
from core.models import MAX_ON_HAND, Bookkeeping, HistoryEntry, Location, Order, Product, StockLevel, utc_now
from core.ports import (
    ApiKeyRepository,
    BackorderedOrders,
    Backorders,
    CatalogRepository,
    CountedAlready,
    DuePickups,
    GatewayKey,
    InventoryRepository,
    KeptBackRefunds,
    LateOrders,
    OrderFilter,
    OrderRepository,
    OrdersOwingCarrier,
    PendingRefunds,
    ReceivedReturns,
    ReturnFilter,
    ReturnRepository,
    SettlementCaptures,
    ShortCount,
    SourcingRulesRepository,
    StalledOrder,
    StalledOrders,
    StockMove,
    TopUp,
    UnreceivedReturns,
    UnsettledAuthorizations,
    WaitingOrder,
)
from core.refunds import owes_kept_back
from core.sourcing_rules import SourcingRules
from core.status import WATCHED, OrderStatus, PaymentStatus, RefundStatus, ReturnStatus, check_successor
from functions.adapters import order_codec
from functions.adapters.api_key_lookup import lookup_key
from functions.adapters.aws_errors import dependency_down
from functions.adapters.labels import with_booking_keys_from_labels

if TYPE_CHECKING:
    # Read in _return: the returns' models stay out of a new API container, which never reads one.
    from core.return_models import Return

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
logger = logging.getLogger(__name__)


def timestamp(value: datetime) -> str:
    """One fixed RFC 3339 UTC format, so strings sort in time order inside GSI sort keys: in UTC
    whatever the zone it came in, and with a four-digit year (strftime writes year 1 as "1"):
    TIME_FORMAT, written by isoformat (always four digits, 26 characters before its zone) in half
    strftime's time, and a time already in UTC, as nearly every one here is, not converted again."""
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:26] + "Z"


def _plain(value: Any) -> Any:
    # boto3 refuses floats and datetimes; pydantic's python dump keeps Decimal exact.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, Enum):
        return value.value
    return value


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in _plain(values).items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _numbers_to_python(value: Any) -> Any:
    # DynamoDB numbers come back as Decimal; ints must be ints for the models' strict int fields.
    if isinstance(value, dict):
        return {k: _numbers_to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_to_python(v) for v in value]
    if isinstance(value, Decimal) and value == value.to_integral_value() and value.as_tuple().exponent >= 0:
        return int(value)
    return value


def _is_conditional_failure(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


def order_check(table: str, order_id: str, status: OrderStatus, version: int) -> dict[str, Any]:
    """A transaction's ConditionCheck that the stored order still has `status` at `version`."""
    return {
        "ConditionCheck": {
            "TableName": table,
            "Key": {"id": {"S": order_id}},
            "ConditionExpression": "#status = :expected_status AND #version = :expected_version",
            "ExpressionAttributeNames": {"#status": "status", "#version": "version"},
            "ExpressionAttributeValues": {
                ":expected_status": {"S": status.value},
                ":expected_version": {"N": str(version)},
            },
        }
    }


def cancellation_reasons(error: ClientError) -> list[str | None] | None:
    """The code a cancelled TransactWriteItems gives for each of its items, in their order ("None"
    for an item that did not cancel it); None for any other error."""
    if error.response["Error"]["Code"] != "TransactionCanceledException":
        return None
    return [reason.get("Code") for reason in error.response.get("CancellationReasons") or []]


def _too_large(error: ClientError) -> bool:
    """DynamoDB refused a write that would take its item past 400 KB."""
    found = error.response.get("Error", {})
    return found.get("Code") == "ValidationException" and "maximum allowed size" in str(found.get("Message", ""))


# The most open reservations one stock item takes (keys of its `reservations` map). About 34 bytes
# each (a real key, its units, a byte), 10,000 fill some 340 KB of the 400 KB item: the rest stays
# free for the writes that record stock (an adjustment's reason and key, a count, a purchase
# order's expected units), which an item filled to the byte by reservations refused (a 500 on a
# receipt). A reserve, rearrange or fill that would add a key past it is ReservationsFull.
RESERVATIONS_ROOM = 10_000


def _room_for(new_keys: int, values: dict[str, Any]) -> str:
    """The condition that the item's map has room for `new_keys` more reservations."""
    values[":room"] = RESERVATIONS_ROOM - new_keys
    return "(attribute_not_exists(reservations) OR size(reservations) <= :room)"


# DynamoDB refuses an expression over 4 KB or of more than 300 operators. A rearrangement names each
# key in its condition (`attribute_not_exists(reservations.#k99) AND `, 45 bytes, two operators)
# and in its update (`reservations.#k99 = :w99, `, 27 bytes): 64 keys keep both within them.
_KEYS_PER_REARRANGE = 64


def _rearrangements(
    held: dict[str, int], wanted: dict[str, int], size: int
) -> list[tuple[dict[str, int], dict[str, int]]]:
    """`held` and `wanted` (a rearrangement, DynamoInventory.rearrange) cut into parts of at most
    `size` keys, each part taking units for its keys (what wanted has over held) no more than it
    gives back while there are keys that give back, the parts that take the most first: one part
    when the keys fit in one."""
    changes = {key: wanted.get(key, 0) - held.get(key, 0) for key in sorted(held.keys() | wanted.keys())}
    if len(changes) <= size:
        return [(held, wanted)]
    takers = [key for key, more in changes.items() if more > 0]
    givers = [key for key, more in changes.items() if more <= 0]
    parts: list[list[str]] = []
    part: list[str] = []
    balance = 0
    while takers or givers:
        if len(part) == size:
            parts.append(part)
            part, balance = [], 0
        # A key that takes only while the part still gives back as much (or nothing is left to give).
        key = (takers if takers and (not givers or balance + changes[takers[0]] <= 0) else givers).pop(0)
        balance += changes[key]
        part.append(key)
    parts.append(part)
    parts.sort(key=lambda keys: -sum(changes[key] for key in keys))
    return [
        ({key: held[key] for key in keys if key in held}, {key: wanted[key] for key in keys if key in wanted})
        for keys in parts
    ]


def _no_room(old: dict[str, Any], new_keys: int) -> bool:
    """Whether the item as it was (`old`) had no room for `new_keys` more reservations."""
    return len(old.get("reservations") or {}) > RESERVATIONS_ROOM - new_keys


# BatchGetItem's unprocessed keys are asked again after 50 ms, doubled for each round in a row that
# read nothing (0.05 to 1.6 s, jittered by half: under 3.2 s in all before the sixth such round
# raises), within every function's timeout.
UNPROCESSED_PAUSE_SECONDS = 0.05
UNPROCESSED_ROUNDS = 6


def read_options(projection: str | None, names: dict[str, str] | None, consistent: bool = False) -> dict[str, Any]:
    """The optional parts of a read (BatchGetItem's page, a Query): the projection, its attribute
    names, a consistent read; none of them when not asked for."""
    options: dict[str, Any] = {}
    if projection:
        options["ProjectionExpression"] = projection
    if names:
        options["ExpressionAttributeNames"] = names
    if consistent:
        options["ConsistentRead"] = True
    return options


def batch_get(
    client: Any,
    table: str,
    keys: list[dict[str, Any]],
    attributes: str | None = None,
    names: dict[str, str] | None = None,
    *,
    consistent: bool = False,
) -> list[dict[str, Any]]:
    """BatchGetItem in pages of 100, asking again for the keys DynamoDB left unprocessed (it does
    when the table or a partition is throttled, answering 200): after a pause that doubles while a
    round reads nothing (jittered, from UNPROCESSED_PAUSE_SECONDS), as AWS asks, not at once until
    the function times out. UNPROCESSED_ROUNDS rounds in a row that read nothing raise the throttle
    a busy table would (ProvisionedThroughputExceededException: the API answers 503, a step retries)."""
    found: list[dict[str, Any]] = []
    options = read_options(attributes, names, consistent)
    for start in range(0, len(keys), 100):
        page: dict[str, Any] = {"Keys": keys[start : start + 100], **options}
        request: dict[str, Any] = {table: page}
        idle = 0  # rounds in a row that read nothing
        while request:
            response = client.batch_get_item(RequestItems=request)
            read = response["Responses"].get(table, [])
            found.extend(read)
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            idle = 0 if read else idle + 1
            if idle >= UNPROCESSED_ROUNDS:
                raise ClientError(
                    {"Error": {"Code": "ProvisionedThroughputExceededException",
                               "Message": f"{table}: keys left unprocessed {idle} times in a row"}},
                    "BatchGetItem",
                )  # fmt: skip
            time.sleep(UNPROCESSED_PAUSE_SECONDS * 2**idle * random.uniform(0.5, 1.0))
    return found


def query_page(
    client: Any, query: dict[str, Any], limit: int, key_names: set[str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Up to `limit` entries `query` finds, and the key the next page starts after (None: none
    follows). One entry more is read: DynamoDB names a LastEvaluatedKey whenever a Query stops at
    its Limit, so a page of the last `limit` entries named a next page that was empty; the next
    page starts after the last entry shown (`key_names`: the attributes of an entry's key)."""
    response = client.query(**query, Limit=limit + 1)
    entries = response.get("Items", [])
    if len(entries) > limit:
        return entries[:limit], {name: entries[limit - 1][name] for name in key_names}
    return entries, response.get("LastEvaluatedKey")  # a page a FilterExpression or 1 MB cut short


def encode_cursor(scope: str, last_key: dict[str, Any]) -> str:
    """An opaque cursor: LastEvaluatedKey bound to what it pages through (an index, a list)."""
    return cursor_of({"i": scope, "k": last_key}, sort_keys=True)


# DynamoDB refuses a start key whose value is empty or longer than a sort key may be (1024 bytes;
# every key the OMS writes is far shorter), and one outside the partition the Query reads, with a
# ValidationException: a cursor forged so is refused here, as the client's error, instead.
_MAX_KEY_BYTES = 1024
# DynamoDB refuses an expression longer than 4 KB (ValidationException; moto takes any). A read of
# reservations names each key it asks about in its projection (`, reservations.#k<n>`, 20 bytes up
# to #k999) beside the levels' attributes: _RESERVATIONS_PER_READ of them fit. An order's keys are
# those of its lines and of the lines its edits replaced, up to ~420 of a 100-line order (64 KiB
# of them: core.models.MAX_REPLACED_LINE_BYTES), so they are read in several reads.
MAX_EXPRESSION_BYTES = 4096
_LEVEL_ATTRIBUTES = ["sku", "location_id", "on_hand", "reserved", "available"]
_RESERVATIONS_PER_READ = (MAX_EXPRESSION_BYTES - len(", ".join(_LEVEL_ATTRIBUTES))) // len(", reservations.#k999")


def decode_cursor(
    cursor: str, scope: str, key_attributes: set[str], partition: dict[str, str] | None = None
) -> dict[str, Any]:
    """The ExclusiveStartKey in `cursor`, or InvalidCursor if it was not issued for `scope` or is
    not a key of the partition the list reads (`partition`: its key attribute and value)."""
    try:
        decoded = cursor_document(cursor)
        key = decoded["k"]
        valid = (
            decoded["i"] == scope
            and isinstance(key, dict)
            and set(key) == key_attributes
            and all(
                isinstance(v, dict)
                and set(v) == {"S"}
                and isinstance(v["S"], str)
                and 0 < len(v["S"].encode()) <= _MAX_KEY_BYTES
                for v in key.values()
            )
            and all(key[name]["S"] == value for name, value in (partition or {}).items())
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return key


# --- Orders ----------------------------------------------------------------------------------

LIST_PK = "order"

# Which GSI answers which filter. The customer index also projects the channel (it never changes,
# so projecting it costs no index write after the first) for a customer's orders in one channel.
_INDEXES = {
    "by_customer": ("customer_id",),
    "by_channel": ("channel",),
    "by_status_key": ("status_key",),
    "by_created": ("list_pk",),
    "by_sla": ("sla_key",),
    "by_pickup_location": ("pickup_location",),
}
_SORT_KEYS = {"by_sla": "sla_at"}  # every other index sorts by created_at
# How many index entries one page of a channel's list of a customer's (or the late) orders reads
# at most before it answers with what it found: about 1 MB, a few queries. Read on to a full page,
# a customer with millions of another channel's orders cost a read of every one of them per page
# and outlasted the API's 29 s.
CHANNEL_LIST_READS = 10_000

# The sparse `by_status_key` index (template.yaml) holds the statuses people and the scheduled
# passes work through. The happy path's high-volume ends are left out: an order leaving for
# shipped costs one index write (its entry removed) and delivered none, where a key that moved
# would cost two each. Those statuses are listed from by_created, filtered after the read.
UNINDEXED_STATUSES = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.PARTIALLY_RETURNED, OrderStatus.RETURNED}
)
INDEXED_STATUSES = frozenset(OrderStatus) - UNINDEXED_STATUSES
# The pending and the authorized orders share one partition, `pending`: both are the workflow's for
# the seconds of one execution, and everything that asks for either (the reconciler, the jeopardy
# scan, `GET /orders?status=`) judges each order it reads back. An order authorized keeps the entry
# it was placed with, key and projection unchanged (neither carries `status_since`): no index write,
# where its key moving to `authorized` cost two (a delete and a put). Orders a release before this
# one stored authorized keep `authorized` until their next write (which moves them here, as does
# `python -m infra.backfill_orders`): the reconciler and the jeopardy scan read that partition too.
IN_WORKFLOW = frozenset({OrderStatus.PENDING, OrderStatus.AUTHORIZED})
WORKFLOW_PARTITION = OrderStatus.PENDING.value
STORED_AUTHORIZED = OrderStatus.AUTHORIZED.value


def status_key(status: OrderStatus) -> str:
    """The by_status_key partition an order in `status` (one of INDEXED_STATUSES) is kept in."""
    return WORKFLOW_PARTITION if status in IN_WORKFLOW else status.value


def status_partitions(status: OrderStatus) -> tuple[str, ...]:
    """The by_status_key partitions that may hold orders in `status`: its own, and for an authorized
    order also the one a release before this one kept it in (STORED_AUTHORIZED)."""
    return (status_key(status), STORED_AUTHORIZED) if status is OrderStatus.AUTHORIZED else (status_key(status),)


# The sparse `by_sla` index keeps an entry only for an order marked late, under JEOPARDY_KEY by
# when it was placed (GET /orders?jeopardy=true, newest first; the count of orders in jeopardy):
# written when an order is marked or unmarked, never at an ordinary status change, and left out
# while a capture its ship (or collect) asked for is not recorded (a ship under way: seconds; one
# that died: until the jeopardy scan's sweep settles it, core.capture_sweep, or the gateway refuses
# to refund it and the scan marks the order for a person: Order.listed_late). The jeopardy
# scan finds its candidates through by_status_key, which projects `status_since` (when the deadline
# of its status starts counting, Order.deadline_counts_from: when it entered the status, or a ready
# pickup's collect_by; stored on watched orders only, as every write pays for its bytes, and not on
# a pickup waiting with no collect_by, which is never late) and `sla_key` (whether it is marked).
JEOPARDY_KEY = "jeopardy"
# The same `sla_key`, with no `sla_at` (so no by_sla entry), on a partly shipped order the jeopardy
# scan noted read with no capture request standing (Order.read_by_scan), which its partly shipped
# pass did while that status had no deadline by default; the scan notes none now, and the pass of
# the status's deadline reads such an order as any unmarked one. Kept as stored until a ship of it
# asks a capture, or it leaves the status: the typical order has none.
READ_KEY = "read"
# The sparse `by_pending_refund` index keeps an entry only for an order with a refund still pending
# at the gateway, under PENDING_REFUND_KEY by when its oldest one was begun: the reconciler finishes
# those a request left behind (core.refund_service.PendingRefundSweep). A refund is pending for the
# moment its request asks the gateway, so the entry comes and goes once per refund.
PENDING_REFUND_KEY = "pending"
# The same index's second partition: an order holding an authorization an edit left (asked for and
# not recorded, or replaced and not voided: Order.edit_authorizations_left), or a cancelled (or
# payment_failed) order whose own authorization the gateway could not void (Order.own_void_owed),
# by when it last changed, so the reconciler voids what an order nobody touches again would keep holding on the
# customer's card (core.authorization_sweep.UnsettledAuthorizationSweep: Order.authorizations_left).
# Only an edit whose total grew leaves one, for the moment between its request and its write or
# void, or an edit of a pending order whose given-up key the gateway could not be asked about before
# the order was authorized, or a cancel whose void (or release of a renewal a dead ship asked for)
# found the gateway down, or an authorization a write lost to a race and whose void found it down
# (a cancel whose void is made at once writes no entry); an order with a refund pending as well stays in
# PENDING_REFUND_KEY's partition until that refund is finished.
UNSETTLED_AUTHORIZATION_KEY = "void"
# Ahead of it (a refund pending comes first still), SETTLEMENT_CAPTURE_KEY: an order with a
# settlement capture asked of the gateway and not recorded (a CaptureRequest with no shipment: the
# cancel of units, or the last parcel's ship, that asked died between the gateway's answer and its
# write), by when it last changed, so the reconciler records what the gateway may have taken
# (core.capture_sweep.UnrecordedCaptureSweep.run_settlements) on an order the jeopardy scan never
# finds (one shipped since is never late). Only an order a cancel of units left with a total above
# its captures asks for one, for the moment between its request and its write: the typical order,
# and every shipment's capture, writes no entry. An order that also holds an edit's authorization or
# owes a carrier is here until the capture is recorded (or refused), then moves to their partition.
SETTLEMENT_CAPTURE_KEY = "settlement"
# Then KEPT_BACK_KEY: an order owing the refund of what a return kept back that its captures make
# refundable now (core.refunds.owes_kept_back: its last ship, delivery or cancel of units could not
# refund it, or it was kept back after them), by when it last changed, so the reconciler refunds it
# (core.refund_service.KeptBackSweep). Only an order an appeasement left short of a return's worth
# while a parcel was still to be captured gets there, and the check reads the order in memory: the
# typical order writes no entry. So is an order whose returns owe showing what a refund the gateway
# answered gave back (Order.returns_to_show: the function that recorded it died before showing it),
# for the same pass to show it, and one a cancel of units left owing money back that its function
# died before giving (Order.settlement_owed), for the same pass to give it, or before releasing
# the units it freed (Order.stock_owed), for the same pass to release them. An order with a refund
# pending (this one's too), a settlement capture requested or an authorization left is in their
# partition first, then moves here.
KEPT_BACK_KEY = "kept_back"
# Its last partition, CARRIER_WORK_KEY, holds the orders that owe a carrier something (a parcel due
# a new label, a given-up booking to cancel: Order.owes_carrier_work) by when they last changed: the
# reconciler finishes that work (core.carrier_bookings.CarrierWorkSweep). Rare, and never on an
# order nothing cancelled or booked again: the typical order writes no entry. An order with a
# refund pending too stays in the refunds' partition until its refund is done, then moves here.
CARRIER_WORK_KEY = "carrier"
# And BACKORDER_FILLED_KEY: a backordered order with every unit reserved (Order.backorder_filled),
# by when it last changed, waiting only for the execution its last fill started to allocate it;
# should that execution die, the reconciler restarts it, then parks it (core.reconciliation). The
# fill that completes it adds the entry and its allocation removes it (two index writes per
# backordered order, none for the typical order, never backordered): the reconciler reads only
# these, never the backordered orders still waiting for stock. One that owes any of the work above
# is under its partition until that is done, then here.
BACKORDER_FILLED_KEY = "backorder_filled"
# The sparse `by_pickup_deadline` index holds the orders a scheduled expiry may cancel, each
# partition by the moment its expiry counts from, so each expiry's query reads exactly the orders
# it may expire and none twice: PICKUP_PK, an order with a pickup waiting at its store, by its
# earliest `collect_by` (the pickup expiry, core/pickups.py); HELD_PK, an order on hold, by when
# its hold began, in the same `collect_by` (the jeopardy scan's hold expiry: Order.
# hold_expiry_counts_from). A park (Order.park), as an order held to confirm whether its parcel
# left (Order.hold_unfinished_ships), is never expired and has no entry (Hold.parked), nor has a
# held order a ship of which died after asking for its capture, until the sweep parks it, nor one whose
# carrier scanned a pending parcel delivered before its ship (Order.parcels_scanned). The two never
# meet: a held order's pickup waits (Order.pickup_deadline). Only held orders and waiting pickups
# are in it: the typical order writes no entry.
PICKUP_PK = "ready_for_pickup"
HELD_PK = "on_hold"
# Its third partition, SHIPS_TO_CONFIRM_PK: an order held while a person is to confirm whether a
# parcel left after its ship died (Order.ships_to_confirm_since), by when its hold began, which
# the jeopardy scan counts each run for ShipsToConfirmAlarm (DynamoLateOrders.count_ships_to_confirm).
# Such an order is never in HELD_PK (its hold is a park, or waits for the sweep): only those rare
# holds have an entry.
SHIPS_TO_CONFIRM_PK = "ships_to_confirm"
# The sparse `by_pickup_location` index is a store's pickup list (GET /orders?pickup_location_id=):
# `pickup_location`, the store, on a pickup order only while the store has work on it (Order.
# open_at_store: from its placement until it is collected or ends), by when it was placed. Neither
# key changes meanwhile, so a pickup order writes one entry when placed and removes it at its end
# (its status changes in between rewrite nothing: the index projects only the immutable channel and
# customer, for the list's filters); an order shipped home never has one.
PICKUP_LOCATION = "pickup_location"
INDEX_ATTRIBUTES = (
    "status_key", "status_since", "sla_key", "sla_at", "refund_key", "refund_since", "pickup_pk", "collect_by",
    PICKUP_LOCATION,
)  # fmt: skip


def index_attributes(order: Order, *, authorizations_set_aside: bool = False) -> dict[str, dict[str, str]]:
    """The sparse indexes' attributes as the order should have them (by_status_key's, by_sla's,
    by_pending_refund's, by_pickup_deadline's and by_pickup_location's); one of INDEX_ATTRIBUTES
    missing from the answer is one the order must not have.
    `authorizations_set_aside`: as if it held no authorization left (UnsettledAuthorizations.set_aside)."""
    attributes: dict[str, dict[str, str]] = {}
    if order.status in INDEXED_STATUSES:
        attributes["status_key"] = {"S": status_key(order.status)}
    since = order.deadline_counts_from
    # Not on an unmarked pending or authorized order: the workflow partition's entry would be
    # rewritten at the authorization, and the scan reads those orders by when they were placed.
    watched = order.status in WATCHED and order.status not in IN_WORKFLOW
    if (watched or order.jeopardy is not None) and since is not None:
        attributes["status_since"] = {"S": timestamp(since)}
    if order.listed_late:
        # Marked, but unmarked here while a ship (or collect) asks its capture: the scan reads it
        # again (core.jeopardy), should that ship die with the money taken and nobody repeat it.
        # One the scan marked for a person with a request standing whose refund the gateway
        # refused is listed (Order.listed_late) until it changes.
        attributes["sla_key"] = {"S": JEOPARDY_KEY}
        attributes["sla_at"] = {"S": timestamp(order.created_at)}
    elif order.read_by_scan:
        # A partly shipped order the scan read with no capture request standing: by_status_key's
        # query leaves it out until a ship asks one (no `sla_at`: no by_sla entry, never listed).
        attributes["sla_key"] = {"S": READ_KEY}
    pending = [refund.at for refund in order.payment.refunds if refund.status == RefundStatus.PENDING]
    if pending:
        attributes["refund_key"] = {"S": PENDING_REFUND_KEY}
        attributes["refund_since"] = {"S": timestamp(min(pending))}
    elif order.capture_request(None) is not None:
        attributes["refund_key"] = {"S": SETTLEMENT_CAPTURE_KEY}
        attributes["refund_since"] = {"S": timestamp(order.last_changed)}
    elif order.authorizations_left and not authorizations_set_aside:
        attributes["refund_key"] = {"S": UNSETTLED_AUTHORIZATION_KEY}
        attributes["refund_since"] = {"S": timestamp(order.last_changed)}
    elif (
        owes_kept_back(order) or order.returns_to_show or order.settlement_owed or order.stock_owed
        or order.reported_to_finish()
    ):  # fmt: skip
        # The kept-back pass finishes what a function died before finishing: a parcel a carrier
        # reported delivered among it (never marked on the typical order: no entry).
        attributes["refund_key"] = {"S": KEPT_BACK_KEY}
        attributes["refund_since"] = {"S": timestamp(order.last_changed)}
    elif order.owes_carrier_work():
        attributes["refund_key"] = {"S": CARRIER_WORK_KEY}
        attributes["refund_since"] = {"S": timestamp(order.updated_at)}
    elif order.backorder_filled():
        attributes["refund_key"] = {"S": BACKORDER_FILLED_KEY}
        attributes["refund_since"] = {"S": timestamp(order.last_changed)}
    collect_by = order.pickup_deadline()
    held_since = order.hold_expiry_counts_from
    if collect_by is not None:
        attributes["pickup_pk"] = {"S": PICKUP_PK}
        attributes["collect_by"] = {"S": timestamp(collect_by)}
    elif held_since is not None:
        attributes["pickup_pk"] = {"S": HELD_PK}
        attributes["collect_by"] = {"S": timestamp(held_since)}
    elif (confirm_since := order.ships_to_confirm_since) is not None:
        attributes["pickup_pk"] = {"S": SHIPS_TO_CONFIRM_PK}
        attributes["collect_by"] = {"S": timestamp(confirm_since)}
    if (store := order.open_at_store) is not None:
        attributes[PICKUP_LOCATION] = {"S": store}
    return attributes


def _document(order: Order) -> dict[str, Any]:
    # Compressed, because every write is billed per started KB of the whole item and the item
    # is rewritten on each status change: with order_codec's dictionary an order's JSON (~2 KB
    # delivered) stores in ~370 bytes (~760 by zlib alone). A binary attribute counts its bytes
    # as they are, so no base64 is needed.
    return {"B": order_codec.compress(order.stored_json().encode())}


def _order(item: dict[str, Any]) -> Order:
    # Also reads what was stored before: plain JSON strings, and zlib without a dictionary, and an
    # order re-booked before it kept its booking keys (named by its labels' keys).
    order = Order.model_validate_json(order_codec.stored_json(item["doc"]))
    return with_booking_keys_from_labels(order) if order.rebookings else order


def _entries(entries: Iterable[HistoryEntry]) -> dict[str, Any]:
    """History entries as the item's `history` list holds them: each compressed on its own (the
    list only grows by list_append, never rewritten), ~70-110 bytes where its JSON is 190-370."""
    return {"L": [{"B": order_codec.compress(entry.model_dump_json(exclude_none=True).encode())} for entry in entries]}


def _history(stored: list[dict[str, Any]]) -> list[HistoryEntry]:
    # Entries stored before compression are JSON strings; a list may hold both kinds.
    return [HistoryEntry.model_validate_json(order_codec.stored_json(entry)) for entry in stored]


# An order's history is bounded in its item: past HISTORY_KEPT_BYTES of stored entries, a write
# moves all but the first (the order's `created` entry, which the outbox reads from the stream's
# images and add's retry compares) to a page of the Catalog table, so the item (DynamoDB refuses
# one over 400 KB, and bills each write by the whole item's size, 1 WCU per started KB) stays
# under ~34 KB plus its document whatever happens to the order. 32 KB is ~300 typical entries
# (70-110 bytes each): an order that never reaches it is written exactly as before.
HISTORY_KEPT_BYTES = 32 * 1024
# Pages: pk ORDERHISTORY#<order id>, sk the number of entries moved before it (zero-padded, so
# they sort in order), `entries` the stored entries as the item held them. No stream filter of the
# Catalog table passes them (template.yaml: SourcingRulesStream, ImportsStream).
HISTORY_PAGE_PK = "ORDERHISTORY#"
HISTORY_MOVED = "history_moved"  # on the item: how many entries its pages hold (absent: none)


def _stored_bytes(stored: list[dict[str, Any]]) -> int:
    return sum(len(entry["B"]) if "B" in entry else len(entry["S"].encode()) for entry in stored)


def _moved(item: dict[str, Any]) -> int:
    return int(item[HISTORY_MOVED]["N"]) if HISTORY_MOVED in item else 0


def _moved_condition(moved: int, values: dict[str, Any]) -> str:
    """The condition that the item's pages hold `moved` entries (none: never moved)."""
    if not moved:
        return f"attribute_not_exists({HISTORY_MOVED})"
    values[":history_moved"] = {"N": str(moved)}
    return f"{HISTORY_MOVED} = :history_moved"


def order_update(
    table: str, order: Order, expected: Order, entries: list[HistoryEntry], history_length: int | None = None,
    moved: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The UpdateItem that stores `order` over `expected` (its status and version unchanged since
    read; given `history_length`, its history that many entries long, `moved` of them in pages) and
    appends `entries`: on its own, or as one item of a transaction (DynamoBackorders). It keeps the
    sparse indexes' attributes in step with the order (index_attributes)."""
    values: dict[str, Any] = {
        ":doc": _document(order),
        ":status": {"S": order.status.value},
        ":version": {"N": str(order.version)},
        ":entries": _entries(entries),
        ":expected_status": {"S": expected.status.value},
        ":expected_version": {"N": str(expected.version)},
    }
    sets = ["#doc = :doc", "#status = :status", "#version = :version", "history = list_append(history, :entries)"]
    indexed = index_attributes(order)
    for name, value in indexed.items():
        sets.append(f"{name} = :{name}")
        values[f":{name}"] = value
    removed = [name for name in INDEX_ATTRIBUTES if name not in indexed]
    condition = "#status = :expected_status AND #version = :expected_version"
    if history_length is not None:
        condition += f" AND size(history) = :history_length AND {_moved_condition(moved, values)}"
        values[":history_length"] = {"N": str(history_length - moved)}
    if order.version == expected.version and entries:
        # A history-only write leaves the version as it was, so a retry of it (botocore's, after
        # an answer lost on its way back) would meet its condition again and append its entries
        # twice: it holds only while the item lacks one of them (written_by recognises it).
        appended = values[":entries"]["L"]
        values.update({f":appended{n}": entry for n, entry in enumerate(appended)})
        condition += " AND NOT (" + " AND ".join(f"contains(history, :appended{n})" for n in range(len(appended))) + ")"
    return {
        "TableName": table,
        "Key": {"id": {"S": order.id}},
        "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removed) if removed else ""),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {"#doc": "doc", "#status": "status", "#version": "version"},
        "ExpressionAttributeValues": values,
    }


def _stock_moved(
    table: str, sku: str, location_id: str, moves: list[StockMove], shelf: tuple[int, str | None] | None = None
) -> dict[str, Any]:
    """One Update of a stock item for all its moves (a transaction may name an item once), each
    conditional on its reservation holding exactly its `held` units: released or shrunk units go
    back to available (the filler's `arrived` marker set, as DynamoInventory.release sets it),
    shipped ones leave on_hand (the markers removed, as DynamoInventory.ship does, unless units
    were freed with them), as DynamoInventory.ship decides, on the `shelf` as read (on_hand and
    when it was last counted, COUNTED_AT: needed when units ship): when on_hand holds fewer than
    leave (a stock take recorded short since), or a stock take was recorded after the parcels were
    handed over (their moves' `handed_at`, the latest, when every one is known: it counted the
    shelf without them), the count stands and they go back to available instead; conditional on
    on_hand and that count still deciding it so."""
    freed = sum(m.held - m.keep for m in moves)
    shipped = sum(m.keep for m in moves if m.ships)
    names: dict[str, str] = {}
    values: dict[str, Any] = {":gone": freed + shipped, ":freed": freed, ":shipped": shipped}
    sets = ["reserved = reserved - :gone", "available = available + :freed", "on_hand = on_hand - :shipped"]
    removes, conditions = [], []
    if shipped:
        if shelf is None:
            raise ValueError("units that ship need the stock item's on_hand as read")
        on_hand, counted_at = shelf
        times = [m.handed_at for m in moves if m.ships]
        handed = timestamp(max(t for t in times if t is not None)) if None not in times else None
        leaves, counted_out = "on_hand >= :shipped", "on_hand < :shipped"
        if handed is not None:
            values[":handed"] = handed
            leaves += f" AND (attribute_not_exists({COUNTED_AT}) OR {COUNTED_AT} <= :handed)"
            counted_out = f"({counted_out} OR {COUNTED_AT} > :handed)"
        if on_hand >= shipped and (handed is None or counted_at is None or counted_at <= handed):
            conditions.append(leaves)
        else:  # counted after the parcels left: the count stands
            conditions.append(counted_out)
            sets[1:] = ["available = available + :gone"]
            del values[":freed"]
            freed += shipped  # back to available: an arrival as far as the filter knows
    for n, move in enumerate(moves):
        names[f"#k{n}"] = move.key
        values[f":h{n}"] = move.held
        conditions.append(f"reservations.#k{n} = :h{n}")
        if move.keep and not move.ships:
            values[f":k{n}"] = move.keep
            sets.append(f"reservations.#k{n} = :k{n}")
        else:
            removes.append(f"reservations.#k{n}")
    if freed:
        sets.append(f"{ARRIVED} = :arrived")
        values[":arrived"] = True
    else:
        removes += [ARRIVED, WITHDRAWN]
    return {
        "Update": {
            "TableName": table,
            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
            "UpdateExpression": f"SET {', '.join(sets)}" + (f" REMOVE {', '.join(removes)}" if removes else ""),
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }
    }


# TransactWriteItems holds up to 100 items: the order's (its write or its check) and 99 stock items.
TRANSACTION_ITEMS = 100


def written_by(error: ClientError, update: dict[str, Any]) -> dict[str, Any] | None:
    """The item a failed order_update (sent with ReturnValuesOnConditionCheckFailure ALL_OLD) found,
    if that item holds what `update` writes: its version, its document (the very bytes: the same
    request) and every entry it appends. So botocore's retry of an update whose first attempt
    landed but whose answer was lost is that write, not a lost race (which the caller would decide
    again on the order it wrote: a hold refused as already held) nor, for a history-only write, a
    second copy of its entries. None otherwise (another write landed: StaleVersion)."""
    found = error.response.get("Item")
    values = update["ExpressionAttributeValues"]
    if not found or found.get("version") != values[":version"] or found.get("doc") != values[":doc"]:
        return None
    history = found.get("history", {}).get("L", [])
    return found if all(entry in history for entry in values[":entries"]["L"]) else None


def _written_by(error: ClientError, item: dict[str, Any]) -> bool:
    """Whether the item a failed `attribute_not_exists` put found is `item` itself."""
    found = error.response.get("Item") or {}
    first = (found.get("history") or {}).get("L", [None])[:1]
    # Only what no later write changes: the workflow may have moved the order on already.
    return found.get("created_at") == item["created_at"] and first == item["history"]["L"][:1]


def bound_history(client: Any, table: str, history_table: str | None, order_id: str, item: dict[str, Any]) -> None:
    """Past HISTORY_KEPT_BYTES, the item's entries but its first move to a page, in one
    transaction conditional on the item's history being what `item` holds (its length and how
    many entries its pages hold) and on its version: a write landing first makes the move give
    way (the next write moves), one landing after appends to what the item kept. The move
    leaves `doc`, `status` and `version` as they are: the stream's record of it is no event."""
    stored = item["history"]["L"]
    if history_table is None or len(stored) < 2 or _stored_bytes(stored) <= HISTORY_KEPT_BYTES:
        return
    moved = _moved(item)
    values: dict[str, Any] = {
        ":kept": {"L": stored[:1]}, ":now_moved": {"N": str(moved + len(stored) - 1)},
        ":length": {"N": str(len(stored))}, ":version": item["version"],
    }  # fmt: skip
    condition = f"size(history) = :length AND #version = :version AND {_moved_condition(moved, values)}"
    page = {
        "pk": {"S": HISTORY_PAGE_PK + order_id}, "sk": {"S": f"{moved:010d}"}, "entries": {"L": stored[1:]},
    }  # fmt: skip
    try:
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": history_table, "Item": page, "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Update": {
                    "TableName": table, "Key": {"id": {"S": order_id}},
                    "UpdateExpression": f"SET history = :kept, {HISTORY_MOVED} = :now_moved",
                    "ConditionExpression": condition, "ExpressionAttributeNames": {"#version": "version"},
                    "ExpressionAttributeValues": values,
                }},
            ]
        )  # fmt: skip
    except ClientError as error:
        if cancellation_reasons(error) is not None:
            return  # another write or move landed first: the order's next write moves what it holds then
        if not dependency_down(error):
            raise
        # The write before it landed: answered as failed, its caller would decide it again on the
        # order it wrote (or a client be told 5xx for a change made). The next write moves.
        logger.warning(
            "history not moved", extra={"order_id": order_id, "error": error.response.get("Error", {}).get("Code")}
        )


def bound_history_written(client: Any, table: str, history_table: str | None, order_id: str) -> None:
    """bound_history after a transaction wrote the order (TransactWriteItems answers no item, as
    UpdateItem's ALL_NEW does): its history read back first, consistently, so a move is decided on
    what the write left. A transaction is the order's write in a backorder's fill (and a send-back
    to be sourced whole) and a cancel of units' stock step; without this, the next write to move its
    history could be a long way off."""
    if history_table is None:
        return
    try:
        found = client.get_item(
            TableName=table, Key={"id": {"S": order_id}}, ProjectionExpression=f"history, version, {HISTORY_MOVED}",
            ConsistentRead=True,
        ).get("Item")  # fmt: skip
    except ClientError as error:
        if not dependency_down(error):
            raise
        logger.warning("history not read to move", extra={"order_id": order_id})  # the write landed, as above
        return
    if found is not None:
        bound_history(client, table, history_table, order_id, found)


class DynamoOrders(OrderRepository):
    """One item per order. The order itself is one JSON document attribute (`doc`, exact decimal
    strings for money, compressed in a binary by order_codec) beside the attributes that keys,
    indexes, conditions and stream filters need (status, version, channel, customer_id,
    created_at); `history` is a list of JSON entries, each compressed the same way, that only
    ever grows with list_append (its oldest move to pages past HISTORY_KEPT_BYTES). A document
    attribute is what the item is always read and written as, so nested maps would only add
    cost: measured under moto, an order of nested maps puts at ~560/s and reads at ~220/s, the
    same order as a document at ~1,150/s and ~980/s."""

    def __init__(self, client: Any, table: str, inventory_table: str | None = None, history_table: str | None = None):
        self._client = client
        self._table = table
        self._inventory_table = inventory_table  # where update_with_stock moves stock
        self._history_table = history_table  # the Catalog table: where a long history's pages go

    def add(
        self, order: Order, first_entry: HistoryEntry, payment_token: str, later_entries: Sequence[HistoryEntry] = ()
    ) -> None:
        item = {
            "id": {"S": order.id},
            "status": {"S": order.status.value},
            "version": {"N": str(order.version)},
            "channel": {"S": order.channel},
            "customer_id": {"S": order.customer.id},
            "created_at": {"S": timestamp(order.created_at)},
            "list_pk": {"S": LIST_PK},
            "payment_token": {"S": payment_token},
            "doc": _document(order),
            **index_attributes(order),
            "history": _entries((first_entry, *later_entries)),
        }
        try:
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            if _written_by(error, item):
                # botocore retried a put whose first attempt succeeded but timed out on the way
                # back: the item is this very write (the same creation time and first history
                # entry), not another request's order, which would be a 409 for our own order.
                return
            raise DuplicateOrder(order.id) from None

    def update(
        self, order: Order, expected: Order, entries: list[HistoryEntry], *, history_length: int | None = None
    ) -> None:
        check_successor(expected, order)
        moved = 0
        while True:
            update = order_update(self._table, order, expected, entries, history_length, moved)
            try:
                written = self._client.update_item(
                    **update, ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD"
                )["Attributes"]
                break
            except ClientError as error:
                if not _is_conditional_failure(error):
                    raise
                if (found := written_by(error, update)) is not None:
                    written = found  # botocore's retry of this very write, whose answer was lost
                    break
                # A history of `history_length` entries may be one whose oldest moved to pages
                # (the condition names how many): asked again with as many as the item says.
                if history_length is None or (now := self._moved_now(order.id)) == moved:
                    raise StaleVersion(
                        f"order {order.id} is no longer {expected.status} at version {expected.version}"
                    ) from None
                moved = now
        self._bound_history(order.id, written)

    def _moved_now(self, order_id: str) -> int:
        item = self._get(order_id, HISTORY_MOVED, consistent=True)
        return _moved(item) if item else 0

    def _bound_history(self, order_id: str, item: dict[str, Any]) -> None:
        bound_history(self._client, self._table, self._history_table, order_id, item)

    def _bound_history_written(self, order_id: str) -> None:
        bound_history_written(self._client, self._table, self._history_table, order_id)

    def _pages_query(self, order_id: str) -> dict[str, Any]:
        """The Query of an item's pages (never changed once written, but read consistently: the
        item may name one just written)."""
        if self._history_table is None:
            raise ValueError(
                f"order {order_id} has history pages in the Catalog table: DynamoOrders(..., history_table=<its name>)"
                " (python -m infra.backfill_orders --catalog-table)"
            )
        return {
            "TableName": self._history_table, "KeyConditionExpression": "pk = :pk", "ConsistentRead": True,
            "ExpressionAttributeValues": {":pk": {"S": HISTORY_PAGE_PK + order_id}},
        }  # fmt: skip

    def _pages(self, order_id: str, moved: int) -> list[dict[str, Any]]:
        """The stored entries an item's pages hold, oldest first: `moved` of them."""
        query = self._pages_query(order_id)
        stored: list[dict[str, Any]] = []
        while True:
            response = self._client.query(**query)
            for page in response.get("Items", []):
                if int(page["sk"]["S"]) < moved:
                    stored += page["entries"]["L"]
            if "LastEvaluatedKey" not in response:
                return stored
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _pages_between(self, order_id: str, first: int, stop: int) -> list[dict[str, Any]]:
        """The stored entries `first` up to `stop` of those an item's pages hold (numbered from 0,
        oldest first; `stop` at most how many they hold): the page holding the last of them, then
        each before it back to the one holding `first`, one page a call (a page is ~32 KB of
        typical entries, ~300: one or two hold a page of the history)."""
        query = self._pages_query(order_id)
        query["KeyConditionExpression"] += " AND sk <= :last"
        query["ExpressionAttributeValues"][":last"] = {"S": f"{stop - 1:010d}"}
        query.update(ScanIndexForward=False, Limit=1)
        held: list[list[dict[str, Any]]] = []  # the pages read, newest first
        # Short of them, the item counts entries no page holds: never so (a move is one transaction).
        missing = ValueError(f"order {order_id}'s history pages hold no entries {first} to {stop - 1}")
        while True:
            response = self._client.query(**query)
            for page in response.get("Items", []):
                held.append(page["entries"]["L"])
                if (start := int(page["sk"]["S"])) <= first:
                    stored = [entry for entries in reversed(held) for entry in entries][first - start : stop - start]
                    if len(stored) != stop - first:
                        raise missing
                    return stored
            if "LastEvaluatedKey" not in response:
                raise missing
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def update_with_stock(
        self, order: Order | None, expected: Order, entries: list[HistoryEntry], moves: Sequence[StockMove]
    ) -> None:
        """TransactWriteItems over the Orders and Inventory tables (IAM authorizes its items as
        UpdateItem on each, and the order's check as ConditionCheckItem): the order's UpdateItem
        (order_update) or, with no `order`, a ConditionCheck of its status and version, then one
        Update per stock item moved. With no stock item to move, the order's write alone is a plain
        UpdateItem (update). Over 99 stock items, the transactions go 99 at a time, the order
        checked in each and written with the last (the port's contract)."""
        if order is not None:
            check_successor(expected, order)
        by_item: dict[tuple[str, str], list[StockMove]] = defaultdict(list)
        for move in moves:
            by_item[(move.sku, move.location_id)].append(move)
        if not by_item:
            if order is not None:
                self.update(order, expected, entries)
            return
        inventory = self._inventory_table
        if inventory is None:
            raise ValueError("stock moves need the Inventory table: DynamoOrders(client, table, inventory_table)")
        shelves = self._shelves(inventory, [item for item, group in by_item.items() if any(m.ships for m in group)])
        stock = [_stock_moved(inventory, *item, group, shelves.get(item)) for item, group in sorted(by_item.items())]
        room = TRANSACTION_ITEMS - 1
        for start in range(0, len(stock), room):
            last = start + room >= len(stock)
            head = (
                {"Update": order_update(self._table, order, expected, entries)}
                if last and order is not None
                else self._order_check(self._table, expected)
            )
            self._transact(expected, [head, *stock[start : start + room]])
        if order is not None:
            self._bound_history_written(order.id)

    def _shelves(self, table: str, items: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str | None]]:
        """on_hand of the stock items `items` (sku, location_id) and when each was last counted
        (COUNTED_AT, None if never), read consistently: where units ship (written-off parcels'
        only: rare), _stock_moved decides on them."""
        keys = [{"sku": {"S": sku}, "location_id": {"S": location_id}} for sku, location_id in sorted(items)]
        read = f"sku, location_id, on_hand, {COUNTED_AT}"
        found = batch_get(self._client, table, keys, read, consistent=True) if keys else []
        values = [from_item(item) for item in found]
        return {
            (item["sku"], item["location_id"]): (int(item.get("on_hand", 0)), item.get(COUNTED_AT)) for item in values
        }

    @staticmethod
    def _order_check(table: str, expected: Order) -> dict[str, Any]:
        """A transaction's ConditionCheck that the stored order still has `expected`'s status and version."""
        return order_check(table, expected.id, expected.status, expected.version)

    def _transact(self, expected: Order, items: list[dict[str, Any]]) -> None:
        """One transaction whose first item is the order's: a cancellation on its condition (or a
        transaction in progress on it) is StaleVersion, on a stock item's ReservationsChanged."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = cancellation_reasons(error)
            if reasons is None:
                raise
            refused = ("ConditionalCheckFailed", "TransactionConflict")
            if reasons[:1] and reasons[0] in refused:
                raise StaleVersion(
                    f"order {expected.id} is no longer {expected.status} at version {expected.version}"
                ) from None
            if any(reason in refused for reason in reasons[1:]):
                raise ReservationsChanged(f"a reservation of order {expected.id} changed since it was read") from None
            raise

    def get_with_token(self, order_id: str, *, consistent: bool = False) -> tuple[Order, str] | None:
        item = self._get(order_id, "doc, payment_token", consistent)
        if item is None:
            return None
        return _order(item), item.get("payment_token", {}).get("S", "")

    def _get(self, order_id: str, attributes: str, consistent: bool = False) -> dict[str, Any] | None:
        response = self._client.get_item(
            TableName=self._table, Key={"id": {"S": order_id}}, ProjectionExpression=attributes,
            ConsistentRead=consistent,
        )  # fmt: skip
        return response.get("Item")

    def get(self, order_id: str, *, consistent: bool = False) -> Order | None:
        item = self._get(order_id, "doc", consistent)
        return _order(item) if item else None

    def get_many(self, order_ids: Sequence[str]) -> dict[str, Order]:
        keys = [{"id": {"S": order_id}} for order_id in dict.fromkeys(order_ids)]  # a batch names a key once
        orders = (_order(item) for item in batch_get(self._client, self._table, keys, "doc", consistent=True))
        return {order.id: order for order in orders}

    def history(self, order_id: str, *, consistent: bool = False) -> tuple[Order, list[HistoryEntry]] | None:
        item = self._get(order_id, f"doc, history, {HISTORY_MOVED}", consistent)
        if item is None:
            return None
        stored = item["history"]["L"]
        if moved := _moved(item):
            stored = stored[:1] + self._pages(order_id, moved) + stored[1:]
        return _order(item), _history(stored)

    def history_range(
        self, order_id: str, start: int, stop: int, *, consistent: bool = False
    ) -> tuple[Order, list[HistoryEntry], int] | None:
        """As the port says, reading the item (its first entry and its live tail) and, of its
        pages, only those holding the range (_pages_between): not the whole history for a page of it."""
        item = self._get(order_id, f"doc, history, {HISTORY_MOVED}", consistent)
        if item is None:
            return None
        stored, moved = item["history"]["L"], _moved(item)
        length = len(stored) + moved
        start, stop = max(start, 0), min(stop, length)
        # Place 0 is the item's first entry, 1 to `moved` its pages' (entries 0 to moved - 1), and
        # each place after them the item's entry `place - moved`.
        picked = stored[:1] if start == 0 < stop else []
        if (first := max(start, 1)) < (last := min(stop, moved + 1)):
            picked += self._pages_between(order_id, first - 1, last - 1)
        if (first := max(start, moved + 1)) < stop:
            picked += stored[first - moved : stop - moved]
        return _order(item), _history(picked), length

    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        index, key_value, filters = self._plan(where)
        (key_attribute,) = _INDEXES[index]
        names = {"#k": key_attribute}
        values: dict[str, Any] = {":k": {"S": key_value}}
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k",
            "ScanIndexForward": False,
        }
        # The indexes carry keys and the immutable channel, never the status (a status change
        # would rewrite their entries): a status filter is applied to the orders read back, after
        # the page is cut at `limit`, exactly where DynamoDB's FilterExpression would apply it.
        status = filters.pop("status", None)
        conditions = []
        # A channel's list filters the entries it reads itself (_one_channels_entries).
        for i, (attribute, value) in enumerate(filters.items() if "channel" not in filters else ()):
            names[f"#f{i}"] = attribute
            values[f":f{i}"] = {"S": value}
            conditions.append(f"#f{i} = :f{i}")
        if conditions:
            query["FilterExpression"] = " AND ".join(conditions)
        query["ExpressionAttributeNames"] = names
        query["ExpressionAttributeValues"] = values
        # A cursor is bound to the whole filter, not just the index it walks (a store's late
        # pickups are the store's list filtered after the read, as a status is).
        bound = {**filters, "status": status} if status else filters
        if where.jeopardy and index != "by_sla":
            bound = {**bound, "jeopardy": "true"}
        scope = "&".join([index, *(f"{k}={v}" for k, v in sorted(bound.items()))])
        sort_key = _SORT_KEYS.get(index, "created_at")
        key_names = {"id", sort_key, key_attribute}
        if cursor is not None:
            try:
                query["ExclusiveStartKey"] = decode_cursor(cursor, scope, key_names)
            except InvalidCursor:
                if "channel" not in filters:
                    raise
                # A channel's page that stopped at its read budget: on below where it stopped.
                below = decode_cursor(cursor, scope, key_names - {"id"}, {key_attribute: key_value})
                query["KeyConditionExpression"] += " AND #s < :below"
                names["#s"], values[":below"] = sort_key, below[sort_key]
            else:
                if query["ExclusiveStartKey"][key_attribute]["S"] != key_value:
                    raise InvalidCursor()
        if "channel" in filters:
            entries, last = self._one_channels_entries(query, limit, filters, key_names, sort_key)
        else:
            entries, last = query_page(self._client, query, limit, key_names)
        ids = [item["id"]["S"] for item in entries]
        keys = [{"id": {"S": i}} for i in ids]
        # Read consistently: an index entry is written after the order it lists, so an eventually
        # consistent read could miss an order the page names (left out while the cursor moves
        # past it) or show it as it was before the change that indexed it.
        found = {
            item["id"]["S"]: item for item in batch_get(self._client, self._table, keys, "id, doc", consistent=True)
        }
        orders = [_order(found[i]) for i in ids if i in found]
        # The whole filter checked on every order read back, whichever index found it: a global
        # secondary index is eventually consistent, so for a moment the status, late or store index
        # still lists an order that has left that status, lost its mark or ended at its store.
        orders = [order for order in orders if where.admits(order)]
        return orders, encode_cursor(scope, last) if last else None

    def _one_channels_entries(
        self, query: dict[str, Any], limit: int, filters: dict[str, str], key_names: set[str], sort_key: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to `limit` entries of one channel from an index of every channel's orders (a
        customer's, the late ones), and where the next page starts when more follow. Filtered after
        DynamoDB cut the page, LastEvaluatedKey could name another channel's order, and a cursor
        made of it handed that order's id to a channel key: entries are read on past other
        channels' orders, and the cursor names the last order shown. After CHANNEL_LIST_READS
        entries the page ends where it is, between two sort keys, and its cursor holds the index
        key and the sort key below which the rest lie: no order's id. Filtered here, not by a
        FilterExpression, to see where that boundary is; Limit starts at one page and grows, so a
        list mostly of its channel reads what it did before and one of others few queries."""
        found: list[dict[str, Any]] = []
        read, size = 0, limit + 1
        while True:
            response = self._client.query(**query, Limit=max(2, min(size, CHANNEL_LIST_READS + 1 - read)))
            items = response.get("Items", [])
            for position, item in enumerate(items):
                if all(item.get(name) == {"S": value} for name, value in filters.items()):
                    if len(found) == limit:
                        return found, {name: found[-1][name] for name in key_names}
                    found.append(item)
                read += 1
                after = items[position + 1] if position + 1 < len(items) else None
                if read >= CHANNEL_LIST_READS and after is not None and after[sort_key]["S"] < item[sort_key]["S"]:
                    return found, {name: item[name] for name in key_names - {"id"}}
            if "LastEvaluatedKey" not in response:
                return found, None
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
            size *= 8

    @staticmethod
    def _plan(where: OrderFilter) -> tuple[str, str, dict[str, str]]:
        status = where.status.value if where.status else None
        if where.pickup_location_id is not None:
            # A store's pickup list: the sparse by_pickup_location index's partition of that store
            # (its open pickups only: a few days' worth), which projects the channel and the
            # customer for the other filters; a status, and the late mark, are judged on the
            # orders read back.
            filters = (("customer_id", where.customer_id), ("channel", where.channel), ("status", status))
            return "by_pickup_location", where.pickup_location_id, {k: v for k, v in filters if v}
        if where.jeopardy:
            # The late orders' partition of the sparse by_sla index (newest placed first), which
            # projects the channel and the customer for the other filters.
            filters = (("customer_id", where.customer_id), ("channel", where.channel), ("status", status))
            return "by_sla", JEOPARDY_KEY, {k: v for k, v in filters if v}
        if where.customer_id:
            filters = {k: v for k, v in (("channel", where.channel), ("status", status)) if v}
            return "by_customer", where.customer_id, filters
        if where.channel:
            # A channel's orders of one status: the channel index, filtered (pages may come
            # back shorter than `limit`; the cursor carries on). A status-keyed index per channel
            # would cost two more index writes on every status change.
            return "by_channel", where.channel, {"status": status} if status else {}
        if status and OrderStatus(status) in INDEXED_STATUSES:
            # The orders read back are filtered by status (list), so an authorized order's list
            # reads the workflow partition and shows only those; its cursor is bound to the status.
            # (One the release before stored in STORED_AUTHORIZED shows once its next write moves it.)
            partition = status_key(OrderStatus(status))
            return "by_status_key", partition, {} if partition == status else {"status": status}
        # Shipped, delivered and returned orders are not in the sparse status index: all orders,
        # newest first, filtered after the read (pages may come back shorter than `limit`).
        return "by_created", LIST_PK, {"status": status} if status else {}


# --- Returns ---------------------------------------------------------------------------------

_RETURN_INDEXES = {"by_channel": "channel", "by_status": "status", "by_created": "list_pk"}
RETURN_LIST_PK = "return"
# The by_receipt index is sparse: only a `received` return carries its key (RECEIPT_KEY, with its
# created_at), from each write of it, and the returns reconciler removes it from one left to a
# person (DynamoReceivedReturns.set_aside) until the return's next write: the reconciler's query
# reads received returns a workflow may still be owed for, not every one waiting for a person.
RECEIPT_KEY = "received"
# The partition of by_receipt a return waiting for a payment plugin is set aside to, by its method
# (DynamoReceivedReturns.set_aside's `waiting_for`): read only while a plugin takes that method.
WAITING_KEY_PREFIX = "waits_for_plugin#"


def _return(item: dict[str, Any]) -> Return:
    from core.return_models import Return  # here: the returns' models stay out of a new API container

    return Return.model_validate_json(item["doc"]["S"])


class DynamoReturns(ReturnRepository):
    """One item per return: its JSON document (`doc`) beside the attributes that keys, indexes and
    conditions need. Indexes hold keys only (as the orders' do), so a status change rewrites small
    index entries, never copies of the return; lists read the returns back with BatchGetItem."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def add(self, item: Return) -> None:
        record = {
            "id": {"S": item.id},
            "order_id": {"S": item.order_id},
            "channel": {"S": item.channel},
            "status": {"S": item.status.value},
            "version": {"N": str(item.version)},
            "ordinal": {"N": str(item.ordinal)},
            "created_at": {"S": timestamp(item.created_at)},
            "list_pk": {"S": RETURN_LIST_PK},
            "doc": {"S": item.stored_json()},
        }
        if item.status is ReturnStatus.RECEIVED:
            record["receipt_key"] = {"S": RECEIPT_KEY}
        try:
            self._client.put_item(TableName=self._table, Item=record, ConditionExpression="attribute_not_exists(id)")
        except ClientError as error:
            if _is_conditional_failure(error):
                raise StaleVersion(f"return {item.id} exists") from None
            raise

    def get(self, return_id: str, *, consistent: bool = False) -> Return | None:
        response = self._client.get_item(
            TableName=self._table, Key={"id": {"S": return_id}}, ProjectionExpression="doc", ConsistentRead=consistent
        )
        item = response.get("Item")
        return _return(item) if item else None

    def update(self, item: Return, expected: Return) -> None:
        if item.id != expected.id or item.version != expected.version + 1:
            raise InvalidTransition(f"return {item.id} cannot go from version {expected.version} to {item.version}")
        values = {
            ":doc": {"S": item.stored_json()},
            ":status": {"S": item.status.value},
            ":version": {"N": str(item.version)},
            ":expected_status": {"S": expected.status.value},
            ":expected_version": {"N": str(expected.version)},
        }
        update = "SET #doc = :doc, #status = :status, #version = :version"
        # by_receipt's key, true again on every write: one set aside is listed again by its next.
        if item.status is ReturnStatus.RECEIVED:
            update += ", receipt_key = :receipt_key"
            values[":receipt_key"] = {"S": RECEIPT_KEY}
        else:
            update += " REMOVE receipt_key"
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"id": {"S": item.id}},
                UpdateExpression=update,
                ConditionExpression="#status = :expected_status AND #version = :expected_version",
                ExpressionAttributeNames={"#doc": "doc", "#status": "status", "#version": "version"},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                raise StaleVersion(
                    f"return {item.id} is no longer {expected.status} at version {expected.version}"
                ) from None
            raise

    def for_order(self, order_id: str) -> list[Return]:
        paginator = self._client.get_paginator("query")
        ids: list[str] = []
        for page in paginator.paginate(
            TableName=self._table,
            IndexName="by_order",
            KeyConditionExpression="order_id = :o",
            ExpressionAttributeValues={":o": {"S": order_id}},
        ):
            ids.extend(item["id"]["S"] for item in page.get("Items", []))
        # Read consistently: a refund decides on the order's other returns as read here (the shipping
        # owed once the whole order is back, the units refunded before), and a plain read may still
        # show a return received a moment ago as authorized.
        found = batch_get(self._client, self._table, [{"id": {"S": i}} for i in ids], "id, doc", consistent=True)
        return sorted((_return(item) for item in found), key=lambda r: r.ordinal)

    def list(self, where: ReturnFilter, limit: int, cursor: str | None) -> tuple[list[Return], str | None]:
        status = where.status.value if where.status else None
        if where.channel:
            # A channel's returns of one status: the channel index, filtered after the read (pages
            # may come back shorter than `limit`; the cursor carries on), as for orders.
            index, key_value, post_filter = "by_channel", where.channel, status
        elif status:
            index, key_value, post_filter = "by_status", status, None
        else:
            index, key_value, post_filter = "by_created", RETURN_LIST_PK, None
        key_attribute = _RETURN_INDEXES[index]
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k",
            "ExpressionAttributeNames": {"#k": key_attribute},
            "ExpressionAttributeValues": {":k": {"S": key_value}},
            "ScanIndexForward": False,
        }
        scope = f"returns:{index}={key_value}" + (f"&status={post_filter}" if post_filter else "")
        key_names = {"id", "created_at", key_attribute}
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, scope, key_names)
            if query["ExclusiveStartKey"][key_attribute]["S"] != key_value:
                raise InvalidCursor()
        entries, last = query_page(self._client, query, limit, key_names)
        ids = [item["id"]["S"] for item in entries]
        keys = [{"id": {"S": i}} for i in ids]
        # Read consistently, as the orders' list reads: never a return the page names missed, or
        # read from before the change that indexed it.
        found = {
            item["id"]["S"]: _return(item)
            for item in batch_get(self._client, self._table, keys, "id, doc", consistent=True)
        }
        items = [found[i] for i in ids if i in found]
        if status:
            # On by_status too: that index is eventually consistent, so for a moment it still
            # lists a return that has moved on to another status.
            items = [item for item in items if item.status.value == status]
        return items, encode_cursor(scope, last) if last else None


class DynamoUnreceivedReturns(UnreceivedReturns):
    """The return expiry's query: the by_status index (keys only: id,
    status, created_at), one status, oldest first, created before a moment, a page of `page_size`
    at a time as the caller takes the ids. Keys only, so the callers judge each return on its own
    read (a return that has left the status since, the index being eventually consistent, is left
    alone) and stop when their read budget is spent. A Query, never a Scan."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def created_before(self, status: ReturnStatus, before: datetime) -> Iterator[str]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_status",
            "KeyConditionExpression": "#status = :status AND created_at < :before",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}, ":before": {"S": timestamp(before)}},
            "ScanIndexForward": True,
            "Limit": self._page_size,
        }
        # A return the caller expired meanwhile has left the range: DynamoDB starts the next page
        # after its key all the same.
        return _paged_ids(self._client, query)


class DynamoReceivedReturns(ReceivedReturns):
    """The returns reconciler's query: the sparse by_receipt index (keys only: id, receipt_key,
    created_at), oldest first, created before a moment, a page of `page_size` at a time as the
    caller takes the ids; and its setting aside of a return left to a person. A Query, never a Scan."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def received_before(self, before: datetime) -> Iterator[str]:
        return self._partition(RECEIPT_KEY, before)

    def waiting_for_plugin(self, method: str, before: datetime) -> Iterator[str]:
        return self._partition(WAITING_KEY_PREFIX + method, before)

    def _partition(self, key: str, before: datetime) -> Iterator[str]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_receipt",
            "KeyConditionExpression": "receipt_key = :key AND created_at < :before",
            "ExpressionAttributeValues": {":key": {"S": key}, ":before": {"S": timestamp(before)}},
            "ScanIndexForward": True,
            "Limit": self._page_size,
        }
        return _paged_ids(self._client, query)

    def set_aside(self, item: Return, *, waiting_for: str | None = None) -> None:
        # On the version judged only: its document, version and status unchanged (a stream record
        # the events function's filter passes nothing of: no status change).
        values = {":version": {"N": str(item.version)}, ":received": {"S": ReturnStatus.RECEIVED.value}}
        if waiting_for is None:
            update = "REMOVE receipt_key"
        else:
            update = "SET receipt_key = :waiting"
            values[":waiting"] = {"S": WAITING_KEY_PREFIX + waiting_for}
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"id": {"S": item.id}},
                UpdateExpression=update,
                ConditionExpression="#version = :version AND #status = :received",
                ExpressionAttributeNames={"#version": "version", "#status": "status"},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            # Refused: it changed since; the next pass judges it again.
            if not _is_conditional_failure(error):
                raise


class DynamoDuePickups(DuePickups):
    """Pickups past their deadline: the sparse by_pickup_deadline index (keys only), a Query on
    its PICKUP_PK partition, earliest deadline first, a page of `page_size` at a time as the expiry
    takes the ids; never a Scan."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def due(self, before: datetime) -> Iterator[str]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_pickup_deadline",
            "KeyConditionExpression": "pickup_pk = :pk AND collect_by < :before",
            "ExpressionAttributeValues": {":pk": {"S": PICKUP_PK}, ":before": {"S": timestamp(before)}},
            "ScanIndexForward": True,
            "Limit": self._page_size,
        }
        # A pickup the caller expired meanwhile has left the index: DynamoDB starts the next page
        # after its key all the same.
        return _paged_ids(self._client, query)


class DynamoStalledOrders(StalledOrders):
    """The reconciler's queries: the sparse by_status_key index (id, status_key, created_at and the
    jeopardy attributes), one status, oldest first, placed before a moment; and the sparse
    by_pending_refund index's BACKORDER_FILLED_KEY partition, by last change. A Query on one
    partition, never a Scan, a page of `page_size` at a time as the reconciler takes the orders:
    after an outage thousands may be stalled, and a pass goes on while its run has time."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def stalled(self, statuses: Collection[OrderStatus], created_before: datetime) -> Iterator[StalledOrder]:
        if not set(statuses) <= INDEXED_STATUSES:
            raise ValueError(f"{sorted(set(statuses) - INDEXED_STATUSES)} orders are not in the by_status_key index")
        # Each partition once: the pending and the authorized orders share one (IN_WORKFLOW).
        partitions = dict.fromkeys(partition for status in statuses for partition in status_partitions(status))
        return itertools.chain.from_iterable(self._partition(partition, created_before) for partition in partitions)

    def _partition(self, partition: str, created_before: datetime) -> Iterator[StalledOrder]:
        query = {
            "TableName": self._table,
            "IndexName": "by_status_key",
            "KeyConditionExpression": "status_key = :status AND created_at < :before",
            "ExpressionAttributeValues": {":status": {"S": partition}, ":before": {"S": timestamp(created_before)}},
            "ScanIndexForward": True,
            "Limit": self._page_size,
        }
        return (
            StalledOrder(
                order_id=item["id"]["S"],
                created_at=datetime.strptime(item["created_at"]["S"], TIME_FORMAT).replace(tzinfo=UTC),
            )
            for item in paged_items(self._client, query)
        )

    def filled_backorders(self, changed_before: datetime) -> Iterator[str]:
        query = _partition_query(self._table, BACKORDER_FILLED_KEY, changed_before, self._page_size)
        return _paged_ids(self._client, query)


class DynamoBackorderedOrders(BackorderedOrders):
    """Backordered orders oldest first: the by_status_key index's `backordered` partition, paged
    from the entry after the one given (an index page starts after a key naming the order's id,
    its status key and when it was placed)."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def oldest(self, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        status = {"S": OrderStatus.BACKORDERED.value}
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_status_key",
            "KeyConditionExpression": "status_key = :status",
            "ExpressionAttributeValues": {":status": status},
            "ScanIndexForward": True,
            "Limit": limit,
        }
        if after is not None:
            query["ExclusiveStartKey"] = {
                "id": {"S": after.order_id},
                "status_key": status,
                "created_at": {"S": timestamp(after.created_at)},
            }
        return [
            WaitingOrder(
                created_at=datetime.strptime(item["created_at"]["S"], TIME_FORMAT).replace(tzinfo=UTC),
                order_id=item["id"]["S"],
            )
            for item in self._client.query(**query).get("Items", [])
        ]


def _partition_query(table: str, key: str, before: datetime, page_size: int) -> dict[str, Any]:
    """The Query of one partition of the sparse by_pending_refund index (keys only): the orders
    under `key` whose time there is before `before`, oldest first, `page_size` a page."""
    return {
        "TableName": table,
        "IndexName": "by_pending_refund",
        "KeyConditionExpression": "refund_key = :key AND refund_since < :before",
        "ExpressionAttributeValues": {":key": {"S": key}, ":before": {"S": timestamp(before)}},
        "ScanIndexForward": True,
        "Limit": page_size,
    }


class _RefundIndexPartition:
    """A sweep's query: one partition of the sparse by_pending_refund index, oldest first, a page
    of `page_size` at a time as the sweep takes the ids; never a Scan."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def _ids(self, key: str, before: datetime) -> Iterator[str]:
        return _paged_ids(self._client, _partition_query(self._table, key, before, self._page_size))


class DynamoPendingRefunds(_RefundIndexPartition, PendingRefunds):
    """The pending refund sweep's: the PENDING_REFUND_KEY partition."""

    def pending_since_before(self, before: datetime) -> Iterator[str]:
        return self._ids(PENDING_REFUND_KEY, before)


class DynamoUnsettledAuthorizations(_RefundIndexPartition, UnsettledAuthorizations):
    """The unsettled authorization sweep's: the UNSETTLED_AUTHORIZATION_KEY partition."""

    def left_since_before(self, before: datetime) -> Iterator[str]:
        return self._ids(UNSETTLED_AUTHORIZATION_KEY, before)

    def set_aside(self, order: Order) -> None:
        # Moved, on the version judged and from this partition only, to the partition of what else
        # it owes (a later one: what a return kept back, a carrier's work), or out of the index; its
        # next write sets its keys again from the order (index_attributes). A stream record with the
        # document unchanged, which the stream's consumers find nothing in.
        rest = index_attributes(order, authorizations_set_aside=True)
        values = {
            ":version": {"N": str(order.version)},
            ":key": {"S": UNSETTLED_AUTHORIZATION_KEY},
        }
        if "refund_key" in rest:
            update = "SET refund_key = :next, refund_since = :since"
            values.update({":next": rest["refund_key"], ":since": rest["refund_since"]})
        else:
            update = "REMOVE refund_key, refund_since"
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"id": {"S": order.id}},
                UpdateExpression=update,
                ConditionExpression="#version = :version AND refund_key = :key",
                ExpressionAttributeNames={"#version": "version"},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            # Refused: it changed since, or left the partition; the next pass judges it again.
            if not _is_conditional_failure(error):
                raise


class DynamoSettlementCaptures(_RefundIndexPartition, SettlementCaptures):
    """The reconciler's, for settlement captures never recorded: the SETTLEMENT_CAPTURE_KEY partition."""

    def requested_since_before(self, before: datetime) -> Iterator[str]:
        return self._ids(SETTLEMENT_CAPTURE_KEY, before)


class DynamoOrdersOwingCarrier(_RefundIndexPartition, OrdersOwingCarrier):
    """The carrier work sweep's: the CARRIER_WORK_KEY partition."""

    def owing_since_before(self, before: datetime) -> Iterator[str]:
        return self._ids(CARRIER_WORK_KEY, before)


class DynamoKeptBackRefunds(_RefundIndexPartition, KeptBackRefunds):
    """The kept-back pass's: the KEPT_BACK_KEY partition."""

    def owed_since_before(self, before: datetime) -> Iterator[str]:
        return self._ids(KEPT_BACK_KEY, before)


class DynamoLateOrders(LateOrders):
    """The jeopardy scan's queries. Candidates to mark come from the by_status_key index: an order
    entered its status after it was placed, so those placed before the moment are a superset of
    those in the status since before it, narrowed by `status_since` and by not being marked
    (`sla_key`), both projected. The marked orders are the sparse by_sla index's one partition.
    Holds to expire come from by_pickup_deadline's HELD_PK partition, by when each hold began and
    without its parks: every entry its range holds is due, so that query reads past nothing.

    Marked or not-yet-due orders stay at the oldest end of a status's range, so a query pages on
    inside one pass until it has `limit` candidates, the range ends, or it has read `max_reads`
    index entries (the read budget, so a pass stays cheap however many late orders wait for
    someone: those are counted in jeopardy and alarmed on). Queries only, never a Scan."""

    def __init__(self, client: Any, table: str, *, page_size: int = 1000, max_reads: int = 20_000):
        self._client = client
        self._table = table
        self._page_size = page_size
        self._max_reads = max_reads

    def unmarked_since_before(self, status: OrderStatus, before: datetime, limit: int) -> list[str]:
        # An order written before by_sla became sparse may still hold its status as sla_key.
        unmarked = "(attribute_not_exists(sla_key) OR sla_key <> :late)"
        # The workflow partition's entries carry no status_since (IN_WORKFLOW): an order entered
        # its status after it was placed, so those placed before the moment are the candidates.
        since = "" if status in IN_WORKFLOW else "status_since < :before AND "
        found: list[str] = []
        # Authorized orders a release before stored apart are read after the workflow partition, on
        # a budget of their own: a partition each such order leaves at its next write.
        for partition in status_partitions(status):
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": "by_status_key",
                "KeyConditionExpression": "status_key = :status AND created_at < :before",
                "FilterExpression": since + unmarked,
                "ExpressionAttributeValues": {
                    ":status": {"S": partition}, ":before": {"S": timestamp(before)}, ":late": {"S": JEOPARDY_KEY}
                },
                "ScanIndexForward": True,
            }  # fmt: skip
            found += _query_ids(self._client, query, limit - len(found), self._page_size, max_reads=self._max_reads)
            if len(found) >= limit:
                break
        return found

    def held_since_before(self, before: datetime, limit: int) -> list[str]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_pickup_deadline",
            "KeyConditionExpression": "pickup_pk = :held AND collect_by < :before",
            "ExpressionAttributeValues": {":held": {"S": HELD_PK}, ":before": {"S": timestamp(before)}},
            "ScanIndexForward": True,
        }
        return _query_ids(self._client, query, limit, self._page_size, max_reads=self._max_reads)

    def marked_since_after(self, after: dict[OrderStatus, datetime], limit: int) -> list[str]:
        # The late orders' partition, filtered on what by_sla projects: the status, and when its
        # deadline counts from (`status_since`, written on every marked order that has one).
        if not after:
            return []
        names = {"#status": "status"}
        values: dict[str, Any] = {":late": {"S": JEOPARDY_KEY}}
        either = []
        for i, (status, moment) in enumerate(sorted(after.items())):
            values[f":s{i}"], values[f":c{i}"] = {"S": status.value}, {"S": timestamp(moment)}
            either.append(f"(#status = :s{i} AND status_since > :c{i})")
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_sla",
            "KeyConditionExpression": "sla_key = :late",
            "FilterExpression": " OR ".join(either),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        return _query_ids(self._client, query, limit, self._page_size, max_reads=self._max_reads)

    def count_in_jeopardy(self) -> int:
        return self._count(IndexName="by_sla", KeyConditionExpression="sla_key = :late",
                           ExpressionAttributeValues={":late": {"S": JEOPARDY_KEY}})  # fmt: skip

    def count_ships_to_confirm(self) -> int:
        return self._count(IndexName="by_pickup_deadline", KeyConditionExpression="pickup_pk = :confirm",
                           ExpressionAttributeValues={":confirm": {"S": SHIPS_TO_CONFIRM_PK}})  # fmt: skip

    def _count(self, **query: Any) -> int:
        count, start = 0, None
        while True:
            page = self._client.query(
                TableName=self._table, Select="COUNT", **query, **({"ExclusiveStartKey": start} if start else {})
            )
            count += page.get("Count", 0)
            start = page.get("LastEvaluatedKey")
            if not start:
                return count


def _paged_ids(client: Any, query: dict[str, Any]) -> Iterator[str]:
    """The `id`s a Query finds, a page at a time as the caller takes them: a page is read only
    when the ids before it are taken."""
    return (item["id"]["S"] for item in paged_items(client, query))


def paged_items(client: Any, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The items a Query finds, a page at a time as the caller takes them: a page is read only
    when the items before it are taken."""
    query = dict(query)
    while True:
        page = client.query(**query)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _query_ids(
    client: Any, query: dict[str, Any], limit: int, page_size: int, *, max_reads: int | None = None
) -> list[str]:
    """The `id`s a Query finds, page after page, until `limit` of them, the end of its range, or
    (with `max_reads`) that many index entries read, a filter's rejects included."""
    query = dict(query)
    ids: list[str] = []
    read = 0
    while len(ids) < limit and (max_reads is None or read < max_reads):
        room = limit - len(ids) if max_reads is None else max_reads - read
        page = client.query(**query, Limit=min(page_size, room))
        read += page.get("ScannedCount", 0)
        ids.extend(item["id"]["S"] for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return ids[:limit]


def backfill_index_attributes(client: Any, table: str, page_size: int = 500) -> tuple[int, int]:
    """The one-off upgrade of orders stored before the sparse by_status_key index: gives each
    order the index attributes its current form has (index_attributes: `status_key`,
    `status_since`, the late mark's keys) and removes what it must no longer have (the `sla_key`
    of an unmarked order in a watched status). Each write is conditional on the version read, so
    an order the running code wrote meanwhile (it writes them itself) is left alone, and a second
    run writes nothing. An operator's command over the whole table, so a Scan; returns
    (orders written, orders already right)."""
    written = already = 0
    scan: dict[str, Any] = {
        "TableName": table,
        "ProjectionExpression": "id, doc, #version, " + ", ".join(INDEX_ATTRIBUTES),
        "ExpressionAttributeNames": {"#version": "version"},
        "Limit": page_size,
    }
    while True:
        page = client.scan(**scan)
        for item in page.get("Items", []):
            wanted = index_attributes(_order(item))
            if wanted == {name: item[name] for name in INDEX_ATTRIBUTES if name in item}:
                already += 1
                continue
            clauses = []
            if wanted:
                clauses.append("SET " + ", ".join(f"{name} = :{name}" for name in wanted))
            removed = [name for name in INDEX_ATTRIBUTES if name not in wanted]
            if removed:
                clauses.append("REMOVE " + ", ".join(removed))
            try:
                client.update_item(
                    TableName=table,
                    Key={"id": item["id"]},
                    UpdateExpression=" ".join(clauses),
                    ConditionExpression="#version = :version",
                    ExpressionAttributeNames={"#version": "version"},
                    ExpressionAttributeValues={":version": item["version"], **{f":{k}": v for k, v in wanted.items()}},
                )
                written += 1
            except ClientError as error:
                if not _is_conditional_failure(error):
                    raise
                already += 1  # written by the running code since the scan read it
        if "LastEvaluatedKey" not in page:
            return written, already
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def backfill_receipt_keys(client: Any, table: str, page_size: int = 500) -> tuple[int, int]:
    """The one-off upgrade of returns received before the sparse by_receipt index: each return
    still `received` (found through by_status, never a Scan) gets its `receipt_key`, in a write
    conditional on it being received and keyless, so the reconciler finds a receipt whose workflow
    was lost before the upgrade. One left to a person is set aside again by the next pass; a
    second run writes only those set aside since. Returns (returns written, already right)."""
    written = already = 0
    query = {
        "TableName": table,
        "IndexName": "by_status",
        "KeyConditionExpression": "#status = :received",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {":received": {"S": ReturnStatus.RECEIVED.value}},
        "Limit": page_size,
    }
    for return_id in _paged_ids(client, query):
        try:
            client.update_item(
                TableName=table,
                Key={"id": {"S": return_id}},
                UpdateExpression="SET receipt_key = :key",
                ConditionExpression="#status = :received AND attribute_not_exists(receipt_key)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":key": {"S": RECEIPT_KEY}, ":received": {"S": ReturnStatus.RECEIVED.value}},
            )
            written += 1
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            already += 1  # keyed already, or no longer received (the index lags)
    return written, already


def backfill_credit_holds(
    client: Any, table: str, page_size: int = 500, attempts: int = 5, history_table: str | None = None
) -> tuple[int, int]:
    """The one-off upgrade of orders whose exchange was placed before its credit was held on them:
    each gets the holds its history names (Order.hold_placed_credits), so no appeasement refunds
    the money that paid for a replacement. Only an order with such an exchange is read again
    (with its history) and written (_upgraded_from_history); returns (orders written, orders
    already right)."""
    return _upgraded_from_history(
        client, table, page_size, attempts, history_table,
        needs=lambda order: not set(order.exchanges) <= set(order.credit_holds),
        change=lambda order, history: order.hold_placed_credits(history, at=utc_now()),
    )  # fmt: skip


def backfill_own_voids_owed(
    client: Any, table: str, page_size: int = 500, attempts: int = 5, history_table: str | None = None
) -> tuple[int, int]:
    """The one-off upgrade of orders cancelled before a cancelled order's own void the gateway
    could not make was marked owed (Order.own_void_owed): each cancelled order whose payment is
    still `authorized` is read again with its history and marked when its failed attempts say the
    void is owed (Order.owe_own_void_from), which puts it in the reconciler's authorization pass
    (_upgraded_from_history); returns (orders marked, orders already right)."""
    return _upgraded_from_history(
        client, table, page_size, attempts, history_table,
        needs=lambda order: order.status is OrderStatus.CANCELLED and order.payment.status is PaymentStatus.AUTHORIZED,
        change=lambda order, history: order.owe_own_void_from(history, at=utc_now()),
    )  # fmt: skip


def backfill_parks(
    client: Any, table: str, page_size: int = 500, attempts: int = 5, history_table: str | None = None
) -> tuple[int, int]:
    """The one-off upgrade of orders parked (or held to confirm whether a parcel left) before such
    a hold stored that it is one (Hold.parked), or that it waits for parcels (Hold.confirms_ships):
    each order on hold whose hold names no parcels is read again with its history and marked when
    its hold is a park's or a parcel to confirm's (Order.parked_from), which takes it out of the
    hold expiry's index and puts a parcel to confirm in the count ShipsToConfirmAlarm watches
    (_upgraded_from_history); returns (orders marked, orders already right)."""
    return _upgraded_from_history(
        client, table, page_size, attempts, history_table,
        needs=lambda order: order.status is OrderStatus.ON_HOLD and order.hold is not None
        and not (order.hold.confirms_ships or order.hold.ships_to_confirm),
        change=lambda order, history: order.parked_from(history, at=utc_now()),
    )  # fmt: skip


def backfill_refused_reports(
    client: Any, table: str, page_size: int = 500, attempts: int = 5, history_table: str | None = None
) -> tuple[int, int]:
    """The one-off upgrade of orders whose carrier's report of a marked parcel (Order.reported_delivered)
    met the gateway's refusal before the mark said so (ReportedDelivery.refused): each order with a
    pending parcel marked and not refused is read again with its history and marked refused where
    its `delivery_not_recorded` names the parcel (Order.refused_reports_from), so a person's cancel
    may write it off and the kept-back pass asks its capture no more (_upgraded_from_history);
    returns (orders marked, orders already right)."""

    def needs(order: Order) -> bool:
        refused = {r.shipment_id for r in order.reported_delivered if r.refused}
        return any(s not in refused for s in order.parcels_reported())

    return _upgraded_from_history(
        client, table, page_size, attempts, history_table, needs=needs,
        change=lambda order, history: order.refused_reports_from(history, at=utc_now()),
    )  # fmt: skip


def backfill_returns_to_show(
    client: Any, table: str, returns_table: str, page_size: int = 500, attempts: int = 5,
    history_table: str | None = None,
) -> tuple[int, int]:  # fmt: skip
    """The one-off upgrade of orders written before a gateway's answer recorded the returns owing a
    show of what went back for them (Order.returns_to_show): a function that died between the
    answer and the show left the return showing less than went back, and the order in no index.
    Each order whose refunds name a return, or that placed an exchange, is read again
    consistently with those returns, and marked owing the show of those that may show short
    (core.refund_service.returns_shown_short), which puts it in the reconciler's kept-back pass
    (index_attributes): it shows them and clears the mark. Conditional on the version read, read
    and decided again when the running code wrote it meanwhile, so a second run writes nothing but
    what the pass has not shown yet (_upgraded); returns (orders marked, orders already right)."""
    from core.exchange_credit import CreditChain  # an operator's command: not the functions' cold path
    from core.refund_service import returns_shown_short

    returns = DynamoReturns(client, returns_table)

    def decided(orders: DynamoOrders, order_id: str) -> tuple[Order, Bookkeeping | None] | None:
        order = orders.get(order_id, consistent=True)
        if order is None:
            return None
        # What an exchange's credit refunded up the chain for a return of a replacement's units:
        # read only (CreditChain asks no gateway and writes nothing).
        short = returns_shown_short(order, returns, CreditChain(returns, orders).drawn_for_return)
        return order, order.owe_returns_shown(short, at=utc_now())

    return _upgraded(
        client, table, page_size, attempts, history_table,
        needs=lambda order: bool(order.exchanges) or any(refund.return_id for refund in order.payment.refunds),
        decided=decided,
    )  # fmt: skip


def _upgraded_from_history(
    client: Any, table: str, page_size: int, attempts: int, history_table: str | None,
    needs: Callable[[Order], bool], change: Callable[[Order, list[HistoryEntry]], Bookkeeping | None],
) -> tuple[int, int]:  # fmt: skip
    """Each order the Scan finds that `needs` it, read again with its history and written as `change`
    says (None: nothing to write), as _upgraded does."""

    def decided(orders: DynamoOrders, order_id: str) -> tuple[Order, Bookkeeping | None] | None:
        found = orders.history(order_id, consistent=True)
        return (found[0], change(*found)) if found is not None else None

    return _upgraded(client, table, page_size, attempts, history_table, needs, decided)


def _upgraded(
    client: Any, table: str, page_size: int, attempts: int, history_table: str | None,
    needs: Callable[[Order], bool], decided: Callable[[DynamoOrders, str], tuple[Order, Bookkeeping | None] | None],
) -> tuple[int, int]:  # fmt: skip
    """Each order the Scan finds that `needs` it, read again (`decided`: the order as read and what
    to write, None when nothing; None when it is gone) and written so, conditional on the version
    read, read and decided again when the running code wrote it meanwhile, so a second run writes
    nothing. An operator's command over the whole table, so a Scan; returns (orders written,
    orders already right)."""
    orders = DynamoOrders(client, table, history_table=history_table)  # the Catalog table: history pages
    written = already = 0
    for order in _scanned_orders(client, table, page_size):
        if not needs(order):
            already += 1
            continue
        for _ in range(attempts):
            found = decided(orders, order.id)
            changed = found[1] if found is not None else None
            if found is None or changed is None:
                already += 1
                break
            try:
                orders.update(changed[0], found[0], [])
            except StaleVersion:
                continue
            written += 1
            break
        else:
            raise StaleVersion(f"order {order.id} kept changing; run the backfill again")
    return written, already


def _scanned_orders(client: Any, table: str, page_size: int) -> Iterator[Order]:
    """Every order of the table, as a Scan of `page_size` items a page reads it (an operator's
    one-off upgrade: the only readers of the whole table)."""
    scan: dict[str, Any] = {"TableName": table, "ProjectionExpression": "id, doc", "Limit": page_size}
    while True:
        page = client.scan(**scan)
        yield from (_order(item) for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def backfill_holding_entries(
    client: Any, table: str, inventory_table: str, page_size: int = 500, history_table: str | None = None
) -> tuple[int, int]:
    """The one-off upgrade of orders backordered before a waiting order had a queue entry for each
    sku it holds every unit of (WaitingOrder.holds: Workflow._wait_for_stock writes them now): each
    order waiting for stock (backordered, or held while backordered) gets the entries it lacks, at
    the version read, each written only where none is (one there, its own or a waiting one, says
    what it waits for already). The order is read again after: when it has stopped waiting
    meanwhile, the clean-up of that write may have run before these entries were written, so they
    are removed as it would have (Backorders.leave). An operator's command over the whole table, so
    a Scan; returns (entries written, orders already right)."""
    orders = DynamoOrders(client, table, history_table=history_table)
    queue = DynamoBackorders(client, inventory_table, table, history_table)
    written = already = 0
    for order in _scanned_orders(client, table, page_size):
        short = order.short_of() if order.waits_for_stock() else {}
        lacking = {line.sku for line in order.lines if line.line_id in short}
        held = sorted({line.sku for line in order.lines if line.quantity} - lacking)
        if not short or not held:
            already += 1
            continue
        entry = WaitingOrder.for_order(order, holds=True)
        added = [sku for sku in held if queue.add_if_absent(sku, entry)]
        if not added:
            already += 1
            continue
        now = orders.get(order.id, consistent=True)
        if now is None or not now.waits_for_stock():
            for sku in added:
                if now is None:
                    queue.remove(sku, entry)
                else:
                    queue.leave(sku, entry, now.version)
            already += 1
            continue
        written += len(added)
    return written, already


# --- Catalog: products, the location network, API keys --------------------------------------

NETWORK_PK = "NETWORK"  # the location network's one item
NETWORK_KEY = {"pk": {"S": NETWORK_PK}, "sk": {"S": "LOCATIONS"}}
PRODUCT_PK = "PRODUCT#"  # + the sku: a product's item


def _product_key(sku: str) -> dict[str, Any]:
    return {"pk": {"S": PRODUCT_PK + sku}, "sk": {"S": "PRODUCT"}}


class DynamoCatalog(CatalogRepository):
    """Products are one item each, the product as a JSON document (`doc`, as orders are).

    Read consistently: the API reads the catalog through a warm container's cache, once per
    product and network per `OMS_CATALOG_CACHE_SECONDS`, so a read from a replica that had not seen
    a write of a moment ago (the location a container has just put, a product just created) would
    be answered, and kept, as if that write had not been made."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def put_product(self, product: Product) -> bool:
        item = {**_product_key(product.sku), "doc": {"S": product.model_dump_json()}}
        response = self._client.put_item(TableName=self._table, Item=item, ReturnValues="ALL_OLD")
        return not response.get("Attributes")

    def get_product(self, sku: str) -> Product | None:
        item = self._client.get_item(TableName=self._table, Key=_product_key(sku), ConsistentRead=True).get("Item")
        return Product.model_validate_json(item["doc"]["S"]) if item else None

    def get_products(self, skus: set[str]) -> dict[str, Product]:
        keys = [_product_key(sku) for sku in sorted(skus)]
        items = batch_get(self._client, self._table, keys, "doc", consistent=True)
        products = [Product.model_validate_json(item["doc"]["S"]) for item in items]
        return {p.sku: p for p in products}

    # The whole network lives in one item (a map from location id to its JSON document):
    # sourcing reads it with one GetItem instead of a Query, and a location write is one atomic
    # nested update.
    def put_location(self, location: Location) -> bool:
        value = {"S": location.model_dump_json()}
        update = {
            "TableName": self._table,
            "Key": NETWORK_KEY,
            "UpdateExpression": "SET locations.#id = :location",
            "ConditionExpression": "attribute_exists(locations)",
            "ExpressionAttributeNames": {"#id": location.location_id},
            "ExpressionAttributeValues": {":location": value},
            "ReturnValues": "UPDATED_OLD",
        }
        while True:
            try:
                response = self._client.update_item(**update)
            except ClientError as error:
                if _too_large(error):
                    raise Conflict(
                        "the location network is full: it is kept in one DynamoDB item of at most 400 KB "
                        "(about a thousand locations), and this location does not fit in it",
                        code="location_network_full",
                        details=[{"field": "location_id", "message": "no room for another location"}],
                    ) from None
                if not _is_conditional_failure(error):
                    raise
                try:
                    self._client.put_item(
                        TableName=self._table,
                        Item={**NETWORK_KEY, "locations": {"M": {}}},
                        ConditionExpression="attribute_not_exists(pk)",
                    )
                except ClientError as create_error:
                    if not _is_conditional_failure(create_error):
                        raise
                continue
            old = from_item(response.get("Attributes", {})).get("locations", {})
            return location.location_id not in old

    def _network(self) -> dict[str, str]:
        item = self._client.get_item(TableName=self._table, Key=NETWORK_KEY, ConsistentRead=True).get("Item")
        return from_item(item).get("locations", {}) if item else {}

    def get_location(self, location_id: str) -> Location | None:
        value = self._network().get(location_id)
        return Location.model_validate_json(value) if value else None

    def list_locations(self) -> list[Location]:
        network = self._network()
        return [Location.model_validate_json(network[k]) for k in sorted(network)]

    def wake_from(self, after: WaitingOrder) -> None:
        # Beside `locations`: the network's readers read nothing else of the item. It stays there
        # once a wake is done, so a later wake's page may end at the order it names: a write of the
        # same value changes nothing, and DynamoDB writes no stream record for it (the page would not
        # be handed on). That value is removed first, so the write that sets it again is a change.
        value = {"S": f"{timestamp(after.created_at)}#{after.order_id}"}
        update = {"TableName": self._table, "Key": NETWORK_KEY, "UpdateExpression": f"SET {WAKE_AFTER} = :after"}
        try:
            self._client.update_item(
                **update,
                ConditionExpression=f"attribute_not_exists({WAKE_AFTER}) OR {WAKE_AFTER} <> :after",
                ExpressionAttributeValues={":after": value},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            self._client.update_item(TableName=self._table, Key=NETWORK_KEY, UpdateExpression=f"REMOVE {WAKE_AFTER}")
            self._client.update_item(**update, ExpressionAttributeValues={":after": value})


# --- Sourcing rules ----------------------------------------------------------------------------

SOURCING_RULES_PK = "SOURCING_RULES"
# On a version's item (and on the network's): the backordered order after which waking them for
# that version (for that change of the network) goes on (functions/backorders/app.py reads it from
# the Catalog stream).
WAKE_AFTER = "wake_after"


def wake_after(value: str) -> WaitingOrder:
    """The order a `wake_after` attribute names."""
    at, order_id = value.split("#", 1)
    return WaitingOrder(created_at=datetime.strptime(at, TIME_FORMAT).replace(tzinfo=UTC), order_id=order_id)


class DynamoSourcingRules(SourcingRulesRepository):
    """Every version is one item in the Catalog table (partition SOURCING_RULES, sort key the
    zero-padded version): the newest is read with one Query, a new version is one PutItem that
    fails when its number exists, and the history is the same partition read newest first."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def _query(self, start: dict[str, Any] | None = None, consistent: bool = False) -> dict[str, Any]:
        return {
            "TableName": self._table, "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": SOURCING_RULES_PK}}, "ScanIndexForward": False,
            **({"ExclusiveStartKey": start} if start else {}), **({"ConsistentRead": True} if consistent else {}),
        }  # fmt: skip

    def current(self) -> SourcingRules:
        # Consistent: a change is in force from its answer on (an allocation right after it uses
        # it, and a PUT with If-Match of the version just answered is not refused as stale).
        items = self._client.query(**self._query(consistent=True), Limit=1).get("Items", [])
        return SourcingRules.model_validate_json(items[0]["doc"]["S"]) if items else SourcingRules()

    def add(self, rules: SourcingRules) -> None:
        item = {
            "pk": {"S": SOURCING_RULES_PK},
            "sk": {"S": f"v{rules.version:010d}"},
            "doc": {"S": rules.model_dump_json()},
        }
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            raise StaleVersion(f"sourcing rules version {rules.version} was written by another change") from None

    def wake_from(self, version: int, after: WaitingOrder) -> None:
        self._client.update_item(
            TableName=self._table,
            Key={"pk": {"S": SOURCING_RULES_PK}, "sk": {"S": f"v{version:010d}"}},
            # `waking`: a boolean the stream filter matches exactly (it has no test for presence).
            UpdateExpression=f"SET {WAKE_AFTER} = :after, waking = :waking",
            ExpressionAttributeValues={
                ":after": {"S": f"{timestamp(after.created_at)}#{after.order_id}"},
                ":waking": {"BOOL": True},
            },
        )

    def history(self, limit: int, cursor: str | None = None) -> tuple[list[SourcingRules], str | None]:
        start = (
            decode_cursor(cursor, "sourcing_rules", {"pk", "sk"}, {"pk": SOURCING_RULES_PK})
            if cursor is not None
            else None
        )
        found, last = query_page(self._client, self._query(start), limit, {"pk", "sk"})
        items = [SourcingRules.model_validate_json(item["doc"]["S"]) for item in found]
        return items, encode_cursor("sourcing_rules", last) if last else None


# --- API keys --------------------------------------------------------------------------------


def _record_key(key_id: str) -> dict[str, Any]:
    return {"pk": {"S": "APIKEYS"}, "sk": {"S": key_id}}


# A key's own API Gateway key (per-key usage plans): its id on the record (DELETE /api-keys deletes
# it), its value on both items (the lookup's is the authorizer's usageIdentifierKey). Never shown.
GATEWAY_KEY_ID, GATEWAY_KEY = "gateway_key_id", "gateway_key"
_NOT_SHOWN = ("pk", "sk", "secret_hash", GATEWAY_KEY_ID, GATEWAY_KEY)


def _gateway_key(values: dict[str, Any]) -> GatewayKey | None:
    return GatewayKey(values[GATEWAY_KEY_ID], values[GATEWAY_KEY]) if GATEWAY_KEY_ID in values else None


def _secret_taken(key_id: str) -> Conflict:
    return Conflict(f"this secret is another API key's: choose another for {key_id}", code="api_key_secret_taken")


class DynamoApiKeys(ApiKeyRepository):
    """Two items per key in the Catalog table: a lookup item keyed by the secret's hash (the
    authorizer's one GetItem) and a record keyed by id (listing and revocation). The secret itself
    is never stored. Writes go record first, lookup second, so a half-done create leaves a key
    that cannot authenticate; a rotation deletes the replaced secret's lookup and a revocation
    disables the lookup before anything else."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    @staticmethod
    def _key(item: dict[str, Any]) -> ApiKey:
        values = from_item(item)
        return ApiKey.model_validate({k: v for k, v in values.items() if k not in _NOT_SHOWN})

    def _record(self, key_id: str) -> dict[str, Any] | None:
        # Consistent: a stale record would name a secret replaced a moment ago, so a rotation would
        # delete that one's lookup and leave the one it replaces working; a revoke would miss a key
        # issued a moment ago.
        return self._client.get_item(TableName=self._table, Key=_record_key(key_id), ConsistentRead=True).get("Item")

    def add(self, key: ApiKey, secret_hash: str, gateway_key: GatewayKey | None = None) -> None:
        # A lookup is keyed by its secret's hash: another key's would become this key's, before the
        # previous secret of this one is retired. Only a chosen secret (the admin's) can be another's.
        holder = self._client.get_item(TableName=self._table, Key=lookup_key(secret_hash), ConsistentRead=True)
        if holder.get("Item", {}).get("id", {}).get("S", key.id) != key.id:
            raise _secret_taken(key.id)
        previous = from_item(self._record(key.id) or {})
        old_hash = previous.get("secret_hash")
        # The replaced secret's lookup goes first: the record names only the newest secret, so a
        # rotation that stopped after writing it and was run again would leave that lookup (the
        # secret being retired, perhaps leaked) working for good.
        if old_hash and old_hash != secret_hash:
            self._client.delete_item(TableName=self._table, Key=lookup_key(old_hash))
        values = to_item(key.model_dump(mode="python"))
        # A rotated key (the admin key's) keeps the gateway key it had: its usage stays its own.
        own = gateway_key or _gateway_key(previous)
        metered = {GATEWAY_KEY: {"S": own.value}} if own else {}
        self._client.put_item(
            TableName=self._table,
            Item={
                **_record_key(key.id),
                **values,
                "secret_hash": {"S": secret_hash},
                **metered,
                **({GATEWAY_KEY_ID: {"S": own.id}} if own else {}),
            },
        )
        # The lookup only while the record still names this secret, unrevoked: a revoke that read the
        # record before this (GET /api-keys lists it once written) found no lookup to revoke, and a
        # rotation run meanwhile retired the lookup the record named then, not this one. Written
        # anyway, either would let this secret in for good.
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"ConditionCheck": {
                        "TableName": self._table, "Key": _record_key(key.id),
                        "ConditionExpression": "secret_hash = :hash AND attribute_not_exists(revoked_at)",
                        "ExpressionAttributeValues": {":hash": {"S": secret_hash}},
                    }},
                    {"Put": {
                        "TableName": self._table, "Item": {**lookup_key(secret_hash), **values, **metered},
                        "ConditionExpression": "attribute_not_exists(pk) OR id = :id",
                        "ExpressionAttributeValues": {":id": {"S": key.id}},
                    }},
                ]
            )  # fmt: skip
        except ClientError as error:
            reasons = cancellation_reasons(error) or []
            if "ConditionalCheckFailed" not in reasons:
                raise
            if reasons[1:] == ["ConditionalCheckFailed"]:
                raise _secret_taken(key.id) from None
            raise Conflict(
                f"API key {key.id} was revoked or given another secret while this one was stored: "
                "this secret does not work",
                code="api_key_replaced",
            ) from None

    def gateway_key(self, key_id: str) -> GatewayKey | None:
        record = self._record(key_id)
        return _gateway_key(from_item(record)) if record else None

    def attach_gateway_key(self, key_id: str, gateway_key: GatewayKey) -> bool:
        # The record first, on a condition no concurrent run or revocation can pass twice: it says
        # which gateway key is the key's. The lookup then carries the record's, whichever run made it.
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_record_key(key_id),
                UpdateExpression="SET #id = :id, #value = :value",
                ConditionExpression=(
                    "attribute_exists(pk) AND attribute_not_exists(revoked_at) AND attribute_not_exists(#id)"
                ),
                ExpressionAttributeNames={"#id": GATEWAY_KEY_ID, "#value": GATEWAY_KEY},
                ExpressionAttributeValues={":id": {"S": gateway_key.id}, ":value": {"S": gateway_key.value}},
            )
            attached = True
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            attached = False
        record = from_item(self._record(key_id) or {})
        own = _gateway_key(record)
        if own is None or "revoked_at" in record:
            return False
        try:
            self._client.update_item(
                TableName=self._table,
                Key=lookup_key(record["secret_hash"]),
                UpdateExpression="SET #value = :value",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(revoked_at)",
                ExpressionAttributeNames={"#value": GATEWAY_KEY},
                ExpressionAttributeValues={":value": {"S": own.value}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):  # revoked since, or its secret replaced: nothing to meter
                raise
        return attached

    def active_gateway_keys(self) -> list[tuple[str, GatewayKey | None]]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": "APIKEYS"}},
            "ConsistentRead": True,
        }
        found = []
        while True:
            response = self._client.query(**query)
            for item in response.get("Items", []):
                values = from_item(item)
                if "revoked_at" not in values:
                    found.append((values["id"], _gateway_key(values)))
            if "LastEvaluatedKey" not in response:
                return found
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def by_hash(self, secret_hash: str) -> ApiKey | None:
        item = self._client.get_item(TableName=self._table, Key=lookup_key(secret_hash)).get("Item")
        return self._key(item) if item else None

    def list(self, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": "APIKEYS"}},
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, "api_keys", {"pk", "sk"}, {"pk": "APIKEYS"})
        items, last = query_page(self._client, query, limit, {"pk", "sk"})
        return [self._key(item) for item in items], encode_cursor("api_keys", last) if last else None

    def revoke(self, key_id: str, at: datetime, by: str | None = None) -> ApiKey | None:
        record = self._record(key_id)
        if record is None:
            return None
        # Only a key not revoked yet takes `at` and `by`: one revoked already keeps when and by whom
        # it was first (a second admin's DELETE is not who cut it off).
        values = {":at": {"S": timestamp(at)}, **({":by": {"S": by}} if by is not None else {})}
        revoke = {
            "UpdateExpression": "SET revoked_at = :at" + (", revoked_by = :by" if by is not None else ""),
            "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(revoked_at)",
            "ExpressionAttributeValues": values,
        }
        try:
            self._client.update_item(TableName=self._table, Key=lookup_key(from_item(record)["secret_hash"]), **revoke)
        except ClientError as error:
            # A conditional failure means the lookup is revoked already, or gone (replaced by a newer
            # secret): nothing is left to revoke there.
            if not _is_conditional_failure(error):
                raise
        try:
            response = self._client.update_item(
                TableName=self._table, Key=_record_key(key_id), ReturnValues="ALL_NEW", **revoke
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            revoked = self._record(key_id)  # revoked already (or gone since: None, as it was never there)
            return self._key(revoked) if revoked is not None else None
        return self._key(response["Attributes"])


# --- Inventory ---------------------------------------------------------------------------------


RESTOCK_LEDGER = "restocked#"
# An adjustment made with a client's Idempotency-Key leaves a ledger item (sku
# `adjusted#<sku>#<key>`: no sku holds a `#`) in the same transaction as the count, honoured for a
# day as every Idempotency-Key is; the Inventory table's TTL removes it later.
ADJUST_LEDGER = "adjusted#"
ADJUSTMENT_KEY_SECONDS = 24 * 3600
# A stock take made with one leaves its own (sku `counted#<sku>#<key>`, the on_hand it counted), in
# the same transaction as the count, for as long: a retry whose first answer was lost writes no
# later counted_at over the first's (DynamoInventory.set_on_hand).
COUNT_LEDGER = "counted#"
# The backorder filler's stream filter (template.yaml, BackorderFunction) passes only stock images
# carrying this marker: every write that can raise `available` sets it (true), every write that
# lowers `available` or leaves it alone removes it, so reservations and shipments (most of the
# stream) never invoke the filler. A write that names neither leaves it as it was, which can only
# invoke the filler for nothing (its own check compares both images), never miss an arrival. One
# write sets it and leaves `available` alone: an arrival's walk handed on (DynamoBackorders.walk_from).
# A boolean, matched exactly: the filter does not rest on numeric matching of the strings a
# stream record carries DynamoDB numbers as.
ARRIVED = "arrived"
# Its companion for the same filter: a purchase-order write that withdraws units bought (a draft
# cancelled, a PO's incoming cancelled) sets it (functions/adapters/purchasing.py), so that the
# withdrawal reaches the reorder points' demand where no point marks the item; the writes that
# remove ARRIVED remove it too, so the reservations after it do not carry it on.
WITHDRAWN = "withdrawn"


# A stock take recorded below the reserved units marks its stock item (the sparse short_counts
# index: template.yaml) until what stays reserved fits it: the reconciler finishes one whose
# function died between the count and its rejects.
SHORT_COUNT, SHORT_COUNTED_AT, SHORT_COUNT_ACTOR = "short_count", "short_counted_at", "short_count_actor"
SHORT_COUNTS_INDEX = "short_counts"
# Where the reconciler's next pass over the marks starts (InventoryService.finish_short_counts): an
# item of its own in the Inventory table, keyed apart from every stock item ('#' is no sku's) and
# seen by no stream consumer (it is never `arrived` nor `reorder_watch`).
SHORT_COUNTS_RESUME_KEY = {"sku": {"S": "#short_counts"}, "location_id": {"S": "#resume"}}
SHORT_COUNTS_RESUME_AFTER = "resume_after"
# When the last stock take of a stock item was counted (set_on_hand; timestamp's format, which sorts
# in time order): a parcel handed over before it left on_hand in that count (DynamoInventory.ship).
COUNTED_AT = "counted_at"
# Set (true) on a stock item by each write that adds units to on_hand (a receipt, a positive
# adjustment, a count above the one before, a return restocked), removed by every other stock take:
# the item was restocked since its last count, which lifts the exclusion a count made of the
# location for an order (DynamoInventory.restocked_since_count), however long after that order's
# ReserveStock runs. An attribute of the write each makes anyway, read only for orders a count excluded.
RESTOCKED_SINCE_COUNT = "restocked_since_count"
# How many times a ship's stock write is decided again when on_hand moves between its two writes.
SHIP_ATTEMPTS = 5


def _level(values: dict[str, Any]) -> StockLevel:
    values = _numbers_to_python(values)
    # Open purchase orders' expected dates (functions.adapters.purchasing.EXPECTED_PREFIX).
    expected = [value for name, value in values.items() if name.startswith("expected#")]
    if expected:
        values["next_expected_at"] = min(expected)
    return StockLevel.model_validate(values)


class DynamoInventory(InventoryRepository):
    """One item per (sku, location) holding on_hand, reserved and available = on_hand - reserved.
    DynamoDB conditions cannot do arithmetic, so `available` is stored and kept exact by every
    write, which lets one conditional UpdateItem decide each change."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def _update(self, sku: str, location_id: str, expression: str, condition: str | None, values: dict[str, Any]):
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": to_item(values),
            "ReturnValues": "ALL_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        return self._client.update_item(**request)

    def set_on_hand(
        self, sku: str, location_id: str, on_hand: int, reason: str, releasing: dict[str, int] | None = None,
        short: ShortCount | None = None, counted_at: datetime | None = None, restocked: bool = False,
        key: str | None = None,
    ) -> StockLevel:  # fmt: skip
        releasing = releasing or {}
        # A count may be higher than the last one: it is an arrival as far as the filter knows. One
        # below the reserved units is not (available stays negative until the releases land, whose
        # own writes mark the item).
        expression = (
            "SET on_hand = :n, reserved = if_not_exists(reserved, :zero), "
            "available = :n - if_not_exists(reserved, :zero), updated_at = :now, last_reason = :reason, "
            "reservations = if_not_exists(reservations, :none)"
        )
        values: dict[str, Any] = {":n": on_hand, ":zero": 0, ":now": utc_now(), ":reason": reason, ":none": {}}
        removed: list[str] = []
        if counted_at is not None:
            expression += f", {COUNTED_AT} = :counted"
            values[":counted"] = timestamp(counted_at)
        else:  # a count with no time: no parcel is set against the one before
            removed.append(COUNTED_AT)
        names: dict[str, str] = {}
        conditions = ["(attribute_not_exists(reserved) OR reserved <= :most)"]
        values[":most"] = on_hand + sum(releasing.values())
        for i, (held, units) in enumerate(sorted(releasing.items())):
            names[f"#k{i}"] = held
            values[f":h{i}"] = units
            conditions.append(f"reservations.#k{i} = :h{i}")
        if restocked and not releasing:
            expression += f", {RESTOCKED_SINCE_COUNT} = :restocked"
            values[":restocked"] = True
        else:
            removed.append(RESTOCKED_SINCE_COUNT)
        if not releasing:
            expression += f", {ARRIVED} = :arrived"
            values[":arrived"] = True
            removed += [SHORT_COUNT, SHORT_COUNTED_AT, SHORT_COUNT_ACTOR]
        elif short is not None:  # the mark the reconciler finds it by (short_counts), should its rejects not all land
            expression += f", {SHORT_COUNT} = :short, {SHORT_COUNTED_AT} = :counted_at, {SHORT_COUNT_ACTOR} = :actor"
            values.update({":short": SHORT_COUNT, ":counted_at": timestamp(short.counted_at), ":actor": short.actor})
        if removed:
            expression += f" REMOVE {', '.join(removed)}"
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeValues": to_item(values),
            "ReturnValues": "ALL_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if names:
            request["ExpressionAttributeNames"] = names
        if key is not None:
            return self._count_once(sku, location_id, on_hand, key, request)
        try:
            response = self._client.update_item(**request)
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            raise self._count_refused(sku, location_id, on_hand, from_item(error.response.get("Item", {}))) from None
        return _level(from_item(response["Attributes"]))

    @staticmethod
    def _count_refused(sku: str, location_id: str, on_hand: int, old: dict[str, Any]) -> InsufficientStock:
        reserved = old.get("reserved", "?")
        return InsufficientStock(
            f"cannot count {on_hand}: {reserved} units of {sku} are reserved at {location_id}",
            details=[{"field": "on_hand", "message": f"must be at least the {reserved} reserved units"}],
        )

    def _count_once(self, sku: str, location_id: str, on_hand: int, key: str, request: dict[str, Any]) -> StockLevel:
        """The count (its UpdateItem `request`) and its key's ledger item in one transaction, as an
        adjustment's (_adjust_once): a key already recorded there (not yet a day old) writes
        nothing, and raises CountedAlready with the level as stored, or Conflict when that key
        counted another on_hand."""
        now = int(time.time())
        ledger = {
            "sku": f"{COUNT_LEDGER}{sku}#{key}", "location_id": location_id, "on_hand": on_hand,
            "expires_at": now + ADJUSTMENT_KEY_SECONDS,
        }  # fmt: skip
        update = {name: value for name, value in request.items() if not name.startswith("ReturnValues")}
        update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        cancelled = self._with_ledger(ledger, update, now)
        if cancelled is None:
            return self._read(sku, location_id)
        reasons = cancelled.response["CancellationReasons"]
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            self._check_counted_as(ledger, ("on_hand",))
            raise CountedAlready(self._read(sku, location_id))
        if reasons[1].get("Code") == "ConditionalCheckFailed":
            raise self._count_refused(sku, location_id, on_hand, from_item(reasons[1].get("Item", {})))
        raise cancelled

    def _with_ledger(self, ledger: dict[str, Any], update: dict[str, Any], now: int) -> ClientError | None:
        """`update` and the ledger item recording its key (`ledger`, to expire after `now`) in one
        transaction: None when written, the error of a transaction DynamoDB cancelled (its
        CancellationReasons: the ledger's first, the update's second); any other error raised."""
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": to_item(ledger),
                            # An expired item the TTL has not removed yet no longer counts.
                            "ConditionExpression": "attribute_not_exists(sku) OR expires_at < :now",
                            "ExpressionAttributeValues": {":now": {"N": str(now)}},
                        }
                    },
                    {"Update": update},
                ]
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException" or not error.response.get(
                "CancellationReasons"
            ):
                raise
            return error
        return None

    def short_counts(self, before: datetime, limit: int, after: datetime | None = None) -> list[ShortCount]:
        # Paged on until `limit` marks are read: a query's page stops at 1 MB, and those past it
        # must not wait behind older marks that keep failing.
        values = {":short": {"S": SHORT_COUNT}, ":before": {"S": timestamp(before)}}
        within = f"{SHORT_COUNTED_AT} < :before"
        if after is not None:
            within = f"{SHORT_COUNTED_AT} BETWEEN :after AND :before"
            values[":after"] = {"S": timestamp(after)}
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": SHORT_COUNTS_INDEX,
            "KeyConditionExpression": f"{SHORT_COUNT} = :short AND {within}",
            "ExpressionAttributeValues": values,
        }
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            response = self._client.query(**query, Limit=limit - len(found))
            found += [from_item(item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        marks = [
            ShortCount(item["sku"], item["location_id"], item.get(SHORT_COUNT_ACTOR, "stock_take"),
                       datetime.fromisoformat(item[SHORT_COUNTED_AT]))
            for item in found
        ]  # fmt: skip
        # BETWEEN holds both ends: strictly after `after`, strictly before `before`.
        return [m for m in marks if (after is None or m.counted_at > after) and m.counted_at < before]

    def short_counts_resume(self) -> datetime | None:
        # A Query (the reconciler's grant on the table), read consistently: the pass before wrote it.
        items = self._client.query(
            TableName=self._table,
            KeyConditionExpression="sku = :sku AND location_id = :resume",
            ExpressionAttributeValues={":sku": SHORT_COUNTS_RESUME_KEY["sku"],
                                       ":resume": SHORT_COUNTS_RESUME_KEY["location_id"]},
            ConsistentRead=True,
        ).get("Items", [])  # fmt: skip
        after = items[0].get(SHORT_COUNTS_RESUME_AFTER) if items else None
        return datetime.fromisoformat(after["S"]) if after else None

    def record_short_counts_resume(self, after: datetime | None) -> None:
        # UpdateItem either way (the reconciler's grant: no PutItem or DeleteItem on the table).
        request: dict[str, Any] = {"TableName": self._table, "Key": SHORT_COUNTS_RESUME_KEY}
        if after is None:
            request["UpdateExpression"] = f"REMOVE {SHORT_COUNTS_RESUME_AFTER}"
        else:
            request["UpdateExpression"] = f"SET {SHORT_COUNTS_RESUME_AFTER} = :after"
            request["ExpressionAttributeValues"] = {":after": {"S": timestamp(after)}}
        self._client.update_item(**request)

    def short_count_finished(self, count: ShortCount) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"sku": {"S": count.sku}, "location_id": {"S": count.location_id}},
                UpdateExpression=f"REMOVE {SHORT_COUNT}, {SHORT_COUNTED_AT}, {SHORT_COUNT_ACTOR}",
                ConditionExpression=f"{SHORT_COUNTED_AT} = :counted_at",
                ExpressionAttributeValues={":counted_at": {"S": timestamp(count.counted_at)}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            # removed already, or marked by a later count: that one's to finish

    def restocked_since_count(self, items: set[tuple[str, str]]) -> set[tuple[str, str]]:
        projection = f"sku, location_id, {RESTOCKED_SINCE_COUNT}, {SHORT_COUNT}"
        return {
            (item["sku"]["S"], item["location_id"]["S"])
            for item in self._stock_items(items, projection, consistent=True)
            if item.get(RESTOCKED_SINCE_COUNT, {}).get("BOOL") and SHORT_COUNT not in item
        }

    def held_at(self, sku: str, location_id: str) -> tuple[StockLevel, dict[str, int]]:
        # A Query (the API function's grant), read consistently.
        items = self._client.query(
            TableName=self._table,
            KeyConditionExpression="sku = :sku AND location_id = :location",
            ExpressionAttributeValues={":sku": {"S": sku}, ":location": {"S": location_id}},
            ConsistentRead=True,
        ).get("Items", [])
        if not items:
            return StockLevel(sku=sku, location_id=location_id, on_hand=0, reserved=0, available=0), {}
        values = from_item(items[0])
        held = {key: int(units) for key, units in (values.get("reservations") or {}).items()}
        return _level(values), held

    def adjust(self, sku: str, location_id: str, delta: int, reason: str, key: str | None = None) -> StockLevel:
        expression = (
            "SET on_hand = if_not_exists(on_hand, :zero) + :delta, "
            "available = if_not_exists(available, :zero) + :delta, "
            "reserved = if_not_exists(reserved, :zero), updated_at = :now, last_reason = :reason, "
            "reservations = if_not_exists(reservations, :none)"
        )
        values = {":delta": delta, ":zero": 0, ":now": utc_now(), ":reason": reason, ":none": {}}
        if delta > 0:
            expression += f", {ARRIVED} = :arrived, {RESTOCKED_SINCE_COUNT} = :arrived"
            values[":arrived"] = True
        else:
            expression += f" REMOVE {ARRIVED}, {WITHDRAWN}"
        # on_hand + delta >= reserved  <=>  available >= -delta; on_hand + delta <= MAX_ON_HAND.
        if delta < 0:
            condition = "available >= :needed"
            values[":needed"] = -delta
        else:
            condition = "attribute_not_exists(on_hand) OR on_hand <= :room"
            values[":room"] = MAX_ON_HAND - delta
        if key is not None:
            return self._adjust_once(sku, location_id, delta, reason, key, expression, condition, values)
        try:
            response = self._update(sku, location_id, expression, condition, values)
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            raise self._refused(sku, location_id, delta, from_item(error.response.get("Item", {}))) from None
        return _level(from_item(response["Attributes"]))

    @staticmethod
    def _refused(sku: str, location_id: str, delta: int, old: dict[str, Any]) -> Conflict:
        """What refused the adjustment: the reserved units (a removal), or the units on hand (an addition)."""
        on_hand = f"on_hand {old.get('on_hand', 0)}"
        if delta > 0:
            return StockLimitReached(
                f"adding {delta} would take on_hand of {sku} at {location_id} past {MAX_ON_HAND:,} units",
                details=[{"field": "delta", "message": f"{on_hand}: at most {MAX_ON_HAND:,} units may be on hand"}],
            )
        return InsufficientStock(
            f"removing {-delta} would take on_hand of {sku} at {location_id} below the reserved units",
            details=[{"field": "delta", "message": f"{on_hand}, reserved {old.get('reserved', 0)}"}],
        )

    def _adjust_once(
        self, sku: str, location_id: str, delta: int, reason: str, key: str,
        expression: str, condition: str, values: dict[str, Any],
    ) -> StockLevel:  # fmt: skip
        """The adjustment and its ledger item in one transaction: a key already counted (and not
        yet a day old) changes nothing, so a retry whose first answer was lost counts once. A key
        counted for another delta or reason is a Conflict (409), as the Idempotency-Key's own
        record answers: the record is gone when the first attempt failed after this write (its
        read, its time limit), and a retry corrected under the same key would be answered as
        counted while counting nothing."""
        now = int(time.time())
        ledger = {
            "sku": f"{ADJUST_LEDGER}{sku}#{key}", "location_id": location_id, "delta": delta, "reason": reason,
            "expires_at": now + ADJUSTMENT_KEY_SECONDS,
        }  # fmt: skip
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": to_item(values),
            "ConditionExpression": condition,
        }
        cancelled = self._with_ledger(ledger, update, now)
        if cancelled is None:
            return self._read(sku, location_id)
        reasons = [reason.get("Code") for reason in cancelled.response["CancellationReasons"]]
        if reasons[0] == "ConditionalCheckFailed":
            self._check_counted_as(ledger, ("delta", "reason"))
            return self._read(sku, location_id)  # counted by an earlier attempt with this key
        if reasons[1:2] == ["ConditionalCheckFailed"]:
            raise self._refused(sku, location_id, delta, self._read(sku, location_id).model_dump())
        raise cancelled

    def _check_counted_as(self, ledger: dict[str, Any], fields: tuple[str, ...]) -> None:
        """Raise Conflict unless the ledger item of `ledger`'s key holds the same `fields` (an
        adjustment's delta and reason, a stock take's on_hand)."""
        items = self._client.query(
            TableName=self._table,
            KeyConditionExpression="sku = :sku AND location_id = :location",
            ExpressionAttributeValues={":sku": {"S": ledger["sku"]}, ":location": {"S": ledger["location_id"]}},
            ConsistentRead=True,
        ).get("Items", [])
        counted = _numbers_to_python(from_item(items[0])) if items else ledger
        if [counted.get(name) for name in fields] != [ledger[name] for name in fields]:
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )

    def _read(self, sku: str, location_id: str) -> StockLevel:
        return self.held_at(sku, location_id)[0]  # the level this change left

    # Reservations live on the item they change, in a map keyed by order#line, so reserving,
    # releasing and shipping are each one conditional UpdateItem and a repeated one is a no-op.
    def _reservation_update(self, sku: str, location_id: str, key: str, expression: str, condition: str,
                            values: dict[str, Any]) -> dict[str, Any] | None:  # fmt: skip
        """Apply the update; on a failed condition return the item as it was (None if absent)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#key": key},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:
            request["ExpressionAttributeValues"] = to_item(values)
        try:
            self._client.update_item(**request)
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return from_item(error.response.get("Item") or {})
        return None

    def reserve(self, sku: str, location_id: str, key: str, quantity: int, keep: int = 0) -> None:
        values: dict[str, Any] = {":q": quantity, ":need": quantity + keep}
        room = _room_for(1, values)
        try:
            old = self._reservation_update(
                sku, location_id, key,
                "SET reserved = reserved + :q, available = available - :q, reservations.#key = :q "
                f"REMOVE {ARRIVED}, {WITHDRAWN}",
                f"available >= :need AND attribute_not_exists(reservations.#key) AND {room}",
                values,
            )  # fmt: skip
        except ClientError as error:
            if _too_large(error):  # its map of open reservations fills the 400 KB item
                raise ReservationsFull(sku, location_id) from None
            raise
        if old is None or (old.get("reservations") or {}).get(key) == quantity:
            return  # reserved now, or by an earlier run of the same step
        if key not in (old.get("reservations") or {}) and _no_room(old, 1):
            raise ReservationsFull(sku, location_id)
        raise InsufficientStock(f"{old.get('available', 0)} of {sku} available at {location_id}, {quantity} wanted")

    def release(self, sku: str, location_id: str, key: str) -> None:
        self._reservation_update(
            sku, location_id, key,
            "SET reserved = reserved - reservations.#key, available = available + reservations.#key, "
            f"{ARRIVED} = :arrived REMOVE reservations.#key",
            "attribute_exists(reservations.#key)",
            {":arrived": True},
        )  # fmt: skip

    def shrink(self, sku: str, location_id: str, key: str, held: int, keep: int) -> None:
        if not 0 < keep < held:
            raise ValueError(f"a reservation of {held} shrinks to between 1 and {held - 1} units, not {keep}")
        self._reservation_update(
            sku, location_id, key,
            f"SET reserved = reserved - :gone, available = available + :gone, reservations.#key = :keep, "
            f"{ARRIVED} = :arrived",
            "reservations.#key = :held",
            {":gone": held - keep, ":keep": keep, ":held": held, ":arrived": True},
        )  # fmt: skip

    def rearrange(
        self, sku: str, location_id: str, held: dict[str, int], wanted: dict[str, int], keep: int = 0
    ) -> None:
        """As the port says, in one write of up to _KEYS_PER_REARRANGE keys; more (a 100-line order of
        one sku edited: its 100 keys moved to 100 new ones) in writes of that many each, every one
        giving back about as many units as it takes (_rearrangements), those that take first: none
        frees units the order still needs, and none needs many more spare units than one write would."""
        for part_held, part_wanted in _rearrangements(held, wanted, _KEYS_PER_REARRANGE):
            self._rearrange(sku, location_id, part_held, part_wanted, keep)

    def _rearrange(self, sku: str, location_id: str, held: dict[str, int], wanted: dict[str, int], keep: int) -> None:
        keys = sorted(held.keys() | wanted.keys())
        if not keys:
            return
        more = sum(wanted.values()) - sum(held.values())
        names = {f"#k{i}": key for i, key in enumerate(keys)}
        values: dict[str, Any] = {":more": more}
        conditions: list[str] = []
        sets = ["reserved = reserved + :more", "available = available - :more"]
        removes: list[str] = []
        for i, key in enumerate(keys):
            if key in held:
                conditions.append(f"reservations.#k{i} = :h{i}")
                values[f":h{i}"] = held[key]
            else:
                conditions.append(f"attribute_not_exists(reservations.#k{i})")
            if wanted.get(key):
                sets.append(f"reservations.#k{i} = :w{i}")
                values[f":w{i}"] = wanted[key]
            else:
                removes.append(f"reservations.#k{i}")
        if more > 0:
            conditions.append("available >= :need")
            values[":need"] = more + keep
        added = sum(1 for key in keys if key not in held and wanted.get(key))
        if added:
            conditions.append(_room_for(added, values))
        if more < 0:
            sets.append(f"{ARRIVED} = :arrived")
            values[":arrived"] = True
        else:
            removes += [ARRIVED, WITHDRAWN]
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"sku": {"S": sku}, "location_id": {"S": location_id}},
                UpdateExpression=f"SET {', '.join(sets)}" + (f" REMOVE {', '.join(removes)}" if removes else ""),
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item(values),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if _too_large(error):  # more keys than its full map of open reservations has room for
                raise ReservationsFull(sku, location_id) from None
            if not _is_conditional_failure(error):
                raise
            old = from_item(error.response.get("Item") or {})
            reservations = old.get("reservations") or {}
            if all(reservations.get(key) == (wanted.get(key) or None) for key in keys):
                return  # rearranged by an earlier run of the same step
            if added and all(reservations.get(key) == held[key] for key in held) and _no_room(old, added):
                raise ReservationsFull(sku, location_id) from None
            raise InsufficientStock(
                f"{old.get('available', 0)} of {sku} available at {location_id}, or its reservations changed"
            ) from None

    def ship(self, sku: str, location_id: str, key: str, handed_at: datetime | None = None) -> None:
        """The parcel left (a fact, never refused here): its reservation goes, and its units leave
        on_hand when on_hand holds them. Only a stock take recorded below the reserved units, its
        rejects not landed yet, leaves on_hand below a reservation; a count counts every unit there,
        so one below this parcel's units was taken after it left: the count stands (on_hand as
        counted, the reservation's units back to available) and on_hand never goes below zero. So
        does a count recorded after `handed_at` (COUNTED_AT), whatever it counted: the shelf was
        counted without the parcel, its units out of on_hand already (a ship whose stock step died,
        finished by the Orders stream's record or sent again after the count). Each write
        conditional on what it read, the count's time among it; changed between them, it is
        decided again."""
        leaves = "attribute_exists(reservations.#key) AND on_hand >= reservations.#key"
        counted_out = "on_hand < :held"
        values: dict[str, Any] = {}
        if handed_at is not None:
            leaves += f" AND (attribute_not_exists({COUNTED_AT}) OR {COUNTED_AT} <= :handed)"
            counted_out = f"({counted_out} OR {COUNTED_AT} > :handed)"
            values[":handed"] = timestamp(handed_at)
        for _ in range(SHIP_ATTEMPTS):
            old = self._reservation_update(
                sku, location_id, key,
                "SET reserved = reserved - reservations.#key, on_hand = on_hand - reservations.#key "
                f"REMOVE reservations.#key, {ARRIVED}, {WITHDRAWN}",
                leaves,
                values,
            )  # fmt: skip
            held = (old or {}).get("reservations", {}).get(key)
            if old is None or held is None:
                return  # shipped now, or by an earlier run (or released meanwhile)
            counted = self._reservation_update(
                sku, location_id, key,
                f"SET reserved = reserved - :held, available = available + :held, {ARRIVED} = :arrived "
                "REMOVE reservations.#key",
                f"reservations.#key = :held AND {counted_out}",
                {**values, ":held": held, ":arrived": True},
            )  # fmt: skip
            if counted is None:
                after = handed_at is not None and old.get(COUNTED_AT, "") > values[":handed"]
                logger.warning(
                    "parcel shipped after a stock take counted it gone: the count stands" if after else
                    "parcel shipped after a stock take counted fewer units than it carries: the count stands",
                    extra={"sku": sku, "location_id": location_id, "key": key, "units": int(held),
                           "on_hand": int(old.get("on_hand", 0)), "counted_at": old.get(COUNTED_AT),
                           "handed_at": values.get(":handed")},
                )  # fmt: skip
                return
        raise ReservationsChanged(f"on_hand of {sku} at {location_id} kept changing as a parcel left; ship it again")

    def restock(self, sku: str, location_id: str, key: str, quantity: int, received_at: datetime | None = None) -> None:
        """A ledger item (sku `restocked#<key>`, which no real sku can be: `#` is not allowed in
        one) put on attribute_not_exists in the same transaction as the count: returns are rare
        next to orders, so the transaction's double write is cheap, and the stock item never
        collects a key per return the way a map on it would. The count is conditional on on_hand
        staying within MAX_ON_HAND; refused so, the ledger item alone records the key as refused
        (`refused`), so no run of the step adds the units after all. With `received_at`, the count
        is conditional too on no stock take recorded after it (COUNTED_AT, as a ship's on its
        hand-over): such a count had the units on the shelf, so the ledger item alone records the key
        (`counted_at`, that count's time) and on_hand stays as counted. The stock item as the
        refusal found it (ReturnValuesOnConditionCheckFailure) says which, at no read of its own."""
        ledger = {"sku": f"{RESTOCK_LEDGER}{key}", "location_id": location_id, "quantity": quantity,
                  "restocked_at": utc_now()}  # fmt: skip
        condition = "(attribute_not_exists(on_hand) OR on_hand <= :room)"
        values: dict[str, Any] = {":q": quantity, ":zero": 0, ":now": utc_now(), ":reason": f"return {key}",
                                  ":none": {}, ":arrived": True, ":room": MAX_ON_HAND - quantity}  # fmt: skip
        if received_at is not None:
            condition += f" AND (attribute_not_exists({COUNTED_AT}) OR {COUNTED_AT} <= :received)"
            values[":received"] = timestamp(received_at)
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": to_item(ledger),
                            "ConditionExpression": "attribute_not_exists(sku)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
                            "UpdateExpression": (
                                "SET on_hand = if_not_exists(on_hand, :zero) + :q, "
                                "available = if_not_exists(available, :zero) + :q, "
                                "reserved = if_not_exists(reserved, :zero), updated_at = :now, last_reason = :reason, "
                                f"reservations = if_not_exists(reservations, :none), {ARRIVED} = :arrived, "
                                f"{RESTOCKED_SINCE_COUNT} = :arrived"
                            ),
                            "ConditionExpression": condition,
                            "ExpressionAttributeValues": to_item(values),
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        }
                    },
                ]
            )  # fmt: skip
        except ClientError as error:
            cancelled = error.response.get("CancellationReasons") or []
            reasons = [reason.get("Code") for reason in cancelled]
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            if reasons[:1] == ["ConditionalCheckFailed"]:
                return  # restocked (or refused) by an earlier run of the same step
            if reasons[1:2] != ["ConditionalCheckFailed"]:
                raise
            count = from_item(cancelled[1].get("Item") or {}).get(COUNTED_AT)
            if received_at is not None and count is not None and count > values[":received"]:
                # a stock take since the units arrived counted them: the key is recorded, nothing added
                recorded = ledger | {COUNTED_AT: count}
                logger.warning(
                    "returned units restocked after a stock take counted them on the shelf: the count stands",
                    extra={"sku": sku, "location_id": location_id, "key": key, "units": quantity,
                           "counted_at": count, "received_at": values[":received"]},
                )  # fmt: skip
            else:  # on_hand would pass the cap: the key is recorded as refused, the units stay off it
                recorded = ledger | {"refused": StockLimitReached.code}
            try:
                self._client.put_item(
                    TableName=self._table, Item=to_item(recorded), ConditionExpression="attribute_not_exists(sku)"
                )
            except ClientError as refused:
                if not _is_conditional_failure(refused):
                    raise
                # else recorded (restocked, refused or counted) by a run of the same step meanwhile

    def not_restocked(self, location_id: str, keys: list[str]) -> dict[str, int]:
        wanted = [{"sku": {"S": f"{RESTOCK_LEDGER}{key}"}, "location_id": {"S": location_id}} for key in keys]
        found = (from_item(item) for item in batch_get(self._client, self._table, wanted, consistent=True))
        return {
            item["sku"].removeprefix(RESTOCK_LEDGER): int(item["quantity"]) for item in found if item.get("refused")
        }

    def _stock_items(
        self, items: Iterable[tuple[str, str]], projection: str | None = None, names: dict[str, str] | None = None,
        *, consistent: bool = False,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """The stock items of `items` (sku, location_id) that exist, projected (whole without a
        `projection`). A sku asked about at up to 100 locations is looked up by key, its keys
        batched with the other skus' (pages of 100); one asked about at more is read with a Query
        of its stock items from the first to the last of those locations, the others in between
        left out: an order over a large network costs a request per sku (and per MB of its items),
        not one per 100 of its locations. The range holds no backorder queue entry (they sort
        before any location id) and no ledger item (those live under keys of their own). Its read
        units are the sizes of the items it reads summed, where the BatchGetItem rounds each item
        up to 4 KB and charges a missing one too: over 100 locations it costs less, unless the
        items between not asked about outweigh that."""
        locations_by_sku: dict[str, set[str]] = defaultdict(set)
        for sku, location_id in items:
            locations_by_sku[sku].add(location_id)
        keys: list[dict[str, Any]] = []
        for sku, location_ids in sorted(locations_by_sku.items()):
            if len(location_ids) <= 100:
                keys.extend({"sku": {"S": sku}, "location_id": {"S": loc}} for loc in sorted(location_ids))
                continue
            query: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "sku = :sku AND location_id BETWEEN :first AND :last",
                "ExpressionAttributeValues": {
                    ":sku": {"S": sku}, ":first": {"S": min(location_ids)}, ":last": {"S": max(location_ids)},
                },
                **read_options(projection, names, consistent),
            }  # fmt: skip
            for page in self._client.get_paginator("query").paginate(**query):
                yield from (item for item in page.get("Items", []) if item["location_id"]["S"] in location_ids)
        yield from batch_get(self._client, self._table, keys, projection, names, consistent=consistent)

    def reservations(self, keys_by_item: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], int]:
        """A read (`_stock_items`) that projects only the asked-for map entries, never a hot
        item's whole reservations map. A consistent read: what is released or topped up follows
        from it, and an eventually consistent one could miss a reservation made a moment before (a
        cancel right after the allocation would then leave it held for good)."""
        return self._holdings(keys_by_item, set())[0]

    def holdings(
        self, keys_by_item: dict[tuple[str, str], list[str]], skus: set[str], location_ids: Iterable[str]
    ) -> tuple[dict[tuple[str, str, str], int], dict[str, list[StockLevel]]]:
        """reservations and the levels at `location_ids` from one consistent read of each stock
        item (ReserveStock's: a plain read of the levels beside it cost a request and half a read
        unit per item more, and each read is billed on the whole item, reservations map and all)."""
        wanted = set(location_ids)
        return self._holdings(keys_by_item, {(sku, loc) for sku in skus for loc in wanted}, skus)

    def _holdings(
        self, keys_by_item: dict[tuple[str, str], list[str]], leveled: set[tuple[str, str]],
        skus: Iterable[str] = (),
    ) -> tuple[dict[tuple[str, str, str], int], dict[str, list[StockLevel]]]:  # fmt: skip
        """The asked-for reservations of `keys_by_item`, and the levels of the `leveled` items (of
        `skus`), in one consistent read of the items of either: of as many as the keys need, each
        projection within MAX_EXPRESSION_BYTES (_RESERVATIONS_PER_READ keys), an item's keys
        beside each other so that an item is read in as few of them as its keys take, its level
        in the first."""
        wanted = list(dict.fromkeys(key for _, keys in sorted(keys_by_item.items()) for key in sorted(keys)))
        levels: dict[str, list[StockLevel]] = {sku: [] for sku in skus}
        if not wanted and not leveled:
            return {}, levels
        attributes = _LEVEL_ATTRIBUTES if leveled else _LEVEL_ATTRIBUTES[:2]
        found: dict[tuple[str, str, str], int] = {}
        for start in range(0, max(len(wanted), 1), _RESERVATIONS_PER_READ):
            part = wanted[start : start + _RESERVATIONS_PER_READ]
            names = {f"#k{i}": key for i, key in enumerate(part)}
            projection = ", ".join(attributes + [f"reservations.{name}" for name in names])
            asked_here = set(part)
            items = {at for at, keys in keys_by_item.items() if asked_here.intersection(keys)}
            for item in self._stock_items(items | (leveled if start == 0 else set()), projection, names or None,
                                          consistent=True):  # fmt: skip
                values = from_item(item)
                at = (values["sku"], values["location_id"])
                if start == 0 and at in leveled:
                    levels[values["sku"]].append(_level({k: v for k, v in values.items() if k != "reservations"}))
                asked = asked_here.intersection(keys_by_item.get(at, ()))
                for key, quantity in (values.get("reservations") or {}).items():
                    if key in asked:
                        found[(*at, key)] = int(quantity)
        return found, levels

    def levels(
        self, skus: set[str], location_ids: Iterable[str] | None = None, *, consistent: bool = False
    ) -> dict[str, list[StockLevel]]:
        result: dict[str, list[StockLevel]] = {sku: [] for sku in skus}
        if location_ids is not None:
            wanted = set(location_ids)
            items = [(sku, loc) for sku in skus for loc in wanted]
            attributes = "sku, location_id, on_hand, reserved, available"
            for item in self._stock_items(items, attributes, consistent=consistent):
                level = _level(from_item(item))
                result[level.sku].append(level)
            return result
        for sku in skus:
            paginator = self._client.get_paginator("query")
            # A location id starts with a letter or digit ("0" sorts before any): the sku's
            # backorder queue entries ("#backorder#...", DynamoBackorderQueue) sort before them.
            pages = paginator.paginate(
                TableName=self._table,
                KeyConditionExpression="sku = :sku AND location_id >= :first",
                ExpressionAttributeValues={":sku": {"S": sku}, ":first": {"S": "0"}},
                ConsistentRead=True,  # GET /inventory after a write, and the reorder points' reads (no order's path)
            )
            for page in pages:
                result[sku].extend(_level(from_item(item)) for item in page.get("Items", []))
        return result

    def expected(self, items: set[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """A read (`_stock_items`) of the whole items: the `expected#<po id>` attributes cannot be
        named in a projection (their names are the POs'). Only backordered orders' reads come here."""
        found: dict[tuple[str, str], datetime] = {}
        for item in self._stock_items(items):
            level = _level(from_item(item))
            if level.next_expected_at is not None:
                found[(level.sku, level.location_id)] = level.next_expected_at
        return found


# --- Backorder queues ----------------------------------------------------------------------------

BACKORDER_PREFIX = "#backorder#"
# Set on a queue entry once its order is written backordered (DynamoBackorders.recorded).
BACKORDER_RECORDED = "reorder_watch"
# On a queue entry: its order's version when it wrote the entry (DynamoBackorders.leave).
ENTRY_VERSION = "order_version"
# On a queue entry: its order held every unit of the sku when it went backordered (WaitingOrder.holds).
ENTRY_HOLDS = "holds"
# On a stock item: the queue entry after which an arrival's walk there goes on, and the stream record
# that handed it on (DynamoBackorders.walk_from; read back with `wake_after`).
WALK_AFTER, WALK_BY = "walk_after", "walk_by"
# Whether the walk handed on is a restock's (BackorderAllocator.arrived's `restocked`).
WALK_RESTOCKED = "walk_restocked"
# On a queue entry: the locations whose arrivals' walks stopped at it, its order not yet written
# backordered, and those of them that were restocks' (DynamoBackorders.stop; handed on by `recorded`).
WALKS_STOPPED, WALKS_STOPPED_RESTOCKED = "walks_stopped", "walks_stopped_restocked"


class DynamoBackorders(Backorders):
    """Each sku's queue lives beside its stock in the Inventory table: partition `sku`, sort key
    `#backorder#<created_at>#<order id>` (no location id starts with "#"), so one Query on the
    sku's partition reads its waiting orders oldest first and no other table is needed. The
    stream consumer gets an entry's change only once it is marked (`recorded`: the reorder points
    buy what its order lacks); entries carry no `arrived` marker. A fill is one
    TransactWriteItems over the Inventory and Orders tables (IAM authorizes its items as
    UpdateItem on each)."""

    def __init__(self, client: Any, inventory_table: str, orders_table: str, history_table: str | None = None):
        self._client = client
        self._table = inventory_table
        self._orders_table = orders_table
        self._history_table = history_table  # the Catalog table: a long history's pages (DynamoOrders)

    @staticmethod
    def _key(sku: str, entry: WaitingOrder) -> dict[str, Any]:
        sort_key = f"{BACKORDER_PREFIX}{timestamp(entry.created_at)}#{entry.order_id}"
        return {"sku": {"S": sku}, "location_id": {"S": sort_key}}

    def add(self, sku: str, entry: WaitingOrder) -> None:
        # An entry written again (its order backordered again after an edit) keeps where it is
        # bought for (`bought_at`: bought there, it is not bought elsewhere again) and loses its
        # mark, so that being written backordered again marks it anew (what it lacks may differ).
        values = {":order_id": {"S": entry.order_id}, ":created_at": {"S": timestamp(entry.created_at)}}
        sets = "SET order_id = :order_id, created_at = :created_at"
        if entry.supplied_by is not None:
            # Where its order may take units: an arrival elsewhere passes it over unread.
            sets += ", supplied_by = :supplied_by"
            values[":supplied_by"] = {"S": entry.supplied_by}
        if entry.version is not None:
            # The order's version as it wrote the entry: a removal after a write of the order before
            # this one leaves it (`leave`).
            sets += f", {ENTRY_VERSION} = :version"
            values[":version"] = {"N": str(entry.version)}
        removes = [BACKORDER_RECORDED]
        if entry.holds:
            # Its order holds every unit of the sku: the readers of what orders lack pass it over.
            sets += f", {ENTRY_HOLDS} = :holds"
            values[":holds"] = {"BOOL": True}
        else:
            removes.append(ENTRY_HOLDS)
        self._client.update_item(
            TableName=self._table,
            Key=self._key(sku, entry),
            UpdateExpression=f"{sets} REMOVE {', '.join(removes)}",
            ExpressionAttributeValues=values,
        )

    def add_if_absent(self, sku: str, entry: WaitingOrder) -> bool:
        """Write `entry` as `add` does, unless one of its order is there already (a one-off upgrade:
        backfill_holding_entries); whether it was written."""
        item = {
            "sku": {"S": sku},
            "location_id": self._key(sku, entry)["location_id"],
            "order_id": {"S": entry.order_id},
            "created_at": {"S": timestamp(entry.created_at)},
            **({"supplied_by": {"S": entry.supplied_by}} if entry.supplied_by is not None else {}),
            **({ENTRY_VERSION: {"N": str(entry.version)}} if entry.version is not None else {}),
            **({ENTRY_HOLDS: {"BOOL": True}} if entry.holds else {}),
        }
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(sku)")
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return False
        return True

    def remove(self, sku: str, entry: WaitingOrder) -> None:
        # The entry as it was comes back with the delete (no read more): the walks still stopped at
        # it go on (a step that died before handing them on, its order then allocated or cancelled).
        answer = self._client.delete_item(TableName=self._table, Key=self._key(sku, entry), ReturnValues="ALL_OLD")
        self._walk_on(sku, entry, answer.get("Attributes", {}))

    def leave(self, sku: str, entry: WaitingOrder, version: int) -> None:
        try:
            answer = self._client.delete_item(
                TableName=self._table,
                Key=self._key(sku, entry),
                ConditionExpression=f"attribute_not_exists({ENTRY_VERSION}) OR {ENTRY_VERSION} < :version",
                ExpressionAttributeValues={":version": {"N": str(version)}},
                ReturnValues="ALL_OLD",  # the walks still stopped at it go on, as at `remove`
            )
        except ClientError as error:
            # Refused: its order wrote it again since (it waits again), and it stays.
            if not _is_conditional_failure(error):
                raise
            return
        self._walk_on(sku, entry, answer.get("Attributes", {}))

    def record_bought_at(self, sku: str, entry: WaitingOrder, location_id: str) -> None:
        self._set(sku, entry, "bought_at", {"S": location_id})

    def recorded(self, sku: str, entry: WaitingOrder) -> None:
        # `reorder_watch` (functions/adapters/purchasing.py): the mark the stream's second filter
        # passes (template.yaml, BackorderFunction), as for a stock item with a reorder point.
        # The entry as it was comes back with the write (no read more): the walks stopped at it.
        was = self._set(sku, entry, BACKORDER_RECORDED, {"BOOL": True})
        if not self._walk_on(sku, entry, was or {}):
            return
        # Only once every walk is handed on: a step that dies before finds them again when it
        # marks the entry anew. None is added since: the entry is marked (stop).
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(sku, entry),
                UpdateExpression=f"REMOVE {WALKS_STOPPED}, {WALKS_STOPPED_RESTOCKED}",
                ConditionExpression="attribute_exists(order_id)",  # gone meanwhile: nothing to keep
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise

    def walked_past(self, sku: str, entry: WaitingOrder) -> None:
        try:
            answer = self._client.update_item(
                TableName=self._table,
                Key=self._key(sku, entry),
                UpdateExpression=f"REMOVE {WALKS_STOPPED}, {WALKS_STOPPED_RESTOCKED}",
                ConditionExpression="attribute_exists(order_id)",
                ReturnValues="ALL_OLD",
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return
        self._walk_on(sku, entry, answer.get("Attributes", {}))

    def _walk_on(self, sku: str, entry: WaitingOrder, was: dict[str, Any]) -> bool:
        """Hand on from after `entry` each walk that stopped at it, as the entry `was`; whether any had."""
        stopped = set(was.get(WALKS_STOPPED, {}).get("SS", []))
        restocked = set(was.get(WALKS_STOPPED_RESTOCKED, {}).get("SS", []))
        # Named by the order's write of the entry: handed on again (a retried step), the same
        # record's hand-on is refused unless another was written there since (walk_from).
        version = was[ENTRY_VERSION]["N"] if ENTRY_VERSION in was else entry.version
        by = f"stopped-at#{entry.order_id}#{version}"
        for location_id in sorted(stopped):
            self.walk_from(sku, location_id, entry, by, location_id in restocked)
        return bool(stopped)

    def stop(self, sku: str, entry: WaitingOrder, location_id: str, restocked: bool) -> bool:
        if entry.version is None:
            return False  # written before entries said their version: the order's wait cannot be told
        at = {"SS": [location_id]}
        adds = f"{WALKS_STOPPED} :at" + (f", {WALKS_STOPPED_RESTOCKED} :at" if restocked else "")
        # Kept only while the order is still `authorized` at the entry's version, in one transaction:
        # its `backordered` write then lands after the stop, and so does what hands the stop on
        # (`recorded`, or `walked_past` once that write lost). A stop landing after a write that lost
        # to a hold, a cancel or an edit was kept on its entry with nothing left to hand it on.
        stop = {
            "Update": {
                "TableName": self._table,
                "Key": self._key(sku, entry),
                "UpdateExpression": f"ADD {adds}",
                "ConditionExpression": (
                    f"attribute_exists(order_id) AND {ENTRY_VERSION} = :version "
                    f"AND attribute_not_exists({BACKORDER_RECORDED})"
                ),
                "ExpressionAttributeValues": {":at": at, ":version": {"N": str(entry.version)}},
            }
        }
        check = order_check(self._orders_table, entry.order_id, OrderStatus.AUTHORIZED, entry.version)
        try:
            self._client.transact_write_items(TransactItems=[check, stop])
        except ClientError as error:
            reasons = cancellation_reasons(error)
            if reasons is None:
                raise
            if "TransactionConflict" in reasons:
                # A write of the order or the entry in progress: read again, the order might be
                # passed over as `authorized` still. The walk's batch is retried (it is idempotent).
                raise TransientError(f"order {entry.order_id} or its queue entry was being written") from None
            if "ConditionalCheckFailed" not in reasons:
                raise
            return False
        return True

    def _set(self, sku: str, entry: WaitingOrder, name: str, value: dict[str, Any]) -> dict[str, Any] | None:
        """Set one attribute on the entry, unless it is gone (its order was filled meanwhile):
        an update alone would make a new item of the key, an entry naming no order. The entry as
        it was (None: gone)."""
        try:
            answer = self._client.update_item(
                TableName=self._table,
                Key=self._key(sku, entry),
                UpdateExpression="SET #name = :value",
                ConditionExpression="attribute_exists(order_id)",
                ExpressionAttributeNames={"#name": name},
                ExpressionAttributeValues={":value": value},
                ReturnValues="ALL_OLD",
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return None
        return answer.get("Attributes", {})

    def waiting(self, sku: str, after: WaitingOrder | None, limit: int) -> list[WaitingOrder]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "sku = :sku AND begins_with(location_id, :prefix)",
            "ExpressionAttributeValues": {":sku": {"S": sku}, ":prefix": {"S": BACKORDER_PREFIX}},
            "ProjectionExpression": f"order_id, created_at, bought_at, supplied_by, {ENTRY_HOLDS}, {ENTRY_VERSION}",
            "Limit": limit,
        }
        if after is not None:
            query["ExclusiveStartKey"] = self._key(sku, after)
        items = self._client.query(**query).get("Items", [])
        return [
            WaitingOrder(
                created_at=datetime.strptime(item["created_at"]["S"], TIME_FORMAT).replace(tzinfo=UTC),
                order_id=item["order_id"]["S"],
                bought_at=item["bought_at"]["S"] if "bought_at" in item else None,
                supplied_by=item["supplied_by"]["S"] if "supplied_by" in item else None,
                holds=item.get(ENTRY_HOLDS, {}).get("BOOL", False),
                version=int(item[ENTRY_VERSION]["N"]) if ENTRY_VERSION in item else None,
            )
            for item in items
        ]

    def walk_from(self, sku: str, location_id: str, after: WaitingOrder, by: str, restocked: bool = False) -> None:
        """Hand an arrival's walk of `sku`'s queue on from after `after` (BackorderAllocator.arrived):
        `walk_after` names the entry and `walk_by` the stream record handing it on (`by`, its
        sequence number) on the stock item the units arrived at, with ARRIVED, so that the change
        is a record the stream's filter passes and the function goes on from there
        (functions/backorders). Nothing when that record handed it on already (redelivered: the
        walk it started goes on once), nor when the stock item is gone (no units to give).
        `walk_restocked`: whether the walk is a restock's, which the walk handed on stays."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"sku": {"S": sku}, "location_id": {"S": location_id}},
                UpdateExpression=(
                    f"SET {WALK_AFTER} = :after, {WALK_BY} = :by, {ARRIVED} = :arrived, {WALK_RESTOCKED} = :restocked"
                ),
                ConditionExpression=f"attribute_exists(sku) AND (attribute_not_exists({WALK_BY}) OR {WALK_BY} <> :by)",
                ExpressionAttributeValues={
                    ":after": {"S": f"{timestamp(after.created_at)}#{after.order_id}"},
                    ":by": {"S": by},
                    ":arrived": {"BOOL": True},
                    ":restocked": {"BOOL": restocked},
                },
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise

    def _top_ups(self, sku: str, location_id: str, top_ups: list[TopUp]) -> dict[str, Any]:
        """One Update of a stock item for all its top-ups (a transaction may name an item once). The
        map is named `#r`: an order of 100 lines of one sku tops up 100 keys of one item, whose
        conditions spelt `reservations` out ran to 4.4 KB, past DynamoDB's 4 KB expression."""
        more = sum(t.quantity - t.held for t in top_ups)
        names: dict[str, str] = {"#r": "reservations"}
        # The write itself keeps the safety stock back, as a reservation's does (DynamoInventory.reserve).
        values: dict[str, Any] = {":more": more, ":need": more + max(t.keep for t in top_ups)}
        sets, conditions = [], ["available >= :need"]
        for n, t in enumerate(top_ups):
            names[f"#k{n}"] = t.key
            values[f":q{n}"] = t.quantity
            sets.append(f"#r.#k{n} = :q{n}")
            if t.held:
                values[f":h{n}"] = t.held
                conditions.append(f"#r.#k{n} = :h{n}")
            else:
                conditions.append(f"attribute_not_exists(#r.#k{n})")
        if added := sum(1 for t in top_ups if not t.held):
            conditions.append(_room_for(added, values))
        return {
            "Update": {
                "TableName": self._table,
                "Key": {"sku": {"S": sku}, "location_id": {"S": location_id}},
                "UpdateExpression": "SET reserved = reserved + :more, available = available - :more, "
                + ", ".join(sets)
                + f" REMOVE {ARRIVED}, {WITHDRAWN}",
                "ConditionExpression": " AND ".join(conditions),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_item(values),
                # The item as it was, in the refusal's reason: whether its map had room (fill).
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def fill(self, order: Order, expected: Order, entries: list[HistoryEntry], top_ups: list[TopUp]) -> None:
        check_successor(expected, order)
        by_item: dict[tuple[str, str], list[TopUp]] = {}
        for t in top_ups:
            by_item.setdefault((t.sku, t.location_id), []).append(t)
        stock_items = sorted(by_item)
        items = [self._top_ups(sku, location_id, by_item[(sku, location_id)]) for sku, location_id in stock_items]
        items.append({"Update": order_update(self._orders_table, order, expected, entries)})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            for item, reason in zip(stock_items, reasons, strict=False):
                if reason.get("Code") == "ValidationError" and "maximum allowed size" in str(reason.get("Message")):
                    raise ReservationsFull(*item) from None  # its map of open reservations fills the item
                added = sum(1 for t in by_item[item] if not t.held)
                if (
                    reason.get("Code") == "ConditionalCheckFailed"
                    and added
                    and _no_room(from_item(reason.get("Item") or {}), added)
                ):
                    raise ReservationsFull(*item) from None  # no room for another reservation (RESERVATIONS_ROOM)
            # A failed condition, or another transaction on one of the items (TransactionConflict):
            # nothing was written either way.
            if error.response["Error"]["Code"] == "TransactionCanceledException":
                raise StaleVersion(f"order {order.id} or its stock changed while its backorder was filled") from None
            raise
        bound_history_written(self._client, self._orders_table, self._history_table, order.id)
