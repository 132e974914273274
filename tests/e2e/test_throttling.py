"""Throttling, as two journeys over real HTTP: each API key has its own token bucket; an empty one
answers 429 with Retry-After, on a stopped clock and on the real one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, assert_error, unique

pytestmark = pytest.mark.e2e

RATE, BURST = 2, 3


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    overrides = {"ApiRateLimit": RATE, "ApiBurstLimit": BURST, "AuthorizerCacheSeconds": 0}
    with running_stack(api_port=0, aws_port=0, seed=False, parameter_overrides=overrides) as started:
        yield started


@pytest.fixture(scope="module")
def new_key(api: Api) -> Callable[[], dict[str, Any]]:
    """Issues a fresh key (a full bucket of its own). The admin's bucket is as small as anyone's, so
    issuing waits out the admin's own 429s."""

    def issue() -> dict[str, Any]:
        for _ in range(10):
            response = api.post("/api-keys", json={"name": unique("throttle"), "scopes": ["orders:read"]})
            if response.status_code != 429:
                assert response.status_code == 201, response.text
                return response.json()
            time.sleep(int(response.headers["Retry-After"]))
        raise AssertionError("the admin stayed throttled")

    return issue


@pytest.fixture
def key(new_key: Callable[[], dict[str, Any]]) -> str:
    return new_key()["key"]


@pytest.fixture
def quiet_key(new_key: Callable[[], dict[str, Any]]) -> str:
    return new_key()["key"]


@pytest.fixture
def clock(stack: EmbeddedStack, key: str, quiet_key: str) -> Iterator[list[float]]:
    """The buckets' clock, stopped once the test's keys are issued: no token refills while the
    machine serves the test's requests, however slow it is; a test moves it on with clock[0] += s."""
    assert stack.gateway is not None and stack.gateway.throttle is not None
    buckets, now = stack.gateway.throttle, [time.monotonic()]
    buckets.clock = lambda: now[0]
    try:
        yield now
    finally:
        buckets.clock = time.monotonic


def until_throttled(api: Api, key: str, most: int = BURST + 3) -> list[requests.Response]:
    """Quick requests with `key` until the first 429 (at most `most`)."""
    responses = []
    for _ in range(most):
        responses.append(api.get("/orders", key=key, params={"limit": 1}))
        if responses[-1].status_code == 429:
            break
    return responses


def test_a_keys_burst_is_429_with_retry_after_spares_other_keys_and_bad_keys_and_is_served_after_retry_after(
    api: Api, stack: EmbeddedStack, key: str, quiet_key: str, clock: list[float]
):
    """On the stopped clock: the key's burst, then 429 until Retry-After seconds have passed; the
    other key's bucket and a bad key's 401 are not touched by it."""
    assert stack.gateway is not None and stack.gateway.throttle is not None
    assert (stack.gateway.throttle.rate, stack.gateway.throttle.burst) == (RATE, BURST)

    responses = until_throttled(api, key)

    assert [r.status_code for r in responses] == [200] * BURST + [429]
    throttled = responses[-1]
    assert_error(throttled, 429, "throttled")
    assert int(throttled.headers["Retry-After"]) >= 1
    assert api.get("/orders", key=key, params={"limit": 1}).status_code == 429  # nothing refilled yet

    # Another key has its own bucket; a bad key is 401, not the throttled key's 429.
    assert api.get("/orders", key=quiet_key, params={"limit": 1}).status_code == 200
    assert api.get("/orders", key=quiet_key, params={"limit": 1}).status_code == 200
    assert_error(api.get("/orders", key="oms_" + "x" * 32), 401, "unauthorized")
    assert api.get("/orders", key=key, params={"limit": 1}).status_code == 429

    clock[0] += int(throttled.headers["Retry-After"])

    assert api.get("/orders", key=key, params={"limit": 1}).status_code == 200


def test_a_burst_on_the_real_clock_is_throttled_too(api: Api, key: str):
    """The same burst with time running: the bucket lets through its burst plus what it refilled
    meanwhile, however slow the machine, and then refuses."""
    started = time.monotonic()
    responses = until_throttled(api, key, most=BURST + 20)
    elapsed = time.monotonic() - started

    statuses = [r.status_code for r in responses]
    assert statuses[:BURST] == [200] * BURST, statuses
    assert statuses[-1] == 429, f"no 429 within {len(statuses)} quick requests: {statuses}"
    assert statuses.count(200) <= BURST + int(elapsed * RATE) + 1, (statuses, elapsed)
