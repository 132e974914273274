"""What one running embedded stack serves and says: the API and the AWS endpoint on free ports, a
client's kept connection, the `make run` banner and the functions' compressed webhook retries.

These tests only read the stack (the one item written is on a table nobody else reads here; the
banner's settings are monkeypatched back), so they share one stack: a start and a stop each cost
about 0.2 s of CPU. Its environment is the process's while it runs, which is why they live in a file
of their own, with nothing else running inside it. The fake handlers are test_local_runtime's.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import test_local_runtime as runtime
from tests.integration.test_local_runtime import fake_authorizer_handler, received_events, request


@pytest.fixture(scope="module")
def admin_keys() -> list[str]:
    return []


@pytest.fixture(scope="module")
def stack(admin_keys: list[str]) -> Iterator[Any]:
    from infra.local.stack import running_stack

    received_events.clear()
    with running_stack(
        handlers={"ApiFunction": f"{runtime.__name__}.fake_api_handler", "AuthorizerFunction": fake_authorizer_handler},
        admin_key_bootstrap=admin_keys.append,
        admin_key="oms_admin_test_secret_value",
        event_sources=False,  # the raw item written below must not start the real outbox
    ) as running:
        yield running


def test_stack_serves_the_api_and_the_aws_endpoint_on_free_ports(stack, admin_keys: list[str]):
    import boto3

    assert admin_keys == ["oms_admin_test_secret_value"]
    assert stack.api_port and stack.aws_port and stack.api_port != 8080
    assert os.environ["ORDERS_TABLE"] == "oms-local-OrdersTable"
    assert os.environ["CATALOG_TABLE"] == stack.table_names["CatalogTable"]

    status, body, _ = request(stack.api_url + "/health")
    assert status == 200 and body["function"] == "oms-local-ApiFunction"
    status, body, _ = request(stack.api_url + "/orders/ord_1")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body, response = request(
        stack.api_url + "/orders/ord_1?tag=a&tag=b",
        headers=[("Authorization", "Bearer good"), ("X-Tag", "one"), ("X-Tag", "two")],
    )
    assert status == 200 and body["path"] == "/orders/ord_1"
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    event = received_events[-1]
    assert event["multiValueHeaders"]["X-Tag"] == ["one", "two"]
    assert event["multiValueQueryStringParameters"] == {"tag": ["a", "b"]}
    assert event["requestContext"]["authorizer"]["principalId"] == "key_test"
    status, body, _ = request(stack.api_url + "/orders/boom", headers=[("Authorization", "Bearer good")])
    assert status == 502 and "secret" not in json.dumps(body)

    # The AWS endpoint serves the same in-process backends the handlers use.
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    assert set(dynamodb.list_tables()["TableNames"]) == set(stack.table_names.values())
    ttl = dynamodb.describe_time_to_live(TableName=stack.table_names["CatalogTable"])
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=stack.table_names["OrdersTable"], Item={"id": {"S": "ord_x"}}
    )
    assert dynamodb.scan(TableName=stack.table_names["OrdersTable"])["Count"] == 1


def test_the_api_keeps_a_clients_connection_as_api_gateway_does_but_after_a_body_it_did_not_read(stack):
    host, port = stack.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    requests = [("GET", "/health", None), ("PUT", "/inventory/SKU-1/wh-1", b'{"on_hand": 1}'), ("GET", "/health", None)]
    answers, sockets = [], []
    for method, path, body in requests:
        connection.request(method, path, body=body, headers={"Authorization": "Bearer good"})
        response = connection.getresponse()
        answers.append((response.status, json.loads(response.read())["path"], response.getheader("Connection")))
        sockets.append(connection.sock)
    # A body over the limit, announced and begun but not sent whole: the gateway answers by its
    # Content-Length, unread. Sending all 10 MB raced werkzeug's drain (it waits 10 ms for more),
    # so a loaded machine saw the connection closed mid-send (BrokenPipeError) instead of the 413.
    connection.putrequest("PUT", "/inventory/SKU-1/wh-1")
    connection.putheader("Content-Length", str(10 * 1024 * 1024 + 1))
    connection.endheaders(b"x" * 1024)
    refused = connection.getresponse()
    refused.read()

    assert answers == [(200, "/health", None), (201, "/inventory/SKU-1/wh-1", None), (200, "/health", None)]
    assert sockets[0] is not None and sockets.count(sockets[0]) == 3  # one connection served all three
    assert (refused.status, refused.getheader("Connection")) == (413, "close")
    assert refused.will_close  # the unread body is never taken for the next request
    connection.close()


def test_the_make_run_banner_says_where_everything_is_and_how_to_place_a_first_order(stack, monkeypatch):
    import shlex
    import time

    from core.ids import order_id_for
    from infra.local.__main__ import FIRST_ORDER, banner

    monkeypatch.setattr(stack, "seeded", True)  # as `make run` is, with its demo catalog

    text = banner(stack, time.monotonic())

    assert (
        f"{len(stack.table_names)} tables, {len(stack.gateway.router.routes)} routes, demo data loaded)"
        in text.splitlines()[0]
    )
    for shown in (f"API        {stack.api_url}", f"AWS        {stack.aws_endpoint}", f"Admin key  {stack.admin_key}"):
        assert shown in text
    [place] = [line for line in text.splitlines() if line.startswith("  curl -sS -X POST")]
    assert json.loads(shlex.split(place)[-1]) == FIRST_ORDER
    assert f"{stack.api_url}/orders/{order_id_for('web', 'web-1001')} " in text
    assert f"dynamodb scan --table-name {stack.table_names['OrdersTable']}" in text
    for logical_id, arn in stack.state_machine_arns.items():
        assert f"Workflow {logical_id}:" in text and f"--state-machine-arn {arn}" in text
    # Before: under ReturnWorkflow too, "Watch an order's executions", where they are a return's.
    returns = text.split("Workflow ReturnWorkflow:")[1].split("\n\n")[0]
    assert "Watch its executions:" in returns and "order" not in returns
    for mapping in stack.mappings.values():
        assert f"{mapping.source_label} -> {mapping.function_logical_id}" in text
    assert text.endswith("make import FILE=events/orders-sample.csv\n\nCtrl-C stops it (everything is in memory).")
    assert "\nPlace a first order:\n" in text  # the stack pays with the built-in test method


def test_the_make_run_banner_says_its_first_order_needs_another_method_when_test_payments_are_off(stack, monkeypatch):
    import time

    from infra.local.__main__ import banner

    monkeypatch.setitem(stack.template.parameter_overrides, "EnableTestPayments", "false")
    monkeypatch.setattr(stack, "seeded", True)

    text = banner(stack, time.monotonic())

    assert "Place a first order (test payments are off, OMS_ENABLE_TEST_PAYMENTS=false:" in text


def test_the_make_run_banner_says_its_first_order_needs_a_catalog_when_the_demo_data_is_not_loaded(stack, monkeypatch):
    # OMS_SEED=0: no demo product, location or stock, so the banner's first order would answer 422
    # unknown_sku; it says what to put first instead of offering a call that fails.
    import time

    from infra.local.__main__ import banner

    monkeypatch.setattr(stack, "seeded", False)

    text = banner(stack, time.monotonic())

    assert "Place a first order (no demo catalog, OMS_SEED=0: put the product TSHIRT-BLK-M, a location" in text
    assert "Import a file of orders (CSV or JSON Lines; its skus must be in the catalog) and follow it:" in text


def test_the_functions_retry_webhooks_on_the_local_stacks_minute_while_the_template_keeps_a_day(stack):
    # API.md: retried for at least 24 hours; the local stack compresses that to at least 3 attempts
    # within the first 60 s. The template's parameters may not go under a day (a deploy refuses
    # it), so the stack sets the functions' variables over them instead.
    from core.webhooks import RetrySchedule
    from functions.bootstrap import Config, bootstrap

    compressed = {
        "WEBHOOK_RETRY_BASE_SECONDS": "2",
        "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "8",
        "WEBHOOK_RETRY_WINDOW_SECONDS": "60",
    }
    assert {name: os.environ[name] for name in compressed} == compressed
    assert {name: stack.environment[name] for name in compressed} == compressed
    aws = stack.function_environments["WebhookDeliveryFunction"]  # what each function would see on AWS
    assert {name: aws[name] for name in compressed} == dict(zip(compressed, ("30", "3600", "86400"), strict=True))
    assert stack.function_environments["EventsFunction"]["WEBHOOK_RETRY_WINDOW_SECONDS"] == "86400"

    # What a function reads: the schedule tests/unit/test_webhooks.py shows making 3 attempts in 60 s.
    assert bootstrap(Config.from_env()).retry_schedule == RetrySchedule(2, 8, 60)


def test_a_started_stack_started_again_is_refused_and_keeps_serving(stack):
    # Started again, it would make its tables anew in moto, fail, and stop itself on the way out.
    with pytest.raises(RuntimeError, match="stack already started"):
        stack.start()
    status, body, _ = request(stack.api_url + "/health")
    assert status == 200 and body["function"] == "oms-local-ApiFunction"
