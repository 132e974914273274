"""The tests' unique ids are never read as card numbers, so a test sending one never fails at random."""

from __future__ import annotations

import re

from core.card_numbers import MIN_DIGITS, contains_card_number
from tests.e2e.client import unique

# A uuid4().hex the card check reads as a card number (found by drawing uuid4s: about one in 6,000),
# which is why an Idempotency-Key or external_id is never a whole uuid4's hex.
CARD_LIKE_UUID_HEX = "47dbf564047341649506ef5f113d6d07"


def test_a_unique_id_holds_too_few_digits_in_a_row_to_be_read_as_a_card_number():
    assert contains_card_number(CARD_LIKE_UUID_HEX)
    assert re.fullmatch(r"key-[0-9a-f]{12}", unique("key"))
    assert MIN_DIGITS > 12
    assert not contains_card_number("key-" + CARD_LIKE_UUID_HEX[6:18])  # its digit run, twelve long
    assert len({unique("key") for _ in range(1_000)}) == 1_000
