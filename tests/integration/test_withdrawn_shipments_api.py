"""A location confirming a parcel that a change of its order withdrew meanwhile (a stock take that
counted fewer units than the parcel held, an edit, another location's reject: the order went back
to be sourced), over the in-process API: answered 409 naming what withdrew it, as a ship in flight
when that change lands is answered, never 404 as if the id were wrong. The parcel may be with the
carrier already: a `not_found` tells the warehouse to check its ids, where it has a person to call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, put_network, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def allocated(api: InProcessApi, *, store: bool = False, **overrides: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """A one-unit order run to `allocated` from the west warehouse (or the pickup store), the east
    one holding a unit too: the network and the order."""
    network = put_network(api, store=store)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["store" if store else "west"], 1)
    catalog.stock(sku, network["east"], 1)
    if store:
        overrides["fulfillment"] = {"type": "pickup", "location_id": network["store"]}
    response = api.post("/orders", json=order_body((sku, 1), **overrides))
    assert response.status_code == 201, response.text
    order = run_to_allocated(api, response.json()["id"])
    return network | {"sku": sku}, order


def counted_short(api: InProcessApi) -> tuple[dict[str, Any], str]:
    """An allocated order whose parcel a stock take at its location withdrew (it counted none of the
    unit the parcel held: the warehouse had handed it to the carrier, and confirms that after): the
    order, as placed, and the withdrawn shipment's id."""
    network, order = allocated(api)
    (shipment,) = order["shipments"]
    counted = api.put(f"/inventory/{network['sku']}/{shipment['location_id']}", json={"on_hand": 0})
    assert counted.status_code == 200, counted.text
    assert api.get(f"/orders/{order['id']}").json()["shipments"] == []
    return order, shipment["id"]


def assert_withdrawn(response: Any, shipment_id: str, by: str) -> None:
    error = assert_error(response, 409, "invalid_transition")
    assert f"shipment {shipment_id} was withdrawn" in error["message"], error
    assert error["details"] == [
        {"shipment_id": shipment_id, "location_id": error["details"][0]["location_id"], "withdrawn_by": by}
    ], error


@pytest.mark.parametrize("action", ["ship", "deliver"])
def test_a_confirmation_of_a_parcel_a_stock_take_withdrew_is_409_naming_it_and_changes_nothing(api, action):
    order, shipment_id = counted_short(api)
    before = api.get(f"/orders/{order['id']}/history").json()["items"]

    path = f"/orders/{order['id']}/shipments/{shipment_id}/{action}"
    response = api.post(path, json={} if action == "ship" else None)

    assert_withdrawn(response, shipment_id, "shipment_rejected")
    assert "a stock take at its location counted fewer units than it held" in response.json()["error"]["message"]
    assert api.get(f"/orders/{order['id']}/history").json()["items"] == before


def test_a_ship_of_a_parcel_an_edit_withdrew_is_409_in_a_batch_too(api):
    _, order = allocated(api)
    (shipment,) = order["shipments"]
    if_match = {"If-Match": str(order["version"])}
    edited = api.request("PATCH", f"/orders/{order['id']}", json={"shipping_method": "express"}, headers=if_match)
    assert edited.status_code == 200 and edited.json()["shipments"] == [], edited.text

    single = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={"tracking_number": "1ZLATE01"})
    batch = api.post(
        "/shipments/confirmations",
        json={"items": [{"order_id": order["id"], "shipment_id": shipment["id"], "action": "ship"}]},
    )

    assert_withdrawn(single, shipment["id"], "edited")
    assert batch.status_code == 200, batch.text
    (item,) = batch.json()["items"]
    assert (item["error"]["code"], item["status"], item["retry"]) == ("invalid_transition", None, False)
    assert item["error"]["details"] == single.json()["error"]["details"]


def test_a_ship_of_a_parcel_another_locations_reject_withdrew_is_409_naming_that_reject(api):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    for location in ("west", "east"):
        catalog.stock(sku, network[location], 1)
    order = run_to_allocated(api, api.post("/orders", json=order_body((sku, 2))).json()["id"])
    kept, rejected = order["shipments"]
    base = f"/orders/{order['id']}/shipments"
    assert api.post(f"{base}/{rejected['id']}/reject", json={"reason": "water damage"}).status_code == 200

    response = api.post(f"{base}/{kept['id']}/ship", json={})

    assert_withdrawn(response, kept["id"], "shipment_rejected")
    assert response.json()["error"]["details"][0]["location_id"] == kept["location_id"]
    message = response.json()["error"]["message"]
    assert f"another parcel of the order, {rejected['id']}, was rejected" in message and "water damage" in message


def test_readying_a_pickup_an_edit_withdrew_is_409(api):
    network, order = allocated(api, store=True)
    (shipment,) = order["shipments"]
    # An edit of its lines: one of its address alone leaves a pickup's parcel at its store.
    Catalog(api).stock(network["sku"], network["store"], 2)
    lines = [{"sku": network["sku"], "quantity": 2}]
    if_match = {"If-Match": str(order["version"])}
    edited = api.request("PATCH", f"/orders/{order['id']}", json={"lines": lines}, headers=if_match)
    assert edited.status_code == 200 and edited.json()["shipments"] == [], edited.text

    assert_withdrawn(api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ready"), shipment["id"], "edited")


def test_a_shipment_the_order_never_had_and_another_channels_withdrawn_parcel_stay_404(api):
    order, shipment_id = counted_short(api)
    never = "shp_" + "a" * 24
    assert_error(api.post(f"/orders/{order['id']}/shipments/{never}/ship", json={}), 404, "not_found")
    other = issue(api, "fulfillment:write", channel=unique("shop"))
    # Another channel's order answers as a missing one, whatever its history holds: ids are not probed.
    assert_error(api.post(f"/orders/{order['id']}/shipments/{shipment_id}/ship", key=other, json={}), 404, "not_found")
