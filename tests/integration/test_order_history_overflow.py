"""An order whose history outgrows its item (issue h402): holds and releases with long notes over the
in-process API. DynamoDB refuses an item over 400 KB (moto too, list_append included), and every
later write of that order (a cancel) failed as a 500: the oldest entries now move to pages of
their own, and every read of the history (the API's, and a retry's search by its key) reads them
back in order."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.e2e.client import order_body, stocked_sku, unique
from tests.integration.in_process import InProcessApi, in_process_api

# Holds and releases with the longest note the contract takes, one that does not compress (~1.2 KB
# an entry stored): 164 entries passed the 400 KB limit, 180 do surely.
CYCLES = 90


def _note() -> str:
    # Random CJK ideographs: 3 bytes each in UTF-8, and next to nothing for zlib to share.
    return "".join(chr(0x4E00 + secrets.randbelow(0x5000)) for _ in range(500))


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def _item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's size of an item: its attribute names and values (binaries as their bytes)."""

    def size(value: dict[str, Any]) -> int:
        ((kind, inner),) = value.items()
        if kind == "L":
            return 3 + sum(1 + size(v) for v in inner)
        if kind == "M":
            return 3 + sum(len(k) + 1 + size(v) for k, v in inner.items())
        if kind == "B":
            return len(inner)
        if kind == "BOOL" or kind == "NULL":
            return 1
        return len(str(inner).encode())

    return sum(len(name) + size(value) for name, value in item.items())


def test_an_order_past_the_item_limit_keeps_every_entry_and_can_still_be_cancelled(api: InProcessApi):
    from core.access import ADMIN_KEY_ID
    from core.holds import ReleaseRequest
    from functions.api.dependencies import container

    sku = stocked_sku(api, "25.00", on_hand=10)[1]
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    path = f"/orders/{order_id}"
    notes: list[str] = []
    # The first release's answer was lost (powertools never stored it): a retry under its key
    # must find its entry in the history, however old it is by then.
    first_key = unique("release")
    for cycle in range(CYCLES):
        held_note, released_note = _note(), _note()
        notes += [held_note, released_note]
        held = api.post(f"{path}/hold", json={"reason": "other", "note": held_note})
        assert held.status_code == 200, (cycle, held.text)
        if cycle == 0:
            container().holds.release(
                order_id, ReleaseRequest(note=released_note), actor=ADMIN_KEY_ID,
                request_key=f"api:{ADMIN_KEY_ID}:{first_key}",
            )  # fmt: skip
        else:
            released = api.post(f"{path}/release", json={"note": released_note})
            assert released.status_code == 200, (cycle, released.text)

    retried = api.post(f"{path}/release", json={"note": notes[1]}, headers={"Idempotency-Key": first_key})
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending"

    cancelled = api.post(f"{path}/cancel", json={"reason": "customer asked"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    entries: list[dict[str, Any]] = []
    page: dict[str, Any] = {"next_cursor": None}
    while not entries or page["next_cursor"]:  # paged: 100 entries at most a page
        cursor = {"cursor": page["next_cursor"]} if page["next_cursor"] else {}
        page = api.get(f"{path}/history", params={"limit": 100, **cursor}).json()
        entries += page["items"]
    assert entries[0]["type"] == "created" and entries[-1]["to_status"] == "cancelled"
    kept = [entry["detail"]["note"] for entry in entries if entry["type"] in ("on_hold", "released")]
    assert kept == notes

    # The item stays far under the limit (its history over 32 KB moves out to pages), and so what
    # each write of it costs: ~33 write units at most, not 400.
    client = boto3.client("dynamodb", region_name="us-east-1")
    tables = client.list_tables()["TableNames"]
    orders_table = next(name for name in tables if name.endswith("OrdersTable"))
    item = client.get_item(TableName=orders_table, Key={"id": {"S": order_id}}, ConsistentRead=True)["Item"]
    assert _item_bytes(item) < 40_000, _item_bytes(item)
