"""What every order workflow task shares: its input, and the handler around the service call."""

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from core.errors import PluginError, PluginUnavailable, WorkflowOutOfTime
from core.log_text import escape_for_log
from core.workflow import Workflow, out_of_time
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.masked_logs import function_logger

logger = function_logger()
# Shared by the five task modules; each task is its own Lambda function, so its own container.
container = WarmContainer()


class ExecutionTrace(BaseModel):
    """The execution's input, whatever started it (the outbox adds these; an execution started by
    hand may not): what every step's log lines carry besides the order id."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    channel: str = ""
    correlation_id: str = ""


def untraced() -> ExecutionTrace:
    """The trace of a task invoked without one (by hand): the defaults, which need no validation. A
    default `ExecutionTrace()` built the model at import, in every new container of each workflow
    function, whose events (the state machines pass the execution's input as `trace`) never use it."""
    return ExecutionTrace.model_construct()


class RetryBudget(BaseModel):
    """What a main step of an Express workflow is passed besides its work: when its execution
    started (`$$.Execution.StartTime`) and how long from then its steps may be retried. AWS stops an
    Express execution at five minutes and runs no Catch then, so a step asked later than that
    refuses at once (WorkflowOutOfTime, never retried) and the execution parks the order, or
    records the return stuck, while it has the time to (tests/unit/test_aws_limits.py sums the
    worst case from the ASL). A step not passed them (a compensation, a run by hand) has no budget."""

    model_config = ConfigDict(defer_build=True)

    started: AwareDatetime | None = None  # Step Functions writes it in UTC, "...Z"
    retry_for_seconds: Annotated[int, Field(gt=0)] | None = None

    def refuse_when_out_of_time(
        self, now: datetime, refusal: Callable[[datetime, int], WorkflowOutOfTime] = out_of_time
    ) -> None:
        """Raise `refusal(started, retry_for_seconds)` once the retries' time has run out (an order
        step's names the plugin its retries were spent on: Workflow.out_of_time)."""
        if self.started is None or self.retry_for_seconds is None:
            return
        if now - self.started >= timedelta(seconds=self.retry_for_seconds):
            raise refusal(self.started, self.retry_for_seconds)


class StepInput(RetryBudget):
    """The Parameters the state machine passes (see infra/order_workflow.asl.json)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    order_id: Annotated[str, Field(pattern=r"^ord_[a-z2-7]{24}$")]
    trace: ExecutionTrace = Field(default_factory=untraced)
    attempt: Annotated[int, Field(ge=0)] = 0
    error: str = ""
    cause: str = ""
    execution: str = ""  # the execution's name (ParkOrder names it in the park's entry)


def step_handler(
    run: Callable[[Workflow, StepInput], object], *, calls_plugins: bool = True
) -> Callable[[dict[str, Any], Any], None]:
    """A task's Lambda handler: validate the Parameters, log with the order id, `run` the step.

    Exceptions propagate on purpose: their class name is the errorType the state machine's Retry
    and Catch match (TransientError, PaymentDeclined, OutOfStock, OrderClosed). While a plugin
    failed to load no step that `calls_plugins` runs (PluginUnavailable): those steps call hooks,
    and the cancel step would otherwise record a void it could not make. ParkOrder calls none, so
    it puts the order on hold for a person at once rather than leave it to the reconciler."""

    @logger.inject_lambda_context(clear_state=True)
    @emits_business_metrics
    def lambda_handler(event: dict[str, Any], context: Any) -> None:
        step = StepInput.model_validate(event)
        logger.append_keys(order_id=step.order_id, channel=step.trace.channel or None)
        logger.set_correlation_id(step.trace.correlation_id or None)
        try:
            refusal = functools.partial(container().workflow.out_of_time, step.order_id)
            step.refuse_when_out_of_time(container().clock(), refusal)
            if calls_plugins:
                container().plugins.require_loaded()
            run(container().workflow, step)
        except Exception as error:
            # Most are the state machine's ordinary branches (retry, decline, out of stock); this
            # line ties each to its order and request, which Lambda's own error record does not.
            logger.warning(
                "workflow step raised",
                extra={"error": type(error).__name__, "reason": escape_for_log(str(error)[:500])},
            )
            if step.started is not None and isinstance(error, PluginError) and not isinstance(error, PluginUnavailable):
                # A main step's retries may run out of time on it: its refusal then names it.
                note_plugin_failure(container().workflow, step.order_id, error)
            raise

    return lambda_handler


def note_plugin_failure(workflow: Workflow, order_id: str, failed: PluginError) -> None:
    """Workflow.note_plugin_failure, whose own failure (DynamoDB busy) is logged and leaves the
    step's error to go on to the state machine as it is."""
    try:
        workflow.note_plugin_failure(order_id, failed)
    except Exception as unnoted:  # any: the step's error, not this note's, is what Retry and Catch match
        logger.warning("plugin failure not noted on the order", extra={"error": type(unnoted).__name__})
