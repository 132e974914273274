"""An order that owes nothing (grand total 0.00: a free pickup), in-process on moto, behind a
payment plugin that refuses 0.00 as real gateways do (Stripe's minimum is 0.50 USD): it is
authorized without asking the gateway, allocated, collected and cancelled with no gateway call,
and an edit that makes it owe something authorizes that through the gateway as any edit does."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from core import hookimpl
from core.money import Money
from core.workflow_types import PaymentResult
from plugins import test_payments
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_payment_plugin_failures_api import LooksNothingUp, registered

PICKUP = {"type": "pickup", "location_id": "store-sf"}


class RefusesZero:
    """The built-in test gateway behind a plugin that declines any authorization under 0.50 (a
    real gateway's minimum) and notes every call it is asked, by operation and order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount: Money, order_id, idempotency_key, attempt):
        self.calls.append(("authorize", order_id))
        if amount.amount < Money.of("0.50", amount.currency).amount:
            return PaymentResult(outcome="declined", reference="decl_min", message="amount must be at least 0.50")
        return test_payments.oms_payment_authorize(
            method=method, token=token, amount=amount, idempotency_key=idempotency_key, attempt=attempt
        )

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, order_id):
        self.calls.append(("capture", order_id))

    @hookimpl(tryfirst=True)
    def oms_payment_void(self, order_id):
        self.calls.append(("void", order_id))

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, order_id):
        self.calls.append(("refund", order_id))

    @hookimpl(tryfirst=True)
    def oms_payment_find_authorization(self, order_id):
        self.calls.append(("find_authorization", order_id))

    def of(self, order_id: str) -> list[str]:
        return [operation for operation, called_for in self.calls if called_for == order_id]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        for sku, price in (("SAMPLE", "0.00"), ("MUG", "12.50")):
            assert started.put(f"/products/{sku}", json=product_body(price)).status_code == 201
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        for sku in ("SAMPLE", "MUG"):
            assert started.put(f"/inventory/{sku}/store-sf", json={"on_hand": 100}).status_code == 200
        yield started


@pytest.fixture
def gateway() -> Iterator[RefusesZero]:
    with registered(RefusesZero()) as plugin:
        yield plugin


_placed = iter(range(1, 1000))


def workflow():
    from functions.workflow.step import container

    return container().workflow  # the workflow tasks' container, whose plugins `gateway` is registered with


def free_pickup(api: InProcessApi) -> dict[str, Any]:
    body = order_body(external_id=f"web-free{next(_placed)}", lines=[{"sku": "SAMPLE", "quantity": 1}],
                      fulfillment=PICKUP)  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    assert placed.json()["totals"]["grand_total"]["amount"] == "0.00"
    return placed.json()


def run(order_id: str) -> None:
    steps = workflow()
    steps.authorize_payment(order_id, attempt=0)
    steps.reserve_stock(order_id)
    steps.create_shipments(order_id)


def history(api: InProcessApi, order_id: str) -> list[dict[str, Any]]:
    return api.get(f"/orders/{order_id}/history").json()["items"]


