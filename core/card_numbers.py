"""Recognizes payment card numbers, so the OMS can refuse to receive them (PCI DSS scope)."""

from __future__ import annotations

import re
from typing import Any

# A value that is nothing but a card number, possibly grouped with spaces or dashes.
_CANDIDATE = re.compile(r"^\d(?:[ -]?\d){11,18}$")
# The same inside free text ("card 4111 1111 1111 1111 exp 12/30"), between non-digits.
_EMBEDDED = re.compile(r"(?<![\d-])\d(?:[ -]?\d){11,18}(?![\d])")

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


def looks_like_card_number(value: str | int) -> bool:
    """True for 13-19 digits (spaces or dashes allowed) with a card network's prefix and length
    that pass the Luhn check."""
    text = str(value).strip()
    if not _CANDIDATE.match(text):
        return False
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and _network_matches(digits) and luhn_valid(digits)


def contains_card_number(text: str) -> bool:
    """True when `text` is, or somewhere contains, something that looks like a card number."""
    if looks_like_card_number(text):
        return True
    return any(looks_like_card_number(match.group(0)) for match in _EMBEDDED.finditer(text))


def card_number_fields(value: Any, path: str = "") -> list[str]:
    """The paths (`lines[0].sku` style) of the values in a JSON document that are, or carry, a
    card number; "" names the document itself."""
    if isinstance(value, dict):
        return [
            f for key, item in value.items() for f in card_number_fields(item, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in card_number_fields(item, f"{path}[{i}]")]
    if isinstance(value, str) and contains_card_number(value):
        return [path]
    if isinstance(value, int) and not isinstance(value, bool) and looks_like_card_number(value):
        return [path]
    return []
