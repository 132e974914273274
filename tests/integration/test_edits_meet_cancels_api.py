"""PATCH /orders/{id} meeting what followed it, in-process on moto: a whole cancel, a ship, a
backorder's arrival, the edit repeated, an authorization grown old."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.errors import Backordered
from functions.adapters.dynamodb import DynamoInventory
from functions.bootstrap import forget_warm_containers
from plugins import test_payments
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated

_orders = itertools.count(1)
ZERO = {"amount": "0.00", "currency": "USD"}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/products/KITE", json=product_body("30.00", allow_backorder=True)).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


def container():
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env())


def placed(api: InProcessApi, *lines: tuple[str, int], token: str = "tok_approve") -> dict[str, Any]:
    body = order_body(external_id=f"web-e{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines],
                      payment={"method": "test", "token": token})  # fmt: skip
    answer = api.post("/orders", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def allocated(api: InProcessApi, *lines: tuple[str, int], token: str = "tok_approve") -> dict[str, Any]:
    return run_to_allocated(api, placed(api, *lines, token=token)["id"])


def edit(api: InProcessApi, order: dict[str, Any], body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    answer = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})
    assert answer.status_code == status, answer.text
    return answer.json()


def resourced(api: InProcessApi, order_id: str) -> dict[str, Any]:
    steps = container().workflow
    steps.reserve_stock(order_id)
    steps.create_shipments(order_id)
    return api.get(f"/orders/{order_id}").json()


def history(api: InProcessApi, order_id: str) -> list[dict[str, Any]]:
    return api.get(f"/orders/{order_id}/history").json()["items"]


def voided(api: InProcessApi, order_id: str) -> list[str]:
    """The authorizations the order's history says the gateway voided, each voided there."""
    found = [h["detail"]["authorization"] for h in history(api, order_id) if h["type"] == "payment_voided"]
    assert all(test_payments._held[authorization].voided for authorization in found)
    return found


def ship(api: InProcessApi, order: dict[str, Any]) -> dict[str, Any]:
    (shipment,) = order["shipments"]
    answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_order_edited_up_then_cancelled_whole_voids_both_authorizations(api):
    order = allocated(api, ("MUG", 2))
    grown = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 5}]})

    answer = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer asked"})

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert (done["status"], done["payment"]["status"], done["totals"]["grand_total"]) == ("cancelled", "voided", ZERO)
    assert [(line["quantity"], line["cancelled_quantity"]) for line in done["lines"]] == [(0, 5)]
    first = next(h for h in history(api, order["id"]) if h["type"] == "payment_authorized")["detail"]["reference"]
    assert sorted(voided(api, order["id"])) == sorted([first, grown["payment"]["authorization"]])


def test_an_order_edited_up_ships_for_its_new_total_on_the_new_authorization(api):
    order = allocated(api, ("MUG", 2))
    grown = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]})

    shipped = ship(api, resourced(api, order["id"]))

    assert shipped["payment"]["captured"] == grown["totals"]["grand_total"]
    assert (shipped["payment"]["status"], shipped["payment"]["authorization"]) == (
        "captured", grown["payment"]["authorization"])  # fmt: skip
    assert len(voided(api, order["id"])) == 1


def test_an_edit_repeated_with_the_if_match_it_was_made_on_is_409(api):
    order = allocated(api, ("MUG", 2))
    made = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]})

    edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]}, status=409)

    assert api.get(f"/orders/{order['id']}").json()["version"] == made["version"]


@pytest.mark.parametrize(
    ("status", "parcel"), [("partially_shipped", "shipped"), ("shipped", "shipped"), ("delivered", "delivered")]
)
def test_an_edit_once_anything_has_shipped_is_409_saying_so_and_changes_nothing(api, status, parcel):
    # API.md: "Once anything has shipped → 409". Its message said the order "has stock reserved",
    # which a shipped or delivered order does not: the reason is what has shipped.
    assert api.put("/products/TEE", json=product_body("9.00")).status_code in (200, 201)
    assert api.put("/locations/wh-south", json=location_body(name="South warehouse")).status_code in (200, 201)
    assert api.put("/inventory/TEE/wh-south", json={"on_hand": 100}).status_code == 200
    lines = [("MUG", 1), ("TEE", 1)] if status == "partially_shipped" else [("MUG", 1)]
    order = allocated(api, *lines)
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")
    answer = api.post(f"/orders/{order['id']}/shipments/{east['id']}/ship", json={})
    if status == "delivered":
        answer = api.post(f"/orders/{order['id']}/shipments/{east['id']}/deliver", json={})
    assert answer.status_code == 200, answer.text
    before = answer.json()
    assert before["status"] == status

    refused = api.request("PATCH", f"/orders/{order['id']}", json={"shipping_method": "express"},
                          headers={"If-Match": str(before["version"])})  # fmt: skip

    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_transition"
    assert error["message"] == f"shipment {east['id']} is {parcel}: the order can no longer be edited"
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(before)


