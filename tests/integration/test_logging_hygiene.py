"""Secrets stay out of the logs: API keys, Authorization headers and card numbers, even at DEBUG.

The real API handler and authorizer run on the sample events with every logger at DEBUG; what they
print, what reaches `logging` and what the powertools loggers write to their streams is collected
and searched. The same requests then go through the local gateway of a running stack.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from core import hookimpl

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"

SECRET = "oms_sample_admin_key_0123456789"  # the key the sample events carry
BAD_KEY = "oms_not_a_real_key_" + secrets.token_urlsafe(12)
CARD = "4111111111111111"
CARD_GROUPED = "4111 1111 1111 1111"


class Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    aws_request_id = "logging-hygiene"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def with_authorization(evt: dict[str, Any], value: str) -> dict[str, Any]:
    evt["headers"] = {**(evt.get("headers") or {}), "Authorization": value}
    if evt.get("multiValueHeaders") is not None:
        evt["multiValueHeaders"] = {**evt["multiValueHeaders"], "Authorization": [value]}
    return evt


def with_body(evt: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = json.loads(evt["body"])
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    evt["body"] = json.dumps(body)
    return evt


class ExplodingTax:
    """A plugin whose dependency fails: the API answers 502 plugin_error and logs the traceback."""

    @hookimpl(tryfirst=True)
    def oms_tax_rate(self, line, address, draft):
        raise RuntimeError("tax service down")


# --- Capturing everything ---------------------------------------------------------------------


def _powertools_loggers() -> list[Any]:
    from functions.api import app, errors
    from functions.authorizer import app as authorizer

    return [app.logger, errors.logger, authorizer.logger()]


class Captured:
    """stdout/stderr (capsys), every logging record (caplog, with its extra fields) and whatever
    any StreamHandler writes (powertools' handlers keep the stdout they were created with)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self._capsys = capsys
        self._caplog = caplog
        self._streams = io.StringIO()
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []
        self._levels: list[tuple[logging.Logger, int]] = []

    def start(self) -> None:
        self._caplog.set_level(logging.DEBUG)
        for powertools_logger in _powertools_loggers():
            underlying = logging.getLogger(powertools_logger.name)
            self._levels.append((underlying, underlying.level))
            powertools_logger.setLevel(logging.DEBUG)
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and not type(handler).__module__.startswith("_pytest"):
                    # Not setStream(): it flushes the old stream, which may be a closed capture.
                    self._swapped.append((handler, handler.stream))
                    handler.stream = self._streams

    def stop(self) -> None:
        for handler, stream in reversed(self._swapped):
            handler.stream = stream
        for logger, level in self._levels:
            logger.setLevel(level)

    def written(self) -> str:
        """What was written so far (stdout, stderr, every stream handler's stream): the log lines
        themselves, not the records (whose raw exception and arguments no line shows as they are)."""
        out, err = self._capsys.readouterr()
        return "\n".join([out, err, self._streams.getvalue()])

    def text(self, ignore: tuple[str, ...] = ()) -> str:
        """Everything captured so far, leaving out the records of the loggers named in `ignore`."""
        out, err = self._capsys.readouterr()
        records = [
            f"{record.name} {record.levelname} {record.getMessage()} {record.__dict__!r}"
            for record in self._caplog.records
            if not record.name.startswith(ignore)
        ]
        return "\n".join([out, err, self._streams.getvalue(), *records])


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch, capsys, caplog) -> Iterator[Captured]:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    captured = Captured(capsys, caplog)
    captured.start()
    try:
        yield captured
    finally:
        captured.stop()


def assert_clean(text: str, *also: str) -> None:
    """No API key, no bearer value, no card number (grouped or not) anywhere in `text`."""
    assert text.strip(), "nothing was captured: the capture itself is broken"
    for secret in (SECRET, BAD_KEY, *also):
        assert secret not in text, f"an API key reached the logs: ...{secret[-6:]}"
    bearer = re.search(r"Bearer\s+[A-Za-z0-9_\-]{8,}", text)
    assert bearer is None, f"an Authorization header value reached the logs: {bearer.group(0)[:12]}..."
    ungrouped = re.sub(r"(?<=\d)[ -](?=\d)", "", text)
    assert CARD not in ungrouped, "a card number reached the logs"


# --- The Lambda handlers ------------------------------------------------------------------------


@pytest.fixture
def seeded(aws) -> None:
    from core.models import LocationInput, ProductInput
    from functions.api.dependencies import container
    from tests.builders import location_body, product_body

    container().api_keys.ensure_admin(SECRET)
    c = container()
    c.catalog.put_product("TSHIRT-BLK-M", ProductInput.model_validate(product_body()))
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    c.inventory.count("TSHIRT-BLK-M", "wh-east", 10)


def api(evt: dict[str, Any]) -> int:
    from functions.api.app import lambda_handler

    return lambda_handler(evt, Context())["statusCode"]


def authorize(evt: dict[str, Any]) -> dict[str, Any] | None:
    from functions.authorizer.app import lambda_handler

    try:
        return lambda_handler(evt, Context())
    except Exception as refused:
        assert str(refused) == "Unauthorized"
        return None


