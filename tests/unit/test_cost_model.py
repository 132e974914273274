"""The bench's cost model: item sizes by DynamoDB's rules, index writes from the template, log levels."""

import pytest

from bench.cost import Usage, dollars, item_bytes, optional_dollars, wru_for
from bench.workflow import DurationModel, Index, _level, orders_indexes


def test_an_item_weighs_its_attribute_names_and_values():
    assert item_bytes({"id": {"S": "ord_1"}}) == 2 + 5
    assert item_bytes({"doc": {"B": b"\x00" * 900}}) == 3 + 900  # a binary counts its bytes
    assert item_bytes({"version": {"N": "12"}}) == 7 + 2  # one byte per two digits, plus one
    # A list costs 3 bytes plus a byte per element beside the elements themselves.
    assert item_bytes({"history": {"L": [{"S": "ab"}, {"S": "cde"}]}}) == 7 + 3 + (1 + 2) + (1 + 3)
    assert wru_for(1024) == 1 and wru_for(1025) == 2


def test_index_writes_follow_the_template():
    names = (
        "by_customer", "by_channel", "by_status_key", "by_created", "by_sla", "by_pickup_deadline", "by_pending_refund",
        "by_pickup_location",
    )  # fmt: skip
    by_index = dict(zip(names, orders_indexes(), strict=True))
    assert by_index["by_status_key"].writes_on_change("status_key") == 2  # its key moves: delete + put
    assert by_index["by_status_key"].writes_on_change("sla_key") == 1  # a mark rewrites the entry
    assert by_index["by_sla"].writes_on_change("sla_key", "sla_at") == 2
    # `status` itself is no index's key: a change of it alone rewrites no entry (by_sla projects it,
    # but only marked orders are in it, and a status change unmarks them: their entry is removed).
    for name in set(names) - {"by_sla"}:
        assert by_index[name].writes_on_change("status") == 0, name
    assert Index(frozenset({"k"}), None).writes_on_change("status") == 1  # ALL projects everything
    assert by_index["by_customer"].writes_on_put({"customer_id": {}, "created_at": {}}) == 1
    assert by_index["by_customer"].writes_on_put({"created_at": {}}) == 0  # sparse: no key, no entry
    # Only an order with a pickup waiting at its store is in the pickup index, never a new order.
    assert by_index["by_pickup_deadline"].writes_on_put({"customer_id": {}, "created_at": {}, "list_pk": {}}) == 0
    assert by_index["by_pickup_deadline"].writes_on_change("status") == 0
    # Only an order with a refund pending at the gateway is in the refund index, never a new order.
    assert by_index["by_pending_refund"].writes_on_put({"customer_id": {}, "created_at": {}, "list_pk": {}}) == 0
    assert by_index["by_pending_refund"].writes_on_change("status") == 0
    # Only a pickup order is in a store's list: an order shipped home writes no entry, a pickup one
    # at its placement (its store never changes, nor does a status change rewrite the entry).
    shipped_home = {"customer_id": {}, "channel": {}, "created_at": {}, "list_pk": {}}
    assert by_index["by_pickup_location"].writes_on_put(shipped_home) == 0
    assert by_index["by_pickup_location"].writes_on_put({**shipped_home, "pickup_location": {}}) == 1
    assert by_index["by_pickup_location"].writes_on_change("status") == 0


def test_log_lines_are_counted_by_level_and_info_and_lambda_s_own_lines_are_optional():
    assert _level('{"level":"INFO","message":"placed"}\n') == "INFO"
    assert _level('{"_aws":{"Timestamp":1},"Http2xx":[1.0]}\n') == "metrics"
    assert _level("a plain line\n") == "other"
    usage = Usage()
    usage.log_bytes.update({"INFO": 2_000_000_000, "ERROR": 1_000_000_000, "platform": 4_000_000_000})
    usage.traces = 1_000_000
    assert dollars(usage)["CloudWatch Logs (metrics, warnings and errors)"] == 0.5
    # START/END/REPORT are PlatformLogLevel INFO's (the default): at WARN Lambda writes none for an
    # invocation that succeeds, so they are on top of the bill, as LogLevel INFO's lines are.
    assert optional_dollars(usage) == {
        "CloudWatch Logs: INFO lines (LogLevel INFO, the default)": 1.0,
        "CloudWatch Logs: Lambda's START/END/REPORT lines (PlatformLogLevel INFO, the default)": 2.0,
        "X-Ray: traces at 5 % sampling (Tracing: Active)": 5.0 * 0.05,
    }


