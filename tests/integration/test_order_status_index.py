"""The sparse by_status_key index under moto, on the tables built from template.yaml: an order is in
it while its status is one people and the scheduled passes work through, and out of it once
shipped, delivered or returned; lists of either kind page across pages; the reconciler's query;
the one-off backfill of orders stored before the index."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import InvalidCursor
from core.models import Order
from core.ports import OrderFilter
from core.status import OrderStatus
from functions.adapters.dynamodb import (
    DynamoStalledOrders,
    backfill_index_attributes,
    order_update,
)
from tests.builders import NOW, place_order

S = OrderStatus


def stored(aws, order_id: str) -> dict:
    return aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}})["Item"]


def move(aws, order: Order, status: OrderStatus) -> Order:
    """Store `order` in `status` with the adapter's own write (the status machine's route there
    is the core's business, not what these tests are about)."""
    moved = order.model_copy(update={"status": status, "version": order.version + 1})
    aws.dynamodb.update_item(**order_update(aws.tables["OrdersTable"], moved, order, []))
    return moved


def test_an_order_is_in_the_status_index_only_while_its_status_is_worked_through(aws, capture, orders):
    placed = capture.place(place_order(external_id="a"), actor="k")
    item = stored(aws, placed.id)
    # The workflow's partition: pending and authorized alike, no status_since (the scan reads them by
    # when they were placed), so the authorization rewrites no entry.
    assert item["status_key"] == {"S": "pending"} and not {"status_since", "sla_key"} & set(item)
    authorized = move(aws, capture.place(place_order(external_id="z"), actor="k"), S.AUTHORIZED)
    item = stored(aws, authorized.id)
    assert item["status_key"] == {"S": "pending"} and "status_since" not in item

    shipped = move(aws, placed, S.SHIPPED)
    item = stored(aws, placed.id)
    assert item["status"] == {"S": "shipped"}
    assert not {"status_key", "status_since", "sla_key", "sla_at"} & set(item)  # out of both sparse indexes

    move(aws, shipped, S.DELIVERED)
    assert "status_key" not in stored(aws, placed.id)

    cancelled = move(aws, capture.place(place_order(external_id="b"), actor="k"), S.CANCELLED)
    item = stored(aws, cancelled.id)
    assert item["status_key"] == {"S": "cancelled"} and "status_since" not in item  # listed, never late


def test_a_status_in_the_index_is_listed_newest_first_across_pages(capture, orders):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(5)]

    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = orders.list(OrderFilter(status=S.PENDING), 2, cursor)
        seen += [o.id for o in page]
        pages += 1
        if cursor is None:
            break
    assert seen == [o.id for o in reversed(placed)] and pages == 3


def test_pending_and_authorized_orders_share_a_partition_and_each_status_lists_only_its_own(aws, capture, orders):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(4)]
    authorized = [move(aws, placed[i], S.AUTHORIZED).id for i in (0, 2)]

    def listed(status: OrderStatus) -> list[str]:
        seen, cursor = [], None
        while True:
            page, cursor = orders.list(OrderFilter(status=status), 1, cursor)
            seen += [o.id for o in page]
            if cursor is None:
                return seen

    assert listed(S.AUTHORIZED) == authorized[::-1]  # newest first
    assert listed(S.PENDING) == [placed[3].id, placed[1].id]
    _, cursor = orders.list(OrderFilter(status=S.PENDING), 1, None)
    with pytest.raises(InvalidCursor):  # a cursor is bound to its status, though both read one partition
        orders.list(OrderFilter(status=S.AUTHORIZED), 1, cursor)


def every_page(orders, where: OrderFilter, limit: int) -> list[list[str]]:
    """Each page's ids, following the cursor until it is null (at most 20 pages: never a loop)."""
    pages, cursor = [], None
    for _ in range(20):
        page, cursor = orders.list(where, limit, cursor)
        pages.append([o.id for o in page])
        if cursor is None:
            return pages
    raise AssertionError("next_cursor never became null")


def test_pages_of_either_workflow_status_skip_none_and_go_on_past_pages_of_the_other(aws, capture, orders):
    # The four oldest authorized, the five newest pending: newest first, a page of two of the
    # authorized list reads pending orders only at first, and a page of the pending list at the end.
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(9)]
    authorized = [move(aws, order, S.AUTHORIZED).id for order in placed[:4]]
    pending = [order.id for order in placed[4:]]

    pages = every_page(orders, OrderFilter(status=S.AUTHORIZED), 2)
    assert [i for page in pages for i in page] == authorized[::-1]
    assert pages[0] == [] and all(len(page) <= 2 for page in pages)  # empty, with a cursor on
    pages = every_page(orders, OrderFilter(status=S.PENDING), 2)
    assert [i for page in pages for i in page] == pending[::-1]
    assert [] in pages

    # Each status's cursor is its own, though both read one partition; another status's is refused.
    _, authorized_cursor = orders.list(OrderFilter(status=S.AUTHORIZED), 2, None)
    _, pending_cursor = orders.list(OrderFilter(status=S.PENDING), 2, None)
    for where, cursor in (
        (OrderFilter(status=S.PENDING), authorized_cursor),
        (OrderFilter(status=S.ON_HOLD), pending_cursor),
        (OrderFilter(status=S.ON_HOLD), authorized_cursor),
        (OrderFilter(), authorized_cursor),
    ):
        with pytest.raises(InvalidCursor):
            orders.list(where, 2, cursor)


