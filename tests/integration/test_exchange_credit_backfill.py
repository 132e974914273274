"""The one-off upgrade of orders exchanged before an exchange's credit was held on its original,
under moto: the backfill holds the credit their history names, and writes no other order."""

from __future__ import annotations

import pytest

from core.errors import RefundExceedsCaptured
from core.models import Order
from core.money import Money
from core.status import OrderStatus, PaymentStatus
from functions.adapters.dynamodb import backfill_credit_holds, order_update
from tests.builders import NOW, place_order


def exchanged_the_old_way(aws, orders, placed: Order, credit: Money) -> Order:
    """`placed` shipped, captured in full, and exchanged as an earlier version recorded it: the
    history's exchange_placed entry names the credit, and nothing holds it."""
    payment = placed.payment.model_copy(
        update={"status": PaymentStatus.CAPTURED, "captured": placed.totals.grand_total}
    )
    shipped = placed.model_copy(
        update={"status": OrderStatus.SHIPPED, "payment": payment, "version": placed.version + 1}
    )
    aws.dynamodb.update_item(**order_update(aws.tables["OrdersTable"], shipped, placed, []))
    zero = Money.zero(placed.currency)
    new, entry = shipped.exchanged("ret_old", "ord_replacement", credit, zero, [], at=NOW, actor="key_wh")
    new = new.model_copy(update={"credit_holds": {}})  # an earlier version's record holds nothing
    orders.update(new, shipped, [entry])
    return new


def test_an_order_exchanged_before_credits_were_held_gets_its_hold_from_the_backfill(aws, capture, orders):
    table = aws.tables["OrdersTable"]
    placed = capture.place(place_order(external_id="a"), actor="k")
    credit = Money(amount="10.00", currency=placed.currency)
    old = exchanged_the_old_way(aws, orders, placed, credit)
    typical = capture.place(place_order(external_id="b"), actor="k")
    captured = old.payment.captured
    old.check_refund(captured)  # before: an appeasement could refund what paid for the replacement

    assert backfill_credit_holds(aws.dynamodb, table, page_size=1) == (1, 1)

    held = orders.get(old.id)
    assert held is not None and held.credit_holds == {"ret_old": credit}
    assert held.refundable() == captured - credit
    with pytest.raises(RefundExceedsCaptured):
        held.check_refund(captured)
    held.check_refund(captured - credit)
    assert orders.get(typical.id) == typical  # an order without an exchange is not written
    assert backfill_credit_holds(aws.dynamodb, table) == (0, 2)  # a second run writes nothing


def test_the_backfill_holds_no_more_than_was_captured(aws, capture, orders):
    placed = capture.place(place_order(external_id="a"), actor="k")
    credit = placed.totals.grand_total + Money(amount="5.00", currency=placed.currency)
    old = exchanged_the_old_way(aws, orders, placed, credit)

    assert backfill_credit_holds(aws.dynamodb, aws.tables["OrdersTable"]) == (1, 0)

    held = orders.get(old.id)
    assert held is not None and held.credit_holds == {"ret_old": old.payment.captured}
    assert held.refundable() == Money.zero(old.currency)
