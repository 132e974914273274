"""Webhooks: subscriptions, the fan-out of domain events to them, and signed, retried deliveries."""

import hashlib
import hmac
import ipaddress
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from core.card_numbers import mask_card_numbers
from core.domain_events import WITH_CHANNEL, DomainEvent, EventType, OutgoingEvent, fitted
from core.errors import Conflict, InvalidRequest, NotFound, StaleVersion
from core.ids import KEY_HONOURED_FOR, new_id, short_hash
from core.models import Channel, Shown, VisibleText
from core.status import DeliveryStatus, check_delivery_step

ALL_EVENTS = "*"
MAX_QUEUE_DELAY = 900  # seconds: SQS's longest DelaySeconds; longer waits are several hops
# Seconds a manual retry's message waits for the retry to write the generation it names (it is
# queued first): far longer than the API function may run, so a write still coming is waited for.
RETRY_WRITE_SECONDS = 60
SIGNATURE_HEADER = "OMS-Signature"
# Live subscriptions a channel may hold, and the unbound ones together: every event's dispatch reads
# them all, so one key must not be able to make it slow for everyone. Stripe caps an account at 16
# endpoints (one endpoint takes any set of types); 25 per channel is as generous, and keeps the
# fan-out of a platform with a few channels to a few dozen subscriptions.
MAX_WEBHOOKS = 25
_MAX_ERROR_CHARS = 300


# --- Subscriptions --------------------------------------------------------------------------------
def _known_type(name: str) -> str:
    # Judged item by item, so an error names the type's place in `events` (`events[1]`).
    if name != ALL_EVENTS and name not in EventType._value2member_map_:
        raise ValueError(f'unknown event type {name[:60]!r}: use the contract\'s types or ["*"]')
    return name


class NewWebhook(BaseModel):
    """The body of POST /webhooks."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: Annotated[str, StringConstraints(min_length=8, max_length=2048)]
    events: Annotated[
        list[Annotated[str, AfterValidator(_known_type)]], Field(min_length=1, max_length=len(EventType))
    ] = Field(
        description='Event types, or ["*"] for every type.',
        # What _known_type and the validator below accept, in the API description: ["*"] alone, or distinct types.
        json_schema_extra={
            "anyOf": [
                {"type": "array", "items": {"const": ALL_EVENTS}, "minItems": 1, "maxItems": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "enum": [t.value for t in EventType]},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            ]
        },
    )
    channel: Channel | None = None

    @field_validator("url")
    @classmethod
    def _from_its_scheme(cls, url: str) -> str:
        # urlsplit drops what precedes the scheme (as browsers do), so " https://..." passed the URL
        # check and was kept and shown as sent. Refused here, not in check_url: a subscription
        # stored so before still delivers.
        if url[:1].isspace():
            raise ValueError("starts with a space: send the URL from its scheme (https://)")
        return url

    @field_validator("events")
    @classmethod
    def _star_alone_and_distinct(cls, events: list[str]) -> list[str]:
        # Each refusal names the entry at fault (`events[2]`), as _known_type's do.
        if ALL_EVENTS in events and events != [ALL_EVENTS]:
            raise _entry_error(events, events.index(ALL_EVENTS), '"*" stands alone: it means every type')
        for index, name in enumerate(events):
            if name in events[:index]:
                raise _entry_error(events, index, f"repeats events[{events.index(name)}]")
        return events


def _entry_error(events: list[str], index: int, message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "events", [{"type": "value_error", "loc": (index,), "input": events[index], "ctx": {"error": message}}]
    )


class Subscription(BaseModel):
    """What the fan-out matches an event against and queues a delivery for: a subscription without
    its URL or signing secret, which the functions that match never read (WebhookStore.all)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    events: list[str]
    channel: str | None = None

    def wants(self, event: DomainEvent) -> bool:
        """Whether this subscription receives `event`: its type, and its order's channel when the
        subscription is bound to one (an event without a channel goes to unbound ones only)."""
        if self.channel is not None and event.channel != self.channel:
            return False
        return ALL_EVENTS in self.events or event.type.value in self.events


