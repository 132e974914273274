"""The return's bill is reported as the order's: the core by service, then each optional feature on
top (its requests, invocations and log lines, as bench.workflow attributes them), and the total with
all of them."""

from __future__ import annotations

import pytest

from bench.__main__ import returns_markdown
from bench.cost import LAMBDA_PLATFORM_LOG_BYTES, PRICES, XRAY_SAMPLED_SHARE, Usage
from bench.returns import RETURN_FEATURES, ReturnUsageRecorder, return_bill
from bench.workflow import working_for
from infra.local.lambdas import RUNNING

PLATFORM_LINE = LAMBDA_PLATFORM_LOG_BYTES / 1e9 * PRICES["logs_ingest_gb"]


def _run() -> tuple[Usage, dict[str, Usage]]:
    """Two returns: their API requests and workflow in the core; events, a webhook delivery each and
    counters measured apart."""
    core = Usage(api_requests=4, wru=50.0)
    core.lambda_invocations.update({"ApiFunction": 4, "ReturnStepFunction": 10})
    events = Usage(events_published=6)
    events.lambda_invocations["EventsFunction"] = 1
    events.log_bytes["INFO"] = 2_000
    webhooks = Usage(wru=6.0)
    webhooks.calls["sqs.SendMessage"] = 2
    webhooks.lambda_invocations["WebhookDeliveryFunction"] = 2
    return core, {"events": events, "webhooks": webhooks, "aggregates": Usage(wru=8.0)}


def test_each_optional_feature_is_billed_on_top_of_the_core_and_in_the_total_with_all_of_them():
    core, features = _run()

    bill = return_bill(core, features, 2)

    per_return = 1_000_000 / 2
    core_total = (
        4 * PRICES["apigateway_rest_request"] + 14 * PRICES["lambda_request"] + 50 * PRICES["dynamodb_wru"]
    ) * per_return
    assert bill["total_per_million_returns"] == pytest.approx(core_total)
    assert bill["dollars_per_million_returns"]["EventBridge"] == 0  # the events' are theirs, not the core's
    xray = 4 * XRAY_SAMPLED_SHARE * PRICES["xray_trace_recorded"] * per_return  # a trace per API request
    platform_lines = 14 * PLATFORM_LINE * per_return  # START/END/REPORT of each invocation (PlatformLogLevel INFO)
    assert sum(bill["optional_dollars_per_million_returns"].values()) == pytest.approx(xray + platform_lines)
    by_feature = bill["features_per_million_returns"]
    assert list(by_feature) == list(RETURN_FEATURES)
    assert by_feature["events"]["EventBridge"] == pytest.approx(6 * PRICES["eventbridge_event"] * per_return)
    assert by_feature["webhooks"]["SQS"] == pytest.approx(2 * PRICES["sqs_request"] * per_return)
    assert by_feature["webhooks"]["Lambda"] == pytest.approx(2 * PRICES["lambda_request"] * per_return)
    assert by_feature["aggregates"] == {"DynamoDB": pytest.approx(8 * PRICES["dynamodb_wru"] * per_return)}
    assert by_feature["notifications"] == by_feature["access log"] == {}  # measured nothing: nothing to add
    features_total = sum(sum(feature.values()) for feature in by_feature.values())
    assert features_total > 0
    assert bill["total_with_all_per_million_returns"] == pytest.approx(
        core_total + xray + platform_lines + features_total
    )
    assert bill["lambda_invocations_per_return"] == {
        "ApiFunction": 2.0,
        "EventsFunction": 0.5,
        "ReturnStepFunction": 5.0,
        "WebhookDeliveryFunction": 1.0,
    }
    assert core.log_bytes == {} and core.traces == 0  # billed as AWS bills it, the measurement left as it was


def test_the_return_section_shows_the_core_then_each_feature_then_the_total_with_all_of_them():
    core, features = _run()
    run = {
        "returns": 2,
        "statuses": {"refunded": 2},
        "webhook_deliveries_per_return": 1.0,
        "api_requests_per_return": 2.0,
        "sfn_executions_per_return": 1.0,
        "lambda_gb_seconds_per_return": 0.1,
        "wru_per_return": 25.0,
        "rru_per_return": 17.5,
        "requests_per_return_by_function": {"ApiFunction dynamodb.PutItem": 1.0},
        **return_bill(core, features, 2),
    }

    rows = [line for line in returns_markdown(run).splitlines() if line.startswith("| ")]
    labels = [row.split(" | ")[0] for row in rows]

    feature_rows = [index for index, label in enumerate(labels) if label.startswith("| + ")]
    assert len(feature_rows) == len(RETURN_FEATURES)
    # The INFO lines, Lambda's lines and X-Ray are rows of the total (the template deploys them), as
    # for an order; the figure without them follows it, then each feature on top.
    core_row, all_row = (
        labels.index("| **total, logs and tracing included (the template's defaults)**"),
        labels.index("| **total, with all of them**"),
    )
    optional = run["optional_dollars_per_million_returns"]
    assert [labels[core_row - 3 + i] for i in range(3)] == [f"| {name}" for name in optional]
    total = run["total_per_million_returns"] + sum(optional.values())
    assert rows[core_row] == f"| **total, logs and tracing included (the template's defaults)** | **{total:.2f}** | |"
    assert core_row + 2 == feature_rows[0] and feature_rows[-1] + 1 == all_row
    assert f"| **total, with all of them** | **{run['total_with_all_per_million_returns']:.2f}** | |" in rows
    webhooks = next(row for row in rows if row.startswith("| + one webhook subscription"))
    assert webhooks.split(" | ")[1] == f"{sum(run['features_per_million_returns']['webhooks'].values()):.2f}"


@pytest.mark.usefixtures("running")
def test_a_return_s_counters_events_and_deliveries_are_recorded_as_their_feature_s_not_the_core_s():
    recorder = ReturnUsageRecorder()
    recorder.returns_table = "returns"
    RUNNING.function = "oms-local-EventsFunction"
    with working_for("aggregates"):
        recorder.record("dynamodb", "TransactWriteItems", {"TransactItems": [{"Update": {}}, {"Update": {}}]})
    recorder.record("events", "PutEvents", {"Entries": [{}, {}]})
    RUNNING.function = "oms-local-ApiFunction"
    recorder.record("dynamodb", "TransactWriteItems", {"TransactItems": [{"Update": {}}]})

    assert recorder.features["aggregates"].wru == 4  # two writes, each doubled in a transaction
    assert recorder.features["events"].events_published == 2
    assert recorder.usage.wru == 2 and recorder.usage.events_published == 0
    assert recorder.usage.by_function == {  # every request, for the table
        "EventsFunction dynamodb.TransactWriteItems": 1,
        "EventsFunction events.PutEvents": 1,
        "ApiFunction dynamodb.TransactWriteItems": 1,
    }
