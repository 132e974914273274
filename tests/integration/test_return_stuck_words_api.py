"""What a storefront reads of a return whose workflow stopped (`return_stuck` on its order's
history), in-process on moto through the real step handler: the ReturnStuck state hands the step
its Catch's Cause, the Lambda's error JSON (errorMessage, errorType, requestId, stackTrace). The
entry names the step's error; only the OMS's own errors (core/errors.py's and the returns' own)
keep their message, written for the person who looks at the return. Another's (botocore's,
Lambda's, a bug's) may name the AWS account, roles and tables, and no entry keeps the stack trace:
both stay in the step's log line and the execution's history."""

from __future__ import annotations

import json

import pytest

from tests.integration import return_steps, test_cancel_units_api
from tests.integration.in_process import InProcessApi, issue
from tests.integration.return_steps import received, step

api = test_cancel_units_api.api  # its catalog (MUG 12.50 in the west, 100 on hand)
services = return_steps.services  # the API's and the return step's services

ACCOUNT = "210987654321"
DENIED = (
    "An error occurred (AccessDeniedException) when calling the UpdateItem operation: User: "
    f"arn:aws:sts::{ACCOUNT}:assumed-role/oms-ReturnStepRole-1AB2C3/oms-ReturnStep is not authorized to "
    f"perform: dynamodb:UpdateItem on resource: arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/oms-Orders-9XYZ"
)
TRACE = '  File "/var/task/functions/return_workflow/app.py", line 50, in lambda_handler\n'
REFUSED = "the gateway refused the refund of return rma_x: card account closed"


def cause(error: str, message: str) -> str:
    """The Catch's Cause as Lambda writes it for a function's error."""
    return json.dumps({"errorMessage": message, "errorType": error, "requestId": "r-1", "stackTrace": [TRACE]})


@pytest.mark.parametrize(
    ("error", "message", "shown"),
    [
        # Another's error: named by its type only.
        ("ClientError", DENIED, ""),
        ("KeyError", "'refund_id'", ""),
        ("States.Timeout", "Task timed out after 60.00 seconds", ""),
        # The OMS's own (the returns' RefundNotDone, core/errors.py's PaymentPluginFailed): its message kept.
        ("RefundNotDone", REFUSED, REFUSED),
        (
            "PaymentPluginFailed",
            "the payment plugin failed in the refund: plugin acme failed in oms_payment_refund: ValueError",
            "the payment plugin failed in the refund: plugin acme failed in oms_payment_refund: ValueError",
        ),
    ],
)
def test_a_stuck_returns_entry_shows_a_storefront_no_infrastructure_message_nor_stack_trace(
    api: InProcessApi, services: object, error: str, message: str, shown: str
):
    storefront = issue(api, "orders:read", channel="web")
    order, return_id = received(api)

    step("stuck", return_id, error=error, cause=cause(error, message), execution="ex-1")

    history = api.get(f"/orders/{order['id']}/history", key=storefront)
    assert history.status_code == 200, history.text
    (entry,) = [e for e in history.json()["items"] if e["type"] == "return_stuck"]
    assert entry["detail"] == {
        "return_id": return_id, "status": "received", "error": error, "message": shown, "execution": "ex-1",
    }  # fmt: skip
    for secret in (ACCOUNT, "stackTrace", "/var/task", "requestId"):
        assert secret not in history.text, history.text
