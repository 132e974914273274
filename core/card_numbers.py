"""Recognizes payment card numbers, so the OMS can refuse to receive them (PCI DSS scope) and
mask them wherever text is kept or logged. The detection rule lives here and nowhere else."""

from __future__ import annotations

import math
import re
from typing import Any

# Digit groups joined by one common separator: "4111 1111 1111 1111", "4111.1111.1111.1111",
# "4111-1111-1111-1111". A run is found wherever it sits in text, glued to letters or not
# ("web-4111111111111111", "card4111111111111111x"); a card is any stretch of whole groups of it
# but one of several groups inside the carrier's tracking number the run ends in (_carrier_from).
# A space or a dash is any of its forms, as digits are of any script: the no-break space a web page
# or a PDF pastes (U+00A0), the narrow one French writes numbers with (U+202F) and the other Unicode
# spaces; the dashes (a word processor's en dash, U+2013) and the minus sign; the full-width forms.
_SEPARATOR = r"[ .\-\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\u2010-\u2015\u2212\ufe58\ufe63\uff0d\uff0e]"
_RUN = re.compile(rf"\d+(?:{_SEPARATOR}\d+)*")
_CANDIDATE = re.compile(rf"^\d+(?:{_SEPARATOR}\d+)*$")
_GROUP_SPLIT = re.compile(_SEPARATOR)
_DIGIT_GROUP = re.compile(r"\d+")
MIN_DIGITS = 13
MAX_DIGITS = 19
MASK = "[card number]"
# The widths of the groups a carrier's tracking number of 20 or 22 digits is written in (USPS's,
# FedEx's): 4s, and a last 2 for 22 digits.
_CARRIER_SHAPES = ((4,) * 5, (4,) * 5 + (2,))
# FedEx Ground's 22-digit barcode numbers: "96", then 5 digits, then the 15 (check digit last) it shows.
_GROUND_96, _GROUND_96_SHOWN = "96", 15

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
    return len(digits) in _card_lengths(digits[:_PREFIX_DIGITS])


def _lengths_by_prefix() -> dict[str, frozenset[int]]:
    table: dict[str, set[int]] = {}
    for ranges, allowed in _NETWORKS:
        for low, high in ranges:
            for prefix in range(low, high + 1):
                table.setdefault(str(prefix), set()).update(allowed)
    return {prefix: frozenset(lengths) for prefix, lengths in table.items()}


# Each network prefix (some 600: "4", "51", ..., "2720", "676774") and the lengths its cards have.
_LENGTHS_BY_PREFIX = _lengths_by_prefix()
_PREFIX_WIDTHS = sorted({len(prefix) for prefix in _LENGTHS_BY_PREFIX})
_PREFIX_DIGITS = _PREFIX_WIDTHS[-1]
_NO_LENGTHS: frozenset[int] = frozenset()


def _card_lengths(prefix: str) -> frozenset[int]:
    """The lengths a card number that starts with `prefix` (its first _PREFIX_DIGITS digits) may
    have: those of every network whose ranges hold it. A few lookups, whatever the prefix."""
    lengths = _NO_LENGTHS
    for width in _PREFIX_WIDTHS:
        lengths = lengths | _LENGTHS_BY_PREFIX.get(prefix[:width], _NO_LENGTHS)
    return lengths


def _is_card(digits: str) -> bool:
    return MIN_DIGITS <= len(digits) <= MAX_DIGITS and _network_matches(digits) and luhn_valid(digits)


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit the Luhn check doubles, its two digits summed


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Where card numbers sit in `text`: (start, end) of each stretch of whole digit groups that
    is one. A 13-digit stretch glued to a letter is not one: 13 digits is the length of EAN-13
    codes and of check-digit ids such as the OMS's own tracking numbers ("OMS" + 13 digits), while
    13-digit cards (old Visa, rare Maestro) are written on their own.

    From each group of a run only the lengths its network allows are tried, each where a group
    ends, its Luhn sum read off sums kept along the run. Every stretch of up to 19 digits from
    every group was built and checked: 256 KiB of "4 4 4 ..." in a body took seconds of CPU, near
    the API function's 10 s timeout."""
    spans: list[tuple[int, int]] = []
    if len(text) < MIN_DIGITS:  # most keys and values of a body: checked for every request
        return spans
    for run in _RUN.finditer(text):
        if run.end() - run.start() < MIN_DIGITS:
            continue
        offset = run.start()
        groups = [(offset + m.start(), offset + m.end()) for m in _DIGIT_GROUP.finditer(run.group(0))]
        values = [int(char) for start, end in groups for char in text[start:end]]
        digits = "".join(map(str, values))  # ASCII, whatever script the digits were written in
        # The Luhn check doubles every second digit counting back from the last: in values[b:f],
        # those at indexes of f's parity (the last, at f - 1, is not). odd_doubled[j] sums
        # values[:j], the digits at odd indexes doubled; even_doubled[j], those at even ones.
        odd_doubled, even_doubled = [0], [0]
        for j, value in enumerate(values):
            odd_doubled.append(odd_doubled[-1] + (_DOUBLED[value] if j % 2 else value))
            even_doubled.append(even_doubled[-1] + (value if j % 2 else _DOUBLED[value]))
        carrier_from = _carrier_from([end - start for start, end in groups], digits)
        begins, last_ending_at, count = [], {}, 0
        for index, (start, end) in enumerate(groups):
            begins.append(count)
            count += end - start
            last_ending_at[count] = index
        for first, begin in enumerate(begins):
            if count - begin < MIN_DIGITS:
                break
            for length in _card_lengths(digits[begin : begin + _PREFIX_DIGITS]):
                finish = begin + length
                last = last_ending_at.get(finish)
                if last is None:
                    continue
                start, end = groups[first][0], groups[last][1]
                if length == MIN_DIGITS and _glued_to_letter(text, start, end):
                    continue
                if first != last and first >= carrier_from:
                    # Several groups inside the tracking number the run ends in ("9205 5000 1234
                    # 5678 9012 34"), whose stretches of 13 to 19 digits are a card's shape one time
                    # in ten. A card written as one group is a card wherever it sits.
                    continue
                sums = even_doubled if finish % 2 == 0 else odd_doubled
                if (sums[finish] - sums[begin]) % 10 == 0:
                    spans.append((start, end))
    return _merged(spans)


