"""Recognising payment card numbers: every major network is caught, ordinary ids are left alone."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.card_numbers import (
    card_number_fields,
    contains_card_number,
    looks_like_card_number,
    luhn_valid,
    mask_card_numbers,
)
from plugins.flat_rate_carrier import tracking_number


def check_digit(partial: str) -> str:
    """The Luhn check digit that completes `partial` (an independent implementation: the oracle)."""
    total = 0
    for index, char in enumerate(reversed(partial)):
        value = int(char)
        if index % 2 == 0:  # these digits are doubled once the check digit is appended
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def card(prefix: str, length: int) -> str:
    """A Luhn-valid number of `length` digits starting with `prefix`."""
    body = prefix + "0" * (length - len(prefix) - 1)
    return body + check_digit(body)


def breaks_luhn(number: str) -> str:
    """The same number with a wrong check digit."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


# --- Luhn ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digits",
    ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "79927398713", "0"],
)
def test_luhn_accepts_numbers_with_a_correct_check_digit(digits: str):
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["4111111111111112", "5555555555554440", "79927398710", "1234567890123456"])
def test_luhn_refuses_numbers_with_a_wrong_check_digit(digits: str):
    assert not luhn_valid(digits)


def test_the_oracle_agrees_with_published_test_numbers():
    assert card("411111111111111", 16) == "4111111111111111"
    assert check_digit("7992739871") == "3"


# --- Every network, at its prefixes and lengths ----------------------------------------------------

PUBLISHED_TEST_CARDS = {
    "visa-16": "4111111111111111",
    "visa-16-b": "4012888888881881",
    "visa-13": "4222222222222",
    "mastercard-5": "5555555555554444",
    "mastercard-51": "5105105105105100",
    "mastercard-2-series": "2223003122003222",
    "amex-37": "378282246310005",
    "amex-34": "371449635398431",
    "discover": "6011111111111117",
    "discover-b": "6011000990139424",
    "jcb": "3530111333300000",
    "jcb-b": "3566002020360505",
    "diners-14": "30569309025904",
    "diners-38": "38520000023237",
    "unionpay": "6200000000000005",
    "maestro-6759": "6759649826438453",
}


@pytest.mark.parametrize("number", PUBLISHED_TEST_CARDS.values(), ids=PUBLISHED_TEST_CARDS.keys())
def test_published_test_card_numbers_are_recognised(number: str):
    assert luhn_valid(number)
    assert looks_like_card_number(number)


NETWORKS = [
    # (network, prefix, length)
    ("visa", "4", 13),
    ("visa", "4", 16),
    ("visa", "4", 19),
    *[("mastercard", str(prefix), 16) for prefix in range(51, 56)],
    ("mastercard", "2221", 16),
    ("mastercard", "2500", 16),
    ("mastercard", "2720", 16),
    ("amex", "34", 15),
    ("amex", "37", 15),
    ("discover", "6011", 16),
    ("discover", "6011", 19),
    ("discover", "644", 16),
    ("discover", "649", 16),
    ("discover", "65", 16),
    ("jcb", "3528", 16),
    ("jcb", "3589", 19),
    ("diners", "300", 14),
    ("diners", "305", 14),
    ("diners", "36", 14),
    ("diners", "38", 16),
    ("diners", "39", 16),
    ("unionpay", "62", 16),
    ("unionpay", "62", 19),
    ("maestro", "50", 13),
    ("maestro", "56", 16),
    ("maestro", "58", 19),
    ("maestro", "6304", 16),
    ("maestro", "6759", 18),
    ("maestro", "676770", 16),
    ("maestro", "676774", 19),
]


@pytest.mark.parametrize(("network", "prefix", "length"), NETWORKS, ids=[f"{n}-{p}-{ln}" for n, p, ln in NETWORKS])
def test_every_networks_prefixes_and_lengths_are_recognised(network: str, prefix: str, length: int):
    number = card(prefix, length)

    assert looks_like_card_number(number), f"{network} {number}"


@pytest.mark.parametrize(("network", "prefix", "length"), NETWORKS, ids=[f"{n}-{p}-{ln}" for n, p, ln in NETWORKS])
def test_a_networks_number_with_a_wrong_check_digit_is_not_a_card(network: str, prefix: str, length: int):
    assert not looks_like_card_number(breaks_luhn(card(prefix, length)))


