"""How a delivery ends, through the real API and delivery handlers on moto (in process): an
operator's retry of a delivered one, and a pending one of a subscription deleted meanwhile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from core.webhooks import DeliveryMessage, DeliveryRecord
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks, issue
from tests.integration.test_events_and_webhooks import Context, Receiver, drain, sqs_event

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/test-webhook-deliveries"


@pytest.fixture
def api() -> Iterator[InProcessApi]:
    """The in-process API, its webhooks' delivery queue a real (moto) one the delivery handler reads."""
    with in_process_api_with_webhooks() as started, pytest.MonkeyPatch.context() as env:
        from functions.bootstrap import forget_warm_containers

        sqs = boto3.client("sqs", region_name="us-east-1")
        assert sqs.create_queue(QueueName="test-webhook-deliveries")["QueueUrl"] == QUEUE_URL
        env.setenv("WEBHOOK_QUEUE_URL", QUEUE_URL)
        forget_warm_containers()
        yield started


def a_pending_delivery(webhook_id: str, **changes: Any) -> DeliveryMessage:
    """A delivery of `webhook_id` stored as the fan-out stores one (with `changes`): its message."""
    from functions.webhook_delivery.app import container

    now = datetime.now(UTC)
    record = DeliveryRecord.model_validate(
        {
            "id": f"dlv_{int(now.timestamp() * 1_000_000):014x}{'d' * 16}",
            "event_id": "evt_endings1",
            "event_type": "order.created",
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "webhook_id": webhook_id,
            "body": '{"id":"evt_endings1"}',
            "created_at": now,
            "retry_until": now + timedelta(days=1),
            **changes,
        }
    )
    assert container().webhook_store.add_delivery(record)
    return DeliveryMessage(webhook_id, record.id, record.generation, record.attempts)


