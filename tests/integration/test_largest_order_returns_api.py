"""The largest order's returns, refunds and exchanges over the in-process API on moto, every
DynamoDB call held to what DynamoDB takes (tests/aws_request_limits.py: an expression built per
line, per unit, per key or per return that passes on moto and is refused on AWS fails here). The
order of 100 lines of the longest skus, shipped from a location of the longest id, comes back in
an exchange of a unit of every line for as many replacement lines, the replacement through its own
workflow; returns of two units of every line received in both conditions and of the last unit of
half its lines each, restocked at three locations; a refund whose gateway answer is lost is
retried; an appeasement besides; the return lists, the order's refunds and history, the customer's
totals and the product report read back over it. And the largest return restocked fills a
backordered order of a line per unit of its sku."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import boto3
import pytest

from core.errors import PaymentGatewayUnavailable
from tests.builders import location, order_body, product_body
from tests.fakes import AnswersLost
from tests.integration.conftest import pass_through_workflow
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_events, stocked_alike
from tests.integration.return_steps import refunds, services, step  # noqa: F401 (services: a fixture)
from tests.integration.test_aggregates_money_journeys import Shopper
from tests.integration.test_event_sizes import text
from tests.integration.test_redelivery_matrix import lambda_stream_record

SKUS = [f"SKU-{n:03d}-" + "x" * 120 for n in range(1, 101)]  # 100 skus at their longest: 128 characters
WAREHOUSE = "wh-" + "w" * 125  # location ids at their longest too: 128 characters
RESTOCK_AT = [f"rs-{n}-" + "r" * 123 for n in range(1, 4)]
BACKORDERED = "SKU-BACK-" + "b" * 119  # a product that allows backorder
STOCKED = 10
PRICE = "12.34"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    """The world: the locations and the 100 products stocked, written by the repositories (what
    PUT /products and PUT /inventory write, without 200 requests through the gateway; stocked_alike).
    Returns are received at the restock locations, which ship nothing: no order's sourcing reads
    their stock."""
    from functions.bootstrap import Config, bootstrap

    with in_process_api_with_events() as started:
        built = bootstrap(Config.from_env())
        for location_id in (WAREHOUSE, *RESTOCK_AT):
            built.catalog_repository.put_location(location(location_id, ships=location_id == WAREHOUSE))
        stocked_alike(built, [(sku, WAREHOUSE) for sku in SKUS], STOCKED, PRICE)
        yield started


def _table() -> str:
    return os.environ["ORDERS_TABLE"]


def delivered_once(records: list[dict[str, Any]]) -> None:
    """The events function handed the Orders stream's `records` (test_aggregates_money_journeys
    hands each batch twice, for its redelivery)."""
    from functions.events.app import lambda_handler

    assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}


def amount(value: dict[str, str]) -> Decimal:
    return Decimal(value["amount"])


def on_hand(api: InProcessApi, sku: str) -> dict[str, int]:
    return {level["location_id"]: level["on_hand"] for level in api.get(f"/inventory/{sku}").json()["locations"]}


@contextmanager
def answers_lost_to_the_refund_step(operation: str, times: int) -> Iterator[None]:
    """The gateway's answers to the next `times` calls of `operation` lost in the returns step's
    Lambda (tests.fakes.AnswersLost on its plugin manager)."""
    from functions.return_workflow import app as step_app

    lost = AnswersLost()
    lost.lose(operation, times)
    plugins = step_app.container().plugins
    plugins.register(lost)
    try:
        yield
    finally:
        plugins.unregister(lost)


def requested(shopper: Shopper, order_id: str, units: dict[str, int], reason: str = text(200), **body: Any) -> str:
    """A return of `units` (line id: quantity), each for `reason` (by default at its limit, in
    characters of four bytes): its id."""
    lines = [
        {"line_id": line_id, "quantity": quantity, "reason": reason, "reason_code": "size_or_fit"}
        for line_id, quantity in units.items()
    ]
    made = shopper.post(f"/orders/{order_id}/returns", {"lines": lines, **body})
    assert made["status"] == "authorized", made
    return made["id"]


def received(shopper: Shopper, return_id: str, location_id: str, units: dict[str, dict[str, int]]) -> None:
    """The return's parcel received at `location_id` (`units`: condition: {line id: quantity}) and
    the returns workflow's steps before the refund run."""
    lines = [
        {"line_id": line_id, "quantity": quantity, "condition": condition}
        for condition, by_line in units.items()
        for line_id, quantity in by_line.items()
    ]
    shopper.post(f"/returns/{return_id}/receive", {"location_id": location_id, "lines": lines})
    for name in ("receive", "restock", "record"):
        step(name, return_id)


