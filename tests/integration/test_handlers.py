"""The real Lambda handlers under moto: sample events, routes vs template, plugin failures, authorizer."""

from __future__ import annotations

import json
import os
import random
import string
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from core import hookimpl
from core.access import hash_secret
from core.models import HistoryEntry, Order, Payment, ReviewRequest, Shipment, ShipmentLine, Totals, utc_text
from core.pricing_types import TaxRate
from core.status import OrderStatus, PaymentStatus
from core.workflow_types import PaymentResult
from infra.local.template import Template
from tests.unit.conftest import a_stored_order, usd

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


class Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def ensure_admin_key(secret: str) -> None:
    from functions.api.dependencies import container

    container().api_keys.ensure_admin(secret)


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def api(evt: dict) -> tuple[int, dict]:
    from functions.api.app import lambda_handler

    response = lambda_handler(evt, Context())
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def seeded(aws):
    from functions.api.dependencies import container

    c = container()
    from core.models import LocationInput, ProductInput, StockCount
    from tests.builders import location_body, product_body

    c.catalog.put_product("TSHIRT-BLK-M", ProductInput.model_validate(product_body()))
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    c.inventory.count("TSHIRT-BLK-M", "wh-east", StockCount(on_hand=10).on_hand)
    return c


def test_sample_events_run_through_the_real_handler(seeded):
    status, placed = api(event("api_place_order.json"))
    assert status == 201
    status, replay = api(event("api_place_order.json"))
    assert (status, replay) == (201, placed)
    status, fetched = api(event("api_get_order.json"))
    assert status == 200
    assert fetched["id"] == placed["id"]


def test_every_route_of_the_app_is_an_api_event_of_the_template_and_back():
    from functions.api.app import every_route

    app = every_route()
    declared = {(r.method, r.path) for r in Template.load().api_routes()}
    served = {(route.method.upper(), route.openapi_path) for route in app._static_routes + app._dynamic_routes}
    assert served == declared


class ExplodingTax:
    @hookimpl(tryfirst=True)
    def oms_tax_rate(self, line, address, draft):
        raise KeyError("tax service down")


class NonsenseTax:
    @hookimpl(tryfirst=True)
    def oms_tax_rate(self, line, address, draft):
        return Decimal("0.2")  # a bare number instead of a TaxRate


class NegativeTax:
    @hookimpl(tryfirst=True)
    def oms_tax_rate(self, line, address, draft):
        return TaxRate.model_construct(rate=Decimal("-0.5"), name="bogus")


@pytest.mark.parametrize("plugin", [ExplodingTax(), NonsenseTax(), NegativeTax()])
def test_a_broken_plugin_is_a_clear_error_and_stores_nothing(seeded, aws, plugin):
    from functions.api.dependencies import container

    plugins = container().plugins
    plugins.register(plugin)
    try:
        status, body = api(event("api_place_order.json") | {"headers": {}})
    finally:
        plugins.unregister(plugin)
    assert status == 502
    assert body["error"]["code"] == "plugin_error"
    assert "Traceback" not in json.dumps(body)
    assert aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Count"] == 0


class GatewayTimesOut:
    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, idempotency_key):
        raise TimeoutError("read timed out")


class GatewayRefuses:
    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, idempotency_key):
        return PaymentResult(outcome="declined", reference="cap_refused", message="insufficient funds")


ORDER_ID, SHIPMENT_ID = "ord_" + "b" * 24, "shp_" + "c" * 24


def an_allocated_order(aws, authorized_days_ago: float = 0) -> Order:
    """Stored as the workflow leaves it: authorized for 10.00 (`authorized_days_ago`), one pending shipment."""
    from functions.adapters.dynamodb import DynamoOrders

    ten, zero = usd("10.00"), usd("0.00")
    order = a_stored_order(
        ("TSHIRT-BLK-M", 1), id=ORDER_ID, status=OrderStatus.ALLOCATED,
        authorized_at=datetime.now(UTC) - timedelta(days=authorized_days_ago),
        totals=Totals(subtotal=ten, discount=zero, shipping=zero, tax=zero, grand_total=ten),
        payment=Payment(method="test", status=PaymentStatus.AUTHORIZED, authorized=ten, captured=zero,
                        refunded=zero, authorization="auth_" + "0" * 20),
        shipments=[Shipment(id=SHIPMENT_ID, location_id="wh-east", lines=[ShipmentLine(line_id="L1", quantity=1)],
                            carrier="OMS Flat Rate", service="Ground")],
    )  # fmt: skip
    created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).add(order, created, payment_token="tok_approve")
    return order


