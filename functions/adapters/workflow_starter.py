"""Starts the order workflow (Step Functions) for an order."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError


class StepFunctionsStarter:
    def __init__(self, client: Any, state_machine_arn: str):
        self._client = client
        self._arn = state_machine_arn

    def start(self, order_id: str, channel: str = "", correlation_id: str = "") -> bool:
        """Start one execution named after the order; False when one already exists (a stream
        retry). Steps are idempotent, so a duplicate start would be harmless, but it is avoided.
        `channel` and `correlation_id` ride in the input for the steps' log lines."""
        execution_input = {"order_id": order_id, "channel": channel, "correlation_id": correlation_id}
        try:
            self._client.start_execution(stateMachineArn=self._arn, name=order_id, input=json.dumps(execution_input))
        except ClientError as error:
            if error.response["Error"]["Code"] == "ExecutionAlreadyExists":
                return False
            raise
        return True