def test_a_channels_or_customers_workflow_status_filters_its_own_index(aws, capture, orders):
    placed = [
        capture.place(place_order(external_id=f"o{i}", channel=channel), actor="k")
        for i, channel in enumerate(("web", "market", "web", "web", "market"))
    ]
    for order in placed[:3]:
        move(aws, order, S.AUTHORIZED)
    web = OrderFilter(status=S.AUTHORIZED, channel="web")
    customer = placed[0].customer.id

    assert every_page(orders, web, 1) == [[], [placed[2].id], [placed[0].id]]  # the newest web order is pending
    assert [i for page in every_page(orders, OrderFilter(status=S.PENDING, channel="web"), 1) for i in page] == [
        placed[3].id
    ]
    by_customer = every_page(orders, OrderFilter(status=S.AUTHORIZED, customer_id=customer, channel="market"), 1)
    assert [i for page in by_customer for i in page] == [placed[1].id]
    _, cursor = orders.list(web, 1, None)
    with pytest.raises(InvalidCursor):  # bound to the channel's index and status, not the status index
        orders.list(OrderFilter(status=S.AUTHORIZED), 1, cursor)


def test_shipped_orders_are_listed_from_all_orders_filtered_across_pages(aws, capture, orders):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(5)]
    shipped = {move(aws, placed[i], S.SHIPPED).id for i in (0, 3)}
    delivered = move(aws, move(aws, placed[1], S.SHIPPED), S.DELIVERED).id

    seen, cursor, sizes = [], None, []
    while True:
        page, cursor = orders.list(OrderFilter(status=S.SHIPPED), 2, cursor)
        seen += [o.id for o in page]
        sizes.append(len(page))
        if cursor is None:
            break
    assert seen == [placed[3].id, placed[0].id]  # newest first
    assert set(seen) == shipped and sizes != [2]  # pages come back shorter than the limit
    assert [o.id for o in orders.list(OrderFilter(status=S.DELIVERED), 10, None)[0]] == [delivered]
    # Filtered by a status that is indexed, the other orders never show.
    assert {o.id for o in orders.list(OrderFilter(status=S.PENDING), 10, None)[0]} == {
        placed[2].id,
        placed[4].id,
    }


def test_the_reconciler_finds_stalled_orders_through_the_status_index(aws, capture, orders):
    first = capture.place(place_order(external_id="a"), actor="k")
    second = capture.place(place_order(external_id="b"), actor="k")
    third = capture.place(place_order(external_id="c"), actor="k")
    move(aws, second, S.AUTHORIZED)
    # A page of one: the reconciler reads on, page after page (an outage stalls thousands at once).
    stalled = DynamoStalledOrders(aws.dynamodb, aws.tables["OrdersTable"], page_size=1)

    # The pending and the authorized orders are one partition, read once (the reconciler judges each).
    found = list(stalled.stalled((S.PENDING, S.AUTHORIZED), NOW + timedelta(hours=1)))
    assert [(s.order_id, s.created_at) for s in found] == [
        (first.id, first.created_at), (second.id, second.created_at), (third.id, third.created_at),
    ]  # fmt: skip
    assert [s.order_id for s in stalled.stalled((S.ON_HOLD,), NOW + timedelta(hours=1))] == []
    assert list(stalled.stalled((S.PENDING,), first.created_at)) == []  # placed before the moment only
    with pytest.raises(ValueError):
        stalled.stalled((S.SHIPPED,), NOW)  # not in the index: the question has no answer there


