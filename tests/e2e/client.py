"""A small HTTP client for the local stack, request builders and the contract's assertions."""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from functions.adapters import order_codec
from tests.builders import address_body as address
from tests.builders import location_body

# Long enough for 30 requests queued behind one warm API container on a loaded 2-core machine;
# a hang still fails the test.
TIMEOUT = 30
ADMIN = object()  # the default `key`: the stack's admin key


def unique(prefix: str) -> str:
    """An id no other test uses (lower case, so it also fits the channel pattern). Twelve hex
    digits, never the 13 digits in a row a card number needs: the API scans Idempotency-Keys and
    bodies for card numbers, and a whole uuid4().hex holds one about once in 6,000 (422)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Api:
    """requests, against one stack, authenticated as its admin unless told otherwise."""

    def __init__(self, base_url: str, admin_key: str):
        self.base_url = base_url
        self.admin_key = admin_key
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through an HTTP(S)_PROXY

    def close(self) -> None:
        self.session.close()

    def request(
        self, method: str, path: str, *, key: Any = ADMIN, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        sent = dict(headers or {})
        if key is ADMIN:
            sent["Authorization"] = f"Bearer {self.admin_key}"
        elif key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return self.session.request(method, self.base_url + path, headers=sent, timeout=TIMEOUT, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    # --- Reads the tests use to prove that nothing was written --------------------------------
    def orders_of(self, customer_id: str) -> list[dict[str, Any]]:
        """Every order of a customer, newest first, following cursors."""
        return self.list_all({"customer_id": customer_id})

    def list_all(self, params: dict[str, Any], limit: int = 100) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
            response = self.get("/orders", params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items


class Catalog:
    """Creates this test's products, locations and stock through the API."""

    def __init__(self, api: Api):
        self.api = api

    def product(self, price: str, currency: str = "USD", **fields: Any) -> str:
        sku = unique("SKU").upper()
        body = {"name": f"Product {sku}", "price": {"amount": price, "currency": currency}, **fields}
        response = self.api.put(f"/products/{sku}", json=body)
        assert response.status_code == 201, response.text
        return sku

    def location(self, **overrides: Any) -> str:
        location_id = unique("loc")
        response = self.api.put(f"/locations/{location_id}", json=location_body(**overrides))
        assert response.status_code == 201, response.text
        return location_id

    def stock(self, sku: str, location_id: str, on_hand: int) -> dict[str, Any]:
        response = self.api.put(f"/inventory/{sku}/{location_id}", json={"on_hand": on_hand})
        assert response.status_code == 200, response.text
        return response.json()

    def stocked(self, *prices: str, currency: str = "USD", on_hand: int = 100) -> list[str]:
        """One product per price, each with `on_hand` units at a new shipping warehouse."""
        warehouse = self.location()
        skus = [self.product(price, currency) for price in prices]
        for sku in skus:
            self.stock(sku, warehouse, on_hand)
        return skus


# --- Request bodies ---------------------------------------------------------------------------


TOKYO = {"name": "Ada Lovelace", "line1": "1-1 Marunouchi", "city": "Tokyo", "postal_code": "100-0001", "country": "JP"}


# A warehouse near San Francisco, where the orders ship to (location_body() is one in Newark).
WEST_WAREHOUSE = location_body(
    name="West warehouse",
    address=address(name="West warehouse", city="Oakland", postal_code="94607"),
    latitude=37.80,
    longitude=-122.27,
)
# A San Francisco store that only serves pickups.
PICKUP_STORE = location_body(
    name="Market St store",
    type="store",
    address=address(name="Market St store"),
    latitude=37.79,
    longitude=-122.40,
    ships=False,
    pickup=True,
)


def put_network(api: Api, store: bool = False) -> dict[str, str]:
    """The location network the workflow tests ship from, under fresh ids: {"west": the warehouse
    near the customers, "east": the one in Newark} and, with `store`, {"store": the pickup store}."""
    bodies = {"west": WEST_WAREHOUSE, "east": location_body()}
    if store:
        bodies["store"] = PICKUP_STORE
    ids = {name: unique(f"loc-{name}") for name in bodies}
    for name, location_id in ids.items():
        response = api.put(f"/locations/{location_id}", json=bodies[name])
        assert response.status_code == 201, response.text
    return ids


def stocked_sku(api: Api, price: str = "12.00", on_hand: int = 5) -> tuple[dict[str, str], str]:
    """The network (put_network), and a new product at `price` with `on_hand` units at its west
    warehouse: (network, sku)."""
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product(price)
    catalog.stock(sku, network["west"], on_hand)
    return network, sku


def set_path(body: dict, path: str, value: Any) -> dict:
    """Sets "a.b[0].c" in a nested body (creating the last key)."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    target: Any = body
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return body


def order_body(*lines: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    """A valid POST /orders body for (sku, quantity) lines, with a unique customer and external id."""
    body: dict[str, Any] = {
        "channel": "web",
        "external_id": unique("ext"),
        "currency": "USD",
        "customer": {"id": unique("cus"), "email": "ada@example.com", "name": "Ada Lovelace"},
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        "shipping_address": address(),
        "payment": {"method": "test", "token": "tok_approve"},
    }
    body.update(copy.deepcopy(overrides))
    return body


# --- The contract's assertions ----------------------------------------------------------------


def assert_error(response: requests.Response, status: int, code: str | None = None, *fields: str) -> dict[str, Any]:
    """The status, the error shape {"error": {"code", "message", "details"}} and, when given, the
    code and the fields `details` names. Returns the error object."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", error["code"]), error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["details"], list), error
    assert all(isinstance(detail, dict) for detail in error["details"]), error
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    named = [detail.get("field") for detail in error["details"]]
    for field in fields:
        assert field in named, f"{field!r} not among the fields {named}: {error}"
    return error


def times(items: list[dict[str, Any]]) -> list[datetime]:
    """The items' `at` as times, to compare in order: as strings "…13Z" sorts after "…13.004Z"."""
    return [datetime.fromisoformat(item["at"]) for item in items]


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def amounts(order: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Money object of an order: the lines', the totals' and the payment's."""
    found = [line[name] for line in order["lines"] for name in ("unit_price", "discount", "tax", "total")]
    found += list(order["totals"].values())
    found += [order["payment"][name] for name in ("authorized", "captured", "refunded")]
    return found


def unsigned(answer: Any) -> Any:
    """An answer (an order, a shipment, a return, a list of them...) with each label link cut to the
    object it names: a link is signed anew for each answer that hands it out, valid 15 minutes from
    then (the README's "signed at each read"), so two answers a second apart differ there and
    nowhere else."""
    if isinstance(answer, dict):
        return {
            key: urlsplit(value).path if key == "label_url" and isinstance(value, str) else unsigned(value)
            for key, value in answer.items()
        }
    if isinstance(answer, list | tuple):
        return [unsigned(value) for value in answer]
    if isinstance(answer, str) and "X-Amz-Signature=" in answer:
        return urlsplit(answer).path
    return answer


def stored_document(item: dict[str, Any]) -> dict[str, Any]:
    """The order document of a raw Orders item, in any form it was ever stored in."""
    return json.loads(order_codec.stored_json(item["doc"]))


def stored_history(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The history entries of a raw Orders item, in any form they were ever stored in."""
    return [json.loads(order_codec.stored_json(entry)) for entry in item["history"]["L"]]


def document_attribute(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as the adapter stores it, for a test that rewrites a stored order."""
    return {"B": order_codec.compress(json.dumps(doc).encode())}
