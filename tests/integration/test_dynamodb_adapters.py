"""The DynamoDB adapters under moto, on tables built from template.yaml."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import zlib
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.access import ApiKey, Scope
from core.errors import (
    Conflict,
    DuplicateOrder,
    InsufficientStock,
    InvalidCursor,
    InvalidTransition,
    ReservationsChanged,
    ReservationsFull,
    StaleVersion,
)
from core.models import MAX_ON_HAND, HistoryEntry, Order
from core.ports import CountedAlready, OrderFilter, ReturnFilter, ShortCount, StockMove, WaitingOrder
from core.return_models import ExchangeInput, Return, ReturnLine
from core.status import OrderStatus, ReturnStatus
from functions.adapters import dynamodb, order_codec
from functions.adapters.api_key_lookup import ApiKeyLookup, KeyGrant
from functions.adapters.catalog_cache import CachedCatalog
from functions.adapters.dynamodb import (
    DynamoApiKeys,
    DynamoBackorders,
    DynamoCatalog,
    DynamoInventory,
    DynamoOrders,
    DynamoReturns,
    from_item,
)
from plugins.testing.memory import InMemoryInventory, InMemoryOrders
from tests.builders import NOW, address_body, location, place_order, product
from tests.integration.conftest import write_copies
from tests.unit.conftest import a_stored_order, usd


@pytest.fixture
def catalog(aws):
    return DynamoCatalog(aws.dynamodb, aws.tables["CatalogTable"])


@pytest.fixture
def inventory(aws, request):
    """The DynamoDB adapter; in a test run on both stores (BOTH_STORES), the in-memory one the unit
    tests' worlds use too, for its "memory" run: the two must answer alike."""
    if getattr(request, "param", "dynamodb") == "memory":
        return InMemoryInventory()
    return DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])


BOTH_STORES = pytest.mark.parametrize("inventory", ["dynamodb", "memory"], indirect=True)


# `orders` and `capture` (TSHIRT, 1,000 at wh-east): tests/integration/conftest.py.


THROTTLED = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeds"}}


def cancelled_by(codes: list[str]) -> dict[str, Any]:
    """A TransactionCanceledException's error, one cancellation reason `codes[i]` per item."""
    return {
        "Error": {"Code": "TransactionCanceledException", "Message": f"Transaction cancelled [{', '.join(codes)}]"},
        "CancellationReasons": [{"Code": code} for code in codes],
    }


@contextlib.contextmanager
def failing(aws: Any, operation: str, error: dict[str, Any]) -> Iterator[None]:
    """Every `operation` call of the stack's DynamoDB client raises `error` (a ClientError) in the
    block, before it reaches the table (moto never throttles nor conflicts)."""

    def fail(**_: Any) -> None:
        raise ClientError(error, operation)

    events = aws.dynamodb.meta.events
    events.register(f"before-call.dynamodb.{operation}", fail)
    try:
        yield
    finally:
        events.unregister(f"before-call.dynamodb.{operation}", fail)


# --- Catalog -----------------------------------------------------------------------------------


def test_a_product_round_trips_with_exact_money(catalog):
    assert catalog.put_product(product("MUG", "12.50")) is True
    assert catalog.put_product(product("MUG", "12.50")) is False
    stored = catalog.get_product("MUG")
    assert stored == product("MUG", "12.50")
    assert stored.price.model_dump(mode="json") == {"amount": "12.50", "currency": "USD"}


def test_a_products_attributes_round_trip_as_strings(catalog):
    attributes = {"acme.tax_class": "books", "colour": "black", "hs_code": "4901.99", "note": ""}
    catalog.put_product(product("BOOK", attributes=attributes))

    assert catalog.get_product("BOOK").attributes == attributes
    assert catalog.get_products({"BOOK"})["BOOK"].attributes == attributes


def test_products_are_fetched_in_one_batch_and_missing_ones_are_absent(catalog):
    for sku in ("A", "B", "C"):
        catalog.put_product(product(sku))
    assert set(catalog.get_products({"A", "C", "NOPE"})) == {"A", "C"}


def test_locations_live_in_one_network_item(aws, catalog):
    assert catalog.put_location(location("wh-east")) is True
    assert catalog.put_location(location("wh-west", latitude=39.5)) is True
    assert catalog.put_location(location("wh-west", latitude=39.6)) is False
    assert [loc.location_id for loc in catalog.list_locations()] == ["wh-east", "wh-west"]
    assert catalog.get_location("wh-west").latitude == 39.6
    items = aws.dynamodb.scan(TableName=aws.tables["CatalogTable"])["Items"]
    assert [from_item(i)["sk"] for i in items] == ["LOCATIONS"]


# --- Inventory -----------------------------------------------------------------------------------


def test_a_count_sets_on_hand_and_available(inventory):
    level = inventory.set_on_hand("TSHIRT", "wh-east", 7, "count")
    assert (level.on_hand, level.reserved, level.available) == (7, 0, 7)


def test_adjustments_add_and_refuse_to_go_below_reserved(aws, inventory):
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    # Reserve 3 the way the allocation step will: one conditional counter update.
    aws.dynamodb.update_item(
        TableName=aws.tables["InventoryTable"],
        Key={"sku": {"S": "TSHIRT"}, "location_id": {"S": "wh-east"}},
        UpdateExpression="SET reserved = reserved + :q, available = available - :q",
        ConditionExpression="available >= :q",
        ExpressionAttributeValues={":q": {"N": "3"}},
    )
    assert inventory.adjust("TSHIRT", "wh-east", 4, "receipt").available == 6
    with pytest.raises(InsufficientStock):
        inventory.adjust("TSHIRT", "wh-east", -7, "damage")
    with pytest.raises(InsufficientStock):
        inventory.set_on_hand("TSHIRT", "wh-east", 2, "count")
    level = inventory.levels({"TSHIRT"})["TSHIRT"][0]
    assert (level.on_hand, level.reserved, level.available) == (9, 3, 6)


def test_a_count_below_reserved_lands_only_with_the_reservations_it_releases_still_held(inventory):
    # The stock take's write (core.services.InventoryService.count): below the reserved units it is
    # conditional on the reservations it is about to release holding their units still and the rest
    # fitting the count; it leaves available negative, so nothing reserves there until they go.
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)
    inventory.reserve("TSHIRT", "wh-east", "ord_b#L1", 4)

    for releasing in ({}, {"ord_b#L1": 3}, {"ord_b#L1": 4, "ord_c#L1": 1}, {"ord_a#L1": 4}):
        with pytest.raises(InsufficientStock):
            inventory.set_on_hand("TSHIRT", "wh-east", 3, "stock_take", releasing=releasing)
    assert inventory.held_at("TSHIRT", "wh-east")[0].on_hand == 10

    level = inventory.set_on_hand("TSHIRT", "wh-east", 5, "stock_take", releasing={"ord_b#L1": 4})
    assert (level.on_hand, level.reserved, level.available) == (5, 8, -3)
    with pytest.raises(InsufficientStock):
        inventory.reserve("TSHIRT", "wh-east", "ord_d#L1", 1)
    inventory.release("TSHIRT", "wh-east", "ord_b#L1")
    level, held = inventory.held_at("TSHIRT", "wh-east")
    assert (level.on_hand, level.reserved, level.available, held) == (5, 4, 1, {"ord_a#L1": 4})


@BOTH_STORES
def test_a_count_of_exactly_the_reserved_units_lands_with_none_available(inventory):
    # Every reserved unit is on the shelf and nothing more: nothing to reject, no 409.
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)

    level = inventory.set_on_hand("TSHIRT", "wh-east", 4, "stock_take")

    assert (level.on_hand, level.reserved, level.available) == (4, 4, 0)


@BOTH_STORES
def test_a_count_that_fits_ends_the_mark_of_a_short_one_before_it(inventory):
    # A stock take recorded short, its function dead before its rejects: its mark lists it for the
    # reconciler's pass. A count since that fits counted every reserved unit there: nothing is left
    # for the pass to finish.
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)
    inventory.reserve("TSHIRT", "wh-east", "ord_b#L1", 4)
    short = ShortCount("TSHIRT", "wh-east", "key_stock_take", NOW)
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "stock_take", {"ord_b#L1": 4}, short, counted_at=NOW)
    assert inventory.short_counts(NOW + timedelta(minutes=1), 10) == [short]

    inventory.set_on_hand("TSHIRT", "wh-east", 8, "stock_take", counted_at=NOW + timedelta(seconds=1))

    assert inventory.short_counts(NOW + timedelta(minutes=1), 10) == []


@BOTH_STORES
def test_a_count_below_the_reserved_units_bringing_no_mark_leaves_the_short_ones_mark_for_the_reconciler(inventory):
    # Only a count that fits removes a mark (the port's set_on_hand). One still below the reserved
    # units, written with its releases but no mark of its own, left the reconciler's pass nothing
    # to finish on the in-memory store, which the unit tests' worlds trust, while DynamoDB kept it.
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)
    inventory.reserve("TSHIRT", "wh-east", "ord_b#L1", 4)
    short = ShortCount("TSHIRT", "wh-east", "key_stock_take", NOW)
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "stock_take", {"ord_b#L1": 4}, short, counted_at=NOW)

    inventory.set_on_hand("TSHIRT", "wh-east", 4, "stock_take", {"ord_b#L1": 4}, counted_at=NOW + timedelta(seconds=1))

    assert inventory.short_counts(NOW + timedelta(minutes=1), 10) == [short]


@pytest.mark.parametrize("adapter", ["dynamodb", "memory"])
@pytest.mark.parametrize(
    ("counted", "on_hand_after"),
    [("after the hand-over", 3), ("at the hand-over", 1), ("before the hand-over", 1), ("with no time", 1)],
)
def test_a_ship_finished_after_a_stock_take_counted_since_its_hand_over_leaves_on_hand_as_counted(
    aws, inventory, adapter, counted, on_hand_after
):
    """5 on hand, 2 of them a parcel handed over at NOW whose stock step had not run, then a count
    of 3: recorded after the hand-over it counted the parcel gone (only the reservation goes),
    at or before it (or with no time) it counted the parcel's units, which leave now."""
    stock = inventory if adapter == "dynamodb" else InMemoryInventory()
    stock.set_on_hand("TSHIRT", "wh-east", 5, "count")
    stock.reserve("TSHIRT", "wh-east", "ord_a#L1", 2)
    at = {"after the hand-over": NOW + timedelta(microseconds=1), "at the hand-over": NOW,
          "before the hand-over": NOW - timedelta(seconds=1), "with no time": None}[counted]  # fmt: skip
    stock.set_on_hand("TSHIRT", "wh-east", 3, "stock_take", counted_at=at)

    stock.ship("TSHIRT", "wh-east", "ord_a#L1", handed_at=NOW)
    stock.ship("TSHIRT", "wh-east", "ord_a#L1", handed_at=NOW)  # finished again: nothing more moves

    level, held = stock.held_at("TSHIRT", "wh-east")
    assert (level.on_hand, level.reserved, level.available, held) == (on_hand_after, 0, on_hand_after, {})


@BOTH_STORES
def test_a_count_under_a_key_recorded_there_writes_nothing_so_a_parcel_handed_over_since_still_leaves(inventory):
    """A stock take of 7 under its key, its answer lost; a parcel of 2 handed over after it; the
    same count retried under the key once the key's idempotency record was gone. Written again,
    its later counted_at took the parcel for counted without its units: on_hand stayed 7."""
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 2)
    inventory.set_on_hand("TSHIRT", "wh-east", 7, "stock_take", counted_at=NOW, key="api:k1:a")

    with pytest.raises(CountedAlready) as counted:
        inventory.set_on_hand("TSHIRT", "wh-east", 7, "stock_take", counted_at=NOW + timedelta(seconds=2),
                              key="api:k1:a")  # fmt: skip
    inventory.ship("TSHIRT", "wh-east", "ord_a#L1", handed_at=NOW + timedelta(seconds=1))

    assert (counted.value.level.on_hand, counted.value.level.reserved) == (7, 2)
    assert _level(inventory, "TSHIRT", "wh-east") == (5, 0, 5)
    assert inventory.set_on_hand("MUG", "wh-east", 7, "stock_take", key="api:k1:a").on_hand == 7  # another item
    with pytest.raises(Conflict) as reused:  # the key stood for 7: a corrected retry must not be taken for done
        inventory.set_on_hand("TSHIRT", "wh-east", 8, "stock_take", key="api:k1:a")
    assert reused.value.code == "idempotency_key_reused"
    assert _level(inventory, "TSHIRT", "wh-east") == (5, 0, 5)


@BOTH_STORES
def test_a_short_count_under_a_key_recorded_there_writes_nothing_and_leaves_its_mark_as_it_was(inventory):
    # Recorded short, its rejects owed: the retry under its key rewrites neither the count nor the
    # mark the reconciler finishes it by. A count under another key releasing the same reservation
    # is a count of its own (the reservation's key is no count's).
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)
    inventory.reserve("TSHIRT", "wh-east", "ord_b#L1", 4)
    short = ShortCount("TSHIRT", "wh-east", "key_stock_take", NOW)
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "stock_take", {"ord_b#L1": 4}, short, counted_at=NOW, key="api:k1:a")
    later = NOW + timedelta(minutes=1)

    again = ShortCount("TSHIRT", "wh-east", "key_other", later)
    with pytest.raises(CountedAlready) as counted:
        inventory.set_on_hand(
            "TSHIRT", "wh-east", 5, "stock_take", {"ord_b#L1": 4}, again, counted_at=later, key="api:k1:a"
        )

    assert (counted.value.level.on_hand, counted.value.level.reserved) == (5, 8)
    assert inventory.short_counts(NOW + timedelta(minutes=5), 10) == [short]
    level = inventory.set_on_hand(
        "TSHIRT", "wh-east", 4, "stock_take", {"ord_b#L1": 4}, counted_at=later, key="api:k1:b"
    )
    assert (level.on_hand, level.reserved) == (4, 8)


