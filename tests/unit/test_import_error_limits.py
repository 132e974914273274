"""What an import keeps of an error's text: few enough characters, and few enough JSON bytes."""

import json

from core.imports import MAX_EXTERNAL_ID_CHARS, MAX_MESSAGE_CHARS, ImportFileError, LineError, kept


def test_text_within_the_limit_is_kept_as_it_is():
    assert kept("José Müller ordered 漢字", 500) == "José Müller ordered 漢字"
    assert kept("x" * 500, 500) == "x" * 500


def test_text_over_the_limit_is_cut_and_says_so():
    assert kept("x" * 501, 500) == "x" * 499 + "…"


def test_an_emoji_counts_as_the_two_json_escapes_it_is_written_as():
    cut = kept("\U0001f600" * 300, 500)
    assert cut == "\U0001f600" * 249 + "…"
    assert len(json.dumps(cut)) <= 6 * 500 + 2


def test_a_line_error_keeps_its_message_and_external_id_within_their_limits():
    error = LineError(2, "\U0001f600" * 100_000, "order_reopened", "\U0001f600" * 100_000)
    assert len(error.external_id.encode("utf-16-le")) <= 2 * MAX_EXTERNAL_ID_CHARS
    assert len(error.message.encode("utf-16-le")) <= 2 * MAX_MESSAGE_CHARS
    assert error.external_id.endswith("…") and error.message.endswith("…")
    assert LineError(2, "web-1001", "invalid_number", "quantity must be a whole number").external_id == "web-1001"


def test_a_file_error_keeps_its_message_within_the_limit():
    error = ImportFileError("invalid_header", "unknown " + "\U0001f600" * 200_000)
    assert len(error.message.encode("utf-16-le")) <= 2 * MAX_MESSAGE_CHARS and error.message.endswith("…")