class Webhook(Shown):
    id: str
    url: str
    events: list[str]
    channel: str | None = None
    created_at: datetime
    # Who set up this flow of order data out of the system (a subscription to "*" receives every
    # order, customer and address included). Null for one stored before it was recorded.
    created_by: str | None = Field(
        default=None,
        description="The id of the API key that made the subscription (null for one made before it was recorded).",
    )


class IssuedWebhook(Webhook):
    """The answer to POST /webhooks: the only time the signing `secret` is shown."""

    secret: str


class TooManyWebhooks(Conflict):
    """The subscription's channel (or, for an unbound one, the unbound subscriptions) holds
    MAX_WEBHOOKS live subscriptions already (409)."""

    code = "too_many_webhooks"

    def __init__(self, channel: str | None):
        where = f"on channel {channel}" if channel is not None else "without a channel"
        super().__init__(
            f"{MAX_WEBHOOKS} webhook subscriptions are live {where} already, the most there may be: delete one"
            " first (one subscription may take several event types, or all of them)"
        )


# --- Deliveries -----------------------------------------------------------------------------------
class Delivery(Shown):
    """One event to one subscription, as GET /webhooks/{id}/deliveries shows it."""

    id: str
    event_id: str
    event_type: EventType
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = None
    # What the subscriber's server answered is its own text (a malformed status line comes back as
    # sent): shown to operators with controls and bidi overrides made visible.
    last_error: Annotated[str, VisibleText] | None = None
    next_attempt_at: datetime | None = None


class DeliveryRecord(Delivery):
    """What is stored: the delivery, the exact body every attempt sends (and signs), and where it
    stands in its schedule. `generation` grows with each manual retry, so a message queued for an
    earlier schedule finds it moved on and does nothing; `attempts` names the attempt a message
    is for, so a duplicated message handled after the attempt was recorded never sends twice (two
    copies handled at the same moment may both send: delivery is at least once, and a claim
    written before each POST would double the record's writes)."""

    webhook_id: str
    body: str
    created_at: datetime
    retry_until: datetime
    generation: int = 0
    # The queue's id of the message that made the last attempt: handed out again, that message
    # knows the next attempt may never have been queued.
    attempted_by: str | None = None

    def shown(self) -> Delivery:
        return Delivery.model_validate(self.model_dump(include=set(Delivery.model_fields)))


def delivery_id(webhook_id: str, event: DomainEvent) -> str:
    """Stable per (subscription, event), so a redelivered event makes no second delivery; it
    starts with the event's time in hex microseconds so a subscription's deliveries sort by time."""
    micros = int(event.created_at.timestamp() * 1_000_000)
    return f"dlv_{micros:014x}{short_hash(webhook_id + event.id)[:16]}"


@dataclass(frozen=True)
class DeliveryMessage:
    """The queued message: which delivery, for which schedule and attempt. `retry_sent_at` (unix
    seconds) marks a manual retry's message, queued before the retry writes its generation."""

    webhook_id: str
    delivery_id: str
    generation: int
    attempts: int
    retry_sent_at: int | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "DeliveryMessage":
        values = json.loads(text)
        sent_at = values.get("retry_sent_at")
        return cls(
            webhook_id=str(values["webhook_id"]),
            delivery_id=str(values["delivery_id"]),
            generation=int(values["generation"]),
            attempts=int(values["attempts"]),
            retry_sent_at=int(sent_at) if sent_at is not None else None,
        )


