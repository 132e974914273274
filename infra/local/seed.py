"""Loads the demo catalog, network and stock through the real HTTP API, so it passes the same validation."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEMO_SEED = Path(__file__).with_name("demo_seed.json")


class SeedError(RuntimeError):
    """The API refused part of the seed data."""


# Loopback only: never through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(api_url: str, admin_key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api_url + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {admin_key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def seed_demo_data(api_url: str, admin_key: str, seed_file: Path = DEMO_SEED) -> bool:
    """Loads `seed_file` when the store has no locations yet. True if it loaded, False if the store
    already had data. Raises SeedError when the API refuses a call."""

    def call(method: str, path: str, body: Any = None) -> Any:
        status, answer = _call(api_url, admin_key, method, path, body)
        if status >= 300:
            raise SeedError(f"{method} {path} answered {status}: {answer}")
        return answer

    if (call("GET", "/locations?limit=1") or {}).get("items"):
        return False
    seed = json.loads(seed_file.read_text(encoding="utf-8"))
    for product in seed.get("products", []):
        fields = {key: value for key, value in product.items() if key != "sku"}
        call("PUT", f"/products/{_quote(product['sku'])}", fields)
    for location in seed.get("locations", []):
        fields = {key: value for key, value in location.items() if key != "id"}
        call("PUT", f"/locations/{_quote(location['id'])}", fields)
    for stock in seed.get("stock", []):
        call(
            "PUT",
            f"/inventory/{_quote(stock['sku'])}/{_quote(stock['location_id'])}",
            {"on_hand": stock["on_hand"]},
        )
    return True
