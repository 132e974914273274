"""Customer and report aggregates on moto: Orders stream records through the events handler become
counters in the catalog table, once per order change however often the stream delivers them."""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest

from core.aggregates import (
    AggregateChange,
    Aggregates,
    CounterUpdate,
    CustomerSeen,
    Filing,
    ReportKind,
    aggregate_change,
    filing_key,
    top_rows,
)
from core.models import HistoryEntry, OrderLine, Totals
from core.status import OrderStatus
from functions.adapters.aggregates import REPORT_READERS, DynamoAggregates
from tests.integration.test_events_and_webhooks import (  # noqa: F401 (fixtures)
    Context,
    events_calls_granted,
    stored_item,
    stream_event,
    wired,
)
from tests.unit.conftest import UPDATED_AT, a_stored_order, usd

DAY = UPDATED_AT.date()


def priced_order(**fields: Any):
    lines = [
        OrderLine(line_id="L1", sku="TSHIRT", quantity=2, unit_price=usd("12.00"), discount=usd("2.00"),
                  tax=usd("0.00"), total=usd("22.00")),
        OrderLine(line_id="L2", sku="MUG", quantity=1, unit_price=usd("8.00"), discount=usd("0.00"),
                  tax=usd("0.00"), total=usd("8.00")),
    ]  # fmt: skip
    zero = usd("0.00")
    totals = Totals(subtotal=usd("32.00"), discount=usd("2.00"), shipping=zero, tax=zero, grand_total=usd("30.00"))
    return a_stored_order(lines=lines, totals=totals, **fields)


def placed_then_allocated(aws) -> tuple[dict, dict]:
    from functions.adapters.dynamodb import DynamoOrders

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = priced_order(id="ord_aggregates1", status=OrderStatus.AUTHORIZED)
    orders.add(placed, HistoryEntry(at=UPDATED_AT, type="created", to_status=OrderStatus.AUTHORIZED, actor="k"), "tok")
    created = stored_item(aws, placed.id)
    allocated = placed.model_copy(update={"status": OrderStatus.ALLOCATED, "version": 2})
    orders.update(allocated, placed, [])
    return created, stored_item(aws, placed.id)


def test_stream_records_become_customer_and_report_counters_once_even_when_redelivered(aws, wired):  # noqa: F811
    from functions.events.app import container, lambda_handler

    created, allocated = placed_then_allocated(aws)
    stream = stream_event(("INSERT", None, created), ("MODIFY", created, allocated))

    for _ in range(2):  # the second time, a retried batch: nothing counts twice
        assert lambda_handler(stream, Context()) == {"batchItemFailures": []}

    aggregates = container().aggregates
    top = aggregates.report(ReportKind.PRODUCTS, "USD", start=DAY, end=DAY, channel=None, limit=10)
    assert [row.model_dump(mode="json") for row in top] == [
        {"sku": "TSHIRT", "units": 2, "revenue": {"amount": "22.00", "currency": "USD"}},
        {"sku": "MUG", "units": 1, "revenue": {"amount": "8.00", "currency": "USD"}},
    ]
    customers = aggregates.report(ReportKind.CUSTOMERS, "USD", start=DAY, end=DAY, channel="web", limit=10)
    assert [(row.customer_id, row.orders, str(row.revenue.amount)) for row in customers] == [("cus_1", 1, "30.00")]
    customer = aggregates.customer("cus_1", "web").model_dump(mode="json")
    assert customer["orders_count"] == 1
    assert customer["totals"] == [
        {"currency": "USD", "ordered": {"amount": "30.00", "currency": "USD"},
         "refunded": {"amount": "0.00", "currency": "USD"}}
    ]  # fmt: skip
    assert customer["first_order_at"] == customer["last_order_at"] == "2025-01-01T00:00:00.000000Z"
    assert [c.id for c in aggregates.customers_by_email("ADA@example.com", None)[0]] == ["cus_1"]
    assert aggregates.report(ReportKind.PRODUCTS, "USD", start=date(2025, 1, 2), end=date(2025, 1, 2),
                             channel=None, limit=10) == []  # fmt: skip


def test_a_backorder_allocated_days_later_is_filed_on_that_day_and_its_cancel_takes_it_out_of_it(aws, wired):  # noqa: F811
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = priced_order(id="ord_aggregates2", status=OrderStatus.BACKORDERED)
    orders.add(placed, HistoryEntry(at=UPDATED_AT, type="created", to_status=placed.status, actor="k"), "tok")
    created = stored_item(aws, placed.id)
    allocated_on = UPDATED_AT + timedelta(days=19, hours=8)
    allocated = placed.model_copy(update={"status": OrderStatus.ALLOCATED, "version": 2, "updated_at": allocated_on})
    orders.update(allocated, placed, [])
    allocated_item = stored_item(aws, placed.id)
    cancelled = allocated.model_copy(
        update={"status": OrderStatus.CANCELLED, "version": 3, "updated_at": allocated_on + timedelta(days=3)}
    )
    orders.update(cancelled, allocated, [])
    cancelled_item = stored_item(aws, placed.id)
    aggregates = container().aggregates

    def report(day: date) -> list[tuple[str, int]]:
        rows = aggregates.report(ReportKind.PRODUCTS, "USD", start=day, end=day, channel=None, limit=10)
        return [(row.sku, row.units) for row in rows]

    allocation = stream_event(("INSERT", None, created), ("MODIFY", created, allocated_item))
    for _ in range(2):  # redelivered: counted once
        assert lambda_handler(allocation, Context()) == {"batchItemFailures": []}
    assert report(DAY) == []
    assert report(allocated_on.date()) == [("TSHIRT", 2), ("MUG", 1)]

    cancel = stream_event(("MODIFY", allocated_item, cancelled_item))
    for _ in range(2):
        assert lambda_handler(cancel, Context()) == {"batchItemFailures": []}
    assert report(DAY) == report(allocated_on.date()) == []
    customer = aggregates.customer("cus_1", None)
    assert (customer.orders_count, customer.totals[0].ordered.amount) == (1, Decimal("0.00"))


