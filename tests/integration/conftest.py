"""moto-backed fixtures: tables are built from template.yaml's own definitions, never by hand."""

from __future__ import annotations

import functools
import importlib
import json
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import boto3
import pytest
from moto import mock_aws
from moto.core.config import default_user_config
from moto.dynamodb.models import dynamodb_backends
from moto.sqs.models import sqs_backends

from core.pricing import Pricing
from core.services import CaptureService
from functions.adapters.dynamodb import DynamoCatalog, DynamoInventory, DynamoOrders
from functions.plugin_loading import load_plugin_manager
from infra.local.stack import forget_warm_containers
from infra.local.template import Template, create_table_request
from plugins import test_payments
from tests.builders import NOW, location, product
from tests.conftest import FUNCTIONS_SERVICE
from tests.e2e.client import Catalog

ENV_BY_TABLE = {
    "OrdersTable": "ORDERS_TABLE",
    "InventoryTable": "INVENTORY_TABLE",
    "CatalogTable": "CATALOG_TABLE",
    "IdempotencyTable": "IDEMPOTENCY_TABLE",
    "ReturnsTable": "RETURNS_TABLE",
}


def write_copies(
    client: Any, table: str, key: dict[str, Any], copies: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]
) -> None:
    """Copies of the item stored at `key` (DynamoDB JSON), each the item with the attributes `copies`
    makes of it over its own (a new key among them), written 25 a BatchWriteItem: many items alike
    (a hundred skus' stock) set up at a request per 25, where writing each through an adapter took
    10-25 ms of moto's CPU. For tests whose subject is what is done with the items, not their writes."""
    item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    requests = [{"PutRequest": {"Item": {**item, **copy}}} for copy in copies(item)]
    for start in range(0, len(requests), 25):
        assert not client.batch_write_item(RequestItems={table: requests[start : start + 25]})["UnprocessedItems"]


def tables_now(tables: dict[str, str], account_id: str | None = None) -> bytes:
    """The test account's `tables` (Aws.tables) as they stand, items and stream records, pickled together (a
    stream shard keeps its table): what a scenario the first test of a process ran wrote, for each
    later test to start from a copy of (copy_tables), as each account starts from a copy of the
    empty tables (_Baseline). `account_id` names another moto account (a running stack's)."""
    backend = _dynamodb(account_id or _baseline[0].account_id)
    return pickle.dumps({name: backend.tables[name] for name in tables.values()})


def copy_tables(tables: dict[str, str], pickled: bytes, account_id: str | None = None) -> None:
    """The test account's `tables` (Aws.tables) replaced by a copy of `pickled` (tables_now): its
    own, unpickled here, so nothing it writes reaches the next copy."""
    copies = pickle.loads(pickled)
    assert sorted(copies) == sorted(tables.values()), "tables of another template"
    _dynamodb(account_id or _baseline[0].account_id).tables.update(copies)


def stream_records(tables: dict[str, str]) -> int:
    """How many changes the streams of the test account's `tables` (Aws.tables) hold: every write of the Orders,
    Inventory, Catalog and Returns tables adds one."""
    backend = _dynamodb(_baseline[0].account_id)
    shards = (backend.tables[name].stream_shard for name in tables.values())
    return sum(len(shard.items) for shard in shards if shard is not None)


class Aws:
    """The test's moto account: its tables (logical id -> physical name) and a DynamoDB client of
    its own, made on first use (a client costs ~5 ms of CPU, and most tests never touch it)."""

    def __init__(self, tables: dict[str, str]):
        self.tables = tables

    @functools.cached_property
    def dynamodb(self) -> Any:
        return boto3.client("dynamodb", region_name="us-east-1")


# What the functions under test read besides their tables: a moto account, quiet metrics, and the
# `test` gateway the sample orders pay with.
FUNCTION_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_SERVICE_NAME": FUNCTIONS_SERVICE,
    "POWERTOOLS_METRICS_NAMESPACE": "OMS",
    "OMS_ENABLE_TEST_PAYMENTS": "true",
}


