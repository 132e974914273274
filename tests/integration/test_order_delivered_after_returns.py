"""`order.delivered` for an order whose units came back before its last parcel arrived, in-process on
moto: a split order, one parcel shipped, delivered and returned over HTTP, the other then shipped and
delivered; the Orders table's stream records as moto recorded them, read as the events function reads
them (functions.events.app.order_document), give the events a receiving system gets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.client import Catalog, order_body, put_network
from tests.integration.in_process import (
    InProcessApi,
    TableStream,
    in_process_api_with_labels,
    returns_run_inline,
    run_to_allocated,
)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started, returns_run_inline():
        yield started


def event_types(stream: TableStream) -> list[str]:
    from core.domain_events import order_events
    from functions.events.app import order_document

    types = []
    for record in stream.new_records():
        change = record["dynamodb"]
        new = order_document(change.get("NewImage"))
        if new is not None:
            types += [event.type.value for event in order_events(order_document(change.get("OldImage")), new)]
    return types


def test_the_last_parcel_arriving_after_a_return_is_order_delivered(api: InProcessApi):
    network = put_network(api)
    catalog = Catalog(api)
    mug, pen = catalog.product("12.00"), catalog.product("5.00")
    catalog.stock(mug, network["west"], 5)
    catalog.stock(pen, network["east"], 5)
    order = run_to_allocated(api, api.post("/orders", json=order_body((mug, 1), (pen, 1))).json()["id"])
    parcel = {shipment["location_id"]: shipment["id"] for shipment in order["shipments"]}
    west, east = (f"/orders/{order['id']}/shipments/{parcel[network[name]]}" for name in ("west", "east"))
    for action in ("ship", "deliver"):
        assert api.post(f"{west}/{action}", json={}).status_code == 200
    rma = api.post(f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]})
    receipt = {"location_id": network["west"], "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    assert api.post(f"/returns/{rma.json()['id']}/receive", json=receipt).status_code == 200
    assert api.post(f"{east}/ship", json={}).status_code == 200
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)

    delivered = api.post(f"{east}/deliver", json={})

    assert delivered.status_code == 200, delivered.text
    # The status stays what its returns say; the order arrived all the same, and says so once.
    assert delivered.json()["status"] == "partially_returned"
    assert {s["status"] for s in delivered.json()["shipments"]} == {"delivered"}
    assert sorted(event_types(stream)) == ["order.delivered", "shipment.delivered"]
