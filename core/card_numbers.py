"""Recognizes payment card numbers, so the OMS can refuse to receive them (PCI DSS scope) and
mask them wherever text is kept or logged. The detection rule lives here and nowhere else."""

from __future__ import annotations

import re
from typing import Any

# Digit groups joined by one common separator: "4111 1111 1111 1111", "4111.1111.1111.1111",
# "4111-1111-1111-1111". A run is found wherever it sits in text, glued to letters or not
# ("web-4111111111111111", "card4111111111111111x"); a card is any stretch of whole groups of it.
_SEPARATORS = " .-"
_RUN = re.compile(r"\d+(?:[ .\-]\d+)*")
_CANDIDATE = re.compile(r"^\d+(?:[ .\-]\d+)*$")
_GROUP_SPLIT = re.compile(r"[ .\-]")
MIN_DIGITS = 13
MAX_DIGITS = 19
MASK = "[card number]"

# (prefix ranges, allowed lengths) of the major networks. Requiring a network's prefix and length
# on top of the Luhn check keeps false positives rare: one random 16-digit id in ten passes Luhn
# alone, and marketplace order numbers are exactly such ids.
_NETWORKS: list[tuple[tuple[tuple[int, int], ...], frozenset[int]]] = [
    (((4, 4),), frozenset({13, 16, 19})),  # Visa
    (((51, 55), (2221, 2720)), frozenset({16})),  # Mastercard
    (((34, 34), (37, 37)), frozenset({15})),  # American Express
    (((6011, 6011), (644, 649), (65, 65)), frozenset({16, 17, 18, 19})),  # Discover
    (((3528, 3589),), frozenset({16, 17, 18, 19})),  # JCB
    (((300, 305), (36, 36), (38, 39)), frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (((62, 62),), frozenset({16, 17, 18, 19})),  # UnionPay
    (((50, 50), (56, 58), (6304, 6304), (6759, 6759), (676770, 676774)), frozenset(range(13, 20))),  # Maestro
]


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _network_matches(digits: str) -> bool:
    for ranges, lengths in _NETWORKS:
        if len(digits) not in lengths:
            continue
        for low, high in ranges:
            width = len(str(low))
            if low <= int(digits[:width]) <= high:
                return True
    return False


def _is_card(digits: str) -> bool:
    return MIN_DIGITS <= len(digits) <= MAX_DIGITS and _network_matches(digits) and luhn_valid(digits)


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Where card numbers sit in `text`: (start, end) of each stretch of whole digit groups that
    is one. A 13-digit stretch glued to a letter is not one: 13 digits is the length of EAN-13
    codes and of check-digit ids such as the OMS's own tracking numbers ("OMS" + 13 digits), while
    13-digit cards (old Visa, rare Maestro) are written on their own."""
    spans: list[tuple[int, int]] = []
    if len(text) < MIN_DIGITS:  # most keys and values of a body: checked for every request
        return spans
    for run in _RUN.finditer(text):
        if run.end() - run.start() < MIN_DIGITS:
            continue
        groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", run.group(0))]
        offset = run.start()
        for first in range(len(groups)):
            digits = ""
            for last in range(first, len(groups)):
                start, end = offset + groups[first][0], offset + groups[last][1]
                digits += text[offset + groups[last][0] : end]
                if len(digits) > MAX_DIGITS:
                    break
                if len(digits) == MIN_DIGITS and _glued_to_letter(text, start, end):
                    continue
                if _is_card(digits):
                    spans.append((start, end))
    return _merged(spans)


def _glued_to_letter(text: str, start: int, end: int) -> bool:
    return (start > 0 and text[start - 1].isalpha()) or (end < len(text) and text[end].isalpha())


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def looks_like_card_number(value: str | int) -> bool:
    """True when `value` is nothing but a card number: 13-19 digits (grouped with single spaces,
    dots or dashes or not) with a card network's prefix and length that pass the Luhn check."""
    text = str(value).strip()
    if not _CANDIDATE.match(text):
        return False
    return _is_card(_GROUP_SPLIT.sub("", text))


def contains_card_number(text: str) -> bool:
    """True when `text` is, or somewhere contains, something that looks like a card number."""
    return bool(_card_spans(text))


def mask_card_numbers(text: str) -> str:
    """`text` with every card number in it replaced by "[card number]": what may be kept or logged."""
    spans = _card_spans(text)
    if not spans:
        return text
    pieces, cursor = [], 0
    for start, end in spans:
        pieces += [text[cursor:start], MASK]
        cursor = end
    return "".join(pieces) + text[cursor:]


def mask_optional(text: str | None) -> str | None:
    return None if text is None else mask_card_numbers(text)


def card_number_fields(value: Any, path: str = "") -> list[str]:
    """The paths (`lines[0].sku` style) of the values in a JSON document that are, or carry, a
    card number; "" names the document itself. A key that carries one is named by its parent's
    path and the masked key."""
    if isinstance(value, dict):
        found: list[str] = []
        for key, item in value.items():
            name = mask_card_numbers(str(key))
            child = f"{path}.{name}" if path else name
            if name != str(key):
                found.append(child)
            found += card_number_fields(item, child)
        return found
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in card_number_fields(item, f"{path}[{i}]")]
    if isinstance(value, str) and contains_card_number(value):
        return [path]
    if isinstance(value, int) and not isinstance(value, bool) and looks_like_card_number(value):
        return [path]
    # JSON reads 4111111111111111.0 as a float: a whole one is the digits it was written with.
    if isinstance(value, float) and value.is_integer() and 0 < value < 10**MAX_DIGITS:
        return [path] if looks_like_card_number(int(value)) else []
    return []