def test_a_held_order_edited_up_is_sourced_for_its_new_lines_once_released(api):
    order = allocated(api, ("MUG", 2))
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "customer_request"})
    assert held.status_code == 200, held.text
    grown = edit(api, held.json(), {"lines": [{"sku": "MUG", "quantity": 6}]})
    assert grown["status"] == "on_hold"
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert (released.status_code, released.json()["status"]) == (200, "authorized"), released.text

    again = resourced(api, order["id"])

    assert (again["status"], sum(a["quantity"] for a in again["allocations"])) == ("allocated", 6)
    assert ship(api, again)["payment"]["captured"] == grown["totals"]["grand_total"]


def test_a_backordered_order_edited_up_is_filled_with_its_grown_quantity(api):
    assert api.put("/inventory/KITE/wh-east", json={"on_hand": 1}).status_code == 200
    order_id = placed(api, ("KITE", 2))["id"]
    steps = container().workflow
    steps.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)
    edited = edit(api, api.get(f"/orders/{order_id}").json(), {"lines": [{"sku": "KITE", "quantity": 4}]})
    assert edited["status"] == "authorized", edited
    with pytest.raises(Backordered):
        container().workflow.reserve_stock(order_id)
    assert api.put("/inventory/KITE/wh-east", json={"on_hand": 10}).status_code == 200

    container().workflow.fill_backorder(order_id, queue="KITE")

    filled = api.get(f"/orders/{order_id}").json()
    assert sum(a["quantity"] for a in filled["allocations"]) == 4, filled
    assert api.get("/inventory/KITE").json()["locations"][0]["reserved"] == 4


def test_an_order_edited_up_after_its_renewal_was_refused_ships_on_the_edits_authorization(api, monkeypatch):
    order = allocated(api, ("MUG", 2))
    (shipment,) = order["shipments"]
    with monkeypatch.context() as issuer:
        issuer.setattr(test_payments, "_capture_refused", lambda held, amount: "the issuer said no")
        for _ in range(3):  # refused, renewed and refused, asked again on the renewal and refused
            refused = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
            assert refused.status_code == 502, refused.text
    renewed = api.get(f"/orders/{order['id']}").json()
    grown = edit(api, renewed, {"lines": [{"sku": "MUG", "quantity": 3}]})

    shipped = ship(api, resourced(api, order["id"]))

    total, edits = grown["totals"]["grand_total"], grown["payment"]["authorization"]
    assert (shipped["payment"]["captured"], shipped["payment"]["authorization"]) == (total, edits)
    assert test_payments._held[edits].captured.model_dump(mode="json") == total
    # The first authorization and its renewal, each voided once; the edit's captured, not voided.
    gone = voided(api, order["id"])
    assert sorted(gone) == sorted({*gone, renewed["payment"]["authorization"]}) and len(gone) == 2
    assert edits not in gone


@pytest.fixture
def lapsing(monkeypatch):
    monkeypatch.setenv("OMS_AUTHORIZATION_VALID_DAYS", "0.0000001")
    forget_warm_containers()
    yield
    monkeypatch.delenv("OMS_AUTHORIZATION_VALID_DAYS")
    forget_warm_containers()


def test_an_order_edited_up_renews_its_lapsed_authorization_once_for_its_new_total(api, lapsing):
    order = allocated(api, ("MUG", 2))
    grown = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]})

    shipped = ship(api, resourced(api, order["id"]))

    total = grown["totals"]["grand_total"]
    assert (shipped["payment"]["authorized"], shipped["payment"]["captured"]) == (total, total)
    # The first authorization replaced by the edit's, the edit's by its renewal: each voided once.
    gone = voided(api, order["id"])
    assert len(gone) == len(set(gone)) == 2 and grown["payment"]["authorization"] in gone


def test_an_order_edited_down_renews_its_lapsed_authorization_for_its_new_total_only(api, lapsing):
    order = allocated(api, ("MUG", 4))
    shrunk = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 1}]})

    shipped = ship(api, resourced(api, order["id"]))

    total = shrunk["totals"]["grand_total"]
    assert (shipped["payment"]["authorized"], shipped["payment"]["captured"]) == (total, total)
    renewal = next(h["detail"] for h in history(api, order["id"]) if h["detail"].get("replaces"))
    # Held for what the customer still owes, not for the mugs they took off.
    assert renewal["amount"] == total
    assert test_payments._held[renewal["reference"]].amount.model_dump(mode="json") == total


