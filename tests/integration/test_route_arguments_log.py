"""What powertools' debug line of a POST /orders holds: the order's name, never its customer, address,
lines or payment token (core.models.PlaceOrder's repr, which powertools formats on every request)."""

from __future__ import annotations

import logging

import pytest

from tests.e2e.client import Catalog, order_body
from tests.integration.in_process import InProcessApi

ROUTE_ARGUMENTS = "Calling API Route Handler"


def test_the_route_arguments_line_names_the_order_without_the_customer_or_payment(
    api: InProcessApi, caplog: pytest.LogCaptureFixture
):
    (sku,) = Catalog(api).stocked("19.99")
    body = order_body((sku, 1), customer={"id": "cus_logged", "email": "ada@example.com", "name": "Ada Lovelace"})
    caplog.set_level(logging.DEBUG, logger="aws_lambda_powertools.event_handler.api_gateway")

    placed = api.post("/orders", json=body)

    assert placed.status_code == 201, placed.text
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(ROUTE_ARGUMENTS)]
    assert f"external_id='{body['external_id']}'" in line and "channel='web'" in line, line
    written = [
        "cus_logged", "ada@example.com", "Ada Lovelace", sku, body["shipping_address"]["line1"], "tok_approve",
    ]  # fmt: skip
    assert [text for text in written if text in line] == [], line
