"""Backorders on moto: the per-sku queue in the Inventory table and the conditional top-up, the
Inventory stream consumer filling waiting orders and starting their workflow again, and the
concurrency test: K units arriving one by one on threads for N waiting orders reserve exactly
min(K, demand) units, to the oldest orders first."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import boto3
import pytest

from core.errors import Backordered, StaleVersion, TransientError
from core.ids import ORDER_ID, order_id_for, reservation_key
from core.models import Allocation
from core.ports import OrderFilter, TopUp, WaitingOrder
from core.status import OrderStatus
from functions.adapters.dynamodb import SHORT_COUNT, DynamoBackorders, DynamoInventory, DynamoStalledOrders
from functions.bootstrap import Config, Container, bootstrap
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import Template
from plugins import test_payments
from tests.builders import NOW, location, place_order, product
from tests.fakes import FakeLabels
from tests.integration.conftest import (
    Aws,
    left_off_tables,
    metrics_pending,
    pass_through_workflow,
    restore_left_off,
    run_threads,
    stream_records,
    written_once,
)

S = OrderStatus


class Context:
    function_name = "BackorderFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:BackorderFunction"
    aws_request_id = "req-backorders"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


class Ticking:
    """A clock a second apart per reading, safe across threads: orders get distinct created_at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.readings = 0

    def __call__(self):
        with self._lock:
            self.readings += 1
            return NOW + timedelta(seconds=self.readings)


T = TypeVar("T")


@dataclass
class Shop:
    container: Container
    sfn: Any
    arn: str
    inventory: DynamoInventory
    backorders: DynamoBackorders
    aws: Aws
    clock: Ticking
    counter: int = 0
    as_set_up: tuple[int, int, int] = (0, 0, 0)  # the clock's readings, the counter, the streams' records

    def start_from(self, scenario: Callable[..., T], *args: Any) -> T:
        """What `scenario(shop, *args)` answers, the shop as it leaves it. The process's first test
        to start from it runs it, through the product's own paths; each later one gets a copy of
        what that run left, as each moto account gets a copy of the empty tables: the tables, the
        clock's readings and the count of orders placed (the orders' times and ids are made of
        them), the test gateway's memory of those orders, and the business metrics their writes
        recorded. Its container is the fixture's, new: its caches (products, the network, capture's
        rules) are cold, and their first reads take what the copied tables hold, which is what the
        run's warm caches held (nothing in a scenario writes around them after reading). A scenario
        starts no execution and makes no shipment (no label). A test's first step."""
        assert (self.clock.readings, self.counter, stream_records(self.aws.tables)) == self.as_set_up, (
            "a scenario starts from the shop as its fixture set it up: nothing written before"
        )

        def run() -> tuple[T, int, int, bytes]:
            before = metrics_pending()
            answer = scenario(self, *args)
            assert self.executions() == [], "a scenario whose executions would be lost in its copies"
            left = left_off_tables(self._order_ids(), before)
            return copy.deepcopy(answer), self.clock.readings, self.counter, left

        key = ("test_backorders", scenario.__qualname__, args)
        (answer, readings, counter, left), copied = written_once(self.aws.tables, key, run)
        if copied:
            self.clock.readings, self.counter = readings, counter
            restore_left_off(left)
        return copy.deepcopy(answer)  # what this test does with its answer is not the next one's

    def _order_ids(self) -> set[str]:
        table = self.container.config.orders_table
        items = self.container.dynamodb.scan(TableName=table, ProjectionExpression="id", ConsistentRead=True)["Items"]
        return {item["id"]["S"] for item in items if ORDER_ID.fullmatch(item["id"]["S"])}

    def backordered(self, quantity: int, **extra: Any) -> str:
        self.counter += 1
        body = {"external_id": f"pre-{self.counter}", "lines": [{"sku": "PREORDER", "quantity": quantity}], **extra}
        order_id = self.container.capture.place(place_order(**body), actor="key_web").id
        self.container.workflow.authorize_payment(order_id, attempt=0)
        with pytest.raises(Backordered):
            self.container.workflow.reserve_stock(order_id)
        return order_id

    def backordered_first(self, *quantities: int) -> list[str]:
        """The shop's first orders, of `quantities` PREORDER each, backordered in turn (backordered):
        their ids, the shop started from a copy of them (start_from)."""
        return self.start_from(_backordered_in_turn, *quantities)

    def backordered_pickup(self, store: str) -> str:
        """A pickup order of one unit at `store`, backordered."""
        return self.backordered(1, fulfillment={"type": "pickup", "location_id": store})

    @contextmanager
    def orders_read(self) -> Iterator[list[str]]:
        """The ids of the orders the container reads (GetItem on the Orders table) meanwhile, in order."""
        read: list[str] = []

        def order_read(params: dict[str, Any], **_: Any) -> None:
            if params.get("TableName") == self.container.config.orders_table:
                read.append(params["Key"]["id"]["S"])

        events = self.container.dynamodb.meta.events
        events.register("provide-client-params.dynamodb.GetItem", order_read)
        try:
            yield read
        finally:
            events.unregister("provide-client-params.dynamodb.GetItem", order_read)

    @contextmanager
    def requests(self) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Each DynamoDB request the container sends meanwhile: (operation, parameters)."""
        made: list[tuple[str, dict[str, Any]]] = []

        def sent(params: dict[str, Any], model: Any, **_: Any) -> None:
            made.append((model.name, params))

        events = self.container.dynamodb.meta.events
        events.register("provide-client-params.dynamodb.*", sent)
        try:
            yield made
        finally:
            events.unregister("provide-client-params.dynamodb.*", sent)

    def order(self, order_id: str):
        return self.container.order_repository.get(order_id)

    def held(self, order_id: str) -> int:
        return sum(a.quantity for a in self.order(order_id).allocations)

    def level(self, location_id: str = "wh-east") -> tuple[int, int, int]:
        [level] = self.inventory.levels({"PREORDER"}, [location_id])["PREORDER"]
        return level.on_hand, level.reserved, level.available

    def executions(self) -> list[str]:
        listed = self.sfn.list_executions(stateMachineArn=self.arn)["executions"]
        return sorted(json.loads(self.sfn.describe_execution(executionArn=e["executionArn"])["input"])["order_id"]
                      for e in listed)  # fmt: skip


def _backordered_in_turn(shop: Shop, *quantities: int) -> list[str]:
    # From a copy of its orders but the last: (2, 2, 2, 2, 2, 2) is (2, 2, 2, 2, 2) and one more.
    earlier = shop.backordered_first(*quantities[:-1]) if len(quantities) > 1 else []
    return [*earlier, shop.backordered(quantities[-1])]


@pytest.fixture
def shop(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    sfn, arn = pass_through_workflow(monkeypatch)
    container = bootstrap(Config.from_env(), clock=Ticking(), label_store=FakeLabels())  # labels: not the subject
    shop = Shop(container, sfn, arn, container.inventory_repository, container.backorders, aws, container.clock)
    shop.start_from(_catalog)
    shop.as_set_up = (shop.clock.readings, shop.counter, stream_records(aws.tables))
    yield shop


def _catalog(shop: Shop) -> None:
    """A PREORDER product that allows backorders, and two warehouses."""
    catalog = shop.container.catalog_repository
    catalog.put_product(product("PREORDER", "30.00", allow_backorder=True))
    catalog.put_location(location("wh-east"))
    catalog.put_location(location("wh-west", name="West warehouse", latitude=39.53, longitude=-119.81))


@pytest.fixture(autouse=True)
def only_granted_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call the backorders function makes in these tests (fills, wakes and their pages, reorder
    points, a long history moved by a fill) is one the template grants it, by table, key and action:
    moto lets through what AWS refuses."""
    if "shop" not in request.fixturenames:
        yield
        return
    from tests.template_iam import handlers_checked

    shop = request.getfixturevalue("shop")
    aws = request.getfixturevalue("aws")
    handlers = {"BackorderFunction": "functions.backorders.app"}
    with handlers_checked(monkeypatch, handlers, aws.tables, state_machine_arns={"OrderWorkflow": shop.arn}):
        yield


@pytest.mark.parametrize("turn", [1, 2])
def test_a_test_started_from_a_copy_sees_nothing_another_test_wrote_in_its_own(shop, turn):
    # Whichever turn runs second in the process starts from a copy (the first may too): it finds
    # the order as the scenario left it, not cancelled, its card not voided, no stock received, and
    # the business metrics its placing recorded still to be printed.
    from functions import business_metrics

    business_metrics.flush()  # what earlier tests recorded and no handler printed: gone
    [order_id] = shop.backordered_first(1)
    points, changed = metrics_pending()
    assert [name for recorded in points.values() for name, _, _ in recorded].count("OrdersPlaced") == 1
    assert changed == {order_id}
    order = shop.order(order_id)
    assert (order.status, order.version, shop.held(order_id)) == (S.BACKORDERED, 3, 0)
    assert shop.inventory.levels({"PREORDER"})["PREORDER"] == []
    assert _queued(shop) == [order_id] and not test_payments._held[order.payment.authorization].voided
    newer = shop.backordered(2)  # the count of orders placed and the clock go on from the copy's
    assert newer == order_id_for("web", "pre-2") and shop.order(newer).created_at > order.created_at

    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    _cancel_recorded(shop, order_id)

    assert test_payments._held[order.payment.authorization].voided and _queued(shop) == [newer]


# --- The adapters -------------------------------------------------------------------------------------


def test_a_fill_reserves_and_records_in_one_write_or_not_at_all(shop):
    [order_id] = shop.backordered_first(3)
    order = shop.order(order_id)
    key = reservation_key(order_id, order.lines[0].line_id)
    shop.inventory.set_on_hand("PREORDER", "wh-east", 2, reason="count")
    shop.inventory.set_on_hand("PREORDER", "wh-west", 1, reason="count")
    fills = shop.backorders
    allocations = [Allocation(line_id=order.lines[0].line_id, location_id="wh-east", quantity=2)]
    new, entry = order.reserve_backordered(allocations, at=NOW, actor="backorders")

    with pytest.raises(StaleVersion):  # more than is available at wh-west: nothing at all is written
        fills.fill(
            new, order, [entry], [TopUp("PREORDER", "wh-east", key, 0, 2), TopUp("PREORDER", "wh-west", key, 0, 2)]
        )
    with pytest.raises(StaleVersion):  # a reservation that is not what was read
        fills.fill(new, order, [entry], [TopUp("PREORDER", "wh-east", key, 1, 2)])
    with pytest.raises(StaleVersion):  # it would take the unit wh-east keeps back (safety stock)
        fills.fill(new, order, [entry], [TopUp("PREORDER", "wh-east", key, 0, 2, keep=1)])
    assert shop.level("wh-east") == (2, 0, 2) and shop.order(order_id) == order

    fills.fill(new, order, [entry], [TopUp("PREORDER", "wh-east", key, 0, 2)])
    assert shop.level("wh-east") == (2, 2, 0) and shop.order(order_id) == new
    with pytest.raises(StaleVersion):  # the same fill again: the order moved on
        fills.fill(new, order, [entry], [TopUp("PREORDER", "wh-east", key, 2, 2)])
    assert shop.inventory.reservations({("PREORDER", "wh-east"): [key]}) == {("PREORDER", "wh-east", key): 2}


def _backordered_past_the_history_threshold(shop, aws):
    """A backordered order (one PREORDER unit) whose history was written past the threshold by a
    repository that keeps no pages, as a move that gave way to a racing write leaves it."""
    from functions.adapters.dynamodb import HISTORY_KEPT_BYTES, DynamoOrders
    from tests.integration.test_dynamodb_history_pages import _history_bytes, _item, _tens

    order_id = shop.backordered(1)
    order = shop.order(order_id)
    plain = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])  # no pages: it never moves
    for entries in _tens(30):
        plain.update(order, order, entries)
    assert _history_bytes(_item(aws, order_id)) > HISTORY_KEPT_BYTES
    return order_id, order


def test_a_fill_moves_a_history_past_the_threshold_to_its_pages(shop, aws):
    # A move that gave way to a racing write leaves the history past the threshold until the order's
    # next write, which may be its fill: that write moves it as an UpdateItem's does.
    from functions.adapters.dynamodb import HISTORY_KEPT_BYTES, HISTORY_MOVED
    from tests.integration.test_dynamodb_history_pages import _history_bytes, _item

    order_id, order = _backordered_past_the_history_threshold(shop, aws)
    shop.inventory.set_on_hand("PREORDER", "wh-east", 1, reason="count")
    key = reservation_key(order_id, order.lines[0].line_id)
    new, entry = order.reserve_backordered(
        [Allocation(line_id=order.lines[0].line_id, location_id="wh-east", quantity=1)], at=NOW, actor="backorders"
    )

    shop.backorders.fill(new, order, [entry], [TopUp("PREORDER", "wh-east", key, 0, 1)])

    item = _item(aws, order_id)
    assert HISTORY_MOVED in item and _history_bytes(item) <= HISTORY_KEPT_BYTES
    stored, history = shop.container.order_repository.history(order_id, consistent=True)
    assert stored == new
    assert [h.actor for h in history if h.actor.startswith("n")] == [f"n{n}" for n in range(30)]
    assert history[-1] == entry


def test_an_arrival_filling_an_order_whose_history_is_past_the_threshold_moves_it_to_its_pages(shop, aws):
    # The function's fill writes the order and moves its history to a page of the Catalog table
    # (ORDERHISTORY#<id>): one of the partitions template.yaml holds its Catalog writes to, each
    # call checked against them here.
    from functions.adapters.dynamodb import HISTORY_KEPT_BYTES, HISTORY_MOVED
    from tests.integration.test_dynamodb_history_pages import _history_bytes, _item, _pages

    order_id, _ = _backordered_past_the_history_threshold(shop, aws)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")

    assert consume(shop, record("wh-east", 0, 1)) == {"batchItemFailures": []}

    item = _item(aws, order_id)
    assert HISTORY_MOVED in item and _history_bytes(item) <= HISTORY_KEPT_BYTES
    assert shop.held(order_id) == 1 and shop.executions() == [order_id]
    [page] = _pages(aws, order_id)
    _, history = shop.container.order_repository.history(order_id, consistent=True)
    assert [h.actor for h in history if h.actor.startswith("n")] == [f"n{n}" for n in range(30)]
    assert len(page["entries"]["L"]) == len(history) - 1  # all but the first


def test_the_queue_is_oldest_first_paged_idempotent_and_invisible_to_stock_reads(shop):
    queue = shop.backorders
    entries = [WaitingOrder(NOW + timedelta(seconds=n), f"ord_{chr(97 + n) * 24}") for n in (2, 0, 1)]
    for entry in entries:
        queue.add("PREORDER", entry)
    queue.add("PREORDER", entries[0])
    shop.inventory.set_on_hand("PREORDER", "wh-east", 1, reason="count")

    oldest = sorted(entries)
    assert queue.waiting("PREORDER", None, 10) == oldest
    assert queue.waiting("PREORDER", None, 2) == oldest[:2]
    assert queue.waiting("PREORDER", oldest[1], 2) == oldest[2:]
    assert queue.waiting("OTHER", None, 10) == []
    assert [lvl.location_id for lvl in shop.inventory.levels({"PREORDER"})["PREORDER"]] == ["wh-east"]
    assert shop.container.inventory.summary("PREORDER").available == 1
    queue.remove("PREORDER", oldest[0])
    queue.remove("PREORDER", oldest[0])
    assert queue.waiting("PREORDER", None, 10) == oldest[1:]


def test_an_entry_leaves_only_when_written_before_the_write_that_ended_its_wait(shop):
    queue = shop.backorders
    old, new = (WaitingOrder(NOW + timedelta(seconds=n), f"ord_{chr(97 + n) * 24}") for n in (0, 1))
    queue.add("PREORDER", old)  # written before entries said their version
    queue.add("PREORDER", WaitingOrder(new.created_at, new.order_id, version=4))

    queue.leave("PREORDER", new, 4)  # its order wrote it at the version that ended the wait, or later
    queue.leave("PREORDER", old, 1)
    assert queue.waiting("PREORDER", None, 10) == [new]
    queue.leave("PREORDER", new, 5)
    queue.leave("PREORDER", new, 5)  # gone: nothing
    assert queue.waiting("PREORDER", None, 10) == []


# --- The stream consumer -------------------------------------------------------------------------------


def record(location_id: str, old: int | None, new: int, sku: str = "PREORDER", sequence: str = "1") -> dict[str, Any]:
    images: dict[str, Any] = {"NewImage": {"available": {"N": str(new)}}}
    if old is not None:
        images["OldImage"] = {"available": {"N": str(old)}}
    return {
        "eventID": f"{sku}-{location_id}-{old}-{new}",
        "eventName": "MODIFY" if old is not None else "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"sku": {"S": sku}, "location_id": {"S": location_id}}, "SequenceNumber": sequence,
                     **images},
    }  # fmt: skip


