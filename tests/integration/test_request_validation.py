"""Bad input gets the contract's status and error shape, and nothing is written (through the
in-process gateway, tests/integration/in_process.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.local.gateway import HttpRequest
from tests.e2e.client import Catalog, address, assert_error, money, order_body, set_path, unique
from tests.integration.in_process import Answer, InProcessApi


@pytest.fixture
def sku(catalog: Catalog) -> str:
    (created,) = catalog.stocked("19.99", on_hand=10)
    return created


def assert_no_orders(api: InProcessApi, body: dict) -> None:
    assert api.orders_of(body["customer"]["id"]) == [], "a refused request stored an order"


# --- Malformed JSON and bodies the contract refuses whole ---------------------------------------


@pytest.mark.parametrize(
    "mangle",
    [lambda text: text[:-1], lambda text: text[:-1] + ",}", lambda text: text.replace('"', "'")],
    ids=["truncated", "trailing-comma", "single-quotes"],
)
def test_malformed_json_is_400_malformed_json(api: InProcessApi, sku: str, mangle):
    body = order_body((sku, 1))

    response = api.post("/orders", data=mangle(json.dumps(body)), headers={"Content-Type": "application/json"})

    assert_error(response, 400, "malformed_json")
    assert_no_orders(api, body)


def test_a_body_over_256_kib_is_413_payload_too_large(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    text = json.dumps(body)
    padded = text[:-1] + " " * (256 * 1024) + "}"  # still a valid order, just too big

    response = api.post("/orders", data=padded, headers={"Content-Type": "application/json"})

    assert_error(response, 413, "payload_too_large")
    assert_no_orders(api, body)


def test_a_body_over_256_kib_is_413_even_when_it_would_also_fail_validation(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    body["customer"]["name"] = "x" * (300 * 1024)

    response = api.post("/orders", json=body)

    assert_error(response, 413, "payload_too_large")
    assert_no_orders(api, body)


def test_a_body_just_under_256_kib_is_not_refused_for_its_size(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    text = json.dumps(body)
    padded = text[:-1] + " " * (256 * 1024 - len(text.encode()) - 64) + "}"

    response = api.post("/orders", data=padded, headers={"Content-Type": "application/json"})

    assert response.status_code == 201, response.text


def test_a_card_number_anywhere_in_a_body_is_422_and_never_stored(api: InProcessApi, sku: str):
    body = order_body((sku, 1), payment={"method": "test", "token": "4111 1111 1111 1111"})

    response = api.post("/orders", json=body)

    assert_error(response, 422, None, "payment.token")
    assert "4111" not in response.text  # the error names the field, never echoes the number
    assert_no_orders(api, body)


def test_a_body_sent_as_text_plain_is_refused_with_a_4xx_not_a_500(api: InProcessApi, sku: str):
    body = order_body((sku, 1))

    response = api.post("/orders", data=json.dumps(body), headers={"Content-Type": "text/plain"})

    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code)
    assert_no_orders(api, body)


def test_a_body_that_is_not_utf8_is_400_malformed_json(api: InProcessApi):
    response = api.post("/orders", data=b'{"channel": "\xff\xfe"}', headers={"Content-Type": "application/json"})

    assert_error(response, 400, "malformed_json")


def test_a_body_that_starts_with_a_byte_order_mark_is_400_saying_so(api: InProcessApi, sku: str):
    # Windows tools (PowerShell's Set-Content -Encoding UTF8, Notepad) write UTF-8 with a BOM: the
    # JSON after it is fine, so "not valid JSON" sent the sender looking for a mistake in it.
    body = order_body((sku, 1))

    response = api.post(
        "/orders", data=b"\xef\xbb\xbf" + json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )

    error = assert_error(response, 400, "malformed_json")
    assert "byte order mark" in error["message"], error
    assert_no_orders(api, body)


# --- Fields the server computes or does not know ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "ord_aaaaaaaaaaaaaaaaaaaaaaaa"),
        ("status", "shipped"),
        ("totals", {"grand_total": money("0.01")}),
        ("grand_total", money("0.01")),
        ("discount", money("1.00")),
        ("tax", money("0.00")),
        ("lines[0].price", "1.00"),
        ("lines[0].unit_price", money("0.01")),
        ("lines[0].discount", money("19.99")),
        ("lines[0].tax", money("0.00")),
        ("lines[0].total", money("0.01")),
        ("payment.status", "captured"),
        ("customer.vip", True),
        ("shipping_address.phone", "+1 555 0100"),
    ],
)
def test_an_unknown_or_server_computed_field_is_422_naming_it(api: InProcessApi, sku: str, field: str, value: Any):
    body = set_path(order_body((sku, 1)), field, value)

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", field)
    assert_no_orders(api, body)


# --- Money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "field"),
    [
        ({"amount": 19.99, "currency": "USD"}, "price.amount"),
        ({"amount": "19.999", "currency": "USD"}, "price"),
        ({"amount": "1e3", "currency": "USD"}, "price.amount"),
        ({"amount": "19.99", "currency": "XXX"}, "price.currency"),
        ({"amount": "19.99", "currency": "usd"}, "price.currency"),
        ({"amount": "1234.5", "currency": "JPY"}, "price"),
    ],
    ids=["float", "three-decimals", "exponent", "unknown-currency", "lower-case-currency", "jpy-with-decimals"],
)
def test_put_product_refuses_a_price_that_is_not_an_exact_decimal_string_in_a_known_currency(
    api: InProcessApi, price: dict, field: str
):
    sku = unique("SKU").upper()

    response = api.put(f"/products/{sku}", json={"name": "Mug", "price": price})

    error = assert_error(response, 422, "validation_error")
    assert any(detail["field"].startswith(field) for detail in error["details"]), error
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")


def test_put_product_refuses_an_integer_json_number_as_the_amount(api: InProcessApi):
    sku = unique("SKU").upper()

    response = api.put(f"/products/{sku}", json={"name": "Mug", "price": {"amount": 20, "currency": "USD"}})

    assert_error(response, 422, "validation_error", "price.amount")


def test_put_product_refuses_a_negative_price(api: InProcessApi):
    sku = unique("SKU").upper()

    response = api.put(f"/products/{sku}", json={"name": "Mug", "price": money("-1.00")})

    assert_error(response, 422, "validation_error")
    assert_error(api.get(f"/products/{sku}"), 404, "not_found")


@pytest.mark.parametrize("currency", ["XXX", "usd", "US"])
def test_an_order_in_an_unknown_currency_is_422_naming_currency(api: InProcessApi, sku: str, currency: str):
    body = order_body((sku, 1), currency=currency)

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", "currency")
    assert_no_orders(api, body)


@pytest.mark.parametrize("token", ["", "   ", "tok\x00", "tok approve", "tok\u00e9", "t" * 257], ids=repr)
def test_a_payment_token_that_is_blank_or_not_printable_ascii_is_422_naming_it(api: InProcessApi, sku: str, token: str):
    body = order_body((sku, 1))
    body["payment"]["token"] = token

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", "payment.token")
    assert_no_orders(api, body)


@pytest.mark.parametrize(("sent", "missing"), [("latitude", "longitude"), ("longitude", "latitude")])
def test_an_address_with_one_coordinate_is_422_naming_the_other(api: InProcessApi, sku: str, sent: str, missing: str):
    body = order_body((sku, 1))
    body["shipping_address"][sent] = 37.7

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", f"shipping_address.{missing}")
    assert_no_orders(api, body)


# --- Lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [0, -1, "2", 1.5, True, None, 10_001], ids=repr)
def test_a_quantity_that_is_not_a_positive_integer_is_422_naming_the_line(api: InProcessApi, sku: str, quantity: Any):
    body = order_body((sku, 1))
    body["lines"][0]["quantity"] = quantity

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", "lines[0].quantity")
    assert_no_orders(api, body)


def test_an_order_without_lines_is_422_naming_lines(api: InProcessApi):
    body = order_body()

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", "lines")
    assert_no_orders(api, body)


def test_an_unknown_sku_is_422_unknown_sku_naming_that_line(api: InProcessApi, sku: str):
    body = order_body((sku, 1), (unique("NOPE").upper(), 1))

    response = api.post("/orders", json=body)

    error = assert_error(response, 422, "unknown_sku", "lines[1].sku")
    assert "lines[0].sku" not in [detail["field"] for detail in error["details"]]
    assert_no_orders(api, body)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/products/ERP-1%20", {"name": "Pin", "price": money("1.00")}, "sku"),
        ("POST", "/orders", "order", "lines[0].sku"),
        ("GET", "/orders", None, "customer_id"),
    ],
    ids=["product-path", "order-line", "order-filter"],
)
def test_a_sku_or_id_with_a_trailing_space_is_422_saying_so_not_quoting_a_pattern(
    api: InProcessApi, sku: str, method: str, path: str, body: Any, field: str
):
    # An ERP's fixed-width export pads its skus: the answer quoted the regular expression
    # ^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$, which its developer had to decode to find the space.
    if body == "order":
        body = order_body((sku + " ", 1))

    sent = {"params": {"customer_id": "cus_1 "}} if body is None else {"json": body}
    response = api.request(method, path, **sent)

    error = assert_error(response, 422, "validation_error", field)
    [message] = [detail["message"] for detail in error["details"] if detail["field"] == field]
    assert message == (
        "has white space before or after it: "
        "an id is 1 to 128 letters, digits and . _ : / -, the first a letter or digit"
    )


def test_a_stock_take_of_a_padded_sku_is_404_saying_the_sku_has_white_space(api: InProcessApi, sku: str):
    # It answered "no product ERP-1 ", the space invisible: the ERP's developer read "no product
    # ERP-1" and looked for a product that was there.
    response = api.put(f"/inventory/{sku}%20/wh-1", json={"on_hand": 5})

    error = assert_error(response, 404, "not_found")
    assert error["message"] == f"no product {sku} : it has white space before or after it"


def test_an_unknown_promo_code_is_422_unknown_promo_code(api: InProcessApi, sku: str):
    body = order_body((sku, 1), promo_codes=["WELCOME10", "NOT-A-PROMO"])

    response = api.post("/orders", json=body)

    assert_error(response, 422, "unknown_promo_code", "promo_codes[1]")
    assert_no_orders(api, body)


@pytest.mark.parametrize("country", ["USA", "us", "XX", ""])
def test_a_country_that_is_not_iso_alpha2_upper_case_is_422(api: InProcessApi, sku: str, country: str):
    body = order_body((sku, 1), shipping_address=address(country=country))

    response = api.post("/orders", json=body)

    assert_error(response, 422, "validation_error", "shipping_address.country")
    assert_no_orders(api, body)


def test_an_unknown_shipping_method_is_422_unknown_shipping_method(api: InProcessApi, sku: str):
    body = order_body((sku, 1), shipping_method="teleport")

    response = api.post("/orders", json=body)

    assert_error(response, 422, "unknown_shipping_method", "shipping_method")
    assert_no_orders(api, body)


# --- Stock and fulfilment ----------------------------------------------------------------------


def test_more_units_than_in_stock_is_409_insufficient_stock_and_reserves_nothing(api: InProcessApi, sku: str):
    before = api.get(f"/inventory/{sku}").json()
    body = order_body((sku, 11))

    response = api.post("/orders", json=body)

    assert_error(response, 409, "insufficient_stock", "lines[0].quantity")
    assert_no_orders(api, body)
    assert api.get(f"/inventory/{sku}").json() == before


def test_pickup_at_a_location_that_does_not_offer_pickup_is_422(api: InProcessApi, catalog: Catalog, sku: str):
    warehouse = catalog.location(pickup=False)
    catalog.stock(sku, warehouse, 5)
    body = order_body((sku, 1), fulfillment={"type": "pickup", "location_id": warehouse})

    response = api.post("/orders", json=body)

    assert_error(response, 422, None, "fulfillment.location_id")
    assert_no_orders(api, body)


def test_pickup_at_an_unknown_location_is_422(api: InProcessApi, sku: str):
    body = order_body((sku, 1), fulfillment={"type": "pickup", "location_id": unique("loc")})

    response = api.post("/orders", json=body)

    assert_error(response, 422, None, "fulfillment.location_id")
    assert_no_orders(api, body)


def test_pickup_at_a_pickup_store_with_stock_is_accepted_without_shipping_charge(api: InProcessApi, catalog: Catalog):
    store = catalog.location(type="store", ships=False, pickup=True)
    sku = catalog.product("19.99")
    catalog.stock(sku, store, 2)

    response = api.post("/orders", json=order_body((sku, 1), fulfillment={"type": "pickup", "location_id": store}))

    assert response.status_code == 201, response.text
    assert response.json()["totals"]["shipping"] == money("0.00")


def test_an_order_sending_null_for_each_optional_field_is_placed_as_one_leaving_them_out(api: InProcessApi, sku: str):
    # JSON clients send null for a field they have no value for: promo_codes and fulfillment were 422.
    optional = ["external_id", "fulfillment", "shipping_method", "promo_codes", "customer.name",
                "shipping_address.line2", "shipping_address.region", "shipping_address.latitude",
                "shipping_address.longitude"]  # fmt: skip
    as_null, left_out = order_body((sku, 1)), order_body((sku, 1))
    for field in optional:
        *parents, name = field.split(".")
        null_here, left_out_here = as_null, left_out
        for step in parents:
            null_here, left_out_here = null_here[step], left_out_here[step]
        null_here[name] = None
        left_out_here.pop(name, None)

    placed = [api.post("/orders", json=body) for body in (as_null, left_out)]

    assert [answer.status_code for answer in placed] == [201, 201], [answer.text for answer in placed]
    shown = ["status", "external_id", "shipping_address", "fulfillment", "shipping_method", "totals"]
    with_null, without = ([answer.json()[name] for name in shown] for answer in placed)
    assert with_null == without
    assert with_null[shown.index("fulfillment")] == {"type": "ship", "location_id": None}
    assert [answer.json()["customer"]["name"] for answer in placed] == [None, None]


# --- Reads of unknown ids (malformed ones: tests/integration/test_api_paths.py) -----------------


@pytest.mark.parametrize("suffix", ["", "/history"])
def test_an_unknown_order_id_of_valid_format_is_404_not_found(api: InProcessApi, suffix: str):
    response = api.get(f"/orders/ord_{'a' * 24}{suffix}")

    assert_error(response, 404, "not_found")


# --- A query parameter or header given twice ----------------------------------------------------


def sent(api: InProcessApi, method: str, path: str, query: str = "", headers: tuple[tuple[str, str], ...] = (),
         body: dict | None = None) -> Answer:  # fmt: skip
    """A request whose query string and headers are sent as written, repeats included."""
    content = [("Content-Type", "application/json")] if body is not None else []
    response = api.gateway.handle(
        HttpRequest(
            method=method,
            path=path,
            query_string=query,
            headers=[("Authorization", f"Bearer {api.admin_key}"), *content, *headers],
            body=json.dumps(body).encode() if body is not None else b"",
        )
    )
    return Answer(response.status_code, response.headers, response.get_data())


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/orders", "limit=5&limit=5", "limit"),
        ("/orders", "status=pending&status=allocated", "status"),
        ("/orders", "customer_id=cus_1&customer_id=cus_2", "customer_id"),
        ("/reports/top-products", "currency=USD&currency=EUR", "currency"),
    ],
)
def test_a_query_parameter_given_twice_is_422_saying_so(api: InProcessApi, path: str, query: str, field: str):
    # It was "Input should be a valid integer" for ?limit=5&limit=5, and for ?status=pending&status=
    # allocated a list of the statuses, which both values are.
    response = sent(api, "GET", path, query)

    assert assert_error(response, 422, "validation_error")["details"] == [
        {"field": field, "message": "given 2 times: send it once"}
    ]


def test_a_header_given_twice_is_400_saying_so_and_changes_nothing(api: InProcessApi, sku: str):
    body = order_body((sku, 1))
    placed = sent(api, "POST", "/orders", headers=(("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")), body=body)
    edit = sent(api, "PATCH", f"/orders/ord_{'a' * 24}", headers=(("If-Match", "1"), ("If-Match", "1")),
                body={"shipping_method": "express"})  # fmt: skip

    for response, header in ((placed, "Idempotency-Key"), (edit, "If-Match")):
        assert assert_error(response, 400, "malformed_header")["details"] == [
            {"field": header, "message": "given 2 times: send it once"}
        ]
    assert_no_orders(api, body)


def test_a_header_given_twice_under_names_differing_in_case_is_400_saying_so(api: InProcessApi, sku: str):
    # Header names are case-insensitive (RFC 9110 5.1): Idempotency-Key and idempotency-key are one
    # header sent twice. The resolver read them as one name, the second value silently winning, so
    # such an order was placed under one of two keys nobody could tell apart.
    body = order_body((sku, 1))
    placed = sent(api, "POST", "/orders", headers=(("Idempotency-Key", "k1"), ("idempotency-key", "k2")), body=body)
    edit = sent(api, "PATCH", f"/orders/ord_{'a' * 24}", headers=(("If-Match", "1"), ("IF-MATCH", "2")),
                body={"shipping_method": "express"})  # fmt: skip

    for response, header in ((placed, "Idempotency-Key"), (edit, "If-Match")):
        assert assert_error(response, 400, "malformed_header")["details"] == [
            {"field": header, "message": "given 2 times: send it once"}
        ]
    assert_no_orders(api, body)


@pytest.mark.parametrize(("before", "after"), [("", " "), (" ", ""), ("\t", "\t")], ids=["trailing", "leading", "tabs"])
def test_the_whitespace_around_a_header_value_is_not_part_of_it(api: InProcessApi, sku: str, before: str, after: str):
    # RFC 9110 5.5: a field value has no leading or trailing whitespace, and a parser excludes it.
    # `If-Match: 1 ` and `Idempotency-Key: k ` were 400 malformed_header, the same values bare accepted.
    body = order_body((sku, 1))
    key = unique("key")
    placed = sent(api, "POST", "/orders", headers=(("Idempotency-Key", f"{before}{key}{after}"),), body=body)
    assert placed.status_code == 201, placed.text
    again = sent(api, "POST", "/orders", headers=(("Idempotency-Key", key),), body=body)
    assert (again.status_code, again.json()["id"]) == (201, placed.json()["id"])

    order = placed.json()
    edited = sent(api, "PATCH", f"/orders/{order['id']}", headers=(("If-Match", f"{before}{order['version']}{after}"),),
                  body={"shipping_method": "express"})  # fmt: skip

    assert edited.status_code == 200, edited.text
    assert edited.json()["shipping_method"] == "express"
