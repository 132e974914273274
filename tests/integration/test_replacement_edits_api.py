"""An exchange's replacement edited after the exchange refunded the rest of its credit (in-process
API on moto, the returns workflow's steps run through their handler): the rest went back to the
customer, so it pays nothing of what the edit adds."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.return_steps import received, refunds
from tests.integration.test_cancel_units_api import money

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west, CAP 7.77 in the east)
services = return_steps.services  # the API's and the return step's services

EXCHANGED = ("receive", "restock", "record", "refund", "exchange")


def workflow() -> Any:
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def allocated(order_id: str) -> None:
    steps = workflow()
    steps.authorize_payment(order_id, attempt=0)
    steps.reserve_stock(order_id)
    steps.create_shipments(order_id)


def shipped(api: InProcessApi, order_id: str) -> dict[str, Any]:
    order = api.get(f"/orders/{order_id}").json()
    for shipment in order["shipments"]:
        answer = api.post(f"/orders/{order_id}/shipments/{shipment['id']}/ship", json={})
        assert answer.status_code == 200, answer.text
    return api.get(f"/orders/{order_id}").json()


def paid(api: InProcessApi, order_id: str) -> Decimal:
    """What the customer's card ended paying on the order: captured less refunded."""
    payment = api.get(f"/orders/{order_id}").json()["payment"]
    return Decimal(money(payment["captured"])) - Decimal(money(payment["refunded"]))


def test_a_replacement_edited_up_after_the_rest_of_its_credit_was_refunded_pays_for_all_it_adds(api, services):
    # A MUG (13.40 with its tax) exchanged for a CAP (13.33 with tax and shipping): 0.07 comes back at once.
    original, return_id = received(api, exchange=[{"sku": "CAP", "quantity": 1}], steps=EXCHANGED)
    replacement_id = api.get(f"/returns/{return_id}").json()["exchange_order_id"]
    assert refunds(api, original["id"]) == [("succeeded", "0.07")]
    allocated(replacement_id)
    before = api.get(f"/orders/{replacement_id}").json()
    credit = Decimal(money(before["exchange_credit"]))

    edited = api.request("PATCH", f"/orders/{replacement_id}", json={"lines": [{"sku": "CAP", "quantity": 3}]},
                         headers={"If-Match": str(before["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text
    allocated(replacement_id)
    done = shipped(api, replacement_id)

    total = Decimal(money(done["totals"]["grand_total"]))
    # The credit paid what of it the exchange did not refund at once; the card the rest.
    assert Decimal(money(done["payment"]["authorized"])) == total - (credit - Decimal("0.07"))
    assert paid(api, replacement_id) == total - (credit - Decimal("0.07"))
    # The customer paid the MUG kept and the three CAPs, no cent less.
    kept = Decimal(money(original["totals"]["grand_total"])) - credit
    assert paid(api, original["id"]) + paid(api, replacement_id) == kept + total
    assert refunds(api, original["id"]) == [("succeeded", "0.07")]
    assert "credit_rest" not in done  # the system's own record, never shown


def test_a_replacement_edited_up_before_its_exchange_step_finished_gets_the_rest_of_its_credit_back(
    api, services, monkeypatch
):
    # The Exchange step placed the replacement and died before it recorded the exchange on the
    # original (nor refunded the rest); the customer edited the replacement up before its retry.
    from core.errors import TransientError
    from core.models import Order

    original, return_id = received(api, exchange=[{"sku": "CAP", "quantity": 1}], steps=EXCHANGED[:-1])
    with monkeypatch.context() as dying:
        dying.setattr(Order, "exchanged", lambda *args, **kwargs: (_ for _ in ()).throw(TransientError("died")))
        with pytest.raises(TransientError):
            return_steps.step("exchange", return_id)
    assert refunds(api, original["id"]) == []
    placed = [o for o in api.get("/orders", params={"limit": 100}).json()["items"] if o.get("exchange_credit")]
    replacement_id = next(o["id"] for o in placed if o["external_id"] == original["external_id"] + "-x1")
    allocated(replacement_id)
    before = api.get(f"/orders/{replacement_id}").json()
    edited = api.request("PATCH", f"/orders/{replacement_id}", json={"lines": [{"sku": "CAP", "quantity": 3}]},
                         headers={"If-Match": str(before["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text

    return_steps.step("exchange", return_id)  # the state machine's retry
    allocated(replacement_id)
    done = shipped(api, replacement_id)

    # The rest of the credit beyond the CAP it was placed for is back, and the card paid the rest.
    assert refunds(api, original["id"]) == [("succeeded", "0.07")]
    credit = Decimal(money(done["exchange_credit"]))
    kept = Decimal(money(original["totals"]["grand_total"])) - credit
    total = Decimal(money(done["totals"]["grand_total"]))
    assert paid(api, original["id"]) + paid(api, replacement_id) == kept + total
