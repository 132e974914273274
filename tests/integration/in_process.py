"""The HTTP API in-process: the local gateway's own routing, authorizer, throttle and gateway
responses, read from template.yaml, in front of the real authorizer and API handlers, on a moto
account. The same code as the e2e stack minus its sockets, moto server and pollers, so matrices
of requests run in milliseconds each. `InProcessApi` answers like tests/e2e/client.Api, so the
contract's assertions (assert_error, Catalog) work on it unchanged."""

from __future__ import annotations

import json as jsonlib
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import boto3
import pytest
from moto import mock_aws

from infra.local.gateway import ApiGateway, HttpRequest
from infra.local.lambdas import LocalFunction
from infra.local.moto_patches import apigateway
from infra.local.resources import Resources
from infra.local.template import Template, create_table_request, env_string
from tests.e2e.client import ADMIN, order_body, unique
from tests.fakes import InlineReturnWorkflow
from tests.integration.conftest import ENV_BY_TABLE, FUNCTION_ENV, KEEP_BOTO3_SESSION, access_log_queue, write_copies
from tests.template_iam import not_granted_message, unwatch, watch

# Throttling is not what the matrices test (tests/e2e/test_throttling.py is).
FAST = {"ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}


class Answer:
    """The parts of a requests.Response the tests read."""

    def __init__(self, status_code: int, headers: Any, content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class InProcessApi:
    """Requests through the in-process gateway, as the admin unless told otherwise (`key`)."""

    def __init__(self, gateway: ApiGateway, admin_key: str):
        self.gateway = gateway
        self.admin_key = admin_key

    def request(
        self,
        method: str,
        path: str,
        *,
        key: Any = ADMIN,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: str | bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if key is ADMIN:
            sent["Authorization"] = f"Bearer {self.admin_key}"
        elif key is not None:
            sent["Authorization"] = f"Bearer {key}"
        body = b""
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        elif data is not None:
            body = data.encode() if isinstance(data, str) else data
        response = self.gateway.handle(
            HttpRequest(
                method=method.upper(),
                path=quote(path, safe="/%:@!$&'()*+,;=-._~"),
                query_string=urlencode(params or {}),
                headers=list(sent.items()),
                body=body,
            )
        )
        return Answer(response.status_code, response.headers, response.get_data())

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Answer:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.request("POST", path, **kwargs)

    def orders_of(self, customer_id: str) -> list[dict[str, Any]]:
        """Every order of a customer, newest first, following cursors."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {"customer_id": customer_id, "limit": 100, **({"cursor": cursor} if cursor else {})}
            response = self.get("/orders", params=query)
            assert response.status_code == 200, response.text
            items.extend(response.json()["items"])
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return items


# What each resource type the functions name in their environment is, to the calls' recorder.
_NAMES = {
    "AWS::DynamoDB::Table": "table_names",
    "AWS::SQS::Queue": "queue_urls",
    "AWS::S3::Bucket": "bucket_names",
    "AWS::Events::EventBus": "event_bus_names",
    "AWS::Serverless::StateMachine": "state_machine_arns",
    "AWS::StepFunctions::StateMachine": "state_machine_arns",
}


class InProcessResources:
    """The in-process API as tests/template_iam.py reads a stack: its functions (run by their
    logical ids), and each resource a function's template environment names (`ORDERS_TABLE: !Ref
    OrdersTable`) by the name this process's environment gives that variable when asked (a test
    names its own bucket or queue so)."""

    def __init__(self, template: Template, functions: dict[str, LocalFunction], gateway: ApiGateway):
        self.template, self.functions, self.gateway = template, functions, gateway
        self.usage_plan_ids: dict[str, str] = {}  # logical id -> the usage plan's id in moto
        types = {name: resource["Type"] for name, resource in template.document["Resources"].items()}

        def chosen(value: Any) -> Any:  # an Fn::If's branch, as the stack's parameters choose it
            while isinstance(value, dict) and list(value) == ["Fn::If"]:
                condition, when_true, when_false = value["Fn::If"]
                value = when_true if template.condition(condition) else when_false
            return value

        self._variables = {
            variable: value["Ref"]
            for props in template.functions().values()
            for variable, value in ((name, chosen(v)) for name, v in props["Environment"]["Variables"].items())
            if isinstance(value, dict) and list(value) == ["Ref"] and types.get(value["Ref"]) in _NAMES
        }
        self._kinds = {logical: _NAMES[types[logical]] for logical in self._variables.values()}

    def _named(self, kind: str) -> dict[str, str]:
        import os

        return {
            logical: os.environ[variable]
            for variable, logical in self._variables.items()
            if self._kinds[logical] == kind and os.environ.get(variable)
        }

    table_names = property(lambda self: self._named("table_names"))
    queue_urls = property(lambda self: self._named("queue_urls"))
    bucket_names = property(lambda self: self._named("bucket_names"))
    event_bus_names = property(lambda self: self._named("event_bus_names"))
    state_machine_arns = property(lambda self: self._named("state_machine_arns"))


def usage_plan_variables(template: Template) -> dict[str, str]:
    """The functions' variables that name the usage plans' keys (the shared key's value, the
    per-key plan's name), as `template`'s parameters resolve them."""
    variables = {}
    for props in template.functions().values():
        for name, value in props["Environment"]["Variables"].items():
            if name in ("GATEWAY_SHARED_KEY", "GATEWAY_KEY_PLAN"):
                variables[name] = env_string(template.resolve(value))
    return variables


@contextmanager
def in_process_api(**parameter_overrides: Any) -> Iterator[InProcessApi]:
    """A fresh moto account with the template's tables, the environment the functions read, and
    the gateway in front of the template's authorizer and API function (warm containers forgotten
    before and after: they hold this account's clients)."""
    from functions.bootstrap import Config, bootstrap, forget_warm_containers

    template = Template.load(parameter_overrides={**FAST, **parameter_overrides})
    with pytest.MonkeyPatch.context() as env, mock_aws(config=KEEP_BOTO3_SESSION):
        for name, value in FUNCTION_ENV.items():
            env.setenv(name, value)
        # A parameter given here reaches the functions as the template passes it (`NAME: !Ref P`),
        # over the suite's default: the functions read their environment, not the template.
        for name, parameter in template.parameter_variables():
            if parameter in parameter_overrides:
                env.setenv(name, env_string(template.resolve({"Ref": parameter})))
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        client = boto3.client("dynamodb", region_name="us-east-1")
        for logical_id, props in template.properties("AWS::DynamoDB::Table").items():
            name = f"test-{logical_id}"
            client.create_table(**create_table_request(props, name))
            env.setenv(ENV_BY_TABLE[logical_id], name)
        env.setenv("ACCESS_LOG_QUEUE_URL", access_log_queue())
        forget_warm_containers()
        admin_key = "oms_admin_" + secrets.token_urlsafe(24)
        bootstrap(Config.from_env()).api_keys.ensure_admin(admin_key)
        authorizers = template.api("Auth", {}).get("Authorizers") or {}
        needed = {template.api_function(), *map(template.authorizer_function, authorizers)}
        functions = {
            logical_id: LocalFunction.from_properties(props, logical_id)
            for logical_id, props in template.functions().items()
            if logical_id in needed
        }
        # The stage's usage plans and their keys, and what the functions are told of them: every
        # method the authorizer guards requires the key it answers to be one of them.
        apigateway_client = boto3.client("apigateway", region_name="us-east-1")
        plans = Resources(template)
        plans.create_usage_plans(lambda service: apigateway_client)
        for name, value in usage_plan_variables(template).items():
            env.setenv(name, value)
        gateway = ApiGateway.from_template(template, functions, apigateway=apigateway_client)
        # Every call the functions make is read against their grants, as on every local stack
        # (tests/conftest.py).
        resources = InProcessResources(template, functions, gateway)
        resources.usage_plan_ids = plans.usage_plan_ids  # a plan the API function adds keys to, by id
        watch(resources)
        try:
            with apigateway.PATCH.registered((gateway.api_id, gateway.stage, gateway.flush_authorizer_caches)):
                yield InProcessApi(gateway, admin_key)
        finally:
            forget_warm_containers()
            found = unwatch(resources)
        assert not found, not_granted_message(found, "made by the in-process API's functions before it stopped")


@contextmanager
def in_process_api_with_webhooks(**parameter_overrides: Any) -> Iterator[InProcessApi]:
    """in_process_api with the webhooks service built: its delivery queue named (the requests
    these tests make never send to it) and the local stack's http://127.0.0.1 receivers allowed."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/unused")
        env.setenv("WEBHOOK_ALLOW_LOCAL_HTTP", "true")
        with in_process_api(**parameter_overrides) as started:
            yield started


@contextmanager
def in_process_api_with_labels(webhooks: bool = False, **parameter_overrides: Any) -> Iterator[InProcessApi]:
    """in_process_api (in_process_api_with_webhooks when `webhooks`) with a labels bucket: the
    workflow's steps these tests run in process book parcels, whose shipping labels go there."""
    from functions.bootstrap import forget_warm_containers

    api = in_process_api_with_webhooks if webhooks else in_process_api
    with api(**parameter_overrides) as started, pytest.MonkeyPatch.context() as env:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="test-labels")
        env.setenv("LABELS_BUCKET", "test-labels")
        forget_warm_containers()
        yield started


@contextmanager
def in_process_api_with_events(**parameter_overrides: Any) -> Iterator[InProcessApi]:
    """in_process_api_with_labels with what the events function writes to: an event bus and a
    webhook delivery queue, for tests that hand it the Orders stream themselves."""
    from functions.bootstrap import forget_warm_containers

    with in_process_api_with_labels(**parameter_overrides) as started, pytest.MonkeyPatch.context() as env:
        sqs = boto3.client("sqs", region_name="us-east-1")
        boto3.client("events", region_name="us-east-1").create_event_bus(Name="test-events")
        env.setenv("EVENT_BUS_NAME", "test-events")
        env.setenv("WEBHOOK_QUEUE_URL", sqs.create_queue(QueueName="webhook-deliveries")["QueueUrl"])
        forget_warm_containers()
        yield started


@contextmanager
def returns_run_inline() -> Iterator[None]:
    """The API function's container built from the environment with the returns workflow's steps
    run inline in the request (tests.fakes.InlineReturnWorkflow), not started on Step Functions."""
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap

    workflow = InlineReturnWorkflow()
    built = bootstrap(Config.from_env(), return_workflow=workflow)
    workflow.returns = built.returns
    with container.override(built):
        yield


def issue(api: InProcessApi, *scopes: str, channel: str | None = None) -> str:
    """A new API key with these scopes (bound to `channel` when one is given), issued by the admin."""
    body: dict[str, Any] = {"name": unique("key"), "scopes": list(scopes), **({"channel": channel} if channel else {})}
    response = api.post("/api-keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


def allocated(api: InProcessApi, sku: str, **overrides: Any) -> tuple[str, str]:
    """A new order of one unit of `sku` (order_body's, with `overrides`), run to `allocated`: its id
    and its one shipment's id."""
    response = api.post("/orders", json=order_body((sku, 1), **overrides))
    assert response.status_code == 201, response.text
    order = run_to_allocated(api, response.json()["id"])
    return order["id"], order["shipments"][0]["id"]


def run_to_allocated(api: InProcessApi, order_id: str) -> dict[str, Any]:
    """Run the order workflow's steps for `order_id` in this process, as the state machine would
    (authorize, reserve, book), with a container built from the environment as the step functions
    build theirs; the order as the API then shows it, `allocated`."""
    from functions.bootstrap import Config, bootstrap

    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order_id, attempt=0)
    steps.reserve_stock(order_id)
    steps.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def stocked_alike(container: Any, stock: Sequence[tuple[str, str]], on_hand: int, price: str) -> None:
    """A product at `price` for each (sku, location id) of `stock`, with `on_hand` units counted of it
    there: the products and the first count written by `container`'s repositories (what PUT /products
    and PUT /inventory write), each other count a copy of that stock item under its own key
    (write_copies). A count through the repository took 10 ms of CPU on moto (a hundred skus' 1 s); the
    routes and the counts are no subject of the tests that stock a hundred skus."""
    from tests.builders import product

    (first_sku, first_location), *rest = stock
    for sku in dict.fromkeys(sku for sku, _ in stock):
        container.catalog_repository.put_product(product(sku, price))
    container.inventory_repository.set_on_hand(first_sku, first_location, on_hand, reason="count")
    key = {"sku": {"S": first_sku}, "location_id": {"S": first_location}}
    write_copies(
        boto3.client("dynamodb", region_name="us-east-1"),
        os.environ["INVENTORY_TABLE"],
        key,
        lambda _: ({"sku": {"S": sku}, "location_id": {"S": at}} for sku, at in rest),
    )


def idempotency_records() -> dict[str, dict[str, Any]]:
    """The Idempotency table's items (DynamoDB JSON) by their id: an Idempotency-Key's record is
    the one a request adds."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    return {item["id"]["S"]: item for item in client.scan(TableName=os.environ["IDEMPOTENCY_TABLE"])["Items"]}


class TableStream:
    """A table's stream as the events function's mappings read it (INSERT and MODIFY), from where
    the last read of each shard ended, as a mapping reads on: each read hands only what was written
    since (re-reading the whole stream from its start at every read cost a third of the CPU of the
    modules that read after each step). `from_now`: what was written before it was made is skipped
    (an earlier test's records), as an iterator of type LATEST skips it."""

    def __init__(self, table: str, *, from_now: bool = False) -> None:
        described = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName=table)["Table"]
        self._arn = described["LatestStreamArn"]
        self._streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        self._seen: set[str] = set()
        self._next: dict[str, str] = {}  # shard id -> the iterator where its last read ended
        if from_now:
            for shard in self._shards():
                self._next[shard] = self._iterator(shard, "LATEST")

    def _shards(self) -> list[str]:
        described = self._streams.describe_stream(StreamArn=self._arn)["StreamDescription"]
        return [shard["ShardId"] for shard in described["Shards"]]

    def _iterator(self, shard: str, kind: str) -> str:
        return self._streams.get_shard_iterator(StreamArn=self._arn, ShardId=shard, ShardIteratorType=kind)[
            "ShardIterator"
        ]

    def new_records(self) -> list[dict[str, Any]]:
        records = []
        for shard in self._shards():
            iterator = self._next.get(shard) or self._iterator(shard, "TRIM_HORIZON")
            while iterator:
                read = self._streams.get_records(ShardIterator=iterator, Limit=1000)
                records += read["Records"]
                # An open shard always names where to read on: kept for the next call when this read
                # found nothing new; a closed one's last read names none.
                ahead = read.get("NextShardIterator")
                if not read["Records"] or not ahead:
                    self._next[shard] = ahead or iterator
                    break
                iterator = ahead
        fresh = [r for r in records if r["dynamodb"]["SequenceNumber"] not in self._seen]
        self._seen |= {r["dynamodb"]["SequenceNumber"] for r in fresh}
        return [r for r in fresh if r["eventName"] in ("INSERT", "MODIFY")]
