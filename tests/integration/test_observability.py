"""One order followed through the real handlers under moto: the business metrics each prints (EMF on
stdout) and the keys on its log lines, from the API request to the outbox, the execution's input
and every workflow step; the import worker counts the orders it places the same way."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.builders import csv_file, csv_row
from tests.integration.import_support import context, create_import_resources, seed_catalog, split
from tests.integration.test_handlers import event

REQUEST_ID = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"  # requestContext.requestId of the sample event

BUSINESS = {
    "OrdersPlaced",
    "OrderValue",
    "OrdersAllocated",
    "OrdersCancelled",
    "PaymentFailures",
    "Refunds",
    "RefundValue",
}
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]


class Observed:
    """What the handlers print: EMF records (stdout, capsys) and log lines (powertools' handlers
    keep the stdout they were created with, so their streams are swapped for one we read)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]):
        self._capsys = capsys
        self._stream = io.StringIO()
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []
        self._out: list[str] = []

    def start(self) -> None:
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and not type(handler).__module__.startswith("_pytest"):
                    self._swapped.append((handler, handler.stream))
                    handler.stream = self._stream

    def stop(self) -> None:
        for handler, stream in reversed(self._swapped):
            handler.stream = stream

    def _lines(self) -> list[dict[str, Any]]:
        self._out.extend(self._capsys.readouterr().out.splitlines())
        return [
            json.loads(line) for line in [*self._out, *self._stream.getvalue().splitlines()] if line.startswith("{")
        ]

    def metrics(self) -> Metrics:
        """Our business metrics only: {(name, ((dimension, value), ...)): values}. Then forgotten."""
        # Not the functions' technical metrics (Http2xx, OrderWorkflowsStarted, ...): technical() reads those.
        return self._points(BUSINESS)

    def technical(self, *names: str) -> Metrics:
        """The named technical metrics, as metrics() gives the business ones. Then forgotten."""
        return self._points(set(names))

    def _points(self, names: set[str]) -> Metrics:
        found: Metrics = {}
        for record in self._lines():
            for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
                (dimension_names,) = directive["Dimensions"]
                dimensions = tuple((name, record[name]) for name in dimension_names)
                for metric in directive["Metrics"]:
                    if metric["Name"] in names:
                        values = record[metric["Name"]]
                        found.setdefault((metric["Name"], dimensions), []).extend(
                            values if isinstance(values, list) else [values]
                        )
        self._out.clear()
        return found

    def log(self, message: str) -> dict[str, Any]:
        matching = [line for line in self._lines() if line.get("message") == message]
        assert len(matching) == 1, (message, self._lines())
        return matching[0]


@pytest.fixture
def observed(aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Observed]:
    # Every handler module imported first: a powertools Logger creates its handler on import.
    import functions.api.app
    import functions.authorizer.app
    import functions.import_worker.app
    import functions.outbox.app
    import functions.workflow.authorize_payment
    import functions.workflow.create_shipments
    import functions.workflow.fail_payment
    import functions.workflow.reserve_stock
    from functions import business_metrics

    functions.authorizer.app.logger()  # built on its first refusal otherwise, after the swap below
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    # Earlier tests on this worker that called the services outside a handler recorded points that
    # no handler flushed (they wait on this thread): flushed now, and read away with the rest.
    business_metrics.flush()
    capsys.readouterr()
    watching = Observed(capsys)
    watching.start()
    try:
        yield watching
    finally:
        watching.stop()


