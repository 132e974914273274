"""How an Idempotency-Key's record keeps the answer it replays (functions/api/idempotency.py): as
powertools stores it (the serializer's dict dumped as JSON, keys sorted) and reads it back."""

from __future__ import annotations

import json
from typing import Any

from functions.api.idempotency import ANSWERS

ORDER_ANSWER = {
    "id": "ord_x7k2m9q4r1t8w3y6z5a0b2c4",
    "status": "pending",
    "customer": {"id": "cus_1", "email": "zoë@example.com", "name": "Zoë Ångström"},
    "lines": [{"line_id": f"L{n}", "sku": f"SKU-{n}", "quantity": n,
               "unit_price": {"amount": "19.99", "currency": "EUR"}} for n in range(1, 4)],
    "shipping_address": {"name": "Zoë Ångström", "line1": "Straße 1", "city": "Köln", "country": "DE"},
    "totals": {"grand_total": {"amount": "119.94", "currency": "EUR"}},
}  # fmt: skip


def stored_and_read(answer: dict[str, Any]) -> tuple[str, Any]:
    """The record's `data` as powertools writes it, and what a replay reads from it."""
    data = json.dumps(ANSWERS.to_dict(answer), sort_keys=True)
    return data, ANSWERS.from_dict(json.loads(data))


def test_an_orders_answer_is_kept_deflated_and_replays_as_the_same_json_in_its_order():
    data, replayed = stored_and_read(ORDER_ANSWER)

    assert len(data) < len(json.dumps(ORDER_ANSWER)) / 2
    assert "Zoë" not in data and "ord_x7k2m9q4r1t8w3y6z5a0b2c4" not in data
    assert json.dumps(replayed) == json.dumps(ORDER_ANSWER)  # its values, and its keys in their order


def test_an_answer_deflating_would_not_shorten_is_kept_as_it_is():
    data, replayed = stored_and_read({"id": "wh_3f9a"})

    assert json.loads(data) == {"id": "wh_3f9a"}
    assert replayed == {"id": "wh_3f9a"}


def test_a_record_stored_before_answers_were_deflated_replays_its_plain_answer():
    # powertools' own form: the answer as JSON, its keys sorted.
    stored_before = json.loads(json.dumps(ORDER_ANSWER, sort_keys=True))

    assert ANSWERS.from_dict(stored_before) == ORDER_ANSWER