def test_a_replacements_later_filing_day_is_on_record_for_its_cancel_beside_a_credit_recorded_before(aws):
    from tests.unit.test_aggregates import money, order, then

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    service = Aggregates(store, lambda: datetime(2026, 12, 1, tzinfo=UTC))
    placed = order(id="ord_x", exchange_of="rma_1", exchange_credit=money("9.50"), updated_at="2026-11-01T10:00:00Z")
    allocated = then(placed, status="allocated", updated_at="2026-11-03T10:00:00Z")
    cancelled = then(allocated, status="cancelled", updated_at="2026-11-04T10:00:00Z")

    for old, new in ((None, placed), (placed, allocated)):
        change = aggregate_change(old, new, store.filing)
        for _ in range(2):  # redelivered: counted once
            store.apply(change)
    total = service.customer("cus_1", None).totals[0]
    assert (str(total.ordered.amount), str(total.refunded.amount)) == ("27.50", "0.00")  # its grand total
    assert store.filing("ord_x") == Filing("2026-11-03", False, ((2, "2026-11-03"),))  # on record once
    day = date(2026, 11, 3)
    assert [r.sku for r in service.report(ReportKind.PRODUCTS, "USD", start=day, end=day, channel=None, limit=5)] == [
        "TSHIRT",
        "MUG",
    ]

    store.apply(aggregate_change(allocated, cancelled, store.filing))

    total = service.customer("cus_1", None).totals[0]
    assert (str(total.ordered.amount), str(total.refunded.amount)) == ("0.00", "0.00")
    assert service.report(ReportKind.PRODUCTS, "USD", start=day, end=day, channel=None, limit=5) == []
    # An earlier version recorded on the filing that it counted the credit out of `ordered`: read back.
    pk, sk = filing_key("ord_x")
    aws.dynamodb.update_item(
        TableName=aws.tables["CatalogTable"], Key={"pk": {"S": pk}, "sk": {"S": sk}},
        UpdateExpression="SET credit = :credit", ExpressionAttributeValues={":credit": {"BOOL": True}},
    )  # fmt: skip
    assert store.filing("ord_x") == Filing("2026-11-03", True, ((2, "2026-11-03"),))


def test_a_change_of_more_counters_than_one_transaction_holds_applies_in_parts_each_once(aws):
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    pk = "report#products#USD#web#2025-01-01"
    change = AggregateChange(
        "ord_big",
        3,
        [CounterUpdate(pk, f"SKU{n:03d}", {"units": Decimal(1), "revenue": Decimal("1.50")}) for n in range(150)],
    )

    assert store.apply(change) is True
    assert store.apply(change) is False

    rows = store.report_rows([pk])
    assert len(rows) == 150
    assert {(item["units"], item["revenue"]) for _, item in rows} == {(Decimal(1), Decimal("1.50"))}


def test_first_and_last_order_times_are_a_min_and_a_max_whatever_order_the_orders_arrive_in(aws):
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    arrivals = [("ord_b", "2026-12-01"), ("ord_c", "2026-12-02"), ("ord_a", "2026-11-30"), ("ord_b", "2026-12-01")]
    for order_id, day in arrivals:
        at = f"{day}T10:00:00.000000Z"
        store.apply(AggregateChange(order_id, 1, [], CustomerSeen("cus_9", "web", "bo@example.com", at)))

    item = store.customer_items("cus_9")["web"]
    assert (item["first_order_at"], item["last_order_at"]) == (
        "2026-11-30T10:00:00.000000Z",
        "2026-12-02T10:00:00.000000Z",
    )
    assert store.customer_ids("BO@example.com", None, 25, None) == (["cus_9"], None)


def test_the_email_index_keeps_the_channels_each_email_ordered_in(aws):
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    at = "2026-12-01T10:00:00.000000Z"
    for order_id, channel, email in [("ord_a", "web", "ada@work.example"), ("ord_b", "pos", "ada@home.example"),
                                     ("ord_c", "b2b", "ada@work.example")]:  # fmt: skip
        store.apply(AggregateChange(order_id, 1, [], CustomerSeen("cus_1", channel, email, at)))

    assert store.customer_ids("ada@work.example", "web", 25, None) == (["cus_1"], None)
    assert store.customer_ids("ada@work.example", "b2b", 25, None) == (["cus_1"], None)
    assert store.customer_ids("ada@work.example", "pos", 25, None) == ([], None)
    assert store.customer_ids("ADA@home.example", None, 25, None) == (["cus_1"], None)