# --- Signing --------------------------------------------------------------------------------------
def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` (API.md)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does (the README shows it): recompute, compare in constant time, and refuse
    a timestamp too far from now (a replayed old delivery)."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    # As bytes: compare_digest raises on a str with non-ASCII characters (a forged header's).
    return abs(now - timestamp) <= tolerance and hmac.compare_digest(expected.encode(), parts.get("v1", "").encode())


# --- Retry schedule -------------------------------------------------------------------------------
_MOST_DOUBLINGS = 1000  # 2.0 ** 1000 is a float past any cap a base of a second or more needs


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with jitter until `window_seconds` after the first attempt; the last
    attempt is made at the end of the window, so a subscriber is tried for at least that long."""

    base_seconds: float = 30.0
    max_delay_seconds: float = 3600.0
    window_seconds: float = 86400.0

    def delay(self, failures: int, random: Callable[[], float]) -> float:
        """Seconds before the next attempt after `failures` failed ones: half the exponential
        ceiling plus a random share of the other half (jitter spreads subscribers' retries)."""
        # The doubling stops counting long before a float's end (2 ** 1024): a window of weeks at the
        # longest wait fails a delivery over a thousand times, and the cap holds long before then.
        doublings = min(max(failures - 1, 0), _MOST_DOUBLINGS)
        ceiling = min(self.max_delay_seconds, self.base_seconds * 2.0**doublings)
        return ceiling / 2 + random() * ceiling / 2

    def next_attempt(
        self,
        record: DeliveryRecord,
        failures: int,
        now: datetime,
        random: Callable[[], float],
        asked: float | None = None,
    ) -> datetime | None:
        """When to try again after a failure at `now`, or None when the window has closed. `asked`:
        the seconds the subscriber asked to be left (its Retry-After), waited when the backoff
        would come sooner, but never longer than the longest wait (a subscriber cannot park its
        deliveries for days, nor past the window's last attempt)."""
        if now >= record.retry_until:
            return None
        wait = self.delay(failures, random)
        if asked is not None:
            wait = max(wait, min(asked, self.max_delay_seconds))
        return min(now + timedelta(seconds=wait), record.retry_until)


def asked_wait(retry_after: str | None, now: datetime) -> float | None:
    """The seconds from `now` a Retry-After asks (RFC 9110: delay-seconds, or an HTTP date); None
    for none, a date gone by, or anything else."""
    value = (retry_after or "").strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), _LONGEST_ASKED))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return seconds if seconds > 0 else None


_LONGEST_ASKED = 10**9  # seconds: past any longest wait; keeps a subscriber's 400 digits an ordinary float


# --- Where a delivery may go (SSRF) ---------------------------------------------------------------
class WebhookUrlRefused(InvalidRequest):
    code = "webhook_url_refused"

    def __init__(self, reason: str):
        super().__init__(f"webhook URL refused: {reason}", details=[{"field": "url", "message": reason}])


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the addresses checked, so a later DNS answer cannot
    redirect the request) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


Resolver = Callable[[str, int], list[str]]
LOCAL_HTTP_HOST = "127.0.0.1"


def check_url(url: str, resolve: Resolver, allow_local_http: bool = False) -> Target:
    """The target of `url` if a delivery may go there: https to a host whose every address is
    public; with `allow_local_http` (the local stack only) also http://127.0.0.1. Raises
    WebhookUrlRefused otherwise. Called at subscribe time and again before every attempt."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookUrlRefused("not a valid URL") from None
    host = (parts.hostname or "").lower()
    local = allow_local_http and parts.scheme == "http" and host == LOCAL_HTTP_HOST
    if parts.scheme != "https" and not local:
        raise WebhookUrlRefused(
            "only https:// URLs are accepted" + (" (and http://127.0.0.1)" if allow_local_http else "")
        )
    if not host:
        raise WebhookUrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("credentials in the URL are not accepted")
    if parts.fragment:
        raise WebhookUrlRefused("a fragment is never sent: remove it")
    if port == 0:
        # Nothing listens on port 0, and "or" below would read it as the scheme's own port.
        raise WebhookUrlRefused("port 0 is not a port: name the receiver's port or leave it out")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not url.isprintable() or not path.isascii() or " " in path:
        # An HTTP request line carries neither a control, a space nor a non-ASCII character (and
        # urlsplit silently drops tabs and line breaks): such a URL was subscribed, then every attempt
        # failed, and a non-ASCII path stopped the delivery worker itself, attempt after attempt.
        raise WebhookUrlRefused("the path and query must be printable ASCII without spaces: percent-encode the rest")
    if local:
        return Target(parts.scheme, host, port, path, (LOCAL_HTTP_HOST,))
    try:
        addresses = tuple(dict.fromkeys(resolve(host, port)))
    except OSError:
        raise WebhookUrlRefused(f"{host[:100]} does not resolve") from None
    if not addresses:
        raise WebhookUrlRefused(f"{host[:100]} does not resolve")
    for address in addresses:
        if not _public(ipaddress.ip_address(address.split("%", 1)[0])):
            raise WebhookUrlRefused(f"{host[:100]} resolves to a private, loopback or link-local address")
    return Target(parts.scheme, host, port, path, addresses)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are the IPv4 address
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use translation (RFC 8215): never public
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765): the last 32 bits are the IPv4 address


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a connection to `ip` reaches the public internet only. An IPv6 address that carries
    an IPv4 one for a translator or tunnel (NAT64, 6to4, IPv4-mapped, -translated or -compatible)
    reaches that one, which must be public too; the standard library counts NAT64, 6to4,
    IPv4-translated, IPv4-compatible and site-local addresses as global whatever they lead to."""
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return True
    if ip.is_site_local or ip in _LOCAL_NAT64:
        return False
    carried = ip.ipv4_mapped or ip.sixtofour
    if carried is None and (ip in _NAT64 or ip in _IPV4_TRANSLATED or int(ip) >> 32 == 0):
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return carried is None or _public(carried)


# --- Ports ----------------------------------------------------------------------------------------
class WebhookStore(ABC):
    """Subscriptions (with their secrets) and their deliveries."""

    @abstractmethod
    def add(self, webhook: IssuedWebhook, cap: int) -> None:
        """Store a new subscription unless its channel (for an unbound one, the unbound ones) holds
        `cap` already: then TooManyWebhooks, and nothing stored. Two adds racing for the last place
        never both take it. StaleVersion, nothing stored, when a subscription has its id already."""

    @abstractmethod
    def get(self, webhook_id: str, consistent: bool = True) -> IssuedWebhook | None:
        """The subscription, None when there is none. `consistent` False: a read that may miss a
        change of the last second or so (a subscription just made or deleted), at half the cost."""

    @abstractmethod
    def list(self, channel: str | None, limit: int, cursor: str | None) -> tuple[list[Webhook], str | None]:
        """A page of subscriptions in id order, without secrets; `channel` None lists all of them,
        a channel only those bound to it. The cursor names only a subscription the page showed."""

    @abstractmethod
    def all(self) -> "list[Subscription]":
        """Every subscription, as the fan-out matches events against it: never its secret (nor its
        URL), which the functions that only match and queue do not read."""

    @abstractmethod
    def delete(self, webhook_id: str) -> bool:
        """Remove a subscription, freeing its place under the cap; False when there was none."""

    @abstractmethod
    def add_delivery(self, record: DeliveryRecord) -> bool:
        """Store a new delivery; False (and nothing written) when it exists already."""

    def add_deliveries(self, records: "list[DeliveryRecord]") -> "list[bool]":
        """add_delivery of each of `records`, its answer in their order; raises when one could not
        be written (the others may be). One after another here: an adapter may write them at once."""
        return [self.add_delivery(record) for record in records]

    @abstractmethod
    def get_delivery(self, webhook_id: str, delivery_id: str) -> DeliveryRecord | None: ...

    @abstractmethod
    def deliveries(self, webhook_id: str, limit: int, cursor: str | None) -> "tuple[list[DeliveryRecord], str | None]":
        """Newest first."""

    @abstractmethod
    def update_delivery(self, record: DeliveryRecord, expected: DeliveryRecord) -> bool:
        """Replace `expected` by `record` if the stored one still has `expected`'s generation and
        attempts; False otherwise (another message or a manual retry got there first)."""


class DeliveryQueue(ABC):
    @abstractmethod
    def send(self, message: DeliveryMessage, delay_seconds: int) -> None:
        """Queue one attempt `delay_seconds` (0..900) from now."""

    def send_now(self, messages: list[DeliveryMessage]) -> None:
        """Queue each of `messages` for an attempt now, still one message per delivery (no
        subscriber's attempt waits for another's); raises when any was not queued. One send each
        here: an adapter may queue them in fewer requests."""
        for message in messages:
            self.send(message, 0)


class EventPublisher(ABC):
    @abstractmethod
    def publish(self, events: list[OutgoingEvent]) -> None:
        """Put the events on the event bus, each as its `body`; raises when any was not accepted."""


@dataclass(frozen=True)
class SendResult:
    status_code: int | None  # None: no HTTP answer (refused, timed out, connection failed)
    error: str | None = None
    # A failed answer's Retry-After as sent (seconds, or an HTTP date): when the subscriber asks to
    # be tried again (asked_wait).
    retry_after: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender(ABC):
    @abstractmethod
    def post(self, target: Target, body: bytes, headers: dict[str, str], timeout: float) -> SendResult:
        """POST `body` to `target` at one of its checked addresses; never raises for the
        subscriber's failures (they are the result)."""


# --- Services -------------------------------------------------------------------------------------
Clock = Callable[[], datetime]


def _same_subscription(webhook: IssuedWebhook, request: NewWebhook) -> IssuedWebhook:
    """`webhook`, made by an earlier create under the same Idempotency-Key, when `request` asks for
    it again (its secret included: that create's answer); 409 when the key was used for another."""
    if (webhook.url, webhook.events, webhook.channel) != (request.url, request.events, request.channel):
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
            details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
        )
    return webhook


class Webhooks:
    """POST/GET/DELETE /webhooks and the deliveries routes. A channel-bound caller sees and
    changes its channel's subscriptions only (another's answers 404)."""

    def __init__(self, store: WebhookStore, queue: DeliveryQueue, check: Callable[[str], Target], clock: Clock):
        self._store = store
        self._queue = queue
        self._check = check
        self._clock = clock

    def subscribe(self, request: NewWebhook, created_by: str, webhook_id: str | None = None) -> IssuedWebhook:
        """Store a new subscription, made by the API key `created_by`. InvalidRequest when it is
        bound to a channel and names a type not known to carry one (it would never get a delivery);
        WebhookUrlRefused for a URL not to call; TooManyWebhooks when its channel (or the unbound
        ones) holds MAX_WEBHOOKS already. `webhook_id` (core.ids.webhook_id_for, from a client's
        Idempotency-Key) names it: a create retried after its first attempt stored the subscription
        but not the key's record (the function killed between the two) answers that subscription
        within the key's 24 h, and is 409 `idempotency_key_reused` when it asks for another. A key
        whose subscription was deleted makes a new one (the key's record, while it lasts, answers 404)."""
        if webhook_id is not None:
            found = self._store.get(webhook_id)
            if found is not None and found.created_at > self._clock() - KEY_HONOURED_FOR:
                return _same_subscription(found, request)
            if found is not None or self._store.deliveries(webhook_id, 1, None)[0]:
                # The key's 24 h are over, or the subscription it made was deleted after deliveries were
                # recorded under its id: a new request, under an id of its own, so that none of those
                # deliveries is listed, retried or sent as the new subscription's.
                webhook_id = None
        if request.channel is not None:
            for index, name in enumerate(request.events):
                if name != ALL_EVENTS and name not in WITH_CHANNEL:
                    message = f"{name} belongs to no channel: a channel's subscription never gets it"
                    raise InvalidRequest(message, details=[{"field": f"events[{index}]", "message": message}])
        self._check(request.url)
        webhook = IssuedWebhook(
            id=webhook_id or new_id("whk"),
            url=request.url,
            events=request.events,
            channel=request.channel,
            created_at=self._clock(),
            created_by=created_by,
            secret=new_webhook_secret(),
        )
        try:
            self._store.add(webhook, MAX_WEBHOOKS)
        except StaleVersion:
            # A create under the same key at once (its record expired in progress) stored it first.
            found = self._store.get(webhook.id) if webhook_id is not None else None
            if found is None:
                raise
            return _same_subscription(found, request)
        return webhook

    def get(self, webhook_id: str, channel: str | None) -> Webhook:
        return Webhook.model_validate(self.issued(webhook_id, channel).model_dump(exclude={"secret"}))

    def issued(self, webhook_id: str, channel: str | None) -> IssuedWebhook:
        """The subscription with its secret: what its create answered, answered again to that
        create retried under its Idempotency-Key. NotFound for one deleted, or another channel's."""
        webhook = self._store.get(webhook_id)
        if webhook is None or (channel is not None and webhook.channel != channel):
            raise NotFound(f"no webhook {webhook_id}")
        return webhook

    def list(self, channel: str | None, limit: int, cursor: str | None) -> tuple[list[Webhook], str | None]:
        return self._store.list(channel, limit, cursor)

    def delete(self, webhook_id: str, channel: str | None) -> Webhook:
        """Remove the subscription; the one removed (who made it, where it sent), for the log.
        NotFound when another delete removed it first (only that one's caller is its deleter)."""
        webhook = self.get(webhook_id, channel)
        if not self._store.delete(webhook_id):
            raise NotFound(f"no webhook {webhook_id}")
        return webhook

    def deliveries(
        self, webhook_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> "tuple[list[Delivery], str | None]":
        self.get(webhook_id, channel)
        records, next_cursor = self._store.deliveries(webhook_id, limit, cursor)
        return [record.shown() for record in records], next_cursor

    def retry(self, webhook_id: str, delivery_id_: str, channel: str | None) -> Delivery:
        """Send a delivery again now. A failed one is pending for one attempt (a failure leaves it
        failed again); a pending one is tried now and keeps its schedule; a delivered one stays
        delivered, its resend due now (`next_attempt_at`), whose answer is recorded on it without
        changing its status: the subscriber had it, so a resend meeting it down missed nothing.
        The new generation's message is queued before the generation is written: a send that
        fails writes nothing (the schedule's message still counts), and a write that never lands
        leaves a message the worker drops once it cannot come (DeliveryWorker.handle). Written
        first, a failed send left the delivery pending with nothing queued for it."""
        self.get(webhook_id, channel)
        for _ in range(5):
            record = self._store.get_delivery(webhook_id, delivery_id_)
            if record is None:
                raise NotFound(f"no delivery {delivery_id_} of webhook {webhook_id}")
            now = self._clock()
            status = DeliveryStatus.DELIVERED if record.status is DeliveryStatus.DELIVERED else DeliveryStatus.PENDING
            check_delivery_step(record.status, status)
            again = _replace(
                record,
                status=status,
                generation=record.generation + 1,
                next_attempt_at=now,
                # A delivered or failed one gets this one attempt: its window closes now, even when
                # the day after its event is not over (else a failure put it back on the schedule).
                retry_until=max(record.retry_until, now) if record.status is DeliveryStatus.PENDING else now,
            )
            sent_at = int(now.timestamp())
            self._queue.send(DeliveryMessage(webhook_id, delivery_id_, again.generation, again.attempts, sent_at), 0)
            if self._store.update_delivery(again, record):
                return again.shown()
        # The delivery exists: attempts kept being recorded between the read and the write.
        raise StaleVersion(f"delivery {delivery_id_} of webhook {webhook_id} kept changing; retry")


def _sending(record: DeliveryRecord) -> bool:
    """Whether `record` has a send to make: pending, or delivered with a manual resend queued
    (Webhooks.retry sets its `next_attempt_at`; the resend's attempt clears it)."""
    return record.status is DeliveryStatus.PENDING or (
        record.status is DeliveryStatus.DELIVERED and record.next_attempt_at is not None
    )


def _replace(record: DeliveryRecord, **changes: Any) -> DeliveryRecord:
    return DeliveryRecord.model_validate({**dict(record), **changes})


@dataclass(frozen=True)
class Dispatched:
    """What a dispatch did: how many deliveries it queued, and the events that went out cut down
    (`data.omitted`: too large for the bus whole), which operators count (EventsCutDown)."""

    queued: int
    cut_down: list[DomainEvent]


class EventDispatcher:
    """The outbox's events out: each event onto the bus, and one queued delivery per matching
    subscription (one message each, so no subscriber waits for another)."""

    def __init__(
        self,
        store: WebhookStore,
        queue: DeliveryQueue,
        publisher: EventPublisher,
        clock: Clock,
        schedule: RetrySchedule,
    ):
        self._store = store
        self._queue = queue
        self._publisher = publisher
        self._clock = clock
        self._schedule = schedule

    def dispatch(
        self,
        events: list[DomainEvent],
        subscriptions: Callable[[], list[Subscription]] | None = None,
        queued: list[DeliveryMessage] | None = None,
    ) -> "Dispatched":
        """Publish `events` and queue their deliveries. Running it again for the same events queues
        nothing new, except a delivery never tried (its first message may be what failed).
        `subscriptions` gives the subscriptions to match (a stream batch reads them once for all
        its records); by default they are read here. `queued`: a list the messages are added to,
        for the caller to queue (a stream batch queues all its records' together) instead of here;
        until it does, they are deliveries never tried, which a run again queues."""
        if not events:
            return Dispatched(0, [])
        # The same body to the bus and to subscribers, serialized once: one that fits both
        # (core.domain_events.fitted).
        leaving = [fitted(event) for event in events]
        self._publisher.publish(leaving)
        subscribed = (subscriptions or self._store.all)()
        # Every delivery stored, then their messages queued together (SQS bills a batch of small
        # messages as one request): a store that fails queues nothing, and the run again queues
        # each delivery never tried.
        # Written together (add_deliveries: at once on DynamoDB, each still conditional on being
        # new): an event at the cap is 50 writes, and a stream batch's one after another outlasted
        # the events function's Timeout.
        records = [
            self._record(webhook, ready.event, ready.body)
            for ready in leaving
            for webhook in subscribed
            if webhook.wants(ready.event)
        ]
        added = self._store.add_deliveries(records)
        messages = [
            message
            for record, new in zip(records, added, strict=True)
            if (message := self._message(record, new)) is not None
        ]
        if queued is None:
            self._queue.send_now(messages)
        else:
            queued.extend(messages)
        return Dispatched(len(messages), [ready.event for ready in leaving if "omitted" in ready.event.data])

    def _record(self, webhook: Subscription, event: DomainEvent, body: str) -> DeliveryRecord:
        """`webhook`'s delivery of `event`, as it is stored new."""
        now = self._clock()
        return DeliveryRecord(
            id=delivery_id(webhook.id, event),
            event_id=event.id,
            event_type=event.type,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            webhook_id=webhook.id,
            body=body,
            created_at=now,
            retry_until=now + timedelta(seconds=self._schedule.window_seconds),
        )

    def _message(self, record: DeliveryRecord, new: bool) -> DeliveryMessage | None:
        """The message of the delivery `record`, stored now if `new`; None when it was stored and
        tried before (or moved on)."""
        if not new:
            existing = self._store.get_delivery(record.webhook_id, record.id)
            if (
                existing is None
                or existing.attempts
                or existing.generation
                or existing.status != DeliveryStatus.PENDING
            ):
                return None
            record = existing
        return DeliveryMessage(record.webhook_id, record.id, record.generation, record.attempts)


class DeliveryWorker:
    """One queued message: wait longer (SQS delays at most 15 minutes), or make the attempt,
    record it, and queue the next one or end the delivery."""

    def __init__(
        self,
        store: WebhookStore,
        queue: DeliveryQueue,
        sender: WebhookSender,
        check: Callable[[str], Target],
        clock: Clock,
        schedule: RetrySchedule,
        random: Callable[[], float],
        timeout: float = 10.0,
    ):
        self._store = store
        self._queue = queue
        self._sender = sender
        self._check = check
        self._clock = clock
        self._schedule = schedule
        self._random = random
        self._timeout = timeout

    def handle(self, message: DeliveryMessage, message_id: str | None = None) -> str:
        """What became of the message: "stale", "waiting", "delivered", "retrying", "failed",
        "unsubscribed" (its webhook was deleted: ended without a call, nobody is left to miss it),
        or for a manual resend of a delivered delivery (which stays delivered) "resent" (a 2xx)
        or "resend_failed".
        `message_id` is the queue's id of the message (the same each time it is handed out).
        A manual retry's message one generation ahead of the delivery waits for the retry's write
        (Webhooks.retry queues it first) for RETRY_WRITE_SECONDS, then is stale."""
        record = self._store.get_delivery(message.webhook_id, message.delivery_id)
        if record is None:
            return "stale"
        now = self._clock()
        if self._retry_unwritten(record, message, now):
            waited = int(now.timestamp()) - (message.retry_sent_at or 0)
            self._queue.send(message, max(1, min(waited, RETRY_WRITE_SECONDS - waited)))
            return "waiting"
        if not _sending(record):
            return "stale"
        if (record.generation, record.attempts) != (message.generation, message.attempts):
            if (
                message_id is not None
                and record.attempted_by == message_id
                and (record.generation, record.attempts) == (message.generation, message.attempts + 1)
            ):
                # This very message made the last attempt and is handed out again: its handler
                # stopped after recording the attempt, perhaps before queueing the next one.
                self._queue_next(record, now)
                return "waiting"
            return "stale"
        # Read at every hop, a wait's too (one read, no write): a deleted webhook's delivery ends at
        # its next message, not up to an hour later when its attempt came due. Eventually consistent
        # (half a read unit): a subscription's URL and secret never change, and a delete a read may
        # not show yet gives one more attempt, as a message handled while it lands does. One it does
        # not show, perhaps made a moment ago, is read again consistently before the delivery ends.
        webhook = self._store.get(record.webhook_id, consistent=False) or self._store.get(record.webhook_id)
        if webhook is None:
            return self._unsubscribed(record, message_id)
        if record.next_attempt_at is not None and record.next_attempt_at > now:
            wait = (record.next_attempt_at - now).total_seconds()
            self._queue.send(message, min(MAX_QUEUE_DELAY, max(1, int(wait + 0.999))))
            return "waiting"
        result = self._attempt(webhook, record, now)
        failures = record.attempts + 1
        resend = record.status is DeliveryStatus.DELIVERED
        if result.delivered or resend:
            outcome, next_at = DeliveryStatus.DELIVERED, None
        else:
            asked = asked_wait(result.retry_after, now)
            next_at = self._schedule.next_attempt(record, failures, now, self._random, asked)
            outcome = DeliveryStatus.PENDING if next_at is not None else DeliveryStatus.FAILED
        check_delivery_step(record.status, outcome)
        updated = _replace(
            record,
            status=outcome,
            attempts=failures,
            last_status_code=result.status_code,
            # The subscriber's own text (a status line as sent): a card number in it is never kept.
            last_error=mask_card_numbers(result.error)[:_MAX_ERROR_CHARS] if result.error else None,
            next_attempt_at=next_at,
            attempted_by=message_id,
        )
        if not self._store.update_delivery(updated, record):
            return "stale"
        if next_at is not None:
            self._queue_next(updated, now)
            return "retrying"
        if resend:
            return "resent" if result.delivered else "resend_failed"
        return outcome.value

    def _unsubscribed(self, record: DeliveryRecord, message_id: str | None) -> str:
        """End `record`, whose webhook was deleted, without a call: a pending one failed, a
        delivered one (its resend queued) still delivered; no attempt counted, none was made."""
        outcome = DeliveryStatus.DELIVERED if record.status is DeliveryStatus.DELIVERED else DeliveryStatus.FAILED
        check_delivery_step(record.status, outcome)
        ended = _replace(
            record,
            status=outcome,
            last_status_code=None,
            last_error="the webhook was deleted",
            next_attempt_at=None,
            attempted_by=message_id,
        )
        return "unsubscribed" if self._store.update_delivery(ended, record) else "stale"

    @staticmethod
    def _retry_unwritten(record: DeliveryRecord, message: DeliveryMessage, now: datetime) -> bool:
        """Whether `message` is a manual retry's whose write over `record` may still land: it names
        the generation after `record`'s at `record`'s attempts (the only version that write is
        conditional on), and was queued less than RETRY_WRITE_SECONDS ago."""
        if message.retry_sent_at is None or (record.generation + 1, record.attempts) != (
            message.generation,
            message.attempts,
        ):
            return False
        return int(now.timestamp()) < message.retry_sent_at + RETRY_WRITE_SECONDS

    def _queue_next(self, record: DeliveryRecord, now: datetime) -> None:
        """The message for `record`'s next attempt, delayed until it is due (at most SQS's 15 minutes)."""
        due = record.next_attempt_at or now
        delay = (due - now).total_seconds()
        self._queue.send(
            DeliveryMessage(record.webhook_id, record.id, record.generation, record.attempts),
            min(MAX_QUEUE_DELAY, max(0, int(delay + 0.999))),
        )

    def _attempt(self, webhook: IssuedWebhook, record: DeliveryRecord, now: datetime) -> SendResult:
        try:
            target = self._check(webhook.url)
        except WebhookUrlRefused as refused:
            return SendResult(None, refused.message)
        body = record.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "OMS-Webhooks/1",
            "OMS-Event-Id": record.event_id,
            "OMS-Event-Type": record.event_type.value,
            SIGNATURE_HEADER: signature(webhook.secret, int(now.timestamp()), body),
        }
        return self._sender.post(target, body, headers, self._timeout)
