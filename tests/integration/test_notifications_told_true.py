"""What a customer is told stays true of their order, in-process on moto: orders placed and changed
over HTTP (the workflow's steps, the jeopardy scan and the reconciler invoked here, each at a clock
the test moves), the Orders table's stream records as moto recorded them handed to the events
function, and the notifier plugins' messages read back."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import hookimpl
from core.notifications import Notification
from functions.api.dependencies import container as api_container
from functions.bootstrap import Config, bootstrap
from tests.builders import location_body, order_body, product_body
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_events, run_to_allocated
from tests.integration.test_jeopardy_hold_clock import scan_at
from tests.unit.world import Clock

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_events() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        assert started.put("/inventory/MUG/store-sf", json={"on_hand": 100}).status_code == 200
        yield started


class Mailer:
    """A notifier plugin: what it was handed, in order."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    @hookimpl
    def oms_notify(self, notification: Notification) -> list[str] | None:
        self.sent.append(notification)
        return ["email"]


@pytest.fixture
def mailer(api: InProcessApi) -> Iterator[Mailer]:
    """A Mailer plugged into the events function's container."""
    from functions.events.app import container

    plugin = Mailer()
    name = f"mailer_{id(plugin)}"
    container().plugins.register(plugin, name=name)
    try:
        yield plugin
    finally:
        container().plugins.unregister(name=name)


def consume(stream: TableStream) -> None:
    """The events function handed the Orders stream's records written since it last read them."""
    from functions.events.app import lambda_handler

    records = stream.new_records()
    assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}


def pickup_ready(api: InProcessApi) -> tuple[str, dict[str, Any]]:
    """A pickup order of one MUG at store-sf, allocated and its parcel readied: (order id, its parcel)."""
    body = order_body(
        external_id=f"told-true-{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}],
        fulfillment={"type": "pickup", "location_id": "store-sf"},
    )  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    (parcel,) = order["shipments"]
    ready = api.post(f"/orders/{order['id']}/shipments/{parcel['id']}/ready")
    assert ready.status_code == 200, ready.text
    return order["id"], ready.json()["shipments"][0]


def test_a_pickup_its_customer_did_not_collect_is_not_told_it_is_delayed(api, mailer):
    """Ready at the store, never collected, and its expiry did not cancel it (the reconciler's pickup
    expiry waits while the payment plugin is down): 48 hours past collect_by the scan marks it late
    (the alarm is for the merchant). Its customer was told it is ready and until when; telling them
    now that it "is taking longer than we planned" is false, and says not to come for it."""
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    clock = Clock(datetime.now(UTC))
    with api_container.override(bootstrap(Config.from_env(), clock=clock)):
        order_id, parcel = pickup_ready(api)
        clock.now = datetime.fromisoformat(parcel["collect_by"]) + timedelta(hours=48, minutes=1)
        assert scan_at(clock)["marked"] == [order_id]
    consume(stream)

    assert [note.kind.value for note in mailer.sent] == ["ready_for_pickup"]
    told = api.get(f"/orders/{order_id}/notifications").json()["items"]
    assert [note["kind"] for note in told] == ["ready_for_pickup"]
