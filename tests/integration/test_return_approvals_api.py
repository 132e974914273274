"""Returns decided by a shop's own return policy plugin, in-process on moto (API.md "Returns, refunds
and exchanges"): one sent for approval is `requested`, then POST /returns/{id}/approve or /reject
`{note?}` (what each answers, what a rejected return leaves returnable, the transitions each refuses);
one with a restocking fee and shipping refunded is refunded each unit's share plus the shipping minus
the fee, never more than captured minus already refunded."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from core import hookimpl
from core.money import Money
from core.return_models import ReturnPolicyDecision
from tests.e2e.client import assert_error, money
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, returns_run_inline
from tests.integration.test_cancel_units_api import allocated, ship, stock_two_parcels
from tests.integration.test_payment_plugin_failures_api import registered


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    """MUG in the west, CAP in the east (stock_two_parcels); a receipt runs the returns workflow's steps inline."""
    with in_process_api_with_labels() as started, returns_run_inline():
        stock_two_parcels(started)
        yield started


class NeedsApproval:
    """A return policy that asks a person to approve every return."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self):
        return ReturnPolicyDecision(needs_approval=True)


@pytest.fixture
def approvals() -> Iterator[None]:
    with registered(NeedsApproval()):
        yield


def requested(api: InProcessApi, order: dict[str, Any], quantity: int = 1) -> dict[str, Any]:
    body = {"lines": [{"line_id": "L1", "quantity": quantity, "reason": "too small", "reason_code": "size_or_fit"}]}
    answer = api.post(f"/orders/{order['id']}/returns", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_requested_return_has_no_label_until_approved_and_lists_as_requested(api: InProcessApi, approvals: None):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")

    made = requested(api, order)

    assert (made["status"], made["label_url"]) == ("requested", None)
    listed = api.get("/returns", params={"status": "requested", "limit": 100}).json()["items"]
    assert made["id"] in [item["id"] for item in listed]

    approved = api.post(f"/returns/{made['id']}/approve", json={"note": "photo checked"})

    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "authorized" and approved.json()["label_url"].startswith("https://")
    assert approved.json()["note"] == "photo checked"
    assert_error(api.post(f"/returns/{made['id']}/approve", json={}), 409, "invalid_transition")
    assert_error(api.post(f"/returns/{made['id']}/reject", json={}), 409, "invalid_transition")


def test_a_rejected_return_gives_its_units_back_to_a_new_return_and_cannot_be_approved(
    api: InProcessApi, approvals: None
):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    first = requested(api, order, quantity=2)
    # Both shipped units are on the requested return: none is left to ask for meanwhile.
    assert_error(
        api.post(f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]}),
        422,
        "validation_error",
        "lines[0].quantity",
    )

    rejected = api.post(f"/returns/{first['id']}/reject", json={"note": "worn"})

    assert rejected.status_code == 200, rejected.text
    shown = rejected.json()
    assert (shown["status"], shown["label_url"], shown["note"]) == ("rejected", None, "worn")
    assert_error(api.post(f"/returns/{first['id']}/approve", json={}), 409, "invalid_transition")
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    assert_error(api.post(f"/returns/{first['id']}/receive", json=receipt), 409)
    again = requested(api, order, quantity=2)
    assert again["status"] == "requested"


def test_a_requested_return_cannot_be_received_before_it_is_approved(api: InProcessApi, approvals: None):
    order = ship(api, allocated(api, ("MUG", 1)), "wh-west")
    made = requested(api, order)
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    assert_error(api.post(f"/returns/{made['id']}/receive", json=receipt), 409)

    shown = api.get(f"/returns/{made['id']}").json()
    assert (shown["status"], shown["lines"][0]["received_quantity"]) == ("requested", 0)


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_approve_and_reject_take_an_optional_note_and_nothing_else(api: InProcessApi, approvals: None, action: str):
    order = ship(api, allocated(api, ("MUG", 1)), "wh-west")
    path = f"/returns/{requested(api, order)['id']}/{action}"

    assert_error(api.post(path, json={"note": "ok", "reason": "x"}), 422, "validation_error", "reason")
    assert_error(api.post(path, json={"note": 5}), 422, "validation_error", "note")
    assert_error(api.post(path, json=["ok"]), 400)
    assert_error(api.post(path, data="{", headers={"Content-Type": "application/json"}), 400)

    answer = api.post(path)  # no body at all: the note is optional

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == ("authorized" if action == "approve" else "rejected")


@pytest.mark.parametrize(("action", "other", "status"), [("approve", "reject", "authorized"),
                                                    ("reject", "approve", "rejected")])  # fmt: skip
def test_a_decision_naming_a_version_changed_since_is_409_and_changes_nothing(
    api: InProcessApi, approvals: None, action: str, other: str, status: str
):
    # Two agents read the same requested return; one decides it. The other's decision, from the
    # version they read, was 409 invalid_transition, which never told them it had changed under them.
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    seen = requested(api, order)
    path = f"/returns/{seen['id']}"
    decided = api.post(f"{path}/{other}", json={"note": "decided first"}).json()
    kept = ("status", "version", "note", "updated_at")
    history = api.get(f"/orders/{order['id']}/history").json()["items"]

    stale = api.post(f"{path}/{action}", json={"note": "from what I read"}, headers={"If-Match": str(seen["version"])})

    error = assert_error(stale, 409, "version_conflict", "If-Match")
    assert error["details"] == [{"field": "If-Match", "message": f"current version is {decided['version']}"}]
    assert {name: api.get(path).json()[name] for name in kept} == {name: decided[name] for name in kept}
    assert api.get(f"/orders/{order['id']}/history").json()["items"] == history
    fresh = requested(api, order)
    never = api.post(f"/returns/{fresh['id']}/{action}", headers={"If-Match": str(fresh["version"] + 1)})
    assert_error(never, 409, "version_conflict", "If-Match")
    assert api.get(f"/returns/{fresh['id']}").json()["label_url"] is None  # no label booked for it
    assert_error(api.post(f"/returns/{fresh['id']}/{action}", headers={"If-Match": "W/1"}), 400, "malformed_header")
    current = api.post(f"/returns/{fresh['id']}/{action}", headers={"If-Match": f'W/"{fresh["version"]}"'})
    assert (current.status_code, current.json()["status"]) == (200, status), current.text


class FeeAndShipping:
    """A return policy that keeps a 1.50 restocking fee and gives the shipping back with every return."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self, order):
        return ReturnPolicyDecision(fee=Money(amount="1.50", currency=order.currency), refund_shipping=True)


