"""An exchange's credit after the exchange: given back when the replacement does not go ahead or
shrinks, and drawn on when the replacement's units come back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.models import CREDIT_NOT_USED, Order, drawn_on_credit, draws_on_credit, utc_now
from core.money import Money, total
from core.ports import OrderRepository, ReturnRepository
from core.refund_service import RefundService, returns_shown, show_refunded_in_all
from core.refunds import (
    Refund,
    appeased_over_capture,
    refund_id_for,
    refunded_beyond_lines,
    refunded_short_of_lines,
    went_back,
)
from core.status import NOT_LEFT, OrderStatus, RefundStatus

# Statuses a replacement ends in without having shipped a unit: its credit paid for nothing.
_NOT_GONE_AHEAD = frozenset({OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED})


def carried_mark(return_id: str) -> str:
    """What the reason of a refund drawn on an earlier order's credit for the exchange of return
    `return_id` (ExchangeCredits.carry) contains, however far up the chain it was made."""
    return f"carried for return {return_id}"


def credit_left(original: Order, return_id: str, credit: Money) -> Money:
    """What of an exchange's `credit` no refund has drawn yet: the credit less every refund of the
    exchange's return `return_id` on the original order that draws on it (draws_on_credit: one the
    gateway did not refuse, a pending one holding its amount, or a refused give-back, left to a person;
    of another refused one, the parts the gateway approved before it refused one: drawn_on_credit)."""
    drawn = [drawn_on_credit(r) for r in original.payment.refunds if r.return_id == return_id]
    return credit - total(drawn, credit.currency)


def _paid_itself(replacement: Order) -> Money:
    """What the replacement's own payment took towards its total: its captures, less what cancels
    of its units gave back (a return's refund gives units back, not what the total was paid with),
    plus what its returns' refunds gave back short of the units' share of a line priced again for
    more since (a volume price lost with units cancelled: core.refunds.refunded_short_of_lines),
    which the returned units are not charged, less what they gave back (from its captures or from
    the credit) beyond a line priced again for less since (a fixed discount spread over fewer units:
    refunded_beyond_lines), which the returned units are no longer worth. What the settlement of its
    own payment took back or gave of either (core.refunds.payment_holds) is in its captures,
    cancellations' refunds (of one the gateway refused after approving a part of it, that part: it
    went back) and what its appeasements gave back of what it held beyond its total (a person's,
    the settlement refused: appeased_over_capture): counted here, the credit given back makes up
    only the rest."""
    settled = [
        r.amount if r.status != RefundStatus.FAILED else went_back(r) or Money.zero(replacement.currency)
        for r in replacement.payment.refunds if r.kind == "cancellation"
    ]  # fmt: skip
    return (
        replacement.payment.captured - total(settled, replacement.currency) - appeased_over_capture(replacement)
        + refunded_short_of_lines(replacement) - refunded_beyond_lines(replacement)
    )  # fmt: skip


def beyond_credit(replacement: Order) -> Money:
    """What of a replacement's total neither its own payment (_paid_itself) nor its credit (all of
    it the exchange did not refund at once: Order.usable_credit) pays: the most a settlement of its
    own payment may capture (core.unit_cancellation). The credit pays the rest (give_back counts it
    used), so the card is never asked for it: refused, with nothing left authorized, it would stop
    the credit's unused rest from being given back; made, it would be paid twice."""
    credit = replacement.usable_credit or Money.zero(replacement.currency)
    left = replacement.totals.grand_total - _paid_itself(replacement) - credit
    return left if left.amount > 0 else Money.zero(replacement.currency)


def owes_credit_back(order: Order) -> bool:
    """Whether `order` is an exchange's replacement with nothing left to ship (its total final)
    whose give-back refunds something (ExchangeCredits.give_back: its total, less what its own
    payment paid, is below its credit), so that the write that left it so (its last parcel shipped
    or collected, its last pending units cancelled) records that give-back owed
    (Order.settlement_owed): a function that dies before it leaves it to the reconciler's kept-back
    pass, not lost. Read in memory; False at once for any other order (the typical one)."""
    credit = order.exchange_credit
    if credit is None or not order.shipments or any(s.status in NOT_LEFT for s in order.shipments):
        return False
    return order.totals.grand_total - _paid_itself(order) < credit


