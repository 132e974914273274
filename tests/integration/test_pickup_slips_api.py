"""A pickup parcel and the carrier plugins, over the in-process API with a real carrier's plugin
installed beside the built-ins: a pickup never travels, so no carrier books (or cancels) it; the
OMS makes its pick slip itself (core/pick_slips.py), whatever carrier plugins the deployment has.
The workflow's steps run through their Lambda handlers in this process, their container the API's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core import hookimpl
from core.models import Location, Order, ShipmentLine
from core.workflow_types import CarrierShipment
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import InProcessApi, in_process_api_with_labels

PICKUP = {"type": "pickup", "location_id": "store-sf"}


class UpsCarrier:
    """A real carrier's plugin written from the plugin guide: it books every parcel it is asked
    for (or, `pickups=False`, answers None for a pickup order) and cancels its own bookings."""

    def __init__(self, *, pickups: bool = True) -> None:
        self.pickups = pickups
        self.booked: list[str] = []  # the shipment ids it was asked to book
        self.cancelled: list[str] = []  # the booking keys it was asked to cancel

    @hookimpl
    def oms_carrier_create_shipment(
        self, order: Order, shipment_id: str, booking_key: str, origin: Location, lines: list[ShipmentLine]
    ) -> CarrierShipment | None:
        if order.fulfillment.type == "pickup" and not self.pickups:
            return None
        self.booked.append(shipment_id)
        return CarrierShipment(
            carrier="UPS", service="UPS Ground", tracking_number=f"1Z{len(self.booked):016d}", label=b"%PDF-1.4 ups"
        )

    @hookimpl
    def oms_carrier_cancel_shipment(self, carrier: str | None, booking_key: str) -> bool | None:
        if carrier != "UPS":
            return None
        self.cancelled.append(booking_key)
        return True


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        for store in ("store-sf", "store-oak"):
            body = location_body(name=store, type="store", ships=False, pickup=True)
            assert started.put(f"/locations/{store}", json=body).status_code == 201
            assert started.put(f"/inventory/MUG/{store}", json={"on_hand": 50}).status_code == 200
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 50}).status_code == 200
        yield started


@pytest.fixture
def deployment(monkeypatch) -> Iterator[Any]:
    """Installs a carrier plugin (`deployment(carrier, disabled=...)`) in a container the API function
    and the workflow's task functions share, the built-ins named in `disabled` turned off as
    OMS_DISABLED_PLUGINS does."""
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap
    from functions.workflow.step import container as step_container

    overriding: list[Any] = []

    def install(carrier: UpsCarrier, disabled: frozenset[str] = frozenset()) -> Any:
        built = bootstrap(Config.from_env()._replace(disabled_plugins=disabled))
        built.plugins.register(carrier, name="oms-ups")
        for warm in (container, step_container):
            override = warm.override(built)
            override.__enter__()
            overriding.append(override)
        return built

    yield install
    for override in overriding:
        override.__exit__(None, None, None)


def placed(api: InProcessApi, external_id: str, **overrides: Any) -> dict[str, Any]:
    """A new order of two MUGs (order_body's, with `overrides`) run to `allocated` by the workflow's
    task functions (AuthorizePayment, ReserveStock, CreateShipments), as the state machine runs them."""
    from functions.workflow import authorize_payment, create_shipments, reserve_stock
    from tests.integration.test_handlers import Context

    response = api.post("/orders", json=order_body(external_id=external_id, lines=[{"sku": "MUG", "quantity": 2}],
                                                   **overrides))  # fmt: skip
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    for task in (authorize_payment, reserve_stock, create_shipments):
        task.lambda_handler({"order_id": order_id, "attempt": 0}, Context())
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def history_types(api: InProcessApi, order_id: str) -> list[str]:
    return [entry["type"] for entry in api.get(f"/orders/{order_id}/history").json()["items"]]


def test_a_real_carrier_books_no_label_for_a_pickup_and_is_not_asked_to_cancel_one(api, deployment):
    ups = UpsCarrier()
    built = deployment(ups)

    order = placed(api, "web-slip-1", fulfillment=PICKUP)
    (shipment,) = order["shipments"]

    assert ups.booked == []  # no UPS label bought (and printed at the store) for a shelf
    assert (shipment["carrier"], shipment["service"]) == ("OMS", "Store pickup")
    assert shipment["tracking_number"].startswith("PU") and shipment["label_url"]
    cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer changed their mind"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert ups.cancelled == []
    assert not any(entry.startswith("carrier_booking") for entry in history_types(api, order["id"]))
    assert not built.order_repository.get(order["id"], consistent=True).owes_carrier_work()


def test_a_parcel_that_travels_is_still_booked_with_the_carrier_and_cancelled_with_it(api, deployment):
    ups = UpsCarrier()
    deployment(ups)

    order = placed(api, "web-slip-ship")
    (shipment,) = order["shipments"]

    assert ups.booked == [shipment["id"]] and shipment["carrier"] == "UPS"
    assert api.post(f"/orders/{order['id']}/cancel", json={"reason": "duplicate"}).status_code == 200
    assert len(ups.cancelled) == 1 and "carrier_booking_cancelled" in history_types(api, order["id"])


def test_a_pickup_is_readied_and_collected_when_the_only_carrier_answers_none_for_pickups(api, deployment):
    ups = UpsCarrier(pickups=False)
    deployment(ups, disabled=frozenset({"flat_rate_carrier"}))

    order = placed(api, "web-slip-2", fulfillment=PICKUP)  # no answer used to park it
    (shipment,) = order["shipments"]
    path = f"/orders/{order['id']}/shipments/{shipment['id']}"

    assert shipment["service"] == "Store pickup" and ups.booked == []
    ready = api.post(f"{path}/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["shipments"][0]["status"] == "ready_for_pickup"
    collected = api.post(f"{path}/deliver")
    assert collected.status_code == 200, collected.text
    assert collected.json()["status"] == "delivered"
    assert ups.booked == [] and ups.cancelled == []


def test_a_rejected_pickup_gives_up_its_slip_without_asking_a_carrier(api, deployment):
    ups = UpsCarrier(pickups=False)
    built = deployment(ups, disabled=frozenset({"flat_rate_carrier"}))
    order = placed(api, "web-slip-3", fulfillment=PICKUP)
    (slip,) = order["shipments"]

    rejected = api.post(f"/orders/{order['id']}/shipments/{slip['id']}/reject", json={"reason": "damaged stock"})

    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["shipments"] == []  # sent back to be sourced (its store excluded)
    assert ups.booked == [] and ups.cancelled == []
    types = history_types(api, order["id"])
    assert "shipment_rejected" in types and not any(t.startswith("carrier_booking") for t in types)
    assert not built.order_repository.get(order["id"], consistent=True).owes_carrier_work()
