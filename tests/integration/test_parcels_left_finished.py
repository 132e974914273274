"""A ship or a collect that died after its order record, before its units left on_hand, with no
client sending it again (it reads the order, sees it shipped): the Orders stream's record of the
hand-over, handed to the events function as its mapping hands it (each batch twice: a redelivery),
makes the units leave by the system alone, once; the client's repeat landing inside the events
function's stock step, or the events function's inside the repeat's, moves them once too.
In-process on moto, the workflow's steps run here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, unique
from tests.integration.import_support import context
from tests.integration.in_process import InProcessApi, TableStream, in_process_api_with_events, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_events() as started:
        yield started


@pytest.fixture(autouse=True)
def events_calls_granted(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The events function's calls here are read against what the template grants it (the
    Inventory table's reservations and their writes among them); a call inside it is its own, not
    the API request's it ran within."""
    from tests.integration.conftest import ENV_BY_TABLE
    from tests.template_iam import handlers_checked

    tables = {logical: os.environ[variable] for logical, variable in ENV_BY_TABLE.items()}
    names = {
        "event_bus_names": {"EventBus": "test-events"},
        "queue_urls": {"WebhookDeliveryQueue": os.environ["WEBHOOK_QUEUE_URL"]},
    }
    with handlers_checked(monkeypatch, {"EventsFunction": "functions.events.app"}, tables, **names):
        yield


def actions():
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).actions


def stream_read(stream: TableStream) -> list[dict[str, Any]]:
    """The events function handed the Orders records written since the last read, twice (the stream
    delivering the batch again)."""
    from functions.events.app import lambda_handler

    records = stream.new_records()
    for _ in range(2):
        assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}
    return records


class Stock:
    """`on_hand` units of a new product at a new location (a warehouse, or a pickup store)."""

    def __init__(self, api: InProcessApi, on_hand: int = 5, **location: Any) -> None:
        catalog = Catalog(api)
        self.api = api
        self.location = catalog.location(**location)
        self.sku = catalog.product("10.00", weight_grams=300)
        self.on_hand = on_hand
        catalog.stock(self.sku, self.location, on_hand)

    def level(self) -> tuple[int, int]:
        """(on_hand, reserved) at the location."""
        found = self.api.get(f"/inventory/{self.sku}").json()["locations"]
        level = next(loc for loc in found if loc["location_id"] == self.location)
        return level["on_hand"], level["reserved"]

    def allocated(self, quantity: int, **fields: Any) -> tuple[str, str]:
        body = order_body((self.sku, quantity), channel=f"web-{uuid.uuid4().hex[:8]}", **fields)
        placed = self.api.post("/orders", json=body)
        assert placed.status_code == 201, placed.text
        order = run_to_allocated(self.api, placed.json()["id"])
        (parcel,) = order["shipments"]
        assert parcel["location_id"] == self.location
        return order["id"], parcel["id"]


