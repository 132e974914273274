"""escape_for_log: nothing a client sends can break, forge or recolour a log line."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from core.log_text import escape_for_log


def test_line_breaks_and_tabs_are_written_as_escapes():
    assert escape_for_log("a\r\nINFO forged\tline") == "a\\r\\nINFO forged\\tline"


def test_ansi_escapes_nul_and_del_lose_their_control_byte():
    assert escape_for_log("\x1b[31mred\x1b[0m\x00\x7f") == "\\x1b[31mred\\x1b[0m\\x00\\x7f"


def test_unicode_line_separators_and_bidi_overrides_are_escaped():
    assert escape_for_log("a\u2028b\u202egnp.exe\u2066") == "a\\u2028b\\u202egnp.exe\\u2066"


def test_a_backslash_is_doubled_so_a_sent_escape_is_told_from_a_made_one():
    assert escape_for_log("\\n") == "\\\\n"
    assert escape_for_log("\\n") != escape_for_log("\n")


def test_ordinary_text_is_unchanged():
    assert escape_for_log("GET /orders/ord_1?limit=5 Zoë 東京") == "GET /orders/ord_1?limit=5 Zoë 東京"


@given(st.text())
def test_the_escaped_text_is_one_printable_line(text: str):
    escaped = escape_for_log(text)
    assert not any(c in escaped for c in "\r\n\x1b\x00\x85\u2028\u2029\u202e")
    assert len(escaped.splitlines()) <= 1


@given(st.text(alphabet=string.printable.replace("\\", "") + "\r\n\x1b\x00\u202e"))
def test_no_two_texts_escape_alike(text: str):
    assert escape_for_log(text) != escape_for_log(text + "\n")