def test_published_events_are_billed_per_entry_and_a_feature_shows_only_what_it_costs():
    from bench.cost import PRICES
    from bench.workflow import feature_dollars

    usage = Usage(events_published=4)
    usage.calls["sqs.SendMessage"] = 2
    usage.lambda_invocations["EventsFunction"] = 2
    assert dollars(usage)["EventBridge"] == 4 * PRICES["eventbridge_event"]
    # Per million of 2 orders: 2 events, 1 SQS request, 1 invocation and its platform log lines each.
    bill = feature_dollars(usage, 2)
    assert bill["EventBridge"] == pytest.approx(2.00)
    assert bill["SQS"] == pytest.approx(0.40)
    assert bill["Lambda"] == pytest.approx(0.20)
    # 400 bytes of Lambda's START/END/REPORT lines per order, at $0.50 per GB; nothing else was logged.
    assert bill["CloudWatch Logs: Lambda's START/END/REPORT lines (PlatformLogLevel INFO, the default)"] == (
        pytest.approx(0.20)
    )
    assert "CloudWatch Logs (metrics, warnings and errors)" not in bill
    assert "API Gateway" not in bill and "DynamoDB" not in bill  # nothing of theirs was used


def test_requests_are_attributed_to_the_optional_feature_they_are_made_for():
    from bench.workflow import CORE, UsageRecorder, working_for

    recorder = UsageRecorder()
    recorder.access_log_queue = "http://sqs/access-log"
    assert recorder.feature("EventsFunction", "events.PutEvents", {}) == "events"
    assert recorder.feature("EventsFunction", "sqs.SendMessage", {}) == "webhooks"
    assert recorder.feature("EventsFunction", "dynamodb.Query", {}) == "webhooks"  # the subscriptions
    with working_for("aggregates"):
        assert recorder.feature("EventsFunction", "dynamodb.TransactWriteItems", {}) == "aggregates"
    with working_for(CORE):  # a handed-over parcel's reservations read, its stock step finished
        assert recorder.feature("EventsFunction", "dynamodb.BatchGetItem", {}) is None
    assert recorder.feature("WebhookDeliveryFunction", "dynamodb.PutItem", {}) == "webhooks"
    assert recorder.feature("AccessLogFunction", "dynamodb.PutItem", {}) == "access log"
    assert recorder.feature("ApiFunction", "sqs.SendMessage", {"QueueUrl": "http://sqs/access-log"}) == "access log"
    assert recorder.feature("ApiFunction", "dynamodb.PutItem", {}) is None  # the core
    assert recorder.feature("ReserveStockFunction", "dynamodb.UpdateItem", {}) is None


def test_an_update_writes_the_index_entries_it_adds_moves_rewrites_or_removes():
    from bench.workflow import updated_attributes

    by_index = {index.name: index for index in orders_indexes()}
    placed = {"id": {"S": "ord_1"}, "status": {"S": "pending"}, "created_at": {"S": "t0"},
              "status_key": {"S": "pending"}, "status_since": {"S": "t0"}}  # fmt: skip
    update = {
        "UpdateExpression": "SET #status = :status, status_key = :status_key, status_since = :status_since, "
        "history = list_append(history, :entries) REMOVE sla_key, sla_at, pickup_pk, collect_by",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {":status": {"S": "allocated"}, ":status_key": {"S": "allocated"},
                                      ":status_since": {"S": "t1"}, ":entries": {"L": []}},
    }  # fmt: skip
    allocated = updated_attributes(placed, update)
    assert allocated["status"] == {"S": "allocated"} and "history" not in allocated
    assert by_index["by_status_key"].writes_on_update(placed, allocated) == 2  # its key moved
    assert by_index["by_sla"].writes_on_update(placed, allocated) == 0  # only marked orders are in it
    assert by_index["by_channel"].writes_on_update(placed, allocated) == 0  # keys only, keys unchanged
    # Shipping removes the sparse entry: one write, and none once it is gone (delivered).
    shipped = updated_attributes(allocated, {"UpdateExpression": "SET #status = :s REMOVE status_key, status_since",
                                             "ExpressionAttributeNames": {"#status": "status"},
                                             "ExpressionAttributeValues": {":s": {"S": "shipped"}}})  # fmt: skip
    assert "status_key" not in shipped
    assert by_index["by_status_key"].writes_on_update(allocated, shipped) == 1
    assert by_index["by_status_key"].writes_on_update(shipped, {**shipped, "status": {"S": "delivered"}}) == 0
    # A mark adds the late entry and rewrites the status entry in place (it projects sla_key); the
    # same values written again rewrite nothing.
    marked = {**allocated, "sla_key": {"S": "jeopardy"}, "sla_at": {"S": "t0"}}
    assert by_index["by_sla"].writes_on_update(allocated, marked) == 1
    assert by_index["by_status_key"].writes_on_update(allocated, marked) == 1
    assert by_index["by_status_key"].writes_on_update(marked, dict(marked)) == 0


