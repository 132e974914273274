"""Capture exactly once, through the in-process API on moto: Idempotency-Key replays, the key's
refusals, and channel + external_id uniqueness; and when the idempotency record is missing, the
order written by a first attempt whose record was never saved (the function died, or the record's
write failed, between the two) is what a retry answers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from core.models import utc_now
from functions.adapters.dynamodb import timestamp
from tests.e2e.client import ADMIN, Catalog, assert_error, document_attribute, order_body, stored_document, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    (created,) = Catalog(api).stocked("19.99", on_hand=100)
    return created


def keyless_order(sku: str, quantity: int = 1, **overrides) -> dict:
    """No external_id: only the Idempotency-Key can stop a second order."""
    body = order_body((sku, quantity), **overrides)
    del body["external_id"]
    return body


def forget_idempotency_records() -> None:
    """As if no attempt had saved its record: the first one wrote the order and died before it."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    table = os.environ["IDEMPOTENCY_TABLE"]
    for item in client.scan(TableName=table)["Items"]:
        client.delete_item(TableName=table, Key={"id": item["id"]})


def test_a_retry_whose_first_attempt_left_no_record_answers_that_order_and_places_no_second(
    api: InProcessApi, sku: str
):
    # A second order would be authorized, reserved and shipped as well: the customer pays twice.
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    forget_idempotency_records()

    again = api.post("/orders", json=body, headers=key)

    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_without_a_record_another_keys_same_idempotency_key_still_places_its_own_order(api: InProcessApi, sku: str):
    issued = api.post("/api-keys", json={"name": unique("key"), "scopes": ["orders:write", "orders:read"]})
    other_key = issued.json()["key"]
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    forget_idempotency_records()

    other = api.post("/orders", json=body, headers=key, key=other_key)

    assert (first.status_code, other.status_code) == (201, 201), (first.text, other.text)
    assert other.json()["id"] != first.json()["id"]
    assert len(api.orders_of(body["customer"]["id"])) == 2


def test_with_the_record_another_body_under_the_key_is_still_409(api: InProcessApi, sku: str):
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text

    reused = api.post("/orders", json=keyless_order(sku, quantity=2, customer=body["customer"]), headers=key)

    assert_error(reused, 409, "idempotency_key_reused")
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_a_retry_whose_first_attempt_took_the_last_units_answers_that_order(api: InProcessApi):
    # Placing it again would now be refused (409 insufficient_stock: its own order reserved the
    # units): the client, told it failed, would place another while the first is charged and shipped.
    (last,) = Catalog(api).stocked("5.00", on_hand=1)
    body = keyless_order(last)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    run_to_allocated(api, first.json()["id"])
    forget_idempotency_records()

    again = api.post("/orders", json=body, headers=key)

    assert again.status_code == 201, again.text
    assert (again.json()["id"], again.json()["status"]) == (first.json()["id"], "allocated")
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_a_retry_of_an_order_with_an_external_id_whose_first_attempt_left_no_record_answers_that_order(
    api: InProcessApi, sku: str
):
    # The first attempt wrote the order and died before its idempotency record said so (a timeout,
    # the record's write failing): the retry under the same key and body was answered 409
    # duplicate_order, and the client, told its order failed, told the customer so while the
    # order was charged and shipped. The same key and body return the first response (API.md).
    body = order_body((sku, 1))
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    forget_idempotency_records()

    again = api.post("/orders", json=body, headers=key)

    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]
    history = api.get(f"/orders/{first.json()['id']}/history").json()["items"]
    assert "request_key" not in history[0]["detail"], history[0]  # the client's key is not shown


