"""Settle the authorizations edits left on orders nobody changes again, and the ones cancelled orders
still hold because the gateway could not void them (the reconciler's pass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice

from core.cancellation import Cancellation
from core.deadline import TimeUp, never
from core.errors import PaymentGatewayUnavailable
from core.events import OrderEvent
from core.hook_calls import calls_about
from core.models import HistoryEntry
from core.ports import OrderRepository, UnsettledAuthorizations


@dataclass
class Settled:
    """The orders a pass left with nothing to settle (`orders`, oldest first), and of them those
    whose authorizations an edit left it settled (`edits`: Order.edit_authorizations_left) and those
    whose own payment, closed (cancelled, payment_failed) and still owed, it settled (`own`:
    Order.own_void_owed, or a renewal of its authorization its cancel could not release:
    Order.renewal_left). An order that held both is in both."""

    orders: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    own: list[str] = field(default_factory=list)


class SettleIncomplete(Exception):
    """An unsettled-authorization pass went on past orders it could not settle for a reason other
    than an unavailable gateway (the gateway refused a void, a plugin's error): those orders'
    errors (`failed`, by order id), and the orders it settled all the same (`settled`). The caller
    reports both, then fails, so the errors alarm calls a person."""

    def __init__(self, settled: Settled, failed: dict[str, Exception]):
        super().__init__(f"the authorizations of {len(failed)} order(s) could not be settled: {sorted(failed)}")
        self.settled = settled
        self.failed = failed


class UnsettledAuthorizationSweep:
    """Settles what an edit left holding the customer's card on an order nobody changes again:
    the authorization an edit asked for and never recorded (Order.authorization_requested: its
    PATCH died, or the gateway declined or stayed down) and one an edit replaced whose void did not
    happen (Order.replaced_authorizations). The order's next edit, a cancel or its last parcel's
    ship settles them; an order that stalls before any of those would otherwise keep the hold until
    the gateway lets it lapse. So does a key the order gave up whose release failed before it was
    authorized, or whose authorization it could not record nor void after (an edit's that lost to a
    cancel, an overtaken renewal: Order.authorization_keys_given_up), which only a cancel asks about
    again. And so
    does a cancelled order's own authorization that the gateway, unavailable, could not void, or
    not look up under the order's own key while its payment was pending (or, on a payment_failed
    order, under an earlier key: Order.own_void_owed), or what the gateway made under a renewal of
    it that a ship asked for and died, which the cancel could not look up (Order.renewal_left): the
    cancel's execution (FailPayment) retries it for a while, and nothing after it.
    Each is settled as a cancel settles it (Cancellation.void_requested_authorization,
    void_replaced_authorizations, release_given_up_keys, void_owed, release_renewal): voided at the gateway, recorded
    only as the gateway answered, each write conditional on the order's version.

    Found through an index of the orders that hold one, by when they last changed; only an order
    last changed more than `after` ago is taken: the request is written by its PATCH, which the API
    function's timeout ends within seconds, so an older one belongs to a PATCH that is over, and a
    younger one may still be recorded by its own (settled under it, that PATCH would answer 409).

    A void the gateway refused since the order last changed is not asked again: under its key the
    gateway answers the same, and each pass would only add the refusal to the history. The pass
    that met the refusal reports it (SettleIncomplete); the next pass sets the order aside
    (UnsettledAuthorizations.set_aside), so such orders, which may never change again, do not
    gather at the oldest end of the index to be read by every pass; the order's next change lists
    it again and asks again. A
    gateway found unavailable is not asked again in the same pass: the orders paid through it wait
    for the next pass and are read past, up to `max_reads` orders a pass, `limit` of them asked.
    Given a Cancellation that records failures with core.order_changes.outage_noted_once (as the
    reconciler's is), an outage is in an order's history once, not once per attempt of every pass."""

    def __init__(
        self, unsettled: UnsettledAuthorizations, orders: OrderRepository, cancellation: Cancellation,
        clock: Callable[[], datetime], *, after: timedelta, limit: int = 100, max_reads: int = 1000,
    ):  # fmt: skip
        self._unsettled = unsettled
        self._orders = orders
        self._cancellation = cancellation
        self._clock = clock
        self._after = after
        self._limit = limit
        self._max_reads = max_reads

    def run(self, actor: str, *, time_up: TimeUp = never) -> Settled:
        """One pass: the orders it left with nothing to settle (of at most `limit` asked, oldest
        first, among at most `max_reads` read), and what of each it settled. An order whose gateway
        is unavailable waits for the next pass. One that fails otherwise does not stop the pass: it
        raises SettleIncomplete once it is done. Once `time_up` says so, no other order is read: the
        rest are the next pass's."""
        left_before = self._clock() - self._after
        settled = Settled()
        down: set[str] = set()
        failed: dict[str, Exception] = {}
        asked = 0
        for order_id in islice(self._unsettled.left_since_before(left_before), self._max_reads):
            if time_up():
                break
            try:
                with calls_about(order_id=order_id):
                    done = self._settle(order_id, actor, left_before, down)
            except PaymentGatewayUnavailable:
                asked += 1  # its gateway is down: it, and its method's orders, wait for the next pass
            except Exception as error:  # reported once the pass is done (SettleIncomplete)
                failed[order_id] = error
                asked += 1
            else:
                if done is not None:
                    asked += 1
                    edits, own = done
                    if edits or own:
                        settled.orders.append(order_id)
                    if edits:
                        settled.edits.append(order_id)
                    if own:
                        settled.own.append(order_id)
            if asked == self._limit:
                break
        if failed:
            raise SettleIncomplete(settled, failed)
        return settled

    def _settle(self, order_id: str, actor: str, left_before: datetime, down: set[str]) -> tuple[bool, bool] | None:
        """Whether the order was left with nothing to settle, as (what an edit left was settled,
        its own payment was settled): both False when something is left; None when it was not
        asked: nothing to settle, changed since `left_before` (the index lags the order), its
        gateway found down, or a void of it refused since it last changed (then only a cancelled
        order's own void still owed is asked)."""
        found = self._orders.history(order_id, consistent=True)
        if found is None:
            return None
        order, history = found
        # A refusal since it last changed leaves what an edit left to the order's next change; a
        # cancelled order's own void is asked all the same (a refusal of it ends its being owed).
        refused = _void_refused_since(history, order.last_changed)
        if not order.authorizations_left or order.last_changed >= left_before:
            return None
        if refused and not order.own_void_owed:
            # Nothing is asked of it until it changes, which may be never (a shipped order): out of
            # the index till then, so such orders never fill a pass's reads.
            self._unsettled.set_aside(order)
            return None
        if order.payment.method in down:
            return None
        edits, own = order.edit_authorizations_left, order.own_void_owed or order.renewal_left
        try:
            order = self._cancellation.void_owed(order, actor)
            if not refused:
                if order.renewal_left:
                    order = self._cancellation.release_renewal(order, actor)
                order = self._cancellation.void_requested_authorization(order, actor)
                order = self._cancellation.void_replaced_authorizations(order, actor)
                order = self._cancellation.release_given_up_keys(order, actor)
        except PaymentGatewayUnavailable:
            down.add(order.payment.method)
            raise
        if order.authorizations_left:
            return False, False
        return edits, own


def _void_refused_since(history: list[HistoryEntry], since: datetime) -> bool:
    """Whether the gateway refused a void of the order at or after `since`, or no payment plugin
    took it, or took the authorization a release asks for again to void it (`no_plugin`: asked
    every pass, it would only grow the history until the plugin is back; the order's next change
    asks again)."""
    stopping = {OrderEvent.PAYMENT_VOID_FAILED: ("refused", "no_plugin"),
                OrderEvent.PAYMENT_AUTHORIZATION_FAILED: ("no_plugin",)}  # fmt: skip
    return any(
        entry.at >= since and (entry.detail or {}).get("kind") in stopping.get(entry.type, ()) for entry in history
    )
