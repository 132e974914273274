"""A new API container placing an order imports the routes and services that order needs, not every route's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter, as a new container is: the moto account, the catalog seeded through the
# container (no route), then the sample POST /orders through the real handler. The plugins are a
# deployment's, as bench cold measures them: the example plugins the tests install (plugins/examples/)
# are disabled unless plugins.txt names them.
FIRST_ORDER = """
import json, os, sys
SERVICES, MODELS = json.loads(sys.argv[1]), json.loads(sys.argv[2])
from tests.integration.conftest import ENV_BY_TABLE, FUNCTION_ENV
from bench.__main__ import examples_not_deployed
os.environ.update(FUNCTION_ENV, OMS_DISABLED_PLUGINS=examples_not_deployed())
import boto3
from moto import mock_aws
from infra.local.template import Template, create_table_request
with mock_aws():
    client = boto3.client("dynamodb", region_name="us-east-1")
    for logical_id, props in Template.load().properties("AWS::DynamoDB::Table").items():
        client.create_table(**create_table_request(props, f"test-{logical_id}"))
        os.environ[ENV_BY_TABLE[logical_id]] = f"test-{logical_id}"
    queue = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="test-AccessLogQueue")
    os.environ["ACCESS_LOG_QUEUE_URL"] = queue["QueueUrl"]
    from core.models import LocationInput, ProductInput
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container
    from tests.builders import location_body, product_body
    routes_before = sorted(name for name in sys.modules if name.startswith("functions.api.routes."))
    c = container()
    c.catalog.put_product("TSHIRT-BLK-M", ProductInput.model_validate(product_body()))
    c.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    c.inventory.count("TSHIRT-BLK-M", "wh-east", 10)
    class Context:
        function_name = "ApiFunction"; memory_limit_in_mb = 512; aws_request_id = "cold"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
        def get_remaining_time_in_millis(self): return 10000
    import gc
    from collections import Counter
    from pydantic._internal._generate_schema import GenerateSchema
    import functions.api.app as api
    generated, generate, builds = Counter(), GenerateSchema._model_schema, {}
    def counted(self, cls):  # a model's schema made: not its built class's, nor one this build made already
        made = builds.setdefault(id(self), (self, set()))[1]  # (each build kept, so no id is reused)
        if not cls.__pydantic_complete__ and cls not in made:
            generated[cls.__qualname__] += 1
        made.add(cls)
        return generate(self, cls)
    GenerateSchema._model_schema = counted
    handle, collecting = api._handle, []
    def observed(event, context):
        collecting.append(gc.isenabled())
        return handle(event, context)
    api._handle = observed
    from pydantic import BaseModel
    def complete(cls=BaseModel):  # the models of the OMS built so far
        found = set()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("core", "functions", "plugins") and sub.__pydantic_complete__:
                found.add(f"{sub.__module__}.{sub.__qualname__}")
            found |= complete(sub)
        return found
    ready = complete()
    status = lambda_handler(json.loads(open("events/api_place_order.json").read()), Context())["statusCode"]
    by_order = sorted(complete() - ready)
    GenerateSchema._model_schema = generate
    collecting.append(gc.isenabled())
    lambda_handler(json.loads(open("events/api_place_order.json").read()), Context())
    collecting.append(gc.isenabled())
    routes_after = sorted(name for name in sys.modules if name.startswith("functions.api.routes."))
    services = sorted(name for name in SERVICES if name in sys.modules)
    def is_built(name):  # a model whose module was never imported was never built either
        module, _, model = name.rpartition(".")
        return module in sys.modules and getattr(sys.modules[module], model).__pydantic_complete__
    built = [name for name in MODELS if is_built(name)]
first = {"status": status, "before": routes_before, "after": routes_after, "services": services, "built": built,
         "collecting": collecting, "generated": generated, "by_order": by_order}