def test_a_policys_fee_is_kept_back_and_its_shipping_given_back_never_past_what_is_left_captured(api: InProcessApi):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    line_total = Decimal(order["lines"][0]["total"]["amount"])
    shipping = Decimal(order["totals"]["shipping"]["amount"])
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    with registered(FeeAndShipping()):
        first = requested(api, order)
        second = requested(api, order)
    assert first["fee"] == money("1.50") and first["status"] == "authorized"

    received = api.post(f"/returns/{first['id']}/receive", json=receipt)

    assert received.status_code == 200, received.text
    # Each unit's share of its line total, the first rounded half-even, the last what is left.
    share = (line_total / 2).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert received.json()["refund"] == money(str(share + shipping - Decimal("1.50")))
    # The second return's due is its share, the shipping (given back once) already gone: leave less captured.
    captured_left = Decimal(api.get(f"/orders/{order['id']}").json()["payment"]["captured"]["amount"]) - (
        share + shipping - Decimal("1.50")
    )
    appeasement = captured_left - Decimal("5.00")
    appeased = api.post(f"/orders/{order['id']}/refunds", json={"amount": money(str(appeasement)), "reason": "late"})
    assert appeased.status_code == 201, appeased.text

    last = api.post(f"/returns/{second['id']}/receive", json=receipt)

    assert last.status_code == 200, last.text
    assert last.json()["refund"] == money("5.00")
    payment = api.get(f"/orders/{order['id']}").json()["payment"]
    assert payment["refunded"] == payment["captured"]
