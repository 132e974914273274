"""End-to-end fixtures: one local stack per test module, on free ports, driven over real HTTP.

Each module gets its own stack (moto in-process, tables from template.yaml, the real authorizer
and API handler behind the local gateway), so xdist workers (`-n 3 --dist loadfile`) never share
ports or state, and nothing outlives the module. Tests seed their own catalog through the API
with uuid-based skus, locations, channels, customers and external ids, so they do not depend on
each other or on the demo seed (which running_stack() leaves off).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, Catalog

# Throttling is not what these tests are about: generous limits keep them independent of the
# template's defaults and of OMS_RATE_LIMIT / OMS_BURST_LIMIT in a developer's shell. Orders pay
# with the `test` gateway, which the template leaves off.
PARAMETERS = {"ApiRateLimit": 100_000, "ApiBurstLimit": 100_000, "EnableTestPayments": "true"}


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    # The order workflow is off here: these modules test capture and reads, and need orders to
    # stay as placed. tests/e2e/test_order_workflow*.py run it.
    with running_stack(
        api_port=0, aws_port=0, seed=False, parameter_overrides=PARAMETERS, event_sources=False
    ) as started:
        yield started


def workflow_stack(**overrides: Any) -> AbstractContextManager[EmbeddedStack]:
    """A stack with every event source running, for the modules about the order workflow: each
    order goes through the Step Functions definition; Retry sleeps are scaled down 100x.
    `overrides`: more of EmbeddedStack's arguments."""
    return running_stack(
        api_port=0,
        aws_port=0,
        seed=False,
        parameter_overrides=PARAMETERS,
        event_sources=True,
        retry_delay_scale=0.01,
        **overrides,
    )


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def catalog(api: Api) -> Catalog:
    """Products, locations and stock of this test only."""
    return Catalog(api)
