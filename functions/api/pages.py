"""A page of a list cut to what one Lambda response carries, with the cursor of the rest."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel

# Lambda answers a synchronous invocation (API Gateway's) with at most 6 MB of JSON, counted on the
# proxy response whose body is a JSON string in it; API Gateway turns a larger one into a 502. A
# page's items stop short of RESPONSE_ROOM, leaving the rest to the envelope, headers and cursor.
RESPONSE_ROOM = 5 * 1024 * 1024
# The most one character of the API's JSON (ASCII: the rest written as escapes) takes once written
# again as the proxy response's body string: DEL, which the API's JSON holds as it is, as `\u007f`.
_MOST_PER_CHARACTER = 6

Item = TypeVar("Item", bound=BaseModel)


def written(model: BaseModel) -> str:
    """`model`'s JSON as powertools writes a route's answer (by alias, compact, non-ASCII as
    escapes), in one pass; only DEL differs, kept as it is where powertools writes it as an escape."""
    return model.model_dump_json(by_alias=True, ensure_ascii=True)


def proxied_bytes(body: str) -> int:
    """What `body` (JSON text) takes of the API function's response: written again as the proxy
    response's body string, each quote and backslash escaped."""
    return len(json.dumps(body)) - 2


def fitting(items: Sequence[BaseModel]) -> int:
    """How many of `items`, from the first, fit RESPONSE_ROOM (at least one)."""
    taken = 0
    for count, item in enumerate(items):
        taken += proxied_bytes(written(item))
        if taken > RESPONSE_ROOM:
            return max(count, 1)
    return len(items)


def page_that_fits(
    read: Callable[[int], tuple[list[Item], str | None]],
    limit: int,
    page: type[BaseModel],
) -> Response[str]:
    """The 200 answer of `page` (a model of `items` and `next_cursor`) of `read(limit)`'s items (as
    the route shows them) and the cursor of the rest, or, when its items would pass RESPONSE_ROOM,
    of the page read again with a limit of as many as fit: the repository's cursor then starts right
    after the last one shown. Read again until a page fits whole (the list may have changed between
    reads); every page holds at least one item.
    The page is written once, and that JSON is both what is measured and what is answered: a route
    returning it declares `Response[str]`, so powertools checks a str and sends it as it is, while
    the OpenAPI document takes the page model from the route's `responses`. It is measured exactly
    only when its length at the most a character can take does not fit already; the items take less
    of the response than the whole page, so a page that fits needs no other measure, and one that
    does not is measured item by item, which also finds where to cut it."""
    while True:
        items, cursor = read(limit)
        body = written(page(items=items, next_cursor=cursor))
        fits = len(body) * _MOST_PER_CHARACTER <= RESPONSE_ROOM or proxied_bytes(body) <= RESPONSE_ROOM
        if fits or (fit := fitting(items)) == len(items):
            return Response(200, content_types.APPLICATION_JSON, body)
        limit = fit