def test_a_customer_shows_the_email_and_name_of_their_latest_order_whatever_changes_an_older_one(aws):
    # Ada moved to a new address for her second order; a refund on her first one then SET the
    # first order's email and name on her row again: GET /customers showed the address she left.
    from core.aggregates import Aggregates, aggregate_change
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])

    def order(order_id: str, day: str, email: str, name: str, version: int, refunded: str = "0.00") -> dict:
        return {
            "id": order_id, "version": version, "status": "pending", "channel": "web", "currency": "USD",
            "customer": {"id": "cus_7", "email": email, "name": name}, "lines": [],
            "totals": {"grand_total": {"amount": "10.00", "currency": "USD"}},
            "payment": {"refunded": {"amount": refunded, "currency": "USD"}},
            "shipping_address": {"country": "US"}, "created_at": f"{day}T10:00:00Z",
        }  # fmt: skip

    first = order("ord_first", "2026-11-01", "ada@old.example", "Ada Byron", 1)
    second = order("ord_second", "2026-11-20", "ada@new.example", "Ada Lovelace", 1)
    for old, new in [(None, first), (None, second), (first, {**first, "version": 2, "payment": {
        "refunded": {"amount": "4.00", "currency": "USD"}}})]:  # fmt: skip
        assert store.apply(aggregate_change(old, new))

    customer = Aggregates(store, utc_now).customer("cus_7", None)
    assert (customer.email, customer.name, customer.orders_count) == ("ada@new.example", "Ada Lovelace", 2)
    assert customer.totals[0].refunded.amount == Decimal("4.00")

    # The older order arriving last (the stream orders each order's changes, not orders among them).
    store.apply(aggregate_change(None, order("ord_oldest", "2026-10-01", "ada@oldest.example", "A. B.", 1)))
    customer = Aggregates(store, utc_now).customer("cus_7", None)
    assert (customer.email, customer.name, customer.orders_count) == ("ada@new.example", "Ada Lovelace", 3)


def test_customers_found_by_email_come_a_page_at_a_time_and_a_cursor_names_no_hidden_customer(aws):
    # GET /customers?email= answered every customer of an address in one page whatever `limit`
    # said, with next_cursor always null: a shared address (a company's buyers) is many customers.
    import base64
    import json

    import pytest

    from core.aggregates import Aggregates
    from core.errors import InvalidCursor
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    at = "2026-12-01T10:00:00.000000Z"
    for n, channel in enumerate(["web", "pos", "web", "pos", "web"]):
        store.apply(AggregateChange(f"ord_{n}", 1, [CounterUpdate(f"customer#cus_{n}", channel, {"orders_count": 1})],
                                    CustomerSeen(f"cus_{n}", channel, "buyers@acme.example", at)))  # fmt: skip
    aggregates = Aggregates(store, utc_now)

    cursors: list[str] = []

    def every_page(channel: str | None, limit: int) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            items, cursor = aggregates.customers_by_email("Buyers@acme.example", channel, limit, cursor)
            pages.append([view.id for view in items])
            if cursor is None:
                return pages
            cursors.append(cursor)

    assert every_page(None, 2) == [["cus_0", "cus_1"], ["cus_2", "cus_3"], ["cus_4"]]
    cursors.clear()
    assert every_page("web", 1) == [["cus_0"], ["cus_2"], ["cus_4"]]
    # A web key's cursors name only web customers (a cursor is base64, not a secret).
    assert [json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)))["k"]["sk"]["S"] for c in cursors] == [
        "cus_0",
        "cus_2",
    ]
    assert every_page("web", 25) == [["cus_0", "cus_2", "cus_4"]]
    cursor = aggregates.customers_by_email("buyers@acme.example", None, 2, None)[1]
    with pytest.raises(InvalidCursor):  # a cursor of another address's search
        aggregates.customers_by_email("other@acme.example", None, 2, cursor)


def test_report_partitions_are_read_report_readers_at_a_time_and_come_back_in_their_order(aws):
    from infra.local.moto_patches import lock

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    pks = [f"report#products#USD#web#2025-01-{day:02d}" for day in range(1, 26)]
    for n, pk in enumerate(pks):
        store.apply(AggregateChange(f"ord_{n}", 1, [CounterUpdate(pk, f"SKU{n:02d}", {"units": Decimal(1)})]))
    # The first REPORT_READERS queries wait for one another: read one after another, the first
    # would wait alone and break the barrier.
    together = threading.Barrier(REPORT_READERS, timeout=10)
    guard = threading.Lock()
    counts = {"started": 0, "in_flight": 0, "most": 0}

    def before(**_: Any) -> None:
        with guard:
            counts["started"] += 1
            counts["in_flight"] += 1
            counts["most"] = max(counts["most"], counts["in_flight"])
            first = counts["started"] <= REPORT_READERS
        if first:
            together.wait()

    def after(**_: Any) -> None:
        with guard:
            counts["in_flight"] -= 1

    aws.dynamodb.meta.events.register("before-call.dynamodb.Query", before)
    aws.dynamodb.meta.events.register("after-call.dynamodb.Query", after)
    with lock.PATCH.registered():  # moto itself is not thread-safe; each request stays atomic, as on AWS
        rows = store.report_rows(pks)

    assert [sk for sk, _ in rows] == [f"SKU{n:02d}" for n in range(25)]
    assert counts == {"started": 25, "in_flight": 0, "most": REPORT_READERS}