def dying_after_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API function timing out after the order recorded the hand-over, before its units left."""
    from core.fulfillment import OrderActions

    def dies(self: OrderActions, *args: Any, **kwargs: Any) -> None:
        raise TimeoutError("the API function timed out after recording the hand-over")

    monkeypatch.setattr(OrderActions, "_units_leave", dies)


def ship_that_dies(order_id: str, parcel: str) -> TableStream:
    """The Orders stream from now, then a ship of `parcel` that dies after recording it."""
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    with pytest.MonkeyPatch.context() as patches, pytest.raises(TimeoutError):
        dying_after_the_record(patches)
        actions().ship(order_id, parcel, None, actor="key_warehouse")
    return stream


def collect_that_dies(order_id: str, parcel: str) -> TableStream:
    """The Orders stream from now, then a collect of `parcel` that dies after recording it."""
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    with pytest.MonkeyPatch.context() as patches, pytest.raises(TimeoutError):
        dying_after_the_record(patches)
        actions().deliver_or_collect(order_id, parcel, actor="key_store")
    return stream


def test_a_ship_that_died_after_its_record_has_its_units_leave_by_the_stream_alone(api: InProcessApi):
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    stream = ship_that_dies(order_id, parcel)
    shipped = api.get(f"/orders/{order_id}").json()
    assert shipped["shipments"][0]["status"] == "shipped"
    assert stock.level() == (stock.on_hand, 2)  # left, not counted out: nobody sends the ship again

    stream_read(stream)

    assert stock.level() == (stock.on_hand - 2, 0)
    assert api.get(f"/orders/{order_id}").json()["version"] == shipped["version"]  # the order is not written
    assert api.post(f"/orders/{order_id}/shipments/{parcel}/ship", json={}).status_code == 200  # sent again late
    assert stock.level() == (stock.on_hand - 2, 0)


def test_a_collect_that_died_after_its_record_has_its_units_leave_by_the_stream_alone(api: InProcessApi):
    stock = Stock(api, name="Store", type="store", ships=False, pickup=True)
    order_id, parcel = stock.allocated(3, fulfillment={"type": "pickup", "location_id": stock.location})
    assert api.post(f"/orders/{order_id}/shipments/{parcel}/ready").status_code == 200
    stream = collect_that_dies(order_id, parcel)
    assert api.get(f"/orders/{order_id}").json()["status"] == "delivered"
    assert stock.level() == (stock.on_hand, 3)

    stream_read(stream)

    assert stock.level() == (stock.on_hand - 3, 0)


def test_a_confirmations_batch_that_died_at_its_last_ships_stock_step_has_its_units_leave_by_the_stream(
    api: InProcessApi,
):
    from core.fulfillment import OrderActions

    stock = Stock(api)
    (first, first_parcel), (last, last_parcel) = stock.allocated(1), stock.allocated(2)
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    leaving = OrderActions._units_leave
    left: list[str] = []

    def dies_at_the_last(self: OrderActions, order: Any, shipment_id: str) -> None:
        if shipment_id == last_parcel:
            raise TimeoutError("the API function timed out after recording the batch's last ship")
        left.append(shipment_id)
        leaving(self, order, shipment_id)

    items = [
        {"order_id": first, "shipment_id": first_parcel, "action": "ship"},
        {"order_id": last, "shipment_id": last_parcel, "action": "ship"},
    ]
    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(OrderActions, "_units_leave", dies_at_the_last)
        died = api.post("/shipments/confirmations", json={"items": items})
    assert died.status_code == 500 and left == [first_parcel]
    assert [api.get(f"/orders/{o}").json()["status"] for o in (first, last)] == ["shipped", "shipped"]
    assert stock.level() == (stock.on_hand - 1, 2)

    stream_read(stream)

    assert stock.level() == (stock.on_hand - 3, 0)


def test_the_stream_finds_nothing_to_finish_after_a_ship_that_did_not_die_in_one_read(api: InProcessApi):
    from botocore.client import BaseClient

    stock = Stock(api)
    order_id, parcel = stock.allocated(1)
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    assert api.post(f"/orders/{order_id}/shipments/{parcel}/ship", json={}).status_code == 200
    assert stock.level() == (stock.on_hand - 1, 0)
    inventory = os.environ["INVENTORY_TABLE"]
    calls: list[str] = []
    calling = BaseClient._make_api_call

    def counted(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if params.get("TableName") == inventory or inventory in params.get("RequestItems", {}):
            calls.append(operation)
        return calling(client, operation, params)

    with pytest.MonkeyPatch.context() as patches:  # undone before the fixtures' own patches of it
        patches.setattr(BaseClient, "_make_api_call", counted)
        records = stream_read(stream)

    assert len(records) > 1  # the capture's request, the ship (and what follows it): one hands a parcel over
    assert calls == ["BatchGetItem", "BatchGetItem"]  # one read of its reservation per delivery, no write
    assert stock.level() == (stock.on_hand - 1, 0)


def interleaved(monkeypatch: pytest.MonkeyPatch, first_call: Callable[[], Any]) -> list[int]:
    """DynamoInventory.ship running `first_call` (the other party, whole) before the first ship it
    makes: the other party lands between this one's read of the reservation and its write."""
    from functions.adapters.dynamodb import DynamoInventory

    shipping = DynamoInventory.ship
    ran: list[int] = []

    def other_party_first(self: DynamoInventory, sku: str, location_id: str, key: str, **handed: Any) -> None:
        if not ran:
            ran.append(1)
            monkeypatch.setattr(DynamoInventory, "ship", shipping)
            first_call()
        shipping(self, sku, location_id, key, **handed)

    monkeypatch.setattr(DynamoInventory, "ship", other_party_first)
    return ran


