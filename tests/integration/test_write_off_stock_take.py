"""A stock take recorded between a write-off and its stock step, in-process on moto. A person's cancel
writes off a parcel its carrier reported delivered whose capture the gateway refused: the parcel left,
so its units leave on_hand as a ship's do. Should the cancel's function die after its order record,
before that stock step, and the shelf be counted before the step is finished (the cancel sent again,
or the reconciler's pass), the count already left the parcel's units out: before, the finish took them
out of on_hand a second time (5 on hand, 2 written off, counted 3: 1 left). Now the write-off's stock
write carries when the parcel left (its carrier's report: what a ship of it records as shipped_at), and
a count recorded after that only has the reservation given up, on_hand left as counted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.client import order_body
from tests.integration.in_process import InProcessApi, run_to_allocated
from tests.integration.test_parcels_left_finished import Stock, actions, api  # noqa: F401 (a fixture)
from tests.integration.test_write_off_api import the_ship_dies

PERSON = "key_ops"


def refused_parcel(api: InProcessApi, *stocks: Stock, quantity: int = 2) -> tuple[dict[str, Any], str]:  # noqa: F811
    """An order of `quantity` units of each of `stocks` (one parcel at each location), the first one's
    ship dying after its capture, then reported delivered by its carrier, the gateway refusing the
    capture that report asks for: the order and that parcel."""
    import plugins.test_payments as gateway

    body = order_body(*((stock.sku, quantity) for stock in stocks), channel=f"web-{uuid.uuid4().hex[:8]}")
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    parcel = next(s["id"] for s in order["shipments"] if s["location_id"] == stocks[0].location)
    with pytest.MonkeyPatch.context() as patches:
        the_ship_dies(patches, order, parcel)
        patches.setattr(gateway, "_declines", lambda authorization, operation: operation == "capture")
        reported = api.post(f"/orders/{order['id']}/shipments/{parcel}/deliver", json={})
    assert reported.status_code == 502, reported.text
    assert stocks[0].level() == (stocks[0].on_hand, quantity)
    return api.get(f"/orders/{order['id']}").json(), parcel


def counted_after(api: InProcessApi, stock: Stock, written_off: int) -> None:  # noqa: F811
    """The shelf counted now, without the units that left with the parcel."""
    counted = api.put(f"/inventory/{stock.sku}/{stock.location}", json={"on_hand": stock.on_hand - written_off})
    assert counted.status_code == 200, counted.text
    assert stock.level() == (stock.on_hand - written_off, written_off)


@pytest.mark.parametrize("finish", ["the cancel sent again", "the execution the cancel's record starts"])
def test_a_stock_take_between_a_whole_cancels_write_off_and_its_stock_step_is_not_taken_from_twice(
    api: InProcessApi,  # noqa: F811
    finish: str,
):
    from functions.adapters.dynamodb import DynamoInventory

    stock = Stock(api)
    order, parcel = refused_parcel(api, stock)

    def dies(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("the API function timed out after recording the cancel")

    with pytest.MonkeyPatch.context() as patches, pytest.raises(TimeoutError):
        patches.setattr(DynamoInventory, "ship", dies)
        actions().cancel(order["id"], "capture refused: written off", actor=PERSON)
    cancelled = api.get(f"/orders/{order['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert next(s for s in cancelled["shipments"] if s["id"] == parcel)["status"] == "cancelled"
    counted_after(api, stock, 2)

    if finish == "the cancel sent again":
        again = api.post(f"/orders/{order['id']}/cancel", json={"reason": "capture refused: written off"})
        assert again.status_code == 200, again.text
    else:
        from core.workflow import CANCEL_RECORDED
        from functions.bootstrap import Config, bootstrap

        bootstrap(Config.from_env()).workflow.cancel_after_failure(order["id"], CANCEL_RECORDED, "")

    # Before: (1, 0), the two units that left taken out of the count that had left them out.
    assert stock.level() == (stock.on_hand - 2, 0)


@pytest.mark.parametrize("finish", ["the cancel sent again", "the reconciler's pass"])
def test_a_stock_take_between_a_cancel_of_units_write_off_and_its_stock_step_is_not_taken_from_twice(
    api: InProcessApi,  # noqa: F811
    finish: str,
):
    from functions.adapters.dynamodb import DynamoOrders

    written, other = Stock(api), Stock(api)
    order, parcel = refused_parcel(api, written, other)
    shipped = next(s["id"] for s in order["shipments"] if s["id"] != parcel)
    assert api.post(f"/orders/{order['id']}/shipments/{shipped}/ship", json={}).status_code == 200
    line_id = next(line["line_id"] for line in order["lines"] if line["sku"] == written.sku)
    body = {"reason": "capture refused: written off", "lines": [{"line_id": line_id, "quantity": 2}]}
    key = {"Idempotency-Key": f"write-off-{uuid.uuid4().hex[:8]}"}
    real = DynamoOrders.update_with_stock

    def dies(self: DynamoOrders, new: Any, expected: Any, entries: Any, moves: Any) -> None:
        if any(move.ships for move in moves):
            raise TimeoutError("the API function timed out after recording the cancel")
        real(self, new, expected, entries, moves)

    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(DynamoOrders, "update_with_stock", dies)
        died = api.post(f"/orders/{order['id']}/cancel", json=body, headers=key)
    assert died.status_code == 500, died.text
    owing = api.get(f"/orders/{order['id']}").json()
    assert owing["status"] == "shipped"
    assert next(s for s in owing["shipments"] if s["id"] == parcel)["status"] == "cancelled"
    counted_after(api, written, 2)

    if finish == "the cancel sent again":
        again = api.post(f"/orders/{order['id']}/cancel", json=body, headers=key)
        assert again.status_code == 200, again.text
    else:
        from functions.bootstrap import Config, bootstrap

        container = bootstrap(Config.from_env())
        container.actions.release_owed_stock(container.order_repository.get(order["id"], consistent=True))

    # Before: (1, 0).
    assert written.level() == (written.on_hand - 2, 0)
    assert other.level() == (other.on_hand - 2, 0)


def test_two_parcels_written_off_leave_on_hand_each_by_its_own_hand_over(api: InProcessApi):  # noqa: F811
    import plugins.test_payments as gateway

    first, second = Stock(api), Stock(api)
    order, parcel = refused_parcel(api, first, second)
    counted_after(api, first, 2)  # after the first parcel left, before the second did
    other = next(s["id"] for s in order["shipments"] if s["id"] != parcel)
    with pytest.MonkeyPatch.context() as patches:
        the_ship_dies(patches, api.get(f"/orders/{order['id']}").json(), other)
        patches.setattr(gateway, "_declines", lambda authorization, operation: operation == "capture")
        reported = api.post(f"/orders/{order['id']}/shipments/{other}/deliver", json={})
    assert reported.status_code == 502, reported.text

    actions().cancel(order["id"], "capture refused: written off", actor=PERSON)

    assert api.get(f"/orders/{order['id']}").json()["status"] == "cancelled"
    # Before: (1, 0), the first parcel's units, which the count left out, taken out again: the
    # write-off's stock write carried the latest report of the two parcels, after that count.
    assert first.level() == (first.on_hand - 2, 0)
    assert second.level() == (second.on_hand - 2, 0)


def test_two_parcels_a_cancel_of_units_writes_off_leave_on_hand_each_by_its_own_hand_over(api: InProcessApi):  # noqa: F811
    import plugins.test_payments as gateway

    first, second, other = Stock(api), Stock(api), Stock(api)
    order, _ = refused_parcel(api, first, second, other)
    counted_after(api, first, 2)  # after the first parcel left, before the second did
    by_location = {s["location_id"]: s["id"] for s in order["shipments"]}
    with pytest.MonkeyPatch.context() as patches:
        the_ship_dies(patches, api.get(f"/orders/{order['id']}").json(), by_location[second.location])
        patches.setattr(gateway, "_declines", lambda authorization, operation: operation == "capture")
        reported = api.post(f"/orders/{order['id']}/shipments/{by_location[second.location]}/deliver", json={})
    assert reported.status_code == 502, reported.text
    lines = [
        {"line_id": line["line_id"], "quantity": 2} for line in order["lines"] if line["sku"] in (first.sku, second.sku)
    ]

    done = api.post(f"/orders/{order['id']}/cancel", json={"reason": "capture refused: written off", "lines": lines})

    assert done.status_code == 200, done.text
    assert first.level() == (first.on_hand - 2, 0)
    assert second.level() == (second.on_hand - 2, 0)
    assert other.level() == (other.on_hand, 2)