def ship_event(order_id: str, shipment_id: str) -> dict:
    evt = event("api_get_order.json")
    resource = "/orders/{order_id}/shipments/{shipment_id}/ship"
    path = resource.format(order_id=order_id, shipment_id=shipment_id)
    evt.update(resource=resource, path=path, httpMethod="POST", body="{}",
               pathParameters={"order_id": order_id, "shipment_id": shipment_id})  # fmt: skip
    evt["requestContext"].update(resourcePath=resource, httpMethod="POST", path=f"/v1{path}")
    return evt


@pytest.mark.parametrize(
    ("gateway", "status", "code", "attempts"),
    [(GatewayTimesOut(), 503, "payment_gateway_unavailable", 3), (GatewayRefuses(), 502, "payment_gateway_error", 1)],
)
def test_a_capture_the_gateway_will_not_do_answers_a_gateway_error_and_ships_nothing(aws, gateway, status, code,
                                                                                      attempts):  # fmt: skip
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container

    order = an_allocated_order(aws)
    plugins = container().plugins
    plugins.register(gateway)
    try:
        response = lambda_handler(ship_event(ORDER_ID, SHIPMENT_ID), Context())
    finally:
        plugins.unregister(gateway)

    body = json.loads(response["body"])
    status_code = response["statusCode"]
    assert status_code == status, body
    assert body["error"]["code"] == code
    headers = {**response.get("headers", {}), **response.get("multiValueHeaders", {})}
    assert ("Retry-After" in headers) is (status == 503)
    assert "Traceback" not in response["body"]
    status, stored = api(event("api_get_order.json") | {"path": f"/orders/{ORDER_ID}",
                                                        "pathParameters": {"order_id": ORDER_ID}})  # fmt: skip
    assert status == 200
    shown = Order.model_validate(stored)
    assert (shown.shipments, shown.payment) == (order.shipments, order.payment)
    assert stored["shipments"][0]["status"] == "pending"
    assert stored["payment"]["status"] == "authorized" and stored["payment"]["captured"]["amount"] == "0.00"
    assert "captures_requested" not in stored
    # A gateway that never answered may have captured: the request stays stored for the next ship
    # or a cancel to settle. A refusal says none was made.
    from functions.adapters.dynamodb import DynamoOrders

    requested = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"]).get(ORDER_ID, consistent=True).captures_requested
    standing = [] if status_code == 502 else [(SHIPMENT_ID, usd("10.00"))]
    assert [(r.shipment_id, r.amount) for r in requested] == standing
    history = container().orders.history(ORDER_ID)
    assert [h.type for h in history] == (
        ["created"] + ["payment_capture_failed"] * attempts
        + (["capture_not_made"] if status_code == 502 else [])
    )  # fmt: skip


class RenewalDeclined:
    """The gateway declines to authorize the order again."""

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, idempotency_key):
        return PaymentResult(outcome="declined", reference="decl_renewal", message="card expired")


def test_a_ship_eight_days_after_the_authorization_captures_on_a_new_one_and_voids_the_old(aws):
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container
    from plugins.test_payments import AUTHORIZATION, reference

    order = an_allocated_order(aws, authorized_days_ago=8)
    response = lambda_handler(ship_event(ORDER_ID, SHIPMENT_ID), Context())

    body = json.loads(response["body"])
    assert response["statusCode"] == 200, body
    renewed = reference(AUTHORIZATION, f"{ORDER_ID}:authorize:renew:{order.payment.authorization}")
    assert body["payment"]["status"] == "captured" and body["payment"]["captured"]["amount"] == "10.00"
    assert body["shipments"][0]["status"] == "shipped"
    history = container().orders.history(ORDER_ID)
    assert [h.type for h in history] == ["created", "payment_authorized", "payment_voided", "shipment_shipped"]
    assert (history[1].detail["reference"], history[2].detail["authorization"]) == (
        renewed, order.payment.authorization
    )  # fmt: skip
    # Under a key naming the renewed authorization (core/payment_keys.py).
    key = f"{ORDER_ID}:{SHIPMENT_ID}:capture:0:{renewed}"
    assert history[3].detail["capture_reference"] == reference("cap", key)
    assert container().order_repository.get(ORDER_ID, consistent=True).payment.authorization == renewed


