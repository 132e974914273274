"""Customer notifications on AWS: each recorded one is an item of the Catalog table, under its order."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from core.notifications import Notification, NotificationStore
from functions.adapters.dynamodb import decode_cursor, encode_cursor, query_page

# A notification's record expires (TTL) this long after it was made: long enough to answer a
# customer who asks what they were told about an order within the usual return and dispute windows.
NOTIFICATION_RETENTION = timedelta(days=400)


NOTIFICATIONS_PK = "NOTIFY#"  # + the order's id: what its customer was told


def _pk(order_id: str) -> str:
    return NOTIFICATIONS_PK + order_id


def _sk(notification: Notification) -> str:
    # Time first, so a Query gives them oldest first; the event id makes it unique and stable.
    return f"{notification.created_at.isoformat()}#{notification.id}"


class DynamoNotifications(NotificationStore):
    """pk NOTIFY#<order id>, sk <created_at>#<event id>, the notification as JSON in `doc`."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def _item(self, notification: Notification) -> dict[str, Any]:
        expires = notification.created_at + NOTIFICATION_RETENTION
        return {
            "pk": {"S": _pk(notification.order_id)},
            "sk": {"S": _sk(notification)},
            "doc": {"S": notification.model_dump_json()},
            "expires_at": {"N": str(int(expires.timestamp()))},
        }

    def add(self, notification: Notification) -> Notification:
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
            return Notification.model_validate_json(item["doc"]["S"])
        return notification

    def mark_sent(self, notification: Notification, sent_via: list[str], at: datetime) -> None:
        self._client.put_item(TableName=self._table, Item=self._item(notification.as_sent(sent_via, at)))

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
