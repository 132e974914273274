"""The template's function events (DynamoDB streams, SQS, S3, Schedule), emulated with pollers.

moto runs an SQS → Lambda mapping synchronously inside SendMessage and ignores batchItemFailures;
its stream mapping ignores StartingPosition. Here each event is a thread (EventSourceMapping) that
sleeps until its source may hold a record (moto_patches/arrivals.py wakes it), fetches a batch
through the ordinary APIs, invokes the in-process handler outside MOTO_LOCK with the event Lambda
builds and applies what Lambda applies to the answer. infra/local/supported.py checks what the
template may say.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count, islice
from typing import Any, NamedTuple
from urllib.parse import quote_plus, unquote_plus

from core import settings
from infra.local.lambdas import LocalFunction, RuntimeFailure
from infra.local.template import ACCOUNT_ID, REGION

logger = logging.getLogger("infra.local.events")

POLL_INTERVAL = 0.1  # seconds between looks at a source not drained whose next record moto did not time
RETRY_DELAY = 0.2  # seconds between retries of a failed batch (AWS backs off exponentially)
STREAM_PAGE = 1000  # records a stream poller's GetRecords asks for (AWS's most)
ASYNC_RETRIES = 2  # Lambda retries an asynchronous invocation (S3, EventBridge) twice by default
# Batches an SQS mapping whose template entry sets ScalingConfig.MaximumConcurrency runs side by side
# locally (at most that many): enough that a few webhook subscribers hanging 10 s an attempt leave a
# thread to the others' deliveries and retries (API.md: 3 attempts in the first 60 s), few enough
# that a backlog does not put dozens of threads on this process's one GIL and one MOTO_LOCK, where
# more batches at once only queue (a developer's stack, not a load test).
SQS_LOCAL_CONCURRENCY = 4

SCHEDULE_PERIOD_ENV = "OMS_LOCAL_SCHEDULE_SECONDS"
# A schedule's period locally, so a developer sees it work: the function's own variable, then
# OMS_LOCAL_SCHEDULE_SECONDS, then this default (the jeopardy scan: every 30 s instead of every 5
# minutes), then the template's rate.
LOCAL_SCHEDULE_PERIODS: dict[str, tuple[str, float]] = {"JeopardyScanFunction": ("OMS_JEOPARDY_SCAN_SECONDS", 30.0)}
_RATE = re.compile(r"^rate\((\d+) (minute|hour|day)(s?)\)$")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}

Record = dict[str, Any]


class EventSourceError(ValueError):
    """An event source the local runtime cannot emulate faithfully: startup fails with this."""


# --- FilterCriteria: what the template uses, nested keys down to lists of exact strings or booleans,
# matched with their JSON type. Anything else (numbers, which AWS matches numerically while a stream
# record carries them as strings; prefix, anything-but, exists, ...) fails startup.


def compile_filters(criteria: Any, where: str) -> list[dict[str, Any]] | None:
    """FilterCriteria ({"Filters": [{"Pattern": "<json>"}]}) as patterns; None when absent."""
    if not criteria:
        return None
    filters = criteria.get("Filters") if isinstance(criteria, dict) else None
    if not isinstance(filters, list) or not filters:
        raise EventSourceError(f"{where}: FilterCriteria needs a non-empty Filters list")
    patterns = []
    for index, entry in enumerate(filters):
        try:
            patterns.append(json.loads(entry["Pattern"]))
        except (TypeError, KeyError, ValueError) as error:
            raise EventSourceError(f"{where}: Filters[{index}].Pattern is not a JSON string: {error}") from None
        _check_pattern(patterns[-1], f"{where}: Filters[{index}].Pattern")
    return patterns


def _check_pattern(pattern: Any, where: str) -> None:
    if not isinstance(pattern, dict) or not pattern:
        raise EventSourceError(f"{where} must be a non-empty JSON object, got {json.dumps(pattern)}")
    for key, value in pattern.items():
        if isinstance(value, dict):
            _check_pattern(value, f"{where}.{key}")
        elif not isinstance(value, list) or not value or not all(isinstance(item, str | bool) for item in value):
            raise EventSourceError(
                f"{where}: {key!r} is {json.dumps(value)}, which the local runtime does not emulate "
                "(only non-empty lists of exact strings or booleans)"
            )


def matches_filters(patterns: Sequence[Mapping[str, Any]] | None, record: Mapping[str, Any]) -> bool:
    """Filters are ORed; within a pattern every key must match."""
    return patterns is None or any(_matches(pattern, record) for pattern in patterns)


def _matches(pattern: Mapping[str, Any], value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, expected in pattern.items():
        actual = value.get(key)  # absent: None, which no pattern value matches
        if isinstance(expected, dict) and not _matches(expected, actual):
            return False
        if isinstance(expected, list) and not any(actual == want and type(actual) is type(want) for want in expected):
            return False
    return True


# --- Batch responses --------------------------------------------------------------------------------


def failed_identifiers(response: Any, identifiers: Sequence[str]) -> set[str]:
    """For ReportBatchItemFailures: the identifiers the function reported as failed. An empty or
    null answer is a success; a malformed one (or an identifier not in the batch) fails the whole
    batch, as Lambda does."""
    failures = response.get("batchItemFailures") if isinstance(response, dict) else response
    if failures is None:
        return set()
    if not isinstance(response, dict) or not isinstance(failures, list):
        return set(identifiers)
    failed = [failure.get("itemIdentifier") if isinstance(failure, dict) else None for failure in failures]
    return set(failed) if all(isinstance(i, str) and i in identifiers for i in failed) else set(identifiers)


# --- The mappings -----------------------------------------------------------------------------------


class OnFailure(NamedTuple):
    """An OnFailure destination: an SQS queue (the only kind supported.py lets through)."""

    arn: str
    queue_url: str


@dataclass(eq=False, kw_only=True)
class EventSourceMapping:
    """One event source: a thread that fetches a batch, invokes the function with it, and retries
    what failed (in halves on an error when bisect_on_error) until it succeeds or has failed
    1 + maximum_retry_attempts times (-1: forever, as a stream's record until it expires), when it
    goes to the OnFailure destination as AWS's record of it. A subclass says how to fetch a batch,
    how to shape its event and what of an answer failed."""

    kind = ""
    name: str
    function_logical_id: str
    function: LocalFunction
    source_arn: str
    source_label: str  # the source, short, as `make run` lists it
    client: Callable[[str], Any] = field(repr=False)
    batch_size: int = 1
    report_batch_item_failures: bool = False
    maximum_retry_attempts: int = 0
    bisect_on_error: bool = False
    on_failure: OnFailure | None = None
    retry_delay: float = RETRY_DELAY
    batching_window: float = 0.0  # seconds: MaximumBatchingWindowInSeconds times the stack's scale

    def __post_init__(self) -> None:
        self._stopping, self._paused = threading.Event(), threading.Event()
        self._arrived = threading.Event()  # set by wake(): the source may hold a record its last look did not see
        self._busy, self._drained = False, False
        # Held while the poller turns a wake into a look (clears _arrived, sets _busy) and while
        # is_idle() reads the three: between the two steps it read a woken mapping as idle.
        self._looking = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, paused: bool = False) -> None:
        if paused:
            self._paused.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"oms-local-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._arrived.set()
        thread, self._thread = self._thread, None  # read once: a poller that dies sets it to None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("%s: still delivering after %.0f s; left behind", self.name, timeout)

    def pause(self) -> None:
        """No new batches until resume() (a batch being delivered finishes, retries included)."""
        self._paused.set()

    def resume(self) -> None:
        self._drained = False  # what arrived while paused is looked for first
        self._paused.clear()
        self._arrived.set()

    def wake(self) -> None:
        """A record may have arrived at the source: the mapping looks now. A paused one is left
        asleep (resume() has it look for what arrived meanwhile): woken by every record of a
        busy stream, each of its pollers cost a thread switch for nothing."""
        if not self.paused:
            self._arrived.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def is_idle(self) -> bool:
        """Nothing to deliver: paused, not polling (its thread ended), or its last look found the
        source drained and nothing has arrived since. A mapping gathering a batch (its batching
        window) is busy, paused or not: the batch goes once full or once the window has passed."""
        with self._looking:
            return not self._busy and (
                self._thread is None or self.paused or (self._drained and not self._arrived.is_set())
            )

    def _run(self) -> None:
        try:
            self._prepare()
            while not self._stopping.is_set():
                with self._looking:  # one step for is_idle(): woken, then busy, never neither
                    self._arrived.clear()  # what arrives from here on is looked for by the next look
                    looks = not self.paused
                    if looks:
                        self._busy, self._drained = True, False
                batch = None
                if looks:
                    try:
                        batch = self._fetch()
                        if batch:
                            batch = self._gather(batch)
                            self._deliver(batch)
                            self._delivered(batch)
                    except Exception:
                        if self._stopping.is_set():
                            break
                        logger.exception("%s: polling failed", self.name)
                        batch = None
                    finally:
                        self._drained, self._busy = batch == [], False
                if not batch:
                    self._arrived.wait(None if self.paused else self._look_again_in())
        except BaseException:  # the runtime's own (a handler's is its invocation's error): never silent
            logger.exception("%s: no longer polling %s", self.name, self.source_arn)
            self._thread = None  # idle: stop() has nothing to wait for, start() polls again

    def _prepare(self) -> None:
        """Runs in the thread before the first poll."""

    def _look_again_in(self) -> float | None:
        """Seconds until the next look at a source that has nothing to deliver now; None: only once
        a record arrives (wake())."""
        return None if self._drained else POLL_INTERVAL

    def _fetch(self) -> list[Record] | None:
        """The next batch: [] when the source is drained, None when it has nothing now but is not
        drained (SQS messages in flight). A batch fetched and not delivered yet is fetched again,
        with what arrived since up to batch_size (_gather() relies on it)."""
        raise NotImplementedError

    def _gather(self, batch: list[Record]) -> list[Record]:
        """The batching window: a batch short of batch_size waits for records until it is full or
        `batching_window` seconds have passed since its first look, as Lambda gathers one (an SQS
        message whose delay ends meanwhile waits for the next batch: no wake comes for it). Each
        look after an arrival is _fetch() again, which answers the whole batch so far."""
        deadline = time.monotonic() + self.batching_window
        while len(batch) < self.batch_size and (left := deadline - time.monotonic()) > 0:
            self._arrived.wait(left)
            if self._stopping.is_set():
                break
            if self._arrived.is_set():
                self._arrived.clear()  # what arrives from here on is looked for by the next look
                batch = self._fetch() or batch
        return batch

    def _delivered(self, batch: list[Record]) -> None:
        """Called once a batch _fetch() returned is delivered (a stream's leaves its buffer then)."""

    def _event(self, batch: list[Record]) -> dict[str, Any]:
        return {"Records": batch}

    def _failed_part(self, batch: list[Record], response: Any) -> list[Record]:
        """What of a batch the function answered is to be retried (ReportBatchItemFailures)."""
        return []

    def _deliver(self, batch: list[Record]) -> None:
        work = [(batch, 0)]
        while work and not self._stopping.is_set():
            batch, failures = work.pop()
            response, error = self.function.try_invoke(self._event(batch))
            failed = batch if error is not None else self._failed_part(batch, response)
            if not failed:
                continue
            failures += 1
            if 0 <= self.maximum_retry_attempts < failures:
                self._give_up(failed, failures, error)
                continue
            if error is not None and self.bisect_on_error and len(failed) > 1:
                half = len(failed) // 2  # the first half first, so order holds
                work += [(failed[half:], failures), (failed[:half], failures)]
            else:
                work.append((failed, failures))
            self._stopping.wait(self.retry_delay)

    def _give_up(self, batch: list[Record], attempts: int, error: BaseException | None) -> None:
        destination = self.on_failure.arn if self.on_failure else "nowhere (no OnFailure destination)"
        logger.error("%s: %d record(s) failed %d time(s); sent to %s", self.name, len(batch), attempts, destination)
        if self.on_failure is not None:
            record = json.dumps(self._failure_record(batch, attempts, error))
            try:
                self.client("sqs").send_message(QueueUrl=self.on_failure.queue_url, MessageBody=record)
            except Exception:  # discarded, as Lambda discards what its error handling fails to keep: the rest goes on
                logger.exception("%s: cannot send to %s, dropped: %s", self.name, self.on_failure.arn, record)

    def _failure_record(self, batch: list[Record], attempts: int, error: BaseException | None) -> dict[str, Any]:
        request = {
            "requestId": str(uuid.uuid4()),
            "functionArn": self.function.arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": attempts,
        }
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if error is not None:
            response["functionError"] = "Unhandled"
        return {
            "version": "1.0",
            "timestamp": _iso(time.time()),
            "requestContext": request,
            "responseContext": response,
        }


@dataclass(eq=False, kw_only=True)
class DynamoDBStreamMapping(EventSourceMapping):
    """A stream: StartingPosition, BatchSize, FilterCriteria, ReportBatchItemFailures (retried from
    the first failed record, so order holds), BisectBatchOnFunctionError, MaximumRetryAttempts and
    OnFailure with AWS's DDBStreamBatchInfo."""

    kind = "DynamoDB"
    starting_position: str
    filters: list[dict[str, Any]] | None = None

    def _prepare(self) -> None:
        streams = self.client("dynamodbstreams")
        shards = streams.describe_stream(StreamArn=self.source_arn)["StreamDescription"]["Shards"]
        self._shard_id = shards[0]["ShardId"]  # moto keeps one shard per stream
        self._pending: deque[Record] = deque()
        self._iterator = streams.get_shard_iterator(
            StreamArn=self.source_arn, ShardId=self._shard_id, ShardIteratorType=self.starting_position
        )["ShardIterator"]

    def _fetch(self) -> list[Record]:
        # A full page may have more behind it: read on, or a page its filter all left out (a backlog
        # read after resume()) was taken for the stream's end, and the rest waited for the next write.
        while len(self._pending) < self.batch_size:
            answer = self.client("dynamodbstreams").get_records(ShardIterator=self._iterator, Limit=STREAM_PAGE)
            shaped = [self.event_record(record) for record in answer.get("Records", [])]
            kept = [record for record in shaped if matches_filters(self.filters, record)]
            # Moved on once shaped: what fails before the function is invoked is read again (Lambda retries it).
            self._iterator = answer["NextShardIterator"]
            self._pending.extend(kept)
            if len(shaped) < STREAM_PAGE:
                break
        return list(islice(self._pending, self.batch_size))  # left in the buffer until delivered

    def _delivered(self, batch: list[Record]) -> None:
        for _ in batch:
            self._pending.popleft()

    def wants(self, record: Record) -> bool:
        """Whether a record added to the stream (as GetRecords answers it) may be delivered: a mapping
        its FilterCriteria would leave it out of is not woken for it (moto_patches/arrivals.py), and
        reads and drops it with the next look a record they let through wakes: the stream's order and
        what is delivered are as if it had woken the mapping."""
        return self.filters is None or matches_filters(self.filters, self.event_record(record))

    def event_record(self, record: Mapping[str, Any]) -> Record:
        """A GetRecords record as Lambda hands it over (epoch seconds, the stream's ARN)."""
        dynamodb = dict(record["dynamodb"])
        if isinstance(created := dynamodb.get("ApproximateCreationDateTime"), datetime):
            dynamodb["ApproximateCreationDateTime"] = float(int(created.timestamp()))
        # moto's record has every other field a stream record has (eventID, eventVersion, awsRegion, ...).
        return {**record, "dynamodb": dict(sorted(dynamodb.items())), "eventSourceARN": self.source_arn}

    def _failed_part(self, batch: list[Record], response: Any) -> list[Record]:
        if not self.report_batch_item_failures:
            return []
        # From the first failed record on: the stream checkpoints before it and retries from it.
        failed = failed_identifiers(response, numbers := [r["dynamodb"]["SequenceNumber"] for r in batch])
        return next((batch[index:] for index, number in enumerate(numbers) if number in failed), [])

    def _failure_record(self, batch: list[Record], attempts: int, error: BaseException | None) -> dict[str, Any]:
        first, last = batch[0]["dynamodb"], batch[-1]["dynamodb"]
        info = {
            "shardId": self._shard_id,
            "startSequenceNumber": first["SequenceNumber"],
            "endSequenceNumber": last["SequenceNumber"],
            "approximateArrivalOfFirstRecord": _iso(first["ApproximateCreationDateTime"]),
            "approximateArrivalOfLastRecord": _iso(last["ApproximateCreationDateTime"]),
            "batchSize": len(batch),
            "streamArn": self.source_arn,
        }
        return super()._failure_record(batch, attempts, error) | {"DDBStreamBatchInfo": info}


@dataclass(eq=False, kw_only=True)
class SqsMapping(EventSourceMapping):
    """A queue: BatchSize, ReportBatchItemFailures (only successful messages are deleted). A failed
    message comes back after the queue's VisibilityTimeout, and moto moves it to the RedrivePolicy's
    DLQ after maxReceiveCount receives (measured: on ReceiveMessage).

    With `concurrency` above 1 (a ScalingConfig.MaximumConcurrency), up to that many batches run
    side by side, each in a thread of its own and in a container of the function of its own
    (LocalFunction.invoke's `container`), as Lambda's pollers invoke a queue's batches at once: a
    batch whose function waits (a webhook subscriber that hangs) holds up only its own messages.
    The poller receives only while a container is free: what it cannot run yet stays in the queue,
    not in flight. Otherwise, one batch at a time in the poller's thread."""

    kind = "SQS"
    queue_url: str
    concurrency: int = 1
    _delayed: int = field(default=0, init=False, repr=False)
    _only_in_flight: bool = field(default=False, init=False, repr=False)  # the last look's counts
    # Messages delayed or in flight -> when moto makes each visible (epoch s), as visible_again() was
    # told; those the mapping deletes leave it, the others once their deadline has passed.
    _due: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _due_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _received: list[Record] = field(default_factory=list, init=False, repr=False)  # the batch being gathered

    def __post_init__(self) -> None:
        super().__post_init__()
        self._containers = threading.Condition()  # held to change the two below
        self._free = list(reversed(range(self.concurrency)))  # containers with no batch; 0 taken first
        self._running = 0  # batches handed to a thread of their own and not ended

    def is_idle(self) -> bool:
        with self._containers:
            running = self._running
        return not running and super().is_idle()  # a batch's thread is counted before the poller is idle

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._containers:
            self._containers.notify_all()  # a poller waiting for a free container stops waiting
        super().stop(timeout)
        with self._containers:  # no handler runs once the stack has stopped
            if not self._containers.wait_for(lambda: not self._running, timeout):
                running, name = self._running, self.name
                logger.warning("%s: %d batch(es) still running after %.0f s; left behind", name, running, timeout)

    def _fetch(self) -> list[Record] | None:
        if self.concurrency > 1:  # every container busy: nothing received, the rest stays in the queue
            with self._containers:
                self._containers.wait_for(lambda: self._free or self._stopping.is_set())
            # Paused while it waited: nothing new is received (a batch being gathered goes on).
            if self._stopping.is_set() or (self.paused and not self._received):
                return None
        sqs, self._only_in_flight = self.client("sqs"), False
        if len(self._received) < self.batch_size:
            messages = sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=self.batch_size - len(self._received),  # at most 10 (build_mapping)
                WaitTimeSeconds=0,  # moto's long poll would wait while holding MOTO_LOCK
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            self._received += [self.event_record(message) for message in messages]
        if self._received:
            return list(self._received)
        # A message whose visibility timeout ends between the receive and this look is visible
        # here: not drained (moto moves one past maxReceiveCount to its DLQ on the next receive).
        names = [
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesDelayed",
        ]
        counts = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        in_flight, visible, self._delayed = (int(counts.get(name) or 0) for name in names)
        self._only_in_flight = bool(in_flight) and not visible
        return None if in_flight or visible else []  # delayed messages wait like a paused mapping's: drained

    def visible_again(self, message_id: str, visible_at: float) -> None:
        """A message of the queue was sent with a delay or received, or its visibility changed: moto
        makes it visible at `visible_at` (epoch seconds). The mapping looks now, so that one sleeping
        (drained, or until a later deadline) waits for it instead; its own receive is not a wake: its
        thread looks again once the batch is delivered."""
        with self._due_lock:
            self._due[message_id] = visible_at
        if not self.paused and threading.current_thread() is not self._thread:
            self._arrived.set()

    def _look_again_in(self) -> float | None:
        if self._drained and not self._delayed:
            return None
        if not self._drained and not self._only_in_flight:  # visible, not received (its timeout ended
            return POLL_INTERVAL  # since), or the look failed: polled
        # No wake comes when a message's delay or visibility timeout ends: the look is made then, as
        # moto said when it added or received the message or changed its visibility (a millisecond
        # on: moto's clock is in ms); a message nobody told the mapping of (received before the
        # stack registered it), polled. A deadline of a message another consumer deleted costs a look.
        now = time.time()
        with self._due_lock:
            self._due = {message: at for message, at in self._due.items() if at > now}
            return min(self._due.values()) - now + 0.001 if self._due else POLL_INTERVAL

    def _deliver(self, batch: list[Record]) -> None:
        self._received.clear()  # the invocation's now: what it does not delete comes back after the visibility timeout
        if self.concurrency == 1:
            self._invoke(batch, 0)
            return
        with self._containers:  # _fetch() waited for a free one
            container = self._free.pop()
            self._running += 1
        threading.Thread(
            target=self._run_batch, args=(batch, container), name=f"oms-local-{self.name}-{container}", daemon=True
        ).start()

    def _run_batch(self, batch: list[Record], container: int) -> None:
        """A batch's own thread: its invocation in `container`, which is free again after it."""
        try:
            self._invoke(batch, container)
        except Exception:  # DeleteMessageBatch failed: the batch comes back after the visibility timeout
            logger.exception("%s: delivered, not deleted", self.name)
        finally:
            with self._containers:
                self._free.append(container)
                self._running -= 1
                self._containers.notify_all()
            self.wake()  # looked at again: what this batch held may have been the queue's last

    def _invoke(self, batch: list[Record], container: int) -> None:
        response, error = self.function.try_invoke(self._event(batch), container=container)
        if error is not None:
            return  # nothing deleted: every message comes back after the visibility timeout
        keep = failed_identifiers(response, [r["messageId"] for r in batch]) if self.report_batch_item_failures else ()
        done = [
            {"Id": r["messageId"], "ReceiptHandle": r["receiptHandle"]} for r in batch if r["messageId"] not in keep
        ]
        if done:
            self.client("sqs").delete_message_batch(QueueUrl=self.queue_url, Entries=done)
            with self._due_lock:  # gone: their deadlines are no reason to look
                for entry in done:
                    self._due.pop(entry["Id"], None)

    def event_record(self, message: Mapping[str, Any]) -> Record:
        attributes = {
            name: {
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
                **({"stringValue": value["StringValue"]} if "StringValue" in value else {}),
                **({"binaryValue": base64.b64encode(value["BinaryValue"]).decode()} if "BinaryValue" in value else {}),
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        }
        record = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body", ""),
            "attributes": dict(message.get("Attributes") or {}),
            "messageAttributes": attributes,
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.source_arn,
            "awsRegion": REGION,
        }
        if message.get("MD5OfMessageAttributes"):
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        return record


@dataclass(eq=False, kw_only=True)
class AsynchronousMapping(EventSourceMapping):
    """A source that invokes its function asynchronously with one event (S3, EventBridge): retried per
    the function's EventInvokeConfig (MaximumRetryAttempts, default 2), then sent to its OnFailure
    destination, if any, as Lambda's invocation record: the event (requestPayload, replayable as it
    was) and the error (responsePayload), where a stream's says where its batch lies."""

    def _event(self, batch: list[Record]) -> dict[str, Any]:
        return batch[0]  # S3 and EventBridge invoke with one event, not a batch of records

    def _failure_record(self, batch: list[Record], attempts: int, error: BaseException | None) -> dict[str, Any]:
        record = super()._failure_record(batch, attempts, error)
        record["requestContext"].update(functionArn=f"{self.function.arn}:$LATEST", condition="RetriesExhausted")
        response = {"errorMessage": str(error), "errorType": type(error).__name__}
        if not isinstance(error, RuntimeFailure):  # the runtime's own (a timeout, an exit) carries no trace
            response["stackTrace"] = traceback.format_tb(error.__traceback__) if error else []
        return record | {"requestPayload": batch[0], "responsePayload": response}


@dataclass(eq=False, kw_only=True)
class S3NotificationMapping(AsynchronousMapping):
    """A bucket's Lambda notification: moto matches the events and key filters and builds the
    record, and its Lambda hook calls enqueue() instead (moto_patches/s3_notifications.py)."""

    kind = "S3"
    bucket: str
    notification: dict[str, Any]  # this mapping as a PutBucketNotificationConfiguration entry

    def __post_init__(self) -> None:
        super().__post_init__()
        self._queue: queue.Queue[Record] = queue.Queue()
        self._sequencer = count(1)

    def enqueue(self, event: Record) -> None:
        """Called by moto (holding MOTO_LOCK): fills in what moto leaves out, and only queues it."""
        for record in event.get("Records", []):
            record.setdefault("userIdentity", {"principalId": "AWS:LOCAL"})
            record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            request_ids = {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex}
            record.setdefault("responseElements", request_ids)
            s3_object = record.get("s3", {}).get("object", {})
            s3_object.setdefault("sequencer", f"{next(self._sequencer):016X}")
            if "key" in s3_object:  # URL-encoded as S3 does it: "a b/c.csv" -> "a+b/c.csv" (moto encodes "/")
                s3_object["key"] = quote_plus(unquote_plus(s3_object["key"]), safe="/")
        self._queue.put(event)
        self.wake()

    def _fetch(self) -> list[Record]:
        return [] if self._queue.empty() else [self._queue.get()]  # only this thread takes from it


@dataclass(eq=False, kw_only=True)
class ScheduleMapping(AsynchronousMapping):
    """A Schedule event: EventBridge's scheduled event every `period` seconds, the first a period
    after the stack starts."""

    kind = "Schedule"
    expression: str
    period: float  # seconds between runs

    def _prepare(self) -> None:
        self._due = time.monotonic() + self.period

    def _look_again_in(self) -> float:
        return max(0.0, self._due - time.monotonic())

    def _fetch(self) -> list[Record]:
        if (now := time.monotonic()) < self._due:
            return []
        self._due = now + self.period  # a period after this run starts: a slow run is not followed by a burst
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT_ID,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [self.source_arn],
            "detail": {},
        }
        return [event]


def schedule_period(expression: str, where: str) -> float:
    """Seconds between runs of a Schedule's `rate(...)`; EventSourceError naming `where` for what
    EventBridge refuses and for a `cron(...)`, whose uneven gaps (03:00 on weekdays: 288 periods of
    5 minutes, then 864) would make some of a scheduled function's numbered turns never come."""
    if expression.startswith("cron("):
        raise EventSourceError(
            f"{where}: Schedule {expression!r}: cron(...) is not emulated, and a scheduled function numbers its"
            " runs in its period (functions/schedule.py), which a cron's uneven gaps would skip: write rate(...)"
        )
    match = _RATE.match(expression)
    if match is None:
        raise EventSourceError(f"{where}: Schedule {expression!r} is not rate(N minute[s]|hour[s]|day[s])")
    amount, unit, plural = int(match[1]), match[2], match[3]
    if amount < 1 or (amount == 1) == bool(plural):
        raise EventSourceError(f"{where}: Schedule {expression!r}: AWS wants rate(1 {unit}) or rate(N {unit}s)")
    return float(amount * _RATE_SECONDS[unit])


def _local_period(function_logical_id: str, period: float) -> float:
    own_env, period = LOCAL_SCHEDULE_PERIODS.get(function_logical_id, ("", period))
    for variable in filter(None, (SCHEDULE_PERIOD_ENV, own_env)):
        if (override := os.environ.get(variable, "")).strip():
            # As every numeric setting is written (core.settings.number): not `1_0`, ` 30 `, nan or inf.
            period = settings.number(override) or 0.0
            if not period > 0:  # NaN and inf are refused by number(): their run was never due, silently
                raise EventSourceError(f"{variable} must be a positive number of seconds, got {override!r}")
    return period


def build_mapping(
    function_logical_id: str,
    name: str,
    event: Mapping[str, Any],
    function: LocalFunction,
    *,
    invoke_config: Mapping[str, Any] | None = None,
    resolve: Callable[[Any], Any],
    queue_url_for_arn: Callable[[str], str],
    client: Callable[[str], Any],
    retry_delay: float = RETRY_DELAY,
    batching_window_scale: float = 1.0,
) -> EventSourceMapping:
    """The emulation of the function's event `name` (Events[name]: its Type and Properties, checked by
    infra/local/supported.py); `batching_window_scale` multiplies its MaximumBatchingWindowInSeconds
    (0: a batch goes at once)."""
    kind, where = event["Type"], f"{function_logical_id}.Events.{name} ({event['Type']})"
    props = {key: resolve(value) for key, value in (event.get("Properties") or {}).items()}

    # S3 and EventBridge invoke asynchronously: retried and failed over per the function's
    # EventInvokeConfig (`invoke_config`); a stream per its own properties (SQS: by the queue's redrive policy).
    asynchronous = kind in ("S3", "Schedule")
    config = {key: resolve(value) for key, value in (invoke_config or {}).items()} if asynchronous else props
    destination = str(((config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination") or "")
    common: dict[str, Any] = {
        "name": f"{function_logical_id}.{name}",
        "function_logical_id": function_logical_id,
        "function": function,
        "client": client,
        "retry_delay": retry_delay,
        "batching_window": float(props.get("MaximumBatchingWindowInSeconds") or 0) * batching_window_scale,
        "report_batch_item_failures": "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
        "maximum_retry_attempts": int(config.get("MaximumRetryAttempts", ASYNC_RETRIES if asynchronous else -1)),
        "on_failure": OnFailure(destination, queue_url_for_arn(destination)) if destination else None,
    }
    if kind == "S3":
        rules = [
            {"Name": str(rule["Name"]).lower(), "Value": str(rule["Value"])}
            for rule in ((props.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
        ]
        events = [props["Events"]] if isinstance(props["Events"], str) else list(props["Events"])
        label = f"s3://{props['Bucket']} {','.join(events)}" + "".join(f" {r['Name']}={r['Value']}" for r in rules)
        notification: dict[str, Any] = {"Id": common["name"], "LambdaFunctionArn": function.arn, "Events": events}
        if rules:
            notification["Filter"] = {"Key": {"FilterRules": rules}}
        return S3NotificationMapping(
            source_arn=f"arn:aws:s3:::{props['Bucket']}",
            source_label=label,
            bucket=props["Bucket"],
            notification=notification,
            **common,
        )
    if kind == "Schedule":
        period = _local_period(function_logical_id, schedule_period(props["Schedule"], where))
        return ScheduleMapping(
            source_arn=f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{function_logical_id}-{name}",
            source_label=f"{props['Schedule']} (every {period:g} s)",
            expression=props["Schedule"],
            period=period,
            **common,
        )
    if kind == "SQS":
        queue_arn, batch_size = str(props["Queue"]), int(props.get("BatchSize", 10))
        # Side by side only where the template caps it: elsewhere one batch at a time, as before.
        maximum = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        if not 1 <= batch_size <= 10:  # AWS takes more with a window; one receive is 10
            raise EventSourceError(f"{where}: BatchSize {batch_size} is not emulated (1 to 10)")
        return SqsMapping(
            source_arn=queue_arn,
            source_label=queue_arn.rsplit(":", 1)[-1],
            queue_url=queue_url_for_arn(queue_arn),
            batch_size=batch_size,
            concurrency=min(int(maximum), SQS_LOCAL_CONCURRENCY) if maximum else 1,
            **common,
        )
    # DynamoDB: Template.load refused any other type (supported.py's ByType).
    stream, filters = str(props["Stream"]), compile_filters(props.get("FilterCriteria"), where)
    table = stream.split(":table/", 1)[-1].split("/stream/", 1)[0]
    return DynamoDBStreamMapping(
        source_arn=stream,
        source_label=f"{table} stream" + (f" {json.dumps(filters, separators=(',', ':'))}" if filters else ""),
        batch_size=int(props.get("BatchSize", 100)),
        filters=filters,
        starting_position=str(props["StartingPosition"]),
        bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
        **common,
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
