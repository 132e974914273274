"""Customer and report aggregates in the catalog table: atomic counters, applied once per order change."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from core.aggregates import (
    AggregateChange,
    CounterUpdate,
    CustomerSeen,
    Filing,
    WentBy,
    customer_key,
    email_key,
    email_partitions,
    filing_key,
    report_channels_key,
)
from core.errors import InvalidCursor
from functions.adapters.dynamodb import decode_cursor, encode_cursor, from_item, to_item

# A DynamoDB transaction holds at most 100 items: one is the change's marker.
_PER_TRANSACTION = 99
# Report partitions read at once: botocore keeps 10 connections per client (max_pool_connections),
# so more threads would only wait for one.
REPORT_READERS = 10
# Markers outlive the stream's 24 h retention, the longest a record can be delivered again.
MARKER_TTL_SECONDS = 7 * 86400
# Registry entries (currency, day, channel) a store remembers writing: a few a day per container;
# past this many (a container alive for years) it forgets them all and writes each once more.
_REGISTERED_AT_MOST = 4096


# A new order's times go on its customer row unless a later order of the customer already set them.
_LATER = "attribute_not_exists(last_order_at) OR last_order_at < :t"


# An older order's name replaces the one shown only if that one came from an order before it. A row
# without `name_at` was named before names were timed, by an order of unknown time: it takes the
# name only if it has none, or has this one (set where missing by this order's counters just now).
_NAMED_LATER = "name_at < :t OR (attribute_not_exists(name_at) AND (attribute_not_exists(#name) OR #name = :name))"


def _latest(seen: CustomerSeen) -> dict[str, str]:
    """What the customer's row takes of its latest order: its email, and its name (with the order's
    time, `name_at`: a name-less later order leaves the name, and an older order arriving late
    replaces it only if it is later than the order the name came from) when it gave one."""
    return {"email": seen.email, **({"name": seen.name, "name_at": seen.at} if seen.name else {})}


class _OlderOrder(Exception):
    """A new order's counters' transaction refused: a later order already set its customer row's times."""


MARKERS_PK = "aggregated#"  # + the order's id: the markers of its changes applied, sk the version and part


def marker_key(order_id: str, version: int, part: int) -> dict[str, Any]:
    return {"pk": {"S": MARKERS_PK + order_id}, "sk": {"S": f"v{version:012d}#{part}"}}


