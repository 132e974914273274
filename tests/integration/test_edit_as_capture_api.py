"""PATCH /orders/{id} in-process on moto: totals priced exactly as capture prices the edited order
(a promotion's minimum judged on the order as edited), and an edit that changes nothing is no edit."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.builders import address_body, location_body, order_body, product_body
from tests.e2e.client import unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/BIG", json=product_body("60.00")).status_code == 201
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        for sku in ("BIG", "MUG"):
            assert started.put(f"/inventory/{sku}/wh-east", json={"on_hand": 100}).status_code == 200
        yield started


def body(*lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    return order_body(external_id=f"web-c{next(_orders)}", lines=[{"sku": s, "quantity": q} for s, q in lines],
                      **overrides)  # fmt: skip


def placed(api: InProcessApi, *lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    answer = api.post("/orders", json=body(*lines, **overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


def allocated(api: InProcessApi, *lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    return run_to_allocated(api, placed(api, *lines, **overrides)["id"])


def edit(api: InProcessApi, order: dict[str, Any], edit_body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    answer = api.request("PATCH", f"/orders/{order['id']}", json=edit_body, headers={"If-Match": str(order["version"])})
    assert answer.status_code == status, answer.text
    return answer.json()


def history(api: InProcessApi, order_id: str) -> list[dict[str, Any]]:
    return api.get(f"/orders/{order_id}/history").json()["items"]


def priced_lines(order: dict[str, Any]) -> list[tuple[str, int, str, str, str]]:
    return [(line["sku"], line["quantity"], line["unit_price"]["amount"], line["discount"]["amount"],
             line["tax"]["amount"]) for line in order["lines"]]  # fmt: skip


# --- Totals recomputed exactly as at capture --------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "before", "after"),
    [
        (["BIGBASKET20"], [("BIG", 2)], [("BIG", 1)]),  # 120.00 earned 20% off; 60.00 does not
        (["BIGBASKET20"], [("BIG", 1)], [("BIG", 2)]),  # 60.00 earned nothing; 120.00 earns 20% off
        (["SHIPFREE50"], [("BIG", 1)], [("MUG", 1)]),  # 60.00 shipped free; 12.50 pays shipping
        (["BIGBASKET20", "SAVE5"], [("BIG", 2)], [("BIG", 1), ("MUG", 1)]),  # the 5.00 off stays
    ],
)
def test_an_edit_is_priced_as_capture_prices_the_edited_order(api, codes, before, after):
    order = allocated(api, *before, promo_codes=codes)
    lines = [{"sku": sku, "quantity": quantity} for sku, quantity in after]

    edited = edit(api, order, {"lines": lines})

    as_new = placed(api, *after, promo_codes=codes)
    assert edited["totals"] == as_new["totals"]
    assert priced_lines(edited) == priced_lines(as_new)


def test_a_promotion_minimum_lost_by_an_edit_drops_its_discount_and_the_total_grows_to_what_is_authorized(api):
    order = allocated(api, ("BIG", 2), promo_codes=["BIGBASKET20"])
    assert order["totals"]["discount"]["amount"] == "24.00"

    edited = edit(api, order, {"lines": [{"sku": "BIG", "quantity": 1}]})

    assert edited["totals"]["discount"]["amount"] == "0.00"
    assert edited["totals"]["subtotal"]["amount"] == "60.00"
    assert edited["payment"]["authorized"] == order["payment"]["authorized"]  # 96.00 + shipping still covers it
    assert edited["status"] == "authorized"


def test_an_edit_up_to_a_codes_minimum_is_refused_its_stacking_as_capture_refuses_it(api):
    # Placed with 60.00, BIGBASKET20 granted nothing and WELCOME10 its 10%; at 120.00 both apply,
    # which capture refuses: the edit is not given 30% off.
    order = allocated(api, ("BIG", 1), promo_codes=["WELCOME10", "BIGBASKET20"])
    lines = [{"sku": "BIG", "quantity": 2}]

    refused = edit(api, order, {"lines": lines}, status=422)

    assert refused["error"]["code"] == "promo_codes_do_not_stack"
    as_new = api.post("/orders", json=body(("BIG", 2), promo_codes=["WELCOME10", "BIGBASKET20"]))
    assert (as_new.status_code, as_new.json()["error"]["code"]) == (422, "promo_codes_do_not_stack")
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)


# --- An edit that changes nothing -------------------------------------------------------------


def test_an_edit_that_changes_nothing_is_200_with_the_order_as_it_is_and_writes_nothing(api):
    order = allocated(api, ("BIG", 1), ("MUG", 2), promo_codes=["WELCOME10"])
    before = history(api, order["id"])

    assert order["shipping_method"] == "standard"
    lines = [{"sku": "BIG", "quantity": 1}, {"sku": "MUG", "quantity": 2}]
    same = edit(api, order, {"lines": lines, "shipping_address": address_body(), "shipping_method": "standard"})

    # Each read presigns the label links anew (a new X-Amz-Date once a second passed): the rest is as it was.
    assert unsigned(same) == unsigned(order)
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)  # still allocated, as booked
    assert history(api, order["id"]) == before


def test_an_edit_that_changes_nothing_on_a_stale_version_is_409(api):
    order = allocated(api, ("MUG", 2))
    moved = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]})

    edit(api, order, {"lines": [{"sku": "MUG", "quantity": 3}]}, status=409)
    edit(api, {**order, "version": moved["version"] + 1}, {"lines": [{"sku": "MUG", "quantity": 3}]}, status=409)

    assert api.get(f"/orders/{order['id']}").json()["version"] == moved["version"]


def test_an_edit_naming_its_lines_unchanged_and_a_new_address_changes_the_address_only(api):
    order = allocated(api, ("MUG", 2))
    moved = address_body(line1="9 Other Street")

    edited = edit(api, order, {"lines": [{"sku": "MUG", "quantity": 2}], "shipping_address": moved})

    assert edited["status"] == "authorized"  # sourced again
    assert edited["shipping_address"]["line1"] == "9 Other Street"
    assert [line["line_id"] for line in edited["lines"]] == [line["line_id"] for line in order["lines"]]
    (entry,) = [h for h in history(api, order["id"]) if h["type"] == "edited"]
    assert entry["detail"]["changed"] == ["shipping_address"]


def test_an_edit_sending_the_orders_lines_in_another_order_changes_nothing(api):
    # The same lines, the array reordered: what the order has, so no change (no new line ids, no
    # parcels withdrawn and booked again), as the same body in the same order is.
    order = allocated(api, ("BIG", 1), ("MUG", 2), ("MUG", 1), promo_codes=["WELCOME10"])
    before = history(api, order["id"])
    lines = [{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 2}, {"sku": "BIG", "quantity": 1}]

    same = edit(api, order, {"lines": lines})

    assert unsigned(same) == unsigned(order)
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)  # still allocated, as booked
    assert history(api, order["id"]) == before


def test_an_edit_naming_its_lines_reordered_and_a_new_address_changes_the_address_only(api):
    order = allocated(api, ("BIG", 1), ("MUG", 2), promo_codes=["WELCOME10"])
    moved = address_body(line1="9 Other Street")
    lines = [{"sku": "MUG", "quantity": 2}, {"sku": "BIG", "quantity": 1}]

    edited = edit(api, order, {"lines": lines, "shipping_address": moved})

    assert (edited["status"], edited["shipping_address"]["line1"]) == ("authorized", "9 Other Street")
    # Each line keeps its id and its own price: the order's, not the reordered array's.
    assert [(line["line_id"], *priced) for line, priced in zip(edited["lines"], priced_lines(edited), strict=True)] == [
        (line["line_id"], *priced) for line, priced in zip(order["lines"], priced_lines(order), strict=True)
    ]  # fmt: skip
    assert edited["totals"] == order["totals"]
    (entry,) = [h for h in history(api, order["id"]) if h["type"] == "edited"]
    assert entry["detail"]["changed"] == ["shipping_address"]


def test_a_cancel_of_units_that_loses_a_codes_minimum_keeps_the_discount_granted_and_never_raises_the_total(api):
    # 110.00 earned 22.00 off (88.00 before tax and shipping); priced again without the mug, 97.50
    # reaches no minimum and would cost more than before: the customer would pay more for cancelling,
    # beyond the authorization (409 before). The units left keep what they were sold at instead
    # (each line's discount and tax in proportion, the shipping as charged): the mug comes off at
    # its share, as a return would refund it, and nothing beyond the authorization is ever captured.
    from core.models import OrderLine
    from core.money import Money
    from core.refunds import units_share

    order = allocated(api, ("BIG", 1), ("MUG", 4), promo_codes=["BIGBASKET20"])
    mugs = OrderLine.model_validate(order["lines"][1])
    assert (order["totals"]["discount"]["amount"], mugs.discount.amount) == ("22.00", Decimal("10.00"))

    answer = api.post(f"/orders/{order['id']}/cancel", json={"reason": "one mug less",
                                                              "lines": [{"line_id": "L2", "quantity": 1}]})  # fmt: skip

    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["lines"][0] == order["lines"][0]  # untouched
    kept = done["lines"][1]
    assert (kept["quantity"], kept["cancelled_quantity"], kept["unit_price"]) == (3, 1, order["lines"][1]["unit_price"])
    assert (kept["discount"]["amount"], kept["tax"]["amount"]) == (
        str(Money.of(mugs.discount.amount * 3 / 4, "USD").amount), str(Money.of(mugs.tax.amount * 3 / 4, "USD").amount)
    )  # fmt: skip
    three = Decimal(kept["unit_price"]["amount"]) * 3
    assert Decimal(kept["total"]["amount"]) == three - Decimal(kept["discount"]["amount"]) + Decimal(
        kept["tax"]["amount"]
    )
    assert done["totals"]["shipping"] == order["totals"]["shipping"]
    assert done["totals"]["discount"]["amount"] == "19.50"
    was, now = (Decimal(o["totals"]["grand_total"]["amount"]) for o in (order, done))
    assert abs(was - now - units_share(mugs, 1, before=3).amount) <= Decimal("0.01")  # the mug's share, as a return
    (entry,) = [h for h in history(api, order["id"]) if h["type"] == "units_cancelled"]
    assert entry["detail"]["grand_total"]["to"] == done["totals"]["grand_total"]
    (shipment,) = done["shipments"]
    shipped = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    payment = shipped.json()["payment"]
    assert (payment["status"], payment["captured"]) == ("captured", done["totals"]["grand_total"])
    assert Decimal(payment["captured"]["amount"]) < Decimal(order["payment"]["authorized"]["amount"])