def test_a_phase_measured_on_half_the_orders_is_scaled_to_all_of_them():
    from bench.cost import combined

    placing = Usage(api_requests=100, wru=300.0, sfn_executions=100)
    placing.calls["dynamodb.PutItem"] = 100
    placing.lambda_invocations["ApiFunction"] = 100
    shipping_half = Usage(api_requests=2, wru=150.0)  # two batches for 50 orders
    shipping_half.calls["dynamodb.UpdateItem"] = 100
    shipping_half.lambda_invocations["ApiFunction"] = 2
    shipping_half.log_bytes["INFO"] = 1000

    total = combined((placing, 1.0), (shipping_half, 2.0))

    assert (total.api_requests, total.wru, total.sfn_executions) == (104, 600.0, 100)
    assert total.calls == {"dynamodb.PutItem": 100, "dynamodb.UpdateItem": 200}
    assert total.lambda_invocations == {"ApiFunction": 104}
    assert total.log_bytes == {"INFO": 2000}
    assert placing.api_requests == 100 and shipping_half.wru == 150.0  # the parts are left as they were


def test_a_query_a_function_makes_on_a_worker_thread_it_started_is_counted_as_the_function_s(
    monkeypatch: pytest.MonkeyPatch,
):
    # The reports read their partitions on a ThreadPoolExecutor (DynamoAggregates.report_rows):
    # RUNNING is per thread, so those queries were made under no function and not counted at all.
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.client import BaseClient
    from moto import mock_aws

    from bench.workflow import UsageRecorder
    from infra.local.lambdas import RUNNING

    for owner, name in ((BaseClient, "_make_api_call"), (ThreadPoolExecutor, "submit")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back as they were after the test
    recorder = UsageRecorder()
    recorder.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="aggregates", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        )  # fmt: skip
        RUNNING.function = "oms-local-ApiFunction"
        try:
            with ThreadPoolExecutor(2) as readers:
                query = {"TableName": "aggregates", "KeyConditionExpression": "pk = :pk"}
                pks = ["DAY#1", "DAY#2", "DAY#3"]
                list(readers.map(lambda pk: client.query(**query, ExpressionAttributeValues={":pk": {"S": pk}}), pks))
        finally:
            RUNNING.function = None
    assert recorder.usage.by_function["ApiFunction dynamodb.Query"] == 3
    assert recorder.usage.calls["dynamodb.Query"] == 3


def test_the_duration_model_wraps_every_way_the_runtime_invokes_a_function(monkeypatch):
    # The local gateway invokes with what it waits (API Gateway's 29 s); a wrapper that took only
    # the event broke every API call under `make bench` (502) while the suite stayed green.
    from infra.local.lambdas import LocalFunction

    monkeypatch.setattr(LocalFunction, "invoke", LocalFunction.invoke)  # undone after the test
    durations = DurationModel()
    durations.install()
    function = LocalFunction("Echo", lambda event, context: event, timeout_seconds=3)
    assert function.invoke({"a": 1}) == {"a": 1}
    assert function.invoke({"a": 2}, 29.0) == {"a": 2}
    # An SQS mapping running batches side by side names the container each runs in.
    assert function.invoke({"a": 3}, container=1) == {"a": 3}
    assert function.try_invoke({"a": 4}, container=2) == ({"a": 4}, None)
    assert durations.seconds["Echo"] >= 0 and "Echo" in durations.seconds


