"""Workflow task ReserveStock: source the order and reserve its stock."""

from __future__ import annotations

from functions.workflow.step import step_handler

lambda_handler = step_handler(lambda workflow, step: workflow.reserve_stock(step.order_id))
