"""Who may call what (401 before anything else), unknown routes and methods (404), and the public docs,
through the in-process gateway (tests/integration/in_process.py)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, unique
from tests.integration.in_process import InProcessApi

NO_KEY = None


# One product bug breaks everything generated from the OpenAPI document; delete this marker's uses
# once GET /openapi.json answers 200 again.
@pytest.mark.parametrize(
    "authorization",
    [NO_KEY, "Bearer oms_wrong_key_0123456789abcdef", "Bearer short", "Basic YWRtaW46YWRtaW4=", "Bearer "],
    ids=["none", "unknown-key", "malformed-key", "basic-scheme", "empty-bearer"],
)
def test_a_request_without_a_valid_key_is_401_unauthorized(api: InProcessApi, authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}

    response = api.get("/orders", key=None, headers=headers)

    assert_error(response, 401, "unauthorized")


def test_a_wrong_key_appended_to_the_admin_key_is_401(api: InProcessApi):
    response = api.get("/orders", key=api.admin_key + "x")

    assert_error(response, 401, "unauthorized")


def test_post_orders_without_a_key_is_401_and_places_nothing(api: InProcessApi, catalog: Catalog):
    (sku,) = catalog.stocked("19.99")
    body = order_body((sku, 1))

    response = api.post("/orders", json=body, key=None)

    assert_error(response, 401, "unauthorized")
    assert api.orders_of(body["customer"]["id"]) == []


def test_put_product_with_a_wrong_key_is_401_and_creates_nothing(api: InProcessApi):
    sku = unique("SKU").upper()

    response = api.put(
        f"/products/{sku}",
        json={"name": "Mug", "price": {"amount": "1.00", "currency": "USD"}},
        key="oms_wrong_key_0123456789abcdef",
    )

    assert_error(response, 401, "unauthorized")
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")


def test_an_invalid_body_without_a_key_is_401_not_a_validation_error(api: InProcessApi):
    response = api.post("/orders", data="{not json", key=None, headers={"Content-Type": "application/json"})

    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("path", ["/nope", "/orders/ord_aaaaaaaaaaaaaaaaaaaaaaaa/nope", "/products", "/v2/orders"])
@pytest.mark.parametrize("with_key", [True, False], ids=["admin-key", "no-key"])
def test_an_unknown_route_is_404_not_found(api: InProcessApi, path: str, with_key: bool):
    response = api.get(path, **({} if with_key else {"key": None}))

    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/orders"),
        ("POST", "/health"),
        ("DELETE", "/products/ANY-SKU"),
        ("PUT", "/orders/ord_aaaaaaaaaaaaaaaaaaaaaaaa"),
    ],
)
@pytest.mark.parametrize("with_key", [True, False], ids=["admin-key", "no-key"])
def test_a_known_path_with_a_method_it_lacks_is_404_not_found_as_api_gateway_answers(
    api: InProcessApi, method: str, path: str, with_key: bool
):
    # API Gateway (REST) answers a method the resource lacks as it answers a path no resource has,
    # MISSING_AUTHENTICATION_TOKEN, which the template maps to 404 not_found; the local gateway
    # answered 405 method_not_allowed with an Allow header, which no deployed stack sends.
    response = api.request(method, path, **({} if with_key else {"key": None}))

    assert_error(response, 404, "not_found")
    assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert "Allow" not in response.headers


@pytest.mark.parametrize(
    "path",
    ["/health", "/openapi.json", "/docs"],
)
@pytest.mark.parametrize(
    "authorization",
    [NO_KEY, "Bearer oms_wrong_key_0123456789abcdef"],
    ids=["no-key", "wrong-key"],
)
def test_health_openapi_and_docs_need_no_key(api: InProcessApi, path: str, authorization: str | None):
    response = api.get(path, key=None, headers={} if authorization is None else {"Authorization": authorization})

    assert response.status_code == 200, response.text[:500]


def test_health_says_ok(api: InProcessApi):
    response = api.get("/health", key=None)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_json_is_an_openapi_3_document_with_the_contracts_paths(api: InProcessApi):
    response = api.get("/openapi.json", key=None)

    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {
        "/health",
        "/orders",
        "/orders/{order_id}",
        "/orders/{order_id}/history",
        "/products/{sku}",
        "/locations",
        "/locations/{location_id}",
        "/inventory/{sku}",
        "/inventory/{sku}/{location_id}",
        "/inventory/{sku}/{location_id}/adjustments",
    } <= set(document["paths"])
    assert {"get", "post"} <= set(document["paths"]["/orders"])


# pydantic's names for constraints, which JSON Schema spells minimum, maxLength, ...: one in the
# document is a constraint no client or schemathesis sees (powertools writes them when a parameter's
# Query() sits beside another annotation), so -5 would read as a valid `limit`.
PYDANTIC_ONLY = {"ge", "le", "gt", "lt", "min_length", "max_length", "multiple_of", "max_digits", "decimal_places"}


def test_the_openapi_document_states_constraints_in_json_schema_words_only(api: InProcessApi):
    leaked: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in PYDANTIC_ONLY and not where.endswith("/properties"):
                    leaked.append(f"{where}/{key}")
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(api.get("/openapi.json", key=None).json(), "")
    assert leaked == []


def test_docs_is_swagger_ui_that_loads_nothing_from_outside_hosts(api: InProcessApi):
    response = api.get("/docs", key=None)

    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("text/html")
    html = response.text
    assert "SwaggerUIBundle" in html
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html, flags=re.IGNORECASE)
    external = [
        tag
        for tag in tags
        for url in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", tag, flags=re.IGNORECASE)
        if urlsplit(url).scheme in ("http", "https") or url.startswith("//")
    ]
    assert external == []
    # Swagger UI's online validator badge would call validator.swagger.io unless the layout
    # leaves it out or validatorUrl is null.
    assert 'layout: "BaseLayout"' in html or re.search(r"validatorUrl\s*:\s*null", html)


def test_openapi_json_is_the_document_docs_renders(api: InProcessApi):
    served = api.get("/openapi.json", key=None)
    rendered = api.get("/docs", key=None, params={"format": "json"})

    assert served.status_code == rendered.status_code == 200
    assert served.json()["info"] == rendered.json()["info"]
    assert served.json().get("servers") == rendered.json().get("servers")


def test_the_server_url_docs_renders_reaches_this_api(api: InProcessApi):
    response = api.get("/docs", key=None, params={"format": "json"})
    assert response.status_code == 200, response.text[:500]
    base = response.json().get("servers", [{"url": "/"}])[0]["url"].rstrip("/")

    response = api.get(f"{base}/health", key=None)

    assert response.status_code == 200, response.text
