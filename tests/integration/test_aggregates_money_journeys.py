"""Customers' totals and reports' revenue after the money changes of real journeys, in-process on
moto: orders placed, cancelled in part, edited, returned and exchanged over HTTP (the workflow's
own steps run here), the Orders table's stream records as moto recorded them handed to the events
function (each batch twice: a redelivery counts once), and GET /customers and GET /reports read
back against what the orders and their refunds say."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.builders import location_body, order_body, product_body
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_events
from tests.integration.return_steps import services  # noqa: F401
from tests.integration.test_cancel_units_api import cheap_from_three  # noqa: F401 (a fixture: 3 MUGs or more at 2.00)

_channels = itertools.count(1)


def _table() -> str:
    import os

    return os.environ["ORDERS_TABLE"]


def consume(records: list[dict[str, Any]]) -> None:
    """The events function handed `records`, twice (the stream delivering the batch again)."""
    from functions.events.app import lambda_handler

    for _ in range(2):
        assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_events() as started:
        for sku, price in (("MUG", "12.50"), ("CAP", "7.77")):
            assert started.put(f"/products/{sku}", json=product_body(price)).status_code == 201
        west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
        assert started.put("/locations/wh-west", json=west).status_code == 201
        assert started.put("/inventory/MUG/wh-west", json={"on_hand": 1000}).status_code == 200
        assert started.put("/inventory/CAP/wh-west", json={"on_hand": 1000}).status_code == 200
        # PEN only in the east: an order of MUGs and PENs ships in two parcels.
        assert started.put("/products/PEN", json=product_body("3.33")).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/PEN/wh-east", json={"on_hand": 1000}).status_code == 200
        yield started


@pytest.fixture
def stream(api: InProcessApi) -> TableStream:
    return TableStream(_table(), from_now=True)  # not what earlier tests wrote


class Shopper:
    """One customer in a channel of their own: the reports of that channel are theirs alone."""

    def __init__(self, api: InProcessApi):
        number = next(_channels)
        self.api = api
        self.channel = f"money{number}"
        self.customer = f"cus_money{number}"
        self._orders = itertools.count(1)

    def place(self, *lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
        body = order_body(
            channel=self.channel,
            external_id=f"{self.channel}-{next(self._orders)}",
            customer={"id": self.customer, "email": f"{self.customer}@example.com", "name": "Ada"},
            lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines],
            **overrides,
        )
        placed = self.api.post("/orders", json=body)
        assert placed.status_code == 201, placed.text
        return self.allocate(placed.json()["id"])

    def allocate(self, order_id: str) -> dict[str, Any]:
        from functions.bootstrap import Config, bootstrap

        workflow = bootstrap(Config.from_env()).workflow
        workflow.authorize_payment(order_id, attempt=0)
        workflow.reserve_stock(order_id)
        workflow.create_shipments(order_id)
        order = self.order(order_id)
        assert order["status"] == "allocated", order
        return order

    def order(self, order_id: str) -> dict[str, Any]:
        return self.api.get(f"/orders/{order_id}").json()

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        answer = self.api.post(path, json=body, **kwargs)
        assert answer.status_code in (200, 201, 202), answer.text
        return answer.json()

    def cancel(self, order_id: str, lines: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": "customer asked"}
        if lines is not None:
            body["lines"] = [{"line_id": line_id, "quantity": quantity} for line_id, quantity in lines.items()]
        return self.post(f"/orders/{order_id}/cancel", body)

    def ship_and_deliver(self, order: dict[str, Any]) -> dict[str, Any]:
        for shipment in order["shipments"]:
            if shipment["status"] == "pending":
                self.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", {})
                self.post(f"/orders/{order['id']}/shipments/{shipment['id']}/deliver", {})
        return self.order(order["id"])

    # --- what the API shows, and what the orders say it should --------------------------------

    def customer_totals(self) -> tuple[str, str]:
        answer = self.api.get(f"/customers/{self.customer}")
        assert answer.status_code == 200, answer.text
        (total,) = answer.json()["totals"]
        return total["ordered"]["amount"], total["refunded"]["amount"]

    def report(self, kind: str) -> list[tuple[str, int, str]]:
        answer = self.api.get(f"/reports/top-{kind}", params={"currency": "USD", "channel": self.channel})
        assert answer.status_code == 200, answer.text
        count = {"products": "units", "customers": "orders", "regions": "orders"}[kind]
        key = {"products": "sku", "customers": "customer_id", "regions": "country"}[kind]
        return [(row[key], row[count], row["revenue"]["amount"]) for row in answer.json()["items"]]


def refunded(api: InProcessApi, order_id: str) -> Decimal:
    """What the gateway gave back on the order, by its refund list."""
    items = api.get(f"/orders/{order_id}/refunds").json()["items"]
    return sum((Decimal(r["amount"]["amount"]) for r in items if r["status"] == "succeeded"), Decimal("0.00"))


def line_revenue(line: dict[str, Any]) -> Decimal:
    """API.md: quantity x unit_price - discount, units refunded on a return taken out at their share."""
    quantity = line["quantity"]
    if not quantity:
        return Decimal("0.00")
    net = Decimal(line["unit_price"]["amount"]) * quantity - Decimal(line["discount"]["amount"])
    returned = line["returned_quantity"]
    return net - (net * returned / quantity).quantize(Decimal("0.01"))


@pytest.mark.usefixtures("cheap_from_three")
def test_a_cancel_of_units_kept_as_sold_takes_out_only_their_share(api, stream):
    shopper = Shopper(api)
    order = shopper.place(("MUG", 3), ("CAP", 1))
    assert order["lines"][0]["unit_price"]["amount"] == "2.00"
    consume(stream.new_records())
    assert shopper.report("products") == [("CAP", 1, "7.77"), ("MUG", 3, "6.00")]

    done = shopper.cancel(order["id"], {"L1": 1})  # priced again the two left would cost 25.00: kept at 2.00

    assert done["lines"][0]["unit_price"]["amount"] == "2.00"
    consume(stream.new_records())
    assert shopper.report("products") == [("CAP", 1, "7.77"), ("MUG", 2, "4.00")]
    assert shopper.report("customers") == [(shopper.customer, 1, "11.77")]
    assert shopper.customer_totals() == (done["totals"]["grand_total"]["amount"], "0.00")
    shipped = shopper.ship_and_deliver(done)
    consume(stream.new_records())
    assert shopper.customer_totals() == (shipped["totals"]["grand_total"]["amount"], str(refunded(api, order["id"])))


@pytest.mark.usefixtures("cheap_from_three")
def test_a_cancel_of_units_repriced_lower_counts_the_units_left_at_their_new_price(api, stream):
    shopper = Shopper(api)
    order = shopper.place(("MUG", 5))  # 5 x 2.00
    consume(stream.new_records())

    done = shopper.cancel(order["id"], {"L1": 2})  # 3 left, still 2.00 each: priced as at capture

    consume(stream.new_records())
    assert shopper.report("products") == [("MUG", 3, "6.00")]
    assert shopper.report("regions") == [("US", 1, "6.00")]
    assert shopper.customer_totals() == (done["totals"]["grand_total"]["amount"], "0.00")


def test_an_edit_after_a_partial_cancel_counts_the_edited_lines_once(api, stream):
    shopper = Shopper(api)
    order = shopper.place(("MUG", 3), ("CAP", 2))
    consume(stream.new_records())
    cancelled = shopper.cancel(order["id"], {"L2": 1})
    consume(stream.new_records())
    assert shopper.report("products") == [("MUG", 3, "37.50"), ("CAP", 1, "7.77")]

    edited = api.request("PATCH", f"/orders/{order['id']}", json={"lines": [{"sku": "MUG", "quantity": 1}]},
                         headers={"If-Match": str(cancelled["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text
    consume(stream.new_records())
    # Sent back to be sourced: nothing counts until it is allocated again.
    assert shopper.report("products") == []
    again = shopper.allocate(order["id"])
    consume(stream.new_records())

    assert shopper.report("products") == [("MUG", 1, "12.50")]
    assert shopper.customer_totals() == (again["totals"]["grand_total"]["amount"], str(refunded(api, order["id"])))


def returned(shopper: Shopper, order: dict[str, Any], lines: dict[str, int], code: str = "damaged",
             exchange: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    """A return of `lines` of the delivered `order` received (resellable) and run to its refund (an
    exchange's replacement placed): its id."""
    from tests.integration.return_steps import step

    body: dict[str, Any] = {"lines": [{"line_id": line_id, "quantity": quantity, "reason": "broken",
                                       "reason_code": code} for line_id, quantity in lines.items()]}  # fmt: skip
    if exchange is not None:
        body["exchange"] = {"lines": exchange}
    return_id = shopper.post(f"/orders/{order['id']}/returns", body)["id"]
    receipt = {"location_id": "wh-west", "lines": [
        {"line_id": line_id, "quantity": quantity, "condition": "resellable"} for line_id, quantity in lines.items()
    ]}  # fmt: skip
    shopper.post(f"/returns/{return_id}/receive", receipt)
    for name in ("receive", "restock", "record", "refund", *(("exchange",) if exchange is not None else ())):
        step(name, return_id)
    return return_id


def test_a_return_refunded_with_its_shipping_takes_out_the_lines_and_counts_the_whole_refund(api, stream, services):  # noqa: F811
    shopper = Shopper(api)
    order = shopper.ship_and_deliver(shopper.place(("MUG", 2), ("CAP", 1)))
    assert Decimal(order["totals"]["shipping"]["amount"]) > 0

    return_id = returned(shopper, order, {"L1": 2, "L2": 1})  # the whole order, damaged: shipping refunded

    consume(stream.new_records())
    back = api.get(f"/returns/{return_id}").json()
    assert Decimal(back["refund"]["amount"]) == Decimal(order["totals"]["grand_total"]["amount"])
    assert shopper.report("products") == []
    assert shopper.report("customers") == [(shopper.customer, 1, "0.00")]  # an order still, all its units back
    assert shopper.customer_totals() == (order["totals"]["grand_total"]["amount"], back["refund"]["amount"])
    assert refunded(api, order["id"]) == Decimal(back["refund"]["amount"])


def mug_exchanged_for_caps(shopper: Shopper, caps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order of 2 MUGs delivered, one sent back in exchange for `caps` CAPs (the return run to
    its end): the original order as delivered and the replacement allocated."""
    order = shopper.ship_and_deliver(shopper.place(("MUG", 2)))
    return_id = returned(shopper, order, {"L1": 1}, code="size_or_fit", exchange=[{"sku": "CAP", "quantity": caps}])
    replacement_id = shopper.api.get(f"/returns/{return_id}").json()["exchange_order_id"]
    return order, shopper.allocate(replacement_id)


def test_an_exchange_orders_the_replacements_grand_total_and_its_cancel_takes_it_out(api, stream, services):  # noqa: F811
    shopper = Shopper(api)
    order = shopper.ship_and_deliver(shopper.place(("MUG", 2)))
    consume(stream.new_records())

    return_id = returned(shopper, order, {"L1": 1}, code="size_or_fit", exchange=[{"sku": "CAP", "quantity": 1}])

    replacement_id = api.get(f"/returns/{return_id}").json()["exchange_order_id"]
    replacement = shopper.allocate(replacement_id)
    consume(stream.new_records())
    credit = Decimal(replacement["exchange_credit"]["amount"])
    # API.md: `ordered` sums the grand totals of the customer's orders not cancelled or failed.
    ordered = Decimal(order["totals"]["grand_total"]["amount"]) + Decimal(
        replacement["totals"]["grand_total"]["amount"]
    )
    original = shopper.order(order["id"])
    assert shopper.report("products") == [("MUG", 1, str(line_revenue(original["lines"][0]))), ("CAP", 1, "7.77")]
    assert shopper.customer_totals() == (str(ordered), str(refunded(api, order["id"])))

    shopper.cancel(replacement_id)
    consume(stream.new_records())

    assert shopper.report("products") == [("MUG", 1, str(line_revenue(original["lines"][0])))]
    total_refunded = refunded(api, order["id"]) + refunded(api, replacement_id)
    assert total_refunded == credit  # the whole credit given back on the original
    assert shopper.customer_totals() == (order["totals"]["grand_total"]["amount"], str(total_refunded))


def grand_totals(api: InProcessApi, *order_ids: str) -> Decimal:
    """API.md's `ordered` for these orders (none cancelled or failed): their grand totals summed."""
    return sum(
        (Decimal(api.get(f"/orders/{o}").json()["totals"]["grand_total"]["amount"]) for o in order_ids), Decimal(0)
    )


def kept_by_payments(api: InProcessApi, *order_ids: str) -> Decimal:
    """What the customer's payments keep: captured less refunded, over their orders."""
    kept = Decimal("0.00")
    for order_id in order_ids:
        payment = api.get(f"/orders/{order_id}").json()["payment"]
        kept += Decimal(payment["captured"]["amount"]) - Decimal(payment["refunded"]["amount"])
    return kept


def test_a_replacement_cut_below_its_credit_by_a_cancel_of_units_is_ordered_at_its_new_grand_total(
    api,
    stream,
    services,  # noqa: F811
):
    shopper = Shopper(api)
    order, replacement = mug_exchanged_for_caps(shopper, 3)
    replacement_id = replacement["id"]
    credit = Decimal(replacement["exchange_credit"]["amount"])
    assert Decimal(replacement["totals"]["grand_total"]["amount"]) > credit  # the difference authorized on it

    cut = shopper.cancel(replacement_id, {"L1": 2})  # one CAP left: less than the credit
    assert Decimal(cut["totals"]["grand_total"]["amount"]) < credit
    shopper.ship_and_deliver(cut)
    consume(stream.new_records())

    ordered, refunds = shopper.customer_totals()
    assert shopper.report("products") == [("MUG", 1, "12.50"), ("CAP", 1, "7.77")]
    assert Decimal(ordered) == grand_totals(api, order["id"], replacement_id)
    assert Decimal(refunds) == refunded(api, order["id"]) + refunded(api, replacement_id)


def test_a_replacement_edited_up_after_the_rest_of_its_credit_was_refunded_is_ordered_at_its_new_grand_total(
    api,
    stream,
    services,  # noqa: F811
):
    shopper = Shopper(api)
    order, replacement = mug_exchanged_for_caps(shopper, 1)
    replacement_id = replacement["id"]
    assert refunded(api, order["id"]) > 0  # the rest of the credit, refunded at once

    edited = api.request("PATCH", f"/orders/{replacement_id}", json={"lines": [{"sku": "CAP", "quantity": 3}]},
                         headers={"If-Match": str(replacement["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text
    shopper.ship_and_deliver(shopper.allocate(replacement_id))
    consume(stream.new_records())

    ordered, refunds = shopper.customer_totals()
    assert Decimal(ordered) == grand_totals(api, order["id"], replacement_id)
    assert Decimal(refunds) == refunded(api, order["id"]) + refunded(api, replacement_id)


def test_a_return_of_a_shipped_parcel_then_a_cancel_of_the_rest_counts_what_was_kept(api, stream, services):  # noqa: F811
    shopper = Shopper(api)
    order = shopper.place(("MUG", 2), ("PEN", 3))
    west = next(s for s in order["shipments"] if s["location_id"] == "wh-west")
    shopper.post(f"/orders/{order['id']}/shipments/{west['id']}/ship", {})
    shopper.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", {})
    consume(stream.new_records())
    returned(shopper, shopper.order(order["id"]), {"L1": 1}, code="size_or_fit")
    consume(stream.new_records())

    done = shopper.cancel(order["id"])  # the PENs, never shipped

    consume(stream.new_records())
    assert done["status"] in ("delivered", "partially_returned"), done["status"]
    assert shopper.report("products") == [("MUG", 1, str(line_revenue(done["lines"][0])))]
    assert shopper.report("customers") == [(shopper.customer, 1, str(line_revenue(done["lines"][0])))]
    ordered, refunds = shopper.customer_totals()
    assert ordered == done["totals"]["grand_total"]["amount"]
    assert Decimal(refunds) == refunded(api, order["id"])
    assert Decimal(ordered) - Decimal(refunds) == kept_by_payments(api, order["id"])


def test_a_damaged_parcel_returned_then_the_rest_cancelled_counts_the_shipping_given_back_once(
    api,
    stream,
    services,  # noqa: F811
):
    # The MUGs' parcel arrives broken and comes back (damaged: the shop's fault), then the PENs that
    # had not shipped are cancelled: the cancel gives the whole order's shipping back
    # (whole_order_returns). Nothing of the order is revenue; the customer was refunded all they paid.
    shopper = Shopper(api)
    order = shopper.place(("MUG", 2), ("PEN", 3))
    west = next(s for s in order["shipments"] if s["location_id"] == "wh-west")
    shopper.post(f"/orders/{order['id']}/shipments/{west['id']}/ship", {})
    shopper.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", {})
    returned(shopper, shopper.order(order["id"]), {"L1": 2}, code="damaged")
    consume(stream.new_records())

    done = shopper.cancel(order["id"])

    consume(stream.new_records())
    after = shopper.order(order["id"])
    assert after["status"] == "returned", after["status"]
    assert after["payment"]["refunded"] == after["payment"]["captured"]  # the shipping came back too
    assert shopper.report("products") == []
    assert shopper.report("customers") == [(shopper.customer, 1, "0.00")]
    ordered, refunds = shopper.customer_totals()
    assert ordered == done["totals"]["grand_total"]["amount"] == after["totals"]["grand_total"]["amount"]
    assert Decimal(refunds) == refunded(api, order["id"]) == Decimal(after["payment"]["refunded"]["amount"])
    assert Decimal(ordered) - Decimal(refunds) == kept_by_payments(api, order["id"]) == 0


def test_refunds_the_gateway_refused_count_nothing_and_a_payment_failure_orders_nothing(api, stream):
    from core.errors import PaymentDeclined
    from functions.bootstrap import Config, bootstrap

    shopper = Shopper(api)
    refused = shopper.ship_and_deliver(
        shopper.place(("MUG", 1), payment={"method": "test", "token": "tok_refund_decline"})
    )
    sorry = {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "late"}
    appeasement = api.post(f"/orders/{refused['id']}/refunds", json=sorry)
    assert (appeasement.status_code, appeasement.json()["status"]) == (201, "failed"), appeasement.text
    body = order_body(
        channel=shopper.channel,
        external_id=f"{shopper.channel}-declined",
        customer={"id": shopper.customer, "email": f"{shopper.customer}@example.com"},
        lines=[{"sku": "CAP", "quantity": 1}],
        payment={"method": "test", "token": "tok_decline"},
    )
    declined = api.post("/orders", json=body).json()
    workflow = bootstrap(Config.from_env()).workflow
    with pytest.raises(PaymentDeclined):
        workflow.authorize_payment(declined["id"], attempt=0)
    workflow.fail_payment(declined["id"], "PaymentDeclined", "declined")  # the state machine's Catch
    assert shopper.order(declined["id"])["status"] == "payment_failed"
    consume(stream.new_records())

    customer = api.get(f"/customers/{shopper.customer}").json()
    assert (customer["orders_count"], customer["payment_failures"]) == (2, 1)
    nothing = {"amount": "0.00", "currency": "USD"}
    assert customer["totals"] == [{"currency": "USD", "ordered": refused["totals"]["grand_total"], "refunded": nothing}]
    assert shopper.report("products") == [("MUG", 1, "12.50")]


def test_a_customer_of_two_channels_and_currencies_is_shown_to_each_key_as_its_channel_has_them(api, stream):
    from tests.integration.in_process import issue

    assert api.put("/products/EURMUG", json=product_body("9.00", "EUR")).status_code == 201
    assert api.put("/inventory/EURMUG/wh-west", json={"on_hand": 100}).status_code == 200
    usd, eur = Shopper(api), Shopper(api)
    eur.customer = usd.customer  # one customer, ordering in two channels, each in its currency
    in_usd = usd.place(("MUG", 1))
    in_eur = eur.place(("EURMUG", 2), currency="EUR")
    consume(stream.new_records())

    everything = api.get(f"/customers/{usd.customer}").json()
    assert everything["orders_count"] == 2
    assert everything["totals"] == [
        {"currency": c, "ordered": o["totals"]["grand_total"], "refunded": {"amount": "0.00", "currency": c}}
        for c, o in (("EUR", in_eur), ("USD", in_usd))
    ]
    usd_key = issue(api, "orders:read", "reports:read", channel=usd.channel)
    seen = api.get(f"/customers/{usd.customer}", key=usd_key)
    assert seen.status_code == 200, seen.text
    assert (seen.json()["orders_count"], [t["currency"] for t in seen.json()["totals"]]) == (1, ["USD"])
    stranger = issue(api, "orders:read", channel=f"{usd.channel}x")
    assert api.get(f"/customers/{usd.customer}", key=stranger).status_code == 404
    found = api.get("/customers", params={"email": f"{usd.customer}@example.com"}, key=stranger)
    assert (found.status_code, found.json()["items"]) == (200, [])
    other = api.get("/reports/top-products", params={"currency": "EUR", "channel": eur.channel}, key=usd_key)
    assert other.status_code == 403
    own = api.get("/reports/top-products", params={"currency": "EUR"}, key=usd_key)
    assert (own.status_code, own.json()["items"]) == (200, [])
    eur_rows = api.get("/reports/top-customers", params={"currency": "EUR"}).json()["items"]
    assert {"customer_id": eur.customer, "orders": 1, "revenue": {"amount": "18.00", "currency": "EUR"}} in eur_rows


def test_a_cancel_after_a_partial_ship_counts_the_parcel_that_left_and_what_its_payment_kept(api, stream):
    shopper = Shopper(api)
    order = shopper.place(("MUG", 2), ("PEN", 3))
    west = next(s for s in order["shipments"] if s["location_id"] == "wh-west")
    shopper.post(f"/orders/{order['id']}/shipments/{west['id']}/ship", {})
    consume(stream.new_records())

    done = shopper.cancel(order["id"])  # the PENs, never shipped

    consume(stream.new_records())
    assert done["status"] == "shipped", done["status"]
    assert shopper.report("products") == [("MUG", 2, "25.00")]
    assert shopper.report("regions") == [("US", 1, "25.00")]
    ordered, refunds = shopper.customer_totals()
    assert ordered == done["totals"]["grand_total"]["amount"]
    assert Decimal(refunds) == refunded(api, order["id"])
    assert Decimal(ordered) - Decimal(refunds) == kept_by_payments(api, order["id"])


def test_units_back_whose_refund_the_gateway_refused_stay_in_revenue(api, stream, services):  # noqa: F811
    # API.md: revenue is "taken out again when it is cancelled or units are refunded on return". A
    # unit received back whose refund the gateway refused was not refunded: it stays sold.
    from core.returns import RefundNotDone
    from tests.integration.return_steps import step

    shopper = Shopper(api)
    order = shopper.ship_and_deliver(
        shopper.place(("MUG", 2), ("CAP", 1), payment={"method": "test", "token": "tok_refund_decline"})
    )
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}
    return_id = shopper.post(f"/orders/{order['id']}/returns", body)["id"]
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    shopper.post(f"/returns/{return_id}/receive", receipt)
    for name in ("receive", "restock", "record"):
        step(name, return_id)
    with pytest.raises(RefundNotDone):  # the workflow tries it again, the gateway refuses again
        step("refund", return_id)

    consume(stream.new_records())
    after = shopper.order(order["id"])
    assert after["lines"][0]["returned_quantity"] == 1  # the unit is back ...
    assert [r["status"] for r in api.get(f"/orders/{order['id']}/refunds").json()["items"]] == ["failed"]
    net = str(Decimal(after["lines"][0]["unit_price"]["amount"]) * 2 - Decimal(after["lines"][0]["discount"]["amount"]))
    assert shopper.report("products") == [("MUG", 2, net), ("CAP", 1, "7.77")]  # ... and still sold
    assert shopper.report("customers") == [(shopper.customer, 1, str(Decimal(net) + Decimal("7.77")))]
    assert shopper.customer_totals() == (after["totals"]["grand_total"]["amount"], "0.00")


def test_a_hold_keeps_an_allocated_orders_revenue_once_and_a_cancel_while_held_takes_it_out(api, stream):
    # counts_revenue reads a held order by the status its hold resumes to: held and released, the
    # order counts once (not out and back in); cancelled while held, it leaves every figure.
    shopper = Shopper(api)
    order = shopper.place(("MUG", 2))
    consume(stream.new_records())

    held = shopper.post(f"/orders/{order['id']}/hold", {"reason": "customer_request"})
    consume(stream.new_records())
    assert held["status"] == "on_hold"
    assert shopper.report("products") == [("MUG", 2, "25.00")]
    released = shopper.post(f"/orders/{order['id']}/release", {})
    consume(stream.new_records())
    assert released["status"] == "allocated"
    assert shopper.report("products") == [("MUG", 2, "25.00")]
    assert shopper.report("customers") == [(shopper.customer, 1, "25.00")]

    shopper.post(f"/orders/{order['id']}/hold", {"reason": "fraud_review"})
    done = shopper.cancel(order["id"])
    consume(stream.new_records())

    assert done["status"] == "cancelled"
    assert (shopper.report("products"), shopper.report("customers"), shopper.report("regions")) == ([], [], [])
    assert shopper.customer_totals() == ("0.00", "0.00")


def test_a_parcel_rejected_or_an_address_edited_counts_the_order_once_and_in_its_new_region(api, stream):
    # A location that cannot fulfil sends the order back to be sourced (authorized: its revenue
    # out), and the next allocation counts it again, once; an address edit does the same, and the
    # regions report follows the order to its new state.
    from tests.builders import address_body

    shopper = Shopper(api)
    assert api.put("/products/INK", json=product_body("3.33")).status_code in (200, 201)
    for location_id in ("wh-west", "wh-east"):
        assert api.put(f"/inventory/INK/{location_id}", json={"on_hand": 100}).status_code == 200
    order = shopper.place(("INK", 2))
    consume(stream.new_records())
    (parcel,) = order["shipments"]
    assert parcel["location_id"] == "wh-west"  # the nearest to San Francisco

    sent_back = shopper.post(f"/orders/{order['id']}/shipments/{parcel['id']}/reject", {"reason": "damaged stock"})
    consume(stream.new_records())
    assert sent_back["status"] == "authorized"
    assert shopper.report("products") == []
    again = shopper.allocate(order["id"])
    consume(stream.new_records())
    assert [s["location_id"] for s in again["shipments"] if s["status"] == "pending"] == ["wh-east"]
    assert shopper.report("products") == [("INK", 2, "6.66")]

    new_york = address_body(city="New York", region="NY", postal_code="10001")
    edited = api.request("PATCH", f"/orders/{order['id']}", json={"shipping_address": new_york},
                         headers={"If-Match": str(again["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text
    shopper.ship_and_deliver(shopper.allocate(order["id"]))
    consume(stream.new_records())

    regions = api.get("/reports/top-regions", params={"currency": "USD", "channel": shopper.channel}).json()["items"]
    assert [(r["region"], r["orders"], r["revenue"]["amount"]) for r in regions] == [("NY", 1, "6.66")]
    assert shopper.report("customers") == [(shopper.customer, 1, "6.66")]
    final = shopper.order(order["id"])
    assert shopper.customer_totals() == (final["totals"]["grand_total"]["amount"], "0.00")


def test_an_appeasement_counts_in_refunded_and_leaves_revenue_as_it_was(api, stream):
    # API.md: revenue comes out when an order is cancelled or units are refunded on return; an
    # appeasement refunds no unit.
    shopper = Shopper(api)
    order = shopper.ship_and_deliver(shopper.place(("MUG", 1), ("CAP", 2)))
    sorry = {"amount": {"amount": "3.00", "currency": "USD"}, "reason": "late"}
    assert api.post(f"/orders/{order['id']}/refunds", json=sorry).json()["status"] == "succeeded"

    consume(stream.new_records())

    assert shopper.report("products") == [("CAP", 2, "15.54"), ("MUG", 1, "12.50")]
    assert shopper.customer_totals() == (order["totals"]["grand_total"]["amount"], "3.00")


def test_a_batch_failed_part_way_and_retried_from_its_failed_record_counts_every_change_once(api, stream, monkeypatch):
    # Lambda's partial batch response: a record that fails after its counters were applied (and its
    # events published) is retried with every record after it, which were held back unprocessed.
    from functions.events import app

    shopper = Shopper(api)
    first = shopper.place(("MUG", 2))
    second = shopper.place(("CAP", 1))
    shopper.cancel(first["id"])
    records = stream.new_records()
    failing = next(
        n for n, r in enumerate(records)
        if r["dynamodb"]["Keys"]["id"]["S"] == second["id"] and r["dynamodb"]["NewImage"]["status"]["S"] == "allocated"
    )  # fmt: skip
    assert any(r["dynamodb"]["Keys"]["id"]["S"] == first["id"] for r in records[failing + 1 :])  # the cancel, after
    notify, failed = app.notify, []

    def fails_once(old, new, seconds_left=None, entries=None):
        if not failed and new["id"] == second["id"] and new["status"] == "allocated":
            failed.append(True)
            raise ConnectionError("the notifier's store did not answer")
        return notify(old, new, seconds_left, entries)

    monkeypatch.setattr(app, "notify", fails_once)
    answer = app.lambda_handler({"Records": records}, context("EventsFunction"))
    held_back = [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in records[failing:]]
    assert answer == {"batchItemFailures": held_back}  # the failed record first, then those after it
    consume(records[failing:])  # Lambda retries from the failed record (twice here: a redelivery too)

    assert shopper.report("products") == [("CAP", 1, "7.77")]
    assert shopper.report("customers") == [(shopper.customer, 1, "7.77")]
    assert shopper.customer_totals() == (second["totals"]["grand_total"]["amount"], "0.00")
    customer = api.get(f"/customers/{shopper.customer}").json()
    assert (customer["orders_count"], customer["payment_failures"]) == (2, 0)
