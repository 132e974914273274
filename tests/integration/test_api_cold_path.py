"""A new API container placing an order imports the routes and services that order needs, not every route's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter, as a new container is: the moto account, the catalog seeded through the
# container (no route), then the sample POST /orders through the real handler.
FIRST_ORDER = """
import json, os, sys
SERVICES = json.loads(sys.argv[1])
from tests.integration.conftest import ENV_BY_TABLE, FUNCTION_ENV
os.environ.update(FUNCTION_ENV)
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
    status = lambda_handler(json.loads(open("events/api_place_order.json").read()), Context())["statusCode"]
    routes_after = sorted(name for name in sys.modules if name.startswith("functions.api.routes."))
    services = sorted(name for name in SERVICES if name in sys.modules)
print(json.dumps({"status": status, "before": routes_before, "after": routes_after, "services": services}))
"""


# Services of other routes and functions, which the composition root imports only to build them.
OTHER_SERVICES = [
    "core.aggregates",
    "core.fulfillment",
    "core.holds",
    "core.pickups",
    "core.purchasing",
    "core.reconciliation",
    "core.refund_service",
    "core.reorder",
    "core.returns",
    "core.webhooks",
    "functions.adapters.api_gateway",
    "functions.adapters.imports",
    "functions.import_splitter.readers",
]


def test_a_new_container_placing_an_order_imports_only_the_orders_routes_and_services():
    out = subprocess.run(
        [sys.executable, "-c", FIRST_ORDER, json.dumps(OTHER_SERVICES)],
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
