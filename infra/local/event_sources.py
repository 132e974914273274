"""The template's event source mappings, emulated with pollers (moto's own are unusable locally).

moto runs an SQS → Lambda mapping synchronously inside SendMessage and ignores batchItemFailures;
its stream mapping ignores StartingPosition. Here each mapping is a thread that polls its source
through the ordinary APIs (dynamodbstreams GetRecords, sqs ReceiveMessage), builds the event shape
Lambda builds, invokes the in-process handler *outside* MOTO_LOCK, and applies what Lambda applies
to the answer:

- DynamoDB streams: StartingPosition, BatchSize, FilterCriteria, ReportBatchItemFailures (retry from
  the first failed record, order kept), BisectBatchOnFunctionError, MaximumRetryAttempts and the
  OnFailure destination (an SQS queue) with AWS's DDBStreamBatchInfo record;
- SQS: BatchSize, FilterCriteria (filtered-out messages are deleted, as Lambda does),
  ReportBatchItemFailures (only successful messages are deleted); failed messages come back after
  the queue's VisibilityTimeout and moto moves them to the RedrivePolicy's DLQ after
  maxReceiveCount receives (measured: moto does that on ReceiveMessage);
- S3 notifications: delivered by moto itself (it matches events and prefix/suffix rules); its
  Lambda hook is redirected into a queue and a thread invokes the function asynchronously, with
  the function's EventInvokeConfig: MaximumRetryAttempts (default 2) and the OnFailure
  destination (an SQS queue) with AWS's asynchronous-invocation record;
- Schedule events: `rate(N unit)` invokes the function every period with EventBridge's scheduled
  event, the first one period after the stack starts (OMS_LOCAL_SCHEDULE_SECONDS replaces every
  schedule's period, e.g. 10 to see a 5-minute job run while you watch; the jeopardy scan runs every
  OMS_JEOPARDY_SCAN_SECONDS, default 30, over both); `cron(...)` is not
  emulated, and a failed invocation is logged, not retried (the next period runs it again).

Local differences, on purpose: MaximumBatchingWindowInSeconds is not waited for (a batch goes as
soon as records are there); retries back off a fixed short delay (`retry_delay`, 0.2 s) instead of
AWS's exponential backoff; MaximumRecordAgeInSeconds, ParallelizationFactor, TumblingWindow and
ScalingConfig are ignored, and so is an asynchronous event's MaximumEventAgeInSeconds; one thread
per mapping (one shard, one batch at a time).
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
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from infra.local.lambdas import LocalFunction
from infra.local.moto_patches import lock
from infra.local.template import ACCOUNT_ID, REGION, EventSourceSpec

logger = logging.getLogger("infra.local.events")

POLL_INTERVAL = 0.1  # seconds between polls of an empty source
RETRY_DELAY = 0.2  # seconds between retries of a failed batch (AWS backs off exponentially)
ASYNC_RETRIES = 2  # Lambda retries an asynchronous invocation (an S3 notification) twice by default

EMULATED_TYPES = ("DynamoDB", "SQS", "S3", "Schedule")
SCHEDULE_PERIOD_ENV = "OMS_LOCAL_SCHEDULE_SECONDS"
# A schedule that runs more often locally than on AWS, so a developer sees it work: the function's
# own variable, then OMS_LOCAL_SCHEDULE_SECONDS, then this default (the jeopardy scan: every 30 s
# instead of every 5 minutes).
LOCAL_SCHEDULE_PERIODS: dict[str, tuple[str, float]] = {"JeopardyScanFunction": ("OMS_JEOPARDY_SCAN_SECONDS", 30.0)}
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class EventSourceError(ValueError):
    """An event source the local runtime cannot emulate faithfully: startup fails with this."""


# --- FilterCriteria ---------------------------------------------------------------------------------
# The EventBridge pattern subset: nested keys and lists of exact values. Anything else (prefix,
# anything-but, numeric, exists, ...) fails startup rather than silently matching differently.


def compile_filters(criteria: Any, where: str) -> list[dict[str, Any]] | None:
    """FilterCriteria ({"Filters": [{"Pattern": "<json>"}]}) as patterns; None when absent."""
    if not criteria:
        return None
    filters = criteria.get("Filters") if isinstance(criteria, dict) else None
    if not isinstance(filters, list) or not filters:
        raise EventSourceError(f"{where}: FilterCriteria needs a non-empty Filters list")
    patterns = []
    for index, entry in enumerate(filters):
        raw = entry.get("Pattern") if isinstance(entry, dict) else None
        try:
            pattern = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as error:
            raise EventSourceError(f"{where}: Filters[{index}].Pattern is not JSON: {error}") from None
        if not isinstance(pattern, dict) or not pattern:
            raise EventSourceError(f"{where}: Filters[{index}].Pattern must be a non-empty JSON object")
        _check_pattern(pattern, f"{where}: Filters[{index}].Pattern")
        patterns.append(pattern)
    return patterns


def _check_pattern(pattern: Mapping[str, Any], where: str) -> None:
    for key, value in pattern.items():
        if isinstance(value, dict):
            if not value:
                raise EventSourceError(f"{where}: {key!r} has an empty object")
            _check_pattern(value, f"{where}.{key}")
        elif isinstance(value, list):
            if not value:
                raise EventSourceError(f"{where}: {key!r} has an empty list (it would match nothing)")
            for item in value:
                if isinstance(item, dict) and set(item) == {"numeric"} and _numeric_rule(item["numeric"]):
                    continue
                if isinstance(item, dict | list):
                    raise EventSourceError(
                        f"{where}: {key!r} uses {json.dumps(item)}, which the local runtime does not support "
                        "(only exact values: lists of strings, numbers, booleans or null; and numeric ranges)"
                    )
        else:
            raise EventSourceError(f"{where}: {key!r} must be a list of values or an object, got {json.dumps(value)}")


_COMPARE = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric_rule(rule: Any) -> list[tuple[str, float]] | None:
    """Lambda's numeric matching, `{"numeric": [">", 0]}` or `[">=", 1, "<", 5]`: (operator,
    number) pairs, all of which must hold; None when malformed."""
    if not isinstance(rule, list) or not rule or len(rule) % 2 or len(rule) > 4:
        return None
    pairs = list(zip(rule[::2], rule[1::2], strict=True))
    for operator, number in pairs:
        if operator not in _COMPARE or isinstance(number, bool) or not isinstance(number, int | float):
            return None
    return pairs


def _numeric_matches(rule: list[Any], candidate: Any) -> bool:
    if isinstance(candidate, bool):
        return False
    try:  # DynamoDB numbers are strings ({"N": "5"})
        value = float(candidate)
    except (TypeError, ValueError):
        return False
    return all(_COMPARE[operator](value, float(number)) for operator, number in _numeric_rule(rule) or [])


def matches_filters(patterns: Sequence[Mapping[str, Any]] | None, record: Mapping[str, Any]) -> bool:
    """Filters are ORed; within a pattern every key must match."""
    return patterns is None or any(_matches(pattern, record) for pattern in patterns)


def _matches(pattern: Mapping[str, Any], value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, expected in pattern.items():
        if key not in value:
            return False
        actual = value[key]
        if isinstance(expected, dict):
            if key == "body" and isinstance(actual, str):  # SQS: a JSON body is matched as JSON
                try:
                    actual = json.loads(actual)
                except ValueError:
                    return False
            if not _matches(expected, actual):
                return False
        elif not _value_matches(expected, actual):
            return False
    return True


def _value_matches(expected: Sequence[Any], actual: Any) -> bool:
    candidates = actual if isinstance(actual, list) else [actual]  # an array matches if any element does
    for candidate in candidates:
        for wanted in expected:
            if isinstance(wanted, dict):  # a numeric range (the only rule _check_pattern lets through)
                if _numeric_matches(wanted["numeric"], candidate):
                    return True
                continue
            if candidate == wanted and type(candidate) is type(wanted):
                return True
            if isinstance(wanted, int | float) and not isinstance(wanted, bool) and isinstance(candidate, str):
                try:  # DynamoDB numbers are strings ({"N": "5"}); a numeric pattern compares numerically
                    if float(candidate) == float(wanted):
                        return True
                except ValueError:
                    pass
    return False


# --- Batch responses --------------------------------------------------------------------------------


def failed_identifiers(response: Any, identifiers: Sequence[str]) -> set[str]:
    """For ReportBatchItemFailures: the identifiers the function reported as failed. An empty or
    null answer is a success; a malformed one (or an identifier not in the batch) fails the whole
    batch, as Lambda does."""
    if response is None:
        return set()
    if not isinstance(response, dict):
        return set(identifiers)
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return set(identifiers)
    failed = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in identifiers:
            return set(identifiers)
        failed.add(identifier)
    return failed


def first_failed_index(response: Any, identifiers: Sequence[str]) -> int | None:
    """None when the batch succeeded, else the position of the first failed record (a stream
    checkpoints before it and retries from it)."""
    failed = failed_identifiers(response, identifiers)
    if not failed:
        return None
    return min(index for index, identifier in enumerate(identifiers) if identifier in failed)


# --- The mappings -----------------------------------------------------------------------------------

ClientFactory = Callable[[str], Any]


class EventSourceMapping:
    """One emulated mapping: a thread that polls its source and invokes its function."""

    kind = ""

    def __init__(
        self,
        *,
        name: str,
        function_logical_id: str,
        function: LocalFunction,
        source_arn: str,
        batch_size: int,
        filters: list[dict[str, Any]] | None,
        report_batch_item_failures: bool,
        client: ClientFactory,
        enabled: bool = True,
        poll_interval: float = POLL_INTERVAL,
        retry_delay: float = RETRY_DELAY,
    ):
        self.name = name
        self.function_logical_id = function_logical_id
        self.function = function
        self.source_arn = source_arn
        self.batch_size = batch_size
        self.filters = filters
        self.report_batch_item_failures = report_batch_item_failures
        self.enabled = enabled
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.stats = {"invocations": 0, "failed_invocations": 0, "records": 0, "filtered_out": 0, "discarded": 0}
        self._client = client
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._busy = False
        self._last_empty_poll = float("-inf")
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.source_arn}>"

    @property
    def source_label(self) -> str:
        """The source, short: a table's stream, a queue's name, a bucket."""
        return self.source_arn.rsplit(":", 1)[-1]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "function": self.function_logical_id,
            "source": self.source_arn,
            "batch_size": self.batch_size,
            "filters": self.filters,
            "report_batch_item_failures": self.report_batch_item_failures,
            "enabled": self.enabled,
            "paused": self.paused,
            "stats": dict(self.stats),
        }

    # --- Lifecycle ---------------------------------------------------------------------------
    def start(self, paused: bool = False) -> None:
        if paused:
            self._paused.set()
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"oms-local-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s: still delivering after %.0f s; left behind", self.name, timeout)
            self._thread = None

    def pause(self) -> None:
        """No new batches until resume() (a batch being delivered finishes, retries included)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def is_idle_since(self, moment: float) -> bool:
        """Nothing to deliver: disabled or paused, or a poll that started after `moment` found nothing."""
        if self._busy:
            return False
        return self._thread is None or self.paused or self._last_empty_poll >= moment

    # --- The loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._prepare()
        except Exception:
            logger.exception("%s: cannot start polling %s", self.name, self.source_arn)
            self._thread = None
            return
        while not self._stopping.is_set():
            if self.paused:
                self._stopping.wait(self.poll_interval)
                continue
            started = time.monotonic()
            self._busy = True
            try:
                outcome = self._poll_once()
            except Exception:
                if self._stopping.is_set():
                    break
                logger.exception("%s: polling failed", self.name)
                outcome = "waiting"
            finally:
                self._busy = False
            if outcome == "empty":
                self._last_empty_poll = started
            if outcome != "work":
                self._stopping.wait(self.poll_interval)

    def _prepare(self) -> None:
        """Runs in the thread before the first poll."""

    def _poll_once(self) -> str:
        """'work' (delivered something; poll again at once), 'empty' (nothing to do) or 'waiting'
        (nothing now, but the source is not drained: e.g. messages in flight)."""
        raise NotImplementedError

    def _invoke(self, event: dict[str, Any]) -> tuple[Any, BaseException | None]:
        self.stats["invocations"] += 1
        try:
            return self.function.invoke(event), None
        except Exception as error:
            self.stats["failed_invocations"] += 1
            logger.warning("%s: %s raised %s: %s", self.name, self.function.name, type(error).__name__, error)
            logger.debug("%s traceback", self.name, exc_info=error)
            return None, error


