"""Bulk import: split a file into queued orders, capture each queued order, report progress.

The splitter takes the orders a reader makes of a file (core.imports.FileOrders; the readers of
CSV and JSON Lines sit beside the splitter function) and queues one POST /orders body per order;
orders a reader could not make are recorded at once. The importer captures a queued order
through the same CaptureService as POST /orders and records the outcome on its import. Every
line is recorded at most once (ImportLedger.record), so a redelivered message or a re-run split
never counts twice, and an import completes when its counts reach its total.
"""

import hashlib
import hmac
import json
import logging
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from core import strict_json
from core.card_numbers import card_number_fields, mask_card_numbers, mask_optional
from core.deadline import TimeUp, never
from core.errors import DomainError, DuplicateOrder, NotFound, PluginError, TransientError, field_path, said
from core.imports import (
    MAX_EXTERNAL_ID_CHARS,
    MAX_MESSAGE_CHARS,
    FileOrders,
    ImportFileError,
    LineError,
    kept,
    line_of_field,
)
from core.models import PlaceOrder, Shown, utc_now
from core.services import CaptureService, asked_alike
from core.status import EDITABLE, RESOURCEABLE, ImportStatus

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# How an error names a body field to the author of a file of a format: (field, format) -> name.
FieldNames = Callable[[str, str | None], str]

MAX_REPORTED_ERRORS = 1000  # an import keeps this many errors (the first recorded); `failed` counts all
PROGRESS_EVERY = 1000  # orders between two updates of a running import's `total`
SPLIT_INTERRUPTED = "split_interrupted"
# An order whose message failed its last delivery for a reason not its own (a broken plugin, AWS
# errors) and went to the import dead-letter queue: listed on its import, not counted, until redriven.
DEAD_LETTERED = "dead_lettered"
# An order whose channel and external_id name an order placed with other content: not taken.
DUPLICATE_EXTERNAL_ID = "duplicate_external_id"
# The statuses such an order may still be edited in (PATCH /orders/{id}; on hold among them): past
# them, never again.
CHANGEABLE = EDITABLE | RESOURCEABLE
MAX_PARKED_LISTED = 100  # a report lists the first of them by line (a broken plugin can park every order)
# An SQS message holds 256 KiB with its attributes; a body this large is refused on its line.
MAX_ORDER_BYTES = 250 * 1024


def import_has_ended(status: str | None, failure_code: str | None) -> bool:
    """Whether an import in `status`, failed as a whole with `failure_code` if it failed, has ended:
    completed, or failed for good (its file cannot be imported). An interrupted split is no end:
    Lambda retries the file's event (an operator replays it after that), and the import resumes."""
    if status == ImportStatus.FAILED:
        return failure_code != SPLIT_INTERRUPTED
    return status in (ImportStatus.COMPLETED, ImportStatus.COMPLETED_WITH_ERRORS)


class Outcome(StrEnum):
    IMPORTED = "imported"
    DUPLICATE = "duplicate"
    FAILED = "failed"


class Recorded(StrEnum):
    """What ImportLedger.record did with a line's outcome."""

    COUNTED = "counted"  # counted now
    FOUND = "found"  # recorded before: an error that record could not keep is keep_lost_errors' to find
    # Nothing to count it on: no such import, or one recounted from its markers (this line's
    # included: the recount keeps its error). Nothing for keep_lost_errors either.
    REFUSED = "refused"


# --- What the API shows ----------------------------------------------------------------------------


class ImportErrorEntry(Shown):
    line: int | None = Field(description="Physical line in the file (a CSV header is line 1); null for the whole file")
    external_id: str | None = None
    code: str
    message: str

    # Stored masked and cut (LineError, ImportFileError); masked and cut again on the way out for
    # errors kept before those rules: 1,000 stored whole were over Lambda's 6 MB response (502).
    @field_validator("external_id")
    @classmethod
    def _kept_external_id(cls, value: str | None) -> str | None:
        masked = mask_optional(value)
        return None if masked is None else kept(masked, MAX_EXTERNAL_ID_CHARS)

    @field_validator("message")
    @classmethod
    def _kept_message(cls, value: str) -> str:
        return kept(mask_card_numbers(value), MAX_MESSAGE_CHARS)


