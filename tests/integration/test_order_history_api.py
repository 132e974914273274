"""GET /orders/{id}/history over the in-process API: paged as every list is (API.md conventions:
`?limit=` 1..100, default 25, an opaque cursor, `{"items", "next_cursor"}`), oldest first, its
cursors naming a place in the whole history (so they hold while the oldest entries move to pages
of their own), and showing each entry without what only the system reads (a caller's
Idempotency-Key)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest

from core.cursors import cursor_of
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
    for forged in ("bm90LWEtY3Vyc29y", "!!", returns_cursor_shape[:-3], _cursor_at(order_id, 10**30)):
        assert_error(api.get(f"/orders/{order_id}/history", params={"cursor": forged}), 422, "invalid_cursor")
    # No such order is 404 whatever the cursor: the order is read before the cursor is refused.
    missing = "ord_" + "z" * 24
    assert_error(api.get(f"/orders/{missing}/history", params={"cursor": cursor}), 404, "not_found")
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


@contextmanager
def _reads() -> Iterator[list[dict[str, Any]]]:
    """The items each call of the API function's DynamoDB client reads from now on."""
    from functions.api.dependencies import container

    items: list[dict[str, Any]] = []

    def read(parsed: dict[str, Any], **_: Any) -> None:
        items.extend([parsed["Item"]] if "Item" in parsed else parsed.get("Items", []))

    events = container().dynamodb.meta.events
    events.register("after-call.dynamodb", read, unique_id="history-reads")
    try:
        yield items
    finally:
        events.unregister("after-call.dynamodb", unique_id="history-reads")


def _cursor_at(order_id: str, position: int) -> str:
    """A cursor as the API issues it (core/order_lists.py): the place `position` in the history."""
    return cursor_of({"o": order_id, "l": "history", "n": position})


def test_a_page_of_a_long_history_reads_the_order_and_only_the_pages_holding_it(api: InProcessApi):
    # 1,200 entries built through the adapter (~86 bytes each stored: pages of ~380 entries, ~32 KB).
    # A page of the history reads the order's item (the first entry and the live tail) and only
    # the moved pages holding its entries, one or two: it read every page, so a walk was N² reads.
    from core.models import HistoryEntry, utc_now
    from functions.adapters.dynamodb import HISTORY_MOVED, HISTORY_PAGE_PK, DynamoOrders
    from functions.api.dependencies import container
    from tests.integration.test_order_history_overflow import _item_bytes

    order_id = _placed(api)
    client, config = container().dynamodb, container().config
    orders = DynamoOrders(client, config.orders_table, history_table=config.catalog_table)
    order = orders.get(order_id, consistent=True)
    at = utc_now()

    def attempts(numbers: range) -> list[HistoryEntry]:
        detail = {"note": f"declined {secrets.token_hex(16)}"}
        return [HistoryEntry(at=at, type="payment_capture_failed", actor="workflow", detail={"attempt": n, **detail})
                for n in numbers]  # fmt: skip

    def item() -> dict[str, Any]:
        key = {"id": {"S": order_id}}
        return client.get_item(TableName=config.orders_table, Key=key, ConsistentRead=True)["Item"]

    for hundred in range(12):
        orders.update(order, order, attempts(range(100 * hundred, 100 * hundred + 100)))
    written = 1_200
    while len(item()["history"]["L"]) < 3:  # a live tail in the item (a move may have just taken it all)
        orders.update(order, order, attempts(range(written, written + 1)))
        written += 1
    moved = int(item()[HISTORY_MOVED]["N"])
    pages = client.query(
        TableName=config.catalog_table, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": HISTORY_PAGE_PK + order_id}},
    )["Items"]  # fmt: skip
    assert len(pages) >= 3 and moved > 750
    second = 1 + sorted(int(page["sk"]["S"]) for page in pages)[1]  # the place of the second page's first entry
    history = container().orders.history(order_id, consistent=True)
    assert [entry.detail["attempt"] for entry in history[1:]] == list(range(written))

    # Across two pages, in one, the first entry (the item's) and the first page's, the live tail.
    for start, pages_read in ((second - 50, 2), (second + 5, 1), (0, 1), (moved + 1, 0)):
        cursor = {"cursor": _cursor_at(order_id, start)} if start else {}
        with _reads() as read:
            page = api.get(f"/orders/{order_id}/history", params={"limit": 100, **cursor})
        assert page.status_code == 200, page.text
        shown = [(entry["type"], (entry["detail"] or {}).get("attempt")) for entry in page.json()["items"]]
        assert shown == [(entry.type, (entry.detail or {}).get("attempt")) for entry in history[start : start + 100]]
        history_pages = [i for i in read if i.get("pk", {}).get("S", "").startswith(HISTORY_PAGE_PK)]
        assert len(history_pages) == pages_read, (start, len(history_pages))
        # What else it reads (the order's item, the caller's key, the order's returns) is small.
        read_bytes = sum(map(_item_bytes, read))
        assert read_bytes <= _item_bytes(item()) + sum(map(_item_bytes, history_pages)) + 8_192, (start, read_bytes)
