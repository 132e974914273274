"""Escapes request-supplied text before it is logged, so no value can forge or recolour a log line."""

from __future__ import annotations

import re

# C0 controls (CR, LF, ESC of ANSI sequences, NUL...), DEL, C1 controls, the Unicode line and
# paragraph separators and the bidi controls that reorder what a terminal shows.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escaped_char(match: re.Match[str]) -> str:
    """The visible escape of one matched character (`\\n`, `\\x1b`, `\\u202e`; a backslash doubled)."""
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_for_log(value: object) -> str:
    """`value` as text with every control character written as a visible escape (`\\n`, `\\x1b`,
    `\\u202e`); a backslash is doubled, so an escape in the output is never the client's own."""
    return _UNSAFE.sub(escaped_char, str(value))
