"""What a hostile or careless client sends to the endpoints added after the first hostile-input
sweeps (webhooks, purchasing, sourcing rules, holds, store execution, customers, reports), through
the in-process gateway in front of the real authorizer and API handler: each answer is the
contract's error shape with its status, never a 500, names the field at fault, and changes nothing
that was stored."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.e2e.client import Catalog, assert_error, order_body, put_network
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    from functions.bootstrap import forget_warm_containers

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LABELS_BUCKET", "hostile-labels")  # the shipments made in-process book labels there
        with in_process_api_with_webhooks() as started:
            boto3.client("s3").create_bucket(Bucket="hostile-labels")
            forget_warm_containers()
            yield started


# Host names the resolver cannot even encode (an empty label, one over 63 characters): Python's
# getaddrinfo raises UnicodeError for them, not the OSError of a name that does not resolve.
@pytest.mark.parametrize("url", ["https://hooks..example.com/in", "https://./in", f"https://{'a' * 64}.example.com/in"])
def test_a_webhook_url_whose_host_cannot_be_a_dns_name_is_refused_not_a_500(api: InProcessApi, url: str):
    answer = api.post("/webhooks", json={"url": url, "events": ["*"]})

    assert_error(answer, 422, "webhook_url_refused", "url")
    assert api.get("/webhooks").json()["items"] == []


@pytest.fixture(scope="module")
def open_po(api: InProcessApi) -> str:
    network = put_network(api)
    sku = Catalog(api).product("9.00")
    assert api.put("/vendors/acme", json={"name": "Acme", "lead_time_days": 3}).status_code in (200, 201)
    line = {"sku": sku, "quantity": 4, "unit_cost": {"amount": "4.00", "currency": "USD"}}
    created = api.post("/purchase-orders", json={"vendor_id": "acme", "location_id": network["east"], "lines": [line]})
    assert created.status_code == 201, created.text
    return created.json()["id"]


@pytest.fixture(scope="module")
def webhook(api: InProcessApi) -> str:
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert made.status_code == 201, made.text
    return made.json()["id"]


# API.md: unknown fields in a request body are 422, never silently dropped. A route that reads no
# body knows every field as unknown: a PO cancelled with {"reason": ...} kept no reason, yet said 200.
def test_a_purchase_order_cancel_with_fields_it_does_not_read_is_422_and_cancels_nothing(
    api: InProcessApi, open_po: str
):
    refused = api.post(f"/purchase-orders/{open_po}/cancel", json={"reason": "vendor closed", "force": True})

    error = assert_error(refused, 422, "validation_error", "reason", "force")
    assert all(detail["message"] == "Extra inputs are not permitted" for detail in error["details"])
    assert api.get(f"/purchase-orders/{open_po}").json()["status"] == "open"


def test_a_webhook_delete_with_fields_it_does_not_read_is_422_and_deletes_nothing(api: InProcessApi, webhook: str):
    refused = api.request("DELETE", f"/webhooks/{webhook}", json={"cascade": True})

    assert_error(refused, 422, "validation_error", "cascade")
    assert api.get(f"/webhooks/{webhook}").status_code == 200


@pytest.mark.parametrize("method, path", [("GET", "/sourcing/rules"), ("GET", "/vendors"), ("GET", "/webhooks")])
def test_a_read_sent_a_body_with_fields_is_422(api: InProcessApi, method: str, path: str):
    assert_error(api.request(method, path, json={"limit": 1}), 422, "validation_error", "limit")


@pytest.mark.parametrize("body", [None, {}])
def test_a_route_that_reads_no_body_still_takes_none_or_an_empty_object(
    api: InProcessApi, open_po: str, body: dict[str, object] | None
):
    assert api.request("GET", f"/purchase-orders/{open_po}", json=body).status_code == 200
    assert api.request("GET", "/sourcing/rules", json=body).status_code == 200


# --- The matrix: a hostile value in each field of each newer write ------------------------------------
@pytest.fixture(scope="module")
def world(api: InProcessApi, open_po: str) -> dict[str, Any]:
    """An allocated order with its pending shipment, the open PO, its sku and location."""
    from functions.api.dependencies import container

    po = api.get(f"/purchase-orders/{open_po}").json()
    sku, location = po["lines"][0]["sku"], po["location_id"]
    assert api.put(f"/inventory/{sku}/{location}", json={"on_hand": 10}).status_code == 200
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    workflow = container().workflow
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order["status"]
    return {"po": open_po, "sku": sku, "location": location, "order": order_id, "shipment": order["shipments"][0]["id"]}


HOSTILE: dict[str, Any] = {
    "null": None,
    "a number as a string": "1",
    "an array": [],
    "an object": {},
    "negative": -1,
    "huge": 10**20,
    "a bidi override": "\u202egnp.exe",
    "5000 characters": "a" * 5000,
}
MONEY = {"amount": "4.00", "currency": "USD"}


def _routes(w: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Each newer write: method, path, and a body it accepts."""
    line = {"sku": w["sku"], "quantity": 1, "unit_cost": MONEY}
    return {
        "vendor": ("PUT", "/vendors/acme", {"name": "Acme", "lead_time_days": 3}),
        "po": (
            "POST",
            "/purchase-orders",
            {"vendor_id": "acme", "location_id": w["location"], "lines": [line], "expected_at": "2030-01-31T09:00:00Z"},
        ),
        "receive": ("POST", f"/purchase-orders/{w['po']}/receive", {"lines": [{"sku": w["sku"], "quantity": 1}]}),
        "reorder": (
            "PUT",
            f"/inventory/{w['sku']}/{w['location']}/reorder",
            {"reorder_point": 2, "reorder_quantity": 5, "vendor_id": "acme"},
        ),
        "rules": (
            "PUT",
            "/sourcing/rules",
            {"max_shipments": 2, "excluded_locations": [w["location"]], "prefer": "nearest"},
        ),
        "simulate": ("POST", "/sourcing/simulate", {"orders": [w["order"]]}),
        "hold": ("POST", f"/orders/{w['order']}/hold", {"reason": "other", "note": "checking"}),
        "reject": ("POST", f"/orders/{w['order']}/shipments/{w['shipment']}/reject", {"reason": "no staff"}),
        "webhook": ("POST", "/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["order.created"]}),
    }


# (route, the field as the error names it, the hostile values that are valid there).
FIELDS = [
    ("vendor", "name", {"a number as a string"}),
    ("vendor", "lead_time_days", set()),
    ("po", "vendor_id", set()),
    ("po", "location_id", set()),
    ("po", "lines[0].sku", set()),
    ("po", "lines[0].quantity", set()),
    ("po", "lines[0].unit_cost.amount", {"a number as a string"}),  # "1" is 1.00
    ("po", "lines[0].unit_cost.currency", set()),
    ("po", "expected_at", {"null"}),
    ("receive", "lines[0].sku", set()),
    ("receive", "lines[0].quantity", set()),
    ("reorder", "reorder_point", set()),
    ("reorder", "reorder_quantity", set()),
    ("reorder", "vendor_id", set()),
    ("rules", "max_shipments", {"null"}),
    ("rules", "excluded_locations[0]", set()),
    ("rules", "prefer", set()),
    ("simulate", "orders[0]", set()),
    ("hold", "reason", set()),
    ("hold", "note", {"null", "a number as a string"}),
    ("reject", "reason", {"a number as a string"}),
    ("webhook", "url", set()),
    ("webhook", "events[0]", set()),
]


def _set(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with `field` ("lines[0].unit_cost.amount") set to `value`."""
    changed = copy.deepcopy(body)
    steps: list[str | int] = [int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", field)]
    target: Any = changed
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value
    return changed


def _state() -> list[Any]:
    """What the matrix must leave as it was: every item of every table of the account (orders,
    POs, rules, stock, vendors, webhooks, idempotency records, ...) and every object's key in S3,
    read from moto's memory. It once asked the API for seven views of them, before and after each
    of some 230 cases: three quarters of this module's time, and blind to a write outside those
    views; a scan through boto3 cost more than the views."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3.models import s3_backends

    tables = {
        name: sorted(json.dumps(item.to_json(), sort_keys=True, default=str) for item in table.all_items())
        for name, table in dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables.items()
    }
    objects = {name: sorted(bucket.keys) for name, bucket in s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.items()}
    return [tables, objects]


CASES = [
    pytest.param(route, field, value, id=f"{route} {field} {name}")
    for route, field, valid in FIELDS
    for name, value in HOSTILE.items()
    if name not in valid
]


@pytest.mark.parametrize(("route", "field", "value"), CASES)
def test_a_hostile_value_is_422_naming_its_field_and_changes_nothing(
    api: InProcessApi, world: dict[str, Any], route: str, field: str, value: Any
):
    method, path, body = _routes(world)[route]
    before = _state()

    answer = api.request(method, path, json=_set(body, field, value))

    error = assert_error(answer, 422)
    named = [detail.get("field") or "" for detail in error["details"]]
    assert any(name == field or name.startswith((f"{field}.", f"{field}[")) for name in named), (field, error)
    assert _state() == before


@pytest.mark.parametrize(
    "route", ["vendor", "po", "receive", "reorder", "rules", "simulate", "hold", "reject", "webhook"]
)
@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"null", 400), (b"[]", 400), (b"\xff\xfe{}", 400), (b'{"a": 1, "a": 2}', 400), (b"{", 400), (b"", 422)],
)
def test_a_body_that_is_not_one_json_object_is_refused_in_the_contracts_shape(
    api: InProcessApi, world: dict[str, Any], route: str, raw: bytes, status: int
):
    method, path, _ = _routes(world)[route]
    before = _state()

    answer = api.request(method, path, data=raw, headers={"Content-Type": "application/json"})

    assert_error(answer, status)
    assert _state() == before


