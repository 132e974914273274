"""Customer and report aggregates: the counter deltas of order changes, and the views read from them."""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from core.aggregates import (
    AggregateChange,
    Aggregates,
    Filing,
    ReportKind,
    WentBy,
    aggregate_change,
    email_key,
    line_revenue_kept,
    merged,
    report_pk,
    units_refund_refused,
)
from core.errors import InvalidRequest, NotFound


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def line(line_id: str, sku: str, quantity: int, price: str, discount: str = "0.00", **extra: Any) -> dict[str, Any]:
    return {
        "line_id": line_id,
        "sku": sku,
        "quantity": quantity,
        "unit_price": money(price),
        "discount": money(discount),
        "tax": money("0.00"),
        "total": money("0.00"),
        **extra,
    }


def order(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "ord_1",
        "status": "pending",
        "channel": "web",
        "currency": "USD",
        "customer": {"id": "cus_1", "email": "Ada@Example.com", "name": "Ada"},
        "lines": [line("L1", "TSHIRT", 2, "10.00", "1.00"), line("L2", "MUG", 1, "5.50")],
        "shipping_address": {"country": "US", "region": "CA", "city": "SF", "postal_code": "1", "line1": "x"},
        "totals": {"grand_total": money("27.50")},
        "payment": {"refunded": money("0.00")},
        "created_at": "2026-12-01T10:00:00Z",
        "version": 1,
    }
    doc.update(copy.deepcopy(changes))
    return doc


