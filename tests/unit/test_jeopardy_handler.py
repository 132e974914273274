"""The scheduled jeopardy handler reports how many orders are late on every pass, zero included,
so OrdersInJeopardyAlarm (Maximum >= 1) holds exactly while any are, and counts what it expired."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import functions.jeopardy.app as jeopardy
from core.capture_sweep import CapturesSettled
from core.jeopardy import ScanIncomplete, Scanned
from tests.builders import template_schedule
from tests.integration.import_support import context


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], done: Scanned) -> dict[str, list]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]),
        jeopardy_scan=SimpleNamespace(run=lambda **_: done, count_ships_to_confirm=lambda: 0),
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    # Powertools' metric set is shared by every Metrics of a namespace: what another test's
    # handler added and never flushed on this worker would otherwise be flushed here.
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()
    answer = jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))
    assert answer == {
        "marked": done.marked,
        "unmarked": done.unmarked,
        "expired": done.expired,
        "returns_expired": done.returns_expired,
        "in_jeopardy": done.in_jeopardy,
        "captures_settled": [],
        "ships_held": [],
        "ships_unconfirmed": [],
        "ships_to_confirm": 0,
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
    assert metrics == {
        "OrdersInJeopardy": [5.0], "OrdersMarkedInJeopardy": [2.0], "HoldsExpired": [1.0],
        "ShipsWaitingToConfirm": [0.0],
    }  # fmt: skip


def test_each_order_marked_is_logged_past_the_deadline_of_its_status(monkeypatch, caplog, capsys):
    # A partly shipped order marked for a refused refund too: its status has a deadline by default.
    done = Scanned(marked=["ord_late", "ord_refund"], in_jeopardy=2)
    assert run(monkeypatch, capsys, done)["OrdersMarkedInJeopardy"] == [2.0]
    logged = {r.order_id: r.getMessage() for r in caplog.records if r.getMessage().startswith("order in jeopardy")}
    assert logged == {
        "ord_late": "order in jeopardy: past the deadline of its status",
        "ord_refund": "order in jeopardy: past the deadline of its status",
    }


def test_a_quiet_pass_still_reports_zero_late_orders(monkeypatch, capsys):
    # ShipsToConfirmAlarm's gauge too, zero included: the alarm clears only on a zero.
    assert run(monkeypatch, capsys, Scanned()) == {"OrdersInJeopardy": [0.0], "ShipsWaitingToConfirm": [0.0]}


def test_a_pass_that_expires_returns_counts_them(monkeypatch, capsys):
    metrics = run(monkeypatch, capsys, Scanned(returns_expired=["rma_a", "rma_b", "rma_c"]))
    assert metrics == {"OrdersInJeopardy": [0.0], "ReturnsExpired": [3.0], "ShipsWaitingToConfirm": [0.0]}


def test_the_capture_settlements_start_no_order_once_the_invocation_is_nearly_over(monkeypatch, caplog, capsys):
    """The scan may take most of the function's minute: the capture settlements after it ask the
    gateway of no more orders once less than the reserve is left (ended by the timeout, the run
    would log and count nothing of what it did). Those left were not marked: the next scan hands
    them on again."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    done = Scanned(captures_left=["ord_a", "ord_b", "ord_c"])
    asked: list[str] = []

    class Sweep:
        def run(self, order_ids, actor, *, time_up):
            for order_id in order_ids:
                if time_up():
                    break
                asked.append(order_id)
                left["millis"] = 5_000  # the first order's gateway took the time
            return CapturesSettled(settled=list(asked), held=[], unconfirmed=[])

    left = {"millis": 40_000}
    invocation = context("JeopardyScanFunction")
    monkeypatch.setattr(type(invocation), "get_remaining_time_in_millis", lambda self: left["millis"])
    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]),
        jeopardy_scan=SimpleNamespace(run=lambda **_: done, count_ships_to_confirm=lambda: 0),
        capture_sweep=Sweep(),
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    answer = jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, invocation)

    assert asked == ["ord_a"] and answer["captures_settled"] == ["ord_a"]
    [warned] = [r for r in caplog.records if r.getMessage().startswith("capture settlements cut short")]
    assert warned.levelname == "WARNING"
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["JeopardyScansCutShort"] for record in printed if "JeopardyScansCutShort" in record] == [[1.0]]