@pytest.fixture
def stack(aws, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The catalog of the sample event, a labels bucket and a state machine the outbox starts."""
    from core.models import LocationInput, ProductInput, StockCount
    from functions.api.dependencies import container
    from infra.local.stack import forget_warm_containers
    from tests.builders import location_body, product_body

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="test-labels")
    monkeypatch.setenv("LABELS_BUCKET", "test-labels")
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    arn = sfn.create_state_machine(
        name="test-workflow", definition=json.dumps(definition), type="EXPRESS",
        roleArn="arn:aws:iam::123456789012:role/test-workflow",
    )["stateMachineArn"]  # fmt: skip
    monkeypatch.setenv("ORDER_WORKFLOW_ARN", arn)
    forget_warm_containers()
    c = container()
    c.catalog.put_product("TSHIRT-BLK-M", ProductInput.model_validate(product_body()))
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    c.inventory.count("TSHIRT-BLK-M", "wh-east", StockCount(on_hand=10).on_hand)
    return {"state_machine": arn}


def place(**body_changes: Any) -> dict[str, Any]:
    from functions.api.app import lambda_handler

    evt = event("api_place_order.json")
    body = {**json.loads(evt["body"]), **body_changes}
    evt["body"] = json.dumps(body)
    response = lambda_handler(evt, context("ApiFunction"))
    assert response["statusCode"] == 201, response
    return json.loads(response["body"])


def start_from_the_stream(aws, order_id: str) -> dict[str, Any]:
    """Hand the outbox the order's INSERT as the stream would; the input it started the execution with."""
    from functions.outbox.app import lambda_handler

    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}})["Item"]
    record = {
        "eventID": "1", "eventName": "INSERT", "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/test/stream/2026",
        "dynamodb": {"Keys": {"id": {"S": order_id}}, "NewImage": item, "SequenceNumber": "1", "SizeBytes": 1,
                     "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }  # fmt: skip
    assert lambda_handler({"Records": [record]}, context("OutboxFunction")) == {"batchItemFailures": []}
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    (execution,) = sfn.list_executions(stateMachineArn=os.environ["ORDER_WORKFLOW_ARN"])["executions"]
    assert execution["name"] == order_id
    return json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])


def step(module: str, execution_input: dict[str, Any], **parameters: Any) -> None:
    """A workflow task as the ASL calls it: the order id, the execution input as `trace`, parameters."""
    handler = importlib.import_module(f"functions.workflow.{module}").lambda_handler
    handler({"order_id": execution_input["order_id"], "trace": execution_input, **parameters}, context(module))


def test_one_order_from_its_request_to_allocation_counts_once_and_every_line_names_it(aws, stack, observed):
    order = place()

    assert observed.metrics() == {
        ("OrdersPlaced", (("channel", "web"),)): [1.0],
        ("OrderValue", (("channel", "web"), ("currency", "USD"))): [float(order["totals"]["grand_total"]["amount"])],
    }
    placed = observed.log("order placed")
    assert (placed["order_id"], placed["channel"], placed["correlation_id"]) == (order["id"], "web", REQUEST_ID)
    from functions.api.dependencies import container

    (created,) = container().orders.history(order["id"])
    assert created.detail["request_id"] == REQUEST_ID

    execution_input = start_from_the_stream(aws, order["id"])
    assert execution_input == {"order_id": order["id"], "channel": "web", "correlation_id": REQUEST_ID}
    started = observed.log("order workflow")
    assert (started["order_id"], started["channel"], started["correlation_id"]) == (order["id"], "web", REQUEST_ID)

    step("authorize_payment", execution_input, attempt=0)
    step("reserve_stock", execution_input)
    step("create_shipments", execution_input)
    step("create_shipments", execution_input)  # run again, as Express may: nothing more is counted
    assert observed.metrics() == {("OrdersAllocated", (("channel", "web"),)): [1.0]}


def test_a_replayed_request_counts_nothing(aws, stack, observed):
    place()
    observed.metrics()

    place()  # the sample event's Idempotency-Key: the first response again

    assert observed.metrics() == {}


def test_a_declined_payment_is_counted_and_the_failing_step_logs_its_order_channel_and_request(aws, stack, observed):
    from core.errors import PaymentDeclined

    order = place(external_id="web-decline", payment={"method": "test", "token": "tok_decline"})
    execution_input = start_from_the_stream(aws, order["id"])
    observed.metrics()

    with pytest.raises(PaymentDeclined):
        step("authorize_payment", execution_input, attempt=0)
    raised = observed.log("workflow step raised")
    assert (raised["order_id"], raised["channel"], raised["correlation_id"], raised["error"]) == (
        order["id"], "web", REQUEST_ID, "PaymentDeclined",
    )  # fmt: skip
    step("fail_payment", execution_input, error="PaymentDeclined", cause="{}")

    assert observed.metrics() == {("PaymentFailures", (("kind", "declined"), ("operation", "authorize"))): [1.0]}