def test_the_largest_order_comes_back_exchanged_line_for_line_then_in_three_returns_refunded_once(
    api: InProcessApi,
    services: Any,  # noqa: F811
):
    stream = TableStream(_table(), from_now=True)
    shopper = Shopper(api)
    order = shopper.ship_and_deliver(shopper.place(*((sku, 4) for sku in SKUS)))
    order_id = order["id"]
    assert (order["status"], len(order["lines"])) == ("delivered", 100)
    ids = [line["line_id"] for line in order["lines"]]

    # A unit of every line exchanged, each sku for the next one: 100 replacement lines, placed,
    # allocated, shipped and delivered through the replacement's own workflow. The reasons a little
    # short of their limit: 100 of them at it and 100 exchange lines of the longest skus are past
    # the 256 KiB a body may hold (each wide character sent as 12 bytes).
    swapped = [{"sku": SKUS[(n + 1) % 100], "quantity": 1} for n in range(100)]
    exchange = requested(shopper, order_id, dict.fromkeys(ids, 1), text(180), exchange={"lines": swapped})
    received(shopper, exchange, WAREHOUSE, {"resellable": dict.fromkeys(ids, 1)})
    step("refund", exchange)
    step("exchange", exchange)
    replacement_id = api.get(f"/returns/{exchange}").json()["exchange_order_id"]
    replacement = shopper.ship_and_deliver(shopper.allocate(replacement_id))
    assert (replacement["status"], replacement["external_id"]) == ("delivered", f"{order['external_id']}-x1")
    assert [{"sku": line["sku"], "quantity": line["quantity"]} for line in replacement["lines"]] == swapped
    # The credit paid for the replacement and the card the rest of it (its shipping): the same
    # goods at the same prices, so nothing came back at once.
    credit = amount(replacement["exchange_credit"])
    paid = amount(replacement["payment"]["captured"]) - amount(replacement["payment"]["refunded"])
    assert credit + paid == amount(replacement["totals"]["grand_total"])
    assert refunds(api, order_id) == []

    # Two units of every line, one resellable and one damaged each (200 receipt lines); the
    # gateway refunds and its answers are lost three times: the step raises, its retry refunds once.
    every_line = requested(shopper, order_id, dict.fromkeys(ids, 2))
    both = {"resellable": dict.fromkeys(ids, 1), "damaged": dict.fromkeys(ids, 1)}
    received(shopper, every_line, RESTOCK_AT[0], both)
    with answers_lost_to_the_refund_step("refund", times=3), pytest.raises(PaymentGatewayUnavailable):
        step("refund", every_line)
    assert api.get(f"/returns/{every_line}").json()["status"] == "received"
    step("refund", every_line)
    # An appeasement besides.
    appeasement = {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "late"}
    shopper.post(f"/orders/{order_id}/refunds", appeasement, headers={"Idempotency-Key": f"sorry-{order_id}"})

    # The last unit of each line in two returns of half the lines each, at two more locations.
    halves = []
    for part, location_id in ((ids[:50], RESTOCK_AT[1]), (ids[50:], WAREHOUSE)):
        half = requested(shopper, order_id, dict.fromkeys(part, 1))
        received(shopper, half, location_id, {"resellable": dict.fromkeys(part, 1)})
        step("refund", half)
        halves.append(half)

    back = shopper.order(order_id)
    assert back["status"] == "returned"
    assert [line["returned_quantity"] for line in back["lines"]] == [4] * 100
    made = [exchange, every_line, *halves]
    listed = api.get(f"/orders/{order_id}/returns", params={"limit": 100}).json()
    assert [r["id"] for r in listed["items"]] == made and listed["next_cursor"] is None
    assert [(r["status"], len(r["lines"])) for r in listed["items"]] == [
        ("refunded", 100), ("refunded", 100), ("refunded", 50), ("refunded", 50)
    ]  # fmt: skip
    newest = api.get("/returns", params={"status": "refunded", "limit": 4}).json()["items"]
    assert [r["id"] for r in newest] == made[::-1]

    # Each unit's share of its line total, once: the exchanged unit's as the credit, the others'
    # refunded, and the appeasement.
    refunded = [amount(r["refund"]) for r in listed["items"][1:]]
    lines_total = sum(amount(line["total"]) for line in back["lines"])
    assert sum(refunded) + credit == lines_total
    assert sorted(refunds(api, order_id)) == sorted(("succeeded", f"{v}") for v in [*refunded, Decimal("1.00")])
    assert amount(back["payment"]["refunded"]) == lines_total - credit + 1
    assert amount(back["payment"]["captured"]) == amount(back["totals"]["grand_total"])

    # Restocked where each parcel was received, the damaged units nowhere: of the first sku 4 left
    # the warehouse and 1 came back from the exchange; the last sku's replacement unit left too.
    first, last = on_hand(api, SKUS[0]), on_hand(api, SKUS[-1])
    assert (first[RESTOCK_AT[0]], first[RESTOCK_AT[1]], first[WAREHOUSE]) == (1, 1, STOCKED - 4 + 1 - 1)
    assert (last[RESTOCK_AT[0]], RESTOCK_AT[1] in last, last[WAREHOUSE]) == (1, False, STOCKED - 4 + 2 - 1)

    history = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [h["to_status"] for h in history if h["to_status"]][-1] == "returned"
    delivered_once(stream.new_records())
    customer = api.get(f"/customers/{shopper.customer}").json()
    ordered = amount(order["totals"]["grand_total"]) + amount(replacement["totals"]["grand_total"])
    assert (customer["returns_count"], [(amount(t["ordered"]), amount(t["refunded"])) for t in customer["totals"]]) == (
        4, [(ordered, lines_total - credit + 1)]
    )  # fmt: skip
    # Every unit of the order back; the replacement's units sold, each sku's at its price.
    report = shopper.report("products")
    assert len(report) == 10 and all(sku in SKUS and (units, revenue) == (1, PRICE) for sku, units, revenue in report)


