"""Orders placed together for the tests of a workflow module, so one settle runs all their workflows.

Settling the stack (every mapping drained, no execution running, twice in a row) costs more than a
journey's own work; a module whose tests each place one order and settle paid it once per test.
Here each test names the function that arranges its order (`@arranged(registry, arrange)`, or the
module's own `arrangement_of`), and the first of the module's selected tests to ask for its
journey has every selected test's order arranged and placed, then the stack settled once. Each
order still goes through its own workflow execution, on its own skus; a test then reads and
asserts on its order exactly as after its own settle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from infra.local.stack import EmbeddedStack
from tests.e2e.client import Api, Catalog

SETTLE_SECONDS = 10

# (catalog, network) -> (the POST /orders body, what the test needs to know of its arrangement)
Arrange = Callable[[Catalog, dict[str, str]], tuple[dict[str, Any], dict[str, Any]]]


def settle(stack: EmbeddedStack, orders: int = 1) -> None:
    """Until the outbox has delivered everything and no workflow execution is running (the bound
    grows with the orders placed together)."""
    assert stack.wait_until_idle(SETTLE_SECONDS * max(orders, 1)), "the stack did not settle"


def place(api: Api, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = api.post("/orders", json=body, **kwargs)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    return response.json()


class Journeys:
    """The placed order of each test that has an arrangement (`arrangement_of(item)`), by test id:
    (order id, what its arrangement returned). A test takes its own once."""

    def __init__(self, arrangement_of: Callable[[pytest.Item], Arrange | None]):
        self.arrangement_of = arrangement_of
        self.placed: dict[str, tuple[str, dict[str, Any]]] = {}  # not taken yet
        self.arranged: set[str] = set()  # every test id ever placed for

    def of(self, request: pytest.FixtureRequest, stack: EmbeddedStack, api: Api, network: dict[str, str]):
        test = request.node
        if test.nodeid not in self.placed:
            # The first of the module's tests to ask: every selected one not placed for yet. A test
            # asking again (a rerun), or not among the session's items: its own order only.
            module = [item for item in request.session.items if getattr(item, "module", None) is request.module]
            fresh = [item for item in module if self.arrangement_of(item) and item.nodeid not in self.arranged]
            items = fresh if test in fresh else [test]
            catalog = Catalog(api)
            arranged = {item.nodeid: self.arrangement_of(item)(catalog, network) for item in items}
            for nodeid, (body, context) in arranged.items():
                self.placed[nodeid] = (place(api, body)["id"], context)
            self.arranged.update(arranged)
            settle(stack, len(arranged))
        return self.placed.pop(test.nodeid)


def journey_fixture() -> Callable[..., tuple[str, dict[str, Any]]]:
    """The `journey` fixture of a module that defines `journeys` (a Journeys), `stack` and `network`."""

    @pytest.fixture
    def journey(
        request: pytest.FixtureRequest, journeys: Journeys, stack: EmbeddedStack, api: Api, network: dict[str, str]
    ) -> tuple[str, dict[str, Any]]:
        """This test's order id and arrangement: placed with every selected test's that has one,
        then the stack settled once."""
        return journeys.of(request, stack, api, network)

    return journey


def by_name(registry: dict[str, Arrange]) -> Callable[[pytest.Item], Arrange | None]:
    """The arrangement `arranged` registered for an item's test function."""
    return lambda item: registry.get(getattr(item, "originalname", ""))


def arranged(registry: dict[str, Arrange], arrange: Arrange) -> Callable[[Callable], Callable]:
    """Registers `arrange` as the arrangement of the decorated test's order."""

    def register(test: Callable) -> Callable:
        registry[test.__name__] = arrange
        return test

    return register
