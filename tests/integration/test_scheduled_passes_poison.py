"""A candidate of a scheduled pass whose own work raises (a record that no longer reads, an item its
table refuses) is read past, named in an ERROR line with its id and counted, and the candidates
behind it are done all the same: it stands at the oldest end of its index, so a pass it stopped
would stop there every run, for good. A dependency down (a throttle past botocore's retries) is no
candidate's own and still ends the pass at the first."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.models import utc_now
from core.status import OrderStatus
from tests.conftest import forget_business_metrics
from tests.fakes import FakeLabels
from tests.integration.test_reconciler import (  # noqa: F401 (fixtures)
    DUE_AT_ONCE,
    allocated_mugs,
    allocated_tshirt,
    emitted,
    metrics_on,
    only_granted_calls,
    order_id,
    ready_pickup,
    reconcile,
    stack,
    started,
    store,
)
from tests.integration.test_unrecorded_captures import emitted as scan_emitted
from tests.integration.test_unrecorded_captures import scan  # noqa: F401 (a fixture)


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
    store(aws, old, OrderStatus.AUTHORIZED, minutes_ago=120, restarted_minutes_ago=100)
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


def test_a_due_pickup_that_no_longer_reads_keeps_no_due_pickup_behind_it_waiting(
    stack, metrics_on, capsys, caplog  # noqa: F811 (fixtures)
):  # fmt: skip
    # Before: the pass raised on the earliest deadline every run; no pickup behind it was expired.
    from core.pickups import PickupsNotExpired
    from functions.adapters.dynamodb import DynamoOrders

    aws = stack["aws"]
    poison = ready_pickup(aws, days=DUE_AT_ONCE, external_id="web-poison")
    due = ready_pickup(aws, days=DUE_AT_ONCE, external_id="web-due")
    unreadable(aws, poison.id)
    forget_business_metrics()  # the placing and readying, done here without a handler
    capsys.readouterr()

    with pytest.raises(PickupsNotExpired) as raised:
        reconcile()  # the errors alarm calls a person

    assert list(raised.value.failed) == [poison.id] and raised.value.done.expired == [due.id]
    assert DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).get(due.id).status is OrderStatus.CANCELLED
    assert emitted(capsys.readouterr().out) == {"PickupsExpired": 1, "PickupsNotExpired": 1}
    [logged] = [r for r in caplog.records if r.getMessage().startswith("pickup not expired")]
    assert (logged.levelname, logged.order_id) == ("ERROR", poison.id)
    assert not [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]


def test_a_pickup_whose_clean_up_raises_is_reported_expired_and_the_pickups_behind_it_expire(
    stack, metrics_on, capsys, caplog, monkeypatch  # noqa: F811 (fixtures)
):  # fmt: skip
    # The expiry's write landed (the order is cancelled, out of the index); its release and void
    # raised: the cancel's own execution finishes it, and the pass goes on.
    from core.fulfillment import OrderActions
    from core.pickups import PickupsNotExpired

    aws = stack["aws"]
    broken = ready_pickup(aws, days=DUE_AT_ONCE, external_id="web-broken")
    due = ready_pickup(aws, days=DUE_AT_ONCE, external_id="web-due")
    real = OrderActions.expire_pickup

    def raising_for_broken(self: Any, order: str, *args: Any, **kwargs: Any) -> Any:
        if order == broken.id:
            raise RuntimeError("a plugin's bug")
        return real(self, order, *args, **kwargs)

    monkeypatch.setattr(OrderActions, "expire_pickup", raising_for_broken)
    forget_business_metrics()
    capsys.readouterr()

    with pytest.raises(PickupsNotExpired) as raised:
        reconcile()

    assert list(raised.value.failed) == [broken.id] and raised.value.done.expired == [broken.id, due.id]
    assert emitted(capsys.readouterr().out) == {"PickupsExpired": 2, "PickupsNotExpired": 1}
    [logged] = [r for r in caplog.records if r.getMessage().startswith("pickup expired, its clean-up failed")]
    assert logged.order_id == broken.id


def test_a_late_order_that_no_longer_reads_keeps_no_late_order_behind_it_unmarked(
    stack, scan, capsys, caplog  # noqa: F811 (fixtures)
):  # fmt: skip
    # Before: the scan's `late pending` part raised on the oldest late order every run: no pending
    # order behind it was ever marked ("jeopardy scan part failed", naming no order).
    from core.jeopardy import ScanIncomplete
    from functions.adapters.dynamodb import DynamoOrders

    aws = stack["aws"]
    poison, late = order_id("u"), order_id("v")
    store(aws, poison, OrderStatus.PENDING, minutes_ago=50)
    store(aws, late, OrderStatus.PENDING, minutes_ago=20)
    unreadable(aws, poison)

    with pytest.raises(ScanIncomplete) as raised:
        scan()  # the errors alarm calls a person

    assert raised.value.done.marked == [late] and list(raised.value.done.failed) == [poison]
    assert raised.value.failed == []  # no part failed outright
    assert DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).get(late).jeopardy is not None
    assert scan_emitted(capsys.readouterr().out)["OrdersNotScanned"] == 1
    [logged] = [r for r in caplog.records if r.getMessage().startswith("order not scanned")]
    assert (logged.levelname, logged.order_id) == ("ERROR", poison)
    assert not [r for r in caplog.records if r.getMessage().startswith("jeopardy scan part failed")]


def test_an_order_owing_that_no_longer_reads_keeps_no_order_owing_behind_it_waiting(
    stack, metrics_on, capsys, caplog, monkeypatch  # noqa: F811 (fixtures)
):  # fmt: skip
    # Before: the kept-back pass raised on the oldest order owing every run ("reconciler pass
    # failed", naming no order); the units a cancel freed on the order behind it stayed reserved.
    from core.refund_service import KeptBackNotRefunded
    from core.unit_cancellation import UnitCancellation
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    poison, owing = allocated_mugs(services, "web-poison", 2), allocated_mugs(services, "web-owing", 2)
    with monkeypatch.context() as patched:  # each function dies right after its cancel's write
        patched.setattr(UnitCancellation, "_settle", lambda self, order, actor: order)
        for order in (poison, owing):
            services.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    assert services.order_repository.get(owing.id).stock_owed
    unreadable(stack["aws"], poison.id)
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)), pytest.raises(KeptBackNotRefunded):
        reconcile()  # the errors alarm calls a person

    assert not services.order_repository.get(owing.id).stock_owed
    assert emitted(capsys.readouterr().out)["OwedStockReleased"] == 1
    [logged] = [r for r in caplog.records if r.levelname == "ERROR" and r.__dict__.get("order_id") == poison.id]
    assert logged.getMessage() == "refund of what a return kept back not made"
    assert not [r for r in caplog.records if r.getMessage().startswith("reconciler pass failed")]


def test_an_order_owing_its_carrier_that_no_longer_reads_keeps_no_booking_behind_it_uncancelled(
    stack, metrics_on, capsys, caplog, monkeypatch  # noqa: F811 (fixtures)
):  # fmt: skip
    # Before: the carrier pass raised on the oldest order owing its carrier every run ("reconciler
    # pass failed", naming no order); the booking behind it was never cancelled (a label paid for).
    from core import carrier_bookings
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    poison, owing = allocated_tshirt(services, "web-poison"), allocated_tshirt(services, "web-owing")

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("carrier API unreachable")

    with monkeypatch.context() as patched:  # each cancelled while its carrier was down
        patched.setattr(carrier_bookings, "call_hook", down)
        for order in (poison, owing):
            services.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert services.order_repository.get(owing.id).owes_carrier_work()
    unreadable(stack["aws"], poison.id)
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        reconcile()

    assert not services.order_repository.get(owing.id).owes_carrier_work()
    assert emitted(capsys.readouterr().out) == {"CarrierBookingsSettled": 1, "CarrierWorkFailed": 1}
    [logged] = [r for r in caplog.records if r.getMessage().startswith("carrier work still owed")]
    assert logged.order_id == poison.id and "ValidationError" in logged.failure