def test_a_request_with_a_valid_key_logs_neither_the_key_nor_the_header(logs: Captured, seeded):
    policy = authorize(event("authorizer_request.json"))
    assert policy is not None and policy["principalId"] == "key_admin"
    assert api(event("api_place_order.json")) == 201
    assert api(event("api_get_order.json")) in (200, 404)

    assert_clean(logs.text())


def test_a_request_with_a_bad_key_logs_neither_the_key_nor_the_header(logs: Captured, seeded):
    assert authorize(with_authorization(event("authorizer_request.json"), f"Bearer {BAD_KEY}")) is None
    assert authorize(with_authorization(event("authorizer_request.json"), "Bearer short")) is None
    anonymous = with_authorization(event("api_place_order.json"), f"Bearer {BAD_KEY}")
    del anonymous["requestContext"]["authorizer"]
    assert api(anonymous) == 401

    assert_clean(logs.text())


@pytest.mark.parametrize(
    "changes",
    [
        {"payment__token": CARD},
        {"customer__name": CARD_GROUPED},
        {"shipping_address__line2": "4111-1111-1111-1111"},
    ],
    ids=["payment-token", "customer-name", "address-line"],
)
def test_a_body_with_a_card_number_is_refused_without_logging_it(logs: Captured, seeded, aws, changes: dict):
    evt = with_body(event("api_place_order.json"), **changes)
    evt["headers"].pop("Idempotency-Key")

    assert api(evt) == 422

    assert_clean(logs.text())
    assert aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Count"] == 0


def test_a_failing_plugin_is_logged_without_the_key_or_the_header(logs: Captured, seeded):
    from functions.api.dependencies import container

    plugins = container().plugins
    plugin = ExplodingTax()
    plugins.register(plugin)
    try:
        status = api(event("api_place_order.json"))
    finally:
        plugins.unregister(plugin)

    assert status == 502
    text = logs.text()
    assert "tax service down" in text, "the plugin's failure must be logged (it is a bug to fix)"
    assert_clean(text)


# --- Through the local gateway ----------------------------------------------------------------------

# The test's own HTTP client runs in this process too: what it logs about its requests is not the OMS's.
CLIENT_LOGGERS = ("urllib3", "requests", "responses")


@pytest.fixture
def stack() -> Iterator[Any]:
    """Per test: the stack's moto must not outlive it into a test that uses the `aws` fixture."""
    from infra.local.stack import running_stack

    overrides = {"AuthorizerCacheSeconds": 0, "ApiRateLimit": 100_000, "ApiBurstLimit": 100_000}
    with running_stack(api_port=0, aws_port=0, seed=False, parameter_overrides=overrides) as started:
        yield started


@pytest.fixture
def session(stack) -> Iterator[requests.Session]:
    client = requests.Session()
    client.trust_env = False
    yield client
    client.close()


@pytest.fixture
def stocked(stack, session: requests.Session) -> str:
    from tests.e2e.client import location_body

    url, admin = stack.api_url, {"Authorization": f"Bearer {stack.admin_key}"}
    sku, product = "HYGIENE-1", {"name": "Mug", "price": {"amount": "5.00", "currency": "USD"}}
    assert session.put(f"{url}/products/{sku}", json=product, headers=admin).status_code == 201
    assert session.put(f"{url}/locations/wh-hygiene", json=location_body(), headers=admin).status_code == 201
    assert session.put(f"{url}/inventory/{sku}/wh-hygiene", json={"on_hand": 100}, headers=admin).status_code == 200
    return sku


def gateway_order(sku: str, **changes: Any) -> dict[str, Any]:
    from tests.e2e.client import order_body

    return order_body((sku, 1), **changes)


def test_requests_through_the_local_gateway_log_no_key_header_or_card_number(
    logs: Captured, stack, session: requests.Session, stocked: str
):
    from functions.api.dependencies import container

    url, admin = stack.api_url, {"Authorization": f"Bearer {stack.admin_key}"}
    issued = session.post(f"{url}/api-keys", json={"name": "hygiene", "scopes": ["orders:read"]}, headers=admin)
    assert issued.status_code == 201, issued.text
    new_secret = issued.json()["key"]

    assert session.get(f"{url}/orders", headers={"Authorization": f"Bearer {new_secret}"}).status_code == 200
    assert session.get(f"{url}/orders", headers={"Authorization": f"Bearer {BAD_KEY}"}).status_code == 401
    card_body = gateway_order(stocked, payment={"method": "test", "token": CARD_GROUPED})
    assert session.post(f"{url}/orders", json=card_body, headers=admin).status_code == 422
    plugin = ExplodingTax()
    container().plugins.register(plugin)
    try:
        failed = session.post(f"{url}/orders", json=gateway_order(stocked), headers=admin)
    finally:
        container().plugins.unregister(plugin)
    assert failed.status_code == 502

    text = logs.text(ignore=CLIENT_LOGGERS)
    assert "GET /orders" in text, "the gateway's access log must be captured"
    assert_clean(text, stack.admin_key, new_secret)


def test_a_card_number_in_the_query_string_is_refused_without_logging_it(
    logs: Captured, stack, session: requests.Session
):
    response = session.get(
        f"{stack.api_url}/orders",
        params={"customer_id": CARD},
        headers={"Authorization": f"Bearer {stack.admin_key}"},
    )

    assert response.status_code == 422
    assert_clean(logs.text(ignore=CLIENT_LOGGERS), stack.admin_key)