@BOTH_STORES
def test_a_count_under_a_key_refused_below_the_reserved_units_records_no_key_and_its_retry_counts(inventory):
    # Refused (409, nothing recorded), then sent again once the reservation went: recorded as its
    # key's first count, not answered as one that never landed.
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 4)
    with pytest.raises(InsufficientStock):
        inventory.set_on_hand("TSHIRT", "wh-east", 3, "stock_take", key="api:k1:a")
    inventory.release("TSHIRT", "wh-east", "ord_a#L1")

    assert inventory.set_on_hand("TSHIRT", "wh-east", 3, "stock_take", key="api:k1:a").on_hand == 3
    assert _level(inventory, "TSHIRT", "wh-east") == (3, 0, 3)


def test_a_counts_key_is_honoured_a_day_its_level_read_consistently_and_its_refusal_names_the_reserved_units(
    aws, inventory, monkeypatch
):
    # Its transaction answers nothing: the level is read after it, consistently. The ledger item
    # the TTL has not removed yet a day later no longer counts. Refused, the 409 says what is reserved.
    from functions.adapters import dynamodb

    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    with requests_made(aws.dynamodb) as made:
        level = inventory.set_on_hand("TSHIRT", "wh-east", 7, "stock_take", counted_at=NOW, key="api:k1:a")

    assert [operation for operation, _ in made] == ["TransactWriteItems", "Query"]
    assert level.on_hand == 7 and made[1][1]["ConsistentRead"]
    day_later = dynamodb.time.time() + dynamodb.ADJUSTMENT_KEY_SECONDS + 1
    monkeypatch.setattr(dynamodb.time, "time", lambda: day_later)  # expired, not yet removed by the TTL
    assert inventory.set_on_hand("TSHIRT", "wh-east", 8, "stock_take", key="api:k1:a").on_hand == 8
    inventory.reserve("TSHIRT", "wh-east", "ord_a#L1", 6)
    with pytest.raises(InsufficientStock) as refused:
        inventory.set_on_hand("TSHIRT", "wh-east", 3, "stock_take", key="api:k1:b")
    assert refused.value.details == [{"field": "on_hand", "message": "must be at least the 6 reserved units"}]


def test_an_adjustment_with_a_key_counts_once_a_day_and_a_refused_one_records_nothing(aws, inventory, monkeypatch):
    from functions.adapters import dynamodb

    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    first = inventory.adjust("TSHIRT", "wh-east", 4, "delivery", key="api:k1:a")
    again = inventory.adjust("TSHIRT", "wh-east", 4, "delivery", key="api:k1:a")  # its answer was lost
    assert first == again and (again.on_hand, again.available) == (9, 9)
    assert inventory.adjust("MUG", "wh-east", 2, "delivery", key="api:k1:a").on_hand == 2  # another item

    with pytest.raises(InsufficientStock):
        inventory.adjust("TSHIRT", "wh-east", -10, "damage", key="api:k1:b")
    assert inventory.adjust("TSHIRT", "wh-east", -1, "damage", key="api:k1:b").on_hand == 8  # corrected, same key

    day_later = dynamodb.time.time() + dynamodb.ADJUSTMENT_KEY_SECONDS + 1
    monkeypatch.setattr(dynamodb.time, "time", lambda: day_later)  # expired, not yet removed by the TTL
    assert inventory.adjust("TSHIRT", "wh-east", 4, "delivery", key="api:k1:a").on_hand == 12


def test_an_adjustment_with_a_key_answers_the_level_it_left_read_consistently(aws, inventory):
    # Its transaction answers nothing: the level is read after it, consistently, or the answer
    # could show the stock before the adjustment (moto is always consistent: the request is checked).
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")

    with requests_made(aws.dynamodb) as made:
        level = inventory.adjust("TSHIRT", "wh-east", 4, "delivery", key="api:k1:a")

    reads = [params for operation, params in made if operation != "TransactWriteItems"]
    specs = [spec for params in reads for spec in params.get("RequestItems", {"one": params}).values()]
    assert level.on_hand == 9 and specs
    assert all(spec.get("ConsistentRead") for spec in specs), reads


def test_a_key_counted_for_another_adjustment_is_a_conflict_not_a_silent_no_op(inventory):
    # The first attempt was written but failed after (its read timed out: a 5xx, and no idempotency
    # record to replay); the client retries with a corrected delta under the same key. Answered 200
    # with the stock as it was, the correction was lost with nothing to say so.
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    inventory.adjust("TSHIRT", "wh-east", 4, "delivery 4711", key="api:k1:a")

    for delta, reason in [(40, "delivery 4711"), (4, "delivery 4712")]:
        with pytest.raises(Conflict) as refused:
            inventory.adjust("TSHIRT", "wh-east", delta, reason, key="api:k1:a")
        assert refused.value.code == "idempotency_key_reused"
    assert inventory.adjust("TSHIRT", "wh-east", 4, "delivery 4711", key="api:k1:a").on_hand == 9


def test_a_restock_past_the_cap_is_refused_by_its_condition_recorded_and_never_added_later(inventory):
    # At 999,999,999 on hand, a return's 2 units would pass the most a stock take may count: the
    # stock write is refused, the ledger item records the key as refused. Run again, even with room
    # by then (units shipped), the step adds nothing: the order's entry already named them refused.
    inventory.set_on_hand("TSHIRT", "wh-east", 999_999_999, "count")
    inventory.restock("TSHIRT", "wh-east", "rma_1#L1", 2)
    inventory.restock("TSHIRT", "wh-east", "rma_1#L2", 1)  # fits exactly
    inventory.set_on_hand("TSHIRT", "wh-east", 10, "count")
    inventory.restock("TSHIRT", "wh-east", "rma_1#L1", 2)

    [level] = inventory.levels({"TSHIRT"})["TSHIRT"]
    assert (level.on_hand, level.available) == (10, 10)
    keys = ["rma_1#L1", "rma_1#L2", "rma_2#L1"]
    assert inventory.not_restocked("wh-east", keys) == {"rma_1#L1": 2}
    assert inventory.not_restocked("wh-west", keys) == {}


def test_returned_units_go_back_on_sale_beside_the_reservations_and_where_the_sku_had_no_stock(aws, inventory):
    # A restock adds to on_hand and available, leaves what is reserved as it was, marks the item
    # for the backorder filler's stream filter (an arrival), and makes the stock item it lacks.
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 2)  # removes the count's mark

    inventory.restock("MUG", "wh-west", "rma_1#L1", 1)
    inventory.restock("MUG", "wh-east", "rma_1#L2", 2)

    assert _level(inventory, "MUG", "wh-west") == (6, 2, 4)
    assert _level(inventory, "MUG", "wh-east") == (2, 0, 2)
    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1"]}) == {("MUG", "wh-west", "ord_1#L1"): 2}
    item = aws.dynamodb.get_item(
        TableName=aws.tables["InventoryTable"], Key={"sku": {"S": "MUG"}, "location_id": {"S": "wh-west"}}
    )["Item"]
    assert item.get(dynamodb.ARRIVED) == {"BOOL": True}
    assert inventory.not_restocked("wh-west", ["rma_1#L1"]) == inventory.not_restocked("wh-east", ["rma_1#L2"]) == {}


def test_a_restock_refused_for_the_cap_whose_record_was_throttled_raises_and_its_retry_records_it(aws, inventory):
    # Past the cap the ledger item alone records the key as refused (a PutItem): throttled, that is
    # no outcome; the step raises, and its retry records the refusal the return's entry names.
    inventory.set_on_hand("MUG", "wh-west", MAX_ON_HAND, "count")
    with failing(aws, "PutItem", THROTTLED), pytest.raises(ClientError):
        inventory.restock("MUG", "wh-west", "rma_1#L1", 2)
    assert inventory.not_restocked("wh-west", ["rma_1#L1"]) == {}
    inventory.restock("MUG", "wh-west", "rma_1#L1", 2)

    assert inventory.not_restocked("wh-west", ["rma_1#L1"]) == {"rma_1#L1": 2}
    assert _level(inventory, "MUG", "wh-west") == (MAX_ON_HAND, 0, MAX_ON_HAND)


def test_a_restock_whose_transaction_met_another_raises_and_its_retry_adds_the_units(aws, inventory):
    # A TransactionConflict on the stock item (moto never conflicts: injected) is no refusal for
    # the cap: nothing is recorded, the step's retry adds the units.
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    with failing(aws, "TransactWriteItems", cancelled_by(["None", "TransactionConflict"])), pytest.raises(ClientError):
        inventory.restock("MUG", "wh-west", "rma_1#L1", 2)
    inventory.restock("MUG", "wh-west", "rma_1#L1", 2)

    assert _level(inventory, "MUG", "wh-west") == (7, 0, 7)
    assert inventory.not_restocked("wh-west", ["rma_1#L1"]) == {}


@pytest.mark.parametrize("adapter", ["dynamodb", "memory"])
@pytest.mark.parametrize(
    ("counted", "on_hand_after"),
    [("after the receipt", 5), ("at the receipt", 7), ("before the receipt", 7), ("with no time", 7)],
)
def test_a_restock_finished_after_a_stock_take_counted_since_the_receipt_leaves_on_hand_as_counted(
    aws, inventory, adapter, counted, on_hand_after
):
    """A return's 2 units received at NOW whose restock had not run, then a count of 5: recorded
    after the receipt it counted the units on the shelf (the key is recorded, nothing added), at or
    before it (or with no time) it did not, and they are added now. Once either way."""
    stock = inventory if adapter == "dynamodb" else InMemoryInventory()
    at = {"after the receipt": NOW + timedelta(microseconds=1), "at the receipt": NOW,
          "before the receipt": NOW - timedelta(seconds=1), "with no time": None}[counted]  # fmt: skip
    stock.set_on_hand("TSHIRT", "wh-east", 5, "stock_take", counted_at=at)

    stock.restock("TSHIRT", "wh-east", "rma_1#L1", 2, received_at=NOW)
    stock.restock("TSHIRT", "wh-east", "rma_1#L1", 2, received_at=NOW)  # finished again: nothing more moves

    [level] = stock.levels({"TSHIRT"})["TSHIRT"]
    assert (level.on_hand, level.reserved, level.available) == (on_hand_after, 0, on_hand_after)
    assert stock.not_restocked("wh-east", ["rma_1#L1"]) == {}  # restocked (by the count or now), not refused


@pytest.mark.parametrize("adapter", ["dynamodb", "memory"])
@pytest.mark.parametrize("counted", [NOW, NOW - timedelta(seconds=1)], ids=["at the receipt", "before the receipt"])
def test_a_restock_past_the_cap_after_a_count_that_did_not_have_its_units_is_refused(aws, inventory, adapter, counted):
    # That count did not have the returned units on the shelf: they would take on_hand past what a
    # stock take may count, and are refused (the return's entry names them), not taken as counted.
    stock = inventory if adapter == "dynamodb" else InMemoryInventory()
    stock.set_on_hand("TSHIRT", "wh-east", MAX_ON_HAND, "stock_take", counted_at=counted)

    stock.restock("TSHIRT", "wh-east", "rma_1#L1", 2, received_at=NOW)

    [level] = stock.levels({"TSHIRT"})["TSHIRT"]
    assert level.on_hand == MAX_ON_HAND
    assert stock.not_restocked("wh-east", ["rma_1#L1"]) == {"rma_1#L1": 2}


def test_a_restock_counted_in_by_a_stock_take_is_never_refused_for_the_cap(inventory):
    # The count after the receipt had the units: at the cap they are on hand already, not refused.
    inventory.set_on_hand("TSHIRT", "wh-east", MAX_ON_HAND, "stock_take", counted_at=NOW + timedelta(seconds=1))
    inventory.restock("TSHIRT", "wh-east", "rma_1#L1", 2, received_at=NOW)

    [level] = inventory.levels({"TSHIRT"})["TSHIRT"]
    assert level.on_hand == MAX_ON_HAND
    assert inventory.not_restocked("wh-east", ["rma_1#L1"]) == {}


def test_a_negative_adjustment_on_no_stock_is_refused(inventory):
    with pytest.raises(InsufficientStock):
        inventory.adjust("TSHIRT", "wh-east", -1, "damage")
    assert inventory.levels({"TSHIRT"}) == {"TSHIRT": []}


def test_levels_by_key_lookup_and_by_query_agree(inventory):
    inventory.set_on_hand("TSHIRT", "wh-east", 3, "count")
    inventory.set_on_hand("TSHIRT", "wh-west", 4, "count")
    inventory.set_on_hand("MUG", "wh-east", 5, "count")
    by_query = inventory.levels({"TSHIRT", "MUG"})
    by_keys = inventory.levels({"TSHIRT", "MUG"}, ["wh-east", "wh-west", "store"])
    assert {s: sorted(x.location_id for x in v) for s, v in by_query.items()} == {
        "TSHIRT": ["wh-east", "wh-west"],
        "MUG": ["wh-east"],
    }
    assert {s: sorted(x.available for x in v) for s, v in by_keys.items()} == {"TSHIRT": [3, 4], "MUG": [5]}


def test_reservations_are_read_consistently(aws, inventory):
    # What is released or topped up follows from this read: an eventually consistent one could miss
    # a reservation made a moment before, and a cancel would then leave it held for good. moto
    # is always consistent, so the request itself is what can be checked.
    inventory.set_on_hand("TSHIRT", "wh-east", 5, "count")
    inventory.reserve("TSHIRT", "wh-east", "ord_1#L1", 2)
    asked: list[dict] = []

    def record(params, **kwargs):
        asked.append(params)

    aws.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchGetItem", record)
    try:
        found = inventory.reservations({("TSHIRT", "wh-east"): ["ord_1#L1"]})
    finally:
        aws.dynamodb.meta.events.unregister("provide-client-params.dynamodb.BatchGetItem", record)

    assert found == {("TSHIRT", "wh-east", "ord_1#L1"): 2}
    assert [spec["ConsistentRead"] for params in asked for spec in params["RequestItems"].values()] == [True]


