"""Jeopardy: a deadline per order status (OMS_SLA); the scheduled scan marks orders past theirs,
cancels orders held longer than allowed (reason hold_expired; never a park or an order held to
confirm whether its parcel left, which an infrastructure failure put on and only a person ends:
Order.hold_expiry_counts_from) and returns
never received within OMS_RETURN_EXPIRY_DAYS of their approval, or of their request while not
approved (reason return_expired, core/returns.py's Returns.expire).

The scan never reads the Orders table whole: the LateOrders port answers, through an index, which
unmarked orders entered a status before a moment (functions/adapters/dynamodb.py: the status
index, judged on when the deadline of the order's status starts counting: when it entered the
status, or, for a pickup waiting for its customer, its `collect_by`, or never when it has none:
Order.deadline_counts_from).
Each candidate is read and judged again before one conditional write, so an order that moved on
meanwhile is left alone, and a repeated scan marks nothing twice. A mark stands until the order
leaves its status, but for a deadline lengthened since (OMS_SLA deployed anew): the marked orders no
longer late by it are found through the late orders' index (LateOrders.marked_since_after) and
unmarked the same way (Order.clear_jeopardy), so they leave the list and the alarm's count.
Holds to expire come from an index keyed on when each hold began, parks left out
(LateOrders.held_since_before): the held longest come first, so no order placed long ago and held
recently, nor any park, stands before them, and `limit` of them are read a pass. Expired returns
are found much as late orders are, through the Returns table's status index (UnreceivedReturns):
those created before the moment are a superset of those approved before it, and each is judged
again (on its approval) on its own conditional write. Returns requested long ago but approved
recently stay at the oldest end of that range, so a pass reads on past them (up to `max_reads` per
status, its read budget) to reach the expired ones behind them.

A late order on which a capture its ship (or a cancel's settlement) asked the gateway for stands
unrecorded (Order.captures_to_settle: not a parcel's its carrier reported delivered, which its
ship finishes, so such an order is marked as any other) is handed on unmarked (Scanned.captures_left): that request
died and nobody repeated it, since the order sat past its deadline, and the scheduled handler
settles it (core/capture_sweep.py). Left unmarked, the order is found again by the next pass until
it is settled (a pass that died before settling it, a gateway down for an order that cannot be
held), then marked like any late order. The scan reads those orders to mark them anyway, so
finding them costs the typical order nothing: no index entry per shipment. An order marked late
before its ship died is found the same way: while a capture request stands on it, the index
counts it unmarked (functions/adapters/dynamodb.py), so the scan reads it again and hands it on. A request younger than
`captures_after` may belong to a ship under way, so such an order is not marked in that pass.
A partly shipped order is found the same way: its status has a deadline of its own, the allocated
one unless OMS_SLA names `partially_shipped` (parse_sla), as the parcels left wait to ship as an
allocated order's do. Still no write per shipment.

A late order whose capture request stands because the gateway refused to refund that capture (the
sweep asks it no more until the order changes) is not handed on again: it is marked late with the
request standing (Order.mark_jeopardy's `refund_refused`), so it is listed (`?jeopardy=true`) and
counted for the alarm, and, listed, no pass reads it as a candidate again until it changes
(Order.listed_late). Handed on, it took a candidate's place every pass and showed nowhere (a
partly shipped one cannot even be held). Only such an order's history is read. A mark made for such
a refusal alone (stored by the partly shipped pass of an SLA that gave that status no deadline, before
it had one by default) is found late on the status's deadline too (Order.mark_late_on_deadline).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from itertools import islice
from typing import TypeVar

from core.actors import SCAN_ACTOR
from core.capture_sweep import refund_refused_since
from core.deadline import LONGEST, TimeUp, never
from core.errors import StaleVersion, dependency_down
from core.hook_calls import calls_about
from core.models import REFUND_REFUSED_REASON, Order, utc_text
from core.order_changes import modify
from core.ports import LateOrders, OrderRepository, UnreceivedReturns
from core.status import UNRECEIVED_RETURNS, WATCHED, OrderStatus, ReturnStatus

# WATCHED (core/status.py), LONGEST (core/deadline.py) and SCAN_ACTOR (core/actors.py) are this
# scan's rules, kept where the API's cold start reads them without importing this module.
S = OrderStatus
T = TypeVar("T")
HOLD_EXPIRED = "hold_expired"
# How the reason of a late order ends when a parcel of it a carrier reported delivered is not
# recorded shipped (Order.parcels_reported): it is no warehouse's delay.
REPORTED_REASON = "; its carrier reported a parcel delivered whose ship is not recorded"
DEFAULT_SLA = "pending=5m,authorized=15m,allocated=48h,backordered=14d,on_hold=24h"
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `48h`, `14d` as a timedelta (positive, at most 100 years; ValueError otherwise)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found.group(1)) == 0:
        raise ValueError(f"{text!r} is not a positive duration such as 30s, 5m, 48h or 14d")
    duration = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    if duration > LONGEST:
        raise ValueError(f"{text!r} is longer than {LONGEST.days}d (100 years)")
    return duration


def format_duration(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_sla(text: str | None) -> dict[OrderStatus, timedelta]:
    """OMS_SLA (`status=duration,...`) over the defaults: a status not named keeps its default, and
    `partially_shipped` unnamed has the allocated deadline (the parcels left to ship wait as an
    allocated order's do), whatever OMS_SLA sets that to. ValueError names what is wrong: an unknown
    or unwatched status, a status named twice, a malformed duration."""
    deadlines = {status: deadline for status, deadline in _pairs(DEFAULT_SLA)}
    named: set[OrderStatus] = set()
    for status, deadline in _pairs(text or ""):
        if status in named:
            raise ValueError(f"OMS_SLA names {status} twice")
        named.add(status)
        deadlines[status] = deadline
    if S.PARTIALLY_SHIPPED not in named:
        deadlines[S.PARTIALLY_SHIPPED] = deadlines[S.ALLOCATED]
    return deadlines


def _pairs(text: str) -> list[tuple[OrderStatus, timedelta]]:
    pairs = []
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        name, sep, duration = (piece.strip() for piece in part.partition("="))
        if not sep:
            raise ValueError(f"OMS_SLA: {part!r} is not status=duration (e.g. allocated=48h)")
        try:
            status = OrderStatus(name)
        except ValueError:
            raise ValueError(f"OMS_SLA: {name!r} is not an order status") from None
        if status not in WATCHED:
            raise ValueError(f"OMS_SLA: {status} has no deadline (it is not a status an order waits in)")
        try:
            pairs.append((status, parse_duration(duration)))
        except ValueError as error:
            raise ValueError(f"OMS_SLA: {name}: {error}") from None
    return pairs


@dataclass
class Scanned:
    marked: list[str] = field(default_factory=list)
    # Marked orders no longer late by the deadline their status has now (OMS_SLA lengthened since).
    unmarked: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    returns_expired: list[str] = field(default_factory=list)
    # Late orders left unmarked: a capture asked of the gateway and never recorded, by a request over.
    captures_left: list[str] = field(default_factory=list)
    # Orders marked late now open, after this pass, never fewer than it marked (None: the count failed).
    in_jeopardy: int | None = 0
    # The candidates whose own work raised (a record that no longer reads, an item its table
    # refuses, a cancel's clean-up), by id: read past, judged again by the next pass.
    failed: dict[str, Exception] = field(default_factory=dict)  # orders
    returns_failed: dict[str, Exception] = field(default_factory=dict)


class ScanIncomplete(Exception):
    """Parts of a pass failed outright (a table throttled past its retries), each named with its
    error (`failed`: the holds, returns <status>, late <status> or the count), or
    went on past candidates whose own work raised (`done.failed`, `done.returns_failed`); the
    other parts ran, and what all of them did is `done` (in_jeopardy None when the count failed).
    The caller reports `done` as ever, then fails, so the errors alarm calls a person."""

    def __init__(self, done: Scanned, failed: list[tuple[str, Exception]]):
        names = ", ".join(f"{name} ({type(error).__name__}: {error})" for name, error in failed)
        passed = ", ".join(
            f"{key} ({type(error).__name__}: {error})" for key, error in {**done.failed, **done.returns_failed}.items()
        )
        super().__init__(f"jeopardy scan parts failed: {names or 'none'}; candidates read past: {passed or 'none'}")
        self.done = done
        self.failed = failed


class JeopardyScan:
    def __init__(
        self,
        late: LateOrders,
        orders: OrderRepository,
        cancel: Callable[[str, str, str], Order],
        clock: Callable[[], datetime],
        *,
        sla: dict[OrderStatus, timedelta],
        hold_expiry: timedelta | None = None,
        unreceived: UnreceivedReturns | None = None,
        expire_return: Callable[[str, datetime, str], bool] | None = None,
        return_expiry: timedelta | None = None,
        captures_after: timedelta = timedelta(minutes=15),
        limit: int = 100,
        max_reads: int = 1000,
        outage: Callable[[Exception], bool] = dependency_down,
    ):
        self._late = late
        self._orders = orders
        self._cancel = cancel  # OrderActions.cancel: releases the stock, voids the authorization
        self._clock = clock
        self._sla = sla
        self._hold_expiry = hold_expiry
        self._unreceived = unreceived
        self._expire_return = expire_return  # Returns.expire: re-judges and cancels, conditionally
        self._return_expiry = return_expiry
        # How long an unrecorded capture request stands before its request is surely over.
        self._captures_after = captures_after
        self._limit = limit
        self._max_reads = max_reads  # orders and returns judged per status and pass, each one read
        self._outage = outage  # whether an error says a dependency is down (not the candidate's own)

    def run(self, *, expire_holds: bool = True, time_up: TimeUp = never, turn: int = 0) -> Scanned:
        """One pass: at most `limit` orders marked (or handed on, or failed on) per status and
        `limit` returns expired per status (of at most `max_reads` judged each), and `limit` holds
        expired (held longest first), oldest first; the rest are the next pass's. Without
        `expire_holds` (a plugin failed to load: an expiry's cancel could not void the
        authorization) the holds wait for a later pass.

        Once `time_up` says so, the pass reads no other page of candidates and starts no other
        order or return (what it started it finishes); it still counts the late orders. What it
        did not reach stays in its index, as it was, for the next pass. The pass's parts (the
        holds, the returns of each status, the orders of each status) are
        taken in turn from the `turn`-th (the caller's run number): each run starts with the next
        part, so a backlog that fills a run in one part keeps none of the others from its turn.

        A part that fails outright does not end the pass: the others run and the late orders are
        counted, then ScanIncomplete carries what was done and each failed part's error (a part that
        raised lost what the parts before it did from the run's report, and the count). Within a
        part, a candidate whose own work raises (a record that no longer reads) is read past, in
        `done.failed` (`done.returns_failed`): it stays the oldest of its index, so a part it
        stopped would stop there every run; a dependency found down (`outage`) ends the part."""
        now = self._clock()
        done = Scanned()
        failed: list[tuple[str, Exception]] = []
        parts = self._parts(now, done, expire_holds, time_up)
        first = turn % len(parts) if parts else 0
        for name, part in parts[first:] + parts[:first]:
            if time_up():
                break
            try:
                part()
            except Exception as error:  # any: the other parts must still run, and what they did be reported
                failed.append((name, error))
        try:
            # Never fewer than this pass marked: the count reads an index (eventually consistent)
            # that may not show those marks yet, and a zero then put off the alarm to the next run.
            done.in_jeopardy = max(self._late.count_in_jeopardy(), len(done.marked))
        except Exception as error:  # any: what the parts did is still reported
            done.in_jeopardy = None
            failed.append(("count", error))
        if failed or done.failed or done.returns_failed:
            raise ScanIncomplete(done, failed)
        return done

    def _judged(self, failures: dict[str, Exception], kind: str, key: str, judge: Callable[[], T]) -> T | None:
        """What `judge` answers of the candidate `key` (its `kind` of id: `order_id`, `return_id`,
        which a plugin's failure in it names: calls_about); None when its own work raised, the error
        then in `failures` (the part reads past it). An error saying a dependency is down ends the
        part: each candidate after it would fail alike."""
        try:
            with calls_about(**{kind: key}):
                return judge()
        except Exception as error:  # any: the candidate's own, unless it says a dependency is down
            if self._outage(error):
                raise
            failures[key] = error
            return None

    def count_ships_to_confirm(self) -> int:
        """How many orders are held now while a person is to confirm whether a parcel left after
        its ship died (LateOrders.count_ships_to_confirm): asked after the capture sweep the caller
        runs, so the orders it held this run count."""
        return self._late.count_ships_to_confirm()

    def _parts(
        self, now: datetime, done: Scanned, expire_holds: bool, time_up: TimeUp
    ) -> list[tuple[str, Callable[[], None]]]:
        """The pass's parts by name, each filling `done` with what it did and starting no order or
        return once `time_up` says so."""
        parts: list[tuple[str, Callable[[], None]]] = []
        if self._hold_expiry is not None and expire_holds:
            held_before = now - self._hold_expiry

            def holds() -> None:
                for order_id in _while(self._late.held_since_before(held_before, self._limit), time_up):
                    self._judged(done.failed, "order_id", order_id, partial(self._expire, order_id, held_before, done))

            parts.append(("holds", holds))
        if self._return_expiry is not None and self._unreceived is not None and self._expire_return is not None:
            started_before = now - self._return_expiry
            for status in sorted(UNRECEIVED_RETURNS):

                def returns(status: ReturnStatus = status) -> None:
                    assert self._unreceived is not None and self._expire_return is not None
                    expired = 0
                    candidates = islice(self._unreceived.created_before(status, started_before), self._max_reads)
                    expire = self._expire_return
                    for return_id in _while(candidates, time_up):
                        if self._judged(
                            done.returns_failed,
                            "return_id",
                            return_id,
                            partial(expire, return_id, started_before, SCAN_ACTOR),
                        ):
                            done.returns_expired.append(return_id)
                            expired += 1
                            if expired == self._limit:
                                break

                parts.append((f"returns {status.value}", returns))
        for status in sorted(self._sla):

            def marks(status: OrderStatus = status) -> None:
                deadline = self._sla[status]
                # Up to `max_reads` candidates for `limit` late ones (or failed): the index may answer
                # orders not late yet (authorized lately: the pending and authorized orders share a
                # partition that says neither status nor when it began), which took the pass's places.
                taken = 0
                candidates = self._late.unmarked_since_before(status, now - deadline, self._max_reads)
                for order_id in _while(candidates, time_up):
                    raised: dict[str, Exception] = {}
                    marked = self._judged(raised, "order_id", order_id, partial(self._mark, order_id, status, deadline))
                    done.failed.update(raised)
                    if marked is not None:
                        (done.marked if marked.listed_late else done.captures_left).append(order_id)
                    elif not raised:
                        continue  # not late (yet), or moved on since the index was read: read past it
                    taken += 1
                    if taken == self._limit:
                        break

            parts.append((f"late {status.value}", marks))
        # A mark stands until the order leaves its status; a deadline lengthened since (OMS_SLA
        # deployed anew, the runbook's fix for deadlines wrong for the business) would leave orders
        # no longer late listed and counted, the alarm on, until each moved on.
        after = {status: now - deadline for status, deadline in self._sla.items()}

        def unmarks() -> None:
            for order_id in _while(self._late.marked_since_after(after, self._limit), time_up):
                if self._judged(done.failed, "order_id", order_id, partial(self._unmark, order_id)):
                    done.unmarked.append(order_id)

        parts.append(("unmark", unmarks))
        return parts

    def _mark(self, order_id: str, status: OrderStatus, deadline: timedelta) -> Order | None:
        """The order as marked; None when it is not (not late, or it kept changing). A late order
        with a capture request standing is returned unmarked: it is handed on (captures_left),
        and marked by a later pass once the sweep has settled it. Marked now, no pass would find
        it again, so a sweep that never ran (the function died first) or could not ask the
        gateway for an order it cannot hold would leave that capture unrecorded for good."""
        at = self._clock()
        marked = False

        def decide(order: Order):
            nonlocal marked
            # Judged again on the order itself: it may have moved on, or been marked by a
            # concurrent scan, since the index was read. One whose capture request is young may
            # have its ship under way: the next pass judges it, that request recorded or over.
            # One marked already is read again once a ship of it asks its capture (the index leaves
            # out its mark meanwhile): that ship may have died since, the money taken. Not for the
            # request of a parcel its carrier reported delivered: the kept-back pass finishes it, and
            # the order is late like any other meanwhile (Order.captures_to_settle).
            left = order.captures_to_settle()
            since = order.deadline_counts_from
            marked = (
                order.status is status and (order.jeopardy is None or bool(left))
                and since is not None and since + deadline <= at
                and not (left and order.last_changed > at - self._captures_after)
            )  # fmt: skip
            if not marked:
                return None
            if left:
                if order.jeopardy is not None and order.jeopardy_for_refund and not order.jeopardy_on_deadline:
                    # Marked for a refused refund alone (stored by the partly shipped pass of an
                    # SLA that gave the status no deadline): late on its own deadline too, the mark
                    # outlives the refund.
                    return order.mark_late_on_deadline()
                # Listed already (marked for a refund the gateway refused: an index that had not
                # caught up with the mark answered it): nothing to mark, nothing to hand on.
                marked = not order.listed_late
                return None
            reason = f"{status} for longer than {format_duration(deadline)}"
            if since != order.in_status_since:
                reason += " past its pickup's collect_by"
            reported = order.parcels_reported()
            if reported:
                # Not a location slow to ship: the parcel left, its capture refused or not asked yet
                # (its report's function died; the reconciler's kept-back pass finishes it).
                reason += f"{REPORTED_REASON} ({', '.join(reported)})"
            return order.mark_jeopardy(reason, since + deadline, at=at, actor=SCAN_ACTOR)

        try:
            order = modify(self._orders, order_id, decide)
        except StaleVersion:
            return None  # it kept changing: the next pass judges it again
        if not marked:
            return None
        if order.captures_to_settle():
            return self._mark_refund_refused(order_id, status, deadline) or order
        return order

    def _unmark(self, order_id: str) -> bool:
        """Whether this call cleared the order's mark: marked for its status, listed (no capture
        request standing but one for a person: Order.listed_late), not for a refund the gateway
        refused (a person settles it), and no longer late by the deadline its status has now."""
        at = self._clock()
        cleared = False

        def decide(order: Order):
            nonlocal cleared
            deadline, since = self._sla.get(order.status), order.deadline_counts_from
            cleared = (
                order.jeopardy is not None and order.jeopardy.status is order.status and order.listed_late
                and not order.jeopardy_for_refund and deadline is not None
                and (since is None or since + deadline > at)
            )  # fmt: skip
            if not cleared:
                return None
            assert deadline is not None
            reason = f"not past the deadline of {order.status} now ({format_duration(deadline)})"
            return order.clear_jeopardy(reason, at=at, actor=SCAN_ACTOR)

        try:
            modify(self._orders, order_id, decide)
        except StaleVersion:
            return False  # it kept changing: the next pass judges it again
        return cleared

    def _mark_refund_refused(self, order_id: str, status: OrderStatus, deadline: timedelta) -> Order | None:
        """The order as marked for a person (listed late: Order.listed_late) when the capture request
        standing on it stands because the gateway refused to refund that capture since the order
        last changed; None when it is not. The sweep asks that refund no more (under its key the
        gateway answers the same), so handed on every pass the order would take a candidate's place
        each pass and show nowhere (a partly shipped one cannot even be held). Marked, it is listed
        and counted for the alarm, and no candidate until it changes: a change since (a person's)
        makes it one again, and the sweep asks again. Reads its history: only an order with such a
        request standing, past its deadline, comes here. Once the refund is made the order is still
        late and keeps its mark (Order.jeopardy_on_deadline)."""
        found = self._orders.history(order_id, consistent=True)
        if found is None:
            return None
        seen, history = found
        if seen.listed_late or not seen.captures_to_settle() or not refund_refused_since(history, seen.last_changed):
            return None
        at = self._clock()
        marked = False

        def decide(order: Order):
            nonlocal marked
            since = order.deadline_counts_from
            marked = order.version == seen.version and order.status is status and since is not None
            if not marked:
                return None  # changed since its history was read: the next pass judges it again
            assert since is not None
            reason = f"{status} for longer than {format_duration(deadline)}{REFUND_REFUSED_REASON}"
            return order.mark_jeopardy(
                reason, since + deadline, at=at, actor=SCAN_ACTOR, refund_refused=True, on_deadline=True
            )

        try:
            order = modify(self._orders, order_id, decide)
        except StaleVersion:
            return None
        return order if marked else None

    def _expire(self, order_id: str, held_before: datetime, done: Scanned) -> None:
        """Cancel the order held since before `held_before` (in `done.expired` once this write
        cancelled it, before its clean-up, which may raise)."""
        at = self._clock()
        expired = False

        def decide(order: Order):
            # Conditional on the order read: a release that lands first wins, and this re-reads
            # and leaves the released order alone.
            # The system's hold for an infrastructure failure (a park, a parcel to confirm) never
            # expires: it waits for a person, and only a business outcome cancels a paid order.
            nonlocal expired
            since = order.hold_expiry_counts_from
            expired = since is not None and since <= held_before
            if not expired:
                return None
            return order.cancel(
                HOLD_EXPIRED, at=at, actor=SCAN_ACTOR, detail={"held_since": utc_text(order.in_status_since)}
            )

        try:
            modify(self._orders, order_id, decide)
        except StaleVersion:
            return
        if expired:
            done.expired.append(order_id)
            # Recorded; now the clean-up every cancel does (release the stock, void the
            # authorization), which finds the order cancelled already and only finishes it. Should
            # this Lambda die first, or the clean-up keep losing its writes to another change of
            # the order, no pass finds the order again: the execution the cancel's stream record
            # starts finishes it (functions/outbox, CancelOrder). A lost race is no reason to stop
            # the pass: the holds and marks after this one are as due.
            with contextlib.suppress(StaleVersion):
                self._cancel(order_id, HOLD_EXPIRED, SCAN_ACTOR)


def _while(candidates: Iterable[T], time_up: TimeUp) -> Iterator[T]:
    """The candidates, each taken only while `time_up` says there is time: a lazy index (read a
    page at a time as they are taken) reads no other page once it says not. Candidates already
    read (a list) are asked about only while one is left, so a part that ended with its last is
    not told its time is up (the run would say it was cut short with nothing left undone)."""
    if isinstance(candidates, Sequence):
        for candidate in candidates:
            if time_up():
                return
            yield candidate
        return
    taken = iter(candidates)
    while not time_up():
        try:
            candidate = next(taken)
        except StopIteration:
            return
        yield candidate
