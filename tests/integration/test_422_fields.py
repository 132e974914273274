"""Every 422 names the request field at fault (API.md: "422 validation (`details` lists {field,
message})"), in-process on moto: the refusals that answered `details: []` (a return policy's, no
policy at all, an OMS that places no exchanges), and a pickup store the network lacks, which is
`unknown_location` as it is at POST /purchase-orders, PUT /sourcing/rules and a return's receipt."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core import hookimpl
from core.return_models import ReturnPolicyDecision
from tests.builders import location_body, order_body
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_cancel_units_api import allocated, ship, stock_two_parcels

RETURN = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too small", "reason_code": "size_or_fit"}]}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        stock_two_parcels(started)
        store = location_body(name="SF store", type="store", ships=False, pickup=True)
        assert started.put("/locations/store-sf", json=store).status_code == 201
        yield started


def plugins() -> Any:
    from functions.api.dependencies import container

    return container().plugins


class Refusing:
    """A return policy that refuses every return, naming the field it judged when `field` is given."""

    def __init__(self, **field: str):
        self.field = field

    @hookimpl(tryfirst=True)
    def oms_return_policy(self) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(allowed=False, code="final_sale", message="sale items are final", **self.field)


def returned(api: InProcessApi, body: dict[str, Any] = RETURN) -> Any:
    order = ship(api, allocated(api, ("MUG", 1)), "wh-west")
    return api.post(f"/orders/{order['id']}/returns", json=body)


def window_closed(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "0")
    return returned(api)


def no_policy(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> Any:
    policy = plugins().unregister(name="return_policy")
    try:
        return returned(api)
    finally:
        plugins().register(policy, name="return_policy")


def refused_by(**field: str) -> Callable[[InProcessApi, pytest.MonkeyPatch], Any]:
    def request(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> Any:
        plugins().register(Refusing(**field), name="final-sale")
        try:
            return returned(api)
        finally:
            plugins().unregister(name="final-sale")

    return request


def no_exchanges(api: InProcessApi, monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions.api.dependencies import container

    # A deployment whose returns service was built without the capture path places no exchanges.
    monkeypatch.setattr(container().returns, "_capture", None)
    return returned(api, {**RETURN, "exchange": {"lines": [{"sku": "CAP", "quantity": 1}]}})


def pickup_at(location_id: str | None) -> dict[str, Any]:
    fulfillment = {"type": "pickup", **({"location_id": location_id} if location_id else {})}
    return order_body(
        external_id=f"pickup-{location_id}", lines=[{"sku": "MUG", "quantity": 1}], fulfillment=fulfillment
    )


def placed_for_pickup_at(location_id: str) -> Callable[[InProcessApi, pytest.MonkeyPatch], Any]:
    return lambda api, monkeypatch: api.post("/orders", json=pickup_at(location_id))


def simulated_pickup_at(location_id: str | None) -> Callable[[InProcessApi, pytest.MonkeyPatch], Any]:
    return lambda api, monkeypatch: api.post("/sourcing/simulate", json={"orders": [pickup_at(location_id)]})


CASES = [
    pytest.param(window_closed, "return_window_closed", ["lines"], id="return-window-closed"),
    pytest.param(no_policy, "return_not_allowed", ["lines"], id="no-return-policy-answers"),
    pytest.param(refused_by(), "final_sale", ["lines"], id="policy-refusal-names-lines"),
    pytest.param(
        refused_by(field="lines[0].reason_code"),
        "final_sale",
        ["lines[0].reason_code"],
        id="policy-refusal-names-its-field",
    ),
    pytest.param(no_exchanges, "exchange_not_supported", ["exchange"], id="exchange-not-supported"),
    pytest.param(placed_for_pickup_at("nowhere"), "unknown_location", ["fulfillment.location_id"], id="pickup-unknown"),
    pytest.param(
        placed_for_pickup_at("wh-west"), "validation_error", ["fulfillment.location_id"], id="pickup-not-offered"
    ),
    pytest.param(
        simulated_pickup_at("nowhere"), "unknown_location", ["orders[0].fulfillment.location_id"], id="what-if-unknown"
    ),
    pytest.param(
        simulated_pickup_at(None), "validation_error", ["orders[0].fulfillment.location_id"], id="what-if-no-location"
    ),
]


@pytest.mark.parametrize(("request_made", "code", "fields"), CASES)
def test_every_422_names_the_field_at_fault(api, monkeypatch, request_made, code, fields):
    error = assert_error(request_made(api, monkeypatch), 422, code)

    assert [detail.get("field") for detail in error["details"]] == fields, error
    assert all(set(detail) == {"field", "message"} and detail["message"].strip() for detail in error["details"]), error
