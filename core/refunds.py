"""Refund arithmetic: what units, shipping and fees are worth, exact to the currency's minor unit."""

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, NamedTuple

from pydantic import Field, StringConstraints

from core.errors import Conflict, InvalidRequest
from core.ids import short_hash
from core.models import (
    CREDIT_NOT_USED,
    CleanText,
    Order,
    OrderLine,
    PaymentRefund,
    RefundedUnits,
    Shown,
    Strict,
    VisibleText,
)
from core.money import ExactMoney, Money
from core.status import OrderStatus, RefundStatus

__all__ = [
    "KEPT_BACK_REFUSALS", "MAX_APPEASEMENT_BYTES", "KeptBackOwed", "Refund", "RefundRequest", "appeased_over_capture",
    "appeasement_bytes", "check_room_for_appeasements", "cumulative_share",
    "given_back_for_units", "kept_back_owed", "kept_back_refusals", "left_to_a_person", "over_capture_owed",
    "owes_kept_back", "payment_holds", "refund_due", "refund_id_for", "refunded_beyond_lines", "refunded_for_return",
    "refunded_short_of_lines", "returns_showing", "shipping_refunded", "units_refunded", "units_share", "went_back",
    "went_back_id", "with_refunds_shown",
]  # fmt: skip


# An order is one DynamoDB item (400 KB at most) and its refunds are on it. Nothing else bounds
# appeasements: a cent each, as many as captured minus refunded allows, each with a reason of up
# to 200 characters (~1 KB of JSON, ~550 bytes stored when random). The order keeps 64 KiB of
# them (about 65 at their longest, 400 of a short reason); with MAX_RETURNS returns' refunds and
# the largest order beside them its document stores 186 KB (tests/unit/test_aws_limits_order_item.py).
MAX_APPEASEMENT_BYTES = 64 * 1024


def appeasement_bytes(order: Order) -> int:
    """The JSON bytes of the order's appeasements, as its document holds them (an upper bound of
    what they take of the stored, compressed, document)."""
    return sum(len(r.model_dump_json().encode()) for r in order.payment.refunds if r.kind == "appeasement")


def check_room_for_appeasements(order: Order) -> None:
    """409 `too_many_refunds` when `order` (with the appeasement being added) keeps more than
    MAX_APPEASEMENT_BYTES of appeasements."""
    if appeasement_bytes(order) <= MAX_APPEASEMENT_BYTES:
        return
    taken = sum(1 for r in order.payment.refunds if r.kind == "appeasement") - 1
    raise Conflict(
        f"order {order.id} has {taken} appeasements, as many as it keeps ({MAX_APPEASEMENT_BYTES // 1024} KiB of"
        " them with their reasons): no more can be recorded on it; its returns are still refunded",
        code="too_many_refunds",
        details=[{"field": "amount", "message": f"order {order.id} takes no more appeasements"}],
    )


def cumulative_share(line: OrderLine, units: int) -> Money:
    """What the first `units` units of `line` are worth: its total (discount and tax included)
    in proportion, rounded half-even; all of its units are worth exactly its total."""
    if not 0 <= units <= line.quantity:
        raise InvalidRequest(
            f"line {line.line_id} has {line.quantity} units, not {units}",
            details=[{"field": "lines", "message": f"{line.line_id} has {line.quantity} units"}],
        )
    if units == line.quantity:
        return line.total
    return Money.of(line.total.amount * Decimal(units) / Decimal(line.quantity), line.total.currency)


def units_share(line: OrderLine, units: int, before: int = 0) -> Money:
    """What `units` more units of `line` are worth after `before` of them were refunded: the
    difference of two cumulative shares, so refunding every unit, in any number of steps, gives
    back exactly the line's total (the last unit takes what rounding left)."""
    return cumulative_share(line, before + units) - cumulative_share(line, before)


