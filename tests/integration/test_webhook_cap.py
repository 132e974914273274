"""POST /webhooks through the in-process gateway on moto: a channel, and the unbound keys together,
hold at most MAX_WEBHOOKS live subscriptions (every event's dispatch reads them all), and two
subscribes racing for the last place cannot both take it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.webhooks import MAX_WEBHOOKS
from functions.adapters.webhooks import DynamoWebhooks
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks

HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_webhooks() as started:
        yield started


def channel_key(api: InProcessApi, channel: str) -> str:
    made = api.post("/api-keys", json={"name": f"{channel} hooks", "scopes": ["webhooks:write"], "channel": channel})
    assert made.status_code == 201, made.text
    return made.json()["key"]


def subscribe(api: InProcessApi, key: Any = None, **body: Any) -> Any:
    return api.post("/webhooks", json={**HOOK, **body}, **({} if key is None else {"key": key}))


def listed(api: InProcessApi, key: str) -> list[str]:
    answer = api.get("/webhooks", params={"limit": 100}, key=key)
    assert answer.status_code == 200, answer.text
    return [hook["id"] for hook in answer.json()["items"]]


def test_a_channel_past_its_cap_is_409_too_many_webhooks_and_a_delete_frees_a_place(api: InProcessApi):
    # One key could subscribe without end, and every event's dispatch read every subscription.
    key = channel_key(api, "capped")
    made = [subscribe(api, key) for _ in range(MAX_WEBHOOKS)]
    assert [answer.status_code for answer in made] == [201] * MAX_WEBHOOKS

    refused = assert_error(subscribe(api, key), 409, "too_many_webhooks")
    assert refused["message"].startswith(f"{MAX_WEBHOOKS} webhook subscriptions are live on channel capped already")
    # The admin naming the channel counts against the channel's cap too.
    assert_error(subscribe(api, channel="capped"), 409, "too_many_webhooks")
    assert len(listed(api, key)) == MAX_WEBHOOKS
    # Another channel, and the unbound subscriptions, have places of their own.
    assert subscribe(api, channel_key(api, "other-shop")).status_code == 201
    assert subscribe(api).status_code == 201

    gone = made[0].json()["id"]
    assert api.request("DELETE", f"/webhooks/{gone}", key=key).status_code == 204
    assert api.request("DELETE", f"/webhooks/{gone}", key=key).status_code == 404  # frees no second place
    assert subscribe(api, key).status_code == 201
    assert_error(subscribe(api, key), 409, "too_many_webhooks")
    assert len(listed(api, key)) == MAX_WEBHOOKS


def test_unbound_subscriptions_share_one_cap(api: InProcessApi):
    for _ in range(MAX_WEBHOOKS - len(_unbound(api))):
        assert subscribe(api).status_code == 201
    refused = assert_error(subscribe(api), 409, "too_many_webhooks")
    assert refused["message"].startswith(f"{MAX_WEBHOOKS} webhook subscriptions are live without a channel already")
    assert subscribe(api, channel="unbound-cap-neighbour").status_code == 201
    assert len(_unbound(api)) == MAX_WEBHOOKS


def test_two_subscribes_racing_for_the_last_place_do_not_both_take_it(api: InProcessApi, monkeypatch):
    key = channel_key(api, "racing")
    for _ in range(MAX_WEBHOOKS - 1):
        assert subscribe(api, key).status_code == 201
    add = DynamoWebhooks.add
    rival: list[Any] = []

    def add_after_a_rival(store: DynamoWebhooks, *args: Any, **kwargs: Any) -> None:
        # The second subscribe runs whole between the first one's checks and its write.
        if not rival:
            rival.append(None)
            rival[0] = subscribe(api, key)
        return add(store, *args, **kwargs)

    monkeypatch.setattr(DynamoWebhooks, "add", add_after_a_rival)
    first = subscribe(api, key)

    assert rival[0].status_code == 201, rival[0].text
    assert_error(first, 409, "too_many_webhooks")
    assert len(listed(api, key)) == MAX_WEBHOOKS


def _unbound(api: InProcessApi) -> list[str]:
    found, cursor = [], None
    while True:
        answer = api.get("/webhooks", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        found += [hook["id"] for hook in answer.json()["items"] if hook["channel"] is None]
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return found
