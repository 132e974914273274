"""Refunds through the payment plugin: held on the order first, asked once per key, recorded as the gateway answered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from core import order_lists, payment_keys
from core.errors import Conflict, PaymentGatewayUnavailable, PaymentRefused
from core.models import Order, PaymentRefund, RefundedUnits, RefundKind
from core.money import Money
from core.order_changes import failure_recorder, modify, visible
from core.payments import Payments
from core.ports import OrderRepository, PendingRefunds
from core.refunds import Refund, refund_id_for

# What a decided refund is (RefundService.issue_decided_refund): its idempotency key and amount,
# and for a return's refund what it gives back for each line's units and what of it is shipping.
Decision = tuple[str, Money] | tuple[str, Money, list[RefundedUnits]] | tuple[str, Money, list[RefundedUnits], Money]


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
    (503 in the API, a Retry in the returns workflow) with the refund still pending."""

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
    ) -> Refund:
        """Refund `amount` of what was captured, once per `idempotency_key` on this order.
        RefundExceedsCaptured (422) beyond captured minus refunded; InvalidTransition (409) when
        nothing was captured; the Refund, `succeeded` or `failed`, once the gateway answered.
        With `same_request` (a client's key), a refund found under the key for another amount or
        reason is Conflict (409 `idempotency_key_reused`), before the gateway is asked: the
        client's request is not the one that key stands for."""
        begun = self._begin(
            order_id, lambda order: (idempotency_key, amount), reason, actor,
            kind=kind or ("return" if return_id else "appeasement"), return_id=return_id, channel=channel,
        )  # fmt: skip
        assert begun is not None  # the amount is given: there is always a refund
        order, refund = begun
        if same_request and (refund.amount != amount or refund.reason != reason):
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )
        if refund.status != "pending":
            return Refund.of(order_id, refund)
        return Refund.of(order_id, self._ask_gateway(order, refund, actor))

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
        gateway answered; None when there was nothing to refund."""
        begun = self._begin(order_id, decide, reason, actor, kind=kind, return_id=return_id)
        if begun is None:
            return None
        order, refund = begun
        if refund.status != "pending":
            return Refund.of(order_id, refund)
        return Refund.of(order_id, self._ask_gateway(order, refund, actor))

    def _begin(
        self, order_id: str, decide: Callable[[Order], Decision | None], reason: str, actor: str,
        *, kind: RefundKind, return_id: str | None, channel: str | None = None,
    ) -> tuple[Order, PaymentRefund] | None:  # fmt: skip
        """The refund `decide` names, written `pending` on the order unless one is there under its
        key already; with the order as then stored. None when `decide` found nothing to refund."""
        at = self._clock()
        decided: list[str] = []

        def begin(order: Order):
            decided.clear()
            answer = decide(order)
            if answer is None:
                return None
            idempotency_key, amount, *returned = answer
            refund_id = refund_id_for(order_id, idempotency_key)
            decided.append(refund_id)
            if order.payment.refund_by_id(refund_id) is not None:
                return None
            return order.begin_refund(
                refund_id, amount, reason=reason, kind=kind, return_id=return_id,
                lines=returned[0] if returned else None, shipping=returned[1] if len(returned) > 1 else None,
                at=at, actor=actor,
            )  # fmt: skip

        order = modify(self._orders, order_id, begin, channel=channel)
        if not decided:
            return None
        refund = order.payment.refund_by_id(decided[0])
        assert refund is not None
        return order, refund

    def finish_pending(
        self, order_id: str, actor: str, *, besides_return: str | None = None, begun_before: datetime | None = None
    ) -> list[Refund]:
        """Ask the gateway again for every refund of the order still `pending` (under its own
        key), whatever key it was issued with, but those of return `besides_return` (its own step
        finishes them) and, with `begun_before`, those begun since (still in their request's
        hands); PaymentGatewayUnavailable while it stays down."""
        order = visible(self._orders.get(order_id), order_id, None)
        pending = [
            refund for refund in order.payment.refunds
            if refund.status == "pending" and (besides_return is None or refund.return_id != besides_return)
            and (begun_before is None or refund.at < begun_before)
        ]  # fmt: skip
        return [Refund.of(order_id, self._ask_gateway(order, refund, actor)) for refund in pending]

    def _ask_gateway(self, order: Order, refund: PaymentRefund, actor: str) -> PaymentRefund:
        payment = order.payment
        authorization = payment.authorization or ""
        key = payment_keys.refund(order.id, refund.id)
        recorder = failure_recorder(
            self._orders,
            order.id,
            actor,
            self._clock,
            refund_id=refund.id,
            amount=refund.amount.model_dump(mode="json"),
        )
        try:
            result = self._payments.retried(
                "refund",
                lambda attempt: self._payments.refund(payment.method, authorization, refund.amount, order.id, key),
                recorder,
            )
        except PaymentRefused as refused:
            message, at = refused.gateway_message, self._clock()
            done = modify(
                self._orders, order.id,
                lambda current: current.record_failed_refund(refund.id, None, message, at=at, actor=actor)
                if self._still_pending(current, refund.id) else None,
            )  # fmt: skip
            return self._final(done, refund.id)
        at = self._clock()
        done = modify(
            self._orders, order.id,
            lambda current: current.record_refund(refund.id, result.reference, at=at, actor=actor)
            if self._still_pending(current, refund.id) else None,
        )  # fmt: skip
        return self._final(done, refund.id)

    @staticmethod
    def _still_pending(order: Order, refund_id: str) -> bool:
        found = order.payment.refund_by_id(refund_id)
        return found is not None and found.status == "pending"

    @staticmethod
    def _final(order: Order, refund_id: str) -> PaymentRefund:
        found = order.payment.refund_by_id(refund_id)
        assert found is not None
        return found

    def refunds(self, order_id: str, channel: str | None = None) -> list[Refund]:
        """Every refund of the order, oldest first: appeasements, returns' and cancellations'."""
        order = visible(self._orders.get(order_id), order_id, channel)
        return [Refund.of(order.id, refund) for refund in order.payment.refunds]

    def page(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Refund], str | None]:
        """Up to `limit` of the order's refunds, oldest first, after the position `cursor` names,
        and the next page's cursor (None: no more). The order holds them whole, append-only, so a
        position stays where it was; InvalidCursor for one another order's list issued."""
        return order_lists.page(self.refunds(order_id, channel), order_id, "refunds", limit, cursor)


