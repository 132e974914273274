"""A number in a query string is written in digits: `?limit=5.0`, `?limit=1_0`, `?limit=+5` or
`?limit= 5` is 422 naming `limit` on every list (API.md: `?limit=` is 1..100), never read as 5 or
10 the way Python's int() and pydantic's lax mode would read it."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api_with_webhooks
from tests.integration.test_refunds_api import order_id

ORDER = order_id(42)
WEBHOOK = "whk_" + "b" * 24

# Every route that takes `limit`, with the other parameters it requires.
LISTS: dict[str, tuple[str, dict[str, str]]] = {
    "orders": ("/orders", {}),
    "returns": ("/returns", {}),
    "order returns": (f"/orders/{ORDER}/returns", {}),
    "order refunds": (f"/orders/{ORDER}/refunds", {}),
    "order notifications": (f"/orders/{ORDER}/notifications", {}),
    "order access log": (f"/orders/{ORDER}/access-log", {}),
    "order history": (f"/orders/{ORDER}/history", {}),
    "api keys": ("/api-keys", {}),
    "imports": ("/imports", {}),
    "customers": ("/customers", {"email": "ann@example.com"}),
    "top products": ("/reports/top-products", {"currency": "USD"}),
    "top customers": ("/reports/top-customers", {"currency": "USD"}),
    "top regions": ("/reports/top-regions", {"currency": "USD"}),
    "locations": ("/locations", {}),
    "vendors": ("/vendors", {}),
    "purchase orders": ("/purchase-orders", {}),
    "sourcing rules": ("/sourcing/rules/history", {}),
    "webhooks": ("/webhooks", {}),
    "webhook deliveries": (f"/webhooks/{WEBHOOK}/deliveries", {}),
}

NOT_DIGITS = ["5.0", "1_0", "+5", " 5", "5 ", "1e1", "٥", "0x5", "-1", ""]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_webhooks() as started:
        yield started


def get(api: InProcessApi, name: str, limit: str) -> Any:
    path, required = LISTS[name]
    return api.get(path, params={**required, "limit": limit})


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("limit", NOT_DIGITS)
def test_a_limit_not_written_in_digits_is_422_naming_limit(api: InProcessApi, name: str, limit: str) -> None:
    error = assert_error(get(api, name, limit), 422, "validation_error")
    assert [detail["field"] for detail in error["details"]] == ["limit"], error


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("limit", ["0", "101"])
def test_a_limit_out_of_range_is_422_naming_limit(api: InProcessApi, name: str, limit: str) -> None:
    error = assert_error(get(api, name, limit), 422, "validation_error")
    assert [detail["field"] for detail in error["details"]] == ["limit"], error


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("limit", ["1", "05", "100"])
def test_a_limit_in_digits_is_taken(api: InProcessApi, name: str, limit: str) -> None:
    answer = get(api, name, limit)
    assert answer.status_code != 422, answer.text
    assert answer.status_code < 500, answer.text


def test_the_served_document_states_every_lists_limit_as_1_to_100(api: InProcessApi) -> None:
    document = api.get("/openapi.json", key=None).json()
    limits = {
        (method.upper(), path): parameter["schema"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "limit"
    }
    listed = {path.replace(ORDER, "{order_id}").replace(WEBHOOK, "{webhook_id}") for path, _ in LISTS.values()}
    assert {path for _, path in limits} == listed
    for operation, schema in limits.items():
        assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", 1, 100), operation
        assert not {"ge", "le", "gt", "lt"} & schema.keys(), operation


def test_every_list_with_a_cursor_may_answer_422_in_schemathesis_config(api: InProcessApi) -> None:
    """A cursor the server did not issue is 422 invalid_cursor, which the schema cannot state: each
    list that takes one must be in a rule of tests/e2e/schemathesis.toml that allows it 422, or
    `make fuzz` reports a forged cursor's 422 as a valid request refused."""
    config = tomllib.loads((Path(__file__).parents[1] / "e2e" / "schemathesis.toml").read_text())
    rules = [
        rule
        for rule in config["operations"]
        if "422" in rule.get("checks", {}).get("positive_data_acceptance", {}).get("expected-statuses", [])
    ]

    def allowed(name: str) -> bool:
        return any(
            rule.get("include-name") == name or re.search(rule.get("include-name-regex", "^$"), name) for rule in rules
        )

    document = api.get("/openapi.json", key=None).json()
    paged = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any(parameter["name"] == "cursor" for parameter in operation.get("parameters", []))
    ]
    assert len(paged) > 10
    assert [name for name in paged if not allowed(name)] == []
