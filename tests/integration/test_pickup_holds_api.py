"""A hold on a pickup waiting at its store, over the in-process API: the time the order was held
does not count against the customer's collect_by (Order.release), and a release retried moves it
once. The workflow is not running here: each test takes its order to `allocated` itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.builders import location_body, product_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        assert started.put("/inventory/MUG/store-sf", json={"on_hand": 50}).status_code == 200
        yield started


def ready_pickup(
    api: InProcessApi, external_id: str, sku: str = "MUG", store: str = "store-sf", quantity: int = 1
) -> tuple[dict[str, Any], str]:
    """A pickup order of `quantity` `sku` at `store`, allocated and its parcel ready: (order, shipment id)."""
    from tests.builders import order_body

    body = order_body(
        external_id=external_id, lines=[{"sku": sku, "quantity": quantity}],
        fulfillment={"type": "pickup", "location_id": store},
    )  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    (shipment,) = order["shipments"]
    ready = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ready")
    assert ready.status_code == 200, ready.text
    return ready.json(), shipment["id"]


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_released_pickup_keeps_the_time_it_was_held_and_is_handed_over(api: InProcessApi):
    order, shipment_id = ready_pickup(api, "web-pickup-held")
    deadline = moment(order["shipments"][0]["collect_by"])
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "fraud_review"})
    assert held.status_code == 200, held.text
    # Held, nothing is handed over (API.md: nothing is captured while it is held).
    assert_error(api.post(f"/orders/{order['id']}/shipments/{shipment_id}/deliver"), 409, "invalid_transition")

    released = api.post(f"/orders/{order['id']}/release", headers={"Idempotency-Key": "rel-1"}, json={})

    assert released.status_code == 200, released.text
    entries = api.get(f"/orders/{order['id']}/history").json()["items"]
    on_hold, release = (next(e for e in entries if e["type"] == kind) for kind in ("on_hold", "released"))
    moved = deadline + (moment(release["at"]) - moment(on_hold["at"]))
    (waiting,) = released.json()["shipments"]
    assert moment(waiting["collect_by"]) == moved > deadline
    assert moment(release["detail"]["collect_by"][shipment_id]) == moved
    again = api.post(f"/orders/{order['id']}/release", headers={"Idempotency-Key": "rel-1"}, json={})
    assert again.status_code == 200, again.text
    assert again.json()["shipments"][0]["collect_by"] == waiting["collect_by"]  # moved once
    collected = api.post(f"/orders/{order['id']}/shipments/{shipment_id}/deliver")
    assert collected.status_code == 200, collected.text
    assert collected.json()["status"] == "delivered"


def test_the_collect_by_promised_reads_in_the_history_as_on_the_shipment(api: InProcessApi):
    # API.md: times are RFC 3339 in UTC, and every other time the API shows ends in `Z`. The pickup's
    # deadline in its history entries (readied, moved by a release, expired) was written with
    # isoformat()'s `+00:00`, so a store's tool matching the history's promise to the shipment's
    # `collect_by` found two spellings of one moment.
    from datetime import timedelta

    from functions.bootstrap import Config, bootstrap

    order, shipment_id = ready_pickup(api, "web-pickup-spelled")
    path = f"/orders/{order['id']}"

    def entry(kind: str) -> dict[str, Any]:
        return next(e for e in reversed(api.get(f"{path}/history").json()["items"]) if e["type"] == kind)

    promised = order["shipments"][0]["collect_by"]
    assert promised.endswith("Z") and entry("shipment_ready_for_pickup")["detail"]["collect_by"] == promised
    assert api.post(f"{path}/hold", json={"reason": "customer_request"}).status_code == 200
    released = api.post(f"{path}/release", json={})
    assert released.status_code == 200, released.text
    moved = released.json()["shipments"][0]["collect_by"]
    assert entry("released")["detail"]["collect_by"] == {shipment_id: moved}
    later = moment(moved) + timedelta(seconds=1)

    assert bootstrap(Config.from_env(), clock=lambda: later).pickup_expiry.run().expired == [order["id"]]

    assert entry("pickup_expired")["detail"]["collect_by"] == moved