def units_refunded(
    order: Order,
    lines: Mapping[str, int],
    *,
    returned_before: Mapping[str, int] | None = None,
    refunded_before: Mapping[str, Money] | None = None,
) -> list[RefundedUnits]:
    """What a return of `lines` ({line_id: units}) gives back for each line's units: what they
    bring the units of the line refunded so far (`returned_before`) up to, worth as the line is
    priced now, beyond what those were refunded already (`refunded_before`; by default their
    share of the line as it is now, as units_share), or beyond that share when they were refunded
    less (a volume price the line lost since: the payment is settled for it instead,
    refunded_short_of_lines); never below zero. Whatever the line's price did in between (units of
    it cancelled), every unit of it refunded gives back its total, less what the payment was
    settled for instead."""
    before = returned_before or {}
    worth = refunded_before or {}
    by_id = {line.line_id: line for line in order.lines}
    zero = Money.zero(order.currency)
    shares = []
    for line_id, units in lines.items():
        line = by_id.get(line_id)
        if line is None:
            raise InvalidRequest(
                f"order {order.id} has no line {line_id}",
                details=[{"field": "lines", "message": f"no line {line_id}"}],
            )
        if units < 0:
            raise InvalidRequest(f"a negative quantity of {line_id} cannot be refunded")
        had = before.get(line_id, 0)
        given = worth.get(line_id)
        share = (
            units_share(line, units, had)
            if given is None
            else max(cumulative_share(line, had + units) - max(given, cumulative_share(line, had), key=_amount), zero,
                     key=_amount)
        )  # fmt: skip
        shares.append(RefundedUnits(line_id=line_id, quantity=units, amount=share, before=had))
    return shares


def refund_due(
    order: Order,
    lines: Mapping[str, int],
    shipping: Money,
    fee: Money,
    *,
    returned_before: Mapping[str, int] | None = None,
    refunded_before: Mapping[str, Money] | None = None,
    capped: bool = True,
    besides_return: str | None = None,
) -> Money:
    """What a return of `lines` ({line_id: units}) gives back: each unit's exact share of its
    line's total, plus `shipping` (what of the order's shipping it gives back), minus `fee`; never below
    zero and never more than captured minus refunded (and minus refunds still pending, and what the
    exchanges' credits hold but return `besides_return`'s own: Order.refundable).
    `returned_before` ({line_id: units}) counts the units of each line refunded by earlier
    returns, and `refunded_before` ({line_id: amount}) what they gave back for them, so that the
    units of a line returned over several returns add up to its total (units_refunded).
    Without `capped`, what the units are worth whatever this order's payment can still give back
    (an exchange's replacement draws the rest on its credit)."""
    zero = Money.zero(order.currency)
    if fee.currency != order.currency or fee.is_negative():
        raise InvalidRequest(f"a fee is a non-negative amount in {order.currency}")
    shares = units_refunded(order, lines, returned_before=returned_before, refunded_before=refunded_before)
    due = sum((share.amount for share in shares), zero)
    due = max(due + shipping - fee, zero, key=_amount)
    refundable = order.refundable(besides_return=besides_return)
    return min(due, max(refundable, zero, key=_amount), key=_amount) if capped else due


def given_back_for_units(order: Order, *, own: bool = False) -> dict[str, list[RefundedUnits]]:
    """What each return (by id) gave back for the units of each line, as recorded on the order:
    its refund's lines (one the gateway refused counts nothing, a pending one counts), for an
    exchange the credit its units became, for a return whose fee took all its refund what the fee
    kept (Order.fee_kept_shares), or for a return of a replacement's units its exchange's
    credit refunded whole (Order.credit_refunded_shares). With `own`, only what the order's own
    payment gave back: not the latter, which the credit settles (core.exchange_credit._paid_itself)."""
    given: dict[str, list[RefundedUnits]] = {}
    for refund in order.payment.refunds:
        if refund.status != RefundStatus.FAILED and refund.lines and refund.return_id is not None:
            given.setdefault(refund.return_id, []).extend(refund.lines)
    for return_id, shares in order.exchange_shares.items():
        given.setdefault(return_id, []).extend(shares)
    for return_id, shares in order.fee_kept_shares.items():
        given.setdefault(return_id, []).extend(shares)
    for return_id, shares in order.credit_refunded_shares.items() if not own else ():
        given.setdefault(return_id, []).extend(shares)
    return given


def shipping_refunded(order: Order, *, besides_return: str | None = None) -> Money:
    """What of the order's shipping its refunds gave back or are giving back (PaymentRefund.shipping;
    one the gateway refused counts nothing, a pending one counts) and its exchanges' credits claimed
    (Order.shipping_claims), but those of return `besides_return` (None: none is left out, so one
    that names no return counts: the whole order's shipping refunded for an exchange's return,
    _whole_order_shipping_owed, which left out would be refunded again at the next ask). A return's
    refund stored before `shipping` was recorded gave back, beyond its units' shares (`lines`), the
    shipping its policy granted (the fee, if any, taken off it): that excess counts (one stored
    since gives none beyond its lines without recording it)."""
    zero = Money.zero(order.currency)
    refunded = sum(
        (_shipping_of(refund, zero) for refund in order.payment.refunds
         if refund.status != RefundStatus.FAILED and (besides_return is None or refund.return_id != besides_return)),
        zero,
    )  # fmt: skip
    claimed = (amount for return_id, amount in order.shipping_claims.items() if return_id != besides_return)
    return sum(claimed, refunded)


