"""The one-off upgrade of orders cancelled before a cancelled order's own void the gateway could not
make was marked owed, under moto: the backfill marks those whose history says so, which puts them
in the reconciler's authorization pass, and writes no other order."""

from __future__ import annotations

from datetime import timedelta

from core.models import Order
from core.status import OrderStatus, PaymentStatus
from functions.adapters.dynamodb import DynamoUnsettledAuthorizations, backfill_own_voids_owed
from tests.builders import NOW, place_order


def cancelled_the_old_way(orders, capture, external_id: str, *kinds: str) -> Order:
    """An order authorized, cancelled and whose void failed (each attempt of `kinds`) as an earlier
    version recorded it: the attempts in the history, the order not marked as owing its void."""
    placed = capture.place(place_order(external_id=external_id), actor="k")
    authorized, entry = placed.authorize(placed.payable(), f"auth_{external_id}", at=NOW, actor="workflow")
    orders.update(authorized, placed, [entry])
    cancelled, entry = authorized.cancel("customer_request", at=NOW, actor="key_web")
    orders.update(cancelled, authorized, [entry])
    for attempt, kind in enumerate(kinds, start=1):
        noted, failed = cancelled.record_payment_failure(
            "void", attempt=attempt, kind=kind, message=f"gateway: {kind}", at=NOW, actor="key_web",
            detail={"authorization": authorized.payment.authorization},
        )  # fmt: skip
        old = noted.model_copy(update={"own_void_owed": False})  # an earlier version marked nothing
        orders.update(old, cancelled, [failed])
        cancelled = old
    return cancelled


def test_a_cancelled_order_whose_void_failed_before_it_was_owed_is_marked_for_the_reconciler(aws, capture, orders):
    table = aws.tables["OrdersTable"]
    down = cancelled_the_old_way(orders, capture, "down", "transient", "transient")
    refused = cancelled_the_old_way(orders, capture, "refused", "transient", "refused")
    unmarked = orders.get(down.id)
    assert unmarked is not None and not unmarked.authorizations_left
    typical = capture.place(place_order(external_id="typical"), actor="k")
    unsettled = DynamoUnsettledAuthorizations(aws.dynamodb, table)
    assert list(unsettled.left_since_before(NOW + timedelta(days=365))) == []

    assert backfill_own_voids_owed(aws.dynamodb, table, page_size=1) == (1, 2)

    marked = orders.get(down.id)
    assert marked is not None and marked.own_void_owed and marked.version == down.version + 1
    assert (marked.status, marked.payment) == (OrderStatus.CANCELLED, down.payment)
    assert marked.payment.status is PaymentStatus.AUTHORIZED
    assert list(unsettled.left_since_before(NOW + timedelta(days=365))) == [down.id]
    assert orders.get(refused.id) == refused  # a refused void is not asked again
    assert orders.get(typical.id) == typical
    assert backfill_own_voids_owed(aws.dynamodb, table) == (0, 3)  # a second run writes nothing
