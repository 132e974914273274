"""Reorder points as pure domain: which stock change crosses a point, the event a crossing is, and
how a draft purchase order grows and is priced when it is submitted."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from core.domain_events import EventType
from core.errors import InvalidRequest, InvalidTransition
from core.models import ReorderSettings
from core.money import Money
from core.purchasing import PurchaseOrder, PurchaseOrderLine, Submission
from core.reorder import ReorderRequest, StockChange, crossing, lacking, low_stock_event, past_the_limit
from core.status import PurchaseOrderStatus
from tests.builders import NOW

PO = PurchaseOrderStatus
SETTINGS = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme")
COST_4 = Money.of("4.00", "USD")


def change(before: int | None, after: int, settings: ReorderSettings | None = SETTINGS, change_id: str = "100"):
    return StockChange(
        sku="MUG",
        location_id="wh-east",
        available_before=before,
        available_after=after,
        settings=settings,
        change_id=change_id,
        changed_at=NOW,
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [(5, 4), (6, 4), (10, 0), (5, 0), (1_000, 4)],
)
def test_available_going_from_at_or_above_the_point_to_below_it_is_a_crossing(before, after):
    crossed = crossing(change(before, after))

    assert crossed is not None
    assert (crossed.low, crossed.reorders) == (True, True)  # from the point itself too: inventory.low
    assert (crossed.sku, crossed.location_id, crossed.available, crossed.settings) == (
        "MUG",
        "wh-east",
        after,
        SETTINGS,
    )


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        (6, 5, "landing on the point is not below it"),
        (5, 5, "nothing moved"),
        (4, 3, "already below: crossed once, when it first fell"),
        (4, 0, "already below, falling further"),
        (3, 6, "rising"),
        (4, 5, "rising back to the point"),
        (None, 0, "a new item has no before"),
    ],
)
def test_what_is_not_a_crossing(before, after, why):
    assert crossing(change(before, after)) is None, why


def test_stock_without_a_reorder_point_never_crosses():
    assert crossing(change(10, 0, settings=None)) is None


def test_each_fall_after_a_rise_is_a_crossing_of_its_own():
    first, rise, second = change(5, 4, change_id="100"), change(4, 9, change_id="101"), change(9, 1, change_id="102")

    crossings = [crossing(c) for c in (first, rise, second)]

    assert crossings[1] is None
    assert crossings[0].key != crossings[2].key


@pytest.mark.parametrize(
    ("point_before", "point", "crosses"),
    [
        (5, 30, True),  # 10 available was at or above the point in force, and is below the new one
        (5, 10, False),  # landing on the new point is not below it
        (12, 30, False),  # already below the point before: crossed once, when it first fell
        (30, 5, False),  # lowered
        (None, 30, False),  # a point set where there was none crosses nothing (its own record buys)
    ],
)
def test_a_point_raised_above_stock_that_was_at_or_above_the_point_before_is_a_crossing(point_before, point, crosses):
    """A buyer raises the point from 5 to 30 with 10 available: compared with the new point on both
    sides, stock already below it crossed nothing, and no fall after did either (each starts below
    30), so the raised point bought nothing until stock rose past 30, which nothing bought could do."""
    raised = replace(
        change(10, 10, settings=SETTINGS.model_copy(update={"reorder_point": point})), point_before=point_before
    )

    crossed = crossing(raised)

    assert (crossed is not None) is crosses
    if crosses:
        assert (crossed.low, crossed.reorders, crossed.available) == (True, True, 10)


def on_order(before: int, after: int, incoming_before: int, incoming_after: int, change_id: str = "100"):
    return replace(change(before, after, change_id=change_id), incoming_before=incoming_before,
                   incoming_after=incoming_after)  # fmt: skip


def test_a_fall_with_no_units_on_order_is_low_and_reorders():
    crossed = crossing(on_order(6, 2, 0, 0))

    assert (crossed.low, crossed.reorders) == (True, True)


@pytest.mark.parametrize(("incoming", "reorders"), [(20, False), (3, False), (2, True)])
def test_units_on_open_purchase_orders_count_against_the_point_when_deciding_to_reorder(incoming, reorders):
    # 2 available and `incoming` on order: the point (5) is covered when 2 + incoming >= 5.
    crossed = crossing(on_order(6, 2, incoming, incoming))

    assert crossed.low, "inventory.low still says available fell below the point"
    assert crossed.reorders is reorders


@pytest.mark.parametrize(
    ("incoming", "waiting", "buys"),
    [
        (0, 0, 20),  # no backorders: reorder_quantity, as before
        (0, 7, 25),  # 7 units backordered here, 2 available: the other 5 bought on top of the 20
        (20, 0, 0),  # open orders cover the point
        (20, 17, 0),  # ... and the backorders: 2 + 20 - 17 = 5, still at the point
        (20, 18, 20),  # not any more: the point is short, the backorders are covered by what is on order
        (20, 30, 28),  # nor the backorders: 30 - (2 + 20) more than the reorder quantity
    ],
)
def test_backordered_demand_counts_against_the_point_and_is_bought_for(incoming, waiting, buys):
    """Orders waiting for the sku take the first units that come: a crossing that ignored them
    bought 20 for 30 waiting orders, or nothing when an open PO covered the point but not them."""
    crossed = crossing(on_order(6, 2, incoming, incoming))

    assert crossed.to_buy(waiting) == buys


def test_an_open_purchase_order_cancelled_while_stock_is_low_reorders_without_a_new_low():
    crossed = crossing(on_order(2, 2, 20, 0))

    assert crossed is not None
    assert (crossed.low, crossed.reorders) == (False, True)


@pytest.mark.parametrize(
    ("before", "after", "incoming_before", "incoming_after", "why"),
    [
        (2, 22, 20, 0, "a receipt: the units on order became available"),
        (2, 2, 0, 20, "a purchase order opened"),
        (2, 1, 20, 20, "below, with enough on order before and after"),
        (4, 3, 0, 0, "already below with nothing on order: counted when it first fell"),
    ],
)
def test_changes_of_units_on_order_that_are_no_crossing(before, after, incoming_before, incoming_after, why):
    assert crossing(on_order(before, after, incoming_before, incoming_after)) is None, why


def test_inventory_low_has_the_contract_shape_and_an_id_of_the_crossing():
    crossed = crossing(change(6, 2))

    event = low_stock_event(crossed)

    assert event.type is EventType.INVENTORY_LOW
    assert event.data == {"inventory": {"sku": "MUG", "location_id": "wh-east", "available": 2, "reorder_point": 5}}
    assert event.id.startswith("evt_") and event.created_at == NOW
    assert low_stock_event(crossing(change(6, 2))).id == event.id  # a redelivered record
    assert low_stock_event(crossing(change(6, 2, change_id="101"))).id != event.id  # another crossing


def test_inventory_low_of_a_stock_take_recorded_below_the_reserved_units_shows_available_0_not_negative():
    # A count under the reserved units is stored with available below zero until its rejects release
    # them (InventoryService.count): its record crossed the point and the event said "available": -2.
    event = low_stock_event(crossing(change(6, -2)))

    assert event.data["inventory"]["available"] == 0


def test_a_reorder_request_needs_a_point_that_can_be_crossed_and_a_positive_quantity():
    body = {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": "acme"}
    assert ReorderRequest.model_validate(body).unit_cost is None
    priced = ReorderRequest.model_validate({**body, "unit_cost": {"amount": "4.00", "currency": "USD"}})
    assert priced.unit_cost == Money.of("4.00", "USD")
    for wrong in ({"reorder_point": 0}, {"reorder_quantity": 0}, {"reorder_point": "5"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            ReorderRequest.model_validate({**body, **wrong})


def a_draft(*lines: PurchaseOrderLine) -> PurchaseOrder:
    return PurchaseOrder(
        id="po_" + "d" * 24,
        vendor_id="acme",
        location_id="wh-east",
        status=PO.DRAFT,
        lines=list(lines) or [PurchaseOrderLine(sku="MUG", quantity=20)],
        expected_at=NOW + timedelta(days=7),
        created_at=NOW,
    )


def test_a_draft_grows_its_line_or_adds_one_priced_at_what_the_point_says_the_units_cost_now():
    """A draft waits for a person to submit it, priced by no one else: a line grown after its
    point's cost changed is priced at the new cost, as a buyer reading the draft expects; a point
    that gives no cost leaves the line the cost it had."""
    cost, now = Money.of("4.00", "USD"), Money.of("9.00", "USD")
    draft = a_draft(PurchaseOrderLine(sku="MUG", quantity=20, unit_cost=cost))

    grown = draft.grow("MUG", 20, now, at=NOW).grow("CUP", 5, None, at=NOW)

    assert [(li.sku, li.quantity, li.unit_cost) for li in grown.lines] == [("MUG", 40, now), ("CUP", 5, None)]
    assert grown.version == draft.version + 2 and grown.status is PO.DRAFT
    assert a_draft().grow("MUG", 1, cost, at=NOW).lines[0].unit_cost == cost  # an unpriced line takes the cost
    assert draft.grow("MUG", 1, None, at=NOW).lines[0].unit_cost == cost  # no cost given: the one it has


def test_only_a_draft_grows():
    opened = a_draft(PurchaseOrderLine(sku="MUG", quantity=1, unit_cost=Money.of("1.00", "USD"))).submit(at=NOW)

    with pytest.raises(InvalidTransition):
        opened.grow("MUG", 1, None, at=NOW)
    assert not opened.takes("MUG")


def test_a_draft_with_an_unpriced_line_is_submitted_only_with_its_price():
    draft = a_draft(PurchaseOrderLine(sku="MUG", quantity=20), PurchaseOrderLine(sku="CUP", quantity=5))

    with pytest.raises(InvalidRequest) as refused:
        draft.submit({"MUG": Money.of("4.00", "USD")}, at=NOW)
    assert refused.value.code == "unpriced_lines"
    assert refused.value.details == [{"field": "lines", "message": "CUP needs a unit_cost"}]

    due = NOW + timedelta(days=3)
    opened = draft.submit({"MUG": Money.of("4.00", "USD"), "CUP": Money.of("1.50", "USD")}, at=NOW, expected_at=due)
    assert opened.status is PO.OPEN and opened.expected_at == due
    assert [li.unit_cost.amount for li in opened.lines] == [
        Money.of("4.00", "USD").amount,
        Money.of("1.50", "USD").amount,
    ]


def test_a_price_for_a_sku_not_on_the_draft_is_refused():
    with pytest.raises(InvalidRequest):
        a_draft().submit({"CUP": Money.of("1.00", "USD")}, at=NOW)
    with pytest.raises(ValidationError):
        Submission.model_validate({"lines": [{"sku": "MUG", "unit_cost": {"amount": "1.00", "currency": "USD"}}] * 2})


def test_a_full_draft_takes_only_skus_it_has():
    full = a_draft(*[PurchaseOrderLine(sku=f"SKU{n}", quantity=1) for n in range(99)])

    assert full.takes("SKU0") and not full.takes("MUG")


def stream_record(name: str, old: dict | None, new: dict | None, location_id: str = "wh-east") -> Any:
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    images: dict[str, Any] = {"Keys": {"sku": {"S": "MUG"}, "location_id": {"S": location_id}},
                              "SequenceNumber": "4200", "ApproximateCreationDateTime": NOW.timestamp()}  # fmt: skip
    if old is not None:
        images["OldImage"] = old
    if new is not None:
        images["NewImage"] = new
    return DynamoDBRecord({"eventID": "e1", "eventName": name, "eventSource": "aws:dynamodb", "dynamodb": images})


REORDER_MAP = {"M": {"reorder_point": {"N": "5"}, "reorder_quantity": {"N": "20"}, "vendor_id": {"S": "acme"},
                     "unit_cost": {"M": {"amount": {"S": "4.00"}, "currency": {"S": "USD"}}}}}  # fmt: skip


def test_a_stream_record_reads_as_the_stock_change_it_is():
    from functions.backorders.low_stock import crossing_of, stock_change

    record = stream_record(
        "MODIFY",
        {"available": {"N": "5"}},
        {"available": {"N": "4"}, "reorder_point": {"N": "5"}, "reorder": REORDER_MAP},
    )

    change = stock_change(record)

    assert change == StockChange(
        sku="MUG", location_id="wh-east", available_before=5, available_after=4,
        settings=ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST_4),
        change_id="4200", changed_at=NOW,
    )  # fmt: skip
    assert crossing_of(record).key == "MUG#wh-east#4200"


def test_a_record_replayed_as_the_aws_cli_prints_it_reads_as_the_same_change():
    # Before: the BackorderFailuresAlarm runbook hands the function the records `aws dynamodbstreams
    # get-records` prints, whose ApproximateCreationDateTime the CLI (v2) prints as ISO 8601 text,
    # not Lambda's epoch seconds: float() of it raised on every stock change, so no replay went through.
    from functions.backorders.low_stock import stock_change

    new = {"available": {"N": "4"}, "reorder_point": {"N": "5"}, "reorder": REORDER_MAP}
    delivered = stream_record("MODIFY", {"available": {"N": "5"}}, new)
    replayed = stream_record("MODIFY", {"available": {"N": "5"}}, new)
    replayed.raw_event["dynamodb"]["ApproximateCreationDateTime"] = NOW.isoformat()  # "2026-...T...+00:00"

    assert stock_change(replayed) == stock_change(delivered)
    assert stock_change(replayed).changed_at == NOW


def test_records_that_are_not_a_change_of_stock_read_as_none():
    from functions.backorders.low_stock import stock_change

    stock = {"available": {"N": "4"}, "reorder": REORDER_MAP}
    assert stock_change(stream_record("INSERT", None, stock)) is None  # a new item: nothing before
    assert stock_change(stream_record("REMOVE", stock, None)) is None
    queue_entry = {"order_id": {"S": "ord_x"}}  # a backorder queue entry has no stock of its own
    assert stock_change(stream_record("MODIFY", queue_entry, queue_entry, "#backorder#x")) is None


def test_a_stream_record_carries_the_units_on_order_before_and_after():
    from functions.backorders.low_stock import crossing_of, stock_change

    record = stream_record(
        "MODIFY",
        {"available": {"N": "6"}, "incoming": {"N": "30"}},
        {"available": {"N": "2"}, "incoming": {"N": "30"}, "reorder": REORDER_MAP},
    )

    change = stock_change(record)

    assert (change.incoming_before, change.incoming_after) == (30, 30)
    assert (crossing_of(record).low, crossing_of(record).reorders) == (True, False)


def test_units_a_draft_already_bought_for_the_backorders_are_not_bought_again():
    """A draft that bought for the orders waiting here (when they went backordered) is not on
    order yet: a crossing that counted only available and incoming bought their units again."""
    crossed = crossing(on_order(6, 2, 0, 0))  # 2 available, nothing on order

    assert crossed.to_buy(7) == 20 + 5
    assert crossed.to_buy(7, drafted=5) == 20  # the draft holds the 5 they lack beyond the 2


@pytest.mark.parametrize(
    ("drafted", "waiting", "buys"),
    [
        (0, 0, 20),  # the first crossing: a draft of reorder_quantity
        (3, 0, 0),  # 2 available + 3 drafted: the draft keeps the position at the point
        (20, 0, 0),  # a draft of 20 waiting for a person: a second fall buys no second 20
        (2, 0, 20),  # 2 + 2 is below the point: the draft grows by reorder_quantity
        (20, 18, 20),  # the backorders take 18 of the 22: the point is short again
        (20, 30, 28),  # and they lack 8 beyond everything there, on order and drafted
    ],
)
def test_units_on_a_draft_cover_the_point_as_units_on_order_do(drafted, waiting, buys):
    """Stock falling past the point, rising back (a stock take, a restock) and falling again
    while the draft waits for a person grew its line by reorder_quantity each time, without end.
    A draft's units are bought: the draft grows only when the position with them is short."""
    crossed = crossing(on_order(6, 2, 0, 0))  # 2 available, nothing on order: the position crossed
    assert crossed is not None and crossed.reorders

    assert crossed.to_buy(waiting, drafted=drafted) == buys
    # The position read now (a draft submitted since moved its units to incoming) decides alike.
    assert crossed.to_buy(waiting, now=2 + drafted) == buys


