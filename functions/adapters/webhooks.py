"""Webhooks on AWS: subscriptions and deliveries in the Catalog table, the delivery queue (SQS),
the event bus (EventBridge) and the HTTP client that calls subscribers at checked addresses."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from botocore.exceptions import ClientError

from core.domain_events import OutgoingEvent
from core.errors import StaleVersion
from core.webhooks import (
    DeliveryMessage,
    DeliveryQueue,
    DeliveryRecord,
    EventPublisher,
    IssuedWebhook,
    SendResult,
    Subscription,
    Target,
    TooManyWebhooks,
    Webhook,
    WebhookSender,
    WebhookStore,
)
from functions.adapters import order_codec
from functions.adapters.dynamodb import decode_cursor, encode_cursor, from_item, to_item

WEBHOOKS_PK = "WEBHOOKS"
WEBHOOK_COUNTS_PK = "WEBHOOK_COUNTS"  # sk `channel#<channel>` or `unbound`: `live` subscriptions there
DELIVERIES_PK = "WEBHOOK#"  # + the webhook's id: its deliveries, sk the delivery's id
# What DynamoWebhooks.all reads of each subscription (a Subscription): never `secret` or `url`.
SUBSCRIPTION_ATTRIBUTES = ("id", "events", "channel")
# A delivery's record expires (TTL) this long after its retry window closes (a manual retry closes
# it anew): a window longer than this (WebhookRetryWindowSeconds) never loses a delivery still pending.
DELIVERY_RETENTION = timedelta(days=30)
EVENT_SOURCE = "oms"
_PUT_EVENTS_BATCH = 10  # PutEvents takes at most 10 entries
_SEND_BATCH = 10  # SendMessageBatch too
# Deliveries written (add_deliveries), and message batches queued (send_now), at once: botocore
# keeps 10 connections per client (max_pool_connections), so more threads would only wait for one.
REQUESTS_AT_ONCE = 10
# What EventBridge takes in one PutEvents call, its entries' sizes summed (entry_size); an entry
# alone may weigh as much (core.domain_events.fitted keeps the events under it).
PUT_EVENTS_BYTES = 256 * 1024
# Sends of an entry the bus refused (FailedEntryCount: throttled, an internal failure), the pause
# before the second doubled before the third.
PUT_EVENTS_ATTEMPTS = 3
_REFUSED_PAUSE_SECONDS = 0.1


def entry_size(entry: dict[str, Any], detail_bytes: int | None = None) -> int:
    """What EventBridge counts of a PutEvents entry: 14 bytes for its Time, then the UTF-8 bytes
    of its Source, DetailType, Detail and each of its Resources (EventBusName is not counted).
    `detail_bytes`: the Detail's when known (an OutgoingEvent's weight), so it is not encoded again."""
    counted = [entry["Source"], entry["DetailType"], *entry.get("Resources", [])]
    if detail_bytes is None:
        detail_bytes = len(entry.get("Detail", "").encode())
    return (14 if entry.get("Time") is not None else 0) + sum(len(part.encode()) for part in counted) + detail_bytes


def _deliveries_pk(webhook_id: str) -> str:
    return DELIVERIES_PK + webhook_id


class DynamoWebhooks(WebhookStore):
    """A subscription is one item (pk WEBHOOKS, sk its id) holding its secret: the secret must be
    readable to sign, so it is protected like the API key records beside it (the table is encrypted
    at rest, only the API and the delivery function may read it, no response shows it after the
    create); the functions that fan events out read subscriptions without it (all). A delivery is
    one item under its subscription (pk WEBHOOK#<id>, sk its id, which sorts by time), expiring
    DELIVERY_RETENTION after its retry window closes; it holds the body every attempt sends (and
    signs), compressed. The cap is a counter per channel (and one for the unbound subscriptions)
    that the subscription's put and delete move in one transaction with it; a subscription it
    counted carries `counted`, so deleting one made before the cap frees nothing."""

    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    # --- Subscriptions ---------------------------------------------------------------------------
    def add(self, webhook: IssuedWebhook, cap: int) -> None:
        item = {"pk": WEBHOOKS_PK, "sk": webhook.id, **webhook.model_dump(mode="python"), "counted": True}
        count = {
            "TableName": self._table,
            "Key": _count_key(webhook.channel),
            "UpdateExpression": "SET live = if_not_exists(live, :zero) + :one",
            "ConditionExpression": "attribute_not_exists(live) OR live < :cap",
            "ExpressionAttributeValues": {":zero": {"N": "0"}, ":one": {"N": "1"}, ":cap": {"N": str(cap)}},
        }
        put = {"TableName": self._table, "Item": to_item(item), "ConditionExpression": "attribute_not_exists(pk)"}
        try:
            self._client.transact_write_items(TransactItems=[{"Update": count}, {"Put": put}])
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                raise TooManyWebhooks(webhook.channel) from None
            if len(reasons) > 1 and reasons[1].get("Code") == "ConditionalCheckFailed":
                raise StaleVersion(f"webhook {webhook.id} exists already") from None
            raise

    def get(self, webhook_id: str, consistent: bool = True) -> IssuedWebhook | None:
        item = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": WEBHOOKS_PK}, "sk": {"S": webhook_id}}, ConsistentRead=consistent
        ).get("Item")
        return _webhook(item) if item else None

    def list(self, channel: str | None, limit: int, cursor: str | None) -> tuple[list[Webhook], str | None]:
        # Read past the subscriptions of other channels, and page after the last one shown: a
        # cursor made of LastEvaluatedKey named another channel's subscription to a channel key
        # (and the filter, applied after Limit, left it empty pages). A filtered read takes no
        # Limit, so a channel among many others is a query per 1 MB, not one per `limit` items.
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": WEBHOOKS_PK}},
        }
        if channel is None:
            query["Limit"] = limit + 1
        else:
            query["FilterExpression"] = "channel = :channel"
            query["ExpressionAttributeValues"][":channel"] = {"S": channel}
        # Bound to the channel read for, as the orders' and customers' lists are: a cursor another
        # channel's key (or the admin) was given is refused, never read as a place in this list.
        scope = "webhooks" if channel is None else f"webhooks&channel={channel}"
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, scope, {"pk", "sk"}, {"pk": WEBHOOKS_PK})
        shown: list[Webhook] = []
        while True:
            response = self._client.query(**query)
            for item in response["Items"]:
                if len(shown) == limit:
                    return shown, encode_cursor(scope, {"pk": {"S": WEBHOOKS_PK}, "sk": {"S": shown[-1].id}})
                shown.append(Webhook.model_validate(_webhook(item).model_dump(exclude={"secret"})))
            if "LastEvaluatedKey" not in response:
                return shown, None
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def all(self) -> list[Subscription]:
        # Only what matching and queuing need leaves the table: the functions that fan events out
        # (EventsFunction, BackorderFunction) never hold a subscriber's secret, and their grant of
        # this read is conditioned on these attributes (template.yaml's dynamodb:Attributes).
        found: list[Subscription] = []
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": WEBHOOKS_PK}},
            Select="SPECIFIC_ATTRIBUTES",
            ProjectionExpression=", ".join(SUBSCRIPTION_ATTRIBUTES),
        )
        for page in pages:
            found.extend(Subscription.model_validate(from_item(item)) for item in page["Items"])
        return found

    def delete(self, webhook_id: str) -> bool:
        key = {"pk": {"S": WEBHOOKS_PK}, "sk": {"S": webhook_id}}
        item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        if item is None:
            return False
        if "counted" not in item:
            return "Attributes" in self._client.delete_item(TableName=self._table, Key=key, ReturnValues="ALL_OLD")
        # The delete is conditional on the subscription being there, so two deletes free one place.
        remove = {"TableName": self._table, "Key": key, "ConditionExpression": "attribute_exists(pk)"}
        count = {
            "TableName": self._table,
            "Key": _count_key(_webhook(item).channel),
            "UpdateExpression": "SET live = live - :one",
            "ConditionExpression": "live > :zero",
            "ExpressionAttributeValues": {":zero": {"N": "0"}, ":one": {"N": "1"}},
        }
        try:
            self._client.transact_write_items(TransactItems=[{"Delete": remove}, {"Update": count}])
        except ClientError as error:
            reasons = error.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        return True

    # --- Deliveries ------------------------------------------------------------------------------
    def add_delivery(self, record: DeliveryRecord) -> bool:
        try:
            self._client.put_item(
                TableName=self._table, Item=_delivery_item(record), ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def add_deliveries(self, records: list[DeliveryRecord]) -> list[bool]:
        """REQUESTS_AT_ONCE at a time on the one client (boto3 clients are thread-safe), each its
        own conditional PutItem as add_delivery's (a write unit each, as before: BatchWriteItem
        takes no condition, and a transaction costs twice): an event at the webhook cap reaches 50
        subscriptions, and a stream batch of 25 changes of about 3 events each, written one after
        another at ~5 ms a request, took some 19 s, past the events function's Timeout."""
        if len(records) < 2:
            return [self.add_delivery(record) for record in records]
        with ThreadPoolExecutor(min(REQUESTS_AT_ONCE, len(records)), thread_name_prefix="deliveries") as writers:
            return list(writers.map(self.add_delivery, records))

    def get_delivery(self, webhook_id: str, delivery_id: str) -> DeliveryRecord | None:
        item = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": _deliveries_pk(webhook_id)}, "sk": {"S": delivery_id}},
            ConsistentRead=True,
        ).get("Item")
        return _delivery(item) if item else None

    def deliveries(self, webhook_id: str, limit: int, cursor: str | None) -> tuple[list[DeliveryRecord], str | None]:
        scope = f"deliveries:{webhook_id}"
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _deliveries_pk(webhook_id)}},
            "ScanIndexForward": False,
            # One ahead: DynamoDB names a LastEvaluatedKey whenever a Query stops at its Limit, so a
            # page of the last `limit` deliveries named a next page that was empty.
            "Limit": limit + 1,
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = decode_cursor(cursor, scope, {"pk", "sk"}, {"pk": _deliveries_pk(webhook_id)})
        response = self._client.query(**query)
        shown = [_delivery(item) for item in response["Items"][:limit]]
        if len(response["Items"]) > limit:
            last = {"pk": {"S": _deliveries_pk(webhook_id)}, "sk": {"S": shown[-1].id}}
        else:
            last = response.get("LastEvaluatedKey")  # a page cut at 1 MB (bodies of up to 200 KB)
        return shown, encode_cursor(scope, last) if last else None

    def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
        try:
            self._client.put_item(
                TableName=self._table,
                Item=_delivery_item(record),
                ConditionExpression="generation = :generation AND attempts = :attempts",
                ExpressionAttributeValues={
                    ":generation": {"N": str(expected.generation)},
                    ":attempts": {"N": str(expected.attempts)},
                },
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True


def _webhook(item: dict[str, Any]) -> IssuedWebhook:
    values = from_item(item)
    return IssuedWebhook.model_validate({k: v for k, v in values.items() if k not in ("pk", "sk", "counted")})


def _count_key(channel: str | None) -> dict[str, Any]:
    return {"pk": {"S": WEBHOOK_COUNTS_PK}, "sk": {"S": f"channel#{channel}" if channel is not None else "unbound"}}


def _delivery_item(record: DeliveryRecord) -> dict[str, Any]:
    expires = max(record.created_at, record.retry_until) + DELIVERY_RETENTION
    values = {
        "pk": _deliveries_pk(record.webhook_id),
        "sk": record.id,
        **record.model_dump(mode="python", exclude={"body"}),
        "expires_at": int(expires.timestamp()),
    }
    # The body compressed as an order's document is (order_codec: an event is mostly its order), so
    # the record, written at the fan-out and again after every attempt, stays one write unit.
    return {**to_item(values), "body": {"B": order_codec.compress(record.body.encode())}}


def _delivery(item: dict[str, Any]) -> DeliveryRecord:
    # A record stored before bodies were compressed holds its body as a string (stored_json reads both).
    values = {**from_item(item), "body": order_codec.stored_json(item["body"]).decode()}
    for name in ("attempts", "generation", "last_status_code"):
        if values.get(name) is not None:
            values[name] = int(values[name])
    return DeliveryRecord.model_validate({k: v for k, v in values.items() if k not in ("pk", "sk", "expires_at")})


class SqsDeliveryQueue(DeliveryQueue):
    def __init__(self, client: Any, queue_url: str):
        self._client = client
        self._queue_url = queue_url

    def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
        self._client.send_message(
            QueueUrl=self._queue_url, MessageBody=message.to_json(), DelaySeconds=max(0, min(900, delay_seconds))
        )

    def send_now(self, messages: list[DeliveryMessage]) -> None:
        # SendMessageBatch takes ten messages (a delivery's is ~150 bytes: far under its 256 KB) and
        # is billed per 64 KB of them. It may refuse some and take the others: those it refused are
        # named in the error, and the stream's retry queues every delivery never tried again. The
        # batches go REQUESTS_AT_ONCE at a time: a stream batch at the webhook cap queues thousands.
        batches = [messages[start : start + _SEND_BATCH] for start in range(0, len(messages), _SEND_BATCH)]
        if len(batches) < 2:
            for batch in batches:
                self._send_batch(batch)
            return
        with ThreadPoolExecutor(min(REQUESTS_AT_ONCE, len(batches)), thread_name_prefix="delivery-messages") as senders:
            list(senders.map(self._send_batch, batches))

    def _send_batch(self, batch: list[DeliveryMessage]) -> None:
        entries = [{"Id": str(index), "MessageBody": m.to_json()} for index, m in enumerate(batch)]
        refused = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries).get("Failed")
        if refused:
            raise RuntimeError(f"the delivery queue refused {len(refused)} message(s): {json.dumps(refused)[:500]}")