def _shipping_of(refund: PaymentRefund, zero: Money) -> Money:
    """What of `refund` is the order's shipping (shipping_refunded)."""
    if refund.shipping is not None:
        return refund.shipping
    if refund.lines is None or refund.return_id is None:
        return zero
    beyond = refund.amount - sum((share.amount for share in refund.lines), zero)
    return max(beyond, zero, key=_amount)


def refunded_beyond_lines(order: Order, *, own: bool = False) -> Money:
    """What the order's return refunds gave back for the units of a line beyond the line's total:
    units refunded their share of it, then units of it cancelled and the line priced again for less
    than that (a fixed discount spread over fewer units). No later return can give it back, as
    each gives back only what brings its line up to its total (units_refunded); the payment is
    settled for it instead. Counted as given_back_for_units records it (`own`: as it records the
    order's own payment's)."""
    given: dict[str, Money] = {}
    for shares in given_back_for_units(order, own=own).values():
        for share in shares:
            given[share.line_id] = given.get(share.line_id, Money.zero(order.currency)) + share.amount
    zero = Money.zero(order.currency)
    beyond = [given[line.line_id] - line.total for line in order.lines if line.line_id in given]
    return sum((max(amount, zero, key=_amount) for amount in beyond), zero)


def refunded_short_of_lines(order: Order, *, own: bool = False) -> Money:
    """What the order's return refunds gave back for the units of a line short of those units' share
    of it as it is now: units refunded their share of it, then units of it cancelled and the line
    priced again for more (a volume price lost with the units). The returned units are not charged
    the price they lost, nor the units kept charged it for them (a later return of those gives back
    only their share: units_refunded); the payment is settled for it instead, as for
    refunded_beyond_lines. Counted as given_back_for_units records it (`own`: as it records the
    order's own payment's). Units whose share records its place (RefundedUnits.before) are worth
    their share at that place now; those recorded before places were kept are taken as the line's
    first units."""
    zero = Money.zero(order.currency)
    by_id = {line.line_id: line for line in order.lines}
    given: dict[str, Money] = {}
    units: dict[str, int] = {}
    placed: dict[str, Money] = {}  # what shares recording their place are now worth beyond what they gave
    for shares in given_back_for_units(order, own=own).values():
        for share in shares:
            line = by_id.get(share.line_id)
            if line is not None and share.before is not None and share.before + share.quantity <= line.quantity:
                now = units_share(line, share.quantity, share.before)
                placed[share.line_id] = placed.get(share.line_id, zero) + now - share.amount
                continue
            given[share.line_id] = given.get(share.line_id, zero) + share.amount
            units[share.line_id] = units.get(share.line_id, 0) + share.quantity
    short = [
        cumulative_share(line, units[line.line_id]) - given[line.line_id] + placed.get(line.line_id, zero)
        for line in order.lines
        if line.line_id in units and units[line.line_id] <= line.quantity
    ]
    short += [placed[line.line_id] for line in order.lines if line.line_id in placed and line.line_id not in units]
    return sum((max(amount, zero, key=_amount) for amount in short), zero)


def _amount(money: Money) -> Decimal:
    return money.amount


def refund_id_for(order_id: str, idempotency_key: str) -> str:
    """The refund's id, derived from its idempotency key: a retried step or request names the same
    refund, so the gateway is asked under the same key and the order records it once."""
    if not idempotency_key:
        raise ValueError("a refund needs an idempotency key")
    return "ref_" + short_hash(f"{order_id}\x1f{idempotency_key}")


# --- What was captured beyond an order's total ---------------------------------------------
# How many times in a row the gateway may refuse the refund of what the captures hold beyond the
# order's total (a cancel of units after their share was captured) before nothing asks it again:
# each refusal is a failed refund on the order and three history entries, and every repeat of the
# last ship and every delivery a carrier reports again asks it. A person gives it back then (an
# appeasement: POST /orders/{id}/refunds), told by whichever call recorded the last refusal
# (RefundService: a sweep or a repeat may be the one that hears it); the refusals stay the last
# word on that amount, so no later ship or delivery refunds it again.
OVER_CAPTURE_REFUSALS = 3