def test_an_order_whose_units_were_cancelled_renews_its_lapsed_authorization_for_what_is_left(api, lapsing):
    order = allocated(api, ("MUG", 4))
    body = {"reason": "customer asked", "lines": [{"line_id": "L1", "quantity": 3}]}
    cancelled = api.post(f"/orders/{order['id']}/cancel", json=body)
    assert cancelled.status_code == 200, cancelled.text

    shipped = ship(api, cancelled.json())

    total = cancelled.json()["totals"]["grand_total"]
    assert (shipped["payment"]["authorized"], shipped["payment"]["captured"]) == (total, total)
    renewal = next(h["detail"] for h in history(api, order["id"]) if h["detail"].get("replaces"))
    assert renewal["amount"] == total


def test_a_held_order_edited_down_gives_back_the_units_it_no_longer_needs(api):
    assert api.put("/products/CUP", json=product_body("5.00")).status_code == 201
    assert api.put("/inventory/CUP/wh-east", json={"on_hand": 10}).status_code == 200
    order = allocated(api, ("CUP", 6))
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"})
    assert held.status_code == 200, held.text

    shrunk = edit(api, held.json(), {"lines": [{"sku": "CUP", "quantity": 1}]})

    assert (shrunk["status"], shrunk["allocations"]) == ("on_hold", [])
    # Still held for the cup it keeps; the five it dropped are another customer's to order.
    assert api.get("/inventory/CUP").json()["available"] == 9
    other = order_body(external_id=f"web-e{next(_orders)}", lines=[{"sku": "CUP", "quantity": 9}])
    assert api.post("/orders", json=other).status_code == 201
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert (released.status_code, released.json()["status"]) == (200, "authorized"), released.text
    again = resourced(api, order["id"])
    assert (again["status"], again["allocations"][0]["quantity"]) == ("allocated", 1)
    assert api.get("/inventory/CUP").json()["locations"][0]["reserved"] == 1


def test_an_order_held_after_an_edit_sent_it_back_to_be_sourced_gives_back_the_units_it_no_longer_needs(api):
    assert api.put("/products/BOWL", json=product_body("7.00")).status_code == 201
    assert api.put("/inventory/BOWL/wh-east", json={"on_hand": 10}).status_code == 200
    order = allocated(api, ("BOWL", 6))
    shrunk = edit(api, order, {"lines": [{"sku": "BOWL", "quantity": 1}]})
    assert shrunk["status"] == "authorized"  # its workflow, started again, has not run yet

    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"})

    assert (held.status_code, held.json()["status"]) == (200, "on_hold"), held.text
    # Still held for the bowl it keeps; the five it dropped are another customer's to order.
    assert api.get("/inventory/BOWL").json()["available"] == 9
    other = order_body(external_id=f"web-e{next(_orders)}", lines=[{"sku": "BOWL", "quantity": 9}])
    assert api.post("/orders", json=other).status_code == 201
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert (released.status_code, released.json()["status"]) == (200, "authorized"), released.text
    again = resourced(api, order["id"])
    assert (again["status"], again["allocations"][0]["quantity"]) == ("allocated", 1)
    assert api.get("/inventory/BOWL").json()["locations"][0]["reserved"] == 1


def throttled(*args: object, **kwargs: object) -> None:
    raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                      "UpdateItem")  # fmt: skip


def test_a_hold_whose_stock_cannot_be_given_back_answers_the_held_order_and_its_release_gives_it_back(api, monkeypatch):
    # The inventory table throttled the trim after the hold was written: the hold answered 503 and
    # its retry 409 (held already), though the order was on hold.
    assert api.put("/products/JUG", json=product_body("9.00")).status_code == 201
    assert api.put("/inventory/JUG/wh-east", json={"on_hand": 10}).status_code == 200
    order = allocated(api, ("JUG", 6))
    edit(api, order, {"lines": [{"sku": "JUG", "quantity": 1}]})
    monkeypatch.setattr(DynamoInventory, "shrink", throttled)

    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"})

    assert (held.status_code, held.json()["status"]) == (200, "on_hold"), held.text
    assert unsigned(held.json()) == unsigned(api.get(f"/orders/{order['id']}").json())
    (kept,) = [h for h in history(api, order["id"]) if h["type"] == "surplus_not_given_back"]
    assert kept["detail"] == {"error": "ClientError"}  # the message, which may name the table, is logged only
    assert api.get("/inventory/JUG").json()["available"] == 4
    monkeypatch.undo()
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert (released.status_code, released.json()["status"]) == (200, "authorized"), released.text
    again = resourced(api, order["id"])
    assert (again["status"], again["allocations"][0]["quantity"]) == ("allocated", 1)
    assert api.get("/inventory/JUG").json()["available"] == 9