@pytest.mark.parametrize("inside", ["the stream inside the repeat", "the repeat inside the stream"])
def test_the_ship_sent_again_and_the_streams_finish_at_once_move_the_units_once(api: InProcessApi, inside: str):
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    stream = ship_that_dies(order_id, parcel)
    records = stream.new_records()
    answers: list[int] = []

    def repeat() -> None:
        answers.append(api.post(f"/orders/{order_id}/shipments/{parcel}/ship", json={}).status_code)

    def finish() -> None:
        from functions.events.app import lambda_handler

        assert lambda_handler({"Records": records}, context("EventsFunction")) == {"batchItemFailures": []}

    with pytest.MonkeyPatch.context() as patches:
        if inside == "the stream inside the repeat":
            ran = interleaved(patches, finish)
            repeat()
        else:
            ran = interleaved(patches, repeat)
            finish()

    assert ran == [1] and answers == [200]
    assert stock.level() == (stock.on_hand - 2, 0)
    finish()  # the record delivered again
    assert stock.level() == (stock.on_hand - 2, 0)


def test_a_batch_whose_finish_fails_is_retried_from_that_record_publishing_its_events_once(api: InProcessApi):
    """The finish of the hand-over's record fails (the Inventory table throttled): that record and
    those after it are failed unprocessed, with none of its events published, and the retry from it
    moves the units once and publishes each event once; the records before it are not handed again."""
    from botocore.exceptions import ClientError

    from core.cancellation import parcels_left
    from core.webhooks import EventDispatcher
    from functions.adapters.dynamodb import DynamoInventory
    from functions.events.app import lambda_handler, order_document

    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    stream = ship_that_dies(order_id, parcel)
    records = stream.new_records()
    images = [r["dynamodb"] for r in records]
    (handed,) = [n for n, i in enumerate(images)
                 if parcels_left(order_document(i.get("OldImage")), order_document(i["NewImage"]))]  # fmt: skip
    published: list[str] = []
    dispatching = EventDispatcher.dispatch
    reading = DynamoInventory.reservations
    throttled: list[int] = []

    def recorded(self: EventDispatcher, events: list[Any], *args: Any, **kwargs: Any) -> Any:
        published.extend(event.id for event in events)
        return dispatching(self, events, *args, **kwargs)

    def throttled_once(self: DynamoInventory, *args: Any, **kwargs: Any) -> Any:
        if not throttled:
            throttled.append(1)
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"}}
            raise ClientError(error, "BatchGetItem")
        return reading(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(EventDispatcher, "dispatch", recorded)
        patches.setattr(DynamoInventory, "reservations", throttled_once)
        failed = lambda_handler({"Records": records}, context("EventsFunction"))["batchItemFailures"]
        assert throttled == [1] and failed
        first = next(n for n, r in enumerate(records) if r["dynamodb"]["SequenceNumber"] == failed[0]["itemIdentifier"])
        assert first == handed and len(failed) == len(records) - first  # those after it unprocessed
        assert stock.level() == (stock.on_hand, 2)  # nothing moved
        before = list(published)
        answer = lambda_handler({"Records": records[first:]}, context("EventsFunction"))
        assert answer == {"batchItemFailures": []}

    assert stock.level() == (stock.on_hand - 2, 0)
    assert len(published) == len(set(published))  # no event published twice
    assert set(before) <= set(published) and len(published) > len(before)


def test_a_parcel_rejected_between_a_ship_that_died_and_its_record_takes_nothing_of_another_parcel(api: InProcessApi):
    """A split order: its parcel at the first warehouse shipped and its stock step died; the second
    warehouse then rejects its own parcel, sourced again in the reject elsewhere than the first
    (which has a parcel of the order: its units there are reserved under the same line keys) though
    the first now has the sku too. The stream's record of the ship then takes the shipped parcel's
    units there, and nothing the replacement parcel holds."""
    catalog = Catalog(api)
    first, second, third = (catalog.location() for _ in range(3))
    shipped_sku, rejected_sku = catalog.product("10.00", weight_grams=300), catalog.product("12.00", weight_grams=300)
    catalog.stock(shipped_sku, first, 5)
    catalog.stock(rejected_sku, second, 5)
    body = order_body((shipped_sku, 2), (rejected_sku, 1), channel=f"web-{uuid.uuid4().hex[:8]}")
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    parcels = {s["location_id"]: s["id"] for s in order["shipments"]}
    assert sorted(parcels) == sorted([first, second])
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    with pytest.MonkeyPatch.context() as patches, pytest.raises(TimeoutError):
        dying_after_the_record(patches)
        actions().ship(order["id"], parcels[first], None, actor="key_warehouse")
    catalog.stock(rejected_sku, first, 5)
    catalog.stock(rejected_sku, third, 5)

    rejected = api.post(f"/orders/{order['id']}/shipments/{parcels[second]}/reject", json={"reason": "damaged"})
    assert rejected.status_code == 200, rejected.text
    assert {s["location_id"] for s in rejected.json()["shipments"] if s["status"] == "pending"} == {third}
    stream_read(stream)

    def level(sku: str, location_id: str) -> tuple[int, int]:
        found = api.get(f"/inventory/{sku}").json()["locations"]
        return next((loc["on_hand"], loc["reserved"]) for loc in found if loc["location_id"] == location_id)

    assert level(shipped_sku, first) == (3, 0)
    assert level(rejected_sku, first) == (5, 0)
    assert level(rejected_sku, second) == (5, 0)
    assert level(rejected_sku, third) == (5, 1)


@pytest.mark.parametrize("late", ["the stream's record", "the client's ship sent again"])
def test_a_stock_take_between_a_ship_that_died_and_its_finish_is_not_taken_from_twice(api: InProcessApi, late: str):
    """The shelf counted after the parcel left (3 of 5, the 2 shipped gone) while its reservation
    still held them: the count already took the parcel's units out, so the finish (the stream's, or
    the client's ship sent again) only gives the reservation up, on_hand left as counted."""
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    stream = ship_that_dies(order_id, parcel)
    counted = api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": stock.on_hand - 2})
    assert counted.status_code == 200, counted.text
    assert stock.level() == (stock.on_hand - 2, 2)

    if late == "the client's ship sent again":
        assert api.post(f"/orders/{order_id}/shipments/{parcel}/ship", json={}).status_code == 200
        assert stock.level() == (stock.on_hand - 2, 0)
    stream_read(stream)

    assert stock.level() == (stock.on_hand - 2, 0)
    found = api.get(f"/inventory/{stock.sku}").json()["locations"]
    assert next(loc["available"] for loc in found if loc["location_id"] == stock.location) == stock.on_hand - 2


def test_a_stock_take_between_a_collect_that_died_and_its_finish_is_not_taken_from_twice(api: InProcessApi):
    """A pickup's hand-over time is its collect's (delivered_at: it never ships)."""
    stock = Stock(api, name="Store", type="store", ships=False, pickup=True)
    order_id, parcel = stock.allocated(2, fulfillment={"type": "pickup", "location_id": stock.location})
    assert api.post(f"/orders/{order_id}/shipments/{parcel}/ready").status_code == 200
    stream = collect_that_dies(order_id, parcel)
    counted = api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": stock.on_hand - 2})
    assert counted.status_code == 200, counted.text

    stream_read(stream)

    assert stock.level() == (stock.on_hand - 2, 0)


def test_a_stock_take_before_the_hand_over_still_has_the_parcels_units_leave(api: InProcessApi):
    """A count taken while the parcel was still on the shelf (before its ship) counted its units:
    the stream's finish of the ship that died takes them out, as with no count at all."""
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    counted = api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": stock.on_hand + 1})
    assert counted.status_code == 200, counted.text
    stream = ship_that_dies(order_id, parcel)

    stream_read(stream)

    assert stock.level() == (stock.on_hand + 1 - 2, 0)


def test_a_stock_take_sent_again_under_its_key_after_the_hand_over_still_has_the_parcels_units_leave(api: InProcessApi):
    """The count before the ship (the parcel's 2 on the shelf), its answer lost, sent again under its
    Idempotency-Key after the hand-over: the same request, answered as the first was. Counted again,
    it took the shelf for counted without the parcel (its time after the ship's): the finish left
    on_hand at 6 with 4 units there."""
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    count, headers = f"/inventory/{stock.sku}/{stock.location}", {"Idempotency-Key": unique("count")}
    counted = api.put(count, json={"on_hand": stock.on_hand + 1}, headers=headers)
    assert counted.status_code == 200, counted.text
    stream = ship_that_dies(order_id, parcel)

    again = api.put(count, json={"on_hand": stock.on_hand + 1}, headers=headers)
    stream_read(stream)

    assert stock.level() == (stock.on_hand + 1 - 2, 0)
    assert (again.status_code, again.json()) == (200, counted.json())
    assert_error(api.put(count, json={"on_hand": stock.on_hand}, headers=headers), 409, "idempotency_key_reused")


def test_a_stock_take_whose_answer_was_lost_sent_again_under_its_key_after_the_hand_over_has_the_parcels_units_leave(
    api: InProcessApi,
):
    """The count before the ship written, and the API function timing out before its answer and its
    Idempotency-Key's record were saved; the ship after; the count sent again under its key once
    that record was gone: the key recorded with the count answers it as stored. Counted again, its
    counted_at after the ship's took the shelf for counted without the parcel: on_hand stayed 6."""
    from tests.integration.test_stock_take_api import counted_with_its_answer_lost

    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    count, headers = f"/inventory/{stock.sku}/{stock.location}", {"Idempotency-Key": unique("count")}
    counted_with_its_answer_lost(api, count, stock.on_hand + 1, headers["Idempotency-Key"])
    assert stock.level() == (stock.on_hand + 1, 2)
    stream = ship_that_dies(order_id, parcel)

    again = api.put(count, json={"on_hand": stock.on_hand + 1}, headers=headers)
    stream_read(stream)

    assert (again.status_code, again.json()["on_hand"], again.json()["reserved"]) == (200, stock.on_hand + 1, 2)
    assert stock.level() == (stock.on_hand + 1 - 2, 0)


def test_a_wave_ship_stating_its_hand_over_that_died_after_its_record_leaves_a_shelf_counted_since_as_counted(
    api: InProcessApi,
):
    """The parcel left, the shelf was counted without it (3 of 5, 2 of them reserved), then the
    wave's ship stating when it left recorded the hand-over and died before its units left: the
    Orders stream's record finishes it on that time, so the count stands (3, not 1)."""
    stock = Stock(api)
    order_id, parcel = stock.allocated(2)
    left = datetime.now(UTC)
    assert api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": 3}).status_code == 200
    stream = TableStream(os.environ["ORDERS_TABLE"], from_now=True)
    with pytest.MonkeyPatch.context() as patches, pytest.raises(TimeoutError):
        dying_after_the_record(patches)
        actions().ship(order_id, parcel, None, actor="key_wms", shipped_at=left)
    assert stock.level() == (3, 2)

    stream_read(stream)

    assert stock.level() == (3, 0)
