"""Scheduled jeopardy scan: marks orders past the deadline of their status (OMS_SLA), unmarks those
a deadline lengthened since leaves no longer late, cancels holds older than OMS_HOLD_EXPIRY_DAYS
(not while a plugin failed to load) and returns not received within OMS_RETURN_EXPIRY_DAYS
(core/jeopardy.py); counts the late orders for the alarm. Of the
orders it marks, it settles the captures their ships asked for and never recorded, holding those
orders for a person to confirm whether the parcel left (core/capture_sweep.py). The scan and the
settlements each have a deadline (core/deadline.py), and each run starts the scan with its next
part, so a backlog is scanned whole over the runs and none of its parts waits for good."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.capture_sweep import CapturesNotSettled, CapturesSettled
from core.deadline import Deadline
from core.jeopardy import SCAN_ACTOR, ScanIncomplete
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.captures_report import report as report_captures
from functions.failure_logs import failure_logged
from functions.masked_logs import function_logger
from functions.schedule import run_number

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
# The capture settlements after the scan ask the gateway of no order with less than this left of
# the function's timeout (60 s): ended by the timeout, the run would log and count nothing of what
# it did. The orders left were not marked, so the next scan hands them on again.
RESERVE_MILLIS = 15_000
# The scan itself starts no order or return, nor reads another page of candidates, with less than
# this left: the rest of the minute is the count of late orders, the capture settlements of the
# orders it handed on (down to RESERVE_MILLIS) and the report. What it did not reach stays in its
# indexes for the next scans.
SCAN_RESERVE_MILLIS = 30_000


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    broken = container().plugins.broken
    if broken:
        logger.error("hold expiry skipped: a plugin failed to load", extra={"plugins": [p.name for p in broken]})
    scan_deadline = Deadline(context.get_remaining_time_in_millis, SCAN_RESERVE_MILLIS)
    scan_failed = None
    try:
        done = container().jeopardy_scan.run(expire_holds=not broken, time_up=scan_deadline, turn=_turn(event))
    except ScanIncomplete as error:
        # Parts failed outright; the others ran: what they did is reported below as ever.
        done, scan_failed = error.done, error
        for name, failure in error.failed:
            logger.error("jeopardy scan part failed: the next run does it again", extra={"part": name},
                         exc_info=failure)  # fmt: skip
    if scan_deadline.reached:
        # No error: what it did is reported below; what it did not reach, the next scans'.
        logger.warning("jeopardy scan cut short: too little time left, the rest to the next scans")
    for order_id in done.marked:
        logger.warning("order in jeopardy: past the deadline of its status", extra={"order_id": order_id})
    for order_id in done.unmarked:
        logger.info(
            "order no longer in jeopardy: not past the deadline its status has now", extra={"order_id": order_id}
        )
    for order_id in done.expired:
        logger.warning("order cancelled: its hold expired", extra={"order_id": order_id})
    for return_id in done.returns_expired:
        logger.info("return cancelled: nothing received in time", extra={"return_id": return_id})
    # Read past, each: its own work raised (a record that no longer reads, an item its table refuses).
    for order_id, failure in done.failed.items():
        if order_id in done.expired:  # cancelled: no scan reads it again
            failure_logged(logger, "hold expired, its clean-up failed: the cancel's own execution finishes it",
                           failure, order_id=order_id)  # fmt: skip
        else:
            failure_logged(logger, "order not scanned: its own work failed, the next scan tries it again",
                           failure, order_id=order_id)  # fmt: skip
    for return_id, failure in done.returns_failed.items():
        failure_logged(logger, "return not scanned: its own work failed, the next scan tries it again",
                       failure, return_id=return_id)  # fmt: skip
    # Every pass, zero included: OrdersInJeopardyAlarm fires while any late order is open (none
    # when the count failed: a zero would clear it).
    if done.in_jeopardy is not None:
        metrics.add_metric(name="OrdersInJeopardy", unit=MetricUnit.Count, value=done.in_jeopardy)
    if done.marked:
        metrics.add_metric(name="OrdersMarkedInJeopardy", unit=MetricUnit.Count, value=len(done.marked))
    if done.expired:
        metrics.add_metric(name="HoldsExpired", unit=MetricUnit.Count, value=len(done.expired))
    if done.returns_expired:
        metrics.add_metric(name="ReturnsExpired", unit=MetricUnit.Count, value=len(done.returns_expired))
    if done.failed:
        metrics.add_metric(name="OrdersNotScanned", unit=MetricUnit.Count, value=len(done.failed))
    if done.returns_failed:
        metrics.add_metric(name="ReturnsNotScanned", unit=MetricUnit.Count, value=len(done.returns_failed))
    captures, failed = CapturesSettled(settled=[], held=[], unconfirmed=[]), None
    deadline = None
    if done.captures_left:
        deadline = Deadline(context.get_remaining_time_in_millis, RESERVE_MILLIS)
        try:
            captures = container().capture_sweep.run(done.captures_left, SCAN_ACTOR, time_up=deadline)
        except CapturesNotSettled as error:
            captures, failed = error.done, error
        if deadline.reached:
            # No error: what it settled is reported below; the rest are the next scan's.
            logger.warning("capture settlements cut short: too little time left, the rest to the next scan",
                           extra={"handed_on": len(done.captures_left)})  # fmt: skip
    if scan_deadline.reached or (deadline is not None and deadline.reached):
        metrics.add_metric(name="JeopardyScansCutShort", unit=MetricUnit.Count, value=1)  # once a run
    # Every run, zero included, after the sweep (the orders it held count): ShipsToConfirmAlarm
    # stays on while any order waits for a person to confirm whether a parcel left, not only in
    # the 5 minutes after the run that held it. A count that fails publishes no zero (which would
    # clear the alarm while parcels wait: report_captures) and fails the run once what the scan and
    # the sweep did is reported.
    ships_to_confirm, count_failed = None, None
    try:
        ships_to_confirm = container().jeopardy_scan.count_ships_to_confirm()
    except Exception as error:  # any: what was done is reported below all the same
        count_failed = error
        logger.error("parcels waiting to confirm not counted: ShipsToConfirmAlarm keeps its state", exc_info=error)
    report_captures(captures, failed, logger, metrics, waiting=ships_to_confirm)
    for error in (scan_failed, failed, count_failed):
        if error is not None:
            raise error  # the pass did the rest; the errors alarm calls a person for these
    return {
        "marked": done.marked,
        "unmarked": done.unmarked,
        "expired": done.expired,
        "returns_expired": done.returns_expired,
        "in_jeopardy": done.in_jeopardy,
        "captures_settled": captures.settled,
        "ships_held": captures.held,
        "ships_unconfirmed": captures.unconfirmed,
        "ships_to_confirm": ships_to_confirm,
    }


def _turn(event: dict[str, Any]) -> int:
    """This scan's run number, by the schedule's time and the period the scan runs on (template.yaml's
    rate, or make run's: functions/schedule.py), so a cold start keeps the turn: each scheduled scan
    starts with the part after the one the scan before started with (JeopardyScan.run's `turn`), and
    a backlog that fills a run in one part (holds whose cancels wait on the gateway) keeps none of the
    others from its turn for good; 0 when the event has no time (a run by hand)."""
    return run_number(event, "JeopardyScanFunction")
