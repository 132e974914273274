"""Workflow task CancelOrder: release reservations, void the authorization, end cancelled."""

from __future__ import annotations

import os

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from core.workflow import Workflow
from functions.workflow.step import StepInput, logger, step_handler

# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
# No `service` dimension: the business metrics carry only their own (`reason` here), which is what
# TechnicalCancellationsAlarm and the dashboard name. Ephemeral: nothing shared with other handlers
# that run in the same process locally.
metrics = EphemeralMetrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"), service="")


def count_cancelled(reason: str) -> None:
    # reason=workflow_error means a technical failure cancelled an order: TechnicalCancellationsAlarm
    # watches exactly this metric and dimension.
    logger.info("order cancelled by the workflow", extra={"reason": reason})
    metrics.add_dimension(name="reason", value=reason)
    metrics.add_metric(name="OrdersCancelled", unit=MetricUnit.Count, value=1)


def cancel(workflow: Workflow, step: StepInput) -> None:
    workflow.cancel_after_failure(step.order_id, step.error, step.cause, on_cancelled=count_cancelled)


# Outermost, so the count is flushed even when the void fails afterwards and the step is retried.
lambda_handler = metrics.log_metrics(step_handler(cancel))
