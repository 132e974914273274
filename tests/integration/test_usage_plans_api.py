"""Usage plans through the local gateway, in process: a guarded route needs the authorizer to name a
key of a usage plan on the stage; with per-key plans (KeyRateLimit) a key issued by POST /api-keys
is throttled and held to its daily quota by its own plan's numbers, the keys without one by the
shared plan's; DELETE /api-keys/{id} deletes its gateway key. Every call the functions make is
checked against their grants (in_process_api watches them)."""

from __future__ import annotations

import os
import time

import boto3
import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import in_process_api

PER_KEY = {"KeyRateLimit": "1", "KeyBurstLimit": 2, "KeyQuotaPerDay": "5"}


def stopped_clocks(api, now: list[float]) -> None:
    """The buckets' and the quotas' clocks, moved on only by the test: no token refills while a
    slow machine serves, and the day does not turn."""
    api.gateway.throttle.clock = lambda: now[0]
    api.gateway.usage_plans.clock = lambda: now[0]


def test_a_guarded_route_is_refused_when_the_authorizer_names_no_key_of_the_stage(monkeypatch):
    with in_process_api() as api:
        assert api.get("/orders", params={"limit": 1}).status_code == 200
        monkeypatch.setenv("GATEWAY_SHARED_KEY", "oms-no-plan-has-this-key-0000")
        api.gateway.flush_authorizer_caches()

        refused = api.get("/orders", params={"limit": 1})
        assert_error(refused, 403, "request_refused")  # DEFAULT_4XX: API Gateway's InvalidKeyParameter
        assert api.get("/health", key=None).status_code == 200  # a public route requires no key


def test_a_key_issued_with_per_key_plans_has_its_own_throttle_and_daily_quota():
    with in_process_api(**PER_KEY) as api:
        issued = api.post("/api-keys", json={"name": "storefront", "scopes": ["orders:read"]})
        assert issued.status_code == 201, issued.text
        key, now = issued.json()["key"], [time.time()]
        stopped_clocks(api, now)

        statuses = [api.get("/orders", key=key, params={"limit": 1}).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # its plan's burst of 2
        assert [api.get("/orders", params={"limit": 1}).status_code for _ in range(3)] == [200] * 3  # the admin's

        now[0] += 2  # two tokens at 1/s: requests 3 and 4 of the day
        assert [api.get("/orders", key=key, params={"limit": 1}).status_code for _ in range(2)] == [200, 200]
        now[0] += 2
        assert api.get("/orders", key=key, params={"limit": 1}).status_code == 200  # the 5th
        assert_error(api.get("/orders", key=key, params={"limit": 1}), 429, "quota_exceeded")

        now[0] += 86400  # the next day
        assert api.get("/orders", key=key, params={"limit": 1}).status_code == 200


def test_per_key_plans_without_a_daily_quota_throttle_each_key_and_count_nothing():
    # OMS_KEY_RATE_LIMIT alone: the template's Quota is `!If [KeyQuotaOn, ..., !Ref AWS::NoValue]`.
    with in_process_api(KeyRateLimit="1", KeyBurstLimit=2) as api:
        plans = boto3.client("apigateway", region_name="us-east-1").get_usage_plans()["items"]
        [per_key] = [plan for plan in plans if plan["name"].endswith("-per-key")]
        assert per_key["throttle"] == {"rateLimit": 1.0, "burstLimit": 2} and "quota" not in per_key
        assert api.get("/orders", params={"limit": 1}).status_code == 200


def test_revoking_a_key_deletes_its_gateway_key():
    with in_process_api(**PER_KEY) as api:
        issued = api.post("/api-keys", json={"name": "gone", "scopes": ["orders:read"]}).json()
        client = boto3.client("apigateway", region_name="us-east-1")
        before = {k["name"] for k in client.get_api_keys()["items"]}
        assert issued["id"] in before

        assert api.request("DELETE", f"/api-keys/{issued['id']}").status_code == 204

        assert issued["id"] not in {k["name"] for k in client.get_api_keys()["items"]}
        assert_error(api.get("/orders", key=issued["key"]), 401, "unauthorized")


@pytest.mark.parametrize("overrides", [{}, PER_KEY])
def test_keys_without_their_own_are_metered_by_the_shared_plan_at_the_stages_numbers(overrides):
    with in_process_api(**overrides) as api:
        shared = api.gateway.usage_plans.plan_of(os.environ["GATEWAY_SHARED_KEY"])

        assert shared is not None
        assert shared.limits == (100_000.0, 100_000)  # in_process_api's FAST ApiRateLimit, ApiBurstLimit
        assert shared.quota_per_day is None
        assert api.get("/orders", params={"limit": 1}).status_code == 200  # the admin key, issued before


def test_a_key_revoked_after_use_is_refused_at_once_though_its_answers_were_cached():
    # Its allow (with its gateway key) sits in the authorizer cache, and its plan in the gateway's:
    # the revocation's flush, then the authorizer, refuse it 401, never a stale 200 or a 403.
    with in_process_api(**PER_KEY) as api:
        issued = api.post("/api-keys", json={"name": "used", "scopes": ["orders:read"]}).json()
        assert api.get("/orders", key=issued["key"], params={"limit": 1}).status_code == 200

        assert api.request("DELETE", f"/api-keys/{issued['id']}").status_code == 204

        assert_error(api.get("/orders", key=issued["key"], params={"limit": 1}), 401, "unauthorized")
        assert api.get("/orders", params={"limit": 1}).status_code == 200  # the admin's, on the shared plan


@pytest.mark.parametrize("refused", ["create_api_key", "create_usage_plan_key"])
def test_post_api_keys_while_api_gateway_refuses_leaves_no_key_anywhere(monkeypatch, refused):
    from botocore.exceptions import ClientError

    from functions.api.dependencies import container

    with in_process_api(**PER_KEY) as api:
        client = boto3.client("apigateway", region_name="us-east-1")
        gateway_keys = {k["id"] for k in client.get_api_keys()["items"]}
        listed = api.get("/api-keys").json()["items"]
        busy = ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, refused)
        monkeypatch.setattr(container().apigateway, refused, lambda **kwargs: (_ for _ in ()).throw(busy))

        answer = api.post("/api-keys", json={"name": "half", "scopes": ["orders:read"]})

        assert_error(answer, 503, "temporarily_unavailable")
        assert answer.headers["Retry-After"] == "1"
        assert api.get("/api-keys").json()["items"] == listed
        assert {k["id"] for k in client.get_api_keys()["items"]} == gateway_keys
        monkeypatch.undo()
        again = api.post("/api-keys", json={"name": "half", "scopes": ["orders:read"]})
        assert again.status_code == 201, again.text
        assert api.get("/orders", key=again.json()["key"], params={"limit": 1}).status_code == 200
