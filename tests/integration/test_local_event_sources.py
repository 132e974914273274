"""The local runtime's event source mappings: DynamoDB streams, SQS and S3 events.

One small template (written to a temp dir) declares a table per stream behaviour, a queue with a
DLQ, a bucket and fake consumers; one stack serves the whole module. Tests pause the mappings to
line records up into one batch, then resume and wait_until_idle().
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.local import event_sources
from infra.local.event_sources import (
    DynamoDBStreamMapping,
    EventSourceError,
    build_mapping,
    compile_filters,
    failed_identifiers,
    matches_filters,
)
from infra.local.lambdas import LocalFunction

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 5
    Environment:
      Variables:
        FILTERED_TABLE: !Ref FilteredTable
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties: { StageName: v1 }
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.api
      Events:
        Health: { Type: Api, Properties: { RestApiId: !Ref Api, Path: /health, Method: GET } }
  FilteredTable: &table
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      StreamSpecification: { StreamViewType: NEW_AND_OLD_IMAGES }
      AttributeDefinitions: [{ AttributeName: id, AttributeType: S }]
      KeySchema: [{ AttributeName: id, KeyType: HASH }]
  PartialTable: *table
  PoisonTable: *table
  WindowTable: *table
  WindowQueue:
    Type: AWS::SQS::Queue
  FailureQueue:
    Type: AWS::SQS::Queue
  InboxDeadLetters:
    Type: AWS::SQS::Queue
  InboxQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 1
      RedrivePolicy: { deadLetterTargetArn: !GetAtt InboxDeadLetters.Arn, maxReceiveCount: 2 }
  Uploads:
    Type: AWS::S3::Bucket
  UploadFailures:
    Type: AWS::SQS::Queue
  FilteredConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.filtered
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt FilteredTable.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 10
            FilterCriteria:
              Filters:
                - Pattern: '{"eventName": ["INSERT"]}'
  PartialConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.partial
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt PartialTable.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 10
            FunctionResponseTypes: [ReportBatchItemFailures]
  PoisonConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.poison
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt PoisonTable.StreamArn
            StartingPosition: LATEST
            BatchSize: 10
            BisectBatchOnFunctionError: true
            MaximumRetryAttempts: 2
            DestinationConfig:
              OnFailure: { Type: SQS, Destination: !GetAtt FailureQueue.Arn }
  WindowConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.window
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt WindowTable.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 3
            MaximumBatchingWindowInSeconds: 60
        Queue:
          Type: SQS
          Properties:
            Queue: !GetAtt WindowQueue.Arn
            BatchSize: 3
            MaximumBatchingWindowInSeconds: 60
  InboxConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.inbox
      Policies:
        - Statement:
            - Effect: Allow
              Action: sqs:ChangeMessageVisibility  # a test's function keeps its message longer
              Resource: !GetAtt InboxQueue.Arn
      Events:
        Inbox:
          Type: SQS
          Properties:
            Queue: !GetAtt InboxQueue.Arn
            BatchSize: 5
            FunctionResponseTypes: [ReportBatchItemFailures]
  SideBySideQueue:
    Type: AWS::SQS::Queue
  SideBySideConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.side_by_side
      Events:
        Queue:
          Type: SQS
          Properties:
            Queue: !GetAtt SideBySideQueue.Arn
            BatchSize: 1
            ScalingConfig: { MaximumConcurrency: 200 }
  UploadConsumer:
    Type: AWS::Serverless::Function
    Properties:
      Handler: fake.upload
      EventInvokeConfig:
        MaximumRetryAttempts: 1
        DestinationConfig:
          OnFailure: { Type: SQS, Destination: !GetAtt UploadFailures.Arn }
      Events:
        Csv:
          Type: S3
          Properties:
            Bucket: !Ref Uploads
            Events: s3:ObjectCreated:*
            Filter: { S3Key: { Rules: [{ Name: prefix, Value: incoming/ }, { Name: suffix, Value: .csv }] } }
"""


class Consumer:
    """A fake handler: records each event, answers with `behaviour(event, call_number)`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.behaviour: Callable[[dict[str, Any], int], Any] = lambda event, number: None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self.events.append(event)
            self.times.append(time.monotonic())
            number = len(self.events)
        return self.behaviour(event, number)

    def reset(self, behaviour: Callable[[dict[str, Any], int], Any] | None = None) -> None:
        self.events.clear()
        self.times.clear()
        self.behaviour = behaviour or (lambda event, number: None)


CONSUMERS = [
    "FilteredConsumer",
    "PartialConsumer",
    "PoisonConsumer",
    "WindowConsumer",
    "InboxConsumer",
    "SideBySideConsumer",
    "UploadConsumer",
]


def ok(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": "{}"}


@pytest.fixture(scope="module")
def consumers() -> dict[str, Consumer]:
    return {name: Consumer() for name in CONSUMERS}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, consumers: dict[str, Consumer]) -> Iterator[Any]:
    from infra.local.stack import running_stack

    path: Path = tmp_path_factory.mktemp("events") / "template.yaml"
    path.write_text(TEMPLATE)
    with running_stack(
        template=path,
        stack_name="ev",
        handlers={"ApiFunction": ok, **consumers},
        admin_key_bootstrap=lambda secret: None,
        mapping_retry_delay=0.02,
        batching_window_scale=1,  # WindowConsumer's 60 s windows as written (the suite's default is 0)
    ) as running:
        yield running


@pytest.fixture
def ddb(stack: Any) -> Any:
    return stack.client("dynamodb")


def put_as_one_batch(stack: Any, table: str, ids: tuple[str, ...]) -> None:
    """Items put while the mappings are paused, so a stream's poller reads them in one batch. A
    poller that began a look before the pause finishes it (pause() stops only new ones): the items
    are put once none is looking, or one could read the first alone (seen under load)."""
    stack.pause_mappings()
    try:
        assert stack.wait_until_idle(5)
        for key in ids:
            stack.client("dynamodb").put_item(TableName=stack.table_names[table], Item={"id": {"S": key}})
    finally:
        stack.resume_mappings()


def looks_of(mapping: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The services `mapping` takes a client of from now on, one per use: its looks at its source."""
    looked: list[str] = []
    real_client = mapping.client
    monkeypatch.setattr(mapping, "client", lambda service: looked.append(service) or real_client(service))
    return looked


def keys(event: dict[str, Any]) -> list[str]:
    return [record["dynamodb"]["Keys"]["id"]["S"] for record in event["Records"]]


# --- Filters and batch responses (pure) -------------------------------------------------------------


