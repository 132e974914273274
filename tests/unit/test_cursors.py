"""core.cursors: a cursor's JSON document, or InvalidCursor for anything that holds none."""

from __future__ import annotations

import base64

import pytest

from core.cursors import cursor_document, cursor_of
from core.errors import InvalidCursor


def test_a_cursor_reads_back_as_the_document_it_holds_with_or_without_its_padding():
    written = base64.urlsafe_b64encode(b'{"n":1}').decode()

    assert cursor_document(written) == cursor_document(written.rstrip("=")) == {"n": 1}


@pytest.mark.parametrize(
    "document",
    [b"[" * 1536, b'{"n":' * 1200, b"\xff\xfe", b"{not json"],
    ids=["nested arrays", "nested objects", "not utf-8", "not json"],
)
def test_a_cursor_holding_no_document_the_parser_reads_is_invalid(document: bytes):
    with pytest.raises(InvalidCursor):
        cursor_document(base64.urlsafe_b64encode(document).decode())


def test_a_cursor_that_is_not_base64_is_invalid():
    with pytest.raises(InvalidCursor):
        cursor_document("!!!")


def test_a_cursor_whose_base64_holds_the_url_safe_letters_reads_back():
    # Where standard base64 writes `+` and `/`, a cursor holds `-` and `_` (it travels in a query
    # string): read as standard base64 those were dropped, and such a cursor's list could not go on.
    written = base64.urlsafe_b64encode(b'{"k":"~~~???>>>"}').decode().rstrip("=")

    assert "-" in written and "_" in written
    assert cursor_document(written) == {"k": "~~~???>>>"}


def test_a_cursor_a_list_writes_holds_only_url_safe_letters_and_reads_back():
    # It travels in a query string: no `+`, `/` (read back as other bytes) nor `=` padding.
    document = {"k": "~~~???>>>", "n": 1}

    written = cursor_of(document)

    assert not set("+/=") & set(written)
    assert cursor_document(written) == document
