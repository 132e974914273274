"""Bulk import adapters: import progress and errors in the Catalog table, per-line outcome
markers in the Idempotency table, and the import queue (SQS SendMessageBatch)."""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionError as NeverSent

from core.deadline import TimeUp
from core.import_recount import ImportCounts, Recount
from core.import_service import (
    MAX_PARKED_LISTED,
    MAX_REPORTED_ERRORS,
    SPLIT_INTERRUPTED,
    ImportErrorEntry,
    ImportLedger,
    ImportReport,
    ImportState,
    ImportStatus,
    ImportSummary,
    OrderOrigin,
    OrderQueue,
    Outcome,
    QueuedOrder,
    Recorded,
)
from core.imports import ImportFileError, LineError
from core.log_text import escape_for_log
from core.status import moving_to
from functions.adapters.aws_errors import busy
from functions.adapters.dynamodb import (
    batch_get,
    decode_cursor,
    encode_cursor,
    from_item,
    query_page,
    timestamp,
    to_item,
)

logger = logging.getLogger(__name__)

LIST_PK = "IMPORTS"
# A line's outcome marker lives as long as a message about it can still arrive: the queue keeps
# messages 4 days (its DLQ 14); a redrive from the DLQ must still find the marker.
MARKER_DAYS = 15
_COUNTERS = {Outcome.IMPORTED: "imported", Outcome.DUPLICATE: "duplicates", Outcome.FAILED: "failed"}
# Set while this thread asks DynamoDB for a line's count (DynamoImportLedger.record): _count_once.
_counting = threading.local()


def _count_once(caught_exception: Exception | None = None, response: Any = None, **kwargs: Any) -> bool | None:
    """botocore's `needs-retry` for a client's UpdateItems, registered before its retry handler:
    False (no retry) after an attempt of a line's count whose outcome is unknown. A count is an
    ADD: DynamoDB may have applied an attempt whose answer was lost (a read timeout, a connection
    closed, a 5xx), and retried it counted the line twice; or, the retries throttled, the line's
    marker was flagged uncounted and its redelivery counted it again. Nothing sent (no connection
    made) and refused (throttled: nothing applied) are retried as botocore retries them; anything
    else is left to botocore (None)."""
    if not getattr(_counting, "active", False):
        return None
    if caught_exception is not None:
        return None if isinstance(caught_exception, NeverSent) else False
    http_response = response[0] if response else None  # (the HTTP response, its parsed body)
    return False if http_response is not None and http_response.status_code >= 500 else None


@contextmanager
def _asking_a_count() -> Iterator[None]:
    _counting.active = True
    try:
        yield
    finally:
        _counting.active = False


def _short(values: dict[str, Any]) -> bool:
    """A running import read whole whose counts are short of its total."""
    done = sum(int(values.get(name, 0)) for name in _COUNTERS.values())
    return (
        values.get("status") == ImportStatus.RUNNING.value
        and bool(values.get("total_final"))
        and done < int(values.get("total", 0))
    )


def _status_write(target: ImportStatus) -> tuple[str, dict[str, dict[str, Any]]]:
    """The condition a write of `target` over an import's status holds to (#status names the
    attribute), and its values: the stored status is one the import table (core.status) lets move
    to `target`, so a finished import is never written back to running or failed."""
    placeholders = {f":from_{status.value}": status for status in moving_to(target)}
    condition = f"#status IN ({', '.join(placeholders)})"
    return condition, {name: {"S": status.value} for name, status in placeholders.items()}


def _recounted_not_ended(values: dict[str, Any]) -> bool:
    """An import whose recount set its counters and died before its end (keeping the errors it
    counted, completing): no longer short, and nothing but the recount ends it."""
    return values.get("status") == ImportStatus.RUNNING.value and "recounted" in values


# An import's partitions of the Catalog table: its item (IMPORT#<id>) and its kept errors
# (IMPORT#<id>#ERRORS); beside them, the listing (LIST_PK).
IMPORT_PK = "IMPORT#"


def _import_key(import_id: str) -> dict[str, Any]:
    return {"pk": {"S": IMPORT_PK + import_id}, "sk": {"S": "IMPORT"}}


def _error_key(import_id: str, ordinal: int) -> dict[str, Any]:
    # By the failure's ordinal (its value of the `failed` counter), zero-padded: errors are only
    # ever added after the ones a reader has, so a reader can ask for the new ones only.
    return {"pk": {"S": f"{IMPORT_PK}{import_id}#ERRORS"}, "sk": {"S": f"{ordinal:06d}"}}


# The sort key of an error written under its line (_keep_lost_errors): after every ordinal.
_RECOVERED = "line#"
# The sort key of an order parked in the dead-letter queue (park()), by line: after every ordinal.
_PARKED = "dlq#"


def _parked_key(import_id: str, line: int) -> dict[str, Any]:
    return {"pk": _error_key(import_id, 0)["pk"], "sk": {"S": f"{_PARKED}{line:012d}"}}


# On a failure's marker: its ordinal is past MAX_REPORTED_ERRORS. What finds the line recorded
# cannot tell a failure counted past the cap from one whose error was lost (both left it on their
# markers only), and would list the first in place of the second.
_PAST_CAP = "past_cap"
# On a line's marker put by park(): the order waits in the dead-letter queue (flagged uncounted too).
_PARKED_FLAG = "parked"


def _once_per_line(errors: list[ImportErrorEntry]) -> list[ImportErrorEntry]:
    """Each line's error once, the first found (by ordinal, then under its line): a line's error can
    be written twice, by two writers that cannot see each other. What finds the line counted and
    its error missing writes it under the line (_keep_lost_errors) while the record that counted it
    may be about to write it under its ordinal (the same error: both are the marker's), and a
    recount that reads the errors before such a record writes its own keeps it under another."""
    seen: set[int | None] = set()
    once = []
    for entry in errors:
        if entry.line not in seen:
            seen.add(entry.line)
            once.append(entry)
    return once


def _entry(values: dict[str, Any]) -> ImportErrorEntry:
    """An error item of an import's report, as the API lists it."""
    return ImportErrorEntry(
        line=int(values["line"]), external_id=values.get("external_id"), code=values["code"], message=values["message"]
    )


def _list_key(created_at: str, import_id: str) -> dict[str, Any]:
    return {"pk": {"S": LIST_PK}, "sk": {"S": f"{created_at}#{import_id}"}}


def _marker_id(import_id: str, line: int) -> str:
    return f"import#{import_id}#{line}"


def _marker_line(marker: dict[str, Any]) -> int:
    """The line a marker item (_marker_id) is for."""
    return int(marker["id"]["S"].rsplit("#", 1)[1])


