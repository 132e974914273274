"""One plugin failure is one ERROR line with one traceback, through the real API handler in-process
on moto: a plugin that raises is logged where it raised (`plugin raised`, core.hook_calls: its
plugin, hook, words and traceback, with the request's keys), and the API's line for the 502
(`plugin failed`, `payment plugin failed`) names the plugin and hook at WARNING without the
traceback again. An answer the core refuses has no `plugin raised` line: the API's is its ERROR."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from core.pricing_types import TaxRate
from tests.builders import order_body
from tests.integration import test_cancel_units_api, test_logging_hygiene
from tests.integration.in_process import InProcessApi
from tests.integration.test_hostile_plugins_api import only
from tests.integration.test_logging_hygiene import Captured
from tests.integration.test_payment_plugin_failures_api import authorize_step, failing, placed, registered
from tests.integration.test_plugins_in_the_api import answering

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east), in this module's account
logs = test_logging_hygiene.logs  # what every handler wrote

TRACEBACK = "Traceback (most recent call last)"


def lines_written(logs: Captured) -> list[dict[str, Any]]:
    """Every JSON log line written so far, as the functions' handler wrote it."""
    lines = []
    for text in logs.written().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    assert lines, "nothing was captured: the capture itself is broken"
    return lines


def the_one_error(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The one ERROR line among `lines`, and the one traceback written, which it holds."""
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1, [line["message"] for line in errors]
    (error,) = errors
    tracebacks = sum(json.dumps(line).count(TRACEBACK) for line in lines)
    assert tracebacks == 1, [line for line in lines if TRACEBACK in json.dumps(line)]
    assert TRACEBACK in error["exception"]
    return error


def test_a_plugin_raising_at_post_orders_is_one_error_line_naming_it_with_the_request_id(
    api: InProcessApi, logs: Captured
):
    with registered(only("oms_tax_rate", ValueError("tax service said: no rate for 94105"))):
        answer = api.post("/orders", json=order_body(lines=[{"sku": "MUG", "quantity": 1}]))

    assert answer.status_code == 502, answer.text
    (named,) = answer.json()["error"]["details"]
    lines = lines_written(logs)
    raised = the_one_error(lines)
    assert raised["message"] == "plugin raised"
    assert (raised["plugin"], raised["hook"], raised["error"]) == (named["plugin"], "oms_tax_rate", "ValueError")
    assert raised["reason"] == "tax service said: no rate for 94105"
    assert "tax service said" in raised["exception"]
    (failed,) = [line for line in lines if line["message"] == "plugin failed"]
    assert failed["level"] == "WARNING"
    assert (failed["plugin"], failed["hook"], failed["error_code"]) == (named["plugin"], "oms_tax_rate", "plugin_error")
    assert "exception" not in failed
    assert failed["location"].startswith("_plugin_error:")  # the handler that wrote it, as before
    # The request's id, on both: what ties the 502 to the plugin's words.
    assert raised["correlation_id"] and raised["correlation_id"] == failed["correlation_id"]


def test_a_payment_plugin_raising_at_a_ship_is_one_error_line_naming_it_and_the_order(
    api: InProcessApi, logs: Captured
):
    order = test_cancel_units_api.allocated(api, ("MUG", 1))
    (shipment,) = order["shipments"]

    with failing("capture"):
        answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})

    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "payment_plugin_error"
    lines = lines_written(logs)
    raised = the_one_error(lines)
    assert raised["message"] == "plugin raised"
    assert (raised["hook"], raised["error"], raised["order_id"]) == ("oms_payment_capture", "ValueError", order["id"])
    (failed,) = [line for line in lines if line["message"] == "payment plugin failed"]
    assert failed["level"] == "WARNING"
    assert (failed["operation"], failed["hook"]) == ("capture", "oms_payment_capture")
    assert failed["plugin"] == raised["plugin"]
    assert failed["order_id"] == order["id"]
    assert failed["correlation_id"] == raised["correlation_id"]
    assert "exception" not in failed


def test_an_answer_the_core_refuses_is_one_error_line_the_apis_with_its_traceback(api: InProcessApi, logs: Captured):
    # No plugin raised, so no `plugin raised`: the API's line is the only one that says it.
    with registered(answering("oms_tax_rate", TaxRate.model_construct(rate=Decimal("1E-100"), name="svc"))):
        answer = api.post("/orders", json=order_body(lines=[{"sku": "MUG", "quantity": 1}]))

    assert answer.status_code == 502, answer.text
    failed = the_one_error(lines_written(logs))
    assert failed["message"] == "plugin failed"
    assert (failed["hook"], failed["error_code"]) == ("oms_tax_rate", "plugin_error")
    assert failed["location"].startswith("_plugin_error:")
    assert failed["correlation_id"]


def test_a_payment_plugin_raising_in_a_workflow_step_is_one_error_line_naming_it_and_the_order(
    api: InProcessApi, logs: Captured
):
    # The step logs no traceback of its own (`workflow step raised`, WARNING): Lambda's error record
    # names the plugin and hook, so `plugin raised` is the one line with the plugin's words.
    order_id = placed(api)

    with failing("authorize"):
        authorize_step(order_id)

    lines = lines_written(logs)
    raised = the_one_error(lines)
    assert raised["message"] == "plugin raised"
    assert (raised["hook"], raised["order_id"]) == ("oms_payment_authorize", order_id)
    (step,) = [line for line in lines if line["message"] == "workflow step raised"]
    assert (step["level"], step["error"], step["order_id"]) == ("WARNING", "PluginError", order_id)