@contextmanager
def another_functions_calls() -> Iterator[None]:
    """What a test does while the backorders function runs (a request racing it) is not that
    function's: its calls are not read against its grants."""
    from infra.local.lambdas import RUNNING

    running, RUNNING.function = getattr(RUNNING, "function", None), None
    try:
        yield
    finally:
        RUNNING.function = running


def consume(shop: Shop, *records: dict[str, Any], context: Any = None) -> dict[str, Any]:
    from functions.backorders import app

    with app.container.override(shop.container):
        return app.lambda_handler({"Records": list(records)}, context or Context())


class Left(Context):
    """An invocation with `millis` left at every ask."""

    def __init__(self, millis: int):
        self._millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self._millis


def test_an_arrival_fills_the_oldest_orders_and_starts_the_workflow_of_those_complete(shop):
    first, second = shop.backordered_first(2, 2)
    shop.inventory.adjust("PREORDER", "wh-east", 3, reason="receipt")

    answer = consume(shop, record("wh-east", 0, 3))

    assert answer == {"batchItemFailures": []}
    assert (shop.held(first), shop.held(second)) == (2, 1)
    assert shop.level() == (3, 3, 0)
    assert shop.executions() == [first]
    # Queued until allocated: should the execution fail, the next arrival starts it again.
    assert [e.order_id for e in shop.backorders.waiting("PREORDER", None, 10)] == [first, second]
    # And found by the reconciler, should that execution die (the fill's write adds its index
    # entry; the order still waiting for stock has none).
    stalled = DynamoStalledOrders(shop.container.dynamodb, shop.container.config.orders_table)
    assert list(stalled.filled_backorders(NOW + timedelta(days=1))) == [first]
    shop.container.workflow.create_shipments(first)  # what the started execution runs
    assert shop.order(first).status is S.ALLOCATED
    assert [e.order_id for e in shop.backorders.waiting("PREORDER", None, 10)] == [second]
    assert list(stalled.filled_backorders(NOW + timedelta(days=1))) == []  # its allocation removed the entry
    assert shop.order(second).status is S.BACKORDERED


def test_an_order_sourced_before_the_stream_hands_out_an_arrival_leaves_the_older_orders_their_units(shop):
    first, second = shop.backordered_first(2, 1)
    shop.inventory.adjust("PREORDER", "wh-east", 4, reason="receipt")  # its record not consumed yet

    newer = shop.backordered(3)  # reads the queue of the sku: 3 of the 4 units are theirs
    consume(shop, record("wh-east", 0, 4))

    assert (shop.held(first), shop.held(second), shop.held(newer)) == (2, 1, 1)
    assert shop.executions() == [first, second]
    assert shop.level() == (4, 4, 0)


def one_shipment_holding_the_unit_at_wh_west(shop: Shop, *waiting: int) -> list[str]:
    """max_shipments 1 and the one PREORDER at wh-west: an order of 3 holds it, backordered; then
    orders of `waiting` units, backordered holding nothing."""
    from core.sourcing_rules import SourcingRulesInput

    if waiting:
        earlier = shop.start_from(one_shipment_holding_the_unit_at_wh_west, *waiting[:-1])
        return [*earlier, shop.backordered(waiting[-1])]
    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    shop.inventory.set_on_hand("PREORDER", "wh-west", 1, reason="count")
    return [shop.backordered(3)]


def rules_record(shop: Shop, version: int, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Catalog stream's record of a sourcing rules version's item as stored now: its insert,
    or with `old`, the change from that image."""
    key = {"pk": {"S": "SOURCING_RULES"}, "sk": {"S": f"v{version:010d}"}}
    item = shop.container.dynamodb.get_item(TableName=shop.container.config.catalog_table, Key=key)["Item"]
    images = {"NewImage": item, **({"OldImage": old} if old is not None else {})}
    return {
        "eventID": f"rules-{version}-{len(item)}",
        "eventName": "MODIFY" if old is not None else "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": key, "SequenceNumber": "2", **images},
    }


def test_a_new_version_of_the_sourcing_rules_wakes_backordered_orders_a_page_at_a_time(shop, monkeypatch):
    from core.sourcing_rules import SourcingRules

    rules = shop.container.sourcing_rules
    rules.add(SourcingRules(version=1, excluded_locations=["wh-west"]))
    first, second = shop.backordered(1), shop.backordered(1)
    shop.inventory.adjust("PREORDER", "wh-west", 5, reason="receipt")
    consume(shop, record("wh-west", 0, 5))
    assert (shop.held(first), shop.held(second)) == (0, 0)  # excluded: no arrival may fill them there
    monkeypatch.setattr("core.backorders.PAGE", 1)

    rules.add(SourcingRules(version=2))  # wh-west allowed again
    inserted = rules_record(shop, 2)
    assert consume(shop, inserted) == {"batchItemFailures": []}
    assert (shop.held(first), shop.held(second)) == (1, 0)
    handed_on = rules_record(shop, 2, old=inserted["dynamodb"]["NewImage"])
    consume(shop, handed_on)  # the page handed on

    assert (shop.held(first), shop.held(second)) == (1, 1)
    assert shop.executions() == sorted([first, second])
    assert shop.level("wh-west") == (5, 2, 3)
    # Both records pass the template's own filter; a removal of the item does not.
    events = Template.load().functions()["BackorderFunction"]["Events"]
    patterns = compile_filters(events["SourcingRulesStream"]["Properties"]["FilterCriteria"], "test")
    assert matches_filters(patterns, inserted) and matches_filters(patterns, handed_on)
    assert not matches_filters(patterns, {**handed_on, "eventName": "REMOVE"})


def test_a_new_version_that_leaves_an_order_nowhere_to_fill_sends_it_back_to_be_sourced(shop):
    """max_shipments 1, the order holds a unit at wh-west, then the rules exclude wh-west: no fill
    may add wh-east nor take more at wh-west. It waited backordered, paid for, beside the 2 units
    at wh-east (not its whole order, which would have sent it to be sourced at their arrival)."""
    from core.sourcing_rules import SourcingRulesInput
    from functions.outbox.app import _sent_back

    service = shop.container.sourcing_rules_service
    [order_id] = shop.start_from(one_shipment_holding_the_unit_at_wh_west)
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    consume(shop, record("wh-east", 0, 2))
    assert shop.held(order_id) == 1
    before = shop.order(order_id)

    service.replace(SourcingRulesInput(max_shipments=1, excluded_locations=["wh-west"]), by="key_ops")
    inserted = rules_record(shop, 2)
    assert consume(shop, inserted) == {"batchItemFailures": []}
    consume(shop, inserted)  # redelivered: nothing twice

    order = shop.order(order_id)
    assert order.status is S.AUTHORIZED and order.version == before.version + 1
    assert _sent_back({"status": before.status.value}, {"status": order.status.value})  # the outbox starts it
    with pytest.raises(Backordered):  # sourced under the new rules: from wh-east, waiting for one more there
        shop.container.workflow.reserve_stock(order_id)
    order = shop.order(order_id)
    assert order.status is S.BACKORDERED and order.allocations == [
        Allocation(line_id="L1", location_id="wh-east", quantity=2)
    ]
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 0, 1), (2, 2, 0))


def test_two_wakes_racing_on_one_order_count_it_sent_back_once(shop):
    """Two wakes of the new rules read the stranded order backordered at once: the second sent it back
    between the first's read and its write, so the first's write was refused (the order no longer
    backordered), and it counts nothing sent back (OrdersSourcedAgain, its `order sourced again`
    line): the order is counted by the wake whose write sent it back."""
    from core.sourcing_rules import SourcingRulesInput
    from core.workflow import Workflow

    service = shop.container.sourcing_rules_service
    [order_id] = shop.start_from(one_shipment_holding_the_unit_at_wh_west)
    service.replace(SourcingRulesInput(max_shipments=1, excluded_locations=["wh-west"]), by="key_ops")
    before = shop.order(order_id)
    allocator, real, other = shop.container.backorder_allocator, Workflow.source_again, []

    def the_other_wake_first(workflow: Workflow, *args: Any, **kwargs: Any) -> Any:
        if not other:
            other.append(None)
            other[0] = allocator.rules_changed(2)
        return real(workflow, *args, **kwargs)

    with pytest.MonkeyPatch.context() as racing:
        racing.setattr(Workflow, "source_again", the_other_wake_first)
        first = allocator.rules_changed(2)

    assert other[0].sourced_again == [order_id]
    assert first.sourced_again == []
    order = shop.order(order_id)
    assert order.status is S.AUTHORIZED and order.version == before.version + 1


def test_two_wakes_racing_to_send_one_order_back_whole_count_it_sent_back_once(shop):
    """As above, for an order the rules let take more units where it is, but which max_shipments keeps
    from the location that now has its whole order (Workflow.source_again_whole): the rules stop
    excluding wh-east, where a PREORDER and a BOOK wait, and two wakes read the order at once. The
    second sent it back whole between the first's read and its write, so the first's write was
    refused, and it counts nothing sent back: the order is counted by the wake whose write did."""
    from core.sourcing_rules import SourcingRulesInput
    from core.workflow import Workflow

    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    service = shop.container.sourcing_rules_service
    service.replace(SourcingRulesInput(max_shipments=1, excluded_locations=["wh-east"]), by="key_ops")
    shop.inventory.set_on_hand("PREORDER", "wh-east", 1, reason="count")
    shop.inventory.set_on_hand("BOOK", "wh-east", 1, reason="count")
    rules = service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    before = shop.order(order_id)
    allocator, real, other = shop.container.backorder_allocator, Workflow.source_again_whole, []

    def the_other_wake_first(workflow: Workflow, *args: Any, **kwargs: Any) -> Any:
        if not other:
            other.append(None)
            other[0] = allocator.rules_changed(rules.version)
        return real(workflow, *args, **kwargs)

    with pytest.MonkeyPatch.context() as racing:
        racing.setattr(Workflow, "source_again_whole", the_other_wake_first)
        first = allocator.rules_changed(rules.version)

    assert other[0].sourced_again == [order_id]
    assert first.sourced_again == []
    order = shop.order(order_id)
    assert order.status is S.AUTHORIZED and order.version == before.version + 1
    _shipped_whole_from_wh_east(shop, order_id)


@pytest.fixture
def metrics_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """EMF on stdout, starting and leaving empty (powertools keeps one metric set for every instance)."""
    from functions.backorders.app import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def test_an_order_a_wake_sends_back_to_be_sourced_is_logged_and_counted(shop, metrics_on, capsys, caplog):
    """An operator sees each order a wake sends back (one line with its id) and how many: not only
    in each order's history. Counted once: a redelivered record sends nothing back again."""
    from core.sourcing_rules import SourcingRulesInput
    from tests.integration.test_reconciler import emitted

    service = shop.container.sourcing_rules_service
    [order_id] = shop.start_from(one_shipment_holding_the_unit_at_wh_west)
    service.replace(SourcingRulesInput(max_shipments=1, excluded_locations=["wh-west"]), by="key_ops")
    inserted = rules_record(shop, 2)
    capsys.readouterr()

    assert consume(shop, inserted, inserted) == {"batchItemFailures": []}  # the second: redelivered

    assert shop.order(order_id).status is S.AUTHORIZED
    assert emitted(capsys.readouterr().out) == {"OrdersSourcedAgain": 1}
    logged = [(r.getMessage(), r.order_id) for r in caplog.records if r.getMessage() == "order sourced again"]
    assert logged == [("order sourced again", order_id)]


def test_records_that_bring_no_units_do_nothing(shop):
    [order_id] = shop.backordered_first(1)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    queue_item = record(f"#backorder#x#{order_id}", None, 1)

    consume(shop, record("wh-east", 2, 1), record("wh-east", 1, 1), queue_item)

    assert shop.held(order_id) == 0 and shop.executions() == []
    consume(shop, record("wh-east", None, 1))  # a new stock record is an arrival too
    assert shop.held(order_id) == 1 and shop.executions() == [order_id]


def test_a_redelivered_batch_reserves_nothing_twice(shop):
    [order_id] = shop.backordered_first(3)
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    batch = [record("wh-east", 0, 2)]

    consume(shop, *batch)
    consume(shop, *batch)

    assert shop.held(order_id) == 2 and shop.level() == (2, 2, 0)
    assert [entry.type for entry in shop.container.order_repository.history(order_id)[1]].count("stock_reserved") == 1


def test_arrivals_there_is_no_time_left_for_are_left_to_the_next_batch_and_each_order_filled_once(shop):
    """The backorder function worked through its whole batch whatever time it had left: 25 arrivals,
    each a walk of up to 25 orders read and filled, ran past the function's 10 s Timeout once
    DynamoDB throttled, and the stream retried the batch whole, bisected, every walk before the
    timeout done again. With less than RECORD_RESERVE_MILLIS left, no record after the first is
    started: the rest are reported failed unprocessed, and the next batch, from the first of them,
    fills the orders they bring units for, once."""
    from functions.backorders.app import RECORD_RESERVE_MILLIS

    shop.container.catalog_repository.put_product(product("PREORDER2", "30.00", allow_backorder=True))
    older, younger = shop.backordered(1), shop.backordered(1, lines=[{"sku": "PREORDER2", "quantity": 1}])
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    shop.inventory.adjust("PREORDER2", "wh-east", 1, reason="receipt")
    batch = [record("wh-east", 0, 1, sequence="1"), record("wh-east", 0, 1, sku="PREORDER2", sequence="2")]

    assert consume(shop, *batch, context=Left(RECORD_RESERVE_MILLIS - 1)) == {
        "batchItemFailures": [{"itemIdentifier": "2"}]
    }
    assert (shop.held(older), shop.held(younger)) == (1, 0)  # the first record always
    assert shop.executions() == [older]
    assert consume(shop, *batch[1:], context=Left(RECORD_RESERVE_MILLIS)) == {"batchItemFailures": []}
    assert (shop.held(older), shop.held(younger)) == (1, 1)
    assert shop.executions() == sorted([older, younger])


def test_an_arrival_follows_the_stored_sourcing_rules_max_shipments(shop):
    from core.sourcing_rules import SourcingRulesInput

    shop.inventory.set_on_hand("PREORDER", "wh-west", 1, reason="count")
    older = shop.backordered(3)  # holds the unit at wh-west
    younger = shop.backordered(2)
    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")

    assert consume(shop, record("wh-east", 0, 2)) == {"batchItemFailures": []}

    # The older order may not add wh-east (a second shipment): the units go to the younger one.
    assert [(a.location_id, a.quantity) for a in shop.order(older).allocations] == [("wh-west", 1)]
    assert [(a.location_id, a.quantity) for a in shop.order(younger).allocations] == [("wh-east", 2)]
    assert shop.executions() == [younger]


# --- Concurrency ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orders", "each", "units"), [(6, 2, 7), (4, 3, 15), (5, 1, 5)])
def test_k_units_arriving_on_threads_fill_exactly_min_k_demand_oldest_first(shop, orders, each, units):
    ids = shop.backordered_first(*[each] * orders)
    allocator = shop.container.backorder_allocator
    errors: list[BaseException] = []

    def arrive(location_id: str) -> None:
        try:
            shop.inventory.adjust("PREORDER", location_id, 1, reason="receipt")
            while True:  # the stream retries a record whose fills kept losing races
                try:
                    allocator.arrived("PREORDER", location_id)
                    return
                except TransientError:
                    continue
        except BaseException as error:
            errors.append(error)

    run_threads(threading.Thread(target=arrive, args=(("wh-east", "wh-west")[n % 2],)) for n in range(units))

    assert errors == []
    held = [shop.held(order_id) for order_id in ids]
    expected = min(units, orders * each)
    assert sum(held) == expected
    # Creation order: full orders, then at most one partly filled, then empty ones.
    assert held == [min(each, max(0, expected - each * n)) for n in range(orders)]
    east, west = shop.level("wh-east"), shop.level("wh-west")
    assert east[1] + west[1] == expected and east[2] + west[2] == units - expected
    for order_id in ids:
        order = shop.order(order_id)
        keys = {(a.location_id, reservation_key(order_id, a.line_id)): a.quantity for a in order.allocations}
        assert shop.inventory.reservations({("PREORDER", loc): [key] for loc, key in keys}) == {
            ("PREORDER", loc, key): q for (loc, key), q in keys.items()
        }
    assert set(shop.executions()) == {order_id for order_id, h in zip(ids, held, strict=True) if h == each}


@pytest.mark.parametrize("cancel_at", [0, 6])
def test_arrivals_racing_new_orders_and_a_cancel_of_a_waiting_one_reserve_each_unit_once(shop, cancel_at):
    """Units arriving one by one at two locations on threads, beside three new orders' ReserveStock
    and the cancel of a waiting order (its release an arrival of its own): no stock item goes below
    zero or holds a reservation no order records, no order holds more than it asked, a cancelled one
    holds nothing, and no unit is left available while an order that may take it waits short."""
    waiting = shop.backordered_first(2, 2, 2, 2)
    fresh = []
    for n in range(3):
        body = place_order(external_id=f"fresh-{n}", lines=[{"sku": "PREORDER", "quantity": 2}])
        fresh.append(shop.container.capture.place(body, actor="key_web").id)
        shop.container.workflow.authorize_payment(fresh[-1], attempt=0)
    allocator = shop.container.backorder_allocator
    errors: list[BaseException] = []

    def retried(step: Callable[[], object]) -> None:
        try:
            while True:  # the stream retries a record, Step Functions a task, that kept losing races
                try:
                    step()
                    return
                except Backordered:
                    return
                except TransientError:
                    continue
        except BaseException as error:
            errors.append(error)

    def arrive(location_id: str) -> None:
        shop.inventory.adjust("PREORDER", location_id, 1, reason="receipt")
        allocator.arrived("PREORDER", location_id)

    def cancel() -> None:
        _cancel_recorded(shop, waiting[1])
        for location_id in ("wh-east", "wh-west"):  # its releases' records
            allocator.arrived("PREORDER", location_id)

    threads = [threading.Thread(target=retried, args=(lambda n=n: arrive(("wh-east", "wh-west")[n % 2]),))
               for n in range(7)]  # fmt: skip
    threads += [threading.Thread(target=retried, args=(lambda o=o: shop.container.workflow.reserve_stock(o),))
                for o in fresh]  # fmt: skip
    threads.insert(cancel_at, threading.Thread(target=retried, args=(cancel,)))
    deliver = stream_delivery(shop)
    run_threads(threads)
    # Then what the Inventory stream brings, as Lambda hands it to BackorderFunction: an arrival's
    # walk that met a fresh order queued and still `authorized` stopped at it, and that order's step
    # handed the walk on (a hand-on record) to the orders behind it.
    for _ in range(20):
        if not deliver():
            break

    assert errors == []
    recorded: Counter[str] = Counter()
    for order_id in waiting + fresh:
        order = shop.order(order_id)
        keys = {reservation_key(order_id, line.line_id) for line in order.lines}
        held = shop.inventory.reservations({("PREORDER", loc): sorted(keys) for loc in ("wh-east", "wh-west")})
        allocations = {("PREORDER", a.location_id, reservation_key(order_id, a.line_id)): a.quantity
                       for a in order.allocations}  # fmt: skip
        assert held == ({} if order.status is S.CANCELLED else allocations), order_id
        assert sum(held.values()) <= 2
        recorded.update({location_id: q for (_, location_id, _), q in held.items()})
    levels = {loc: shop.level(loc) for loc in ("wh-east", "wh-west")}
    assert sum(on_hand for on_hand, _, _ in levels.values()) == 7
    assert all(available >= 0 and reserved == recorded[loc] for loc, (_, reserved, available) in levels.items())
    if any((order := shop.order(o)).status is S.BACKORDERED and order.short_of() for o in waiting + fresh):
        assert sum(available for _, _, available in levels.values()) == 0


def test_an_order_sent_back_gives_back_what_it_holds_where_shipping_stopped(shop):
    """max_shipments 1 and the one location it holds a unit at stops shipping: the next arrival sends
    it back to be sourced, and the workflow gives the unit there back as it allocates it elsewhere."""

    [order_id] = shop.start_from(one_shipment_holding_the_unit_at_wh_west)
    catalog = shop.container.catalog_repository
    catalog.put_location(catalog.get_location("wh-west").model_copy(update={"ships": False}))
    shop.inventory.adjust("PREORDER", "wh-east", 50, reason="receipt")

    assert consume(shop, record("wh-east", 0, 50)) == {"batchItemFailures": []}

    assert shop.order(order_id).status is S.AUTHORIZED
    shop.container.workflow.reserve_stock(order_id)  # the workflow the outbox starts
    shop.container.workflow.create_shipments(order_id)
    order = shop.order(order_id)
    assert order.status is S.ALLOCATED and [s.location_id for s in order.shipments] == ["wh-east"]
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 0, 1), (50, 3, 47))


