"""Logs cannot be forged: what a client sends reaches a log line escaped, and names refuse controls."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from tests.integration.test_handlers import api, event, seeded  # noqa: F401 (a fixture)
from tests.integration.test_local_runtime import call, gateway

FORGED = "\r\n2026-12-01 12:00:00 INFO infra.local.http GET /admin -> 200"


def through_the_gateway(gw: Any, raw_path: str, query: str) -> None:
    environ = EnvironBuilder(method="GET", path="/health", query_string=query).get_environ()
    environ["RAW_URI"] = raw_path + ("?" + query if query else "")
    list(gw(environ, lambda status, headers: None))


def test_the_access_log_escapes_controls_in_the_path_and_the_query_names(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="infra.local.http")
    through_the_gateway(gateway(), "/health\x1b[2J\x1b[31m", "limit%0d%0aINFO%20forged=1&%1b%5b0m=2")
    lines = [r.getMessage() for r in caplog.records if r.name == "infra.local.http"]
    assert len(lines) == 1
    line = lines[0]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/health\\x1b[2J\\x1b[31m" in line
    assert "limit\\r\\nINFO forged" in line
    assert "\\x1b[0m" in line


def test_the_error_log_of_a_failing_handler_keeps_the_path_on_one_line(caplog: pytest.LogCaptureFixture):
    def explode(evt, context):
        raise RuntimeError("boom")

    status, _, _ = call(gateway(api=explode), "GET", "/files/a\r\nINFO forged\x1b[0m")
    assert status == 502  # a function error, as API Gateway answers it
    record = next(r for r in caplog.records if "the API handler raised" in r.getMessage())
    first_line = record.getMessage().splitlines()[0]
    assert first_line == "GET /files/a\\r\\nINFO forged\\x1b[0m: the API handler raised"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("customer", "name"), "Ada\r\nINFO forged", "customer.name"),
        (("shipping_address", "line1"), "1 Main St\x00", "shipping_address.line1"),
        (("shipping_address", "name"), "\x1b[31mAda", "shipping_address.name"),
        (("shipping_address", "city"), "Spring\u202edleif", "shipping_address.city"),
    ],
)
def test_an_order_with_a_control_or_bidi_override_in_a_name_or_address_is_422_naming_the_field(
    seeded,  # noqa: F811
    path: tuple[str, str],
    value: str,
    field: str,
):
    evt = event("api_place_order.json")
    body = json.loads(evt["body"])
    body[path[0]][path[1]] = value
    evt["body"] = json.dumps(body)
    status, answer = api(evt)
    assert status == 422
    assert answer["error"]["code"] == "validation_error"
    assert [d["field"] for d in answer["error"]["details"]] == [field]


def test_an_order_with_a_decomposed_name_is_stored_in_nfc(seeded):  # noqa: F811
    evt = event("api_place_order.json")
    body = json.loads(evt["body"])
    body["shipping_address"]["name"] = "Zoe\u0308"
    evt["body"] = json.dumps(body)
    status, answer = api(evt)
    assert status == 201, answer
    assert answer["shipping_address"]["name"] == "Zoë"


def test_a_direct_import_message_is_logged_with_its_external_id_and_reason_escaped(
    aws: Any, monkeypatch: pytest.MonkeyPatch
):
    from functions.import_worker import app
    from tests.builders import order_body
    from tests.integration.import_support import create_import_resources, seed_catalog

    stack = create_import_resources(aws, monkeypatch)
    seed_catalog()
    warnings: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(app.logger, "warning", lambda message, extra: warnings.append((message, extra)))
    forged = 'erp-9\r\n{"level":"INFO","message":"refund approved"}\x1b[2K\u202e'
    body = order_body(channel="erp", external_id=forged, lines=[{"sku": "TSHIRT", "quantity": 1}])
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))

    stack.drain(app.lambda_handler)

    [(_, extra)] = [w for w in warnings if w[0] == "order from the import queue rejected"]
    assert extra["external_id"] == 'erp-9\\r\\n{"level":"INFO","message":"refund approved"}\\x1b[2K\\u202e'
    assert not any(c in extra["reason"] for c in "\r\n\x1b\u202e")


def test_an_import_id_from_a_message_is_escaped_in_the_no_such_import_warning(
    aws: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from core.import_service import Outcome
    from core.models import utc_now
    from functions.import_worker.app import container
    from tests.integration.import_support import create_import_resources

    create_import_resources(aws, monkeypatch)
    caplog.set_level(logging.WARNING)

    forged = "imp_x\nERROR forged\x1b[0m"
    assert container().import_ledger.record(forged, 1, Outcome.IMPORTED, None, utc_now()) == "refused"

    [record] = [r for r in caplog.records if r.getMessage() == "no such import to record on"]
    assert record.import_id == "imp_x\\nERROR forged\\x1b[0m"


def test_a_carrier_failure_reaches_the_reconcilers_line_escaped(caplog: pytest.LogCaptureFixture):
    # What a carrier pass failed on holds a carrier's words (a tracking number, an error's text).
    from types import SimpleNamespace

    from core.carrier_bookings import CarrierWork
    from core.deadline import never
    from functions.reconciler.passes import Run, carrier_work, metrics

    forged = 'cancel of 1Z\r\n{"level":"INFO","message":"booking cancelled"}\x1b[2K\u202e: ConnectionError'
    sweep = SimpleNamespace(run=lambda actor, time_up: {"ord_1": CarrierWork(failed=[forged])})
    try:
        carrier_work(Run(lambda: SimpleNamespace(carrier_work_sweep=sweep), context=None), never)
    finally:
        metrics.clear_metrics()  # CarrierWorkFailed: powertools' one metric set, which no flush here empties

    [record] = [r for r in caplog.records if r.getMessage().startswith("carrier work still owed")]
    assert record.failure.startswith('cancel of 1Z\\r\\n{"level":"INFO"')
    assert not any(c in record.failure for c in "\r\n\x1b\u202e")
