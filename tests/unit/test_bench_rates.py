"""The bench prices an order at the burst's rate and at a steady one: what an invocation more per
order costs, the steady column built from the runs, the steady run's compressed clock, and the
scheduled functions charged at the template's rate, not the local stack's."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.__main__ as bench_main
from bench.__main__ import rates_markdown
from bench.cost import LAMBDA_PLATFORM_LOG_BYTES, PRICES, XRAY_SAMPLED_SHARE, Usage, combined
from bench.workflow import (
    MEASURED_SCHEDULE_SECONDS,
    STEADY_TIME_SCALE,
    DurationModel,
    UsageRecorder,
    as_billed,
    bill_lambda,
    feature_dollars,
    per_order_bill,
    run_schedules_every,
    schedule_periods,
    scheduled_charge,
    steady_stack_options,
)
from infra.local.event_sources import SCHEDULE_PERIOD_ENV
from infra.local.lambdas import RUNNING


def test_a_run_is_billed_with_lambda_s_lines_and_a_trace_per_request_and_outbox_run_and_left_as_it_was():
    run = Usage(api_requests=3)
    run.lambda_invocations.update({"ApiFunction": 3, "OutboxFunction": 1})

    billed = as_billed(run)

    assert billed.log_bytes == {"platform": 4 * LAMBDA_PLATFORM_LOG_BYTES}
    assert billed.traces == 4
    assert run.log_bytes == {} and run.traces == 0
    events = Usage(events_published=2)
    events.lambda_invocations["EventsFunction"] = 1
    assert feature_dollars(events, 1) == feature_dollars(events, 1)  # billing twice bills the same


def test_an_outbox_invocation_more_per_order_costs_its_request_its_platform_lines_and_a_sampled_trace():
    def bill(outbox_runs: int) -> dict:
        core = Usage(api_requests=2)
        core.lambda_invocations.update({"ApiFunction": 2, "OutboxFunction": outbox_runs})
        events = Usage()
        events.lambda_invocations["EventsFunction"] = 3
        return per_order_bill(core, {"events": events}, 2)

    one_window, two_windows = bill(1), bill(3)  # two orders: one invocation for both, or one each and one more

    assert one_window["lambda_invocations_per_order"] == {
        "ApiFunction": 1.0,
        "EventsFunction": 1.5,
        "OutboxFunction": 0.5,
    }
    assert two_windows["lambda_invocations_per_order"]["OutboxFunction"] == 1.5
    more = two_windows["total_per_million_orders"] - one_window["total_per_million_orders"]
    assert more == pytest.approx(PRICES["lambda_request"] * 1_000_000)  # an invocation more per order, per million
    # Its START/END/REPORT lines (PlatformLogLevel INFO) and its sampled trace are on top.
    platform_lines = LAMBDA_PLATFORM_LOG_BYTES / 1e9 * PRICES["logs_ingest_gb"]
    traced = two_windows["optional_per_million_orders"] - one_window["optional_per_million_orders"]
    assert traced == pytest.approx((platform_lines + XRAY_SAMPLED_SHARE * PRICES["xray_trace_recorded"]) * 1_000_000)
    assert one_window["features_per_million_orders"] == two_windows["features_per_million_orders"] > 0


def _bill(total: float, outbox: float, events: float) -> dict:
    return {
        "lambda_invocations_per_order": {"OutboxFunction": outbox, "EventsFunction": events},
        "total_per_million_orders": total,
        "optional_per_million_orders": 1.0,
        "features_per_million_orders": 10.0,
    }


def test_the_steady_column_is_the_burst_run_with_its_placing_swapped_for_the_steady_run_s():
    burst = {
        "clients": 4,
        "confirmation_batch": 50,
        "bill": _bill(total=25.0, outbox=0.05, events=0.1),  # capture to delivery
        "placing": _bill(total=20.0, outbox=0.05, events=0.06),  # of which POST to allocated
    }
    steady = {"orders": 10, "statuses": {"allocated": 10}, "seconds_apart_on_aws": 6.0, "time_scale": 0.2,
              "placing": _bill(total=21.5, outbox=1.0, events=1.5)}  # fmt: skip

    table = {
        cells[0]: cells[1:]
        for line in rates_markdown(burst, steady)
        if line.startswith("| ") and (cells := [cell.strip() for cell in line.strip("|").split("|")])
    }

    assert table["OutboxFunction invocations"] == ["0.050", "1.000"]  # the burst's confirmations started none
    assert table["EventsFunction invocations"] == ["0.100", "1.540"]  # 0.04 from the confirmations, kept
    assert table["**$ per million orders, logs and tracing included**"] == ["**26.00**", "**27.50**"]
    assert table["without the logs' INFO lines, Lambda's START/END/REPORT lines and X-Ray"] == ["25.00", "26.50"]
    assert table["**$ per million orders, with all of them**"] == ["**36.00**", "**37.50**"]


def test_a_share_that_cancels_out_is_not_shown_as_minus_zero():
    burst = {"clients": 4, "confirmation_batch": 50, "bill": _bill(25.0, 0.3, 0.3), "placing": _bill(20.0, 0.1, 0.4)}
    steady = {"orders": 10, "statuses": {}, "seconds_apart_on_aws": 6.0, "time_scale": 0.2,
              "placing": _bill(21.0, 1.0, 0.1)}  # fmt: skip

    assert 0.3 - 0.4 + 0.1 < 0  # in floating point
    assert "| EventsFunction invocations | 0.300 | 0.000 |" in rates_markdown(burst, steady)


def test_the_steady_run_compresses_the_windows_and_the_authorizer_s_cache_and_leaves_the_schedules(monkeypatch):
    for variable in (SCHEDULE_PERIOD_ENV, "OMS_JEOPARDY_SCAN_SECONDS"):
        monkeypatch.setenv(variable, "30")  # put back after the test

    options = steady_stack_options({"ApiRateLimit": 1_000_000})

    assert options["batching_window_scale"] == STEADY_TIME_SCALE
    # The template's 5 s cache, times the scale.
    assert options["parameter_overrides"] == {
        "ApiRateLimit": 1_000_000,
        "AuthorizerCacheSeconds": 5 * STEADY_TIME_SCALE,
    }
    # The schedules are charged by the clock (ScheduledRuns), whatever period they run on here.
    assert os.environ[SCHEDULE_PERIOD_ENV] == os.environ["OMS_JEOPARDY_SCAN_SECONDS"] == "30"


def test_both_runs_run_every_schedule_on_the_measuring_period_the_jeopardy_scan_s_own_variable_too(monkeypatch):
    for variable in (SCHEDULE_PERIOD_ENV, "OMS_JEOPARDY_SCAN_SECONDS"):
        monkeypatch.setenv(variable, "30")  # put back after the test

    run_schedules_every(MEASURED_SCHEDULE_SECONDS)

    assert float(os.environ[SCHEDULE_PERIOD_ENV]) == float(os.environ["OMS_JEOPARDY_SCAN_SECONDS"]) == 5.0


def test_the_scheduled_functions_periods_are_the_template_s_rates():
    assert dict(schedule_periods()) == {"ReconcilerFunction": 300.0, "JeopardyScanFunction": 300.0}


def _scheduled_runs(runs: int, queries: int, log_bytes: int, gb_seconds: float) -> Usage:
    usage = Usage(rru=0.5 * queries, lambda_gb_seconds=gb_seconds)
    usage.calls["dynamodb.Query"] = queries
    usage.by_function["JeopardyScanFunction dynamodb.Query"] = queries
    usage.log_bytes["metrics"] = log_bytes
    usage.lambda_invocations["JeopardyScanFunction"] = runs
    return usage


def test_a_scheduled_function_is_charged_its_measured_run_times_the_runs_its_template_period_gives():
    # Measured here: 4 jeopardy scans (every 5 s) of 2 queries each, and 1 reconciler pass.
    scans = _scheduled_runs(runs=4, queries=8, log_bytes=1000, gb_seconds=0.4)
    reconciler = Usage(wru=3.0)
    reconciler.lambda_invocations["ReconcilerFunction"] = 1

    # 30 s of orders on AWS: a tenth of each 5-minute period.
    charge = scheduled_charge({"JeopardyScanFunction": (scans, 4), "ReconcilerFunction": (reconciler, 1)}, 30.0)

    assert charge.lambda_invocations == pytest.approx({"JeopardyScanFunction": 0.1, "ReconcilerFunction": 0.1})
    assert charge.calls["dynamodb.Query"] == pytest.approx(0.2)
    assert charge.by_function["JeopardyScanFunction dynamodb.Query"] == pytest.approx(0.2)
    assert charge.rru == pytest.approx(0.1)
    assert charge.wru == pytest.approx(0.3)
    assert charge.lambda_gb_seconds == pytest.approx(0.01)
    assert charge.log_bytes["metrics"] == pytest.approx(25)
    assert scans.lambda_invocations["JeopardyScanFunction"] == 4  # the measurement left as it was


def test_a_scheduled_function_that_never_ran_is_refused_not_charged_nothing():
    with pytest.raises(ValueError, match="JeopardyScanFunction: no scheduled run was measured"):
        scheduled_charge({"JeopardyScanFunction": (Usage(), 0)}, 30.0)


def test_the_placing_s_bill_holds_the_scheduled_runs_at_the_template_s_rate_for_the_seconds_the_orders_came_over():
    placing = Usage(api_requests=100)
    placing.lambda_invocations["ApiFunction"] = 100
    scans = _scheduled_runs(runs=6, queries=12, log_bytes=600, gb_seconds=0.06)
    # 100 orders over 10 s: a thirtieth of a 5-minute scan; here it ran 6 times (every 5 s, ~30 s).
    charge = scheduled_charge({"JeopardyScanFunction": (scans, 6)}, 10.0)

    without = per_order_bill(placing, {}, 100)
    bill = per_order_bill(combined((placing, 1.0), (charge, 1.0)), {}, 100)

    assert bill["lambda_invocations_per_order"]["JeopardyScanFunction"] == pytest.approx(10 / 300 / 100)
    one_run = (
        PRICES["lambda_request"]
        + 2 * 0.5 * PRICES["dynamodb_rru"]
        + 0.01 * PRICES["lambda_gb_second_arm64"]
        + 100 / 1e9 * PRICES["logs_ingest_gb"]  # its metrics
    )
    more = bill["total_per_million_orders"] - without["total_per_million_orders"]
    assert more == pytest.approx(one_run * (10 / 300) / 100 * 1_000_000)
    platform_lines = LAMBDA_PLATFORM_LOG_BYTES / 1e9 * PRICES["logs_ingest_gb"]
    on_top = bill["optional_per_million_orders"] - without["optional_per_million_orders"]
    assert on_top == pytest.approx(platform_lines * (10 / 300) / 100 * 1_000_000)


@pytest.mark.usefixtures("running")
def test_a_scheduled_function_s_requests_and_lines_are_kept_apart_from_the_phase_s():
    recorder = UsageRecorder()
    RUNNING.function = "oms-local-JeopardyScanFunction"
    recorder.record("dynamodb", "Query", {"TableName": "orders"})
    recorder.running_usage().log_bytes["INFO"] += 10
    RUNNING.function = "oms-local-ApiFunction"
    recorder.record("dynamodb", "GetItem", {"TableName": "orders"})

    scans = recorder.scheduled["JeopardyScanFunction"]
    assert scans.calls == {"dynamodb.Query": 1} and scans.rru == 0.5 and scans.log_bytes == {"INFO": 10}
    assert scans.by_function == {"JeopardyScanFunction dynamodb.Query": 1}
    assert recorder.usage.calls == {"dynamodb.GetItem": 1}
    assert recorder.usage.by_function == {"ApiFunction dynamodb.GetItem": 1}


def test_a_phase_s_lambda_bill_leaves_the_scheduled_functions_out():
    functions = [
        SimpleNamespace(name=f"oms-local-{name}", invocations=3, memory_mb=1024)
        for name in ("ApiFunction", "JeopardyScanFunction")
    ]
    cpu = DurationModel()
    cpu.seconds.update({f.name: 0.5 for f in functions})
    usage, features = Usage(), defaultdict(Usage)

    bill_lambda(functions, usage, features, cpu, Counter(), {f.name: 1 for f in functions})

    assert usage.lambda_invocations == {"ApiFunction": 2}
    assert usage.lambda_gb_seconds == 0.5


@pytest.mark.parametrize(("statuses", "kept"), [({"allocated": 10}, False), ({"allocated": 9, "pending": 1}, True)])
def test_a_workflow_run_s_stderr_is_kept_and_named_when_an_order_did_not_settle(monkeypatch, capsys, statuses, kept):
    def run(command, *, stderr, **kwargs):
        stderr.write("not idle after 300.0 s: executions RUNNING [...]\n")
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps({"statuses": statuses}) + "\n")

    monkeypatch.setattr(bench_main.subprocess, "run", run)

    assert bench_main.workflow_run("steady")["statuses"] == statuses

    said = capsys.readouterr().err
    if not kept:
        assert said == ""
        return
    path = said.rsplit("its stderr is in ", 1)[1].strip()
    try:
        assert "pending" in said
        assert Path(path).read_text() == "not idle after 300.0 s: executions RUNNING [...]\n"
    finally:
        os.unlink(path)


def test_a_workflow_run_that_fails_names_the_file_its_stderr_is_in(monkeypatch):
    def run(command, *, stderr, **kwargs):
        stderr.write("Traceback (most recent call last): ...\n")
        return subprocess.CompletedProcess(command, 1, stdout="")

    monkeypatch.setattr(bench_main.subprocess, "run", run)

    with pytest.raises(RuntimeError, match="exited 1: its stderr is in ") as failed:
        bench_main.workflow_run()
    path = str(failed.value).rsplit(" ", 1)[1]
    try:
        assert Path(path).read_text().startswith("Traceback")
    finally:
        os.unlink(path)