def network_record(shop: Shop, old: dict[str, Any]) -> dict[str, Any]:
    """The Catalog stream's record of the location network's item changed from `old` to as stored now."""
    key = {"pk": {"S": "NETWORK"}, "sk": {"S": "LOCATIONS"}}
    item = shop.container.dynamodb.get_item(TableName=shop.container.config.catalog_table, Key=key)["Item"]
    return {
        "eventID": f"network-{len(json.dumps(item))}",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": key, "SequenceNumber": "3", "OldImage": old, "NewImage": item},
    }


def test_a_location_that_stops_shipping_sends_back_the_orders_it_leaves_nowhere_to_go(shop, monkeypatch):
    """max_shipments 1, the older order holds a unit at wh-west: when wh-west stops shipping, the
    change of the network wakes the backordered orders as a change of the rules does, a page at a
    time, without waiting for an arrival of their sku (or the backordered jeopardy mark)."""

    first, second = shop.start_from(one_shipment_holding_the_unit_at_wh_west, 1)
    shop.inventory.adjust("PREORDER", "wh-east", 50, reason="receipt")  # its record not consumed
    catalog, table = shop.container.catalog_repository, shop.container.config.catalog_table
    key = {"pk": {"S": "NETWORK"}, "sk": {"S": "LOCATIONS"}}
    before = shop.container.dynamodb.get_item(TableName=table, Key=key)["Item"]
    catalog.put_location(catalog.get_location("wh-east").model_copy(update={"name": "East"}))
    renamed = network_record(shop, before)
    assert consume(shop, renamed) == {"batchItemFailures": []}  # still ships: nobody woken
    assert (shop.held(first), shop.held(second)) == (1, 0) and shop.order(first).status is S.BACKORDERED
    monkeypatch.setattr("core.backorders.PAGE", 1)

    catalog.put_location(catalog.get_location("wh-west").model_copy(update={"ships": False}))
    stopped = network_record(shop, renamed["dynamodb"]["NewImage"])
    assert consume(shop, stopped) == {"batchItemFailures": []}
    assert shop.order(first).status is S.AUTHORIZED and shop.held(second) == 0
    handed_on = network_record(shop, stopped["dynamodb"]["NewImage"])
    consume(shop, handed_on)  # the page handed on
    consume(shop, handed_on)  # redelivered: nothing twice

    assert (shop.held(second), shop.executions()) == (1, [second])
    assert shop.level("wh-east") == (50, 1, 49)
    # Both records pass the template's own filter; a removal of the item does not.
    events = Template.load().functions()["BackorderFunction"]["Events"]
    patterns = compile_filters(events["SourcingRulesStream"]["Properties"]["FilterCriteria"], "test")
    assert matches_filters(patterns, stopped) and matches_filters(patterns, handed_on)
    assert not matches_filters(patterns, {**stopped, "eventName": "REMOVE"})
    shop.container.workflow.reserve_stock(first)  # the workflow the outbox starts
    shop.container.workflow.create_shipments(first)
    assert [s.location_id for s in shop.order(first).shipments] == ["wh-east"]


def test_rules_that_exclude_every_location_leave_the_backordered_orders_waiting_until_put_back(shop):
    """A PUT of the rules excluding every location (a mistake, put back a minute later) woke every
    backordered order, sent each back to be sourced with no location it could use, and its workflow
    cancelled it out_of_stock and voided its payment: for good, over a setting."""
    from core.sourcing_rules import SourcingRulesInput

    service = shop.container.sourcing_rules_service
    shop.inventory.set_on_hand("PREORDER", "wh-west", 1, reason="count")
    holding, empty = shop.backordered(3), shop.backordered(1)  # the first holds the unit at wh-west
    service.replace(SourcingRulesInput(excluded_locations=["wh-east", "wh-west"]), by="key_ops")

    assert consume(shop, rules_record(shop, 1)) == {"batchItemFailures": []}
    shop.inventory.adjust("PREORDER", "wh-east", 50, reason="receipt")
    assert consume(shop, record("wh-east", 0, 50)) == {"batchItemFailures": []}  # excluded: no fill there

    for order_id in (holding, empty):
        order = shop.order(order_id)
        assert order.status is S.BACKORDERED and order.payment.status.value == "authorized"
        assert "sourced_again" not in [e.type for e in shop.container.order_repository.history(order_id)[1]]
    assert shop.held(holding) == 1 and shop.held(empty) == 0 and shop.executions() == []

    service.replace(SourcingRulesInput(), by="key_ops")  # put back
    assert consume(shop, rules_record(shop, 2)) == {"batchItemFailures": []}

    assert (shop.held(holding), shop.held(empty)) == (3, 1)
    assert shop.executions() == sorted([holding, empty])  # their workflows go on to ship them
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 1, 0), (50, 3, 47))


def test_every_location_that_stops_shipping_leaves_the_backordered_orders_waiting_until_one_ships(shop):
    """The network's own change (`ships: false` everywhere) sent them back to be cancelled as the rules did."""
    catalog, table = shop.container.catalog_repository, shop.container.config.catalog_table
    shop.inventory.set_on_hand("PREORDER", "wh-west", 1, reason="count")
    order_id = shop.backordered(2)  # holds the unit at wh-west
    key = {"pk": {"S": "NETWORK"}, "sk": {"S": "LOCATIONS"}}
    before = shop.container.dynamodb.get_item(TableName=table, Key=key)["Item"]
    for location_id in ("wh-east", "wh-west"):
        catalog.put_location(catalog.get_location(location_id).model_copy(update={"ships": False}))
    stopped = network_record(shop, before)
    assert consume(shop, stopped) == {"batchItemFailures": []}

    order = shop.order(order_id)
    assert order.status is S.BACKORDERED and order.payment.status.value == "authorized"
    assert shop.held(order_id) == 1

    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")  # stock there, not shipping
    catalog.put_location(catalog.get_location("wh-east").model_copy(update={"ships": True}))
    assert consume(shop, network_record(shop, stopped["dynamodb"]["NewImage"])) == {"batchItemFailures": []}

    assert shop.held(order_id) == 2 and shop.executions() == [order_id]
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 1, 0), (5, 1, 4))


