"""What API Gateway answers by itself is in the contract's error shape too: the responses the
template names (401, 403, 404, 413, 429), and through DEFAULT_4XX and DEFAULT_5XX every other one
a client can meet on AWS (a WAF block, an authorizer that failed or timed out, an API function
that timed out or crashed), whose built-in body is {"message": ...}."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infra.local.template import Template

RESPONSES: dict[str, dict[str, Any]] = Template.load().api("GatewayResponses", {})


def body(response: dict[str, Any]) -> Any:
    return json.loads(response["ResponseTemplates"]["application/json"])


def test_every_other_4xx_and_5xx_the_gateway_answers_has_a_template():
    assert {"DEFAULT_4XX", "DEFAULT_5XX"} <= RESPONSES.keys()


@pytest.mark.parametrize("kind", ["DEFAULT_4XX", "DEFAULT_5XX"])
def test_the_fallbacks_keep_each_responses_own_status(kind: str):
    # A status on a fallback would replace the status of every response it covers (a WAF block's
    # 403, an integration timeout's 504) with one number.
    assert "StatusCode" not in RESPONSES.get(kind, {})


@pytest.mark.parametrize("kind", sorted(RESPONSES))
def test_each_gateway_response_is_the_contracts_error_shape(kind: str):
    error = body(RESPONSES[kind])

    assert error.keys() == {"error"}
    assert error["error"].keys() == {"code", "message", "details"}
    assert re.fullmatch(r"[a-z][a-z0-9_]*", error["error"]["code"])
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert error["error"]["details"] == []


def test_a_5xx_from_the_gateway_is_an_internal_error_that_leaks_nothing():
    assert body(RESPONSES["DEFAULT_5XX"])["error"]["code"] == "internal_error"


def test_a_429_from_the_gateway_says_when_to_retry():
    # API.md: 429 with Retry-After. API Gateway sends only what the response declares.
    assert RESPONSES["THROTTLED"]["ResponseParameters"]["Headers"]["Retry-After"] == "'1'"
