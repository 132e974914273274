"""An order's access log: its reads and its history's changes merged oldest first, for whoever may see the order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter

from core.access_log import CHANGES, LIST_READS, READS, AccessEntry, AccessLog, AccessLogStore, OrderRead
from core.cursors import cursor_of
from core.errors import NotFound
from core.models import HistoryEntry
from core.services import OrderQueries
from core.status import OrderStatus
from tests.unit.conftest import a_stored_order

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORDER = a_stored_order(("TSHIRT", 1), id="ord_" + "a" * 24, channel="web")


class Orders:
    """The one read AccessLog makes of the order repository: the order and its history."""

    def __init__(self, *history: HistoryEntry):
        self._history = list(history)

    def history(self, order_id: str, *, consistent: bool = False):
        return (ORDER, self._history) if order_id == ORDER.id else None


class Reads(AccessLogStore):
    def __init__(self, *reads: OrderRead):
        self.stored = {read.request_id: read for read in reads}

    def add(self, read: OrderRead) -> None:
        self.stored[read.request_id] = read

    def reads(self, order_id: str) -> list[OrderRead]:
        return sorted((r for r in self.stored.values() if r.order_id == order_id), key=lambda r: r.at)


def read(request_id: str, minutes: int, action: str = "get", actor: str = "key_reader") -> OrderRead:
    return OrderRead(
        request_id=request_id, order_id=ORDER.id, at=T0 + timedelta(minutes=minutes), actor=actor, action=action
    )


def whole_log(log: AccessLog, order_id: str = ORDER.id, channel: str | None = None) -> list[AccessEntry]:
    """Every page of the log, first to last."""
    found: list[AccessEntry] = []
    cursor = None
    while True:
        items, cursor = log.page(order_id, channel, 2, cursor)
        found += items
        if cursor is None:
            return found


def test_reads_and_changes_come_oldest_first_with_their_actors():
    created = HistoryEntry(at=T0, type="created", to_status=OrderStatus.PENDING, actor="key_shop")
    shipped = HistoryEntry(
        at=T0 + timedelta(minutes=10), type="shipment_shipped", from_status=OrderStatus.ALLOCATED,
        to_status=OrderStatus.SHIPPED, actor="key_warehouse",
    )  # fmt: skip
    log = AccessLog(OrderQueries(Orders(created, shipped)), Reads(read("r2", 12, "history"), read("r1", 5)))

    entries = whole_log(log)

    assert [(e.actor, e.action) for e in entries] == [
        ("key_shop", "created"),
        ("key_reader", "get"),
        ("key_warehouse", "shipment_shipped"),
        ("key_reader", "history"),
    ]
    assert entries[2].detail == {"change": True, "from_status": "allocated", "to_status": "shipped"}
    assert entries[1].detail is None


def test_another_channels_order_or_none_is_not_found():
    log = AccessLog(OrderQueries(Orders()), Reads(read("r1", 1)))
    with pytest.raises(NotFound):
        whole_log(log, channel="shop")
    with pytest.raises(NotFound):
        whole_log(log, "ord_" + "z" * 24)
    assert [e.action for e in whole_log(log, channel="web")] == ["get"]


def test_every_read_of_an_order_the_contract_names_is_recorded():
    resources = {resource for _, resource in READS}
    for path in ("", "/history", "/returns", "/refunds"):
        assert f"/orders/{{order_id}}{path}" in resources


def test_every_read_and_change_route_the_access_log_names_is_a_route_of_the_api():
    # A misspelt resource would silently record nothing.
    from infra.local.template import Template

    declared = {(route.method, route.path) for route in Template.load().api_routes()}
    assert set(READS) <= declared
    assert set(CHANGES) <= declared
    assert set(LIST_READS) <= declared
    assert not set(READS) & set(CHANGES)


def test_every_route_whose_answer_can_carry_a_label_link_is_recorded_in_the_access_log():
    # A label carries the customer's name and address. A route whose 2xx answer holds a model with a
    # `label_url` (an order's shipments, a return) and is in none of the tables records nothing of
    # the links it hands out: approving a return answered its label link unrecorded.
    from functions.api.app import every_route

    document = json.loads(every_route().get_openapi_json_schema())
    schemas = document["components"]["schemas"]

    def carries_label(node: object, seen: set[str]) -> bool:
        if isinstance(node, list):
            return any(carries_label(value, seen) for value in node)
        if not isinstance(node, dict):
            return False
        if "label_url" in (node.get("properties") or {}):
            return True
        name = str(node.get("$ref", "")).rpartition("/")[2]
        if name and name not in seen:
            seen.add(name)
            if carries_label(schemas[name], seen):
                return True
        return any(carries_label(value, seen) for value in node.values())

    labelled = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if carries_label([answer for code, answer in operation["responses"].items() if code.startswith("2")], set())
    }
    assert ("GET", "/orders/{order_id}") in labelled and ("GET", "/returns/{return_id}") in labelled
    assert labelled - set(READS) - set(LIST_READS) - set(CHANGES) == set()


def test_the_log_is_read_a_page_at_a_time_in_the_order_of_the_whole_log():
    # Changes and reads interleaved, a read at the very time of a change (the change comes first),
    # and two reads of one time (by request id).
    history = [
        HistoryEntry(at=T0 + timedelta(minutes=m), type="created" if m == 0 else "edited", actor="key_shop",
                     to_status=OrderStatus.PENDING)
        for m in (0, 3, 3, 7)
    ]  # fmt: skip
    reads = [read(f"r{n}", m) for n, m in enumerate((1, 3, 3, 5, 7, 7, 9, 11))]
    log = AccessLog(OrderQueries(Orders(*history)), Reads(*reads))
    whole, cursor = log.page(ORDER.id, None, 100, None)
    assert cursor is None and len(whole) == len(history) + len(reads)
    # Minutes 0 1 3 3 3 3 5 7 7 7 9 11: at one time, the changes (c) before the reads (r).
    assert ["c" if e.actor == "key_shop" else "r" for e in whole] == list("crccrrrcrrrr")

    for limit in (1, 2, 3, 5, 12, 100):
        paged, cursor, pages = [], None, 0
        while True:
            items, cursor = log.page(ORDER.id, None, limit, cursor)
            paged += items
            pages += 1
            if cursor is None:
                break
        assert paged == whole, limit
        assert pages == -(-len(whole) // limit)  # never an empty last page


OTHER_ORDERS = "eyJvIjoib3JkX3oiLCJhdCI6IjIwMjYtMTItMDFUMTI6MDA6MDArMDA6MDAiLCJrIjoxLCJrZXkiOiJyMSJ9"


@pytest.mark.parametrize("cursor", ["", "x", "e30", OTHER_ORDERS])
def test_a_cursor_not_issued_for_this_orders_log_is_invalid(cursor: str):
    from core.errors import InvalidCursor

    log = AccessLog(OrderQueries(Orders()), Reads(read("r1", 1)))
    with pytest.raises(InvalidCursor):
        log.page(ORDER.id, None, 10, cursor)


def _forged(at: str) -> str:
    return cursor_of({"o": ORDER.id, "at": at, "k": 1, "key": "r1"})


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_cursor_whose_time_has_no_utc_equivalent_is_invalid_not_a_crash(at: str):
    from core.errors import InvalidCursor

    log = AccessLog(OrderQueries(Orders()), Reads(read("r1", 1)))
    with pytest.raises(InvalidCursor):
        log.page(ORDER.id, None, 10, _forged(at))


def test_a_lists_reads_travel_in_one_message_split_only_past_the_message_limit(monkeypatch: pytest.MonkeyPatch):
    from functions.adapters import access_log
    from functions.adapters.access_log import SqsReadRecorder

    class Queue:
        def __init__(self):
            self.messages: list[list[str]] = []

        def send_message(self, QueueUrl: str, MessageBody: str) -> None:
            self.messages.append([r.order_id for r in TypeAdapter(list[OrderRead]).validate_json(MessageBody)])

    reads = [read(f"r{n}", n).model_copy(update={"order_id": f"ord_{n:024d}"}) for n in range(100)]
    queue = Queue()
    SqsReadRecorder(queue, "url").record_all(reads)
    assert queue.messages == [[r.order_id for r in reads]]

    size = len(reads[0].model_dump_json().encode())
    monkeypatch.setattr(access_log, "MESSAGE_BYTES", 40 * size)
    queue = Queue()
    SqsReadRecorder(queue, "url").record_all(reads)
    assert [n for message in queue.messages for n in message] == [r.order_id for r in reads]
    assert len(queue.messages) == 3
    assert all(len(message) < 40 for message in queue.messages)


def test_reads_dynamodb_leaves_unprocessed_are_written_again_and_a_message_still_short_fails(
    monkeypatch: pytest.MonkeyPatch,
):
    # BatchWriteItem answers 200 with what it did not write (a partition at its limit): taken as
    # written, those reads were lost without an error, a retry or a dead letter.
    from functions.adapters import access_log
    from functions.adapters.access_log import DynamoAccessLog, UnprocessedReads

    class Table:
        def __init__(self, refusals: int):
            self.refusals = refusals
            self.requests: list[int] = []
            self.stored: set[str] = set()

        def batch_write_item(self, RequestItems: dict) -> dict:
            (writes,) = RequestItems.values()
            assert len(writes) <= 25
            self.requests.append(len(writes))
            if self.refusals:  # the last write of each request left unprocessed
                self.refusals -= 1
                *done, left = writes
                writes, unprocessed = done, {"UnprocessedItems": {"Catalog": [left]}}
            else:
                unprocessed = {"UnprocessedItems": {}}
            self.stored |= {w["PutRequest"]["Item"]["sk"]["S"] for w in writes}
            return unprocessed

    waits: list[float] = []
    monkeypatch.setattr(access_log, "sleep", waits.append)
    reads = [read(f"r{n:02d}", n) for n in range(30)]

    table = Table(refusals=2)
    DynamoAccessLog(table, "Catalog").add_all(reads + reads[:3])  # a read named twice: once
    assert table.requests == [25, 1, 1, 5] and len(table.stored) == 30
    assert waits == [0.05, 0.1]

    with pytest.raises(UnprocessedReads):
        DynamoAccessLog(Table(refusals=5), "Catalog").add_all(reads[:1])


def test_a_queue_that_never_answers_leaves_the_read_time_to_answer_and_to_log_what_it_read(monkeypatch):
    # The API queues a read once it has its answer. With the default client's three attempts of
    # 3 s (9.15 s in all) a queue that took connections and never answered had the API function
    # (10 s) time out after a read that had needed any DynamoDB retry of its own: the read failed
    # (5xx), and its `read not queued` line, the record a runbook puts back, was never written.
    from functions.adapters.aws_clients import CONNECT_TIMEOUT, READ_TIMEOUT
    from functions.bootstrap import Config, bootstrap
    from tests.unit.test_aws_clients import _function_timeouts, _longest_call

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for table in ("ORDERS", "INVENTORY", "CATALOG", "IDEMPOTENCY"):
        monkeypatch.setenv(f"{table}_TABLE", f"test-{table}")
    monkeypatch.setenv("ACCESS_LOG_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/q")
    config = bootstrap(Config.from_env()).read_recorder._client.meta.config

    assert config.retries["mode"] == "standard" and config.retries["total_max_attempts"] >= 2
    # The read's own work, one of its calls having waited out an attempt, the queue's every attempt
    # and a second to log what was read: within the function's timeout.
    read_itself = CONNECT_TIMEOUT + READ_TIMEOUT
    assert read_itself + _longest_call(config) + 1 < _function_timeouts()["ApiFunction"]


def test_a_change_written_after_a_page_with_a_time_before_the_pages_last_entry_is_on_the_next_page():
    # A change's time is taken before its write, which a racing writer can beat: it lands after the
    # page that showed what came later. Paged by time, the next page began after the last entry
    # shown and never showed it; known by its place in the history, it comes next.
    created = HistoryEntry(at=T0, type="created", to_status=OrderStatus.PENDING, actor="key_shop")
    held = HistoryEntry(at=T0 + timedelta(minutes=10), type="on_hold", actor="key_ops")
    orders = Orders(created, held)
    log = AccessLog(OrderQueries(orders), Reads(read("r1", 12), read("r2", 13)))

    first, cursor = log.page(ORDER.id, None, 3, None)
    orders._history.append(HistoryEntry(at=T0 + timedelta(minutes=11), type="released", actor="key_late"))
    rest, end = log.page(ORDER.id, None, 3, cursor)

    assert [e.actor for e in first] == ["key_shop", "key_ops", "key_reader"]
    assert end is None and [(e.actor, e.action) for e in rest] == [("key_late", "released"), ("key_reader", "get")]


def test_a_cursor_issued_before_changes_were_known_by_their_place_goes_on_where_it_stopped():
    # A client paging through a deploy: its cursor names the last entry shown, a change by its place
    # in the history (k 0) or a read (k 1); the next page is what it was.
    history = [HistoryEntry(at=T0 + timedelta(minutes=m), type="created" if m == 0 else "edited", actor="key_shop",
                            to_status=OrderStatus.PENDING) for m in (0, 3, 3, 7)]  # fmt: skip
    log = AccessLog(OrderQueries(Orders(*history)), Reads(*(read(f"r{n}", m) for n, m in enumerate((1, 3, 5, 7)))))
    whole, _ = log.page(ORDER.id, None, 100, None)

    def old(at_minutes: int, kind: int, key: str) -> str:
        at = (T0 + timedelta(minutes=at_minutes)).isoformat()
        return cursor_of({"o": ORDER.id, "at": at, "k": kind, "key": key})

    # Minutes 0c 1r 3c 3c 3r 5r 7c 7r: the second change of minute 3 (place 2), then the read of minute 3.
    assert log.page(ORDER.id, None, 100, old(3, 0, "000002"))[0] == whole[4:]
    assert log.page(ORDER.id, None, 100, old(3, 1, "r1"))[0] == whole[5:]


def test_a_page_after_a_cursor_is_read_on_the_history_as_it_is_never_a_moment_behind_it():
    # A plain read of the order may be a moment behind: one without the change the page before
    # showed held fewer changes than the cursor counts, and a good cursor was refused (422).
    created = HistoryEntry(at=T0, type="created", to_status=OrderStatus.PENDING, actor="key_shop")
    held = HistoryEntry(at=T0 + timedelta(minutes=10), type="on_hold", actor="key_ops")

    class Behind(Orders):
        """A plain read after the first is served a moment behind: without the last change."""

        plain_reads = 0

        def history(self, order_id: str, *, consistent: bool = False):
            order, history = super().history(order_id)
            self.plain_reads += not consistent
            return order, history if consistent or self.plain_reads == 1 else history[:-1]

    log = AccessLog(OrderQueries(Behind(created, held)), Reads(read("r1", 12)))

    first, cursor = log.page(ORDER.id, None, 2, None)
    rest, end = log.page(ORDER.id, None, 2, cursor)

    assert cursor is not None and end is None
    assert [e.actor for e in first + rest] == ["key_shop", "key_ops", "key_reader"]


def test_changes_past_a_page_of_changes_only_with_every_read_shown_are_on_the_next_page():
    # An order read once, then changed four times: a page of two once every read was shown took the
    # changes' window, had it been cut at the page's size, whole, and looked the log's last page.
    history = [HistoryEntry(at=T0 + timedelta(minutes=m), type="created" if m == 1 else "edited", actor="key_shop",
                            to_status=OrderStatus.PENDING) for m in (1, 2, 3, 4)]  # fmt: skip
    log = AccessLog(OrderQueries(Orders(*history)), Reads(read("r1", 0)))

    pages, cursor = [], None
    for _ in range(3):
        items, cursor = log.page(ORDER.id, None, 2, cursor)
        pages.append([e.at.minute for e in items])
        if cursor is None:
            break

    assert pages == [[0, 1], [2, 3], [4]] and cursor is None


def test_two_reads_at_one_time_stored_out_of_request_id_order_are_paged_by_request_id_none_skipped():
    # The store's own answer (AccessLogStore.reads_after) orders a time's reads by request id, as the
    # cursor names them: in the order stored, a page of one showed r2, and the next went on after r2.
    log = AccessLog(OrderQueries(Orders()), Reads(read("r2", 3), read("r1", 3)))

    assert [e.actor + ":" + e.action for e in whole_log(log)] == ["key_reader:get"] * 2
    first, cursor = log.page(ORDER.id, None, 1, None)
    second, cursor = log.page(ORDER.id, None, 1, cursor)
    assert cursor is None
    assert [first[0].at, second[0].at] == [T0 + timedelta(minutes=3)] * 2
    assert (first[0], second[0]) == tuple(log.page(ORDER.id, None, 2, None)[0])


@pytest.mark.parametrize(
    "document",
    [
        {"o": ORDER.id, "c": 1.0},  # a count of changes shown that is no count: 500 where it is 422
        {"o": ORDER.id, "c": True},
        {"o": ORDER.id, "at": T0.isoformat(), "k": 2, "key": "r1"},  # an entry of no kind
        {"o": ORDER.id, "at": T0.isoformat(), "k": True, "key": "r1"},
        {"o": ORDER.id, "c": 0, "at": "2026-12-01T12:00:00", "key": "r1"},  # a read's time with no zone
        {"o": ORDER.id, "c": 0, "u": "2026-12-01T12:00:00"},  # a walk's start with no zone
        {"o": ORDER.id, "c": 0, "u": 1},
    ],
)
def test_a_forged_cursor_naming_no_position_a_page_issues_is_invalid(document: dict):
    from core.errors import InvalidCursor

    log = AccessLog(OrderQueries(Orders(HistoryEntry(at=T0, type="created", actor="key_shop"))), Reads(read("r1", 1)))
    with pytest.raises(InvalidCursor):
        log.page(ORDER.id, None, 10, cursor_of(document))


def walked_one_entry_a_page(store: Reads) -> tuple[AccessLog, list[AccessEntry], str | None]:
    """An access log over `store` walked one entry a page from ten minutes after the order was
    placed, each page's own read stored a moment after it and the clock moved on: the log, the
    entries walked and the last cursor (None: the walk ended within nine pages)."""
    now = [T0 + timedelta(minutes=10)]
    log = AccessLog(OrderQueries(Orders(HistoryEntry(at=T0, type="created", actor="key_shop"))), store, lambda: now[0])
    walked, cursor = [], None
    for page in range(1, 10):
        items, cursor = log.page(ORDER.id, None, 1, cursor)
        walked += items
        store.add(read(f"p{page}", 10 + page, "access_log", "key_auditor"))  # the page's own read
        now[0] = T0 + timedelta(minutes=10 + page, seconds=30)
        if cursor is None:
            break
    return log, walked, cursor


def test_a_walk_shows_the_reads_made_before_its_first_page_and_the_next_walk_those_made_since():
    # Each page is a read of the order, stored a moment after it: a walk that went on to the reads
    # made since it began met its own pages, and one of an entry a page never ended.
    store = Reads(read("r1", 1))
    log, walked, cursor = walked_one_entry_a_page(store)

    assert cursor is None and [(e.actor, e.action) for e in walked] == [("key_shop", "created"), ("key_reader", "get")]
    assert [e.actor for e in whole_log(log)] == ["key_shop", "key_reader", "key_auditor", "key_auditor"]
    # A clock too coarse to tell a page from its own read (both at the walk's start) ends it too.
    created = HistoryEntry(at=T0, type="created", actor="key_shop")
    reads = Reads(read("r1", 1))
    still = AccessLog(OrderQueries(Orders(created)), reads, lambda: T0 + timedelta(minutes=5))
    first, cursor = still.page(ORDER.id, None, 1, None)
    reads.add(read("p1", 5, "access_log", "key_auditor"))
    rest, end = still.page(ORDER.id, None, 1, cursor)
    assert [e.actor for e in first + rest] == ["key_shop", "key_reader"] and end is None
    # A cursor handed out before walks were bounded is bounded from the page it asks for.
    old = cursor_of({"o": ORDER.id, "c": 1, "at": T0.isoformat(), "key": None})
    assert [e.actor for e in log.page(ORDER.id, None, 10, old)[0]] == ["key_reader", "key_auditor", "key_auditor"]


def test_every_page_of_a_long_walk_keeps_to_the_reads_made_before_its_first_page():
    # Each page's cursor carries the walk's start on, not the time of the page that issued it: a
    # third page went on to the second page's own read, and a walk at one entry a page never ended.
    _, walked, cursor = walked_one_entry_a_page(Reads(read("r1", 1), read("r2", 2), read("r3", 3)))

    assert cursor is None and [e.actor for e in walked] == ["key_shop", "key_reader", "key_reader", "key_reader"]


def test_the_apis_access_log_begins_a_walk_at_the_containers_clock():
    # bootstrap(clock=...) is the one clock of every service (tests/unit/test_bootstrap.py): a read
    # stored after it is the next walk's, here as in the access log built by hand above.
    from functions.bootstrap import Config, bootstrap

    config = Config(orders_table="orders", inventory_table="inventory", catalog_table="catalog", idempotency_table="i")
    created = HistoryEntry(at=T0, type="created", actor="key_shop")
    reads = Reads(read("r1", 1), read("r9", 9))
    at = T0 + timedelta(minutes=5)
    container = bootstrap(config, orders=OrderQueries(Orders(created)), access_log_store=reads, clock=lambda: at)

    assert [e.actor for e in container.access_log.page(ORDER.id, None, 10, None)[0]] == ["key_shop", "key_reader"]


def test_a_cursor_issued_before_changes_were_known_by_their_place_naming_a_change_goes_on_to_every_read_after_it():
    # Naming a change (its key is its place in the history), it names no read: the reads go on from
    # that change's time, at it too whatever their request id. A page after it showing changes only
    # names no read either, and the page after that goes on from there.
    def old(place: int, minutes: int) -> str:
        at = (T0 + timedelta(minutes=minutes)).isoformat()
        return cursor_of({"o": ORDER.id, "at": at, "k": 0, "key": f"{place:06d}"})

    history = [HistoryEntry(at=T0 + timedelta(minutes=m), type="created" if m == 0 else "edited", actor="key_shop",
                            to_status=OrderStatus.PENDING) for m in (0, 3, 4, 5)]  # fmt: skip
    # Minutes 0c 3c 4c 5c 9r: after the change of minute 3 (place 1), a page of the next two changes.
    log = AccessLog(OrderQueries(Orders(*history)), Reads(read("r9", 9)))
    whole, _ = log.page(ORDER.id, None, 100, None)
    only_changes, cursor = log.page(ORDER.id, None, 2, old(1, 3))
    rest, end = log.page(ORDER.id, None, 10, cursor)
    assert (only_changes, rest, end) == (whole[2:4], whole[4:], None)

    # Minutes 0c 3c 3r: a read at that change's time whose request id sorts before the change's key.
    log = AccessLog(OrderQueries(Orders(*history[:2])), Reads(read("00000000-0000-0000-0000-000000000000", 3)))
    whole, _ = log.page(ORDER.id, None, 100, None)
    assert log.page(ORDER.id, None, 10, old(1, 3)) == (whole[2:], None)


def test_a_read_whose_request_id_is_of_the_longest_a_read_may_have_is_paged_past():
    # Stored (OrderRead.request_id takes it), a page ending on it hands out a cursor naming it, which
    # the next page must take: a 422 there would stop the log at that read for good.
    longest = "r" * 200
    log = AccessLog(OrderQueries(Orders()), Reads(read(longest, 1), read("s1", 2)))

    first, cursor = log.page(ORDER.id, None, 1, None)
    rest, end = log.page(ORDER.id, None, 1, cursor)

    assert [e.at.minute for e in first + rest] == [1, 2] and end is None
