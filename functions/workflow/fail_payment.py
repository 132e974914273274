"""Workflow task FailPayment: the payment was declined; the order ends payment_failed."""

from __future__ import annotations

from functions.workflow.step import step_handler

lambda_handler = step_handler(lambda workflow, step: workflow.fail_payment(step.order_id, step.error, step.cause))