def test_the_backfill_gives_orders_stored_before_the_index_their_attributes(aws, capture, orders):
    table = aws.tables["OrdersTable"]
    pending = capture.place(place_order(external_id="a"), actor="k")
    shipped = move(aws, capture.place(place_order(external_id="b"), actor="k"), S.SHIPPED)
    marked = capture.place(place_order(external_id="c"), actor="k")
    late_one, entry = marked.mark_jeopardy("pending for longer than 5m", NOW, at=NOW, actor="x")
    orders.update(late_one, marked, [entry])
    # The stored forms of before: no status_key nor status_since; an unmarked watched order kept
    # its status as sla_key (the old by_sla index's per-status partition); a marked one as now.
    aws.dynamodb.update_item(
        TableName=table,
        Key={"id": {"S": pending.id}},
        UpdateExpression="SET sla_key = :s, sla_at = :t REMOVE status_key, status_since",
        ExpressionAttributeValues={":s": {"S": "pending"}, ":t": {"S": "2026-11-22T12:00:00.000000Z"}},
    )
    for order_id in (shipped.id, marked.id):
        aws.dynamodb.update_item(TableName=table, Key={"id": {"S": order_id}}, UpdateExpression="REMOVE status_key")
    assert orders.list(OrderFilter(status=S.PENDING), 10, None)[0] == []  # invisible to the index

    assert backfill_index_attributes(aws.dynamodb, table, page_size=2) == (2, 1)  # the shipped one was right

    item = stored(aws, pending.id)
    assert item["status_key"] == {"S": "pending"}
    assert not {"sla_key", "sla_at", "status_since"} & set(item)
    assert stored(aws, marked.id)["sla_key"] == {"S": "jeopardy"}
    assert {o.id for o in orders.list(OrderFilter(status=S.PENDING), 10, None)[0]} == {pending.id, marked.id}
    assert backfill_index_attributes(aws.dynamodb, table) == (0, 3)  # a second run writes nothing


def test_the_backfill_command_reports_what_it_wrote(aws, capture, monkeypatch, capsys):
    from infra import backfill_orders

    table = aws.tables["OrdersTable"]
    placed = capture.place(place_order(external_id="a"), actor="k")
    aws.dynamodb.update_item(TableName=table, Key={"id": {"S": placed.id}}, UpdateExpression="REMOVE status_key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr("sys.argv", ["backfill_orders", "--table", table])

    backfill_orders.main()

    assert capsys.readouterr().out == (
        "0 parked orders marked as parks, 1 already right\n"
        "0 orders' refused delivery reports marked, 1 already right\n"
        "1 orders written, 0 already right\n0 orders given their exchanges' credit holds, 1 already right\n"
        "0 cancelled orders marked as owing their own void, 1 already right\n"
    )
    assert stored(aws, placed.id)["status_key"] == {"S": "pending"}


def test_the_backfill_command_for_a_table_that_is_not_there_names_the_tables_and_the_region(aws, monkeypatch, capsys):
    # An operator whose shell is in another region than the stack's, or who typed a logical id for a
    # table's name. Before: a botocore traceback ending "ResourceNotFoundException ... Scan
    # operation: Requested resource not found", which named neither the table nor the region.
    from infra import backfill_orders

    catalog = aws.tables["CatalogTable"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr("sys.argv", ["backfill_orders", "--table", "OrdersTable", "--catalog-table", catalog])

    with pytest.raises(SystemExit) as refused:
        backfill_orders.main()

    assert refused.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"backfill_orders: error: a table named is not in us-east-1 (--table OrdersTable, --catalog-table {catalog}): "
        "name the stack's tables, in the stack's region (AWS_DEFAULT_REGION or the profile's)\n"
    )


def lagging_index(aws, order_id: str, **attributes: str) -> None:
    """Give the order's item index attributes its document no longer matches: what a query of a
    global secondary index (eventually consistent) returns for a moment after the order moved."""
    names = {f"#a{i}": name for i, name in enumerate(attributes)}
    values = {f":v{i}": {"S": value} for i, value in enumerate(attributes.values())}
    aws.dynamodb.update_item(
        TableName=aws.tables["OrdersTable"], Key={"id": {"S": order_id}},
        UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(attributes))),
        ExpressionAttributeNames=names, ExpressionAttributeValues=values,
    )  # fmt: skip


def test_a_status_list_shows_only_orders_in_that_status_while_the_index_lags(aws, capture, orders):
    # The index still lists the order under pending, but the order read back is on hold: listing
    # it under `status=pending` would show an order in another status than the filter says.
    waiting = capture.place(place_order(external_id="w"), actor="k")
    held = move(aws, capture.place(place_order(external_id="h"), actor="k"), S.ON_HOLD)
    lagging_index(aws, held.id, status_key="pending")

    listed, _ = orders.list(OrderFilter(status=S.PENDING), 10, None)

    assert [o.id for o in listed] == [waiting.id]


def test_the_late_list_shows_only_marked_orders_while_the_index_lags(aws, capture, orders):
    unmarked = capture.place(place_order(external_id="u"), actor="k")
    lagging_index(aws, unmarked.id, sla_key="jeopardy", sla_at="2026-01-01T00:00:00.000000Z")

    listed, _ = orders.list(OrderFilter(jeopardy=True), 10, None)

    assert listed == []
