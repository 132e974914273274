"""The order's shipping given back when the whole order comes back for the shop's fault, whichever
comes first: the return of the units that shipped, or the cancel of those that had not (in-process
API on moto, the returns workflow's steps run inline)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.in_process import InProcessApi, in_process_api_with_labels, returns_run_inline
from tests.integration.test_cancel_units_api import allocated, cancel, ship, stock_two_parcels
from tests.unit.test_returns import FeeForFaults


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started, returns_run_inline():
        stock_two_parcels(started)
        yield started


def mugs_delivered(api: InProcessApi) -> dict[str, Any]:
    """An order of 2 MUGs (the west parcel, delivered) and 2 CAPs (the east parcel, not shipped)."""
    order = ship(api, allocated(api, ("MUG", 2), ("CAP", 2)), "wh-west")
    west = next(s for s in order["shipments"] if s["location_id"] == "wh-west")
    delivered = api.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", json={})
    assert delivered.status_code == 200, delivered.text
    return delivered.json()


def mugs_back(api: InProcessApi, order_id: str, reason_code: str) -> dict[str, Any]:
    body = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "arrived broken", "reason_code": reason_code}]}
    made = api.post(f"/orders/{order_id}/returns", json=body)
    assert made.status_code == 201, made.text
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 2, "condition": "damaged"}]}
    received = api.post(f"/returns/{made.json()['id']}/receive", json=receipt)
    assert received.status_code == 200, received.text
    return received.json()


def refunds(api: InProcessApi, order_id: str) -> list[tuple[str, str, str | None]]:
    items = api.get(f"/orders/{order_id}/refunds").json()["items"]
    return [(r["amount"]["amount"], r["status"], r["return_id"]) for r in items]


def test_the_shipping_comes_back_once_the_rest_of_a_damaged_order_is_cancelled_after_its_return(api):
    # The MUGs arrive broken and come back (damaged: the shop's fault), then the customer cancels the
    # CAPs that had not shipped. The return could not give the shipping back (the CAPs might still
    # ship and be kept), and nothing did after the cancel: the customer paid 5.00 shipping on an
    # order that all came back broken, which a cancel made before the return gave back.
    order = mugs_delivered(api)
    rma = mugs_back(api, order["id"], "damaged")
    assert rma["refund"]["amount"] == "26.81"  # the MUGs' line: the CAPs may still ship

    cancelled = cancel(api, order["id"])

    assert cancelled.status_code == 200, cancelled.text
    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "returned"
    assert (after["totals"]["shipping"]["amount"], after["payment"]["captured"]["amount"]) == ("5.00", "31.81")
    assert after["payment"]["refunded"] == after["payment"]["captured"]
    assert refunds(api, order["id"]) == [("26.81", "succeeded", rma["id"]), ("5.00", "succeeded", rma["id"])]
    assert api.get(f"/returns/{rma['id']}").json()["refund"] == {"amount": "31.81", "currency": "USD"}
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"]["amount"]["amount"] for e in history if e["type"] == "payment_refunded"] == ["26.81", "5.00"]

    # Given back once: a cancel repeated (409: nothing left to cancel) and a repeated delivery
    # report (which asks what returns are owed) give nothing more.
    west = next(s for s in after["shipments"] if s["location_id"] == "wh-west")
    cancel(api, order["id"])
    api.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", json={})
    assert len(refunds(api, order["id"])) == 2
    assert api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]["amount"] == "31.81"


def test_the_shipping_comes_back_the_same_whichever_of_the_cancel_and_the_return_comes_first(api):
    order = mugs_delivered(api)
    assert cancel(api, order["id"]).status_code == 200
    rma = mugs_back(api, order["id"], "damaged")

    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], rma["refund"]["amount"]) == ("returned", "31.81")
    assert after["payment"]["refunded"] == after["payment"]["captured"]
    assert refunds(api, order["id"]) == [("31.81", "succeeded", rma["id"])]


@contextmanager
def restocking_fee(amount: str) -> Iterator[None]:
    """The shop's return policy (answering before the built-in one) keeps a restocking fee of
    `amount` from each return's refund, and gives the shipping back as the built-in one does."""
    from functions.api.dependencies import container

    policy = FeeForFaults(amount)
    container().plugins.register(policy)
    try:
        yield
    finally:
        container().plugins.unregister(policy)


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-first", "return-first"])
def test_a_fee_beyond_what_the_units_are_worth_is_taken_from_the_shipping_whichever_comes_first(api, cancel_first):
    # The MUGs (26.81) come back broken with a 30.00 fee: the whole order back, the refund is their
    # 26.81 and the 5.00 shipping less the fee, 1.81. Received before the cancel, the return's own
    # refund gave nothing (its fee took all the MUGs were worth), and the shipping the cancel gave
    # back after it was never given, though the same return received after the cancel refunded 1.81.
    order = mugs_delivered(api)
    with restocking_fee("30.00"):
        if cancel_first:
            assert cancel(api, order["id"]).status_code == 200
        rma = mugs_back(api, order["id"], "damaged")
        if not cancel_first:
            assert rma["refund"]["amount"] == "0.00"
            assert cancel(api, order["id"]).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["payment"]["refunded"]["amount"]) == ("returned", "1.81")
    assert [(amount, status) for amount, status, _ in refunds(api, order["id"])] == [("1.81", "succeeded")]
    assert api.get(f"/returns/{rma['id']}").json()["refund"] == {"amount": "1.81", "currency": "USD"}


