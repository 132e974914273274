"""What a hostile or careless client sends to the endpoints added after the first hostile-input
sweeps (webhooks, purchasing, sourcing rules, holds, store execution, customers, reports), through
the in-process gateway in front of the real authorizer and API handler: each answer is the
contract's error shape with its status, never a 500, and names the field at fault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import Catalog, assert_error, put_network
from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with pytest.MonkeyPatch.context() as env:
        # The webhooks service is built with its delivery queue; subscribing never sends to it.
        env.setenv("WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/unused")
        env.setenv("WEBHOOK_ALLOW_LOCAL_HTTP", "true")
        with in_process_api() as started:
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