# Enough orders (of seed 1) over 420 days that every channel but b2b has rows in each currency's year, and the
# top 5 of a report leaves rows out.
YEAR_ORDERS = 30


def test_a_year_long_report_adds_up_every_stored_row_of_its_days_and_channel_reading_only_those(aws):
    from tests.unit.test_aggregates import MemoryStore, line, order, then

    counted = MemoryStore()
    chance = random.Random(1)
    days = []
    for n in range(YEAR_ORDERS):
        day = date(2024, 12, 1) + timedelta(days=chance.randrange(420))  # some outside the year asked
        days.append(day)
        lines = [line(f"L{k}", f"SKU{chance.randrange(12)}", chance.randint(1, 3), f"{chance.randint(1, 90)}.25",
                      f"{chance.randint(0, 1)}.00") for k in range(chance.randint(1, 3))]  # fmt: skip
        placed = order(
            id=f"ord_{n}", channel=chance.choice(["web", "pos", "app"]), currency=chance.choice(["USD", "USD", "EUR"]),
            customer={"id": f"cus_{chance.randrange(15)}", "email": "a@example.com"}, lines=lines,
            shipping_address={"country": chance.choice(["US", "DE"]), "region": chance.choice(["CA", None])},
            created_at=f"{day}T{chance.randrange(24):02d}:00:00Z",
        )  # fmt: skip
        docs = [placed, then(placed, status="allocated")]
        ending = chance.choice(["kept", "cancelled", "returned"])
        if ending == "cancelled":
            docs.append(then(docs[-1], status="cancelled"))
        elif ending == "returned":
            returned = [{**lines[0], "returned_quantity": 1}, *lines[1:]]
            docs.append(then(docs[-1], status="partially_returned", lines=returned))
        for old, new in zip([None, *docs], docs, strict=False):
            counted.apply(aggregate_change(old, new))
    # The counters the changes add up to, stored as they are (the adapter's transactions on moto
    # would take most of a minute; applying them is tested above).
    stored = [{"pk": pk, "sk": sk, **item} for (pk, sk), item in counted.items.items() if pk.startswith("report")]
    with boto3.resource("dynamodb", region_name="us-east-1").Table(aws.tables["CatalogTable"]).batch_writer() as batch:
        for item in stored:
            batch.put_item(Item=item)
    queries = []
    aws.dynamodb.meta.events.register("before-call.dynamodb.Query", lambda **_: queries.append(1))
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    service = Aggregates(store, lambda: datetime(2025, 12, 31, tzinfo=UTC))
    start, end = date(2025, 1, 1), date(2026, 1, 1)
    empty = set()
    assert min(days) < start and max(days) >= end  # days on either side of the year asked
    left_out = 0  # reports whose top `limit` leave rows out

    for kind, currency, channel, limit in itertools.product(
        ReportKind, ["USD", "EUR"], [None, "web", "pos", "app", "b2b"], [5]
    ):
        # What reading every day of every channel one after another added up to.
        partitions = {
            item["pk"]
            for item in stored
            if item["pk"].startswith(f"report#{kind.value}#{currency}#")
            and start.isoformat() <= item["pk"].rsplit("#", 1)[1] <= end.isoformat()
            and channel in (None, item["pk"].split("#")[3])
        }
        expected = top_rows(kind, currency, [(item["sk"], item) for item in stored if item["pk"] in partitions], limit)
        left_out += len({item["sk"] for item in stored if item["pk"] in partitions}) > limit
        queries.clear()

        top = service.report(kind, currency, start=start, end=end, channel=channel, limit=limit)

        assert top == expected
        assert len(queries) == 1 + len(partitions)  # the day registry, then only partitions with rows
        if not top:
            empty.add(channel)
    assert empty == {"b2b"}  # every other report had rows to add up
    assert left_out > 0


def test_an_address_is_found_whether_its_accents_were_sent_composed_or_decomposed(aws):
    # "josé@" arrives precomposed (é, U+00E9) from one storefront and decomposed (e + U+0301) from
    # another (a pasted address, macOS text): both are the same address to a person, and support
    # typing it found nothing when the order had carried the other form.
    import unicodedata

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    at = "2026-12-01T10:00:00.000000Z"
    composed, decomposed = (unicodedata.normalize(form, "José@Example.com") for form in ("NFC", "NFD"))
    assert composed != decomposed
    store.apply(AggregateChange("ord_nfd", 1, [], CustomerSeen("cus_nfd", "web", decomposed, at)))
    store.apply(AggregateChange("ord_nfc", 1, [], CustomerSeen("cus_nfc", "web", composed, at)))

    for searched in (composed, decomposed, composed.upper()):
        assert store.customer_ids(searched, None, 25, None) == (["cus_nfc", "cus_nfd"], None), ascii(searched)


