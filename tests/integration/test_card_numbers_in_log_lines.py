"""No log line carries a card number, whatever text brings it there: a plugin's exception (its words
and traceback in the line `plugin raised`, in the API as in a workflow task), through the real API
handler and the workflow's task handlers in-process on moto. What leaves a failing workflow task
(the Lambda error record, the Step Functions Cause built from it) names the plugin, not its words."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from core import hookimpl
from core.card_numbers import MASK, contains_card_number
from tests.builders import order_body
from tests.integration import test_cancel_units_api, test_logging_hygiene
from tests.integration.in_process import InProcessApi
from tests.integration.test_hostile_plugins_api import only
from tests.integration.test_logging_hygiene import Captured
from tests.integration.test_payment_plugin_failures_api import placed, registered

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east), in this module's account
logs = test_logging_hygiene.logs  # what every handler wrote

CARD = "4111 1111 1111 1111"
SAID = f"gateway said: card {CARD} declined"


def assert_no_card_in_any_line(written: str) -> list[str]:
    """Every line written holds no card number (grouped or not), and the plugin's words were logged
    with it masked: the lines that hold them, returned."""
    lines = [line for line in written.splitlines() if line.strip()]
    assert lines, "nothing was captured: the capture itself is broken"
    carrying = [line for line in lines if contains_card_number(line) or CARD.replace(" ", "") in line]
    assert carrying == [], carrying
    said = [line for line in lines if SAID.replace(CARD, MASK) in line]
    assert said, "the plugin's words must be logged, their card number masked"
    return said


def lambda_error_record(error: BaseException) -> dict[str, Any]:
    """What the Lambda Python runtime reports of an exception its handler raised (awslambdaric's
    bootstrap.handle_event_request): errorMessage str(error), stackTrace the formatted frames of its
    own traceback. A Catch's Cause is this record as JSON."""
    frames = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(error.__traceback__)]
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "stackTrace": traceback.format_list(frames),
    }


class CardInWords:
    """A payment and carrier plugin whose client library's error echoes the card it was given."""

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount, idempotency_key, attempt):
        raise ValueError(SAID)

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, method, authorization, amount, idempotency_key):
        raise ValueError(SAID)

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self):
        raise ValueError(SAID)


@pytest.fixture
def card_in_words() -> Iterator[None]:
    with registered(CardInWords()):
        yield


@pytest.mark.parametrize("hook", ["oms_tax_rate", "oms_shipping_quotes", "oms_payment_methods"])
def test_a_plugin_raising_with_a_card_number_at_post_orders_logs_it_masked(
    api: InProcessApi, logs: Captured, hook: str
):
    with registered(only(hook, ValueError(SAID))):
        answer = api.post("/orders", json=order_body(lines=[{"sku": "MUG", "quantity": 1}]))

    assert answer.status_code == 502, answer.text
    assert not contains_card_number(answer.text)
    said = assert_no_card_in_any_line(logs.written())
    assert any(json.loads(line)["message"] == "plugin raised" for line in said), said


def test_a_payment_plugin_raising_with_a_card_number_at_a_ship_logs_it_masked(api: InProcessApi, logs: Captured):
    order = test_cancel_units_api.allocated(api, ("MUG", 1))
    (shipment,) = order["shipments"]

    with registered(CardInWords()):
        answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})

    assert answer.status_code == 502, answer.text
    said = assert_no_card_in_any_line(logs.written())
    # Its one line with the words and traceback: the API's `payment plugin failed` names it without them.
    assert [json.loads(line)["message"] for line in said] == ["plugin raised"], said


def run_step(name: str, order_id: str) -> BaseException:
    """The workflow task `name` run by its Lambda handler, as Step Functions runs it: what it raised."""
    import importlib

    from tests.integration.test_handlers import Context

    handler = importlib.import_module(f"functions.workflow.{name}").lambda_handler
    with pytest.raises(Exception) as raised:
        handler({"order_id": order_id, "attempt": 0}, Context())
    return raised.value


def test_a_payment_plugin_raising_with_a_card_number_in_the_authorize_step_logs_it_masked_not_in_the_error(
    api: InProcessApi, logs: Captured, card_in_words: None
):
    order_id = placed(api)

    error = run_step("authorize_payment", order_id)

    assert type(error).__name__ == "PluginError"
    record = lambda_error_record(error)
    assert "oms_payment_authorize" in record["errorMessage"]
    assert not contains_card_number(json.dumps(record)), record
    said = assert_no_card_in_any_line(logs.written())
    assert any(json.loads(line)["message"] == "plugin raised" for line in said), said


def test_a_carrier_plugin_raising_with_a_card_number_in_the_shipments_step_logs_it_masked_not_in_the_error(
    api: InProcessApi, logs: Captured
):
    order_id, workflow = test_cancel_units_api.authorized(api, ("MUG", 1))
    workflow.reserve_stock(order_id)

    with registered(CardInWords()):
        error = run_step("create_shipments", order_id)

    record = lambda_error_record(error)
    assert not contains_card_number(json.dumps(record)), record
    said = assert_no_card_in_any_line(logs.written())
    assert any(json.loads(line)["message"] == "plugin raised" for line in said), said


def test_a_normal_orders_lines_are_written_with_nothing_masked(api: InProcessApi, logs: Captured):
    # Ids, request ids, timestamps, amounts, tracking numbers: none is taken for a card number.
    order = test_cancel_units_api.allocated(api, ("MUG", 1), ("CAP", 1))
    test_cancel_units_api.ship(api, order, "wh-west")

    lines = [line for line in logs.written().splitlines() if line.strip()]
    assert any(order["id"] in line for line in lines), "the order's lines must be captured"
    assert [line for line in lines if MASK in line] == []