class ImportSummary(Shown):
    id: str
    source: str = Field(description="Where the orders came from, e.g. s3://bucket/incoming/orders.csv")
    status: ImportStatus
    format: str | None = Field(default=None, description="csv or jsonl, once known")
    total: int = Field(description="Orders found in the file so far; final once total_final is true")
    total_final: bool = Field(description="True once the whole file has been read")
    imported: int
    duplicates: int
    failed: int
    created_at: datetime
    updated_at: datetime

    # An object key is the uploader's choice of name, card number included.
    _masked_source = field_validator("source")(mask_card_numbers)

    @model_validator(mode="after")
    def _found_at_least_what_is_recorded(self) -> "ImportSummary":
        # While the file is read, the stored total is written every PROGRESS_EVERY orders (and a
        # resumed split counts again from its start) as the workers record outcomes: every order
        # recorded was found, so the total shown is never below them.
        if not self.total_final:
            self.total = max(self.total, self.imported + self.duplicates + self.failed)
        return self


class ImportReport(ImportSummary):
    errors: list[ImportErrorEntry] = Field(
        description=f"One per failed order, by line: the first {MAX_REPORTED_ERRORS} recorded (`failed` counts all); "
        f"and, not counted, up to {MAX_PARKED_LISTED} orders waiting in the import dead-letter queue "
        f"(`{DEAD_LETTERED}`) until a redrive records them"
    )


# --- Ports -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportState:
    """What the splitter needs to know about an import before it reads the file (again)."""

    status: ImportStatus
    total_final: bool
    failure_code: str | None = None
    # The import's own secret: the splitter signs each queued line with it (see origin_signature).
    # None only for an import created before lines were signed.
    signing_key: str | None = None
    # Read whole, running short of its total, and read before the line its last order starts on
    # was kept: the recount of its markers needs that line (core/import_recount.py).
    needs_last_line: bool = False
    # Read whole, and its report short of an error it counted: the lines its errors are listed on
    # (None: nothing missing). A split's record that counted a bad row after another delivery of
    # the event read the file whole, and could keep its error nowhere, is retried to here; so is
    # one whose count was refused (the row's marker left uncounted), while the import is short of
    # its total, once a split was interrupted after the file was read whole (fail()).
    errors_listed: frozenset[int | None] | None = None


@dataclass(frozen=True)
class OrderOrigin:
    """Where a queued order comes from: its import and line (None for an order sent directly)."""

    import_id: str
    line: int
    line_numbers: tuple[int, ...] = ()
    format: str | None = None
    signature: str | None = None  # origin_signature(the import's key, this origin, the body)


