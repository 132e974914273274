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


# What escape_for_log escapes, and the characters that show nothing (the zero-width space, the word
# joiner, the byte order mark: core.models refuses them in names).
UNSAFE_IN_REFERENCE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff\\]"
)


def shown_reference(reference: str) -> str:
    """A payment gateway's `reference` as the OMS shows it (core.shown_references): every control,
    bidi or invisible character written as a visible escape (`\\u202e`), a backslash doubled."""
    return UNSAFE_IN_REFERENCE.sub(escaped_char, reference)