def test_a_second_location_that_stops_shipping_wakes_every_page_though_the_first_wake_left_its_mark(shop, monkeypatch):
    """The first wake leaves `wake_after` on the network's item at its last full page; the second
    one's first page may end at the same order (the backlog unchanged): that page is handed on all
    the same, so the newest order, stranded by the second location, is sent back to be sourced."""
    from core.sourcing_rules import SourcingRulesInput

    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    catalog, table = shop.container.catalog_repository, shop.container.config.catalog_table
    catalog.put_location(location("wh-north", name="North warehouse"))
    waiting = [shop.backordered(2), shop.backordered(2)]
    catalog.put_product(product("LATER", "30.00", allow_backorder=True))  # another sku: nobody older waits for it
    shop.inventory.set_on_hand("LATER", "wh-west", 1, reason="count")
    body = {"external_id": "later", "lines": [{"sku": "LATER", "quantity": 3}]}
    newest = shop.container.capture.place(place_order(**body), actor="key_web").id
    shop.container.workflow.authorize_payment(newest, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(newest)  # holds the unit at wh-west
    assert [shop.held(o) for o in [*waiting, newest]] == [0, 0, 1]
    monkeypatch.setattr("core.backorders.PAGE", 2)
    client = boto3.client("dynamodb", region_name="us-east-1")
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    events = Template.load().functions()["BackorderFunction"]["Events"]
    patterns = compile_filters(events["SourcingRulesStream"]["Properties"]["FilterCriteria"], "test")

    def delivered() -> None:
        """The network's records the filter passes, consumed as Lambda delivers them, until none is left."""
        nonlocal iterator
        for _ in range(10):
            answer = streams.get_records(ShardIterator=iterator)
            iterator = answer["NextShardIterator"]
            records = [
                {"eventName": r["eventName"], "eventSource": "aws:dynamodb", "eventID": r["eventID"],
                 "dynamodb": r["dynamodb"]}
                for r in answer["Records"]
            ]  # fmt: skip
            passed = [r for r in records if matches_filters(patterns, r)]
            if not passed:
                return
            assert consume(shop, *passed) == {"batchItemFailures": []}

    catalog.put_location(catalog.get_location("wh-north").model_copy(update={"ships": False}))
    delivered()  # the first wake: nobody stranded, `wake_after` left at its full page's end
    assert shop.order(newest).status is S.BACKORDERED

    catalog.put_location(catalog.get_location("wh-west").model_copy(update={"ships": False}))
    delivered()

    assert shop.order(newest).status is S.AUTHORIZED
    assert [shop.order(o).status for o in waiting] == [S.BACKORDERED, S.BACKORDERED]


def test_a_location_that_starts_shipping_again_fills_the_orders_waiting_for_the_stock_it_has(shop):
    """wh-west, not shipping, holds units the waiting order lacks: when it ships again, its stock
    (no arrival: it was there all along) goes to the waiting order as a new version of the rules
    that stops excluding a location would give it, not at the next arrival of the sku."""
    catalog = shop.container.catalog_repository
    catalog.put_location(catalog.get_location("wh-west").model_copy(update={"ships": False}))
    shop.inventory.set_on_hand("PREORDER", "wh-west", 5, reason="count")
    waiting = shop.backordered(2)
    assert shop.held(waiting) == 0
    key = {"pk": {"S": "NETWORK"}, "sk": {"S": "LOCATIONS"}}
    before = shop.container.dynamodb.get_item(TableName=shop.container.config.catalog_table, Key=key)["Item"]

    catalog.put_location(catalog.get_location("wh-west").model_copy(update={"ships": True}))
    assert consume(shop, network_record(shop, before)) == {"batchItemFailures": []}

    assert (shop.held(waiting), shop.executions()) == (2, [waiting])  # its workflow goes on
    assert shop.level("wh-west") == (5, 2, 3)


def pickups_waiting_at_a_store(shop: Shop, pickups: int) -> list[str]:
    """store-sf, a store that ships nothing, and `pickups` pickup orders of one unit there, backordered."""
    if pickups > 1:
        earlier = shop.start_from(pickups_waiting_at_a_store, pickups - 1)
    else:
        earlier = []
        shop.container.catalog_repository.put_location(
            location("store-sf", name="SF store", type="store", ships=False, pickup=True)
        )
    return [*earlier, shop.backordered_pickup("store-sf")]


def test_an_arrival_reads_no_order_that_may_not_take_units_where_they_arrived(shop):
    """Units counted at a store that ships nothing can go to its own pickup orders only. The walk
    read every waiting order of the sku (one consistent GetItem each) to learn it was a ship order
    or another store's pickup: a long queue of them ran the function past its 10 s, failed the
    stream's batch over and over, and the pickup order behind them never got the units."""
    shop.container.catalog_repository.put_location(
        location("store-sf", name="SF store", type="store", ships=False, pickup=True)
    )
    ships = [shop.backordered(1) for _ in range(3)]
    pickup = shop.backordered_pickup("store-sf")
    shop.inventory.set_on_hand("PREORDER", "store-sf", 1, reason="stock take")

    with shop.orders_read() as read:
        assert consume(shop, record("store-sf", 0, 1)) == {"batchItemFailures": []}

    assert shop.held(pickup) == 1 and shop.executions() == [pickup]
    assert set(read) == {pickup}
    assert [shop.held(order_id) for order_id in ships] == [0, 0, 0]


def test_an_address_edit_of_a_backordered_pickup_keeps_it_waiting_where_it_was_and_an_arrival_fills_it(shop):
    # A pickup's address is the customer's, not where its parcel goes: the edit sends it nowhere to
    # be sourced again, so it keeps waiting in its queue at its store and its first arrival fills it.
    from core.models import AddressInput, OrderEdit

    [pickup] = shop.start_from(pickups_waiting_at_a_store, 1)
    waiting = shop.order(pickup)
    moved = AddressInput.model_validate({**waiting.shipping_address.model_dump(), "line1": "9 Other Street"})

    edited = shop.container.actions.edit(pickup, waiting.version, OrderEdit(shipping_address=moved), "key_web")

    assert (edited.status, edited.shipping_address.line1) == (S.BACKORDERED, "9 Other Street")
    assert _queued(shop) == [pickup] and shop.executions() == []
    shop.inventory.set_on_hand("PREORDER", "store-sf", 1, reason="stock take")
    assert consume(shop, record("store-sf", 0, 1)) == {"batchItemFailures": []}
    assert shop.held(pickup) == 1 and shop.executions() == [pickup]


def test_a_backordered_pickup_is_on_its_stores_list_while_it_waits_and_once_an_arrival_fills_it(shop):
    # GET /orders?pickup_location_id=: the fill's write (a transaction with the stock's top-up)
    # keeps the order's by_pickup_location entry (it stays backordered, its units held, until its
    # workflow, started again, allocates it), as every write of an order open at its store does.
    [pickup] = shop.start_from(pickups_waiting_at_a_store, 1)

    def store_list() -> list[tuple[str, OrderStatus]]:
        orders, _ = shop.container.orders.list(OrderFilter(pickup_location_id="store-sf"), 25, None)
        return [(order.id, order.status) for order in orders]

    assert store_list() == [(pickup, S.BACKORDERED)]
    shop.inventory.set_on_hand("PREORDER", "store-sf", 1, reason="stock take")
    assert consume(shop, record("store-sf", 0, 1)) == {"batchItemFailures": []}

    assert shop.held(pickup) == 1 and store_list() == [(pickup, S.BACKORDERED)]


def test_a_new_order_reads_no_older_order_that_may_not_take_the_units_it_looks_at(shop):
    """ReserveStock leaves older backordered orders the units they may take where it sources; it
    read every older entry (up to 200 consistent GetItems in the step) to learn that a store's
    pickup order may take nothing at a warehouse."""
    pickups = shop.start_from(pickups_waiting_at_a_store, 2)
    older = shop.backordered(3)
    shop.inventory.adjust("PREORDER", "wh-east", 4, reason="receipt")  # its record not consumed yet
    shop.counter += 1
    body = {"external_id": f"pre-{shop.counter}", "lines": [{"sku": "PREORDER", "quantity": 2}]}
    newer = shop.container.capture.place(place_order(**body), actor="key_web").id
    shop.container.workflow.authorize_payment(newer, attempt=0)
    with shop.orders_read() as read, pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(newer)  # 3 of the 4 units are the older order's

    assert (shop.held(older), shop.held(newer)) == (0, 1)
    assert not set(read) & set(pickups)


def inventory_stream(shop: Shop) -> tuple[Any, str]:
    """The Inventory table's stream client and an iterator at its end: the changes from now on."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    arn = client.describe_table(TableName=shop.container.config.inventory_table)["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    return streams, streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")[
        "ShardIterator"
    ]


def test_an_arrival_behind_a_long_run_of_held_orders_reads_a_few_and_hands_its_walk_on(shop, monkeypatch):
    """A fraud wave put the backordered orders of a hot sku on hold: the walk read every one of
    them (a consistent GetItem each) before reaching the order that could take the units, so a long
    run ran the function past its time limit, failed the stream's batch over and over, and that
    order never got them. Now each invocation reads at most WALK_READS orders and hands the rest of
    the walk on through a record of the stock item (which the template's filter passes), taken
    from where it stopped: the order behind them is filled, once, by a later invocation."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 2, raising=False)
    held = shop.backordered_first(1, 1, 1, 1, 1)
    for order_id in held:
        shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    waiting = shop.backordered(1)
    deliver = stream_delivery(shop)
    reads: list[list[str]] = []  # by invocation

    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    with shop.orders_read() as read:
        for _ in range(10):  # each invocation as Lambda delivers the stream's records, until none passes
            before = len(read)
            if not deliver():
                break
            reads.append(read[before:])
            assert len(set(reads[-1]) & set(held)) <= 2  # never more than its budget of the held ones

    assert len(reads) == 3  # 2 held orders read, 2 more, then the last held one and the waiting one
    assert [order_id for each in reads for order_id in each if order_id in held] == held  # each once, in order
    assert shop.held(waiting) == 1 and shop.executions() == [waiting]
    assert [shop.held(order_id) for order_id in held] == [0] * 5
    assert [shop.order(order_id).status for order_id in held] == [S.ON_HOLD] * 5
    assert shop.level() == (1, 1, 0)


def test_a_walk_that_dies_halfway_is_walked_again_whole_and_fills_and_starts_each_order_once(shop, monkeypatch):
    """The walk filled the first two orders and died starting the second one's workflow (Step
    Functions throttled): the stream gives the record again, whose walk starts the second, fills the
    third, and reserves nothing twice."""
    from core.backorders import BackorderAllocator
    from functions.stream_batches import BatchFailed

    ids = shop.backordered_first(1, 1, 1)
    shop.inventory.adjust("PREORDER", "wh-east", 3, reason="receipt")
    real = BackorderAllocator._complete

    def throttled_once(allocator: BackorderAllocator, order: Any, *args: Any) -> None:
        if order.id == ids[1]:
            monkeypatch.setattr(BackorderAllocator, "_complete", real)
            raise TransientError("the state machine throttled the start")
        real(allocator, order, *args)

    monkeypatch.setattr(BackorderAllocator, "_complete", throttled_once)
    with pytest.raises(BatchFailed):
        consume(shop, record("wh-east", 0, 3))
    assert [shop.held(order_id) for order_id in ids] == [1, 1, 0] and shop.executions() == [ids[0]]

    assert consume(shop, record("wh-east", 0, 3)) == {"batchItemFailures": []}

    assert [shop.held(order_id) for order_id in ids] == [1, 1, 1] and shop.level() == (3, 3, 0)
    assert shop.executions() == sorted(ids)


def test_a_redelivered_arrival_hands_its_walk_on_once(shop, monkeypatch):
    """Its hand-on names the record (`walk_by`): a redelivery writes no second one, so the walk it
    started goes on once, not twice over the rest of the queue."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 1)
    [held] = shop.backordered_first(1)
    shop.container.holds.hold(held, HoldRequest(reason="fraud_review"), actor="key_ops")
    waiting = shop.backordered(1)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    streams, iterator = inventory_stream(shop)

    consume(shop, record("wh-east", 0, 1))
    consume(shop, record("wh-east", 0, 1))

    changes = [r["dynamodb"] for r in streams.get_records(ShardIterator=iterator)["Records"]]
    handed = [c["NewImage"]["walk_after"]["S"] for c in changes if "walk_by" in c.get("NewImage", {})]
    assert len(handed) == 1 and handed[0].endswith(f"#{held}")
    assert shop.held(waiting) == 0  # until the walk handed on goes on


def test_an_arrival_replayed_by_hand_twice_hands_its_walk_on_each_time(shop, monkeypatch):
    """The runbook's replay carries no SequenceNumber: each replay is a walk of its own, whose hand-on
    a former replay's must not swallow (the walk it names may have failed)."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 1)
    [held] = shop.backordered_first(1)
    shop.container.holds.hold(held, HoldRequest(reason="fraud_review"), actor="key_ops")
    shop.backordered(1)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    replay = record("wh-east", 0, 1)
    del replay["dynamodb"]["SequenceNumber"]
    streams, iterator = inventory_stream(shop)

    consume(shop, replay)
    consume(shop, replay)

    changes = [r["dynamodb"] for r in streams.get_records(ShardIterator=iterator)["Records"]]
    assert len([c for c in changes if "walk_by" in c.get("NewImage", {})]) == 2


def queued_older(shop: Shop, quantity: int) -> str:
    """An order of `quantity` PREORDER placed and authorized, its ReserveStock (which queues it, then
    writes it backordered) still to run: the older order a walk may meet queued and `authorized`."""
    body = place_order(external_id="older", lines=[{"sku": "PREORDER", "quantity": quantity}])
    older = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(older, attempt=0)
    return older


def older_queued_younger_waiting(shop: Shop, younger: int) -> tuple[str, str]:
    """The older order of one PREORDER queued (queued_older), and a younger one of `younger`
    backordered behind it."""
    older = shop.start_from(queued_older, 1)
    return older, shop.backordered(younger)


def once_queued(monkeypatch: pytest.MonkeyPatch, order_id: str, arrive: Callable[[], None]) -> list[str]:
    """DynamoBackorders.add patched so that, once the first queue entry of `order_id` is written (its
    ReserveStock queued it, its `backordered` write to come), `arrive()` runs, as another function
    would meanwhile (an arrival and its walk, a person's change); the list returned gets that
    entry's sku."""
    real_add, arrived = DynamoBackorders.add, []

    def add(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == order_id and not arrived:
            arrived.append(sku)
            with another_functions_calls():
                arrive()

    monkeypatch.setattr(DynamoBackorders, "add", add)
    return arrived


def died_handing_on(shop: Shop, older: str, deliver: Callable[[], int]) -> None:
    """Two units arrive at wh-east while `older` is queued, and the arrival's walk stops at it
    (`deliver`: the Inventory stream's); then its ReserveStock dies handing that walk on
    (walk_from raises), after its own look took what it could: the stop stays kept on its entry."""

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
        assert deliver() == 1  # the walk stops at the older order

    def dying(*_: Any) -> None:
        raise OSError("died")

    with pytest.MonkeyPatch.context() as dies, pytest.raises(OSError):
        once_queued(dies, older, arrive)
        dies.setattr(DynamoBackorders, "walk_from", dying)
        shop.container.workflow.reserve_stock(older)


def stream_delivery(shop: Shop) -> Callable[[], int]:
    """Delivers the Inventory stream's next records that the BackorderFunction's filter passes to
    its handler, as Lambda does, from now on; answers how many passed (0: none left)."""
    streams, iterator = inventory_stream(shop)
    events = Template.load().functions()["BackorderFunction"]["Events"]
    patterns = compile_filters(events["InventoryStream"]["Properties"]["FilterCriteria"], "test")

    def deliver() -> int:
        nonlocal iterator
        answer = streams.get_records(ShardIterator=iterator)
        iterator = answer["NextShardIterator"]
        records = [{"eventName": r["eventName"], "eventSource": "aws:dynamodb", "eventID": r["eventID"],
                    "dynamodb": {**r["dynamodb"], "ApproximateCreationDateTime":
                                 r["dynamodb"]["ApproximateCreationDateTime"].timestamp()}}
                   for r in answer["Records"]]  # fmt: skip
        passed = [r for r in records if matches_filters(patterns, r)]
        if passed:
            assert consume(shop, *passed) == {"batchItemFailures": []}
        return len(passed)

    return deliver


def test_units_arriving_while_a_walk_handed_on_is_pending_fill_each_order_once_oldest_first(shop, monkeypatch):
    """A second arrival lands behind a walk's hand-on, and a reservation of other units in between:
    two walks then run over the queue at once (the one handed on, from where it stopped, and the
    arrival's, from the oldest). Each waiting order is filled once, the older first, nothing is
    reserved twice or skipped, and the held orders take nothing."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 2)
    held = shop.backordered_first(1, 1, 1, 1)
    for order_id in held:
        shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    older, younger = shop.backordered(1), shop.backordered(1)
    deliver = stream_delivery(shop)

    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    assert deliver() == 1  # the arrival: 2 held orders read, the walk handed on
    assert (shop.held(older), shop.held(younger)) == (0, 0)
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")  # behind the hand-on record
    shop.inventory.reserve("PREORDER", "wh-east", "another-writer", 1)  # a reservation: `arrived` removed
    for _ in range(10):
        if not deliver():
            break

    assert (shop.held(older), shop.held(younger)) == (1, 1)
    assert shop.executions() == sorted([older, younger])
    assert [shop.held(order_id) for order_id in held] == [0] * 4
    assert shop.level() == (3, 3, 0)


def test_a_walk_handed_on_after_an_entry_that_left_the_queue_meanwhile_goes_on_from_its_place(shop, monkeypatch):
    """The order a walk was handed on after left the queue before the hand-on ran (cancelled: its
    entries removed): the walk goes on from that entry's place in the queue, reading none of the
    orders before it again, and the order behind is filled."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 2)
    held = shop.backordered_first(1, 1, 1)
    for order_id in held:
        shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    waiting = shop.backordered(1)
    deliver = stream_delivery(shop)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    assert deliver() == 1  # the first two held orders read, the walk handed on after the second
    [gone] = [e for e in shop.container.backorders.waiting("PREORDER", None, 10) if e.order_id == held[1]]
    shop.container.backorders.remove("PREORDER", gone)
    with shop.orders_read() as read:
        for _ in range(5):
            if not deliver():
                break

    assert held[0] not in read and held[2] in read
    assert shop.held(waiting) == 1 and shop.executions() == [waiting]
    assert [shop.held(order_id) for order_id in held] == [0, 0, 0]
    assert shop.level() == (1, 1, 0)


# --- An order leaves the queues it no longer waits in -------------------------------------------------


def _queued(shop: Shop, sku: str = "PREORDER") -> list[str]:
    return [entry.order_id for entry in shop.backorders.waiting(sku, None, 100)]


def _cancel_recorded(shop: Shop, order_id: str) -> None:
    """A cancel as a request writes it, then the execution the outbox starts for it (CancelOrder)."""
    from core.workflow import CANCEL_RECORDED

    assert shop.container.actions.cancel(order_id, "fraud_sweep", actor="key_ops").status is S.CANCELLED
    shop.container.workflow.cancel_after_failure(order_id, CANCEL_RECORDED, "a cancel recorded outside the workflow")


def test_cancelled_backorders_leave_the_queue_so_an_arrival_reads_only_the_orders_that_wait(shop):
    """A fraud sweep cancelled a wave of backorders: their entries stayed until an arrival's walk
    read each order (a consistent GetItem of its budget of 25) and removed it, so the next arrivals
    spent their budget on orders that no longer wait and handed on instead of filling real ones.
    Now the cancel's clean-up removes them."""
    *cancelled, waiting = shop.backordered_first(1, 1, 1, 1)
    for order_id in cancelled:
        _cancel_recorded(shop, order_id)

    assert _queued(shop) == [waiting]
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    with shop.orders_read() as read:
        assert consume(shop, record("wh-east", 0, 1)) == {"batchItemFailures": []}
    assert not set(read) & set(cancelled)
    assert shop.held(waiting) == 1 and shop.executions() == [waiting]


def test_a_cancel_of_a_held_backorder_and_its_clean_up_again_leave_the_queue_once(shop):
    from core.holds import HoldRequest

    order_id, other = shop.backordered_first(2, 1)
    shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    _cancel_recorded(shop, order_id)
    _cancel_recorded(shop, order_id)  # a cancel repeated runs its clean-up again: nothing more to remove

    assert _queued(shop) == [other]


def test_a_backorder_cut_to_what_it_holds_and_allocated_from_authorized_leaves_the_queue(shop):
    """Cancelling the units it waits for sends it back to be sourced (`authorized`): allocated from
    there, its entry stayed for the next arrival's walk to read and remove."""
    shop.inventory.set_on_hand("PREORDER", "wh-east", 1, reason="count")
    order_id = shop.backordered(3)
    line_id = shop.order(order_id).lines[0].line_id
    assert _queued(shop) == [order_id]

    cut = shop.container.actions.cancel(order_id, "will not wait", actor="key_web", lines={line_id: 2})
    assert cut.status is S.AUTHORIZED
    shop.container.workflow.reserve_stock(order_id)  # the execution the outbox starts for it
    shop.container.workflow.create_shipments(order_id)

    assert shop.order(order_id).status is S.ALLOCATED
    assert _queued(shop) == []


def test_a_line_cut_to_what_it_holds_stays_in_that_skus_queue_as_held_while_the_order_waits_for_another(shop):
    shop.container.catalog_repository.put_product(product("LATER", "10.00", allow_backorder=True))
    shop.inventory.set_on_hand("PREORDER", "wh-east", 1, reason="count")
    lines = [{"sku": "PREORDER", "quantity": 3}, {"sku": "LATER", "quantity": 1}]
    body = place_order(external_id="two-skus", lines=lines)
    order_id = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    assert (_queued(shop), _queued(shop, "LATER")) == ([order_id], [order_id])
    preorder = next(line for line in shop.order(order_id).lines if line.sku == "PREORDER")

    shop.container.actions.cancel(order_id, "will not wait", actor="key_web", lines={preorder.line_id: 2})
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)  # sourced again: it waits for LATER alone

    assert shop.order(order_id).status is S.BACKORDERED
    assert (_queued(shop), _queued(shop, "LATER")) == ([order_id], [order_id])
    # Its PREORDER entry now says it holds them (no reader of what orders lack reads it), unmarked:
    # the reorder points buy no PREORDER for it.
    [preorder_entry], [later_entry] = (shop.backorders.waiting(sku, None, 10) for sku in ("PREORDER", "LATER"))
    assert (preorder_entry.holds, later_entry.holds) == (True, False)
    stored = shop.container.dynamodb.get_item(
        TableName=shop.container.config.inventory_table, Key=DynamoBackorders._key("PREORDER", preorder_entry)
    )["Item"]
    assert "reorder_watch" not in stored


def test_an_entry_written_again_since_the_write_that_ended_its_wait_stays(shop):
    """Entries leave after the order's own write, conditionally: a removal that runs late (after
    the order was sent back and waits again) leaves the entry its new wait wrote."""
    [order_id] = shop.backordered_first(2)
    waited = shop.order(order_id)
    line_id = waited.lines[0].line_id
    cut = shop.container.actions.cancel(order_id, "fewer", actor="key_web", lines={line_id: 1})
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)  # waits again, its entry written again

    shop.backorders.left(waited, cut)  # the cut's removal, late
    assert _queued(shop) == [order_id]
    shop.backorders.left(waited, cut.model_copy(update={"version": shop.order(order_id).version + 1}))
    assert _queued(shop) == []


def test_a_walk_that_read_an_order_before_it_waited_again_leaves_its_new_entry(shop, monkeypatch):
    """The walk removes the entries an order left (its CreateShipments died after allocating it).
    It read the order allocated; before its removal ran, an edit sent the order back and it waits
    again, its entry written anew: the walk's removal, unconditional, took that entry out, and no
    arrival would ever find the order again. Now it leaves only entries older than what it read."""
    from core.models import LineInput, OrderEdit

    [order_id] = shop.backordered_first(2)
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    consume(shop, record("wh-east", 0, 2))
    with monkeypatch.context() as dying:
        dying.setattr(DynamoBackorders, "leave", lambda *_: (_ for _ in ()).throw(OSError("died")))
        with pytest.raises(OSError):
            shop.container.workflow.create_shipments(order_id)  # allocated; died before its entry left
    assert shop.order(order_id).status is S.ALLOCATED and _queued(shop) == [order_id]

    edited, asked = False, [""]

    def asking(params: dict[str, Any], **_: Any) -> None:
        asked[0] = params.get("Key", {}).get("id", {}).get("S", "")

    def edit_after_the_walk_read_it(**_: Any) -> None:
        nonlocal edited
        if edited or asked[0] != order_id:
            return
        edited = True
        with another_functions_calls():  # the API's edit and the workflow's step, not the walk's
            order = shop.container.order_repository.get(order_id, consistent=True)
            lines = [LineInput(sku="PREORDER", quantity=4)]
            shop.container.actions.edit(order_id, order.version, OrderEdit(lines=lines), "key_web")
            with pytest.raises(Backordered):
                shop.container.workflow.reserve_stock(order_id)  # the execution the edit starts: waits again

    shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
    events = shop.container.dynamodb.meta.events
    events.register("provide-client-params.dynamodb.GetItem", asking)
    events.register("after-call.dynamodb.GetItem", edit_after_the_walk_read_it)
    try:
        consume(shop, record("wh-west", 0, 1))
    finally:
        events.unregister("after-call.dynamodb.GetItem", edit_after_the_walk_read_it)
        events.unregister("provide-client-params.dynamodb.GetItem", asking)

    assert edited and shop.order(order_id).status is S.BACKORDERED
    assert _queued(shop) == [order_id]


def test_a_line_an_edit_drops_leaves_its_skus_queue_when_the_order_waits_again(shop):
    from core.models import LineInput, OrderEdit

    shop.container.catalog_repository.put_product(product("LATER", "10.00", allow_backorder=True))
    lines = [{"sku": "PREORDER", "quantity": 2}, {"sku": "LATER", "quantity": 1}]
    order_id = shop.container.capture.place(place_order(external_id="edited", lines=lines), actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    assert (_queued(shop), _queued(shop, "LATER")) == ([order_id], [order_id])

    version = shop.order(order_id).version
    edit = OrderEdit(lines=[LineInput(sku="LATER", quantity=1)])
    assert shop.container.actions.edit(order_id, version, edit, "key_web").status is S.AUTHORIZED
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)  # the execution the edit starts

    assert (_queued(shop), _queued(shop, "LATER")) == ([], [order_id])


def test_a_line_an_edit_of_a_held_backorder_drops_leaves_its_skus_queue_when_the_order_waits_again(shop):
    # An order held while backordered is edited on hold (API.md: PATCH until the first shipment
    # ships); its release sends it to be sourced again, as an edit of one not held does.
    from core.holds import HoldRequest, ReleaseRequest
    from core.models import LineInput, OrderEdit

    shop.container.catalog_repository.put_product(product("LATER", "10.00", allow_backorder=True))
    lines = [{"sku": "PREORDER", "quantity": 2}, {"sku": "LATER", "quantity": 1}]
    order_id = shop.container.capture.place(place_order(external_id="held-edited", lines=lines), actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    held = shop.container.holds.hold(order_id, HoldRequest(reason="customer_request"), actor="key_cs")

    edit = OrderEdit(lines=[LineInput(sku="LATER", quantity=1)])
    edited = shop.container.actions.edit(order_id, held.version, edit, "key_cs")

    assert (edited.status, edited.hold.resume_to) == (S.ON_HOLD, S.AUTHORIZED)
    assert shop.container.holds.release(order_id, ReleaseRequest(), actor="key_cs").status is S.AUTHORIZED
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)  # the execution the release starts
    assert (_queued(shop), _queued(shop, "LATER")) == ([], [order_id])


# --- An order max_shipments keeps waiting for a sku it lacks, found by an arrival of one it holds ----------


def _waiting_for_preorder_holding_a_book(shop: Shop) -> str:
    """max_shipments 1; an order of a PREORDER and a BOOK: its BOOK reserved at wh-west, the PREORDER
    short everywhere, so it waits backordered (for the PREORDER; it holds its BOOK)."""
    from core.sourcing_rules import SourcingRulesInput

    shop.container.catalog_repository.put_product(product("BOOK", "12.00", allow_backorder=True))
    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    shop.inventory.set_on_hand("BOOK", "wh-west", 1, reason="count")
    lines = [{"sku": "PREORDER", "quantity": 1}, {"sku": "BOOK", "quantity": 1}]
    body = place_order(external_id="book-and-preorder", lines=lines)
    order_id = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    order = shop.order(order_id)
    assert [(a.location_id, a.quantity) for a in order.allocations] == [("wh-west", 1)]
    assert order.short_of() == {next(line.line_id for line in order.lines if line.sku == "PREORDER"): 1}
    return order_id


def _shipped_whole_from_wh_east(shop: Shop, order_id: str) -> None:
    """The workflow the outbox starts for an order sent back: it allocates the whole order at wh-east
    and gives the BOOK it held at wh-west back."""
    shop.container.workflow.reserve_stock(order_id)
    shop.container.workflow.create_shipments(order_id)
    order = shop.order(order_id)
    assert order.status is S.ALLOCATED and [s.location_id for s in order.shipments] == ["wh-east"]
    [book_west] = shop.inventory.levels({"BOOK"}, ["wh-west"])["BOOK"]
    assert (book_west.on_hand, book_west.reserved, book_west.available) == (1, 0, 1)
    assert shop.level("wh-east") == (1, 1, 0)


def test_units_of_a_sku_an_order_holds_arriving_where_its_missing_sku_came_before_send_it_back_whole(shop):
    """The PREORDER comes to wh-east first: its walk finds the order, but wh-east has no BOOK, so no
    plan within max_shipments gives it every unit. Then a BOOK comes to wh-east: one location can now
    ship the whole order, but the order was in the PREORDER's queue only, and the BOOK's arrival never
    found it: it waited for a PREORDER at wh-west that nothing may bring."""
    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    assert consume(shop, record("wh-east", 0, 1)) == {"batchItemFailures": []}
    assert shop.order(order_id).status is S.BACKORDERED  # no BOOK at wh-east yet

    shop.inventory.adjust("BOOK", "wh-east", 1, reason="receipt")
    assert consume(shop, record("wh-east", 0, 1, sku="BOOK")) == {"batchItemFailures": []}

    assert shop.order(order_id).status is S.AUTHORIZED
    [*_, sent] = shop.container.order_repository.history(order_id)[1]
    assert sent.type == "sourced_again"
    # Stored with the entry: the units its send-back reserved for it, by stock item.
    assert sent.detail["reserved"] == [
        {"sku": "BOOK", "location_id": "wh-east", "quantity": 1},
        {"sku": "PREORDER", "location_id": "wh-east", "quantity": 1},
    ]
    _shipped_whole_from_wh_east(shop, order_id)


def test_a_released_reservation_of_a_sku_an_order_holds_sends_it_back_whole_where_its_missing_sku_is(shop):
    """The same arrival as a release: another order's cancel gives a BOOK back at wh-east, where a
    PREORDER waits on the shelf (it came before the BOOK, and its walk found no whole plan)."""
    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    consume(shop, record("wh-east", 0, 1))
    shop.inventory.adjust("BOOK", "wh-east", 1, reason="receipt")
    shop.inventory.reserve("BOOK", "wh-east", "ord_other#L1", 1)  # another order's, before this arrival
    shop.inventory.release("BOOK", "wh-east", "ord_other#L1")

    assert consume(shop, record("wh-east", 0, 1, sku="BOOK")) == {"batchItemFailures": []}

    assert shop.order(order_id).status is S.AUTHORIZED
    _shipped_whole_from_wh_east(shop, order_id)


def test_units_of_a_missing_sku_arriving_where_the_sku_an_order_holds_is_on_hand_send_it_back_whole(shop):
    """The other order of arrivals: a BOOK is on wh-east's shelf already, then the PREORDER comes
    there. Its own queue finds the order (this always worked)."""
    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    shop.inventory.adjust("BOOK", "wh-east", 1, reason="receipt")
    consume(shop, record("wh-east", 0, 1, sku="BOOK"))
    assert shop.order(order_id).status is S.BACKORDERED  # no PREORDER at wh-east yet

    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    assert consume(shop, record("wh-east", 0, 1)) == {"batchItemFailures": []}

    assert shop.order(order_id).status is S.AUTHORIZED
    _shipped_whole_from_wh_east(shop, order_id)


def test_one_receipt_of_both_skus_leaves_the_order_it_sends_back_whole_its_units_in_the_other_skus_walk(shop):
    """One receipt at wh-east of a PREORDER and a BOOK, its records walked one after the other. The
    BOOK's walk sends the older order back for its whole order there; the PREORDER's found it
    authorized, passed it over and gave the PREORDER to a younger order, and the older one, sourced,
    waited backordered again. The send-back reserves its plan's units in the same transaction."""
    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    younger = shop.backordered(1)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    shop.inventory.adjust("BOOK", "wh-east", 1, reason="receipt")

    assert consume(shop, record("wh-east", 0, 1, sku="BOOK"), record("wh-east", 0, 1)) == {"batchItemFailures": []}

    order = shop.order(order_id)
    assert order.status is S.AUTHORIZED and order.held_before == ["wh-east", "wh-west"]
    keys = {line.sku: reservation_key(order_id, line.line_id) for line in order.lines}
    held = shop.inventory.reservations(
        {("PREORDER", "wh-east"): [keys["PREORDER"]], ("BOOK", "wh-east"): [keys["BOOK"]]}
    )
    assert held == {("PREORDER", "wh-east", keys["PREORDER"]): 1, ("BOOK", "wh-east", keys["BOOK"]): 1}
    assert shop.order(younger).status is S.BACKORDERED and shop.held(younger) == 0
    _shipped_whole_from_wh_east(shop, order_id)


def _entry_writes(shop: Shop, made: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """The writes of queue entries among `made`: (operation, sku, what it sets or removes)."""
    return [
        (operation, params["Key"]["sku"]["S"], params.get("UpdateExpression", ""))
        for operation, params in made
        if params.get("TableName") == shop.container.config.inventory_table
        and operation in ("PutItem", "UpdateItem", "DeleteItem")
        and params["Key"]["location_id"]["S"].startswith("#backorder#")
    ]


def test_an_order_backordered_writes_one_entry_more_per_sku_it_holds_and_none_is_marked(shop):
    """The cost of queuing a waiting order for every sku it orders: one UpdateItem of an entry per
    sku it holds every unit of (`holds`), beside the entry and its mark for each sku it lacks. The
    entries it holds are never marked: the reorder points buy only what it lacks."""
    shop.container.catalog_repository.put_product(product("BOOK", "12.00", allow_backorder=True))
    shop.inventory.set_on_hand("BOOK", "wh-west", 1, reason="count")
    lines = [{"sku": "PREORDER", "quantity": 1}, {"sku": "BOOK", "quantity": 1}]
    order_id = shop.container.capture.place(place_order(external_id="costed", lines=lines), actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)

    with shop.requests() as made, pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)

    writes = _entry_writes(shop, made)
    assert [(operation, sku) for operation, sku, _ in writes] == [
        ("UpdateItem", "PREORDER"),  # its entry, before the order's write
        ("UpdateItem", "BOOK"),  # the one more: it holds its BOOK
        ("UpdateItem", "PREORDER"),  # the mark: the reorder points buy its PREORDER
    ]
    assert "holds = :holds" in writes[1][2] and "holds" not in writes[0][2].split("REMOVE")[0]
    assert [e.holds for e in shop.backorders.waiting("BOOK", None, 10)] == [True]

    # Allocated, it leaves both queues: one conditional DeleteItem per sku of its lines, as before.
    shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
    consume(shop, record("wh-west", 0, 1))
    with shop.requests() as made:
        shop.container.workflow.create_shipments(order_id)
    assert sorted((operation, sku) for operation, sku, _ in _entry_writes(shop, made)) == [
        ("DeleteItem", "BOOK"), ("DeleteItem", "PREORDER"),
    ]  # fmt: skip
    assert _queued(shop) == _queued(shop, "BOOK") == []


def test_the_orders_that_hold_a_sku_are_read_by_no_arrival_demand_or_sourcing_of_it_without_max_shipments(shop):
    """Its BOOK held, an order waits for a PREORDER: an arrival of BOOKs (no max_shipments keeps it
    from any location), the demand behind a BOOK reorder point and a new order of BOOKs sourced
    before the stream hands the arrival out read none of it (it lacks no BOOK), as before it had
    a BOOK entry."""
    shop.container.catalog_repository.put_product(product("BOOK", "12.00", allow_backorder=True))
    shop.inventory.set_on_hand("BOOK", "wh-west", 1, reason="count")
    lines = [{"sku": "PREORDER", "quantity": 1}, {"sku": "BOOK", "quantity": 1}]
    waiting = shop.container.capture.place(place_order(external_id="holds-a-book", lines=lines), actor="key_web").id
    shop.container.workflow.authorize_payment(waiting, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(waiting)
    shop.inventory.adjust("BOOK", "wh-east", 3, reason="receipt")

    book = [{"sku": "BOOK", "quantity": 1}]
    newer = shop.container.capture.place(place_order(external_id="a-book", lines=book), actor="key_web").id
    shop.container.workflow.authorize_payment(newer, attempt=0)
    with shop.requests() as made, shop.orders_read() as read:
        shop.container.workflow.reserve_stock(newer)
        assert consume(shop, record("wh-east", 0, 3, sku="BOOK")) == {"batchItemFailures": []}
        demand = shop.container.backorder_allocator.demand("BOOK", {"wh-east", "wh-west"}, lambda _: 0)

    assert waiting not in read
    assert not [p for operation, p in made if operation == "BatchGetItem" and shop.container.config.orders_table
                in p["RequestItems"]]  # fmt: skip
    assert demand.waiting == {} and demand.moves == []
    assert shop.order(waiting).status is S.BACKORDERED and shop.order(newer).allocations


def test_a_walk_reads_the_rules_and_the_network_once_for_the_orders_max_shipments_keeps_off(shop):
    """A walk that meets many orders max_shipments keeps from the location looks, for each, for a
    plan that gives it its whole order there (Workflow.source_again_whole): that look read the rules
    (a Query) and the network (a GetItem) again per order, where the walk held both. Now it decides
    on the walk's; each order's fill still reads its own (it retries on fresh reads)."""
    from core.sourcing_rules import SourcingRulesInput

    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    waiting = []
    for n in range(3):
        shop.container.catalog_repository.put_location(location(f"wh-{n}", name=f"Warehouse {n}"))
        shop.inventory.set_on_hand("PREORDER", f"wh-{n}", 1, reason="count")
        waiting.append(shop.backordered(3))  # holds the 1 at wh-<n>, lacks 2
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")  # no whole order for any of them

    with shop.requests() as made:
        assert consume(shop, record("wh-east", 0, 1)) == {"batchItemFailures": []}

    catalog = shop.container.config.catalog_table
    rules_read = [p for op, p in made if op == "Query" and p.get("TableName") == catalog
                  and p["ExpressionAttributeValues"].get(":pk", {}).get("S") == "SOURCING_RULES"]  # fmt: skip
    network_read = [p for op, p in made if op == "GetItem" and p.get("TableName") == catalog
                    and p["Key"]["pk"]["S"] == "NETWORK"]  # fmt: skip
    assert [shop.order(order_id).status for order_id in waiting] == [S.BACKORDERED] * 3
    assert (len(rules_read), len(network_read)) == (1 + 3, 1 + 3)  # the walk's, and each fill's


def test_units_arriving_while_the_order_goes_backordered_that_give_one_location_its_whole_order_send_it_back(
    shop, monkeypatch
):
    """The order's ReserveStock planned (its BOOK at wh-west, no PREORDER anywhere), then a PREORDER
    and a BOOK came to wh-east before it was written backordered: their walks read it `authorized`
    and left it to the step's own look at stock, which only filled (max_shipments kept wh-east
    from it), so it waited beside wh-east's whole order with no arrival to come."""
    from core.sourcing_rules import SourcingRulesInput

    shop.container.catalog_repository.put_product(product("BOOK", "12.00", allow_backorder=True))
    shop.container.sourcing_rules_service.replace(SourcingRulesInput(max_shipments=1), by="key_ops")
    shop.inventory.set_on_hand("BOOK", "wh-west", 1, reason="count")
    lines = [{"sku": "PREORDER", "quantity": 1}, {"sku": "BOOK", "quantity": 1}]
    order_id = shop.container.capture.place(place_order(external_id="in-between", lines=lines), actor="key_web").id
    shop.container.workflow.authorize_payment(order_id, attempt=0)
    real_add, arrived = DynamoBackorders.add, []

    def arriving_before_the_entry(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        if not arrived:
            arrived.append(sku)
            with another_functions_calls():
                for each in ("PREORDER", "BOOK"):
                    shop.inventory.adjust(each, "wh-east", 1, reason="receipt")
                    assert consume(shop, record("wh-east", 0, 1, sku=each)) == {"batchItemFailures": []}
            assert shop.order(order_id).status is S.AUTHORIZED  # the walks left it to the step
        real_add(backorders, sku, entry)

    monkeypatch.setattr(DynamoBackorders, "add", arriving_before_the_entry)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    monkeypatch.undo()

    assert arrived and shop.order(order_id).status is S.AUTHORIZED  # sent back: the outbox starts its workflow
    [*_, sent] = shop.container.order_repository.history(order_id)[1]
    assert sent.type == "sourced_again"
    _shipped_whole_from_wh_east(shop, order_id)


def test_the_upgrade_queues_orders_backordered_before_for_the_skus_they_hold(shop, capsys, monkeypatch):
    """An order backordered by the version before has no entry for the BOOK it holds, so no BOOK
    arriving where its PREORDER is would find it: `infra.backfill_orders --inventory-table` writes
    it (and nothing for an order that waits for every sku it orders, nor a second time)."""
    from infra import backfill_orders

    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    shop.container.catalog_repository.put_product(product("LATER", "10.00", allow_backorder=True))
    body = place_order(external_id="later", lines=[{"sku": "LATER", "quantity": 1}])
    other = shop.container.capture.place(body, actor="key_web").id  # waits for its only sku: nothing to add
    shop.container.workflow.authorize_payment(other, attempt=0)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(other)
    [entry] = shop.backorders.waiting("BOOK", None, 10)
    shop.backorders.remove("BOOK", entry)  # as the version before left it
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    consume(shop, record("wh-east", 0, 1))  # no BOOK at wh-east yet: it waits
    config = shop.container.config
    argv = ["backfill_orders", "--table", config.orders_table, "--inventory-table", config.inventory_table]
    monkeypatch.setattr("sys.argv", argv)

    backfill_orders.main()
    backfill_orders.main()  # a second run writes nothing

    assert [(e.order_id, e.holds) for e in shop.backorders.waiting("BOOK", None, 10)] == [(order_id, True)]
    assert (_queued(shop), _queued(shop, "LATER")) == ([order_id], [other])
    printed = [line for line in capsys.readouterr().out.splitlines() if "queue entries" in line]
    assert [line.split(" queue entries")[0] for line in printed] == ["1", "0"]
    shop.inventory.adjust("BOOK", "wh-east", 1, reason="receipt")
    consume(shop, record("wh-east", 0, 1, sku="BOOK"))
    assert shop.order(order_id).status is S.AUTHORIZED
    _shipped_whole_from_wh_east(shop, order_id)


def test_the_upgrade_leaves_no_entry_for_an_order_that_stopped_waiting_as_it_wrote_it(shop, monkeypatch):
    """Allocated between the upgrade's read and its entry (its clean-up ran before the entry was
    there): the entry is removed again, as that clean-up would have."""
    from functions.adapters.dynamodb import backfill_holding_entries

    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    [entry] = shop.backorders.waiting("BOOK", None, 10)
    shop.backorders.remove("BOOK", entry)
    real = DynamoBackorders.add_if_absent

    def allocated_first(queue: DynamoBackorders, sku: str, written: WaitingOrder) -> bool:
        with another_functions_calls():
            shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
            consume(shop, record("wh-west", 0, 1))
            shop.container.workflow.create_shipments(order_id)
        return real(queue, sku, written)

    monkeypatch.setattr(DynamoBackorders, "add_if_absent", allocated_first)
    config = shop.container.config
    backfill_holding_entries(shop.container.dynamodb, config.orders_table, config.inventory_table)

    assert shop.order(order_id).status is S.ALLOCATED
    assert _queued(shop, "BOOK") == _queued(shop) == []


def test_an_edit_landing_between_a_fills_read_and_its_write_is_sourced_once_and_no_fill_is_reported(shop, monkeypatch):
    """The customer edits the waiting order while an arrival's walk plans its fill: the fill's
    transaction loses (the order's version moved), reserves nothing, and the order, sent back to be
    sourced, is sourced by its workflow alone. The walk reported it filled (BackordersFilled, the
    `backorders filled` line): the edit had emptied its allocations, which it took for a fill."""
    from core.models import LineInput, OrderEdit

    shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
    order_id = shop.backordered(3)  # holds the unit at wh-west
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    real = DynamoBackorders.fill

    def edited_first(queue: DynamoBackorders, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(DynamoBackorders, "fill", real)
        with another_functions_calls():
            edit = OrderEdit(lines=[LineInput(sku="PREORDER", quantity=2)])
            shop.container.actions.edit(order_id, shop.order(order_id).version, edit, "key_cs")
        real(queue, *args, **kwargs)

    monkeypatch.setattr(DynamoBackorders, "fill", edited_first)
    arrival = shop.container.backorder_allocator.arrived("PREORDER", "wh-east")

    assert (arrival.filled, shop.order(order_id).status) == ([], S.AUTHORIZED)
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 1, 0), (2, 0, 2))  # kept for its ReserveStock
    shop.container.workflow.reserve_stock(order_id)
    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 2)]
    assert (shop.level("wh-west"), shop.level("wh-east")) == ((1, 0, 1), (2, 2, 0))


