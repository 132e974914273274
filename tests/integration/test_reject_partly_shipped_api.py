"""POST /orders/{id}/shipments/{shipment_id}/reject on a partially_shipped order, in-process on moto:
the pending parcel's units are sourced again at another location (a new parcel), or cancelled
`out_of_stock` where none has them, the shipped parcel and the money it captured left as they are."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from functions.adapters.dynamodb import DynamoOrders
from tests.builders import location_body, product_body
from tests.e2e.client import unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_cancel_units_api import allocated, ship


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        # The order ships to San Francisco: Reno (west) is nearest, then Seattle (north), Newark (east), Miami.
        west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
        north = location_body(name="North warehouse", latitude=47.61, longitude=-122.33)
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/locations/wh-west", json=west).status_code == 201
        assert started.put("/locations/wh-north", json=north).status_code == 201
        south = location_body(name="South warehouse", latitude=25.76, longitude=-80.19)
        assert started.put("/locations/wh-south", json=south).status_code == 201
        yield started


def stocked(api: InProcessApi, sku: str, price: str, at: dict[str, int], **product: Any) -> str:
    assert api.put(f"/products/{sku}", json=product_body(price, **product)).status_code == 201
    for location_id, on_hand in at.items():
        assert api.put(f"/inventory/{sku}/{location_id}", json={"on_hand": on_hand}).status_code == 200
    return sku


def partly_shipped(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    """Placed, taken to `allocated` by the workflow's own steps, and its parcel from wh-west shipped."""
    order = allocated(api, *lines)
    assert len(order["shipments"]) == 2, order
    shipped = ship(api, order, "wh-west")
    assert shipped["status"] == "partially_shipped", shipped
    return shipped


def parcel(order: dict[str, Any], location_id: str) -> dict[str, Any]:
    return next(s for s in order["shipments"] if s["location_id"] == location_id)


def reject(api: InProcessApi, order: dict[str, Any], shipment_id: str):
    return api.post(f"/orders/{order['id']}/shipments/{shipment_id}/reject", json={"reason": "stock damaged"})


def stock(api: InProcessApi, sku: str, location_id: str) -> tuple[int, int]:
    level = next(loc for loc in api.get(f"/inventory/{sku}").json()["locations"] if loc["location_id"] == location_id)
    assert level["available"] >= 0 and level["on_hand"] >= level["reserved"] >= 0, level
    return level["on_hand"], level["reserved"]


def amount(money: dict[str, str]) -> Decimal:
    return Decimal(money["amount"])


def settled(order: dict[str, Any]) -> Decimal:
    payment = order["payment"]
    return amount(payment["captured"]) - amount(payment["refunded"])


def history(api: InProcessApi, order_id: str) -> list[dict[str, Any]]:
    return api.get(f"/orders/{order_id}/history").json()["items"]


