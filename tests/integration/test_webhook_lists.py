"""GET /webhooks through the in-process gateway on moto: a channel key pages through its own
channel's subscriptions only, and no page or cursor tells it of another's."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import assert_error, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks, issue


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_webhooks() as started:
        yield started


def subscribe(api: InProcessApi, key: Any = None) -> str:
    kwargs = {} if key is None else {"key": key}
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, **kwargs)
    assert made.status_code == 201, made.text
    return made.json()["id"]


def named_by(cursor: str) -> str:
    """The subscription id a cursor carries (it is base64 JSON, readable by whoever holds it)."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["k"]["sk"]["S"]


def test_a_channel_key_pages_through_its_own_subscriptions_and_no_cursor_names_another_channels(api: InProcessApi):
    # The list read a page of every channel's subscriptions and filtered it: a channel key got empty
    # pages with a cursor, each naming the subscription of another merchant the page had read past.
    key = api.post("/api-keys", json={"name": "shop hooks", "scopes": ["webhooks:write"], "channel": "shop"})
    assert key.status_code == 201, key.text
    secret = key.json()["key"]
    others = {subscribe(api) for _ in range(5)}
    own = {subscribe(api, secret) for _ in range(2)}

    pages, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        answer = api.get("/webhooks", params=params, key=secret)
        assert answer.status_code == 200, answer.text
        pages.append([hook["id"] for hook in answer.json()["items"]])
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            break
        assert named_by(cursor) in own, "a cursor names another channel's subscription"

    assert pages == [[hook_id] for hook_id in sorted(own)]
    both = api.get("/webhooks", params={"limit": 2}, key=secret).json()
    assert ({hook["id"] for hook in both["items"]}, both["next_cursor"]) == (own, None)
    everyone = api.get("/webhooks", params={"limit": 100}).json()
    assert {hook["id"] for hook in everyone["items"]} == own | others


@pytest.mark.parametrize("events", [["import.completed"], ["order.created", "inventory.low"]])
def test_a_channel_key_subscribing_to_events_that_carry_no_channel_is_422_naming_the_entry(api: InProcessApi, events):
    # An import or a low stock belongs to no channel, so a subscription bound to one never gets
    # them: it was accepted (201) and stayed silent for good.
    key = api.post("/api-keys", json={"name": "shop stock", "scopes": ["webhooks:write"], "channel": "shop"})
    secret = key.json()["key"]
    body = {"url": "http://127.0.0.1:9/hook", "events": events}

    assert_error(api.post("/webhooks", json=body, key=secret), 422, "validation_error", f"events[{len(events) - 1}]")
    assert_error(api.post("/webhooks", json={**body, "channel": "shop"}), 422, "validation_error")
    assert api.post("/webhooks", json=body).status_code == 201  # unbound: every import, every low stock
    assert api.post("/webhooks", json={**body, "events": ["*"]}, key=secret).status_code == 201


def test_the_secret_is_shown_only_by_the_subscribe_and_a_delete_is_204_then_the_subscription_is_gone(
    api: InProcessApi,
):
    """API.md: POST /webhooks → 201 `{id, url, events, channel, secret}`, the `secret` shown only
    there; GET /webhooks, GET /webhooks/{id}, DELETE /webhooks/{id} (204). Once deleted, neither
    it nor its deliveries are found, and a second delete is 404."""
    channel = unique("hooks")
    reader = issue(api, "webhooks:write", channel=channel)
    body = {"url": "http://127.0.0.1:9/once", "events": ["order.created"], "channel": channel}
    made = api.post("/webhooks", json=body)
    assert made.status_code == 201, made.text
    issued = made.json()
    assert {"id", "url", "events", "channel", "secret"} <= set(issued), issued
    assert issued["id"].startswith("whk_") and issued["secret"]
    assert [issued[name] for name in ("url", "events", "channel")] == list(body.values())
    path = f"/webhooks/{issued['id']}"

    shown = api.get(path)
    assert shown.json() == {name: value for name, value in issued.items() if name != "secret"}
    listed = api.get("/webhooks", key=reader)
    assert listed.json() == {"items": [shown.json()], "next_cursor": None}
    assert issued["secret"] not in shown.text + listed.text

    deleted = api.request("DELETE", path)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert_error(api.get(path), 404, "not_found")
    assert_error(api.get(f"{path}/deliveries"), 404, "not_found")
    assert_error(api.request("DELETE", path), 404, "not_found")
    assert api.get("/webhooks", key=reader).json() == {"items": [], "next_cursor": None}