def test_filter_patterns_match_exact_values_in_nested_keys():
    patterns = compile_filters(
        {
            "Filters": [
                {"Pattern": '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"status": {"S": ["pending"]}}}}'},
                {"Pattern": '{"eventName": ["REMOVE"]}'},
            ]
        },
        "t",
    )
    pending = {"eventName": "INSERT", "dynamodb": {"NewImage": {"status": {"S": "pending"}}}}
    assert matches_filters(patterns, pending)
    assert matches_filters(patterns, {"eventName": "REMOVE", "dynamodb": {}})
    assert not matches_filters(patterns, {"eventName": "INSERT", "dynamodb": {"NewImage": {"status": {"S": "paid"}}}})
    assert not matches_filters(patterns, {"eventName": "MODIFY"})
    assert matches_filters(None, {"anything": 1})


def test_exact_values_match_with_their_json_type_as_aws_does():
    flags = compile_filters({"Filters": [{"Pattern": '{"NewImage": {"arrived": {"BOOL": [true]}}}'}]}, "t")
    assert matches_filters(flags, {"NewImage": {"arrived": {"BOOL": True}}})
    assert not matches_filters(flags, {"NewImage": {"arrived": {"BOOL": "true"}}})
    assert not matches_filters(flags, {"NewImage": {"arrived": {"BOOL": 1}}})


@pytest.mark.parametrize(
    "pattern",
    [
        '{"eventName": [{"prefix": "INS"}]}',
        '{"eventName": "INSERT"}',
        '{"eventName": []}',
        "[1]",
        "{bad json",
        '{"n": [{"numeric": [">", 0]}]}',
        '{"n": [{"exists": true}]}',
        # AWS matches a number numerically, and a stream record carries DynamoDB numbers as strings
        '{"dynamodb": {"NewImage": {"n": {"N": [5]}}}}',
        '{"n": [null]}',
    ],
)
def test_unsupported_filter_syntax_fails_clearly(pattern: str):
    with pytest.raises(EventSourceError, match=r"Fn\.Events\.E"):
        compile_filters({"Filters": [{"Pattern": pattern}]}, "Fn.Events.E")


def test_a_pattern_must_be_the_json_string_cloudformation_takes():
    with pytest.raises(EventSourceError, match="not a JSON string"):
        compile_filters({"Filters": [{"Pattern": {"eventName": ["INSERT"]}}]}, "Fn.Events.E")
    for criteria in ({"Filters": []}, {"Filter": [{"Pattern": "{}"}]}, ["INSERT"]):
        with pytest.raises(EventSourceError, match=r"Fn\.Events\.E: FilterCriteria needs a non-empty Filters list"):
            compile_filters(criteria, "Fn.Events.E")


def test_batch_item_failures_follow_lambdas_rules():
    ids = ["1", "2", "3"]

    def retried(response: Any) -> list[str]:  # what of a stream's batch is retried: from the first failed on
        stream = SimpleNamespace(report_batch_item_failures=True)
        batch = [{"dynamodb": {"SequenceNumber": number}} for number in ids]
        return [r["dynamodb"]["SequenceNumber"] for r in DynamoDBStreamMapping._failed_part(stream, batch, response)]

    assert retried(None) == retried({"batchItemFailures": []}) == []
    assert retried({"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "2"}]}) == ["2", "3"]
    assert retried({"batchItemFailures": [{"itemIdentifier": "9"}]}) == ids  # unknown: all failed
    assert retried({"batchItemFailures": "x"}) == ids
    assert failed_identifiers({"batchItemFailures": [{"itemIdentifier": "2"}]}, ids) == {"2"}
    assert failed_identifiers({"batchItemFailures": [{"itemIdentifier": ""}]}, ids) == set(ids)
    assert failed_identifiers({"batchItemFailures": [{"itemIdentifier": ["2"]}]}, ids) == set(ids)
    assert failed_identifiers([{"itemIdentifier": "2"}], ids) == set(ids)  # not the response's shape
    assert failed_identifiers({"statusCode": 200}, ids) == set()


@pytest.mark.parametrize("batch_size", [0, 11])
def test_an_sqs_batch_size_lambda_would_only_take_with_a_batching_window_fails_clearly(batch_size: int):
    event = {"Type": "SQS", "Properties": {"Queue": "arn:aws:sqs:us-east-1:123456789012:q", "BatchSize": batch_size}}
    with pytest.raises(EventSourceError, match=rf"Fn\.Events\.E \(SQS\): BatchSize {batch_size} is not emulated"):
        build_mapping(
            "Fn", "E", event, LocalFunction("Fn", ok), resolve=lambda v: v, queue_url_for_arn=str, client=lambda s: None
        )


# --- DynamoDB streams -------------------------------------------------------------------------------


def test_mappings_come_from_the_template(stack: Any):
    assert set(stack.mappings) == {
        "FilteredConsumer.Stream",
        "PartialConsumer.Stream",
        "PoisonConsumer.Stream",
        "WindowConsumer.Stream",
        "WindowConsumer.Queue",
        "InboxConsumer.Inbox",
        "SideBySideConsumer.Queue",
        "UploadConsumer.Csv",
    }
    poison = stack.mappings["PoisonConsumer.Stream"]
    assert poison.kind == "DynamoDB" and poison.source_arn == stack.atts["PoisonTable.StreamArn"]
    assert poison.bisect_on_error and poison.maximum_retry_attempts == 2
    assert poison.on_failure.arn == stack.atts["FailureQueue.Arn"]
    assert stack.mappings["InboxConsumer.Inbox"].batch_size == 5
    assert stack.mappings["InboxConsumer.Inbox"].batching_window == 0.0
    assert stack.mappings["WindowConsumer.Queue"].batching_window == 60.0
    # Side by side only where the template sets ScalingConfig.MaximumConcurrency, up to the local cap.
    assert stack.mappings["SideBySideConsumer.Queue"].concurrency == event_sources.SQS_LOCAL_CONCURRENCY == 4
    assert stack.mappings["InboxConsumer.Inbox"].concurrency == stack.mappings["WindowConsumer.Queue"].concurrency == 1


def test_stream_mapping_delivers_only_what_the_filter_lets_through(stack, ddb, consumers):
    consumer = consumers["FilteredConsumer"]
    consumer.reset()
    table = stack.table_names["FilteredTable"]
    ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "status": {"S": "pending"}})
    ddb.update_item(
        TableName=table,
        Key={"id": {"S": "a"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "paid"}},
    )
    ddb.delete_item(TableName=table, Key={"id": {"S": "a"}})
    ddb.put_item(TableName=table, Item={"id": {"S": "b"}})
    assert stack.wait_until_idle(5)
    records = [record for event in consumer.events for record in event["Records"]]
    assert [record["eventName"] for record in records] == ["INSERT", "INSERT"]
    assert [record["dynamodb"]["Keys"]["id"]["S"] for record in records] == ["a", "b"]
    first = records[0]
    assert first["eventSource"] == "aws:dynamodb" and first["awsRegion"] == "us-east-1"
    assert first["eventSourceARN"] == stack.atts["FilteredTable.StreamArn"]
    assert first["eventID"] and first["eventVersion"]
    assert first["dynamodb"]["NewImage"] == {"id": {"S": "a"}, "status": {"S": "pending"}}
    assert first["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(first["dynamodb"]["ApproximateCreationDateTime"], float)
    assert int(records[1]["dynamodb"]["SequenceNumber"]) > int(first["dynamodb"]["SequenceNumber"])
    assert first["dynamodb"]["SizeBytes"] > 0


def test_partial_batch_failure_is_retried_from_the_first_failed_record(stack, consumers):
    consumer = consumers["PartialConsumer"]

    def fail_p2_once(event: dict[str, Any], number: int) -> dict[str, Any]:
        failures = [
            {"itemIdentifier": record["dynamodb"]["SequenceNumber"]}
            for record in event["Records"]
            if number == 1 and record["dynamodb"]["Keys"]["id"]["S"] == "p2"
        ]
        return {"batchItemFailures": failures}

    consumer.reset(fail_p2_once)
    put_as_one_batch(stack, "PartialTable", ("p1", "p2", "p3"))
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["p1", "p2", "p3"], ["p2", "p3"]]