def _error_fields(error: LineError) -> dict[str, Any]:
    fields = {"line": {"N": str(error.line)}, "code": {"S": error.code}, "message": {"S": error.message}}
    if error.external_id:
        fields["external_id"] = {"S": error.external_id}
    return fields


def _is_conditional_failure(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


class DynamoImportLedger(ImportLedger, ImportCounts):
    """An import is one item in the Catalog table (pk IMPORT#<id>) holding its status, total and
    counters; a listing item per import (pk IMPORTS, sorted by creation time) answers GET /imports
    newest first; kept errors are items of their own (pk IMPORT#<id>#ERRORS, sk = the failure's
    ordinal, so the n-th failure recorded is kept when n <= MAX_REPORTED_ERRORS).

    Reading a report reads only the errors this instance has not seen: a client following a
    running import polls its report, and each poll would otherwise query up to 1,000 error items
    again (up to about 0.5 MB, tens of read units per poll) to find nothing new. The errors an
    instance has read from the first on without a gap are kept (for the last CACHED_REPORTS
    imports) and never change; an ordinal counted but not yet written (a worker between its two
    writes) is a gap, and what follows it is read again until the gap is filled.

    A line is recorded once: a marker item (import#<id>#<line>) is put in the Idempotency table on
    attribute_not_exists, and only when that put succeeds are the counters ADDed, in one atomic
    UpdateItem, so concurrent workers never lose a count and a redelivered message never adds one.
    When DynamoDB refuses that UpdateItem (throttled), or no attempt reached it, the marker is put
    again flagged `uncounted`: a marker so flagged records nothing, so the redelivery counts the
    line. An attempt whose answer was lost (it may have been applied) is never retried
    (_count_once): the marker is left as it is, counted once if it was, else by the recount. When DynamoDB refuses
    a counted failure's error item, the marker is put again holding that item (`unkept_error`), and
    whatever finds the line recorded next writes it (the redelivery's complete_if_done, the retried
    split's record, from the marker its refused put returns); when DynamoDB refuses that too, what
    finds the line recorded writes the error its marker has held since the line was marked, if the
    report is short of one and does not list it (keep_lost_errors: a retried split asks once for
    the rows of each PROGRESS_EVERY orders it found recorded, one read of the import for them all,
    and reads their markers only while the report is short), unless its marker says it was counted
    past the cap (`past_cap`: in the marker's put once this instance has seen the import's failures
    reach the cap, else put again after the count that shows it). No transaction: a
    worker killed between the two writes leaves that line uncounted (the import then stays
    running, one short, until the reconciler recounts it from its markers: recount(); the count
    is then refused to a worker that comes late); the order itself is stored or not, never twice."""

    CACHED_REPORTS = 64
    RECOUNT_CHUNK = 100  # the markers a recount reads at once (a BatchGetItem's most)

    def __init__(self, client: Any, catalog_table: str, idempotency_table: str):
        self._client = client
        # A line's count is never retried once it may have been applied (_count_once); once per client.
        client.meta.events.register_first(
            "needs-retry.dynamodb.UpdateItem", _count_once, unique_id=f"{__name__}.{_count_once.__name__}"
        )
        self._table = catalog_table
        self._markers = idempotency_table
        self._read_errors: OrderedDict[str, list[ImportErrorEntry]] = OrderedDict()  # ordinals 1..n, no gap
        self._read_errors_lock = threading.Lock()
        # Imports this instance saw count MAX_REPORTED_ERRORS failures (the last CACHED_REPORTS).
        self._past_cap: OrderedDict[str, None] = OrderedDict()
        self._past_cap_lock = threading.Lock()

    # --- The splitter's side ------------------------------------------------------------------
    def begin(self, import_id: str, source: str, at: datetime) -> ImportState:
        now = timestamp(at)
        item = {
            **_import_key(import_id),
            "id": {"S": import_id},
            "source": {"S": source},
            "status": {"S": ImportStatus.RUNNING.value},
            "total": {"N": "0"},
            "total_final": {"BOOL": False},
            "imported": {"N": "0"},
            "duplicates": {"N": "0"},
            "failed": {"N": "0"},
            "created_at": {"S": now},
            "updated_at": {"S": now},
            "signing_key": {"S": secrets.token_hex(32)},
        }
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            stored = item
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            stored = self._client.get_item(TableName=self._table, Key=_import_key(import_id), ConsistentRead=True)[
                "Item"
            ]
        # Put (again) every time: a split that died between the two puts still gets listed.
        created_at = stored["created_at"]["S"]
        self._client.put_item(TableName=self._table, Item={**_list_key(created_at, import_id), "id": {"S": import_id}})
        values = from_item(stored)
        self._note_failures(import_id, int(values.get("failed", 0)))  # a resumed split's bad rows
        # A file read whole whose completing write failed (the split raised after it, and this is
        # Lambda's retry of its event): nothing else would complete it once every line is recorded.
        self._complete_if_done(import_id, values, at)
        return ImportState(
            status=ImportStatus(values["status"]),
            total_final=bool(values.get("total_final")),
            failure_code=values.get("error_code"),
            signing_key=values.get("signing_key"),
            needs_last_line=_short(values) and "last_line" not in values,
            errors_listed=self._errors_listed_if_short(import_id, values),
        )

    def _errors_listed_if_short(self, import_id: str, values: dict[str, Any]) -> frozenset[int | None] | None:
        """For a file read whole that counted failures: the lines its report lists errors on, when
        it lists fewer than it keeps (None otherwise). A split's record that counted a bad row
        after a duplicate delivery of its event read the file whole, and whose error and its
        fallback were both refused, is retried to begin() and no further: nothing else would keep
        that error. Likewise, whatever the report, for an import short of its total whose split
        was interrupted after the file was read whole (`reread`, fail()): a bad row's count
        refused leaves its marker uncounted, for the split's retried event to count. One query of
        the errors (only those this instance has not read) on a delivery of an event whose file
        was read whole; none for a first delivery."""
        if not values.get("total_final"):
            return None
        listed, short = self._shortfall(import_id, int(values.get("failed", 0)))
        # Or a split interrupted after the file was read whole (fail()) while the import is short
        # of its total: a bad row of that split may be marked uncounted, which only it counts.
        reread = bool(values.get("reread")) and _short(values)
        return frozenset(entry.line for entry in listed) if short > 0 or reread else None

    def _shortfall(self, import_id: str, failed: int) -> tuple[list[ImportErrorEntry], int]:
        """The errors the report of an import that counted `failed` failures lists, and how many
        it is short of the ones it keeps (up to MAX_REPORTED_ERRORS): none read when it keeps none."""
        kept = min(failed, MAX_REPORTED_ERRORS)
        listed = self._errors(import_id, kept) if kept else []
        return listed, kept - len(listed)

    def restart(self, import_id: str, at: datetime) -> bool:
        # Conditional: a duplicate delivery may have resumed (and even completed) it since it was read.
        return self._resume(import_id, at) is not None

    def fail(self, import_id: str, code: str, message: str, at: datetime, line: int | None = None) -> None:
        # Never once the file was read whole (by this split before it raised, or by a duplicate
        # delivery of its event): the import's lines are all queued or recorded, and it completes.
        # Nor once a duplicate delivery failed it: a file error is its end (sent as import.completed
        # by the stream's running -> failed record), and an interruption is retried by its event,
        # which finds a file error again.
        from_status, from_values = _status_write(ImportStatus.FAILED)
        if self._unless_final(
            import_id,
            "SET #status = :failed, error_code = :code, error_message = :message, updated_at = :now",
            {"#status": "status"},
            {":failed": {"S": ImportStatus.FAILED.value}, ":code": {"S": code}, ":message": {"S": message},
             ":now": {"S": timestamp(at)}, **from_values},
            condition=from_status,
        ) or code != SPLIT_INTERRUPTED:  # fmt: skip
            return
        # Interrupted after the file was read whole: by a bad row's count DynamoDB refused, its
        # marker flagged uncounted for a redelivery to count, and a split's redelivery is its
        # event's retry (begin()'s errors_listed). Never written again once it is (nor its time).
        try:
            self._update_if(
                import_id,
                "SET reread = :true",
                "total_final = :true AND #status = :running AND attribute_not_exists(reread)",
                {"#status": "status"},
                {":true": {"BOOL": True}, ":running": {"S": ImportStatus.RUNNING.value}},
            )
        except Exception:
            # Refused too (throttled: the import's item is the one every count adds to): the
            # retried event, finding no note, would stop at begin(), and the row's marker wait on
            # it for good. The row is left marked and never counted instead: the recount counts it.
            if line is None:
                raise
            self._leave_to_the_recount(import_id, line)

    def _leave_to_the_recount(self, import_id: str, line: int) -> None:
        """The marker of `line`, if flagged uncounted, without that flag (a read and a conditional
        put, on the Idempotency table): a duplicate split's record() that counts it meanwhile
        takes it, and this changes nothing."""
        marker = self._marker(import_id, line)
        if marker is None or not marker.get("uncounted", {}).get("BOOL"):
            return
        marker = {name: value for name, value in marker.items() if name != "uncounted"}
        try:
            self._client.put_item(
                TableName=self._markers,
                Item=marker,
                ConditionExpression="#uncounted = :true",
                ExpressionAttributeNames={"#uncounted": "uncounted"},
                ExpressionAttributeValues={":true": {"BOOL": True}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return
        logger.warning(
            "import line left to the recount: its count and the note for its file's retried event were refused",
            extra={"import_id": import_id, "line": line},
        )

    def progress(self, import_id: str, file_format: str, total: int, at: datetime) -> None:
        # A re-run never lowers a final total, nor a running one: a duplicate delivery of a
        # continuation, or a retried one, hands off at fewer orders than the one ahead of it.
        self._unless_final(
            import_id,
            "SET #total = :total, #format = :format, updated_at = :now",
            {"#total": "total", "#format": "format"},
            {":total": {"N": str(total)}, ":format": {"S": file_format}, ":now": {"S": timestamp(at)}},
            condition="#total < :total",
        )

    def _unless_final(
        self,
        import_id: str,
        update: str,
        names: dict[str, str],
        values: dict[str, dict[str, Any]],
        condition: str | None = None,
    ) -> bool:
        """`update` the import while its total is not final (and `condition` holds): True; nothing
        once it is."""
        return self._update_if(
            import_id,
            update,
            f"total_final = :false AND {condition}" if condition else "total_final = :false",
            names,
            {**values, ":false": {"BOOL": False}},
        )

    def _update_if(
        self, import_id: str, update: str, condition: str, names: dict[str, str], values: dict[str, dict[str, Any]]
    ) -> bool:
        """`update` the import if `condition` holds: True; False, changing nothing, if not."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_import_key(import_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return False
        return True

    def finish_reading(
        self, import_id: str, file_format: str, total: int, at: datetime, last_line: int | None = None
    ) -> None:
        # The line the file's last order starts on: where a recount stops reading markers.
        response = self._client.update_item(
            TableName=self._table,
            Key=_import_key(import_id),
            UpdateExpression="SET #total = :total, #format = :format, total_final = :true, updated_at = :now"
            + (", last_line = :last" if last_line is not None else ""),
            ExpressionAttributeNames={"#total": "total", "#format": "format"},
            ExpressionAttributeValues={
                ":total": {"N": str(total)},
                ":format": {"S": file_format},
                ":true": {"BOOL": True},
                ":now": {"S": timestamp(at)},
                **({":last": {"N": str(last_line)}} if last_line is not None else {}),
            },
            ReturnValues="ALL_NEW",
        )
        values = from_item(response["Attributes"])
        if values.get("status") == ImportStatus.FAILED.value and values.get("error_code") == SPLIT_INTERRUPTED:
            # A duplicate delivery of the file's event failed while this one read it whole: the
            # interruption is over, and the import must run on to its end.
            values = self._resume(import_id, at) or values
        self._complete_if_done(import_id, values, at)

    def _resume(self, import_id: str, at: datetime) -> dict[str, Any] | None:
        # Of the failed imports the table lets run again, only one whose split was interrupted.
        from_status, from_values = _status_write(ImportStatus.RUNNING)
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=_import_key(import_id),
                UpdateExpression="SET #status = :running, updated_at = :now REMOVE error_code, error_message",
                ConditionExpression=f"{from_status} AND error_code = :interrupted",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":running": {"S": ImportStatus.RUNNING.value},
                    **from_values,
                    ":interrupted": {"S": SPLIT_INTERRUPTED},
                    ":now": {"S": timestamp(at)},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return None
        return from_item(response["Attributes"])

    # --- The worker's side --------------------------------------------------------------------
    def signing_key(self, import_id: str) -> str | None:
        # Consistent: the splitter may queue a line right after creating its import.
        item = self._client.get_item(
            TableName=self._table, Key=_import_key(import_id), ProjectionExpression="signing_key", ConsistentRead=True
        ).get("Item")
        return item["signing_key"]["S"] if item and "signing_key" in item else None

    def is_recorded(self, import_id: str, line: int) -> bool:
        item = self._client.get_item(
            TableName=self._markers,
            Key={"id": {"S": _marker_id(import_id, line)}},
            ProjectionExpression="id, #uncounted",
            ExpressionAttributeNames={"#uncounted": "uncounted"},
            ConsistentRead=True,
        ).get("Item")
        return item is not None and not item.get("uncounted", {}).get("BOOL", False)

    def record(self, import_id: str, line: int, outcome: Outcome, error: LineError | None, at: datetime) -> Recorded:
        marker = {
            "id": {"S": _marker_id(import_id, line)},
            "outcome": {"S": outcome.value},
            "expiration": {"N": str(int((at + timedelta(days=MARKER_DAYS)).timestamp()))},
        }
        if outcome is Outcome.FAILED and error is not None:
            # A recount (recount()) of a line marked and never counted keeps its error from here.
            marker["error"] = {"M": _error_fields(error)}
            if self._past_cap_known(import_id):
                marker[_PAST_CAP] = {"BOOL": True}  # its ordinal will be past the cap: said for free
        try:
            replaced = self._client.put_item(
                TableName=self._markers,
                Item=marker,
                ConditionExpression="attribute_not_exists(id) OR #uncounted = :true",
                ExpressionAttributeNames={"#uncounted": "uncounted"},
                ExpressionAttributeValues={":true": {"BOOL": True}},
                # The marker replaced (one flagged uncounted: parked, or its count refused), and the
                # marker found, for nothing more: neither costs a write unit more.
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as failure:
            if _is_conditional_failure(failure):
                # Recorded before; by a record that may have counted the line and left its error
                # on the marker (the splitter's retried event comes here, not through
                # complete_if_done). One it could not leave there is keep_lost_errors' to find.
                found = failure.response.get("Item")
                if found is not None:
                    self._keep_unkept_error(found)
                return Recorded.FOUND
            raise
        # A line parked in the dead-letter queue (park()), redriven: listed so no more.
        unparks = bool(replaced.get("Attributes", {}).get(_PARKED_FLAG))
        try:
            with _asking_a_count():
                response = self._count(import_id, outcome, unparks, at)
        except NeverSent:
            # No attempt reached DynamoDB (one that may have would not have been retried: _count_once).
            self._client.put_item(TableName=self._markers, Item=self._uncounted(marker, unparks))
            raise
        except ClientError as failure:
            if busy(failure):
                # Refused, not applied (every line adds to its import's one item, so a burst of
                # workers can be throttled): flagged so, the line is counted by the redelivery this
                # raise brings, which would otherwise find it recorded and leave the import one short.
                # A parked line's listing stays with it (its count not taken either): the redelivery
                # that counts the line takes it off.
                self._client.put_item(TableName=self._markers, Item=self._uncounted(marker, unparks))
                raise
            if not _is_conditional_failure(failure):
                raise
            # A message naming an import that does not exist (never a half-made import item), or
            # an import recounted from its markers, this line's included (recount()).
            logger.warning("no such import to record on", extra={"import_id": escape_for_log(import_id), "line": line})
            return Recorded.REFUSED
        # An answer lost (_count_once) leaves the marker as it is, the line recorded: counted once if
        # the count was applied, else the import stays one short until the recount (recount()).
        if unparks:
            # Counted: its listing goes (a worker killed before this leaves it listed while the
            # import has another order parked: README, bulk import, Failures).
            self._client.delete_item(TableName=self._table, Key=_parked_key(import_id, line))
        values = from_item(response["Attributes"])
        # `failed` numbers the failures in the order they were recorded: the first ones are kept.
        ordinal = int(values.get("failed", 0))
        self._note_failures(import_id, ordinal)
        if outcome is Outcome.FAILED and error is not None and ordinal <= MAX_REPORTED_ERRORS:
            entry = {**_error_key(import_id, ordinal), **_error_fields(error)}
            try:
                self._client.put_item(TableName=self._table, Item=entry)
            except Exception:
                # Counted, not kept: the error goes on the line's marker, and whatever finds the
                # line recorded next (the redelivery this raise brings, a retried split) writes it.
                self._client.put_item(TableName=self._markers, Item={**marker, "unkept_error": {"M": entry}})
                raise
        elif outcome is Outcome.FAILED and error is not None and _PAST_CAP not in marker:
            self._mark_past_cap(import_id, line, marker)
        self._complete_if_done(import_id, values, at)
        return Recorded.COUNTED

    def _count(self, import_id: str, outcome: Outcome, unparks: bool, at: datetime) -> dict[str, Any]:
        """ADD the line's outcome to its import's counters (and take a parked line's listing off
        `parked`); the import as it is after."""
        return self._client.update_item(
            TableName=self._table,
            Key=_import_key(import_id),
            UpdateExpression="ADD #counter :one"
            + (", parked :minus_one" if unparks else "")
            + " SET updated_at = :now",
            # Once recounted from its markers (recount()), every marked line is counted: a
            # worker that marked a line before and counts it only now is refused.
            ConditionExpression="attribute_exists(pk) AND attribute_not_exists(recounted)",
            ExpressionAttributeNames={"#counter": _COUNTERS[outcome]},
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":now": {"S": timestamp(at)},
                **({":minus_one": {"N": "-1"}} if unparks else {}),
            },
            ReturnValues="ALL_NEW",
        )

    @staticmethod
    def _uncounted(marker: dict[str, Any], unparks: bool) -> dict[str, Any]:
        """The line's marker, its count not applied: the redelivery counts it (and, parked, unlists it)."""
        parked = {_PARKED_FLAG: {"BOOL": True}} if unparks else {}
        return {**marker, "uncounted": {"BOOL": True}, **parked}

    def park(self, import_id: str, line: int, error: LineError, at: datetime) -> bool:
        # One transaction (a rare path: an order's last delivery failed): the line's marker,
        # flagged uncounted so that the redrive records it (record() replaces it, and takes the
        # listing off), the listing and the import's count of them, or none of them. Refused when
        # the line has a marker: recorded meanwhile, or parked already (a redrive parked again).
        marker = {
            "id": {"S": _marker_id(import_id, line)},
            "uncounted": {"BOOL": True},
            _PARKED_FLAG: {"BOOL": True},
            "expiration": {"N": str(int((at + timedelta(days=MARKER_DAYS)).timestamp()))},
        }
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._markers,
                            "Item": marker,
                            "ConditionExpression": "attribute_not_exists(id)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": {**_parked_key(import_id, line), **_error_fields(error)},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _import_key(import_id),
                            "UpdateExpression": "ADD parked :one",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                ]
            )
        except ClientError as failure:
            if failure.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code") for reason in failure.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" not in reasons:
                raise  # a conflict with another write, or throttled: not listed
            return False
        return True

    def _parked(self, import_id: str) -> list[ImportErrorEntry]:
        """The first MAX_PARKED_LISTED orders parked in the dead-letter queue, by line."""
        response = self._client.query(
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :parked)",
            ExpressionAttributeValues={":pk": _error_key(import_id, 0)["pk"], ":parked": {"S": _PARKED}},
            Limit=MAX_PARKED_LISTED,
        )
        return [_entry(from_item(item)) for item in response.get("Items", [])]

    def _past_cap_known(self, import_id: str) -> bool:
        with self._past_cap_lock:
            return import_id in self._past_cap

    def _note_failures(self, import_id: str, failed: int) -> None:
        """The import counted `failed` failures (a count's answer, or its item read): once that is
        MAX_REPORTED_ERRORS, every failure this instance marks on it from now on is past the cap."""
        if failed < MAX_REPORTED_ERRORS or self._past_cap_known(import_id):
            return
        with self._past_cap_lock:
            self._past_cap[import_id] = None
            while len(self._past_cap) > self.CACHED_REPORTS:
                self._past_cap.popitem(last=False)

    def _mark_past_cap(self, import_id: str, line: int, marker: dict[str, Any]) -> None:
        """A failure counted past the cap on a marker put without saying so (this instance had not
        seen the import's failures reach the cap): one write, once per instance and import at
        most but for failures counted at once. Refused, the line is counted all the same: only a
        lost error of the report's first ones could then be listed as this line's (README)."""
        try:
            self._client.put_item(TableName=self._markers, Item={**marker, _PAST_CAP: {"BOOL": True}})
        except ClientError as error:
            if not busy(error):
                raise
            logger.warning(
                "import failure counted past the report's cap and not marked so",
                extra={"import_id": escape_for_log(import_id), "line": line},
            )

    def complete_if_done(self, import_id: str, at: datetime, line: int | None = None) -> None:
        # One read of the import for both: writing an error never changes the import's item.
        item = self._client.get_item(TableName=self._table, Key=_import_key(import_id), ConsistentRead=True).get("Item")
        if item is None:
            return
        if line is not None:
            marker = self._marker(import_id, line)
            if marker is not None and not self._keep_unkept_error(marker):
                self._keep_lost_errors(import_id, item, iter([marker]))
        self._complete_if_done(import_id, from_item(item), at)

    def keep_lost_errors(self, import_id: str, lines: list[int]) -> None:
        # One read of the import for all the lines; their markers only while the report is short.
        if not lines:
            return
        item = self._client.get_item(TableName=self._table, Key=_import_key(import_id), ConsistentRead=True).get("Item")
        if item is not None:
            markers = (self._marker(import_id, line) for line in lines)
            self._keep_lost_errors(import_id, item, (marker for marker in markers if marker is not None))

    def _marker(self, import_id: str, line: int) -> dict[str, Any] | None:
        return self._client.get_item(
            TableName=self._markers, Key={"id": {"S": _marker_id(import_id, line)}}, ConsistentRead=True
        ).get("Item")

    def _keep_unkept_error(self, marker: dict[str, Any]) -> bool:
        """Write the error record() counted and could not write, if it left it on the line's
        `marker` (True); then the marker as it would have been."""
        if "unkept_error" not in marker:
            return False
        marker = dict(marker)
        self._client.put_item(TableName=self._table, Item=marker.pop("unkept_error")["M"])
        self._client.put_item(TableName=self._markers, Item=marker)
        return True

    def _keep_lost_errors(self, import_id: str, item: dict[str, Any], markers: Iterator[dict[str, Any]]) -> None:
        """For each failure's marker, while the report (the import's `item` and its errors, read
        once) is short of errors: when the marker holds no unkept error (record() could not leave
        it there either) and the report does not list its error, write that error (on the marker
        since the line was marked) under its line, not an ordinal: the one missing is unknown, and
        may be a worker's that is about to write it (this line's own, too: the report lists each
        line's error once, _once_per_line). No marker is read once the report is whole."""
        listed, short = self._shortfall(import_id, int(item.get("failed", {}).get("N", "0")))
        if short <= 0:
            return
        lines = {entry.line for entry in listed}
        for marker in markers:
            error = marker.get("error", {}).get("M")
            if (
                marker.get("outcome", {}).get("S") != Outcome.FAILED.value
                or not error
                or "unkept_error" in marker
                or _PAST_CAP in marker  # counted past the cap: its error is not one the report keeps
            ):
                continue
            if int(error["line"]["N"]) not in lines:
                key = {"pk": _error_key(import_id, 0)["pk"], "sk": {"S": f"{_RECOVERED}{_marker_line(marker)}"}}
                self._client.put_item(TableName=self._table, Item={**key, **error})
                lines.add(int(error["line"]["N"]))
                short -= 1
                if short <= 0:
                    return

    def _complete_if_done(self, import_id: str, values: dict[str, Any], at: datetime) -> None:
        """Whoever sees the final total reached ends the import; the condition lets one win."""
        if values.get("status") != ImportStatus.RUNNING.value or not values.get("total_final"):
            return
        failed = int(values.get("failed", 0))
        done = int(values.get("imported", 0)) + int(values.get("duplicates", 0)) + failed
        if done < int(values.get("total", 0)):
            return
        final = ImportStatus.COMPLETED_WITH_ERRORS if failed else ImportStatus.COMPLETED
        from_status, from_values = _status_write(final)
        self._update_if(
            import_id,
            "SET #status = :final, updated_at = :now, finished_at = :now",
            from_status,
            {"#status": "status"},
            {":final": {"S": final.value}, ":now": {"S": timestamp(at)}, **from_values},
        )

    # --- The recount of imports left short (core/import_recount.py) ----------------------------
    def stuck(self, now: datetime, idle: timedelta, again: timedelta) -> list[str]:
        # Only imports whose markers are all still kept (MARKER_DAYS), by the listing's sort key.
        since = timestamp(now - timedelta(days=MARKER_DAYS - 1))
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk >= :since",
            "ExpressionAttributeValues": {":pk": {"S": LIST_PK}, ":since": {"S": since}},
        }
        ids: list[str] = []
        while True:
            response = self._client.query(**query)
            ids.extend(item["id"]["S"] for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        found = {
            item["id"]["S"]: from_item(item)
            for item in batch_get(self._client, self._table, [_import_key(i) for i in ids])
        }
        idle_since, checked_since = timestamp(now - idle), timestamp(now - again)
        stuck = []
        for import_id in ids:
            values = found.get(import_id)
            if values is None or (not _short(values) and not _recounted_not_ended(values)):
                continue
            if values["updated_at"] > idle_since:
                continue
            if "last_line" not in values:
                # Read before last_line was kept: the recount cannot know where its markers end.
                logger.warning(
                    "import short of its total not recounted: it was read before its last line was "
                    "kept; replay its file's S3 event (README, bulk import, Known gaps) and the next "
                    "pass recounts it",
                    extra={"import_id": import_id, "source": values.get("source")},
                )
                continue
            waiting = values.get("recount_waiting") or {}
            if waiting.get("seen") == values["updated_at"] and waiting.get("at", "") > checked_since:
                continue
            stuck.append(import_id)
        return stuck

    def recount(self, import_id: str, at: datetime, time_up: TimeUp) -> Recount:
        item = self._client.get_item(TableName=self._table, Key=_import_key(import_id), ConsistentRead=True).get("Item")
        values = from_item(item) if item is not None else {}
        if not values or values.get("status") != ImportStatus.RUNNING.value or not values.get("total_final"):
            return Recount.CHANGED
        if not values.get("recounted"):
            if not _short(values):
                self._complete_if_done(import_id, values, at)
                return Recount.CHANGED
            result = self._count_markers(import_id, values, at, time_up)
            if result is not Recount.COMPLETED:
                return result
        # Recounted (now, or by a pass that stopped before ending it): the errors of the lines it
        # counted, then the end.
        self._keep_recounted_errors(import_id)
        self.complete_if_done(import_id, at)
        return Recount.COMPLETED

    def _count_markers(self, import_id: str, values: dict[str, Any], at: datetime, time_up: TimeUp) -> Recount:
        seen = values["updated_at"]
        state = values.get("recount") or {}
        # Begun afresh: the import moved since a recount stopped (or one stopped before failures'
        # lines were kept, rather than their errors).
        if state.get("seen") != seen or "unkept_lines" not in state:
            state = {"seen": seen, "next": 1, "imported": 0, "duplicates": 0, "failed": 0, "unkept_lines": []}
        counted_failed = int(values.get("failed", 0))
        room = MAX_REPORTED_ERRORS - counted_failed  # errors the report still keeps
        kept_lines = self._kept_error_lines(import_id) if room > 0 else None
        last = int(values["last_line"])
        line = int(state["next"])
        while line <= last:
            if time_up():
                state["next"] = line
                self._keep_recount_state(import_id, seen, "recount", state)
                return Recount.CUT_SHORT
            lines = range(line, min(line + self.RECOUNT_CHUNK, last + 1))
            keys = [{"id": {"S": _marker_id(import_id, n)}} for n in lines]
            unkept: list[int] = []
            for marker in batch_get(self._client, self._markers, keys, consistent=True):
                if marker.get("uncounted", {}).get("BOOL"):
                    continue  # its count was refused: the redelivery under way counts it
                outcome = Outcome(marker["outcome"]["S"])
                state[_COUNTERS[outcome]] = int(state[_COUNTERS[outcome]]) + 1
                error = marker.get("error", {}).get("M")
                # A failure whose error is not kept was never counted (the first failures' errors
                # all are): its error is kept once it is, read again from its marker then (the
                # import's item holds only the lines, up to the report's room: never near 400 KB).
                if (
                    outcome is Outcome.FAILED
                    and error
                    and kept_lines is not None
                    and "unkept_error" not in marker
                    and int(error["line"]["N"]) not in kept_lines
                ):
                    unkept.append(_marker_line(marker))
            state["unkept_lines"] = [*map(int, state["unkept_lines"]), *sorted(unkept)][: max(0, room)]
            line = lines[-1] + 1
        counts = {name: int(state[name]) for name in _COUNTERS.values()}
        if sum(counts.values()) < int(values.get("total", 0)):
            # An order not marked yet: its message is in flight or in the DLQ, and counts it.
            self._keep_recount_state(import_id, seen, "recount_waiting", {"seen": seen, "at": timestamp(at)})
            return Recount.WAITING
        names = {"#" + name: name for name in _COUNTERS.values()}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_import_key(import_id),
                UpdateExpression="SET #imported = :imported, #duplicates = :duplicates, #failed = :failed, "
                "recounted = :unkept REMOVE recount, recount_waiting",
                # As the recount read it: no worker counted a line meanwhile.
                ConditionExpression="#status = :running AND updated_at = :seen AND #imported = :was_imported "
                "AND #duplicates = :was_duplicates AND #failed = :was_failed",
                ExpressionAttributeNames={**names, "#status": "status"},
                ExpressionAttributeValues={
                    **{f":{name}": {"N": str(count)} for name, count in counts.items()},
                    **{f":was_{name}": {"N": str(int(values.get(name, 0)))} for name in counts},
                    ":unkept": {
                        "M": {
                            "after": {"N": str(counted_failed)},
                            "lines": {"L": [{"N": str(n)} for n in state["unkept_lines"]]},
                        }
                    },
                    ":running": {"S": ImportStatus.RUNNING.value},
                    ":seen": {"S": seen},
                },
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return Recount.CHANGED
        logger.warning(
            "import recounted from its line markers: a line was recorded and never counted",
            extra={"import_id": import_id, "was": {n: int(values.get(n, 0)) for n in counts}, "now": counts},
        )
        return Recount.COMPLETED

    def _kept_error_lines(self, import_id: str) -> set[int]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _error_key(import_id, 0)["pk"]},
            "ProjectionExpression": "sk, line",
        }
        lines: set[int] = set()
        while True:
            response = self._client.query(**query)
            # Not an order parked in the dead-letter queue (park()): no failure counted.
            items = [item for item in response.get("Items", []) if not item["sk"]["S"].startswith(_PARKED)]
            lines.update(int(item["line"]["N"]) for item in items)
            if "LastEvaluatedKey" not in response:
                return lines
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _keep_recount_state(self, import_id: str, seen: str, name: str, state: dict[str, Any]) -> None:
        """What a recount leaves for the next (where it stopped, or that it found orders not
        marked), while the import is as it read it; never its updated_at."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_import_key(import_id),
                UpdateExpression="SET #state = :state",
                ConditionExpression="updated_at = :seen AND attribute_not_exists(recounted)",
                ExpressionAttributeNames={"#state": name},
                ExpressionAttributeValues={":state": {"M": to_item(state)}, ":seen": {"S": seen}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise

    def _keep_recounted_errors(self, import_id: str) -> None:
        """The errors of the failures a recount counted, under the ordinals after those counted
        before it (written again by a pass that finds the recount stopped before the end)."""
        item = self._client.get_item(TableName=self._table, Key=_import_key(import_id), ConsistentRead=True)["Item"]
        recounted = item.get("recounted", {}).get("M", {})
        ordinal = int(recounted.get("after", {}).get("N", "0"))
        # The failures' lines, in order: their errors are on their markers. (A recount made before
        # the lines were kept holds the errors themselves.)
        lines = [int(n["N"]) for n in recounted.get("lines", {}).get("L", [])]
        keys = [{"id": {"S": _marker_id(import_id, n)}} for n in lines]
        markers = {m["id"]["S"]: m for m in batch_get(self._client, self._markers, keys, consistent=True)}
        errors = [markers[k["id"]["S"]]["error"]["M"] for k in keys if "error" in markers.get(k["id"]["S"], {})]
        for error in [*(entry["M"] for entry in recounted.get("errors", {}).get("L", [])), *errors]:
            ordinal += 1
            if ordinal <= MAX_REPORTED_ERRORS:
                self._client.put_item(TableName=self._table, Item={**_error_key(import_id, ordinal), **error})

    # --- Reads --------------------------------------------------------------------------------
    def get(self, import_id: str) -> ImportReport | None:
        item = self._client.get_item(TableName=self._table, Key=_import_key(import_id)).get("Item")
        if item is None:
            return None
        values = from_item(item)
        errors: list[ImportErrorEntry] = []
        if values.get("error_code"):
            errors.append(ImportErrorEntry(line=None, code=values["error_code"], message=values["error_message"]))
        kept = min(int(values.get("failed", 0)), MAX_REPORTED_ERRORS)
        listed = self._errors(import_id, kept)
        if int(values.get("parked", 0)) > 0:  # orders waiting in the dead-letter queue: one query
            listed += self._parked(import_id)
        errors.extend(sorted(listed, key=lambda entry: entry.line or 0))
        return ImportReport(**_summary_fields(values), errors=errors)

    def _errors(self, import_id: str, kept: int) -> list[ImportErrorEntry]:
        """The import's first `kept` errors as far as they are written, reading only those past the
        gap-free run this instance already has."""
        with self._read_errors_lock:
            known = list(self._read_errors.get(import_id, ()))
        if len(known) >= kept:
            return _once_per_line(known[:kept])
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk > :after",
            "ExpressionAttributeValues": {
                ":pk": _error_key(import_id, 0)["pk"],
                ":after": _error_key(import_id, len(known))["sk"],
            },
        }
        after_gap: list[ImportErrorEntry] = []
        recovered: list[ImportErrorEntry] = []
        while True:
            response = self._client.query(**query)
            for item in response.get("Items", []):
                values = from_item(item)
                if values["sk"].startswith(_PARKED):
                    continue  # not a failure counted: _parked()
                entry = _entry(values)
                if values["sk"].startswith(_RECOVERED):
                    recovered.append(entry)
                elif int(values["sk"]) <= MAX_REPORTED_ERRORS:
                    if values["sk"] == f"{len(known) + 1:06d}" and not after_gap:
                        known.append(entry)
                    else:
                        after_gap.append(entry)
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        with self._read_errors_lock:
            self._read_errors[import_id] = known
            self._read_errors.move_to_end(import_id)
            while len(self._read_errors) > self.CACHED_REPORTS:
                self._read_errors.popitem(last=False)
        # Past the `kept` first: an error under an ordinal is one of them; one under its line
        # (_keep_lost_errors) stands for one lost, and may be of a failure counted past the first
        # MAX_REPORTED_ERRORS, or of a line marked and not counted yet: those listed are the first
        # by line, never by their keys' string order ("line#100" before "line#20").
        recovered.sort(key=lambda entry: entry.line or 0)
        return _once_per_line(known + after_gap + recovered)[:kept]

    def list(self, limit: int, cursor: str | None) -> tuple[list[ImportSummary], str | None]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": LIST_PK}},
            "ScanIndexForward": False,
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, "imports", {"pk", "sk"}, {"pk": LIST_PK})
        items, last = query_page(self._client, query, limit, {"pk", "sk"})
        ids = [item["id"]["S"] for item in items]
        found = {item["id"]["S"]: item for item in batch_get(self._client, self._table, [_import_key(i) for i in ids])}
        summaries = [ImportSummary(**_summary_fields(from_item(found[i]))) for i in ids if i in found]
        return summaries, encode_cursor("imports", last) if last else None


def import_summary(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The import an import's item (DynamoDB JSON, e.g. a stream image) holds, as GET
    /imports/{id} shows it without its errors; None for any other item of the table."""
    if not item or item.get("sk", {}).get("S") != "IMPORT" or not item.get("pk", {}).get("S", "").startswith(IMPORT_PK):
        return None
    return ImportSummary(**_summary_fields(from_item(item))).model_dump(mode="json")