def test_two_walks_racing_on_one_order_count_it_filled_and_completed_once(shop):
    """Units came to both warehouses and their walks read the waiting order at once: the second
    filled it whole between the first's read and its fill, so the first reserved nothing, yet it too
    counted the order filled and completed (BackordersFilled, BackordersCompleted, its `backorders
    filled` line): the order its fill found held more than the one it had read. Counted by the walk
    whose write won; the other still starts the order's workflow (a restart, as for an order found
    fully reserved whose execution failed)."""
    from core.workflow import Workflow

    [order_id] = shop.backordered_first(2)
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
    allocator, real, other = shop.container.backorder_allocator, Workflow.fill_backorder, []

    def the_other_walk_first(workflow: Workflow, *args: Any, **kwargs: Any) -> Any:
        if not other:
            other.append(None)
            other[0] = allocator.arrived("PREORDER", "wh-west")
        return real(workflow, *args, **kwargs)

    with pytest.MonkeyPatch.context() as racing:
        racing.setattr(Workflow, "fill_backorder", the_other_walk_first)
        first = allocator.arrived("PREORDER", "wh-east")

    assert (other[0].filled, other[0].completed) == ([order_id], [order_id])
    assert (first.filled, first.completed) == ([], [])
    assert shop.held(order_id) == 2 and shop.level("wh-east") == shop.level("wh-west") == (1, 1, 0)
    assert shop.executions() == [order_id]


