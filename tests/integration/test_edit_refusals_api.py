"""PATCH /orders/{id} edits refused, in-process on moto: bodies (no lines, a line of no units, a sku
the catalog does not have or does not price in the order's currency, more units than there are),
and edits made on a version the workflow or a person moved on meanwhile. Each answers the
contract's error, and leaves the order, its history and the stock it holds as they were."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.errors import Backordered
from core.workflow_types import PaymentResult
from functions.bootstrap import Config, bootstrap
from plugins import test_payments
from tests.builders import location_body, order_body, product_body
from tests.e2e.client import assert_error, unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated
from tests.integration.test_payment_plugin_failures_api import registered

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        assert started.put("/products/MUG", json=product_body("12.50")).status_code == 201
        assert started.put("/products/EURMUG", json=product_body("11.00", currency="EUR")).status_code == 201
        later = product_body("30.00", allow_backorder=True)
        assert started.put("/products/LATER", json=later).status_code == 201
        assert started.put("/locations/wh-east", json=location_body()).status_code == 201
        assert started.put("/inventory/MUG/wh-east", json={"on_hand": 100}).status_code == 200
        assert started.put("/products/TEE", json=product_body("9.00")).status_code == 201
        assert started.put("/locations/wh-south", json=location_body(name="South warehouse")).status_code == 201
        assert started.put("/inventory/TEE/wh-south", json={"on_hand": 100}).status_code == 200
        yield started


def placed(api: InProcessApi, *skus: str) -> dict[str, Any]:
    body = order_body(external_id=f"web-r{next(_orders)}", lines=[{"sku": sku, "quantity": 2} for sku in skus])
    answer = api.post("/orders", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def allocated(api: InProcessApi) -> dict[str, Any]:
    return run_to_allocated(api, placed(api, "MUG")["id"])


def held(api: InProcessApi) -> dict[str, Any]:
    order = allocated(api)
    answer = api.post(f"/orders/{order['id']}/hold", json={"reason": "customer_request"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def backordered(api: InProcessApi) -> dict[str, Any]:
    order_id = placed(api, "LATER")["id"]
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):  # the state machine's signal to wait for stock
        steps.reserve_stock(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "backordered", order
    return order


def reserved(api: InProcessApi) -> dict[str, int]:
    return {
        sku: sum(level["reserved"] for level in api.get(f"/inventory/{sku}").json()["locations"])
        for sku in ("MUG", "LATER", "TEE")
    }


MUG1 = {"sku": "MUG", "quantity": 1}
REFUSED = [
    pytest.param({"lines": []}, 422, "validation_error", "lines", id="no-lines"),
    pytest.param({"lines": None}, 422, "validation_error", None, id="lines-null-alone"),
    pytest.param({"lines": [{**MUG1, "quantity": 0}]}, 422, "validation_error", "lines[0].quantity", id="quantity-0"),
    pytest.param({"lines": [{**MUG1, "quantity": -1}]}, 422, "validation_error", "lines[0].quantity", id="negative"),
    pytest.param({"lines": [MUG1, {"sku": "NOPE", "quantity": 1}]}, 422, "unknown_sku", "lines[1].sku", id="unknown"),
    pytest.param({"lines": [MUG1, {**MUG1, "sku": "EURMUG"}]}, 422, "no_price", "lines[1].sku", id="eur-priced-sku"),
    pytest.param(  # 120 units of 100, asked over two lines
        {"lines": [{**MUG1, "quantity": 60}] * 2}, 409, "insufficient_stock", None, id="beyond-the-stock"
    ),
]


@pytest.mark.parametrize("make", [allocated, held, backordered], ids=["allocated", "held", "backordered"])
@pytest.mark.parametrize(("edit_body", "status", "code", "field"), REFUSED)
def test_a_refused_edit_answers_the_contracts_error_and_changes_neither_the_order_nor_its_stock(
    api: InProcessApi, make: Callable[[InProcessApi], dict[str, Any]], edit_body: dict[str, Any], status: int,
    code: str, field: str | None,
):  # fmt: skip
    order = make(api)
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    stock = reserved(api)

    answer = api.request("PATCH", f"/orders/{order['id']}", json=edit_body,
                         headers={"If-Match": str(order["version"])})  # fmt: skip

    assert_error(answer, status, code, *([field] if field else []))
    assert unsigned(api.get(f"/orders/{order['id']}").json()) == unsigned(order)
    assert api.get(f"/orders/{order['id']}/history").json()["items"] == history
    assert reserved(api) == stock


# --- An edit racing the workflow: made on the version read before it moved the order -------------


def steps():
    return bootstrap(Config.from_env()).workflow


def authorizes(api: InProcessApi) -> tuple[dict[str, Any], Callable[[str], object]]:
    return placed(api, "MUG"), lambda order_id: steps().authorize_payment(order_id, attempt=0)


def allocates(api: InProcessApi) -> tuple[dict[str, Any], Callable[[str], object]]:
    order_id = placed(api, "MUG")["id"]
    steps().authorize_payment(order_id, attempt=0)

    def allocate(order_id: str) -> None:
        steps().reserve_stock(order_id)
        steps().create_shipments(order_id)

    return api.get(f"/orders/{order_id}").json(), allocate


def backorders(api: InProcessApi) -> tuple[dict[str, Any], Callable[[str], object]]:
    order_id = placed(api, "LATER")["id"]
    steps().authorize_payment(order_id, attempt=0)

    def wait(order_id: str) -> None:
        with pytest.raises(Backordered):
            steps().reserve_stock(order_id)

    return api.get(f"/orders/{order_id}").json(), wait


def holds(api: InProcessApi) -> tuple[dict[str, Any], Callable[[str], object]]:
    return allocated(api), lambda order_id: api.post(f"/orders/{order_id}/hold", json={"reason": "other"})


def ships_a_parcel(api: InProcessApi) -> tuple[dict[str, Any], Callable[[str], object]]:
    order = run_to_allocated(api, placed(api, "MUG", "TEE")["id"])
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")
    return order, lambda order_id: api.post(f"/orders/{order_id}/shipments/{east['id']}/ship", json={})


@pytest.mark.parametrize(
    ("start", "moved_to"),
    [
        (authorizes, "authorized"),
        (allocates, "allocated"),
        (backorders, "backordered"),
        (holds, "on_hold"),
        (ships_a_parcel, "partially_shipped"),
    ],
)
def test_an_edit_on_the_version_read_before_the_workflow_moved_the_order_is_409_and_changes_nothing(
    api: InProcessApi, start: Callable[[InProcessApi], tuple[dict[str, Any], Callable[[str], object]]], moved_to: str
):
    read, move = start(api)
    move(read["id"])
    moved = api.get(f"/orders/{read['id']}").json()
    assert moved["status"] == moved_to
    history = api.get(f"/orders/{read['id']}/history").json()["items"]
    stock = reserved(api)

    grow = {"lines": [{"sku": line["sku"], "quantity": line["quantity"] + 1} for line in read["lines"]]}
    answer = api.request("PATCH", f"/orders/{read['id']}", json=grow, headers={"If-Match": str(read["version"])})

    error = assert_error(answer, 409, "version_conflict", "If-Match")
    assert str(moved["version"]) in error["details"][0]["message"]
    assert unsigned(api.get(f"/orders/{read['id']}").json()) == unsigned(moved)
    assert api.get(f"/orders/{read['id']}/history").json()["items"] == history
    assert reserved(api) == stock


# --- An edit past what the card allows ------------------------------------------------------------


class CardLimit:
    """A card that authorizes up to `limit` and declines more (the test gateway answers the rest)."""

    def __init__(self, limit: str):
        self.limit = Decimal(limit)

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount, idempotency_key, attempt):
        if amount.amount <= self.limit:
            return None
        return PaymentResult(outcome="declined", reference=f"dec_{idempotency_key}"[:200], message="over the limit")


def test_an_edit_past_what_the_card_allows_is_409_and_leaves_the_order_its_stock_and_payment_as_they_were(api):
    order = allocated(api)  # 2 MUG: 25.00 + shipping, within the limit
    stock = reserved(api)
    held_before = dict(test_payments._held)
    grown = {"lines": [{"sku": "MUG", "quantity": 6}]}

    with registered(CardLimit("60.00")):
        answer = api.request("PATCH", f"/orders/{order['id']}", json=grown, headers={"If-Match": str(order["version"])})

    assert_error(answer, 409, "payment_declined")
    shown = api.get(f"/orders/{order['id']}").json()
    kept = ("status", "lines", "totals", "payment", "allocations")
    assert {k: shown[k] for k in kept} == {k: order[k] for k in kept}
    assert reserved(api) == stock
    assert test_payments._held == held_before  # nothing new held on the card, nothing captured
    # A smaller edit on the same If-Match goes ahead: no authorization is asked, the one there stays.
    fewer = api.request("PATCH", f"/orders/{order['id']}", json={"lines": [{"sku": "MUG", "quantity": 1}]},
                        headers={"If-Match": str(order["version"])})  # fmt: skip
    assert fewer.status_code == 200, fewer.text
    assert fewer.json()["payment"] == order["payment"]
