"""Customer notifications on AWS: each recorded one is an item of the Catalog table, under its order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from core.notifications import Notification, NotificationStore, Retry
from functions.adapters.dynamodb import (
    TIME_FORMAT,
    cancellation_reasons,
    decode_cursor,
    encode_cursor,
    paged_items,
    query_page,
    timestamp,
)

# A notification's record expires (TTL) this long after it was made: long enough to answer a
# customer who asks what they were told about an order within the usual return and dispute windows.
NOTIFICATION_RETENTION = timedelta(days=400)


NOTIFICATIONS_PK = "NOTIFY#"  # + the order's id: what its customer was told
# The notifications the plugins failed to send, listed for the reconciler's retry pass: one item
# each, sk <due>#<order id>#<its sk>, so a Query of this one partition reads the due ones earliest
# first (never a Scan). Moved to a later sk by each attempt's claim, removed once sent or given up.
RETRIES_PK = "NOTIFY_RETRY"


def _pk(order_id: str) -> str:
    return NOTIFICATIONS_PK + order_id


def _sk(notification: Notification) -> str:
    return _sk_of(notification.created_at, notification.id)


def _sk_of(created_at: datetime, notification_id: str) -> str:
    # Time first, so a Query gives them oldest first; the event id makes it unique and stable.
    return f"{created_at.isoformat()}#{notification_id}"


def _key(order_id: str, created_at: datetime, notification_id: str) -> dict[str, Any]:
    return {"pk": {"S": _pk(order_id)}, "sk": {"S": _sk_of(created_at, notification_id)}}


def _retry_key(retry: Retry) -> dict[str, Any]:
    sk = f"{timestamp(retry.due)}#{retry.order_id}#{_sk_of(retry.created_at, retry.notification_id)}"
    return {"pk": {"S": RETRIES_PK}, "sk": {"S": sk}}


def _retry_item(retry: Retry) -> dict[str, Any]:
    return {
        **_retry_key(retry),
        "order_id": {"S": retry.order_id},
        "notification_id": {"S": retry.notification_id},
        "created_at": {"S": retry.created_at.isoformat()},
        "due": {"S": timestamp(retry.due)},
        "attempts": {"N": str(retry.attempts)},
        "first_at": {"S": timestamp(retry.first_at)},
        "last_error": {"S": retry.error},
    }


def _time(value: str) -> datetime:
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def _retry(item: dict[str, Any]) -> Retry:
    return Retry(
        order_id=item["order_id"]["S"],
        notification_id=item["notification_id"]["S"],
        created_at=datetime.fromisoformat(item["created_at"]["S"]),
        due=_time(item["due"]["S"]),
        attempts=int(item["attempts"]["N"]),
        first_at=_time(item["first_at"]["S"]),
        error=item["last_error"]["S"],
    )


class DynamoNotifications(NotificationStore):
    """pk NOTIFY#<order id>, sk <created_at>#<event id>, the notification as JSON in `doc`; once the
    plugins failed to send it, its attempts beside it (`attempts`, `first_failed_at`,
    `last_attempt_at`, `last_error`: the error's type; `abandoned_at` once given up, `withdrawn_at`
    once its order outdated it), never in the `doc` GET /orders/{id}/notifications shows. Listed for
    a retry under RETRIES_PK until sent, given up or withdrawn: each move of a listing is one
    transaction with its notification's write, on the condition that the listing is there, so of
    two passes one claims an attempt."""

    def __init__(self, client: Any, table: str, *, page_size: int = 100):
        self._client = client
        self._table = table
        self._page_size = page_size

    def _item(self, notification: Notification) -> dict[str, Any]:
        expires = notification.created_at + NOTIFICATION_RETENTION
        return {
            "pk": {"S": _pk(notification.order_id)},
            "sk": {"S": _sk(notification)},
            "doc": {"S": notification.model_dump_json()},
            "expires_at": {"N": str(int(expires.timestamp()))},
        }

    def add(self, notification: Notification) -> tuple[Notification, bool]:
        try:
            self._client.put_item(
                TableName=self._table, Item=self._item(notification), ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _pk(notification.order_id)}, "sk": {"S": _sk(notification)}},
                ConsistentRead=True,
            )["Item"]
            return Notification.model_validate_json(item["doc"]["S"]), "attempts" in item
        return notification, False

    def mark_sent(self, notification: Notification, sent_via: list[str], at: datetime) -> None:
        self._client.put_item(TableName=self._table, Item=self._item(notification.as_sent(sent_via, at)))

    def defer(self, notification: Notification, error: str, at: datetime, due: datetime) -> bool:
        retry = Retry(
            order_id=notification.order_id, notification_id=notification.id, created_at=notification.created_at,
            due=due, attempts=1, first_at=at, error=error,
        )  # fmt: skip
        return self._transact(
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(notification.order_id, notification.created_at, notification.id),
                    "UpdateExpression": "SET attempts = :one, first_failed_at = :at, last_attempt_at = :at, "
                    "last_error = :error",
                    "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(attempts)",
                    "ExpressionAttributeValues": {
                        ":one": {"N": "1"},
                        ":at": {"S": timestamp(at)},
                        ":error": {"S": error},
                    },
                }
            },
            {"Put": {"TableName": self._table, "Item": _retry_item(retry)}},
        )

    def due(self, before: datetime) -> Iterator[Retry]:
        query = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk < :before",
            "ExpressionAttributeValues": {":pk": {"S": RETRIES_PK}, ":before": {"S": timestamp(before)}},
            "ScanIndexForward": True,
            "Limit": self._page_size,
        }
        return (_retry(item) for item in paged_items(self._client, query))

    def claim(self, retry: Retry, at: datetime, next_due: datetime) -> tuple[Notification, Retry] | None:
        listed = replace(retry, due=next_due, attempts=retry.attempts + 1)
        claimed = self._transact(
            self._listing_removed(retry),
            {"Put": {"TableName": self._table, "Item": _retry_item(listed)}},
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(retry.order_id, retry.created_at, retry.notification_id),
                    "UpdateExpression": "SET attempts = :next, last_attempt_at = :at",
                    "ConditionExpression": "attempts = :seen",
                    "ExpressionAttributeValues": {
                        ":next": {"N": str(listed.attempts)},
                        ":seen": {"N": str(retry.attempts)},
                        ":at": {"S": timestamp(at)},
                    },
                }
            },
        )
        if not claimed:
            return None
        item = self._client.get_item(
            TableName=self._table, Key=_key(retry.order_id, retry.created_at, retry.notification_id),
            ConsistentRead=True,
        )["Item"]  # fmt: skip
        return Notification.model_validate_json(item["doc"]["S"]), listed

    def retried(self, retry: Retry, notification: Notification, sent_via: list[str], at: datetime) -> None:
        sent = notification.as_sent(sent_via, at)
        self._transact(
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(retry.order_id, retry.created_at, retry.notification_id),
                    "UpdateExpression": "SET doc = :doc",
                    "ExpressionAttributeValues": {":doc": {"S": sent.model_dump_json()}},
                }
            },
            {"Delete": {"TableName": self._table, "Key": _retry_key(retry)}},
        )

    def failed(self, retry: Retry, error: str) -> None:
        # On the attempt claimed (`attempts`): a later attempt's own error is not overwritten.
        values = {":error": {"S": error}, ":seen": {"N": str(retry.attempts)}}
        self._transact(
            *(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": key,
                        "UpdateExpression": "SET last_error = :error",
                        "ConditionExpression": "attempts = :seen",
                        "ExpressionAttributeValues": values,
                    }
                }
                for key in (_key(retry.order_id, retry.created_at, retry.notification_id), _retry_key(retry))
            )
        )

    def abandon(self, retry: Retry, at: datetime) -> bool:
        return self._left_unsent(retry, "abandoned_at", at)

    def withdraw(self, retry: Retry, at: datetime) -> bool:
        return self._left_unsent(retry, "withdrawn_at", at)

    def _left_unsent(self, retry: Retry, when: str, at: datetime) -> bool:
        """Its listing removed, as it is still there, and `when` (why it is left unsent) set to `at`."""
        return self._transact(
            self._listing_removed(retry),
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(retry.order_id, retry.created_at, retry.notification_id),
                    "UpdateExpression": f"SET {when} = :at",
                    "ExpressionAttributeValues": {":at": {"S": timestamp(at)}},
                }
            },
        )

    def _listing_removed(self, retry: Retry) -> dict[str, Any]:
        # On the condition that it is still there as read: of two passes, one moves it.
        return {
            "Delete": {
                "TableName": self._table,
                "Key": _retry_key(retry),
                "ConditionExpression": "attempts = :seen",
                "ExpressionAttributeValues": {":seen": {"N": str(retry.attempts)}},
            }
        }

    def _transact(self, *items: dict[str, Any]) -> bool:
        """Write `items` in one transaction; False when a condition of theirs failed."""
        try:
            self._client.transact_write_items(TransactItems=list(items))
        except ClientError as error:
            reasons = cancellation_reasons(error)
            if not reasons or "ConditionalCheckFailed" not in reasons:
                raise
            return False
        return True

    def list(self, order_id: str, limit: int, cursor: str | None) -> tuple[list[Notification], str | None]:
        scope = f"notifications:{order_id}"
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(order_id)}},
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, scope, {"pk", "sk"}, {"pk": _pk(order_id)})
        items, last = query_page(self._client, query, limit, {"pk", "sk"})
        found = [Notification.model_validate_json(item["doc"]["S"]) for item in items]
        return found, encode_cursor(scope, last) if last else None
