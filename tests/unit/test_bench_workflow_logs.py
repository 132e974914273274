"""The bench's log meter counts each EMF record a function prints as Lambda's would print it."""

from __future__ import annotations

import io
import json
import threading

import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from bench.cost import Usage
from bench.workflow import LogMeter, print_metrics_as_on_lambda
from infra.local.lambdas import RUNNING


@pytest.fixture
def metrics_on_as_in_the_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """print_metrics_as_on_lambda, with the environment and powertools' shared sets put back after."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # as the local stack sets it
    for name in ("_metrics", "_dimensions", "_metadata"):
        monkeypatch.setattr(Metrics, name, getattr(Metrics, name))
    print_metrics_as_on_lambda()


@pytest.mark.usefixtures("running")
def test_a_record_printed_in_pieces_is_counted_whole_by_its_first_pieces_level():
    usage = Usage()
    out = io.StringIO()
    meter = LogMeter(out, lambda: usage, threading.Lock())
    record = '{"_aws":{"Timestamp":1},"Http2xx":[1.0]}'
    info = '{"level":"INFO","message":"placed"}\n'
    RUNNING.function = "oms-local-ApiFunction"
    print(record, file=meter)  # two writes: the record, then its newline
    meter.write(info)
    meter.write("a plain ")
    meter.write("line\n")

    assert usage.log_bytes == {"metrics": len(record) + 1, "INFO": len(info), "other": len("a plain line\n")}
    assert out.getvalue() == record + "\n" + info + "a plain line\n"  # passed through unchanged


@pytest.mark.usefixtures("running", "metrics_on_as_in_the_bench")
def test_each_function_prints_only_its_own_metrics_as_its_own_process_would(capsys: pytest.CaptureFixture[str]):
    api, events = Metrics(namespace="Bench"), Metrics(namespace="Bench")
    RUNNING.function = "oms-local-ApiFunction"
    api.add_metric(name="Http2xx", unit=MetricUnit.Count, value=1)
    RUNNING.function = "oms-local-EventsFunction"  # runs while the API's run has not ended
    events.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=2)
    events.flush_metrics()
    RUNNING.function = "oms-local-ApiFunction"
    api.flush_metrics()

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [sorted(set(record) - {"_aws", "service"}) for record in records] == [["EventsPublished"], ["Http2xx"]]
    assert records[0]["EventsPublished"] == [2.0] and records[1]["Http2xx"] == [1.0]
    assert len(api.metric_set) == 0