def test_the_scan_itself_starts_nothing_once_the_invocation_is_nearly_over_and_says_so(monkeypatch, caplog, capsys):
    """A backlog may take the scan past the function's minute: it is given a deadline that leaves
    the count, the capture settlements and the report their time, and a run the deadline cut short
    logs it and counts it once; each scheduled run passes its turn, so the next starts with the
    next part of the scan."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    left = {"millis": 40_000}
    given: dict[str, object] = {}

    def scan(*, expire_holds, time_up, turn):
        given.update(turn=turn, first=time_up())
        left["millis"] = jeopardy.SCAN_RESERVE_MILLIS - 1  # the first order took the time
        given["then"] = time_up()
        return Scanned(marked=["ord_a"], in_jeopardy=1)

    invocation = context("JeopardyScanFunction")
    monkeypatch.setattr(type(invocation), "get_remaining_time_in_millis", lambda self: left["millis"])
    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]), jeopardy_scan=SimpleNamespace(run=scan, count_ships_to_confirm=lambda: 0)
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    monkeypatch.setenv(*template_schedule("JeopardyScanFunction"))
    answer = jeopardy.lambda_handler({"detail-type": "Scheduled Event", "time": "2026-12-03T12:05:00Z"}, invocation)

    assert answer["marked"] == ["ord_a"] and (given["first"], given["then"]) == (False, True)
    assert jeopardy.SCAN_RESERVE_MILLIS > jeopardy.RESERVE_MILLIS  # the settlements after it keep their time
    assert given["turn"] == 1_796_299_500 // 300  # 2026-12-03T12:05:00Z, in the template's 5 minutes
    [warned] = [r for r in caplog.records if r.getMessage().startswith("jeopardy scan cut short")]
    assert warned.levelname == "WARNING"
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["JeopardyScansCutShort"] for record in printed if "JeopardyScansCutShort" in record] == [[1.0]]


def test_each_scheduled_scan_takes_the_next_turn_by_the_schedule_the_template_gives_it(monkeypatch):
    from infra.local.event_sources import schedule_period
    from infra.local.template import Template, load_template

    schedule = load_template()["Resources"]["JeopardyScanFunction"]["Properties"]["Events"]["EveryFiveMinutes"]
    assert schedule["Type"] == "Schedule"  # an EventBridge rule: its event carries the run's `time`
    # The period the scan counts its turn in is the rate it runs on: one Mappings entry, read by both.
    name, minutes = template_schedule("JeopardyScanFunction")
    assert schedule_period(Template.load().resolve(schedule["Properties"]["Schedule"]), "template") == 300
    assert float(minutes) == 5
    monkeypatch.setenv(name, minutes)
    # The scan starts nothing with SCAN_RESERVE_MILLIS left: a timeout barely over it would leave it no time.
    timeout = load_template()["Resources"]["JeopardyScanFunction"]["Properties"]["Timeout"]
    assert timeout * 1000 >= 2 * jeopardy.SCAN_RESERVE_MILLIS
    turns = [jeopardy._turn({"time": f"2026-12-03T12:{5 * n:02d}:00Z"}) for n in range(3)]
    assert [turn - turns[0] for turn in turns] == [0, 1, 2]
    assert jeopardy._turn({"detail-type": "Scheduled Event"}) == 0  # by hand: the first part first


def test_a_scan_part_that_failed_outright_still_reports_what_the_others_did_then_fails(monkeypatch, caplog, capsys):
    # A part that raised (the Returns table throttled) ended the handler before its report: the
    # orders the parts before it marked and the holds they cancelled were never logged nor counted,
    # and OrdersInJeopardy went without its point.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    down = RuntimeError("the Returns table is throttled")
    done = Scanned(marked=["ord_a"], expired=["ord_b"], in_jeopardy=3)

    def scan(**_):
        raise ScanIncomplete(done, [("returns requested", down)])

    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]), jeopardy_scan=SimpleNamespace(run=scan, count_ships_to_confirm=lambda: 0)
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    with pytest.raises(ScanIncomplete):  # the errors alarm calls a person
        jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))

    metrics: dict[str, list] = {}
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        for metric in record.get("_aws", {}).get("CloudWatchMetrics", [{}])[0].get("Metrics", []):
            metrics[metric["Name"]] = record[metric["Name"]]
    assert metrics == {
        "OrdersInJeopardy": [3.0],
        "OrdersMarkedInJeopardy": [1.0],
        "HoldsExpired": [1.0],
        "ShipsWaitingToConfirm": [0.0],  # the parts that ran are reported, and the parcels' gauge
    }
    logged = {r.getMessage(): r for r in caplog.records}
    assert {"order in jeopardy: past the deadline of its status", "order cancelled: its hold expired"} <= set(logged)
    failed = logged["jeopardy scan part failed: the next run does it again"]
    assert (failed.levelname, failed.part, failed.exc_info[1]) == ("ERROR", "returns requested", down)


def test_a_scan_whose_count_failed_reports_no_count_rather_than_zero(monkeypatch, capsys):
    # Zero would clear OrdersInJeopardyAlarm while late orders are open.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    done = Scanned(marked=["ord_a"], in_jeopardy=None)

    def scan(**_):
        raise ScanIncomplete(done, [("count", RuntimeError("the by_sla index is throttled"))])

    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]), jeopardy_scan=SimpleNamespace(run=scan, count_ships_to_confirm=lambda: 0)
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    with pytest.raises(ScanIncomplete):
        jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))

    printed = capsys.readouterr().out
    assert "OrdersMarkedInJeopardy" in printed and 'OrdersInJeopardy"' not in printed


def _metrics_printed(output: str) -> dict[str, list]:
    metrics: dict[str, list] = {}
    for line in output.splitlines():
        record = json.loads(line)
        for metric in record.get("_aws", {}).get("CloudWatchMetrics", [{}])[0].get("Metrics", []):
            metrics[metric["Name"]] = record[metric["Name"]]
    return metrics


@pytest.mark.parametrize(
    ("count", "unconfirmed", "gauge"),
    [
        (3, [], [3.0]),  # the count, zero included
        (0, [], [0.0]),
        (2, ["ord_p"], [3.0]),  # partly shipped, so not held and in no count: the run that found it adds it
        (None, [], None),  # the count failed: no point (a zero cleared ShipsToConfirmAlarm while parcels waited)
        (None, ["ord_p", "ord_q"], [2.0]),  # the count failed: what it found still raises it
    ],
)
def test_the_parcels_gauge_is_a_floor_of_the_orders_waiting_and_never_a_zero_the_count_did_not_give(
    monkeypatch, capsys, caplog, count, unconfirmed, gauge
):
    # ShipsToConfirmAlarm watches ShipsWaitingToConfirm alone, keeping its state through a period
    # with no point: a run whose count failed publishes no zero, and fails (JeopardyScanErrorsAlarm).
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    done = Scanned(captures_left=list(unconfirmed))
    throttled = RuntimeError("the by_pickup_deadline index is throttled")

    def counted() -> int:
        if count is None:
            raise throttled
        return count

    class Sweep:
        def run(self, order_ids, actor, *, time_up):
            return CapturesSettled(settled=list(order_ids), held=[], unconfirmed=list(order_ids))

    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]),
        jeopardy_scan=SimpleNamespace(run=lambda **_: done, count_ships_to_confirm=counted),
        capture_sweep=Sweep(),
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    if count is None:
        with pytest.raises(RuntimeError) as raised:
            jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))
        assert raised.value is throttled
        [logged] = [r for r in caplog.records if r.getMessage().startswith("parcels waiting to confirm not counted")]
        assert logged.levelname == "ERROR"
    else:
        answer = jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))
        assert answer["ships_to_confirm"] == count

    metrics = _metrics_printed(capsys.readouterr().out)
    assert metrics.get("ShipsWaitingToConfirm") == gauge
    assert metrics.get("ShipsToConfirm") == ([float(len(unconfirmed))] if unconfirmed else None)


@pytest.mark.parametrize(("count", "gauge"), [(0, [2.0]), (1, [2.0]), (5, [5.0])])
def test_the_orders_a_run_held_count_in_its_point_though_the_index_has_not_caught_up(monkeypatch, capsys, count, gauge):
    # The count reads a global secondary index, eventually consistent: the orders this run's sweep
    # has just held may not be in it yet, and its point said zero (the alarm, watching this metric
    # alone, neither fired for them nor stayed on for them) until the next run. Each is waiting now.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    held = ["ord_h1", "ord_h2"]

    class Sweep:
        def run(self, order_ids, actor, *, time_up):
            return CapturesSettled(settled=list(order_ids), held=list(order_ids), unconfirmed=[])

    services = SimpleNamespace(
        plugins=SimpleNamespace(broken=[]),
        jeopardy_scan=SimpleNamespace(
            run=lambda **_: Scanned(captures_left=held), count_ships_to_confirm=lambda: count
        ),
        capture_sweep=Sweep(),
    )
    monkeypatch.setattr(jeopardy, "container", lambda: services)
    jeopardy.metrics.clear_metrics()
    capsys.readouterr()

    jeopardy.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))

    assert _metrics_printed(capsys.readouterr().out).get("ShipsWaitingToConfirm") == gauge