def test_a_draft_line_over_the_units_a_line_takes_is_past_the_limit_priced_or_not():
    """An unpriced draft has no bill to reach 10^15: its line was bounded by nothing. Neither line
    could be created open (quantity at most 1,000,000,000) nor fully received (on hand at most that)."""
    most = 1_000_000_000
    assert past_the_limit(a_draft(PurchaseOrderLine(sku="MUG", quantity=most)), "MUG") is None
    assert past_the_limit(a_draft(PurchaseOrderLine(sku="MUG", quantity=most + 1)), "MUG") == (
        "quantity_too_large",
        "order more than 1,000,000,000 MUG on one line",
    )
    priced = a_draft(PurchaseOrderLine(sku="MUG", quantity=most + 1, unit_cost=Money.of("0.01", "USD")))
    assert past_the_limit(priced, "MUG")[0] == "quantity_too_large"
    # The bill is checked first: a draft of the sku whose bill reaches 10^15 says so.
    dear = a_draft(PurchaseOrderLine(sku="MUG", quantity=most, unit_cost=Money.of("1000000", "USD")))
    assert past_the_limit(dear, "MUG") == ("amount_too_large", "bill 10^15 USD or more")


def test_the_safety_stock_kept_back_from_orders_is_no_supply_for_the_backorders():
    """2 available and 10 on order, 10 of them kept back from orders: orders lacking 4 may take 2
    once everything is there. Counted as supply, the 12 bought nothing for them (12 - 4 is above
    the point of 5) and the orders waited for good: stock held at the safety level crosses nothing."""
    crossed = crossing(on_order(6, 2, 10, 10))  # low (6 -> 2), but 2 + 10 on order covers the point
    assert crossed is not None and (crossed.low, crossed.reorders) == (True, False)

    assert crossed.to_buy(4) == 0  # nothing kept back
    assert crossed.to_buy(4, kept=10) == 20 + 2
    assert lacking(4, 12, 10) == 2 and lacking(4, 3, 5) == 4 and lacking(2, 12, 10) == 0


@pytest.mark.parametrize(
    ("before", "after", "incoming_before", "incoming_after", "withdrawn"),
    [
        (0, 0, 3, 0, True),  # a purchase order cancelled
        (0, 3, 3, 0, False),  # received: the units moved from incoming to available
        (0, 2, 3, 0, True),  # 2 arrived and 1 no longer comes
        (5, 4, 3, 3, False),  # a reservation: nothing on order moved
        (0, 0, 0, 3, False),  # a purchase order opened
    ],
)
def test_units_on_order_are_withdrawn_when_incoming_and_the_position_fall(
    before, after, incoming_before, incoming_after, withdrawn
):
    assert on_order(before, after, incoming_before, incoming_after).withdrawn is withdrawn
