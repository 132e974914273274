"""The access log of an order: who read it (recorded per request, asynchronously) and who changed it (its history)."""

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from core.cursors import cursor_document, cursor_of
from core.errors import InvalidCursor
from core.models import Shown, utc_now
from core.services import Clock, OrderQueries

# The API's reads of an order, by (method, resource as API Gateway names it): the action each is
# recorded as. Reading the access log is itself a read of the order; so is reading one of its
# returns by the return's id (its answer names the order).
READS: dict[tuple[str, str], str] = {
    ("GET", "/orders/{order_id}"): "get",
    ("GET", "/orders/{order_id}/history"): "history",
    ("GET", "/orders/{order_id}/returns"): "returns",
    ("GET", "/returns/{return_id}"): "returns",
    ("GET", "/orders/{order_id}/refunds"): "refunds",
    ("GET", "/orders/{order_id}/notifications"): "notifications",
    ("GET", "/orders/{order_id}/access-log"): "access_log",
}

# The API's lists that answer orders (or returns) whole: each one listed is a read of its order,
# recorded as a read by its id would be (a listed order as `list`, with the label links it handed out).
# So is each stored order a sourcing what-if names (its lines, skus and the distances to where it goes).
LIST_READS: dict[tuple[str, str], str] = {
    ("GET", "/orders"): "list",
    ("GET", "/returns"): "returns",
    ("POST", "/sourcing/simulate"): "simulate",
    # A batch of confirmations answers each order it confirmed (its status and version, the shipment's
    # status): each one it wrote no history entry on (a shipment confirmed already, the batch replayed
    # under its Idempotency-Key) is read, as the single routes' changes that change nothing are (CHANGES).
    ("POST", "/shipments/confirmations"): "confirm",
}

# The API's changes of an order that answer with the order (or its new return or refund, or the
# return received): the action each is recorded as when it wrote no history entry nor return (a
# cancel of a cancelled order, an Idempotency-Key replayed, a receipt received again), for it
# answered with what a read shows all the same: a read of it. One that wrote its entry is a read
# too when its answer handed out label links (a shipment's, a return's): its entry is the change,
# and says nothing of the links the key was given.
CHANGES: dict[tuple[str, str], str] = {
    ("POST", "/orders"): "place",  # the order is the answer's, not the path's
    ("PATCH", "/orders/{order_id}"): "edit",
    ("POST", "/orders/{order_id}/cancel"): "cancel",
    ("POST", "/orders/{order_id}/hold"): "hold",
    ("POST", "/orders/{order_id}/release"): "release",
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/ship"): "ship",
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/deliver"): "deliver",
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/ready"): "ready",
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/reject"): "reject",
    ("POST", "/orders/{order_id}/returns"): "return",
    ("POST", "/orders/{order_id}/refunds"): "refund",
    # A return's own: the order is the return's. A return approved or rejected always wrote it (a
    # repeat is 409): recorded for the label link an approval answers, which a request may too.
    ("POST", "/returns/{return_id}/approve"): "approve_return",
    ("POST", "/returns/{return_id}/reject"): "reject_return",
    ("POST", "/returns/{return_id}/receive"): "receive",
}


