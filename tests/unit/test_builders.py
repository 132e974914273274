"""The test builders' own promises, where a test elsewhere would fail at random without them."""

from __future__ import annotations

from core.card_numbers import contains_card_number
from tests.builders import unique_text

# A uuid4().hex the card check reads as a card number (found by drawing uuid4s: about one in 6,000).
CARD_LIKE_UUID_HEX = "47dbf564047341649506ef5f113d6d07"


def test_unique_text_is_never_read_as_a_card_number_even_from_a_uuid_that_is():
    assert contains_card_number(CARD_LIKE_UUID_HEX)
    text = unique_text(CARD_LIKE_UUID_HEX)
    assert not contains_card_number(text)
    assert not any(character.isdigit() for character in unique_text())


def test_unique_text_keeps_a_uuid_s_uniqueness():
    assert unique_text(CARD_LIKE_UUID_HEX) == "kndbflmkgknjkhmkplgmeflfhhjdmdgn"
    drawn = {unique_text() for _ in range(1_000)}
    assert len(drawn) == 1_000
    assert {len(text) for text in drawn} == {32}
