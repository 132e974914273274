"""A location's late confirmation of a parcel a change withdrew, once its order has a new parcel at
that same location, over the in-process API: the old parcel's ship, batched ship, ready or carrier
scan is refused as any withdrawn parcel's is (409 naming what withdrew it, or `withdrawn`), never
applied to the replacement, whose contents and label may be other. A parcel made after a change
that may alter what its location packs (core.ids.shipment_id_for's generation) has an id of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugins.flat_rate_carrier import tracking_number
from tests.e2e.client import Catalog, assert_error, order_body, put_network, unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated

TRACKING = "/carriers/oms-flat-rate/tracking"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def steps():
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def sourced_again(api: InProcessApi, order_id: str) -> dict[str, Any]:
    """The order's workflow run again after a change sent it back to be sourced: allocated."""
    workflow = steps()
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def edit(api: InProcessApi, order: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    answer = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})
    assert answer.status_code == 200, answer.text
    assert answer.json()["shipments"] == [], answer.text
    return answer.json()


def edited_and_replaced(api: InProcessApi, *, store: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A one-unit order allocated at the west warehouse (or the pickup store), edited to two units
    and sourced again there: its withdrawn parcel and the order with its replacement."""
    network = put_network(api, store=store)
    where = network["store" if store else "west"]
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, where, 5)
    overrides = {"fulfillment": {"type": "pickup", "location_id": where}} if store else {}
    placed = api.post("/orders", json=order_body((sku, 1), **overrides))
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    (old,) = order["shipments"]
    edit(api, order, {"lines": [{"sku": sku, "quantity": 2}]})
    replaced = sourced_again(api, order["id"])
    (new,) = replaced["shipments"]
    assert (new["location_id"], new["lines"][0]["quantity"]) == (old["location_id"], 2)
    return old, replaced


def assert_withdrawn(response: Any, shipment_id: str, by: str) -> None:
    error = assert_error(response, 409, "invalid_transition")
    assert f"shipment {shipment_id} was withdrawn" in error["message"], error
    assert [(d["shipment_id"], d["withdrawn_by"]) for d in error["details"]] == [(shipment_id, by)], error


def test_a_late_ship_of_a_parcel_an_edit_withdrew_is_409_and_leaves_its_replacement_at_that_location_pending(api):
    old, order = edited_and_replaced(api)
    (new,) = order["shipments"]

    late = api.post(
        f"/orders/{order['id']}/shipments/{old['id']}/ship", json={"tracking_number": old["tracking_number"]}
    )

    assert_withdrawn(late, old["id"], "edited")
    assert new["id"] != old["id"] and new["tracking_number"] != old["tracking_number"]
    after = api.get(f"/orders/{order['id']}").json()
    assert unsigned(after) == unsigned(order)
    assert (after["shipments"][0]["status"], after["payment"]["captured"]["amount"]) == ("pending", "0.00")
    # The replacement ships under its own id.
    shipped = api.post(f"/orders/{order['id']}/shipments/{new['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["payment"]["captured"] == shipped.json()["totals"]["grand_total"]


@pytest.mark.parametrize("action", ["ship", "deliver"])
def test_a_late_batched_confirmation_of_a_parcel_an_edit_withdrew_is_refused_and_changes_nothing(api, action):
    old, order = edited_and_replaced(api)

    batch = api.post(
        "/shipments/confirmations",
        json={"items": [{"order_id": order["id"], "shipment_id": old["id"], "action": action}]},
    )

    assert batch.status_code == 200, batch.text
    (item,) = batch.json()["items"]
    assert (item["error"]["code"], item["status"], item["retry"]) == ("invalid_transition", None, False), item
    assert item["error"]["details"][0]["withdrawn_by"] == "edited", item
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)


def test_a_late_ready_of_a_pickup_an_edit_withdrew_does_not_ready_its_replacement_at_the_store(api):
    old, order = edited_and_replaced(api, store=True)

    assert_withdrawn(api.post(f"/orders/{order['id']}/shipments/{old['id']}/ready"), old["id"], "edited")
    assert_withdrawn(api.post(f"/orders/{order['id']}/shipments/{old['id']}/deliver"), old["id"], "edited")
    after = api.get(f"/orders/{order['id']}").json()
    assert unsigned(after) == unsigned(order)
    assert after["shipments"][0]["status"] == "pending"


def test_a_late_ship_of_a_parcel_another_locations_reject_withdrew_does_not_ship_its_bigger_replacement(api):
    """The west parcel held one mug; east rejected the kite, which west then had too: west's new
    parcel holds both. West's late confirmation of its first parcel ships neither."""
    network = put_network(api)
    catalog = Catalog(api)
    mug, kite = catalog.product("10.00"), catalog.product("30.00")
    catalog.stock(mug, network["west"], 1)
    catalog.stock(kite, network["east"], 1)
    order = run_to_allocated(api, api.post("/orders", json=order_body((mug, 1), (kite, 1))).json()["id"])
    by_location = {s["location_id"]: s for s in order["shipments"]}
    old = by_location[network["west"]]
    catalog.stock(kite, network["west"], 1)
    rejected = api.post(
        f"/orders/{order['id']}/shipments/{by_location[network['east']]['id']}/reject", json={"reason": "water damage"}
    )
    assert rejected.status_code == 200, rejected.text
    replaced = sourced_again(api, order["id"])
    (new,) = replaced["shipments"]
    assert (new["location_id"], len(new["lines"])) == (network["west"], 2)

    late = api.post(f"/orders/{order['id']}/shipments/{old['id']}/ship", json={})

    assert_withdrawn(late, old["id"], "shipment_rejected")
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(replaced)


def test_a_carrier_scan_of_a_parcel_an_edit_withdrew_is_withdrawn_and_never_kept_for_its_replacement(api):
    old, order = edited_and_replaced(api)
    at = order["created_at"]
    scan = {"reference": f"{order['id']}/{old['id']}", "tracking_number": tracking_number(old["id"]),
            "status": "delivered", "at": at}  # fmt: skip

    report = api.post(TRACKING, key=issue(api, "fulfillment:write"), json={"events": [scan]})

    assert report.status_code == 200, report.text
    assert [(u["shipment_id"], u["outcome"]) for u in report.json()["updates"]] == [(old["id"], "withdrawn")]
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)
    # The replacement's ship records it shipped, not delivered on the old parcel's scan.
    (new,) = order["shipments"]
    shipped = api.post(f"/orders/{order['id']}/shipments/{new['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    assert (shipped.json()["status"], shipped.json()["shipments"][0]["status"]) == ("shipped", "shipped")


def test_a_late_reject_of_a_replacement_a_second_change_withdrew_excludes_its_location(api):
    """A parcel of the second generation, withdrawn by another edit: its location's reject still
    finds where it was (Order.reject_withdrawn), as one of the first generation's does."""
    _, order = edited_and_replaced(api)
    (second,) = order["shipments"]
    edit(api, order, {"shipping_method": "express"})

    late = api.post(f"/orders/{order['id']}/shipments/{second['id']}/reject", json={"reason": "no staff"})

    assert late.status_code == 200, late.text
    entry = api.get(f"/orders/{order['id']}/history").json()["items"][-1]
    assert (entry["type"], entry["detail"]["shipment_id"], entry["detail"]["location_id"]) == (
        "shipment_rejected", second["id"], second["location_id"],
    )  # fmt: skip


def test_a_late_ship_of_the_first_parcel_names_the_change_that_withdrew_it_not_the_replacements(api):
    """The first parcel went with an edit; its replacement at the same location was rejected since.
    The first one's late ship names the edit (it was never rejected), the replacement's the reject."""
    old, order = edited_and_replaced(api)
    (second,) = order["shipments"]
    base = f"/orders/{order['id']}/shipments"
    assert api.post(f"{base}/{second['id']}/reject", json={"reason": "no staff"}).status_code == 200

    assert_withdrawn(api.post(f"{base}/{old['id']}/ship", json={}), old["id"], "edited")
    late = api.post(f"{base}/{second['id']}/ship", json={})
    assert_withdrawn(late, second["id"], "shipment_rejected")
    assert "its location rejected it, reason: no staff" in late.json()["error"]["message"]


@pytest.mark.parametrize("store", [False, True])
def test_a_late_reject_of_a_withdrawn_parcel_whose_location_holds_its_replacement_is_409_and_changes_nothing(
    api, store
):
    """The location now holds the order's new parcel (pending, or a pickup ready at the store):
    excluding it for the order while that parcel stays there to ship would say "never from here" and
    "ship from here" at once. The warehouse is told which parcel it rejected, and rejects the one it
    holds if it cannot supply that."""
    old, order = edited_and_replaced(api, store=store)
    (new,) = order["shipments"]
    base = f"/orders/{order['id']}/shipments"
    if store:
        ready = api.post(f"{base}/{new['id']}/ready")
        assert ready.status_code == 200, ready.text
        order = ready.json()

    late = api.post(f"{base}/{old['id']}/reject", json={"reason": "no staff"})

    assert_withdrawn(late, old["id"], "edited")
    assert late.json()["error"]["details"][0]["location_id"] == old["location_id"]
    after = api.get(f"/orders/{order['id']}").json()
    assert unsigned(after) == unsigned(order)
    assert api.get(f"/orders/{order['id']}/history").json()["items"][-1]["type"] != "shipment_rejected"
    # Sent again it is refused the same; the parcel the location holds is rejected as it is.
    assert_withdrawn(api.post(f"{base}/{old['id']}/reject", json={"reason": "no staff"}), old["id"], "edited")
    if not store:
        rejected = api.post(f"{base}/{new['id']}/reject", json={"reason": "no staff"})
        assert rejected.status_code == 200, rejected.text
        assert (rejected.json()["status"], rejected.json()["shipments"]) == ("authorized", [])