class CreditChain:
    """What the credits of an exchange chain drew, read up the chain (plain reads, never a write
    nor a gateway's call): an exchange's credit lives on its original order, and a replacement's
    units exchanged again make that original itself a replacement. ExchangeCredits refunds and
    draws on credits with these; an operator's one-off command (the returns backfill) only reads
    them."""

    def __init__(self, returns: ReturnRepository, orders: OrderRepository):
        self._returns = returns
        self._orders = orders

    def _original_of(self, replacement: Order) -> tuple[Order, str] | None:
        item = self._returns.get(replacement.exchange_of) if replacement.exchange_of else None
        original = self._orders.get(item.order_id) if item is not None else None
        return (original, item.id) if item is not None and original is not None else None

    def unused(self, original: Order, return_id: str, credit: Money) -> Money:
        """What of the `credit` of the exchange of `return_id` (a return of `original`) no refund
        has drawn yet: credit_left on `original`, less what was drawn for it further up the chain
        (`original` itself a replacement)."""
        left = credit_left(original, return_id, credit)
        mark, seen = carried_mark(return_id), {original.id}
        earlier = self._original_of(original)
        while earlier is not None and earlier[0].id not in seen:
            order = earlier[0]
            seen.add(order.id)
            drawn = [drawn_on_credit(r) for r in order.payment.refunds if mark in r.reason]
            left = left - total(drawn, credit.currency)
            earlier = self._original_of(order)
        return left

    def drawn_for_units_of(self, original: Order, return_id: str, replacement_id: str) -> Money:
        """What of the credit of the exchange of `return_id` (a return of `original`) refunds drew
        for units of its replacement `replacement_id` that came back (`draw`, and what they carried
        up from its own credit: `carry`), on `original` and up the chain: money the replacement's
        units used of the credit and gave back."""
        mark = carried_mark(return_id)
        units_back = (f" of exchange {replacement_id}", f"from {replacement_id}'s credit")
        drawn = [
            drawn_on_credit(r) for r in original.payment.refunds
            if r.return_id == return_id and any(m in r.reason for m in units_back)
        ]  # fmt: skip
        seen, earlier = {original.id}, self._original_of(original)
        while earlier is not None and earlier[0].id not in seen:
            order = earlier[0]
            seen.add(order.id)
            drawn += [
                drawn_on_credit(r) for r in order.payment.refunds
                if mark in r.reason and any(m in r.reason for m in units_back)
            ]  # fmt: skip
            earlier = self._original_of(order)
        return total(drawn, original.currency)

    def carried_for_return(self, original: Order, return_id: str) -> Money:
        """What the orders up the chain from `original` refunded for the exchange of its return
        `return_id` from their own credits (`carry`: the rest of its credit, what its replacement did
        not use), not what they refunded for returns of the replacement's units nor for an exchange
        further down the chain (those returns show it): what that return shows beside its refunds on
        `original`. Zero for an original that is no replacement."""
        mark, zero = f"{carried_mark(return_id)} from ", Money.zero(original.currency)
        given: list[Money] = []
        seen, earlier = {original.id}, self._original_of(original)
        while earlier is not None and earlier[0].id not in seen:
            order = earlier[0]
            seen.add(order.id)
            for r in order.payment.refunds:
                first = r.reason.find("carried for return ")
                if first < 0 or first != r.reason.find(mark) or " of exchange " in r.reason[:first]:
                    continue  # carried first for another return, or a draw for a return of units
                given.append(r.amount if r.status == RefundStatus.SUCCEEDED else went_back(r) or zero)
            earlier = self._original_of(order)
        return total(given, original.currency)

    def drawn_for_return(self, replacement: Order, return_id: str) -> Money:
        """What the credit refunded for return `return_id` of `replacement`'s units (`draw`, and what
        it carried up the chain), on the orders up the chain: what that return shows beside the
        replacement's own refunds of it."""
        mark = f"return {return_id} of exchange {replacement.id}"
        drawn: list[Money] = []
        seen, earlier = {replacement.id}, self._original_of(replacement)
        while earlier is not None and earlier[0].id not in seen:
            order = earlier[0]
            seen.add(order.id)
            drawn += [
                r.amount
                for r in order.payment.refunds
                if r.status == RefundStatus.SUCCEEDED and r.reason.startswith(mark)
            ]
            earlier = self._original_of(order)
        return total(drawn, replacement.currency)