def payment_holds(order: Order) -> Money:
    """What the order's payment holds: captured, less its cancellations' refunds (a pending one
    counts: it is on its way; of a failed one split over authorizations, the parts the gateway
    approved before it refused one: Payment.with_failed_refund) and what its appeasements gave back
    of what it held beyond the total (appeased_over_capture), less what its returns' refunds gave
    back for a line beyond the total its cancelled units left it (refunded_beyond_lines), plus what
    they gave back short of the returned units' share of it (refunded_short_of_lines). Only its
    own payment's: what a replacement's exchange credit refunded whole is settled on the credit
    (core.exchange_credit._paid_itself), which this payment may have nothing to capture for. What
    a settlement of the payment to the order's total (core.unit_cancellation) starts from."""
    held = order.payment.captured - refunded_beyond_lines(order, own=True) + refunded_short_of_lines(order, own=True)
    zero = Money.zero(order.currency)
    for refund in order.payment.refunds:
        if refund.kind == "cancellation":
            held = held - (refund.amount if refund.status != RefundStatus.FAILED else went_back(refund) or zero)
    return held - appeased_over_capture(order)


def over_capture_owed(order: Order) -> Money:
    """What the payment holds beyond what the order now costs (payment_holds) that the gateway's
    refusals left to a person (left_to_a_person; zero when nothing is): what an appeasement gives
    back first (PaymentRefund.over_capture, decided as it is written: RefundService.issue_refund).
    While the OMS still asks the settlement's refund itself (pending, or refused fewer than
    OVER_CAPTURE_REFUSALS times: a cancel, ship or delivery repeated asks it again), an appeasement
    is goodwill on top of it: taken as giving it back, the customer would lose the goodwill; but for
    what an earlier ask refused so often left to a person, which that ask, refused, holds too."""
    zero = Money.zero(order.currency)
    left = left_to_a_person(order)
    if left is None:
        return zero
    over = min(payment_holds(order) - order.payable(), left, key=_amount)
    return over if over.amount > 0 else zero


def left_to_a_person(order: Order) -> Money | None:
    """What is left to a person of the refund of what the captures held beyond the total, when the
    gateway refused it OVER_CAPTURE_REFUSALS times in a row for one amount (the person was told of
    it: OverCapturesNotRefundedAlarm) and no settlement refund since went through or is on its way:
    only refused asks since, for more (a later cancel raised what is held beyond the total, and the
    ask of it, which holds the amount told, was refused fewer times). None otherwise, or when
    nothing is left: nothing asks it again; a person gives it back with an appeasement, and what
    the appeasements since gave back of it (appeased_over_capture, which payment_holds counts too)
    is no longer left to them (so the person's appeasement of the amount told gives it back even
    after a later ask was refused, and that ask, repeated, asks only the rest)."""
    refunds = order.payment.refunds
    amount, run = None, 0
    for i in reversed(range(len(refunds))):
        refund = refunds[i]
        if refund.kind != "cancellation":
            continue
        if refund.status != RefundStatus.FAILED:
            return None  # given back, or being asked: nothing is left to a person
        if refund.amount == amount:
            run += 1
        else:
            amount, run, newest = refund.amount, 1, i
        if run == OVER_CAPTURE_REFUSALS:
            left = refund.amount - appeased_over_capture(order, refunds[newest + 1 :])
            return left if left.amount > 0 else None
    return None


def appeased_over_capture(order: Order, refunds: list[PaymentRefund] | None = None) -> Money:
    """What the order's appeasements (or `refunds` of them) gave back, or are giving back, of what
    the payment held beyond the order's total (PaymentRefund.over_capture): the settlement counts it
    as given back, as its own refund (payment_holds). One the gateway refused moved nothing (of one
    split, what its approved parts gave back counts, as far as it goes)."""
    zero = Money.zero(order.currency)
    counted = zero
    for refund in order.payment.refunds if refunds is None else refunds:
        if refund.over_capture is None:
            continue
        if refund.status != RefundStatus.FAILED:
            counted = counted + refund.over_capture
        else:
            counted = counted + min(refund.over_capture, went_back(refund) or zero, key=_amount)
    return counted