@dataclass
class OnFailure:
    """An OnFailure destination: an SQS queue (the only kind emulated)."""

    arn: str
    queue_url: str


class DynamoDBStreamMapping(EventSourceMapping):
    kind = "DynamoDB"

    def __init__(
        self,
        *,
        starting_position: str,
        bisect_on_error: bool = False,
        maximum_retry_attempts: int = -1,
        on_failure: OnFailure | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.starting_position = starting_position
        self.bisect_on_error = bisect_on_error
        self.maximum_retry_attempts = maximum_retry_attempts
        self.on_failure = on_failure
        self.stats["sent_to_on_failure"] = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._iterator: str | None = None
        self._shard_id = ""

    @property
    def source_label(self) -> str:
        table = self.source_arn.split(":table/", 1)[-1].split("/stream/", 1)[0]
        filters = f" {json.dumps(self.filters, separators=(',', ':'))}" if self.filters else ""
        return f"{table} stream{filters}"

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "starting_position": self.starting_position,
            "bisect_on_error": self.bisect_on_error,
            "maximum_retry_attempts": self.maximum_retry_attempts,
            "on_failure": self.on_failure.arn if self.on_failure else None,
        }

    def _prepare(self) -> None:
        streams = self._client("dynamodbstreams")
        shards = streams.describe_stream(StreamArn=self.source_arn)["StreamDescription"]["Shards"]
        if not shards:
            raise EventSourceError(f"{self.source_arn} has no shard")
        self._shard_id = shards[0]["ShardId"]  # moto keeps one shard per stream
        self._iterator = streams.get_shard_iterator(
            StreamArn=self.source_arn,
            ShardId=self._shard_id,
            ShardIteratorType="TRIM_HORIZON" if self.starting_position == "TRIM_HORIZON" else "LATEST",
        )["ShardIterator"]

    def _poll_once(self) -> str:
        if not self._pending:
            self._fetch()
        if not self._pending:
            return "empty"
        batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        self._deliver(batch)
        return "work"

    def _fetch(self) -> None:
        streams = self._client("dynamodbstreams")
        answer = streams.get_records(ShardIterator=self._iterator, Limit=1000)
        _forget_shard_iterator(self._iterator)
        self._iterator = answer["NextShardIterator"]
        for record in answer.get("Records", []):
            event_record = self.event_record(record)
            if matches_filters(self.filters, event_record):
                self._pending.append(event_record)
            else:
                self.stats["filtered_out"] += 1

    def event_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A GetRecords record as Lambda hands it over (epoch seconds, the stream's ARN)."""
        dynamodb = dict(record["dynamodb"])
        created = dynamodb.get("ApproximateCreationDateTime")
        if isinstance(created, datetime):
            dynamodb["ApproximateCreationDateTime"] = float(int(created.timestamp()))
        event_record = {
            "eventID": record.get("eventID") or uuid.uuid4().hex,
            "eventName": record["eventName"],
            "eventVersion": record.get("eventVersion", "1.1"),
            "eventSource": "aws:dynamodb",
            "awsRegion": record.get("awsRegion", REGION),
            "dynamodb": {key: dynamodb[key] for key in sorted(dynamodb)},
            "eventSourceARN": self.source_arn,
        }
        if "userIdentity" in record:
            event_record["userIdentity"] = record["userIdentity"]
        return event_record

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        """One batch until it succeeds or its retries run out: partial failures retry from the first
        failed record; an error bisects the batch (when enabled), first half first, so order holds."""
        work: list[tuple[list[dict[str, Any]], int]] = [(records, 0)]
        while work and not self._stopping.is_set():
            batch, failures = work.pop()
            self.stats["records"] += len(batch)
            response, error = self._invoke({"Records": batch})
            if error is None:
                if not self.report_batch_item_failures:
                    continue
                index = first_failed_index(response, [r["dynamodb"]["SequenceNumber"] for r in batch])
                if index is None:
                    continue
                self.stats["failed_invocations"] += 1
                batch = batch[index:]
            failures += 1
            if 0 <= self.maximum_retry_attempts < failures:
                self._give_up(batch, failures, error)
                continue
            if error is not None and self.bisect_on_error and len(batch) > 1:
                half = len(batch) // 2
                work.append((batch[half:], failures))
                work.append((batch[:half], failures))
            else:
                work.append((batch, failures))
            self._stopping.wait(self.retry_delay)

    def _give_up(self, batch: list[dict[str, Any]], attempts: int, error: BaseException | None) -> None:
        self.stats["discarded"] += len(batch)
        first, last = batch[0]["dynamodb"], batch[-1]["dynamodb"]
        logger.warning(
            "%s: %d record(s) %s..%s failed %d time(s); %s",
            self.name,
            len(batch),
            first["SequenceNumber"],
            last["SequenceNumber"],
            attempts,
            f"sent to {self.on_failure.arn}" if self.on_failure else "discarded (no OnFailure destination)",
        )
        if self.on_failure is None:
            return
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if error is not None:
            response_context["functionError"] = "Unhandled"
        message = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.function.arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempts,
            },
            "responseContext": response_context,
            "version": "1.0",
            "timestamp": _iso_now(),
            "DDBStreamBatchInfo": {
                "shardId": self._shard_id,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(first.get("ApproximateCreationDateTime")),
                "approximateArrivalOfLastRecord": _iso(last.get("ApproximateCreationDateTime")),
                "batchSize": len(batch),
                "streamArn": self.source_arn,
            },
        }
        self._client("sqs").send_message(QueueUrl=self.on_failure.queue_url, MessageBody=json.dumps(message))
        self.stats["sent_to_on_failure"] += 1


