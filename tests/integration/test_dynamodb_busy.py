"""DynamoDB too busy for a request is not a bug: a write that met another transaction on one of its
items (TransactionConflict, which botocore does not retry) or throttling that outlasted botocore's
retries answers 503 temporarily_unavailable with Retry-After, in the contract's shape, and the
same request later goes through. Any other DynamoDB error stays a 500 that leaks nothing. moto
never conflicts or throttles, so the error is injected into the API's own client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api

SKU, LOCATION = "BUSY-1", "wh-busy"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    from tests.builders import location_body, product_body

    with in_process_api() as started:
        assert started.put(f"/products/{SKU}", json=product_body("3.00")).status_code == 201
        assert started.put(f"/locations/{LOCATION}", json=location_body()).status_code == 201
        assert started.put(f"/inventory/{SKU}/{LOCATION}", json={"on_hand": 10}).status_code == 200
        assert started.put("/vendors/v-busy", json={"name": "Acme", "lead_time_days": 2}).status_code == 201
        yield started


def failing_once(operation: str, error: dict[str, Any], times: int = 1) -> Any:
    """Make the API's DynamoDB client fail the next `operation` call with `error`, once (or the
    next `times` calls)."""
    from functions.api.dependencies import container

    events = container().dynamodb.meta.events
    calls = {"left": times}

    def fail(**_: Any) -> None:
        if calls["left"]:
            calls["left"] -= 1
            raise ClientError(error, operation)

    events.register(f"before-call.dynamodb.{operation}", fail)
    return lambda: events.unregister(f"before-call.dynamodb.{operation}", fail)


CONFLICT = {"Error": {"Code": "TransactionConflictException", "Message": "Transaction is ongoing for the item"}}
THROTTLED = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeds"}}
CANCELLED_BY_CONFLICT = {
    "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled [None, TransactionConflict]"},
    "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict", "Message": "Transaction is ongoing"}],
}


@pytest.mark.parametrize("error", [CONFLICT, THROTTLED], ids=["transaction conflict", "throttled"])
def test_an_adjustment_that_meets_a_busy_item_is_503_and_counts_once_when_repeated(api: InProcessApi, error: dict):
    before = api.get(f"/inventory/{SKU}").json()["locations"][0]["on_hand"]
    restore = failing_once("UpdateItem", error)
    try:
        busy = api.post(f"/inventory/{SKU}/{LOCATION}/adjustments", json={"delta": 2, "reason": "receipt"})
    finally:
        restore()

    assert_error(busy, 503, "temporarily_unavailable")
    assert busy.headers["Retry-After"] == "1"
    assert api.get(f"/inventory/{SKU}").json()["locations"][0]["on_hand"] == before
    again = api.post(f"/inventory/{SKU}/{LOCATION}/adjustments", json={"delta": 2, "reason": "receipt"})
    assert again.status_code == 200, again.text
    assert again.json()["on_hand"] == before + 2


def test_a_stock_take_at_a_throttled_table_is_503_not_a_409_blaming_reserved_units(api: InProcessApi):
    # Throttled past botocore's retries on every write the count tries: not a refusal of the count
    # (409 insufficient_stock would tell the client the units reserved there keep changing).
    before = api.get(f"/inventory/{SKU}").json()["locations"][0]["on_hand"]
    restore = failing_once("UpdateItem", THROTTLED, times=10)
    try:
        busy = api.put(f"/inventory/{SKU}/{LOCATION}", json={"on_hand": before + 3})
    finally:
        restore()

    assert_error(busy, 503, "temporarily_unavailable")
    assert api.get(f"/inventory/{SKU}").json()["locations"][0]["on_hand"] == before
    again = api.put(f"/inventory/{SKU}/{LOCATION}", json={"on_hand": before + 3})
    assert again.status_code == 200, again.text
    assert again.json()["on_hand"] == before + 3


def test_a_receipt_whose_transaction_met_another_is_503_and_goes_through_when_repeated(api: InProcessApi):
    line = {"sku": SKU, "quantity": 5, "unit_cost": {"amount": "1.00", "currency": "USD"}}
    po = api.post("/purchase-orders", json={"vendor_id": "v-busy", "location_id": LOCATION, "lines": [line]}).json()
    receipt = {"lines": [{"sku": SKU, "quantity": 5}]}
    headers = {"Idempotency-Key": "receipt-busy-1"}
    restore = failing_once("TransactWriteItems", CANCELLED_BY_CONFLICT)
    try:
        busy = api.post(f"/purchase-orders/{po['id']}/receive", json=receipt, headers=headers)
    finally:
        restore()

    assert_error(busy, 503, "temporarily_unavailable")
    assert api.get(f"/purchase-orders/{po['id']}").json()["status"] == "open"
    again = api.post(f"/purchase-orders/{po['id']}/receive", json=receipt, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "received"


def test_any_other_dynamodb_error_is_still_a_500_that_leaks_nothing(api: InProcessApi):
    restore = failing_once("Query", {"Error": {"Code": "ValidationException", "Message": "secret detail"}})
    try:
        broken = api.get("/orders")
    finally:
        restore()

    assert_error(broken, 500, "internal_error")
    assert "secret detail" not in broken.text and "Retry-After" not in broken.headers


def test_every_route_with_a_key_documents_the_busy_503(api: InProcessApi):
    document = api.get("/openapi.json", key=None).json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "patch", "delete"} and operation.get("security") != []:
                assert "503" in operation["responses"], (method, path)
                assert "temporarily_unavailable" in operation["responses"]["503"]["description"], (method, path)