@pytest.mark.parametrize("other", ["key", "body", "api-key", "none"])
def test_without_a_record_an_external_id_placed_by_another_request_is_still_409_duplicate_order(
    api: InProcessApi, sku: str, other: str
):
    body = order_body((sku, 1))
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    forget_idempotency_records()
    again, headers, api_key = dict(body), dict(key), ADMIN
    if other == "key":
        headers = {"Idempotency-Key": unique("idem")}
    elif other == "body":
        again["lines"] = [{"sku": sku, "quantity": 2}]
    elif other == "api-key":
        api_key = issue(api, "orders:write", "orders:read")
    else:
        headers = {}

    answer = api.post("/orders", json=again, headers=headers, key=api_key)

    error = assert_error(answer, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def kept_as_before_request_keys_were_shortened(order_id: str, body: dict[str, Any], idempotency_key: str) -> None:
    """Rewrite the order's created entry as the code before stored it: `request_key` "api:" and 24
    characters of a hash of the key id, the Idempotency-Key and the body as the API validated it,
    and all 24 characters of `request_hash` (an order in flight across the deploy)."""
    import json

    from core.access import ADMIN_KEY_ID
    from core.ids import short_hash
    from core.models import PlaceOrder
    from functions.adapters import order_codec

    client, table = boto3.client("dynamodb", region_name="us-east-1"), os.environ["ORDERS_TABLE"]
    item = client.get_item(TableName=table, Key={"id": {"S": order_id}})["Item"]
    created = json.loads(order_codec.stored_json(item["history"]["L"][0]))
    command = PlaceOrder.model_validate(body)
    request = json.dumps(command.model_dump(mode="json"), sort_keys=True)
    created["detail"]["request_key"] = "api:" + short_hash(f"{ADMIN_KEY_ID}:{idempotency_key}#{request}")
    asked = json.dumps(command.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    created["detail"]["request_hash"] = short_hash(asked)
    client.update_item(
        TableName=table,
        Key={"id": {"S": order_id}},
        UpdateExpression="SET history[0] = :created",
        ExpressionAttributeValues={":created": {"B": order_codec.compress(json.dumps(created).encode())}},
    )


@pytest.mark.parametrize("other", ["key", "body", "none"])
def test_a_retry_of_an_order_whose_created_entry_kept_the_earlier_request_key_answers_that_order(
    api: InProcessApi, sku: str, other: str
):
    # Orders placed before the created entry kept 8 characters of the key's hash beside the body's
    # (~30 bytes less on every write) keep a hash of key and body: a retry of their request arriving
    # at the new code (an order in flight across a deploy) is still that order's, another still 409.
    body = order_body((sku, 1))
    idempotency_key = unique("idem")
    first = api.post("/orders", json=body, headers={"Idempotency-Key": idempotency_key})
    assert first.status_code == 201, first.text
    kept_as_before_request_keys_were_shortened(first.json()["id"], body, idempotency_key)
    forget_idempotency_records()

    again = api.post("/orders", json=body, headers={"Idempotency-Key": idempotency_key})

    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    forget_idempotency_records()
    headers, sent = {"Idempotency-Key": idempotency_key}, dict(body)
    if other == "key":
        headers = {"Idempotency-Key": unique("idem")}
    elif other == "body":
        sent["lines"] = [{"sku": sku, "quantity": 2}]
    else:
        headers = {}
    error = assert_error(api.post("/orders", json=sent, headers=headers), 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]


def test_an_order_with_an_external_id_sent_again_after_24_hours_under_its_key_is_409_duplicate_order(
    api: InProcessApi, sku: str
):
    # The key is honoured for 24 h; the external id for good.
    body = order_body((sku, 1))
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    placed_a_day_ago(first.json()["id"])
    forget_idempotency_records()

    again = api.post("/orders", json=body, headers=key)

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]


THROTTLED = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeds"}}


def idempotency_table_failing(operation: str) -> Any:
    """Make the API's DynamoDB client fail its next `operation` on the idempotency table, throttled
    beyond botocore's retries (moto never throttles). Undone by the returned function."""
    from functions.api.dependencies import container

    events, calls = container().dynamodb.meta.events, {"left": 1}

    def fail(params: dict[str, Any], **_: Any) -> None:
        if calls["left"] and params.get("TableName") == os.environ["IDEMPOTENCY_TABLE"]:
            calls["left"] -= 1
            raise ClientError(THROTTLED, operation)

    events.register(f"before-parameter-build.dynamodb.{operation}", fail)
    return lambda: events.unregister(f"before-parameter-build.dynamodb.{operation}", fail)


@pytest.mark.parametrize("keyless", [True, False], ids=["no-external-id", "external-id"])
def test_an_order_placed_whose_idempotency_record_could_not_be_saved_is_answered_201(
    api: InProcessApi, sku: str, keyless: bool
):
    # The order is written; only the record saying so met a throttled table. It was a 500
    # internal_error: the client, told the order failed, told the customer so while it was charged
    # and shipped. The answer is the order placed; a retry finds it by its id or its created entry.
    body = keyless_order(sku) if keyless else order_body((sku, 1))
    key = {"Idempotency-Key": unique("idem")}
    restore = idempotency_table_failing("UpdateItem")  # powertools marks its record done with UpdateItem
    try:
        placed = api.post("/orders", json=body, headers=key)
    finally:
        restore()

    assert placed.status_code == 201, placed.text
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [placed.json()["id"]]
    forget_idempotency_records()  # the record left in progress expires with the invocation
    again = api.post("/orders", json=body, headers=key)
    assert (again.status_code, again.json()["id"]) == (201, placed.json()["id"]), again.text


def test_an_order_whose_idempotency_record_could_not_be_started_is_503_and_places_nothing(api: InProcessApi, sku: str):
    # The table was too busy to record the request in progress: nothing was placed, and the
    # client may repeat it (503 with Retry-After), not a 500 that reads as a bug.
    body = order_body((sku, 1))
    key = {"Idempotency-Key": unique("idem")}
    restore = idempotency_table_failing("PutItem")
    try:
        busy = api.post("/orders", json=body, headers=key)
    finally:
        restore()

    assert_error(busy, 503, "temporarily_unavailable")
    assert busy.headers.get("Retry-After")
    assert api.orders_of(body["customer"]["id"]) == []
    again = api.post("/orders", json=body, headers=key)
    assert again.status_code == 201, again.text


def test_a_refused_order_whose_idempotency_record_could_not_be_deleted_keeps_its_own_answer(
    api: InProcessApi, sku: str
):
    # Refused (422 unknown_sku), nothing placed; the record in progress could not be deleted. The
    # answer was a 500 internal_error in place of the refusal that tells the client what to fix.
    body = order_body(("NO-SUCH-SKU", 1))
    restore = idempotency_table_failing("DeleteItem")
    try:
        refused = api.post("/orders", json=body, headers={"Idempotency-Key": unique("idem")})
    finally:
        restore()

    assert_error(refused, 422, "unknown_sku", "lines[0].sku")
    assert api.orders_of(body["customer"]["id"]) == []


def placed_a_day_ago(order_id: str) -> None:
    """Make the stored order look placed (and last changed) 25 hours ago."""
    client, table = boto3.client("dynamodb", region_name="us-east-1"), os.environ["ORDERS_TABLE"]
    item = client.get_item(TableName=table, Key={"id": {"S": order_id}})["Item"]
    then = utc_now() - timedelta(hours=25)
    doc = stored_document(item)
    doc["created_at"] = doc["updated_at"] = then.isoformat().replace("+00:00", "Z")
    client.update_item(
        TableName=table,
        Key={"id": {"S": order_id}},
        UpdateExpression="SET created_at = :at, #doc = :doc",
        ExpressionAttributeNames={"#doc": "doc"},
        ExpressionAttributeValues={":at": {"S": timestamp(then)}, ":doc": document_attribute(doc)},
    )


def test_the_key_and_body_sent_again_after_24_hours_place_a_new_order(api: InProcessApi, sku: str):
    # The key is honoured for 24 h: after that the same key and body are a new order (a weekly
    # reorder under a fixed key), not yesterday's order answered again with nothing placed.
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    placed_a_day_ago(first.json()["id"])
    forget_idempotency_records()

    later = api.post("/orders", json=body, headers=key)

    assert later.status_code == 201, later.text
    assert later.json()["id"] != first.json()["id"]
    assert later.json()["status"] == "pending"
    assert sorted(order["id"] for order in api.orders_of(body["customer"]["id"])) == sorted(
        [first.json()["id"], later.json()["id"]]
    )


def test_an_order_sent_again_after_it_took_the_last_units_is_409_duplicate_naming_it(api: InProcessApi):
    # A client whose POST timed out sends it again, its external_id the guard against a second
    # order: once the first had reserved the last units the answer was 409 insufficient_stock, and
    # the client told the customer "sold out" while the first order was charged and shipped.
    (last,) = Catalog(api).stocked("5.00", on_hand=1)
    body = order_body((last, 1))
    first = api.post("/orders", json=body)
    assert first.status_code == 201, first.text
    run_to_allocated(api, first.json()["id"])

    again = api.post("/orders", json=body)

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]


