"""core.order_lists: the pages of a list an order holds whole (its returns, refunds and history), and
cursors that name a place in that one list: any other cursor is refused, never read as a place."""

from __future__ import annotations

from typing import Any

import pytest

from core import order_lists
from core.cursors import cursor_of
from core.errors import InvalidCursor

ITEMS = ["a", "b", "c", "d"]


def test_a_last_page_holding_exactly_the_limit_has_no_next_cursor():
    first, cursor = order_lists.page(ITEMS, "ord_1", "returns", 2, None)
    last, after = order_lists.page(ITEMS, "ord_1", "returns", 2, cursor)

    assert (first, last, after) == (["a", "b"], ["c", "d"], None)


def test_a_cursor_of_another_order_or_another_list_of_as_many_items_is_refused():
    _, cursor = order_lists.page(ITEMS, "ord_1", "returns", 2, None)

    for order_id, list_name in [("ord_2", "returns"), ("ord_1", "refunds")]:
        with pytest.raises(InvalidCursor):
            order_lists.page(ITEMS, order_id, list_name, 2, cursor)
        with pytest.raises(InvalidCursor):
            order_lists.growing_page(ITEMS, lambda item: [item], lambda item: True, order_id, list_name, 2, cursor)


@pytest.mark.parametrize(
    "place",
    [0, len(ITEMS) + 1, True],
    ids=["the start", "past the end", "true"],
)
def test_a_cursor_naming_a_place_no_page_ends_at_is_refused(place: Any):
    # A page's cursor names where the next page starts: after the first item at least, at the end at most.
    cursor = cursor_of({"o": "ord_1", "l": "returns", "n": place})

    with pytest.raises(InvalidCursor):
        order_lists.page(ITEMS, "ord_1", "returns", 2, cursor)


@pytest.mark.parametrize(
    "owed",
    [[[2, 1]], [[-1, 1]], [[0, -1]], [[0, True]]],
    ids=["at the cursor's place", "before the list", "a negative count", "a count of true"],
)
def test_a_growing_lists_cursor_owing_entries_of_an_item_it_has_not_passed_is_refused(owed: list[list[Any]]):
    # The items a growing page's cursor still owes entries of are among those it has passed.
    cursor = cursor_of({"o": "ord_1", "l": "refunds", "n": 2, "w": owed})

    with pytest.raises(InvalidCursor):
        order_lists.growing_page(ITEMS, lambda item: [item], lambda item: True, "ord_1", "refunds", 2, cursor)
