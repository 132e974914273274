"""Refunds through the payment plugin: held on the order first, asked once per key, recorded as the gateway answered."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain, islice

from core import order_lists, payment_keys
from core.deadline import TimeUp, never
from core.errors import (
    Conflict,
    NoPaymentPlugin,
    PaymentGatewayUnavailable,
    PaymentRefused,
    StaleVersion,
    dependency_down,
)
from core.events import OrderEvent
from core.hook_calls import calls_about
from core.models import (
    CREDIT_NOT_USED,
    Change,
    HistoryEntry,
    Order,
    PaymentRefund,
    RefundedUnits,
    RefundKind,
    RefundPart,
)
from core.money import Money
from core.order_changes import ATTEMPTS, Changes, failure_recorder, modify, visible
from core.payments import Failure, OnFailure, Payments
from core.ports import KeptBackRefunds, OrderRepository, PendingRefunds, ReturnRepository
from core.refunds import (
    OVER_CAPTURE_REFUSALS,
    Refund,
    check_room_for_appeasements,
    kept_back_owed,
    over_capture_owed,
    owes_kept_back,
    refund_id_for,
    refunded_for_return,
    refused_in_a_row,
    returns_showing,
)
from core.return_models import Return
from core.status import RefundStatus, ReturnStatus, ShipmentStatus

# What a decided refund is (RefundService.issue_decided_refund): its idempotency key and amount,
# and for a return's refund what it gives back for each line's units, what of it is shipping and
# what of the return's worth it cannot give back (PaymentRefund.kept_back).
Decision = (
    tuple[str, Money] | tuple[str, Money, list[RefundedUnits]] | tuple[str, Money, list[RefundedUnits], Money]
    | tuple[str, Money, list[RefundedUnits], Money | None, Money]
)  # fmt: skip

logger = logging.getLogger(__name__)


class RefundService:
    """Appeasements (POST /orders/{id}/refunds), the returns workflow's refunds and the refund of
    an over-capture after a cancel all go through `issue_refund`.

    A refund is written `pending` on the order first (conditional on its version, and never more
    than captured minus refunded and pending, so two refunds cannot both take the last of it),
    then asked of the gateway under a key derived from its id, then recorded `succeeded` or
    `failed`. Its id comes from the caller's idempotency key, so a repeat finds it: a finished
    refund is returned as it is, a pending one (interrupted, or the gateway stayed unavailable) is
    asked again under the same gateway key, which the gateway answers without refunding twice.

    A refused refund is final under its key (a gateway replays its answer to a key): it is
    recorded `failed`, never counted, and what it held is free again; retrying means a new
    refund, under a new key. A gateway that stays unavailable raises PaymentGatewayUnavailable
    (503 in the API, a Retry in the returns workflow) with the refund still pending.

    No payment plugin taking the order's method (NoPaymentPlugin) is no gateway's answer: a
    refund the call began itself was never asked, so it is recorded `failed` as if refused, but
    one found pending may have been refunded through the removed plugin by the call that left it,
    so it stays pending (its `no_plugin` attempt in the history once) and NoPaymentPlugin is
    raised (502 in the API), for it to be asked again under its key once the plugin is back."""

    def __init__(self, orders: OrderRepository, payments: Payments, clock: Callable[[], datetime]):
        self._orders = orders
        self._payments = payments
        self._clock = clock

    def issue_refund(
        self,
        order_id: str,
        amount: Money,
        reason: str,
        idempotency_key: str,
        actor: str,
        return_id: str | None = None,
        *,
        kind: RefundKind | None = None,
        channel: str | None = None,
        same_request: bool = False,
        expected_version: int | None = None,
    ) -> Refund:
        """Refund `amount` of what was captured, once per `idempotency_key` on this order.
        RefundExceedsCaptured (422) beyond captured minus refunded (any amount when nothing was
        captured); the Refund, `succeeded` or `failed`, once the gateway answered;
        NoPaymentPlugin for a refund found pending that no plugin can ask again (_ask_gateway).
        With `same_request` (a client's key), a refund found under the key for another amount or
        reason is Conflict (409 `idempotency_key_reused`), before the gateway is asked: the
        client's request is not the one that key stands for. `expected_version` (the version the
        person refunding read, their If-Match): an order at another is 409 `version_conflict`
        (Order.check_seen), judged in the write that holds the refund: nothing written, nothing
        asked of the gateway; not for a refund found under the key, whose own write moved it."""
        begun = self._begin(
            order_id, lambda order: (idempotency_key, amount), reason, actor,
            kind=kind or ("return" if return_id else "appeasement"), return_id=return_id, channel=channel,
            expected_version=expected_version,
        )  # fmt: skip
        assert begun is not None  # the amount is given: there is always a refund
        order, refund, fresh = begun
        if same_request and (refund.amount != amount or refund.reason != reason):
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )
        if refund.status != RefundStatus.PENDING:
            return Refund.of(order_id, refund)
        return Refund.of(order_id, self._ask_gateway(order, refund, actor, fresh=fresh))

    def issue_decided_refund(
        self, order_id: str, decide: Callable[[Order], Decision | None], reason: str, actor: str,
        *, kind: RefundKind, return_id: str | None = None,
    ) -> Refund | None:  # fmt: skip
        """A refund whose key and amount follow from the order (a settlement of what was captured
        beyond the total, a return's share of its lines): `decide` answers them (a return's refund
        also what it gives back for each line's units and what of it is shipping), or None for
        nothing to refund, on the order as the pending refund is written. Two callers that read
        the order at different times so cannot both price what one of them has already taken, nor
        claim one key for different amounts. A refund already under the decided key is carried on
        as `issue_refund` does (its amount is the one it was written with). The Refund once the
        gateway answered; None when there was nothing to refund; NoPaymentPlugin as `issue_refund`."""
        begun = self._begin(order_id, decide, reason, actor, kind=kind, return_id=return_id)
        if begun is None:
            return None
        order, refund, fresh = begun
        if refund.status != RefundStatus.PENDING:
            return Refund.of(order_id, refund)
        return Refund.of(order_id, self._ask_gateway(order, refund, actor, fresh=fresh))

    def _begin(
        self, order_id: str, decide: Callable[[Order], Decision | None], reason: str, actor: str,
        *, kind: RefundKind, return_id: str | None, channel: str | None = None, expected_version: int | None = None,
    ) -> tuple[Order, PaymentRefund, bool] | None:  # fmt: skip
        """The refund `decide` names, written `pending` on the order unless one is there under its
        key already; with the order as then stored, and whether this call wrote it (nobody can
        have asked the gateway for it yet). None when `decide` found nothing to refund. One to
        write on an order at another version than `expected_version` is StaleVersion."""
        at = self._clock()
        decided: list[str] = []
        written: list[bool] = []  # whether the last decide wrote the refund (the write that landed)

        def begin(order: Order):
            decided.clear()
            written.clear()
            answer = decide(order)
            if answer is None:
                return None
            idempotency_key, amount, *returned = answer
            refund_id = refund_id_for(order_id, idempotency_key)
            decided.append(refund_id)
            if order.payment.refund_by_id(refund_id) is not None:
                return None
            order.check_seen(expected_version)
            if kind == "appeasement":
                _refuse_while_settling(order)
            written.append(True)
            # An appeasement gives back first what the payment holds beyond the order's total that the
            # gateway's refusals left to a person (core.refunds.over_capture_owed): decided here, on
            # the order as it is written, and kept on the refund, so no settlement refunds it again.
            owed = over_capture_owed(order) if kind == "appeasement" else None
            change = order.begin_refund(
                refund_id, amount, reason=reason, kind=kind, return_id=return_id,
                lines=returned[0] if returned else None, shipping=returned[1] if len(returned) > 1 else None,
                kept_back=returned[2] if len(returned) > 2 else None, at=at, actor=actor,
                over_capture=min(owed, amount, key=lambda money: money.amount) if owed and owed.amount > 0 else None,
            )  # fmt: skip
            if kind == "appeasement":
                # Measured on the order as it would be stored: refused before the write, so the
                # gateway is never asked for an appeasement the order could not record.
                check_room_for_appeasements(change[0])
            return change

        # Read consistently: what makes the refund due (a capture, a cancel) is often this request's
        # own write of a moment ago, and nothing found due on a read before it would be asked again.
        order = modify(self._orders, order_id, begin, channel=channel, consistent=True)
        if not decided:
            return None
        refund = order.payment.refund_by_id(decided[0])
        assert refund is not None
        return order, refund, bool(written)

    def finish_pending(
        self, order_id: str, actor: str, *, besides_return: str | None = None, begun_before: datetime | None = None,
        down: set[str] | None = None, unshown: bool = False,
    ) -> list[Refund]:  # fmt: skip
        """Ask the gateway again for every refund of the order still `pending` (under its own
        key), whatever key it was issued with, but those of return `besides_return` (its own step
        finishes them) and, with `begun_before`, those begun since (still in their request's
        hands); PaymentGatewayUnavailable while it stays down. Asked again through an outage (the
        sweep asks every few minutes), a refund's history says the gateway is unavailable once,
        not once per failed attempt of every pass (_recorder). `down`: the payment
        methods whose gateway the caller found unavailable; an order paid by one is not asked
        (nothing is done: []), and a method found unavailable here is added to it. NoPaymentPlugin
        when no payment plugin takes the order's method: the refunds stay pending (_ask_gateway).
        `unshown`: the caller shows no return what went back (the reconciler's pending-refund pass):
        each answer is recorded with the returns that owe showing it (core.refunds.returns_showing),
        for the kept-back pass to show them however the caller ends."""
        order = visible(self._orders.get(order_id), order_id, None)
        if down is not None and order.payment.method in down:
            return []
        pending = [
            refund for refund in order.payment.refunds
            if refund.status == RefundStatus.PENDING and (besides_return is None or refund.return_id != besides_return)
            and (begun_before is None or refund.at < begun_before)
        ]  # fmt: skip
        try:
            return [
                Refund.of(order_id, self._ask_gateway(order, refund, actor, again=True, unshown=unshown))
                for refund in pending
            ]
        except PaymentGatewayUnavailable:
            if down is not None:
                down.add(order.payment.method)
            raise

    def _ask_gateway(
        self, order: Order, refund: PaymentRefund, actor: str, *, again: bool = False, fresh: bool = False,
        unshown: bool = False,
    ) -> PaymentRefund:  # fmt: skip
        """Ask the gateway for the pending `refund` under its key and record its answer: the refund
        `succeeded`, or `failed` when refused. `again`: asked by a pass that asks every few minutes
        (_recorder). `fresh`: the caller has just written the refund, so nothing asked the
        gateway for it before; a refund no payment plugin takes is then `failed` (nothing moved),
        and otherwise stays pending, NoPaymentPlugin raised, its `no_plugin` attempt in the history
        once however often it is asked: the call that left it may have refunded through the
        removed plugin, and recorded `failed` it would free its amount to be refunded again.
        PaymentGatewayUnavailable (the refund pending) while the gateway stays down. A refund
        against another authorization than the payment's own names it (PaymentRefund.authorization);
        one split over several is asked part by part (_ask_parts). What went back is recorded with
        the returns that owe showing it (core.refunds.returns_showing; `unshown`: the caller shows
        none), in the same write: a function that dies before showing it leaves them on the order."""
        if refund.parts:
            return self._ask_parts(order, refund, actor, again=again, fresh=fresh, unshown=unshown)
        payment = order.payment
        authorization = refund.authorization or payment.authorization or ""
        key = payment_keys.refund(order.id, refund.id)
        recorder = self._recorder(order.id, refund, actor, again=again, fresh=fresh)
        try:
            result = self._payments.retried(
                "refund",
                lambda attempt: self._payments.refund(payment.method, authorization, refund.amount, order.id, key),
                recorder,
            )
        except PaymentRefused as refused:
            if isinstance(refused, NoPaymentPlugin) and not fresh:
                raise  # the call that left it pending may have refunded through the removed plugin
            message, at = refused.gateway_message, self._clock()
            return self._record_refusal(
                order.id, refund, actor,
                lambda current: current.record_failed_refund(refund.id, None, message, at=at, actor=actor),
            )  # fmt: skip
        at = self._clock()
        # Read consistently: a plain read may predate the pending refund's write of a moment ago,
        # and the gateway's answer would go unrecorded (the refund left pending).
        done = modify(
            self._orders, order.id,
            lambda current: current.record_refund(
                refund.id, result.reference, at=at, actor=actor,
                to_show=returns_showing(current, refund, finished=unshown),
            ) if self._still_pending(current, refund.id) else None,
            consistent=True,
        )  # fmt: skip
        return self._final(done, refund.id)

    def _ask_parts(
        self, order: Order, refund: PaymentRefund, actor: str, *, again: bool, fresh: bool, unshown: bool
    ) -> PaymentRefund:
        """Ask the gateway for each part of the split pending `refund` (PaymentRefund.parts), in
        order, against its own authorization under its own key, then record every answer in one
        write: `succeeded` once each part was approved; `failed` once one is refused (the parts
        after it are not asked, and fail with it), the parts approved before it counting in
        `payment.refunded` as the money they gave back did go back. While the gateway stays down
        PaymentGatewayUnavailable leaves the refund pending, and asked again each part approved
        already is answered again under its key. No payment plugin taking the order's method is
        as for an unsplit refund (_ask_gateway), and once a part was approved the refund stays pending."""
        payment = order.payment
        answered: list[RefundPart] = []
        refusal: str | None = None
        for part in refund.parts or []:
            if refusal is not None:
                answered.append(part.refused("not asked: the gateway refused an earlier part of this refund"))
                continue
            key = payment_keys.refund_part(order.id, refund.id, part.authorization)
            recorder = self._recorder(order.id, refund, actor, again=again, fresh=fresh, part=part)
            try:
                result = self._payments.retried(
                    "refund",
                    lambda attempt, part=part, key=key: self._payments.refund(
                        payment.method, part.authorization, part.amount, order.id, key
                    ),
                    recorder,
                )
            except PaymentRefused as refused:
                if isinstance(refused, NoPaymentPlugin) and (not fresh or answered):
                    raise  # an earlier call, or part, may have refunded through the removed plugin
                refusal = refused.gateway_message
                answered.append(part.refused(refusal))
                continue
            answered.append(part.approved(result.reference))
        at = self._clock()
        if refusal is not None:
            went = any(part.status == RefundStatus.SUCCEEDED for part in answered)  # what it gave back all the same
            return self._record_refusal(
                order.id, refund, actor,
                lambda current: current.record_failed_refund(
                    refund.id, None, refusal, at=at, actor=actor, parts=answered,
                    to_show=returns_showing(current, refund, finished=unshown) if went else None,
                ),
            )  # fmt: skip

        def record(current: Order):
            if not self._still_pending(current, refund.id):
                return None
            reference = ",".join(part.reference or "" for part in answered)
            shown = returns_showing(current, refund, finished=unshown)
            return current.record_refund(refund.id, reference, at=at, actor=actor, parts=answered, to_show=shown)

        return self._final(modify(self._orders, order.id, record, consistent=True), refund.id)

    def _record_refusal(
        self, order_id: str, refund: PaymentRefund, actor: str, failed: Callable[[Order], Change]
    ) -> PaymentRefund:
        """Record the gateway's refusal of the pending `refund` (`failed`), unless another call
        recorded its answer first. The refusal of a cancellation refund that leaves what the
        captures hold beyond the order's total refused OVER_CAPTURE_REFUSALS times in a row tells a
        person, once (_over_capture_left): in the same write, so a function that dies after it
        cannot leave the refusals with nobody told (nothing asks that refund again); whether it was
        the cancel or ship that asked it, a repeat or a sweep that found it pending and heard it.
        So is a refused give-back of the credit an exchange's replacement did not use (nothing asks
        it again either: core.models.draws_on_credit), by an ERROR line naming the order it is on,
        the refund and what did not go back, once, by the call whose write recorded it: its metric
        (CreditsNotGivenBack, for CreditsNotGivenBackAlarm) has no dimension to find it by."""
        told: list[bool] = []
        recorded: list[PaymentRefund] = []

        def record(current: Order) -> Change | Changes | None:
            told.clear()
            recorded.clear()
            if not self._still_pending(current, refund.id):
                return None
            new, entry = failed(current)
            recorded.extend(r for r in new.payment.refunds if r.id == refund.id)
            if refund.kind != "cancellation" or refused_in_a_row(new, refund.amount) != OVER_CAPTURE_REFUSALS:
                return new, entry
            told.append(True)
            return new, [entry, self._over_capture_left(new, refund.amount, actor)]

        done = modify(self._orders, order_id, record, consistent=True)
        if told:
            logger.error(
                "refund of what was captured beyond the order's total refused %d times: left to a person",
                OVER_CAPTURE_REFUSALS, extra={"order_id": order_id, "amount": str(refund.amount.amount)},
            )  # fmt: skip
        if recorded and CREDIT_NOT_USED in refund.reason:
            (made,) = recorded
            zero = Money.zero(refund.amount.currency)
            went = sum((part.amount for part in made.parts or [] if part.status == RefundStatus.SUCCEEDED), zero)
            owed = str((refund.amount - went).amount)
            logger.error(
                "refund %s refused, %s %s not given back (%s): left to a person",
                refund.id, owed, refund.amount.currency, refund.reason,
                extra={"order_id": order_id, "refund_id": refund.id, "amount": owed},
            )  # fmt: skip
        return self._final(done, refund.id)

    def _over_capture_left(self, order: Order, amount: Money, actor: str) -> HistoryEntry:
        """The entry for the refusal of the refund of what was captured beyond the order's total
        that makes OVER_CAPTURE_REFUSALS in a row for `amount`: nothing asks it again
        (core.unit_cancellation), so a person must be told: an `over_capture_not_refunded` entry,
        which the business metrics count for OverCapturesNotRefundedAlarm (and an ERROR line)."""
        return order.noted(
            OrderEvent.OVER_CAPTURE_NOT_REFUNDED, at=self._clock(), actor=actor,
            detail={"amount": amount.model_dump(mode="json"), "refusals": OVER_CAPTURE_REFUSALS},
        )[1]  # fmt: skip

    def _recorder(
        self, order_id: str, refund: PaymentRefund, actor: str, *, again: bool, fresh: bool,
        part: RefundPart | None = None,
    ) -> OnFailure:  # fmt: skip
        """How a failed attempt at `refund` (at its `part`, split) is recorded in the history.
        `again` (a pass that asks every few minutes): a transient failure once a call, and only
        when the refund's last entry on the order's history does not say the gateway was
        unavailable already (at the same part, split: _last_failure_at): the entry that does
        keeps when the outage began and what the gateway said; the refund stays `pending` (GET
        /orders/{id}/refunds) until an answer, which is recorded as ever. Not `fresh` (the refund
        was asked before: a refund waiting for its payment plugin is asked again by every sweep
        pass, and repeat, cancel or return step, until the plugin is back): a `no_plugin` failure
        (or a `plugin_error`: the plugin failed) only when the refund's last entry is not one already.
        A refusal is always recorded. Both are judged in the entry's write's decision, on the history
        it is conditional on (failure_recorder's `unless`): of two calls racing (the sweep and a
        return step repeated), the one whose write lands second records nothing. Any other attempt
        is recorded with no read of the history."""
        named = {"authorization": part.authorization} if part else {}
        detail = {"refund_id": refund.id, "amount": (part or refund).amount.model_dump(mode="json"), **named}
        record = failure_recorder(self._orders, order_id, actor, self._clock, **detail)
        noted_once = failure_recorder(
            self._orders, order_id, actor, self._clock,
            unless=lambda failure, entries: _last_failure_at(entries, refund.id, part) == failure.kind, **detail,
        )  # fmt: skip
        # The kinds the refund's history says once: a plugin's failure (`plugin_error`) as its absence.
        once = {"transient": again, "no_plugin": not fresh, "plugin_error": not fresh}
        met_outage = False  # whether this call met a transient failure already

        def on_failure(failure: Failure) -> None:
            nonlocal met_outage
            if not once.get(failure.kind, False):
                record(failure)  # a refusal, or an attempt this call records every time
                return
            if failure.kind == "transient":
                if met_outage:
                    return  # once a call
                met_outage = True
            noted_once(failure)

        return on_failure

    @staticmethod
    def _still_pending(order: Order, refund_id: str) -> bool:
        found = order.payment.refund_by_id(refund_id)
        return found is not None and found.status == RefundStatus.PENDING

    @staticmethod
    def _final(order: Order, refund_id: str) -> PaymentRefund:
        found = order.payment.refund_by_id(refund_id)
        assert found is not None
        return found

    def refunds(self, order_id: str, channel: str | None = None) -> list[Refund]:
        """Every refund of the order, oldest first: appeasements, returns' and cancellations'."""
        order = visible(self._orders.get(order_id), order_id, channel)
        return [shown for refund in order.payment.refunds for shown in Refund.shown(order.id, refund)]

    def page(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Refund], str | None]:
        """Up to `limit` of the order's refunds, oldest first, after the position `cursor` names,
        and the next page's cursor (None: no more). The order holds them whole, append-only, so a
        position stays where it was; but a refund pending when a page showed it may be shown as
        two once refused in part (Refund.shown), so the cursor keeps those for the next page to
        show what went back (order_lists.growing_page). InvalidCursor for one another order's list issued."""
        order = visible(self._orders.get(order_id), order_id, channel)
        return order_lists.growing_page(
            order.payment.refunds, lambda refund: Refund.shown(order.id, refund),
            lambda refund: refund.status != RefundStatus.PENDING, order_id, "refunds", limit, cursor,
        )  # fmt: skip


def _last_failure_at(entries: list[HistoryEntry], refund_id: str, part: RefundPart | None) -> str | None:
    """The kind of the refund's last entry among `entries` (the order's history), when that is a
    failed attempt (transient, refused or no_plugin) at `part` (the authorization it names; None:
    the unsplit refund's); None otherwise. A split refund's parts are asked in turn: an outage at
    its second part after one at its first (answered since, under its key, which nothing records
    until every part is) is the second part's, and says so."""
    about = [entry for entry in entries if (entry.detail or {}).get("refund_id") == refund_id]
    if not about or about[-1].type is not OrderEvent.PAYMENT_REFUND_FAILED:
        return None
    if about[-1].detail.get("authorization") != (part.authorization if part else None):
        return None
    return about[-1].detail["kind"]


def _refuse_while_settling(order: Order) -> None:
    """A new appeasement is refused (409 `settlement_refund_pending`, naming it) while a
    cancellation refund of what the captures hold beyond the order's total is `pending`: the
    gateway's answer to it is not known, so the appeasement could be taken neither as giving that
    back (it may have gone back already) nor as goodwill on top (the customer would have the amount
    twice once it succeeds, as when a person gives back what they were told was left to them,
    OverCapturesNotRefundedAlarm, while a later cancel's refund of it waits for the gateway). The
    pending-refund pass, a repeat of the cancel or a ship or delivery answers it; then the
    appeasement is taken as ever. A rare path: the typical order has no cancellation refund."""
    pending = next(
        (r for r in order.payment.refunds if r.kind == "cancellation" and r.status == RefundStatus.PENDING), None
    )
    if pending is None:
        return
    amount = f"{pending.amount.amount} {pending.amount.currency}"
    raise Conflict(
        f"the refund {pending.id} of {amount} captured beyond the order's total after units were cancelled is still"
        " waiting for the payment gateway's answer: an appeasement now could give the customer that money twice;"
        f" retry once GET /orders/{order.id}/refunds shows it succeeded or failed (the reconciler asks it again"
        " every few minutes)",
        code="settlement_refund_pending",
        details=[
            {"field": "amount", "message": f"refund {pending.id} of {amount} is pending", "refund_id": pending.id}
        ],
    )


def show_refunded_in_all(
    returns: ReturnRepository, order: Order, return_id: str, at: datetime, *, elsewhere: Money | None = None
) -> None:
    """The refunded return `return_id` of `order` shows what was refunded for it in all
    (core.refunds.refunded_for_return), what it or its exchange's credit kept back, and what that
    credit gave back, refunded since it was marked included (Return.refunded_in_all); never less
    than it shows. `elsewhere`: what was refunded for it on other orders (a return of a
    replacement's units: its exchange's credit, ExchangeCredits.drawn_for_return)."""
    given = refunded_for_return(order, return_id) + (elsewhere or Money.zero(order.currency))
    for _ in range(ATTEMPTS):
        # Read consistently: a plain read just after the return's refund was marked (or after a
        # lost race) may show it received still, and what it shows would stay short for good.
        item = returns.get(return_id, consistent=True)
        if item is None or item.status is not ReturnStatus.REFUNDED or given <= item.refund:
            return
        try:
            returns.update(item.refunded_in_all(given, at=at), item)
        except StaleVersion:
            continue
        return


def returns_shown(orders: OrderRepository, order: Order, return_ids: Iterable[str], at: datetime) -> Order:
    """`order` once the returns `return_ids`, shown what went back for them on it, are no longer
    recorded as owing that show (Order.returns_to_show): nothing is written for an order that
    records none of them. Not cleared when a refund was answered since `order` was read (what they
    were shown may be short of it): the record stays, for the kept-back pass to show it again."""
    shown = [return_id for return_id in return_ids if return_id in order.returns_to_show]
    if not shown:
        return order
    return modify(
        orders, order.id,
        lambda current: current.returns_shown(shown, at=at)
        if current.payment.refunds == order.payment.refunds else None,
    )  # fmt: skip


def returns_shown_short(
    order: Order, returns: ReturnRepository, drawn_for_return: Callable[[Order, str], Money] | None = None
) -> list[str]:
    """The refunded returns of `order` that may show less than went back for them on it, for an
    order an earlier version wrote before a gateway's answer recorded the returns owing that show
    (Order.returns_to_show): one whose function died between the answer and the show left the
    return short for good. Those whose refunds `order` records (named, or an exchange's: what its
    credit kept back and gave back) and which show less than refunded_for_return; of a replacement,
    each refunded return of its units that shows less than its own refunds and what its exchange's
    credit refunded for it on the orders up the chain (`drawn_for_return`:
    ExchangeCredits.drawn_for_return; without it, every one, the kept-back pass showing each
    exactly, so a second run would mark them all again). Each is read consistently: an
    operator's one-off command (infra/backfill_orders.py), never a request's path."""
    named = dict.fromkeys([*(r.return_id for r in order.payment.refunds if r.return_id), *order.exchanges])
    short = []
    for return_id in named:
        item = returns.get(return_id, consistent=True)
        if item is None or item.status is not ReturnStatus.REFUNDED:
            continue  # not refunded yet: its own refund step shows it all when it marks it
        given = refunded_for_return(order, return_id)
        if order.exchange_credit is not None and return_id not in order.exchanges:
            if drawn_for_return is None:
                short.append(return_id)
                continue
            given += drawn_for_return(order, return_id)
        if item.refund < given:
            short.append(return_id)
    return short


def owed_when_finished(order: Order, besides: str) -> list[str]:
    """The returns of `order` but `besides` that would show what went back for them once its
    pending refunds are finished (Returns._finish_pending): those the refunds name, and, for one
    naming no return (what an exchange's credit kept back, or an appeasement), the exchanges'
    returns whose credit kept something back (kept_back_owed). Empty once none is pending."""
    pending = [r for r in order.payment.refunds if r.status == RefundStatus.PENDING and r.return_id != besides]
    shown = [r.return_id for r in pending if r.return_id]
    if any(r.return_id is None for r in pending):
        shown += [owed.return_id for owed in kept_back_owed(order) if owed.names is None and owed.return_id != besides]
    return list(dict.fromkeys(shown))


def show_owed(
    returns: ReturnRepository, orders: OrderRepository, item: Return, at: datetime, *,
    order: Order | None = None, finished: Iterable[str] = (),
) -> Return:  # fmt: skip
    """`item` once the returns its step finished the pending refunds of (Return.shows_owed), and
    `finished` (those the caller's own step has just finished: another reader may have cleared the
    record meanwhile), show what was refunded for them in all (show_refunded_in_all, on `order` or
    the order read consistently). The record is cleared of each, but of one whose refund is still
    pending on that order (owed_when_finished): a reader that shows it before the step finishing
    its refund has (the reconciler's returns pass, a concurrent run) leaves it for a show made once
    the gateway answered, so a step that dies after finishing it still leaves its record. `item`
    as it is when it owes nothing. Run again after a death anywhere in it, it shows nothing twice
    (a return never shows less than it does)."""
    finished = [return_id for return_id in finished if return_id != item.id]
    for _ in range(ATTEMPTS):
        if not item.shows_owed and not finished:
            return item
        order = order or orders.get(item.order_id, consistent=True)
        if order is None:
            return item
        pending = set(owed_when_finished(order, item.id))
        for return_id in dict.fromkeys([*item.shows_owed, *finished]):
            if return_id not in pending:
                show_refunded_in_all(returns, order, return_id, at)
        kept = [return_id for return_id in item.shows_owed if return_id in pending]
        if kept == item.shows_owed:
            return item
        new = item.owed_shown(kept)
        try:
            returns.update(new, item)
        except StaleVersion:
            # Read consistently: a plain read may predate the record of a moment ago.
            found = returns.get(item.id, consistent=True)
            if found is None:
                return item
            item, order = found, None
            continue
        return new
    return item


class SweepIncomplete(Exception):
    """A pending-refund pass went on past orders whose refunds it could not finish for a reason
    other than an unavailable gateway (a plugin's error, no plugin for the order's method): those
    orders' errors (`failed`, by order id), and what the pass finished all the same (`finished`).
    The caller reports both, then fails, so the errors alarm calls a person."""

    def __init__(self, finished: list[str], failed: dict[str, Exception]):
        super().__init__(f"the pending refunds of {len(failed)} order(s) could not be finished: {sorted(failed)}")
        self.finished = finished
        self.failed = failed


class PendingRefundSweep:
    """Refunds a request left `pending` (its function died after writing it, before or after the
    gateway answered, or the gateway stayed unavailable): found through an index of the orders
    that have one, and asked of the gateway again under their own key, which it answers without
    refunding twice; recorded `succeeded` or `failed` as it answers. Without this, an appeasement
    made without an Idempotency-Key could never be finished: nobody would repeat its key, and it
    would hold its amount (and hide money the gateway gave) for good. Only refunds begun more than
    `after` ago are taken: a younger one is still in its request's hands.

    A gateway found unavailable is not asked again in the same pass: the orders paid through it
    stay pending for the next pass and are read past, up to `max_reads` orders a pass, so orders
    left pending through another gateway are not stuck behind them, and a pass through an outage
    does not spend the function's time on retries the outage refuses."""

    def __init__(
        self, pending: PendingRefunds, refunds: RefundService, clock: Callable[[], datetime], *,
        after: timedelta, limit: int = 100, max_reads: int = 1000,
    ):  # fmt: skip
        self._pending = pending
        self._refunds = refunds
        self._clock = clock
        self._after = after
        self._limit = limit
        self._max_reads = max_reads

    def run(
        self, actor: str, *, orders: list[str] | None = None, order_of: dict[str, str] | None = None,
        time_up: TimeUp = never,
    ) -> list[str]:  # fmt: skip
        """One pass: the ids of the refunds it finished (of at most `limit` orders asked, oldest
        first, among at most `max_reads` read). An order whose gateway is unavailable keeps its
        refund pending for the next pass. One that fails otherwise does not stop the pass, so the
        orders behind it are not kept pending by it every pass: the pass raises SweepIncomplete
        once it is done. `orders`: the ids of the orders a refund of which the gateway answered
        are added to it (the kept-back pass after it takes them: KeptBackSweep.run). `order_of`:
        each refund it finished is added to it with its order's id (so the caller's report of it
        names the order). Once `time_up` says so, no other order is asked: their refunds stay
        pending for the next pass."""
        begun_before = self._clock() - self._after
        finished: list[str] = []
        down: set[str] = set()
        failed: dict[str, Exception] = {}
        asked = 0
        for order_id in islice(self._pending.pending_since_before(begun_before), self._max_reads):
            if time_up():
                break
            try:
                with calls_about(order_id=order_id):
                    done = self._refunds.finish_pending(
                        order_id, actor, begun_before=begun_before, down=down, unshown=True
                    )
            except PaymentGatewayUnavailable:
                asked += 1  # its gateway is down: its refunds, and its method's, wait for the next pass
            except Exception as error:  # reported once the pass is done (SweepIncomplete)
                failed[order_id] = error
                asked += 1
            else:
                asked += bool(done)  # nothing done: its method was down, or nothing of it was due
                answered = [refund.id for refund in done if refund.status != RefundStatus.PENDING]
                finished += answered
                if answered and orders is not None:
                    orders.append(order_id)
                if order_of is not None:
                    order_of.update(dict.fromkeys(answered, order_id))
            if asked == self._limit:
                break
        if failed:
            raise SweepIncomplete(finished, failed)
        return finished


@dataclass
class KeptBackRefunded:
    """What a kept-back pass did: the refunds of what returns kept back the gateway approved
    (`refunded`, ids), the orders whose such refund it refused (`refused`), those of them it has
    now refused KEPT_BACK_REFUSALS times, left to a person (`given_up`), and the orders that failed
    otherwise (`failed`, by order id). Apart, what cancels of units owed back
    (Order.settlement_owed): the settlement refunds approved (`owed_back_refunded`, ids) and the
    orders whose settlement refund was refused (`owed_back_refused`; one refused
    OVER_CAPTURE_REFUSALS times has its own call to a person: OverCapturesNotRefundedAlarm). And
    what else the pass finished that no refund of the order shows: the orders whose owed release
    of the units a cancel freed it did (`stock_released`: Order.stock_owed cleared), and those
    whose owed settlement it finished (`owed_back_settled`: Order.settlement_owed cleared, a
    replacement's credit given back on its original order among it). Of each order in `failed`,
    what it owed (`failed_owing`: OWED_STOCK, OWED_SETTLEMENT, OWED_KEPT_BACK, OWED_SHOW), so the
    failure is reported as what it was. And the orders the pass found their gateway down on (it
    stayed down through a settlement's retries, or left a refund pending), with what each still
    owes (`gateway_down`): one a method and pass, the method's later orders not asked; nothing
    moved, and the next pass asks again. The order of each refund in `refunded` and
    `owed_back_refunded` (`order_of`, by refund id), so a report of it names the order."""

    refunded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)
    owed_back_refunded: list[str] = field(default_factory=list)
    owed_back_refused: list[str] = field(default_factory=list)
    stock_released: list[str] = field(default_factory=list)
    owed_back_settled: list[str] = field(default_factory=list)
    failed_owing: dict[str, list[str]] = field(default_factory=dict)
    gateway_down: dict[str, list[str]] = field(default_factory=dict)
    # The parcels carriers reported delivered whose reports' functions died before finishing them
    # (Order.reported_to_finish), by order id: shipped and delivered now (`reported_finished`), and
    # those whose capture the gateway refused, left to a person (`reported_given_up`).
    reported_finished: dict[str, list[str]] = field(default_factory=dict)
    reported_given_up: dict[str, list[str]] = field(default_factory=dict)
    order_of: dict[str, str] = field(default_factory=dict)


