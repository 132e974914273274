"""Each parcel's share of the payment, captured as it ships, over HTTP in-process on moto, in a
currency with no minor units (JPY) and one with three (KWD): three parcels whose shares do not
divide evenly, shipped so that the parcel carrying the shipping and the rounding leaves last. Every
capture is the one the gateway made, and together they are the order's total to the last unit."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.money import Money
from core.pricing_types import PricingDraft, ShippingQuote
from plugins import test_payments
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_payment_plugin_failures_api import registered

_orders = itertools.count(1)
# Three warehouses, each the only one stocking its product: an order of all three ships in three parcels.
WAREHOUSES = (("wh-a", 40.73, -74.17), ("wh-b", 39.53, -119.81), ("wh-c", 41.88, -87.63))
PRICES = {"JPY": ("333", "1001", "77"), "KWD": ("3.333", "1.001", "0.077")}


class KuwaitShipping:
    """Flat-rate shipping in KWD, which the built-in flat rates do not quote."""

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft) -> list[ShippingQuote] | None:
        if draft.currency != "KWD":
            return None
        return [ShippingQuote(method="standard", amount=Money.of("1.235", "KWD"), description="Standard")]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started, registered(KuwaitShipping()):
        for location_id, latitude, longitude in WAREHOUSES:
            body = location_body(name=location_id, latitude=latitude, longitude=longitude)
            assert started.put(f"/locations/{location_id}", json=body).status_code == 201
        for currency, prices in PRICES.items():
            for (location_id, _, _), price in zip(WAREHOUSES, prices, strict=True):
                sku = f"{currency}-{location_id}"
                assert started.put(f"/products/{sku}", json=product_body(price, currency)).status_code == 201
                assert started.put(f"/inventory/{sku}/{location_id}", json={"on_hand": 100}).status_code == 200
        yield started


def allocated(api: InProcessApi, currency: str, *quantities: int) -> dict[str, Any]:
    """An order of `quantities` units of the currency's product at each warehouse, taken to
    `allocated` by the workflow's own steps."""
    from functions.bootstrap import Config, bootstrap

    lines = [{"sku": f"{currency}-{location_id}", "quantity": quantity}
             for (location_id, _, _), quantity in zip(WAREHOUSES, quantities, strict=True)]  # fmt: skip
    placed = api.post("/orders", json=order_body(external_id=f"share-{next(_orders)}", currency=currency, lines=lines))
    assert placed.status_code == 201, placed.text
    workflow = bootstrap(Config.from_env()).workflow
    order_id = placed.json()["id"]
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


@pytest.mark.parametrize("currency", sorted(PRICES))
def test_the_parcels_captures_add_up_to_the_total_with_the_first_parcel_leaving_last(api, currency):
    order = allocated(api, currency, 7, 3, 11)
    totals = order["totals"]
    assert Decimal(totals["tax"]["amount"]) > 0 and Decimal(totals["shipping"]["amount"]) > 0
    assert len(order["shipments"]) == 3

    captures = []
    for shipment in reversed(order["shipments"]):  # the first (shipping and rounding) last
        shipped = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
        assert shipped.status_code == 200, shipped.text
        captures.append(next(s for s in shipped.json()["shipments"] if s["id"] == shipment["id"])["captured"])

    final = api.get(f"/orders/{order['id']}").json()
    payment = final["payment"]
    assert all(capture["currency"] == currency and Decimal(capture["amount"]) > 0 for capture in captures)
    assert sum(Decimal(capture["amount"]) for capture in captures) == Decimal(totals["grand_total"]["amount"])
    assert (payment["status"], payment["captured"], payment["authorized"]) == (
        "captured", totals["grand_total"], totals["grand_total"],
    )  # fmt: skip
    # What the gateway holds as captured on the authorization is what the order says.
    held = test_payments._held[payment["authorization"]]
    assert (held.captured.amount, held.captured.currency) == (Decimal(payment["captured"]["amount"]), currency)
