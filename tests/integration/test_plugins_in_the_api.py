"""A deployment's plugins through the real handlers under moto: /health and GET /plugins, a plugin
that cannot load (503 where plugins are called, everything else working), answers a plugin built
without validation, and the configuration that disables plugins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.money import Money
from core.pricing_types import Discount, ShippingQuote, TaxRate
from infra.local.stack import EmbeddedStack, forget_warm_containers
from infra.local.template import Template
from tests.builders import csv_file, csv_row, location_body, product_body
from tests.installed import FAILS_TO_IMPORT, Installer, installing
from tests.integration.import_support import create_import_resources, report, seed_catalog, split
from tests.integration.test_handlers import Context, api, event

ORDER = "ord_kz5wpvn5t25my2wrcpwjmhpn"
SHIPMENT = "shp_aaaaaaaaaaaaaaaaaaaaaaaa"
BROKEN_REASON = "ModuleNotFoundError: No module named 'oms_no_such_dependency'"
# What an anonymous caller (/health) and any key (plugin_unavailable) are shown of it.
BROKEN_SHOWN = (
    "ModuleNotFoundError while loading: the reason is in the log line `plugin failed to load` "
    "and in GET /plugins (admin key)"
)


def request(method: str, resource: str, body: dict | None = None, *, scopes: str = "admin", **params: str) -> dict:
    """An API Gateway proxy event for `resource` (with {params} filled in) from a caller with `scopes`."""
    evt = event("api_get_order.json")
    path = resource.format(**params)
    evt.update(
        resource=resource,
        path=path,
        httpMethod=method,
        pathParameters=params or None,
        body=json.dumps(body) if body is not None else None,
    )
    evt["multiValueHeaders"] = {}
    evt["requestContext"].update(resourcePath=resource, httpMethod=method, path=f"/v1{path}")
    evt["requestContext"]["authorizer"]["scopes"] = scopes
    return evt


@pytest.fixture
def installer(tmp_path, monkeypatch) -> Iterator[Installer]:
    yield from installing(tmp_path, monkeypatch)


@pytest.fixture
def seeded(aws) -> None:
    from core.models import LocationInput, ProductInput
    from functions.api.dependencies import container

    c = container()
    c.catalog.put_product("TSHIRT-BLK-M", ProductInput.model_validate(product_body()))
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    c.inventory.count("TSHIRT-BLK-M", "wh-east", 10)


@pytest.fixture
def broken(seeded, installer: Installer) -> None:
    """A plugin distribution whose module cannot import, installed before the next cold start."""
    installer.install("oms-acme", "2.1.0", {"acme_tax": FAILS_TO_IMPORT})
    forget_warm_containers()


def orders_stored(aws) -> int:
    return aws.dynamodb.scan(TableName=aws.tables["OrdersTable"])["Count"]


# --- Health and GET /plugins -----------------------------------------------------------------------


def test_health_keeps_its_shape_while_every_plugin_loads(aws):
    assert api(request("GET", "/health")) == (200, {"status": "ok"})


def test_get_plugins_lists_distribution_version_hooks_and_call_order(aws):
    status, body = api(request("GET", "/plugins"))

    assert status == 200
    plugins = {p["name"]: p for p in body["plugins"]}
    assert plugins["tax_table"] | {"version": "?"} == {
        "name": "tax_table",
        "distribution": "oms",
        "version": "?",
        "status": "loaded",
        "hooks": ["oms_tax_rate"],
        "ignored_hooks": [],
        "reason": None,
        "error": None,
    }
    assert plugins["test_payments"]["status"] == "loaded"  # the tests' environment turns it on
    # Only the built-ins: `make` also installs the example package (plugins/examples/oms-acme).
    builtins = {name for name, p in plugins.items() if p["distribution"] == "oms"}
    assert [c["plugin"] for c in body["call_order"]["oms_shipping_quotes"] if c["plugin"] in builtins] == [
        "weight_based_shipping",
        "flat_rate_shipping",
    ]
    assert body["call_order"]["oms_unit_price"] == [
        {"plugin": "catalog_price", "wrapper": False, "tryfirst": False, "trylast": True}
    ]


def test_get_plugins_is_for_admins_only(aws):
    status, body = api(request("GET", "/plugins", scopes="orders:read orders:write"))

    assert (status, body["error"]["code"]) == (403, "forbidden")


# --- A plugin that cannot load ---------------------------------------------------------------------


def test_health_names_a_plugin_that_failed_to_load_and_the_log_says_why(broken, caplog):
    status, body = api(request("GET", "/health"))

    assert (status, body) == (
        503,
        {"status": "degraded", "broken_plugins": [{"name": "acme_tax", "reason": BROKEN_SHOWN}]},
    )
    (failure,) = [r for r in caplog.records if r.getMessage() == "plugin failed to load"]
    assert (failure.levelname, failure.plugin, failure.distribution, failure.reason) == (
        "ERROR",
        "acme_tax",
        "oms-acme",
        BROKEN_REASON,
    )


# A plugin whose import fails with its configuration in the message, as a driver's error does.
SECRET = "hunter2-s3cr3t"
LEAKS_ON_IMPORT = """
    raise RuntimeError("cannot connect to postgresql://acme:hunter2-s3cr3t@prices-db.internal.acme:5432/prices")
