"""Import line signatures (core.import_service.origin_signature): what a line says about its import
is bound to its body and to its import's key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.import_service import OrderOrigin, origin_signature

KEY = "k" * 64
ORIGIN = OrderOrigin("imp_1", 4, (4, 5), "csv")
BODY = '{"channel":"web","external_id":"ext-1"}'


@pytest.mark.parametrize(
    ("key", "origin", "body"),
    [
        ("x" * 64, ORIGIN, BODY),
        (KEY, replace(ORIGIN, import_id="imp_2"), BODY),
        (KEY, replace(ORIGIN, line=5), BODY),
        (KEY, replace(ORIGIN, line_numbers=(4, 6)), BODY),
        (KEY, replace(ORIGIN, format="jsonl"), BODY),
        (KEY, ORIGIN, BODY.replace("ext-1", "ext-2")),
    ],
)
def test_changing_anything_a_line_says_changes_its_signature(key: str, origin: OrderOrigin, body: str):
    assert origin_signature(key, origin, body) != origin_signature(KEY, ORIGIN, BODY)


def test_line_numbers_that_the_queue_leaves_out_sign_the_same_as_none():
    # The queue carries line numbers only when they differ from the first line: (4, 4) arrives as ().
    single = OrderOrigin("imp_1", 4, (4, 4), "jsonl")

    assert origin_signature(KEY, single, BODY) == origin_signature(KEY, replace(single, line_numbers=()), BODY)
    assert origin_signature(KEY, ORIGIN, BODY) == origin_signature(KEY, ORIGIN, BODY)