# --- Idempotency-Key replays and channel + external_id uniqueness ------------------------------------


def test_the_same_key_and_body_replay_the_first_201_and_create_one_order(api: InProcessApi, sku: str):
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}

    first = api.post("/orders", json=body, headers=key)
    second = api.post("/orders", json=body, headers=key)

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json() == first.json()
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_a_retry_sending_null_for_fields_its_first_attempt_left_out_is_the_same_body_and_replays_the_first_201(
    api: InProcessApi, sku: str
):
    # The key's payload is the body as validated (routes/orders.py), not its bytes: a field sent as
    # null is that field left out, so a client's retry that spells it either way is the same request.
    body = keyless_order(sku)
    key = {"Idempotency-Key": unique("idem")}
    first = api.post("/orders", json=body, headers=key)
    nulls = dict.fromkeys(["external_id", "fulfillment", "shipping_method", "promo_codes"])

    retried = api.post("/orders", json={**body, **nulls}, headers=key)

    assert first.status_code == 201, first.text
    assert retried.status_code == 201, retried.text
    assert retried.json() == first.json()
    assert [order["id"] for order in api.orders_of(body["customer"]["id"])] == [first.json()["id"]]


def test_the_same_key_with_another_body_is_409_idempotency_key_reused_and_changes_nothing(api: InProcessApi, sku: str):
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
    api: InProcessApi, sku: str, breakage: dict, code: str, field: str
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
def test_a_malformed_idempotency_key_is_400_malformed_header_and_places_nothing(api: InProcessApi, sku: str, key: str):
    body = keyless_order(sku)

    response = api.post("/orders", json=body, headers={"Idempotency-Key": key.encode().decode("latin-1")})

    assert_error(response, 400, "malformed_header")
    assert api.orders_of(body["customer"]["id"]) == []


