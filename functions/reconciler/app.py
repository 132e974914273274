"""Scheduled reconciler: starts again the workflow of orders stuck pending or authorized, or
backordered with every unit reserved, and parks those stuck too long for that
(core/reconciliation.py); cancels pickups nobody collected in time (core/pickups.py; not while a
plugin failed to load); starts the returns workflow of received returns that have none
(core/return_reconciliation.py); books again the parcels a cancel of units
left due a label, and cancels with their carrier the bookings no parcel will use
(core/carrier_bookings.py); finishes refunds a request left pending at the gateway
(core/refund_service.py's PendingRefundSweep), and refunds what returns kept back once nothing
else will (its KeptBackSweep, which first ships and delivers a parcel a carrier reported delivered
whose report's function died before its ship: Order.reported_to_finish); voids the authorizations
edits left on orders nobody changes again, and the cancelled orders' own the gateway could not void
(core/authorization_sweep.py); records the settlement captures cancels of units asked for and never
recorded, which the jeopardy scan never finds on an order shipped since (core/capture_sweep.py's
run_settlements); recounts from their line markers the imports a worker killed between marking a
line and counting it left running short (core/import_recount.py); finishes the stock takes recorded
below the reserved units whose function died before their rejects (core/services.py's
InventoryService.finish_short_counts); sends again the customer notifications the notifier plugins
failed to send, and gives up those still unsent a day after (core/notifications.py's
NotificationRetries). Each run starts with the next
pass in turn, and starts none without the time to run it, so a backlog in one keeps none of the
others from running for good; within a pass, no order or return is started without that time either
(core/deadline.py): a pass with a backlog stops, is reported, and leaves the rest to the next runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from aws_lambda_powertools import Metrics
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
from functions.business_metrics import emits_business_metrics
from functions.business_metrics import flush as print_business_metrics
from functions.captures_report import report as report_captures
from functions.failure_logs import failure_logged
from functions.masked_logs import function_logger
from functions.schedule import run_number

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
ACTOR = "reconciler"
T = TypeVar("T")
# A pass, and each order or return within one, is not started with less than this left of the
# function's timeout: ended by the timeout, the run would log, count and raise nothing of what the
# pass and the passes before it did, and the next run would find the same backlog. The passes left
# wait for the runs that start with them; what a pass cut short did not start, for its next run.
PASS_RESERVE_MILLIS = 15_000
# A stock take recorded short is finished by the reconciler only this long after it was counted:
# its own request (the API's 29 seconds) is over by then, dead or done.
SHORT_COUNT_GRACE = timedelta(minutes=2)
# What the kept-back pass logs of an order it failed on (a plugin's error, no plugin, a table down),
# by what the order owed first when it failed (KeptBackRefunded.failed_owing).
NOT_DONE = {
    OWED_REPORTED: "parcel a carrier reported delivered not shipped and delivered",
    OWED_STOCK: "units a cancel of units freed not released",
    OWED_SETTLEMENT: "what a cancel of units or a last parcel owed back not settled",
    OWED_KEPT_BACK: "refund of what a return kept back not made",
    OWED_SHOW: "what went back not shown on the order's returns",
}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # A pass that fails outright (a throttle outlasting botocore's retries, a bug) is logged and
    # the passes after it still run: one table's throttling must not stop refunds, voids and pickup
    # expiry everywhere. The first such failure is raised once all have run (ReconcilerErrorsAlarm).
    failures: list[Exception] = []
    # A pass that went on past orders it could not settle, by pass: raised before those failures.
    incomplete: dict[str, Exception] = {}
    answer: dict[str, list[str]] = {
        name: [] for name in (
            "restarted", "parked", "expired", "pickups_held", "returns_restarted", "refunds_finished",
            "kept_back_refunded", "authorizations_settled", "captures_settled", "ships_held", "ships_unconfirmed",
            "stock_takes_finished", "notifications_sent", "notifications_abandoned", "notifications_withdrawn",
        )
    }  # fmt: skip

    def isolated(name: str, run: Callable[[], T], nothing: T) -> T:
        try:
            return run()
        except Exception as error:  # any: the other passes must still run
            failed_outright(name, error)
            return nothing

    def failed_outright(name: str, error: Exception) -> None:
        logger.exception("reconciler pass failed: the next run does it again", extra={"pass": name})
        failures.append(error)

    def stalled_orders(time_up: Deadline) -> None:
        # Filled as the pass goes: what it restarted and parked before failing outright is reported too.
        done = Reconciled()
        isolated("stalled orders", lambda: container().reconciler.run(done, time_up=time_up), done)
        for order_id in done.restarted:
            logger.warning("order workflow restarted: the order was stuck", extra={"order_id": order_id})
        for order_id in done.parked:
            logger.warning(
                "order parked on hold: stuck though its workflow was restarted", extra={"order_id": order_id}
            )
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
            incomplete["stalled orders"] = OrdersNotReconciled(done)
        answer.update(restarted=done.restarted, parked=done.parked)

    def pickup_expiry(time_up: Deadline) -> None:
        broken = container().plugins.broken
        # Filled as the pass goes: what it expired before failing outright is reported too.
        pickups = PickupsExpired()
        if broken:
            # An expiry cancels and voids: while a plugin failed to load no hook runs, so it would cancel
            # an order whose authorization it cannot void. The pickups wait, ready, for a pass after it loads.
            logger.error("pickup expiry skipped: a plugin failed to load", extra={"plugins": [p.name for p in broken]})
        else:
            isolated("pickup expiry", lambda: container().pickup_expiry.run(pickups, time_up=time_up), pickups)
        expired = pickups.expired
        for order_id in expired:
            logger.info("pickup expired: cancelled, its units back on hand", extra={"order_id": order_id})
        for order_id in pickups.held:
            logger.info("pickup past its deadline left alone: the order is on hold", extra={"order_id": order_id})
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
            incomplete["pickup expiry"] = PickupsNotExpired(pickups)
        answer.update(expired=expired, pickups_held=pickups.held)

    def returns(time_up: Deadline) -> None:
        reconciler = None
        try:
            reconciler = container().return_reconciler
            returns_restarted = reconciler.run(time_up=time_up)
        except ReturnsNotReconciled as error:
            returns_restarted = error.restarted
            for return_id, failure in error.failed.items():
                failure_logged(logger, "return not reconciled: its own work failed, the next pass tries it again",
                               failure, return_id=return_id)  # fmt: skip
            if error.failed:
                metrics.add_metric(name="ReturnsNotReconciled", unit=MetricUnit.Count, value=len(error.failed))
            if error.outage is not None:
                failed_outright("returns", error)  # a dependency down: the pass stopped there
            else:
                incomplete["returns"] = error
        except Exception as error:  # any: the other passes must still run
            returns_restarted = []
            failed_outright("returns", error)
        for return_id in returns_restarted:
            logger.warning("returns workflow restarted: the return was received and never settled",
                           extra={"return_id": return_id})  # fmt: skip
        for return_id in reconciler.marked_refunded if reconciler is not None else []:
            logger.warning("stuck return marked refunded: its refund succeeded since", extra={"return_id": return_id})
        for return_id in reconciler.stuck_started if reconciler is not None else []:
            logger.warning("stuck return's workflow started again: it stopped midway, nothing refused",
                           extra={"return_id": return_id})  # fmt: skip
        if returns_restarted:
            metrics.add_metric(name="ReturnWorkflowsRestarted", unit=MetricUnit.Count, value=len(returns_restarted))
        answer.update(returns_restarted=returns_restarted)

    def carrier_work(time_up: Deadline) -> None:
        carriers = isolated("carrier work", lambda: container().carrier_work_sweep.run(ACTOR, time_up=time_up), {})
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

    def refunds(time_up: Deadline) -> None:
        # The pending refunds, then what returns kept back: one turn, as the second takes the
        # orders the first just finished a refund of.
        answered: list[str] = []  # the orders it finished a refund of: what their returns kept back is refunded now
        order_of: dict[str, str] = {}  # the order of each refund it finished, for its line
        try:
            refunds_finished = container().pending_refund_sweep.run(
                ACTOR, orders=answered, order_of=order_of, time_up=time_up
            )
        except SweepIncomplete as error:
            refunds_finished, incomplete["pending refunds"] = error.finished, error
            for order_id, failure in error.failed.items():
                failure_logged(logger, "pending refund not finished", failure, order_id=order_id)
        except Exception as error:  # any: the other passes must still run
            refunds_finished = []
            failed_outright("pending refunds", error)
        for refund_id in refunds_finished:
            logger.warning("refund left pending by its request finished",
                           extra={"order_id": order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
        if refunds_finished:
            metrics.add_metric(name="PendingRefundsFinished", unit=MetricUnit.Count, value=len(refunds_finished))
        kept_back = isolated(
            "kept back",
            lambda: container().kept_back_sweep.run(ACTOR, finished=answered, time_up=time_up),
            KeptBackRefunded(),
        )
        for refund_id in kept_back.refunded:
            logger.warning("what a return kept back refunded",
                           extra={"order_id": kept_back.order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
        for order_id in kept_back.refused:
            logger.warning("refund of what a return kept back refused", extra={"order_id": order_id})
        for order_id in kept_back.given_up:
            logger.error(
                "refund of what a return kept back refused again: left to a person", extra={"order_id": order_id}
            )
        for order_id, failure in kept_back.failed.items():
            # Named for what the order owed: first what the pass failed on (a plugin raising, not refusing).
            owed = kept_back.failed_owing.get(order_id) or [OWED_KEPT_BACK]
            failure_logged(logger, NOT_DONE[owed[0]], failure, order_id=order_id, owed=owed)
        # What cancels of units owed back (Order.settlement_owed), which the same pass gives: named apart.
        for refund_id in kept_back.owed_back_refunded:
            logger.warning("what a cancel of units owed back refunded",
                           extra={"order_id": kept_back.order_of.get(refund_id), "refund_id": refund_id})  # fmt: skip
        for order_id in kept_back.owed_back_refused:
            logger.warning("refund of what a cancel of units owed back refused", extra={"order_id": order_id})
        # The parcels carriers reported delivered whose reports' functions died before finishing them.
        for order_id, shipment_ids in kept_back.reported_finished.items():
            logger.warning("parcel a carrier reported delivered shipped and delivered: its report's function died",
                           extra={"order_id": order_id, "shipment_ids": shipment_ids})  # fmt: skip
        for order_id, shipment_ids in kept_back.reported_given_up.items():
            # The refusal is in the history (delivery_not_recorded: DeliveriesNotRecordedAlarm calls a person).
            logger.error("parcel a carrier reported delivered not shipped: the gateway refused its capture; "
                         "left to a person", extra={"order_id": order_id, "shipment_ids": shipment_ids})  # fmt: skip
        # What no refund of the order shows: the units a cancel freed released, what was owed back settled.
        for order_id in kept_back.stock_released:
            logger.warning("units a cancel of units freed released", extra={"order_id": order_id})
        for order_id in kept_back.owed_back_settled:
            logger.warning("what a cancel of units or a last parcel owed back settled", extra={"order_id": order_id})
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
            incomplete["kept back"] = KeptBackNotRefunded(kept_back)
        answer.update(refunds_finished=refunds_finished, kept_back_refunded=kept_back.refunded)

    def authorizations(time_up: Deadline) -> None:
        unsettled = None
        try:
            settled = container().authorization_sweep.run(ACTOR, time_up=time_up)
        except SettleIncomplete as error:
            settled, unsettled = error.settled, error
        except Exception as error:  # any: the other passes must still run
            settled = Settled()
            failed_outright("authorizations", error)
        for order_id in settled.edits:
            logger.warning("authorization left by an edit settled", extra={"order_id": order_id})
        for order_id in settled.own:
            logger.warning("closed order's own authorization settled", extra={"order_id": order_id})
        for name, orders in (("EditAuthorizationsSettled", settled.edits), ("OwnAuthorizationsSettled", settled.own)):
            if orders:
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=len(orders))
        if unsettled is not None:
            incomplete["authorizations"] = unsettled
            for order_id, failure in unsettled.failed.items():
                failure_logged(logger, "authorization left by an edit not settled", failure, order_id=order_id)
        answer.update(authorizations_settled=settled.orders)

    def settlement_captures(time_up: Deadline) -> None:
        failed = None
        try:
            sweep = container().capture_sweep
            captures = sweep.run_settlements(container().settlement_captures, ACTOR, time_up=time_up)
        except CapturesNotSettled as error:
            captures, failed = error.done, error
            incomplete["settlement captures"] = error
        except Exception as error:  # any: the report below runs on what was done
            captures = CapturesSettled(settled=[], held=[], unconfirmed=[])
            failed_outright("settlement captures", error)
        report_captures(captures, failed, logger, metrics)
        answer.update(
            captures_settled=captures.settled, ships_held=captures.held, ships_unconfirmed=captures.unconfirmed
        )

    def stock_takes(time_up: Deadline) -> None:
        done = ShortCountsFinished()
        before = utc_now() - SHORT_COUNT_GRACE
        isolated("stock takes", lambda: container().inventory.finish_short_counts(done, before, time_up=time_up), done)
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
            failures.append(next(iter(done.failed.values())))  # the errors alarm calls a person
        answer.update(stock_takes_finished=[f"{s.sku}/{s.location_id}" for s in done.finished])

    def notifications(time_up: Deadline) -> None:
        # Filled as the pass goes: what it sent and gave up before failing outright is reported too.
        done = Retried()

        # A plugin that hangs is waited for only until the pass's reserve (PluginWait): its attempt
        # fails, and the run ends in time to report what its passes did.
        def seconds_left() -> float:
            return (context.get_remaining_time_in_millis() - PASS_RESERVE_MILLIS) / 1000

        isolated(
            "notifications",
            lambda: container().notification_retries.run(done, time_up=time_up, seconds_left=seconds_left),
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
            incomplete["notifications"] = NotificationsNotRetried(done)
        answer.update(
            notifications_sent=[r.notification_id for r in done.sent],
            notifications_abandoned=[r.notification_id for r in done.abandoned],
            notifications_withdrawn=[r.notification_id for r in done.withdrawn],
        )

    def imports(time_up: Deadline) -> None:
        done = recount_imports(container, isolated, time_up)
        if done.failed:
            incomplete["imports"] = ImportsNotRecounted(done)

    passes = [
        ("stalled orders", stalled_orders), ("pickup expiry", pickup_expiry), ("returns", returns),
        ("carrier work", carrier_work), ("refunds", refunds), ("authorizations", authorizations),
        ("settlement captures", settlement_captures),
        ("imports", imports),
        ("stock takes", stock_takes),
        ("notifications", notifications),
    ]  # fmt: skip
    first = _first_pass(event, len(passes))
    left = []
    for name, run_pass in passes[first:] + passes[:first]:
        if context.get_remaining_time_in_millis() < PASS_RESERVE_MILLIS:
            left.append(name)
            continue
        deadline = Deadline(context.get_remaining_time_in_millis, PASS_RESERVE_MILLIS)
        run_pass(deadline)
        if deadline.reached:
            # No error either: what it did is reported above as ever, and what it did not start
            # stays in its index, where the next runs take it (each starts with the next pass).
            logger.warning("reconciler pass cut short: too little time left, the rest to the next runs",
                           extra={"pass": name})  # fmt: skip
            metrics.add_metric(name="ReconcilerPassesCutShort", unit=MetricUnit.Count, value=1)
        _print_metrics()
    if left:
        # No error (the alarm stays quiet): counted, so a backlog that keeps passes from running shows on a graph.
        logger.warning("reconciler passes left to the next runs: too little time left", extra={"passes": left})
        metrics.add_metric(name="ReconcilerPassesLeft", unit=MetricUnit.Count, value=len(left))
    raised = [
        incomplete.get(name)
        for name in (
            "pending refunds",
            "authorizations",
            "settlement captures",
            "kept back",
            "returns",
            "stalled orders",
            "pickup expiry",
            "imports",
            "notifications",
        )
    ]
    for error in (*raised, *failures):
        if error is not None:
            raise error  # the passes did the rest; the errors alarm calls a person
    return answer


def recount_imports(container: WarmContainer, isolated: Callable[..., Any], time_up: TimeUp) -> Recounted:
    """Imports left running short by a line marked and never counted (core/import_recount.py): what
    the pass did, logged and counted."""

    done = Recounted()
    isolated("imports", lambda: container().import_recount.run(done, time_up=time_up), done)
    for import_id in done.completed:
        logger.warning("import recounted from its line markers and completed", extra={"import_id": import_id})
    for import_id in done.cut_short:
        logger.info("import recount cut short: the next run goes on", extra={"import_id": import_id})
    if done.completed:
        metrics.add_metric(name="ImportsRecounted", unit=MetricUnit.Count, value=len(done.completed))
    for import_id, failure in done.failed.items():
        failure_logged(logger, "import not recounted: its own recount failed, the next pass tries it again",
                       failure, import_id=import_id)  # fmt: skip
    if done.failed:
        metrics.add_metric(name="ImportsNotRecounted", unit=MetricUnit.Count, value=len(done.failed))
    return done


def _print_metrics() -> None:
    """Print what the passes so far counted: a later pass that runs past the timeout ends the run
    before the handler prints anything (OrdersParked, a void refused: what the alarms watch)."""
    if metrics.metric_set:
        metrics.flush_metrics()
    try:
        print_business_metrics()
    except Exception:  # any: what the passes did is stored; the next passes must still run
        logger.exception("business metrics not printed")


def _first_pass(event: dict[str, Any], count: int) -> int:
    """Which of the `count` passes this run starts with: the one after the pass the run before
    started with, by the schedule's time and the period the reconciler runs on (template.yaml's
    rate, or make run's: functions/schedule.py), so a cold start keeps the turn and a backlog that
    fills the function's minute with the passes run first keeps none of the others from its turn
    for good; the first when the event has no time (a run by hand)."""
    return run_number(event, "ReconcilerFunction") % count
