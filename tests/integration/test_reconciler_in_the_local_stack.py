"""The whole loop on the local stack: an order placed 20 minutes ago whose workflow never started
(the outbox's stream mapping is paused, as if every start had failed and the stream had moved on)
is found by the scheduled reconciler and allocated by the workflow it starts again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from core.models import utc_now
from functions.adapters.dynamodb import timestamp
from infra.local.event_sources import SCHEDULE_PERIOD_ENV
from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog, document_attribute, order_body, put_network, stored_document

OUTBOX = "OutboxFunction.OrdersStream"
RECONCILER = "ReconcilerFunction.EveryFiveMinutes"


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SCHEDULE_PERIOD_ENV, "0.2")
        with running_stack(parameter_overrides={"ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}) as started:
            yield started


@pytest.fixture(autouse=True)
def only_granted_calls(stack: EmbeddedStack) -> Iterator[None]:
    """Every call the reconciler (and the workflow it restarts) makes is one the template grants,
    by table, index and action: moto lets through what AWS refuses."""
    from tests.template_iam import only_granted_calls as checked

    reconciler = stack.functions["ReconcilerFunction"]
    with checked(stack, expected=("ReconcilerFunction",), settle_seconds=2):
        turns = reconciler.invocations
        yield
        # It runs every 0.2 s, and a test may end sooner (a settle returns once nothing is pending):
        # what it is checked for is a turn taken while the test's fixture records.
        deadline = time.monotonic() + 10
        while reconciler.invocations == turns and time.monotonic() < deadline:
            time.sleep(0.02)


def age(stack: EmbeddedStack, order_id: str, minutes: float) -> None:
    """Make the stored order look placed (and last changed) `minutes` ago."""
    ddb, table = stack.client("dynamodb"), stack.table_names["OrdersTable"]
    item = ddb.get_item(TableName=table, Key={"id": {"S": order_id}})["Item"]
    then = utc_now() - timedelta(minutes=minutes)
    doc = stored_document(item)
    doc["created_at"] = doc["updated_at"] = then.isoformat().replace("+00:00", "Z")
    ddb.update_item(
        TableName=table,
        Key={"id": {"S": order_id}},
        UpdateExpression="SET created_at = :at, #doc = :doc",
        ExpressionAttributeNames={"#doc": "doc"},
        ExpressionAttributeValues={":at": {"S": timestamp(then)}, ":doc": document_attribute(doc)},
    )


def test_each_scheduled_function_counts_its_turn_in_the_period_the_stack_runs_it_on(stack):
    # The template declares the period (the Schedule's own Mappings entry); the stack overrides it.
    from functions.schedule import period_variable

    for function in ("ReconcilerFunction", "JeopardyScanFunction"):
        name = period_variable(function)
        assert float(stack.function_environments[function][name]) == 5  # what AWS sees: rate(5 minutes)
        assert float(os.environ[name]) * 60 == pytest.approx(stack.mappings[f"{function}.EveryFiveMinutes"].period)


def test_a_stuck_order_the_outbox_never_started_is_restarted_by_the_schedule_and_allocated(stack):
    assert stack.mappings[RECONCILER].period == 0.2
    stack.mappings[RECONCILER].pause()
    stack.mappings[OUTBOX].pause()
    api = Api(stack.api_url, stack.admin_key)
    try:
        network = put_network(api)
        catalog = Catalog(api)
        sku = catalog.product("12.00")
        catalog.stock(sku, network["west"], 3)
        stuck = api.post("/orders", json=order_body((sku, 2))).json()["id"]
        fresh = api.post("/orders", json=order_body((sku, 1))).json()["id"]
        age(stack, stuck, minutes=20)

        stack.mappings[RECONCILER].resume()
        deadline = time.monotonic() + 60
        while api.get(f"/orders/{stuck}").json()["status"] != "allocated":
            assert time.monotonic() < deadline, api.get(f"/orders/{stuck}/history").json()
            time.sleep(0.1)

        assert api.get(f"/orders/{fresh}").json()["status"] == "pending"  # its own start is still to come
        types = [entry["type"] for entry in api.get(f"/orders/{stuck}/history").json()["items"]]
        assert types == ["created", "payment_authorized", "stock_reserved", "allocated"]
    finally:
        api.close()
