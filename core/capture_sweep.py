"""Settle the captures ships asked for and never recorded on orders nobody ships again (the jeopardy
scan finds them: core/jeopardy.py's Scanned.captures_left), and the settlement captures cancels of
units asked for and never recorded (the reconciler finds them through their index)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from core.cancellation import Cancellation
from core.deadline import TimeUp, never
from core.errors import PaymentGatewayUnavailable
from core.events import OrderEvent
from core.hook_calls import calls_about
from core.models import HistoryEntry, Order
from core.order_changes import modify
from core.ports import OrderRepository, SettlementCaptures
from core.status import OrderStatus, can_transition


@dataclass(frozen=True)
class CapturesSettled:
    """What one pass did, by order id: the orders it left with no capture request (`settled`: its
    own writes recorded the settlement, not another pass's running at the same time);
    those it put on hold because a ship of theirs died after asking for its capture (`held`: a
    person confirms whether the parcel left; a person's hold placed first, made a park, too); and
    those where such a ship died on an order that cannot be held (`unconfirmed`: a parcel shipped
    already, so it is partly shipped), which the caller reports for a person."""

    settled: list[str]
    held: list[str]
    unconfirmed: list[str]


class CapturesNotSettled(Exception):
    """An unrecorded capture pass went on past orders it could not settle for a reason other than
    an unavailable gateway (the gateway refused a refund, a plugin's error): those orders' errors
    (`failed`, by order id), and what it did all the same (`done`). The caller reports both, then
    fails, so the errors alarm calls a person."""

    def __init__(self, done: CapturesSettled, failed: dict[str, Exception]):
        super().__init__(f"the captures of {len(failed)} order(s) could not be settled: {sorted(failed)}")
        self.done = done
        self.failed = failed

    @property
    def held(self) -> list[str]:
        return self.done.held


class UnrecordedCaptureSweep:
    """Settles a capture a ship, a collect or a settlement asked the gateway for and never recorded
    (Order.captures_requested), on an order nobody ships, cancels or rejects again: the request
    died between the gateway's answer and the order's write, and its caller never repeated it. The
    gateway may have taken the money (the capture request says so) while the order shows it
    neither captured nor shipped, and nothing else would ever look.

    Each is settled as a cancel or a reject settles it (Cancellation.settle_capture_requests):
    asked again under its own key, which the gateway answers with the capture it made (or refuses:
    none was made). A settlement's capture is recorded: it is owed whatever happens next. A
    shipment's is refunded at once (`capture_withdrawn`, then `payment_capture_reversed`), because
    nothing says the parcel left: the ship that died may have been told nothing, and recording the
    shipment shipped would take its units out of stock and close the order on a guess, while
    recording the money alone would leave a capture that no shipment carries for every later ship,
    cancel, reject and refund to count. So the order and the gateway agree again (nothing kept),
    and the order is first put on hold (Order.hold_unfinished_ships, by the pass's actor) for a
    person to confirm whether the parcel left: released, a parcel that left is shipped again, under
    a new capture key. One a person held first keeps their hold, made a park that no hold expiry
    cancels (Order.park_for_unfinished_ships). An order that cannot be held (partly shipped already) is only settled and
    reported (`unconfirmed`). A cancelled order's cancel is finished (refunded, then voided). The
    request of a parcel its carrier reported delivered is neither settled nor held for
    (Order.captures_to_settle): the parcel left, and its ship finishes it under that request's key
    (the reconciler's kept-back pass: Order.reported_to_finish).

    Given the orders to look at: those the jeopardy scan found late with such a request standing
    (Scanned.captures_left), so finding them costs the typical order nothing; or, by the reconciler
    (run_settlements), those a settlement's request stands on, found through their index, since an
    order shipped since is never late and the scan never hands it on. Only a request whose
    order last changed (a jeopardy mark aside) more than `after` ago is settled: the request is
    written by its ship, which the API function's timeout ends within seconds, so an older one
    belongs to a ship that is over (a ship repeated meanwhile that loses to the pass answers 409,
    its capture refunded once, by key).

    A refund the gateway refused since the order last changed is not asked again: under its key the
    gateway answers the same. The pass that met the refusal reports it (CapturesNotSettled); the
    person holding the order settles it. A gateway found unavailable is not asked again in the same
    pass. Either way the order is held first (when it can be), so the scan finds it again, late for
    its hold, and hands it on again (the hold's expiry never cancels it: Hold.parked). Given a
    Cancellation that records failures with core.order_changes.outage_noted_once (as the handler's
    is), an outage is in an order's history once, not once per attempt."""

    def __init__(
        self, orders: OrderRepository, cancellation: Cancellation, clock: Callable[[], datetime], *, after: timedelta
    ):
        self._orders = orders
        self._cancellation = cancellation
        self._clock = clock
        self._after = after

    def run(
        self, order_ids: Iterable[str], actor: str, *, limit: int | None = None, time_up: TimeUp = never
    ) -> CapturesSettled:
        """One pass over `order_ids` (with `limit`, until that many were asked of the gateway: an
        order it leaves alone, its gateway found down in this pass among them, is read past). An
        order whose gateway is unavailable waits, held. One that fails otherwise does not stop the
        pass: it raises CapturesNotSettled once it is done. Once `time_up` says so, no other order
        is read: the rest are the next pass's."""
        requested_before = self._clock() - self._after
        done = CapturesSettled(settled=[], held=[], unconfirmed=[])
        down: set[str] = set()
        failed: dict[str, Exception] = {}
        asked = 0
        for order_id in order_ids:
            if (limit is not None and asked >= limit) or time_up():
                break
            try:
                with calls_about(order_id=order_id):
                    settled = self._settle(order_id, actor, requested_before, down, done)
            except PaymentGatewayUnavailable:
                asked += 1  # its gateway is down: it waits, held, for the scan to hand it on again
            except Exception as error:  # reported once the pass is done (CapturesNotSettled)
                failed[order_id] = error
                asked += 1
            else:
                asked += settled is not None
                if settled:
                    done.settled.append(order_id)
        if failed:
            raise CapturesNotSettled(done, failed)
        return done

    def run_settlements(
        self, requested: SettlementCaptures, actor: str, *, limit: int = 100, max_reads: int = 1000,
        time_up: TimeUp = never,
    ) -> CapturesSettled:  # fmt: skip
        """One pass, as `run`, over the orders a settlement capture request (no shipment) stands on
        that last changed more than `after` ago, found through their index (`requested`), oldest
        first: at most `limit` of them asked of the gateway, among at most `max_reads` read. An
        order whose gateway is unavailable keeps its request, and so its index entry, for the next
        pass; the orders paid through it are read past, so a gateway down (or a payment plugin
        removed) keeps no request through another waiting behind them."""
        before = self._clock() - self._after
        candidates = islice(requested.requested_since_before(before), max_reads)
        return self.run(candidates, actor, limit=limit, time_up=time_up)

    def _settle(
        self, order_id: str, actor: str, requested_before: datetime, down: set[str], done: CapturesSettled
    ) -> bool | None:
        """Whether this call's writes settled the order's capture requests (it recorded one, and
        none is left): False when another pass running at the same time settled them first (counted
        and reported by that one); None when the gateway was not asked: none stands (or none is
        left once it is held: another pass settled it meanwhile), it changed since
        `requested_before`, its gateway was found down (it is held all the same), or a refund of it
        was refused since it last changed."""
        reported = order_id in done.unconfirmed
        found = self._orders.history(order_id, consistent=True)
        if found is None:
            return None
        order, history = found
        if (
            not order.captures_to_settle()
            or order.last_changed >= requested_before
            or refund_refused_since(history, order.last_changed)
        ):
            return None
        written: list[Order] = []  # the versions this call's writes recorded a settlement in
        try:
            if order.status is OrderStatus.CANCELLED:
                if order.payment.method in down:
                    return None
                order = self._cancellation.settle_capture_requests(order, actor, written=written)
                order = self._cancellation.void(order, actor)  # the cancel, finished: refunded, then voided
            else:
                unfinished = _unfinished_ships(order)
                if unfinished:
                    order = self._hold(order, unfinished, actor, done)
                if order.payment.method in down or not order.captures_to_settle():
                    return None  # down; or, read again to hold it, settled by another pass meanwhile
                order = self._cancellation.settle_capture_requests(order, actor, written=written)
        except PaymentGatewayUnavailable:
            down.add(order.payment.method)
            raise
        if not written and not order.captures_to_settle():
            # Settled by another pass meanwhile, which reports the order: not counted twice.
            if not reported and order_id in done.unconfirmed:
                done.unconfirmed.remove(order_id)
            return False
        return bool(written) and not order.captures_to_settle()

    def _hold(self, order: Order, shipment_ids: list[str], actor: str, done: CapturesSettled) -> Order:
        """The order on hold for a person to confirm whether the parcels of `shipment_ids` left,
        when it can be held; reported `unconfirmed` when it cannot (partly shipped). One a person
        held first keeps their hold, made a park (Order.park_for_unfinished_ships): the capture is
        refunded all the same, and a hold the expiry could cancel would put units that may have
        left back on sale. Reported `held` only when this call's write held it (or made a person's
        hold a park): one held meanwhile by another pass running at the same time is that one's to
        report."""
        if not can_transition(order.status, OrderStatus.ON_HOLD) and not _persons_hold(order):
            if order.status is not OrderStatus.ON_HOLD and order.id not in done.unconfirmed:
                done.unconfirmed.append(order.id)
            return order
        at = self._clock()
        holding = False

        def decide(current: Order):
            nonlocal holding
            unfinished = bool(_unfinished_ships(current))
            if unfinished and _persons_hold(current):
                holding = True
                return current.park_for_unfinished_ships(shipment_ids, at=at, actor=actor)
            holding = can_transition(current.status, OrderStatus.ON_HOLD) and unfinished
            return current.hold_unfinished_ships(shipment_ids, at=at, actor=actor) if holding else None

        held = modify(self._orders, order.id, decide)
        if holding:
            done.held.append(order.id)
        return held


def _persons_hold(order: Order) -> bool:
    """Whether the order is on a hold the expiry may cancel (a person's, a review rule's), not the
    system's for a person (Hold.parked)."""
    return order.status is OrderStatus.ON_HOLD and order.hold is not None and not order.hold.parked


def _unfinished_ships(order: Order) -> list[str]:
    """The parcels whose ships died after asking for their captures that the order is held for: not
    one its carrier reported delivered (Order.captures_to_settle): it left."""
    return [r.shipment_id for r in order.captures_to_settle() if r.shipment_id is not None and not r.withdrawn]


def refund_refused_since(history: list[HistoryEntry], since: datetime) -> bool:
    """Whether the gateway refused to refund a capture of the order at or after `since`."""
    return any(
        entry.type is OrderEvent.PAYMENT_REFUND_FAILED and (entry.detail or {}).get("kind") == "refused"
        and "capture_reference" in (entry.detail or {}) and entry.at >= since
        for entry in history
    )  # fmt: skip
