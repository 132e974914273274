"""template.yaml's alarms reach a person, cover every failure class of every resource, each has a
runbook in the README, and the operations dashboard names only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
README = (ROOT / "README.md").read_text()
CODE = "\n".join(path.read_text() for path in (ROOT / "functions").rglob("*.py"))
# Metric names the handlers emit: string literals, and f-strings such as f"Http{status // 100}xx".
EMITTED = [
    re.compile(re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(name)))
    for name in re.findall(r'"([A-Z][A-Za-z0-9]+)"', CODE) + re.findall(r'name=f"([^"]+)"', CODE)
]
# The names a powertools Metrics' add_metric is given: a literal, or a module constant's value
# (INTERNAL_ERRORS_METRIC = "ApiInternalErrors", which the tests of its alarm import too).
_CONSTANTS = dict(re.findall(r'^([A-Z][A-Z0-9_]*) = "([A-Z]\w+)"$', CODE, flags=re.MULTILINE))
ADDED_METRICS = set(re.findall(r'add_metric\(\s*name="(\w+)"', CODE)) | {
    _CONSTANTS[constant] for constant in re.findall(r"add_metric\(\s*name=([A-Z][A-Z0-9_]*)\b", CODE)
}
# The names single_metric also prints with the `version` dimension: `single_metric(name=X, ...)`
# followed by `add_dimension(name="version", ...)`.
VERSIONED_METRICS = {
    _CONSTANTS.get(constant, constant.strip('"'))
    for constant in re.findall(
        r'single_metric\(\s*name=("?\w+"?)[^\n]*\n(?:[^\n]*\n){0,2}?[^\n]*add_dimension\(name="version"', CODE
    )
}
NAMESPACE = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")

Metric = tuple[str, str, dict[str, Any]]  # namespace, name, {dimension: value as written}


def of_type(*types: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in RESOURCES.items() if resource["Type"] in types}


ALARMS = of_type("AWS::CloudWatch::Alarm")
# The version of the API function a deployment publishes (AutoPublishAlias), as SAM resolves it.
NEW_VERSION = {"Fn::GetAtt": ["ApiFunction", "Version.Version"]}


def _dimensions(dimensions: list[dict[str, Any]]) -> dict[str, Any]:
    return {dimension["Name"]: dimension["Value"] for dimension in dimensions}


def metrics_of(alarm: dict[str, Any]) -> list[Metric]:
    """The metrics an alarm reads: its own, or those of its metric math."""
    props = alarm["Properties"]
    if "MetricName" in props:
        return [(props["Namespace"], props["MetricName"], _dimensions(props.get("Dimensions", [])))]
    metrics = []
    for query in props["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            metrics.append((metric["Namespace"], metric["MetricName"], _dimensions(metric.get("Dimensions", []))))
    return metrics


ALARMED: list[tuple[str, Metric]] = [(name, metric) for name, alarm in ALARMS.items() for metric in metrics_of(alarm)]


def alarmed(namespace: str, metric: str, dimensions: dict[str, Any]) -> list[str]:
    """The alarms that read exactly this metric (this dimension set, nothing more)."""
    return [name for name, (ns, m, dims) in ALARMED if (ns, m, dims) == (namespace, metric, dimensions)]


# --- Alarms reach a person ------------------------------------------------------------------------


def test_the_template_has_alarms_at_all():
    assert len(ALARMS) > 30


@pytest.mark.parametrize("name", sorted(ALARMS))
def test_every_alarm_notifies_the_alarm_topic_when_it_fires_and_when_it_clears(name: str):
    props = ALARMS[name]["Properties"]
    assert {"Ref": "AlarmTopic"} in props.get("AlarmActions", []), f"{name} has no AlarmActions to AlarmTopic"
    assert {"Ref": "AlarmTopic"} in props.get("OKActions", []), f"{name} has no OKActions to AlarmTopic"


def test_the_alarm_email_is_subscribed_only_when_one_is_given():
    assert RESOURCES["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    (subscription,) = of_type("AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasAlarmEmail"
    assert TEMPLATE["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }
    parameter = TEMPLATE["Parameters"]["AlarmEmail"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch("oncall@example.com")
    assert not pattern.fullmatch("oncall") and not pattern.fullmatch("a@b c")


# --- Every failure class of every resource is alarmed -----------------------------------------------


@pytest.mark.parametrize("function", sorted(of_type(*FUNCTION_TYPES)))
def test_every_function_has_an_errors_and_a_throttles_alarm(function: str):
    assert alarmed("AWS/Lambda", "Errors", {"FunctionName": {"Ref": function}}), f"no Errors alarm on {function}"
    assert alarmed("AWS/Lambda", "Throttles", {"FunctionName": {"Ref": function}}), f"no Throttles alarm on {function}"


def stream_consumers() -> list[str]:
    # One alarm per function covers all its mappings: IteratorAge by FunctionName is the oldest
    # record of any of them (the alarms take the Maximum).
    return sorted(
        {
            name
            for name, function in of_type(*FUNCTION_TYPES).items()
            for event in (function["Properties"].get("Events") or {}).values()
            if event["Type"] in ("DynamoDB", "Kinesis")
        }
    )


def test_every_stream_consumer_has_an_iterator_age_alarm():
    assert stream_consumers() == ["BackorderFunction", "EventsFunction", "OutboxFunction"]
    for function in stream_consumers():
        assert alarmed("AWS/Lambda", "IteratorAge", {"FunctionName": {"Ref": function}}), function


def failure_queues() -> set[str]:
    """Every queue something parks its failures in: a RedrivePolicy's dead-letter target, or an
    OnFailure destination (of an event source mapping or of asynchronous invocations)."""
    queues = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("deadLetterTargetArn", "Destination"):
                target = node.get(key)
                if isinstance(target, dict) and "Fn::GetAtt" in target:
                    queue, attribute = target["Fn::GetAtt"]
                    if attribute == "Arn" and RESOURCES[queue]["Type"] == "AWS::SQS::Queue":
                        queues.add(queue)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(RESOURCES)
    return queues


def test_every_failure_queue_has_a_depth_and_an_age_alarm():
    assert failure_queues() >= {"OutboxFailureQueue", "ImportDeadLetterQueue", "ImportSplitFailureQueue"}
    for queue in failure_queues():
        dimensions = {"QueueName": {"Fn::GetAtt": [queue, "QueueName"]}}
        assert alarmed("AWS/SQS", "ApproximateNumberOfMessagesVisible", dimensions), f"no depth alarm on {queue}"
        assert alarmed("AWS/SQS", "ApproximateAgeOfOldestMessage", dimensions), f"no age alarm on {queue}"


@pytest.mark.parametrize(
    "state_machine", sorted(of_type("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"))
)
def test_every_workflow_has_failed_and_timed_out_alarms(state_machine: str):
    for metric in ("ExecutionsFailed", "ExecutionsTimedOut"):
        assert alarmed("AWS/States", metric, {"StateMachineArn": {"Ref": state_machine}}), (state_machine, metric)


def test_every_table_and_every_index_has_a_read_and_a_write_throttle_alarm():
    for table, resource in of_type("AWS::DynamoDB::Table").items():
        scopes = [{"TableName": {"Ref": table}}] + [
            {"TableName": {"Ref": table}, "GlobalSecondaryIndexName": index["IndexName"]}
            for index in resource["Properties"].get("GlobalSecondaryIndexes", [])
        ]
        for dimensions in scopes:
            for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
                assert alarmed("AWS/DynamoDB", metric, dimensions), (metric, dimensions)


def test_no_throttle_alarm_names_an_index_the_table_does_not_have():
    for name, (namespace, _, dimensions) in ALARMED:
        if namespace == "AWS/DynamoDB" and "GlobalSecondaryIndexName" in dimensions:
            table = RESOURCES[dimensions["TableName"]["Ref"]]
            indexes = {index["IndexName"] for index in table["Properties"]["GlobalSecondaryIndexes"]}
            assert dimensions["GlobalSecondaryIndexName"] in indexes, name


def test_the_api_5xx_alarm_is_a_rate_of_5xx_over_requests_and_latency_is_alarmed_at_p99():
    api = {"ApiName": {"Fn::Sub": "${AWS::StackName}-api"}}
    assert RESOURCES["OmsApi"]["Properties"]["Name"] == api["ApiName"]
    rate = ALARMS["Api5xxAlarm"]["Properties"]
    assert metrics_of(ALARMS["Api5xxAlarm"]) == [
        ("AWS/ApiGateway", "5XXError", api),
        ("AWS/ApiGateway", "Count", api),
    ]
    (expression,) = [query["Expression"] for query in rate["Metrics"] if "Expression" in query]
    assert "100 * errors / requests" in expression
    latency = alarmed("AWS/ApiGateway", "Latency", api)
    assert [ALARMS[name]["Properties"]["ExtendedStatistic"] for name in latency] == ["p99"]


def test_a_500_the_api_answers_itself_calls_a_person_and_the_new_versions_roll_a_canary_back():
    # Such a 500 is a response, not a failed invocation: no Lambda Errors alarm sees it, and
    # Api5xxAlarm waits for 1 % of a minute's requests. Its own metric (functions/api/errors.py),
    # with the API's `service` dimension: one in a minute is a page. The same point with the
    # version Lambda runs: one from the version a deployment published rolls its canary back
    # (before, the one alarm did both, and rolled back on the old version's 500s too).
    from functions.api.errors import INTERNAL_ERRORS_METRIC

    service = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    api = RESOURCES["ApiFunction"]["Properties"]
    assert "POWERTOOLS_SERVICE_NAME" not in api["Environment"]["Variables"]
    (person,) = alarmed(NAMESPACE, INTERNAL_ERRORS_METRIC, {"service": service})
    (canary,) = alarmed(NAMESPACE, INTERNAL_ERRORS_METRIC, {"service": service, "version": NEW_VERSION})
    for name in (person, canary):
        props = ALARMS[name]["Properties"]
        assert {key: props.get(key) for key in ("Statistic", "Period", "EvaluationPeriods", "DatapointsToAlarm")} == {
            "Statistic": "Sum",
            "Period": 60,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": None,
        }
        assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        assert props["TreatMissingData"] == "notBreaching"
        assert props["AlarmActions"] == props["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert {"Ref": canary} in api["DeploymentPreference"]["Alarms"]
    assert {"Ref": person} not in api["DeploymentPreference"]["Alarms"]


def test_a_canary_rolls_back_on_the_new_versions_errors_where_a_metric_names_a_version():
    # Lambda names the version an alias's invocation ran (ExecutedVersion), and the handler names
    # its own 500s' version: a canary alarm on either reads the version the deployment published,
    # so the old version's errors during the shift roll nothing back. API Gateway's metrics name
    # no version (Api5xxAlarm: both versions', at 1 % of a minute's requests).
    canary = [ref["Ref"] for ref in RESOURCES["ApiFunction"]["Properties"]["DeploymentPreference"]["Alarms"]]
    assert canary
    for name in canary:
        for namespace, _metric, dimensions in metrics_of(ALARMS[name]):
            if namespace == "AWS/Lambda":
                assert dimensions == {
                    "FunctionName": {"Ref": "ApiFunction"},
                    "Resource": {"Fn::Sub": "${ApiFunction}:live"},
                    "ExecutedVersion": NEW_VERSION,
                }, name
            elif namespace == NAMESPACE:
                assert dimensions.get("version") == NEW_VERSION, name
            else:
                assert namespace == "AWS/ApiGateway", name


# --- Runbooks -------------------------------------------------------------------------------------

RUNBOOKS = README[README.index("## Runbooks") :].split("\n## ", 1)[0]
RUNBOOK_HEADINGS = "\n".join(line for line in RUNBOOKS.splitlines() if line.startswith("### "))


@pytest.mark.parametrize("name", sorted(ALARMS))
def test_every_alarm_has_a_runbook_entry_by_logical_id(name: str):
    assert f"`{name}`" in RUNBOOK_HEADINGS, f"README Runbooks has no heading naming {name}"


def test_every_runbook_heading_names_alarms_that_exist():
    named = set(re.findall(r"`([A-Za-z0-9]+Alarm)`", RUNBOOK_HEADINGS))
    assert named == set(ALARMS)


def test_every_alarms_runbook_entry_says_what_it_means_how_to_look_and_how_to_recover():
    entries = [entry for entry in RUNBOOKS.split("\n### ")[1:] if "Alarm`" in entry.splitlines()[0]]
    assert len(entries) >= 30
    for entry in entries:
        for part in ("**Means**", "**Look**", "**Recover**"):
            assert part in entry, f"{entry.splitlines()[0]} has no {part}"


# --- The dashboard ----------------------------------------------------------------------------------

DASHBOARD = RESOURCES["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9:]+)(?:\.([A-Za-z]+))?\}")
DIMENSION_TYPES = {
    "FunctionName": FUNCTION_TYPES,
    "QueueName": ("AWS::SQS::Queue",),
    "TableName": ("AWS::DynamoDB::Table",),
    "StateMachineArn": ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"),
}


def dashboard() -> dict[str, Any]:
    """The body as CloudFormation would hand it to CloudWatch, with dummy values substituted."""
    return json.loads(PLACEHOLDER.sub(lambda match: f"dummy-{match.group(1)}", DASHBOARD))


def dashboard_metrics() -> list[list[Any]]:
    return [entry for widget in dashboard()["widgets"] for entry in widget.get("properties", {}).get("metrics", [])]


def test_the_dashboard_body_is_json_once_substituted():
    body = dashboard()
    titles = [widget["properties"].get("title") for widget in body["widgets"] if widget["type"] == "metric"]
    assert "Orders cancelled, by reason" in titles and "Lambda errors" in titles
    assert all(
        widget["properties"]["region"] == "dummy-AWS::Region"
        for widget in body["widgets"]
        if widget["type"] == "metric"
    )


def test_every_placeholder_of_the_dashboard_names_a_resource_or_a_pseudo_parameter():
    for resource, attribute in PLACEHOLDER.findall(DASHBOARD):
        assert resource in ("AWS::Region", "AWS::StackName") or resource in RESOURCES, resource
        if attribute:
            assert attribute == "QueueName" and RESOURCES[resource]["Type"] == "AWS::SQS::Queue", resource


def test_every_aws_metric_on_the_dashboard_is_of_a_resource_of_the_template():
    for entry in dashboard_metrics():
        if isinstance(entry[0], dict):
            continue  # an expression: its inputs are entries of their own
        namespace, _, *rest = entry
        names_and_values = [item for item in rest if not isinstance(item, dict)]
        dimensions = dict(zip(names_and_values[::2], names_and_values[1::2], strict=True))
        if not namespace.startswith("AWS/"):
            continue  # the OMS's own metric: the next test checks that the code emits it
        if namespace == "AWS/ApiGateway":
            assert dimensions == {"ApiName": "dummy-AWS::StackName-api"}, entry
            continue
        for dimension, value in dimensions.items():
            if dimension == "GlobalSecondaryIndexName":
                table = RESOURCES[dimensions["TableName"].removeprefix("dummy-")]
                assert value in {index["IndexName"] for index in table["Properties"]["GlobalSecondaryIndexes"]}, entry
                continue
            resource = RESOURCES[value.removeprefix("dummy-")]
            assert resource["Type"] in DIMENSION_TYPES[dimension], entry


def test_every_custom_metric_on_the_dashboard_is_emitted_by_the_code():
    searched = [
        re.fullmatch(r"SEARCH\('Namespace=\"(\w+)\" MetricName=\"(\w+)\"', '\w+', \d+\)", entry[0]["expression"])
        for entry in dashboard_metrics()
        if isinstance(entry[0], dict) and entry[0]["expression"].startswith("SEARCH")
    ]
    assert searched and all(searched)
    direct = [(entry[0], entry[1]) for entry in dashboard_metrics() if not isinstance(entry[0], dict)]
    custom = {(match[1], match[2]) for match in searched} | {
        (ns, name) for ns, name in direct if not ns.startswith("AWS/")
    }
    assert {"OrdersCancelled", "ImportedOrders", "RejectedOrders"} <= {name for _, name in custom}
    for namespace, name in custom:
        assert namespace == NAMESPACE
        assert any(emitted.fullmatch(name) for emitted in EMITTED), (
            f"the dashboard shows {name}, which no handler emits"
        )


def test_every_function_is_on_the_dashboards_error_throttle_and_duration_graphs():
    for metric in ("Errors", "Throttles", "Duration"):
        shown = {entry[3] for entry in dashboard_metrics() if entry[:3] == ["AWS/Lambda", metric, "FunctionName"]}
        assert shown == {f"dummy-{function}" for function in of_type(*FUNCTION_TYPES)}, metric


def _business_dimensions(name: str) -> set[frozenset[str]]:
    """The dimension names each `record("<name>", ...)` of functions/business_metrics.py gives it
    (printed without powertools' `service`), one set per call."""
    source = (ROOT / "functions" / "business_metrics.py").read_text()
    calls = re.findall(rf'record\(\s*"{name}"((?:[^()]|\([^()]*\))*)\)', source)
    return {frozenset(re.findall(r"\b(\w+)=", args)) for args in calls}


@pytest.mark.parametrize(
    ("alarm", "metric"), [(name, metric) for name, metric in ALARMED if metric[0] == NAMESPACE], ids=str
)
def test_an_alarm_on_the_oms_own_metric_names_it_with_the_dimensions_it_is_emitted_with(alarm: str, metric: Metric):
    """CloudWatch keeps a metric apart per dimension set: an alarm naming one the code never emits
    (a misspelt name, `service` where the business metrics print none, or the reverse) never fires.
    The business metrics (functions/business_metrics.py) carry only their own dimensions; every other
    metric is a powertools Metrics', which adds the service."""
    _, name, dimensions = metric
    assert any(emitted.fullmatch(name) for emitted in EMITTED), f"{alarm} watches {name}, which no handler emits"
    business = _business_dimensions(name)
    if business:
        assert set(dimensions) in business, (alarm, name, dimensions)
    else:
        assert name in ADDED_METRICS, (alarm, name)
        service = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
        # A point single_metric prints with the version Lambda runs (functions/api/errors.py).
        versioned = name in VERSIONED_METRICS and dimensions == {"service": service, "version": NEW_VERSION}
        assert dimensions == {"service": service} or versioned, (alarm, name)


def test_the_authorizer_errors_alarm_leaves_out_the_keys_it_refuses():
    # A Lambda authorizer answers 401 by raising "Unauthorized", which Lambda counts in Errors: the
    # alarm on Errors >= 1 called a person for every caller's bad or revoked key (a typo, a scanner)
    # and, firing all the time, hid the authorizer's real failures. It now counts Errors less the
    # refusals the authorizer records (ApiKeysRefused, timestamped at the invocation's start as Errors
    # is), over two minutes in a row: a refusal whose point lands in the next minute (a cold start's
    # init between the invocation and the handler) is +1 then -1, never two breaching minutes.
    alarm = RESOURCES["AuthorizerErrorsAlarm"]["Properties"]
    queries = {query["Id"]: query for query in alarm.get("Metrics", [])}
    assert [q["Expression"] for q in queries.values() if "Expression" in q] == ["FILL(errors, 0) - FILL(refused, 0)"]
    errors, refused = queries["errors"]["MetricStat"], queries["refused"]["MetricStat"]
    function = {"Name": "FunctionName", "Value": {"Ref": "AuthorizerFunction"}}
    assert errors["Metric"] == {"Namespace": "AWS/Lambda", "MetricName": "Errors", "Dimensions": [function]}
    service = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert refused["Metric"] == {
        "Namespace": NAMESPACE, "MetricName": "ApiKeysRefused", "Dimensions": [{"Name": "service", "Value": service}]
    }  # fmt: skip
    assert (errors["Stat"], errors["Period"]) == (refused["Stat"], refused["Period"]) == ("Sum", 60)
    assert not queries["errors"].get("ReturnData", True) and not queries["refused"].get("ReturnData", True)
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["TreatMissingData"]) == (2, 2, "notBreaching")