def origin_signature(key: str, origin: OrderOrigin, body: str) -> str:
    """HMAC-SHA256 of everything a queued line says about its import (id, line, line numbers,
    format) and of its body, keyed by the import's own secret: a message that claims an import
    counts on it only if the splitter made it, whoever sends it (a redrive sends it again)."""
    # Line numbers as the queue carries them: none when they all are the order's first line.
    numbers = "" if set(origin.line_numbers) <= {origin.line} else ",".join(map(str, origin.line_numbers))
    fields = (
        origin.import_id,
        str(origin.line),
        numbers,
        origin.format or "",
        hashlib.sha256(body.encode()).hexdigest(),
    )
    return hmac.new(key.encode(), "\x1f".join(fields).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class QueuedOrder:
    body: str  # a POST /orders body, JSON
    origin: OrderOrigin


class ImportLedger(ABC):
    """Imports, their counters and errors. Counters only ever grow by atomic additions."""

    @abstractmethod
    def begin(self, import_id: str, source: str, at: datetime) -> ImportState:
        """Create the import (running) unless it exists; either way return its state. An import
        whose file was read and whose every order is recorded is completed (its completing write
        may have failed). For a file read whole, its report is read only when it counted failures
        (ImportState.errors_listed)."""

    @abstractmethod
    def restart(self, import_id: str, at: datetime) -> bool:
        """An import whose split was interrupted runs again (status back to running): True. False,
        changing nothing, when it is no longer failed as interrupted (a duplicate delivery of its
        event resumed it meanwhile, and reads the file)."""

    @abstractmethod
    def fail(self, import_id: str, code: str, message: str, at: datetime, line: int | None = None) -> None:
        """The import failed as a whole (its file cannot be read): status failed with this error.
        Nothing changes once the file was read whole (total_final): its lines all count; nor once
        it is no longer running (a duplicate delivery of its event failed it meanwhile). A split
        interrupted (SPLIT_INTERRUPTED) after the file was read whole is noted instead: its event's
        retry reads the file again while the import is short of its total (ImportState.errors_listed).
        `line`: the bad row whose record() interrupted the split, if one did. Should that note be
        refused, the row's count is left to the recount of imports left short (core/import_recount.py):
        a row left for its redelivery to count would wait on an event's retry that reads nothing."""

    @abstractmethod
    def progress(self, import_id: str, file_format: str, total: int, at: datetime) -> None:
        """Orders found so far, while the file is still being read: never fewer than a split
        (a duplicate or retried continuation reading the same file) wrote before."""

    @abstractmethod
    def finish_reading(
        self, import_id: str, file_format: str, total: int, at: datetime, last_line: int | None = None
    ) -> None:
        """The whole file was read: `total` is final, and `last_line` is the line its last order
        starts on (no order's line is past it). An import a duplicate delivery of its event left
        failed as interrupted runs again. Completes the import if every order is already recorded."""

    @abstractmethod
    def signing_key(self, import_id: str) -> str | None:
        """The key the import's lines are signed with (ImportState.signing_key); None when the
        import does not exist or predates signing."""

    @abstractmethod
    def is_recorded(self, import_id: str, line: int) -> bool:
        """Whether the order on `line` already has its outcome."""

    @abstractmethod
    def record(self, import_id: str, line: int, outcome: Outcome, error: LineError | None, at: datetime) -> Recorded:
        """Count the outcome of the order that starts on `line`, once: COUNTED. FOUND (and nothing
        more is counted) when that line was recorded before, by a record that may have failed to
        keep its error after counting it: that error is kept now if that record could leave it on
        the line's marker; one it could not is for keep_lost_errors to find. REFUSED when there is
        no such import, or it was recounted from its markers. A failure's error (listed under its
        own line) is kept while the import has fewer than MAX_REPORTED_ERRORS. The record that
        brings the counts to a final total completes the import."""

    @abstractmethod
    def keep_lost_errors(self, import_id: str, lines: list[int]) -> None:
        """Of `lines`, which record() found recorded before: write the error of any failure that
        was counted among the first MAX_REPORTED_ERRORS and whose error was kept nowhere (its write
        and the fallback onto its marker were both refused), while the report is short of errors
        and does not list it: never one counted past them, whose error the report does not keep. Costs one
        read of the import for all the lines, and their markers only while the report is short."""

    @abstractmethod
    def complete_if_done(self, import_id: str, at: datetime, line: int | None = None) -> None:
        """Complete the import if its file was read whole and every order is recorded: the record
        that brought the counts there may have failed before its completing write. Given the `line`
        a redelivery found recorded, first keep that line's error if the record counted it and
        failed to write it."""

    @abstractmethod
    def park(self, import_id: str, line: int, error: LineError, at: datetime) -> bool:
        """The order on `line` failed its last delivery for a reason not its own, and its message
        goes to the dead-letter queue: listed on the import's report under its line (`error`, not
        counted) until a redrive records the line, whose record() takes it off. True when listed
        now; False when the line was recorded meanwhile, is listed already (a redrive parked again),
        or the import does not exist."""

    @abstractmethod
    def get(self, import_id: str) -> ImportReport | None: ...

    @abstractmethod
    def list(self, limit: int, cursor: str | None) -> tuple[list[ImportSummary], str | None]:
        """Imports, newest first, and an opaque cursor for the next page (InvalidCursor for one
        this ledger did not issue)."""


class OrderQueue(ABC):
    """The import queue, seen from the splitter: orders go out in batches."""

    @abstractmethod
    def send(self, order: QueuedOrder) -> None:
        """Queue one order (it may wait in a batch until the batch is full or flushed)."""

    @abstractmethod
    def flush(self) -> None:
        """Send whatever waits in the current batch."""


# --- Use cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSource:
    """A file to import: its import id and where it is (for the report)."""

    import_id: str
    uri: str


@dataclass
class _Recording:
    """The line of the bad row whose record() a split is making, while it makes it."""

    line: int | None = None


class ImportSplitter:
    """Reads one file and queues its orders; records the rows that are not orders at once."""

    def __init__(
        self,
        ledger: ImportLedger,
        queue: OrderQueue,
        clock: Clock = utc_now,
        field_names: FieldNames = lambda field, file_format: field,
    ):
        self._ledger = ledger
        self._queue = queue
        self._clock = clock
        self._field_names = field_names

    def split(
        self,
        source: ImportSource,
        open_orders: Callable[[], FileOrders],
        *,
        resume_after: int = 0,
        time_up: TimeUp = never,
        hand_off: Callable[[int], None] | None = None,
    ) -> bool:
        """Queue the orders `open_orders` reads from the file. False when there was nothing to do:
        the import exists and its file was already read (a redelivered event) and its report is
        short of no error, or is being read by another delivery of its event. Safe to run again
        after a failure: lines already recorded are not counted twice. An import read whole before
        its last order's line was kept, and left short of its total, is read again for that line
        only (ImportState.needs_last_line); one read whole whose report is short of an error, for
        its bad rows not listed (ImportState.errors_listed), from `resume_after` on (an event's
        retry reads what that event read: the bad rows it could have lost an error of) and handed
        on as below.

        A continuation (`resume_after`: the orders a split before it queued or recorded) reads the
        file from its start again, so the readers see every order (a header, a repeated order),
        and queues from the order after those. Once `time_up` says so, at an order boundary and
        after queuing at least one order itself (so a chain of continuations always moves on), the
        split sends what waits in its batch, writes the total found so far and calls `hand_off`
        with the orders done: the continuation it starts goes on from there."""
        state = self._ledger.begin(source.import_id, mask_card_numbers(source.uri), self._clock())
        if state.needs_last_line:
            # Its event replayed: read the file again for that line, queuing nothing (every order
            # was queued or recorded); an error leaves it as it was, and Lambda retries the event.
            # Not handed on: it only reads (4.6 s for the bench's 100,000 lines, 59,839 orders, on a
            # loaded machine: 13,000 orders a second), as a continuation reads the orders before its
            # own, so any file whose split ended is read whole well within one invocation.
            self._split(source, open_orders, state.signing_key, sys.maxsize, never, None)
            return True
        if state.total_final and state.errors_listed is not None:
            # Its bad rows again, queuing nothing: those it does not list are recorded (found
            # recorded) and their lost errors kept; its other orders were all queued. Handed on
            # as a split is when time runs short (one record() a bad row: a file of 100,000 of
            # them outlasts an invocation); a continuation that finds none missing any more stops.
            self._split(
                source, open_orders, state.signing_key, resume_after, time_up, hand_off, listed=state.errors_listed
            )
            return True
        if state.total_final or (state.status is not ImportStatus.RUNNING and state.failure_code != SPLIT_INTERRUPTED):
            return False
        if state.status is ImportStatus.FAILED and not self._ledger.restart(source.import_id, self._clock()):
            return False
        recording = _Recording()
        try:
            self._split(source, open_orders, state.signing_key, resume_after, time_up, hand_off, recording=recording)
        except Exception as error:
            # Reported on the import now; the raise lets Lambda retry the event, which resumes it.
            self._ledger.fail(
                source.import_id,
                SPLIT_INTERRUPTED,
                f"reading the file stopped unexpectedly ({type(error).__name__}); it is retried automatically, "
                "and held for an operator if it keeps failing",
                self._clock(),
                line=recording.line,
            )
            raise
        return True

    def _split(
        self,
        source: ImportSource,
        open_orders: Callable[[], FileOrders],
        key: str | None,
        resume_after: int,
        time_up: TimeUp,
        hand_off: Callable[[int], None] | None,
        listed: frozenset[int | None] | None = None,
        recording: _Recording | None = None,
    ) -> None:
        """`listed`: a file read whole, read again for its bad rows whose errors are not on these
        lines (ImportState.errors_listed); nothing is queued, and the total stays as it is.
        `recording` says which bad row's record() is under way (the one that raised, if one did)."""
        recording = recording if recording is not None else _Recording()
        try:
            orders = open_orders()
        except ImportFileError as error:
            self._ledger.fail(source.import_id, error.code, error.message, self._clock())
            return
        total = last_line = 0
        # Bad rows found recorded (a retried or duplicate split): their errors are seen to at once
        # per PROGRESS_EVERY orders, one read of the import for them all rather than one each.
        found: list[int] = []
        for order in orders:
            if hand_off is not None and total > resume_after and time_up():
                # An order boundary: every order before this one is queued (once the batch is
                # sent) or recorded; this one and the rest are the continuation's.
                self._queue.flush()
                self._keep_lost_errors(source.import_id, found)
                if listed is None:  # a total read whole stays as it is
                    self._ledger.progress(source.import_id, orders.format, total, self._clock())
                hand_off(total)
                return
            total += 1
            last_line = max(last_line, order.line)
            if total <= resume_after:
                continue  # queued or recorded by the split this one continues
            error = order.error or _card_data_error(
                order.body, order.line, order.external_id, order.line_numbers, self._named(orders.format)
            )
            if error is None:
                body = json.dumps(order.body, separators=(",", ":"))
                if len(body.encode()) > MAX_ORDER_BYTES:
                    error = LineError(order.line, order.external_id, "order_too_large", "the order is over 250 KiB")
                elif listed is None:
                    origin = OrderOrigin(source.import_id, order.line, order.line_numbers, orders.format)
                    if key is not None:  # None: an import begun before signing, resumed
                        origin = replace(origin, signature=origin_signature(key, origin, body))
                    self._queue.send(QueuedOrder(body, origin))
            if error is not None and (listed is None or error.line not in listed):
                recording.line = order.line
                if self._ledger.record(source.import_id, order.line, Outcome.FAILED, error, self._clock()) is (
                    Recorded.FOUND
                ):
                    found.append(order.line)
                recording.line = None
            if total % PROGRESS_EVERY == 0:
                self._keep_lost_errors(source.import_id, found)
                if listed is None:
                    self._ledger.progress(source.import_id, orders.format, total, self._clock())
        self._queue.flush()
        self._keep_lost_errors(source.import_id, found)
        if listed is None:
            self._ledger.finish_reading(source.import_id, orders.format, total, self._clock(), last_line=last_line)

    def _keep_lost_errors(self, import_id: str, found: list[int]) -> None:
        if found:
            self._ledger.keep_lost_errors(import_id, found)
            found.clear()

    def _named(self, file_format: str) -> Callable[[str], str]:
        return lambda field: self._field_names(field, file_format)


@dataclass(frozen=True)
class QueueSenders:
    """Who may put orders on the import queue, and for which channels.

    SQS records each message's sender (SenderId): an IAM user's unique id, or a role's unique id
    and session name ("AROA…:function-name"). The import splitter's messages carry import lines
    for any channel (whoever uploaded the file was authorized by the bucket); a sender given `*`
    may place orders for any channel too. Any other sender places orders only for the channels it
    is given. Whether a message writes on an import is the import's signature's to say (see
    OrderImporter); these senders decide it only for an import begun before lines were signed.
    The queue's policy decides who may send at all."""

    ANY_CHANNEL = "*"

    splitter: str | None  # the splitter role's unique id
    channels: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, splitter: str | None, channels: str) -> "QueueSenders":
        """From "AROAID1=web+pos,AIDAID2=marketplace" (the ImportQueueSenderChannels parameter)."""
        allowed: dict[str, frozenset[str]] = {}
        for pair in filter(None, (part.strip() for part in channels.split(","))):
            sender, _, names = pair.partition("=")
            chosen = frozenset(filter(None, (name.strip() for name in names.split("+"))))
            if not sender.strip() or ":" in sender or not chosen:
                raise ValueError(f"import queue sender channels: {pair!r} is not <unique id>=<channel>[+<channel>]")
            allowed[sender.strip()] = allowed.get(sender.strip(), frozenset()) | chosen
        return cls(splitter=splitter or None, channels=allowed)

    @staticmethod
    def principal(sender: str) -> str:
        return sender.split(":", 1)[0]

    def is_splitter(self, sender: str) -> bool:
        return self.splitter is not None and self.principal(sender) == self.splitter

    def writes_imports(self, sender: str) -> bool:
        """Whether this sender's messages are import lines (and may claim any channel)."""
        return self.is_splitter(sender) or self.ANY_CHANNEL in self.channels.get(self.principal(sender), ())

    def may_place(self, sender: str, channel: str) -> bool:
        return self.writes_imports(sender) or channel in self.channels.get(self.principal(sender), ())


