"""Return expiry under moto: the scheduled jeopardy handler, on the tables built from template.yaml,
finds returns still requested or authorized past OMS_RETURN_EXPIRY_DAYS through the Returns
table's by_status index (a Query on created_at, paged, never a Scan), cancels each with one
conditional write, records it on the order's history, and finds nothing more on the next pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import pytest
from botocore.client import BaseClient

from core.events import OrderEvent
from core.jeopardy import ScanIncomplete
from core.models import HistoryEntry, utc_now
from core.money import Money
from core.return_models import Return, ReturnLine
from core.returns import RETURN_EXPIRED, return_id_for
from core.status import OrderStatus, ReturnStatus
from functions.adapters.dynamodb import DynamoOrders, DynamoReturns, DynamoUnreceivedReturns
from tests.integration.import_support import context
from tests.integration.test_reconciler import only_granted_calls  # noqa: F401 (an autouse fixture)
from tests.unit.conftest import a_stored_order

R = ReturnStatus


@pytest.fixture
def scan(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("OMS_RETURN_EXPIRY_DAYS", raising=False)  # the default: 30 days
    from functions.jeopardy import app

    app.container.forget()
    # Not the function's 60 s: the context's clock is the wall's, and under a loaded machine a pass
    # over a hundred returns on moto can outlast it and stop short by design (a deadline these
    # tests do not test), which failed the scan-past test once in a 13-minute suite run.
    yield lambda: app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction", 900))
    app.container.forget()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every DynamoDB operation any client makes, with its parameters."""
    made: list[tuple[str, dict[str, Any]]] = []
    real = BaseClient._make_api_call

    def recorded(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        made.append((operation, params))
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)
    return made


def delivered_order(aws, order_id: str) -> None:
    placed = utc_now() - timedelta(days=60)
    order = a_stored_order(
        ("TSHIRT", 2), id=order_id, status=OrderStatus.DELIVERED, created_at=placed, updated_at=placed
    )
    created = HistoryEntry(at=placed, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(order, created, payment_token="tok_approve")


def stored_return(
    aws, order_id: str, ordinal: int, status: ReturnStatus, created_at: datetime, authorized_at: datetime | None = None
) -> Return:
    received = status is R.RECEIVED
    item = Return(
        id=return_id_for(order_id, ordinal), order_id=order_id, channel="web", ordinal=ordinal, status=status,
        lines=[ReturnLine(line_id="L1", quantity=1, reason="changed my mind", received_quantity=int(received))],
        refund=Money.zero("USD"), fee=Money.zero("USD"), created_at=created_at,
        updated_at=authorized_at or created_at, authorized_at=authorized_at, version=1,
    )  # fmt: skip
    DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]).add(item)
    return item


def test_the_scan_cancels_returns_never_received_past_the_expiry_once_through_the_status_index(aws, scan, calls):
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    old, young = utc_now() - timedelta(days=31), utc_now() - timedelta(days=29)
    for order_id in ("ord_a", "ord_b", "ord_c"):
        delivered_order(aws, order_id)
    authorized = stored_return(aws, "ord_a", 1, R.AUTHORIZED, old)
    requested = stored_return(aws, "ord_b", 1, R.REQUESTED, old - timedelta(hours=1))
    received = stored_return(aws, "ord_c", 1, R.RECEIVED, old)
    fresh = stored_return(aws, "ord_a", 2, R.AUTHORIZED, young)

    answer = scan()

    assert answer["returns_expired"] == [authorized.id, requested.id]
    assert [returns.get(r.id).status for r in (authorized, requested, received, fresh)] == [
        R.CANCELLED, R.CANCELLED, R.RECEIVED, R.AUTHORIZED
    ]  # fmt: skip
    assert returns.get(authorized.id).version == 2
    for item, was in ((authorized, "authorized"), (requested, "requested")):
        _, history = orders.history(item.order_id)
        [entry] = [e for e in history if e.type is OrderEvent.RETURN_CANCELLED]
        assert (entry.actor, entry.detail["return_id"], entry.detail["reason"], entry.detail["status"]) == (
            "jeopardy_scan", item.id, RETURN_EXPIRED, was
        )  # fmt: skip
    operations = [operation for operation, _ in calls]
    assert "Scan" not in operations
    queried = {(p["TableName"], p.get("IndexName"), p["KeyConditionExpression"]) for op, p in calls if op == "Query"}
    assert {(aws.tables["ReturnsTable"], "by_status", "#status = :status AND created_at < :before")} <= queried

    assert scan()["returns_expired"] == []  # a second pass changes nothing
    assert returns.get(authorized.id).version == 2
    _, history = orders.history("ord_a")
    assert [e.type for e in history].count(OrderEvent.RETURN_CANCELLED) == 1


