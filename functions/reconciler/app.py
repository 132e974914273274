"""Scheduled reconciler: starts again the workflow of orders stuck pending or authorized, and parks
those stuck too long for that (core/reconciliation.py)."""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.models import utc_now
from core.reconciliation import Reconciler
from functions.adapters.aws_clients import aws_client
from functions.adapters.dynamodb import DynamoStalledOrders
from functions.adapters.workflow_starter import StepFunctionsStarter
from functions.bootstrap import dynamodb_client, workflow

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))


@functools.cache
def reconciler() -> Reconciler:
    return Reconciler(
        DynamoStalledOrders(dynamodb_client(), os.environ["ORDERS_TABLE"]),
        StepFunctionsStarter(aws_client("stepfunctions"), os.environ["ORDER_WORKFLOW_ARN"]),
        workflow(),
        utc_now,
        restart_after=timedelta(minutes=float(os.environ["RECONCILE_AFTER_MINUTES"])),
        park_after=timedelta(minutes=float(os.environ["RECONCILE_PARK_AFTER_MINUTES"])),
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    done = reconciler().run()
    for order_id in done.restarted:
        logger.warning("order workflow restarted: the order was stuck", extra={"order_id": order_id})
    for order_id in done.parked:
        logger.warning("order parked on hold: stuck though its workflow was restarted", extra={"order_id": order_id})
    if done.restarted:
        metrics.add_metric(name="OrderWorkflowsRestarted", unit=MetricUnit.Count, value=len(done.restarted))
    if done.parked:
        # The same metric the ParkOrder task emits: OrdersParkedAlarm covers both.
        metrics.add_metric(name="OrdersParked", unit=MetricUnit.Count, value=len(done.parked))
    return {"restarted": done.restarted, "parked": done.parked}