def import_failure(item: dict[str, Any] | None) -> str | None:
    """The code an import's item (DynamoDB JSON, e.g. a stream image) says the import failed with
    as a whole; None when it has not failed."""
    return (item or {}).get("error_code", {}).get("S")


def import_file_error(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The error an import's item (DynamoDB JSON, e.g. a stream image) holds for the import's file,
    as GET /imports/{id} lists it first; None when the import has not failed as a whole."""
    code = import_failure(item)
    if code is None:
        return None
    message = (item or {}).get("error_message", {}).get("S", "")
    return ImportErrorEntry(line=None, code=code, message=message).model_dump(mode="json")


def _summary_fields(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": values["id"],
        "source": values["source"],
        "status": values["status"],
        "format": values.get("format"),
        "total": int(values.get("total", 0)),
        "total_final": bool(values.get("total_final")),
        "imported": int(values.get("imported", 0)),
        "duplicates": int(values.get("duplicates", 0)),
        "failed": int(values.get("failed", 0)),
        "created_at": values["created_at"],
        "updated_at": values["updated_at"],
    }


# --- The import queue ------------------------------------------------------------------------------

BATCH_ENTRIES = 10  # SendMessageBatch takes at most 10 messages...
BATCH_BYTES = 256 * 1024  # ...of at most 256 KiB together (bodies and attributes)
SEND_ATTEMPTS = 5


class OrderTooLarge(ValueError):
    pass


def origin_attributes(origin: OrderOrigin) -> dict[str, dict[str, str]]:
    """Where a queued order comes from, as SQS message attributes: the body stays a plain POST
    /orders body, exactly what another system sends directly."""
    attributes = {
        "import_id": {"DataType": "String", "StringValue": origin.import_id},
        "line": {"DataType": "Number", "StringValue": str(origin.line)},
    }
    if origin.format:
        attributes["format"] = {"DataType": "String", "StringValue": origin.format}
    if origin.signature:
        attributes["signature"] = {"DataType": "String", "StringValue": origin.signature}
    if origin.line_numbers and set(origin.line_numbers) != {origin.line}:
        attributes["line_numbers"] = {
            "DataType": "String",
            "StringValue": ",".join(str(n) for n in origin.line_numbers),
        }
    return attributes


# What the splitter writes (core.imports.import_id_for): another id, 3,000 characters of it, failed
# its marker's write (over DynamoDB's key limit) on every delivery.
_IMPORT_ID = re.compile(r"imp_[a-z2-7]{24}")
_LINE_NUMBER = re.compile(r"[0-9]{1,12}")
_LINE_NUMBERS = re.compile(r"[0-9]{1,12}(?:,[0-9]{1,12})*")


def origin_from(attributes: dict[str, Any]) -> OrderOrigin | None:
    """The inverse, from a Lambda SQS record's messageAttributes (stringValue) or an SQS API
    message's MessageAttributes (StringValue). None when the message came from another system."""

    def text(name: str) -> str | None:
        value = attributes.get(name) or {}
        if not isinstance(value, dict):
            return None
        found = value.get("stringValue", value.get("StringValue"))
        return found if isinstance(found, str) else None

    import_id, line = text("import_id"), text("line")
    if not import_id or not _IMPORT_ID.fullmatch(import_id) or not line or not _LINE_NUMBER.fullmatch(line):
        return None
    numbers = text("line_numbers")
    if numbers and not _LINE_NUMBERS.fullmatch(numbers):
        # Not what the splitter writes (it writes plain ASCII numbers): not an import line. Read as
        # one, "²" (a digit to str.isdigit) or 5,000 digits made int() raise on every delivery.
        return None
    line_numbers = tuple(int(n) for n in numbers.split(",")) if numbers else ()
    return OrderOrigin(
        import_id=import_id,
        line=int(line),
        line_numbers=line_numbers,
        format=text("format"),
        signature=text("signature"),
    )


def _entry_bytes(entry: dict[str, Any]) -> int:
    size = len(entry["MessageBody"].encode())
    for name, value in entry.get("MessageAttributes", {}).items():
        size += len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
    return size


class SqsOrderQueue(OrderQueue):
    """Batches of up to 10 messages (and 256 KiB) per SendMessageBatch; entries SQS refuses are
    sent again (with back-off) before the split gives up. The splitter never waits for the queue
    to drain: on AWS the workers scale out with its depth."""

    def __init__(self, client: Any, queue_url: str, sleep: Callable[[float], None] = time.sleep):
        self._client = client
        self._queue_url = queue_url
        self._sleep = sleep
        self._batch: list[dict[str, Any]] = []
        self._batch_bytes = 0
        self.sent = 0

    def send(self, order: QueuedOrder) -> None:
        entry = {
            "Id": str(len(self._batch)),
            "MessageBody": order.body,
            "MessageAttributes": origin_attributes(order.origin),
        }
        size = _entry_bytes(entry)
        if size > BATCH_BYTES:
            raise OrderTooLarge(f"an order of {size} bytes does not fit an SQS message")
        if len(self._batch) >= BATCH_ENTRIES or self._batch_bytes + size > BATCH_BYTES:
            self.flush()
            entry["Id"] = "0"
        self._batch.append(entry)
        self._batch_bytes += size
        if len(self._batch) >= BATCH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        entries, self._batch, self._batch_bytes = self._batch, [], 0
        for attempt in range(SEND_ATTEMPTS):
            response = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            failed = {failure["Id"] for failure in response.get("Failed", [])}
            self.sent += len(entries) - len(failed)
            if not failed:
                return
            sender_faults = [f for f in response["Failed"] if f.get("SenderFault")]
            if sender_faults:  # a malformed entry will not improve by sending it again
                raise RuntimeError(f"SQS refused import messages: {sender_faults[0].get('Code')}")
            entries = [entry for entry in entries if entry["Id"] in failed]
            self._sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"SQS did not take {len(entries)} import messages after {SEND_ATTEMPTS} attempts")


