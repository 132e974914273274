"""A line id names one line of an order for the order's whole life (in-process API on moto, the
workflow's steps run by hand): an edit's lines get ids after the highest the order has had, so a
cancel, a pick slip or an event keyed by an id from before the edit never lands on other goods."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from core.ids import reservation_key
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated

_orders = itertools.count(1)
SKUS = ("ANVIL", "BELL", "CANDLE", "DRUM")
WAREHOUSE = "wh-east"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put(f"/locations/{WAREHOUSE}", json=location_body()).status_code == 201
        for sku in SKUS:
            assert started.put(f"/products/{sku}", json=product_body("10.00")).status_code == 201
            assert started.put(f"/inventory/{sku}/{WAREHOUSE}", json={"on_hand": 50}).status_code == 200
        yield started


def container() -> Any:
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env())


def allocated(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    body = order_body(external_id=f"web-id{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines])
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    return run_to_allocated(api, placed.json()["id"])


def edited(api: InProcessApi, order: dict[str, Any], *lines: tuple[str, int]) -> dict[str, Any]:
    body = {"lines": [{"sku": s, "quantity": q} for s, q in lines]}
    answer = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})
    assert answer.status_code == 200, answer.text
    return answer.json()


def sourced_again(api: InProcessApi, order_id: str) -> dict[str, Any]:
    steps = container().workflow
    steps.reserve_stock(order_id)
    steps.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def ids(order: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(line["line_id"], line["sku"], line["quantity"]) for line in order["lines"]]


def reserved(api: InProcessApi, sku: str) -> int:
    levels = api.get(f"/inventory/{sku}").json()["locations"]
    return next(level["reserved"] for level in levels if level["location_id"] == WAREHOUSE)


def held(order_id: str, sku: str, *line_ids: str) -> dict[str, int]:
    """What the order holds of `sku` under each of `line_ids` (those holding anything)."""
    keys = [reservation_key(order_id, line_id) for line_id in line_ids]
    found = container().inventory_repository.reservations({(sku, WAREHOUSE): keys})
    return {key.split("#", 1)[1]: quantity for (_, _, key), quantity in found.items() if quantity}


def test_a_cancel_of_a_line_an_edit_replaced_is_refused_not_taken_from_the_goods_now_under_its_old_id(api):
    # A support screen read the order when L1 was ANVIL; the customer then edited it to CANDLE and
    # DRUM. The edit numbered its lines from L1 again, so cancelling "L1" cancelled the CANDLE.
    order = allocated(api, ("ANVIL", 1), ("BELL", 1))
    assert ids(order) == [("L1", "ANVIL", 1), ("L2", "BELL", 1)]
    edit = edited(api, order, ("CANDLE", 1), ("DRUM", 1))
    assert ids(edit) == [("L3", "CANDLE", 1), ("L4", "DRUM", 1)]
    now = sourced_again(api, order["id"])

    refused = api.post(f"/orders/{order['id']}/cancel",
                       json={"reason": "customer asked", "lines": [{"line_id": "L1", "quantity": 1}]})  # fmt: skip

    error = assert_error(refused, 422, "validation_error", "lines[0].line_id")
    assert error["details"][0]["message"] == "no line L1"
    assert "no line L1" in error["message"]  # not "cannot lose that many units": no quantity was wrong
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["version"], ids(after)) == (now["version"], ids(now))


def test_an_edit_renumbers_every_line_after_the_highest_and_moves_the_units_it_keeps_under_the_new_ids(api):
    # An unchanged line (ANVIL x 2) gets a new id too: the edit replaces the lines whole, withdraws
    # every parcel and sources the order again, so what was keyed by the old ids (allocations, pick
    # slips, events) described a plan that is gone. Its units move to the new key, never held twice.
    anvils, bells, candles = reserved(api, "ANVIL"), reserved(api, "BELL"), reserved(api, "CANDLE")
    order = allocated(api, ("ANVIL", 2), ("BELL", 1))
    assert (reserved(api, "ANVIL"), reserved(api, "BELL")) == (anvils + 2, bells + 1)

    edit = edited(api, order, ("ANVIL", 2), ("CANDLE", 1))
    assert ids(edit) == [("L3", "ANVIL", 2), ("L4", "CANDLE", 1)]
    now = sourced_again(api, order["id"])

    assert sorted((a["line_id"], a["quantity"]) for a in now["allocations"]) == [("L3", 2), ("L4", 1)]
    assert sorted((item["line_id"], item["quantity"]) for s in now["shipments"] for item in s["lines"]) == [
        ("L3", 2), ("L4", 1),
    ]  # fmt: skip
    assert (held(order["id"], "ANVIL", "L1", "L3"), held(order["id"], "BELL", "L2")) == ({"L3": 2}, {})
    assert held(order["id"], "CANDLE", "L4") == {"L4": 1}
    assert (reserved(api, "ANVIL"), reserved(api, "BELL"), reserved(api, "CANDLE")) == (anvils + 2, bells, candles + 1)


def test_line_ids_only_grow_though_an_edit_drops_the_highest(api):
    # Derived from the lines the order has (no stored counter): every edit's lines are numbered
    # after the highest, so the highest an order has is the highest it ever had.
    order = allocated(api, ("ANVIL", 1), ("BELL", 1))
    first = edited(api, order, ("ANVIL", 1))
    assert ids(first) == [("L3", "ANVIL", 1)]
    second = edited(api, first, ("ANVIL", 1), ("DRUM", 2))
    assert ids(second) == [("L4", "ANVIL", 1), ("L5", "DRUM", 2)]
    now = sourced_again(api, order["id"])
    assert sorted(a["line_id"] for a in now["allocations"]) == ["L4", "L5"]
    assert held(order["id"], "ANVIL", "L1", "L3", "L4") == {"L4": 1}
    assert held(order["id"], "BELL", "L2") == {}


def test_an_edit_of_the_address_alone_or_naming_the_lines_as_they_are_keeps_the_line_ids(api):
    order = allocated(api, ("ANVIL", 1), ("BELL", 2))
    same = edited(api, order, ("ANVIL", 1), ("BELL", 2))
    assert (same["version"], ids(same)) == (order["version"], ids(order))

    moved = api.request("PATCH", f"/orders/{order['id']}", json={"shipping_method": "express"},
                        headers={"If-Match": str(order["version"])})  # fmt: skip

    assert moved.status_code == 200, moved.text
    assert ids(moved.json()) == [("L1", "ANVIL", 1), ("L2", "BELL", 2)]
