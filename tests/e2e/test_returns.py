"""A return over HTTP on the local stack with every event source running: an order placed, allocated
by its workflow, shipped and delivered; part of it returned, received in mixed condition, restocked
and refunded by the returns workflow; the order `partially_returned`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack, forget_warm_containers
from tests.e2e.client import Api, Catalog, order_body, put_network, stocked_sku
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 15


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


def until(stack: EmbeddedStack, api: Api, path: str, done: Any) -> dict[str, Any]:
    """The resource once `done` says so. It is read only while no workflow execution runs (what
    these waits wait on is an execution's work): a look at the running executions costs a fifth of
    a GET, which also runs the authorizer and the access log."""
    deadline, body = time.monotonic() + SETTLE_SECONDS, None
    while True:
        if not stack.running_executions():
            body = api.get(path).json()
            if done(body):
                return body
        assert time.monotonic() < deadline, f"{path} never settled: {body}"
        time.sleep(0.05)


def on_hand(api: Api, sku: str) -> dict[str, int]:
    return {level["location_id"]: level["on_hand"] for level in api.get(f"/inventory/{sku}").json()["locations"]}


def test_a_delivered_order_is_partly_returned_in_mixed_condition_restocked_and_refunded(stack: EmbeddedStack, api: Api):
    network, sku = stocked_sku(api)
    placed = api.post("/orders", json=order_body((sku, 3)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    order = until(stack, api, f"/orders/{order_id}", lambda o: o["status"] == "allocated")
    for shipment in order["shipments"]:
        for action in ("ship", "deliver"):
            assert api.post(f"/orders/{order_id}/shipments/{shipment['id']}/{action}").status_code == 200
    stock_before = {
        level["location_id"]: level["on_hand"] for level in api.get(f"/inventory/{sku}").json()["locations"]
    }

    requested = api.post(
        f"/orders/{order_id}/returns",
        json={"lines": [{"line_id": "L1", "quantity": 2, "reason": "one torn, one too small",
                         "reason_code": "damaged"}]},
    )  # fmt: skip
    assert requested.status_code == 201, requested.text
    rma = requested.json()
    assert rma["status"] == "authorized" and rma["return_to"] == network["west"]
    assert rma["label_url"].startswith("http")

    received = api.post(
        f"/returns/{rma['id']}/receive",
        json={"location_id": network["west"], "lines": [
            {"line_id": "L1", "quantity": 1, "condition": "resellable"},
            {"line_id": "L1", "quantity": 1, "condition": "damaged"},
        ]},
    )  # fmt: skip

    assert received.status_code in (200, 202), received.text
    assert received.json()["status"] == ("refunded" if received.status_code == 200 else "received")
    done = until(stack, api, f"/returns/{rma['id']}", lambda r: r["status"] == "refunded")
    assert [(x["received_quantity"], x["resellable_quantity"], x["condition"]) for x in done["lines"]] == [
        (2, 1, "mixed")
    ]
    after = api.get(f"/orders/{order_id}").json()
    line_total = Decimal(after["lines"][0]["total"]["amount"])
    assert Decimal(done["refund"]["amount"]) == (line_total * 2 / 3).quantize(Decimal("0.01"))
    assert after["status"] == "partially_returned"
    assert (after["lines"][0]["shipped_quantity"], after["lines"][0]["returned_quantity"]) == (3, 2)
    assert after["payment"]["refunded"] == done["refund"]
    assert after["payment"]["status"] == "partially_refunded"
    assert on_hand(api, sku)[network["west"]] == stock_before[network["west"]] + 1
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [(r["return_id"], r["status"], r["amount"]) for r in refunds] == [(rma["id"], "succeeded", done["refund"])]
    types = [entry["type"] for entry in api.get(f"/orders/{order_id}/history").json()["items"]]
    assert types.index("return_requested") < types.index("return_received") < types.index("payment_refunded")
    assert [r["id"] for r in api.get(f"/orders/{order_id}/returns").json()["items"]] == [rma["id"]]


def test_an_exchange_priced_in_another_currency_is_refused_and_one_that_can_be_places_the_replacement(
    stack: EmbeddedStack, api: Api
):
    """A replacement with no price in the order's currency is refused before the customer sends
    anything back: 422 in the contract's error shape naming the exchange's line, and no return made.
    The same units returned for one priced in it: the replacement placed, authorizing the difference
    and allocated, and its credit refunded on the original when the customer cancels it."""
    network = put_network(api)
    catalog = Catalog(api)
    sku, dearer = catalog.product("12.00"), catalog.product("30.00")
    in_euros = catalog.product("15.00", currency="EUR")
    catalog.stock(sku, network["west"], 5)
    catalog.stock(dearer, network["west"], 5)
    placed = api.post("/orders", json=order_body((sku, 2)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    order = until(stack, api, f"/orders/{order_id}", lambda o: o["status"] == "allocated")
    for shipment in order["shipments"]:
        assert api.post(f"/orders/{order_id}/shipments/{shipment['id']}/ship").status_code == 200
    lines = [{"line_id": "L1", "quantity": 1, "reason": "wrong colour", "reason_code": "other"}]

    refused = api.post(
        f"/orders/{order_id}/returns", json={"lines": lines, "exchange": {"lines": [{"sku": in_euros, "quantity": 1}]}}
    )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "no_price" and error["details"] == [
        {"field": "exchange.lines[0].sku", "message": "no price in USD"}
    ]
    assert api.get(f"/orders/{order_id}/returns").json()["items"] == []

    requested = api.post(
        f"/orders/{order_id}/returns", json={"lines": lines, "exchange": {"lines": [{"sku": dearer, "quantity": 1}]}}
    )
    assert requested.status_code == 201, requested.text
    rma = requested.json()
    assert rma["status"] == "authorized"
    received = api.post(
        f"/returns/{rma['id']}/receive",
        json={"location_id": network["west"], "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]},
    )
    assert received.status_code in (200, 202), received.text

    done = until(stack, api, f"/returns/{rma['id']}", lambda r: r["status"] == "refunded")
    original = api.get(f"/orders/{order_id}").json()
    credit = (Decimal(original["lines"][0]["total"]["amount"]) / 2).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    assert done["exchange_order_id"] and Decimal(done["refund"]["amount"]) == 0
    replacement = until(stack, api, f"/orders/{done['exchange_order_id']}", lambda o: o["status"] == "allocated")
    assert replacement["external_id"] == f"{original['external_id']}-x1"
    assert (replacement["channel"], replacement["customer"], replacement["shipping_address"]) == (
        original["channel"], original["customer"], original["shipping_address"]
    )  # fmt: skip
    assert [(line["sku"], line["quantity"]) for line in replacement["lines"]] == [(dearer, 1)]
    assert Decimal(replacement["exchange_credit"]["amount"]) == credit
    difference = Decimal(replacement["totals"]["grand_total"]["amount"]) - credit
    assert Decimal(replacement["payment"]["authorized"]["amount"]) == difference > 0
    assert original["payment"]["refunded"]["amount"] == "0.00"  # the credit paid for the replacement
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [e["detail"]["exchange_order_id"] for e in history if e["type"] == "exchange_placed"] == [replacement["id"]]
    created = api.get(f"/orders/{replacement['id']}/history").json()["items"][0]
    assert created["detail"]["exchange"]["return_id"] == rma["id"]

    # The customer cancels the replacement: the credit it carried is refunded on the original.
    cancelled = api.post(f"/orders/{replacement['id']}/cancel", json={"reason": "changed my mind"})
    assert cancelled.status_code == 200, cancelled.text
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [(r["status"], Decimal(r["amount"]["amount"])) for r in refunds] == [("succeeded", credit)]
    assert Decimal(api.get(f"/orders/{order_id}").json()["payment"]["refunded"]["amount"]) == credit


@pytest.mark.parametrize(
    ("failure", "ends", "task"),
    [("stock_gone", "cancelled", "CancelOrderFunction"), ("declined", "payment_failed", "FailPaymentFunction")],
)
def test_a_replacement_the_workflow_ends_gives_its_credit_back_with_calls_the_template_grants(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch, failure: str, ends: str, task: str
):
    """An exchange's replacement whose stock is gone before its workflow reserves it (or whose
    difference the gateway declines) is ended by the CancelOrder (FailPayment) task, which refunds
    its credit on the original and shows it on the return (a conditional update of the Returns
    table). Both functions were granted only GetItem there: on AWS that update was AccessDenied
    after the refund, the task failed and retried, and the return never showed what its credit
    gave back. The returns workflow's steps (the exchange placing the replacement) are recorded too."""
    from tests.template_iam import calls_by_function, granted

    # Containers start cold: a network an earlier test's exchange cached (for up to 10 s) lacks this one's.
    assert stack.wait_until_idle(10)
    forget_warm_containers()
    network = put_network(api)
    catalog = Catalog(api)
    sku, dearer = catalog.product("12.00"), catalog.product("30.00")
    catalog.stock(sku, network["west"], 5)
    catalog.stock(dearer, network["west"], 1)
    placed = api.post("/orders", json=order_body((sku, 2)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    order = until(stack, api, f"/orders/{order_id}", lambda o: o["status"] == "allocated")
    for shipment in order["shipments"]:
        assert api.post(f"/orders/{order_id}/shipments/{shipment['id']}/ship").status_code == 200
    requested = api.post(
        f"/orders/{order_id}/returns",
        json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "wrong colour", "reason_code": "other"}],
              "exchange": {"lines": [{"sku": dearer, "quantity": 1}]}},
    )  # fmt: skip
    assert requested.status_code == 201, requested.text
    rma = requested.json()["id"]

    with calls_by_function(stack) as calls:
        stack.pause_mappings()  # the replacement's workflow waits for its stream record
        try:
            receipt = {
                "location_id": network["west"],
                "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}],
            }
            assert api.post(f"/returns/{rma}/receive", json=receipt).status_code in (200, 202)
            done = until(stack, api, f"/returns/{rma}", lambda r: r["status"] == "refunded" and r["exchange_order_id"])
            if failure == "stock_gone":
                catalog.stock(dearer, network["west"], 0)  # gone before the workflow reserves it
            else:  # the functions run in this process: the gateway declines every authorization now
                from plugins import test_payments

                real = test_payments._authorize
                monkeypatch.setattr(
                    test_payments, "_authorize", lambda _token, *rest: real(test_payments.DECLINE, *rest)
                )
        finally:
            stack.resume_mappings()
        replacement = until(stack, api, f"/orders/{done['exchange_order_id']}", lambda o: o["status"] == ends)
        shown = until(stack, api, f"/returns/{rma}", lambda r: Decimal(r["refund"]["amount"]) > 0)
        assert stack.wait_until_idle(10)

    credit = Decimal(replacement["exchange_credit"]["amount"])
    refunds = api.get(f"/orders/{order_id}/refunds").json()["items"]
    assert [(r["status"], Decimal(r["amount"]["amount"])) for r in refunds] == [("succeeded", credit)]
    assert Decimal(shown["refund"]["amount"]) == credit
    assert {"ReturnStepFunction", task} <= set(calls), sorted(calls)
    for function, needed in calls.items():
        assert needed <= granted(function), f"{function} calls what it is not granted: {needed - granted(function)}"