def test_an_arrival_finding_an_order_another_walk_completed_does_not_count_it_completed(shop):
    """max_shipments 1: the order holds its BOOK at wh-west and waits for a PREORDER, whose arrival
    there filled it whole (counted completed by that walk). A BOOK arriving there next reads it
    (its entry holds, but max_shipments may send it back whole) and finds every unit reserved: it
    starts the order's workflow again, as for one whose execution failed, but completed nothing
    itself (BackordersCompleted counts each order once, by the walk whose fill completed it)."""
    order_id = shop.start_from(_waiting_for_preorder_holding_a_book)
    allocator = shop.container.backorder_allocator
    shop.inventory.adjust("PREORDER", "wh-west", 1, reason="receipt")
    filling = allocator.arrived("PREORDER", "wh-west")
    assert (filling.filled, filling.completed) == ([order_id], [order_id])
    assert shop.order(order_id).status is S.BACKORDERED and not shop.order(order_id).short_of()

    shop.inventory.adjust("BOOK", "wh-west", 1, reason="receipt")
    with shop.orders_read() as read:
        found = allocator.arrived("BOOK", "wh-west")

    assert order_id in read  # read, found complete
    assert (found.filled, found.completed, found.sourced_again) == ([], [], [])
    assert shop.held(order_id) == 2 and shop.executions() == [order_id]


@pytest.mark.parametrize("units", [1, 2])
def test_units_arriving_while_an_older_order_goes_backordered_reach_it_before_a_younger_one(shop, monkeypatch, units):
    """The older order's ReserveStock found no PREORDER and queued it; before its `backordered` write
    units arrived, and their walk read it `authorized`, passed it over and gave them to the younger
    order already waiting: the older one's own look at stock, once written backordered, found none
    left, and nothing walked for it again until the next arrival. Now the walk stops at it and the
    order's step, once it has taken its units, hands the walk on: the younger one gets what is left."""
    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver = stream_delivery(shop)

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", units, reason="receipt")
        assert deliver() == 1  # the arrival's walk
        assert shop.order(older).status is S.AUTHORIZED
        assert shop.held(younger) == 0  # the walk stopped at the older order

    arrived = once_queued(monkeypatch, older, arrive)
    with contextlib.suppress(Backordered):
        shop.container.workflow.reserve_stock(older)  # its own look at stock completes it
    monkeypatch.undo()
    for _ in range(5):  # what the stream brings next (the walk handed on)
        if not deliver():
            break

    assert arrived and (shop.held(older), shop.held(younger)) == (1, units - 1)
    assert shop.level() == (units, units, 0)


