"""core.strict_json: the JSON rules every body from outside is read by (API and import queue)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import strict_json
from core.strict_json import MAX_DEPTH, MAX_INTEGER_DIGITS, StrictJsonError

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


def depth(document: Any) -> int:
    if isinstance(document, dict):
        return 1 + max((depth(v) for v in document.values()), default=0)
    if isinstance(document, list):
        return 1 + max((depth(v) for v in document), default=0)
    return 0


@given(st.dictionaries(st.text(max_size=5), documents, max_size=4))
def test_any_object_within_the_bounds_reads_as_json_reads_it(document: dict[str, Any]):
    assert strict_json.loads(json.dumps(document)) == document


@given(documents)
def test_the_depth_scan_counts_what_the_parser_would_nest(document: Any):
    wrapped = {"a": document}
    text = json.dumps(wrapped)
    if depth(wrapped) <= MAX_DEPTH:
        assert strict_json.loads(text) == wrapped
    else:
        with pytest.raises(StrictJsonError, match="deeper"):
            strict_json.loads(text)


def test_brackets_inside_strings_do_not_nest():
    text = json.dumps({"note": "[" * 1000 + '\\"{' * 100})

    assert strict_json.loads(text) == json.loads(text)


def test_a_string_never_closed_is_read_to_the_end_in_one_match_not_tried_again_from_each_quote():
    # A body of 256 KiB of `"\"\"\"...` (a string never closed, its quotes escaped) was scanned for
    # nesting by a pattern that needed the closing quote: with none, it tried again from each quote,
    # every try reading to the end. Quadratic: minutes of CPU, past the API function's 10 s timeout.
    # Read to the end in one match from its opening quote, the same text costs one pass.
    text = '{"a": "' + '\\"' * 131_000

    key, value = strict_json._STRINGS.finditer(text)

    assert (key.group(), value.span()) == ('"a"', (len('{"a": '), len(text)))
    with pytest.raises(StrictJsonError, match="not valid JSON"):
        strict_json.loads(text)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_nesting_past_the_bound_is_refused_before_parsing(depth: int):
    with pytest.raises(StrictJsonError, match=f"deeper than {MAX_DEPTH}"):
        strict_json.loads('{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}")


def test_nesting_at_the_bound_is_read():
    assert strict_json.loads('{"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}")


@pytest.mark.parametrize("digits", [MAX_INTEGER_DIGITS + 1, 5_000, 100_000])
@pytest.mark.parametrize("sign", ["", "-"])
def test_integers_past_the_bound_are_refused(digits: int, sign: str):
    with pytest.raises(StrictJsonError, match=f"more than {MAX_INTEGER_DIGITS} digits"):
        strict_json.loads('{"n": ' + sign + "9" * digits + "}")


def test_integers_at_the_bound_are_read():
    assert strict_json.loads('{"n": -' + "9" * MAX_INTEGER_DIGITS + "}") == {"n": -int("9" * MAX_INTEGER_DIGITS)}


@pytest.mark.parametrize("number", ["1e309", "-1e309", "1.8e308", "123456789e301", "1" + "0" * 400 + ".5"])
def test_a_number_past_what_a_float_holds_is_refused_not_read_as_infinity(number: str):
    # Python reads it as Infinity, which JSON has none of: the splitter queued the body it read
    # with `Infinity` in it, and the worker reported "the message has Infinity" on the line.
    with pytest.raises(StrictJsonError, match="too large"):
        strict_json.loads('{"n": ' + number + "}")


def test_numbers_up_to_what_a_float_holds_are_read():
    assert strict_json.loads('{"n": 1.7976931348623157e308, "m": -1e-400}') == {"n": 1.7976931348623157e308, "m": -0.0}


@pytest.mark.parametrize("text", ['{"a": 1, "a": 1}', '{"x": [{"b": 1, "c": 2, "b": 3}]}'])
def test_duplicate_keys_are_refused_at_any_depth(text: str):
    with pytest.raises(StrictJsonError, match="twice in one object"):
        strict_json.loads(text)


@pytest.mark.parametrize("text", ["[{}]", "[]", '"s"', "1", "null", "true"])
def test_a_top_level_that_is_not_an_object_is_refused_unless_allowed(text: str):
    with pytest.raises(StrictJsonError, match="is not a JSON object"):
        strict_json.loads(text)
    assert strict_json.loads(text, top_level_object=False) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", '{"a": }', b"\xff{}", '{"a": NaN}', '{"a": -Infinity}', "{} {}"])
def test_what_is_not_json_is_refused_with_the_same_error(text: str | bytes):
    with pytest.raises(StrictJsonError):
        strict_json.loads(text)