def test_an_address_indexed_decomposed_before_addresses_were_normalized_is_still_found_once(aws):
    # Before, the index key was the address as the order gave it, lower-cased: a decomposed one's
    # customers are under that key. A search finds them after the normalized key's, each once
    # (one who has ordered since is under both), a page at a time.
    import unicodedata

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    at = "2026-12-01T10:00:00.000000Z"
    decomposed = unicodedata.normalize("NFD", "zoë@example.com")
    for customer_id in ("cus_old1", "cus_old2", "cus_both"):  # as the earlier code wrote them
        aws.dynamodb.put_item(
            TableName=aws.tables["CatalogTable"],
            Item={"pk": {"S": f"customer-email#{decomposed}"}, "sk": {"S": customer_id}, "channels": {"SS": ["web"]}},
        )
    store.apply(AggregateChange("ord_new", 1, [], CustomerSeen("cus_new", "web", decomposed, at)))
    store.apply(AggregateChange("ord_both", 1, [], CustomerSeen("cus_both", "web", decomposed, at)))

    every = ["cus_both", "cus_new", "cus_old1", "cus_old2"]
    for searched in (unicodedata.normalize("NFC", "ZOË@example.com"), decomposed):
        assert store.customer_ids(searched, None, 25, None) == (every, None)
        pages, cursor = [], None
        while True:
            found, cursor = store.customer_ids(searched, "web", 1, cursor)
            pages.append(found)
            if cursor is None:
                break
        assert pages == [["cus_both"], ["cus_new"], ["cus_old1"], ["cus_old2"]]
        # A page of three ends in the older key's partition: its cursor names that partition, so
        # the next page goes on after cus_old1 there (not back in the first, showing it twice).
        shown, cursor = [], None
        while True:
            found, cursor = store.customer_ids(searched, "web", 3, cursor)
            shown.append(found)
            if cursor is None:
                break
        assert shown == [["cus_both", "cus_new", "cus_old1"], ["cus_old2"]]
    assert store.customer_ids("zoe@example.com", None, 25, None) == ([], None)  # another address


def test_a_parked_allocation_replayed_after_the_cancel_leaves_every_day_as_it_was(aws, wired):  # noqa: F811
    # EventsFailuresAlarm's runbook replays a parked record after the mapping went on with the
    # order's later ones: the cancel, applied first, took the backorder's revenue out of the day it
    # was placed (no filing yet), and the allocation then counted it on its own day: the 1st showed
    # -22.00 for the T-shirts, the 20th +22.00, for an order that counts nowhere.
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = priced_order(id="ord_parked1", status=OrderStatus.BACKORDERED)
    orders.add(placed, HistoryEntry(at=UPDATED_AT, type="created", to_status=placed.status, actor="k"), "tok")
    created = stored_item(aws, placed.id)
    allocated_on = UPDATED_AT + timedelta(days=19)
    allocated = placed.model_copy(update={"status": OrderStatus.ALLOCATED, "version": 2, "updated_at": allocated_on})
    orders.update(allocated, placed, [])
    allocated_item = stored_item(aws, placed.id)
    cancelled = allocated.model_copy(
        update={"status": OrderStatus.CANCELLED, "version": 3, "updated_at": allocated_on + timedelta(days=1)}
    )
    orders.update(cancelled, allocated, [])
    aggregates = container().aggregates

    for batch in [(("INSERT", None, created),), (("MODIFY", allocated_item, stored_item(aws, placed.id)),),
                  (("MODIFY", created, allocated_item),)]:  # fmt: skip
        assert lambda_handler(stream_event(*batch), Context()) == {"batchItemFailures": []}

    for day in (DAY, allocated_on.date(), allocated_on.date() + timedelta(days=1)):
        for kind in ReportKind:
            assert aggregates.report(kind, "USD", start=day, end=day, channel=None, limit=10) == [], (day, kind)
    assert aggregates.customer("cus_1", None).totals[0].ordered.amount == Decimal("0.00")


def test_a_parked_send_back_replayed_after_the_allocation_again_takes_the_revenue_out_of_its_first_day(aws, wired):  # noqa: F811
    # The same runbook's replay, of a store's reject (allocated -> authorized) after the order was
    # allocated again two days later: the reject read the filing the second allocation had just
    # written and took the first allocation's revenue out of the 22nd, leaving it on the 20th and
    # the 22nd at -30.00. Each filing is on record with its version (Filing.day_before).
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = priced_order(id="ord_parked3", status=OrderStatus.BACKORDERED)
    orders.add(placed, HistoryEntry(at=UPDATED_AT, type="created", to_status=placed.status, actor="k"), "tok")
    items = [stored_item(aws, placed.id)]
    first_on = UPDATED_AT + timedelta(days=19)
    versions = [placed]
    for status, at in [(OrderStatus.ALLOCATED, first_on), (OrderStatus.AUTHORIZED, first_on + timedelta(days=1)),
                       (OrderStatus.ALLOCATED, first_on + timedelta(days=2))]:  # fmt: skip
        version = versions[-1].model_copy(update={"status": status, "version": len(versions) + 1, "updated_at": at})
        orders.update(version, versions[-1], [])
        versions.append(version)
        items.append(stored_item(aws, placed.id))
    aggregates = container().aggregates
    insert = ("INSERT", None, items[0])
    allocation, reject, again = (("MODIFY", old, new) for old, new in itertools.pairwise(items))

    for batch in [(insert, allocation), (again,), (reject,)]:  # the reject parked, then replayed
        assert lambda_handler(stream_event(*batch), Context()) == {"batchItemFailures": []}

    def report(day: date) -> list[tuple[str, int, str]]:
        rows = aggregates.report(ReportKind.PRODUCTS, "USD", start=day, end=day, channel=None, limit=10)
        return [(row.sku, row.units, str(row.revenue.amount)) for row in rows]

    assert report(first_on.date()) == []
    assert report(first_on.date() + timedelta(days=2)) == [("TSHIRT", 2, "22.00"), ("MUG", 1, "8.00")]


