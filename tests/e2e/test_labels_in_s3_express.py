"""LabelsZoneId set, end to end: an order's shipping label is stored in the labels' directory bucket
by the workflow, and the link GET /orders signs for it downloads the PDF without an API key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, order_body, put_network
from tests.e2e.conftest import PARAMETERS

SETTLE_SECONDS = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with running_stack(
        api_port=0, aws_port=0, seed=False, parameter_overrides={**PARAMETERS, "LabelsZoneId": "use1-az4"},
        event_sources=True, retry_delay_scale=0.01,
    ) as started:  # fmt: skip
        yield started


def test_an_orders_label_is_kept_in_the_directory_bucket_and_its_link_downloads(
    stack: EmbeddedStack, api: Api, catalog: Catalog
):
    west = put_network(api)["west"]
    sku = catalog.product("30.00")
    catalog.stock(sku, west, 3)
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]

    assert stack.wait_until_idle(SETTLE_SECONDS), "the stack did not settle"
    deadline = time.monotonic() + SETTLE_SECONDS
    while (order := api.get(f"/orders/{order_id}").json())["status"] != "allocated" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert order["status"] == "allocated", order["status"]
    [shipment] = order["shipments"]

    bucket = stack.bucket_names["LabelsExpressBucket"]
    link = urlsplit(shipment["label_url"])
    assert link.path == f"/{bucket}/labels/{order_id}/{shipment['id']}.pdf"
    assert parse_qs(link.query)["X-Amz-Credential"][0].endswith("/s3express/aws4_request")
    standard = stack.client("s3").list_objects_v2(Bucket=stack.bucket_names["LabelsBucket"])
    assert standard["KeyCount"] == 0  # nothing went to the S3 Standard bucket
    with requests.Session() as printer:
        printer.trust_env = False
        label = printer.get(shipment["label_url"], timeout=10)
    assert label.status_code == 200, label.text[:300]
    assert label.content.startswith(b"%PDF-") and shipment["tracking_number"] in label.content.decode("latin-1")
