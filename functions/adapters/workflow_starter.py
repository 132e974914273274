"""Starts the order workflow (Step Functions) for an order, and the returns workflow for a return."""

from __future__ import annotations

import json
import secrets
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import TransientError
from core.ports import ReturnWorkflowStarter, WorkflowStarter
from functions.adapters.aws_errors import busy


class StepFunctionsStarter(WorkflowStarter):
    def __init__(self, client: Any, state_machine_arn: str):
        self._client = client
        self._arn = state_machine_arn

    def start(
        self, order_id: str, channel: str = "", correlation_id: str = "", rerun: str | None = None,
        finish_cancel: bool = False,
    ) -> bool:  # fmt: skip
        """Start one execution for the order. Its name is the order id, but only a Standard workflow
        refuses a second execution of that name (ExecutionAlreadyExists: False); the order workflow
        is Express, which starts one every time, so a stream retry, a replayed failure message
        or the reconciler starts another. That is harmless because every step is idempotent.
        A `rerun` (the reconciler's) is named `{order_id}-{rerun}`: a new execution on any type.
        `channel` and `correlation_id` ride in the input for the steps' log lines; `finish_cancel`
        sends the execution to finish a recorded cancel's clean-up instead of the main path.
        TransientError when Step Functions refuses for now or cannot be reached (throttled, a
        server or network error): the caller's retry or its next pass starts it."""
        name = f"{order_id}-{rerun}" if rerun else order_id
        execution_input: dict[str, object] = {
            "order_id": order_id,
            "channel": channel,
            "correlation_id": correlation_id,
        }
        if finish_cancel:
            execution_input["finish_cancel"] = True
        try:
            self._client.start_execution(stateMachineArn=self._arn, name=name, input=json.dumps(execution_input))
        except ClientError as error:
            if error.response["Error"]["Code"] == "ExecutionAlreadyExists":
                return False
            if busy(error) or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise TransientError(
                    f"the order workflow could not be started: {error.response['Error']['Code']}"
                ) from error
            raise  # refused for good (a missing state machine, a denied role): an error to alarm on
        except BotoCoreError as error:
            raise TransientError(f"the order workflow could not be started: {type(error).__name__}") from error
        return True


class StepFunctionsReturnStarter(ReturnWorkflowStarter):
    def __init__(self, client: Any, state_machine_arn: str):
        self._client = client
        self._arn = state_machine_arn

    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        """A new execution named `{return_id}-{random}`: receiving a return again must be able to
        resume it, so no name may be refused. TransientError when Step Functions refuses for now or
        cannot be reached (throttled, a server or network error): the receipt is recorded, and
        receiving again (503: worth retrying) or the reconciler's next pass starts it. Refused for
        good (a denied role, a missing state machine), the ClientError itself: an error to alarm
        on, which no retry mends."""
        name = f"{return_id}-{secrets.token_hex(4)}"
        execution_input = {"return_id": return_id, "channel": channel, "correlation_id": correlation_id}
        try:
            self._client.start_execution(stateMachineArn=self._arn, name=name, input=json.dumps(execution_input))
        except ClientError as error:
            if busy(error) or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise TransientError(
                    f"the returns workflow could not be started: {error.response['Error']['Code']}"
                ) from error
            raise
        except BotoCoreError as error:
            raise TransientError(f"the returns workflow could not be started: {type(error).__name__}") from error