def refused_in_a_row(order: Order, amount: Money) -> int:
    """How many of the order's last cancellation refunds the gateway refused, each for `amount`."""
    refused = 0
    for refund in reversed([refund for refund in order.payment.refunds if refund.kind == "cancellation"]):
        if refund.status != RefundStatus.FAILED or refund.amount != amount:
            break
        refused += 1
    return refused


# --- What returns kept back ---------------------------------------------------------------
# How many times the gateway may refuse the refund of what a return (or its exchange's credit) kept
# back before the reconciler stops asking and leaves it to a person (owes_kept_back): each refusal
# is a failed refund on the order, and a gateway that refuses for good would add one every pass.
KEPT_BACK_REFUSALS = 3

KeptBackDecision = Callable[[Order], tuple[str, Money] | tuple[str, Money, list[RefundedUnits], Money] | None]


class KeptBackOwed(NamedTuple):
    """What a return's refund, or its exchange's credit, kept back and may be owed (kept_back_owed)."""

    names: str | None  # the return its refunds name; None for an exchange's credit (credit_left)
    return_id: str  # the return it is refunded for, which shows it (refunded_for_return)
    key: str  # what its refunds are told by (_top_up_ids)
    reason: str
    decide: KeptBackDecision  # how the next is decided on the order (_kept_back_refund)


def kept_back_owed(order: Order) -> list[KeptBackOwed]:
    """What the order's returns' refunds, and its exchanges' credits, kept back and may be owed
    (UnitCancellation.refund_kept_back): for each, the return its refund names (None for an
    exchange's credit: the credit counts that return's refunds as drawn on it), the return it is
    refunded for, the key its refunds are told by (_top_up_ids), their reason, and how the next is
    decided on the order (_kept_back_refund). [] for an order that kept nothing back, read in
    memory only."""
    kept_by_refunds = [
        r.return_id for r in order.payment.refunds if r.kept_back and r.return_id and r.status == RefundStatus.SUCCEEDED
    ]
    placed = [return_id for return_id in order.returns_kept_back if return_id in order.exchanges]
    refunded = [return_id for return_id in order.returns_kept_back if return_id not in order.credit_holds]
    return [
        KeptBackOwed(return_id, return_id, return_id, _kept_back_reason(return_id),
                     _kept_back_refund(return_id, _refund_kept_back(return_id)))
        for return_id in dict.fromkeys([*kept_by_refunds, *refunded])
    ] + [
        KeptBackOwed(None, return_id, _credit_key(return_id), _credit_kept_back_reason(return_id),
                     _kept_back_refund(_credit_key(return_id),
                                       lambda current, return_id=return_id: current.returns_kept_back[return_id]))
        for return_id in placed
    ] + _whole_order_shipping_owed(order)  # fmt: skip


def _whole_order_shipping_owed(order: Order) -> list[KeptBackOwed]:
    """The order's shipping, owed back once the whole order is back when every return that brought
    units back was decided so (Order.whole_order_returns, each counted by what arrived of it), but
    given back by none of their refunds nor claimed by an exchange's credit: the rest of the order
    was cancelled after they came back, so no receipt brought its last unit back (a return's own
    refund, or its exchange's credit, gives it when one does: core.returns._shipping_due).
    Refunded on this order for the last of those returns once it is settled: its own refund made,
    or its exchange's replacement placed (a refund or credit claim decided beside it counts none of
    that return's refunds, so it would give the shipping back twice); so it waits while any
    exchange's credit is held for a replacement not placed yet (placed, its claim is decided; given
    up, the hold is released and its return refunded as a plain one). An exchange's credit that
    claimed the shipping leaves nothing owed (shipping_refunded counts the claim). Never on an
    exchange's replacement, whose returns draw on its credit. [] on the typical order, read in
    memory only."""
    returns = order.whole_order_returns
    if not returns or order.status is not OrderStatus.RETURNED or order.exchange_of is not None:
        return []
    deciding = any(return_id not in order.exchanges for return_id in order.credit_holds)
    if deciding or any(return_id not in returns for return_id in order.received_returns):
        return []
    last = order.received_returns[-1]
    key = f"{last}:shipping"
    top_ups = _top_up_ids(order, key)
    refunded = any(
        r.return_id == last and r.status == RefundStatus.SUCCEEDED and r.id not in top_ups
        for r in order.payment.refunds
    )
    # A return whose fee took all its units were worth is settled with no refund (fees_beyond_units).
    if not (refunded or last in order.exchanges or last in order.fees_beyond_units):
        return []
    reason = f"return {last}: shipping back, the whole order having come back"
    # An exchange's return's refunds are drawn on its credit (credit_left, Order.refundable): this
    # refund, which is not, names no return, as what its credit kept back does (refunded_for_return
    # shows it on the return).
    names = None if last in order.exchanges else last
    return [KeptBackOwed(names, last, key, reason, _whole_order_shipping_refund(key, last))]


