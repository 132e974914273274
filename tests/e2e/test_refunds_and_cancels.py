"""Money going back over HTTP on a local stack, as three journeys of a split order: a unit cancelled
then an appeasement refund, a refund the gateway refuses then the unshipped rest cancelled, and a
whole cancel's clean-up execution."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, order_body, put_network
from tests.e2e.conftest import workflow_stack

SETTLE_SECONDS = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(scope="module")
def network(stack: EmbeddedStack) -> dict[str, str]:
    api = Api(stack.api_url, stack.admin_key)
    try:
        return put_network(api)
    finally:
        api.close()


def dec(money: dict[str, str]) -> Decimal:
    return Decimal(money["amount"])


def allocated(stack: EmbeddedStack, api: Api, body: dict[str, Any]) -> dict[str, Any]:
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        order = api.get(f"/orders/{placed.json()['id']}").json()
        if order["status"] == "allocated" or time.monotonic() > deadline:
            assert order["status"] == "allocated", order["status"]
            return order


def ship(api: Api, order: dict[str, Any], location_id: str) -> dict[str, Any]:
    shipment = next(s for s in order["shipments"] if s["location_id"] == location_id)
    answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship")
    assert answer.status_code == 200, answer.text
    return answer.json()


def level(api: Api, sku: str, location_id: str) -> dict[str, int]:
    found = {x["location_id"]: x for x in api.get(f"/inventory/{sku}").json()["locations"]}
    return {key: found[location_id][key] for key in ("on_hand", "reserved", "available")}


@pytest.fixture
def split(stack: EmbeddedStack, api: Api, catalog: Catalog, network: dict[str, str]):
    """A factory of allocated orders with one shipment from each warehouse."""
    west_sku, east_sku = catalog.product("19.99"), catalog.product("5.55")
    catalog.stock(west_sku, network["west"], 10)
    catalog.stock(east_sku, network["east"], 10)

    def make(west_units: int = 2, east_units: int = 3, token: str = "tok_approve") -> dict[str, Any]:
        body = order_body((west_sku, west_units), (east_sku, east_units), payment={"method": "test", "token": token})
        order = allocated(stack, api, body)
        assert len(order["shipments"]) == 2
        return order

    make.skus = (west_sku, east_sku)  # type: ignore[attr-defined]
    return make


def test_cancelling_a_unit_reprices_the_order_which_ships_the_rest_and_takes_an_appeasement_refund_once(
    api: Api, network, split
):
    """A unit of the first line cancelled before anything ships, both parcels shipped (what has
    shipped can no longer be cancelled), then money given back for a late delivery: the refund
    goes through the gateway once however often it is sent, and no more than was captured."""
    order = split(west_units=2, east_units=3)
    west_sku = split.skus[0]

    answer = api.post(f"/orders/{order['id']}/cancel",
                      json={"reason": "one is enough", "lines": [{"line_id": "L1", "quantity": 1}]})  # fmt: skip

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["status"] == "allocated"
    assert (done["lines"][0]["quantity"], done["lines"][0]["cancelled_quantity"]) == (1, 1)
    assert dec(done["totals"]["subtotal"]) == Decimal("19.99") + 3 * Decimal("5.55")
    assert level(api, west_sku, network["west"]) == {"on_hand": 10, "reserved": 1, "available": 9}
    ship(api, done, network["west"])
    shipped = ship(api, done, network["east"])
    assert shipped["status"] == "shipped"
    assert shipped["payment"]["status"] == "captured"
    assert shipped["payment"]["captured"] == done["totals"]["grand_total"]
    assert_error(api.post(f"/orders/{order['id']}/cancel",
                          json={"reason": "late", "lines": [{"line_id": "L2", "quantity": 1}]}), 409)  # fmt: skip

    body = {"amount": {"amount": "4.50", "currency": "USD"}, "reason": "late delivery"}
    made = api.post(f"/orders/{order['id']}/refunds", json=body, headers={"Idempotency-Key": f"a-{order['id']}"})
    again = api.post(f"/orders/{order['id']}/refunds", json=body, headers={"Idempotency-Key": f"a-{order['id']}"})

    assert made.status_code == again.status_code == 201, made.text
    assert again.json() == made.json() and made.json()["status"] == "succeeded"
    payment = api.get(f"/orders/{order['id']}").json()["payment"]
    assert (payment["status"], payment["refunded"]["amount"]) == ("partially_refunded", "4.50")
    assert api.get(f"/orders/{order['id']}/refunds").json()["items"] == [made.json()]
    too_much = {"amount": {"amount": str(dec(shipped["payment"]["captured"]) - Decimal("4.49")), "currency": "USD"},
                "reason": "everything"}  # fmt: skip
    assert_error(api.post(f"/orders/{order['id']}/refunds", json=too_much), 422, "refund_exceeds_captured")


def test_a_refund_the_gateway_refuses_is_recorded_failed_and_cancelling_the_rest_releases_its_stock_and_settles(
    api: Api, network, split
):
    """One parcel of a split order shipped; a refund the gateway refuses is recorded failed and not
    counted; the parcel that had not left is then cancelled, its stock released, the payment settled."""
    order = split(west_units=2, east_units=3, token="tok_refund_decline")
    east_sku = split.skus[1]
    ship(api, order, network["west"])
    assert level(api, east_sku, network["east"]) == {"on_hand": 10, "reserved": 3, "available": 7}

    refused = api.post(f"/orders/{order['id']}/refunds",
                       json={"amount": {"amount": "1.00", "currency": "USD"}, "reason": "goodwill"})  # fmt: skip

    assert refused.status_code == 201 and refused.json()["status"] == "failed"
    payment = api.get(f"/orders/{order['id']}").json()["payment"]
    assert (payment["status"], payment["refunded"]["amount"]) == ("partially_captured", "0.00")
    types = [h["type"] for h in api.get(f"/orders/{order['id']}/history").json()["items"]]
    assert types[-2:] == ["payment_refund_failed", "refund_failed"]

    answer = api.post(f"/orders/{order['id']}/cancel", json={"reason": "the rest is not needed"})

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["status"] == "shipped"
    assert [(line["quantity"], line["cancelled_quantity"], line["shipped_quantity"]) for line in done["lines"]] == [
        (2, 0, 2), (0, 3, 0),
    ]  # fmt: skip
    assert level(api, east_sku, network["east"]) == {"on_hand": 10, "reserved": 0, "available": 10}
    payment = done["payment"]
    assert dec(payment["captured"]) - dec(payment["refunded"]) == dec(done["totals"]["grand_total"])
    assert dec(payment["authorized"]) == dec(payment["captured"])
    # The parcel that had not left stays on the order, cancelled.
    shipments = {(s["location_id"], s["status"]) for s in done["shipments"]}
    assert shipments == {(network["west"], "shipped"), (network["east"], "cancelled")}
    # The cancel settled by releasing what was not captured: it asked for no refund (one would
    # have been refused, and counted nowhere, with this order's token).
    after = [h["type"] for h in api.get(f"/orders/{order['id']}/history").json()["items"]][len(types) :]
    assert after and not [t for t in after if "refund" in t], after


def test_a_cancel_starts_an_execution_that_finishes_its_clean_up_and_finds_it_done(
    stack: EmbeddedStack, api: Api, network, split
):
    """Over the whole local stack: the cancel's stream record passes the outbox's filter, which
    starts `<order>-cancel-v<version>` with `finish_cancel`; the workflow runs CancelOrder alone,
    which finds the request's own clean-up done and changes nothing."""
    order = split()
    west_sku, east_sku = split.skus
    cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer changed their mind"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["status"] == "voided"
    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"

    sfn = stack.client("stepfunctions")
    # The void, then the two parcels' bookings cancelled with the carrier, were written after the cancel.
    name = f"{order['id']}-cancel-v{cancelled.json()['version'] - 3}"
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:  # the stream poller may hand the record over after the stack looked idle
        executions = sfn.list_executions(stateMachineArn=stack.state_machine_arns["OrderWorkflow"])["executions"]
        finishing = [e for e in executions if e["name"] == name]
        if (finishing and finishing[0]["status"] != "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (finishing,) = finishing
    assert finishing["status"] == "SUCCEEDED"
    events = sfn.get_execution_history(executionArn=finishing["executionArn"], maxResults=100)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    assert entered == ["Start", "CancelRecorded", "CancelOrder", "OrderCancelled"]
    after = api.get(f"/orders/{order['id']}").json()
    # The request finished it: nothing more was written (label links are signed at each read).
    assert (after["version"], after["payment"]) == (cancelled.json()["version"], cancelled.json()["payment"])
    assert level(api, west_sku, network["west"])["reserved"] == 0
    assert level(api, east_sku, network["east"])["reserved"] == 0