"""


def anonymous(evt: dict) -> dict:
    """`evt` as API Gateway passes a request that carried no key (a public route runs no authorizer)."""
    evt["requestContext"].pop("authorizer", None)
    return evt


def from_channel_key(evt: dict) -> dict:
    evt["requestContext"]["authorizer"].update(principalId="key_web", key_id="key_web", scopes="orders:write",
                                               channel="web")  # fmt: skip
    return evt


def test_why_a_plugin_failed_to_load_is_shown_to_admins_and_the_log_never_to_anonymous_callers_or_channels(
    seeded, installer, aws, caplog
):
    # Its exception's message can hold a password, a secret or an internal host: /health answers
    # anyone on the internet, plugin_unavailable every channel's key. Both name the plugin and
    # the exception's type, and point at where the reason is.
    installer.install("oms-acme", "2.1.0", {"acme_tax": LEAKS_ON_IMPORT})
    forget_warm_containers()
    shown = BROKEN_SHOWN.replace("ModuleNotFoundError", "RuntimeError")

    status, health = api(anonymous(request("GET", "/health")))
    assert (status, health) == (503, {"status": "degraded", "broken_plugins": [{"name": "acme_tax", "reason": shown}]})
    placed = event("api_place_order.json")
    placed["headers"].pop("Idempotency-Key", None)
    for evt in (
        from_channel_key(placed),
        from_channel_key(request("POST", "/orders/{order_id}/cancel", {"reason": "x"}, order_id=ORDER)),
    ):
        status, refused = api(evt)
        assert (status, refused["error"]["code"]) == (503, "plugin_unavailable")
        assert refused["error"]["details"] == [{"plugin": "acme_tax", "distribution": "oms-acme", "message": shown}]
        assert SECRET not in json.dumps(refused)

    status, report_ = api(request("GET", "/plugins"))
    (acme,) = [p for p in report_["plugins"] if p["name"] == "acme_tax"]
    assert (status, acme["status"], acme["error"]) == (200, "broken", "RuntimeError")
    assert acme["reason"] == (
        "RuntimeError: cannot connect to postgresql://acme:hunter2-s3cr3t@prices-db.internal.acme:5432/prices"
    )
    (failure,) = [r for r in caplog.records if r.getMessage() == "plugin failed to load"]
    assert (failure.levelname, failure.plugin, failure.error, failure.reason) == ("ERROR", "acme_tax", "RuntimeError",
                                                                                  acme["reason"])  # fmt: skip
    assert failure.exc_info is not None and SECRET in str(failure.exc_info[1])  # the traceback, where it raised


ROUTES_THAT_CALL_PLUGINS = [
    ("POST", "/orders", None, {}),
    ("PATCH", "/orders/{order_id}", {"shipping_method": "express"}, {"order_id": ORDER}),
    ("POST", "/orders/{order_id}/cancel", {"reason": "customer asked"}, {"order_id": ORDER}),
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/ship", {}, {"order_id": ORDER, "shipment_id": SHIPMENT}),
    ("POST", "/orders/{order_id}/shipments/{shipment_id}/deliver", None, {"order_id": ORDER, "shipment_id": SHIPMENT}),
    ("POST", "/carriers/{carrier}/tracking", {"events": []}, {"carrier": "oms-flat-rate"}),
    # A reject cancels the parcel's booking with its carrier's plugin (and settles a capture a ship
    # asked for, and on a partly shipped order sources and books its units again); a what-if prices
    # and sources through the plugins.
    (
        "POST",
        "/orders/{order_id}/shipments/{shipment_id}/reject",
        {"reason": "x"},
        {"order_id": ORDER, "shipment_id": SHIPMENT},
    ),
    ("POST", "/sourcing/simulate", {"orders": [ORDER]}, {}),
]


@pytest.mark.parametrize(("method", "resource", "body", "params"), ROUTES_THAT_CALL_PLUGINS)
def test_routes_that_call_plugins_answer_503_naming_the_broken_plugin(broken, aws, method, resource, body, params):
    evt = event("api_place_order.json") if resource == "/orders" else request(method, resource, body, **params)
    evt["headers"]["If-Match"] = '"1"'

    status, answer = api(evt)

    assert status == 503
    assert answer["error"]["code"] == "plugin_unavailable"
    assert "acme_tax" in answer["error"]["message"]
    assert answer["error"]["details"] == [{"plugin": "acme_tax", "distribution": "oms-acme", "message": BROKEN_SHOWN}]
    assert orders_stored(aws) == 0


def test_a_reject_while_a_plugin_is_broken_answers_503_and_leaves_the_order_allocated(broken, aws):
    # The reject would be written, its units released, and then its carrier's booking left owed and
    # the order sent to a workflow that cannot source it: refused up front, as a cancel is.
    from tests.integration.test_handlers import SHIPMENT_ID, an_allocated_order

    order = an_allocated_order(aws)
    status, answer = api(request("POST", "/orders/{order_id}/shipments/{shipment_id}/reject", {"reason": "no staff"},
                                 order_id=order.id, shipment_id=SHIPMENT_ID))  # fmt: skip

    assert (status, answer["error"]["code"]) == (503, "plugin_unavailable")
    status, stored = api(request("GET", "/orders/{order_id}", order_id=order.id))
    assert (status, stored["status"], stored["version"]) == (200, "allocated", order.version)
    assert [s["status"] for s in stored["shipments"]] == ["pending"]


def test_everything_that_calls_no_plugin_keeps_working(broken):
    assert api(request("GET", "/products/{sku}", sku="TSHIRT-BLK-M"))[0] == 200
    assert api(request("PUT", "/inventory/{sku}/{location_id}", {"on_hand": 3}, sku="TSHIRT-BLK-M",
                       location_id="wh-east"))[0] == 200  # fmt: skip
    assert api(request("GET", "/orders"))[0] == 200
    assert api(request("GET", "/api-keys"))[0] == 200
    status, body = api(request("GET", "/plugins"))
    assert status == 200
    assert {"name": "acme_tax", "distribution": "oms-acme", "version": "2.1.0", "status": "broken", "hooks": [],
            "ignored_hooks": [], "reason": BROKEN_REASON, "error": "ModuleNotFoundError"
            } in body["plugins"]  # fmt: skip


def test_disabling_the_broken_plugin_restores_the_routes(broken, aws, monkeypatch):
    monkeypatch.setenv("OMS_DISABLED_PLUGINS", "acme_tax")
    forget_warm_containers()

    assert api(request("GET", "/health")) == (200, {"status": "ok"})
    assert api(event("api_place_order.json"))[0] == 201


def test_the_workflow_runs_no_step_while_a_plugin_is_broken(broken):
    from core.errors import PluginUnavailable
    from functions.workflow.authorize_payment import lambda_handler

    with pytest.raises(PluginUnavailable, match="acme_tax"):
        lambda_handler({"order_id": ORDER, "attempt": 0}, Context())


def test_the_park_step_still_parks_an_order_while_a_plugin_is_broken(broken, aws):
    # Parking calls no plugin: the order the workflow gave up on goes on hold for a person now,
    # not when the reconciler finds it an hour later.
    from core.models import HistoryEntry
    from core.status import OrderStatus
    from functions.adapters.dynamodb import DynamoOrders
    from functions.workflow.park_order import lambda_handler
    from tests.unit.conftest import a_stored_order

    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    stuck = a_stored_order(("TSHIRT-BLK-M", 1), id=ORDER, status=OrderStatus.AUTHORIZED)
    created = HistoryEntry(at=stuck.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_web")
    orders.add(stuck, created, payment_token="tok_approve")

    lambda_handler({"order_id": ORDER, "error": "PluginUnavailable", "cause": ""}, Context())

    parked = orders.get(ORDER)
    assert (parked.status, parked.hold.reason, parked.hold.resume_to) == (
        OrderStatus.ON_HOLD, "other", OrderStatus.AUTHORIZED,
    )  # fmt: skip


def test_the_jeopardy_scan_expires_no_hold_while_a_plugin_is_broken_and_marks_the_late_orders(broken, aws, monkeypatch):
    # A hold's expiry cancels and voids: with no hook able to run it would cancel an order whose
    # authorization it cannot void, then stop the pass before any late order is marked or counted.
    from core.models import HistoryEntry, Hold, Payment, utc_now
    from core.money import Money
    from core.status import OrderStatus, PaymentStatus
    from functions.adapters.dynamodb import DynamoOrders
    from functions.jeopardy import app
    from tests.integration.import_support import context
    from tests.unit.conftest import a_stored_order

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "1")
    orders = DynamoOrders(aws.dynamodb, aws.tables["OrdersTable"])
    long_ago, hour_ago = utc_now() - timedelta(days=3), utc_now() - timedelta(hours=1)
    ten, zero = Money.of("10.00", "USD"), Money.zero("USD")
    held = a_stored_order(
        ("TSHIRT-BLK-M", 1), id=ORDER, status=OrderStatus.ON_HOLD, created_at=long_ago, updated_at=long_ago,
        hold=Hold(reason="fraud_review", since=long_ago, resume_to=OrderStatus.AUTHORIZED),
        payment=Payment(method="test", status=PaymentStatus.AUTHORIZED, authorized=ten, captured=zero,
                        refunded=zero, authorization="auth_held"),
    )  # fmt: skip
    late = a_stored_order(
        ("TSHIRT-BLK-M", 1), id="ord_" + "p" * 24, status=OrderStatus.PENDING, created_at=hour_ago, updated_at=hour_ago
    )
    for order in (held, late):
        created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_web")
        orders.add(order, created, payment_token="tok_approve")
    app.container.forget()

    answer = app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction", 60))

    assert (answer["marked"], answer["expired"], answer["in_jeopardy"]) == ([ORDER, late.id], [], 2)
    still = orders.get(ORDER)
    assert (still.status, still.payment.status) == (OrderStatus.ON_HOLD, PaymentStatus.AUTHORIZED)
    app.container.forget()


def test_the_import_worker_leaves_messages_queued_while_a_plugin_is_broken(aws, monkeypatch, installer):
    from functions.import_worker.app import lambda_handler

    stack = create_import_resources(aws, monkeypatch)
    seed_catalog()
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    installer.install("oms-acme", "2.1.0", {"acme_tax": FAILS_TO_IMPORT})
    forget_warm_containers()

    records, failed = stack.deliver_once(lambda_handler)

    assert len(records) == 2 and failed == {r["messageId"] for r in records}
    assert (report(import_id)["imported"], report(import_id)["failed"]) == (0, 0)  # no row blamed
    monkeypatch.setenv("OMS_DISABLED_PLUGINS", "acme_tax")
    forget_warm_containers()
    stack.drain(lambda_handler)
    assert report(import_id)["imported"] == 2


# --- Configuration ------------------------------------------------------------------------------------


def test_disabled_plugins_and_the_test_gateway_come_from_the_environment(seeded, aws, monkeypatch):
    monkeypatch.setenv("OMS_DISABLED_PLUGINS", " promotions, flat_rate_shipping ")
    monkeypatch.setenv("OMS_ENABLE_TEST_PAYMENTS", "false")
    forget_warm_containers()

    _, body = api(request("GET", "/plugins"))
    status = {p["name"]: (p["status"], p["reason"]) for p in body["plugins"]}
    assert status["promotions"] == status["flat_rate_shipping"] == ("disabled", "disabled by OMS_DISABLED_PLUGINS")
    assert status["test_payments"][0] == "disabled"
    code, refused = api(event("api_place_order.json"))
    assert (code, refused["error"]["code"]) == (422, "unknown_payment_method")
    assert orders_stored(aws) == 0


# --- Answers built without validation --------------------------------------------------------------


def answering(hook: str, answer: Any) -> object:
    def impl(self):
        return answer

    impl.__name__ = hook
    return type("Sloppy", (), {hook: hookimpl(tryfirst=True)(impl)})()


def placed_with(plugin: object, name: str) -> tuple[int, dict]:
    """POST /orders (the sample order) with `plugin` installed as `name`, as an entry point would be."""
    from functions.api.dependencies import container

    plugins = container().plugins
    plugins.register(plugin, name=name)
    try:
        return api(event("api_place_order.json") | {"headers": {}})
    finally:
        plugins.unregister(name=name)


@pytest.mark.parametrize(
    ("hook", "answer"),
    [
        ("oms_unit_price", Money.model_construct(amount=9.99, currency="USD")),
        ("oms_unit_price", Money.model_construct(amount=Decimal("9.999"), currency="USD")),
        ("oms_tax_rate", TaxRate.model_construct(rate=0.2, name="float")),
        ("oms_discounts", [Discount.model_construct(code="RULE", amount=Money.model_construct(amount=Decimal("NaN"),
                                                                                              currency="USD"))]),
        ("oms_shipping_quotes", [ShippingQuote.model_construct(method="drone", amount="5.00")]),
    ],
)  # fmt: skip
def test_an_answer_built_without_validation_is_a_plugin_error_naming_the_plugin(seeded, aws, hook, answer):
    status, body = placed_with(answering(hook, answer), "sloppy")

    assert status == 502
    assert body["error"]["code"] == "plugin_error"
    assert "plugin sloppy" in body["error"]["message"]
    assert body["error"]["details"] == [{"plugin": "sloppy", "hook": hook}]
    assert orders_stored(aws) == 0


@pytest.mark.parametrize(
    "discounts",
    [
        [Discount(code="R" * 101, amount=Money.of(Decimal("1.00"), "USD"))],
        [Discount(code="", amount=Money.of(Decimal("1.00"), "USD"))],
        [Discount(code=f"RULE{i}", amount=Money.zero("USD"), line_id="L1") for i in range(1001)],
    ],
    ids=["a code of 101 characters", "an empty code", "1001 discounts"],
)
def test_discounts_that_would_swell_the_order_past_what_it_stores_are_a_plugin_error(seeded, aws, discounts):
    # The order keeps what each discount granted (its promotion_grants): one of them per discount,
    # with its code. Unbounded, a rule's answer took the order's item past DynamoDB's 400 KB, and
    # POST /orders failed with an internal error that named no plugin.
    status, body = placed_with(answering("oms_discounts", discounts), "sloppy")

    assert (status, body["error"]["code"]) == (502, "plugin_error")
    assert "plugin sloppy" in body["error"]["message"]
    assert body["error"]["details"] == [{"plugin": "sloppy", "hook": "oms_discounts"}]
    assert orders_stored(aws) == 0


@pytest.mark.parametrize(
    ("rate", "shown"), [("1E-7", "0.0000001"), ("0E-9", "0.000000000"), ("0.0725", "0.0725"), ("-0", "0")]
)
def test_a_tax_rate_is_shown_as_the_plain_decimal_string_the_contract_describes(seeded, aws, rate, shown):
    # A tax service's rate computed as a product or a quotient can be a Decimal that str() writes
    # in exponent form ("1E-7", "0E-9"): the order line showed it so, against its published pattern.
    status, body = placed_with(answering("oms_tax_rate", TaxRate(rate=Decimal(rate), name="service")), "taxes")

    assert status == 201, body
    assert body["lines"][0]["tax_rate"] == {"rate": shown, "name": "service"}
    _, stored = api(request("GET", "/orders/{order_id}", order_id=body["id"]))
    assert stored["lines"][0]["tax_rate"] == {"rate": shown, "name": "service"}


def test_the_template_leaves_the_test_gateway_off_and_feeds_the_plugin_settings_to_every_function():
    template = Template.load()
    refs = {"OrdersTable": "o", "InventoryTable": "i", "CatalogTable": "c", "IdempotencyTable": "d"}

    env = template.global_environment(refs)

    assert (env["OMS_ENABLE_TEST_PAYMENTS"], env["OMS_DISABLED_PLUGINS"]) == ("false", "")
    assert {name for name in env if name.startswith("OMS_PLUGIN_")} == {
        "OMS_PLUGIN_TAX_TABLE_RATES_FILE",
        "OMS_PLUGIN_PROMOTIONS_FILE",
        "OMS_PLUGIN_NEAREST_SOURCING_CENTROIDS_FILE",
    }


def test_make_run_turns_the_test_gateway_on_unless_told_otherwise(monkeypatch):
    from infra.local.__main__ import local_parameters

    monkeypatch.delenv("OMS_ENABLE_TEST_PAYMENTS", raising=False)
    assert local_parameters()["EnableTestPayments"] == "true"
    monkeypatch.setenv("OMS_ENABLE_TEST_PAYMENTS", "false")
    assert local_parameters()["EnableTestPayments"] == "false"


def test_plugin_variables_in_the_shell_reach_the_local_stack_as_template_parameters(monkeypatch):
    monkeypatch.setenv("OMS_DISABLED_PLUGINS", "promotions")
    monkeypatch.setenv("OMS_PLUGIN_TAX_TABLE_RATES_FILE", "/tmp/rates.json")
    monkeypatch.delenv("OMS_ENABLE_TEST_PAYMENTS", raising=False)

    stack = EmbeddedStack()  # not started: only its template is read

    assert stack.template.parameter("DisabledPlugins") == "promotions"
    assert stack.template.parameter("PluginTaxTableRatesFile") == "/tmp/rates.json"
    assert stack.template.parameter("EnableTestPayments") == "false"  # only make run and the tests turn it on