# moto resets boto3's default session at each mock_aws() by default, so every test's first client of
# each service loaded its model again (~0.1-0.3 s a test). The session holds no account state (moto's
# backends are reset at each mock_aws() either way) and FUNCTION_ENV's credentials and region are
# the same for every test: one session serves them all.
KEEP_BOTO3_SESSION = {"core": {**default_user_config["core"], "reset_boto3_session": False}}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """A fresh moto account with every table of the template, and the env the functions read."""
    with fresh_account(monkeypatch) as account:
        yield account


@contextmanager
def fresh_account(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """The `aws` fixture's account: moto started (every backend reset), the template's tables and
    access-log queue in it, the env set and the composition root forgotten, before and after."""
    for name, value in FUNCTION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("OMS_DISABLED_PLUGINS", raising=False)
    _configure_the_functions_logging()
    with mock_aws(config=KEEP_BOTO3_SESSION):
        tables, queue_url = _template_resources()
        for logical_id, name in tables.items():
            monkeypatch.setenv(ENV_BY_TABLE[logical_id], name)
        monkeypatch.setenv("ACCESS_LOG_QUEUE_URL", queue_url)
        _reset_composition_root()
        yield Aws(tables)
        _reset_composition_root()


@dataclass(frozen=True)
class _Baseline:
    """The template's tables as CreateTable made them in a process's first `aws` account, pickled
    (never served themselves: each later account gets its own copy), and the access-log queue's URL."""

    account_id: str
    tables: bytes  # pickled: logical id -> moto's Table
    queue_url: str


_baseline: list[_Baseline] = []


def _template_resources() -> tuple[dict[str, str], str]:
    """The template's tables and the access-log queue, in the fresh moto account: (logical id ->
    physical name, the queue's URL). The first account of a process gets them through the API;
    each later one gets a copy of the tables that made (empty, as created: unpickled in 0.4 ms of
    CPU, where copy.deepcopy took 0.8 ms and five CreateTable and a CreateQueue over two new clients
    ~34 ms) and its queue made by the backend call CreateQueue makes."""
    if not _baseline:
        client = boto3.client("dynamodb", region_name="us-east-1")
        tables = {}
        for logical_id, props in _table_properties().items():
            tables[logical_id] = f"test-{logical_id}"
            client.create_table(**create_table_request(props, tables[logical_id]))
        queue_url = access_log_queue()
        made = {logical_id: _dynamodb(_moto_account(queue_url)).tables[name] for logical_id, name in tables.items()}
        _baseline.append(_Baseline(_moto_account(queue_url), pickle.dumps(made), queue_url))
        return tables, queue_url
    baseline = _baseline[0]
    backend = _dynamodb(baseline.account_id)
    copies = pickle.loads(baseline.tables)  # one copy of them all: a stream shard keeps its table
    taken = sorted(table.name for table in copies.values() if table.name in backend.tables)
    assert not taken, f"the moto account already has {taken}: was mock_aws started inside another?"
    backend.tables.update((table.name, table) for table in copies.values())
    sqs_backends[baseline.account_id]["us-east-1"].create_queue(_queue_name(baseline.queue_url), {})
    return {logical_id: table.name for logical_id, table in copies.items()}, baseline.queue_url


# What a set-up left in its account's tables (written_once), pickled, and what it answered, by name.
_written: dict[Any, tuple[bytes, Any]] = {}


def written_once(
    tables: dict[str, str], name: Any, set_up: Callable[[], T], account_id: str | None = None
) -> tuple[T, bool]:
    """What `set_up` answers, with its writes in the account's `tables` (Aws.tables), and whether
    they are a copy. `name` names the set-up in the whole test process (a file that shares a
    fixture shares its copies). The first test to ask for it runs it (through the product's own
    code: a copy is only ever of what it wrote); each later one gets a copy of the tables as it left
    them (tables_now, copy_tables). For the same writes at the start of several tests that are no
    test's subject. Only DynamoDB is copied: what else it leaves (queued messages, files, a clock's
    readings, the test gateway's memory: payments_of) is the caller's to check or carry (its
    answer). `account_id` names another moto account than the `aws` fixture's (a running stack's)."""
    if name in _written:
        pickled, answer = _written[name]
        copy_tables(tables, pickled, account_id)  # a stream read so far is of the tables replaced
        return answer, True
    answer = set_up()
    _written[name] = (tables_now(tables, account_id), answer)
    return answer, False


def payments_of(orders: set[str]) -> dict[str, dict[str, Any]]:
    """What the test gateway (plugins/test_payments.py) remembers of `orders`: the authorizations it
    approved under their keys and what each holds, the captures and refunds it approved under them."""
    ours = {"authorized": {k: v for k, v in test_payments._authorized.items() if k.split(":")[0] in orders}}
    ours["held"] = {ref: test_payments._held[ref] for ref in ours["authorized"].values() if ref in test_payments._held}
    for name in ("captured", "refunded"):
        ours[name] = {k: v for k, v in getattr(test_payments, f"_{name}").items() if k.split(":")[0] in orders}
    return ours


def remember_payments(orders: set[str], remembered: dict[str, dict[str, Any]]) -> None:
    """The test gateway's memory of `orders` made `remembered` (payments_of): what an earlier test
    did to orders of the same ids (an id is made of the order's external id: every test placing
    it places the same order) forgotten. With payments_of, what a set-up's copy (written_once) carries
    of the gateway."""
    for name, entries in payments_of(orders).items():
        memory = getattr(test_payments, f"_{name}")
        for key in entries:
            del memory[key]
        memory.update(remembered[name])


Pending = tuple[dict[Any, list[Any]], set[str]]


def metrics_pending() -> Pending:
    """The business metrics written orders recorded in this thread, and the orders they changed,
    not printed yet (functions.business_metrics: a handler's flush prints them)."""
    from functions import business_metrics

    return {dims: list(points) for dims, points in business_metrics._points().items()}, set(business_metrics._changed())


def metrics_recorded(before: Pending, after: Pending) -> Pending:
    """What was recorded between `before` and `after` (metrics_pending), nothing printed between."""
    assert all(after[0].get(dims, [])[: len(points)] == points for dims, points in before[0].items())
    added = {dims: points[len(before[0].get(dims, [])) :] for dims, points in after[0].items()}
    return {dims: points for dims, points in added.items() if points}, after[1] - before[1]


def record_metrics(points: dict[Any, list[Any]], changed: set[str]) -> None:
    """`points` and `changed` (metrics_recorded) pending as if written now: a set-up's copy's metrics."""
    from functions import business_metrics

    for dims, recorded in points.items():
        business_metrics._points()[dims].extend(recorded)
    business_metrics._changed().update(changed)


def left_off_tables(orders: set[str], before: Pending) -> bytes:
    """What a set-up that began when metrics_pending() answered `before` left outside DynamoDB that
    a copy of its tables (written_once) must carry, pickled: the test gateway's memory of `orders`
    (payments_of) and the business metrics its writes recorded, not printed yet (metrics_recorded)."""
    return pickle.dumps((orders, payments_of(orders), metrics_recorded(before, metrics_pending())))


def restore_left_off(left: bytes) -> None:
    """What left_off_tables kept, back as the set-up left it, for a test starting from a copy."""
    orders, payments, metrics = pickle.loads(left)
    remember_payments(orders, payments)
    record_metrics(*metrics)


def _moto_account(queue_url: str) -> str:
    return queue_url.rsplit("/", 2)[-2]


def _queue_name(queue_url: str) -> str:
    return queue_url.rsplit("/", 1)[-1]


def _dynamodb(account_id: str) -> Any:
    return dynamodb_backends[account_id]["us-east-1"]


def _configure_the_functions_logging() -> None:
    """The functions' logging set up now, in the test's setup, not by the first import of a
    function's module in the test's body: that import (functions/bootstrap.py) makes the "core" and
    "functions" loggers non-propagating, with the functions' own handler, and pytest attaches caplog's
    handler to non-propagating loggers only as each phase starts (_pytest.logging.catching_logs). A
    test that was first on its worker to import a function saw none of core's or an adapter's
    records in caplog, and passed beside a test that had imported one before it."""
    importlib.import_module("functions.bootstrap")


@functools.cache
def _table_properties() -> dict[str, dict[str, Any]]:
    # Read once per test process: reading and checking template.yaml takes ~0.2 s, as long as
    # creating every table in moto, and the template does not change while the tests run.
    return Template.load().properties("AWS::DynamoDB::Table")


def queries_sent(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each Query request the test's DynamoDB client sends from now on, as sent."""
    queries: list[dict[str, Any]] = []
    real = aws.dynamodb.query

    def query(**request: Any) -> dict[str, Any]:
        queries.append(request)
        return real(**request)

    monkeypatch.setattr(aws.dynamodb, "query", query)
    return queries


# An order workflow that does nothing: for tests that run its steps themselves and only need its
# executions started (a restart after a backorder is filled, say) to succeed.
PASS_MACHINE = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


def pass_through_workflow(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A PASS_MACHINE named as the order workflow, in the moto account, its ARN set as
    ORDER_WORKFLOW_ARN: (the Step Functions client, the ARN)."""
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    arn = sfn.create_state_machine(
        name="OrderWorkflow", type="EXPRESS", definition=json.dumps(PASS_MACHINE),
        roleArn="arn:aws:iam::123456789012:role/workflow",
    )["stateMachineArn"]  # fmt: skip
    monkeypatch.setenv("ORDER_WORKFLOW_ARN", arn)
    return sfn, arn


def access_log_queue() -> str:
    """The queue the API sends each read of an order to (template AccessLogQueue), in the moto account."""
    return boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="test-AccessLogQueue")["QueueUrl"]


def _reset_composition_root() -> None:
    # The composition root caches its clients per process, as a warm Lambda container does; each
    # test gets a new moto account, so the cache must go with it.
    forget_warm_containers()


# The Orders adapter, and a capture service over moto that places TSHIRT orders (1,000 in stock at
# wh-east), each a second after the last: for the index and query tests.
@pytest.fixture
def orders(aws):
    return DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])


@pytest.fixture
def capture(aws, orders):
    catalog = DynamoCatalog(aws.dynamodb, aws.tables["CatalogTable"])
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    catalog.put_product(product("TSHIRT"))
    catalog.put_location(location("wh-east"))
    inventory.set_on_hand("TSHIRT", "wh-east", 1000, "count")
    ticks = iter(range(10_000))
    return CaptureService(
        orders, catalog, inventory, Pricing(load_plugin_manager()), clock=lambda: NOW + timedelta(seconds=next(ticks))
    )


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    """The HTTP API in-process (tests/integration/in_process.py), one account per module, for the
    contract's request matrices; modules that need another set-up define their own `api`."""
    from tests.integration.in_process import in_process_api

    with in_process_api(EnableTestPayments="true") as started:
        yield started


@pytest.fixture
def catalog(api: Any) -> Catalog:
    """Products, locations and stock of this test only."""
    return Catalog(api)


def dying_at_the_ship_write(error: Exception) -> Any:
    """A DynamoOrders.update that raises `error` in place of the write recording a shipment
    shipped (the ship's function died after asking for its capture), and writes the rest: patch it
    over DynamoOrders.update."""
    real = DynamoOrders.update

    def update(self: DynamoOrders, new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if entries and entries[0].type == "shipment_shipped":
            raise error
        return real(self, new, expected, entries, **conditions)

    return update


T = TypeVar("T")


def run_threads(threads: Iterable[threading.Thread]) -> None:
    """Start `threads` and wait for them all, moto serialized meanwhile (moto itself is not
    thread-safe; each request stays atomic, as on AWS)."""
    from infra.local.moto_patches import lock

    threads = list(threads)
    lock.PATCH.apply()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        lock.PATCH.undo()


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Each call on its own thread, released together (run_threads); their answers in the calls' order."""
    answers: list[T | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(n: int) -> None:
        barrier.wait()
        answers[n] = calls[n]()

    run_threads(threading.Thread(target=run, args=(n,)) for n in range(len(calls)))
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


@pytest.fixture
def wall_clock_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs timed by the wall (less their waits for MOTO_LOCK), not also less their waits for a CPU,
    for the tests of what a run past its Timeout does, whose handlers sleep past a small Timeout.
    Under load this machine's kernel (6.18, Firecracker) was seen to count almost the whole of a
    sleep as the thread's wait for a CPU (schedstat run_delay grew by 0.096 s over a 0.103 s
    sleep), which RunClock subtracts: the sleeping run was judged within its Timeout (2 runs in 15
    beside three CPU hogs, 2 `make test` runs in 5). What RunClock subtracts is tested apart
    (test_local_runtime.py: a run held behind MOTO_LOCK, a run crowded off its CPU)."""
    from infra.local.moto_patches import lock

    monkeypatch.setattr(lock, "queued_seconds", lambda native_id=None: 0.0)
