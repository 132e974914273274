"""An order's history past HISTORY_KEPT_BYTES, under moto: its oldest entries move to pages of the
Catalog table (functions/adapters/dynamodb.py), and every read of the history reads them back."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from core.domain_events import order_events
from core.errors import StaleVersion
from core.models import HistoryEntry, Order
from core.ports import StockMove
from core.status import OrderStatus
from functions.adapters import order_codec
from functions.adapters.dynamodb import (
    HISTORY_KEPT_BYTES,
    HISTORY_MOVED,
    HISTORY_PAGE_PK,
    DynamoInventory,
    DynamoOrders,
)
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import Template
from tests.builders import NOW, place_order


def _noted(n: int) -> HistoryEntry:
    # A note zlib cannot shrink (random CJK ideographs, 3 bytes each): ~1.2 KB an entry stored.
    note = "".join(chr(0x4E00 + secrets.randbelow(0x5000)) for _ in range(500))
    return HistoryEntry(at=NOW, type="payment_capture_failed", actor=f"n{n}", detail={"note": note})


def _tens(count: int) -> Iterator[list[HistoryEntry]]:
    """Entries n0 to n(count - 1), ten a write: a history grown to a size in a few writes, where
    the test's subject is not a write of one entry (moto reads and rewrites the whole ~32 KB item
    at every UpdateItem)."""
    for start in range(0, count, 10):
        yield [_noted(n) for n in range(start, min(start + 10, count))]


@pytest.fixture
def paged(aws) -> DynamoOrders:
    return DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"], history_table=aws.tables["CatalogTable"])


def _item(aws, order_id: str) -> dict[str, Any]:
    key = {"id": {"S": order_id}}
    return aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key, ConsistentRead=True)["Item"]


def _pages(aws, order_id: str) -> list[dict[str, Any]]:
    values = {":pk": {"S": HISTORY_PAGE_PK + order_id}}
    query = {"TableName": aws.tables["CatalogTable"], "KeyConditionExpression": "pk = :pk"}
    return aws.dynamodb.query(**query, ExpressionAttributeValues=values)["Items"]


def _history_bytes(item: dict[str, Any]) -> int:
    return sum(len(entry["B"]) for entry in item["history"]["L"])


@pytest.fixture
def orders_stream(aws, monkeypatch) -> Iterator[Any]:
    """The Orders table's stream records from now on, as get_records answers them."""
    arn = aws.dynamodb.describe_table(TableName=aws.tables["OrdersTable"])["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]

    def records() -> list[dict[str, Any]]:
        return streams.get_records(ShardIterator=iterator)["Records"]

    yield records


def test_a_history_past_the_threshold_moves_out_of_the_item_and_reads_back_in_order(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    noted = [_noted(n) for n in range(70)]  # ~84 KB: two moves

    for entry in noted:
        paged.update(placed, placed, [entry])

    order, history = paged.history(placed.id, consistent=True)
    assert order == placed
    assert [h.actor for h in history] == ["a", *(f"n{n}" for n in range(70))]
    assert history[1:] == noted
    assert [h.actor for h in paged.history(placed.id)[1]] == [h.actor for h in history]  # eventually consistent too
    item = _item(aws, placed.id)
    assert _history_bytes(item) <= HISTORY_KEPT_BYTES
    pages = _pages(aws, placed.id)
    assert len(pages) == 2
    assert int(item[HISTORY_MOVED]["N"]) == sum(len(page["entries"]["L"]) for page in pages)
    # The created entry stays in the item: the outbox reads it from the stream's images.
    assert json.loads(order_codec.stored_json(item["history"]["L"][0]))["type"] == "created"


def test_a_move_changes_neither_the_order_nor_its_events_and_no_catalog_stream_consumer_sees_a_page(
    capture, aws, paged, orders_stream
):
    placed = capture.place(place_order(), actor="a")
    for n in range(40):
        paged.update(placed, placed, [_noted(n)])

    moves = [r for r in orders_stream() if HISTORY_MOVED in r["dynamodb"]["NewImage"]]
    assert moves and moves[0]["eventName"] == "MODIFY"
    old, new = moves[0]["dynamodb"]["OldImage"], moves[0]["dynamodb"]["NewImage"]
    assert HISTORY_MOVED not in old
    for name in ("doc", "status", "version"):
        assert old[name] == new[name]
    documents = [json.loads(order_codec.stored_json(image["doc"])) for image in (old, new)]
    assert order_events(*documents) == []
    # A page's INSERT passes no filter of the Catalog table's stream: it invokes nothing.
    page = {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": HISTORY_PAGE_PK + placed.id}, "sk": {"S": "0"}},
                                                "NewImage": _pages(aws, placed.id)[0]}}  # fmt: skip
    catalog_streams = [
        event["Properties"]
        for function in Template.load().functions().values()
        for event in (function.get("Events") or {}).values()
        if event["Type"] == "DynamoDB"
        and event["Properties"]["Stream"] == {"Fn::GetAtt": ["CatalogTable", "StreamArn"]}
    ]
    assert catalog_streams
    for mapping in catalog_streams:
        assert not matches_filters(compile_filters(mapping["FilterCriteria"], "test"), page)


def test_an_order_under_the_threshold_is_one_update_and_nothing_more(capture, aws, paged, monkeypatch):
    placed = capture.place(place_order(), actor="a")
    sent: list[str] = []
    aws.dynamodb.meta.events.register("before-call.dynamodb.*", lambda model, **_: sent.append(model.name))

    paged.update(placed, placed, [_noted(0)])

    assert sent == ["UpdateItem"]
    assert HISTORY_MOVED not in _item(aws, placed.id)
    assert _pages(aws, placed.id) == []


def test_a_history_only_entry_decided_on_the_whole_history_lands_after_a_move_and_a_stale_one_does_not(
    capture, aws, paged
):
    # failure_recorder's write is conditional on the length of the history it read (all of it).
    placed = capture.place(place_order(), actor="a")
    for entries in _tens(40):
        paged.update(placed, placed, entries)
    assert HISTORY_MOVED in _item(aws, placed.id)
    length = len(paged.history(placed.id, consistent=True)[1])

    with pytest.raises(StaleVersion):
        paged.update(placed, placed, [_noted(98)], history_length=length - 1)
    paged.update(placed, placed, [_noted(99)], history_length=length)
    with pytest.raises(StaleVersion):
        paged.update(placed, placed, [_noted(99)], history_length=length)

    assert [h.actor for h in paged.history(placed.id, consistent=True)[1]][-2:] == ["n39", "n99"]


def test_a_move_that_lost_its_race_to_a_write_gives_way_and_the_next_write_moves(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    # Unpaged, the history grows past the threshold (as an older deployment's writes would grow it).
    plain = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    for entries in _tens(30):
        plain.update(placed, placed, entries)
    read = _item(aws, placed.id)
    plain.update(placed, placed, [_noted(30)])  # lands between the read and the move

    paged._bound_history(placed.id, read)

    assert HISTORY_MOVED not in _item(aws, placed.id) and _pages(aws, placed.id) == []
    paged.update(placed, placed, [_noted(31)])
    assert HISTORY_MOVED in _item(aws, placed.id)
    assert [h.actor for h in paged.history(placed.id)[1]] == ["a", *(f"n{n}" for n in range(32))]


def test_a_repository_without_the_catalog_table_refuses_to_read_a_paged_history(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    for entries in _tens(30):
        paged.update(placed, placed, entries)

    with pytest.raises(ValueError, match="history pages"):
        DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).history(placed.id)
    assert isinstance(paged.history(placed.id)[0], Order)


def test_a_one_off_backfill_reads_a_paged_history_whole_given_the_catalog_table(capture, aws, paged):
    from functions.adapters.dynamodb import _upgraded_from_history

    placed = capture.place(place_order(), actor="a")
    for entries in _tens(40):  # ~48 KB: one move
        paged.update(placed, placed, entries)
    assert _pages(aws, placed.id)
    seen: list[int] = []

    def change(order: Order, history: list[HistoryEntry]) -> None:
        seen.append(len(history))  # nothing to write

    table, catalog = aws.tables["OrdersTable"], aws.tables["CatalogTable"]
    assert _upgraded_from_history(aws.dynamodb, table, 500, 5, catalog, needs=lambda o: True, change=change) == (0, 1)
    assert seen == [41]
    # Without it, the run stops naming what it needs rather than deciding on a history cut short.
    with pytest.raises(ValueError, match="--catalog-table"):
        _upgraded_from_history(aws.dynamodb, table, 500, 5, None, needs=lambda o: True, change=change)


def _first_answer_lost(client: Any, operation: str) -> list[int]:
    """The next `operation` the client sends is written, and its answer lost on the way back (a
    read timeout): botocore sends it again, as it does on AWS. Returns the attempts counted."""
    sent: list[int] = []

    def lose(event_name: str, **_: Any) -> None:
        if event_name != f"before-send.dynamodb.{operation}":
            return
        sent.append(1)
        if len(sent) == 1:
            raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")

    # Registered last on moto's own event (a more specific one is emitted before it): called once
    # moto has answered, so written, the request.
    client.meta.events.register_last("before-send", lose)
    return sent


def test_a_history_only_entry_retried_after_its_answer_was_lost_is_written_once(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    sent = _first_answer_lost(aws.dynamodb, "UpdateItem")

    paged.update(placed, placed, [_noted(0)])  # no error: the retry recognises its own write

    assert len(sent) == 2
    assert [h.actor for h in paged.history(placed.id, consistent=True)[1]] == ["a", "n0"]
    assert paged.get(placed.id, consistent=True) == placed


def test_a_history_only_entry_decided_on_the_history_length_retried_after_its_answer_was_lost_is_written_once(
    capture, aws, paged
):
    placed = capture.place(place_order(), actor="a")
    sent = _first_answer_lost(aws.dynamodb, "UpdateItem")

    paged.update(placed, placed, [_noted(0)], history_length=1)

    assert len(sent) == 2
    assert [h.actor for h in paged.history(placed.id, consistent=True)[1]] == ["a", "n0"]


def test_a_status_change_retried_after_its_answer_was_lost_is_that_write_not_a_lost_race(capture, aws, paged):
    # The first attempt landed: the retry finds the order at the version it wrote, not a stale read.
    placed = capture.place(place_order(), actor="a")
    held = placed.model_copy(update={"status": OrderStatus.ON_HOLD, "version": placed.version + 1})
    entry = HistoryEntry(at=NOW, type="on_hold", from_status=placed.status, to_status=held.status, actor="b")
    sent = _first_answer_lost(aws.dynamodb, "UpdateItem")

    paged.update(held, placed, [entry])

    assert len(sent) == 2
    order, history = paged.history(placed.id, consistent=True)
    assert order == held and [h.actor for h in history] == ["a", "b"]
    with pytest.raises(StaleVersion):  # another write of that version is still refused
        paged.update(held, placed, [entry.model_copy(update={"actor": "c"})])


def test_the_same_history_only_write_made_twice_lands_once_and_a_new_one_lands(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    entries = [_noted(0), _noted(1)]
    paged.update(placed, placed, entries)
    paged.update(placed, placed, list(entries))
    paged.update(placed, placed, [entries[1], _noted(2)])  # not all of it written yet: written whole

    assert [h.actor for h in paged.history(placed.id, consistent=True)[1]] == ["a", "n0", "n1", "n1", "n2"]


def _grown_past_the_threshold(aws, order: Order, count: int = 30) -> None:
    """The order's history grown past HISTORY_KEPT_BYTES in its item: a move that gave way to a
    racing write leaves it so until the order's next write (as an older deployment's writes did)."""
    plain = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    for entries in _tens(count):
        plain.update(order, order, entries)
    assert _history_bytes(_item(aws, order.id)) > HISTORY_KEPT_BYTES


def test_a_write_with_stock_moves_moves_a_history_past_the_threshold(capture, aws):
    # A cancel of units' stock step: the order's write and its stock moves in one transaction.
    orders = DynamoOrders(
        aws.dynamodb, aws.tables["OrdersTable"], aws.tables["InventoryTable"], aws.tables["CatalogTable"]
    )
    inventory = DynamoInventory(aws.dynamodb, aws.tables["InventoryTable"])
    placed = capture.place(place_order(), actor="a")
    _grown_past_the_threshold(aws, placed)
    owing = placed.model_copy(update={"version": placed.version + 1}).owing_stock()
    orders.update(owing, placed, [])  # it moves: back under the threshold
    _grown_past_the_threshold(aws, owing)
    key = f"{owing.id}#L1"
    inventory.adjust("MUG", "wh-west", 5, "count")
    inventory.reserve("MUG", "wh-west", key, 3)
    released, _ = owing.stock_released(at=NOW)

    orders.update_with_stock(released, owing, [], [StockMove("MUG", "wh-west", key, held=3, keep=1)])

    item = _item(aws, owing.id)
    assert _history_bytes(item) <= HISTORY_KEPT_BYTES
    assert len(_pages(aws, owing.id)) == 2
    order, history = orders.history(owing.id, consistent=True)
    assert order == released
    assert [h.actor for h in history] == ["a", *(f"n{n}" for n in range(30)), *(f"n{n}" for n in range(30))]


@pytest.mark.parametrize(
    "code", ["ProvisionedThroughputExceededException", "InternalServerError"], ids=["throttled", "failed"]
)
def test_a_move_that_fails_after_its_write_landed_leaves_the_write_answered_and_the_next_write_moves(
    capture, aws, paged, code
):
    # The move follows a write that landed: its failure must not make that write look failed (its
    # caller would decide again on the order it wrote, or answer a 5xx for a change made).
    placed = capture.place(place_order(), actor="a")
    _grown_past_the_threshold(aws, placed)
    failed: list[str] = []

    def fail(**_: Any) -> None:
        if not failed:
            failed.append(code)
            raise ClientError({"Error": {"Code": code, "Message": "not now"}}, "TransactWriteItems")

    aws.dynamodb.meta.events.register("before-call.dynamodb.TransactWriteItems", fail)

    paged.update(placed, placed, [_noted(30)])

    assert failed == [code] and HISTORY_MOVED not in _item(aws, placed.id)
    paged.update(placed, placed, [_noted(31)])
    assert HISTORY_MOVED in _item(aws, placed.id)
    assert [h.actor for h in paged.history(placed.id)[1]] == ["a", *(f"n{n}" for n in range(32))]


def test_a_range_of_a_paged_history_is_its_slice_and_reads_only_the_pages_holding_it(capture, aws, paged):
    placed = capture.place(place_order(), actor="a")
    for tens in range(7):  # ~84 KB: two moves, a page each, and a live tail in the item
        paged.update(placed, placed, [_noted(n) for n in range(10 * tens, 10 * tens + 10)])
    order, whole = paged.history(placed.id, consistent=True)
    moved = int(_item(aws, placed.id)[HISTORY_MOVED]["N"])
    starts = sorted(int(page["sk"]["S"]) for page in _pages(aws, placed.id))
    assert len(starts) == 2 and 0 < starts[1] < moved < len(whole) - 2
    second = 1 + starts[1]  # the place of the second page's first entry in the whole history
    read: list[str] = []
    aws.dynamodb.meta.events.register(
        "after-call.dynamodb.Query", lambda parsed, **_: read.extend(i["sk"]["S"] for i in parsed["Items"])
    )
    length = len(whole)
    for start, stop, pages_read in (
        (0, 0, 0), (0, 1, 0), (0, 3, 1), (1, 2, 1), (second - 2, second + 2, 2), (second, second + 1, 1),
        (second, moved + 1, 1), (moved, moved + 3, 1), (moved + 1, moved + 3, 0), (0, length, 2),
        (length - 2, length + 5, 0), (length, length + 5, 0), (length + 3, length + 9, 0), (5, 3, 0),
    ):  # fmt: skip
        read.clear()
        found = paged.history_range(placed.id, start, stop, consistent=True)
        assert found == (order, whole[start:stop], length), (start, stop)
        assert len(read) == pages_read, (start, stop, read)
    assert paged.history_range("ord_none", 0, 5) is None
    # An order never moved reads its item alone.
    young = capture.place(place_order(external_id="young"), actor="b")
    paged.update(young, young, [_noted(0)])
    read.clear()
    assert paged.history_range(young.id, 1, 9, consistent=True) == (young, paged.history(young.id)[1][1:], 2)
    assert read == []