def test_an_edit_of_a_held_order_whose_stock_cannot_be_given_back_answers_the_edited_order(api, monkeypatch):
    assert api.put("/products/VASE", json=product_body("11.00")).status_code == 201
    assert api.put("/inventory/VASE/wh-east", json={"on_hand": 10}).status_code == 200
    order = allocated(api, ("VASE", 6))
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"})
    assert held.status_code == 200, held.text
    monkeypatch.setattr(DynamoInventory, "shrink", throttled)

    shrunk = edit(api, held.json(), {"lines": [{"sku": "VASE", "quantity": 1}]})

    assert (shrunk["status"], shrunk["lines"][0]["quantity"]) == ("on_hold", 1)
    assert unsigned(shrunk) == unsigned(api.get(f"/orders/{order['id']}").json())
    assert "surplus_not_given_back" in [h["type"] for h in history(api, order["id"])]
    monkeypatch.undo()
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert released.status_code == 200, released.text
    again = resourced(api, order["id"])
    assert (again["status"], again["allocations"][0]["quantity"]) == ("allocated", 1)
    assert api.get("/inventory/VASE").json()["available"] == 9


def test_an_edit_whose_replaced_line_cannot_be_released_answers_the_order_and_its_sourcing_releases_it(
    api, monkeypatch
):
    # An order of 2 plates edited to a bowl while the inventory throttled: the edit answered 503 and
    # its repeat 409 (a stale If-Match), and the 2 plates stayed reserved for good under a line the
    # order no longer had: neither its sourcing nor its cancel looked for them.
    for sku in ("PLATE", "SAUCER"):
        assert api.put(f"/products/{sku}", json=product_body("4.00")).status_code == 201
        assert api.put(f"/inventory/{sku}/wh-east", json={"on_hand": 5}).status_code == 200
    order = allocated(api, ("PLATE", 2))
    monkeypatch.setattr(DynamoInventory, "release", throttled)

    swapped = edit(api, order, {"lines": [{"sku": "SAUCER", "quantity": 1}]})

    assert swapped["status"] == "authorized" and unsigned(swapped) == unsigned(api.get(f"/orders/{order['id']}").json())
    assert "surplus_not_given_back" in [h["type"] for h in history(api, order["id"])]
    assert api.get("/inventory/PLATE").json()["available"] == 3
    monkeypatch.undo()
    again = resourced(api, order["id"])
    assert (again["status"], again["allocations"][0]["quantity"]) == ("allocated", 1)
    assert api.get("/inventory/PLATE").json()["available"] == 5


def test_an_order_split_over_two_locations_edited_down_is_sourced_again_once_and_ships_its_new_total(api):
    # Held under attack: both pending parcels withdrawn (each booking cancelled once), the four
    # units kept for the workflow until it sources three again, the authorization of the larger
    # total kept (nothing authorized again) and captured down to the new total, the rest released.
    assert api.put("/products/URN", json=product_body("20.00")).status_code in (200, 201)
    assert api.put("/locations/wh-north", json=location_body(name="North warehouse")).status_code in (200, 201)
    for location_id in ("wh-east", "wh-north"):
        assert api.put(f"/inventory/URN/{location_id}", json={"on_hand": 2}).status_code == 200
    order = allocated(api, ("URN", 4))
    assert sorted(s["location_id"] for s in order["shipments"]) == ["wh-east", "wh-north"]

    edited = edit(api, order, {"lines": [{"sku": "URN", "quantity": 3}]})

    assert (edited["status"], edited["allocations"], edited["shipments"]) == ("authorized", [], [])
    assert edited["payment"] == order["payment"]
    assert api.get("/inventory/URN").json()["available"] == 0  # its own, until its workflow runs
    again = resourced(api, order["id"])
    assert (again["status"], sum(a["quantity"] for a in again["allocations"])) == ("allocated", 3)
    levels = api.get("/inventory/URN").json()
    assert (levels["available"], sum(level["reserved"] for level in levels["locations"])) == (1, 3)
    for parcel in again["shipments"]:
        shipped = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ship", json={})
        assert shipped.status_code == 200, shipped.text
    done = shipped.json()
    assert (done["status"], done["payment"]["captured"]) == ("shipped", edited["totals"]["grand_total"])
    types = [h["type"] for h in history(api, order["id"])]
    assert (types.count("edited"), types.count("carrier_booking_cancelled")) == (1, 2)
    assert voided(api, order["id"]) == [order["payment"]["authorization"]]  # its rest, by the last parcel
    levels = api.get("/inventory/URN").json()
    assert [(level["on_hand"] - level["reserved"]) for level in levels["locations"]] == [
        level["available"] for level in levels["locations"]
    ]
    assert sum(level["on_hand"] for level in levels["locations"]) == 1 and levels["available"] == 1