class ExchangeCredits(CreditChain):
    """An exchange's credit is the returned units' refund, kept as captured on the original order to
    pay for the replacement (Returns.exchange). What of it the replacement does not use is
    refunded on the original, as the refund of the return it stood for (kind `return`, that
    return's id), so that those refunds never add up past the credit:
    - `give_back`: a replacement cancelled, or whose payment of the difference failed, uses none of
      it; one with nothing left to ship uses what of its total its own payment did not pay, at most
      the credit (units cancelled, or an edit, may have taken it below the credit);
    - `draw`: a return of the replacement's units is refunded from its own captures first, and
      from the credit for what they did not cover.

    An exchange of an exchange (a replacement's units exchanged again) has an original that is
    itself a replacement, whose own captures paid only the difference: its credit is the units'
    whole value, and what the original's captures cannot refund of it is drawn from the original's
    own credit, on its original, and so on up the chain (`carry`; `unused` counts those draws).

    Each call is idempotent: a refund's key names what it is for and the attempt (refunds of it
    the gateway refused), so a repeat finds it, finishes it while pending and asks again under a
    new key once refused; but a give-back the gateway refused is left to a person (draws_on_credit:
    the credit holds it no more, so an appeasement can refund it, and no repeat asks it again)."""

    def __init__(
        self, returns: ReturnRepository, refunds: RefundService, orders: OrderRepository,
        clock: Callable[[], datetime] = utc_now,
    ):  # fmt: skip
        super().__init__(returns, orders)
        self._refunds = refunds
        self._clock = clock

    def left(self, replacement: Order) -> Money | None:
        """What of `replacement`'s credit is unused (None: it is no replacement): what an exchange
        of its units carries over to the next replacement beyond its own captures."""
        credit, found = replacement.exchange_credit, self._original_of(replacement)
        if credit is None or found is None:
            return None
        return max(self.unused(found[0], found[1], credit), Money.zero(credit.currency))

    def give_back(self, replacement: Order, actor: str, *, owed_back: Money | None = None) -> Refund | None:
        """Refund what of `replacement`'s credit it does not use (a no-op for any other order, or
        one that may still change: its total is final once nothing is left to ship). `owed_back`:
        what the settlement of its own payment still owes its card back (a refund of what its
        captures hold beyond its total that the gateway refused: asked again later, or left to a
        person), which its captures do not pay for it.
        PaymentGatewayUnavailable while the gateway stays down (the refund stays pending; the
        next call asks again); the Refund, `succeeded` or `failed`, otherwise."""
        credit = replacement.exchange_credit
        if credit is None:
            return None
        if replacement.status in _NOT_GONE_AHEAD:
            used = Money.zero(credit.currency)
        elif replacement.shipments and all(s.status not in NOT_LEFT for s in replacement.shipments):
            paid = _paid_itself(replacement) - (owed_back or Money.zero(credit.currency))
            used = min(credit, replacement.totals.grand_total - paid)
        else:
            return None  # an edit may still make it dearer, and its payment counts on the credit (usable_credit)
        # Units of it returned before the rest was settled (a parcel back while another waited) were
        # refunded from its own captures, then drew the rest of their share on the credit: `used`
        # counts them whole, so what they drew is counted as not drawn (units_back_of), or the units
        # of the rest cancelled since would never give their share back.
        refund = self._refund(
            replacement, f"exchange {replacement.id} {CREDIT_NOT_USED}", f"{replacement.id}:credit",
            lambda left: left - used, actor, units_back_of=replacement.id,
        )  # fmt: skip
        if refund is not None and refund.status == RefundStatus.SUCCEEDED:
            self._show_given_back(replacement)
        return refund

    def _show_given_back(self, replacement: Order) -> None:
        """The exchange's return shows what its credit gave back beside what it refunded at once
        (core.refund_service.show_refunded_in_all), and the original no longer records it as owing
        that show (Order.returns_to_show: written with the give-back's record, for the reconciler's
        kept-back pass to show it should this call die first)."""
        item = self._returns.get(replacement.exchange_of) if replacement.exchange_of else None
        original = self._orders.get(item.order_id, consistent=True) if item is not None else None
        if item is not None and original is not None:
            carried = self.carried_for_return(original, item.id)
            show_refunded_in_all(self._returns, original, item.id, self._clock(), elsewhere=carried)
            returns_shown(self._orders, original, [item.id], self._clock())

    def draw(
        self, replacement: Order, return_id: str, uncovered: Money, actor: str, *, key: str | None = None,
        reason: str | None = None,
    ) -> Refund | None:  # fmt: skip
        """Refund, from `replacement`'s credit, what of its return `return_id` its own captures did
        not cover (`uncovered`), as far as the credit goes. As `give_back` otherwise. `key` and
        `reason` name a draw made for an exchange further down the chain (`carry`). The Refund's
        `amount` is what was refunded for it in all, up the chain."""
        if replacement.exchange_credit is None:
            return None
        return self._refund(
            replacement, reason or f"return {return_id} of exchange {replacement.id}", key or f"{return_id}:credit",
            lambda left: min(uncovered, left), actor,
        )  # fmt: skip

    def carry(
        self, original: Order, return_id: str, credit: Money, got: Money, reason: str, key: str,
        wanted: Callable[[Money], Money], actor: str, *, units_back_of: str | None = None,
    ) -> Refund | None:  # fmt: skip
        """After `got` was refunded on `original` (of `wanted` of the unused `credit` of the exchange
        of its return `return_id`, as `_refund` counts it): when `original` is itself a replacement,
        what its own captures could not refund is drawn from its own credit, up the chain (None for
        any other order). Asked on every repeat too: the draw's key finds the one already made."""
        if original.exchange_credit is None or original.exchange_of is None:
            return None
        current = self._orders.get(original.id) or original
        short = wanted(self._left(current, return_id, credit, units_back_of) + got) - got
        short = short if short.amount > 0 else Money.zero(credit.currency)
        return self.draw(
            current, return_id, short, actor, key=f"{key}:carried",
            reason=f"{reason}, {carried_mark(return_id)} from {original.id}'s credit",
        )  # fmt: skip

    def _left(self, original: Order, return_id: str, credit: Money, units_back_of: str | None) -> Money:
        """`unused`, with what draws gave back for the units of replacement `units_back_of` that
        came back counted as not drawn (drawn_for_units_of)."""
        left = self.unused(original, return_id, credit)
        return left + self.drawn_for_units_of(original, return_id, units_back_of) if units_back_of else left

    def _refund(
        self, replacement: Order, reason: str, key: str, wanted: Callable[[Money], Money], actor: str,
        *, units_back_of: str | None = None,
    ) -> Refund | None:  # fmt: skip
        """Refund `wanted(left)` on the original, where `left` is the credit less every refund that
        drew on it (those of the exchange's return; but, with `units_back_of`, those that gave back
        that replacement's units: _left), decided on the original as it is written. What refused
        attempts of it gave back all the same (the parts of a split refund the gateway approved
        before it refused one: drawn_on_credit) counts as refunded for it: the attempt after them
        refunds only the rest, and the Refund's `amount` includes them."""
        credit = replacement.exchange_credit
        item = self._returns.get(replacement.exchange_of) if replacement.exchange_of else None
        if credit is None or item is None:
            return None
        zero = Money.zero(credit.currency)
        went_before: list[Money] = [zero]

        def decide(original: Order) -> tuple[str, Money] | None:
            refused = [r for r in original.payment.refunds if r.status == RefundStatus.FAILED and r.reason == reason]
            attempt = sum(1 for r in refused if r.return_id == item.id)
            went = total([drawn_on_credit(r) for r in refused if r.return_id == item.id and not draws_on_credit(r)],
                         credit.currency)  # fmt: skip
            went_before[0] = went
            idempotency_key = f"{key}#{attempt}"
            if original.payment.refund_by_id(refund_id_for(original.id, idempotency_key)) is not None:
                return idempotency_key, credit  # carried on with the amount it was written with
            left = self._left(original, item.id, credit, units_back_of)
            amount = min(wanted(left + went) - went, original.refundable(besides_return=item.id))
            return (idempotency_key, amount) if amount.amount > 0 else None

        refund = self._refunds.issue_decided_refund(
            item.order_id, decide, reason, actor, kind="return", return_id=item.id
        )
        if refund is not None and refund.status != RefundStatus.SUCCEEDED:
            return refund  # not done: the caller asks again, and the chain after it
        if refund is not None and went_before[0].amount > 0:
            refund = refund.model_copy(update={"amount": refund.amount + went_before[0]})
        original = self._orders.get(item.order_id)
        got = refund.amount if refund is not None else zero
        drawn = (
            self.carry(original, item.id, credit, got, reason, key, wanted, actor, units_back_of=units_back_of)
            if original
            else None
        )
        if drawn is None or (drawn.amount.amount <= 0 and drawn.status == RefundStatus.SUCCEEDED):
            return refund
        if drawn.status != RefundStatus.SUCCEEDED or refund is None:
            return drawn
        return refund.model_copy(update={"amount": got + drawn.amount})