# --- The continuation of a split -----------------------------------------------------------------

# The key of a splitter's event that says it continues a split: the orders queued before it.
CONTINUE_AFTER = "continue_after_orders"


def continued_after(event: dict[str, Any]) -> int:
    """The orders a continuation event says were queued before it; 0 for an S3 event. Anything but
    a whole number of orders fails the invocation (a hand-made event: nothing is read)."""
    value = event.get(CONTINUE_AFTER, 0)
    if type(value) is not int or value < 0:
        raise ValueError(f"{CONTINUE_AFTER} must be a whole number of orders, got {value!r}")
    return value


class LambdaSplitContinuation:
    """Hands the rest of a file to a new invocation of the splitter itself: an asynchronous Invoke
    (InvocationType Event) of the file's S3 event and the orders queued so far. Lambda queues it,
    retries it per the function's EventInvokeConfig and, failing that, sends it to the same
    OnFailure destination as an S3 event, replayed the same way."""

    def __init__(self, client: Any, function_arn: str):
        self._client = client
        self._function_arn = function_arn

    def __call__(self, event: dict[str, Any], after: int) -> None:
        payload = {**event, CONTINUE_AFTER: after}
        self._client.invoke(FunctionName=self._function_arn, InvocationType="Event", Payload=json.dumps(payload))


# --- The files ---------------------------------------------------------------------------------------

CHUNK_BYTES = 256 * 1024


class S3ImportFiles:
    """Streams an uploaded file from S3 in chunks: the object is never read whole."""

    def __init__(self, client: Any):
        self._client = client

    def open(self, bucket: str, key: str, version_id: str | None, etag: str | None) -> Iterator[bytes]:
        """The chunks of exactly the object version the event announced. A file deleted or replaced
        before it could be read is an ImportFileError (the import fails with a clear reason)."""
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            request["VersionId"] = version_id
        elif etag:
            request["IfMatch"] = f'"{etag.strip(chr(34))}"'
        try:
            body = self._client.get_object(**request)["Body"]
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code in ("NoSuchKey", "NoSuchVersion", "PreconditionFailed", "412", "404"):
                raise ImportFileError(
                    "file_unavailable", f"s3://{bucket}/{key} was deleted or replaced before it could be read"
                ) from None
            raise
        return body.iter_chunks(CHUNK_BYTES)