@BOTH_STORES
def test_a_reservation_repeated_is_a_no_op_only_for_the_units_it_holds(inventory):
    # A twin run of ReserveStock that planned another quantity under the same key does not take
    # the key as its own: it would record units the key does not hold.
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 3)

    inventory.reserve("MUG", "wh-west", "ord_1#L1", 3)  # a retried step
    with pytest.raises(InsufficientStock):
        inventory.reserve("MUG", "wh-west", "ord_1#L1", 2)

    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1"]}) == {("MUG", "wh-west", "ord_1#L1"): 3}
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (5, 3, 2)


@BOTH_STORES
def test_a_reservation_leaves_the_safety_stock_available_and_holds_only_its_own_units(inventory):
    inventory.set_on_hand("MUG", "wh-west", 4, "count")

    with pytest.raises(InsufficientStock):  # 3 of the 4 would leave 1 of the 2 kept
        inventory.reserve("MUG", "wh-west", "ord_1#L1", 3, keep=2)
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 2, keep=2)  # leaves exactly the 2 kept

    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1"]}) == {("MUG", "wh-west", "ord_1#L1"): 2}
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (4, 2, 2)


def test_a_twin_reserve_under_a_key_a_full_item_holds_is_a_shortage_not_a_full_item(inventory, monkeypatch):
    # The key takes no room it does not hold already: a twin run of ReserveStock that planned other
    # units under it is refused as on any item (InsufficientStock), not parked for a person
    # (ReservationsFull) because the item is full.
    monkeypatch.setattr(dynamodb, "RESERVATIONS_ROOM", 2)
    inventory.set_on_hand("MUG", "wh-west", 9, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 3)
    with pytest.raises(InsufficientStock):  # 7 of the 6 left, with room for one more key
        inventory.reserve("MUG", "wh-west", "ord_2#L1", 7)
    inventory.reserve("MUG", "wh-west", "ord_2#L1", 1)

    with pytest.raises(InsufficientStock):
        inventory.reserve("MUG", "wh-west", "ord_1#L1", 2)
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 3)  # the same step again: a no-op
    with pytest.raises(ReservationsFull):
        inventory.reserve("MUG", "wh-west", "ord_3#L1", 1)


@BOTH_STORES
def test_a_release_repeated_or_of_a_key_never_held_changes_nothing(inventory):
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 2)
    inventory.reserve("MUG", "wh-west", "ord_2#L1", 1)

    inventory.release("MUG", "wh-west", "ord_1#L1")
    inventory.release("MUG", "wh-west", "ord_1#L1")  # a retried step
    inventory.release("MUG", "wh-west", "ord_3#L1")  # a cancel before anything was reserved

    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1", "ord_2#L1"]}) == {("MUG", "wh-west", "ord_2#L1"): 1}
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (5, 1, 4)


@pytest.mark.parametrize("write", ["reserve", "release"])
def test_a_reservation_write_at_a_throttled_table_raises_for_its_step_to_retry(aws, inventory, write):
    # Not a refusal (a reserve's InsufficientStock would send the order elsewhere or backordered)
    # nor a release taken as done (its units would stay reserved for good).
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L1", 2)
    with failing(aws, "UpdateItem", THROTTLED), pytest.raises(ClientError):
        if write == "reserve":
            inventory.reserve("MUG", "wh-west", "ord_2#L1", 1)
        else:
            inventory.release("MUG", "wh-west", "ord_1#L1")

    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1", "ord_2#L1"]}) == {("MUG", "wh-west", "ord_1#L1"): 2}


def test_an_orders_reservations_under_more_keys_than_a_4_kb_projection_names_are_read_within_it(aws, inventory):
    """DynamoDB refuses an expression over 4 KB (ValidationException; moto does not check): a
    100-line order edited twice asks about the keys of its 300 lines, its replaced ones included,
    and the one projection naming them all (~6 KB) failed every edit and ReserveStock of it on
    AWS. The keys are read in several reads, each projection within 4 KB, an item's levels once.
    Every tenth key is held (30 reservations, in each read's share of the 300 keys asked about)."""
    keys = [f"ord_1#L{n}" for n in range(1, 301)]
    inventory.set_on_hand("MUG", "wh-east", 500, "count")
    inventory.set_on_hand("CUP", "wh-west", 9, "count")
    for n, key in enumerate(keys[::10]):
        inventory.reserve("MUG", "wh-east", key, 1 + n % 2)
    inventory.reserve("CUP", "wh-west", keys[0], 4)

    with requests_made(aws.dynamodb) as made:
        held, levels = inventory.holdings(
            {("MUG", "wh-east"): keys, ("CUP", "wh-west"): keys[:3]}, {"MUG", "CUP"}, ["wh-east", "wh-west"]
        )

    assert held == {("MUG", "wh-east", key): 1 + n % 2 for n, key in enumerate(keys[::10])} | {
        ("CUP", "wh-west", keys[0]): 4
    }
    assert {sku: [(x.location_id, x.on_hand, x.reserved) for x in found] for sku, found in levels.items()} == {
        "MUG": [("wh-east", 500, 45)],
        "CUP": [("wh-west", 9, 4)],
    }
    projections = [spec["ProjectionExpression"] for _, params in made for spec in params["RequestItems"].values()]
    assert len(projections) > 1
    assert max(len(projection.encode()) for projection in projections) <= 4096


