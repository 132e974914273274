"""The bounds that keep an order within DynamoDB's 400 KB item, over the HTTP API in-process on
moto (whose table refuses larger items too): the refusal is a 409 in the contract's error shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api

# 100 lines of skus at their longest (128 characters): each edit of them keeps ~16 KB of JSON of the
# lines it replaced, so few edits reach the order's room for them. Five skus of 20 lines each, not 100
# skus of a line each: the edits keep as many bytes (the room counts every line), and moto reads each
# reservation an edit names on every stock item of its page (100 items x ~200 entries a read: ~15 s
# of CPU, where the five items take ~1 s).
SKUS = [f"SKU-{n:03d}-" + "x" * 120 for n in range(1, 6)]


def _lines(quantity: int) -> list[dict[str, object]]:
    return [{"sku": SKUS[n % len(SKUS)], "quantity": quantity} for n in range(100)]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        for sku in SKUS:
            assert started.put(f"/products/{sku}", json=product_body("1.00")).status_code == 201
            assert started.put(f"/inventory/{sku}/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


def test_an_edit_of_a_pending_orders_lines_past_their_room_is_409_too_many_edits(api):
    placed = api.post("/orders", json=order_body(external_id="room-1", lines=_lines(1)))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    for n in range(12):
        answer = api.request(
            "PATCH", f"/orders/{order['id']}", headers={"If-Match": str(order["version"])},
            json={"lines": _lines(1 + (n + 1) % 2)},
        )  # fmt: skip
        if answer.status_code != 200:
            break
        order = answer.json()
    error = assert_error(answer, 409, "too_many_edits", "lines")
    assert "64 KiB" in error["message"]
    assert 0 < n < 12
    assert api.get(f"/orders/{order['id']}").json()["version"] == order["version"]  # nothing written
    # Its address can still be edited.
    moved = api.request(
        "PATCH", f"/orders/{order['id']}", headers={"If-Match": str(order["version"])},
        json={"shipping_method": "express"},
    )  # fmt: skip
    assert moved.status_code == 200, moved.text
