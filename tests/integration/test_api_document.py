"""The OpenAPI document says what the API does (issue 11 item 8): which routes are public, which
headers are required, every answer a route can give, and the input rules the code enforces."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from core.models import IDENTIFIER_PATTERN
from functions.api.access import PUBLIC
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api

METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


@pytest.fixture(scope="module")
def document(api: InProcessApi) -> dict[str, Any]:
    return api.get("/openapi.json", key=None).json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_the_public_routes_and_only_they_say_no_key_is_needed(document: dict[str, Any]):
    from functions.api.app import _scope_table

    public = {route for route, requirement in _scope_table().routes().items() if requirement is PUBLIC}
    documented_public = {(m, p) for m, p, op in operations(document) if op.get("security") == []}

    assert public == {("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs")}
    assert documented_public == public
    assert document["security"] == [{"apiKey": []}]
    assert all("security" not in op for m, p, op in operations(document) if (m, p) not in public)


def test_every_route_of_the_api_is_described(api: InProcessApi, document: dict[str, Any]):
    from functions.api.app import _scope_table

    assert {(m, p) for m, p, _ in operations(document)} == set(_scope_table().routes())


def test_every_route_declares_what_any_request_can_be_answered(document: dict[str, Any]):
    for method, path, operation in operations(document):
        answers = set(operation["responses"])
        assert {"400", "413", "415", "429"} <= answers, (method, path)
        if operation.get("security") != []:
            assert {"401", "422"} <= answers, (method, path)


def test_every_error_is_documented_in_the_contract_s_shape(document: dict[str, Any]):
    text = json.dumps(document)

    assert "HTTPValidationError" not in text
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and (method, path, status) != ("GET", "/health", "503"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_every_route_that_captures_documents_a_refused_capture_and_an_unavailable_gateway(document: dict[str, Any]):
    # A ship captures its parcel's share, and so does the deliver that hands a pickup over.
    for path in (
        "/orders/{order_id}/shipments/{shipment_id}/ship",
        "/orders/{order_id}/shipments/{shipment_id}/deliver",
    ):
        assert {"502", "503"} <= set(document["paths"][path]["post"]["responses"]), path


def test_an_optional_body_is_an_object_or_nothing_never_null(document: dict[str, Any]):
    for method, path, operation in operations(document):
        schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        assert {"type": "null"} not in schema.get("anyOf", []), (method, path)


def test_an_optional_header_is_a_string_or_left_out_never_null(document: dict[str, Any]):
    # A header carries text or is not sent: a schema allowing null had schemathesis send
    # `If-Match: null`, which the API refuses 400 as the header's pattern says it must.
    nullable = [
        (method, path, parameter["name"])
        for method, path, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header" and {"type": "null"} in parameter["schema"].get("anyOf", [])
    ]
    assert nullable == []


def test_if_match_is_required_where_its_absence_is_428(api: InProcessApi, document: dict[str, Any]):
    patch = document["paths"]["/orders/{order_id}"]["patch"]
    (if_match,) = [p for p in patch["parameters"] if p["in"] == "header" and p["name"].lower() == "if-match"]

    assert if_match["required"] is True
    assert "428" in patch["responses"]
    answer = api.request("PATCH", "/orders/ord_" + "a" * 24, json={"shipping_method": "express"})
    assert_error(answer, 428, "if_match_required", "If-Match")


def test_a_malformed_if_match_is_still_400_and_an_unknown_order_still_404(api: InProcessApi):
    unknown = "/orders/ord_" + "a" * 24
    body = {"shipping_method": "express"}

    assert_error(api.request("PATCH", unknown, json=body, headers={"If-Match": "soon"}), 400, "malformed_header")
    assert_error(api.request("PATCH", unknown, json=body, headers={"If-Match": "1"}), 404, "not_found")
    assert_error(api.request("PATCH", "/orders/nope", json=body), 404, "not_found")


@pytest.mark.parametrize("tag", ['"1', '1"', "W/1", 'w/"1"', '"1"x'])
def test_an_if_match_whose_quotes_do_not_make_a_tag_is_400_and_changes_nothing(api: InProcessApi, tag: str):
    # `"1` and `1"` were read as version 1 (the pattern took each quote on its own).
    rules = api.get("/sourcing/rules").json()
    patch = api.request(
        "PATCH", "/orders/ord_" + "a" * 24, json={"shipping_method": "express"}, headers={"If-Match": tag}
    )
    put = api.put(
        "/sourcing/rules",
        json={"prefer": "fewest_shipments"},
        headers={"If-Match": tag.replace("1", str(rules["version"]))},
    )

    assert [d["field"] for d in assert_error(patch, 400, "malformed_header")["details"]] == ["If-Match"]
    assert [d["field"] for d in assert_error(put, 400, "malformed_header")["details"]] == ["If-Match"]
    assert api.get("/sourcing/rules").json() == rules


@pytest.mark.parametrize("tag", ["1", '"1"', 'W/"1"'])
def test_an_if_match_is_the_version_bare_or_as_an_entity_tag(api: InProcessApi, tag: str):
    patch = api.request(
        "PATCH", "/orders/ord_" + "a" * 24, json={"shipping_method": "express"}, headers={"If-Match": tag}
    )

    assert_error(patch, 404, "not_found")


def test_a_malformed_header_is_named_as_the_409s_and_the_428_name_it(api: InProcessApi):
    patch = api.request("PATCH", "/orders/ord_" + "a" * 24, json={"shipping_method": "express"},
                        headers={"If-Match": "soon"})  # fmt: skip
    post = api.request("POST", "/orders", json={}, headers={"Idempotency-Key": "has space"})

    assert [d["field"] for d in assert_error(patch, 400, "malformed_header")["details"]] == ["If-Match"]
    assert [d["field"] for d in assert_error(post, 400, "malformed_header")["details"]] == ["Idempotency-Key"]


def test_a_change_to_an_order_documents_the_receipt_a_write_only_key_gets(document: dict[str, Any]):
    cancel = document["paths"]["/orders/{order_id}/cancel"]["post"]["responses"]["200"]
    shapes = cancel["content"]["application/json"]["schema"]["anyOf"]

    assert {"$ref": "#/components/schemas/OrderReceipt"} in shapes
    assert document["components"]["schemas"]["OrderReceipt"]["required"] == ["id", "status", "version"]


def test_the_document_is_valid_openapi(document: dict[str, Any]):
    from openapi_spec_validator import validate

    validate(document)


def test_a_generated_client_names_each_call_for_what_it_does(document: dict[str, Any]):
    # Generators name a call by its operationId: place_order, not place_order_orders_post.
    named = {(method, path): operation["operationId"] for method, path, operation in operations(document)}

    assert named[("POST", "/orders")] == "place_order"
    assert named[("GET", "/orders/{order_id}")] == "get_order"
    assert named[("PATCH", "/orders/{order_id}")] == "edit_order"
    assert named[("POST", "/returns/{return_id}/receive")] == "receive_return"
    assert named[("POST", "/purchase-orders/{po_id}/receive")] == "receive_purchase_order"
    assert len(set(named.values())) == len(named)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in named.values()), named


def test_a_generated_client_and_the_docs_page_group_each_call_under_its_resource(document: dict[str, Any]):
    # Untagged, every call fell under "default": one package of 66 calls in a generated client, one
    # list on /docs. Each is tagged with the module of functions/api/routes/ that serves it.
    from functions.api.app import ROUTE_MODULES

    tags = {(method, path): operation.get("tags") for method, path, operation in operations(document)}

    assert tags[("POST", "/orders")] == ["orders"] and tags[("POST", "/orders/{order_id}/hold")] == ["holds"]
    assert tags[("POST", "/returns/{return_id}/receive")] == ["returns"]
    assert tags[("GET", "/orders/{order_id}/access-log")] == ["access_log"]
    assert all(tag is not None and len(tag) == 1 and tag[0] in ROUTE_MODULES for tag in tags.values()), tags
    assert {tag[0] for tag in tags.values()} == set(ROUTE_MODULES)


def test_no_two_schemas_share_a_title_so_a_generator_makes_a_model_of_each(document: dict[str, Any]):
    # A generator names a model by its title: two "ReceiptLine"s made it drop POST /returns/{id}/receive.
    schemas = document["components"]["schemas"]
    titles = [schema.get("title", name) for name, schema in schemas.items()]

    assert sorted(title for title in titles if titles.count(title) > 1) == []
    returned, purchased = schemas["ReceiveReturn"]["properties"]["lines"], schemas["Receipt"]["properties"]["lines"]
    assert returned["items"] == {"$ref": "#/components/schemas/ReturnReceiptLine"}
    assert purchased["items"] == {"$ref": "#/components/schemas/ReceiptLine"}


def test_every_link_names_an_operation_and_its_parameters(document: dict[str, Any]):
    links = [
        link
        for _, _, operation in operations(document)
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]

    assert len(links) >= 7
    for link in links:
        path, method = link["operationRef"].removeprefix("#/paths/").rsplit("/", 1)
        target = document["paths"][path.replace("~1", "/").replace("~0", "~")][method]
        names = {f"header.{p['name']}" if p["in"] == "header" else p["name"] for p in target.get("parameters", [])}
        assert set(link["parameters"]) <= names, link


def test_the_input_rules_the_code_enforces_are_in_the_schema(document: dict[str, Any]):
    schemas = document["components"]["schemas"]
    line1 = schemas["AddressInput"]["properties"]["line1"]
    delta = schemas["StockAdjustment"]["properties"]["delta"]

    # Controls and bidi overrides; the zero-width space, the word joiner, the BOM and the line
    # separators too (not the non-joiner and joiner, which Persian and Indic names are spelt with).
    assert line1["pattern"] == "^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff\u2028\u2029]*$"
    # What is read back may hold one stored before it was refused: shown, as U+FFFD.
    stored_line1 = schemas["Address"]["properties"]["line1"]
    assert stored_line1["pattern"] == "^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
    # A product's attribute values are held to the same rule as sent and as answered: a stored one
    # is answered with each refused character shown as U+FFFD.
    for product in ("ProductInput", "Product"):
        (value,) = schemas[product]["properties"]["attributes"]["patternProperties"].values()
        assert (value["pattern"], value["maxLength"]) == (line1["pattern"], 500), product
    assert schemas["PlaceOrder"]["properties"]["customer"]["$ref"].endswith("/CustomerInput")
    assert (line1["minLength"], line1["maxLength"]) == (1, 200)
    assert "USPS" in schemas["AddressInput"]["description"]
    assert delta["not"] == {"const": 0}
    assert (delta["minimum"], delta["maximum"]) == (-1_000_000_000, 1_000_000_000)


def test_a_key_s_location_binding_is_described_as_sent_and_as_shown(document: dict[str, Any]):
    schemas = document["components"]["schemas"]
    (sent, _) = schemas["NewApiKey"]["properties"]["location_ids"]["anyOf"]

    assert (sent["minItems"], sent["maxItems"], sent["uniqueItems"]) == (1, 50, True)
    assert sent["items"]["pattern"] == IDENTIFIER_PATTERN
    description = schemas["NewApiKey"]["properties"]["location_ids"]["description"]
    assert "403" in description
    # Every place the README's Location binding refuses a bound key, named where a client reads the field:
    # not only stock and parcels, but a store's pickup list, a location's own record and a carrier's report.
    for refused in ("stock", "parcel", "purchase order", "return", "pickup list", "PUT /locations", "tracking"):
        assert refused in description, refused
    for shown in ("ApiKey", "IssuedApiKey"):
        assert "location_ids" in schemas[shown]["required"], shown
        assert {"type": "null"} in schemas[shown]["properties"]["location_ids"]["anyOf"], shown


@pytest.mark.parametrize(
    ("method", "path"),
    [("PATCH", "/orders/{order_id}"), ("POST", "/orders/{order_id}/cancel"),
     ("POST", "/orders/{order_id}/shipments/{shipment_id}/reject")],
)  # fmt: skip
def test_the_routes_that_refuse_a_parcel_not_confirmed_document_its_409(document: dict[str, Any], method, path):
    # An order held for a person to confirm whether a parcel left answers these 409
    # parcel_not_confirmed (core.errors.ParcelNotConfirmed), which a client must tell from the rest.
    operation = document["paths"][path][method.lower()]
    assert "409" in operation["responses"]
    assert "`parcel_not_confirmed`" in operation["description"]


def test_the_ship_route_documents_its_409_for_another_tracking_number(document: dict[str, Any]):
    # A ship of a shipped parcel naming another tracking number (core.errors.TrackingNumberConflict):
    # a client correcting a typo must be able to tell it from the other 409s.
    operation = document["paths"]["/orders/{order_id}/shipments/{shipment_id}/ship"]["post"]
    assert "409" in operation["responses"]
    assert "`tracking_number_conflict`" in operation["description"]


# API.md's shapes from "Bulk import" to "Sourcing rules and what-if", as (method, path, status, the
# fields walked into from the answer): the fields the contract lists there. Every answer has them
# all (an unset one as null), so the document marks each required: a client generated from it would
# otherwise be told that `next_cursor`, `received_quantity` or `last_error` may be missing.
PAGE = {"items", "next_cursor"}
PURCHASE_ORDER = {"id", "vendor_id", "location_id", "status", "lines", "expected_at", "created_at"}
PO_LINE = {"sku", "quantity", "received_quantity", "unit_cost"}
CONTRACT_SHAPES: dict[tuple[str, ...], set[str]] = {
    ("GET", "/imports/{import_id}", "200"): {
        "id", "source", "status", "total", "imported", "duplicates", "failed", "errors",
    },
    ("GET", "/imports/{import_id}", "200", "errors"): {"line", "external_id", "code", "message"},
    ("GET", "/imports", "200"): PAGE,
    ("POST", "/webhooks", "201"): {"id", "url", "events", "channel", "secret"},
    ("GET", "/webhooks", "200"): PAGE,
    ("GET", "/webhooks/{webhook_id}", "200"): {"id", "url", "events", "channel"},
    ("GET", "/webhooks/{webhook_id}/deliveries", "200"): PAGE,
    ("GET", "/webhooks/{webhook_id}/deliveries", "200", "items"): {
        "id", "event_id", "event_type", "status", "attempts", "last_status_code", "last_error", "next_attempt_at",
    },
    ("GET", "/customers/{customer_id}", "200"): {
        "id", "email", "name", "orders_count", "first_order_at", "last_order_at", "totals", "returns_count",
        "payment_failures",
    },
    ("GET", "/customers/{customer_id}", "200", "totals"): {"currency", "ordered", "refunded"},
    ("GET", "/customers", "200"): PAGE,
    ("GET", "/reports/top-products", "200", "items"): {"sku", "units", "revenue"},
    ("GET", "/reports/top-customers", "200", "items"): {"customer_id", "orders", "revenue"},
    ("GET", "/reports/top-regions", "200", "items"): {"country", "region", "orders", "revenue"},
    ("GET", "/orders/{order_id}/access-log", "200"): PAGE,
    ("GET", "/orders/{order_id}/access-log", "200", "items"): {"at", "actor", "action", "detail"},
    ("GET", "/vendors", "200"): PAGE,
    ("POST", "/purchase-orders", "201"): PURCHASE_ORDER,
    ("POST", "/purchase-orders", "201", "lines"): PO_LINE,
    ("POST", "/purchase-orders/{po_id}/receive", "200"): PURCHASE_ORDER,
    ("GET", "/purchase-orders", "200"): PAGE,
    ("GET", "/purchase-orders", "200", "items", "lines"): PO_LINE,
    ("GET", "/inventory/{sku}", "200", "locations"): {"location_id", "incoming", "next_expected_at"},
    ("GET", "/sourcing/rules", "200"): {"version", "max_shipments", "excluded_locations", "safety_stock", "prefer"},
    ("POST", "/sourcing/simulate", "200"): {"items", "summary"},
    ("POST", "/sourcing/simulate", "200", "items"): {"order_id", "shipments", "unfillable", "reasons"},
    ("POST", "/sourcing/simulate", "200", "items", "shipments"): {"location_id", "lines", "distance_km"},
    ("POST", "/sourcing/simulate", "200", "items", "shipments", "lines"): {"line_id", "sku", "quantity"},
    ("POST", "/sourcing/simulate", "200", "items", "unfillable"): {"line_id", "sku", "quantity"},
    ("POST", "/sourcing/simulate", "200", "summary"): {"orders", "shipments", "unfillable_units", "mean_distance_km"},
}  # fmt: skip

# The same from "Access" to "Payments for tests" (h362). An order's change answers an Order or an
# OrderReceipt: the Order is the one of POST and GET /orders/{id}, pinned here.
ORDER = {
    "id",
    "status",
    "channel",
    "external_id",
    "currency",
    "customer",
    "lines",
    "shipping_address",
    "fulfillment",
    "shipping_method",
    "hold",
    "jeopardy",
    "totals",
    "payment",
    "allocations",
    "shipments",
    "created_at",
    "updated_at",
    "version",
}
ORDER_LINE = {
    "line_id",
    "sku",
    "quantity",
    "unit_price",
    "discount",
    "tax",
    "total",
    "cancelled_quantity",
    "shipped_quantity",
    "returned_quantity",
}
ADDRESS = {"name", "line1", "line2", "city", "region", "postal_code", "country", "latitude", "longitude"}
SHIPMENT = {
    "id",
    "location_id",
    "lines",
    "carrier",
    "service",
    "tracking_number",
    "label_url",
    "status",
    "shipped_at",
    "delivered_at",
}
RETURN = {
    "id",
    "order_id",
    "status",
    "lines",
    "refund",
    "fee",
    "label_url",
    "exchange_order_id",
    "created_at",
    "updated_at",
}
RETURN_LINE = {"line_id", "quantity", "reason", "reason_code", "received_quantity", "condition"}
REFUND = {"id", "order_id", "amount", "reason", "status", "created_at"}
PRODUCT = {"sku", "name", "price", "weight_grams", "tax_code", "allow_backorder"}
LOCATION = {"location_id", "name", "type", "address", "latitude", "longitude", "ships", "pickup"}
CONTRACT_SHAPES |= {
    ("POST", "/api-keys", "201"): {"id", "name", "scopes", "channel", "key"},
    ("GET", "/api-keys", "200"): PAGE,
    ("GET", "/api-keys", "200", "items"): {"id", "name", "scopes", "channel"},
    ("PUT", "/products/{sku}", "201"): PRODUCT,
    ("PUT", "/products/{sku}", "200"): PRODUCT,
    ("GET", "/products/{sku}", "200"): PRODUCT,
    ("PUT", "/locations/{location_id}", "201"): LOCATION,
    ("PUT", "/locations/{location_id}", "200", "address"): ADDRESS,
    ("GET", "/locations", "200"): PAGE,
    ("GET", "/locations", "200", "items"): LOCATION,
    ("GET", "/inventory/{sku}", "200"): {"sku", "available", "locations"},
    ("GET", "/inventory/{sku}", "200", "locations"): {"location_id", "on_hand", "reserved", "available"},
    ("POST", "/orders", "201"): ORDER,
    ("GET", "/orders/{order_id}", "200"): ORDER,
    ("GET", "/orders/{order_id}", "200", "customer"): {"id", "email", "name"},
    ("GET", "/orders/{order_id}", "200", "lines"): ORDER_LINE,
    ("GET", "/orders/{order_id}", "200", "shipping_address"): ADDRESS,
    ("GET", "/orders/{order_id}", "200", "hold"): {"reason", "note", "since"},
    ("GET", "/orders/{order_id}", "200", "fulfillment"): {"type", "location_id"},
    ("GET", "/orders/{order_id}", "200", "totals"): {"subtotal", "discount", "shipping", "tax", "grand_total"},
    ("GET", "/orders/{order_id}", "200", "payment"): {"method", "status", "authorized", "captured", "refunded"},
    ("GET", "/orders/{order_id}", "200", "allocations"): {"line_id", "location_id", "quantity"},
    ("GET", "/orders/{order_id}", "200", "shipments"): SHIPMENT,
    ("GET", "/orders/{order_id}", "200", "shipments", "lines"): {"line_id", "quantity"},
    ("GET", "/orders", "200"): PAGE,
    ("GET", "/orders", "200", "items"): ORDER,
    ("GET", "/orders/{order_id}/history", "200"): PAGE,
    ("GET", "/orders/{order_id}/history", "200", "items"): {
        "at", "type", "from_status", "to_status", "actor", "detail",
    },
    ("POST", "/orders/{order_id}/returns", "201"): RETURN,
    ("POST", "/orders/{order_id}/returns", "201", "lines"): RETURN_LINE,
    ("GET", "/returns/{return_id}", "200"): RETURN,
    ("POST", "/returns/{return_id}/receive", "200"): RETURN,
    ("POST", "/returns/{return_id}/receive", "202"): RETURN,
    ("GET", "/returns", "200"): PAGE,
    ("GET", "/orders/{order_id}/returns", "200"): PAGE,
    ("GET", "/orders/{order_id}/returns", "200", "items", "lines"): RETURN_LINE,
    ("POST", "/orders/{order_id}/refunds", "201"): REFUND,
    ("GET", "/orders/{order_id}/refunds", "200"): PAGE,
    ("GET", "/orders/{order_id}/refunds", "200", "items"): REFUND,
}  # fmt: skip


def _object_schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The object `schema` stands for: through a $ref, an array's items, or the one non-null choice."""
    while True:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif schema.get("type") == "array":
            schema = schema["items"]
        elif "anyOf" in schema:
            (schema,) = [choice for choice in schema["anyOf"] if choice.get("type") != "null"]
        else:
            return schema