@dataclass(frozen=True)
class ImportResult:
    outcome: Outcome | None  # None: the line was recorded by an earlier delivery; nothing done
    order_id: str | None = None
    error: LineError | None = None


class OrderImporter:
    """Captures one queued order exactly as POST /orders does, and records what happened.

    Validation, pricing, stock and duplicate outcomes are *results*: recorded, never raised, so a
    bad order never blocks its batch or reaches the dead-letter queue. What is not the order's
    fault (a broken plugin, a gateway briefly down, AWS errors) is raised, so the message is
    retried and, after the queue's maxReceiveCount, parked in the DLQ."""

    def __init__(
        self,
        capture: CaptureService,
        ledger: ImportLedger,
        clock: Clock = utc_now,
        field_names: FieldNames = lambda field, file_format: field,
        senders: QueueSenders | None = None,
    ):
        self._capture = capture
        self._ledger = ledger
        self._clock = clock
        self._field_names = field_names
        # None: every sender is trusted, for callers that are the splitter's side themselves (tests,
        # tools). The import worker always passes the deployment's senders.
        self._senders = senders
        self._keys: dict[str, str] = {}  # signing keys of imports seen, oldest first
        self._keys_lock = threading.Lock()  # the worker may import in threads

    def import_order(self, body: str, origin: OrderOrigin | None, sender: str, message_id: str = "") -> ImportResult:
        """`message_id`: the queue's id of the message, the same on each of its deliveries; a body
        sent directly keeps it on the order it places (never shown), so that its redelivery (a
        worker killed after the order's put) finds the order its own, imported, where another
        message of the same order is a duplicate. A line of an import is known by its line."""
        if origin is not None and not self._made_by_the_splitter(origin, body, sender):
            logger.warning("import attributes the splitter did not make", extra={"sender": sender})
            origin = None
        if origin is not None and self._ledger.is_recorded(origin.import_id, origin.line):
            # Counted by an earlier delivery, which may have failed on the write of its error or
            # on the write that ends the import after counting it: no later line would make them.
            self._ledger.complete_if_done(origin.import_id, self._clock(), origin.line)
            return ImportResult(None)
        # The order's history names who created it: the import and line, or the queue's sender.
        actor = f"{origin.import_id}:{origin.line}" if origin is not None else f"sqs:{sender}"
        result = self._place(body, origin, actor, sender, message_id)
        # Under the order's first line, whichever line its error names: a redelivery finds it.
        if (
            origin is not None
            and result.outcome is not None
            and self._ledger.record(origin.import_id, origin.line, result.outcome, result.error, self._clock())
            is Recorded.FOUND
        ):
            # By a twin delivery of this message, which may have counted it and lost its error.
            self._ledger.keep_lost_errors(origin.import_id, [origin.line])
            logger.info("import line already recorded", extra={"import_id": origin.import_id, "line": origin.line})
        return result

    def park(self, body: str, origin: OrderOrigin | None, sender: str, cause: BaseException, deliveries: int) -> bool:
        """The message of `body` failed its last delivery (`cause`, raised by import_order) and goes
        to the dead-letter queue: its import lists the order so, on its line, until a redrive
        records it. Only for a line the import's splitter made (its signature): True when listed."""
        if origin is None or not self._made_by_the_splitter(origin, body, sender):
            return False
        try:
            document = strict_json.loads(body)
        except strict_json.StrictJsonError:
            document = {}
        external_id = document.get("external_id") if isinstance(document.get("external_id"), str) else None
        message = (
            f"the order failed {deliveries} deliveries for a reason that is not its own ({type(cause).__name__}: "
            "see the import worker's log for this import and line) and waits in the import dead-letter queue; "
            "once the cause is fixed, redrive it and it is imported and counted"
        )
        error = LineError(origin.line, external_id, DEAD_LETTERED, message)
        return self._ledger.park(origin.import_id, origin.line, error, self._clock())

    def _made_by_the_splitter(self, origin: OrderOrigin, body: str, sender: str) -> bool:
        """A line counts on its import only with the import's signature over it: the sender of a
        message is only its last hop (an operator's redrive sends anything in the DLQ again, and
        anyone the account lets write to the DLQ could have put it there). Only an import begun
        before lines were signed falls back to trusting the sender."""
        key = self._signing_key(origin.import_id)
        if key is None:
            return self._senders is None or self._senders.writes_imports(sender)
        expected = origin_signature(key, replace(origin, signature=None), body)
        return origin.signature is not None and hmac.compare_digest(origin.signature, expected)

    def _signing_key(self, import_id: str) -> str | None:
        with self._keys_lock:
            if import_id in self._keys:
                return self._keys[import_id]
        key = self._ledger.signing_key(import_id)
        if key is not None:  # an import's key never changes; a missing one may appear (a new import)
            with self._keys_lock:
                if len(self._keys) >= 1024:
                    self._keys.pop(next(iter(self._keys)))
                self._keys[import_id] = key
        return key

    def _place(self, body: str, origin: OrderOrigin | None, actor: str, sender: str, message_id: str) -> ImportResult:
        line = origin.line if origin is not None else 0
        line_numbers = origin.line_numbers if origin is not None else ()
        file_format = origin.format if origin is not None else None

        def failed(code: str, message: str, external_id: str | None, field: str | None = None) -> ImportResult:
            at = line_of_field(field, line, line_numbers) if field else line
            return ImportResult(Outcome.FAILED, error=LineError(at, external_id, code, message))

        try:
            # The rules of POST /orders bodies: a message nested past them would raise, not fail.
            document = strict_json.loads(body)
        except strict_json.StrictJsonError as error:
            return failed("malformed_json", f"the message {error}", None)
        external_id = document.get("external_id") if isinstance(document.get("external_id"), str) else None
        card = _card_data_error(
            document, line, external_id, line_numbers, lambda field: self._field_names(field, file_format)
        )
        if card is not None:
            return ImportResult(Outcome.FAILED, error=card)
        try:
            command = PlaceOrder.model_validate(document)
        except ValidationError as error:
            problems = [(field_path(e.get("loc", ())) or "body", said(e)) for e in error.errors()]
            message = "; ".join(f"{self._field_names(f, file_format)}: {m}" for f, m in problems[:5])
            return failed("validation_error", message, external_id, problems[0][0] if problems else None)
        if command.external_id is None:
            return failed(
                "missing_external_id",
                "external_id is required: channel + external_id identify each imported order",
                None,
            )
        # A signed line may be for any channel: whoever uploaded the file was authorized by the bucket.
        if origin is None and self._senders is not None and not self._senders.may_place(sender, command.channel):
            who = QueueSenders.principal(sender) or "unknown"
            return failed(
                "forbidden",
                f"sender {who} may not place orders for channel {command.channel}",
                command.external_id,
                "channel",
            )
        # A direct body's message, on the order's created entry as an API request's key is.
        request_key = f"sqs:{message_id}" if origin is None and message_id else None
        try:
            order = self._capture.place(command, actor, request_key=request_key)
        except DuplicateOrder as duplicate:
            return self._placed_before(duplicate.order_id, command, origin, actor, request_key)
        except (PluginError, TransientError):
            raise
        except DomainError as error:
            fields = [d for d in error.details if isinstance(d, dict) and d.get("field")]
            message = error.message
            if fields:
                message += ": " + "; ".join(
                    f"{self._field_names(d['field'], file_format)}: {d.get('message', '')}" for d in fields[:5]
                )
            return failed(error.code, message, external_id, fields[0]["field"] if fields else None)
        return ImportResult(Outcome.IMPORTED, order_id=order.id)

    def _placed_before(
        self, order_id: str, command: PlaceOrder, origin: OrderOrigin | None, actor: str, request_key: str | None
    ) -> ImportResult:
        """The outcome of an order whose channel and external id name the order `order_id`.

        Two deliveries of one message may run at once, or the first died after its put: the one
        that finds the order must not call the order the other imported a duplicate. Its created
        entry (read consistently: the twin's put may be a moment old) names its creator (an
        import's line), or keeps the direct message's id. Another's order is a duplicate when it
        asked the same (request_hash: a file or message sent again), and an error on the line when
        it asked otherwise (a feed that reuses order numbers, a correction sent under its number):
        as POST /orders answers 409, nothing of it is taken, and its sender must be told. An order
        placed before capture kept that hash cannot tell: a duplicate, as before."""
        found = self._capture.created_entry(order_id)
        placed, created = found if found is not None else (None, None)
        detail = (created.detail or {}) if created is not None else {}
        if created is not None and (
            (origin is not None and created.actor == actor)
            or (request_key is not None and detail.get("request_key") == request_key)
        ):
            return ImportResult(Outcome.IMPORTED, order_id=order_id)
        asked = detail.get("request_hash")
        if isinstance(asked, str) and not asked_alike(asked, command):
            # An order that has shipped or ended (Order.check_editable: for good) takes no edit, so
            # the line is told the one way left.
            ended = placed.status if placed is not None and placed.status not in CHANGEABLE else None
            message = (
                f"an order with this channel and external_id already exists with other content: {order_id}"
                + (f"; {order_id} is {ended.value} and can no longer be changed" if ended else "")
                + "; nothing of this one was taken (send it under a new external_id"
                + (")" if ended else ", or change that order)")
            )
            at = origin.line if origin is not None else 0
            return ImportResult(
                Outcome.FAILED,
                order_id=order_id,
                error=LineError(at, command.external_id, DUPLICATE_EXTERNAL_ID, message),
            )
        return ImportResult(Outcome.DUPLICATE, order_id=order_id)