def test_a_write_of_an_item_kept_outside_the_orders_table_is_billed_on_the_item_s_size_before_or_after(
    monkeypatch: pytest.MonkeyPatch,
):
    # A stock item holds a reservation per open order line (README, "Allocation never oversells"):
    # 100 open orders make it ~3.4 KB, and DynamoDB bills each write of it by the larger of its
    # sizes before and after (1 unit per started KB), whatever the update sends.
    import boto3
    from botocore.client import BaseClient
    from moto import mock_aws

    from bench.workflow import UsageRecorder
    from infra.local.lambdas import RUNNING

    monkeypatch.setattr(BaseClient, "_make_api_call", BaseClient._make_api_call)  # put back after the test
    recorder = UsageRecorder()
    recorder.install()
    reservations = {f"ord_{i:024d}#L1": {"N": "1"} for i in range(100)}
    key = {"sku": {"S": "TSHIRT"}, "location_id": {"S": "wh-west"}}
    stock = {**key, "available": {"N": "900"}, "reservations": {"M": reservations}}
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="inventory", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "sku", "AttributeType": "S"},
                                  {"AttributeName": "location_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "sku", "KeyType": "HASH"},
                       {"AttributeName": "location_id", "KeyType": "RANGE"}],
        )  # fmt: skip
        client.put_item(TableName="inventory", Item=stock)
        assert 3 * 1024 < item_bytes(stock) < 4 * 1024
        RUNNING.function = "oms-local-ReserveStockFunction"
        try:
            client.update_item(
                TableName="inventory", Key=key, UpdateExpression="SET available = available - :q, reservations.#k = :q",
                ExpressionAttributeNames={"#k": "ord_new#L1"}, ExpressionAttributeValues={":q": {"N": "1"}},
            )  # fmt: skip
            assert recorder.usage.wru == 4  # ~3.4 KB after the write
            # Shipping the lot leaves a small item: billed on what it was before.
            names = {f"#k{i}": k for i, k in enumerate([*reservations, "ord_new#L1"])}
            client.update_item(TableName="inventory", Key=key, UpdateExpression="REMOVE " + ", ".join(
                f"reservations.{name}" for name in names), ExpressionAttributeNames=names)  # fmt: skip
            assert recorder.usage.wru == 8
            client.update_item(TableName="inventory", Key=key, UpdateExpression="SET available = :n",
                               ExpressionAttributeValues={":n": {"N": "899"}})  # fmt: skip
            assert recorder.usage.wru == 9  # now under 1 KB
            client.transact_write_items(TransactItems=[{"Update": {
                "TableName": "inventory", "Key": key, "UpdateExpression": "SET reservations = :all",
                "ExpressionAttributeValues": {":all": {"M": reservations}}}}])  # fmt: skip
            assert recorder.usage.wru == 9 + 2 * 4  # a transaction bills each write twice
        finally:
            RUNNING.function = None


def test_a_batch_write_is_billed_as_the_puts_it_holds():
    # The access-log function stores a message's reads with BatchWriteItem: unbilled, the access
    # log's DynamoDB cost per million reads read 0.
    from bench.workflow import UsageRecorder

    recorder, usage = UsageRecorder(), Usage()
    small = {"pk": {"S": "ACCESS#ord_1"}, "sk": {"S": "t#r1"}, "doc": {"S": "x" * 500}}
    large = {**small, "sk": {"S": "t#r2"}, "doc": {"S": "x" * 1500}}
    params = {"RequestItems": {"catalog": [{"PutRequest": {"Item": small}}, {"PutRequest": {"Item": large}}]}}

    recorder._capacity(usage, "BatchWriteItem", params, {})

    assert usage.wru == 1 + 2
    assert recorder.written_keys("dynamodb", "BatchWriteItem", params) == []  # outside a function: not weighed


def test_a_function_s_cpu_time_is_stretched_to_its_share_of_a_cpu_on_lambda(monkeypatch):
    # Lambda gives a function one vCPU's worth at 1,769 MB and that share below it: 10 ms of one CPU
    # here run 34.6 ms on a 512 MB function, and 10 ms on a 2,048 MB one (a handler uses one thread).
    from types import SimpleNamespace

    import bench.workflow
    from bench.cost import lambda_cpu_seconds
    from infra.local.lambdas import LocalFunction

    assert lambda_cpu_seconds(0.010, 512) == pytest.approx(0.010 * 1769 / 512)
    assert lambda_cpu_seconds(0.010, 2048) == 0.010
    clock = iter([1.000, 1.010, 2.000, 2.010])  # each invocation starts, then ends 10 ms of CPU later
    monkeypatch.setattr(bench.workflow, "time", SimpleNamespace(thread_time=lambda: next(clock)))
    monkeypatch.setattr(LocalFunction, "invoke", LocalFunction.invoke)  # undone after the test
    durations = DurationModel()
    durations.install()
    LocalFunction("Small", lambda event, context: event, memory_mb=512).invoke({})
    LocalFunction("Large", lambda event, context: event, memory_mb=2048).invoke({})
    assert durations.seconds["Small"] == pytest.approx(0.010 * 1769 / 512)
    assert durations.seconds["Large"] == pytest.approx(0.010)