def test_a_renewal_the_gateway_declines_answers_502_and_ships_nothing(aws):
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container

    order = an_allocated_order(aws, authorized_days_ago=8)
    plugins = container().plugins
    plugins.register(declined := RenewalDeclined())
    try:
        response = lambda_handler(ship_event(ORDER_ID, SHIPMENT_ID), Context())
    finally:
        plugins.unregister(declined)

    body = json.loads(response["body"])
    assert response["statusCode"] == 502, body
    assert body["error"]["code"] == "payment_gateway_error"
    stored = container().order_repository.get(ORDER_ID, consistent=True)
    assert (stored.shipments, stored.payment, stored.renewing_authorization) == (order.shipments, order.payment, None)
    history = container().orders.history(ORDER_ID)
    assert [h.type for h in history] == ["created", "payment_authorization_failed"]


class CountedRenewalDeclines(RenewalDeclined):
    """RenewalDeclined, keeping the keys it was asked under."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, idempotency_key):
        self.keys.append(idempotency_key)
        return super().oms_payment_authorize(idempotency_key)


def test_a_ship_repeated_after_its_renewal_was_declined_answers_the_decline_without_asking_the_gateway(aws):
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container

    an_allocated_order(aws, authorized_days_ago=8)
    plugins = container().plugins
    plugins.register(declined := CountedRenewalDeclines())
    try:
        first = lambda_handler(ship_event(ORDER_ID, SHIPMENT_ID), Context())
        repeats = [lambda_handler(ship_event(ORDER_ID, SHIPMENT_ID), Context()) for _ in range(3)]
    finally:
        plugins.unregister(declined)

    assert len(declined.keys) == 1  # the card was asked once
    history = container().orders.history(ORDER_ID)
    assert [h.type for h in history] == ["created", "payment_authorization_failed"]
    for response in [first, *repeats]:  # the first answer says when it is asked again, too
        body = json.loads(response["body"])
        assert response["statusCode"] == 502, body
        assert body["error"]["code"] == "payment_gateway_error"
        assert body["error"]["message"] == json.loads(first["body"])["error"]["message"]
        (detail,) = body["error"]["details"]
        assert detail == {"operation": "authorize", "declined_at": utc_text(history[1].at),
                          "asked_again_after": utc_text(history[1].at + timedelta(days=1))}  # fmt: skip


class VoidPluginRemoved:
    """No payment plugin answers a void any more: the plugin of the order's method was removed."""

    @hookimpl(wrapper=True)
    def oms_payment_void(self):
        yield
        return None


def test_a_cancel_whose_payment_plugin_was_removed_answers_200_with_the_refused_void_recorded(aws):
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container

    an_allocated_order(aws)
    evt = ship_event(ORDER_ID, SHIPMENT_ID)
    path = f"/orders/{ORDER_ID}/cancel"
    evt.update(resource="/orders/{order_id}/cancel", path=path, body=json.dumps({"reason": "changed my mind"}),
               pathParameters={"order_id": ORDER_ID})  # fmt: skip
    evt["requestContext"].update(resourcePath="/orders/{order_id}/cancel", path=f"/v1{path}")
    plugins = container().plugins
    removed = VoidPluginRemoved()
    plugins.register(removed)
    try:
        response = lambda_handler(evt, Context())
    finally:
        plugins.unregister(removed)

    body = json.loads(response["body"])
    assert response["statusCode"] == 200, body
    assert (body["status"], body["payment"]["status"]) == ("cancelled", "authorized")
    history = container().orders.history(ORDER_ID)
    failed = history[-1]
    assert (failed.type, failed.detail["kind"]) == ("payment_void_failed", "no_plugin")
    assert "no payment plugin takes method 'test'" in failed.detail["message"]


