"""Stock takes and adjustments through the core's InventoryService, on the in-memory ports."""

from __future__ import annotations

import pytest

from core.errors import Conflict
from core.services import InventoryService
from plugins.testing import a_location, a_product
from tests.fakes import FakeCatalog, FakeInventory


@pytest.fixture
def inventory() -> InventoryService:
    catalog = FakeCatalog()
    catalog.put_product(a_product("TSHIRT"))
    catalog.put_location(a_location("wh-east"))
    return InventoryService(FakeInventory(), catalog)


def test_an_adjustment_retried_under_its_key_counts_once_and_another_under_that_key_is_a_conflict(inventory):
    # As the DynamoDB adapter answers (its ledger keeps the delta and reason a key counted): the
    # in-memory port answered a corrected retry as counted while counting nothing.
    inventory.count("TSHIRT", "wh-east", 5)
    inventory.adjust("TSHIRT", "wh-east", 4, "delivery 4711", key="api:k1:a")

    assert inventory.adjust("TSHIRT", "wh-east", 4, "delivery 4711", key="api:k1:a").on_hand == 9
    for delta, reason in [(40, "delivery 4711"), (4, "delivery 4712")]:
        with pytest.raises(Conflict) as refused:
            inventory.adjust("TSHIRT", "wh-east", delta, reason, key="api:k1:a")
        assert refused.value.code == "idempotency_key_reused"
    assert inventory.summary("TSHIRT").locations[0].on_hand == 9