def then(old: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return order(**{**old, "version": old["version"] + 1, **changes})


class MemoryStore:
    """The store's contract in memory: a change applies once per (order, version)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        self.applied: set[tuple[str, int]] = set()
        self.partitions_read: list[str] = []
        self.filed: dict[str, Filing] = {}
        self.filings_read: list[str] = []
        self.went: list[tuple[str, int, WentBy]] = []

    def apply(self, change: AggregateChange) -> bool:
        if (change.order_id, change.version) in self.applied:
            return False
        self.applied.add((change.order_id, change.version))
        self.went.append((change.order_id, change.version, change.went_by))
        was = self.filed.get(change.order_id, Filing())
        if change.filed_on is not None:
            self.filed[change.order_id] = Filing(
                change.filed_on, was.credit, (*was.days, (change.version, change.filed_on))
            )
        for update in change.updates:
            item = self.items[(update.pk, update.sk)]
            for attribute, delta in update.add.items():
                item[attribute] = item.get(attribute, Decimal(0)) + delta
            for attribute, value in update.set.items():
                item.setdefault(attribute, value)
        for pk, sk, channel in change.report_days:
            self.items[(pk, sk)].setdefault("channels", set()).add(channel)
        if change.seen is not None:
            item = self.items[(f"customer#{change.seen.customer_id}", change.seen.channel)]
            named = {"name": change.seen.name, "name_at": change.seen.at} if change.seen.name else {}
            if "last_order_at" not in item or item["last_order_at"] < change.seen.at:
                item.update({"email": change.seen.email, **named})
            elif named and (
                item["name_at"] < change.seen.at if "name_at" in item else item.get("name") in (None, named["name"])
            ):
                item.update(named)  # an older order's name, later than the one shown (or the first timed)
            item["first_order_at"] = min(item.get("first_order_at", change.seen.at), change.seen.at)
            item["last_order_at"] = max(item.get("last_order_at", change.seen.at), change.seen.at)
            email = self.items[email_key(change.seen.email, change.seen.customer_id)]
            email.setdefault("channels", set()).add(change.seen.channel)
        return True

    def filing(self, order_id: str) -> Filing:
        self.filings_read.append(order_id)
        return self.filed.get(order_id, Filing())

    def went_by(self, order_id: str, version: int) -> WentBy:
        later = sorted((v, went) for o, v, went in self.went if o == order_id and v > version)
        days = [went.day for _, went in later if went.day is not None]
        credits = [went.credit for _, went in later if went.credit is not None]
        return WentBy(days[0] if days else None, credits[0] if credits else None)

    def customer_items(self, customer_id: str) -> dict[str, dict[str, Any]]:
        return {sk: item for (pk, sk), item in self.items.items() if pk == f"customer#{customer_id}"}

    def report_channels(self, currency: str, start: str, end: str) -> dict[str, list[str]]:
        pk = f"report-channels#{currency}"
        return {sk: sorted(item["channels"]) for (p, sk), item in self.items.items() if p == pk and start <= sk <= end}

    def customer_ids(
        self, email: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        found = sorted(
            sk
            for (pk, sk), item in self.items.items()
            if pk == email_key(email, "")[0] and (channel is None or channel in item["channels"])
        )
        after = [sk for sk in found if cursor is None or sk > cursor]
        return after[:limit], after[limit - 1] if len(after) > limit else None

    def report_rows(self, pks: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        self.partitions_read.extend(pks)
        return [(sk, item) for pk in pks for (p, sk), item in self.items.items() if p == pk]


def replay(store: MemoryStore, *docs: dict[str, Any]) -> None:
    previous = None
    for doc in docs:
        store.apply(aggregate_change(previous, doc, store.filing))
        previous = doc


def service(store: MemoryStore) -> Aggregates:
    return Aggregates(store, lambda: datetime(2026, 12, 1, 18, tzinfo=UTC))


def products(store: MemoryStore, **kwargs: Any) -> list[dict[str, Any]]:
    rows = service(store).report(
        ReportKind.PRODUCTS, "USD", start=kwargs.get("start"), end=kwargs.get("end"),
        channel=kwargs.get("channel"), limit=kwargs.get("limit", 10),
    )  # fmt: skip
    return [row.model_dump(mode="json") for row in rows]


def test_a_line_counts_quantity_times_price_less_discount_and_returned_units_come_out_at_their_share():
    assert line_revenue_kept(line("L1", "A", 3, "10.00", "1.00"), "USD") == (3, Decimal("29.00"))
    # 29.00 * 1/3 = 9.666... rounds half-even to 9.67
    assert line_revenue_kept(line("L1", "A", 3, "10.00", "1.00", returned_quantity=1), "USD") == (2, Decimal("19.33"))
    assert line_revenue_kept(line("L1", "A", 3, "10.00", "1.00", returned_quantity=3), "USD") == (0, Decimal("0.00"))


def test_revenue_is_counted_at_allocation_not_before():
    store = MemoryStore()
    placed = order()
    authorized = then(placed, status="authorized")
    replay(store, placed, authorized)
    assert products(store) == []

    replay(store, authorized, then(authorized, status="allocated"))

    assert products(store) == [
        {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")},
        {"sku": "MUG", "units": 1, "revenue": money("5.50")},
    ]


def test_cancelling_an_allocated_order_takes_its_revenue_out_of_the_day_that_counted_it():
    store = MemoryStore()
    placed = order()
    allocated = then(placed, status="allocated")
    replay(store, placed, allocated, then(allocated, status="cancelled"))

    assert products(store) == []
    assert service(store).report(ReportKind.REGIONS, "USD", start=None, end=None, channel=None, limit=10) == []
    view = service(store).customer("cus_1", None)
    assert view.orders_count == 1
    assert view.totals[0].ordered.amount == Decimal("0.00")


def day_report(store: MemoryStore, day: date, kind: ReportKind = ReportKind.PRODUCTS) -> list[dict[str, Any]]:
    rows = service(store).report(kind, "USD", start=day, end=day, channel=None, limit=10)
    return [row.model_dump(mode="json") for row in rows]


def backorder_allocated_later() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Placed on 1 November, backordered, allocated on 20 November when its stock arrived."""
    placed = order(created_at="2026-11-01T23:00:00Z", updated_at="2026-11-01T23:00:00Z")
    backordered = then(placed, status="backordered", updated_at="2026-11-01T23:00:01Z")
    allocated = then(backordered, status="allocated", updated_at="2026-11-20T08:00:00Z")
    return placed, backordered, allocated


def test_a_backorder_allocated_weeks_later_counts_on_its_allocation_day_and_comes_out_of_it():
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    replay(store, placed, backordered, allocated)

    assert day_report(store, date(2026, 11, 1)) == []
    assert day_report(store, date(2026, 11, 20)) == [
        {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")},
        {"sku": "MUG", "units": 1, "revenue": money("5.50")},
    ]
    # Shipped and delivered: no revenue moves, so the filing is never read.
    shipped = then(allocated, status="shipped", updated_at="2026-11-21T08:00:00Z")
    delivered = then(shipped, status="delivered", updated_at="2026-11-22T08:00:00Z")
    store.apply(aggregate_change(allocated, shipped, store.filing))
    store.apply(aggregate_change(shipped, delivered, store.filing))
    assert store.filings_read == []
    # A return received a month later takes its units out of the day that counted them.
    returned = then(
        delivered,
        status="partially_returned",
        lines=[line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")],
        updated_at="2026-12-20T08:00:00Z",
    )
    change = aggregate_change(delivered, returned, store.filing)
    store.apply(change)
    assert store.apply(change) is False  # redelivered: nothing moves twice
    assert day_report(store, date(2026, 11, 20)) == [
        {"sku": "TSHIRT", "units": 1, "revenue": money("9.50")},
        {"sku": "MUG", "units": 1, "revenue": money("5.50")},
    ]
    assert day_report(store, date(2026, 12, 20)) == [] and day_report(store, date(2026, 11, 1)) == []


def test_a_backorder_cancelled_after_its_later_allocation_leaves_every_day_as_it_was():
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    cancelled = then(allocated, status="cancelled", updated_at="2026-11-25T08:00:00Z")
    replay(store, placed, backordered, allocated, cancelled)

    for day in (date(2026, 11, 1), date(2026, 11, 20), date(2026, 11, 25)):
        assert day_report(store, day) == []
        assert day_report(store, day, ReportKind.CUSTOMERS) == []


def test_an_order_sent_back_to_sourcing_and_allocated_again_later_moves_its_revenue_to_that_day():
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    again = then(allocated, status="backordered", updated_at="2026-11-21T08:00:00Z")  # a store rejected it
    reallocated = then(again, status="allocated", updated_at="2026-11-23T08:00:00Z")
    cancelled = then(reallocated, status="cancelled", updated_at="2026-11-24T08:00:00Z")
    replay(store, placed, backordered, allocated, again, reallocated)

    assert day_report(store, date(2026, 11, 20)) == []
    assert [row["units"] for row in day_report(store, date(2026, 11, 23))] == [2, 1]

    store.apply(aggregate_change(reallocated, cancelled, store.filing))
    assert day_report(store, date(2026, 11, 23)) == []


def test_an_order_counted_before_the_filing_rule_keeps_its_revenue_on_the_day_it_was_placed():
    # A consumer before this change filed every order's revenue under the day it was placed and
    # recorded no filing: a cancel after the deploy takes it out of that day, not its allocation's.
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    as_filed_before = {**allocated, "updated_at": placed["created_at"]}
    replay(store, placed, backordered, as_filed_before)
    assert [row["units"] for row in day_report(store, date(2026, 11, 1))] == [2, 1]

    store.apply(aggregate_change(allocated, then(allocated, status="cancelled"), store.filing))

    assert day_report(store, date(2026, 11, 1)) == [] and day_report(store, date(2026, 11, 20)) == []
    assert day_report(store, date(2026, 11, 20), ReportKind.REGIONS) == []


def test_an_order_filed_before_filings_had_versions_is_moved_on_the_day_on_record():
    # A filing item written before each filing kept its version holds the day alone: a later change
    # goes by it, whatever its version.
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    replay(store, placed, backordered, allocated)
    store.filed[allocated["id"]] = Filing("2026-11-20")  # as the earlier version recorded it

    store.apply(aggregate_change(allocated, then(allocated, status="cancelled"), store.filing))

    assert day_report(store, date(2026, 11, 20)) == [] and day_report(store, date(2026, 11, 1)) == []


def exchanged(store: MemoryStore, original_refunded: str = "0.00") -> dict[str, Any]:
    """Ada's order of 27.50, delivered; one T-shirt (worth 9.50) comes back and is exchanged: its
    refund becomes the credit of the replacement; what the credit does not use is refunded on
    the original (`original_refunded`). Returns the returned original."""
    placed = order()
    delivered = then(then(placed, status="allocated"), status="delivered")
    returned = then(
        delivered,
        status="partially_returned",
        lines=[line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")],
        received_returns=["rma_1"],
        exchanges=["rma_1"],
        payment={"refunded": money(original_refunded)},
    )
    replay(store, placed, delivered, returned)
    return returned


def replacement(grand_total: str, **changes: Any) -> dict[str, Any]:
    return order(
        id="ord_x",
        lines=[line("L1", "HOODIE", 1, grand_total)],
        totals={"grand_total": money(grand_total)},
        exchange_of="rma_1",
        exchange_credit=money("9.50"),
        **changes,
    )


def customer_totals(store: MemoryStore) -> tuple[str, str]:
    total = service(store).customer("cus_1", None).totals[0]
    return str(total.ordered.amount), str(total.refunded.amount)


def test_an_exchange_orders_the_replacements_grand_total_as_every_order_does():
    # API.md: "`ordered` sums the grand totals of the customer's orders that were not cancelled or
    # failed". Ada ordered 27.50, then a hoodie of 20.00 paid 9.50 by the T-shirt's credit: 47.50.
    store = MemoryStore()
    exchanged(store)
    placed = replacement("20.00")
    replay(store, placed, then(placed, status="allocated"))

    assert customer_totals(store) == ("47.50", "0.00")


def test_a_replacement_its_credit_pays_whole_is_ordered_and_the_rest_of_the_credit_is_refunded():
    store = MemoryStore()
    exchanged(store, original_refunded="3.50")  # 9.50 - 6.00 goes back to the card
    replay(store, replacement("6.00"))

    assert customer_totals(store) == ("33.50", "3.50")


def counted_less_its_credit(store: MemoryStore, placed: dict[str, Any], used: str) -> None:
    """The replacement's first record as an earlier version applied it: its grand total less the
    credit it used (`used`) in `ordered`, recorded so on its filing (Filing.credit)."""
    first = aggregate_change(None, placed, store.filing)
    counted = [
        replace(u, add={**u.add, "ordered_USD": u.add["ordered_USD"] - Decimal(used)}) if "ordered_USD" in u.add else u
        for u in first.updates
    ]
    store.apply(replace(first, updates=counted))
    store.filed[placed["id"]] = Filing(None, True)


def test_a_replacement_counted_less_its_credit_by_an_earlier_version_takes_out_what_it_added_when_cancelled():
    # A replacement whose first record an earlier version counted less its credit (20.00 - 9.50),
    # recording so on its filing: its cancel takes out those 10.50, not its grand total.
    store = MemoryStore()
    returned = exchanged(store)
    placed = replacement("20.00")
    counted_less_its_credit(store, placed, "9.50")
    assert customer_totals(store) == ("38.00", "0.00")

    store.apply(aggregate_change(placed, then(placed, status="cancelled"), store.filing))
    replay(store, returned, then(returned, payment={"refunded": money("9.50")}))  # the credit given back

    assert customer_totals(store) == ("27.50", "9.50")


def test_a_replacement_counted_less_its_credit_by_an_earlier_version_edited_dearer_orders_what_the_edit_added():
    # Its credit of 9.50 paid its 6.00 whole and the exchange refunded the other 3.50 at once
    # (credit_rest): edited up to 20.00 it still uses 6.00 of the credit, so it orders 14.00 more.
    store = MemoryStore()
    exchanged(store, original_refunded="3.50")
    placed = replacement("6.00", credit_rest=money("3.50"))
    counted_less_its_credit(store, placed, "6.00")
    assert customer_totals(store) == ("27.50", "3.50")

    dearer = then(placed, lines=[line("L1", "HOODIE", 1, "20.00")], totals={"grand_total": money("20.00")})
    store.apply(aggregate_change(placed, dearer, store.filing))

    assert customer_totals(store) == ("41.50", "3.50")


def test_a_cancelled_replacement_counts_nothing_and_its_credit_given_back_counts_once():
    store = MemoryStore()
    returned = exchanged(store)
    placed = replacement("20.00")
    cancelled = then(placed, status="cancelled")
    replay(store, placed, cancelled)
    replay(store, returned, then(returned, payment={"refunded": money("9.50")}))  # the credit given back

    assert customer_totals(store) == ("27.50", "9.50")


def test_a_replacement_counted_before_its_credit_was_leaves_refunded_to_the_refunds_when_cancelled():
    # A consumer before this change counted the replacement's total and not its credit: its cancel
    # takes out nothing it never added, and the credit given back on the original counts once.
    store = MemoryStore()
    returned = exchanged(store)
    placed = replacement("20.00")
    store.apply(aggregate_change(None, {**placed, "exchange_credit": None}, store.filing))
    store.apply(aggregate_change(placed, then(placed, status="cancelled"), store.filing))
    replay(store, returned, then(returned, payment={"refunded": money("9.50")}))

    assert customer_totals(store) == ("27.50", "9.50")


@pytest.mark.parametrize("stored", ["lines at zero", "lines as ordered"])
def test_a_cancelled_order_counts_nothing_whether_its_lines_went_to_zero_or_were_stored_as_ordered(stored):
    # A cancel takes every line to zero and the totals with it (Order.cancel); an order cancelled
    # before that kept its lines and totals. Either way it counts nothing, and its cancel takes out
    # exactly what its allocation counted: nothing twice, nothing left behind.
    store = MemoryStore()
    placed = order()
    allocated = then(placed, status="allocated")
    at_zero = [
        line("L1", "TSHIRT", 0, "10.00", cancelled_quantity=2),
        line("L2", "MUG", 0, "5.50", cancelled_quantity=1),
    ]
    zeroed = {"lines": at_zero, "totals": {"grand_total": money("0.00")}}
    cancelled = then(allocated, status="cancelled", **(zeroed if stored == "lines at zero" else {}))

    replay(store, placed, allocated, cancelled)

    assert products(store) == []
    assert service(store).report(ReportKind.CUSTOMERS, "USD", start=None, end=None, channel=None, limit=10) == []
    view = service(store).customer("cus_1", None)
    assert (view.orders_count, view.totals[0].ordered.amount) == (1, Decimal("0.00"))
    assert aggregate_change(cancelled, then(cancelled)).updates == []  # its void after, say


def test_refunded_returned_units_leave_the_reports_and_the_refund_shows_on_the_customer():
    store = MemoryStore()
    placed = order()
    allocated = then(placed, status="allocated")
    returned = then(
        allocated,
        status="partially_returned",
        lines=[line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")],
        payment={"refunded": money("9.50")},
        received_returns=["rma_1"],
    )
    replay(store, placed, allocated, returned)

    assert products(store) == [
        {"sku": "TSHIRT", "units": 1, "revenue": money("9.50")},
        {"sku": "MUG", "units": 1, "revenue": money("5.50")},
    ]
    regions = service(store).report(ReportKind.REGIONS, "USD", start=None, end=None, channel=None, limit=10)
    assert [r.model_dump(mode="json") for r in regions] == [
        {"country": "US", "region": "CA", "orders": 1, "revenue": money("15.00")}
    ]
    view = service(store).customer("cus_1", None).model_dump(mode="json")
    assert view["totals"] == [{"currency": "USD", "ordered": money("27.50"), "refunded": money("9.50")}]
    assert view["returns_count"] == 1


def _return_refund(return_id: str, status: str, units: int = 1, **extra: Any) -> dict[str, Any]:
    share = {"line_id": "L1", "quantity": units, "amount": money("9.50")}
    return {"id": f"ref_{return_id}_{status}", "amount": money("9.50"), "reason": "r", "status": status,
            "kind": "return", "return_id": return_id, "at": "2026-12-02T10:00:00Z", "lines": [share],
            **extra}  # fmt: skip


def test_units_back_whose_refund_the_gateway_refused_stay_sold_until_a_refund_of_them_goes_through():
    # API.md: revenue comes out "when ... units are refunded on return".
    store = MemoryStore()
    allocated = then(order(), status="allocated")
    back = [line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")]
    refused = then(allocated, status="partially_returned", lines=back, received_returns=["rma_1"],
                   payment={"refunded": money("0.00"), "refunds": [_return_refund("rma_1", "failed")]})  # fmt: skip
    replay(store, order(), allocated, refused)
    assert products(store)[0] == {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")}

    went_through = then(refused, payment={"refunded": money("9.50"), "refunds": [
        _return_refund("rma_1", "failed"), _return_refund("rma_1", "succeeded")]})  # fmt: skip
    replay(store, refused, went_through)
    assert products(store)[0] == {"sku": "TSHIRT", "units": 1, "revenue": money("9.50")}


# A refund recorded before refunds had a status: it succeeded (PaymentRefund's default).
_UNSTATUSED_REFUND = {k: v for k, v in _return_refund("rma_1", "-").items() if k != "status"}


@pytest.mark.parametrize(
    "settled",
    [
        {"payment": {"refunds": [_return_refund("rma_1", "pending")]}},  # on its way: counted as refunded
        {"payment": {"refunds": [_return_refund("rma_1", "failed", parts=[{"status": "succeeded"}])]}},
        {"payment": {"refunds": [_return_refund("rma_1", "failed")]}, "exchange_shares": {"rma_1": []}},
        {"payment": {"refunds": [_return_refund("rma_1", "failed")]}, "returns_kept_back": {"rma_1": money("9.50")}},
        {"payment": {"refunds": [_return_refund("rma_1", "failed")]}, "credit_holds": {"rma_1": money("9.50")}},
        {"payment": {"refunds": [_return_refund("rma_1", "failed")]}, "credit_refunded_shares": {"rma_1": []}},
        {"payment": {"refunds": [_return_refund("rma_1", "succeeded"), _return_refund("rma_1", "failed")]}},
        {"payment": {"refunds": [_UNSTATUSED_REFUND, _return_refund("rma_1", "failed")]}},
        {"payment": {"refunds": [{"id": "ref_a", "status": "failed", "kind": "appeasement"}]}},  # no return's
    ],
)
def test_units_back_count_as_refunded_unless_every_refund_of_their_return_was_refused(settled):
    assert units_refund_refused(order(**settled)) == {}


def test_units_back_whose_refunds_were_refused_are_those_each_returns_last_refused_refund_was_for():
    refunds = [
        _return_refund("rma_1", "failed", units=2, id="ref_1a"),
        _return_refund("rma_1", "failed", units=1, id="ref_1b"),
        _return_refund("rma_2", "failed", units=1),
    ]

    assert units_refund_refused(order(payment={"refunds": refunds})) == {"L1": 2}


def test_a_customer_sums_orders_per_channel_and_overall_and_counts_payment_failures():
    store = MemoryStore()
    first = order(created_at="2026-11-30T09:00:00Z")
    replay(store, first, then(first, status="allocated"))
    second = order(id="ord_2", channel="pos", created_at="2026-12-01T08:00:00.5Z")
    replay(store, second, then(second, status="payment_failed"))
    third = order(id="ord_3", channel="pos", currency="EUR", totals={"grand_total": money("7.00", "EUR")},
                  payment={"refunded": money("0.00", "EUR")}, created_at="2026-11-29T00:00:00Z")  # fmt: skip
    replay(store, third)

    overall = service(store).customer("cus_1", None).model_dump(mode="json")
    assert overall == {
        "id": "cus_1",
        "email": "Ada@Example.com",
        "name": "Ada",
        "orders_count": 3,
        "first_order_at": "2026-11-29T00:00:00.000000Z",
        "last_order_at": "2026-12-01T08:00:00.500000Z",
        "totals": [
            {"currency": "EUR", "ordered": money("7.00", "EUR"), "refunded": money("0.00", "EUR")},
            {"currency": "USD", "ordered": money("27.50"), "refunded": money("0.00")},
        ],
        "returns_count": 0,
        "payment_failures": 1,
    }
    web = service(store).customer("cus_1", "web")
    assert (web.orders_count, web.payment_failures, [t.currency for t in web.totals]) == (1, 0, ["USD"])
    with pytest.raises(NotFound):
        service(store).customer("cus_1", "b2b")
    assert [c.id for c in service(store).customers_by_email("ada@example.COM", "pos")[0]] == ["cus_1"]
    assert service(store).customers_by_email("ada@example.com", "b2b")[0] == []


def test_a_customer_of_several_channels_is_named_by_the_latest_order_that_gave_a_name():
    # The web row's last order gave no name: its name is the 1st order's, older than the till's.
    web = {"email": "bo@web.example", "name": "Bo Byron", "name_at": "2026-12-01T10:00:00.000000Z",
           "last_order_at": "2026-12-03T10:00:00.000000Z", "orders_count": Decimal(2)}  # fmt: skip
    pos = {"email": "bo@pos.example", "name": "Bo Lovelace", "name_at": "2026-12-02T10:00:00.000000Z",
           "last_order_at": "2026-12-02T10:00:00.000000Z", "orders_count": Decimal(1)}  # fmt: skip
    assert [merged(rows)["name"] for rows in ([web, pos], [pos, web])] == ["Bo Lovelace"] * 2
    assert (merged([web, pos])["email"], merged([web, pos])["orders_count"]) == ("bo@web.example", 3)
    # Rows named before names were timed: by their last order, as then.
    legacy = [{k: v for k, v in row.items() if k != "name_at"} for row in (web, pos)]
    assert merged(legacy)["name"] == "Bo Byron"
    nameless = {k: v for k, v in pos.items() if k not in ("name", "name_at")}
    assert merged([legacy[0], {**nameless, "last_order_at": "2026-12-09T10:00:00.000000Z"}])["name"] == "Bo Byron"


def test_a_channel_key_finds_no_customer_by_an_email_used_only_in_another_channel():
    # cus_1 orders as ada@work.example on the web and as ada@home.example at the till: the till's
    # key searching the web's email would learn which of its customers that address belongs to.
    store = MemoryStore()
    replay(store, order(customer={"id": "cus_1", "email": "ada@work.example"}))
    replay(store, order(id="ord_2", channel="pos", customer={"id": "cus_1", "email": "ada@home.example"}))

    assert service(store).customers_by_email("ada@work.example", "pos")[0] == []
    assert [c.email for c in service(store).customers_by_email("ADA@work.example", "web")[0]] == ["ada@work.example"]
    assert [c.id for c in service(store).customers_by_email("ada@home.example", None)[0]] == ["cus_1"]


def test_an_address_is_indexed_lower_cased_and_composed_where_the_customers_recorded_since_are():
    # The key customers have been indexed under since addresses were composed (NFC, first of the
    # partitions a search reads): an order keyed in another form would index its customer apart.
    decomposed = "JOSE\u0301@Example.com"

    assert email_key(decomposed, "cus_1") == ("customer-email#jos\u00e9@example.com", "cus_1")


def test_a_customer_recorded_with_an_invisible_character_before_it_was_refused_is_shown_with_it_as_u_fffd():
    # Recorded from an order placed when a name could hide a zero-width space or break a line; its
    # orders now read with each shown as U+FFFD, and so does the customer.
    store = MemoryStore()
    replay(store, order(customer={"id": "cus_1", "email": "ada\u200b@example.com", "name": "Ada\u2028Lovelace"}))

    shown = service(store).customer("cus_1", None)

    assert (shown.email, shown.name) == ("ada\ufffd@example.com", "Ada\ufffdLovelace")
    (found,) = service(store).customers_by_email("ada\u200b@example.com", None)[0]
    assert found.name == "Ada\ufffdLovelace"


def test_the_same_change_twice_adds_nothing_more():
    store = MemoryStore()
    placed = order()
    allocated = then(placed, status="allocated")
    replay(store, placed, allocated)
    assert store.apply(aggregate_change(placed, allocated)) is False

    assert products(store)[0] == {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")}
    assert service(store).customer("cus_1", None).orders_count == 1


def test_a_change_touching_no_counter_is_empty():
    placed = order()
    authorized = then(placed, status="authorized")

    assert aggregate_change(placed, authorized).empty


def test_reports_read_the_asked_days_and_channel_and_keep_the_top_n():
    store = MemoryStore()
    for n, (day, channel, sku) in enumerate([("2026-11-30", "web", "A"), ("2026-12-01", "pos", "B")]):
        placed = order(id=f"ord_{n}", channel=channel, created_at=f"{day}T12:00:00Z",
                       lines=[line("L1", sku, 1, "3.00" if sku == "A" else "2.00")])  # fmt: skip
        replay(store, placed, then(placed, status="allocated"))

    assert [r["sku"] for r in products(store)] == ["A", "B"]
    assert [r["sku"] for r in products(store, limit=1)] == ["A"]
    assert [r["sku"] for r in products(store, start=date(2026, 12, 1))] == ["B"]
    assert [r["sku"] for r in products(store, end=date(2026, 11, 30))] == ["A"]
    assert [r["sku"] for r in products(store, channel="pos")] == ["B"]
    assert report_pk(ReportKind.PRODUCTS, "USD", "web", "2026-11-30") in {pk for pk, _ in store.items}


def test_a_report_without_from_covers_the_30_days_to_its_to_and_without_to_ends_today():
    # The service's today is 2026-12-01: its 30 days start on 2026-11-02.
    store = MemoryStore()
    for n, day in enumerate(["2026-11-01", "2026-11-02"]):
        placed = order(id=f"ord_{n}", created_at=f"{day}T12:00:00Z", lines=[line("L1", f"SKU-{day}", 1, "3.00")])
        replay(store, placed, then(placed, status="allocated"))

    assert [r["sku"] for r in products(store)] == ["SKU-2026-11-02"]
    assert [r["sku"] for r in products(store, end=date(2026, 11, 30))] == ["SKU-2026-11-01", "SKU-2026-11-02"]
    assert products(store, end=date(2026, 12, 31)) == []  # the 30 days to a `to` a month away
    assert [r["sku"] for r in products(store, start=date(2025, 12, 1))] == ["SKU-2026-11-01", "SKU-2026-11-02"]


def test_a_year_long_report_of_one_channel_reads_only_the_days_that_channel_has_rows_on():
    store = MemoryStore()
    sold = [("2026-01-05", "web"), ("2026-06-30", "web"), ("2026-06-30", "pos"), ("2026-09-01", "pos")]
    for n, (day, channel) in enumerate(sold):
        placed = order(id=f"ord_{n}", channel=channel, created_at=f"{day}T12:00:00Z")
        replay(store, placed, then(placed, status="allocated"))

    rows = products(store, start=date(2026, 1, 1), end=date(2026, 12, 31), channel="web")

    assert [(r["sku"], r["units"]) for r in rows] == [("TSHIRT", 4), ("MUG", 2)]
    assert store.partitions_read == [
        report_pk(ReportKind.PRODUCTS, "USD", "web", "2026-01-05"),
        report_pk(ReportKind.PRODUCTS, "USD", "web", "2026-06-30"),
    ]


@pytest.mark.parametrize(
    ("currency", "start", "end"),
    [("XXX", None, None), ("USD", date(2026, 12, 2), date(2026, 12, 1)), ("USD", date(2025, 1, 1), None)],
)
def test_a_report_refuses_an_unknown_currency_a_reversed_or_an_over_long_range(currency, start, end):
    with pytest.raises(InvalidRequest):
        service(MemoryStore()).report(ReportKind.PRODUCTS, currency, start=start, end=end, channel=None, limit=10)


def test_a_report_ending_on_the_first_day_of_the_calendar_reads_from_that_day():
    assert (
        service(MemoryStore()).report(ReportKind.PRODUCTS, "USD", start=None, end=date.min, channel=None, limit=10)
        == []
    )


def every_report(store: MemoryStore) -> list[list[dict[str, Any]]]:
    """The month's reports, after checking no day of it shows a negative row."""
    november = [date(2026, 11, day) for day in range(1, 31)]
    for day, kind in itertools.product(november, ReportKind):
        assert all(Decimal(row["revenue"]["amount"]) >= 0 for row in day_report(store, day, kind)), (day, kind)
    month = {"start": november[0], "end": november[-1], "channel": None, "limit": 10}
    return [[row.model_dump(mode="json") for row in service(store).report(kind, "USD", **month)] for kind in ReportKind]


@pytest.mark.parametrize("ending", ["cancelled", "returned"])
def test_a_backorders_records_applied_in_any_order_count_as_in_order(ending: str):
    # EventsFailuresAlarm's runbook replays a parked record after the order's later ones: a cancel
    # applied before the allocation took the revenue out of the day the order was placed, and
    # the allocation then counted it on its own day (-24.50 on the 1st, +24.50 on the 20th). Now
    # the allocation goes by the day the cancel went by: the month adds up as in order, no day
    # below zero (a return applied first leaves what is kept on the day the order was placed).
    placed, backordered, allocated = backorder_allocated_later()
    if ending == "cancelled":
        last = then(allocated, status="cancelled", updated_at="2026-11-25T08:00:00Z")
    else:
        last = then(allocated, status="partially_returned", updated_at="2026-11-25T08:00:00Z", lines=[
            line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")])  # fmt: skip
    records = list(zip([None, placed, backordered, allocated], [placed, backordered, allocated, last], strict=True))
    in_order = MemoryStore()
    for old, new in records:
        in_order.apply(aggregate_change(old, new, in_order.filing, in_order.went_by))

    for arrival in itertools.permutations(records):
        store = MemoryStore()
        for old, new in arrival:
            store.apply(aggregate_change(old, new, store.filing, store.went_by))
        assert every_report(store) == every_report(in_order), [new["version"] for _, new in arrival]
        assert customer_totals(store) == customer_totals(in_order)


def test_a_replacements_records_applied_in_any_order_count_as_in_order():
    placed = replacement("20.00")
    allocated = then(placed, status="allocated")
    cancelled = then(allocated, status="cancelled")
    records = [(None, placed), (placed, allocated), (allocated, cancelled)]
    for arrival in itertools.permutations(records):
        store = MemoryStore()
        exchanged(store)
        for old, new in arrival:
            store.apply(aggregate_change(old, new, store.filing, store.went_by))
        assert customer_totals(store) == ("27.50", "0.00"), [new["version"] for _, new in arrival]
        assert day_report(store, date(2026, 12, 1)) == [
            {"sku": "TSHIRT", "units": 1, "revenue": money("9.50")},
            {"sku": "MUG", "units": 1, "revenue": money("5.50")},
        ]


def parked_and_replayed(records: list[Any]) -> Iterator[list[Any]]:
    """Each way the stream can hand `records` over when a run of them (a batch, or a part of one
    the bisection left) failed six times and was parked, then replayed by EventsFailuresAlarm's
    runbook after the rest: that run moved, in its order, after the records that followed it."""
    for start, end in itertools.combinations(range(len(records) + 1), 2):
        yield records[:start] + records[end:] + records[start:end]


def sent_back_and_allocated_again(placed_on: str, allocated_on: str) -> list[tuple[Any, Any]]:
    """An order allocated, sent back to be sourced (a store's reject, an edit) the next day,
    allocated again two days later, then its units returned or cancelled in part: its stream records."""
    placed = order(created_at=f"{placed_on}T10:00:00Z", updated_at=f"{placed_on}T10:00:00Z")
    allocated = then(placed, status="allocated", updated_at=f"{allocated_on}T10:00:00Z")
    sent_back = then(allocated, status="authorized", updated_at="2026-11-21T10:00:00Z")
    again = then(sent_back, status="allocated", updated_at="2026-11-23T10:00:00Z")
    shipped = then(again, status="shipped", updated_at="2026-11-24T10:00:00Z")
    back = then(shipped, status="partially_returned", updated_at="2026-11-26T10:00:00Z", lines=[
        line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=1), line("L2", "MUG", 1, "5.50")])  # fmt: skip
    docs = [placed, allocated, sent_back, again, shipped, back]
    return list(zip([None, *docs[:-1]], docs, strict=True))


@pytest.mark.parametrize(
    ("placed_on", "allocated_on"),
    [("2026-11-01", "2026-11-20"), ("2026-11-20", "2026-11-20")],
    ids=["backorder-allocated-later", "allocated-the-day-placed"],
)
def test_a_parked_send_back_replayed_after_the_allocation_again_takes_the_revenue_out_of_the_day_it_went_into(
    placed_on: str, allocated_on: str
):
    # The send-back (allocated -> authorized) parked, replayed after the allocation again had filed
    # the revenue under the 23rd: it read that filing and took the first allocation's revenue out
    # of the 23rd, which it never went into (the 20th kept it, the 23rd went below zero).
    records = sent_back_and_allocated_again(placed_on, allocated_on)
    in_order = MemoryStore()
    for old, new in records:
        in_order.apply(aggregate_change(old, new, in_order.filing, in_order.went_by))

    for arrival in parked_and_replayed(records):
        store = MemoryStore()
        for old, new in arrival:
            store.apply(aggregate_change(old, new, store.filing, store.went_by))
        assert every_report(store) == every_report(in_order), [new["version"] for _, new in arrival]
        assert customer_totals(store) == customer_totals(in_order)


def test_a_change_after_a_parked_allocation_was_replayed_goes_by_the_latest_filing_before_it():
    # The first allocation and the send-back parked together, replayed after the allocation again
    # and its ship (the first allocation's filing is appended after the later one's): the return
    # that comes next is taken out of the day the revenue moved to last by version (the 23rd),
    # not out of the day appended last (the 20th, which the send-back emptied).
    records = sent_back_and_allocated_again("2026-11-01", "2026-11-20")
    in_order = MemoryStore()
    for old, new in records:
        in_order.apply(aggregate_change(old, new, in_order.filing, in_order.went_by))
    placed, allocated, sent_back, again, shipped, back = records
    store = MemoryStore()
    for old, new in (placed, again, shipped, allocated, sent_back, back):
        store.apply(aggregate_change(old, new, store.filing, store.went_by))

    order_id = back[1]["id"]
    assert [version for version, _ in store.filed[order_id].days] == [again[1]["version"], allocated[1]["version"]]
    assert every_report(store) == every_report(in_order)
    assert customer_totals(store) == customer_totals(in_order)


def test_an_order_shipped_in_parts_keeps_its_revenue_on_the_day_it_was_allocated():
    # Its first parcel leaves: nothing was cancelled or refunded, so the reports show what they did.
    store = MemoryStore()
    placed, backordered, allocated = backorder_allocated_later()
    partly = then(allocated, status="partially_shipped", updated_at="2026-11-21T08:00:00Z")
    replay(store, placed, backordered, allocated, partly)

    assert day_report(store, date(2026, 11, 20)) == [
        {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")},
        {"sku": "MUG", "units": 1, "revenue": money("5.50")},
    ]
    assert day_report(store, date(2026, 11, 21)) == []


def test_an_order_whose_every_unit_came_back_but_whose_refund_the_gateway_refused_stays_in_revenue():
    # API.md takes revenue out "when ... units are refunded on return": all back (returned), none refunded.
    store = MemoryStore()
    placed = order(lines=[line("L1", "TSHIRT", 2, "10.00", "1.00")], totals={"grand_total": money("19.00")})
    allocated = then(placed, status="allocated")
    delivered = then(allocated, status="delivered")
    refused = {"refunded": money("0.00"), "refunds": [_return_refund("rma_1", "failed", units=2)]}
    all_back = [line("L1", "TSHIRT", 2, "10.00", "1.00", returned_quantity=2)]
    returned = then(delivered, status="returned", lines=all_back, received_returns=["rma_1"], payment=refused)
    replay(store, placed, allocated, delivered, returned)

    assert products(store) == [{"sku": "TSHIRT", "units": 2, "revenue": money("19.00")}]
    customers = service(store).report(ReportKind.CUSTOMERS, "USD", start=None, end=None, channel=None, limit=10)
    assert [row.model_dump(mode="json") for row in customers] == [
        {"customer_id": "cus_1", "orders": 1, "revenue": money("19.00")}
    ]


def test_a_cancelled_order_is_no_payment_failure_of_its_customer():
    store = MemoryStore()
    placed = order()
    replay(store, placed, then(placed, status="cancelled"))

    assert service(store).customer("cus_1", None).payment_failures == 0


def test_a_customer_of_several_channels_first_ordered_when_the_earliest_of_their_orders_was_placed():
    # The web's orders are the earliest; the till's is the latest: the first order is the web's first.
    store = MemoryStore()
    for n, (channel, day) in enumerate([("web", "2026-11-01"), ("web", "2026-11-20"), ("pos", "2026-12-05")]):
        replay(store, order(id=f"ord_{n}", channel=channel, created_at=f"{day}T10:00:00Z"))

    shown = service(store).customer("cus_1", None)

    assert (shown.first_order_at, shown.last_order_at) == ("2026-11-01T10:00:00.000000Z", "2026-12-05T10:00:00.000000Z")


def test_a_free_product_sold_shows_in_top_products_with_its_units_and_no_revenue():
    store = MemoryStore()
    placed = order(lines=[line("L1", "TSHIRT", 2, "10.00", "1.00"), line("L2", "SAMPLE", 3, "0.00")])
    replay(store, placed, then(placed, status="allocated"))

    assert products(store) == [
        {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")},
        {"sku": "SAMPLE", "units": 3, "revenue": money("0.00")},
    ]


def test_products_of_equal_revenue_are_listed_by_sku_whichever_day_sold_first():
    # A page cut between them always shows the same one: ties go by sku, not by the day read first.
    store = MemoryStore()
    for n, (day, sku) in enumerate([("2026-11-28", "PEN"), ("2026-11-29", "CAP")]):
        placed = order(id=f"ord_{n}", created_at=f"{day}T12:00:00Z", lines=[line("L1", sku, 1, "4.00")])
        replay(store, placed, then(placed, status="allocated"))

    assert [r["sku"] for r in products(store)] == ["CAP", "PEN"]
    assert [r["sku"] for r in products(store, limit=1)] == ["CAP"]


def test_an_address_without_a_region_is_reported_with_no_region():
    store = MemoryStore()
    placed = order(shipping_address={"country": "GB", "city": "London", "postal_code": "N1", "line1": "x"})
    replay(store, placed, then(placed, status="allocated"))

    rows = service(store).report(ReportKind.REGIONS, "USD", start=None, end=None, channel=None, limit=10)

    assert [r.model_dump(mode="json") for r in rows] == [
        {"country": "GB", "region": None, "orders": 1, "revenue": money("24.50")}
    ]


def test_an_order_counted_the_day_it_was_placed_records_no_filing_and_reads_no_later_marker():
    # Only an order whose revenue is filed under another day than its placing records that day (an
    # item more in its counters' transaction) or reads the markers after it (a query more): an order
    # allocated the day it was placed does neither, nor does one failing the next day (it counts none).
    store = MemoryStore()
    asked: list[int] = []

    def later(order_id: str, version: int) -> WentBy:
        asked.append(version)
        return store.went_by(order_id, version)

    placed = order(created_at="2026-11-01T23:00:00Z")
    allocated = then(placed, status="allocated", updated_at="2026-11-01T23:00:05Z")
    failing = order(id="ord_2", created_at="2026-11-01T23:59:00Z")
    failed = then(failing, status="payment_failed", updated_at="2026-11-02T00:00:01Z")
    for old, new in ((None, placed), (placed, allocated), (None, failing), (failing, failed)):
        store.apply(aggregate_change(old, new, store.filing, later))

    assert (store.filed, asked) == ({}, [])
    assert day_report(store, date(2026, 11, 1))[0] == {"sku": "TSHIRT", "units": 2, "revenue": money("19.00")}


def test_a_day_whose_orders_of_a_channel_were_placed_but_none_allocated_costs_its_report_no_read():
    store = MemoryStore()
    replay(store, order(id="ord_1", channel="web", created_at="2026-11-30T12:00:00Z"))  # not allocated (yet)
    sold = order(id="ord_2", channel="pos", created_at="2026-11-30T12:00:00Z")
    replay(store, sold, then(sold, status="allocated"))

    assert products(store, channel="web") == []
    assert store.partitions_read == []
