"""Webhooks in core: URL checks (SSRF), signing, the retry schedule, fan-out and the delivery worker."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from core.domain_events import DomainEvent, EventType, OutgoingEvent, event_id
from core.errors import Conflict, InvalidRequest, InvalidTransition, NotFound, StaleVersion
from core.ids import webhook_id_for
from core.status import DeliveryStatus
from core.webhooks import (
    MAX_QUEUE_DELAY,
    MAX_WEBHOOKS,
    RETRY_WRITE_SECONDS,
    DeliveryMessage,
    DeliveryQueue,
    DeliveryRecord,
    DeliveryWorker,
    EventDispatcher,
    EventPublisher,
    IssuedWebhook,
    NewWebhook,
    RetrySchedule,
    SendResult,
    Subscription,
    Target,
    TooManyWebhooks,
    Webhook,
    Webhooks,
    WebhookSender,
    WebhookStore,
    WebhookUrlRefused,
    check_url,
    delivery_id,
    new_webhook_secret,
    signature,
    verify_signature,
)
from infra.local.template import load_template
from tests.fakes import refusing_once

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# --- URL checks -----------------------------------------------------------------------------------
def resolver(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "https://token@example.com/",  # a user without a password is credentials all the same
        "https:///nohost",
        "nonsense",
        "https://example.com/hook#part",  # a fragment is never sent: the subscriber would never see it
    ],
)
def test_only_https_urls_without_credentials_or_a_fragment_are_accepted(url: str):
    with pytest.raises(WebhookUrlRefused):
        check_url(url, resolver("93.184.216.34"))


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00::1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
    ],
)
def test_a_host_resolving_to_a_private_loopback_or_link_local_address_is_refused(address: str):
    with pytest.raises(WebhookUrlRefused) as refused:
        check_url("https://hooks.example.com/x", resolver("93.184.216.34", address))
    assert refused.value.details == [{"field": "url", "message": refused.value.details[0]["message"]}]


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:7",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:7",
        "2002:a00:7::1",
        "::a00:7",
        "fec0::1",
        "::ffff:0:a00:7",
        "::ffff:0:a9fe:a9fe",
    ],
)
def test_an_ipv6_address_that_reaches_a_private_ipv4_one_is_refused(address: str):
    # NAT64 (64:ff9b::/96 carries 10.0.0.7 or 169.254.169.254), a local-use NAT64 prefix, 6to4 and
    # IPv4-compatible and IPv4-translated (SIIT, ::ffff:0:0:0/96) addresses reach the IPv4 address
    # inside them, and a site-local one stays on
    # site: the standard library counts each as global, so a subscriber whose name resolved only to
    # one was called inside our network wherever the function can reach IPv6.
    with pytest.raises(WebhookUrlRefused):
        check_url("https://hooks.example.com/x", resolver(address))


def test_an_ipv6_address_carrying_a_public_ipv4_one_is_accepted():
    target = check_url("https://hooks.example.com/x", resolver("64:ff9b::5db8:d822", "2002:5db8:d822::1"))
    assert target.addresses == ("64:ff9b::5db8:d822", "2002:5db8:d822::1")


@pytest.mark.parametrize("path", ["/caf\u00e9", "/a b", "/hook?to=a\x1b[2J", "/\u202ehook", "/h\x7f", "/a\r\nb"])
def test_a_path_an_http_request_line_cannot_carry_is_refused_naming_the_url(path: str):
    with pytest.raises(WebhookUrlRefused) as refused:
        check_url(f"https://hooks.example.com{path}", resolver("93.184.216.34"))

    assert refused.value.details[0]["field"] == "url"
    assert "percent-encode" in refused.value.message
    encoded = check_url("https://hooks.example.com/caf%C3%A9?a=b%20c", resolver("93.184.216.34"))
    assert encoded.path == "/caf%C3%A9?a=b%20c"


@pytest.mark.parametrize("url", [" https://hooks.example.com/x", "   http://127.0.0.1:9000/h"])
def test_a_subscription_whose_url_starts_with_a_space_is_refused_not_stored_as_sent(url: str):
    from pydantic import ValidationError

    # urlsplit drops what precedes the scheme (as browsers do), so the URL check passed and the
    # subscription kept and showed " https://...": not the https:// URL API.md asks for. Refused
    # when subscribing; a subscription stored so before still delivers (check_url is unchanged).
    with pytest.raises(ValidationError) as refused:
        NewWebhook(url=url, events=["*"])

    assert [error["loc"] for error in refused.value.errors()] == [("url",)]
    assert check_url(url, resolver("93.184.216.34"), allow_local_http=True).path in ("/x", "/h")


def test_a_host_that_does_not_resolve_is_refused():
    def fails(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(WebhookUrlRefused, match="does not resolve"):
        check_url("https://nowhere.example/x", fails)


def test_a_public_https_url_is_a_target_pinned_to_its_checked_addresses():
    target = check_url("https://Hooks.Example.com:8443/in?x=1", resolver("93.184.216.34", "93.184.216.34"))
    assert target == Target("https", "hooks.example.com", 8443, "/in?x=1", ("93.184.216.34",))


@pytest.mark.parametrize("url", ["https://hooks.example.com:0/in", "http://127.0.0.1:0/in"])
def test_port_0_is_refused_not_taken_for_the_schemes_port(url: str):
    # "https://hooks.example.com:0/in" was subscribed and every delivery went to port 443 instead.
    with pytest.raises(WebhookUrlRefused) as refused:
        check_url(url, resolver("93.184.216.34"), allow_local_http=True)

    assert refused.value.details[0]["field"] == "url"


def test_plain_http_to_127_0_0_1_is_accepted_only_where_allowed_and_nothing_else_local():
    assert check_url("http://127.0.0.1:9000/h", resolver(), allow_local_http=True).addresses == ("127.0.0.1",)
    # Without a port, plain http's own: 443 would be a TLS port spoken to in plain text.
    assert check_url("http://127.0.0.1/h", resolver(), allow_local_http=True).port == 80
    with pytest.raises(WebhookUrlRefused):
        check_url("http://127.0.0.1:9000/h", resolver("127.0.0.1"))
    with pytest.raises(WebhookUrlRefused):
        check_url("http://localhost:9000/h", resolver("127.0.0.1"), allow_local_http=True)
    with pytest.raises(WebhookUrlRefused):
        check_url("https://127.0.0.1/h", resolver("127.0.0.1"), allow_local_http=True)


def test_a_host_whose_dns_answers_too_slowly_is_refused_within_the_resolvers_bound(monkeypatch: pytest.MonkeyPatch):
    # A subscriber's own DNS server, answering after seconds, held POST /webhooks (and every
    # delivery attempt's check) past the function's timeout: a 5xx for a hostile URL.
    from functions.adapters import webhooks as adapter

    answered = threading.Event()

    def stalled(*args: object, **kwargs: object) -> list[object]:
        answered.wait(10)
        return []

    monkeypatch.setattr(adapter.socket, "getaddrinfo", stalled)
    monkeypatch.setattr(adapter, "RESOLVE_SECONDS", 0.05, raising=False)
    started = time.monotonic()
    try:
        with pytest.raises(WebhookUrlRefused, match="does not resolve"):
            check_url("https://slow.example.com/in", adapter.resolve)
    finally:
        answered.set()
    assert time.monotonic() - started < 1


# --- Signing --------------------------------------------------------------------------------------
def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_as_the_contract_says():
    body = b'{"id":"evt_1"}'
    expected = hmac.new(b"whsec_x", b"1764590400." + body, hashlib.sha256).hexdigest()
    assert signature("whsec_x", 1764590400, body) == f"t=1764590400,v1={expected}"


def test_a_signing_secret_carries_the_prefix_and_at_least_128_random_bits():
    # A receiver's only proof that a delivery is ours: one short enough to guess forges any event.
    secrets = {new_webhook_secret() for _ in range(50)}

    assert len(secrets) == 50
    for secret in secrets:
        assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{22,}", secret), secret


def test_a_receiver_accepts_a_fresh_signature_and_refuses_a_tampered_old_or_foreign_one():
    body = b'{"id":"evt_1"}'
    header = signature("whsec_x", 1000, body)
    assert verify_signature("whsec_x", header, body, now=1100)
    assert not verify_signature("whsec_x", header, body + b" ", now=1100)
    assert not verify_signature("whsec_other", header, body, now=1100)
    assert not verify_signature("whsec_x", header, body, now=1000 + 301)
    assert not verify_signature("whsec_x", "garbage", body, now=1000)


# Headers a forger (or a broken proxy) sends: each made the README's verify raise (KeyError,
# ValueError, TypeError from compare_digest on non-ASCII, OverflowError from a huge `t`), so a
# receiver answered 500 where it means 401; core's verify_signature raised on the non-ASCII one.
HOSTILE_SIGNATURES = [
    "garbage",
    "v1=00",
    "t=1000",
    "t=soon,v1=00",
    "t=1000,v1=\u00e9t\u00e9",
    "t=" + "9" * 400 + ",v1=00",
    "",
]


@pytest.mark.parametrize("header", HOSTILE_SIGNATURES)
def test_a_malformed_signature_is_refused_never_raised_by_the_readmes_verify_nor_ours(header: str):
    from tests.readme_code import readme_verify

    body = b'{"id":"evt_1"}'
    assert readme_verify()("whsec_x", {"OMS-Signature": header}, body) is False
    assert verify_signature("whsec_x", header, body, now=1000) is False


def test_a_signature_up_to_the_tolerance_away_either_way_is_accepted_and_a_second_more_refused(
    monkeypatch: pytest.MonkeyPatch,
):
    # A receiver's clock may run behind ours: a delivery signed "in its future" is as suspect as one
    # from its past, and the README's verify and ours agree on where the tolerance ends.
    from tests.readme_code import readme_verify

    body = b'{"id":"evt_1"}'
    header = signature("whsec_x", 1000, body)
    for now, accepted in ((1300, True), (700, True), (1301, False), (699, False)):
        assert verify_signature("whsec_x", header, body, now=now) is accepted, now
        monkeypatch.setattr(time, "time", lambda now=now: float(now))
        assert readme_verify()("whsec_x", {"OMS-Signature": header}, body) is accepted, now


def test_a_delivery_without_a_signature_is_refused_by_the_readmes_verify():
    from tests.readme_code import readme_verify

    assert readme_verify()("whsec_x", {}, b"{}") is False


# --- Retry schedule -------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half():
    schedule = RetrySchedule(base_seconds=30, max_delay_seconds=3600, window_seconds=86400)
    assert [schedule.delay(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert [schedule.delay(n, lambda: 0.0) for n in (1, 2, 3)] == [15, 30, 60]
    assert schedule.delay(20, lambda: 1.0) == 3600


def test_every_base_and_longest_wait_a_deploy_takes_back_off_as_the_contract_says():
    # API.md: retried "with exponential backoff". Under a longest wait no more than the base,
    # every retry waited as long as the first, all day (a MaxDelay of 1 s: one attempt a second);
    # a deploy takes no such pair: the greatest base and the least longest wait still double once.
    parameters = load_template(Path(__file__).resolve().parents[2] / "template.yaml")["Parameters"]
    base, longest = parameters["WebhookRetryBaseSeconds"], parameters["WebhookRetryMaxDelaySeconds"]
    schedule = RetrySchedule(base_seconds=base["MaxValue"], max_delay_seconds=longest["MinValue"])

    assert schedule.delay(2, lambda: 1.0) == 2 * schedule.delay(1, lambda: 1.0)
    assert base["MinValue"] <= base["Default"] <= base["MaxValue"] <= MAX_QUEUE_DELAY
    assert longest["MinValue"] <= longest["Default"] <= longest["MaxValue"]


def test_subscribers_that_hang_cannot_take_the_accounts_lambda_concurrency_from_the_orders():
    """Each attempt at a subscriber that takes the connection and never answers holds one
    execution for the whole 10 s, and Lambda's SQS poller scales a mapping up to 1,000 executions
    at once: AWS's default quota for the whole account. Uncapped, a subscriber hanging at ~100
    attempts a second (17 orders a second, six events each) would take every execution the API,
    the outbox and the workflow steps need, and throttle them. The mapping's own cap (not reserved
    concurrency, whose throttled messages are received again, towards the dead-letter queue) keeps
    the deliveries to a fifth of that default, whatever the subscribers do."""
    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
    (mapping,) = [
        event["Properties"]
        for event in template["Resources"]["WebhookDeliveryFunction"]["Properties"]["Events"].values()
        if event["Type"] == "SQS"
    ]

    cap = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")

    assert cap is not None, "the delivery mapping scales with the subscribers' hanging attempts, unbounded"
    assert 2 <= cap <= 1000 // 5  # AWS's least cap; a fifth of the default account quota at most
    assert mapping["BatchSize"] == 1  # one attempt per execution: a slow one holds up only itself


def record(**changes: Any) -> DeliveryRecord:
    values: dict[str, Any] = {
        "id": "dlv_0000000000000aabcdefghabcdefgh",
        "event_id": "evt_x",
        "event_type": EventType.ORDER_CREATED,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": NOW,
        "webhook_id": "whk_1",
        "body": '{"id":"evt_x"}',
        "created_at": NOW,
        "retry_until": NOW + timedelta(days=1),
    }
    return DeliveryRecord.model_validate({**values, **changes})


def test_a_failing_subscriber_is_tried_for_the_whole_window_with_a_last_attempt_at_its_end():
    schedule = RetrySchedule()
    delivery, now, failures, attempts = record(), NOW, 0, [NOW]
    while (next_at := schedule.next_attempt(delivery, failures + 1, now, lambda: 0.5)) is not None:
        failures += 1
        now = next_at
        attempts.append(now)
    assert attempts[-1] == delivery.retry_until and attempts[-1] - attempts[0] >= timedelta(hours=24)
    gaps = [b - a for a, b in pairwise(attempts)]
    assert gaps[:3] == [timedelta(seconds=22.5), timedelta(seconds=45), timedelta(seconds=90)]
    assert max(gaps) <= timedelta(hours=1)


def test_a_window_of_weeks_keeps_retrying_past_a_thousand_failures_at_the_longest_wait():
    # WebhookRetryWindowSeconds may be years, and at the least longest wait (1800 s, jitter down to
    # half) a subscriber down for 16 days fails a 1,025th time: 30.0 x 2**1024 is past any float,
    # so the worker raised OverflowError on that message until it was dead-lettered, and the
    # delivery stayed pending with nothing queued for it, never retried again nor failed.
    parameters = load_template(Path(__file__).resolve().parents[2] / "template.yaml")["Parameters"]
    schedule = RetrySchedule(
        base_seconds=30.0,
        max_delay_seconds=float(parameters["WebhookRetryMaxDelaySeconds"]["MinValue"]),
        window_seconds=float(parameters["WebhookRetryWindowSeconds"]["MaxValue"]),
    )
    delivery = record(retry_until=NOW + timedelta(seconds=schedule.window_seconds))
    assert [schedule.delay(n, lambda: 1.0) for n in (1024, 1025, 10**6)] == [1800, 1800, 1800]
    assert schedule.next_attempt(delivery, 1025, NOW, lambda: 0.0) == NOW + timedelta(seconds=900)


def test_the_local_schedule_makes_at_least_three_attempts_in_the_first_minute():
    # The local stack's schedule (infra/local/stack.py COMPRESSED_WEBHOOK_RETRIES).
    schedule = RetrySchedule(base_seconds=2, max_delay_seconds=8, window_seconds=60)
    delivery = record(retry_until=NOW + timedelta(seconds=60))
    now, attempts = NOW, [NOW]
    while (next_at := schedule.next_attempt(delivery, len(attempts), now, lambda: 1.0)) is not None:
        now = next_at
        attempts.append(now)
    assert len([a for a in attempts if a - NOW <= timedelta(seconds=60)]) >= 3


# --- Fakes of the ports ---------------------------------------------------------------------------
class FakeStore(WebhookStore):
    def __init__(self) -> None:
        self.webhooks: dict[str, IssuedWebhook] = {}
        self.records: dict[tuple[str, str], DeliveryRecord] = {}

    def add(self, webhook: IssuedWebhook, cap: int = MAX_WEBHOOKS) -> None:
        if sum(held.channel == webhook.channel for held in self.webhooks.values()) >= cap:
            raise TooManyWebhooks(webhook.channel)
        if webhook.id in self.webhooks:
            raise StaleVersion(f"webhook {webhook.id} exists already")
        self.webhooks[webhook.id] = webhook

    def get(self, webhook_id: str, consistent: bool = True) -> IssuedWebhook | None:
        return self.webhooks.get(webhook_id)

    def list(self, channel, limit, cursor):
        shown = [Webhook.model_validate(w.model_dump(exclude={"secret"})) for w in self.webhooks.values()]
        return [w for w in shown if channel is None or w.channel == channel], None

    def all(self) -> list[Subscription]:
        return [
            Subscription.model_validate(w.model_dump(include={"id", "events", "channel"}))
            for w in self.webhooks.values()
        ]

    def delete(self, webhook_id: str) -> bool:
        return self.webhooks.pop(webhook_id, None) is not None

    def add_delivery(self, record: DeliveryRecord) -> bool:
        key = (record.webhook_id, record.id)
        if key in self.records:
            return False
        self.records[key] = record
        return True

    def get_delivery(self, webhook_id: str, delivery_id: str) -> DeliveryRecord | None:
        return self.records.get((webhook_id, delivery_id))

    def deliveries(self, webhook_id, limit, cursor):
        return sorted(
            (r for (w, _), r in self.records.items() if w == webhook_id), key=lambda r: r.id, reverse=True
        ), None

    def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
        stored = self.records.get((record.webhook_id, record.id))
        if stored is None or (stored.generation, stored.attempts) != (expected.generation, expected.attempts):
            return False
        self.records[(record.webhook_id, record.id)] = record
        return True


class FakeQueue(DeliveryQueue):
    def __init__(self) -> None:
        self.sent: list[tuple[DeliveryMessage, int]] = []

    def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
        self.sent.append((message, delay_seconds))


class FakeBus(EventPublisher):
    def __init__(self) -> None:
        self.published: list[DomainEvent] = []

    def publish(self, events: list[OutgoingEvent]) -> None:
        self.published.extend(ready.event for ready in events)


class FakeSender(WebhookSender):
    def __init__(self, *answers: SendResult) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Target, bytes, dict[str, str]]] = []

    def post(self, target: Target, body: bytes, headers: dict[str, str], timeout: float) -> SendResult:
        assert timeout == 10.0
        self.calls.append((target, body, headers))
        return self.answers.pop(0)


def event(type_: EventType = EventType.ORDER_CREATED, channel: str = "web", version: int = 1) -> DomainEvent:
    return DomainEvent(
        id=event_id("ord_1", version, type_),
        type=type_,
        created_at=NOW,
        data={"order": {"id": "ord_1", "channel": channel}},
    )


def hook(webhook_id: str, events: list[str], channel: str | None = None, url: str = "https://a.example/h"):
    return IssuedWebhook(id=webhook_id, url=url, events=events, channel=channel, created_at=NOW, secret="whsec_s")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def public(url: str) -> Target:
    return check_url(url, resolver("93.184.216.34"))


# --- Subscriptions and fan-out -------------------------------------------------------------------
def test_a_subscription_gets_its_types_and_a_channel_bound_one_only_its_channels_events():
    def subscription(events: list[str], channel: str | None = None) -> Subscription:
        return Subscription(id="whk_a", events=events, channel=channel)

    assert subscription(["*"]).wants(event(channel="shop"))
    assert subscription(["order.created"]).wants(event())
    assert not subscription(["order.allocated"]).wants(event())
    assert subscription(["*"], channel="web").wants(event(channel="web"))
    assert not subscription(["*"], channel="web").wants(event(channel="shop"))


def test_a_channel_bound_subscription_to_everything_never_gets_an_event_of_no_channel():
    # An import spans channels and stock is shared: a storefront's "*" would read every channel's
    # import errors and every location's stock.
    imported = DomainEvent(
        id=event_id("imp_1", 1, EventType.IMPORT_COMPLETED),
        type=EventType.IMPORT_COMPLETED,
        created_at=NOW,
        data={"import": {"id": "imp_1"}},
    )

    assert Subscription(id="whk_a", events=["*"]).wants(imported)
    assert not Subscription(id="whk_a", events=["*"], channel="web").wants(imported)


def test_new_webhook_events_are_contract_types_or_star():
    assert NewWebhook(url="https://a.example/h", events=["*"]).events == ["*"]
    for events in (["order.nope"], ["*", "order.created"], ["order.created", "order.created"], []):
        with pytest.raises(ValueError):
            NewWebhook(url="https://a.example/h", events=events)


def test_an_unknown_event_type_is_named_by_its_place_in_events():
    # The 422 named `events` for one misspelt type among many, where the error shape names the
    # offending field (as an unknown scope of a new API key is `scopes[i]`).
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        NewWebhook.model_validate(
            {"url": "https://a.example/h", "events": ["order.created", "order.shiped", "refund.failed"]}
        )
    (error,) = refused.value.errors()
    assert error["loc"] == ("events", 1)
    assert "unknown event type 'order.shiped'" in error["msg"]
    with pytest.raises(ValidationError) as mixed:
        NewWebhook.model_validate({"url": "https://a.example/h", "events": ["*", "order.created"]})
    assert "stands alone" in mixed.value.errors()[0]["msg"]


def test_a_repeated_or_a_star_among_types_is_named_by_its_place_in_events():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as repeated:
        NewWebhook.model_validate({"url": "https://a.example/h", "events": ["order.created", "refund.failed",
                                                                            "order.created"]})  # fmt: skip
    with pytest.raises(ValidationError) as mixed:
        NewWebhook.model_validate({"url": "https://a.example/h", "events": ["order.created", "*"]})

    ((loc, msg),) = [(e["loc"], e["msg"]) for e in repeated.value.errors()]
    assert loc == ("events", 2) and "repeats events[0]" in msg
    assert [e["loc"] for e in mixed.value.errors()] == [("events", 1)]


def test_subscribing_checks_the_url_and_shows_the_secret_once():
    store, queue = FakeStore(), FakeQueue()
    webhooks = Webhooks(store, queue, public, Clock())
    issued = webhooks.subscribe(NewWebhook(url="https://a.example/h", events=["*"]), created_by="key_maker")
    assert issued.secret.startswith("whsec_") and store.webhooks[issued.id].secret == issued.secret
    assert store.webhooks[issued.id].created_by == webhooks.get(issued.id, None).created_by == "key_maker"
    assert "secret" not in webhooks.get(issued.id, None).model_dump()
    with pytest.raises(WebhookUrlRefused):
        Webhooks(store, queue, lambda url: check_url(url, resolver("10.0.0.1")), Clock()).subscribe(
            NewWebhook(url="https://internal.example/h", events=["*"]), created_by="key_maker"
        )
    with pytest.raises(NotFound):
        webhooks.get(issued.id, "shop")  # another channel's key


def test_a_subscribe_under_a_clients_key_answers_the_subscription_its_key_made_within_24_hours():
    store, clock = FakeStore(), Clock()
    webhooks = Webhooks(store, FakeQueue(), public, clock)
    asked = NewWebhook(url="https://a.example/h", events=["order.created"])
    key_id = webhook_id_for("key_maker", "checkout-hooks")

    first = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)
    again = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)
    with pytest.raises(Conflict) as other:
        webhooks.subscribe(asked.model_copy(update={"events": ["*"]}), created_by="key_maker", webhook_id=key_id)
    clock.now += timedelta(hours=24)
    a_day_later = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)

    assert first.id == key_id and again == first  # its secret too: the first create's answer
    assert other.value.code == "idempotency_key_reused"
    # The key is honoured for 24 h: after them it names a new request, and that a new subscription.
    assert a_day_later.id != key_id and a_day_later.secret != first.secret
    assert sorted(store.webhooks) == sorted([key_id, a_day_later.id])


def test_a_key_whose_subscription_was_deleted_after_deliveries_makes_a_new_one_under_an_id_of_its_own():
    # Its id taken again, the new subscription would list the deleted one's deliveries, and a retry
    # of one of them would be signed with the new secret and sent as the new subscription's.
    store = FakeStore()
    webhooks = Webhooks(store, FakeQueue(), public, Clock())
    asked = NewWebhook(url="https://a.example/h", events=["*"])
    key_id = webhook_id_for("key_maker", "hooks-setup")
    first = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)
    store.add_delivery(record(webhook_id=first.id))
    webhooks.delete(first.id, None)

    again = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)

    assert again.id != first.id and list(store.webhooks) == [again.id]
    assert webhooks.deliveries(again.id, None, 25, None) == ([], None)


def test_a_subscribe_under_a_key_whose_twin_stored_it_first_answers_that_subscription():
    # Two attempts under one key at once (the first's record expired in progress): one is stored.
    store = FakeStore()
    webhooks = Webhooks(store, FakeQueue(), public, Clock())
    asked = NewWebhook(url="https://a.example/h", events=["*"])
    key_id = webhook_id_for("key_maker", "k")
    twin = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)
    seen = store.get

    def not_yet_seen(webhook_id: str, consistent: bool = True) -> IssuedWebhook | None:
        store.get = seen  # the first read ran before the twin's write; the one after the refusal sees it
        return None

    store.get = not_yet_seen  # type: ignore[method-assign]
    answered = webhooks.subscribe(asked, created_by="key_maker", webhook_id=key_id)

    assert answered == twin and list(store.webhooks) == [key_id]


def test_dispatch_publishes_every_event_and_queues_one_delivery_per_matching_subscription_once():
    store, queue, bus = FakeStore(), FakeQueue(), FakeBus()
    store.add(hook("whk_all", ["*"]))
    store.add(hook("whk_shop", ["*"], channel="shop"))
    store.add(hook("whk_alloc", ["order.allocated"]))
    dispatcher = EventDispatcher(store, queue, bus, Clock(), RetrySchedule())
    events = [event(), event(EventType.ORDER_ALLOCATED, version=2)]
    dispatched = dispatcher.dispatch(events)
    # Events that fit go out whole: none is counted cut down (the EventsCutDown metric, the log).
    assert dispatched.queued == 3 and dispatched.cut_down == []
    assert bus.published == events
    assert sorted((m.webhook_id, d) for m, d in queue.sent) == [("whk_all", 0), ("whk_all", 0), ("whk_alloc", 0)]
    # The same stream record again: same deliveries, nothing queued twice once tried.
    for key, stored in list(store.records.items()):
        store.records[key] = stored.model_copy(update={"attempts": 1})
    assert dispatcher.dispatch(events).queued == 0
    assert len(store.records) == 3


def test_a_delivery_whose_first_message_was_lost_is_queued_again_on_redelivery():
    store, queue, bus = FakeStore(), FakeQueue(), FakeBus()
    store.add(hook("whk_all", ["*"]))
    dispatcher = EventDispatcher(store, queue, bus, Clock(), RetrySchedule())
    dispatcher.dispatch([event()])
    assert dispatcher.dispatch([event()]).queued == 1
    assert queue.sent[0][0] == queue.sent[1][0]


def test_dispatch_handing_its_messages_to_the_caller_queues_none_and_a_run_again_hands_them_over_again():
    """A stream batch queues its records' messages together: dispatch adds them to the caller's
    list. Until the caller queues them they are deliveries never tried, so a run again (the batch
    retried after the queue refused them) hands the same messages over again."""
    store, queue, bus = FakeStore(), FakeQueue(), FakeBus()
    store.add(hook("whk_all", ["*"]))
    dispatcher = EventDispatcher(store, queue, bus, Clock(), RetrySchedule())
    first: list[DeliveryMessage] = []
    assert dispatcher.dispatch([event()], queued=first).queued == 1
    assert queue.sent == []
    again: list[DeliveryMessage] = []
    dispatcher.dispatch([event()], queued=again)
    assert again == first and len(first) == 1


# --- The worker -----------------------------------------------------------------------------------
def worker_for(store: FakeStore, sender: FakeSender, clock: Clock, queue: FakeQueue | None = None):
    queue = queue or FakeQueue()
    schedule = RetrySchedule(base_seconds=30, max_delay_seconds=3600, window_seconds=86400)
    return DeliveryWorker(store, queue, sender, public, clock, schedule, lambda: 1.0), queue


def stored_delivery(store: FakeStore, **changes: Any) -> DeliveryRecord:
    store.add(hook("whk_1", ["*"]))
    delivery = record(**changes)
    store.add_delivery(delivery)
    return delivery


def test_an_attempt_posts_the_stored_body_signed_with_the_contracts_headers():
    store, sender, clock = FakeStore(), FakeSender(SendResult(204)), Clock()
    delivery = stored_delivery(store)
    worker, queue = worker_for(store, sender, clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "delivered"
    ((target, body, headers),) = sender.calls
    assert target.host == "a.example" and body == delivery.body.encode()
    assert headers["OMS-Event-Id"] == "evt_x" and headers["OMS-Event-Type"] == "order.created"
    assert verify_signature("whsec_s", headers["OMS-Signature"], body, now=int(NOW.timestamp()))
    shown = store.get_delivery("whk_1", delivery.id)
    assert (shown.status, shown.attempts, shown.last_status_code, shown.next_attempt_at) == ("delivered", 1, 204, None)
    assert queue.sent == []


def test_a_subscribers_malformed_answer_is_shown_with_controls_and_bidi_overrides_made_visible():
    # A status line comes back in the error as the subscriber sent it (http.client's BadStatusLine),
    # and operators read last_error in GET /webhooks/{id}/deliveries.
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    worker, _ = worker_for(store, FakeSender(SendResult(None, "\x1b[2J\x9b31m ok \u202egnp.exe\r\n")), clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"

    assert store.get_delivery("whk_1", delivery.id).last_error == "\ufffd[2J\ufffd31m ok \ufffdgnp.exe\r\n"


def test_a_card_number_in_a_subscribers_malformed_answer_is_masked_where_the_error_is_kept():
    # The subscriber's status line is text from outside like any request's: a card number in it is
    # kept nowhere and shown by no GET /webhooks/{id}/deliveries.
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    worker, _ = worker_for(store, FakeSender(SendResult(None, "HTTP/1.1 4111 1111 1111 1111 refused\r\n")), clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"

    assert store.get_delivery("whk_1", delivery.id).last_error == "HTTP/1.1 [card number] refused\r\n"


def test_a_5xx_or_a_timeout_is_retried_later_with_the_next_message_queued_for_the_next_attempt():
    store, clock = FakeStore(), Clock()
    sender = FakeSender(SendResult(503, "HTTP 503"), SendResult(None, "timed out"), SendResult(200))
    delivery = stored_delivery(store)
    worker, queue = worker_for(store, sender, clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"
    after_first = store.get_delivery("whk_1", delivery.id)
    assert (after_first.attempts, after_first.last_status_code, after_first.last_error) == (1, 503, "HTTP 503")
    assert after_first.next_attempt_at == NOW + timedelta(seconds=30)
    assert queue.sent[-1] == (DeliveryMessage("whk_1", delivery.id, 0, 1), 30)
    # The same message again (SQS delivers at least once): it names an attempt already made.
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "stale"
    clock.now = NOW + timedelta(seconds=30)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 1)) == "retrying"
    assert store.get_delivery("whk_1", delivery.id).last_error == "timed out"
    clock.now = NOW + timedelta(seconds=90)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 2)) == "delivered"
    assert store.get_delivery("whk_1", delivery.id).attempts == 3


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [
        ("600", 600),  # asked for longer than the backoff's 30 s: waits what it asked
        ("Tue, 01 Dec 2026 12:10:00 GMT", 600),  # an HTTP date (RFC 9110), ten minutes on
        ("Tue, 01 Dec 2026 12:10:00 -0000", 600),  # a date of no zone (RFC 5322's -0000): read as UTC
        ("86400", 3600),  # a day asked: the longest wait, so it is tried again within the hour
        ("10", 30),  # sooner than the backoff: the backoff
        ("Tue, 01 Dec 2026 11:00:00 GMT", 30),  # a date gone by
        ("soon", 30),  # not a wait: ignored
        ("-5", 30),
        ("9" * 400, 3600),
    ],
)
def test_a_subscriber_asking_to_be_tried_later_waits_what_it_asks_up_to_the_longest_wait(retry_after: str, wait: int):
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    worker, queue = worker_for(store, FakeSender(SendResult(429, "HTTP 429", retry_after=retry_after)), clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"

    assert store.get_delivery("whk_1", delivery.id).next_attempt_at == NOW + timedelta(seconds=wait)
    assert queue.sent[-1] == (DeliveryMessage("whk_1", delivery.id, 0, 1), min(wait, 900))


def test_a_retry_after_past_the_window_leaves_the_last_attempt_at_its_end():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, retry_until=NOW + timedelta(seconds=100))
    worker, _ = worker_for(store, FakeSender(SendResult(503, "HTTP 503", retry_after="3000")), clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"

    assert store.get_delivery("whk_1", delivery.id).next_attempt_at == NOW + timedelta(seconds=100)


def test_an_attempt_whose_next_message_was_not_queued_queues_it_when_sqs_hands_the_message_out_again():
    """The attempt is recorded, then queueing the next one fails (SQS refused, or the function
    stopped): the message fails, SQS hands the same message (the same id) out again, and it
    queues the next attempt instead of finding its own attempt recorded and dropping it, which
    left the delivery pending for good, never tried again and never failed."""

    store, clock, queue = FakeStore(), Clock(), refusing_once(FakeQueue)()
    delivery = stored_delivery(store)
    worker, _ = worker_for(store, FakeSender(SendResult(503, "HTTP 503")), clock, queue)
    message = DeliveryMessage("whk_1", delivery.id, 0, 0)
    with pytest.raises(ConnectionError):
        worker.handle(message, "sqs-message-1")
    assert store.get_delivery("whk_1", delivery.id).attempts == 1  # the attempt was recorded

    clock.now = NOW + timedelta(seconds=120)  # the queue's visibility timeout: the message again
    assert worker.handle(message, "sqs-message-1") == "waiting"
    assert queue.sent == [(DeliveryMessage("whk_1", delivery.id, 0, 1), 0)]  # overdue: at once
    # A copy of an earlier message (another id) still finds its attempt made: nothing more queued.
    assert worker.handle(message, "sqs-message-0") == "stale"
    assert worker.handle(message) == "stale"
    assert len(queue.sent) == 1


def test_a_wait_longer_than_sqs_can_delay_is_several_hops():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, attempts=9, next_attempt_at=NOW + timedelta(seconds=2000))
    worker, queue = worker_for(store, FakeSender(), clock)
    message = DeliveryMessage("whk_1", delivery.id, 0, 9)
    assert worker.handle(message) == "waiting"
    assert queue.sent == [(message, 900)]


def test_the_attempt_at_the_end_of_the_window_failing_ends_the_delivery_failed():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, attempts=20, retry_until=NOW)
    worker, queue = worker_for(store, FakeSender(SendResult(500, "HTTP 500")), clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 20)) == "failed"
    failed = store.get_delivery("whk_1", delivery.id)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 21, None)
    assert queue.sent == []


def test_a_url_that_now_resolves_privately_is_not_called_and_counts_as_a_failed_attempt():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    sender = FakeSender()
    queue = FakeQueue()
    worker = DeliveryWorker(
        store, queue, sender, lambda url: check_url(url, resolver("10.0.0.7")), clock, RetrySchedule(), lambda: 1.0
    )
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"
    assert sender.calls == []
    refused = store.get_delivery("whk_1", delivery.id)
    # Nobody answered: no status code is shown as the subscriber's.
    assert "private" in refused.last_error and refused.last_status_code is None


def test_a_deleted_subscription_fails_its_delivery_without_a_call_and_says_it_was_unsubscribed():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    store.delete("whk_1")
    sender = FakeSender()
    worker, _ = worker_for(store, sender, clock)
    # Not "failed": the handler counts those for WebhookDeliveriesFailedAlarm, and nobody missed this one.
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "unsubscribed"
    record = store.get_delivery("whk_1", delivery.id)
    assert (record.status, record.last_error) == ("failed", "the webhook was deleted")
    assert sender.calls == []


def test_a_manual_retry_sends_a_failed_delivery_once_more_and_old_messages_become_stale():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, status=DeliveryStatus.FAILED, attempts=30, retry_until=NOW, next_attempt_at=None)
    queue = FakeQueue()
    clock.now = NOW + timedelta(days=2)
    shown = Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
    assert (shown.status, shown.next_attempt_at) == ("pending", clock.now)
    assert queue.sent == [(DeliveryMessage("whk_1", delivery.id, 1, 30, int(clock.now.timestamp())), 0)]
    worker, _ = worker_for(store, FakeSender(SendResult(500)), clock, queue)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 30)) == "stale"
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 1, 30)) == "failed"
    with pytest.raises(NotFound):
        Webhooks(store, queue, public, clock).retry("whk_1", "dlv_0000000000000azzzzzzzzzzzzzzzz", None)


def test_a_manual_retry_of_a_delivered_delivery_is_one_attempt_though_its_window_is_still_open():
    # README: a delivered or failed one gets that one attempt. Sent again an hour after it was
    # delivered, to a subscriber now down, it went back on the schedule and was tried for the rest
    # of the day, as if it had never been delivered. (It stays delivered: the subscriber had it.)
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=None)
    queue = FakeQueue()
    clock.now = NOW + timedelta(hours=1)
    Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
    worker, _ = worker_for(store, FakeSender(SendResult(503)), clock, queue)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 1, 1)) == "resend_failed"
    shown = store.get_delivery("whk_1", delivery.id)
    assert (shown.status, shown.attempts, shown.next_attempt_at) == ("delivered", 2, None)
    assert len(queue.sent) == 1  # the retry's own message, and no next attempt


def test_a_manual_retry_that_keeps_losing_to_attempts_is_a_conflict_to_retry_not_a_missing_delivery():
    class BusyStore(FakeStore):
        """Each time the retry writes, an automatic attempt has just been recorded before it."""

        def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
            stored = self.records[(record.webhook_id, record.id)]
            self.records[(record.webhook_id, record.id)] = stored.model_copy(update={"attempts": stored.attempts + 1})
            return False

    store, clock, queue = BusyStore(), Clock(), FakeQueue()
    delivery = stored_delivery(store, attempts=3, next_attempt_at=NOW + timedelta(minutes=5))
    with pytest.raises(StaleVersion):
        Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
    assert store.get_delivery("whk_1", delivery.id) is not None  # it exists: a 404 would have said it did not
    # Each try queued its message before its write lost: none names a version the delivery has.
    stored = store.get_delivery("whk_1", delivery.id)
    worker, _ = worker_for(store, FakeSender(), clock)
    assert [worker.handle(message) for message, _ in queue.sent] == ["stale"] * 5
    assert stored.generation == 0


def test_a_manual_retry_whose_message_cannot_be_queued_changes_nothing_and_the_schedule_still_counts():
    """The retry's new generation is written, then SendMessage fails (the request is a 5xx): the
    delivery is put back as it was, so the message of its schedule is not stale; left at the new
    generation with nothing queued for it, it stayed pending for good."""

    class RefusingQueue(FakeQueue):
        def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
            raise ConnectionError("SQS unavailable")

    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, attempts=2, next_attempt_at=NOW + timedelta(minutes=2))
    with pytest.raises(ConnectionError):
        Webhooks(store, RefusingQueue(), public, clock).retry("whk_1", delivery.id, None)
    assert store.get_delivery("whk_1", delivery.id) == delivery
    clock.now = NOW + timedelta(minutes=2)
    worker, _ = worker_for(store, FakeSender(SendResult(204)), clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 2)) == "delivered"


def test_a_scheduled_attempt_made_while_a_manual_retry_fails_to_queue_leaves_its_next_attempt_queued():
    """The retry wrote its generation, the schedule's message was handled meanwhile and dropped as
    stale, then SendMessage failed and the delivery was put back: pending, with nothing queued
    for it, for good."""
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, attempts=2, next_attempt_at=NOW)
    worker, worker_queue = worker_for(store, FakeSender(SendResult(503, "HTTP 503")), clock)
    handled = []

    class RefusingAfterTheScheduledAttempt(FakeQueue):
        def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
            handled.append(worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 2)))
            raise ConnectionError("SQS unavailable")

    with pytest.raises(ConnectionError):
        Webhooks(store, RefusingAfterTheScheduledAttempt(), public, clock).retry("whk_1", delivery.id, None)

    now = store.get_delivery("whk_1", delivery.id)
    assert handled == ["retrying"] and (now.status, now.attempts) == ("pending", 3)
    assert [message for message, _ in worker_queue.sent] == [
        DeliveryMessage("whk_1", delivery.id, now.generation, now.attempts)
    ]


def test_a_manual_retrys_message_handled_before_the_retry_is_written_waits_for_it():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, status=DeliveryStatus.FAILED, attempts=30, retry_until=NOW, next_attempt_at=None)
    clock.now = NOW + timedelta(days=2)
    worker, worker_queue = worker_for(store, FakeSender(SendResult(204)), clock)
    handled = []

    class HandedOutAtOnce(FakeQueue):
        def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
            handled.append(worker.handle(message))

    Webhooks(store, HandedOutAtOnce(), public, clock).retry("whk_1", delivery.id, None)

    assert handled == ["waiting"]
    ((waited, delay),) = worker_queue.sent
    assert (waited.generation, delay) == (1, 1)
    clock.now += timedelta(seconds=1)
    assert worker.handle(waited) == "delivered"


def test_a_manual_retrys_message_whose_write_never_lands_is_stale_once_it_cannot_come():
    class UnwritableStore(FakeStore):
        def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
            raise ConnectionError("DynamoDB unavailable")

    store, clock, queue = UnwritableStore(), Clock(), FakeQueue()
    delivery = stored_delivery(store, status=DeliveryStatus.FAILED, attempts=30, retry_until=NOW, next_attempt_at=None)
    with pytest.raises(ConnectionError):
        Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
    ((message, _),) = queue.sent
    worker, worker_queue = worker_for(store, FakeSender(), clock)

    delays = []
    while (outcome := worker.handle(message)) == "waiting":
        delays.append(worker_queue.sent[-1][1])
        clock.now += timedelta(seconds=delays[-1])
    assert outcome == "stale" and clock.now == NOW + timedelta(seconds=RETRY_WRITE_SECONDS)
    assert delays == [1, 1, 2, 4, 8, 16, 28]  # waited for less and less likely, a few hops in all
    assert store.get_delivery("whk_1", delivery.id) == delivery


def test_two_manual_retries_of_a_failed_delivery_at_once_send_it_and_leave_no_message_behind():
    """Checked and right, kept so: two operators retry the same failed delivery at once, the second
    read and written between the first's read and its write. The first writes again over the
    second's generation; every message but the last generation's is stale, and the delivery is
    sent once and ends delivered, with nothing left queued or waiting."""
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, status=DeliveryStatus.FAILED, attempts=30, retry_until=NOW, next_attempt_at=None)
    clock.now = NOW + timedelta(days=2)
    queue = FakeQueue()

    class RacedStore(FakeStore):
        def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
            if len(queue.sent) == 1:  # the first retry's message is queued: the second retry runs whole
                Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
            return store.update_delivery(record, expected)

    raced = RacedStore()
    raced.webhooks, raced.records = store.webhooks, store.records
    Webhooks(raced, queue, public, clock).retry("whk_1", delivery.id, None)

    assert [message.generation for message, _ in queue.sent] == [1, 1, 2]
    sender = FakeSender(SendResult(204))
    worker, worker_queue = worker_for(store, sender, clock)
    assert [worker.handle(message) for message, _ in queue.sent] == ["stale", "stale", "delivered"]
    assert len(sender.calls) == 1 and worker_queue.sent == []
    shown = store.get_delivery("whk_1", delivery.id)
    assert (shown.status, shown.attempts, shown.generation) == ("delivered", 31, 2)


def test_delivery_statuses_follow_their_table():
    from core.status import check_delivery_step

    check_delivery_step(DeliveryStatus.PENDING, DeliveryStatus.DELIVERED)
    check_delivery_step(DeliveryStatus.FAILED, DeliveryStatus.PENDING)
    for later in (DeliveryStatus.FAILED, DeliveryStatus.PENDING):  # delivered is for good
        with pytest.raises(InvalidTransition):
            check_delivery_step(DeliveryStatus.DELIVERED, later)


def test_dispatch_matches_the_subscriptions_it_is_given_without_reading_them_again():
    class CountingStore(FakeStore):
        reads = 0

        def all(self) -> list[Subscription]:
            self.reads += 1
            return super().all()

    store, queue = CountingStore(), FakeQueue()
    given = [Subscription(id="whk_given", events=["*"])]
    dispatcher = EventDispatcher(store, queue, FakeBus(), Clock(), RetrySchedule())
    assert dispatcher.dispatch([event()], lambda: given).queued == 1
    assert store.reads == 0 and queue.sent[0][0].webhook_id == "whk_given"


def test_a_channel_bound_subscription_to_an_event_without_a_channel_is_refused_naming_it():
    # import.completed and inventory.low carry no order, so no channel: a subscription bound to
    # one could never receive them, and it was stored as if it would.
    store = FakeStore()
    webhooks = Webhooks(store, FakeQueue(), public, Clock())
    with pytest.raises(InvalidRequest) as refused:
        webhooks.subscribe(NewWebhook(url="https://a.example/h", events=["order.created", "inventory.low"],
                                      channel="web"), created_by="key_web")  # fmt: skip
    assert refused.value.details == [
        {"field": "events[1]", "message": "inventory.low belongs to no channel: a channel's subscription never gets it"}
    ]
    assert store.webhooks == {}
    for type_ in ("import.completed", "inventory.low"):
        unbound = webhooks.subscribe(NewWebhook(url="https://a.example/h", events=[type_]), created_by="key_web")
        assert unbound.channel is None
    assert (
        webhooks.subscribe(
            NewWebhook(url="https://a.example/h", events=["*"], channel="web"), created_by="key_web"
        ).channel
        == "web"
    )


def test_of_two_deletes_racing_only_the_one_that_removed_the_subscription_is_told_it_did():
    # Both read the subscription, one removed it: the other answered 204 and logged a delete it had
    # not made, so the log named two keys as its deleter.
    class TakenMeanwhile(FakeStore):
        def delete(self, webhook_id: str) -> bool:
            super().delete(webhook_id)  # the other delete's
            return False

    store = TakenMeanwhile()
    webhooks = Webhooks(store, FakeQueue(), public, Clock())
    issued = webhooks.subscribe(NewWebhook(url="https://a.example/h", events=["*"]), created_by="key_maker")
    with pytest.raises(NotFound):
        webhooks.delete(issued.id, None)
    assert store.webhooks == {}


# --- Subscribers' and operators' edge cases ------------------------------------------------------
def test_a_subscriptions_deliveries_sort_by_their_events_time_within_the_same_second():
    # GET /webhooks/{id}/deliveries lists newest first by id: ten events of one busy second (an
    # order's change gives several) were listed in the order of their hashes.
    events = [
        event(version=n).model_copy(update={"created_at": NOW + timedelta(milliseconds=90 * n)}) for n in range(10)
    ]
    ids = [delivery_id("whk_1", each) for each in events]
    assert ids == sorted(ids)


def test_a_dispatched_delivery_whose_first_attempt_fails_is_retried_for_the_window():
    store, queue, clock = FakeStore(), FakeQueue(), Clock()
    store.add(hook("whk_1", ["*"]))
    schedule = RetrySchedule(base_seconds=30, max_delay_seconds=3600, window_seconds=86400)
    EventDispatcher(store, queue, FakeBus(), clock, schedule).dispatch([event()])
    ((message, _),) = queue.sent
    worker = DeliveryWorker(store, queue, FakeSender(SendResult(503, "HTTP 503")), public, clock, schedule, lambda: 1.0)

    assert worker.handle(message) == "retrying"

    stored = store.get_delivery("whk_1", message.delivery_id)
    assert (stored.status, stored.retry_until) == ("pending", NOW + timedelta(days=1))


def test_an_event_redelivered_after_its_delivery_was_retried_by_hand_queues_no_second_message():
    # The retry queued the attempt's message: another for the same attempt, handled at the same
    # moment, would send the subscriber the event twice.
    store, queue, clock = FakeStore(), FakeQueue(), Clock()
    store.add(hook("whk_1", ["*"]))
    dispatcher = EventDispatcher(store, queue, FakeBus(), clock, RetrySchedule())
    dispatcher.dispatch([event()])
    ((message, _),) = queue.sent
    Webhooks(store, queue, public, clock).retry("whk_1", message.delivery_id, None)

    assert dispatcher.dispatch([event()]).queued == 0
    assert len(queue.sent) == 2  # the first message and the retry's


@pytest.mark.parametrize(
    ("answer", "retry_until", "outcome"),
    [(SendResult(204), NOW + timedelta(days=1), "delivered"), (SendResult(500, "HTTP 500"), NOW, "failed")],
)
def test_the_message_of_a_delivery_that_ended_handed_out_again_sends_nothing_more(
    answer: SendResult, retry_until: datetime, outcome: str
):
    # SQS hands a message out again when its handler stopped after recording the attempt: one that
    # ended the delivery (delivered, or failed at the window's end) has no next attempt to queue.
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, retry_until=retry_until)
    sender = FakeSender(answer)
    worker, queue = worker_for(store, sender, clock)
    message = DeliveryMessage("whk_1", delivery.id, 0, 0)
    assert worker.handle(message, "sqs-message-1") == outcome

    clock.now = NOW + timedelta(seconds=120)
    assert worker.handle(message, "sqs-message-1") == "stale"
    assert queue.sent == [] and len(sender.calls) == 1


def test_a_subscription_made_a_moment_ago_that_a_cheap_read_misses_still_gets_its_delivery():
    class Lagging(FakeStore):
        def get(self, webhook_id: str, consistent: bool = True) -> IssuedWebhook | None:
            return super().get(webhook_id) if consistent else None

    store, clock = Lagging(), Clock()
    delivery = stored_delivery(store)
    sender = FakeSender(SendResult(204))
    worker, _ = worker_for(store, sender, clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "delivered"
    assert len(sender.calls) == 1


def test_a_message_is_never_queued_to_arrive_before_its_attempt_is_due():
    # A message early by a fraction of a second finds its attempt not due and waits again: one more
    # hop (a message and an invocation) for nothing.
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, next_attempt_at=NOW + timedelta(seconds=2.5))
    worker, queue = worker_for(store, FakeSender(), clock)
    message = DeliveryMessage("whk_1", delivery.id, 0, 0)
    assert worker.handle(message) == "waiting"
    assert queue.sent == [(message, 3)]

    # After a failure: the backoff's wait with jitter, 19.5 s, is a message 20 s away.
    failing = FakeStore()
    failed_once = stored_delivery(failing)
    schedule = RetrySchedule(base_seconds=30, max_delay_seconds=3600, window_seconds=86400)
    queue = FakeQueue()
    sender = FakeSender(SendResult(503, "HTTP 503"))
    worker = DeliveryWorker(failing, queue, sender, public, clock, schedule, lambda: 0.3)
    assert worker.handle(DeliveryMessage("whk_1", failed_once.id, 0, 0)) == "retrying"
    assert failing.get_delivery("whk_1", failed_once.id).next_attempt_at == NOW + timedelta(seconds=19.5)
    assert queue.sent == [(DeliveryMessage("whk_1", failed_once.id, 0, 1), 20)]


def test_a_subscribers_long_error_is_kept_to_its_first_300_characters():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    worker, _ = worker_for(store, FakeSender(SendResult(None, "x" * 5000)), clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "retrying"
    assert store.get_delivery("whk_1", delivery.id).last_error == "x" * 300


def test_an_attempt_whose_record_another_message_changed_first_is_stale_and_queues_nothing():
    # Two copies of a message handled at once both send; only the one that records its attempt
    # queues the next, or the delivery would go on along two chains of messages, each attempt twice.
    class RecordedMeanwhile(FakeStore):
        def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
            return False

    store, clock = RecordedMeanwhile(), Clock()
    delivery = stored_delivery(store)
    worker, queue = worker_for(store, FakeSender(SendResult(503, "HTTP 503")), clock)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == "stale"
    assert queue.sent == []


def test_a_delivered_delivery_whose_webhook_was_deleted_before_its_resend_stays_delivered():
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=None)
    queue = FakeQueue()
    Webhooks(store, queue, public, clock).retry("whk_1", delivery.id, None)
    store.delete("whk_1")
    worker, _ = worker_for(store, FakeSender(), clock, queue)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 1, 1)) == "unsubscribed"
    ended = store.get_delivery("whk_1", delivery.id)
    assert (ended.status, ended.next_attempt_at, ended.last_error) == ("delivered", None, "the webhook was deleted")


def test_an_attempt_hours_after_the_event_is_signed_with_its_own_time_so_receivers_accept_it():
    # Receivers refuse a signature more than 5 minutes from their clock (the README's verify).
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store, attempts=6, next_attempt_at=NOW + timedelta(hours=2))
    sender = FakeSender(SendResult(204))
    worker, _ = worker_for(store, sender, clock)
    clock.now = NOW + timedelta(hours=2)

    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 6)) == "delivered"

    ((_, body, headers),) = sender.calls
    assert verify_signature("whsec_s", headers["OMS-Signature"], body, now=int(clock.now.timestamp()))


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [(200, "delivered"), (299, "delivered"), (101, "retrying"), (300, "retrying"), (302, "retrying")],
)
def test_only_a_2xx_answer_is_delivered_a_redirect_or_an_informational_one_is_retried(status_code: int, outcome: str):
    # API.md: "A 2xx answer within 10 s is delivered; anything else is retried". Redirects are
    # not followed (the URL was checked, its redirect target was not).
    store, clock = FakeStore(), Clock()
    delivery = stored_delivery(store)
    worker, _ = worker_for(store, FakeSender(SendResult(status_code)), clock)
    assert worker.handle(DeliveryMessage("whk_1", delivery.id, 0, 0)) == outcome


def test_a_subscribe_under_a_key_used_for_another_channel_is_a_conflict_not_that_channels_subscription():
    store = FakeStore()
    webhooks = Webhooks(store, FakeQueue(), public, Clock())
    key_id = webhook_id_for("key_admin", "hooks-1")
    webhooks.subscribe(NewWebhook(url="https://a.example/h", events=["*"]), created_by="key_admin", webhook_id=key_id)

    with pytest.raises(Conflict) as other:
        webhooks.subscribe(
            NewWebhook(url="https://a.example/h", events=["*"], channel="web"),
            created_by="key_admin",
            webhook_id=key_id,
        )
    assert other.value.code == "idempotency_key_reused"


@pytest.mark.parametrize("name", ["OMS-Signature", "oms-signature", "Oms-Signature"])
def test_the_readmes_verify_finds_the_signature_whatever_the_case_of_its_header_name(
    name: str, monkeypatch: pytest.MonkeyPatch
):
    # Header names are case-insensitive; HTTP/2, API Gateway's HTTP APIs, Lambda function URLs and
    # many frameworks hand a receiver a plain dict with them lower-cased: a verify that looked up
    # "OMS-Signature" alone refused every genuine delivery there.
    from tests.readme_code import readme_verify

    body = b'{"id":"evt_1"}'
    monkeypatch.setattr(time, "time", lambda: 1000.0)

    assert readme_verify()("whsec_x", {name: signature("whsec_x", 1000, body)}, body) is True
    assert readme_verify()("whsec_other", {name: signature("whsec_x", 1000, body)}, body) is False
