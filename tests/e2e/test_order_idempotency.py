"""Capture exactly once: Idempotency-Key replays and channel + external_id uniqueness."""

from __future__ import annotations

import pytest

from tests.e2e.client import Api, Catalog, assert_error, order_body, unique

pytestmark = pytest.mark.e2e


@pytest.fixture
def sku(catalog: Catalog) -> str:
    (created,) = catalog.stocked("19.99")
    return created


def keyless_order(sku: str, quantity: int = 1, **overrides) -> dict:
    """No external_id, so the id is random: only the Idempotency-Key can stop a second order."""
    body = order_body((sku, quantity), **overrides)
    del body["external_id"]
    return body


def test_the_same_key_and_body_replay_the_first_201_and_create_one_order(api: Api, sku: str):
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}

    first = api.post("/orders", json=body, headers=key)
    second = api.post("/orders", json=body, headers=key)

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json() == first.json()
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_the_same_key_with_another_body_is_409_idempotency_key_reused_and_changes_nothing(api: Api, sku: str):
    body = keyless_order(sku, quantity=1)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text

    reused = api.post("/orders", json=keyless_order(sku, quantity=2, customer=body["customer"]), headers=key)

    assert_error(reused, 409, "idempotency_key_reused")
    assert api.orders_of(body["customer"]["id"]) == [first.json()]


@pytest.mark.parametrize(
    ("breakage", "code", "field"),
    [
        ({"quantity": 0}, "validation_error", "lines[0].quantity"),
        ({"sku": "NO-SUCH-SKU"}, "unknown_sku", "lines[0].sku"),
    ],
    ids=["schema-validation", "unknown-sku"],
)
def test_a_key_whose_request_was_refused_with_422_can_be_retried_with_a_corrected_body(
    api: Api, sku: str, breakage: dict, code: str, field: str
):
    body = keyless_order(sku)
    broken = keyless_order(sku, customer=body["customer"])
    broken["lines"][0].update(breakage)
    key = {"Idempotency-Key": unique("idem")}

    refused = api.post("/orders", json=broken, headers=key)
    assert_error(refused, 422, code, field)
    assert api.orders_of(body["customer"]["id"]) == []

    retried = api.post("/orders", json=body, headers=key)

    assert retried.status_code == 201, retried.text
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [retried.json()["id"]]


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "k" * 300, "has space", "tab\there", "caf\u00e9"],
    ids=["256-chars", "300-chars", "space", "tab", "non-ascii"],
)
def test_a_malformed_idempotency_key_is_400_malformed_header_and_places_nothing(api: Api, sku: str, key: str):
    body = keyless_order(sku)

    response = api.post("/orders", json=body, headers={"Idempotency-Key": key.encode().decode("latin-1")})

    assert_error(response, 400, "malformed_header")
    assert api.orders_of(body["customer"]["id"]) == []


def test_an_idempotency_key_of_255_printable_characters_is_accepted(api: Api, sku: str):
    response = api.post("/orders", json=keyless_order(sku), headers={"Idempotency-Key": "k" * 254 + "~"})

    assert response.status_code == 201, response.text


def test_a_second_order_with_the_same_channel_and_external_id_is_409_naming_the_first_order(api: Api, sku: str):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body)
    assert first.status_code == 201, first.text

    again = api.post("/orders", json={**body, "lines": [{"sku": sku, "quantity": 3}]})

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]
    assert api.get(f"/orders/{first.json()['id']}").json() == first.json()
    assert api.orders_of(body["customer"]["id"]) == [first.json()]


def test_a_new_idempotency_key_does_not_get_around_channel_and_external_id_uniqueness(api: Api, sku: str):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body, headers={"Idempotency-Key": unique("idem")})
    assert first.status_code == 201, first.text

    again = api.post("/orders", json=body, headers={"Idempotency-Key": unique("idem")})

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]
    assert len(api.orders_of(body["customer"]["id"])) == 1


def test_the_same_external_id_in_another_channel_is_another_order(api: Api, sku: str):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body)
    other = api.post("/orders", json={**body, "channel": unique("ch")})

    assert first.status_code == 201, first.text
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
