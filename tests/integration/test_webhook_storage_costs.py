"""What a webhook delivery costs (issue 10), on the real adapters and moto: a delivery's record,
written at the fan-out and again after every attempt, is one write unit, its body compressed; an
event's messages to its subscriptions are queued in one request; an attempt reads its
subscription at half a read unit."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.cost import item_bytes, rru_for, wru_for
from core.domain_events import fitted, order_events
from core.webhooks import DeliveryRecord, DeliveryStatus, delivery_id
from tests.integration.test_events_and_webhooks import (  # noqa: F401
    Context,
    Receiver,
    an_order_allocated,
    drain,
    one_delivery_queued,
    sqs_event,
    stream_event,
    subscribe,
    wired,
)

MADE = datetime(2026, 12, 1, tzinfo=UTC)


def an_order_event() -> tuple[Any, str]:
    """`order.created` of a five-line order, and its body as the fan-out sends it (~3 KB)."""
    from tests.unit.conftest import a_stored_order

    order = a_stored_order(*((f"SKU-{n}", n) for n in range(1, 6)), id="ord_" + "w" * 24)
    [event, *_] = order_events(None, order.model_dump(mode="json"))
    return event, fitted(event).body


def a_delivery(webhook_id: str, event: Any, body: str, **changes: Any) -> DeliveryRecord:
    return DeliveryRecord.model_validate(
        {
            "id": delivery_id(webhook_id, event),
            "event_id": event.id,
            "event_type": event.type,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": MADE,
            "webhook_id": webhook_id,
            "body": body,
            "created_at": MADE,
            "retry_until": MADE + timedelta(days=1),
            **changes,
        }
    )


class WriteUnits:
    """The write units each write to the Catalog table costs, by DynamoDB's rule (the larger of
    the item's sizes before and after, per started KB), per written item's partition key kind."""

    def __init__(self, aws: Any, monkeypatch: pytest.MonkeyPatch):
        self.by_kind: Counter[str] = Counter()
        self.writes: list[tuple[str, int]] = []
        client, table = aws.dynamodb, aws.tables["CatalogTable"]

        def size(key: dict[str, Any]) -> int:
            item = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
            return item_bytes(item) if item else 0

        for name in ("put_item", "update_item"):
            real = getattr(client, name)

            def counted(*, _real: Any = real, **request: Any) -> Any:
                item = request.get("Item") or request["Key"]
                key = {"pk": item["pk"], "sk": item["sk"]}
                before = size(key)
                try:
                    return _real(**request)
                finally:
                    units = wru_for(max(before, size(key)))
                    kind = key["pk"]["S"].split("#", 1)[0]
                    self.by_kind[kind] += units
                    self.writes.append((kind, units))

            monkeypatch.setattr(client, name, counted)


def test_each_write_of_a_delivery_is_one_write_unit(aws, monkeypatch):
    """Every delivery's record held the event's whole body as text, and the record was written
    whole at the fan-out and after each attempt: a 3 KB order event cost 4 write units per write,
    per subscription (issue 10: $24 of DynamoDB per million orders for one subscriber). The body is
    stored compressed as an order's document is (to ~400 bytes), so every write is one unit."""
    from functions.adapters.webhooks import DynamoWebhooks

    event, body = an_order_event()
    assert len(body.encode()) > 2 * 1024  # an order's event: the record held it, KB after KB
    store = DynamoWebhooks(aws.dynamodb, aws.tables["CatalogTable"])
    units = WriteUnits(aws, monkeypatch)
    subscribers = [f"whk_{letter * 24}" for letter in "abc"]

    records = [a_delivery(webhook_id, event, body) for webhook_id in subscribers]
    for record in records:
        assert store.add_delivery(record)
    for record in records:  # the first attempt, delivered
        tried = record.model_copy(
            update={"status": DeliveryStatus.DELIVERED, "attempts": 1, "last_status_code": 204, "next_attempt_at": None}
        )
        assert store.update_delivery(tried, record)

    assert units.writes == [("WEBHOOK", 1)] * 6
    for webhook_id, record in zip(subscribers, records, strict=True):
        again = store.get_delivery(webhook_id, record.id)
        assert again is not None and again.body == body  # the very text every attempt signs
        assert (again.status, again.attempts, again.last_status_code) == (DeliveryStatus.DELIVERED, 1, 204)
    [shown, *_] = store.deliveries(subscribers[0], 10, None)[0]
    assert shown.body == body