class SqsMapping(EventSourceMapping):
    kind = "SQS"

    def __init__(self, *, queue_url: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.queue_url = queue_url

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "queue_url": self.queue_url}

    def _poll_once(self) -> str:
        sqs = self._client("sqs")
        messages: list[dict[str, Any]] = []
        while len(messages) < self.batch_size:
            wanted = min(10, self.batch_size - len(messages))
            received = sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=0,  # moto's long poll would wait while holding MOTO_LOCK
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(received)
            if len(received) < wanted:
                break
        if not messages:
            attributes = sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
            return "waiting" if in_flight else "empty"

        records = [self.event_record(message) for message in messages]
        matched = [record for record in records if matches_filters(self.filters, record)]
        filtered = [record for record in records if record not in matched]
        if filtered:  # Lambda deletes the messages its filters drop
            self.stats["filtered_out"] += len(filtered)
            self._delete(filtered)
        if not matched:
            return "work"
        self.stats["records"] += len(matched)
        response, error = self._invoke({"Records": matched})
        if error is not None:
            return "work"  # nothing deleted: every message comes back after the visibility timeout
        keep: set[str] = set()
        if self.report_batch_item_failures:
            keep = failed_identifiers(response, [record["messageId"] for record in matched])
            if keep:
                self.stats["failed_invocations"] += 1
        self._delete([record for record in matched if record["messageId"] not in keep])
        return "work"

    def _delete(self, records: list[dict[str, Any]]) -> None:
        sqs = self._client("sqs")
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )

    def event_record(self, message: Mapping[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body", ""),
            "attributes": dict(message.get("Attributes") or {}),
            "messageAttributes": {
                name: _lambda_message_attribute(value)
                for name, value in (message.get("MessageAttributes") or {}).items()
            },
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.source_arn,
            "awsRegion": REGION,
        }
        if message.get("MD5OfMessageAttributes"):
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        return record


class S3NotificationMapping(EventSourceMapping):
    """A bucket's Lambda notification. moto matches the events and key filters and builds the
    record; its Lambda hook is redirected here (moto_patches/s3_notifications.py), and this thread invokes the
    function asynchronously, retrying as Lambda does for asynchronous invocations (twice unless
    the function's EventInvokeConfig says otherwise); an event that still fails goes to the OnFailure
    destination, if there is one, as AWS's asynchronous-invocation record."""

    kind = "S3"

    def __init__(
        self,
        *,
        bucket: str,
        events: list[str],
        key_filters: list[dict[str, str]],
        maximum_retry_attempts: int = ASYNC_RETRIES,
        on_failure: OnFailure | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("batch_size", 1)
        kwargs.setdefault("filters", None)
        kwargs.setdefault("report_batch_item_failures", False)
        super().__init__(**kwargs)
        self.bucket = bucket
        self.events = events
        self.key_filters = key_filters
        self.maximum_retry_attempts = maximum_retry_attempts
        self.on_failure = on_failure
        self.stats["sent_to_on_failure"] = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._sequencer = count(1)

    @property
    def source_label(self) -> str:
        rules = "".join(f" {rule['Name']}={rule['Value']}" for rule in self.key_filters)
        return f"s3://{self.bucket} {','.join(self.events)}{rules}"

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "bucket": self.bucket,
            "events": self.events,
            "key_filters": self.key_filters,
            "maximum_retry_attempts": self.maximum_retry_attempts,
            "on_failure": self.on_failure.arn if self.on_failure else None,
        }

    def notification_configuration(self) -> dict[str, Any]:
        """This mapping as an S3 PutBucketNotificationConfiguration entry."""
        entry: dict[str, Any] = {"Id": self.name, "LambdaFunctionArn": self.function.arn, "Events": self.events}
        if self.key_filters:
            entry["Filter"] = {"Key": {"FilterRules": self.key_filters}}
        return entry

    def enqueue(self, event: dict[str, Any]) -> None:
        """Called by moto (holding MOTO_LOCK): only queue it."""
        for record in event.get("Records", []):
            record.setdefault("userIdentity", {"principalId": "AWS:LOCAL"})
            record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            record.setdefault(
                "responseElements",
                {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex},
            )
            s3_object = record.get("s3", {}).get("object", {})
            s3_object.setdefault("sequencer", f"{next(self._sequencer):016X}")
            if "key" in s3_object:  # URL-encoded as S3 does it: "a b/c.csv" -> "a+b/c.csv" (moto encodes "/")
                s3_object["key"] = quote_plus(unquote_plus(s3_object["key"]), safe="/")
        self._queue.put(event)

    def _poll_once(self) -> str:
        try:
            event = self._queue.get_nowait()
        except queue.Empty:
            return "empty"
        self.stats["records"] += len(event.get("Records", []))
        for attempt in range(self.maximum_retry_attempts + 1):
            _, error = self._invoke(event)
            if error is None:
                break
            if attempt == self.maximum_retry_attempts:
                self._give_up(event, attempt + 1, error)
            elif self._stopping.wait(self.retry_delay):
                break
        return "work"

    def _give_up(self, event: dict[str, Any], attempts: int, error: BaseException) -> None:
        self.stats["discarded"] += 1
        logger.error(
            "%s: event for %s failed %d time(s); %s",
            self.name,
            self.bucket,
            attempts,
            f"sent to {self.on_failure.arn}" if self.on_failure else "dropped (no OnFailure destination)",
        )
        if self.on_failure is None:
            return
        message = {
            "version": "1.0",
            "timestamp": _iso_now(),
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"{self.function.arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {
                "errorMessage": str(error),
                "errorType": type(error).__name__,
                "stackTrace": traceback.format_tb(error.__traceback__),
            },
        }
        self._client("sqs").send_message(QueueUrl=self.on_failure.queue_url, MessageBody=json.dumps(message))
        self.stats["sent_to_on_failure"] += 1