def test_poison_record_is_bisected_out_and_sent_to_the_on_failure_queue(stack, consumers):
    consumer = consumers["PoisonConsumer"]

    def explode_on_bad(event: dict[str, Any], number: int) -> None:
        if "bad" in keys(event):
            raise ValueError("poison")

    consumer.reset(explode_on_bad)
    sqs = stack.client("sqs")
    # The mapping starts at LATEST: its iterator is taken in its thread's first poll, and a record
    # written before that poll is not the mapping's (as on AWS), so wait for it.
    assert stack.wait_until_idle(5)
    put_as_one_batch(stack, "PoisonTable", ("g1", "bad", "g2"))
    assert stack.wait_until_idle(5)
    # Split in halves on each error; `bad` fails 1 + MaximumRetryAttempts (2) times, then goes.
    assert [keys(event) for event in consumer.events] == [["g1", "bad", "g2"], ["g1"], ["bad", "g2"], ["bad"], ["g2"]]
    messages = sqs.receive_message(QueueUrl=stack.queue_urls["FailureQueue"], MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    failure = json.loads(messages[0]["Body"])
    bad_sequence = consumer.events[3]["Records"][0]["dynamodb"]["SequenceNumber"]
    info = failure["DDBStreamBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == bad_sequence
    assert info["batchSize"] == 1
    assert info["streamArn"] == stack.atts["PoisonTable.StreamArn"]
    assert info["shardId"].startswith("shardId-")
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["functionArn"] == stack.function_arns["PoisonConsumer"]
    assert failure["requestContext"]["approximateInvokeCount"] == 3
    assert failure["responseContext"]["functionError"] == "Unhandled"


def test_a_give_up_the_on_failure_queue_refuses_loses_nothing_after_it(stack, ddb, consumers, monkeypatch, caplog):
    # `bad` is given up; sending its record to the OnFailure queue raised out of the delivery, and
    # the half after it (g2, which never failed) was never delivered. Lambda discards what its error
    # handling could not keep and goes on with the stream: the record is logged, g2 delivered.
    consumer, mapping = consumers["PoisonConsumer"], stack.mappings["PoisonConsumer.Stream"]
    real_client = mapping.client

    def explode_on_bad(event: dict[str, Any], number: int) -> None:
        if "bad" in keys(event):
            raise ValueError("poison")

    def refuse(**message: Any) -> None:
        raise RuntimeError("the queue refused it")

    consumer.reset(explode_on_bad)
    refusing = {"sqs": SimpleNamespace(send_message=refuse)}

    assert stack.wait_until_idle(5)  # the mapping starts at LATEST (as in the test above)
    stack.pause_mappings()
    assert stack.wait_until_idle(2)  # no poll under way
    try:
        for key in ("g1", "bad", "g2"):
            ddb.put_item(TableName=stack.table_names["PoisonTable"], Item={"id": {"S": key}})
        monkeypatch.setattr(mapping, "client", lambda service: refusing.get(service) or real_client(service))
    finally:
        stack.resume_mappings()
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["g1", "bad", "g2"], ["g1"], ["bad", "g2"], ["bad"], ["g2"]]
    assert "cannot send" in caplog.text and "DDBStreamBatchInfo" in caplog.text


def test_a_paused_mapping_keeps_records_until_resumed(stack, ddb, consumers):
    consumer = consumers["FilteredConsumer"]
    consumer.reset()
    stack.pause_mappings()
    try:
        ddb.put_item(TableName=stack.table_names["FilteredTable"], Item={"id": {"S": "held"}})
        assert stack.wait_until_idle(2)  # paused counts as idle
        assert consumer.events == []
    finally:
        stack.resume_mappings()
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["held"]]


def test_a_batch_the_poller_fails_to_hand_over_is_read_again_not_skipped(stack, ddb, consumers, monkeypatch):
    # The poller took the read's NextShardIterator before turning its records into the event, and
    # popped a batch before delivering it: a failure there (an error of the runtime's own, not the
    # function's) skipped the records for good. Lambda retries what it could not invoke the function
    # with until the records expire; here the same records are read again on the next poll.
    consumer, mapping = consumers["PartialConsumer"], stack.mappings["PartialConsumer.Stream"]
    consumer.reset()
    shaping, invoking = iter([RuntimeError("cannot shape the event")]), iter([RuntimeError("cannot invoke")])
    try_invoke = mapping.function.try_invoke

    def shaped_after_a_failure(record: dict[str, Any]) -> dict[str, Any]:
        if (failure := next(shaping, None)) is not None:
            raise failure
        return type(mapping).event_record(mapping, record)

    def invoked_after_a_failure(event: dict[str, Any]) -> Any:
        if (failure := next(invoking, None)) is not None:
            raise failure
        return try_invoke(event)

    stack.pause_mappings()
    assert stack.wait_until_idle(2)  # no poll under way: both records are read by one, after the patches
    try:
        for key in ("h1", "h2"):
            ddb.put_item(TableName=stack.table_names["PartialTable"], Item={"id": {"S": key}})
        monkeypatch.setattr(mapping, "event_record", shaped_after_a_failure)
        monkeypatch.setattr(mapping.function, "try_invoke", invoked_after_a_failure)
    finally:
        stack.resume_mappings()
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["h1", "h2"]]