@BOTH_STORES
def test_an_orders_reservations_are_rearranged_in_one_conditional_write(inventory):
    # A line whose id an edit changed, grown, split: the units move between the order's keys, the
    # difference taken from or given back to available, with no moment when another order's
    # reservation could take them.
    inventory.set_on_hand("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", "ord_1#L2", 3)
    inventory.reserve("MUG", "wh-west", "ord_2#L1", 1)

    inventory.rearrange("MUG", "wh-west", {"ord_1#L2": 3}, {"ord_1#L1": 2, "ord_1#L3": 2})
    inventory.rearrange("MUG", "wh-west", {"ord_1#L2": 3}, {"ord_1#L1": 2, "ord_1#L3": 2})  # a retried step

    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1", "ord_1#L2", "ord_1#L3", "ord_2#L1"]}) == {
        ("MUG", "wh-west", "ord_1#L1"): 2, ("MUG", "wh-west", "ord_1#L3"): 2, ("MUG", "wh-west", "ord_2#L1"): 1,
    }  # fmt: skip
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (5, 5, 0)
    with pytest.raises(InsufficientStock):  # nothing left to grow by
        inventory.rearrange("MUG", "wh-west", {"ord_1#L1": 2}, {"ord_1#L1": 3})
    with pytest.raises(InsufficientStock):  # the key no longer holds what was read
        inventory.rearrange("MUG", "wh-west", {"ord_1#L2": 3}, {"ord_1#L1": 3})
    inventory.rearrange("MUG", "wh-west", {"ord_1#L1": 2, "ord_1#L3": 2}, {"ord_1#L1": 1})  # given back
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (5, 2, 3)
    with pytest.raises(InsufficientStock):  # the safety stock stays
        inventory.rearrange("MUG", "wh-west", {"ord_1#L1": 1}, {"ord_1#L2": 3}, keep=2)
    inventory.reserve("MUG", "wh-west", "ord_1#L2", 3)
    inventory.rearrange("MUG", "wh-west", {"ord_1#L1": 1, "ord_1#L2": 3}, {"ord_1#L1": 2, "ord_1#L2": 1})
    assert inventory.reservations({("MUG", "wh-west"): ["ord_1#L1", "ord_1#L2", "ord_1#L3"]}) == {
        ("MUG", "wh-west", "ord_1#L1"): 2, ("MUG", "wh-west", "ord_1#L2"): 1,
    }  # fmt: skip
    level = inventory.levels({"MUG"}, ["wh-west"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (5, 4, 1)


def test_a_100_line_order_of_one_sku_edited_moves_its_units_to_the_new_lines_with_none_to_spare(aws, inventory):
    """A 100-line order of one sku edited has its 100 keys' units moved to the 100 new lines' keys:
    one write naming all 200 (a condition of ~7 KB) was refused by DynamoDB on every ReserveStock
    of the edited order on AWS. It goes in writes within 4 KB, each giving back what it takes, so
    the units move with none to spare and no write frees units another order could take."""
    inventory.set_on_hand("MUG", "wh-east", 100, "count")
    held = {f"ord_1#L{n}": 1 for n in range(1, 101)}
    wanted = {f"ord_1#L{n}": 1 for n in range(101, 201)}
    for key in held:
        inventory.reserve("MUG", "wh-east", key, 1)

    with requests_made(aws.dynamodb) as made:
        inventory.rearrange("MUG", "wh-east", held, wanted)
    inventory.rearrange("MUG", "wh-east", held, wanted)  # a retried step

    assert inventory.reservations({("MUG", "wh-east"): [*held, *wanted]}) == {
        ("MUG", "wh-east", key): 1 for key in wanted
    }
    level = inventory.levels({"MUG"}, ["wh-east"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (100, 100, 0)
    assert len(made) > 1
    assert {params["ExpressionAttributeValues"][":more"]["N"] for _, params in made} == {"0"}


def test_a_100_line_order_of_one_sku_halved_by_an_edit_on_a_sold_out_shelf_gives_back_half(inventory):
    # One write needs no spare unit to give units back; the writes it is cut into must not either.
    inventory.set_on_hand("MUG", "wh-east", 200, "count")
    held = {f"ord_1#L{n}": 2 for n in range(1, 101)}
    wanted = {f"ord_1#L{n}": 1 for n in range(101, 201)}
    for key in held:
        inventory.reserve("MUG", "wh-east", key, 2)

    inventory.rearrange("MUG", "wh-east", held, wanted)

    assert inventory.reservations({("MUG", "wh-east"): [*held, *wanted]}) == {
        ("MUG", "wh-east", key): 1 for key in wanted
    }
    level = inventory.levels({"MUG"}, ["wh-east"])["MUG"][0]
    assert (level.on_hand, level.reserved, level.available) == (200, 100, 100)


@contextlib.contextmanager
def requests_made(client: Any) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Each DynamoDB request `client` sends meanwhile: (operation, parameters)."""
    made: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        made.append((model.name, params))

    client.meta.events.register("provide-client-params.dynamodb.*", record)
    try:
        yield made
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb.*", record)


def _stocked_alike(aws: Any, inventory: DynamoInventory, skus: set[str], location_id: str, on_hand: int,
                   held: int = 0) -> None:  # fmt: skip
    """Each of `skus` counted at `location_id` with `on_hand` units, `held` of them reserved under its
    own key `ord_1#<sku>` (none held: no reservation): the first sku's stock item written by the
    adapter, each other sku's a copy of it under that sku and its key (write_copies, where the
    adapter's two UpdateItems an item took 15-20 ms of moto's CPU). The subject is their reads."""
    first, *rest = sorted(skus)
    inventory.set_on_hand(first, location_id, on_hand, "count")
    if held:
        inventory.reserve(first, location_id, f"ord_1#{first}", held)

    def alike(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for sku in rest:
            own = {"reservations": {"M": {f"ord_1#{sku}": item["reservations"]["M"][f"ord_1#{first}"]}}} if held else {}
            yield {"sku": {"S": sku}, **own}

    write_copies(aws.dynamodb, aws.tables["InventoryTable"], {"sku": {"S": first}, "location_id": {"S": location_id}},
                 alike)  # fmt: skip


def test_an_order_over_the_whole_of_a_large_network_reads_its_stock_with_a_query_per_sku(aws, inventory):
    # 20 skus over 1,000 locations were 20,000 keys: 200 BatchGetItems one after another, in
    # capture and again in ReserveStock, and as many for the order's reservations.
    network = [f"loc-{n:04d}" for n in range(1001) if n != 500]
    skus = {f"SKU-{n:02d}" for n in range(20)}
    _stocked_alike(aws, inventory, skus, "loc-0007", 3)
    _stocked_alike(aws, inventory, skus, "loc-0999", 4, held=2)
    for not_asked in ("loc-0500", "loc-2000"):  # an excluded location, and one after the network's last
        inventory.set_on_hand("SKU-00", not_asked, 9, "count")
        inventory.reserve("SKU-00", not_asked, "ord_1#SKU-00", 1)
    DynamoBackorders(aws.dynamodb, aws.tables["InventoryTable"], aws.tables["OrdersTable"]).add(
        "SKU-00", WaitingOrder(created_at=NOW, order_id="ord_2")
    )  # the sku's backorder queue lives in its partition too

    with requests_made(aws.dynamodb) as made:
        levels = inventory.levels(skus, network)
    assert [operation for operation, _ in made] == ["Query"] * 20
    assert not any(params.get("ConsistentRead") for _, params in made)  # as the key lookups read
    assert {sku: sorted((x.location_id, x.available) for x in found) for sku, found in levels.items()} == {
        sku: [("loc-0007", 3), ("loc-0999", 2)] for sku in skus
    }

    keys = {(sku, location_id): [f"ord_1#{sku}", "ord_1#L9"] for sku in skus for location_id in network}
    with requests_made(aws.dynamodb) as made:
        held = inventory.reservations(keys)
    assert [operation for operation, _ in made] == ["Query"] * 20
    assert all(params["ConsistentRead"] for _, params in made)
    assert held == {(sku, "loc-0999", f"ord_1#{sku}"): 2 for sku in skus}


def test_when_more_is_expected_over_a_large_network_is_a_query_per_sku(aws, inventory):
    # A read of a backordered order (or a page of them) asks each short sku at every location that
    # may supply it: 1,000 locations were 10 BatchGetItems a sku, for one GET.
    network = [f"loc-{n:04d}" for n in range(1000)]
    for sku, location_id, po_id, at in [
        ("MUG", "loc-0003", "po_1", NOW + timedelta(days=3)),
        ("MUG", "loc-0003", "po_2", NOW + timedelta(days=2)),
        ("MUG", "loc-0900", "po_3", NOW + timedelta(days=5)),
        ("TSHIRT", "loc-0004", "po_4", NOW + timedelta(days=1)),
    ]:
        inventory.set_on_hand(sku, location_id, 0, "count")
        aws.dynamodb.update_item(  # as an open purchase order bringing units there sets it
            TableName=aws.tables["InventoryTable"],
            Key={"sku": {"S": sku}, "location_id": {"S": location_id}},
            UpdateExpression="SET #expected = :at",
            ExpressionAttributeNames={"#expected": f"expected#{po_id}"},
            ExpressionAttributeValues={":at": {"S": at.isoformat()}},
        )

    with requests_made(aws.dynamodb) as made:
        expected = inventory.expected({(sku, loc) for sku in ("MUG", "TSHIRT") for loc in network})

    assert [operation for operation, _ in made] == ["Query", "Query"]
    assert expected == {
        ("MUG", "loc-0003"): NOW + timedelta(days=2),
        ("MUG", "loc-0900"): NOW + timedelta(days=5),
        ("TSHIRT", "loc-0004"): NOW + timedelta(days=1),
    }


@pytest.mark.parametrize(("sku_count", "location_count"), [(1, 1), (3, 4), (20, 5), (1, 100), (20, 100)])
def test_an_order_over_a_hundred_locations_or_fewer_reads_by_key_in_as_many_batches_as_before(
    aws, inventory, sku_count, location_count
):
    # The typical order: its keys, sku by sku, in BatchGetItems of 100 and nothing else.
    network = [f"loc-{n:04d}" for n in range(location_count)]
    skus = {f"SKU-{n:02d}" for n in range(sku_count)}
    _stocked_alike(aws, inventory, skus, network[-1], 3, held=1)
    batches = -(-sku_count * location_count // 100)

    with requests_made(aws.dynamodb) as made:
        levels = inventory.levels(skus, network)
        held = inventory.reservations({(sku, loc): [f"ord_1#{sku}"] for sku in skus for loc in network})

    assert [operation for operation, _ in made] == ["BatchGetItem"] * (2 * batches)
    assert [spec.get("ConsistentRead", False) for _, params in made for spec in params["RequestItems"].values()] == [
        False
    ] * batches + [True] * batches
    assert {sku: [(x.location_id, x.available) for x in found] for sku, found in levels.items()} == {
        sku: [(network[-1], 2)] for sku in skus
    }
    assert held == {(sku, network[-1], f"ord_1#{sku}"): 1 for sku in skus}


# Reservation keys as the map holds them: an order's (`ord_..#L1`) and keys a projection must name
# through ExpressionAttributeNames (a dot, a space, a `#`, a colon).
ODD_KEYS = ["ord_1#L1", "a.b", "with space", "x#y.z", "k:1"]


# The items _large_network_data wrote for a network, by table: every parametrization stores the same
# items (one network, LARGE_NETWORK), written once through the adapter (~300 moto updates) and copied
# after.
_LARGE_NETWORK_ITEMS: dict[tuple[str, ...], dict[str, list[dict[str, Any]]]] = {}


def _large_network_data(aws: Any, inventory: DynamoInventory, network: list[str]) -> None:
    """MUG stocked at some of `network` (a reservation map or none, an expected date or none),
    missing at the others, with the other items a sku's partition and keys hold."""
    tables = [aws.tables["InventoryTable"], aws.tables["OrdersTable"]]
    if (written := _LARGE_NETWORK_ITEMS.get(tuple(network))) is not None:
        for table, items in written.items():
            for start in range(0, len(items), 25):
                requests = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
                assert not aws.dynamodb.batch_write_item(RequestItems={table: requests})["UnprocessedItems"]
        return
    _write_large_network_data(aws, inventory, network)
    _LARGE_NETWORK_ITEMS[tuple(network)] = {
        table: [item for page in aws.dynamodb.get_paginator("scan").paginate(TableName=table) for item in page["Items"]]
        for table in tables
    }


def _write_large_network_data(aws: Any, inventory: DynamoInventory, network: list[str]) -> None:
    for n, location_id in enumerate(network):
        if n % 3 == 1:
            continue  # no stock item there
        inventory.set_on_hand("MUG", location_id, 10 + n, "count")
        if n % 3 == 0:
            for m, key in enumerate(ODD_KEYS[: 1 + n % len(ODD_KEYS)]):
                inventory.reserve("MUG", location_id, key, 1 + m)
        if n % 4 == 0:
            aws.dynamodb.update_item(  # as an open purchase order bringing units there sets it
                TableName=aws.tables["InventoryTable"],
                Key={"sku": {"S": "MUG"}, "location_id": {"S": location_id}},
                UpdateExpression="SET #expected = :at",
                ExpressionAttributeNames={"#expected": f"expected#po_{n}"},
                ExpressionAttributeValues={":at": {"S": (NOW + timedelta(days=n)).isoformat()}},
            )
    inventory.set_on_hand("CUP", network[len(network) // 2], 7, "count")
    inventory.adjust("MUG", network[0], 1, "found", key="idem-1")  # a ledger item of its own
    inventory.restock("MUG", network[3], "ret_1#L1", 1)  # and a restock's
    DynamoBackorders(aws.dynamodb, aws.tables["InventoryTable"], aws.tables["OrdersTable"]).add(
        "MUG", WaitingOrder(created_at=NOW, order_id="ord_2")
    )  # the sku's backorder queue lives in its partition


def _reads(inventory: DynamoInventory, network: Iterable[str]) -> tuple[Any, Any, Any]:
    asked = list(network)
    levels = inventory.levels({"MUG", "CUP", "NONE"}, iter(asked))
    held = inventory.reservations({("MUG", loc): ODD_KEYS for loc in asked} | {("CUP", asked[0]): ["ord_1#L1"]})
    expected = inventory.expected({("MUG", loc) for loc in asked})
    return {sku: sorted(found, key=lambda x: x.location_id) for sku, found in levels.items()}, held, expected


# The largest count the test asks about, with a location before and two after what it asks (the
# last stocked, so a read past the last asked location shows at every count).
LARGE_NETWORK = [f"loc-{n:04d}" for n in range(150 + 3)]
# What the key lookups (_reads of 50 locations or fewer) answer for the first `count` asked, by count:
# every parametrization of a count reads the same items (_large_network_data), so its cells after the
# first take the answer the first one read (a third of a cell's CPU) instead of reading it again.
_READ_BY_KEY: dict[int, list[tuple[Any, Any, Any]]] = {}


# The order asked in: as stored, and shuffled with duplicates. The adapter reads the set of locations
# (sorted keys up to 100, the Query's range from its least to its greatest above), so the order only
# matters to a read that takes the first or last asked, or sends a duplicate key: the shuffled one
# starts and ends away from the least and greatest at every count (19th/99th of 1-100, 75th/99th of
# 1-101, 84th/148th of 1-150) and repeats every 7th, which catches what a reversed order did.
@pytest.mark.parametrize("count", [100, 101, 150])
@pytest.mark.parametrize("order", ["sorted", "shuffled with duplicates"])
def test_a_large_network_reads_the_same_stock_as_the_key_lookups(aws, inventory, count, order):
    network = LARGE_NETWORK
    _large_network_data(aws, inventory, network)
    asked = network[1 : count + 1]  # stock before the first and after the last asked location is not read
    if count not in _READ_BY_KEY:
        _READ_BY_KEY[count] = [_reads(inventory, part) for part in (asked[:50], asked[50:100], asked[100:]) if part]
    by_key = _READ_BY_KEY[count]  # read only: compared, never changed
    expected_levels = {sku: sorted((x for r in by_key for x in r[0][sku]), key=lambda x: x.location_id)
                       for sku in ("MUG", "CUP", "NONE")}  # fmt: skip
    if order == "shuffled with duplicates":
        asked = random.Random(count).sample(asked, len(asked)) + asked[::7]

    def small_pages(params: dict[str, Any], **kwargs: Any) -> None:
        params["Limit"] = 7  # every LastEvaluatedKey is followed

    aws.dynamodb.meta.events.register("before-parameter-build.dynamodb.Query", small_pages)
    try:
        with requests_made(aws.dynamodb) as made:
            levels, held, expected = _reads(inventory, asked)
    finally:
        aws.dynamodb.meta.events.unregister("before-parameter-build.dynamodb.Query", small_pages)

    assert levels == expected_levels
    assert levels["MUG"] and levels["NONE"] == []
    assert held == {k: v for r in by_key for k, v in r[1].items()}
    assert {key for _, _, key in held} == set(ODD_KEYS)
    assert expected == {k: v for r in by_key for k, v in r[2].items()}
    assert expected
    assert network[0] not in {x.location_id for x in levels["MUG"]}
    queries = [params for operation, params in made if operation == "Query"]
    assert bool(queries) is (count > 100)
    # Consistent where the key lookups were: the reservations only.
    assert all(
        q.get("ConsistentRead", False) is ("reservations." in q.get("ProjectionExpression", "")) for q in queries
    )


# --- Orders --------------------------------------------------------------------------------------


def test_an_order_round_trips_and_keeps_the_token_out_of_the_model(aws, capture, orders):
    order = capture.place(place_order(), actor="key_admin")
    assert order.lines[0].tax_rate is not None  # the invoice's tax name and rate are stored too
    assert orders.get(order.id) == order
    item = from_item(aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order.id}})["Item"])
    assert item["payment_token"] == "tok_approve"
    assert (item["status"], item["channel"], item["customer_id"]) == ("pending", "web", "cus_1")
    assert "payment_token" not in order.model_dump()


def test_a_second_order_with_the_same_id_is_refused_and_the_first_is_untouched(capture, orders):
    first = capture.place(place_order(), actor="a")
    entry = HistoryEntry(at=NOW, type="created", to_status=OrderStatus.PENDING, actor="b")
    with pytest.raises(DuplicateOrder):
        orders.add(first.model_copy(update={"version": 99}), entry, payment_token="x")
    assert orders.get(first.id).version == 1
    _, history = orders.history(first.id)
    assert [h.actor for h in history] == ["a"]


def test_a_put_retried_after_its_first_attempt_succeeded_is_that_order_not_a_duplicate(capture, orders):
    # botocore retries a put whose answer timed out; the first attempt may have written the item.
    entry = HistoryEntry(at=NOW, type="created", to_status=OrderStatus.PENDING, actor="a")
    placed = capture.place(place_order(), actor="a")
    order = placed.model_copy(update={"id": placed.id + "x", "external_id": "retried"})
    orders.add(order, entry, payment_token="tok")
    orders.add(order, entry, payment_token="tok")  # the same write again: no error
    assert orders.get(order.id) == order
    assert [h.actor for h in orders.history(order.id)[1]] == ["a"]
    other = entry.model_copy(update={"at": NOW + timedelta(microseconds=1)})  # another request's order
    with pytest.raises(DuplicateOrder):
        orders.add(order, other, payment_token="tok")


def test_an_update_to_a_status_its_table_does_not_allow_is_refused_before_the_write(aws, capture, orders):
    placed = capture.place(place_order(), actor="a")
    entry = HistoryEntry(at=NOW, type="shipment_shipped", to_status=OrderStatus.SHIPPED, actor="buggy")
    jumped = placed.model_copy(update={"status": OrderStatus.SHIPPED, "version": 2})  # pending -> shipped
    misspelt = placed.model_copy(update={"payment": placed.payment.model_copy(update={"status": "captued"}),
                                         "version": 2})  # fmt: skip
    # With stock moves too (a cancel of units' stock step): refused before its transaction.
    with_stock = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"], aws.tables["InventoryTable"])
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    key = f"{placed.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 2))

    for bad in (jumped, misspelt):
        with pytest.raises(InvalidTransition):
            orders.update(bad, placed, [entry])
        with pytest.raises(InvalidTransition):
            with_stock.update_with_stock(bad, placed, [entry], [StockMove("MUG", "wh-west", key, held=2)])

    assert _level(inventory, "MUG", "wh-west") == (5, 2, 3)
    assert orders.get(placed.id) == placed
    assert [h.actor for h in orders.history(placed.id)[1]] == ["a"]


def test_an_update_that_only_appends_history_keeps_the_version(capture, orders):
    placed = capture.place(place_order(), actor="a")
    noted = HistoryEntry(at=NOW, type="payment_capture_failed", actor="b", detail={"kind": "transient"})

    orders.update(placed, placed, [noted])

    assert orders.get(placed.id) == placed
    assert [h.type for h in orders.history(placed.id)[1]] == ["created", "payment_capture_failed"]


def test_a_history_only_entry_decided_on_a_history_that_grew_since_is_stale(capture, orders):
    # Two attempts noting one refusal at once (refusal_noted_once) each decide on the history they
    # read; the version does not move, so only the history's length can tell the second is stale.
    placed = capture.place(place_order(), actor="a")
    noted = HistoryEntry(at=NOW, type="payment_void_failed", actor="b", detail={"kind": "refused"})
    orders.update(placed, placed, [noted], history_length=1)

    # The other attempt's entry, at its own time (the very same entry would be this write again).
    with pytest.raises(StaleVersion):
        orders.update(placed, placed, [noted.model_copy(update={"at": NOW + timedelta(seconds=1)})], history_length=1)

    assert [h.actor for h in orders.history(placed.id)[1]] == ["a", "b"]


def test_lists_are_newest_first_and_pages_chain_to_the_end(capture, orders):
    placed = [capture.place(place_order(external_id=f"e{i}"), actor="k").id for i in range(5)]
    seen, cursor = [], None
    while True:
        page, cursor = orders.list(OrderFilter(channel="web"), 2, cursor)
        seen.extend(o.id for o in page)
        if cursor is None:
            break
    assert seen == list(reversed(placed))


@pytest.mark.parametrize(
    "where",
    [
        OrderFilter(),
        OrderFilter(channel="web"),
        OrderFilter(status=OrderStatus.PENDING),
        OrderFilter(channel="web", status=OrderStatus.PENDING),
        OrderFilter(customer_id="cus_2"),
        OrderFilter(customer_id="cus_2", channel="web", status=OrderStatus.PENDING),
    ],
)
def test_every_filter_finds_its_orders(capture, orders, where):
    capture.place(place_order(external_id="a", customer={"id": "cus_2", "email": "b@example.com"}), actor="k")
    capture.place(place_order(external_id="b", channel="marketplace"), actor="k")
    found, _ = orders.list(where, 10, None)
    expected = 1 if where.customer_id or where.channel else 2
    assert len(found) == expected
    assert all(where.customer_id in (None, o.customer.id) for o in found)


def test_a_status_filter_on_a_channel_or_customer_list_sees_status_changes(capture, orders):
    # Those indexes do not carry the status (a status change would rewrite their entries): the
    # filter is applied to the orders read back, so it sees the status as it is now.
    customer = {"id": "cus_3", "email": "c@example.com"}
    placed = [capture.place(place_order(external_id=f"s{i}", customer=customer), actor="k") for i in range(3)]
    held = placed[1]
    entry = HistoryEntry(at=NOW, type="edited", from_status=OrderStatus.PENDING, to_status=OrderStatus.ON_HOLD,
                         actor="k")  # fmt: skip
    orders.update(held.model_copy(update={"status": OrderStatus.ON_HOLD, "version": 2}), held, [entry])

    for where in ({"channel": "web"}, {"customer_id": "cus_3"}, {"customer_id": "cus_3", "channel": "web"}):
        on_hold, _ = orders.list(OrderFilter(**where, status=OrderStatus.ON_HOLD), 10, None)
        pending, _ = orders.list(OrderFilter(**where, status=OrderStatus.PENDING), 10, None)
        assert [o.id for o in on_hold] == [held.id]
        assert [o.id for o in pending] == [placed[2].id, placed[0].id]


def test_a_filtered_page_is_cut_before_the_filter_and_its_cursor_carries_on(capture, orders):
    placed = [capture.place(place_order(external_id=f"p{i}"), actor="k") for i in range(4)]
    entry = HistoryEntry(at=NOW, type="edited", from_status=OrderStatus.PENDING, to_status=OrderStatus.ON_HOLD,
                         actor="k")  # fmt: skip
    for order in placed[2:]:
        orders.update(order.model_copy(update={"status": OrderStatus.ON_HOLD, "version": 2}), order, [entry])
    where = OrderFilter(channel="web", status=OrderStatus.PENDING)

    first, cursor = orders.list(where, 2, None)  # the newest two are on hold: an empty page
    assert first == [] and cursor is not None
    second, _ = orders.list(where, 2, cursor)
    assert [o.id for o in second] == [placed[1].id, placed[0].id]
    with pytest.raises(InvalidCursor):
        orders.list(OrderFilter(channel="web", status=OrderStatus.ON_HOLD), 2, cursor)


class CountingQueries:
    """The DynamoDB client, counting the index entries its queries read (ScannedCount)."""

    def __init__(self, client: Any):
        self._client = client
        self.queries: list[dict[str, Any]] = []
        self.read = 0

    def query(self, **query: Any) -> dict[str, Any]:
        response = self._client.query(**query)
        self.queries.append(query)
        self.read += response["ScannedCount"]
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_channels_page_of_a_customer_stops_at_its_read_budget_and_its_cursor_names_no_order(
    aws, capture, orders, monkeypatch
):
    # A customer with millions of another channel's orders: the web key's page read on until it
    # was full, a query per 1 MB, past the API's 29 s. It stops at the budget, on a cursor that
    # names no order (the web key must not learn the market's order ids) and skips none.
    monkeypatch.setattr(dynamodb, "CHANNEL_LIST_READS", 4)
    customer = {"id": "cus_mix", "email": "mix@example.com"}
    channels = ["web", *["market"] * 6, "web", *["market"] * 6, "web"]
    placed = [
        capture.place(place_order(external_id=f"mix{i}", channel=channel, customer=customer), actor="k")
        for i, channel in enumerate(channels)
    ]
    market = {order.id for order in placed if order.channel == "market"}
    counting = CountingQueries(aws.dynamodb)
    listing = DynamoOrders(counting, aws.tables["OrdersTable"])

    below = None
    for limit, status in ((1, None), (25, None), (1, OrderStatus.PENDING)):
        where = OrderFilter(customer_id="cus_mix", channel="web", status=status)
        shown, cursor, pages = [], None, 0
        while True:
            counting.read = 0
            page, cursor = listing.list(where, limit, cursor)
            pages += 1
            assert counting.read <= 4 + 2, "a page reads past its budget"
            shown.extend(order.id for order in page)
            if cursor is None:
                break
            named = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["k"]
            assert market.isdisjoint(value["S"] for value in named.values()), "a cursor names a market order"
            below = cursor if "id" not in named else below
        assert shown == [order.id for order in reversed(placed) if order.channel == "web"]
        assert pages <= 8

    # A cursor of where a page stopped is bound to its filter and partition like any other.
    assert below is not None
    for where in (OrderFilter(customer_id="cus_mix"), OrderFilter(customer_id="cus_other", channel="web")):
        with pytest.raises(InvalidCursor):
            listing.list(where, 1, below)
    # Unbound, the customer's list is one query of one page and the order after it (whether a next
    # page follows), as ever.
    counting.queries.clear()
    assert len(listing.list(OrderFilter(customer_id="cus_mix"), 5, None)[0]) == 5
    assert [query["Limit"] for query in counting.queries] == [6]


def test_the_order_document_is_stored_compressed_and_an_uncompressed_one_still_reads(aws, capture, orders):
    order = capture.place(place_order(), actor="k")
    table, key = aws.tables["OrdersTable"], {"id": {"S": order.id}}
    stored = aws.dynamodb.get_item(TableName=table, Key=key)["Item"]["doc"]
    assert set(stored) == {"B"}
    assert json.loads(order_codec.decompress(stored["B"]))["id"] == order.id
    # The preset dictionary halves what zlib alone stores.
    assert len(stored["B"]) < len(zlib.compress(order.stored_json().encode(), 9)) / 1.5

    # An item written before the dictionary: zlib alone.
    compressed = {":doc": {"B": zlib.compress(order.stored_json().encode())}}
    aws.dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET doc = :doc", ExpressionAttributeValues=compressed
    )
    assert orders.get(order.id) == order

    # An item written before compression: its document is a JSON string.
    plain = {":doc": {"S": order.model_dump_json(exclude_none=True)}}
    aws.dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET doc = :doc", ExpressionAttributeValues=plain
    )
    # (without what only the stored document keeps, which such an old item never had)
    old = order.model_copy(update={"priced_version": None, "status_since": None})
    assert orders.get(order.id) == old
    assert orders.list(OrderFilter(channel="web"), 10, None)[0] == [old]