def _whole_order_shipping_refund(key: str, last: str) -> KeptBackDecision:
    """How the refund of the shipping owed once the whole order is back (_whole_order_shipping_owed)
    is decided on the order: its key (`key` and how many such refunds the gateway answered, as
    _kept_back_refund counts them) and amount, the order's shipping less what of it refunds and
    exchange credits gave back or hold (shipping_refunded, which counts these refunds: each records
    its amount as `shipping`) and less what of return `last`'s fee its units did not cover
    (Order.fees_beyond_units: its refund, had it weighed the shipping, would have taken that from
    it), as far as it is refundable; None when nothing is owed or refundable."""

    def decide(order: Order) -> tuple[str, Money, list[RefundedUnits], Money] | tuple[str, Money] | None:
        zero = Money.zero(order.currency)
        top_ups = _top_up_ids(order, key)
        answered = sum(1 for r in order.payment.refunds if r.id in top_ups and r.status != RefundStatus.PENDING)
        attempt = f"{key}#kept_back#{answered}"
        if order.payment.refund_by_id(refund_id_for(order.id, attempt)) is not None:
            return attempt, zero  # carried on with the amount it was written with
        owed = order.totals.shipping - shipping_refunded(order) - order.fees_beyond_units.get(last, zero)
        amount = min(owed, order.refundable(), key=_amount)
        return (attempt, amount, [], amount) if amount.amount > 0 else None

    return decide


def owes_kept_back(order: Order, *, refusals: int | None = KEPT_BACK_REFUSALS) -> bool:
    """Whether something a return (or its exchange's credit) kept back is owed and refundable now,
    or its refund pending, but for what the gateway refused `refusals` times already (None: however
    often): what the reconciler's kept-back pass (core.refund_service.KeptBackSweep) finds."""
    for owed in kept_back_owed(order):
        if owed.decide(order) is None:
            continue
        if refusals is None or kept_back_refusals(order, owed.key) < refusals:
            return True
    return False


def returns_showing(order: Order, refund: PaymentRefund, *, finished: bool) -> list[str]:
    """The returns that owe showing what the gateway's answer to the pending `refund` of `order`
    gave back (Order.returns_to_show), when nothing else the function recording it does is sure to
    show it: a refund `finished` by the reconciler's pending-refund pass (its kept-back pass shows
    it, in the same run or, should that run die first, a later one), or one of what a return or
    its exchange's credit kept back (refund_kept_back shows it), or one giving back what an
    exchange's replacement did not use of its credit (ExchangeCredits.give_back shows it). Those
    are the return it names, or for one naming none, the exchanges' returns whose credit kept
    something back (kept_back_owed); none for any other refund (the request or step that made it
    shows what it means), so the typical order computes nothing here: it has no refund."""
    given_back = refund.return_id is not None and refund.reason.endswith(CREDIT_NOT_USED)
    owed = kept_back_owed(order)
    if not (finished or given_back) and not any(refund.id in _top_up_ids(order, entry.key) for entry in owed):
        return []
    if refund.return_id is not None:
        return [refund.return_id]
    return [entry.return_id for entry in owed if entry.names is None]


def kept_back_refusals(order: Order, key: str) -> int:
    """How many times the gateway refused the refund of what `key` (a return, or its exchange
    credit: kept_back_owed) kept back."""
    top_ups = _top_up_ids(order, key)
    return sum(1 for r in order.payment.refunds if r.id in top_ups and r.status == RefundStatus.FAILED)