def test_a_backlog_whose_first_page_the_filter_leaves_out_is_read_to_its_end(stack, ddb, consumers, monkeypatch):
    # A read of a full page (STREAM_PAGE records, 1,000) that the filter left out entirely was taken
    # for the stream's end: the records behind it waited for the next write. A page of 2 here.
    monkeypatch.setattr(event_sources, "STREAM_PAGE", 2)
    consumer, table = consumers["FilteredConsumer"], stack.table_names["FilteredTable"]
    ddb.put_item(TableName=table, Item={"id": {"S": "page"}})
    assert stack.wait_until_idle(5)
    consumer.reset()
    stack.pause_mappings()
    try:
        for status in ("one", "two"):  # two MODIFY records the filter (INSERT only) leaves out
            ddb.put_item(TableName=table, Item={"id": {"S": "page"}, "status": {"S": status}})
        ddb.put_item(TableName=table, Item={"id": {"S": "behind"}})
    finally:
        stack.resume_mappings()
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["behind"]]


def test_a_woken_mapping_is_not_idle_between_taking_the_wake_and_looking(stack, consumers, monkeypatch):
    # The poller cleared its wake, then marked itself busy: wait_until_idle() reading between the
    # two found the mapping drained, not woken and not busy, and answered idle with the message
    # not delivered. The poller is held between the two steps here.
    consumer, mapping = consumers["InboxConsumer"], stack.mappings["InboxConsumer.Inbox"]
    consumer.reset()
    assert stack.wait_until_idle(5)
    clear, held = mapping._arrived.clear, threading.Event()

    def clear_then_hold() -> None:
        clear()
        if threading.current_thread().name == f"oms-local-{mapping.name}" and not held.is_set():
            held.set()
            time.sleep(1.0)

    monkeypatch.setattr(mapping._arrived, "clear", clear_then_hold)
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="woken")
    assert held.wait(5)
    assert stack.wait_until_idle(5)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["woken"]]


def test_stream_pollers_do_not_leave_moto_a_shard_iterator_per_read(stack, ddb, consumers):
    """moto keeps every shard iterator it hands out and a poller takes one per read (each write to
    its table wakes it to read): each is forgotten once the one after it is read (moto_patches/streams.py)."""
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    iterators = dynamodbstreams_backends["123456789012"]["us-east-1"].shard_iterators
    streams = sum(mapping.kind == "DynamoDB" for mapping in stack.mappings.values())
    consumers["FilteredConsumer"].reset()
    for n in range(10):  # ten reads of the stream at least
        ddb.put_item(TableName=stack.table_names["FilteredTable"], Item={"id": {"S": f"read-{n}"}})
        assert stack.wait_until_idle(5)
    assert len(consumers["FilteredConsumer"].events) == 10
    # Each poller's last read and the next it reads (and, during a read, the one it hands out).
    assert 0 < len(iterators) <= 3 * streams


# --- Batching windows -------------------------------------------------------------------------------


def send_to_window(stack: Any, source: str, key: str) -> None:
    """One record to WindowConsumer's stream or queue (each wakes its mapping)."""
    if source == "Stream":
        stack.client("dynamodb").put_item(TableName=stack.table_names["WindowTable"], Item={"id": {"S": key}})
    else:
        stack.client("sqs").send_message(QueueUrl=stack.queue_urls["WindowQueue"], MessageBody=key)


def window_batches(consumer: Consumer) -> list[list[str]]:
    return [
        [record["body"] if "body" in record else record["dynamodb"]["Keys"]["id"]["S"] for record in event["Records"]]
        for event in consumer.events
    ]


@pytest.mark.parametrize("source", ["Stream", "Queue"])
def test_a_batching_window_gathers_records_sent_one_by_one_into_one_batch_once_full(stack, consumers, source):
    # A batch went as soon as one record was there, so the template's windows (1 s) changed nothing
    # and each record was an invocation of its own. With a 60 s window and BatchSize 3, the first two
    # records wait (the mapping is not idle meanwhile) and the third fills the batch, which goes at once.
    consumer = consumers["WindowConsumer"]
    consumer.reset()
    assert stack.wait_until_idle(5)
    for key in ("w1", "w2"):
        send_to_window(stack, source, f"{source}-{key}")
    assert not stack.wait_until_idle(0.3)  # a partial batch gathering is work not done yet
    assert consumer.events == []
    send_to_window(stack, source, f"{source}-w3")
    assert stack.wait_until_idle(5)
    assert window_batches(consumer) == [[f"{source}-w1", f"{source}-w2", f"{source}-w3"]]


@pytest.mark.parametrize("source", ["Stream", "Queue"])
def test_a_batch_short_of_its_size_goes_once_its_window_has_passed(stack, consumers, monkeypatch, source):
    consumer = consumers["WindowConsumer"]
    consumer.reset()
    monkeypatch.setattr(stack.mappings[f"WindowConsumer.{source}"], "batching_window", 0.2)
    send_to_window(stack, source, f"{source}-alone")
    assert stack.wait_until_idle(5)
    assert window_batches(consumer) == [[f"{source}-alone"]]


@pytest.mark.parametrize("source", ["Stream", "Queue"])
def test_a_batching_window_scaled_to_0_sends_each_batch_at_once(stack, consumers, monkeypatch, source):
    mapping = build_mapping(
        "WindowConsumer",
        source,
        stack.template.functions()["WindowConsumer"]["Events"][source],
        LocalFunction("WindowConsumer", ok),
        resolve=stack.resources.resolve,
        queue_url_for_arn=lambda arn: arn,
        client=lambda service: None,
        batching_window_scale=0,
    )
    assert mapping.batching_window == 0.0  # as the suite's stacks build it (OMS_BATCHING_WINDOW_SCALE=0)
    consumer = consumers["WindowConsumer"]
    consumer.reset()
    monkeypatch.setattr(stack.mappings[f"WindowConsumer.{source}"], "batching_window", mapping.batching_window)
    for key in ("n1", "n2"):
        send_to_window(stack, source, f"{source}-{key}")
        assert stack.wait_until_idle(5)
    assert window_batches(consumer) == [[f"{source}-n1"], [f"{source}-n2"]]


def test_a_batching_window_is_scaled_by_the_stack_s_scale():
    event = {
        "Type": "SQS",
        "Properties": {"Queue": "arn:aws:sqs:us-east-1:123456789012:q", "MaximumBatchingWindowInSeconds": 4},
    }
    windows = [
        build_mapping(
            "Fn",
            "E",
            event,
            LocalFunction("Fn", ok),
            resolve=lambda v: v,
            queue_url_for_arn=str,
            client=lambda s: None,
            **scale,
        ).batching_window
        for scale in ({}, {"batching_window_scale": 0.25}, {"batching_window_scale": 0})
    ]
    assert windows == [4.0, 1.0, 0.0]


# --- SQS --------------------------------------------------------------------------------------------