print(json.dumps(first))
"""


# Services of other routes and functions, which the composition root imports only to build them.
OTHER_SERVICES = [
    "core.aggregates",
    # The order workflow's steps and the backorder queue's: the API builds them only for routes that
    # run them (a cancel, a release, a restock); capture plans shipments (core.sourcing) only under
    # sourcing rules that ask it to.
    "core.backorders",
    "core.cancellation",
    "core.carrier_bookings",
    # The notifier's, and the domain events it reads: the hook specs name Notification for type checkers only.
    "core.domain_events",
    "core.fulfillment",
    "core.holds",
    "core.import_service",
    # The jeopardy scan's: its rules the API reads (WATCHED, LONGEST, SCAN_ACTOR) live in lighter modules.
    "core.jeopardy",
    "core.notifications",
    "core.pickups",
    "core.purchasing",
    "core.reconciliation",
    "core.refund_service",
    "core.reorder",
    # The returns' models (a return, its lines, what a client sends): the ports, the hook specs and
    # the order repository name them for type checkers only; the return policy's answer, which the
    # built-in return policy plugin makes and call_hook checks, is core.return_decisions.
    "core.return_models",
    "core.returns",
    "core.sourcing",
    # The carriers' tracking webhooks: the built-in carrier plugin makes and reads its bookings'
    # references with core.ids' shipment_reference and parse_shipment_reference.
    "core.tracking",
    "core.webhooks",
    "core.workflow",
    "functions.adapters.api_gateway",
    "functions.adapters.imports",
    "functions.import_splitter.readers",
]

# Models of other routes and functions whose modules a new API container imports all the same
# (through the ports, the hookspecs, the plugins): declared with defer_build, none is built by an order.
OTHER_MODELS = [
    "core.access.NewApiKey",
    "core.access_log.AccessEntry",
    "core.models.OrderEdit",
    "core.models.InventorySummary",
    "core.plugin_manager.PluginReport",
    "core.return_models.Return",
    "core.return_models.RequestReturn",
    "core.sourcing.Simulation",
    "core.sourcing_rules.SourcingRulesInput",
    "core.workflow_types.CarrierShipment",
    "core.workflow_types.TrackingUpdate",
    "functions.api.schemas.ErrorBody",
    "functions.api.schemas.OrderPage",
    # The built-in plugins' data files and webhooks that an order without promo codes never reads.
    "plugins.flat_rate_carrier.TrackingWebhook",
    "plugins.nearest_sourcing.GeoCentroids",
    "plugins.promotions.PercentOff",
    "plugins.promotions.PromotionsFile",
]


# The models a new API container's first order builds (each its validator and serializer): the body's,
# the order's, the pricing plugins' and the parts several of them hold (Address too, which here the
# catalog's seeding built first, with the location).
FIRST_ORDER_BUILDS = [
    "core.access.Caller",
    "core.models.Customer",
    "core.models.Fulfillment",
    "core.models.HistoryEntry",
    "core.models.LineTaxRate",
    "core.models.Order",
    "core.models.OrderLine",
    "core.models.PlaceOrder",
    "core.models.RefundedUnits",
    "core.models.Totals",
    "core.money.Money",
    "core.pricing_types.DraftLine",
    "core.pricing_types.PricingDraft",
    "core.pricing_types.ShippingQuote",
    "core.pricing_types.TaxRate",
    "core.sourcing_rules.SourcingRules",
    "plugins.tax_table.TaxTable",
]


def test_a_new_container_placing_an_order_imports_only_the_orders_routes_and_services_and_builds_no_other_model():
    out = subprocess.run(
        [sys.executable, "-c", FIRST_ORDER, json.dumps(OTHER_SERVICES), json.dumps(OTHER_MODELS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    first = json.loads(out.stdout.splitlines()[-1])

    assert first["status"] == 201
    assert first["before"] == []
    # The orders module, and the plugins module whose guard POST /orders runs behind.
    assert first["after"] == ["functions.api.routes.orders", "functions.api.routes.plugins"]
    assert first["services"] == []
    assert first["built"] == []
    # What the order builds, and nothing else (the catalog's models are the seeding's): a model added
    # to it, or a part built on its own (core.models.SharedPart), is a cost of every new container.
    assert first["by_order"] == FIRST_ORDER_BUILDS, first["by_order"]
    # The collector sits out the first request (which builds what the container keeps), and only that.
    assert first["collecting"] == [False, True, True, True]
    # Each model's schema is made once: the body's (powertools' adapter made PlaceOrder's, and the
    # Idempotency-Key's dump of the body made it again), and a part several models hold (Address,
    # Customer, Fulfillment were made inside each: core.models.SharedPart).
    assert {"PlaceOrder", "Order", "HistoryEntry", "Customer", "Fulfillment"} <= set(first["generated"])
    assert [name for name, made in first["generated"].items() if made > 1] == []


# The OpenAPI document of a fresh interpreter: with every model of core/ built when first used (as
# they are), or all of them built first, as they were when each was built at its import.
DOCUMENT = """
import sys
from tests.unit.test_models_deferred import CORE, _models
if sys.argv[1] == "built first":
    for model in _models(CORE):
        model.model_rebuild(force=True)
