"""Webhooks over real HTTP: a receiver on loopback subscribes, orders move, signed events arrive;
a receiver that fails is retried until it answers (issue 14 items 1 and 2)."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog, assert_error, order_body, put_network, times, unique
from tests.e2e.conftest import workflow_stack
from tests.readme_code import readme_verify

WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with workflow_stack() as started:
        yield started


@pytest.fixture(autouse=True)
def unsubscribed_after(api: Api) -> Iterator[None]:
    """Every subscription is deleted as each test ends. The module's tests share one stack, whose
    delivery function runs at most 4 attempts at once (the local cap on its mapping's
    MaximumConcurrency), and a subscription left to a closed receiver or to 127.0.0.1:9 takes
    every later event, each retried about ten times in its 60 s window: measured (when the local
    delivery function ran one attempt at a time), the dead "*" subscription one test left took 22
    of the next tests' 103 delivery runs, all in the queue ahead of a later test's retries.
    Deleted, each ends at its next attempt."""
    yield
    hooks, cursor = [], None
    while True:
        page = api.get("/webhooks", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        hooks += [hook["id"] for hook in page.json()["items"]]
        if not (cursor := page.json()["next_cursor"]):
            break
    for hook in hooks:
        assert api.request("DELETE", f"/webhooks/{hook}").status_code in (204, 404)


# How often a receiver's serving loop looks whether close() asked it to stop: at the socketserver's
# default 0.5 s, each close waited 0.25 s on average (0.36 s measured), eight closes in this module.
SHUTDOWN_POLL_SECONDS = 0.05


class _Server:
    """An HTTP server on 127.0.0.1 in a thread of its own, serving `handler` at /hooks."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], *, block_on_close: bool = True) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.block_on_close = block_on_close
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(_Server):
    """An HTTP server on 127.0.0.1 that records each POST (its headers, body and when it came);
    `failures` first answers are 503."""

    def __init__(self, failures: int = 0):
        self.received: list[dict[str, Any]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    receiver.received.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
                    failing = receiver.failures > 0
                    receiver.failures -= 1
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self._serve(Handler)

    def wait_for(self, predicate: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_SECONDS
        while not predicate(self.received):
            assert time.monotonic() < deadline, (
                f"not received in time: {[r['headers'].get('OMS-Event-Type') for r in self.received]}"
            )
            time.sleep(0.1)
        return list(self.received)


verify = readme_verify()


def events_of(received: list[dict[str, Any]], order_id: str) -> list[str]:
    return [json.loads(r["body"])["type"] for r in received if json.loads(r["body"])["data"]["order"]["id"] == order_id]


def test_an_order_reaches_signed_subscribers_a_failing_one_retried_a_rule_on_the_bus_its_channel_and_its_access_log(
    stack: EmbeddedStack, api: Api
):
    """Subscriptions refused where a delivery may not go, and a channel key's its own; an order's
    signed events at a "*" subscriber, a channel-bound one that fails twice retried (and retried
    once more by hand), order.created at a rule on the template's bus; the order shipped, its
    customer's notification read by its channel; who read it in its access log; every call the
    functions made on the way granted by the template."""
    from tests.template_iam import calls_by_function, granted

    for url in ("ftp://example.com/x", "http://example.com/hook", "http://10.0.0.1/hook", "https://127.0.0.1/hook"):
        assert_error(api.post("/webhooks", json={"url": url, "events": ["*"]}), 422, "webhook_url_refused", "url")
    assert_error(api.post("/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["order.nope"]}), 422)
    shop = unique("shop")
    key = api.post("/api-keys", json={"name": unique("hooks"), "scopes": ["webhooks:write"], "channel": shop})
    assert key.status_code == 201, key.text
    secret = key.json()["key"]
    own = api.post("/webhooks", json={"url": "http://127.0.0.1:9/own", "events": ["shipment.shipped"]}, key=secret)
    assert own.status_code == 201, own.text
    assert own.json()["channel"] == shop
    assert_error(
        api.post("/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"], "channel": "web"}, key=secret), 403
    )
    admins = api.post("/webhooks", json={"url": "http://127.0.0.1:9/admin", "events": ["*"]})
    assert_error(api.get(f"/webhooks/{admins.json()['id']}", key=secret), 404)
    listed = api.get("/webhooks", key=secret).json()["items"]
    assert [hook["id"] for hook in listed] == [own.json()["id"]]
    reader = api.post("/api-keys", json={"name": unique("reader"), "scopes": ["orders:read"]}).json()
    assert_error(api.get("/webhooks", key=reader["key"]), 403)
    # A "*" subscription to 127.0.0.1:9 would take (and retry) every event of the orders below.
    assert api.request("DELETE", f"/webhooks/{admins.json()['id']}").status_code == 204

    events, sqs = stack.client("events"), stack.client("sqs")
    bus = stack.event_bus_names["EventBus"]
    assert bus == f"{stack.stack_name}-events" and events.describe_event_bus(Name=bus)["Name"] == bus
    tap = sqs.create_queue(QueueName=unique("tap"))["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="created", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["order.created"]}))
    events.put_targets(Rule="created", EventBusName=bus, Targets=[{"Id": "tap", "Arn": tap_arn}])

    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 5)
    channel = unique("web")
    receiver, flaky = Receiver(), Receiver(failures=2)
    try:
        subscribed = api.post("/webhooks", json={"url": receiver.url, "events": ["*"]})
        assert subscribed.status_code == 201, subscribed.text
        webhook = subscribed.json()
        assert webhook["id"].startswith("whk_") and webhook["secret"]
        assert "secret" not in api.get(f"/webhooks/{webhook['id']}").json()
        # A channel-bound subscription to allocations only, whose receiver fails twice first.
        flaky_hook = api.post("/webhooks", json={"url": flaky.url, "events": ["order.allocated"], "channel": channel})
        assert flaky_hook.status_code == 201, flaky_hook.text

        with calls_by_function(stack) as calls:
            placed = api.post("/orders", json=order_body((sku, 1), channel=channel))
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            other = api.post("/orders", json=order_body((sku, 1)))  # channel "web": not the flaky one's
            assert other.status_code == 201, other.text

            received = receiver.wait_for(lambda got: "order.allocated" in events_of(got, order_id))
            assert events_of(received, order_id)[:3] == ["order.created", "order.authorized", "order.allocated"]
            for delivery in received:
                assert verify(webhook["secret"], delivery["headers"], delivery["body"])
                event = json.loads(delivery["body"])
                assert delivery["headers"]["OMS-Event-Id"] == event["id"] and event["id"].startswith("evt_")
                assert delivery["headers"]["OMS-Event-Type"] == event["type"]
            allocated = next(json.loads(r["body"]) for r in received if events_of([r], order_id) == ["order.allocated"])
            assert allocated["data"]["order"]["status"] == "allocated"

            def tapped() -> list[dict[str, Any]]:
                messages = sqs.receive_message(QueueUrl=tap, MaxNumberOfMessages=10).get("Messages", [])
                return [
                    e for m in messages if (e := json.loads(m["Body"]))["detail"]["data"]["order"]["id"] == order_id
                ]

            found = _when(tapped, "order.created on the bus")
            assert found[0]["source"] == "oms" and found[0]["detail"]["type"] == "order.created"

            # The failing receiver: 503, 503, then 204 for the same event (same id), within the
            # compressed local schedule; it never gets the other channel's order.
            attempts = flaky.wait_for(lambda got: len(got) >= 3)
            bodies = [json.loads(a["body"]) for a in attempts]
            assert {b["id"] for b in bodies} == {bodies[0]["id"]} and bodies[0]["type"] == "order.allocated"
            assert {b["data"]["order"]["id"] for b in bodies} == {order_id}
            deliveries = _deliveries_when(api, flaky_hook.json()["id"], "delivered")
            assert [(d["event_id"], d["attempts"], d["last_status_code"]) for d in deliveries] == [
                (bodies[0]["id"], 3, 204)
            ]
            # A manual retry sends it once more, with the same event id.
            retried = api.post(f"/webhooks/{flaky_hook.json()['id']}/deliveries/{deliveries[0]['id']}/retry")
            assert retried.status_code == 202, retried.text
            again = flaky.wait_for(lambda got: len(got) >= 4)
            assert json.loads(again[3]["body"])["id"] == bodies[0]["id"]

            # Who reads the order is in its access log: a list is a read of each order it answers.
            auditor = api.post("/api-keys", json={"name": "auditor", "scopes": ["audit:read"]}).json()
            assert api.get(f"/orders/{order_id}", key=reader["key"]).status_code == 200
            listed = api.get("/orders", key=reader["key"], params={"limit": 2})
            assert [order["id"] for order in listed.json()["items"]] == [other.json()["id"], order_id], listed.text

            def my_reads() -> list[dict[str, Any]]:
                answer = api.get(f"/orders/{order_id}/access-log", key=auditor["key"])
                assert answer.status_code == 200, answer.text
                found = [i for i in answer.json()["items"] if i["actor"] == reader["id"]]
                return found if len(found) == 2 else []

            entries = _when(my_reads, "reads in the access log")
            assert [entry["action"] for entry in entries] == ["get", "list"]
            items = api.get(f"/orders/{order_id}/access-log", key=auditor["key"]).json()["items"]
            assert items[0]["action"] == "created" and times(items) == sorted(times(items))

            # Shipped: its customer's notification, readable by its channel's key and no other's.
            (shipment,) = _allocated(api, order_id)["shipments"]
            shipped = api.post(
                f"/orders/{order_id}/shipments/{shipment['id']}/ship", json={"tracking_number": "TRACK42"}
            )
            assert shipped.status_code == 200, shipped.text
            notes = _when(lambda: api.get(f"/orders/{order_id}/notifications").json()["items"], "notification")
        assert {"EventsFunction", "WebhookDeliveryFunction", "ApiFunction", "AccessLogFunction"} <= set(calls), sorted(
            calls
        )
        for function, needed in calls.items():
            assert needed <= granted(function), f"{function} calls what it is not granted: {needed - granted(function)}"

        assert [(n["kind"], n["to"]["email"]) for n in notes] == [("shipped", placed.json()["customer"]["email"])]
        assert "TRACK42" in notes[0]["body"] and notes[0]["details"]["tracking_number"] == "TRACK42"
        cs = api.post("/api-keys", json={"name": "cs", "scopes": ["orders:read"], "channel": channel}).json()["key"]
        # The same notification (its delivery fields, sent_via and sent_at, may be set between reads).
        as_channel = api.get(f"/orders/{order_id}/notifications", key=cs).json()["items"]
        assert [(n["id"], n["kind"], n["body"]) for n in as_channel] == [(n["id"], n["kind"], n["body"]) for n in notes]
        elsewhere = api.post("/api-keys", json={"name": "cs", "scopes": ["orders:read"], "channel": "elsewhere"})
        assert_error(api.get(f"/orders/{order_id}/notifications", key=elsewhere.json()["key"]), 404)

        assert api.request("DELETE", f"/webhooks/{webhook['id']}").status_code == 204
        assert_error(api.get(f"/webhooks/{webhook['id']}"), 404, "not_found")
    finally:
        receiver.close()
        flaky.close()


def _deliveries_when(api: Api, webhook_id: str, status: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        response = api.get(f"/webhooks/{webhook_id}/deliveries")
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if items and all(item["status"] == status for item in items):
            return items
        assert time.monotonic() < deadline, items
        time.sleep(0.2)


def _when(read: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while not (found := read()):
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.2)
    return found


def _allocated(api: Api, order_id: str) -> dict[str, Any]:
    def allocated() -> dict[str, Any] | None:
        order = api.get(f"/orders/{order_id}").json()
        return order if order["status"] == "allocated" else None

    return _when(allocated, "allocation")


def test_a_return_and_its_refund_reach_a_subscriber_as_the_contracts_events(stack: EmbeddedStack, api: Api):
    """return.created and return.received (the Returns table's stream) and refund.succeeded once the
    gateway approved it (never at the refund's pending write), with calls the template grants."""
    from tests.template_iam import calls_by_function, granted

    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("12.00")
    catalog.stock(sku, network["west"], 3)
    channel = unique("web")
    receiver = Receiver()
    try:
        types = ["return.created", "return.received", "refund.succeeded", "refund.failed"]
        subscribed = api.post("/webhooks", json={"url": receiver.url, "events": types, "channel": channel})
        assert subscribed.status_code == 201, subscribed.text
        placed = api.post("/orders", json=order_body((sku, 1), channel=channel))
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["id"]

        (shipment,) = _allocated(api, order_id)["shipments"]
        for action in ("ship", "deliver"):
            assert api.post(f"/orders/{order_id}/shipments/{shipment['id']}/{action}").status_code == 200
        with calls_by_function(stack) as calls:
            requested = api.post(
                f"/orders/{order_id}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "small"}]}
            )
            assert requested.status_code == 201, requested.text
            rma = requested.json()["id"]
            receipt = {
                "location_id": network["west"],
                "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}],
            }
            received = api.post(f"/returns/{rma}/receive", json=receipt)
            assert received.status_code in (200, 202), received.text
            got = receiver.wait_for(lambda got: len(got) >= 3)
        bodies = sorted((json.loads(r["body"]) for r in got), key=lambda event: types.index(event["type"]))
        assert [b["type"] for b in bodies] == ["return.created", "return.received", "refund.succeeded"]
        assert [b["data"]["return"]["id"] for b in bodies[:2]] == [rma, rma]
        assert [b["data"]["return"]["status"] for b in bodies[:2]] == ["authorized", "received"]
        assert bodies[2]["data"]["refund"]["status"] == "succeeded"
        assert {b["data"]["order"]["id"] for b in bodies} == {order_id}
        for delivery in got:
            assert verify(subscribed.json()["secret"], delivery["headers"], delivery["body"])
        assert calls["EventsFunction"] <= granted("EventsFunction"), calls["EventsFunction"] - granted("EventsFunction")
    finally:
        receiver.close()


class HangingReceiver(_Server):
    """An HTTP server on 127.0.0.1 that takes each POST and never answers: it holds the connection
    until the sender gives up and closes it (a delivery attempt's 10 s), or until close(), which
    hangs up on every connection it still holds (the attempt ends then, failed, as at a subscriber
    that went away: the test's end waits for what it set going, and a hold it left waited up to
    its 10 s). `holds`: each POST's [when it came, when its hold ended (None: still held)]."""

    def __init__(self) -> None:
        self.holds: list[list[float | None]] = []
        self.holding: list[socket.socket] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hold: list[float | None] = [time.monotonic(), None]
                receiver.holds.append(hold)  # one server thread a connection; read by the test only
                receiver.holding.append(self.connection)
                try:
                    while self.connection.recv(1024):  # b"": the sender closed the connection
                        pass
                except OSError:
                    pass
                hold[1] = time.monotonic()

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler, block_on_close=False)  # a hold the sender has not ended yet is not waited for

    def close(self) -> None:
        for connection in self.holding:
            with contextlib.suppress(OSError):  # the sender hung up first
                connection.shutdown(socket.SHUT_RDWR)  # the handler's recv() answers b"": it returns
        super().close()


def test_subscribers_that_hang_hold_up_neither_another_s_retries_nor_a_healthy_one(stack: EmbeddedStack, api: Api):
    """API.md: locally a failing delivery gets at least 3 attempts within the first 60 s. An attempt
    at a subscriber that takes the connection and never answers holds its run 10 s; one run at a
    time, two such subscribers left the failing one 1 or 2 attempts in its first 60 s and the
    healthy one waiting behind them. The delivery mapping runs side by side (its
    MaximumConcurrency, at most 4 locally)."""
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("8.00")
    catalog.stock(sku, network["west"], 5)
    hanging, failing, healthy = [HangingReceiver(), HangingReceiver()], Receiver(failures=1_000), Receiver()
    try:
        for receiver in (*hanging, failing, healthy):
            subscribed = api.post("/webhooks", json={"url": receiver.url, "events": ["order.created"]})
            assert subscribed.status_code == 201, subscribed.text
        placed = api.post("/orders", json=order_body((sku, 1)))
        assert placed.status_code == 201, placed.text

        delivered = healthy.wait_for(lambda got: len(got) >= 1)
        attempts = failing.wait_for(lambda got: len(got) >= 3)  # within WAIT_SECONDS: the contract's 60 s
        assert {json.loads(a["body"])["data"]["order"]["id"] for a in (*delivered, *attempts)} == {placed.json()["id"]}
        assert all(receiver.holds for receiver in hanging), "a hanging subscriber was never tried"
        # Side by side: both hanging subscribers' first attempts were held at once, and the healthy
        # one was answered before either ended (one run at a time, it waited behind them).
        first = [receiver.holds[0] for receiver in hanging]
        ended = min(math.inf if end is None else end for _, end in first)
        assert max(start for start, _ in first) < ended and delivered[0]["at"] < ended, (first, delivered[0]["at"])
    finally:
        for receiver in (*hanging, failing, healthy):
            receiver.close()