def test_sqs_mapping_deletes_only_successes_and_the_dlq_gets_the_rest(stack, consumers):
    consumer = consumers["InboxConsumer"]

    def fail_bad(event: dict[str, Any], number: int) -> dict[str, Any]:
        return {
            "batchItemFailures": [
                {"itemIdentifier": record["messageId"]} for record in event["Records"] if record["body"] == "bad"
            ]
        }

    consumer.reset(fail_bad)
    sqs = stack.client("sqs")
    queue_url = stack.queue_urls["InboxQueue"]
    stack.pause_mappings()
    try:
        for body in ("m1", "bad", "m3"):
            sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=body,
                MessageAttributes={"kind": {"DataType": "String", "StringValue": "test"}},
            )
    finally:
        stack.resume_mappings()
    assert stack.wait_until_idle(8)

    bodies = [[record["body"] for record in event["Records"]] for event in consumer.events]
    assert sorted(bodies[0]) == ["bad", "m1", "m3"]
    assert bodies[1:] == [["bad"]]  # received twice (maxReceiveCount 2), then moved
    assert consumer.times[1] - consumer.times[0] >= 0.9  # back only after the 1 s visibility timeout
    record = consumer.events[1]["Records"][0]
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
    assert record["messageAttributes"]["kind"]["stringValue"] == "test"
    assert record["messageAttributes"]["kind"]["dataType"] == "String"
    assert record["eventSource"] == "aws:sqs" and record["awsRegion"] == "us-east-1"
    assert record["eventSourceARN"] == stack.atts["InboxQueue.Arn"]
    assert record["md5OfBody"] and record["receiptHandle"] and record["messageId"]

    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    dead = sqs.receive_message(QueueUrl=stack.queue_urls["InboxDeadLetters"], MaxNumberOfMessages=10)["Messages"]
    assert [message["Body"] for message in dead] == ["bad"]


def test_an_sqs_mapping_with_a_maximum_concurrency_runs_batches_side_by_side_up_to_the_local_cap(stack, consumers):
    # One batch at a time, a webhook subscriber that hangs (10 s an attempt) held every other
    # subscriber's delivery behind it on `make run`; the template caps the delivery mapping at 200
    # at once (ScalingConfig.MaximumConcurrency), and Lambda runs that many batches side by side.
    consumer, sqs, queue_url = consumers["SideBySideConsumer"], stack.client("sqs"), stack.queue_urls["SideBySideQueue"]
    release, healthy, lock = threading.Event(), threading.Event(), threading.Lock()
    running, most = [0], [0]

    def hangs_or_answers(event: dict[str, Any], number: int) -> None:
        if event["Records"][0]["body"] == "healthy":
            healthy.set()
            return
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            release.wait(30)
        finally:
            with lock:
                running[0] -= 1

    assert stack.wait_until_idle(5)
    consumer.reset(hangs_or_answers)
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody="hangs-1")
        sqs.send_message(QueueUrl=queue_url, MessageBody="healthy")
        # Delivered while the first is held, not after it.
        assert healthy.wait(10), f"the healthy message waited behind the hanging one ({running[0]} held)"
        for body in ("hangs-2", "hangs-3", "hangs-4", "hangs-5"):
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        deadline = time.monotonic() + 10
        while running[0] < 4:
            assert time.monotonic() < deadline, f"{running[0]} batch(es) held, not 4"
            time.sleep(0.01)
        # At the local cap (4): the fifth is left in the queue, not received into a wait, and the
        # mapping is busy while its batches run.
        counts = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("1", "4")
        assert not stack.mappings["SideBySideConsumer.Queue"].is_idle()
    finally:
        release.set()
    assert stack.wait_until_idle(8)
    bodies = sorted(event["Records"][0]["body"] for event in consumer.events)
    assert bodies == ["hangs-1", "hangs-2", "hangs-3", "hangs-4", "hangs-5", "healthy"]
    assert most[0] == 4
    assert taken(stack, "SideBySideQueue") == []


def test_a_mapping_paused_at_its_local_cap_receives_nothing_when_its_batches_end(stack, consumers):
    # Its poller waits for a free container before it receives; paused meanwhile, it must not take
    # the next message once one is free (pause(): no new batches until resume()).
    consumer, sqs, queue_url = consumers["SideBySideConsumer"], stack.client("sqs"), stack.queue_urls["SideBySideQueue"]
    mapping, release, held = stack.mappings["SideBySideConsumer.Queue"], threading.Event(), threading.Semaphore(0)

    def held_until_released(event: dict[str, Any], number: int) -> None:
        if event["Records"][0]["body"].startswith("held"):
            held.release()
            release.wait(30)

    assert stack.wait_until_idle(5)
    consumer.reset(held_until_released)
    try:
        for number in range(1, 5):
            sqs.send_message(QueueUrl=queue_url, MessageBody=f"held-{number}")
        for _ in range(4):
            assert held.acquire(timeout=10), "fewer than 4 batches side by side"
        sqs.send_message(QueueUrl=queue_url, MessageBody="after the pause")
        mapping.pause()
    finally:
        release.set()
    try:
        assert stack.wait_until_idle(8)
        assert sorted(event["Records"][0]["body"] for event in consumer.events) == [f"held-{n}" for n in range(1, 5)]
        counts = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("1", "0")
    finally:
        mapping.resume()
    assert stack.wait_until_idle(8)
    assert consumer.events[-1]["Records"][0]["body"] == "after the pause"
    assert taken(stack, "SideBySideQueue") == []


def test_an_idle_mapping_asks_moto_nothing_until_a_record_arrives(stack, ddb, consumers, monkeypatch):
    # Every mapping polled its source ten times a second while the stack sat idle (a sixth of a core
    # for the product's twelve); a write to the table or a send to the queue now wakes the one reading it.
    assert stack.wait_until_idle(5)
    looked: list[str] = []
    for name in ("FilteredConsumer.Stream", "InboxConsumer.Inbox"):
        mapping, real_client = stack.mappings[name], stack.mappings[name].client
        monkeypatch.setattr(mapping, "client", lambda service, n=name, c=real_client: looked.append(n) or c(service))
    time.sleep(0.5)  # five of the old pollers' intervals
    assert looked == []
    for consumer in consumers.values():
        consumer.reset()
    ddb.put_item(TableName=stack.table_names["FilteredTable"], Item={"id": {"S": "woken"}})
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="woken")
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumers["FilteredConsumer"].events] == [["woken"]]
    assert [[r["body"] for r in event["Records"]] for event in consumers["InboxConsumer"].events] == [["woken"]]
    assert set(looked) == {"FilteredConsumer.Stream", "InboxConsumer.Inbox"}