def test_history_entries_are_stored_compressed_and_json_ones_stored_before_still_read(aws, capture, orders):
    order = capture.place(place_order(), actor="k")
    table, key = aws.tables["OrdersTable"], {"id": {"S": order.id}}
    _, (created,) = orders.history(order.id)
    (stored,) = aws.dynamodb.get_item(TableName=table, Key=key)["Item"]["history"]["L"]
    assert set(stored) == {"B"}
    text = created.model_dump_json(exclude_none=True)
    assert json.loads(order_codec.decompress(stored["B"])) == json.loads(text)
    assert len(stored["B"]) < len(zlib.compress(text.encode(), 9)) * 0.75

    # An item whose history was stored as JSON strings gets compressed entries appended: both read.
    aws.dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET history = :old",
        ExpressionAttributeValues={":old": {"L": [{"S": text}]}},
    )  # fmt: skip
    held = HistoryEntry(at=NOW, type="on_hold", from_status=OrderStatus.PENDING, to_status=OrderStatus.ON_HOLD,
                        actor="k", detail={"reason": "fraud_review"})  # fmt: skip
    orders.update(order.model_copy(update={"status": OrderStatus.ON_HOLD, "version": 2}), order, [held])
    _, entries = orders.history(order.id)
    assert entries == [created, held]
    kinds = [set(e) for e in aws.dynamodb.get_item(TableName=table, Key=key)["Item"]["history"]["L"]]
    assert kinds == [{"S"}, {"B"}]


def test_an_order_item_holds_only_what_keys_indexes_and_filters_need_beside_its_document(aws, capture):
    from bench.cost import item_bytes

    order = capture.place(place_order(), actor="k")
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order.id}})["Item"]
    # No top-level external_id (the document has it, and the id is derived from it), no late index
    # keys (only an order marked late carries them) and no status_since (a pending order is judged
    # late by when it was placed): bytes every later write would pay for.
    assert set(item) == {"id", "status", "version", "channel", "customer_id", "created_at", "list_pk",
                         "payment_token", "doc", "history", "status_key"}  # fmt: skip
    assert item_bytes(item) < 1024  # one write unit


def test_a_cursor_only_works_for_the_filter_it_came_from(capture, orders):
    for i in range(3):
        capture.place(place_order(external_id=f"c{i}"), actor="k")
    _, cursor = orders.list(OrderFilter(channel="web"), 1, None)
    assert cursor is not None
    with pytest.raises(InvalidCursor):
        orders.list(OrderFilter(status=OrderStatus.PENDING), 1, cursor)
    with pytest.raises(InvalidCursor):
        orders.list(OrderFilter(channel="marketplace"), 1, cursor)
    for garbage in ("", "not-base64!", "eyJ9", cursor[:-3]):
        with pytest.raises(InvalidCursor):
            orders.list(OrderFilter(channel="web"), 1, garbage)


def test_the_authorizers_lookup_reads_what_the_key_store_writes(aws):
    keys = DynamoApiKeys(aws.dynamodb, aws.tables["CatalogTable"])
    lookup = ApiKeyLookup(aws.dynamodb, aws.tables["CatalogTable"])
    scopes = [Scope.ORDERS_WRITE, Scope.ORDERS_READ]
    keys.add(ApiKey(id="key_shop", name="shop", scopes=scopes, channel="shop", created_at=NOW), "hash_shop")
    keys.add(ApiKey(id="key_ops", name="ops", scopes=[Scope.ADMIN], created_at=NOW), "hash_ops")
    at_two = ApiKey(id="key_3pl", name="3pl", scopes=[Scope.FULFILLMENT_WRITE], location_ids=["wh-b", "wh-a"],
                    created_at=NOW)  # fmt: skip
    keys.add(at_two, "hash_3pl")

    assert lookup.by_hash("hash_shop") == KeyGrant("key_shop", ("orders:read", "orders:write"), "shop", False)
    assert lookup.by_hash("hash_ops") == KeyGrant("key_ops", ("admin",), None, False)
    assert lookup.by_hash("hash_3pl") == KeyGrant(
        "key_3pl", ("fulfillment:write",), None, False, location_ids=("wh-a", "wh-b")
    )
    assert keys.by_hash("hash_3pl").location_ids == ["wh-b", "wh-a"]
    assert lookup.by_hash("hash_unknown") is None
    keys.revoke("key_shop", NOW)
    assert lookup.by_hash("hash_shop").revoked


class LaggingReplica:
    """A DynamoDB client whose eventually consistent reads come from a replica frozen at `freeze()`
    (DynamoDB's documented semantics: such a read may miss writes of the last second or so);
    strongly consistent reads and every write go to the table."""

    def __init__(self, client: Any):
        self._client = client
        self._frozen: dict[str, dict[str, Any]] | None = None

    def freeze(self, table: str, key: tuple[str, ...] = ("pk", "sk")) -> None:
        items = self._client.scan(TableName=table)["Items"]
        self._frozen = {json.dumps({name: i[name] for name in key}, sort_keys=True): i for i in items}

    def get_item(self, **request: Any) -> dict[str, Any]:
        if self._frozen is None or request.get("ConsistentRead"):
            return self._client.get_item(**request)
        item = self._frozen.get(json.dumps(request["Key"], sort_keys=True))
        return {"Item": item} if item is not None else {}

    def batch_get_item(self, **request: Any) -> dict[str, Any]:
        ((table, page),) = request["RequestItems"].items()
        if self._frozen is None or page.get("ConsistentRead"):
            return self._client.batch_get_item(**request)
        found = [self._frozen.get(json.dumps(key, sort_keys=True)) for key in page["Keys"]]
        return {"Responses": {table: [item for item in found if item is not None]}, "UnprocessedKeys": {}}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_key_revoked_a_moment_ago_is_refused_even_where_a_replica_has_not_seen_the_revocation(aws):
    # An Allow is cached by API Gateway for AuthorizerCacheSeconds: one stale read right after the
    # revocation's flush would let the revoked key in for that long.
    table = aws.tables["CatalogTable"]
    replica = LaggingReplica(aws.dynamodb)
    keys, lookup = DynamoApiKeys(replica, table), ApiKeyLookup(replica, table)
    keys.add(ApiKey(id="key_shop", name="shop", scopes=[Scope.ORDERS_READ], created_at=NOW), "hash_shop")
    replica.freeze(table)

    keys.revoke("key_shop", NOW)

    assert lookup.by_hash("hash_shop").revoked


def test_a_key_issued_a_moment_ago_can_be_revoked_at_once(aws):
    table = aws.tables["CatalogTable"]
    replica = LaggingReplica(aws.dynamodb)
    keys = DynamoApiKeys(replica, table)
    replica.freeze(table)
    keys.add(ApiKey(id="key_shop", name="shop", scopes=[Scope.ORDERS_READ], created_at=NOW), "hash_shop")

    assert keys.revoke("key_shop", NOW) is not None
    assert ApiKeyLookup(aws.dynamodb, table).by_hash("hash_shop").revoked


def test_rotating_the_admin_key_twice_in_a_row_retires_both_earlier_secrets(aws):
    table = aws.tables["CatalogTable"]
    replica = LaggingReplica(aws.dynamodb)
    keys = DynamoApiKeys(replica, table)
    admin = ApiKey(id="key_admin", name="admin", scopes=[Scope.ADMIN], created_at=NOW)
    keys.add(admin, "hash_first")
    replica.freeze(table)

    keys.add(admin, "hash_second")
    keys.add(admin, "hash_third")

    lookup = ApiKeyLookup(aws.dynamodb, table)
    assert lookup.by_hash("hash_first") is None
    assert lookup.by_hash("hash_second") is None  # a replica still naming the first must not keep it
    assert lookup.by_hash("hash_third") is not None


