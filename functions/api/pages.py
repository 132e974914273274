"""A page of a list cut to what one Lambda response carries, with the cursor of the rest."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel

# Lambda answers a synchronous invocation (API Gateway's) with at most 6 MB of JSON, counted on the
# proxy response whose body is a JSON string in it; API Gateway turns a larger one into a 502. A
# page's items stop short of RESPONSE_ROOM, leaving the rest to the envelope, headers and cursor.
RESPONSE_ROOM = 5 * 1024 * 1024
# What one byte of an item's UTF-8 JSON can take in the proxy response: the API writes non-ASCII as
# escapes (a 4-byte emoji as 12 characters) and the body, a JSON string, escapes each backslash and
# quote again (14); a control character (6 as an escape, 7 escaped again) is the most.
_MOST_PER_BYTE = 7

Item = TypeVar("Item", bound=BaseModel)


def response_bytes(item: BaseModel) -> int:
    """What `item` takes of the API function's response: its JSON as the API writes it (ASCII, the
    rest escaped), written again as part of the proxy response's body string."""
    return len(json.dumps(json.dumps(item.model_dump(mode="json"), separators=(",", ":")))) - 2


def fitting(items: Sequence[BaseModel]) -> int:
    """How many of `items`, from the first, fit RESPONSE_ROOM (at least one). Measured exactly only
    when a cheap bound (each byte of their JSON at its most escaped) does not fit already."""
    sizes = [len(item.model_dump_json().encode()) for item in items]
    if sum(sizes) * _MOST_PER_BYTE <= RESPONSE_ROOM:
        return len(items)
    taken = 0
    for count, item in enumerate(items):
        taken += response_bytes(item)
        if taken > RESPONSE_ROOM:
            return max(count, 1)
    return len(items)


def page_that_fits(read: Callable[[int], tuple[list[Item], str | None]], limit: int) -> tuple[list[Item], str | None]:
    """`read(limit)`'s page (the items as the route shows them and the cursor of the rest), or, when
    its items would pass RESPONSE_ROOM, the page read again with a limit of as many as fit: the
    repository's cursor then starts right after the last one shown. Read again until a page fits
    whole (the list may have changed between reads); every page holds at least one item."""
    while True:
        items, cursor = read(limit)
        fit = fitting(items)
        if fit == len(items):
            return items, cursor
        limit = fit