def allocated_free(api: InProcessApi) -> dict[str, Any]:
    order_id = free_pickup(api)["id"]
    run(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def test_a_free_order_is_authorized_without_asking_the_gateway_and_collected_with_no_capture(api, gateway):
    order = allocated_free(api)

    payment = order["payment"]
    assert (payment["status"], payment["authorized"]["amount"], payment["captured"]["amount"]) == (
        "authorized", "0.00", "0.00",
    )  # fmt: skip
    [authorized] = [h for h in history(api, order["id"]) if h["type"] == "payment_authorized"]
    assert authorized["detail"]["reference"] is None
    assert authorized["detail"]["reason"] == "nothing to pay: no authorization needed"
    (shipment,) = order["shipments"]
    path = f"/orders/{order['id']}/shipments/{shipment['id']}"
    assert api.post(f"{path}/ready").status_code == 200

    collected = api.post(f"{path}/deliver", json={})

    assert collected.status_code == 200, collected.text
    done = collected.json()
    assert done["status"] == "delivered"
    # Paid in full (it owed nothing), as an order whose gateway captured its total shows.
    assert (done["payment"]["status"], done["payment"]["captured"]["amount"]) == ("captured", "0.00")
    assert gateway.of(order["id"]) == []


def test_a_free_order_cancelled_asks_the_gateway_nothing(api, gateway):
    order = allocated_free(api)

    answer = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer asked"})

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["status"], done["payment"]["status"], done["payment"]["captured"]["amount"]) == (
        "cancelled", "voided", "0.00",
    )  # fmt: skip
    assert gateway.of(order["id"]) == []
    entries = history(api, order["id"])
    assert not any(h["type"].endswith("_failed") for h in entries)
    [voided] = [h["detail"] for h in entries if h["type"] == "payment_voided"]
    assert (voided["authorization"], voided["reference"]) == (None, None)
    assert voided["reason"] == "nothing to pay: nothing was authorized at the gateway"


def test_a_free_order_cancelled_while_pending_looks_nothing_up_at_the_gateway_and_warns_of_nothing(
    api, gateway, caplog
):  # fmt: skip
    # Still pending, it was never authorized: owing nothing, it never will be through the gateway
    # (AuthorizePayment asks none), so no attempt under its key can have left a hold to release.
    # Before, the cancel looked that key up, and behind a plugin without the lookup hook it
    # logged a WARNING that an authorization might be left at the gateway, for every such cancel.
    order = free_pickup(api)

    with registered(LooksNothingUp()), caplog.at_level(logging.WARNING):
        answer = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer asked"})

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["status"], done["payment"]["status"], done["payment"]["captured"]["amount"]) == (
        "cancelled", "pending", "0.00",
    )  # fmt: skip
    assert gateway.of(order["id"]) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(h["type"].endswith("_failed") for h in history(api, order["id"]))


def test_a_free_order_edited_while_pending_and_still_free_looks_nothing_up_at_the_gateway(api, gateway, caplog):
    # An edit of a pending order releases what an attempt under its old version's key may hold:
    # owing nothing, that version was never sent to the gateway, so there is nothing to look up.
    order = free_pickup(api)

    with registered(LooksNothingUp()), caplog.at_level(logging.WARNING):
        edited = api.request("PATCH", f"/orders/{order['id']}", json={"lines": [{"sku": "SAMPLE", "quantity": 2}]},
                             headers={"If-Match": str(order["version"])})  # fmt: skip

    assert edited.status_code == 200, edited.text
    assert (edited.json()["status"], edited.json()["lines"][0]["quantity"]) == ("pending", 2)
    assert gateway.of(order["id"]) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_free_order_edited_to_owe_something_is_authorized_for_it_through_the_gateway(api, gateway):
    order = allocated_free(api)

    lines = [{"sku": "SAMPLE", "quantity": 1}, {"sku": "MUG", "quantity": 1}]
    edited = api.request("PATCH", f"/orders/{order['id']}", json={"lines": lines},
                         headers={"If-Match": str(order["version"])})  # fmt: skip

    assert edited.status_code == 200, edited.text
    new = edited.json()
    total = new["totals"]["grand_total"]
    assert (new["payment"]["status"], new["payment"]["authorized"]) == ("authorized", total)
    assert gateway.of(order["id"]) == ["authorize"]  # the new total; nothing was there to void
    run(order["id"])
    allocated = api.get(f"/orders/{order['id']}").json()
    shipment = allocated["shipments"][0]
    path = f"/orders/{order['id']}/shipments/{shipment['id']}"
    assert api.post(f"{path}/ready").status_code == 200
    collected = api.post(f"{path}/deliver", json={})
    assert collected.status_code == 200, collected.text
    assert collected.json()["payment"]["captured"] == total
    assert gateway.of(order["id"]) == ["authorize", "capture"]
