"""The scheduled jeopardy handler reports how many orders are late on every pass, zero included,
so OrdersInJeopardyAlarm (Maximum >= 1) holds exactly while any are, and counts what it expired."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import functions.jeopardy.app as jeopardy
from core.jeopardy import Scanned
from tests.integration.import_support import context


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], done: Scanned) -> dict[str, list]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    services = SimpleNamespace(plugins=SimpleNamespace(broken=[]), jeopardy_scan=SimpleNamespace(run=lambda **_: done))
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    # Powertools' metric set is shared by every Metrics of a namespace: what another test's
    # handler added and never flushed on this worker would otherwise be flushed here.
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()
    answer = jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))
    assert answer == {
        "marked": done.marked,
        "expired": done.expired,
        "returns_expired": done.returns_expired,
        "in_jeopardy": done.in_jeopardy,
        "captures_settled": [],
        "ships_held": [],
        "ships_unconfirmed": [],
    }
    metrics: dict[str, list] = {}
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        if "_aws" in record:
            for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                metrics[metric["Name"]] = record[metric["Name"]]
    return metrics


def test_a_pass_that_marks_orders_counts_them_and_every_open_one(monkeypatch, capsys):
    metrics = run(monkeypatch, capsys, Scanned(marked=["ord_a", "ord_b"], expired=["ord_c"], in_jeopardy=5))
    assert metrics == {"OrdersInJeopardy": [5.0], "OrdersMarkedInJeopardy": [2.0], "HoldsExpired": [1.0]}


def test_a_quiet_pass_still_reports_zero_late_orders(monkeypatch, capsys):
    assert run(monkeypatch, capsys, Scanned()) == {"OrdersInJeopardy": [0.0]}


def test_a_pass_that_expires_returns_counts_them(monkeypatch, capsys):
    metrics = run(monkeypatch, capsys, Scanned(returns_expired=["rma_a", "rma_b", "rma_c"]))
    assert metrics == {"OrdersInJeopardy": [0.0], "ReturnsExpired": [3.0]}
