"""Pages of orders and returns against Lambda's 6 MB response (the local gateway holds the API
function to it, as AWS does; API Gateway answers a larger one with a 502): an order answers up to
~620 KB of JSON as the proxy response carries it (the largest order POST /orders takes, a parcel a
line, every line returned on its own, its texts wide characters the API writes as escapes), a return
of 100 lines with the longest reasons ~280 KB, so `limit=100` of either was far over it. A page now
ends where the next item would take it past its room, with the cursor of the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from core.models import HistoryEntry
from core.money import Money
from core.return_models import Return, ReturnLine
from core.status import OrderStatus
from tests.integration.in_process import InProcessApi, in_process_api_with_labels
from tests.integration.test_event_sizes import WIDE, the_largest_order

LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024  # a synchronous invocation's response, as Lambda counts it
ORDERS = 14
RETURNS = 30


def _id(prefix: str, n: int) -> str:
    """The n-th id of its kind (24 characters of base32, as the API's are)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return prefix + "a" * 22 + letters[n // 26] + letters[n % 26]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    from functions.bootstrap import Config, bootstrap

    with in_process_api_with_labels() as started:
        orders = bootstrap(Config.from_env()).order_repository
        largest = the_largest_order(OrderStatus.DELIVERED, delivered=100)
        for n in range(ORDERS):
            order = largest.model_copy(
                update={"id": _id("ord_", n), "created_at": largest.created_at + timedelta(minutes=n)}
            )
            created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key")
            orders.add(order, created, payment_token="tok_approve")
        returns = bootstrap(Config.from_env()).return_repository
        zero = Money.zero("USD")
        for n in range(1, RETURNS + 1):
            at = largest.created_at + timedelta(hours=1, minutes=n)
            lines = [ReturnLine(line_id=f"L{k}", quantity=1, reason=WIDE * 200) for k in range(1, 101)]
            returns.add(
                Return(
                    id=_id("rma_", n), order_id=_id("ord_", 0), channel=largest.channel, ordinal=n,
                    status="requested", lines=lines, refund=zero, fee=zero, created_at=at, updated_at=at, version=1,
                )
            )  # fmt: skip
        yield started


def _response_bytes(body: str) -> int:
    """What Lambda counts of the API function's answer: the proxy response's JSON, its body a JSON
    string in it (every quote and escape of the body escaped again), plus its status and headers."""
    return len(json.dumps({"statusCode": 200, "body": body})) + 2048


def _every_page(api: InProcessApi, path: str) -> tuple[list[str], int]:
    """The ids `path` lists at `limit=100`, following its cursor; and how many pages it took."""
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        answer = api.get(path, params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        assert _response_bytes(answer.text) <= LAMBDA_RESPONSE_BYTES, _response_bytes(answer.text)
        page = answer.json()
        assert page["items"], "a page holds at least one order"
        seen += [order["id"] for order in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, pages


def test_a_page_of_the_largest_orders_fits_lambdas_response_and_its_cursor_reads_on(api: InProcessApi):
    seen, pages = _every_page(api, "/orders")
    assert seen == [_id("ord_", n) for n in reversed(range(ORDERS))]  # each once, newest first
    assert pages > 1


def test_pages_of_the_largest_returns_fit_lambdas_response_and_their_cursors_read_on(api: InProcessApi):
    ids = [_id("rma_", n) for n in range(1, RETURNS + 1)]
    seen, pages = _every_page(api, f"/orders/{_id('ord_', 0)}/returns")
    assert seen == ids and pages > 1  # oldest first
    seen, pages = _every_page(api, "/returns")
    assert seen == ids[::-1] and pages > 1  # newest first


def test_a_page_that_fits_keeps_its_limit(api: InProcessApi):
    answer = api.get("/orders", params={"limit": 3})
    page = answer.json()
    assert [order["id"] for order in page["items"]] == [_id("ord_", n) for n in (13, 12, 11)]
    assert page["next_cursor"] is not None


def test_a_page_that_fits_is_written_once_and_answered_as_written(api: InProcessApi, monkeypatch):
    # Bounding the page serialized each order once more on every list (and the response validation
    # then wrote the page again): the page's own JSON is both what is measured and what is answered.
    from pydantic import BaseModel, TypeAdapter

    from core.models import Order
    from functions.api.schemas import OrderPage

    written: list[str] = []
    to_json, to_python = BaseModel.model_dump_json, TypeAdapter.dump_python

    def model_dump_json(self: BaseModel, **kwargs: Any) -> str:
        if isinstance(self, Order | OrderPage):
            written.append(type(self).__name__)
        return to_json(self, **kwargs)

    def dump_python(self: TypeAdapter, value: Any, **kwargs: Any) -> Any:
        if isinstance(value, Order | OrderPage):
            written.append(type(value).__name__)
        return to_python(self, value, **kwargs)

    monkeypatch.setattr(BaseModel, "model_dump_json", model_dump_json)
    monkeypatch.setattr(TypeAdapter, "dump_python", dump_python)
    answer = api.get("/orders", params={"limit": 3})

    assert answer.status_code == 200, answer.text
    assert written == ["OrderPage"]
    page = OrderPage.model_validate_json(answer.content)
    assert len(page.items) == 3
    # Byte for byte what powertools' response validation would have written for the same page.
    assert answer.text == json.dumps(page.model_dump(mode="json"), separators=(",", ":"))
