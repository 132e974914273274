"""Workflow task CancelOrder: release reservations, void the authorization, end cancelled."""

from __future__ import annotations

from functions.workflow.step import step_handler

lambda_handler = step_handler(
    lambda workflow, step: workflow.cancel_after_failure(step.order_id, step.error, step.cause)
)
