"""The reconciler's passes: each finishes one kind of work other functions left undone, and logs and counts it.

Each pass takes the run (Run: the services, the invocation, what the passes did and failed on) and
its deadline (core/deadline.py), asked before each order or return it starts. A pass reports what
it did even when it failed outright: the logs and metrics the runbooks name are written here, one
line per order (or return, import, parcel), one count per kind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.authorization_sweep import Settled, SettleIncomplete
from core.capture_sweep import CapturesNotSettled, CapturesSettled
from core.deadline import Deadline, TimeUp
from core.import_recount import ImportsNotRecounted, Recounted
from core.log_text import escape_for_log
from core.models import utc_now
from core.notifications import NotificationsNotRetried, Retried
from core.pickups import PickupsExpired, PickupsNotExpired
from core.reconciliation import OrdersNotReconciled, Reconciled
from core.refund_service import (
    OWED_KEPT_BACK,
    OWED_REPORTED,
    OWED_SETTLEMENT,
    OWED_SHOW,
    OWED_STOCK,
    KeptBackNotRefunded,
    KeptBackRefunded,
    SweepIncomplete,
)
from core.return_reconciliation import ReturnsNotReconciled
from core.services import ShortCountsFinished
from functions.bootstrap import WarmContainer
from functions.captures_report import report as report_captures
from functions.failure_logs import failure_logged

logger = Logger(child=True)
# powertools keeps one metric set for every Metrics instance: what these count, the handler's
# prints (after each pass, and at the end of the run).
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
ACTOR = "reconciler"
T = TypeVar("T")
# A pass, and each order or return within one, is not started with less than this left of the
# function's timeout: ended by the timeout, the run would log, count and raise nothing of what the
# pass and the passes before it did, and the next run would find the same backlog. The passes left
# wait for the runs that start with them; what a pass cut short did not start, for its next run.
PASS_RESERVE_MILLIS = 15_000
# What the kept-back pass logs of an order it failed on (a plugin's error, no plugin, a table down),
# by what the order owed first when it failed (KeptBackRefunded.failed_owing).
NOT_DONE = {
    OWED_REPORTED: "parcel a carrier reported delivered not shipped and delivered",
    OWED_STOCK: "units a cancel of units freed not released",
    OWED_SETTLEMENT: "what a cancel of units or a last parcel owed back not settled",
    OWED_KEPT_BACK: "refund of what a return kept back not made",
    OWED_SHOW: "what went back not shown on the order's returns",
}
# The run's answer: what its passes did, by kind.
ANSWER = (
    "restarted", "parked", "expired", "pickups_held", "returns_restarted", "refunds_finished",
    "kept_back_refunded", "authorizations_settled", "captures_settled", "ships_held", "ships_unconfirmed",
    "stock_takes_finished", "notifications_sent", "notifications_abandoned", "notifications_withdrawn",
)  # fmt: skip


@dataclass
class Run:
    """One run of the reconciler: the services and the invocation its passes run in, and what they
    did and failed on, which the handler answers and raises."""

    container: WarmContainer
    context: Any  # the invocation's Lambda context: the time left of it
    # A pass that fails outright (a throttle outlasting botocore's retries, a bug) is logged and
    # the passes after it still run: one table's throttling must not stop refunds, voids and pickup
    # expiry everywhere. The first such failure is raised once all have run (ReconcilerErrorsAlarm).
    failures: list[Exception] = field(default_factory=list)
    # A pass that went on past orders it could not settle, by pass: raised before those failures.
    incomplete: dict[str, Exception] = field(default_factory=dict)
    answer: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in ANSWER})

    def isolated(self, name: str, work: Callable[[], T], nothing: T) -> T:
        """What `work` returns, or `nothing` once the pass `name` failed outright."""
        try:
            return work()
        except Exception as error:  # any: the other passes must still run
            self.failed_outright(name, error)
            return nothing

    def failed_outright(self, name: str, error: Exception) -> None:
        logger.exception("reconciler pass failed: the next run does it again", extra={"pass": name})
        self.failures.append(error)


# A line log_each writes is located at its caller, as functions/failure_logs.py's.
_CALLER = 3


def log_each(log: Callable[..., None], message: str, key: str, values: Iterable[Any]) -> None:
    """`message` logged by `log` (a level of the logger) once for each of `values`, as `key`."""
    for value in values:
        log(message, extra={key: value}, stacklevel=_CALLER)


def stalled_orders(run: Run, time_up: Deadline) -> None:
    """Starts again the workflow of orders stuck pending or authorized, or backordered with every
    unit reserved, and parks those stuck too long for that (core/reconciliation.py)."""
    # Filled as the pass goes: what it restarted and parked before failing outright is reported too.
    done = Reconciled()
    run.isolated("stalled orders", lambda: run.container().reconciler.run(done, time_up=time_up), done)
    log_each(logger.warning, "order workflow restarted: the order was stuck", "order_id", done.restarted)
    log_each(logger.warning, "order parked on hold: stuck though its workflow was restarted", "order_id", done.parked)
    if done.restarted:
        metrics.add_metric(name="OrderWorkflowsRestarted", unit=MetricUnit.Count, value=len(done.restarted))
    if done.parked:
        # The same metric the ParkOrder task emits: OrdersParkedAlarm covers both.
        metrics.add_metric(name="OrdersParked", unit=MetricUnit.Count, value=len(done.parked))
    for order_id, failure in done.failed.items():
        failure_logged(logger, "stalled order not reconciled: its own work failed, the next pass tries it again",
                       failure, order_id=order_id)  # fmt: skip
    if done.failed:
        metrics.add_metric(name="OrdersNotReconciled", unit=MetricUnit.Count, value=len(done.failed))
        run.incomplete["stalled orders"] = OrdersNotReconciled(done)
    run.answer.update(restarted=done.restarted, parked=done.parked)


def pickup_expiry(run: Run, time_up: Deadline) -> None:
    """Cancels pickups nobody collected in time (core/pickups.py), not while a plugin failed to load."""
    broken = run.container().plugins.broken
    # Filled as the pass goes: what it expired before failing outright is reported too.
    pickups = PickupsExpired()
    if broken:
        # An expiry cancels and voids: while a plugin failed to load no hook runs, so it would cancel
        # an order whose authorization it cannot void. The pickups wait, ready, for a pass after it loads.
        logger.error("pickup expiry skipped: a plugin failed to load", extra={"plugins": [p.name for p in broken]})
    else:
        run.isolated("pickup expiry", lambda: run.container().pickup_expiry.run(pickups, time_up=time_up), pickups)
    expired = pickups.expired
    log_each(logger.info, "pickup expired: cancelled, its units back on hand", "order_id", expired)
    log_each(logger.info, "pickup past its deadline left alone: the order is on hold", "order_id", pickups.held)
    if expired:
        metrics.add_metric(name="PickupsExpired", unit=MetricUnit.Count, value=len(expired))
    for order_id, failure in pickups.failed.items():
        if order_id in expired:  # cancelled: no pass reads it again
            failure_logged(logger, "pickup expired, its clean-up failed: the cancel's own execution finishes it",
                           failure, order_id=order_id)  # fmt: skip
        else:
            failure_logged(logger, "pickup not expired: its own work failed, the next pass tries it again",
                           failure, order_id=order_id)  # fmt: skip
    if pickups.failed:
        metrics.add_metric(name="PickupsNotExpired", unit=MetricUnit.Count, value=len(pickups.failed))
        run.incomplete["pickup expiry"] = PickupsNotExpired(pickups)
    run.answer.update(expired=expired, pickups_held=pickups.held)


def returns(run: Run, time_up: Deadline) -> None:
    """Starts the returns workflow of received returns that have none (core/return_reconciliation.py)."""
    reconciler = None
    try:
        reconciler = run.container().return_reconciler
        returns_restarted = reconciler.run(time_up=time_up)
    except ReturnsNotReconciled as error:
        returns_restarted = error.restarted
        for return_id, failure in error.failed.items():
            failure_logged(logger, "return not reconciled: its own work failed, the next pass tries it again",
                           failure, return_id=return_id)  # fmt: skip
        if error.failed:
            metrics.add_metric(name="ReturnsNotReconciled", unit=MetricUnit.Count, value=len(error.failed))
        if error.outage is not None:
            run.failed_outright("returns", error)  # a dependency down: the pass stopped there
        else:
            run.incomplete["returns"] = error
    except Exception as error:  # any: the other passes must still run
        returns_restarted = []
        run.failed_outright("returns", error)
    log_each(logger.warning, "returns workflow restarted: the return was received and never settled", "return_id",
             returns_restarted)  # fmt: skip
    if reconciler is not None:
        log_each(logger.warning, "stuck return marked refunded: its refund succeeded since", "return_id",
                 reconciler.marked_refunded)  # fmt: skip
        log_each(logger.warning, "stuck return's workflow started again: it stopped midway, nothing refused",
                 "return_id", reconciler.stuck_started)  # fmt: skip
    if returns_restarted:
        metrics.add_metric(name="ReturnWorkflowsRestarted", unit=MetricUnit.Count, value=len(returns_restarted))
    run.answer.update(returns_restarted=returns_restarted)


def carrier_work(run: Run, time_up: Deadline) -> None:
    """Books again the parcels a cancel of units left due a label, and cancels with their carrier
    the bookings no parcel will use (core/carrier_bookings.py)."""
    carriers = run.isolated("carrier work", lambda: run.container().carrier_work_sweep.run(ACTOR, time_up=time_up), {})
    for order_id, work in carriers.items():
        for shipment_id in work.relabelled:
            logger.warning("parcel booked again for what it now holds: a cancel of units left it due a label",
                           extra={"order_id": order_id, "shipment_id": shipment_id})  # fmt: skip
        for booking in work.settled:
            logger.info("given-up carrier booking settled with its carrier",
                        extra={"order_id": order_id, "shipment_id": booking.shipment_id})  # fmt: skip
        for failure in work.failed:
            logger.warning("carrier work still owed: the carrier failed again, the next pass retries",
                           extra={"order_id": order_id, "failure": escape_for_log(failure)})  # fmt: skip
    for name, count in (
        ("ParcelsRelabelled", sum(len(work.relabelled) for work in carriers.values())),
        ("CarrierBookingsSettled", sum(len(work.settled) for work in carriers.values())),
        ("CarrierWorkFailed", sum(len(work.failed) for work in carriers.values())),
    ):
        if count:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)


def refunds(run: Run, time_up: Deadline) -> None:
    """Finishes refunds a request left pending at the gateway (core/refund_service.py's
    PendingRefundSweep), then refunds what returns kept back once nothing else will (its
    KeptBackSweep, which first ships and delivers a parcel a carrier reported delivered whose
    report's function died before its ship: Order.reported_to_finish). One turn, as the second
    takes the orders the first just finished a refund of."""
    answered: list[str] = []  # the orders it finished a refund of: what their returns kept back is refunded now
    order_of: dict[str, str] = {}  # the order of each refund it finished, for its line
    try:
        refunds_finished = run.container().pending_refund_sweep.run(
            ACTOR, orders=answered, order_of=order_of, time_up=time_up
        )
    except SweepIncomplete as error:
        refunds_finished, run.incomplete["pending refunds"] = error.finished, error
        for order_id, failure in error.failed.items():
            failure_logged(logger, "pending refund not finished", failure, order_id=order_id)
    except Exception as error:  # any: the other passes must still run
        refunds_finished = []
        run.failed_outright("pending refunds", error)
    for refund_id in refunds_finished:
        logger.warning("refund left pending by its request finished",
                       extra={"order_id": order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
    if refunds_finished:
        metrics.add_metric(name="PendingRefundsFinished", unit=MetricUnit.Count, value=len(refunds_finished))
    kept_back = run.isolated(
        "kept back",
        lambda: run.container().kept_back_sweep.run(ACTOR, finished=answered, time_up=time_up),
        KeptBackRefunded(),
    )
    for refund_id in kept_back.refunded:
        logger.warning("what a return kept back refunded",
                       extra={"order_id": kept_back.order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
    log_each(logger.warning, "refund of what a return kept back refused", "order_id", kept_back.refused)
    log_each(logger.error, "refund of what a return kept back refused again: left to a person", "order_id",
             kept_back.given_up)  # fmt: skip
    for order_id, failure in kept_back.failed.items():
        # Named for what the order owed: first what the pass failed on (a plugin raising, not refusing).
        owed = kept_back.failed_owing.get(order_id) or [OWED_KEPT_BACK]
        failure_logged(logger, NOT_DONE[owed[0]], failure, order_id=order_id, owed=owed)
    # What cancels of units owed back (Order.settlement_owed), which the same pass gives: named apart.
    for refund_id in kept_back.owed_back_refunded:
        logger.warning("what a cancel of units owed back refunded",
                       extra={"order_id": kept_back.order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
    log_each(logger.warning, "refund of what a cancel of units owed back refused", "order_id",
             kept_back.owed_back_refused)  # fmt: skip
    # The parcels carriers reported delivered whose reports' functions died before finishing them.
    for order_id, shipment_ids in kept_back.reported_finished.items():
        logger.warning("parcel a carrier reported delivered shipped and delivered: its report's function died",
                       extra={"order_id": order_id, "shipment_ids": shipment_ids})  # fmt: skip
    for order_id, shipment_ids in kept_back.reported_given_up.items():
        # The refusal is in the history (delivery_not_recorded: DeliveriesNotRecordedAlarm calls a person).
        logger.error("parcel a carrier reported delivered not shipped: the gateway refused its capture; "
                     "left to a person", extra={"order_id": order_id, "shipment_ids": shipment_ids})  # fmt: skip
    # What no refund of the order shows: the units a cancel freed released, what was owed back settled.
    log_each(logger.warning, "units a cancel of units freed released", "order_id", kept_back.stock_released)
    log_each(logger.warning, "what a cancel of units or a last parcel owed back settled", "order_id",
             kept_back.owed_back_settled)  # fmt: skip
    # Its payment method's gateway stayed down (or left a refund pending): as a carrier down, a
    # warning and a count, no error (nothing moved; the next pass asks again).
    for order_id, owed in kept_back.gateway_down.items():
        logger.warning("payment gateway down for what the order owes: the next pass asks again",
                       extra={"order_id": order_id, "owed": owed})  # fmt: skip
    for name, count in (
        ("KeptBackRefunded", len(kept_back.refunded)),
        ("KeptBackRefused", len(kept_back.refused)),
        ("OwedBackRefunded", len(kept_back.owed_back_refunded)),
        ("OwedBackRefused", len(kept_back.owed_back_refused)),
        ("OwedStockReleased", len(kept_back.stock_released)),
        ("OwedBackSettled", len(kept_back.owed_back_settled)),
        ("KeptBackGatewayDown", len(kept_back.gateway_down)),
        ("ReportedDeliveriesFinished", sum(len(s) for s in kept_back.reported_finished.values())),
    ):
        if count:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    if kept_back.given_up or kept_back.failed:
        run.incomplete["kept back"] = KeptBackNotRefunded(kept_back)
    run.answer.update(refunds_finished=refunds_finished, kept_back_refunded=kept_back.refunded)


def authorizations(run: Run, time_up: Deadline) -> None:
    """Voids the authorizations edits left on orders nobody changes again, and the cancelled
    orders' own the gateway could not void (core/authorization_sweep.py)."""
    unsettled = None
    try:
        settled = run.container().authorization_sweep.run(ACTOR, time_up=time_up)
    except SettleIncomplete as error:
        settled, unsettled = error.settled, error
    except Exception as error:  # any: the other passes must still run
        settled = Settled()
        run.failed_outright("authorizations", error)
    log_each(logger.warning, "authorization left by an edit settled", "order_id", settled.edits)
    log_each(logger.warning, "closed order's own authorization settled", "order_id", settled.own)
    for name, orders in (("EditAuthorizationsSettled", settled.edits), ("OwnAuthorizationsSettled", settled.own)):
        if orders:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=len(orders))
    if unsettled is not None:
        run.incomplete["authorizations"] = unsettled
        for order_id, failure in unsettled.failed.items():
            failure_logged(logger, "authorization left by an edit not settled", failure, order_id=order_id)
    run.answer.update(authorizations_settled=settled.orders)