@pytest.mark.parametrize(
    ("prefix", "length"),
    [
        ("2220", 16),  # just below the Mastercard 2-series
        ("2721", 16),  # just above it
        ("4", 14),  # Visa is 13, 16 or 19 digits
        ("4", 15),
        ("51", 15),  # Mastercard is 16 digits
        ("37", 16),  # Amex is 15
        ("1", 16),
        ("7", 16),
        ("8", 16),
        ("9", 16),
    ],
)
def test_a_luhn_valid_number_outside_every_networks_prefix_or_length_is_not_a_card(prefix: str, length: int):
    assert not looks_like_card_number(card(prefix, length))


# --- Formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "3782 822463 10005",
        "5555-5555 5555-4444",
        " 4111111111111111 ",
        "\t4111111111111111\n",
        4111111111111111,
        378282246310005,
        "4111\u00a01111\u00a01111\u00a01111",
        "4111\u202f1111\u202f1111\u202f1111",
        "4111\u20131111\u20131111\u20131111",
        "４１１１－１１１１－１１１１－１１１１",
    ],
    ids=[
        "spaces",
        "dashes",
        "amex-grouping",
        "mixed-separators",
        "padded",
        "tab-newline",
        "int",
        "int-amex",
        "no-break-spaces",
        "narrow-no-break-spaces",
        "en-dashes",
        "full-width",
    ],
)
def test_a_card_number_grouped_with_spaces_or_dashes_or_given_as_an_int_is_recognised(value: str | int):
    assert looks_like_card_number(value)


# Every form of a space or a dash the rule names (README "No card data"): a card grouped by any of
# them is one. Only the no-break, narrow and en-dash forms were checked, and the minus sign or the
# ideographic space could have been dropped from the rule unnoticed.
EVERY_SEPARATOR = [
    "\u00a0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u202f", "\u205f", "\u3000",
    *map(chr, range(0x2010, 0x2016)), "\u2212", "\ufe58", "\ufe63", "\uff0d", "\uff0e",
]  # fmt: skip


@pytest.mark.parametrize("separator", EVERY_SEPARATOR, ids=[unicodedata.name(s) for s in EVERY_SEPARATOR])
def test_a_card_number_grouped_with_any_form_of_space_dash_or_dot_is_found_and_masked(separator: str):
    grouped = separator.join(["4111", "1111", "1111", "1111"])

    assert looks_like_card_number(grouped)
    assert mask_card_numbers(f"note: {grouped}.") == "note: [card number]."


# --- What must pass: ids and numbers that merely look long ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "112-1234567-1234567",  # a marketplace order number (17 digits, Luhn aside: no network prefix)
        "114-9876543-2109876",
        "4111111111111112",  # Visa prefix, fails Luhn: a random 16-digit id
        "5555555555554440",
        "1234567890123456",  # a random 16-digit id
        "1234567890123452",  # Luhn-valid 16 digits with a prefix no network issues
        "9999999999999995",  # Luhn-valid, no network
        "0000000000000000",  # Luhn-valid, no network
        "411111111111",  # 12 digits: too short for Visa
        "4111",
        "41111111111111111111",  # 20 digits: too long for any card
        "+1 415 555 0100",  # phone numbers
        "415-555-0100",
        "0044 20 7946 0958",
        "web-1001",
        "ord_kz5wpvn5t25my2wrcpwjmhpn",
        "94105",  # postal codes
        "100-0001",
        "SW1A 1AA",
        "4111 1111 1111 111x",
        "4111  1111 1111 1111",  # two separators in a row is not a card grouping
        "",
        "   ",
        0,
        20261122,
    ],
)
def test_ordinary_ids_codes_and_phone_numbers_are_not_card_numbers(value: str | int):
    assert not looks_like_card_number(value)


# --- Properties -----------------------------------------------------------------------------------


@given(st.text(alphabet="0123456789", min_size=14, max_size=14))
def test_any_visa_prefixed_16_digit_number_with_a_correct_check_digit_is_detected(middle: str):
    partial = "4" + middle
    number = partial + check_digit(partial)

    assert looks_like_card_number(number)
    assert looks_like_card_number(" ".join(number[i : i + 4] for i in range(0, 16, 4)))
    assert looks_like_card_number("-".join(number[i : i + 4] for i in range(0, 16, 4)))