# What an order the kept-back pass failed on owed (KeptBackRefunded.failed_owing), in the order the
# pass does it: the units a cancel of units freed released, what a cancel of units or a last parcel
# owed back settled, what returns kept back refunded, what went back shown on its returns.
OWED_STOCK, OWED_SETTLEMENT, OWED_KEPT_BACK, OWED_SHOW = "stock", "settlement", "kept_back", "show"
OWED_REPORTED = "reported_delivered"


def _owing(order: Order, finished: bool) -> list[str]:
    """What `order` owed when the kept-back pass failed on it (read in memory)."""
    owed = [
        (OWED_REPORTED, bool(order.reported_to_finish())),
        (OWED_STOCK, order.stock_owed), (OWED_SETTLEMENT, order.settlement_owed),
        (OWED_KEPT_BACK, owes_kept_back(order) or (finished and bool(kept_back_owed(order)))),
        (OWED_SHOW, bool(order.returns_to_show)),
    ]  # fmt: skip
    return [name for name, owes in owed if owes]


def _reported(order_id: str, reported: list[str], after: Order, done: KeptBackRefunded) -> None:
    """Of the parcels of `reported` (Order.reported_to_finish before `top_up`), those `after` shows
    delivered (`reported_finished`) and those given up (`reported_given_up`)."""
    finished = [s for s in reported if after.shipment(s).status is ShipmentStatus.DELIVERED]
    given_up = [s for s in reported if (mark := after.reported(s)) is not None and mark.given_up]
    if finished:
        done.reported_finished[order_id] = finished
    if given_up:
        done.reported_given_up[order_id] = given_up


