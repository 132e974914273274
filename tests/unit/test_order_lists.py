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


class Item:
    """An item of a growing list (a refund): the entries it shows, and whether it may show more."""

    def __init__(self, *entries: str, settled: bool = True) -> None:
        self.entries = list(entries)
        self.settled = settled


def growing(items: list[Item], limit: int, cursor: str | None) -> tuple[list[str], str | None]:
    return order_lists.growing_page(
        items, lambda item: list(item.entries), lambda item: item.settled, "ord_1", "refunds", limit, cursor
    )


def every_page(items: list[Item], limit: int) -> tuple[list[list[str]], list[str]]:
    """The pages a client reads following each next cursor, and the cursors it was given."""
    pages, cursors = [], []
    entries, cursor = growing(items, limit, None)
    pages.append(entries)
    while cursor is not None and len(pages) < 2 * len(items):  # a list read for good never ends
        cursors.append(cursor)
        entries, cursor = growing(items, limit, cursor)
        pages.append(entries)
    return pages, cursors


def test_an_item_of_more_entries_than_a_page_holds_is_shown_across_pages_each_entry_once():
    items = [Item("a"), Item("b1", "b2", "b3", "b4", "b5"), Item("c")]

    pages, _ = every_page(items, 2)

    assert pages == [["a", "b1"], ["b2", "b3"], ["b4", "b5"], ["c"]]


def test_the_last_page_of_a_list_whose_last_item_may_still_grow_has_no_next_cursor():
    # A pending refund shown whole: the list as it stands is read to its end (a later read of it
    # shows what went back, if anything does).
    assert growing([Item("a"), Item("b", settled=False)], 2, None) == (["a", "b"], None)


def test_a_settled_lists_cursor_stays_as_short_however_far_it_is_paged():
    # A cursor travels in the query string, which takes at most 2,048 characters of it: one that
    # named every item it had passed would stop a long list of refunds partway.
    items = [Item(f"r{n}") for n in range(50)]

    pages, cursors = every_page(items, 10)  # each cursor names a two-digit place

    assert [entry for page in pages for entry in page] == [f"r{n}" for n in range(50)]
    assert max(map(len, cursors)) == len(cursors[0])
