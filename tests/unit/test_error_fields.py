"""A check that spans a field's items or depends on another field still names the field it is
about, as the API's `details` do ("lines", "expected_at"), never the whole body: each error's
location is the field's, which errors.py turns into the detail's `field`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from core.confirmations import Confirmation
from core.errors import field_path
from core.purchasing import NewPurchaseOrder, Submission
from core.return_models import ReceiveReturn, RequestReturn
from core.sourcing import SimulateSourcing
from tests.builders import order_body

COST = {"amount": "1.00", "currency": "USD"}
PO_LINE = {"sku": "MUG", "quantity": 5, "unit_cost": COST}
PO = {"vendor_id": "v1", "location_id": "wh1", "lines": [PO_LINE]}
RETURN_LINE = {"line_id": "L1", "quantity": 1, "reason": "too small"}
RECEIPT_LINE = {"line_id": "L1", "quantity": 1, "condition": "resellable"}

CASES = [
    pytest.param(NewPurchaseOrder, {**PO, "lines": [PO_LINE, PO_LINE]}, ("lines", 1, "sku"), id="a PO's repeated sku"),
    pytest.param(NewPurchaseOrder, {**PO, "expected_at": "2027-01-01T00:00:00"}, "expected_at", id="no time zone"),
    pytest.param(NewPurchaseOrder, {**PO, "expected_at": "3000-01-01T00:00:00Z"}, "expected_at", id="year 3000"),
    # The repeating entry itself (lines[1].line_id), as API.md's error shape names a field.
    pytest.param(
        Submission, {"lines": [{"sku": "MUG", "unit_cost": COST}] * 2}, ("lines", 1, "sku"), id="a price given twice"
    ),
    pytest.param(
        RequestReturn, {"lines": [RETURN_LINE, RETURN_LINE]}, ("lines", 1, "line_id"), id="a return's repeated line"
    ),
    pytest.param(
        ReceiveReturn,
        {"location_id": "wh1", "lines": [RECEIPT_LINE, RECEIPT_LINE]},
        ("lines", 1, "condition"),
        id="a receipt's repeat",
    ),
    pytest.param(
        Confirmation,
        {"order_id": "ord_x", "shipment_id": "shp_x", "action": "deliver", "tracking_number": "1Z999"},
        "tracking_number",
        id="a tracking number on a delivery",
    ),
]


@pytest.mark.parametrize(("model", "body", "field"), CASES)
def test_the_error_names_the_field_it_is_about(
    model: type[BaseModel], body: dict[str, Any], field: str | tuple[str | int, ...]
):
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)

    assert [error["loc"] for error in caught.value.errors()] == [field if isinstance(field, tuple) else (field,)]


@pytest.mark.parametrize(
    ("orders", "field"),
    [
        pytest.param(
            [{**order_body(), "lines": [{"sku": "MUG", "quantity": 0}]}], "orders[0].lines[0].quantity", id="body"
        ),
        pytest.param(["ord_x"], "orders[0]", id="a malformed id"),
        pytest.param(["ord_" + "a" * 24, order_body()], "orders[1]", id="ids then a body"),
        pytest.param([order_body(), "ord_" + "a" * 24], "orders[1]", id="bodies then an id"),
        pytest.param(5, "orders", id="not a list"),
    ],
)
def test_a_simulations_orders_are_judged_as_one_kind_and_named_as_sent(orders: Any, field: str):
    # The union of ids and bodies would name both kinds ("orders.list[PlaceOrder][0]...").
    with pytest.raises(ValidationError) as caught:
        SimulateSourcing.model_validate({"orders": orders})

    assert [field_path(error["loc"]) for error in caught.value.errors()] == [field]


def test_a_safety_stock_key_that_cannot_be_a_location_id_is_named_as_its_entry():
    # pydantic marks a refused dict key with "[key]": the field read "safety_stock.A B.[key]", where
    # an unknown location is named "safety_stock.nowhere".
    from core.sourcing_rules import NewSourcingRules

    with pytest.raises(ValidationError) as caught:
        NewSourcingRules.model_validate({"prefer": "nearest", "safety_stock": {"A B": 1}})

    assert [field_path(error["loc"]) for error in caught.value.errors()] == ["safety_stock.A B"]
