"""A merchant's catalog changes meeting orders already placed, in-process on moto: a product that
stops (or starts) allowing backorder while orders wait for it or are on their way to be sourced."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from core.errors import Backordered, OutOfStock
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import InProcessApi, in_process_api_with_labels

_orders = itertools.count(1)


@pytest.fixture
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/KITE", json=product_body("30.00", allow_backorder=True)).status_code == 201
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/KITE/wh-east", json={"on_hand": 1}).status_code == 200
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 10}).status_code == 200
        yield started


def steps():
    from functions.bootstrap import Config, bootstrap

    return bootstrap(Config.from_env()).workflow


def placed(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    body = order_body(external_id=f"web-c{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines])
    answer = api.post("/orders", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def backordered(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    order_id = placed(api, *lines)["id"]
    steps().authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        steps().reserve_stock(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "backordered", order
    return order


def stop_backorders(api: InProcessApi) -> None:
    answer = api.put("/products/KITE", json=product_body("30.00", allow_backorder=False))
    assert answer.status_code == 200, answer.text


def edit(api: InProcessApi, order: dict[str, Any], body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    answer = api.request("PATCH", f"/orders/{order['id']}", json=body, headers={"If-Match": str(order["version"])})
    assert answer.status_code == status, answer.text
    return answer.json()


def test_a_backordered_order_whose_product_stopped_taking_backorders_may_still_change_its_address(api):
    order = backordered(api, ("KITE", 3))
    stop_backorders(api)

    address = {**order["shipping_address"], "line1": "2 Market St"}
    edited = edit(api, order, {"shipping_address": address})
    assert (edited["status"], edited["shipping_address"]["line1"]) == ("authorized", "2 Market St")
    with pytest.raises(Backordered):  # the workflow the edit starts again: it waits as it was sold to
        steps().reserve_stock(order["id"])

    waiting = api.get(f"/orders/{order['id']}").json()
    assert (waiting["status"], waiting["payment"]["status"]) == ("backordered", "authorized")
    assert sum(a["quantity"] for a in waiting["allocations"]) == 1
    assert waiting["awaiting_stock"]["lines"][0]["waiting_quantity"] == 2


def test_an_edit_that_asks_for_more_units_than_were_sold_to_wait_is_checked_as_a_new_order(api):
    order = backordered(api, ("KITE", 3))
    stop_backorders(api)

    refused = edit(api, order, {"lines": [{"sku": "KITE", "quantity": 4}]}, status=409)
    assert refused["error"]["code"] == "insufficient_stock"
    fewer = edit(api, order, {"lines": [{"sku": "KITE", "quantity": 2}, {"sku": "MUG", "quantity": 1}]})
    assert fewer["status"] == "authorized"
    with pytest.raises(Backordered):
        steps().reserve_stock(fewer["id"])
    assert api.get(f"/orders/{order['id']}").json()["status"] == "backordered"


def test_an_order_not_yet_waiting_when_backorders_stop_is_sourced_as_the_product_says(api):
    """The contract: an order short when it is allocated waits where the product allows backorder,
    else ends out_of_stock. Only an order that has waited keeps its place when backorders stop."""
    order_id = placed(api, ("KITE", 3))["id"]  # 1 in stock: accepted because the product may wait
    stop_backorders(api)
    steps().authorize_payment(order_id, attempt=0)

    with pytest.raises(OutOfStock):
        steps().reserve_stock(order_id)


def test_a_new_order_for_a_product_that_stopped_taking_backorders_is_refused_beyond_the_stock(api):
    stop_backorders(api)

    answer = api.post("/orders", json=order_body(external_id="web-new", lines=[{"sku": "KITE", "quantity": 2}]))

    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "insufficient_stock")


def test_the_what_if_plans_an_order_that_has_waited_as_allocation_would_source_it(api):
    order_id = backordered(api, ("KITE", 3))["id"]
    stop_backorders(api)

    answer = api.post("/sourcing/simulate", json={"orders": [order_id]})

    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["items"]
    assert [line["quantity"] for line in item["unfillable"]] == [2]
    assert any("wait backordered" in reason for reason in item["reasons"]), item["reasons"]
    assert not any("cancel" in reason for reason in item["reasons"]), item["reasons"]


def allocated(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    from tests.integration.in_process import run_to_allocated

    return run_to_allocated(api, placed(api, *lines)["id"])


@pytest.mark.parametrize("today", ["20.00", "9.00"])
def test_an_edit_down_keeps_the_price_the_units_left_were_sold_at_as_a_cancel_of_units_does(api, today):
    """3 mugs sold at 12.50; the shop reprices them. Asking for 2 by an edit or by cancelling one
    leaves the same 2 mugs bought at 12.50: neither charges the customer today's price for them (a
    rise would have the card asked for more for fewer mugs), nor gives a drop to an edit alone."""
    edited, cancelled = allocated(api, ("MUG", 3)), allocated(api, ("MUG", 3))
    assert api.put("/products/MUG", json=product_body(today)).status_code == 200

    fewer = edit(api, edited, {"lines": [{"sku": "MUG", "quantity": 2}]})
    line_id = cancelled["lines"][0]["line_id"]
    answer = api.post(f"/orders/{cancelled['id']}/cancel", json={"reason": "fewer", "lines": [
        {"line_id": line_id, "quantity": 1}]})  # fmt: skip
    assert answer.status_code == 200, answer.text

    assert fewer["lines"][0]["unit_price"] == {"amount": "12.50", "currency": "USD"}
    assert fewer["totals"] == answer.json()["totals"]
    assert fewer["payment"]["authorized"] == edited["payment"]["authorized"]  # nothing more asked of the card


def test_a_product_or_location_put_again_as_it_is_changes_nothing(api):
    """A catalog sync sends every product and location again each night: one that did not change
    is answered 200 as it is stored (its updated_at too), and nothing is written (the network's
    item unchanged, so its stream hands the backorder function no record of it)."""
    from functions.bootstrap import Config, bootstrap

    product, location = api.get("/products/KITE").json(), api.get("/locations").json()["items"][0]
    catalog = bootstrap(Config.from_env()).catalog_repository
    network_before = catalog.list_locations()

    again = api.put("/products/KITE", json=product_body("30.00", allow_backorder=True))
    moved = api.put(f"/locations/{location['location_id']}", json=location_body())

    assert (again.status_code, again.json()) == (200, product)
    assert (moved.status_code, moved.json()) == (200, location)
    assert api.get("/products/KITE").json() == product
    assert catalog.list_locations() == network_before
    changed = api.put("/products/KITE", json=product_body("31.00", allow_backorder=True))
    assert changed.status_code == 200 and changed.json()["updated_at"] > product["updated_at"]


def test_an_order_no_location_ships_is_refused_naming_the_network_not_the_sourcing_rules(api):
    """The only warehouse stops shipping (closed for a stock move): a new order is 409 as before, but
    saying why; it blamed the sourcing rules, which exclude nothing, and sent the merchant there."""
    assert api.put("/locations/wh-east", json=location_body(ships=False)).status_code == 200

    refused = api.post("/orders", json=order_body(external_id="web-closed", lines=[{"sku": "MUG", "quantity": 1}]))

    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_stock"
    assert "sourcing rules" not in refused.text, refused.text
    assert "ships" in error["message"], error
    message = "no location that ships orders may supply it"
    assert error["details"] == [{"field": "lines[0].quantity", "message": message}]


def test_an_order_the_sourcing_rules_leave_no_location_for_still_names_the_rules(api):
    rules = {"prefer": "nearest", "excluded_locations": ["wh-east"]}
    assert api.request("PUT", "/sourcing/rules", json=rules).status_code == 200

    refused = api.post("/orders", json=order_body(external_id="web-excluded", lines=[{"sku": "MUG", "quantity": 1}]))

    assert refused.status_code == 409, refused.text
    assert "sourcing rules v1" in refused.json()["error"]["details"][0]["message"], refused.text


def test_the_what_if_of_an_order_no_location_ships_names_the_network_not_the_rules(api):
    assert api.put("/locations/wh-east", json=location_body(ships=False)).status_code == 200
    body = order_body(external_id="web-what-if", lines=[{"sku": "MUG", "quantity": 1}])

    simulated = api.post("/sourcing/simulate", json={"orders": [body]})

    assert simulated.status_code == 200, simulated.text
    (item,) = simulated.json()["items"]
    assert item["unfillable"] == [{"line_id": "L1", "sku": "MUG", "quantity": 1}]
    assert "no location that ships orders may supply this order" in item["reasons"], item
    assert "no location may supply this order under these rules" not in item["reasons"], item