class ImportQueries:
    def __init__(self, ledger: ImportLedger):
        self._ledger = ledger

    def get(self, import_id: str) -> ImportReport:
        report = self._ledger.get(import_id)
        if report is None:
            raise NotFound(f"no import {import_id}")
        return report

    def list(self, limit: int, cursor: str | None) -> tuple[list[ImportSummary], str | None]:
        return self._ledger.list(limit, cursor)


# --- Helpers -----------------------------------------------------------------------------------------


def _card_data_error(
    body: dict[str, Any] | None,
    line: int,
    external_id: str | None,
    line_numbers: tuple[int, ...],
    name: Callable[[str], str],
) -> LineError | None:
    """Card numbers never enter the OMS, not even its queue: such an order is refused, naming the
    fields and never the values, on the line of the first (an order line's own row). `name` says
    a field as the file's author wrote it (a CSV column), as every other error of a line does."""
    if body is None:
        return None
    fields = card_number_fields(body)
    if not fields:
        return None
    named = list(dict.fromkeys(name(field) for field in fields))  # two rows' `sku` are one column
    return LineError(
        line_of_field(fields[0], line, line_numbers),
        external_id,
        "card_data_rejected",
        "payment card numbers are never accepted (send a payment token): " + ", ".join(named[:5]),
    )