def test_the_largest_return_restocked_fills_a_backordered_order_of_a_hundred_lines_of_its_sku_in_one_write(
    api: InProcessApi,
    services: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    # 100 units of one sku delivered and every other unit of it gone: an order of 100 lines of one
    # unit of it each waits backordered, and the return of the 100 units, restocked, fills it whole
    # in one transaction: a top-up per line, each line's reservation key on the one stock item (one
    # of MAX_TOP_UPS items: a fill capped at 99 top-ups left the 100th line waiting beside a unit),
    # its conditions within DynamoDB's 4 KB (they ran to 4.4 KB for 99).
    from core.errors import Backordered
    from functions.backorders import app as backorders_app
    from functions.bootstrap import Config, bootstrap

    shopper = Shopper(api)
    assert api.put(f"/products/{BACKORDERED}", json=product_body(PRICE, allow_backorder=True)).status_code == 201
    assert api.put(f"/inventory/{BACKORDERED}/{WAREHOUSE}", json={"on_hand": 100}).status_code == 200
    delivered = shopper.ship_and_deliver(shopper.place((BACKORDERED, 100)))
    placed = shopper.post("/orders", order_body(
        channel=shopper.channel, external_id=f"{shopper.channel}-waiting",
        customer={"id": shopper.customer, "email": f"{shopper.customer}@example.com"},
        lines=[{"sku": BACKORDERED, "quantity": 1}] * 100,
    ))  # fmt: skip
    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(placed["id"], attempt=0)
    with pytest.raises(Backordered):
        workflow.reserve_stock(placed["id"])
    assert shopper.order(placed["id"])["status"] == "backordered"

    table = os.environ["INVENTORY_TABLE"]
    stock = TableStream(table, from_now=True)
    back = requested(shopper, delivered["id"], {"L1": 100})
    received(shopper, back, WAREHOUSE, {"resellable": {"L1": 100}})
    pass_through_workflow(monkeypatch)  # the filled order's workflow started again
    with backorders_app.container.override(bootstrap(Config.from_env())):
        described = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName=table)["Table"]
        records = [lambda_stream_record(record, described["LatestStreamArn"]) for record in stock.new_records()]
        answer = backorders_app.lambda_handler({"Records": records}, context("BackorderFunction"))

    assert answer == {"batchItemFailures": []}
    workflow.create_shipments(placed["id"])  # what the started execution runs
    filled = shopper.order(placed["id"])
    assert filled["status"] == "allocated"
    assert sorted((a["line_id"], a["location_id"], a["quantity"]) for a in filled["allocations"]) == sorted(
        (f"L{n}", WAREHOUSE, 1) for n in range(1, 101)
    )
    [level] = api.get(f"/inventory/{BACKORDERED}").json()["locations"]
    assert (level["on_hand"], level["reserved"], level["available"]) == (100, 100, 0)