def test_units_sent_back_for_no_fault_of_the_shop_keep_the_shipping_charged_when_the_rest_is_cancelled(api):
    order = mugs_delivered(api)
    rma = mugs_back(api, order["id"], "size_or_fit")

    assert cancel(api, order["id"]).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "returned"
    assert (after["payment"]["captured"]["amount"], after["payment"]["refunded"]["amount"]) == ("31.81", "26.81")
    assert refunds(api, order["id"]) == [("26.81", "succeeded", rma["id"])]


def test_a_cancel_that_died_before_giving_the_shipping_back_has_it_given_back_by_the_reconcilers_pass(
    api, monkeypatch: pytest.MonkeyPatch
):
    # The cancel's write leaves the order owing the shipping, so the Orders index of refunds owed
    # finds it: the kept-back pass gives it back once the order has not changed for 15 minutes.
    from datetime import timedelta

    from core.models import utc_now
    from core.unit_cancellation import UnitCancellation
    from functions.bootstrap import Config, bootstrap

    order = mugs_delivered(api)
    rma = mugs_back(api, order["id"], "defective")
    with monkeypatch.context() as dying:
        dying.setattr(UnitCancellation, "refund_kept_back", lambda self, order, actor, refusals=None: order)
        assert cancel(api, order["id"]).status_code == 200
    assert refunds(api, order["id"]) == [("26.81", "succeeded", rma["id"])]

    later = bootstrap(Config.from_env(), clock=lambda: utc_now() + timedelta(minutes=16))
    passed = later.kept_back_sweep.run("reconciler")

    [shipping] = api.get(f"/orders/{order['id']}/refunds").json()["items"][1:]
    assert passed.refunded == [shipping["id"]]
    assert (shipping["amount"]["amount"], shipping["return_id"]) == ("5.00", rma["id"])
    assert api.get(f"/returns/{rma['id']}").json()["refund"]["amount"] == "31.81"
    assert later.kept_back_sweep.run("reconciler").refunded == []


def mugs_exchanged(api: InProcessApi, order_id: str) -> dict[str, Any]:
    """The 2 MUGs back broken, exchanged for 2 new ones: the return's refund is the replacement's credit."""
    body = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "arrived broken", "reason_code": "damaged"}],
            "exchange": {"lines": [{"sku": "MUG", "quantity": 2}]}}  # fmt: skip
    made = api.post(f"/orders/{order_id}/returns", json=body)
    assert made.status_code == 201, made.text
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 2, "condition": "damaged"}]}
    received = api.post(f"/returns/{made.json()['id']}/receive", json=receipt)
    assert received.status_code == 200, received.text
    assert received.json()["exchange_order_id"], received.text
    return received.json()


def test_the_shipping_comes_back_on_the_original_when_the_rest_is_cancelled_after_an_exchange(api):
    # The MUGs came back broken and were exchanged: their worth (26.81) paid for the replacement;
    # the shipping could not go into that credit then (the CAPs might still ship and be kept).
    # The CAPs cancelled, the whole order is back for the shop's fault: the shipping the customer
    # paid on it is refunded on the original, as for a plain return, once.
    order = mugs_delivered(api)
    rma = mugs_exchanged(api, order["id"])
    replacement = api.get(f"/orders/{rma['exchange_order_id']}").json()
    assert replacement["exchange_credit"]["amount"] == "26.81"

    assert cancel(api, order["id"]).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "returned"
    assert (after["payment"]["captured"]["amount"], after["payment"]["refunded"]["amount"]) == ("31.81", "5.00")
    assert refunds(api, order["id"]) == [("5.00", "succeeded", None)]
    assert api.get(f"/returns/{rma['id']}").json()["refund"] == {"amount": "5.00", "currency": "USD"}
    west = next(s for s in after["shipments"] if s["location_id"] == "wh-west")
    api.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", json={})
    assert refunds(api, order["id"]) == [("5.00", "succeeded", None)]
    assert api.get(f"/orders/{rma['exchange_order_id']}").json()["exchange_credit"]["amount"] == "26.81"
    # The credit still holds the MUGs' 26.81 of the original's capture: nothing more is refundable.
    appeased = api.post(f"/orders/{order['id']}/refunds", json={"amount": {"amount": "0.01", "currency": "USD"},
                                                                "reason": "sorry"})  # fmt: skip
    assert appeased.status_code == 422, appeased.text
    assert appeased.json()["error"]["code"] == "refund_exceeds_captured"
    # The replacement given up, its credit goes back whole beside the shipping: all that was paid.
    assert cancel(api, rma["exchange_order_id"]).status_code == 200
    assert api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]["amount"] == "31.81"