class DynamoAggregates:
    """Each change is one transaction per 99 counter updates, with a marker item put on
    attribute_not_exists: a redelivered stream record finds its marker and adds nothing, and a
    counter never moves without its marker (nor the marker without its counters)."""

    def __init__(self, client: Any, table: str, now: Any = time.time):
        self._client = client
        self._table = table
        self._now = now
        # The day registry entries this store wrote: the registry only ever gains channels (an ADD
        # to a set; nothing removes one), so an entry written once is there for every later change.
        self._registered: set[tuple[str, str, str]] = set()

    def apply(self, change: AggregateChange) -> bool:
        # The day's channel registry first: adding a channel to a set twice changes nothing, and
        # a reader must never miss a channel whose counters are already in. Once per container and
        # entry: every allocation, cancel and return of the day's orders wrote it again (a write
        # unit each), to an item that already named the channel.
        for entry in change.report_days:
            if entry in self._registered:
                continue
            pk, sk, channel = entry
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                UpdateExpression="ADD channels :c",
                ExpressionAttributeValues={":c": {"SS": [channel]}},
            )
            if len(self._registered) >= _REGISTERED_AT_MOST:
                self._registered.clear()
            self._registered.add(entry)
        applied = False
        updates = change.updates
        parts = [updates[start : start + _PER_TRANSACTION] for start in range(0, len(updates), _PER_TRANSACTION)]
        recorded = change.filed_on is not None
        if recorded and (not parts or len(parts[-1]) == _PER_TRANSACTION):
            parts.append([])  # the filing goes with the last part: a full one gets a part of its own
        timed = False  # the new order's times went with its counters
        for part, chunk in enumerate(parts):
            filing = recorded and part == len(parts) - 1
            row = self._customer_row(change.seen, chunk) if part == 0 else None
            try:
                done = self._transact(change, part, chunk, filing=filing, row=row)
            except _OlderOrder:  # a later order of the customer came first: its times stay
                done = self._transact(change, part, chunk, filing=filing)
            else:
                timed = row is not None and done
            applied |= done
        if change.seen is not None:
            if not timed:  # an older order arriving late, a change with no counters, a redelivery
                self._record_seen(change.seen)
            self._index_email(change.seen)
            applied = True
        return applied

    @staticmethod
    def _customer_row(seen: CustomerSeen | None, updates: list[CounterUpdate]) -> int | None:
        """The index of the update of `seen`'s customer row among `updates`, if any."""
        if seen is None:
            return None
        key = customer_key(seen.customer_id, seen.channel)
        return next((i for i, update in enumerate(updates) if (update.pk, update.sk) == key), None)

    def _transact(
        self,
        change: AggregateChange,
        part: int,
        updates: list[CounterUpdate],
        *,
        filing: bool = False,
        row: int | None = None,
    ) -> bool:
        """The part's marker and counters in one transaction; False if its marker was there. With
        `row` (a new order: the index of its customer's row among `updates`, _customer_row), the
        row's update also sets the order's times, email and name (`change.seen`), on the condition
        that no later order of the customer set them (_record_seen's first write, one write unit
        less per order): raises _OlderOrder when one did."""
        marker = {
            **marker_key(change.order_id, change.version, part),
            "expires_at": {"N": str(int(self._now()) + MARKER_TTL_SECONDS)},
            # What the change read of the filing and went by: a parked record replayed after it goes by the same.
            **({"went_by_day": {"S": change.went_by.day}} if change.went_by.day is not None else {}),
            **({"went_by_credit": {"BOOL": change.went_by.credit}} if change.went_by.credit is not None else {}),
        }
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self._table, "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}}
        ]
        items.extend(
            {"Update": self._counter_update(update, change.seen if i == row else None)}
            for i, update in enumerate(updates)
        )
        if filing:
            # Rare (an order allocated on another day than it was placed, an exchange's
            # replacement): one more item in the transaction, so the filing is on record exactly
            # when its counters are (a part of 99 counters never takes it: the parts are cut as
            # they were before it existed).
            items.append({"Update": self._filing_update(change)})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            if (
                error.response["Error"]["Code"] == "TransactionCanceledException"
                and reasons
                and reasons[0].get("Code") == "ConditionalCheckFailed"
            ):
                return False  # applied by an earlier delivery of the same record
            if (
                row is not None
                and error.response["Error"]["Code"] == "TransactionCanceledException"
                and len(reasons) > row + 1
                and reasons[row + 1].get("Code") == "ConditionalCheckFailed"
            ):
                raise _OlderOrder() from error
            raise
        return True

    def _filing_update(self, change: AggregateChange) -> dict[str, Any]:
        """The filing's day, and the day with the change's version appended to `filings` (Filing.days:
        a change replayed late goes by the filing its version stood on). An earlier version also
        recorded here whether a replacement's credit was counted: Filing.credit, kept as it is."""
        pk, sk = filing_key(change.order_id)
        return {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "UpdateExpression": "SET #day = :day, filings = list_append(if_not_exists(filings, :none), :filed)",
            "ExpressionAttributeValues": {
                ":day": {"S": str(change.filed_on)},
                ":none": {"L": []},
                ":filed": {"L": [{"S": f"{change.version:012d}#{change.filed_on}"}]},
            },
            "ExpressionAttributeNames": {"#day": "day"},
        }

    def _counter_update(self, update: CounterUpdate, seen: CustomerSeen | None = None) -> dict[str, Any]:
        """The update's ADDs and its SETs where the item has none; with `seen`, the new order's
        times, email and name set as _record_seen's first write sets them, on its condition."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        adds, sets = [], []
        for i, (attribute, delta) in enumerate(sorted(update.add.items())):
            names[f"#a{i}"] = attribute
            values[f":a{i}"] = delta
            adds.append(f"#a{i} :a{i}")
        latest = {} if seen is None else _latest(seen)
        for i, (attribute, value) in enumerate(sorted({**update.set, **latest}.items())):
            names[f"#s{i}"] = attribute
            values[f":s{i}"] = value
            sets.append(f"#s{i} = :s{i}" if attribute in latest else f"#s{i} = if_not_exists(#s{i}, :s{i})")
        condition = {}
        if seen is not None:
            values[":t"] = seen.at
            sets += ["last_order_at = :t", "first_order_at = if_not_exists(first_order_at, :t)"]
            condition = {"ConditionExpression": _LATER}
        expression = "ADD " + ", ".join(adds) + (" SET " + ", ".join(sets) if sets else "")
        return {
            "TableName": self._table,
            "Key": {"pk": {"S": update.pk}, "sk": {"S": update.sk}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
            **condition,
        }

    def _record_seen(self, seen: CustomerSeen) -> None:
        """First and last order times are a min and a max (the stream delivers different orders
        in any order), kept by conditional SETs that are no-ops when the stored time already
        wins. A new order's counters' transaction makes the first write (_counter_update), so
        this runs for an older order that arrives late, for a redelivery (an earlier version
        wrote the times after the transaction, and may have stopped between) and for a change
        with no customer counters: one write when the order is later than the row's (it moves
        `last_order_at`, and the customer's email and name with it), a second when it is older.
        Both are idempotent on their own. An older order that gave a name, arriving after a later
        one that gave none, names the customer if its name is later than the one shown (a third
        write, for such an order only: README "name the latest order's that gave one")."""
        pk, sk = customer_key(seen.customer_id, seen.channel)
        key = {"pk": {"S": pk}, "sk": {"S": sk}}
        latest = _latest(seen)
        later = self._set_if(
            key,
            "SET last_order_at = :t, first_order_at = if_not_exists(first_order_at, :t), "
            + ", ".join(f"#{attribute} = :{attribute}" for attribute in latest),
            _LATER,
            seen.at,
            latest,
        )
        if not later:
            self._set_if(key, "SET first_order_at = :t", "first_order_at > :t", seen.at)
            if seen.name:
                named = {"name": seen.name, "name_at": seen.at}
                self._set_if(key, "SET #name = :name, #name_at = :name_at", _NAMED_LATER, seen.at, named)

    def _index_email(self, seen: CustomerSeen) -> None:
        """The email index item gathers the channels the email was used in (a set's ADD: idempotent)."""
        pk, sk = email_key(seen.email, seen.customer_id)
        self._client.update_item(
            TableName=self._table,
            Key={"pk": {"S": pk}, "sk": {"S": sk}},
            UpdateExpression="ADD channels :c",
            ExpressionAttributeValues={":c": {"SS": [seen.channel]}},
        )

    def _set_if(
        self, key: dict[str, Any], expression: str, condition: str, at: str, attributes: dict[str, str] | None = None
    ) -> bool:
        """`expression` if `condition` holds: `:t` is `at`, each of `attributes` is `#name`/`:name`."""
        names = {f"#{attribute}": attribute for attribute in attributes or {}}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeValues={
                    ":t": {"S": at},
                    **{f":{attribute}": {"S": value} for attribute, value in (attributes or {}).items()},
                },
                **({"ExpressionAttributeNames": names} if names else {}),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    # --- Reads -----------------------------------------------------------------------------------
    def filing(self, order_id: str) -> Filing:
        """A consistent read: the filing was written by an earlier record of the same order, and
        only a change moving an order's revenue after it was counted, or a replacement's credit
        (never a typical order's), asks. `credit`: an earlier version counted the replacement's
        credit out of `ordered` (none since does)."""
        pk, sk = filing_key(order_id)
        found = (
            self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
            ).get("Item")
            or {}
        )
        filings = (entry["S"].partition("#") for entry in found.get("filings", {}).get("L", []))
        return Filing(
            day=found["day"]["S"] if "day" in found else None,
            credit=bool(found.get("credit", {}).get("BOOL")),
            days=tuple((int(version), day) for version, _, day in filings),
        )

    def went_by(self, order_id: str, version: int) -> WentBy:
        """The markers of the order's changes after `version`, read consistently (the stream's
        records of one order come one after another): asked only by a change that would record a
        filing, so a typical order never reads them."""
        pk = marker_key(order_id, version + 1, 0)["pk"]
        day: str | None = None
        credit: bool | None = None
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND sk >= :after",
            ExpressionAttributeValues={":pk": pk, ":after": {"S": f"v{version + 1:012d}"}},
            ConsistentRead=True,
        )
        for page in pages:
            for item in page["Items"]:  # oldest first: the earliest change that read each wins
                if day is None and "went_by_day" in item:
                    day = item["went_by_day"]["S"]
                if credit is None and "went_by_credit" in item:
                    credit = item["went_by_credit"]["BOOL"]
        return WentBy(day, credit)

    def customer_items(self, customer_id: str) -> dict[str, dict[str, Any]]:
        pk, _ = customer_key(customer_id, "")
        return {row["sk"]: row for row in self._query(pk)}

    def report_channels(self, currency: str, start: str, end: str) -> dict[str, list[str]]:
        pk, _ = report_channels_key(currency, start)
        rows = self._query(pk, ("BETWEEN :start AND :end", {":start": {"S": start}, ":end": {"S": end}}))
        return {row["sk"]: sorted(row.get("channels") or ()) for row in rows}

    def customer_ids(
        self, email: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        # Read past the customers of other channels, and page after the last one shown: a cursor
        # made of LastEvaluatedKey could name another channel's customer to a channel key. The
        # partitions one after the other (email_partitions: an address indexed decomposed before
        # addresses were composed has a second), the cursor naming the one its customer is in.
        partitions = email_partitions(email)
        # Bound to the channel read for, as the orders' lists are: another channel's list refuses it.
        scope = "customers" if channel is None else f"customers&channel={channel}"
        first, start = 0, None
        if cursor is not None:
            start = decode_cursor(cursor, scope, {"pk", "sk"})
            if start["pk"]["S"] not in partitions:
                raise InvalidCursor()
            first = partitions.index(start["pk"]["S"])
        found: list[tuple[str, str]] = []
        for index in range(first, len(partitions)):
            pk = partitions[index]
            query: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": pk}},
                **({"ExclusiveStartKey": start} if index == first and start is not None else {}),
            }
            while True:
                response = self._client.query(**query)
                for row in map(from_item, response["Items"]):
                    if channel is not None and channel not in row.get("channels", ()):
                        continue
                    if index > 0 and self._indexed(partitions[0], row["sk"], channel):
                        continue  # ordered under the composed address since: listed there
                    if len(found) == limit:
                        last = {"pk": {"S": found[-1][0]}, "sk": {"S": found[-1][1]}}
                        return [sk for _, sk in found], encode_cursor(scope, last)
                    found.append((pk, row["sk"]))
                if "LastEvaluatedKey" not in response:
                    break
                query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return [sk for _, sk in found], None

    def _indexed(self, pk: str, customer_id: str, channel: str | None) -> bool:
        """Whether the customer is listed in partition `pk` (for `channel`, when one is given)."""
        item = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": pk}, "sk": {"S": customer_id}}, ProjectionExpression="channels"
        ).get("Item")
        return item is not None and (channel is None or channel in from_item(item).get("channels", ()))

    def report_rows(self, pks: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """REPORT_READERS partitions at a time on the one client (boto3 clients are thread-safe):
        a year over several channels is hundreds of queries, each a round trip, and one after
        another they could outlast the API function's timeout."""
        if len(pks) < 2:
            partitions = [self._query(pk) for pk in pks]
        else:
            with ThreadPoolExecutor(min(REPORT_READERS, len(pks)), thread_name_prefix="report-rows") as readers:
                partitions = list(readers.map(self._query, pks))
        return [(row["sk"], row) for rows in partitions for row in rows]

    def _query(self, pk: str, sk: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        condition, values = ("pk = :pk", {}) if sk is None else (f"pk = :pk AND sk {sk[0]}", sk[1])
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression=condition,
            ExpressionAttributeValues={":pk": {"S": pk}, **values},
        )
        for page in pages:
            found.extend(from_item(item) for item in page["Items"])
        return found