def test_a_walks_stop_landing_after_the_older_orders_lost_write_handed_on_is_not_kept(shop, monkeypatch):
    """The walk read the older order `authorized`, queued; before its stop landed, a person held the
    order, whose step then lost its `backordered` write and handed on the walks stopped at it: none
    yet. The stop then landed, kept on the entry of an order held, and nothing would hand it on: the
    younger order waited beside the unit until the next arrival. A stop is kept only while the order
    is still as the walk read it (authorized at the entry's version): here refused, the walk reads
    the order again, held, and goes on past it."""
    from core.errors import OrderClosed
    from core.holds import HoldRequest
    from infra.local.moto_patches import lock

    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver, real_add, real_stop = stream_delivery(shop), DynamoBackorders.add, DynamoBackorders.stop
    queued, go, raised = threading.Event(), threading.Event(), []

    def queued_then_paused(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older:
            queued.set()
            go.wait()

    def step() -> None:
        try:
            shop.container.workflow.reserve_stock(older)
        except OrderClosed as error:
            raised.append(error)  # its write lost to the hold

    def stopping_late(backorders: DynamoBackorders, *args: Any) -> bool:
        with another_functions_calls():
            shop.container.holds.hold(older, HoldRequest(reason="fraud_review"), actor="key_ops")
        go.set()
        thread.join()  # the step lost its write and handed on what had stopped at the order
        return real_stop(backorders, *args)

    monkeypatch.setattr(DynamoBackorders, "add", queued_then_paused)
    thread = threading.Thread(target=step)
    lock.PATCH.apply()
    try:
        thread.start()
        queued.wait()
        monkeypatch.setattr(DynamoBackorders, "stop", stopping_late)
        shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
        assert deliver() == 1  # the arrival's walk
    finally:
        go.set()
        thread.join()
        lock.PATCH.undo()
    monkeypatch.undo()
    for _ in range(5):
        if not deliver():
            break

    assert raised and shop.order(older).status is S.ON_HOLD
    assert (shop.held(older), shop.held(younger)) == (0, 1) and shop.level() == (1, 1, 0)


def test_a_new_order_sourced_while_an_older_one_is_being_queued_leaves_it_the_units_that_arrived(shop, monkeypatch):
    """The older order was queued, its `backordered` write to come, when a unit arrived (its walk not
    run yet) and a new order was sourced: the new order's look behind older orders read only the
    backordered ones, took the unit, and the older order's own look found none. The older one
    queued counts as waiting, as an arrival's walk now counts it."""
    older = shop.start_from(queued_older, 1)
    real_add, newer = DynamoBackorders.add, []

    def sourced_once_queued(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older and not newer:
            shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")  # its record not consumed yet
            newer.append(shop.backordered(1))  # waits: the unit is the older order's

    monkeypatch.setattr(DynamoBackorders, "add", sourced_once_queued)
    shop.container.workflow.reserve_stock(older)  # its own look reserves the unit
    monkeypatch.undo()

    assert (shop.held(older), shop.held(newer[0])) == (1, 0) and shop.level() == (1, 1, 0)
    assert shop.order(newer[0]).status is S.BACKORDERED


def test_a_new_order_takes_the_units_an_older_order_an_edit_sent_back_to_be_sourced_is_not_counted_waiting_for(shop):
    """An edit sent the older backordered order back to be sourced: `authorized` again, its queue
    entry still the one its earlier wait wrote, at an older version, until its execution's ReserveStock
    looks at stock itself. A new order's look behind older orders passes it over (it is not queued and
    about to be written backordered), and takes the unit that arrived; the older order's step then
    waits again. Counted waiting, it held the unit back from the new order for an order that was not
    waiting for it."""
    from core.models import LineInput, OrderEdit

    [older] = shop.backordered_first(2)
    version = shop.order(older).version
    edit = OrderEdit(lines=[LineInput(sku="PREORDER", quantity=1)])
    assert shop.container.actions.edit(older, version, edit, "key_web").status is S.AUTHORIZED
    assert _queued(shop) == [older]  # its entry of its earlier wait, written at an older version
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")  # its record not consumed yet
    shop.counter += 1
    body = {"external_id": f"pre-{shop.counter}", "lines": [{"sku": "PREORDER", "quantity": 1}]}
    newer = shop.container.capture.place(place_order(**body), actor="key_web").id
    shop.container.workflow.authorize_payment(newer, attempt=0)
    shop.container.workflow.reserve_stock(newer)  # takes the unit: the older order waits for nothing yet

    assert shop.held(newer) == 1
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(older)  # the execution the edit starts
    assert (shop.held(older), shop.order(older).status) == (0, S.BACKORDERED)
    assert shop.level() == (1, 1, 0)


def test_a_walk_passes_over_a_queued_older_order_that_rejected_the_location_and_fills_the_younger_one(
    shop, monkeypatch
):
    """A person rejected the older order's parcel at wh-east, sending it back to be sourced: its
    ReserveStock queued it, its `backordered` write to come, when a unit arrived there. The walk
    reads it `authorized` at its entry's version, but it may never take units at wh-east: it does not
    stop there to wait for that order's step to hand it on, it fills the younger order at once."""
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    older = queued_older(shop, 1)
    shop.container.workflow.reserve_stock(older)
    shop.container.workflow.create_shipments(older)
    (parcel,) = shop.order(older).shipments
    shop.container.actions.reject(older, parcel.id, "damaged", "key_store")
    shop.inventory.adjust("PREORDER", "wh-east", -1, reason="damaged")  # the unit the reject freed
    younger = shop.backordered(1)
    deliver = stream_delivery(shop)

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
        assert deliver() == 1
        assert shop.held(younger) == 1  # filled by this walk, not by one handed on later

    arrived = once_queued(monkeypatch, older, arrive)
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(older)  # wh-east never supplies it; wh-west has none
    monkeypatch.undo()

    assert arrived and (shop.held(older), shop.held(younger)) == (0, 1)
    assert shop.order(older).status is S.BACKORDERED and shop.level() == (1, 1, 0)


def test_a_what_if_leaves_a_queued_older_order_the_units_that_arrived(shop, monkeypatch):
    """The older order was queued, its `backordered` write to come, when a unit arrived (its walk not
    run yet): a simulation of a new order plans it as ReserveStock would source it, the unit left to
    the older order (as test_a_new_order_sourced_while_an_older_one_is_being_queued_leaves_it_the_units_that_arrived
    shows ReserveStock does), not shipped to the new one."""
    from core.sourcing import SimulateSourcing

    older = shop.start_from(queued_older, 1)
    simulated = []

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")  # its record not consumed yet
        body = place_order(external_id="what-if", lines=[{"sku": "PREORDER", "quantity": 1}])
        simulated.append(shop.container.simulator.simulate(SimulateSourcing(orders=[body])))

    arrived = once_queued(monkeypatch, older, arrive)
    shop.container.workflow.reserve_stock(older)  # its own look reserves the unit
    monkeypatch.undo()

    [simulation] = simulated
    [plan] = simulation.items
    assert arrived and (plan.shipments, sum(line.quantity for line in plan.unfillable)) == ([], 1)
    assert shop.held(older) == 1 and shop.level() == (1, 1, 0)


def test_a_step_that_dies_handing_on_the_walk_stopped_at_its_order_hands_it_on_when_retried(shop, monkeypatch):
    """The older order took the units and marked its entry, then its step died before the walk that
    stopped at it was handed on: the Retry (ReserveStock again, the order backordered and still
    short) marks the entry anew, finds the stop still kept there, and hands the walk on, which goes
    on from after the older order to the younger one."""
    older = queued_older(shop, 3)
    younger = shop.backordered(1)
    deliver = stream_delivery(shop)

    died_handing_on(shop, older, deliver)
    assert (shop.held(older), shop.held(younger)) == (2, 0)
    with shop.orders_read() as read:
        while deliver():  # the entry's mark: its reorder points
            pass
    assert younger not in read  # nothing handed on

    shop.container.workflow.reserve_stock(older)  # the Retry: it waits on
    with shop.orders_read() as read:
        while deliver():
            pass

    assert younger in read  # the walk handed on, from after the older order
    assert (shop.held(older), shop.held(younger)) == (2, 0) and shop.level() == (2, 2, 0)


def test_a_step_that_dies_handing_on_the_walk_after_its_look_completed_the_order_hands_it_on_as_it_leaves(
    shop, monkeypatch
):
    """Two units came while the older order was queued; the walk stopped at it, its own look took
    one and completed it, and its step died after marking the entry, before handing the walk on.
    The Retry finds it complete (nothing to mark anew) and CreateShipments removes its entry, stop
    and all: the younger order waited beside the other unit until the next arrival. The entry's
    removal hands on the walks still stopped at it (its old image comes back with the delete)."""
    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver = stream_delivery(shop)

    died_handing_on(shop, older, deliver)
    assert (shop.held(older), shop.held(younger)) == (1, 0)

    shop.container.workflow.reserve_stock(older)  # the Retry: complete, it waits no more
    shop.container.workflow.create_shipments(older)
    for _ in range(5):
        if not deliver():
            break

    assert shop.order(older).status is S.ALLOCATED
    assert (shop.held(older), shop.held(younger)) == (1, 1) and shop.level() == (2, 2, 0)


def test_create_shipments_may_hand_on_the_walk_stopped_at_the_entry_it_removes(shop, aws):
    """As above, the CreateShipments task run by its own handler under its grants: its clean-up's
    removal of the entry hands the walk on with an UpdateItem of the stock item (walk_from), which
    its role did not grant (DeleteItem alone on the Inventory table): AWS refuses it after the entry
    is gone, and the younger order waits beside the unit until the next arrival."""
    from functions.bootstrap import forget_warm_containers
    from functions.workflow import create_shipments
    from tests.integration.test_handlers import Context
    from tests.template_iam import handlers_checked

    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver = stream_delivery(shop)

    died_handing_on(shop, older, deliver)
    shop.container.workflow.reserve_stock(older)  # the Retry: complete, it waits no more

    with pytest.MonkeyPatch.context() as patched:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="test-labels")
        patched.setenv("LABELS_BUCKET", "test-labels")  # its parcel's label
        forget_warm_containers()
        handlers = {"CreateShipmentsFunction": "functions.workflow.create_shipments"}
        names = {"state_machine_arns": {"OrderWorkflow": shop.arn}, "bucket_names": {"LabelsBucket": "test-labels"}}
        with handlers_checked(patched, handlers, aws.tables, **names):
            create_shipments.lambda_handler({"order_id": older}, Context())
    forget_warm_containers()
    for _ in range(5):
        if not deliver():
            break

    assert shop.order(older).status is S.ALLOCATED
    assert (shop.held(older), shop.held(younger)) == (1, 1) and shop.level() == (2, 2, 0)


@pytest.mark.parametrize("then", ["parked", "held", "cancelled"])
def test_an_older_order_whose_step_died_before_its_backordered_write_hands_on_the_walk_stopped_at_it(
    shop, monkeypatch, then
):
    """The walk stopped at the older order, queued; its step died before its `backordered` write
    (nothing lost it, so nothing handed the walk on). Its Retries spent, the workflow parked it on
    hold; or a person held or cancelled it first, and the Retry found it so. Either way it takes
    nothing from the walk, which stayed stopped at it: the younger order waited beside the unit
    until the next arrival there. The park, and the Retry that finds the order held or closed,
    hand on the walks stopped at it."""
    from core.errors import OrderClosed
    from core.holds import HoldRequest
    from functions.adapters.dynamodb import DynamoOrders

    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver, real_add, real_update, arrived = stream_delivery(shop), DynamoBackorders.add, DynamoOrders.update, []

    def arriving_once_queued(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older and not arrived:
            arrived.append(sku)
            with another_functions_calls():
                shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
                assert deliver() == 1  # the walk stops at the older order

    def dying(orders: DynamoOrders, new: Any, *args: Any, **kwargs: Any) -> None:
        if new.id == older and new.status is S.BACKORDERED:
            raise OSError("died")
        real_update(orders, new, *args, **kwargs)

    monkeypatch.setattr(DynamoBackorders, "add", arriving_once_queued)
    monkeypatch.setattr(DynamoOrders, "update", dying)
    with pytest.raises(OSError):
        shop.container.workflow.reserve_stock(older)
    monkeypatch.undo()
    assert shop.order(older).status is S.AUTHORIZED and shop.held(younger) == 0
    if then == "parked":
        assert shop.container.workflow.park_after_failure(older, "OSError", "died")
    else:
        if then == "held":
            shop.container.holds.hold(older, HoldRequest(reason="fraud_review"), actor="key_ops")
        else:
            _cancel_recorded(shop, older)
        with pytest.raises(OrderClosed):
            shop.container.workflow.reserve_stock(older)  # the Retry
    for _ in range(5):
        if not deliver():
            break

    assert shop.order(older).status is (S.CANCELLED if then == "cancelled" else S.ON_HOLD)
    assert (shop.held(older), shop.held(younger)) == (0, 1) and shop.level() == (1, 1, 0)


def test_walks_of_two_locations_stopped_at_one_queued_order_are_both_handed_on(shop, monkeypatch):
    """Units came to both warehouses while the older order was queued: both walks stopped at it
    (one stop per location on its entry). Its own look took the one unit it lacks, and its step
    handed both walks on: the younger order gets the two units left, one at each warehouse."""
    older, younger = shop.start_from(older_queued_younger_waiting, 2)
    deliver = stream_delivery(shop)

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
        shop.inventory.adjust("PREORDER", "wh-west", 2, reason="receipt")
        assert deliver() == 2  # both walks stop at the older order
        assert shop.held(younger) == 0

    arrived = once_queued(monkeypatch, older, arrive)
    shop.container.workflow.reserve_stock(older)  # its own look completes it
    monkeypatch.undo()
    for _ in range(5):
        if not deliver():
            break

    assert arrived and (shop.held(older), shop.held(younger)) == (1, 2)
    east, west = shop.level("wh-east"), shop.level("wh-west")
    assert (east[1] + west[1], east[2] + west[2]) == (3, 0)


def test_a_walk_from_units_a_cancel_freed_stopped_at_a_queued_order_is_handed_on(shop, monkeypatch):
    """Units a cancel freed are not a restock (on_hand unchanged, the location counted since its last
    receipt): their walk stopped at the older order, queued, as a receipt's does, and its step, once it
    has taken its unit, hands that walk on too: the younger order gets the unit left, not only at the
    next restock there."""
    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    shop.container.inventory.count("PREORDER", "wh-east", 2, actor="key_stock_take")  # restocked since: no more
    body = place_order(external_id="holder", lines=[{"sku": "PREORDER", "quantity": 2}])
    holder = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(holder, attempt=0)
    shop.container.workflow.reserve_stock(holder)
    assert shop.held(holder) == 2
    older = queued_older(shop, 1)
    younger = shop.backordered(1)
    deliver, real_add, freed = stream_delivery(shop), DynamoBackorders.add, []

    def freed_once_queued(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older and not freed:
            freed.append(sku)
            with another_functions_calls():
                _cancel_recorded(shop, holder)  # releases its 2 units
                assert deliver() == 1  # the release's walk, not restocked: it stops at the older order
            assert shop.order(older).status is S.AUTHORIZED and shop.held(younger) == 0

    monkeypatch.setattr(DynamoBackorders, "add", freed_once_queued)
    shop.container.workflow.reserve_stock(older)  # its own look completes it
    monkeypatch.undo()
    for _ in range(5):  # what the stream brings next (the walk handed on)
        if not deliver():
            break

    assert freed and (shop.held(holder), shop.held(older), shop.held(younger)) == (0, 1, 1)
    assert shop.level() == (2, 2, 0)


def test_a_restocks_walk_stopped_at_a_queued_order_lifts_a_younger_orders_count_exclusion_once_handed_on(
    shop, monkeypatch
):
    """A receipt at the location a stock take excluded the younger order from: its walk stopped at the
    older order, queued. Handed on by the older order's step, the walk is still the restock's, so the
    younger order takes the units there, its exclusion lifted, rather than wait beside them for the
    next restock there."""
    older = shop.start_from(queued_older, 1)
    younger = counted_out_of(shop, "wh-east")  # of 3, wh-east excluded for it by the count
    deliver = stream_delivery(shop)

    def arrive() -> None:
        shop.inventory.adjust("PREORDER", "wh-east", 4, reason="receipt")
        assert deliver() == 1  # the restock's walk stops at the older order
        assert shop.order(older).status is S.AUTHORIZED and shop.held(younger) == 0

    arrived = once_queued(monkeypatch, older, arrive)
    shop.container.workflow.reserve_stock(older)  # its own look completes it
    monkeypatch.undo()
    for _ in range(5):  # what the stream brings next (the walk handed on)
        if not deliver():
            break

    assert arrived and (shop.held(older), shop.held(younger)) == (1, 3)
    assert [(a.location_id, a.quantity) for a in shop.order(younger).allocations] == [("wh-east", 3)]
    assert shop.order(younger).excluded_locations == [] and shop.level() == (4, 4, 0)


@pytest.mark.parametrize("leaves", ["cancel", "hold", "edit"])
def test_an_older_order_a_walk_stopped_at_that_leaves_before_it_waits_hands_the_walk_on(shop, monkeypatch, leaves):
    """The walk stopped at the older order, queued and still `authorized`; then a person cancelled it
    (or held it, or edited it) before its `backordered` write, which lost: the younger order still
    gets the unit, the walk handed on past the older one by its step, not left until the next
    arrival. The edited order is sourced again by the step's retry, after the younger one."""
    from core.errors import OrderClosed
    from core.holds import HoldRequest
    from core.models import LineInput, OrderEdit

    older, younger = shop.start_from(older_queued_younger_waiting, 1)
    deliver, real_add, arrived = stream_delivery(shop), DynamoBackorders.add, []

    def arriving_then_leaving(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older and not arrived:
            arrived.append(sku)
            with another_functions_calls():
                shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
                assert deliver() == 1  # the arrival's walk: it stops at the older order
                assert shop.held(younger) == 0
                if leaves == "cancel":
                    _cancel_recorded(shop, older)
                elif leaves == "hold":
                    shop.container.holds.hold(older, HoldRequest(reason="fraud_review"), actor="key_ops")
                else:
                    edit = OrderEdit(lines=[LineInput(sku="PREORDER", quantity=2)])
                    shop.container.actions.edit(older, shop.order(older).version, edit, "key_web")

    monkeypatch.setattr(DynamoBackorders, "add", arriving_then_leaving)
    with pytest.raises(TransientError if leaves == "edit" else OrderClosed):
        shop.container.workflow.reserve_stock(older)  # its write lost
    monkeypatch.undo()
    for _ in range(5):
        if not deliver():
            break

    assert arrived and (shop.held(older), shop.held(younger)) == (0, 1)
    assert shop.order(older).status is {"cancel": S.CANCELLED, "hold": S.ON_HOLD, "edit": S.AUTHORIZED}[leaves]
    assert shop.level() == (1, 1, 0)
    if leaves == "edit":
        with pytest.raises(Backordered):
            shop.container.workflow.reserve_stock(older)  # the retry: nothing left for it
        assert shop.order(older).status is S.BACKORDERED and shop.held(younger) == 1


@pytest.mark.parametrize("when", ["queued", "backordered"])
def test_a_walk_stopped_at_an_order_that_waited_before_and_is_cancelled_is_handed_on(shop, monkeypatch, when):
    """The older order had waited before (an edit of its method sent it back, its `may_wait` kept): queued again by
    its ReserveStock, a walk stopped at it; then a person cancelled it, before its `backordered` write
    or after it and before its entry was marked. The cancel's clean-up removed its entry, and with it
    the walk kept there: its step's hand-on (walked_past, recorded) found no entry, and the younger
    order waited beside the unit until the next arrival. A removal hands on the walks it removes."""
    from core.errors import OrderClosed
    from core.models import OrderEdit
    from core.workflow import Workflow

    older, younger = shop.backordered_first(1, 1)
    edit = OrderEdit(shipping_method="express")
    shop.container.actions.edit(older, shop.order(older).version, edit, "key_web")  # sent back, may_wait kept
    assert shop.order(older).status is S.AUTHORIZED and shop.order(older).may_wait == ["PREORDER"]
    deliver, real_add, real_fill, arrived = stream_delivery(shop), DynamoBackorders.add, Workflow.fill_backorder, []

    def arrive() -> None:
        with another_functions_calls():
            shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
            assert deliver() == 1  # the arrival's walk: it stops at the older order
            assert shop.held(younger) == 0
            if when == "queued":
                _cancel_recorded(shop, older)

    def arriving_once_queued(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if entry.order_id == older and not arrived:
            arrived.append(sku)
            arrive()

    def cancelled_before_its_look(workflow: Workflow, order_id: str, *args: Any, **kwargs: Any) -> Any:
        if order_id == older and arrived == ["PREORDER"]:
            arrived.append("cancelled")
            with another_functions_calls():
                _cancel_recorded(shop, older)
        return real_fill(workflow, order_id, *args, **kwargs)

    monkeypatch.setattr(DynamoBackorders, "add", arriving_once_queued)
    if when == "backordered":
        monkeypatch.setattr(Workflow, "fill_backorder", cancelled_before_its_look)
    with pytest.raises(OrderClosed):
        shop.container.workflow.reserve_stock(older)
    monkeypatch.undo()
    for _ in range(5):
        if not deliver():
            break

    assert arrived and shop.order(older).status is S.CANCELLED
    assert (shop.held(older), shop.held(younger)) == (0, 1) and shop.level() == (1, 1, 0)


# --- A stock take's exclusion lapses once the location is restocked ------------------------------


def stock_record(location_id: str, old_on_hand: int, new_on_hand: int, reserved: int = 0) -> dict[str, Any]:
    """A stock item's change as the Inventory stream carries it: on_hand with available."""
    images = {
        name: {"on_hand": {"N": str(on_hand)}, "reserved": {"N": str(reserved)},
               "available": {"N": str(on_hand - reserved)}}
        for name, on_hand in (("OldImage", old_on_hand), ("NewImage", new_on_hand))
    }  # fmt: skip
    return {**record(location_id, old_on_hand - reserved, new_on_hand - reserved), "dynamodb": {
        "Keys": {"sku": {"S": "PREORDER"}, "location_id": {"S": location_id}}, "SequenceNumber": "2", **images,
    }}  # fmt: skip


def holding_two_of_three(shop: Shop, location_id: str) -> str:
    """An order of 3 PREORDER holding the 2 units received at `location_id`, backordered for one more."""
    shop.inventory.adjust("PREORDER", location_id, 2, reason="receipt")
    return shop.backordered(3)


def counted_out_of(shop: Shop, location_id: str) -> str:
    """An order of 3 that held the 2 units at `location_id` and waited for one more, sent back to
    be sourced by a stock take there of 0 and backordered again holding nothing: `location_id`
    is excluded for it by the count, and no other location has any."""
    order_id = holding_two_of_three(shop, location_id)
    assert shop.held(order_id) == 2
    shop.container.inventory.count("PREORDER", location_id, 0, actor="key_stock_take")
    assert shop.order(order_id).status is S.AUTHORIZED  # its workflow sources it again, without there
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    assert (shop.order(order_id).status, shop.held(order_id)) == (S.BACKORDERED, 0)
    return order_id


@pytest.mark.parametrize("restock", ["receipt", "count"])
def test_a_location_a_stock_take_counted_short_supplies_the_order_again_once_restocked(shop, restock):
    order_id = shop.start_from(counted_out_of, "wh-east")

    if restock == "receipt":
        shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    else:
        shop.container.inventory.count("PREORDER", "wh-east", 5, actor="key_stock_take")
    assert consume(shop, stock_record("wh-east", 0, 5)) == {"batchItemFailures": []}

    # It waited for stock elsewhere while the restocked location had units.
    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (5, 3, 2)
    assert shop.executions() == [order_id]
    (entry,) = [e for e in shop.container.order_repository.history(order_id)[1] if e.type == "stock_reserved"][-1:]
    assert entry.detail["exclusion_lapsed"] == {"location_id": "wh-east", "sku": "PREORDER"}


def test_a_restock_while_a_short_counts_mark_stands_there_lifts_no_exclusion(shop):
    # The count's rejects' releases may not have landed while its mark stands: an order filled there
    # before they do would have its new units released by them.
    order_id = shop.start_from(counted_out_of, "wh-east")
    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    marked = stock_record("wh-east", 0, 5)
    marked["dynamodb"]["NewImage"][SHORT_COUNT] = {"S": SHORT_COUNT}

    assert consume(shop, marked) == {"batchItemFailures": []}

    order = shop.order(order_id)
    assert (order.status, shop.held(order_id), order.excluded_locations) == (S.BACKORDERED, 0, ["wh-east"])


def test_units_released_at_a_location_not_restocked_since_its_last_count_lift_no_exclusion(shop):
    # Released units are not new: they are the orders' there to take, not the one a count sent away.
    order_id = shop.start_from(counted_out_of, "wh-east")
    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    shop.container.inventory.count("PREORDER", "wh-east", 5, actor="key_stock_take")  # restocked since: no more
    released = stock_record("wh-east", 5, 5, reserved=1)
    released["dynamodb"]["NewImage"]["available"] = {"N": "5"}
    released["dynamodb"]["NewImage"]["reserved"] = {"N": "0"}

    assert consume(shop, released) == {"batchItemFailures": []}

    order = shop.order(order_id)
    assert (order.status, shop.held(order_id), order.excluded_locations) == (S.BACKORDERED, 0, ["wh-east"])


def test_a_restock_redelivered_lifts_the_exclusion_and_reserves_once(shop):
    order_id = shop.start_from(counted_out_of, "wh-east")
    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    batch = [stock_record("wh-east", 0, 5)]

    consume(shop, *batch)
    consume(shop, *batch)

    assert shop.held(order_id) == 3 and shop.level() == (5, 3, 2)
    assert [e.type for e in shop.container.order_repository.history(order_id)[1]].count("stock_reserved") == 1


def test_a_location_whose_store_rejected_the_order_stays_excluded_once_restocked(shop):
    # A person refused the order there: a restock does not change that, as a count's shortfall it does.
    order_id = shop.start_from(holding_two_of_three, "wh-east")  # the third unit comes, and it is allocated there
    shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    consume(shop, stock_record("wh-east", 2, 3, reserved=2))
    shop.container.workflow.create_shipments(order_id)
    (parcel,) = shop.order(order_id).shipments
    shop.container.actions.reject(order_id, parcel.id, "damaged", "key_store")
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)
    assert (shop.order(order_id).status, shop.held(order_id)) == (S.BACKORDERED, 0)

    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    consume(shop, stock_record("wh-east", 3, 8))

    assert (shop.order(order_id).status, shop.held(order_id)) == (S.BACKORDERED, 0)
    assert shop.level() == (8, 0, 8)


def test_a_restocks_walk_handed_on_lifts_a_counts_exclusion_for_the_orders_past_its_first_stretch(shop, monkeypatch):
    """The walk that reaches the order counted out of the location is the one the restock's record
    handed on (its first stretch read an older order on hold): a restock all the same."""
    from core.holds import HoldRequest

    monkeypatch.setattr("core.backorders.WALK_READS", 1)
    [held] = shop.backordered_first(1)
    shop.container.holds.hold(held, HoldRequest(reason="fraud_review"), actor="key_ops")
    order_id = counted_out_of(shop, "wh-east")
    deliver = stream_delivery(shop)

    shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt")
    while deliver():
        pass

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (5, 3, 2)


def _delivered(shop: Shop, change: Callable[[], object]) -> None:
    """`change` made, and every Inventory stream record of it the BackorderFunction's filter passes
    delivered to its handler."""
    deliver = stream_delivery(shop)
    change()
    while deliver():
        pass


def _lapsed_in_reserve(shop: Shop, order_id: str, detail: str) -> object:
    [entry] = [e for e in shop.container.order_repository.history(order_id)[1] if e.type == "stock_reserved"][-1:]
    return entry.detail.get(detail)


def test_a_restock_landing_while_a_counted_out_order_awaits_its_reserve_stock_lifts_the_exclusion_there(shop):
    """The count sends the order back to be sourced: until its ReserveStock runs (seconds) it is
    authorized, and the restock's walk passes it over. Its ReserveStock finds the stock item
    restocked since that count and takes the units there, the exclusion lifted in its own write,
    rather than waiting backordered beside them for the next restock there."""
    order_id = shop.start_from(holding_two_of_three, "wh-east")
    shop.container.inventory.count("PREORDER", "wh-east", 0, actor="key_stock_take")
    assert shop.order(order_id).status is S.AUTHORIZED

    _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt"))
    assert shop.held(order_id) == 0 and shop.level() == (5, 0, 5)  # passed over: not backordered
    shop.container.workflow.reserve_stock(order_id)

    order = shop.order(order_id)
    assert [(a.location_id, a.quantity) for a in order.allocations] == [("wh-east", 3)]
    assert shop.level() == (5, 3, 2)
    assert order.excluded_locations == [] and order.counted_short == {}
    assert _lapsed_in_reserve(shop, order_id, "exclusions_lapsed") == [{"location_id": "wh-east", "sku": "PREORDER"}]


def test_a_restock_landing_while_a_counted_out_order_goes_backordered_is_taken_by_its_own_look(shop, monkeypatch):
    """Sent back by a count at wh-east, the order's ReserveStock read the stock item (not restocked
    since the count), found nothing anywhere and queued it; the restock landed before its
    `backordered` write, and its walk stopped at it. Its own look after that write kept wh-east
    excluded (the lapse it knew of was read before the restock): it waited beside the 3 units, its
    walk handed on past it, until the next restock there."""
    order_id = shop.start_from(holding_two_of_three, "wh-east")
    shop.container.inventory.count("PREORDER", "wh-east", 0, actor="key_stock_take")
    assert shop.order(order_id).status is S.AUTHORIZED
    real_add, restocked = DynamoBackorders.add, []

    def restocked_once_queued(backorders: DynamoBackorders, sku: str, entry: WaitingOrder) -> None:
        real_add(backorders, sku, entry)
        if not restocked:
            restocked.append(sku)
            with another_functions_calls():
                _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 3, reason="receipt"))
            assert shop.order(order_id).status is S.AUTHORIZED and shop.held(order_id) == 0

    monkeypatch.setattr(DynamoBackorders, "add", restocked_once_queued)
    shop.container.workflow.reserve_stock(order_id)  # completed by its own look
    monkeypatch.undo()

    order = shop.order(order_id)
    assert restocked and [(a.location_id, a.quantity) for a in order.allocations] == [("wh-east", 3)]
    assert order.counted_short == {} and shop.level() == (3, 3, 0)


def test_a_restock_too_small_landing_while_a_counted_out_order_awaits_its_reserve_stock_lifts_the_exclusion_too(shop):
    """As above, but the units restocked do not fill it: it waits backordered holding them, the
    exclusion lifted in that write, not listing the location it holds units at as excluded."""
    order_id = shop.start_from(holding_two_of_three, "wh-east")
    shop.container.inventory.count("PREORDER", "wh-east", 0, actor="key_stock_take")
    assert shop.order(order_id).status is S.AUTHORIZED

    _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt"))
    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)

    order = shop.order(order_id)
    assert (order.status, [(a.location_id, a.quantity) for a in order.allocations]) == (
        S.BACKORDERED, [("wh-east", 2)]
    )  # fmt: skip
    assert order.excluded_locations == [] and order.counted_short == {}
    (entry,) = [e for e in shop.container.order_repository.history(order_id)[1] if e.type == "backordered"][-1:]
    assert entry.detail["exclusions_lapsed"] == [{"location_id": "wh-east", "sku": "PREORDER"}]


def test_a_restock_landing_while_a_counted_out_backorder_is_held_is_taken_once_it_is_released(shop):
    from core.holds import HoldRequest, ReleaseRequest

    order_id = shop.start_from(counted_out_of, "wh-east")
    shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt"))
    assert shop.held(order_id) == 0 and shop.level() == (5, 0, 5)  # a held order is passed over

    assert shop.container.holds.release(order_id, ReleaseRequest(), actor="key_ops").status is S.BACKORDERED
    shop.container.workflow.reserve_stock(order_id)  # the execution the release starts

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (5, 3, 2)
    assert _lapsed_in_reserve(shop, order_id, "exclusion_lapsed") == {"location_id": "wh-east", "sku": "PREORDER"}


def test_a_restock_landing_while_a_held_backorder_a_count_sent_back_is_held_is_taken_once_it_is_released(shop):
    from core.holds import HoldRequest, ReleaseRequest

    order_id = shop.start_from(holding_two_of_three, "wh-east")
    shop.container.holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")
    shop.container.inventory.count("PREORDER", "wh-east", 0, actor="key_stock_take")
    assert (shop.order(order_id).status, shop.order(order_id).hold.resume_to) == (S.ON_HOLD, S.AUTHORIZED)
    _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 5, reason="receipt"))

    assert shop.container.holds.release(order_id, ReleaseRequest(), actor="key_ops").status is S.AUTHORIZED
    shop.container.workflow.reserve_stock(order_id)  # the execution the release starts

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (5, 3, 2)