@given(st.text(alphabet="0123456789", min_size=14, max_size=14), st.integers(min_value=1, max_value=9))
def test_any_visa_prefixed_16_digit_number_with_a_wrong_check_digit_is_not_detected(middle: str, offset: int):
    partial = "4" + middle
    wrong = (int(check_digit(partial)) + offset) % 10

    assert not looks_like_card_number(partial + str(wrong))


@given(st.text(alphabet="0123456789", min_size=1, max_size=12))
def test_no_number_shorter_than_13_digits_is_a_card_number(digits: str):
    assert not looks_like_card_number(digits)


@given(st.text(min_size=1, max_size=40).filter(lambda s: not any(c.isdigit() for c in s)))
def test_text_without_digits_is_never_a_card_number(text: str):
    assert not looks_like_card_number(text)


# --- Separators, prefixes and text around a number ------------------------------------------------

SEPARATED = ["4111.1111.1111.1111", "4111-1111-1111-1111", "4111 1111 1111 1111", "4111.1111-1111 1111"]
SURROUNDINGS = ["{}", "web-{}", "web_{}", "web{}", "{}-x", "ord {} please", "a.{}.b", "order-12-{}", "{}/7"]


@pytest.mark.parametrize("number", ["4111111111111111", *SEPARATED, "378282246310005", "4222222222222"])
@pytest.mark.parametrize("around", SURROUNDINGS[:2] + SURROUNDINGS[4:])
def test_a_card_number_with_any_common_separator_and_anything_around_it_is_found_and_masked(number, around):
    text = around.format(number)

    assert contains_card_number(text)
    masked = mask_card_numbers(text)
    assert masked == around.format("[card number]")
    assert not contains_card_number(masked)


@pytest.mark.parametrize("number", ["4111111111111111", *SEPARATED, "378282246310005"])
@pytest.mark.parametrize("around", ["web_{}", "web{}", "x{}y"])
def test_a_card_number_glued_to_letters_is_found(number, around):
    assert mask_card_numbers(around.format(number)) == around.format("[card number]")


def test_dots_are_a_separator_of_a_whole_value_too():
    assert looks_like_card_number("4111.1111.1111.1111")
    assert looks_like_card_number("3782.822463.10005")


def test_a_13_digit_run_glued_to_a_letter_is_an_id_not_a_card():
    # 4222222222222 is Visa's 13-digit test card; written on its own it is one (above).
    assert not contains_card_number("OMS4222222222222")
    assert not contains_card_number("4222222222222X")
    assert contains_card_number("OMS-4222222222222")


def test_text_without_a_card_number_is_left_as_it_is():
    text = "order 112-1234567-1234567, call 415-555-0100 on 2026-12-01, total 1234.56"

    assert mask_card_numbers(text) == text


def test_every_card_number_in_a_text_is_masked():
    text = "first 4111111111111111, then 5555.5555.5555.4444 and web-378282246310005"

    assert mask_card_numbers(text) == "first [card number], then [card number] and web-[card number]"


@pytest.mark.parametrize(
    "digits", ["４１１１１１１１１１１１１１１１", "٤١١١١١١١١١١١١١١١"], ids=["fullwidth", "arabic-indic"]
)
def test_a_card_number_in_other_scripts_digits_is_found(digits: str):
    assert contains_card_number(f"id {digits}")


def test_a_card_number_in_a_key_or_as_a_float_is_a_card_field_named_without_the_number():
    document = {"notes": {"web-4111.1111.1111.1111": "x"}, "total": 4111111111111111.0, "ok": 20261201.0}

    fields = card_number_fields(document)

    assert fields == ["notes.web-[card number]", "total"]


# --- The OMS's own ids never trip the rule --------------------------------------------------------


def test_no_flat_rate_tracking_number_looks_like_a_card_number():
    # "OMS" + 13 digits: before 13-digit runs glued to letters were excluded, 1.4 % of these passed
    # as a 13-digit Visa or Maestro number (prefix 4 or 5x, Luhn-valid by chance): some 280 of these
    # 20,000 (a hash's digits: as many in every 20,000 shipment ids as in 100,000, at a fifth of the CPU).
    tripped = [number for i in range(20_000) if contains_card_number(number := tracking_number(f"shp_{i:08d}"))]

    assert tripped == []