class AccessEntry(Shown):
    """`{at, actor, action, detail}` of GET /orders/{id}/access-log: `actor` the API key id (or
    `workflow` and the other system actors of the history for a change)."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any] | None = None


# The longest request id a read may have: a cursor names the last read its page showed by it, and
# one naming a longer id is refused (API Gateway's are 36 characters).
_MAX_KEY = 200


class OrderRead(BaseModel, defer_build=True):
    """One read of an order, as the API queues it: `request_id` (API Gateway's) makes recording it
    twice (a redelivered message) record it once."""

    # No read the API queues has a longer one; one sent by hand that had would be stored, and the
    # page that showed it would hand out a cursor the next page refuses.
    request_id: str = Field(max_length=_MAX_KEY)
    order_id: str
    at: AwareDatetime
    actor: str
    action: str
    detail: dict[str, Any] | None = None

    @field_validator("at")
    @classmethod
    def _at_in_utc(cls, at: datetime) -> datetime:
        """A read's time in UTC, as the API's clock gives it: the store keys a read by its time as
        written, and compares it with the changes' (a read sent to the queue by hand, as the runbooks
        do, may be written at another offset; one with no zone is refused, a poison message)."""
        return at.astimezone(UTC)


class ReadRecorder(ABC):
    @abstractmethod
    def record(self, read: OrderRead) -> None:
        """Queue the read for the access log (the API's side: never a table write in the read)."""

    def record_all(self, reads: list[OrderRead]) -> None:
        """Queue each of `reads` (a list's: one per order listed)."""
        for read in reads:
            self.record(read)


class AccessLogStore(ABC):
    @abstractmethod
    def add(self, read: OrderRead) -> None:
        """Store the read; storing the same request's read again changes nothing."""

    def add_all(self, reads: list[OrderRead]) -> None:
        """Store each of `reads` (a queued message's: a list's reads travel together)."""
        for read in reads:
            self.add(read)

    @abstractmethod
    def reads(self, order_id: str) -> list[OrderRead]:
        """Every stored read of the order, oldest first."""

    def reads_after(self, order_id: str, at: datetime | None, request_id: str | None, limit: int) -> list[OrderRead]:
        """Up to `limit` reads of the order, oldest first (by time, then request id): those after
        (`at`, `request_id`), or with `request_id` None those at `at` or later; from the first with
        `at` None. A store answers it with one bounded query; this reads them all."""

        def later(read: OrderRead) -> bool:
            if at is None:
                return True
            if request_id is None:
                return read.at >= at
            return (read.at, read.request_id) > (at, request_id)

        return sorted((r for r in self.reads(order_id) if later(r)), key=lambda r: (r.at, r.request_id))[:limit]


class AccessLog:
    """GET /orders/{id}/access-log: the order's reads and its changes, oldest first."""

    def __init__(self, orders: OrderQueries, store: AccessLogStore, clock: Clock = utc_now):
        self._orders = orders
        self._store = store
        self._clock = clock

    def page(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[AccessEntry], str | None]:
        """Up to `limit` entries, oldest first, after `cursor` (the one a previous page returned),
        and the cursor of the next page (None: none). Every read of an order stays in its log for
        400 days, so a much-read order's log is read a page at a time: one bounded query of its
        reads, merged with its changes (ties: the change first, then reads by request id).

        A change is known by its place in the order's history, which only grows (OrderQueries.history:
        its entries where they are stored), a read by its time and request id (its key in the
        store): the cursor names how many changes the pages before showed and the last read they
        showed, and the next page goes on from both. A change written after a page was read is on
        the next page wherever its time puts it, never skipped for a time before the cursor's.

        A walk shows the reads made before its first page (the cursor names that time too): each
        page is a read of the order, stored a moment later, so a walk of one entry a page that
        went on to the reads made since met its own last page on every page and never ended."""
        # The history also answers NotFound for an order the caller may not see. Read consistently,
        # as a page of the history is: a read a moment behind holds fewer changes than the cursor
        # of the page before may count (422 for a good cursor).
        history = self._orders.history(order_id, channel, consistent=True)
        shown, read_after, until = (0, None, None) if cursor is None else _decode_cursor(cursor, order_id, history)
        # A cursor issued before walks were bounded is bounded from the page it asks for.
        until = until or self._clock()
        changes = history[shown : shown + limit + 1]
        at, request_id = read_after or (None, None)
        # Oldest first: the reads past the walk's start, and all after them, are the next walk's.
        reads = [read for read in self._store.reads_after(order_id, at, request_id, limit + 1) if read.at < until]
        page: list[AccessEntry] = []
        taken = read = 0
        while len(page) < limit and (taken < len(changes) or read < len(reads)):
            if read == len(reads) or (taken < len(changes) and changes[taken].at <= reads[read].at):
                page.append(_change_entry(changes[taken]))
                taken += 1
            else:
                page.append(_read_entry(reads[read]))
                read += 1
        if taken == len(changes) and read == len(reads):
            return page, None
        last_read = (reads[read - 1].at, reads[read - 1].request_id) if read else read_after
        return page, _encode_cursor(order_id, shown + taken, last_read, until)


def _change_entry(entry: Any) -> AccessEntry:
    return AccessEntry(at=entry.at, actor=entry.actor, action=str(entry.type.value), detail=_change_detail(entry))


def _read_entry(read: OrderRead) -> AccessEntry:
    return AccessEntry(at=read.at, actor=read.actor, action=read.action, detail=read.detail)


# Where the next page's reads start: after the read of this time and request id, or with no request
# id, at this time (a cursor issued before changes were known by their place: _decode_cursor).
ReadPosition = tuple[datetime, str | None]


def _encode_cursor(order_id: str, shown: int, read_after: ReadPosition | None, until: datetime) -> str:
    document: dict[str, Any] = {"o": order_id, "c": shown, "u": until.isoformat()}
    if read_after is not None:
        document |= {"at": read_after[0].isoformat(), "key": read_after[1]}
    return cursor_of(document)


def _decode_cursor(cursor: str, order_id: str, history: list[Any]) -> tuple[int, ReadPosition | None, datetime | None]:
    """How many of the history's changes the pages before showed, where their reads go on and when
    their walk began (None: a cursor from before walks were bounded), as `cursor` names them;
    InvalidCursor unless this order's log issued it. A cursor issued before
    changes were known by their place (`k` and `key`: the last entry shown, a change by its place
    in `history`, or a read) names the same two: the changes up to that entry, and the reads after it."""
    try:
        decoded = cursor_document(cursor)
        valid = decoded["o"] == order_id
        if "c" in decoded:
            shown = decoded["c"]
            valid = valid and type(shown) is int and 0 <= shown <= len(history)
            read_after = _read_position(decoded["at"], decoded["key"]) if "at" in decoded else None
        else:  # the last entry shown: a change by its place (`k` 0), or a read (1)
            kind, key = decoded["k"], decoded["key"]
            if type(kind) is not int or kind not in (0, 1) or not isinstance(key, str):
                raise ValueError("not an entry's position")
            at, _ = _read_position(decoded["at"], key)
            read_after = (at, key if kind == 1 else None)
            shown = sum(1 for place, entry in enumerate(history) if (entry.at, 0, f"{place:06d}") <= (at, kind, key))
        until = _read_position(decoded["u"], None)[0] if "u" in decoded else None
    except (ValueError, KeyError, TypeError, OverflowError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return shown, read_after, until


def _read_position(at: Any, key: Any) -> ReadPosition:
    """The read position a cursor names, or ValueError: a time with its zone, as UTC, and a request
    id DynamoDB can compare (or none)."""
    when = datetime.fromisoformat(at)
    # Any request id a stored read may have (OrderRead.request_id), "" too: the API queues it for a
    # read whose event names none.
    usable_key = key is None or (isinstance(key, str) and len(key) <= _MAX_KEY and _has_utf8_form(key))
    if when.tzinfo is None or not usable_key:
        raise ValueError("not a read's position")
    # A forged time at the calendar's edge (year 1 at +14:00) has no UTC equivalent: OverflowError.
    return when.astimezone(UTC), key


def _has_utf8_form(text: str) -> bool:
    """Whether `text` can be written in UTF-8, as DynamoDB stores and compares strings. A read's
    request id goes into the next page's key condition, and JSON can write half a UTF-16 pair
    (\\ud800), which UTF-8 cannot: DynamoDB refuses such a Query (moto answers it)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _change_detail(entry: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"change": True}
    if entry.from_status is not None:
        detail["from_status"] = entry.from_status.value
    if entry.to_status is not None:
        detail["to_status"] = entry.to_status.value
    return detail