def with_authorization(evt: dict, header: str | None) -> dict:
    """The authorizer event with this Authorization header (none for None), in both header maps as
    API Gateway sends them."""
    evt["headers"] = {} if header is None else {"Authorization": header}
    evt["multiValueHeaders"] = {} if header is None else {"Authorization": [header]}
    return evt


@pytest.mark.parametrize(
    ("headers", "multi"),
    [
        pytest.param({"Authorization": "Bearer oms_sample_admin_key_0123456789"},
                     {"Authorization": ["Bearer oms_other_key_0123456789", "Bearer oms_sample_admin_key_0123456789"]},
                     id="twice, the single-value map naming the last"),
        pytest.param({"authorization": "Bearer oms_sample_admin_key_0123456789",
                      "Authorization": "Bearer oms_other_key_0123456789"}, None, id="two spellings"),
        pytest.param({"Authorization": "Bearer oms_sample_admin_key_0123456789"},
                     {"Authorization": ["Bearer oms_other_key_0123456789"]}, id="maps that disagree"),
        pytest.param({"authorization": "Bearer oms_sample_admin_key_0123456789"},
                     {"authorization": ["Bearer oms_other_key_0123456789", "Bearer oms_sample_admin_key_0123456789"]},
                     id="twice in lower case (HTTP/2), the single-value map naming the last"),
    ],
)  # fmt: skip
def test_the_authorizer_refuses_an_authorization_header_sent_twice(aws, headers, multi):
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    evt = event("authorizer_request.json")
    evt["headers"], evt["multiValueHeaders"] = headers, multi

    with pytest.raises(Exception, match=r"^Unauthorized$"):
        lambda_handler(evt, Context())


def test_the_authorizer_allows_a_stored_key_and_passes_the_caller(aws):
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    policy = lambda_handler(event("authorizer_request.json"), Context())
    assert policy["principalId"] == "key_admin"
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert policy["policyDocument"]["Statement"][0]["Resource"].endswith("abc123/v1/*")
    assert policy["context"]["key_id"] == "key_admin"
    assert "orders:write" in policy["context"]["scopes"].split()


def test_the_authorizer_reads_a_header_named_in_lower_case_as_http2_clients_send_it(aws):
    # A field name is case-insensitive (RFC 9110 5.1), and HTTP/2 sends every one in lower case.
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    evt = event("authorizer_request.json")
    evt["headers"] = {"authorization": "Bearer oms_sample_admin_key_0123456789"}
    evt["multiValueHeaders"] = {"authorization": ["Bearer oms_sample_admin_key_0123456789"]}

    assert lambda_handler(evt, Context())["principalId"] == "key_admin"


def test_the_authorizer_passes_a_channel_keys_own_id_scopes_and_channel(aws):
    from core.access import NewApiKey, Scope
    from functions.api.dependencies import container
    from functions.authorizer.app import lambda_handler

    issued = container().api_keys.issue(
        NewApiKey(name="storefront", scopes=[Scope.ORDERS_WRITE, Scope.ORDERS_READ], channel="web")
    )
    evt = with_authorization(event("authorizer_request.json"), f"Bearer {issued.key}")

    policy = lambda_handler(evt, Context())

    assert policy["principalId"] == issued.id
    assert policy["context"] == {
        "key_id": issued.id,
        "scopes": "orders:read orders:write",
        "channel": "web",
        "location_ids": "",
    }


def test_the_authorizer_passes_a_location_bound_keys_locations(aws):
    from core.access import NewApiKey, Scope
    from functions.api.dependencies import container
    from functions.authorizer.app import lambda_handler
    from tests.builders import location

    for location_id in ("wh-west", "store-sf"):
        container().catalog_repository.put_location(location(location_id))
    issued = container().api_keys.issue(
        NewApiKey(name="3pl", scopes=[Scope.FULFILLMENT_WRITE], location_ids=["wh-west", "store-sf"])
    )
    evt = with_authorization(event("authorizer_request.json"), f"Bearer {issued.key}")

    policy = lambda_handler(evt, Context())

    assert policy["context"]["location_ids"] == "store-sf wh-west"
    assert policy["context"]["channel"] == ""


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer wrong_key_0123456789", "bearer x"])
def test_the_authorizer_refuses_missing_malformed_and_unknown_keys(aws, header):
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    evt = event("authorizer_request.json")
    with_authorization(evt, header)
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        lambda_handler(evt, Context())