def test_a_replacements_first_record_replayed_after_its_cancel_leaves_ordered_as_it_was(aws, wired):  # noqa: F811
    # The same runbook's replay, of a replacement's first record after its cancel: the cancel,
    # finding no credit on record, took its whole grand total out of `ordered`, and the first
    # record then counted it less its credit: 9.50 less ordered than the customer's payments keep.
    from functions.adapters.dynamodb import DynamoOrders
    from functions.events.app import container, lambda_handler

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    placed = priced_order(
        id="ord_parked2", status=OrderStatus.AUTHORIZED, exchange_of="rma_1", exchange_credit=usd("9.50")
    )
    orders.add(placed, HistoryEntry(at=UPDATED_AT, type="created", to_status=placed.status, actor="k"), "tok")
    created = stored_item(aws, placed.id)
    allocated = placed.model_copy(update={"status": OrderStatus.ALLOCATED, "version": 2})
    orders.update(allocated, placed, [])
    allocated_item = stored_item(aws, placed.id)
    orders.update(allocated.model_copy(update={"status": OrderStatus.CANCELLED, "version": 3}), allocated, [])
    aggregates = container().aggregates

    for batch in [(("MODIFY", created, allocated_item),), (("MODIFY", allocated_item, stored_item(aws, placed.id)),),
                  (("INSERT", None, created),)]:  # fmt: skip
        assert lambda_handler(stream_event(*batch), Context()) == {"batchItemFailures": []}

    total = aggregates.customer("cus_1", None).totals[0]
    assert (total.ordered.amount, total.refunded.amount) == (Decimal("0.00"), Decimal("0.00"))
    assert aggregates.report(ReportKind.PRODUCTS, "USD", start=DAY, end=DAY, channel=None, limit=10) == []


