"""Pages of a list an order holds whole (its returns, its refunds): opaque cursors bound to the order and the list."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from core.cursors import cursor_document, cursor_of
from core.errors import InvalidCursor

T = TypeVar("T")
U = TypeVar("U")


def page(
    items: Sequence[T], order_id: str, list_name: str, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """Up to `limit` of `items` (an append-only list, oldest first) after the position `cursor`
    names, and the cursor of the next page (None: no more). InvalidCursor for a cursor not issued
    for this order's `list_name`, or past its end."""
    start = _position(cursor, order_id, list_name, len(items)) if cursor is not None else 0
    end = start + limit
    return list(items[start:end]), _cursor(order_id, list_name, end) if end < len(items) else None


def ranged_page(
    read: Callable[[int, int], tuple[list[T], int]], order_id: str, list_name: str, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """`page` of a list too long to read whole for each page of it: `read(start, stop)` answers its
    items from `start` up to `stop` (fewer past its end) and its length. A cursor is refused
    (InvalidCursor, as `page`) once `read` has answered, so what `read` raises comes first (no
    such order: 404 before a bad cursor's 422)."""
    try:
        start = _position(cursor, order_id, list_name, sys.maxsize) if cursor is not None else 0
    except InvalidCursor:
        start = 0  # refused below
    items, size = read(start, start + limit)
    if cursor is not None:
        _position(cursor, order_id, list_name, size)
    end = start + limit
    return items, _cursor(order_id, list_name, end) if end < size else None


def growing_page(
    items: Sequence[T], shown: Callable[[T], list[U]], settled: Callable[[T], bool], order_id: str, list_name: str,
    limit: int, cursor: str | None,
) -> tuple[list[U], str | None]:  # fmt: skip
    """`page` of a list each item of which is shown as one or more entries, an item not yet
    `settled` perhaps as more later (a pending refund the gateway then refused in part: what went
    back is shown after it). The cursor names the next item and, of those before it, each the
    caller was shown only some entries of, or that may show more, with how many it was shown: the
    next page first shows what those show beyond that, so no entry is shown twice or missed, while
    an item before the cursor grows. InvalidCursor as `page`."""
    start, seen = _growing_position(cursor, order_id, list_name, len(items)) if cursor is not None else (0, {})
    entries: list[U] = []
    owed: dict[int, int] = {}  # the items before the next one not shown whole, or that may grow: how many were shown

    def take(index: int, skip: int) -> None:
        its = shown(items[index])
        given = its[skip:][: limit - len(entries)]
        entries.extend(given)
        if skip + len(given) < len(its) or not settled(items[index]):
            owed[index] = skip + len(given)

    for index, skip in sorted(seen.items()):
        take(index, skip)
    position = start
    while position < len(items) and len(entries) < limit:
        take(position, 0)
        position += 1
    more = position < len(items) or any(count < len(shown(items[index])) for index, count in owed.items())
    return entries, _cursor(order_id, list_name, position, owed) if more else None


def _cursor(order_id: str, list_name: str, position: int, owed: dict[int, int] | None = None) -> str:
    fields: dict[str, Any] = {"o": order_id, "l": list_name, "n": position}
    if owed:
        fields["w"] = sorted(owed.items())
    return cursor_of(fields)


def _position(cursor: str, order_id: str, list_name: str, size: int) -> int:
    return _growing_position(cursor, order_id, list_name, size)[0]


def _growing_position(cursor: str, order_id: str, list_name: str, size: int) -> tuple[int, dict[int, int]]:
    """The position `cursor` names, and the items before it shown only in part (growing_page)."""
    try:
        decoded = cursor_document(cursor)
        position, owed = decoded["n"], decoded.get("w", [])
        valid = (
            decoded["o"] == order_id and decoded["l"] == list_name and type(position) is int and 0 < position <= size
            and type(owed) is list
            and all(type(i) is int and type(k) is int and 0 <= i < position and k >= 0 for i, k in owed)
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return position, dict(owed)
