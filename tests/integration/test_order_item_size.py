"""What DynamoDB bills an order's writes, through the in-process API and the workflow's steps on
moto: a one-line order placed as a storefront that retries safely places it (an external_id, an
Idempotency-Key: make run's first order) stays under 1 KB, one write unit a write, from capture to
delivery; its writes change seven index entries, four of the status index's (a pickup order's two
more, its store's list's); the key adds only a few bytes to any order's item; and the key's own
record, which keeps the answer to replay, is one write unit for an order of up to three lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import boto3
import pytest
from botocore.client import BaseClient

from bench.cost import item_bytes
from bench.workflow import orders_indexes, updated_attributes
from infra.local.seed import DEMO_SEED
from tests.integration.in_process import InProcessApi, idempotency_records, in_process_api_with_labels, run_to_allocated

# The quick start's order (README), as a storefront that retries safely sends it.
QUICK_START_ORDER = {
    "channel": "web",
    "external_id": "web-1001",
    "currency": "USD",
    "customer": {"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace"},
    "lines": [{"sku": "TSHIRT-BLK-M", "quantity": 2}],
    "shipping_address": {"name": "Ada Lovelace", "line1": "1 Market St", "city": "San Francisco",
                         "region": "CA", "postal_code": "94105", "country": "US"},
    "promo_codes": ["WELCOME10"],
    "payment": {"method": "test", "token": "tok_approve"},
}  # fmt: skip


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        seed = json.loads(DEMO_SEED.read_text(encoding="utf-8"))  # what `make run` seeds
        for product in seed["products"]:
            body = {k: v for k, v in product.items() if k != "sku"}
            assert started.put(f"/products/{quote(product['sku'], safe='')}", json=body).status_code in (200, 201)
        for location in seed["locations"]:
            body = {k: v for k, v in location.items() if k != "id"}
            assert started.put(f"/locations/{location['id']}", json=body).status_code in (200, 201)
        for stock in seed["stock"]:
            path = f"/inventory/{stock['sku']}/{stock['location_id']}"
            assert started.put(path, json={"on_hand": stock["on_hand"]}).status_code in (200, 201)
        yield started


def billed_bytes(order_id: str) -> int:
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName="test-OrdersTable", Key={"id": {"S": order_id}}
    )["Item"]
    return item_bytes(item)


def delivered(api: InProcessApi, body: dict[str, object], headers: dict[str, str]) -> list[int]:
    """The billed size of the order's item after each of its writes: placed with `body`, authorized,
    reserved, booked (the workflow's steps, as the state machine runs them), shipped, delivered."""
    from functions.bootstrap import Config, bootstrap

    placed = api.post("/orders", json=body, headers=headers)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    sizes = [billed_bytes(order_id)]
    steps = bootstrap(Config.from_env()).workflow
    for step in (lambda: steps.authorize_payment(order_id, attempt=0), lambda: steps.reserve_stock(order_id),
                 lambda: steps.create_shipments(order_id)):  # fmt: skip
        step()
        sizes.append(billed_bytes(order_id))
    (shipment,) = api.get(f"/orders/{order_id}").json()["shipments"]
    for action in ("ship", "deliver"):
        answer = api.post(f"/orders/{order_id}/shipments/{shipment['id']}/{action}")
        assert answer.status_code == 200, answer.text
        sizes.append(billed_bytes(order_id))
    assert api.get(f"/orders/{order_id}").json()["status"] == "delivered"
    return sizes


def test_the_first_order_make_run_suggests_placed_with_its_idempotency_key_is_under_one_kb_through_delivery(
    api: InProcessApi,
):
    # DynamoDB bills a write one unit per started KB of the larger of the item before and after
    # it. The created entry kept 24 characters of a hash of the request ("api:" before them) and 24
    # of what it asked: this order, as a storefront that retries safely places it, was 1,036 bytes
    # once delivered, and its delivery billed two units.
    from infra.local.__main__ import FIRST_ORDER

    sizes = delivered(api, FIRST_ORDER, {"Idempotency-Key": "first-order"})

    assert len(sizes) == 6 and sizes == sorted(sizes), sizes  # every write of it, each adding bytes
    assert sizes[-1] < 1024, sizes  # one write unit each, the delivery's included


def index_entries_written(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """For each write of the Orders table from now on, the index entries it adds, moves, rewrites or
    removes, per index: DynamoDB's rules (bench.workflow.Index, the bench's own model) applied to
    the template's indexes and to the attributes each request leaves on the item."""
    writes: list[dict[str, int]] = []
    attributes: dict[str, dict] = {}
    indexes = orders_indexes()
    real = BaseClient._make_api_call

    def counted(client: BaseClient, operation: str, params: dict) -> object:
        answer = real(client, operation, params)
        if params.get("TableName") != "test-OrdersTable" or operation not in ("PutItem", "UpdateItem"):
            return answer
        if operation == "PutItem":
            new = {k: v for k, v in params["Item"].items() if k != "history"}
            writes.append({index.name: index.writes_on_put(new) for index in indexes})
        else:
            old = attributes[params["Key"]["id"]["S"]]
            new = updated_attributes(old, params)
            writes.append({index.name: index.writes_on_update(old, new) for index in indexes})
        attributes[new["id"]["S"]] = new
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", counted)
    return writes


def test_an_order_s_writes_from_capture_to_delivery_change_seven_index_entries(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # An authorized order keeps the status index entry it was placed with (the pending and the
    # authorized orders are one partition, both the workflow's for seconds and both watched by the
    # reconciler and the jeopardy scan, which read each order they find): its key moved at the
    # authorization, two entry writes, six of the status index's an order where now four.
    writes = index_entries_written(monkeypatch)

    delivered(api, {**QUICK_START_ORDER, "external_id": "web-5001"}, {"Idempotency-Key": "index-entries"})

    # Placed, authorized, reserved, booked, the ship's capture request, shipped, delivered.
    assert [write["by_status_key"] for write in writes] == [1, 0, 0, 2, 0, 1, 0], writes
    assert {name: sum(write[name] for write in writes) for name in writes[0]} == {
        "by_customer": 1, "by_channel": 1, "by_status_key": 4, "by_created": 1,
        "by_sla": 0, "by_pickup_deadline": 0, "by_pending_refund": 0, "by_pickup_location": 0,
    }  # fmt: skip


def test_a_pickup_order_is_on_its_stores_list_from_one_index_entry_written_at_placement_and_removed_at_collection(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # The store's list (by_pickup_location) costs a pickup order two entry writes in its whole life
    # and an order shipped home none (above): its store and its placement never change.
    writes = index_entries_written(monkeypatch)
    at_store = {"type": "pickup", "location_id": "store-sf"}
    body = {**QUICK_START_ORDER, "external_id": "web-5002", "fulfillment": at_store}
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    (shipment,) = run_to_allocated(api, order_id)["shipments"]
    for action in ("ready", "deliver"):
        answer = api.post(f"/orders/{order_id}/shipments/{shipment['id']}/{action}")
        assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "delivered"

    # Placed, authorized, reserved, booked, readied, the collect's capture request, collected.
    assert [write["by_pickup_location"] for write in writes] == [1, 0, 0, 0, 0, 0, 1], writes


def test_an_idempotency_key_adds_a_few_bytes_to_an_orders_item(api: InProcessApi):
    # What the created entry keeps of the request (request_key): 8 characters where it was 28 (and 8
    # of its body's hash where it was 24, keyed or not), in every write of an order a storefront
    # places with a key: ~28 bytes more than the same order placed without one, now ~14. Ids and
    # times differ from order to order (a pair's difference ran from 9 to 20 bytes): five pairs.
    keyed, unkeyed = [], []
    for n in range(5):
        body = {**QUICK_START_ORDER, "external_id": f"web-2{n:03d}"}
        answer = api.post("/orders", json=body, headers={"Idempotency-Key": f"pair-{n}"})
        assert answer.status_code == 201, answer.text
        keyed.append(billed_bytes(answer.json()["id"]))
        answer = api.post("/orders", json={**body, "external_id": f"web-3{n:03d}"})
        assert answer.status_code == 201, answer.text
        unkeyed.append(billed_bytes(answer.json()["id"]))

    assert sum(keyed) - sum(unkeyed) <= 5 * 22, (keyed, unkeyed)


SEEDED_SKUS = ("TSHIRT-BLK-M", "MUG-001", "HOODIE-GRY-L")


@pytest.mark.parametrize("skus", [SEEDED_SKUS[:1], SEEDED_SKUS[:2], SEEDED_SKUS], ids=["1 line", "2 lines", "3 lines"])
def test_the_idempotency_record_of_an_order_of_up_to_three_lines_is_under_one_kb(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch, skus: tuple[str, ...]
):
    # powertools writes the key's record twice, in progress and then completed with the answer to
    # replay, the order placed. The record's id starts with the function's name: the longest Lambda
    # allows (64 characters). With the answer as its plain JSON, the record here was 1,969 bytes, its
    # completion billed two write units (two lines: 2,351 bytes; three lines: 2,742, three units).
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "oms-production-ApiFunction-".ljust(64, "x"))
    body = {**QUICK_START_ORDER, "external_id": f"web-4{len(skus):03d}",
            "lines": [{"sku": sku, "quantity": 2} for sku in skus]}  # fmt: skip
    before = idempotency_records()

    placed = api.post("/orders", json=body, headers={"Idempotency-Key": f"record-{len(skus)}"})

    assert placed.status_code == 201, placed.text
    (record,) = (item for key, item in idempotency_records().items() if key not in before)
    assert record["status"] == {"S": "COMPLETED"}
    assert item_bytes(record) < 1024, item_bytes(record)


def test_with_plain_idempotency_records_the_answer_is_kept_as_a_release_before_deflated_ones_reads_it(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # PlainIdempotencyRecords true, the first deploy of an upgrade: a release that reads plain
    # answers only (the canary's old version, a rollback) must be able to replay what this one
    # records, and this one still replays a record another container kept deflated.
    from functions.bootstrap import forget_warm_containers

    body = {**QUICK_START_ORDER, "external_id": "web-4901"}
    monkeypatch.setenv("OMS_PLAIN_IDEMPOTENCY_RECORDS", "true")
    forget_warm_containers()
    before = idempotency_records()

    placed = api.post("/orders", json=body, headers={"Idempotency-Key": "plain-record"})

    assert placed.status_code == 201, placed.text
    (record,) = (item for key, item in idempotency_records().items() if key not in before)
    assert json.loads(record["data"]["S"]) == json.loads(json.dumps(placed.json(), sort_keys=True))
    monkeypatch.setenv("OMS_PLAIN_IDEMPOTENCY_RECORDS", "false")
    forget_warm_containers()
    deflated_body = {**QUICK_START_ORDER, "external_id": "web-4902"}
    first = api.post("/orders", json=deflated_body, headers={"Idempotency-Key": "deflated-record"})
    monkeypatch.setenv("OMS_PLAIN_IDEMPOTENCY_RECORDS", "true")
    forget_warm_containers()
    again = api.post("/orders", json=deflated_body, headers={"Idempotency-Key": "deflated-record"})
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    monkeypatch.delenv("OMS_PLAIN_IDEMPOTENCY_RECORDS")
    forget_warm_containers()
