"""The bench's own-CPU profile measures the API handler as it runs on Lambda."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from bench.request_profile import as_on_lambda


def test_each_invocation_starts_with_the_empty_metric_set_lambdas_flush_leaves(monkeypatch: pytest.MonkeyPatch):
    # As bench sets it: log_metrics then neither prints the set nor clears it.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metrics = Metrics(namespace="Bench", service="bench")
    metrics.clear_metrics()
    seen: list[int] = []

    @metrics.log_metrics
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        metrics.add_metric(name="Http2xx", unit=MetricUnit.Count, value=1)
        seen.append(len(metrics.metric_set["Http2xx"]["Value"]))
        if event.get("fail"):
            raise RuntimeError("the handler failed")
        return {"statusCode": 201}

    invoke = as_on_lambda(handler)
    try:
        assert [invoke({}, None)["statusCode"] for _ in range(3)] == [201, 201, 201]
        with pytest.raises(RuntimeError):
            invoke({"fail": True}, None)
        invoke({}, None)

        assert seen == [1, 1, 1, 1, 1]
        assert metrics.metric_set == {}
    finally:
        metrics.clear_metrics()
