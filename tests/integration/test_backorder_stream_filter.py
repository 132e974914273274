"""The backorder filler's stream filter against the Inventory stream moto really writes: every write
that can raise `available` (adjustment, stock take, purchase-order receipt, restocked return,
release and shrink of a reservation, a cancelled order) passes it, and the writes that lower or
keep `available` (reservation, shipment, a backorder fill, a negative adjustment, a PO's incoming
units) do not. The filter is the template's own FilterCriteria, matched as Lambda matches it
(infra/local/event_sources.py)."""

from __future__ import annotations

from functools import partial
from typing import Any

import boto3
import pytest

from core.ids import reservation_key
from core.models import Allocation
from core.ports import TopUp
from core.purchasing import NewPurchaseOrder, Receipt, VendorRequest
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import Template
from tests.integration.test_backorders import Shop, consume, shop  # noqa: F401 (the fixture)

SKU, EAST, WEST = "PREORDER", "wh-east", "wh-west"


def arrivals_filter() -> dict[str, Any]:
    """The backorder entry of BackorderFunction's Inventory-stream FilterCriteria (its first)."""
    event = Template.load().functions()["BackorderFunction"]["Events"]["InventoryStream"]
    return compile_filters(event["Properties"]["FilterCriteria"], "BackorderFunction")[0]


class Stream:
    """The Inventory table's stream records, read from where the last reading stopped."""

    def __init__(self, buyer: Shop) -> None:
        table = buyer.container.config.inventory_table
        arn = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName=table)["Table"][
            "LatestStreamArn"
        ]
        self._streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        shard = self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self._iterator = self._streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        self.pattern = arrivals_filter()

    def new(self) -> list[dict[str, Any]]:
        """The stock records written since the last call, as Lambda's event shapes them."""
        answer = self._streams.get_records(ShardIterator=self._iterator)
        self._iterator = answer["NextShardIterator"]
        return [
            {"eventName": r["eventName"], "eventSource": "aws:dynamodb", "eventID": r["eventID"],
             "dynamodb": r["dynamodb"]}
            for r in answer["Records"]
            if not r["dynamodb"]["Keys"]["location_id"]["S"].startswith("#")  # queue entries: not stock
            and not r["dynamodb"]["Keys"]["sku"]["S"].startswith("restocked#")  # the restock ledger
            # moto writes an UpdateItem that creates an item as two INSERTs, the first holding only
            # the keys; AWS writes one record, the second
            and set(r["dynamodb"].get("NewImage", {})) != set(r["dynamodb"]["Keys"])
        ]  # fmt: skip

    def passed(self) -> list[bool]:
        """For each stock record since the last call: does the filter pass it to the filler?"""
        return [matches_filters([self.pattern], record) for record in self.new()]


@pytest.fixture
def stream(shop: Shop) -> Stream:  # noqa: F811
    made = Stream(shop)
    shop.inventory.set_on_hand(SKU, EAST, 10, reason="count")
    made.new()
    return made


def test_every_write_that_raises_available_passes_the_filter(shop: Shop, stream: Stream):  # noqa: F811
    inventory = shop.inventory
    inventory.adjust(SKU, EAST, 2, reason="receipt")
    assert stream.passed() == [True]
    inventory.set_on_hand(SKU, EAST, 15, reason="stock_take")
    assert stream.passed() == [True]
    inventory.set_on_hand(SKU, WEST, 1, reason="stock_take")  # a new stock item
    assert stream.passed() == [True]
    inventory.restock(SKU, EAST, "ret_x#l1", 1)  # a restocked return
    assert stream.passed() == [True]

    inventory.reserve(SKU, EAST, "ord_x#l1", 4)
    stream.new()
    inventory.shrink(SKU, EAST, "ord_x#l1", held=4, keep=1)  # units cancelled, an order edited smaller
    assert stream.passed() == [True]
    inventory.release(SKU, EAST, "ord_x#l1")  # a cancel, a store's reject, an expired pickup, an edit
    assert stream.passed() == [True]
    inventory.reserve(SKU, EAST, "ord_x#l2", 3)
    stream.new()
    inventory.rearrange(SKU, EAST, {"ord_x#l2": 3}, {"ord_x#l1": 2})  # an edited order sourced again, smaller
    assert stream.passed() == [True]

    purchasing = shop.container.purchasing
    purchasing.put_vendor("acme", VendorRequest(name="Acme", lead_time_days=5))
    lines = [{"sku": SKU, "quantity": 4, "unit_cost": {"amount": "4.00", "currency": "USD"}}]
    po = purchasing.create(NewPurchaseOrder.model_validate({"vendor_id": "acme", "location_id": WEST, "lines": lines}))
    assert stream.passed() == [False]  # incoming units are not available ones
    purchasing.receive(po.id, Receipt.model_validate({"lines": [{"sku": SKU, "quantity": 3}]}), "rcpt-1")
    assert stream.passed() == [True]
    purchasing.cancel(po.id)  # the last unit will not come: incoming drops, nothing arrives
    assert stream.passed() == [False]