def refunded_for_return(order: Order, return_id: str) -> Money:
    """What was refunded for return `return_id` in all, as the Return shows it (Return.refunded_in_all):
    its refunds that succeeded and the parts of refused ones the gateway approved, those of what
    it kept back included. For a placed exchange's return, what its step refunded of the credit
    (under the return's own keys), what its credit kept back refunded since (which names no
    return) and what of the credit its replacement did not use went back (a cancel, or units of it
    cancelled), but not what the credit drew for returns of the replacement's units (those returns
    show it) nor for an exchange further down the chain (carried for another return)."""
    zero = Money.zero(order.currency)
    if return_id in order.exchanges:
        ids = _top_up_ids(order, _credit_key(return_id))
        ids |= {refund_id_for(order.id, f"{return_id}#{n}") for n in range(len(order.payment.refunds) + 1)}
        ids |= _top_up_ids(order, f"{return_id}:shipping")  # the whole order's shipping (_whole_order_shipping_owed)
        mine = [
            r for r in order.payment.refunds
            if r.id in ids or (r.return_id == return_id and r.reason.endswith(CREDIT_NOT_USED))
        ]  # fmt: skip
    else:
        mine = [r for r in order.payment.refunds if r.return_id == return_id]
    went = [
        p.amount
        for r in mine
        if r.status == RefundStatus.FAILED
        for p in r.parts or []
        if p.status == RefundStatus.SUCCEEDED
    ]
    return sum((r.amount for r in mine if r.status == RefundStatus.SUCCEEDED), sum(went, zero))


def _credit_key(return_id: str) -> str:
    """What the refunds of what return `return_id`'s exchange credit kept back are told by (_top_up_ids)."""
    return f"{return_id}:credit"


def _kept_back_reason(return_id: str) -> str:
    return f"return {return_id}, kept back until a later parcel was captured"


def _credit_kept_back_reason(return_id: str) -> str:
    return f"return {return_id}'s exchange credit, kept back until a later parcel was captured"


def _refund_kept_back(return_id: str) -> Callable[[Order], Money]:
    """What return `return_id`'s refund kept back: the one that succeeded (PaymentRefund.kept_back),
    or, when none did, what the order kept back for it (Order.returns_kept_back: it gave nothing).
    An exchange's replacement keeps back there too what neither its refund nor its credit could
    refund (core.returns.Returns._from_credit)."""

    def kept(order: Order) -> Money:
        zero = Money.zero(order.currency)
        top_ups = _top_up_ids(order, return_id)
        own = [r for r in order.payment.refunds if r.return_id == return_id and r.status == RefundStatus.SUCCEEDED
               and r.id not in top_ups]  # fmt: skip
        if own:
            beside = order.returns_kept_back.get(return_id, zero) if order.exchange_credit is not None else zero
            return sum((r.kept_back for r in own if r.kept_back), beside)
        return order.returns_kept_back.get(return_id, zero)

    return kept


def _top_up_ids(order: Order, key: str) -> set[str]:
    """The ids the refunds of what `key` (a return, or its exchange credit) kept back have or may
    have (`<key>#kept_back#<n>`): told from its other refunds, and from an appeasement, by id, never
    by a reason a client may also write."""
    return {refund_id_for(order.id, f"{key}#kept_back#{n}") for n in range(len(order.payment.refunds) + 1)}


def _kept_back_refund(key: str, kept: Callable[[Order], Money]) -> KeptBackDecision:
    """How the refund of what a return's refund or exchange credit kept back (`kept(order)`) is
    decided on the order: its key (`key` and how many such refunds, told by id (_top_up_ids), the gateway
    answered: refused, or made for what a capture made refundable of it, the rest waiting for the
    next) and amount, what was kept back less what such refunds gave back or hold (of one refused,
    the parts approved before it), as far as it is refundable; None when nothing is owed or
    refundable."""

    def decide(order: Order) -> tuple[str, Money] | None:
        zero = Money.zero(order.currency)
        top_ups = _top_up_ids(order, key)
        given = [r for r in order.payment.refunds if r.id in top_ups]
        attempt = f"{key}#kept_back#{sum(1 for r in given if r.status != RefundStatus.PENDING)}"
        if order.payment.refund_by_id(refund_id_for(order.id, attempt)) is not None:
            return attempt, zero  # carried on with the amount it was written with
        owed = kept(order)
        for refund in given:
            if refund.status != RefundStatus.FAILED:
                owed = owed - refund.amount
            else:
                owed = owed - sum((p.amount for p in refund.parts or [] if p.status == RefundStatus.SUCCEEDED), zero)
        amount = min(owed, order.refundable())
        return (attempt, amount) if amount.amount > 0 else None

    return decide


# --- What the API shows -------------------------------------------------------------------


