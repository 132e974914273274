"""The access log on AWS: the API queues each read of an order (SQS), a function stores it (Catalog table)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from core.access_log import AccessLogStore, OrderRead, ReadRecorder

# A read's record expires (TTL) this long after the read: a year back for a yearly audit, and a
# month to run it in. Changes are kept longer: they are the order's history.
ACCESS_LOG_RETENTION = timedelta(days=400)


def _pk(order_id: str) -> str:
    return f"ACCESS#{order_id}"


class SqsReadRecorder(ReadRecorder):
    def __init__(self, client: Any, queue_url: str):
        self._client = client
        self._queue_url = queue_url

    def record(self, read: OrderRead) -> None:
        self._client.send_message(QueueUrl=self._queue_url, MessageBody=read.model_dump_json())

    def record_all(self, reads: list[OrderRead]) -> None:
        # One SendMessageBatch (ten messages at most) where a list's page reads ten orders; an entry
        # the batch refused is sent on its own, which raises if the queue refuses it again.
        for start in range(0, len(reads), 10):
            batch = reads[start : start + 10]
            entries = [{"Id": str(n), "MessageBody": read.model_dump_json()} for n, read in enumerate(batch)]
            failed = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries).get("Failed") or []
            for entry in failed:
                self.record(batch[int(entry["Id"])])


class DynamoAccessLog(AccessLogStore):
    """pk ACCESS#<order id>, sk <at>#<request id> (oldest first, one item per request), the read as JSON in `doc`."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def add(self, read: OrderRead) -> None:
        expires = read.at + ACCESS_LOG_RETENTION
        # An unconditional put: the same request's read has the same key and content.
        self._client.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": _pk(read.order_id)},
                "sk": {"S": f"{read.at.isoformat()}#{read.request_id}"},
                "doc": {"S": read.model_dump_json()},
                "expires_at": {"N": str(int(expires.timestamp()))},
            },
        )

    def reads_after(self, order_id: str, at: datetime | None, request_id: str | None, limit: int) -> list[OrderRead]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(order_id)}},
            "Limit": limit,
        }
        if at is not None:
            # Keys sort as their reads do: the time as add() writes it, then "#" and the request id;
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