class PendingRefundSweep:
    """Refunds a request left `pending` (its function died after writing it, before or after the
    gateway answered, or the gateway stayed unavailable): found through an index of the orders
    that have one, and asked of the gateway again under their own key, which it answers without
    refunding twice; recorded `succeeded` or `failed` as it answers. Without this, an appeasement
    made without an Idempotency-Key could never be finished: nobody would repeat its key, and it
    would hold its amount (and hide money the gateway gave) for good. Only refunds begun more than
    `after` ago are taken: a younger one is still in its request's hands."""

    def __init__(
        self, pending: PendingRefunds, refunds: RefundService, clock: Callable[[], datetime], *,
        after: timedelta, limit: int = 100,
    ):  # fmt: skip
        self._pending = pending
        self._refunds = refunds
        self._clock = clock
        self._after = after
        self._limit = limit

    def run(self, actor: str) -> list[str]:
        """One pass: the ids of the refunds it finished (at most `limit` orders, oldest first). An
        order whose gateway is still unavailable keeps its refund pending for the next pass."""
        begun_before = self._clock() - self._after
        finished: list[str] = []
        for order_id in self._pending.pending_since_before(begun_before, self._limit):
            try:
                done = self._refunds.finish_pending(order_id, actor, begun_before=begun_before)
            except PaymentGatewayUnavailable:
                continue
            finished += [refund.id for refund in done if refund.status != "pending"]
        return finished