class InterleavingClient:
    """A DynamoDB client that runs `between` once, right after the first put of an item whose
    partition key is `pk` (another request's writes landing between two of this one's)."""

    def __init__(self, client: Any, pk: str, between: Any):
        self._client, self._pk, self._between = client, pk, between

    def put_item(self, **request: Any) -> dict[str, Any]:
        answer = self._client.put_item(**request)
        if self._between is not None and request["Item"]["pk"]["S"] == self._pk:
            between, self._between = self._between, None
            between()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_key_revoked_while_it_is_being_issued_never_authenticates(aws):
    # GET /api-keys lists a key as soon as its record is written, before its secret's lookup is: an
    # admin revoking it then must not see the lookup written afterwards, unrevoked, let it in for good.
    table = aws.tables["CatalogTable"]
    revoking = DynamoApiKeys(aws.dynamodb, table)
    issuing = DynamoApiKeys(
        InterleavingClient(aws.dynamodb, "APIKEYS", lambda: revoking.revoke("key_shop", NOW)), table
    )

    with pytest.raises(Conflict):
        issuing.add(ApiKey(id="key_shop", name="shop", scopes=[Scope.ORDERS_READ], created_at=NOW), "hash_shop")

    grant = ApiKeyLookup(aws.dynamodb, table).by_hash("hash_shop")
    assert grant is None or grant.revoked
    assert revoking.list(10, None)[0][0].revoked_at == NOW


def test_two_rotations_of_the_admin_key_at_once_leave_only_the_secret_its_record_names_working(aws):
    # Each rotation retires the secret the record names when it reads it: one that stored its record
    # first and its lookup last would leave its secret working, named by no record, past every rotation.
    table = aws.tables["CatalogTable"]
    admin = ApiKey(id="key_admin", name="admin", scopes=[Scope.ADMIN], created_at=NOW)
    DynamoApiKeys(aws.dynamodb, table).add(admin, "hash_first")
    other = DynamoApiKeys(aws.dynamodb, table)
    rotating = DynamoApiKeys(InterleavingClient(aws.dynamodb, "APIKEYS", lambda: other.add(admin, "hash_third")), table)

    with pytest.raises(Conflict):
        rotating.add(admin, "hash_second")

    lookup = ApiKeyLookup(aws.dynamodb, table)
    named = aws.dynamodb.get_item(
        TableName=table, Key={"pk": {"S": "APIKEYS"}, "sk": {"S": "key_admin"}}, ConsistentRead=True
    )
    working = [h for h in ("hash_first", "hash_second", "hash_third") if lookup.by_hash(h) is not None]
    assert working == [named["Item"]["secret_hash"]["S"]]


def test_a_secret_that_is_another_keys_is_refused_before_anything_changes(aws):
    # `python -m infra.admin_key --key` with a storefront key's secret at hand: the lookup, keyed by
    # the secret's hash, would become the admin's, the storefront's key an admin key (and revoking it
    # would revoke the admin's lookup), while the admin's previous secret was retired.
    table = aws.tables["CatalogTable"]
    keys, lookup = DynamoApiKeys(aws.dynamodb, table), ApiKeyLookup(aws.dynamodb, table)
    admin = ApiKey(id="key_admin", name="admin", scopes=[Scope.ADMIN], created_at=NOW)
    keys.add(ApiKey(id="key_shop", name="shop", scopes=[Scope.ORDERS_READ], created_at=NOW), "hash_shop")
    keys.add(admin, "hash_admin")

    with pytest.raises(Conflict):
        keys.add(admin, "hash_shop")

    assert lookup.by_hash("hash_shop") == KeyGrant("key_shop", ("orders:read",), None, False)
    assert lookup.by_hash("hash_admin") == KeyGrant("key_admin", ("admin",), None, False)
    keys.revoke("key_shop", NOW)
    assert not lookup.by_hash("hash_admin").revoked


def test_a_secret_another_key_takes_while_the_admin_key_is_rotated_to_it_stays_that_keys(aws):
    # The check that no key holds the secret ran before the other key's issue stored its lookup: the
    # rotation's own write of the lookup must not take it over (the storefront's key an admin key).
    table = aws.tables["CatalogTable"]
    shop = ApiKey(id="key_shop", name="shop", scopes=[Scope.ORDERS_READ], created_at=NOW)
    other = DynamoApiKeys(aws.dynamodb, table)
    rotating = DynamoApiKeys(InterleavingClient(aws.dynamodb, "APIKEYS", lambda: other.add(shop, "hash_both")), table)

    with pytest.raises(Conflict):
        rotating.add(ApiKey(id="key_admin", name="admin", scopes=[Scope.ADMIN], created_at=NOW), "hash_both")

    assert ApiKeyLookup(aws.dynamodb, table).by_hash("hash_both") == KeyGrant("key_shop", ("orders:read",), None, False)


def requested_returns(count: int) -> list[Return]:
    return [
        Return(
            id=f"rma_lag{n}", order_id=f"ord_lag{n}", channel="shop", ordinal=1, status="requested",
            lines=[ReturnLine(line_id="L1", quantity=1, reason="too small")], refund=usd("0.00"), fee=usd("0.00"),
            created_at=NOW + timedelta(seconds=n), updated_at=NOW, version=1,
        )
        for n in range(count)
    ]  # fmt: skip


def test_a_return_status_list_shows_only_returns_in_that_status_while_the_index_lags(aws):
    # by_status is a global secondary index, eventually consistent: for a moment after an approval
    # it still lists the return under `requested`, while the return read back is authorized.
    returns, table = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]), aws.tables["ReturnsTable"]
    made = requested_returns(2)
    for item in made:
        returns.add(item)
    returns.update(made[1].approve(None, at=NOW), made[1])
    aws.dynamodb.update_item(
        TableName=table, Key={"id": {"S": made[1].id}}, UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": "requested"}},
    )  # fmt: skip

    listed, _ = returns.list(ReturnFilter(status=ReturnStatus.REQUESTED), 10, None)

    assert [r.id for r in listed] == [made[0].id]


def test_the_reconcilers_receipt_index_lists_received_returns_until_set_aside_and_again_after_their_next_write(aws):
    from core.return_models import ReceiveReturn
    from functions.adapters.dynamodb import DynamoReceivedReturns

    returns, table = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]), aws.tables["ReturnsTable"]
    received = DynamoReceivedReturns(aws.dynamodb, table)
    later = NOW + timedelta(days=1)
    receipt = ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    )
    made = requested_returns(3)
    for item in made:
        returns.add(item)
    assert list(received.received_before(later)) == []  # requested: not in the index
    for item in made:
        authorized = item.approve(None, at=NOW)
        returns.update(authorized, item)
        returns.update(authorized.receive(receipt, at=NOW, by="key_wh"), authorized)
    assert list(received.received_before(later)) == [item.id for item in made]

    first, second = returns.get(made[0].id), returns.get(made[1].id)
    received.set_aside(first)
    received.set_aside(made[1])  # judged at a version it no longer has: left listed
    doc = aws.dynamodb.get_item(TableName=table, Key={"id": {"S": first.id}})["Item"]

    assert list(received.received_before(later)) == [made[1].id, made[2].id]
    assert returns.get(first.id) == first and doc["status"] == {"S": "received"}  # nothing else changed
    returns.update(first.listed_again(), first)  # its next write (a new version) lists it again
    returns.update(second.refunded(usd("10.00"), at=later), second)  # refunded: out of the index
    assert list(received.received_before(later)) == [first.id, made[2].id]


def test_a_return_set_aside_waiting_for_its_plugin_is_listed_under_its_method_until_its_next_write(aws):
    from core.return_models import ReceiveReturn
    from functions.adapters.dynamodb import DynamoReceivedReturns

    returns, table = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]), aws.tables["ReturnsTable"]
    received = DynamoReceivedReturns(aws.dynamodb, table)
    later = NOW + timedelta(days=1)
    receipt = ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    )
    made = requested_returns(2)
    for item in made:
        returns.add(item)
        authorized = item.approve(None, at=NOW)
        returns.update(authorized, item)
        returns.update(authorized.receive(receipt, at=NOW, by="key_wh"), authorized)
    waiting, other = returns.get(made[0].id), returns.get(made[1].id)

    received.set_aside(waiting, waiting_for="card")
    received.set_aside(other.model_copy(update={"version": 1}), waiting_for="card")  # judged on an old version

    assert list(received.received_before(later)) == [other.id]
    assert list(received.waiting_for_plugin("card", later)) == [waiting.id]
    assert list(received.waiting_for_plugin("paypal", later)) == []
    assert returns.get(waiting.id) == waiting  # nothing else changed
    returns.update(waiting.listed_again(), waiting)  # its next write (its workflow stuck again)
    assert list(received.waiting_for_plugin("card", later)) == []
    assert list(received.received_before(later)) == [waiting.id, other.id]


def test_returns_received_before_the_receipt_index_are_given_its_key_once(aws):
    from core.return_models import ReceiveReturn
    from functions.adapters.dynamodb import DynamoReceivedReturns, backfill_receipt_keys

    returns, table = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]), aws.tables["ReturnsTable"]
    receipt = ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    )
    old, waiting = requested_returns(2)
    for item in (old, waiting):
        returns.add(item)
    authorized = old.approve(None, at=NOW)
    returns.update(authorized, old)
    returns.update(authorized.receive(receipt, at=NOW, by="key_wh"), authorized)
    # As an earlier version stored it: received, with no receipt key.
    aws.dynamodb.update_item(TableName=table, Key={"id": {"S": old.id}}, UpdateExpression="REMOVE receipt_key")
    received = DynamoReceivedReturns(aws.dynamodb, table)
    assert list(received.received_before(NOW + timedelta(days=1))) == []

    assert backfill_receipt_keys(aws.dynamodb, table) == (1, 0)  # the requested one is not touched

    assert list(received.received_before(NOW + timedelta(days=1))) == [old.id]
    assert backfill_receipt_keys(aws.dynamodb, table) == (0, 1)


def test_a_returns_decision_to_place_its_exchange_is_stored_and_never_shown(aws):
    # The decision a concurrent Exchange run reads before giving the exchange up: lost on the way
    # through the table, a run whose stock check disagrees would give up a replacement being placed.
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    (requested,) = requested_returns(1)
    exchange = ExchangeInput.model_validate({"lines": [{"sku": "CAP", "quantity": 1}]})
    received = requested.model_copy(update={"status": ReturnStatus.RECEIVED, "exchange": exchange})
    returns.add(received)

    returns.update(received.placing_exchange(at=NOW), received)

    stored = returns.get(received.id)
    assert stored is not None and stored.exchange_placing and stored.version == 2
    assert "exchange_placing" not in stored.model_dump(mode="json")


def test_a_location_written_through_a_container_is_seen_by_it_at_once_where_a_replica_lags(aws):
    # A setup script's PUT /locations then PUT /inventory for it reach one warm container: the
    # network read that follows the write must not come from a replica that has not seen it (it
    # would be cached for the cache's whole life, and the stock take answer 404 no location).
    table = aws.tables["CatalogTable"]
    replica = LaggingReplica(aws.dynamodb)
    catalog = CachedCatalog(DynamoCatalog(replica, table), ttl_seconds=10)
    catalog.put_location(location("wh-east"))
    replica.freeze(table)

    catalog.put_location(location("wh-west", latitude=39.5))

    assert catalog.get_location("wh-west") is not None
    assert [loc.location_id for loc in catalog.list_locations()] == ["wh-east", "wh-west"]


def test_a_product_written_a_moment_ago_is_found_by_every_container_where_a_replica_lags(aws):
    # PUT /products then an order for it (or GET /products) on another container: unknown_sku 422
    # (or 404) for a product the API has just answered 201 for.
    table = aws.tables["CatalogTable"]
    replica = LaggingReplica(aws.dynamodb)
    writer, reader = (CachedCatalog(DynamoCatalog(replica, table), ttl_seconds=10) for _ in range(2))
    replica.freeze(table)

    writer.put_product(product("MUG", "12.50"))

    assert reader.get_product("MUG") == product("MUG", "12.50")
    assert set(reader.get_products({"MUG"})) == {"MUG"}


def test_an_order_list_neither_drops_nor_misfilters_orders_a_replica_has_not_seen_yet(aws, capture):
    # An index entry is written after the order it lists, so a page may name an order (or its new
    # status) that an eventually consistent read of the table does not show yet: the order was
    # left out of the page while the cursor moved past it, so a client walking the pages never
    # saw it; and the status filter, judged on the older read, dropped an order in that status.
    table = aws.tables["OrdersTable"]
    replica = LaggingReplica(aws.dynamodb)
    orders = DynamoOrders(replica, table)
    placed = capture.place(place_order(external_id="r1"), actor="k")
    replica.freeze(table, key=("id",))
    held = placed.model_copy(update={"status": OrderStatus.ON_HOLD, "version": 2})
    entry = HistoryEntry(at=NOW, type="on_hold", from_status=OrderStatus.PENDING, to_status=OrderStatus.ON_HOLD,
                         actor="k")  # fmt: skip
    orders.update(held, placed, [entry])
    newer = capture.place(place_order(external_id="r2"), actor="k")

    first, cursor = orders.list(OrderFilter(channel="web"), 1, None)
    second, _ = orders.list(OrderFilter(channel="web"), 1, cursor)

    assert [o.id for o in first + second] == [newer.id, placed.id]
    assert [o.id for o in orders.list(OrderFilter(status=OrderStatus.ON_HOLD), 10, None)[0]] == [placed.id]


def a_return_read_through_a_replica(aws) -> tuple[DynamoReturns, LaggingReplica, Return]:
    """A requested return stored, and the Returns adapter reading through a lagging replica."""
    replica = LaggingReplica(aws.dynamodb)
    returns = DynamoReturns(replica, aws.tables["ReturnsTable"])
    (made,) = requested_returns(1)
    returns.add(made)
    return returns, replica, made