@pytest.mark.parametrize("since", ["nothing", "a count of what is there", "a count below it"])
def test_units_a_count_left_where_it_counted_short_stay_out_of_reach_of_the_order_it_excluded(shop, since):
    """Only units added since the stock take lift its exclusion: the receipt before it, or a later
    count that adds none, leaves the order waiting elsewhere and the units to the orders that may
    take them there."""
    order_id = shop.start_from(holding_two_of_three, "wh-east")
    shop.container.inventory.count("PREORDER", "wh-east", 1, actor="key_stock_take")  # one of its 2 is gone
    if since != "nothing":
        shop.inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
        shop.container.inventory.count("PREORDER", "wh-east", 2 if since == "a count of what is there" else 1)

    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(order_id)

    assert (shop.held(order_id), shop.order(order_id).excluded_locations) == (0, ["wh-east"])


def test_units_freed_where_a_count_excluded_an_order_go_to_it_once_that_location_was_restocked_since(shop):
    """The restock's walk stops at an older order still short (it took every unit) before it reaches
    the order a count excluded there. Units freed there later (that older order cancelled) are units
    of a location restocked since the count all the same: the order takes them, its exclusion lifted,
    rather than wait beside them for the next restock there."""
    from core.holds import HoldRequest, ReleaseRequest

    older = shop.backordered(4)
    shop.container.holds.hold(older, HoldRequest(reason="fraud_review"), actor="key_ops")  # so the next takes wh-east's
    order_id = counted_out_of(shop, "wh-east")
    assert shop.container.holds.release(older, ReleaseRequest(), actor="key_ops").status is S.BACKORDERED
    _delivered(shop, lambda: shop.inventory.adjust("PREORDER", "wh-east", 3, reason="receipt"))
    assert (shop.held(older), shop.held(order_id)) == (3, 0)  # the walk stopped at the older one, still short

    _delivered(shop, lambda: _cancel_recorded(shop, older))

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (3, 3, 0)


@pytest.mark.parametrize(
    "change, restocked",
    [
        ("nothing", False),
        ("a receipt", True),
        ("a return restocked", True),
        ("a count above", True),
        ("a count of what is there", False),
        ("a count below", False),
        ("a receipt, then a count of what is there", False),
        ("a receipt, then a removal", True),
        ("a receipt under a short count's mark", False),
    ],
)
def test_a_stock_item_says_whether_units_were_added_since_its_last_count(shop, change, restocked):
    inventory = shop.inventory
    inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    shop.container.inventory.count("PREORDER", "wh-east", 2)  # the count everything below is since
    if change.startswith("a receipt"):
        inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")
    if change == "a return restocked":
        inventory.restock("PREORDER", "wh-east", "rma_" + "a" * 24 + "#L1", 1)
    elif change in {"a count above", "a count of what is there", "a count below"}:
        on_hand = {"a count above": 3, "a count of what is there": 2, "a count below": 1}[change]
        shop.container.inventory.count("PREORDER", "wh-east", on_hand)
    elif change == "a receipt, then a count of what is there":
        shop.container.inventory.count("PREORDER", "wh-east", 3)
    elif change == "a receipt, then a removal":
        inventory.adjust("PREORDER", "wh-east", -1, reason="damaged")
    elif change == "a receipt under a short count's mark":
        from core.ports import ShortCount

        inventory.reserve("PREORDER", "wh-east", "ord_" + "b" * 24 + "#L1", 3)
        inventory.set_on_hand(
            "PREORDER", "wh-east", 1, "stock_take", {"ord_" + "b" * 24 + "#L1": 3},
            ShortCount("PREORDER", "wh-east", "key_stock_take", NOW), counted_at=NOW,
        )  # fmt: skip
        inventory.adjust("PREORDER", "wh-east", 1, reason="receipt")

    assert inventory.restocked_since_count({("PREORDER", "wh-east"), ("PREORDER", "wh-west")}) == (
        {("PREORDER", "wh-east")} if restocked else set()
    )


def test_only_an_order_a_count_excluded_reads_whether_its_locations_were_restocked(shop):
    """ReserveStock of an order no count excluded anywhere (nearly every order) reads nothing more;
    one a count excluded reads those stock items once as it plans, and once more once written
    backordered (a restock may have landed in between, its walk stopped at the order), and no step
    writes anything more for it."""

    def restock_reads(order_id: str) -> list[str]:
        with shop.requests() as made, contextlib.suppress(Backordered):
            shop.container.workflow.reserve_stock(order_id)
        return [name for name, params in made if "restocked_since_count" in json.dumps(params, default=str)]

    shop.inventory.adjust("PREORDER", "wh-east", 2, reason="receipt")
    body = place_order(external_id="plain", lines=[{"sku": "PREORDER", "quantity": 3}])
    plain = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(plain, attempt=0)
    assert restock_reads(plain) == []
    shop.container.inventory.count("PREORDER", "wh-east", 0, actor="key_stock_take")  # sends it back

    assert restock_reads(plain) == ["BatchGetItem", "BatchGetItem"]  # it waits backordered: its own look


def test_a_new_order_sourced_before_a_restocks_walk_leaves_its_units_to_the_older_order_a_count_excluded_there(shop):
    """Units restocked at the location a count excluded the older order from are on the stock item a
    moment before the stream hands them to the queue: a new order sourced in that moment leaves them
    to it, as it leaves any older backordered order the units it may take."""
    order_id = shop.start_from(counted_out_of, "wh-east")
    shop.inventory.adjust("PREORDER", "wh-east", 3, reason="receipt")  # its walk not run yet
    body = place_order(external_id="newer", lines=[{"sku": "PREORDER", "quantity": 1}])
    newer = shop.container.capture.place(body, actor="key_web").id
    shop.container.workflow.authorize_payment(newer, attempt=0)

    with pytest.raises(Backordered):
        shop.container.workflow.reserve_stock(newer)
    assert shop.held(newer) == 0
    consume(shop, stock_record("wh-east", 0, 3))

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 3)]
    assert shop.level() == (3, 3, 0)
