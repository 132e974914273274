"""The access log on AWS: the API queues each read of an order (SQS), a function stores it (Catalog table)."""

from __future__ import annotations

from datetime import datetime, timedelta
from time import sleep
from typing import Any

from botocore.config import Config

from core.access_log import AccessLogStore, OrderRead, ReadRecorder

# A read's record expires (TTL) this long after the read: a year back for a yearly audit, and a
# month to run it in. Changes are kept longer: they are the order's history.
ACCESS_LOG_RETENTION = timedelta(days=400)


# The access log's partitions of the Catalog table, one per order: the access log function may write
# these and no other (template.yaml, its dynamodb:LeadingKeys condition).
ACCESS_LOG_PK = "ACCESS#"


def _pk(order_id: str) -> str:
    return ACCESS_LOG_PK + order_id


# The API sends a read's message once the read has its answer, inside the read's 10 s. The default
# client's three attempts of 3 s (9.15 s) let a queue that takes connections and never answers have
# Lambda kill the read (a 5xx) before its `read not queued` line, the record the runbook puts back,
# was written. Two attempts of 1.5 s (a SendMessage answers in milliseconds) end in ~3 s, as the
# authorizer's key lookup does: the read answers, later, and its record is in the log.
RECORDING_CLIENT = Config(connect_timeout=0.5, read_timeout=1.0, retries={"mode": "standard", "total_max_attempts": 2})


class SqsReadRecorder(ReadRecorder):
    def __init__(self, client: Any, queue_url: str):
        self._client = client
        self._queue_url = queue_url

    def record(self, read: OrderRead) -> None:
        self._client.send_message(QueueUrl=self._queue_url, MessageBody=read.model_dump_json())

    def record_all(self, reads: list[OrderRead]) -> None:
        # A list's reads travel together, a JSON array per message (functions/access_log reads
        # either): one SQS call for a page of 100 orders, where a message each would be 100 and
        # batches of ten would be ten, each a round trip inside the list's request.
        for body in _arrays([read.model_dump_json() for read in reads]):
            self._client.send_message(QueueUrl=self._queue_url, MessageBody=body)


# SQS takes a message of at most 256 KiB; this leaves room for its attributes.
MESSAGE_BYTES = 240 * 1024


def _arrays(bodies: list[str]) -> list[str]:
    """`bodies` (JSON objects) as JSON arrays of at most MESSAGE_BYTES each, in order."""
    arrays: list[str] = []
    chunk: list[str] = []
    size = 2
    for body in bodies:
        grown = size + len(body.encode()) + 1
        if chunk and grown > MESSAGE_BYTES:
            arrays.append("[" + ",".join(chunk) + "]")
            chunk, grown = [], 2 + len(body.encode()) + 1
        chunk.append(body)
        size = grown
    if chunk:
        arrays.append("[" + ",".join(chunk) + "]")
    return arrays


# BatchWriteItem takes at most 25 writes a request; what it leaves unprocessed is asked again, 4 times
# more after backoffs of 0.05 to 0.4 s (0.75 s in all, well inside the function's 10 s).
BATCH_WRITES = 25
BATCH_ATTEMPTS = 5
BACKOFF_SECONDS = 0.05


class UnprocessedReads(Exception):
    """DynamoDB left some of a message's reads unprocessed, attempt after attempt."""


def _item(read: OrderRead) -> dict[str, Any]:
    expires = read.at + ACCESS_LOG_RETENTION
    return {
        "pk": {"S": _pk(read.order_id)},
        "sk": {"S": f"{read.at.isoformat()}#{read.request_id}"},
        "doc": {"S": read.model_dump_json()},
        "expires_at": {"N": str(int(expires.timestamp()))},
    }


class DynamoAccessLog(AccessLogStore):
    """pk ACCESS#<order id>, sk <at>#<request id> (oldest first, one item per request), the read as JSON in `doc`."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def add(self, read: OrderRead) -> None:
        self.add_all([read])

    def add_all(self, reads: list[OrderRead]) -> None:
        """Unconditional puts, BATCH_WRITES a request: a read stored again has the same key and
        content. A page of 100 orders listed is 4 requests, not 100 (the access-log function
        stores a batch of 10 such pages in one invocation); a read named twice is written once
        (BatchWriteItem refuses a request naming an item twice)."""
        items = {(item["pk"]["S"], item["sk"]["S"]): item for item in map(_item, reads)}
        writes = [{"PutRequest": {"Item": item}} for item in items.values()]
        for start in range(0, len(writes), BATCH_WRITES):
            self._write(writes[start : start + BATCH_WRITES])

    def _write(self, writes: list[dict[str, Any]]) -> None:
        """One BatchWriteItem, and its unprocessed writes (DynamoDB's answer to a table or
        partition at its limit) again after a backoff; UnprocessedReads when some are still
        left: the message fails and SQS hands it out again."""
        for attempt in range(BATCH_ATTEMPTS):
            if attempt:
                sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            answer = self._client.batch_write_item(RequestItems={self._table: writes})
            writes = (answer.get("UnprocessedItems") or {}).get(self._table) or []
            if not writes:
                return
        raise UnprocessedReads(f"{len(writes)} reads not stored after {BATCH_ATTEMPTS} attempts")

    def reads_after(self, order_id: str, at: datetime | None, request_id: str | None, limit: int) -> list[OrderRead]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(order_id)}},
            "Limit": limit,
        }
        if at is not None:
            # Keys sort as their reads do: the time as _item writes it, then "#" and the request id;
            # the time alone sorts before every read at that time.
            after = at.isoformat() if request_id is None else f"{at.isoformat()}#{request_id}"
            query["KeyConditionExpression"] = "pk = :pk AND sk > :after"
            query["ExpressionAttributeValues"][":after"] = {"S": after}
        items = self._client.query(**query)["Items"]
        return [OrderRead.model_validate_json(item["doc"]["S"]) for item in items]

    def reads(self, order_id: str) -> list[OrderRead]:
        found: list[OrderRead] = []
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(order_id)}},
        }
        while True:
            response = self._client.query(**query)
            found += [OrderRead.model_validate_json(item["doc"]["S"]) for item in response["Items"]]
            if "LastEvaluatedKey" not in response:
                return found
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