def test_a_stream_record_no_filter_lets_through_does_not_wake_its_mapping(stack, ddb, consumers, monkeypatch):
    # Every write to a table woke each mapping of its stream, which read the record only to drop it:
    # the product's catalog stream feeds two mappings whose filters pass a few of its items, and each
    # of them spent 0.2 to 0.4 s of CPU per e2e module reading catalog writes it left out.
    consumer, mapping, table = consumers["FilteredConsumer"], stack.mappings["FilteredConsumer.Stream"], "FilteredTable"
    ddb.put_item(TableName=stack.table_names[table], Item={"id": {"S": "quiet"}})
    assert stack.wait_until_idle(5)
    consumer.reset()
    looked = looks_of(mapping, monkeypatch)
    ddb.put_item(TableName=stack.table_names[table], Item={"id": {"S": "quiet"}, "status": {"S": "paid"}})  # MODIFY
    ddb.delete_item(TableName=stack.table_names[table], Key={"id": {"S": "quiet"}})  # REMOVE
    assert stack.wait_until_idle(5)
    assert looked == []
    ddb.put_item(TableName=stack.table_names[table], Item={"id": {"S": "heard"}})  # INSERT: the filter's
    assert stack.wait_until_idle(5)
    assert looked  # woken, it read the records left out on its way to this one
    assert [keys(event) for event in consumer.events] == [["heard"]]


def test_a_paused_mapping_sleeps_through_arrivals_and_looks_once_resumed(stack, consumers, monkeypatch):
    # Woken by every record while paused, a mapping's thread ran a loop for nothing each time (a
    # paused stack's pollers were 5 % of the bench's CPU per order); resume() has it look instead.
    consumer, mapping = consumers["InboxConsumer"], stack.mappings["InboxConsumer.Inbox"]
    assert stack.wait_until_idle(5)
    consumer.reset()
    mapping.pause()
    try:
        woken: list[bool] = []
        arrived = mapping._arrived  # the event its thread sleeps on
        monkeypatch.setattr(arrived, "set", lambda real=arrived.set: woken.append(mapping.paused) or real())
        for body in ("one", "two"):
            stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody=body)
        assert woken == []
        assert consumer.events == []
    finally:
        mapping.resume()
    assert stack.wait_until_idle(5)
    assert sorted(record["body"] for event in consumer.events for record in event["Records"]) == ["one", "two"]


def test_a_delayed_message_is_delivered_once_its_delay_ends_with_nothing_else_sent(stack, consumers):
    # No record arrives when a message's DelaySeconds ends (the webhook retries send with one): the
    # mapping keeps looking while its queue holds delayed messages. They wait as a paused mapping's do.
    consumer = consumers["InboxConsumer"]
    consumer.reset()
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="later", DelaySeconds=1)
    assert stack.wait_until_idle(5)
    deadline = time.monotonic() + 10
    while not consumer.events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.wait_until_idle(5)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["later"]]


def test_a_mapping_waiting_for_a_delayed_message_looks_again_when_its_delay_ends(stack, consumers, monkeypatch):
    # It looked ten times a second while the delay ran (a ReceiveMessage and a GetQueueAttributes
    # each): the webhook retries' delays kept e2e pollers busy (76 looks for 16 deliveries in
    # test_webhooks.py). moto tells the mapping when the message it adds becomes visible.
    consumer, mapping = consumers["InboxConsumer"], stack.mappings["InboxConsumer.Inbox"]
    assert stack.wait_until_idle(5)
    consumer.reset()
    looked = looks_of(mapping, monkeypatch)
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="later", DelaySeconds=1)
    deadline = time.monotonic() + 10
    while not consumer.events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.wait_until_idle(5)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["later"]]
    # Its client is asked once a look and once for the delete: a look when the message was sent,
    # one when its delay ended, the delete, one finding the queue drained (13 before: a look each 0.1 s).
    assert len(looked) <= 5, looked


# --- S3 ---------------------------------------------------------------------------------------------


