"""A page of orders against Lambda's 6 MB response, which AWS enforces and the in-process gateway
does not: an order answers up to ~560 KB of JSON (the largest order POST /orders takes, a parcel a
line, every line returned on its own, its texts wide characters the API writes as escapes), so
`limit=100` of them was over 50 MB, and API Gateway answers a function's oversized response with a
502. A page now ends where the next order would take it past its room, with the cursor of the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from core.models import HistoryEntry
from core.status import OrderStatus
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_event_sizes import the_largest_order

LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024  # a synchronous invocation's response, as Lambda counts it
ORDERS = 14


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    from functions.bootstrap import Config, bootstrap

    with in_process_api_with_labels() as started:
        orders = bootstrap(Config.from_env()).order_repository
        largest = the_largest_order(OrderStatus.DELIVERED, delivered=100)
        for n in range(ORDERS):
            order = largest.model_copy(
                update={"id": f"ord_{n:026d}", "created_at": largest.created_at + timedelta(minutes=n)}
            )
            created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key")
            orders.add(order, created, payment_token="tok_approve")
        yield started


def _response_bytes(body: str) -> int:
    """What Lambda counts of the API function's answer: the proxy response's JSON, its body a JSON
    string in it (every quote and escape of the body escaped again), plus its status and headers."""
    return len(json.dumps({"statusCode": 200, "body": body})) + 2048


def test_a_page_of_the_largest_orders_fits_lambdas_response_and_its_cursor_reads_on(api: InProcessApi):
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        answer = api.get("/orders", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        assert _response_bytes(answer.text) <= LAMBDA_RESPONSE_BYTES, _response_bytes(answer.text)
        page = answer.json()
        assert page["items"], "a page holds at least one order"
        seen += [order["id"] for order in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"ord_{n:026d}" for n in reversed(range(ORDERS))]  # each once, newest first
    assert pages > 1


def test_a_page_that_fits_keeps_its_limit(api: InProcessApi):
    answer = api.get("/orders", params={"limit": 3})
    page = answer.json()
    assert [order["id"] for order in page["items"]] == [f"ord_{n:026d}" for n in (13, 12, 11)]
    assert page["next_cursor"] is not None
