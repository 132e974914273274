"""Capture's stock check under the sourcing rules a container has just written, in-process on moto
(one API container, as `make run` serves): a change is in force at once where it was made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, put_network
from tests.integration.in_process import InProcessApi, in_process_api_with_labels


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def test_an_order_placed_right_after_the_rules_let_a_location_supply_again_counts_its_stock(api: InProcessApi):
    # Capture counts stock under rules it reads once every OMS_CATALOG_CACHE_SECONDS (10 s) per
    # container; the container that wrote new rules kept counting under the old ones until then: an
    # operator who took a location out of the exclusions and placed an order got 409
    # insufficient_stock for its units (as the catalog's own writes are, the writer's are in force).
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("4.00")
    catalog.stock(sku, network["west"], 3)
    excluded = api.put("/sourcing/rules", json={"prefer": "nearest", "excluded_locations": [network["west"]]})
    assert excluded.status_code == 200, excluded.text
    try:
        assert_error(api.post("/orders", json=order_body((sku, 1))), 409, "insufficient_stock")
    finally:
        restored = api.put("/sourcing/rules", json={"prefer": "nearest"})
    assert restored.status_code == 200, restored.text

    placed = api.post("/orders", json=order_body((sku, 1)))

    assert placed.status_code == 201, placed.text
