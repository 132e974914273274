"""PATCH /orders/{id} of a pickup order whose parcel waits ready at its store, in-process on moto.
API.md: an edit answers 200 "until the first shipment ships", and a pickup's parcel never ships (it
goes `ready_for_pickup`, then `delivered` when collected): an edit of its lines sources the order
again, as any allocated order edited is, and its store picks the new parcel; one of its address
alone keeps the parcel (Order.sources_again_after). Collected, it is 409."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import address_body, location_body, order_body, product_body
from tests.e2e.client import assert_error, unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated
from tests.integration.test_pickup_holds_api import ready_pickup as pickup_ready

STORE = "store-oak"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/CUP", json=product_body("8.00")).status_code == 201
        store = location_body(name="Oakland store", type="store", ships=False, pickup=True)
        assert started.put(f"/locations/{STORE}", json=store).status_code == 201
        assert started.put(f"/inventory/CUP/{STORE}", json={"on_hand": 10}).status_code == 200
        yield started


def ready_pickup(api: InProcessApi, external_id: str, quantity: int) -> dict[str, Any]:
    return pickup_ready(api, external_id, sku="CUP", store=STORE, quantity=quantity)[0]


def edit(api: InProcessApi, order: dict[str, Any], quantity: int):
    body = {"lines": [{"sku": "CUP", "quantity": quantity}]}
    return api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})


def store_level(api: InProcessApi) -> tuple[int, int]:
    (level,) = [each for each in api.get("/inventory/CUP").json()["locations"] if each["location_id"] == STORE]
    return level["on_hand"], level["reserved"]


def test_a_pickup_ready_at_its_store_is_edited_and_sourced_again_then_picked_and_collected(api: InProcessApi):
    before = store_level(api)
    order = ready_pickup(api, "web-pickup-edit-1", 1)
    assert store_level(api) == (before[0], before[1] + 1)

    answer = edit(api, order, 3)

    assert answer.status_code == 200, answer.text
    edited = answer.json()
    assert (edited["status"], edited["allocations"], edited["shipments"]) == ("authorized", [], [])
    assert edited["totals"]["subtotal"] == {"amount": "24.00", "currency": "USD"}
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert "edited" in [entry["type"] for entry in history]
    # The withdrawn parcel had the OMS's pick slip, no carrier's booking: nothing to give back.
    assert not [entry for entry in history if entry["type"].startswith("carrier_booking")]
    again = run_to_allocated(api, order["id"])
    (parcel,) = again["shipments"]
    # Under the edited line's own id: the withdrawn pick slip's L1 names nothing the store picks now.
    assert (parcel["location_id"], parcel["status"], parcel["lines"]) == (
        STORE, "pending", [{"line_id": "L2", "quantity": 3}]
    )  # fmt: skip
    assert store_level(api) == (before[0], before[1] + 3)  # its one unit counted once, two more reserved
    ready = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ready")
    assert ready.status_code == 200, ready.text
    collected = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/deliver")
    assert collected.status_code == 200, collected.text
    done = collected.json()
    assert (done["status"], done["payment"]["captured"]) == ("delivered", done["totals"]["grand_total"])
    assert store_level(api) == (before[0] - 3, before[1])


def test_a_collected_pickup_is_no_longer_edited(api: InProcessApi):
    order = ready_pickup(api, "web-pickup-edit-2", 1)
    (parcel,) = order["shipments"]
    collected = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/deliver").json()

    assert_error(edit(api, collected, 2), 409)
    assert api.get(f"/orders/{order['id']}").json()["version"] == collected["version"]


def edit_address(api: InProcessApi, order: dict[str, Any], **changed: str):
    body = {"shipping_address": address_body(**changed)}
    return api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})


def test_an_address_edit_of_a_ready_pickup_keeps_its_parcel_ready_at_the_store_and_it_is_collected(api: InProcessApi):
    # A pickup's parcel depends on its lines and its store, not on the customer's address: the
    # store picked it and it stays on the shelf, its code and slip as they were.
    before = store_level(api)
    order = ready_pickup(api, "web-pickup-edit-3", 2)

    answer = edit_address(api, order, line1="9 Other Street")

    assert answer.status_code == 200, answer.text
    edited = answer.json()
    assert edited["shipping_address"]["line1"] == "9 Other Street"
    assert edited["status"] == "allocated"
    assert (edited["allocations"], edited["lines"]) == (order["allocations"], order["lines"])
    assert unsigned(edited)["shipments"] == unsigned(order)["shipments"]
    assert (edited["totals"], edited["payment"]) == (order["totals"], order["payment"])
    assert store_level(api) == (before[0], before[1] + 2)
    (entry,) = [h for h in api.get(f"/orders/{order['id']}/history").json()["items"] if h["type"] == "edited"]
    assert (entry["from_status"], entry["to_status"], entry["detail"]["changed"]) == (None, None, ["shipping_address"])
    assert "released" not in entry["detail"]
    (parcel,) = edited["shipments"]
    collected = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/deliver")
    assert collected.status_code == 200, collected.text
    done = collected.json()
    assert (done["status"], done["payment"]["captured"]) == ("delivered", done["totals"]["grand_total"])
    assert store_level(api) == (before[0] - 2, before[1])


def test_an_address_edit_of_a_held_ready_pickup_keeps_its_parcel_and_the_release_resumes_it_allocated(
    api: InProcessApi,
):
    order = ready_pickup(api, "web-pickup-edit-4", 1)
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"})
    assert held.status_code == 200, held.text

    answer = edit_address(api, held.json(), line1="10 Fixed Street")

    assert answer.status_code == 200, answer.text
    edited = answer.json()
    assert (edited["status"], edited["allocations"]) == ("on_hold", order["allocations"])
    assert [s["status"] for s in edited["shipments"]] == ["ready_for_pickup"]
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert released.status_code == 200, released.text
    assert (released.json()["status"], [s["id"] for s in released.json()["shipments"]]) == (
        "allocated", [s["id"] for s in order["shipments"]]
    )  # fmt: skip


def test_a_pickup_edit_naming_a_shipping_method_is_422_and_changes_nothing(api: InProcessApi):
    # A pickup is never shipped: a method sent with its new address is refused whole, as at capture.
    order = ready_pickup(api, "web-pickup-edit-5", 1)
    body = {"shipping_address": address_body(line1="11 Other Street"), "shipping_method": "express"}

    answer = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})

    assert_error(answer, 422, "validation_error")
    assert answer.json()["error"]["details"] == [
        {"field": "shipping_method", "message": "leave it out for pickup orders"}
    ]
    assert api.get(f"/orders/{order['id']}").json()["version"] == order["version"]


def test_a_pickup_edit_naming_its_lines_of_one_sku_reordered_keeps_its_parcel_and_other_lines_of_it_do_not(
    api: InProcessApi,
):
    # Two lines of one sku named in the other order are the order's (each line keeps its id and
    # quantity); the lines reordered with one of them named twice, or the same units as one line, are
    # other lines: the parcel is withdrawn and the store picks the new one.
    on_hand, _ = store_level(api)
    assert api.put(f"/inventory/CUP/{STORE}", json={"on_hand": on_hand + 4}).status_code == 200
    placed = api.post("/orders", json=order_body(
        external_id="web-pickup-edit-6", lines=[{"sku": "CUP", "quantity": 1}, {"sku": "CUP", "quantity": 2}],
        fulfillment={"type": "pickup", "location_id": STORE},
    ))  # fmt: skip
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    reordered = [{"sku": "CUP", "quantity": 2}, {"sku": "CUP", "quantity": 1}]
    body = {"lines": reordered, "shipping_address": address_body(line1="12 Other Street")}

    kept = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})

    assert kept.status_code == 200, kept.text
    edited = kept.json()
    assert [(x["line_id"], x["quantity"]) for x in edited["lines"]] == [("L1", 1), ("L2", 2)]
    assert (edited["status"], unsigned(edited)["shipments"]) == ("allocated", unsigned(order)["shipments"])
    # Each against the lines the order then has: (1, 2), then (2, 1, 2).
    for lines in ([*reordered, {"sku": "CUP", "quantity": 2}], [{"sku": "CUP", "quantity": 5}]):
        current = api.get(f"/orders/{order['id']}").json()
        answer = api.request(
            "PATCH", f"/orders/{order['id']}", json={"lines": lines}, headers={"If-Match": str(current["version"])}
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["shipments"]) == ("authorized", [])
        assert sorted(x["quantity"] for x in answer.json()["lines"]) == sorted(x["quantity"] for x in lines)
        run_to_allocated(api, order["id"])
