"""No body makes a 5xx (issue 11 item 2): nesting, media types, huge numbers and amounts, a top
level that is not an object and duplicate keys each answer 400/413/415/422 in the contract's
shape, through the in-process gateway in front of the real authorizer and API handler."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api
from tests.properties import at_length

SKU = "HOSTILE-1"  # priced just under 10^15
CHEAP = "HOSTILE-CHEAP"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        put = started.put(
            f"/products/{SKU}",
            json={"name": "Gold bar", "price": {"amount": "999999999999999.00", "currency": "USD"}, "weight_grams": 1},
        )
        assert put.status_code == 201, put.text
        cheap = started.put(f"/products/{CHEAP}", json={"name": "Pin", "price": {"amount": "1.00", "currency": "USD"}})
        assert cheap.status_code == 201, cheap.text
        location = {
            "name": "East",
            "type": "warehouse",
            "address": {
                "name": "East",
                "line1": "1 Main St",
                "city": "Newark",
                "region": "NJ",
                "postal_code": "07102",
                "country": "US",
            },
            "latitude": 40.73,
            "longitude": -74.17,
            "ships": True,
            "pickup": False,
        }
        assert started.put("/locations/wh-hostile", json=location).status_code == 201
        for sku in (SKU, CHEAP):
            assert started.put(f"/inventory/{sku}/wh-hostile", json={"on_hand": 1000}).status_code == 200
        yield started


def order(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "channel": "web",
        "external_id": "hostile-1",
        "currency": "USD",
        "customer": {"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace"},
        "lines": [{"sku": CHEAP, "quantity": 1}],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Main St",
            "city": "San Francisco",
            "region": "CA",
            "postal_code": "94105",
            "country": "US",
        },
        "payment": {"method": "test", "token": "tok_approve"},
    }
    body.update(overrides)
    return body


def post_raw(api: InProcessApi, path: str, data: str, content_type: str = "application/json"):
    return api.post(path, data=data, headers={"Content-Type": content_type})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_a_deeply_nested_body_is_400(api: InProcessApi, depth: int):
    body = json.dumps(order())[:-1] + ', "notes": ' + nested(depth) + "}"

    error = assert_error(post_raw(api, "/orders", body), 400, "malformed_json")

    assert "64" in error["message"]


def test_nesting_up_to_the_bound_is_parsed_and_then_validated(api: InProcessApi):
    body = json.dumps(order())[:-1] + ', "notes": ' + nested(62) + "}"

    assert_error(post_raw(api, "/orders", body), 422, "validation_error", "notes")


@pytest.mark.parametrize("digits", [101, 5_000, 100_000])
def test_an_integer_of_thousands_of_digits_is_400(api: InProcessApi, digits: int):
    body = json.dumps(order()).replace('"quantity": 1', '"quantity": ' + "9" * digits)

    assert_error(post_raw(api, "/orders", body), 400, "malformed_json")


@pytest.mark.parametrize("number", ["1e309", "-1e400"])
def test_a_number_past_what_a_float_holds_is_400_as_a_huge_integer_is(api: InProcessApi, number: str):
    body = json.dumps(order()).replace('"quantity": 1', '"quantity": ' + number)

    error = assert_error(post_raw(api, "/orders", body), 400, "malformed_json")

    assert "too large" in error["message"]


def test_a_product_name_with_an_unescaped_quote_is_400_naming_where_the_json_breaks(api: InProcessApi):
    # An ERP writing JSON by hand left a 12" pipe's quote unescaped: "not valid JSON" alone sent its
    # developer through the whole body; the position (never the text: it may hold card data) says where.
    body = '{"name": "Pipe 12" steel", "price": {"amount": "2.00", "currency": "USD"}}'

    error = assert_error(
        api.put(f"/products/{CHEAP}", data=body, headers={"Content-Type": "application/json"}), 400, "malformed_json"
    )

    assert error["message"] == f"the request body is not valid JSON from character {body.index('steel') + 1}"


def test_a_top_level_array_is_400_not_its_first_element(api: InProcessApi):
    body = json.dumps([order(), order(external_id="hostile-2")])

    assert_error(post_raw(api, "/orders", body), 400, "malformed_json")
    assert api.get("/orders", params={"customer_id": "cus_1"}).json()["items"] == []


@pytest.mark.parametrize("top", ['"a string"', "42", "null", "true"])
def test_any_top_level_that_is_not_an_object_is_400(api: InProcessApi, top: str):
    assert_error(post_raw(api, "/orders", top), 400, "malformed_json")


def test_duplicate_keys_are_400_not_last_wins(api: InProcessApi):
    body = json.dumps(order())[:-1] + ', "channel": "pos"}'

    error = assert_error(post_raw(api, "/orders", body), 400, "malformed_json")

    assert "channel" in error["message"]


def test_duplicate_keys_deep_inside_are_400(api: InProcessApi):
    body = json.dumps(order()).replace('"quantity": 1', '"quantity": 1, "quantity": 2')

    assert_error(post_raw(api, "/orders", body), 400, "malformed_json")


@pytest.mark.parametrize(
    "content_type",
    ["application/vnd.api+json", "application/merge-patch+json", "application/problem+json; charset=utf-8"],
)
def test_a_json_media_type_other_than_application_json_is_415(api: InProcessApi, content_type: str):
    error = assert_error(post_raw(api, "/orders", json.dumps(order()), content_type), 415, "unsupported_media_type")

    assert "application/json" in error["message"]


def test_application_json_with_a_charset_is_still_json(api: InProcessApi):
    response = post_raw(
        api, "/orders", json.dumps(order(lines=[{"sku": "NOPE", "quantity": 1}])), "application/json; charset=utf-8"
    )

    assert response.status_code == 422, response.text


# 1: the line fits, its tax and shipping do not (the lines are named: fewer units is the remedy);
# 2 and more: the line's own units reach it. API.md: a 422's details name the field.
@pytest.mark.parametrize(("quantity", "field"), [(1, "lines"), (2, "lines[0].quantity"), (10_000, "lines[0].quantity")])
def test_an_order_whose_total_reaches_10_to_the_15_is_422_naming_lines(api: InProcessApi, quantity: int, field: str):
    response = api.post("/orders", json=order(external_id="hostile-big", lines=[{"sku": SKU, "quantity": quantity}]))

    error = assert_error(response, 422, "amount_too_large", field)
    assert len(error["details"]) == 1, error


@pytest.mark.parametrize("amount", ["1000000000000000.00", "99999999999999999999"])
def test_a_price_at_or_above_10_to_the_15_is_422(api: InProcessApi, amount: str):
    response = api.put("/products/HOSTILE-2", json={"name": "x", "price": {"amount": amount, "currency": "USD"}})

    assert_error(response, 422, "validation_error", "price.amount")
    # Said as the contract says it, not as a malformed string: the amount is well formed, too large.
    assert "below 10^15" in response.json()["error"]["details"][0]["message"]


@pytest.mark.parametrize("content_type", ["Application/JSON", "APPLICATION/JSON; charset=UTF-8"])
def test_media_types_are_case_insensitive(api: InProcessApi, content_type: str):
    body = json.dumps(order(lines=[{"sku": "NOPE", "quantity": 1}]))

    assert_error(post_raw(api, "/orders", body, content_type), 422, "unknown_sku")


def test_the_body_is_parsed_once(api: InProcessApi, monkeypatch: pytest.MonkeyPatch):
    from core import strict_json

    calls: list[object] = []
    loads = strict_json.loads
    monkeypatch.setattr(strict_json, "loads", lambda *args, **kwargs: calls.append(args) or loads(*args, **kwargs))

    response = post_raw(api, "/orders", json.dumps(order(lines=[{"sku": "NOPE", "quantity": 1}])))

    assert_error(response, 422, "unknown_sku")
    assert len(calls) == 1


def test_an_empty_body_sent_as_another_media_type_is_not_a_5xx(api: InProcessApi):
    response = post_raw(api, "/orders", "", "text/plain")

    assert_error(response, 415, "unsupported_media_type")


# Adversarial: whatever the body and media type, the answer is never a 5xx and always the contract's shape.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=20,
)
order_keys = st.sampled_from(["channel", "external_id", "currency", "customer", "lines", "payment", "shipping_address"])


@st.composite
def hostile_bodies(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mutated order", "any json", "any text"]))
    if kind == "any text":
        return draw(st.text(max_size=200))
    if kind == "any json":
        return json.dumps(draw(json_values))
    body = order(external_id="fuzz")
    body[draw(order_keys)] = draw(json_values)
    text = json.dumps(body)
    if draw(st.booleans()):  # a duplicate of a key, or nesting and a long number glued on
        text = text[:-1] + draw(st.sampled_from([', "lines": []}', ', "n": ' + "1" * 200 + "}", ', "x": [[[[]]]]}']))
    return text


HOSTILE = given(
    body=hostile_bodies(),
    content_type=st.sampled_from(["application/json", "application/x+json", "text/plain", "Application/Json", ""]),
)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@HOSTILE
def test_no_body_makes_a_5xx(api: InProcessApi, body: str, content_type: str):
    response = post_raw(api, "/orders", body, content_type)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error(response, response.status_code)


# At length (1000 random examples; `make test` runs the same 150 on every run): `make fuzz`.
test_no_body_makes_a_5xx_at_length = at_length(
    test_no_body_makes_a_5xx, HOSTILE, 1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("top", ['"a string"', "42", "null", "true"])
def test_a_carrier_webhook_that_is_neither_an_object_nor_an_array_is_400(api: InProcessApi, top: str):
    # The one route that takes an array (a carrier's own format) still takes nothing else at the top.
    error = assert_error(post_raw(api, "/carriers/oms-flat-rate/tracking", top), 400, "malformed_json")

    assert error["details"] == []