def test_a_delivery_stored_with_its_body_as_text_before_is_read_and_sent_as_it_was(aws):
    """Records written before bodies were compressed hold the body as a string: read, they send
    it unchanged, and recording an attempt on one keeps it (a pending one has a day of attempts to
    go after a deploy)."""
    from functions.adapters.dynamodb import to_item
    from functions.adapters.webhooks import DynamoWebhooks

    event, body = an_order_event()
    table = aws.tables["CatalogTable"]
    webhook_id = f"whk_{'o' * 24}"
    record = a_delivery(webhook_id, event, body)
    stored_before = {"pk": f"WEBHOOK#{webhook_id}", "sk": record.id, **record.model_dump(mode="python")}
    aws.dynamodb.put_item(TableName=table, Item={**to_item(stored_before), "expires_at": {"N": "1900000000"}})
    store = DynamoWebhooks(aws.dynamodb, table)

    read = store.get_delivery(webhook_id, record.id)
    assert read == record
    failed_once = read.model_copy(update={"attempts": 1, "last_status_code": 503, "last_error": "HTTP 503"})
    assert store.update_delivery(failed_once, read)
    assert store.get_delivery(webhook_id, record.id) == failed_once
    assert store.deliveries(webhook_id, 10, None)[0] == [failed_once]


def test_a_stream_batchs_deliveries_to_its_subscriptions_are_queued_in_one_request(aws, wired):  # noqa: F811
    """One SendMessage per delivery: a shop with three subscribers paid three SQS requests per
    event. Then one SendMessageBatch per change: an order's five changes with events were five
    requests ($2.00 per million orders for one subscriber) though a stream batch holds many
    changes. The messages of every change of a stream batch go together, in SendMessageBatch
    requests of up to ten (SQS bills a batch of small messages as one request), still one message
    per delivery, so no subscriber's attempt waits for another's."""
    from functions.events.app import container, lambda_handler

    created, authorized, _ = an_order_allocated(aws)
    subscribers = [subscribe(f"http://127.0.0.1:9/{'s' * n}", ["*"]) for n in (1, 2, 3)]
    requests: list[str] = []
    container().sqs.meta.events.register("before-call.sqs.*", lambda model, **_: requests.append(model.name))

    stream = stream_event(("INSERT", None, created), ("MODIFY", created, authorized))
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}

    assert requests == ["SendMessageBatch"]  # the batch's two changes, six messages
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert sorted(q["webhook_id"] for q in queued) == sorted([s.id for s in subscribers] * 2)
    assert len({(q["webhook_id"], q["delivery_id"]) for q in queued}) == 6


def test_more_than_ten_messages_go_in_several_batches_and_a_refused_one_fails_the_send(aws, wired):  # noqa: F811
    """SendMessageBatch takes at most ten entries (moto refuses more, as SQS does): a change
    reaching a dozen subscriptions is two requests. An entry SQS refuses while taking the others
    fails the send, so the stream's retry queues every delivery never tried (unit test
    test_a_delivery_whose_first_message_was_lost_is_queued_again_on_redelivery)."""
    from core.webhooks import DeliveryMessage
    from functions.adapters.webhooks import SqsDeliveryQueue

    sqs = wired["sqs"]
    messages = [DeliveryMessage(f"whk_{n:024d}", f"dlv_{n:030d}", 0, 0) for n in range(12)]
    requests: list[int] = []
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch", lambda params, **_: requests.append(len(params["Entries"]))
    )
    SqsDeliveryQueue(sqs, wired["deliveries"]).send_now(messages)
    assert sorted(requests) == [2, 10]  # sent at once (REQUESTS_AT_ONCE), in either order
    queued = [DeliveryMessage.from_json(m["Body"]) for m in drain(sqs, wired["deliveries"])]
    assert sorted(queued, key=lambda m: m.delivery_id) == messages

    class RefusingTheSecond:
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            refused = [{"Id": Entries[1]["Id"], "SenderFault": False, "Code": "InternalError"}]
            return {"Successful": [{"Id": e["Id"]} for e in Entries if e is not Entries[1]], "Failed": refused}

    with pytest.raises(RuntimeError, match="refused 1 message"):
        SqsDeliveryQueue(RefusingTheSecond(), wired["deliveries"]).send_now(messages[:3])


