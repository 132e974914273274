"""Workflow task AuthorizePayment: authorize the order's payment through its payment plugin."""

from __future__ import annotations

from functions.workflow.step import step_handler

lambda_handler = step_handler(lambda workflow, step: workflow.authorize_payment(step.order_id, step.attempt))
