"""The gateway did what was asked and its answer was lost (the plugin's call timed out after the
capture, the refund or the void went through), in-process on moto: the API answers 503 with nothing
recorded as moved, or 200 with the payment as it was, and the request repeated asks under the same
idempotency key, which the gateway answers with what it did: the money moves once, recorded once.
tests/unit/test_gateway_answers_lost.py has the same at the service level, with the authorization."""

from __future__ import annotations

from decimal import Decimal

from plugins import test_payments
from tests.e2e.client import assert_error
from tests.fakes import AnswersLost
from tests.integration import test_cancel_units_api
from tests.integration.test_cancel_units_api import allocated, cancel, money, ship, stock
from tests.integration.test_payment_plugin_failures_api import history, registered

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east), in this module's account


def held(order: dict) -> test_payments._Held:
    """What the `test` gateway holds under the order's authorization: what it captured and refunded."""
    return test_payments._held[test_payments._authorized[f"{order['id']}:authorize:v1"]]


def failures(api, order_id: str, event: str) -> list[str]:
    return [h["detail"]["kind"] for h in history(api, order_id) if h["type"] == event]


def test_a_ship_whose_capture_answers_are_lost_is_503_and_shipped_again_captures_nothing_more(api):
    order = allocated(api, ("MUG", 2))
    (shipment,) = order["shipments"]
    total = Decimal(money(order["totals"]["grand_total"]))
    path = f"/orders/{order['id']}/shipments/{shipment['id']}/ship"
    before = stock(api, "MUG", "wh-west")
    with registered(AnswersLost()) as lost:
        lost.lose("capture", times=3)
        answer = api.post(path, json={})

    assert_error(answer, 503, "payment_gateway_unavailable")
    assert held(order).captured.amount == total  # the gateway took it
    waiting = api.get(f"/orders/{order['id']}").json()
    assert (waiting["status"], money(waiting["payment"]["captured"]), waiting["shipments"][0]["status"]) == (
        "allocated", "0.00", "pending",
    )  # fmt: skip
    assert failures(api, order["id"], "payment_capture_failed") == ["transient"] * 3
    assert stock(api, "MUG", "wh-west") == before  # still reserved: nothing left

    shipped = ship(api, order, "wh-west")

    assert (shipped["status"], money(shipped["payment"]["captured"])) == ("shipped", f"{total}")
    assert (held(order).captured.amount, held(order).refunded.amount) == (total, 0)  # captured once
    on_hand, reserved, _ = before
    assert stock(api, "MUG", "wh-west") == (on_hand - 2, reserved - 2, before[2])


def test_an_appeasement_whose_answers_are_lost_is_503_pending_and_its_retry_refunds_once(api):
    order = allocated(api, ("MUG", 1))
    ship(api, order, "wh-west")
    body = {"amount": {"amount": "4.00", "currency": "USD"}, "reason": "late delivery"}
    path = f"/orders/{order['id']}/refunds"
    with registered(AnswersLost()) as lost:
        lost.lose("refund", times=3)
        answer = api.post(path, json=body, headers={"Idempotency-Key": "lost-1"})

    assert_error(answer, 503, "payment_gateway_unavailable")
    assert held(order).refunded.amount == Decimal("4.00")  # the gateway gave it back
    (pending,) = api.get(path).json()["items"]
    assert pending["status"] == "pending"
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "0.00"

    again = api.post(path, json=body, headers={"Idempotency-Key": "lost-1"})

    assert again.status_code == 201, again.text
    assert (again.json()["id"], again.json()["status"]) == (pending["id"], "succeeded")
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "4.00"
    assert held(order).refunded.amount == Decimal("4.00")  # refunded once


def test_a_cancel_whose_void_answers_are_lost_is_200_authorized_and_cancelled_again_shows_it_voided(api):
    order = allocated(api, ("CAP", 1))
    with registered(AnswersLost()) as lost:
        lost.lose("void", times=3)
        answer = cancel(api, order["id"])

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "authorized")
    assert held(order).voided  # the gateway released it; the order was told nothing
    assert failures(api, order["id"], "payment_void_failed") == ["transient"] * 3

    again = cancel(api, order["id"])

    assert again.status_code == 200, again.text
    assert again.json()["payment"]["status"] == "voided"