# --- The returns workflow's task: a rate, not one throw -----------------------------------------------

RETURN_ASL = json.loads((ROOT / "infra" / "return_workflow.asl.json").read_text())


def _attempts(state: dict[str, Any], error: str = "States.ALL") -> int:
    """How many times a task state runs for one error kind: the first attempt and its retries."""
    retrier = next(r for r in state.get("Retry", []) if error in r["ErrorEquals"])
    return 1 + retrier.get("MaxAttempts", 3)


def test_the_return_step_errors_alarm_pages_a_failing_function_not_a_throw_its_retry_fixed():
    # ReturnStepErrorsAlarm was Errors >= 1 a minute: one throw of a returns step that the state
    # machine's Retry then fixed (a refund the gateway refused once, a throttled write) called a person,
    # while a return left stuck is ReturnWorkflowFailedAlarm's. The task throws on purpose as the
    # order workflow's do (RefundNotDone, ReturnNotReceived, InsufficientStock...), so the alarm is a
    # rate, half its invocations failing over 5 minutes, gated on the errors (returns are few: a gate
    # on 10 invocations would never open for a small shop) at more than a step fixed by its retries throws.
    alarm = RESOURCES["ReturnStepErrorsAlarm"]["Properties"]
    queries = {query["Id"]: query for query in alarm.get("Metrics", [])}
    (expression,) = [q for q in queries.values() if "Expression" in q]
    match = re.fullmatch(r"IF\(errors >= (\d+), 100 \* errors / invocations, 0\)", expression["Expression"])
    assert match, expression
    floor = int(match[1])
    function = [{"Name": "FunctionName", "Value": {"Ref": "ReturnStepFunction"}}]
    for query_id, metric in (("errors", "Errors"), ("invocations", "Invocations")):
        stat = queries[query_id]["MetricStat"]
        assert stat["Metric"] == {"Namespace": "AWS/Lambda", "MetricName": metric, "Dimensions": function}
        assert (stat["Stat"], stat["Period"]) == ("Sum", 300)
        assert queries[query_id].get("ReturnData") is False
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (50, "GreaterThanOrEqualToThreshold")
    assert (alarm["EvaluationPeriods"], alarm["TreatMissingData"]) == (1, "notBreaching")

    states = RETURN_ASL["States"]
    steps = [state for name, state in states.items() if state["Type"] == "Task" and name != "ReturnStuck"]
    # A step that a retry fixes throws at most its retries' worth for a transient error: never the floor.
    assert all(_attempts(step) - 1 < floor for step in steps)
    # A function that fails every invocation throws, on one return, the first step's every attempt
    # and then ReturnStuck's: in one of the two 5-minute periods they may straddle, the floor at least.
    first = states[RETURN_ASL["StartAt"]]
    broken = _attempts(first) + _attempts(states["ReturnStuck"])
    assert -(-broken // 2) >= floor, (broken, floor)


# --- Failure records Lambda could not deliver ---------------------------------------------------------


def functions_with_an_on_failure_destination() -> list[str]:
    """Functions whose failed events (an asynchronous invocation's, or a stream batch's) Lambda sends on."""
    found = set()
    for name, function in of_type(*FUNCTION_TYPES).items():
        props = function["Properties"]
        if (props.get("EventInvokeConfig") or {}).get("DestinationConfig", {}).get("OnFailure"):
            found.add(name)
        for event in (props.get("Events") or {}).values():
            if (event["Properties"].get("DestinationConfig") or {}).get("OnFailure"):
                found.add(name)
    return sorted(found)


def test_every_on_failure_destination_delivery_is_alarmed():
    # When Lambda cannot send a failed batch's or event's record to its destination (the queue's policy
    # or the role refuses, the queue is gone, the record is too large), the record is lost and only
    # DestinationDeliveryFailures says so: nothing watched it.
    assert functions_with_an_on_failure_destination() == [
        "BackorderFunction", "EventsFunction", "ImportSplitterFunction", "OutboxFunction"
    ]  # fmt: skip
    for function in functions_with_an_on_failure_destination():
        (name,) = alarmed("AWS/Lambda", "DestinationDeliveryFailures", {"FunctionName": {"Ref": function}})
        props = ALARMS[name]["Properties"]
        assert (props["Statistic"], props["Period"], props["EvaluationPeriods"]) == ("Sum", 60, 1), name
        assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold"), name
        assert props["TreatMissingData"] == "notBreaching", name


# --- The dashboard shows the authorizer's real errors ---------------------------------------------------


def test_the_dashboards_lambda_errors_leave_out_the_keys_the_authorizer_refuses():
    # The graph counted each 401 of a bad API key as an authorizer error (Lambda counts the raised
    # "Unauthorized"): it now shows, as AuthorizerErrorsAlarm counts, Errors less ApiKeysRefused.
    (widget,) = [
        w["properties"] for w in dashboard()["widgets"] if w.get("properties", {}).get("title") == "Lambda errors"
    ]
    entries = widget["metrics"]
    by_id = {entry[-1]["id"]: entry for entry in entries if isinstance(entry[-1], dict) and "id" in entry[-1]}
    (shown,) = [entry[0] for entry in entries if isinstance(entry[0], dict) and "expression" in entry[0]]
    match = re.fullmatch(r"FILL\((\w+), 0\) - FILL\((\w+), 0\)", shown["expression"])
    assert match and "Authorizer" in shown["label"], shown
    errors, refused = by_id[match[1]], by_id[match[2]]
    assert errors[:4] == ["AWS/Lambda", "Errors", "FunctionName", "dummy-AuthorizerFunction"]
    service = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert refused[:4] == [NAMESPACE, "ApiKeysRefused", "service", service]
    assert errors[-1]["visible"] is False and refused[-1]["visible"] is False
    assert (widget["stat"], widget["period"]) == ("Sum", 60)  # as the alarm's
    hidden = [e for e in entries if isinstance(e[-1], dict) and e[-1].get("visible") is False]
    raw = [e for e in entries if e[:3] == ["AWS/Lambda", "Errors", "FunctionName"] and e not in hidden]
    assert "dummy-AuthorizerFunction" not in {e[3] for e in raw}
    assert len(raw) == len(of_type(*FUNCTION_TYPES)) - 1