def refusals_counted(printed: str) -> list[dict]:
    """The EMF records of ApiKeysRefused among what a handler printed."""
    records = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    return [
        r
        for r in records
        if any(
            m["Name"] == "ApiKeysRefused" for d in r.get("_aws", {}).get("CloudWatchMetrics", []) for m in d["Metrics"]
        )
    ]


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer wrong_key_0123456789", "revoked", "repeated"])
def test_each_refusal_of_the_authorizer_is_counted_at_the_time_it_was_invoked(aws, capsys, monkeypatch, header):
    # Raising "Unauthorized" (API Gateway's 401) is a function error to Lambda: every bad or revoked
    # key was in the authorizer's Errors, and AuthorizerErrorsAlarm called a person for a caller's
    # typo or a scanner. Each refusal is now a point AuthorizerErrorsAlarm takes out of Errors,
    # timestamped as Lambda's Errors is (the invocation's start), so both land in the same minute.
    import functions.authorizer.app as authorizer
    from core.access import NewApiKey, Scope
    from functions.api.dependencies import container
    from functions.authorizer.app import RefusedHashes, lambda_handler, refused

    ensure_admin_key("oms_sample_admin_key_0123456789")
    if header == "revoked":
        issued = container().api_keys.issue(NewApiKey(name="gone", scopes=[Scope.ORDERS_READ]))
        container().api_keys.revoke(issued.id)
        header = f"Bearer {issued.key}"
    evt = with_authorization(event("authorizer_request.json"), header)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")  # the suite's default silences EMF
    # Two invocations a minute ago: a time CloudWatch keeps (powertools warns and CloudWatch
    # drops a point over 14 days old).
    start = float(int(time.time()) - 60)
    clock = iter([start + 0.25, start + 3.75])
    monkeypatch.setattr(authorizer, "_now", lambda: next(clock))
    with refused.override(RefusedHashes()):
        if header == "repeated":  # refused once from the table, then from the function's memory
            with_authorization(evt, "Bearer wrong_key_0123456789")
            with pytest.raises(Exception, match=r"^Unauthorized$"):
                lambda_handler(evt, Context())
            capsys.readouterr()
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            lambda_handler(evt, Context())

    (record,) = refusals_counted(capsys.readouterr().out)
    assert record["ApiKeysRefused"] in (1, 1.0, [1.0])
    # The functions' service and namespace (template.yaml's Globals: oms, OMS), as AuthorizerErrorsAlarm reads it.
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["service"]] and record["service"] == os.environ["POWERTOOLS_SERVICE_NAME"]
    assert directive["Namespace"] == os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    assert record["_aws"]["Timestamp"] == int((start + 3.75 if header == "repeated" else start + 0.25) * 1000)


def test_an_allowed_key_counts_no_refusal(aws, capsys, monkeypatch):
    from functions.authorizer.app import lambda_handler

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")

    ensure_admin_key("oms_sample_admin_key_0123456789")
    lambda_handler(event("authorizer_request.json"), Context())

    assert refusals_counted(capsys.readouterr().out) == []


@pytest.mark.parametrize("prefix", ["bearer ", "BEARER ", "Bearer  "], ids=["lower case", "upper case", "two spaces"])
def test_the_authorizer_reads_the_bearer_scheme_in_any_case(aws, prefix):
    # RFC 9110 11.1: an authentication scheme is case-insensitive, and 1*SP separates it from the token.
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    evt = event("authorizer_request.json")
    with_authorization(evt, prefix + "oms_sample_admin_key_0123456789")

    assert lambda_handler(evt, Context())["principalId"] == "key_admin"


