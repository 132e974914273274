"""Refund arithmetic: each unit's exact share of its line, shipping and fees, capped at what is refundable."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.exchange_credit import beyond_credit, owes_credit_back
from core.ids import short_hash
from core.models import CREDIT_NOT_USED, OrderLine, Payment, PaymentRefund, RefundedUnits, RefundPart, Shipment, Totals
from core.money import Money, quantum
from core.refunds import (
    _kept_back_refund,
    _refund_kept_back,
    _whole_order_shipping_refund,
    appeased_over_capture,
    cumulative_share,
    kept_back_owed,
    left_to_a_person,
    over_capture_owed,
    refund_due,
    refund_id_for,
    refunded_for_return,
    refunded_short_of_lines,
    refused_in_a_row,
    shipping_refunded,
    units_share,
    went_back_id,
    with_refunds_shown,
)
from core.status import RefundStatus, ShipmentStatus
from tests.unit.conftest import a_stored_order

CURRENCIES = ["USD", "JPY", "KWD"]


def money(amount: str | int | Decimal, currency: str = "USD") -> Money:
    return Money.of(amount, currency)


def a_line(total: Money, quantity: int, line_id: str = "L1") -> OrderLine:
    zero = Money.zero(total.currency)
    return OrderLine(line_id=line_id, sku="SKU", quantity=quantity, unit_price=total, discount=zero, tax=zero,
                     total=total)  # fmt: skip


def an_order(lines: list[OrderLine], shipping: Money, captured: Money, refunded: Money | None = None):
    currency = shipping.currency
    zero = Money.zero(currency)
    grand_total = sum((line.total for line in lines), shipping)
    return a_stored_order(
        currency=currency,
        lines=lines,
        totals=Totals(subtotal=grand_total - shipping, discount=zero, shipping=shipping, tax=zero,
                      grand_total=grand_total),
        payment=Payment(method="test", status="captured", authorized=grand_total, captured=captured,
                        refunded=refunded or zero, authorization="auth_1"),
    )  # fmt: skip


@st.composite
def lines_and_steps(draw):
    """A line in USD, JPY or KWD with an awkward total, and its units split into refund steps."""
    currency = draw(st.sampled_from(CURRENCIES))
    minor = draw(st.integers(min_value=0, max_value=10**9))
    total = Money.of(minor * quantum(currency), currency)
    quantity = draw(st.integers(min_value=1, max_value=60))
    steps = []
    left = quantity
    while left:
        step = draw(st.integers(min_value=1, max_value=left))
        steps.append(step)
        left -= step
    return a_line(total, quantity), steps


@given(lines_and_steps())
def test_refunding_every_unit_in_any_steps_gives_back_exactly_the_line_total(case):
    line, steps = case
    before = 0
    refunded = Money.zero(line.total.currency)
    for step in steps:
        share = units_share(line, step, before)
        assert not share.is_negative()
        refunded = refunded + share
        before += step
    assert refunded == line.total


@given(lines_and_steps())
def test_a_unit_is_worth_its_share_give_or_take_one_minor_unit(case):
    line, _ = case
    exact = line.total.amount / line.quantity
    for before in range(line.quantity):
        assert abs(units_share(line, 1, before).amount - exact) <= quantum(line.total.currency)


@pytest.mark.parametrize(
    ("total", "quantity", "shares"),
    [
        (money("10.00"), 3, ["3.33", "3.34", "3.33"]),
        (money(100, "JPY"), 3, ["33", "34", "33"]),
        (money("1.000", "KWD"), 3, ["0.333", "0.334", "0.333"]),
        (money("0.01"), 4, ["0.00", "0.00", "0.01", "0.00"]),
    ],
)
def test_each_unit_of_a_line_one_at_a_time(total, quantity, shares):
    line = a_line(total, quantity)
    assert [units_share(line, 1, before).amount for before in range(quantity)] == [Decimal(s) for s in shares]


def test_more_units_than_the_line_has_are_refused():
    line = a_line(money("10.00"), 2)
    with pytest.raises(InvalidRequest):
        units_share(line, 2, 1)
    with pytest.raises(InvalidRequest):
        cumulative_share(line, -1)


def test_refund_due_is_the_units_share_plus_shipping_minus_the_fee():
    order = an_order([a_line(money("30.00"), 3), a_line(money("7.01"), 2, "L2")], money("5.00"), money("42.01"))
    assert refund_due(order, {"L1": 1}, money("0.00"), money("0.00")) == money("10.00")
    assert refund_due(order, {"L1": 1, "L2": 1}, money("0.00"), money("0.00")) == money("13.50")
    assert refund_due(order, {"L2": 1}, money("0.00"), money("0.00"), returned_before={"L2": 1}) == money("3.51")
    assert refund_due(order, {"L1": 3, "L2": 2}, money("5.00"), money("2.00")) == money("40.01")


def test_refund_due_is_never_below_zero_nor_above_captured_minus_refunded():
    order = an_order([a_line(money("30.00"), 3)], money("5.00"), money("35.00"), refunded=money("30.00"))
    assert refund_due(order, {"L1": 1}, money("0.00"), money("20.00")) == money("0.00")
    assert refund_due(order, {"L1": 3}, money("5.00"), money("0.00")) == money("5.00")


def test_refund_due_refuses_an_unknown_line_and_a_fee_in_another_currency():
    order = an_order([a_line(money("30.00"), 3)], money("5.00"), money("35.00"))
    with pytest.raises(InvalidRequest):
        refund_due(order, {"L9": 1}, money("0.00"), money("0.00"))
    with pytest.raises(InvalidRequest):
        refund_due(order, {"L1": 1}, money("0.00"), money(1, "JPY"))


def test_refund_due_refuses_a_negative_fee_and_a_negative_quantity():
    order = an_order([a_line(money("30.00"), 3)], money("5.00"), money("35.00"))
    with pytest.raises(InvalidRequest, match="non-negative"):
        refund_due(order, {"L1": 1}, money("0.00"), money("-1.00"))
    with pytest.raises(InvalidRequest, match="negative quantity"):
        refund_due(order, {"L1": -1}, money("0.00"), money("0.00"))


@pytest.mark.parametrize(("given", "due"), [("12.00", "18.00"), ("10.00", "20.00"), ("8.00", "20.00")])
def test_a_later_return_brings_the_line_up_to_its_total_from_what_earlier_ones_gave_back(given, due):
    # A unit returned first was refunded `given`; the line is now worth 30.00 for 3 units (10.00
    # each). Given more than its share (a discount spread over fewer units since), the last two
    # bring the line to its total; given less (a volume price lost), they are worth their share.
    order = an_order([a_line(money("30.00"), 3)], money("5.00"), money("35.00"))

    assert refund_due(
        order, {"L1": 2}, money("0.00"), money("0.00"), returned_before={"L1": 1}, refunded_before={"L1": money(given)}
    ) == money(due)


def test_a_refund_needs_an_idempotency_key():
    with pytest.raises(ValueError, match="idempotency key"):
        refund_id_for("ord_1", "")


def test_a_refund_id_is_derived_from_its_order_and_key():
    assert refund_id_for("ord_1", "k") == refund_id_for("ord_1", "k")
    assert len({refund_id_for("ord_1", "k"), refund_id_for("ord_1", "k2"), refund_id_for("ord_2", "k")}) == 3
    assert refund_id_for("ord_1", "k").startswith("ref_")


def test_a_split_refund_the_gateway_refused_in_part_is_shown_as_two_beside_any_other_refund():
    # Of 5.00 asked over two authorizations, 3.00 went back before the second part was refused:
    # shown as 2.00 failed and 3.00 succeeded, whatever refunds the order has beside it.
    order = an_order([a_line(money("30.00"), 3)], money("5.00"), money("35.00"), refunded=money("5.00"))
    plain = PaymentRefund(id="ref_a", amount=money("2.00"), reason="late", at=order.created_at)
    parts = [
        RefundPart(authorization="auth_1", amount=money("3.00"), status=RefundStatus.SUCCEEDED, reference="r1"),
        RefundPart(authorization="auth_2", amount=money("2.00"), status=RefundStatus.FAILED),
    ]
    split = PaymentRefund(
        id="ref_b", amount=money("5.00"), reason="late", at=order.created_at, status=RefundStatus.FAILED, parts=parts
    )
    alone = order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": [plain]})})
    order = order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": [plain, split]})})

    shown = with_refunds_shown(order).payment.refunds

    assert [(refund.id, refund.amount, refund.status) for refund in shown] == [
        ("ref_a", money("2.00"), RefundStatus.SUCCEEDED),
        ("ref_b", money("2.00"), RefundStatus.FAILED),
        (went_back_id("ref_b"), money("3.00"), RefundStatus.SUCCEEDED),
    ]
    assert with_refunds_shown(alone) is alone  # nothing to split: the order as stored
    # A split refund every part of which went back, or none of which did, is shown as it is.
    approved = [part.model_copy(update={"status": RefundStatus.SUCCEEDED}) for part in parts]
    refused = [part.model_copy(update={"status": RefundStatus.FAILED}) for part in parts]
    whole = split.model_copy(update={"status": RefundStatus.SUCCEEDED, "parts": approved})
    none_back = split.model_copy(update={"parts": refused})
    for kept in (whole, none_back):
        as_stored = order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": [plain, kept]})})
        assert with_refunds_shown(as_stored) is as_stored


def test_what_of_the_orders_shipping_its_refunds_and_exchange_credits_gave_back():
    order = an_order([a_line(money("30.00"), 3)], money("9.00"), money("39.00"))
    ten = [RefundedUnits(line_id="L1", quantity=1, amount=money("10.00"))]

    def refund(n: int, amount: str, return_id: str | None, **fields) -> PaymentRefund:
        return PaymentRefund(id=f"ref_{n}", amount=money(amount), reason="r", at=order.created_at, kind="return",
                             return_id=return_id, **fields)  # fmt: skip

    refunds = [
        refund(1, "13.00", "rma_1", lines=ten, shipping=money("5.00")),  # 5.00 back, a 2.00 fee taken off the whole
        refund(2, "14.00", "rma_2", lines=ten),  # stored before `shipping`: 4.00 beyond its units' shares
        refund(3, "9.00", "rma_3", lines=ten),  # less than its units' shares: no shipping
        refund(4, "3.00", "rma_4", shipping=money("3.00"), status=RefundStatus.FAILED),  # refused: nothing went back
        refund(5, "1.00", None),  # an appeasement
        refund(6, "2.00", "rma_1"),  # what rma_1 kept back, refunded since: no units, no shipping
        # The whole order's shipping, refunded for an exchange's return: it names no return.
        refund(7, "0.25", None, lines=[], shipping=money("0.25")),
    ]
    order = order.model_copy(update={
        "payment": order.payment.model_copy(update={"refunds": refunds}),
        "shipping_claims": {"rma_5": money("0.50")},  # an exchange's credit claimed it
    })  # fmt: skip

    assert shipping_refunded(order) == money("9.75")
    assert shipping_refunded(order, besides_return="rma_1") == money("4.75")
    assert shipping_refunded(order, besides_return="rma_5") == money("9.25")


def a_split(refund_id: str, status: RefundStatus, approved: str, refused: str, **fields) -> PaymentRefund:
    """A refund over two authorizations, of which the gateway approved `approved` and refused `refused`."""
    parts = [
        RefundPart(authorization="auth_1", amount=money(approved), status=RefundStatus.SUCCEEDED, reference="r1"),
        RefundPart(authorization="auth_2", amount=money(refused), status=RefundStatus.FAILED),
    ]
    amount = money(approved) + money(refused)
    return PaymentRefund(id=refund_id, amount=amount, reason="r", at=a_stored_order().created_at, status=status,
                         parts=parts, **fields)  # fmt: skip


def with_refunds(order, refunds: list[PaymentRefund]):
    return order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": refunds})})


def test_a_return_shows_refunded_only_what_the_gateway_approved_of_its_refunds():
    # Return ret_1's refunds: 10.00 approved; 4.00 refused whole; 6.00 still pending; 5.00 split
    # over two authorizations, 3.00 approved before 2.00 was refused. Only 13.00 went back. A split
    # refund that succeeded counts once, by its amount, not again by its parts; ret_2's is not ret_1's.
    order = an_order([a_line(money("90.00"), 9)], money("0.00"), money("90.00"), refunded=money("23.00"))
    at = order.created_at
    refunds = [
        PaymentRefund(id="ref_a", amount=money("10.00"), reason="r", at=at, return_id="ret_1"),
        PaymentRefund(id="ref_b", amount=money("4.00"), reason="r", at=at, return_id="ret_1",
                      status=RefundStatus.FAILED),
        PaymentRefund(id="ref_c", amount=money("6.00"), reason="r", at=at, return_id="ret_1",
                      status=RefundStatus.PENDING),
        a_split("ref_d", RefundStatus.FAILED, "3.00", "2.00", return_id="ret_1"),
        PaymentRefund(id="ref_e", amount=money("7.00"), reason="r", at=at, return_id="ret_2"),
    ]  # fmt: skip

    assert refunded_for_return(with_refunds(order, refunds), "ret_1") == money("13.00")
    assert refunded_for_return(with_refunds(order, refunds), "ret_2") == money("7.00")
    whole = a_split("ref_f", RefundStatus.SUCCEEDED, "1.00", "1.00", return_id="ret_2")
    whole = whole.model_copy(update={"parts": [p.model_copy(update={"status": RefundStatus.SUCCEEDED})
                                               for p in whole.parts]})  # fmt: skip
    assert refunded_for_return(with_refunds(order, [*refunds, whole]), "ret_2") == money("9.00")


def test_a_kept_back_top_up_owes_what_was_kept_back_less_what_earlier_top_ups_gave_back():
    # Return ret_1 kept back 10.00. Its first top-up (5.00, split) was refused after 3.00 of it went
    # back: the next, the second of its key, owes 7.00, not the 2.00 refused nor 10.00 again.
    order = an_order([a_line(money("90.00"), 9)], money("0.00"), money("90.00"), refunded=money("0.00"))
    decide = _kept_back_refund("ret_1", lambda _: money("10.00"))
    first = a_split(refund_id_for(order.id, "ret_1#kept_back#0"), RefundStatus.FAILED, "3.00", "2.00")
    order = with_refunds(order, [first])

    assert decide(order) == ("ret_1#kept_back#1", money("7.00"))
    # Refused whole, the second gave nothing back: the third owes the same 7.00.
    refused = PaymentRefund(id=refund_id_for(order.id, "ret_1#kept_back#1"), amount=money("7.00"), reason="r",
                            at=order.created_at, status=RefundStatus.FAILED)  # fmt: skip
    assert decide(with_refunds(order, [first, refused])) == ("ret_1#kept_back#2", money("7.00"))
    # However little is owed, it is owed: 0.50 kept back is asked for.
    assert _kept_back_refund("ret_2", lambda _: money("0.50"))(order) == ("ret_2#kept_back#0", money("0.50"))

    # Once the second is written (pending, for 4.00: what the capture made refundable), deciding
    # again carries it on with the amount it was written with, not a third for the rest.
    second = PaymentRefund(id=refund_id_for(order.id, "ret_1#kept_back#1"), amount=money("4.00"), reason="r",
                           at=order.created_at, status=RefundStatus.PENDING)  # fmt: skip
    assert decide(with_refunds(order, [first, second])) == ("ret_1#kept_back#1", money("0.00"))

    # Approved, it leaves 3.00 for a third; all of it approved, nothing is owed.
    approved = second.model_copy(update={"status": RefundStatus.SUCCEEDED})
    assert decide(with_refunds(order, [first, approved])) == ("ret_1#kept_back#2", money("3.00"))
    rest = approved.model_copy(update={"id": refund_id_for(order.id, "ret_1#kept_back#2"), "amount": money("3.00")})
    assert decide(with_refunds(order, [first, approved, rest])) is None


def a_refund(amount: str, status: RefundStatus = RefundStatus.FAILED, kind: str = "cancellation", **fields):
    return PaymentRefund(id=f"ref_{short_hash(repr((amount, status, kind, fields)))}", amount=money(amount),
                         reason="r", at=a_stored_order().created_at, status=status, kind=kind, **fields)  # fmt: skip


def test_what_is_left_to_a_person_is_the_amount_refused_three_times_in_a_row_less_what_appeasements_since_gave():
    # 35.00 captured for an order that now costs 30.00: the settlement's refund of 5.00 was refused.
    order = an_order([a_line(money("30.00"), 3)], money("0.00"), money("35.00"))
    refused = [a_refund("5.00"), a_refund("5.00"), a_refund("5.00")]

    assert left_to_a_person(with_refunds(order, refused[:2])) is None  # still asked again
    assert left_to_a_person(with_refunds(order, refused)) == money("5.00")
    # Refused for another amount before, or an appeasement with no over-capture in between, counts nothing.
    other = [a_refund("4.00"), *refused[:2], a_refund("3.00", RefundStatus.SUCCEEDED, "appeasement"), refused[2]]
    assert left_to_a_person(with_refunds(order, other)) == money("5.00")
    # A settlement refund since that went through, or is on its way, leaves nothing to a person.
    for status in (RefundStatus.SUCCEEDED, RefundStatus.PENDING):
        assert left_to_a_person(with_refunds(order, [*refused, a_refund("5.00", status)])) is None
        assert left_to_a_person(with_refunds(order, [*refused[:2], a_refund("5.00", status), refused[2]])) is None
    # What the appeasements since gave back of it is no longer left; all of it given, nothing is.
    for gave, left in (("2.00", "3.00"), ("4.50", "0.50"), ("5.00", None)):
        appeasement = a_refund(gave, RefundStatus.SUCCEEDED, "appeasement", over_capture=money(gave))
        expected = None if left is None else money(left)
        assert left_to_a_person(with_refunds(order, [*refused, appeasement])) == expected
        # Refused after it for more (a later cancel), the ask was refused fewer times: what is left is
        # still the amount refused three times, less what the appeasement gave.
        later = [*refused, appeasement, a_refund("9.00"), a_refund("9.00")]
        assert left_to_a_person(with_refunds(order, later)) == expected


def test_an_appeasement_counts_what_it_gave_back_of_the_over_capture_only_as_the_gateway_approved_it():
    order = an_order([a_line(money("30.00"), 3)], money("0.00"), money("35.00"))
    given = a_refund("2.00", RefundStatus.SUCCEEDED, "appeasement", over_capture=money("2.00"))
    pending = a_refund("1.00", RefundStatus.PENDING, "appeasement", over_capture=money("1.00"))
    refused = a_refund("4.00", kind="appeasement", over_capture=money("4.00"))
    split = a_split("ref_split", RefundStatus.FAILED, "1.50", "2.50", kind="appeasement", over_capture=money("3.00"))
    plain = a_refund("6.00", RefundStatus.SUCCEEDED, "appeasement")
    order = with_refunds(order, [given, pending, refused, split, plain])

    # 2.00 given, 1.00 on its way, nothing of the refused one, 1.50 of the split one's 3.00.
    assert appeased_over_capture(order) == money("4.50")
    assert appeased_over_capture(order, [split]) == money("1.50")
    assert appeased_over_capture(order, []) == money("0.00")


def test_refusals_in_a_row_are_the_last_cancellation_refunds_refused_each_for_the_amount():
    order = an_order([a_line(money("30.00"), 3)], money("0.00"), money("35.00"))
    five, four = a_refund("5.00"), a_refund("4.00")
    appeasement = a_refund("5.00", kind="appeasement")

    assert refused_in_a_row(with_refunds(order, [five, appeasement, five]), money("5.00")) == 2
    assert refused_in_a_row(with_refunds(order, [four, five]), money("5.00")) == 1
    assert refused_in_a_row(with_refunds(order, [five, four]), money("5.00")) == 0
    for status in (RefundStatus.SUCCEEDED, RefundStatus.PENDING):
        assert refused_in_a_row(with_refunds(order, [five, a_refund("5.00", status), five]), money("5.00")) == 1


@pytest.mark.parametrize(
    ("total", "owed"),
    [("30.00", "5.00"), ("32.00", "3.00"), ("34.50", "0.50"), ("35.00", "0.00"), ("36.00", "0.00")],
)
def test_over_capture_owed_is_what_the_payment_holds_beyond_the_total_as_far_as_left_to_a_person(total, owed):
    # 35.00 captured; the refund of 5.00 beyond the total then was refused three times. The order
    # now costs `total` (an edit may have raised it): what is owed is what is held beyond it, never
    # more than what was left to a person, never below zero.
    order = an_order([a_line(money(total), 3)], money("0.00"), money("35.00"))
    order = with_refunds(order, [a_refund("5.00"), a_refund("5.00"), a_refund("5.00")])

    assert over_capture_owed(order) == money(owed)
    assert over_capture_owed(with_refunds(order, order.payment.refunds[:2])) == money("0.00")


def test_an_exchanges_return_shows_refunded_what_its_credit_gave_back_but_not_what_it_carried_for_another():
    # ret_1 was exchanged. Refunded for it: its step (refused once, then 4.00), what its credit kept
    # back (1.00, naming no return), the whole order's shipping (2.00) and the credit its replacement
    # did not use (3.00). Not: what the credit drew for another return (5.00, carried for ret_1's
    # replacement's return), nor ret_2's unused credit.
    order = an_order([a_line(money("90.00"), 9)], money("0.00"), money("90.00"), refunded=money("20.00"))
    order = order.model_copy(update={"exchanges": ["ret_1", "ret_2"]})
    at = order.created_at

    def refund(key: str | None, amount: str, status=RefundStatus.SUCCEEDED, reason="r", return_id="ret_1"):
        refund_id = refund_id_for(order.id, key) if key else f"ref_{short_hash(amount)}"
        return PaymentRefund(id=refund_id, amount=money(amount), reason=reason, at=at, status=status,
                             kind="return", return_id=return_id)  # fmt: skip

    refunds = [
        refund("ret_1#0", "4.00", RefundStatus.FAILED),
        refund("ret_1#1", "4.00"),
        refund("ret_1:credit#kept_back#0", "1.00", return_id=None),
        refund("ret_1:shipping#kept_back#0", "2.00", return_id=None),
        refund(None, "3.00", reason=f"exchange ret_1 {CREDIT_NOT_USED}"),
        refund(None, "5.00", reason="exchange ret_9's replacement's units came back"),
        refund(None, "6.00", reason=f"exchange ret_2 {CREDIT_NOT_USED}", return_id="ret_2"),
    ]
    assert refunded_for_return(with_refunds(order, refunds), "ret_1") == money("10.00")
    # Its step the only refund, approved at the first ask, it is all that was refunded.
    assert refunded_for_return(with_refunds(order, [refunds[1].model_copy(update={"id": refunds[0].id})]),
                               "ret_1") == money("4.00")  # fmt: skip


def test_what_a_returns_refund_kept_back_is_its_succeeded_refunds_or_else_what_the_order_kept_back_for_it():
    order = an_order([a_line(money("90.00"), 9)], money("0.00"), money("90.00"))
    kept = _refund_kept_back("ret_1")

    def own(amount: str, kept_back: str, status=RefundStatus.SUCCEEDED, key: str = "ret_1#0"):
        return PaymentRefund(id=refund_id_for(order.id, key), amount=money(amount), reason="r", at=order.created_at,
                             status=status, kind="return", return_id="ret_1", kept_back=money(kept_back))  # fmt: skip

    # Its refund gave nothing (refused, so what it would have kept back was never kept): what the
    # order kept back for it. The top-up of that, approved, names the return but is not its refund.
    gave_nothing = order.model_copy(update={"returns_kept_back": {"ret_1": money("4.00")}})
    refused = own("3.00", "2.00", RefundStatus.FAILED)
    top_up = PaymentRefund(id=refund_id_for(order.id, "ret_1#kept_back#0"), amount=money("4.00"), reason="r",
                           at=order.created_at, kind="return", return_id="ret_1")  # fmt: skip
    assert kept(with_refunds(gave_nothing, [refused])) == money("4.00")
    assert kept(with_refunds(gave_nothing, [refused, top_up])) == money("4.00")
    # Another return's refund, and what it kept back, are not this one's.
    other = own("6.00", "0.75").model_copy(update={"id": refund_id_for(order.id, "ret_2#0"), "return_id": "ret_2"})
    assert kept(with_refunds(gave_nothing, [other, refused])) == money("4.00")
    # Its refund succeeded: what that kept back.
    assert kept(with_refunds(order, [refused, own("5.00", "1.50", key="ret_1#1")])) == money("1.50")
    # An exchange's replacement keeps back besides what neither its refund nor its credit could refund.
    replacement = gave_nothing.model_copy(update={"exchange_credit": money("10.00")})
    assert kept(with_refunds(replacement, [own("5.00", "1.50")])) == money("5.50")


def a_replacement(total: str, captured: str, credit: str | None, refunds: list[PaymentRefund] = (), statuses=()):
    """An exchange's replacement costing `total`, its own payment having captured `captured`, with
    `credit` (None: an order that is no replacement) and shipments in `statuses`."""
    order = an_order([a_line(money(total), 1)], money("0.00"), money(captured))
    shipments = [Shipment(id=f"shp_{i}", location_id="wh_1", lines=[], carrier="c", service="s", status=status)
                 for i, status in enumerate(statuses)]  # fmt: skip
    return with_refunds(order, list(refunds)).model_copy(
        update={"exchange_credit": None if credit is None else money(credit), "shipments": shipments}
    )


@pytest.mark.parametrize(
    ("total", "captured", "credit", "beyond"),
    [
        ("50.00", "25.00", "20.00", "5.00"),
        ("50.00", "29.50", "20.00", "0.50"),
        ("50.00", "40.00", "20.00", "0.00"),  # paid more than the credit leaves: nothing, not less
        ("50.00", "45.00", None, "5.00"),  # no credit: the total less what its payment took
    ],
)
def test_what_a_replacement_owes_beyond_its_credit_is_its_total_less_its_payment_and_credit(
    total, captured, credit, beyond
):
    assert beyond_credit(a_replacement(total, captured, credit)) == money(beyond)


def test_what_a_replacement_paid_itself_counts_of_a_refused_cancellation_refund_only_what_went_back():
    # 30.00 captured; a cancel's refund of 5.00, split, was refused after 3.00 of it went back, and
    # a plain one of 4.00 was refused whole: the payment paid 27.00 of the 50.00, the credit 20.00.
    split = a_split("ref_split", RefundStatus.FAILED, "3.00", "2.00", kind="cancellation")
    replacement = a_replacement("50.00", "30.00", "20.00", [split, a_refund("4.00")])

    assert beyond_credit(replacement) == money("3.00")


def test_a_replacement_owes_its_credit_back_only_once_nothing_is_left_to_ship_and_its_payment_leaves_credit_unused():
    done = (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED)
    # 50.00, of which its payment paid 25.00: 25.00 of its 30.00 credit pays the rest, 5.00 is unused.
    assert owes_credit_back(a_replacement("50.00", "25.00", "30.00", statuses=done))
    assert not owes_credit_back(a_replacement("50.00", "25.00", "25.00", statuses=done))  # all of it used
    assert not owes_credit_back(a_replacement("50.00", "25.00", None, statuses=done))  # no replacement
    assert not owes_credit_back(a_replacement("50.00", "25.00", "30.00"))  # nothing shipped yet
    for waiting in (ShipmentStatus.PENDING, ShipmentStatus.READY_FOR_PICKUP):
        assert not owes_credit_back(a_replacement("50.00", "25.00", "30.00", statuses=(*done, waiting)))


def test_what_is_kept_back_and_owed_is_named_by_the_returns_succeeded_refunds_that_kept_some_back():
    order = an_order([a_line(money("90.00"), 9)], money("0.00"), money("90.00"))

    def refund(return_id: str, status: RefundStatus, kept_back: str | None) -> PaymentRefund:
        return PaymentRefund(id=refund_id_for(order.id, f"{return_id}#0"), amount=money("5.00"), reason="r",
                             at=order.created_at, status=status, kind="return", return_id=return_id,
                             kept_back=None if kept_back is None else money(kept_back))  # fmt: skip

    # ret_1's refund kept 2.00 back; ret_2's, refused, kept nothing back; ret_3's kept nothing back.
    refunds = [
        refund("ret_1", RefundStatus.SUCCEEDED, "2.00"),
        refund("ret_2", RefundStatus.FAILED, "2.00"),
        refund("ret_3", RefundStatus.SUCCEEDED, None),
    ]
    owed = kept_back_owed(with_refunds(order, refunds))

    assert [(kept.names, kept.return_id, kept.key) for kept in owed] == [("ret_1", "ret_1", "ret_1")]
    assert owed[0].decide(with_refunds(order, refunds)) == ("ret_1#kept_back#0", money("2.00"))


def test_what_refunds_gave_short_of_their_units_worth_now_is_read_at_each_units_place():
    # ret_2 refunded the second of three units (40.22: 13.41, 13.40, 13.41 by cumulative shares); the
    # first came back on a return that refunded nothing (all of it kept back, or taken by a fee
    # before fees recorded it), which no refund's lines record.
    order = an_order([a_line(money("40.22"), 3)], money("0.00"), money("40.22"), refunded=money("13.40"))
    unit = RefundedUnits(line_id="L1", quantity=1, amount=money("13.40"), before=1)
    second = PaymentRefund(id=refund_id_for(order.id, "ret_2#0"), amount=money("13.40"), reason="r",
                           at=order.created_at, kind="return", return_id="ret_2", lines=[unit])  # fmt: skip

    assert refunded_short_of_lines(with_refunds(order, [second])) == money("0.00")
    # The line priced again for more (45.00 for the three: a volume price lost): the second unit is
    # worth 15.00 now, 1.60 more than it was refunded.
    dearer = an_order([a_line(money("45.00"), 3)], money("0.00"), money("45.00"), refunded=money("13.40"))
    assert refunded_short_of_lines(with_refunds(dearer, [second])) == money("1.60")
    # A share stored before shares kept their place is read as the line's first units, as it was.
    legacy = second.model_copy(update={"lines": [RefundedUnits(line_id="L1", quantity=1, amount=money("13.40"))]})
    assert refunded_short_of_lines(with_refunds(order, [legacy])) == money("0.01")


def test_the_whole_orders_shipping_top_up_owes_the_shipping_less_what_refunds_gave_of_it_as_far_as_refundable():
    # 9.00 of shipping; ret_1's refund gave 4.00 of it back with its units.
    order = an_order([a_line(money("30.00"), 3)], money("9.00"), money("39.00"), refunded=money("14.00"))
    decide = _whole_order_shipping_refund("ret_1:shipping", "ret_1")
    ret_1 = PaymentRefund(id=refund_id_for(order.id, "ret_1#0"), amount=money("14.00"), reason="r",
                          at=order.created_at, kind="return", return_id="ret_1", shipping=money("4.00"),
                          lines=[RefundedUnits(line_id="L1", quantity=1, amount=money("10.00"))])  # fmt: skip

    def top_up(n: int, amount: str, status: RefundStatus) -> PaymentRefund:
        return PaymentRefund(id=refund_id_for(order.id, f"ret_1:shipping#kept_back#{n}"), amount=money(amount),
                             reason="r", at=order.created_at, status=status, shipping=money(amount))  # fmt: skip

    assert decide(with_refunds(order, [ret_1])) == ("ret_1:shipping#kept_back#0", money("5.00"), [], money("5.00"))
    # Refused, the first gave nothing: the second owes the same; written (pending), it is carried on.
    refused = top_up(0, "5.00", RefundStatus.FAILED)
    assert decide(with_refunds(order, [ret_1, refused])) == (
        "ret_1:shipping#kept_back#1",
        money("5.00"),
        [],
        money("5.00"),
    )
    pending = top_up(1, "5.00", RefundStatus.PENDING)
    assert decide(with_refunds(order, [ret_1, refused, pending])) == ("ret_1:shipping#kept_back#1", money("0.00"))
    # Approved, nothing is owed; only as much as is refundable is asked, however little.
    assert decide(with_refunds(order, [ret_1, refused, top_up(1, "5.00", RefundStatus.SUCCEEDED)])) is None
    short = order.model_copy(update={"payment": order.payment.model_copy(update={"refunded": money("38.50")})})
    assert decide(with_refunds(short, [ret_1])) == ("ret_1:shipping#kept_back#0", money("0.50"), [], money("0.50"))