def settlement_captures(run: Run, time_up: Deadline) -> None:
    """Records the settlement captures cancels of units asked for and never recorded, which the
    jeopardy scan never finds on an order shipped since (core/capture_sweep.py's run_settlements)."""
    failed = None
    try:
        sweep = run.container().capture_sweep
        captures = sweep.run_settlements(run.container().settlement_captures, ACTOR, time_up=time_up)
    except CapturesNotSettled as error:
        captures, failed = error.done, error
        run.incomplete["settlement captures"] = error
    except Exception as error:  # any: the report below runs on what was done
        captures = CapturesSettled(settled=[], held=[], unconfirmed=[])
        run.failed_outright("settlement captures", error)
    report_captures(captures, failed, logger, metrics)
    run.answer.update(
        captures_settled=captures.settled, ships_held=captures.held, ships_unconfirmed=captures.unconfirmed
    )


def imports(run: Run, time_up: Deadline) -> None:
    """Recounts from their line markers the imports a worker killed between marking a line and
    counting it left running short (core/import_recount.py)."""
    done = recount_imports(run.container, run.isolated, time_up)
    if done.failed:
        run.incomplete["imports"] = ImportsNotRecounted(done)


def recount_imports(container: WarmContainer, isolated: Callable[..., Any], time_up: TimeUp) -> Recounted:
    """Imports left running short by a line marked and never counted (core/import_recount.py): what
    the pass did, logged and counted."""

    done = Recounted()
    isolated("imports", lambda: container().import_recount.run(done, time_up=time_up), done)
    log_each(logger.warning, "import recounted from its line markers and completed", "import_id", done.completed)
    log_each(logger.info, "import recount cut short: the next run goes on", "import_id", done.cut_short)
    if done.completed:
        metrics.add_metric(name="ImportsRecounted", unit=MetricUnit.Count, value=len(done.completed))
    for import_id, failure in done.failed.items():
        failure_logged(logger, "import not recounted: its own recount failed, the next pass tries it again",
                       failure, import_id=import_id)  # fmt: skip
    if done.failed:
        metrics.add_metric(name="ImportsNotRecounted", unit=MetricUnit.Count, value=len(done.failed))
    return done


