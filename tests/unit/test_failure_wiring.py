"""template.yaml wires issue 10 item 4 together: the ParkOrder task, the alarm on the metric it
emits, the scheduled reconciler with its thresholds, and the outbox's parallel batches."""

from __future__ import annotations

import pytest

from infra.local.template import load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]


def _properties(name: str) -> dict:
    return RESOURCES[name]["Properties"]


def test_the_state_machine_may_invoke_the_park_order_function_it_names():
    workflow = _properties("OrderWorkflow")
    assert workflow["DefinitionSubstitutions"]["ParkOrderFunctionArn"] == {"Fn::GetAtt": ["ParkOrderFunction", "Arn"]}
    assert {"LambdaInvokePolicy": {"FunctionName": {"Ref": "ParkOrderFunction"}}} in workflow["Policies"]
    assert _properties("ParkOrderFunction")["Handler"] == "functions.workflow.park_order.lambda_handler"


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("OrdersParkedAlarm", "OrdersParked"),
        # Units a reorder point needed that no draft may take (functions/backorders/app.py): a
        # WARNING alone told nobody, and every later crossing of the sku is refused alike.
        ("ReordersNotDraftedAlarm", "ReordersNotDrafted"),
        # A customer notification the reconciler's retry pass gave up (functions/reconciler/app.py).
        ("NotificationsAbandonedAlarm", "NotificationsAbandoned"),
    ],
)
def test_a_count_alarm_watches_its_metric_as_powertools_emits_it(name: str, metric: str):
    alarm = _properties(name)
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (variables["POWERTOOLS_METRICS_NAMESPACE"], metric)
    # powertools adds the service as the one dimension: the alarm must name it exactly.
    assert alarm["Dimensions"] == [{"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["TreatMissingData"]) == ("Sum", 1, "notBreaching")


def test_an_alarm_calls_a_person_while_any_parcel_waits_to_be_confirmed_and_for_each_ship_found_dead():
    # A person must confirm whether each parcel left: the alarm stays on while the jeopardy scan's
    # gauge (every run, zero included: functions/jeopardy/app.py) counts a held order waiting for
    # that, not only in the 5 minutes a count of the run that held it lasts; a partly shipped order
    # cannot be held, and is a point of the same gauge in the run that found it
    # (functions/captures_report.py), so one metric tells the whole story and a missing point is
    # missing, not a zero.
    alarm = _properties("ShipsToConfirmAlarm")
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert "Metrics" not in alarm  # no metric math: a FILL made a failed count a zero
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"], alarm["Statistic"]) == (
        variables["POWERTOOLS_METRICS_NAMESPACE"], "ShipsWaitingToConfirm",
        [{"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}], "Maximum",
    )  # fmt: skip
    # The scan runs every 5 minutes (template.yaml's ScheduleMinutes feeds its rate): each period
    # holds a point of the gauge, unless a run lands late or its count failed.
    assert alarm["Period"] == 300
    assert TEMPLATE["Mappings"]["ScheduleMinutes"]["JeopardyScanFunction"] == {"Minutes": 5}
    assert _properties("JeopardyScanFunction")["Events"]["EveryFiveMinutes"]["Properties"]["Schedule"] == {
        "Fn::Sub": [
            "rate(${Minutes} minutes)",
            {"Minutes": {"Fn::FindInMap": ["ScheduleMinutes", "JeopardyScanFunction", "Minutes"]}},
        ]
    }
    # On while either of the last two periods' points counts one
    # (test_the_parcels_alarm_stays_on_while_a_parcel_waits_though_a_run_lands_late_or_its_count_fails).
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (2, 1)
    # No point at all (the scan not running, or its count failing) keeps the state.
    assert alarm["TreatMissingData"] == "ignore"


def _ships_alarm_states(points: list[tuple[int, float]], periods: int) -> list[bool]:
    """ShipsToConfirmAlarm as CloudWatch evaluates it, period by period (of its Period) over
    `points` (second of the day, ShipsWaitingToConfirm), starting OK: each period's Maximum, or
    none where it holds no point; the last EvaluationPeriods periods' points breaching
    DatapointsToAlarm of them or more (ALARM, True), or not (OK, False), when they hold at least
    DatapointsToAlarm points; fewer, and each missing one is taken as TreatMissingData says
    (`ignore` with no point at all: the state stays as it was)."""
    alarm = _properties("ShipsToConfirmAlarm")
    period, evaluated = alarm["Period"], alarm["EvaluationPeriods"]
    needed = alarm.get("DatapointsToAlarm", evaluated)
    assert alarm["Statistic"] == "Maximum" and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    values = [max((value for at, value in points if at // period == index), default=None) for index in range(periods)]
    states, state = [], False
    for end in range(periods):
        window = [value for value in values[max(0, end - evaluated + 1) : end + 1] if value is not None]
        if len(window) >= needed:
            state = sum(value >= alarm["Threshold"] for value in window) >= needed
        else:
            missing = {"breaching": True, "notBreaching": False}.get(alarm["TreatMissingData"])
            if missing is not None:
                state = missing or sum(value >= alarm["Threshold"] for value in window) >= needed
            # ignore (or missing): the state stays as it was
        states.append(state)
    return states


def test_the_parcels_alarm_stays_on_while_a_parcel_waits_though_a_run_lands_late_or_its_count_fails():
    # The scan runs every 5 minutes, but its point lands when the run ends: a run that ends a
    # little later than the one before (12:04:59, then 12:10:01) leaves the period between them
    # without a point. The alarm must not go OK for that period (an OK notification for an order
    # still waiting) and back to ALARM on the next run.
    waiting = [(299, 1.0), (601, 1.0), (900, 1.0), (1200, 1.0)]
    assert _ships_alarm_states(waiting, 5) == [True] * 5
    # A run whose count failed (the index throttled) publishes no point: two or more in a row left
    # two periods without one, which FILL(waiting, 0) made zeros, clearing the alarm (and mailing
    # its OK) while the parcel still waited. No point keeps the state.
    assert _ships_alarm_states(waiting, 9) == [True] * 9
    # Once a person ended the last wait, the zeros the runs publish clear it.
    assert _ships_alarm_states([*waiting, (1500, 0.0), (1800, 0.0)], 7)[-1] is False
    # A partly shipped order found by a run (a point of the gauge in that run) raises it though
    # that run's count failed, for the two periods its point is in the window.
    assert _ships_alarm_states([(0, 0.0), (301, 2.0), (900, 0.0), (1200, 0.0)], 5) == [False, True, True, False, False]


def test_an_alarm_calls_a_person_for_each_void_the_gateway_refused_no_plugin_took_or_its_plugin_failed():
    # A refused void answers 200 (a cancel, an edit) and is never asked again by a sweep: the hold
    # stays on the customer's card unless a person is told. The business metric has exactly the
    # dimensions functions/business_metrics.py gives it (no service).
    alarm = _properties("VoidsNotMadeAlarm")
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    read = {query["Id"]: query["MetricStat"] for query in alarm["Metrics"] if "MetricStat" in query}
    assert {
        (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"],
         tuple((d["Name"], d["Value"]) for d in stat["Metric"]["Dimensions"]), stat["Stat"])
        for stat in read.values()
    } == {
        (variables["POWERTOOLS_METRICS_NAMESPACE"], "PaymentFailures", (("operation", "void"), ("kind", kind)), "Sum")
        for kind in ("refused", "no_plugin", "plugin_error")
    }  # fmt: skip
    (expression,) = [query for query in alarm["Metrics"] if "Expression" in query]
    # A point of only one kind in a period still counts (the other series is missing, not 0).
    assert expression["Expression"] == " + ".join(f"FILL({query_id}, 0)" for query_id in read)
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["TreatMissingData"]) == (
        1, "GreaterThanOrEqualToThreshold", "notBreaching",
    )  # fmt: skip


def test_the_reconciler_runs_every_five_minutes_with_the_thresholds_as_parameters():
    reconciler = _properties("ReconcilerFunction")
    assert reconciler["Handler"] == "functions.reconciler.app.lambda_handler"
    variables = reconciler["Environment"]["Variables"]
    # The rate and the period the reconciler counts its turn in (functions/schedule.py): one entry.
    minutes = {"Fn::FindInMap": ["ScheduleMinutes", "ReconcilerFunction", "Minutes"]}
    assert reconciler["Events"]["EveryFiveMinutes"] == {
        "Type": "Schedule",
        "Properties": {"Schedule": {"Fn::Sub": ["rate(${Minutes} minutes)", {"Minutes": minutes}]}},
    }
    assert TEMPLATE["Mappings"]["ScheduleMinutes"]["ReconcilerFunction"] == {"Minutes": 5}
    assert variables["OMS_SCHEDULE_MINUTES_RECONCILERFUNCTION"] == minutes
    assert variables["RECONCILE_AFTER_MINUTES"] == {"Ref": "ReconcileAfterMinutes"}
    assert variables["RECONCILE_PARK_AFTER_MINUTES"] == {"Ref": "ParkStalledAfterMinutes"}
    parameters = TEMPLATE["Parameters"]
    assert parameters["ReconcileAfterMinutes"]["MinValue"] > 5  # an Express execution may run 5 minutes
    assert parameters["ParkStalledAfterMinutes"]["Default"] > parameters["ReconcileAfterMinutes"]["Default"]
    assert reconciler["Timeout"] > TEMPLATE["Globals"]["Function"]["Timeout"]  # up to 200 starts a pass


def test_the_outbox_runs_several_batches_of_a_shard_at_once():
    stream = _properties("OutboxFunction")["Events"]["OrdersStream"]["Properties"]
    assert stream["ParallelizationFactor"] == 10  # AWS's maximum


def test_a_failed_scheduled_run_is_not_run_again_and_its_errors_alarm_holds_until_a_run_succeeds():
    # A scheduled run is invoked asynchronously: by default Lambda runs a failed one twice more with
    # the same event, so one return that keeps failing (the reconciler fails by design, to page)
    # ran every pass three times a period, and the jeopardy scan redid the same part (its turn is
    # the event's time). The next scheduled run is the retry.
    for function, alarm in (
        ("ReconcilerFunction", "ReconcilerErrorsAlarm"),
        ("JeopardyScanFunction", "JeopardyScanErrorsAlarm"),
    ):
        assert _properties(function)["EventInvokeConfig"] == {"MaximumRetryAttempts": 0}, function
        # One failed run a period (no retries in the minutes after it) still fires the alarm, and
        # keeps it firing until two periods pass with none: not ALARM, OK and ALARM again each period.
        errors = _properties(alarm)
        assert (errors["Namespace"], errors["MetricName"], errors["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
        assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
        assert (errors["Threshold"], errors["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        minutes = TEMPLATE["Mappings"]["ScheduleMinutes"][function]["Minutes"]
        assert errors["Period"] == 60 and errors["DatapointsToAlarm"] == 1
        # Two failed runs' Errors points can be further apart than the schedule's period: a
        # scheduled run starts within the minute its time names (a schedule's precision), the point
        # falls anywhere in the run (up to its Timeout), and it reaches CloudWatch a minute or so
        # later. A window of only the period plus one minute (6) let the earlier point leave before
        # the later one counted: OK, then ALARM again, each period (two pages a period).
        longest_gap = minutes * 60 + 60 + _properties(function)["Timeout"] + 60
        assert errors["EvaluationPeriods"] * errors["Period"] >= longest_gap, alarm
        assert errors["TreatMissingData"] == "notBreaching"


def test_the_jeopardy_alarm_holds_while_no_count_of_late_orders_is_reported():
    # A run whose count failed (ScanIncomplete: the by_sla index throttled) reports no
    # OrdersInJeopardy point rather than a zero that would clear the alarm; treated as not
    # breaching, the missing point cleared it all the same (and sent its OK) while the late orders
    # stayed open. A period with no point (the count failed, the run late past the period's end)
    # keeps the alarm as it was; JeopardyScanErrorsAlarm calls a person for the failed run.
    alarm = _properties("OrdersInJeopardyAlarm")
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (variables["POWERTOOLS_METRICS_NAMESPACE"], "OrdersInJeopardy")
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Maximum", 1, "GreaterThanOrEqualToThreshold",
    )  # fmt: skip
    assert alarm["TreatMissingData"] == "ignore"