class EventBridgePublisher(EventPublisher):
    """Each event onto the bus as source `oms`, detail-type its type, detail the event itself.
    A PutEvents call takes at most 10 entries and 256 KB of them in all (entry_size), so the
    events go in calls that fit both. EventBridge may refuse some entries of a call and take the
    others (FailedEntryCount): only those it refused are sent again, up to PUT_EVENTS_ATTEMPTS
    times each, so no event it took reaches the bus twice from one publish; one still refused
    then fails the change (the stream retries it, with the same event ids, and at the end hands it
    to the failure queue)."""

    def __init__(self, client: Any, bus_name: str):
        self._client = client
        self._bus_name = bus_name

    def publish(self, events: list[OutgoingEvent]) -> None:
        # Each entry with its size, weighed once: its Detail is the event's body, already weighed.
        waiting = [(entry := self._entry(ready), entry_size(entry, ready.weight)) for ready in events]
        for (_, size), ready in zip(waiting, events, strict=True):
            if size > PUT_EVENTS_BYTES:
                raise ValueError(
                    f"event {ready.event.id} ({ready.event.type.value}) weighs {size} bytes: over an entry's 256 KB"
                )
        for attempt in range(1, PUT_EVENTS_ATTEMPTS + 1):
            refused: list[tuple[tuple[dict[str, Any], int], dict[str, Any]]] = []
            for call in _calls(waiting):
                response = self._client.put_events(Entries=[entry for entry, _ in call])
                if response.get("FailedEntryCount"):
                    # The answers are in the order of the entries sent.
                    refused += [
                        (sized, answer)
                        for sized, answer in zip(call, response["Entries"], strict=True)
                        if answer.get("ErrorCode")
                    ]
            if not refused:
                return
            waiting = [sized for sized, _ in refused]
            if attempt < PUT_EVENTS_ATTEMPTS:
                time.sleep(_REFUSED_PAUSE_SECONDS * 2 ** (attempt - 1))
        answers = [{"detail_type": entry["DetailType"], **answer} for (entry, _), answer in refused]
        raise RuntimeError(f"the event bus refused {len(refused)} event(s): {json.dumps(answers)[:500]}")

    def _entry(self, ready: OutgoingEvent) -> dict[str, Any]:
        return {
            "EventBusName": self._bus_name,
            "Source": EVENT_SOURCE,
            "DetailType": ready.event.type.value,
            "Detail": ready.body,
            "Time": ready.event.created_at,
            "Resources": [],
        }