class KeptBackNotRefunded(Exception):
    """A kept-back pass left orders to a person: refused KEPT_BACK_REFUSALS times, or failed for
    another reason (a plugin's error, no plugin for the order's method). Raised by the caller once
    it has reported them and done the rest, so the errors alarm calls a person."""

    def __init__(self, done: KeptBackRefunded):
        left = sorted({*done.given_up, *done.failed})
        super().__init__(f"the kept-back pass left what {len(left)} order(s) owed unfinished: {left}")
        self.done = done


class KeptBackSweep:
    """What returns kept back (PaymentRefund.kept_back, Order.returns_kept_back), refunded by the
    reconciler once the captures make it refundable and nothing else will: the next ship, delivery
    or cancel of units refunds it (UnitCancellation.refund_kept_back), but after the last one
    nobody asks again, when that refund was refused or the gateway was down, when the return's own
    refund was still pending then, or when the keep-back was written after it. Found through an
    index of the orders that owe one (KeptBackRefunds: core.refunds.owes_kept_back), and refunded
    by `top_up` (refund_kept_back: decided on the order as written, under the same keys, so a pass
    racing a ship, or repeated, refunds once). Only orders unchanged for `after` are taken: a
    younger one is still in its request's hands; but for those whose refund the reconciler's own
    pending-refund pass has just finished (a return's refund pending when the last parcel left, its
    kept_back known only now), which would otherwise wait `after` more for the change that pass made.
    A gateway that leaves a refund pending, or stays down for a settlement's capture or void
    (`top_up` raising PaymentGatewayUnavailable: nothing moved, the order left for the next pass),
    is asked no more in the pass (the pending refund pass finishes a refund), but the units a
    cancel of units freed are still released on the orders of its method that owe that
    (Order.stock_owed: `release_stock`, no gateway's call), and those of them that owe the gateway
    nothing else but their returns' show (Order.returns_to_show) are shown it (`top_up` asks the
    gateway nothing then); so are they when no payment plugin takes the method (NoPaymentPlugin,
    which marks it down as well); at most `limit` orders are asked, of
    at most `max_reads` read. An order a cancel
    of units left owing money back (Order.settlement_owed: its function died before giving it, or
    the gateway refused or was down) is in the same index and handed to `top_up` as one owing,
    which gives it first (UnitCancellation.settle_owed); what it refunds or the gateway refuses of
    that is counted apart (KeptBackRefunded.owed_back_*), not as what a return kept back. So is an
    order not held with a parcel a carrier reported delivered whose report's function died after
    marking it (Order.reported_to_finish), which `top_up` ships and delivers before anything else
    (OrderActions.finish_reported; KeptBackRefunded.reported_*)."""

    def __init__(
        self, owed: KeptBackRefunds, orders: OrderRepository, top_up: Callable[[Order, str], Order],
        clock: Callable[[], datetime], *, release_stock: Callable[[Order], Order], after: timedelta,
        limit: int = 100, max_reads: int = 1000, outage: Callable[[Exception], bool] = dependency_down,
    ):  # fmt: skip
        self._outage = outage  # whether a read's error says a dependency is down (not the order's own)
        self._owed = owed
        self._orders = orders
        self._top_up = top_up
        self._release_stock = release_stock
        self._clock = clock
        self._after = after
        self._limit = limit
        self._max_reads = max_reads

    def run(self, actor: str, *, finished: Iterable[str] = (), time_up: TimeUp = never) -> KeptBackRefunded:
        """One pass. An order that fails does not stop it: the caller reports `failed`. `finished`:
        the orders whose refunds the pending-refund pass before it finished (PendingRefundSweep.run's
        `orders`), taken first, however recently they changed; one of them that owes nothing more
        but kept something back is handed to `top_up` all the same, which asks nothing then but
        shows its returns what went back for them: the refund that pass finished may have been of
        what a return kept back, and nothing else would show it. So is any order whose returns owe
        that show (Order.returns_to_show: in the index until shown, should the run that finished
        their refund have died before this pass, or a ship before it showed its own). Once
        `time_up` says so, the pass asks the gateway no more: of `finished` it only shows those (no
        ask), and reads no other order; those owing still are in the index for the next pass."""
        done = KeptBackRefunded()
        down: set[str] = set()
        asked = 0
        owed = islice(self._owed.owed_since_before(self._clock() - self._after), self._max_reads)
        finished = list(finished)
        just_finished = set(finished)
        seen: set[str] = set()
        for order_id in chain(finished, owed):  # read lazily: the index is paged only as far as asked
            if order_id in seen:
                continue
            if order_id not in just_finished and time_up():
                break
            seen.add(order_id)
            with calls_about(order_id=order_id):  # a plugin's failure on it names it (`plugin raised`)
                try:
                    order = self._orders.get(order_id, consistent=True)
                except Exception as error:  # any: the order's own (a record that no longer reads), unless
                    if self._outage(error):  # it says a dependency is down: each read after it would fail alike
                        raise
                    # Read past, reported once the pass is done: it stays the oldest owing, so a pass it
                    # stopped would stop there every run.
                    done.failed[order_id] = error
                    continue
                if order is None:
                    continue
                if order.payment.method in down:
                    # Its gateway is asked no more this pass; what needs none is still done: the units
                    # a cancel of units freed are not left reserved for no one until it is back, nor a
                    # return showing less than went back for it (with a payment plugin out of the
                    # deployment, for as long as it is out). What it owes the gateway waits.
                    if order.stock_owed and not time_up():
                        order = self._release(order, done)
                    if order.stock_owed or order.settlement_owed or owes_kept_back(order) or order.reported_to_finish():
                        continue
                reported = order.reported_to_finish()
                if not owes_kept_back(order) and not order.settlement_owed and not order.stock_owed and not reported:
                    if (order_id in finished and kept_back_owed(order)) or order.returns_to_show:
                        try:
                            self._top_up(order, actor)
                        except Exception as error:  # reported once the pass is done
                            self._failed(order, error, order_id in just_finished, done)
                    continue
                if time_up():
                    continue  # one of `finished`: it owes, so it is in the index, for the next pass to ask
                asked += 1
                try:
                    after = self._top_up(order, actor)
                except PaymentGatewayUnavailable:
                    # Down for a settlement's refund, capture or void (its retries made): nothing moved,
                    # the order stays in the index, and its method's gateway is asked no more this pass.
                    down.add(order.payment.method)
                    after = self._orders.get(order_id, consistent=True) or order
                    done.gateway_down[order_id] = _owing(after, order_id in just_finished) or [OWED_SETTLEMENT]
                except NoPaymentPlugin as error:
                    # No plugin takes its method (nobody asked the gateway): reported, and none of the
                    # method's other orders asked this pass, each only to be answered so, in the place
                    # of another method's order.
                    down.add(order.payment.method)
                    after = self._failed(order, error, order_id in just_finished, done)
                except Exception as error:  # reported once the pass is done
                    after = self._failed(order, error, order_id in just_finished, done)
                _reported(order_id, reported, after, done)
                if order.stock_owed and not after.stock_owed:
                    done.stock_released.append(order_id)
                if order.settlement_owed and not after.settlement_owed:
                    done.owed_back_settled.append(order_id)
                before = {refund.id: refund.status for refund in order.payment.refunds}
                new = [refund for refund in after.payment.refunds if before.get(refund.id) != refund.status]
                owed_back = [refund for refund in new if refund.kind == "cancellation"]
                kept_back = [refund for refund in new if refund.kind != "cancellation"]
                done.owed_back_refunded += [
                    refund.id for refund in owed_back if refund.status == RefundStatus.SUCCEEDED
                ]
                done.refunded += [refund.id for refund in kept_back if refund.status == RefundStatus.SUCCEEDED]
                done.order_of.update((refund.id, order_id) for refund in new if refund.status == RefundStatus.SUCCEEDED)
                if any(refund.status == RefundStatus.PENDING for refund in new):
                    down.add(order.payment.method)
                    done.gateway_down[order_id] = _owing(after, order_id in just_finished) or _owing(order, True)
                if any(refund.status == RefundStatus.FAILED for refund in owed_back):
                    done.owed_back_refused.append(order_id)
                if any(refund.status == RefundStatus.FAILED for refund in kept_back):
                    done.refused.append(order_id)
                    if owes_kept_back(after, refusals=None) and not owes_kept_back(after):
                        done.given_up.append(order_id)
            if asked == self._limit:
                break
        return done

    def _failed(self, order: Order, error: Exception, finished: bool, done: KeptBackRefunded) -> Order:
        """`top_up` raised on `order` (a plugin's error, no plugin for its method, a table down):
        reported with what the order still owed then, first what it failed on (its steps run in
        that order: _owing), read again, as those before it may be done; what was read before it
        when that read fails too. Returns the order as read."""
        try:
            current = self._orders.get(order.id, consistent=True) or order
        except Exception:  # any: the failure is reported all the same
            current = order
        done.failed[order.id] = error
        done.failed_owing[order.id] = _owing(current, finished) or _owing(order, finished)
        return current

    def _release(self, order: Order, done: KeptBackRefunded) -> Order:
        """Only the units a cancel of units freed and its function died before releasing
        (Order.stock_owed: `release_stock`), for an order whose gateway is down: the rest it owes
        stays in the index for a later pass. Returns the order as it then is (as read when the
        release failed)."""
        try:
            after = self._release_stock(order)
        except Exception as error:  # reported once the pass is done
            done.failed[order.id] = error
            done.failed_owing[order.id] = [OWED_STOCK]
            return order
        if not after.stock_owed:
            done.stock_released.append(order.id)
        return after