def test_the_state_the_matrix_compares_sees_a_write_of_each_kind_it_guards(api: InProcessApi, world: dict[str, Any]):
    # Else `_state() == before` could hold whatever a refused request wrote.
    writes = [
        ("PUT", "/vendors/state-probe", {"name": "Probe", "lead_time_days": 1}),
        ("PUT", f"/inventory/{world['sku']}/{world['location']}", {"on_hand": 11}),
        ("PUT", "/sourcing/rules", {"max_shipments": 3, "excluded_locations": [], "prefer": "nearest"}),
    ]
    for method, path, body in writes:
        before = _state()
        answer = api.request(method, path, json=body)
        assert answer.status_code in (200, 201), (path, answer.text)
        assert _state() != before, path


def test_the_matrix_routes_take_their_valid_bodies(api: InProcessApi, world: dict[str, Any]):
    # Else every refusal above could be for a reason the matrix did not mean.
    for name, (method, path, body) in _routes(world).items():
        if name not in ("hold", "reject", "receive"):
            answer = api.request(method, path, json=body)
            assert answer.status_code in (200, 201), (name, answer.text)


# The 404 of an id that cannot be one repeats it, for a person to read: "\u202e" in it reversed the
# rest of the message on their screen, and a NUL or an ESC went into it as sent.
@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/whk_\u202egnp.exe",
        "/customers/ada\u202e\u2066",
        "/purchase-orders/po_\x1b[2J",
        "/orders/ord_\x00/access-log",
    ],
)
def test_a_404_repeats_an_impossible_id_with_its_controls_and_bidi_overrides_made_visible(api: InProcessApi, path: str):
    error = assert_error(api.get(path), 404, "not_found")

    assert error["message"].isprintable(), error["message"]
    assert not any(0x202A <= ord(char) <= 0x202E or 0x2066 <= ord(char) <= 0x2069 for char in error["message"])
    assert "\\u202e" in error["message"] or "\\x1b" in error["message"] or "\\x00" in error["message"]