from functions.api.routes import meta
sys.stdout.write(meta._document("/v1").body)
"""


def test_the_openapi_document_is_the_same_whenever_the_models_are_built():
    documents = [
        subprocess.run(
            [sys.executable, "-c", DOCUMENT, when], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        for when in ("on first use", "built first")
    ]

    assert json.loads(documents[0])["paths"]["/orders"]["post"]
    assert documents[0] == documents[1]


# A fresh interpreter importing the API; with "a failing import", one of the API's own imports fails.
IMPORT = """
import gc, json, sys
if sys.argv[1] == "a failing import":
    sys.modules["core.card_numbers"] = None
try:
    import functions.api.app
except ImportError:
    pass
print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def test_the_api_import_freezes_what_it_imported_and_leaves_the_collector_on_even_when_it_fails():
    def imported(how: str) -> dict[str, object]:
        out = subprocess.run([sys.executable, "-c", IMPORT, how], cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    whole = imported("whole")
    assert whole["enabled"] is True
    assert isinstance(whole["frozen"], int) and whole["frozen"] > 10_000
    assert imported("a failing import")["enabled"] is True


def test_every_function_runs_without_pydantic_plugins_and_the_bench_measures_it_so(monkeypatch: pytest.MonkeyPatch):
    # pydantic reads every installed distribution's entry points for plugins of its own when it makes its
    # first validator, in each new container; nothing the OMS ships declares one (make build checks the
    # layer: test_build_artifacts.py), so the template turns them off for every function.
    import importlib.metadata

    from pydantic.plugin import _loader

    from bench.__main__ import deployed_constants
    from infra.local.template import Template

    template = Template.load()
    functions = template.functions()
    assert {
        name: props["Environment"]["Variables"].get("PYDANTIC_DISABLE_PLUGINS") for name, props in functions.items()
    } == (dict.fromkeys(functions, "__all__"))
    # The local stack's functions take it from the same place (Globals, resolved), and so does the
    # process bench cold measures.
    refs = {"OrdersTable": "o", "InventoryTable": "i", "CatalogTable": "c", "IdempotencyTable": "d"}
    assert template.global_environment(refs)["PYDANTIC_DISABLE_PLUGINS"] == "__all__"
    assert deployed_constants()["PYDANTIC_DISABLE_PLUGINS"] == "__all__"
    assert deployed_constants()["POWERTOOLS_SERVICE_NAME"] == "oms"

    # pydantic's loader reads that value as every plugin off: it looks at no distribution.
    def read(*args: object, **kwargs: object) -> None:
        raise AssertionError("pydantic read the installed distributions")

    monkeypatch.setattr(importlib.metadata, "distributions", read)
    monkeypatch.setattr(_loader, "_plugins", None)
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "__all__")
    assert list(_loader.get_plugins()) == []
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS")
    with pytest.raises(AssertionError, match="read the installed distributions"):
        _loader.get_plugins()