def test_s3_express_is_priced_at_the_aws_faq_s_worked_example():
    from bench.cost import PRICES

    assert PRICES["s3_express_put"] * 1_000 == pytest.approx(0.00113)
    assert PRICES["s3_express_get"] * 1_000 == pytest.approx(0.00003)
    assert (PRICES["s3_express_upload_gb"], PRICES["s3_express_retrieval_gb"]) == (0.0032, 0.0006)
    assert (PRICES["s3_express_gb_month"], PRICES["s3_gb_month"]) == (0.11, 0.023)


def test_a_million_labels_in_s3_express_cost_about_a_third_of_s3_standard_s():
    from bench.cost import LABEL_KEPT_MONTHS, labels_in_s3_express

    # A million built-in carrier labels of 1,732 bytes, kept 90 days (2.96 months).
    usage = Usage(s3_put_bytes=1_000_000 * 1_732)
    usage.calls["s3.PutObject"] = 1_000_000
    assert 2.958 < LABEL_KEPT_MONTHS < 2.960
    # S3 Standard: $5.00 of PUTs and 1.732 GB x 2.96 months x $0.023 = $0.118 of storage.
    standard = 5.00 + 1.732 * LABEL_KEPT_MONTHS * 0.023
    # S3 Express: $1.13 of PUTs, 1.732 GB x $0.0032 uploaded, 1.732 GB x 2.96 months x $0.11 stored.
    express = 1.13 + 1.732 * 0.0032 + 1.732 * LABEL_KEPT_MONTHS * 0.11
    assert express == pytest.approx(1.70, abs=0.01) and standard == pytest.approx(5.12, abs=0.01)
    assert labels_in_s3_express(usage) == pytest.approx(express - standard)
    assert dollars(usage)["S3"] == pytest.approx(5.00)  # the headline's S3: PUTs, no storage


def test_the_recorder_weighs_the_label_bodies_a_function_puts():
    from bench.workflow import UsageRecorder
    from infra.local.lambdas import RUNNING

    recorder = UsageRecorder()
    RUNNING.function = "oms-local-CreateShipmentsFunction"
    try:
        recorder.record("s3", "PutObject", {"Bucket": "labels", "Key": "labels/o/s.pdf", "Body": b"%PDF" * 433})
    finally:
        RUNNING.function = None
    recorder.record("s3", "PutObject", {"Bucket": "labels", "Key": "x", "Body": b"not a function's"})

    assert recorder.usage.calls["s3.PutObject"] == 1 and recorder.usage.s3_put_bytes == 1_732


def test_the_confirmations_table_shows_the_total_with_labels_in_s3_express_beside_carrier_hosted_labels():
    from bench.__main__ import confirmations_markdown

    def summary(total: float) -> dict[str, object]:
        return {
            "api_requests_per_order": 1.0, "api_invocations_per_order": 1.0, "authorizer_invocations_per_order": 0.03,
            "lambda_gb_seconds_per_order": 0.1, "total_per_million_orders": total - 2.0,
            "dollars_per_million_orders": {"API Gateway": 3.5, "Lambda": 2.0, "S3": 5.0},
            "total_with_optional_per_million_orders": total, "labels_in_s3_express_per_million_orders": -3.42,
        }  # fmt: skip

    lines = confirmations_markdown({"confirmations": {"per shipment": summary(37.14), "batched": summary(27.57)},
                                    "confirmation_batch": 50})  # fmt: skip

    hosted = next(i for i, line in enumerate(lines) if "a carrier that hosts its labels" in line)
    assert lines[hosted].endswith("| 32.14 | 22.57 |")
    assert "labels in S3 Express One Zone (`LabelsZoneId` set" in lines[hosted + 1]
    assert lines[hosted + 1].endswith("| 33.72 | 24.15 |")