def test_a_caller_cancel_through_the_api_is_counted_as_requested(aws, stack, observed):
    from functions.api.app import lambda_handler

    order = place()
    observed.metrics()
    evt = event("api_get_order.json")
    resource, path = "/orders/{order_id}/cancel", f"/orders/{order['id']}/cancel"
    evt.update(resource=resource, path=path, httpMethod="POST", body=json.dumps({"reason": "changed my mind"}),
               pathParameters={"order_id": order["id"]})  # fmt: skip
    evt["requestContext"].update(resourcePath=resource, httpMethod="POST", path=f"/v1{path}")

    assert lambda_handler(evt, context("ApiFunction"))["statusCode"] == 200
    assert observed.metrics() == {("OrdersCancelled", (("reason", "requested"),)): [1.0]}


def dynamodb_failing_with(error: Exception) -> Any:
    """Make every DynamoDB call of the API's container raise `error`; the undo."""
    from functions.api.dependencies import container

    events = container().dynamodb.meta.events

    def fail(**_: Any) -> None:
        raise error

    events.register("before-call.dynamodb", fail)
    return lambda: events.unregister("before-call.dynamodb", fail)


INTERNAL_ERROR = {"error": {"code": "internal_error", "message": "internal error", "details": []}}


def list_orders() -> dict[str, Any]:
    """GET /orders: a read, which no idempotency record wraps (an error reaches the handler as raised)."""
    evt = event("api_get_order.json")
    evt.update(resource="/orders", path="/orders", pathParameters=None)
    evt["requestContext"].update(resourcePath="/orders", path="/v1/orders")
    return evt


def api_service() -> str:
    """The `service` the API function's technical metrics carry: the POWERTOOLS_SERVICE_NAME its
    module was first imported under (as on Lambda, read once). In a worker where an embedded stack
    imported it first, that is template.yaml's `oms`, not the suite's FUNCTIONS_SERVICE."""
    from functions.api.app import metrics

    return metrics.service


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug"), ClientError({"Error": {"Code": "ValidationException", "Message": "a bug"}}, "Query")],
    ids=["an exception", "an AWS error that is not busy"],
)
def test_a_500_the_api_answers_itself_is_counted_for_the_alarm_that_calls_a_person(
    aws, stack, observed, monkeypatch, error
):
    # Before: the handler logged `unhandled error` and answered 500, counting only Http5xx (with
    # every 502 and 503): the invocation succeeded, so Lambda's Errors (ApiErrorsAlarm, and the
    # canary's ApiLiveErrorsAlarm) never saw the bug, and Api5xxAlarm waits for 1 % of a minute.
    # The point is counted twice: once for the person (ApiInternalErrorsAlarm), once with the
    # version Lambda runs, which a canary's ApiNewVersionInternalErrorsAlarm names (before, the
    # canary rolled back on the old version's 500s too).
    from functions.api.app import lambda_handler
    from functions.api.errors import INTERNAL_ERRORS_METRIC

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "7")
    restore = dynamodb_failing_with(error)
    try:
        response = lambda_handler(list_orders(), context("ApiFunction"))
    finally:
        restore()

    assert (response["statusCode"], json.loads(response["body"])) == (500, INTERNAL_ERROR)
    service = (("service", api_service()),)
    assert observed.technical(INTERNAL_ERRORS_METRIC, "Http5xx") == {
        (INTERNAL_ERRORS_METRIC, service): [1.0],
        (INTERNAL_ERRORS_METRIC, (*service, ("version", "7"))): [1.0],
        ("Http5xx", service): [1.0],
    }
    assert observed.log("unhandled error")["level"] == "ERROR"


