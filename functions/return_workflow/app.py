"""Returns workflow task: one Lambda function for its steps (they share one container and one
set of grants), told which step by the state machine's Parameters."""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from core.log_text import escape_for_log
from functions.bootstrap import WarmContainer
from functions.business_metrics import emits_business_metrics
from functions.masked_logs import function_logger
from functions.workflow.step import ExecutionTrace, RetryBudget, untraced

logger = function_logger()
container = WarmContainer()
ACTOR = "returns-workflow"


class ReturnStepInput(RetryBudget):
    """The Parameters the state machine passes (see infra/return_workflow.asl.json)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    step: Literal["receive", "restock", "record", "refund", "exchange", "stuck"]
    return_id: Annotated[str, Field(pattern=r"^rma_[a-z2-7]{24}$")]
    trace: ExecutionTrace = Field(default_factory=untraced)
    error: str = ""
    cause: str = ""
    execution: str = ""  # the execution's name (the stuck step records it once per execution)


@logger.inject_lambda_context(clear_state=True)
@emits_business_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """Exceptions propagate on purpose: their class name is the errorType the state machine's
    Retry and Catch match (RefundNotDone, ReturnNotReceived, TransientError...)."""
    task = ReturnStepInput.model_validate(event)
    logger.append_keys(return_id=task.return_id, step=task.step, channel=task.trace.channel or None)
    logger.set_correlation_id(task.trace.correlation_id or None)
    returns = container().returns
    try:
        task.refuse_when_out_of_time(container().clock())
        if task.step == "receive":
            returns.check_received(task.return_id)
        elif task.step == "restock":
            returns.restock(task.return_id)
        elif task.step == "record":
            returns.record_on_order(task.return_id, ACTOR)
        elif task.step == "refund":
            container().plugins.require_loaded()
            returns.refund(task.return_id, ACTOR)
        elif task.step == "exchange":
            container().plugins.require_loaded()
            returns.exchange(task.return_id, ACTOR)
        else:
            returns.stuck(task.return_id, task.error, task.cause, ACTOR, task.execution)
    except Exception as error:
        logger.warning(
            "returns workflow step raised",
            extra={"error": type(error).__name__, "reason": escape_for_log(str(error)[:500])},
        )
        raise
