"""What a channel's key is shown when a plugin fails while being called, in-process on moto: a
plugin's TransientError, or a TimeoutError or ConnectionError out of its client library, often
carries the text of what it talked to (a connection string with its password, an internal host, a
token). The 503 and the order's history name the plugin, the hook and the exception's type only;
its words, escaped, are in the log line `plugin temporarily unavailable` for the operator."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from core import hookimpl
from core.errors import TransientError
from tests.builders import order_body
from tests.e2e.client import assert_error
from tests.integration import test_cancel_units_api
from tests.integration.in_process import InProcessApi, issue
from tests.integration.test_cancel_units_api import allocated
from tests.integration.test_plugin_failures_api import PLUGIN, installed

api = test_cancel_units_api.api  # its catalog (MUG in the west), in this module's account

PASSWORD = "hunter2-Zq9"
HOST = "prices-db.internal"
# What a client library says when its database or gateway is down: every word of it a secret.
WORDS = f"cannot connect to postgresql://acme:{PASSWORD}@{HOST}:5432/prices\n(token tok_live_{PASSWORD})"
LOGGED = WORDS.replace("\n", "\\n")  # escaped: no plugin's words forge a log line

_customers = itertools.count(1)

FAILURES = [
    pytest.param(TransientError, id="TransientError"),
    pytest.param(ConnectionError, id="ConnectionError"),
    pytest.param(TimeoutError, id="TimeoutError"),
]


def failing(hook: str, error: type[BaseException]) -> object:
    """A plugin implementing `hook` alone (called first) that raises `error` with WORDS."""

    def impl(self):
        raise error(WORDS)

    impl.__name__ = hook
    return type("Remote", (), {hook: hookimpl(tryfirst=True)(impl)})()


def channel_key(api: InProcessApi) -> str:
    return issue(api, "orders:write", "orders:read", "fulfillment:write", channel="web")


def shown_nothing_of_the_words(text: str) -> None:
    for secret in (PASSWORD, HOST, "postgresql://"):
        assert secret not in text, text


def expected_message(error: type[BaseException], hook: str) -> str:
    said = "said it is temporarily unavailable" if error is TransientError else "got no answer"
    pointer = "its words are in the log line `plugin temporarily unavailable`"
    return f"plugin {PLUGIN} {said} in {hook}: {error.__name__}; {pointer}"


def assert_logged(caplog: Any, error: type[BaseException], hook: str) -> None:
    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert (logged.levelname, logged.plugin, logged.hook, logged.error) == ("WARNING", PLUGIN, hook, error.__name__)
    assert logged.reason == LOGGED


@pytest.mark.parametrize("error", FAILURES)
def test_an_order_whose_pricing_plugin_is_down_shows_a_channel_the_plugin_hook_and_type_never_its_words(
    api: InProcessApi, caplog: Any, error: type[BaseException]
):
    key = channel_key(api)
    customer = f"cus_w{next(_customers)}"
    body = order_body(
        external_id=f"web-{customer}", lines=[{"sku": "MUG", "quantity": 1}],
        customer={"id": customer, "email": "ada@example.com"},
    )  # fmt: skip
    caplog.clear()

    with installed(failing("oms_unit_price", error)):
        answer = api.post("/orders", json=body, key=key)

    shown_nothing_of_the_words(answer.text)
    shown = assert_error(answer, 503, "temporarily_unavailable")
    assert shown["message"] == expected_message(error, "oms_unit_price")
    assert shown["details"] == [{"plugin": PLUGIN, "hook": "oms_unit_price"}]
    assert answer.headers.get("Retry-After") == "1"
    assert_logged(caplog, error, "oms_unit_price")
    assert api.orders_of(customer) == []


@pytest.mark.parametrize("error", FAILURES[:2])
def test_a_ship_whose_payment_plugin_is_down_shows_a_channel_the_plugin_hook_and_type_never_its_words(
    api: InProcessApi, caplog: Any, error: type[BaseException]
):
    key = channel_key(api)
    order = allocated(api, ("MUG", 1))
    (shipment,) = order["shipments"]
    caplog.clear()

    with installed(failing("oms_payment_capture", error)):
        answer = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={}, key=key)

    shown_nothing_of_the_words(answer.text)
    shown = assert_error(answer, 503, "payment_gateway_unavailable")
    words = expected_message(error, "oms_payment_capture")
    assert shown["details"] == [
        {"operation": "capture", "attempts": 3, "message": words, "plugin": PLUGIN, "hook": "oms_payment_capture"}
    ]
    # Each failed attempt is in the order's history, which the channel reads: the same words.
    history = api.get(f"/orders/{order['id']}/history", key=key)
    assert history.status_code == 200, history.text
    shown_nothing_of_the_words(history.text)
    failed = [entry["detail"] for entry in history.json()["items"] if entry["type"] == "payment_capture_failed"]
    assert len(failed) == 3 and all(words in str(detail) for detail in failed), failed
    logged = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert [(r.plugin, r.hook, r.error, r.reason) for r in logged] == [
        (PLUGIN, "oms_payment_capture", error.__name__, LOGGED)
    ] * 3
