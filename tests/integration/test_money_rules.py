"""Money rules through the API: promo codes that do not stack, and one sku on many lines."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.test_handlers import api, event, seeded  # noqa: F401 (a fixture)


def place(**changes: Any) -> tuple[int, dict]:
    evt = event("api_place_order.json")
    evt["body"] = json.dumps({**json.loads(evt["body"]), **changes})
    for headers in (evt["headers"], evt["multiValueHeaders"]):
        headers.pop("Idempotency-Key")
    return api(evt)


def test_two_percent_off_codes_that_do_not_stack_are_422_naming_both(seeded):  # noqa: F811
    status, body = place(lines=[{"sku": "TSHIRT-BLK-M", "quantity": 6}], promo_codes=["WELCOME10", "BIGBASKET20"])

    assert status == 422
    assert body["error"]["code"] == "promo_codes_do_not_stack"
    assert [d["field"] for d in body["error"]["details"]] == ["promo_codes[0]", "promo_codes[1]"]


def test_a_sku_split_over_lines_keeps_the_lines_and_costs_what_one_line_would(seeded):  # noqa: F811
    status, whole = place(external_id="web-whole", lines=[{"sku": "TSHIRT-BLK-M", "quantity": 3}])
    assert status == 201, whole
    status, split = place(external_id="web-split", lines=[{"sku": "TSHIRT-BLK-M", "quantity": 1}] * 3)
    assert status == 201, split

    assert [(line["line_id"], line["quantity"]) for line in split["lines"]] == [("L1", 1), ("L2", 1), ("L3", 1)]
    assert split["totals"] == whole["totals"]
