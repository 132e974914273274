"""Workflow task ParkOrder: an infrastructure failure outlived its retries; the order goes on hold."""

from __future__ import annotations

import os

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.workflow import Workflow
from functions.workflow.step import StepInput, logger, step_handler

# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))


def park(workflow: Workflow, step: StepInput) -> None:
    if workflow.park_after_failure(
        step.order_id, step.error, step.cause, execution=step.execution, retried=step.attempt > 0
    ):
        # The alarm OrdersParkedAlarm watches this: a parked order waits for a person.
        metrics.add_metric(name="OrdersParked", unit=MetricUnit.Count, value=1)
        logger.warning("order parked on hold after a workflow failure", extra={"error": step.error})


# Parking writes the order and calls no plugin: it runs while a plugin failed to load.
lambda_handler = metrics.log_metrics(step_handler(park, calls_plugins=False))
