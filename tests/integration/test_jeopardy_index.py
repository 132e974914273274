"""The jeopardy scan's indexes under moto, on the tables built from template.yaml: candidates come
from the by_status_key index (placed before the deadline, judged on when they entered the status),
paging past marked and not-yet-due orders within one pass; the sparse by_sla index holds only the
orders marked late, which GET /orders?jeopardy=true pages through."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from core.jeopardy import JeopardyScan, parse_sla
from core.ports import OrderFilter
from core.status import OrderStatus
from functions.adapters import dynamodb
from functions.adapters.dynamodb import DynamoLateOrders
from tests.builders import NOW, place_order

S = OrderStatus


@pytest.fixture
def late(aws):
    return DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])


def late_index_entries(aws) -> dict[str, tuple[str, str]]:
    """{order id: (sla_key, sla_at)} of every item the sparse by_sla index would hold."""
    items = aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Items"]  # the test reads all; the code never
    return {i["id"]["S"]: (i["sla_key"]["S"], i["sla_at"]["S"]) for i in items if "sla_key" in i}


def mark(orders, order_id: str, at) -> None:
    current = orders.get(order_id)
    marked, entry = current.mark_jeopardy("pending for longer than 5m", at, at=at, actor="x")
    orders.update(marked, current, [entry])


def test_candidates_come_from_the_status_index_and_only_marked_orders_enter_the_late_one(aws, capture, orders, late):
    first = capture.place(place_order(external_id="a"), actor="k")
    second = capture.place(place_order(external_id="b"), actor="k")

    assert late_index_entries(aws) == {}  # placing an order writes no late-index entry
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == [first.id, second.id]
    assert late.unmarked_since_before(S.PENDING, first.created_at, 10) == []  # before either entered
    # The pending and the authorized orders are one partition: candidates, each judged on its order.
    assert late.unmarked_since_before(S.AUTHORIZED, NOW + timedelta(days=1), 10) == [first.id, second.id]

    cancelled, entry = orders.get(first.id).cancel("test", at=NOW + timedelta(minutes=1), actor="k")
    orders.update(cancelled, orders.get(first.id), [entry])

    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == [second.id]
    assert late_index_entries(aws) == {}


def authorize(orders, order_id: str, at) -> None:
    current = orders.get(order_id)
    authorized, entry = current.authorize(current.totals.grand_total, "auth_1", at=at, actor="workflow")
    orders.update(authorized, current, [entry])


def test_pending_and_authorized_orders_share_a_partition_and_each_is_marked_on_its_own_deadline(aws, capture, orders):
    # Placed at NOW; one authorized 10 minutes later. An hour on, both are candidates of both passes
    # (the partition says neither status nor when it began): pending's 5 minutes mark the pending
    # one, authorized's 15 minutes from its authorization the other, each once.
    pending = capture.place(place_order(external_id="p"), actor="k")
    authorized = capture.place(place_order(external_id="a"), actor="k")
    authorize(orders, authorized.id, NOW + timedelta(minutes=10))
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": authorized.id}})["Item"]
    assert item["status_key"] == {"S": "pending"} and "status_since" not in item
    sla = parse_sla("pending=5m,authorized=15m")
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])

    early = JeopardyScan(late, orders, lambda *a: None, lambda: NOW + timedelta(minutes=20), sla=sla, limit=10)
    assert early.run().marked == [pending.id]  # authorized 10 minutes ago: not late yet
    scan = JeopardyScan(late, orders, lambda *a: None, lambda: NOW + timedelta(minutes=26), sla=sla, limit=10)
    assert scan.run().marked == [authorized.id]
    assert orders.get(authorized.id).jeopardy.reason == "authorized for longer than 15m"
    assert scan.run().marked == []


def test_a_late_pending_order_is_marked_behind_more_authorized_orders_not_yet_due_than_a_pass_marks(
    aws, capture, orders
):
    # Placed first and authorized only lately (stalled there): the shared partition cannot tell
    # them from late pending orders, so each pass reads them, and they stay unmarked 15 minutes.
    waiting = [capture.place(place_order(external_id=f"a{i}"), actor="k") for i in range(3)]
    for order in waiting:
        authorize(orders, order.id, NOW + timedelta(minutes=15))
    pending = capture.place(place_order(external_id="p"), actor="k")
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])
    sla = parse_sla("pending=5m,authorized=15m")
    scan = JeopardyScan(late, orders, lambda *a: None, lambda: NOW + timedelta(minutes=20), sla=sla, limit=2)

    assert scan.run().marked == [pending.id]  # read past the authorized ones, within the read budget
    assert [orders.get(o.id).jeopardy for o in waiting] == [None] * 3


def test_an_order_marked_late_while_pending_is_late_for_authorized_only_on_its_authorizations_deadline(
    aws, capture, orders
):
    placed = capture.place(place_order(external_id="p"), actor="k")
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"])
    sla = parse_sla("pending=5m,authorized=15m")

    def scan(minutes: int) -> list[str]:
        at = NOW + timedelta(minutes=minutes)
        return JeopardyScan(late, orders, lambda *a: None, lambda: at, sla=sla, limit=10).run().marked

    assert scan(30) == [placed.id]
    authorize(orders, placed.id, NOW + timedelta(hours=1))  # the mark goes with the status
    assert orders.get(placed.id).jeopardy is None
    assert scan(74) == []  # placed long ago: authorized 14 minutes
    assert scan(75) == [placed.id]
    assert orders.get(placed.id).jeopardy.reason == "authorized for longer than 15m"


def test_an_order_stored_authorized_by_the_release_before_is_still_found_until_its_next_write_moves_it(
    aws, capture, orders, late
):
    from functions.adapters.dynamodb import DynamoStalledOrders

    table = aws.tables["OrdersTable"]
    stored = capture.place(place_order(external_id="s"), actor="k")
    authorize(orders, stored.id, NOW + timedelta(minutes=1))
    # As that release wrote it: its own partition, with when it entered the status.
    aws.dynamodb.update_item(
        TableName=table, Key={"id": {"S": stored.id}}, UpdateExpression="SET status_key = :s, status_since = :t",
        ExpressionAttributeValues={":s": {"S": "authorized"}, ":t": {"S": "2026-11-22T12:01:00.000000Z"}},
    )  # fmt: skip
    fresh = capture.place(place_order(external_id="f"), actor="k")
    stalled = DynamoStalledOrders(aws.dynamodb, table)
    later = NOW + timedelta(days=1)

    assert late.unmarked_since_before(S.AUTHORIZED, later, 10) == [fresh.id, stored.id]
    assert late.unmarked_since_before(S.PENDING, later, 10) == [fresh.id]
    assert [s.order_id for s in stalled.stalled((S.PENDING, S.AUTHORIZED), later)] == [fresh.id, stored.id]
    assert [o.id for o in orders.list(OrderFilter(status=S.AUTHORIZED), 10, None)[0]] == []  # until it moves

    marked, entry = orders.get(stored.id).mark_jeopardy("authorized for longer than 15m", later, at=later, actor="x")
    orders.update(marked, orders.get(stored.id), [entry])  # its next write, whatever it is

    item = aws.dynamodb.get_item(TableName=table, Key={"id": {"S": stored.id}})["Item"]
    assert item["status_key"] == {"S": "pending"}
    assert [o.id for o in orders.list(OrderFilter(status=S.AUTHORIZED), 10, None)[0]] == [stored.id]


def test_the_backfill_moves_orders_stored_authorized_or_pending_by_the_release_before_at_once(aws, capture, orders):
    table = aws.tables["OrdersTable"]
    pending = capture.place(place_order(external_id="p"), actor="k")
    authorized = capture.place(place_order(external_id="a"), actor="k")
    authorize(orders, authorized.id, NOW + timedelta(minutes=1))
    for order_id, status in ((pending.id, "pending"), (authorized.id, "authorized")):  # as that release wrote them
        aws.dynamodb.update_item(
            TableName=table, Key={"id": {"S": order_id}}, UpdateExpression="SET status_key = :s, status_since = :t",
            ExpressionAttributeValues={":s": {"S": status}, ":t": {"S": "2026-11-22T12:01:00.000000Z"}},
        )  # fmt: skip

    assert dynamodb.backfill_index_attributes(aws.dynamodb, table) == (2, 0)

    for order_id in (pending.id, authorized.id):
        item = aws.dynamodb.get_item(TableName=table, Key={"id": {"S": order_id}})["Item"]
        assert item["status_key"] == {"S": "pending"} and "status_since" not in item
    assert [o.id for o in orders.list(OrderFilter(status=S.AUTHORIZED), 10, None)[0]] == [authorized.id]
    assert dynamodb.backfill_index_attributes(aws.dynamodb, table) == (0, 2)


def test_a_page_full_of_marked_or_not_yet_due_orders_never_starves_the_scan(aws, capture, orders):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(6)]
    for order in placed[:3]:
        mark(orders, order.id, NOW + timedelta(minutes=10))
    # Placed early but on hold only since a day later: in the range placed before the moment, not due.
    current = orders.get(placed[3].id)
    held, entry = current.hold_for("fraud_review", None, at=NOW + timedelta(days=1), actor="k")
    orders.update(held, current, [entry])
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"], page_size=2)

    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(hours=1), 10) == [placed[4].id, placed[5].id]
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(hours=1), 1) == [placed[4].id]
    assert late.held_since_before(NOW + timedelta(hours=1), 10) == []
    assert late.held_since_before(NOW + timedelta(days=2), 10) == [placed[3].id]
    scan = JeopardyScan(late, orders, lambda *a: None, lambda: NOW + timedelta(hours=1), sla=parse_sla(""), limit=1)
    assert scan.run().marked == [placed[4].id]  # one pass, past the first two pages
    assert scan.run().marked == [placed[5].id]


def test_a_pass_reads_no_more_index_entries_than_its_budget(aws, capture, orders, monkeypatch):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(5)]
    for order in placed[:4]:
        mark(orders, order.id, NOW + timedelta(minutes=10))
    calls = []
    real = aws.dynamodb.query

    def counted(**kwargs):
        calls.append(kwargs["Limit"])
        return real(**kwargs)

    monkeypatch.setattr(aws.dynamodb, "query", counted)
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"], page_size=2, max_reads=3)

    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(hours=1), 10) == []  # stopped short
    assert calls == [2, 1]  # three entries read, the budget
    roomy = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"], page_size=2, max_reads=6)
    assert roomy.unmarked_since_before(S.PENDING, NOW + timedelta(hours=1), 10) == [placed[4].id]


def test_a_marked_order_enters_the_late_index_is_listed_and_counted(aws, capture, orders, late):
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(3)]
    clock = lambda: NOW + timedelta(minutes=30)  # noqa: E731
    scan = JeopardyScan(late, orders, lambda *a: None, clock, sla=parse_sla(""))

    done = scan.run()

    assert sorted(done.marked) == sorted(o.id for o in placed) and done.in_jeopardy == 3
    assert {key for key, _ in late_index_entries(aws).values()} == {"jeopardy"}
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == []
    assert scan.run().marked == []  # a second pass finds nothing new to mark
    page, cursor = orders.list(OrderFilter(jeopardy=True), 2, None)
    rest, end = orders.list(OrderFilter(jeopardy=True), 2, cursor)
    assert [o.id for o in page + rest] == [o.id for o in reversed(placed)] and end is None  # newest first
    assert orders.list(OrderFilter(jeopardy=True, channel="other"), 10, None)[0] == []
    # One channel's late orders: read on past others' entries, a cursor naming the last one shown.
    page, cursor = orders.list(OrderFilter(jeopardy=True, channel="web"), 2, None)
    rest, end = orders.list(OrderFilter(jeopardy=True, channel="web"), 2, cursor)
    assert [o.id for o in page + rest] == [o.id for o in reversed(placed)] and end is None
    assert orders.list(OrderFilter(jeopardy=True, status=S.AUTHORIZED), 10, None)[0] == []


def test_held_orders_are_found_for_expiry_marked_or_not(aws, capture, orders, late):
    marked = capture.place(place_order(external_id="m"), actor="k")
    unmarked = capture.place(place_order(external_id="u"), actor="k")
    for order_id, at in ((marked.id, NOW), (unmarked.id, NOW + timedelta(hours=30))):
        held, entry = orders.get(order_id).hold_for("fraud_review", None, at=at, actor="k")
        orders.update(held, orders.get(order_id), [entry])
    current = orders.get(marked.id)
    late_one, entry = current.mark_jeopardy("on_hold for longer than 24h", NOW + timedelta(hours=24),
                                            at=NOW + timedelta(hours=25), actor="x")  # fmt: skip
    orders.update(late_one, current, [entry])

    assert late.held_since_before(NOW + timedelta(hours=1), 10) == [marked.id]
    assert sorted(late.held_since_before(NOW + timedelta(days=2), 10)) == sorted([marked.id, unmarked.id])
    assert late.count_in_jeopardy() == 1


def expiry_index_entries(aws) -> dict[str, tuple[str, str]]:
    """{order id: (pickup_pk, collect_by)} of every item the sparse by_pickup_deadline index holds."""
    items = aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Items"]  # the test reads all; the code never
    return {i["id"]["S"]: (i["pickup_pk"]["S"], i["collect_by"]["S"]) for i in items if "pickup_pk" in i}


def test_the_hold_expiry_reaches_a_due_hold_behind_more_parks_and_recent_holds_than_a_page(
    aws, capture, orders, monkeypatch
):
    """Placed first: two orders parked long ago (never expired) and two held only lately (not due);
    placed last, a merchant's hold as old as the parks. Read by when the orders were placed, all
    four stand before it, more than a page and the read budget: the expiry reads past them on every
    pass and never reaches it. Read by when each hold began, parks left out, it comes first."""
    placed = [capture.place(place_order(external_id=f"o{i}"), actor="k") for i in range(5)]
    parks, recent, due = placed[:2], placed[2:4], placed[4]
    for order in parks:
        current = orders.get(order.id)
        parked, entry = current.park(error="States.Timeout", message="", at=NOW, actor="workflow")
        orders.update(parked, current, [entry])
    for order, at in [(recent[0], NOW + timedelta(days=3)), (recent[1], NOW + timedelta(days=3, hours=1)), (due, NOW)]:
        current = orders.get(order.id)
        held, entry = current.hold_for("other", None, at=at, actor="k")
        orders.update(held, current, [entry])
    reads = []
    real = aws.dynamodb.query

    def counted(**kwargs):
        page = real(**kwargs)
        reads.append(page["ScannedCount"])
        return page

    monkeypatch.setattr(aws.dynamodb, "query", counted)
    late = DynamoLateOrders(aws.dynamodb, aws.tables["OrdersTable"], page_size=2, max_reads=3)

    assert late.held_since_before(NOW + timedelta(days=2), 10) == [due.id]
    assert sum(reads) == 1  # the one due hold, nothing read past
    assert set(expiry_index_entries(aws)) == {due.id, *(o.id for o in recent)}  # a park has no entry
    assert late.held_since_before(NOW + timedelta(days=4), 10) == [due.id, recent[0].id, recent[1].id]
    scan = JeopardyScan(late, orders, lambda *a: None, lambda: NOW + timedelta(days=2), sla=parse_sla(""),
                        hold_expiry=timedelta(days=1), limit=1)  # fmt: skip
    assert scan.run().expired == [due.id]
    assert [orders.get(o.id).status for o in placed] == [S.ON_HOLD] * 4 + [S.CANCELLED]
    assert due.id not in expiry_index_entries(aws)  # the cancel took it out


def test_a_hold_stored_with_the_order_enters_the_expiry_index_and_a_release_takes_it_out(aws, capture, orders, late):
    from tests.unit.conftest import a_stored_order

    # As a review rule holds a new order in the write that places it (CaptureService._reviewed).
    held = a_stored_order(("TSHIRT", 1), id="ord_" + "h" * 24, created_at=NOW, updated_at=NOW)
    held, entry = held.hold_for("fraud_review", None, at=NOW, actor="review")
    orders.add(held, entry, payment_token="tok_approve")
    assert expiry_index_entries(aws) == {held.id: ("on_hold", dynamodb.timestamp(NOW))}
    assert late.held_since_before(NOW + timedelta(seconds=1), 10) == [held.id]

    current = orders.get(held.id)
    released, entry = current.release(note=None, at=NOW + timedelta(hours=1), actor="k")
    orders.update(released, current, [entry])

    assert expiry_index_entries(aws) == {} and late.held_since_before(NOW + timedelta(days=9), 10) == []
    capture.place(place_order(external_id="typical"), actor="k")
    assert expiry_index_entries(aws) == {}  # an order never held writes no entry


def test_the_backfill_marks_a_park_stored_before_parks_were_marked_and_the_expiry_leaves_it(aws, capture, orders, late):
    from functions.adapters.dynamodb import backfill_parks

    old_park, merchant = (capture.place(place_order(external_id=e), actor="k") for e in ("p", "m"))
    current = orders.get(old_park.id)
    parked, entry = current.park(error="States.Timeout", message="", at=NOW, actor="workflow")
    unmarked = parked.model_copy(update={"hold": parked.hold.model_copy(update={"parked": False})})
    orders.update(unmarked, current, [entry])  # as an earlier version stored a park
    current = orders.get(merchant.id)
    held, entry = current.hold_for("other", parked.hold.note, at=NOW, actor="k")
    orders.update(held, current, [entry])
    assert sorted(late.held_since_before(NOW + timedelta(days=2), 10)) == sorted([old_park.id, merchant.id])

    assert backfill_parks(aws.dynamodb, aws.tables["OrdersTable"]) == (1, 1)

    assert orders.get(old_park.id).hold.parked and not orders.get(merchant.id).hold.parked
    assert late.held_since_before(NOW + timedelta(days=2), 10) == [merchant.id]
    assert backfill_parks(aws.dynamodb, aws.tables["OrdersTable"]) == (0, 2)  # a second run writes nothing


def test_the_backfill_marks_a_hold_to_confirm_a_parcel_stored_before_it_was_marked(aws, capture, orders, late):
    """The jeopardy handler's hold of an order whose ship died after its capture (ShipsToConfirm),
    stored before such a hold was marked: the expiry would cancel it, parcel gone or not."""
    from functions.adapters.dynamodb import backfill_parks

    order = capture.place(place_order(external_id="s"), actor="k")
    current = orders.get(order.id)
    held, entry = current.hold_unfinished_ships(["shp_1"], at=NOW, actor="jeopardy_scan")
    assert held.hold.parked and held.hold.confirms_ships == ["shp_1"]
    unmarked = held.model_copy(update={"hold": held.hold.model_copy(update={"parked": False, "confirms_ships": []})})
    orders.update(unmarked, current, [entry])  # as an earlier version stored it
    assert late.held_since_before(NOW + timedelta(days=2), 10) == [order.id]
    assert late.count_ships_to_confirm() == 0

    assert backfill_parks(aws.dynamodb, aws.tables["OrdersTable"]) == (1, 0)

    backfilled = orders.get(order.id)
    assert backfilled.hold.parked and late.held_since_before(NOW + timedelta(days=2), 10) == []
    assert backfilled.hold.confirms_ships == ["shp_1"] and late.count_ships_to_confirm() == 1
    assert [pk for pk, _ in expiry_index_entries(aws).values()] == ["ships_to_confirm"]  # never the expiry's
    assert backfill_parks(aws.dynamodb, aws.tables["OrdersTable"]) == (0, 1)  # a second run writes nothing


def test_the_backfill_names_the_parcels_of_a_hold_to_confirm_parked_before_it_named_them(aws, capture, orders, late):
    """Marked a park already (Hold.parked) but stored before such a hold named its parcels
    (Hold.confirms_ships): not counted for ShipsToConfirmAlarm until the backfill names them."""
    from functions.adapters.dynamodb import backfill_parks

    order = capture.place(place_order(external_id="s"), actor="k")
    current = orders.get(order.id)
    held, entry = current.hold_unfinished_ships(["shp_1"], at=NOW, actor="jeopardy_scan")
    unmarked = held.model_copy(update={"hold": held.hold.model_copy(update={"confirms_ships": []})})
    orders.update(unmarked, current, [entry])  # as the last version stored it
    assert late.count_ships_to_confirm() == 0

    assert backfill_parks(aws.dynamodb, aws.tables["OrdersTable"]) == (1, 0)

    assert orders.get(order.id).hold.confirms_ships == ["shp_1"] and late.count_ships_to_confirm() == 1
    assert [pk for pk, _ in expiry_index_entries(aws).values()] == ["ships_to_confirm"]  # never the expiry's


def test_one_channels_late_orders_page_on_past_the_read_budget_and_no_cursor_names_an_order(
    aws, capture, orders, monkeypatch
):
    monkeypatch.setattr(dynamodb, "CHANNEL_LIST_READS", 2)
    channels = ["web", "market", "market", "market", "web"]
    placed = [capture.place(place_order(external_id=f"o{i}", channel=c), actor="k") for i, c in enumerate(channels)]
    for order in placed:
        mark(orders, order.id, NOW + timedelta(minutes=10))
    market = {order.id for order in placed if order.channel == "market"}

    shown, cursor, stopped_short = [], None, False
    while True:
        page, cursor = orders.list(OrderFilter(jeopardy=True, channel="web"), 1, cursor)
        shown.extend(order.id for order in page)
        if cursor is None:
            break
        named = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["k"]
        assert market.isdisjoint(value["S"] for value in named.values())
        stopped_short |= "id" not in named
    assert shown == [placed[4].id, placed[0].id] and stopped_short


def test_a_marked_order_whose_ship_asked_its_capture_is_a_candidate_again_until_the_request_goes(
    aws, capture, orders, late
):
    # Marked late, then its ship died after the gateway captured: the scan reads only unmarked
    # orders, so it never read this one again to hand the capture on (core.capture_sweep).
    from core.models import CaptureRequest
    from core.money import Money

    order = capture.place(place_order(external_id="a"), actor="k")
    mark(orders, order.id, NOW + timedelta(minutes=10))
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == []
    marked = orders.get(order.id)
    request = CaptureRequest(shipment_id="shp_1", amount=Money.of("1.00", "USD"))
    asked, _ = marked._bookkeeping(at=NOW + timedelta(minutes=11), captures_requested=[request])
    orders.update(asked, marked, [])

    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == [order.id]
    assert late_index_entries(aws) == {} and late.count_in_jeopardy() == 0
    assert orders.get(order.id).jeopardy == marked.jeopardy  # still marked on the order itself

    settled, _ = asked._bookkeeping(at=NOW + timedelta(minutes=12), captures_requested=[])
    orders.update(settled, asked, [])
    assert late.unmarked_since_before(S.PENDING, NOW + timedelta(days=1), 10) == []
    assert list(late_index_entries(aws)) == [order.id] and late.count_in_jeopardy() == 1