def test_candidates_are_read_a_page_at_a_time_oldest_first_as_the_caller_takes_them(aws, calls):
    delivered_order(aws, "ord_p")
    start = utc_now() - timedelta(days=40)
    ids = [stored_return(aws, "ord_p", n, R.AUTHORIZED, start + timedelta(minutes=n)).id for n in range(1, 6)]
    stored_return(aws, "ord_p", 6, R.REQUESTED, start)
    unreceived = DynamoUnreceivedReturns(aws.dynamodb, aws.tables["ReturnsTable"], page_size=2)

    assert list(unreceived.created_before(R.AUTHORIZED, utc_now())) == ids
    assert list(unreceived.created_before(R.AUTHORIZED, start + timedelta(minutes=2, seconds=30))) == ids[:2]
    calls.clear()
    assert list(islice(unreceived.created_before(R.AUTHORIZED, utc_now()), 3)) == ids[:3]
    assert [operation for operation, _ in calls] == ["Query", "Query"]  # no page beyond the third id


def test_the_scan_reads_past_returns_approved_recently_to_the_expired_one_behind_them(aws, scan):
    delivered_order(aws, "ord_w")
    requested, approved = utc_now() - timedelta(days=35), utc_now() - timedelta(days=3)
    waiting = [
        stored_return(aws, "ord_w", n, R.AUTHORIZED, requested + timedelta(seconds=n), authorized_at=approved)
        for n in range(1, 102)
    ]  # more than a pass expires: they used to fill its one read
    expired = stored_return(aws, "ord_w", 102, R.AUTHORIZED, utc_now() - timedelta(days=31))

    assert scan()["returns_expired"] == [expired.id]

    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    assert returns.get(expired.id).status is R.CANCELLED
    assert {returns.get(item.id).status for item in waiting} == {R.AUTHORIZED}


def test_an_entry_the_scan_died_before_writing_is_on_the_history_the_api_reads_once(aws, scan, monkeypatch):
    delivered_order(aws, "ord_d")
    item = stored_return(aws, "ord_d", 1, R.AUTHORIZED, utc_now() - timedelta(days=31))
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])

    def dies(self: DynamoOrders, *args: Any, **kwargs: Any) -> None:
        raise TimeoutError("the scan's Lambda timed out here")

    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", dies)
        with pytest.raises(ScanIncomplete, match="TimeoutError"):
            scan()
    assert DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"]).get(item.id).status is R.CANCELLED
    assert [e.type for e in orders.history("ord_d")[1]] == [OrderEvent.CREATED]
    from functions.bootstrap import Config, bootstrap

    read = bootstrap(Config.from_env()).orders.history("ord_d")

    assert [e.type for e in read] == [OrderEvent.CREATED, OrderEvent.RETURN_CANCELLED]
    assert (read[1].actor, read[1].detail["return_id"]) == ("jeopardy_scan", item.id)
    assert orders.history("ord_d")[1] == read == bootstrap(Config.from_env()).orders.history("ord_d")


def test_an_expired_returns_label_is_owed_a_cancel_under_the_key_it_was_booked_under(aws, scan):
    from plugins.flat_rate_carrier import CARRIER

    delivered_order(aws, "ord_e")
    item = stored_return(aws, "ord_e", 1, R.AUTHORIZED, utc_now() - timedelta(days=31))
    returns = DynamoReturns(aws.dynamodb, aws.tables["ReturnsTable"])
    label = {"carrier": CARRIER, "tracking_number": "OMS123", "label_url": "labels/ord_e/x.pdf"}
    returns.update(Return.model_validate({**dict(item), **label, "booking": "0123456789abcdef", "version": 2}), item)

    assert scan()["returns_expired"] == [item.id]
    assert scan()["returns_expired"] == []

    # Owed on the order, for the reconciler's carrier pass (the scan asks no carrier), which finds
    # it in the index's carrier partition.
    stored = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key={"id": {"S": "ord_e"}})["Item"]
    assert stored["refund_key"] == {"S": "carrier"}
    owing = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).get("ord_e", consistent=True)
    assert owing.owes_carrier_work() and [b.model_dump() for b in owing.bookings_to_cancel] == [
        {
            "shipment_id": item.id,
            "carrier": CARRIER,
            "tracking_number": "OMS123",
            "booking_key": f"{item.id}-0123456789abcdef",
        }
    ]