def test_a_return_list_shows_a_return_in_its_new_status_before_a_replica_has_seen_it(aws):
    returns, replica, made = a_return_read_through_a_replica(aws)
    replica.freeze(aws.tables["ReturnsTable"], key=("id",))
    returns.update(made.approve(None, at=NOW), made)

    listed, _ = returns.list(ReturnFilter(status=ReturnStatus.AUTHORIZED), 10, None)

    assert [(r.id, r.status) for r in listed] == [(made.id, ReturnStatus.AUTHORIZED)]


def test_an_orders_returns_show_one_received_a_moment_ago_before_a_replica_has_seen_it(aws):
    # What a return's refund gives back follows from the order's other returns as this read shows
    # them (the shipping due when the whole order is back, the units refunded before): two parcels
    # of one order received a second apart would each find the other still authorized, and the
    # shipping owed for the whole order back would be refunded by neither.
    from core.return_models import ReceiveReturn

    returns, replica, made = a_return_read_through_a_replica(aws)
    authorized = made.approve(None, at=NOW)
    returns.update(authorized, made)
    replica.freeze(aws.tables["ReturnsTable"], key=("id",))
    receipt = ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}]}
    )
    returns.update(authorized.receive(receipt, at=NOW, by="key_wh"), authorized)

    assert [(r.id, r.status, r.received()) for r in returns.for_order(made.order_id)] == [
        (made.id, ReturnStatus.RECEIVED, {"L1": 1})
    ]


class ItemSizeLimit:
    """A DynamoDB client that refuses an update whose item would pass DynamoDB's 400 KB, with
    DynamoDB's own error (moto does not check the size of an item a nested update grows)."""

    LIMIT = 400 * 1024

    def __init__(self, client: Any):
        self._client = client

    def update_item(self, **request: Any) -> dict[str, Any]:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends
        from moto.dynamodb.models.dynamo_type import DynamoType

        from bench.cost import item_bytes

        # The stored item as GetItem would answer it, read from moto's memory: through the client,
        # the read of an item growing to 400 KB was a third of this test's time.
        table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table(request["TableName"])
        key = [DynamoType(request["Key"][name]) for name in (table.hash_key_attr, table.range_key_attr) if name]
        found = table.get_item(*key)
        stored = found.to_json()["Attributes"] if found is not None else {}
        added = sum(len(value["S"].encode()) + 64 for value in request.get("ExpressionAttributeValues", {}).values())
        if item_bytes(stored) + added > self.LIMIT:
            raise ClientError(
                {"Error": {"Code": "ValidationException", "Message": "Item size to update has exceeded the maximum "
                                                                     "allowed size"}},
                "UpdateItem",
            )  # fmt: skip
        return self._client.update_item(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_location_the_full_network_item_cannot_hold_is_a_conflict_and_the_others_stay(aws):
    # The network is one item: past DynamoDB's 400 KB (about a thousand locations) its update is
    # refused with a ValidationException, which was a 500 internal_error for PUT /locations.
    catalog = DynamoCatalog(ItemSizeLimit(aws.dynamodb), aws.tables["CatalogTable"])
    big = {"name": "N" * 200, "address": address_body(name="N" * 200, line1="L" * 200, line2="L" * 200, city="C" * 200)}
    # The first 260 (~365 KB, some 10 short of the limit) stored at once, as put_location stores
    # them: moto answers each update with the whole map before it, so adding them one by one cost a
    # growing answer each (70 more adds to the limit took most of this test's time).
    first = [location(f"store-{n:04d}" + "x" * 100, **big) for n in range(260)]
    aws.dynamodb.put_item(
        TableName=aws.tables["CatalogTable"],
        Item={**dynamodb.NETWORK_KEY, "locations": {"M": {x.location_id: {"S": x.model_dump_json()} for x in first}}},
    )
    added = len(first)
    with pytest.raises(Conflict) as refused:
        while True:
            catalog.put_location(location(f"store-{added:04d}" + "x" * 100, **big))
            added += 1

    assert refused.value.code == "location_network_full" and len(first) < added < 400
    assert len(catalog.list_locations()) == added


# --- Orders stored before Order.booking_keys --------------------------------------------------------


def test_a_parcel_booked_again_before_booking_keys_were_kept_is_cancelled_under_the_key_it_was_booked_under(aws):
    # Between rebookings (a parcel booked again after an edit, under "<shipment id>-<n>") and
    # booking_keys, an order kept no key: only the label, stored under the booking's key, names it.
    from core.models import LineInput, LocationInput, OrderEdit, ProductInput
    from functions.adapters.aws_clients import aws_client
    from functions.adapters.labels import S3Labels
    from functions.bootstrap import Config, bootstrap
    from tests.builders import location_body, product_body

    aws_client("s3").create_bucket(Bucket="labels")
    services = bootstrap(Config.from_env(), label_store=S3Labels("labels"))
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 10)
    placed = services.capture.place(place_order(external_id="web-legacy"), actor="key_web")
    services.workflow.authorize_payment(placed.id, attempt=0)
    services.workflow.reserve_stock(placed.id)
    services.workflow.create_shipments(placed.id)
    edited = services.actions.edit(
        placed.id, services.order_repository.get(placed.id).version,
        OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), actor="key_web",
    )  # fmt: skip
    services.workflow.reserve_stock(edited.id)
    services.workflow.create_shipments(edited.id)
    (shipment,) = services.order_repository.get(edited.id).shipments
    key = f"{shipment.id}-1"
    assert shipment.label_url == f"labels/{edited.id}/{key}.pdf"
    table, item_key = aws.tables["OrdersTable"], {"id": {"S": edited.id}}
    stored = aws.dynamodb.get_item(TableName=table, Key=item_key)["Item"]["doc"]["B"]
    document = json.loads(order_codec.decompress(stored))
    assert document.pop("booking_keys") == {shipment.id: key}
    aws.dynamodb.update_item(  # as an order stored before booking_keys holds it
        TableName=table, Key=item_key, UpdateExpression="SET doc = :doc",
        ExpressionAttributeValues={":doc": {"B": order_codec.compress(json.dumps(document).encode())}},
    )  # fmt: skip

    services.actions.cancel(edited.id, "changed my mind", actor="key_web")

    _, history = services.order_repository.history(edited.id)
    cancelled = [entry.detail["booking_key"] for entry in history if entry.type == "carrier_booking_cancelled"]
    assert cancelled[-1] == key


def test_a_refusal_of_a_decided_exchange_is_stored_and_never_shown(aws):
    # The refusal no run that reads it puts the replacement after: lost on the way through the
    # table, a run would put it beside the units' refund.
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    (requested,) = requested_returns(1)
    exchange = ExchangeInput.model_validate({"lines": [{"sku": "CAP", "quantity": 1}]})
    received = requested.model_copy(update={"status": ReturnStatus.RECEIVED, "exchange": exchange})
    returns.add(received)
    placing = received.placing_exchange(at=NOW)
    returns.update(placing, received)
    detail = {"return_id": received.id, "code": "no_price", "message": "no price", "details": []}

    returns.update(placing.refused_after_deciding(detail, at=NOW), placing)

    stored = returns.get(received.id)
    assert stored is not None and stored.exchange_refused == {**detail, "at": NOW.isoformat()}
    assert "exchange_refused" not in stored.model_dump(mode="json")


class _Throttled:
    """A client whose BatchGetItem leaves keys unprocessed, as DynamoDB does under throttling:
    `plan` says how many keys each round reads (the rest come back in UnprocessedKeys)."""

    def __init__(self, plan: list[int]):
        self.plan = plan
        self.rounds: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        ((table, page),) = RequestItems.items()
        keys = page["Keys"]
        reads = self.plan.pop(0) if self.plan else len(keys)
        self.rounds.append(len(keys))
        left = keys[reads:]
        return {
            "Responses": {table: [{**key, "read": {"BOOL": True}} for key in keys[:reads]]},
            "UnprocessedKeys": {table: {**page, "Keys": left}} if left else {},
        }


def test_keys_left_unprocessed_are_asked_again_after_a_pause_that_grows_while_nothing_is_read(monkeypatch):
    # Asked again at once, a throttled table was hammered until the function timed out.
    from functions.adapters import dynamodb

    pauses: list[float] = []
    monkeypatch.setattr(dynamodb.time, "sleep", pauses.append)
    monkeypatch.setattr(dynamodb.random, "uniform", lambda low, high: high)
    client = _Throttled([1, 0, 0, 2])
    keys = [{"pk": {"S": f"k{n}"}} for n in range(5)]

    found = dynamodb.batch_get(client, "T", keys)

    assert sorted(item["pk"]["S"] for item in found) == [f"k{n}" for n in range(5)]
    assert client.rounds == [5, 4, 4, 4, 2]
    assert pauses == [0.05, 0.1, 0.2, 0.05]  # doubled while nothing was read; back to the first after a read


def test_keys_left_unprocessed_round_after_round_raise_the_throttle_a_busy_table_does(monkeypatch):
    from functions.adapters import dynamodb
    from functions.adapters.aws_errors import busy

    monkeypatch.setattr(dynamodb.time, "sleep", lambda seconds: None)
    client = _Throttled([0] * 100)

    with pytest.raises(ClientError) as raised:
        dynamodb.batch_get(client, "T", [{"pk": {"S": "k"}}])

    assert busy(raised.value)
    assert len(client.rounds) == dynamodb.UNPROCESSED_ROUNDS


# --- An order's write with its stock moves (a cancel of units' stock step) ---------------------


@pytest.fixture(params=["dynamodb", "memory"])
def order_and_stock(request, aws, capture):
    """An order recording a stock step owed, stored by the adapter (or the in-memory one) that
    writes it with its stock moves: (orders, inventory, the order)."""
    if request.param == "dynamodb":
        orders, inventory, owing = owing_stock_on_dynamodb(aws, capture)
        return orders, inventory, orders.get(owing.id, consistent=True)
    inventory = InMemoryInventory()
    orders = InMemoryOrders(inventory)
    placed = place_order_in_memory(orders)
    owing = placed.model_copy(update={"version": placed.version + 1}).owing_stock()  # a cancel of units wrote it
    orders.update(owing, placed, [])
    return orders, inventory, orders.get(placed.id, consistent=True)


def owing_stock_on_dynamodb(aws: Any, capture: Any) -> tuple[DynamoOrders, DynamoInventory, Order]:
    """The capture's order (place_order's lines) stored recording a stock step owed, as a cancel of
    units writes it, by the DynamoDB adapters: (orders, inventory, the order as written)."""
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"], aws.tables["InventoryTable"])
    placed = capture.place(place_order(), actor="a")
    owing = placed.model_copy(update={"version": placed.version + 1}).owing_stock()  # a cancel of units wrote it
    orders.update(owing, placed, [])
    return orders, inventory, owing


def place_order_in_memory(orders: InMemoryOrders):
    order = a_stored_order(("TSHIRT", 1))
    orders.put(order)
    return order


def _level(inventory: Any, sku: str, location_id: str) -> tuple[int, int, int]:
    (level,) = inventory.levels({sku}, [location_id], consistent=True)[sku]
    return level.on_hand, level.reserved, level.available


def _reserved(inventory: Any, key: str, *held: tuple[str, str, int]) -> None:
    for sku, location_id, quantity in held:
        inventory.adjust(sku, location_id, 5, "count")
        inventory.reserve(sku, location_id, key, quantity)


def _reserved_at_each(aws: Any, inventory: Any, key: str, skus: list[str], location_id: str, quantity: int) -> None:
    """_reserved at each of `skus`: the first sku's stock item written by the adapter, and on
    DynamoDB each other sku's a copy of it under that sku (write_copies, where the adapter's two
    UpdateItems an item took 15-20 ms of moto's CPU: 1.6 s of a 100-sku test)."""
    _reserved(inventory, key, (skus[0], location_id, quantity))
    if not isinstance(inventory, DynamoInventory):
        for sku in skus[1:]:
            _reserved(inventory, key, (sku, location_id, quantity))
        return
    first = {"sku": {"S": skus[0]}, "location_id": {"S": location_id}}
    write_copies(aws.dynamodb, aws.tables["InventoryTable"], first, lambda _: ({"sku": {"S": sku}} for sku in skus[1:]))


def test_an_orders_write_and_its_stock_moves_land_together(order_and_stock):
    orders, inventory, owing = order_and_stock
    mug, pen = f"{owing.id}#L1", f"{owing.id}#L2"
    _reserved(inventory, mug, ("MUG", "wh-west", 3), ("MUG", "wh-east", 2))
    _reserved(inventory, pen, ("PEN", "wh-west", 3))
    inventory.reserve("MUG", "wh-west", "ord_other#L1", 1)  # another order's, on the same item
    released, _ = owing.stock_released(at=NOW)
    moves = [
        StockMove("MUG", "wh-west", mug, held=3, keep=1),
        StockMove("MUG", "wh-east", mug, held=2),
        # A written-off parcel's unit, its reservation holding two units a cancel freed (stock_owed).
        StockMove("PEN", "wh-west", pen, held=3, keep=1, ships=True),
    ]

    orders.update_with_stock(released, owing, [], moves)

    assert orders.get(owing.id, consistent=True) == released and not released.stock_owed
    assert _level(inventory, "MUG", "wh-west") == (5, 2, 3)
    assert _level(inventory, "MUG", "wh-east") == (5, 0, 5)
    assert _level(inventory, "PEN", "wh-west") == (4, 0, 4)  # not (2, 0, 2): the two freed units stay
    assert inventory.reservations(
        {("MUG", "wh-west"): [mug, "ord_other#L1"], ("MUG", "wh-east"): [mug], ("PEN", "wh-west"): [pen]}
    ) == {
        ("MUG", "wh-west", mug): 1, ("MUG", "wh-west", "ord_other#L1"): 1,
    }  # fmt: skip
    # The same step again (a retry whose answer was lost): the order moved on, nothing moves twice.
    with pytest.raises(StaleVersion) as refused:
        orders.update_with_stock(released, owing, [], moves)
    assert not isinstance(refused.value, ReservationsChanged)
    assert _level(inventory, "MUG", "wh-west") == (5, 2, 3)