class Refund(Shown):
    """A refund as the contract shows it. `pending` only while the gateway has not answered (a
    request interrupted there, or a gateway that stayed unavailable): repeating the request with
    the same Idempotency-Key, the returns workflow's retry, or else the reconciler's pass
    (core.refund_service.PendingRefundSweep) finishes it."""

    id: str
    order_id: str
    amount: Money
    reason: Annotated[str, VisibleText]
    status: RefundStatus
    return_id: str | None = None
    created_at: datetime

    @classmethod
    def of(cls, order_id: str, refund: PaymentRefund) -> "Refund":
        """`refund` under its own id; of a split one the gateway refused after approving a part of
        it, what did not go back (the rest is shown as its own refund: Refund.shown)."""
        went = went_back(refund)
        return cls(
            id=refund.id,
            order_id=order_id,
            amount=refund.amount if went is None else refund.amount - went,
            reason=refund.reason,
            status=refund.status,
            return_id=refund.return_id,
            created_at=refund.at,
        )

    @classmethod
    def shown(cls, order_id: str, refund: PaymentRefund) -> "list[Refund]":
        """`refund` as GET /orders/{id}/refunds and the events show it: money is shown as moved only
        where the gateway said so, and `payment.refunded` is the sum of the refunds shown
        `succeeded`. A split refund the gateway refused after approving a part of it is two: what
        did not go back, `failed` under its own id (Refund.of), then what did, `succeeded` under an
        id derived from its own (went_back_id). In that order: a page of the list that showed the
        refund while it was pending shows what went back next (order_lists.growing_page)."""
        went = went_back(refund)
        shown = [cls.of(order_id, refund)]
        if went is None:
            return shown
        approved = cls(id=went_back_id(refund.id), order_id=order_id, amount=went, reason=refund.reason,
                       status=RefundStatus.SUCCEEDED, return_id=refund.return_id, created_at=refund.at)  # fmt: skip
        return [*shown, approved]


def went_back(refund: PaymentRefund) -> Money | None:
    """What the parts of a split `refund` the gateway approved before it refused one gave back
    (Payment.with_failed_refund counts it in `refunded`); None for any other refund."""
    if refund.status != RefundStatus.FAILED or not refund.parts:
        return None
    approved = [part.amount for part in refund.parts if part.status == RefundStatus.SUCCEEDED]
    return sum(approved, Money.zero(refund.amount.currency)) if approved else None


def went_back_id(refund_id: str) -> str:
    """The id the approved parts of split refund `refund_id`, refused in part, are shown under
    (Refund.shown): the same for every read and every redelivered change, so its event
    (`refund.succeeded`) keeps its id."""
    return "ref_" + short_hash(f"{refund_id}\x1fwent back")


def with_refunds_shown(order: Order) -> Order:
    """`order` as the API answers it and the events carry it (`data.order`): `payment.refunds` the
    refunds GET /orders/{id}/refunds lists, in its order (Refund.shown), so that the `succeeded`
    ones sum to `payment.refunded`. A split refund the gateway refused after approving a part of it
    is two: what did not go back, `failed` under its own id with the parts that did not, then what
    did, `succeeded` under went_back_id with the parts the gateway approved (their references, as
    a split refund that succeeded keeps them). What is stored is untouched; an order with no such
    refund is `order` itself."""
    if all(went_back(refund) is None for refund in order.payment.refunds):
        return order
    shown: list[PaymentRefund] = []
    for refund in order.payment.refunds:
        went = went_back(refund)
        if went is None:
            shown.append(refund)
            continue
        parts = refund.parts or []
        approved = [part for part in parts if part.status == RefundStatus.SUCCEEDED]
        rest = [part for part in parts if part.status != RefundStatus.SUCCEEDED]
        reference = ",".join(part.reference or "" for part in approved)
        succeeded = {"id": went_back_id(refund.id), "amount": went, "status": RefundStatus.SUCCEEDED, "message": None}
        shown.append(refund.model_copy(update={"amount": refund.amount - went, "parts": rest}))
        shown.append(refund.model_copy(update={**succeeded, "reference": reference, "parts": approved}))
    return order.model_copy(update={"payment": order.payment.model_copy(update={"refunds": shown})})


class RefundPage(Shown):
    items: list[Refund]
    next_cursor: str | None = None


class RefundRequest(Strict):
    """The body of POST /orders/{id}/refunds: an appeasement, a refund without a return."""

    amount: ExactMoney
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), CleanText] = Field(
        description="Why the money goes back, e.g. 'late delivery'."
    )
