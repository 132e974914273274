"""A list's page against Lambda's response limit: written once, measured on what is answered, and
cut where the next item's JSON, written again as the proxy response's body string, passes its room."""

from __future__ import annotations

import json

from pydantic import BaseModel

from functions.api.pages import RESPONSE_ROOM, page_that_fits, proxied_bytes


class Note(BaseModel):
    text: str


class NotePage(BaseModel):
    items: list[Note]
    next_cursor: str | None = None


def reading(notes: list[Note]):
    """A repository's page read: the first `limit` notes and a cursor when more are left; each limit
    asked for, in `asked`."""
    asked: list[int] = []

    def read(limit: int) -> tuple[list[Note], str | None]:
        asked.append(limit)
        return notes[:limit], ("more" if limit < len(notes) else None)

    return read, asked


def test_a_page_is_answered_as_written_once():
    read, asked = reading([Note(text=f'note {n} "quoted" \u00e9') for n in range(100)])

    answer = page_that_fits(read, 100, NotePage)

    assert asked == [100]
    assert isinstance(answer.body, str)
    # What powertools would have written for the route's model: compact, non-ASCII as escapes.
    page = NotePage.model_validate_json(answer.body)
    assert answer.body == json.dumps(page.model_dump(mode="json"), separators=(",", ":"))
    assert len(page.items) == 100 and page.next_cursor is None


def test_a_page_of_characters_escaped_most_is_cut_where_their_proxied_json_passes_the_room():
    # DEL is written as it is in the API's JSON and as `\u007f` in the proxy response: six times its
    # length. Ten such notes of 100,000 are ~1 MB of JSON (five times that would fit) and ~6 MB once
    # in the proxy response: eight fit.
    notes = [Note(text="\x7f" * 100_000) for _ in range(10)]
    read, asked = reading(notes)

    answer = page_that_fits(read, 10, NotePage)

    page = NotePage.model_validate_json(answer.body)
    assert asked == [10, 8] and len(page.items) == 8 and page.next_cursor == "more"
    one = proxied_bytes(notes[0].model_dump_json())
    assert 8 * one <= RESPONSE_ROOM < 9 * one
    assert proxied_bytes(answer.body) == len(json.dumps(answer.body)) - 2 > 5 * len(answer.body)


def test_one_item_past_the_room_is_a_page_of_its_own():
    read, asked = reading([Note(text="\x7f" * (RESPONSE_ROOM // 5)), Note(text="small")])

    page = NotePage.model_validate_json(page_that_fits(read, 2, NotePage).body)

    assert asked == [2, 1] and len(page.items) == 1 and page.next_cursor == "more"


def test_items_taking_exactly_the_room_are_answered_as_one_page():
    small = Note(text="small")
    rest = RESPONSE_ROOM - proxied_bytes(small.model_dump_json()) - proxied_bytes(Note(text="").model_dump_json())
    big = Note(text="\x7f" * (rest // 6) + "x" * (rest % 6))
    assert proxied_bytes(big.model_dump_json()) + proxied_bytes(small.model_dump_json()) == RESPONSE_ROOM
    read, asked = reading([big, small])

    page = NotePage.model_validate_json(page_that_fits(read, 2, NotePage).body)

    assert asked == [2] and len(page.items) == 2 and page.next_cursor is None