def _answered_object(document: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    """The object an answer holds at `where`: (method, path, status, then property names into it)."""
    method, path, status, *into = where
    answer = document["paths"][path][method.lower()]["responses"][status]["content"]["application/json"]
    schema = _object_schema(document, answer["schema"])
    for name in into:
        schema = _object_schema(document, schema["properties"][name])
    return schema


@pytest.mark.parametrize("where", list(CONTRACT_SHAPES), ids=" ".join)
def test_every_field_the_contract_lists_is_documented_and_required_in_the_answer(
    document: dict[str, Any], where: tuple[str, ...]
):
    schema = _answered_object(document, where)
    listed = CONTRACT_SHAPES[where]
    assert listed <= set(schema["properties"]), listed - set(schema["properties"])
    assert listed <= set(schema.get("required", [])), listed - set(schema.get("required", []))


@pytest.mark.parametrize(
    "where",
    [("GET", "/purchase-orders/{po_id}", "200"), ("GET", "/purchase-orders", "200", "items"),
     ("POST", "/purchase-orders/{po_id}/receive", "200")],
    ids=" ".join,
)  # fmt: skip
def test_a_purchase_order_documents_each_receipt_with_its_time_and_when_it_last_changed(
    document: dict[str, Any], where: tuple[str, ...]
):
    # An extension of API.md's PurchaseOrder (README, Purchasing): an ERP books a goods-received
    # note per receipt, dated, from these.
    po = _answered_object(document, where)
    receipt = _object_schema(document, po["properties"]["receipts"])
    line = _object_schema(document, receipt["properties"]["lines"])

    assert {"receipts", "updated_at"} <= set(po["required"])
    assert "oldest first" in po["properties"]["receipts"]["description"]
    assert "last changed" in po["properties"]["updated_at"]["description"]
    assert set(receipt["required"]) == {"received_at", "lines"} and set(line["required"]) == {"sku", "quantity"}
    assert "null for one counted before" in receipt["properties"]["received_at"]["description"]


def _answer_schemas(document: dict[str, Any]) -> dict[str, str]:
    """Each schema an answer (a 2xx) holds, however deep, by name: the first answer found holding it."""
    schemas = document["components"]["schemas"]
    found: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node and (name := node["$ref"].rsplit("/", 1)[1]) not in found:
                found[name] = where
                walk(schemas[name], where)
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                walk(response.get("content", {}), f"{method} {path} {status}")
    return found


def test_every_field_of_every_answer_is_required_as_every_answer_carries_it(document: dict[str, Any]):
    # The contract's shapes above are what API.md names; this holds the fields it leaves to us too
    # (Order.awaiting_stock, Return.carrier, Shipment.ready_at): each answer carries every field, an
    # unset one as null (core.models.Shown), so none may be documented as one a client can miss.
    schemas = document["components"]["schemas"]
    optional = {
        (name, where): sorted(set(schemas[name].get("properties", {})) - set(schemas[name].get("required", [])))
        for name, where in _answer_schemas(document).items()
    }

    assert {shape: fields for shape, fields in optional.items() if fields} == {}


def test_no_schema_is_split_into_a_request_s_and_an_answer_s(document: dict[str, Any]):
    # powertools documents request bodies in validation mode and answers in serialization mode; a
    # model documented differently in the two gets two names, and clients generated before see
    # their `Order`, `Address` or `Fulfillment` type renamed.
    names = set(document["components"]["schemas"])

    assert [name for name in names if name.endswith(("-Input", "-Output"))] == []
    sent_and_shown = {"Address", "AddressInput", "Customer", "CustomerInput", "Fulfillment", "FulfillmentInput"}
    assert sent_and_shown | {"Product", "Location"} <= names


def test_a_body_s_fulfillment_is_its_own_schema_whose_fields_a_client_may_leave_out(document: dict[str, Any]):
    # An order's `fulfillment` always shows both fields (the every-answer test above); the body of
    # POST /orders, of an import line and of a simulation may leave out either (API.md: `fulfillment?:
    # {type, location_id?}`, `type` ship by default), or send it as null, as it may any optional
    # field (tests/unit/test_null_as_left_out.py), so it is documented by a request model of its own.
    schemas = document["components"]["schemas"]
    (sent, null) = schemas["PlaceOrder"]["properties"]["fulfillment"]["anyOf"]
    shown = schemas["Order"]["properties"]["fulfillment"]

    assert (sent["$ref"].rsplit("/", 1)[1], shown["$ref"].rsplit("/", 1)[1]) == ("FulfillmentInput", "Fulfillment")
    assert null == {"type": "null"}
    assert "fulfillment" not in schemas["PlaceOrder"].get("required", [])
    assert set(schemas["FulfillmentInput"]["properties"]) == {"type", "location_id"}
    assert "required" not in schemas["FulfillmentInput"]
    assert schemas["FulfillmentInput"]["properties"]["type"]["default"] == "ship"
    assert schemas["Fulfillment"]["required"] == ["type", "location_id"]


# The API's own answers an event's data carries (never a copy of their schemas).
SHOWN_AS = {"order": "Order", "shipment": "Shipment", "return": "Return", "refund": "Refund", "import": "ImportReport"}


def test_every_event_type_is_a_webhook_a_subscriber_can_generate_its_body_from(document: dict[str, Any]):
    # An events consumer's walk (h728): the document named the types (EventType) and nothing of what
    # the OMS POSTs, so no client could be generated for a receiver. Each type is a webhook: its body
    # the envelope of its data's kind (a component, the API's own Order, Shipment... by $ref), the
    # three headers, and what the receiver answers.
    from core.domain_events import EVENT_DATA, OMITTABLE, EventType, event_id
    from core.webhooks import signature

    webhooks = document["webhooks"]
    schemas = document["components"]["schemas"]

    assert set(webhooks) == {type_.value for type_ in EventType}
    for type_, objects in EVENT_DATA.items():
        post = webhooks[type_.value]["post"]
        envelope = schemas[post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert type_.value in envelope["properties"]["type"]["enum"]
        assert post["requestBody"]["required"] is True
        assert envelope["required"] == ["id", "type", "created_at", "data"]
        assert envelope["additionalProperties"] is False
        assert envelope["properties"]["created_at"] == {"type": "string", "format": "date-time"}
        data = schemas[envelope["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
        assert data["required"] == list(objects) and data["additionalProperties"] is False
        # An event too large whole leaves lists of its order out and names them (fitted): only one with an order.
        omitted = data["properties"].get("omitted", {}).get("items", {}).get("enum")
        assert omitted == ([".".join(path) for path in OMITTABLE] if "order" in objects else None), type_
        for name in set(objects) & set(SHOWN_AS):
            assert data["properties"][name] == {"$ref": f"#/components/schemas/{SHOWN_AS[name]}"}, (type_, name)
        headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
        assert set(headers) == {"OMS-Event-Id", "OMS-Event-Type", "OMS-Signature"}
        assert all(header["required"] for header in headers.values())
        assert headers["OMS-Event-Type"]["schema"] == {"type": "string", "const": type_.value}
        assert re.fullmatch(headers["OMS-Signature"]["schema"]["pattern"], signature("whsec_1", 1_765_000_000, b"{}"))
        assert re.fullmatch(headers["OMS-Event-Id"]["schema"]["pattern"] + ".*", event_id("ord_1", 2, type_))
        assert "2XX" in post["responses"] and "10 s" in post["responses"]["2XX"]["description"]
        assert post["security"] == []  # the receiver takes no API key of ours: it checks the signature


def test_an_event_s_data_is_a_schema_named_for_its_kind_so_a_receiver_s_models_are_too(document: dict[str, Any]):
    # An inline `data` made datamodel-codegen name the classes Data, Data1, Data2... by their order
    # in the document: a receiver could not tell a shipment's from a return's, and an added kind renamed them.
    schemas = document["components"]["schemas"]
    kinds = ["Order", "Shipment", "Return", "Refund", "Import", "Inventory"]

    assert {kind: schemas[f"{kind}EventBody"]["properties"]["data"] for kind in kinds} == {
        kind: {"$ref": f"#/components/schemas/{kind}EventData"} for kind in kinds
    }
    assert schemas["ShipmentEventData"]["required"] == ["order", "shipment"]
    assert schemas["ShipmentEventData"]["properties"]["shipment"] == {"$ref": "#/components/schemas/Shipment"}


def test_inventory_low_is_described_with_every_field_always_there_and_available_never_negative(
    document: dict[str, Any],
):
    # A buyer's tool generated from the document reads each field of data.inventory unguarded, and
    # never a negative count: the event shows a stock take recorded below the reserved units as 0.
    webhook = document["webhooks"]["inventory.low"]["post"]
    schemas = document["components"]["schemas"]
    envelope = schemas[webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    data = schemas[envelope["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
    assert data["properties"]["inventory"] == {"$ref": "#/components/schemas/LowStock"}
    low = schemas["LowStock"]

    assert low["required"] == ["sku", "location_id", "available", "reorder_point"]
    assert low["properties"]["available"]["minimum"] == 0
    assert {name: field["type"] for name, field in low["properties"].items()} == {
        "sku": "string", "location_id": "string", "available": "integer", "reorder_point": "integer"
    }  # fmt: skip
