"""Request bodies and domain objects for tests, valid by default; override what a test is about."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from core.models import Location, LocationInput, PlaceOrder, Product, ProductInput

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def address_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "Ada Lovelace",
        "line1": "1 Market St",
        "city": "San Francisco",
        "region": "CA",
        "postal_code": "94105",
        "country": "US",
    }
    return {**body, **overrides}


def order_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "web",
        "external_id": "web-1001",
        "currency": "USD",
        "customer": {"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace"},
        "lines": [{"sku": "TSHIRT", "quantity": 2}],
        "shipping_address": address_body(),
        "payment": {"method": "test", "token": "tok_approve"},
    }
    body.update(copy.deepcopy(overrides))
    return body


def product_body(amount: str = "19.99", currency: str = "USD", **overrides: Any) -> dict[str, Any]:
    body = {"name": "Black T-shirt", "price": {"amount": amount, "currency": currency}, "weight_grams": 200}
    return {**body, **overrides}


def location_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "East warehouse",
        "type": "warehouse",
        "address": address_body(name="East warehouse", city="Newark", region="NJ", postal_code="07102"),
        "latitude": 40.73,
        "longitude": -74.17,
        "ships": True,
        "pickup": False,
    }
    return {**body, **overrides}


def place_order(**overrides: Any) -> PlaceOrder:
    return PlaceOrder.model_validate(order_body(**overrides))


def product(sku: str = "TSHIRT", amount: str = "19.99", currency: str = "USD", **overrides: Any) -> Product:
    data = ProductInput.model_validate(product_body(amount, currency, **overrides))
    return Product(sku=sku, updated_at=NOW, **data.model_dump())


def location(location_id: str = "wh-east", **overrides: Any) -> Location:
    data = LocationInput.model_validate(location_body(**overrides))
    return Location(location_id=location_id, updated_at=NOW, **data.model_dump())


def csv_row(external_id: str, sku: str = "TSHIRT", quantity: str = "1", **cells: str) -> str:
    """One bulk-import CSV row (API.md's columns), valid by default; `cells` replace any column."""
    from functions.import_splitter.readers import COLUMNS

    values = {
        "channel": "market",
        "external_id": external_id,
        "currency": "USD",
        "customer_id": "cus_1",
        "customer_email": "ada@example.com",
        "customer_name": "Ada Lovelace",
        "sku": sku,
        "quantity": quantity,
        "ship_name": "Ada Lovelace",
        "ship_line1": "1 Market St",
        "ship_line2": "",
        "ship_city": "San Francisco",
        "ship_region": "CA",
        "ship_postal_code": "94105",
        "ship_country": "US",
        "shipping_method": "",
        "payment_method": "test",
        "payment_token": "tok_approve",
        **cells,
    }
    return ",".join(values[column] for column in COLUMNS)


def csv_file(*rows: str, newline: str = "\n") -> bytes:
    """A bulk-import CSV file: the header, then `rows`."""
    from functions.import_splitter.readers import COLUMNS

    return (newline.join([",".join(COLUMNS), *rows]) + newline).encode()


def template_schedule(function_logical_id: str) -> tuple[str, str]:
    """The scheduled function's period variable and its value as template.yaml sets it (the same
    Mappings entry as its Schedule's rate): what the function reads on AWS."""
    from functions.schedule import period_variable
    from infra.local.template import Template, env_string

    template, name = Template.load(), period_variable(function_logical_id)
    declared = template.functions()[function_logical_id]["Environment"]["Variables"][name]
    return name, env_string(template.resolve(declared))
