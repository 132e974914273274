"""A JSON client sends null for an optional field it has no value for: every optional field of the
bodies of orders, returns and refunds (the API's, an import line's) takes null as left out, and
the document says so; a field the body cannot do without stays refused as null."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from core.errors import field_path
from core.holds import HoldRequest, ReleaseRequest
from core.models import CancelRequest, OrderEdit, PlaceOrder, RejectRequest, ShipRequest
from core.refunds import RefundRequest
from core.return_models import ReceiveReturn, RequestReturn, ReturnNote
from tests.builders import address_body, order_body

Path = tuple[str | int, ...]

# Each body with every optional object it may hold, so that the fields inside those are reached too.
BODIES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (
        PlaceOrder,
        order_body(
            shipping_address=address_body(line2="Suite 400"),
            fulfillment={"type": "ship"},
            shipping_method="standard",
            promo_codes=["SAVE10"],
        ),
    ),
    (
        OrderEdit,
        {"lines": [{"sku": "MUG", "quantity": 1}], "shipping_address": address_body(), "shipping_method": "express"},
    ),
    (CancelRequest, {"reason": "customer_request", "lines": [{"line_id": "L1", "quantity": 1}]}),
    (ShipRequest, {"tracking_number": "1Z999AA10123456784"}),
    (RejectRequest, {"reason": "damaged stock"}),
    (HoldRequest, {"reason": "fraud_review", "note": "called the bank"}),
    (ReleaseRequest, {"note": "the bank confirmed"}),
    (
        RequestReturn,
        {
            "lines": [{"line_id": "L1", "quantity": 1, "reason": "too small", "reason_code": "size_or_fit"}],
            "exchange": {"lines": [{"sku": "TSHIRT", "quantity": 1}]},
        },
    ),
    (ReturnNote, {"note": "photos received"}),
    (ReceiveReturn, {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}),
    (RefundRequest, {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "late delivery"}),
]

# POST /orders/{id}/cancel's `lines` left out cancels every unit not yet shipped: sent as null it
# is refused (core.models.CancelRequest), as a client that meant some lines and sent none would
# lose the whole order (tests/integration/test_cancel_units_api.py).
REFUSED_AS_NULL = {(CancelRequest, ("lines",))}


def resolved(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The object schema `schema` stands for: through a $ref, the one non-null choice, an array's items."""
    while True:
        if "$ref" in schema:
            schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in schema:
            (schema,) = [choice for choice in schema["anyOf"] if choice.get("type") != "null"]
        elif schema.get("type") == "array":
            schema = schema["items"]
        else:
            return schema


def fields(
    schema: dict[str, Any], defs: dict[str, Any], body: dict[str, Any], path: Path = ()
) -> Iterator[tuple[Path, bool, dict[str, Any]]]:
    """(path, required, its schema) of each field of the object `body` is, and of the objects it holds."""
    schema = resolved(schema, defs)
    for name, field in schema.get("properties", {}).items():
        yield (*path, name), name in schema.get("required", []), field
        value = body.get(name)
        steps: Path = (name,)
        if isinstance(value, list) and value:
            value, steps = value[0], (name, 0)
        if isinstance(value, dict):
            yield from fields(field, defs, value, (*path, *steps))


def every_field(required: bool) -> list[Any]:
    cases = []
    for model, body in BODIES:
        schema = model.model_json_schema()
        for path, is_required, field in fields(schema, schema.get("$defs", {}), body):
            if is_required == required and (model, path) not in REFUSED_AS_NULL:
                cases.append(pytest.param(model, body, path, field, id=f"{model.__name__}.{field_path(path)}"))
    return cases


LEFT_OUT = object()


def with_value(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """`body` with the field at `path` set to `value` (or left out, for LEFT_OUT)."""
    changed = copy.deepcopy(body)
    parent: Any = changed
    for step in path[:-1]:
        parent = parent[step]
    if value is LEFT_OUT:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return changed


def read(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """What the OMS makes of `body`: the command, or where and why it is refused."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        return [(field_path(e["loc"]), e["msg"]) for e in error.errors()]


@pytest.mark.parametrize(("model", "body", "path", "field"), every_field(required=False))
def test_an_optional_field_sent_as_null_is_read_as_left_out_and_documented_as_nullable(
    model: type[BaseModel], body: dict[str, Any], path: Path, field: dict[str, Any]
):
    as_null = read(model, with_value(body, path, None))
    left_out = read(model, with_value(body, path, LEFT_OUT))

    assert isinstance(left_out, model), left_out
    assert as_null == left_out
    assert {"type": "null"} in field.get("anyOf", []), field


def test_an_order_sent_with_null_for_its_promo_codes_and_fulfillment_is_shipped_without_codes():
    body = order_body(promo_codes=None, fulfillment=None)

    placed = PlaceOrder.model_validate(body)

    assert placed.promo_codes == []
    assert (placed.fulfillment.type, placed.fulfillment.location_id) == ("ship", None)
    assert placed.model_dump(mode="json") == PlaceOrder.model_validate(order_body()).model_dump(mode="json")


@pytest.mark.parametrize(("model", "body", "path", "field"), every_field(required=True))
def test_a_field_the_body_cannot_do_without_is_refused_as_null_naming_it(
    model: type[BaseModel], body: dict[str, Any], path: Path, field: dict[str, Any]
):
    refused = read(model, with_value(body, path, None))

    assert isinstance(read(model, body), model)
    assert isinstance(refused, list) and field_path(path) in [where for where, _ in refused], refused
