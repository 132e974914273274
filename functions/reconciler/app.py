"""Scheduled reconciler: runs in turn the passes that finish what other functions left undone.

The passes (functions/reconciler/passes.py) restart and park stalled orders, expire pickups, start
the workflow of stuck returns, do owed carrier work, finish pending refunds and refund what returns
kept back, void left authorizations, record settlement captures, recount imports killed midway,
finish stock takes recorded short and retry customer notifications. Each run starts with the next
pass in turn, and starts none without the time to run it, so a backlog in one keeps none of the
others from running for good; within a pass, no order or return is started without that time either
(core/deadline.py): a pass with a backlog stops, is reported, and leaves the rest to the next runs."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import partial
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.deadline import Deadline
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.business_metrics import flush as print_business_metrics
from functions.masked_logs import function_logger
from functions.reconciler.passes import (
    PASS_RESERVE_MILLIS,
    Run,
    authorizations,
    carrier_work,
    imports,
    notifications,
    pickup_expiry,
    recount_imports,
    refunds,
    returns,
    settlement_captures,
    stalled_orders,
    stock_takes,
)
from functions.schedule import run_number

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
# A stock take recorded short is finished by the reconciler only this long after it was counted:
# its own request (the API's 29 seconds) is over by then, dead or done.
SHORT_COUNT_GRACE = timedelta(minutes=2)
# The passes whose incomplete work the run raises, first to last, before what failed outright.
RAISED_FIRST = (
    "pending refunds", "authorizations", "settlement captures", "kept back", "returns", "stalled orders",
    "pickup expiry", "imports", "notifications",
)  # fmt: skip
# recount_imports: the imports pass's report, which tests/integration/test_import_recount_poison.py runs from here.
__all__ = ["PASS_RESERVE_MILLIS", "lambda_handler", "recount_imports"]


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    run = Run(container, context)
    passes = [
        ("stalled orders", stalled_orders), ("pickup expiry", pickup_expiry), ("returns", returns),
        ("carrier work", carrier_work), ("refunds", refunds), ("authorizations", authorizations),
        ("settlement captures", settlement_captures),
        ("imports", imports),
        ("stock takes", partial(stock_takes, grace=SHORT_COUNT_GRACE)),
        ("notifications", notifications),
    ]  # fmt: skip
    first = _first_pass(event, len(passes))
    left = []
    for name, run_pass in passes[first:] + passes[:first]:
        if context.get_remaining_time_in_millis() < PASS_RESERVE_MILLIS:
            left.append(name)
            continue
        deadline = Deadline(context.get_remaining_time_in_millis, PASS_RESERVE_MILLIS)
        run_pass(run, deadline)
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
    for error in (*(run.incomplete.get(name) for name in RAISED_FIRST), *run.failures):
        if error is not None:
            raise error  # the passes did the rest; the errors alarm calls a person
    return run.answer


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
