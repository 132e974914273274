"""A hot sku: one stock item (sku x location) keeps every open reservation of it in its
`reservations` map, and a DynamoDB item is at most 400 KB. How many it holds with real keys
(`ord_<24>#L<n>`), and what an order past that sees: sourced from another location, or parked on
hold for a person under a reason that says so, never cancelled and never holding units it does not
record. On moto with the real adapters and workflow; moto does not check the size of an item a
nested update grows, so `ItemLimit` refuses an update past 400 KB as DynamoDB does."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bench.cost import item_bytes
from core.errors import ReservationsFull
from core.ids import order_id_for, reservation_key
from core.status import OrderStatus
from core.workflow import PARK, after_failure
from functions.bootstrap import Config, Container, bootstrap
from functions.business_metrics import flush
from tests.builders import location, place_order, product
from tests.fakes import FakeLabels
from tests.integration.conftest import pass_through_workflow

S = OrderStatus
LIMIT = 400 * 1024  # DynamoDB's item size limit: attribute names plus values


class ItemLimit:
    """A DynamoDB client whose UpdateItem of a stock item, like DynamoDB's, refuses to leave it past
    `limit` bytes (counted as DynamoDB counts them, bench.cost.item_bytes): moto applies the update,
    and one that took the item past the limit is undone and answered with DynamoDB's
    ValidationException. The limit is DynamoDB's 400 KB where the capacity is measured; the
    workflow's tests fill an item to a lower one, where moto's update of it is fast."""

    def __init__(self, client: Any, table: str, limit: int):
        self._client = client
        self._table = table
        self.limit = limit
        self.refused: list[tuple[str, str]] = []

    def update_item(self, **request: Any) -> dict[str, Any]:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends
        from moto.dynamodb.models.dynamo_type import DynamoType

        if request["TableName"] != self._table:
            return self._client.update_item(**request)
        table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table(self._table)
        sku, location_id = (DynamoType(request["Key"][name]) for name in ("sku", "location_id"))
        before = copy.deepcopy(table.get_item(sku, location_id))
        answer = self._client.update_item(**request)
        after = table.get_item(sku, location_id)
        if after is None or item_bytes(after.to_json()["Attributes"]) <= self.limit:
            return answer
        if before is None:
            table.items[sku].pop(location_id)
        else:
            table.items[sku][location_id] = before
        self.refused.append((sku.value, location_id.value))
        raise ClientError(
            {"Error": {"Code": "ValidationException", "Message": "Item size has exceeded the maximum allowed size"}},
            "UpdateItem",
        )

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        """The transaction, undone whole (every item it wrote, in any table) and refused as
        DynamoDB refuses it when it left a stock item past the limit: TransactionCanceledException,
        that item's reason ValidationError."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends
        from moto.dynamodb.models.dynamo_type import DynamoType

        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        written = []
        for action in request["TransactItems"]:
            ((kind, body),) = action.items()
            table = backend.get_table(body["TableName"])
            names = [name for name in (table.hash_key_attr, table.range_key_attr) if name]
            key = [DynamoType((body["Item"] if kind == "Put" else body["Key"])[name]) for name in names]
            written.append((table, key, copy.deepcopy(table.get_item(*key))))
        answer = self._client.transact_write_items(**request)
        over = [
            n for n, (table, key, _) in enumerate(written)
            if table.name == self._table and (item := table.get_item(*key)) is not None
            and item_bytes(item.to_json()["Attributes"]) > self.limit
        ]  # fmt: skip
        if not over:
            return answer
        for table, key, before in written:
            home = table.items[key[0]] if len(key) == 2 else table.items
            if before is None:
                home.pop(key[-1], None)
            else:
                home[key[-1]] = before
        self.refused.extend((written[n][1][0].value, written[n][1][1].value) for n in over)
        reasons = [
            {"Code": "ValidationError", "Message": "Item size has exceeded the maximum allowed size"}
            if n in over else {"Code": "None"}
            for n in range(len(written))
        ]  # fmt: skip
        raise ClientError(
            {"Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
             "CancellationReasons": reasons},
            "TransactWriteItems",
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@functools.cache
def hot_key(n: int) -> str:
    """The key of an order's first line, as a real order's is (`ord_` and 24 characters, `#L1`)."""
    return reservation_key(order_id_for("web", f"hot-{n}"), "L1")


@dataclass
class Shop:
    container: Container
    client: ItemLimit
    table: str
    counter: int = field(default=0)

    def fill(self, sku: str, location_id: str, spare: int, room: int = 0, exactly: int | None = None) -> int:
        """The stock item of `sku` at `location_id` holding as many open reservations of a unit
        each (real keys) as fit under the limit with `room` more, and `spare` units available; how
        many. Written whole (a PutItem, as moto takes it): moto's update of a map this size costs
        a second."""
        self.container.inventory.count(sku, location_id, 1)
        item = self.client.get_item(TableName=self.table, Key={"sku": {"S": sku}, "location_id": {"S": location_id}})
        item = {name: value for name, value in item["Item"].items() if name != "arrived"}

        def filled(n: int) -> dict[str, Any]:
            return item | {
                "reservations": {"M": {hot_key(i): {"N": "1"} for i in range(n)}},
                "on_hand": {"N": str(n + spare)}, "reserved": {"N": str(n)}, "available": {"N": str(spare)},
            }  # fmt: skip

        if exactly is not None:
            self.client.put_item(TableName=self.table, Item=filled(exactly))
            return exactly
        entry = 1 + len(hot_key(0)) + 2  # a map entry: a byte, its name, a one-digit number
        n = (self.client.limit - item_bytes(filled(0))) // entry
        while item_bytes(filled(n)) > self.client.limit - room:
            n -= 1
        while item_bytes(filled(n + 1)) <= self.client.limit - room:
            n += 1
        self.client.put_item(TableName=self.table, Item=filled(n))
        return n

    def stored(self, sku: str, location_id: str) -> tuple[int, tuple[int, int, int]]:
        """The stock item's size and (on_hand, reserved, available), read from moto's memory:
        moto answers a read of an item this size in seconds."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends
        from moto.dynamodb.models.dynamo_type import DynamoType

        table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table(self.table)
        item = table.get_item(DynamoType({"S": sku}), DynamoType({"S": location_id})).to_json()["Attributes"]
        return item_bytes(item), tuple(int(item[name]["N"]) for name in ("on_hand", "reserved", "available"))

    def level(self, sku: str, location_id: str) -> tuple[int, int, int]:
        [level] = self.container.inventory_repository.levels({sku}, [location_id], consistent=True)[sku]
        return level.on_hand, level.reserved, level.available

    def authorized(self, *lines: tuple[str, int]) -> str:
        self.counter += 1
        body = {"external_id": f"hot-order-{self.counter}", "lines": [{"sku": s, "quantity": q} for s, q in lines]}
        order_id = self.container.capture.place(place_order(**body), actor="key_web").id
        self.container.workflow.authorize_payment(order_id, attempt=0)
        return order_id

    def reserve_step(self, order_id: str) -> str:
        """ReserveStock as the state machine runs it: the step, and on an error the state its
        Catch leads to (infra/order_workflow.asl.json, checked against after_failure), ParkOrder
        run with the Lambda's error and cause. The state it ended in."""
        try:
            self.container.workflow.reserve_stock(order_id)
        except Exception as error:
            name = type(error).__name__
            state = after_failure(name)
            if state == PARK:
                cause = json.dumps({"errorMessage": str(error), "errorType": name})
                assert self.container.workflow.park_after_failure(order_id, name, cause)
            return state
        return "CreateShipments"

    def order(self, order_id: str):
        return self.container.order_repository.get(order_id, consistent=True)


@pytest.fixture
def shop(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    pass_through_workflow(monkeypatch)
    client = ItemLimit(aws.dynamodb, aws.tables["InventoryTable"], limit=4 * 1024)
    container = bootstrap(Config.from_env(), dynamodb=client, label_store=FakeLabels())
    catalog = container.catalog_repository
    catalog.put_product(product("HOT", "30.00"))
    catalog.put_product(product("COLD", "10.00"))
    # The nearer to the orders' San Francisco address: sourcing's first choice.
    catalog.put_location(location("wh-sf", name="SF warehouse", latitude=37.77, longitude=-122.2))
    yield Shop(container, client, aws.tables["InventoryTable"])


def test_a_stock_item_would_hold_about_twelve_thousand_open_reservations_then_refuses_the_next(shop, monkeypatch):
    # Measured at DynamoDB's own limit, without RESERVATIONS_ROOM: each open reservation costs its
    # key (`ord_` + 24 + `#L1`, 31 bytes), its units (2 bytes for 1 to 99) and a byte, so 400 KB
    # would hold about 12,000, and a DynamoDB refusal of the size is ReservationsFull too.
    from functions.adapters import dynamodb

    monkeypatch.setattr(dynamodb, "RESERVATIONS_ROOM", 1_000_000)
    shop.client.limit = LIMIT
    inventory = shop.container.inventory_repository
    held = shop.fill("HOT", "wh-sf", spare=500, room=34)
    inventory.reserve("HOT", "wh-sf", hot_key(held), 1)  # the last that fits
    held += 1

    with pytest.raises(ReservationsFull) as refused:
        inventory.reserve("HOT", "wh-sf", hot_key(held), 1)

    assert refused.value.sku == "HOT" and refused.value.location_id == "wh-sf"
    assert 12_000 <= held <= 12_100  # 12,043 measured
    size, level = shop.stored("HOT", "wh-sf")
    # The refused write changed nothing; a full item still gives units back (a release shrinks it).
    assert size <= LIMIT < size + 34 and level == (held - 1 + 500, held, 499)
    inventory.release("HOT", "wh-sf", hot_key(0))
    assert shop.stored("HOT", "wh-sf")[1] == (held - 1 + 500, held - 1, 500)


def test_a_stock_item_takes_ten_thousand_open_reservations_and_keeps_room_for_the_writes_that_record_stock(shop):
    from functions.adapters.dynamodb import RESERVATIONS_ROOM

    shop.client.limit = LIMIT
    inventory = shop.container.inventory_repository
    held = shop.fill("HOT", "wh-sf", spare=500, exactly=RESERVATIONS_ROOM - 1)
    inventory.reserve("HOT", "wh-sf", hot_key(held), 1)  # the last it takes
    held += 1

    with pytest.raises(ReservationsFull):
        inventory.reserve("HOT", "wh-sf", hot_key(held), 1)

    assert not shop.client.refused  # refused by the room's condition, not by DynamoDB's size
    size, level = shop.stored("HOT", "wh-sf")
    # As DynamoDB counts it, 55 KB of the item stay free for the writes that record stock (moto
    # counts a map's entries larger than DynamoDB does, so a receipt on it is shown at a smaller
    # room: the next test).
    assert LIMIT - size >= 55 * 1024 and level[1] == RESERVATIONS_ROOM


def test_an_order_its_nearest_location_has_no_room_to_reserve_for_is_sourced_from_another(shop):
    shop.container.catalog_repository.put_location(location("wh-east"))
    held = shop.fill("HOT", "wh-sf", spare=500)
    shop.container.inventory.count("HOT", "wh-east", 5)
    order_id = shop.authorized(("HOT", 2))

    assert shop.reserve_step(order_id) == "CreateShipments"

    order = shop.order(order_id)
    assert [(a.location_id, a.quantity) for a in order.allocations] == [("wh-east", 2)]
    assert ("HOT", "wh-sf") in shop.client.refused  # the nearer location was tried and had no room
    assert shop.level("HOT", "wh-sf") == (held + 500, held, 500)
    assert shop.level("HOT", "wh-east") == (5, 2, 3)


@pytest.mark.parametrize("allow_backorder", [False, True])
def test_an_order_only_a_full_location_could_take_is_parked_for_a_person_not_cancelled(shop, allow_backorder):
    shop.container.catalog_repository.put_product(product("HOT", "30.00", allow_backorder=allow_backorder))
    held = shop.fill("HOT", "wh-sf", spare=500)
    shop.container.inventory.count("COLD", "wh-sf", 10)
    order_id = shop.authorized(("COLD", 1), ("HOT", 1))

    assert shop.reserve_step(order_id) == PARK

    order = shop.order(order_id)
    assert order.status is S.ON_HOLD and not order.allocations
    assert order.hold.note.startswith("order workflow failed after retries: ReservationsFull: ")
    assert "HOT at wh-sf holds as many open reservations" in order.hold.note
    # What it reserved before the refusal (its COLD line) is given back: it records none of it.
    assert shop.level("COLD", "wh-sf") == (10, 0, 10)
    assert shop.level("HOT", "wh-sf") == (held + 500, held, 500)


def test_a_backordered_order_whose_units_arrive_at_a_full_location_waits_on_and_the_fill_goes_elsewhere(shop):
    # The fill of a backordered order is one transaction; refused for the full item it was retried
    # as a lost race ten times, then raised TransientError, failing the arrival's stream record
    # (retried, then handed to the on-failure queue) and leaving the orders behind it unfilled.
    shop.container.catalog_repository.put_product(product("HOT", "30.00", allow_backorder=True))
    shop.container.catalog_repository.put_location(location("wh-east"))
    waiting = shop.authorized(("HOT", 1))
    assert shop.reserve_step(waiting) == "OrderBackordered"
    held = shop.fill("HOT", "wh-sf", spare=0, room=64)  # room for the arrival's marks whatever the slack
    shop.container.inventory_repository.adjust("HOT", "wh-sf", 5, "arrival")
    shop.client.limit = shop.stored("HOT", "wh-sf")[0]  # then full to the byte: no room for another reservation

    assert shop.container.workflow.fill_backorder(waiting).status is S.BACKORDERED  # nothing to take
    assert ("HOT", "wh-sf") in shop.client.refused
    assert shop.level("HOT", "wh-sf") == (held + 5, held, 5)

    shop.container.inventory_repository.adjust("HOT", "wh-east", 1, "arrival")
    filled = shop.container.workflow.fill_backorder(waiting)
    assert [(a.location_id, a.quantity) for a in filled.allocations] == [("wh-east", 1)]
    assert shop.level("HOT", "wh-east") == (1, 1, 0)


def test_a_stock_item_takes_no_reservation_past_its_room_so_receipts_and_counts_still_fit(shop, monkeypatch):
    # Filled to the byte by reservations, the item refused every later write that adds bytes: a
    # receipt (an adjustment with its reason) was a 500. Reservations stop at RESERVATIONS_ROOM
    # keys, leaving the item room for the writes that record stock.
    from functions.adapters import dynamodb

    monkeypatch.setattr(dynamodb, "RESERVATIONS_ROOM", 3)
    shop.client.limit = LIMIT
    inventory = shop.container.inventory_repository
    shop.container.catalog_repository.put_product(product("HOT", "30.00", allow_backorder=True))
    shop.container.catalog_repository.put_location(location("wh-east"))
    inventory.adjust("HOT", "wh-sf", 10, "arrival")
    for n in range(3):
        inventory.reserve("HOT", "wh-sf", hot_key(n), 1)
    inventory.reserve("HOT", "wh-sf", hot_key(0), 1)  # the same step run again: reserved already

    with pytest.raises(ReservationsFull):
        inventory.reserve("HOT", "wh-sf", hot_key(3), 1)
    with pytest.raises(ReservationsFull):
        inventory.rearrange("HOT", "wh-sf", {hot_key(0): 1}, {hot_key(0): 1, hot_key(4): 1})
    inventory.rearrange("HOT", "wh-sf", {hot_key(0): 1}, {hot_key(0): 2})  # no new key: room enough

    assert shop.level("HOT", "wh-sf") == (10, 4, 6)
    assert inventory.adjust("HOT", "wh-sf", 1, "received from vendor").on_hand == 11

    # A backordered order's fill there takes nothing from it (the transaction's condition), and
    # waits on for another location's units.
    shop.container.inventory.count("HOT", "wh-east", 0)
    shop.container.inventory.count("HOT", "wh-sf", 4)
    waiting = shop.authorized(("HOT", 1))
    assert shop.reserve_step(waiting) == "OrderBackordered"
    inventory.adjust("HOT", "wh-sf", 5, "arrival")
    assert shop.container.workflow.fill_backorder(waiting).status is S.BACKORDERED
    assert shop.level("HOT", "wh-sf") == (9, 4, 5)
    inventory.adjust("HOT", "wh-east", 1, "arrival")
    filled = shop.container.workflow.fill_backorder(waiting)
    assert [(a.location_id, a.quantity) for a in filled.allocations] == [("wh-east", 1)]


class StepContext:
    function_name = "ReserveStockFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ReserveStockFunction"
    aws_request_id = "req-reserve"


def business_points(output: str) -> list[tuple[str, list[str], float]]:
    """(metric, dimensions, value) of each business metric (no `service` dimension) in the EMF lines."""
    found = []
    for line in output.splitlines():
        if '"_aws"' not in line:
            continue
        record = json.loads(line)
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = record[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    found.append((metric["Name"], directive["Dimensions"][0], value))
    return found


def test_an_order_sourced_around_a_full_stock_item_counts_the_full_item_for_an_operator(shop, monkeypatch, capsys):
    # A full stock item (a flash sale past RESERVATIONS_ROOM) was met in silence: ReserveStock
    # sourced the order from a farther location and nothing told an operator that one location
    # takes no more orders of the sku. ReserveStock counts it (StockItemsFull, StockItemsFullAlarm).
    from functions.adapters import dynamodb
    from functions.workflow import reserve_stock, step

    monkeypatch.setattr(dynamodb, "RESERVATIONS_ROOM", 1)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    shop.container.catalog_repository.put_location(location("wh-east"))
    shop.container.inventory.count("HOT", "wh-sf", 10)
    shop.container.inventory.count("HOT", "wh-east", 5)
    shop.container.inventory_repository.reserve("HOT", "wh-sf", hot_key(0), 1)
    order_id = shop.authorized(("HOT", 2))
    flush()  # the placing's points: this test reads ReserveStock's
    capsys.readouterr()

    with step.container.override(shop.container):
        reserve_stock.lambda_handler({"order_id": order_id}, StepContext())

    assert [(a.location_id, a.quantity) for a in shop.order(order_id).allocations] == [("wh-east", 2)]
    counted = [point for point in business_points(capsys.readouterr().out) if point[0] == "StockItemsFull"]
    assert counted == [("StockItemsFull", [], 1.0)]  # no dimension: one alarm for every location


def test_a_backorder_fill_that_meets_a_full_stock_item_counts_it(shop, monkeypatch, capsys):
    # The backorders function's fill took nothing from the full item and waited on, in silence.
    from functions.adapters import dynamodb

    monkeypatch.setattr(dynamodb, "RESERVATIONS_ROOM", 1)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    shop.container.catalog_repository.put_product(product("HOT", "30.00", allow_backorder=True))
    waiting = shop.authorized(("HOT", 1))
    assert shop.reserve_step(waiting) == "OrderBackordered"
    inventory = shop.container.inventory_repository
    inventory.adjust("HOT", "wh-sf", 1, "arrival")
    inventory.reserve("HOT", "wh-sf", hot_key(0), 1)  # another order's: the item is full
    inventory.adjust("HOT", "wh-sf", 5, "arrival")
    flush()
    capsys.readouterr()

    assert shop.container.workflow.fill_backorder(waiting).status is S.BACKORDERED  # nothing taken
    flush()  # what the backorders function's handler prints when its invocation ends

    counted = [point for point in business_points(capsys.readouterr().out) if point[0] == "StockItemsFull"]
    assert counted == [("StockItemsFull", [], 1.0)]