def _writes(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every DynamoDB write request `client` sends from now on: (operation, parameters)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"):
            sent.append((model.name, params))

    client.meta.events.register("provide-client-params.dynamodb", record)
    return sent


def test_a_days_channel_registry_is_written_once_per_container_and_every_report_still_finds_the_channel(aws):
    # Every allocation, cancel and return wrote the day's registry item again (a write unit each,
    # a sixteenth of an order's): the item only ever gains channels, so a store that wrote it knows.
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    sent = _writes(aws.dynamodb)
    orders = [priced_order(id=f"ord_reg{n}", status=OrderStatus.ALLOCATED).model_dump(mode="json") for n in range(3)]
    for document in orders:
        assert store.apply(aggregate_change({**document, "status": "authorized"}, document)) is True
    cancelled = {**orders[0], "status": "cancelled", "version": orders[0]["version"] + 1}
    assert store.apply(aggregate_change(orders[0], cancelled, store.filing, store.went_by)) is True

    registry = [
        params
        for name, params in sent
        if name == "UpdateItem" and params["Key"]["pk"]["S"].startswith("report-channels#")
    ]
    assert len(registry) == 1
    aggregates = Aggregates(store, lambda: datetime.combine(DAY, datetime.min.time(), UTC))
    top = aggregates.report(ReportKind.PRODUCTS, "USD", start=DAY, end=DAY, channel=None, limit=10)
    assert [(row.sku, row.units) for row in top] == [("TSHIRT", 4), ("MUG", 2)]

    # Another container (a store of its own) knows nothing of it: it writes the registry first.
    other = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    pos = priced_order(id="ord_reg_pos", status=OrderStatus.ALLOCATED, channel="pos").model_dump(mode="json")
    assert other.apply(aggregate_change({**pos, "status": "authorized"}, pos)) is True
    registry = [
        params
        for name, params in sent
        if name == "UpdateItem" and params["Key"]["pk"]["S"].startswith("report-channels#")
    ]
    assert len(registry) == 2
    assert store.report_channels("USD", DAY.isoformat(), DAY.isoformat()) == {DAY.isoformat(): ["pos", "web"]}


def _placed(order_id: str, at: str, email: str = "bo@example.com", name: str = "Bo") -> dict[str, Any]:
    return {
        "id": order_id, "version": 1, "status": "pending", "channel": "web", "currency": "USD",
        "customer": {"id": "cus_9", "email": email, "name": name}, "lines": [],
        "totals": {"grand_total": {"amount": "10.00", "currency": "USD"}},
        "payment": {"refunded": {"amount": "0.00", "currency": "USD"}},
        "shipping_address": {"country": "US"}, "created_at": at,
    }  # fmt: skip


def test_a_new_orders_customer_counters_and_order_times_are_one_write_of_its_row(aws):
    # The placing's transaction added the customer's counters, then an update of the same row set
    # its first and last order times: a write unit per order spent on a row the transaction wrote.
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    sent = _writes(aws.dynamodb)

    assert store.apply(aggregate_change(None, _placed("ord_n1", "2026-12-01T10:00:00Z"))) is True

    assert [name for name, _ in sent] == ["TransactWriteItems", "UpdateItem"]  # counters and times; the email index
    assert sent[1][1]["Key"]["pk"]["S"] == "customer-email#bo@example.com"
    item = store.customer_items("cus_9")["web"]
    assert (item["orders_count"], item["ordered_USD"]) == (1, Decimal("10.00"))
    assert item["first_order_at"] == item["last_order_at"] == "2026-12-01T10:00:00.000000Z"
    assert (item["email"], item["name"]) == ("bo@example.com", "Bo")


def test_a_customers_orders_arriving_in_any_order_or_twice_count_once_and_keep_the_first_and_the_latest(aws):
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    arrivals = [
        ("ord_b", "2026-12-01", "bo@b.example"),
        ("ord_c", "2026-12-02", "bo@c.example"),
        ("ord_a", "2026-11-30", "bo@a.example"),  # older than both: its row's times stay but the first
        ("ord_c", "2026-12-02", "bo@c.example"),  # redelivered
        ("ord_b", "2026-12-01", "bo@b.example"),  # redelivered, older than the latest
    ]
    for order_id, day, email in arrivals:
        store.apply(aggregate_change(None, _placed(order_id, f"{day}T10:00:00Z", email, email[3])))

    item = store.customer_items("cus_9")["web"]
    assert (item["orders_count"], item["ordered_USD"]) == (3, Decimal("30.00"))
    assert (item["first_order_at"], item["last_order_at"]) == (
        "2026-11-30T10:00:00.000000Z",
        "2026-12-02T10:00:00.000000Z",
    )
    assert (item["email"], item["name"]) == ("bo@c.example", "c")
    for email in ("bo@a.example", "bo@b.example", "bo@c.example"):
        assert store.customer_ids(email, "web", 25, None) == (["cus_9"], None)


def test_a_placing_whose_counters_an_earlier_version_applied_without_its_times_gets_them_when_redelivered(aws):
    # An earlier version wrote the times after the counters' transaction: one that stopped between
    # left the row without them, and the record, delivered again, finds its marker.
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    change = aggregate_change(None, _placed("ord_half", "2026-12-01T10:00:00Z"))
    assert store.apply(replace(change, seen=None)) is True

    store.apply(change)

    item = store.customer_items("cus_9")["web"]
    assert item["orders_count"] == 1
    assert item["first_order_at"] == item["last_order_at"] == "2026-12-01T10:00:00.000000Z"
    assert store.customer_ids("bo@example.com", None, 25, None) == (["cus_9"], None)


def _named(order_id: str, at: str, name: str | None, channel: str = "web") -> dict[str, Any]:
    """A placed order of cus_9's in `channel`, with `name` given or (None) not."""
    placed = _placed(order_id, at, f"bo+{order_id}@example.com")
    customer = {"id": "cus_9", "email": placed["customer"]["email"], **({"name": name} if name else {})}
    return {**placed, "channel": channel, "customer": customer}


def test_the_name_shown_is_the_latest_named_orders_when_an_older_named_order_arrives_after_a_later_nameless_one(aws):
    # README: `name` is the latest order's that gave one. Bo ordered as "Bo Byron" (1st), as "Bo
    # Lovelace" (2nd) and then without a name (3rd); the stream orders each order's changes, not
    # orders among them, and the 2nd came last: its name was set only where the row had none, so
    # the customer went on showing "Bo Byron", a name two orders old.
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    for order in (
        _named("ord_1st", "2026-12-01T10:00:00Z", "Bo Byron"),
        _named("ord_3rd", "2026-12-03T10:00:00Z", None),
        _named("ord_2nd", "2026-12-02T10:00:00Z", "Bo Lovelace"),
        _named("ord_1st", "2026-12-01T10:00:00Z", "Bo Byron"),  # redelivered, older than both
    ):
        store.apply(aggregate_change(None, order))

    customer = Aggregates(store, utc_now).customer("cus_9", None)
    assert (customer.name, customer.email, customer.orders_count) == ("Bo Lovelace", "bo+ord_3rd@example.com", 3)


def test_a_customer_of_two_channels_shows_the_name_of_their_latest_named_order_in_either(aws):
    # Bo gave a name on the web (1st) and at the till (2nd), then ordered on the web without one
    # (3rd): the web row, whose last order is the latest, kept the 1st order's name, and the view
    # over both channels showed it though the till's order named Bo later.
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    for order in (
        _named("ord_1st", "2026-12-01T10:00:00Z", "Bo Byron", channel="web"),
        _named("ord_2nd", "2026-12-02T10:00:00Z", "Bo Lovelace", channel="pos"),
        _named("ord_3rd", "2026-12-03T10:00:00Z", None, channel="web"),
    ):
        store.apply(aggregate_change(None, order))

    aggregates = Aggregates(store, utc_now)
    assert (aggregates.customer("cus_9", None).name, aggregates.customer("cus_9", None).email) == (
        "Bo Lovelace",
        "bo+ord_3rd@example.com",
    )
    assert aggregates.customer("cus_9", "web").name == "Bo Byron"  # the web's orders alone
    assert aggregates.customer("cus_9", "pos").name == "Bo Lovelace"


def test_a_row_named_before_names_were_timed_keeps_its_name_unless_a_later_order_names_the_customer(aws):
    # A row written before `name_at` holds a name from an order of unknown time: a late older
    # order's name does not replace it (it may be older still); the next latest named order does.
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    store.apply(aggregate_change(None, _named("ord_2nd", "2026-12-02T10:00:00Z", "Bo Lovelace")))
    store.apply(aggregate_change(None, _named("ord_3rd", "2026-12-03T10:00:00Z", None)))
    aws.dynamodb.update_item(
        TableName=aws.tables["CatalogTable"], Key={"pk": {"S": "customer#cus_9"}, "sk": {"S": "web"}},
        UpdateExpression="REMOVE name_at",
    )  # fmt: skip

    store.apply(aggregate_change(None, _named("ord_1st", "2026-12-01T10:00:00Z", "Bo Byron")))
    assert Aggregates(store, utc_now).customer("cus_9", None).name == "Bo Lovelace"

    store.apply(aggregate_change(None, _named("ord_4th", "2026-12-04T10:00:00Z", "Bo King")))
    store.apply(aggregate_change(None, _named("ord_0th", "2026-11-30T10:00:00Z", "Bo Zero")))
    assert Aggregates(store, utc_now).customer("cus_9", None).name == "Bo King"


def test_a_nameless_customer_named_by_a_late_older_order_is_renamed_by_a_later_one_arriving_after_it(aws):
    # The late order's counters set its name where the row had none (with no time): its own times'
    # write then times it, so a named order between it and the latest still names the customer.
    from core.models import utc_now

    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    for order in (
        _named("ord_3rd", "2026-12-03T10:00:00Z", None),
        _named("ord_1st", "2026-12-01T10:00:00Z", "Bo Byron"),
        _named("ord_2nd", "2026-12-02T10:00:00Z", "Bo Lovelace"),
    ):
        store.apply(aggregate_change(None, order))

    assert Aggregates(store, utc_now).customer("cus_9", None).name == "Bo Lovelace"
    assert store.customer_items("cus_9")["web"]["name_at"] == "2026-12-02T10:00:00.000000Z"


@pytest.mark.parametrize(
    "arrival",
    [(0, 2, 3, 4, 5, 1), (2, 3, 4, 5, 0, 1)],
    ids=["first-allocation-parked", "placing-and-first-allocation-parked"],
)
def test_a_parked_first_allocation_replayed_after_the_return_goes_by_the_day_the_earliest_later_change_read(
    aws, arrival: tuple[int, ...]
):
    # The unit journey on DynamoDB's markers: the first allocation (20 November) parked, replayed
    # after the send-back, the allocation again (23rd), its ship and a return. The send-back, with
    # no filing yet, took the revenue out of the 1st; the return read the 23rd. The allocation goes
    # by the earliest later marker (the 1st), so the 1st nets out. Going by the latest (the 23rd)
    # left the 1st below zero for the T-shirts: the fake store keeps "earliest wins", and no test
    # held the DynamoDB query of the markers to it.
    from tests.unit.test_aggregates import MemoryStore, customer_totals, every_report, sent_back_and_allocated_again

    records = sent_back_and_allocated_again("2026-11-01", "2026-11-20")
    in_order = MemoryStore()
    for old, new in records:
        in_order.apply(aggregate_change(old, new, in_order.filing, in_order.went_by))
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])

    for old, new in (records[index] for index in arrival):
        store.apply(aggregate_change(old, new, store.filing, store.went_by))

    assert every_report(store) == every_report(in_order)
    assert customer_totals(store) == customer_totals(in_order)