def test_a_cancelled_orders_release_passes_the_filter(shop: Shop, stream: Stream):  # noqa: F811
    order_id = shop.backordered(12)  # reserves the 10 at wh-east, waits for 2
    assert shop.held(order_id) == 10
    stream.new()

    shop.container.actions.cancel(order_id, "customer asked", actor="key_web")

    assert stream.passed() == [True]
    assert shop.level(EAST) == (10, 0, 10)


def test_reservations_shipments_fills_and_removals_do_not(shop: Shop, stream: Stream):  # noqa: F811
    inventory = shop.inventory
    inventory.adjust(SKU, EAST, 1, reason="receipt")
    stream.new()

    inventory.reserve(SKU, EAST, "ord_a#l1", 3)
    inventory.reserve(SKU, EAST, "ord_b#l1", 2)
    inventory.ship(SKU, EAST, "ord_a#l1")
    inventory.adjust(SKU, EAST, -1, reason="damaged")
    inventory.rearrange(SKU, EAST, {"ord_b#l1": 2}, {"ord_b#l2": 2})  # an edited order's line id changed
    assert stream.passed() == [False, False, False, False, False]

    # A backorder fill reserves what arrived: its own write must not invoke the filler again.
    waiting = shop.backordered(8)  # takes the 5 left, waits for 3
    stream.new()
    inventory.adjust(SKU, EAST, 2, reason="receipt")
    assert stream.passed() == [True]
    order = shop.order(waiting)
    line_id = order.lines[0].line_id
    grown = [Allocation(line_id=line_id, location_id=EAST, quantity=7)]
    new, entry = order.reserve_backordered(grown, at=order.updated_at, actor="backorders")
    shop.backorders.fill(new, order, [entry], [TopUp(SKU, EAST, reservation_key(waiting, line_id), 5, 7)])
    assert stream.passed() == [False]
    assert shop.level(EAST) == (9, 9, 0)


def test_a_record_the_filter_passes_is_one_the_filler_acts_on(shop: Shop, stream: Stream):  # noqa: F811
    """The filter narrows, the code decides: a passed record from the real stream fills the order."""
    waiting = shop.backordered(11)  # takes the 10, waits for 1
    stream.new()
    shop.inventory.adjust(SKU, WEST, 1, reason="receipt")
    [record] = stream.new()
    assert matches_filters([stream.pattern], record)

    assert consume(shop, record) == {"batchItemFailures": []}
    assert shop.held(waiting) == 11


def test_a_removal_or_a_reservation_straight_after_a_receipt_does_not(shop: Shop, stream: Stream):  # noqa: F811
    # The receipt's mark stays on the item until a write removes it: each write that lowers
    # `available` removes it, or its record invokes the filler for nothing.
    inventory = shop.inventory
    removal = partial(inventory.adjust, SKU, EAST, -1, reason="damaged")
    reservation = partial(inventory.reserve, SKU, EAST, "ord_a#l1", 2)
    for lowering in (removal, reservation):
        inventory.adjust(SKU, EAST, 1, reason="receipt")
        lowering()
        assert stream.passed() == [True, False]


def test_a_reservation_after_a_purchase_orders_cancel_invokes_no_filler(shop: Shop, stream: Stream):  # noqa: F811
    # The cancel marks the item `withdrawn` for the reorder points' demand (the filters' third
    # pattern); the next write that lowers `available` removes the mark, or it passes them all.
    event = Template.load().functions()["BackorderFunction"]["Events"]["InventoryStream"]
    every_filter = compile_filters(event["Properties"]["FilterCriteria"], "BackorderFunction")
    purchasing = shop.container.purchasing
    purchasing.put_vendor("acme", VendorRequest(name="Acme", lead_time_days=5))
    lines = [{"sku": SKU, "quantity": 4, "unit_cost": {"amount": "4.00", "currency": "USD"}}]
    po = purchasing.create(NewPurchaseOrder.model_validate({"vendor_id": "acme", "location_id": EAST, "lines": lines}))
    purchasing.cancel(po.id)
    assert [matches_filters(every_filter, record) for record in stream.new()][-1:] == [True]

    shop.inventory.reserve(SKU, EAST, "ord_a#l1", 2)

    assert [matches_filters(every_filter, record) for record in stream.new()] == [False]