def _calls(entries: list[tuple[dict[str, Any], int]]) -> Iterator[list[tuple[dict[str, Any], int]]]:
    """`entries` (each with its entry_size), in their order, in calls of at most _PUT_EVENTS_BATCH
    entries and PUT_EVENTS_BYTES."""
    call: list[tuple[dict[str, Any], int]] = []
    weight = 0
    for entry, size in entries:
        if call and (len(call) == _PUT_EVENTS_BATCH or weight + size > PUT_EVENTS_BYTES):
            yield call
            call, weight = [], 0
        call.append((entry, size))
        weight += size
    if call:
        yield call


# How long a subscriber's host may take to resolve. getaddrinfo has no timeout of its own: a name
# whose DNS server answers slowly (a hostile subscriber's own) held POST /webhooks past the API
# function's timeout, a 5xx, and each delivery attempt's check past the delivery function's.
RESOLVE_SECONDS = 3.0


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6); none for a name DNS cannot carry. OSError
    when it does not resolve within RESOLVE_SECONDS (the lookup is left to end in its thread)."""
    answer: list[Any] = []

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except UnicodeError:
            # An empty label or one over 63 characters ("hooks..example.com") fails to encode before
            # any lookup, with a UnicodeError rather than the OSError of a name that does not resolve.
            answer.append([])
        except OSError as error:
            answer.append(error)

    lookup = threading.Thread(target=look_up, name="webhook-dns", daemon=True)
    lookup.start()
    lookup.join(RESOLVE_SECONDS)
    if not answer:
        raise OSError(f"{host} did not resolve within {RESOLVE_SECONDS:g} s")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return [info[4][0] for info in answer[0]]


def _connect(addresses: tuple[str, ...], port: int, deadline: float) -> socket.socket:
    """A connection to the first of the checked `addresses` that takes one before `deadline` (a
    host's addresses are its load balancer's zones, say: one down leaves the others); the error of
    the last one when none does. Each address waits its share of what is left, the last all of it:
    one that drops connections (a connect that hangs) leaves the next its time."""
    refused: OSError = TimeoutError("timed out")
    for index, address in enumerate(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        try:
            sock = socket.create_connection((address, port), remaining / (len(addresses) - index))
        except OSError as error:
            refused = error
            continue
        # Connected: the handshake, the request and the answer have what is left of the attempt.
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        return sock
    raise refused


class _FinalResponse(http.client.HTTPResponse):
    """The receiver's final answer, past any interim (1xx) ones, which a client must parse and
    skip (RFC 9110 15.2): http.client skips only a `100 Continue`, and took a `102 Processing` or
    a `103 Early Hints` for the answer, so a receiver that then answered 2xx was sent the event
    again for a day. A `101 Switching Protocols` is an answer (no POST of ours asks for one), a
    failed one; endless interim answers end at the attempt's deadline like any slow answer."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers: nothing to keep