def stock_takes(run: Run, time_up: Deadline, *, grace: timedelta) -> None:
    """Finishes the stock takes recorded below the reserved units whose function died before their
    rejects (core/services.py's InventoryService.finish_short_counts): those counted at least `grace` ago."""
    done = ShortCountsFinished()
    before = utc_now() - grace
    run.isolated(
        "stock takes", lambda: run.container().inventory.finish_short_counts(done, before, time_up=time_up), done
    )
    for short in done.finished:
        logger.warning(
            "stock take recorded short finished: its function died before its rejects",
            extra={"sku": short.sku, "location_id": short.location_id, "counted_at": short.counted_at.isoformat()},
        )
    for short, error in done.failed.items():
        failure_logged(logger, "stock take recorded short not finished: the next pass tries it again",
                       error, sku=short.sku, location_id=short.location_id)  # fmt: skip
    if done.finished:
        metrics.add_metric(name="StockTakesFinished", unit=MetricUnit.Count, value=len(done.finished))
    if done.left:
        # No error: the next passes take them (oldest first, past any that keep failing).
        logger.warning("stock takes recorded short left to the next pass", extra={"left": done.left})
        metrics.add_metric(name="StockTakesLeft", unit=MetricUnit.Count, value=done.left)
    if done.failed:
        run.failures.append(next(iter(done.failed.values())))  # the errors alarm calls a person
    run.answer.update(stock_takes_finished=[f"{s.sku}/{s.location_id}" for s in done.finished])


