"""Pages of a list an order holds whole (its returns, its refunds): opaque cursors bound to the order and the list."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import TypeVar

from core.errors import InvalidCursor

T = TypeVar("T")


def page(
    items: Sequence[T], order_id: str, list_name: str, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """Up to `limit` of `items` (an append-only list, oldest first) after the position `cursor`
    names, and the cursor of the next page (None: no more). InvalidCursor for a cursor not issued
    for this order's `list_name`, or past its end."""
    start = _position(cursor, order_id, list_name, len(items)) if cursor is not None else 0
    end = start + limit
    return list(items[start:end]), _cursor(order_id, list_name, end) if end < len(items) else None


def _cursor(order_id: str, list_name: str, position: int) -> str:
    raw = json.dumps({"o": order_id, "l": list_name, "n": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _position(cursor: str, order_id: str, list_name: str, size: int) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = decoded["n"]
        valid = (
            decoded["o"] == order_id and decoded["l"] == list_name and type(position) is int and 0 < position <= size
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return position
