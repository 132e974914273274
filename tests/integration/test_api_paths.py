"""Ids in paths (API.md): an id that names nothing the caller may see is 404 not_found, malformed
or not, on every route and method that looks one up; a PUT that creates what its path names still
validates the id it is given (422). Through the in-process gateway, on moto."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from infra.local.template import Template
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api

# What a PUT creates under the id in its path: there a malformed id is invalid, not unknown.
CREATES = {("PUT", "/products/{sku}"), ("PUT", "/locations/{location_id}"), ("PUT", "/vendors/{vendor_id}")}
MALFORMED = "~doesnotexist"  # fits no id format (an id never starts with "~")
WELL_FORMED = {
    "order_id": "ord_" + "a" * 24,
    "shipment_id": "shp_" + "a" * 24,
    "key_id": "key_doesnotexist",
    "import_id": "imp_" + "a" * 24,
    "return_id": "rma_" + "a" * 24,
    "sku": "NO-SUCH-SKU",
    "location_id": "no-such-location",
    "carrier": "no-such-carrier",
    "webhook_id": "whk_" + "a" * 24,
    "delivery_id": "dlv_" + "0" * 14 + "a" * 16,
    "customer_id": "no-such-customer",
    "po_id": "po_" + "a" * 24,
}
ROUTES = [(r.method, r.path) for r in Template.load().api_routes() if "{" in r.path]
LOOKUPS = [
    (method, path, name)
    for method, path in ROUTES
    if (method, path) not in CREATES
    for name in re.findall(r"\{(\w+)\}", path)
]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def concrete(path: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), WELL_FORMED[m.group(1)]), path)


def test_every_route_with_an_id_in_its_path_is_covered():
    assert {(m, p) for m, p, _ in LOOKUPS} | CREATES == set(ROUTES)
    assert {name for _, _, name in LOOKUPS} == set(WELL_FORMED)


# Longer than any id may be: a length bound refused it as invalid (422) where it names nothing.
TOO_LONG = "a" * 300


@pytest.mark.parametrize("malformed", [MALFORMED, TOO_LONG], ids=["no id's format", "longer than any id"])
@pytest.mark.parametrize(("method", "path", "name"), LOOKUPS, ids=[f"{m} {p} {n}" for m, p, n in LOOKUPS])
def test_a_malformed_id_is_404_not_found_whatever_the_body(
    api: InProcessApi, method: str, path: str, name: str, malformed: str
):
    body = {} if method in ("POST", "PUT", "PATCH") else None  # invalid for every such route

    response = api.request(method, concrete(path, **{name: malformed}), json=body)

    error = assert_error(response, 404, "not_found")
    assert error["details"] == []
    assert malformed[:100] in error["message"]


# The ids the server makes (API.md: "Server ids carry a prefix"); skus, locations, customers and
# carriers are the client's names, and may hold a slash (test_a_customer_whose_id_has_a_slash...).
SERVER_PREFIXES = ("ord_", "shp_", "rma_", "imp_", "po_", "whk_", "dlv_", "key_")
SERVER_IDS = [(m, p, n) for m, p, n in LOOKUPS if WELL_FORMED[n].startswith(SERVER_PREFIXES)]


@pytest.mark.parametrize(("method", "path", "name"), SERVER_IDS, ids=[f"{m} {p} {n}" for m, p, n in SERVER_IDS])
def test_a_server_id_with_an_encoded_slash_is_404_not_found_in_the_contracts_shape(
    api: InProcessApi, method: str, path: str, name: str
):
    # `%2F` decodes to a slash inside the one path segment: an id naming nothing (API.md: 404,
    # "malformed or not"), never another route, a 400 or a 5xx.
    body = {} if method in ("POST", "PUT", "PATCH") else None

    response = api.request(method, concrete(path, **{name: "ord_x%2Fy"}), json=body)

    error = assert_error(response, 404, "not_found")
    assert error["details"] == [] and "ord_x/y" in error["message"]


def test_the_issue_s_example_get_orders_ord_doesnotexist_is_404(api: InProcessApi):
    assert_error(api.get("/orders/ord_doesnotexist"), 404, "not_found")


@pytest.mark.parametrize("path", ["/orders/{order_id}", "/orders/{order_id}/history", "/imports/{import_id}"])
def test_a_malformed_id_answers_exactly_like_a_well_formed_unknown_one(api: InProcessApi, path: str):
    malformed = api.get(concrete(path, order_id="ord_x", import_id="imp_x"))
    unknown = api.get(concrete(path))

    assert_error(malformed, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    shape = malformed.json()["error"]
    assert shape["message"].replace("ord_x", "<id>").replace("imp_x", "<id>") == unknown.json()["error"][
        "message"
    ].replace(WELL_FORMED["order_id"], "<id>").replace(WELL_FORMED["import_id"], "<id>")


@pytest.mark.parametrize(
    ("path", "name"), [("/products/{sku}", "sku"), ("/locations/{location_id}", "location_id")], ids=["sku", "location"]
)
def test_a_put_that_creates_what_its_path_names_validates_the_id(api: InProcessApi, path: str, name: str):
    response = api.put(concrete(path, **{name: MALFORMED}), json={})

    assert_error(response, 422, "validation_error", name)


def test_a_card_number_as_an_id_is_still_refused_as_card_data(api: InProcessApi):
    response = api.get("/orders/4111111111111111")

    assert_error(response, 422, "card_data_rejected", "order_id")
    assert "4111111111111111" not in response.text


def test_a_key_without_the_scope_is_still_403_before_the_id_is_looked_at(api: InProcessApi):
    issued = api.post("/api-keys", json={"name": "catalog only", "scopes": ["catalog:write"]}).json()

    assert_error(api.get(f"/orders/{MALFORMED}", key=issued["key"]), 403, "forbidden")


def test_a_percent_encoded_id_is_the_id_it_encodes(api: InProcessApi):
    # API Gateway's REST `path` keeps the client's encoding; routes must see the decoded value
    # (`pathParameters`), as the guards and the schema's lengths and patterns do.
    from tests.builders import product_body

    created = api.put("/products/MUG%3ABLUE", json=product_body("9.99"))

    assert created.status_code == 201, created.text
    assert created.json()["sku"] == "MUG:BLUE"
    assert api.get("/products/MUG:BLUE").json()["sku"] == "MUG:BLUE"
    assert api.get("/products/MUG%3aBLUE").status_code == 200
    # 64 characters of two UTF-8 bytes each are 64 characters, not 384 of their encoding.
    carrier = "%C3%A9" * 64
    assert_error(api.post(f"/carriers/{carrier}/tracking", json={}), 404, "not_found")


def test_a_customer_whose_id_has_a_slash_is_read_like_any_other(api: InProcessApi):
    # customer.id is an Identifier in POST /orders, which takes "/" ("acme/1042"): GET
    # /customers/{id} reads every id an order may carry, percent-encoded in the path.
    from core.aggregates import aggregate_change
    from core.models import Customer
    from functions.api.dependencies import container
    from tests.unit.conftest import a_stored_order

    order = a_stored_order(
        ("TSHIRT", 1), id="ord_" + "s" * 24, customer=Customer(id="acme/1042", email="a@example.com")
    )
    container().aggregate_store.apply(aggregate_change(None, order.model_dump(mode="json")))

    found = api.get("/customers/acme%2F1042")

    assert found.status_code == 200, found.text
    assert (found.json()["id"], found.json()["orders_count"]) == ("acme/1042", 1)
    assert_error(api.get("/customers/acme%2F9999"), 404, "not_found")
