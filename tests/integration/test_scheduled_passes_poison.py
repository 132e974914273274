"""A candidate of a scheduled pass whose own work raises (a record that no longer reads, an item its
table refuses) is read past, named in an ERROR line with its id and counted, and the candidates
behind it are done all the same: it stands at the oldest end of its index, so a pass it stopped
would stop there every run, for good. A dependency down (a throttle past botocore's retries) is no
candidate's own and still ends the pass at the first."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.status import OrderStatus
from tests.integration.test_reconciler import (  # noqa: F401 (fixtures)
    emitted,
    metrics_on,
    only_granted_calls,
    order_id,
    reconcile,
    stack,
    started,
    store,
)


def unreadable(aws: Any, order: str) -> None:
    """The order's stored document made one no version of the code reads (a record written by a
    bug, or by hand): every read of it raises, as a poison record does."""
    aws.dynamodb.update_item(
        TableName=aws.tables["OrdersTable"],
        Key={"id": {"S": order}},
        UpdateExpression="SET doc = :doc",
        ExpressionAttributeValues={":doc": {"S": '{"id": "not an order"}'}},
    )


def test_a_stalled_order_that_no_longer_reads_keeps_no_stalled_order_behind_it_waiting(
    stack, metrics_on, capsys, caplog  # noqa: F811 (fixtures)
):  # fmt: skip
    # Before: the pass raised on the oldest pending order every run; the ones behind it were never
    # restarted nor parked ("reconciler pass failed", naming no order).
    from core.reconciliation import OrdersNotReconciled

    aws = stack["aws"]
    poison, stuck, old = order_id("p"), order_id("q"), order_id("r")
    store(aws, poison, OrderStatus.PENDING, minutes_ago=50)
    store(aws, stuck, OrderStatus.PENDING, minutes_ago=20)
    store(aws, old, OrderStatus.AUTHORIZED, minutes_ago=120)
    unreadable(aws, poison)
    capsys.readouterr()

    with pytest.raises(OrdersNotReconciled) as raised:
        reconcile()  # the errors alarm calls a person

    assert list(raised.value.failed) == [poison]
    assert started(stack) == {stuck: 1}
    assert emitted(capsys.readouterr().out) == {
        "OrderWorkflowsRestarted": 1, "OrdersParked": 1, "OrdersNotReconciled": 1,
    }  # fmt: skip
    [logged] = [r for r in caplog.records if r.getMessage().startswith("stalled order not reconciled")]
    assert (logged.levelname, logged.order_id) == ("ERROR", poison)
    assert not [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]


def test_a_table_down_still_ends_the_stalled_orders_pass_at_the_first_order(stack, monkeypatch, caplog):  # noqa: F811
    # A throttle past botocore's retries is no order's own: each order after it would fail alike.
    from functions.adapters.dynamodb import DynamoOrders

    aws = stack["aws"]
    first, second = order_id("s"), order_id("t")
    store(aws, first, OrderStatus.PENDING, minutes_ago=40)
    store(aws, second, OrderStatus.PENDING, minutes_ago=20)
    real, asked = DynamoOrders.get, []
    busy = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}}, "GetItem")

    def throttled(self: Any, order: str, **kwargs: Any) -> Any:
        if order in (first, second):
            asked.append(order)
            raise busy
        return real(self, order, **kwargs)

    monkeypatch.setattr(DynamoOrders, "get", throttled)

    with pytest.raises(ClientError):
        reconcile()

    assert asked == [first]  # nothing read past it
    [logged] = [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]
    assert logged.__dict__["pass"] == "stalled orders"