def test_s3_notifications_invoke_the_function_for_matching_keys(stack, consumers):
    consumer = consumers["UploadConsumer"]
    consumer.reset()
    s3 = stack.client("s3")
    bucket = stack.bucket_names["Uploads"]
    s3.put_object(Bucket=bucket, Key="incoming/a.csv", Body=b"sku,qty\n")
    s3.put_object(Bucket=bucket, Key="incoming/b.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="other/c.csv", Body=b"x")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="incoming/big.csv")
    part = s3.upload_part(Bucket=bucket, Key="incoming/big.csv", UploadId=upload["UploadId"], PartNumber=1, Body=b"y")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="incoming/big.csv",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    assert stack.wait_until_idle(5)
    records = [event["Records"][0] for event in consumer.events]
    assert [(r["eventName"], r["s3"]["object"]["key"]) for r in records] == [
        ("ObjectCreated:Put", "incoming/a.csv"),
        ("ObjectCreated:CompleteMultipartUpload", "incoming/big.csv"),
    ]
    first = records[0]
    assert first["eventSource"] == "aws:s3" and first["awsRegion"] == "us-east-1"
    assert first["s3"]["bucket"]["name"] == bucket
    assert first["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{bucket}"
    assert first["s3"]["object"]["size"] == 8 and first["s3"]["object"]["eTag"]
    assert first["s3"]["configurationId"] == "UploadConsumer.Csv"
    assert first["s3"]["object"]["sequencer"] and first["eventTime"]


def test_a_failing_s3_event_is_retried_then_sent_to_the_on_failure_destination(stack, consumers):
    consumer = consumers["UploadConsumer"]

    def fail_on_poison(event: dict[str, Any], number: int) -> None:
        if event["Records"][0]["s3"]["object"]["key"].endswith("poison.csv"):
            raise ValueError("cannot split this file")

    consumer.reset(fail_on_poison)
    s3, sqs = stack.client("s3"), stack.client("sqs")
    bucket = stack.bucket_names["Uploads"]
    s3.put_object(Bucket=bucket, Key="incoming/poison.csv", Body=b"x")
    s3.put_object(Bucket=bucket, Key="incoming/fine.csv", Body=b"x")
    assert stack.wait_until_idle(5)

    keys_invoked = [event["Records"][0]["s3"]["object"]["key"] for event in consumer.events]
    assert keys_invoked == ["incoming/poison.csv", "incoming/poison.csv", "incoming/fine.csv"]  # 1 retry
    failures = sqs.receive_message(QueueUrl=stack.queue_urls["UploadFailures"], MaxNumberOfMessages=10)["Messages"]
    assert len(failures) == 1
    record = json.loads(failures[0]["Body"])
    assert record["version"] == "1.0" and record["timestamp"]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["requestContext"]["functionArn"].endswith(":function:ev-UploadConsumer:$LATEST")
    assert record["requestPayload"] == consumer.events[0]  # replayable as it was
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["responsePayload"]["errorMessage"] == "cannot split this file"
    assert any("fail_on_poison" in line for line in record["responsePayload"]["stackTrace"])  # the handler's
    mapping = next(m for m in stack.mappings.values() if m.function_logical_id == "UploadConsumer")
    assert mapping.on_failure.arn == stack.atts["UploadFailures.Arn"]


def test_an_asynchronous_invoke_of_a_function_with_an_s3_event_is_queued_retried_and_sent_on(stack, consumers):
    # The import splitter hands the rest of a file to itself with InvocationType Event: Lambda answers
    # 202 at once and its async queue invokes later, retried per EventInvokeConfig, then OnFailure.
    consumer = consumers["UploadConsumer"]

    def fail_on_rest(event: dict[str, Any], number: int) -> None:
        if event.get("rest") == "fails":
            raise ValueError("cannot go on")

    consumer.reset(fail_on_rest)
    lam = stack.client("lambda")
    for payload in ({"rest": "fine"}, {"rest": "fails"}):
        answer = lam.invoke(FunctionName=stack.function_arns["UploadConsumer"], InvocationType="Event",
                            Payload=json.dumps(payload))  # fmt: skip
        assert (answer["StatusCode"], answer["Payload"].read()) == (202, b"")
    assert stack.wait_until_idle(5)
    assert consumer.events == [{"rest": "fine"}, {"rest": "fails"}, {"rest": "fails"}]  # 1 retry
    [message] = taken(stack, "UploadFailures")
    record = json.loads(message["Body"])
    assert (record["requestPayload"], record["responsePayload"]["errorMessage"]) == ({"rest": "fails"}, "cannot go on")


# --- Functions that run past their Timeout, or exit ---------------------------------------------------
# A thread cannot be stopped: the handler runs to its end, and its answer is dropped for the timeout
# Lambda would have reported (infra/local/lambdas.py). Each test takes what it left in a queue back.


def slow_on(
    key: str, keys_of: Callable[[dict[str, Any]], list[str]], function: LocalFunction | None = None
) -> Callable[[dict[str, Any], int], None]:
    """A behaviour that runs past a 0.05 s Timeout when its event holds `key`. Given its function,
    the runs that must succeed are held to 5 s instead (set as a run starts; the runtime reads it as
    the run ends): a loaded machine can pause a thread for 50 ms."""

    def behaviour(event: dict[str, Any], number: int) -> None:
        slow = key in keys_of(event)
        if function is not None:
            function.timeout_seconds = 0.05 if slow else 5
        if slow:
            time.sleep(0.2)

    return behaviour


def taken(stack: Any, queue: str) -> list[dict[str, Any]]:
    sqs, url = stack.client("sqs"), stack.queue_urls[queue]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


@pytest.mark.usefixtures("wall_clock_runs")
def test_a_stream_batch_past_its_timeout_is_retried_bisected_and_given_up_as_an_error(stack, consumers, monkeypatch):
    # It answered: the batch counted as delivered, on AWS it is a function error.
    consumer = consumers["PoisonConsumer"]
    consumer.reset(slow_on("slow", keys, stack.functions["PoisonConsumer"]))  # g1 and g2 must succeed
    monkeypatch.setattr(stack.functions["PoisonConsumer"], "timeout_seconds", 0.05)
    assert stack.wait_until_idle(5)  # the mapping starts at LATEST (as in the tests above)
    put_as_one_batch(stack, "PoisonTable", ("g1", "slow", "g2"))
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [
        ["g1", "slow", "g2"],
        ["g1"],
        ["slow", "g2"],
        ["slow"],
        ["g2"],
    ]
    [message] = taken(stack, "FailureQueue")
    failure = json.loads(message["Body"])
    assert failure["DDBStreamBatchInfo"]["batchSize"] == 1
    assert failure["responseContext"]["functionError"] == "Unhandled"


@pytest.mark.usefixtures("wall_clock_runs")
def test_an_sqs_batch_past_its_timeout_is_not_deleted_and_goes_to_the_dlq(stack, consumers, monkeypatch):
    consumer = consumers["InboxConsumer"]
    consumer.reset(slow_on("slow", lambda event: [record["body"] for record in event["Records"]]))
    monkeypatch.setattr(stack.functions["InboxConsumer"], "timeout_seconds", 0.05)
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="slow")
    assert stack.wait_until_idle(8)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["slow"], ["slow"]]
    assert [message["Body"] for message in taken(stack, "InboxDeadLetters")] == ["slow"]


def test_a_message_visible_again_between_the_receive_and_the_count_is_not_taken_for_drained(
    stack, consumers, monkeypatch
):
    # The CI flake of stop 42, made certain: the receive finds the failed message still invisible,
    # its VisibilityTimeout (1 s) ends before the mapping counts the queue. Counted as drained, the
    # mapping slept until the next arrival: the message was never delivered again (nor dead-lettered).
    consumer = consumers["InboxConsumer"]

    def fail_first(event: dict[str, Any], number: int) -> None:
        if number == 1:
            raise RuntimeError("first delivery fails")

    consumer.reset(fail_first)
    mapping = stack.mappings["InboxConsumer.Inbox"]
    real = mapping.client

    class LateReceive:
        def __init__(self, sqs: Any):
            self._sqs = sqs

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sqs, name)

        def receive_message(self, **kwargs: Any) -> Any:
            answer = self._sqs.receive_message(**kwargs)
            if not answer.get("Messages") and consumer.events:
                time.sleep(1.2)  # past the queue's VisibilityTimeout
            return answer

    monkeypatch.setattr(
        mapping, "client", lambda service: LateReceive(real(service)) if service == "sqs" else real(service)
    )
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="late")
    assert stack.wait_until_idle(8)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["late"], ["late"]]
    assert taken(stack, "InboxQueue") == [] and taken(stack, "InboxDeadLetters") == []


def test_a_mapping_waiting_out_a_failed_message_s_visibility_timeout_looks_again_when_it_ends(
    stack, consumers, monkeypatch
):
    # It looked ten times a second until the failed message came back (the product's queues keep
    # one invisible for 61 to 180 s: 600 to 1,800 looks, 2 to 5 s of CPU per failure under `make
    # run`). moto tells the mapping when a message it receives becomes visible again.
    consumer, mapping = consumers["InboxConsumer"], stack.mappings["InboxConsumer.Inbox"]

    def fail_first(event: dict[str, Any], number: int) -> None:
        if number == 1:
            raise RuntimeError("first delivery fails")

    assert stack.wait_until_idle(5)
    consumer.reset(fail_first)
    looked = looks_of(mapping, monkeypatch)
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="again")
    assert stack.wait_until_idle(8)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["again"], ["again"]]
    assert consumer.times[1] - consumer.times[0] >= 0.9  # back only after the 1 s visibility timeout
    # A look that fails it, one finding it in flight, one when it is visible again, the delete, one
    # finding the queue drained (14 before: a look each 0.1 s while it was in flight).
    assert len(looked) <= 5, looked
    assert taken(stack, "InboxQueue") == [] and taken(stack, "InboxDeadLetters") == []


