"""GET /orders/{id}/history over the in-process API: paged as every list is (API.md conventions:
`?limit=` 1..100, default 25, an opaque cursor, `{"items", "next_cursor"}`), oldest first, its
cursors naming a place in the whole history (so they hold while the oldest entries move to pages
of their own), and showing each entry without what only the system reads (a caller's
Idempotency-Key)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.e2e.client import assert_error, order_body, stocked_sku, unique
from tests.integration.in_process import InProcessApi, in_process_api, issue


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def _placed(api: InProcessApi, channel: str = "web") -> str:
    sku = stocked_sku(api, "25.00", on_hand=10)[1]
    placed = api.post("/orders", json=order_body((sku, 1), channel=channel))
    assert placed.status_code == 201, placed.text
    return placed.json()["id"]


def _held_and_released(api: InProcessApi, order_id: str, cycles: int, note: str = "checked") -> None:
    for _ in range(cycles):
        held = api.post(f"/orders/{order_id}/hold", json={"reason": "other", "note": note})
        assert held.status_code == 200, held.text
        released = api.post(f"/orders/{order_id}/release", json={"note": note})
        assert released.status_code == 200, released.text


def _followed(api: InProcessApi, order_id: str, limit: int, cursor: str | None = None) -> list[dict[str, Any]]:
    """Every entry from `cursor` on, `limit` a page, following next_cursor to the end."""
    entries: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/orders/{order_id}/history", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert set(body) == {"items", "next_cursor"} and len(body["items"]) <= limit
        entries += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return entries


def test_the_history_is_paged_oldest_first_and_a_read_without_a_limit_answers_25(api: InProcessApi):
    order_id = _placed(api)
    _held_and_released(api, order_id, 13)  # 27 entries

    whole = _followed(api, order_id, 100)
    assert len(whole) == 27 and whole[0]["type"] == "created" and whole[0]["to_status"] == "pending"
    assert [e["type"] for e in whole[1:3]] == ["on_hold", "released"]
    assert _followed(api, order_id, 4) == whole

    first = api.get(f"/orders/{order_id}/history").json()
    assert first["items"] == whole[:25] and first["next_cursor"]
    rest = api.get(f"/orders/{order_id}/history", params={"cursor": first["next_cursor"]}).json()
    assert rest == {"items": whole[25:], "next_cursor": None}
    # A last page of exactly `limit` entries says so: no cursor to an empty page.
    assert api.get(f"/orders/{order_id}/history", params={"limit": 27}).json()["next_cursor"] is None


def test_a_cursor_of_another_order_or_list_or_none_issued_is_422_and_a_bad_limit_too(api: InProcessApi):
    order_id, other_id = _placed(api), _placed(api)
    _held_and_released(api, order_id, 2)
    _held_and_released(api, other_id, 2)
    cursor = api.get(f"/orders/{order_id}/history", params={"limit": 2}).json()["next_cursor"]
    returns_cursor_shape = cursor  # the same encoding the order's other lists use, bound to the history

    assert_error(api.get(f"/orders/{other_id}/history", params={"cursor": cursor}), 422, "invalid_cursor", "cursor")
    for forged in ("bm90LWEtY3Vyc29y", "!!", returns_cursor_shape[:-3]):
        assert_error(api.get(f"/orders/{order_id}/history", params={"cursor": forged}), 422, "invalid_cursor")
    for limit in (0, 101, "5.0"):
        assert_error(api.get(f"/orders/{order_id}/history", params={"limit": limit}), 422, None, "limit")


def _note() -> str:
    # Random CJK ideographs: ~1.2 KB an entry stored, next to nothing for zlib to share.
    return "".join(chr(0x4E00 + secrets.randbelow(0x5000)) for _ in range(500))


def test_a_cursor_holds_while_the_oldest_entries_move_to_pages(api: InProcessApi):
    from functions.adapters.dynamodb import HISTORY_MOVED

    order_id = _placed(api)
    _held_and_released(api, order_id, 2)
    first = api.get(f"/orders/{order_id}/history", params={"limit": 3}).json()
    for _ in range(16):  # ~38 KB of entries: the item's oldest but its first move to a page
        _held_and_released(api, order_id, 1, note=_note())
    client = boto3.client("dynamodb", region_name="us-east-1")
    table = next(name for name in client.list_tables()["TableNames"] if name.endswith("OrdersTable"))
    assert HISTORY_MOVED in client.get_item(TableName=table, Key={"id": {"S": order_id}}, ConsistentRead=True)["Item"]

    whole = _followed(api, order_id, 100)
    assert len(whole) == 1 + 2 * 18
    assert first["items"] + _followed(api, order_id, 5, first["next_cursor"]) == whole


def test_the_history_shows_no_idempotency_key_and_a_retry_under_it_still_finds_its_entry(api: InProcessApi):
    # A channel's storefront and its support tool each hold a key of the channel: neither is shown
    # the other's Idempotency-Keys in the history they both may read (the actor, a key id, is shown).
    from core.access import ADMIN_KEY_ID
    from core.holds import ReleaseRequest
    from functions.api.dependencies import container

    channel = unique("shop")
    order_id = _placed(api, channel)
    reader = issue(api, "orders:read", channel=channel)
    key, cancel_key = unique("release"), unique("cancel")
    assert api.post(f"/orders/{order_id}/hold", json={"reason": "other", "note": "n"}).status_code == 200
    # The release took effect but its answer was lost (powertools never stored it): a retry under
    # its key finds its entry by the key stored in it.
    container().holds.release(
        order_id, ReleaseRequest(note="n"), actor=ADMIN_KEY_ID, request_key=f"api:{ADMIN_KEY_ID}:{key}"
    )
    again = api.post(f"/orders/{order_id}/release", json={"note": "n"}, headers={"Idempotency-Key": key})
    assert again.status_code == 200, again.text
    cancelled = api.post(f"/orders/{order_id}/cancel", json={"reason": "r"}, headers={"Idempotency-Key": cancel_key})
    assert cancelled.status_code == 200, cancelled.text

    for who in (None, reader):
        shown = api.get(f"/orders/{order_id}/history", **({"key": who} if who else {}))
        assert shown.status_code == 200, shown.text
        assert [e["type"] for e in shown.json()["items"]] == ["created", "on_hold", "released", "cancelled"]
        assert key not in shown.text and cancel_key not in shown.text
        assert all("request_key" not in (entry["detail"] or {}) for entry in shown.json()["items"])