def test_an_idempotency_key_of_255_printable_characters_is_accepted(api: InProcessApi, sku: str):
    response = api.post("/orders", json=keyless_order(sku), headers={"Idempotency-Key": "k" * 254 + "~"})

    assert response.status_code == 201, response.text


def test_a_second_order_with_the_same_channel_and_external_id_is_409_naming_the_first_order(
    api: InProcessApi, sku: str
):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body)
    assert first.status_code == 201, first.text

    again = api.post("/orders", json={**body, "lines": [{"sku": sku, "quantity": 3}]})

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]
    assert api.get(f"/orders/{first.json()['id']}").json() == first.json()
    assert api.orders_of(body["customer"]["id"]) == [first.json()]


def test_a_new_idempotency_key_does_not_get_around_channel_and_external_id_uniqueness(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body, headers={"Idempotency-Key": unique("idem")})
    assert first.status_code == 201, first.text

    again = api.post("/orders", json=body, headers={"Idempotency-Key": unique("idem")})

    error = assert_error(again, 409, "duplicate_order")
    assert error["details"][0]["order_id"] == first.json()["id"]
    assert len(api.orders_of(body["customer"]["id"])) == 1


def test_the_same_external_id_in_another_channel_is_another_order(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    first = api.post("/orders", json=body)
    other = api.post("/orders", json={**body, "channel": unique("ch")})

    assert first.status_code == 201, first.text
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