@pytest.mark.parametrize(
    "header",
    [f"{before}Bearer oms_sample_admin_key_0123456789{after}" for before, after in [("", " "), ("", "\t"), (" ", "")]],
    ids=["trailing space", "trailing tab", "leading space"],
)
def test_the_authorizer_reads_a_key_whatever_whitespace_surrounds_the_header_value(aws, header):
    # RFC 9110 5.5: a field value has no leading or trailing whitespace; a parser excludes it before
    # reading the value. A key pasted with a space after it was 401, the same key without it 200.
    from functions.authorizer.app import lambda_handler

    ensure_admin_key("oms_sample_admin_key_0123456789")
    evt = with_authorization(event("authorizer_request.json"), header)

    assert lambda_handler(evt, Context())["principalId"] == "key_admin"


def test_keys_are_stored_only_as_hashes(aws):
    ensure_admin_key("oms_sample_admin_key_0123456789")
    dump = json.dumps(aws.dynamodb.scan(TableName=aws.tables["CatalogTable"])["Items"])
    assert "oms_sample_admin_key_0123456789" not in dump
    assert hash_secret("oms_sample_admin_key_0123456789") in dump


def test_a_bad_key_retried_costs_one_dynamodb_read_until_its_refusal_expires(aws):
    from functions.adapters.api_key_lookup import ApiKeyLookup
    from functions.authorizer.app import RefusedHashes, api_keys, lambda_handler, refused

    reads = []

    class CountingLookup(ApiKeyLookup):
        def by_hash(self, secret_hash):
            reads.append(secret_hash)
            return super().by_hash(secret_hash)

    now = [0.0]
    evt = event("authorizer_request.json")
    with_authorization(evt, "Bearer wrong_key_0123456789")
    lookup = CountingLookup(aws.dynamodb, aws.tables["CatalogTable"])
    with api_keys.override(lookup), refused.override(RefusedHashes(ttl_seconds=30, clock=lambda: now[0])):
        for _ in range(5):
            with pytest.raises(Exception, match=r"^Unauthorized$"):
                lambda_handler(evt, Context())
        assert len(reads) == 1
        now[0] = 31.0
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            lambda_handler(evt, Context())
        assert len(reads) == 2


def test_a_revoked_key_is_refused_and_remembered_without_a_second_read(aws):
    from core.access import NewApiKey, Scope
    from functions.adapters.api_key_lookup import ApiKeyLookup
    from functions.api.dependencies import container
    from functions.authorizer.app import RefusedHashes, api_keys, lambda_handler, refused

    issued = container().api_keys.issue(NewApiKey(name="soon revoked", scopes=[Scope.ORDERS_READ]))
    container().api_keys.revoke(issued.id)
    reads = []

    class CountingLookup(ApiKeyLookup):
        def by_hash(self, secret_hash):
            reads.append(secret_hash)
            return super().by_hash(secret_hash)

    evt = event("authorizer_request.json")
    with_authorization(evt, f"Bearer {issued.key}")
    with api_keys.override(CountingLookup(aws.dynamodb, aws.tables["CatalogTable"])), refused.override(RefusedHashes()):
        for _ in range(3):
            with pytest.raises(Exception, match=r"^Unauthorized$"):
                lambda_handler(evt, Context())
    assert len(reads) == 1


class InsistentReview:
    """A review rule that asks 2,000 times, with notes of 500 characters that do not compress."""

    @hookimpl
    def oms_review_order(self, order):
        words = random.Random(3)
        return [
            ReviewRequest(reason="fraud_review", note="".join(words.choices(string.ascii_letters, k=500)))
            for _ in range(2_000)
        ]


def test_a_rule_asking_for_review_thousands_of_times_still_lets_the_order_be_placed_on_hold(seeded, aws):
    # Every request went into the hold's history entry: past the item's 400 KB, DynamoDB refused
    # the order and every POST /orders was a 500.
    from functions.api.dependencies import container

    plugins = container().plugins
    plugin = InsistentReview()
    plugins.register(plugin)
    try:
        status, body = api(event("api_place_order.json") | {"headers": {}})
    finally:
        plugins.unregister(plugin)

    assert status == 201, body
    assert (body["status"], body["hold"]["reason"]) == ("on_hold", "fraud_review")