def test_a_visibility_the_function_changes_is_waited_for_as_moto_keeps_it(stack, consumers, monkeypatch):
    # ChangeMessageVisibility moves a message's return: later (the function keeps it 2 s) and
    # earlier (made visible at once while the mapping waits out 600 s): the mapping looks at each.
    consumer, mapping = consumers["InboxConsumer"], stack.mappings["InboxConsumer.Inbox"]
    sqs, queue_url = stack.client("sqs"), stack.queue_urls["InboxQueue"]
    hold, kept = {1: 2, 3: 600}, threading.Event()  # seconds each failing call keeps its message invisible

    def keep_and_fail(event: dict[str, Any], number: int) -> None:
        if number in hold:
            handle = event["Records"][0]["receiptHandle"]
            sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=hold[number])
            kept.set()
            raise RuntimeError("kept for later")

    assert stack.wait_until_idle(5)
    consumer.reset(keep_and_fail)
    looked = looks_of(mapping, monkeypatch)
    sqs.send_message(QueueUrl=queue_url, MessageBody="kept")
    assert stack.wait_until_idle(8)
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["kept"], ["kept"]]
    assert consumer.times[1] - consumer.times[0] >= 1.9  # not when the queue's 1 s timeout ended
    # The failing look, one finding it in flight, one at the function's 2 s (the queue's 1 s it
    # replaced is forgotten), the delete, one finding the queue drained (24 before).
    assert len(looked) <= 5, looked

    consumer.reset(lambda event, number: keep_and_fail(event, number + 2))  # its first call keeps it 600 s
    kept.clear()
    sqs.send_message(QueueUrl=queue_url, MessageBody="released")
    assert kept.wait(5)
    handle = consumer.events[0]["Records"][0]["receiptHandle"]
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=0)  # back now
    assert stack.wait_until_idle(8)  # not after 600 s
    assert [[record["body"] for record in event["Records"]] for event in consumer.events] == [["released"]] * 2
    assert taken(stack, "InboxQueue") == [] and taken(stack, "InboxDeadLetters") == []


@pytest.mark.usefixtures("wall_clock_runs")
def test_an_s3_event_past_its_timeout_is_retried_then_sent_on_as_a_timeout(stack, consumers, monkeypatch):
    consumer = consumers["UploadConsumer"]
    consumer.reset(slow_on("incoming/slow.csv", lambda event: [event["Records"][0]["s3"]["object"]["key"]]))
    monkeypatch.setattr(stack.functions["UploadConsumer"], "timeout_seconds", 0.05)
    stack.client("s3").put_object(Bucket=stack.bucket_names["Uploads"], Key="incoming/slow.csv", Body=b"x")
    assert stack.wait_until_idle(5)
    assert len(consumer.events) == 2  # 1 retry (EventInvokeConfig)
    [message] = taken(stack, "UploadFailures")
    # Lambda's runtime, not the handler, reports it: the request id in its message, no stack trace.
    response = json.loads(message["Body"])["responsePayload"]
    assert response.keys() == {"errorType", "errorMessage"} and response["errorType"] == "Sandbox.Timedout"
    assert re.fullmatch(r"RequestId: [0-9a-f-]{36} Error: Task timed out after 0\.05 seconds", response["errorMessage"])


def test_a_function_that_exits_fails_its_batch_and_the_poller_delivers_on(stack, ddb, consumers):
    # SystemExit is no Exception: it ended the poller's thread, and no later record was delivered.
    consumer = consumers["FilteredConsumer"]
    consumer.reset(lambda event, number: sys.exit(3) if number == 1 else None)
    table = stack.table_names["FilteredTable"]
    ddb.put_item(TableName=table, Item={"id": {"S": "exit1"}})
    assert stack.wait_until_idle(5)
    ddb.put_item(TableName=table, Item={"id": {"S": "exit2"}})
    assert stack.wait_until_idle(5)
    assert [keys(event) for event in consumer.events] == [["exit1"], ["exit1"], ["exit2"]]


def test_a_poller_ended_by_the_runtime_s_own_code_says_so_and_polls_again_once_started(
    stack, consumers, monkeypatch, caplog
):
    # SystemExit from the poller's own code (not a handler's: that is its invocation's error) ended
    # its thread without a word, and the source's records waited for good.
    mapping = stack.mappings["InboxConsumer.Inbox"]
    monkeypatch.setattr(mapping, "_fetch", lambda: sys.exit("the runtime's own code"))
    mapping.wake()  # its next look (an idle mapping looks when a record arrives)
    assert stack.wait_until_idle(5)  # a poller that died is not waited for
    [died] = [record for record in caplog.records if record.getMessage().startswith("InboxConsumer.Inbox: no longer")]
    assert (died.levelname, died.getMessage()) == (
        "ERROR",
        f"InboxConsumer.Inbox: no longer polling {mapping.source_arn}",
    )

    monkeypatch.undo()
    consumers["InboxConsumer"].reset()
    mapping.start()
    stack.client("sqs").send_message(QueueUrl=stack.queue_urls["InboxQueue"], MessageBody="after")
    assert stack.wait_until_idle(5)
    assert [[record["body"] for record in event["Records"]] for event in consumers["InboxConsumer"].events] == [
        ["after"]
    ]


def test_label_links_signed_in_process_point_at_the_stack_s_endpoint_and_download(stack):
    """botocore's standard AWS_ENDPOINT_URL_S3 does what an emulator-only knob did: the product's
    label store, unchanged, signs links a client outside the process can GET."""
    import os

    from functions.adapters.labels import S3Labels

    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    assert endpoint == stack.environment["AWS_ENDPOINT_URL_S3"] == f"http://localhost:{stack.aws_port}"
    labels = S3Labels(stack.bucket_names["Uploads"])
    key = labels.put_label("ord_1", "shp_1", b"%PDF-label", "application/pdf")  # in process, through moto
    url = labels.link(key)
    assert url.startswith(endpoint + "/")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == b"%PDF-label"


def test_event_sources_false_creates_the_mappings_paused(tmp_path: Path):
    from infra.local.stack import running_stack

    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    consumer = Consumer()
    with running_stack(
        template=path,
        stack_name="paused",
        handlers={"ApiFunction": ok, "FilteredConsumer": consumer},
        admin_key_bootstrap=lambda secret: None,
        event_sources=False,
    ) as running:
        assert all(mapping.paused for mapping in running.mappings.values())
        running.client("dynamodb").put_item(TableName=running.table_names["FilteredTable"], Item={"id": {"S": "x"}})
        assert running.wait_until_idle(2)
        assert consumer.events == []
        running.resume_mappings()
        assert running.wait_until_idle(5)
        assert [keys(event) for event in consumer.events] == [["x"]]