class ScheduleMapping(EventSourceMapping):
    """A Schedule event: the function invoked every `period` seconds, asynchronously as EventBridge
    does, with EventBridge's scheduled-event shape."""

    kind = "Schedule"

    def __init__(self, *, expression: str, period: float, **kwargs: Any):
        kwargs.setdefault("batch_size", 1)
        kwargs.setdefault("filters", None)
        kwargs.setdefault("report_batch_item_failures", False)
        super().__init__(**kwargs)
        self.expression = expression
        self.period = period
        self._due = float("inf")

    @property
    def source_label(self) -> str:
        return f"{self.expression} (every {self.period:g} s)"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "schedule": self.expression, "period_seconds": self.period}

    def _prepare(self) -> None:
        self._due = time.monotonic() + self.period

    def _poll_once(self) -> str:
        now = time.monotonic()
        if now < self._due:
            return "empty"
        # The next run is a period after this one starts: a slow run is not followed by a burst.
        self._due = now + self.period
        self.stats["records"] += 1
        self._invoke(
            {
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
        )
        return "empty"


def schedule_period(expression: str, where: str) -> float | None:
    """Seconds between runs of a `rate(...)` expression; None for `cron(...)` (not emulated)."""
    if expression.startswith("cron("):
        return None
    match = _RATE.match(expression)
    if match is None:
        raise EventSourceError(f"{where}: Schedule {expression!r} is not rate(N minute[s]|hour[s]|day[s]) or cron(...)")
    amount, unit = int(match.group(1)), match.group(2).rstrip("s")
    if amount < 1 or (amount == 1) != (match.group(2) == unit):
        raise EventSourceError(f"{where}: Schedule {expression!r}: AWS wants rate(1 {unit}) or rate(N {unit}s)")
    return float(amount * _RATE_SECONDS[unit])


# --- Building mappings from the template ------------------------------------------------------------


@dataclass
class MappingContext:
    """What building a mapping needs from the stack."""

    resolve: Callable[[Any], Any]  # the template's intrinsics, with the stack's refs and atts
    queue_url_for_arn: Callable[[str], str]
    client: ClientFactory
    poll_interval: float = POLL_INTERVAL
    retry_delay: float = RETRY_DELAY


def build_mapping(spec: EventSourceSpec, function: LocalFunction, context: MappingContext) -> EventSourceMapping | None:
    """The emulation of one event source, or None (with a warning) for a type not emulated."""
    where = f"{spec.function_logical_id}.Events.{spec.name} ({spec.type})"
    props = spec.properties
    if spec.type not in EMULATED_TYPES:
        logger.warning("%s: event type not emulated locally; it will not fire", where)
        return None
    common: dict[str, Any] = {
        "name": f"{spec.function_logical_id}.{spec.name}",
        "function_logical_id": spec.function_logical_id,
        "function": function,
        "client": context.client,
        "enabled": bool(context.resolve(props.get("Enabled", True))),
        "poll_interval": context.poll_interval,
        "retry_delay": context.retry_delay,
    }
    if spec.type == "S3":
        return _build_s3(spec, where, common, context)
    if spec.type == "Schedule":
        return _build_schedule(spec, where, common, context)
    response_types = context.resolve(props.get("FunctionResponseTypes") or [])
    unknown = set(response_types) - {"ReportBatchItemFailures"}
    if unknown:
        raise EventSourceError(f"{where}: FunctionResponseTypes {sorted(unknown)} not supported")
    common["filters"] = compile_filters(context.resolve(props.get("FilterCriteria")), where)
    common["report_batch_item_failures"] = "ReportBatchItemFailures" in response_types
    if spec.type == "SQS":
        queue_arn = str(context.resolve(props["Queue"]))
        batch_size = int(context.resolve(props.get("BatchSize", 10)))
        if not 1 <= batch_size <= 10000:
            raise EventSourceError(f"{where}: BatchSize {batch_size} is outside 1..10000")
        return SqsMapping(
            source_arn=queue_arn,
            queue_url=context.queue_url_for_arn(queue_arn),
            batch_size=batch_size,
            **common,
        )
    # DynamoDB
    stream_arn = context.resolve(props.get("Stream"))
    if not isinstance(stream_arn, str) or "/stream/" not in stream_arn:
        raise EventSourceError(f"{where}: Stream must be a table's StreamArn, got {stream_arn!r}")
    position = str(context.resolve(props.get("StartingPosition", "")))
    if position not in ("TRIM_HORIZON", "LATEST"):
        raise EventSourceError(f"{where}: StartingPosition must be TRIM_HORIZON or LATEST, got {position!r}")
    batch_size = int(context.resolve(props.get("BatchSize", 100)))
    if not 1 <= batch_size <= 10000:
        raise EventSourceError(f"{where}: BatchSize {batch_size} is outside 1..10000")
    return DynamoDBStreamMapping(
        source_arn=stream_arn,
        batch_size=batch_size,
        starting_position=position,
        bisect_on_error=bool(context.resolve(props.get("BisectBatchOnFunctionError", False))),
        maximum_retry_attempts=int(context.resolve(props.get("MaximumRetryAttempts", -1))),
        on_failure=_on_failure(props, where, context),
        **common,
    )


def _build_schedule(
    spec: EventSourceSpec, where: str, common: dict[str, Any], context: MappingContext
) -> ScheduleMapping | None:
    props = spec.properties
    expression = str(context.resolve(props.get("Schedule", "")))
    period = schedule_period(expression, where)
    if period is None:
        logger.warning("%s: %s is not emulated locally (rate(...) is); it will not fire", where, expression)
        return None
    own_env, local_default = LOCAL_SCHEDULE_PERIODS.get(spec.function_logical_id, ("", None))
    if local_default is not None:
        period = local_default
    for variable in (SCHEDULE_PERIOD_ENV, own_env):
        override = os.environ.get(variable, "").strip() if variable else ""
        if override:
            try:
                period = float(override)
            except ValueError:
                period = 0
            if period <= 0:
                raise EventSourceError(f"{variable} must be a positive number of seconds, got {override!r}")
    if str(context.resolve(props.get("State", "ENABLED"))).upper() == "DISABLED":
        common["enabled"] = False
    return ScheduleMapping(
        source_arn=f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{spec.function_logical_id}-{spec.name}",
        expression=expression,
        period=period,
        **common,
    )


def _on_failure(props: Mapping[str, Any], where: str, context: MappingContext) -> OnFailure | None:
    destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    if destination is None:
        return None
    arn = str(context.resolve(destination))
    if ":sqs:" not in arn:
        raise EventSourceError(f"{where}: OnFailure destination {arn} is not an SQS queue (the only kind emulated)")
    return OnFailure(arn=arn, queue_url=context.queue_url_for_arn(arn))


def _build_s3(
    spec: EventSourceSpec, where: str, common: dict[str, Any], context: MappingContext
) -> S3NotificationMapping:
    props = spec.properties
    bucket = context.resolve(props.get("Bucket"))
    if not isinstance(bucket, str) or not bucket:
        raise EventSourceError(f"{where}: Bucket must be !Ref of a bucket of this template")
    events = context.resolve(props.get("Events"))
    events = [events] if isinstance(events, str) else list(events or [])
    if not events:
        raise EventSourceError(f"{where}: Events is required")
    invoke_config = spec.invoke_config
    retries = int(context.resolve(invoke_config.get("MaximumRetryAttempts", ASYNC_RETRIES)))
    if not 0 <= retries <= ASYNC_RETRIES:
        raise EventSourceError(f"{where}: EventInvokeConfig MaximumRetryAttempts {retries} is outside 0..2")
    return S3NotificationMapping(
        source_arn=f"arn:aws:s3:::{bucket}",
        bucket=bucket,
        events=events,
        key_filters=s3_key_rules(context.resolve(props.get("Filter")), where),
        maximum_retry_attempts=retries,
        on_failure=_on_failure(invoke_config, f"{where} EventInvokeConfig", context),
        **common,
    )


def s3_key_rules(filter_: Any, where: str) -> list[dict[str, str]]:
    """CloudFormation's Filter: {S3Key: {Rules: [{Name, Value}]}} as S3's FilterRules."""
    if not filter_:
        return []
    rules = ((filter_ or {}).get("S3Key") or {}).get("Rules") or []
    result = []
    for rule in rules:
        name = str(rule.get("Name", "")).lower()
        if name not in ("prefix", "suffix"):
            raise EventSourceError(f"{where}: S3Key rule name must be prefix or suffix, got {rule.get('Name')!r}")
        result.append({"Name": name, "Value": str(rule.get("Value", ""))})
    return result


# --- Helpers ----------------------------------------------------------------------------------------


def _forget_shard_iterator(iterator: str | None) -> None:
    """moto keeps every shard iterator it ever handed out; a poller makes ten a second."""
    if not iterator:
        return
    try:
        from moto.dynamodbstreams.models import dynamodbstreams_backends

        with lock.MOTO_LOCK:
            dynamodbstreams_backends[ACCOUNT_ID][REGION].shard_iterators.pop(iterator, None)
    except Exception:  # an internal of moto; losing the cleanup only costs memory
        logger.debug("cannot prune shard iterators", exc_info=True)


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """An SQS API message attribute as Lambda's SQS event spells it."""
    attribute: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value.get("DataType")}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        raw = value["BinaryValue"]
        attribute["binaryValue"] = base64.b64encode(raw).decode() if isinstance(raw, bytes) else raw
    return attribute


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _iso(epoch: Any) -> str | None:
    if not isinstance(epoch, int | float):
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