# Content-Type is one header (RFC 9110: a singleton field). Sent twice, the body was read by the last
# value alone: `text/plain` then `application/json` made a webhook, the same two the other way round
# were 415, and `application/json` twice passed. As If-Match or Idempotency-Key sent twice are, it is
# a malformed header, 400, whatever the values and their order, and nothing is written.
@pytest.mark.parametrize("route", ["vendor", "po", "receive", "rules", "simulate", "hold", "webhook"])
@pytest.mark.parametrize(
    "types",
    [("text/plain", "application/json"), ("application/json", "text/plain"), ("application/json", "application/json")],
    ids=["plain then json", "json then plain", "json twice"],
)
def test_a_content_type_sent_twice_is_400_naming_it_and_writes_nothing(
    api: InProcessApi, world: dict[str, Any], route: str, types: tuple[str, str]
):
    method, path, body = _routes(world)[route]
    before = _state()

    # Names differing in case are one header sent twice (RFC 9110), as the gateway hands them on.
    answer = api.request(
        method, path, data=json.dumps(body), headers={"Content-Type": types[0], "content-type": types[1]}
    )

    error = assert_error(answer, 400, "malformed_header", "Content-Type")
    assert error["details"] == [{"field": "Content-Type", "message": "given 2 times: send it once"}]
    assert _state() == before