def test_a_day_and_a_customer_with_more_rows_than_a_page_holds_are_reported_whole(aws):
    # A query page stops at 1 MB (a busy day's thousands of SKUs, a customer's every channel): every
    # LastEvaluatedKey is followed, here with pages of two rows, so the report lists every SKU and
    # the customer's totals count every channel's row.
    from tests.unit.test_aggregates import MemoryStore, line, order, then

    lines = [line(f"L{n}", f"SKU{n}", 1, f"{n}.00") for n in range(1, 6)]
    records = []
    for n, channel in enumerate(("web", "till", "market")):
        placed = order(id=f"ord_{n}", channel=channel, lines=lines, created_at="2026-11-01T10:00:00Z")
        records += [(None, placed), (placed, then(placed, status="allocated"))]
    counted = MemoryStore()
    store = DynamoAggregates(aws.dynamodb, aws.tables["CatalogTable"])
    for old, new in records:
        counted.apply(aggregate_change(old, new, counted.filing, counted.went_by))
        store.apply(aggregate_change(old, new, store.filing, store.went_by))

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["Limit"] = 2

    aws.dynamodb.meta.events.register("before-parameter-build.dynamodb.Query", small_pages)
    day = date(2026, 11, 1)
    views = []
    for source in (store, counted):
        service = Aggregates(source, lambda: datetime(2026, 12, 1, tzinfo=UTC))
        products = service.report(ReportKind.PRODUCTS, "USD", start=day, end=day, channel=None, limit=10)
        views.append(([row.model_dump(mode="json") for row in products], service.customer("cus_1", None)))
    aws.dynamodb.meta.events.unregister("before-parameter-build.dynamodb.Query", small_pages)

    assert views[0] == views[1]
    assert [row["sku"] for row in views[0][0]] == [f"SKU{n}" for n in range(5, 0, -1)]
    assert views[0][1].orders_count == 3