def test_an_order_placed_and_a_busy_503_are_no_internal_errors(aws, stack, observed):
    from functions.api.app import lambda_handler
    from functions.api.errors import INTERNAL_ERRORS_METRIC

    place()
    restore = dynamodb_failing_with(ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "Query"))
    try:
        busy = lambda_handler(list_orders(), context("ApiFunction"))
    finally:
        restore()

    assert busy["statusCode"] == 503
    service = (("service", api_service()),)
    assert observed.technical(INTERNAL_ERRORS_METRIC, "Http2xx", "Http5xx") == {
        ("Http2xx", service): [1.0],
        ("Http5xx", service): [1.0],
    }


def test_imported_orders_are_counted_by_channel_and_their_workflow_names_the_import_line(
    aws, stack, monkeypatch, observed
):
    from core.ports import OrderFilter
    from functions.api.dependencies import container
    from functions.import_worker.app import lambda_handler

    imports = create_import_resources(aws, monkeypatch)
    seed_catalog()
    import_id = split(imports, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    observed.metrics()

    imports.drain(lambda_handler)

    counted = observed.metrics()
    assert counted[("OrdersPlaced", (("channel", "market"),))] == [1.0]
    assert len(counted[("OrderValue", (("channel", "market"), ("currency", "USD")))]) == 1
    (order,), _ = container().orders.list(OrderFilter(channel="market"), 10, None)
    execution_input = start_from_the_stream(aws, order.id)
    assert execution_input["correlation_id"] == f"{import_id}:2"  # the file's line 2, under its header


def test_the_import_worker_logs_each_message_under_its_correlation_id(aws, monkeypatch, observed):
    from functions.import_worker.app import lambda_handler

    imports = create_import_resources(aws, monkeypatch)
    imports.sqs.send_message(QueueUrl=imports.queue_url, MessageBody="not json")

    imports.drain(lambda_handler)

    rejected = observed.log("order from the import queue rejected")
    (sender,) = {r["attributes"]["SenderId"] for e in imports.invocations for r in e["Records"]}
    assert rejected["correlation_id"] == f"sqs:{sender}"


def test_the_authorizer_logs_under_the_request_id_the_api_function_will_log(aws, observed):
    from functions.authorizer.app import lambda_handler

    evt = event("authorizer_request.json")
    evt["headers"] = {**evt["headers"], "Authorization": "Bearer oms_no_such_key_0123456789"}
    evt["multiValueHeaders"] = {**evt["multiValueHeaders"], "Authorization": ["Bearer oms_no_such_key_0123456789"]}

    with pytest.raises(Exception, match="Unauthorized"):
        lambda_handler(evt, context("AuthorizerFunction"))

    line = observed.log("rejected API key")
    assert line["correlation_id"] == REQUEST_ID
    assert line["reason"] == "unknown"
    # The keys powertools' inject_lambda_context sets, set by hand now that the logger is lazy.
    assert {"cold_start", "function_name", "function_request_id", "function_arn"} <= line.keys()


ROOT = Path(__file__).resolve().parents[2]
CORE_LINE = """
import logging
from functions.api.app import logger  # a function's module: its Logger, then the container's module
logger.append_keys(order_id="ord_1", correlation_id="req-1")  # as the handler does for an invocation
logging.getLogger("core.services").warning("a line of core's")
logging.getLogger("functions.adapters.imports").error("a line of an adapter's")
"""


def test_the_log_lines_of_core_and_of_standard_library_loggers_are_json_with_the_invocations_keys():
    # core/ logs through the standard library (it imports no powertools). Left to the Lambda
    # runtime's root handler, its lines were plain text without `level`, `order_id` or the
    # request's id, and the runbooks' queries (README `logs`) found none of them. A fresh process,
    # as a Lambda container is, with the service named before anything is imported.
    env = {**os.environ, "POWERTOOLS_SERVICE_NAME": "oms", "OMS_ENABLE_TEST_PAYMENTS": "true",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", CORE_LINE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )

    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(line["level"], line["message"], line["order_id"], line["correlation_id"]) for line in lines] == [
        ("WARNING", "a line of core's", "ord_1", "req-1"),
        ("ERROR", "a line of an adapter's", "ord_1", "req-1"),
    ]
    assert done.stderr == ""  # nothing left to the root logger's plain text
