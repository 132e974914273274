"""template.yaml against what AWS does and moto does not show: an SQS mapping's queue hides a batch
for as long as Lambda may still be working on it, and its dead letters outlive the messages they
came from."""

from __future__ import annotations

from typing import Any

import pytest

from infra.local.template import load_template

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBALS = TEMPLATE["Globals"]["Function"]
FUNCTIONS = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
# Every SQS queue a function's event source mapping polls: (function, event name, its Properties).
SQS_MAPPINGS = [
    (function, event, spec["Properties"])
    for function, props in FUNCTIONS.items()
    for event, spec in (props.get("Events") or {}).items()
    if spec["Type"] == "SQS"
]


def _timeout(function: str) -> int:
    return FUNCTIONS[function].get("Timeout", GLOBALS["Timeout"])


def _queue(mapping: dict[str, Any]) -> dict[str, Any]:
    (name, attribute) = mapping["Queue"]["Fn::GetAtt"]
    assert attribute == "Arn"
    return RESOURCES[name]["Properties"]


def _resolved(value: Any) -> Any:
    """A value written as a !FindInMap of the template's Mappings, or as itself."""
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        mapping, key, attribute = value["Fn::FindInMap"]
        return TEMPLATE["Mappings"][mapping][key][attribute]
    return value


def test_the_template_has_sqs_mappings_to_check():
    assert {function for function, _, _ in SQS_MAPPINGS} >= {
        "ImportWorkerFunction", "WebhookDeliveryFunction", "AccessLogFunction"
    }  # fmt: skip


@pytest.mark.parametrize(("function", "event", "mapping"), SQS_MAPPINGS, ids=[f"{f}.{e}" for f, e, _ in SQS_MAPPINGS])
def test_a_queue_hides_a_batch_for_six_function_timeouts_plus_its_batching_window(
    function: str, event: str, mapping: dict[str, Any]
):
    """AWS's advice for a queue Lambda polls: a visibility timeout of at least six times the
    function's Timeout (room for Lambda's own retries of a throttled invocation), plus the
    mapping's MaximumBatchingWindowInSeconds, during which the first message received waits
    invisible for the rest of its batch. Less, and SQS hands a message out again while its first
    delivery is still being worked on (moto's queues never show it: the local stack polls them
    one batch at a time)."""
    visibility = _queue(mapping).get("VisibilityTimeout", 30)
    window = mapping.get("MaximumBatchingWindowInSeconds", 0)
    assert visibility >= 6 * _timeout(function) + window, (function, visibility, _timeout(function), window)


@pytest.mark.parametrize(("function", "event", "mapping"), SQS_MAPPINGS, ids=[f"{f}.{e}" for f, e, _ in SQS_MAPPINGS])
def test_a_polled_queue_gives_up_after_a_few_receives_to_a_dead_letter_queue_that_keeps_them_longer(
    function: str, event: str, mapping: dict[str, Any]
):
    """A message moved to a standard queue's DLQ keeps its first enqueue time, so a DLQ that keeps
    messages no longer than its source drops at once what its source kept to the end."""
    queue = _queue(mapping)
    redrive = queue["RedrivePolicy"]
    assert 3 <= _resolved(redrive["maxReceiveCount"]) <= 10, function
    (dead, attribute) = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    kept = queue.get("MessageRetentionPeriod", 345600)
    assert RESOURCES[dead]["Properties"].get("MessageRetentionPeriod", 345600) > kept, (function, dead)