def test_an_exchange_made_after_the_cancel_carries_the_shipping_in_its_credit_and_nothing_more_comes_back(api):
    order = mugs_delivered(api)
    assert cancel(api, order["id"]).status_code == 200
    rma = mugs_exchanged(api, order["id"])

    replacement = api.get(f"/orders/{rma['exchange_order_id']}").json()
    assert replacement["exchange_credit"]["amount"] == "31.81"
    west = next(s for s in api.get(f"/orders/{order['id']}").json()["shipments"] if s["location_id"] == "wh-west")
    api.post(f"/orders/{order['id']}/shipments/{west['id']}/deliver", json={})
    assert api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]["amount"] == "0.00"


def mug_back(api: InProcessApi, order_id: str, asked: int, arrived: int) -> dict[str, Any]:
    body = {"lines": [{"line_id": "L1", "quantity": asked, "reason": "arrived broken", "reason_code": "damaged"}]}
    made = api.post(f"/orders/{order_id}/returns", json=body)
    assert made.status_code == 201, made.text
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": arrived, "condition": "damaged"}]}
    received = api.post(f"/returns/{made.json()['id']}/receive", json=receipt)
    assert received.status_code == 200, received.text
    return received.json()


@pytest.mark.parametrize("cancelled_first", [False, True], ids=["cancel-last", "cancel-between"])
def test_a_return_short_of_a_unit_counts_what_arrived_once_the_rest_comes_back(api, cancelled_first):
    # Both MUGs asked back broken, one arrived; the other came back on a second return. The whole
    # order is back for the shop's fault whichever of the cancel and that return came last: the
    # shipping comes back, as the return bringing the last unit back gives it (counting the first
    # by what arrived).
    order = mugs_delivered(api)
    short = mug_back(api, order["id"], asked=2, arrived=1)
    assert short["refund"]["amount"] == "13.40"
    if cancelled_first:
        assert cancel(api, order["id"]).status_code == 200
    rest = mug_back(api, order["id"], asked=1, arrived=1)
    if not cancelled_first:
        assert cancel(api, order["id"]).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "returned"
    assert after["payment"]["refunded"] == after["payment"]["captured"]
    assert sum(Decimal(amount) for amount, _, _ in refunds(api, order["id"])) == Decimal("31.81")
    shown = [api.get(f"/returns/{item['id']}").json()["refund"]["amount"] for item in (short, rest)]
    assert shown == ["13.40", "18.41"]


def test_a_return_short_of_a_unit_brings_no_shipping_back_when_the_rest_is_cancelled(api):
    # One of the two broken MUGs never arrived: the customer has it, the order is not all back.
    order = mugs_delivered(api)
    short = mug_back(api, order["id"], asked=2, arrived=1)

    assert cancel(api, order["id"]).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "partially_returned"
    assert refunds(api, order["id"]) == [(short["refund"]["amount"], "succeeded", short["id"])]


def test_a_cancel_while_an_exchange_is_being_placed_has_the_shipping_given_back_once_it_is_placed(
    api, monkeypatch: pytest.MonkeyPatch
):
    # The exchange's step held the credit and died placing the replacement; the customer cancelled
    # the CAPs meanwhile. The shipping waits (the credit might yet claim it, or the exchange be given
    # up and the return refunded with it); once the step, run again, places the replacement, the
    # order owes it and the reconciler's kept-back pass gives it back on the original.
    from datetime import timedelta

    from core.models import utc_now
    from core.services import CaptureService
    from functions.bootstrap import Config, bootstrap

    order = mugs_delivered(api)
    body = {"lines": [{"line_id": "L1", "quantity": 2, "reason": "arrived broken", "reason_code": "damaged"}],
            "exchange": {"lines": [{"sku": "MUG", "quantity": 2}]}}  # fmt: skip
    rma = api.post(f"/orders/{order['id']}/returns", json=body).json()
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 2, "condition": "damaged"}]}

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the Orders table is unavailable")

    with monkeypatch.context() as dying:
        dying.setattr(CaptureService, "place_exchange", down)
        api.post(f"/returns/{rma['id']}/receive", json=receipt)
    assert api.get(f"/returns/{rma['id']}").json()["exchange_order_id"] is None
    assert cancel(api, order["id"]).status_code == 200
    assert refunds(api, order["id"]) == []

    assert api.post(f"/returns/{rma['id']}/receive", json=receipt).status_code == 200
    assert api.get(f"/returns/{rma['id']}").json()["exchange_order_id"]
    later = bootstrap(Config.from_env(), clock=lambda: utc_now() + timedelta(minutes=16))
    later.kept_back_sweep.run("reconciler")

    assert refunds(api, order["id"]) == [("5.00", "succeeded", None)]
    assert api.get(f"/returns/{rma['id']}").json()["refund"]["amount"] == "5.00"
    assert later.kept_back_sweep.run("reconciler").refunded == []