def _carrier_from(widths: list[int], digits: str) -> int:
    """The group at which the carrier's tracking number a run of groups of these `widths` (and
    these `digits`) ends in begins: its last 20 digits written in 4s, or 22 in 4s and a last 2, the
    whole of the 4s there (after a group of another width, or none: USPS's "420 90210 9400 1029
    5826 8770 3876 31" is a ZIP code and its number), ending in its check digit (_carrier_checked).
    len(widths) when it ends in none: a card with a group of 4 beside it and more ("1234 4111 1111
    1111 1111 5678", "4111 1111 1111 1111 1225 737"), or with one whose last digit is no check digit
    ("4111 1111 1111 1111 1225", nine in ten such expiries), is a card."""
    for shape in _CARRIER_SHAPES:
        start = len(widths) - len(shape)
        if start >= 0 and tuple(widths[start:]) == shape and (start == 0 or widths[start - 1] != shape[0]):
            return start if _carrier_checked(digits[-sum(shape) :]) else len(widths)
    return len(widths)


def _carrier_checked(number: str) -> bool:
    """Whether a 20- or 22-digit `number` ends in USPS's check digit (mod 10, weights 3 and 1 from
    the right; USPS's numbers and FedEx's SmartPost and SSCC ones), or is FedEx Ground's 96 number
    whose 15 digits shown end in theirs."""
    if len(number) == 22 and number.startswith(_GROUND_96) and _mod10_checked(number[-_GROUND_96_SHOWN:]):
        return True
    return _mod10_checked(number)


def _mod10_checked(number: str) -> bool:
    body = number[:-1]
    total = sum(int(char) * (3 if index % 2 == 0 else 1) for index, char in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == int(number[-1])


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
    dots or dashes, in any of their forms, or not) with a card network's prefix and length that
    pass the Luhn check."""
    text = str(value).strip()
    if not _CANDIDATE.match(text):
        return False
    # Its digits in ASCII, whatever script they were written in, as _card_spans reads them.
    return _is_card("".join(str(int(char)) for char in _GROUP_SPLIT.sub("", text)))


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
    path and the masked key. A path is only written out for a find or an object or array to look
    into: a body's scalars, nearly all of its values, carry none."""
    if isinstance(value, dict):
        found: list[str] = []
        for key, item in value.items():
            name = str(key)
            if contains_card_number(name):
                name = mask_card_numbers(name)
                found.append(_child(path, name))
            if isinstance(item, dict | list):
                found += card_number_fields(item, _child(path, name))
            elif _carries_card_number(item):
                found.append(_child(path, name))
        return found
    if isinstance(value, list):
        found = []
        for i, item in enumerate(value):
            if isinstance(item, dict | list):
                found += card_number_fields(item, f"{path}[{i}]")
            elif _carries_card_number(item):
                found.append(f"{path}[{i}]")
        return found
    return [path] if _carries_card_number(value) else []


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _carries_card_number(value: Any) -> bool:
    """Whether a JSON scalar is, or carries, a card number, as the text it is written as would:
    a sign or a fraction beside one ("-4111111111111111", "4111111111111111.5") does not hide it."""
    if isinstance(value, str):
        return contains_card_number(value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return looks_like_card_number(abs(value))
    if isinstance(value, float) and math.isfinite(value):
        # JSON reads 4111111111111111.0 as a float: a whole one is the digits it was written with.
        if value.is_integer():
            return abs(value) < 10**MAX_DIGITS and looks_like_card_number(int(abs(value)))
        # One with a fraction is below 2**52, written out by repr digit by digit, as a body writes it.
        return contains_card_number(repr(value))
    return False
