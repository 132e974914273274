"""POST /carriers/{carrier}/tracking through the real API handler under moto: what reaches the
carrier's plugin, and how its refusals answer. The delivery journey itself is an e2e test
(tests/e2e/test_order_fulfillment.py); the rules are unit tests (tests/unit/test_tracking.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core import hookimpl
from core.errors import TransientError
from tests.integration.test_handlers import api, event

FLAT_RATE_EVENT = {
    "reference": "ord_aaaaaaaaaaaaaaaaaaaaaaaa/shp_aaaaaaaaaaaaaaaaaaaaaaaa",
    "status": "delivered",
    "at": "2026-11-23T09:30:00Z",
}


def webhook(carrier: str, body: object, **headers: str) -> dict:
    """The sample GET event made into a carrier's POST, as the admin key (every scope)."""
    evt = event("api_get_order.json")
    raw = json.dumps(body)
    evt.update(
        resource="/carriers/{carrier}/tracking",
        path=f"/carriers/{carrier}/tracking",
        httpMethod="POST",
        pathParameters={"carrier": carrier},
        body=raw,
        headers={**evt["headers"], **headers},
        multiValueHeaders={},
    )
    evt["requestContext"].update(resourcePath="/carriers/{carrier}/tracking", httpMethod="POST")
    return evt


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    @hookimpl(tryfirst=True)
    def oms_carrier_tracking_update(self, carrier, payload, headers, body):
        if carrier != "acme-courier":
            return None
        self.calls.append({"payload": payload, "headers": headers, "body": body})
        return []


@pytest.fixture
def recorder(aws) -> Iterator[Recorder]:
    from functions.api.dependencies import container

    plugin = Recorder()
    container().plugins.register(plugin)
    yield plugin
    container().plugins.unregister(plugin)


def test_the_plugin_gets_the_parsed_and_the_raw_body_and_the_headers_but_not_the_api_key_or_cookies(recorder):
    body = {"parcels": [{"ref": "x"}]}

    status, report = api(webhook("acme-courier", body, **{"Acme-Signature": "t=1,v1=abc", "Cookie": "session=s3cret"}))

    assert (status, report) == (200, {"carrier": "acme-courier", "updates": [], "refused": []})
    (call,) = recorder.calls
    assert call["payload"] == body
    assert call["body"] == json.dumps(body)
    assert call["headers"]["acme-signature"] == "t=1,v1=abc"
    assert "authorization" not in call["headers"] and "cookie" not in call["headers"]
    assert "oms_sample_admin_key" not in json.dumps(call) and "s3cret" not in json.dumps(call)


def test_a_webhook_body_may_be_an_array_the_one_route_where_the_top_level_is_not_an_object(recorder):
    body = [{"ref": "x"}, {"ref": "y"}]

    status, report = api(webhook("acme-courier", body))

    assert status == 200, report
    assert recorder.calls[0]["payload"] == body


def test_a_webhook_with_duplicate_keys_is_400_and_never_reaches_the_plugin(recorder):
    evt = webhook("acme-courier", {})
    evt["body"] = '{"ref": "x", "ref": "y"}'

    status, body = api(evt)

    assert (status, body["error"]["code"]) == (400, "malformed_json")
    assert recorder.calls == []


def test_a_carrier_no_plugin_answers_for_is_404(aws):
    status, body = api(webhook("no-such-carrier", {"events": []}))

    assert status == 404
    assert body["error"]["code"] == "not_found"


def test_a_malformed_event_is_refused_at_its_position_naming_the_field(aws):
    status, report = api(webhook("oms-flat-rate", {"events": [FLAT_RATE_EVENT]}))

    assert status == 200
    assert report["updates"] == []
    assert report["refused"] == [{"position": 0, "error": {
        "code": "validation_error", "message": "not an OMS Flat Rate tracking event",
        "details": [{"field": "events[0].tracking_number", "message": "Field required"}],
    }}]  # fmt: skip


def test_a_body_that_is_no_webhook_of_the_carrier_is_422_naming_the_field(aws):
    status, body = api(webhook("oms-flat-rate", {"events": [FLAT_RATE_EVENT], "sent_by": "relay-7"}))

    assert status == 422
    assert body["error"]["details"] == [{"field": "sent_by", "message": "Extra inputs are not permitted"}]


@pytest.mark.parametrize("scan", ["delivered", "in_transit"])
def test_an_update_for_an_order_that_does_not_exist_is_reported_not_applied(aws, scan):
    from plugins.flat_rate_carrier import tracking_number

    update = {**FLAT_RATE_EVENT, "status": scan, "tracking_number": tracking_number("shp_" + "a" * 24)}

    status, report = api(webhook("oms-flat-rate", {"events": [update]}))

    assert status == 200
    assert [(u["order_id"], u["outcome"]) for u in report["updates"]] == [("ord_" + "a" * 24, "unknown_shipment")]


class Garbling:
    """A carrier plugin whose service is briefly down, and says so with escape sequences, a bidi
    override and at length (or whose client library does, in a ConnectionError)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    @hookimpl(tryfirst=True)
    def oms_carrier_tracking_update(self, carrier, payload, headers, body):
        raise self.error


@pytest.mark.parametrize("raised", [TransientError, ConnectionError])
def test_a_plugins_words_on_a_transient_failure_reach_the_log_escaped_and_never_the_503(aws, raised, caplog):
    # The carrier's webhook is called by the carrier, with no key at all: its 503 carried the
    # plugin's words (a client library's often hold a host or a connection string).
    from functions.api.dependencies import container

    words = "carrier API down\x1b[2J\r\u202egnorw" + "x" * 100_000
    plugin = Garbling(raised(words))
    container().plugins.register(plugin, name="garbling")
    try:
        status, body = api(webhook("acme-courier", {"events": []}))
    finally:
        container().plugins.unregister(plugin)

    hook = "oms_carrier_tracking_update"
    assert (status, body["error"]["code"], body["error"]["details"]) == (
        503, "temporarily_unavailable", [{"plugin": "garbling", "hook": hook}]
    )  # fmt: skip
    said = "said it is temporarily unavailable" if raised is TransientError else "got no answer"
    assert body["error"]["message"] == (
        f"plugin garbling {said} in {hook}: {raised.__name__}; "
        "its words are in the log line `plugin temporarily unavailable`"
    )
    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert (logged.plugin, logged.hook, logged.error) == ("garbling", hook, raised.__name__)
    assert logged.reason.startswith("carrier API down\\x1b[2J\\r\\u202egnorwxxx") and logged.reason.endswith("x…")