def test_a_rejected_parcel_of_a_partly_shipped_order_is_sourced_again_at_another_location_and_ships(api):
    mug = stocked(api, "MUG1", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP1", "7.77", {"wh-north": 10, "wh-east": 10})
    order = partly_shipped(api, (mug, 2), (cap, 3))
    rejected = parcel(order, "wh-north")

    answer = reject(api, order, rejected["id"])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["status"] == "partially_shipped"
    assert [s["location_id"] for s in done["shipments"]] == ["wh-west", "wh-east"]
    again = parcel(done, "wh-east")
    assert again["id"] != rejected["id"] and again["status"] == "pending"
    assert again["lines"] == rejected["lines"] and again["tracking_number"] and again["label_url"]
    assert unsigned(parcel(done, "wh-west")) == unsigned(parcel(order, "wh-west"))
    assert stock(api, cap, "wh-north") == (10, 0) and stock(api, cap, "wh-east") == (10, 3)
    entry = next(e for e in reversed(history(api, order["id"])) if e["type"] == "shipment_rejected")
    assert entry["detail"]["reason"] == "stock damaged" and entry["detail"]["location_id"] == "wh-north"
    assert entry["from_status"] is None  # it stays partially_shipped
    # Rejected again (the location's retry): the order as it is, nothing sourced twice.
    repeated = reject(api, order, rejected["id"])
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["version"] == done["version"]
    assert [unsigned(s) for s in repeated.json()["shipments"]] == [unsigned(s) for s in done["shipments"]]
    assert stock(api, cap, "wh-east") == (10, 3)

    final = ship(api, done, "wh-east")

    assert final["status"] == "shipped"
    assert amount(final["payment"]["captured"]) == amount(final["totals"]["grand_total"])
    assert final["payment"]["status"] == "captured"
    assert stock(api, cap, "wh-east") == (7, 0) and stock(api, mug, "wh-west") == (8, 0)


def test_a_rejected_parcel_no_other_location_can_fill_has_its_units_cancelled_out_of_stock_and_is_settled(api):
    mug = stocked(api, "MUG2", "12.50", {"wh-west": 10})
    hat = stocked(api, "HAT2", "5.00", {"wh-east": 10})
    order = partly_shipped(api, (mug, 1), (hat, 2))
    rejected = parcel(order, "wh-east")

    answer = reject(api, order, rejected["id"])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["status"] == "shipped"
    assert [s["id"] for s in done["shipments"]] == [parcel(order, "wh-west")["id"]]
    line = next(x for x in done["lines"] if x["sku"] == hat)
    assert (line["quantity"], line["cancelled_quantity"]) == (0, 2)
    assert amount(done["totals"]["grand_total"]) < amount(order["totals"]["grand_total"])
    assert settled(done) == amount(done["totals"]["grand_total"])
    assert done["payment"]["status"] in ("captured", "partially_refunded")
    assert stock(api, hat, "wh-east") == (10, 0)
    types = [e["type"] for e in history(api, order["id"])]
    assert types.index("shipment_rejected") < types.index("units_cancelled")
    cancelled = next(e for e in history(api, order["id"]) if e["type"] == "units_cancelled")
    assert cancelled["detail"]["reason"] == "out_of_stock" and cancelled["to_status"] == "shipped"
    # Rejected again: answered as it is, nothing refunded or released twice.
    repeated = reject(api, order, rejected["id"])
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["version"] == done["version"] and repeated.json()["payment"] == done["payment"]


def test_units_of_a_backorderable_product_no_location_has_are_cancelled_too_as_nothing_waits_after_a_parcel_left(api):
    mug = stocked(api, "MUG3", "12.50", {"wh-west": 10})
    bag = stocked(api, "BAG3", "20.00", {"wh-east": 4}, allow_backorder=True)
    order = partly_shipped(api, (mug, 1), (bag, 4))

    done = reject(api, order, parcel(order, "wh-east")["id"]).json()

    assert done["status"] == "shipped"
    assert next(x for x in done["lines"] if x["sku"] == bag)["cancelled_quantity"] == 4
    assert settled(done) == amount(done["totals"]["grand_total"])


def test_what_another_location_has_is_sourced_again_and_the_rest_cancelled_then_the_payment_adds_up(api):
    mug = stocked(api, "MUG4", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP4", "7.77", {"wh-north": 10, "wh-east": 1})
    order = partly_shipped(api, (mug, 2), (cap, 3))

    done = reject(api, order, parcel(order, "wh-north")["id"]).json()

    assert done["status"] == "partially_shipped"
    assert parcel(done, "wh-east")["lines"][0]["quantity"] == 1
    line = next(x for x in done["lines"] if x["sku"] == cap)
    assert (line["quantity"], line["cancelled_quantity"]) == (1, 2)
    assert stock(api, cap, "wh-east") == (1, 1) and stock(api, cap, "wh-north") == (10, 0)

    final = ship(api, done, "wh-east")

    assert final["status"] == "shipped"
    assert settled(final) == amount(final["totals"]["grand_total"])
    assert stock(api, cap, "wh-east") == (0, 0)


def test_a_reject_that_died_after_its_write_is_finished_by_the_reject_sent_again(api, monkeypatch):
    from core.unit_cancellation import UnitCancellation

    mug = stocked(api, "MUG5", "12.50", {"wh-west": 10})
    hat = stocked(api, "HAT5", "5.00", {"wh-east": 10})
    order = partly_shipped(api, (mug, 1), (hat, 2))
    rejected = parcel(order, "wh-east")
    real = UnitCancellation.settle_after_reject

    def dies(self: UnitCancellation, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the function died after the reject's write")

    monkeypatch.setattr(UnitCancellation, "settle_after_reject", dies)
    assert reject(api, order, rejected["id"]).status_code == 500
    assert stock(api, hat, "wh-east") == (10, 2)  # recorded, not released yet
    monkeypatch.setattr(UnitCancellation, "settle_after_reject", real)

    answer = reject(api, order, rejected["id"])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["status"] == "shipped"
    assert stock(api, hat, "wh-east") == (10, 0)
    assert settled(done) == amount(done["totals"]["grand_total"]) and done["payment"]["status"] != "authorized"


def test_a_reject_that_lost_its_write_after_reserving_elsewhere_reserves_once_when_sent_again(api, monkeypatch):
    mug = stocked(api, "MUG6", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP6", "7.77", {"wh-north": 10, "wh-east": 10})
    order = partly_shipped(api, (mug, 2), (cap, 3))
    rejected = parcel(order, "wh-north")
    real = DynamoOrders.update

    def dies(self: DynamoOrders, new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if entries and entries[0].type == "shipment_rejected":
            raise RuntimeError("the function died at the reject's write")
        return real(self, new, expected, entries, **conditions)

    monkeypatch.setattr(DynamoOrders, "update", dies)
    assert reject(api, order, rejected["id"]).status_code == 500
    monkeypatch.setattr(DynamoOrders, "update", real)

    done = reject(api, order, rejected["id"]).json()

    assert parcel(done, "wh-east")["lines"] == rejected["lines"]
    assert stock(api, cap, "wh-east") == (10, 3) and stock(api, cap, "wh-north") == (10, 0)
    final = ship(api, done, "wh-east")
    assert final["status"] == "shipped" and stock(api, cap, "wh-east") == (7, 0)
    assert amount(final["payment"]["captured"]) == amount(final["totals"]["grand_total"])


def test_a_parcel_whose_ship_died_after_its_capture_has_the_capture_refunded_before_it_is_sourced_again(
    api, monkeypatch
):
    from tests.integration.conftest import dying_at_the_ship_write

    mug = stocked(api, "MUG7", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP7", "7.77", {"wh-north": 10, "wh-east": 10})
    order = partly_shipped(api, (mug, 2), (cap, 3))
    rejected = parcel(order, "wh-north")
    with monkeypatch.context() as patched:  # the gateway captured, the ship's write never landed
        patched.setattr(DynamoOrders, "update", dying_at_the_ship_write(RuntimeError("died")))
        assert api.post(f"/orders/{order['id']}/shipments/{rejected['id']}/ship", json={}).status_code == 500

    answer = reject(api, order, rejected["id"])

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert settled(done) == amount(order["payment"]["captured"])  # the dead ship's capture given back
    assert parcel(done, "wh-east")["lines"] == rejected["lines"]
    assert stock(api, cap, "wh-north") == (10, 0)
    final = ship(api, done, "wh-east")
    assert final["status"] == "shipped" and settled(final) == amount(final["totals"]["grand_total"])


def test_a_rejected_parcel_sourced_again_from_two_locations_ships_in_two_parcels_that_capture_the_rest(api):
    mug = stocked(api, "MUG8", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP8", "7.77", {"wh-north": 10, "wh-east": 10})
    hat = stocked(api, "HAT8", "5.00", {"wh-north": 10, "wh-south": 10})
    order = partly_shipped(api, (mug, 1), (cap, 2), (hat, 3))

    done = reject(api, order, parcel(order, "wh-north")["id"]).json()

    assert done["status"] == "partially_shipped"
    assert sorted(s["location_id"] for s in done["shipments"]) == ["wh-east", "wh-south", "wh-west"]
    assert stock(api, cap, "wh-east") == (10, 2) and stock(api, hat, "wh-south") == (10, 3)
    assert stock(api, cap, "wh-north") == (10, 0) and stock(api, hat, "wh-north") == (10, 0)
    halfway = ship(api, done, "wh-south")
    assert halfway["status"] == "partially_shipped"
    final = ship(api, halfway, "wh-east")
    assert final["status"] == "shipped" and final["payment"]["status"] == "captured"
    assert amount(final["payment"]["captured"]) == amount(final["totals"]["grand_total"])
    assert stock(api, cap, "wh-east") == (8, 0) and stock(api, hat, "wh-south") == (7, 0)


def test_the_units_cancelled_with_the_last_parcel_of_an_order_whose_other_arrived_leave_it_delivered(api):
    mug = stocked(api, "MUG9", "12.50", {"wh-west": 10})
    hat = stocked(api, "HAT9", "5.00", {"wh-east": 10})
    order = partly_shipped(api, (mug, 1), (hat, 2))
    arrived = api.post(f"/orders/{order['id']}/shipments/{parcel(order, 'wh-west')['id']}/deliver", json={})
    assert arrived.status_code == 200 and arrived.json()["status"] == "partially_shipped", arrived.text

    done = reject(api, order, parcel(order, "wh-east")["id"]).json()

    assert done["status"] == "delivered"
    assert settled(done) == amount(done["totals"]["grand_total"]) and stock(api, hat, "wh-east") == (10, 0)


def test_a_stock_take_below_what_a_partly_shipped_orders_pending_parcel_holds_sources_that_parcel_again(api):
    mug = stocked(api, "MUG10", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP10", "7.77", {"wh-north": 10, "wh-east": 10})
    order = partly_shipped(api, (mug, 2), (cap, 3))
    counted_short = parcel(order, "wh-north")

    counted = api.put(f"/inventory/{cap}/wh-north", json={"on_hand": 1})

    # Was 409 insufficient_stock: the parcel was not one the count could send elsewhere.
    assert counted.status_code == 200, counted.text
    assert stock(api, cap, "wh-north") == (1, 0) and stock(api, cap, "wh-east") == (10, 3)
    done = api.get(f"/orders/{order['id']}").json()
    assert done["status"] == "partially_shipped"
    assert [s["location_id"] for s in done["shipments"]] == ["wh-west", "wh-east"]
    assert parcel(done, "wh-east")["lines"] == counted_short["lines"] and parcel(done, "wh-east")["status"] == "pending"
    (entry,) = [e for e in history(api, order["id"]) if e["type"] == "shipment_rejected"]
    assert (entry["detail"]["reason"], entry["detail"]["location_id"]) == ("stock_count", "wh-north")
    assert entry["detail"]["shipment_id"] == counted_short["id"]
    # The same count sent again changes nothing more.
    assert api.put(f"/inventory/{cap}/wh-north", json={"on_hand": 1}).status_code == 200
    assert api.get(f"/orders/{order['id']}").json()["version"] == done["version"]

    final = ship(api, done, "wh-east")

    assert final["status"] == "shipped" and final["payment"]["status"] == "captured"
    assert amount(final["payment"]["captured"]) == amount(final["totals"]["grand_total"])
    assert stock(api, cap, "wh-east") == (7, 0) and stock(api, cap, "wh-north") == (1, 0)


def test_a_stock_take_that_leaves_a_partly_shipped_orders_units_nowhere_cancels_them_out_of_stock_and_settles(api):
    mug = stocked(api, "MUG11", "12.50", {"wh-west": 10})
    hat = stocked(api, "HAT11", "5.00", {"wh-east": 10})
    order = partly_shipped(api, (mug, 1), (hat, 2))

    counted = api.put(f"/inventory/{hat}/wh-east", json={"on_hand": 0})

    assert counted.status_code == 200, counted.text
    assert stock(api, hat, "wh-east") == (0, 0)
    done = api.get(f"/orders/{order['id']}").json()
    assert done["status"] == "shipped"
    assert [s["id"] for s in done["shipments"]] == [parcel(order, "wh-west")["id"]]
    line = next(x for x in done["lines"] if x["sku"] == hat)
    assert (line["quantity"], line["cancelled_quantity"]) == (0, 2)
    assert settled(done) == amount(done["totals"]["grand_total"])
    cancelled = next(e for e in history(api, order["id"]) if e["type"] == "units_cancelled")
    assert cancelled["detail"]["reason"] == "out_of_stock"


def test_max_shipments_counts_the_parcels_the_order_has_when_a_rejected_parcel_is_sourced_again(api):
    mug = stocked(api, "MUG12", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP12", "7.77", {"wh-north": 10, "wh-east": 10})
    hat = stocked(api, "HAT12", "5.00", {"wh-north": 10, "wh-south": 10})
    rules = api.put("/sourcing/rules", json={"prefer": "nearest", "max_shipments": 2})
    assert rules.status_code == 200, rules.text
    try:
        order = partly_shipped(api, (mug, 1), (cap, 2), (hat, 3))

        done = reject(api, order, parcel(order, "wh-north")["id"]).json()
    finally:
        assert api.put("/sourcing/rules", json={"prefer": "nearest"}).status_code == 200

    # The shipped parcel counts: one location more, the one that supplies the most of the rest
    # (wh-south, 3 hats); the caps only wh-east has are cancelled out_of_stock, not a third parcel.
    assert done["status"] == "partially_shipped"
    assert sorted(s["location_id"] for s in done["shipments"]) == ["wh-south", "wh-west"]
    line = next(x for x in done["lines"] if x["sku"] == cap)
    assert (line["quantity"], line["cancelled_quantity"]) == (0, 2)
    assert stock(api, cap, "wh-east") == (10, 0) and stock(api, hat, "wh-south") == (10, 3)
    assert stock(api, cap, "wh-north") == (10, 0) and stock(api, hat, "wh-north") == (10, 0)
    # The history names the rules version the rest was sourced under, as a stock_reserved or
    # backordered entry does: a merchandiser reading why the caps were cancelled out_of_stock while
    # wh-east has ten finds the max_shipments of that version.
    entries = history(api, order["id"])
    at = max(i for i, e in enumerate(entries) if e["type"] == "shipment_rejected")
    rejected, cancelled = entries[at], entries[at + 1]
    assert rejected["detail"]["sourced"] == [
        {"line_id": a["line_id"], "location_id": "wh-south", "quantity": 3}
        for a in done["allocations"]
        if a["location_id"] == "wh-south"
    ]
    assert rejected["detail"]["sourcing_rules_version"] == rules.json()["version"]
    assert (cancelled["type"], cancelled["detail"]["reason"]) == ("units_cancelled", "out_of_stock")
    final = ship(api, done, "wh-south")
    assert final["status"] == "shipped" and settled(final) == amount(final["totals"]["grand_total"])


def test_a_rejected_parcel_whose_order_has_max_shipments_parcels_already_has_its_units_cancelled(api):
    mug = stocked(api, "MUG13", "12.50", {"wh-west": 10})
    cap = stocked(api, "CAP13", "7.77", {"wh-north": 10, "wh-east": 10})
    order = partly_shipped(api, (mug, 1), (cap, 2))
    # Lowered after the order was sourced: the two parcels it has are all the rules allow now.
    assert api.put("/sourcing/rules", json={"prefer": "nearest", "max_shipments": 1}).status_code == 200
    try:
        done = reject(api, order, parcel(order, "wh-north")["id"]).json()
    finally:
        assert api.put("/sourcing/rules", json={"prefer": "nearest"}).status_code == 200

    assert done["status"] == "shipped"
    assert [s["location_id"] for s in done["shipments"]] == ["wh-west"]
    assert next(x for x in done["lines"] if x["sku"] == cap)["cancelled_quantity"] == 2
    assert stock(api, cap, "wh-east") == (10, 0) and settled(done) == amount(done["totals"]["grand_total"])


@pytest.mark.parametrize(
    "n, rules",
    [(14, {"prefer": "fewest_shipments"}), (15, {"prefer": "nearest", "excluded_locations": ["wh-east"]})],
    ids=["fewer parcels preferred", "the location excluded"],
)
def test_a_booking_a_reject_killed_before_its_write_made_where_its_retry_sources_nothing_is_cancelled(
    api, monkeypatch, n: int, rules: dict[str, Any]
):
    from core import fulfillment
    from core.ids import shipment_id_for, sourced_again_key
    from core.workflow import Workflow

    mug = stocked(api, f"MUG{n}", "12.50", {"wh-west": 10})
    cap = stocked(api, f"CAP{n}", "7.77", {"wh-north": 10, "wh-east": 10, "wh-south": 10})
    hat = stocked(api, f"HAT{n}", "5.00", {"wh-north": 10, "wh-south": 10})
    order = partly_shipped(api, (mug, 1), (cap, 2), (hat, 3))
    rejected = parcel(order, "wh-north")
    real = DynamoOrders.update

    def killed(self: DynamoOrders, new: Any, expected: Any, entries: Any, **conditions: Any) -> Any:
        if entries and entries[0].type == "shipment_rejected":
            raise RuntimeError("the function timed out at the reject's write")
        return real(self, new, expected, entries, **conditions)

    # Killed (a timeout) after booking wh-east (the caps) and wh-south (the hats): nothing after runs.
    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", killed)
        patched.setattr(fulfillment, "give_up_unrecorded", lambda *args, **kwargs: None)
        patched.setattr(Workflow, "release_unrecorded_parcels", lambda *args, **kwargs: None)
        assert reject(api, order, rejected["id"]).status_code == 500
    assert stock(api, cap, "wh-east") == (10, 2) and stock(api, hat, "wh-south") == (10, 3)
    # The retry plans otherwise: wh-south has it all, and the rules now prefer fewer parcels, or
    # exclude wh-east.
    assert api.put("/sourcing/rules", json=rules).status_code == 200
    try:
        answer = reject(api, order, rejected["id"])
    finally:
        assert api.put("/sourcing/rules", json={"prefer": "nearest"}).status_code == 200

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert sorted(s["location_id"] for s in done["shipments"]) == ["wh-south", "wh-west"]
    assert stock(api, cap, "wh-east") == (10, 0) and stock(api, cap, "wh-south") == (10, 2)
    # The wh-east booking no version records is cancelled with the carrier (was never asked).
    east_key = sourced_again_key(shipment_id_for(order["id"], "wh-east"), order["version"])
    cancelled = [
        e["detail"]["booking_key"] for e in history(api, order["id"]) if e["type"] == "carrier_booking_cancelled"
    ]
    assert east_key in cancelled
    south_key = sourced_again_key(parcel(done, "wh-south")["id"], order["version"])
    assert south_key not in cancelled  # the booking the retry uses (the same key) stands
    final = ship(api, done, "wh-south")
    assert final["status"] == "shipped" and settled(final) == amount(final["totals"]["grand_total"])
