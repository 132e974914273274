"""Workflow task CancelOrder: release reservations, void the authorization, end cancelled."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from functions.bootstrap import workflow
from functions.workflow.step import StepInput

logger = Logger()


# Exceptions propagate on purpose: their class name is the errorType the state machine's
# Retry and Catch match (TransientError, PaymentDeclined, OutOfStock, OrderClosed).
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> None:
    step = StepInput.model_validate(event)
    logger.append_keys(order_id=step.order_id)
    workflow().cancel_after_failure(step.order_id, step.error, step.cause)