def handled(message: DeliveryMessage, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the delivery handler on `message`: the metric names it flushed."""
    from functions.webhook_delivery.app import lambda_handler

    capsys.readouterr()
    assert lambda_handler(sqs_event(message), Context()) == {"batchItemFailures": []}
    names = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and "_aws" in (printed := json.loads(line)):
            names += [metric["Name"] for metric in printed["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    return names


def queued(sqs: Any) -> list[DeliveryMessage]:
    """The messages on the delivery queue now (taken off it)."""
    return [DeliveryMessage.from_json(message["Body"]) for message in drain(sqs, QUEUE_URL)]


def delayed(sqs: Any) -> int:
    """How many messages wait on the delivery queue for their DelaySeconds."""
    names = ["ApproximateNumberOfMessagesDelayed"]
    return int(sqs.get_queue_attributes(QueueUrl=QUEUE_URL, AttributeNames=names)["Attributes"][names[0]])


def test_a_resend_of_a_delivered_delivery_that_fails_leaves_it_delivered_and_counts_no_failed_delivery(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """An operator resends a delivered delivery (the subscriber lost it, say) while the subscriber
    is down: it ended `failed` and counted in WebhookDeliveriesFailed (its alarm: "a subscriber
    missed an event for good"), though the subscriber had it, and the log no longer showed that.
    It stays `delivered`; the resend's answer is on its attempts, last_status_code and last_error."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    sqs = boto3.client("sqs", region_name="us-east-1")
    receiver = Receiver(204, 503)
    try:
        webhook = api.post("/webhooks", json={"url": receiver.url, "events": ["order.created"]}).json()
        message = a_pending_delivery(webhook["id"])
        assert "WebhookDeliveriesDelivered" in handled(message, capsys)
        deliveries = f"/webhooks/{webhook['id']}/deliveries"
        ((delivered,),) = [api.get(deliveries).json()["items"]]
        assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)

        retried = api.post(f"{deliveries}/{delivered['id']}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "delivered"  # never shown as if it had not been
        (resend,) = queued(sqs)
        metrics = handled(resend, capsys)

        assert len(receiver.received) == 2  # the resend was made
        assert "WebhookDeliveriesFailed" not in metrics
        (shown,) = api.get(deliveries).json()["items"]
        assert (shown["status"], shown["attempts"], shown["last_status_code"], shown["last_error"]) == (
            "delivered",
            2,
            503,
            "HTTP 503",
        )
        assert shown["next_attempt_at"] is None and queued(sqs) == []  # one attempt, no schedule
        # A second copy of the resend's message sends nothing more.
        handled(resend, capsys)
        assert len(receiver.received) == 2
    finally:
        receiver.close()


def test_a_resend_of_a_delivered_delivery_that_succeeds_records_its_answer(
    api: InProcessApi, capsys: pytest.CaptureFixture[str]
):
    sqs = boto3.client("sqs", region_name="us-east-1")
    receiver = Receiver(503, 202)
    try:
        webhook = api.post("/webhooks", json={"url": receiver.url, "events": ["order.created"]}).json()
        message = a_pending_delivery(webhook["id"], status="delivered", attempts=3, last_status_code=200)
        deliveries = f"/webhooks/{webhook['id']}/deliveries"
        assert api.post(f"{deliveries}/{message.delivery_id}/retry").status_code == 202
        (resend,) = queued(sqs)
        handled(resend, capsys)
        (shown,) = api.get(deliveries).json()["items"]
        assert (shown["status"], shown["attempts"], shown["last_status_code"]) == ("delivered", 4, 503)
        # Retried again: its answer now is the 202.
        assert api.post(f"{deliveries}/{message.delivery_id}/retry").status_code == 202
        (again,) = queued(sqs)
        handled(again, capsys)
        (shown,) = api.get(deliveries).json()["items"]
        assert (shown["status"], shown["attempts"], shown["last_status_code"], shown["last_error"]) == (
            "delivered",
            5,
            202,
            None,
        )
    finally:
        receiver.close()


def test_a_channel_key_cannot_resend_another_channels_delivery_it_is_404_and_nothing_is_queued(api: InProcessApi):
    """A key bound to channel `pos` (webhooks:write) names a delivery of channel `web`'s subscription:
    404 as for a missing one, no resend queued for `web`'s subscriber, the delivery as it was. The
    channel isolation matrix reaches deliveries only through GET /webhooks/{id}/deliveries."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    webhook = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"], "channel": "web"})
    assert webhook.status_code == 201, webhook.text
    deliveries = f"/webhooks/{webhook.json()['id']}/deliveries"
    message = a_pending_delivery(webhook.json()["id"], status="delivered", attempts=1, last_status_code=200)
    before = api.get(deliveries).json()["items"]
    pos = issue(api, "webhooks:write", channel="pos")

    assert_error(api.post(f"{deliveries}/{message.delivery_id}/retry", key=pos), 404, "not_found")

    assert queued(sqs) == []
    assert api.get(deliveries).json()["items"] == before
    # The admin's resend of the same delivery is taken: the 404 was the channel's, not the delivery's.
    assert api.post(f"{deliveries}/{message.delivery_id}/retry").status_code == 202


def test_a_pending_delivery_of_a_deleted_webhook_ends_at_its_next_message_not_when_its_attempt_is_due(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """A delivery waiting an hour for its next attempt (SQS delays a message 15 minutes at most, so
    it is handed out every 15 minutes until then) when its webhook is deleted: each message queued
    the next wait, and it ended `failed` only when its attempt came due, up to an hour later. It
    ends at its next message, without a call, and counts as no failed delivery."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    sqs = boto3.client("sqs", region_name="us-east-1")
    webhook = api.post("/webhooks", json={"url": "http://127.0.0.1:9/gone", "events": ["order.created"]}).json()
    message = a_pending_delivery(
        webhook["id"],
        attempts=5,
        last_status_code=503,
        last_error="HTTP 503",
        next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert api.request("DELETE", f"/webhooks/{webhook['id']}").status_code == 204

    metrics = handled(message, capsys)

    from functions.webhook_delivery.app import container

    record = container().webhook_store.get_delivery(webhook["id"], message.delivery_id)
    assert (record.status, record.last_error, record.next_attempt_at) == ("failed", "the webhook was deleted", None)
    assert record.attempts == 5  # no attempt was made
    assert (queued(sqs), delayed(sqs)) == ([], 0)  # nothing more queued for it
    assert "WebhookDeliveriesFailed" not in metrics


def test_a_waiting_delivery_of_a_live_webhook_keeps_waiting(api: InProcessApi, capsys: pytest.CaptureFixture[str]):
    sqs = boto3.client("sqs", region_name="us-east-1")
    webhook = api.post("/webhooks", json={"url": "http://127.0.0.1:9/live", "events": ["order.created"]}).json()
    due = datetime.now(UTC) + timedelta(hours=1)
    message = a_pending_delivery(webhook["id"], attempts=5, next_attempt_at=due)
    handled(message, capsys)
    from functions.webhook_delivery.app import container

    record = container().webhook_store.get_delivery(webhook["id"], message.delivery_id)
    assert (record.status, record.attempts, record.next_attempt_at) == ("pending", 5, due)
    assert delayed(sqs) == 1  # its wait, a message delayed until the attempt (or 15 minutes)


@pytest.mark.parametrize(
    ("answer", "made_before", "outcome", "attempt"),
    [(204, 0, "delivered", 1), (503, 2, "retrying", 3)],
    ids=["a first delivery", "a third attempt the subscriber fails"],
)
def test_a_delivery_is_logged_with_the_attempt_it_made_as_the_deliveries_list_counts_it(
    api: InProcessApi,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    answer: int,
    made_before: int,
    outcome: str,
    attempt: int,
):
    """The "webhook delivery" log line named the attempts made before this one: a first delivery
    logged `attempts: 0` where GET .../deliveries shows 1 (an events consumer's h728 walk). A retry
    names its own attempt and what came of it, as the list shows them."""
    receiver = Receiver(answer)
    try:
        webhook = api.post("/webhooks", json={"url": receiver.url, "events": ["order.created"]}).json()
        with caplog.at_level("INFO"):
            handled(a_pending_delivery(webhook["id"], attempts=made_before), capsys)
        (logged,) = [record for record in caplog.records if record.getMessage() == "webhook delivery"]
        ((shown,),) = [api.get(f"/webhooks/{webhook['id']}/deliveries").json()["items"]]
        assert (logged.outcome, logged.attempt) == (outcome, shown["attempts"]) == (outcome, attempt)
    finally:
        receiver.close()
