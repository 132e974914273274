"""JSON as the OMS reads it from outside: one object, no duplicate keys, bounded nesting and numbers."""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from core.card_numbers import contains_card_number

MAX_DEPTH = 64
# Far beyond any count or id the OMS takes; Python refuses past 4,300 digits with a bare ValueError.
MAX_INTEGER_DIGITS = 100

# A string, or one never closed, to the end of the text: a string required to close was, with no
# closing quote, tried again from every quote after it (`"\"\"\"...`), each try running to the end:
# quadratic, minutes of CPU for a 256 KiB body. Such text is no JSON; the parser says so after.
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


class StrictJsonError(ValueError):
    """A text that is JSON the OMS refuses (or not JSON at all). The message is a predicate that
    follows its subject ("the request body " + message), and safe to show the sender."""


def _too_deep(text: str) -> bool:
    # Brackets inside strings do not nest: drop the strings first, then everything but brackets.
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return len(brackets) > MAX_DEPTH and max(accumulate(map(_NESTING.__getitem__, brackets))) > MAX_DEPTH


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            # Named, unless the key itself looks like card data (never echoed).
            name = "a key" if contains_card_number(key) else f"the key {key[:40]!r}"
            raise StrictJsonError(f"has {name} twice in one object")
        document[key] = value
    return document


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise StrictJsonError(f"has a number of more than {MAX_INTEGER_DIGITS} digits")
    return int(digits)


def _float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        # Past what a float holds (about 1.8e308), Python reads the number as Infinity. Never
        # echoed: its digits may be a card number's.
        raise StrictJsonError("has a number too large to read (beyond 1.8e308 either way)")
    return number


def _constant(name: str) -> Any:
    raise StrictJsonError(f"has {name}, which is not JSON")


def loads(text: str | bytes, *, top_level_object: bool = True) -> Any:
    """Parse `text`, refusing duplicate keys, nesting deeper than MAX_DEPTH, integers longer than
    MAX_INTEGER_DIGITS, NaN and Infinity (Python reads them, and reads a number past what a float
    holds as Infinity; JSON has none) and, unless told otherwise, a top level that is not an
    object. Raises StrictJsonError, whose message is safe to show the sender."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise StrictJsonError("is not UTF-8 encoded JSON") from None
    if text.startswith("\ufeff"):
        # JSON text carries no byte order mark (RFC 8259 8.1); the JSON after one may be fine, so
        # say what is wrong rather than "not valid JSON".
        raise StrictJsonError("starts with a byte order mark (U+FEFF): send UTF-8 without one")
    if _too_deep(text):
        raise StrictJsonError(f"nests objects and arrays deeper than {MAX_DEPTH} levels")
    try:
        document = json.loads(
            text, object_pairs_hook=_object, parse_float=_float, parse_int=_integer, parse_constant=_constant
        )
    except StrictJsonError:
        raise
    except json.JSONDecodeError as error:
        # Where it breaks, never what is there (the text may be card data): one position in the
        # text, 1-based, which reads the same for a one-line body and a JSON Lines line.
        raise StrictJsonError(f"is not valid JSON from character {error.pos + 1}") from None
    except (ValueError, RecursionError):
        raise StrictJsonError("is not valid JSON") from None
    if top_level_object and not isinstance(document, dict):
        raise StrictJsonError("is not a JSON object")
    return document