def read_units_of(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """The GetItems `client` makes from now, each as (partition key kind, read units), read units
    by DynamoDB's rule: 4 KB a unit, an eventually consistent read half of one."""
    reads: list[tuple[str, float]] = []
    real = client.get_item

    def counted(**request: Any) -> Any:
        answer = real(**request)
        size = item_bytes(answer["Item"]) if "Item" in answer else 0
        reads.append((request["Key"]["pk"]["S"].split("#", 1)[0], rru_for(size, request.get("ConsistentRead", False))))
        return answer

    monkeypatch.setattr(client, "get_item", counted)
    return reads


def test_a_delivery_reads_its_subscription_at_half_a_read_unit(aws, wired, monkeypatch):  # noqa: F811
    """Each attempt read its delivery and its subscription with strongly consistent reads, a read
    unit each ($0.25 per million deliveries). The subscription (its URL and secret, which never
    change; only a delete ends it) is read eventually consistent, half a unit: what a read a
    second stale can show is a subscription deleted within that second, given one more attempt as
    a message already being handled would be. The delivery's own read stays strongly consistent:
    a read missing the fan-out's write would drop the message, the delivery never tried."""
    from functions.webhook_delivery.app import container, lambda_handler

    receiver = Receiver(204)
    try:
        webhook, message = one_delivery_queued(aws, wired, receiver.url)
        reads = read_units_of(container().dynamodb, monkeypatch)
        assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    finally:
        receiver.close()
    assert len(receiver.received) == 1
    assert sorted(reads) == [("WEBHOOK", 1.0), ("WEBHOOKS", 0.5)]
    record = container().webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.attempts, record.last_status_code) == (DeliveryStatus.DELIVERED, 1, 204)


def test_a_subscription_an_eventually_consistent_read_does_not_show_yet_is_read_again_consistently(
    aws,
    wired,  # noqa: F811
    monkeypatch,
):
    """A subscription made a moment before its first event may be missing from an eventually
    consistent read: taken as deleted, its delivery would end `failed` without an attempt. A
    subscription not found is read again strongly consistent before its delivery is ended."""
    from functions.webhook_delivery.app import container, lambda_handler

    receiver = Receiver(204)
    try:
        webhook, message = one_delivery_queued(aws, wired, receiver.url)
        client = container().dynamodb
        real = client.get_item

        def not_yet_replicated(**request: Any) -> Any:
            if request["Key"]["pk"]["S"] == "WEBHOOKS" and not request.get("ConsistentRead"):
                return {}
            return real(**request)

        monkeypatch.setattr(client, "get_item", not_yet_replicated)
        assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    finally:
        receiver.close()
    assert len(receiver.received) == 1
    record = container().webhook_store.get_delivery(webhook.id, message.delivery_id)
    assert (record.status, record.last_error) == (DeliveryStatus.DELIVERED, None)


def test_a_stream_batch_whose_messages_the_queue_refuses_fails_and_its_retry_queues_them(aws, wired, monkeypatch):  # noqa: F811
    """The messages go after every record of the batch is handled: refused then, the batch fails
    whole (Lambda retries it, bisecting), and the retry queues each delivery stored and never
    tried, none twice."""
    from functions.adapters.webhooks import SqsDeliveryQueue
    from functions.events.app import lambda_handler

    created, authorized, _ = an_order_allocated(aws)
    subscriber = subscribe("http://127.0.0.1:9/all", ["*"])
    stream = stream_event(("INSERT", None, created), ("MODIFY", created, authorized))
    send_now = SqsDeliveryQueue.send_now

    def refused(self: SqsDeliveryQueue, messages: list[Any]) -> None:
        raise RuntimeError(f"the delivery queue refused {len(messages)} message(s)")

    monkeypatch.setattr(SqsDeliveryQueue, "send_now", refused)
    with pytest.raises(RuntimeError, match="refused 2 message"):
        lambda_handler(stream, Context())
    assert drain(wired["sqs"], wired["deliveries"]) == []

    monkeypatch.setattr(SqsDeliveryQueue, "send_now", send_now)
    assert lambda_handler(stream, Context()) == {"batchItemFailures": []}
    queued = [json.loads(m["Body"]) for m in drain(wired["sqs"], wired["deliveries"])]
    assert [q["webhook_id"] for q in queued] == [subscriber.id] * 2
    assert len({q["delivery_id"] for q in queued}) == 2
