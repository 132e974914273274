"""GET /orders/{id} and its history read what was last written: a client that places, ships or edits an order and
reads it straight after (for its `version`, to send as If-Match) must not get the order as it was,
or a 404 for one just placed. DynamoDB's plain GetItem may answer from a replica a moment behind
(moto never does), so the guard is the request the handler makes: a consistent read of the order."""

from __future__ import annotations

from typing import Any

from tests.e2e.client import Catalog, order_body
from tests.integration.in_process import InProcessApi


def test_reading_an_order_or_its_history_reads_it_consistently(api: InProcessApi) -> None:
    from functions.api.dependencies import container

    (sku,) = Catalog(api).stocked("5.00")
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    orders_table = container().config.orders_table
    reads: list[dict[str, Any]] = []
    events = container().dynamodb.meta.events
    events.register("provide-client-params.dynamodb.GetItem", record := lambda params, **_: reads.append(params))
    try:
        answer = api.get(f"/orders/{order_id}")
        history = api.get(f"/orders/{order_id}/history")
    finally:
        events.unregister("provide-client-params.dynamodb.GetItem", record)

    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == placed.json()["version"]
    assert history.status_code == 200 and [e["type"] for e in history.json()["items"]] == ["created"], history.text
    order_reads = [params for params in reads if params["TableName"] == orders_table]
    assert len(order_reads) == 2 and all(params.get("ConsistentRead") is True for params in order_reads), order_reads
