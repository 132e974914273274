"""/webhooks through the in-process gateway on moto: a channel key pages through its own
channel's subscriptions only, and no page or cursor tells it of another's; each subscription names
the key that made it, and who subscribes or deletes is logged."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import boto3
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


@pytest.mark.parametrize("holder", ["another channel's key", "the admin"])
def test_a_channel_key_sending_a_webhooks_cursor_another_caller_was_given_is_422(api: InProcessApi, holder: str):
    # API.md: a cursor is the list's, for the caller it was given to. The orders', returns' and
    # customers' cursors are bound to the channel they were read for; the subscriptions' were not:
    # a channel key sent another's answered 200 with its own page after the other's subscription.
    _, mine = new_key(api, channel=unique("mine"))
    _, theirs = new_key(api, channel=unique("theirs"))
    for key in (mine, mine, theirs, theirs):
        subscribe(api, key)
    given = api.get("/webhooks", params={"limit": 1}, **({} if holder == "the admin" else {"key": theirs}))
    cursor = given.json()["next_cursor"]
    assert cursor is not None, given.text

    answer = api.get("/webhooks", params={"limit": 1, "cursor": cursor}, key=mine)

    assert_error(answer, 422, "invalid_cursor", "cursor")
    own = api.get("/webhooks", params={"limit": 1}, key=mine).json()["next_cursor"]
    assert api.get("/webhooks", params={"limit": 1, "cursor": own}, key=mine).status_code == 200


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


def new_key(api: InProcessApi, channel: str | None = None) -> tuple[str, str]:
    """A new `webhooks:write` key (bound to `channel` when one is given): its id and its secret."""
    body: dict[str, Any] = {"name": unique("hooks"), "scopes": ["webhooks:write"]}
    made = api.post("/api-keys", json={**body, **({"channel": channel} if channel else {})})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def test_a_subscription_names_the_key_that_made_it_in_its_answer_its_read_and_the_list(api: InProcessApi):
    # A key with webhooks:write may send every order (customer, address) to a URL it chooses, and
    # the subscription did not say which key set that up: an auditor could not tell.
    key_id, secret = new_key(api)
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/made-by", "events": ["*"]}, key=secret)
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == key_id

    shown = api.get(f"/webhooks/{made.json()['id']}")
    assert shown.json()["created_by"] == key_id
    listed = api.get("/webhooks", params={"limit": 100}, key=secret).json()["items"]
    assert [hook["created_by"] for hook in listed if hook["id"] == made.json()["id"]] == [key_id]
    by_admin = api.post("/webhooks", json={"url": "http://127.0.0.1:9/made-by-admin", "events": ["*"]})
    assert by_admin.json()["created_by"] == "key_admin"
    # The maker is the caller, never what the body says.
    forged = {"url": "http://127.0.0.1:9/forged", "events": ["*"], "created_by": "key_admin"}
    assert_error(api.post("/webhooks", json=forged, key=secret), 422, "validation_error", "created_by")


def test_a_subscription_stored_before_keys_were_recorded_shows_none_and_is_read_listed_and_deleted(
    api: InProcessApi,
):
    import boto3

    _, secret = new_key(api, unique("old"))
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/old", "events": ["order.created"]}, key=secret)
    assert made.status_code == 201, made.text
    hook_id = made.json()["id"]
    # As a subscription made before `created_by` was stored.
    boto3.client("dynamodb", region_name="us-east-1").update_item(
        TableName=os.environ["CATALOG_TABLE"],
        Key={"pk": {"S": "WEBHOOKS"}, "sk": {"S": hook_id}},
        UpdateExpression="REMOVE created_by",
    )

    shown = api.get(f"/webhooks/{hook_id}", key=secret)
    assert (shown.status_code, shown.json()["created_by"]) == (200, None), shown.text
    listed = api.get("/webhooks", key=secret)
    assert listed.status_code == 200, listed.text
    assert [(hook["id"], hook["created_by"]) for hook in listed.json()["items"]] == [(hook_id, None)]
    assert api.request("DELETE", f"/webhooks/{hook_id}", key=secret).status_code == 204


def test_a_channel_keys_star_subscription_is_its_channels_and_it_cannot_name_another(api: InProcessApi):
    # API.md: a channel key subscribes to its channel's events only. Its ["*"] is bound to its
    # channel (core.webhooks.Webhook.wants then sends it that channel's events only).
    channel = unique("own")
    key_id, secret = new_key(api, channel)
    body = {"url": "http://127.0.0.1:9/star", "events": ["*"]}

    made = api.post("/webhooks", json=body, key=secret)
    assert made.status_code == 201, made.text
    assert (made.json()["channel"], made.json()["created_by"]) == (channel, key_id)
    assert api.get(f"/webhooks/{made.json()['id']}").json()["channel"] == channel
    assert_error(api.post("/webhooks", json={**body, "channel": "elsewhere"}, key=secret), 403, "forbidden")
    assert api.post("/webhooks", json={**body, "channel": channel}, key=secret).status_code == 201


def test_who_deletes_a_subscription_is_logged_with_it_and_who_made_it(
    api: InProcessApi, caplog: pytest.LogCaptureFixture
):
    # Deleting a subscription removes the record of who made it: the log line is what is left.
    maker_id, maker = new_key(api)
    deleter_id, deleter = new_key(api)
    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/gone?token=kept-out", "events": ["*"]}, key=maker)
    hook_id = made.json()["id"]
    caplog.set_level(logging.INFO)
    caplog.clear()

    assert api.request("DELETE", f"/webhooks/{hook_id}", key=deleter).status_code == 204

    (logged,) = [record for record in caplog.records if record.getMessage() == "webhook deleted"]
    assert logged.levelname == "INFO"
    assert (logged.webhook_id, logged.key_id, logged.created_by) == (hook_id, deleter_id, maker_id)
    assert logged.host == "127.0.0.1" and "kept-out" not in str(vars(logged))  # a URL's token stays out


def test_who_subscribes_is_logged_with_the_host_the_events_go_to(api: InProcessApi, caplog: pytest.LogCaptureFixture):
    maker_id, maker = new_key(api)
    caplog.set_level(logging.INFO)
    caplog.clear()

    made = api.post("/webhooks", json={"url": "http://127.0.0.1:9/to?token=kept-out", "events": ["*"]}, key=maker)

    (logged,) = [record for record in caplog.records if record.getMessage() == "webhook subscribed"]
    assert (logged.webhook_id, logged.key_id, logged.host) == (made.json()["id"], maker_id, "127.0.0.1")
    assert (logged.events, logged.webhook_channel) == (["*"], None)
    assert "kept-out" not in str(vars(logged))


def test_a_subscribe_retried_with_its_idempotency_key_answers_the_first_subscription_and_makes_no_second(
    api: InProcessApi, caplog: pytest.LogCaptureFixture
):
    """A client whose create timed out sends it again under its Idempotency-Key: the same
    subscription and secret (read from the subscription itself: the idempotency record keeps only
    its id), not a second subscription sending every event twice; another body under the key is
    409; once the subscription is deleted, the key answers 404, not a secret no longer used."""
    caplog.set_level(logging.INFO)
    key = issue(api, "webhooks:write")
    body = {"url": f"http://127.0.0.1:9/{unique('hook')}", "events": ["order.created"]}
    headers = {"Idempotency-Key": unique("retry")}

    first = api.post("/webhooks", json=body, headers=headers, key=key)
    again = api.post("/webhooks", json=body, headers=headers, key=key)
    other = api.post("/webhooks", json={**body, "events": ["*"]}, headers=headers, key=key)

    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()) == (201, first.json())
    assert first.json()["secret"].startswith("whsec_")
    assert_error(other, 409, "idempotency_key_reused", "Idempotency-Key")
    mine = [w for w in api.get("/webhooks", params={"limit": 100}, key=key).json()["items"] if w["url"] == body["url"]]
    assert [w["id"] for w in mine] == [first.json()["id"]]
    subscribed = [r for r in caplog.records if r.getMessage() == "webhook subscribed"]
    assert [r.webhook_id for r in subscribed] == [first.json()["id"]]  # made once, logged once
    records = boto3.client("dynamodb").scan(TableName=os.environ["IDEMPOTENCY_TABLE"])["Items"]
    assert first.json()["id"] in json.dumps(records)
    assert first.json()["secret"] not in json.dumps(records)
    assert api.request("DELETE", f"/webhooks/{first.json()['id']}", key=key).status_code == 204
    assert_error(api.post("/webhooks", json=body, headers=headers, key=key), 404, "not_found")


def test_another_key_sending_the_same_idempotency_key_and_body_gets_a_subscription_and_secret_of_its_own(
    api: InProcessApi,
):
    # An Idempotency-Key is a client's own: another client choosing the same one ("create-hook-1")
    # for the same subscription must not be answered with the first one's, its signing secret included.
    body = {"url": f"http://127.0.0.1:9/{unique('hook')}", "events": ["order.created"]}
    headers = {"Idempotency-Key": unique("shared")}

    first = api.post("/webhooks", json=body, headers=headers, key=issue(api, "webhooks:write"))
    second = api.post("/webhooks", json=body, headers=headers, key=issue(api, "webhooks:write"))

    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["secret"] != first.json()["secret"]


def test_a_subscribe_and_its_retry_under_one_key_at_once_make_one_subscription(api: InProcessApi, monkeypatch):
    # The first attempt's record read as expired in progress (its deadline, as the retry's clock
    # reads it, passed: hosts' clocks differ) while it was still about to write: its retry runs whole
    # meanwhile. The id both derive from the key lets one write land; the other is told of it by the
    # write's own condition and answers it (as a purchase order's create does).
    from functions.adapters.webhooks import DynamoWebhooks
    from infra.local.lambdas import RUNNING

    key = issue(api, "webhooks:write")
    body = {"url": f"http://127.0.0.1:9/{unique('hook')}", "events": ["order.created"]}
    headers = {"Idempotency-Key": unique("twin")}
    add = DynamoWebhooks.add
    retry: list[Any] = []

    def add_after_the_retry(store: DynamoWebhooks, *args: Any, **kwargs: Any) -> None:
        if not retry:
            retry.append(None)
            running, RUNNING.function = RUNNING.function, None  # the test's own reads, not the function's
            table = boto3.client("dynamodb", region_name="us-east-1")
            for item in table.scan(TableName=os.environ["IDEMPOTENCY_TABLE"])["Items"]:
                if item["status"]["S"] == "INPROGRESS":
                    item["in_progress_expiration"] = {"N": "1"}
                    table.put_item(TableName=os.environ["IDEMPOTENCY_TABLE"], Item=item)
            RUNNING.function = running
            retry[0] = api.post("/webhooks", json=body, headers=headers, key=key)
        return add(store, *args, **kwargs)

    monkeypatch.setattr(DynamoWebhooks, "add", add_after_the_retry)
    first = api.post("/webhooks", json=body, headers=headers, key=key)

    assert (retry[0].status_code, first.status_code) == (201, 201), (retry[0].text, first.text)
    assert retry[0].json() == first.json()
    mine = [w for w in api.get("/webhooks", params={"limit": 100}, key=key).json()["items"] if w["url"] == body["url"]]
    assert [w["id"] for w in mine] == [first.json()["id"]]
