"""Loads the demo catalog, network and stock through the real HTTP API, so it passes the same validation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

DEMO_SEED = Path(__file__).with_name("demo_seed.json")
# Loopback only: never through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SeedError(RuntimeError):
    """The API refused part of the seed data."""


def seed_demo_data(api_url: str, admin_key: str) -> bool:
    """Loads DEMO_SEED when the store has no locations yet. True if it loaded, False if the store
    already had data. Raises SeedError when the API refuses a call."""

    def call(method: str, path: str, body: Any = None) -> Any:
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
        if status >= 300:
            raise SeedError(f"{method} {path} answered {status}: {raw.decode('utf-8', 'replace')}")
        return json.loads(raw) if raw else None

    if (call("GET", "/locations?limit=1") or {}).get("items"):
        return False
    seed = json.loads(DEMO_SEED.read_text(encoding="utf-8"))
    for product in seed.get("products", []):
        call("PUT", f"/products/{quote(product['sku'], safe='')}", {k: v for k, v in product.items() if k != "sku"})
    for location in seed.get("locations", []):
        call("PUT", f"/locations/{quote(location['id'], safe='')}", {k: v for k, v in location.items() if k != "id"})
    for stock in seed.get("stock", []):
        path = f"/inventory/{quote(stock['sku'], safe='')}/{quote(stock['location_id'], safe='')}"
        call("PUT", path, {"on_hand": stock["on_hand"]})
    return True
