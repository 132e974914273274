"""An exchange that did not go ahead: the credit its replacement carried is refunded on the original order."""

from __future__ import annotations

from core.models import Order
from core.money import Money
from core.ports import ReturnRepository
from core.refund_service import RefundService
from core.refunds import Refund, refund_id_for
from core.status import OrderStatus

# Statuses a replacement ends in without having shipped a unit: its credit paid for nothing.
_NOT_GONE_AHEAD = frozenset({OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED})


class ExchangeCredits:
    """An exchange's credit is the returned units' refund, kept as captured on the original order to
    pay for the replacement (Returns.exchange). A replacement that is cancelled, or whose payment
    of the difference fails, used none of it: `give_back` refunds it on the original, as the
    return's refund it stood for (kind `return`, the return's id), less what the exchange already
    refunded there (the credit beyond the replacement's total).

    Called by the cancel's clean-up and the workflow's FailPayment step after the replacement's
    write; each call is idempotent: the refund's key is the replacement's and the attempt (refunds
    of it the gateway refused), so a repeat finds it, finishes it while pending and asks again
    under a new key once refused."""

    def __init__(self, returns: ReturnRepository, refunds: RefundService):
        self._returns = returns
        self._refunds = refunds

    def give_back(self, replacement: Order, actor: str) -> Refund | None:
        """Refund the unused credit of `replacement` (a no-op for any other order, or one still
        going ahead). PaymentGatewayUnavailable while the gateway stays down (the refund stays
        pending; the next call asks again); the Refund, `succeeded` or `failed`, otherwise."""
        credit = replacement.exchange_credit
        if replacement.exchange_of is None or credit is None or replacement.status not in _NOT_GONE_AHEAD:
            return None
        item = self._returns.get(replacement.exchange_of)
        if item is None:
            return None
        reason = f"exchange {replacement.id} did not go ahead"

        def decide(original: Order) -> tuple[str, Money] | None:
            mine = [r for r in original.payment.refunds if r.return_id == item.id]
            attempt = sum(1 for r in mine if r.status == "failed" and r.reason == reason)
            key = f"{replacement.id}:credit#{attempt}"
            if original.payment.refund_by_id(refund_id_for(original.id, key)) is not None:
                return key, credit  # carried on with the amount it was written with
            given = Money.zero(original.currency)
            for refund in mine:
                if refund.status != "failed":
                    given = given + refund.amount
            left = min(credit - given, original.payment.refundable(), key=lambda money: money.amount)
            return (key, left) if left.amount > 0 else None

        return self._refunds.issue_decided_refund(
            item.order_id, decide, reason, actor, kind="return", return_id=item.id
        )
