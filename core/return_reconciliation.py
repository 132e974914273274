"""Received returns whose workflow never ran to its end: started again, until it ends or a person has it.

POST /returns/{id}/receive records the receipt, then starts the returns workflow. A function that
dies between the two (or a start Step Functions refused) leaves the return `received` with no
execution: its units are back, but nothing restocks, counts or refunds them unless the client
repeats the receipt. Every few minutes the reconciler looks (through the Returns table's by_receipt
index, never a scan) for returns still `received` well after their receipt (an Express execution
ends within five minutes: one that finished refunded the return, one that failed recorded
`return_stuck` on the order's history for a person) and starts their workflow again. That is safe
however often it happens: every step reads what is stored and skips what is done (a restock is
keyed by return and line, a refund by return and attempt), so an execution that finds its work
done does nothing. A return whose step died between finishing the pending refunds of the order's
other returns and showing them what went back (Return.shows_owed) has them show it first, stuck
or not. A return whose workflow recorded it stuck after its receipt is left to the
person the alarm called (receiving it again resumes it): restarting it every pass would ask a
refused refund again and again. But for one stuck for want of its payment plugin (the last failed
attempt at its refund before it was stuck was `no_plugin`), which no person can settle through the
API: it is started again once a payment plugin takes the order's method again, and not before (a
pass without the plugin would only record another failed refund).
Nor is one whose refund succeeded since it was stuck, nothing of it pending (the pending-refund
pass made what a gateway outage or a failing payment plugin left pending): nothing is left to ask
the gateway, so the pass marks it refunded as its step would (Returns.refund, or an exchange's
Returns.exchange, which finds its replacement and the rest of its credit refunded: the same
transition, conditional on status and version, its event sent by that write), once; but not an
exchange of a replacement's units (its mark may draw on the earlier credit: a refusal there,
outside any workflow, would be asked again every pass; its step stops on RefundNotDone when that
draw is refused on the earlier order). While its refund
is still pending it is set aside under its payment method, as one waiting for its plugin is (read
after the received returns), until the pending-refund pass has made it (marked then) or seen it
refused (left to the person).
Nor is a return stuck midway with no refund of it refused, failed or pending: a plain return's
Restock, RecordOnOrder or Refund step, or an exchange's Exchange step, died at the same write on
every retry or timed out (restocking it, counting it on the order, beginning its refund; deciding,
putting, recording or linking a replacement, beginning the rest of its credit's refund). Every step
skips what is done (a restock is keyed by return and line, the order counts a return once, a refund
is asked under the return's key and attempt; a replacement's id derives from the return, its put is
conditional), so the pass starts its workflow again, once its last stuck record is as old as a lost
receipt the pass starts again (restart_after: time for the throttle or outage that stopped it to
pass), and sets it aside while it runs; stuck again, the compensation's write lists it again. Once
stuck MAX_STUCK_RESTARTS + 1 times since its last change shown, it is left to the person the alarm
called.

The index (ReceivedReturns: the received returns only) finds candidates by when they were
requested (a superset of those received before the moment); each is then judged on its last change
(`updated_at`: the receipt) and its order's history. A return left to a person stays `received`,
at the oldest end of that range, for as long as the person takes: the pass that finds it so sets it
aside (out of the index until the return's next write, which lists it again), so such returns,
however many, never spend a pass's reads (`max_reads`) before a receipt lost after them. One
waiting for its payment plugin is set aside under its payment method (as many may wait as a
removed plugin's method took returns): a pass reads those, after the received returns, only for the
methods a plugin takes now, and starts them.

One return's work is its own: a return whose refresh, read or start keeps failing (a write that
keeps raising for it, a record that no longer reads) does not stop the pass; it is reported
(ReturnsNotReconciled, once the pass is done: each return named with its error) and judged again
by the next pass, and the returns behind it are reconciled all the same. An error that says a
dependency is down (`outage`: by default a TransientError or PluginUnavailable; the reconciler's
also a table throttled past botocore's retries, out of reach, answering 5xx or denying the
function's role, functions/adapters/aws_errors.py)
is no return's own: every return after it would fail alike, so the pass stops there and fails
whole (ReturnsNotReconciled with `outage`), reporting what it did before. But a plugin that
failed to load stops no pass: the one return that would ask a plugin (which methods the payment
plugins take, for a return waiting for its own) is set aside as waiting, and the pass goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import chain, islice

from core.deadline import TimeUp, never
from core.errors import PluginUnavailable, TransientError, dependency_down
from core.events import OrderEvent
from core.hook_calls import calls_about
from core.ports import OrderRepository, ReceivedReturns, ReturnRepository, ReturnWorkflowStarter
from core.reconciliation import MAX_REFUSED_STARTS
from core.refund_service import show_owed
from core.return_models import Return
from core.status import RefundStatus, ReturnStatus

# Why a received return's workflow is not started again (ReturnReconciler._stuck).
LEFT_TO_A_PERSON = "left_to_a_person"  # set aside: only its next write lists it again
WAITS_FOR_PLUGIN = "waits_for_plugin"  # set aside by method: started once a plugin takes it
REFUNDED_SINCE = "refunded_since"  # its refund succeeded since it was stuck: marked refunded
WAITS_FOR_REFUND = "waits_for_refund"  # set aside by method: its refund pending, the pending-refund pass's
STARTED_AGAIN = "started_again"  # a return stuck midway, no refund of it refused: started, then set aside
STARTS_LATER = "starts_later"  # such a return stuck within restart_after: judged again by a later pass
# How often the pass starts again the workflow of a return (plain or an exchange) stuck midway with
# no refund of it refused, failed or pending (a table, a function or a dependency failing through
# every retry): stuck once more after that, it is left to a person (each stuck execution fired
# ReturnWorkflowFailedAlarm already).
MAX_STUCK_RESTARTS = 2
REFUSED = "RefundNotDone"  # the step error of a refund the gateway refused (core.returns.RefundNotDone)


class ReturnsNotReconciled(Exception):
    """A returns pass did not do all it was to: the returns whose own work failed (`failed`, by
    return id: read past, judged again by the next pass), and, when it stopped on a dependency's
    outage (`outage`), that error; what it restarted all the same (`restarted`). The caller reports
    them, then fails, so the errors alarm calls a person."""

    def __init__(self, restarted: list[str], failed: dict[str, Exception], outage: Exception | None = None):
        said = f"{len(failed)} return(s) not reconciled: {sorted(failed)}"
        super().__init__(said if outage is None else f"{said}; the pass stopped: {type(outage).__name__}: {outage}")
        self.restarted = restarted
        self.failed = failed
        self.outage = outage


class ReturnReconciler:
    def __init__(
        self,
        candidates: ReceivedReturns,
        returns: ReturnRepository,
        orders: OrderRepository,
        starter: ReturnWorkflowStarter,
        clock: Callable[[], datetime],
        *,
        restart_after: timedelta,
        limit: int = 100,
        max_reads: int = 1000,
        payment_methods: Callable[[], set[str]] | None = None,
        outage: Callable[[Exception], bool] = dependency_down,
        mark_refunded: Callable[[str], Return] | None = None,
    ):
        if restart_after <= timedelta(minutes=5):
            # Younger than five minutes, the receipt's own execution may still be running.
            raise ValueError("restart_after must be over 5 minutes")
        self._candidates = candidates
        self._returns = returns
        self._orders = orders
        self._starter = starter
        self._clock = clock
        self._restart_after = restart_after
        self._limit = limit
        self._max_reads = max_reads  # candidates judged per pass, each one read
        # The methods the payment plugins take now (Payments.methods): None, none judged back.
        self._payment_methods = payment_methods
        self._taken: set[str] | None = None
        self._outage = outage  # whether an error says a dependency is down (not the return's own)
        # The refund step's mark of a received return whose refund succeeded (Returns.refund): None,
        # a stuck return refunded since is left to a person.
        self._mark_refunded = mark_refunded
        self.marked_refunded: list[str] = []  # the stuck returns the last pass marked refunded
        self.stuck_started: list[str] = []  # the stuck returns whose workflow the last pass started

    def run(self, *, time_up: TimeUp = never) -> list[str]:
        """One pass: the ids of the received returns whose workflow was started again, at most
        `limit` of at most `max_reads` candidates judged, oldest first; the rest, and any whose
        start failed, are the next pass's (a failed start does not stop the reconciler's other
        work; MAX_REFUSED_STARTS of them end the pass, and so does `time_up`). A return whose own
        work fails is read past; a dependency found down ends the pass: either way it raises
        ReturnsNotReconciled once it is done."""
        received_before = self._clock() - self._restart_after
        restarted: list[str] = []
        failed: dict[str, Exception] = {}
        refused = 0
        self._taken = None  # the payment methods taken, asked once a pass
        self.marked_refunded = []
        self.stuck_started = []
        candidates = chain(self._candidates.received_before(received_before), self._waited(received_before))
        for return_id in _read(islice(candidates, self._max_reads), restarted, failed):
            if time_up():
                break
            try:
                with calls_about(return_id=return_id):
                    started = self._reconcile(return_id, received_before)
            except _Refused:
                refused += 1
                if refused == MAX_REFUSED_STARTS:
                    break  # throttling or down: each refusal costs seconds, the rest are the next pass's
                continue  # Step Functions refused it now: the next pass finds it again
            except Exception as error:  # any: the return's own, unless it says a dependency is down
                if self._outage(error):
                    raise ReturnsNotReconciled(restarted, failed, error) from error
                failed[return_id] = error  # its own: the returns behind it are reconciled all the same
                continue
            if started:
                restarted.append(return_id)
                if len(restarted) == self._limit:
                    break
        if failed:
            raise ReturnsNotReconciled(restarted, failed)
        return restarted

    def _reconcile(self, return_id: str, received_before: datetime) -> bool:
        """Judge one candidate: whether its workflow was started again. _Refused when Step
        Functions refused the start (the next pass finds it again)."""
        item = self._returns.get(return_id)
        if item is None or item.status is not ReturnStatus.RECEIVED or item.updated_at > received_before:
            return False  # moved on since the index was read, or received recently enough to be running
        if item.shows_owed:
            # Its step died between finishing other returns' pending refunds and showing them,
            # and may never run again (left to a person): they show what went back now.
            item = show_owed(self._returns, self._orders, item, self._clock())
        stuck = self._stuck(item, received_before)
        if stuck is not None and stuck[0] == STARTS_LATER:
            return False  # its cause (a throttle, an outage) gets restart_after to pass, as a receipt's execution
        if stuck is not None and stuck[0] == REFUNDED_SINCE and self._mark_refunded is not None:
            # Its refund, left pending or refused when it was stuck, succeeded since (the pending-
            # refund pass): nothing is left to ask the gateway, so the refund step's mark finishes it
            # (conditional on status and version; refunded, no pass reads it again). An exchange's
            # is its Exchange step's, which finds its replacement and its refund made.
            self._mark_refunded(item.id)
            self.marked_refunded.append(item.id)
            return False
        if stuck is not None and stuck[0] == STARTED_AGAIN:
            # A return stuck midway (restocking, counting, beginning its refund; an exchange deciding,
            # putting or linking its replacement, asking the rest of its credit): every step skips
            # what is done, so its workflow finishes it. Set aside
            # once started, so the passes while it runs start no other; stuck again, its compensation
            # writes it, which lists it again, to be judged on one more stuck record.
            self._start(item)
            self.stuck_started.append(item.id)
            self._candidates.set_aside(item)
            return True
        if stuck is not None:
            reason, method = stuck
            if not item.shows_owed:
                # No later pass reads it again until it changes (or, waiting for its plugin or
                # its pending refund, until a plugin takes its method); one still owing other returns their
                # refresh stays, for the next pass to finish that.
                self._candidates.set_aside(item, waiting_for=None if reason == LEFT_TO_A_PERSON else method)
            return False
        self._start(item)
        return True

    def _start(self, item: Return) -> None:
        """Start the return's workflow; _Refused when Step Functions refused it now."""
        try:
            self._starter.start(item.id, channel=item.channel)
        except TransientError as error:
            raise _Refused(str(error)) from error

    def _waited(self, received_before: datetime) -> Iterator[str]:
        """The returns set aside as waiting for a payment plugin, of the methods a plugin takes
        now (asked only once the received returns are read); none while a plugin failed to load
        (no plugin is called then: they wait, set aside, for a pass after it loads)."""
        try:
            taken = self._methods_taken()
        except PluginUnavailable:
            return
        for method in sorted(taken):
            yield from self._candidates.waiting_for_plugin(method, received_before)

    def _stuck(self, item: Return, received_before: datetime) -> tuple[str, str] | None:
        """Whether a workflow of `item` recorded it stuck, after its receipt, on the order's
        history, and the order's payment method: LEFT_TO_A_PERSON, WAITS_FOR_PLUGIN when its
        refund waits for a payment plugin that is not back yet, WAITS_FOR_REFUND when its own
        refund is pending (the pending-refund pass's), REFUNDED_SINCE when that refund succeeded
        since (the last two only with `mark_refunded`), STARTED_AGAIN for a return stuck midway with
        no refund of it refused, failed or pending, at most MAX_STUCK_RESTARTS times (STARTS_LATER until its last stuck
        record is as old as a receipt the pass restarts: before `received_before`); None when it is
        not stuck, or waited for a plugin that is back now."""
        found = self._orders.history(item.order_id)
        if found is None:
            return None
        order, history = found
        stuck = [
            index for index, entry in enumerate(history)
            if entry.type is OrderEvent.RETURN_STUCK
            and (entry.detail or {}).get("return_id") == item.id
            and entry.at >= item.updated_at
        ]  # fmt: skip
        if not stuck:
            return None
        mine = [refund for refund in order.payment.refunds if refund.return_id == item.id]
        # A refund the gateway refused stopped it (an exchange's draw on an earlier order's credit
        # is refused on that order: the step's error says so).
        refused = (history[stuck[-1]].detail or {}).get("error") == REFUSED
        if (
            self._mark_refunded is not None
            # An exchange's mark asks nothing of the gateway but on an original that is itself a
            # replacement (it draws the rest on the earlier credit): that one's workflow marks it.
            # Any other's is marked whatever stopped it, as a plain return's is: its rest refused, then
            # its credit given back whole (its replacement cancelled), leaves nothing to ask.
            and (item.exchange is None or not order.exchange_of)
            and any(refund.status == RefundStatus.SUCCEEDED for refund in mine)
            and not any(refund.status == RefundStatus.PENDING for refund in mine)
        ):
            return REFUNDED_SINCE, order.payment.method
        refunds = {refund.id for refund in mine}
        failures = [
            entry for entry in history[: stuck[-1]]
            if entry.type is OrderEvent.PAYMENT_REFUND_FAILED and (entry.detail or {}).get("refund_id") in refunds
        ]  # fmt: skip
        method = order.payment.method
        if not (failures and (failures[-1].detail or {}).get("kind") == "no_plugin"):
            if self._mark_refunded is not None and any(r.status == RefundStatus.PENDING for r in mine):
                # Its refund, pending, is the pending-refund pass's to make or see refused: read
                # again (after the received returns) until then, it is marked or left to a person.
                return WAITS_FOR_REFUND, method
            pending = any(refund.status == RefundStatus.PENDING for refund in mine)
            if not (refused or failures or pending) and len(stuck) <= MAX_STUCK_RESTARTS:
                # Stopped midway (a plain return's restock, count or refund's record, an exchange's
                # replacement), no refund of it refused, failed or pending: its workflow finishes it.
                return (STARTED_AGAIN if history[stuck[-1]].at <= received_before else STARTS_LATER), method
            return LEFT_TO_A_PERSON, method
        try:
            taken = self._methods_taken()
        except PluginUnavailable:
            # A plugin failed to load, so no hook is called: it waits, set aside under its method,
            # as those set aside before it do (_waited), for a pass after the plugins load. No
            # other return asks a plugin: the pass goes on.
            taken = set()
        return None if method in taken else (WAITS_FOR_PLUGIN, method)

    def _methods_taken(self) -> set[str]:
        if self._payment_methods is None:
            return set()
        if self._taken is None:
            self._taken = self._payment_methods()
        return self._taken


def _read(candidates: Iterator[str], restarted: list[str], failed: dict[str, Exception]) -> Iterator[str]:
    """The candidates as the index answers them; an index that cannot be read (its table down)
    ends the pass with what it did (ReturnsNotReconciled with `outage`)."""
    while True:
        try:
            return_id = next(candidates)
        except StopIteration:
            return
        except Exception as error:  # any: the index's, no return's
            raise ReturnsNotReconciled(restarted, failed, error) from error
        yield return_id


class _Refused(TransientError):
    """Step Functions refused a start now (ReturnReconciler._reconcile)."""
