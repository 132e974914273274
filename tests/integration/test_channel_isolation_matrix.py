"""Channel isolation, route by route: a key bound to channel A, holding every scope a channel key
may hold, sent at every route that names channel B's order, shipment, return, webhook or
customer. API.md: another channel's order answers 404 exactly like a missing one, lists never
include it, and nothing of it changes. The single routes' own tests check a few of these each;
this walks them all against one order that has everything (shipped, delivered, a return, a
refund, a webhook), so a route added later without the channel check shows here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from plugins.flat_rate_carrier import tracking_number
from tests.builders import order_body
from tests.e2e.client import Catalog, assert_error, unique
from tests.integration.in_process import (
    InProcessApi,
    in_process_api_with_labels,
    issue,
    returns_run_inline,
)

# Every scope a key bound to a channel may hold (admin sees every channel, so it cannot be bound).
CHANNEL_SCOPES = (
    "orders:write",
    "orders:read",
    "orders:approve",
    "inventory:write",
    "catalog:write",
    "fulfillment:write",
    "returns:write",
    "refunds:write",
    "purchasing:write",
    "webhooks:write",
    "reports:read",
    "audit:read",
)


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels(webhooks=True) as started, returns_run_inline():
        yield started


def _run_workflow(order_id: str) -> None:
    from functions.bootstrap import Config, bootstrap

    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)


def _place(api: InProcessApi, channel: str, sku: str, customer: str, quantity: int = 2) -> dict[str, Any]:
    body = order_body(
        channel=channel,
        external_id=unique("ext"),
        customer={"id": customer, "email": f"{customer}@example.com"},
        lines=[{"sku": sku, "quantity": quantity}],
    )
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    _run_workflow(placed.json()["id"])
    return api.get(f"/orders/{placed.json()['id']}").json()


class Scene:
    """Channel B's orders (one delivered, with a return and a refund; one allocated, with a pending
    shipment), its webhook, and a key of channel A with every scope."""

    def __init__(self, api: InProcessApi):
        self.api = api
        catalog = Catalog(api)
        self.warehouse = catalog.location()
        self.sku = catalog.product("10.00", weight_grams=300)
        catalog.stock(self.sku, self.warehouse, 50)
        self.channel_a = f"a-{uuid.uuid4().hex[:8]}"
        self.channel_b = f"b-{uuid.uuid4().hex[:8]}"
        self.customer = f"cus-{uuid.uuid4().hex[:8]}"
        delivered = _place(api, self.channel_b, self.sku, self.customer)
        self.shipment = delivered["shipments"][0]["id"]
        for action in ("ship", "deliver"):
            done = api.post(f"/orders/{delivered['id']}/shipments/{self.shipment}/{action}", json={})
            assert done.status_code == 200, done.text
        self.order = delivered["id"]
        rma = api.post(
            f"/orders/{self.order}/returns",
            json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]},
        )
        assert rma.status_code == 201, rma.text
        self.rma = rma.json()["id"]
        refund = api.post(f"/orders/{self.order}/refunds", json={"amount": {"amount": "1.00", "currency": "USD"},
                                                                   "reason": "late"})  # fmt: skip
        assert refund.status_code == 201, refund.text
        pending = _place(api, self.channel_b, self.sku, self.customer, quantity=1)
        self.pending = pending["id"]
        self.pending_shipment = pending["shipments"][0]["id"]
        subscription = {"url": "http://127.0.0.1:9/hook", "events": ["*"], "channel": self.channel_b}
        hook = api.post("/webhooks", json=subscription)
        assert hook.status_code == 201, hook.text
        self.webhook = hook.json()["id"]
        self.key_a = issue(api, *CHANNEL_SCOPES, channel=self.channel_a)
        self.initial = self.state()

    def state(self) -> Any:
        """What a refused request must leave as it was: both orders (their versions and histories),
        the return, the refunds, the webhook."""
        api = self.api
        return (
            [api.get(f"/orders/{oid}").json()["version"] for oid in (self.order, self.pending)],
            [api.get(f"/orders/{oid}/history").json()["items"] for oid in (self.order, self.pending)],
            {k: v for k, v in api.get(f"/returns/{self.rma}").json().items() if k != "label_url"},
            api.get(f"/orders/{self.order}/refunds").json(),
            api.get(f"/webhooks/{self.webhook}").json(),
        )


@pytest.fixture(scope="module")
def scene(api: InProcessApi) -> Scene:
    return Scene(api)


RETURN_LINE = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "x", "reason_code": "other"}]}
# Every route that names one of channel B's things by id, as channel A's key sends it.
BY_ID = [
    ("GET", "/orders/{order}", None),
    ("GET", "/orders/{order}/history", None),
    ("GET", "/orders/{order}/returns", None),
    ("GET", "/orders/{order}/refunds", None),
    ("GET", "/orders/{order}/notifications", None),
    ("GET", "/orders/{order}/access-log", None),
    ("PATCH", "/orders/{pending}", {"shipping_method": "standard"}),
    ("POST", "/orders/{pending}/cancel", {"reason": "mine now"}),
    ("POST", "/orders/{pending}/hold", {"reason": "other"}),
    ("POST", "/orders/{pending}/release", {}),
    ("POST", "/orders/{pending}/shipments/{pending_shipment}/ship", {}),
    ("POST", "/orders/{pending}/shipments/{pending_shipment}/reject", {"reason": "no staff"}),
    ("POST", "/orders/{pending}/shipments/{pending_shipment}/ready", {}),
    ("POST", "/orders/{order}/shipments/{shipment}/deliver", {}),
    ("POST", "/orders/{order}/returns", RETURN_LINE),
    ("POST", "/orders/{order}/refunds", {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "x"}),
    ("GET", "/returns/{rma}", None),
    ("POST", "/returns/{rma}/approve", {}),
    ("POST", "/returns/{rma}/reject", {}),
    ("POST", "/returns/{rma}/receive", "receipt"),
    ("GET", "/webhooks/{webhook}", None),
    ("GET", "/webhooks/{webhook}/deliveries", None),
    ("DELETE", "/webhooks/{webhook}", None),
    ("GET", "/customers/{customer}", None),
]


# Routes naming an id that are not channel B's to hide: global records (products, stock, locations,
# vendors, purchase orders), admin's keys; and, walked elsewhere, imports (a channel key sees none:
# test_forged_cursors, test_import_report_api) and a delivery's retry (the scene's webhook has no
# delivery: test_webhook_delivery_endings).
NOT_A_CHANNELS = re.compile(
    r"^/(api-keys|products|inventory|locations|vendors|purchase-orders|imports|carriers)/"
    r"|^/webhooks/\{webhook_id\}/deliveries/\{delivery_id\}"
)


def test_every_route_that_names_a_channels_thing_is_in_the_matrix():
    from infra.local.template import Template

    walked = {(method, re.sub(r"\{(\w+)\}", "{}", path)) for method, path, _ in BY_ID}
    named = {
        (route.method, re.sub(r"\{(\w+)\}", "{}", route.path))
        for route in Template.load().api_routes()
        if "{" in route.path and not NOT_A_CHANNELS.search(route.path)
    }

    assert named == walked


def _fill(scene: Scene, path: str) -> str:
    return path.format(
        order=scene.order, pending=scene.pending, shipment=scene.shipment, pending_shipment=scene.pending_shipment,
        rma=scene.rma, webhook=scene.webhook, customer=scene.customer,
    )  # fmt: skip


# Each route as sent plainly, and each POST with an Idempotency-Key too (its record is the caller's).
CASES = [(*route, False) for route in BY_ID] + [(*route, True) for route in BY_ID if route[0] == "POST"]


@pytest.mark.parametrize(
    ("method", "path", "body", "with_idempotency_key"),
    CASES,
    ids=[f"{m} {p}{' idempotency-key' if k else ''}" for m, p, _, k in CASES],
)
def test_another_channels_thing_named_by_id_is_404_and_changes_nothing(
    scene: Scene, method: str, path: str, body: Any, with_idempotency_key: bool
):
    api = scene.api
    if body == "receipt":
        body = {"location_id": scene.warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    headers = {"Idempotency-Key": unique("key")} if with_idempotency_key else {}
    if method == "PATCH":
        headers["If-Match"] = str(api.get(f"/orders/{scene.pending}").json()["version"])

    answer = api.request(method, _fill(scene, path), key=scene.key_a, json=body, headers=headers)

    assert_error(answer, 404, "not_found")
    if method != "GET":
        # Every request of this module is refused: channel B's things stay as the scene made them.
        assert scene.state() == scene.initial


def test_lists_and_searches_of_a_channel_key_never_show_another_channels_things(scene: Scene):
    api, key = scene.api, scene.key_a

    assert api.get("/orders", key=key, params={"customer_id": scene.customer}).json()["items"] == []
    assert api.get("/orders", key=key, params={"status": "allocated", "limit": 100}).json()["items"] == []
    assert api.get("/orders", key=key, params={"jeopardy": "true", "limit": 100}).json()["items"] == []
    assert api.get("/returns", key=key, params={"limit": 100}).json()["items"] == []
    assert api.get("/webhooks", key=key, params={"limit": 100}).json()["items"] == []
    assert api.get("/customers", key=key, params={"email": f"{scene.customer}@example.com"}).json()["items"] == []
    assert api.get("/imports", key=key).json()["items"] == []
    for report in ("top-products", "top-customers", "top-regions"):
        assert_error(api.get(f"/reports/{report}", key=key, params={"currency": "USD", "channel": scene.channel_b}),
                     403, "forbidden")  # fmt: skip
        mine = api.get(f"/reports/{report}", key=key, params={"currency": "USD"})
        assert mine.status_code == 200 and mine.json()["items"] == [], mine.text
    assert_error(api.get("/orders", key=key, params={"channel": scene.channel_b}), 403, "forbidden")


def test_batches_naming_another_channels_shipments_or_orders_change_and_show_nothing(scene: Scene):
    api, key = scene.api, scene.key_a

    confirmed = api.post("/shipments/confirmations", key=key, json={"items": [
        {"order_id": scene.pending, "shipment_id": scene.pending_shipment, "action": "ship"},
        {"order_id": scene.order, "shipment_id": scene.shipment, "action": "deliver"},
    ]})  # fmt: skip
    simulated = api.post("/sourcing/simulate", key=key, json={"orders": [scene.pending]})
    # A delivered scan is applied (deliver); an in-transit scan is only looked up (find), and its
    # `not_recorded` would tell channel A that channel B's parcel exists and has left.
    scanned = api.post("/carriers/oms-flat-rate/tracking", key=key, json={"events": [
        {"reference": f"{order_id}/{shipment_id}", "tracking_number": tracking_number(shipment_id),
         "status": status, "at": "2026-11-23T09:30:00Z"}
        for order_id, shipment_id, status in (
            (scene.pending, scene.pending_shipment, "delivered"), (scene.order, scene.shipment, "in_transit"),
        )
    ]})  # fmt: skip

    assert confirmed.status_code == 200, confirmed.text
    assert [item["error"]["code"] for item in confirmed.json()["items"]] == ["not_found", "not_found"]
    assert all(item["order_status"] is None for item in confirmed.json()["items"])
    unknown = api.post("/sourcing/simulate", key=key, json={"orders": ["ord_" + "a" * 24]})
    # As for an id that names nothing (a body, not a path: 422 naming the entry).
    assert (
        (simulated.status_code, simulated.json()["error"]["details"])
        == (unknown.status_code, unknown.json()["error"]["details"])
        == (422, [{"field": "orders[0]", "message": "no order with this id"}])
    )
    assert scanned.status_code == 200, scanned.text
    assert [update["outcome"] for update in scanned.json()["updates"]] == ["unknown_shipment"] * 2
    assert scene.state() == scene.initial


def test_a_channel_key_cannot_place_or_subscribe_for_another_channel(scene: Scene):
    api, key = scene.api, scene.key_a
    body = order_body(channel=scene.channel_b, lines=[{"sku": scene.sku, "quantity": 1}])

    assert_error(api.post("/orders", key=key, json=body), 403, "forbidden")
    hook = {"url": "http://127.0.0.1:9/x", "events": ["*"], "channel": scene.channel_b}
    assert_error(api.post("/webhooks", key=key, json=hook), 403, "forbidden")
