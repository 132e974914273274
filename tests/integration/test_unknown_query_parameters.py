"""Unknown query parameters are 422, as unknown body fields are (API.md: no silent drops): a filter
misspelt (`?stauts=cancelled`, `?form=2026-01-01`) answered 200 with the unfiltered list or the
default 30 days, which an operator or a merchant read as the answer to what they asked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


@pytest.mark.parametrize(
    "path, params, unknown",
    [
        ("/orders", {"stauts": "cancelled"}, "stauts"),
        ("/orders", {"status": "cancelled", "customer": "cus_1"}, "customer"),
        ("/reports/top-products", {"currency": "USD", "form": "2026-01-01"}, "form"),
        ("/reports/top-customers", {"currency": "USD", "chanel": "web"}, "chanel"),
        ("/reports/top-regions", {"currency": "USD", "start": "2026-01-01"}, "start"),
        ("/customers", {"email": "ada@example.com", "channel": "web"}, "channel"),
        ("/customers/cus_1", {"currency": "USD"}, "currency"),
        ("/orders/ord_" + "a" * 24 + "/access-log", {"limt": "5"}, "limt"),
        ("/orders/ord_" + "a" * 24, {"fields": "id"}, "fields"),
    ],
)
def test_an_unknown_query_parameter_is_422_naming_it(api: InProcessApi, path: str, params: dict, unknown: str):
    error = assert_error(api.get(path, params=params), 422, "validation_error", unknown)
    assert error["details"] == [{"field": unknown, "message": "Extra inputs are not permitted"}]


def test_the_parameters_a_route_declares_still_answer(api: InProcessApi):
    answer = api.get(
        "/reports/top-products",
        params={"currency": "USD", "from": "2026-01-01", "to": "2026-01-31", "channel": "web", "limit": "5"},
    )
    assert answer.status_code == 200, answer.text
    assert api.get("/orders", params={"status": "cancelled", "limit": "5"}).status_code == 200
    assert api.get("/docs", key=None, params={"format": "json"}).status_code == 200  # public pages: powertools'


def test_the_key_is_checked_before_the_query(api: InProcessApi):
    # A key without the scope learns nothing about the request it sent: 403 first, as for bodies.
    issued = api.post("/api-keys", json={"name": "shop", "scopes": ["orders:read"]}).json()
    assert_error(api.get("/reports/top-products", key=issued["key"], params={"currency": "USD", "x": "1"}), 403)
    assert_error(api.get("/orders", key=None, params={"stauts": "cancelled"}), 401)


def test_every_route_that_takes_a_key_refuses_a_parameter_it_does_not_declare():
    # The matrix, in-process over the guards: the route table's every authenticated route.
    from functions.api.access import PUBLIC
    from functions.api.app import _scope_table
    from functions.api.errors import ApiError
    from functions.api.guards import check_request

    table = _scope_table()
    checked = 0
    for (method, resource), requirement in table.routes().items():
        if requirement is PUBLIC:
            continue
        event = {
            "httpMethod": method,
            "resource": resource,
            "path": resource,
            "headers": {},
            "queryStringParameters": {"unknown_parameter": "1"},
            "multiValueQueryStringParameters": {"unknown_parameter": ["1"]},
            "requestContext": {"authorizer": {"key_id": "key_admin", "scopes": "admin"}},
        }
        if (method, resource) == ("POST", "/carriers/{carrier}/tracking"):
            check_request(event, table)  # the carrier's request: its plugin's format, not the API's
            continue
        with pytest.raises(ApiError) as refused:
            check_request(event, table)
        assert (refused.value.status, refused.value.details) == (
            422,
            [{"field": "unknown_parameter", "message": "Extra inputs are not permitted"}],
        ), (method, resource)
        checked += 1
    assert checked > 50