def notifications(run: Run, time_up: Deadline) -> None:
    """Sends again the customer notifications the notifier plugins failed to send, and gives up
    those still unsent a day after (core/notifications.py's NotificationRetries)."""
    # Filled as the pass goes: what it sent and gave up before failing outright is reported too.
    done = Retried()

    # A plugin that hangs is waited for only until the pass's reserve (PluginWait): its attempt
    # fails, and the run ends in time to report what its passes did.
    def seconds_left() -> float:
        return (run.context.get_remaining_time_in_millis() - PASS_RESERVE_MILLIS) / 1000

    run.isolated(
        "notifications",
        lambda: run.container().notification_retries.run(done, time_up=time_up, seconds_left=seconds_left),
        done,
    )
    for retry in done.sent:
        logger.info("customer notification sent on a retry",
                    extra={"order_id": retry.order_id, "notification_id": retry.notification_id,
                           "attempts": retry.attempts})  # fmt: skip
    for retry in done.deferred:
        # The error's type alone: a plugin's words may hold a card number or a host.
        logger.warning("customer notification deferred again: the notifier failed, a later pass retries it",
                       extra={"order_id": retry.order_id, "notification_id": retry.notification_id,
                              "attempts": retry.attempts, "error": retry.error})  # fmt: skip
    for retry in done.abandoned:
        logger.error("customer notification abandoned: unsent a day after its first attempt",
                     extra={"order_id": retry.order_id, "notification_id": retry.notification_id,
                            "attempts": retry.attempts, "error": retry.error})  # fmt: skip
    for retry, why in done.refused:
        logger.error("customer notification sent, but a notifier plugin's answer is refused: recorded sent,"
                     " by ways unknown",
                     extra={"order_id": retry.order_id, "notification_id": retry.notification_id,
                            "attempts": retry.attempts, "error": why})  # fmt: skip
    for retry in done.withdrawn:
        # No person to call: sent now, it would tell the customer what their order no longer is.
        logger.info("customer notification withdrawn: its order has changed since, what it tells no longer holds",
                    extra={"order_id": retry.order_id, "notification_id": retry.notification_id,
                           "attempts": retry.attempts})  # fmt: skip
    if done.sent:
        metrics.add_metric(name="CustomerNotifications", unit=MetricUnit.Count, value=len(done.sent))
    if done.deferred:
        metrics.add_metric(name="NotificationsDeferred", unit=MetricUnit.Count, value=len(done.deferred))
    if done.abandoned:
        # NotificationsAbandonedAlarm calls a person: the customer was never told.
        metrics.add_metric(name="NotificationsAbandoned", unit=MetricUnit.Count, value=len(done.abandoned))
    for notification_id, failure in done.failed.items():
        failure_logged(logger,
                       "customer notification not retried: its own work failed, the next pass tries it again",
                       failure, notification_id=notification_id)  # fmt: skip
    if done.failed:
        metrics.add_metric(name="NotificationsNotRetried", unit=MetricUnit.Count, value=len(done.failed))
        run.incomplete["notifications"] = NotificationsNotRetried(done)
    run.answer.update(
        notifications_sent=[r.notification_id for r in done.sent],
        notifications_abandoned=[r.notification_id for r in done.abandoned],
        notifications_withdrawn=[r.notification_id for r in done.withdrawn],
    )
