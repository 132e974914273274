"""Why a backordered order waits, as its history says it, in-process on moto: the `backordered`
entry's reasons name the units it waits for (API.md "Fulfillment": a rejected shipment with no other
location leaves the order waiting backordered, "the history says why")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import Catalog, order_body, put_network
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def reserve(order_id: str) -> None:
    """ReserveStock as the order workflow runs it: an order left short waits backordered."""
    from core.errors import Backordered
    from functions.bootstrap import Config, bootstrap

    with pytest.raises(Backordered):
        bootstrap(Config.from_env()).workflow.reserve_stock(order_id)


def backordered_entry(api: InProcessApi, order_id: str) -> dict[str, Any]:
    assert api.get(f"/orders/{order_id}").json()["status"] == "backordered"
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    return next(entry for entry in history if entry["type"] == "backordered")


def test_an_order_whose_only_location_rejected_it_says_it_waits_for_its_units_not_that_it_has_none(
    api: InProcessApi,
):
    # It said "the order has no units to source" of an order of 2 units, every one of which waits.
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("12.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 5)
    order = run_to_allocated(api, api.post("/orders", json=order_body((sku, 2))).json()["id"])
    rejected = api.post(
        f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/reject", json={"reason": "no staff"}
    )
    assert rejected.status_code == 200, rejected.text

    reserve(order["id"])

    entry = backordered_entry(api, order["id"])
    assert entry["detail"]["short"] == {"L1": 2}
    assert entry["detail"]["reasons"] == [
        f"waiting backordered for {sku} x2 (L1): more than the locations that may supply the order hold for it now"
    ]


def test_an_order_partly_in_stock_says_what_waits_before_where_the_rest_comes_from(api: InProcessApi):
    # It gave only the plugin's reasons for the unit in stock ("supplies every line: ... has the
    # whole order"), which an order of 3 holding 1 contradicted.
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("12.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 1)
    placed = api.post("/orders", json=order_body((sku, 3))).json()["id"]
    from functions.bootstrap import Config, bootstrap

    bootstrap(Config.from_env()).workflow.authorize_payment(placed, attempt=0)

    reserve(placed)

    entry = backordered_entry(api, placed)
    assert entry["detail"]["short"] == {"L1": 2}
    first, *rest = entry["detail"]["reasons"]
    assert first == (
        f"waiting backordered for {sku} x2 (L1): more than the locations that may supply the order hold for it "
        "now; the reasons after this one are about the units it holds"
    )
    assert any(network["west"] in reason for reason in rest), rest


def test_an_order_max_shipments_leaves_short_says_the_limit_not_the_stock_keeps_it_waiting(api: InProcessApi):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("12.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 2)
    catalog.stock(sku, network["east"], 2)
    assert api.put("/sourcing/rules", json={"prefer": "nearest", "max_shipments": 1}).status_code == 200
    try:
        placed = api.post("/orders", json=order_body((sku, 4))).json()["id"]
        from functions.bootstrap import Config, bootstrap

        bootstrap(Config.from_env()).workflow.authorize_payment(placed, attempt=0)
        reserve(placed)
    finally:
        assert api.put("/sourcing/rules", json={"prefer": "nearest"}).status_code == 200

    entry = backordered_entry(api, placed)
    assert entry["detail"]["short"] == {"L1": 2}
    assert entry["detail"]["reasons"][0] == (
        f"waiting backordered for {sku} x2 (L1): more than the locations that may supply the order hold for it "
        "now within max_shipments (1); the reasons after this one are about the units it holds"
    )
