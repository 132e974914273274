"""An exchange's money under the requests a customer, a warehouse and a person at the shop may send
around it (in-process API on moto, the returns workflow's steps run through their handler): the
receipt sent again, the workflow started again, an appeasement asked for the exchanged units, the
replacement cancelled twice. The credit is given once, never beside a refund of the same units."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.e2e.client import assert_error
from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi, issue
from tests.integration.return_steps import AFTER_RECEIPT, RECEIPT, received, refunds, step
from tests.integration.test_cancel_units_api import cancel, money

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west, CAP 7.77 in the east)
services = return_steps.services  # the API's and the return step's services


def amount(value: dict[str, str]) -> Decimal:
    return Decimal(money(value))


def paid(order: dict[str, Any]) -> Decimal:
    """What the customer's card ended paying on `order`: captured less refunded."""
    return amount(order["payment"]["captured"]) - amount(order["payment"]["refunded"])


def replacements_of(api: InProcessApi, original: dict[str, Any]) -> list[str]:
    listed = api.get("/orders", params={"customer_id": original["customer"]["id"], "limit": 100}).json()["items"]
    return [o["id"] for o in listed if o["external_id"].startswith(f"{original['external_id']}-x")]


def test_an_exchange_received_again_and_asked_for_again_gives_its_credit_once(api, services):
    # Two MUGs delivered, one sent back for a CAP: the MUG's 13.40 is the credit, the CAP with its
    # shipping costs 13.33, so 0.07 comes back at once and 13.33 stays captured, paying for the CAP.
    original, return_id = received(api, exchange=[{"sku": "CAP", "quantity": 1}], steps=AFTER_RECEIPT)
    [replacement_id] = replacements_of(api, original)
    credit = amount(api.get(f"/orders/{replacement_id}").json()["exchange_credit"])
    assert (credit, refunds(api, original["id"])) == (Decimal("13.40"), [("succeeded", "0.07")])

    # The warehouse scans the parcel again, once under a key, once without; a restarted workflow
    # runs every step after the receipt again.
    for headers in ({"Idempotency-Key": f"again-{return_id}"}, {"Idempotency-Key": f"again-{return_id}"}, {}):
        again = api.post(f"/returns/{return_id}/receive", json=RECEIPT, headers=headers)
        assert again.status_code == 200, again.text
        assert (again.json()["status"], again.json()["exchange_order_id"]) == ("refunded", replacement_id)
    for name in AFTER_RECEIPT:
        step(name, return_id)
    assert replacements_of(api, original) == [replacement_id]
    assert refunds(api, original["id"]) == [("succeeded", "0.07")]

    # A person refunds the customer something for their trouble: the credit held for the CAP (13.33
    # once 0.07 came back) cannot go back that way too, a cent past the rest is refused.
    before = api.get(f"/orders/{original['id']}").json()
    free = paid(before) - (credit - Decimal("0.07"))
    too_much = {"amount": {"amount": str(free + Decimal("0.01")), "currency": "USD"}, "reason": "goodwill"}
    assert_error(api.post(f"/orders/{original['id']}/refunds", json=too_much), 422, "refund_exceeds_captured")
    goodwill = {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "goodwill"}
    for _ in range(2):
        made = api.post(f"/orders/{original['id']}/refunds", json=goodwill, headers={"Idempotency-Key": "goodwill-1"})
        assert (made.status_code, made.json()["status"]) == (201, "succeeded"), made.text

    # The customer cancels the CAP before it ships, twice: what of the credit it took comes back once.
    for headers in ({}, {"Idempotency-Key": f"cancel-{replacement_id}"}):
        answer = cancel(api, replacement_id, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled"

    after = api.get(f"/orders/{original['id']}").json()
    for_return = [r for r in api.get(f"/orders/{original['id']}/refunds").json()["items"] if r["return_id"]]
    assert [(r["status"], money(r["amount"])) for r in for_return] == [("succeeded", "0.07"), ("succeeded", "13.33")]
    assert amount(api.get(f"/returns/{return_id}").json()["refund"]) == credit
    # The card paid for the MUG kept, less the appeasement: the other MUG's worth went back whole.
    assert paid(after) == amount(after["totals"]["grand_total"]) - credit - Decimal("5.00")
    assert paid(api.get(f"/orders/{replacement_id}").json()) == 0


def test_a_returns_desk_key_places_an_exchange_that_charges_the_customer_for_what_it_adds(api, services):
    # A key with returns:write alone (no orders:write) asks for a MUG to come back as five CAPs:
    # once the warehouse receives the MUG (its key's fulfillment:write), the replacement is placed on
    # the original's payment method, its workflow to authorize what the CAPs cost beyond the MUG's
    # 13.40 (README, Security: the table).
    desk = api.post("/api-keys", json={"name": "returns desk", "scopes": ["returns:write"], "channel": "web"})
    assert desk.status_code == 201, desk.text
    warehouse = issue(api, "fulfillment:write", channel="web")
    original, _ = received(api, exchange=[{"sku": "CAP", "quantity": 5}], steps=AFTER_RECEIPT,
                           key=desk.json()["key"], receiver=warehouse)  # fmt: skip

    [replacement_id] = replacements_of(api, original)
    replacement = api.get(f"/orders/{replacement_id}").json()
    assert (replacement["status"], replacement["payment"]["method"]) == ("pending", original["payment"]["method"])
    assert amount(replacement["exchange_credit"]) == Decimal("13.40")
    assert amount(replacement["totals"]["grand_total"]) - Decimal("13.40") > 20


def test_a_give_back_the_gateway_refuses_is_recorded_failed_and_nothing_shows_it_as_given(api, services):
    # The card refuses every refund. A MUG swapped for a MUG costs the credit and the shipping again,
    # so nothing comes back at once; the replacement is then cancelled and its credit's give-back refused.
    refusing = {"method": "test", "token": "tok_refund_decline"}
    original, return_id = received(
        api, exchange=[{"sku": "MUG", "quantity": 1}], steps=AFTER_RECEIPT, payment=refusing
    )  # fmt: skip
    [replacement_id] = replacements_of(api, original)
    assert refunds(api, original["id"]) == []
    answer = cancel(api, replacement_id)
    assert answer.status_code == 200, answer.text
    assert cancel(api, replacement_id).status_code == 200  # a repeat asks nothing again

    credit = money(api.get(f"/orders/{replacement_id}").json()["exchange_credit"])
    assert refunds(api, original["id"]) == [("failed", credit)]
    after = api.get(f"/orders/{original['id']}").json()
    assert amount(after["payment"]["refunded"]) == 0
    assert api.get(f"/returns/{return_id}").json()["refund"]["amount"] == "0.00"
    # Left to a person: the credit no longer holds the money, so an appeasement may give it back.
    asked = {"amount": {"amount": credit, "currency": "USD"}, "reason": "the exchange's credit"}
    made = api.post(f"/orders/{original['id']}/refunds", json=asked)
    assert (made.status_code, made.json()["status"]) == (201, "failed"), made.text
    assert amount(api.get(f"/orders/{original['id']}").json()["payment"]["refunded"]) == 0


def test_an_exchanges_replacement_is_found_by_the_number_its_customer_is_told(api, services):
    # The replacement's notices give the customer its external_id (the original's plus `-x1`).
    original, _ = received(api, exchange=[{"sku": "CAP", "quantity": 1}], steps=AFTER_RECEIPT)
    [replacement_id] = replacements_of(api, original)
    number = api.get(f"/orders/{replacement_id}").json()["external_id"]

    found = api.get("/orders", params={"external_id": number, "channel": original["channel"]})

    assert found.status_code == 200, found.text
    assert [o["id"] for o in found.json()["items"]] == [replacement_id]
    assert number == f"{original['external_id']}-x1"