def spans_of_every_stretch(text: str) -> list[tuple[int, int]]:
    """The oracle: every stretch of whole digit groups of every run built and checked as a number,
    as the scan did before it tried only the lengths a network allows; a stretch of several groups
    inside the carrier's number a run ends in is part of that number (carrier_number_from)."""
    import re

    from core.card_numbers import _glued_to_letter, _is_card

    spans = []
    for run in re.finditer(r"\d+(?:[ .\-]\d+)*", text):
        groups = [(run.start() + m.start(), run.start() + m.end()) for m in re.finditer(r"\d+", run.group(0))]
        widths = [end - start for start, end in groups]
        run_digits = "".join(str(int(c)) for s, e in groups for c in text[s:e])
        for first in range(len(groups)):
            for last in range(first, len(groups)):
                start, end = groups[first][0], groups[last][1]
                digits = "".join(str(int(c)) for s, e in groups[first : last + 1] for c in text[s:e])
                if len(digits) == 13 and _glued_to_letter(text, start, end):
                    continue
                if first != last and first >= carrier_number_from(widths, run_digits):
                    continue
                if _is_card(digits):
                    spans.append((start, end))
    return merged_as_the_oracle_would(spans)


def merged_as_the_oracle_would(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The oracle's own merge of overlapping spans (a span may lie wholly inside another)."""
    covered = sorted({i for start, end in spans for i in range(start, end)})
    merged: list[tuple[int, int]] = []
    for i in covered:
        if merged and merged[-1][1] == i:
            merged[-1] = (merged[-1][0], i + 1)
        else:
            merged.append((i, i + 1))
    return merged


def carrier_number_from(widths: list[int], digits: str) -> int:
    """The group a run's last 20 or 22 digits written in 4s (but a last 2) begin at, the whole of
    the 4s there, with USPS's check digit (FedEx Ground's 96 numbers: over their last 15);
    len(widths) when it ends in no such number."""
    for shape in ([4] * 5, [4] * 5 + [2]):
        start = len(widths) - len(shape)
        if start >= 0 and widths[start:] == shape and (start == 0 or widths[start - 1] != 4):
            number = digits[-sum(shape) :]
            checked = number[7:] if len(number) == 22 and number.startswith("96") else ""
            if any(n and usps_check_digit(n[:-1]) == n[-1] for n in (number, checked)):
                return start
    return len(widths)


def masked_as_the_oracle_would(text: str) -> str:
    pieces, cursor = [], 0
    for start, end in spans_of_every_stretch(text):
        pieces += [text[cursor:start], "[card number]"]
        cursor = end
    return "".join(pieces) + text[cursor:]


card_texts = st.lists(
    st.one_of(
        st.sampled_from(["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "x"]),
        st.text(alphabet="0123456789 .-a٤", max_size=12),
        st.integers(0, 10**19).map(str),
    ),
    max_size=12,
).map("".join)


@given(card_texts)
def test_the_scan_finds_what_trying_every_stretch_of_every_run_finds(text: str):
    assert mask_card_numbers(text) == masked_as_the_oracle_would(text)


def test_a_run_of_ten_thousand_single_digit_groups_costs_a_few_calls_per_group():
    # 256 KiB of "4 4 4 ..." in a body: every stretch of up to 19 digits from every group was built
    # and checked, some 30 function calls a group (seconds of CPU, near the API function's 10 s
    # timeout). From each group only the lengths its network allows are now tried, each Luhn sum
    # read off running sums. The work is counted in Python function calls, not timed: calls a group,
    # as many in a run of 10,000 groups as in the body's 100,000 (a second of CPU under the profiler).
    import sys

    groups = 10_000
    text = " ".join(["4"] * groups) + " 4111 1111 1111 1111"
    calls = [0]

    def count(frame, event, arg):
        calls[0] += event == "call"

    sys.setprofile(count)
    try:
        masked = mask_card_numbers(text)
    finally:
        sys.setprofile(None)

    assert masked.endswith(" [card number]") and masked.count("[card number]") == 1
    assert calls[0] < 3 * groups


def test_every_card_field_is_named_by_its_whole_path_in_document_order():
    card = "4111111111111111"
    document = {
        "lines": [{"sku": "A", "note": f"ref {card}"}, {"sku": int(card)}, [card, ["ok", f"x-{card}"]]],
        f"web-{card}": {"inner": card, "fine": "ok"},
        "flags": [True, 4111111111111111.0, None, 12],
        "ok": {"deep": {"deeper": [{"s": "no card here"}]}},
    }

    assert card_number_fields(document) == [
        "lines[0].note",
        "lines[1].sku",
        "lines[2][0]",
        "lines[2][1][1]",
        "web-[card number]",
        "web-[card number].inner",
        "flags[1]",
    ]
    assert card_number_fields([card, {"a": card}]) == ["[0]", "[1].a"]
    assert card_number_fields(card) == [""]
    assert card_number_fields({"a": [1, "b", {"c": None}]}) == []


# --- Carriers' tracking numbers never trip the rule ------------------------------------------------

TRACKING_NUMBERS = {
    # USPS, 22 and 20 digits written in groups of 4: each of these holds a stretch of whole groups
    # with a card's prefix, length and Luhn sum ("5826 8770 3876 31", a Maestro's shape)
    "usps-22-a": "9400 1029 5826 8770 3876 31",
    "usps-22-b": "9400 1679 3814 4494 5443 74",
    "usps-22-c": "9400 1521 3854 3525 5667 38",
    "usps-22-dashes": "9400-1897-5034-2810-0118-38",
    "usps-22-plain": "9400102958268770387631",
    "usps-22-brief": "9400 1000 0000 0000 0000 00",
    "usps-22-priority": "9205 5000 0000 0000 0000 00",
    "usps-20": "9400 1000 0000 0000 0000",
    "usps-impb": "420 90210 9400 1029 5826 8770 3876 31",
    "usps-intl": "EA 123 456 785 US",
    "ups": "1Z999AA10123456784",
    "ups-spaced": "1Z 999 AA1 01 2345 678 4",
    "fedex-12": "7489 8253 4413",
    "fedex-12-plain": "748982534413",
    "fedex-20": "9611 0191 2345 6789 0128",
    "fedex-22": "9612 0191 2345 6789 0123 45",
    "fedex-22-plain": "9612019123456789012345",
}


@pytest.mark.parametrize("number", TRACKING_NUMBERS.values(), ids=TRACKING_NUMBERS.keys())
def test_common_carriers_tracking_numbers_are_not_card_numbers(number: str):
    assert not contains_card_number(number)
    assert mask_card_numbers(number) == number


CARD_SHAPED = {
    "grouped": "4111 1111 1111 1111",
    "after-a-short-group": "order-12-4111-1111-1111-1111",
    "amex-grouping": "ref 3782 822463 10005",
    "one-stretch-after-4-digits": "9400 4111111111111111",
    "one-stretch-before-4-digits": "4111111111111111 9400",
    "grouped-then-a-cvv": "4111 1111 1111 1111 737",
    "mixed-separators": "5555-5555 5555-4444",
    # A run that goes on in groups of 4 but is no carrier's number: 20 or 22 digits, all in 4s but
    # a last 2, ending the run. Each of these passed while any group of 4 beside a card exempted it.
    "between-two-groups-of-4": "1234 4111 1111 1111 1111 5678",
    "then-an-expiry-and-a-cvv": "4111 1111 1111 1111 1225 737",
    "then-a-phone-number": "4111 1111 1111 1111 0207 946 0000",
    "then-a-phone-number-in-4s": "5555 5555 5555 4444 0612 3456 7890",
    "after-two-groups-of-4": "ref 2026 0001 4111-1111-1111-1111",
    "amex-then-a-group-of-4": "3782 822463 10005 1225",
}


@pytest.mark.parametrize("text", CARD_SHAPED.values(), ids=CARD_SHAPED.keys())
def test_card_shaped_strings_beside_tracking_numbers_are_still_refused(text: str):
    assert contains_card_number(text)


def test_a_card_and_one_group_of_4_pass_only_with_a_carriers_check_digit():
    # The trade-off README's "No card data" states: a 16-digit card written in 4s with one more
    # group of 4 before or after it (an expiry written as MMYY), and nothing else in its run, has
    # the shape of a USPS or FedEx 20-digit number in 4s; it passes when its last digit is also
    # USPS's check digit of the 19 before (one such text in ten). Written any other way the card
    # is refused.
    assert contains_card_number("4111 1111 1111 1111 1225")
    assert contains_card_number("2026 4111 1111 1111 1111")
    assert not contains_card_number("4111 1111 1111 1111 0825")
    assert not contains_card_number("2027 4111 1111 1111 1111")
    assert contains_card_number("4111 1111 1111 1111 12/25")
    assert contains_card_number("4111 1111 1111 1111 1225 8")
    assert contains_card_number("4111111111111111 1225")


def usps_check_digit(digits: str) -> str:
    """USPS's mod 10: weights 3 and 1 from the right."""
    total = sum(int(char) * (3 if index % 2 == 0 else 1) for index, char in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


def test_no_fedex_ground_96_number_written_in_fours_looks_like_a_card_number():
    # 96 and 20 digits, whose check digit is USPS's over its last 15 (the number FedEx shows): the
    # 22 digits end in a check digit of their own one time in ten only.
    import random

    shuffled = random.Random(96)
    tripped = []
    for _ in range(5_000):
        body = "96" + "".join(shuffled.choice("0123456789") for _ in range(19))
        number = body + usps_check_digit(body[7:])
        written = " ".join(number[i : i + 4] for i in range(0, 22, 4))
        if contains_card_number(written):
            tripped.append(written)

    assert tripped == []


@pytest.mark.parametrize("length", [20, 22])
def test_no_usps_number_written_in_fours_looks_like_a_card_number(length: int):
    # 22 digits in 4s: 6 % of these passed as a card (a stretch of 4 or 4½ groups inside them): some
    # 120 of these 2,000, as many in every 2,000 as in 10,000, at a fifth of the CPU.
    import random

    shuffled = random.Random(length)
    tripped = []
    for prefix in ("94001", "92055", "94055", "93612", "92701"):
        for _ in range(400):
            body = prefix + "".join(shuffled.choice("0123456789") for _ in range(length - 1 - len(prefix)))
            number = body + usps_check_digit(body)
            written = " ".join(number[i : i + 4] for i in range(0, length, 4))
            if contains_card_number(written):
                tripped.append(written)

    assert tripped == []


def test_a_card_between_two_groups_of_4_is_refused_even_when_it_ends_in_a_carriers_check_digit():
    # Its last 20 digits in 4s end in USPS's check digit of the 19 before them (one such text in
    # ten), but a group of 4 before them makes the run no carrier's number: the card is a card.
    assert usps_check_digit("4111111111111111567") == "7"

    assert contains_card_number("1234 4111 1111 1111 1111 5677")
    assert mask_card_numbers("ref 1234 4111 1111 1111 1111 5677") == "ref 1234 [card number] 5677"


def test_a_card_inside_a_longer_card_is_masked_with_all_of_the_longer_ones_digits():
    # "4 4111111111111111 14" is a 19-digit Visa number; the 16 digits inside it are one too. The
    # shorter one ends first: none of the longer one's digits after it may be left unmasked.
    assert looks_like_card_number("4 4111111111111111 14")

    assert mask_card_numbers("card 4 4111111111111111 14 expired") == "card [card number] expired"


@pytest.mark.parametrize(
    "value",
    [4111111111111111.5, -4111111111111111, -4111111111111111.0, 378282246310005.25],
    ids=["with-a-fraction", "negative", "negative-float", "amex-with-a-fraction"],
)
def test_a_card_number_sent_as_a_json_number_with_a_fraction_or_a_sign_is_a_card_field(value: float | int):
    # Written as text ("4111111111111111.5", "-4111111111111111") each carries a card number and
    # is refused; as a JSON number it passed: whole positive numbers alone were checked.
    assert card_number_fields({"note": value}) == ["note"]


def test_a_json_number_that_carries_no_card_number_is_no_card_field():
    document = {"a": 12.5, "b": -20261201, "c": 1e300, "d": float("nan"), "e": float("-inf"), "f": -0.0, "g": 1e-7}

    assert card_number_fields(document) == []