def test_a_written_off_parcel_of_every_unit_on_hand_takes_on_hand_to_zero(order_and_stock):
    # on_hand holds exactly the parcel's units: they left with it, none stays on sale.
    orders, inventory, owing = order_and_stock
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 5))
    released, _ = owing.stock_released(at=NOW)

    orders.update_with_stock(released, owing, [], [StockMove("MUG", "wh-west", key, held=5, keep=5, ships=True)])

    assert _level(inventory, "MUG", "wh-west") == (0, 0, 0)


def test_a_written_off_parcels_units_never_take_on_hand_below_a_short_count(order_and_stock):
    # A stock take recorded 1 where the parcel's reservation held 3 (its rejects not landed): a
    # count counts every unit there, so the parcel had left before it. The count stands; nothing
    # goes below zero.
    orders, inventory, owing = order_and_stock
    pen, mug = f"{owing.id}#L2", f"{owing.id}#L1"
    _reserved(inventory, pen, ("PEN", "wh-west", 3))
    _reserved(inventory, mug, ("MUG", "wh-west", 2))
    inventory.set_on_hand("PEN", "wh-west", 1, reason="stock_take", releasing={pen: 3})
    released, _ = owing.stock_released(at=NOW)
    moves = [StockMove("PEN", "wh-west", pen, held=3, keep=3, ships=True),
             StockMove("MUG", "wh-west", mug, held=2, keep=2, ships=True)]  # fmt: skip

    orders.update_with_stock(released, owing, [], moves)

    assert _level(inventory, "PEN", "wh-west") == (1, 0, 1)
    assert _level(inventory, "MUG", "wh-west") == (3, 0, 3)  # covered: its units leave as ever
    assert orders.get(owing.id, consistent=True) == released


@pytest.mark.parametrize(
    ("counted", "on_hand_after"),
    [("after the hand-over", 3), ("at the hand-over", 1), ("before the hand-over", 1), ("with no time", 1)],
)
def test_a_written_off_parcels_units_leave_on_hand_as_a_stock_take_since_its_hand_over_counted(
    order_and_stock, counted, on_hand_after
):
    """5 on hand, 2 of them a written-off parcel's that its carrier reported delivered at NOW, then a
    count of 3: recorded after that it counted the parcel gone (only the reservation goes), at or
    before it (or with no time) it counted the parcel's units, which leave now (as a ship's do)."""
    orders, inventory, owing = order_and_stock
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 2))
    at = {"after the hand-over": NOW + timedelta(microseconds=1), "at the hand-over": NOW,
          "before the hand-over": NOW - timedelta(seconds=1), "with no time": None}[counted]  # fmt: skip
    inventory.set_on_hand("MUG", "wh-west", 3, "stock_take", counted_at=at)
    released, _ = owing.stock_released(at=NOW)

    orders.update_with_stock(released, owing, [], [StockMove("MUG", "wh-west", key, held=2, keep=2, ships=True,
                                                             handed_at=NOW)])  # fmt: skip

    assert _level(inventory, "MUG", "wh-west") == (on_hand_after, 0, on_hand_after)
    assert orders.get(owing.id, consistent=True) == released


def test_a_parcels_units_leaving_and_another_lines_released_on_one_stock_item_move_in_one_update(order_and_stock):
    # Two lines of the order hold MUG at wh-west: a written-off parcel's 2 units leave on_hand, the
    # other line's unit goes back to available, in the one Update a transaction may make of the item.
    orders, inventory, owing = order_and_stock
    parcel, other = f"{owing.id}#L1", f"{owing.id}#L2"
    _reserved(inventory, parcel, ("MUG", "wh-west", 2))
    _reserved(inventory, other, ("MUG", "wh-west", 1))
    released, _ = owing.stock_released(at=NOW)
    moves = [StockMove("MUG", "wh-west", parcel, held=2, keep=2, ships=True),
             StockMove("MUG", "wh-west", other, held=1)]  # fmt: skip

    orders.update_with_stock(released, owing, [], moves)

    assert _level(inventory, "MUG", "wh-west") == (8, 0, 8)
    assert inventory.reservations({("MUG", "wh-west"): [parcel, other]}) == {}
    assert orders.get(owing.id, consistent=True) == released


@pytest.mark.parametrize(("met", "refused"), [("the order", StaleVersion), ("a stock item", ReservationsChanged)])
def test_a_write_that_met_another_transaction_is_stale_told_apart_by_the_item_it_met(aws, capture, met, refused):
    """DynamoDB cancels a transaction that meets another one in progress on an item
    (TransactionConflict; moto never does, so it is injected): the caller reads again and decides
    again, as when a condition failed, never a 500."""
    orders, inventory, owing = owing_stock_on_dynamodb(aws, capture)
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 2))
    released, _ = owing.stock_released(at=NOW)
    codes = ["TransactionConflict", "None"] if met == "the order" else ["None", "TransactionConflict"]
    with failing(aws, "TransactWriteItems", cancelled_by(codes)), pytest.raises(StaleVersion) as stale:
        orders.update_with_stock(released, owing, [], [StockMove("MUG", "wh-west", key, held=2)])

    assert type(stale.value) is refused
    assert _level(inventory, "MUG", "wh-west") == (5, 2, 3)


def test_a_stock_take_after_the_hand_over_recorded_since_the_read_cancels_the_whole_write(aws, capture, monkeypatch):
    """The write is conditional on the count it decided on: one recorded between the read and the
    write (after the parcel left) fails it, told apart (ReservationsChanged: decided again)."""
    orders, inventory, owing = owing_stock_on_dynamodb(aws, capture)
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 2))
    reading = DynamoOrders._shelves

    def counted_after_the_read(self: DynamoOrders, *args: Any) -> Any:
        shelves = reading(self, *args)
        inventory.set_on_hand("MUG", "wh-west", 3, "stock_take", counted_at=NOW + timedelta(seconds=1))
        return shelves

    monkeypatch.setattr(DynamoOrders, "_shelves", counted_after_the_read)
    released, _ = owing.stock_released(at=NOW)
    move = StockMove("MUG", "wh-west", key, held=2, keep=2, ships=True, handed_at=NOW)

    with pytest.raises(ReservationsChanged):
        orders.update_with_stock(released, owing, [], [move])

    assert _level(inventory, "MUG", "wh-west") == (3, 2, 1)
    monkeypatch.setattr(DynamoOrders, "_shelves", reading)
    orders.update_with_stock(released, owing, [], [move])  # decided again, on the count
    assert _level(inventory, "MUG", "wh-west") == (3, 0, 3)


@pytest.mark.parametrize("received", [2, 5], ids=["up to the parcel's units", "past them"])
def test_a_receipt_since_the_read_of_a_short_counted_shelf_cancels_the_whole_write(aws, capture, monkeypatch, received):
    """Read below the parcel's units (a short count stood), the write is conditional on on_hand
    still being so: units received between the read and the write fail it, told apart
    (ReservationsChanged: decided again on the shelf as it is)."""
    orders, inventory, owing = owing_stock_on_dynamodb(aws, capture)
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("PEN", "wh-west", 3))
    inventory.set_on_hand("PEN", "wh-west", 1, reason="stock_take", releasing={key: 3})
    reading = DynamoOrders._shelves

    def received_after_the_read(self: DynamoOrders, *args: Any) -> Any:
        shelves = reading(self, *args)
        inventory.adjust("PEN", "wh-west", received, "receipt")
        return shelves

    monkeypatch.setattr(DynamoOrders, "_shelves", received_after_the_read)
    released, _ = owing.stock_released(at=NOW)

    with pytest.raises(ReservationsChanged):
        orders.update_with_stock(released, owing, [], [StockMove("PEN", "wh-west", key, held=3, keep=3, ships=True)])

    assert _level(inventory, "PEN", "wh-west") == (1 + received, 3, received - 2)
    assert orders.get(owing.id, consistent=True) == owing


def test_a_stock_write_freeing_units_invokes_the_backorder_filler_and_one_only_shipping_them_does_not(aws, capture):
    """A cancel of units' stock write as the Inventory stream shows it to the BackorderFunction's
    filters (template.yaml): units freed are an arrival for the backordered orders waiting there;
    a written-off parcel's units leaving on_hand free none, and remove the marks an earlier
    receipt or a withdrawal of units bought left (or every later write invokes it for nothing);
    those a short count had taken as gone go back to available, an arrival too."""
    from infra.local.event_sources import compile_filters, matches_filters
    from infra.local.template import Template

    event = Template.load().functions()["BackorderFunction"]["Events"]["InventoryStream"]
    filters = compile_filters(event["Properties"]["FilterCriteria"], "BackorderFunction")
    orders, inventory, owing = owing_stock_on_dynamodb(aws, capture)
    mug, pen, cap = f"{owing.id}#L1", f"{owing.id}#L2", f"{owing.id}#L3"
    _reserved(inventory, mug, ("MUG", "wh-west", 3))
    _reserved(inventory, pen, ("PEN", "wh-west", 2))
    _reserved(inventory, cap, ("CAP", "wh-west", 2))
    inventory.adjust("PEN", "wh-west", 1, "receipt")
    inventory.set_on_hand("CAP", "wh-west", 1, reason="stock_take", releasing={cap: 2})
    aws.dynamodb.update_item(  # as a purchase order's cancel marks it (functions/adapters/purchasing.py)
        TableName=aws.tables["InventoryTable"], Key={"sku": {"S": "PEN"}, "location_id": {"S": "wh-west"}},
        UpdateExpression="SET withdrawn = :yes", ExpressionAttributeValues={":yes": {"BOOL": True}},
    )  # fmt: skip
    released, _ = owing.stock_released(at=NOW)
    moves = [
        StockMove("MUG", "wh-west", mug, held=3),
        StockMove("PEN", "wh-west", pen, held=2, keep=2, ships=True),
        StockMove("CAP", "wh-west", cap, held=2, keep=2, ships=True),
    ]

    orders.update_with_stock(released, owing, [], moves)

    def passes(sku: str) -> bool:
        key = {"sku": {"S": sku}, "location_id": {"S": "wh-west"}}
        image = aws.dynamodb.get_item(TableName=aws.tables["InventoryTable"], Key=key)["Item"]
        return matches_filters(filters, {"eventName": "MODIFY", "dynamodb": {"NewImage": image}})

    assert (passes("MUG"), passes("PEN"), passes("CAP")) == (True, False, True)
    assert [_level(inventory, sku, "wh-west") for sku in ("MUG", "PEN", "CAP")] == [(5, 0, 5), (4, 0, 4), (1, 0, 1)]


def test_an_order_that_moved_on_cancels_the_whole_write(order_and_stock):
    orders, inventory, owing = order_and_stock
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 3))
    released, _ = owing.stock_released(at=NOW)
    orders.update(released, owing, [])  # another pass landed first (or a reject, an edit)
    moves = [StockMove("MUG", "wh-west", key, held=3)]

    for order in (released, None):  # the order's write, or only its check
        with pytest.raises(StaleVersion) as refused:
            orders.update_with_stock(order, owing, [], moves)
        assert not isinstance(refused.value, ReservationsChanged)

    assert _level(inventory, "MUG", "wh-west") == (5, 3, 2)
    orders.update_with_stock(None, released, [], moves)  # checked on the order as it is: released
    assert _level(inventory, "MUG", "wh-west") == (5, 0, 5)
    assert orders.get(owing.id, consistent=True) == released


def test_a_reservation_that_changed_since_it_was_read_cancels_the_whole_write_told_apart(order_and_stock):
    orders, inventory, owing = order_and_stock
    key = f"{owing.id}#L1"
    _reserved(inventory, key, ("MUG", "wh-west", 3), ("MUG", "wh-east", 2))
    released, _ = owing.stock_released(at=NOW)
    inventory.shrink("MUG", "wh-east", key, held=2, keep=1)  # after the read

    with pytest.raises(ReservationsChanged):
        orders.update_with_stock(
            released, owing, [], [StockMove("MUG", "wh-west", key, held=3), StockMove("MUG", "wh-east", key, held=2)]
        )

    assert orders.get(owing.id, consistent=True) == owing
    assert _level(inventory, "MUG", "wh-west") == (5, 3, 2)
    assert _level(inventory, "MUG", "wh-east") == (5, 1, 4)


@pytest.mark.parametrize(("items", "transactions"), [(99, [100]), (100, [100, 2])])
def test_moves_over_more_stock_items_than_a_transaction_holds_go_in_several_each_checking_the_order(
    aws, order_and_stock, items, transactions
):
    orders, inventory, owing = order_and_stock
    key = f"{owing.id}#L1"
    # 99 stock items fill one transaction beside the order's write. 100: one more than that, the
    # last one alone in a second transaction with the order's write, the first checking the order
    # (150 showed nothing more, at half again the writes).
    skus = [f"SKU-{n:03d}" for n in range(items)]
    _reserved_at_each(aws, inventory, key, skus, "wh-west", 2)
    released, _ = owing.stock_released(at=NOW)
    moves = [StockMove(sku, "wh-west", key, held=2) for sku in skus]

    with requests_made(aws.dynamodb) as made:
        orders.update_with_stock(released, owing, [], moves)

    levels = inventory.levels(set(skus), ["wh-west"], consistent=True)  # one read of them all, as _level reads one
    assert {sku: [(x.on_hand, x.reserved, x.available) for x in found] for sku, found in levels.items()} == {
        sku: [(5, 0, 5)] for sku in skus
    }
    assert orders.get(owing.id, consistent=True) == released
    if isinstance(orders, DynamoOrders):
        made_items = [params["TransactItems"] for operation, params in made if operation == "TransactWriteItems"]
        assert [len(items) for items in made_items] == transactions
        assert [next(iter(items[0])) for items in made_items] == ["ConditionCheck", "Update"][-len(transactions) :]
