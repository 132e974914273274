"""The bench prices an order at the burst's rate and at a steady one: what an invocation more per
order costs, the steady column built from the runs, and the steady run's compressed clock."""

from __future__ import annotations

import os

import pytest

from bench.__main__ import rates_markdown
from bench.cost import LAMBDA_PLATFORM_LOG_BYTES, PRICES, XRAY_SAMPLED_SHARE, Usage
from bench.workflow import STEADY_TIME_SCALE, as_billed, feature_dollars, per_order_bill, steady_stack_options
from infra.local.event_sources import SCHEDULE_PERIOD_ENV


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
    per_invocation = PRICES["lambda_request"] + LAMBDA_PLATFORM_LOG_BYTES / 1e9 * PRICES["logs_ingest_gb"]
    more = two_windows["total_per_million_orders"] - one_window["total_per_million_orders"]
    assert more == pytest.approx(per_invocation * 1_000_000)  # an invocation more per order, per million orders
    traced = two_windows["optional_per_million_orders"] - one_window["optional_per_million_orders"]
    assert traced == pytest.approx(XRAY_SAMPLED_SHARE * PRICES["xray_trace_recorded"] * 1_000_000)
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
    assert table["**$ per million orders, without the optional features**"] == ["25.00", "26.50"]
    assert table["**$ per million orders, with all of them**"] == ["**36.00**", "**37.50**"]


def test_a_share_that_cancels_out_is_not_shown_as_minus_zero():
    burst = {"clients": 4, "confirmation_batch": 50, "bill": _bill(25.0, 0.3, 0.3), "placing": _bill(20.0, 0.1, 0.4)}
    steady = {"orders": 10, "statuses": {}, "seconds_apart_on_aws": 6.0, "time_scale": 0.2,
              "placing": _bill(21.0, 1.0, 0.1)}  # fmt: skip

    assert 0.3 - 0.4 + 0.1 < 0  # in floating point
    assert "| EventsFunction invocations | 0.300 | 0.000 |" in rates_markdown(burst, steady)


def test_the_steady_run_compresses_the_windows_the_authorizer_s_cache_and_the_schedules_alike(monkeypatch):
    for variable in (SCHEDULE_PERIOD_ENV, "OMS_JEOPARDY_SCAN_SECONDS"):
        monkeypatch.setenv(variable, "30")  # put back after the test; the steady run sets its own

    options = steady_stack_options({"ApiRateLimit": 1_000_000})

    assert options["batching_window_scale"] == STEADY_TIME_SCALE
    # The template's 5 s cache and 5-minute schedules, times the scale.
    assert options["parameter_overrides"] == {
        "ApiRateLimit": 1_000_000,
        "AuthorizerCacheSeconds": 5 * STEADY_TIME_SCALE,
    }
    assert (
        float(os.environ[SCHEDULE_PERIOD_ENV])
        == float(os.environ["OMS_JEOPARDY_SCAN_SECONDS"])
        == 300 * STEADY_TIME_SCALE
    )