class _PinnedHttps(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the URL's host for SNI and certificate checks."""

    response_class = _FinalResponse

    def __init__(self, addresses: tuple[str, ...], host: str, port: int, timeout: float, deadline: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        sock = _connect(self._addresses, self.port, self._deadline)
        # The handshake runs once the TLS socket is `self.sock`, so the attempt's deadline can end it.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock.do_handshake()


class _PinnedHttp(http.client.HTTPConnection):
    response_class = _FinalResponse

    def __init__(self, addresses: tuple[str, ...], host: str, port: int, timeout: float, deadline: float):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, self._deadline)


class HttpWebhookSender(WebhookSender):
    """Connects to the checked addresses in turn until one takes the connection (never resolving
    the name again, so DNS cannot swap in a private address after the check; only the connection
    moves on, never a request sent), follows no redirect, reads no body (the status is the
    answer), and gives up after `timeout` seconds in all. A socket timeout bounds one read or
    write, not their sum (a subscriber sending a byte at a time would keep the attempt going, past
    the function's own timeout), so at the deadline a timer shuts the connection's socket down,
    which ends whatever call waits on it."""

    def post(self, target: Target, body: bytes, headers: dict[str, str], timeout: float) -> SendResult:
        deadline = time.monotonic() + timeout
        connection_type = _PinnedHttps if target.scheme == "https" else _PinnedHttp
        connection = connection_type(target.addresses, target.host, target.port, timeout, deadline)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            if connection.sock is not None:
                # The plain socket's shutdown, even for a TLS one: the other thread's read ends.
                with contextlib.suppress(OSError):  # closed already
                    socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            connection.sock.settimeout(remaining)
            # The status line and headers are the answer: no body is read. Reading one waited for
            # bytes nobody owed (a 200 without a Content-Length on a kept-alive connection, a length
            # never sent in full) until the timeout: a 2xx in time recorded `timed out`, sent again for
            # 24 hours. Closing with a body unread only ends the connection.
            response = connection.getresponse()
            if expired.is_set():
                raise TimeoutError("timed out")
            if 200 <= response.status < 300:
                return SendResult(response.status)
            # When the subscriber asks to be tried again (a 429's or a 503's): the schedule waits for it.
            retry_after = response.getheader("Retry-After")
            return SendResult(response.status, f"HTTP {response.status}", retry_after[:100] if retry_after else None)
        except (OSError, http.client.HTTPException) as error:
            timed_out = expired.is_set() or isinstance(error, TimeoutError | socket.timeout)
            return SendResult(None, "timed out" if timed_out else str(error) or type(error).__name__)
        finally:
            timer.cancel()
            connection.close()
